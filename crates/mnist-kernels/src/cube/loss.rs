//! Softmax cross-entropy as one CubeCL kernel: the mean loss and its gradient with respect
//! to the logits in a single launch, so a training step's loss takes one launch forward
//! and at most one element-wise product backward, where Burn's `CrossEntropyLoss` takes
//! a log-softmax (two reductions), a gather and a mean forward and their backward passes
//! (reductions, a scatter of the one-hot gradient, element-wise kernels).
//!
//! The gradient is the textbook one: for row `r` with label `y`,
//! `d loss / d logits[r, j] = (softmax(logits[r])_j - [j == y]) / n` (Goodfellow, Bengio and
//! Courville, "Deep Learning", 2016, section 6.2.2.3). It is computed with the loss, kept
//! for the backward pass, and scaled there by the gradient of whatever uses the loss (1
//! when the loss is the root).

use std::marker::PhantomData;

use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Int, Shape, Tensor, TensorPrimitive};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use cubecl::prelude::*;

use crate::{cast, float};

/// Threads of the kernel's one cube: each takes every `THREADS`-th row, then thread 0
/// sums the threads' losses. A training batch (50 rows; 512) is one or two rows a thread.
const THREADS: usize = 256;

/// The kernels apart, where `Tensor` is CubeCL's, not Burn's.
mod kernel {
    use cubecl::prelude::*;

    /// `loss[0] = mean over rows r of (logsumexp(logits[r]) - logits[r, labels[r]])` and
    /// `dlogits[r, j] = (softmax(logits[r])_j - [j == labels[r]]) / n`, for `logits [n,
    /// classes]`, `labels [n]`. One cube of `threads` threads. A label outside
    /// `0..classes` makes the loss `nan` (a scalar argument: WGSL has no NaN literal) and
    /// its row's gradient the softmax alone, so a bad label never passes unnoticed.
    #[cube(launch)]
    #[allow(clippy::manual_div_ceil, reason = "a CubeCL kernel: plain integer arithmetic")]
    pub(super) fn cross_entropy_kernel(
        logits: &Tensor<f32>,
        labels: &Tensor<i32>,
        loss: &mut Tensor<f32>,
        dlogits: &mut Tensor<f32>,
        nan: f32,
        #[comptime] classes: usize,
        #[comptime] threads: usize,
    ) {
        let n = labels.len();
        let t = UNIT_POS as usize;
        let scale = 1.0f32 / f32::cast_from(n as u32);
        let mut acc = 0.0f32;
        let rounds = (n + threads - 1) / threads;
        for round in 0..rounds {
            let row = round * threads + t;
            if row < n {
                let base = row * classes;
                let mut top = logits[base];
                #[unroll]
                for j in 1..classes {
                    let v = logits[base + j];
                    if v > top {
                        top = v;
                    }
                }
                let mut sum = 0.0f32;
                #[unroll]
                for j in 0..classes {
                    sum += (logits[base + j] - top).exp();
                }
                let inv = 1.0f32 / sum;
                let label = labels[row];
                let mut hit = false;
                #[unroll]
                for j in 0..classes {
                    let v = logits[base + j];
                    let mut g = (v - top).exp() * inv;
                    if label == j as i32 {
                        g -= 1.0f32;
                        acc += top + sum.ln() - v;
                        hit = true;
                    }
                    dlogits[base + j] = g * scale;
                }
                if !hit {
                    acc += nan;
                }
            }
        }
        let mut partial = SharedMemory::<f32>::new(threads);
        partial[t] = acc;
        sync_cube();
        if t == 0 {
            let mut total = 0.0f32;
            for i in 0..threads {
                total += partial[i];
            }
            loss[0] = total * scale;
        }
    }
}

/// The loss `[1]` and its gradient with respect to the logits `[n, classes]`.
pub(crate) struct LossAndGrad<B: Backend> {
    pub loss: FloatTensor<B>,
    pub dlogits: FloatTensor<B>,
}

/// A backend that computes softmax cross-entropy with [`kernel::cross_entropy_kernel`].
pub(crate) trait LossBackend: Backend {
    /// `logits [n, classes]` (f32) against `labels [n]`.
    fn cross_entropy(n: usize, classes: usize, logits: FloatTensor<Self>, labels: IntTensor<Self>) -> LossAndGrad<Self>;
}

impl<R: CubeRuntime, BT: BoolElement> LossBackend for CubeBackend<R, f32, i32, BT> {
    fn cross_entropy(n: usize, classes: usize, logits: FloatTensor<Self>, labels: IntTensor<Self>) -> LossAndGrad<Self> {
        let (logits, labels) = (into_contiguous(logits), into_contiguous(labels));
        let (client, device) = (logits.client.clone(), logits.device.clone());
        let loss = empty_device::<R, f32>(client.clone(), device.clone(), Shape::new([1]));
        let dlogits = empty_device::<R, f32>(client.clone(), device, Shape::new([n, classes]));
        kernel::cross_entropy_kernel::launch(
            &client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(THREADS as u32),
            logits.into_tensor_arg(),
            labels.into_tensor_arg(),
            loss.clone().into_tensor_arg(),
            dlogits.clone().into_tensor_arg(),
            f32::NAN,
            classes,
            THREADS,
        );
        LossAndGrad { loss, dlogits }
    }
}

/// The loss as a custom operation in the fusion stream: inputs `[logits, labels]`,
/// outputs `[loss, dlogits]`.
#[derive(Debug)]
struct LossOp<B> {
    desc: CustomOpIr,
    n: usize,
    classes: usize,
    backend: PhantomData<B>,
}

impl<B: FusionBackend + LossBackend> Operation<B::FusionRuntime> for LossOp<B> {
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let ([logits, labels], [loss, dlogits]) = self.desc.as_fixed::<2, 2>();
        let out = B::cross_entropy(self.n, self.classes, handles.get_float_tensor::<B>(logits), handles.get_int_tensor::<B>(labels));
        handles.register_float_tensor::<B>(&loss.id, out.loss);
        handles.register_float_tensor::<B>(&dlogits.id, out.dlogits);
    }
}

impl<B: FusionBackend + LossBackend> LossBackend for Fusion<B> {
    fn cross_entropy(n: usize, classes: usize, logits: FloatTensor<Self>, labels: IntTensor<Self>) -> LossAndGrad<Self> {
        let client = logits.client.clone();
        let streams = OperationStreams::with_inputs([&logits, &labels]);
        let out = |shape: Vec<usize>| TensorIr::uninit(client.create_empty_handle(), Shape::from(shape), DType::F32);
        let outputs = [out(vec![1]), out(vec![n, classes])];
        let desc = CustomOpIr::new("mnist_kernels::softmax_cross_entropy", &[logits.into_ir(), labels.into_ir()], &outputs);
        let op = LossOp::<B> { desc: desc.clone(), n, classes, backend: PhantomData };
        let [loss, dlogits]: [_; 2] = client
            .register(streams, OperationIr::Custom(desc), op)
            .try_into()
            .unwrap_or_else(|_| unreachable!("two outputs registered"));
        LossAndGrad { loss, dlogits }
    }
}

#[derive(Debug)]
struct CrossEntropy;

impl<B: LossBackend> Backward<B, 1> for CrossEntropy {
    /// The loss's gradient with respect to the logits, for an upstream gradient of 1.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<FloatTensor<B>, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_logits] = ops.parents;
        let upstream = grads.consume::<B>(&ops.node);
        if let Some(node) = node_logits {
            let upstream = B::float_reshape(upstream, Shape::new([1, 1]));
            grads.register::<B>(node.id, B::float_mul(ops.state, upstream));
        }
    }
}

/// The loss on `Autodiff<C>`: the kernel, and its gradient registered for the backward pass.
fn autodiff<C: LossBackend>(logits: Tensor<Autodiff<C>, 2>, labels: Tensor<Autodiff<C>, 1, Int>) -> Tensor<Autodiff<C>, 1> {
    let [n, classes] = logits.dims();
    let logits = float(logits);
    let out = C::cross_entropy(n, classes, logits.primitive, labels.into_primitive());
    let loss = match CrossEntropy.prepare::<NoCheckpointing>([logits.node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(out.dlogits, out.loss),
        OpsKind::UnTracked(prep) => prep.finish(out.loss),
    };
    Tensor::from_primitive(TensorPrimitive::Float(loss))
}

/// The arguments of the loss handed back when the kernel does not run: logits and labels.
type Refused<B> = (Tensor<B, 2>, Tensor<B, 1, Int>);

/// The loss on `C` or `Autodiff<C>` when `B` is one of them, else the arguments back.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn on<B: Backend, C: LossBackend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Result<Tensor<B, 1>, Refused<B>> {
    let logits = match cast::<Tensor<B, 2>, Tensor<Autodiff<C>, 2>>(logits) {
        Ok(logits) => {
            let Ok(labels) = cast::<_, Tensor<Autodiff<C>, 1, Int>>(labels) else {
                unreachable!("logits and labels share the backend B");
            };
            return Ok(cast(autodiff(logits, labels)).unwrap_or_else(|_| unreachable!("B is Autodiff<C>")));
        }
        Err(logits) => logits,
    };
    let logits = match cast::<Tensor<B, 2>, Tensor<C, 2>>(logits) {
        Ok(logits) => logits,
        Err(logits) => return Err((logits, labels)),
    };
    let Ok(labels) = cast::<_, Tensor<C, 1, Int>>(labels) else {
        unreachable!("logits and labels share the backend B");
    };
    let [n, classes] = logits.dims();
    let out = C::cross_entropy(n, classes, float(logits), labels.into_primitive());
    let loss = Tensor::<C, 1>::from_primitive(TensorPrimitive::Float(out.loss));
    Ok(cast(loss).unwrap_or_else(|_| unreachable!("B is C")))
}

/// Softmax cross-entropy with the kernel when `B` is one of the CubeCL backends compiled
/// in (with or without autodiff), the logits are f32 with at least one row and one class
/// and the labels i32 (these backends' integers), one a row; otherwise the arguments back, untouched.
pub(crate) fn softmax_cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Result<Tensor<B, 1>, Refused<B>> {
    let [n, classes] = logits.dims();
    if n == 0 || classes == 0 || logits.dtype() != DType::F32 || labels.dtype() != DType::I32 || labels.dims() != [n] {
        return Err((logits, labels));
    }
    #[cfg(feature = "wgpu")]
    let (logits, labels) = match on::<B, burn_wgpu::Wgpu>(logits, labels) {
        Ok(loss) => return Ok(loss),
        Err(back) => back,
    };
    #[cfg(feature = "cuda")]
    let (logits, labels) = match on::<B, burn_cuda::Cuda>(logits, labels) {
        Ok(loss) => return Ok(loss),
        Err(back) => back,
    };
    Err((logits, labels))
}
