//! # plasticity
//!
//! Neuron models written as plain Rust, differentiated at compile time by
//! [`neuron_model`], trained online with e-prop or exactly with BPTT.
//!
//! ```
//! use ndarray::Array3;
//! use plasticity_runtime::{
//!     neuron_model, Algorithm, Feedback, LayerSpec, Loss, NetworkBuilder, Optimizer, ReadoutSpec, TrainConfig,
//!     Trainer, Targets, Window,
//! };
//!
//! #[neuron_model(surrogate = triangle(0.5, 1.0))]
//! pub mod lif {
//!     /// Leaky integrate-and-fire, reset by subtraction (detached).
//!     pub struct Lif {
//!         #[param(default = 0.9)]
//!         pub alpha: f64,
//!         #[param(default = 1.0)]
//!         pub v_th: f64,
//!         #[state(init = 0.0)]
//!         v: f64,
//!         #[input]
//!         i: f64,
//!     }
//!
//!     fn step() {
//!         let reset = detach(spike(v - v_th));
//!         let v = alpha * v + i - reset * v_th;
//!         Next { v, spike: spike(v - v_th) }
//!     }
//! }
//!
//! // The membrane trace factorises: one value per presynaptic neuron.
//! assert!(lif::Lif::describe().contains("ε^v factorised"));
//!
//! let net = NetworkBuilder::<f32>::new(3)
//!     .layer(LayerSpec::new(lif::Lif::default(), 8).recurrent(true))
//!     .readout(ReadoutSpec::new(2, 0.8))
//!     .seed(7)
//!     .build()?;
//! let config = TrainConfig::new(
//!     Algorithm::Eprop(Feedback::Symmetric),
//!     Loss::CrossEntropy(Window::All),
//!     Optimizer::adam(1e-2),
//! );
//! let mut trainer = Trainer::new(net, config)?;
//! let x = Array3::from_shape_fn((20, 4, 3), |(t, b, i)| if (t + b + i) % 4 == 0 { 1.0 } else { 0.0 });
//! let stats = trainer.train_batch(x.view(), Targets::Classes(&[0, 1, 0, 1]))?;
//! assert!(stats.loss.is_finite());
//! # Ok::<(), plasticity_runtime::Error>(())
//! ```
//!
//! The language is documented in `docs/dsl.md`, the compiler in `docs/how-it-works.md`,
//! networks of several populations in `docs/networks.md`, and the algorithms in
//! `docs/training.md`.

extern crate self as plasticity_runtime;

mod bptt;
pub mod checkpoint;
pub mod collective;
pub mod eprop;
pub mod error;
pub mod gradcheck;
pub mod init;
pub mod input;
mod linalg;
pub mod loss;
pub mod model;
pub mod models;
pub mod network;
pub mod optim;
pub mod params;
pub mod real;
pub mod surrogate;
pub mod trainer;

pub use collective::{Collective, Single, Threads};
pub use eprop::{Chunking, Feedback, RateForm, RateRegularization};
pub use error::{Error, Result};
pub use gradcheck::{GradcheckOptions, GradcheckReport, gradcheck};
pub use init::Init;
pub use input::SpikeEvents;
pub use loss::{Loss, Reduction, StepTargets, Targets, Window};
pub use model::{Entry, EntryKind, Matrix, NeuronModel, Pattern, PortLayout, RowLayout};
pub use network::{
    Connectivity, LayerSpec, Network, NetworkBuilder, Population, PopulationSpec, Probe, Projection, ProjectionSpec,
    Readout, ReadoutGain, ReadoutSpec, RunOutput, Signal, Source,
};
pub use optim::{EpsilonAt, Optimizer, Schedule};
pub use params::{Gradients, Parameters, Slot};
pub use plasticity_macros::neuron_model;
pub use real::{Float, Real};
pub use surrogate::{Mode, Plain, Smooth, Surrogate};
pub use trainer::{Algorithm, BatchStats, StepInfo, TrainConfig, Trainer};

/// The complete programs of `docs/networks.md`, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/networks.md")]
pub struct NetworksGuide;

/// Paths the generated code uses. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::eprop::chunk_close_bench;
    pub use crate::model::{Entry, EntryKind, Matrix, NeuronModel, Pattern, PortLayout, RowLayout};
    pub use crate::real::Real;
    pub use crate::surrogate::{Mode, Plain, Surrogate};
}
