//! Forward pass of a fused block with a 5x5 kernel by Winograd's minimal filtering,
//! F(4x4, 5x5).
//!
//! A 4x4 tile of convolution outputs, which is four 2x2 pooling windows, is computed from
//! the 8x8 tile of the padded input under it as `A^T [sum over ci of (G g G^T) * (B^T d B)] A`
//! (`*` element by element): the 64 products of the transformed tiles replace the 16 x 25
//! of the direct convolution, 6.25 times fewer multiplications (F(2x2, 5x5), which this
//! replaced, had 2.8 times fewer). Per image that is 64 independent matrix products
//! `U_p [tiles, c] x V_p [c, o]`, computed in register tiles of 8 tiles x 16 output
//! channels ([`Lanes::tile_sums8`]: the seed's conv2 has 16 tiles an image, 4 x 4 of them
//! over its 14 x 14 outputs, which cover 16 x 16), or with AVX-512, for a multiple of 64
//! output channels, of 4 tiles x 64 channels ([`Zmm::tile_sums4x64`]), between an input
//! transform and an output transform that ends in the pooling sweep.
//!
//! The transforms interpolate at 0, 1, -1, 2, -2, 1/2, -1/2 and infinity, the points of the
//! common F(6x6, 3x3), whose `B^T` this is (Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks", CVPR 2016); `G` and `A^T` follow from the points for a
//! kernel of 5 (Toom-Cook). Every entry of `B^T` and `A^T` is exact in binary, the weights
//! are transformed in f64, so the transforms round only in their sums. The result differs
//! from a direct convolution by about 1e-5 relative to the seed network's sums (a float32
//! simulation of random windows at the seed's scale: at most 9e-6, as F(2x2, 5x5)'s 1.3e-5).
//!
//! Used for kernel 5 with a multiple of 8 input channels (conv2 of the seed network:
//! 32 in, 64 out, 14 x 14), where the products have enough depth to fill the tiles;
//! conv1 (one input channel) keeps the direct kernel.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::forward::{BlockOut, bias8, panel_bias, pool_lanes};
use super::lanes::{F8, Lanes, TILE_COLUMNS, TILE8_ROWS, WithLanes, chosen, dispatch_with, runs, starts};
use super::wide::{Arith, Zmm};
use crate::Simd;
use super::layout::{CacheAligned, Layout, Padded, pad_nhwc_with, pad_then};
use super::pool::{keep, take_kept};
use super::Geometry;

/// Side of a transformed tile.
const ALPHA: usize = 8;
/// Side of an output tile.
const M: usize = 4;
/// Points of the transform: entries of a transformed tile.
const POINTS: usize = ALPHA * ALPHA;
/// Tiles per register tile of the products; the tiles of an image are padded to a
/// multiple of it.
const MR: usize = TILE8_ROWS;
/// Output channels per panel: the columns of the register tile.
const PANEL: usize = TILE_COLUMNS;
/// Panels per register tile with AVX-512 ([`Zmm::tile_sums4x64`]: 4 tiles x 64 channels).
const WIDE: usize = 4;
/// Tiles per register tile with AVX-512.
const WIDE_ROWS: usize = 4;

/// `B^T`. The kernels apply it (and `A^T`) through [`bt`] and [`at`], which the tests hold
/// to these matrices.
#[cfg(test)]
const BT: [[f32; ALPHA]; ALPHA] = [
    [1.0, 0.0, -5.25, 0.0, 5.25, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, -4.25, -4.25, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 4.25, -4.25, -1.0, 1.0, 0.0],
    [0.0, 0.5, 0.25, -2.5, -1.25, 2.0, 1.0, 0.0],
    [0.0, -0.5, 0.25, 2.5, -1.25, -2.0, 1.0, 0.0],
    [0.0, 2.0, 4.0, -2.5, -5.0, 0.5, 1.0, 0.0],
    [0.0, -2.0, 4.0, 2.5, -5.0, -0.5, 1.0, 0.0],
    [0.0, -1.0, 0.0, 5.25, 0.0, -5.25, 0.0, 1.0],
];
/// `G`: row `i` is the kernel polynomial's coefficients times the point's powers
/// (`a_i^k`), divided by `prod over j != i of (a_i - a_j)` over the seven finite points
/// (with the sign of row 0 turned, as `B^T`'s row 0 is); the last row is the point at
/// infinity (the leading coefficient).
const G: [[f64; 5]; ALPHA] = [
    [1.0, 0.0, 0.0, 0.0, 0.0],
    [-2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0, -2.0 / 9.0],
    [-2.0 / 9.0, 2.0 / 9.0, -2.0 / 9.0, 2.0 / 9.0, -2.0 / 9.0],
    [1.0 / 90.0, 1.0 / 45.0, 2.0 / 45.0, 4.0 / 45.0, 8.0 / 45.0],
    [1.0 / 90.0, -1.0 / 45.0, 2.0 / 45.0, -4.0 / 45.0, 8.0 / 45.0],
    [32.0 / 45.0, 16.0 / 45.0, 8.0 / 45.0, 4.0 / 45.0, 2.0 / 45.0],
    [32.0 / 45.0, -16.0 / 45.0, 8.0 / 45.0, -4.0 / 45.0, 2.0 / 45.0],
    [0.0, 0.0, 0.0, 0.0, 1.0],
];
/// `A^T`: from the eight points back to four outputs.
#[cfg(test)]
const AT: [[f32; ALPHA]; M] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.25, 0.25, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 0.125, -0.125, 1.0],
];

/// Whether the block's forward pass takes this path.
pub(crate) fn applies(g: Geometry) -> bool {
    g.k == 5 && g.c > 0 && g.c.is_multiple_of(8)
}

/// Rows and columns of output tiles in an image: enough to cover every pooling window
/// (each tile holds two rows and two columns of them).
fn tile_grid(g: Geometry) -> (usize, usize) {
    let (ph, pw) = g.pooled();
    (ph.div_ceil(2), pw.div_ceil(2))
}

/// The block's output `[b, o, h/2, w/2]` and winners, written into `outputs` (every value),
/// and padded NHWC input (as [`super::forward::forward`]) from `x: [b, c, h, w]`, `weight:
/// [o, c, 5, 5]` and `bias: [o]`. Each image is padded ([`pad_then`]) in the task that
/// transforms it; the padded batch is returned only when `keep`.
pub(crate) fn forward(lay: &Layout, x: &[f32], weight: &[f32], bias: &[f32], keep: bool, outputs: BlockOut<'_>) -> Option<Padded> {
    forward_with(lay, x, weight, bias, chosen(), keep, outputs)
}

fn forward_with(lay: &Layout, x: &[f32], weight: &[f32], bias: &[f32], simd: Simd, keep: bool, outputs: BlockOut<'_>) -> Option<Padded> {
    let g = lay.g;
    debug_assert!(applies(g));
    let (ph, pw) = g.pooled();
    let plane = ph * pw;
    let (rows, columns) = tile_grid(g);
    let tiles = (rows * columns).div_ceil(MR) * MR;
    let v = transformed_weights(g, weight);
    let bias16 = panel_bias(bias);
    let BlockOut { out, winners } = outputs;
    if plane == 0 {
        return keep.then(|| pad_nhwc_with(lay, x, simd));
    }
    // Panels per task: with AVX-512, four at a time in the 4 x 64 tile (one task an image;
    // one image alone keeps a task per panel, so that both cores share it); else one.
    let group = if simd == Simd::Avx512 && g.o.is_multiple_of(WIDE * PANEL) && g.b > 1 { WIDE } else { 1 };
    let per_image = out.par_chunks_mut(g.o * plane).zip(winners.par_chunks_mut(g.o * plane));
    pad_then(lay, x, simd, per_image, |xp, (out, winners)| {
        let u = dispatch_with(simd, InputTransform { lay, xp, tiles, u: take_kept(&KEPT_U, |_| true).unwrap_or_default() });
        // One task per group of panels: their channels' planes are contiguous in `out`.
        out.par_chunks_mut(group * PANEL * plane).zip(winners.par_chunks_mut(group * PANEL * plane)).enumerate().for_each(
            |(first, (out, winners))| {
                let panel = first * group;
                let op = PanelProducts {
                    lay,
                    tiles,
                    u: &u,
                    v: &v[panel * POINTS * g.c..][..group * POINTS * g.c],
                    bias: &bias16[panel * PANEL..][..group * PANEL],
                    out,
                    winners,
                };
                dispatch_with(simd, op);
            },
        );
        super::pool::keep(&KEPT_U, u, 1);
    }, keep)
}

thread_local! {
    /// This thread's buffer for an image's transformed input, kept from one image to the
    /// next (128 KB for conv2): allocated for each image, it came back from the allocator
    /// page by page, each faulted in and cleared. A task that finds it taken (one stolen
    /// while another waits for its panels) makes one of its own; one is kept.
    static KEPT_U: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };

    /// This thread's buffer for an image's products (`[panel][point][tile]`, rows of 16
    /// channels: 256 KB for conv2 with AVX-512), kept from one image to the next and
    /// written in full before it is read. Appended to new buffers instead, a register
    /// tile at a time, the appends' copies were 1.3% of a training step at 512 (Zen 4).
    static KEPT_PRODUCTS: std::cell::RefCell<Vec<CacheAligned<[F8; 2]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's kept buffer ([`KEPT_PRODUCTS`]) when it holds at least `n` rows, else a
/// new one. Its rows hold stale values: the caller writes each before reading it, and
/// hands the buffer back with [`put_products`].
fn take_products(n: usize) -> CacheAligned<[F8; 2]> {
    take_kept(&KEPT_PRODUCTS, |kept| kept.len() >= n).unwrap_or_else(|| CacheAligned::here(n, [[0.0; 8]; 2]))
}

/// Hands [`take_products`]'s buffer back for the thread's next image (one is kept).
fn put_products(products: CacheAligned<[F8; 2]>) {
    keep(&KEPT_PRODUCTS, products, 1);
}

/// Transformed weights kept between calls: at batch 1 (one prediction) transforming
/// conv2's 51,200 weights cost more than the products themselves.
struct Transformed {
    c: usize,
    o: usize,
    /// The weights they were transformed from, bit for bit.
    weight: Vec<u32>,
    v: Arc<CacheAligned<[f32; PANEL]>>,
}

/// How many weight sets [`transformed_weights`] keeps (newest first): a few networks
/// predicting in one process each hit their own.
const KEPT: usize = 4;

/// [`transform_weights`], reused when the same weights (compared bit for bit: a changed
/// weight always misses, and training changes every weight each step, so it misses at the
/// first value) were transformed recently.
fn transformed_weights(g: Geometry, weight: &[f32]) -> Arc<CacheAligned<[f32; PANEL]>> {
    static KEEP: Mutex<Vec<Transformed>> = Mutex::new(Vec::new());
    let same = |t: &Transformed| t.c == g.c && t.o == g.o && t.weight.len() == weight.len() && t.weight.iter().zip(weight).all(|(a, b)| *a == b.to_bits());
    // A poisoned lock (a panic elsewhere while holding it) only loses the reuse.
    if let Ok(kept) = KEEP.lock()
        && let Some(hit) = kept.iter().find(|t| same(t))
    {
        return Arc::clone(&hit.v);
    }
    let v = Arc::new(transform_weights(g, weight));
    if let Ok(mut kept) = KEEP.lock() {
        kept.insert(0, Transformed { c: g.c, o: g.o, weight: weight.iter().map(|w| w.to_bits()).collect(), v: Arc::clone(&v) });
        kept.truncate(KEPT);
    }
    v
}

/// `G g G^T` of every kernel, as `[panel][point][ci]` rows of 16 output channels (zero
/// past the last), computed in f64, the 16 channels of a panel side by side (so that the
/// loops vectorise).
fn transform_weights(g: Geometry, weight: &[f32]) -> CacheAligned<[f32; PANEL]> {
    let panels = g.o.div_ceil(PANEL);
    let mut v = CacheAligned::filled(panels * POINTS * g.c, [0.0f32; PANEL]);
    v.par_chunks_mut(POINTS * g.c).enumerate().for_each(|(panel, v)| {
        let channels = PANEL.min(g.o - panel * PANEL);
        for ci in 0..g.c {
            // The panel's kernels on this input channel, `[ky][kx][lane]`.
            let mut kernels = [[[0.0f64; PANEL]; 5]; 5];
            for lane in 0..channels {
                let kernel = &weight[((panel * PANEL + lane) * g.c + ci) * 25..][..25];
                for (ky, row) in kernels.iter_mut().enumerate() {
                    for (kx, k) in row.iter_mut().enumerate() {
                        k[lane] = f64::from(kernel[ky * 5 + kx]);
                    }
                }
            }
            // G g: `[i][kx][lane]`.
            let mut gg = [[[0.0f64; PANEL]; 5]; ALPHA];
            for (gg, gs) in gg.iter_mut().zip(&G) {
                for (&coefficient, row) in gs.iter().zip(&kernels) {
                    for (out, k) in gg.iter_mut().zip(row) {
                        for (o, k) in out.iter_mut().zip(k) {
                            *o += coefficient * k;
                        }
                    }
                }
            }
            // (G g) G^T: `[i][j][lane]`.
            for (i, gg) in gg.iter().enumerate() {
                for (j, gs) in G.iter().enumerate() {
                    let mut sum = [0.0f64; PANEL];
                    for (&coefficient, k) in gs.iter().zip(gg) {
                        for (s, k) in sum.iter_mut().zip(k) {
                            *s += coefficient * k;
                        }
                    }
                    v[(i * ALPHA + j) * g.c + ci] = sum.map(|s| s as f32);
                }
            }
        }
    });
    v
}

/// `B^T d` for eight vectors `d`, with the sums its rows share computed once (rows 1 and
/// 2, 3 and 4, 5 and 6 are each a sum and a difference of the same two terms: 26
/// operations instead of 42 multiply-adds).
#[inline(always)]
fn bt<A: Arith>(l: A, [d0, d1, d2, d3, d4, d5, d6, d7]: [A::V; ALPHA]) -> [A::V; ALPHA] {
    let (a, b) = (l.fma(l.add(d2, d6), -4.25, d4), l.fma(l.add(d1, d5), -4.25, d3));
    let (c, e) = (l.fma(l.fma(d6, 0.25, d2), -1.25, d4), l.fma(l.fma(l.mul(0.5, d1), -2.5, d3), 2.0, d5));
    let (f, h) = (l.fma(l.fma(d6, 4.0, d2), -5.0, d4), l.fma(l.fma(l.mul(2.0, d1), -2.5, d3), 0.5, d5));
    [
        l.fma(l.sub(d0, d6), 5.25, l.sub(d4, d2)),
        l.add(a, b),
        l.sub(a, b),
        l.add(c, e),
        l.sub(c, e),
        l.add(f, h),
        l.sub(f, h),
        l.fma(l.sub(d7, d1), 5.25, l.sub(d3, d5)),
    ]
}

/// `A^T m` for eight vectors `m`: the four outputs.
#[inline(always)]
fn at<A: Arith>(l: A, [m0, m1, m2, m3, m4, m5, m6, m7]: [A::V; ALPHA]) -> [A::V; M] {
    let (p1, n1) = (l.add(m1, m2), l.sub(m1, m2));
    let (p2, n2) = (l.add(m3, m4), l.sub(m3, m4));
    let (p3, n3) = (l.add(m5, m6), l.sub(m5, m6));
    [
        l.add(l.add(m0, p1), l.add(p2, p3)),
        l.fma(l.fma(n1, 2.0, n2), 0.5, n3),
        l.fma(l.fma(p1, 4.0, p2), 0.25, p3),
        l.add(l.fma(l.fma(n1, 8.0, n2), 0.125, n3), m7),
    ]
}

/// `B^T d B` of every tile of one image: `[tile][point][ci]`, tiles row by row (padded
/// to whole register tiles with zeros), written in order (a cleared buffer would cost a
/// pass over memory). The tiles of the last row and column reach past the padded image
/// (16 x 16 outputs cover the seed's 14 x 14): what lies past it is read as zeros.
struct InputTransform<'a> {
    lay: &'a Layout,
    /// The padded input image.
    xp: &'a [f32],
    /// Tiles, padded to a multiple of [`MR`].
    tiles: usize,
    /// A buffer to write the transformed tiles into (its values are dropped).
    u: Vec<f32>,
}

impl WithLanes for InputTransform<'_> {
    type Output = Vec<f32>;

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) -> Vec<f32> {
        // Sixteen channels at a time where the CPU has sixteen lanes (half the operations
        // of eight), eight elsewhere.
        match lanes.zmm() {
            Some(zmm) if self.lay.g.c.is_multiple_of(Zmm::LANES) => self.transform(zmm),
            _ => self.transform(lanes),
        }
    }
}

impl InputTransform<'_> {
    #[inline(always)]
    fn transform<A: Arith>(self, a: A) -> Vec<f32> {
        let (lay, c) = (self.lay, self.lay.g.c);
        let g = lay.g;
        let (rows, columns_of_tiles) = tile_grid(g);
        let (hp, wp) = (g.h + g.k - 1, g.w + g.k - 1);
        let width = A::LANES;
        let groups = c / width;
        // The columns a row of tiles reads: tile `tx` starts at column `4 tx`.
        let columns = M * columns_of_tiles + ALPHA - M;
        let mut u = self.u;
        u.clear();
        u.reserve(self.tiles * POINTS * c);
        let mut tile_u = vec![0.0f32; POINTS * c];
        // `B^T d` of every column of the row of tiles, `[group][column]`: neighbouring tiles
        // share four of their eight columns, so each column is transformed once per row of
        // tiles, not once per tile (20 column transforms a row instead of 32 for conv2).
        let mut t_columns = vec![[a.zero(); ALPHA]; groups * columns];
        for ty in 0..rows {
            let top = M * ty;
            // Rows of the tiles inside the padded image; those below it are zeros.
            let inside = hp.saturating_sub(top).min(ALPHA);
            for s in 0..columns {
                for group in 0..groups {
                    // Plain loops: closures (`array::from_fn`, `map`) are not compiled for
                    // the kernel's instruction set and cost a call per vector operation.
                    let mut column = [a.zero(); ALPHA];
                    if s < wp {
                        for (r, d) in column.iter_mut().enumerate().take(inside) {
                            *d = a.load(&self.xp[lay.window(top + r, s) + group * width..]);
                        }
                    }
                    t_columns[group * columns + s] = bt(a, column);
                }
            }
            for tx in 0..columns_of_tiles {
                for group in 0..groups {
                    // t[s][i] = (B^T d)[i][s] for the tile's eight columns.
                    let t = &t_columns[group * columns + M * tx..][..ALPHA];
                    // (B^T d) B, row by row: u[i] = B^T (row i of B^T d).
                    for i in 0..ALPHA {
                        let mut row = [a.zero(); ALPHA];
                        for (r, t) in row.iter_mut().zip(t) {
                            *r = t[i];
                        }
                        for (j, value) in bt(a, row).into_iter().enumerate() {
                            a.store_to(value, &mut tile_u[(i * ALPHA + j) * c + group * width..]);
                        }
                    }
                }
                u.extend_from_slice(&tile_u);
            }
        }
        u.resize(self.tiles * POINTS * c, 0.0);
        u
    }
}

/// One image and one panel of 16 output channels (or, with AVX-512, [`WIDE`] panels): the
/// 64 products, the output transform, then bias, ReLU and pooling.
struct PanelProducts<'a> {
    lay: &'a Layout,
    tiles: usize,
    /// The image's transformed input `[tile][point][ci]`.
    u: &'a [f32],
    /// The panels' transformed weights `[panel][point][ci]`.
    v: &'a [[f32; PANEL]],
    /// The panels' biases, 16 a panel.
    bias: &'a [f32],
    /// The panels' output planes `[channels, h/2, w/2]` (up to 16 channels a panel).
    out: &'a mut [f32],
    winners: &'a mut [u8],
}

impl WithLanes for PanelProducts<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let g = self.lay.g;
        let points = POINTS * g.c;
        if self.v.len() == WIDE * points
            && let Some(zmm) = lanes.zmm()
        {
            self.wide(lanes, zmm);
            return;
        }
        debug_assert_eq!(self.v.len(), points, "one panel, or four with AVX-512");
        self.one_panel(lanes);
    }
}

impl PanelProducts<'_> {
    /// One panel: the products in [`Lanes::tile_sums8`]'s 8 x 16 tile.
    #[inline(always)]
    fn one_panel<L: Lanes>(self, lanes: L) {
        let g = self.lay.g;
        let c = g.c;
        let (ph, pw) = g.pooled();
        let plane = ph * pw;
        let channels = self.out.len() / plane;
        let bias: [F8; 2] = [bias8(&self.bias[..8]), bias8(&self.bias[8..])];
        // The products, `[point][tile]` rows of 16 channels, point by point (so that the
        // point's 2 KB of weights stay in L1), each row written once into the thread's kept
        // buffer (the tiles are a multiple of `MR`: every row is written).
        let len = POINTS * self.tiles;
        let mut products = take_products(len);
        for p in 0..POINTS {
            let v = &self.v[p * c..][..c];
            for first in (0..self.tiles).step_by(MR) {
                let rows = runs(self.u, starts::<MR>(first, self.tiles - 1, POINTS * c), p * c, c);
                let mut sums = [[[0.0f32; 8]; 2]; MR];
                lanes.tile_sums8(&mut sums, rows, v);
                products[p * self.tiles + first..][..MR].copy_from_slice(&sums);
            }
        }
        let outputs = Outputs { g, tiles: self.tiles, products: &products[..len], bias: &bias, channels, out: self.out, winners: self.winners };
        match lanes.zmm() {
            Some(zmm) => outputs.run(lanes, zmm),
            None => outputs.run(lanes, lanes),
        }
        put_products(products);
    }

    /// [`WIDE`] panels of 16 channels (64 in all) with AVX-512: the products in the 4 tiles
    /// x 64 channels tile ([`Zmm::tile_sums4x64`]), whose 16 sums take 4 loads and 4
    /// broadcasts a step where [`Lanes::tile_sums8`]'s 8 take 1 load and 8 broadcasts (the
    /// load ports, not the multiply-adds, bounded that one), point by point so that the
    /// point's 8 KB of weights stay in L1 over the image's tiles; then each panel's output
    /// transform and pooling as [`Self::one_panel`]'s.
    #[inline(always)]
    fn wide<L: Lanes>(self, lanes: L, zmm: Zmm) {
        let g = self.lay.g;
        let (c, tiles) = (g.c, self.tiles);
        let (ph, pw) = g.pooled();
        let plane = ph * pw;
        debug_assert!(tiles.is_multiple_of(WIDE_ROWS) && self.out.len() == WIDE * PANEL * plane);
        // Each panel's products `[point][tile]`, rows of 16 channels, each row written once
        // into the thread's kept buffer (`[panel][point][tile]`; the tiles are a multiple
        // of `WIDE_ROWS`: every row is written).
        let len = POINTS * tiles;
        let mut products = take_products(WIDE * len);
        for p in 0..POINTS {
            let mut v: [&[[f32; PANEL]]; WIDE] = [&[]; WIDE];
            for (q, v) in v.iter_mut().enumerate() {
                *v = &self.v[(q * POINTS + p) * c..][..c];
            }
            for first in (0..tiles).step_by(WIDE_ROWS) {
                let rows = runs(self.u, starts::<WIDE_ROWS>(first, tiles - 1, POINTS * c), p * c, c);
                let mut sums = [[[0.0f32; PANEL]; WIDE]; WIDE_ROWS];
                zmm.tile_sums4x64(&mut sums, rows, v);
                for (q, panel) in products.chunks_exact_mut(len).take(WIDE).enumerate() {
                    for (row, sums) in panel[p * tiles + first..][..WIDE_ROWS].iter_mut().zip(&sums) {
                        *row = bytemuck::cast(sums[q]);
                    }
                }
            }
        }
        let (mut out, mut winners) = (self.out, self.winners);
        for (q, products) in products.chunks_exact(len).take(WIDE).enumerate() {
            let bias = &self.bias[q * PANEL..][..PANEL];
            let bias: [F8; 2] = [bias8(&bias[..8]), bias8(&bias[8..])];
            let (panel_out, rest) = out.split_at_mut(PANEL * plane);
            let (panel_winners, rest_winners) = winners.split_at_mut(PANEL * plane);
            (out, winners) = (rest, rest_winners);
            let outputs = Outputs { g, tiles, products, bias: &bias, channels: PANEL, out: panel_out, winners: panel_winners };
            outputs.run(lanes, zmm);
        }
        put_products(products);
    }
}

/// The output transform of one image and panel, then bias, ReLU and pooling.
struct Outputs<'a> {
    g: Geometry,
    tiles: usize,
    /// `[point][tile]` rows of 16 channels.
    products: &'a [[F8; 2]],
    bias: &'a [F8; 2],
    channels: usize,
    out: &'a mut [f32],
    winners: &'a mut [u8],
}

impl Outputs<'_> {
    /// With `A`'s vectors: one of 16 lanes for the panel's channels, or two of 8. Each
    /// window's 16 outputs and winners are kept as rows (`[window][channel]`, one store of
    /// 16 each) and written into the channels' planes at the end, transposed by `lanes` 16
    /// windows at a time: written window by window, down the planes, they were 32 stores
    /// of one value each, as much time as the output transform.
    #[inline(always)]
    fn run<L: Lanes, A: Arith>(self, lanes: L, a: A) {
        let (g, tiles, products) = (self.g, self.tiles, self.products);
        let (ph, pw) = g.pooled();
        let plane = ph * pw;
        // The winners as floats whose bits are the winner (0 to 3, or `NONE`), so that they
        // transpose as the outputs do and come back by a truncation (from `c as f32`, the
        // saturating `as u8` was a float comparison a value, a sixth of this function).
        let (mut values, mut codes) = (vec![[0.0f32; PANEL]; plane], vec![[0.0f32; PANEL]; plane]);
        let (rows, columns) = tile_grid(g);
        let width = A::LANES;
        for ty in 0..rows {
            for tx in 0..columns {
                let tile = ty * columns + tx;
                // A^T M A: the tile's sixteen convolution sums, `[row][column]`, 16 channels
                // each, `width` at a time.
                let mut sums = [[[[0.0f32; 8]; 2]; M]; M];
                for part in 0..TILE_COLUMNS / width {
                    // A^T M, column by column, then (A^T M) A row by row.
                    let mut s = [[a.zero(); M]; ALPHA];
                    for (col, s) in s.iter_mut().enumerate() {
                        let mut column = [a.zero(); ALPHA];
                        for (r, m) in column.iter_mut().enumerate() {
                            *m = a.load(&products[(r * ALPHA + col) * tiles + tile].as_flattened()[part * width..]);
                        }
                        *s = at(a, column);
                    }
                    for (row, sums) in sums.iter_mut().enumerate() {
                        let mut values = [a.zero(); ALPHA];
                        for (v, s) in values.iter_mut().zip(&s) {
                            *v = s[row];
                        }
                        for (sum, value) in sums.iter_mut().zip(at(a, values)) {
                            a.store_to(value, &mut sum.as_flattened_mut()[part * width..]);
                        }
                    }
                }
                // The tile's four pooling windows, those inside the pooled plane.
                for wy in 0..2 {
                    let py = 2 * ty + wy;
                    if py >= ph {
                        continue;
                    }
                    for wx in 0..2 {
                        let px = 2 * tx + wx;
                        if px >= pw {
                            continue;
                        }
                        let (upper, lower) = (&sums[2 * wy], &sums[2 * wy + 1]);
                        let window = [&upper[2 * wx], &upper[2 * wx + 1], &lower[2 * wx], &lower[2 * wx + 1]];
                        let (v, c) = pool_lanes(window, self.bias);
                        values[py * pw + px] = v;
                        // A loop: `map`'s closure would not be compiled for the instruction set.
                        for (code, c) in codes[py * pw + px].iter_mut().zip(c) {
                            *code = f32::from_bits(c);
                        }
                    }
                }
            }
        }
        write_planes(lanes, &values, &codes, self.channels, self.out, self.winners);
    }
}

/// Windows' outputs and winners given as rows (`values`, `codes: [window][16]`, the
/// winners as the bits of floats) written into the first `channels` planes of `out` and
/// `winners` (`[channels, windows]`): whole 16 x 16 squares transposed by `lanes` where
/// all 16 channels are written, the rest value by value.
#[inline(always)]
fn write_planes<L: Lanes>(lanes: L, values: &[[f32; PANEL]], codes: &[[f32; PANEL]], channels: usize, out: &mut [f32], winners: &mut [u8]) {
    let plane = values.len();
    let squares = if channels == PANEL { plane / 16 * 16 } else { 0 };
    if squares > 0 {
        let mut transposed = vec![0.0f32; PANEL * plane];
        for w in (0..squares).step_by(16) {
            lanes.transpose16(&values.as_flattened()[w * PANEL..], PANEL, &mut out[w..], plane);
            lanes.transpose16(&codes.as_flattened()[w * PANEL..], PANEL, &mut transposed[w..], plane);
        }
        for (winners, codes) in winners.chunks_exact_mut(plane).zip(transposed.chunks_exact(plane)) {
            for (w, c) in winners[..squares].iter_mut().zip(&codes[..squares]) {
                *w = c.to_bits() as u8;
            }
        }
    }
    for w in squares..plane {
        for ch in 0..channels {
            out[ch * plane + w] = values[w][ch];
            winners[ch * plane + w] = codes[w][ch].to_bits() as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::NONE;
    use super::super::forward::over_stale;
    use super::super::lanes::{Portable, available};
    use super::super::layout::pad_nhwc;
    use super::*;

    /// The transforms compute a correlation: for every position of a 1 at the input and
    /// the kernel, `A^T [(G g) * (B^T d)]` equals `y_i = sum over j of d[i + j] g[j]`.
    #[test]
    #[allow(clippy::needless_range_loop, reason = "di and gj are matrix coordinates")]
    fn transforms_compute_a_correlation() {
        for di in 0..ALPHA {
            for gj in 0..5 {
                let gg: Vec<f64> = (0..ALPHA).map(|i| G[i][gj]).collect();
                let bd: Vec<f64> = (0..ALPHA).map(|i| f64::from(BT[i][di])).collect();
                for (out, at) in AT.iter().enumerate() {
                    let y: f64 = (0..ALPHA).map(|p| f64::from(at[p]) * gg[p] * bd[p]).sum();
                    let expected = if di == out + gj { 1.0 } else { 0.0 };
                    assert!((y - expected).abs() < 1e-12, "d[{di}] g[{gj}] -> y[{out}] = {y}");
                }
            }
        }
    }

    /// [`bt`] and [`at`] apply `BT` and `AT`: column by column, on unit vectors.
    #[test]
    fn transforms_apply_the_matrices() {
        let lanes = Portable;
        for j in 0..ALPHA {
            let unit: [F8; ALPHA] = std::array::from_fn(|r| [if r == j { 1.0 } else { 0.0 }; 8]);
            let column = bt(lanes, unit);
            for i in 0..ALPHA {
                assert_eq!(column[i], [BT[i][j]; 8], "BT[{i}][{j}]");
            }
            let column = at(lanes, unit);
            for i in 0..M {
                assert_eq!(column[i], [AT[i][j]; 8], "AT[{i}][{j}]");
            }
        }
    }

    /// Kept transforms are those of the same weights, bit for bit: the same values
    /// give the kept one, one changed value (even only the sign of a zero) or another
    /// geometry a new one, and every answer equals a fresh transform.
    #[test]
    fn kept_transforms_are_of_the_same_weights() {
        // A geometry of its own, so that no other test's calls evict these entries.
        let g = Geometry { b: 1, c: 24, h: 4, w: 4, o: 5, k: 5 };
        let value = super::super::test_value;
        let mut weight: Vec<f32> = (0..g.o * g.c * 25).map(|i| value(i + 11) * 0.1).collect();
        weight[7] = 0.0;
        let first = transformed_weights(g, &weight);
        assert!(Arc::ptr_eq(&first, &transformed_weights(g, &weight.clone())), "the same weights are transformed again");
        assert_eq!(*first, transform_weights(g, &weight));
        for change in [|w: &mut Vec<f32>| w[7] = -0.0, |w: &mut Vec<f32>| w[100] += 1e-6] {
            let mut changed = weight.clone();
            change(&mut changed);
            let other = transformed_weights(g, &changed);
            assert!(!Arc::ptr_eq(&first, &other));
            assert_eq!(*other, transform_weights(g, &changed));
        }
        let wider = Geometry { o: 4, c: 30, ..g };
        assert!(!Arc::ptr_eq(&first, &transformed_weights(wider, &weight)));
    }

    /// Every product is written before it is read: the thread's kept buffer full of NaN
    /// gives, bit for bit, the outputs and winners a new buffer gives, on each instruction
    /// set (one panel, and four at a time with AVX-512), over tiles padded past the image's.
    #[test]
    fn kept_products_are_written_before_they_are_read() {
        let g = Geometry { b: 1, c: 16, h: 9, w: 11, o: 64, k: 5 };
        let lay = Layout::new(g);
        let value = super::super::test_value;
        let x: Vec<f32> = (0..g.c * g.h * g.w).map(value).collect();
        let weight: Vec<f32> = (0..g.o * g.c * 25).map(|i| value(i * 3 + 5) * 0.1).collect();
        let bias: Vec<f32> = (0..g.o).map(|i| value(i + 17) * 0.1).collect();
        let (rows, columns) = tile_grid(g);
        let tiles = (rows * columns).div_ceil(MR) * MR;
        assert!(tiles > rows * columns, "some tiles are padding");
        let (v, bias16, xp) = (transform_weights(g, &weight), panel_bias(&bias), pad_nhwc(&lay, &x));
        let plane = g.pooled().0 * g.pooled().1;
        for (simd, panels) in available().into_iter().flat_map(|simd| [(simd, 1), (simd, WIDE)]) {
            if panels == WIDE && simd != Simd::Avx512 {
                continue;
            }
            let u = dispatch_with(simd, InputTransform { lay: &lay, xp: &xp[..lay.image], tiles, u: Vec::new() });
            let run = || {
                let (mut out, mut winners) = (vec![0.0f32; panels * PANEL * plane], vec![0u8; panels * PANEL * plane]);
                let v = &v[..panels * POINTS * g.c];
                dispatch_with(simd, PanelProducts { lay: &lay, tiles, u: &u, v, bias: &bias16[..panels * PANEL], out: &mut out, winners: &mut winners });
                (out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), winners)
            };
            KEPT_PRODUCTS.with_borrow_mut(Vec::clear);
            let fresh = run();
            assert!(fresh.1.iter().any(|&w| w != NONE), "{simd}, {panels} panels: some outputs are positive");
            put_products(CacheAligned::here(2 * WIDE * POINTS * tiles, [[f32::NAN; 8]; 2]));
            assert!(run() == fresh, "{simd}, {panels} panels: stale products were read");
        }
    }

    /// Against a direct convolution in f64, on shapes with odd sides, a partial panel
    /// and several panels: every output within 1e-4, and every winner where the window's
    /// two largest sums (and its maximum and zero) are more than 1e-3 apart. Every instruction
    /// set this CPU has gives the portable kernels' outputs.
    #[test]
    fn winograd_matches_a_direct_convolution() {
        for g in [
            Geometry { b: 2, c: 8, h: 7, w: 9, o: 3, k: 5 },
            Geometry { b: 3, c: 32, h: 14, w: 14, o: 64, k: 5 },
            Geometry { b: 1, c: 16, h: 6, w: 5, o: 20, k: 5 },
            // With AVX-512, four panels a task (two groups), over 3 x 3 tiles padded to 16.
            Geometry { b: 2, c: 16, h: 9, w: 11, o: 128, k: 5 },
            // 3 x 6 tiles of 4 x 4 outputs, padded to 24: the last of three register tiles
            // part padding, the last row and column of tiles part outside the image.
            Geometry { b: 1, c: 8, h: 10, w: 22, o: 17, k: 5 },
        ] {
            let lay = Layout::new(g);
            let value = super::super::test_value;
            let x: Vec<f32> = (0..g.b * g.c * g.h * g.w).map(value).collect();
            let weight: Vec<f32> = (0..g.o * g.c * 25).map(|i| value(i * 3 + 5) * 0.1).collect();
            let bias: Vec<f32> = (0..g.o).map(|i| value(i + 17) * 0.1).collect();
            // Into buffers of stale values (see `over_stale`): every value is written.
            let len = g.b * g.o * g.pooled().0 * g.pooled().1;
            let (out, winners, xp) = over_stale(len, 0xFF, |o| forward_with(&lay, &x, &weight, &bias, Simd::Portable, true, o));
            assert!(xp.is_some_and(|xp| xp[..] == pad_nhwc(&lay, &x)[..]), "{g:?}: the padded input is pad_nhwc's");
            assert!(winners.iter().all(|&w| w <= NONE), "{g:?}: a winner not written");
            let mut others = Vec::new();
            for simd in available() {
                let (other, other_winners, _) = over_stale(len, 0x7F, |o| forward_with(&lay, &x, &weight, &bias, simd, true, o));
                assert!(out.iter().zip(&other).all(|(a, b)| (a - b).abs() <= 1e-5) && other_winners.iter().all(|&w| w <= NONE), "{g:?}: {simd}");
                // Each image padded in a buffer of its thread's (inference): the same outputs.
                let (unkept, unkept_winners, none) = over_stale(len, 0xFF, |o| forward_with(&lay, &x, &weight, &bias, simd, false, o));
                assert!(none.is_none() && unkept == other && unkept_winners == other_winners, "{g:?}: {simd}, not kept");
                others.push((simd, other_winners));
            }
            let conv = |bi: usize, oc: usize, yy: usize, xx: usize| -> f64 {
                let mut sum = f64::from(bias[oc]);
                for ci in 0..g.c {
                    for ky in 0..5 {
                        for kx in 0..5 {
                            let (sy, sx) = ((yy + ky) as isize - 2, (xx + kx) as isize - 2);
                            if sy >= 0 && sx >= 0 && (sy as usize) < g.h && (sx as usize) < g.w {
                                let xv = x[((bi * g.c + ci) * g.h + sy as usize) * g.w + sx as usize];
                                sum += f64::from(xv) * f64::from(weight[((oc * g.c + ci) * 5 + ky) * 5 + kx]);
                            }
                        }
                    }
                }
                sum
            };
            let (ph, pw) = g.pooled();
            let mut checked = 0;
            for bi in 0..g.b {
                for oc in 0..g.o {
                    for py in 0..ph {
                        for px in 0..pw {
                            let four: Vec<f64> = (0..4).map(|q| conv(bi, oc, 2 * py + q / 2, 2 * px + q % 2)).collect();
                            let best = (0..4).fold(0, |b, q| if four[q] > four[b] { q } else { b });
                            let expected = four[best].max(0.0);
                            let index = ((bi * g.o + oc) * ph + py) * pw + px;
                            assert!((f64::from(out[index]) - expected).abs() < 1e-4, "{g:?} {index}: {} vs {expected}", out[index]);
                            let second = (0..4).filter(|&q| q != best).map(|q| four[q]).fold(f64::MIN, f64::max);
                            if four[best] - second > 1e-3 && four[best].abs() > 1e-3 {
                                let want = if four[best] > 0.0 { best as u8 } else { NONE };
                                assert_eq!(winners[index], want, "{g:?} {index}");
                                for (simd, other) in &others {
                                    assert_eq!(other[index], want, "{g:?} {index}: {simd}");
                                }
                                checked += 1;
                            }
                        }
                    }
                }
            }
            assert!(checked * 10 > out.len() * 9, "{g:?}: only {checked} winners checked");
        }
    }
}

