//! `mnist train`, `mnist eval` and `mnist predict` (`mnist bench` is in bench.rs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use mnist_data::{DatasetChoice, DatasetKind, Locator};
use mnist_infer::Classifier;
use mnist_model::weights;
use mnist_train::{Outcome, ProgressMode, Report, TrainConfig, TrainOptions, checkpoint, files};

use crate::backend::{BackendKind, Job, dispatch};
use crate::output::{note, say, stdout_closed};
use crate::{EvalArgs, KernelsArg, PredictArgs, Status, TrainArgs};

/// Where runs go when `--out` is not given.
pub const ARTIFACTS: &str = "artifacts";

pub fn train(args: TrainArgs) -> Result<Status> {
    let backend = args.backend.map_or_else(BackendKind::default_compiled, Ok)?;
    let out = match (&args.out, args.resume) {
        (Some(out), _) => out.clone(),
        (None, true) => newest_run(Path::new(ARTIFACTS), files::CHECKPOINT)?,
        (None, false) => PathBuf::new(), // named below, once the dataset is known
    };
    let mut config = match (&args.config, args.resume) {
        (Some(path), _) => TrainConfig::read(path)?,
        (None, true) => TrainConfig::read(&out.join(files::CONFIG))
            .with_context(|| format!("cannot resume {}", out.display()))?,
        (None, false) => TrainConfig::new(),
    };
    if let Some(steps) = args.steps {
        config.steps = steps;
    }
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    config.validate()?;

    let choice = match (&args.data.dataset, config.dataset, args.resume) {
        (Some(name), _, _) => name.parse::<DatasetChoice>()?,
        (None, Some(kind), _) => DatasetChoice::Exactly(kind),
        (None, None, true) => {
            let state = checkpoint::read_state(&out.join(files::CHECKPOINT))?;
            DatasetChoice::Exactly(state.dataset.parse()?)
        }
        (None, None, false) => DatasetChoice::Auto,
    };
    let loaded = Locator::from_env(args.data.data_dir.clone()).load_choice(choice)?;
    if let Some(notice) = &loaded.notice {
        note!("note: {notice}");
    }
    let dataset = loaded.dataset;
    // Before announcing the run: a GPU backend without an adapter fails here.
    crate::backend::prepare(backend)?;
    let out = if out.as_os_str().is_empty() {
        Path::new(ARTIFACTS).join(format!("{}-{}", dataset.kind, utc_stamp()))
    } else {
        out
    };

    let mut options = TrainOptions::new(&out, backend.name());
    options.resume = args.resume;
    options.progress = if args.plain { ProgressMode::Lines } else { ProgressMode::auto() };
    options.stop = Some(stop_flag());
    options.git_commit = git_commit();
    options.kernels = args.kernels.into();
    say!(
        "training on {} ({}: {} train / {} test images) with {} for {} steps of {}; artifacts in {}",
        dataset.kind,
        dataset.origin,
        dataset.train.len(),
        dataset.test.len(),
        backend.name(),
        config.steps,
        config.batch_size,
        out.display()
    );
    let outcome = dispatch(backend, TrainJob { config: &config, dataset: &dataset, options: &options })?;
    match outcome {
        Outcome::Finished(report) => {
            if options.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                note!("the interrupt came after the last step: the run was finished and saved");
            }
            say!("{}", report.test.table(dataset.class_names()));
            say!(
                "test accuracy {:.4}; {:.0} training images/s; wrote {}",
                report.test.accuracy,
                report.train_images_per_sec,
                out.display()
            );
            Ok(Status::Success)
        }
        Outcome::Interrupted { step } => {
            note!("interrupted after {}; checkpoint saved. Resume with: {}", steps(step), resume_command(&args, &out));
            Ok(Status::Interrupted)
        }
        Outcome::OutputClosed { step, error } => {
            note!(
                "standard output was closed ({error}): stopped after {}; checkpoint saved. Resume with: {}",
                steps(step),
                resume_command(&args, &out)
            );
            Ok(Status::OutputClosed)
        }
    }
}

/// `1 step`, `2 steps`.
fn steps(n: u64) -> String {
    if n == 1 { "1 step".into() } else { format!("{n} steps") }
}

/// Environment variable naming the command the user typed to run `mnist` (`cargo xtask`
/// sets it), for the hints this program prints; `mnist` when unset.
pub const COMMAND_ENV: &str = "MNIST_RS_COMMAND";

/// The command that resumes the run in `out`, in the form the user started it: `mnist
/// train` or, through `cargo xtask`, `cargo xtask train`, with the options a resume needs
/// again (the rest is in the run's config.json).
fn resume_command(args: &TrainArgs, out: &Path) -> String {
    // The program as it was called (`./mnist`, `target/release/mnist`) when that is this
    // binary; `mnist` otherwise (a library caller, a test).
    let called_as = std::env::args().next().filter(|a| Path::new(a).file_stem().is_some_and(|s| s == "mnist"));
    let program = std::env::var(COMMAND_ENV)
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| called_as.map(|a| shell_quote(&a)))
        .unwrap_or_else(|| "mnist".into());
    let mut words = vec![program, "train".to_string()];
    if let Some(backend) = args.backend {
        words.extend(["--backend".into(), backend.name().into()]);
    }
    if let Some(dir) = &args.data.data_dir {
        words.extend(["--data-dir".into(), shell_quote(&dir.display().to_string())]);
    }
    if args.kernels != KernelsArg::Fastest
        && let Some(name) = clap::ValueEnum::to_possible_value(&args.kernels)
    {
        words.extend(["--kernels".into(), name.get_name().to_string()]);
    }
    words.extend(["--resume".into(), "--out".into(), shell_quote(&out.display().to_string())]);
    words.join(" ")
}

/// `word` quoted for a POSIX shell when it holds anything but plain characters.
fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
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

pub fn eval(args: EvalArgs) -> Result<Status> {
    let backend = args.backend.map_or_else(BackendKind::default_compiled, Ok)?;
    let model_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => newest_run(Path::new(ARTIFACTS), weights::WEIGHTS_FILE)?,
    };
    check_model_dir(&model_dir)?;
    let trained_on = read_report(&model_dir).map(|r| r.dataset);
    let choice = match (&args.data.dataset, &trained_on) {
        (Some(name), _) => name.parse::<DatasetChoice>()?,
        (None, Some(name)) => DatasetChoice::Exactly(name.parse()?),
        (None, None) => DatasetChoice::Auto,
    };
    let loaded = Locator::from_env(args.data.data_dir.clone()).load_choice(choice)?;
    if let Some(notice) = &loaded.notice {
        note!("note: {notice}");
    }
    let dataset = loaded.dataset;
    let evaluation = dispatch(backend, EvalJob { dir: &model_dir, split: &dataset.test })?;
    // A closed standard output (`| head`) ends the printing quietly; eval.json is
    // written all the same.
    say!("model {} on the {} test split ({})", model_dir.display(), dataset.kind, dataset.origin);
    say!("{}", evaluation.table(dataset.class_names()));
    let json = args.json.unwrap_or_else(|| model_dir.join("eval.json"));
    mnist_model::json::write(&json, &evaluation)?;
    say!("wrote {}", json.display());
    Ok(Status::Success)
}

/// Checks, before any dataset is looked for, that `dir` holds a trained model: a
/// readable `model.json` and a `model.mpk`.
fn check_model_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{}: no such directory; expected a trained model's artifact directory (train one with `cargo xtask train`)",
            dir.display()
        );
    }
    if !dir.join(weights::CONFIG_FILE).exists() && dir.join(files::CHECKPOINT).is_file() {
        bail!(
            "{} holds an unfinished run (a checkpoint, no model yet); finish it with `mnist train --resume --out {}`",
            dir.display(),
            shell_quote(&dir.display().to_string())
        );
    }
    weights::read_manifest(dir).with_context(|| format!("cannot load the model in {}", dir.display()))?;
    let mpk = dir.join(weights::WEIGHTS_FILE);
    if !mpk.is_file() {
        bail!("{}: missing; expected the weights of a finished run in {}", mpk.display(), dir.display());
    }
    Ok(())
}

struct EvalJob<'a> {
    dir: &'a Path,
    split: &'a mnist_data::Split,
}

impl Job for EvalJob<'_> {
    type Output = mnist_train::Evaluation;
    fn run<B: AutodiffBackend>(self, device: &B::Device, _: BackendKind) -> Result<Self::Output> {
        let (_, model) = weights::load_dir::<B::InnerBackend>(self.dir, device)
            .with_context(|| format!("cannot load the model in {}", self.dir.display()))?;
        Ok(mnist_train::evaluate(&model, self.split, 500, device)?)
    }
}

pub fn predict(args: PredictArgs) -> Result<Status> {
    let backend = args.backend.map_or_else(BackendKind::default_compiled, Ok)?;
    let model_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => newest_run(Path::new(ARTIFACTS), weights::WEIGHTS_FILE)?,
    };
    check_model_dir(&model_dir)?;
    let classes = read_report(&model_dir)
        .and_then(|r| r.dataset.parse::<DatasetKind>().ok())
        .unwrap_or(DatasetKind::Mnist)
        .class_names();
    dispatch(backend, PredictJob { dir: &model_dir, files: &args.files, json: args.json, classes })
}

struct PredictJob<'a> {
    dir: &'a Path,
    files: &'a [PathBuf],
    json: bool,
    classes: &'static [&'static str; 10],
}

impl Job for PredictJob<'_> {
    type Output = Status;
    fn run<B: AutodiffBackend>(self, device: &B::Device, _: BackendKind) -> Result<Status> {
        let classifier = Classifier::<B::InnerBackend>::load(self.dir, device)?;
        let mut failed = 0;
        for file in self.files {
            match classifier.predict_file(file) {
                Ok(p) if self.json => say!(
                    "{}",
                    serde_json::json!({
                        "file": file,
                        "class": p.digit,
                        "name": self.classes[p.digit],
                        "probability": p.confidence(),
                        "probabilities": p.probabilities,
                    })
                ),
                Ok(p) => say!("{}: {} (probability {:.4})", file.display(), self.classes[p.digit], p.confidence()),
                Err(e) => {
                    note!("error: {e}");
                    failed += 1;
                    true
                }
            };
            if stdout_closed() {
                // Nobody reads the answers any more (`| head -1`): stop quietly.
                return Ok(Status::Success);
            }
        }
        if failed == self.files.len() {
            bail!("no image could be classified");
        }
        Ok(if failed > 0 { Status::PartialFailure } else { Status::Success })
    }
}

fn read_report(dir: &Path) -> Option<Report> {
    let text = std::fs::read_to_string(dir.join(files::REPORT)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The most recently modified run in `root` that holds `marker`.
fn newest_run(root: &Path, marker: &str) -> Result<PathBuf> {
    let entries = std::fs::read_dir(root).with_context(|| {
        format!(
            "no runs found: cannot read {}. Train one with `cargo xtask train`, or pass --model/--out",
            root.display()
        )
    })?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path().join(marker);
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            Some((modified, e.path()))
        })
        .max()
        .map(|(_, dir)| dir)
        .with_context(|| format!("no run in {} holds {marker}. Train one with `cargo xtask train`, or pass --model/--out", root.display()))
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

/// The process-wide stop flag, set by the first Ctrl-C, SIGTERM or SIGHUP: training
/// saves a checkpoint after the current step and exits. A second signal exits at once.
fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        if let Err(e) = install_stop_handlers(&flag) {
            note!("warning: Ctrl-C and SIGTERM will not save a checkpoint: {e}");
        }
        // Say at once that the signal was seen; the step in flight may take a while.
        let watched = flag.clone();
        std::thread::spawn(move || {
            while !watched.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            note!("interrupt: saving a checkpoint after this step (interrupt again to quit at once)");
        });
        flag
    })
    .clone()
}

#[cfg(unix)]
fn install_stop_handlers(flag: &Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // The order matters: the exit is armed by the flag the first signal sets.
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, flag.clone())?;
        signal_hook::flag::register_usize(signal, &STOP_SIGNAL, signal as usize)?;
        signal_hook::flag::register(signal, flag.clone())?;
    }
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

/// `git rev-parse HEAD` of the current directory, with `-dirty` when there are changes.
fn git_commit() -> Option<String> {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"])?;
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{commit}-dirty") } else { commit })
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
    #[test]
    fn utc_stamp_has_the_expected_shape() {
        let s = super::utc_stamp();
        assert_eq!(s.len(), 15, "{s}");
        assert!(s.starts_with("20"), "{s}");
        assert_eq!(&s[8..9], "-");
    }
}

