//! Oracles for the tests: a forward-mode dual number, modes that freeze the
//! non-differentiable parts of a model, and finite differences; and the data-parallel test
//! case.

pub mod data_parallel;
pub mod dual;
pub mod oracle;
