//! Weights on disk: Burn's recorder (named MessagePack, full precision) and safetensors
//! in PyTorch's layout, both written atomically and both checked tensor by tensor on load.
//!
//! Weights holding NaN or infinite values (a diverged run) are refused both ways: never
//! written, never loaded. An artifact directory's `model.json` records the SHA-256 of
//! `model.mpk` and `model.safetensors`, and [`crate::artifact::load_dir`] verifies it, so a
//! damaged or truncated file is named as such instead of decoding into wrong weights.
//!
//! Both files are a function of the weights alone: the same weights give the same bytes
//! (so two identical training runs record the same checksums). `model.mpk` records each
//! parameter under an id derived from its path ([`path_id`]) instead of Burn's random
//! one, and `model.safetensors` has its header's `__metadata__` keys sorted
//! (`canonical_header`).

use std::path::Path;

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
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

/// [`save`] of weights already checked to be finite, returning the bytes written. Each
/// parameter is recorded under the id [`path_id`] gives its path, so the same weights
/// always give the same bytes (Burn gives every parameter a random id when it is made,
/// and the recorder writes it). Loading takes the ids from the file, as it always did.
pub(crate) fn save_bytes<B: Backend>(model: &Cnn<B>, path: &Path) -> Result<Vec<u8>> {
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = recorder
        .record(with_path_ids(model.clone()).into_record(), ())
        .map_err(|e| Error::Format {
            path: path.to_path_buf(),
            format: RECORD,
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)?;
    Ok(bytes)
}

/// `model` with each parameter's id replaced by [`path_id`] of its path (`fc1.weight`).
fn with_path_ids<B: Backend>(model: Cnn<B>) -> Cnn<B> {
    struct PathIds {
        path: Vec<String>,
    }
    impl<B: Backend> ModuleMapper<B> for PathIds {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (_, tensor, mapper) = param.consume();
            Param::from_mapped_value(path_id(&self.path.join(".")), tensor, mapper)
        }
    }
    model.map(&mut PathIds { path: Vec::new() })
}

/// The id `model.mpk` records for the parameter at `path` (`conv1.weight`, ...): the
/// 64-bit FNV-1a hash of the path, the same in every run and on every platform (distinct
/// for the network's eight parameters; a unit test holds it).
pub fn path_id(path: &str) -> ParamId {
    let hash = path.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    ParamId::from(hash)
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
    let bytes = canonical_header(&bytes).map_err(|e| format_err(format!("cannot reorder its header: {e}")))?;
    write_atomic(path, &bytes)?;
    Ok(bytes)
}

/// `bytes`, a safetensors file, with its JSON header written in a fixed order: the
/// `__metadata__` map first, its keys sorted (the safetensors crate writes it from a
/// `HashMap`, in an order that changes from one run to the next), then the tensors in the
/// order they were written (by dtype, then by name), their data untouched. The header is
/// padded with spaces to a multiple of 8 bytes, as the safetensors crate pads it.
fn canonical_header(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let n = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .and_then(|b| usize::try_from(u64::from_le_bytes(b)).ok())
        .ok_or("shorter than the 8 bytes of its header's length")?;
    let header = bytes.get(8..).and_then(|rest| rest.get(..n)).ok_or("shorter than its header")?;
    let data = &bytes[8 + n..];
    let header = std::str::from_utf8(header).map_err(|e| e.to_string())?;
    let Entries(entries) = serde_json::from_str(header).map_err(|e| e.to_string())?;
    let mut fields = Vec::with_capacity(entries.len());
    let (metadata, tensors): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(name, _)| name == "__metadata__");
    for (name, value) in metadata.into_iter().chain(tensors) {
        let value = match value {
            serde_json::Value::Object(map) => serde_json::to_string(&map.into_iter().collect::<BTreeMap<_, _>>()),
            other => serde_json::to_string(&other),
        };
        fields.push(format!("{}:{}", serde_json::to_string(&name).map_err(|e| e.to_string())?, value.map_err(|e| e.to_string())?));
    }
    let mut header = format!("{{{}}}", fields.join(",")).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    Ok(out)
}

/// A JSON object's entries in the order they are written (a `serde_json::Map` sorts them,
/// or keeps them, depending on a cargo feature of serde_json).
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Visit)
    }
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

/// The largest weight file a network of at most [`MAX_PARAMS`](crate::model::MAX_PARAMS)
/// parameters makes, with room for its record's names and framing.
pub const MAX_WEIGHT_FILE_BYTES: u64 = 4 * crate::model::MAX_PARAMS as u64 + (64 << 20);

/// Reads a weight file: at most [`MAX_PARAMS`](crate::model::MAX_PARAMS) f32 values and
/// their record's framing.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    mnist_fs::read_capped(path, MAX_WEIGHT_FILE_BYTES).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use burn_flex::Flex;

    use super::*;

    fn small() -> CnnConfig {
        CnnConfig::new().with_conv1_channels(2).with_conv2_channels(3).with_hidden(8)
    }

    /// The JSON header of the safetensors file `bytes`, as written.
    fn header(bytes: &[u8]) -> &str {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        std::str::from_utf8(&bytes[8..8 + n]).unwrap()
    }

    #[test]
    fn the_same_weights_export_to_the_same_safetensors_bytes() {
        let (device, dir) = (Default::default(), tempfile::tempdir().unwrap());
        let config = small();
        let model = config.init::<Flex>(5, &device).unwrap();
        let path = dir.path().join("model.safetensors");
        // The metadata map is a HashMap with a new random order each time it is made:
        // twenty exports in the old order of the day would not all have agreed.
        let first = export_safetensors_bytes(&model, &path).unwrap();
        for _ in 0..20 {
            assert!(export_safetensors_bytes(&model, &path).unwrap() == first, "two exports of the same weights differ");
        }
        // The same weights in another network value (other random ParamIds): the same bytes.
        let again = config.init::<Flex>(5, &device).unwrap();
        assert!(export_safetensors_bytes(&again, &path).unwrap() == first);
        assert!(std::fs::read(&path).unwrap() == first);
        let text = header(&first);
        assert!(text.starts_with(r#"{"__metadata__":{"format":"safetensors","layout":"pytorch","producer":"mnist-rs","version":""#), "{text}");
        assert!(text.len().is_multiple_of(8) && text.trim_end().len() + 8 > text.len(), "not padded to 8 bytes: {text:?}");
        // Still a file safetensors reads, into the same weights.
        let imported = import_safetensors::<Flex>(&config, &path, &device).unwrap();
        assert_eq!(
            imported.fc1.weight.val().into_data().to_vec::<f32>().unwrap(),
            model.fc1.weight.val().into_data().to_vec::<f32>().unwrap()
        );
        // Tensors are written by name (all f32), so their order is fixed too.
        let names: Vec<usize> = ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight", "fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
            .iter()
            .map(|name| text.find(&format!("\"{name}\"")).unwrap())
            .collect();
        assert!(names.is_sorted(), "{text}");
    }

    #[test]
    fn a_header_is_reordered_and_its_data_kept() {
        let written = r#"{"__metadata__":{"b":"2","a":"1"},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut file = (written.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(written.as_bytes());
        file.extend_from_slice(&[1, 2, 3, 4]);
        let out = canonical_header(&file).unwrap();
        assert_eq!(header(&out), r#"{"__metadata__":{"a":"1","b":"2"},"x":{"data_offsets":[0,4],"dtype":"F32","shape":[1]}} "#);
        assert_eq!(&out[out.len() - 4..], &[1, 2, 3, 4]);
        // A damaged file is an error, not a panic.
        assert!(canonical_header(&file[..5]).unwrap_err().contains("8 bytes"));
        assert!(canonical_header(&file[..20]).unwrap_err().contains("shorter than its header"));
    }

    #[test]
    fn the_same_weights_save_to_the_same_record_bytes_and_load_back() {
        let (device, dir) = (Default::default(), tempfile::tempdir().unwrap());
        let config = small();
        let path = dir.path().join("model.mpk");
        // Two networks of the same seed: the same weights under other random ParamIds.
        let (a, b) = (config.init::<Flex>(9, &device).unwrap(), config.init::<Flex>(9, &device).unwrap());
        assert_ne!(a.fc1.weight.id, b.fc1.weight.id);
        let first = save_bytes(&a, &path).unwrap();
        assert!(save_bytes(&b, &path).unwrap() == first, "two records of the same weights differ");
        // The model saved keeps its own ids; the one loaded has the ids of the paths.
        assert_ne!(a.fc1.weight.id, path_id("fc1.weight"));
        let loaded = load::<Flex>(&config, &path, &device).unwrap();
        assert_eq!(loaded.fc1.weight.id, path_id("fc1.weight"));
        assert_eq!(loaded.conv2.bias.as_ref().unwrap().id, path_id("conv2.bias"));
        assert_eq!(
            loaded.conv1.weight.val().into_data().to_vec::<f32>().unwrap(),
            a.conv1.weight.val().into_data().to_vec::<f32>().unwrap()
        );
        // Other weights, other bytes.
        let c = config.init::<Flex>(10, &device).unwrap();
        assert!(save_bytes(&c, &path).unwrap() != first);
    }

    /// The weights stored as training stores them (fc1's by columns on burn-flex with
    /// AVX-512) save and export the same bytes, keep their ids, and give the same outputs.
    #[test]
    fn the_training_layout_saves_the_same_bytes() {
        let (device, dir) = (Default::default(), tempfile::tempdir().unwrap());
        let config = CnnConfig::new();
        let path = dir.path().join("model");
        let model = config.init::<Flex>(9, &device).unwrap();
        let ids = (model.fc1.weight.id, model.fc2.weight.id);
        let (record, exported) = (save_bytes(&model, &path).unwrap(), export_safetensors_bytes(&model, &path).unwrap());
        let images = Tensor::<Flex, 4>::from_data(TensorData::new((0..2 * 784).map(|v| (v % 255) as f32 / 255.0).collect::<Vec<f32>>(), [2, 1, 28, 28]), &device);
        let before = model.forward(images.clone()).into_data().to_vec::<f32>().unwrap();
        let laid = model.with_training_layout(50);
        assert_eq!((laid.fc1.weight.id, laid.fc2.weight.id), ids);
        assert!(save_bytes(&laid, &path).unwrap() == record, "the record changed");
        assert!(export_safetensors_bytes(&laid, &path).unwrap() == exported, "the safetensors changed");
        let after = laid.forward(images).into_data().to_vec::<f32>().unwrap();
        assert!(before.iter().zip(&after).all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs())), "{before:?} vs {after:?}");
    }

    #[test]
    fn path_ids_are_fixed_and_distinct() {
        // FNV-1a of the empty string is its offset basis: the function is the documented one.
        assert_eq!(path_id("").val(), 0xcbf2_9ce4_8422_2325);
        assert_eq!(path_id("a").val(), 0xaf63_dc4c_8601_ec8c);
        let ids: std::collections::BTreeSet<u64> = CnnConfig::new().param_shapes().iter().map(|(name, _)| path_id(name).val()).collect();
        assert_eq!(ids.len(), 8);
    }
}
