//! Weights on disk: Burn's recorder (named MessagePack, full precision) and safetensors
//! in PyTorch's layout, both written atomically and both checked tensor by tensor on load.
//!
//! Weights holding NaN or infinite values (a diverged run) are refused both ways: never
//! written, never loaded. An artifact directory's `model.json` records the SHA-256 of
//! `model.mpk` and `model.safetensors`, and [`crate::artifact::load_dir`] verifies it, so a
//! damaged or truncated file is named as such instead of decoding into wrong weights.

use std::fs;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

use crate::artifact::write_atomic;
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
pub(crate) fn save_bytes<B: Backend>(model: &Cnn<B>, path: &Path) -> Result<Vec<u8>> {
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

pub(crate) fn decode<B: Backend>(config: &CnnConfig, bytes: Vec<u8>, path: &Path, device: &B::Device) -> Result<Cnn<B>> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let record: <Cnn<B> as Module<B>>::Record = Recorder::<B>::load(&recorder, bytes, device).map_err(|e| record_error(path, &e))?;
    // The file's shapes against the config's before a network of the config's shape is
    // built: a config edited to a huge width would otherwise allocate it first.
    check_record_shapes(config, &record, path)?;
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

/// Exports the weights as safetensors in PyTorch's layout (linear weights `[out, in]`),
/// tensor names `conv1.weight`, `conv1.bias`, ..., `fc2.bias`.
pub fn export_safetensors<B: Backend>(model: &Cnn<B>, path: &Path) -> Result<()> {
    check_finite(model, path)?;
    export_safetensors_bytes(model, path).map(|_| ())
}

/// [`export_safetensors`] of weights already checked to be finite, returning the bytes
/// written.
pub(crate) fn export_safetensors_bytes<B: Backend>(model: &Cnn<B>, path: &Path) -> Result<Vec<u8>> {
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
///
/// A file in an artifact directory whose `model.json` records its SHA-256 is verified
/// against it first ([`Error::Checksum`] when they differ, as for `model.mpk`); a file
/// anywhere else has no checksum to be held to.
pub fn import_safetensors<B: Backend>(config: &CnnConfig, path: &Path, device: &B::Device) -> Result<Cnn<B>> {
    let bytes = read(path)?;
    crate::artifact::verify_recorded(path, &bytes)?;
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
    compare_shapes(config, path, |name| found.iter().find(|(n, _)| n == name).map(|(_, shape)| shape.clone()))
}

/// [`check_shapes`] on a record read from `path`, before any network is built.
fn check_record_shapes<B: Backend>(config: &CnnConfig, record: &<Cnn<B> as Module<B>>::Record, path: &Path) -> Result<()> {
    let shape = |p: &Param<Tensor<B, 1>>| p.lazy_shape().to_vec();
    let found: [(&str, Option<Vec<usize>>); 8] = [
        ("conv1.weight", Some(record.conv1.weight.lazy_shape().to_vec())),
        ("conv1.bias", record.conv1.bias.as_ref().map(shape)),
        ("conv2.weight", Some(record.conv2.weight.lazy_shape().to_vec())),
        ("conv2.bias", record.conv2.bias.as_ref().map(shape)),
        ("fc1.weight", Some(record.fc1.weight.lazy_shape().to_vec())),
        ("fc1.bias", record.fc1.bias.as_ref().map(shape)),
        ("fc2.weight", Some(record.fc2.weight.lazy_shape().to_vec())),
        ("fc2.bias", record.fc2.bias.as_ref().map(shape)),
    ];
    compare_shapes(config, path, |name| found.iter().find(|(n, _)| *n == name).and_then(|(_, s)| s.clone()))
}

/// Each of `config`'s parameters against the shape `found` gives for its path (`None`:
/// missing): the first missing or of another shape is the error, naming `path`.
fn compare_shapes(config: &CnnConfig, path: &Path, found: impl Fn(&str) -> Option<Vec<usize>>) -> Result<()> {
    for (name, expected) in config.param_shapes() {
        match found(name) {
            None => return Err(Error::MissingTensor { path: path.to_path_buf(), tensor: name.to_string(), expected }),
            Some(shape) if shape != expected => {
                return Err(Error::ShapeMismatch { path: path.to_path_buf(), tensor: name.to_string(), expected, found: shape });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}
