//! A load generator for the API: many requests at once against a running server, the
//! rate and latency they got, and how many failed.
//!
//! [`run`] keeps `concurrency` requests in flight (each on a connection of its own, kept
//! alive) until `requests` have been sent or `max_seconds` have passed, checks every
//! answer (status 200, ten probabilities summing to 1, and the expected class where one
//! is given) and reports the requests per second and the latency percentiles
//! ([`LoadReport`]). `mnist bench serve` and the integration tests use it.

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
            let mut latencies = Vec::new();
            let (mut errors, mut first_error) = (0usize, None::<String>);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= config.requests || Instant::now() >= deadline {
                    break;
                }
                let body = &bodies[i % bodies.len()];
                let sent = Instant::now();
                let outcome = one(&client, &url, body).await;
                latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                if let Err(e) = outcome {
                    errors += 1;
                    first_error.get_or_insert(format!("request {i}: {e}"));
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut latencies = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for task in tasks {
        let (mut l, e, first) = task.await.map_err(|e| Error::Load(format!("a client task failed: {e}")))?;
        latencies.append(&mut l);
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(LoadReport {
        requests: latencies.len(),
        concurrency: config.concurrency,
        errors,
        first_error,
        seconds,
        requests_per_sec: latencies.len() as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p90_ms: percentile(&latencies, 0.90),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    }
    .settled(config.requests))
}

/// One request and the checks of its answer.
async fn one(client: &reqwest::Client, url: &str, body: &Body) -> std::result::Result<(), String> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, body.content_type)
        .body(body.bytes.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
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
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
