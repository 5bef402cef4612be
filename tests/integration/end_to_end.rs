//! The user's job end to end through the `mnist` command: train on the bundled sample,
//! save, evaluate from disk, predict a PNG; and the command's answers to bad input.

use std::path::{Path, PathBuf};

use mnist_cli::{Cli, Status, run};

pub(crate) fn mnist(args: &[&str]) -> anyhow::Result<Status> {
    let cli = Cli::try_parse_checked_from(std::iter::once("mnist").chain(args.iter().copied()))?;
    run(cli)
}

/// A small network and a few hundred steps, so the whole job takes seconds on 2 cores.
pub(crate) const TINY: &str = r#"{
  "model": { "conv1_channels": 8, "conv2_channels": 16, "hidden": 128 },
  "learning_rate": 0.001,
  "batch_size": 32,
  "steps": 300,
  "log_every": 100,
  "checkpoint_every": 100,
  "seed": 3
}"#;

fn write_png(pixels: &[u8; 784], path: &Path, invert: bool) {
    let img = image::GrayImage::from_fn(28, 28, |x, y| {
        let v = pixels[(y * 28 + x) as usize];
        image::Luma([if invert { 255 - v } else { v }])
    });
    // Scale up, as a user's own image would be.
    image::imageops::resize(&img, 112, 112, image::imageops::FilterType::Triangle)
        .save(path)
        .unwrap();
}

#[test]
fn train_evaluate_and_predict_on_the_bundled_sample() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.json");
    std::fs::write(&config, TINY).unwrap();
    let run_dir = dir.path().join("run");
    let (c, r) = (config.to_str().unwrap(), run_dir.to_str().unwrap());

    let status = mnist(&["train", "--backend", "flex", "--config", c, "--dataset", "sample", "--out", r, "--plain"]).unwrap();
    assert_eq!(status, Status::Success);
    for f in ["config.json", "model.json", "model.mpk", "model.safetensors", "metrics.jsonl", "plot.png", "report.json", "checkpoint.bin"] {
        assert!(run_dir.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["dataset"], "sample");
    assert_eq!(report["backend"], "flex");
    let trained = report["test"]["accuracy"].as_f64().unwrap();
    assert!(trained > 0.8, "accuracy {trained}");

    // Evaluate from disk, on the other CPU backend.
    let eval_json = dir.path().join("eval.json");
    let status = mnist(&["eval", "--model", r, "--backend", "ndarray", "--json", eval_json.to_str().unwrap()]).unwrap();
    assert_eq!(status, Status::Success);
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&eval_json).unwrap()).unwrap();
    let accuracy = eval["accuracy"].as_f64().unwrap();
    assert!((accuracy - trained).abs() < 1e-3, "eval {accuracy} vs training report {trained}");
    assert_eq!(eval["images"], 2_000);
    assert_eq!(eval["confusion"].as_array().unwrap().len(), 10);
    // One of the run's files given for its folder, and a report into a folder that is not
    // there: said before anything is evaluated, naming the folder, not a temporary file.
    let model_json = run_dir.join("model.json");
    let e = mnist(&["eval", "--model", model_json.to_str().unwrap()]).unwrap_err();
    assert!(format!("{e:#}").contains("a file, not a directory"), "{e:#}");
    assert_eq!(mnist_cli::hint(&e), Some(format!("pass its folder: --model {r}")));
    // The folder of runs for a run: the newest named; a folder of something else: said so.
    let e = mnist(&["eval", "--model", dir.path().to_str().unwrap()]).unwrap_err();
    assert!(format!("{e:#}").contains("holds no model.json"), "{e:#}");
    assert_eq!(mnist_cli::hint(&e), Some(format!("pass one, e.g. the newest: --model {r}")));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = format!("{:#}", mnist(&["predict", "--model", empty.to_str().unwrap(), "x.png"]).unwrap_err());
    assert!(err.contains("holds no model.json: expected a trained model's artifact directory") && !err.contains("os error"), "{err}");
    let nowhere = dir.path().join("nowhere").join("eval.json");
    let err = format!("{:#}", mnist(&["eval", "--model", r, "--json", nowhere.to_str().unwrap()]).unwrap_err());
    let missing = dir.path().join("nowhere");
    assert!(err.ends_with(&format!("directory {} does not exist", missing.display())) && !err.contains(".tmp-"), "{err}");
    // A report onto a directory is refused before the evaluation, and the directory stays.
    let err = format!("{:#}", mnist(&["eval", "--model", r, "--json", r]).unwrap_err());
    assert!(err.ends_with(&format!("{r} is a directory; give the path of a regular file")), "{err}");
    assert!(run_dir.join("model.json").is_file());

    // Predict PNGs written from test digits, one of them inverted (dark ink on white).
    let data = mnist_data::Locator::offline(None).load(mnist_data::DatasetKind::Sample).unwrap();
    let classifier = mnist_infer::Classifier::<burn_flex::Flex>::load(&run_dir, &Default::default()).unwrap();
    let mut correct = 0;
    let mut pngs: Vec<PathBuf> = Vec::new();
    for i in 0..20 {
        let png = dir.path().join(format!("digit-{i}.png"));
        write_png(data.test.image(i), &png, i % 2 == 1);
        let p = classifier.predict_file(&png).unwrap();
        assert!((p.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        correct += usize::from(p.digit == usize::from(data.test.label(i)));
        pngs.push(png);
    }
    assert!(correct >= 14, "{correct}/20 PNG digits recognised");
    let files: Vec<&str> = pngs.iter().take(3).map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["predict", "--model", r];
    args.extend(&files);
    assert_eq!(mnist(&args).unwrap(), Status::Success);

    // An image that is not an image among good ones: reported, the others still done.
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not a picture").unwrap();
    let status = mnist(&["predict", "--model", r, files[0], text.to_str().unwrap()]).unwrap();
    assert_eq!(status, Status::PartialFailure);
    let err = mnist(&["predict", "--model", r, text.to_str().unwrap()]).unwrap_err();
    assert!(format!("{err:#}").contains("no image could be classified"), "{err:#}");

    // Resume with more steps continues the run.
    let status = mnist(&["train", "--resume", "--out", r, "--steps", "320", "--plain"]).unwrap();
    assert_eq!(status, Status::Success);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["steps"], 320);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["steps"], 320, "config.json follows the resumed run");
}

#[test]
fn bad_input_gets_clear_errors_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let s = |path: &PathBuf| path.to_str().unwrap().to_string();

    let err_of = |args: &[&str]| format!("{:#}", mnist(args).unwrap_err());

    // Unknown config field, out-of-range values.
    for (json, needle) in [
        (r#"{"stpes": 10}"#, "unknown field `stpes`"),
        (r#"{"batch_size": 0}"#, "batch_size must be at least 1"),
        (r#"{"learning_rate": -0.1}"#, "learning_rate must be a positive number"),
        (r#"{"steps": 0}"#, "steps must be at least 1"),
        (r#"{"model": {"dropout": 2}}"#, "dropout must be in [0, 1)"),
        (r#"{"batch_size": "fifty"}"#, "field `batch_size`: expected a whole number, 1 or more, got the string \"fifty\""),
        (r#"{"adam": {"beta_1": true}}"#, "field `adam.beta_1`: expected a number, got true"),
        (r#"{"adam": 0.9}"#, "field `adam`: expected an object of fields (beta_1, beta_2, epsilon), got 0.9"),
        (r#"[{"steps": 10}]"#, "expected a JSON object of fields ("),
        (r#"{"steps": 10, "steps": 20}"#, "the key `steps` appears twice"),
        (r#"{"model": {"kernel_size": 30}}"#, "model.kernel_size must be an odd number from 1 to 28, got 30"),
        ("{ not json", "not valid JSON"),
    ] {
        std::fs::write(p("bad.json"), json).unwrap();
        let out = p("never");
        let err = err_of(&["train", "--config", &s(&p("bad.json")), "--dataset", "sample", "--out", &s(&out)]);
        assert!(err.contains(needle) && err.contains("bad.json"), "{json}: {err}");
        assert!(!out.exists(), "{json}: output directory created");
    }
    for steps in ["0", "-5", "ten"] {
        let err = err_of(&["train", "--dataset", "sample", "--steps", steps, "--out", &s(&p("never"))]);
        assert!(err.contains("--steps") && err.contains("must be a positive integer"), "{steps}: {err}");
    }

    // An output directory that cannot be created: inside a file, which is named (before
    // the dataset is loaded).
    std::fs::write(p("file"), "x").unwrap();
    let err = err_of(&["train", "--dataset", "sample", "--steps", "1", "--out", &s(&p("file").join("run"))]);
    assert!(err.contains(&format!("{} is a file, not a directory", p("file").display())), "{err}");

    // Unknown dataset. (A backend not compiled in: mnist-cli's unit tests; this binary has
    // all three.)
    let err = err_of(&["train", "--dataset", "cifar", "--out", &s(&p("never"))]);
    assert!(err.contains("unknown dataset \"cifar\""), "{err}");

    // Missing and corrupt artifacts.
    let err = err_of(&["eval", "--model", &s(&p("absent")), "--dataset", "sample"]);
    assert!(err.contains("absent"), "{err}");
    std::fs::create_dir_all(p("corrupt")).unwrap();
    std::fs::write(p("corrupt").join("model.json"), "{}").unwrap();
    std::fs::write(p("corrupt").join("model.mpk"), "garbage").unwrap();
    let err = err_of(&["eval", "--model", &s(&p("corrupt")), "--dataset", "sample"]);
    assert!(err.contains("model.mpk") && err.contains("not a valid Burn record"), "{err}");
    let err = err_of(&["predict", "--model", &s(&p("corrupt")), &s(&p("file"))]);
    assert!(err.contains("model.mpk"), "{err}");
    std::fs::write(p("corrupt").join("model.json"), r#"{"hidden": 12, "colour": 1}"#).unwrap();
    let err = err_of(&["predict", "--model", &s(&p("corrupt")), &s(&p("file"))]);
    assert!(err.contains("unknown field `colour`"), "{err}");
}
