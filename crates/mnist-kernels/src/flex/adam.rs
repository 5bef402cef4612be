//! The fused Adam update on burn-flex: parameter and both moments in one pass, in place.

use burn::optim::{AdamState, AdaptiveMomentumState, LearningRate};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::pool::recycle;
use super::{cast, from_vec, is_dense, prim_to_vec};
use crate::adam::{Factors, FusedAdam, Inputs, Step, all_f32};


/// The fused update when `B` is burn-flex and everything is f32; else the inputs back.
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
    let tensor = match cast::<Tensor<B, D>, Tensor<Flex, D>>(tensor) {
        Ok(t) => t,
        Err(tensor) => return Err((tensor, grad, state)),
    };
    let (Ok(grad), Ok(state)) = (cast::<_, Tensor<Flex, D>>(grad), cast::<_, Option<AdamState<Flex, D>>>(state)) else {
        unreachable!("tensor, gradient and state share the backend B");
    };
    let shape = tensor.shape();
    let n = shape.num_elements();
    let (m, v, time) = match state {
        Some(s) => (s.momentum.moment_1.into_primitive().tensor(), s.momentum.moment_2.into_primitive().tensor(), s.momentum.time + 1),
        None => (FlexTensor::zeros(shape.clone(), DType::F32), FlexTensor::zeros(shape.clone(), DType::F32), 1),
    };
    let (mut p, g, mut m, mut v) = (tensor.into_primitive().tensor(), grad.into_primitive().tensor(), m, v);
    let f = adam.factors(lr, time);
    if [&p, &g, &m, &v].iter().all(|t| is_dense(t) && t.layout().num_elements() == n) {
        // In place in the tensors' own buffers (copied first only where one is shared).
        let (p_slice, m_slice, v_slice) = (&mut p.storage_mut::<f32>()[..n], &mut m.storage_mut::<f32>()[..n], &mut v.storage_mut::<f32>()[..n]);
        update(adam, f, p_slice, &g.storage::<f32>()[..n], m_slice, v_slice);
        // The gradient's last read: its buffer can hold the next step's (fc1's, 13 MB).
        recycle(g);
    } else {
        let (mut pv, gv, mut mv, mut vv) = (prim_to_vec::<D>(p), prim_to_vec::<D>(g), prim_to_vec::<D>(m), prim_to_vec::<D>(v));
        update(adam, f, &mut pv, &gv, &mut mv, &mut vv);
        let back = |values: Vec<f32>| from_vec(values, shape.dims::<D>());
        (p, m, v) = (back(pv), back(mv), back(vv));
    }
    let wrap = |t: FlexTensor| Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(t));
    let state = AdamState::new(AdaptiveMomentumState::new(time, wrap(m), wrap(v)));
    let (Ok(tensor), Ok(state)) = (cast::<_, Tensor<B, D>>(wrap(p)), cast::<_, Option<AdamState<B, D>>>(Some(state))) else {
        unreachable!("B is Flex");
    };
    Ok((tensor, state))
}

/// One pass over the four arrays, in parallel chunks, compiled for AVX2 where present.
fn update(adam: &FusedAdam, f: Factors, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    const CHUNK: usize = 1 << 14;
    let (b1, b2) = (adam.config().beta_1, adam.config().beta_2);
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            pulp::Arch::new().dispatch(
                #[inline(always)]
                || {
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * (g * g);
                        *p -= f.step * *m / (v.sqrt() + f.epsilon);
                    }
                },
            )
        });
}
