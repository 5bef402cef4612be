//! Which implementation computes a convolution block (convolution, bias, ReLU, 2x2
//! max-pool) and a fully connected layer, and the dispatch to it.
//!
//! Burn's CPU backends compute `conv2d` directly and its backward pass as further
//! convolutions, and pool in a separate pass; for this network's shapes that is most of a
//! training step. On burn-flex (cargo feature `flex`) the block runs instead as one fused
//! operation with its own backward pass ([`crate::flex`]): a direct convolution in register
//! tiles over zero-padded channels-last images, with the bias, ReLU and pooling applied to
//! the tiles, and a sparse backward through the pooling winners. The fully connected
//! layers on `Autodiff<Flex>` compute their matrix products with kernels of their own.
//! Every other backend uses Burn's own operations. [`Kernels::Im2col`] computes the block with Burn
//! tensor operations as im2col + matmul on any backend, for GPUs whose matrix product is
//! tuned further than their convolution. All give the same results up to float rounding
//! (the parity tests hold logits and gradients within 1e-4).

use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::activation::relu;
use burn::tensor::Tensor;
use burn::tensor::ops::PadMode;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// How [`Cnn`](crate::Cnn) computes its convolution blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// The fastest available: the fused CPU kernels on burn-flex (when this crate is built
    /// with the `flex` feature; with autodiff, the fully connected layers' matrix products
    /// too), the backend's own operations elsewhere.
    #[default]
    Fastest,
    /// Burn's `conv2d`, `relu` and `max_pool2d` on every backend: the reference.
    Burn,
    /// Convolution as im2col (k*k shifted slices of the padded NHWC input, concatenated)
    /// and one matrix product, pooling as a reshape and two maxima, all as Burn tensor
    /// operations on any backend (blocks of other shapes than a SAME, stride-1, odd square
    /// convolution and a 2x2 pool use Burn's operations). Slow on CPUs, where the copies
    /// dominate; on one H200 with wgpu it trained 17% faster than Burn's convolution at
    /// batch 50 and 12% slower at batch 512.
    Im2col,
}

impl Kernels {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Fastest => "fastest",
            Kernels::Burn => "burn",
            Kernels::Im2col => "im2col",
        }
    }
}

/// Whether `conv` and `pool` are the shapes the fused kernel computes: a stride-1, SAME,
/// ungrouped convolution and a 2x2 max-pool with stride 2.
fn fusable<B: Backend>(conv: &Conv2d<B>, pool: &MaxPool2d) -> bool {
    conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(conv.padding, PaddingConfig2d::Same)
        && pool.kernel_size == [2, 2]
        && pool.stride == [2, 2]
        && pool.dilation == [1, 1]
        && matches!(pool.padding, PaddingConfig2d::Valid)
        && !pool.ceil_mode
}

/// `maxpool2x2(relu(conv(x)))`: `x: [b, c, h, w]` -> `[b, o, h / 2, w / 2]`.
pub(crate) fn conv_relu_pool<B: Backend>(
    kernels: Kernels,
    conv: &Conv2d<B>,
    pool: &MaxPool2d,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let x = match (kernels, &conv.bias) {
        (Kernels::Fastest, Some(bias)) if fusable(conv, pool) => match crate::flex::conv_relu_pool(x, conv.weight.val(), bias.val()) {
            Ok(y) => return y,
            Err(x) => x,
        },
        _ => x,
    };
    if let (Kernels::Im2col, Some(bias)) = (kernels, &conv.bias)
        && fusable(conv, pool)
        && conv.kernel_size[0] == conv.kernel_size[1]
        && conv.kernel_size[0] % 2 == 1
    {
        return im2col_relu_pool(x, conv.weight.val(), bias.val());
    }
    pool.forward(relu(conv.forward(x)))
}

/// `linear.forward(x)`: `x: [n, in]` -> `[n, out]`. On `Autodiff<Flex>` (with
/// [`Kernels::Fastest`]) the product and both gradients are mnist-model's own kernels
/// ([`crate::flex_host::linear`]), and on burn-flex without autodiff the product for
/// batches of up to 64; the values are the same up to float rounding.
pub(crate) fn linear<B: Backend>(kernels: Kernels, layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let x = match (kernels, &layer.bias) {
        (Kernels::Fastest, Some(bias)) => match crate::flex::linear(x, layer.weight.val(), bias.val()) {
            Ok(y) => return y,
            Err(x) => x,
        },
        _ => x,
    };
    #[cfg(not(feature = "flex"))]
    let _ = kernels;
    layer.forward(x)
}

/// [`Kernels::Im2col`]: `maxpool2x2(relu(conv_same(x, weight) + bias))` as tensor operations.
/// `x: [b, c, h, w]`, `weight: [o, c, k, k]` (k odd), `bias: [o]` -> `[b, o, h / 2, w / 2]`.
fn im2col_relu_pool<B: Backend>(x: Tensor<B, 4>, weight: Tensor<B, 4>, bias: Tensor<B, 1>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let [o, _, k, _] = weight.dims();
    let p = k / 2;
    // Padded NHWC input: [b, h + 2p, w + 2p, c].
    let padded = x.permute([0, 2, 3, 1]).pad([(p, p), (p, p), (0, 0)], PadMode::Constant(0.0));
    // Columns ordered (dy, dx, channel): [b * h * w, k * k * c].
    let shifted: Vec<Tensor<B, 4>> = (0..k * k)
        .map(|i| padded.clone().slice([0..b, i / k..i / k + h, i % k..i % k + w, 0..c]))
        .collect();
    let columns = Tensor::cat(shifted, 3).reshape([b * h * w, k * k * c]);
    // Weight in the same order: [k * k * c, o].
    let weight = weight.permute([2, 3, 1, 0]).reshape([k * k * c, o]);
    let y = relu(columns.matmul(weight) + bias.unsqueeze::<2>());
    // 2x2 max-pool (floor): [b, h/2, 2, w/2, 2, o] -> [b, h/2, w/2, o].
    let (h2, w2) = (h / 2, w / 2);
    let y = y.reshape([b, h, w, o]).slice([0..b, 0..2 * h2, 0..2 * w2, 0..o]);
    let y = y.reshape([b, h2, 2, w2, 2, o]).max_dim(2).max_dim(4).reshape([b, h2, w2, o]);
    y.permute([0, 3, 1, 2])
}
