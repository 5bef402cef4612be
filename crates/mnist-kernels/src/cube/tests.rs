//! The CubeCL kernels against Burn's operations on the same backend, forward and every
//! gradient, odd shapes and the seed's; on burn-wgpu, so they run through lavapipe
//! (Mesa's software Vulkan) where there is no GPU.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::tensor::activation::relu;
use burn::tensor::{Distribution, ElementConversion, Tensor};
use burn_autodiff::Autodiff;
use burn_wgpu::Wgpu;

use super::*;
use crate::test_support::{block_matches_burn, max_abs_diff};
use crate::{Implementation, Kernels};

const NEEDS_ADAPTER: &str = "needs a wgpu adapter (a GPU, or lavapipe: apt-get install mesa-vulkan-drivers, XDG_RUNTIME_DIR set)";

fn fused<B: Backend>(x: Tensor<B, 4>, w: Tensor<B, 4>, b: Tensor<B, 1>) -> Tensor<B, 4> {
    conv_relu_pool(x, w, b).unwrap_or_else(|_| panic!("the CubeCL kernels refused a supported block"))
}

/// Odd sides (the pool drops the last row and column), kernel 3, a batch that does not
/// fill a split; the seed's two blocks (batch 2, to keep lavapipe's compiles short), the
/// first with its untracked images.
#[test]
#[ignore = "needs a wgpu adapter (a GPU, or lavapipe: apt-get install mesa-vulkan-drivers, XDG_RUNTIME_DIR set); run with --include-ignored"]
fn cube_block_matches_burn_forward_and_backward() {
    let _ = NEEDS_ADAPTER;
    let shapes = [(3, 2, 7, 9, 4, 3, true), (2, 1, 28, 28, 32, 5, false), (2, 32, 14, 14, 64, 5, true)];
    block_matches_burn::<Autodiff<Wgpu>>(fused, &shapes);
}

/// Inference (no autodiff) runs the same forward kernel, and both report it.
#[test]
#[ignore = "needs a wgpu adapter (a GPU, or lavapipe: apt-get install mesa-vulkan-drivers, XDG_RUNTIME_DIR set); run with --include-ignored"]
fn inference_on_wgpu_uses_the_cube_kernels_and_says_so() {
    let device = Default::default();
    let conv = Conv2dConfig::new([3, 5], [5, 5]).with_padding(PaddingConfig2d::Same).init::<Wgpu>(&device);
    let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
    let x = Tensor::<Wgpu, 4>::random([2, 3, 9, 8], Distribution::Default, &device);
    let bias = conv.bias.as_ref().expect("bias").val();
    let ours = fused(x.clone(), conv.weight.val(), bias.clone());
    let reference = pool.forward(relu(conv.forward(x)));
    let (a, r) = (ours.into_data().to_vec::<f32>().expect("f32"), reference.into_data().to_vec::<f32>().expect("f32"));
    assert!(max_abs_diff(&a, &r) < 1e-5);
    assert_eq!(crate::conv_block_implementation(Kernels::Fastest, &conv, &pool), Implementation::FusedCube);
    let tracked = Conv2dConfig::new([3, 5], [5, 5]).with_padding(PaddingConfig2d::Same).init::<Autodiff<Wgpu>>(&device);
    assert_eq!(crate::conv_block_implementation(Kernels::Fastest, &tracked, &pool), Implementation::FusedCube);
    assert_eq!(crate::conv_block_implementation(Kernels::Burn, &tracked, &pool), Implementation::Burn);
}

#[test]
fn splits_cover_every_position_once_and_fill_a_gpu() {
    for (positions, per) in [(1, 800), (63, 800), (9800, 800), (100_352, 800), (2450, 51_200), (25_088, 51_200), (7, 1 << 21)] {
        let (s, chunk) = splits(positions, per);
        assert!(s * chunk >= positions && (s - 1) * chunk < positions, "{positions} {per}: {s} x {chunk}");
        assert!(s * per <= (1 << 20) || s == 1, "{positions} {per}: {s} splits");
    }
    // The seed's conv1 at batch 50: 9800 positions over 800 weights.
    assert!(splits(9800, 800).0 * 800 >= 60_000);
}

/// The fused Adam kernel against Burn's Adam on the same backend, five steps (so the
/// moments carried in the state are read back), on a small parameter, one that needs
/// many cubes, and a transposed view; and it is what the optimizer reports.
#[test]
#[ignore = "needs a wgpu adapter (a GPU, or lavapipe: apt-get install mesa-vulkan-drivers, XDG_RUNTIME_DIR set); run with --include-ignored"]
fn fused_adam_on_wgpu_follows_burns_adam() {
    use crate::adam::tests::run;
    use crate::{FusedAdam, FusedAdamConfig};
    assert_eq!(FusedAdam::implementation::<Wgpu>(), Implementation::FusedAdam);
    let config = FusedAdamConfig::new();
    let (fused, burn) = (config.init(), config.to_burn().build());
    for (n, transposed) in [(40, false), (1 << 16, false), (48, true)] {
        let ours = run::<Wgpu, _>(&fused, n, transposed, 5);
        let theirs = run::<Wgpu, _>(&burn, n, transposed, 5);
        assert!(max_abs_diff(&ours, &theirs) <= 1e-6, "n = {n}: max difference {}", max_abs_diff(&ours, &theirs));
        let on_cpu = run::<burn_flex::Flex, _>(&burn, n, transposed, 5);
        assert!(max_abs_diff(&ours, &on_cpu) <= 1e-6, "n = {n}: against the CPU {}", max_abs_diff(&ours, &on_cpu));
    }
}

/// The whole-module optimizer on wgpu (all parameters in one launch) against Burn's Adam,
/// with the adaptor's record.
#[test]
#[ignore = "needs a wgpu adapter (a GPU, or lavapipe: apt-get install mesa-vulkan-drivers, XDG_RUNTIME_DIR set); run with --include-ignored"]
fn module_optimizer_on_wgpu_follows_burns_adam() {
    crate::adam::tests::module_optimizer_follows_burns_adam::<Autodiff<Wgpu>>();
}

#[test]
fn launches_bind_four_buffers_a_parameter_within_the_limit() {
    use super::adam::per_launch;
    // WebGPU's default limit of 8 storage buffers (7 in `max_bindings`: wgpu keeps one):
    // one parameter a launch; the seed's eight parameters in one launch from 33.
    assert_eq!(per_launch(7), 1);
    assert_eq!(per_launch(0), 1);
    assert_eq!(per_launch(32), 7);
    assert_eq!(per_launch(33), 8);
    assert_eq!(per_launch(u32::MAX), (u32::MAX as usize - 1) / 4);
}

/// The kernel writes in place only into buffers nothing else holds: a parameter and a
/// state still referenced elsewhere keep their values.
#[test]
#[ignore = "needs a wgpu adapter (a GPU, or lavapipe: apt-get install mesa-vulkan-drivers, XDG_RUNTIME_DIR set); run with --include-ignored"]
fn fused_adam_on_wgpu_leaves_shared_tensors_alone() {
    use burn::optim::SimpleOptimizer;
    let device = Default::default();
    let adam = crate::FusedAdamConfig::new().init();
    let p = Tensor::<Wgpu, 1>::from_floats([0.5, -1.0, 2.0, 0.0], &device);
    let g = Tensor::<Wgpu, 1>::from_floats([0.1, -0.2, 0.0, 3.0], &device);
    // The kernel runs (the update is not handed on to Burn's Adam).
    assert_eq!(crate::FusedAdam::implementation::<Wgpu>(), Implementation::FusedAdam);
    let (p1, state) = SimpleOptimizer::<Wgpu>::step(&adam, 0.1, p.clone(), g.clone(), None);
    let kept_state = state.clone();
    let (p2, _) = SimpleOptimizer::<Wgpu>::step(&adam, 0.1, p1.clone(), g, state);
    let read = |t: Tensor<Wgpu, 1>| t.into_data().to_vec::<f32>().expect("f32");
    assert_eq!(read(p), vec![0.5, -1.0, 2.0, 0.0]);
    // Adam's first step moves by lr * sign(g), the second by lr again.
    let p1 = read(p1);
    assert!(max_abs_diff(&p1, &[0.4, -0.9, 2.0, -0.1]) < 1e-5, "{p1:?}");
    let p2 = read(p2);
    assert!(max_abs_diff(&p2, &[0.3, -0.8, 2.0, -0.2]) < 1e-5, "{p2:?}");
    let m = read(kept_state.expect("a state").momentum.moment_1);
    assert!(max_abs_diff(&m, &[0.01, -0.02, 0.0, 0.3]) < 1e-6, "first moment after one step: {m:?}");
}

/// The dropout mask computed on the device is the host's, bit for bit, with and without
/// autodiff.
#[test]
#[ignore = "needs a wgpu adapter (a GPU, or lavapipe: apt-get install mesa-vulkan-drivers, XDG_RUNTIME_DIR set); run with --include-ignored"]
fn dropout_masks_on_wgpu_are_the_cpus() {
    use crate::dropout::MaskKey;
    use crate::dropout_mask;
    let device = Default::default();
    // Computed on the device (not on the host and copied).
    let key = MaskKey::new(9, 1, 0.5);
    assert!(super::dropout::mask::<Wgpu>([2, 3], key, &device).is_some());
    assert!(super::dropout::mask::<Autodiff<Wgpu>>([2, 3], key, &device).is_some());
    let read = |t: Tensor<burn_flex::Flex, 2>| t.into_data().to_vec::<f32>().expect("f32");
    for (batch, width, keep, step) in [(50, 1024, 0.5, 0), (3, 7, 0.8, 12_345)] {
        let cpu = read(dropout_mask::<burn_flex::Flex>(batch, width, keep, 9, step, &Default::default()));
        let gpu = dropout_mask::<Wgpu>(batch, width, keep, 9, step, &device).into_data().to_vec::<f32>().expect("f32");
        assert_eq!(gpu, cpu, "{batch} x {width} at {keep}");
        let tracked = dropout_mask::<Autodiff<Wgpu>>(batch, width, keep, 9, step, &device).into_data().to_vec::<f32>().expect("f32");
        assert_eq!(tracked, cpu);
    }
}

/// `(loss, d loss / d logits)` of `loss_fn` on `Autodiff<B>`, for the logits and labels
/// given, the loss multiplied by `upstream` before the backward pass.
fn loss_and_grad<B: Backend>(
    loss_fn: impl Fn(Tensor<Autodiff<B>, 2>, Tensor<Autodiff<B>, 1, burn::tensor::Int>) -> Tensor<Autodiff<B>, 1>,
    logits: &[f32],
    labels: &[i64],
    classes: usize,
    upstream: f32,
) -> (f32, Vec<f32>) {
    use burn::tensor::{Int, TensorData};
    let device = Default::default();
    let n = labels.len();
    let x = Tensor::<Autodiff<B>, 2>::from_data(TensorData::new(logits.to_vec(), [n, classes]), &device).require_grad();
    let y = Tensor::<Autodiff<B>, 1, Int>::from_data(TensorData::new(labels.to_vec(), [n]), &device);
    let loss = loss_fn(x.clone(), y);
    let value = loss.clone().into_scalar().elem::<f32>();
    let grads = (loss * upstream).backward();
    let dx = x.grad(&grads).expect("a gradient for the logits").into_data().to_vec::<f32>().expect("f32");
    (value, dx)
}

/// The fused softmax cross-entropy against Burn's `CrossEntropyLoss` on the same backend:
/// the loss and the logits' gradient within 1e-5, for the seed's batch, a batch of more
/// rows than the kernel's threads, odd class counts, one row, large logits (the log-sum-exp
/// must subtract the maximum) and an upstream gradient other than 1; without autodiff the
/// same loss; a label out of range gives NaN.
#[test]
#[ignore = "needs a wgpu adapter (a GPU, or lavapipe: apt-get install mesa-vulkan-drivers, XDG_RUNTIME_DIR set); run with --include-ignored"]
fn softmax_cross_entropy_on_wgpu_matches_burn() {
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::{Int, TensorData};
    use crate::{softmax_cross_entropy, softmax_cross_entropy_implementation};
    assert_eq!(softmax_cross_entropy_implementation::<Autodiff<Wgpu>>(Kernels::Fastest), Implementation::FusedCube);
    assert_eq!(softmax_cross_entropy_implementation::<Wgpu>(Kernels::Fastest), Implementation::FusedCube);
    assert_eq!(softmax_cross_entropy_implementation::<Wgpu>(Kernels::Burn), Implementation::Burn);
    let ours = |x, y| super::loss::softmax_cross_entropy(x, y).unwrap_or_else(|_| panic!("the kernel refused f32 logits"));
    let burns = |x: Tensor<Autodiff<Wgpu>, 2>, y| CrossEntropyLossConfig::new().init(&x.device()).forward(x, y);
    let mut seed = 7u32;
    let mut next = move || {
        seed = crate::dropout::lowbias32(seed);
        f64::from(seed) / f64::from(u32::MAX)
    };
    for (n, classes, spread, upstream) in [(50, 10, 4.0, 1.0), (300, 10, 4.0, 1.0), (7, 3, 2.0, 2.5), (1, 10, 1.0, 1.0), (9, 5, 300.0, -0.5)] {
        let logits: Vec<f32> = (0..n * classes).map(|_| ((next() - 0.5) * spread) as f32 + 50.0).collect();
        let labels: Vec<i64> = (0..n).map(|_| (next() * classes as f64) as i64 % classes as i64).collect();
        let (a, da) = loss_and_grad::<Wgpu>(ours, &logits, &labels, classes, upstream);
        let (b, db) = loss_and_grad::<Wgpu>(burns, &logits, &labels, classes, upstream);
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{n} x {classes}: loss {a} against Burn's {b}");
        assert!(max_abs_diff(&da, &db) <= 1e-5, "{n} x {classes}: gradient differs by {}", max_abs_diff(&da, &db));
        // Without autodiff: the same kernel, the same loss.
        let device = Default::default();
        let x = Tensor::<Wgpu, 2>::from_data(TensorData::new(logits.clone(), [n, classes]), &device);
        let y = Tensor::<Wgpu, 1, Int>::from_data(TensorData::new(labels.clone(), [n]), &device);
        let plain = softmax_cross_entropy(Kernels::Fastest, x, y).into_scalar().elem::<f32>();
        assert!((plain - a).abs() <= 1e-6 * a.abs().max(1.0), "{n} x {classes}: {plain} without autodiff, {a} with");
    }
    for bad in [3, -1] {
        let (loss, _) = loss_and_grad::<Wgpu>(ours, &[0.0, 1.0, 2.0, 0.5, 0.5, 0.5], &[0, bad], 3, 1.0);
        assert!(loss.is_nan(), "label {bad} of 3 classes: loss {loss}");
    }
}
