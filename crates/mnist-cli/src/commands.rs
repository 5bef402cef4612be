//! `mnist train`, `mnist eval` and `mnist predict` (`mnist bench` is in bench.rs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use mnist_data::{DatasetChoice, DatasetKind, Locator};
use mnist_infer::Classifier;
use mnist_model::weights;
use mnist_train::{Outcome, ProgressMode, Report, TrainConfig, TrainOptions, checkpoint, files};

use crate::backend::{BackendKind, Job, dispatch};
use crate::{EvalArgs, PredictArgs, Status, TrainArgs};

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
        eprintln!("note: {notice}");
    }
    let dataset = loaded.dataset;
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
    println!(
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
            println!("{}", report.test.table(dataset.class_names()));
            println!(
                "test accuracy {:.4}; {:.0} training images/s; wrote {}",
                report.test.accuracy,
                report.train_images_per_sec,
                out.display()
            );
            Ok(Status::Success)
        }
        Outcome::Interrupted { step } => {
            eprintln!(
                "interrupted after {step} steps; checkpoint saved. Resume with: mnist train --resume --out {}",
                out.display()
            );
            Ok(Status::Interrupted)
        }
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
    let trained_on = read_report(&model_dir).map(|r| r.dataset);
    let choice = match (&args.data.dataset, &trained_on) {
        (Some(name), _) => name.parse::<DatasetChoice>()?,
        (None, Some(name)) => DatasetChoice::Exactly(name.parse()?),
        (None, None) => DatasetChoice::Auto,
    };
    let loaded = Locator::from_env(args.data.data_dir.clone()).load_choice(choice)?;
    if let Some(notice) = &loaded.notice {
        eprintln!("note: {notice}");
    }
    let dataset = loaded.dataset;
    let evaluation = dispatch(backend, EvalJob { dir: &model_dir, split: &dataset.test })?;
    println!("model {} on the {} test split ({})", model_dir.display(), dataset.kind, dataset.origin);
    println!("{}", evaluation.table(dataset.class_names()));
    let json = args.json.unwrap_or_else(|| model_dir.join("eval.json"));
    mnist_model::json::write(&json, &evaluation)?;
    println!("wrote {}", json.display());
    Ok(Status::Success)
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
                Ok(p) if self.json => println!(
                    "{}",
                    serde_json::json!({
                        "file": file,
                        "class": p.digit,
                        "name": self.classes[p.digit],
                        "probability": p.confidence(),
                        "probabilities": p.probabilities,
                    })
                ),
                Ok(p) => println!("{}: {} (probability {:.4})", file.display(), self.classes[p.digit], p.confidence()),
                Err(e) => {
                    eprintln!("error: {e}");
                    failed += 1;
                }
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

/// The process-wide stop flag, set by the first Ctrl-C; a second Ctrl-C exits at once.
fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let handler_flag = flag.clone();
        let installed = ctrlc::set_handler(move || {
            if handler_flag.swap(true, Ordering::SeqCst) {
                eprintln!("second interrupt: exiting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("interrupt: saving a checkpoint after this step (Ctrl-C again to quit at once)");
        });
        if let Err(e) = installed {
            eprintln!("warning: Ctrl-C will not save a checkpoint: {e}");
        }
        flag
    })
    .clone()
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

