//! Classify digits with a trained mnist-rs network, on any Burn backend.
//!
//! A [`Classifier`] loads an artifact directory (`model.json` + `model.mpk`, as written
//! by training) and predicts from raw pixels or from image files, which are preprocessed
//! the way MNIST was made (see [`preprocess`]).
//!
//! ```
//! use burn_flex::Flex;
//! use mnist_infer::Classifier;
//! use mnist_model::{CnnConfig, weights};
//!
//! # let dir = tempfile::tempdir().unwrap();
//! # let config = CnnConfig::new();
//! # weights::save_dir(&config.init::<Flex>(0, &Default::default())?, &config, dir.path())?;
//! let classifier = Classifier::<Flex>::load(dir.path(), &Default::default())?;
//! let prediction = classifier.predict(&[0u8; 784]);
//! assert!(prediction.digit < 10);
//! let total: f32 = prediction.probabilities.iter().sum();
//! assert!((total - 1.0).abs() < 1e-4);
//! # Ok::<(), mnist_infer::Error>(())
//! ```

mod error;
pub mod preprocess;

use std::path::Path;

use burn::tensor::backend::Backend;
use mnist_model::{Cnn, CnnConfig, weights};
use serde::Serialize;

pub use error::{Error, Result};

/// Pixels of one 28x28 image, row-major, 0 = background, 255 = ink.
pub type Pixels = [u8; 784];

/// The answer for one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    /// The most probable class.
    pub digit: usize,
    /// Softmax probability of each class.
    pub probabilities: [f32; 10],
}

impl Prediction {
    /// Probability of the predicted class.
    pub fn confidence(&self) -> f32 {
        self.probabilities[self.digit]
    }
}

/// A trained network ready to classify, on device `B::Device`.
#[derive(Debug)]
pub struct Classifier<B: Backend> {
    model: Cnn<B>,
    config: CnnConfig,
    device: B::Device,
}

impl<B: Backend> Classifier<B> {
    /// Loads an artifact directory written by training (`model.json`, `model.mpk`).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Artifact {
                path: dir.to_path_buf(),
                message: "not a directory; expected a trained model's artifact directory".into(),
            });
        }
        let (config, model) = weights::load_dir::<B>(dir, device)?;
        Self::new(model, config, device).map_err(|message| Error::Artifact {
            path: dir.to_path_buf(),
            message,
        })
    }

    /// Wraps a network already in memory.
    pub fn from_model(model: Cnn<B>, config: CnnConfig, device: &B::Device) -> Result<Self> {
        Self::new(model, config, device).map_err(|message| Error::Artifact {
            path: "<in memory>".into(),
            message,
        })
    }

    fn new(model: Cnn<B>, config: CnnConfig, device: &B::Device) -> std::result::Result<Self, String> {
        if config.classes != 10 || model.classes() != 10 {
            return Err(format!("the network has {} classes, expected 10", model.classes()));
        }
        if let Some(tensor) = weights::first_non_finite(&model) {
            return Err(format!("tensor `{tensor}` holds NaN or infinite values (the training diverged); retrain with a smaller learning rate"));
        }
        Ok(Classifier {
            model,
            config,
            device: device.clone(),
        })
    }

    /// The network's config.
    pub fn config(&self) -> &CnnConfig {
        &self.config
    }

    /// The network.
    pub fn model(&self) -> &Cnn<B> {
        &self.model
    }

    /// Classifies one image.
    pub fn predict(&self, pixels: &Pixels) -> Prediction {
        self.predict_batch(std::slice::from_ref(pixels))
            .pop()
            .expect("one prediction per image")
    }

    /// Classifies many images in one forward pass.
    pub fn predict_batch(&self, images: &[Pixels]) -> Vec<Prediction> {
        if images.is_empty() {
            return Vec::new();
        }
        let pixels: Vec<u8> = images.iter().flatten().copied().collect();
        let input = mnist_data::images_to_tensor::<B>(&pixels, &self.device);
        let probs = self.model.probabilities(input).into_data();
        let probs = probs.convert::<f32>();
        let values = probs.as_slice::<f32>().expect("f32 after convert");
        values
            .chunks_exact(10)
            .map(|row| {
                let probabilities: [f32; 10] = row.try_into().expect("10 classes");
                let digit = probabilities
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                Prediction { digit, probabilities }
            })
            .collect()
    }

    /// Reads, preprocesses and classifies an image file (PNG, JPEG, ...).
    pub fn predict_file(&self, path: &Path) -> Result<Prediction> {
        Ok(self.predict(&preprocess::preprocess_file(path)?))
    }
}
