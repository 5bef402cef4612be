//! Integration tests of the mnist-rs workspace, in one test binary.
//!
//! Each test builds its own fixtures in a temporary directory. Tests that need data from
//! the system (Debian's Fashion-MNIST) skip when it is absent, except when `MNIST_RS_CI`
//! is set (as `.ci/run` does): then a skip is a failure.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod backends;
mod data;
mod end_to_end;
mod wgpu;

/// Whether a missing system fixture must fail the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var_os("MNIST_RS_CI").is_some_and(|v| !v.is_empty() && v != "0")
}
