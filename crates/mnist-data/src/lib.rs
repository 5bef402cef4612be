//! MNIST and Fashion-MNIST: verified IDX parsing, dataset resolution, a download with
//! mirrors and pinned digests, a bundled sample, and batches of bytes. Nothing here
//! depends on Burn: the network's input contract (bytes to tensors) is the model's.
//!
//! With the default `sample` feature the crate embeds 10,000 real MNIST digits, so it
//! works with no set-up and no network:
//!
//! ```
//! use mnist_data::{DatasetKind, Locator};
//!
//! let data = Locator::offline(None).load(DatasetKind::Sample)?;
//! assert_eq!((data.train.len(), data.test.len()), (8_000, 2_000));
//! let first: &[u8; 784] = data.test.image(0);
//! println!("first test digit is a {}", data.test.label(0));
//! # assert!(first.iter().any(|&p| p > 0));
//! # Ok::<(), mnist_data::Error>(())
//! ```
//!
//! Full datasets are found, in order, in an explicit directory (`--data-dir`, or the
//! `MNIST_DATA_DIR` variable), the user cache (`~/.cache/mnist-rs/<dataset>` on Linux),
//! Debian's `/usr/share/datasets/fashion-mnist` (Fashion-MNIST only), or downloaded into
//! the cache (feature `download`). See [`Locator`].
//!
//! [`Split::gather`] collects the images of a training step ([`Batch`]: 784 bytes per
//! image and the labels), [`Split::chunks`] slices a split for evaluation, and [`Sampler`]
//! gives a seeded, reproducible order per epoch.

mod batch;
mod dataset;
#[cfg(feature = "download")]
pub mod download;
mod error;
mod order;
pub mod idx;
#[cfg(feature = "sample")]
mod sample;
mod source;

pub use batch::Batch;
pub use order::{Sampler, epoch_order};
pub use dataset::{Dataset, DatasetKind, FILES, FileSpec, Split, Splits, find_file};
pub use error::{Error, IdxKind, Result};
pub use idx::{PIXELS, SIDE};

/// Number of classes of every dataset here (labels `0..=9`).
pub const CLASSES: usize = 10;
pub use source::{DATA_DIR_ENV, DEBIAN_FASHION_DIR, DatasetChoice, Loaded, Locator, default_cache_root};
