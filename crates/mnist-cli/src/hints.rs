//! What to type next, for the libraries' errors.
//!
//! The libraries' messages say what is wrong and what to do in their own terms ("resume
//! it", "train into another directory"), which hold for a program that calls them as for
//! this one. This module adds, below such an error, the `hint:` line that names this
//! program's flags and, where it can, the whole command.

use std::path::Path;

use mnist_fs::parent_dir;
use mnist_model::artifact::{CHECKPOINT, MANIFEST, TRAIN_CONFIG, WEIGHTS};

use crate::commands::quote_path;
use crate::train::{program, resume_hint};

/// The `hint:` line for `e`, from the first library error in its chain this program has
/// a hint for (without the `hint: ` prefix).
pub fn hint(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|cause| {
        if let Some(hinted) = cause.downcast_ref::<Hinted>() {
            return Some(hinted.hint.clone());
        }
        if let Some(e) = cause.downcast_ref::<mnist_train::Error>() {
            return train(e);
        }
        if let Some(e) = cause.downcast_ref::<mnist_model::Error>() {
            return model(e);
        }
        if let Some(e) = cause.downcast_ref::<mnist_infer::Error>() {
            return infer(e);
        }
        if let Some(e) = cause.downcast_ref::<mnist_data::Error>() {
            return data(e);
        }
        if let Some(e) = cause.downcast_ref::<mnist_serve::Error>() {
            return serve(e);
        }
        if let Some(e) = cause.downcast_ref::<crate::memory::TooLarge>() {
            return Some(crate::memory::hint(e));
        }
        None
    })
}

/// An error of this program's own, with the `hint:` line below it: the message says what
/// is wrong, the hint the command or flag that goes on.
#[derive(Debug)]
pub(crate) struct Hinted {
    message: String,
    hint: String,
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Hinted {}

/// An error saying `message`, with `hint` on the `hint:` line below it.
pub(crate) fn hinted(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    Hinted { message: message.into(), hint: hint.into() }.into()
}

/// What `mnist train` was asked: `--resume`, and `--steps` if given.
static TRAIN_ARGS: std::sync::OnceLock<(bool, Option<u64>)> = std::sync::OnceLock::new();

/// Records what `mnist train` was asked, for its hints.
pub(crate) fn train_args(resume: bool, steps: Option<u64>) {
    let _ = TRAIN_ARGS.set((resume, steps));
}

/// Whether `mnist train` was asked to resume.
fn resuming() -> bool {
    TRAIN_ARGS.get().is_some_and(|(resume, _)| *resume)
}

/// The `--steps` `mnist train` was given, if any.
fn steps_given() -> Option<u64> {
    TRAIN_ARGS.get().and_then(|(_, steps)| *steps)
}

/// The command that resumes the run in `dir`: the one this invocation made, with its
/// options, when it trained there; else the plain one.
pub(crate) fn resume(dir: &Path) -> String {
    resume_hint().unwrap_or_else(|| format!("{} train --resume --out {}", program(), quote_path(dir)))
}

fn train(e: &mnist_train::Error) -> Option<String> {
    use mnist_train::{Error, ExistingRun, NoCheckpoint, NotResumable};
    Some(match e {
        Error::RunExists { path, run: ExistingRun::Unfinished } => {
            format!("to continue it: {}{}; or choose another --out", resume(path), steps_given().map(|n| format!(" --steps {n}")).unwrap_or_default())
        }
        Error::RunExists { path, run: ExistingRun::Finished } => format!("to train it further: {} --steps {}; or choose another --out", resume(path), more_steps(path)),
        Error::RunExists { path, run: ExistingRun::DamagedCheckpoint } => damaged_checkpoint(&path.join(CHECKPOINT)),
        Error::RunExists { .. } => "choose another --out".into(),
        Error::Checkpoint { path, .. } if resuming() && path.is_file() => damaged_checkpoint(path),
        // A resume waits for the other process; a new run can go elsewhere.
        Error::RunInUse { .. } if resuming() => return None,
        Error::RunInUse { .. } => "choose another --out to train beside it".into(),
        Error::WouldOverwrite { .. } => "choose an empty or new folder with --out".into(),
        Error::NotADirectory { .. } => "--out takes the folder a run is written to".into(),
        Error::OutDir { .. } => "choose a folder you can write in with --out".into(),
        Error::FolderOfRuns { path } => format!("choose a new folder with --out, such as {}", quote_path(&path.join("my-run"))),
        Error::NoCheckpoint { why: NoCheckpoint::CheckpointGone, path } => finished_without_checkpoint(parent_dir(path)),
        Error::NoCheckpoint { why: NoCheckpoint::HoldsRuns, path } => {
            match crate::commands::newest_unfinished_run(parent_dir(path)) {
                Ok(run) => format!("pass one of its runs with --out, e.g. the newest unfinished: --out {}", quote_path(&run)),
                Err(_) => "pass one of its runs with --out (none of them is unfinished)".into(),
            }
        }
        Error::NoCheckpoint { why: NoCheckpoint::NoDirectory, .. } => "--out names the folder the run was trained into".into(),
        // A folder of the user's own files takes no new run either.
        Error::NoCheckpoint { path, .. } if matches!(mnist_train::check_out_dir(parent_dir(path), false), Err(Error::WouldOverwrite { .. })) => {
            "start a new run without --resume, into another --out (this folder holds files a run would replace)".into()
        }
        Error::NoCheckpoint { .. } => "start a new run without --resume".into(),
        Error::NotResumable { reason: NotResumable::Finished { steps }, path } => format!("to train it further: {} --steps {}", resume(parent_dir(path)), steps.saturating_mul(2)),
        Error::NotResumable { reason: NotResumable::BeyondSteps { step, .. }, .. } => format!("pass --steps with more than {step}, the steps the run has done"),
        Error::NotResumable { reason: NotResumable::ConfigDiffers { .. }, .. } => {
            "a resume takes the run's own config.json: leave out --config and --seed (only --steps may change), or train a new run into another --out".into()
        }
        Error::FinishNotSaved { dir, .. } | Error::CheckpointNotSaved { kept: Some(_), dir, .. } => format!("resume with: {}", resume(dir)),
        // The run's own folder keeps its checkpoint from before: a new run goes elsewhere.
        Error::Diverged { step: 0, .. } => {
            format!("copy the run's config.json, lower model.init_std and model.init_bias in it, and train a new run: {} train --config CONFIG.json --out NEW-FOLDER", program())
        }
        Error::Diverged { .. } | Error::DivergedWeights { .. } => format!(
            "copy the run's config.json, lower learning_rate in it (the seed's is 0.0001), and train a new run: {} train --config CONFIG.json --out NEW-FOLDER",
            program()
        ),
        Error::Model(e) => return model(e),
        Error::Data(e) => return data(e),
        Error::Evaluation(e) => return infer(e),
        _ => return None,
    })
}

/// How to go on from a checkpoint that cannot be read: without it, a resume starts the run
/// again from step 0 with its config.
fn damaged_checkpoint(checkpoint: &Path) -> String {
    let dir = parent_dir(checkpoint);
    if dir.join(MANIFEST).is_file() {
        // Finished: its model needs no checkpoint, and there is no training to go on with.
        return finished_without_checkpoint(dir);
    }
    let quoted = quote_path(checkpoint);
    if !dir.join(TRAIN_CONFIG).is_file() {
        // Its config.json is gone too: nothing says how the run was trained.
        return format!(
            "its config is gone too: to train a new run there, mv {quoted} {quoted}.damaged && {} train --out {} --config CONFIG.json; or choose another --out",
            program(),
            quote_path(dir)
        );
    }
    format!(
        "to start the run again from step 0 with its config: mv {quoted} {quoted}.damaged && {} train --resume --out {}; or choose another --out",
        program(),
        quote_path(dir)
    )
}

/// For a finished run that cannot be trained further (no checkpoint to go on from): its
/// model, where it has one, and a new run elsewhere.
fn finished_without_checkpoint(dir: &Path) -> String {
    if dir.join(MANIFEST).is_file() && dir.join(WEIGHTS).is_file() {
        format!("its model still evaluates ({} eval --model {}); a new run needs another --out", program(), quote_path(dir))
    } else {
        "a new run needs another --out".into()
    }
}

/// For a model file missing or damaged in `dir`: where the run's checkpoint is there, the
/// command that writes the model files again from it, without training.
pub(crate) fn rewrite_model(dir: &Path) -> Option<String> {
    dir.join(CHECKPOINT)
        .is_file()
        .then(|| format!("the run's checkpoint holds the weights: {} writes its model files again, without training", resume(dir)))
}

/// More steps than the run in `dir` has done (from its config.json): those the command
/// line asked for if more, else twice the run's; `N` when they cannot be read.
fn more_steps(dir: &Path) -> String {
    let Ok(config) = mnist_train::TrainConfig::read(&dir.join(TRAIN_CONFIG)) else { return "N".into() };
    match steps_given() {
        Some(asked) if asked > config.steps => asked.to_string(),
        _ => config.steps.saturating_mul(2).to_string(),
    }
}

fn model(e: &mnist_model::Error) -> Option<String> {
    match e {
        mnist_model::Error::UnfinishedRun { dir } => Some(format!("finish it with: {}", resume(dir))),
        mnist_model::Error::Checksum { path, .. } | mnist_model::Error::Read { path, .. } => rewrite_model(parent_dir(path)),
        // A model.json that cannot be read as one: training writes it, and a finished
        // run's resume writes it again once the damaged one is out of the way.
        mnist_model::Error::Json { path, .. } if path.file_name().is_some_and(|name| name == MANIFEST) => {
            let dir = parent_dir(path);
            Some(match dir.join(CHECKPOINT).is_file() {
                true => format!("move the damaged {MANIFEST} away; then {} writes it again from the run's checkpoint, without training", resume(dir)),
                false => format!("{MANIFEST} is written by training: restore it from a copy of the run, or train again"),
            })
        }
        _ => None,
    }
}

fn infer(e: &mnist_infer::Error) -> Option<String> {
    match e {
        mnist_infer::Error::Model(e) => model(e),
        _ => None,
    }
}

fn data(e: &mnist_data::Error) -> Option<String> {
    match e {
        mnist_data::Error::OtherDataset { found, wanted, .. } => {
            Some(format!("pass --dataset {found} to use them, or --data-dir with the folder of the {wanted} files"))
        }
        mnist_data::Error::NotFound { .. } => Some("pass --data-dir with a folder holding them".into()),
        _ => None,
    }
}

fn serve(e: &mnist_serve::Error) -> Option<String> {
    let mnist_serve::Error::Bind { source, .. } = e else { return None };
    match source.kind() {
        std::io::ErrorKind::AddrInUse => Some("pass --addr with another port, such as 127.0.0.1:0".into()),
        std::io::ErrorKind::PermissionDenied => Some("pass --addr with a port of 1024 or above, such as 127.0.0.1:8080".into()),
        _ => None,
    }
}
