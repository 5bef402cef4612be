//! The one error type of `mnist-train`.

use std::path::PathBuf;

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A training config value out of range, or one that does not fit the dataset given.
    #[error("invalid training config: {}{message}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    InvalidConfig {
        /// The config file the value came from, when it came from one.
        file: Option<PathBuf>,
        /// The value's field, with its section (`batch_size`, `adam.beta_2`,
        /// `model.hidden`), or the section (`model`) for a problem of the section as a
        /// whole.
        field: String,
        /// What is wrong, naming the field and the value found (`batch_size must be at
        /// least 1, got 0`).
        message: String,
    },
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
    /// The run's folder could not be made, or written in (a read-only file system, a
    /// folder of the system's such as `/sys`, no permission).
    #[error("cannot make the run's folder {} or write in it: {source}", path.display())]
    OutDir {
        /// The folder.
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
    /// A checkpoint that cannot be read (damaged, cut short, not a checkpoint, not a
    /// file); a missing one is [`Error::NoCheckpoint`], one of another run
    /// [`Error::NotResumable`].
    #[error("{}: cannot resume: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A resume was asked for and there is no checkpoint to resume from.
    #[error("{}: cannot resume: no checkpoint to resume from{}", path.display(), why.note())]
    NoCheckpoint {
        /// Where the checkpoint was looked for.
        path: PathBuf,
        /// What the directory holds instead.
        why: NoCheckpoint,
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
    #[error("{source}. The run's {steps} steps are done and their checkpoint is saved in {}: fix the cause and resume the run, which writes the model without training again", dir.display())]
    FinishNotSaved {
        /// Steps of the run, all completed.
        steps: u64,
        /// The artifact directory.
        dir: PathBuf,
        /// What failed.
        source: Box<Error>,
    },
    /// The output directory already holds a run and neither resume nor overwrite was asked.
    #[error("{} already holds {}", path.display(), match run {
        ExistingRun::Unfinished => "a training run; resume it to continue it, or train into another directory",
        ExistingRun::Finished => "a finished training run; resume it with more steps to train it further, or train into another directory",
        ExistingRun::NoCheckpoint => "a finished run's files (a model or a report) and no checkpoint to resume from; train into another directory",
        ExistingRun::DamagedCheckpoint => "a training run whose checkpoint cannot be read (damaged?); move checkpoint.bin away to start the run again there, or train into another directory",
    })]
    RunExists {
        /// The artifact directory.
        path: PathBuf,
        /// What the run there is.
        run: ExistingRun,
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
    /// that no run wrote there (it has no lock file beside a run's metrics): a new run
    /// would replace them.
    #[error("{} holds {} that no training run wrote (no run has started there); training would overwrite {}: train into an empty or new directory, or move {} away", path.display(), files.join(", "), if files.len() == 1 { "it" } else { "them" }, if files.len() == 1 { "it" } else { "them" })]
    WouldOverwrite {
        /// The artifact directory.
        path: PathBuf,
        /// The files found, by name.
        files: Vec<String>,
    },
    /// The output directory holds runs, each in a folder of its own (a folder of runs such
    /// as `artifacts/`): a new run there would mix its files with theirs.
    #[error("{} holds runs, each in a folder of its own; a run written there would mix its files with theirs: train into a new folder (inside it, for one)", path.display())]
    FolderOfRuns {
        /// The directory.
        path: PathBuf,
    },
    /// The output path is a file, not a directory.
    #[error("{} is a file, not a directory; a run is written into a directory", path.display())]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// Another process is training in the artifact directory (it holds the directory's
    /// lock).
    #[error("{} is in use: another mnist process is training there; wait for it to finish or stop it (an interrupt saves a checkpoint), or train into another directory", path.display())]
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
    #[error("the run is already finished ({steps} steps, see report.json); resume it with more steps to train it further")]
    Finished {
        /// The steps it ran.
        steps: u64,
    },
}

/// The run a directory holds where a new run was asked for ([`Error::RunExists`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExistingRun {
    /// A checkpoint with steps left, or with a final file missing: resuming goes on.
    Unfinished,
    /// Every step done and every final file written ([`crate::finished_files`]):
    /// resuming with more steps trains it further.
    Finished,
    /// A model or a report and no checkpoint (a model saved by other means, a checkpoint
    /// deleted): nothing to resume.
    NoCheckpoint,
    /// A checkpoint that cannot be read (damaged, cut short): nothing to resume; moved
    /// away, the run can start again from step 0.
    DamagedCheckpoint,
}

/// What a directory holds where a resume found no checkpoint ([`Error::NoCheckpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoCheckpoint {
    /// The directory does not exist: it is not a run's directory.
    NoDirectory,
    /// The directory holds a run's model or report and no checkpoint (deleted, or the
    /// model saved by other means): the model can be used, not trained further.
    CheckpointGone,
    /// The directory holds runs, in folders of its own (the folder of runs, not a run).
    HoldsRuns,
    /// The directory holds no run.
    NoRun,
}

impl NoCheckpoint {
    fn note(self) -> &'static str {
        match self {
            NoCheckpoint::NoDirectory => ": the folder does not exist (the folder a run was trained into is expected)",
            NoCheckpoint::CheckpointGone => ": the folder holds a finished run's files (a model or a report) but no checkpoint (deleted?), so it cannot be trained further; a new run needs another directory",
            NoCheckpoint::HoldsRuns => ": the folder holds runs, each in a folder of its own; resume one of them",
            NoCheckpoint::NoRun => "",
        }
    }
}

/// What [`Error::CheckpointNotSaved`] says of the checkpoint still there.
fn kept_note(kept: Option<u64>, dir: &std::path::Path) -> String {
    match kept {
        Some(step) => format!(
            "The checkpoint of step {step} in {} is intact: fix the cause and resume the run to continue from it",
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

    /// The messages say what to do in the library's terms: a program that calls it has no
    /// `--resume` or `--out` (the command line adds its flags as hints).
    #[test]
    fn no_message_names_a_command_line_flag() {
        let dir = PathBuf::from("runs/a");
        let io = || std::io::Error::other("disk full");
        let errors = [
            Error::InvalidConfig { file: Some("c.json".into()), field: "steps".into(), message: "steps must be at least 1, got 0".into() },
            Error::NoCheckpoint { path: dir.join("checkpoint.bin"), why: NoCheckpoint::NoDirectory },
            Error::NoCheckpoint { path: dir.join("checkpoint.bin"), why: NoCheckpoint::CheckpointGone },
            Error::NoCheckpoint { path: dir.join("checkpoint.bin"), why: NoCheckpoint::HoldsRuns },
            Error::NoCheckpoint { path: dir.join("checkpoint.bin"), why: NoCheckpoint::NoRun },
            Error::NotResumable { path: dir.join("checkpoint.bin"), reason: NotResumable::Finished { steps: 9 } },
            Error::NotResumable { path: dir.join("checkpoint.bin"), reason: NotResumable::BeyondSteps { step: 9, steps: 5 } },
            Error::NotResumable { path: dir.join("checkpoint.bin"), reason: NotResumable::ConfigDiffers { fields: vec!["`seed`".into()] } },
            Error::CheckpointNotSaved { step: 5, kept: Some(4), dir: dir.clone(), source: Box::new(Error::Write { path: dir.clone(), source: io() }) },
            Error::CheckpointNotSaved { step: 5, kept: None, dir: dir.clone(), source: Box::new(Error::Write { path: dir.clone(), source: io() }) },
            Error::FinishNotSaved { steps: 5, dir: dir.clone(), source: Box::new(Error::Write { path: dir.clone(), source: io() }) },
            Error::RunExists { path: dir.clone(), run: ExistingRun::Unfinished },
            Error::RunExists { path: dir.clone(), run: ExistingRun::Finished },
            Error::RunExists { path: dir.clone(), run: ExistingRun::NoCheckpoint },
            Error::RunExists { path: dir.clone(), run: ExistingRun::DamagedCheckpoint },
            Error::RunInUse { path: dir.clone() },
            Error::WouldOverwrite { path: dir.clone(), files: vec!["config.json".into()] },
            Error::NotADirectory { path: dir.clone() },
            Error::OutDir { path: dir.clone(), source: io() },
            Error::FolderOfRuns { path: dir.clone() },
            Error::DivergedWeights { step: 3, tensor: "fc1.weight".into() },
            Error::Diverged { step: 3, loss: f32::NAN },
        ];
        for e in errors {
            let text = e.to_string();
            assert!(!text.contains("--") && !text.contains("Ctrl-C"), "{text}");
        }
        assert_eq!(
            Error::InvalidConfig { file: Some("c.json".into()), field: "steps".into(), message: "steps must be at least 1, got 0".into() }.to_string(),
            "invalid training config: c.json: steps must be at least 1, got 0"
        );
    }

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
