//! Forward pass of the fused block: convolution, bias, ReLU and 2x2 max-pool in one kernel.
//!
//! The input is first laid out as zero-padded NHWC images ([`pad_then`]: a batch kept
//! for the backward pass, or in inference each image in a buffer of its thread's), where
//! the window of an output pixel is `k` runs of `k * c` contiguous floats. The weights are
//! packed in panels of 16 output channels, `[panel][ky][kx * c + ci][16]`. One register
//! tile computes five convolution outputs for one panel: 5 x 16 sums in 10 vector
//! registers; each step of the inner loop broadcasts one input value of each of the five
//! windows and multiplies it by two vectors of weights (10 fused multiply-adds per 7
//! loads, so the FMA units, not memory, set the pace). The tiles cover the two
//! convolution rows under one pooled row; then one sweep adds the bias, applies ReLU,
//! takes the maximum of each 2x2 window, and writes the output and which of the four won.
//! Convolution outputs that no pooling window covers (the last row
//! or column of an odd side) are never computed, and no im2col buffer is built.
//!
//! With AVX-512 or AVX2, one input channel and a 5x5 kernel (the seed's conv1), the pixels
//! go in the lanes instead of the channels ([`one_channel_v4`], [`one_channel_v3`]): a
//! window row of five floats is too short for the channel tile.

use rayon::prelude::*;

use super::lanes::{F8, Lanes, MAX_TILE_ROWS, TILE_COLUMNS, TILE_ROWS, WithLanes, chosen, dispatch_with, runs, tile_update};
use super::layout::{CacheAligned, Layout, Padded, pad_then};
use super::winograd;
use super::{Geometry, NONE};
use crate::Simd;

/// Output channels per panel: the columns of the register tile.
const PANEL: usize = TILE_COLUMNS;

/// Pixels per register tile.
const MR: usize = TILE_ROWS;

/// Where the block's forward pass writes: the output `[b, o, h/2, w/2]` and each pooling
/// window's winner (0..4 in the order top-left, top-right, bottom-left, bottom-right, or
/// [`NONE`] when ReLU zeroed it), as many. The pass writes every value of both, so they may
/// hold anything before (recycled buffers: see [`super::pool`]).
pub(crate) struct BlockOut<'a> {
    pub out: &'a mut [f32],
    pub winners: &'a mut [u8],
}

/// Writes the block's output and winners into `outputs` (each `b * o * (h/2) * (w/2)`
/// long), and returns the padded NHWC input (which the backward pass reads) when `keep`
/// (else each image is padded into a buffer of its thread's: see
/// [`super::layout::pad_each_then`]).
pub(crate) fn forward(g: Geometry, x: &[f32], weight: &[f32], bias: &[f32], keep: bool, outputs: BlockOut<'_>) -> Option<Padded> {
    forward_with(g, x, weight, bias, chosen(), keep, outputs)
}

/// [`forward`] with `simd`'s kernels.
fn forward_with(g: Geometry, x: &[f32], weight: &[f32], bias: &[f32], simd: Simd, keep: bool, outputs: BlockOut<'_>) -> Option<Padded> {
    let lay = Layout::new(g);
    let (ph, pw) = g.pooled();
    let plane = ph * pw;
    let BlockOut { out, winners } = outputs;
    assert!(out.len() == g.b * g.o * plane && winners.len() == out.len(), "the outputs of {g:?}");
    if winograd::applies(g) {
        return winograd::forward(&lay, x, weight, bias, keep, BlockOut { out, winners });
    }
    let panels = g.o.div_ceil(PANEL);
    let run = g.k * g.c;
    // Weights as [panel][ky][kx * c + ci][16], zero beyond the last channel.
    let mut packed = CacheAligned::here(panels * g.k * run * PANEL, 0.0f32);
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
    // Each image padded, then one task per panel: its channels' planes are contiguous in
    // `out`.
    let per_image = out.par_chunks_mut(g.o * plane).zip(winners.par_chunks_mut(g.o * plane));
    pad_then(&lay, x, simd, per_image, |xp, (out, winners)| {
        out.par_chunks_mut(PANEL * plane).zip(winners.par_chunks_mut(PANEL * plane)).enumerate().for_each(|(panel, (out, winners))| {
            dispatch_with(simd, Panel {
                lay: &lay,
                xp,
                weights: &packed[panel * g.k * run * PANEL..][..g.k * run * PANEL],
                bias: &bias16[panel * PANEL..][..PANEL],
                out,
                winners,
            });
        });
    }, keep)
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
        let (weights, _) = self.weights.as_chunks::<PANEL>();
        if lanes.one_channel_in_lanes(self.lay, self.xp, weights, self.bias, &mut *self.out, &mut *self.winners) {
            return;
        }
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
                let window = [&sums[2 * px], &sums[2 * px + 1], &sums[2 * pw + 2 * px], &sums[2 * pw + 2 * px + 1]];
                pool_window(window, &bias, channels, self.out, self.winners, py * pw + px, ph * pw);
            }
        }
    }
}

/// Bias, ReLU, 2x2 max-pool and winner of one window for up to 16 channels, from its
/// four convolution sums (top-left, top-right, bottom-left, bottom-right; lane `l` of
/// vector `v` is channel `8 v + l`), written for the first `channels` at `at` of `out`
/// and `winners`, channel `oc` at `at + oc * plane` (the planes of a `[channels, h/2,
/// w/2]` output). Lane by lane and branch-free, in 32-bit lanes throughout (the winners
/// too, narrowed only as they are stored), so that it vectorises; the first of equal
/// maxima wins, and a comparison with NaN is false.
#[inline(always)]
pub(super) fn pool_window(sums: [&[F8; 2]; 4], bias: &[F8; 2], channels: usize, out: &mut [f32], winners: &mut [u8], at: usize, plane: usize) {
    let (values, codes) = pool_lanes(sums, bias);
    if channels == 0 {
        return;
    }
    // One store a channel, down the planes (each slice's bounds checked once).
    let span = (channels - 1) * plane + 1;
    let (out, winners) = (&mut out[at..][..span], &mut winners[at..][..span]);
    for ((o, w), (value, code)) in out.iter_mut().step_by(plane).zip(winners.iter_mut().step_by(plane)).zip(values.into_iter().zip(codes)).take(channels) {
        *o = value;
        *w = code as u8;
    }
}

/// [`pool_window`]'s outputs and winners of the window's 16 lanes, without storing them.
#[inline(always)]
pub(super) fn pool_lanes(sums: [&[F8; 2]; 4], bias: &[F8; 2]) -> ([f32; 16], [u32; 16]) {
    let [a, b, c, d] = sums;
    // All 16 lanes first, in a loop without calls or early exits; then the outputs of the
    // panel's real channels.
    let mut values = [0.0f32; 16];
    let mut codes = [0u32; 16];
    for v in 0..2 {
        for l in 0..8 {
            let (a, b, c, d) = (a[v][l], b[v][l], c[v][l], d[v][l]);
            let right = b > a;
            let upper = if right { b } else { a };
            let upper_at = u32::from(right);
            let right = d > c;
            let lower = if right { d } else { c };
            let lower_at = 2 + u32::from(right);
            let down = lower > upper;
            let best = if down { lower } else { upper };
            let best_at = if down { lower_at } else { upper_at };
            let value = best + bias[v][l];
            let positive = value > 0.0;
            values[v * 8 + l] = if positive { value } else { 0.0 };
            codes[v * 8 + l] = if positive { best_at } else { u32::from(NONE) };
        }
    }
    (values, codes)
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

/// Channels per pass of [`one_channel_v4`]: 4 channels x 2 rows x 2 vectors of pixels are
/// 16 sums in ZMM registers, and each step's 4 loads and 4 broadcasts feed 16 fused
/// multiply-adds.
#[cfg(target_arch = "x86_64")]
const ONE_CHANNEL_GROUP: usize = 4;

/// [`Panel`] for one input channel and a 5x5 kernel (the seed's conv1) with AVX-512, its
/// pixels in the lanes: the channel-tiled kernel, whose windows are a kernel row of five
/// floats, spent most of its time outside the multiply-adds (loading and storing its ten
/// sums around every five-step kernel row, then pooling lane by lane).
///
/// Per pooled row and group of four channels, the two convolution rows under it are two
/// vectors of 16 pixels each, at columns 0 and `2 pw - 16` (they overlap for the seed's 28:
/// 0-15 and 12-27), summed over the 25 kernel positions in 16 registers (each step takes
/// the four shifted input vectors, by `vpermt2ps` from the row's two aligned vectors where
/// rows start on 16-float boundaries as the seed's do, else by unaligned loads, and
/// broadcasts each channel's weight). Then per channel
/// the sums' even and odd columns are gathered into pooled order (`vpermt2ps`), and the
/// window's maximum, bias, ReLU and winner are computed on the whole pooled row at once, as
/// [`pool_window`] does lane by lane (the same comparisons, so the first of equal maxima
/// wins and NaN compares false), and the row is written. Returns `false`, touching
/// nothing, unless the input has one channel, the kernel is 5x5 and the pooled width is
/// 9 to 16 (two vectors of pixels cover the row).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn one_channel_v4(v4: pulp::x86::V4, lay: &Layout, xp: &[f32], weights: &[[f32; PANEL]], bias: &[f32], out: &mut [f32], winners: &mut [u8]) -> bool {
    use core::arch::x86_64::{__m512, __m512i, _CMP_GT_OQ};
    let g = lay.g;
    let (ph, pw) = g.pooled();
    if g.c != 1 || g.k != 5 || !(9..=16).contains(&pw) {
        return false;
    }
    let f = v4.avx512f;
    let channels = out.len() / (ph * pw);
    // Where the second vector of pixels starts, and which lanes of the two vectors hold
    // pooled column j's left (even) and right (odd) inputs (lanes past the row: any).
    let second = 2 * pw - 16;
    let pick = |odd: usize| -> __m512i {
        let mut lanes = [0i32; 16];
        for (j, lane) in lanes.iter_mut().enumerate().take(pw) {
            let x = if j < 8 { 2 * j } else { 16 + 2 * j - second };
            *lane = (x + odd) as i32;
        }
        pulp::cast(lanes)
    };
    let (left, right) = (pick(0), pick(1));
    let code = |c: u8| -> __m512i { pulp::cast([i32::from(c); 16]) };
    let zero: __m512 = pulp::cast([0.0f32; 16]);
    let input = |y: usize, x: usize| -> __m512 {
        let (v, _) = xp[y * lay.row + x..][..16].as_chunks::<16>();
        pulp::cast(v[0])
    };
    // Where rows start on a 16-float boundary and the second vector starts at most at
    // column 12 (the seed's: padded rows 32 wide, every column used within the first 32),
    // the shifted vectors come from the row's two aligned vectors by one `vpermt2ps` each,
    // where loading them at columns 1-4 and 13-16 split every load over two cache lines.
    let aligned_rows = lay.row.is_multiple_of(16) && second <= 12 && (2 * ph + 3) * lay.row + 32 <= xp.len();
    let shift = |s: usize| -> __m512i { pulp::cast(std::array::from_fn::<i32, 16, _>(|l| (s + l) as i32)) };
    let shifts: [[__m512i; 5]; 2] = [std::array::from_fn(&shift), std::array::from_fn(|kx| shift((second + kx).min(16)))];
    let row_pair = |y: usize| -> [__m512; 2] {
        let (v, _) = xp[y * lay.row..][..32].as_chunks::<16>();
        [pulp::cast(v[0]), pulp::cast(v[1])]
    };
    for group in (0..channels).step_by(ONE_CHANNEL_GROUP) {
        for py in 0..ph {
            // [channel][row][vector]
            let mut acc = [[[zero; 2]; 2]; ONE_CHANNEL_GROUP];
            for ky in 0..5 {
                let y = 2 * py + ky;
                let rows = if aligned_rows { [row_pair(y), row_pair(y + 1)] } else { [[zero; 2]; 2] };
                for kx in 0..5 {
                    let w = &weights[ky * 5 + kx];
                    let x = if aligned_rows {
                        let at = |r: usize, v: usize| f._mm512_permutex2var_ps(rows[r][0], shifts[v][kx], rows[r][1]);
                        [[at(0, 0), at(0, 1)], [at(1, 0), at(1, 1)]]
                    } else {
                        [[input(y, kx), input(y, second + kx)], [input(y + 1, kx), input(y + 1, second + kx)]]
                    };
                    for (ch, acc) in acc.iter_mut().enumerate() {
                        let w = f._mm512_set1_ps(w[group + ch]);
                        for r in 0..2 {
                            for v in 0..2 {
                                acc[r][v] = f._mm512_fmadd_ps(w, x[r][v], acc[r][v]);
                            }
                        }
                    }
                }
            }
            for (ch, [[t0, t1], [b0, b1]]) in acc.into_iter().enumerate() {
                let oc = group + ch;
                if oc >= channels {
                    break;
                }
                let (a, b) = (f._mm512_permutex2var_ps(t0, left, t1), f._mm512_permutex2var_ps(t0, right, t1));
                let (c, d) = (f._mm512_permutex2var_ps(b0, left, b1), f._mm512_permutex2var_ps(b0, right, b1));
                // As `pool_window`: upper = b > a ? b : a, lower = d > c ? d : c, best =
                // lower > upper ? lower : upper (ordered comparisons: false with a NaN).
                let upper_right = f._mm512_cmp_ps_mask::<_CMP_GT_OQ>(b, a);
                let lower_right = f._mm512_cmp_ps_mask::<_CMP_GT_OQ>(d, c);
                let (upper, lower) = (f._mm512_mask_blend_ps(upper_right, a, b), f._mm512_mask_blend_ps(lower_right, c, d));
                let below = f._mm512_cmp_ps_mask::<_CMP_GT_OQ>(lower, upper);
                let value = f._mm512_add_ps(f._mm512_mask_blend_ps(below, upper, lower), f._mm512_set1_ps(bias[oc]));
                let positive = f._mm512_cmp_ps_mask::<_CMP_GT_OQ>(value, zero);
                let value: [f32; 16] = pulp::cast(f._mm512_maskz_mov_ps(positive, value));
                let upper_at = f._mm512_mask_blend_epi32(upper_right, code(0), code(1));
                let lower_at = f._mm512_mask_blend_epi32(lower_right, code(2), code(3));
                let at = f._mm512_mask_blend_epi32(below, upper_at, lower_at);
                let winner: [u8; 16] = pulp::cast(f._mm512_cvtepi32_epi8(f._mm512_mask_blend_epi32(positive, code(NONE), at)));
                let row = (oc * ph + py) * pw;
                if py + 1 < ph {
                    // All sixteen lanes: those past the row land at the start of the
                    // channel's next row, written after this one. (A copy of `pw` values is
                    // a call to memcpy, a fiftieth of an evaluation.)
                    let (to, _) = out[row..][..16].as_chunks_mut::<16>();
                    to[0] = value;
                    let (to, _) = winners[row..][..16].as_chunks_mut::<16>();
                    to[0] = winner;
                } else {
                    out[row..row + pw].copy_from_slice(&value[..pw]);
                    winners[row..row + pw].copy_from_slice(&winner[..pw]);
                }
            }
        }
    }
    true
}

/// Channels per pass of [`one_channel_v3`]: 2 channels x 2 rows x 2 vectors of 8 pixels
/// are 8 sums in YMM registers (of AVX2's 16), and each step's 4 loads and 2 broadcasts
/// feed 8 fused multiply-adds.
#[cfg(target_arch = "x86_64")]
const ONE_CHANNEL_GROUP_V3: usize = 2;

/// [`one_channel_v4`] with AVX2's eight lanes. Per pooled row, pair of channels and half
/// row (16 convolution columns, under pooled columns `8 h .. 8 h + 8`), the two
/// convolution rows under it are two vectors of 8 pixels each, summed over the 25 kernel
/// positions (unaligned loads of the shifted input, broadcasts of each channel's weight).
/// Then per channel the sums' even and odd columns are gathered into pooled order
/// (`vpermps`), and the window's maximum, bias, ReLU and winner are computed on the 8
/// pooled columns at once, with [`pool_window`]'s comparisons (the first of equal maxima
/// wins, NaN compares false). The second half's vectors run past the last window into the
/// padding and the next row: their sums there are never stored. Returns `false`, touching
/// nothing, unless the input has one channel, the kernel is 5x5, the pooled width is 9 to
/// 16 and the padded image has room for those reads. (The channel-tiled kernel, five
/// pixels x 16 channels, spent most of conv1's time around its five-step kernel rows:
/// conv1 was a fifth of an evaluation with AVX2.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn one_channel_v3(v3: pulp::x86::V3, lay: &Layout, xp: &[f32], weights: &[[f32; PANEL]], bias: &[f32], out: &mut [f32], winners: &mut [u8]) -> bool {
    use core::arch::x86_64::{__m256, __m256i, _CMP_GT_OQ};
    let g = lay.g;
    let (ph, pw) = g.pooled();
    // The last read: row 2 ph + 3 (the lower row of the last pooled row, plus the kernel's
    // 4), columns up to 16 + 8 + 4 + 8.
    if g.c != 1 || g.k != 5 || !(9..=16).contains(&pw) || (2 * ph + 3) * lay.row + 36 > xp.len() {
        return false;
    }
    let (a, a2, f) = (v3.avx, v3.avx2, v3.fma);
    let channels = out.len() / (ph * pw);
    let zero: __m256 = pulp::cast([0.0f32; 8]);
    let (even, odd): (__m256i, __m256i) = (pulp::cast([0i32, 2, 4, 6, 0, 2, 4, 6]), pulp::cast([1i32, 3, 5, 7, 1, 3, 5, 7]));
    let code = |c: u8| -> __m256 { pulp::cast([u32::from(c); 8]) };
    // Eight pixels from `at` of a row's 20 that the half reads (its bounds checked once).
    let load = |row: &[f32; 20], at: usize| -> __m256 {
        let (v, _) = row[at..][..8].as_chunks::<8>();
        pulp::cast(v[0])
    };
    // Columns 0, 2, .., 14 and 1, 3, .., 15 of 16 (two vectors).
    let split = |lo: __m256, hi: __m256| -> (__m256, __m256) {
        let left = a._mm256_blend_ps::<0xF0>(a2._mm256_permutevar8x32_ps(lo, even), a2._mm256_permutevar8x32_ps(hi, even));
        let right = a._mm256_blend_ps::<0xF0>(a2._mm256_permutevar8x32_ps(lo, odd), a2._mm256_permutevar8x32_ps(hi, odd));
        (left, right)
    };
    for group in (0..channels).step_by(ONE_CHANNEL_GROUP_V3) {
        for py in 0..ph {
            for half in 0..2 {
                let first = 8 * half;
                let x0 = 2 * first;
                // [channel][row][vector]
                let mut acc = [[[zero; 2]; 2]; ONE_CHANNEL_GROUP_V3];
                for ky in 0..5 {
                    let y = 2 * py + ky;
                    let (top, _) = xp[y * lay.row + x0..].as_chunks::<20>();
                    let (bottom, _) = xp[(y + 1) * lay.row + x0..].as_chunks::<20>();
                    let (top, bottom) = (&top[0], &bottom[0]);
                    for kx in 0..5 {
                        let x = [[load(top, kx), load(top, 8 + kx)], [load(bottom, kx), load(bottom, 8 + kx)]];
                        let w = &weights[ky * 5 + kx];
                        // Past the last channel, the panel's zero weights (sums not stored).
                        for (ch, acc) in acc.iter_mut().enumerate() {
                            let w = a._mm256_set1_ps(w[(group + ch) % PANEL]);
                            for r in 0..2 {
                                for v in 0..2 {
                                    acc[r][v] = f._mm256_fmadd_ps(w, x[r][v], acc[r][v]);
                                }
                            }
                        }
                    }
                }
                let n = (pw - first).min(8);
                for (ch, [[t0, t1], [b0, b1]]) in acc.into_iter().enumerate() {
                    let oc = group + ch;
                    if oc >= channels {
                        break;
                    }
                    let ((top_left, top_right), (bottom_left, bottom_right)) = (split(t0, t1), split(b0, b1));
                    // As `pool_window`: upper = b > a ? b : a, lower = d > c ? d : c, best =
                    // lower > upper ? lower : upper (ordered comparisons: false with a NaN).
                    let upper_right = a._mm256_cmp_ps::<_CMP_GT_OQ>(top_right, top_left);
                    let lower_right = a._mm256_cmp_ps::<_CMP_GT_OQ>(bottom_right, bottom_left);
                    let upper = a._mm256_blendv_ps(top_left, top_right, upper_right);
                    let lower = a._mm256_blendv_ps(bottom_left, bottom_right, lower_right);
                    let below = a._mm256_cmp_ps::<_CMP_GT_OQ>(lower, upper);
                    let value = a._mm256_add_ps(a._mm256_blendv_ps(upper, lower, below), a._mm256_set1_ps(bias[oc]));
                    let positive = a._mm256_cmp_ps::<_CMP_GT_OQ>(value, zero);
                    let value: [f32; 8] = pulp::cast(a._mm256_and_ps(value, positive));
                    let upper_at = a._mm256_blendv_ps(code(0), code(1), upper_right);
                    let lower_at = a._mm256_blendv_ps(code(2), code(3), lower_right);
                    let at = a._mm256_blendv_ps(upper_at, lower_at, below);
                    let winner: [u32; 8] = pulp::cast(a._mm256_blendv_ps(code(NONE), at, positive));
                    let row = (oc * ph + py) * pw + first;
                    let winner = winner.map(|c| c as u8);
                    if n == 8 || py + 1 < ph {
                        // All eight lanes: those past the row land at the start of the
                        // channel's next row, written after this one. (A copy of `n`
                        // values, even as a loop, compiled to a call to memcpy: a fiftieth
                        // of an evaluation with AVX2.)
                        let (to, _) = out[row..][..8].as_chunks_mut::<8>();
                        to[0] = value;
                        let (to, _) = winners[row..][..8].as_chunks_mut::<8>();
                        to[0] = winner;
                    } else {
                        out[row..][..n].copy_from_slice(&value[..n]);
                        winners[row..][..n].copy_from_slice(&winner[..n]);
                    }
                }
            }
        }
    }
    true
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

/// The outputs `run` writes, from buffers of `len` that each held `stale` in every byte
/// before (f32 bits `0xFFFFFFFF` are a NaN, `0x7F7F7F7F` a large finite value; a winner of
/// `0xFF` or `0x7F` is no winner): a value the kernels leave unwritten keeps it.
#[cfg(test)]
pub(super) fn over_stale(len: usize, stale: u8, run: impl FnOnce(BlockOut<'_>) -> Option<Padded>) -> (Vec<f32>, Vec<u8>, Option<Padded>) {
    let mut out = vec![f32::from_bits(u32::from_ne_bytes([stale; 4])); len];
    let mut winners = vec![stale; len];
    let xp = run(BlockOut { out: &mut out, winners: &mut winners });
    (out, winners, xp)
}

#[cfg(test)]
mod tests {
    use super::super::lanes::available;
    use super::*;

    /// Every instruction set's kernels (AVX-512's and AVX2's pixels-in-lanes kernels for
    /// one input channel among them) give the portable kernels' outputs and winners
    /// exactly: small integers make every sum exact in any order, so equal maxima (many
    /// here) must go to the same input, and a NaN pixel must pass through the comparisons
    /// the same way. Shapes: the seed's conv1, a pooled width of 10 and of 16 (the pixel
    /// vectors overlapping and not; AVX2's second half of a row part outside it and whole),
    /// a partial panel and a partial group of channels (four, two with AVX2), and a pooled
    /// width of 8 that both leave to the channel-tiled one.
    #[test]
    fn every_instruction_set_gives_the_portable_outputs() {
        for g in [
            Geometry { b: 2, c: 1, h: 28, w: 28, o: 32, k: 5 },
            Geometry { b: 1, c: 1, h: 19, w: 21, o: 21, k: 5 },
            Geometry { b: 1, c: 1, h: 6, w: 33, o: 6, k: 5 },
            Geometry { b: 1, c: 1, h: 16, w: 16, o: 3, k: 5 },
        ] {
            let mut x: Vec<f32> = (0..g.b * g.h * g.w).map(|i| (i * 7 % 5) as f32 - 2.0).collect();
            x[g.h * g.w / 2 + 3] = f32::NAN;
            let weight: Vec<f32> = (0..g.o * 25).map(|i| (i * 11 % 7) as f32 - 3.0).collect();
            let bias: Vec<f32> = (0..g.o).map(|i| (i % 3) as f32 - 1.0).collect();
            // Into buffers of stale values, other ones for each call: every value is written.
            let len = g.b * g.o * g.pooled().0 * g.pooled().1;
            let (out, winners, _) = over_stale(len, 0xFF, |o| forward_with(g, &x, &weight, &bias, Simd::Portable, true, o));
            assert!(winners.contains(&NONE) && winners.contains(&3) && winners.iter().all(|&w| w <= NONE), "{g:?}: too few kinds of winner, or no winner written");
            for simd in available() {
                let (other, other_winners, kept) = over_stale(len, 0x7F, |o| forward_with(g, &x, &weight, &bias, simd, true, o));
                let (unkept, unkept_winners, none) = over_stale(len, 0xFF, |o| forward_with(g, &x, &weight, &bias, simd, false, o));
                // Without the padded batch, the same outputs.
                assert!(kept.is_some() && none.is_none() && unkept.iter().zip(&other).all(|(a, b)| a.to_bits() == b.to_bits()) && unkept_winners == other_winners, "{g:?}: {simd}, not kept");
                assert!(out.iter().zip(&other).all(|(a, b)| a.to_bits() == b.to_bits()), "{g:?}: {simd} outputs");
                assert_eq!(winners, other_winners, "{g:?}: {simd} winners");
            }
        }
    }
}
