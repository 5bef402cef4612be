//! Weights on disk: Burn's recorder (named MessagePack, full precision) and safetensors
//! in PyTorch's layout, both written atomically and both checked tensor by tensor on load.
//!
//! Weights holding NaN or infinite values (a diverged run) are refused both ways: never
//! written, never loaded. An artifact directory's `model.json` records the SHA-256 of
//! `model.mpk` and `model.safetensors`, and [`load_dir`] verifies it, so a damaged or
//! truncated file is named as such instead of decoding into wrong weights.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

use crate::error::{Error, Result};
use crate::model::{Cnn, CnnConfig};

const RECORD: &str = "Burn record";
const SAFETENSORS: &str = "safetensors";

/// Saves the weights with Burn's named MessagePack recorder (full precision).
///
/// # Errors
/// [`Error::NonFinite`] (and nothing written) when a tensor holds NaN or infinity.
pub fn save<B: Backend>(model: &Cnn<B>, path: &Path) -> Result<()> {
    check_finite(model, path)?;
    save_bytes(model, path).map(|_| ())
}

/// [`save`] of weights already checked to be finite, returning the bytes written.
fn save_bytes<B: Backend>(model: &Cnn<B>, path: &Path) -> Result<Vec<u8>> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder
        .record(model.clone().into_record(), ())
        .map_err(|e| Error::Format {
            path: path.to_path_buf(),
            format: RECORD,
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)?;
    Ok(bytes)
}

/// Loads weights saved by [`save`] into a network of `config`'s shape. A missing
/// tensor or a wrong shape is an error naming the tensor and both shapes; so is a tensor
/// holding NaN or infinity ([`Error::NonFinite`]).
pub fn load<B: Backend>(config: &CnnConfig, path: &Path, device: &B::Device) -> Result<Cnn<B>> {
    decode(config, read(path)?, path, device)
}

fn decode<B: Backend>(config: &CnnConfig, bytes: Vec<u8>, path: &Path, device: &B::Device) -> Result<Cnn<B>> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let record = Recorder::<B>::load(&recorder, bytes, device).map_err(|e| record_error(path, &e))?;
    let model = config.init::<B>(0, device)?.load_record(record);
    check_shapes(config, &model, path)?;
    check_finite(&model, path)?;
    Ok(model)
}

/// The error for bytes Burn's recorder cannot decode. Burn's own message adds advice
/// about record formats of Burn 0.14 to 0.16, which does not apply to these files; it is
/// left out.
pub fn record_error(path: &Path, e: &burn::record::RecorderError) -> Error {
    let text = e.to_string();
    let cut = text.find("The internal data format has changed").unwrap_or(text.len());
    let cause = text[..cut].trim_end();
    // Burn quotes its decoder's error (a newline escaped inside it) as `Unknown("...`.
    let cause = cause.strip_suffix("\\n").unwrap_or(cause).trim_end();
    let cause = cause.strip_prefix("Unknown(\"").unwrap_or(cause);
    Error::Format {
        path: path.to_path_buf(),
        format: RECORD,
        message: format!("it cannot be decoded ({cause}); the file is damaged, truncated or not written by mnist-rs"),
    }
}

/// The first parameter of `model`, by path (e.g. `fc1.weight`), holding a NaN or an
/// infinity; `None` when all are finite. One read from the device for all parameters.
pub fn first_non_finite<B: Backend>(model: &Cnn<B>) -> Option<String> {
    struct Finite<B: Backend> {
        path: Vec<String>,
        names: Vec<String>,
        checks: Vec<Tensor<B, 1, Int>>,
    }
    impl<B: Backend> ModuleVisitor<B> for Finite<B> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.names.push(self.path.join("."));
            self.checks.push(param.val().is_finite().all().int());
        }
    }
    let mut visitor = Finite { path: Vec::new(), names: Vec::new(), checks: Vec::new() };
    model.visit(&mut visitor);
    if visitor.checks.is_empty() {
        return None;
    }
    let finite = Tensor::cat(visitor.checks, 0).into_data();
    let finite = finite.iter::<i64>().map(|v| v != 0);
    visitor.names.into_iter().zip(finite).find(|(_, ok)| !ok).map(|(name, _)| name)
}

/// [`first_non_finite`] as an error naming `path`, the file being written or read.
pub fn check_finite<B: Backend>(model: &Cnn<B>, path: &Path) -> Result<()> {
    match first_non_finite(model) {
        None => Ok(()),
        Some(tensor) => Err(Error::NonFinite {
            path: path.to_path_buf(),
            tensor,
        }),
    }
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Exports the weights as safetensors in PyTorch's layout (linear weights `[out, in]`),
/// tensor names `conv1.weight`, `conv1.bias`, ..., `fc2.bias`.
pub fn export_safetensors<B: Backend>(model: &Cnn<B>, path: &Path) -> Result<()> {
    check_finite(model, path)?;
    export_safetensors_bytes(model, path).map(|_| ())
}

/// [`export_safetensors`] of weights already checked to be finite, returning the bytes
/// written.
fn export_safetensors_bytes<B: Backend>(model: &Cnn<B>, path: &Path) -> Result<Vec<u8>> {
    let format_err = |message: String| Error::Format {
        path: path.to_path_buf(),
        format: SAFETENSORS,
        message,
    };
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .metadata("producer", "mnist-rs")
        .metadata("layout", "pytorch");
    model.save_into(&mut store).map_err(|e| format_err(e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| format_err(e.to_string()))?;
    write_atomic(path, &bytes)?;
    Ok(bytes)
}

/// Imports safetensors in PyTorch's layout (as written by [`export_safetensors`], or by
/// `safetensors.torch.save_file` of the same network with these tensor names).
pub fn import_safetensors<B: Backend>(config: &CnnConfig, path: &Path, device: &B::Device) -> Result<Cnn<B>> {
    let bytes = read(path)?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(PyTorchToBurnAdapter)
        .validate(false)
        .allow_partial(true);
    let mut model = config.init::<B>(0, device)?;
    let result = model.load_from(&mut store).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        format: SAFETENSORS,
        message: e.to_string(),
    })?;
    if let Some(err) = result.errors.first() {
        return Err(match err {
            burn_store::ApplyError::ShapeMismatch { path: tensor, expected, found } => Error::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: tensor.clone(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            },
            other => Error::Format {
                path: path.to_path_buf(),
                format: SAFETENSORS,
                message: other.to_string(),
            },
        });
    }
    if let Some((tensor, _)) = result.missing.first() {
        return Err(Error::MissingTensor {
            path: path.to_path_buf(),
            tensor: tensor.clone(),
            expected: expected_shape(config, tensor),
        });
    }
    check_shapes(config, &model, path)?;
    check_finite(&model, path)?;
    Ok(model)
}

fn expected_shape(config: &CnnConfig, tensor: &str) -> Vec<usize> {
    config
        .param_shapes()
        .into_iter()
        .find(|(name, _)| *name == tensor)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

/// Checks that `model` holds the tensors of `config` with their shapes; an error names
/// the first tensor that is missing or of another shape, and `path` it came from.
pub fn check_shapes<B: Backend>(config: &CnnConfig, model: &Cnn<B>, path: &Path) -> Result<()> {
    let found: Vec<(String, Vec<usize>)> = model
        .collect(None, None, false)
        .into_iter()
        .map(|s| (s.full_path(), s.shape.to_vec()))
        .collect();
    for (name, expected) in config.param_shapes() {
        match found.iter().find(|(n, _)| n == name) {
            None => {
                return Err(Error::MissingTensor {
                    path: path.to_path_buf(),
                    tensor: name.to_string(),
                    expected,
                });
            }
            Some((_, shape)) if *shape != expected => {
                return Err(Error::ShapeMismatch {
                    path: path.to_path_buf(),
                    tensor: name.to_string(),
                    expected,
                    found: shape.clone(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced,
/// then renamed over `path`. A reader never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let write_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = temp_file_in(dir, "").map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

/// Prefix of this program's temporary files.
const TEMP_PREFIX: &str = ".tmp-";
/// Random characters after the prefix (tempfile's default).
const TEMP_RANDOM: usize = 6;

/// A temporary file in `dir` named `.tmp-XXXXXX<suffix>` (six random letters and digits),
/// readable by all (0644 on Unix, like any file a program writes), to be renamed over its
/// destination. A process killed before the rename leaves it behind:
/// [`remove_stale_temps`] removes such files.
pub fn temp_file_in(dir: &Path, suffix: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX).suffix(suffix).rand_bytes(TEMP_RANDOM);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir)
}

/// Whether `name` is one of this program's temporary files with suffix `suffix`: the
/// prefix, exactly six ASCII letters or digits, then the suffix.
pub fn is_own_temp(name: &str, suffix: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX)
        .and_then(|rest| rest.strip_suffix(suffix))
        .is_some_and(|random| random.len() == TEMP_RANDOM && random.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Removes from `dir` the regular files that [`temp_file_in`] made with one of `suffixes`
/// and that were never renamed (a process killed while writing); other files are left
/// alone. Returns the paths removed. Call it only where no other process writes into
/// `dir` (a training run owns its artifact directory).
pub fn remove_stale_temps(dir: &Path, suffixes: &[&str]) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !suffixes.iter().any(|s| is_own_temp(name, s)) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        fs::remove_file(entry.path()).map_err(|source| Error::Write {
            path: entry.path(),
            source,
        })?;
        removed.push(entry.path());
    }
    Ok(removed)
}

/// File of the network's config in an artifact directory.
pub const CONFIG_FILE: &str = "model.json";
/// File of the weights (Burn record) in an artifact directory.
pub const WEIGHTS_FILE: &str = "model.mpk";
/// File of the same weights as safetensors (PyTorch layout) in an artifact directory.
pub const SAFETENSORS_FILE: &str = "model.safetensors";

/// Key of `model.json` holding the SHA-256 of each weight file, by file name.
pub const CHECKSUMS_KEY: &str = "sha256";

/// Writes `model.mpk`, `model.safetensors` and then `model.json` into `dir` (created if
/// needed), each atomically; `model.json` holds the network's config and the SHA-256 of
/// the two weight files (under [`CHECKSUMS_KEY`]).
///
/// # Errors
/// [`Error::NonFinite`] (and nothing written) when a tensor holds NaN or infinity.
pub fn save_dir<B: Backend>(model: &Cnn<B>, config: &CnnConfig, dir: &Path) -> Result<()> {
    check_finite(model, dir)?;
    fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut checksums = BTreeMap::new();
    checksums.insert(WEIGHTS_FILE, sha256_hex(&save_bytes(model, &dir.join(WEIGHTS_FILE))?));
    checksums.insert(SAFETENSORS_FILE, sha256_hex(&export_safetensors_bytes(model, &dir.join(SAFETENSORS_FILE))?));
    let mut manifest = serde_json::to_value(config).map_err(|e| Error::Json {
        path: dir.join(CONFIG_FILE),
        message: e.to_string(),
    })?;
    if let Value::Object(fields) = &mut manifest {
        fields.insert(CHECKSUMS_KEY.into(), serde_json::json!(checksums));
    }
    crate::json::write(&dir.join(CONFIG_FILE), &manifest)
}

/// Reads `model.json`: the network's config (strictly checked, then validated) and the
/// SHA-256 it records for each weight file (none for files written before checksums were
/// recorded).
pub fn read_manifest(dir: &Path) -> Result<(CnnConfig, BTreeMap<String, String>)> {
    let path = dir.join(CONFIG_FILE);
    let json_err = |message: String| Error::Json {
        path: path.clone(),
        message,
    };
    let text = fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let mut value: Value = serde_json::from_str(&text).map_err(|e| json_err(format!("not valid JSON: {e}")))?;
    let checksums = match value.as_object_mut().and_then(|fields| fields.remove(CHECKSUMS_KEY)) {
        // Written before checksums were recorded: nothing to verify.
        None => BTreeMap::new(),
        Some(digests) => {
            let digests = serde_json::from_value::<BTreeMap<String, String>>(digests)
                .ok()
                .filter(|d| d.values().all(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())))
                .ok_or_else(|| json_err(format!("`{CHECKSUMS_KEY}` must map file names to SHA-256 digests (64 hex digits)")))?;
            // All or nothing: a damaged key must not switch verification off.
            let known = [WEIGHTS_FILE, SAFETENSORS_FILE];
            if let Some(unknown) = digests.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(json_err(format!("`{CHECKSUMS_KEY}` names an unknown file `{unknown}`; expected {}", known.join(" and "))));
            }
            if let Some(missing) = known.iter().find(|k| !digests.contains_key(**k)) {
                return Err(json_err(format!("`{CHECKSUMS_KEY}` records no digest for {missing}; model.json is damaged: retrain or restore it")));
            }
            digests
        }
    };
    let config: CnnConfig = crate::json::from_value_strict(value, &CnnConfig::new()).map_err(json_err)?;
    config.validate().map_err(|e| json_err(e.to_string()))?;
    Ok((config, checksums))
}

/// Loads the network saved by [`save_dir`]: its config (strictly checked) and weights,
/// verified against the SHA-256 `model.json` records ([`Error::Checksum`] when they differ).
pub fn load_dir<B: Backend>(dir: &Path, device: &B::Device) -> Result<(CnnConfig, Cnn<B>)> {
    let (config, checksums) = read_manifest(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = read(&path)?;
    if let Some(expected) = checksums.get(WEIGHTS_FILE) {
        let found = sha256_hex(&bytes);
        if !found.eq_ignore_ascii_case(expected) {
            return Err(Error::Checksum {
                path,
                recorded_in: dir.join(CONFIG_FILE).display().to_string(),
                expected: expected.clone(),
                found,
            });
        }
    }
    let model = decode(&config, bytes, &path, device)?;
    Ok((config, model))
}
