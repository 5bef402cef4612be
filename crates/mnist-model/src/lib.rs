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
//! and trains on any autodiff backend.
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

mod error;
pub mod json;
mod kernels;
#[cfg(feature = "flex")]
mod flex;

/// The burn-flex operations (the fused convolution block, the fully connected layer with
/// its own weight gradient) for direct use and benchmarks, and helpers for host-side
/// kernels shared with mnist-train's optimizer.
#[cfg(feature = "flex")]
pub mod flex_host {
    pub use crate::flex::{cast, conv_relu_pool, from_vec, is_dense, linear, prim_to_vec, recycle, to_vec};
}
mod model;
pub mod weights;

pub use error::{Error, Result};
pub use kernels::Kernels;
pub use model::{Cnn, CnnConfig, SIDE, dropout_mask};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Classifies one 28x28 image given as 784 bytes (row-major, 0 = background): the most
/// probable class.
pub fn classify<B: Backend>(model: &Cnn<B>, pixels: &[u8; SIDE * SIDE], device: &B::Device) -> usize {
    let input: Vec<f32> = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
    let images = Tensor::<B, 4>::from_data(TensorData::new(input, [1, 1, SIDE, SIDE]), device);
    let class = model.forward(images).argmax(1).into_data();
    class.iter::<i64>().next().unwrap_or(0) as usize
}

#[cfg(test)]
mod tests;
