//! The CubeCL kernels against Burn's operations on the same backend, forward and every
//! gradient, odd shapes and the seed's; on burn-wgpu, so they run through lavapipe
//! (Mesa's software Vulkan) where there is no GPU.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::tensor::activation::relu;
use burn::tensor::{Distribution, Tensor};
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
