//! The CubeCL kernels of the convolution block, one source for every CubeCL runtime.
//!
//! All tensors are contiguous, row-major, f32 (winners i32). Shapes: `x [b, c, h, w]`,
//! `weight [o, c, k, k]`, `bias [o]`, pooled output, its gradient and the winners
//! `[b, o, h / 2, w / 2]`. The SAME convolution's zero padding (`p = k / 2` a side) is
//! read, not stored: [`tap`] gives 0 outside the image (a padded copy of the input had
//! cost a launch and a write of the input per block and step). The geometry is
//! compile-time (`#[comptime]`), so each layer gets kernels specialised to its shapes, with
//! the k x k loops unrolled and the index arithmetic on constants; only the batch varies at
//! run time (through the number of threads).

use cubecl::prelude::*;

/// The winner code of a pooling window whose maximum was not positive: ReLU zeroed it,
/// so it passes no gradient. Winners 0 to 3 are `2 * dy + dx` within the window.
pub(crate) const NONE: i32 = 4;

/// The value of image plane `plane` of `x` at row `r`, column `col` of its zero-padded
/// frame (`p` zeros a side): 0 in the padding.
#[cube]
fn tap(x: &Tensor<f32>, plane: usize, r: usize, col: usize, #[comptime] h: usize, #[comptime] w: usize, #[comptime] p: usize) -> f32 {
    let mut v = 0.0f32;
    if r >= p && r < h + p && col >= p && col < w + p {
        v = x[(plane * h + r - p) * w + col - p];
    }
    v
}

/// The block's forward pass: each thread computes the four convolution sums of one
/// pooling window (`c * k * k` products each), adds the bias, takes
/// the maximum, applies ReLU, and writes the output and the winner (`NONE` when the
/// maximum is not positive; the first of equal maxima wins, as in Burn's max-pool).
#[cube(launch)]
pub(crate) fn forward_kernel(
    x: &Tensor<f32>,
    weight: &Tensor<f32>,
    bias: &Tensor<f32>,
    y: &mut Tensor<f32>,
    winners: &mut Tensor<i32>,
    #[comptime] c: usize,
    #[comptime] h: usize,
    #[comptime] w: usize,
    #[comptime] o: usize,
    #[comptime] k: usize,
) {
    let pos = ABSOLUTE_POS;
    if pos >= y.len() {
        terminate!();
    }
    let ph = comptime![h / 2];
    let pw = comptime![w / 2];
    let px = pos % pw;
    let py = (pos / pw) % ph;
    let oc = (pos / (pw * ph)) % o;
    let bi = pos / (pw * ph * o);
    let b0 = bias[oc];
    let mut s00 = b0;
    let mut s01 = b0;
    let mut s10 = b0;
    let mut s11 = b0;
    let p = comptime![k / 2];
    for ci in 0..c {
        let plane = bi * c + ci;
        let wbase = (oc * c + ci) * k * k;
        #[unroll]
        for ky in 0..k {
            let r0 = 2 * py + ky;
            #[unroll]
            for kx in 0..k {
                let c0 = 2 * px + kx;
                let wv = weight[wbase + ky * k + kx];
                s00 += wv * tap(x, plane, r0, c0, h, w, p);
                s01 += wv * tap(x, plane, r0, c0 + 1, h, w, p);
                s10 += wv * tap(x, plane, r0 + 1, c0, h, w, p);
                s11 += wv * tap(x, plane, r0 + 1, c0 + 1, h, w, p);
            }
        }
    }
    let mut best = s00;
    let mut winner = 0i32;
    if s01 > best {
        best = s01;
        winner = 1i32;
    }
    if s10 > best {
        best = s10;
        winner = 2i32;
    }
    if s11 > best {
        best = s11;
        winner = 3i32;
    }
    if best > 0.0f32 {
        y[pos] = best;
        winners[pos] = winner;
    } else {
        y[pos] = 0.0f32;
        winners[pos] = NONE;
    }
}

/// Split-K partial sums of the weight and bias gradients, `partial [s, o * c * k * k + o]`
/// (each split's row: the weight's taps `[o, c, k, k]`, then the bias): split `s` sums
/// `g * window` over pooled positions `s * chunk ..` (of `positions = b * ph * pw`, batch
/// and pixels flattened) whose window has a winner, reading the window at the winner's
/// offset: the convolution's output gradient is non-zero only there. The thread of each
/// output channel's first tap sums the bias's `g` over the same positions. One thread per
/// weight tap and split; threads of one warp share the split and the output channel, so
/// the gradient and winner they read is one broadcast load and their branches agree.
#[cube(launch)]
#[allow(clippy::manual_is_multiple_of, reason = "a CubeCL kernel: plain integer arithmetic")]
pub(crate) fn weight_grad_kernel(
    x: &Tensor<f32>,
    grad: &Tensor<f32>,
    winners: &Tensor<i32>,
    partial: &mut Tensor<f32>,
    chunk: u32,
    positions: u32,
    splits: u32,
    #[comptime] c: usize,
    #[comptime] h: usize,
    #[comptime] w: usize,
    #[comptime] o: usize,
    #[comptime] k: usize,
) {
    let pos = ABSOLUTE_POS;
    let taps = comptime![o * c * k * k];
    if pos >= taps * splits as usize {
        terminate!();
    }
    let ph = comptime![h / 2];
    let pw = comptime![w / 2];
    let p = comptime![k / 2];
    let kx = pos % k;
    let ky = (pos / k) % k;
    let ci = (pos / (k * k)) % c;
    let oc = (pos / (k * k * c)) % o;
    let split = pos / taps;
    let first = pos % (k * k * c) == 0;
    let start = split * chunk as usize;
    let mut end = start + chunk as usize;
    if end > positions as usize {
        end = positions as usize;
    }
    let mut acc = 0.0f32;
    let mut acc_b = 0.0f32;
    for q_at in start..end {
        let px = q_at % pw;
        let py = (q_at / pw) % ph;
        let bi = q_at / (pw * ph);
        let gi = ((bi * o + oc) * ph + py) * pw + px;
        let q = winners[gi];
        if q != NONE {
            let dy = (q / 2) as usize;
            let dx = (q % 2) as usize;
            let g = grad[gi];
            acc += g * tap(x, bi * c + ci, 2 * py + dy + ky, 2 * px + dx + kx, h, w, p);
            acc_b += g;
        }
    }
    let row = split * comptime![o * c * k * k + o];
    partial[row + pos % taps] = acc;
    if first {
        partial[row + taps + oc] = acc_b;
    }
}

/// The sums over the splits of [`weight_grad_kernel`]'s partial sums: `dw [o, c, k, k]`
/// and `db [o]`, one thread per value.
#[cube(launch)]
pub(crate) fn sum_splits_kernel(partial: &Tensor<f32>, dw: &mut Tensor<f32>, db: &mut Tensor<f32>, splits: u32) {
    let pos = ABSOLUTE_POS;
    let taps = dw.len();
    let row = taps + db.len();
    if pos >= row {
        terminate!();
    }
    let mut acc = 0.0f32;
    for s in 0..splits as usize {
        acc += partial[s * row + pos];
    }
    if pos < taps {
        dw[pos] = acc;
    } else {
        db[pos - taps] = acc;
    }
}

/// The input gradient `dx [b, c, h, w]`, one thread per input value: for each output
/// channel, the pooling windows whose k x k reach covers the pixel (at most
/// `ceil(k / 2) + 1` a side), each passing its gradient through its winner's weight tap.
#[cube(launch)]
#[allow(clippy::manual_div_ceil, reason = "a CubeCL kernel: plain integer arithmetic")]
pub(crate) fn input_grad_kernel(
    weight: &Tensor<f32>,
    grad: &Tensor<f32>,
    winners: &Tensor<i32>,
    dx: &mut Tensor<f32>,
    #[comptime] c: usize,
    #[comptime] h: usize,
    #[comptime] w: usize,
    #[comptime] o: usize,
    #[comptime] k: usize,
) {
    let pos = ABSOLUTE_POS;
    if pos >= dx.len() {
        terminate!();
    }
    let ph = comptime![h / 2];
    let pw = comptime![w / 2];
    let p = comptime![k / 2];
    // Channels vary fastest from thread to thread: the threads of a warp then read the
    // same winners and gradients (one broadcast load each) and differ only in the weight.
    let ci = pos % c;
    let xx = (pos / c) % w;
    let yy = (pos / (c * w)) % h;
    let bi = pos / (c * w * h);
    // Convolution output rows y with 0 <= yy + p - y < k, pooled to y / 2 (the same for
    // columns); windows past the last full one were dropped by the pool.
    let top = yy + p;
    let left = xx + p;
    let mut py_lo = 0usize;
    if top >= k {
        py_lo = (top - k + 1) / 2;
    }
    let mut py_hi = top / 2 + 1;
    if py_hi > ph {
        py_hi = ph;
    }
    let mut px_lo = 0usize;
    if left >= k {
        px_lo = (left - k + 1) / 2;
    }
    let mut px_hi = left / 2 + 1;
    if px_hi > pw {
        px_hi = pw;
    }
    let mut acc = 0.0f32;
    for oc in 0..o {
        let wbase = (oc * c + ci) * k * k;
        for py in py_lo..py_hi {
            for px in px_lo..px_hi {
                let gi = ((bi * o + oc) * ph + py) * pw + px;
                let q = winners[gi];
                if q != NONE {
                    let y = 2 * py + (q / 2) as usize;
                    let x = 2 * px + (q % 2) as usize;
                    // The winner's tap for this pixel: ky = yy + p - y, kx = xx + p - x.
                    if y <= top && top - y < k && x <= left && left - x < k {
                        acc += grad[gi] * weight[wbase + (top - y) * k + left - x];
                    }
                }
            }
        }
    }
    dx[((bi * c + ci) * h + yy) * w + xx] = acc;
}
