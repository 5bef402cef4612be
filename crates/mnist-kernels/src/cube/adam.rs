//! Adam's update as CubeCL kernels: each launch updates a group of parameters, reading and
//! writing every parameter and both its moments in place in one pass (Burn's `Adam` takes
//! about a dozen tensor operations per parameter, each its own pass over memory, and its
//! own launch where fusion does not merge them). [`crate::FusedAdamOptimizer`] hands all
//! of a module's parameters to one update, so a training step of the seed network makes
//! one Adam launch for its eight parameters: a launch binds four buffers per parameter,
//! and a group is as large as the device's binding limit allows
//! ([`per_launch`]). The formula is the one in [`crate::adam`], with the same scalars, so
//! the update follows Burn's Adam within float rounding.
//!
//! On `Fusion<B>` (burn-wgpu's and burn-cuda's default backends) an update is one custom
//! operation in the fusion stream, as the convolution block's passes are.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use burn::optim::LearningRate;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use cubecl::prelude::*;

use super::grid;
use crate::adam::{FusedAdam, Operands, Updated};

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

/// The operands of one parameter's update: parameter, gradient and both moments.
pub(crate) type Four<B> = [FloatTensor<B>; 4];

/// A backend that runs the fused Adam kernel (Burn's backend-extension pattern).
pub(crate) trait AdamBackend: Backend {
    /// One update of each parameter `p` with gradient `g` and moments `m`, `v` (`[p, g,
    /// m, v]`, all f32, each parameter's of one shape) at one step: the new parameters and
    /// moments in order, in the inputs' own buffers where nothing else holds them.
    fn adam_update(ops: Vec<Four<Self>>, s: Scalars) -> Vec<Updated<Self>>;
}

/// The kernels apart, where `Tensor` is CubeCL's, not Burn's.
mod kernel {
    use cubecl::prelude::*;

    /// For the parameters of a group laid end to end, one thread per element:
    /// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`, `p -= step * m / (sqrt(v) + eps)`,
    /// in place.
    #[cube(launch)]
    pub(super) fn adam_kernel(
        ps: &mut Sequence<Tensor<f32>>,
        gs: &Sequence<Tensor<f32>>,
        ms: &mut Sequence<Tensor<f32>>,
        vs: &mut Sequence<Tensor<f32>>,
        step: f32,
        epsilon: f32,
        beta_1: f32,
        beta_2: f32,
    ) {
        let count = ps.len().comptime();
        let mut start = 0usize;
        #[unroll]
        for i in 0..count {
            let len = ps.index(i).len();
            if ABSOLUTE_POS >= start && ABSOLUTE_POS < start + len {
                let at = ABSOLUTE_POS - start;
                let gi = gs.index(i)[at];
                let mi = beta_1 * ms.index(i)[at] + (1.0f32 - beta_1) * gi;
                let vi = beta_2 * vs.index(i)[at] + (1.0f32 - beta_2) * (gi * gi);
                let pi = ps.index(i)[at] - step * mi / (f32::sqrt(vi) + epsilon);
                ms.index_mut(i)[at] = mi;
                vs.index_mut(i)[at] = vi;
                ps.index_mut(i)[at] = pi;
            }
            start += len;
        }
    }
}

/// Parameters per launch: four buffers each, within the device's `max_bindings` (one kept
/// for the launch's own metadata), and at least one.
pub(crate) fn per_launch(max_bindings: u32) -> usize {
    (max_bindings.saturating_sub(1) as usize / 4).max(1)
}

impl<R: CubeRuntime, BT: BoolElement> AdamBackend for CubeBackend<R, f32, i32, BT> {
    fn adam_update(ops: Vec<Four<Self>>, s: Scalars) -> Vec<Updated<Self>> {
        // A buffer something else still reads (a parameter shared with another module, a
        // moment kept by the caller) is copied once; the kernel then owns what it writes.
        let writable = |t: CubeTensor<R>| {
            let t = into_contiguous(t);
            if t.can_mut() { t } else { t.copy() }
        };
        let Some(client) = ops.first().map(|[p, ..]| p.client.clone()) else {
            return Vec::new();
        };
        let group = per_launch(client.properties().hardware.max_bindings);
        let mut done = Vec::with_capacity(ops.len());
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let chunk: Vec<_> = ops.by_ref().take(group).map(|[p, g, m, v]| [writable(p), into_contiguous(g), writable(m), writable(v)]).collect();
            let total: usize = chunk.iter().map(|[p, ..]| p.meta.num_elements()).sum();
            let arg = |which: usize| chunk.iter().map(|four| four[which].clone().into_tensor_arg()).collect::<SequenceArg<R, Tensor<f32>>>();
            let (count, dim) = grid(&client, total.max(1));
            kernel::adam_kernel::launch(&client, count, dim, arg(0), arg(1), arg(2), arg(3), s.step, s.epsilon, s.beta_1, s.beta_2);
            done.extend(chunk.into_iter().map(|[p, _, m, v]| Updated { p, m, v }));
        }
        done
    }
}

/// An update as a custom operation: inputs `[p, g, m, v]` of each parameter in turn,
/// outputs `[p, m, v]` of each.
#[derive(Debug)]
struct AdamOp<B> {
    desc: CustomOpIr,
    scalars: Scalars,
    backend: PhantomData<B>,
}

impl<B: FusionBackend + AdamBackend> Operation<B::FusionRuntime> for AdamOp<B> {
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let ops = self
            .desc
            .inputs
            .chunks_exact(4)
            .map(|four| [0, 1, 2, 3].map(|i| handles.get_float_tensor::<B>(&four[i])))
            .collect();
        for (out, three) in B::adam_update(ops, self.scalars).into_iter().zip(self.desc.outputs.chunks_exact(3)) {
            handles.register_float_tensor::<B>(&three[0].id, out.p);
            handles.register_float_tensor::<B>(&three[1].id, out.m);
            handles.register_float_tensor::<B>(&three[2].id, out.v);
        }
    }
}

impl<B: FusionBackend + AdamBackend> AdamBackend for Fusion<B> {
    fn adam_update(ops: Vec<Four<Self>>, s: Scalars) -> Vec<Updated<Self>> {
        let Some(client) = ops.first().map(|[p, ..]| p.client.clone()) else {
            return Vec::new();
        };
        let streams = OperationStreams::with_inputs(ops.iter().flatten());
        let outputs: Vec<TensorIr> = ops
            .iter()
            .flat_map(|[p, ..]| [0; 3].map(|_| TensorIr::uninit(client.create_empty_handle(), p.shape.clone(), DType::F32)))
            .collect();
        let inputs: Vec<TensorIr> = ops.into_iter().flatten().map(|t| t.into_ir()).collect();
        let desc = CustomOpIr::new("mnist_kernels::adam", &inputs, &outputs);
        let op = AdamOp::<B> { desc: desc.clone(), scalars: s, backend: PhantomData };
        let mut out = client.register(streams, OperationIr::Custom(desc), op).into_iter();
        let mut done = Vec::with_capacity(outputs.len() / 3);
        while let (Some(p), Some(m), Some(v)) = (out.next(), out.next(), out.next()) {
            done.push(Updated { p, m, v });
        }
        done
    }
}

/// The updates on `C` when `B` is `C`, one call per step count (normally one: every
/// parameter of a module is stepped together), results in the operands' order.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn on<B: Backend, C: AdamBackend>(adam: &FusedAdam, lr: LearningRate, ops: Vec<Operands<B>>) -> Result<Vec<Updated<B>>, Vec<Operands<B>>> {
    crate::adam::on_backend::<B, C>(ops, |ops| {
        let mut by_time: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, o) in ops.iter().enumerate() {
            by_time.entry(o.time).or_default().push(i);
        }
        let mut slots: Vec<Option<Four<C>>> = ops.into_iter().map(|o| Some([o.p, o.g, o.m, o.v])).collect();
        let mut done: Vec<Option<Updated<C>>> = slots.iter().map(|_| None).collect();
        for (time, indices) in by_time {
            let f = adam.factors(lr, time);
            let s = Scalars { step: f.step, epsilon: f.epsilon, beta_1: adam.config().beta_1, beta_2: adam.config().beta_2 };
            let group = indices.iter().map(|&i| slots[i].take().unwrap_or_else(|| unreachable!("each operand in one group"))).collect();
            for (i, u) in indices.into_iter().zip(C::adam_update(group, s)) {
                done[i] = Some(u);
            }
        }
        done.into_iter().map(|u| u.unwrap_or_else(|| unreachable!("every operand updated"))).collect()
    })
}

/// The fused updates when `B` is one of the CubeCL backends compiled in (see the module's
/// overview of [`super`]); else the operands back, untouched.
pub(crate) fn update<B: Backend>(adam: &FusedAdam, lr: LearningRate, ops: Vec<Operands<B>>) -> Result<Vec<Updated<B>>, Vec<Operands<B>>> {
    #[cfg(feature = "wgpu")]
    let ops = match on::<B, burn_wgpu::Wgpu>(adam, lr, ops) {
        Ok(done) => return Ok(done),
        Err(back) => back,
    };
    #[cfg(feature = "cuda")]
    let ops = match on::<B, burn_cuda::Cuda>(adam, lr, ops) {
        Ok(done) => return Ok(done),
        Err(back) => back,
    };
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    let _ = (adam, lr);
    Err(ops)
}
