//! The training config: every hyperparameter of a run, saved beside its artifacts.

use std::path::Path;

use burn::config::Config;
use mnist_data::DatasetKind;
use mnist_kernels::FusedAdamConfig;
use mnist_model::CnnConfig;
use serde_json::Value;

use crate::error::{Error, Result};

/// Everything that defines a training run. The defaults are the seed recipe
/// (`configs/seed.json`): Adam with learning rate 1e-4, batch 50, 30,000 steps, dropout
/// keep 0.5, training accuracy every 100 steps.
#[derive(Config, Debug, PartialEq)]
pub struct TrainConfig {
    /// The dataset to train on (`mnist`, `fashion`, `sample`); absent: full MNIST when
    /// available, else the bundled sample. `--dataset` overrides it; [`crate::train`]
    /// refuses a dataset of another kind than the one named here.
    pub dataset: Option<DatasetKind>,
    /// The network.
    #[config(default = "CnnConfig::new()")]
    pub model: CnnConfig,
    /// Adam learning rate.
    #[config(default = 1e-4)]
    pub learning_rate: f64,
    /// Adam's `beta_1`, `beta_2` and `epsilon`, named as Burn's `AdamConfig` names them
    /// (the seed: TensorFlow's defaults, 0.9, 0.999 and 1e-8).
    #[config(default = "FusedAdamConfig::new()")]
    pub adam: FusedAdamConfig,
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

/// A type error's `message` (`field \`steps\`: expected a whole number, 0 or more, got
/// -5`) with the least value the field takes: "1 or more" where validation refuses 0.
fn least_one(message: String) -> String {
    const ZERO_UP: &str = "expected a whole number, 0 or more";
    let field = message.strip_prefix("field `").and_then(|m| m.split_once('`')).map(|(field, _)| field);
    match field {
        Some(field) if message.contains(ZERO_UP) && TrainConfig::refuses_zero(field) => message.replacen(ZERO_UP, "expected a whole number, 1 or more", 1),
        _ => message,
    }
}

impl TrainConfig {
    /// The largest `batch_size` and `eval_batch_size`: 60,000 images, the largest training
    /// split (MNIST's and Fashion-MNIST's; the bundled sample's has 8,000, and a batch
    /// larger than the split trained on is refused when the run starts). A larger batch
    /// would only allocate gigabytes before failing.
    pub const MAX_BATCH_SIZE: usize = 60_000;

    /// Reads a config file strictly: unknown fields and out-of-range values are errors
    /// naming the file and the field; absent fields take the seed's defaults.
    pub fn read(path: &Path) -> Result<Self> {
        let text = mnist_fs::read_to_string_capped(path, mnist_fs::MAX_JSON_BYTES).map_err(|source| Error::Read { path: path.to_path_buf(), source })?;
        let json_err = |message: String| mnist_model::Error::Json { path: path.to_path_buf(), message };
        let mut value = mnist_model::artifact::json::parse(&text).map_err(json_err)?;
        let renamed = migrate(&mut value).map_err(json_err)?;
        // An error about a value the file gives under an old name says so.
        let as_written = |message: String| match renamed.iter().find(|(_, new)| message.contains(&format!("adam.{new}"))) {
            Some((old, new)) => format!("{message} (the file's `{old}`, the old name of `adam.{new}`)"),
            None => message,
        };
        let config: TrainConfig = mnist_model::artifact::json::from_value_strict(value, &TrainConfig::new()).map_err(|e| json_err(as_written(least_one(e))))?;
        config.validate().map_err(|e| match e {
            Error::InvalidConfig { field, message, .. } => Error::InvalidConfig { file: Some(path.to_path_buf()), field, message: as_written(message) },
            other => other,
        })?;
        Ok(config)
    }

    /// Whether validation refuses 0 for the whole-number field at `path` (`steps`,
    /// `model.hidden`), all else the seed's.
    fn refuses_zero(path: &str) -> bool {
        let Ok(mut value) = serde_json::to_value(TrainConfig::new()) else { return false };
        let Some(slot) = path.split('.').try_fold(&mut value, |v, key| v.get_mut(key)) else { return false };
        *slot = 0.into();
        serde_json::from_value::<TrainConfig>(value)
            .is_ok_and(|config| matches!(config.validate(), Err(Error::InvalidConfig { field, .. }) if field == path))
    }

    /// Checks every value is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| Err(Error::InvalidConfig { file: None, field: field.to_string(), message });
        self.model.validate().map_err(|e| match e {
            // A message about a field (`hidden must be ...`) gets the field's path in this
            // file; one about the network as a whole (`the network would have ...`), its
            // section.
            mnist_model::Error::InvalidConfig { field: Some(field), message } => {
                Error::InvalidConfig { file: None, field: format!("model.{field}"), message: format!("model.{message}") }
            }
            mnist_model::Error::InvalidConfig { field: None, message } => {
                Error::InvalidConfig { file: None, field: "model".into(), message: format!("model: {message}") }
            }
            other => Error::Model(other),
        })?;
        if self.model.classes != mnist_data::CLASSES {
            return bad(
                "model.classes",
                format!(
                    "model.classes must be {} (every dataset here has {} classes, labels 0..=9), got {}",
                    mnist_data::CLASSES,
                    mnist_data::CLASSES,
                    self.model.classes
                ),
            );
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate <= f64::from(f32::MAX)) {
            return bad(
                "learning_rate",
                format!(
                    "learning_rate must be a positive number of at most {:e} (it is applied in f32), got {}",
                    f32::MAX,
                    if self.learning_rate.abs() >= 1e9 { format!("{:e}", self.learning_rate) } else { self.learning_rate.to_string() }
                ),
            );
        }
        for (name, v) in [("adam.beta_1", self.adam.beta_1), ("adam.beta_2", self.adam.beta_2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(name, format!("{name} must be in [0, 1), got {v}"));
            }
        }
        if !(self.adam.epsilon.is_finite() && self.adam.epsilon > 0.0) {
            return bad("adam.epsilon", format!("adam.epsilon must be positive, got {}", self.adam.epsilon));
        }
        let most = Self::MAX_BATCH_SIZE;
        for (name, v) in [("batch_size", self.batch_size), ("eval_batch_size", self.eval_batch_size)] {
            if v == 0 {
                return bad(name, format!("{name} must be at least 1, got 0"));
            }
            if v > most {
                return bad(name, format!("{name} must be at most {most} (the images of the largest training split, MNIST's), got {v}"));
            }
        }
        // The dropout mask's hash counts its elements in 32 bits.
        if self.batch_size.checked_mul(self.model.hidden).is_none_or(|n| u32::try_from(n).is_err()) {
            return bad(
                "batch_size",
                format!(
                    "batch_size must be at most {} with model.hidden {} (the dropout mask's batch_size x model.hidden elements are counted in 32 bits), got {}",
                    u32::MAX as usize / self.model.hidden.max(1),
                    self.model.hidden,
                    self.batch_size
                ),
            );
        }
        if self.steps == 0 {
            return bad("steps", "steps must be at least 1, got 0".into());
        }
        if self.log_every == 0 {
            return bad("log_every", "log_every must be at least 1, got 0".into());
        }
        Ok(())
    }
}

/// Rewrites a config written before Adam's values were grouped under `adam` with Burn's
/// names (`beta1`, `beta2` and `epsilon` at the top level) into today's form, so the
/// config.json and checkpoints of earlier runs still resume. Returns the old names found,
/// each with its new name under `adam`; a value given under both names is an error (which
/// one was meant?).
pub(crate) fn migrate(value: &mut Value) -> std::result::Result<Vec<(&'static str, &'static str)>, String> {
    let mut renamed = Vec::new();
    let Some(fields) = value.as_object_mut() else { return Ok(renamed) };
    for (old, new) in [("beta1", "beta_1"), ("beta2", "beta_2"), ("epsilon", "epsilon")] {
        if let Some(v) = fields.remove(old) {
            let adam = fields.entry("adam").or_insert_with(|| Value::Object(Default::default()));
            if let Some(adam) = adam.as_object_mut() {
                if adam.contains_key(new) {
                    return Err(format!("`{old}` is the old name of `adam.{new}`, and the file gives both: keep only `adam.{new}`"));
                }
                adam.insert(new.into(), v);
                renamed.push((old, new));
            }
        }
    }
    Ok(renamed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        for (config, needle) in [
            (TrainConfig::new().with_batch_size(0), "batch_size"),
            (TrainConfig::new().with_batch_size(1_000_000), "batch_size must be at most 60000 (the images of the largest training split, MNIST's), got 1000000"),
            (TrainConfig::new().with_batch_size(60_001), "batch_size must be at most 60000"),
            (TrainConfig::new().with_eval_batch_size(1_000_000), "eval_batch_size must be at most 60000 (the images of the largest training split, MNIST's), got 1000000"),
            (TrainConfig::new().with_eval_batch_size(0), "eval_batch_size must be at least 1, got 0"),
            (
                TrainConfig::new().with_batch_size(55_000).with_model(CnnConfig::new().with_hidden(80_000)),
                "batch_size must be at most 53687 with model.hidden 80000 (the dropout mask's batch_size x model.hidden elements are counted in 32 bits), got 55000",
            ),
            (TrainConfig::new().with_model(CnnConfig::new().with_init_std(1e30)), "model.init_std must be more than 0 and at most 10 (the seed's is 0.1), got 1e30"),
            (TrainConfig::new().with_learning_rate(1e308), "got 1e308"),
            (TrainConfig::new().with_learning_rate(-1e-4), "learning_rate"),
            (TrainConfig::new().with_learning_rate(1e39), "at most 3.4028235e38 (it is applied in f32)"),
            (TrainConfig::new().with_steps(0), "steps"),
            (TrainConfig::new().with_adam(FusedAdamConfig::new().with_beta_2(1.0)), "adam.beta_2"),
            (TrainConfig::new().with_adam(FusedAdamConfig::new().with_epsilon(0.0)), "adam.epsilon"),
            (TrainConfig::new().with_model(CnnConfig::new().with_dropout(1.5)), "dropout"),
            (TrainConfig::new().with_model(CnnConfig::new().with_classes(5)), "model.classes must be 10"),
            (TrainConfig::new().with_model(CnnConfig::new().with_classes(12)), "model.classes must be 10"),
            // A message about the model as a whole is put under its section, not glued to
            // a field's path ("model.the network ...").
            (TrainConfig::new().with_model(CnnConfig::new().with_hidden(100_000_000)), "model: the network would have 314,700,052,106 parameters"),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        TrainConfig::new().validate().unwrap();
        // The largest split's size itself is a batch.
        TrainConfig::new().with_batch_size(TrainConfig::MAX_BATCH_SIZE).with_eval_batch_size(TrainConfig::MAX_BATCH_SIZE).validate().unwrap();
        let largest = DatasetKind::ALL.iter().map(|k| k.split_sizes().0).max();
        assert_eq!(largest, Some(TrainConfig::MAX_BATCH_SIZE));
    }

    /// Each error names its field for a caller to match on, with its section; a problem of
    /// the network as a whole names the section.
    #[test]
    fn bad_values_name_their_field() {
        for (config, field) in [
            (TrainConfig::new().with_batch_size(0), "batch_size"),
            (TrainConfig::new().with_adam(FusedAdamConfig::new().with_beta_2(1.0)), "adam.beta_2"),
            (TrainConfig::new().with_model(CnnConfig::new().with_hidden(0)), "model.hidden"),
            (TrainConfig::new().with_model(CnnConfig::new().with_hidden(100_000_000)), "model"),
            (TrainConfig::new().with_log_every(0), "log_every"),
        ] {
            match config.validate() {
                Err(Error::InvalidConfig { file: None, field: found, message }) => assert!(found == field && message.starts_with(field), "{found}: {message}"),
                other => panic!("{field}: {other:?}"),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"model": {"dropout": 1.5}}"#).unwrap();
        match TrainConfig::read(&path) {
            Err(Error::InvalidConfig { file: Some(file), field, .. }) => assert!(file == path && field == "model.dropout", "{field}"),
            other => panic!("{other:?}"),
        }
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
        // A value of the wrong type says the least the field takes: 1 where 0 is refused.
        for (json, expected) in [
            (r#"{"steps": -5}"#, "field `steps`: expected a whole number, 1 or more, got -5"),
            (r#"{"model": {"hidden": "wide"}}"#, "field `model.hidden`: expected a whole number, 1 or more, got the string \"wide\""),
            (r#"{"seed": -1}"#, "field `seed`: expected a whole number, 0 or more, got -1"),
            (r#"{"checkpoint_every": 2.5}"#, "field `checkpoint_every`: expected a whole number, 0 or more, got 2.5"),
        ] {
            std::fs::write(&path, json).unwrap();
            let err = TrainConfig::read(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
        // Written before Adam's values moved under `adam`: read as they were meant.
        std::fs::write(&path, r#"{"beta1": 0.8, "beta2": 0.99, "epsilon": 1e-7, "steps": 3}"#).unwrap();
        let c = TrainConfig::read(&path).unwrap();
        assert_eq!((c.adam.beta_1, c.adam.beta_2, c.adam.epsilon, c.steps), (0.8, 0.99, 1e-7, 3));
        std::fs::write(&path, r#"{"adam": {"beta1": 0.8}}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("unknown field `adam.beta1`"), "{err}");
        // Both names of one value: which was meant? An old name's bad value is named as written.
        std::fs::write(&path, r#"{"beta1": 0.8, "adam": {"beta_1": 0.7}}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("`beta1` is the old name of `adam.beta_1`, and the file gives both"), "{err}");
        std::fs::write(&path, r#"{"beta1": 1.5}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("adam.beta_1 must be in [0, 1), got 1.5 (the file's `beta1`, the old name of `adam.beta_1`)"), "{err}");
        std::fs::write(&path, r#"{"beta2": "high"}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("field `adam.beta_2`: expected a number, got the string \"high\" (the file's `beta2`"), "{err}");
        // A key given twice, and a model value out of range, named once with its path.
        std::fs::write(&path, r#"{"steps": 10, "steps": 20}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("c.json") && err.contains("the key `steps` appears twice"), "{err}");
        std::fs::write(&path, r#"{"model": {"kernel_size": 4}}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("c.json: model.kernel_size must be an odd number from 1 to 28, got 4"), "{err}");
        assert_eq!(err.matches("invalid").count(), 1, "{err}");
        std::fs::write(&path, r#"{"batch_size": 0}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("c.json") && err.contains("batch_size"), "{err}");
        std::fs::write(&path, r#"{"batch_size": 1000000}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("c.json: batch_size must be at most 60000"), "{err}");
        std::fs::write(&path, r#"{"model": {"init_std": 1e30}}"#).unwrap();
        let err = TrainConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("c.json: model.init_std must be more than 0 and at most 10"), "{err}");
    }
}
