//! Element-wise arithmetic written once for eight lanes and for sixteen: the Winograd
//! transforms ([`super::winograd`]) run on 16 channels at a time where the CPU has
//! sixteen-lane registers (AVX-512, [`Zmm`]), and on 8 through [`Lanes`] elsewhere. `Zmm`
//! also holds AVX-512's 4 x 64 register tile of the blocked fully connected product.
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

