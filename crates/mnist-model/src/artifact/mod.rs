//! The artifact directory: the contract between training (which fills it) and
//! evaluation, prediction and serving (which read it). This module owns it whole: the
//! file names, the manifest `model.json`, the atomic writes every file goes through, and
//! the strict JSON its configs are read with ([`json`]).
//!
//! | file | written by | read by |
//! | --- | --- | --- |
//! | [`TRAIN_CONFIG`] `config.json` | training (start) | training `--resume` |
//! | [`METRICS`] `metrics.jsonl` | training (every `log_every` steps) | people, the plot |
//! | [`CHECKPOINT`] `checkpoint.bin` | training (every `checkpoint_every` steps, on a stop, at the end) | training `--resume` |
//! | [`LOCK`] `.lock` | training (held while it runs) | training: a second run into the directory is refused |
//! | [`MANIFEST`] `model.json` | training (end) | everything that loads the network |
//! | [`WEIGHTS`] `model.mpk`, [`SAFETENSORS`] `model.safetensors` | training (end) | [`load_dir`]; PyTorch |
//! | [`PLOT`] `plot.png`, [`REPORT`] `report.json` | training (end) | people |
//! | [`EVALUATION`] `eval.json` (`eval-DATASET.json` on another dataset: [`evaluation_file`]) | `mnist eval` | people |
//!
//! `model.json` holds the network's config (its fields at the top level), the dataset it
//! was trained on, the names of its classes, and the SHA-256 of both weight files, which
//! [`load_dir`] verifies before decoding.

pub mod json;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{Cnn, CnnConfig};
use crate::weights::{check_finite, decode, export_safetensors_bytes, read, save_bytes};

/// The training config of the run.
pub const TRAIN_CONFIG: &str = "config.json";
/// One JSON line per logged step.
pub const METRICS: &str = "metrics.jsonl";
/// Loss and accuracy curves.
pub const PLOT: &str = "plot.png";
/// The final report of a training run.
pub const REPORT: &str = "report.json";
/// The latest checkpoint.
pub const CHECKPOINT: &str = "checkpoint.bin";
/// Held, exclusively, by the process training in the directory.
pub const LOCK: &str = ".lock";
/// The manifest: the network's config, dataset, class names and weight checksums.
pub const MANIFEST: &str = "model.json";
/// The weights, as a Burn record.
pub const WEIGHTS: &str = "model.mpk";
/// The same weights as safetensors in PyTorch's layout.
pub const SAFETENSORS: &str = "model.safetensors";
/// `mnist eval`'s result.
pub const EVALUATION: &str = "eval.json";

/// The file `mnist eval` writes into a model's directory by default, for a model trained
/// on `trained_on` (as `model.json` records it, if it does) evaluated on the test split of
/// `evaluated`: [`EVALUATION`] on the model's own dataset (or when none is recorded),
/// `eval-DATASET.json` on another, so that evaluating a digit model on Fashion-MNIST does
/// not replace its own evaluation.
pub fn evaluation_file(trained_on: Option<&str>, evaluated: &str) -> String {
    match trained_on {
        Some(trained) if trained != evaluated => format!("eval-{evaluated}.json"),
        _ => EVALUATION.to_string(),
    }
}

/// The files a training run writes into its directory (all but [`EVALUATION`], which
/// `eval` rewrites): no other output may replace them.
pub const RUN_FILES: [&str; 8] = [TRAIN_CONFIG, METRICS, PLOT, REPORT, CHECKPOINT, MANIFEST, WEIGHTS, SAFETENSORS];

/// The run directory whose file writing `path` would replace: `path` is named like one of
/// [`RUN_FILES`] and its folder holds a run (a [`MANIFEST`] or a [`CHECKPOINT`]). `None`
/// for any other path.
pub fn run_file_replaced(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    if !RUN_FILES.contains(&name) {
        return None;
    }
    let dir = mnist_fs::parent_dir(path);
    holds_run(dir).then(|| dir.to_path_buf())
}

/// Whether `dir` holds a run: a [`MANIFEST`] (a trained model) or a [`CHECKPOINT`] (a run
/// under way or stopped).
pub fn holds_run(dir: &Path) -> bool {
    [MANIFEST, CHECKPOINT].iter().any(|f| dir.join(f).is_file())
}

/// Key of `model.json` holding the SHA-256 of each weight file, by file name.
pub const CHECKSUMS_KEY: &str = "sha256";
/// Key of `model.json` naming the dataset the network was trained on.
pub const DATASET_KEY: &str = "dataset";
/// Key of `model.json` listing the names of the classes, by class index.
pub const CLASS_NAMES_KEY: &str = "class_names";

/// Suffixes of the temporary files written into an artifact directory (JSON, weights,
/// checkpoints and metrics have none; the plot is `.png`).
pub const TEMP_SUFFIXES: [&str; 2] = ["", ".png"];

/// Writes `bytes` to `path` atomically and durably ([`mnist_fs::write_atomic`]): every
/// file of an artifact directory is written this way.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(mnist_fs::write_atomic(path, bytes)?)
}

/// A temporary file in `dir` for a file written piece by piece (the plot): renamed over
/// its destination by [`mnist_fs::commit`], or removed by [`remove_stale_temps`] if the
/// process dies first. `suffix` is one of [`TEMP_SUFFIXES`].
pub fn temp_file_in(dir: &Path, suffix: &str) -> std::io::Result<tempfile::NamedTempFile> {
    mnist_fs::temp_file_in(dir, mnist_fs::TEMP_PREFIX, suffix)
}

/// Removes the temporary files a killed process left in `dir` ([`mnist_fs::remove_stale_temps`]
/// with this directory's prefix and suffixes). Call it only where no other process writes
/// into `dir`: training calls it holding the directory's [`LOCK`].
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(mnist_fs::remove_stale_temps(dir, mnist_fs::TEMP_PREFIX, &TEMP_SUFFIXES, None)?)
}

/// What `model.json` says of a trained network.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The network's shape and initialisation.
    pub config: CnnConfig,
    /// The dataset it was trained on (`mnist`, `fashion`, `sample`); `None` for a manifest
    /// written before datasets were recorded.
    pub dataset: Option<String>,
    /// The name of each class, by index (`config.classes` of them); `None` for a manifest
    /// written before class names were recorded.
    pub class_names: Option<Vec<String>>,
    /// SHA-256 of each weight file, by file name (empty before [`save_dir`] fills it, and
    /// for a manifest written before checksums were recorded).
    pub sha256: BTreeMap<String, String>,
}

impl Manifest {
    /// The manifest of a network of `config` trained on `dataset` with `class_names`.
    pub fn new(config: CnnConfig, dataset: impl Into<String>, class_names: Vec<String>) -> Self {
        Manifest { config, dataset: Some(dataset.into()), class_names: Some(class_names), sha256: BTreeMap::new() }
    }

    /// The manifest of a network known only by its config (no dataset, classes named by
    /// their index): for a network built in memory.
    pub fn from_config(config: CnnConfig) -> Self {
        Manifest { config, dataset: None, class_names: None, sha256: BTreeMap::new() }
    }

    /// The name of class `class`: its recorded name, or the index itself when none is
    /// recorded.
    pub fn class_name(&self, class: usize) -> String {
        self.class_names.as_ref().and_then(|names| names.get(class)).cloned().unwrap_or_else(|| class.to_string())
    }

    /// Whether the manifest fits its network: [`Error::InvalidConfig`] names the field.
    fn check(&self) -> Result<()> {
        self.config.validate()?;
        let bad = |field: &str, message: String| Err(Error::InvalidConfig { field: Some(field.to_string()), message });
        if let Some(names) = &self.class_names {
            if names.len() != self.config.classes {
                return bad(CLASS_NAMES_KEY, format!("`{CLASS_NAMES_KEY}` lists {} names for a network of {} classes", names.len(), self.config.classes));
            }
            if let Some(i) = names.iter().position(|n| n.trim().is_empty()) {
                return bad(CLASS_NAMES_KEY, format!("`{CLASS_NAMES_KEY}` has an empty name for class {i}"));
            }
            // A prediction is reported by its class's name: two classes of one name could
            // not be told apart.
            for (j, name) in names.iter().enumerate() {
                if let Some(i) = names[..j].iter().position(|earlier| earlier.trim() == name.trim()) {
                    return bad(CLASS_NAMES_KEY, format!(
                        "`{CLASS_NAMES_KEY}` names classes {i} and {j} alike ({} and {}); expected a different name for each class",
                        shown(&names[i]),
                        shown(name)
                    ));
                }
            }
        }
        if self.dataset.as_deref().is_some_and(|d| d.trim().is_empty()) {
            return bad(DATASET_KEY, format!("`{DATASET_KEY}` is empty"));
        }
        Ok(())
    }
}

/// Most characters of a name an error quotes: a name of a hundred thousand (a manifest
/// made by a program gone wrong) was quoted whole.
const SHOWN_CHARS: usize = 40;

/// `name` quoted for an error message (`{:?}`), cut after [`SHOWN_CHARS`] characters with
/// how many there are.
fn shown(name: &str) -> String {
    let count = name.chars().count();
    if count <= SHOWN_CHARS {
        return format!("{name:?}");
    }
    let head: String = name.chars().take(SHOWN_CHARS).collect();
    format!("{head:?}... ({count} characters)")
}

/// Writes `model.mpk`, `model.safetensors` and then `model.json` into `dir` (created if
/// needed), each atomically; `model.json` holds `manifest` with the SHA-256 of the two
/// weight files just written.
///
/// # Errors
/// [`Error::NonFinite`] (and nothing written) when a tensor holds NaN or infinity;
/// [`Error::InvalidConfig`] when the manifest does not fit the network (class names).
pub fn save_dir<B: Backend>(model: &Cnn<B>, manifest: &Manifest, dir: &Path) -> Result<()> {
    check_finite(model, dir)?;
    manifest.check()?;
    fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.to_path_buf(), source })?;
    let mut sha256 = BTreeMap::new();
    sha256.insert(WEIGHTS.to_string(), mnist_fs::sha256_hex(&save_bytes(model, &dir.join(WEIGHTS))?));
    sha256.insert(SAFETENSORS.to_string(), mnist_fs::sha256_hex(&export_safetensors_bytes(model, &dir.join(SAFETENSORS))?));
    let path = dir.join(MANIFEST);
    let mut value = serde_json::to_value(&manifest.config).map_err(|e| Error::Json { path: path.clone(), message: e.to_string() })?;
    if let Value::Object(fields) = &mut value {
        if let Some(dataset) = &manifest.dataset {
            fields.insert(DATASET_KEY.into(), Value::from(dataset.as_str()));
        }
        if let Some(names) = &manifest.class_names {
            fields.insert(CLASS_NAMES_KEY.into(), Value::from(names.clone()));
        }
        fields.insert(CHECKSUMS_KEY.into(), serde_json::json!(sha256));
    }
    json::write(&path, &value)
}

/// Reads `model.json` of `dir`: the network's config (strictly checked, then validated),
/// the dataset, the class names and the SHA-256 recorded for each weight file.
///
/// # Errors
/// [`Error::UnfinishedRun`] when there is no `model.json` but a training checkpoint;
/// [`Error::NotAModel`] when `dir` is missing, a file, or holds neither;
/// [`Error::Read`] when it cannot be read otherwise; [`Error::Json`], naming the file,
/// when it is not a manifest of a valid network.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let json_err = |message: String| Error::Json { path: path.clone(), message };
    let text = mnist_fs::read_to_string_capped(&path, mnist_fs::MAX_JSON_BYTES).map_err(|source| {
        let not_a_model = |why| Error::NotAModel { dir: dir.to_path_buf(), why };
        match source.kind() {
            std::io::ErrorKind::NotFound if dir.join(CHECKPOINT).is_file() => Error::UnfinishedRun { dir: dir.to_path_buf() },
            std::io::ErrorKind::NotFound if dir.is_dir() => not_a_model("holds no model.json"),
            std::io::ErrorKind::NotFound if !dir.exists() => not_a_model("no such directory"),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory if dir.is_file() => not_a_model("a file, not a directory"),
            _ => Error::Read { path: path.clone(), source },
        }
    })?;
    // Strict: a key given twice is refused (serde_json would keep the last silently).
    let mut value: Value = json::parse(&text).map_err(json_err)?;
    let mut take = |key: &str| value.as_object_mut().and_then(|fields| fields.remove(key));
    let (digests, dataset, class_names) = (take(CHECKSUMS_KEY), take(DATASET_KEY), take(CLASS_NAMES_KEY));
    let sha256 = match digests {
        // Written before checksums were recorded: nothing to verify.
        None => BTreeMap::new(),
        Some(digests) => {
            let digests = serde_json::from_value::<BTreeMap<String, String>>(digests)
                .ok()
                .filter(|d| d.values().all(|h| mnist_fs::is_sha256_hex(h)))
                .ok_or_else(|| json_err(format!("`{CHECKSUMS_KEY}` must map file names to SHA-256 digests (64 hex digits)")))?;
            // All or nothing: a damaged key must not switch verification off.
            let known = [WEIGHTS, SAFETENSORS];
            if let Some(unknown) = digests.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(json_err(format!("`{CHECKSUMS_KEY}` names an unknown file `{unknown}`; expected {}", known.join(" and "))));
            }
            if let Some(missing) = known.iter().find(|k| !digests.contains_key(**k)) {
                return Err(json_err(format!("`{CHECKSUMS_KEY}` records no digest for {missing}; model.json is damaged: retrain or restore it")));
            }
            digests
        }
    };
    let dataset = dataset
        .or_else(|| legacy_dataset(dir))
        .map(|d| d.as_str().map(str::to_string).ok_or_else(|| json_err(format!("`{DATASET_KEY}` must be a dataset name (a string)"))))
        .transpose()?;
    let class_names = class_names
        .map(|n| serde_json::from_value::<Vec<String>>(n).map_err(|_| json_err(format!("`{CLASS_NAMES_KEY}` must be a list of names (strings)"))))
        .transpose()?;
    // The network's fields are checked against its config; the manifest's own keys (taken
    // out above) are named among what is expected too.
    let config: CnnConfig = json::from_value_strict_beside(value, &CnnConfig::new(), &[DATASET_KEY, CLASS_NAMES_KEY, CHECKSUMS_KEY]).map_err(json_err)?;
    let manifest = Manifest { config, dataset, class_names, sha256 };
    manifest.check().map_err(|e| json_err(match e {
        Error::InvalidConfig { message, .. } => message,
        other => other.to_string(),
    }))?;
    Ok(manifest)
}

/// The `dataset` of the directory's `report.json`, for a `model.json` written before the
/// manifest recorded it.
fn legacy_dataset(dir: &Path) -> Option<Value> {
    let report: Value = serde_json::from_str(&mnist_fs::read_to_string_capped(&dir.join(REPORT), mnist_fs::MAX_JSON_BYTES).ok()?).ok()?;
    report.get(DATASET_KEY).filter(|d| d.is_string()).cloned()
}

/// Loads the network saved by [`save_dir`]: its manifest (strictly checked) and weights,
/// verified against the SHA-256 `model.json` records ([`Error::Checksum`] when they differ).
pub fn load_dir<B: Backend>(dir: &Path, device: &B::Device) -> Result<(Manifest, Cnn<B>)> {
    let manifest = read_manifest(dir)?;
    let model = load_weights(dir, &manifest, device)?;
    Ok((manifest, model))
}

/// Holds `bytes`, read from `path`, to the SHA-256 the `model.json` beside it records
/// for the file's name, when there is such a manifest and it records one (a manifest
/// that cannot be read is left to whoever loads the directory). [`Error::Checksum`] when
/// they differ.
pub(crate) fn verify_recorded(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, Some(name)) = (mnist_fs::parent_dir(path), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(());
    };
    match dir.join(MANIFEST).is_file().then(|| read_manifest(dir)) {
        Some(Ok(manifest)) => check_digest(&manifest, dir, name, path, bytes),
        _ => Ok(()),
    }
}

/// Holds `bytes` of the file `name` of `dir`, read from `path`, to the SHA-256 `manifest`
/// records for it, if it records one.
fn check_digest(manifest: &Manifest, dir: &Path, name: &str, path: &Path, bytes: &[u8]) -> Result<()> {
    check_digest_of(manifest, dir, name, path, || Ok(mnist_fs::sha256_hex(bytes)))
}

/// Holds the SHA-256 `digest` gives (hex) of the file `name` of `dir`, at `path`, to the
/// one `manifest` records for it, if it records one (then only is `digest` called).
fn check_digest_of(manifest: &Manifest, dir: &Path, name: &str, path: &Path, digest: impl FnOnce() -> Result<String>) -> Result<()> {
    if let Some(expected) = manifest.sha256.get(name) {
        let found = digest()?;
        if !found.eq_ignore_ascii_case(expected) {
            return Err(Error::Checksum { path: path.to_path_buf(), recorded_in: dir.join(MANIFEST).display().to_string(), expected: expected.clone(), found });
        }
    }
    Ok(())
}

/// Checks the model files of `dir` without decoding them: `model.json` reads, and both
/// weight files have the SHA-256 it records.
///
/// # Errors
/// [`read_manifest`]'s, [`Error::Read`] for a weight file missing or unreadable, and
/// [`Error::Checksum`] for one that is damaged.
pub fn verify_dir(dir: &Path) -> Result<()> {
    let manifest = read_manifest(dir)?;
    for name in [WEIGHTS, SAFETENSORS] {
        let path = dir.join(name);
        let read_err = |source| Error::Read { path: path.clone(), source };
        let file = mnist_fs::open_file(&path).map_err(read_err)?;
        check_digest_of(&manifest, dir, name, &path, || mnist_fs::sha256_reader(std::io::BufReader::new(file)).map_err(read_err))?;
    }
    Ok(())
}

/// The weights of `dir` for a `manifest` already read from it by [`read_manifest`]:
/// verified against its SHA-256 ([`Error::Checksum`] when they differ), then decoded into
/// a network of its config. [`load_dir`] is the two in one.
pub fn load_weights<B: Backend>(dir: &Path, manifest: &Manifest, device: &B::Device) -> Result<Cnn<B>> {
    let path = dir.join(WEIGHTS);
    let bytes = read(&path)?;
    check_digest(manifest, dir, WEIGHTS, &path, &bytes)?;
    decode(&manifest.config, bytes, &path, device)
}
