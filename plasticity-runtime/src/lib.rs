//! # plasticity
//!
//! Neuron models written as plain Rust, differentiated at compile time by
//! [`neuron_model`], trained online with e-prop or exactly with BPTT.

extern crate self as plasticity_runtime;

mod bptt;
pub mod eprop;
pub mod error;
pub mod gradients;
pub mod init;
mod linalg;
pub mod loss;
pub mod model;
pub mod models;
pub mod network;
pub mod optim;
pub mod real;
pub mod surrogate;
pub mod trainer;

pub use eprop::{Feedback, RateRegularization};
pub use error::{Error, Result};
pub use gradients::{Gradients, LayerGradients};
pub use init::Init;
pub use loss::{Loss, StepTargets, Targets, Window};
pub use model::{Entry, EntryKind, Matrix, NeuronModel, Pattern, PortLayout, RowLayout};
pub use network::{Layer, LayerSpec, Network, NetworkBuilder, Readout, ReadoutSpec, RunOutput};
pub use optim::{Optimizer, OptimizerState, Schedule};
pub use plasticity_macros::neuron_model;
pub use real::{Float, Real};
pub use surrogate::{Mode, Plain, Smooth, Surrogate};
pub use trainer::{Algorithm, BatchStats, StepInfo, TrainConfig, Trainer};

/// Paths the generated code uses. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::model::{Entry, EntryKind, Matrix, NeuronModel, Pattern, PortLayout, RowLayout};
    pub use crate::real::Real;
    pub use crate::surrogate::{Mode, Plain, Surrogate};
}
