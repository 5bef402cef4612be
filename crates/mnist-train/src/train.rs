//! The training loop and the artifact directory it fills.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Int, Tensor};
use burn::tensor::backend::{AutodiffBackend, Backend};
use mnist_data::{Dataset, Sampler};
use mnist_infer::{Evaluation, evaluate};
use mnist_kernels::FusedAdam;
use mnist_model::artifact::{self, Manifest};
use mnist_model::{Cnn, Kernels, KernelsInUse, dropout_mask, input, weights};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointState};
use crate::config::TrainConfig;
use crate::error::{Error, ExistingRun, NoCheckpoint, NotResumable, Result};
use crate::metrics::{MetricRow, MetricsLog, plot};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A progress bar with ETA, loss and training accuracy (for a terminal).
    Bar,
    /// Plain lines, `step N, training accuracy X`, as the seed prints.
    Lines,
    /// Nothing, except a warning on standard error when the folder cannot be locked
    /// (nothing then keeps a second run out of it).
    Quiet,
}

impl ProgressMode {
    /// A bar when stdout is a terminal, plain lines otherwise.
    pub fn auto() -> Self {
        if std::io::stdout().is_terminal() { ProgressMode::Bar } else { ProgressMode::Lines }
    }
}

/// How to run, beyond the hyperparameters.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The artifact directory.
    pub out_dir: PathBuf,
    /// Continue the run in `out_dir` from its checkpoint.
    pub resume: bool,
    /// Progress display.
    pub progress: ProgressMode,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// A line for standard error as soon as `stop` is seen set (within 50 ms, while the
    /// step in flight goes on): above the progress bar when there is one, which would
    /// otherwise draw over it; after the last step, a note of its own says that only the
    /// evaluation and the model files are left. None (or no `stop`): nothing is said.
    pub stop_note: Option<String>,
    /// Backend name for the report (e.g. `flex`, `wgpu`), as the caller names it: it is
    /// recorded, not checked against `B`.
    pub backend: String,
    /// Git commit the program was built from, for the report (the `mnist` binary records
    /// its own at build time).
    pub git_commit: Option<String>,
    /// The hardware behind the backend where Burn's device name does not say it (a GPU
    /// adapter's name), for the report.
    pub adapter: Option<String>,
    /// How the network computes its convolution blocks (the same results; speed differs).
    pub kernels: Kernels,
}

impl TrainOptions {
    /// Options for a fresh run into `out_dir`, plain-line progress, no stop flag.
    pub fn new(out_dir: impl Into<PathBuf>, backend: impl Into<String>) -> Self {
        TrainOptions {
            out_dir: out_dir.into(),
            resume: false,
            progress: ProgressMode::Lines,
            stop: None,
            stop_note: None,
            backend: backend.into(),
            git_commit: None,
            adapter: None,
            kernels: Kernels::Fastest,
        }
    }
}

/// The `report.json` of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Test-split evaluation: accuracy, loss, per-class accuracy, confusion matrix.
    pub test: Evaluation,
    /// Training steps.
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Training wall time in seconds (all sessions of a resumed run), excluding evaluation.
    pub train_seconds: f64,
    /// Training images per second (of the last session, when the run was resumed).
    pub train_images_per_sec: f64,
    /// Backend name.
    pub backend: String,
    /// Device or adapter, as the backend names it.
    pub device: String,
    /// Dataset name.
    pub dataset: String,
    /// Where the dataset came from.
    pub dataset_origin: String,
    /// SHA-256 of the dataset's decoded content.
    pub dataset_sha256: String,
    /// Git commit the program was built from, when known.
    pub git_commit: Option<String>,
    /// Which implementation ran each part: the convolution blocks, the fully connected
    /// layers and the optimizer (absent in reports written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<KernelsInUse>,
}

/// How a run ended: only [`Outcome::Finished`] has written the model files; the others
/// left a checkpoint to resume from.
#[derive(Debug)]
#[must_use = "a run stopped early (Interrupted, OutputClosed) is not finished: resume it"]
pub enum Outcome {
    /// All steps done, evaluated and saved.
    Finished(Box<Report>),
    /// Stopped early through [`TrainOptions::stop`]; a checkpoint holds `step`.
    Interrupted {
        /// Steps completed.
        step: u64,
    },
    /// Stopped early because the progress lines could not be written (standard output
    /// closed, as by `mnist train | head`, or failing, as on a full disk); a checkpoint
    /// holds `step`.
    OutputClosed {
        /// Steps completed.
        step: u64,
        /// The write error.
        error: String,
        /// The write error's kind: [`std::io::ErrorKind::BrokenPipe`] when the reader went
        /// away (no error), another for a write that failed (`> /dev/full`).
        kind: std::io::ErrorKind,
    },
}

/// Trains a network as `config` says on `dataset`, writing the artifact directory:
/// `config.json`, `metrics.jsonl`, `checkpoint.bin` (every `checkpoint_every` steps and at
/// the end), then `model.json`, `model.mpk`, `model.safetensors`, `plot.png` and
/// `report.json`.
pub fn train<B: AutodiffBackend>(
    config: &TrainConfig,
    dataset: &Dataset,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<Outcome> {
    config.validate()?;
    check_dataset(config, dataset)?;
    let mut state = start_state(config, dataset);
    let config = &state.config.clone();
    let dir = &options.out_dir;
    let checkpoint_path = dir.join(artifact::CHECKPOINT);
    let _lock = prepare_dir(dir, options.resume, options.progress != ProgressMode::Quiet)?;

    let mut model = config.model.init::<B>(config.seed, device)?.with_kernels(options.kernels).with_training_layout(config.batch_size);
    let kernels = kernels_in_use(&model);
    let mut optim = optimizer::<B>(config);
    // The step of the checkpoint in the directory, for the error of a save that fails.
    let mut kept = None;
    let mut metrics = if options.resume && checkpoint_path.is_file() {
        let (saved, m, o) = checkpoint::load(&checkpoint_path, model, optim, device)?;
        check_resumable(&saved, &state, &checkpoint_path)?;
        // Loading a record stores the weights anew, by rows.
        (model, optim) = (m.with_training_layout(config.batch_size), o);
        kept = Some(saved.step);
        state.step = saved.step;
        state.train_seconds = saved.train_seconds;
        MetricsLog::resume(&dir.join(artifact::METRICS), saved.step)?
    } else {
        MetricsLog::create(&dir.join(artifact::METRICS))?
    };
    // Also on resume: `steps` may have changed, and a later resume reads this file.
    mnist_model::artifact::json::write(&dir.join(artifact::TRAIN_CONFIG), config)?;

    let mut save = |state: &CheckpointState, model: &Cnn<B>, optim: &_| -> Result<()> {
        checkpoint::save(&checkpoint_path, state, model, optim)
            .map_err(|e| Error::CheckpointNotSaved { step: state.step, kept, dir: dir.to_path_buf(), source: Box::new(e) })?;
        kept = Some(state.step);
        Ok(())
    };
    let mut sampler = Sampler::new(dataset.train.len(), config.batch_size, config.seed)?;
    let progress = Progress::new(options.progress, state.step, config.steps);
    progress.say(&kernels.to_string());
    if let Some(lost) = metrics.lost() {
        progress.note(&format!("note: {lost}"));
    }
    let stop_note = options.stop.clone().zip(options.stop_note.clone()).map(|(stop, note)| progress.note_on(stop, note));
    let mut losses = LossWatch::<B>::default();
    let session_start = Instant::now();
    let first_step = state.step;
    // Training time of earlier sessions of this run (resume), plus this session's.
    let prior_seconds = state.train_seconds;
    let total_seconds = || prior_seconds + session_start.elapsed().as_secs_f64();

    for step in state.step..config.steps {
        let stopped = options.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        if stopped || progress.write_error().is_some() {
            if let (true, Some(note)) = (stopped, &stop_note) {
                note.say();
            }
            losses.check()?;
            check_weights(&model, step)?;
            state.step = step;
            state.train_seconds = total_seconds();
            save(&state, &model, &optim)?;
            // The bar stays where the run stopped (finishing it would fill it).
            progress.abandon();
            return Ok(match progress.write_error() {
                Some((error, kind)) => Outcome::OutputClosed { step, error, kind },
                None => Outcome::Interrupted { step },
            });
        }
        let batch = dataset.train.gather(sampler.indices(step))?;
        let (images, labels) = (input::images::<B>(&batch.pixels, device), input::labels::<B>(&batch.labels, device));
        let log = step % config.log_every == 0 || step + 1 == config.steps;
        let train_accuracy = log.then(|| batch_accuracy(&model.valid(), images.clone().inner(), &labels.clone().inner()));

        let mask = dropout_mask::<B>(config.batch_size, config.model.hidden, config.model.dropout, config.seed, step, device);
        let loss;
        (model, loss) = train_step(model, &mut optim, images, labels, mask, config.learning_rate);

        #[cfg(test)]
        if POISON_AT_STEP.get() == Some(step) {
            model = poison_fc1_bias(model);
        }
        losses.push(step, &loss);
        if let Some(train_accuracy) = train_accuracy {
            // One read from the device for the pending losses, this step's among them.
            let loss = losses.check()?.unwrap_or(f64::NAN);
            let elapsed = session_start.elapsed().as_secs_f64();
            let row = MetricRow {
                step,
                loss,
                train_accuracy,
                images_per_sec: (step + 1 - first_step) as f64 * config.batch_size as f64 / elapsed.max(1e-9),
                // Of the whole run: a resumed run's log goes on from its earlier sessions'.
                elapsed_s: prior_seconds + elapsed,
            };
            progress.log(&row);
            metrics.push(row)?;
        }
        progress.tick(step + 1);
        let done = step + 1;
        let checkpoint = config.checkpoint_every > 0 && done % config.checkpoint_every == 0 && done < config.steps;
        // The weights on a fixed cadence of their own: a log line reads the pending losses
        // back, so with logs every 100 steps or more often the losses alone never fall due.
        let weights_due = checkpoint || done % WEIGHTS_CHECK_EVERY == 0;
        if weights_due || losses.pending() >= LossWatch::<B>::MAX_PENDING {
            losses.check()?;
        }
        if weights_due {
            check_weights(&model, done)?;
        }
        if checkpoint {
            state.step = done;
            state.train_seconds = total_seconds();
            save(&state, &model, &optim)?;
        }
    }
    progress.finish();
    // A stop from here on cannot stop anything short of the end: say what is left.
    drop(stop_note);
    let _finishing = options.stop.clone().filter(|_| options.stop_note.is_some()).map(|stop| {
        progress.note_on(stop, "stopping: every step is done; saving the checkpoint, then finishing the evaluation and the model files (stop again to quit at once; resuming the run finishes them)".into())
    });
    losses.check()?;
    check_weights(&model, config.steps)?;
    let train_seconds = total_seconds();
    let trained_here = config.steps - first_step;
    state.step = config.steps;
    state.train_seconds = train_seconds;
    save(&state, &model, &optim)?;

    // From here on the checkpoint holds the whole run: a failure says so.
    let finish_err = |e: Error| Error::FinishNotSaved { steps: config.steps, dir: dir.to_path_buf(), source: Box::new(e) };
    let model = model.valid();
    // The evaluation can take a while (minutes on a software GPU adapter): say so.
    progress.say(&format!("evaluating on the {} test images of {}", dataset.test.len(), dataset.kind));
    let test = evaluate(&model, &dataset.test, config.eval_batch_size, device).map_err(|e| finish_err(e.into()))?;
    let class_names = dataset.class_names().iter().map(|n| n.to_string()).collect();
    artifact::save_dir(&model, &Manifest::new(config.model.clone(), dataset.kind.name(), class_names), dir).map_err(|e| finish_err(e.into()))?;
    plot(metrics.rows(), &dir.join(artifact::PLOT)).map_err(finish_err)?;
    let report = Report {
        test,
        steps: config.steps,
        batch_size: config.batch_size,
        train_seconds,
        // Of this session alone when the run was resumed (of the whole run when this
        // session only finished its evaluation).
        train_images_per_sec: if trained_here > 0 {
            trained_here as f64 * config.batch_size as f64 / (train_seconds - prior_seconds).max(1e-9)
        } else {
            config.steps as f64 * config.batch_size as f64 / train_seconds.max(1e-9)
        },
        backend: options.backend.clone(),
        device: match &options.adapter {
            Some(adapter) => format!("{} on {adapter}", <B::InnerBackend as Backend>::name(device)),
            None => format!("{} ({:?})", <B::InnerBackend as Backend>::name(device), device),
        },
        dataset: dataset.kind.name().to_string(),
        dataset_origin: dataset.origin.clone(),
        dataset_sha256: state.dataset_sha256.clone(),
        git_commit: options.git_commit.clone(),
        kernels: Some(kernels),
    };
    mnist_model::artifact::json::write(&dir.join(artifact::REPORT), &report).map_err(|e| finish_err(e.into()))?;
    Ok(Outcome::Finished(Box::new(report)))
}

/// The losses of the steps since the last check, left on the device: checking reads them
/// all back at once (one wait for the device), so the loop checks at every log line,
/// before every checkpoint and at least every [`Self::MAX_PENDING`] steps, and names the
/// first step whose loss was NaN or infinite.
struct LossWatch<B: AutodiffBackend> {
    first_step: u64,
    losses: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> Default for LossWatch<B> {
    fn default() -> Self {
        LossWatch { first_step: 0, losses: Vec::new() }
    }
}

impl<B: AutodiffBackend> LossWatch<B> {
    /// Steps between two checks at most.
    const MAX_PENDING: usize = 100;

    fn push(&mut self, step: u64, loss: &Tensor<B, 1>) {
        if self.losses.is_empty() {
            self.first_step = step;
        }
        self.losses.push(loss.clone().inner());
    }

    fn pending(&self) -> usize {
        self.losses.len()
    }

    /// [`Error::Diverged`] naming the first step whose loss was not finite; otherwise the
    /// loss of the latest step pushed (`None` when none was pending).
    fn check(&mut self) -> Result<Option<f64>> {
        if self.losses.is_empty() {
            return Ok(None);
        }
        let losses = Tensor::cat(std::mem::take(&mut self.losses), 0).into_data();
        let mut latest = None;
        for (i, loss) in losses.iter::<f64>().enumerate() {
            if !loss.is_finite() {
                return Err(Error::Diverged {
                    step: self.first_step + i as u64,
                    loss: loss as f32,
                });
            }
            latest = Some(loss);
        }
        Ok(latest)
    }
}

/// Steps between two checks of the parameters themselves ([`check_weights`]), whatever
/// the logging: reading 3.3 million values back costs about a millisecond on a CPU.
const WEIGHTS_CHECK_EVERY: u64 = 100;

#[cfg(test)]
thread_local! {
    /// A test's injected fault: after this step, a NaN in fc1's first bias, which the loss
    /// cannot see (ReLU turns the unit's NaN output into 0), as a dead unit hides one.
    pub(crate) static POISON_AT_STEP: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// [`POISON_AT_STEP`]'s fault.
#[cfg(test)]
fn poison_fc1_bias<B: AutodiffBackend>(mut model: Cnn<B>) -> Cnn<B> {
    model.fc1.bias = model.fc1.bias.map(|bias| {
        bias.map(|b| {
            let device = b.device();
            let mut values = b.into_data().to_vec::<f32>().expect("f32 bias");
            values[0] = f32::NAN;
            Tensor::<B, 1>::from_floats(values.as_slice(), &device).require_grad()
        })
    });
    model
}

/// [`Error::DivergedWeights`] when a parameter holds NaN or infinity after `step` steps:
/// ReLU can hide such weights from the loss for a while (a dead unit's NaN weight never
/// reaches the logits), so the loop checks the parameters themselves before every
/// checkpoint and every [`WEIGHTS_CHECK_EVERY`] steps.
fn check_weights<B: Backend>(model: &Cnn<B>, step: u64) -> Result<()> {
    match weights::first_non_finite(model) {
        None => Ok(()),
        Some(tensor) => Err(Error::DivergedWeights { step, tensor }),
    }
}

/// The optimizer of a run: Adam with the config's values (the seed: TensorFlow's
/// defaults, 0.9, 0.999 and 1e-8), as [`mnist_kernels::FusedAdamOptimizer`]: Burn's formula and the
/// state record of Burn's `OptimizerAdaptor` over [`FusedAdam`] (so checkpoints of
/// earlier versions resume), one fused pass per parameter on burn-flex, one kernel launch
/// for all eight parameters on wgpu and cuda, Burn's `Adam` elsewhere.
pub fn optimizer<B: AutodiffBackend>(config: &TrainConfig) -> impl Optimizer<Cnn<B>, B> + use<B> {
    config.adam.init_module::<Cnn<B>, B>()
}

/// Which implementation runs each part of training `model` on `B`: its convolution
/// blocks and fully connected layers ([`Cnn::kernels_in_use`]) and the optimizer's update
/// ([`FusedAdam::implementation`] on the backend the optimizer steps on).
pub fn kernels_in_use<B: AutodiffBackend>(model: &Cnn<B>) -> KernelsInUse {
    model.kernels_in_use().with_optimizer(FusedAdam::implementation::<B::InnerBackend>())
}

/// One optimisation step: the forward pass with the dropout `mask` (see
/// [`dropout_mask`]), softmax cross-entropy against `labels` ([`Cnn::loss`]), the backward pass and the
/// optimizer's update. Returns the updated network and the loss `[1]`, left on the device:
/// reading it back waits for the step to finish, so the loop reads it only when it logs.
///
/// On the CPU backends, run the loop on one of rayon's worker threads (`rayon::scope(|_|
/// loop)`), as `mnist train` does: from another thread each of the step's parallel
/// operations wakes a worker and puts the caller to sleep, a tenth of a step at batch 50.
/// Only one such loop at a time in a process: a worker waiting inside burn-autodiff's
/// graph lock could take up a second loop, which then waits for that lock on its thread.
pub fn train_step<B: AutodiffBackend, O: Optimizer<Cnn<B>, B>>(
    model: Cnn<B>,
    optim: &mut O,
    images: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
    mask: Tensor<B, 2>,
    learning_rate: f64,
) -> (Cnn<B>, Tensor<B, 1>) {
    let loss = model.loss(model.forward_train(images, mask), labels);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    (optim.step(learning_rate, model, grads), loss)
}

/// Fraction of `labels` that the network (no dropout) predicts on `images`.
fn batch_accuracy<B: Backend>(model: &Cnn<B>, images: burn::tensor::Tensor<B, 4>, labels: &burn::tensor::Tensor<B, 1, burn::tensor::Int>) -> f64 {
    let n = labels.dims()[0];
    let predicted = model.forward(images).argmax(1).flatten::<1>(0, 1);
    let correct = predicted.equal(labels.clone()).int().sum().into_scalar().elem::<i64>();
    correct as f64 / n as f64
}

/// Makes `dir` ready for a run (or for resuming it) and locks it for this process: the
/// returned file holds an exclusive lock until it is dropped, so a second `mnist train`
/// into the same directory is refused instead of writing over the first. Only then are
/// stale temporary files removed: with the lock held, no other process can be writing
/// them. `notes`: say on standard error what was removed or is started again.
fn prepare_dir(dir: &Path, resume: bool, notes: bool) -> Result<std::fs::File> {
    check_out_dir(dir, resume)?;
    make_out_dir(dir)?;
    // The lock first: a directory another process trains in is refused as such, whatever
    // it holds so far.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(artifact::LOCK))
        .map_err(|source| Error::Write {
            path: dir.join(artifact::LOCK),
            source,
        })?;
    let locked = match lock.try_lock() {
        Ok(()) => true,
        Err(std::fs::TryLockError::WouldBlock) => return Err(Error::RunInUse { path: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            // Some network file systems have no locks: train unguarded, and leave any
            // temporary files alone (another process might be writing them).
            let _ = writeln!(std::io::stderr(), "warning: {} cannot be locked here ({e}); do not train into it twice at once", dir.display());
            false
        }
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(Error::Write {
                path: dir.join(artifact::LOCK),
                source,
            });
        }
    };
    // A finished run, or one with a checkpoint, is never started over; one stopped before
    // its first checkpoint has nothing to keep but its metrics, and starts again.
    if !resume && trained(dir) {
        return Err(Error::RunExists { path: dir.to_path_buf(), run: existing_run(dir) });
    }
    if notes && dir.join(artifact::METRICS).exists() && !dir.join(artifact::CHECKPOINT).exists() {
        let what = if resume { "starting it again from step 0 (with the config given, or its own)" } else { "replacing it with this run" };
        let _ = writeln!(std::io::stderr(), "note: {} holds a run with no checkpoint (stopped before its first one, or the checkpoint was removed); {what}", dir.display());
    }
    if locked {
        // Left by a process killed while writing (SIGKILL, power loss): never renamed, so
        // never read, only taking space.
        for stale in artifact::remove_stale_temps(dir)? {
            if notes {
                let _ = writeln!(std::io::stderr(), "removed a stale temporary file: {}", stale.display());
            }
        }
    }
    Ok(lock)
}

/// Makes the run's folder `dir` (and its parents) and checks that a file can be written
/// in it: what [`train`] does first, for a caller to do before it says that training
/// starts. Fails now, not after hours of training, when the folder is not writable.
///
/// # Errors
/// [`Error::OutDir`] when the folder cannot be made or written in.
pub fn make_out_dir(dir: &Path) -> Result<()> {
    let err = |source| Error::OutDir { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    artifact::temp_file_in(dir, "").map_err(err)?;
    Ok(())
}

/// Checks, without writing anything, that a run may start in `dir` (`resume`: may go on
/// there): what [`train`] checks before it locks the directory, for a caller to check
/// before loading a dataset or anything else slow.
///
/// # Errors
/// [`Error::NotADirectory`] for a file, or a folder to be made inside one;
/// [`Error::RunInUse`] when a process trains there now; [`Error::NoCheckpoint`] when
/// `resume` finds no checkpoint (a run stopped before its first one is not refused: it
/// starts again), [`Error::Checkpoint`] when the checkpoint's path is not a file;
/// [`Error::WouldOverwrite`] when the folder holds files of the names a run writes that
/// no run wrote; [`Error::FolderOfRuns`] for a new run into a folder of runs;
/// [`Error::RunExists`] when a new run would start over a finished one or one with a
/// checkpoint.
pub fn check_out_dir(dir: &Path, resume: bool) -> Result<()> {
    // The folder, or the nearest of its parents that exists (a folder to be made inside a
    // file, `notes.txt/run`, names the file).
    if let Some(file) = dir.ancestors().find(|a| a.exists()).filter(|a| !a.is_dir()) {
        return Err(Error::NotADirectory { path: file.to_path_buf() });
    }
    // A run in progress is named as such, whatever it has written so far (before its first
    // checkpoint it looks like a run that stopped).
    if locked_by_another(dir) {
        return Err(Error::RunInUse { path: dir.to_path_buf() });
    }
    let checkpoint = dir.join(artifact::CHECKPOINT);
    if checkpoint.exists() && !checkpoint.is_file() {
        return Err(Error::Checkpoint { path: checkpoint, message: "not a file; expected the run's checkpoint there (move it away)".into() });
    }
    if resume && !checkpoint.is_file() {
        let why = if !dir.exists() {
            NoCheckpoint::NoDirectory
        } else if trained(dir) {
            NoCheckpoint::CheckpointGone
        } else if dir.join(artifact::METRICS).exists() {
            // A run stopped before its first checkpoint (a second Ctrl-C, a kill) left its
            // config and metrics and nothing else: resuming it starts it again, from step
            // 0 with its config.
            return Ok(());
        } else if holds_runs(dir) {
            NoCheckpoint::HoldsRuns
        } else {
            NoCheckpoint::NoRun
        };
        return Err(Error::NoCheckpoint { path: checkpoint, why });
    }
    // Files training writes, in a folder no run has started in (no lock file with the
    // metrics a run creates right after it, no checkpoint, no report or manifest a run
    // wrote): the user's own, which a new run must not replace, even beside a `.lock` of their own.
    // (A run stopped before its first checkpoint left its lock and metrics, and starts
    // again; a run with a checkpoint is refused as one, by `prepare_dir` once it holds the
    // lock.)
    if !resume && dir.is_dir() && !started(dir) && !trained_by_a_run(dir) {
        let files: Vec<String> = [artifact::TRAIN_CONFIG, artifact::METRICS, artifact::PLOT, artifact::MANIFEST, artifact::WEIGHTS, artifact::SAFETENSORS, artifact::REPORT]
            .iter()
            .filter(|f| dir.join(f).exists())
            .map(|f| f.to_string())
            .collect();
        if !files.is_empty() {
            return Err(Error::WouldOverwrite { path: dir.to_path_buf(), files });
        }
    }
    if !resume && dir.is_dir() && !trained(dir) && holds_runs(dir) {
        return Err(Error::FolderOfRuns { path: dir.to_path_buf() });
    }
    // A finished run, or one with a checkpoint, is never started over (a run in progress
    // was named as such above; `prepare_dir` checks again once it holds the lock).
    if !resume && trained(dir) {
        return Err(Error::RunExists { path: dir.to_path_buf(), run: existing_run(dir) });
    }
    Ok(())
}

/// Whether a run has started in `dir`: its lock file is there, and the metrics log a run
/// creates once it holds the lock (before it writes its `config.json`).
fn started(dir: &Path) -> bool {
    dir.join(artifact::LOCK).exists() && dir.join(artifact::METRICS).exists()
}

/// Whether another process holds the lock of `dir` (a run training there now). Taking the
/// lock to find out releases it at once.
pub fn locked_by_another(dir: &Path) -> bool {
    let Ok(lock) = std::fs::OpenOptions::new().write(true).open(dir.join(artifact::LOCK)) else {
        return false;
    };
    matches!(lock.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// Whether every file a run writes after its last step is in `dir` (the model, its
/// weights in both formats, the plot and the report): a resume with no steps left writes
/// those that are missing (a full disk, a file deleted), and a run with all of them is
/// finished. A run with a checkpoint and not all of these is unfinished: resuming it
/// trains on or writes them.
pub fn finished_files(dir: &Path) -> bool {
    [artifact::REPORT, artifact::MANIFEST, artifact::WEIGHTS, artifact::SAFETENSORS, artifact::PLOT].iter().all(|f| dir.join(f).is_file())
}

/// Whether `train` with `resume` goes on with the run in `dir` (by its files, without
/// reading them): a checkpoint with steps or final files left, or a run stopped before its
/// first checkpoint (its metrics and nothing else), which starts again. A finished run
/// whose model file is damaged is resumed too, and is not told apart here.
pub fn resumable(dir: &Path) -> bool {
    let checkpoint = dir.join(artifact::CHECKPOINT).is_file();
    (checkpoint && !finished_files(dir)) || (!trained(dir) && dir.join(artifact::METRICS).exists())
}

/// Whether `dir` holds runs in folders of its own (a folder of runs, such as
/// `artifacts/`): a folder with a checkpoint or a model.
fn holds_runs(dir: &Path) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let run = e.path();
        run.join(artifact::CHECKPOINT).is_file() || run.join(artifact::MANIFEST).is_file()
    })
}

/// What the run in `dir` is, for [`Error::RunExists`].
fn existing_run(dir: &Path) -> ExistingRun {
    let checkpoint = dir.join(artifact::CHECKPOINT);
    if checkpoint.is_file() && checkpoint::read_state(&checkpoint).is_err() {
        return ExistingRun::DamagedCheckpoint;
    }
    match (checkpoint.is_file(), finished_files(dir)) {
        (false, _) => ExistingRun::NoCheckpoint,
        (true, true) => ExistingRun::Finished,
        (true, false) => ExistingRun::Unfinished,
    }
}

/// Whether a run in `dir` got as far as a checkpoint, or finished.
fn trained(dir: &Path) -> bool {
    [artifact::CHECKPOINT, artifact::REPORT, artifact::MANIFEST].iter().any(|f| dir.join(f).exists())
}

/// [`trained`], telling a run's report and model manifest from files of the user's by
/// those names (such as `{"mine": 1}`), which a new run must not replace: a run's hold a
/// key of their own, and are written atomically, so never torn. Only for naming the
/// user's files ([`Error::WouldOverwrite`]); every other decision takes a file by either
/// name as a run's, so that nothing of a damaged run is trained over.
fn trained_by_a_run(dir: &Path) -> bool {
    dir.join(artifact::CHECKPOINT).exists() || a_runs(&dir.join(artifact::REPORT), "\"test\"") || a_runs(&dir.join(artifact::MANIFEST), "\"conv1_channels\"")
}

/// Whether `path` is there and holds `key` (a run's file of its kind always does), or is
/// there and cannot be read (taken as a run's: refused as a run, not overwritten).
fn a_runs(path: &Path, key: &str) -> bool {
    if !path.exists() {
        return false;
    }
    match mnist_fs::read_capped(path, 1 << 20) {
        Ok(bytes) => bytes.windows(key.len()).any(|w| w == key.as_bytes()),
        Err(_) => true,
    }
}

/// Checks, without writing anything and reading of a checkpoint only its state, that
/// [`train`] would start with these arguments: `config` valid, its batch no larger than
/// `dataset`'s training split, the folder free ([`check_out_dir`]), and on resume the
/// checkpoint's run this one (the same dataset by content, the same config but for
/// `steps`, neither finished nor beyond `steps`). For a caller to check before it says
/// that training starts; [`train`] checks all of it again. Returns the step the run
/// starts at: 0, or on resume the checkpoint's (`config.steps` when only the final
/// evaluation and the model files are left to do).
///
/// # Errors
/// [`Error::InvalidConfig`], [`check_out_dir`]'s errors, [`Error::Checkpoint`] for a
/// checkpoint that cannot be read, and [`Error::NotResumable`] for one of another run (or
/// of this run, finished).
pub fn check_start(config: &TrainConfig, dataset: &Dataset, options: &TrainOptions) -> Result<u64> {
    config.validate()?;
    check_dataset(config, dataset)?;
    let dir = &options.out_dir;
    check_out_dir(dir, options.resume)?;
    let path = dir.join(artifact::CHECKPOINT);
    if options.resume && path.is_file() {
        let saved = checkpoint::read_state(&path)?;
        check_resumable(&saved, &start_state(config, dataset), &path)?;
        return Ok(saved.step);
    }
    Ok(0)
}

/// The state of a run of `config` on `dataset` before its first step: the config records
/// the dataset actually trained on, whichever way it was chosen (`--dataset`, or the
/// bundled sample when MNIST is not found), and the dataset is known by its SHA-256.
fn start_state(config: &TrainConfig, dataset: &Dataset) -> CheckpointState {
    CheckpointState {
        step: 0,
        config: TrainConfig { dataset: Some(dataset.kind), ..config.clone() },
        dataset: dataset.kind.name().to_string(),
        dataset_sha256: dataset.sha256(),
        train_seconds: 0.0,
    }
}

/// The dataset is the one the config names, if it names one, and a batch can be no larger
/// than the training split it is drawn from.
fn check_dataset(config: &TrainConfig, dataset: &Dataset) -> Result<()> {
    if let Some(kind) = config.dataset.filter(|kind| *kind != dataset.kind) {
        return Err(Error::InvalidConfig {
            file: None,
            field: "dataset".into(),
            message: format!(
                "dataset is {kind}, but the dataset given to train on is {} ({}); load {kind}, or set dataset to {} or leave it out",
                dataset.kind, dataset.origin, dataset.kind
            ),
        });
    }
    let images = dataset.train.len();
    if config.batch_size > images {
        return Err(Error::InvalidConfig {
            file: None,
            field: "batch_size".into(),
            message: format!("batch_size must be at most {images}, the training images of {} ({}), got {}", dataset.kind, dataset.origin, config.batch_size),
        });
    }
    Ok(())
}

/// Whether the run of checkpoint `saved` (at `path`) may go on as `now` asks; `now.step`
/// is not read.
fn check_resumable(saved: &CheckpointState, now: &CheckpointState, path: &Path) -> Result<()> {
    let refuse = |reason: NotResumable| Err(Error::NotResumable { path: path.to_path_buf(), reason });
    if saved.dataset_sha256 != now.dataset_sha256 {
        return refuse(NotResumable::OtherDataset {
            trained_on: saved.dataset.clone(),
            trained_sha256: saved.dataset_sha256.clone(),
            given: now.dataset.clone(),
            given_sha256: now.dataset_sha256.clone(),
        });
    }
    let mut a = saved.config.clone();
    a.steps = now.config.steps;
    // The dataset is held to the run's by its content above (and a checkpoint written
    // before config.json recorded the dataset has none).
    a.dataset = now.config.dataset;
    if a != now.config {
        return refuse(NotResumable::ConfigDiffers { fields: config_differences(&a, &now.config) });
    }
    if saved.step > now.config.steps {
        return refuse(NotResumable::BeyondSteps { step: saved.step, steps: now.config.steps });
    }
    // Finished: every step done and every final file there and intact (a damaged model is
    // written again from the checkpoint, as a missing one is).
    let dir = mnist_fs::parent_dir(path);
    if saved.step == now.config.steps && finished_files(dir) && artifact::verify_dir(dir).is_ok() {
        return refuse(NotResumable::Finished { steps: saved.step });
    }
    Ok(())
}

/// The fields where two configs differ, each as `field: the run has A, now B`, by their
/// JSON form (nested fields with their path: `model.hidden`).
pub(crate) fn config_differences(run: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (key, va) in a {
                    let field = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    walk(&field, va, b.get(key).unwrap_or(&serde_json::Value::Null), out);
                }
            }
            (a, b) if a != b => out.push(format!("`{path}`: the run has {a}, now {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let (Ok(a), Ok(b)) = (serde_json::to_value(run), serde_json::to_value(now)) {
        walk("", &a, &b, &mut out);
    }
    out
}

/// The note of [`Progress::note_on`]; its watch ends when this is dropped (the thread sees
/// it within 50 ms).
struct StopNote(Arc<StopNoteInner>);

struct StopNoteInner {
    note: String,
    bar: Option<indicatif::ProgressBar>,
    said: AtomicBool,
    done: AtomicBool,
}

impl StopNoteInner {
    /// Writes the note, the first time only.
    fn say(&self) {
        if self.said.swap(true, Ordering::SeqCst) {
            return;
        }
        note_above(self.bar.as_ref(), &self.note);
    }
}

/// Writes `line` to standard error, above `bar` when there is one (which would otherwise
/// draw over it); a failure is ignored (there is nowhere left to say it).
fn note_above(bar: Option<&indicatif::ProgressBar>, line: &str) {
    let write = || {
        let _ = writeln!(std::io::stderr(), "{line}");
    };
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

impl StopNote {
    /// Writes the note now unless the watch has (a stop seen by the loop before the
    /// thread's next look).
    fn say(&self) {
        self.0.say();
    }
}

impl Drop for StopNote {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::SeqCst);
    }
}

/// Progress display: a bar on a terminal, lines otherwise.
struct Progress {
    mode: ProgressMode,
    bar: Option<indicatif::ProgressBar>,
    /// Set when a line could not be written to standard output (closed pipe, full disk).
    write_error: std::cell::RefCell<Option<(String, std::io::ErrorKind)>>,
    /// The step this session started at (a resumed run's checkpoint).
    start: u64,
    /// The terminal is under 80 columns: the short bar.
    narrow: bool,
}

impl Progress {
    fn new(mode: ProgressMode, start: u64, total: u64) -> Self {
        let bar = (mode == ProgressMode::Bar).then(|| indicatif::ProgressBar::new(total));
        // The bar draws on standard error.
        let columns = console::Term::stderr().size_checked().map(|(_, columns)| columns);
        Self::with_bar(mode, bar, start, columns)
    }

    /// With `bar` drawn where it draws (a test's in-memory terminal) on a terminal of
    /// `columns` (unknown: a wide one).
    fn with_bar(mode: ProgressMode, bar: Option<indicatif::ProgressBar>, start: u64, columns: Option<u16>) -> Self {
        let narrow = columns.is_some_and(|c| c < 80);
        if let Some(bar) = &bar {
            bar.set_style(Self::style("{eta}", start, narrow));
            bar.set_position(start);
        }
        Progress { mode, bar, write_error: Default::default(), start, narrow }
    }

    /// The bar's look, with `when` between the speed and the message: the ETA while it
    /// runs (`ETA --` until a step of this session is done: no speed is known before),
    /// what stopped it after. The message takes what the terminal's width leaves, cut
    /// short rather than wrapped onto a second line; on a `narrow` terminal (under 80
    /// columns) the bar is shorter and the speed left out, so the rest fits in 40.
    fn style(when: &str, start: u64, narrow: bool) -> indicatif::ProgressStyle {
        let template = if narrow {
            format!("{{bar:12}} {{pos}}/{{len}} {when} {{wide_msg}}")
        } else {
            format!("{{bar:25}} {{pos}}/{{len}} steps  {{rate}}  {when}  {{wide_msg}}")
        };
        indicatif::ProgressStyle::with_template(&template)
            .map(|style| {
                style
                    .with_key("rate", move |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = if state.pos() > start { write!(w, "{:.1} steps/s", state.per_sec()) } else { write!(w, "-- steps/s") };
                    })
                    .with_key("eta", move |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = if state.pos() > start { write!(w, "ETA {:#}", indicatif::HumanDuration(state.eta())) } else { write!(w, "ETA --") };
                    })
            })
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    }

    /// Writes `note` to standard error (above the bar) once `stop` is set, watching from a
    /// thread of its own until the guard returned is dropped.
    fn note_on(&self, stop: Arc<AtomicBool>, note: String) -> StopNote {
        let inner = Arc::new(StopNoteInner { note, bar: self.bar.clone(), said: AtomicBool::new(false), done: AtomicBool::new(false) });
        let watch = inner.clone();
        // Without a thread to spare (a memory limit), the loop says the note itself when it
        // sees the stop.
        let _ = std::thread::Builder::new().name("stop-note".into()).spawn(move || {
            while !watch.done.load(Ordering::SeqCst) {
                if stop.load(Ordering::SeqCst) {
                    watch.say();
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        StopNote(inner)
    }

    fn write_error(&self) -> Option<(String, std::io::ErrorKind)> {
        self.write_error.borrow().clone()
    }

    /// A line on standard error (above the bar when there is one); nothing when quiet.
    fn note(&self, line: &str) {
        if self.mode != ProgressMode::Quiet {
            note_above(self.bar.as_ref(), line);
        }
    }

    /// A line of its own (above the bar, or as a plain line); nothing when quiet.
    fn say(&self, line: &str) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.println(line),
            (None, ProgressMode::Lines) => self.write_line(line),
            _ => {}
        }
    }

    fn write_line(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            self.write_error.borrow_mut().get_or_insert((e.to_string(), e.kind()));
        }
    }

    fn log(&self, row: &MetricRow) {
        match (&self.bar, self.mode) {
            // The step it was logged at: the next log line is up to `log_every` steps on.
            // The figures first: a narrow terminal cuts the message short from its end.
            (Some(bar), _) => bar.set_message(format!("loss {:.4}, training accuracy {:.4} (at step {})", row.loss, row.train_accuracy, row.step)),
            (None, ProgressMode::Lines) => self.write_line(&format!(
                "step {}, training accuracy {:.4}, loss {:.4}, {:.0} images/s",
                row.step, row.train_accuracy, row.loss, row.images_per_sec
            )),
            _ => {}
        }
    }

    fn tick(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }

    /// Ends the bar where it is, for a run stopped before its last step: "stopped" where
    /// the ETA was (an abandoned bar's ETA reads 0 s, as if it had finished).
    fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.set_style(Self::style("stopped", self.start, self.narrow));
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    /// A bar drawn on an in-memory terminal of 120 columns, and that terminal.
    fn drawn(start: u64, total: u64) -> (Progress, indicatif::InMemoryTerm) {
        let term = indicatif::InMemoryTerm::new(4, 120);
        let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::term_like(Box::new(term.clone())));
        (Progress::with_bar(ProgressMode::Bar, Some(bar), start, Some(120)), term)
    }

    /// A run stopped early leaves its bar saying so where the ETA was, not "ETA 0s" as if
    /// it had finished; a finished run's bar is full.
    #[test]
    fn a_stopped_runs_bar_says_stopped_instead_of_an_eta() {
        let (progress, term) = drawn(0, 100);
        progress.tick(40);
        progress.abandon();
        let shown = term.contents();
        assert!(shown.contains("40/100 steps") && shown.contains("stopped") && !shown.contains("ETA"), "{shown}");
        let (progress, term) = drawn(0, 100);
        progress.tick(100);
        progress.finish();
        let shown = term.contents();
        assert!(shown.contains("100/100 steps") && !shown.contains("stopped"), "{shown}");
    }

    /// Before a step of this session is done no speed is known: no "ETA 0s" (it had read
    /// as if the run were done), on a new run and a resumed one.
    #[test]
    fn no_eta_before_the_first_step() {
        for start in [0, 40] {
            let (progress, term) = drawn(start, 100);
            progress.tick(start);
            let shown = term.contents();
            assert!(shown.contains(&format!("{start}/100 steps  -- steps/s  ETA --")), "{shown}");
            progress.tick(start + 1);
            let shown = term.contents();
            assert!(shown.contains("ETA ") && !shown.contains("ETA --") && !shown.contains("-- steps/s"), "{shown}");
        }
    }

    /// The bar and its message fit a terminal of 80, 60 or 40 columns on one line.
    #[test]
    fn the_bar_fits_the_terminal() {
        for columns in [80u16, 60, 40] {
            let term = indicatif::InMemoryTerm::new(4, columns);
            let bar = indicatif::ProgressBar::with_draw_target(Some(30_000), indicatif::ProgressDrawTarget::term_like(Box::new(term.clone())));
            let progress = Progress::with_bar(ProgressMode::Bar, Some(bar), 0, Some(columns));
            progress.tick(29_901);
            progress.log(&MetricRow { step: 29_900, loss: 0.0123, train_accuracy: 1.0, images_per_sec: 3000.0, elapsed_s: 500.0 });
            progress.tick(29_902);
            progress.abandon();
            let shown = term.contents();
            let lines: Vec<&str> = shown.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{columns} columns: {shown}");
            assert!(lines[0].chars().count() <= usize::from(columns) && lines[0].contains("29902/30000") && lines[0].contains("stopped"), "{columns} columns: {shown}");
        }
    }
}
