//! Adam's update as one CubeCL kernel per parameter: the parameter and both moments are
//! read and written in place in one pass (Burn's `Adam` takes about a dozen tensor
//! operations per parameter, each its own pass over memory, and its own launch where
//! fusion does not merge them). The formula is the one in [`crate::adam`], with the same
//! scalars, so the update follows Burn's Adam within float rounding.
//!
//! On `Fusion<B>` (burn-wgpu's and burn-cuda's default backends) the update is one
//! custom operation in the fusion stream, as the convolution block's passes are.

use std::marker::PhantomData;

use burn::optim::{AdamState, AdaptiveMomentumState, LearningRate};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use super::grid;
use crate::adam::{FusedAdam, Inputs, Step, all_f32};
use crate::{cast, float};

/// The scalars of one update, computed on the host in f32 as Burn's Adam computes them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scalars {
    /// `lr * sqrt(1 - b2^t) / (1 - b1^t)`.
    step: f32,
    /// `eps * sqrt(1 - b2^t)`.
    epsilon: f32,
    beta_1: f32,
    beta_2: f32,
}

/// The updated parameter and moments.
pub(crate) struct Updated<B: Backend> {
    pub p: FloatTensor<B>,
    pub m: FloatTensor<B>,
    pub v: FloatTensor<B>,
}

/// A backend that runs the fused Adam kernel (Burn's backend-extension pattern).
pub(crate) trait AdamBackend: Backend {
    /// One update of parameter `p` with gradient `g` and moments `m`, `v` (all f32, one
    /// shape): the new parameter and moments, in the inputs' own buffers where nothing
    /// else holds them.
    fn adam_update(p: FloatTensor<Self>, g: FloatTensor<Self>, m: FloatTensor<Self>, v: FloatTensor<Self>, s: Scalars) -> Updated<Self>;
}

/// The kernels apart, where `Tensor` is CubeCL's, not Burn's.
mod kernel {
    use cubecl::prelude::*;

    /// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`, `p -= step * m / (sqrt(v) + eps)`,
    /// one thread per element, in place.
    #[cube(launch)]
    pub(super) fn adam_kernel(
        p: &mut Tensor<f32>,
        g: &Tensor<f32>,
        m: &mut Tensor<f32>,
        v: &mut Tensor<f32>,
        step: f32,
        epsilon: f32,
        beta_1: f32,
        beta_2: f32,
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= p.len() {
            terminate!();
        }
        let gi = g[pos];
        let mi = beta_1 * m[pos] + (1.0f32 - beta_1) * gi;
        let vi = beta_2 * v[pos] + (1.0f32 - beta_2) * (gi * gi);
        m[pos] = mi;
        v[pos] = vi;
        p[pos] -= step * mi / (f32::sqrt(vi) + epsilon);
    }
}

impl<R: CubeRuntime, BT: BoolElement> AdamBackend for CubeBackend<R, f32, i32, BT> {
    fn adam_update(p: FloatTensor<Self>, g: FloatTensor<Self>, m: FloatTensor<Self>, v: FloatTensor<Self>, s: Scalars) -> Updated<Self> {
        // A buffer something else still reads (a parameter shared with another module, a
        // moment kept by the caller) is copied once; the kernel then owns what it writes.
        let writable = |t: CubeTensor<R>| {
            let t = into_contiguous(t);
            if t.can_mut() { t } else { t.copy() }
        };
        let (p, m, v, g) = (writable(p), writable(m), writable(v), into_contiguous(g));
        let client = p.client.clone();
        let (count, dim) = grid(&client, p.meta.num_elements());
        kernel::adam_kernel::launch(
            &client,
            count,
            dim,
            p.clone().into_tensor_arg(),
            g.into_tensor_arg(),
            m.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            s.step,
            s.epsilon,
            s.beta_1,
            s.beta_2,
        );
        Updated { p, m, v }
    }
}

/// The update as a custom operation: inputs `[p, g, m, v]`, outputs `[p, m, v]`.
#[derive(Debug)]
struct AdamOp<B> {
    desc: CustomOpIr,
    scalars: Scalars,
    backend: PhantomData<B>,
}

impl<B: FusionBackend + AdamBackend> Operation<B::FusionRuntime> for AdamOp<B> {
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let ([p, g, m, v], [p2, m2, v2]) = self.desc.as_fixed::<4, 3>();
        let out = B::adam_update(
            handles.get_float_tensor::<B>(p),
            handles.get_float_tensor::<B>(g),
            handles.get_float_tensor::<B>(m),
            handles.get_float_tensor::<B>(v),
            self.scalars,
        );
        handles.register_float_tensor::<B>(&p2.id, out.p);
        handles.register_float_tensor::<B>(&m2.id, out.m);
        handles.register_float_tensor::<B>(&v2.id, out.v);
    }
}

impl<B: FusionBackend + AdamBackend> AdamBackend for Fusion<B> {
    fn adam_update(p: FloatTensor<Self>, g: FloatTensor<Self>, m: FloatTensor<Self>, v: FloatTensor<Self>, s: Scalars) -> Updated<Self> {
        let client = p.client.clone();
        let streams = OperationStreams::with_inputs([&p, &g, &m, &v]);
        let out = || TensorIr::uninit(client.create_empty_handle(), p.shape.clone(), DType::F32);
        let outputs = [out(), out(), out()];
        let desc = CustomOpIr::new("mnist_kernels::adam", &[p.into_ir(), g.into_ir(), m.into_ir(), v.into_ir()], &outputs);
        let op = AdamOp::<B> { desc: desc.clone(), scalars: s, backend: PhantomData };
        let [p, m, v]: [_; 3] = client
            .register(streams, OperationIr::Custom(desc), op)
            .try_into()
            .unwrap_or_else(|_| unreachable!("three outputs registered"));
        Updated { p, m, v }
    }
}

/// The update on `C` when `B` is `C`, else the inputs back.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn on<B: Backend, C: AdamBackend, const D: usize>(
    adam: &FusedAdam,
    lr: LearningRate,
    tensor: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<AdamState<B, D>>,
) -> Result<Step<B, D>, Inputs<B, D>> {
    let tensor = match cast::<Tensor<B, D>, Tensor<C, D>>(tensor) {
        Ok(t) => t,
        Err(tensor) => return Err((tensor, grad, state)),
    };
    let (Ok(grad), Ok(state)) = (cast::<_, Tensor<C, D>>(grad), cast::<_, Option<AdamState<C, D>>>(state)) else {
        unreachable!("tensor, gradient and state share the backend B");
    };
    let (m, v, time) = match state {
        Some(s) => (s.momentum.moment_1, s.momentum.moment_2, s.momentum.time + 1),
        None => (tensor.zeros_like(), tensor.zeros_like(), 1),
    };
    let f = adam.factors(lr, time);
    let scalars = Scalars { step: f.step, epsilon: f.epsilon, beta_1: adam.config().beta_1, beta_2: adam.config().beta_2 };
    let out = C::adam_update(float(tensor), float(grad), float(m), float(v), scalars);
    let wrap = |t: FloatTensor<C>| Tensor::<C, D>::from_primitive(TensorPrimitive::Float(t));
    let state = AdamState::new(AdaptiveMomentumState::new(time, wrap(out.m), wrap(out.v)));
    let (Ok(tensor), Ok(state)) = (cast::<_, Tensor<B, D>>(wrap(out.p)), cast::<_, Option<AdamState<B, D>>>(Some(state))) else {
        unreachable!("B is C");
    };
    Ok((tensor, state))
}

/// The fused update when `B` is one of the CubeCL backends compiled in (see the module's
/// overview of [`super`]) and everything is f32; else the inputs back, untouched.
pub(crate) fn step<B: Backend, const D: usize>(
    adam: &FusedAdam,
    lr: LearningRate,
    tensor: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<AdamState<B, D>>,
) -> Result<Step<B, D>, Inputs<B, D>> {
    if !all_f32(&tensor, &grad, state.as_ref()) {
        return Err((tensor, grad, state));
    }
    #[cfg(feature = "wgpu")]
    let (tensor, grad, state) = match on::<B, burn_wgpu::Wgpu, D>(adam, lr, tensor, grad, state) {
        Ok(done) => return Ok(done),
        Err(back) => back,
    };
    #[cfg(feature = "cuda")]
    let (tensor, grad, state) = match on::<B, burn_cuda::Cuda, D>(adam, lr, tensor, grad, state) {
        Ok(done) => return Ok(done),
        Err(back) => back,
    };
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    let _ = (adam, lr);
    Err((tensor, grad, state))
}
