//! Zero-padded channels-last (NHWC) images, the layout both passes of the fused block
//! work in: there one kernel row of a window (`k` pixels of `c` channels) is `k * c`
//! contiguous floats.

use rayon::prelude::*;

use super::Geometry;
use super::lanes::{Lanes, WithLanes, chosen, dispatch_with};
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
    /// window's end.
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
        Layout { g, row: wp * g.c, padded_run, tile, groups, image: hp * wp * g.c + padded_run - run }
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

/// `x: [b, c, h, w]` as zero-padded NHWC images of [`Layout::image`] floats each.
pub(crate) fn pad_nhwc(lay: &Layout, x: &[f32]) -> Vec<f32> {
    pad_nhwc_with(lay, x, chosen())
}

/// [`pad_nhwc`] with `simd`'s transposes.
fn pad_nhwc_with(lay: &Layout, x: &[f32], simd: Simd) -> Vec<f32> {
    let g = lay.g;
    let mut xp = zeroed(g.b * lay.image);
    let plane = g.h * g.w;
    xp.par_chunks_mut(lay.image).enumerate().for_each(|(bi, img)| {
        dispatch_with(simd, PadImage { lay, src: &x[bi * g.c * plane..][..g.c * plane], img });
    });
    xp
}

/// One image of [`pad_nhwc`]: with one channel, its rows copied in place; with a multiple
/// of 16 channels, first transposed to unpadded NHWC in 16 x 16 blocks (pixels counted
/// across rows, so that every block is whole but the last pixels'), then copied row by row
/// (a row of pixels is one contiguous run in both). Other channel counts pixel by pixel.
/// The channel-by-channel gather the transposes replace (every pixel reading one float of
/// each channel plane) was 5% of an evaluation.
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
        } else if g.c % 16 == 0 {
            // `[h * w, c]`, channels fastest.
            let mut nhwc = vec![0.0f32; plane * g.c];
            let whole = plane / 16 * 16;
            for q0 in (0..whole).step_by(16) {
                for c0 in (0..g.c).step_by(16) {
                    lanes.transpose16(&src[c0 * plane + q0..], plane, &mut nhwc[q0 * g.c + c0..], g.c);
                }
            }
            for q in whole..plane {
                for ci in 0..g.c {
                    nhwc[q * g.c + ci] = src[ci * plane + q];
                }
            }
            let run = g.w * g.c;
            for yy in 0..g.h {
                img[lay.pixel(yy, 0)..][..run].copy_from_slice(&nhwc[yy * run..][..run]);
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

    /// Every instruction set's padded copy is the definition's: each input value at its
    /// pixel's offset, zero everywhere else (a buffer slot written twice or skipped would
    /// show), for one channel, multiples of 16 (with and without a partial last block of
    /// pixels) and other channel counts.
    #[test]
    fn padded_images_hold_each_value_at_its_pixel_and_zeros_elsewhere() {
        for (b, c, h, w, k) in [(2, 1, 28, 28, 5), (3, 32, 14, 14, 5), (2, 16, 4, 4, 3), (1, 48, 5, 3, 5), (2, 3, 7, 9, 3), (1, 8, 2, 2, 1)] {
            let g = Geometry { b, c, h, w, o: 1, k };
            let lay = Layout::new(g);
            let x: Vec<f32> = (0..b * c * h * w).map(|i| i as f32 + 1.0).collect();
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
            for simd in available() {
                assert_eq!(pad_nhwc_with(&lay, &x, simd), expected, "{simd:?}, {:?}", (b, c, h, w, k));
            }
        }
    }
}
