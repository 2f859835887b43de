//! # plasticity
//!
//! Neuron models written as plain Rust, differentiated at compile time by
//! [`neuron_model`], trained online with e-prop or exactly with BPTT.

extern crate self as plasticity_runtime;

pub mod model;
pub mod models;
pub mod real;
pub mod surrogate;

pub use model::{Entry, EntryKind, Matrix, NeuronModel, Pattern, PortLayout, RowLayout};
pub use plasticity_macros::neuron_model;
pub use real::Real;
pub use surrogate::{Mode, Plain, Smooth, Surrogate};

/// Paths the generated code uses. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::model::{Entry, EntryKind, Matrix, NeuronModel, Pattern, PortLayout, RowLayout};
    pub use crate::real::Real;
    pub use crate::surrogate::{Mode, Plain, Surrogate};
}
