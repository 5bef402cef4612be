//! The "Deep MNIST for Experts" convolutional network, generic over the Burn backend.
//!
//! ```text
//! [b, 1, 28, 28] -> conv 5x5, 32, SAME, ReLU -> maxpool 2x2 -> [b, 32, 14, 14]
//!                -> conv 5x5, 64, SAME, ReLU -> maxpool 2x2 -> [b, 64, 7, 7]
//!                -> flatten [b, 3136] -> fc 1024, ReLU -> dropout (train only)
//!                -> fc 10 -> logits [b, 10]
//! ```
//!
//! 3,274,634 parameters, initialised as the seed: weights from a truncated normal with
//! standard deviation 0.1, biases 0.1. The same code runs on any backend (`B: Backend`),
//! and trains on any autodiff backend. The convolution blocks and fully connected layers
//! run through [`mnist_kernels`]' ops, which take its fused kernels on burn-flex (cargo
//! feature `flex`, on by default) and Burn's operations elsewhere;
//! [`Cnn::kernels_in_use`] says which.
//!
//! - [`input`]: the input contract (28x28 pixels, 0 = background, scaled to `[0, 1]`);
//! - [`weights`]: weight files (Burn record, safetensors), each checked on load;
//! - [`artifact`]: the artifact directory a training run fills and everything else reads
//!   (file names, `model.json`, atomic writes, strict JSON).
//!
//! Build a model, save and load its weights, classify 784 bytes:
//!
//! ```
//! use burn_flex::Flex;
//! use mnist_model::{CnnConfig, weights};
//!
//! let device = Default::default();
//! let config = CnnConfig::new();
//! let model = config.init::<Flex>(42, &device)?;
//! assert_eq!(config.num_params(), 3_274_634);
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("model.mpk");
//! weights::save(&model, &path)?;
//! let model = weights::load::<Flex>(&config, &path, &device)?;
//!
//! let pixels = [0u8; 784]; // 28x28, row-major, 0 = background, 255 = ink
//! let digit = mnist_model::classify(&model, &pixels, &device);
//! assert!(digit < 10);
//! # Ok::<(), mnist_model::Error>(())
//! ```

pub mod artifact;
mod error;
pub mod input;
mod model;
pub mod weights;

pub use error::{Error, Result};
pub use mnist_kernels::{Implementation, Kernels, KernelsInUse};
pub use model::{Cnn, CnnConfig, MAX_PARAMS, dropout_mask};

use burn::tensor::backend::Backend;

/// Classifies one 28x28 image given as 784 bytes (row-major, 0 = background): the most
/// probable class.
pub fn classify<B: Backend>(model: &Cnn<B>, pixels: &input::Pixels, device: &B::Device) -> usize {
    let class = model.forward(input::images::<B>(pixels, device)).argmax(1).into_data();
    class.iter::<i64>().next().unwrap_or(0) as usize
}

#[cfg(test)]
mod tests;
