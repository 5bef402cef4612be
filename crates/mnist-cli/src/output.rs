//! Printing that a closed pipe cannot turn into a panic.
//!
//! `println!` panics when standard output is gone (`mnist predict ... | head -1` closes it
//! after one line): [`say!`] writes a line and remembers the first failure instead, after
//! which it writes nothing more, and [`note!`] writes to standard error and ignores a
//! failure. Commands ask [`stdout_closed`] to stop early and quietly. Any other failure (a
//! full disk: `> /dev/full`) is kept for [`write_failure`], so the command ends in an
//! error instead of a success whose output was lost.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILURE: OnceLock<String> = OnceLock::new();

/// Writes one line to standard output; `false` once standard output cannot be written.
pub fn say_line(args: std::fmt::Arguments<'_>) -> bool {
    if CLOSED.load(Ordering::Relaxed) {
        return false;
    }
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
    if let Err(e) = &written {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = FAILURE.set(e.to_string());
        }
    }
    written.is_ok()
}

/// Writes one line to standard error, ignoring a failure (there is nowhere left to say it).
pub fn note_line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// Whether a write to standard output has failed (a closed pipe, a full disk).
pub fn stdout_closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Why writing to standard output failed, when it was not a closed pipe (a reader that
/// went away, which is no error).
pub fn write_failure() -> Option<&'static str> {
    FAILURE.get().map(String::as_str)
}

/// `println!` that returns `false` instead of panicking when standard output is closed.
macro_rules! say {
    ($($arg:tt)*) => { $crate::output::say_line(format_args!($($arg)*)) };
}

/// `eprintln!` that ignores a closed standard error.
macro_rules! note {
    ($($arg:tt)*) => { $crate::output::note_line(format_args!($($arg)*)) };
}

pub(crate) use {note, say};
