//! The CubeCL kernels of the convolution block, one source for every CubeCL runtime.
//!
//! All tensors are contiguous, row-major, f32 (winners i32). Shapes: `x [b, c, h, w]`,
//! padded `xp [b, c, h + 2p, w + 2p]` (`p = k / 2`), `weight [o, c, k, k]`, `bias [o]`,
//! pooled output, its gradient and the winners `[b, o, h / 2, w / 2]`. The geometry is
//! compile-time (`#[comptime]`), so each layer gets kernels specialised to its shapes, with
//! the k x k loops unrolled and the index arithmetic on constants; only the batch varies at
//! run time (through the number of threads).

use cubecl::prelude::*;

/// The winner code of a pooling window whose maximum was not positive: ReLU zeroed it,
/// so it passes no gradient. Winners 0 to 3 are `2 * dy + dx` within the window.
pub(crate) const NONE: i32 = 4;

/// `xp`: `x` with `p` zeros around each image plane. One thread per element of `xp`.
#[cube(launch)]
pub(crate) fn pad_kernel(x: &Tensor<f32>, xp: &mut Tensor<f32>, #[comptime] h: usize, #[comptime] w: usize, #[comptime] p: usize) {
    let pos = ABSOLUTE_POS;
    if pos >= xp.len() {
        terminate!();
    }
    let hp = comptime![h + 2 * p];
    let wp = comptime![w + 2 * p];
    let col = pos % wp;
    let row = (pos / wp) % hp;
    let plane = pos / (wp * hp);
    let mut v = 0.0f32;
    if row >= p && row < h + p && col >= p && col < w + p {
        v = x[(plane * h + row - p) * w + col - p];
    }
    xp[pos] = v;
}

/// The block's forward pass: each thread computes the four convolution sums of one
/// pooling window (`c * k * k` products each) from the padded input, adds the bias, takes
/// the maximum, applies ReLU, and writes the output and the winner (`NONE` when the
/// maximum is not positive; the first of equal maxima wins, as in Burn's max-pool).
#[cube(launch)]
pub(crate) fn forward_kernel(
    xp: &Tensor<f32>,
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
    let hp = comptime![h + 2 * (k / 2)];
    let wp = comptime![w + 2 * (k / 2)];
    let px = pos % pw;
    let py = (pos / pw) % ph;
    let oc = (pos / (pw * ph)) % o;
    let bi = pos / (pw * ph * o);
    let b0 = bias[oc];
    let mut s00 = b0;
    let mut s01 = b0;
    let mut s10 = b0;
    let mut s11 = b0;
    for ci in 0..c {
        let plane = (bi * c + ci) * hp;
        let wbase = (oc * c + ci) * k * k;
        #[unroll]
        for ky in 0..k {
            let row0 = (plane + 2 * py + ky) * wp + 2 * px;
            let row1 = row0 + wp;
            #[unroll]
            for kx in 0..k {
                let wv = weight[wbase + ky * k + kx];
                s00 += wv * xp[row0 + kx];
                s01 += wv * xp[row0 + kx + 1];
                s10 += wv * xp[row1 + kx];
                s11 += wv * xp[row1 + kx + 1];
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

/// Split-K partial sums of the weight gradient, `partial [s, o, c, k, k]`: split `s` sums
/// `g * window` over pooled positions `s * chunk ..` (of `positions = b * ph * pw`, batch
/// and pixels flattened) whose window has a winner, reading the window at the winner's
/// offset: the convolution's output gradient is non-zero only there. Threads of one warp
/// share the split and the output channel, so the gradient and winner they read is one
/// broadcast load and their branches agree.
#[cube(launch)]
pub(crate) fn weight_grad_kernel(
    xp: &Tensor<f32>,
    grad: &Tensor<f32>,
    winners: &Tensor<i32>,
    partial: &mut Tensor<f32>,
    chunk: u32,
    positions: u32,
    #[comptime] c: usize,
    #[comptime] h: usize,
    #[comptime] w: usize,
    #[comptime] o: usize,
    #[comptime] k: usize,
) {
    let pos = ABSOLUTE_POS;
    if pos >= partial.len() {
        terminate!();
    }
    let ph = comptime![h / 2];
    let pw = comptime![w / 2];
    let hp = comptime![h + 2 * (k / 2)];
    let wp = comptime![w + 2 * (k / 2)];
    let kx = pos % k;
    let ky = (pos / k) % k;
    let ci = (pos / (k * k)) % c;
    let oc = (pos / (k * k * c)) % o;
    let split = pos / (k * k * c * o);
    let start = split * chunk as usize;
    let mut end = start + chunk as usize;
    if end > positions as usize {
        end = positions as usize;
    }
    let mut acc = 0.0f32;
    for p in start..end {
        let px = p % pw;
        let py = (p / pw) % ph;
        let bi = p / (pw * ph);
        let gi = ((bi * o + oc) * ph + py) * pw + px;
        let q = winners[gi];
        if q != NONE {
            let dy = (q / 2) as usize;
            let dx = (q % 2) as usize;
            acc += grad[gi] * xp[((bi * c + ci) * hp + 2 * py + dy + ky) * wp + 2 * px + dx + kx];
        }
    }
    partial[pos] = acc;
}

/// Split-K partial sums of the bias gradient, `partial [s, o]`: the gradient of the
/// windows with a winner, over the same splits as [`weight_grad_kernel`].
#[cube(launch)]
pub(crate) fn bias_grad_kernel(
    grad: &Tensor<f32>,
    winners: &Tensor<i32>,
    partial: &mut Tensor<f32>,
    chunk: u32,
    positions: u32,
    #[comptime] h: usize,
    #[comptime] w: usize,
    #[comptime] o: usize,
) {
    let pos = ABSOLUTE_POS;
    if pos >= partial.len() {
        terminate!();
    }
    let ph = comptime![h / 2];
    let pw = comptime![w / 2];
    let oc = pos % o;
    let split = pos / o;
    let start = split * chunk as usize;
    let mut end = start + chunk as usize;
    if end > positions as usize {
        end = positions as usize;
    }
    let mut acc = 0.0f32;
    for p in start..end {
        let px = p % pw;
        let py = (p / pw) % ph;
        let bi = p / (pw * ph);
        let gi = ((bi * o + oc) * ph + py) * pw + px;
        if winners[gi] != NONE {
            acc += grad[gi];
        }
    }
    partial[pos] = acc;
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
