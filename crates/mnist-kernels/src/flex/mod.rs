//! The fused convolution block for burn-flex: SAME convolution (stride 1, odd square
//! kernel) + bias + ReLU + 2x2 max-pool with stride 2, forward and backward.
//!
//! Forward ([`mod@forward`]). The input is laid out as zero-padded channels-last (NHWC)
//! images ([`layout`]), where a window's kernel row is `k * c` contiguous floats; register
//! tiles of 5 pixels x 16 output channels sum the window against weights packed per panel
//! of 16 channels, two convolution rows at a time, and one sweep over those sums adds the
//! bias, applies ReLU, max-pools, writes the output `[b, o, h/2, w/2]`, and records which of
//! the four inputs won each pooling window (or that none was positive). No im2col buffer.
//! A 5x5 kernel over a multiple of 8 input channels (the seed's conv2) instead goes
//! through Winograd's F(4x4, 5x5) ([`mod@winograd`]): each output tile is four pooling
//! windows, and the transformed products need 6.25 times fewer multiplications.
//!
//! Backward ([`mod@backward`]). Pooling passes each window's gradient to its winner only, and
//! ReLU drops the rest, so at most a quarter of the convolution's output gradient is
//! non-zero. The backward pass lists those entries per image, by channel and by pixel, and
//! sums `g * window` into the weight gradient and `g * W[oc]` into the input gradient's
//! windows in register tiles, over zero-padded channels-last copies of the input and its
//! gradient: a quarter of the arithmetic of the dense GEMMs, with no im2col buffer.
//!
//! Nothing here is `unsafe`: loops over slices, rayon for threads, and [`lanes`] (on
//! `pulp`) to compile the hot loops for AVX2 + FMA when the CPU has them. The op plugs
//! into `Autodiff<Flex>` through burn-autodiff's `Backward` trait and is reached from
//! generic code by a `TypeId` check (`crate::native`), so other backends never see it.
//!
//! [`pool`] keeps the large gradient buffers the optimizer hands back for the next
//! step's gradient (and each thread's kept scratch), and [`adam`] is the fused Adam
//! update.

use std::borrow::Cow;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::Flex;

pub(crate) use crate::{Geometry, Refused, cast, float};

pub(crate) mod adam;
mod backward;
mod forward;
pub(crate) mod lanes;
mod layout;
mod linear;
mod pool;
mod sparse;
mod wide;
mod winograd;

use backward::backward;
use forward::{BlockOut, forward};
use layout::{Layout, Padded};
pub(crate) use linear::{linear, training_layout};
use pool::{recycle, recycle_winners, spare_or_zeroed, spare_winners};

type Ad = Autodiff<Flex>;

/// Marks a pooling window whose maximum was not positive: ReLU zeroed it, so it passes
/// no gradient.
const NONE: u8 = 4;

/// `maxpool2x2(relu(conv_same(x, weight) + bias))` as one fused operation:
/// `x: [b, c, h, w]`, `weight: [o, c, k, k]` (k odd), `bias: [o]` -> `[b, o, h / 2, w / 2]`.
///
/// Runs when `B` is burn-flex (with or without autodiff) with f32 tensors of a supported
/// shape; otherwise hands the three tensors back untouched (moved, never cloned: an extra
/// reference to an autodiff tensor while the op registers keeps burn-autodiff from
/// freeing what its graph no longer needs).
pub(crate) fn conv_relu_pool<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
) -> Result<Tensor<B, 4>, Refused<B, 4>> {
    let Some(geometry) = Geometry::of(&x, &weight, &bias).filter(|&g| Layout::new(g).offsets_fit_u32()) else {
        return Err((x, weight, bias));
    };
    let x = match cast::<Tensor<B, 4>, Tensor<Ad, 4>>(x) {
        Ok(x) => {
            let (Ok(weight), Ok(bias)) = (cast::<_, Tensor<Ad, 4>>(weight), cast::<_, Tensor<Ad, 1>>(bias)) else {
                unreachable!("x, weight and bias share the backend B");
            };
            let y = autodiff(geometry, x, weight, bias);
            return Ok(cast(y).unwrap_or_else(|_| unreachable!("B is Autodiff<Flex>")));
        }
        Err(x) => x,
    };
    let x = match cast::<Tensor<B, 4>, Tensor<Flex, 4>>(x) {
        Ok(x) => x,
        Err(x) => return Err((x, weight, bias)),
    };
    let (Ok(weight), Ok(bias)) = (cast::<_, Tensor<Flex, 4>>(weight), cast::<_, Tensor<Flex, 1>>(bias)) else {
        unreachable!("x, weight and bias share the backend B");
    };
    let (x, weight, bias) = (float(x), float(weight), float(bias));
    // Inference: nothing reads the padded input afterwards.
    let (out, winners, _) = forward_into_spares(geometry, &values::<4>(&x), &values::<4>(&weight), &values::<1>(&bias), false);
    // The input's last read, unless the caller holds it (the next block's output of this
    // shape, or the next batch's).
    recycle(x);
    recycle_winners(winners);
    let y = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(out));
    Ok(cast(y).unwrap_or_else(|_| unreachable!("B is Flex")))
}

/// The block's forward pass (see [`forward()`]) into buffers for its output `[b, o, h/2,
/// w/2]` and winners that are recycled ones when kept (see [`pool`]), else new ones (it
/// writes every value): the output as a tensor, the winners, and the padded input when
/// `keep`.
fn forward_into_spares(g: Geometry, x: &[f32], weight: &[f32], bias: &[f32], keep: bool) -> (FloatTensor<Flex>, Vec<u8>, Option<Padded>) {
    let mut out = spare_or_zeroed(g.out_shape());
    let mut winners = spare_winners(g.out_shape().iter().product());
    let len = winners.len();
    let xp = forward(g, x, weight, bias, keep, BlockOut { out: &mut out.storage_mut::<f32>()[..len], winners: &mut winners });
    (out, winners, xp)
}

/// The values of an f32 Flex tensor, as a `Vec` (a copy: burn-flex's buffers are
/// over-aligned, so Burn's `into_vec` copies them even when the tensor owns its buffer).
pub(crate) fn to_vec<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().unwrap_or_else(|e| unreachable!("checked f32: {e:?}"))
}

/// Whether the tensor's stored values, from the start of its buffer, are its values in
/// order (contiguous, no offset), so `storage()[..n]` may be read or written in place.
pub(crate) fn is_dense(t: &FloatTensor<Flex>) -> bool {
    let n = t.layout().num_elements();
    t.is_contiguous() && t.layout().start_offset() == 0 && t.storage::<f32>().len() >= n
}

/// Whether a 2-D tensor `[i, j]` is stored column by column from the start of its buffer:
/// the buffer holds its transpose `[j, i]` dense (strides `[1, i]`, no offset), as
/// [`by_columns`] leaves it, so `storage()[..i * j]` is that transpose. A tensor whose
/// strides are also row-major (one value) counts as stored by rows, not by columns.
pub(crate) fn is_dense_by_columns(t: &FloatTensor<Flex>) -> bool {
    let layout = t.layout();
    let &[i, j] = layout.shape().as_slice() else {
        return false;
    };
    layout.strides() == [1, i as isize] && !layout.is_contiguous() && layout.start_offset() == 0 && t.storage::<f32>().len() >= i * j
}

/// `t`'s transpose, a view of its buffer (taking `t`, so that a buffer `t` alone held is
/// the view's alone).
pub(crate) fn transposed(t: FloatTensor<Flex>) -> FloatTensor<Flex> {
    t.transpose(0, 1)
}

/// The same 2-D tensor `[i, j]` stored column by column ([`is_dense_by_columns`]): itself
/// when it is already, else a copy (a transposition of all its values).
pub(crate) fn by_columns(t: FloatTensor<Flex>) -> FloatTensor<Flex> {
    if is_dense_by_columns(&t) {
        return t;
    }
    transposed(t.transpose(0, 1).to_contiguous())
}

/// The values of an f32 Flex primitive of rank `D`: its own buffer when dense, else a copy.
pub(crate) fn values<const D: usize>(t: &FloatTensor<Flex>) -> Cow<'_, [f32]> {
    let n = t.layout().num_elements();
    if is_dense(t) { Cow::Borrowed(&t.storage::<f32>()[..n]) } else { Cow::Owned(prim_to_vec::<D>(t.clone())) }
}

/// The values of an f32 Flex primitive of rank `D`.
pub(crate) fn prim_to_vec<const D: usize>(p: FloatTensor<Flex>) -> Vec<f32> {
    to_vec(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(p)))
}

/// An f32 Flex primitive of rank `D` holding `values` (no copy: the vector becomes its
/// buffer).
pub(crate) fn from_vec<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FloatTensor<Flex> {
    match Tensor::<Flex, D>::from_data(TensorData::new(values, shape), &Default::default()).into_primitive() {
        TensorPrimitive::Float(p) => p,
        TensorPrimitive::QFloat(_) => unreachable!("from_data of f32 values is a float tensor"),
    }
}

/// What the backward pass keeps from the forward pass.
#[derive(Debug, Clone)]
struct Saved {
    geometry: Geometry,
    /// The input as padded NHWC images (see `layout`).
    xp: Arc<Padded>,
    weight: FloatTensor<Flex>,
    winners: Arc<Vec<u8>>,
}

#[derive(Debug)]
struct ConvReluPool;

impl Backward<Flex, 3> for ConvReluPool {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let g = s.geometry;
        let shape = [g.b, g.c, g.h, g.w];
        // Into a recycled buffer when one is kept (see `pool`): every value is written.
        let mut dx = node_x.is_some().then(|| spare_or_zeroed(shape));
        let dx_values = dx.as_mut().map(|dx| &mut dx.storage_mut::<f32>()[..shape.iter().product()]);
        let result = backward(g, &s.xp, &values::<4>(&s.weight), &s.winners, &values::<4>(&grad), dx_values);
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = node_weight {
            grads.register::<Flex>(node.id, from_vec(result.dw, [g.o, g.c, g.k, g.k]));
        }
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, from_vec(result.db, [g.o]));
        }
        // The output gradient's and the winners' last reads.
        recycle(grad);
        if let Ok(winners) = Arc::try_unwrap(s.winners) {
            recycle_winners(winners);
        }
    }
}

fn autodiff(g: Geometry, x: Tensor<Ad, 4>, weight: Tensor<Ad, 4>, bias: Tensor<Ad, 1>) -> Tensor<Ad, 4> {
    let (x, weight, bias) = (float(x), float(weight), float(bias));
    let (out, winners, xp) = forward_into_spares(g, &values::<4>(&x.primitive), &values::<4>(&weight.primitive), &values::<1>(&bias.primitive), true);
    let xp = xp.unwrap_or_else(|| unreachable!("the padded input is kept when asked for"));
    let nodes = [x.node.clone(), weight.node.clone(), bias.node.clone()];
    // The input's last read (the backward pass reads the padded copy), unless something
    // else holds it: at 512, conv1's output is 13 MB.
    recycle(x.primitive);
    let y = match ConvReluPool.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(
            Saved { geometry: g, xp: Arc::new(xp), weight: weight.primitive, winners: Arc::new(winners) },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// A deterministic test value in [-1, 1) for index `i`, shared by the kernels' unit tests.
#[cfg(test)]
fn test_value(i: usize) -> f32 {
    ((i * 7919 + 13) % 2000) as f32 / 1000.0 - 1.0
}

#[cfg(test)]
mod tests {
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::activation::relu;
    use burn::tensor::{Distribution, Tensor};

    use super::*;

    /// The fused block against Burn's conv2d + relu + max_pool2d, forward and every
    /// gradient, on shapes unlike the seed's: odd sides (the pool drops the last row and
    /// column), kernel 3 and 5, direct and Winograd forward (8 and 32 input channels), an
    /// untracked input (the first layer's).
    #[test]
    fn fused_block_matches_burn_forward_and_backward() {
        let shapes = [(3, 2, 7, 9, 4, 3, true), (2, 1, 28, 28, 8, 5, true), (2, 1, 28, 28, 8, 5, false), (3, 8, 9, 7, 5, 5, true), (40, 32, 14, 14, 6, 5, true)];
        crate::test_support::block_matches_burn::<Ad>(|x, w, b| conv_relu_pool(x, w, b).unwrap_or_else(|_| panic!("fused")), &shapes);
    }

    /// Recycled buffers full of stale values give what new ones give: the block's output,
    /// winners and input gradient come from the pool when it keeps buffers of their sizes
    /// (here, NaN and winners of 255 put there first), and every value is written. Both
    /// forward kernels (direct for one input channel, Winograd for eight), sizes over
    /// [`pool`]'s smallest kept buffer.
    #[test]
    fn recycled_buffers_give_what_new_ones_give() {
        let device = Default::default();
        for (b, c, h, o) in [(64, 1, 28, 32), (32, 8, 24, 64)] {
            let x = Tensor::<Ad, 4>::random([b, c, h, h], Distribution::Normal(0.0, 1.0), &device).require_grad();
            let weight = Tensor::<Ad, 4>::random([o, c, 5, 5], Distribution::Normal(0.0, 0.1), &device).require_grad();
            let bias = Tensor::<Ad, 1>::random([o], Distribution::Normal(0.0, 0.1), &device).require_grad();
            let mix = Tensor::<Ad, 4>::random([b, o, h / 2, h / 2], Distribution::Normal(0.0, 1.0), &device);
            let run = || {
                let y = conv_relu_pool(x.clone(), weight.clone(), bias.clone()).unwrap_or_else(|_| panic!("fused"));
                let grads = (y.clone() * mix.clone()).sum().backward();
                let bits = |t: Tensor<Ad, 4>| -> Vec<u32> { t.inner().into_data().to_vec::<f32>().expect("f32").iter().map(|v| v.to_bits()).collect() };
                let grad = |t: &Tensor<Ad, 4>| bits(Tensor::from_inner(t.grad(&grads).expect("a gradient")));
                (bits(y), grad(&x), grad(&weight), bias.grad(&grads).expect("db").into_data().to_vec::<f32>().expect("f32"))
            };
            let fresh = run();
            let (outputs, inputs) = (b * o * (h / 2) * (h / 2), b * c * h * h);
            for n in [outputs, inputs] {
                while pool::spare([n]).is_some() {}
                recycle(from_vec(vec![f32::NAN; n], [n]));
            }
            recycle_winners(vec![0xFF; outputs]);
            let again = run();
            assert!(again == fresh, "{:?}: other values from recycled buffers", (b, c, h, o));
        }
    }

    #[test]
    fn inference_backend_and_untracked_inputs_use_the_fused_block() {
        let device = Default::default();
        let conv = Conv2dConfig::new([1, 3], [5, 5]).with_padding(PaddingConfig2d::Same).init::<Flex>(&device);
        let x = Tensor::<Flex, 4>::random([2, 1, 8, 8], Distribution::Default, &device);
        let bias = conv.bias.as_ref().expect("bias").val();
        let fused = conv_relu_pool(x.clone(), conv.weight.val(), bias).unwrap_or_else(|_| panic!("fused on Flex"));
        let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
        let reference = pool.forward(relu(conv.forward(x)));
        let (a, r) = (fused.into_data().to_vec::<f32>().expect("f32"), reference.into_data().to_vec::<f32>().expect("f32"));
        assert!(crate::test_support::max_abs_diff(&a, &r) < 1e-5);
    }

    #[test]
    fn other_backends_and_even_kernels_are_handed_back() {
        let device = Default::default();
        let x = Tensor::<burn_ndarray::NdArray, 4>::zeros([1, 1, 4, 4], &device);
        let w = Tensor::zeros([2, 1, 3, 3], &device);
        let b = Tensor::zeros([2], &device);
        assert!(conv_relu_pool(x, w, b).is_err());
        let x = Tensor::<Flex, 4>::zeros([1, 1, 4, 4], &Default::default());
        let w = Tensor::zeros([2, 1, 2, 2], &Default::default());
        let b = Tensor::zeros([2], &Default::default());
        assert!(conv_relu_pool(x, w, b).is_err());
    }
}
