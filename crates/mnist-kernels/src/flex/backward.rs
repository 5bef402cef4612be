//! Backward pass of the fused block, from the output gradient `grad: [b, o, h/2, w/2]`.
//!
//! Max-pooling passes each window's gradient to one input only, and ReLU drops those that
//! were not positive, so at most a quarter of the convolution's output gradient is
//! non-zero. The pass visits only those entries. Per image it first lists them twice: by
//! output channel (where the window sits, and the gradient) and by output pixel (which
//! channels, and their gradients). Then, with the input `x` as a zero-padded channels-last
//! (NHWC) image, where one kernel row of a window is `k * c` contiguous floats:
//!
//! - weight gradient: for each channel, each kernel row and each tile of up to 10 vectors
//!   of that row, `dW[oc][tile] += sum over its entries of g * x[window + tile]`, summed in
//!   registers (one load and one fused multiply-add per eight floats);
//! - input gradient: for each pixel, each kernel row and tile,
//!   `dx[window + tile] += sum over its channels of g * W[oc][tile]`, also in registers.
//!
//! That is a quarter of the dense products' arithmetic, with no im2col buffer, at about one
//! fused multiply-add per cycle (the operands come from L2). The bias gradient is the sum
//! of the entries.
//!
//! One input channel without an input gradient (the seed's conv1, whose kernel rows are
//! five floats) instead sums whole windows: each window's 25 values are copied once into a
//! patch of 32, and each entry is two 16-lane multiply-adds (four of eight) over it
//! ([`ImageKernel::one_channel`]).

use rayon::prelude::*;

use super::lanes::{Lanes, List, WithLanes, dispatch, list_scalar};
use super::layout::{CacheAligned, Layout, MAX_TILE, UnpadImage};
use super::pool::{keep, take_kept};
use super::wide::Arith;
use super::{Geometry, NONE};

/// Weight and bias gradients of one block.
pub(crate) struct Grads {
    /// `[o, c, k, k]`.
    pub dw: Vec<f32>,
    /// `[o]`.
    pub db: Vec<f32>,
}

/// Backward from `grad: [b, o, h/2, w/2]`, given the forward pass's padded NHWC input `xp`
/// (see [`Layout`]), `weight: [o, c, k, k]` and each window's winner. The input gradient
/// `[b, c, h, w]`, when asked for, is written into `dx` (every value: it may hold
/// anything before).
pub(crate) fn backward(g: Geometry, xp: &[f32], weight: &[f32], winners: &[u8], grad: &[f32], dx: Option<&mut [f32]>) -> Grads {
    let lay = Layout::new(g);
    let (c, k, o) = (g.c, g.k, g.o);
    // W as [o, k, padded_run]: kernel row ky of channel oc is (kx, ci) in order, then zeros.
    // (A task per channel: on one thread, with the weight gradient's layout back below,
    // these were a hundredth of a training step at 50. Chunks of at least one value: with
    // no input channels both sides are empty.)
    let mut wr = CacheAligned::zeroed(o * k * lay.padded_run);
    wr.par_chunks_mut((k * lay.padded_run).max(1)).zip(weight.par_chunks((c * k * k).max(1))).for_each(|(rows, weight)| {
        for ci in 0..c {
            for ky in 0..k {
                for kx in 0..k {
                    rows[ky * lay.padded_run + kx * c + ci] = weight[(ci * k + ky) * k + kx];
                }
            }
        }
    });
    // Each task sums an image's input gradient in a padded scratch image of its own (41 KB
    // for conv2, in L1 and L2), then writes it into `dx` without the padding: summed in
    // padded images of the whole batch, then unpadded, those were 21 MB cleared, written
    // and read again at batch 512.
    let size = c * g.h * g.w;
    if let Some(dx) = &dx {
        assert_eq!(dx.len(), g.b * size, "the input gradient of {g:?}");
    }
    // Three tasks per thread, each a near-equal share of the images (two per thread of up
    // to 13 images each split the seed's 50 as 13 + 13 against 13 + 11, and one core
    // waited for the other); each task sums into a weight gradient of its own. They are
    // split down to single tasks whatever the stealing (`with_max_len(1)`), so that their
    // sums are added in one order: rayon leaves a run of three tasks whole or splits it
    // as threads steal, which with three threads or six changed the gradient's last bits
    // from one call to the next.
    let count = (3 * rayon::current_num_threads()).min(g.b).max(1);
    let mut tasks: Vec<(usize, usize, Option<&mut [f32]>)> = Vec::with_capacity(count);
    let mut rest = dx;
    for task in 0..count {
        let (first, end) = (task * g.b / count, (task + 1) * g.b / count);
        let dx = rest.take().map(|r| {
            let (mine, others) = r.split_at_mut((end - first) * size);
            rest = Some(others);
            mine
        });
        tasks.push((first, end - first, dx));
    }
    let (ph, pw) = g.pooled();
    let image_out = o * ph * pw;
    let partial = tasks
        .into_par_iter()
        .with_max_len(1)
        .map(|(first, images, mut dx)| {
            let mut part = Partial::zero(&lay);
            let mut lists = Lists::take(&lay, dx.is_some());
            let mut patches = Vec::new();
            let mut dxp = CacheAligned::here(if dx.is_some() { lay.image } else { 0 }, 0.0);
            for i in 0..images {
                let bi = first + i;
                let range = bi * image_out..(bi + 1) * image_out;
                dispatch(Fill { lists: &mut lists, lay: &lay, winners: &winners[range.clone()], grad: &grad[range], db: &mut part.db, by_pixel: dx.is_some() });
                if i > 0 {
                    dxp.fill(0.0);
                }
                dispatch(ImageKernel {
                    lay: &lay,
                    lists: &lists,
                    xp: &xp[bi * lay.image..][..lay.image],
                    wr: &wr,
                    dw: &mut part.dw,
                    dxp: dx.is_some().then_some(&mut dxp[..]),
                    patches: &mut patches,
                });
                if let Some(dx) = dx.as_deref_mut() {
                    dispatch(UnpadImage { lay: &lay, img: &dxp, dst: &mut dx[i * size..][..size] });
                }
            }
            lists.put_back();
            part
        })
        .reduce_with(Partial::add)
        .unwrap_or_else(|| Partial::zero(&lay));
    // dW from [o, k, padded_run] to Burn's [o, c, k, k].
    let mut dw = vec![0.0f32; weight.len()];
    dw.par_chunks_mut((c * k * k).max(1)).zip(partial.dw.par_chunks((k * lay.padded_run).max(1))).for_each(|(dw, rows)| {
        for ci in 0..c {
            for ky in 0..k {
                for kx in 0..k {
                    dw[(ci * k + ky) * k + kx] = rows[ky * lay.padded_run + kx * c + ci];
                }
            }
        }
    });
    Grads { dw, db: partial.db }
}

/// One task's sums of the weight gradient (`[o, k, padded_run]`) and bias gradient.
struct Partial {
    dw: CacheAligned<f32>,
    db: Vec<f32>,
}

impl Partial {
    fn zero(lay: &Layout) -> Partial {
        // On this thread: a parallel fill inside a parallel task left one core waiting.
        Partial { dw: CacheAligned::here(lay.g.o * lay.g.k * lay.padded_run, 0.0), db: vec![0.0; lay.g.o] }
    }

    fn add(mut self, other: Partial) -> Partial {
        self.dw.iter_mut().zip(other.dw.iter()).for_each(|(a, b)| *a += b);
        self.db.iter_mut().zip(other.db).for_each(|(a, b)| *a += b);
        self
    }
}

/// One image's non-zero output-gradient entries, listed by channel and by pixel.
struct Lists {
    /// [`Lists::key`] of the layout they were made for.
    made_for: [usize; 6],
    /// Per channel, at most `ph * pw` entries: the offset of the window in the padded
    /// image, and the gradient (16 values of room past the last channel's, see
    /// [`Lanes::list16`]).
    channel_offsets: Vec<u32>,
    channel_values: Vec<f32>,
    channel_len: Vec<usize>,
    /// Per output pixel, at most `o` entries: the offset of the channel's rows in the
    /// packed weights, and the gradient.
    pixel_offsets: Vec<u32>,
    pixel_values: Vec<f32>,
    pixel_len: Vec<usize>,
    /// The image's output gradient, zero where the window has no winner (`[o][plane]`, and
    /// 16 values of room for [`Lanes::transpose16`]'s reads past the last channel's).
    masked: Vec<f32>,
    /// For the by-pixel lists where [`Lanes::packs_lists`]: each entry's corner (0 to 3,
    /// as a float, `[o][plane]` and 16 of room), and it and `masked` transposed window by
    /// window (`[plane rounded up to 16][o]`), and the packed weights' offset of each
    /// channel, in groups of 16.
    corner_codes: Vec<f32>,
    masked_by_window: Vec<f32>,
    corners_by_window: Vec<f32>,
    channel_bases: Vec<[u32; 16]>,
    /// Per pooling window (row by row), where its top-left corner's window lies in the
    /// padded image, and where the other corners' lie from there (computed once: the
    /// multiplications were most of the listing's work per entry).
    window_offsets: Vec<u32>,
    corner_offsets: [u32; 4],
    /// Per pooling window and corner (`[window][corner]`), which output pixel it is.
    corner_pixels: Vec<usize>,
}

thread_local! {
    /// This thread's lists, kept from one call to the next (one set per block geometry, a
    /// few at most): allocating and clearing them for every task (600 KB for conv1 at the
    /// seed's size) was a hundredth of a training step. [`Lists::fill`] overwrites what it
    /// reads, so kept lists need no clearing.
    static KEPT_LISTS: std::cell::RefCell<Vec<Lists>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How many sets of lists a thread keeps (the seed network's two blocks use two).
const KEPT: usize = 4;

impl Lists {
    /// This thread's kept lists for `lay` (with the by-pixel lists if `by_pixel`), else
    /// new ones.
    fn take(lay: &Layout, by_pixel: bool) -> Lists {
        take_kept(&KEPT_LISTS, |l| l.fits(lay, by_pixel)).unwrap_or_else(|| Lists::new(lay, by_pixel))
    }

    /// Keeps the lists for this thread's next [`Lists::take`] (the least recently used
    /// set goes past [`KEPT`]).
    fn put_back(self) {
        keep(&KEPT_LISTS, self, KEPT);
    }

    /// Whether these lists were made for `lay`'s geometry (the batch aside) and hold the
    /// by-pixel lists if `by_pixel`.
    fn fits(&self, lay: &Layout, by_pixel: bool) -> bool {
        self.made_for == Lists::key(lay) && (!by_pixel || self.pixel_len.len() == lay.g.h * lay.g.w)
    }

    /// What the lists' sizes and offsets depend on: the geometry less the batch, and the
    /// padded layout's run.
    fn key(lay: &Layout) -> [usize; 6] {
        let g = lay.g;
        [g.c, g.h, g.w, g.k, g.o, lay.padded_run]
    }

    /// Lists for `lay`; the by-pixel ones only if `by_pixel` (the input gradient's).
    fn new(lay: &Layout, by_pixel: bool) -> Lists {
        let g = lay.g;
        let (ph, pw) = g.pooled();
        // `Layout::offsets_fit_u32` was checked before the block ran.
        let offset = |at: usize| u32::try_from(at).unwrap_or_else(|_| unreachable!("offsets fit in 32 bits"));
        let mut window_offsets = Vec::with_capacity(ph * pw);
        let mut corner_pixels = Vec::with_capacity(4 * ph * pw);
        for py in 0..ph {
            for px in 0..pw {
                window_offsets.push(offset(lay.window(2 * py, 2 * px)));
                for corner in 0..4 {
                    let (yy, xx) = (2 * py + corner / 2, 2 * px + corner % 2);
                    corner_pixels.push(yy * g.w + xx);
                }
            }
        }
        let corner_offsets = [0, 1, 2, 3].map(|corner| offset(lay.window(corner / 2, corner % 2)));
        let pixels = if by_pixel { g.h * g.w } else { 0 };
        let entries = g.o * ph * pw;
        let channel_rows = offset(g.k * lay.padded_run);
        let by_window = if by_pixel { (ph * pw).next_multiple_of(16) * g.o } else { 0 };
        let groups = if by_pixel { g.o / 16 } else { 0 };
        Lists {
            made_for: Lists::key(lay),
            channel_offsets: vec![0; entries + 16],
            channel_values: vec![0.0; entries + 16],
            channel_len: vec![0; g.o],
            pixel_offsets: vec![0; pixels * g.o],
            pixel_values: vec![0.0; pixels * g.o],
            pixel_len: vec![0; pixels],
            masked: vec![0.0; entries + 16],
            corner_codes: vec![0.0; if by_pixel { entries + 16 } else { 0 }],
            masked_by_window: vec![0.0; by_window],
            corners_by_window: vec![0.0; by_window],
            channel_bases: (0..groups).map(|q| std::array::from_fn(|l| offset(16 * q + l) * channel_rows)).collect(),
            window_offsets,
            corner_offsets,
            corner_pixels,
        }
    }

    /// Channel `oc`'s entries.
    fn channel(&self, oc: usize, plane: usize) -> List<'_> {
        let len = self.channel_len[oc];
        List { offsets: &self.channel_offsets[oc * plane..][..len], values: &self.channel_values[oc * plane..][..len] }
    }

    /// Output pixel `pixel`'s entries. (Inlined: called between the loops of
    /// [`four_pixels`], a call spilled their sums to the stack.)
    #[inline(always)]
    fn pixel(&self, pixel: usize, o: usize) -> List<'_> {
        let len = self.pixel_len[pixel];
        List { offsets: &self.pixel_offsets[pixel * o..][..len], values: &self.pixel_values[pixel * o..][..len] }
    }

    /// Lists the entries of one image (`winners`, `grad`: `[o, h/2, w/2]`) by channel, and
    /// by pixel when `by_pixel` (the input gradient needs them), and adds them to the bias
    /// gradient.
    ///
    /// Branch-free (whether an entry survives is data, not a pattern): every window writes
    /// its entry at its list's end, and only a surviving one moves the end on; by channel,
    /// 16 windows at a time ([`Lanes::list16`]).
    #[inline(always)]
    fn fill<L: Lanes>(&mut self, lanes: L, lay: &Layout, winners: &[u8], grad: &[f32], db: &mut [f32], by_pixel: bool) {
        let g = lay.g;
        let (ph, pw) = g.pooled();
        let plane = ph * pw;
        // The gradient of windows without a winner zeroed first, in a pass of its own that
        // compiles to vector selects: in the loops below the compiler turned any such
        // select into a branch on the winner, which is random, and the mispredictions made
        // the lists a twentieth of a training step.
        for ((m, &winner), &gv) in self.masked.iter_mut().zip(winners).zip(grad) {
            *m = if winner == NONE { 0.0 } else { gv };
        }
        let (bases, bases_rest) = self.window_offsets[..plane].as_chunks::<16>();
        for (oc, db) in db.iter_mut().enumerate() {
            let (grads, grads_rest) = self.masked[oc * plane..][..plane].as_chunks::<16>();
            let (wins, wins_rest) = winners[oc * plane..][..plane].as_chunks::<16>();
            // To the end of the lists: `list16` writes 16 values, past the channel's own.
            let (offsets, values) = (&mut self.channel_offsets[oc * plane..], &mut self.channel_values[oc * plane..]);
            let (mut len, mut sum) = (0, 0.0);
            for ((grads, wins), bases) in grads.iter().zip(wins).zip(bases) {
                let (end, part) = lanes.list16(grads, wins, (bases, self.corner_offsets), offsets, values, len);
                (len, sum) = (end, sum + part);
            }
            let (end, part) = list_scalar(grads_rest, wins_rest, bases_rest, self.corner_offsets, offsets, values, len);
            *db += sum + part;
            self.channel_len[oc] = end;
        }
        if !by_pixel {
            return;
        }
        // Window by window, so that each pixel's list grows in channel order (channel-major,
        // the writes would scatter over all pixels' lists).
        self.pixel_len.fill(0);
        let pixels = &self.corner_pixels[..4 * plane];
        // `Layout::offsets_fit_u32` was checked before the block ran.
        let channel_rows = u32::try_from(g.k * lay.padded_run).unwrap_or_else(|_| unreachable!("offsets fit in 32 bits"));
        // Whole groups of 16 channels in lanes where the CPU packs lists in registers: the
        // gradient and each entry's corner transposed window by window, 16 x 16 at a time,
        // then, per window and group, [`Lanes::corner_lists16`], which appends the group's
        // kept channels of each corner at the end of that corner's pixel's list. With the
        // loop below, one channel at a time, the lists of an image of the seed's conv2 took
        // 10.8 to 13.3 us (2 of them by channel; about 90 more for the image's tiles), this
        // way 8.5 to 8.7 (one core of an Intel Xeon, AVX-512). A group writes 16 values from
        // a list's end, which is at most 16 per group before it: within the pixel's `o`
        // places.
        let groups = if lanes.packs_lists() { g.o / 16 } else { 0 };
        if groups > 0 {
            for (code, &winner) in self.corner_codes.iter_mut().zip(winners) {
                *code = f32::from(winner & 3);
            }
            for q in 0..groups {
                for first in (0..plane).step_by(16) {
                    let (from, to) = (16 * q * plane + first, first * g.o + 16 * q);
                    lanes.transpose16(&self.masked[from..], plane, &mut self.masked_by_window[to..], g.o);
                    lanes.transpose16(&self.corner_codes[from..], plane, &mut self.corners_by_window[to..], g.o);
                }
            }
        }
        let masked = &self.masked;
        let entry = |at: usize| {
            let gv = masked[at];
            // Not +0.0 or -0.0.
            let keep = gv.to_bits() << 1 != 0;
            (keep, gv, usize::from(winners[at] & 3))
        };
        for window in 0..plane {
            let corners = &pixels[4 * window..][..4];
            let mut ends = [0usize; 4];
            let by_window = &self.masked_by_window[window * g.o..][..16 * groups];
            let codes = &self.corners_by_window[window * g.o..][..16 * groups];
            let (by_window, _) = by_window.as_chunks::<16>();
            let (codes, _) = codes.as_chunks::<16>();
            let starts = [0, 1, 2, 3].map(|corner| corners[corner] * g.o);
            for ((grads, codes), bases) in by_window.iter().zip(codes).zip(&self.channel_bases) {
                lanes.corner_lists16(grads, codes, bases, (&mut self.pixel_offsets, &mut self.pixel_values), starts, 16 * groups, &mut ends);
            }
            // The channels past the whole groups (all of them where lists are not packed in
            // lanes), one at a time. The four corners' lengths are counted in one integer,
            // 32 bits each (a length is at most `o`, far below 2^32), kept in a register:
            // counted in `pixel_len` itself, each entry waited for the last one's store of
            // the same length.
            let mut lens = ends.iter().enumerate().fold(0u128, |lens, (corner, &end)| lens | (end as u128) << (32 * corner));
            let mut rows = (16 * groups) as u32 * channel_rows;
            for oc in 16 * groups..g.o {
                let (keep, gv, corner) = entry(oc * plane + window);
                let shift = 32 * corner;
                let len = (lens >> shift) as u32 as usize;
                let at = corners[corner] * g.o + len;
                self.pixel_offsets[at] = rows;
                self.pixel_values[at] = gv;
                lens += u128::from(keep) << shift;
                rows += channel_rows;
            }
            for (corner, &pixel) in corners.iter().enumerate() {
                self.pixel_len[pixel] = (lens >> (32 * corner)) as u32 as usize;
            }
        }
    }
}

/// [`Lists::fill`] for one image, compiled for the CPU's instruction set.
struct Fill<'a> {
    lists: &'a mut Lists,
    lay: &'a Layout,
    winners: &'a [u8],
    grad: &'a [f32],
    db: &'a mut [f32],
    by_pixel: bool,
}

impl WithLanes for Fill<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        self.lists.fill(lanes, self.lay, self.winners, self.grad, self.db, self.by_pixel);
    }
}

/// The tiled kernels over one image.
struct ImageKernel<'a> {
    lay: &'a Layout,
    lists: &'a Lists,
    /// The padded input image.
    xp: &'a [f32],
    /// Packed weights `[o, k, padded_run]`.
    wr: &'a [f32],
    /// The task's weight-gradient sum `[o, k, padded_run]`.
    dw: &'a mut [f32],
    /// The padded input gradient of the image, when asked for.
    dxp: Option<&'a mut [f32]>,
    /// Scratch of [`ImageKernel::one_channel`], kept from one image to the next.
    patches: &'a mut Vec<[f32; PATCH]>,
}

/// Values of a window of one input channel in [`ImageKernel::one_channel`]'s patches: at
/// least `k * k`, and room for an eight-float store at the last kernel row.
const PATCH: usize = 32;

/// Most bytes of patches [`ImageKernel::one_channel`] fills at a time: two thirds of the
/// 48 KB L1 of recent Intel cores (AMD's Zen 4 and 5 have 32 KB; there a band's patches
/// come partly from L2, as all of them did before).
const PATCH_BAND_BYTES: usize = 32 * 1024;

impl WithLanes for ImageKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let g = self.lay.g;
        if g.c == 1 && (g.k - 1) * g.k + 8 <= PATCH && self.dxp.is_none() {
            match lanes.zmm() {
                Some(zmm) => self.one_channel(zmm),
                None => self.one_channel(lanes),
            }
            return;
        }
        match self.lay.tile {
            1 => self.tiles::<L, 1>(lanes),
            2 => self.tiles::<L, 2>(lanes),
            3 => self.tiles::<L, 3>(lanes),
            4 => self.tiles::<L, 4>(lanes),
            5 => self.tiles::<L, 5>(lanes),
            6 => self.tiles::<L, 6>(lanes),
            7 => self.tiles::<L, 7>(lanes),
            8 => self.tiles::<L, 8>(lanes),
            9 => self.tiles::<L, 9>(lanes),
            _ => self.tiles::<L, MAX_TILE>(lanes),
        }
    }
}

impl ImageKernel<'_> {
    /// The weight gradient of a block with one input channel and no input gradient (the
    /// seed's conv1: a 5 x 5 window is 25 floats), by whole windows: each window's values
    /// are first copied into a patch of 32, then each channel's entries sum `g * patch` in
    /// 32 lanes (two registers with AVX-512, four of eight elsewhere, in two chains). The
    /// kernel-row tiles of [`Self::tiles`] took five passes over each list with one vector
    /// of five useful floats an entry: conv1's weight gradient, 800 values, was a tenth of
    /// a training step.
    ///
    /// By bands of window rows whose patches fit in [`PATCH_BAND_BYTES`] (8 rows, 32 KB, for
    /// conv1), so that the entries read them from L1: with the whole image's patches at
    /// once (115 KB), each entry's two loads came from L2 and the entries took two thirds
    /// of the kernel. Each channel's list is in window order, so a band's entries follow
    /// the last band's; the channels' sums are carried over the bands in `totals`.
    #[inline(always)]
    fn one_channel<A: Arith>(self, a: A) {
        let (lay, lists) = (self.lay, self.lists);
        let g = lay.g;
        let (k, row) = (g.k, lay.row);
        let (ph, pw) = g.pooled();
        if g.h == 0 || g.w == 0 {
            return;
        }
        let band_rows = (PATCH_BAND_BYTES / (row * PATCH * 4)).clamp(1, g.h);
        if self.patches.len() < band_rows * row {
            self.patches.resize(band_rows * row, [0.0; PATCH]);
        }
        let vectors = PATCH / A::LANES;
        let mut totals = vec![[0.0f32; PATCH]; g.o];
        let mut firsts = vec![0usize; g.o];
        for y0 in (0..g.h).step_by(band_rows) {
            let y1 = (y0 + band_rows).min(g.h);
            // Window offsets `yy * row + xx` from `y0 * row` (those with `xx >= w` are never
            // listed).
            let base = y0 * row;
            let patches = &mut self.patches[..(y1 - y0) * row];
            for yy in y0..y1 {
                for xx in 0..g.w {
                    let at = yy * row + xx;
                    let patch = &mut patches[at - base];
                    // Eight floats a kernel row (the padded image has room to read them past
                    // the last window, see `Layout::image`): the three past the row land
                    // where the next row then writes, or past `k * k`, in lanes never read.
                    for ky in 0..k {
                        let (from, _) = self.xp[at + ky * row..][..8].as_chunks::<8>();
                        let (to, _) = patch[ky * k..][..8].as_chunks_mut::<8>();
                        to[0] = from[0];
                    }
                }
            }
            let patches = &*patches;
            // Window offsets fit in 32 bits (`Layout::offsets_fit_u32`, checked before the
            // block ran), and this one is at most an image's.
            let end = (y1 * row) as u32;
            for (oc, (first, total)) in firsts.iter_mut().zip(&mut totals).enumerate() {
                let list = lists.channel(oc, ph * pw);
                let count = list.offsets[*first..].partition_point(|&at| at < end);
                let (offsets, values) = (&list.offsets[*first..][..count], &list.values[*first..][..count]);
                *first += count;
                if count == 0 {
                    continue;
                }
                // Eight multiply-adds in flight: four chains of two 16-lane sums with
                // AVX-512, two of four 8-lane sums elsewhere (with two chains of two, each
                // pair of entries waited for the last pair's sums).
                let sums = if vectors == 2 { patch_sums::<A, 4>(a, offsets, values, patches, base) } else { patch_sums::<A, 2>(a, offsets, values, patches, base) };
                for (v, sum) in sums.into_iter().enumerate().take(vectors) {
                    let total = &mut total[v * A::LANES..][..A::LANES];
                    a.store_to(a.add(a.load(total), sum), total);
                }
            }
        }
        for (oc, sums) in totals.iter().enumerate() {
            for ky in 0..k {
                let dw = &mut self.dw[(oc * k + ky) * lay.padded_run..][..k];
                for (d, s) in dw.iter_mut().zip(&sums[ky * k..]) {
                    *d += s;
                }
            }
        }
    }

    #[inline(always)]
    fn tiles<L: Lanes, const T: usize>(self, lanes: L) {
        let (lay, lists) = (self.lay, self.lists);
        let g = lay.g;
        let (ph, pw) = g.pooled();
        for oc in 0..g.o {
            let list = lists.channel(oc, ph * pw);
            if list.is_empty() {
                continue;
            }
            for ky in 0..g.k {
                let row = &mut self.dw[(oc * g.k + ky) * lay.padded_run..][..lay.padded_run];
                if whole_row::<L, T>(lanes, lay, self.xp, ky * lay.row, list, row) {
                    continue;
                }
                for group in 0..lay.groups {
                    let out = &mut row[group * T * 8..][..T * 8];
                    sum_tile::<L, T>(lanes, self.xp, ky * lay.row + group * T * 8, list, out);
                }
            }
        }
        if let Some(dxp) = self.dxp {
            // Four pixels at a time where their kernel rows overlap in whole vectors of 16
            // (conv2's, with AVX-512: see `four_pixels`).
            let four = lanes.zmm().filter(|_| T == 10 && lay.groups == 2 && g.c == FOUR_PIXELS_CHANNELS);
            // Kernel rows outer: one kernel row of every channel's packed weights (40 KB for
            // conv2) stays in L1 while the pixels pass; with the pixels outer, every entry's
            // ten vectors came from L2 (all of the weights, 200 KB).
            for ky in 0..g.k {
                for yy in 0..g.h {
                    let mut first = 0;
                    if let Some(zmm) = four {
                        while first + 4 <= g.w {
                            let pixel = yy * g.w + first;
                            if lists.pixel_len[pixel..][..4].iter().any(|&len| len > 0) {
                                let out = &mut dxp[lay.window(yy, first) + ky * lay.row..][..FOUR_PIXELS_VECTORS * 16];
                                four_pixels(zmm, &self.wr[ky * lay.padded_run..], (lists, pixel, g.o), out);
                            }
                            first += 4;
                        }
                    }
                    for xx in first..g.w {
                        let pixel = yy * g.w + xx;
                        let list = lists.pixel(pixel, g.o);
                        if list.is_empty() {
                            continue;
                        }
                        let row = &mut dxp[lay.window(yy, xx) + ky * lay.row..][..lay.padded_run];
                        if whole_row::<L, T>(lanes, lay, self.wr, ky * lay.padded_run, list, row) {
                            continue;
                        }
                        for group in 0..lay.groups {
                            let out = &mut row[group * T * 8..][..T * 8];
                            sum_tile::<L, T>(lanes, self.wr, ky * lay.padded_run + group * T * 8, list, out);
                        }
                    }
                }
            }
        }
    }
}

/// `sum over (at, g) of g * patches[at - base]`, 32 lanes as `PATCH / A::LANES` vectors (of
/// the four returned), the entries in `C` chains of sums added at the end
/// ([`ImageKernel::one_channel`]).
#[inline(always)]
fn patch_sums<A: Arith, const C: usize>(a: A, offsets: &[u32], values: &[f32], patches: &[[f32; PATCH]], base: usize) -> [A::V; 4] {
    let vectors = PATCH / A::LANES;
    let mut chains = [[a.zero(); 4]; C];
    let ((groups, rest), (group_values, rest_values)) = (offsets.as_chunks::<C>(), values.as_chunks::<C>());
    for (group, group_values) in groups.iter().zip(group_values) {
        for ((chain, &at), &gv) in chains.iter_mut().zip(group).zip(group_values) {
            let patch = &patches[at as usize - base];
            for v in 0..vectors {
                chain[v] = a.fma(chain[v], gv, a.load(&patch[v * A::LANES..]));
            }
        }
    }
    for (&at, &gv) in rest.iter().zip(rest_values) {
        let patch = &patches[at as usize - base];
        for v in 0..vectors {
            chains[0][v] = a.fma(chains[0][v], gv, a.load(&patch[v * A::LANES..]));
        }
    }
    let mut sums = chains[0];
    for chain in &chains[1..] {
        for v in 0..vectors {
            sums[v] = a.add(sums[v], chain[v]);
        }
    }
    sums
}

/// Input channels for which [`four_pixels`] applies: two vectors of 16 a pixel.
const FOUR_PIXELS_CHANNELS: usize = 32;

/// Vectors of 16 under [`four_pixels`]'s four kernel rows: ten of the first pixel's, and
/// two more for each of the others.
const FOUR_PIXELS_VECTORS: usize = 16;

/// The input gradient's kernel rows of four neighbouring pixels of an image row at once,
/// with sixteen lanes (AVX-512), where a kernel row is ten vectors and the next pixel's
/// starts two vectors later (32 input channels, a 5 x 5 kernel: conv2's): the four rows
/// span 16 vectors, summed in 16 registers, each pixel's list into its ten of them, then
/// added to `out` (the 16 vectors from the first pixel's row) once. One pixel at a time,
/// each list's ten sums were added to its row on their own: 40 loads, additions and
/// stores where these are 16, for lists of about a dozen entries each.
#[inline(always)]
fn four_pixels<A: Arith>(a: A, wr: &[f32], (lists, first, o): (&Lists, usize, usize), out: &mut [f32]) {
    assert_eq!(A::LANES, 16, "two vectors a pixel are 32 channels");
    let mut acc = [a.zero(); FOUR_PIXELS_VECTORS];
    // Each list looked up just before its loop: looked up together, the four lists'
    // bounds took enough registers that each entry reloaded two of them from the stack.
    shifted_list::<A, 0>(a, &mut acc, wr, lists.pixel(first, o));
    shifted_list::<A, 2>(a, &mut acc, wr, lists.pixel(first + 1, o));
    shifted_list::<A, 4>(a, &mut acc, wr, lists.pixel(first + 2, o));
    shifted_list::<A, 6>(a, &mut acc, wr, lists.pixel(first + 3, o));
    for (t, sum) in acc.into_iter().enumerate() {
        let out = &mut out[t * A::LANES..][..A::LANES];
        a.store_to(a.add(a.load(out), sum), out);
    }
}

/// `acc[FIRST..FIRST + 10] += sum over (offset, g) in list of g * wr[offset..]`, ten vectors
/// of `A::LANES` ([`four_pixels`]).
#[inline(always)]
fn shifted_list<A: Arith, const FIRST: usize>(a: A, acc: &mut [A::V; FOUR_PIXELS_VECTORS], wr: &[f32], list: List<'_>) {
    for (&offset, &gv) in list.offsets.iter().zip(list.values) {
        let w = &wr[offset as usize..][..10 * A::LANES];
        for t in 0..10 {
            acc[FIRST + t] = a.fma(acc[FIRST + t], gv, a.load(&w[t * A::LANES..]));
        }
    }
}

/// A whole kernel row of two tiles of ten vectors of 8 (conv2's: 5 pixels x 32 channels)
/// summed in one pass where the CPU has sixteen-lane registers (AVX-512): ten sums, so that
/// ten independent multiply-adds follow each broadcast (with five, each waited for the
/// one four cycles before it) and the list is walked once instead of twice. Returns
/// `false`, touching nothing, for other rows and CPUs.
#[inline(always)]
fn whole_row<L: Lanes, const T: usize>(lanes: L, lay: &Layout, src: &[f32], base: usize, list: List<'_>, row: &mut [f32]) -> bool {
    T == 10 && lay.groups == 2 && lanes.sum_run16::<10>(src, base, list, row)
}

/// `out += sum over (offset, g) in list of g * src[offset + base..][..T * 8]`, the sum held
/// in `T` registers: the weight gradient's tiles (`src` the padded input, one offset per
/// window) and the input gradient's (`src` the packed weights, one offset per channel).
///
/// A tile of one or two vectors (conv1's kernel rows) keeps four sums of each, over every
/// fourth entry, added at the end: with one chain of fused multiply-adds, each waited for
/// the last (four cycles) where the units can start two a cycle.
#[inline(always)]
fn sum_tile<L: Lanes, const T: usize>(lanes: L, src: &[f32], base: usize, list: List<'_>, out: &mut [f32]) {
    // Sixteen lanes at a time where the CPU has them (AVX-512), for the tiles of conv2's
    // kernel rows (10 vectors of 8: five of 16).
    let wide = match T {
        4 => lanes.sum_run16::<2>(src, base, list, out),
        6 => lanes.sum_run16::<3>(src, base, list, out),
        8 => lanes.sum_run16::<4>(src, base, list, out),
        10 => lanes.sum_run16::<5>(src, base, list, out),
        _ => false,
    };
    if wide {
        return;
    }
    let mut acc = [lanes.zero(); T];
    let list = if T <= 2 {
        let mut more = [[lanes.zero(); T]; 3];
        let ((quads, rest), (quad_values, rest_values)) = (list.offsets.as_chunks::<4>(), list.values.as_chunks::<4>());
        for (quad, quad_values) in quads.iter().zip(quad_values) {
            for (q, (&offset, &gv)) in quad.iter().zip(quad_values).enumerate() {
                let (x, _) = src[offset as usize + base..][..T * 8].as_chunks::<8>();
                let sums = if q == 0 { &mut acc } else { &mut more[q - 1] };
                for t in 0..T {
                    sums[t] = lanes.fma(sums[t], gv, lanes.load(&x[t]));
                }
            }
        }
        for sums in more {
            for t in 0..T {
                acc[t] = lanes.add(acc[t], sums[t]);
            }
        }
        List { offsets: rest, values: rest_values }
    } else {
        list
    };
    for (&offset, &gv) in list.offsets.iter().zip(list.values) {
        let (x, _) = src[offset as usize + base..][..T * 8].as_chunks::<8>();
        for t in 0..T {
            acc[t] = lanes.fma(acc[t], gv, lanes.load(&x[t]));
        }
    }
    add_tile(lanes, acc, out);
}

#[inline(always)]
fn add_tile<L: Lanes, const T: usize>(lanes: L, acc: [L::V; T], out: &mut [f32]) {
    let (out, _) = out.as_chunks_mut::<8>();
    for (o, a) in out.iter_mut().zip(acc) {
        let a = lanes.store(a);
        for l in 0..8 {
            o[l] += a[l];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lanes::{available, dispatch_with};
    use crate::Simd;
    use super::super::layout::pad_nhwc;
    use super::*;

    /// The lists each thread keeps between calls give what new ones give: the same call
    /// repeated after calls of other geometries, with and without the input gradient, and
    /// with other gradients, returns the same gradients, bit for bit.
    #[test]
    fn kept_lists_give_what_new_ones_give() {
        let value = super::super::test_value;
        let call = |g: Geometry, seed: usize, want_dx: bool| {
            let lay = Layout::new(g);
            let (ph, pw) = g.pooled();
            let x: Vec<f32> = (0..g.b * g.c * g.h * g.w).map(|i| value(i + seed)).collect();
            let weight: Vec<f32> = (0..g.o * g.c * g.k * g.k).map(|i| value(i + 5)).collect();
            let winners: Vec<u8> = (0..g.b * g.o * ph * pw).map(|i| ((i + seed) % 5) as u8).collect();
            let grad: Vec<f32> = (0..g.b * g.o * ph * pw).map(|i| value(i + 3 * seed + 11)).collect();
            let xp = pad_nhwc(&lay, &x);
            // The input gradient into a buffer of stale values, other ones for each seed:
            // every value is written.
            let mut dx = want_dx.then(|| vec![seed as f32 - 100.5; g.b * g.c * g.h * g.w]);
            let out = backward(g, &xp, &weight, &winners, &grad, dx.as_deref_mut());
            (dx, out.dw, out.db)
        };
        let a = Geometry { b: 7, c: 3, h: 9, w: 11, o: 5, k: 3 };
        let b = Geometry { b: 5, c: 1, h: 12, w: 12, o: 4, k: 5 };
        let first = call(a, 1, true);
        assert!(first.0.as_ref().is_some_and(|dx| dx.iter().any(|&v| v != 0.0)) && first.1.iter().any(|&v| v != 0.0));
        for _ in 0..3 {
            call(b, 2, false);
            call(a, 3, false);
            call(Geometry { b: 2, ..a }, 4, true);
            let again = call(a, 1, true);
            assert!(again == first, "kept lists changed the gradients");
        }
    }

    /// The tasks' sums are added in one order whatever the threads steal: on pools of
    /// three and six threads (nine and eighteen tasks, which rayon would otherwise split
    /// into runs of three left whole or not), repeated calls give the same bits.
    #[test]
    fn gradients_are_the_same_bits_call_after_call() {
        let value = super::super::test_value;
        let g = Geometry { b: 40, c: 4, h: 8, w: 8, o: 8, k: 3 };
        let lay = Layout::new(g);
        let (ph, pw) = g.pooled();
        let x: Vec<f32> = (0..g.b * g.c * g.h * g.w).map(|i| value(i + 7)).collect();
        let weight: Vec<f32> = (0..g.o * g.c * g.k * g.k).map(|i| value(i + 5)).collect();
        let winners: Vec<u8> = (0..g.b * g.o * ph * pw).map(|i| (i % 5) as u8).collect();
        let grad: Vec<f32> = (0..g.b * g.o * ph * pw).map(|i| value(3 * i + 11)).collect();
        let xp = pad_nhwc(&lay, &x);
        for threads in [3, 6] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
            let call = |stale: f32| {
                let mut dx = vec![stale; g.b * g.c * g.h * g.w];
                let grads = pool.install(|| backward(g, &xp, &weight, &winners, &grad, Some(&mut dx)));
                (grads, dx)
            };
            let (first, first_dx) = call(f32::NAN);
            for call_number in 1..40 {
                let (again, dx) = call(call_number as f32);
                assert!(again.dw == first.dw && again.db == first.db && dx == first_dx, "{threads} threads, call {call_number}: other bits");
            }
        }
    }

    /// Every instruction set makes the same lists as the portable code, entry for entry
    /// (by channel and by pixel, in order), and the same bias gradient within rounding: for
    /// channel counts that are and are not multiples of 16, planes shorter and longer than
    /// 16 windows, odd sizes (pixels no window covers), zeros of both signs and windows
    /// without a winner.
    #[test]
    fn every_instruction_set_makes_the_same_lists() {
        for g in [
            Geometry { b: 1, c: 32, h: 14, w: 14, o: 64, k: 5 },
            Geometry { b: 1, c: 1, h: 28, w: 28, o: 32, k: 5 },
            Geometry { b: 1, c: 3, h: 9, w: 11, o: 16, k: 3 },
            Geometry { b: 1, c: 2, h: 7, w: 5, o: 5, k: 3 },
            // Whole groups of 16 channels and a rest, a plane of 9 windows.
            Geometry { b: 1, c: 4, h: 6, w: 7, o: 37, k: 3 },
        ] {
            let lay = Layout::new(g);
            let (ph, pw) = g.pooled();
            let value = super::super::test_value;
            let winners: Vec<u8> = (0..g.o * ph * pw).map(|i| (i * 7 % 5) as u8).collect();
            let grad: Vec<f32> = (0..g.o * ph * pw).map(|i| if i % 3 == 0 { if i % 2 == 0 { 0.0 } else { -0.0 } } else { value(i + 11) }).collect();
            let lists = |simd: Simd, by_pixel: bool| {
                let mut lists = Lists::new(&lay, by_pixel);
                let mut db = vec![0.0; g.o];
                dispatch_with(simd, Fill { lists: &mut lists, lay: &lay, winners: &winners, grad: &grad, db: &mut db, by_pixel });
                let entries = |l: List<'_>| -> Vec<(u32, u32)> { l.offsets.iter().zip(l.values).map(|(&o, v)| (o, v.to_bits())).collect() };
                let channels: Vec<_> = (0..g.o).map(|oc| entries(lists.channel(oc, ph * pw))).collect();
                let pixels: Vec<_> = if by_pixel { (0..g.h * g.w).map(|p| entries(lists.pixel(p, g.o))).collect() } else { Vec::new() };
                (channels, pixels, db)
            };
            for by_pixel in [false, true] {
                let want = lists(Simd::Portable, by_pixel);
                assert!(want.0.iter().any(|l| !l.is_empty()), "{g:?}: no entries");
                for simd in available() {
                    let have = lists(simd, by_pixel);
                    assert_eq!(have.0, want.0, "{g:?}: {simd}, by channel");
                    assert_eq!(have.1, want.1, "{g:?}: {simd}, by pixel");
                    assert!(have.2.iter().zip(&want.2).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())), "{g:?}: {simd}, bias");
                }
            }
        }
    }

    /// The kernels compiled for every instruction set this CPU has and the portable ones
    /// give the same gradients, for a tile of 1 vector (conv1's shape) and of 10 (conv2's),
    /// with the input gradient and without (one input channel then sums whole windows).
    #[test]
    fn portable_and_dispatched_kernels_agree() {
        for g in [
            Geometry { b: 1, c: 1, h: 28, w: 28, o: 4, k: 5 },
            Geometry { b: 1, c: 32, h: 14, w: 14, o: 3, k: 5 },
            Geometry { b: 1, c: 3, h: 7, w: 9, o: 2, k: 3 },
            Geometry { b: 1, c: 1, h: 9, w: 7, o: 5, k: 3 },
            Geometry { b: 1, c: 1, h: 5, w: 6, o: 3, k: 1 },
            Geometry { b: 1, c: 2, h: 9, w: 11, o: 32, k: 3 },
        ] {
            let lay = Layout::new(g);
            let (ph, pw) = g.pooled();
            // Deterministic values in [-1, 1) and winners with some NONE.
            let value = super::super::test_value;
            let x: Vec<f32> = (0..g.c * g.h * g.w).map(value).collect();
            let weight: Vec<f32> = (0..g.o * g.c * g.k * g.k).map(|i| value(i + 5)).collect();
            let winners: Vec<u8> = (0..g.o * ph * pw).map(|i| (i % 5) as u8).collect();
            let grad: Vec<f32> = (0..g.o * ph * pw).map(|i| value(i + 11)).collect();
            let xp = pad_nhwc(&lay, &x);
            let mut wr = vec![0.0f32; g.o * g.k * lay.padded_run];
            for (i, v) in weight.iter().enumerate() {
                let (oc, ci, ky, kx) = (i / (g.c * g.k * g.k), i / (g.k * g.k) % g.c, i / g.k % g.k, i % g.k);
                wr[(oc * g.k + ky) * lay.padded_run + kx * g.c + ci] = *v;
            }
            // The lists, too, made with each instruction set's kernels.
            let run = |simd: Simd, want_dx: bool| {
                let mut lists = Lists::new(&lay, true);
                let mut db = vec![0.0; g.o];
                dispatch_with(simd, Fill { lists: &mut lists, lay: &lay, winners: &winners, grad: &grad, db: &mut db, by_pixel: true });
                let (mut dw, mut dxp) = (vec![0.0; wr.len()], vec![0.0; lay.image]);
                let mut patches = Vec::new();
                let dxp_arg = if want_dx { Some(&mut dxp[..]) } else { None };
                let kernel = ImageKernel { lay: &lay, lists: &lists, xp: &xp, wr: &wr, dw: &mut dw, dxp: dxp_arg, patches: &mut patches };
                dispatch_with(simd, kernel);
                (dw, dxp, db)
            };
            let a = run(Simd::Portable, true);
            let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + a.abs()));
            for simd in available() {
                let b = run(simd, true);
                assert!(close(&a.0, &b.0) && close(&a.1, &b.1) && close(&a.2, &b.2), "{g:?}: {simd}");
                // Without the input gradient (conv1's case: one channel takes whole-window
                // patches), the same weight gradient.
                let c = run(simd, false);
                // (Past each kernel row's `k * c` values the tiles leave sums of the padding,
                // which the whole windows do not write: only the weights' values compared.)
                let weights = |dw: &[f32]| -> Vec<f32> { dw.chunks(lay.padded_run).flat_map(|row| row[..g.k * g.c].to_vec()).collect() };
                assert!(close(&weights(&a.0), &weights(&c.0)), "{g:?}: {simd}, no input gradient");
            }
            assert!(a.0.iter().any(|&v| v != 0.0) && a.1.iter().any(|&v| v != 0.0), "{g:?}: all zero");
        }
    }
}
