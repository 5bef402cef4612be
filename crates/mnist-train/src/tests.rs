use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::backend::Autodiff;
use burn_flex::Flex;
use mnist_data::{Dataset, DatasetKind, Locator};
use mnist_model::{CnnConfig, weights};

use super::*;

type B = Autodiff<Flex>;

fn sample() -> Dataset {
    Locator::offline(None).load(DatasetKind::Sample).unwrap()
}

/// A small network and short run, so the tests take seconds.
fn tiny(steps: u64) -> TrainConfig {
    TrainConfig::new()
        .with_model(CnnConfig::new().with_conv1_channels(4).with_conv2_channels(8).with_hidden(32))
        .with_learning_rate(1e-3)
        .with_batch_size(16)
        .with_steps(steps)
        .with_log_every(50)
        .with_checkpoint_every(0)
        .with_seed(7)
}

fn options(dir: &std::path::Path) -> TrainOptions {
    let mut o = TrainOptions::new(dir, "flex");
    o.progress = ProgressMode::Quiet;
    o
}

fn params(dir: &std::path::Path) -> Vec<f32> {
    let (_, model) = weights::load_dir::<Flex>(dir, &Default::default()).unwrap();
    [model.conv1.weight.val(), model.conv2.weight.val()]
        .into_iter()
        .flat_map(|t| t.into_data().to_vec::<f32>().unwrap())
        .chain(model.fc1.weight.val().into_data().to_vec::<f32>().unwrap())
        .chain(model.fc2.bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap())
        .collect()
}

fn finished(outcome: Outcome) -> Report {
    match outcome {
        Outcome::Finished(r) => *r,
        Outcome::Interrupted { step } => panic!("interrupted at {step}"),
    }
}

#[test]
fn resumed_run_ends_where_an_uninterrupted_run_does() {
    let data = sample();
    let device = Default::default();
    let straight = tempfile::tempdir().unwrap();
    finished(train::<B>(&tiny(2_000), &data, &options(straight.path()), &device).unwrap());

    let split = tempfile::tempdir().unwrap();
    finished(train::<B>(&tiny(1_000), &data, &options(split.path()), &device).unwrap());
    let mut resume = options(split.path());
    resume.resume = true;
    finished(train::<B>(&tiny(2_000), &data, &resume, &device).unwrap());

    let (a, b) = (params(straight.path()), params(split.path()));
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max <= 1e-6, "max parameter difference {max}");

    // The metrics of the resumed run continue those of the first part, same values.
    let rows = |d: &std::path::Path| -> Vec<(u64, f64)> {
        std::fs::read_to_string(d.join(files::METRICS))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<MetricRow>(l).unwrap())
            .map(|r| (r.step, r.loss))
            .collect()
    };
    let (ra, rb) = (rows(straight.path()), rows(split.path()));
    // The split run also logged step 999, the last of its first part.
    let rb: Vec<(u64, f64)> = rb.into_iter().filter(|r| r.0 != 999).collect();
    assert_eq!(ra.iter().map(|r| r.0).collect::<Vec<_>>(), rb.iter().map(|r| r.0).collect::<Vec<_>>());
    for ((_, la), (_, lb)) in ra.iter().zip(&rb) {
        assert!((la - lb).abs() < 1e-5, "{la} vs {lb}");
    }
}

#[test]
fn a_fixed_seed_gives_identical_metrics_and_learns() {
    let data = sample();
    let run = || {
        let dir = tempfile::tempdir().unwrap();
        let report = finished(train::<B>(&tiny(300), &data, &options(dir.path()), &Default::default()).unwrap());
        let metrics: Vec<(u64, f64, f64)> = std::fs::read_to_string(dir.path().join(files::METRICS))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<MetricRow>(l).unwrap())
            .map(|r| (r.step, r.loss, r.train_accuracy))
            .collect();
        for f in [files::CONFIG, files::METRICS, files::PLOT, files::REPORT, files::CHECKPOINT, weights::CONFIG_FILE, weights::WEIGHTS_FILE, weights::SAFETENSORS_FILE] {
            assert!(dir.path().join(f).is_file(), "{f} missing");
        }
        (report, metrics)
    };
    let (r1, m1) = run();
    let (r2, m2) = run();
    assert_eq!(m1, m2);
    assert_eq!(r1.test.accuracy, r2.test.accuracy);
    assert_eq!(m1.len(), 7); // steps 0, 50, ..., 250 and the last, 299
    assert!(r1.test.accuracy > 0.8, "test accuracy {}", r1.test.accuracy);
    assert_eq!(r1.test.images, 2_000);
    assert_eq!(r1.test.confusion.iter().flatten().sum::<u64>(), 2_000);
    assert_eq!(r1.dataset, "sample");
    assert_eq!(r1.dataset_sha256.len(), 64);
}

#[test]
fn a_stop_request_checkpoints_and_resume_finishes() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.stop = Some(Arc::new(AtomicBool::new(true)));
    match train::<B>(&tiny(100), &data, &o, &Default::default()).unwrap() {
        Outcome::Interrupted { step } => assert_eq!(step, 0),
        Outcome::Finished(_) => panic!("should have stopped"),
    }
    assert_eq!(checkpoint::read_state(&dir.path().join(files::CHECKPOINT)).unwrap().step, 0);
    assert!(!dir.path().join(files::REPORT).exists());

    // Starting afresh over an existing run is refused; resuming works.
    let err = train::<B>(&tiny(100), &data, &options(dir.path()), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::RunExists { .. }), "{err}");
    let mut resume = options(dir.path());
    resume.resume = true;
    let err = train::<B>(&tiny(100).with_seed(8), &data, &resume, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("config differs"), "{err}");
    finished(train::<B>(&tiny(100), &data, &resume, &Default::default()).unwrap());
}

#[test]
fn bad_output_directories_and_checkpoints_are_clear_errors() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = train::<B>(&tiny(10), &data, &options(&file.join("run")), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::Write { .. }) && err.to_string().contains("a-file"), "{err}");

    let mut resume = options(&dir.path().join("empty"));
    resume.resume = true;
    let err = train::<B>(&tiny(10), &data, &resume, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("no checkpoint"), "{err}");

    let run = dir.path().join("corrupt");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join(files::CHECKPOINT), b"MNISTRS-CKPT-v1\n\x05").unwrap();
    let mut resume = options(&run);
    resume.resume = true;
    let err = train::<B>(&tiny(10), &data, &resume, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}
