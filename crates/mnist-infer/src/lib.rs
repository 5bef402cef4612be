//! Classify digits with a trained mnist-rs network, on any Burn backend.
//!
//! A [`Classifier`] loads an artifact directory (`model.json` + `model.mpk`, as written
//! by training) and predicts from raw pixels or from image files, which are preprocessed
//! the way MNIST was made (see [`preprocess`]); [`evaluate`] measures a network on a
//! split. Neither needs the training crate.
//!
//! On burn-flex (cargo feature `flex`, on by default) the network runs mnist-kernels'
//! fused kernels; [`Classifier::kernels_in_use`] says which implementation runs.
//!
//! ```
//! use burn_flex::Flex;
//! use mnist_infer::Classifier;
//! use mnist_model::CnnConfig;
//! use mnist_model::artifact::{self, Manifest};
//!
//! // An artifact directory, as training writes it (here: an untrained network).
//! let dir = std::env::temp_dir().join(format!("mnist-infer-doc-{}", std::process::id()));
//! let config = CnnConfig::new();
//! let names = (0..10).map(|d| d.to_string()).collect();
//! let model = config.init::<Flex>(0, &Default::default())?;
//! artifact::save_dir(&model, &Manifest::new(config, "mnist", names), &dir)?;
//!
//! let classifier = Classifier::<Flex>::load(&dir, &Default::default())?;
//! let prediction = classifier.predict(&[0u8; 784]);
//! assert!(prediction.digit < 10);
//! println!("{} ({})", classifier.class_name(prediction.digit), classifier.kernels_in_use());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! let total: f32 = prediction.probabilities.iter().sum();
//! assert!((total - 1.0).abs() < 1e-4);
//! # Ok::<(), mnist_infer::Error>(())
//! ```

mod error;
mod eval;
pub mod preprocess;

use std::path::Path;

use burn::tensor::backend::Backend;
use mnist_model::artifact::{self, Manifest};
use mnist_model::{Cnn, CnnConfig, KernelsInUse, input, weights};
use serde::Serialize;

pub use error::{Error, Result};
pub use eval::{Evaluation, evaluate};
pub use mnist_model::input::Pixels;

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
    manifest: Manifest,
    device: B::Device,
}

impl<B: Backend> Classifier<B> {
    /// Loads an artifact directory written by training (`model.json`, `model.mpk`).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        // A path that is no model folder (missing, a file, without model.json) is
        // `mnist_model::Error::NotAModel`, saying which.
        let manifest = artifact::read_manifest(dir)?;
        Self::load_with(dir, manifest, device)
    }

    /// [`load`](Self::load) with the directory's `model.json` already read (by
    /// [`artifact::read_manifest`]): only the weights are read, verified and decoded.
    pub fn load_with(dir: &Path, manifest: Manifest, device: &B::Device) -> Result<Self> {
        let model = artifact::load_weights::<B>(dir, &manifest, device)?;
        Self::new(model, manifest, device).map_err(|message| Error::Artifact {
            path: dir.to_path_buf(),
            message,
        })
    }

    /// Wraps a network already in memory, described by `manifest` (its class names).
    pub fn from_model(model: Cnn<B>, manifest: Manifest, device: &B::Device) -> Result<Self> {
        Self::new(model, manifest, device).map_err(|message| Error::Artifact {
            path: "<in memory>".into(),
            message,
        })
    }

    fn new(model: Cnn<B>, manifest: Manifest, device: &B::Device) -> std::result::Result<Self, String> {
        if manifest.config.classes != 10 || model.classes() != 10 {
            return Err(format!("the network has {} classes, expected 10", model.classes()));
        }
        if let Some(tensor) = weights::first_non_finite(&model) {
            return Err(format!("tensor `{tensor}` holds NaN or infinite values (the training diverged); retrain with a smaller learning rate"));
        }
        Ok(Classifier {
            model,
            manifest,
            device: device.clone(),
        })
    }

    /// The network's config.
    pub fn config(&self) -> &CnnConfig {
        &self.manifest.config
    }

    /// What `model.json` says of the network: config, dataset, class names.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The name of class `class` (`"7"`, or `"Sneaker"` for a Fashion-MNIST network).
    pub fn class_name(&self, class: usize) -> String {
        self.manifest.class_name(class)
    }

    /// Which implementation runs each part of the network on `B`.
    pub fn kernels_in_use(&self) -> KernelsInUse {
        self.model.kernels_in_use()
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
        let input = input::images::<B>(&pixels, &self.device);
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
