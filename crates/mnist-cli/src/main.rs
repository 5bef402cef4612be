//! `mnist`: train, evaluate and predict with the Deep MNIST for Experts network.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use mnist_cli::{Cli, run};

// burn-flex allocates and frees tens of megabytes per training step; with glibc's
// allocator those pages go back to the kernel and fault in again each time (about 30%
// of a step, measured).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(status) => ExitCode::from(status.exit_code()),
        Err(e) => {
            // Standard error may be a closed pipe too: nothing is left to tell then.
            let hint = mnist_cli::hint(&e).map(|h| format!("\nhint: {h}")).unwrap_or_default();
            let _ = writeln!(std::io::stderr(), "error: {}{hint}", message(&e));
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
