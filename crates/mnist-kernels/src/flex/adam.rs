//! The fused Adam update on burn-flex: parameter and both moments in one pass, in place.

use burn::optim::LearningRate;
use burn::tensor::backend::Backend;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::pool::recycle;
use super::{by_columns, is_dense, is_dense_by_columns};
use crate::adam::{Factors, FusedAdam, Operands, Updated, on_backend};

/// The fused updates when `B` is burn-flex, one parameter after another (each update is
/// parallel); else the operands back.
pub(crate) fn update<B: Backend>(adam: &FusedAdam, lr: LearningRate, ops: Vec<Operands<B>>) -> Result<Vec<Updated<B>>, Vec<Operands<B>>> {
    on_backend::<B, Flex>(ops, |ops| ops.into_iter().map(|o| one(adam, lr, o)).collect())
}

/// One parameter's update, in place in the tensors' own buffers (a buffer that is shared
/// is copied first, and so is a view that is not dense).
///
/// A parameter stored column by column ([`is_dense_by_columns`]: fc1's weight in training,
/// [`crate::fully_connected_training_layout`]) stays so: its gradient comes so, and its
/// moments are copied into that layout where they are not (the first step, or the first
/// after a checkpoint is loaded), so that the four buffers hold their values in one order.
fn one(adam: &FusedAdam, lr: LearningRate, o: Operands<Flex>) -> Updated<Flex> {
    let columns = is_dense_by_columns(&o.p);
    let dense = |t: FlexTensor| match (columns, is_dense(&t)) {
        (true, _) => by_columns(t),
        (false, true) => t,
        (false, false) => t.to_contiguous(),
    };
    let (mut p, g, mut m, mut v) = (dense(o.p), dense(o.g), dense(o.m), dense(o.v));
    let n = p.layout().num_elements();
    let f = adam.factors(lr, o.time);
    let (p_slice, m_slice, v_slice) = (&mut p.storage_mut::<f32>()[..n], &mut m.storage_mut::<f32>()[..n], &mut v.storage_mut::<f32>()[..n]);
    update_slices(adam, f, p_slice, &g.storage::<f32>()[..n], m_slice, v_slice);
    // The gradient's last read: its buffer can hold the next step's (fc1's, 13 MB).
    recycle(g);
    Updated { p, m, v }
}

/// One pass over the four arrays, in parallel chunks, compiled for AVX2 where present.
fn update_slices(adam: &FusedAdam, f: Factors, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
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
