use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::backend::Autodiff;
use burn_flex::Flex;
use mnist_data::{Dataset, DatasetKind, Locator};
use mnist_model::CnnConfig;
use mnist_model::artifact;

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

/// [`options`] to resume the run in `dir`.
fn resuming(dir: &std::path::Path) -> TrainOptions {
    TrainOptions { resume: true, ..options(dir) }
}

fn params(dir: &std::path::Path) -> Vec<f32> {
    let (_, model) = artifact::load_dir::<Flex>(dir, &Default::default()).unwrap();
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
        Outcome::Interrupted { step } | Outcome::OutputClosed { step, .. } => panic!("stopped at {step}"),
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
    let resume = resuming(split.path());
    finished(train::<B>(&tiny(2_000), &data, &resume, &device).unwrap());

    let (a, b) = (params(straight.path()), params(split.path()));
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max <= 1e-6, "max parameter difference {max}");

    // The metrics of the resumed run continue those of the first part, same values.
    let rows = |d: &std::path::Path| -> Vec<(u64, f64)> {
        std::fs::read_to_string(d.join(artifact::METRICS))
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
    // The resumed session's training time goes on from the first's.
    let elapsed: Vec<f64> = std::fs::read_to_string(split.path().join(artifact::METRICS))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<MetricRow>(l).unwrap().elapsed_s)
        .collect();
    assert!(elapsed.windows(2).all(|w| w[0] <= w[1]), "{elapsed:?}");
}

#[test]
fn a_fixed_seed_gives_identical_metrics_and_learns() {
    let data = sample();
    let run = || {
        let dir = tempfile::tempdir().unwrap();
        let report = finished(train::<B>(&tiny(300), &data, &options(dir.path()), &Default::default()).unwrap());
        let metrics: Vec<(u64, f64, f64)> = std::fs::read_to_string(dir.path().join(artifact::METRICS))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<MetricRow>(l).unwrap())
            .map(|r| (r.step, r.loss, r.train_accuracy))
            .collect();
        for f in [artifact::TRAIN_CONFIG, artifact::METRICS, artifact::PLOT, artifact::REPORT, artifact::CHECKPOINT, artifact::MANIFEST, artifact::WEIGHTS, artifact::SAFETENSORS] {
            assert!(dir.path().join(f).is_file(), "{f} missing");
        }
        // config.json records the dataset trained on, also when the config named none.
        assert_eq!(tiny(300).dataset, None);
        assert_eq!(TrainConfig::read(&dir.path().join(artifact::TRAIN_CONFIG)).unwrap().dataset, Some(mnist_data::DatasetKind::Sample));
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
    // The report says which kernels ran, as the dispatch decided them.
    let kernels = r1.kernels.expect("recorded");
    let expected = if cfg!(feature = "flex") { "fused Adam" } else { "Burn's Adam" };
    assert_eq!(kernels.optimizer.as_deref(), Some(expected));
}

#[test]
fn a_stop_request_checkpoints_and_resume_finishes() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.stop = Some(Arc::new(AtomicBool::new(true)));
    match train::<B>(&tiny(100), &data, &o, &Default::default()).unwrap() {
        Outcome::Interrupted { step } => assert_eq!(step, 0),
        other => panic!("should have been interrupted: {other:?}"),
    }
    assert_eq!(checkpoint::read_state(&dir.path().join(artifact::CHECKPOINT)).unwrap().step, 0);
    assert!(!dir.path().join(artifact::REPORT).exists());

    // Starting afresh over an existing run is refused; resuming works.
    let err = train::<B>(&tiny(100), &data, &options(dir.path()), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::RunExists { .. }), "{err}");
    let resume = resuming(dir.path());
    let err = train::<B>(&tiny(100).with_seed(8), &data, &resume, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("config differs"), "{err}");
    finished(train::<B>(&tiny(100), &data, &resume, &Default::default()).unwrap());
}

/// `check_start` refuses what `train` would, before anything is trained or loaded.
#[test]
fn check_start_refuses_before_training_what_train_would() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    assert_eq!(check_start(&tiny(100), &data, &o).unwrap(), 0);
    o.stop = Some(Arc::new(AtomicBool::new(true)));
    assert!(matches!(train::<B>(&tiny(100), &data, &o, &Default::default()).unwrap(), Outcome::Interrupted { step: 0 }));
    let resume = resuming(dir.path());
    assert_eq!(check_start(&tiny(100), &data, &resume).unwrap(), 0, "the checkpoint of a run stopped before its first step");
    let err = check_start(&tiny(100).with_seed(8), &data, &resume).unwrap_err();
    assert!(matches!(&err, Error::NotResumable { reason: NotResumable::ConfigDiffers { fields }, .. } if fields.len() == 1), "{err}");
    let err = err.to_string();
    assert!(err.contains("config differs") && err.contains("`seed`"), "{err}");
    let err = check_start(&tiny(100), &data, &options(dir.path())).unwrap_err();
    assert!(matches!(err, Error::RunExists { .. }), "{err}");
    // A batch larger than the training split names the field and the split, for a new
    // run and for train itself.
    let images = data.train.len();
    let other = tempfile::tempdir().unwrap();
    let big = tiny(10).with_batch_size(images + 1);
    for err in [check_start(&big, &data, &options(other.path())).unwrap_err(), train::<B>(&big, &data, &options(other.path()), &Default::default()).unwrap_err()] {
        let err = err.to_string();
        assert!(err.contains(&format!("batch_size must be at most {images}, the training images of sample")) && err.contains(&format!("got {}", images + 1)), "{err}");
    }
    // A config that names another dataset than the one given is refused, by both.
    let fashion = tiny(10).with_dataset(Some(mnist_data::DatasetKind::Fashion));
    for err in [check_start(&fashion, &data, &options(other.path())).unwrap_err(), train::<B>(&fashion, &data, &options(other.path()), &Default::default()).unwrap_err()] {
        let err = err.to_string();
        assert!(err.contains("dataset is fashion, but the dataset given to train on is sample"), "{err}");
    }
    // A finished run is refused as finished.
    finished(train::<B>(&tiny(100), &data, &resume, &Default::default()).unwrap());
    let err = check_start(&tiny(100), &data, &resume).unwrap_err();
    assert!(matches!(err, Error::NotResumable { reason: NotResumable::Finished { steps: 100 }, .. }), "{err}");
    assert!(err.to_string().contains("already finished"), "{err}");
    // A finished run missing one of its final files (deleted, or a disk that filled) is
    // not finished: resuming writes them again without training.
    std::fs::remove_file(dir.path().join(artifact::WEIGHTS)).unwrap();
    assert_eq!(check_start(&tiny(100), &data, &resume).unwrap(), 100);
    assert_eq!(finished(train::<B>(&tiny(100), &data, &resume, &Default::default()).unwrap()).steps, 100);
    assert!(dir.path().join(artifact::WEIGHTS).is_file());
    let err = check_start(&tiny(50), &data, &resume).unwrap_err();
    assert!(matches!(err, Error::NotResumable { reason: NotResumable::BeyondSteps { step: 100, steps: 50 }, .. }), "{err}");
    let other = Locator::offline(None).load(DatasetKind::Sample).unwrap();
    let other = Dataset { train: other.test.clone(), ..other };
    let err = check_start(&tiny(200), &other, &resume).unwrap_err();
    assert!(matches!(&err, Error::NotResumable { reason: NotResumable::OtherDataset { trained_on, .. }, .. } if trained_on == "sample"), "{err}");
}

#[test]
fn bad_output_directories_and_checkpoints_are_clear_errors() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = train::<B>(&tiny(10), &data, &options(&file.join("run")), &Default::default()).unwrap_err();
    assert!(matches!(&err, Error::NotADirectory { path } if *path == file), "{err}");
    assert!(matches!(crate::check_out_dir(&file.join("run").join("deeper"), false), Err(Error::NotADirectory { path }) if path == file));

    let resume = resuming(&dir.path().join("empty"));
    let err = train::<B>(&tiny(10), &data, &resume, &Default::default()).unwrap_err();
    assert!(matches!(err, Error::NoCheckpoint { why: crate::NoCheckpoint::NoDirectory, .. }), "{err}");

    // A finished run whose checkpoint was deleted: its model stays usable, and neither a
    // resume nor a new run goes on in its folder (each had sent the user to the other).
    let done = dir.path().join("runs").join("done");
    finished(train::<B>(&tiny(10), &data, &options(&done), &Default::default()).unwrap());
    std::fs::remove_file(done.join(artifact::CHECKPOINT)).unwrap();
    let err = train::<B>(&tiny(20), &data, &resuming(&done), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::NoCheckpoint { why: crate::NoCheckpoint::CheckpointGone, .. }), "{err}");
    assert!(err.to_string().contains("holds a finished run's files (a model or a report) but no checkpoint"), "{err}");
    let err = train::<B>(&tiny(20), &data, &options(&done), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::RunExists { run: crate::ExistingRun::NoCheckpoint, .. }), "{err}");
    // The folder of runs is not a run: neither resumed nor trained into.
    let err = train::<B>(&tiny(20), &data, &resuming(&dir.path().join("runs")), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::NoCheckpoint { why: crate::NoCheckpoint::HoldsRuns, .. }), "{err}");
    let err = train::<B>(&tiny(20), &data, &options(&dir.path().join("runs")), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::FolderOfRuns { .. }), "{err}");
    assert!(!dir.path().join("runs").join(artifact::TRAIN_CONFIG).exists());
    // A checkpoint that cannot be read: a new run is refused, named as such.
    let damaged = dir.path().join("damaged");
    finished(train::<B>(&tiny(10), &data, &options(&damaged), &Default::default()).unwrap());
    std::fs::write(damaged.join(artifact::CHECKPOINT), b"MNISTRS-CKPT-v2\n\x01").unwrap();
    let err = train::<B>(&tiny(10), &data, &options(&damaged), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::RunExists { run: crate::ExistingRun::DamagedCheckpoint, .. }), "{err}");

    let run = dir.path().join("corrupt");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join(artifact::CHECKPOINT), b"MNISTRS-CKPT-v1\n\x05").unwrap();
    let resume = resuming(&run);
    let err = train::<B>(&tiny(10), &data, &resume, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn divergence_is_named_at_its_step_and_nothing_non_finite_is_saved() {
    // The reported case, a log line every million steps and a checkpoint every 10
    // (../tests/cases/configs/huge_lr_rarelog.json, whose learning rate 1e30 the
    // integration tests run on the seed network), on a small network with a learning rate
    // of 1e38: Adam's first step moves every weight with a gradient by about that, so the
    // next forward pass overflows whatever order the kernels sum in. (At 1e30 this small
    // network sometimes settled instead into a finite, dead one, every ReLU off and a loss
    // of about 5e29, depending on the kernels' rounding: a finite run, not a divergence.)
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(40).with_learning_rate(1e38).with_log_every(1_000_000).with_checkpoint_every(10);
    // Which shows first depends on the dropout masks: a loss that is not finite, or a
    // weight that is not while the loss still is (a dead unit hides it); either is named
    // with its step, before the first checkpoint.
    let err = train::<B>(&config, &data, &options(dir.path()), &Default::default()).unwrap_err();
    match err {
        Error::Diverged { step, loss } => {
            assert!(step < 10 && !loss.is_finite(), "step {step}, loss {loss}");
            assert!(err_text(&Error::Diverged { step, loss }).contains(&format!("diverged at step {step}")));
        }
        Error::DivergedWeights { step, ref tensor } => {
            assert!(step <= 10, "found after step {step}");
            assert!(err.to_string().contains(&format!("diverged by step {step}: tensor `{tensor}`")), "{err}");
        }
        other => panic!("expected a divergence: {other}"),
    }
    for f in [artifact::CHECKPOINT, artifact::REPORT, artifact::WEIGHTS, artifact::MANIFEST] {
        assert!(!dir.path().join(f).exists(), "{f} written for a diverged run");
    }
}

/// A NaN weight the loss cannot see is found within 100 steps however often the run logs
/// (a log line reads the pending losses back, and the weights were checked only when those
/// fell due: with logs every 100 steps or more often, only at checkpoints and the end).
#[test]
fn a_nan_weight_hidden_from_the_loss_is_found_within_100_steps() {
    let data = sample();
    for log_every in [1, 50, 100, 1_000_000] {
        let dir = tempfile::tempdir().unwrap();
        crate::train::POISON_AT_STEP.set(Some(120));
        let result = train::<B>(&tiny(400).with_log_every(log_every), &data, &options(dir.path()), &Default::default());
        crate::train::POISON_AT_STEP.set(None);
        match result {
            Err(Error::DivergedWeights { step: 200, tensor }) => assert_eq!(tensor, "fc1.bias", "log_every {log_every}"),
            Err(other) => panic!("log_every {log_every}: {other}"),
            Ok(_) => panic!("log_every {log_every}: the NaN was not found"),
        }
    }
}

fn err_text(e: &Error) -> String {
    e.to_string()
}

#[test]
fn damaged_checkpoints_are_refused_by_their_checksum() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    finished(train::<B>(&tiny(20), &data, &options(dir.path()), &Default::default()).unwrap());
    let path = dir.path().join(artifact::CHECKPOINT);
    let good = std::fs::read(&path).unwrap();
    let resume = resuming(dir.path());
    let mut flipped = good.clone();
    for i in 0..64 {
        let at = flipped.len() / 2 + i * 97;
        flipped[at] ^= 0x5a;
    }
    for (what, bytes) in [("flipped bytes", flipped), ("truncated", good[..good.len() - 1000].to_vec())] {
        std::fs::write(&path, &bytes).unwrap();
        let err = train::<B>(&tiny(30), &data, &resume, &Default::default()).unwrap_err().to_string();
        assert!(err.contains("damaged or truncated (checksum mismatch"), "{what}: {err}");
        let err = checkpoint::read_state(&path).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{what}: {err}");
    }
    std::fs::write(&path, &good).unwrap();
    finished(train::<B>(&tiny(30), &data, &resume, &Default::default()).unwrap());
}

#[test]
fn a_checkpoint_holding_non_finite_weights_is_not_resumed() {
    use burn::module::{Module, Param};
    use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    finished(train::<B>(&tiny(20), &data, &options(dir.path()), &Default::default()).unwrap());
    let path = dir.path().join(artifact::CHECKPOINT);
    // A version-1 checkpoint (no digest), as earlier versions wrote after a divergence:
    // the real state and optimizer sections, a network whose fc1 bias is NaN.
    let bytes = std::fs::read(&path).unwrap();
    let [state, _, optim] = checkpoint::sections(&bytes, &path).unwrap();
    let mut model = tiny(20).model.init::<Flex>(7, &Default::default()).unwrap();
    let bias = model.fc1.bias.take().unwrap().val();
    model.fc1.bias = Some(Param::from_tensor(bias.clone() / bias.zeros_like()));
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let network = recorder.record(model.into_record(), ()).unwrap();
    let mut v1 = b"MNISTRS-CKPT-v1\n".to_vec();
    for section in [state, &network[..], optim] {
        v1.extend_from_slice(&(section.len() as u64).to_le_bytes());
        v1.extend_from_slice(section);
    }
    std::fs::write(&path, &v1).unwrap();
    let resume = resuming(dir.path());
    let err = train::<B>(&tiny(30), &data, &resume, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("fc1.bias") && err.contains("NaN or infinite"), "{err}");
}

#[test]
fn stale_temporary_files_are_removed_and_nothing_else() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let stale = [".tmp-a1B2c3", ".tmp-ZZZZZZ.png"];
    let kept = [".tmp-abc", ".tmp-abcdefg", ".tmp-a1B2c3.json", "notes.tmp", ".tmp-x-y-z1"];
    for name in stale.iter().chain(&kept) {
        std::fs::write(dir.path().join(name), b"left over").unwrap();
    }
    std::fs::create_dir(dir.path().join(".tmp-dir123")).unwrap();
    finished(train::<B>(&tiny(10), &data, &options(dir.path()), &Default::default()).unwrap());
    for name in stale {
        assert!(!dir.path().join(name).exists(), "{name} kept");
    }
    for name in kept.iter().chain(&[".tmp-dir123"]) {
        assert!(dir.path().join(name).exists(), "{name} removed");
    }
    // On resume too.
    std::fs::write(dir.path().join(stale[0]), b"left over").unwrap();
    let resume = resuming(dir.path());
    finished(train::<B>(&tiny(12), &data, &resume, &Default::default()).unwrap());
    assert!(!dir.path().join(stale[0]).exists());
}

#[test]
fn a_network_with_other_than_ten_classes_is_refused_before_training() {
    // ../tests/cases/configs/classes5.json and classes12_init.json.
    for classes in [5, 12] {
        let config = tiny(5).with_model(CnnConfig::new().with_classes(classes));
        let dir = tempfile::tempdir().unwrap();
        let err = train::<B>(&config, &sample(), &options(dir.path()), &Default::default()).unwrap_err().to_string();
        assert!(err.contains("model.classes must be 10") && err.contains(&classes.to_string()), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "files written");
        // Evaluation refuses such a network too, instead of folding classes together.
        let model = CnnConfig::new().with_classes(classes).init::<Flex>(0, &Default::default()).unwrap();
        let err = mnist_infer::evaluate(&model, &sample().test, 100, &Default::default()).unwrap_err().to_string();
        assert!(err.contains(&format!("scores {classes} classes")), "{err}");
    }
}

#[test]
fn a_directory_another_process_trains_in_is_left_alone() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    // Another process's lock and its checkpoint being written.
    let lock = std::fs::File::create(dir.path().join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let in_flight = dir.path().join(".tmp-Ab3dE6");
    std::fs::write(&in_flight, b"half a checkpoint").unwrap();
    let err = train::<B>(&tiny(10), &data, &options(dir.path()), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::RunInUse { .. }) && err.to_string().contains("another mnist process is training there"), "{err}");
    assert!(in_flight.exists(), "a live process's temporary file was removed");
    drop(lock);
    finished(train::<B>(&tiny(10), &data, &options(dir.path()), &Default::default()).unwrap());
    assert!(!in_flight.exists());

    // A finished run is not trained again (nor its report overwritten) by a plain resume.
    let resume = resuming(dir.path());
    let err = train::<B>(&tiny(10), &data, &resume, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("already finished (10 steps"), "{err}");

    // Another process training in a directory with no checkpoint yet: refused as in use,
    // not as a run to resume.
    let early = tempfile::tempdir().unwrap();
    std::fs::write(early.path().join(artifact::METRICS), "").unwrap();
    let lock = std::fs::File::create(early.path().join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let err = train::<B>(&tiny(10), &data, &options(early.path()), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::RunInUse { .. }), "{err}");
    // ... and so is resuming it, which had said the run stopped before its checkpoint.
    let resume = resuming(early.path());
    let err = train::<B>(&tiny(10), &data, &resume, &Default::default()).unwrap_err();
    assert!(matches!(err, Error::RunInUse { .. }), "{err}");
    assert!(matches!(crate::check_out_dir(early.path(), true), Err(Error::RunInUse { .. })));
    drop(lock);
    // Once that process is gone, the run it stopped before its first checkpoint may be
    // resumed: it starts again.
    crate::check_out_dir(early.path(), true).unwrap();
}

#[test]
fn a_run_stopped_before_its_first_checkpoint_starts_again() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    // What a second Ctrl-C before the first checkpoint leaves: the lock, the config and
    // some metrics.
    std::fs::write(dir.path().join(artifact::LOCK), "").unwrap();
    std::fs::write(dir.path().join(artifact::TRAIN_CONFIG), "{}").unwrap();
    std::fs::write(dir.path().join(artifact::METRICS), "{\"step\": 999}\n").unwrap();
    // Resuming it starts it again from step 0 (nothing else was saved); so does a new run.
    for options in [resuming(dir.path()), options(dir.path())] {
        assert_eq!(crate::check_start(&tiny(10), &data, &options).unwrap(), 0);
        finished(train::<B>(&tiny(10), &data, &options, &Default::default()).unwrap());
        std::fs::remove_file(dir.path().join(artifact::CHECKPOINT)).unwrap();
        for f in [artifact::REPORT, artifact::MANIFEST, artifact::WEIGHTS, artifact::SAFETENSORS, artifact::PLOT] {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
        std::fs::write(dir.path().join(artifact::METRICS), "{\"step\": 999}\n").unwrap();
    }
    finished(train::<B>(&tiny(10), &data, &options(dir.path()), &Default::default()).unwrap());
    let metrics = std::fs::read_to_string(dir.path().join(artifact::METRICS)).unwrap();
    // By the step (the digits 999 may well turn up in a speed or a time).
    let steps: Vec<u64> = metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert!(!steps.contains(&999) && steps.last() == Some(&9), "the stopped run's metrics were kept: {metrics}");
    // An --out that is a file is named as one, and left alone.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "keep").unwrap();
    let err = train::<B>(&tiny(10), &data, &options(&file), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::NotADirectory { .. }) && err.to_string().contains("is a file, not a directory"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
}

#[test]
fn a_refused_resume_names_the_fields_that_differ() {
    let run = tiny(10);
    let now = tiny(10).with_seed(8).with_model(CnnConfig::new().with_conv1_channels(4).with_conv2_channels(8).with_hidden(64));
    assert_eq!(
        crate::train::config_differences(&run, &now),
        ["`model.hidden`: the run has 32, now 64", "`seed`: the run has 7, now 8"]
    );
    assert!(crate::train::config_differences(&run, &tiny(10)).is_empty());
}

#[test]
fn a_checkpoint_that_cannot_be_saved_says_what_is_left() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(12).with_checkpoint_every(5);
    // The first checkpoint (step 5) fails: nothing to resume from.
    checkpoint::FAIL_AT_STEP.set(Some(5));
    let err = train::<B>(&config, &data, &options(dir.path()), &Default::default()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::CheckpointNotSaved { step: 5, kept: None, .. }), "{text}");
    assert!(text.contains("cannot save the checkpoint of step 5") && text.contains(artifact::CHECKPOINT) && text.contains("No space left"), "{text}");
    assert!(text.contains("No checkpoint of this run was written before"), "{text}");

    // The second one (step 10) fails: the first is named, intact, and the run resumes from it.
    let dir = tempfile::tempdir().unwrap();
    checkpoint::FAIL_AT_STEP.set(Some(10));
    let err = train::<B>(&config, &data, &options(dir.path()), &Default::default()).unwrap_err();
    checkpoint::FAIL_AT_STEP.set(None);
    let text = err.to_string();
    assert!(matches!(err, Error::CheckpointNotSaved { step: 10, kept: Some(5), .. }), "{text}");
    assert!(text.contains("The checkpoint of step 5") && text.contains("is intact"), "{text}");
    // In the library's terms: the command line's flags are its hints.
    assert!(text.contains("resume the run to continue from it") && !text.contains("--"), "{text}");
    assert_eq!(checkpoint::read_state(&dir.path().join(artifact::CHECKPOINT)).unwrap().step, 5);
    let resume = resuming(dir.path());
    assert_eq!(finished(train::<B>(&config, &data, &resume, &Default::default()).unwrap()).steps, 12);
}

#[test]
fn a_folder_holding_files_no_run_wrote_is_not_trained_into() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(artifact::TRAIN_CONFIG), "{\"x\": 1}").unwrap();
    std::fs::write(dir.path().join(artifact::PLOT), "my plot").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let err = train::<B>(&tiny(10), &data, &options(dir.path()), &Default::default()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::WouldOverwrite { .. }), "{text}");
    assert!(text.contains("holds config.json, plot.png that no training run wrote") && text.contains("overwrite them"), "{text}");
    // Nothing was touched, not even a lock left behind.
    assert_eq!(std::fs::read_to_string(dir.path().join(artifact::TRAIN_CONFIG)).unwrap(), "{\"x\": 1}");
    assert!(!dir.path().join(artifact::LOCK).exists());
    // An empty `.lock` of the user's own does not make their files a run's (it had let a
    // new run replace their config.json): a run's lock comes with its metrics.
    std::fs::write(dir.path().join(artifact::LOCK), "").unwrap();
    let err = train::<B>(&tiny(10), &data, &options(dir.path()), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::WouldOverwrite { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join(artifact::TRAIN_CONFIG)).unwrap(), "{\"x\": 1}");
    std::fs::remove_file(dir.path().join(artifact::LOCK)).unwrap();
    // A report.json or model.json of the user's own (none of a run's keys) is named too.
    std::fs::write(dir.path().join(artifact::REPORT), "{}").unwrap();
    std::fs::write(dir.path().join(artifact::MANIFEST), r#"{"mine": 1}"#).unwrap();
    let err = train::<B>(&tiny(10), &data, &options(dir.path()), &Default::default()).unwrap_err();
    assert!(err.to_string().contains("holds config.json, plot.png, model.json, report.json that no training run wrote"), "{err}");
    std::fs::remove_file(dir.path().join(artifact::MANIFEST)).unwrap();
    // A finished run from before the lock file is still named as a run, not as files.
    std::fs::write(dir.path().join(artifact::REPORT), r#"{"test": {"images": 2000, "accuracy": 0.97}}"#).unwrap();
    let err = train::<B>(&tiny(10), &data, &options(dir.path()), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::RunExists { .. }), "{err}");
    std::fs::remove_file(dir.path().join(artifact::REPORT)).unwrap();
    // Refused before the lock was taken: nothing written there either.
    assert!(!dir.path().join(artifact::LOCK).exists());
    // Other files alone are no obstacle.
    std::fs::remove_file(dir.path().join(artifact::TRAIN_CONFIG)).unwrap();
    std::fs::remove_file(dir.path().join(artifact::PLOT)).unwrap();
    finished(train::<B>(&tiny(10), &data, &options(dir.path()), &Default::default()).unwrap());
    assert_eq!(std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(), "mine");
}

/// A resumed run's log keeps the lines before its checkpoint byte for byte (they had been
/// parsed and written again, a float one unit in the last place off: 9.650825500488281
/// came back as 9.65082550048828).
#[test]
fn resume_keeps_the_logged_lines_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(artifact::METRICS);
    let mut log = crate::MetricsLog::create(&path).unwrap();
    for (step, loss) in [(0u64, 9.650825500488281f64), (100, 0.1 + 0.2), (200, 1.0 / 3.0)] {
        log.push(MetricRow { step, loss, train_accuracy: 0.06, images_per_sec: 2_254.123_456_789_1, elapsed_s: 1e-7 * step as f64 }).unwrap();
    }
    let before = std::fs::read_to_string(&path).unwrap();
    let resumed = crate::MetricsLog::resume(&path, 200).unwrap();
    assert_eq!(resumed.rows().len(), 2);
    let after = std::fs::read_to_string(&path).unwrap();
    let two_lines: String = before.lines().take(2).map(|l| format!("{l}\n")).collect();
    assert_eq!(after, two_lines);
    assert!(after.contains("9.650825500488281"), "{after}");
}

/// A resumed log says what it lost, and loses no more than it must: a line that is no
/// metric row is dropped and the rows after it kept; a last line cut short (a crash) goes
/// without a word; a file missing, or holding no row before the checkpoint, is named.
#[test]
fn resume_keeps_rows_past_a_damaged_line_and_says_what_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(artifact::METRICS);
    let row = |step: u64| serde_json::to_string(&MetricRow { step, loss: 0.5, train_accuracy: 0.5, images_per_sec: 100.0, elapsed_s: 1.0 }).unwrap();
    // A garbage line between rows: the rows after it stay.
    std::fs::write(&path, format!("{}\ngarbage\n{}\n{}\n{}\n", row(0), row(100), row(200), row(300))).unwrap();
    let log = crate::MetricsLog::resume(&path, 300).unwrap();
    assert_eq!(log.rows().iter().map(|r| r.step).collect::<Vec<_>>(), [0, 100, 200]);
    let lost = log.lost().unwrap();
    assert!(lost.contains("dropped a line that is no metric row (line 2), kept the rows around it"), "{lost}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n{}\n{}\n", row(0), row(100), row(200)));
    // A last line cut short, and a blank line: nothing to say.
    std::fs::write(&path, format!("{}\n\n{}\n{{\"step\": 2", row(0), row(100))).unwrap();
    let log = crate::MetricsLog::resume(&path, 300).unwrap();
    assert_eq!((log.rows().len(), log.lost()), (2, None));
    // Emptied, or missing: the rows before the checkpoint are named lost.
    std::fs::write(&path, "").unwrap();
    let log = crate::MetricsLog::resume(&path, 6).unwrap();
    assert!(log.rows().is_empty());
    assert!(log.lost().unwrap().contains("holds no row from before the checkpoint: the metrics of the run's first 6 steps are lost"), "{:?}", log.lost());
    std::fs::remove_file(&path).unwrap();
    let log = crate::MetricsLog::resume(&path, 6).unwrap();
    assert!(log.lost().unwrap().contains("is missing: the metrics of the run's first 6 steps"), "{:?}", log.lost());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    // A checkpoint at step 0 has nothing before it to lose.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(crate::MetricsLog::resume(&path, 0).unwrap().lost(), None);
}

/// A checkpoint's state is read as strictly as config.json: a key given twice (behind a
/// valid layout) is refused, not resolved to its last value.
#[test]
fn a_checkpoint_state_with_a_key_given_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(artifact::CHECKPOINT);
    let state = checkpoint::CheckpointState { step: 5, config: tiny(10), dataset: "sample".into(), dataset_sha256: "0".repeat(64), train_seconds: 1.0 };
    let json = serde_json::to_string(&state).unwrap();
    let file = |json: &str| {
        let mut bytes = b"MNISTRS-CKPT-v1\n".to_vec();
        for section in [json.as_bytes(), b"", b""] {
            bytes.extend_from_slice(&(section.len() as u64).to_le_bytes());
            bytes.extend_from_slice(section);
        }
        bytes
    };
    std::fs::write(&path, file(&json)).unwrap();
    assert_eq!(checkpoint::read_state(&path).unwrap(), state);
    std::fs::write(&path, file(&json.replacen("{\"step\":5", "{\"step\":5,\"step\":9", 1))).unwrap();
    let err = checkpoint::read_state(&path).unwrap_err().to_string();
    assert!(err.contains("corrupt state section") && err.contains("`step` appears twice") && err.contains("checkpoint.bin"), "{err}");
}

/// A checkpoint that is empty, cut inside its header or not a file says which.
#[test]
fn a_damaged_checkpoint_says_how() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(artifact::CHECKPOINT);
    for (bytes, needle) in [(&b""[..], "the file is empty"), (&b"MNISTRS-CK"[..], "it ends inside its header"), (&b"PK\x03\x04 a zip"[..], "not an mnist-rs checkpoint")] {
        std::fs::write(&path, bytes).unwrap();
        let err = checkpoint::read_state(&path).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains("checkpoint.bin"), "{bytes:?}: {err}");
    }
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    for resume in [true, false] {
        let err = crate::check_out_dir(dir.path(), resume).unwrap_err().to_string();
        assert!(err.contains("checkpoint.bin") && err.contains("not a file"), "{err}");
    }
    // Resuming a folder that is not there says so.
    let err = crate::check_out_dir(&dir.path().join("no-such-run"), true).unwrap_err().to_string();
    assert!(err.contains("the folder does not exist"), "{err}");
}

/// The files written after the last step (here the weights, where a folder is in the way)
/// failing to be written says that the run is done and saved, and resuming writes them
/// without training again.
#[test]
fn a_run_whose_model_cannot_be_written_is_finished_by_resuming() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    // A run stopped before its first checkpoint left its lock and metrics; something made
    // a folder where the weights go.
    std::fs::write(dir.path().join(artifact::LOCK), b"").unwrap();
    std::fs::write(dir.path().join(artifact::METRICS), b"").unwrap();
    std::fs::create_dir(dir.path().join(artifact::WEIGHTS)).unwrap();
    let err = train::<B>(&tiny(10), &data, &options(dir.path()), &Default::default()).unwrap_err();
    assert!(matches!(err, Error::FinishNotSaved { steps: 10, .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("model.mpk") && text.contains("The run's 10 steps are done") && text.contains("resume the run") && !text.contains("--"), "{text}");
    assert!(!dir.path().join(artifact::MANIFEST).exists());
    std::fs::remove_dir(dir.path().join(artifact::WEIGHTS)).unwrap();
    let resume = resuming(dir.path());
    let report = finished(train::<B>(&tiny(10), &data, &resume, &Default::default()).unwrap());
    assert_eq!(report.steps, 10);
    assert!(dir.path().join(artifact::MANIFEST).is_file() && dir.path().join(artifact::WEIGHTS).is_file());
    let rows = std::fs::read_to_string(dir.path().join(artifact::METRICS)).unwrap().lines().count();
    assert!(rows <= 2, "trained again: {rows} rows");
}

/// A finished run whose model file was damaged is not finished: a resume writes the model
/// files again from the checkpoint, without training.
#[test]
fn a_damaged_model_is_written_again_by_resuming() {
    let data = sample();
    let dir = tempfile::tempdir().unwrap();
    finished(train::<B>(&tiny(10), &data, &options(dir.path()), &Default::default()).unwrap());
    let path = dir.path().join(artifact::WEIGHTS);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(artifact::verify_dir(dir.path()), Err(mnist_model::Error::Checksum { .. })));
    let resume = resuming(dir.path());
    assert_eq!(crate::check_start(&tiny(10), &data, &resume).unwrap(), 10);
    finished(train::<B>(&tiny(10), &data, &resume, &Default::default()).unwrap());
    artifact::verify_dir(dir.path()).unwrap();
    // Intact now: finished.
    let err = train::<B>(&tiny(10), &data, &resume, &Default::default()).unwrap_err();
    assert!(matches!(err, Error::NotResumable { reason: NotResumable::Finished { steps: 10 }, .. }), "{err}");
}
