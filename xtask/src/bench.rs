//! `cargo xtask bench`: the seed network's speed and memory, per backend, beside its peers
//! (TensorFlow and PyTorch, run from `xtask/peers/`) in the same run, as a table and JSON.
//!
//! Every measurement runs in its own process (`mnist bench ...` or a peer script), so its
//! peak memory is its own. The whole set runs in rounds (three unless `--quick` or
//! `--rounds`), mnist-rs and the peers taking turns, and the table gives each figure's
//! median over the rounds and each ratio's median over the rounds' ratios: on a shared
//! machine whose speed drifts by 10-20% within minutes, a ratio of two measurements taken
//! minutes apart says more about the machine than about the systems. `--criterion` runs
//! the criterion micro-benchmarks instead.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::root;

/// `cargo xtask bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Backends to measure (repeat the flag); default flex.
    #[arg(long = "backend", value_parser = ["flex", "ndarray", "wgpu"])]
    pub backends: Vec<String>,
    /// Python that runs the peers (needs tensorflow for the CPU peer, torch for the GPU
    /// one); also MNIST_RS_PYTHON. Peers whose framework it lacks are skipped, with a note.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Leave the peers out.
    #[arg(long)]
    pub no_peers: bool,
    /// Fewer repetitions and one round: a rough figure in about a minute.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of the whole set of measurements, systems taking turns (default 3, or 1 with
    /// --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: Option<u32>,
    /// Where to write bench.json (default: target/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run the criterion benchmarks (`cargo bench`) instead; the remaining arguments go to
    /// criterion.
    #[arg(long)]
    pub criterion: bool,
    /// Arguments for criterion (with --criterion).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

/// One measurement to take: `(measure, batch, repeats, warmup)`.
type Plan = (&'static str, usize, usize, usize);

/// What to run on a system. burn-ndarray, about 80 times slower than flex, does the fewest
/// repeats; `--quick` does few everywhere.
fn plan(system: &str, quick: bool) -> Vec<Plan> {
    // Repeats of: train at batch 50, train at batch 512, evaluation, latency.
    let (train_50, train_512, eval, latency) = match (system == "ndarray", quick) {
        (true, _) => (5, 1, 1, 20),
        (false, true) => (5, 2, 1, 20),
        // 100 steps at batch 50 (about 4 s for flex): with 40, a moment's drift of the
        // machine moved a figure by a fifth.
        (false, false) => (100, 6, 3, 200),
    };
    let warmup_50 = if system == "ndarray" { 1 } else { 3 };
    vec![
        ("train", 50, train_50, warmup_50),
        ("train", 512, train_512, 1),
        ("eval", 500, eval, 1),
        ("latency", 1, latency, 10),
    ]
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.criterion {
        return criterion(&args.rest);
    }
    let backends = if args.backends.is_empty() { vec!["flex".to_string()] } else { args.backends.clone() };
    let out_dir = args.out.clone().unwrap_or_else(|| root().join("target").join("bench"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;

    let mut binaries = Vec::new();
    for backend in &backends {
        binaries.push((backend.as_str(), build_mnist(backend, &out_dir)?));
    }
    let mut peers = Vec::new();
    if !args.no_peers {
        let python = args
            .python
            .clone()
            .or_else(|| std::env::var_os("MNIST_RS_PYTHON").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("python3"));
        for (system, script, module) in [("tensorflow", "tf_seed.py", "tensorflow"), ("pytorch", "torch_seed.py", "torch")] {
            if python_has(&python, module) {
                peers.push((system, script, python.clone()));
            } else {
                eprintln!(
                    "note: {} cannot import {module}; {system} left out (see xtask/peers/{script} for its setup, then pass --python)",
                    python.display()
                );
            }
        }
    }
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
    let mut results: Vec<Value> = Vec::new();
    for round in 1..=rounds {
        for (backend, binary) in &binaries {
            let mut runs: Vec<(Plan, &str)> = plan(backend, args.quick).into_iter().map(|p| (p, "fastest")).collect();
            if *backend == "flex" {
                // Burn's own convolution and pooling, to show what the fused kernel is worth.
                runs.push((("train", 50, if args.quick { 5 } else { 20 }, 3), "burn"));
            }
            for ((measure, batch, repeats, warmup), kernels) in runs {
                eprintln!("round {round}/{rounds}, mnist-rs {backend}: {measure}, batch {batch}, kernels {kernels}");
                let mut cmd = Command::new(binary);
                cmd.args(["bench", measure, "--backend", backend, "--kernels", kernels]);
                cmd.args(["--batch", &batch.to_string(), "--repeats", &repeats.to_string(), "--warmup", &warmup.to_string()]);
                let what = json!({"system": "mnist-rs", "backend": backend, "measure": measure, "batch": batch, "kernels": kernels, "round": round});
                results.push(measure_with(cmd, what));
            }
        }
        for (system, script, python) in &peers {
            for (measure, batch, repeats, warmup) in plan(system, args.quick) {
                eprintln!("round {round}/{rounds}, {system}: {measure}, batch {batch}");
                let mut cmd = Command::new(python);
                cmd.arg(root().join("xtask").join("peers").join(script)).arg(measure);
                cmd.args(["--batch", &batch.to_string(), "--repeats", &repeats.to_string(), "--warmup", &warmup.to_string()]);
                results.push(measure_with(cmd, json!({"system": system, "measure": measure, "batch": batch, "round": round})));
            }
        }
    }

    // A closed pipe (`| head`) is not worth a panic; the JSON below is written anyway.
    let _ = writeln!(std::io::stdout(), "{}", table(&results));
    let report = json!({
        "machine": machine(),
        "date_utc": date(),
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_dirty": git(&["status", "--porcelain"]).map(|s| !s.is_empty()),
        "rounds": rounds,
        "results": results,
    });
    let path = out_dir.join("bench.json");
    let text = serde_json::to_string_pretty(&report)?;
    let tmp = out_dir.join(".bench.json.tmp");
    std::fs::write(&tmp, text + "\n").with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Builds `mnist` with only `backend` and copies it to `<out>/mnist-<backend>` (each build
/// overwrites target/release/mnist).
fn build_mnist(backend: &str, out_dir: &Path) -> Result<PathBuf> {
    let built = crate::cli::build(backend)?;
    let copy = out_dir.join(format!("mnist-{backend}"));
    std::fs::copy(&built, &copy).with_context(|| format!("cannot copy {} to {}", built.display(), copy.display()))?;
    Ok(copy)
}

/// Runs one measurement; its last stdout line is the JSON result. A failure becomes a
/// result with an `error`, so one broken system does not lose the others.
fn measure_with(mut cmd: Command, what: Value) -> Value {
    let failed = |message: String| {
        eprintln!("  failed: {message}");
        let mut v = what.clone();
        v["error"] = Value::String(message);
        v
    };
    let output = match cmd.stderr(std::process::Stdio::piped()).output() {
        Ok(o) => o,
        Err(e) => return failed(format!("cannot start {:?}: {e}", cmd.get_program())),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return failed(format!("exit {}: {}", output.status, tail.into_iter().rev().collect::<Vec<_>>().join(" | ")));
    }
    match stdout.lines().last().map(serde_json::from_str::<Value>) {
        Some(Ok(mut v)) => {
            eprintln!("  {:.1} images/s, median {:.2} ms", v["images_per_sec"].as_f64().unwrap_or(f64::NAN), v["median_ms"].as_f64().unwrap_or(f64::NAN));
            // What was asked (the round, at least) where the result does not say it.
            if let (Some(fields), Some(asked)) = (v.as_object_mut(), what.as_object()) {
                for (key, value) in asked {
                    fields.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            v
        }
        _ => failed(format!("no JSON result in its output: {stdout:?}")),
    }
}

fn python_has(python: &Path, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The table: one row per measurement, one column per system (the median over the
/// rounds), then each mnist-rs backend's ratio to each peer (the median of the rounds'
/// ratios, each from two measurements of the same round).
fn table(results: &[Value]) -> String {
    let label = |v: &Value| -> String {
        let system = v["system"].as_str().unwrap_or("?");
        match (system, v["backend"].as_str(), v["kernels"].as_str()) {
            ("mnist-rs", Some(b), Some("burn")) => format!("mnist-rs {b} (Burn conv)"),
            ("mnist-rs", Some(b), _) => format!("mnist-rs {b}"),
            _ => system.to_string(),
        }
    };
    let row_of = |v: &Value| match v["measure"].as_str() {
        Some("train") => format!("train, batch {}, images/s", v["batch"]),
        Some("eval") => "eval 10,000 images, images/s".to_string(),
        Some("latency") => "one image, median ms".to_string(),
        _ => "?".to_string(),
    };
    const MEMORY: &str = "peak memory, MiB";
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<String> = Vec::new();
    // (row, column) -> round -> figure.
    let mut cells: BTreeMap<(String, String), BTreeMap<u64, f64>> = BTreeMap::new();
    for v in results {
        let (c, r) = (label(v), row_of(v));
        if !columns.contains(&c) {
            columns.push(c.clone());
        }
        if !rows.contains(&r) {
            rows.push(r.clone());
        }
        if v.get("error").is_some() {
            continue;
        }
        let round = v["round"].as_u64().unwrap_or(1);
        let figure = if r.starts_with("one image") { v["median_ms"].as_f64() } else { v["images_per_sec"].as_f64() };
        if let Some(x) = figure {
            cells.entry((r.clone(), c.clone())).or_default().insert(round, x);
        }
        // Per round, the largest of the system's measurements.
        if let Some(m) = v["peak_rss_mib"].as_f64() {
            let peak = cells.entry((MEMORY.to_string(), c.clone())).or_default().entry(round).or_insert(m);
            *peak = peak.max(m);
        }
    }
    let peers: Vec<&String> = columns.iter().filter(|c| !c.starts_with("mnist-rs")).collect();
    let ours: Vec<&String> = columns.iter().filter(|c| c.starts_with("mnist-rs") && !c.ends_with("(Burn conv)")).collect();
    let mut header = vec!["".to_string()];
    header.extend(columns.iter().cloned());
    for o in &ours {
        for p in &peers {
            header.push(format!("{} / {p}", o.trim_start_matches("mnist-rs ")));
        }
    }
    let mut lines = vec![format!("| {} |", header.join(" | ")), format!("|{}", " --- |".repeat(header.len()))];
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |x| if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.2}") });
    for r in rows.iter().map(String::as_str).chain(std::iter::once(MEMORY)) {
        let mut line = vec![r.to_string()];
        let rounds = |c: &String| cells.get(&(r.to_string(), c.clone()));
        for c in &columns {
            line.push(fmt(rounds(c).and_then(|by_round| median(by_round.values().copied().collect()))));
        }
        for o in &ours {
            for p in &peers {
                // Higher is better for throughput; for latency and memory, peer / ours.
                let lower_is_better = r.starts_with("one image") || r == MEMORY;
                let ratios: Vec<f64> = match (rounds(o), rounds(p)) {
                    (Some(a), Some(b)) => a
                        .iter()
                        .filter_map(|(round, a)| b.get(round).map(|b| if lower_is_better { b / a } else { a / b }))
                        .collect(),
                    _ => Vec::new(),
                };
                line.push(median(ratios).map_or("-".to_string(), |x| format!("{x:.2}x")));
            }
        }
        lines.push(format!("| {} |", line.join(" | ")));
    }
    lines.push(String::new());
    lines.push("Ratios: above 1.00x means mnist-rs is better (more images/s, less time, less memory).".to_string());
    let most = cells.values().map(BTreeMap::len).max().unwrap_or(0);
    if most > 1 {
        lines.push(format!(
            "Each figure is the median over {most} rounds, each ratio the median of the rounds' ratios (all rounds are in the JSON)."
        ));
    }
    lines.join("\n")
}

/// The median (the mean of the middle two for an even count); `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(str::trim);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok());
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory_gib": mem_kib.map(|k| (k / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

fn date() -> Option<String> {
    let out = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(root()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `cargo bench` of the workspace's criterion benchmarks.
fn criterion(args: &[String]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["bench", "--workspace", "--benches", "--"])
        .args(args)
        .status()
        .context("cannot run cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_ratio_per_backend_and_peer() {
        let results = vec![
            json!({"system": "mnist-rs", "backend": "flex", "kernels": "fastest", "measure": "train", "batch": 50, "images_per_sec": 900.0, "median_ms": 55.0, "peak_rss_mib": 200.0}),
            json!({"system": "mnist-rs", "backend": "flex", "kernels": "fastest", "measure": "latency", "batch": 1, "images_per_sec": 1000.0, "median_ms": 1.0, "peak_rss_mib": 100.0}),
            json!({"system": "tensorflow", "measure": "train", "batch": 50, "images_per_sec": 450.0, "median_ms": 111.0, "peak_rss_mib": 400.0}),
            json!({"system": "tensorflow", "measure": "latency", "batch": 1, "images_per_sec": 500.0, "median_ms": 2.0, "peak_rss_mib": 300.0}),
            json!({"system": "pytorch", "measure": "train", "batch": 50, "error": "exit 1"}),
        ];
        let t = table(&results);
        let train = t.lines().find(|l| l.starts_with("| train, batch 50")).expect("train row");
        assert!(train.contains("| 900 | 450 | - | 2.00x | - |"), "{t}");
        let latency = t.lines().find(|l| l.starts_with("| one image")).expect("latency row");
        assert!(latency.contains("| 1.00 | 2.00 | - | 2.00x |"), "{t}");
        let memory = t.lines().find(|l| l.starts_with("| peak memory")).expect("memory row");
        assert!(memory.contains("| 200 | 400 | - | 2.00x |"), "{t}");
    }

    /// Over rounds: each figure the median of its rounds, each ratio the median of the
    /// rounds' own ratios (not the ratio of the medians), a failed measurement left out.
    #[test]
    fn rounds_give_medians_and_median_ratios() {
        let ours = |round: u64, ips: f64| json!({"system": "mnist-rs", "backend": "flex", "kernels": "fastest", "measure": "train", "batch": 50, "round": round, "images_per_sec": ips, "median_ms": 1.0, "peak_rss_mib": 200.0});
        let tf = |round: u64, ips: f64| json!({"system": "tensorflow", "measure": "train", "batch": 50, "round": round, "images_per_sec": ips, "median_ms": 1.0, "peak_rss_mib": 400.0});
        // The machine fast in round 1, slow in round 2, in between in round 3; round 4's
        // peer failed.
        let results = vec![
            ours(1, 1000.0),
            tf(1, 500.0),
            ours(2, 600.0),
            tf(2, 200.0),
            ours(3, 900.0),
            tf(3, 400.0),
            ours(4, 100.0),
            json!({"system": "tensorflow", "measure": "train", "batch": 50, "round": 4, "error": "exit 1"}),
        ];
        let t = table(&results);
        let train = t.lines().find(|l| l.starts_with("| train, batch 50")).expect("train row");
        // Figures: median of 1000, 600, 900, 100 = 750; of 500, 200, 400 = 400. Ratios of
        // rounds 1-3: 2.0, 3.0, 2.25 -> 2.25 (the ratio of the medians would be 1.88).
        assert!(train.contains("| 750 | 400 | 2.25x |"), "{t}");
        let memory = t.lines().find(|l| l.starts_with("| peak memory")).expect("memory row");
        assert!(memory.contains("| 200 | 400 | 2.00x |"), "{t}");
        assert!(t.contains("median over 4 rounds"), "{t}");
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0]), Some(2.0));
    }

    /// A measurement's result keeps what was asked that it does not say itself (its round).
    #[test]
    fn results_carry_their_round() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"echo 'warming up'; echo '{"system": "mnist-rs", "measure": "train", "images_per_sec": 5.0}'"#]);
        let v = measure_with(cmd, json!({"system": "ignored", "measure": "train", "round": 2}));
        assert_eq!(v["round"], 2, "{v}");
        assert_eq!(v["system"], "mnist-rs", "{v}");
        assert_eq!(v["images_per_sec"], 5.0, "{v}");
        let failed = measure_with(Command::new("false"), json!({"system": "tensorflow", "round": 3}));
        assert_eq!(failed["round"], 3, "{failed}");
        assert!(failed.get("error").is_some(), "{failed}");
    }

    #[test]
    fn slow_backends_get_fewer_repeats() {
        let fast = plan("flex", false);
        let slow = plan("ndarray", false);
        assert!(slow.iter().zip(&fast).all(|(s, f)| s.2 <= f.2));
        assert!(plan("flex", true).iter().zip(&fast).all(|(q, f)| q.2 <= f.2));
    }
}
