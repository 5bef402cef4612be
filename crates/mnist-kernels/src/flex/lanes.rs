//! Eight f32 lanes, the unit the hand-tiled kernels compute in, with a fused
//! multiply-add that is one instruction where the CPU has one, and the register tiles of
//! the deep products ([`Lanes::tile_sums`]; [`Lanes::tile_sums8`] for the Winograd
//! products; AVX-512's [`super::wide::Zmm::tile_sums4x64`] for the blocked fully connected
//! product and the Winograd products of 64 channels).
//!
//! The kernels are written once, generic over [`Lanes`], and run through [`dispatch`],
//! which compiles them (they are `#[inline(always)]`) for the best instruction set this CPU
//! has ([`crate::Simd`], chosen once, `MNIST_RS_SIMD` to cap it):
//! - **AVX-512** (pulp's `V4`): the eight-lane operations as AVX2's, EVEX-encoded with 32
//!   registers, and the products' register tile twice as tall: 10 rows x 16 columns in
//!   ten ZMM registers (see [`Lanes::tile_sums`]);
//! - **AVX2 + FMA** (pulp's `V3`): `[f32; 8]` in a YMM register, [`Lanes::fma`] one
//!   `vfmadd`; tiles of 5 rows x 16 columns in ten registers;
//! - **NEON** (aarch64, pulp's `Neon`): eight lanes in two 128-bit registers, `fmla`;
//! - **portable**: plain arithmetic that the compiler vectorises as it can (any CPU).
//!
//! (Compiling the eight-lane kernels for AVX-512 alone, the tiles unchanged, was measured
//! on a Xeon with AVX-512 and gained nothing, 0 +- 4%: the gain is in the wider tiles.)
//!
//! No `unsafe`.

use super::layout::Layout;
use super::wide::Zmm;
use crate::Simd;

/// Eight f32 lanes.
pub(crate) type F8 = [f32; 8];

/// A sparse gradient's non-zero entries, as two slices of one length: where each entry's
/// operand starts (an offset into the array the kernel reads) and the entry's value. Two
/// slices rather than pairs, so that 16 entries are listed with two vector stores
/// ([`Lanes::list16`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct List<'a> {
    pub offsets: &'a [u32],
    pub values: &'a [f32],
}

impl List<'_> {
    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

/// [`Lanes::list16`] one window at a time, branch-free: every window writes its entry at
/// the list's end, and only a surviving one moves the end on. Also lists the last windows
/// of a row of windows shorter than 16 (`grads`, `winners` and `bases` of one length).
#[inline(always)]
pub(crate) fn list_scalar(grads: &[f32], winners: &[u8], bases: &[u32], corners: [u32; 4], offsets: &mut [u32], values: &mut [f32], mut len: usize) -> (usize, f32) {
    let mut sum = 0.0;
    for ((&gv, &winner), &base) in grads.iter().zip(winners).zip(bases) {
        sum += gv;
        offsets[len] = base + corners[usize::from(winner & 3)];
        values[len] = gv;
        // Not +0.0 or -0.0.
        len += usize::from(gv.to_bits() << 1 != 0);
    }
    (len, sum)
}

/// Rows of 64 floats that [`Lanes::sum_list64`] indexes: row `r` is
/// `values[r * stride + offset..][..64]`. A dense `[rows][64]` block ([`Rows64::dense`]), or
/// 64 columns of a wider row-major matrix read where they lie ([`Rows64::columns`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows64<'a> {
    values: &'a [f32],
    stride: usize,
    offset: usize,
}

impl<'a> Rows64<'a> {
    /// The rows of a dense block.
    pub(crate) fn dense(block: &'a [[f32; 64]]) -> Self {
        Rows64 { values: block.as_flattened(), stride: 64, offset: 0 }
    }

    /// Columns `first..first + 64` of the row-major matrix `values` whose rows are
    /// `stride` floats long (every row used must hold them all).
    pub(crate) fn columns(values: &'a [f32], stride: usize, first: usize) -> Self {
        Rows64 { values, stride, offset: first }
    }

    /// Row `r`. Panics if it runs past the values.
    #[inline(always)]
    pub(crate) fn row(self, r: u32) -> &'a [f32; 64] {
        match self.values.get(r as usize * self.stride + self.offset..).and_then(|rest| rest.first_chunk::<64>()) {
            Some(row) => row,
            None => past_the_table(r, self.values.len()),
        }
    }
}

/// [`Rows64::row`]'s panic, out of line and given its values by copy: formatted in place,
/// the row's index was stored to the stack for the message at every entry of the sparse
/// products' loop.
#[cold]
#[inline(never)]
fn past_the_table(r: u32, len: usize) -> ! {
    panic!("row {r} of 64 floats runs past the table's {len} values")
}

/// The sum of eight lanes, pairwise: `((0 + 4) + (1 + 5)) + ((2 + 6) + (3 + 7))`.
#[inline(always)]
pub(crate) fn sum8(v: F8) -> f32 {
    ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
}

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

    /// Rows of this instruction set's register tile in [`Lanes::tile_sums`]: 5, or 10 with
    /// AVX-512 (at most [`MAX_TILE_ROWS`]).
    const TILE: usize = TILE_ROWS;

    /// `acc[r] += sum over k of rows[r][k] * panel[k]` for the first [`Lanes::TILE`] rows
    /// (the rest of `rows` and `acc` are not touched), 16 columns: the products' inner
    /// kernel (Winograd, fully connected forward and weight gradient), its sums held in
    /// registers over the whole depth `panel.len()`. Every row must have at least
    /// `panel.len()` values.
    #[inline(always)]
    fn tile_sums(self, acc: &mut [[F8; 2]; MAX_TILE_ROWS], rows: [&[f32]; MAX_TILE_ROWS], panel: &[[f32; TILE_COLUMNS]]) {
        let mut sums = [[self.zero(); 2]; TILE_ROWS];
        for (s, a) in sums.iter_mut().zip(acc.iter()) {
            *s = [self.load(&a[0]), self.load(&a[1])];
        }
        let [r0, r1, r2, r3, r4, ..] = rows;
        tile_update(self, &mut sums, [r0, r1, r2, r3, r4], panel);
        for (a, s) in acc.iter_mut().zip(sums) {
            *a = [self.store(s[0]), self.store(s[1])];
        }
    }

    /// [`Lanes::tile_sums`] for exactly [`TILE8_ROWS`] rows, all of them, the Winograd
    /// products' tile (F(4x4, 5x5) has 16 tiles an image of the seed's conv2: two of these,
    /// where ten-row tiles would pad them to 20). With AVX-512, eight ZMM registers of
    /// sums; elsewhere two of the five-row tiles, the second holding three rows.
    #[inline(always)]
    fn tile_sums8(self, acc: &mut [[F8; 2]; TILE8_ROWS], rows: [&[f32]; TILE8_ROWS], panel: &[[f32; TILE_COLUMNS]]) {
        let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
        for (range, rows) in [(0..5, [r0, r1, r2, r3, r4]), (5..8, [r5, r6, r7, r7, r7])] {
            let mut sums = [[self.zero(); 2]; TILE_ROWS];
            for (s, a) in sums.iter_mut().zip(&acc[range.clone()]) {
                *s = [self.load(&a[0]), self.load(&a[1])];
            }
            tile_update(self, &mut sums, rows, panel);
            for (a, s) in acc[range].iter_mut().zip(sums) {
                *a = [self.store(s[0]), self.store(s[1])];
            }
        }
    }

    /// Sixteen-lane arithmetic, where the CPU has sixteen-lane registers (AVX-512): the
    /// Winograd transforms then work on 16 channels at a time instead of 8.
    #[inline(always)]
    fn zmm(self) -> Option<Zmm> {
        None
    }

    /// One image's panel of the fused block for one input channel and a 5x5 kernel (the
    /// seed's conv1) with pixels in the lanes, where the CPU has the instructions: see
    /// [`super::forward::one_channel_v4`] (AVX-512) and [`super::forward::one_channel_v3`]
    /// (AVX2). Returns `false`, touching nothing, where it does not, or for another
    /// geometry (then the caller runs the channel-tiled kernel).
    #[inline(always)]
    fn one_channel_in_lanes(self, lay: &Layout, xp: &[f32], weights: &[[f32; TILE_COLUMNS]], bias: &[f32], out: &mut [f32], winners: &mut [u8]) -> bool {
        let _ = (lay, xp, weights, bias, out, winners);
        false
    }

    /// `out[..16 N] += sum over (offset, g) in list of g * src[offset + base..][..16 N]` in
    /// `N` sixteen-lane registers, where the CPU has them (AVX-512): the sparse backward
    /// pass's tiles at half the instructions. Returns `false`, touching nothing, where it
    /// does not (then the caller sums eight lanes at a time).
    #[inline(always)]
    fn sum_run16<const N: usize>(self, src: &[f32], base: usize, list: List<'_>, out: &mut [f32]) -> bool {
        let _ = (src, base, list, out);
        false
    }

    /// Whether [`Lanes::list16`] packs its entries in registers (AVX2, AVX-512) rather than
    /// one by one: only then do the by-pixel lists of the conv backward pass go through it
    /// (four calls per 16 channels, one per corner, where the scalar loop visits each
    /// channel once).
    #[inline(always)]
    fn packs_lists(self) -> bool {
        false
    }

    /// Lists the entries of 16 pooling windows that pass a gradient: for each window `w`
    /// whose `grads[w]` is neither +0 nor -0, appends `(bases[w] + corners[winners[w] & 3],
    /// grads[w])` at `len` of `(offsets, values)`, in window order (`bases`, the windows'
    /// offsets, and `corners`, each corner's from its window's, given as one pair). Returns the new length
    /// and the sum of `grads` (the bias gradient's share). Writes up to 16 values from
    /// `len` (kept or not: the lists have that much room past their longest). Branch-free:
    /// whether an entry survives is data, not a pattern. Compress instructions on AVX-512,
    /// a permute from a table on AVX2.
    #[inline(always)]
    fn list16(self, grads: &[f32; 16], winners: &[u8; 16], (bases, corners): (&[u32; 16], [u32; 4]), offsets: &mut [u32], values: &mut [f32], len: usize) -> (usize, f32) {
        list_scalar(grads, winners, bases, corners, offsets, values, len)
    }

    /// One pooling window's group of 16 channels appended to its four corners' by-pixel
    /// lists: lane `l` (`grads[l]`, `bases[l]`) goes to the list of corner `codes[l]` (a
    /// float whose bits are the corner, 0 to 3, or anything else for none) when `grads[l]`
    /// is neither +0 nor -0 (NaN is kept), as `(bases[l], grads[l])` at that corner's end,
    /// in lane order. Corner `k`'s list is `offsets` and `values` from `starts[k]`, its
    /// length `ends[k]`, which moves on by the entries appended; each corner's list is
    /// written 16 values from its end (kept or not), within `starts[k] + width`.
    ///
    /// By default [`Lanes::list16`] once a corner, over the group's gradients of that
    /// corner (the others zeroed).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn corner_lists16(self, grads: &[f32; 16], codes: &[f32; 16], bases: &[u32; 16], (offsets, values): (&mut [u32], &mut [f32]), starts: [usize; 4], width: usize, ends: &mut [usize; 4]) {
        for (corner, (&start, end)) in starts.iter().zip(ends.iter_mut()).enumerate() {
            // Bit masks, not a comparison of floats, which compiled to a branch per lane.
            let code = (corner as f32).to_bits();
            let mut mine = [0.0f32; 16];
            for ((m, &c), &gv) in mine.iter_mut().zip(codes).zip(grads) {
                *m = f32::from_bits(gv.to_bits() & u32::from(c.to_bits() == code).wrapping_neg());
            }
            (*end, _) = self.list16(&mine, &[0; 16], (bases, [0; 4]), &mut offsets[start..][..width], &mut values[start..][..width], *end);
        }
    }

    /// `to[r * to_stride + c] = from[c * from_stride + r]` for `r, c < 16`: a 16 x 16
    /// block transposed (in registers where the CPU has them: AVX-512). Panics if a row
    /// runs past its slice.
    #[inline(always)]
    fn transpose16(self, from: &[f32], from_stride: usize, to: &mut [f32], to_stride: usize) {
        for r in 0..16 {
            let row = &mut to[r * to_stride..][..16];
            for (c, v) in row.iter_mut().enumerate() {
                *v = from[c * from_stride + r];
            }
        }
    }

    /// `sum over (index, g) in list of g * table.row(index)`, 64 lanes: a sparse matrix's
    /// row (the list of its non-zero entries) times 64 columns of a dense matrix
    /// ([`Rows64`]), the inner kernel of the fully connected layer's sparse backward pass.
    /// Each entry is one broadcast and eight eight-lane multiply-adds into eight
    /// independent sums, enough to hide the multiply-add's latency, and its index is read
    /// once for all of them (rows of 16 read it once for every two). Panics if an index is
    /// out of `table`.
    #[inline(always)]
    fn sum_list64(self, table: Rows64<'_>, list: &[(u32, f32)]) -> [f32; 64] {
        let mut acc = [self.zero(); 8];
        for &(index, g) in list {
            let (row, _) = table.row(index).as_chunks::<8>();
            for (a, x) in acc.iter_mut().zip(row) {
                *a = self.fma(*a, g, self.load(x));
            }
        }
        let mut out = [0.0f32; 64];
        let (chunks, _) = out.as_chunks_mut::<8>();
        for (o, a) in chunks.iter_mut().zip(acc) {
            *o = self.store(a);
        }
        out
    }
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

/// For each 8-bit mask, the positions of its set bits in order, then zeros: the lanes a
/// permute packs to the front, AVX2 having no compress instruction (8 KB).
#[cfg(target_arch = "x86_64")]
const COMPRESS8: [[u32; 8]; 256] = {
    let mut table = [[0u32; 8]; 256];
    let mut mask = 0;
    while mask < 256 {
        let (mut lane, mut at) = (0, 0);
        while lane < 8 {
            if mask & (1 << lane) != 0 {
                table[mask][at] = lane as u32;
                at += 1;
            }
            lane += 1;
        }
        mask += 1;
    }
    table
};

#[cfg(target_arch = "x86_64")]
impl Lanes for pulp::x86::V3 {
    type V = pulp::f32x8;
    #[inline(always)]
    fn one_channel_in_lanes(self, lay: &Layout, xp: &[f32], weights: &[[f32; TILE_COLUMNS]], bias: &[f32], out: &mut [f32], winners: &mut [u8]) -> bool {
        super::forward::one_channel_v3(self, lay, xp, weights, bias, out, winners)
    }
    #[inline(always)]
    fn packs_lists(self) -> bool {
        true
    }
    /// Eight windows at a time: the comparison's eight bits index [`COMPRESS8`], and one
    /// permute each packs the kept offsets and gradients to the front, stored whole.
    #[inline(always)]
    fn list16(self, grads: &[f32; 16], winners: &[u8; 16], (bases, corners): (&[u32; 16], [u32; 4]), offsets: &mut [u32], values: &mut [f32], mut len: usize) -> (usize, f32) {
        use core::arch::x86_64::{__m256, __m256i};
        let (a, a2) = (self.avx, self.avx2);
        let zero: __m256 = pulp::cast([0.0f32; 8]);
        let table: __m256i = pulp::cast([corners[0], corners[1], corners[2], corners[3], 0, 0, 0, 0]);
        let (grads, _) = grads.as_chunks::<8>();
        let (bases, _) = bases.as_chunks::<8>();
        let (winners, _) = winners.as_chunks::<8>();
        let mut sums = zero;
        for half in 0..2 {
            let g: __m256 = pulp::cast(grads[half]);
            // Not equal to zero, or unordered (NaN passes, as in the scalar lists).
            let keep = a._mm256_movemask_ps(a._mm256_cmp_ps::<4>(g, zero)) as u32 as usize & 0xff;
            let corner = self.sse2._mm_set_epi64x(0, i64::from_le_bytes(winners[half]));
            let corner = a2._mm256_and_si256(a2._mm256_cvtepu8_epi32(corner), a._mm256_set1_epi32(3));
            let at = a2._mm256_add_epi32(pulp::cast(bases[half]), a2._mm256_permutevar8x32_epi32(table, corner));
            let lanes: __m256i = pulp::cast(COMPRESS8[keep]);
            let (o, _) = offsets[len..][..8].as_chunks_mut::<8>();
            o[0] = pulp::cast(a2._mm256_permutevar8x32_epi32(at, lanes));
            let (v, _) = values[len..][..8].as_chunks_mut::<8>();
            v[0] = pulp::cast(a2._mm256_permutevar8x32_ps(g, lanes));
            len += keep.count_ones() as usize;
            sums = a._mm256_add_ps(sums, g);
        }
        (len, sum8(pulp::cast(sums)))
    }
    /// As four 8 x 8 squares, each in eight registers and three rounds of shuffles.
    #[inline(always)]
    fn transpose16(self, from: &[f32], from_stride: usize, to: &mut [f32], to_stride: usize) {
        for (r0, c0) in [(0, 0), (0, 8), (8, 0), (8, 8)] {
            transpose8(self, &from[r0 * from_stride + c0..], from_stride, &mut to[c0 * to_stride + r0..], to_stride);
        }
    }
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

/// `to[r * to_stride + c] = from[c * from_stride + r]` for `r, c < 8` with AVX2: pairs of
/// floats, pairs of pairs, then 128-bit halves.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose8(v3: pulp::x86::V3, from: &[f32], from_stride: usize, to: &mut [f32], to_stride: usize) {
    use core::arch::x86_64::__m256;
    let a = v3.avx;
    // Plain loops, not `array::from_fn`: its closures are compiled without the instruction
    // set, and where a large kernel's inlining budget ran out (the Winograd output
    // transform's), each shuffle became a call.
    let zero: __m256 = pulp::cast([0.0f32; 8]);
    let mut r = [zero; 8];
    for (i, r) in r.iter_mut().enumerate() {
        let (row, _) = from[i * from_stride..][..8].as_chunks::<8>();
        *r = pulp::cast(row[0]);
    }
    let mut t = [zero; 8];
    for (i, t) in t.iter_mut().enumerate() {
        let (x, y) = (r[i & !1], r[i | 1]);
        *t = if i % 2 == 0 { a._mm256_unpacklo_ps(x, y) } else { a._mm256_unpackhi_ps(x, y) };
    }
    let mut u = [zero; 8];
    for (i, u) in u.iter_mut().enumerate() {
        let base = i & !3;
        let (x, y) = if i % 4 < 2 { (t[base], t[base + 2]) } else { (t[base + 1], t[base + 3]) };
        *u = if i % 2 == 0 { a._mm256_shuffle_ps::<0x44>(x, y) } else { a._mm256_shuffle_ps::<0xEE>(x, y) };
    }
    for i in 0..8 {
        let o = if i < 4 { a._mm256_permute2f128_ps::<0x20>(u[i], u[i + 4]) } else { a._mm256_permute2f128_ps::<0x31>(u[i - 4], u[i]) };
        let (row, _) = to[i * to_stride..][..8].as_chunks_mut::<8>();
        row[0] = pulp::cast(o);
    }
}

/// The most rows of any instruction set's tile in [`Lanes::tile_sums`] (AVX-512's).
pub(crate) const MAX_TILE_ROWS: usize = 10;

/// AVX-512: the eight-lane operations are AVX2's (pulp's `V4` derefs to `V3`), compiled
/// with AVX-512's features, so with EVEX encodings and 32 registers; the tile is 10 rows
/// x 16 columns, one ZMM register a row: each step loads the panel's 16 columns once and
/// broadcasts one value of each row (10 fused multiply-adds of 16 lanes per 11 loads,
/// against AVX2's 10 of 8 lanes per 7).
#[cfg(target_arch = "x86_64")]
impl Lanes for pulp::x86::V4 {
    type V = pulp::f32x8;
    const TILE: usize = MAX_TILE_ROWS;
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
    #[inline(always)]
    fn tile_sums(self, acc: &mut [[F8; 2]; MAX_TILE_ROWS], rows: [&[f32]; MAX_TILE_ROWS], panel: &[[f32; TILE_COLUMNS]]) {
        // Ten named sums and rows, not arrays: with arrays (indexed or zipped) the compiler
        // kept the sums on the stack, a load and a store around every multiply-add (conv2's
        // forward ran at half AVX2's speed).
        let [r0, r1, r2, r3, r4, r5, r6, r7, r8, r9] = rows;
        let load = |a: &[F8; 2]| -> pulp::f32x16 { pulp::cast(*a) };
        let (mut s0, mut s1, mut s2, mut s3, mut s4) = (load(&acc[0]), load(&acc[1]), load(&acc[2]), load(&acc[3]), load(&acc[4]));
        let (mut s5, mut s6, mut s7, mut s8, mut s9) = (load(&acc[5]), load(&acc[6]), load(&acc[7]), load(&acc[8]), load(&acc[9]));
        // Zipped, so that no index is bounds-checked in the loop.
        let rows = r0.iter().zip(r1).zip(r2).zip(r3).zip(r4).zip(r5).zip(r6).zip(r7).zip(r8).zip(r9);
        for ((((((((((&a0, &a1), &a2), &a3), &a4), &a5), &a6), &a7), &a8), &a9), w) in rows.zip(panel) {
            let w: pulp::f32x16 = pulp::cast(*w);
            s0 = self.mul_add_f32x16(self.splat_f32x16(a0), w, s0);
            s1 = self.mul_add_f32x16(self.splat_f32x16(a1), w, s1);
            s2 = self.mul_add_f32x16(self.splat_f32x16(a2), w, s2);
            s3 = self.mul_add_f32x16(self.splat_f32x16(a3), w, s3);
            s4 = self.mul_add_f32x16(self.splat_f32x16(a4), w, s4);
            s5 = self.mul_add_f32x16(self.splat_f32x16(a5), w, s5);
            s6 = self.mul_add_f32x16(self.splat_f32x16(a6), w, s6);
            s7 = self.mul_add_f32x16(self.splat_f32x16(a7), w, s7);
            s8 = self.mul_add_f32x16(self.splat_f32x16(a8), w, s8);
            s9 = self.mul_add_f32x16(self.splat_f32x16(a9), w, s9);
        }
        for (a, s) in acc.iter_mut().zip([s0, s1, s2, s3, s4, s5, s6, s7, s8, s9]) {
            *a = pulp::cast(s);
        }
    }
    #[inline(always)]
    fn zmm(self) -> Option<Zmm> {
        Some(Zmm::new(self))
    }
    #[inline(always)]
    fn one_channel_in_lanes(self, lay: &Layout, xp: &[f32], weights: &[[f32; TILE_COLUMNS]], bias: &[f32], out: &mut [f32], winners: &mut [u8]) -> bool {
        super::forward::one_channel_v4(self, lay, xp, weights, bias, out, winners)
    }
    #[inline(always)]
    fn tile_sums8(self, acc: &mut [[F8; 2]; TILE8_ROWS], rows: [&[f32]; TILE8_ROWS], panel: &[[f32; TILE_COLUMNS]]) {
        // Named sums, as in `tile_sums`.
        let [r0, r1, r2, r3, r4, r5, r6, r7] = rows;
        let load = |a: &[F8; 2]| -> pulp::f32x16 { pulp::cast(*a) };
        let (mut s0, mut s1, mut s2, mut s3) = (load(&acc[0]), load(&acc[1]), load(&acc[2]), load(&acc[3]));
        let (mut s4, mut s5, mut s6, mut s7) = (load(&acc[4]), load(&acc[5]), load(&acc[6]), load(&acc[7]));
        let rows = r0.iter().zip(r1).zip(r2).zip(r3).zip(r4).zip(r5).zip(r6).zip(r7);
        for ((((((((&a0, &a1), &a2), &a3), &a4), &a5), &a6), &a7), w) in rows.zip(panel) {
            let w: pulp::f32x16 = pulp::cast(*w);
            s0 = self.mul_add_f32x16(self.splat_f32x16(a0), w, s0);
            s1 = self.mul_add_f32x16(self.splat_f32x16(a1), w, s1);
            s2 = self.mul_add_f32x16(self.splat_f32x16(a2), w, s2);
            s3 = self.mul_add_f32x16(self.splat_f32x16(a3), w, s3);
            s4 = self.mul_add_f32x16(self.splat_f32x16(a4), w, s4);
            s5 = self.mul_add_f32x16(self.splat_f32x16(a5), w, s5);
            s6 = self.mul_add_f32x16(self.splat_f32x16(a6), w, s6);
            s7 = self.mul_add_f32x16(self.splat_f32x16(a7), w, s7);
        }
        for (a, s) in acc.iter_mut().zip([s0, s1, s2, s3, s4, s5, s6, s7]) {
            *a = pulp::cast(s);
        }
    }
    #[inline(always)]
    fn sum_run16<const N: usize>(self, src: &[f32], base: usize, list: List<'_>, out: &mut [f32]) -> bool {
        let mut acc = [self.splat_f32x16(0.0); N];
        for (&offset, &gv) in list.offsets.iter().zip(list.values) {
            let (x, _) = src[offset as usize + base..][..N * 16].as_chunks::<16>();
            let gv = self.splat_f32x16(gv);
            for t in 0..N {
                acc[t] = self.mul_add_f32x16(gv, pulp::cast(x[t]), acc[t]);
            }
        }
        let (out, _) = out[..N * 16].as_chunks_mut::<16>();
        for (o, a) in out.iter_mut().zip(acc) {
            let a: [f32; 16] = pulp::cast(a);
            for l in 0..16 {
                o[l] += a[l];
            }
        }
        true
    }
    #[inline(always)]
    fn packs_lists(self) -> bool {
        true
    }
    /// The kept windows' lanes packed to the front by `vcompressps` (into a register, then
    /// stored whole: the compressing store to memory is microcoded on Intel's cores).
    #[inline(always)]
    fn list16(self, grads: &[f32; 16], winners: &[u8; 16], (bases, corners): (&[u32; 16], [u32; 4]), offsets: &mut [u32], values: &mut [f32], len: usize) -> (usize, f32) {
        use core::arch::x86_64::{__m128i, __m512, __m512i};
        let f = self.avx512f;
        let g: __m512 = pulp::cast(*grads);
        // Not equal to zero, or unordered (NaN passes, as in the scalar lists).
        let keep = f._mm512_cmp_ps_mask::<4>(g, pulp::cast([0.0f32; 16]));
        let winners: __m128i = pulp::cast(*winners);
        let corner = f._mm512_and_si512(f._mm512_cvtepu8_epi32(winners), f._mm512_set1_epi32(3));
        let table: __m512i = pulp::cast([corners[0], corners[1], corners[2], corners[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let at = f._mm512_add_epi32(pulp::cast(*bases), f._mm512_permutexvar_epi32(corner, table));
        let (o, _) = offsets[len..][..16].as_chunks_mut::<16>();
        o[0] = pulp::cast(f._mm512_maskz_compress_epi32(keep, at));
        let (v, _) = values[len..][..16].as_chunks_mut::<16>();
        v[0] = pulp::cast(f._mm512_maskz_compress_ps(keep, g));
        (len + keep.count_ones() as usize, f._mm512_reduce_add_ps(g))
    }
    /// The kept lanes of each corner, one mask comparison a corner, packed to the front by
    /// `vcompressps` and stored whole (as [`Lanes::list16`]): the default's per-corner
    /// zeroing, and `list16`'s widening of winners and lookup of corner offsets (zero here),
    /// took twice the instructions. The by-pixel lists of an image of the seed's conv2 took
    /// about 5.2 us that way, 4.4 this way (one core of a Zen 4, AVX-512).
    #[inline(always)]
    fn corner_lists16(self, grads: &[f32; 16], codes: &[f32; 16], bases: &[u32; 16], (offsets, values): (&mut [u32], &mut [f32]), starts: [usize; 4], width: usize, ends: &mut [usize; 4]) {
        use core::arch::x86_64::{__m512, __m512i};
        let f = self.avx512f;
        let g: __m512 = pulp::cast(*grads);
        let codes: __m512i = pulp::cast(*codes);
        let bases: __m512i = pulp::cast(*bases);
        // Not equal to zero, or unordered (NaN passes, as in `list16`).
        let nonzero = f._mm512_cmp_ps_mask::<4>(g, pulp::cast([0.0f32; 16]));
        for (corner, (&start, end)) in starts.iter().zip(ends.iter_mut()).enumerate() {
            let mine = nonzero & f._mm512_cmpeq_epi32_mask(codes, f._mm512_set1_epi32((corner as f32).to_bits() as i32));
            let (o, _) = offsets[start..][..width][*end..][..16].as_chunks_mut::<16>();
            o[0] = pulp::cast(f._mm512_maskz_compress_epi32(mine, bases));
            let (v, _) = values[start..][..width][*end..][..16].as_chunks_mut::<16>();
            v[0] = pulp::cast(f._mm512_maskz_compress_ps(mine, g));
            *end += mine.count_ones() as usize;
        }
    }
    /// Sixteen rows in sixteen registers, transposed in four rounds of shuffles (pairs of
    /// floats, of doubles, then of 128-bit lanes twice): 64 shuffles for 256 values.
    #[inline(always)]
    fn transpose16(self, from: &[f32], from_stride: usize, to: &mut [f32], to_stride: usize) {
        use core::arch::x86_64::__m512;
        let f = self.avx512f;
        // Plain loops, as in `transpose8`.
        let zero: __m512 = pulp::cast([0.0f32; 16]);
        let mut r = [zero; 16];
        for (i, r) in r.iter_mut().enumerate() {
            let (row, _) = from[i * from_stride..][..16].as_chunks::<16>();
            *r = pulp::cast(row[0]);
        }
        let mut t = [zero; 16];
        for (i, t) in t.iter_mut().enumerate() {
            let (a, b) = (r[i & !1], r[i | 1]);
            *t = if i % 2 == 0 { f._mm512_unpacklo_ps(a, b) } else { f._mm512_unpackhi_ps(a, b) };
        }
        let mut u = [zero; 16];
        for (i, u) in u.iter_mut().enumerate() {
            let base = i & !3;
            let (a, b) = if i % 4 < 2 { (t[base], t[base + 2]) } else { (t[base + 1], t[base + 3]) };
            let (a, b) = (f._mm512_castps_pd(a), f._mm512_castps_pd(b));
            *u = f._mm512_castpd_ps(if i % 2 == 0 { f._mm512_unpacklo_pd(a, b) } else { f._mm512_unpackhi_pd(a, b) });
        }
        let mut v = [zero; 16];
        for (i, v) in v.iter_mut().enumerate() {
            *v = if i % 8 < 4 { f._mm512_shuffle_f32x4::<0x88>(u[i], u[i + 4]) } else { f._mm512_shuffle_f32x4::<0xdd>(u[i - 4], u[i]) };
        }
        for i in 0..16 {
            let w = if i < 8 { f._mm512_shuffle_f32x4::<0x88>(v[i], v[i + 8]) } else { f._mm512_shuffle_f32x4::<0xdd>(v[i - 8], v[i]) };
            let (row, _) = to[i * to_stride..][..16].as_chunks_mut::<16>();
            row[0] = pulp::cast(w);
        }
    }
    /// Four sixteen-lane sums an entry, in two chains (even and odd entries) so that eight
    /// multiply-adds are in flight, added at the end.
    #[inline(always)]
    fn sum_list64(self, table: Rows64<'_>, list: &[(u32, f32)]) -> [f32; 64] {
        let zero = self.splat_f32x16(0.0);
        let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
        let (mut b0, mut b1, mut b2, mut b3) = (zero, zero, zero, zero);
        let row = |index: u32| -> [pulp::f32x16; 4] { pulp::cast(*table.row(index)) };
        let (pairs, rest) = list.as_chunks::<2>();
        for &[(i0, g0), (i1, g1)] in pairs {
            let ([x0, x1, x2, x3], g) = (row(i0), self.splat_f32x16(g0));
            a0 = self.mul_add_f32x16(g, x0, a0);
            a1 = self.mul_add_f32x16(g, x1, a1);
            a2 = self.mul_add_f32x16(g, x2, a2);
            a3 = self.mul_add_f32x16(g, x3, a3);
            let ([x0, x1, x2, x3], g) = (row(i1), self.splat_f32x16(g1));
            b0 = self.mul_add_f32x16(g, x0, b0);
            b1 = self.mul_add_f32x16(g, x1, b1);
            b2 = self.mul_add_f32x16(g, x2, b2);
            b3 = self.mul_add_f32x16(g, x3, b3);
        }
        for &(index, g) in rest {
            let ([x0, x1, x2, x3], g) = (row(index), self.splat_f32x16(g));
            a0 = self.mul_add_f32x16(g, x0, a0);
            a1 = self.mul_add_f32x16(g, x1, a1);
            a2 = self.mul_add_f32x16(g, x2, a2);
            a3 = self.mul_add_f32x16(g, x3, a3);
        }
        let sums = [self.add_f32x16(a0, b0), self.add_f32x16(a1, b1), self.add_f32x16(a2, b2), self.add_f32x16(a3, b3)];
        pulp::cast(sums)
    }
}

/// NEON: eight lanes as two 128-bit registers (aarch64 has 32), `fmla` for the fused
/// multiply-adds; the tile as AVX2's (5 x 16: 20 registers of sums).
#[cfg(target_arch = "aarch64")]
impl Lanes for pulp::aarch64::Neon {
    type V = [pulp::f32x4; 2];
    #[inline(always)]
    fn zero(self) -> Self::V {
        [self.splat_f32x4(0.0); 2]
    }
    #[inline(always)]
    fn load(self, x: &F8) -> Self::V {
        pulp::cast(*x)
    }
    #[inline(always)]
    fn store(self, v: Self::V) -> F8 {
        pulp::cast(v)
    }
    #[inline(always)]
    fn fma(self, acc: Self::V, a: f32, x: Self::V) -> Self::V {
        let a = self.splat_f32x4(a);
        [self.mul_add_f32x4(a, x[0], acc[0]), self.mul_add_f32x4(a, x[1], acc[1])]
    }
    #[inline(always)]
    fn mul_add(self, acc: Self::V, x: Self::V, y: Self::V) -> Self::V {
        [self.mul_add_f32x4(x[0], y[0], acc[0]), self.mul_add_f32x4(x[1], y[1], acc[1])]
    }
    #[inline(always)]
    fn add(self, x: Self::V, y: Self::V) -> Self::V {
        [self.add_f32x4(x[0], y[0]), self.add_f32x4(x[1], y[1])]
    }
    #[inline(always)]
    fn sub(self, x: Self::V, y: Self::V) -> Self::V {
        [self.sub_f32x4(x[0], y[0]), self.sub_f32x4(x[1], y[1])]
    }
    #[inline(always)]
    fn mul(self, a: f32, x: Self::V) -> Self::V {
        let a = self.splat_f32x4(a);
        [self.mul_f32x4(a, x[0]), self.mul_f32x4(a, x[1])]
    }
}

/// Rows of the register tile [`tile_update`] sums: five (10 of AVX2's 16 registers; at 6
/// the compiler spilled sums to the stack inside the loop).
pub(crate) const TILE_ROWS: usize = 5;
/// Rows of [`Lanes::tile_sums8`]'s tile.
pub(crate) const TILE8_ROWS: usize = 8;
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
    {
        if pulp::x86::V4::try_new().is_some() {
            out.push(Simd::Avx512);
        }
        if pulp::x86::V3::try_new().is_some() {
            out.push(Simd::Avx2);
        }
    }
    #[cfg(target_arch = "aarch64")]
    if pulp::aarch64::Neon::try_new().is_some() {
        out.push(Simd::Neon);
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
        let cap = Simd::cap_from_env().ok().flatten().unwrap_or(Simd::Avx512);
        available().into_iter().find(|s| *s <= cap).unwrap_or(Simd::Portable)
    })
}

/// Runs `op` with the lane arithmetic [`chosen`] for this CPU.
pub(crate) fn dispatch<Op: WithLanes>(op: Op) -> Op::Output {
    dispatch_with(chosen(), op)
}

/// Runs `op` with `simd`'s lane arithmetic, or the best this CPU has below it (at worst
/// the portable one).
pub(crate) fn dispatch_with<Op: WithLanes>(simd: Simd, op: Op) -> Op::Output {
    /// `op` inside pulp's context for the instruction set of `L`, where its
    /// `#[inline(always)]` code is compiled with that set's features.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    struct In<Op, L>(Op, L);
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    impl<Op: WithLanes, L: Lanes> pulp::WithSimd for In<Op, L> {
        type Output = Op::Output;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Op::Output {
            self.0.run(self.1)
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if simd >= Simd::Avx512
            && let Some(v4) = pulp::x86::V4::try_new()
        {
            return pulp::Simd::vectorize(v4, In(op, v4));
        }
        if simd >= Simd::Avx2
            && let Some(v3) = pulp::x86::V3::try_new()
        {
            return pulp::Simd::vectorize(v3, In(op, v3));
        }
    }
    #[cfg(target_arch = "aarch64")]
    if simd >= Simd::Neon
        && let Some(neon) = pulp::aarch64::Neon::try_new()
    {
        return pulp::Simd::vectorize(neon, In(op, neon));
    }
    let _ = simd;
    op.run(Portable)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table's rows are where they lie, and one past them panics with the row named.
    #[test]
    fn rows64_reads_its_rows_and_names_one_past_them() {
        let values: Vec<f32> = (0..3 * 80).map(|v| v as f32).collect();
        let table = Rows64::columns(&values, 80, 16);
        assert_eq!(table.row(2)[0], (2 * 80 + 16) as f32);
        assert_eq!(table.row(2)[63], (2 * 80 + 16 + 63) as f32);
        let past = std::panic::catch_unwind(|| table.row(3)[0]).expect_err("row 3 is past the table");
        assert_eq!(past.downcast_ref::<String>().map(String::as_str), Some("row 3 of 64 floats runs past the table's 240 values"));
        assert!(std::panic::catch_unwind(|| Rows64::columns(&values, 80, 17).row(2)[0]).is_err(), "a row that runs past the end");
    }

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

    struct List16<'a>(&'a [f32; 16], &'a [u8; 16], &'a [u32; 16], [u32; 4], usize);
    impl WithLanes for List16<'_> {
        type Output = (Vec<u32>, Vec<f32>, usize, f32);
        #[inline(always)]
        fn run<L: Lanes>(self, lanes: L) -> Self::Output {
            // What an earlier call left: entries before `len` are kept, the rest overwritten.
            let (mut offsets, mut values) = (vec![7u32; self.4 + 16], vec![-7.0f32; self.4 + 16]);
            let (len, sum) = lanes.list16(self.0, self.1, (self.2, self.3), &mut offsets, &mut values, self.4);
            (offsets, values, len, sum)
        }
    }

    /// Every instruction set lists the same entries of 16 windows as the scalar lists, in
    /// window order, after those already listed: +0 and -0 left out, NaN and the smallest
    /// subnormal kept, each winner's corner added to its window's offset, and the same sum.
    #[test]
    fn every_instruction_set_lists_the_same_windows() {
        let grads: [[f32; 16]; 3] = [
            [0.5, 0.0, -0.0, 1.5, -2.0, f32::NAN, 0.0, f32::from_bits(1), 3.0, 0.0, 0.0, -1.0, 0.25, 0.0, 8.0, -0.0],
            [0.0; 16],
            std::array::from_fn(|w| w as f32 - 7.5),
        ];
        let winners: [u8; 16] = std::array::from_fn(|w| (w * 5 % 4) as u8);
        let bases: [u32; 16] = std::array::from_fn(|w| 1000 * w as u32 + 3);
        let corners = [0, 1, 40, 41];
        for grads in &grads {
            for len in [0, 5] {
                let (mut so, mut sv) = (vec![7u32; len + 16], vec![-7.0f32; len + 16]);
                let (want_len, want_sum) = list_scalar(grads, &winners, &bases, corners, &mut so, &mut sv, len);
                let kept: Vec<usize> = (0..16).filter(|&w| grads[w] != 0.0 || grads[w].is_nan()).collect();
                assert_eq!(want_len, len + kept.len());
                for (e, &w) in kept.iter().enumerate() {
                    assert_eq!(so[len + e], bases[w] + corners[usize::from(winners[w] & 3)]);
                    assert_eq!(sv[len + e].to_bits(), grads[w].to_bits());
                }
                assert!(so[..len].iter().all(|&x| x == 7));
                for simd in available() {
                    let (o, v, n, sum) = dispatch_with(simd, List16(grads, &winners, &bases, corners, len));
                    assert_eq!(n, want_len, "{simd}");
                    assert!(o[..len].iter().all(|&x| x == 7) && v[..len].iter().all(|&x| x == -7.0), "{simd}");
                    assert_eq!(o[len..n], so[len..n], "{simd}");
                    assert_eq!(v[len..n].iter().map(|x| x.to_bits()).collect::<Vec<_>>(), sv[len..n].iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "{simd}");
                    assert!((sum.is_nan() && want_sum.is_nan()) || (sum - want_sum).abs() <= 1e-5 * (1.0 + want_sum.abs()), "{simd}: {sum} vs {want_sum}");
                }
            }
        }
    }

    /// Inputs of the register tiles' tests: `N` rows of `depth` values (every third row one
    /// value longer: rows may run past the depth), from `values`, which [`tile_values`] makes.
    fn tile_rows<const N: usize>(values: &[f32], depth: usize) -> [&[f32]; N] {
        std::array::from_fn(|r| &values[r * depth..][..depth + usize::from(r % 3 == 0)])
    }

    /// Values in [-3.2, 3.2) for `n` rows of `depth`, and some to spare.
    fn tile_values(n: usize, depth: usize) -> Vec<f32> {
        (0..n * depth + 3).map(|i| ((i * 7919 % 613) as f32 - 306.0) / 97.0).collect()
    }

    /// A panel of `depth` rows of 16 columns in [-1, 1), different for each `seed`.
    fn tile_panel(depth: usize, seed: usize) -> Vec<[f32; TILE_COLUMNS]> {
        (0..depth).map(|k| std::array::from_fn(|c| ((k * 31 + c * 17 + seed * 5) % 23) as f32 / 11.0 - 1.0)).collect()
    }

    struct Tile<'a>([[F8; 2]; MAX_TILE_ROWS], [&'a [f32]; MAX_TILE_ROWS], &'a [[f32; TILE_COLUMNS]]);
    impl WithLanes for Tile<'_> {
        type Output = (usize, [[F8; 2]; MAX_TILE_ROWS]);
        #[inline(always)]
        fn run<L: Lanes>(mut self, lanes: L) -> Self::Output {
            lanes.tile_sums(&mut self.0, self.1, self.2);
            (L::TILE, self.0)
        }
    }

    /// Every instruction set's register tile adds the same sums to its first `TILE` rows
    /// (within rounding: the order of the additions is the same, fused or not) and leaves
    /// the others alone, at depths that are not multiples of anything.
    #[test]
    fn every_instruction_set_computes_the_same_tile() {
        for depth in [0, 1, 7, 37, 64] {
            let values = tile_values(MAX_TILE_ROWS, depth);
            let rows = tile_rows::<MAX_TILE_ROWS>(&values, depth);
            let panel = tile_panel(depth, 0);
            let start: [[F8; 2]; MAX_TILE_ROWS] = std::array::from_fn(|r| [[r as f32; 8], [-(r as f32); 8]]);
            let expect = |r: usize, c: usize| start[r][c / 8][c % 8] + (0..depth).map(|k| rows[r][k] * panel[k][c]).sum::<f32>();
            for simd in available() {
                let (tile, got) = dispatch_with(simd, Tile(start, rows, &panel));
                assert!(tile == TILE_ROWS || (simd == Simd::Avx512 && tile == MAX_TILE_ROWS), "{simd}: {tile}");
                for r in 0..MAX_TILE_ROWS {
                    for c in 0..TILE_COLUMNS {
                        let want = if r < tile { expect(r, c) } else { start[r][c / 8][c % 8] };
                        let have = got[r][c / 8][c % 8];
                        assert!((have - want).abs() <= 1e-4 * (1.0 + want.abs()), "{simd}, depth {depth}, [{r}][{c}]: {have} vs {want}");
                    }
                }
            }
        }
    }

    struct Tile8<'a>([[F8; 2]; TILE8_ROWS], [&'a [f32]; TILE8_ROWS], &'a [[f32; TILE_COLUMNS]]);
    impl WithLanes for Tile8<'_> {
        type Output = [[F8; 2]; TILE8_ROWS];
        #[inline(always)]
        fn run<L: Lanes>(mut self, lanes: L) -> Self::Output {
            lanes.tile_sums8(&mut self.0, self.1, self.2);
            self.0
        }
    }

    /// The eight-row tile adds the same sums to all eight rows on every instruction set
    /// (AVX-512's own, the others' two five-row tiles), at depths that are not multiples
    /// of anything, rows longer than the depth included.
    #[test]
    fn every_instruction_set_computes_the_same_eight_row_tile() {
        for depth in [0, 1, 7, 32, 37] {
            let values = tile_values(TILE8_ROWS, depth);
            let rows = tile_rows::<TILE8_ROWS>(&values, depth);
            let panel = tile_panel(depth, 0);
            let start: [[F8; 2]; TILE8_ROWS] = std::array::from_fn(|r| [[r as f32; 8], [-(r as f32); 8]]);
            let expect = |r: usize, c: usize| start[r][c / 8][c % 8] + (0..depth).map(|k| rows[r][k] * panel[k][c]).sum::<f32>();
            for simd in available() {
                let got = dispatch_with(simd, Tile8(start, rows, &panel));
                for (r, row) in got.iter().enumerate() {
                    for c in 0..TILE_COLUMNS {
                        let (have, want) = (row[c / 8][c % 8], expect(r, c));
                        assert!((have - want).abs() <= 1e-4 * (1.0 + want.abs()), "{simd}, depth {depth}, [{r}][{c}]: {have} vs {want}");
                    }
                }
            }
        }
    }

    struct Tile4x64<'a>([[[f32; 16]; 4]; 4], [&'a [f32]; 4], [&'a [[f32; 16]]; 4]);
    impl WithLanes for Tile4x64<'_> {
        type Output = Option<[[[f32; 16]; 4]; 4]>;
        #[inline(always)]
        fn run<L: Lanes>(mut self, lanes: L) -> Self::Output {
            let zmm = lanes.zmm()?;
            zmm.tile_sums4x64(&mut self.0, self.1, self.2);
            Some(self.0)
        }
    }

    /// The 4 x 64 tile (AVX-512 only: on other instruction sets there is none) adds the
    /// plain sums, at depths that are not multiples of anything, rows longer than the depth.
    #[test]
    fn every_instruction_set_computes_the_same_4x64_tile() {
        for depth in [0, 1, 7, 37, 512] {
            let values = tile_values(4, depth);
            let rows = tile_rows::<4>(&values, depth);
            let panels: Vec<Vec<[f32; 16]>> = (0..4).map(|p| tile_panel(depth, p)).collect();
            let four: [&[[f32; 16]]; 4] = std::array::from_fn(|p| panels[p].as_slice());
            let start: [[[f32; 16]; 4]; 4] = std::array::from_fn(|r| std::array::from_fn(|p| [(r * 4 + p) as f32; 16]));
            for simd in available() {
                let got = dispatch_with(simd, Tile4x64(start, rows, four));
                assert_eq!(got.is_some(), simd == Simd::Avx512, "{simd}");
                let Some(got) = got else { continue };
                for (r, got) in got.iter().enumerate() {
                    for (p, got) in got.iter().enumerate() {
                        for (c, &have) in got.iter().enumerate() {
                            let want = start[r][p][c] + (0..depth).map(|k| rows[r][k] * panels[p][k][c]).sum::<f32>();
                            assert!((have - want).abs() <= 1e-3 * (1.0 + want.abs()), "{simd}, depth {depth}, [{r}][{p}][{c}]: {have} vs {want}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_choice_is_the_best_available_under_the_cap() {
        let all = available();
        assert_eq!(all.last(), Some(&Simd::Portable));
        assert!(all.windows(2).all(|w| w[0] > w[1]), "{all:?}");
        assert!(all.contains(&chosen()));
        // NEON is part of every aarch64 Linux CPU (and of QEMU's, where CI runs these).
        #[cfg(target_arch = "aarch64")]
        assert!(all.contains(&Simd::Neon), "{all:?}");
    }
}
