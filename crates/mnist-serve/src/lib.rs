//! Serve a trained mnist-rs network over HTTP: a page to draw digits on, and a JSON API.
//!
//! The routes ([`router`]):
//!
//! - `GET /`: the page. Draw with a mouse, pen or finger and the ten probabilities update
//!   as you draw; the 28x28 image the network saw is shown beside them; or drop or pick an
//!   image file. HTML, CSS and JavaScript are embedded in the binary and nothing is loaded
//!   from other hosts.
//! - `POST /api/predict`: an image file as the body (PNG, JPEG, ..., read by content),
//!   a multipart form holding one, or JSON `{"pixels": [784 integers 0-255]}` (the
//!   network's input itself, not preprocessed). Images are preprocessed as
//!   `mnist predict` does ([`mnist_infer::preprocess`]). The answer:
//!   `{"class": 7, "label": "7", "probabilities": [10], "input": [784], "model": {...}}`.
//! - `GET /api/model`: [`ModelInfo`]. `GET /healthz`: `{"status": "ok", ...}` with the
//!   inference thread's counters.
//!
//! Every error is JSON `{"error": "..."}` with its status: 400 for a malformed or empty
//! body (a multipart form without an image file, an empty file), 408 for a body not
//! received within [`ServeConfig::request_timeout_ms`], 413 for one over
//! [`ServeConfig::body_limit`] (at once, unread, when its `Content-Length` says so, and
//! instead of `100 Continue`), 415 for an encoded body (`Content-Encoding` other than
//! `identity`), 422 for an image that cannot be read or shows no digit (the message
//! `mnist predict` gives), 503 with `Retry-After` when the queue is full or the answer is
//! not ready within [`ServeConfig::request_timeout_ms`], 404 and 405 for other paths and
//! methods. No request can take the server down: a panic in a handler or in the network
//! answers 500 and the server goes on. A client that does not send its headers within
//! [`ServeConfig::header_timeout_ms`] is disconnected ([`serve_with`]). Requests hyper
//! cannot parse (a malformed request line: 400, a URL too long: 414) are answered by
//! hyper itself, with an empty body: hyper has no hook to give them one.
//!
//! The network runs on one inference thread, never on the async runtime: requests queue
//! their image and the thread answers whatever is waiting with one forward pass of up to
//! [`ServeConfig::max_batch`] images (see the `batcher` module), since one image costs
//! nearly as much as a small batch. Images are decoded and preprocessed on tokio's
//! blocking pool.
//!
//! [`load`] is the other side: a client that sends many requests at once and measures
//! the rate and the latency, for `mnist bench serve`.
//!
//! ```no_run
//! use burn_flex::Flex;
//! use mnist_infer::Classifier;
//! use mnist_serve::{ModelInfo, ServeConfig};
//!
//! let dir = std::path::Path::new("artifacts/mnist-20261201-120000");
//! let classifier = Classifier::<Flex>::load(dir, &Default::default())?;
//! let info = ModelInfo::new(&classifier, dir, "flex");
//! let config = ServeConfig::new();
//! mnist_serve::serve_blocking(classifier, info, &config, mnist_serve::resolve("127.0.0.1:8080")?, |addr| {
//!     println!("serving on http://{addr}/ (Ctrl-C stops)");
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod api;
mod batcher;
mod error;
pub mod load;
mod page;

use std::future::Future;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;

use burn::config::Config;
use burn::tensor::backend::Backend;
use mnist_infer::Classifier;
use mnist_model::CnnConfig;
use serde::Serialize;

pub use api::{ApiError, UPLOAD};
pub use axum::Router;
pub use batcher::Stats;
pub use error::{Error, Result};

/// The most [`ServeConfig::max_batch`] may be: images in one forward pass.
pub const MAX_BATCH: usize = 4096;

/// The most [`ServeConfig::batch_wait_us`] may be, in microseconds (1 s).
pub const MAX_BATCH_WAIT_US: u64 = 1_000_000;

/// How the server batches, limits and times requests.
#[derive(Config, Debug, PartialEq)]
pub struct ServeConfig {
    /// Most images in one forward pass (1 classifies each request alone).
    #[config(default = 64)]
    pub max_batch: usize,
    /// How long, in microseconds, the inference thread waits for more requests once it
    /// has taken those already queued, when the batch is not full and other requests are
    /// on their way (their body received in full, their image being decoded); 0: never
    /// waits.
    #[config(default = 1000)]
    pub batch_wait_us: u64,
    /// Most images waiting for the inference thread; more get 503.
    #[config(default = 1024)]
    pub queue: usize,
    /// Largest request body, in bytes; more gets 413 (at once, unread, when the
    /// `Content-Length` says so).
    #[config(default = 8388608)]
    pub body_limit: usize,
    /// Longest a prediction may take, in milliseconds, from the request's arrival: a body
    /// not received by then gets 408, an answer not ready by then 503.
    #[config(default = 10000)]
    pub request_timeout_ms: u64,
    /// Longest a client may take to send a request's headers, in milliseconds (and to
    /// start its next request on a kept-alive connection); then its connection is closed.
    #[config(default = 20000)]
    pub header_timeout_ms: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig::new()
    }
}

impl ServeConfig {
    /// Checks every setting's range.
    pub fn check(&self) -> Result<()> {
        let out_of_range = |name: &str, value: String, range: &str| Err(Error::Config(format!("{name} is {value}; expected {range}")));
        if !(1..=MAX_BATCH).contains(&self.max_batch) {
            return out_of_range("max_batch", self.max_batch.to_string(), &format!("1 to {MAX_BATCH} images"));
        }
        if self.batch_wait_us > MAX_BATCH_WAIT_US {
            return out_of_range("batch_wait_us", self.batch_wait_us.to_string(), &format!("0 to {MAX_BATCH_WAIT_US} microseconds (1 s)"));
        }
        if self.queue == 0 {
            return out_of_range("queue", "0".into(), "at least 1 image");
        }
        if self.body_limit < 1024 {
            return out_of_range("body_limit", self.body_limit.to_string(), "at least 1024 bytes");
        }
        if self.request_timeout_ms == 0 {
            return out_of_range("request_timeout_ms", "0".into(), "at least 1 millisecond");
        }
        if self.header_timeout_ms == 0 {
            return out_of_range("header_timeout_ms", "0".into(), "at least 1 millisecond");
        }
        Ok(())
    }
}

/// What `GET /api/model` says of the network served.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    /// The artifact directory's name (`mnist-20261201-120000`), or `"in memory"`.
    pub name: String,
    /// The dataset it was trained on (`mnist`, `fashion`, `sample`), when recorded.
    pub dataset: Option<String>,
    /// The name of each class, by index.
    pub classes: Vec<String>,
    /// Accuracy on the test split, from the training's `report.json`, when there is one.
    pub test_accuracy: Option<f64>,
    /// Training steps, from `report.json`.
    pub steps: Option<u64>,
    /// The backend it runs on (`flex`, `wgpu`, ...).
    pub backend: String,
    /// Which implementation runs each part of the network.
    pub kernels: String,
    /// The network's sizes.
    pub config: CnnConfig,
}

impl ModelInfo {
    /// Describes `classifier`, loaded from `dir`, running on `backend`; the test accuracy
    /// and steps are read from `dir/report.json` when it is there and readable (it is
    /// informative only: use [`ModelInfo::read_report`] to hear why it is not).
    pub fn new<B: Backend>(classifier: &Classifier<B>, dir: &Path, backend: &str) -> Self {
        let mut info = Self::in_memory(classifier, backend);
        info.name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let _ = info.read_report(dir);
        info
    }

    /// Describes a network built in memory (no directory, no report).
    pub fn in_memory<B: Backend>(classifier: &Classifier<B>, backend: &str) -> Self {
        let manifest = classifier.manifest();
        ModelInfo {
            name: "in memory".into(),
            dataset: manifest.dataset.clone(),
            classes: (0..classifier.config().classes).map(|c| classifier.class_name(c)).collect(),
            test_accuracy: None,
            steps: None,
            backend: backend.into(),
            kernels: classifier.kernels_in_use().to_string(),
            config: classifier.config().clone(),
        }
    }

    /// Reads the test accuracy and steps from `dir/report.json`; the error says why
    /// they are not known (no report, or one that cannot be read).
    pub fn read_report(&mut self, dir: &Path) -> std::result::Result<(), String> {
        let path = dir.join(mnist_model::artifact::REPORT);
        let text = mnist_fs::read_to_string_capped(&path, mnist_fs::MAX_JSON_BYTES).map_err(|e| format!("{}: {e}; the page shows no test accuracy", path.display()))?;
        let report: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON ({e}); the page shows no test accuracy", path.display()))?;
        self.test_accuracy = report["test"]["accuracy"].as_f64();
        self.steps = report["steps"].as_u64();
        if self.test_accuracy.is_none() {
            return Err(format!("{}: no test.accuracy; the page shows no test accuracy", path.display()));
        }
        Ok(())
    }

    /// The name of class `class`.
    pub fn class_name(&self, class: usize) -> String {
        self.classes.get(class).cloned().unwrap_or_else(|| class.to_string())
    }
}

/// The whole service for `classifier`: starts its inference thread and returns the
/// routes. The thread stops when the router (and every clone of it) is dropped.
///
/// # Errors
/// [`Error::Config`] for a setting out of range, [`Error::Start`] when the thread cannot
/// be started.
pub fn router<B: Backend>(classifier: Classifier<B>, info: ModelInfo, config: &ServeConfig) -> Result<(Router, Arc<Stats>)>
where
    Classifier<B>: Send + 'static,
{
    config.check()?;
    let batcher = batcher::Batcher::start(classifier, config)?;
    let stats = Arc::clone(batcher.stats());
    Ok((api::router(batcher, Arc::new(info), config), stats))
}

/// The address `addr` names: `IP:PORT`, or `HOST:PORT` resolved (the first address).
///
/// # Errors
/// [`Error::Address`], saying what is wrong: a scheme (`http://`), a port alone, a port
/// above 65535, a host that does not resolve, no port.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    if let Ok(addr) = addr.parse() {
        return Ok(addr);
    }
    let expected = "expected IP:PORT or HOST:PORT, such as 127.0.0.1:8080 or localhost:8080";
    let bad = |why: String| Error::Address { given: addr.to_string(), why };
    if let Some((scheme, rest)) = addr.split_once("://") {
        return Err(bad(format!("leave out `{scheme}://`; {expected} (`{}`)", rest.trim_end_matches('/'))));
    }
    if !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("a port alone; give the address too: 127.0.0.1:{addr} (this machine only) or 0.0.0.0:{addr} (every interface)")));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad(format!("no port; {expected}")));
    };
    match port.parse::<u64>() {
        Ok(p) if p > u64::from(u16::MAX) => return Err(bad(format!("port {p} is above 65535"))),
        Ok(_) => {}
        Err(_) => return Err(bad(format!("{port:?} is not a port number; {expected}"))),
    }
    match addr.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| bad(format!("the host {host:?} has no address"))),
        Err(e) => Err(bad(format!("the host {host:?} does not resolve ({e}); {expected}"))),
    }
}

/// Listens on `addr` (port 0: any free port; the listener says which).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes the requests
/// under way; with the default [`ServeConfig::header_timeout_ms`] (see
/// [`serve_with`]).
pub async fn serve(listener: tokio::net::TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    serve_with(listener, router, &ServeConfig::new(), shutdown).await
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes the requests
/// under way. Each connection is hyper's HTTP/1 with `config`'s header read timeout: a
/// client that does not send its request's headers within
/// [`ServeConfig::header_timeout_ms`] (or, kept alive, does not start its next request)
/// is dropped, so that stalled clients cannot hold connections open.
///
/// # Errors
/// None today (a failed accept is retried, a failed connection is that client's); the
/// `Result` is for the listener's future errors.
pub fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = Result<()>> + Send + 'static {
    use axum::serve::Listener;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let header_timeout = std::time::Duration::from_millis(config.header_timeout_ms);
    async move {
        let mut listener = listener;
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // axum's accept retries what can be retried (a connection reset before it was
            // accepted, too many open files) and never fails.
            let (stream, _) = tokio::select! {
                accepted = Listener::accept(&mut listener) => accepted,
                () = &mut shutdown => break,
            };
            // The router takes hyper's request body as it is (`Router: Service<Request<B>>`).
            let service = TowerToHyperService::new(router.clone());
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            // A connection's error (the client went away, its request was malformed and
            // answered 400, its headers did not come in time) concerns that client only.
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
        drop(listener);
        graceful.shutdown().await;
        Ok(())
    }
}

/// Completes on Ctrl-C, or on SIGTERM on Unix.
pub async fn stop_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// The server as a command runs it: a runtime of its own, listening on `addr` (see
/// [`resolve`] for a host name), calling
/// `ready` with the address once it listens, serving until Ctrl-C or SIGTERM.
pub fn serve_blocking<B: Backend>(
    classifier: Classifier<B>,
    info: ModelInfo,
    config: &ServeConfig,
    addr: SocketAddr,
    ready: impl FnOnce(SocketAddr),
) -> Result<()>
where
    Classifier<B>: Send + 'static,
{
    let runtime = runtime()?;
    let (router, _) = router(classifier, info, config)?;
    runtime.block_on(async {
        let listener = bind(addr).await?;
        ready(listener.local_addr().unwrap_or(addr));
        let timeout_s = config.request_timeout_ms.div_ceil(1000);
        let stopping = async move {
            stop_signal().await;
            // A request still arriving is waited for until its time runs out: say so.
            let _ = writeln!(std::io::stderr(), "stopping: finishing the requests under way (each has at most {timeout_s} s); a second Ctrl-C or signal quits at once");
            tokio::spawn(async {
                stop_signal().await;
                std::process::exit(130);
            });
        };
        serve_with(listener, router, config, stopping).await
    })
}

/// A multi-threaded tokio runtime, one worker per core.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mnist-serve")
        .build()
        .map_err(|source| Error::Start { what: "the async runtime", source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_named() {
        ServeConfig::new().check().unwrap();
        let message = |config: ServeConfig| config.check().unwrap_err().to_string();
        assert_eq!(message(ServeConfig::new().with_max_batch(0)), "max_batch is 0; expected 1 to 4096 images");
        assert!(message(ServeConfig::new().with_queue(0)).contains("queue is 0"));
        assert!(message(ServeConfig::new().with_body_limit(10)).contains("at least 1024 bytes"));
        assert!(message(ServeConfig::new().with_batch_wait_us(5_000_000)).contains("batch_wait_us"));
        assert!(message(ServeConfig::new().with_request_timeout_ms(0)).contains("request_timeout_ms"));
        assert!(message(ServeConfig::new().with_header_timeout_ms(0)).contains("header_timeout_ms"));
        assert!(ServeConfig::new().with_max_batch(MAX_BATCH).with_batch_wait_us(MAX_BATCH_WAIT_US).check().is_ok());
    }

    #[test]
    fn addresses_are_ip_and_port_or_a_host_name() {
        assert_eq!(resolve("127.0.0.1:8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(resolve("[::1]:0").unwrap(), "[::1]:0".parse().unwrap());
        assert!(resolve("localhost:8080").unwrap().ip().is_loopback());
        for (bad, why) in [
            ("8080", "a port alone; give the address too: 127.0.0.1:8080 (this machine only) or 0.0.0.0:8080"),
            ("127.0.0.1", "no port; expected IP:PORT or HOST:PORT"),
            ("nonsense:port", "\"port\" is not a port number; expected IP:PORT or HOST:PORT"),
            ("", "no port"),
            ("127.0.0.1:99999", "port 99999 is above 65535"),
            ("http://127.0.0.1:8080/", "leave out `http://`; expected IP:PORT or HOST:PORT, such as 127.0.0.1:8080 or localhost:8080 (`127.0.0.1:8080`)"),
            ("nosuchhost.invalid:8080", "the host \"nosuchhost.invalid\" does not resolve"),
        ] {
            let e = resolve(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{bad:?} is not an address to listen on: ")) && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_port_in_use_is_named_with_a_way_out() {
        runtime().unwrap().block_on(async {
            let first = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let taken = first.local_addr().unwrap();
            let e = bind(taken).await.unwrap_err().to_string();
            assert!(e.starts_with(&format!("cannot listen on {taken}: ")), "{e}");
            assert!(e.contains("(another program holds the port; port 0 takes any free one)"), "{e}");
        });
    }
}
