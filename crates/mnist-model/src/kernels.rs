//! Which implementation computes a convolution block (convolution, bias, ReLU, 2x2
//! max-pool), and the dispatch to it.
//!
//! Burn's CPU backends compute `conv2d` directly and its backward pass as further
//! convolutions, and pool in a separate pass; for this network's shapes that is most of a
//! training step. On burn-flex (cargo feature `flex`) the block runs instead as one fused
//! operation with its own backward pass ([`crate::flex`]): im2col + one large GEMM, with the
//! bias, ReLU and pooling applied in a single sweep over the GEMM's output. Every other
//! backend uses Burn's own operations. Both give the same results up to float rounding
//! (the parity tests hold logits and gradients within 1e-4).

use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// How [`Cnn`](crate::Cnn) computes its convolution blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// The fastest available: the fused CPU kernel on burn-flex (when this crate is built
    /// with the `flex` feature), the backend's own operations elsewhere.
    #[default]
    Fastest,
    /// Burn's `conv2d`, `relu` and `max_pool2d` on every backend: the reference.
    Burn,
}

impl Kernels {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Fastest => "fastest",
            Kernels::Burn => "burn",
        }
    }
}

/// Whether `conv` and `pool` are the shapes the fused kernel computes: a stride-1, SAME,
/// ungrouped convolution and a 2x2 max-pool with stride 2.
#[cfg(feature = "flex")]
fn fusable<B: Backend>(conv: &Conv2d<B>, pool: &MaxPool2d) -> bool {
    use burn::nn::PaddingConfig2d;
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
    #[cfg(not(feature = "flex"))]
    let _ = kernels;
    pool.forward(relu(conv.forward(x)))
}
