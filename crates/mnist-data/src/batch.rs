//! Batches of a split, as bytes: the images of a set of indices gathered for a training
//! step, or consecutive slices for evaluation. The network's input contract (pixels to
//! `f32` tensors in `[0, 1]`) is the model's, `mnist_model::input`.

use crate::dataset::Split;
use crate::error::{Error, Result};
use crate::idx::PIXELS;

/// Images and labels gathered from a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The images, [`PIXELS`] bytes each, one after another (0 = background).
    pub pixels: Vec<u8>,
    /// The label of each image, in `0..=9`.
    pub labels: Vec<u8>,
}

impl Batch {
    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

impl Split {
    /// The images and labels at `indices`, in that order.
    ///
    /// Fails when an index is out of range.
    pub fn gather(&self, indices: &[usize]) -> Result<Batch> {
        let mut pixels = Vec::with_capacity(indices.len() * PIXELS);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                return Err(Error::InvalidArgument(format!("index {i} is out of range for a split of {} images", self.len())));
            }
            pixels.extend_from_slice(self.image(i));
            labels.push(self.label(i));
        }
        Ok(Batch { pixels, labels })
    }

    /// Consecutive batches of at most `batch_size` images, in order (for evaluation), as
    /// `(pixels, labels)` slices of the split itself: no copy.
    pub fn chunks(&self, batch_size: usize) -> Result<impl Iterator<Item = (&[u8], &[u8])> + '_> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument("batch size must be at least 1".into()));
        }
        Ok(self.images().chunks(batch_size * PIXELS).zip(self.labels().chunks(batch_size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_gather_and_slice_in_order() {
        let mut pixels = vec![0u8; 3 * PIXELS];
        pixels[0] = 255;
        pixels[PIXELS + 783] = 51;
        let split = Split::new(pixels, vec![3, 7, 1]).unwrap();
        let batch = split.gather(&[1, 0]).unwrap();
        assert_eq!((batch.len(), batch.pixels.len()), (2, 2 * PIXELS));
        assert_eq!((batch.pixels[783], batch.pixels[PIXELS]), (51, 255));
        assert_eq!(batch.labels, [7, 3]);
        assert!(split.gather(&[3]).is_err());
        let chunks: Vec<_> = split.chunks(2).unwrap().collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!((chunks[0].0.len(), chunks[0].1), (2 * PIXELS, &[3, 7][..]));
        assert_eq!((chunks[1].0.len(), chunks[1].1), (PIXELS, &[1][..]));
        assert!(split.chunks(0).is_err());
    }
}
