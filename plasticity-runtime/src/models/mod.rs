//! The neuron models shipped with plasticity, each written with [`crate::neuron_model`].
//!
//! Every model is a plain struct of its parameters (with `Default` values) implementing
//! [`crate::NeuronModel`]; `Model::describe()` prints its sparsity pattern.

pub mod bellec;
pub mod classic;
pub mod synaptax;

pub use bellec::alif::BellecAlif;
pub use bellec::alif_diff_reset::BellecAlifDiffReset;
pub use bellec::lif::BellecLif;
pub use bellec::lif_diff_reset::BellecLifDiffReset;
pub use classic::adex::AdEx;
pub use classic::cuba_lif::CubaLif;
pub use classic::izhikevich::Izhikevich;
pub use classic::leaky_integrator::LeakyIntegrator;
pub use synaptax::alif::PaperAlif;
pub use synaptax::lif::PaperLif;
pub use synaptax::sigma_delta::SigmaDelta;
