//! Zero-padded channels-last (NHWC) images, the layout both passes of the fused block
//! work in: there one kernel row of a window (`k` pixels of `c` channels) is `k * c`
//! contiguous floats.

use std::sync::{Mutex, PoisonError};

use rayon::prelude::*;

use super::Geometry;
#[cfg(test)]
use super::lanes::chosen;
use super::lanes::{Lanes, WithLanes, dispatch_with};
use super::pool::{keep, take_kept};
use crate::Simd;

/// Most vectors summed in registers at once (with the broadcast and a load, within the
/// 16 registers of AVX2).
pub(crate) const MAX_TILE: usize = 10;

/// Where one block's windows lie in zero-padded NHWC images, and how a kernel row is cut
/// into tiles of vectors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub g: Geometry,
    /// Floats per padded image row: `(w + k - 1) * c`.
    pub row: usize,
    /// A kernel row (`k * c` floats) rounded up to whole tiles: `groups * tile * 8`.
    pub padded_run: usize,
    /// Vectors of 8 per tile.
    pub tile: usize,
    /// Tiles per kernel row.
    pub groups: usize,
    /// Floats per padded image, with slack so that a padded run may be read past the last
    /// window's end, and rounded up to whole cache lines so that in a [`CacheAligned`]
    /// batch every image starts one.
    pub image: usize,
}

impl Layout {
    pub fn new(g: Geometry) -> Layout {
        let run = g.k * g.c;
        let vectors = run.div_ceil(8);
        let groups = vectors.div_ceil(MAX_TILE);
        let tile = vectors.div_ceil(groups);
        let padded_run = groups * tile * 8;
        let (hp, wp) = (g.h + g.k - 1, g.w + g.k - 1);
        Layout { g, row: wp * g.c, padded_run, tile, groups, image: (hp * wp * g.c + padded_run - run).next_multiple_of(CACHE_LINE / 4) }
    }

    /// Whether every offset the backward pass lists fits in 32 bits (a window's in the
    /// padded image, a channel's in the packed weights): true for any image below 16 GB.
    pub fn offsets_fit_u32(&self) -> bool {
        u32::try_from(self.image.max(self.g.o * self.g.k * self.padded_run)).is_ok()
    }

    /// Offset, in a padded image, of the top-left corner of the window of output pixel
    /// `(yy, xx)`.
    pub fn window(&self, yy: usize, xx: usize) -> usize {
        yy * self.row + xx * self.g.c
    }

    /// Offset, in a padded image, of input pixel `(yy, xx)`.
    pub fn pixel(&self, yy: usize, xx: usize) -> usize {
        let p = self.g.k / 2;
        self.window(yy + p, xx + p)
    }
}

/// A batch of zero-padded NHWC images ([`pad_nhwc_then`]), read-only. Dropped, its buffer
/// is kept for the next batch of the same geometry, whose padding is then zero already, so
/// that only the images are written: clearing the whole buffer first (20 MB for conv2 at
/// 500 images) was a twentieth of an evaluation.
pub(crate) struct Padded {
    g: Geometry,
    buf: CacheAligned<f32>,
}

/// Padded buffers kept for reuse, with their geometry (batch size included): the border
/// of each is zero, because only [`pad_nhwc_then`] writes into one, and only inside the
/// images.
static SPARE_PADDED: Mutex<Vec<(Geometry, CacheAligned<f32>)>> = Mutex::new(Vec::new());
/// Most buffers [`SPARE_PADDED`] keeps: the seed's two blocks.
const SPARE_PADDED_BUFFERS: usize = 2;

impl Padded {
    /// A buffer for a batch of geometry `g`: a kept one, or a new one zeroed.
    fn new(lay: &Layout) -> Padded {
        let g = lay.g;
        let mut spare = SPARE_PADDED.lock().unwrap_or_else(PoisonError::into_inner);
        let buf = match spare.iter().position(|(kept, _)| *kept == g) {
            Some(at) => spare.swap_remove(at).1,
            None => {
                drop(spare);
                CacheAligned::zeroed(g.b * lay.image)
            }
        };
        Padded { g, buf }
    }
}

impl std::ops::Deref for Padded {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf
    }
}

impl Drop for Padded {
    fn drop(&mut self) {
        let buf = std::mem::replace(&mut self.buf, CacheAligned::empty());
        let mut spare = SPARE_PADDED.lock().unwrap_or_else(PoisonError::into_inner);
        // The newest in place of the oldest.
        if spare.len() == SPARE_PADDED_BUFFERS {
            spare.remove(0);
        }
        spare.push((self.g, buf));
    }
}

impl std::fmt::Debug for Padded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Padded").field("geometry", &self.g).field("len", &self.buf.len()).finish()
    }
}

/// `x: [b, c, h, w]` as zero-padded NHWC images of [`Layout::image`] floats each, with
/// `simd`'s transposes; each image is then handed, while it is in cache, to
/// `then(padded image, item)` with its item of `per_image` (one an image: the task's share
/// of the outputs). The fused block's forward kernels read each padded image
/// right after it is written: the Winograd input transform reads it along its columns, and
/// from a batch padded in a pass of its own (20 MB for conv2 at 500 images) those reads
/// came from memory; the transform took three times its arithmetic.
pub(crate) fn pad_nhwc_then<T: Send>(lay: &Layout, x: &[f32], simd: Simd, per_image: impl IndexedParallelIterator<Item = T>, then: impl Fn(&[f32], T) + Sync + Send) -> Padded {
    let g = lay.g;
    let mut padded = Padded::new(lay);
    let plane = g.h * g.w;
    padded.buf.par_chunks_mut(lay.image).zip(per_image).enumerate().for_each(|(bi, (img, item))| {
        dispatch_with(simd, PadImage { lay, src: &x[bi * g.c * plane..][..g.c * plane], img: &mut *img });
        then(img, item);
    });
    padded
}

/// [`pad_nhwc_then`] when `keep` (the backward pass reads the padded batch), else
/// [`pad_each_then`].
pub(crate) fn pad_then<T: Send>(lay: &Layout, x: &[f32], simd: Simd, per_image: impl IndexedParallelIterator<Item = T>, then: impl Fn(&[f32], T) + Sync + Send, keep: bool) -> Option<Padded> {
    if keep {
        return Some(pad_nhwc_then(lay, x, simd, per_image, then));
    }
    pad_each_then(lay, x, simd, per_image, then);
    None
}

thread_local! {
    /// This thread's padded images for [`pad_each_then`], by geometry (the batch aside):
    /// zero where [`PadImage`] writes nothing, so that only the image is written again.
    static KEPT_IMAGES: std::cell::RefCell<Vec<([usize; 4], CacheAligned<f32>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Padded images a thread keeps (the seed's two blocks use two).
const KEPT_IMAGES_PER_THREAD: usize = 4;

/// [`pad_nhwc_then`] without the batch: each image is padded into an image buffer of the
/// thread's, handed to `then`, and the buffer kept for the thread's next image. For
/// inference, where nothing reads the padded input afterwards: writing each image into
/// a batch buffer (20 MB for conv2 at 500 images), whose lines came from memory to be
/// written, took a twentieth of an evaluation.
pub(crate) fn pad_each_then<T: Send>(lay: &Layout, x: &[f32], simd: Simd, per_image: impl IndexedParallelIterator<Item = T>, then: impl Fn(&[f32], T) + Sync + Send) {
    let g = lay.g;
    let image = g.c * g.h * g.w;
    let key = [g.c, g.h, g.w, g.k];
    (0..g.b).into_par_iter().zip(per_image).for_each(|(bi, item)| {
        // Taken out while in use: `then` may run other images' tasks on this thread.
        let mut img = take_kept(&KEPT_IMAGES, |(k, _)| *k == key).map_or_else(|| CacheAligned::here(lay.image, 0.0), |(_, img)| img);
        dispatch_with(simd, PadImage { lay, src: &x[bi * image..][..image], img: &mut img });
        then(&img, item);
        keep(&KEPT_IMAGES, (key, img), KEPT_IMAGES_PER_THREAD);
    });
}

/// [`pad_nhwc_then`] with the chosen instruction set and nothing after.
#[cfg(test)]
pub(crate) fn pad_nhwc(lay: &Layout, x: &[f32]) -> Padded {
    pad_nhwc_with(lay, x, chosen())
}

/// [`pad_nhwc_then`] with nothing after.
pub(crate) fn pad_nhwc_with(lay: &Layout, x: &[f32], simd: Simd) -> Padded {
    pad_nhwc_then(lay, x, simd, rayon::iter::repeat_n((), lay.g.b), |_, ()| {})
}

/// One image of [`pad_nhwc_then`]: with one channel, its rows copied in place; with a
/// multiple of 16 channels (and at least 16 pixels), 16 pixels x 16 channels at a time,
/// transposed in registers into a block on the stack whose rows, a pixel's 16 channels
/// each, are then copied to their pixels ([`blocks16`]: pixels counted across rows). Other
/// channel counts pixel by pixel. The channel-by-channel gather the transposes replace
/// (every pixel reading one float of each channel plane) was 5% of an evaluation; the
/// whole image transposed first into a new unpadded NHWC buffer (25 KB for conv2), then
/// copied row by row, had that buffer allocated, cleared and read back for every image.
struct PadImage<'a> {
    lay: &'a Layout,
    /// `[c, h, w]`.
    src: &'a [f32],
    /// The padded image, zero where nothing is written.
    img: &'a mut [f32],
}

impl WithLanes for PadImage<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let (lay, src, img) = (self.lay, self.src, self.img);
        let g = lay.g;
        let plane = g.h * g.w;
        if g.c == 1 {
            for yy in 0..g.h {
                img[lay.pixel(yy, 0)..][..g.w].copy_from_slice(&src[yy * g.w..][..g.w]);
            }
        } else if g.c % 16 == 0 && plane >= 16 {
            let mut block = [0.0f32; 256];
            for q0 in blocks16(plane) {
                let at = pixels16(lay, q0);
                for c0 in (0..g.c).step_by(16) {
                    // Row `r` of the block: pixel `q0 + r`'s sixteen channels from `c0`.
                    lanes.transpose16(&src[c0 * plane + q0..], plane, &mut block, 16);
                    let (rows, _) = block.as_chunks::<16>();
                    for (&at, row) in at.iter().zip(rows) {
                        img[at + c0..][..16].copy_from_slice(row);
                    }
                }
            }
        } else {
            for yy in 0..g.h {
                for xx in 0..g.w {
                    let dst = &mut img[lay.pixel(yy, xx)..][..g.c];
                    for (ci, d) in dst.iter_mut().enumerate() {
                        *d = src[(ci * g.h + yy) * g.w + xx];
                    }
                }
            }
        }
    }
}

/// The inverse of [`pad_nhwc_then`] with `simd`'s transposes: zero-padded NHWC images
/// `padded` (`[b]` of [`Layout::image`] floats) as `[b, c, h, w]`, the padding dropped,
/// by [`UnpadImage`] image by image.
#[cfg(test)]
fn unpad_nchw_with(lay: &Layout, padded: &[f32], b: usize, simd: Simd) -> Vec<f32> {
    let g = lay.g;
    let size = g.c * g.h * g.w;
    let mut x = zeroed(b * size);
    if size == 0 {
        return x;
    }
    x.par_chunks_mut(size).enumerate().for_each(|(bi, dst)| {
        dispatch_with(simd, UnpadImage { lay, img: &padded[bi * lay.image..][..lay.image], dst });
    });
    x
}

/// A zero-padded NHWC image ([`Layout::image`] floats) as `[c, h, w]`, the padding
/// dropped (the fused block's input gradient, which its backward pass sums in the padded
/// layout): [`PadImage`] run backwards. With a multiple of 16 channels (and at least 16
/// pixels), 16 pixels' rows of 16 channels copied into a block on the stack, then
/// transposed into the channels' planes. Gathered plane by plane instead (each value a
/// float of its own, 128 bytes after the last), conv2's input gradient was one to one and
/// a half hundredths of a training step.
pub(crate) struct UnpadImage<'a> {
    pub lay: &'a Layout,
    /// The padded image.
    pub img: &'a [f32],
    /// `[c, h, w]`.
    pub dst: &'a mut [f32],
}

impl WithLanes for UnpadImage<'_> {
    type Output = ();

    #[inline(always)]
    fn run<L: Lanes>(self, lanes: L) {
        let (lay, img, dst) = (self.lay, self.img, self.dst);
        let g = lay.g;
        let plane = g.h * g.w;
        if g.c == 1 {
            for yy in 0..g.h {
                dst[yy * g.w..][..g.w].copy_from_slice(&img[lay.pixel(yy, 0)..][..g.w]);
            }
        } else if g.c % 16 == 0 && plane >= 16 {
            let mut block = [0.0f32; 256];
            for q0 in blocks16(plane) {
                let at = pixels16(lay, q0);
                for c0 in (0..g.c).step_by(16) {
                    let (rows, _) = block.as_chunks_mut::<16>();
                    for (&at, row) in at.iter().zip(rows) {
                        row.copy_from_slice(&img[at + c0..][..16]);
                    }
                    lanes.transpose16(&block, 16, &mut dst[c0 * plane + q0..], plane);
                }
            }
        } else {
            for ci in 0..g.c {
                for yy in 0..g.h {
                    for xx in 0..g.w {
                        dst[(ci * g.h + yy) * g.w + xx] = img[lay.pixel(yy, xx) + ci];
                    }
                }
            }
        }
    }
}

/// The first pixels (counted across rows, `0..plane`) of the 16-pixel blocks that
/// [`PadImage`] and [`UnpadImage`] transpose: every 16th, and for a partial last block
/// `plane - 16`, a whole block overlapping the one before (whose pixels it copies again,
/// the same values). `plane` is at least 16.
fn blocks16(plane: usize) -> impl Iterator<Item = usize> {
    (0..plane.div_ceil(16)).map(move |block| (16 * block).min(plane - 16))
}

/// Where pixels `q0..q0 + 16` (counted across rows) lie in a padded image.
#[inline(always)]
fn pixels16(lay: &Layout, q0: usize) -> [usize; 16] {
    std::array::from_fn(|r| lay.pixel((q0 + r) / lay.g.w, (q0 + r) % lay.g.w))
}

/// A buffer whose first element starts a cache line (64 bytes, one AVX-512 register), for
/// the kernels' hot operands. An allocator owes a `Vec<f32>` 4-byte alignment only, and
/// glibc's gives large blocks 16: then every 64-byte load of a 16-lane tile straddles two
/// cache lines, and conv2's sparse weight gradient ran at 3.2 multiply-adds a nanosecond
/// instead of 5.2 (39 us an image against 24, the same list over a 64-byte-aligned copy;
/// Zen 5).
/// Made without `unsafe`: the storage is 16-byte units (`u128`, which every allocator
/// aligns to 16) with up to three of them skipped in front, viewed as `T`s through
/// `bytemuck`.
#[derive(Clone)]
pub(crate) struct CacheAligned<T> {
    /// `start` units of slack, then the buffer's bytes (and up to 15 bytes more).
    units: Vec<u128>,
    start: usize,
    /// In `T`s.
    len: usize,
    kind: std::marker::PhantomData<T>,
}

/// The alignment [`CacheAligned`] gives, in bytes.
pub(crate) const CACHE_LINE: usize = 64;

/// Bytes per storage unit of [`CacheAligned`].
const UNIT: usize = size_of::<u128>();

impl<T: bytemuck::Pod> CacheAligned<T> {
    /// Storage units for `n` `T`s.
    fn units_for(n: usize) -> usize {
        (n * size_of::<T>()).div_ceil(UNIT)
    }

    /// An empty buffer over `units` (which hold at least `n` `T`s and a cache line).
    fn over(mut units: Vec<u128>) -> CacheAligned<T> {
        let start = units.as_ptr().align_offset(CACHE_LINE);
        debug_assert!(start < CACHE_LINE / UNIT, "a u128 vector is 16-byte aligned");
        if units.len() < start {
            units.resize(start, 0);
        }
        CacheAligned { units, start, len: 0, kind: std::marker::PhantomData }
    }

    /// An empty buffer with room for `n` elements: [`Self::resize`] up to `n` keeps it
    /// aligned (past it the storage moves, and the buffer is still correct, only no longer
    /// aligned).
    pub(crate) fn with_capacity(n: usize) -> CacheAligned<T> {
        Self::over(Vec::with_capacity(Self::units_for(n) + CACHE_LINE / UNIT))
    }

    /// `n` copies of `value`, on this thread (for a task's own buffer). Zeros come from the
    /// allocator's zeroed allocation, as `vec![0.0; n]`'s do (it may skip the clearing for
    /// memory it knows to be zero).
    pub(crate) fn here(n: usize, value: T) -> CacheAligned<T> {
        if bytemuck::bytes_of(&value).iter().all(|&b| b == 0) {
            let mut buf = Self::over(vec![0u128; Self::units_for(n) + CACHE_LINE / UNIT]);
            buf.units.truncate(buf.start + Self::units_for(n));
            buf.len = n;
            return buf;
        }
        let mut buf = Self::with_capacity(n);
        buf.resize(n, value);
        buf
    }

    /// Makes the buffer `n` long, appending copies of `value` or dropping the end.
    pub(crate) fn resize(&mut self, n: usize, value: T) {
        let at = self.len;
        self.grow(n);
        if n > at {
            self[at..].fill(value);
        }
    }

    /// Sets the length to `n` `T`s, the storage to fit (new units zero).
    fn grow(&mut self, n: usize) {
        self.units.resize(self.start + Self::units_for(n), 0);
        self.len = n;
    }
}

impl<T: bytemuck::Pod + Send + Sync> CacheAligned<T> {
    /// `n` copies of `value`, written (and faulted in) on all cores, as [`filled`].
    pub(crate) fn filled(n: usize, value: T) -> CacheAligned<T> {
        let mut buf = Self::over(filled(Self::units_for(n) + CACHE_LINE / UNIT, 0u128));
        buf.units.truncate(buf.start + Self::units_for(n));
        buf.len = n;
        if bytemuck::bytes_of(&value).iter().any(|&b| b != 0) {
            buf.par_iter_mut().for_each(|v| *v = value);
        }
        buf
    }
}

impl<T> CacheAligned<T> {
    /// An empty buffer, allocating nothing.
    pub(crate) fn empty() -> CacheAligned<T> {
        CacheAligned { units: Vec::new(), start: 0, len: 0, kind: std::marker::PhantomData }
    }
}

impl CacheAligned<f32> {
    /// `n` zeros, written on all cores.
    pub(crate) fn zeroed(n: usize) -> CacheAligned<f32> {
        CacheAligned::filled(n, 0.0)
    }
}

impl<T: bytemuck::Pod> std::ops::Deref for CacheAligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let bytes: &[u8] = bytemuck::cast_slice(&self.units[self.start..]);
        bytemuck::cast_slice(&bytes[..self.len * size_of::<T>()])
    }
}

impl<T: bytemuck::Pod> std::ops::DerefMut for CacheAligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.units[self.start..]);
        bytemuck::cast_slice_mut(&mut bytes[..self.len * size_of::<T>()])
    }
}

impl<T: bytemuck::Pod + PartialEq> PartialEq for CacheAligned<T> {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl<T> std::fmt::Debug for CacheAligned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheAligned").field("len", &self.len).field("start_unit", &self.start).finish()
    }
}

/// `n` zeros, cleared (and faulted in) on all cores.
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    filled(n, 0.0)
}

/// `n` copies of `value`, written (and faulted in) on all cores: for the large outputs
/// the kernels then overwrite, which `vec!` would clear on one core while the other
/// waits (at batch 512, 16 MB for conv1's output and winners).
pub(crate) fn filled<T: Copy + Send + Sync>(n: usize, value: T) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    v.par_extend(rayon::iter::repeat_n(value, n));
    v
}

#[cfg(test)]
mod tests {
    use super::super::lanes::available;
    use super::*;

    /// Every way of making a [`CacheAligned`] starts it at a cache line and holds what was
    /// asked, whatever alignment the allocator gave the vector (the sizes vary it).
    #[test]
    fn cache_aligned_buffers_start_a_line() {
        let aligned = |p: *const u8| (p as usize).is_multiple_of(CACHE_LINE);
        for n in [0, 1, 7, 100, 4099, 1 << 16] {
            let z = CacheAligned::zeroed(n);
            assert!(aligned(z.as_ptr().cast()) && z.len() == n && z.iter().all(|&v| v == 0.0), "{n}");
            let f = CacheAligned::filled(n, [1.5f32; 16]);
            assert!(aligned(f.as_ptr().cast()) && f.len() == n && f.iter().all(|v| *v == [1.5; 16]), "{n}");
            let h = CacheAligned::here(n, 7u8);
            assert!(aligned(h.as_ptr().cast()) && h.len() == n && h.iter().all(|&v| v == 7), "{n}");
            let mut e = CacheAligned::with_capacity(2 * n);
            let values: Vec<u16> = (0..n).map(|i| (i * 7) as u16).collect();
            e.resize(2 * n, 0);
            e[..n].copy_from_slice(&values);
            e[n..].copy_from_slice(&values);
            assert!(aligned(e.as_ptr().cast()), "{n}");
            assert_eq!(e[..n], values[..]);
            assert_eq!(e[n..], values[..]);
            e.resize(n / 2, 9);
            assert_eq!(e[..], values[..n / 2]);
            e.resize(n, 9);
            assert!(e[n / 2..].iter().all(|&v| v == 9) && e.len() == n);
        }
    }

    /// Every instruction set's unpadded copy is the padded images' values at their pixels,
    /// for the same shapes as the padding's test (the padding itself holding values that
    /// must not show).
    #[test]
    fn unpadded_images_take_each_value_from_its_pixel() {
        for (b, c, h, w, k) in [(2, 1, 28, 28, 5), (3, 32, 14, 14, 5), (2, 16, 4, 4, 3), (1, 48, 5, 3, 5), (2, 3, 7, 9, 3), (1, 8, 2, 2, 1)] {
            let g = Geometry { b, c, h, w, o: 1, k };
            let lay = Layout::new(g);
            let padded: Vec<f32> = (0..b * lay.image).map(|i| i as f32 + 0.5).collect();
            let mut expected = vec![0.0f32; b * c * h * w];
            for bi in 0..b {
                for ci in 0..c {
                    for yy in 0..h {
                        for xx in 0..w {
                            expected[((bi * c + ci) * h + yy) * w + xx] = padded[bi * lay.image + lay.pixel(yy, xx) + ci];
                        }
                    }
                }
            }
            for simd in available() {
                assert_eq!(unpad_nchw_with(&lay, &padded, b, simd), expected, "{simd:?}, {:?}", (b, c, h, w, k));
            }
        }
    }

    /// Every instruction set's padded copy is the definition's: each input value at its
    /// pixel's offset, zero everywhere else (a buffer slot written twice or skipped would
    /// show), for one channel, multiples of 16 (with and without a partial last block of
    /// pixels) and other channel counts.
    #[test]
    fn padded_images_hold_each_value_at_its_pixel_and_zeros_elsewhere() {
        for (b, c, h, w, k) in [(2, 1, 28, 28, 5), (3, 32, 14, 14, 5), (2, 16, 4, 4, 3), (1, 48, 5, 3, 5), (2, 3, 7, 9, 3), (1, 8, 2, 2, 1)] {
            let g = Geometry { b, c, h, w, o: 1, k };
            let lay = Layout::new(g);
            // Each instruction set pads a batch of values of its own into the buffer the
            // last one left (kept for reuse): nothing of the last batch may show through.
            for (round, simd) in available().into_iter().enumerate() {
                let x: Vec<f32> = (0..b * c * h * w).map(|i| (i + 1000 * round) as f32 + 1.0).collect();
                let mut expected = vec![0.0f32; b * lay.image];
                for bi in 0..b {
                    for ci in 0..c {
                        for yy in 0..h {
                            for xx in 0..w {
                                expected[bi * lay.image + lay.pixel(yy, xx) + ci] = x[((bi * c + ci) * h + yy) * w + xx];
                            }
                        }
                    }
                }
                assert_eq!(pad_nhwc_with(&lay, &x, simd)[..], expected[..], "{simd:?}, {:?}", (b, c, h, w, k));
                assert_eq!(pad_nhwc_with(&lay, &x, simd)[..], expected[..], "{simd:?} again, {:?}", (b, c, h, w, k));
            }
        }
    }
}
