//! The convolution block as CubeCL kernels, one source for every CubeCL runtime (burn-wgpu
//! and burn-cuda): SAME convolution (stride 1, odd square kernel) + bias + ReLU + 2x2
//! max-pool with stride 2, forward and backward, the same operation as the CPU kernels in
//! `flex/`.
//!
//! Forward ([`kernels::forward_kernel`]): one thread per pooled output computes the four
//! convolution sums of its window (reading zeros outside the image: no padded copy is
//! made), adds the bias, and keeps the maximum through ReLU with the window's winner (or
//! that none was positive).
//!
//! Backward: pooling passes each window's gradient to its winner only, so at most a
//! quarter of the convolution's output gradient is non-zero and none of it is formed.
//! - The weight gradient is split along the batch x pixel dimension (split-K): each of
//!   `s` splits sums `g * window` over its share of the pooled positions into a partial
//!   `[s, o * c * k * k + o]` (the bias's after the weight's), enough threads to fill a
//!   GPU even for conv1's 800 weights, then one sum over the splits. (Burn's weight gradient for conv1 is a direct convolution of
//!   a few hundred threads each summing over the whole batch.)
//! - The bias gradient in the same pass, over the same splits, and summed by the same
//!   launch: a block's weight and bias gradients take two launches.
//! - The input gradient only when the input needs one (not for the first layer's
//!   images): one thread per input pixel gathering the winners whose kernel reaches it.
//!
//! The kernels run on `CubeBackend<R, f32, i32, _>` for any CubeCL runtime `R`, and on
//! `Fusion` of it (burn-wgpu's and burn-cuda's default backends) as custom operations
//! registered in the fusion stream ([`fusion`], Burn's backend-extension pattern, as
//! `burn-vision` does), so no step waits on the host. Autodiff goes through
//! burn-autodiff's `Backward` trait. Generic code reaches them through the `TypeId`
//! dispatch in `crate::native`: `Wgpu` and `Autodiff<Wgpu>` with the cargo feature
//! `wgpu`, `Cuda` and `Autodiff<Cuda>` with `cuda`.
//!
//! The rest of a training step's own kernels, the same way: [`adam`], Adam's update in
//! place, a module's parameters in one launch where the device binds enough buffers, and
//! [`dropout`], the dropout mask computed on the device from the seed and the step, and
//! [`loss`], softmax cross-entropy and its gradient in one launch.

pub(crate) mod adam;
pub(crate) mod dropout;
mod fusion;
mod kernels;
pub(crate) mod loss;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Shape, Tensor, TensorPrimitive};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use crate::{Geometry, Refused, cast, float};

/// The forward pass's results: the pooled output `[b, o, h/2, w/2]` and the winners
/// (same shape, i32: `2 * dy + dx`, or [`kernels::NONE`]).
pub(crate) struct Forward<B: Backend> {
    pub y: FloatTensor<B>,
    pub winners: IntTensor<B>,
}

/// The backward pass's results: the input gradient (when asked for), the weight's and the
/// bias's.
pub(crate) struct Grads<B: Backend> {
    pub dx: Option<FloatTensor<B>>,
    pub dw: FloatTensor<B>,
    pub db: FloatTensor<B>,
}

/// A backend that runs the block's CubeCL kernels (Burn's backend-extension pattern).
pub(crate) trait BlockBackend: Backend {
    /// `x [b, c, h, w]`, `weight [o, c, k, k]`, `bias [o]`, all f32, as `g` says.
    fn block_forward(g: Geometry, x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> Forward<Self>;

    /// The gradients for the output gradient `grad [b, o, h/2, w/2]`, from the forward
    /// pass's input `x`, weight and winners; `dx` only when `input_grad`.
    fn block_backward(
        g: Geometry,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        winners: IntTensor<Self>,
        grad: FloatTensor<Self>,
        input_grad: bool,
    ) -> Grads<Self>;
}

/// Threads per launch grid dimension for the element-wise launches: one thread per
/// output element, the cube size CubeCL picks for the client.
fn grid<R: CubeRuntime>(client: &ComputeClient<R>, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, n);
    (calculate_cube_count_elemwise(client, n, dim), dim)
}

/// The split of `positions` pooled positions for the split-K gradients of `per_split`
/// outputs each: `(splits, chunk)`, at least 64 positions a split and at most about a
/// million threads in all (enough to fill a large GPU, and a bounded partial buffer).
fn splits(positions: usize, per_split: usize) -> (usize, usize) {
    const MIN_CHUNK: usize = 64;
    const MAX_THREADS: usize = 1 << 20;
    let wanted = positions.div_ceil(MIN_CHUNK).min((MAX_THREADS / per_split.max(1)).max(1)).max(1);
    let chunk = positions.div_ceil(wanted).max(1);
    (positions.div_ceil(chunk).max(1), chunk)
}

impl<R: CubeRuntime, BT: BoolElement> BlockBackend for CubeBackend<R, f32, i32, BT> {
    fn block_forward(g: Geometry, x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> Forward<Self> {
        let (x, weight, bias) = (into_contiguous(x), into_contiguous(weight), into_contiguous(bias));
        let (client, device) = (x.client.clone(), x.device.clone());
        let (ph, pw) = g.pooled();
        let y = empty_device::<R, f32>(client.clone(), device.clone(), Shape::new([g.b, g.o, ph, pw]));
        let winners = empty_device::<R, i32>(client.clone(), device, Shape::new([g.b, g.o, ph, pw]));
        let (count, dim) = grid(&client, y.meta.num_elements());
        kernels::forward_kernel::launch(
            &client,
            count,
            dim,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            winners.clone().into_tensor_arg(),
            g.c,
            g.h,
            g.w,
            g.o,
            g.k,
        );
        Forward { y, winners }
    }

    fn block_backward(
        g: Geometry,
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        winners: IntTensor<Self>,
        grad: FloatTensor<Self>,
        input_grad: bool,
    ) -> Grads<Self> {
        let (x, weight, grad, winners) = (into_contiguous(x), into_contiguous(weight), into_contiguous(grad), into_contiguous(winners));
        let (client, device) = (grad.client.clone(), grad.device.clone());
        let (ph, pw) = g.pooled();
        let positions = g.b * ph * pw;
        let taps = g.o * g.c * g.k * g.k;

        let (s, chunk) = splits(positions, taps);
        let partial = empty_device::<R, f32>(client.clone(), device.clone(), Shape::new([s, taps + g.o]));
        let (count, dim) = grid(&client, s * taps);
        kernels::weight_grad_kernel::launch(
            &client,
            count,
            dim,
            x.into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            winners.clone().into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            chunk as u32,
            positions as u32,
            s as u32,
            g.c,
            g.h,
            g.w,
            g.o,
            g.k,
        );
        let dw = empty_device::<R, f32>(client.clone(), device.clone(), Shape::new([g.o, g.c, g.k, g.k]));
        let db = empty_device::<R, f32>(client.clone(), device.clone(), Shape::new([g.o]));
        let (count, dim) = grid(&client, taps + g.o);
        kernels::sum_splits_kernel::launch(&client, count, dim, partial.into_tensor_arg(), dw.clone().into_tensor_arg(), db.clone().into_tensor_arg(), s as u32);

        let dx = input_grad.then(|| {
            let dx = empty_device::<R, f32>(client.clone(), device, Shape::new([g.b, g.c, g.h, g.w]));
            let (count, dim) = grid(&client, dx.meta.num_elements());
            kernels::input_grad_kernel::launch(
                &client,
                count,
                dim,
                weight.into_tensor_arg(),
                grad.into_tensor_arg(),
                winners.into_tensor_arg(),
                dx.clone().into_tensor_arg(),
                g.c,
                g.h,
                g.w,
                g.o,
                g.k,
            );
            dx
        });
        Grads { dx, dw, db }
    }
}

/// What the backward pass keeps from the forward pass.
#[derive(Debug, Clone)]
struct Saved<B: Backend> {
    geometry: Geometry,
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    winners: IntTensor<B>,
}

#[derive(Debug)]
struct ConvReluPool;

impl<B: BlockBackend> Backward<B, 3> for ConvReluPool {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Saved<B>, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let s = ops.state;
        let result = B::block_backward(s.geometry, s.x, s.weight, s.winners, grad, node_x.is_some());
        if let (Some(node), Some(dx)) = (node_x, result.dx) {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, result.dw);
        }
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, result.db);
        }
    }
}

/// The block on `Autodiff<B>`: the forward kernels, and the backward ones registered.
fn autodiff<B: BlockBackend>(g: Geometry, x: Tensor<Autodiff<B>, 4>, weight: Tensor<Autodiff<B>, 4>, bias: Tensor<Autodiff<B>, 1>) -> Tensor<Autodiff<B>, 4> {
    let (x, weight, bias) = (float(x), float(weight), float(bias));
    let nodes = [x.node.clone(), weight.node.clone(), bias.node.clone()];
    let out = B::block_forward(g, x.primitive.clone(), weight.primitive.clone(), bias.primitive);
    let y = match ConvReluPool.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            prep.finish(Saved { geometry: g, x: x.primitive, weight: weight.primitive, winners: out.winners }, out.y)
        }
        OpsKind::UnTracked(prep) => prep.finish(out.y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// The block on `C` or `Autodiff<C>` when `B` is one of them, else the arguments back.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn on<B: Backend, C: BlockBackend>(g: Geometry, x: Tensor<B, 4>, weight: Tensor<B, 4>, bias: Tensor<B, 1>) -> Result<Tensor<B, 4>, Refused<B, 4>> {
    let x = match cast::<Tensor<B, 4>, Tensor<Autodiff<C>, 4>>(x) {
        Ok(x) => {
            let (Ok(weight), Ok(bias)) = (cast::<_, Tensor<Autodiff<C>, 4>>(weight), cast::<_, Tensor<Autodiff<C>, 1>>(bias)) else {
                unreachable!("x, weight and bias share the backend B");
            };
            return Ok(cast(autodiff(g, x, weight, bias)).unwrap_or_else(|_| unreachable!("B is Autodiff<C>")));
        }
        Err(x) => x,
    };
    let x = match cast::<Tensor<B, 4>, Tensor<C, 4>>(x) {
        Ok(x) => x,
        Err(x) => return Err((x, weight, bias)),
    };
    let (Ok(weight), Ok(bias)) = (cast::<_, Tensor<C, 4>>(weight), cast::<_, Tensor<C, 1>>(bias)) else {
        unreachable!("x, weight and bias share the backend B");
    };
    let out = C::block_forward(g, float(x), float(weight), float(bias));
    let y = Tensor::<C, 4>::from_primitive(TensorPrimitive::Float(out.y));
    Ok(cast(y).unwrap_or_else(|_| unreachable!("B is C")))
}

/// `maxpool2x2(relu(conv_same(x, weight) + bias))` with the CubeCL kernels:
/// `x: [b, c, h, w]`, `weight: [o, c, k, k]` (k odd), `bias: [o]` -> `[b, o, h / 2, w / 2]`.
///
/// Runs when `B` is one of the CubeCL backends compiled in (see the module's overview)
/// with f32 tensors of a supported shape; otherwise hands the three tensors back
/// untouched (moved, never cloned).
pub(crate) fn conv_relu_pool<B: Backend>(x: Tensor<B, 4>, weight: Tensor<B, 4>, bias: Tensor<B, 1>) -> Result<Tensor<B, 4>, Refused<B, 4>> {
    let Some(g) = Geometry::of(&x, &weight, &bias) else {
        return Err((x, weight, bias));
    };
    #[cfg(feature = "wgpu")]
    let (x, weight, bias) = match on::<B, burn_wgpu::Wgpu>(g, x, weight, bias) {
        Ok(y) => return Ok(y),
        Err(back) => back,
    };
    #[cfg(feature = "cuda")]
    let (x, weight, bias) = match on::<B, burn_cuda::Cuda>(g, x, weight, bias) {
        Ok(y) => return Ok(y),
        Err(back) => back,
    };
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    let _ = g;
    Err((x, weight, bias))
}

#[cfg(test)]
mod tests;
