//! `mnist train`: a run into an artifact directory, stopped cleanly by signals, with the
//! command that resumes it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use mnist_data::DatasetChoice;
use mnist_model::artifact;
use mnist_train::{Outcome, ProgressMode, TrainConfig, TrainOptions, checkpoint};

use crate::backend::{BackendKind, Job, dispatch};
use crate::commands::{ARTIFACTS, newest_unfinished_run, quote_path, shell_quote};
use crate::output::{note, say};
use crate::{KernelsArg, Status, TrainArgs};

/// A new, empty folder in `root` (`artifacts/`) for a run: `name`, or `name-2`, `name-3`,
/// ... when that exists (two runs started in the same second). Made here, so that no
/// other run can take the same name.
fn new_run_dir(root: &Path, name: &str) -> Result<PathBuf> {
    if root.is_symlink() && !root.exists() {
        let target = std::fs::read_link(root).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
        anyhow::bail!("{} is a link to {target}, which does not exist; create that folder, remove the link, or choose a folder with --out", root.display());
    }
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    for n in 1..1000 {
        let dir = root.join(if n == 1 { name.to_string() } else { format!("{name}-{n}") });
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    anyhow::bail!("{} holds {name} and 998 more of its numbered names; choose a folder with --out", root.display())
}

/// Refuses a run whose batches (or network) the memory cannot hold, before it is tried and
/// the process killed; and sets what the allocator advises if memory runs out anyway.
/// For a `--config` file that is not found: the file of that name in `configs/` of the
/// current directory, where the project keeps its configs (`--config quick.json` run from
/// the project's folder), if there is one.
fn config_nearby(path: &Path, error: &std::io::Error) -> Option<PathBuf> {
    if error.kind() != std::io::ErrorKind::NotFound || path.parent().is_some_and(|p| !p.as_os_str().is_empty()) {
        return None;
    }
    Some(Path::new("configs").join(path.file_name()?)).filter(|nearby| nearby.is_file())
}

/// `start`: the step the run goes on from (no training left at `config.steps`); `file`:
/// where the config came from, for the message.
fn check_memory(backend: BackendKind, config: &TrainConfig, dataset: &mnist_data::Dataset, start: u64, file: Option<&Path>, resume: bool) -> Result<()> {
    use crate::memory::{Advice, Pass, check, need, on_out_of_memory};
    let source = file.map(|f| format!("{}: ", f.display())).unwrap_or_default();
    let training = need(backend, &config.model, Pass::Training, config.batch_size);
    on_out_of_memory(match training {
        _ if resume => Advice::Resume,
        Some(n) if n.network > n.batch => Advice::Network,
        _ => Advice::Batch,
    });
    let resumed = |mut e: crate::memory::TooLarge| {
        e.resume = resume;
        e
    };
    if start < config.steps {
        let what = format!("{source}training with batch_size {}", config.batch_size);
        check(backend, &config.model, Pass::Training, config.batch_size, &what, "batch_size").map_err(resumed)?;
    }
    // An evaluation batch is never larger than the test split.
    let eval_batch = config.eval_batch_size.min(dataset.test.len().max(1));
    let what = format!("{source}evaluating the {} test images with eval_batch_size {}", dataset.test.len(), config.eval_batch_size);
    check(backend, &config.model, Pass::Evaluation, eval_batch, &what, "eval_batch_size").map_err(resumed)?;
    Ok(())
}

/// The config of the run in `out` to resume, and the file it came from: its
/// `config.json`, or where that is gone, the one its checkpoint records (said on standard
/// error; the run writes `config.json` again).
fn run_config(out: &Path) -> Result<(TrainConfig, PathBuf)> {
    let file = out.join(artifact::TRAIN_CONFIG);
    let checkpoint = out.join(artifact::CHECKPOINT);
    if !file.exists() && checkpoint.is_file() {
        let state = checkpoint::read_state(&checkpoint).with_context(|| format!("{}: its {} is missing, and its checkpoint cannot be read", out.display(), artifact::TRAIN_CONFIG))?;
        note!("note: {} is missing; resuming with the config {} records", file.display(), checkpoint.display());
        return Ok((state.config, checkpoint));
    }
    let config = TrainConfig::read(&file).with_context(|| format!("cannot resume {}", out.display()))?;
    Ok((config, file))
}

pub fn train(args: TrainArgs) -> Result<Status> {
    crate::hints::train_args(args.resume, args.steps);
    let backend = args.backend.map_or_else(BackendKind::default_compiled, Ok)?;
    let out = match (&args.out, args.resume) {
        (Some(out), _) => out.clone(),
        (None, true) => newest_unfinished_run(Path::new(ARTIFACTS))?,
        (None, false) => PathBuf::new(), // named below, once the dataset is known
    };
    // The config given is read first: a mistake in it is said before any about the folder
    // (which a corrected command may still name).
    let given = match &args.config {
        // A file that cannot be read is named as the training config: the message is the
        // OS's alone otherwise (one about its content names the file and the field).
        Some(path) => match TrainConfig::read(path) {
            Err(mnist_train::Error::Read { path, source }) => {
                let message = format!("cannot read the training config (--config) {}: {source}", path.display());
                return Err(match config_nearby(&path, &source) {
                    Some(nearby) => crate::hints::hinted(message, format!("the project's configs are in configs/: --config {}", quote_path(&nearby))),
                    None => anyhow::anyhow!(message),
                });
            }
            read => Some((read?, path.clone())),
        },
        None => None,
    };
    // A folder no run may start in is refused before the dataset is looked for.
    if !out.as_os_str().is_empty() {
        let _ = RESUME_HINT.set(resume_command(&args, &out));
        let _ = RUN_DIR.set(out.clone());
        mnist_train::check_out_dir(&out, args.resume)?;
    }
    // The file the config came from, which a value out of range names.
    let (mut config, config_file) = match (given, args.resume) {
        (Some((config, path)), _) => (config, Some(path)),
        (None, true) => {
            let (config, file) = run_config(&out)?;
            (config, Some(file))
        }
        (None, false) => (TrainConfig::new(), None),
    };
    if let Some(steps) = args.steps {
        config.steps = steps;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    config.validate()?;
    // Before the dataset is looked for (or downloaded): a backend not compiled in, or a GPU
    // backend without an adapter, fails here.
    crate::backend::prepare(backend)?;

    // A resume onto another dataset is refused before that dataset is looked for (or
    // downloaded): the run's config names the one it trains on.
    if let (true, Some(name), Some(kind)) = (args.resume, &args.data.dataset, config.dataset)
        && let DatasetChoice::Exactly(given) = name.parse::<DatasetChoice>()?
        && given != kind
    {
        anyhow::bail!("{}: cannot resume: the run trains on {kind}, not on {given}; leave out --dataset (a resume trains on the run's own dataset)", out.display());
    }
    let choice = match (&args.data.dataset, config.dataset, args.resume) {
        (Some(name), _, _) => name.parse::<DatasetChoice>()?,
        (None, Some(kind), _) => DatasetChoice::Exactly(kind),
        (None, None, true) => {
            let state = checkpoint::read_state(&out.join(artifact::CHECKPOINT))?;
            DatasetChoice::Exactly(state.dataset.parse()?)
        }
        (None, None, false) => DatasetChoice::Auto,
    };
    let dataset = args.data.load(choice, mnist_data::Splits::Both)?;
    // `--dataset` overrides the config's, as `--steps` and `--seed` do theirs.
    config.dataset = Some(dataset.kind);
    let out = if out.as_os_str().is_empty() { new_run_dir(Path::new(ARTIFACTS), &format!("{}-{}", dataset.kind, utc_stamp()))? } else { out };

    let mut options = TrainOptions::new(&out, backend.name());
    options.resume = args.resume;
    options.progress = if args.plain { ProgressMode::Lines } else { ProgressMode::auto() };
    let resume = resume_command(&args, &out);
    let _ = RESUME_HINT.set(resume.clone());
    let _ = RUN_DIR.set(out.clone());
    options.stop = Some(stop_flag());
    // Said at once (above the progress bar): the step in flight may take a while.
    options.stop_note = Some("stopping: saving a checkpoint after this step (a second Ctrl-C or signal quits at once, without it)".into());
    options.git_commit = crate::BUILD_COMMIT.map(str::to_string);
    options.kernels = args.kernels.into();
    // A resume the checkpoint refuses, or a batch larger than the dataset, is refused
    // before training is announced.
    let start = mnist_train::check_start(&config, &dataset, &options).map_err(|e| match (e, config_file.clone()) {
        (mnist_train::Error::InvalidConfig { file: None, field, message }, Some(file)) => mnist_train::Error::InvalidConfig { file: Some(file), field, message },
        (e, _) => e,
    })?;
    check_memory(backend, &config, &dataset, start, config_file.as_deref(), args.resume)?;
    // The folder made, and a file written in it, before training is announced.
    mnist_train::make_out_dir(&out)?;
    if start == config.steps {
        let are = if config.steps == 1 { "is" } else { "are" };
        say!("the run's {} {are} done; evaluating it and writing its model files into {}", steps(config.steps), out.display());
    } else {
        say!(
            "training on {} ({}: {} train / {} test images) with {} for {} of {}{}; artifacts in {}",
            dataset.kind,
            dataset.origin,
            dataset.train.len(),
            dataset.test.len(),
            backend.name(),
            steps(config.steps),
            config.batch_size,
            if start > 0 { format!(", from step {start}") } else { String::new() },
            out.display()
        );
    }
    let outcome = dispatch(backend, TrainJob { config: &config, dataset: &dataset, options: &options })?;
    match outcome {
        Outcome::Finished(report) => {
            // A stop that came after the last step finished the run all the same; the exit
            // status still says the signal came (130, 143, 129), so that a script stops.
            let signalled = options.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
            say!("{}", report.test.table(&class_names(&dataset)));
            // With no steps left to train, no speed was measured here (the report's is the
            // run's own, from the process that trained it).
            let speed = if start == config.steps { "no steps left to train".to_string() } else { format!("{:.0} training images/s", report.train_images_per_sec) };
            say!("test accuracy {:.4}; {speed}; wrote {}", report.test.accuracy, out.display());
            // Last: it sums the run up.
            if signalled {
                note!("{} after the last step: the run was finished and saved", stopped_by());
            }
            Ok(if signalled { Status::Interrupted } else { Status::Success })
        }
        Outcome::Interrupted { step } => {
            note!("{} after {}; checkpoint saved. Resume with: {resume}", stopped_by(), steps(step));
            Ok(Status::Interrupted)
        }
        Outcome::OutputClosed { step, error, kind: std::io::ErrorKind::BrokenPipe } => {
            note!(
                "standard output was closed ({error}): stopped after {}; checkpoint saved. Resume with: {resume}",
                steps(step)
            );
            Ok(Status::OutputClosed)
        }
        // Not a reader gone away but a write that failed (a full disk): an error.
        Outcome::OutputClosed { step, error, .. } => Err(crate::hints::hinted(
            format!("cannot write standard output: {error}: stopped after {}; checkpoint saved", steps(step)),
            format!("resume with: {resume}"),
        )),
    }
}

/// The dataset's class names, as the tables print them.
fn class_names(dataset: &mnist_data::Dataset) -> Vec<String> {
    dataset.class_names().iter().map(|n| n.to_string()).collect()
}

/// `1 step`, `2 steps`.
fn steps(n: u64) -> String {
    if n == 1 { "1 step".into() } else { format!("{n} steps") }
}

/// Environment variable naming the command the user typed to run `mnist` (`cargo xtask`
/// sets it), for the hints this program prints; `mnist` when unset.
pub const COMMAND_ENV: &str = "MNIST_RS_COMMAND";

/// The command the user runs this program with, for hints: `cargo xtask` (from
/// [`COMMAND_ENV`]), else the program as it was called (`./mnist`, `target/release/mnist`)
/// when that is this binary, else `mnist` (a library caller, a test).
pub(crate) fn program() -> String {
    let called_as = std::env::args().next().filter(|a| Path::new(a).file_stem().is_some_and(|s| s == "mnist"));
    std::env::var(COMMAND_ENV)
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| called_as.map(|a| shell_quote(&a)))
        .unwrap_or_else(|| "mnist".into())
}

/// The command that resumes the run in `out`, in the form the user started it: `mnist
/// train` or, through `cargo xtask`, `cargo xtask train`, with the options a resume needs
/// again (the rest is in the run's config.json).
fn resume_command(args: &TrainArgs, out: &Path) -> String {
    let mut words = vec![program(), "train".to_string()];
    if let Some(backend) = args.backend {
        words.extend(["--backend".into(), backend.name().into()]);
    }
    if let Some(dir) = &args.data.data_dir {
        words.extend(["--data-dir".into(), quote_path(dir)]);
    }
    if args.kernels != KernelsArg::Fastest
        && let Some(name) = clap::ValueEnum::to_possible_value(&args.kernels)
    {
        words.extend(["--kernels".into(), name.get_name().to_string()]);
    }
    words.extend(["--resume".into(), "--out".into(), quote_path(out)]);
    words.join(" ")
}

struct TrainJob<'a> {
    config: &'a TrainConfig,
    dataset: &'a mnist_data::Dataset,
    options: &'a TrainOptions,
}

impl Job for TrainJob<'_> {
    type Output = Outcome;
    fn run<B: AutodiffBackend>(self, device: &B::Device, _: BackendKind) -> Result<Outcome> {
        // The GPU adapter is known once `dispatch` has set the device up.
        let options = TrainOptions { adapter: crate::backend::adapter().map(str::to_string), ..self.options.clone() };
        Ok(mnist_train::train::<B>(self.config, self.dataset, &options, device)?)
    }
}

/// The command that resumes the run in progress, for the note of a second signal and the
/// hints below errors, set once the run's folder is known.
static RESUME_HINT: OnceLock<String> = OnceLock::new();

/// The folder of the run this process trains, once it is known: whether it holds a
/// checkpoint decides what the note of a second signal says.
static RUN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// What the note of a second signal says after "quitting now, without saving": whether a
/// checkpoint of the run is kept (`checkpoint`: one is in its folder), and the command
/// that goes on from it, or that starts the run again from step 0 when there is none.
fn quit_note(checkpoint: bool, resume: Option<&str>) -> String {
    match (checkpoint, resume) {
        (true, Some(command)) => format!("a checkpoint saved before is kept; resume with: {command}"),
        (true, None) => "a checkpoint saved before is kept".to_string(),
        (false, Some(command)) => format!("no checkpoint was saved yet, so the run starts again from step 0 with: {command}"),
        (false, None) => "no checkpoint was saved yet".to_string(),
    }
}

/// The command that resumes the run this process trains, once its folder is known.
pub(crate) fn resume_hint() -> Option<String> {
    RESUME_HINT.get().cloned()
}

/// The signal that stopped training (`SIGINT`, `SIGTERM`, `SIGHUP`), 0 when none did.
static STOP_SIGNAL: AtomicUsize = AtomicUsize::new(0);

/// The exit status of a run stopped by a signal: 128 + the signal's number, as a shell
/// reports a process killed by it (130 for Ctrl-C, 143 for SIGTERM).
pub fn interrupted_exit_code() -> u8 {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => 130,
        signal => u8::try_from(128 + signal).unwrap_or(130),
    }
}

/// How the run was stopped, for its last note: `interrupted` (Ctrl-C), `stopped by
/// SIGTERM`, `stopped by SIGHUP`.
fn stopped_by() -> String {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        15 => "stopped by SIGTERM".into(),
        1 => "stopped by SIGHUP".into(),
        _ => "interrupted".into(),
    }
}

/// The process-wide stop flag, set by the first Ctrl-C, SIGTERM or SIGHUP: training
/// saves a checkpoint after the current step and exits. A second signal exits at once.
fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        if let Err(e) = install_stop_handlers(&flag) {
            note!("warning: Ctrl-C and SIGTERM will not save a checkpoint: {e}");
        }
        flag
    })
    .clone()
}

/// Ctrl-C, SIGTERM and SIGHUP, received on a thread of their own (signal-hook's iterator:
/// no code runs in the signal handler itself): the first records the signal and sets
/// `flag`; a second says that it quits and exits at once, without a checkpoint.
#[cfg(unix)]
fn install_stop_handlers(flag: &Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let flag = flag.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            // The signal first: whoever sees the flag reads it for the exit status.
            if !flag.load(Ordering::SeqCst) {
                STOP_SIGNAL.store(signal as usize, Ordering::SeqCst);
                flag.store(true, Ordering::SeqCst);
                continue;
            }
            // Said from a thread of its own, so that a standard error that blocks (held by
            // another thread, or a full pipe) cannot hold the exit back.
            let (said, wait) = std::sync::mpsc::channel();
            // No thread to spare (a memory limit): quit without the note.
            let _ = std::thread::Builder::new().spawn(move || {
                // On a terminal the progress bar holds the line: the note starts its own.
                let line_break = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { "\n" } else { "" };
                let checkpoint = RUN_DIR.get().is_some_and(|dir| dir.join(artifact::CHECKPOINT).is_file());
                let note = quit_note(checkpoint, RESUME_HINT.get().map(String::as_str));
                note!("{line_break}stopped again: quitting now, without saving ({note})");
                let _ = said.send(());
            });
            let _ = wait.recv_timeout(std::time::Duration::from_millis(500));
            std::process::exit(128 + signal);
        }
    })?;
    Ok(())
}

#[cfg(not(unix))]
fn install_stop_handlers(flag: &Arc<AtomicBool>) -> std::io::Result<()> {
    let handler_flag = flag.clone();
    ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .map_err(std::io::Error::other)
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    /// A second signal's note says a checkpoint is kept only where there is one.
    #[test]
    fn the_quit_note_says_whether_a_checkpoint_is_kept() {
        let command = "mnist train --resume --out run";
        assert_eq!(super::quit_note(true, Some(command)), "a checkpoint saved before is kept; resume with: mnist train --resume --out run");
        assert_eq!(super::quit_note(false, Some(command)), "no checkpoint was saved yet, so the run starts again from step 0 with: mnist train --resume --out run");
        assert_eq!(super::quit_note(true, None), "a checkpoint saved before is kept");
        assert_eq!(super::quit_note(false, None), "no checkpoint was saved yet");
    }

    #[test]
    fn utc_stamp_has_the_expected_shape() {
        let s = super::utc_stamp();
        assert_eq!(s.len(), 15, "{s}");
        assert!(s.starts_with("20"), "{s}");
        assert_eq!(&s[8..9], "-");
    }

    /// Two runs started in the same second get a folder each.
    #[test]
    fn new_run_folders_never_collide() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("artifacts");
        let a = super::new_run_dir(&root, "sample-20261206-034505").unwrap();
        let b = super::new_run_dir(&root, "sample-20261206-034505").unwrap();
        let c = super::new_run_dir(&root, "sample-20261206-034505").unwrap();
        assert_eq!([a, b, c].map(|d| d.file_name().unwrap().to_string_lossy().into_owned()), ["sample-20261206-034505", "sample-20261206-034505-2", "sample-20261206-034505-3"]);
        // A dangling link in its place says so (it had said "File exists").
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path().join("gone"), &link).unwrap();
        let err = super::new_run_dir(&link, "x").unwrap_err().to_string();
        assert!(err.contains("is a link to") && err.contains("gone, which does not exist"), "{err}");
    }

    /// `train --resume` without `--out` takes the newest run that is unfinished, not a newer
    /// finished one.
    #[test]
    fn resume_finds_the_newest_unfinished_run() {
        use mnist_model::artifact;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // A run's files, its metrics (written at every log line) last.
        let run = |name: &str, files: &[&str]| {
            std::fs::create_dir(root.join(name)).unwrap();
            for f in files.iter().chain([&artifact::METRICS]) {
                std::fs::write(root.join(name).join(f), "x").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        let newest = || crate::commands::newest_unfinished_run(root);
        assert!(newest().unwrap_err().to_string().contains("no run in"));
        run("older-unfinished", &[artifact::CHECKPOINT]);
        let finished = [artifact::CHECKPOINT, artifact::MANIFEST, artifact::WEIGHTS, artifact::SAFETENSORS, artifact::PLOT, artifact::REPORT];
        run("finished", &finished);
        assert!(newest().unwrap().ends_with("older-unfinished"));
        // A finished run whose checkpoint was deleted: nothing to resume.
        run("checkpoint-gone", &finished[1..]);
        run("no-checkpoint-nor-plot", &finished[1..5]);
        assert!(newest().unwrap().ends_with("older-unfinished"));
        // All its steps done and a final file missing: unfinished too (a resume writes it).
        run("no-plot", &finished.iter().copied().filter(|f| *f != artifact::PLOT).collect::<Vec<_>>());
        assert!(newest().unwrap().ends_with("no-plot"));
        run("newest-unfinished", &[artifact::CHECKPOINT]);
        assert!(newest().unwrap().ends_with("newest-unfinished"));
        // Stopped before its first checkpoint: a resume starts it again.
        run("stopped-early", &[artifact::TRAIN_CONFIG]);
        assert!(newest().unwrap().ends_with("stopped-early"));
    }
}

