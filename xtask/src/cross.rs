//! `cargo xtask test-aarch64`: the CPU kernels' tests (mnist-kernels) built for
//! `aarch64-unknown-linux-gnu` and run under QEMU's user-mode emulator, so that the NEON
//! kernels are held to the portable ones on an x86 machine (and in CI).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::root;

/// The Rust target the NEON kernels are tested on.
pub const TARGET: &str = "aarch64-unknown-linux-gnu";
/// The cross linker (Debian's `gcc-aarch64-linux-gnu`).
const LINKER: &str = "aarch64-linux-gnu-gcc";
/// QEMU's user-mode emulator (Debian's `qemu-user`).
const QEMU: &str = "qemu-aarch64";
/// The aarch64 C library the emulator loads programs against (installed with the linker).
const SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// Builds and runs mnist-kernels' unit tests for aarch64 (`cargo test --release -p
/// mnist-kernels --lib --target aarch64-unknown-linux-gnu`), with `args` passed to the
/// test binary.
///
/// # Errors
/// When the Rust target, the cross linker or QEMU is missing (naming what to install),
/// or when the tests fail.
pub fn run(args: &[String]) -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(out) if out.status.success() && !String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == TARGET) => {
            bail!("the Rust target {TARGET} is not installed: run `rustup target add {TARGET}`");
        }
        // Without rustup (a distribution's Rust) cargo itself says whether it has the target.
        _ => {}
    }
    for (tool, package) in [(LINKER, "gcc-aarch64-linux-gnu"), (QEMU, "qemu-user")] {
        if !on_path(tool) {
            bail!("`{tool}` was not found on PATH: install Debian's {package} (apt-get install {package})");
        }
    }
    if !Path::new(SYSROOT).is_dir() {
        bail!("{SYSROOT} is missing: install Debian's gcc-aarch64-linux-gnu (it brings the aarch64 C library)");
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args(["test", "--release", "-p", "mnist-kernels", "--lib", "--target", TARGET, "--"])
        .args(args)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", LINKER)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER", format!("{QEMU} -L {SYSROOT}"))
        .env("CC_aarch64_unknown_linux_gnu", LINKER)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("the aarch64 tests failed ({status})");
    }
    Ok(())
}

/// Whether `tool` is an executable file in a directory of `PATH`.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
