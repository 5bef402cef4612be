//! What a benchmark measurement is, for every mnist-rs crate that takes or reads one.
//!
//! `mnist bench` (crate mnist-cli) takes one measurement of the seed network and prints it
//! as one JSON line, a [`Measurement`]; the peer scripts (`xtask/peers/*.py`, TensorFlow
//! and PyTorch) print the same figures as a [`PeerMeasurement`]; `cargo xtask bench` runs
//! each in its own process, reads its last line back into the same type with
//! [`from_output`] and tabulates the figures. One type on both sides of the pipe, so a
//! field renamed or added in one is renamed or added in the other.
//!
//! [`median`] is the one median of the workspace (of the repetitions of one measurement,
//! and of the rounds of a whole run): the mean of the middle two for an even count.
//!
//! ```
//! use mnist_bench::{Measurement, from_output, median};
//!
//! let line = r#"{"system": "mnist-rs", "backend": "flex", "device": "flex (Cpu)",
//!     "kernels": "fastest", "measure": "train", "batch": 50, "repeats": 100,
//!     "images_per_sec": 1450.0, "median_ms": 34.5, "peak_rss_mib": 221.0}"#;
//! // A line from before `kernels_in_use` and `commit` existed still reads.
//! let m: Measurement = from_output(&format!("warming up\n{}\n", line.replace('\n', "")))?;
//! assert_eq!((m.measure.as_str(), m.batch, m.commit), ("train", 50, None));
//! assert!(m.kernels_in_use.is_empty());
//! assert_eq!(median(&[3.0, 1.0, 4.0, 2.0]), Some(2.5));
//! # Ok::<(), mnist_bench::ParseError>(())
//! ```

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// One measurement of `mnist bench`, as it prints it (one JSON line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Always "mnist-rs".
    pub system: String,
    /// Backend name.
    pub backend: String,
    /// Burn's name for the device, and the GPU adapter where there is one.
    pub device: String,
    /// Convolution kernels used ("fastest", "burn" or "im2col").
    pub kernels: String,
    /// "train", "eval" or "latency".
    pub measure: String,
    /// Batch size (1 for latency).
    pub batch: usize,
    /// Timed repetitions: training steps, evaluation passes or predictions.
    pub repeats: usize,
    /// Images per second (training or evaluation throughput; 1 / latency).
    pub images_per_sec: f64,
    /// Median time of one repetition, in milliseconds (training: the mean step of one
    /// timed block of steps).
    pub median_ms: f64,
    /// Peak resident memory of the process, in MiB (Linux; absent elsewhere).
    pub peak_rss_mib: Option<f64>,
    /// Which implementation each operation took, by operation (for example
    /// `"conv_blocks": "fused flex kernels"`, `"optimizer": "fused Adam"`); empty in lines
    /// from before it was recorded.
    #[serde(default)]
    pub kernels_in_use: BTreeMap<String, String>,
    /// The git commit the `mnist` binary was built from, where the build knew it.
    #[serde(default)]
    pub commit: Option<String>,
    /// The CPU's model name ([`cpu_model`]), where the system says it.
    #[serde(default)]
    pub cpu: Option<String>,
    /// The instruction set the CPU kernels ran with (`avx2` or `portable`; see
    /// `mnist_kernels::Simd`), in lines from after it was recorded.
    #[serde(default)]
    pub simd: Option<String>,
}

/// One measurement of `mnist bench serve`, as it prints it (one JSON line): the HTTP
/// server under a bounded load of single-image requests on 127.0.0.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServeMeasurement {
    /// Always "mnist-rs".
    pub system: String,
    /// Backend name.
    pub backend: String,
    /// Burn's name for the device.
    pub device: String,
    /// Always "serve".
    pub measure: String,
    /// What each request sends.
    pub body: String,
    /// Most images in one forward pass (1: every request alone).
    pub max_batch: usize,
    /// Microseconds the inference thread waits for more requests.
    pub batch_wait_us: u64,
    /// The rate, latency and errors of the timed requests.
    #[serde(flatten)]
    pub load: LoadReport,
    /// Images per forward pass, on average over the timed requests.
    pub mean_batch: f64,
    /// The git commit the `mnist` binary was built from, where the build knew it.
    pub commit: Option<String>,
    /// The CPU's model name ([`cpu_model`]).
    pub cpu: Option<String>,
    /// The instruction set the CPU kernels ran with.
    pub simd: Option<String>,
}

/// What a load run of requests against a server measured (`mnist_serve::load::run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests answered (well or not).
    pub requests: usize,
    /// Requests in flight at once: the concurrency asked for, or the requests asked for
    /// when they are fewer ([`LoadReport::settled`]).
    pub concurrency: usize,
    /// Answers that were not a 200 with a sound prediction, and requests that failed.
    pub errors: usize,
    /// The first error, for people.
    pub first_error: Option<String>,
    /// Wall time from the first request sent to the last answer, in seconds.
    pub seconds: f64,
    /// Requests answered well (a 200 with a sound prediction) per second
    /// ([`LoadReport::success_rate`]); the failed ones are counted in `errors` only (a
    /// server refusing work with 503s answers those fast, and would raise the rate).
    pub requests_per_sec: f64,
    /// Median latency of the requests answered well, in milliseconds (the failed ones,
    /// often fast refusals, are left out of every latency figure; 0 when none succeeded).
    pub p50_ms: f64,
    /// 90th percentile of the latency of the requests answered well, in milliseconds.
    pub p90_ms: f64,
    /// 99th percentile of the latency of the requests answered well, in milliseconds.
    pub p99_ms: f64,
    /// Slowest answer among the requests answered well, in milliseconds.
    pub max_ms: f64,
}

impl LoadReport {
    /// Requests answered well: `requests` less `errors`.
    pub fn succeeded(&self) -> usize {
        self.requests.saturating_sub(self.errors)
    }

    /// Requests answered well per second of the run (0 for a run of no time).
    pub fn success_rate(&self) -> f64 {
        if self.seconds > 0.0 { self.succeeded() as f64 / self.seconds } else { 0.0 }
    }

    /// The report as `mnist bench serve` prints it, of a run that asked for
    /// `asked_requests`: `requests_per_sec` the [`LoadReport::success_rate`], and
    /// `concurrency` the requests actually in flight at once, never more than were asked
    /// for. Settling a settled report changes nothing.
    pub fn settled(self, asked_requests: usize) -> Self {
        LoadReport { requests_per_sec: self.success_rate(), concurrency: self.concurrency.min(asked_requests), ..self }
    }
}

/// The CPU's model name, as Linux's `/proc/cpuinfo` gives it (for example "AMD EPYC 9R14
/// 96-Core Processor"), with its family and model numbers, which tell generations apart
/// where the name does not (a virtual machine's bare "AMD EPYC" is Zen 2 as family 23 model
/// 49, Zen 5 as family 26 model 2); `None` elsewhere or when it says none.
pub fn cpu_model() -> Option<String> {
    describe_cpu(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

/// [`cpu_model`] of the text of `/proc/cpuinfo`: its first processor's `model name`, then
/// ` (family F model M)` when it gives both numbers.
fn describe_cpu(info: &str) -> Option<String> {
    let field = |key: &str| {
        info.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let name = field("model name").filter(|m| !m.is_empty())?;
    Some(match (field("cpu family"), field("model")) {
        (Some(family), Some(model)) if !family.is_empty() && !model.is_empty() => format!("{name} (family {family} model {model})"),
        _ => name,
    })
}

/// The first core's data and unified caches, as Linux's sysfs gives them
/// (`/sys/devices/system/cpu/cpu0/cache/index*/`), for example "L1d 32 KiB, L2 1 MiB, L3
/// 32 MiB shared by 2 cores": the kernels' blocking is sized to L1 and L2, so figures
/// from CPUs of one model name but other caches differ. `None` elsewhere or when sysfs
/// lists none.
pub fn cpu_caches() -> Option<String> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    let mut caches = Vec::new();
    for entry in dir.flatten() {
        let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).ok().map(|v| v.trim().to_string());
        if let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) {
            caches.push(Cache { level, kind, size, shared_with: read("shared_cpu_list").unwrap_or_default() });
        }
    }
    describe_caches(caches)
}

/// One of a core's caches, in sysfs's words: `level` ("1"), `kind` ("Data", "Instruction"
/// or "Unified"), `size` ("32K"), and the CPUs that share it, `shared_with` ("0-1", "0,2").
#[derive(Debug, Clone)]
struct Cache {
    level: String,
    kind: String,
    size: String,
    shared_with: String,
}

/// [`cpu_caches`] of sysfs's entries: the data and unified caches by level, their sizes in
/// KiB or MiB, and how many CPUs share each that more than one does.
fn describe_caches(mut caches: Vec<Cache>) -> Option<String> {
    caches.retain(|c| c.kind != "Instruction");
    caches.sort_by(|a, b| (a.level.len(), &a.level).cmp(&(b.level.len(), &b.level)));
    let parts: Vec<String> = caches
        .iter()
        .filter_map(|c| {
            let kib: u64 = match c.size.strip_suffix('K') {
                Some(k) => k.parse().ok()?,
                None => c.size.strip_suffix('M')?.parse::<u64>().ok()? * 1024,
            };
            let size = if kib >= 1024 && kib.is_multiple_of(1024) { format!("{} MiB", kib / 1024) } else { format!("{kib} KiB") };
            let name = if c.kind == "Data" { format!("L{}d", c.level) } else { format!("L{}", c.level) };
            let sharing = cpu_count(&c.shared_with);
            Some(if sharing > 1 { format!("{name} {size} shared by {sharing} cores") } else { format!("{name} {size}") })
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// How many CPUs a sysfs CPU list names ("0-1,4" is 3); 0 for one it cannot read.
fn cpu_count(list: &str) -> usize {
    list.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(part.parse::<usize>().is_ok()),
        })
        .sum()
}

/// One measurement of a peer script (`xtask/peers/tf_seed.py`, `torch_seed.py`), as it
/// prints it (one JSON line, written by `xtask/peers/harness.py`): the figures of a
/// [`Measurement`], with the peer's own names for its backend, device and kernels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerMeasurement {
    /// "tensorflow" or "pytorch".
    pub system: String,
    /// The framework, its version and device kind (for example "tf 2.21.0 cpu").
    pub backend: String,
    /// The device and its threads, or the GPU's name.
    pub device: String,
    /// How the network runs (for example "eager").
    pub kernels: String,
    /// "train", "eval" or "latency".
    pub measure: String,
    /// Batch size (1 for latency).
    pub batch: usize,
    /// Timed repetitions.
    pub repeats: usize,
    /// Images per second.
    pub images_per_sec: f64,
    /// Median time of one repetition, in milliseconds (training: the mean step of one
    /// timed block of steps, as for [`Measurement::median_ms`]).
    pub median_ms: f64,
    /// Peak resident memory of the process, in MiB.
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
    /// Peak memory allocated on the GPU, in MiB (PyTorch on CUDA only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_device_mib: Option<f64>,
}

/// Output that holds no measurement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Nothing but blank lines.
    #[error("no output")]
    Empty,
    /// The last line is not the JSON of a measurement.
    #[error("its last line is not a measurement ({source}): {line:?}")]
    Invalid {
        /// The line.
        line: String,
        /// What serde found wrong with it.
        source: serde_json::Error,
    },
}

/// The measurement in a process's standard output: its last non-blank line, as JSON (the
/// lines before it are whatever the process said on the way).
///
/// # Errors
/// [`ParseError::Empty`] when there is no line, [`ParseError::Invalid`] (quoting the line)
/// when the last one is not a `T`.
pub fn from_output<T: DeserializeOwned>(stdout: &str) -> Result<T, ParseError> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).ok_or(ParseError::Empty)?;
    serde_json::from_str(line).map_err(|source| ParseError::Invalid { line: line.to_string(), source })
}

/// The median of `values`: the middle one for an odd count, the mean of the middle two for
/// an even count; `None` when there are none. Ordered by [`f64::total_cmp`], so a NaN
/// neither panics nor disturbs the order of the others (it sorts above every number).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_named_with_its_family_and_model() {
        let zen2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC\nstepping\t: 0\n\nprocessor\t: 1\ncpu family\t: 99\n";
        assert_eq!(describe_cpu(zen2).as_deref(), Some("AMD EPYC (family 23 model 49)"));
        // No numbers (an aarch64 kernel's cpuinfo has none of these): the name alone, or none.
        assert_eq!(describe_cpu("model name\t: Neoverse-V1\n").as_deref(), Some("Neoverse-V1"));
        assert_eq!(describe_cpu("processor\t: 0\nBogoMIPS\t: 50.00\n"), None);
        assert_eq!(describe_cpu("model name\t: \ncpu family\t: 6\nmodel\t: 1\n"), None);
    }

    #[test]
    fn caches_are_described_by_level_with_their_sharing() {
        let cache = |level: &str, kind: &str, size: &str, shared_with: &str| Cache { level: level.into(), kind: kind.into(), size: size.into(), shared_with: shared_with.into() };
        // As sysfs lists a 2-core Zen 4 (its directory order is not the levels').
        let zen4 = vec![cache("3", "Unified", "32768K", "0-1"), cache("1", "Instruction", "32K", "0"), cache("2", "Unified", "1024K", "0"), cache("1", "Data", "32K", "0")];
        assert_eq!(describe_caches(zen4).as_deref(), Some("L1d 32 KiB, L2 1 MiB, L3 32 MiB shared by 2 cores"));
        let xeon = vec![cache("1", "Data", "48K", "0"), cache("2", "Unified", "2048K", "0"), cache("3", "Unified", "266240K", "0,1")];
        assert_eq!(describe_caches(xeon).as_deref(), Some("L1d 48 KiB, L2 2 MiB, L3 260 MiB shared by 2 cores"));
        // Sizes in M, levels past 9, and an unreadable size left out.
        let odd = vec![cache("10", "Unified", "4M", ""), cache("2", "Unified", "1536K", "0-3,8-11"), cache("1", "Data", "lots", "0")];
        assert_eq!(describe_caches(odd).as_deref(), Some("L2 1536 KiB shared by 8 cores, L10 4 MiB"));
        assert_eq!(describe_caches(vec![cache("1", "Instruction", "32K", "0")]), None);
        assert_eq!((cpu_count("0-1,4"), cpu_count(""), cpu_count("3-1"), cpu_count("7")), (3, 0, 0, 1));
    }

    #[test]
    fn median_of_odd_even_empty_and_unsorted() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[1.0, 2.0, 3.0]), Some(2.0));
        assert_eq!(median(&[3.0, 1.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 3.0, 10.0]), Some(2.5));
        assert_eq!(median(&[5.0, -1.0, 3.0, 9.0, 0.0]), Some(3.0));
        assert_eq!(median(&[10.0, 3.0, 2.0, 1.0]), Some(2.5));
        // The input is left as it was.
        let values = [3.0, 1.0, 2.0];
        assert_eq!(median(&values), Some(2.0));
        assert_eq!(values, [3.0, 1.0, 2.0]);
    }

    #[test]
    fn median_with_nan_does_not_panic() {
        // NaN sorts above every number: the others keep their order.
        assert_eq!(median(&[f64::NAN, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[2.0, f64::NAN, 1.0, 0.0, 3.0]), Some(2.0));
        assert!(median(&[f64::NAN]).is_some_and(f64::is_nan));
    }

    fn measurement() -> Measurement {
        Measurement {
            system: "mnist-rs".into(),
            backend: "flex".into(),
            device: "flex (Cpu)".into(),
            kernels: "fastest".into(),
            measure: "eval".into(),
            batch: 500,
            repeats: 3,
            images_per_sec: 4648.5,
            median_ms: 2151.2,
            peak_rss_mib: Some(221.0),
            kernels_in_use: BTreeMap::from([("conv_blocks".into(), "fused flex kernels".into())]),
            commit: Some("468a27f".into()),
            cpu: Some("AMD EPYC 9R14 96-Core Processor".into()),
            simd: Some("avx2".into()),
        }
    }

    #[test]
    fn a_measurement_reads_back_as_printed() {
        let m = measurement();
        let line = serde_json::to_string(&m).expect("serialises");
        assert_eq!(from_output::<Measurement>(&format!("note\n{line}\n\n")).expect("parses"), m);
        // The fields `mnist bench` prints, by these names.
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        let mut keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = [
            "system", "backend", "device", "kernels", "measure", "batch", "repeats", "images_per_sec", "median_ms",
            "peak_rss_mib", "kernels_in_use", "commit", "cpu", "simd",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        // Absent memory is printed as null and read back as absent.
        let m = Measurement { peak_rss_mib: None, ..measurement() };
        let line = serde_json::to_string(&m).expect("serialises");
        assert!(line.contains(r#""peak_rss_mib":null"#), "{line}");
        assert_eq!(from_output::<Measurement>(&line).expect("parses"), m);
    }

    fn load(requests: usize, concurrency: usize, errors: usize, seconds: f64) -> LoadReport {
        LoadReport {
            requests,
            concurrency,
            errors,
            first_error: None,
            seconds,
            requests_per_sec: requests as f64 / seconds,
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: 3.0,
            max_ms: 4.0,
        }
    }

    #[test]
    fn the_rate_counts_only_requests_answered_well() {
        // The reported run: 3,000 requests, 2,000 asked in flight, 1,584 refused with 503s.
        let report = load(3_000, 2_000, 1_584, 3_000.0 / 4_373.0).settled(3_000);
        assert_eq!(report.succeeded(), 1_416);
        assert!((report.requests_per_sec - 1_416.0 * 4_373.0 / 3_000.0).abs() < 1e-6, "{}", report.requests_per_sec);
        assert_eq!((report.errors, report.requests, report.concurrency), (1_584, 3_000, 2_000));
        // More in flight asked for than requests: only as many as there are requests.
        let report = load(300, 2_000, 0, 2.0).settled(300);
        assert_eq!((report.concurrency, report.requests_per_sec), (300, 150.0));
        assert_eq!(report.clone().settled(300), report);
        // Every request failed, or none took any time: no rate, and no division by zero.
        assert_eq!(load(10, 4, 10, 1.0).settled(10).requests_per_sec, 0.0);
        assert_eq!(load(0, 4, 0, 0.0).settled(10).requests_per_sec, 0.0);
        assert_eq!(load(5, 4, 9, 1.0).succeeded(), 0);
    }

    #[test]
    fn the_cpu_model_is_linuxs_when_there_is_one() {
        let model = cpu_model();
        if std::path::Path::new("/proc/cpuinfo").exists() && cfg!(target_arch = "x86_64") {
            assert!(model.as_deref().is_some_and(|m| !m.is_empty() && !m.contains(':')), "{model:?}");
        }
    }

    #[test]
    fn peer_lines_parse() {
        // As harness.py prints them: TensorFlow without peak_device_mib, PyTorch on a CPU
        // with it null, integers where Python had them.
        let tf = r#"{"system": "tensorflow", "backend": "tf 2.21.0 cpu", "device": "cpu, 2 cores, intra-op threads auto", "kernels": "tf.compat.v1 graph (the seed as written)", "measure": "latency", "batch": 1, "repeats": 200, "images_per_sec": 492.6, "median_ms": 2.03, "peak_rss_mib": 860}"#;
        let p: PeerMeasurement = from_output(tf).expect("parses");
        assert_eq!((p.system.as_str(), p.batch, p.peak_rss_mib, p.peak_device_mib), ("tensorflow", 1, Some(860.0), None));
        let torch = r#"{"system": "pytorch", "backend": "torch 2.11.0 cuda eager", "device": "NVIDIA H200", "kernels": "eager", "peak_device_mib": 512.5, "measure": "train", "batch": 512, "repeats": 10, "images_per_sec": 258886.0, "median_ms": 1.98, "peak_rss_mib": 2048.0}"#;
        let p: PeerMeasurement = from_output(torch).expect("parses");
        assert_eq!(p.peak_device_mib, Some(512.5));
        let cpu = torch.replace("512.5", "null");
        assert_eq!(from_output::<PeerMeasurement>(&cpu).expect("parses").peak_device_mib, None);
    }

    /// Lines as printed on 2026-11-28 (bench/results/2026-11-28-h200/seed-run.log), before
    /// `kernels_in_use` and `commit`, still read.
    #[test]
    fn recorded_lines_read() {
        let ours = r#"{"system":"mnist-rs","backend":"wgpu","device":"fusion<cubecl<wgpu<wgsl>>> on NVIDIA H200 (Vulkan, NVIDIA 580.159.04)","kernels":"im2col","measure":"train","batch":50,"repeats":300,"images_per_sec":4828.4075114663965,"median_ms":10.355381123333334,"peak_rss_mib":297.4296875}"#;
        let m: Measurement = from_output(ours).expect("parses");
        assert_eq!((m.kernels.as_str(), m.repeats, m.images_per_sec), ("im2col", 300, 4828.4075114663965));
        assert!(m.kernels_in_use.is_empty() && m.commit.is_none());
        let peer = r#"{"system": "pytorch", "backend": "torch 2.11.0+cu130 cuda eager", "device": "NVIDIA H200", "kernels": "eager", "peak_device_mib": 173.42138671875, "measure": "eval", "batch": 500, "repeats": 10, "images_per_sec": 1011713.7226522485, "median_ms": 9.884218999999916, "peak_rss_mib": 1011.2578125}"#;
        let p: PeerMeasurement = from_output(peer).expect("parses");
        assert_eq!((p.measure.as_str(), p.batch, p.peak_device_mib), ("eval", 500, Some(173.42138671875)));
    }

    #[test]
    fn output_without_a_measurement_is_an_error() {
        assert!(matches!(from_output::<Measurement>(""), Err(ParseError::Empty)));
        assert!(matches!(from_output::<Measurement>("\n  \n"), Err(ParseError::Empty)));
        let e = from_output::<Measurement>("{\"system\": \"mnist-rs\"}").expect_err("fields missing");
        assert!(matches!(e, ParseError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("missing field"), "{e}");
        assert!(e.to_string().contains(r#"{\"system\": \"mnist-rs\"}"#), "{e}");
        let e = from_output::<PeerMeasurement>("Traceback (most recent call last):").expect_err("not JSON");
        assert!(e.to_string().contains("Traceback"), "{e}");
    }
}
