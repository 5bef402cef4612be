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
}

impl BackendKind {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
        }
    }

    /// Whether this binary was built with the backend.
    pub fn compiled(self) -> bool {
        match self {
            BackendKind::Flex => cfg!(feature = "flex"),
            BackendKind::Ndarray => cfg!(feature = "ndarray"),
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    /// The backends compiled in.
    pub fn available() -> Vec<BackendKind> {
        [BackendKind::Flex, BackendKind::Ndarray, BackendKind::Wgpu]
            .into_iter()
            .filter(|b| b.compiled())
            .collect()
    }

    /// The default: the first compiled in of flex, ndarray, wgpu.
    pub fn default_compiled() -> Result<BackendKind> {
        match Self::available().first() {
            Some(b) => Ok(*b),
            None => bail!("this binary was built without any backend; build it with --features flex, ndarray or wgpu"),
        }
    }
}

/// Work that runs on any autodiff backend.
pub trait Job {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` (inference uses `B::InnerBackend`, same device).
    fn run<B: AutodiffBackend>(self, device: &B::Device, backend: BackendKind) -> Result<Self::Output>;
}

/// Runs `job` on `kind`, or explains why it cannot.
pub fn dispatch<J: Job>(kind: BackendKind, job: J) -> Result<J::Output> {
    match kind {
        #[cfg(feature = "flex")]
        BackendKind::Flex => job.run::<burn::backend::Autodiff<burn_flex::Flex>>(&Default::default(), kind),
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => job.run::<burn::backend::Autodiff<burn_ndarray::NdArray>>(&Default::default(), kind),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            let device = wgpu_device()?;
            job.run::<burn::backend::Autodiff<burn_wgpu::Wgpu>>(&device, kind)
        }
        #[allow(unreachable_patterns)]
        other => Err(not_compiled(other, &BackendKind::available())),
    }
}

/// Sets up `kind`'s device, so that a missing GPU adapter is reported before a run is
/// announced; nothing to do for the CPU backends.
pub fn prepare(kind: BackendKind) -> Result<()> {
    match kind {
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => wgpu_device().map(|_| ()),
        other if !other.compiled() => Err(not_compiled(other, &BackendKind::available())),
        _ => Ok(()),
    }
}

/// The error for a backend this binary was built without, naming what it has and how to
/// get the one asked for.
fn not_compiled(kind: BackendKind, available: &[BackendKind]) -> anyhow::Error {
    let have: Vec<&str> = available.iter().map(|b| b.name()).collect();
    anyhow::anyhow!(
        "the {} backend is not compiled into this binary (it has: {}). Build with `--features {}` (`cargo xtask train --backend {}` does that), or use --backend {}",
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
    let probe = device.clone();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let found = std::panic::catch_unwind(move || {
        let setup = burn_wgpu::init_setup::<burn_wgpu::graphics::AutoGraphicsApi>(&probe, Default::default());
        setup.adapter.get_info()
    });
    std::panic::set_hook(hook);
    let Ok(info) = found else {
        bail!(
            "no wgpu adapter found (looked for {device:?} through Vulkan, Metal, DirectX 12 and OpenGL). Install a GPU driver, or Mesa's lavapipe (`apt-get install mesa-vulkan-drivers`) for a slow software one, or use --backend flex"
        );
    };
    let driver = [info.driver.as_str(), info.driver_info.as_str()].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(" ");
    let name = format!("{} ({:?}{}{})", info.name, info.backend, if driver.is_empty() { "" } else { ", " }, driver);
    crate::output::note!("wgpu adapter: {name}");
    let _ = ADAPTER.set(name);
    Ok(device)
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
}
