//! Zero-padded channels-last (NHWC) images, the layout both passes of the fused block
//! work in: there one kernel row of a window (`k` pixels of `c` channels) is `k * c`
//! contiguous floats.

use rayon::prelude::*;

use super::Geometry;

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
    let g = lay.g;
    let mut xp = zeroed(g.b * lay.image);
    xp.par_chunks_mut(lay.image).enumerate().for_each(|(bi, img)| {
        let src = &x[bi * g.c * g.h * g.w..][..g.c * g.h * g.w];
        for yy in 0..g.h {
            for xx in 0..g.w {
                let dst = &mut img[lay.pixel(yy, xx)..][..g.c];
                for (ci, d) in dst.iter_mut().enumerate() {
                    *d = src[(ci * g.h + yy) * g.w + xx];
                }
            }
        }
    });
    xp
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

