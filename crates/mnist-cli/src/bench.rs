//! `mnist bench`: one measurement of the seed network on one backend, printed as a JSON
//! line. `cargo xtask bench` runs each measurement in its own process (so peak memory is
//! that measurement's) for every backend and peer, and tabulates them.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use mnist_data::{DatasetKind, Locator, Split};
use mnist_infer::{Classifier, Pixels};
use mnist_model::artifact::Manifest;
use mnist_model::{Cnn, CnnConfig, Kernels, dropout_mask, input};
use mnist_train::{TrainConfig, optimizer, train_step};

use crate::backend::{BackendKind, Job, dispatch};
use crate::{BenchArgs, Measure, Status};

/// One measurement, as printed (the record `cargo xtask bench` reads back).
pub use mnist_bench::Measurement;

pub fn bench(args: BenchArgs) -> Result<Status> {
    let backend = args.backend.map_or_else(BackendKind::default_compiled, Ok)?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.batch > TrainConfig::MAX_BATCH_SIZE {
        bail!("--batch {} is too large: the most is {} images (the largest training split)", args.batch, TrainConfig::MAX_BATCH_SIZE);
    }
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let pass = match args.measure {
        Measure::Train => Some((crate::memory::Pass::Training, args.batch, format!("--batch {}", args.batch))),
        Measure::Eval => Some((crate::memory::Pass::Evaluation, eval_batch(&args), format!("evaluating {EVAL_IMAGES} images with --batch {}", args.batch))),
        Measure::Latency | Measure::Serve => None,
    };
    if let Some((pass, batch, what)) = pass {
        crate::memory::check(backend, &CnnConfig::new(), pass, batch, &what, "--batch")?;
    }
    let data = Locator::offline(None).load(DatasetKind::Sample).context("cannot load the bundled sample")?;
    if args.measure == Measure::Serve {
        let mut measurement = crate::serve::bench(&args, backend, &data.test)?;
        measurement.load = measurement.load.settled(args.repeats);
        crate::output::say!("{}", serde_json::to_string(&measurement)?);
        // The figures are printed either way (`cargo xtask bench --serve` tabulates the
        // errors); a run with failed requests is no success.
        if let Some(failed) = failures(&measurement.load) {
            bail!("{failed}");
        }
        return Ok(Status::Success);
    }
    let measurement = dispatch(backend, BenchJob { args: &args, train: &data.train, test: &data.test })?;
    crate::output::say!("{}", serde_json::to_string(&measurement)?);
    Ok(Status::Success)
}

/// What a load run's failed requests were, for the error that ends `mnist bench serve`;
/// `None` when every request was answered well.
fn failures(load: &mnist_bench::LoadReport) -> Option<String> {
    if load.errors == 0 {
        return None;
    }
    let first = load.first_error.as_deref().unwrap_or("not recorded");
    // The server's 503s are refusals of work past its queue or its time limit.
    let advice = if first.contains("status 503") { "; the server refused work it had no room or time for: lower --concurrency" } else { "" };
    Some(format!(
        "{} of {} requests failed (the first: {first}){advice}; requests_per_sec counts only the {} answered well",
        load.errors,
        load.requests,
        load.succeeded()
    ))
}

struct BenchJob<'a> {
    args: &'a BenchArgs,
    train: &'a Split,
    test: &'a Split,
}

impl Job for BenchJob<'_> {
    type Output = Measurement;

    fn run<B: AutodiffBackend>(self, device: &B::Device, backend: BackendKind) -> Result<Measurement> {
        let args = self.args;
        let kernels = Kernels::from(args.kernels);
        let model = CnnConfig::new().init::<B>(1, device)?.with_kernels(kernels);
        let in_use = match args.measure {
            Measure::Train => mnist_train::kernels_in_use(&model),
            Measure::Eval | Measure::Latency | Measure::Serve => model.valid().kernels_in_use(),
        };
        let (measure, batch, times) = match args.measure {
            // As `mnist train` stores the weights (evaluation and latency measure them as
            // loaded from a model file).
            Measure::Train => ("train", args.batch, time_training(model.with_training_layout(args.batch), self.train, args, device)?),
            Measure::Eval => ("eval", eval_batch(args), time_evaluation(&model.valid(), self.test, args, device)?),
            Measure::Latency => ("latency", 1, time_latency(model.valid(), self.test, args, device)?),
            Measure::Serve => bail!("the serve measurement is taken by serve::bench"),
        };
        let median = mnist_bench::median(&times).unwrap_or(f64::NAN);
        let images = match args.measure {
            Measure::Eval => EVAL_IMAGES,
            _ => batch,
        };
        Ok(Measurement {
            system: "mnist-rs".to_string(),
            backend: backend.name().to_string(),
            device: match crate::backend::adapter() {
                Some(adapter) => format!("{} on {adapter}", <B::InnerBackend as Backend>::name(device)),
                None => format!("{} ({device:?})", <B::InnerBackend as Backend>::name(device)),
            },
            kernels: kernels.name().to_string(),
            measure: measure.to_string(),
            batch,
            repeats: args.repeats,
            images_per_sec: images as f64 / median.max(1e-12),
            median_ms: median * 1000.0,
            peak_rss_mib: peak_rss_mib(),
            kernels_in_use: in_use.entries().into_iter().map(|(part, implementation)| (part.to_string(), implementation)).collect(),
            commit: crate::BUILD_COMMIT.map(str::to_string),
            cpu: mnist_bench::cpu_model(),
            simd: Some(mnist_kernels::simd().name().to_string()),
        })
    }
}

/// Images of one evaluation pass (the size of the MNIST test set).
const EVAL_IMAGES: usize = 10_000;

/// The batch `bench eval` uses: `--batch`, no more than the images evaluated.
fn eval_batch(args: &BenchArgs) -> usize {
    args.batch.min(EVAL_IMAGES)
}

/// Seconds per training step, as a training loop runs them: `warmup` untimed steps, then
/// `repeats` steps timed as one block that ends by reading a parameter back (which waits
/// for an asynchronous device to finish them all); one value, the block's mean. A GPU
/// overlaps the host's work for the next step with the current one, as in `mnist train`,
/// which reads the loss back only when it logs.
fn time_training<B: AutodiffBackend>(mut model: Cnn<B>, train: &Split, args: &BenchArgs, device: &B::Device) -> Result<Vec<f64>> {
    // The same limits as a training run's (the dropout mask's size among them).
    let config = TrainConfig::new().with_batch_size(args.batch);
    config.validate().map_err(|e| anyhow::anyhow!("--batch {}: {e}", args.batch))?;
    let mut optim = optimizer::<B>(&config);
    let indices: Vec<usize> = (0..args.batch).map(|i| i % train.len()).collect();
    let sync = |model: &Cnn<B>| -> Result<()> {
        let _ = model.fc2.bias.as_ref().map(|b| b.val().into_data());
        B::sync(device).map_err(|e| anyhow::anyhow!("the device failed: {e:?}"))
    };
    let mut start = Instant::now();
    for step in 0..args.warmup + args.repeats {
        if step == args.warmup {
            sync(&model)?;
            start = Instant::now();
        }
        let batch = train.gather(&indices)?;
        let (images, labels) = (input::images::<B>(&batch.pixels, device), input::labels::<B>(&batch.labels, device));
        let mask = dropout_mask::<B>(args.batch, config.model.hidden, config.model.dropout, config.seed, step as u64, device);
        let (updated, _loss) = train_step(model, &mut optim, images, labels, mask, config.learning_rate);
        model = updated;
    }
    sync(&model)?;
    Ok(vec![start.elapsed().as_secs_f64() / args.repeats as f64])
}

/// Seconds of each timed pass over 10,000 test images (the sample's 2,000, repeated).
fn time_evaluation<B: Backend>(model: &Cnn<B>, test: &Split, args: &BenchArgs, device: &B::Device) -> Result<Vec<f64>> {
    let n = EVAL_IMAGES;
    let split = Split::new(
        test.images().iter().copied().cycle().take(n * 784).collect(),
        test.labels().iter().copied().cycle().take(n).collect(),
    )?;
    let mut times = Vec::with_capacity(args.repeats);
    for pass in 0..args.warmup.min(1) + args.repeats {
        let start = Instant::now();
        mnist_infer::evaluate(model, &split, args.batch, device)?;
        if pass >= args.warmup.min(1) {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// Seconds of each timed single-image prediction (a different image each time).
fn time_latency<B: Backend>(model: Cnn<B>, test: &Split, args: &BenchArgs, device: &B::Device) -> Result<Vec<f64>> {
    let classifier = Classifier::from_model(model, Manifest::from_config(CnnConfig::new()), device)?;
    let images: Vec<Pixels> = (0..test.len().min(1000)).map(|i| *test.image(i)).collect();
    let mut times = Vec::with_capacity(args.repeats);
    for i in 0..args.warmup + args.repeats {
        let start = Instant::now();
        let prediction = classifier.predict(&images[i % images.len()]);
        std::hint::black_box(prediction);
        if i >= args.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// The process's peak resident set (VmHWM), from `/proc/self/status`.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn load(errors: usize, first_error: Option<&str>) -> mnist_bench::LoadReport {
        mnist_bench::LoadReport {
            requests: 3_000,
            concurrency: 2_000,
            errors,
            first_error: first_error.map(str::to_string),
            seconds: 1.0,
            requests_per_sec: 3_000.0,
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: 3.0,
            max_ms: 4.0,
        }
    }

    #[test]
    fn failed_requests_are_counted_and_explained() {
        assert_eq!(failures(&load(0, None)), None);
        let busy = r#"request 17: status 503 Service Unavailable: {"error":"the server is busy: 4096 images are already waiting to be classified; try again shortly"}"#;
        let text = failures(&load(1_584, Some(busy))).unwrap();
        assert!(text.starts_with("1584 of 3000 requests failed (the first: request 17: status 503 Service Unavailable: "), "{text}");
        assert!(text.contains("lower --concurrency") && text.ends_with("requests_per_sec counts only the 1416 answered well"), "{text}");
        let wrong = failures(&load(2, Some("request 3: answered class 4, expected 9"))).unwrap();
        assert!(wrong.contains("(the first: request 3: answered class 4, expected 9)") && !wrong.contains("--concurrency"), "{wrong}");
    }

    /// An option the measurement does not use is a mistake of the command line (exit
    /// status 2, the flag named), not ignored; what each measurement uses still parses.
    #[test]
    fn options_a_measurement_does_not_use_are_refused() {
        let parse = |args: &[&str]| crate::Cli::try_parse_checked_from(["mnist", "bench"].iter().chain(args));
        for (args, says) in [
            (&["latency", "--batch", "7"][..], "`bench latency` classifies one image at a time: --batch 7 does not apply"),
            (&["latency", "--concurrency", "64"], "--concurrency applies to `bench serve` only: `bench latency` sends no requests"),
            (&["train", "--max-batch", "8"], "--max-batch applies to `bench serve` only: `bench train` sends no requests"),
            (&["eval", "--batch-wait-us", "0"], "--batch-wait-us applies to `bench serve` only"),
            (&["serve", "--batch", "50"], "`bench serve` sends single-image requests: --batch does not apply"),
            (&["serve", "--kernels", "fastest"], "--kernels does not apply"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!((e.kind(), e.exit_code()), (clap::error::ErrorKind::ArgumentConflict, 2), "{args:?}");
            assert!(e.to_string().contains(says), "{args:?}: {e}");
        }
        for args in [
            &["latency", "--batch", "1", "--repeats", "5", "--warmup", "0", "--kernels", "burn", "--backend", "flex"][..],
            &["train", "--batch", "512", "--kernels", "im2col"],
            &["eval", "--batch", "500"],
            &["serve", "--concurrency", "8", "--max-batch", "4", "--batch-wait-us", "0", "--repeats", "100"],
        ] {
            assert!(parse(args).is_ok(), "{args:?}");
        }
        // Without the check (a library caller's own parse), the defaults stand as before.
        assert!(crate::Cli::try_parse_from(["mnist", "bench", "latency", "--batch", "7"]).is_ok());
    }

    /// A batch past the largest training split is a mistake of the command line (exit
    /// status 2, the flag and the most named), not an allocation that kills the process.
    #[test]
    fn a_batch_past_the_largest_split_is_a_command_line_mistake() {
        let parse = |args: &[&str]| crate::Cli::try_parse_from(["mnist"].iter().chain(args));
        for measure in ["train", "eval"] {
            let e = parse(&["bench", measure, "--batch", "1000000"]).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            let text = e.to_string();
            assert!(text.contains("--batch") && text.contains("1000000 is too large: the most is 60000 images (the largest training split)"), "{text}");
        }
        let cli = parse(&["bench", "train", "--batch", "60000"]).unwrap();
        let crate::Command::Bench(args) = cli.command else { panic!("not bench") };
        assert_eq!(args.batch, TrainConfig::MAX_BATCH_SIZE);
        // A library caller past the range gets the same refusal, before anything is loaded.
        let err = bench(crate::BenchArgs { batch: 60_001, ..args }).unwrap_err().to_string();
        assert!(err.contains("--batch 60001 is too large: the most is 60000 images"), "{err}");
    }
}
