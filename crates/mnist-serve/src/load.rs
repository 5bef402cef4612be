//! A load generator for the API: many requests at once against a running server, the
//! rate and latency they got, and how many failed.
//!
//! [`run`] keeps `concurrency` requests in flight (each on a connection of its own, kept
//! alive) until `requests` have been sent or `max_seconds` have passed, checks every
//! answer (status 200, ten probabilities summing to 1, and the expected class where one
//! is given) and reports the requests per second and the latency percentiles of the
//! requests answered well ([`LoadReport`]). `mnist bench serve` and the integration tests use it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use image::ImageEncoder;

use crate::error::{Error, Result};

/// One request body the load sends, over and over.
#[derive(Debug, Clone)]
pub struct Body {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// The class the answer must name, when known.
    pub expect: Option<usize>,
}

/// The 28x28 image `pixels` (white ink on black, as in MNIST) as a grayscale PNG body.
pub fn png(pixels: &mnist_infer::Pixels, expect: Option<usize>) -> Body {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(pixels, 28, 28, image::ExtendedColorType::L8)
        .expect("a 28x28 grayscale image encodes into memory");
    Body { bytes, content_type: "image/png", expect }
}

/// How much load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadConfig {
    /// Requests in all.
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Stop sending after this many seconds even if fewer requests were sent.
    pub max_seconds: f64,
}

/// What a load run measured (one type with the figure `mnist bench serve` prints).
pub use mnist_bench::LoadReport;

/// Sends the load to `url` (the server's `POST /api/predict`), cycling through `bodies`.
///
/// # Errors
/// [`Error::Load`] when there is nothing to send, or when the first request cannot reach
/// the server at all (so a wrong address is not reported as a run of errors).
pub async fn run(url: &str, bodies: Vec<Body>, config: LoadConfig) -> Result<LoadReport> {
    if bodies.is_empty() || config.requests == 0 || config.concurrency == 0 {
        return Err(Error::Load("no requests to send (bodies, requests and concurrency must all be at least 1)".into()));
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| Error::Load(format!("cannot make an HTTP client: {e}")))?;
    // One request first, so an unreachable server is one clear error.
    client
        .get(url.replace("/api/predict", "/healthz"))
        .send()
        .await
        .map_err(|e| Error::Load(format!("cannot reach {url}: {e}")))?;

    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(config.max_seconds.max(0.0));
    let mut tasks = Vec::with_capacity(config.concurrency);
    for _ in 0..config.concurrency.min(config.requests) {
        let (client, bodies, next, url) = (client.clone(), Arc::clone(&bodies), Arc::clone(&next), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= config.requests || Instant::now() >= deadline {
                    break;
                }
                let body = &bodies[i % bodies.len()];
                let sent = Instant::now();
                let outcome = one(&client, &url, body).await;
                outcomes.push(Outcome { ms: sent.elapsed().as_secs_f64() * 1e3, error: outcome.err().map(|e| format!("request {i}: {e}")) });
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.append(&mut task.await.map_err(|e| Error::Load(format!("a client task failed: {e}")))?);
    }
    Ok(summarise(outcomes, start.elapsed().as_secs_f64(), config))
}

/// One request's latency, and why it failed if it did.
struct Outcome {
    ms: f64,
    error: Option<String>,
}

/// The report of a run of `seconds` that had these outcomes: every request counted, the
/// latency figures of those answered well only (a refusal, a 503 from a full queue, comes
/// back fast and would flatter them).
fn summarise(outcomes: Vec<Outcome>, seconds: f64, config: LoadConfig) -> LoadReport {
    let requests = outcomes.len();
    let mut latencies = Vec::with_capacity(requests);
    let (mut errors, mut first_error) = (0, None);
    for outcome in outcomes {
        match outcome.error {
            None => latencies.push(outcome.ms),
            Some(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    LoadReport {
        requests,
        concurrency: config.concurrency,
        errors,
        first_error,
        seconds,
        requests_per_sec: requests as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p90_ms: percentile(&latencies, 0.90),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    }
    .settled(config.requests)
}

/// One request and the checks of its answer.
async fn one(client: &reqwest::Client, url: &str, body: &Body) -> std::result::Result<(), String> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, body.content_type)
        .body(body.bytes.clone())
        .send()
        .await
        .map_err(|e| chain(&e))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("status {status}: {text}"));
    }
    let answer: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {text}"))?;
    let class = answer["class"].as_u64().ok_or_else(|| format!("no class in {text}"))? as usize;
    let sum: f64 = answer["probabilities"].as_array().map(|p| p.iter().filter_map(|v| v.as_f64()).sum()).unwrap_or(0.0);
    if (sum - 1.0).abs() > 1e-3 {
        return Err(format!("probabilities sum to {sum}: {text}"));
    }
    match body.expect {
        Some(expected) if expected != class => Err(format!("answered class {class}, expected {expected}")),
        _ => Ok(()),
    }
}

/// An error with every cause under it (`error sending request ...: client error (Connect):
/// Too many open files (os error 24)`): reqwest's own message alone names no cause.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// The `q`-quantile of sorted `values` (nearest rank); 0 for none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_requests_are_counted_but_left_out_of_the_latencies() {
        let ok = |ms| Outcome { ms, error: None };
        let refused = |ms| Outcome { ms, error: Some(format!("status 503 after {ms} ms")) };
        let config = LoadConfig { requests: 6, concurrency: 8, max_seconds: 10.0 };
        let report = summarise(vec![refused(1.0), ok(100.0), refused(2.0), ok(120.0), refused(1.5), ok(110.0)], 2.0, config);
        assert_eq!((report.requests, report.errors, report.concurrency), (6, 3, 6));
        assert_eq!(report.first_error.as_deref(), Some("status 503 after 1 ms"));
        assert_eq!((report.p50_ms, report.p99_ms, report.max_ms), (110.0, 120.0, 120.0));
        assert_eq!(report.requests_per_sec, 1.5, "three answered well in 2 s");
        let none = summarise(vec![refused(1.0)], 1.0, config);
        assert_eq!((none.p50_ms, none.max_ms, none.requests_per_sec), (0.0, 0.0, 0.0));
    }

    #[test]
    fn an_error_names_its_causes() {
        let io = std::io::Error::from_raw_os_error(24);
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let text = chain(&Outer(io));
        assert!(text.starts_with("error sending request: ") && text.contains("os error 24"), "{text}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
