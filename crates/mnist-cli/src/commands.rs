//! `mnist eval` and `mnist predict`, which need a trained model and nothing of training
//! (`mnist train` is in train.rs, `mnist bench` in bench.rs), and what the commands share.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use mnist_data::{DatasetChoice, DatasetKind};
use mnist_infer::{Classifier, Evaluation};
use mnist_model::artifact::{self, Manifest};

use crate::backend::{BackendKind, Job, dispatch};
use crate::hints::hinted;
use crate::output::{note, say, stdout_closed};
use crate::{EvalArgs, PredictArgs, Status};

/// Where runs go when `--out` is not given.
pub const ARTIFACTS: &str = "artifacts";

/// `word` quoted for a POSIX shell when it holds anything but plain characters.
pub(crate) fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// [`shell_quote`] of a path as displayed.
pub(crate) fn quote_path(path: &Path) -> String {
    shell_quote(&path.display().to_string())
}

pub fn eval(args: EvalArgs) -> Result<Status> {
    let backend = args.backend.map_or_else(BackendKind::default_compiled, Ok)?;
    let model_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => newest_run(Path::new(ARTIFACTS), artifact::WEIGHTS)?,
    };
    let manifest = check_model_dir(&model_dir)?;
    // Where the report goes is checked before the evaluation, not after it (the default,
    // which depends on the dataset, once that is known).
    let to_stdout = args.json.as_ref().is_some_and(|json| json.as_os_str() == "-");
    if let Some(json) = args.json.as_ref().filter(|_| !to_stdout) {
        if let Some(run) = artifact::run_file_replaced(json) {
            bail!(
                "--json {} would replace a file of the run in {}; choose another path (the default is {})",
                json.display(),
                run.display(),
                model_dir.join(artifact::EVALUATION).display()
            );
        }
        // Another run's folder: its reports are of its own model (`eval --model` there
        // writes them); one of this model written there would pass for that run's.
        let folder = mnist_fs::parent_dir(json);
        if artifact::holds_run(folder) && !same_dir(folder, &model_dir) {
            return Err(hinted(
                format!("--json {} is in the folder of another run ({}), whose evaluation reports are of its own model", json.display(), folder.display()),
                format!("choose a path outside it (the default is {})", model_dir.join(artifact::EVALUATION).display()),
            ));
        }
        check_report_path(json)?;
    }
    let choice = match (&args.data.dataset, &manifest.dataset) {
        (Some(name), _) => name.parse::<DatasetChoice>()?,
        (None, Some(name)) => DatasetChoice::Exactly(name.parse().map_err(|_| {
            anyhow::anyhow!(
                "{} records the dataset {name:?}, which is none of mnist, fashion or sample; name the test split to evaluate on with --dataset mnist, fashion or sample",
                model_dir.join(artifact::MANIFEST).display()
            )
        })?),
        (None, None) => DatasetChoice::Auto,
    };
    crate::backend::prepare(backend)?;
    let dataset = args.data.load(choice, mnist_data::Splits::Test)?;
    if let Some(trained) = manifest.dataset.as_deref().and_then(|d| d.parse::<DatasetKind>().ok())
        && trained.class_names() != dataset.kind.class_names()
    {
        note!(
            "note: the model was trained on {trained} and is evaluated on {}, whose classes are other things: its accuracy there means little",
            dataset.kind
        );
    }
    let json = match &args.json {
        Some(json) => json.clone(),
        None => {
            let json = model_dir.join(artifact::evaluation_file(manifest.dataset.as_deref(), dataset.kind.name()));
            check_report_path(&json)?;
            json
        }
    };
    let batch = EvalBatch::of(args.batch, &model_dir);
    let what = format!("evaluating the {} test images with {}", dataset.test.len(), batch.described());
    let largest = batch.size.min(dataset.test.len().max(1));
    crate::memory::check(backend, &manifest.config, crate::memory::Pass::Evaluation, largest, &what, batch.field)?;
    let evaluation = dispatch(backend, EvalJob { dir: &model_dir, manifest: &manifest, split: &dataset.test, batch: batch.size, to_stdout })?;
    // A closed standard output (`| head`) ends the printing quietly; eval.json is
    // written all the same.
    let heading = format!("model {} on the {} test split ({}), in batches of {}", model_dir.display(), dataset.kind, dataset.origin, largest);
    let table = evaluation.table(&class_names(&manifest));
    let report = EvalReport {
        model: model_dir.to_string_lossy().into_owned(),
        model_sha256: manifest.sha256.get(artifact::WEIGHTS).map(String::as_str),
        dataset: dataset.kind.name(),
        evaluation: &evaluation,
    };
    if to_stdout {
        // `--json -`: the JSON alone on standard output, for a pipe; the table for the eye.
        note!("{heading}\n{table}");
        say!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(Status::Success);
    }
    say!("{heading}");
    say!("{table}");
    artifact::json::write(&json, &report)?;
    say!("wrote {}", json.display());
    Ok(Status::Success)
}

/// The batch `eval` evaluates in, and what set it (for messages).
struct EvalBatch {
    /// Images at once.
    size: usize,
    /// `--batch`, or `eval_batch_size` when the run's config set it.
    field: &'static str,
    /// Where the size came from.
    source: &'static str,
}

impl EvalBatch {
    /// When no config says otherwise: the batch `mnist train`'s seed config evaluates in.
    const DEFAULT: usize = 500;

    /// `--batch` if given, else the `eval_batch_size` of the run's `config.json` (the batch
    /// its training evaluated in), else [`Self::DEFAULT`]. A config that is there but
    /// cannot be read is said on standard error, not an error: the model is whole without it.
    fn of(given: Option<usize>, model_dir: &Path) -> Self {
        if let Some(size) = given {
            return EvalBatch { size, field: "--batch", source: "" };
        }
        let default = EvalBatch { size: Self::DEFAULT, field: "--batch", source: " (the default)" };
        let config = model_dir.join(artifact::TRAIN_CONFIG);
        if !config.exists() {
            return default;
        }
        match mnist_train::TrainConfig::read(&config) {
            Ok(config) => EvalBatch { size: config.eval_batch_size, field: "eval_batch_size", source: " (the run's config.json)" },
            Err(e) => {
                note!("note: {e}; evaluating in batches of {} (--batch sets another)", Self::DEFAULT);
                default
            }
        }
    }

    /// `--batch 500 (the default)`, `eval_batch_size 1000 (the run's config.json)`.
    fn described(&self) -> String {
        format!("{} {}{}", self.field, self.size, self.source)
    }
}

/// Whether `a` and `b` name the same directory (as given, or once resolved).
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// Checks that the report can be written to `json` ([`mnist_fs::check_destination`]),
/// and refuses a file there other than an earlier evaluation report (the user's notes or
/// a training config): `eval` replaces only its own kind of file.
fn check_report_path(json: &Path) -> Result<()> {
    mnist_fs::check_destination(json)?;
    if !json.is_file() {
        return Ok(());
    }
    let report = mnist_fs::read_to_string_capped(json, mnist_fs::MAX_JSON_BYTES)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|v| ["model", "accuracy", "confusion"].iter().all(|key| v.get(key).is_some()));
    if report {
        return Ok(());
    }
    Err(hinted(
        format!("{} exists and is not an evaluation report (the JSON `mnist eval` writes); eval replaces only an earlier report", json.display()),
        "choose another path with --json (or - for standard output), or move the file away",
    ))
}

/// What `eval` writes (`eval.json`): which model on which dataset's test split, then the
/// evaluation's own fields.
#[derive(serde::Serialize)]
struct EvalReport<'a> {
    /// The model's artifact directory, as given (a name that is not UTF-8 with U+FFFD in
    /// place of what is not).
    model: String,
    /// The SHA-256 of the weights evaluated (`model.mpk`), as `model.json` records it:
    /// tells an evaluation of the model now in the folder from one of a model it held
    /// before (a resume that trained further writes new weights).
    #[serde(skip_serializing_if = "Option::is_none")]
    model_sha256: Option<&'a str>,
    /// The dataset whose test split was evaluated (`mnist`, `fashion`, `sample`).
    dataset: &'a str,
    #[serde(flatten)]
    evaluation: &'a Evaluation,
}

/// The names of the classes the model in `manifest` predicts: recorded in `model.json`,
/// or for a model saved before they were, those of the dataset it was trained on.
pub(crate) fn class_names(manifest: &Manifest) -> Vec<String> {
    manifest.class_names.clone().unwrap_or_else(|| {
        let kind = manifest.dataset.as_deref().and_then(|d| d.parse::<DatasetKind>().ok()).unwrap_or(DatasetKind::Mnist);
        kind.class_names().iter().map(|n| n.to_string()).collect()
    })
}

/// Checks, before any dataset is looked for, that `dir` holds a trained model: a
/// readable `model.json` (returned) and a `model.mpk`.
pub(crate) fn check_model_dir(dir: &Path) -> Result<Manifest> {
    if dir.is_file() {
        // Often one of the run's own files: its folder is what was meant.
        let parent = dir.parent().filter(|p| p.join(artifact::MANIFEST).is_file());
        match parent {
            Some(parent) => {
                return Err(hinted(
                    format!("{}: a file, not a directory; expected a trained model's artifact directory", dir.display()),
                    format!("pass its folder: --model {}", quote_path(parent)),
                ));
            }
            None => bail!(
                "{}: a file, not a directory; expected a trained model's artifact directory (the folder with {} and {})",
                dir.display(),
                artifact::MANIFEST,
                artifact::WEIGHTS
            ),
        }
    }
    if !dir.is_dir() {
        let message = format!("{}: no such directory; expected a trained model's artifact directory", dir.display());
        let newest = newest_run(Path::new(ARTIFACTS), artifact::MANIFEST).ok();
        return Err(match newest {
            Some(run) => hinted(message, format!("the newest run in {ARTIFACTS}: --model {}", quote_path(&run))),
            None => hinted(message, format!("train one with `{} train`, and pass its folder with --model", crate::train::program())),
        });
    }
    if !dir.join(artifact::MANIFEST).exists() && mnist_train::locked_by_another(dir) {
        return Err(hinted(
            format!("{} holds a run another process is training now (no model yet)", dir.display()),
            "wait for it to finish, or pass a finished run with --model",
        ));
    }
    if !dir.join(artifact::MANIFEST).exists() && dir.join(artifact::CHECKPOINT).is_file() {
        // Weights beside the checkpoint: a run that finished, or was finishing, and lacks
        // its manifest (which a resume writes again).
        let what = if dir.join(artifact::WEIGHTS).is_file() {
            format!("{} holds a run without its {} (a checkpoint and weights, no manifest)", dir.display(), artifact::MANIFEST)
        } else {
            format!("{} holds an unfinished run (a checkpoint, no model yet)", dir.display())
        };
        return Err(hinted(what, format!("to finish it: {}", crate::hints::resume(dir))));
    }
    if !dir.join(artifact::MANIFEST).exists() {
        // Often the folder of runs, or a run's parent: name a run in it.
        let runs = newest_run(dir, artifact::MANIFEST).ok();
        return Err(match runs {
            Some(run) => hinted(
                format!("{} holds no {}: it is not a trained model's artifact directory, but it holds runs", dir.display(), artifact::MANIFEST),
                format!("pass one, e.g. the newest: --model {}", quote_path(&run)),
            ),
            None => anyhow::anyhow!(
                "{} holds no {}: expected a trained model's artifact directory (the folder `mnist train` writes, with {} and {})",
                dir.display(),
                artifact::MANIFEST,
                artifact::MANIFEST,
                artifact::WEIGHTS
            ),
        });
    }
    let manifest = artifact::read_manifest(dir).with_context(|| format!("cannot load the model in {}", dir.display()))?;
    let mpk = dir.join(artifact::WEIGHTS);
    if !mpk.is_file() {
        let message = format!("{}: missing; expected the weights of a finished run in {}", mpk.display(), dir.display());
        return Err(match crate::hints::rewrite_model(dir) {
            Some(hint) => hinted(message, hint),
            None => anyhow::anyhow!(message),
        });
    }
    Ok(manifest)
}

struct EvalJob<'a> {
    dir: &'a Path,
    /// `model.json` as `check_model_dir` read it: only the weights are left to read.
    manifest: &'a Manifest,
    split: &'a mnist_data::Split,
    /// Images evaluated at once.
    batch: usize,
    /// Standard output carries the JSON (`--json -`): what is said goes to standard error.
    to_stdout: bool,
}

impl Job for EvalJob<'_> {
    type Output = Evaluation;
    fn run<B: AutodiffBackend>(self, device: &B::Device, _: BackendKind) -> Result<Self::Output> {
        let model = artifact::load_weights::<B::InnerBackend>(self.dir, self.manifest, device)
            .with_context(|| format!("cannot load the model in {}", self.dir.display()))?;
        if self.to_stdout {
            note!("{}", model.kernels_in_use());
        } else {
            say!("{}", model.kernels_in_use());
        }
        Ok(mnist_infer::evaluate(&model, self.split, self.batch, device)?)
    }
}

/// `file` classified: the image file, or for `-` the image on standard input (`predict`
/// takes `-` once).
fn predict_one<B: burn::tensor::backend::Backend>(classifier: &Classifier<B>, file: &Path) -> Result<mnist_infer::Prediction> {
    if file.as_os_str() != "-" {
        return Ok(classifier.predict_file(file)?);
    }
    let bytes = mnist_fs::read_capped_from(std::io::stdin().lock(), None, mnist_infer::preprocess::MAX_FILE)
        .map_err(|e| anyhow::anyhow!("cannot read standard input: {e}"))?;
    if bytes.is_empty() {
        bail!("standard input is empty; expected an image");
    }
    Ok(classifier.predict(&mnist_infer::preprocess::preprocess_bytes(&bytes, Path::new("standard input"))?))
}

pub fn predict(args: PredictArgs) -> Result<Status> {
    let backend = args.backend.map_or_else(BackendKind::default_compiled, Ok)?;
    let model_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => newest_run(Path::new(ARTIFACTS), artifact::WEIGHTS)?,
    };
    let from_stdin = args.files.iter().filter(|f| f.as_os_str() == "-").count();
    if from_stdin > 1 {
        bail!("`-` (standard input) is given {from_stdin} times: it holds one image; give it once");
    }
    let manifest = check_model_dir(&model_dir)?;
    dispatch(backend, PredictJob { dir: &model_dir, manifest, files: &args.files, json: args.json })
}

struct PredictJob<'a> {
    dir: &'a Path,
    /// `model.json` as `check_model_dir` read it.
    manifest: Manifest,
    files: &'a [PathBuf],
    json: bool,
}

impl Job for PredictJob<'_> {
    type Output = Status;
    fn run<B: AutodiffBackend>(self, device: &B::Device, _: BackendKind) -> Result<Status> {
        let classes = class_names(&self.manifest);
        let classifier = Classifier::<B::InnerBackend>::load_with(self.dir, self.manifest, device)?;
        let mut failed = 0;
        for file in self.files {
            match predict_one(&classifier, file) {
                Ok(p) if self.json => say!(
                    "{}",
                    serde_json::json!({
                        "file": file.to_string_lossy(),
                        "class": p.digit,
                        "label": classes[p.digit],
                        "probability": p.confidence(),
                        "probabilities": p.probabilities,
                    })
                ),
                Ok(p) => say!("{}: {} (probability {:.4})", file.display(), classes[p.digit], p.confidence()),
                Err(e) => {
                    note!("error: {e}");
                    if self.json {
                        // One line per file, failures too, so a reader can match them up.
                        say!("{}", serde_json::json!({ "file": file.to_string_lossy(), "error": e.to_string() }));
                    }
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

/// The most recently modified run in `root` that holds `marker`.
pub(crate) fn newest_run(root: &Path, marker: &str) -> Result<PathBuf> {
    newest_run_where(root, marker, |_| true)?.ok_or_else(|| {
        hinted(
            format!("no run in {} holds {marker}", root.display()),
            format!("train one with `{} train`, or name the run (--model; for train --resume, --out)", crate::train::program()),
        )
    })
}

/// The most recently logged unfinished run in `root` (what `train --resume` goes on
/// with): a checkpoint with steps left or a final file missing (a full disk, a file
/// deleted), which the resume writes; or a run stopped before its first checkpoint, which
/// the resume starts again.
pub(crate) fn newest_unfinished_run(root: &Path) -> Result<PathBuf> {
    newest_run_where(root, artifact::METRICS, mnist_train::resumable)?.with_context(|| {
        format!(
            "no run in {} is unfinished (a {} without all of its model files, plot and report, or a run stopped before its first checkpoint); name the run to resume with --out",
            root.display(),
            artifact::CHECKPOINT
        )
    })
}

/// The most recently modified run in `root` that holds `marker` and passes `keep`;
/// `None` when there is none, an error when `root` cannot be read.
fn newest_run_where(root: &Path, marker: &str, keep: impl Fn(&Path) -> bool) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(root).map_err(|e| {
        hinted(
            format!(
                "no runs found: cannot read {} (in the current directory, {}): {e}",
                root.display(),
                std::env::current_dir().map_or_else(|_| "unknown".into(), |d| d.display().to_string()),
            ),
            format!("train one with `{} train`, or name the run (--model; for train --resume, --out)", crate::train::program()),
        )
    })?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter(|e| keep(&e.path()))
        .filter_map(|e| {
            let path = e.path().join(marker);
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            Some((modified, e.path()))
        })
        .max()
        .map(|(_, dir)| dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `eval`'s batch: `--batch`, else the run's `eval_batch_size`, else 500, also when the
    /// run's config.json cannot be read.
    #[test]
    fn eval_evaluates_in_the_runs_batch() {
        let dir = tempfile::tempdir().unwrap();
        let of = |given| {
            let batch = EvalBatch::of(given, dir.path());
            (batch.size, batch.described())
        };
        assert_eq!(of(None), (500, "--batch 500 (the default)".to_string()));
        assert_eq!(of(Some(7)), (7, "--batch 7".to_string()));
        let config = dir.path().join(artifact::TRAIN_CONFIG);
        artifact::json::write(&config, &mnist_train::TrainConfig::new().with_eval_batch_size(1234)).unwrap();
        assert_eq!(of(None), (1234, "eval_batch_size 1234 (the run's config.json)".to_string()));
        assert_eq!(of(Some(7)).0, 7);
        std::fs::write(&config, "{ damaged").unwrap();
        assert_eq!(of(None).0, 500);
    }
}
