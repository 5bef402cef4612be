//! A reproducible, seeded order of training examples.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Which training examples go into which step: each epoch is a fresh permutation drawn
/// from `(seed, epoch)` alone, and an epoch holds `len / batch_size` full batches (the
/// remainder of the permutation is skipped). Step `s` therefore always sees the same
/// examples, however the run was interrupted and resumed.
#[derive(Debug, Clone)]
pub struct Sampler {
    len: usize,
    batch_size: usize,
    seed: u64,
    epoch: Option<(u64, Vec<usize>)>,
}

impl Sampler {
    /// A sampler over `len` examples.
    pub fn new(len: usize, batch_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument("batch size must be at least 1".into()));
        }
        if batch_size > len {
            return Err(Error::InvalidArgument(format!(
                "batch size {batch_size} is larger than the {len} training examples"
            )));
        }
        Ok(Sampler {
            len,
            batch_size,
            seed,
            epoch: None,
        })
    }

    /// Full batches per epoch.
    pub fn batches_per_epoch(&self) -> u64 {
        (self.len / self.batch_size) as u64
    }

    /// The epoch that step `step` (0-based) belongs to.
    pub fn epoch_of(&self, step: u64) -> u64 {
        step / self.batches_per_epoch()
    }

    /// The example indices of step `step` (0-based).
    pub fn indices(&mut self, step: u64) -> &[usize] {
        let per_epoch = self.batches_per_epoch();
        let epoch = step / per_epoch;
        if self.epoch.as_ref().map(|(e, _)| *e) != Some(epoch) {
            self.epoch = Some((epoch, epoch_order(self.len, self.seed, epoch)));
        }
        let order = &self.epoch.as_ref().expect("just set").1;
        let start = (step % per_epoch) as usize * self.batch_size;
        &order[start..start + self.batch_size]
    }
}

/// The permutation of `0..len` used in `epoch` for `seed`.
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_is_reproducible_and_covers_each_epoch() {
        let mut a = Sampler::new(100, 10, 42).unwrap();
        let mut b = Sampler::new(100, 10, 42).unwrap();
        let mut seen = Vec::new();
        for step in 0..10 {
            seen.extend_from_slice(a.indices(step));
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        // Random access (as after a resume) gives the same batches.
        assert_eq!(a.indices(13).to_vec(), b.indices(13).to_vec());
        assert_eq!(a.indices(3).to_vec(), b.indices(3).to_vec());
        // Epochs and seeds differ.
        assert_ne!(epoch_order(100, 42, 0), epoch_order(100, 42, 1));
        assert_ne!(epoch_order(100, 42, 0), epoch_order(100, 43, 0));
        assert!(Sampler::new(5, 10, 0).is_err());
        assert!(Sampler::new(5, 0, 0).is_err());
    }
}
