//! MNIST-style preprocessing of ordinary image files.
//!
//! MNIST digits are white ink on black, size-normalised to fit a 20x20 box with their
//! aspect ratio kept, and placed in a 28x28 image so that their centre of mass is at the
//! centre. [`preprocess`] does the same to a photo or scan: grayscale (EXIF orientation
//! applied, transparency composited on white), inverted when the background is light,
//! background levelled to 0, cropped to the ink's bounding box, scaled so the longer side
//! is 20 pixels, and centred by centre of mass.

use std::io::{BufReader, Cursor};
use std::path::Path;

use image::imageops::{self, FilterType};
use image::{DynamicImage, GrayImage, ImageDecoder, ImageReader, Limits, Luma};

use crate::error::{Error, Result};

/// Side of the MNIST image.
pub const SIDE: usize = 28;
/// Side of the box the digit is scaled into.
pub const BOX: u32 = 20;
/// Largest image side accepted.
pub const MAX_SIDE: u32 = 10_000;
/// Largest decoder allocation accepted, in bytes.
pub const MAX_ALLOC: u64 = 512 << 20;

/// Levelled intensity (0..=255) above which a pixel counts as ink for the bounding box.
const INK_THRESHOLD: u8 = 32;

/// Reads and preprocesses an image file into 784 MNIST-style bytes.
pub fn preprocess_file(path: &Path) -> Result<[u8; SIDE * SIDE]> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    preprocess_bytes(&bytes, path)
}

/// Preprocesses an encoded image held in memory; `name` is used in errors.
pub fn preprocess_bytes(bytes: &[u8], name: &Path) -> Result<[u8; SIDE * SIDE]> {
    let image = decode(bytes, name)?;
    preprocess(&image, name)
}

fn decode(bytes: &[u8], name: &Path) -> Result<DynamicImage> {
    let decode_err = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => Error::TooLarge {
            path: name.to_path_buf(),
            message: l.to_string(),
            max_side: MAX_SIDE,
        },
        other => Error::Decode {
            path: name.to_path_buf(),
            message: other.to_string(),
        },
    };
    let mut reader = ImageReader::new(BufReader::new(Cursor::new(bytes)))
        .with_guessed_format()
        .map_err(|e| Error::Decode {
            path: name.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let orientation = decoder.orientation().map_err(decode_err)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Preprocesses a decoded image into 784 MNIST-style bytes (0 = background).
pub fn preprocess(image: &DynamicImage, name: &Path) -> Result<[u8; SIDE * SIDE]> {
    if image.width() == 0 || image.height() == 0 {
        return Err(Error::Blank {
            path: name.to_path_buf(),
            what: "empty image",
        });
    }
    let gray = grayscale_on_white(image);
    let ink = level(&gray);
    let Some((x0, y0, x1, y1)) = bounding_box(&ink) else {
        return Err(Error::Blank {
            path: name.to_path_buf(),
            what: "no ink found",
        });
    };
    let crop = imageops::crop_imm(&ink, x0, y0, x1 - x0 + 1, y1 - y0 + 1).to_image();
    let (w, h) = crop.dimensions();
    let scale = BOX as f64 / f64::from(w.max(h));
    let (nw, nh) = (
        ((f64::from(w) * scale).round() as u32).clamp(1, BOX),
        ((f64::from(h) * scale).round() as u32).clamp(1, BOX),
    );
    let scaled = imageops::resize(&crop, nw, nh, FilterType::Triangle);
    Ok(place_by_centre_of_mass(&scaled))
}

/// Luminance with transparency composited on white.
fn grayscale_on_white(image: &DynamicImage) -> GrayImage {
    let la = image.to_luma_alpha8();
    GrayImage::from_fn(la.width(), la.height(), |x, y| {
        let [l, a] = la.get_pixel(x, y).0;
        let a = f32::from(a) / 255.0;
        Luma([(f32::from(l) * a + 255.0 * (1.0 - a)).round() as u8])
    })
}

/// Ink intensity, 0 = background: inverted when the border (the background) is light,
/// then stretched so the background level becomes 0 and the strongest ink 255.
fn level(gray: &GrayImage) -> GrayImage {
    let (w, h) = gray.dimensions();
    let mut border: Vec<u8> = Vec::with_capacity(2 * (w + h) as usize);
    for x in 0..w {
        border.push(gray.get_pixel(x, 0).0[0]);
        border.push(gray.get_pixel(x, h - 1).0[0]);
    }
    for y in 0..h {
        border.push(gray.get_pixel(0, y).0[0]);
        border.push(gray.get_pixel(w - 1, y).0[0]);
    }
    border.sort_unstable();
    let background = border[border.len() / 2];
    let invert = background > 127;
    let ink = |v: u8| if invert { 255 - v } else { v };
    let bg = ink(background);
    let peak = gray.pixels().map(|p| ink(p.0[0])).max().unwrap_or(0);
    let range = f32::from(peak.saturating_sub(bg)).max(1.0);
    GrayImage::from_fn(w, h, |x, y| {
        let v = ink(gray.get_pixel(x, y).0[0]).saturating_sub(bg);
        Luma([(f32::from(v) * 255.0 / range).round().min(255.0) as u8])
    })
}

fn bounding_box(ink: &GrayImage) -> Option<(u32, u32, u32, u32)> {
    let mut bbox: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in ink.enumerate_pixels() {
        if p.0[0] > INK_THRESHOLD {
            bbox = Some(match bbox {
                None => (x, y, x, y),
                Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
            });
        }
    }
    bbox
}

/// Places `digit` (at most 20x20) in a 28x28 image with its centre of mass at the centre,
/// as MNIST does; the shift is limited so the digit stays whole.
fn place_by_centre_of_mass(digit: &GrayImage) -> [u8; SIDE * SIDE] {
    let (w, h) = digit.dimensions();
    let (mut mass, mut mx, mut my) = (0f64, 0f64, 0f64);
    for (x, y, p) in digit.enumerate_pixels() {
        let v = f64::from(p.0[0]);
        mass += v;
        mx += v * (f64::from(x) + 0.5);
        my += v * (f64::from(y) + 0.5);
    }
    let (cx, cy) = if mass > 0.0 { (mx / mass, my / mass) } else { (f64::from(w) / 2.0, f64::from(h) / 2.0) };
    let side = SIDE as i64;
    let left = ((side as f64 / 2.0 - cx).round() as i64).clamp(0, side - i64::from(w));
    let top = ((side as f64 / 2.0 - cy).round() as i64).clamp(0, side - i64::from(h));
    let mut out = [0u8; SIDE * SIDE];
    for (x, y, p) in digit.enumerate_pixels() {
        let (ox, oy) = (left + i64::from(x), top + i64::from(y));
        out[(oy * side + ox) as usize] = p.0[0];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 28x28 MNIST digit as a grayscale image, scaled by `factor`, shifted by `(dx, dy)`
    /// on a canvas of `canvas` pixels, optionally inverted (dark ink on white).
    fn render(pixels: &[u8; 784], factor: u32, canvas: u32, dx: u32, dy: u32, invert: bool) -> DynamicImage {
        let small = GrayImage::from_fn(28, 28, |x, y| Luma([pixels[(y * 28 + x) as usize]]));
        let big = imageops::resize(&small, 28 * factor, 28 * factor, FilterType::Triangle);
        let bg = if invert { 255 } else { 0 };
        let mut img = GrayImage::from_pixel(canvas, canvas, Luma([bg]));
        for (x, y, p) in big.enumerate_pixels() {
            let v = if invert { 255 - p.0[0] } else { p.0[0] };
            img.put_pixel(x + dx, y + dy, Luma([v]));
        }
        DynamicImage::ImageLuma8(img)
    }

    /// Relative L1 distance (0 identical, 1 disjoint ink), minimised over shifts of up
    /// to one pixel: placing by centre of mass rounds to whole pixels, and a thin stroke
    /// moved by one pixel is far in L1 while being the same digit.
    fn distance(a: &[u8; 784], b: &[u8; 784]) -> f64 {
        let den: f64 = a.iter().chain(b).map(|&x| f64::from(x)).sum();
        let mut best = f64::INFINITY;
        for dy in -1i32..=1 {
            for dx in -1i32..=1 {
                let mut num = 0.0;
                for y in 0..28i32 {
                    for x in 0..28i32 {
                        let (sx, sy) = (x + dx, y + dy);
                        let bv = if (0..28).contains(&sx) && (0..28).contains(&sy) { b[(sy * 28 + sx) as usize] } else { 0 };
                        num += (f64::from(a[(y * 28 + x) as usize]) - f64::from(bv)).abs();
                    }
                }
                best = best.min(num / den);
            }
        }
        best
    }

    #[test]
    fn shifted_scaled_inverted_digit_preprocesses_like_the_original() {
        let data = mnist_data::Locator::offline(None).load(mnist_data::DatasetKind::Sample).unwrap();
        let (mut moved_sum, mut orig_sum) = (0.0, 0.0);
        for i in 0..50 {
            let digit = data.test.image(i);
            let reference = preprocess(&render(digit, 1, 28, 0, 0, false), Path::new("a")).unwrap();
            let moved = preprocess(&render(digit, 4, 200, 17, 53, true), Path::new("b")).unwrap();
            // Relative L1 distance: 0 is identical, 1 is disjoint ink.
            let d = distance(&reference, &moved);
            assert!(d < 0.3, "digit {i}: relative L1 distance {d}");
            moved_sum += d;
            // The MNIST digit itself is already nearly in this form (on average: a thin
            // stroke moved by one pixel is far in L1, so single digits are not bounded).
            orig_sum += distance(digit, &reference);
        }
        let (moved_mean, orig_mean) = (moved_sum / 50.0, orig_sum / 50.0);
        eprintln!("mean distance: moved {moved_mean:.3}, original {orig_mean:.3}");
        assert!(moved_mean < 0.15, "{moved_mean}");
        assert!(orig_mean < 0.25, "{orig_mean}");
    }

    #[test]
    fn blank_empty_and_garbage_images_are_clear_errors() {
        let blank = DynamicImage::ImageLuma8(GrayImage::from_pixel(40, 40, Luma([255])));
        let err = preprocess(&blank, Path::new("white.png")).unwrap_err();
        assert!(err.to_string().contains("white.png") && err.to_string().contains("no ink"), "{err}");
        let empty = DynamicImage::ImageLuma8(GrayImage::new(0, 0));
        assert!(matches!(preprocess(&empty, Path::new("e.png")), Err(Error::Blank { .. })));
        let err = preprocess_bytes(b"this is not an image", Path::new("notes.txt")).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }) && err.to_string().contains("notes.txt"), "{err}");
    }

    #[test]
    fn oversized_images_are_refused_before_decoding() {
        // A valid PNG header claiming 20000x20000 pixels.
        let mut png = Vec::new();
        let img = GrayImage::from_pixel(1, 1, Luma([0]));
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        // IHDR width/height live at bytes 16..24; patch them and fix the CRC.
        png[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = preprocess_bytes(&png, Path::new("huge.png")).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
}
