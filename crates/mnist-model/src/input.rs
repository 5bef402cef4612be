//! The network's input contract, defined here once: images of [`SIDE`] x [`SIDE`] pixels,
//! one channel, 8-bit values with 0 the background and 255 the ink (MNIST's convention),
//! fed as `f32` scaled to `[0, 1]` ([`scale`]). Datasets, preprocessing and serving all
//! produce these 784 bytes and convert them with [`images`].

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Side of the square images the network takes, in pixels.
pub const SIDE: usize = 28;
/// Pixels of one image (`SIDE * SIDE` = 784).
pub const PIXELS: usize = SIDE * SIDE;

/// One image: [`PIXELS`] bytes, row-major, 0 = background, 255 = ink.
pub type Pixels = [u8; PIXELS];

/// The network's input value of one pixel: `pixel / 255`, in `[0, 1]`.
#[inline]
pub fn scale(pixel: u8) -> f32 {
    f32::from(pixel) / 255.0
}

/// Images as the network's input: `pixels` holds whole images of [`PIXELS`] bytes, one
/// after another -> `[n, 1, 28, 28]`, each value [`scale`]d to `[0, 1]`.
///
/// # Panics
/// If `pixels.len()` is not a multiple of [`PIXELS`].
pub fn images<B: Backend>(pixels: &[u8], device: &B::Device) -> Tensor<B, 4> {
    assert_eq!(pixels.len() % PIXELS, 0, "pixels must be whole 28x28 images");
    let n = pixels.len() / PIXELS;
    let scaled: Vec<f32> = pixels.iter().map(|&p| scale(p)).collect();
    Tensor::from_data(TensorData::new(scaled, [n, 1, SIDE, SIDE]), device)
}

/// Class indices (`0..classes`) as the loss takes them: `[n]`, `Int`.
pub fn labels<B: Backend>(labels: &[u8], device: &B::Device) -> Tensor<B, 1, Int> {
    let values: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    Tensor::from_data(TensorData::new(values, [labels.len()]), device)
}

#[cfg(test)]
mod tests {
    use burn_flex::Flex;

    use super::*;

    #[test]
    fn pixels_become_unit_floats_in_image_order() {
        let mut pixels = vec![0u8; 2 * PIXELS];
        pixels[1] = 255;
        pixels[PIXELS + SIDE] = 51;
        let t = images::<Flex>(&pixels, &Default::default());
        assert_eq!(t.dims(), [2, 1, 28, 28]);
        let v = t.into_data().to_vec::<f32>().unwrap();
        assert_eq!((v[1], v[PIXELS + SIDE], v[0]), (1.0, 0.2, 0.0));
        let l = labels::<Flex>(&[3, 9], &Default::default()).into_data().convert::<i64>().to_vec::<i64>().unwrap();
        assert_eq!(l, [3, 9]);
    }
}
