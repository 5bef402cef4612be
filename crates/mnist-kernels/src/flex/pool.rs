//! The spare-buffer pool of the burn-flex kernels: large f32 buffers handed back after
//! their last read (the fused Adam update is the last reader of a gradient, a block's
//! backward pass of its output gradient, the next block's forward pass of a block's
//! output) for the next output or gradient of as many values, which a kernel then writes
//! in full; and the winner buffers of the fused blocks. Private to this crate: the
//! optimizer and the kernels that share it both live here.
//!
//! Also the kernels' per-thread keeping of scratch from one call to the next ([`take_kept`],
//! [`keep`]): the backward pass's lists, inference's padded images.

use std::cell::RefCell;
use std::sync::{Mutex, PoisonError};
use std::thread::LocalKey;

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_flex::Flex;

use super::layout::{filled, zeroed};
use super::{from_vec, is_dense, is_dense_by_columns, transposed};

/// Large f32 buffers handed back after their last read, for the next output or gradient
/// of as many values, which the kernels then write in full. fc1's weight gradient is 13 MB
/// a step: allocated afresh, the allocator got it from the kernel, which cleared it page by
/// page (8% of a training step's samples), and then it was cleared once more before the
/// kernel overwrote every value. The optimizer hands back the gradients, the blocks' backward
/// passes the output gradient they read and the forward passes the input they padded (at
/// 512: 13 MB of conv1's output, 6 MB of conv2's, each step). At most [`SPARE_BUFFERS`]
/// are kept.
static SPARE: Mutex<Vec<FloatTensor<Flex>>> = Mutex::new(Vec::new());
/// Most buffers [`SPARE`] keeps: a step at 512 has up to five in it at once (fc1's weight
/// gradient, two of conv1's output's size, two of conv2's).
const SPARE_BUFFERS: usize = 6;
/// Smallest buffer worth keeping, in bytes: the allocator recycles smaller ones itself,
/// but they are still cleared before the kernels write them (conv2's output at 50 is 627 KB).
const SPARE_MIN_BYTES: usize = 1 << 18;

/// Hands `t` back for reuse as the next buffer of as many values. Kept only when it is
/// f32, dense, uniquely owned and at least [`SPARE_MIN_BYTES`], in place of the oldest kept
/// buffer when [`SPARE_BUFFERS`] are kept already (one nobody took); dropped otherwise.
///
/// A 2-D tensor stored column by column ([`is_dense_by_columns`]) is kept as its dense
/// transpose.
pub(crate) fn recycle(t: FloatTensor<Flex>) {
    let t = if t.dtype() == DType::F32 && is_dense_by_columns(&t) { transposed(t) } else { t };
    let worth = t.dtype() == DType::F32 && t.is_unique() && is_dense(&t) && t.layout().num_elements() * 4 >= SPARE_MIN_BYTES;
    if worth {
        shelve(&mut SPARE.lock().unwrap_or_else(PoisonError::into_inner), t, SPARE_BUFFERS);
    }
}

/// A recycled buffer of as many values as `shape` has, as a dense tensor of that shape, if
/// one is kept; its values are stale, so the caller must overwrite all of them (through
/// `storage_mut`, which does not copy: the buffer is the tensor's alone).
pub(crate) fn spare<const D: usize>(shape: [usize; D]) -> Option<FloatTensor<Flex>> {
    let n: usize = shape.iter().product();
    let t = {
        let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
        let at = spare.iter().position(|t| t.layout().num_elements() == n)?;
        spare.swap_remove(at)
    };
    // A view of the same buffer, and `t` dropped: the view holds it alone.
    Some(t.reshape(Shape::from(shape)))
}

/// [`spare`], else a new dense tensor of `shape`, zero (cleared on all cores): either way
/// one the caller writes in full through `storage_mut`.
pub(crate) fn spare_or_zeroed<const D: usize>(shape: [usize; D]) -> FloatTensor<Flex> {
    spare(shape).unwrap_or_else(|| from_vec(zeroed(shape.iter().product()), shape))
}

/// Winner buffers (one byte a pooling window) handed back by the blocks' backward passes
/// for the next forward pass's of the same length, which writes every value. At most
/// [`SPARE_BUFFERS`] are kept, each at least [`SPARE_MIN_BYTES`].
static SPARE_WINNERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Hands back a winner buffer after its last read (see [`SPARE_WINNERS`]).
pub(crate) fn recycle_winners(winners: Vec<u8>) {
    if winners.len() >= SPARE_MIN_BYTES {
        shelve(&mut SPARE_WINNERS.lock().unwrap_or_else(PoisonError::into_inner), winners, SPARE_BUFFERS);
    }
}

/// A recycled winner buffer of `n` bytes, stale (to be written in full), else a new one
/// (written on all cores).
pub(crate) fn spare_winners(n: usize) -> Vec<u8> {
    let kept = {
        let mut spare = SPARE_WINNERS.lock().unwrap_or_else(PoisonError::into_inner);
        spare.iter().position(|w| w.len() == n).map(|at| spare.swap_remove(at))
    };
    kept.unwrap_or_else(|| filled(n, 0))
}

/// Pushes `item` onto `shelf`, dropping the oldest past `most`.
pub(crate) fn shelve<T>(shelf: &mut Vec<T>, item: T, most: usize) {
    shelf.push(item);
    if shelf.len() > most {
        shelf.remove(0);
    }
}

/// The first of this thread's values kept in `pool` that `fits`, taken out (a task that
/// finds none, or finds them taken by a task this thread runs meanwhile, makes its own).
pub(crate) fn take_kept<T: 'static>(pool: &'static LocalKey<RefCell<Vec<T>>>, fits: impl Fn(&T) -> bool) -> Option<T> {
    pool.with_borrow_mut(|kept| kept.iter().position(fits).map(|at| kept.remove(at)))
}

/// Keeps `value` in this thread's `pool` for a later [`take_kept`]; past `most` values, the
/// least recently kept is dropped.
pub(crate) fn keep<T: 'static>(pool: &'static LocalKey<RefCell<Vec<T>>>, value: T, most: usize) {
    pool.with_borrow_mut(|kept| shelve(kept, value, most));
}
