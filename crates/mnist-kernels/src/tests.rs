//! The dispatch: every op against Burn's modules, on every path, odd shapes included, and
//! what each path reports.

use burn::nn::conv::Conv2dConfig;
use burn::nn::pool::MaxPool2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Distribution, Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_flex::Flex;
use burn_ndarray::NdArray;

use super::*;

fn max_abs_diff<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    let (a, b) = (a.into_data().to_vec::<f32>().expect("f32"), b.into_data().to_vec::<f32>().expect("f32"));
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Each kernel choice against the modules' own forward passes on backend `B`, at odd
/// sizes and kernels 3 and 5; returns the implementations the blocks reported.
fn blocks_match_burn<B: Backend>(kernels: Kernels) -> Vec<Implementation> {
    let device = Default::default();
    let mut seen = Vec::new();
    for &(b, c, h, w, o, k) in &[(3, 2, 7, 9, 4, 3), (2, 1, 28, 28, 8, 5), (2, 32, 14, 14, 6, 5)] {
        let conv = Conv2dConfig::new([c, o], [k, k]).with_padding(PaddingConfig2d::Same).init::<B>(&device);
        let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
        let x = Tensor::<B, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let ours = conv_block(kernels, &conv, &pool, x.clone());
        let reference = pool.forward(relu(conv.forward(x)));
        assert_eq!(ours.dims(), reference.dims());
        let d = max_abs_diff(ours, reference);
        assert!(d < 1e-4, "{kernels:?} {:?}: {d}", (b, c, h, w, o, k));
        seen.push(conv_block_implementation(kernels, &conv, &pool));
    }
    seen
}

#[test]
fn every_path_computes_the_block_burn_computes() {
    assert!(blocks_match_burn::<NdArray>(Kernels::Fastest).iter().all(|i| *i == Implementation::Burn));
    assert!(blocks_match_burn::<NdArray>(Kernels::Im2col).iter().all(|i| *i == Implementation::Im2col));
    assert!(blocks_match_burn::<Flex>(Kernels::Burn).iter().all(|i| *i == Implementation::Burn));
    assert!(blocks_match_burn::<Flex>(Kernels::Im2col).iter().all(|i| *i == Implementation::Im2col));
    let fastest = if cfg!(feature = "flex") { Implementation::FusedFlex } else { Implementation::Burn };
    assert!(blocks_match_burn::<Flex>(Kernels::Fastest).iter().all(|i| *i == fastest));
    assert!(blocks_match_burn::<Autodiff<Flex>>(Kernels::Fastest).iter().all(|i| *i == fastest));
}

/// Blocks that are not a SAME convolution with a bias and a 2x2 pool take the modules'
/// forward passes, and say so.
#[test]
fn other_blocks_take_the_modules_forward_passes() {
    let device = Default::default();
    let x = Tensor::<Flex, 4>::random([2, 3, 9, 9], Distribution::Default, &device);
    let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
    for conv in [
        Conv2dConfig::new([3, 4], [3, 3]).with_padding(PaddingConfig2d::Valid).init::<Flex>(&device),
        Conv2dConfig::new([3, 4], [3, 3]).with_padding(PaddingConfig2d::Same).with_bias(false).init::<Flex>(&device),
        Conv2dConfig::new([3, 4], [3, 3]).with_padding(PaddingConfig2d::Same).with_stride([2, 2]).init::<Flex>(&device),
    ] {
        assert_eq!(conv_block_implementation(Kernels::Fastest, &conv, &pool), Implementation::Burn);
        let reference = pool.forward(relu(conv.forward(x.clone())));
        assert_eq!(max_abs_diff(conv_block(Kernels::Fastest, &conv, &pool, x.clone()), reference), 0.0);
    }
    let conv = Conv2dConfig::new([3, 4], [3, 3]).with_padding(PaddingConfig2d::Same).init::<Flex>(&device);
    let wide = MaxPool2dConfig::new([3, 3]).with_strides([3, 3]).init();
    assert_eq!(conv_block_implementation(Kernels::Fastest, &conv, &wide), Implementation::Burn);
    // Even kernels are not SAME-symmetric: Burn's operations.
    let w = Tensor::<Flex, 4>::zeros([2, 1, 2, 2], &device);
    assert_eq!(conv_relu_pool_implementation(Kernels::Fastest, &w, &Tensor::zeros([2], &device)), Implementation::Burn);
    assert_eq!(conv_relu_pool_implementation(Kernels::Im2col, &w, &Tensor::zeros([2], &device)), Implementation::Burn);
}

/// The fully connected op against Burn's `Linear`, at batch sizes on both sides of
/// [`SMALL_BATCH`], with the implementation each reports.
fn linear_matches_burn<B: Backend>(kernels: Kernels) -> Vec<Implementation> {
    let device = Default::default();
    let layer = LinearConfig::new(37, 19).init::<B>(&device);
    let mut seen = Vec::new();
    for n in [1, 5, SMALL_BATCH, SMALL_BATCH + 3] {
        let x = Tensor::<B, 2>::random([n, 37], Distribution::Normal(0.0, 1.0), &device);
        let d = max_abs_diff(linear(kernels, &layer, x.clone()), layer.forward(x));
        assert!(d < 1e-4, "{kernels:?}, batch {n}: {d}");
        seen.push(fully_connected_implementation::<B>(kernels));
    }
    seen
}

#[test]
fn fully_connected_layers_compute_what_burn_computes() {
    use Implementation::{Burn, OwnFlex};
    let flex = cfg!(feature = "flex");
    assert_eq!(linear_matches_burn::<NdArray>(Kernels::Fastest), [Burn; 4]);
    assert_eq!(linear_matches_burn::<Flex>(Kernels::Burn), [Burn; 4]);
    assert_eq!(linear_matches_burn::<Flex>(Kernels::Fastest), if flex { [OwnFlex; 4] } else { [Burn; 4] });
    assert_eq!(linear_matches_burn::<Autodiff<Flex>>(Kernels::Fastest), if flex { [OwnFlex; 4] } else { [Burn; 4] });
    let device = Default::default();
    let layer = LinearConfig::new(4, 3).init::<Flex>(&device);
    let expected = if flex { OwnFlex } else { Burn };
    assert_eq!(linear_implementation(Kernels::Fastest, &layer), expected);
    let no_bias = LinearConfig::new(4, 3).with_bias(false).init::<Flex>(&device);
    assert_eq!(linear_implementation(Kernels::Fastest, &no_bias), Burn);
}

/// The training layout keeps a weight's values, shape and tracking on every backend; on
/// burn-flex with AVX-512 it stores a weight of at least 64 x 64 by columns for batches of
/// up to 64 (and leaves the rest, and every other case, as it was).
#[test]
fn the_training_layout_keeps_values_and_tracking() {
    let device = Default::default();
    let by_columns = cfg!(feature = "flex") && simd() == Simd::Avx512;
    for (i, j, batch) in [(96, 70, 50), (96, 70, SMALL_BATCH + 1), (1024, 10, 50), (40, 96, 50)] {
        let w = Tensor::<Autodiff<Flex>, 2>::random([i, j], Distribution::Default, &device);
        let want = w.clone().into_data().to_vec::<f32>().expect("f32");
        for tracked in [true, false] {
            let w = if tracked { w.clone().require_grad() } else { w.clone() };
            let laid = fully_connected_training_layout(Kernels::Fastest, w, batch);
            assert_eq!(laid.dims(), [i, j]);
            assert_eq!(laid.is_require_grad(), tracked, "{:?}", (i, j, batch));
            assert_eq!(laid.clone().into_data().to_vec::<f32>().expect("f32"), want, "{:?}", (i, j, batch));
            #[cfg(feature = "flex")]
            {
                let columns = flex::is_dense_by_columns(&float(laid.inner()));
                assert_eq!(columns, by_columns && i >= 64 && j >= 64 && batch <= SMALL_BATCH, "{:?}", (i, j, batch));
            }
        }
        let plain = Tensor::<Flex, 2>::from_data(TensorData::new(want.clone(), [i, j]), &device);
        let laid = fully_connected_training_layout(Kernels::Burn, plain.clone(), batch);
        assert_eq!(laid.into_data().to_vec::<f32>().expect("f32"), want);
        let nd = Tensor::<NdArray, 2>::from_data(TensorData::new(want.clone(), [i, j]), &Default::default());
        assert_eq!(fully_connected_training_layout(Kernels::Fastest, nd, batch).into_data().to_vec::<f32>().expect("f32"), want);
    }
}

/// Another autodiff checkpointing strategy is another backend type: it takes Burn's
/// operations, and says so (it is not silently slow).
#[test]
fn another_checkpointing_strategy_reports_burns_operations() {
    type Balanced = Autodiff<Flex, burn_autodiff::checkpoint::strategy::BalancedCheckpointing>;
    let device = Default::default();
    let conv = Conv2dConfig::new([1, 4], [5, 5]).with_padding(PaddingConfig2d::Same).init::<Balanced>(&device);
    let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
    assert_eq!(conv_block_implementation(Kernels::Fastest, &conv, &pool), Implementation::Burn);
    assert_eq!(fully_connected_implementation::<Balanced>(Kernels::Fastest), Implementation::Burn);
}

#[test]
fn the_record_names_each_part_once_or_each_layer() {
    use Implementation::*;
    let all = KernelsInUse::new(&[FusedFlex, FusedFlex], &[OwnFlex, OwnFlex]).with_optimizer(FusedAdam);
    assert_eq!(all.to_string(), "convolution blocks: fused flex kernels; fully connected: own flex kernels; optimizer: fused Adam");
    let mixed = KernelsInUse::new(&[FusedFlex, Burn], &[Burn]);
    assert_eq!(mixed.to_string(), "convolution blocks: first: fused flex kernels, second: Burn's operations; fully connected: Burn's operations");
    let json = serde_json::to_value(&all).expect("serialisable");
    assert_eq!(json["optimizer"], "fused Adam");
    assert_eq!(serde_json::from_value::<KernelsInUse>(json).expect("round trip"), all);
    assert_eq!(all.entries().len(), 3);
}

#[test]
fn the_simd_cap_reads_its_values_and_names_a_wrong_one() {
    assert_eq!(Simd::parse_cap("avx2", "x86_64"), Ok(Some(Simd::Avx2)));
    assert_eq!(Simd::parse_cap("AVX512", "x86_64"), Ok(Some(Simd::Avx512)));
    assert_eq!(Simd::parse_cap(" Portable\n", "x86_64"), Ok(Some(Simd::Portable)));
    assert_eq!(Simd::parse_cap("neon", "aarch64"), Ok(Some(Simd::Neon)));
    assert_eq!(Simd::parse_cap("portable", "aarch64"), Ok(Some(Simd::Portable)));
    assert_eq!(Simd::parse_cap("auto", "x86_64"), Ok(None));
    assert_eq!(Simd::parse_cap("", "aarch64"), Ok(None));
    let err = Simd::parse_cap("avx9", "x86_64").unwrap_err();
    assert!(err.contains("MNIST_RS_SIMD=\"avx9\"") && err.contains("expected avx512, avx2, portable or auto"), "{err}");
    // A level of another architecture says so.
    let err = Simd::parse_cap("avx2", "aarch64").unwrap_err();
    assert!(err.contains("avx2 is for x86_64 CPUs and this one is aarch64; expected neon, portable or auto"), "{err}");
    let err = Simd::parse_cap("neon", "x86_64").unwrap_err();
    assert!(err.contains("neon is for aarch64 CPUs"), "{err}");
    assert!(Simd::Portable < Simd::Neon && Simd::Avx2 < Simd::Avx512);
    // What runs is reported, and is of this CPU's architecture.
    assert!(simd().arch().is_none_or(|arch| arch == std::env::consts::ARCH), "{}", simd());
}
