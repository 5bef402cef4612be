//! The spare-buffer pool of the burn-flex kernels: large f32 buffers handed back after
//! their last read (the fused Adam update is the last reader of a gradient) for the next
//! gradient of the same shape, which the fully connected weight-gradient kernel writes
//! into. Private to this crate: the optimizer and the kernels that share it both live here.
//!
//! Also the kernels' per-thread keeping of scratch from one call to the next ([`take_kept`],
//! [`keep`]): the backward pass's lists, inference's padded images.

use std::cell::RefCell;
use std::sync::{Mutex, PoisonError};
use std::thread::LocalKey;

use burn::tensor::DType;
use burn::tensor::ops::FloatTensor;
use burn_flex::Flex;

use super::{is_dense, is_dense_by_columns, transposed};

/// Large f32 buffers handed back after their last read (the optimizer's update is the last
/// reader of a gradient) for the next gradient of the same shape. fc1's weight gradient is
/// 13 MB a step: allocated afresh, the allocator got it from the kernel, which cleared it
/// page by page (8% of a training step's samples), and then it was cleared once more before
/// the kernel overwrote every value. At most [`SPARE_BUFFERS`] are kept.
static SPARE: Mutex<Vec<FloatTensor<Flex>>> = Mutex::new(Vec::new());
/// Most buffers [`SPARE`] keeps.
const SPARE_BUFFERS: usize = 2;
/// Smallest buffer worth keeping, in bytes (smaller ones the allocator recycles itself).
const SPARE_MIN_BYTES: usize = 1 << 20;

/// Hands `t` back for reuse as the next gradient of its shape. Kept only when it is f32,
/// dense, uniquely owned and at least 1 MiB, in place of the oldest kept buffer when
/// [`SPARE_BUFFERS`] are kept already (one nobody took); dropped otherwise.
///
/// A 2-D tensor stored column by column ([`is_dense_by_columns`]) is kept as its dense
/// transpose: the next gradient of shape `[i, j]` stored so is `spare(&[j, i])`, transposed.
pub(crate) fn recycle(t: FloatTensor<Flex>) {
    let t = if t.dtype() == DType::F32 && is_dense_by_columns(&t) { transposed(t) } else { t };
    let worth = t.dtype() == DType::F32 && t.is_unique() && is_dense(&t) && t.layout().num_elements() * 4 >= SPARE_MIN_BYTES;
    if worth {
        let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() == SPARE_BUFFERS {
            spare.remove(0);
        }
        spare.push(t);
    }
}

/// A recycled tensor of exactly `shape`, if one is kept; its values are stale, so the caller
/// must overwrite all of them.
pub(crate) fn spare(shape: &[usize]) -> Option<FloatTensor<Flex>> {
    let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
    let at = spare.iter().position(|t| t.layout().shape().as_slice() == shape)?;
    Some(spare.swap_remove(at))
}

/// The first of this thread's values kept in `pool` that `fits`, taken out (a task that
/// finds none, or finds them taken by a task this thread runs meanwhile, makes its own).
pub(crate) fn take_kept<T: 'static>(pool: &'static LocalKey<RefCell<Vec<T>>>, fits: impl Fn(&T) -> bool) -> Option<T> {
    pool.with_borrow_mut(|kept| kept.iter().position(fits).map(|at| kept.remove(at)))
}

/// Keeps `value` in this thread's `pool` for a later [`take_kept`]; past `most` values, the
/// least recently kept is dropped.
pub(crate) fn keep<T: 'static>(pool: &'static LocalKey<RefCell<Vec<T>>>, value: T, most: usize) {
    pool.with_borrow_mut(|kept| {
        kept.push(value);
        if kept.len() > most {
            kept.remove(0);
        }
    });
}
