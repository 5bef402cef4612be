//! Element-wise arithmetic written once for eight lanes and for sixteen: the Winograd
//! transforms ([`super::winograd`]) run on 16 channels at a time where the CPU has
//! sixteen-lane registers (AVX-512, [`Zmm`]), and on 8 through [`Lanes`] elsewhere. `Zmm`
//! also holds AVX-512's 4 x 64 register tile of the blocked fully connected product, and
//! the tiles of its product with a weight stored by columns, the images in the lanes
//! ([`Zmm::lanes_pair8`]) or as dot products ([`Zmm::dots4x4`]).
//!
//! A trait of its own, in a module of its own, because every [`Lanes`] is also an
//! [`Arith`] (with the same method names): with both traits in scope a call like
//! `lanes.add(x, y)` would be ambiguous.

use super::lanes::Lanes;

/// Element-wise arithmetic on vectors of [`Arith::LANES`] floats: what the Winograd
/// transforms need, written once for the eight lanes of every [`Lanes`] and for AVX-512's
/// sixteen ([`Zmm`]).
pub(crate) trait Arith: Copy {
    /// `LANES` floats, in a register where the CPU has one.
    type V: Copy;
    /// Floats per vector: 8, or 16.
    const LANES: usize;
    /// All lanes zero.
    fn zero(self) -> Self::V;
    /// The first `LANES` floats of `x`.
    fn load(self, x: &[f32]) -> Self::V;
    /// `v` into the first `LANES` floats of `out`.
    fn store_to(self, v: Self::V, out: &mut [f32]);
    /// `x + y`.
    fn add(self, x: Self::V, y: Self::V) -> Self::V;
    /// `x - y`.
    fn sub(self, x: Self::V, y: Self::V) -> Self::V;
    /// `acc + a * x` (fused where the CPU can).
    fn fma(self, acc: Self::V, a: f32, x: Self::V) -> Self::V;
    /// `a * x`.
    fn mul(self, a: f32, x: Self::V) -> Self::V;
}

impl<L: Lanes> Arith for L {
    type V = L::V;
    const LANES: usize = 8;
    #[inline(always)]
    fn zero(self) -> L::V {
        Lanes::zero(self)
    }
    #[inline(always)]
    fn load(self, x: &[f32]) -> L::V {
        let (x, _) = x.as_chunks::<8>();
        Lanes::load(self, &x[0])
    }
    #[inline(always)]
    fn store_to(self, v: L::V, out: &mut [f32]) {
        out[..8].copy_from_slice(&Lanes::store(self, v));
    }
    #[inline(always)]
    fn add(self, x: L::V, y: L::V) -> L::V {
        Lanes::add(self, x, y)
    }
    #[inline(always)]
    fn sub(self, x: L::V, y: L::V) -> L::V {
        Lanes::sub(self, x, y)
    }
    #[inline(always)]
    fn fma(self, acc: L::V, a: f32, x: L::V) -> L::V {
        Lanes::fma(self, acc, a, x)
    }
    #[inline(always)]
    fn mul(self, a: f32, x: L::V) -> L::V {
        Lanes::mul(self, a, x)
    }
}

/// AVX-512's sixteen lanes ([`Lanes::zmm`]).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Zmm(pulp::x86::V4);

#[cfg(target_arch = "x86_64")]
impl Zmm {
    pub(crate) fn new(v4: pulp::x86::V4) -> Zmm {
        Zmm(v4)
    }

    /// `acc[r][c] += sum over k of rows[r][k] * panels[c][k]` for 4 rows and 4 panels of 16
    /// columns, over the depth of the shortest: the blocked fully connected product's tile
    /// (16 ZMM sums; each step's 4 loads and 4 broadcasts feed 16 fused multiply-adds, where
    /// the 10 x 16 tile's 11 loads feed 10).
    #[inline(always)]
    pub(crate) fn tile_sums4x64(self, acc: &mut [[[f32; 16]; 4]; 4], rows: [&[f32]; 4], panels: [&[[f32; 16]]; 4]) {
        let [p0, p1, p2, p3] = panels;
        let steps = p0.iter().zip(p1).zip(p2).zip(p3).map(|(((w0, w1), w2), w3)| [w0, w1, w2, w3]);
        self.sums4x64(acc, rows, steps);
    }

    /// [`Self::tile_sums4x64`] with the 64 columns read where they lie: step `k` takes
    /// `matrix[k * stride..][..64]`, over the depth of the shortest row (`matrix` holds
    /// at least that many strides). The small-batch fully connected forward's tile, over a
    /// block of the weight copied into rows of 64 (`stride` 64).
    #[inline(always)]
    pub(crate) fn tile_sums4x64_strided(self, acc: &mut [[[f32; 16]; 4]; 4], rows: [&[f32]; 4], matrix: &[f32], stride: usize) {
        let steps = matrix.chunks(stride).map(|w| {
            let (w, _) = w[..64].as_chunks::<16>();
            [&w[0], &w[1], &w[2], &w[3]]
        });
        self.sums4x64(acc, rows, steps);
    }

    /// `acc[g][r] += sum over k of rows[r][k] * lanes[g][k]` for 8 rows (8 of a weight's
    /// stored rows when it is stored by columns) and two groups of 16 images, `lanes[g][k]`
    /// the group's inputs at `k` (the images in the lanes): sixteen ZMM registers of sums,
    /// each step two loads, eight broadcasts and sixteen multiply-adds. The rows are read in
    /// place, front to back (eight of them: sixteen row pointers did not fit in the
    /// general registers, and six were reloaded from the stack every step). Every row must
    /// be at least as long as the groups, which must be of one length.
    #[inline(always)]
    pub(crate) fn lanes_pair8(self, acc: &mut [[[f32; 16]; 8]; 2], rows: [&[f32]; 8], lanes: [&[[f32; 16]]; 2]) {
        let len = lanes[0].len();
        let (x0, x1) = (lanes[0], &lanes[1][..len]);
        let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
        let (r0, r1, r2, r3, r4, r5, r6, r7) = (&r0[..len], &r1[..len], &r2[..len], &r3[..len], &r4[..len], &r5[..len], &r6[..len], &r7[..len]);
        let v = self.0;
        let load = |a: &[f32; 16]| -> pulp::f32x16 { pulp::cast(*a) };
        // Named sums, as in `sums4x64`.
        let [a0, a1] = &*acc;
        let (mut s00, mut s01, mut s02, mut s03) = (load(&a0[0]), load(&a0[1]), load(&a0[2]), load(&a0[3]));
        let (mut s04, mut s05, mut s06, mut s07) = (load(&a0[4]), load(&a0[5]), load(&a0[6]), load(&a0[7]));
        let (mut s10, mut s11, mut s12, mut s13) = (load(&a1[0]), load(&a1[1]), load(&a1[2]), load(&a1[3]));
        let (mut s14, mut s15, mut s16, mut s17) = (load(&a1[4]), load(&a1[5]), load(&a1[6]), load(&a1[7]));
        for k in 0..len {
            let (y0, y1): (pulp::f32x16, pulp::f32x16) = (pulp::cast(x0[k]), pulp::cast(x1[k]));
            let w = v.splat_f32x16(r0[k]);
            (s00, s10) = (v.mul_add_f32x16(w, y0, s00), v.mul_add_f32x16(w, y1, s10));
            let w = v.splat_f32x16(r1[k]);
            (s01, s11) = (v.mul_add_f32x16(w, y0, s01), v.mul_add_f32x16(w, y1, s11));
            let w = v.splat_f32x16(r2[k]);
            (s02, s12) = (v.mul_add_f32x16(w, y0, s02), v.mul_add_f32x16(w, y1, s12));
            let w = v.splat_f32x16(r3[k]);
            (s03, s13) = (v.mul_add_f32x16(w, y0, s03), v.mul_add_f32x16(w, y1, s13));
            let w = v.splat_f32x16(r4[k]);
            (s04, s14) = (v.mul_add_f32x16(w, y0, s04), v.mul_add_f32x16(w, y1, s14));
            let w = v.splat_f32x16(r5[k]);
            (s05, s15) = (v.mul_add_f32x16(w, y0, s05), v.mul_add_f32x16(w, y1, s15));
            let w = v.splat_f32x16(r6[k]);
            (s06, s16) = (v.mul_add_f32x16(w, y0, s06), v.mul_add_f32x16(w, y1, s16));
            let w = v.splat_f32x16(r7[k]);
            (s07, s17) = (v.mul_add_f32x16(w, y0, s07), v.mul_add_f32x16(w, y1, s17));
        }
        acc[0] = [s00, s01, s02, s03, s04, s05, s06, s07].map(pulp::cast);
        acc[1] = [s10, s11, s12, s13, s14, s15, s16, s17].map(pulp::cast);
    }

    /// [`Self::lanes_pair8`] for one group of 16 images: eight sums, each step one load and
    /// eight multiply-adds, each broadcasting its row's value from memory.
    #[inline(always)]
    pub(crate) fn lanes_one8(self, acc: &mut [[f32; 16]; 8], rows: [&[f32]; 8], lanes: &[[f32; 16]]) {
        let len = lanes.len();
        let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
        let (r0, r1, r2, r3, r4, r5, r6, r7) = (&r0[..len], &r1[..len], &r2[..len], &r3[..len], &r4[..len], &r5[..len], &r6[..len], &r7[..len]);
        let v = self.0;
        let load = |a: &[f32; 16]| -> pulp::f32x16 { pulp::cast(*a) };
        let (mut s0, mut s1, mut s2, mut s3) = (load(&acc[0]), load(&acc[1]), load(&acc[2]), load(&acc[3]));
        let (mut s4, mut s5, mut s6, mut s7) = (load(&acc[4]), load(&acc[5]), load(&acc[6]), load(&acc[7]));
        for (k, y) in lanes.iter().enumerate() {
            let y: pulp::f32x16 = pulp::cast(*y);
            s0 = v.mul_add_f32x16(v.splat_f32x16(r0[k]), y, s0);
            s1 = v.mul_add_f32x16(v.splat_f32x16(r1[k]), y, s1);
            s2 = v.mul_add_f32x16(v.splat_f32x16(r2[k]), y, s2);
            s3 = v.mul_add_f32x16(v.splat_f32x16(r3[k]), y, s3);
            s4 = v.mul_add_f32x16(v.splat_f32x16(r4[k]), y, s4);
            s5 = v.mul_add_f32x16(v.splat_f32x16(r5[k]), y, s5);
            s6 = v.mul_add_f32x16(v.splat_f32x16(r6[k]), y, s6);
            s7 = v.mul_add_f32x16(v.splat_f32x16(r7[k]), y, s7);
        }
        *acc = [s0, s1, s2, s3, s4, s5, s6, s7].map(pulp::cast);
    }

    /// The 16 dot products of 4 rows `a` with 4 rows `b` (all of one length), sixteen
    /// lanes at a time in sixteen registers, each step eight loads and sixteen
    /// multiply-adds; the lanes are added at the end, and the last `len % 16` values one
    /// by one.
    #[inline(always)]
    pub(crate) fn dots4x4(self, a: [&[f32]; 4], b: [&[f32]; 4]) -> [[f32; 4]; 4] {
        let len = a[0].len();
        let whole = len / 16;
        fn chunks(r: &[f32], len: usize, whole: usize) -> &[[f32; 16]] {
            &r[..len].as_chunks::<16>().0[..whole]
        }
        let chunks = |r| chunks(r, len, whole);
        let (a0, a1, a2, a3) = (chunks(a[0]), chunks(a[1]), chunks(a[2]), chunks(a[3]));
        let (b0, b1, b2, b3) = (chunks(b[0]), chunks(b[1]), chunks(b[2]), chunks(b[3]));
        let v = self.0;
        let zero = v.splat_f32x16(0.0);
        let mut s = [[zero; 4]; 4];
        for k in 0..whole {
            let x: [pulp::f32x16; 4] = [pulp::cast(a0[k]), pulp::cast(a1[k]), pulp::cast(a2[k]), pulp::cast(a3[k])];
            let w: [pulp::f32x16; 4] = [pulp::cast(b0[k]), pulp::cast(b1[k]), pulp::cast(b2[k]), pulp::cast(b3[k])];
            for r in 0..4 {
                for c in 0..4 {
                    s[r][c] = v.mul_add_f32x16(x[r], w[c], s[r][c]);
                }
            }
        }
        let mut out = [[0.0f32; 4]; 4];
        for r in 0..4 {
            for c in 0..4 {
                let mut sum = v.avx512f._mm512_reduce_add_ps(pulp::cast(s[r][c]));
                for k in whole * 16..len {
                    sum += a[r][k] * b[c][k];
                }
                out[r][c] = sum;
            }
        }
        out
    }

    /// The 4 x 64 tile of both: `acc[r][c] += sum over k of rows[r][k] * step_k[c]`, over
    /// the shorter of the rows and `steps` (the four 16-column vectors of each step).
    #[inline(always)]
    fn sums4x64<'a>(self, acc: &mut [[[f32; 16]; 4]; 4], rows: [&[f32]; 4], steps: impl Iterator<Item = [&'a [f32; 16]; 4]>) {
        // Sixteen named sums, as in `Lanes::tile_sums`.
        let v4 = self.0;
        let [r0, r1, r2, r3] = rows;
        let load = |a: &[f32; 16]| -> pulp::f32x16 { pulp::cast(*a) };
        let [a0, a1, a2, a3] = acc;
        let (mut s00, mut s01, mut s02, mut s03) = (load(&a0[0]), load(&a0[1]), load(&a0[2]), load(&a0[3]));
        let (mut s10, mut s11, mut s12, mut s13) = (load(&a1[0]), load(&a1[1]), load(&a1[2]), load(&a1[3]));
        let (mut s20, mut s21, mut s22, mut s23) = (load(&a2[0]), load(&a2[1]), load(&a2[2]), load(&a2[3]));
        let (mut s30, mut s31, mut s32, mut s33) = (load(&a3[0]), load(&a3[1]), load(&a3[2]), load(&a3[3]));
        for ((((&x0, &x1), &x2), &x3), [w0, w1, w2, w3]) in r0.iter().zip(r1).zip(r2).zip(r3).zip(steps) {
            let (w0, w1, w2, w3) = (load(w0), load(w1), load(w2), load(w3));
            let x = v4.splat_f32x16(x0);
            s00 = v4.mul_add_f32x16(x, w0, s00);
            s01 = v4.mul_add_f32x16(x, w1, s01);
            s02 = v4.mul_add_f32x16(x, w2, s02);
            s03 = v4.mul_add_f32x16(x, w3, s03);
            let x = v4.splat_f32x16(x1);
            s10 = v4.mul_add_f32x16(x, w0, s10);
            s11 = v4.mul_add_f32x16(x, w1, s11);
            s12 = v4.mul_add_f32x16(x, w2, s12);
            s13 = v4.mul_add_f32x16(x, w3, s13);
            let x = v4.splat_f32x16(x2);
            s20 = v4.mul_add_f32x16(x, w0, s20);
            s21 = v4.mul_add_f32x16(x, w1, s21);
            s22 = v4.mul_add_f32x16(x, w2, s22);
            s23 = v4.mul_add_f32x16(x, w3, s23);
            let x = v4.splat_f32x16(x3);
            s30 = v4.mul_add_f32x16(x, w0, s30);
            s31 = v4.mul_add_f32x16(x, w1, s31);
            s32 = v4.mul_add_f32x16(x, w2, s32);
            s33 = v4.mul_add_f32x16(x, w3, s33);
        }
        let store = |s: [pulp::f32x16; 4]| -> [[f32; 16]; 4] { s.map(pulp::cast) };
        *acc = [store([s00, s01, s02, s03]), store([s10, s11, s12, s13]), store([s20, s21, s22, s23]), store([s30, s31, s32, s33])];
    }
}

#[cfg(target_arch = "x86_64")]
impl Arith for Zmm {
    type V = pulp::f32x16;
    const LANES: usize = 16;
    #[inline(always)]
    fn zero(self) -> pulp::f32x16 {
        self.0.splat_f32x16(0.0)
    }
    #[inline(always)]
    fn load(self, x: &[f32]) -> pulp::f32x16 {
        let (x, _) = x.as_chunks::<16>();
        pulp::cast(x[0])
    }
    #[inline(always)]
    fn store_to(self, v: pulp::f32x16, out: &mut [f32]) {
        let (out, _) = out.as_chunks_mut::<16>();
        out[0] = pulp::cast(v);
    }
    #[inline(always)]
    fn add(self, x: pulp::f32x16, y: pulp::f32x16) -> pulp::f32x16 {
        self.0.add_f32x16(x, y)
    }
    #[inline(always)]
    fn sub(self, x: pulp::f32x16, y: pulp::f32x16) -> pulp::f32x16 {
        self.0.sub_f32x16(x, y)
    }
    #[inline(always)]
    fn fma(self, acc: pulp::f32x16, a: f32, x: pulp::f32x16) -> pulp::f32x16 {
        self.0.mul_add_f32x16(self.0.splat_f32x16(a), x, acc)
    }
    #[inline(always)]
    fn mul(self, a: f32, x: pulp::f32x16) -> pulp::f32x16 {
        self.0.mul_f32x16(self.0.splat_f32x16(a), x)
    }
}

/// No sixteen-lane registers off x86-64: [`Lanes::zmm`] is always `None` there.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy)]
pub(crate) enum Zmm {}

#[cfg(not(target_arch = "x86_64"))]
impl Zmm {
    pub(crate) fn tile_sums4x64(self, _: &mut [[[f32; 16]; 4]; 4], _: [&[f32]; 4], _: [&[[f32; 16]]; 4]) {
        match self {}
    }

    pub(crate) fn tile_sums4x64_strided(self, _: &mut [[[f32; 16]; 4]; 4], _: [&[f32]; 4], _: &[f32], _: usize) {
        match self {}
    }

    pub(crate) fn lanes_pair8(self, _: &mut [[[f32; 16]; 8]; 2], _: [&[f32]; 8], _: [&[[f32; 16]]; 2]) {
        match self {}
    }

    pub(crate) fn lanes_one8(self, _: &mut [[f32; 16]; 8], _: [&[f32]; 8], _: &[[f32; 16]]) {
        match self {}
    }

    pub(crate) fn dots4x4(self, _: [&[f32]; 4], _: [&[f32]; 4]) -> [[f32; 4]; 4] {
        match self {}
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Arith for Zmm {
    type V = ();
    const LANES: usize = 16;
    fn zero(self) {
        match self {}
    }
    fn load(self, _: &[f32]) {
        match self {}
    }
    fn store_to(self, _: (), _: &mut [f32]) {
        match self {}
    }
    fn add(self, _: (), _: ()) {
        match self {}
    }
    fn sub(self, _: (), _: ()) {
        match self {}
    }
    fn fma(self, _: (), _: f32, _: ()) {
        match self {}
    }
    fn mul(self, _: f32, _: ()) {
        match self {}
    }
}

