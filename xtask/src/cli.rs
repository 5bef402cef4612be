//! `cargo xtask train | eval | predict | serve`: builds the `mnist` binary in release with only
//! the backend asked for (`--backend`, default flex) and runs it with the same arguments.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

const BACKENDS: [&str; 4] = ["flex", "ndarray", "wgpu", "cuda"];

/// Runs `mnist <command> <args>` built with the backend named in `args`. Cargo's own
/// progress is shown while it builds (the first build of Burn takes several minutes);
/// `mnist` then runs with `MNIST_RS_COMMAND=cargo xtask`, so the hints it prints name the
/// command the user typed.
pub fn run(command: &str, args: &[String]) -> Result<()> {
    let backend = backend_of(args)?;
    let binary = build(backend)?;
    let status = Command::new(&binary)
        .arg(command)
        .args(args)
        .env("MNIST_RS_COMMAND", "cargo xtask")
        .status()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !status.success() {
        // mnist has printed its error; pass its exit code on.
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// Builds `mnist` in release with only `backend`'s feature and returns its path.
pub fn build(backend: &str) -> Result<PathBuf> {
    eprintln!("building mnist with the {backend} backend (release: several minutes the first time, seconds once built)");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--package", "mnist-cli", "--bin", "mnist"])
        .args(["--no-default-features", "--features", backend])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!("building mnist failed (cargo's messages are above)");
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "mnist")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built mnist but did not say where the binary is")
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
        Some("") => bail!("--backend needs a value; expected one of: {}", BACKENDS.join(", ")),
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
        assert_eq!(backend_of(&args(&["--backend", "cuda"])).unwrap(), "cuda");
        let err = backend_of(&args(&["--backend", "metal"])).unwrap_err().to_string();
        assert!(err.contains("unknown backend \"metal\"") && err.contains("flex, ndarray, wgpu, cuda"), "{err}");
        assert!(backend_of(&args(&["--backend"])).unwrap_err().to_string().contains("--backend needs a value"));
        assert!(backend_of(&args(&["--backend="])).unwrap_err().to_string().contains("--backend needs a value"));
    }
}
