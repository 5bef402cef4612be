//! burn-wgpu against burn-flex: same logits and the same training step from the same
//! weights (the convolution blocks run mnist-kernels' CubeCL kernels on wgpu and its
//! flex kernels on flex, so this holds the two to each other through the whole network). On a machine without a GPU, Mesa's lavapipe (a software Vulkan driver) runs
//! them; it compiles every shader on first use, which takes minutes, so these tests use
//! one forward pass and one small step. They need an adapter, so they are ignored by a
//! plain `cargo test` (which lists them as ignored, with the reason) and run with
//! `--include-ignored`, as the README's full test command and CI do; run, they fail
//! without an adapter.

use burn::backend::Autodiff;
use burn::tensor::Tensor;
use burn_flex::Flex;
use burn_wgpu::{Wgpu, WgpuDevice};
use mnist_data::{DatasetKind, Locator};
use mnist_model::CnnConfig;
use mnist_model::artifact::{self, Manifest};

use crate::backends::{assert_same_step, max_diff, one_step};

/// Why the tests are ignored by default.
const NEEDS_ADAPTER: &str = "needs a wgpu adapter (a GPU, or lavapipe: apt-get install mesa-vulkan-drivers, XDG_RUNTIME_DIR set); run with --include-ignored";

/// The default wgpu device; a clear failure when there is no adapter.
fn device() -> WgpuDevice {
    let device = WgpuDevice::default();
    let probe = device.clone();
    let found = std::panic::catch_unwind(move || Tensor::<Wgpu, 1>::zeros([1], &probe).into_data());
    assert!(found.is_ok(), "no wgpu adapter: {NEEDS_ADAPTER}");
    device
}

#[test]
#[ignore = "needs a wgpu adapter (a GPU, or lavapipe: apt-get install mesa-vulkan-drivers, XDG_RUNTIME_DIR set); run with --include-ignored"]
fn wgpu_loads_flex_weights_and_gives_the_same_logits() {
    let device = device();
    let data = Locator::offline(None).load(DatasetKind::Sample).unwrap();
    let config = CnnConfig::new();
    let dir = tempfile::tempdir().unwrap();
    let flex = config.init::<Flex>(21, &Default::default()).unwrap();
    artifact::save_dir(&flex, &Manifest::from_config(config.clone()), dir.path()).unwrap();
    let (_, gpu) = artifact::load_dir::<Wgpu>(dir.path(), &device).unwrap();
    // The convolution blocks run mnist-kernels' CubeCL kernels, not Burn's operations.
    assert_eq!(gpu.kernels_in_use().conv_blocks, "fused CubeCL kernels");
    let pixels = &data.test.images()[..8 * 784];
    let a = flex.forward(mnist_model::input::images::<Flex>(pixels, &Default::default()));
    let b = gpu.forward(mnist_model::input::images::<Wgpu>(pixels, &device));
    let d = max_diff(&a.into_data().to_vec::<f32>().unwrap(), &b.into_data().to_vec::<f32>().unwrap());
    assert!(d <= 1e-4, "max logit difference {d}");
}

#[test]
#[ignore = "needs a wgpu adapter (a GPU, or lavapipe: apt-get install mesa-vulkan-drivers, XDG_RUNTIME_DIR set); run with --include-ignored"]
fn wgpu_training_step_gives_the_same_parameters_as_flex() {
    let device = device();
    let a = one_step::<Autodiff<Flex>>(&Default::default());
    let b = one_step::<Autodiff<Wgpu>>(&device);
    assert_same_step(&a, &b);
    // Both updates were fused Adam kernels (flex's and the CubeCL one), as training
    // reports them.
    let model = CnnConfig::new().init::<Autodiff<Wgpu>>(5, &device).unwrap();
    assert_eq!(mnist_train::kernels_in_use(&model).optimizer.as_deref(), Some("fused Adam"));
}
