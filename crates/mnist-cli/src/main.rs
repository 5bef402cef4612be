//! `mnist`: train, evaluate and predict with the Deep MNIST for Experts network.

use std::alloc::{GlobalAlloc, Layout};
use std::io::Write;
use std::process::ExitCode;

use mnist_cli::{Cli, run};

// burn-flex allocates and frees tens of megabytes per training step; with glibc's
// allocator those pages go back to the kernel and fault in again each time (about 30%
// of a step, measured).
#[global_allocator]
static ALLOCATOR: Reporting = Reporting(mimalloc::MiMalloc);

/// mimalloc, and an `error:` line with a hint instead of Rust's abort (exit 134) when the
/// system refuses memory (a batch too large for an address-space limit or a machine
/// without overcommit): `mnist_cli::out_of_memory`'s message, then exit status 1.
struct Reporting(mimalloc::MiMalloc);

/// `p`, or when the system refused the `size` bytes asked for (null), the message and exit;
/// allocates nothing.
#[inline]
fn granted(p: *mut u8, size: usize) -> *mut u8 {
    if p.is_null() {
        refused(size);
    }
    p
}

#[cold]
fn refused(size: usize) -> ! {
    mnist_cli::out_of_memory(size, &mut std::io::stderr().lock());
    std::process::exit(1)
}

// SAFETY: every call goes to mimalloc unchanged; a null pointer only ends the process.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Reporting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        granted(unsafe { self.0.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        granted(unsafe { self.0.alloc_zeroed(layout) }, layout.size())
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        granted(unsafe { self.0.realloc(ptr, layout, new_size) }, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

fn main() -> ExitCode {
    // One job per process: each runs on a worker thread (see `jobs_on_workers`).
    mnist_cli::jobs_on_workers();
    let cli = match Cli::try_parse_checked_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    match run(cli) {
        Ok(status) => ExitCode::from(status.exit_code()),
        Err(e) => {
            // Standard error may be a closed pipe too: nothing is left to tell then.
            let hint = mnist_cli::hint(&e).map(|h| format!("\nhint: {h}")).unwrap_or_default();
            let _ = writeln!(std::io::stderr(), "error: {}{hint}", message(&e));
            ExitCode::from(1)
        }
    }
}

/// What clap says for the command line it did not run: a usage error on standard error
/// (exit 2), or the help or version asked for on standard output (exit 0), which, when it
/// cannot be written (a full disk; a reader gone away is no error), is an `error:` line
/// and exit 1, as any other command's output.
fn usage(e: &clap::Error) -> ExitCode {
    match e.print() {
        Err(w) if !e.use_stderr() && w.kind() != std::io::ErrorKind::BrokenPipe => {
            let _ = writeln!(std::io::stderr(), "error: cannot write standard output: {w}");
            ExitCode::from(1)
        }
        _ => ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2)),
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
