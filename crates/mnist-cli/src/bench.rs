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
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let data = Locator::offline(None).load(DatasetKind::Sample).context("cannot load the bundled sample")?;
    if args.measure == Measure::Serve {
        let measurement = crate::serve::bench(&args, backend, &data.test)?;
        crate::output::say!("{}", serde_json::to_string(&measurement)?);
        return Ok(Status::Success);
    }
    let measurement = dispatch(backend, BenchJob { args: &args, train: &data.train, test: &data.test })?;
    crate::output::say!("{}", serde_json::to_string(&measurement)?);
    Ok(Status::Success)
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
            Measure::Train => ("train", args.batch, time_training(model, self.train, args, device)?),
            Measure::Eval => ("eval", args.batch, time_evaluation(&model.valid(), self.test, args, device)?),
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
