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
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mnist_bench::{Measurement, PeerMeasurement, median};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::root;

/// `cargo xtask bench` options.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Backends to measure (repeat the flag); default flex.
    #[arg(long = "backend", value_parser = ["flex", "ndarray", "wgpu", "cuda"])]
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
    /// Also measure flex with its kernels capped at this instruction set (`MNIST_RS_SIMD`;
    /// repeat the flag), as columns of their own beside the best the CPU has: `--simd avx2`
    /// on an AVX-512 machine shows both in one run. The peers run capped too where their
    /// libraries can be (avx512, avx2: oneDNN's `ONEDNN_MAX_CPU_ISA`, PyTorch's
    /// `ATEN_CPU_CAPABILITY`), so the capped ratios are those of a machine with only that
    /// instruction set; neon and portable are compared with the uncapped peers.
    #[arg(long = "simd", value_parser = ["avx512", "avx2", "neon", "portable"])]
    pub simd: Vec<String>,
    /// Measure `mnist serve` under load instead (flex): requests per second and latency of
    /// single-image PNG requests on 127.0.0.1, batched, one forward pass per request, and
    /// one request at a time; writes serve.json.
    #[arg(long)]
    pub serve: bool,
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
    // Steps before the timed ones: flex reaches its steady step time at 512 only after two
    // or three steps (the first ones fault in and grow its buffers: one step of warmup put
    // the median of six at 3,300 images/s against 4,500 with three, on an Intel Xeon),
    // where TensorFlow's is steady after one (3,023 and 3,017).
    let warmup = if system == "ndarray" { 1 } else { 3 };
    vec![
        ("train", 50, train_50, warmup),
        ("train", 512, train_512, warmup),
        ("eval", 500, eval, 1),
        ("latency", 1, latency, 10),
    ]
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.criterion {
        return criterion(&args.rest);
    }
    if args.serve {
        return crate::serve_bench::run(&args);
    }
    let backends = if args.backends.is_empty() { vec!["flex".to_string()] } else { args.backends.clone() };
    let out_dir = args.out.clone().unwrap_or_else(|| root().join("target").join("bench"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;

    // Before the build below, whose own load would otherwise count as another program's.
    let load_before = load_average();
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
    // A machine already busy understates every system (the first AVX-512 table, taken
    // while builds shared the cores, was off by up to half): say so before and after.
    let busy = busy_warning(load_before, busy_cores(Duration::from_secs(3)), cores());
    if let Some(warning) = &busy {
        eprintln!("{warning}");
    }
    let mut results: Vec<Record> = Vec::new();
    for round in 1..=rounds {
        for (backend, binary) in &binaries {
            let mut runs: Vec<(Plan, &str, Option<&str>)> = plan(backend, args.quick).into_iter().map(|p| (p, "fastest", None)).collect();
            if *backend == "flex" {
                // Burn's own convolution and pooling, to show what the fused kernel is worth.
                runs.push((("train", 50, if args.quick { 5 } else { 20 }, 3), "burn", None));
                // The kernels capped at a lesser instruction set.
                for simd in &args.simd {
                    runs.extend(plan(backend, args.quick).into_iter().map(|p| (p, "fastest", Some(simd.as_str()))));
                }
            }
            for ((measure, batch, repeats, warmup), kernels, simd) in runs {
                let capped = simd.map(|s| format!(", {} {s}", SIMD_ENV)).unwrap_or_default();
                eprintln!("round {round}/{rounds}, mnist-rs {backend}: {measure}, batch {batch}, kernels {kernels}{capped}");
                let mut cmd = Command::new(binary);
                cmd.args(["bench", measure, "--backend", backend, "--kernels", kernels]);
                cmd.args(["--batch", &batch.to_string(), "--repeats", &repeats.to_string(), "--warmup", &warmup.to_string()]);
                // Each run's own cap: none unless asked, whatever this shell has set.
                match simd {
                    Some(simd) => cmd.env(SIMD_ENV, simd),
                    None => cmd.env_remove(SIMD_ENV),
                };
                let asked = Asked { system: "mnist-rs".into(), backend: Some(backend.to_string()), kernels: Some(kernels.into()), measure: measure.into(), batch };
                let mut record = Record::take(round, asked, cmd, Outcome::Ours);
                record.simd_cap = simd.map(str::to_string);
                results.push(record);
            }
        }
        // Each peer as the machine is, then capped as the flex kernels were, where the
        // peer's libraries can be.
        let caps: Vec<Option<&str>> = std::iter::once(None).chain(args.simd.iter().map(String::as_str).filter(|s| !peer_cap(s).is_empty()).map(Some)).collect();
        for (system, script, python) in &peers {
            for &cap in &caps {
                for (measure, batch, repeats, warmup) in plan(system, args.quick) {
                    let capped = cap.map(|s| format!(", capped at {s}")).unwrap_or_default();
                    eprintln!("round {round}/{rounds}, {system}: {measure}, batch {batch}{capped}");
                    let mut cmd = Command::new(python);
                    cmd.arg(root().join("xtask").join("peers").join(script)).arg(measure);
                    cmd.args(["--batch", &batch.to_string(), "--repeats", &repeats.to_string(), "--warmup", &warmup.to_string()]);
                    // As with ours: each run's own cap, whatever this shell has set.
                    match cap {
                        Some(simd) => peer_cap(simd).iter().for_each(|(name, value)| {
                            cmd.env(name, value);
                        }),
                        None => PEER_CAP_VARS.iter().for_each(|name| {
                            cmd.env_remove(name);
                        }),
                    }
                    let asked = Asked { system: system.to_string(), backend: None, kernels: None, measure: measure.into(), batch };
                    let mut record = Record::take(round, asked, cmd, Outcome::Peer);
                    record.simd_cap = cap.map(str::to_string);
                    results.push(record);
                }
            }
        }
    }

    publish(table(&results), busy.as_deref(), load_before, rounds, results, &out_dir.join("bench.json"))
}

/// Prints `table` (under the busy warning, if any) and writes the run to `path` as a
/// [`Report`], atomically: the end of `cargo xtask bench` and of `bench --serve`.
pub(crate) fn publish<R: Serialize>(table: String, busy: Option<&str>, load_before: Option<f64>, rounds: u32, results: Vec<R>, path: &Path) -> Result<()> {
    let machine = Machine::here();
    let text = match busy {
        Some(warning) => format!("{warning}\n\n{table}\n{}", machine.line()),
        None => format!("{table}\n{}", machine.line()),
    };
    // A closed pipe (`| head`) is not worth a panic; the JSON below is written anyway.
    let _ = writeln!(std::io::stdout(), "{text}");
    let report = Report {
        load_average_before: load_before,
        machine,
        date_utc: date(),
        git_commit: git(&["rev-parse", "HEAD"]),
        git_dirty: git(&["status", "--porcelain"]).map(|s| !s.is_empty()),
        rounds,
        results,
    };
    let text = serde_json::to_string_pretty(&report)? + "\n";
    mnist_fs::write_atomic(path, text.as_bytes())?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// What `cargo xtask bench` writes to bench.json (and `bench --serve` to serve.json): the
/// machine, the code, and every measurement of every round.
#[derive(Debug, Serialize)]
struct Report<R> {
    /// The 1-minute load average when the benchmark started, before it built `mnist`
    /// (Linux).
    load_average_before: Option<f64>,
    machine: Machine,
    date_utc: Option<String>,
    git_commit: Option<String>,
    git_dirty: Option<bool>,
    rounds: u32,
    results: Vec<R>,
}

/// One measurement that was asked for: which system, on what, which figure.
#[derive(Debug, Serialize)]
struct Asked {
    system: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernels: Option<String>,
    measure: String,
    batch: usize,
}

/// What a measurement gave: mnist-rs's record or a peer's, or why there is none.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Outcome {
    Ours(Measurement),
    Peer(PeerMeasurement),
    /// What was asked and why it gave no figures.
    Failed {
        #[serde(flatten)]
        asked: Asked,
        error: String,
    },
}

/// One measurement of one round, as written to bench.json: the record the process printed
/// (or, for a failure, what was asked and the error), with its round.
#[derive(Debug, Serialize)]
struct Record {
    #[serde(flatten)]
    outcome: Outcome,
    round: u32,
    /// The instruction set the flex kernels were capped at (`MNIST_RS_SIMD`), if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    simd_cap: Option<String>,
}

/// The variable that caps the flex kernels' instruction set (`mnist_kernels::Simd::ENV`;
/// xtask does not build the kernels crate).
const SIMD_ENV: &str = "MNIST_RS_SIMD";

/// The environment that caps the peers at the flex kernels' instruction set `simd`, as on a
/// machine that has no more: oneDNN's (TensorFlow's and PyTorch's convolutions and
/// products; TensorFlow's other kernels are built for AVX without FMA, as it says when it
/// starts, so no cap concerns them) and PyTorch's own ATen kernels' dispatch. Empty where the peers cannot be made to match (`neon` on x86,
/// `portable`): those capped columns are compared with the uncapped peers.
fn peer_cap(simd: &str) -> &'static [(&'static str, &'static str)] {
    match simd {
        "avx512" => &[("ONEDNN_MAX_CPU_ISA", "AVX512_CORE"), ("ATEN_CPU_CAPABILITY", "avx512")],
        "avx2" => &[("ONEDNN_MAX_CPU_ISA", "AVX2"), ("ATEN_CPU_CAPABILITY", "avx2")],
        _ => &[],
    }
}

/// The variables of [`peer_cap`], removed for the uncapped peers' runs.
const PEER_CAP_VARS: [&str; 2] = ["ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"];

/// What the table needs of a record, whichever system took it.
struct Figures<'a> {
    system: &'a str,
    backend: Option<&'a str>,
    kernels: Option<&'a str>,
    measure: &'a str,
    batch: usize,
    /// The instruction-set cap of the run, if any.
    simd_cap: Option<&'a str>,
    /// `None` for a failed measurement.
    values: Option<Values>,
}

/// A measurement's figures.
#[derive(Debug, Clone, Copy)]
struct Values {
    images_per_sec: f64,
    median_ms: f64,
    peak_rss_mib: Option<f64>,
}

impl Record {
    /// Runs `cmd` and reads the measurement it prints into `T` (wrapped by `wrap`); a
    /// failure becomes a record with the `error`, so one broken system does not lose the
    /// others.
    fn take<T: DeserializeOwned>(round: u32, asked: Asked, cmd: Command, wrap: fn(T) -> Outcome) -> Record {
        let outcome = match measure_with::<T>(cmd) {
            Ok(m) => wrap(m),
            Err(error) => {
                eprintln!("  failed: {error}");
                Outcome::Failed { asked, error }
            }
        };
        let record = Record { outcome, round, simd_cap: None };
        if let Some(v) = record.figures().values {
            eprintln!("  {:.1} images/s, median {:.2} ms", v.images_per_sec, v.median_ms);
        }
        record
    }

    fn figures(&self) -> Figures<'_> {
        match &self.outcome {
            Outcome::Ours(m) => Figures {
                system: &m.system,
                backend: Some(&m.backend),
                kernels: Some(&m.kernels),
                measure: &m.measure,
                batch: m.batch,
                simd_cap: self.simd_cap.as_deref(),
                values: Some(Values { images_per_sec: m.images_per_sec, median_ms: m.median_ms, peak_rss_mib: m.peak_rss_mib }),
            },
            Outcome::Peer(p) => Figures {
                system: &p.system,
                backend: Some(&p.backend),
                kernels: Some(&p.kernels),
                measure: &p.measure,
                batch: p.batch,
                simd_cap: self.simd_cap.as_deref(),
                values: Some(Values { images_per_sec: p.images_per_sec, median_ms: p.median_ms, peak_rss_mib: p.peak_rss_mib }),
            },
            Outcome::Failed { asked, .. } => Figures {
                system: &asked.system,
                backend: asked.backend.as_deref(),
                kernels: asked.kernels.as_deref(),
                measure: &asked.measure,
                batch: asked.batch,
                simd_cap: self.simd_cap.as_deref(),
                values: None,
            },
        }
    }
}

/// Builds `mnist` with only `backend` and copies it to `<out>/mnist-<backend>` (each build
/// overwrites target/release/mnist).
pub(crate) fn build_mnist(backend: &str, out_dir: &Path) -> Result<PathBuf> {
    let built = crate::cli::build(backend)?;
    let copy = out_dir.join(format!("mnist-{backend}"));
    std::fs::copy(&built, &copy).with_context(|| format!("cannot copy {} to {}", built.display(), copy.display()))?;
    Ok(copy)
}

/// Runs one measurement and reads the last line of its standard output as a `T`. The
/// error of a measurement that did not start, failed or printed no `T` names the command.
pub(crate) fn measure_with<T: DeserializeOwned>(cmd: Command) -> Result<T, String> {
    measure_even_failed(cmd).map_err(|(error, _)| error)
}

/// [`measure_with`], whose error of a measurement that failed comes with the `T` it
/// printed before it failed, if it printed one (`mnist bench serve` prints its figures,
/// then fails when requests failed).
pub(crate) fn measure_even_failed<T: DeserializeOwned>(mut cmd: Command) -> Result<T, (String, Option<T>)> {
    let shown = shown(&cmd);
    let output = cmd.stderr(std::process::Stdio::piped()).output().map_err(|e| (format!("cannot start {shown}: {e}"), None))?;
    let measured = mnist_bench::from_output(&String::from_utf8_lossy(&output.stdout)).map_err(|e| format!("{shown}: {e}"));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err((format!("{shown} failed ({}): {}", output.status, tail.into_iter().rev().collect::<Vec<_>>().join(" | ")), measured.ok()));
    }
    measured.map_err(|e| (e, None))
}

/// The command line, as a user would type it (for messages).
fn shown(cmd: &Command) -> String {
    let words: Vec<String> = std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|w| w.to_string_lossy().into_owned()).collect();
    format!("`{}`", words.join(" "))
}

fn python_has(python: &Path, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The 1-minute load average (Linux's `/proc/loadavg`).
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// How many cores' worth of time the whole machine spent busy over the next `window`
/// (Linux's `/proc/stat`), while this process sleeps: what other programs take from the
/// benchmark right now. The load average cannot tell that: a build that ended seconds ago
/// still counts in it for minutes.
pub(crate) fn busy_cores(window: Duration) -> Option<f64> {
    let first = cpu_times()?;
    std::thread::sleep(window);
    busy_between(first, cpu_times()?, cores())
}

/// The busy and total jiffies of all CPUs, from `/proc/stat`'s first line.
fn cpu_times() -> Option<(u64, u64)> {
    parse_cpu_line(std::fs::read_to_string("/proc/stat").ok()?.lines().next()?)
}

/// `cpu  user nice system idle iowait irq softirq steal ...` as (busy, total) jiffies;
/// idle and iowait count as idle, guest time is already inside user time.
fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    (fields.next()? == "cpu").then_some(())?;
    let v: Vec<u64> = fields.take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
    let total: u64 = v.iter().sum();
    Some((total - v.get(3)? - v.get(4)?, total))
}

/// The cores busy between two [`cpu_times`] readings.
fn busy_between((busy0, total0): (u64, u64), (busy1, total1): (u64, u64), cores: usize) -> Option<f64> {
    let total = total1.checked_sub(total0).filter(|t| *t > 0)?;
    Some(busy1.saturating_sub(busy0) as f64 / total as f64 * cores as f64)
}

/// The cores this process may use.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Other programs may take this many cores' worth of time before a run is flagged.
const BUSY_CORES: f64 = 0.5;

/// The warning for a busy machine, when it is: a load average above the cores before the
/// benchmark's build, or more than [`BUSY_CORES`] in use just before its first measurement.
pub(crate) fn busy_warning(load: Option<f64>, busy: Option<f64>, cores: usize) -> Option<String> {
    let load = load.filter(|l| *l > cores as f64).map(|l| format!("load average {l:.2} on {cores} cores"));
    let busy = busy.filter(|b| *b > BUSY_CORES).map(|b| format!("other programs using {b:.1} of {cores} cores"));
    let why = [load, busy].into_iter().flatten().collect::<Vec<_>>();
    (!why.is_empty()).then(|| {
        format!(
            "WARNING: the machine was busy when the benchmark started ({}): every system's figures are understated; measure on an idle machine",
            why.join(", ")
        )
    })
}

/// Rounds whose figures spread by more than this fraction of their median are flagged.
const DISAGREEMENT: f64 = 0.25;

/// Whether the rounds of one figure disagree by more than [`DISAGREEMENT`].
pub(crate) fn disagree(values: &[f64]) -> bool {
    let (Some(min), Some(max), Some(mid)) =
        (values.iter().copied().reduce(f64::min), values.iter().copied().reduce(f64::max), median(values))
    else {
        return false;
    };
    values.len() > 1 && mid > 0.0 && (max - min) / mid > DISAGREEMENT
}

/// A row of the table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Row {
    /// Training throughput at a batch size.
    Train(usize),
    /// Evaluation throughput.
    Eval,
    /// One image's latency.
    Latency,
    /// A measure this table does not know.
    Other,
    /// Each system's peak memory, the largest of its measurements in a round.
    Memory,
}

impl Row {
    fn of(figures: &Figures<'_>) -> Row {
        match figures.measure {
            "train" => Row::Train(figures.batch),
            "eval" => Row::Eval,
            "latency" => Row::Latency,
            _ => Row::Other,
        }
    }

    fn label(&self) -> String {
        match self {
            Row::Train(batch) => format!("train, batch {batch}, images/s"),
            Row::Eval => "eval 10,000 images, images/s".to_string(),
            Row::Latency => "one image, median ms".to_string(),
            Row::Other => "?".to_string(),
            Row::Memory => "peak memory, MiB".to_string(),
        }
    }

    /// The row's figure of a measurement (its memory is not one: see `Memory`).
    fn figure(&self, v: Values) -> f64 {
        if *self == Row::Latency { v.median_ms } else { v.images_per_sec }
    }

    /// Time and memory: lower is better. Throughput: higher.
    fn lower_is_better(&self) -> bool {
        matches!(self, Row::Latency | Row::Memory)
    }
}

/// A column of the table: an mnist-rs backend (with its own kernels or Burn's
/// convolution), or a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Column {
    /// `simd`: the instruction-set cap of the flex kernels, when one was asked.
    Ours { backend: String, burn_conv: bool, simd: Option<String> },
    /// `simd`: the cap the peer ran under ([`peer_cap`]), when it was capped.
    Peer { system: String, simd: Option<String> },
}

impl Column {
    fn of(f: &Figures<'_>) -> Column {
        match (f.system, f.backend) {
            ("mnist-rs", Some(backend)) => {
                Column::Ours { backend: backend.to_string(), burn_conv: f.kernels == Some("burn"), simd: f.simd_cap.map(str::to_string) }
            }
            (system, _) => Column::Peer { system: system.to_string(), simd: f.simd_cap.map(str::to_string) },
        }
    }

    fn label(&self) -> String {
        match self {
            Column::Ours { backend, burn_conv: false, simd: None } => format!("mnist-rs {backend}"),
            Column::Ours { backend, burn_conv: false, simd: Some(simd) } => format!("mnist-rs {backend} ({simd})"),
            Column::Ours { backend, burn_conv: true, .. } => format!("mnist-rs {backend} (Burn conv)"),
            Column::Peer { system, simd: None } => system.clone(),
            Column::Peer { system, simd: Some(simd) } => format!("{system} ({simd})"),
        }
    }
}

/// The table: one row per measurement, one column per system (the median over the
/// rounds), then each mnist-rs backend's ratio to each peer (the median of the rounds'
/// ratios, each from two measurements of the same round).
fn table(results: &[Record]) -> String {
    let mut columns: Vec<Column> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    // (row, column index) -> round -> figure.
    let mut cells: BTreeMap<(Row, usize), BTreeMap<u32, f64>> = BTreeMap::new();
    for record in results {
        let f = record.figures();
        let (c, r) = (Column::of(&f), Row::of(&f));
        let c = columns.iter().position(|x| *x == c).unwrap_or_else(|| {
            columns.push(c);
            columns.len() - 1
        });
        if !rows.contains(&r) {
            rows.push(r.clone());
        }
        let Some(values) = f.values else { continue };
        cells.entry((r.clone(), c)).or_default().insert(record.round, r.figure(values));
        // Per round, the largest of the system's measurements.
        if let Some(m) = values.peak_rss_mib {
            let peak = cells.entry((Row::Memory, c)).or_default().entry(record.round).or_insert(m);
            *peak = peak.max(m);
        }
    }
    // The ratios: each mnist-rs backend with its own kernels against each peer under the
    // same cap (the uncapped peers where none ran under it).
    let peers_capped_at = |cap: Option<&String>| -> Vec<(usize, String)> {
        columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                Column::Peer { simd, .. } if simd.as_ref() == cap => Some((i, c.label())),
                _ => None,
            })
            .collect()
    };
    let pairs: Vec<(usize, usize, String)> = columns
        .iter()
        .enumerate()
        .flat_map(|(o, c)| match c {
            Column::Ours { burn_conv: false, simd, .. } => {
                let capped = peers_capped_at(simd.as_ref());
                let peers = if capped.is_empty() { peers_capped_at(None) } else { capped };
                let ours = c.label().trim_start_matches("mnist-rs ").to_string();
                peers.into_iter().map(|(p, peer)| (o, p, format!("{ours} / {peer}"))).collect()
            }
            _ => Vec::new(),
        })
        .collect();
    let mut header = vec!["".to_string()];
    header.extend(columns.iter().map(Column::label));
    header.extend(pairs.iter().map(|(_, _, label)| label.clone()));
    let mut lines = vec![format!("| {} |", header.join(" | ")), format!("|{}", " --- |".repeat(header.len()))];
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |x| if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.2}") });
    rows.push(Row::Memory);
    let mut disagreeing = 0;
    for r in &rows {
        let mut line = vec![r.label()];
        let rounds = |c: usize| cells.get(&(r.clone(), c));
        for c in 0..columns.len() {
            let values: Vec<f64> = rounds(c).map(|by_round| by_round.values().copied().collect()).unwrap_or_default();
            let mut cell = fmt(median(&values));
            if *r != Row::Memory && disagree(&values) {
                cell.push_str(" (!)");
                disagreeing += 1;
            }
            line.push(cell);
        }
        for &(o, p, _) in &pairs {
            // Higher is better for throughput; for latency and memory, peer / ours.
            let ratios: Vec<f64> = match (rounds(o), rounds(p)) {
                (Some(a), Some(b)) => {
                    a.iter().filter_map(|(round, a)| b.get(round).map(|b| if r.lower_is_better() { b / a } else { a / b })).collect()
                }
                _ => Vec::new(),
            };
            line.push(median(&ratios).map_or("-".to_string(), |x| format!("{x:.2}x")));
        }
        lines.push(format!("| {} |", line.join(" | ")));
    }
    lines.push(String::new());
    lines.push("Ratios: above 1.00x means mnist-rs is better (more images/s, less time, less memory).".to_string());
    if disagreeing > 0 {
        lines.push(format!(
            "WARNING: (!) marks {disagreeing} figure(s) whose rounds disagree by more than {:.0}%: the machine was probably busy during the run; do not quote them, measure again on an idle machine.",
            DISAGREEMENT * 100.0
        ));
    }
    let most = cells.values().map(BTreeMap::len).max().unwrap_or(0);
    if most > 1 {
        lines.push(format!(
            "Each figure is the median over {most} rounds, each ratio the median of the rounds' ratios (all rounds are in the JSON)."
        ));
    }
    lines.join("\n")
}

/// The machine the figures were taken on.
#[derive(Debug, Serialize)]
struct Machine {
    cpu: Option<String>,
    /// The first core's data and unified caches ([`mnist_bench::cpu_caches`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    caches: Option<String>,
    cores: Option<usize>,
    memory_gib: Option<f64>,
    os: &'static str,
    arch: &'static str,
}

impl Machine {
    /// One line for the printed table: "Machine: CPU; caches; N cores, M GiB", with what
    /// is known of it.
    fn line(&self) -> String {
        let mut parts = vec![self.cpu.clone().unwrap_or_else(|| format!("an unnamed {} CPU", self.arch))];
        parts.extend(self.caches.clone());
        let size: Vec<String> = [self.cores.map(|cores| format!("{cores} cores")), self.memory_gib.map(|gib| format!("{gib} GiB"))].into_iter().flatten().collect();
        if !size.is_empty() {
            parts.push(size.join(", "));
        }
        format!("Machine: {}.", parts.join("; "))
    }

    fn here() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib = meminfo.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok());
        Machine {
            cpu: mnist_bench::cpu_model(),
            caches: mnist_bench::cpu_caches(),
            cores: std::thread::available_parallelism().map(|n| n.get()).ok(),
            memory_gib: mem_kib.map(|k| (k / 1024.0 / 1024.0 * 10.0).round() / 10.0),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
        }
    }
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

    fn ours(measure: &str, batch: usize, round: u32, images_per_sec: f64, median_ms: f64, peak: f64) -> Record {
        let m = Measurement {
            system: "mnist-rs".into(),
            backend: "flex".into(),
            device: "flex (Cpu)".into(),
            kernels: "fastest".into(),
            measure: measure.into(),
            batch,
            repeats: 10,
            images_per_sec,
            median_ms,
            peak_rss_mib: Some(peak),
            kernels_in_use: BTreeMap::new(),
            commit: None,
            cpu: None,
            simd: None,
        };
        Record { outcome: Outcome::Ours(m), round, simd_cap: None }
    }

    fn peer(system: &str, measure: &str, batch: usize, round: u32, images_per_sec: f64, median_ms: f64, peak: f64) -> Record {
        let p = PeerMeasurement {
            system: system.into(),
            backend: "tf 2.21.0 cpu".into(),
            device: "cpu, 2 cores".into(),
            kernels: "tf.compat.v1 graph".into(),
            measure: measure.into(),
            batch,
            repeats: 10,
            images_per_sec,
            median_ms,
            peak_rss_mib: Some(peak),
            peak_device_mib: None,
        };
        Record { outcome: Outcome::Peer(p), round, simd_cap: None }
    }

    fn asked_peer(system: &str, measure: &str, batch: usize) -> Asked {
        Asked { system: system.into(), backend: None, kernels: None, measure: measure.into(), batch }
    }

    fn failed(system: &str, measure: &str, batch: usize, round: u32) -> Record {
        Record { outcome: Outcome::Failed { asked: asked_peer(system, measure, batch), error: "exit 1".into() }, round, simd_cap: None }
    }

    #[test]
    fn the_machine_line_says_what_is_known() {
        let zen4 = Machine { cpu: Some("AMD EPYC (family 25 model 17)".into()), caches: Some("L1d 32 KiB, L2 1 MiB".into()), cores: Some(2), memory_gib: Some(23.5), os: "linux", arch: "x86_64" };
        assert_eq!(zen4.line(), "Machine: AMD EPYC (family 25 model 17); L1d 32 KiB, L2 1 MiB; 2 cores, 23.5 GiB.");
        let bare = Machine { cpu: None, caches: None, cores: None, memory_gib: None, os: "macos", arch: "aarch64" };
        assert_eq!(bare.line(), "Machine: an unnamed aarch64 CPU.");
    }

    #[test]
    fn table_has_a_ratio_per_backend_and_peer() {
        let results = vec![
            ours("train", 50, 1, 900.0, 55.0, 200.0),
            ours("latency", 1, 1, 1000.0, 1.0, 100.0),
            peer("tensorflow", "train", 50, 1, 450.0, 111.0, 400.0),
            peer("tensorflow", "latency", 1, 1, 500.0, 2.0, 300.0),
            failed("pytorch", "train", 50, 1),
        ];
        let t = table(&results);
        let train = t.lines().find(|l| l.starts_with("| train, batch 50")).expect("train row");
        assert!(train.contains("| 900 | 450 | - | 2.00x | - |"), "{t}");
        let latency = t.lines().find(|l| l.starts_with("| one image")).expect("latency row");
        assert!(latency.contains("| 1.00 | 2.00 | - | 2.00x |"), "{t}");
        let memory = t.lines().find(|l| l.starts_with("| peak memory")).expect("memory row");
        assert!(memory.contains("| 200 | 400 | - | 2.00x |"), "{t}");
    }

    /// A run capped at an instruction set (`--simd avx2`) is a column of its own, with
    /// its own ratios, beside the uncapped one; its cap is recorded.
    #[test]
    fn a_capped_instruction_set_is_its_own_column() {
        let capped = |round: u32, ips: f64| Record { simd_cap: Some("avx2".into()), ..ours("train", 50, round, ips, 1.0, 200.0) };
        let results = vec![ours("train", 50, 1, 1200.0, 1.0, 200.0), capped(1, 900.0), peer("tensorflow", "train", 50, 1, 600.0, 1.0, 400.0)];
        let t = table(&results);
        let header = t.lines().next().expect("header");
        assert!(header.contains("| mnist-rs flex | mnist-rs flex (avx2) | tensorflow | flex / tensorflow | flex (avx2) / tensorflow |"), "{t}");
        let train = t.lines().find(|l| l.starts_with("| train, batch 50")).expect("train row");
        assert!(train.contains("| 1200 | 900 | 600 | 2.00x | 1.50x |"), "{t}");
        let json = serde_json::to_value(capped(1, 900.0)).expect("serialisable");
        assert_eq!(json["simd_cap"], "avx2");
        assert!(serde_json::to_value(ours("train", 50, 1, 1.0, 1.0, 1.0)).expect("serialisable").get("simd_cap").is_none());
    }

    /// Peers capped at the same instruction set (as on a machine without AVX-512) are
    /// columns of their own, and the capped flex column is compared with them only; the
    /// uncapped one with the uncapped peers.
    #[test]
    fn capped_peers_are_compared_with_the_capped_kernels() {
        let cap = |r: Record| Record { simd_cap: Some("avx2".into()), ..r };
        let results = vec![
            ours("train", 50, 1, 1200.0, 1.0, 200.0),
            cap(ours("train", 50, 1, 900.0, 1.0, 200.0)),
            peer("tensorflow", "train", 50, 1, 600.0, 1.0, 400.0),
            cap(peer("tensorflow", "train", 50, 1, 300.0, 1.0, 400.0)),
        ];
        let t = table(&results);
        let header = t.lines().next().expect("header");
        assert!(
            header.contains("| mnist-rs flex | mnist-rs flex (avx2) | tensorflow | tensorflow (avx2) | flex / tensorflow | flex (avx2) / tensorflow (avx2) |"),
            "{t}"
        );
        let train = t.lines().find(|l| l.starts_with("| train, batch 50")).expect("train row");
        assert!(train.contains("| 1200 | 900 | 600 | 300 | 2.00x | 3.00x |"), "{t}");
        // What caps the peers: oneDNN and ATen for the x86 levels, nothing for the others.
        assert!(peer_cap("avx2").contains(&("ONEDNN_MAX_CPU_ISA", "AVX2")));
        assert!(peer_cap("avx512").iter().all(|(name, _)| PEER_CAP_VARS.contains(name)));
        assert!(peer_cap("neon").is_empty() && peer_cap("portable").is_empty());
    }

    /// Rounds within a quarter of each other are not flagged; a load average above the cores
    /// is.
    #[test]
    fn a_busy_machine_is_flagged_and_a_calm_one_is_not() {
        let results = vec![ours("train", 50, 1, 1000.0, 1.0, 200.0), ours("train", 50, 2, 900.0, 1.0, 200.0), ours("train", 50, 3, 1100.0, 1.0, 200.0)];
        let t = table(&results);
        assert!(!t.contains("(!)") && !t.contains("WARNING"), "{t}");
        assert!(disagree(&[1000.0, 700.0]) && !disagree(&[1000.0]) && !disagree(&[]));
        assert_eq!(busy_warning(Some(1.5), Some(0.1), 2), None);
        assert_eq!(busy_warning(None, None, 2), None);
        let w = busy_warning(Some(3.1), None, 2).expect("busy");
        assert!(w.contains("(load average 3.10 on 2 cores)") && w.contains("understated"), "{w}");
        let w = busy_warning(Some(0.2), Some(1.24), 2).expect("busy");
        assert!(w.contains("(other programs using 1.2 of 2 cores)"), "{w}");
        // Jiffies from /proc/stat: half of two cores' time busy is one core.
        let line = "cpu  100 0 50 800 50 0 0 0 0 0";
        assert_eq!(parse_cpu_line(line), Some((150, 1000)));
        assert_eq!(busy_between((150, 1000), (250, 1200), 2), Some(1.0));
        assert_eq!(busy_between((150, 1000), (150, 1000), 2), None);
        assert_eq!(parse_cpu_line("cpu0 1 2 3"), None);
        assert!(cpu_times().is_none_or(|(busy, total)| busy <= total));
    }

    /// Over rounds: each figure the median of its rounds, each ratio the median of the
    /// rounds' own ratios (not the ratio of the medians), a failed measurement left out.
    #[test]
    fn rounds_give_medians_and_median_ratios() {
        let ours = |round: u32, ips: f64| ours("train", 50, round, ips, 1.0, 200.0);
        let tf = |round: u32, ips: f64| peer("tensorflow", "train", 50, round, ips, 1.0, 400.0);
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
            failed("tensorflow", "train", 50, 4),
        ];
        let t = table(&results);
        let train = t.lines().find(|l| l.starts_with("| train, batch 50")).expect("train row");
        // Figures: median of 1000, 600, 900, 100 = 750; of 500, 200, 400 = 400. Ratios of
        // rounds 1-3: 2.0, 3.0, 2.25 -> 2.25 (the ratio of the medians would be 1.88).
        // Rounds this far apart are flagged, with the warning under the table.
        assert!(train.contains("| 750 (!) | 400 (!) | 2.25x |"), "{t}");
        assert!(t.contains("WARNING: (!) marks 2 figure(s) whose rounds disagree by more than 25%"), "{t}");
        let memory = t.lines().find(|l| l.starts_with("| peak memory")).expect("memory row");
        assert!(memory.contains("| 200 | 400 | 2.00x |"), "{t}");
        assert!(t.contains("median over 4 rounds"), "{t}");
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0]), Some(2.0));
    }

    /// A measurement's result keeps what was asked that it does not say itself (its round).
    #[test]
    fn results_carry_their_round() {
        let line = r#"{"system": "mnist-rs", "backend": "flex", "device": "flex (Cpu)", "kernels": "fastest", "measure": "train", "batch": 50, "repeats": 5, "images_per_sec": 5.0, "median_ms": 200.0, "peak_rss_mib": null}"#;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("echo 'warming up'; echo '{line}'")]);
        let asked = Asked { system: "ignored".into(), ..asked_peer("x", "train", 50) };
        let v = serde_json::to_value(Record::take(2, asked, cmd, Outcome::Ours)).expect("serialises");
        assert_eq!(v["round"], 2, "{v}");
        assert_eq!(v["system"], "mnist-rs", "{v}");
        assert_eq!(v["images_per_sec"], 5.0, "{v}");
        // The record is the line as printed, plus its round (and the fields the line did
        // not have, at their defaults).
        let mut keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = [
            "system", "backend", "device", "kernels", "measure", "batch", "repeats", "images_per_sec", "median_ms",
            "peak_rss_mib", "kernels_in_use", "commit", "cpu", "simd", "round",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected, "{v}");
        let failed = Record::take(3, asked_peer("tensorflow", "eval", 500), Command::new("false"), Outcome::Peer);
        let failed = serde_json::to_value(failed).expect("serialises");
        assert_eq!(failed["round"], 3, "{failed}");
        assert_eq!(failed["system"], "tensorflow", "{failed}");
        assert_eq!(failed["batch"], 500, "{failed}");
        assert!(failed["error"].as_str().is_some_and(|e| e.contains("`false`")), "{failed}");
    }

    /// A line that is not the measurement the system prints is a failed measurement that
    /// names the command and quotes the line, not a row of guessed figures.
    #[test]
    fn an_unreadable_line_is_a_failure_naming_the_command() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"echo '{"system": "mnist-rs", "images_per_sec": 5.0}'"#]);
        let record = Record::take(1, asked_peer("mnist-rs", "train", 50), cmd, Outcome::Ours);
        let Outcome::Failed { error, .. } = &record.outcome else { panic!("parsed: {record:?}") };
        assert!(error.starts_with("`sh -c "), "{error}");
        assert!(error.contains("missing field"), "{error}");
        assert!(error.contains("images_per_sec"), "{error}");
        assert!(record.figures().values.is_none());
        let record = Record::take(1, asked_peer("pytorch", "train", 50), Command::new("true"), Outcome::Peer);
        let Outcome::Failed { error, .. } = &record.outcome else { panic!("parsed: {record:?}") };
        assert_eq!(error, "`true`: no output");
        // A peer's line, read as a peer's record.
        let line = r#"{"system": "pytorch", "backend": "torch 2.11.0 cpu eager", "device": "cpu", "kernels": "eager", "peak_device_mib": null, "measure": "latency", "batch": 1, "repeats": 20, "images_per_sec": 400.0, "median_ms": 2.5, "peak_rss_mib": 350.0}"#;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("echo '{line}'")]);
        let record = Record::take(1, asked_peer("pytorch", "latency", 1), cmd, Outcome::Peer);
        assert!(matches!(&record.outcome, Outcome::Peer(p) if p.median_ms == 2.5), "{record:?}");
    }

    #[test]
    fn slow_backends_get_fewer_repeats() {
        let fast = plan("flex", false);
        let slow = plan("ndarray", false);
        assert!(slow.iter().zip(&fast).all(|(s, f)| s.2 <= f.2));
        assert!(plan("flex", true).iter().zip(&fast).all(|(q, f)| q.2 <= f.2));
    }

    /// Training is timed after at least three steps of warmup at every batch (flex's first
    /// steps at 512 are slower), for every system but the slowest.
    #[test]
    fn training_is_timed_in_its_steady_state() {
        for (system, quick) in [("flex", false), ("flex", true), ("tensorflow", false), ("pytorch", false)] {
            assert!(plan(system, quick).iter().filter(|p| p.0 == "train").all(|p| p.3 >= 3), "{system}");
        }
    }
}
