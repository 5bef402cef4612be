//! `cargo xtask bench --serve`: `mnist serve` under load, on flex, side by side:
//! concurrent requests batched (the default) at 64 and at 32 in flight, the same load
//! with one forward pass per request (`--max-batch 1`), and one request at a time
//! (concurrency 1). Each is one
//! `mnist bench serve` process per round; the table gives the median of the rounds and
//! serve.json every figure.

use std::process::Command;

use anyhow::{Context, Result};
use mnist_bench::{ServeMeasurement, median};
use serde::Serialize;

use crate::bench::{BenchArgs, build_mnist, busy_cores, busy_warning, cores, disagree, load_average, measure_even_failed, publish};
use crate::root;

/// One way of loading the server: `(name, max batch, concurrency)`. The table's ratios
/// are of the first over the second and the third.
const VARIANTS: [(&str, usize, usize); 4] = [
    ("batched (64 in flight, batches up to 64)", 64, 64),
    ("one forward pass per request (64 in flight, --max-batch 1)", 1, 64),
    ("one request at a time (1 in flight)", 64, 1),
    ("batched (32 in flight)", 64, 32),
];

/// One variant in one round.
#[derive(Debug, Serialize)]
struct Run {
    round: u32,
    variant: &'static str,
    #[serde(flatten)]
    outcome: Outcome,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Outcome {
    Measured(Box<ServeMeasurement>),
    Failed { error: String },
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let out_dir = args.out.clone().unwrap_or_else(|| root().join("target").join("bench"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    // Before the build, whose own load would otherwise count as another program's.
    let load_before = load_average();
    let binary = build_mnist("flex", &out_dir)?;
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
    let requests = if args.quick { 2_000 } else { 10_000 };
    let busy = busy_warning(load_before, busy_cores(std::time::Duration::from_secs(3)), cores());
    if let Some(warning) = &busy {
        eprintln!("{warning}");
    }
    let mut results = Vec::new();
    for round in 1..=rounds {
        for (variant, max_batch, concurrency) in VARIANTS {
            eprintln!("round {round}/{rounds}: {variant}");
            // One request at a time is slow: fewer of them.
            let requests = if concurrency == 1 { requests / 4 } else { requests };
            let mut cmd = Command::new(&binary);
            cmd.args(["bench", "serve", "--backend", "flex", "--repeats", &requests.to_string(), "--warmup", "2"]);
            cmd.args(["--concurrency", &concurrency.to_string(), "--max-batch", &max_batch.to_string()]);
            cmd.env_remove("MNIST_RS_SIMD");
            let outcome = match measure_even_failed::<ServeMeasurement>(cmd) {
                Ok(m) => Outcome::Measured(Box::new(m)),
                // Some requests failed: the figures stand (the rate counts only the requests
                // answered well), and the table's errors column counts the failed ones.
                Err((error, Some(m))) if m.load.errors > 0 => {
                    eprintln!("warning: {error}");
                    Outcome::Measured(Box::new(m))
                }
                Err((error, _)) => {
                    eprintln!("error: {error}");
                    Outcome::Failed { error }
                }
            };
            results.push(Run { round, variant, outcome });
        }
    }
    publish(table(&results), busy.as_deref(), load_before, rounds, results, &out_dir.join("serve.json"))
}

/// The median of each figure over the rounds, one row per variant, and the batched rate
/// over each other's.
fn table(results: &[Run]) -> String {
    let mut lines = vec![
        "| mnist serve, flex | requests/s | p50 ms | p99 ms | errors | images per forward pass |".to_string(),
        "| --- | --- | --- | --- | --- | --- |".to_string(),
    ];
    let mut rates = Vec::new();
    let mut unstable = false;
    for (variant, _, _) in VARIANTS {
        let measured: Vec<&ServeMeasurement> = results
            .iter()
            .filter(|r| r.variant == variant)
            .filter_map(|r| match &r.outcome {
                Outcome::Measured(m) => Some(m.as_ref()),
                Outcome::Failed { .. } => None,
            })
            .collect();
        let of = |f: fn(&ServeMeasurement) -> f64| median(&measured.iter().map(|m| f(m)).collect::<Vec<_>>());
        let rate = of(|m| m.load.requests_per_sec);
        let spread = disagree(&measured.iter().map(|m| m.load.requests_per_sec).collect::<Vec<_>>());
        unstable |= spread;
        rates.push(rate);
        let show = |v: Option<f64>, digits: usize| v.map_or_else(|| "failed".to_string(), |v| format!("{v:.digits$}"));
        let errors: usize = measured.iter().map(|m| m.load.errors).sum();
        lines.push(format!(
            "| {variant} | {}{} | {} | {} | {errors} | {} |",
            show(rate, 0),
            if spread { " (!)" } else { "" },
            show(of(|m| m.load.p50_ms), 2),
            show(of(|m| m.load.p99_ms), 2),
            show(of(|m| m.mean_batch), 1),
        ));
    }
    if let (Some(Some(batched)), Some(Some(alone)), Some(Some(serial))) = (rates.first(), rates.get(1), rates.get(2)) {
        lines.push(String::new());
        lines.push(format!("batched vs one forward pass per request: {:.2}x; vs one request at a time: {:.2}x", batched / alone, batched / serial));
    }
    if unstable {
        lines.push("warning: figures marked (!) varied by more than 25% between rounds; the machine was busy".into());
    }
    if let Some(cpu) = results.iter().find_map(|r| match &r.outcome {
        Outcome::Measured(m) => m.cpu.clone(),
        Outcome::Failed { .. } => None,
    }) {
        lines.push(format!("CPU: {cpu}; client and server share it (both on 127.0.0.1)"));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rate: f64, batch: f64) -> ServeMeasurement {
        ServeMeasurement {
            system: "mnist-rs".into(),
            backend: "flex".into(),
            device: "flex (Cpu)".into(),
            measure: "serve".into(),
            body: "PNG".into(),
            max_batch: 64,
            batch_wait_us: 1000,
            load: mnist_bench::LoadReport {
                requests: 1000,
                concurrency: 64,
                errors: 0,
                first_error: None,
                seconds: 1000.0 / rate,
                requests_per_sec: rate,
                p50_ms: 10.0,
                p90_ms: 12.0,
                p99_ms: 20.0,
                max_ms: 30.0,
            },
            mean_batch: batch,
            commit: None,
            cpu: Some("AMD EPYC".into()),
            simd: Some("avx2".into()),
        }
    }

    /// `mnist bench serve` prints its figures, then exits 1 when requests failed: the
    /// figures still come back with the error, so the table counts the failed requests.
    #[test]
    fn a_run_with_failed_requests_keeps_its_figures() {
        let mut m = measured(1416.0, 20.0);
        m.load.errors = 1584;
        let line = serde_json::to_string(&m).unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("echo '{line}'; echo 'error: 1584 of 3000 requests failed' >&2; exit 1")]);
        let (error, figures) = measure_even_failed::<ServeMeasurement>(cmd).unwrap_err();
        assert!(error.contains("failed (exit status: 1): error: 1584 of 3000 requests failed"), "{error}");
        assert_eq!(figures, Some(m));
        // A run that failed before printing any: the error alone.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'error: no server' >&2; exit 1"]);
        assert!(matches!(measure_even_failed::<ServeMeasurement>(cmd), Err((_, None))));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("echo '{}'", serde_json::to_string(&measured(3000.0, 20.0)).unwrap())]);
        assert_eq!(measure_even_failed::<ServeMeasurement>(cmd).unwrap().load.requests_per_sec, 3000.0);
    }

    #[test]
    fn the_table_gives_medians_and_the_ratios_of_batching() {
        let mut results = Vec::new();
        for round in 1..=3 {
            results.push(Run { round, variant: VARIANTS[0].0, outcome: Outcome::Measured(Box::new(measured(3000.0 + f64::from(round), 20.0))) });
            results.push(Run { round, variant: VARIANTS[1].0, outcome: Outcome::Measured(Box::new(measured(1000.0, 1.0))) });
            results.push(Run { round, variant: VARIANTS[2].0, outcome: Outcome::Failed { error: "boom".into() } });
        }
        let text = table(&results);
        assert!(text.contains("| batched (64 in flight, batches up to 64) | 3002 | 10.00 | 20.00 | 0 | 20.0 |"), "{text}");
        assert!(text.contains("| one request at a time (1 in flight) | failed |"), "{text}");
        assert!(!text.contains("batched vs"), "no ratio without all three: {text}");
        results.retain(|r| r.variant != VARIANTS[2].0);
        for round in 1..=3 {
            results.push(Run { round, variant: VARIANTS[2].0, outcome: Outcome::Measured(Box::new(measured(500.0, 1.0))) });
        }
        let text = table(&results);
        assert!(text.contains("batched vs one forward pass per request: 3.00x; vs one request at a time: 6.00x"), "{text}");
        assert!(text.contains("CPU: AMD EPYC"), "{text}");
    }
}
