//! The backends compiled into this binary, and running a job on the one asked for.

use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;

/// A Burn backend this program can be built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// burn-flex: fast CPU backend (SIMD, multi-threaded).
    Flex,
    /// burn-ndarray: portable CPU backend.
    Ndarray,
    /// burn-wgpu: GPU through Vulkan, Metal or DirectX.
    Wgpu,
    /// burn-cuda: NVIDIA GPU through CUDA.
    Cuda,
}

impl BackendKind {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Whether this binary was built with the backend.
    pub fn compiled(self) -> bool {
        match self {
            BackendKind::Flex => cfg!(feature = "flex"),
            BackendKind::Ndarray => cfg!(feature = "ndarray"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled in.
    pub fn available() -> Vec<BackendKind> {
        [BackendKind::Flex, BackendKind::Ndarray, BackendKind::Wgpu, BackendKind::Cuda]
            .into_iter()
            .filter(|b| b.compiled())
            .collect()
    }

    /// The default: the first compiled in of flex, ndarray, wgpu, cuda.
    pub fn default_compiled() -> Result<BackendKind> {
        match Self::available().first() {
            Some(b) => Ok(*b),
            None => bail!("this binary was built without any backend; build it with --features flex, ndarray, wgpu or cuda"),
        }
    }
}

/// Work that runs on any autodiff backend.
pub trait Job: Send {
    /// What the job returns.
    type Output: Send;
    /// Whether, on a CPU backend, the job runs on one of the worker threads (see
    /// [`dispatch`]): true but for a job that waits for its whole life on other threads
    /// (the server, whose requests are its runtime's), which would hold a worker idle.
    const ON_WORKER: bool = true;
    /// Runs on backend `B` (inference uses `B::InnerBackend`, same device).
    fn run<B: AutodiffBackend>(self, device: &B::Device, backend: BackendKind) -> Result<Self::Output>;
}

/// Runs `job` on `kind`, or explains why it cannot.
///
/// On the CPU backends, once [`jobs_on_workers`] was called (the `mnist` binary does), a
/// job runs on one of rayon's worker threads ([`Job::ON_WORKER`]), the threads that run
/// the backends' and the kernels' parallel work. Run from the main thread, each of a
/// training step's parallel operations (a hundred or so) woke a sleeping worker, put the
/// main thread to sleep and woke it at the end, with three threads on two cores; from a
/// worker, the caller takes part and the other worker steals. Training at batch 50 on a
/// 2-core Xeon: 1.09-1.18x in five alternations.
pub fn dispatch<J: Job>(kind: BackendKind, job: J) -> Result<J::Output> {
    match kind {
        #[cfg(feature = "flex")]
        BackendKind::Flex => on_worker::<J>(move || job.run::<burn::backend::Autodiff<burn_flex::Flex>>(&Default::default(), kind)),
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => on_worker::<J>(move || job.run::<burn::backend::Autodiff<burn_ndarray::NdArray>>(&Default::default(), kind)),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            let device = wgpu_device()?;
            job.run::<burn::backend::Autodiff<burn_wgpu::Wgpu>>(&device, kind)
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            let device = cuda_device()?;
            job.run::<burn::backend::Autodiff<burn_cuda::Cuda>>(&device, kind)
        }
        #[allow(unreachable_patterns)]
        other => Err(not_compiled(other, &BackendKind::available())),
    }
}

/// Runs `run` on one of rayon's global pool's worker threads if `J` asks for it and
/// [`jobs_on_workers`] was called, else here (a scope: rayon runs its body on a worker,
/// and the calling thread waits).
///
/// While the job runs, the pool's other workers stay awake: each polls for the job's
/// parallel work (`rayon::yield_now`) and, finding none, yields its core to the OS
/// (`std::thread::yield_now`) instead of going to sleep. Left to rayon, a worker sleeps
/// after a few dozen idle rounds, so between two of a training step's parallel
/// operations (a hundred or so a step) it fell asleep in each serial stretch, and each
/// operation then began on one core while the other was being woken: on a virtual
/// machine whose idle vCPUs halt (`haltpoll.guest_halt_poll_ns=0`), tens of microseconds.
/// Training at 50 on a 2-core Xeon: a median of 1.08x in 16 alternations (0.91-1.38x, the
/// most while the host was busy); evaluation 1.05-1.11x; training at 512 0.98-1.05x. The
/// price: an idle worker's core stays busy yielding while the job's serial parts
/// (reading data, writing files) run.
fn on_worker<J: Job>(run: impl FnOnce() -> Result<J::Output> + Send) -> Result<J::Output> {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Tells the awake workers that the job is over when dropped, also by a panic.
    struct Over<'a>(&'a AtomicBool);
    impl Drop for Over<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    if !(J::ON_WORKER && JOBS_ON_WORKERS.load(Ordering::Relaxed)) {
        return run();
    }
    let over = AtomicBool::new(false);
    rayon::scope(|scope| {
        let job_thread = rayon::current_thread_index();
        let over = &over;
        scope.spawn_broadcast(move |_, worker| {
            if Some(worker.index()) == job_thread {
                return;
            }
            while !over.load(Ordering::Relaxed) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::thread::yield_now();
                }
            }
        });
        let _over = Over(over);
        run()
    })
}

/// Whether [`dispatch`] runs jobs on the worker threads.
static JOBS_ON_WORKERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, each command's job on a CPU backend (but the server's) runs on one of
/// rayon's worker threads.
///
/// For a process that runs one job at a time (the `mnist` binary). Jobs dispatched at the
/// same time from several threads (tests calling [`crate::run`] in parallel) could
/// deadlock: a worker waiting for its parallel work inside burn-autodiff's lock on the
/// graph (the backward pass holds it) may take up another whole job, whose backward pass
/// then waits for that lock on the same thread.
pub fn jobs_on_workers() {
    JOBS_ON_WORKERS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Sets up `kind`'s device, so that a missing GPU adapter is reported before a run is
/// announced; nothing to do for the CPU backends.
pub fn prepare(kind: BackendKind) -> Result<()> {
    match kind {
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => wgpu_device().map(|_| ()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => cuda_device().map(|_| ()),
        other if !other.compiled() => Err(not_compiled(other, &BackendKind::available())),
        _ => Ok(()),
    }
}

/// The error for a backend this binary was built without, naming what it has and how to
/// get the one asked for.
fn not_compiled(kind: BackendKind, available: &[BackendKind]) -> anyhow::Error {
    let have: Vec<&str> = available.iter().map(|b| b.name()).collect();
    // The xtask of the command this was (each builds `mnist` with the backends it is given).
    let task = std::env::args().nth(1).filter(|a| ["train", "eval", "predict", "serve", "bench"].contains(&a.as_str())).unwrap_or_else(|| "train".into());
    anyhow::anyhow!(
        "the {} backend is not compiled into this binary (it has: {}). Build with `--features {}` (`cargo xtask {task} --backend {}` does that), or use --backend {}",
        kind.name(),
        if have.is_empty() { "none".to_string() } else { have.join(", ") },
        kind.name(),
        kind.name(),
        have.first().copied().unwrap_or("flex"),
    )
}

/// The adapter the wgpu backend picked (name, graphics API, driver), once it was set up.
static ADAPTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The hardware behind the backend, where Burn's name does not say it: the wgpu adapter
/// (for example "NVIDIA H200 (Vulkan, NVIDIA 580.159.04)"). `None` for the CPU backends.
pub fn adapter() -> Option<&'static str> {
    ADAPTER.get().map(String::as_str)
}

/// The default wgpu device, set up here so that the adapter it picked can be reported, and
/// checked to exist: wgpu panics when no adapter is found, which becomes an error naming
/// what was looked for.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<burn_wgpu::WgpuDevice> {
    let device = burn_wgpu::WgpuDevice::default();
    if ADAPTER.get().is_some() {
        return Ok(device);
    }
    let cache = gpu::configure_caches();
    let probe = device.clone();
    let found = gpu::catching_panics(move || {
        let setup = burn_wgpu::init_setup::<burn_wgpu::graphics::AutoGraphicsApi>(&probe, Default::default());
        setup.adapter.get_info()
    });
    let Ok(info) = found else {
        bail!(
            "no wgpu adapter found (looked for {device:?} through Vulkan, Metal, DirectX 12 and OpenGL). Install a GPU driver, or Mesa's lavapipe (`apt-get install mesa-vulkan-drivers`) for a slow software one, or use --backend flex"
        );
    };
    let driver = [info.driver.as_str(), info.driver_info.as_str()].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(" ");
    let name = format!("{} ({:?}{}{})", info.name, info.backend, if driver.is_empty() { "" } else { ", " }, driver);
    crate::output::note!("wgpu adapter: {name}");
    if software_adapter(&format!("{:?}", info.device_type), &info.name) {
        crate::output::note!(
            "warning: {} is a software renderer running on the CPU, not a GPU: expect about a hundredth of --backend flex's speed (seconds a training step, minutes for an evaluation)",
            info.name
        );
    }
    let _ = ADAPTER.set(name);
    gpu::announce_first_compile(cache.as_deref());
    Ok(device)
}

/// Whether a wgpu adapter is a software renderer on the CPU (Mesa's lavapipe, named
/// "llvmpipe", or any adapter whose device type is `Cpu`, given as its `Debug` form).
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn software_adapter(device_type: &str, name: &str) -> bool {
    device_type == "Cpu" || name.to_ascii_lowercase().contains("llvmpipe") || name.to_ascii_lowercase().contains("swiftshader")
}

/// The default CUDA device, checked to exist: burn-cuda's device thread panics when there
/// is no driver or device (and the caller sees only a `RecvError`), which becomes an error
/// naming what was looked for and what went wrong.
#[cfg(feature = "cuda")]
fn cuda_device() -> Result<burn_cuda::CudaDevice> {
    use burn::tensor::Tensor;
    let device = burn_cuda::CudaDevice::default();
    if ADAPTER.get().is_some() {
        return Ok(device);
    }
    let cache = gpu::configure_caches();
    let probe = device.clone();
    let found = gpu::catching_panics(move || Tensor::<burn_cuda::Cuda, 1>::zeros([1], &probe).into_data());
    if let Err(reason) = found {
        // cudarc's message for a missing driver lists some forty library names.
        let reason = match reason.split_once(" - searched for library names") {
            Some((first, _)) => format!("{first}: libcuda.so was not found on the library path"),
            None => reason,
        };
        bail!(
            "no CUDA device found (looked for {device:?}: {reason}). Install an NVIDIA driver (it provides libcuda.so), or use --backend wgpu for other GPUs or --backend flex for the CPU"
        );
    }
    let name = format!("{device:?} (CUDA)");
    crate::output::note!("cuda device: {name}");
    let _ = ADAPTER.set(name);
    gpu::announce_first_compile(cache.as_deref());
    Ok(device)
}

/// What both GPU backends share: CubeCL's caches and setting up a device that may panic.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod gpu {
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, OnceLock};

    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

    /// Where CubeCL keeps compiled kernels and autotune results between runs:
    /// `<user cache>/mnist-rs/cubecl/` (`~/.cache/mnist-rs/cubecl` on Linux). `None` when
    /// the system has no user cache directory (CubeCL then keeps its default).
    pub(super) fn cache_dir() -> Option<PathBuf> {
        dirs::cache_dir().map(|d| d.join("mnist-rs").join("cubecl"))
    }

    /// Points CubeCL's kernel and autotune caches at [`cache_dir`], once, before any GPU
    /// work: by default CubeCL keeps no compiled kernels at all, so every run compiles
    /// again (minutes on CUDA), and its autotune results land in the `target/` of whatever
    /// Cargo project the command runs in. A `cubecl.toml` (or `burn.toml`)
    /// in the working directory and CubeCL's environment variables still apply; a
    /// compilation cache set there is kept.
    pub(super) fn configure_caches() -> Option<PathBuf> {
        static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir = cache_dir()?;
            let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
            if config.compilation.cache.is_none() {
                config.compilation.cache = Some(CacheConfig::File(dir.clone()));
            }
            config.autotune.cache = CacheConfig::File(dir.clone());
            // Setting panics when the configuration was already read (some GPU work before
            // this): the defaults then stay, which only costs the cache.
            catching_panics(move || CubeClRuntimeConfig::set(config)).ok()?;
            Some(dir)
        })
        .clone()
    }

    /// Says that GPU kernels are about to be compiled when the cache holds none yet: the
    /// first run compiles and autotunes every kernel before its first step, and must not
    /// be a silent wait.
    pub(super) fn announce_first_compile(cache: Option<&Path>) {
        let empty = cache.is_none_or(|dir| std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none()));
        if empty {
            let kept = match cache {
                Some(dir) => format!("; later runs reuse them from {}", dir.display()),
                None => String::new(),
            };
            crate::output::note!("compiling GPU kernels before the first step: first run only, a minute or more{kept}");
        }
    }

    /// Runs `f`, turning a panic (on this thread or the device thread it waits on) into
    /// the panic's message, with the default hook's printing silenced meanwhile.
    pub(super) fn catching_panics<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
        static FIRST: Mutex<Option<String>> = Mutex::new(None);
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            let mut first = FIRST.lock().unwrap_or_else(|e| e.into_inner());
            if first.is_none() {
                let message = info.payload().downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| info.payload().downcast_ref::<String>().cloned());
                *first = Some(message.unwrap_or_else(|| "a panic without a message".into()));
            }
        }));
        let result = std::panic::catch_unwind(f);
        std::panic::set_hook(hook);
        let first = FIRST.lock().unwrap_or_else(|e| e.into_inner()).take();
        result.map_err(|_| first.unwrap_or_else(|| "unknown".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_not_compiled_in_is_named_with_the_way_to_get_it() {
        let err = not_compiled(BackendKind::Wgpu, &[BackendKind::Flex, BackendKind::Ndarray]).to_string();
        assert!(err.contains("wgpu backend is not compiled into this binary (it has: flex, ndarray)"), "{err}");
        assert!(err.contains("--features wgpu") && err.contains("--backend flex"), "{err}");
        let err = not_compiled(BackendKind::Flex, &[]).to_string();
        assert!(err.contains("(it has: none)"), "{err}");
    }

    /// lavapipe (as wgpu names it on this project's CI) and any CPU adapter are named
    /// software; GPUs are not.
    #[test]
    fn software_adapters_are_told_from_gpus() {
        assert!(software_adapter("Cpu", "llvmpipe (LLVM 19.1.7, 256 bits)"));
        assert!(software_adapter("Other", "llvmpipe (LLVM 15.0.6, 256 bits)"));
        assert!(software_adapter("Cpu", "Microsoft Basic Render Driver"));
        assert!(!software_adapter("DiscreteGpu", "NVIDIA H200"));
        assert!(!software_adapter("IntegratedGpu", "AMD Radeon Graphics (RADV RENOIR)"));
    }
}
