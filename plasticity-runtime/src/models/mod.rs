//! The neuron models shipped with plasticity, each written with [`crate::neuron_model`].

pub mod bellec;
