//! Dropout masks from a counter-based hash: element `i` of step `step`'s mask is a pure
//! function of `(seed, step, i)`, so every backend computes the same mask bit for bit (on
//! the CPU here, on a GPU by [`crate::cube`]'s kernel, without copying a mask to the
//! device each step), and a resumed run draws the masks an uninterrupted one would.
//!
//! The hash: a 64-bit key per step, `splitmix64(splitmix64(seed ^ SALT) ^ step)` (Steele,
//! Lea and Flood, "Fast splittable pseudorandom number generators", 2014), split into
//! 32-bit halves `k0` and `k1`; then for element `i` (row-major), `x = lowbias32(i ^ k0)`,
//! `x = lowbias32(x ^ k1)`, two rounds of Chris Wellons's `lowbias32` integer hash (a
//! bijection of `u32` with low avalanche bias, "Prospecting for hash functions", 2018),
//! only 32-bit arithmetic, as every GPU runtime has. The element is kept when the top 24
//! bits of `x` fall below `round(keep * 2^24)`, and a kept element is `1 / keep`.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Mixed into the seed so that the masks are not the same stream as other uses of it.
const SALT: u64 = 0x6472_6f70_6f75_7421; // "dropout!"

/// splitmix64's output function of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Wellons's `lowbias32`; the GPU kernel computes the same (`cube/dropout.rs`).
#[inline(always)]
pub(crate) fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The constants of one mask: the step's key halves, the keep threshold on 24 bits and
/// the value of a kept element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MaskKey {
    pub k0: u32,
    pub k1: u32,
    pub threshold: u32,
    pub scale: f32,
}

impl MaskKey {
    /// For step `step` of a run seeded `seed`, keeping each element with probability
    /// `keep` (clamped to [0, 1]; 0 keeps none, and its kept value is then 0).
    pub(crate) fn new(seed: u64, step: u64, keep: f64) -> Self {
        let key = splitmix64(splitmix64(seed ^ SALT) ^ step);
        let keep = if keep.is_nan() { 0.0 } else { keep.clamp(0.0, 1.0) };
        MaskKey {
            k0: key as u32,
            k1: (key >> 32) as u32,
            threshold: (keep * f64::from(1u32 << 24)).round() as u32,
            scale: if keep > 0.0 { (1.0 / keep) as f32 } else { 0.0 },
        }
    }

    /// Element `i` of the mask.
    #[inline(always)]
    pub(crate) fn value(&self, i: u32) -> f32 {
        let x = lowbias32(lowbias32(i ^ self.k0) ^ self.k1);
        if (x >> 8) < self.threshold { self.scale } else { 0.0 }
    }
}

/// The dropout mask of step `step` of a run seeded `seed`: `[batch, width]`, each element
/// `1 / keep` with probability `keep`, else 0 (multiply the activations by it: inverted
/// dropout, so no rescaling at inference). The same values on every backend (see the
/// module's overview); computed on the device by the CubeCL backends compiled in, on the
/// host and copied elsewhere.
///
/// # Panics
/// When the mask has more than `u32::MAX` elements (the hash counts in 32 bits; a batch
/// of four million at width 1,024).
pub fn dropout_mask<B: Backend>(batch: usize, width: usize, keep: f64, seed: u64, step: u64, device: &B::Device) -> Tensor<B, 2> {
    let n = batch.checked_mul(width).filter(|&n| u32::try_from(n).is_ok());
    let Some(n) = n else {
        panic!("a dropout mask of {batch} x {width} elements is over the hash's 2^32");
    };
    let key = MaskKey::new(seed, step, keep);
    #[cfg(feature = "cube")]
    if let Some(mask) = crate::cube::dropout::mask::<B>([batch, width], key, device) {
        return mask;
    }
    Tensor::from_data(TensorData::new(host_mask(n, key), [batch, width]), device)
}

/// The mask's `n` values on the host: in parallel chunks, each compiled for the CPU's
/// best vector instructions (the hash is 32-bit multiplies and shifts, lane by lane). On
/// one thread and baseline x86-64 (no 32-bit vector multiply) it was about a fortieth of a
/// training step at batch 50, with the other core idle.
#[cfg(feature = "flex")]
fn host_mask(n: usize, key: MaskKey) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 13;
    let mut values = vec![0.0f32; n];
    values.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        pulp::Arch::new().dispatch(
            #[inline(always)]
            || {
                // `n` fits in u32 (checked above), so every index does.
                let first = (c * CHUNK) as u32;
                for (i, v) in (first..).zip(chunk.iter_mut()) {
                    *v = key.value(i);
                }
            },
        )
    });
    values
}

/// The mask's `n` values on the host, one after another.
#[cfg(not(feature = "flex"))]
fn host_mask(n: usize, key: MaskKey) -> Vec<f32> {
    (0..n as u32).map(|i| key.value(i)).collect()
}

#[cfg(test)]
mod tests {
    use burn_flex::Flex;

    use super::*;

    fn mask(batch: usize, width: usize, keep: f64, seed: u64, step: u64) -> Vec<f32> {
        dropout_mask::<Flex>(batch, width, keep, seed, step, &Default::default()).into_data().to_vec::<f32>().expect("f32")
    }

    /// The host's mask, computed in parallel chunks, is element by element the hash of its
    /// index, across chunk boundaries and in a last partial chunk.
    #[test]
    fn the_host_mask_is_the_hash_of_each_index() {
        let key = MaskKey::new(11, 5, 0.5);
        let n = 3 * 8192 + 5;
        let expect: Vec<f32> = (0..n as u32).map(|i| key.value(i)).collect();
        assert_eq!(host_mask(n, key), expect);
        assert_eq!(mask(1, n, 0.5, 11, 5), expect);
    }

    /// The seed's mask keeps about half (50 x 1,024 draws: within 5 standard deviations),
    /// with the value 2; neighbours agree about half the time; the same seed and step
    /// give the same mask, another step or seed another one.
    #[test]
    fn masks_keep_the_fraction_asked_and_depend_on_seed_and_step() {
        let a = mask(50, 1024, 0.5, 7, 3);
        assert!(a.iter().all(|&v| v == 0.0 || v == 2.0));
        let kept = a.iter().filter(|&&v| v > 0.0).count() as f64;
        let (n, sd) = (a.len() as f64, (a.len() as f64 * 0.25).sqrt());
        assert!((kept - n / 2.0).abs() < 5.0 * sd, "kept {kept} of {n}");
        let agree = a.windows(2).filter(|w| w[0] == w[1]).count() as f64;
        assert!((agree - (n - 1.0) / 2.0).abs() < 5.0 * sd, "neighbours agree {agree} times");
        assert_eq!(a, mask(50, 1024, 0.5, 7, 3));
        for other in [mask(50, 1024, 0.5, 7, 4), mask(50, 1024, 0.5, 8, 3)] {
            let same = a.iter().zip(&other).filter(|(x, y)| x == y).count() as f64;
            assert!((same - n / 2.0).abs() < 5.0 * sd, "{same} of {n} equal to another step's or seed's");
        }
        // Other rates, and the ends.
        let b = mask(20, 500, 0.8, 1, 0);
        let kept = b.iter().filter(|&&v| v > 0.0).count() as f64;
        assert!((kept - 8000.0).abs() < 5.0 * (10_000.0f64 * 0.16).sqrt(), "kept {kept} of 10,000 at 0.8");
        assert!(b.iter().all(|&v| v == 0.0 || v == 1.25));
        assert!(mask(3, 7, 1.0, 1, 0).iter().all(|&v| v == 1.0));
        assert!(mask(3, 7, 0.0, 1, 0).iter().all(|&v| v == 0.0));
    }

    /// splitmix64's first output for seed 0 is the reference implementation's
    /// (0xE220A8397B1DCDAF), and `lowbias32` is a bijection, as its steps are.
    #[test]
    fn the_hashes_are_the_published_ones() {
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(lowbias32(0), 0);
        // lowbias32 is a bijection: no two of the first 65,536 inputs collide.
        let mut seen: Vec<u32> = (0..1u32 << 16).map(lowbias32).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 1 << 16);
    }
}
