//! `cargo xtask train | eval | predict`: builds the `mnist` binary in release with only
//! the backend asked for (`--backend`, default flex) and runs it with the same arguments.

use std::process::Command;

use anyhow::{Context, Result, bail};

const BACKENDS: [&str; 3] = ["flex", "ndarray", "wgpu"];

/// Runs `mnist <command> <args>` built with the backend named in `args`.
pub fn run(command: &str, args: &[String]) -> Result<()> {
    let backend = backend_of(args)?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "--release", "--quiet", "--package", "mnist-cli", "--bin", "mnist"])
        .args(["--no-default-features", "--features", backend])
        .arg("--")
        .arg(command)
        .args(args)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        // mnist has printed its error; pass its exit code on.
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// The value of `--backend X` or `--backend=X`, default `flex`.
fn backend_of(args: &[String]) -> Result<&'static str> {
    let mut value = None;
    for (i, a) in args.iter().enumerate() {
        if a == "--backend" {
            value = Some(args.get(i + 1).map(String::as_str).unwrap_or(""));
        } else if let Some(v) = a.strip_prefix("--backend=") {
            value = Some(v);
        }
    }
    match value {
        None => Ok("flex"),
        Some(v) => match BACKENDS.iter().find(|b| **b == v) {
            Some(b) => Ok(b),
            None => bail!("unknown backend {v:?}; expected one of: {}", BACKENDS.join(", ")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::backend_of;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn backend_is_found_in_either_form() {
        assert_eq!(backend_of(&args(&["--steps", "5"])).unwrap(), "flex");
        assert_eq!(backend_of(&args(&["--backend", "wgpu"])).unwrap(), "wgpu");
        assert_eq!(backend_of(&args(&["--backend=ndarray", "x"])).unwrap(), "ndarray");
        assert!(backend_of(&args(&["--backend", "cuda"])).unwrap_err().to_string().contains("cuda"));
        assert!(backend_of(&args(&["--backend"])).is_err());
    }
}
