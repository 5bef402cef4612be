//! The one error type of `mnist-model`.

use std::path::PathBuf;

/// What can go wrong building a model or moving its weights to and from disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value out of range.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a weight file of the expected format.
    #[error("{}: not a valid {format} weight file: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// `Burn record` or `safetensors`.
        format: &'static str,
        /// What the decoder said.
        message: String,
    },
    /// A JSON file (config) that does not parse, or holds unknown or invalid fields.
    #[error("{}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A tensor is absent from the weight file.
    #[error("{}: missing tensor `{tensor}` (expected shape {expected:?})", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's path, e.g. `conv1.weight`.
        tensor: String,
        /// The shape the model needs.
        expected: Vec<usize>,
    },
    /// A tensor has the wrong shape.
    #[error("{}: tensor `{tensor}` has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's path.
        tensor: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
