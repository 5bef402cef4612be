//! Element-wise arithmetic written once for eight lanes and for sixteen: the Winograd
//! transforms ([`super::winograd`]) run on 16 channels at a time where the CPU has
//! sixteen-lane registers (AVX-512, [`Zmm`]), and on 8 through [`Lanes`] elsewhere.
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

