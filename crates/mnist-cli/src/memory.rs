//! Memory: a run's need, estimated before it starts and held against what this process
//! has room for, and the message the `mnist` binary's allocator prints when an allocation
//! fails anyway.
//!
//! Without the check, a batch too large for the machine starts, loads its data and then
//! dies: killed by the kernel's out-of-memory killer (exit 137, no message), or, under an
//! address-space limit (`ulimit -v`) or without overcommit, aborted by the allocator.
//!
//! The estimate is a lower bound on purpose: a run it refuses would not have fitted, and a
//! run it lets through may still fail, which the allocator's message then says (see
//! [`out_of_memory`]). It counts the network's parameters (training keeps four copies:
//! weights, gradients and Adam's two moments) and, per image of a batch, the activations a
//! pass keeps, measured on each CPU backend (see [`bytes_per_activation`]). GPU backends
//! keep their batches in device memory, which this does not check.
//!
//! `MNIST_MEMORY_CHECK=off` starts a run the check would refuse.

use std::fmt;

use mnist_model::CnnConfig;
use mnist_model::input::SIDE;

use crate::backend::BackendKind;

/// The hint for a network too large, in the check's refusal and the allocator's message.
macro_rules! smaller_network {
    () => {
        "a smaller network (model.hidden, model.conv1_channels, model.conv2_channels) needs less"
    };
}

/// The hint for a resume, whose config cannot change, in both places too.
macro_rules! resume_keeps_config {
    () => {
        "a resume keeps the run's config: free memory or raise the limit, or train a new run with a smaller config"
    };
}

/// The environment variable that turns the check off (`off`).
pub const CHECK_ENV: &str = "MNIST_MEMORY_CHECK";

/// What a pass over a batch does, which sets how much of it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Forward, backward and Adam: activations kept for the backward pass.
    Training,
    /// Forward only.
    Evaluation,
}

/// The activations of one image through `model`, in f32 values: the input, the first
/// convolution's output and its pooled map, the second's and its pooled map, and the
/// hidden layer (with its dropout mask). 49,872 for the seed.
pub fn activations_per_image(model: &CnnConfig) -> u64 {
    let full = (SIDE * SIDE) as u64;
    let c1 = model.conv1_channels as u64;
    let c2 = model.conv2_channels as u64;
    full + c1 * (full + full / 4) + c2 * (full / 4 + full / 16) + 2 * model.hidden as u64
}

/// Bytes the `backend` holds per activation value of a batch in a `pass` (peak resident
/// memory per image over [`activations_per_image`]); `None` for the GPU backends.
///
/// Measured with `mnist bench` (peak resident set at batches 128 to 5,000, the slope) on
/// the seed network, then rounded down: burn-flex keeps about 3.1 bytes in training and
/// 2.0 in evaluation (its fused kernels drop most intermediates), burn-ndarray about 10.7
/// and 3.0.
pub fn bytes_per_activation(backend: BackendKind, pass: Pass) -> Option<f64> {
    match (backend, pass) {
        (BackendKind::Flex, Pass::Training) => Some(2.8),
        (BackendKind::Flex, Pass::Evaluation) => Some(1.8),
        (BackendKind::Ndarray, Pass::Training) => Some(9.5),
        (BackendKind::Ndarray, Pass::Evaluation) => Some(2.7),
        (BackendKind::Wgpu | BackendKind::Cuda, _) => None,
    }
}

/// The least memory, in bytes, a `pass` over `batch` images of `model` takes on `backend`
/// beyond what the process holds before it; `None` for the GPU backends.
pub fn need(backend: BackendKind, model: &CnnConfig, pass: Pass, batch: usize) -> Option<Need> {
    let per_value = bytes_per_activation(backend, pass)?;
    let copies = match pass {
        Pass::Training => 4,
        Pass::Evaluation => 1,
    };
    Some(Need {
        network: 4 * copies * model.num_params() as u64,
        batch: (per_value * activations_per_image(model) as f64 * batch as f64) as u64,
    })
}

/// A pass's [`need`], in bytes, in its two parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Need {
    /// The network's parameters (and, in training, their gradients and Adam's moments).
    pub network: u64,
    /// A batch's activations.
    pub batch: u64,
}

impl Need {
    /// Both parts.
    pub fn total(self) -> u64 {
        self.network.saturating_add(self.batch)
    }
}

/// Room this process has for more memory, at most (the room a limit leaves before other
/// programs or the process's own mappings take some), and the limit that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Bytes.
    pub bytes: u64,
    /// Which limit: the machine's memory, a cgroup's or the address space's.
    pub limit: Limit,
}

/// The limit a [`Room`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The machine's available memory and free swap.
    Machine,
    /// The memory limit of the process's control group (a container's).
    Cgroup,
    /// The address-space limit (`ulimit -v`, RLIMIT_AS) less the process's mapped size, plus
    /// its allocator's reservations not used yet.
    AddressSpace,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Machine => "the machine's available memory and swap",
            Limit::Cgroup => "this container's memory limit (its cgroup's)",
            Limit::AddressSpace => "this process's address-space limit (ulimit -v)",
        })
    }
}

/// The tightest of the limits this system reports; `None` where it reports none.
pub fn room() -> Option<Room> {
    use sysinfo::{MemoryRefreshKind, ProcessRefreshKind, ProcessesToUpdate, RefreshKind, System};
    let mut system = System::new_with_specifics(RefreshKind::nothing().with_memory(MemoryRefreshKind::everything()));
    let mut rooms = Vec::new();
    if system.total_memory() > 0 {
        rooms.push(Room { bytes: system.available_memory().saturating_add(system.free_swap()), limit: Limit::Machine });
        // A cgroup's own page cache is reclaimed before it runs out: its room is the limit
        // less the anonymous memory in it.
        if let Some(cgroup) = system.cgroup_limits()
            && cgroup.total_memory < system.total_memory()
        {
            rooms.push(Room { bytes: cgroup.total_memory.saturating_sub(cgroup.rss).saturating_add(cgroup.free_swap), limit: Limit::Cgroup });
        }
    }
    #[cfg(unix)]
    if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::As).current
        && let Ok(pid) = sysinfo::get_current_pid()
    {
        system.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), false, ProcessRefreshKind::nothing().with_memory());
        // The allocator reserves address space ahead (an arena of 1 GiB, where the limit
        // allows it) that later allocations fill without mapping more: the room is the
        // limit less the mapped size, plus what those reservations have not used yet.
        // Where that is not known, less the resident set: at most what is left.
        if let Some(process) = system.process(pid) {
            let left = match untouched_reservations() {
                Some(reserved) => limit.saturating_sub(process.virtual_memory()).saturating_add(reserved),
                None => limit.saturating_sub(process.memory()),
            };
            rooms.push(Room { bytes: left, limit: Limit::AddressSpace });
        }
    }
    rooms.into_iter().min_by_key(|room| room.bytes)
}

/// Bytes mapped but not resident in this process's large anonymous mappings (64 MiB or
/// more, no file behind them): an allocator's reservations, which later allocations fill
/// without mapping more. From `/proc/self/smaps`; `None` where there is none to read.
fn untouched_reservations() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let text = std::fs::read_to_string("/proc/self/smaps").ok()?;
        Some(untouched_in_smaps(&text))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// [`untouched_reservations`] of the text of an smaps file: a mapping's header line
/// (`start-end perms offset dev inode [path]`), then its `Size:`, `Rss:`, ... lines.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn untouched_in_smaps(text: &str) -> u64 {
    let mut total = 0u64;
    // The mapping being read: its size, when it is a large anonymous one.
    let mut large_anonymous = None;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            // perms, offset, device, inode; a path after them names a file or [heap]/[stack].
            let anonymous = fields.nth(4).is_none();
            let size = end.saturating_sub(start);
            large_anonymous = (anonymous && size >= 64 << 20).then_some(size);
        } else if let (Some(size), Some(rss)) = (large_anonymous, line.strip_prefix("Rss:")) {
            let resident = rss.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(size / 1024) * 1024;
            total += size.saturating_sub(resident);
            large_anonymous = None;
        }
    }
    total
}

/// A run that does not fit: what needs the memory, how much, and the room there is.
#[derive(Debug, Clone, PartialEq)]
pub struct TooLarge {
    /// The pass, as the user asked for it (`configs/big.json: training with batch_size
    /// 60000`).
    pub what: String,
    /// The setting that sets the batch (`batch_size`, `--batch`).
    pub field: &'static str,
    /// The need.
    pub need: Need,
    /// The room there is.
    pub room: Room,
    /// The largest batch the estimate lets through, where there is one.
    pub fits: Option<usize>,
    /// The backend.
    pub backend: BackendKind,
    /// Whether the run is resumed: its batch cannot change then.
    pub resume: bool,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} needs at least {} of memory on {} ({} for the network, {} for a batch), but {} leaves room for at most {}",
            self.what,
            gib(self.need.total()),
            self.backend.name(),
            gib(self.need.network),
            gib(self.need.batch),
            self.room.limit,
            gib(self.room.bytes)
        )
    }
}

impl std::error::Error for TooLarge {}

/// Bytes as GiB with two decimals (MiB below one GiB, KiB below one MiB).
pub fn gib(bytes: u64) -> String {
    match bytes {
        0..0x10_0000 => format!("{} KiB", bytes.div_ceil(1024)),
        0x10_0000..0x4000_0000 => format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20)),
        _ => format!("{:.2} GiB", bytes as f64 / f64::from(1 << 30)),
    }
}

/// Whether [`CHECK_ENV`] turns the check off (`off`); unset or `on` leave it on.
///
/// # Errors
/// Any other value, named: a misspelt `of` or a `0` would otherwise be ignored.
pub fn check_off() -> anyhow::Result<bool> {
    match std::env::var(CHECK_ENV) {
        Ok(v) if v.eq_ignore_ascii_case("off") => Ok(true),
        Ok(v) if v.eq_ignore_ascii_case("on") || v.is_empty() => Ok(false),
        Ok(v) => anyhow::bail!("{CHECK_ENV} is {v:?}; expected off (no memory check before a run) or on"),
        Err(std::env::VarError::NotPresent) => Ok(false),
        Err(std::env::VarError::NotUnicode(v)) => anyhow::bail!("{CHECK_ENV} is {v:?}, not text; expected off or on"),
    }
}

/// Checks that a `pass` over `batch` images (`what`, set by `field`, as the user named
/// them) fits in `room`.
pub fn check_in(room: Option<Room>, backend: BackendKind, model: &CnnConfig, pass: Pass, batch: usize, what: &str, field: &'static str) -> Result<(), TooLarge> {
    let (Some(room), Some(need)) = (room, need(backend, model, pass, batch)) else { return Ok(()) };
    if need.total() <= room.bytes {
        return Ok(());
    }
    // The largest batch whose need fits, by halving the gap (the need grows with the batch).
    let fits = |n: usize| self::need(backend, model, pass, n).is_none_or(|need| need.total() <= room.bytes);
    let (mut lo, mut hi) = (0usize, batch);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) { lo = mid } else { hi = mid }
    }
    Err(TooLarge { what: what.to_string(), field, need, room, fits: (lo > 0).then_some(lo), backend, resume: false })
}

/// [`check_in`] against this process's [`room`], unless [`CHECK_ENV`] is `off`.
/// The environment variable was checked when the command started ([`check_off`]).
pub fn check(backend: BackendKind, model: &CnnConfig, pass: Pass, batch: usize, what: &str, field: &'static str) -> Result<(), TooLarge> {
    if check_off().unwrap_or(false) {
        return Ok(());
    }
    check_in(room(), backend, model, pass, batch, what, field)
}

/// The `hint:` line for a [`TooLarge`]: the largest batch that can fit (or a smaller
/// network, when none can), and the way past the check.
pub fn hint(e: &TooLarge) -> String {
    let network_too_large = e.need.network > e.room.bytes;
    let smaller = match e.fits {
        Some(n) => format!("{} over {n} cannot fit; ", e.field),
        None if network_too_large => concat!(smaller_network!(), "; ").into(),
        None => String::new(),
    };
    // A resume keeps the run's config: only more room, or a new run, helps.
    let resume = if e.resume { concat!(resume_keeps_config!(), " into another --out; ") } else { "" };
    format!("{smaller}{resume}{CHECK_ENV}=off starts it anyway (the estimate is a lower bound)")
}

/// What the `mnist` binary's allocator says when the system refuses memory: the size
/// asked for and the command's `Advice`, in `out`, without allocating.
pub fn out_of_memory(size: usize, out: &mut dyn std::io::Write) {
    let hint = match OOM_ADVICE.load(std::sync::atomic::Ordering::Relaxed) {
        a if a == Advice::Batch as u8 => "a smaller batch_size or eval_batch_size in the training config needs less memory",
        a if a == Advice::Network as u8 => concat!(smaller_network!(), " memory"),
        a if a == Advice::Resume as u8 => resume_keeps_config!(),
        a if a == Advice::BatchFlag as u8 => "a smaller --batch needs less memory",
        a if a == Advice::MaxBatch as u8 => "a smaller --max-batch needs less memory",
        _ => "close other programs, or raise this process's memory limit",
    };
    let (amount, unit) = if size < 1 << 20 { (size.div_ceil(1 << 10), "KiB") } else { (size >> 20, "MiB") };
    let _ = write!(out, "error: out of memory: the system refused {size} more bytes ({amount} {unit})\nhint: {hint}\n");
}

/// What [`out_of_memory`] advises, set by the command as it learns what takes the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Advice {
    /// Nothing of the user's sets the memory taken.
    Other,
    /// Training: a smaller batch.
    Batch,
    /// Training a network whose parameters take more than a batch.
    Network,
    /// Resuming: the config cannot change.
    Resume,
    /// `bench` and `eval`: a smaller `--batch`.
    BatchFlag,
    /// `serve`: a smaller `--max-batch`.
    MaxBatch,
}

/// The current [`Advice`], read by the allocator's report (an atomic: it cannot allocate
/// or wait for a lock there).
static OOM_ADVICE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(Advice::Other as u8);

/// Sets what [`out_of_memory`] advises.
pub(crate) fn on_out_of_memory(advice: Advice) {
    OOM_ADVICE.store(advice as u8, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(gib: u64) -> Option<Room> {
        Some(Room { bytes: gib << 30, limit: Limit::AddressSpace })
    }

    #[test]
    fn the_seeds_activations_and_needs() {
        let seed = CnnConfig::new();
        assert_eq!(activations_per_image(&seed), 49_872);
        // 50 images train in a few tens of MiB on flex; 60,000 in more than 7 GiB.
        let small = need(BackendKind::Flex, &seed, Pass::Training, 50).unwrap().total();
        assert!((50 << 20..100 << 20).contains(&small), "{small}");
        let large = need(BackendKind::Flex, &seed, Pass::Training, 60_000).unwrap().total();
        assert!(large > 7 << 30, "{large}");
        assert!(need(BackendKind::Ndarray, &seed, Pass::Training, 1000) > need(BackendKind::Flex, &seed, Pass::Training, 1000));
        assert!(need(BackendKind::Flex, &seed, Pass::Evaluation, 1000) < need(BackendKind::Flex, &seed, Pass::Training, 1000));
        assert_eq!(need(BackendKind::Wgpu, &seed, Pass::Training, 60_000), None);
    }

    #[test]
    fn a_batch_that_does_not_fit_is_refused_with_the_one_that_does() {
        let seed = CnnConfig::new();
        let e = check_in(room(2), BackendKind::Flex, &seed, Pass::Training, 60_000, "training with batch_size 60000", "batch_size").unwrap_err();
        let fits = e.fits.unwrap();
        assert!(check_in(room(2), BackendKind::Flex, &seed, Pass::Training, fits, "", "").is_ok());
        assert!(check_in(room(2), BackendKind::Flex, &seed, Pass::Training, fits + 1, "", "").is_err());
        assert!((10_000..16_000).contains(&fits), "{fits}");
        assert_eq!(
            e.to_string(),
            format!(
                "training with batch_size 60000 needs at least {} of memory on flex (50 MiB for the network, {} for a batch), but this process's address-space limit (ulimit -v) leaves room for at most 2.00 GiB",
                gib(e.need.total()),
                gib(e.need.batch)
            )
        );
        assert_eq!(hint(&e), format!("batch_size over {fits} cannot fit; MNIST_MEMORY_CHECK=off starts it anyway (the estimate is a lower bound)"));
        // Room for the network but not one image: the hint says only how to go on.
        let network = need(BackendKind::Flex, &seed, Pass::Training, 0).unwrap().network;
        let none = check_in(Some(Room { bytes: network + 1, limit: Limit::Machine }), BackendKind::Flex, &seed, Pass::Training, 1, "--batch 1", "--batch").unwrap_err();
        assert_eq!(none.fits, None);
        assert!(hint(&none).starts_with("MNIST_MEMORY_CHECK=off"));
        // A network too large for the room whatever the batch: the hint names its sizes.
        let huge = CnnConfig::new().with_hidden(100_000);
        let e = check_in(room(2), BackendKind::Flex, &huge, Pass::Training, 50, "training with batch_size 50", "batch_size").unwrap_err();
        assert!(hint(&e).starts_with("a smaller network (model.hidden"), "{}", hint(&e));
    }

    #[test]
    fn no_room_known_or_a_gpu_passes() {
        let seed = CnnConfig::new();
        assert!(check_in(None, BackendKind::Flex, &seed, Pass::Training, 60_000, "", "").is_ok());
        assert!(check_in(room(0), BackendKind::Cuda, &seed, Pass::Training, 60_000, "", "").is_ok());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_machine_reports_some_room() {
        let room = super::room().expect("Linux reports its memory");
        assert!(room.bytes > 0, "{room:?}");
    }

    #[test]
    fn the_out_of_memory_message_names_the_size() {
        let mut out = Vec::new();
        out_of_memory(3 << 30, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("error: out of memory: the system refused 3221225472 more bytes (3072 MiB)\nhint: "), "{text}");
        let mut out = Vec::new();
        out_of_memory(120_398, &mut out);
        assert!(String::from_utf8(out).unwrap().starts_with("error: out of memory: the system refused 120398 more bytes (118 KiB)"));
    }

    #[test]
    fn untouched_reservations_are_read_from_smaps() {
        let smaps = "\
7f0000000000-7f0040000000 rw-p 00000000 00:00 0 
Size:            1048576 kB
Rss:                2048 kB
7f0040000000-7f0040800000 rw-p 00000000 00:00 0 
Size:               8192 kB
Rss:                  12 kB
55d000000000-55d020000000 r-xp 00000000 fd:01 1234                       /usr/bin/mnist
Size:             524288 kB
Rss:               10000 kB
7f1000000000-7f1010000000 ---p 00000000 00:00 0 
Size:             262144 kB
Rss:                   0 kB
";
        // The 1 GiB arena less its 2 MiB touched, and the 256 MiB reservation; not the
        // 8 MiB stack-sized mapping nor the file.
        assert_eq!(untouched_in_smaps(smaps), (1 << 30) - (2 << 20) + (256 << 20));
        assert_eq!(untouched_in_smaps(""), 0);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_maps_its_reservations() {
        // Whatever the allocator did, the figure is read and no more than the mapped size.
        let reserved = untouched_reservations().expect("Linux has /proc/self/smaps");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_kib: u64 = status.lines().find(|l| l.starts_with("VmSize:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap();
        assert!(reserved <= vm_kib * 1024, "{reserved} > {vm_kib} KiB");
    }

    #[test]
    fn sizes_read_in_kib_mib_or_gib() {
        assert_eq!(gib(1000), "1 KiB");
        assert_eq!(gib(300 << 10), "300 KiB");
        assert_eq!(gib(100 << 20), "100 MiB");
        assert_eq!(gib(3 << 29), "1.50 GiB");
    }

    #[test]
    fn a_resume_is_told_its_config_cannot_change() {
        let mut e = check_in(room(2), BackendKind::Flex, &CnnConfig::new(), Pass::Training, 60_000, "training with batch_size 60000", "batch_size").unwrap_err();
        e.resume = true;
        assert!(hint(&e).contains("a resume keeps the run's config"), "{}", hint(&e));
    }

    #[test]
    fn the_out_of_memory_advice_follows_the_command() {
        let text = |advice| {
            on_out_of_memory(advice);
            let mut out = Vec::new();
            out_of_memory(1 << 20, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert!(text(Advice::Network).contains("hint: a smaller network"));
        assert!(text(Advice::BatchFlag).contains("hint: a smaller --batch"));
        assert!(text(Advice::Other).contains("hint: close other programs"));
    }
}
