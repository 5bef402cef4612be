//! The one error type of `mnist-train`.

use std::path::PathBuf;

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A training config value out of range.
    #[error("invalid training config: {0}")]
    InvalidConfig(String),
    /// Loading the dataset or building batches.
    #[error(transparent)]
    Data(#[from] mnist_data::Error),
    /// The network, its config or its weights.
    #[error(transparent)]
    Model(#[from] mnist_model::Error),
    /// The evaluation at the end of the run.
    #[error(transparent)]
    Evaluation(#[from] mnist_infer::Error),
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint that is missing, or that cannot be read (damaged, cut short, not a
    /// checkpoint); one of another run is [`Error::NotResumable`].
    #[error("{}: cannot resume: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A checkpoint that belongs to another run than the one asked for, or to this run
    /// finished: `reason` says which, in fields a caller can act on.
    #[error("{}: cannot resume: {reason}", path.display())]
    NotResumable {
        /// The checkpoint file.
        path: PathBuf,
        /// Why.
        reason: NotResumable,
    },
    /// A checkpoint could not be written during or at the end of a run (a full disk, a
    /// directory made read-only). The checkpoint file is replaced atomically, so the one
    /// written before, if any, is intact.
    #[error("cannot save the checkpoint of step {step}: {source}. {}", kept_note(*.kept, dir))]
    CheckpointNotSaved {
        /// Steps completed.
        step: u64,
        /// The step of the checkpoint still in the directory, if there is one.
        kept: Option<u64>,
        /// The artifact directory.
        dir: PathBuf,
        /// Why it could not be written.
        source: Box<Error>,
    },
    /// Training finished and its last checkpoint was saved, but the evaluation or the
    /// files written after it (the model, the plot, the report) could not be made (a full
    /// disk). Resuming the run does only that part again.
    #[error("{source}. The run's {steps} steps are done and their checkpoint is saved in {}: fix the cause and `--resume --out {}` writes the model without training again", dir.display(), dir.display())]
    FinishNotSaved {
        /// Steps of the run, all completed.
        steps: u64,
        /// The artifact directory.
        dir: PathBuf,
        /// What failed.
        source: Box<Error>,
    },
    /// The output directory already holds a run and neither resume nor overwrite was asked.
    #[error("{} already holds a training run; pass --resume to continue it, or choose another --out", path.display())]
    RunExists {
        /// The artifact directory.
        path: PathBuf,
    },
    /// A parameter became NaN or infinite while the loss was still finite.
    #[error("training diverged by step {step}: tensor `{tensor}` holds NaN or infinite values (the loss was still finite). Nothing from this point on was saved; lower the learning rate and train again")]
    DivergedWeights {
        /// Steps completed when it was found.
        step: u64,
        /// The first parameter holding a non-finite value.
        tensor: String,
    },
    /// The output directory holds files a run writes (`config.json`, `metrics.jsonl`, ...)
    /// that no run wrote there (it has no lock file): a new run would replace them.
    #[error("{} holds {} that no training run wrote (the folder has no .lock); training would overwrite {}: choose an empty or new --out, or move {} away", path.display(), files.join(", "), if files.len() == 1 { "it" } else { "them" }, if files.len() == 1 { "it" } else { "them" })]
    WouldOverwrite {
        /// The artifact directory.
        path: PathBuf,
        /// The files found, by name.
        files: Vec<String>,
    },
    /// The output path is a file, not a directory.
    #[error("{} is a file, not a directory; --out takes the folder a run is written to", path.display())]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// Another process is training in the artifact directory (it holds the directory's
    /// lock).
    #[error("{} is in use: another mnist process is training there; wait for it to finish or stop it (Ctrl-C saves a checkpoint), or choose another --out", path.display())]
    RunInUse {
        /// The artifact directory.
        path: PathBuf,
    },
    /// Drawing the plot failed.
    #[error("cannot draw {}: {message}", path.display())]
    Plot {
        /// The PNG file.
        path: PathBuf,
        /// What plotters said.
        message: String,
    },
    /// The loss became NaN or infinite. No checkpoint is written from then on; the last
    /// one written (if any) holds finite weights from before. At step 0 the loss is that
    /// of the initial weights, before any update: the message then blames the
    /// initialisation, not the learning rate.
    #[error("{}", diverged_message(*step, *loss))]
    Diverged {
        /// The step.
        step: u64,
        /// The loss value.
        loss: f32,
    },
}

/// Why a checkpoint's run cannot go on as asked ([`Error::NotResumable`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NotResumable {
    /// The dataset given is not the one the run trained on (compared by content).
    #[error("it was trained on {trained_on} (SHA-256 {trained_sha256}), not on this {given} (SHA-256 {given_sha256})")]
    OtherDataset {
        /// The name of the dataset the run trained on.
        trained_on: String,
        /// Its SHA-256, hex.
        trained_sha256: String,
        /// The name of the dataset given now.
        given: String,
        /// Its SHA-256, hex.
        given_sha256: String,
    },
    /// The config differs from the run's in more than `steps`.
    #[error("the config differs from the run's in {} (only `steps` may change on resume); see config.json", if fields.is_empty() { "a value".to_string() } else { fields.join(", ") })]
    ConfigDiffers {
        /// Each difference, as `` `field`: the run has A, now B `` (nested fields with
        /// their path: `model.hidden`).
        fields: Vec<String>,
    },
    /// The checkpoint is past the steps asked for.
    #[error("it is at step {step}, beyond the {steps} steps asked for")]
    BeyondSteps {
        /// The checkpoint's step.
        step: u64,
        /// The steps asked for.
        steps: u64,
    },
    /// The run has done all its steps and written every file that comes after them (the
    /// model, its weights, the plot, the report): more steps train it further.
    #[error("the run is already finished ({steps} steps, see report.json); pass --steps with more to train it further")]
    Finished {
        /// The steps it ran.
        steps: u64,
    },
}

/// What [`Error::CheckpointNotSaved`] says of the checkpoint still there.
fn kept_note(kept: Option<u64>, dir: &std::path::Path) -> String {
    match kept {
        Some(step) => format!(
            "The checkpoint of step {step} in {} is intact: fix the cause and continue from it with --resume --out {}",
            dir.display(),
            dir.display()
        ),
        None => "No checkpoint of this run was written before, so nothing of it can be resumed; fix the cause and train again".to_string(),
    }
}

/// What [`Error::Diverged`] says: the learning rate is to blame only once it has been
/// applied, that is after step 0 (whose loss is computed before the first update).
fn diverged_message(step: u64, loss: f32) -> String {
    if step == 0 {
        format!(
            "training diverged at step 0: the initial weights already give a loss of {loss}, before any update, so the learning rate is not the cause; the initialisation is (model.init_std and model.init_bias in the training config; the seed's are 0.1): lower them and train again. Nothing was saved"
        )
    } else {
        format!(
            "training diverged at step {step}: the loss is {loss}. Nothing from this step on was saved; lower the learning rate and train again (a checkpoint written before step {step}, if any, holds finite weights)"
        )
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_not_finite_before_any_update_blames_the_initialisation() {
        let first = Error::Diverged { step: 0, loss: f32::NAN }.to_string();
        assert!(first.starts_with("training diverged at step 0: the initial weights already give a loss of NaN, before any update"), "{first}");
        assert!(first.contains("the learning rate is not the cause") && first.contains("model.init_std"), "{first}");
        assert!(!first.contains("lower the learning rate"), "{first}");
        let later = Error::Diverged { step: 1, loss: f32::INFINITY }.to_string();
        assert!(later.starts_with("training diverged at step 1: the loss is inf."), "{later}");
        assert!(later.contains("lower the learning rate") && !later.contains("init_std"), "{later}");
    }
}
