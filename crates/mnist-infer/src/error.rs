//! The one error type of `mnist-infer`.

use std::path::PathBuf;

/// What can go wrong loading a classifier or an image, or evaluating a network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The artifact directory, its config or its weights.
    #[error(transparent)]
    Model(#[from] mnist_model::Error),
    /// The artifact is not usable by this API.
    #[error("{}: {message}", path.display())]
    Artifact {
        /// The artifact directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An evaluation that cannot run: an empty split, a batch size of 0, weights holding
    /// NaN or infinity, a network of another number of classes than the dataset's.
    #[error("{0}")]
    Evaluation(String),
    /// The image file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not an image in a supported format, or is corrupt.
    #[error("{}: not a readable image ({message}); expected PNG, JPEG, GIF, BMP, TIFF, WebP or PNM", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// The image is larger than the limits allow.
    #[error("{}: image too large ({message}); the limits are {max_side}x{max_side} pixels and {} MiB decoded", path.display(), crate::preprocess::MAX_ALLOC >> 20)]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
        /// Largest side accepted.
        max_side: u32,
    },
    /// The image has no pixels, no ink distinguishable from the background, or "ink" that
    /// cannot be a digit (a few pixels, or most of the image).
    #[error("{}: {what}; expected a dark digit on a light background or a light digit on a dark one", path.display())]
    Blank {
        /// The file.
        path: PathBuf,
        /// What was found instead of a digit: `empty image`, `no ink found`, specks, or
        /// ink covering most of the image.
        what: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
