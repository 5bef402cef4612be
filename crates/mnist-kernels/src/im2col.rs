//! [`Kernels::Im2col`](crate::Kernels::Im2col): the convolution block as im2col and one
//! matrix product, made only of Burn tensor operations, so it runs on every backend.

use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;

/// [`Kernels::Im2col`](crate::Kernels::Im2col): `maxpool2x2(relu(conv_same(x, weight) + bias))` as tensor operations.
/// `x: [b, c, h, w]`, `weight: [o, c, k, k]` (k odd), `bias: [o]` -> `[b, o, h / 2, w / 2]`.
pub(crate) fn conv_relu_pool<B: Backend>(x: Tensor<B, 4>, weight: Tensor<B, 4>, bias: Tensor<B, 1>) -> Tensor<B, 4> {
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
