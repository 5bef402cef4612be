//! Weights on disk: Burn's recorder (named MessagePack, full precision) and safetensors
//! in PyTorch's layout, both written atomically and both checked tensor by tensor on load.

use std::fs;
use std::io::Write;
use std::path::Path;

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

use crate::error::{Error, Result};
use crate::model::{Cnn, CnnConfig};

const RECORD: &str = "Burn record";
const SAFETENSORS: &str = "safetensors";

/// Saves the weights with Burn's named MessagePack recorder (full precision).
pub fn save<B: Backend>(model: &Cnn<B>, path: &Path) -> Result<()> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder
        .record(model.clone().into_record(), ())
        .map_err(|e| Error::Format {
            path: path.to_path_buf(),
            format: RECORD,
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Loads weights saved by [`save`] into a network of `config`'s shape. A missing
/// tensor or a wrong shape is an error naming the tensor and both shapes.
pub fn load<B: Backend>(config: &CnnConfig, path: &Path, device: &B::Device) -> Result<Cnn<B>> {
    let bytes = read(path)?;
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let record = Recorder::<B>::load(&recorder, bytes, device).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        format: RECORD,
        message: e.to_string(),
    })?;
    let model = config.init::<B>(0, device)?.load_record(record);
    check_shapes(config, &model, path)?;
    Ok(model)
}

/// Exports the weights as safetensors in PyTorch's layout (linear weights `[out, in]`),
/// tensor names `conv1.weight`, `conv1.bias`, ..., `fc2.bias`.
pub fn export_safetensors<B: Backend>(model: &Cnn<B>, path: &Path) -> Result<()> {
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
    write_atomic(path, &bytes)
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

/// A temporary file in `dir` named `.tmp-XXXX<suffix>`, readable by all (0644 on Unix,
/// like any file a program writes), to be renamed over its destination.
pub fn temp_file_in(dir: &Path, suffix: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-").suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir)
}

/// File of the network's config in an artifact directory.
pub const CONFIG_FILE: &str = "model.json";
/// File of the weights (Burn record) in an artifact directory.
pub const WEIGHTS_FILE: &str = "model.mpk";
/// File of the same weights as safetensors (PyTorch layout) in an artifact directory.
pub const SAFETENSORS_FILE: &str = "model.safetensors";

/// Writes `model.json`, `model.mpk` and `model.safetensors` into `dir` (created if
/// needed), each atomically.
pub fn save_dir<B: Backend>(model: &Cnn<B>, config: &CnnConfig, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    crate::json::write(&dir.join(CONFIG_FILE), config)?;
    save(model, &dir.join(WEIGHTS_FILE))?;
    export_safetensors(model, &dir.join(SAFETENSORS_FILE))
}

/// Loads the network saved by [`save_dir`]: its config (strictly checked) and weights.
pub fn load_dir<B: Backend>(dir: &Path, device: &B::Device) -> Result<(CnnConfig, Cnn<B>)> {
    let config = crate::json::read_strict(&dir.join(CONFIG_FILE), &CnnConfig::new())?;
    config.validate().map_err(|e| Error::Json {
        path: dir.join(CONFIG_FILE),
        message: e.to_string(),
    })?;
    let model = load(&config, &dir.join(WEIGHTS_FILE), device)?;
    Ok((config, model))
}
