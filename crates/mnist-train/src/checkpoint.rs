//! Checkpoints: network, optimizer state, step and the seed that fixes the data order and
//! dropout masks, in one file written atomically.
//!
//! Layout: the magic `MNISTRS-CKPT-v2\n`, the SHA-256 of everything after it (32 bytes),
//! then three sections, each a little-endian `u64` length followed by its bytes: the
//! [`CheckpointState`] as JSON, the network's Burn record and the optimizer's Burn record
//! (named MessagePack, full precision). Reading verifies the digest first, so a damaged or
//! truncated checkpoint is named as such and never resumed from; version 1 files (no
//! digest) are still read. A network holding NaN or infinity is never written or resumed.

use std::path::Path;

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use mnist_model::Cnn;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::TrainConfig;
use crate::error::{Error, Result};

const MAGIC: &[u8; 16] = b"MNISTRS-CKPT-v2\n";
/// The first layout: no digest.
const MAGIC_V1: &[u8; 16] = b"MNISTRS-CKPT-v1\n";
const DIGEST_LEN: usize = 32;

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

#[cfg(test)]
thread_local! {
    /// A test's injected failure: [`save`] on this thread fails for a checkpoint of this
    /// step, as a full disk would make it.
    pub(crate) static FAIL_AT_STEP: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Writes a checkpoint atomically.
///
/// # Errors
/// [`mnist_model::Error::NonFinite`] (and nothing written) when the network holds NaN or
/// infinity.
pub fn save<B, O>(path: &Path, state: &CheckpointState, model: &Cnn<B>, optim: &O) -> Result<()>
where
    B: AutodiffBackend,
    O: Optimizer<Cnn<B>, B>,
{
    mnist_model::weights::check_finite(model, path)?;
    #[cfg(test)]
    if FAIL_AT_STEP.get() == Some(state.step) {
        return Err(Error::Write { path: path.to_path_buf(), source: std::io::Error::other("No space left on device (a test's failure)") });
    }
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let record_err = |e: burn::record::RecorderError| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("cannot encode: {e}"),
    };
    let model_bytes = recorder.record(model.clone().into_record(), ()).map_err(record_err)?;
    let optim_bytes = recorder.record(optim.to_record(), ()).map_err(record_err)?;
    let state_bytes = serde_json::to_vec(state).expect("state serialises");
    let header = MAGIC.len() + DIGEST_LEN;
    let mut out = Vec::with_capacity(header + 24 + state_bytes.len() + model_bytes.len() + optim_bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; DIGEST_LEN]);
    for section in [&state_bytes, &model_bytes, &optim_bytes] {
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
        out.extend_from_slice(section);
    }
    let digest = Sha256::digest(&out[header..]);
    out[MAGIC.len()..header].copy_from_slice(&digest);
    mnist_model::artifact::write_atomic(path, &out)?;
    Ok(())
}

/// The largest checkpoint a network of at most [`mnist_model::MAX_PARAMS`] parameters
/// makes: its weights and Adam's two moments, each at most a weight file.
const MAX_CHECKPOINT_BYTES: u64 = 3 * mnist_model::weights::MAX_WEIGHT_FILE_BYTES;

/// Reads only the state of a checkpoint.
pub fn read_state(path: &Path) -> Result<CheckpointState> {
    let bytes = mnist_fs::read_capped(path, MAX_CHECKPOINT_BYTES).map_err(|source| Error::Read {
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
    let bytes = mnist_fs::read_capped(path, MAX_CHECKPOINT_BYTES).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let [state, model_bytes, optim_bytes] = sections(&bytes, path)?;
    let state = parse_state(state, path)?;
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let corrupt = |what: &str, e: burn::record::RecorderError| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("corrupt {what} section: {}", mnist_model::weights::record_error(path, &e)),
    };
    let model_record = Recorder::<B>::load(&recorder, model_bytes.to_vec(), device).map_err(|e| corrupt("network", e))?;
    let optim_record = Recorder::<B>::load(&recorder, optim_bytes.to_vec(), device).map_err(|e| corrupt("optimizer", e))?;
    let model = model.load_record(model_record);
    mnist_model::weights::check_shapes(&state.config.model, &model, path)?;
    mnist_model::weights::check_finite(&model, path)?;
    Ok((state, model, optim.load_record(optim_record)))
}

fn parse_state(bytes: &[u8], path: &Path) -> Result<CheckpointState> {
    let corrupt = |e: serde_json::Error| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("corrupt state section: {e}"),
    };
    let corrupt_text = |message: String| Error::Checkpoint { path: path.to_path_buf(), message: format!("corrupt state section: {message}") };
    // As strict as config.json: a key given twice is refused, not resolved to its last value.
    let text = std::str::from_utf8(bytes).map_err(|e| corrupt_text(format!("not UTF-8 ({e})")))?;
    let mut value = mnist_model::artifact::json::parse(text).map_err(corrupt_text)?;
    // Checkpoints written before Adam's values moved under `adam` resume too.
    if let Some(config) = value.get_mut("config") {
        crate::config::migrate(config).map_err(corrupt_text)?;
    }
    serde_json::from_value(value).map_err(corrupt)
}

pub(crate) fn sections<'a>(bytes: &'a [u8], path: &Path) -> Result<[&'a [u8]; 3]> {
    let corrupt = |message: String| Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let damaged = |what: String| corrupt(format!("the file is damaged or truncated ({what})"));
    let mut rest = if let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) {
        if rest.len() < DIGEST_LEN {
            return Err(corrupt("truncated inside its header".into()));
        }
        let (digest, rest) = rest.split_at(DIGEST_LEN);
        if Sha256::digest(rest).as_slice() != digest {
            return Err(corrupt(
                "the file is damaged or truncated (checksum mismatch: its content does not match the SHA-256 in its header); resume from a copy, or start the run again".into(),
            ));
        }
        rest
    } else if bytes.is_empty() {
        return Err(corrupt("the file is empty (a copy or a disk that failed?); resume from a copy, or start the run again".into()));
    } else if MAGIC.starts_with(bytes) || MAGIC_V1.starts_with(bytes) {
        return Err(damaged("it ends inside its header".into()));
    } else {
        bytes
            .strip_prefix(MAGIC_V1.as_slice())
            .ok_or_else(|| corrupt("not an mnist-rs checkpoint (its first bytes are not a checkpoint's)".into()))?
    };
    let mut out = [&[][..]; 3];
    for (i, slot) in out.iter_mut().enumerate() {
        if rest.len() < 8 {
            return Err(damaged(format!("truncated before section {}", i + 1)));
        }
        let (len, tail) = rest.split_at(8);
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        if len > tail.len() as u64 {
            return Err(damaged(format!("section {} claims {len} bytes, {} remain", i + 1, tail.len())));
        }
        let (section, tail) = tail.split_at(len as usize);
        *slot = section;
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(damaged(format!("{} trailing bytes", rest.len())));
    }
    Ok(out)
}
