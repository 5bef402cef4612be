//! Forward pass of the fused block: convolution, bias, ReLU and 2x2 max-pool in one kernel.
//!
//! The input is first laid out as zero-padded NHWC images ([`pad_nhwc`]), where the
//! window of an output pixel is `k` runs of `k * c` contiguous floats. The weights are
//! packed in panels of 16 output channels, `[panel][ky][kx * c + ci][16]`. One register
//! tile computes five convolution outputs for one panel: 5 x 16 sums in 10 vector
//! registers; each step of the inner loop broadcasts one input value of each of the five
//! windows and multiplies it by two vectors of weights (10 fused multiply-adds per 7
//! loads, so the FMA units, not memory, set the pace). The tiles cover the two
//! convolution rows under one pooled row; then one sweep adds the bias, applies ReLU,
//! takes the maximum of each 2x2 window, and writes the output and which of the four won.
//! Convolution outputs that no pooling window covers (the last row
//! or column of an odd side) are never computed, and no im2col buffer is built.

use rayon::prelude::*;

use super::lanes::{F8, Lanes, MAX_TILE_ROWS, TILE_COLUMNS, TILE_ROWS, WithLanes, dispatch, runs, tile_update};
use super::layout::{Layout, filled, pad_nhwc, zeroed};
use super::winograd;
use super::{Geometry, NONE};

/// Output channels per panel: the columns of the register tile.
const PANEL: usize = TILE_COLUMNS;

/// Pixels per register tile.
const MR: usize = TILE_ROWS;

/// The block's output `[b, o, h/2, w/2]`, each window's winner (0..4 in the order
/// top-left, top-right, bottom-left, bottom-right, or [`NONE`] when ReLU zeroed it), and
/// the padded NHWC input (which the backward pass reads).
pub(crate) fn forward(g: Geometry, x: &[f32], weight: &[f32], bias: &[f32]) -> (Vec<f32>, Vec<u8>, Vec<f32>) {
    let lay = Layout::new(g);
    let xp = pad_nhwc(&lay, x);
    if winograd::applies(g) {
        let (out, winners) = winograd::forward(&lay, &xp, weight, bias);
        return (out, winners, xp);
    }
    let panels = g.o.div_ceil(PANEL);
    let run = g.k * g.c;
    // Weights as [panel][ky][kx * c + ci][16], zero beyond the last channel.
    let mut packed = vec![0.0f32; panels * g.k * run * PANEL];
    // Nested loops: index arithmetic with divisions cost about a millisecond a call.
    let mut source = weight.iter();
    for oc in 0..g.o {
        for ci in 0..g.c {
            for ky in 0..g.k {
                for kx in 0..g.k {
                    let v = *source.next().unwrap_or_else(|| unreachable!("weight is [o, c, k, k]"));
                    packed[(((oc / PANEL) * g.k + ky) * run + kx * g.c + ci) * PANEL + oc % PANEL] = v;
                }
            }
        }
    }
    let bias16 = panel_bias(bias);
    let (ph, pw) = g.pooled();
    let plane = ph * pw;
    let mut out = zeroed(g.b * g.o * plane);
    let mut winners = filled(out.len(), NONE);
    // One task per image and panel: its channels' planes are contiguous in `out`.
    out.par_chunks_mut(g.o * plane)
        .zip(winners.par_chunks_mut(g.o * plane))
        .enumerate()
        .flat_map(|(bi, (out, winners))| {
            out.par_chunks_mut(PANEL * plane)
                .zip(winners.par_chunks_mut(PANEL * plane))
                .enumerate()
                .map(move |(panel, (out, winners))| (bi, panel, out, winners))
        })
        .for_each(|(bi, panel, out, winners)| {
            dispatch(Panel {
                lay: &lay,
                xp: &xp[bi * lay.image..][..lay.image],
                weights: &packed[panel * g.k * run * PANEL..][..g.k * run * PANEL],
                bias: &bias16[panel * PANEL..][..PANEL],
                out,
                winners,
            });
        });
    (out, winners, xp)
}

/// One image and one panel of output channels.
struct Panel<'a> {
    lay: &'a Layout,
    /// The padded input image.
    xp: &'a [f32],
    /// The panel's packed weights `[ky][kx * c + ci][16]`.
    weights: &'a [f32],
    bias: &'a [f32],
    /// The panel's output planes `[channels, h/2, w/2]` (up to 16 channels).
    out: &'a mut [f32],
    winners: &'a mut [u8],
}

impl WithLanes for Panel<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        // AVX-512's taller register tile (10 pixels x 16 channels in ten 16-lane
        // registers) where the CPU has it; the five-pixel tile elsewhere.
        if L::TILE == MAX_TILE_ROWS { self.rows::<L, MAX_TILE_ROWS>(lanes) } else { self.rows::<L, MR>(lanes) }
    }
}

impl Panel<'_> {
    /// The panel with register tiles of `T` pixels.
    #[inline(always)]
    fn rows<L: Lanes, const T: usize>(self, lanes: L) {
        let lay = self.lay;
        let g = lay.g;
        let (ph, pw) = g.pooled();
        let channels = self.out.len() / (ph * pw);
        let (weights, _) = self.weights.as_chunks::<PANEL>();
        let bias: [F8; 2] = [bias8(&self.bias[..8]), bias8(&self.bias[8..])];
        // The two convolution rows under pooled row `py` (columns 0..2 * pw), then pooled.
        let mut sums = vec![[[0.0f32; 8]; 2]; 4 * pw];
        // The windows of the row pair under pooled row 0, padded to whole tiles by repeating
        // the last (computed once: the divisions cost as much as a small tile).
        let tiles = (4 * pw).div_ceil(T);
        let corners: Vec<usize> = (0..tiles * T).map(|i| i.min(4 * pw - 1)).map(|i| lay.window(i / (2 * pw), i % (2 * pw))).collect();
        let (corners, _) = corners.as_chunks::<T>();
        for py in 0..ph {
            let down = 2 * py * lay.row;
            for (sums, corners) in sums.chunks_mut(T).zip(corners) {
                let mut corners = *corners;
                for corner in &mut corners {
                    *corner += down;
                }
                // One input channel and a 5x5 kernel (the seed's conv1): kernel rows of 5
                // floats, whose loops unroll when their length is known when compiling
                // (conv1's forward on one thread 3.0-3.6 -> 2.9-3.1 ms, alternating).
                let tile = if g.c == 1 && g.k == 5 {
                    conv_tile::<L, 5, T>(lanes, lay, self.xp, weights, corners)
                } else {
                    conv_tile::<L, 0, T>(lanes, lay, self.xp, weights, corners)
                };
                let n = sums.len();
                sums.copy_from_slice(&tile[..n]);
            }
            for px in 0..pw {
                let window = [sums[2 * px], sums[2 * px + 1], sums[2 * pw + 2 * px], sums[2 * pw + 2 * px + 1]];
                pool_window(window, &bias, channels, |oc, value, winner| {
                    let index = (oc * ph + py) * pw + px;
                    self.out[index] = value;
                    self.winners[index] = winner;
                });
            }
        }
    }
}

/// Bias, ReLU, 2x2 max-pool and winner of one window for up to 16 `channels`, from its
/// four convolution sums (top-left, top-right, bottom-left, bottom-right; lane `l` of
/// vector `v` is channel `8 v + l`): `put(channel, output, winner)`. Lane by lane and
/// branch-free, so that it vectorises; the first of equal maxima wins.
#[inline(always)]
pub(super) fn pool_window(sums: [[F8; 2]; 4], bias: &[F8; 2], channels: usize, mut put: impl FnMut(usize, f32, u8)) {
    let [a, b, c, d] = sums;
    // All 16 lanes first, in a loop without calls or early exits, so that it vectorises;
    // then the outputs of the panel's real channels.
    let mut values = [0.0f32; 16];
    let mut winners = [NONE; 16];
    for v in 0..2 {
        for l in 0..8 {
            let (a, b, c, d) = (a[v][l], b[v][l], c[v][l], d[v][l]);
            let (upper, upper_at) = if b > a { (b, 1u8) } else { (a, 0) };
            let (lower, lower_at) = if d > c { (d, 3u8) } else { (c, 2) };
            let (best, at) = if lower > upper { (lower, lower_at) } else { (upper, upper_at) };
            let value = best + bias[v][l];
            let positive = value > 0.0;
            values[v * 8 + l] = if positive { value } else { 0.0 };
            winners[v * 8 + l] = if positive { at } else { NONE };
        }
    }
    for (oc, (&value, &winner)) in values.iter().zip(&winners).enumerate().take(channels) {
        put(oc, value, winner);
    }
}

/// Convolution outputs of `T` pixels (their windows' top-left corners in the padded
/// image) for one panel of 16 channels, `T` being [`MR`] or, with AVX-512,
/// [`MAX_TILE_ROWS`]: `T x 16` sums in registers over the `k * k * c` window, kernel row by
/// kernel row. `K` is 0, or the kernel side when the input has one channel (then every
/// length is known when compiling).
#[inline(always)]
fn conv_tile<L: Lanes, const K: usize, const T: usize>(lanes: L, lay: &Layout, xp: &[f32], weights: &[[f32; PANEL]], corners: [usize; T]) -> [[F8; 2]; T] {
    let (k, run) = if K == 0 { (lay.g.k, lay.g.k * lay.g.c) } else { (K, K) };
    let mut sums = [[[0.0; 8]; 2]; T];
    if T == MAX_TILE_ROWS {
        // The instruction set's own tile (AVX-512: ten rows of 16 lanes), its sums kept in
        // `acc` between kernel rows.
        let mut acc = [[[0.0f32; 8]; 2]; MAX_TILE_ROWS];
        let mut starts = [0; MAX_TILE_ROWS];
        starts.copy_from_slice(&corners[..MAX_TILE_ROWS]);
        for ky in 0..k {
            let rows = runs(xp, starts, ky * lay.row, run);
            lanes.tile_sums(&mut acc, rows, &weights[ky * run..][..run]);
        }
        sums.copy_from_slice(&acc[..T]);
        return sums;
    }
    let mut starts = [0; MR];
    starts.copy_from_slice(&corners[..MR]);
    let mut acc = [[lanes.zero(); 2]; MR];
    for ky in 0..k {
        let rows = runs(xp, starts, ky * lay.row, run);
        tile_update(lanes, &mut acc, rows, &weights[ky * run..][..run]);
    }
    // A loop, not `map`: the vector stores stay in the kernel's AVX2 context.
    for (sum, [a, b]) in sums.iter_mut().zip(acc) {
        *sum = [lanes.store(a), lanes.store(b)];
    }
    sums
}

/// `bias` padded with zeros to whole panels of 16 channels.
pub(super) fn panel_bias(bias: &[f32]) -> Vec<f32> {
    let mut padded = vec![0.0f32; bias.len().div_ceil(PANEL) * PANEL];
    padded[..bias.len()].copy_from_slice(bias);
    padded
}

pub(super) fn bias8(bias: &[f32]) -> F8 {
    std::array::from_fn(|l| bias[l])
}
