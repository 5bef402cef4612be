//! `mnist serve`, and `mnist bench serve`: the HTTP server of `mnist-serve` on a trained
//! model, and the same server on the seed network under a bounded load.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use mnist_data::Split;
use mnist_infer::Classifier;
use mnist_model::CnnConfig;
use mnist_model::artifact::{self, Manifest};
use mnist_serve::load::{self, LoadConfig};
use mnist_serve::{ModelInfo, ServeConfig};

use crate::backend::{BackendKind, Job, dispatch};
use crate::commands::{ARTIFACTS, check_model_dir, class_names, newest_run};
use crate::output::{note, say};
use crate::{BenchArgs, ServeArgs, Status};

pub fn serve(args: ServeArgs) -> Result<Status> {
    let backend = args.backend.map_or_else(BackendKind::default_compiled, Ok)?;
    // A mistyped setting is reported before a model is looked for (an address, when the
    // arguments were parsed).
    let addr = args.addr;
    let config = args.batching.config();
    config.check()?;
    let model_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => newest_run(Path::new(ARTIFACTS), artifact::WEIGHTS)?,
    };
    let manifest = check_model_dir(&model_dir)?;
    dispatch(backend, ServeJob { dir: model_dir, manifest, config, addr })?;
    Ok(Status::Success)
}

struct ServeJob {
    dir: PathBuf,
    manifest: Manifest,
    config: ServeConfig,
    addr: std::net::SocketAddr,
}

impl Job for ServeJob {
    type Output = ();
    const ON_WORKER: bool = false;

    fn run<B: AutodiffBackend>(self, device: &B::Device, backend: BackendKind) -> Result<()> {
        let classes = class_names(&self.manifest);
        let classifier = Classifier::<B::InnerBackend>::load_with(&self.dir, self.manifest, device)
            .with_context(|| format!("cannot load the model in {}", self.dir.display()))?;
        let mut info = ModelInfo::in_memory(&classifier, backend.name());
        info.name = self.dir.file_name().map_or_else(|| self.dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        info.classes = classes;
        if let Err(why) = info.read_report(&self.dir) {
            note!("note: {why}");
        }
        let (dir, kernels) = (self.dir.display().to_string(), classifier.kernels_in_use());
        mnist_serve::serve_blocking(classifier, info, &self.config, self.addr, |addr| {
            say!("serving {dir} on {} ({}; {kernels})", url(addr), backend.name());
            if !addr.ip().is_loopback() {
                note!("note: listening on {addr}: every machine that can reach this one can use the server");
            }
            say!("open the page in a browser; Ctrl-C stops");
        })?;
        say!("stopped");
        Ok(())
    }
}

/// The page's address, as a browser takes it (`0.0.0.0` is not one to open).
fn url(addr: std::net::SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/", addr.port())
}

/// One measurement of the server under load, as `mnist bench serve` prints it.
pub use mnist_bench::ServeMeasurement;

/// The open files `concurrency` requests in flight take here, where the client and the
/// server are one process: a socket at each end, and some to spare.
fn open_files_needed(concurrency: usize) -> u64 {
    2 * concurrency as u64 + 64
}

/// Raises this process's open-file limit (the soft one, up to the hard one) to what
/// `concurrency` requests need, and warns when it cannot: short of it, connections wait for
/// a free file or fail, and the figures measure that (a limit of 256, macOS's default, at
/// 128 in flight gave 91 requests/s against 1,551).
fn open_files_for(concurrency: usize) {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let need = open_files_needed(concurrency);
        let limit = getrlimit(Resource::Nofile);
        let Some(current) = limit.current.filter(|c| *c < need) else { return };
        let raised = limit.maximum.map_or(need, |max| need.min(max));
        if raised > current && setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(raised), maximum: limit.maximum }).is_ok() && raised >= need {
            return;
        }
        let now = getrlimit(Resource::Nofile).current.unwrap_or(current);
        note!(
            "warning: the open-file limit is {now}, below the {need} that {concurrency} requests in flight take here (the client and the server are this one process): connections will wait or fail. Raise it (`ulimit -n {need}`) or lower --concurrency"
        );
    }
    #[cfg(not(unix))]
    let _ = concurrency;
}

/// `mnist bench serve`: the server on the seed network (freshly initialised) on
/// 127.0.0.1:0, and `args.repeats` PNG requests of the sample's test digits, after a
/// warm-up of `args.warmup` x concurrency requests.
pub(crate) fn bench(args: &BenchArgs, backend: BackendKind, test: &Split) -> Result<ServeMeasurement> {
    dispatch(backend, BenchJob { args, test })
}

struct BenchJob<'a> {
    args: &'a BenchArgs,
    test: &'a Split,
}

impl Job for BenchJob<'_> {
    type Output = ServeMeasurement;
    const ON_WORKER: bool = false;

    fn run<B: AutodiffBackend>(self, device: &B::Device, backend: BackendKind) -> Result<ServeMeasurement> {
        let args = self.args;
        let config = args.batching.config();
        config.check()?;
        let model = CnnConfig::new().init::<B::InnerBackend>(1, device)?;
        let classifier = Classifier::from_model(model, Manifest::from_config(CnnConfig::new()), device)?;
        let info = ModelInfo::in_memory(&classifier, backend.name());
        let device_name = format!("{} ({device:?})", <B::InnerBackend as Backend>::name(device));
        let bodies: Vec<load::Body> = (0..self.test.len().min(500)).map(|i| load::png(self.test.image(i), None)).collect();
        open_files_for(args.concurrency);
        let (router, stats) = mnist_serve::router(classifier, info, &config)?;
        // The server on a runtime of its own, as `mnist serve` runs it; the load on another.
        let server = mnist_serve::runtime()?;
        let listener = server.block_on(mnist_serve::bind(([127, 0, 0, 1], 0).into()))?;
        let url = format!("http://{}/api/predict", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = server.spawn(mnist_serve::serve(listener, router, async {
            let _ = stopped.await;
        }));
        let client = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let warmup = LoadConfig { requests: args.warmup * args.concurrency, concurrency: args.concurrency, max_seconds: 30.0 };
        if warmup.requests > 0 {
            client.block_on(load::run(&url, bodies.clone(), warmup))?;
        }
        let (images_before, batches_before) = (stats.images.load(std::sync::atomic::Ordering::Relaxed), stats.batches.load(std::sync::atomic::Ordering::Relaxed));
        let timed = LoadConfig { requests: args.repeats, concurrency: args.concurrency, max_seconds: 120.0 };
        let report = client.block_on(load::run(&url, bodies, timed))?;
        let images = stats.images.load(std::sync::atomic::Ordering::Relaxed) - images_before;
        let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed) - batches_before;
        let _ = stop.send(());
        server.block_on(serving).context("the server task failed")??;
        Ok(ServeMeasurement {
            system: "mnist-rs".into(),
            backend: backend.name().into(),
            device: device_name,
            measure: "serve".into(),
            body: "PNG, 28x28 grayscale, of the bundled sample's test digits".into(),
            max_batch: config.max_batch,
            batch_wait_us: config.batch_wait_us,
            load: report,
            mean_batch: if batches > 0 { images as f64 / batches as f64 } else { 0.0 },
            commit: crate::BUILD_COMMIT.map(str::to_string),
            cpu: mnist_bench::cpu_model(),
            simd: Some(mnist_kernels::simd().name().to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_address_is_one_a_browser_opens() {
        assert_eq!(url("127.0.0.1:8080".parse().unwrap()), "http://127.0.0.1:8080/");
        assert_eq!(url("0.0.0.0:80".parse().unwrap()), "http://127.0.0.1:80/");
        assert_eq!(url("[::1]:9000".parse().unwrap()), "http://[::1]:9000/");
    }

    /// Batching settings past the server's range are command-line mistakes (exit status 2,
    /// the flag named), not errors of the server starting (status 1).
    #[test]
    fn batching_flags_out_of_range_are_command_line_mistakes() {
        use clap::Parser;
        let parse = |args: &[&str]| crate::Cli::try_parse_from(["mnist"].iter().chain(args));
        for (args, flag, says) in [
            (&["serve", "--max-batch", "100000000"][..], "--max-batch", "100000000 is too large: the most is 4096 images"),
            (&["serve", "--max-batch", "0"][..], "--max-batch", "must be a positive integer"),
            (&["serve", "--batch-wait-us", "99999999999"][..], "--batch-wait-us", "99999999999 is too large: the most is 1000000 microseconds"),
            (&["bench", "serve", "--max-batch", "4097"][..], "--max-batch", "4097 is too large"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            let text = e.to_string();
            assert!(text.contains(flag) && text.contains(says), "{args:?}: {text}");
        }
        for args in [&["serve", "--max-batch", "4096", "--batch-wait-us", "1000000"][..], &["serve", "--max-batch", "1", "--batch-wait-us", "0"][..]] {
            let cli = parse(args).unwrap();
            let crate::Command::Serve(serve) = cli.command else { panic!("{args:?}: not serve") };
            serve.batching.config().check().unwrap();
        }
    }
}
