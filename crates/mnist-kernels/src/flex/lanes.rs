//! Eight f32 lanes, the unit the hand-tiled kernels compute in, with a fused
//! multiply-add that is one instruction where the CPU has one.
//!
//! The kernels are written once, generic over [`Lanes`], and run through [`dispatch`],
//! which compiles them (they are `#[inline(always)]`) for the best instruction set this CPU
//! has ([`crate::Simd`], chosen once, `MNIST_RS_SIMD` to cap it):
//! - **AVX2 + FMA** (pulp's `V3`): `[f32; 8]` in a YMM register, [`Lanes::fma`] one
//!   `vfmadd`;
//! - **portable**: plain arithmetic that the compiler vectorises as it can (any CPU,
//!   aarch64 among them).
//!
//! (Compiling these eight-lane kernels for AVX-512 as well, in pulp's `V4` context, was
//! measured on a Xeon with AVX-512 and gained nothing, 0 +- 4%: an AVX-512 path needs
//! kernels of its own, with sixteen-lane tiles.)
//!
//! No `unsafe`.

use crate::Simd;

/// Eight f32 lanes.
pub(crate) type F8 = [f32; 8];

/// Lane arithmetic for the kernels, on a vector type of eight lanes.
pub(crate) trait Lanes: Copy {
    /// Eight lanes, in a register where the CPU has one.
    type V: Copy;
    /// All lanes zero.
    fn zero(self) -> Self::V;
    /// Eight floats.
    fn load(self, x: &F8) -> Self::V;
    /// The lanes as floats.
    fn store(self, v: Self::V) -> F8;
    /// `acc + a * x`, lane by lane (fused where the CPU can).
    fn fma(self, acc: Self::V, a: f32, x: Self::V) -> Self::V;
    /// `acc + x * y`, lane by lane (fused where the CPU can).
    fn mul_add(self, acc: Self::V, x: Self::V, y: Self::V) -> Self::V;
    /// `x + y`, lane by lane.
    fn add(self, x: Self::V, y: Self::V) -> Self::V;
    /// `x - y`, lane by lane.
    fn sub(self, x: Self::V, y: Self::V) -> Self::V;
    /// `a * x`, lane by lane.
    fn mul(self, a: f32, x: Self::V) -> Self::V;
}

/// Plain arithmetic, any CPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Portable;

impl Lanes for Portable {
    type V = F8;
    #[inline(always)]
    fn zero(self) -> F8 {
        [0.0; 8]
    }
    #[inline(always)]
    fn load(self, x: &F8) -> F8 {
        *x
    }
    #[inline(always)]
    fn store(self, v: F8) -> F8 {
        v
    }
    #[inline(always)]
    fn fma(self, acc: F8, a: f32, x: F8) -> F8 {
        std::array::from_fn(|l| acc[l] + a * x[l])
    }
    #[inline(always)]
    fn mul_add(self, acc: F8, x: F8, y: F8) -> F8 {
        std::array::from_fn(|l| acc[l] + x[l] * y[l])
    }
    #[inline(always)]
    fn add(self, x: F8, y: F8) -> F8 {
        std::array::from_fn(|l| x[l] + y[l])
    }
    #[inline(always)]
    fn sub(self, x: F8, y: F8) -> F8 {
        std::array::from_fn(|l| x[l] - y[l])
    }
    #[inline(always)]
    fn mul(self, a: f32, x: F8) -> F8 {
        std::array::from_fn(|l| a * x[l])
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for pulp::x86::V3 {
    type V = pulp::f32x8;
    #[inline(always)]
    fn zero(self) -> pulp::f32x8 {
        self.splat_f32x8(0.0)
    }
    #[inline(always)]
    fn load(self, x: &F8) -> pulp::f32x8 {
        pulp::cast(*x)
    }
    #[inline(always)]
    fn store(self, v: pulp::f32x8) -> F8 {
        pulp::cast(v)
    }
    #[inline(always)]
    fn fma(self, acc: pulp::f32x8, a: f32, x: pulp::f32x8) -> pulp::f32x8 {
        self.mul_add_f32x8(self.splat_f32x8(a), x, acc)
    }
    #[inline(always)]
    fn mul_add(self, acc: pulp::f32x8, x: pulp::f32x8, y: pulp::f32x8) -> pulp::f32x8 {
        self.mul_add_f32x8(x, y, acc)
    }
    #[inline(always)]
    fn add(self, x: pulp::f32x8, y: pulp::f32x8) -> pulp::f32x8 {
        self.add_f32x8(x, y)
    }
    #[inline(always)]
    fn sub(self, x: pulp::f32x8, y: pulp::f32x8) -> pulp::f32x8 {
        self.sub_f32x8(x, y)
    }
    #[inline(always)]
    fn mul(self, a: f32, x: pulp::f32x8) -> pulp::f32x8 {
        self.mul_f32x8(self.splat_f32x8(a), x)
    }
}

/// Rows of the register tile [`tile_update`] sums: five (10 of AVX2's 16 registers; at 6
/// the compiler spilled sums to the stack inside the loop).
pub(crate) const TILE_ROWS: usize = 5;
/// Columns of that tile: two vectors.
pub(crate) const TILE_COLUMNS: usize = 16;

/// `acc[r] += sum over k of rows[r][k] * panel[k]` for [`TILE_ROWS`] rows and a panel of
/// [`TILE_COLUMNS`] columns, the sums in `TILE_ROWS x 2` registers: each step broadcasts one
/// value of each row and multiplies it by two vectors of the panel (10 fused multiply-adds
/// per 7 loads). The inner kernel of the direct forward (windows x packed weights), the
/// Winograd products (transformed tiles x transformed weights) and the fully connected
/// weight gradient (rows of `x^T` x panels of `g`).
#[inline(always)]
pub(crate) fn tile_update<L: Lanes>(
    lanes: L,
    acc: &mut [[L::V; 2]; TILE_ROWS],
    rows: [&[f32]; TILE_ROWS],
    panel: &[[f32; TILE_COLUMNS]],
) {
    let [r0, r1, r2, r3, r4] = rows;
    // Zipped, so that no index is bounds-checked in the loop.
    for (((((&a0, &a1), &a2), &a3), &a4), w) in r0.iter().zip(r1).zip(r2).zip(r3).zip(r4).zip(panel) {
        let (w, _) = w.as_chunks::<8>();
        let (w0, w1) = (lanes.load(&w[0]), lanes.load(&w[1]));
        for (i, a) in [a0, a1, a2, a3, a4].into_iter().enumerate() {
            acc[i][0] = lanes.fma(acc[i][0], a, w0);
            acc[i][1] = lanes.fma(acc[i][1], a, w1);
        }
    }
}

/// `N` runs of `len` floats of `src`, from `starts[r] + offset`: a tile's rows. A loop,
/// because `array::map` and `from_fn` around the indexing were not inlined into the kernels
/// (a call per tile and kernel row, an eighth of conv1's forward pass).
#[inline(always)]
pub(crate) fn runs<const N: usize>(src: &[f32], starts: [usize; N], offset: usize, len: usize) -> [&[f32]; N] {
    let mut out: [&[f32]; N] = [&[]; N];
    for (run, start) in out.iter_mut().zip(starts) {
        *run = &src[start + offset..][..len];
    }
    out
}

/// `[first * step, (first + 1) * step, ...]`, each row number capped at `last`: where a
/// tile's rows start, the last tile repeating the last row where it runs past it.
#[inline(always)]
pub(crate) fn starts<const N: usize>(first: usize, last: usize, step: usize) -> [usize; N] {
    let mut out = [0; N];
    for (r, start) in out.iter_mut().enumerate() {
        *start = (first + r).min(last) * step;
    }
    out
}

/// A kernel generic over its lane arithmetic.
pub(crate) trait WithLanes {
    /// What the kernel returns.
    type Output;
    /// Runs the kernel; must be `#[inline(always)]` (with everything it calls in its hot
    /// loops) so that it is compiled for the CPU features [`dispatch`] found.
    fn run<L: Lanes>(self, lanes: L) -> Self::Output;
}

/// The instruction sets this CPU can run the kernels with, best first ([`Simd::Portable`]
/// always last).
pub(crate) fn available() -> Vec<Simd> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    if pulp::x86::V3::try_new().is_some() {
        out.push(Simd::Avx2);
    }
    out.push(Simd::Portable);
    out
}

/// The instruction set [`dispatch`] runs the kernels with: the best [`available`] one, at
/// most what `MNIST_RS_SIMD` allows (an unreadable value is ignored here; the `mnist`
/// command refuses it before any work, with [`Simd::cap_from_env`]'s message). Chosen once.
pub(crate) fn chosen() -> Simd {
    static CHOSEN: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let cap = Simd::cap_from_env().ok().flatten().unwrap_or(Simd::Avx2);
        available().into_iter().find(|s| *s <= cap).unwrap_or(Simd::Portable)
    })
}

/// Runs `op` with the lane arithmetic [`chosen`] for this CPU.
pub(crate) fn dispatch<Op: WithLanes>(op: Op) -> Op::Output {
    dispatch_with(chosen(), op)
}

/// Runs `op` with `simd`'s lane arithmetic, or the portable one when this CPU lacks it.
pub(crate) fn dispatch_with<Op: WithLanes>(simd: Simd, op: Op) -> Op::Output {
    #[cfg(target_arch = "x86_64")]
    {
        struct In<Op, L>(Op, L);
        impl<Op: WithLanes, L: Lanes> pulp::WithSimd for In<Op, L> {
            type Output = Op::Output;
            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _: S) -> Op::Output {
                self.0.run(self.1)
            }
        }
        if simd >= Simd::Avx2
            && let Some(v3) = pulp::x86::V3::try_new()
        {
            return pulp::Simd::vectorize(v3, In(op, v3));
        }
    }
    let _ = simd;
    op.run(Portable)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fma(F8, f32, F8);
    impl WithLanes for Fma {
        type Output = F8;
        #[inline(always)]
        fn run<L: Lanes>(self, lanes: L) -> F8 {
            lanes.store(lanes.fma(lanes.load(&self.0), self.1, lanes.load(&self.2)))
        }
    }

    #[test]
    fn every_instruction_set_and_the_portable_fma_agree() {
        let acc = [1.0, -2.0, 3.5, 0.0, 8.0, -0.25, 1e6, 7.0];
        let x = [0.5, 4.0, -1.0, 2.0, 0.0, 3.0, 1.0, -7.0];
        let expect: F8 = std::array::from_fn(|l| acc[l] + 2.0 * x[l]);
        assert_eq!(dispatch(Fma(acc, 2.0, x)), expect);
        for simd in available() {
            assert_eq!(dispatch_with(simd, Fma(acc, 2.0, x)), expect, "{simd}");
        }
        assert_eq!(Fma(acc, 2.0, x).run(Portable), expect);
    }

    #[test]
    fn the_choice_is_the_best_available_under_the_cap() {
        let all = available();
        assert_eq!(all.last(), Some(&Simd::Portable));
        assert!(all.windows(2).all(|w| w[0] > w[1]), "{all:?}");
        assert!(all.contains(&chosen()));
    }
}
