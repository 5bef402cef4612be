//! The cuda backend from the command line: on a machine without an NVIDIA driver or
//! device it is a clear error naming what was looked for and the other backends, never a
//! panic; with one it trains.

use std::path::Path;

use clap::Parser;
use mnist_cli::{Cli, Status, run};

#[test]
fn cuda_without_a_device_is_a_clear_error_and_with_one_it_trains() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let args = ["mnist", "train", "--backend", "cuda", "--dataset", "sample", "--steps", "20", "--out", out.to_str().unwrap(), "--plain"];
    let result = run(Cli::try_parse_from(args).unwrap());
    if Path::new("/proc/driver/nvidia").exists() {
        assert_eq!(result.unwrap(), Status::Success);
        assert!(out.join("model.mpk").exists());
    } else {
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.contains("no CUDA device found"), "{err}");
        assert!(err.contains("--backend wgpu") && err.contains("--backend flex"), "{err}");
        // Nothing was written for a run that never started.
        assert!(!out.exists(), "{} was created", out.display());
    }
}
