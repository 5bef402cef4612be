//! The training config: every hyperparameter of a run, saved beside its artifacts.

use std::path::Path;

use burn::config::Config;
use mnist_data::DatasetKind;
use mnist_model::CnnConfig;

use crate::error::{Error, Result};

/// Everything that defines a training run. The defaults are the seed recipe
/// (`configs/seed.json`): Adam with learning rate 1e-4, batch 50, 30,000 steps, dropout
/// keep 0.5, training accuracy every 100 steps.
#[derive(Config, Debug, PartialEq)]
pub struct TrainConfig {
    /// The dataset to train on (`mnist`, `fashion`, `sample`); absent: full MNIST when
    /// available, else the bundled sample. `--dataset` overrides it.
    pub dataset: Option<DatasetKind>,
    /// The network.
    #[config(default = "CnnConfig::new()")]
    pub model: CnnConfig,
    /// Adam learning rate.
    #[config(default = 1e-4)]
    pub learning_rate: f64,
    /// Adam beta 1.
    #[config(default = 0.9)]
    pub beta1: f32,
    /// Adam beta 2.
    #[config(default = 0.999)]
    pub beta2: f32,
    /// Adam epsilon (TensorFlow's default, 1e-8).
    #[config(default = 1e-8)]
    pub epsilon: f32,
    /// Images per training step.
    #[config(default = 50)]
    pub batch_size: usize,
    /// Training steps.
    #[config(default = 30_000)]
    pub steps: u64,
    /// Report loss and training accuracy every this many steps.
    #[config(default = 100)]
    pub log_every: u64,
    /// Write a checkpoint every this many steps (0: only at the end and on interrupt).
    #[config(default = 1_000)]
    pub checkpoint_every: u64,
    /// Seed of the initial weights, the data order and the dropout masks.
    #[config(default = 42)]
    pub seed: u64,
    /// Images per forward pass when evaluating.
    #[config(default = 500)]
    pub eval_batch_size: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig::new()
    }
}

impl TrainConfig {
    /// Reads a config file strictly: unknown fields and out-of-range values are errors
    /// naming the file and the field; absent fields take the seed's defaults.
    pub fn read(path: &Path) -> Result<Self> {
        let config: TrainConfig = mnist_model::json::read_strict(path, &TrainConfig::new())?;
        config.validate().map_err(|e| match e {
            Error::InvalidConfig(msg) => Error::InvalidConfig(format!("{}: {msg}", path.display())),
            other => other,
        })?;
        Ok(config)
    }

    /// Checks every value is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        self.model.validate().map_err(|e| Error::InvalidConfig(e.to_string()))?;
        if self.model.classes != mnist_data::CLASSES {
            return bad(format!(
                "model.classes must be {} (every dataset here has {} classes, labels 0..=9), got {}",
                mnist_data::CLASSES,
                mnist_data::CLASSES,
                self.model.classes
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate <= f64::from(f32::MAX)) {
            return bad(format!(
                "learning_rate must be a positive number of at most {:e} (it is applied in f32), got {}",
                f32::MAX,
                self.learning_rate
            ));
        }
        for (name, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("{name} must be in [0, 1), got {v}"));
            }
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad(format!("epsilon must be positive, got {}", self.epsilon));
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1, got 0".into());
        }
        if self.eval_batch_size == 0 {
            return bad("eval_batch_size must be at least 1, got 0".into());
        }
        if self.steps == 0 {
            return bad("steps must be at least 1, got 0".into());
        }
        if self.log_every == 0 {
            return bad("log_every must be at least 1, got 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        for (config, needle) in [
            (TrainConfig::new().with_batch_size(0), "batch_size"),
            (TrainConfig::new().with_learning_rate(-1e-4), "learning_rate"),
            (TrainConfig::new().with_learning_rate(1e39), "at most 3.4028235e38 (it is applied in f32)"),
            (TrainConfig::new().with_steps(0), "steps"),
            (TrainConfig::new().with_beta2(1.0), "beta2"),
            (TrainConfig::new().with_model(CnnConfig::new().with_dropout(1.5)), "dropout"),
            (TrainConfig::new().with_model(CnnConfig::new().with_classes(5)), "model.classes must be 10"),
            (TrainConfig::new().with_model(CnnConfig::new().with_classes(12)), "model.classes must be 10"),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        TrainConfig::new().validate().unwrap();
    }

    #[test]
    fn config_files_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"steps": 10, "model": {"hidden": 64}}"#).unwrap();
        let c = TrainConfig::read(&path).unwrap();
        assert_eq!((c.steps, c.model.hidden, c.batch_size), (10, 64, 50));
        std::fs::write(&path, r#"{"step": 10}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("c.json") && err.contains("unknown field `step`"), "{err}");
        std::fs::write(&path, r#"{"model": {"dropuot": 0.1}}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("unknown field `model.dropuot`"), "{err}");
        std::fs::write(&path, r#"{"batch_size": 0}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("c.json") && err.contains("batch_size"), "{err}");
    }
}
