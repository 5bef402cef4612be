//! Batches for Burn and a reproducible, seeded order of training examples.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::dataset::Split;
use crate::error::{Error, Result};
use crate::idx::{PIXELS, SIDE};

/// A batch of images and labels on a Burn device.
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    /// Images `[batch, 1, 28, 28]`, `f32` scaled to `[0, 1]` (pixel / 255).
    pub images: Tensor<B, 4>,
    /// Labels `[batch]`, each in `0..=9`.
    pub labels: Tensor<B, 1, Int>,
}

/// Converts raw pixels (`784` bytes per image) to a `[n, 1, 28, 28]` tensor in `[0, 1]`.
///
/// # Panics
/// If `pixels.len()` is not a multiple of 784.
pub fn images_to_tensor<B: Backend>(pixels: &[u8], device: &B::Device) -> Tensor<B, 4> {
    assert_eq!(pixels.len() % PIXELS, 0, "pixels must be whole 28x28 images");
    let n = pixels.len() / PIXELS;
    let scaled: Vec<f32> = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
    Tensor::from_data(TensorData::new(scaled, [n, 1, SIDE, SIDE]), device)
}

impl Split {
    /// The images at `indices`, as a batch on `device`.
    ///
    /// Fails when an index is out of range.
    pub fn batch<B: Backend>(&self, indices: &[usize], device: &B::Device) -> Result<Batch<B>> {
        let mut pixels = Vec::with_capacity(indices.len() * PIXELS);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                return Err(Error::InvalidArgument(format!(
                    "index {i} is out of range for a split of {} images",
                    self.len()
                )));
            }
            pixels.extend_from_slice(self.image(i));
            labels.push(i64::from(self.label(i)));
        }
        let n = labels.len();
        Ok(Batch {
            images: images_to_tensor(&pixels, device),
            labels: Tensor::from_data(TensorData::new(labels, [n]), device),
        })
    }

    /// Consecutive batches of at most `batch_size` images, in order (for evaluation).
    pub fn batches<'a, B: Backend>(
        &'a self,
        batch_size: usize,
        device: &'a B::Device,
    ) -> Result<impl Iterator<Item = Batch<B>> + 'a> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument("batch size must be at least 1".into()));
        }
        Ok((0..self.len()).step_by(batch_size).map(move |start| {
            let end = (start + batch_size).min(self.len());
            let indices: Vec<usize> = (start..end).collect();
            self.batch(&indices, device).expect("indices are in range")
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn_flex::Flex;

    #[test]
    fn batch_has_seed_shapes_and_scaling() {
        let mut pixels = vec![0u8; 2 * PIXELS];
        pixels[0] = 255;
        pixels[PIXELS + 783] = 51;
        let split = Split::new(pixels, vec![3, 7]).unwrap();
        let batch = split.batch::<B>(&[1, 0], &Default::default()).unwrap();
        assert_eq!(batch.images.dims(), [2, 1, 28, 28]);
        let v = batch.images.into_data().to_vec::<f32>().unwrap();
        assert_eq!(v[783], 0.2);
        assert_eq!(v[PIXELS], 1.0);
        let labels = batch.labels.into_data().convert::<i64>().to_vec::<i64>().unwrap();
        assert_eq!(labels, vec![7, 3]);
        assert!(split.batch::<B>(&[2], &Default::default()).is_err());
    }
}
