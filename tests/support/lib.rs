//! Oracles for the tests: a forward-mode dual number, modes that freeze the
//! non-differentiable parts of a model, and finite differences.

pub mod dual;
pub mod oracle;
