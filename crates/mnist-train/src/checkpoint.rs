//! Checkpoints: network, optimizer state, step and the seed that fixes the data order and
//! dropout masks, in one file written atomically.
//!
//! Layout: the magic `MNISTRS-CKPT-v1\n`, then three sections, each a little-endian `u64`
//! length followed by its bytes: the [`CheckpointState`] as JSON, the network's Burn record
//! and the optimizer's Burn record (named MessagePack, full precision).

use std::path::Path;

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use mnist_model::Cnn;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Error, Result};

const MAGIC: &[u8; 16] = b"MNISTRS-CKPT-v1\n";

/// What a checkpoint says besides the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Training steps completed.
    pub step: u64,
    /// The config of the run.
    pub config: TrainConfig,
    /// Name of the dataset trained on.
    pub dataset: String,
    /// SHA-256 of the dataset's content.
    pub dataset_sha256: String,
    /// Training wall time so far, seconds, over all sessions of the run.
    pub train_seconds: f64,
}

/// Writes a checkpoint atomically.
pub fn save<B, O>(path: &Path, state: &CheckpointState, model: &Cnn<B>, optim: &O) -> Result<()>
where
    B: AutodiffBackend,
    O: Optimizer<Cnn<B>, B>,
{
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let record_err = |e: burn::record::RecorderError| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("cannot encode: {e}"),
    };
    let model_bytes = recorder.record(model.clone().into_record(), ()).map_err(record_err)?;
    let optim_bytes = recorder.record(optim.to_record(), ()).map_err(record_err)?;
    let state_bytes = serde_json::to_vec(state).expect("state serialises");
    let mut out = Vec::with_capacity(MAGIC.len() + 24 + state_bytes.len() + model_bytes.len() + optim_bytes.len());
    out.extend_from_slice(MAGIC);
    for section in [&state_bytes, &model_bytes, &optim_bytes] {
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
        out.extend_from_slice(section);
    }
    mnist_model::weights::write_atomic(path, &out)?;
    Ok(())
}

/// Reads only the state of a checkpoint.
pub fn read_state(path: &Path) -> Result<CheckpointState> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let [state, _, _] = sections(&bytes, path)?;
    parse_state(state, path)
}

/// Restores network and optimizer from a checkpoint.
pub fn load<B, O>(path: &Path, model: Cnn<B>, optim: O, device: &B::Device) -> Result<(CheckpointState, Cnn<B>, O)>
where
    B: AutodiffBackend,
    O: Optimizer<Cnn<B>, B>,
{
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let [state, model_bytes, optim_bytes] = sections(&bytes, path)?;
    let state = parse_state(state, path)?;
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let corrupt = |what: &str, e: burn::record::RecorderError| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("corrupt {what} section: {e}"),
    };
    let model_record = Recorder::<B>::load(&recorder, model_bytes.to_vec(), device).map_err(|e| corrupt("network", e))?;
    let optim_record = Recorder::<B>::load(&recorder, optim_bytes.to_vec(), device).map_err(|e| corrupt("optimizer", e))?;
    let model = model.load_record(model_record);
    mnist_model::weights::check_shapes(&state.config.model, &model, path)?;
    Ok((state, model, optim.load_record(optim_record)))
}

fn parse_state(bytes: &[u8], path: &Path) -> Result<CheckpointState> {
    serde_json::from_slice(bytes).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("corrupt state section: {e}"),
    })
}

fn sections<'a>(bytes: &'a [u8], path: &Path) -> Result<[&'a [u8]; 3]> {
    let corrupt = |message: String| Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let mut rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| corrupt("not an mnist-rs checkpoint (bad magic)".into()))?;
    let mut out = [&[][..]; 3];
    for (i, slot) in out.iter_mut().enumerate() {
        if rest.len() < 8 {
            return Err(corrupt(format!("truncated before section {}", i + 1)));
        }
        let (len, tail) = rest.split_at(8);
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        if len > tail.len() as u64 {
            return Err(corrupt(format!("section {} claims {len} bytes, {} remain", i + 1, tail.len())));
        }
        let (section, tail) = tail.split_at(len as usize);
        *slot = section;
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", rest.len())));
    }
    Ok(out)
}
