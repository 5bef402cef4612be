//! The one error type of `mnist-model`.

use std::path::PathBuf;

/// What can go wrong building a model or moving its weights to and from disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value out of range, or a manifest that does not fit its network.
    #[error("invalid model config: {message}")]
    InvalidConfig {
        /// The field at fault (`hidden`, `dropout`, `class_names`); `None` for the
        /// network as a whole (too many parameters).
        field: Option<String>,
        /// What is wrong, naming the field and the value found (`hidden must be at least
        /// 1, got 0`).
        message: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The directory given for a model is none: missing, a file, or without `model.json`
    /// (and without a training checkpoint, which is [`Error::UnfinishedRun`]).
    #[error("{}: {why}; expected a trained model's artifact directory (the folder training writes, with model.json and model.mpk)", dir.display())]
    NotAModel {
        /// The path given.
        dir: PathBuf,
        /// What it is: `no such directory`, `a file, not a directory`, `holds no model.json`.
        why: &'static str,
    },
    /// The directory holds a training run that has not finished: a checkpoint, no
    /// `model.json` yet.
    #[error("{} holds an unfinished training run (a checkpoint, no model.json yet); finish it by resuming its training, or load a finished run", dir.display())]
    UnfinishedRun {
        /// The run's directory.
        dir: PathBuf,
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
    /// A file's SHA-256 differs from the one recorded when it was written.
    #[error("{} is damaged or truncated (checksum mismatch: {recorded_in} records SHA-256 {expected}, the file's is {found}); retrain or restore it", path.display())]
    Checksum {
        /// The damaged file.
        path: PathBuf,
        /// Where the expected digest is recorded (`model.json`, the checkpoint's header).
        recorded_in: String,
        /// The digest recorded, hex.
        expected: String,
        /// The digest of the file as it is, hex.
        found: String,
    },
    /// Weights holding NaN or infinite values (a run that diverged): never saved, loaded,
    /// evaluated or used to predict.
    #[error("{}: tensor `{tensor}` holds NaN or infinite values (the training diverged); such weights are never saved or used: retrain with a smaller learning rate", path.display())]
    NonFinite {
        /// The file being written or read.
        path: PathBuf,
        /// The first tensor with a non-finite value, e.g. `fc1.weight`.
        tensor: String,
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

impl From<mnist_fs::Error> for Error {
    fn from(e: mnist_fs::Error) -> Self {
        match e {
            mnist_fs::Error::Read { path, source } => Error::Read { path, source },
            other => {
                let (path, source) = other.into_parts();
                Error::Write { path, source }
            }
        }
    }
}
