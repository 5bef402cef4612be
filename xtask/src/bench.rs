//! `cargo xtask bench`: the criterion benchmarks of the workspace, in the one release-like
//! profile the tests use.

use std::process::Command;

use anyhow::{Context, Result, bail};

pub fn run(args: &[String]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["bench", "--workspace", "--benches", "--"])
        .args(args)
        .status()
        .context("cannot run cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed");
    }
    Ok(())
}
