//! Integration tests of the mnist-rs workspace, in one test binary.
//!
//! Each test builds its own fixtures in a temporary directory (or reads the committed
//! cases under `tests/cases/`). Tests that need something from the system (Debian's
//! Fashion-MNIST, a wgpu adapter, Chromium) are `#[ignore]`d with the reason, so a plain
//! `cargo test` lists them as ignored instead of passing them silently; the full suite,
//! `cargo test --release --workspace -- --include-ignored`, runs them and they fail when
//! what they need is missing.
#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod backends;
mod cases;
mod cuda;
mod data;
mod end_to_end;
mod serve;
mod serve_http;
mod wgpu;
