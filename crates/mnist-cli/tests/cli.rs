//! The `mnist` binary as a process: exit statuses, signals, closed pipes, and a sweep of
//! bad inputs none of which may end in a panic (exit status 101). These need the real
//! executable (`CARGO_BIN_EXE_mnist`), which cargo builds only for this package's own
//! integration tests; everything else is tested in the workspace's `tests/` binary.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use burn_flex::Flex;
use mnist_model::CnnConfig;
use mnist_model::artifact::{self, Manifest};

fn mnist() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mnist"));
    cmd.env_remove("MNIST_RS_COMMAND").env("MNIST_DATA_DIR", "").stdin(Stdio::null());
    cmd
}

fn cases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cases")
}

/// A small network and short steps, so a run takes seconds.
fn tiny(steps: u64, log_every: u64) -> String {
    format!(
        r#"{{"dataset": "sample", "model": {{"conv1_channels": 4, "conv2_channels": 8, "hidden": 32}}, "batch_size": 16, "steps": {steps}, "log_every": {log_every}, "checkpoint_every": 0, "learning_rate": 0.001}}"#
    )
}

/// An untrained seed network saved as an artifact directory, for predict and eval.
fn model_dir(root: &Path) -> PathBuf {
    let dir = root.join("model");
    let config = CnnConfig::new();
    artifact::save_dir(&config.init::<Flex>(1, &Default::default()).unwrap(), &Manifest::from_config(config.clone()), &dir).unwrap();
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the process ended by itself, without a panic, and returns its stderr.
fn no_panic(what: &str, out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{what}: exit 101\n{stderr}");
    assert!(out.status.code().is_some(), "{what}: killed by a signal\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what}: panic\n{stderr}");
    stderr
}

#[test]
fn no_bad_input_ends_in_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = model_dir(root);
    let write = |name: &str, bytes: &[u8]| {
        let path = root.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let m = model.to_str().unwrap().to_string();

    // Damaged artifact directories: flipped and truncated weights, NaN weights, a bad
    // manifest.
    let damaged = |name: &str, edit: &dyn Fn(&Path)| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["model.json", "model.mpk", "model.safetensors"] {
            std::fs::copy(model.join(f), dir.join(f)).unwrap();
        }
        edit(&dir);
        dir.to_str().unwrap().to_string()
    };
    let flipped = damaged("flipped", &|d| {
        let mut b = std::fs::read(d.join("model.mpk")).unwrap();
        let n = b.len();
        for i in 0..64 {
            b[n / 2 + i * 101] ^= 0xa5;
        }
        std::fs::write(d.join("model.mpk"), b).unwrap();
    });
    let truncated = damaged("truncated", &|d| {
        let b = std::fs::read(d.join("model.mpk")).unwrap();
        std::fs::write(d.join("model.mpk"), &b[..b.len() / 3]).unwrap();
    });
    let bad_manifest = damaged("manifest", &|d| std::fs::write(d.join("model.json"), r#"{"classes": 12}"#).unwrap());
    let garbage = damaged("garbage", &|d| {
        std::fs::write(d.join("model.json"), "{}").unwrap();
        std::fs::write(d.join("model.mpk"), "garbage").unwrap();
    });

    let html = write("index.html.gz", b"<!DOCTYPE html><html><body>Not Found</body></html>");
    let data_dir = root.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    for f in ["train-images.idx3-ubyte", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"] {
        std::fs::copy(&html, data_dir.join(f)).unwrap();
    }
    let d = data_dir.to_str().unwrap().to_string();
    let empty = write("empty.png", b"");
    let text_file = write("notes.png", b"a shopping list");
    let mut huge = Vec::new();
    image::GrayImage::from_pixel(1, 1, image::Luma([0])).write_to(&mut std::io::Cursor::new(&mut huge), image::ImageFormat::Png).unwrap();
    huge[16..24].copy_from_slice(&[0, 0, 0x4e, 0x20, 0, 0, 0x4e, 0x20]);
    let huge = write("huge.png", &huge);
    let flat = root.join("flat.png");
    image::GrayImage::from_pixel(64, 64, image::Luma([128])).save(&flat).unwrap();
    let flat = flat.to_str().unwrap().to_string();
    let bad_json = write("bad.json", b"{ not json");
    let unknown_field = write("unknown.json", br#"{"stpes": 10}"#);
    let nan_lr = write("nan.json", br#"{"learning_rate": "NaN"}"#);
    let no_checkpoint = root.join("no-checkpoint");
    std::fs::create_dir_all(&no_checkpoint).unwrap();
    let bad_checkpoint = root.join("bad-checkpoint");
    std::fs::create_dir_all(&bad_checkpoint).unwrap();
    std::fs::write(bad_checkpoint.join("checkpoint.bin"), b"MNISTRS-CKPT-v2\n\x01\x02").unwrap();
    let case = |p: &str| cases().join(p).to_str().unwrap().to_string();
    let out = |name: &str| root.join("runs").join(name).to_str().unwrap().to_string();

    // A port another program holds, for `serve --addr`.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let mut runs: Vec<Vec<String>> = vec![
        vec!["train".into(), "--steps".into(), "-5".into()],
        vec!["train".into(), "--steps".into(), "0".into()],
        vec!["train".into(), "--seed".into(), "-1".into()],
        vec!["train".into(), "--backend".into(), "cuda".into()],
        vec!["train".into(), "--backend".into(), "".into()],
        vec!["train".into(), "--dataset".into(), "cifar".into(), "--out".into(), out("cifar")],
        vec!["train".into(), "--config".into(), "/nonexistent.json".into()],
        // Endless: refused after 16 MiB, not read until the memory runs out.
        vec!["train".into(), "--config".into(), "/dev/zero".into()],
        vec!["train".into(), "--config".into(), bad_json.clone(), "--out".into(), out("json")],
        vec!["train".into(), "--config".into(), unknown_field, "--out".into(), out("unknown")],
        vec!["train".into(), "--config".into(), nan_lr, "--out".into(), out("nan")],
        vec!["train".into(), "--dataset".into(), "mnist".into(), "--data-dir".into(), d.clone(), "--out".into(), out("html")],
        vec!["train".into(), "--dataset".into(), "mnist".into(), "--data-dir".into(), "/nonexistent".into(), "--out".into(), out("nodir")],
        vec!["train".into(), "--resume".into(), "--out".into(), no_checkpoint.to_str().unwrap().into()],
        vec!["train".into(), "--resume".into(), "--out".into(), bad_checkpoint.to_str().unwrap().into()],
        vec!["train".into(), "--resume".into(), "--out".into(), "/nonexistent".into()],
        vec!["eval".into(), "--model".into(), "/nonexistent".into()],
        vec!["eval".into(), "--model".into(), m.clone(), "--dataset".into(), "mnist".into(), "--data-dir".into(), d],
        vec!["bench".into(), "train".into(), "--batch".into(), "0".into()],
        vec!["bench".into(), "latency".into(), "--repeats".into(), "0".into()],
        vec!["predict".into()],
        vec!["predict".into(), "--model".into(), "/nonexistent".into(), flat.clone()],
        vec!["predict".into(), "--model".into(), m.clone(), "/nonexistent.png".into(), empty, text_file, huge, flat, html],
        // `serve` must refuse each of these before it would start serving (and block).
        vec!["serve".into(), "--model".into(), "/nonexistent".into()],
        vec!["serve".into(), "--model".into(), m.clone(), "--addr".into(), "nonsense".into()],
        vec!["serve".into(), "--model".into(), m.clone(), "--addr".into(), taken.clone()],
        vec!["serve".into(), "--model".into(), m.clone(), "--max-batch".into(), "0".into()],
        vec!["serve".into(), "--model".into(), m.clone(), "--batch-wait-us".into(), "-3".into()],
        vec!["bench".into(), "serve".into(), "--concurrency".into(), "0".into()],
    ];
    for config in ["classes5.json", "classes12_init.json", "huge_lr_rarelog.json"] {
        runs.push(vec!["train".into(), "--config".into(), case(&format!("configs/{config}")), "--out".into(), out(config), "--plain".into()]);
    }
    for dir in [flipped, truncated, bad_manifest, garbage] {
        runs.push(vec!["eval".into(), "--model".into(), dir.clone(), "--dataset".into(), "sample".into()]);
        runs.push(vec!["predict".into(), "--model".into(), dir.clone(), case("images/repro_seven_bg128.png")]);
        runs.push(vec!["serve".into(), "--model".into(), dir, "--addr".into(), "127.0.0.1:0".into()]);
    }
    let images: Vec<String> = std::fs::read_dir(cases().join("images")).unwrap().map(|e| e.unwrap().path().to_str().unwrap().to_string()).collect();
    runs.push([vec!["predict".to_string(), "--model".into(), m.clone(), "--json".into()], images].concat());

    for args in &runs {
        let what = format!("mnist {}", args.join(" "));
        let output = mnist().args(args).output().unwrap();
        let stderr = no_panic(&what, &output);
        let status = output.status.code().unwrap();
        if args[0] == "predict" && args.len() > 4 && args.iter().any(|a| a.ends_with("repro_seven_bg128.png")) && status == 0 {
            continue; // the sweep of good and bad images: some are digits
        }
        assert_ne!(status, 0, "{what}: succeeded\n{stderr}");
        assert!(stderr.contains("error"), "{what}: no error line\n{stderr}");
        assert!(!stderr.contains("stack backtrace"), "{what}: backtrace\n{stderr}");
    }
}

#[test]
fn machine_readable_output_stays_machine_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let m = model.to_str().unwrap();
    // predict --json: one JSON object per file given, its failures too, in order.
    let seven = cases().join("images/repro_seven_bg128.png");
    let text_file = tmp.path().join("notes.png");
    std::fs::write(&text_file, "a shopping list").unwrap();
    let files = [seven.to_str().unwrap(), text_file.to_str().unwrap(), "/nonexistent.png"];
    let output = mnist().args(["predict", "--json", "--model", m]).args(files).output().unwrap();
    let stderr = no_panic("predict --json", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<serde_json::Value> = text(&output.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, file) in lines.iter().zip(files) {
        assert_eq!(line["file"], file, "{line}");
    }
    assert!(lines[0]["class"].is_u64() && lines[0].get("error").is_none(), "{}", lines[0]);
    // The keys of the HTTP API's answer, plus the winner's probability.
    assert_eq!(lines[0]["label"], lines[0]["class"].to_string(), "{}", lines[0]);
    assert!(lines[0]["probability"].is_f64() && lines[0]["probabilities"].as_array().is_some_and(|p| p.len() == 10), "{}", lines[0]);
    assert!(lines[1]["error"].as_str().unwrap().contains("notes.png") && lines[1].get("class").is_none(), "{}", lines[1]);
    assert!(lines[2]["error"].is_string(), "{}", lines[2]);
    // A file name that is not UTF-8 is written with U+FFFD for what is not, and the next
    // files are still classified (it had panicked).
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = tmp.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        std::fs::create_dir(&odd).unwrap();
        std::fs::copy(&seven, odd.join("d.png")).unwrap();
        let output = mnist().args(["predict", "--json", "--model", m]).arg(odd.join("d.png")).arg(odd.join("missing.png")).arg(&seven).output().unwrap();
        let stderr = no_panic("predict --json of a file name that is not UTF-8", &output);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        let lines: Vec<serde_json::Value> = text(&output.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0]["file"].as_str().unwrap().ends_with("caf\u{fffd}/d.png") && lines[0]["class"].is_u64(), "{}", lines[0]);
        assert!(lines[1]["error"].is_string() && lines[2]["class"].is_u64(), "{lines:?}");
        let odd_model = odd.join("model");
        std::fs::create_dir(&odd_model).unwrap();
        for f in ["model.json", "model.mpk", "model.safetensors"] {
            std::fs::copy(model.join(f), odd_model.join(f)).unwrap();
        }
        let output = mnist().args(["eval", "--dataset", "sample", "--model"]).arg(&odd_model).output().unwrap();
        let stderr = no_panic("eval of a model in a folder whose name is not UTF-8", &output);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(odd_model.join("eval.json")).unwrap()).unwrap();
        assert!(eval["model"].as_str().unwrap().ends_with("caf\u{fffd}/model"), "{eval}");
    }
    // A report path holding the user's own file (notes, a config) is refused, and the file
    // kept (it was replaced); an earlier report is replaced.
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "my notes").unwrap();
    let output = mnist().args(["eval", "--dataset", "sample", "--model", m, "--json"]).arg(&notes).output().unwrap();
    let stderr = no_panic("eval --json onto the user's notes", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exists and is not an evaluation report") && stderr.contains("\nhint: choose another path with --json"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes");
    let report = tmp.path().join("report.json");
    for _ in 0..2 {
        let output = mnist().args(["eval", "--dataset", "sample", "--model", m, "--json"]).arg(&report).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    }
    // A model evaluated on another dataset than its own keeps its own evaluation: the
    // report goes to eval-DATASET.json (eval.json had been replaced).
    let digits = tmp.path().join("digits");
    std::fs::create_dir(&digits).unwrap();
    for f in ["model.json", "model.mpk", "model.safetensors"] {
        std::fs::copy(model.join(f), digits.join(f)).unwrap();
    }
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(digits.join("model.json")).unwrap()).unwrap();
    manifest["dataset"] = "mnist".into();
    std::fs::write(digits.join("model.json"), manifest.to_string()).unwrap();
    std::fs::write(digits.join("eval.json"), "its own evaluation").unwrap();
    let output = mnist().args(["eval", "--dataset", "sample", "--model"]).arg(&digits).output().unwrap();
    let stderr = no_panic("eval on another dataset", &output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(text(&output.stdout).contains(&format!("wrote {}", digits.join("eval-sample.json").display())), "{}", text(&output.stdout));
    assert_eq!(std::fs::read_to_string(digits.join("eval.json")).unwrap(), "its own evaluation");
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(digits.join("eval-sample.json")).unwrap()).unwrap();
    assert_eq!(eval["dataset"], "sample");
    // Which weights were evaluated: a later model in the folder is told apart.
    assert_eq!(eval["model_sha256"], manifest["sha256"]["model.mpk"], "{eval}");
    assert_eq!(eval["model_sha256"].as_str().map(str::len), Some(64), "{eval}");
    // Output that cannot be written (a full disk) is an error, unlike a reader gone away.
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let output = mnist().args(["predict", "--json", "--model", m, files[0]]).stdout(full).output().unwrap();
        let stderr = no_panic("predict > /dev/full", &output);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("error: cannot write standard output: No space left on device"), "{stderr}");
        // The help and the version likewise (clap's own printing ignored the failure).
        for args in [&["train", "--help"][..], &["--version"], &["help", "eval"]] {
            let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
            let output = mnist().args(args).stdout(full).output().unwrap();
            let stderr = no_panic("--help > /dev/full", &output);
            assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains("error: cannot write standard output: No space left on device"), "{args:?}: {stderr}");
        }
        let output = mnist().args(["train", "--help"]).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        assert!(text(&output.stdout).contains("--resume"));
    }
    // eval --json -: the evaluation on standard output, nothing else there; no file `-`.
    let output = mnist().current_dir(tmp.path()).args(["eval", "--model", m, "--dataset", "sample", "--json", "-"]).output().unwrap();
    let stderr = no_panic("eval --json -", &output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let eval: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(eval["images"], 2_000);
    assert_eq!((eval["model"].as_str(), eval["dataset"].as_str()), (Some(m), Some("sample")), "which model on which data");
    assert!(stderr.contains("accuracy"), "{stderr}");
    assert!(!tmp.path().join("-").exists() && !model.join("eval.json").exists());
    // Evaluation needs the test split only: a folder without the training files does.
    let data = tmp.path().join("test-only");
    std::fs::create_dir(&data).unwrap();
    let labels: Vec<u8> = (0..10_000).map(|i| (i % 10) as u8).collect();
    std::fs::write(data.join("t10k-images-idx3-ubyte"), mnist_data::idx::encode_images(&vec![0; 10_000 * 784])).unwrap();
    std::fs::write(data.join("t10k-labels-idx1-ubyte"), mnist_data::idx::encode_labels(&labels)).unwrap();
    let d = data.to_str().unwrap();
    let output = mnist().args(["eval", "--model", m, "--dataset", "fashion", "--data-dir", d, "--json", "-"]).output().unwrap();
    let stderr = no_panic("eval on a test split alone", &output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let eval: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(eval["images"], 10_000);
    // ... and training still asks for all four, naming the first one missing.
    let output = mnist().args(["train", "--dataset", "fashion", "--data-dir", d, "--out", tmp.path().join("never").to_str().unwrap()]).output().unwrap();
    let stderr = no_panic("train on a test split alone", &output);
    assert!(stderr.contains("missing train-images-idx3-ubyte") && stderr.contains("the four fashion IDX files"), "{stderr}");
    // A misspelt dataset is a usage error, like any bad argument.
    let output = mnist().args(["eval", "--model", m, "--dataset", "cifar"]).output().unwrap();
    let stderr = no_panic("eval --dataset cifar", &output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown dataset \"cifar\"; expected mnist, fashion or sample"), "{stderr}");
    // --json naming a file of the run (its manifest) is refused, before the evaluation,
    // and the file is left as it was.
    let manifest = std::fs::read(model.join("model.json")).unwrap();
    let target = model.join("model.json");
    let output = mnist().args(["eval", "--model", m, "--dataset", "sample", "--json", target.to_str().unwrap()]).output().unwrap();
    let stderr = no_panic("eval --json MODEL/model.json", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("would replace a file of the run in") && stderr.contains("eval.json"), "{stderr}");
    assert_eq!(std::fs::read(model.join("model.json")).unwrap(), manifest);
    // A dataset model.json records that eval cannot load: the file is named.
    let bogus = tmp.path().join("bogus");
    std::fs::create_dir(&bogus).unwrap();
    for f in ["model.mpk", "model.safetensors"] {
        std::fs::copy(model.join(f), bogus.join(f)).unwrap();
    }
    let mut json: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    json["dataset"] = "bogus".into();
    std::fs::write(bogus.join("model.json"), json.to_string()).unwrap();
    let output = mnist().args(["eval", "--model", bogus.to_str().unwrap()]).output().unwrap();
    let stderr = no_panic("eval of a model trained on an unknown dataset", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("bogus/model.json records the dataset \"bogus\"") && stderr.contains("--dataset"), "{stderr}");
    // --json into another run's folder is refused, an earlier report there kept as it was
    // (it is that run's model's); into the model's own folder, any name is fine.
    let theirs = bogus.join("eval.json");
    std::fs::write(&theirs, r#"{"model": "bogus", "accuracy": 0.5, "confusion": []}"#).unwrap();
    for target in [theirs.clone(), bogus.join("eval-other.json")] {
        let output = mnist().args(["eval", "--model", m, "--dataset", "sample", "--json", target.to_str().unwrap()]).output().unwrap();
        let stderr = no_panic("eval --json OTHER_RUN/eval.json", &output);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("is in the folder of another run") && stderr.contains("eval.json"), "{stderr}");
    }
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), r#"{"model": "bogus", "accuracy": 0.5, "confusion": []}"#);
    assert!(!bogus.join("eval-other.json").exists());
    let mine = model.join("eval-copy.json");
    let output = mnist().args(["eval", "--model", m, "--dataset", "sample", "--json", mine.to_str().unwrap()]).output().unwrap();
    let stderr = no_panic("eval --json MODEL/eval-copy.json", &output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(mine.is_file());
    std::fs::remove_file(&mine).unwrap();
    // A finished run is refused as --out before any dataset is looked for (this one is
    // not there to be found).
    let output = mnist().args(["train", "--out", m, "--dataset", "mnist", "--data-dir", "/nonexistent"]).output().unwrap();
    let stderr = no_panic("train --out a finished run", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let (error, hint) = stderr.split_once("\nhint: ").unwrap_or((&stderr, ""));
    // A model with no checkpoint (saved by other means than training) cannot be resumed.
    assert!(error.contains("already holds a finished run's files (a model or a report) and no checkpoint to resume from; train into another directory") && !error.contains("nonexistent"), "{stderr}");
    // Below the library's message, the flag that does it.
    assert_eq!(hint.trim_end(), "choose another --out", "{stderr}");
}

#[test]
fn a_closed_stdout_ends_predict_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_dir(tmp.path());
    let image = cases().join("images/repro_seven_bg128.png");
    // More output than a pipe buffers (64 KiB), so writes fail after the reader goes.
    let files = vec![image.to_str().unwrap().to_string(); 600];
    let mut child = mnist()
        .args(["predict", "--json", "--model", model.to_str().unwrap()])
        .args(&files)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap(); // `| head -1`
    let output = child.wait_with_output().unwrap();
    let stderr = no_panic("predict | head -1", &output);
    assert!(first.contains("\"class\""), "{first}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn a_closed_stdout_stops_training_with_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tiny.json");
    std::fs::write(&config, tiny(100_000, 1)).unwrap();
    let out = tmp.path().join("run");
    let mut child = mnist()
        .args(["train", "--plain", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap(); // `| head -2`
    lines.read_line(&mut first).unwrap();
    drop(lines);
    let output = child.wait_with_output().unwrap();
    let stderr = no_panic("train | head -2", &output);
    assert_eq!(output.status.code(), Some(141), "{stderr}");
    assert!(stderr.contains("standard output was closed") && stderr.contains("checkpoint saved"), "{stderr}");
    assert!(stderr.contains(&format!("mnist train --resume --out {}", out.display())), "{stderr}");
    assert!(out.join("checkpoint.bin").is_file());
    // A standard output that fails (a full disk) is no reader gone away: an error, exit 1,
    // the checkpoint saved all the same.
    if let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
        let out = tmp.path().join("full");
        let output = mnist().args(["train", "--plain", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()]).stdout(full).output().unwrap();
        let stderr = no_panic("train > /dev/full", &output);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("error: cannot write standard output: No space left on device") && stderr.contains("checkpoint saved"), "{stderr}");
        assert!(stderr.contains(&format!("mnist train --resume --out {}", out.display())) && !stderr.contains("was closed"), "{stderr}");
        assert!(out.join("checkpoint.bin").is_file());
    }
}

/// Runs `mnist train --plain` on the config `json` into `out` (through `cmd`), waits for
/// the progress line of step `step`, runs `kill` (the shell's own: no procps needed) with
/// `signals` (`-TERM`; `%` stands for the process id), and returns what the run wrote.
fn signalled(mut cmd: Command, json: &str, out: &Path, step: u64, signals: &str) -> Output {
    let config = out.with_extension("json");
    std::fs::write(&config, json).unwrap();
    let mut child = cmd
        .args(["train", "--plain", "--backend", "flex", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let start = Instant::now();
    let mut line = String::new();
    while !line.starts_with(&format!("step {step},")) {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "training ended early");
        assert!(start.elapsed() < Duration::from_secs(120), "no progress line");
    }
    let killed = Command::new("sh").args(["-c", &signals.replace('%', &child.id().to_string())]).status().unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    child.wait_with_output().unwrap()
}

/// A signal after the last step: the run finishes (its evaluation and model files), and
/// the exit status says the signal came (it was 0, so `mnist train && next` went on).
#[test]
#[cfg(unix)]
fn a_signal_after_the_last_step_finishes_the_run_and_exits_as_signalled() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // The seed network evaluated one image at a time: seconds of finishing after the last
    // step's line, for the signal to arrive in.
    let json = r#"{"dataset": "sample", "batch_size": 16, "steps": 3, "log_every": 1, "checkpoint_every": 0, "eval_batch_size": 1}"#;
    let output = signalled(mnist(), json, &out, 2, "kill -TERM %");
    let stderr = no_panic("SIGTERM after the last step", &output);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM after the last step: the run was finished and saved"), "{stderr}");
    assert!(out.join("model.json").is_file() && out.join("report.json").is_file());
}

/// Starts a long tiny run, waits for its progress line of step 10, sends `signal`.
fn signalled_run(signal: &str, root: &Path, command: Option<&str>) -> (Output, PathBuf) {
    let out = root.join(format!("run-{signal}"));
    let mut cmd = mnist();
    if let Some(command) = command {
        cmd.env("MNIST_RS_COMMAND", command);
    }
    (signalled(cmd, &tiny(100_000, 10), &out, 10, &format!("kill -{signal} %")), out)
}

/// What the dataset or the checkpoint refuses is refused before training is announced,
/// and a value out of range for the dataset names its file.
#[test]
fn refusals_come_before_training_is_announced() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.json");
    std::fs::write(&big, r#"{"dataset": "sample", "batch_size": 9000}"#).unwrap();
    let out = tmp.path().join("big");
    let output = mnist().args(["train", "--plain", "--backend", "flex", "--config", big.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
    let stderr = no_panic("batch larger than the split", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}: batch_size must be at most 8000, the training images of sample", big.display())) && stderr.contains("got 9000"), "{stderr}");
    assert!(!text(&output.stdout).contains("training on"), "{}", text(&output.stdout));
    assert!(!out.exists());

    // A run stopped at once, then resumed with another seed.
    let config = tmp.path().join("tiny.json");
    std::fs::write(&config, tiny(20, 10)).unwrap();
    let run = tmp.path().join("run");
    let output = mnist().args(["train", "--plain", "--backend", "flex", "--config", config.to_str().unwrap(), "--out", run.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let further = format!("\nhint: to train it further: {} train --backend flex --resume --out {} --steps 40", env!("CARGO_BIN_EXE_mnist"), run.display());
    // A new run into it: the hint names the resume that trains it further, with the
    // options given (a plain resume would say the run is finished).
    let output = mnist().args(["train", "--plain", "--backend", "flex", "--config", config.to_str().unwrap(), "--out", run.to_str().unwrap()]).output().unwrap();
    let stderr = no_panic("a new run into a finished one", &output);
    assert!(stderr.contains("already holds a finished training run; resume it with more steps to train it further"), "{stderr}");
    let hint = format!("\nhint: to train it further: {} train --backend flex --resume --out {} --steps 40; or choose another --out", env!("CARGO_BIN_EXE_mnist"), run.display());
    assert!(stderr.contains(&hint), "{stderr}");
    for (args, needle) in [
        (vec!["--seed", "9"], "the config differs from the run's in `seed`"),
        (vec![], "the run is already finished (20 steps"),
        (vec![], further.as_str()),
    ] {
        let output = mnist().args(["train", "--plain", "--backend", "flex", "--resume", "--out", run.to_str().unwrap()]).args(&args).output().unwrap();
        let stderr = no_panic("a refused resume", &output);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!text(&output.stdout).contains("training on"), "{args:?}: {}", text(&output.stdout));
    }
}

/// A second signal while a step is in flight quits at once, and says so.
#[test]
#[cfg(unix)]
fn a_second_signal_quits_at_once_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    // The seed network at batch 2,000: a step takes a good part of a second (a few tenths
    // on a fast CPU), long enough for the second signal to come during one.
    let json = r#"{"dataset": "sample", "batch_size": 2000, "steps": 1000, "log_every": 1, "checkpoint_every": 0}"#;
    let output = signalled(mnist(), json, &tmp.path().join("run"), 0, "kill -INT %; sleep 0.05; kill -INT %");
    let stderr = no_panic("two signals", &output);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("stopping: saving a checkpoint after this step"), "{stderr}");
    // No checkpoint was saved before (none is made during the run), and the note says so.
    assert!(!tmp.path().join("run").join("checkpoint.bin").exists());
    assert!(stderr.contains("stopped again: quitting now, without saving (no checkpoint was saved yet, so the run starts again from step 0 with: ") && stderr.contains("mnist train --backend flex --resume --out"), "{stderr}");
    assert!(!stderr.contains("interrupted after"), "{stderr}");
}

#[test]
#[cfg(unix)]
fn sigterm_and_sigint_save_a_checkpoint_and_name_the_command_to_resume() {
    let tmp = tempfile::tempdir().unwrap();
    for (signal, code, command, how) in [("TERM", 143, None, "stopped by SIGTERM after "), ("INT", 130, Some("cargo xtask"), "interrupted after ")] {
        let (output, out) = signalled_run(signal, tmp.path(), command);
        let stderr = no_panic(signal, &output);
        assert_eq!(output.status.code(), Some(code), "SIG{signal}: {stderr}");
        assert!(stderr.contains("checkpoint saved") && stderr.contains(how), "SIG{signal}: {stderr}");
        // Said once, before the checkpoint's note.
        let said = stderr.find("stopping: saving a checkpoint after this step");
        assert!(said.is_some_and(|at| at < stderr.find("checkpoint saved").unwrap()), "SIG{signal}: {stderr}");
        assert_eq!(stderr.matches("stopping: saving").count(), 1, "SIG{signal}: {stderr}");
        let hint = format!("{} train --backend flex --resume --out {}", command.unwrap_or("mnist"), out.display());
        assert!(stderr.contains(&hint), "SIG{signal}: expected `{hint}` in\n{stderr}");
        let state: serde_json::Value = {
            let bytes = std::fs::read(out.join("checkpoint.bin")).unwrap();
            assert!(bytes.len() > 100);
            let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
            serde_json::from_str(log.lines().last().unwrap()).unwrap()
        };
        assert!(state["step"].as_u64().unwrap() >= 10);
    }
    // The hint works: resume to a few steps further and finish.
    let out = tmp.path().join("run-TERM");
    let output = mnist().args(["train", "--resume", "--out", out.to_str().unwrap(), "--steps", "40"]).output().unwrap();
    let stderr = no_panic("resume", &output);
    assert!(output.status.success() || text(&output.stderr).contains("beyond the 40 steps"), "{stderr}");
}

#[test]
fn numbers_on_the_command_line_say_what_they_must_be() {
    for (args, needle) in [
        (vec!["train", "--steps", "-5"], "must be a positive integer (1 or more), got -5"),
        (vec!["train", "--steps", "ten"], "must be a positive integer (1 or more), got \"ten\""),
        (vec!["train", "--seed", "-1"], "must be a non-negative integer"),
        (vec!["bench", "train", "--batch", "0"], "must be a positive integer"),
        (vec!["train", "--steps", "18446744073709551616"], "18446744073709551616 is too large: the most is 18446744073709551615"),
        (vec!["train", "--seed", "123456789012345678901234567890123456789012"], "is too large: the most is 18446744073709551615"),
        // Not numbers, but command-line mistakes of the same kind: an address to listen on.
        (vec!["serve", "--addr", "127.0.0.1:99999"], "\"127.0.0.1:99999\" is not an address to listen on"),
        (vec!["serve", "--addr", "foo"], "no port; expected IP:PORT or HOST:PORT"),
        (vec!["eval", "--batch", "60001"], "60001 is too large: the most is 60000 images"),
        // Past the type's range too, the flag's own most is named.
        (vec!["eval", "--batch", "99999999999999999999"], "99999999999999999999 is too large: the most is 60000 images"),
        (vec!["serve", "--batch-wait-us", "+99999999999999999999999"], "is too large: the most is 1000000 microseconds"),
        // An option the measurement would ignore (checked by main's parse, not clap's own).
        (vec!["bench", "latency", "--concurrency", "8"], "--concurrency applies to `bench serve` only"),
        (vec!["bench", "latency", "--batch", "50"], "`bench latency` classifies one image at a time: --batch 50 does not apply"),
    ] {
        let output = mnist().args(&args).output().unwrap();
        let stderr = no_panic(&args.join(" "), &output);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// A file that cannot be read, or is a directory, is named with what it was meant to be;
/// a JSON value serde_json cannot hold (`1e400`) is shown in its line, which names the
/// field; `eval --batch` evaluates in the batch given, the run's `eval_batch_size` by default.
#[test]
fn files_and_values_are_named_with_what_was_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let r = root.to_str().unwrap();
    let config = root.join("lr.json");
    std::fs::write(&config, "{\n  \"dataset\": \"sample\",\n  \"learning_rate\": 1e400\n}\n").unwrap();
    let model = model_dir(root);
    let image = root.join("digit.png");
    std::fs::create_dir(&image).unwrap();
    for (args, needle) in [
        (vec!["train", "--config", r], format!("cannot read the training config (--config) {r}: a directory, not a file")),
        (vec!["train", "--config", "/nonexistent.json"], "cannot read the training config (--config) /nonexistent.json: No such file".into()),
        (vec!["train", "--config", config.to_str().unwrap()], "number out of range at line 3 column 24 (line 3 reads `\"learning_rate\": 1e400`)".into()),
        (vec!["predict", "--model", model.to_str().unwrap(), image.to_str().unwrap()], format!("cannot read {}: a directory, not a file", image.display())),
        // The config's mistake first, before the folder's (a finished model here).
        (vec!["train", "--config", config.to_str().unwrap(), "--out", model.to_str().unwrap()], "number out of range at line 3".into()),
        (vec!["predict", "--model", model.to_str().unwrap(), "-"], "standard input is empty; expected an image".into()),
        (vec!["predict", "--model", model.to_str().unwrap(), "-", "x.png", "-"], "`-` (standard input) is given 2 times: it holds one image".into()),
    ] {
        let output = mnist().args(&args).output().unwrap();
        let stderr = no_panic(&args.join(" "), &output);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&needle), "{args:?}: {stderr}");
    }
    // A torn model.json: what makes it again is said.
    let torn = root.join("torn");
    std::fs::create_dir(&torn).unwrap();
    for f in ["model.mpk", "model.safetensors"] {
        std::fs::copy(model.join(f), torn.join(f)).unwrap();
    }
    std::fs::write(torn.join("model.json"), "{\"classes\": 1").unwrap();
    let output = mnist().args(["eval", "--model", torn.to_str().unwrap()]).output().unwrap();
    let stderr = no_panic("eval of a torn model.json", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not valid JSON") && stderr.contains("hint: model.json is written by training: restore it from a copy of the run, or train again"), "{stderr}");
    // A folder that cannot be made (even by root: /proc takes none) is named before
    // training is announced.
    #[cfg(target_os = "linux")]
    {
        let tiny_config = root.join("tiny.json");
        std::fs::write(&tiny_config, tiny(5, 5)).unwrap();
        let output = mnist().args(["train", "--plain", "--backend", "flex", "--config", tiny_config.to_str().unwrap(), "--out", "/proc/mnist-rs-run"]).output().unwrap();
        let stderr = no_panic("train --out /proc/mnist-rs-run", &output);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("error: cannot make the run's folder /proc/mnist-rs-run or write in it: ") && stderr.contains("hint: choose a folder you can write in with --out"), "{stderr}");
        assert!(!text(&output.stdout).contains("training on"), "{}", text(&output.stdout));
    }
    // `-`: the image on standard input.
    let mut child = mnist().args(["predict", "--model", model.to_str().unwrap(), "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let png = std::fs::read(cases().join("images/repro_seven_bg128.png")).unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &png).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success() && text(&output.stdout).starts_with("-: "), "{}{}", text(&output.stdout), text(&output.stderr));
    // Endless standard input is refused at the image files' cap, the reason said.
    #[cfg(unix)]
    {
        let zero = std::fs::File::open("/dev/zero").unwrap();
        let output = mnist().args(["predict", "--model", model.to_str().unwrap(), "-"]).stdin(zero).output().unwrap();
        let stderr = no_panic("predict - < /dev/zero", &output);
        assert!(stderr.contains("error: cannot read standard input: larger than the 256 MiB such a file may be"), "{stderr}");
    }

    // A config named without its folder, run from the project's: the one in configs/ is named.
    std::fs::create_dir(root.join("configs")).unwrap();
    std::fs::write(root.join("configs").join("quick.json"), "{}").unwrap();
    let output = mnist().current_dir(root).args(["train", "--config", "quick.json"]).output().unwrap();
    let stderr = no_panic("train --config quick.json", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("hint: the project's configs are in configs/: --config configs/quick.json"), "{stderr}");
    let output = mnist().current_dir(root).args(["train", "--config", "other/quick.json"]).output().unwrap();
    assert!(!text(&output.stderr).contains("hint"), "{}", text(&output.stderr));

    // The batch comes from the run's config.json; the report is the same in any batch.
    let json = |args: &[&str]| {
        let output = mnist().args(["eval", "--model", model.to_str().unwrap(), "--json", "-"]).args(args).output().unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()["accuracy"].as_f64().unwrap()
    };
    std::fs::write(model.join(artifact::TRAIN_CONFIG), r#"{"dataset": "sample", "eval_batch_size": 7}"#).unwrap();
    let (of_run, given) = (json(&[]), json(&["--batch", "2000"]));
    assert!((of_run - given).abs() <= 1.0 / 2000.0, "{of_run} {given}");
}

/// `train --resume` without `--out` takes the newest unfinished run in artifacts/: one with
/// steps left, or with all its steps done and a final file missing (it was skipped, as if
/// finished, when its model.json was there).
#[test]
fn resume_without_out_finishes_a_run_missing_a_final_file() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tiny.json");
    std::fs::write(&config, tiny(10, 5)).unwrap();
    let run = tmp.path().join("artifacts").join("run");
    let output = mnist().current_dir(tmp.path()).args(["train", "--plain", "--backend", "flex", "--config", config.to_str().unwrap(), "--out", "artifacts/run"]).output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    std::fs::remove_file(run.join("plot.png")).unwrap();
    let output = mnist().current_dir(tmp.path()).args(["train", "--plain", "--backend", "flex", "--resume"]).output().unwrap();
    let stderr = no_panic("train --resume of a run missing its plot", &output);
    assert!(output.status.success(), "{stderr}");
    assert!(text(&output.stdout).contains("the run's 10 steps are done"), "{}", text(&output.stdout));
    // No training speed is claimed where no step was trained.
    assert!(text(&output.stdout).contains("; no steps left to train; wrote ") && !text(&output.stdout).contains("training images/s"), "{}", text(&output.stdout));
    assert!(run.join("plot.png").is_file());
    // Finished now: nothing is left to resume.
    let output = mnist().current_dir(tmp.path()).args(["train", "--plain", "--backend", "flex", "--resume"]).output().unwrap();
    let stderr = no_panic("train --resume with every run finished", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no run in artifacts is unfinished"), "{stderr}");
    // A finished run that lost its model.json: eval says so (not "no model yet"), and the
    // resume it names writes the file again.
    std::fs::remove_file(run.join("model.json")).unwrap();
    let output = mnist().current_dir(tmp.path()).args(["eval", "--model", "artifacts/run"]).output().unwrap();
    let stderr = no_panic("eval of a run without its model.json", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("artifacts/run holds a run without its model.json") && stderr.contains("--resume"), "{stderr}");
    let output = mnist().current_dir(tmp.path()).args(["train", "--plain", "--backend", "flex", "--resume"]).output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(run.join("model.json").is_file());
    // A torn one: the hint says to move it away and resume, and that works.
    std::fs::write(run.join("model.json"), "{\"classes\"").unwrap();
    let output = mnist().current_dir(tmp.path()).args(["eval", "--model", "artifacts/run"]).output().unwrap();
    let stderr = no_panic("eval of a run with a torn model.json", &output);
    assert!(stderr.contains("hint: move the damaged model.json away; then ") && stderr.contains("--resume --out artifacts/run writes it again from the run's checkpoint"), "{stderr}");
    std::fs::rename(run.join("model.json"), tmp.path().join("torn.json")).unwrap();
    let output = mnist().current_dir(tmp.path()).args(["train", "--plain", "--backend", "flex", "--resume", "--out", "artifacts/run"]).output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let output = mnist().current_dir(tmp.path()).args(["eval", "--model", "artifacts/run"]).output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
}

/// A run whose config.json was deleted resumes with the config its checkpoint records
/// (it had been "cannot read config.json", with no way on); a junk checkpoint in its place
/// is named as damaged.
#[test]
fn a_run_missing_its_config_resumes_with_its_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tiny.json");
    std::fs::write(&config, tiny(4, 2)).unwrap();
    let run = tmp.path().join("run");
    let output = mnist().args(["train", "--plain", "--backend", "flex", "--config"]).arg(&config).arg("--out").arg(&run).output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    std::fs::remove_file(run.join("config.json")).unwrap();
    let output = mnist().args(["train", "--plain", "--backend", "flex", "--resume", "--steps", "6", "--out"]).arg(&run).output().unwrap();
    let stderr = no_panic("train --resume without config.json", &output);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("note: {} is missing; resuming with the config {} records", run.join("config.json").display(), run.join("checkpoint.bin").display())), "{stderr}");
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!((written["steps"].as_u64(), written["batch_size"].as_u64(), written["model"]["hidden"].as_u64()), (Some(6), Some(16), Some(32)), "{written}");

    // A folder holding only the user's own config.json: no run to resume, and a new run
    // there would replace the file, so the hint names another --out.
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("config.json"), "{}").unwrap();
    let output = mnist().args(["train", "--plain", "--backend", "flex", "--resume", "--out"]).arg(&mine).output().unwrap();
    let stderr = no_panic("train --resume into the user's own files", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\nhint: start a new run without --resume, into another --out"), "{stderr}");
    // A folder with a junk checkpoint.bin and nothing else.
    let junk = tmp.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("checkpoint.bin"), "junk").unwrap();
    let output = mnist().args(["train", "--plain", "--backend", "flex", "--resume", "--steps", "8", "--out"]).arg(&junk).output().unwrap();
    let stderr = no_panic("train --resume of a junk checkpoint without config.json", &output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("checkpoint.bin") && stderr.contains("config.json is missing, and its checkpoint cannot be read") && stderr.contains("\nhint: its config is gone too: to train a new run there, mv "), "{stderr}");
}

/// `mnist` under an address-space limit of `gib` GiB (`ulimit -v`).
#[cfg(unix)]
fn limited(gib: u64) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("ulimit -v {} && exec \"$0\" \"$@\"", gib << 20)).arg(env!("CARGO_BIN_EXE_mnist"));
    cmd.env_remove("MNIST_RS_COMMAND").env_remove(MEMORY_CHECK).env("MNIST_DATA_DIR", "").stdin(Stdio::null());
    cmd
}

#[cfg(unix)]
const MEMORY_CHECK: &str = "MNIST_MEMORY_CHECK";

#[test]
#[cfg(unix)]
fn a_batch_too_large_for_the_memory_is_refused_before_it_starts() {
    // 60,000 images need more than 7 GiB on flex: refused with the batch that can fit.
    let out = limited(3).args(["bench", "train", "--backend", "flex", "--batch", "60000", "--repeats", "1"]).output().unwrap();
    let stderr = no_panic("bench --batch 60000", &out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: --batch 60000 needs at least 7.85 GiB of memory on flex (50 MiB for the network, 7.80 GiB for a batch), but this process's address-space limit (ulimit -v) leaves room for at most "), "{stderr}");
    assert!(stderr.contains("\nhint: --batch over ") && stderr.contains(" cannot fit; MNIST_MEMORY_CHECK=off starts it anyway"), "{stderr}");
    // Evaluation batches are capped at the 10,000 images evaluated: 60,000 is 10,000.
    let out = limited(3).args(["bench", "eval", "--backend", "flex", "--batch", "60000", "--repeats", "1", "--warmup", "0"]).output().unwrap();
    let stderr = no_panic("bench eval --batch 60000", &out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // A value of the check's variable other than off or on is named, not ignored.
    let out = limited(3).env(MEMORY_CHECK, "0").args(["bench", "latency", "--repeats", "1"]).output().unwrap();
    let stderr = no_panic("MNIST_MEMORY_CHECK=0", &out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: MNIST_MEMORY_CHECK is \"0\"; expected off"), "{stderr}");

    // A network whose parameters and Adam's state alone overflow the room: the config is named.
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("wide.json");
    std::fs::write(&config, r#"{"dataset": "sample", "model": {"hidden": 80000}, "steps": 10}"#).unwrap();
    let out = limited(3).args(["train", "--backend", "flex", "--plain", "--config"]).arg(&config).arg("--out").arg(tmp.path().join("run")).output().unwrap();
    let stderr = no_panic("train a wide network", &out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with(&format!("error: {}: training with batch_size 50 needs at least ", config.display())), "{stderr}");
    assert!(stderr.contains("\nhint: a smaller network (model.hidden"), "{stderr}");
    assert!(!stderr.contains("training on"), "refused before training is announced: {stderr}");
    // Past the check, the network that does not fit is what the allocator's hint names.
    let out = limited(3).env(MEMORY_CHECK, "off").args(["train", "--backend", "flex", "--plain", "--config"]).arg(&config).arg("--out").arg(tmp.path().join("run-unchecked")).output().unwrap();
    let stderr = no_panic("train a wide network unchecked", &out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: out of memory: the system refused ") && stderr.contains("\nhint: a smaller network"), "{stderr}");

    // Past the check, the allocator's refusal is an error line too, not an abort (134).
    let out = limited(3).env(MEMORY_CHECK, "off").args(["bench", "train", "--backend", "flex", "--batch", "60000", "--repeats", "1", "--warmup", "0"]).output().unwrap();
    let stderr = no_panic("bench --batch 60000 unchecked", &out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: out of memory: the system refused ") && stderr.contains("\nhint: a smaller --batch needs less memory"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}
