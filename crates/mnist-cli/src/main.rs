//! `mnist`: train, evaluate and predict with the Deep MNIST for Experts network.

use std::process::ExitCode;

use clap::Parser;
use mnist_cli::{Cli, Status, run};

// burn-flex allocates and frees tens of megabytes per training step; with glibc's
// allocator those pages go back to the kernel and fault in again each time (about 30%
// of a step, measured).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(Status::Success) => ExitCode::SUCCESS,
        Ok(Status::PartialFailure) => ExitCode::from(1),
        Ok(Status::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line, leaving out a cause its parent's message already
/// quotes (the library errors put their I/O cause in their own message).
fn message(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
