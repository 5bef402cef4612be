//! The one error type of `mnist-serve`: what can stop the server from starting or
//! serving, and what a load run can fail with. Errors of single requests are not here:
//! they are answers ([`crate::api::ApiError`]), and the server goes on.

use std::net::SocketAddr;

/// What can go wrong starting the server, serving, or measuring it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address could not be listened on (in use, not this machine's, no permission).
    #[error("cannot listen on {addr}: {source}{}", bind_hint(source))]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The address to listen on is not an address and port.
    #[error("{given:?} is not an address to listen on: {why}")]
    Address {
        /// The address as given.
        given: String,
        /// What is wrong with it, and what was expected.
        why: String,
    },
    /// The server stopped with an I/O error.
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
    /// The inference thread or the async runtime could not be started.
    #[error("cannot start {what}: {source}")]
    Start {
        /// What was being started.
        what: &'static str,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A setting of [`ServeConfig`](crate::ServeConfig) out of its range.
    #[error("{0}")]
    Config(String),
    /// A load run could not reach the server, or had nothing to send.
    #[error("load run: {0}")]
    Load(String),
}

fn bind_hint(source: &std::io::Error) -> &'static str {
    match source.kind() {
        std::io::ErrorKind::AddrInUse => " (another program holds the port; port 0 takes any free one)",
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
        std::io::ErrorKind::AddrNotAvailable => " (the address is not one of this machine's; 127.0.0.1 is this machine only, 0.0.0.0 every interface)",
        _ => "",
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
