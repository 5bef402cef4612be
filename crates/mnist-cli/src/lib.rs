//! The `mnist` command: train, evaluate, predict with, serve and benchmark the Deep MNIST
//! network.
//!
//! `main.rs` parses the arguments into a [`Cli`] and calls [`run`]; the integration tests
//! call the same function. Each backend is a cargo feature (`flex`, the default,
//! `ndarray`, `wgpu`, `cuda`), so a CPU user never compiles a GPU backend.

mod backend;
mod bench;
mod commands;
mod hints;
mod memory;
mod output;
mod serve;
mod train;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

pub use backend::{BackendKind, jobs_on_workers};
pub use bench::Measurement;
pub use hints::hint;
pub use memory::out_of_memory;
pub use train::COMMAND_ENV;

/// The git commit this binary was built from (`-dirty` when tracked files differed from
/// it at build time); `None` when it was not built from a git checkout.
pub const BUILD_COMMIT: Option<&str> = option_env!("MNIST_RS_COMMIT");

/// Command-line interface.
#[derive(Debug, Parser)]
#[command(name = "mnist", version, about = "Train, evaluate and use the Deep MNIST for Experts network")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// [`Parser::try_parse_from`], and what clap cannot check alone: an option of `mnist
    /// bench` that the measurement named does not use is refused (exit status 2, as any
    /// mistake of the command line), not ignored; `bench latency --concurrency 8` measured
    /// one image at a time without a word. `main` parses with this.
    pub fn try_parse_checked_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let mut command = Cli::command();
        let matches = command.try_get_matches_from_mut(args)?;
        let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
        if let (Command::Bench(bench), Some(("bench", given))) = (&cli.command, matches.subcommand())
            && let Some(message) = bench.unused(|id| given.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
            && let Some(sub) = command.find_subcommand_mut("bench")
        {
            return Err(sub.error(clap::error::ErrorKind::ArgumentConflict, message));
        }
        Ok(cli)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a network and write its artifact directory.
    Train(TrainArgs),
    /// Evaluate a trained network on a test split.
    Eval(EvalArgs),
    /// Classify image files (PNG, JPEG, ...) with a trained network.
    Predict(PredictArgs),
    /// Serve a trained network over HTTP: a page to draw digits on, and a JSON API
    /// (POST /api/predict, GET /api/model, GET /healthz).
    Serve(ServeArgs),
    /// Measure training or evaluation throughput, single-image latency, or the HTTP
    /// server under load, of the seed network (freshly initialised, on the bundled
    /// sample) and print it as JSON.
    Bench(BenchArgs),
}

/// Where the data comes from.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// mnist, fashion or sample. Default for training: the config's `dataset`, else on
    /// --resume the run's, else full MNIST if found or downloadable, else the bundled
    /// sample; for eval: the dataset the model was trained on.
    #[arg(long, value_parser = dataset_name)]
    pub dataset: Option<String>,
    /// Directory holding the dataset's IDX files, gzip or raw (eval needs only the test
    /// split's two `t10k-*` files); also MNIST_DATA_DIR.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// `mnist train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Backend (default: the first compiled in of flex, ndarray, wgpu, cuda).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Training config (JSON); defaults to the seed recipe, configs/seed.json.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset options.
    #[command(flatten)]
    pub data: DataArgs,
    /// Override the number of steps.
    #[arg(long, allow_hyphen_values = true, value_parser = positive::<u64>)]
    pub steps: Option<u64>,
    /// Override the seed.
    #[arg(long, allow_hyphen_values = true, value_parser = non_negative::<u64>)]
    pub seed: Option<u64>,
    /// Artifact directory (default: artifacts/DATASET-YYYYMMDD-HHMMSS, in UTC).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out (default: the newest unfinished run in artifacts/).
    #[arg(long)]
    pub resume: bool,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// How the convolution blocks, the fully connected layers and (on GPUs) the loss are
    /// computed (the same network and results).
    #[arg(long, value_enum, default_value_t = KernelsArg::Fastest)]
    pub kernels: KernelsArg,
}

/// `mnist eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Artifact directory (default: the newest finished run in artifacts/).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Dataset options.
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the evaluation as JSON (default: MODEL/eval.json, or
    /// MODEL/eval-DATASET.json on another dataset than the model's); `-`: standard
    /// output, with the table on standard error.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Test images evaluated at once (default: the run's `eval_batch_size`, from its
    /// config.json, else 500; at most 60000). The accuracy does not depend on it.
    #[arg(long, allow_hyphen_values = true, value_parser = batch_size)]
    pub batch: Option<usize>,
}

impl DataArgs {
    /// Loads the dataset `choice` names (only its test split with `splits`
    /// [`mnist_data::Splits::Test`]), from `--data-dir` (or `MNIST_DATA_DIR`) where it
    /// applies, and prints the loader's notice (a fall-back to the sample) on standard error.
    pub(crate) fn load(&self, choice: mnist_data::DatasetChoice, splits: mnist_data::Splits) -> anyhow::Result<mnist_data::Dataset> {
        if let (Some(dir), mnist_data::DatasetChoice::Exactly(mnist_data::DatasetKind::Sample)) = (&self.data_dir, &choice) {
            output::note!("note: --data-dir {} is not read: the bundled sample is built into mnist", dir.display());
        }
        let locator = mnist_data::Locator { splits, ..mnist_data::Locator::from_env(self.data_dir.clone()) };
        // A directory from the environment, not the command line, is named as such: the
        // variable may have been set long ago.
        let from_env = locator.explicit_dir.clone().filter(|_| self.data_dir.is_none());
        let loaded = locator.load_choice(choice).map_err(|e| match &from_env {
            Some(dir) => anyhow::Error::new(e).context(format!("{}={} (from the environment)", mnist_data::DATA_DIR_ENV, dir.display())),
            None => e.into(),
        })?;
        if let Some(notice) = &loaded.notice {
            // The library names MNIST_DATA_DIR; this program has --data-dir too.
            output::note!("note: {}, or pass --data-dir with it.", notice.strip_suffix('.').unwrap_or(notice));
        }
        Ok(loaded.dataset)
    }
}

/// `--addr`'s value: an IP address or host name with a port, resolved when the arguments
/// are parsed, so that a mistyped one is a command-line mistake (exit status 2).
fn listen_addr(addr: &str) -> std::result::Result<std::net::SocketAddr, String> {
    mnist_serve::resolve(addr).map_err(|e| e.to_string())
}

/// `--dataset`'s value checked when the arguments are parsed, so a misspelt name is a
/// usage error (exit 2) naming the names there are.
fn dataset_name(name: &str) -> std::result::Result<String, String> {
    name.parse::<mnist_data::DatasetChoice>().map(|_| name.to_string()).map_err(|e| e.to_string())
}

/// `mnist predict`.
#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    /// Image files; `-` reads one image from standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Artifact directory (default: the newest finished run in artifacts/).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `mnist serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Artifact directory (default: the newest finished run in artifacts/).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Address to listen on: this machine only by default; 0.0.0.0:PORT for every
    /// interface, port 0 for any free port.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = listen_addr)]
    pub addr: std::net::SocketAddr,
    /// Batching of concurrent requests.
    #[command(flatten)]
    pub batching: BatchingArgs,
}

/// How concurrent requests are batched (`mnist serve`, `mnist bench serve`).
#[derive(Debug, Clone, Args)]
pub struct BatchingArgs {
    /// Most images classified in one forward pass (1: each request alone; at most 4096).
    #[arg(long, default_value_t = 64, allow_hyphen_values = true, value_parser = max_batch)]
    pub max_batch: usize,
    /// Microseconds to wait for requests already on their way (being received or decoded)
    /// before running a batch that is not full (at most 1000000, 1 s).
    #[arg(long, default_value_t = 1000, allow_hyphen_values = true, value_parser = batch_wait_us)]
    pub batch_wait_us: u64,
}

impl BatchingArgs {
    /// The server's config with these settings.
    pub fn config(&self) -> mnist_serve::ServeConfig {
        mnist_serve::ServeConfig::new().with_max_batch(self.max_batch).with_batch_wait_us(self.batch_wait_us)
    }
}

/// `mnist bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub measure: Measure,
    /// Backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Batch size (train and eval; at most 60000, the largest training split: the bundled
    /// sample's 8,000 training images repeat in a larger one).
    #[arg(long, default_value_t = 50, allow_hyphen_values = true, value_parser = batch_size)]
    pub batch: usize,
    /// Timed repetitions (steps, passes over 10,000 images, or predictions).
    #[arg(long, default_value_t = 20, allow_hyphen_values = true, value_parser = positive::<usize>)]
    pub repeats: usize,
    /// Untimed repetitions first (compilation, caches, allocator); `eval` makes at most
    /// one (a whole pass over 10,000 images), `serve` sends this many times --concurrency
    /// requests.
    #[arg(long, default_value_t = 3, allow_hyphen_values = true, value_parser = non_negative::<usize>)]
    pub warmup: usize,
    /// How the convolution blocks, the fully connected layers and (on GPUs) the loss are
    /// computed: as `train --kernels`.
    #[arg(long, value_enum, default_value_t = KernelsArg::Fastest)]
    pub kernels: KernelsArg,
    /// Requests in flight at once (serve).
    #[arg(long, default_value_t = 64, allow_hyphen_values = true, value_parser = positive::<usize>)]
    pub concurrency: usize,
    /// Batching of the server (serve).
    #[command(flatten)]
    pub batching: BatchingArgs,
}

impl BenchArgs {
    /// The first option given on the command line (`given` says which, by clap's id: the
    /// field's name) that this measurement does not use, as the error saying so; `None`
    /// when all are used. `--batch 1` is what `latency` measures, and allowed.
    fn unused(&self, given: impl Fn(&str) -> bool) -> Option<String> {
        let measure = match self.measure {
            Measure::Train => "train",
            Measure::Eval => "eval",
            Measure::Latency => "latency",
            Measure::Serve => "serve",
        };
        let serve_only = [("concurrency", "--concurrency"), ("max_batch", "--max-batch"), ("batch_wait_us", "--batch-wait-us")];
        match self.measure {
            Measure::Latency if given("batch") && self.batch != 1 => Some(format!(
                "`bench latency` classifies one image at a time: --batch {} does not apply (`bench eval --batch {}` measures batches)",
                self.batch, self.batch
            )),
            Measure::Serve if given("batch") => Some(format!(
                "`bench serve` sends single-image requests: --batch does not apply (the server's batching is --max-batch, and `bench eval --batch {}` measures batches)",
                self.batch
            )),
            Measure::Serve if given("kernels") => {
                Some("`bench serve` runs the server as `mnist serve` does, on the fastest kernels: --kernels does not apply".to_string())
            }
            Measure::Serve => None,
            _ => serve_only
                .iter()
                .find(|(id, _)| given(id))
                .map(|(_, flag)| format!("{flag} applies to `bench serve` only: `bench {measure}` sends no requests")),
        }
    }
}

/// What `mnist bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Measure {
    /// Training steps (forward, backward, Adam) per second, times the batch size.
    Train,
    /// Evaluation of 10,000 images, in batches of --batch.
    Eval,
    /// Classifying one image.
    Latency,
    /// `mnist serve` under load: --repeats single-image PNG requests to POST /api/predict
    /// on 127.0.0.1, --concurrency at a time; requests per second and latency.
    Serve,
}

/// `--kernels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelsArg {
    /// mnist-kernels' own kernels where the backend has them: fused CPU kernels on flex,
    /// CubeCL GPU kernels (and the fused loss) on wgpu and cuda; Burn's operations on ndarray.
    Fastest,
    /// Burn's conv2d, relu and max_pool2d.
    Burn,
    /// im2col + matmul made of Burn tensor operations (an alternative for GPUs).
    Im2col,
}

impl From<KernelsArg> for mnist_model::Kernels {
    fn from(arg: KernelsArg) -> Self {
        match arg {
            KernelsArg::Fastest => mnist_model::Kernels::Fastest,
            KernelsArg::Burn => mnist_model::Kernels::Burn,
            KernelsArg::Im2col => mnist_model::Kernels::Im2col,
        }
    }
}

/// An integer of at least 1, for `--steps` and the like: `-5`, `0` or `ten` get a message
/// saying what is expected.
fn positive<T: TryFrom<u128>>(text: &str) -> Result<T, String> {
    at_least(text, 1, "a positive integer (1 or more)")
}

/// An integer of at least 0, for `--seed` and `--warmup`.
fn non_negative<T: TryFrom<u128>>(text: &str) -> Result<T, String> {
    at_least(text, 0, "a non-negative integer (0 or more)")
}

/// `--max-batch`: 1 to [`mnist_serve::MAX_BATCH`] images, checked here so that a mistake
/// is one of the command line (exit status 2, the flag named); `ServeConfig::check` keeps
/// the same range for library callers.
fn max_batch(text: &str) -> Result<usize, String> {
    at_most(text, positive::<usize>, mnist_serve::MAX_BATCH, "images in one forward pass")
}

/// `mnist bench`'s and `mnist eval`'s `--batch`: 1 to
/// [`mnist_train::TrainConfig::MAX_BATCH_SIZE`] images (the largest training split),
/// checked here so that a huge batch is a mistake of the command line (exit status 2, the
/// flag named) instead of gigabytes allocated before a failure; `bench` keeps the same
/// range for library callers.
fn batch_size(text: &str) -> Result<usize, String> {
    at_most(text, positive::<usize>, mnist_train::TrainConfig::MAX_BATCH_SIZE, "images (the largest training split)")
}

/// `--batch-wait-us`: 0 to [`mnist_serve::MAX_BATCH_WAIT_US`] microseconds.
fn batch_wait_us(text: &str) -> Result<u64, String> {
    at_most(text, non_negative::<u64>, mnist_serve::MAX_BATCH_WAIT_US, "microseconds (1 s)")
}

/// `text` parsed by `parse`, if at most `most` (of `unit`), else what the flag's most is;
/// also for a number past `T`'s range (its most would be no use to name).
fn at_most<T: PartialOrd + std::fmt::Display>(text: &str, parse: fn(&str) -> Result<T, String>, most: T, unit: &str) -> Result<T, String> {
    let too_large = |n: &dyn std::fmt::Display| format!("{n} is too large: the most is {most} {unit}");
    match parse(text) {
        Ok(n) if n > most => Err(too_large(&n)),
        Ok(n) => Ok(n),
        // A whole number other than 0 that does not parse is past `T`'s range.
        Err(_) if is_whole_number(text.trim()) && !text.trim().trim_start_matches('+').bytes().all(|b| b == b'0') => Err(too_large(&text.trim())),
        Err(e) => Err(e),
    }
}

fn at_least<T: TryFrom<u128>>(text: &str, least: i128, what: &str) -> Result<T, String> {
    let too_large = |n: &dyn std::fmt::Display| format!("{n} is too large: the most is {}", largest::<T>());
    let digits = text.trim();
    match digits.parse::<i128>() {
        Ok(n) if n >= least => u128::try_from(n).ok().and_then(|n| T::try_from(n).ok()).ok_or_else(|| too_large(&n)),
        Ok(n) => Err(format!("must be {what}, got {n}")),
        // Digits past i128's range: a whole number, only too large.
        Err(_) if is_whole_number(digits) => Err(too_large(&digits)),
        Err(_) => Err(format!("must be {what}, got {text:?}")),
    }
}

/// Digits, with a `+` before them or not.
fn is_whole_number(text: &str) -> bool {
    let digits = text.strip_prefix('+').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The largest value of an unsigned integer type `T` (`u8` to `u128`), for the message of
/// a number past it.
fn largest<T: TryFrom<u128>>() -> u128 {
    [u128::MAX, u64::MAX.into(), u32::MAX.into(), u16::MAX.into(), u8::MAX.into()]
        .into_iter()
        .find(|&max| T::try_from(max).is_ok())
        .unwrap_or(0)
}

/// How a command ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done.
    Success,
    /// Training was stopped by a signal (Ctrl-C, SIGTERM, SIGHUP) after saving a checkpoint.
    Interrupted,
    /// Training stopped after saving a checkpoint because standard output was closed.
    OutputClosed,
    /// Some inputs failed (e.g. an unreadable image among several); each was reported.
    PartialFailure,
}

impl Status {
    /// The process exit status: 0, 1 for a partial failure, 128 + the signal's number
    /// for a signal (130 for Ctrl-C, 143 for SIGTERM), 141 (128 + SIGPIPE) for a closed
    /// standard output.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Success => 0,
            Status::PartialFailure => 1,
            Status::Interrupted => train::interrupted_exit_code(),
            Status::OutputClosed => 141,
        }
    }
}

/// Starts rayon's global pool of worker threads (the CPU backends' and the kernels'), once
/// per process. Left to the first parallel operation, a pool that cannot start (an
/// address-space limit with no room for the threads' stacks, a limit on processes) is a
/// panic there.
fn start_workers() -> Result<()> {
    static STARTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(|| match rayon::ThreadPoolBuilder::new().build_global() {
        Ok(()) => Ok(()),
        // Built already by whoever called first (a test in this process).
        Err(e) if e.to_string().contains("already been initialized") => Ok(()),
        Err(e) => Err(e.to_string()),
    });
    started.clone().map_err(|e| {
        hints::hinted(
            format!("cannot start the worker threads: {e}"),
            "this process's limits (its address space, ulimit -v, or a container's limit on processes or memory) leave no room for more threads: raise them, or run with RAYON_NUM_THREADS=1 for one worker",
        )
    })
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<Status> {
    // A misspelt MNIST_RS_SIMD would otherwise be ignored without a word.
    mnist_kernels::Simd::cap_from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    memory::check_off()?;
    memory::on_out_of_memory(match &cli.command {
        Command::Train(_) => memory::Advice::Batch,
        Command::Bench(_) | Command::Eval(_) => memory::Advice::BatchFlag,
        Command::Serve(_) => memory::Advice::MaxBatch,
        Command::Predict(_) => memory::Advice::Other,
    });
    start_workers()?;
    let status = match cli.command {
        Command::Train(args) => train::train(args),
        Command::Eval(args) => commands::eval(args),
        Command::Predict(args) => commands::predict(args),
        Command::Serve(args) => serve::serve(args),
        Command::Bench(args) => bench::bench(args),
    }?;
    // Output that never arrived is no success (training says so itself, with its checkpoint).
    match (status, output::write_failure()) {
        (Status::Success | Status::PartialFailure, Some(why)) => anyhow::bail!("cannot write standard output: {why}"),
        (status, _) => Ok(status),
    }
}
