//! Errors: every failure on user input is one of these, saying what was wrong and what was
//! expected.

use std::path::PathBuf;

/// The error type of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An array has the wrong shape.
    #[error("{what}: shape {found:?}, expected {expected}")]
    Shape {
        /// Which array.
        what: String,
        /// What was expected, e.g. `[T, B, 40]`.
        expected: String,
        /// The shape given.
        found: Vec<usize>,
    },
    /// A value is NaN or infinite.
    #[error("{what}: non-finite value {value} at index {index}; all values must be finite")]
    NonFinite {
        /// Which array.
        what: String,
        /// Flat index of the first bad value.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A hyper-parameter or configuration value is out of range.
    #[error("invalid {name} = {value}: expected {expected}")]
    Invalid {
        /// Which setting.
        name: String,
        /// The value given, as text.
        value: String,
        /// The allowed range or set.
        expected: String,
    },
    /// A class label is out of range.
    #[error("target class {class} for sample {sample} is out of range: the readout has {classes} classes")]
    Class {
        /// Sample index in the batch.
        sample: usize,
        /// The label given.
        class: usize,
        /// Number of readout units.
        classes: usize,
    },
    /// Training produced a non-finite value: the update it happened at, what (`loss`,
    /// `gradient` or `weight`), the tensor and the index of the first bad value.
    #[error(
        "training diverged at update {update}: the {what} is {value} at index {index} of {tensor}; lower the \
         learning rate or clip gradients (TrainConfig::clip_norm), then resume from the last checkpoint"
    )]
    Diverged {
        /// The optimiser update (1 for the first).
        update: usize,
        /// `loss`, `gradient` or `weight`.
        what: String,
        /// The tensor's name ([`crate::Network::tensor_name`]).
        tensor: String,
        /// Flat index of the first non-finite value.
        index: usize,
        /// The value.
        value: f64,
    },
    /// Communication between the ranks of a data-parallel job failed (see
    /// [`crate::collective`]).
    #[error("data-parallel training: {0}")]
    Collective(String),
    /// A method was called in the wrong order.
    #[error("{0}")]
    State(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not what was expected.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// Result with [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid(name: &str, value: impl ToString, expected: &str) -> Error {
    Error::Invalid {
        name: name.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

pub(crate) fn check_shape(what: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::Shape {
            what: what.to_string(),
            expected: format!("{expected:?}"),
            found: found.to_vec(),
        })
    }
}

pub(crate) fn check_finite<F: crate::Real>(what: &str, values: impl IntoIterator<Item = F>) -> Result<()> {
    for (index, v) in values.into_iter().enumerate() {
        if !v.is_finite_value() {
            return Err(Error::NonFinite {
                what: what.to_string(),
                index,
                value: v.to_f64(),
            });
        }
    }
    Ok(())
}
