//! MNIST-style preprocessing of ordinary image files.
//!
//! MNIST digits are white ink on black, size-normalised to fit a 20x20 box with their
//! aspect ratio kept, and placed in a 28x28 image so that their centre of mass is at the
//! centre. [`preprocess`] does the same to a photo or scan, in these steps:
//!
//! 1. **Grayscale** in `[0, 1]`: EXIF orientation applied, transparency composited on
//!    white (on black behind light strokes), and 16-bit images levelled to the bit depth
//!    their values really use (a 12-bit scan stored in a 16-bit PNG spans `0..=4095`, not
//!    `0..=65535`). Large images are
//!    averaged down to at most [`WORK_SIDE`] pixels on their longer side.
//! 2. **The sheet**: when the border is dark but a large light region, or a smaller one
//!    shaped like a sheet, has dark marks inside it (a sheet of paper photographed on a
//!    desk), the image is cut to that region and whatever lies outside it is painted the
//!    sheet's colour.
//! 3. **Polarity**: the background is whichever end of the image's own range the border
//!    sits at (its median above or below Otsu's threshold of the image), so a dark digit
//!    on a grey page of 127 and of 128 are read alike; the image is inverted when the
//!    background is the light end.
//! 4. **Background removal**: the background is estimated over a coarse grid of blocks
//!    (the 25th percentile of each block, the median of its 3x3 neighbourhood,
//!    interpolated bilinearly) and subtracted, so lighting that varies across the page
//!    does not turn into ink; the noise level is the background's median absolute
//!    deviation.
//! 5. **Ink**: pixels above a threshold (a quarter of the strongest ink, and at least
//!    three noise deviations) in 8-connected components; marks along most of an edge (a
//!    frame, the desk, a shadow's edge) and specks much smaller than the largest component
//!    are dropped, and faint pixels touching what is kept (down to [`FAINT`] of the
//!    strongest ink) are added to it, as Canny's hysteresis does. An image whose ink is a
//!    few pixels, a solid blob, or covers most of the image, or that stands out from the
//!    background by less than [`MIN_CONTRAST`] or than its noise, is refused with an
//!    error saying which.
//! 6. **MNIST's normalisation**: cropped to the ink's bounding box, scaled so the longer
//!    side is 20 pixels, and centred by centre of mass in 28x28.

use std::io::{BufReader, Cursor};
use std::path::Path;

use image::imageops::{self, FilterType};
use image::codecs::png::PngDecoder;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, Limits, Luma};

use crate::error::{Error, Result};

/// Side of the image the network takes (the model's input contract).
pub use mnist_model::input::SIDE;
/// Side of the box the digit is scaled into.
pub const BOX: u32 = 20;
/// Largest image side accepted.
pub const MAX_SIDE: u32 = 10_000;
/// Largest decoded image accepted, in bytes (256 MiB: 8000 x 8000 pixels of 8-bit RGBA,
/// or 10,000 x 10,000 of 8-bit grey), checked before decoding. The analysis then reads it
/// in strips, so an image costs about its decoded size and little more.
pub const MAX_ALLOC: u64 = 256 << 20;
/// Longer side, in pixels, that larger images are averaged down to before the analysis
/// (the digit ends up 20 pixels tall; this keeps strokes of a few pixels' width).
pub const WORK_SIDE: u32 = 800;
/// Least difference between ink and background, as a fraction of the full intensity
/// range, for the image to count as having ink at all.
pub const MIN_CONTRAST: f32 = 0.08;
/// Noise deviation (a fraction of the intensity range) above which the image is
/// smoothed 3x3 before its ink is looked for.
pub const NOISY: f32 = 0.06;
/// Fewest ink pixels (at the working size) that can make a digit.
pub const MIN_INK_PIXELS: usize = 12;
/// Faintest part of a stroke kept, as a fraction of the strongest ink, when it touches
/// the stroke's strong part.
pub const FAINT: f32 = 0.03;
/// Largest thickness of a digit's ink (twice the radius of its thickest part) as a
/// fraction of the ink's size (its bounding box's longer side): more is a blob, not
/// strokes (a disc or a square is 1; MNIST's digits are about 0.15 to 0.3).
pub const MAX_THICKNESS: f32 = 0.55;
/// Largest fraction of the image that ink may cover (MNIST's boldest digits cover up to
/// 43% of their 28x28 image; half an image dark is a shadow or a desk, not a digit).
pub const MAX_INK_FRACTION: f32 = 0.47;

/// Largest image file read, in bytes (the same as [`MAX_ALLOC`]: an encoded image is not
/// larger than its decoded pixels, bar padding).
pub const MAX_FILE: u64 = MAX_ALLOC;

/// Most metadata (an ICC profile, text) a PNG decoder may inflate, in bytes. A PNG's
/// profile is compressed: a few kilobytes of file can claim a gigabyte of profile, which
/// the decoder would otherwise inflate up to [`MAX_ALLOC`] before the pixels.
pub const MAX_PNG_METADATA: u64 = 8 << 20;

/// What a file whose first bytes are those of no image format is said to be.
const NO_FORMAT: &str = "its first bytes are those of no image format";

/// Reads and preprocesses an image file into 784 MNIST-style bytes.
///
/// The file's first bytes are looked at before the rest is read: a file that is not an
/// image is refused without reading it whole, and one larger than [`MAX_FILE`] (or a
/// device or pipe that goes on longer) is refused when that much has been read.
pub fn preprocess_file(path: &Path) -> Result<[u8; SIDE * SIDE]> {
    use std::io::Read;
    let read_err = |source| Error::Read { path: path.to_path_buf(), source };
    let mut file = mnist_fs::open_file(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    (&mut file).take(64).read_to_end(&mut bytes).map_err(read_err)?;
    if !bytes.is_empty() && image::guess_format(&bytes).is_err() {
        return Err(Error::Decode { path: path.to_path_buf(), message: NO_FORMAT.into() });
    }
    let too_large = || Error::TooLarge {
        path: path.to_path_buf(),
        message: format!("the file holds more than {} MiB", MAX_FILE >> 20),
        max_side: MAX_SIDE,
    };
    // A file says its size; a device or a pipe is read up to the limit.
    let size = file.metadata().ok().filter(std::fs::Metadata::is_file).map_or(MAX_FILE, |m| m.len());
    if size > MAX_FILE {
        return Err(too_large());
    }
    // Room for all of it at once: grown by doubling, the buffer was copied as it grew and
    // took three times the file (untouched capacity costs no memory).
    bytes.reserve_exact(usize::try_from(size + 1).unwrap_or(usize::MAX).saturating_sub(bytes.len()));
    file.take(MAX_FILE + 1 - bytes.len() as u64).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(too_large());
    }
    preprocess_bytes(&bytes, path)
}

/// Preprocesses an encoded image held in memory; `name` is used in errors.
pub fn preprocess_bytes(bytes: &[u8], name: &Path) -> Result<[u8; SIDE * SIDE]> {
    let image = decode(bytes, name)?;
    preprocess(&image, name)
}

fn decode(bytes: &[u8], name: &Path) -> Result<DynamicImage> {
    let mut decoder = decoder(bytes, name)?;
    let orientation = decoder.orientation().map_err(|e| decode_err(e, name))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| decode_err(e, name))?;
    image.apply_orientation(orientation);
    Ok(image)
}

fn decode_err(e: image::ImageError, name: &Path) -> Error {
    match e {
        image::ImageError::Limits(l) => Error::TooLarge { path: name.to_path_buf(), message: l.to_string(), max_side: MAX_SIDE },
        other => Error::Decode { path: name.to_path_buf(), message: decoder_message(&other) },
    }
}

/// The decoder of the image in `bytes`, its format read from its first bytes, with its
/// size held to [`MAX_SIDE`] and [`MAX_ALLOC`] before any pixel is decoded.
fn decoder<'a>(bytes: &'a [u8], name: &Path) -> Result<Box<dyn ImageDecoder + 'a>> {
    let reader = ImageReader::new(BufReader::new(Cursor::new(bytes)))
        .with_guessed_format()
        .map_err(|e| Error::Decode {
            path: name.to_path_buf(),
            message: e.to_string(),
        })?;
    // Said as `preprocess_file` says it (the decoder's own words: "The image format could
    // not be determined"); an empty file or body says that it is empty.
    if reader.format().is_none() {
        let message = if bytes.is_empty() { "it is empty (0 bytes)" } else { NO_FORMAT };
        return Err(Error::Decode { path: name.to_path_buf(), message: message.into() });
    }
    // The sides are checked below, where the error can give them.
    let mut limits = Limits::no_limits();
    limits.max_alloc = Some(MAX_ALLOC);
    let decoder: Box<dyn ImageDecoder + 'a> = if reader.format() == Some(ImageFormat::Png) {
        // The png crate bounds what it inflates besides the pixels (the ICC profile, text)
        // by the limit it is built with, which `set_limits` does not change: built with
        // the metadata's bound, then given the image's. (A profile over it is skipped.)
        let mut metadata = limits.clone();
        metadata.max_alloc = Some(MAX_PNG_METADATA);
        let mut png = PngDecoder::with_limits(reader.into_inner(), metadata).map_err(|e| match e {
            // The sides and the decoded size are checked below: this is a metadata chunk.
            image::ImageError::Limits(_) => Error::Decode {
                path: name.to_path_buf(),
                message: format!("a metadata chunk (EXIF, ICC profile or text) holds more than the {} MiB accepted", MAX_PNG_METADATA >> 20),
            },
            other => decode_err(other, name),
        })?;
        png.set_limits(limits).map_err(|e| decode_err(e, name))?;
        Box::new(png)
    } else {
        let mut reader = reader;
        reader.limits(limits);
        Box::new(reader.into_decoder().map_err(|e| decode_err(e, name))?)
    };
    let (width, height) = decoder.dimensions();
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::TooLarge { path: name.to_path_buf(), message: format!("{width}x{height} pixels"), max_side: MAX_SIDE });
    }
    // `ImageReader::decode` holds the decoded size to the limits; `into_decoder` (taken
    // for the orientation) does not, so a small file of 16-bit pixels could decode into
    // gigabytes.
    if decoder.total_bytes() > MAX_ALLOC {
        return Err(Error::TooLarge {
            path: name.to_path_buf(),
            message: format!(
                "{width}x{height} pixels of {:?} decode into {} MiB, more than the {} MiB accepted",
                decoder.color_type(),
                decoder.total_bytes().div_ceil(1 << 20),
                MAX_ALLOC >> 20
            ),
            max_side: MAX_SIDE,
        });
    }
    Ok(decoder)
}

/// What a decoder's error says, in a user's terms: a file that ends before its image does
/// is said to be cut short, where the decoders say "failed to fill whole buffer" (an I/O
/// error of a read past the end) or "unexpected end of file".
fn decoder_message(e: &image::ImageError) -> String {
    let message = e.to_string();
    let lower = message.to_lowercase();
    let ends_early = matches!(e, image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
        || ["failed to fill whole buffer", "unexpected end of file", "unexpected eof"].iter().any(|m| lower.contains(m));
    if ends_early {
        "the file ends before the image does: it was cut short (a partial copy or download?)".to_string()
    } else if lower.contains("appeared before ihdr") {
        // The png crate's words for a file that starts like a PNG and goes on as none.
        "it starts like a PNG, but its header chunk (IHDR) is not there: the file is damaged or not a PNG".to_string()
    } else if lower.contains("not have enough data") {
        // A PNG whose chunks are whole but hold too few pixel rows.
        "the file holds less image data than its header declares: it was cut short or damaged".to_string()
    } else if lower.contains("crc error") {
        let chunk = png_chunk(&message).map(|c| format!(" of its {c} chunk")).unwrap_or_default();
        format!("the checksum (CRC){chunk} does not match its content: the file is damaged")
    } else {
        without_chunk_debug(&message)
    }
}

/// The png crate's debug text of a chunk type (`ChunkType { type: IHDR, critical: true,
/// ... }`) in `message`: its four letters.
fn png_chunk(message: &str) -> Option<&str> {
    let start = message.find("ChunkType { type: ")? + "ChunkType { type: ".len();
    let name = &message[start..];
    Some(&name[..name.find([',', ' '])?])
}

/// `message` with the png crate's debug text of a chunk type replaced by its name.
fn without_chunk_debug(message: &str) -> String {
    let (Some(name), Some(start)) = (png_chunk(message), message.find("ChunkType { ")) else { return message.to_string() };
    match message[start..].find('}') {
        Some(end) => format!("{}{name}{}", &message[..start], &message[start + end + 1..]),
        None => message.to_string(),
    }
}

/// Preprocesses a decoded image into 784 MNIST-style bytes (0 = background, 255 = ink).
///
/// # Errors
/// [`Error::Blank`] naming `name` when the image is empty, has no ink distinguishable
/// from its background or its noise, or its "ink" is a few pixels, a solid blob, marks
/// along its edges only, or covers most of the image.
pub fn preprocess(image: &DynamicImage, name: &Path) -> Result<[u8; SIDE * SIDE]> {
    let blank = |what: String| Error::Blank {
        path: name.to_path_buf(),
        what,
    };
    if image.width() == 0 || image.height() == 0 {
        return Err(blank("empty image".into()));
    }
    let gray = Plane::grayscale_shrunk(image, WORK_SIDE);
    let split = otsu(&gray.v);
    let (gray, split, unmarked) = match gray.sheet(split) {
        Sheet::Found(sheet) => {
            let split = otsu(&sheet.v);
            (sheet, split, None)
        }
        Sheet::Unmarked { sheet, percent } => {
            let split = otsu(&sheet.v);
            (sheet, split, Some(percent))
        }
        Sheet::None => (gray, split, None),
    };
    let ink = extract_ink(&gray, split).map_err(|e| match unmarked {
        // "no ink found" on the sheet itself: it is blank.
        Some(percent) if e.starts_with("no ink found") => {
            let why = e.strip_prefix("no ink found: ").map(|why| format!(" dark enough ({why})")).unwrap_or_default();
            blank(format!("a blank sheet: a light region covering {percent:.0}% of the image has no marks{why} on it"))
        }
        _ => blank(e),
    })?;
    let (x0, y0, x1, y1) = ink.bbox;
    let crop = GrayImage::from_fn(x1 - x0 + 1, y1 - y0 + 1, |x, y| Luma([(ink.levels.at(x0 + x, y0 + y) * 255.0 + 0.5) as u8]));
    let (w, h) = crop.dimensions();
    let scale = BOX as f64 / f64::from(w.max(h));
    let (nw, nh) = (
        ((f64::from(w) * scale).round() as u32).clamp(1, BOX),
        ((f64::from(h) * scale).round() as u32).clamp(1, BOX),
    );
    let scaled = imageops::resize(&crop, nw, nh, FilterType::Triangle);
    Ok(place_by_centre_of_mass(&scaled))
}

/// The white level of a 16-bit (or float) image, given its pixels by the bits their value
/// needs (`by_bits[b]`: values of `b` bits) out of `pixels`: the least depth, at least 8,
/// that holds all but 0.1% of them, so that a few hot pixels do not decide it (they clip
/// to white).
fn white_of(by_bits: &[u64; 17], pixels: u64) -> f32 {
    let allowed = pixels / 1000;
    let (mut above, mut bits) = (0, 16);
    while bits > 8 && above + by_bits[bits] <= allowed {
        above += by_bits[bits];
        bits -= 1;
    }
    ((1u32 << bits) - 1) as f32
}

/// What shows through transparency: the page behind the strokes, white unless the
/// strokes themselves are mostly light (white ink drawn on a transparent canvas), then
/// black. Counts the opaque pixels, the light ones among them and the clear ones.
#[derive(Default)]
struct Page {
    opaque: u64,
    light: u64,
    clear: u64,
}

impl Page {
    /// Counts one 16-bit grey and alpha pixel of an image whose white is `full`.
    fn count(&mut self, [l, a]: [u16; 2], full: f32) {
        if a >= u16::MAX / 2 {
            self.opaque += 1;
            self.light += u64::from(f32::from(l) / full > 0.5);
        } else {
            self.clear += 1;
        }
    }

    /// The page's level: 0 (black) or 1 (white).
    fn behind(&self) -> f32 {
        if self.clear > 0 && 2 * self.light > self.opaque { 0.0 } else { 1.0 }
    }
}

/// A 16-bit grey and alpha pixel's luminance in `[0, 1]`, levelled to the white `full`
/// and composited on the page's level `behind`.
fn luminance([l, a]: [u16; 2], full: f32, behind: f32) -> f32 {
    let a = f32::from(a) / f32::from(u16::MAX);
    (f32::from(l) / full).min(1.0) * a + behind * (1.0 - a)
}

/// A single-channel image of `f32` values, row-major.
#[derive(Debug, Clone, PartialEq)]
struct Plane {
    w: u32,
    h: u32,
    v: Vec<f32>,
}

impl Plane {
    fn new(w: u32, h: u32, f: impl Fn(u32, u32) -> f32) -> Plane {
        let mut v = Vec::with_capacity(w as usize * h as usize);
        for y in 0..h {
            for x in 0..w {
                v.push(f(x, y));
            }
        }
        Plane { w, h, v }
    }

    fn at(&self, x: u32, y: u32) -> f32 {
        self.v[y as usize * self.w as usize + x as usize]
    }

    /// Luminance in `[0, 1]`, transparency composited on white (on black when the opaque
    /// pixels are mostly light: white strokes on a transparent canvas), averaged over
    /// blocks of whole pixels so that the longer side is at most `side`. A 16-bit (or
    /// float) image is levelled to the bit depth its values use (all but 0.1% of them), at
    /// least 8: a 12-bit scan stored in a 16-bit PNG has its white at 4095, even with a hot
    /// pixel.
    ///
    /// The image is read in strips of rows (a whole number of blocks each, a few MB), so
    /// that no full-size copy is made besides the decoded image: a 10,000 x 10,000 image
    /// cost three (its 16-bit grey and alpha, then its `f32` plane) before being shrunk.
    fn grayscale_shrunk(image: &DynamicImage, side: u32) -> Plane {
        let (w, h) = (image.width(), image.height());
        let f = w.max(h).div_ceil(side).max(1);
        // Rows per strip: whole blocks, about 4 MB of 16-bit grey and alpha.
        let strip = f * (((4 << 20) / (u64::from(w) * 4 * u64::from(f)).max(1)).max(1) as u32);
        let strips = || (0..h).step_by(strip as usize).map(move |y| (y, image.crop_imm(0, y, w, strip.min(h - y)).to_luma_alpha16()));
        let deep = image.color().bytes_per_pixel() / image.color().channel_count() >= 2;
        let alpha = image.color().has_alpha();
        // Pixels by the bits their value needs.
        let mut by_bits = [0u64; 17];
        if deep {
            for (_, la) in strips() {
                for p in la.pixels() {
                    by_bits[(16 - p.0[0].leading_zeros()) as usize] += 1;
                }
            }
        }
        let full = if deep { white_of(&by_bits, u64::from(w) * u64::from(h)) } else { f32::from(u16::MAX) };
        let mut page = Page::default();
        if alpha {
            for (_, la) in strips() {
                la.pixels().for_each(|p| page.count(p.0, full));
            }
        }
        let behind = page.behind();
        let (sw, sh) = (w.div_ceil(f), h.div_ceil(f));
        let mut sums = vec![0.0f32; sw as usize * sh as usize];
        let mut counts = vec![0u32; sums.len()];
        for (y0, la) in strips() {
            for (dy, row) in la.as_raw().chunks_exact(2 * w as usize).enumerate() {
                let blocks = ((y0 as usize + dy) / f as usize) * sw as usize;
                let (sums, counts) = (&mut sums[blocks..][..sw as usize], &mut counts[blocks..][..sw as usize]);
                for ((sum, n), pixels) in sums.iter_mut().zip(counts.iter_mut()).zip(row.chunks(2 * f as usize)) {
                    for la in pixels.chunks_exact(2) {
                        *sum += luminance([la[0], la[1]], full, behind);
                    }
                    *n += (pixels.len() / 2) as u32;
                }
            }
        }
        // Each block's values were added row by row, left to right, as a full-size plane
        // averaged afterwards would add them; a block of one pixel is the pixel itself.
        let v = sums.iter().zip(&counts).map(|(&sum, &n)| sum / n as f32).collect();
        Plane { w: sw, h: sh, v }
    }

    /// Averages blocks of whole pixels so the longer side is at most `side`.
    fn shrunk_to(self, side: u32) -> Plane {
        let f = self.w.max(self.h).div_ceil(side);
        if f <= 1 {
            return self;
        }
        let (w, h) = (self.w.div_ceil(f), self.h.div_ceil(f));
        Plane::new(w, h, |bx, by| {
            let (mut sum, mut n) = (0.0, 0u32);
            for y in by * f..((by + 1) * f).min(self.h) {
                for x in bx * f..((bx + 1) * f).min(self.w) {
                    sum += self.at(x, y);
                    n += 1;
                }
            }
            sum / n as f32
        })
    }

    /// The image less the plane `a + b x + c y` fitting it best (least squares), plus 0.5
    /// and clipped to `[0, 1]`: what remains once a steady gradient of light is removed.
    fn less_plane(self) -> Plane {
        let (w, h) = (f64::from(self.w), f64::from(self.h));
        let (cx, cy) = ((w - 1.0) / 2.0, (h - 1.0) / 2.0);
        let n = self.v.len() as f64;
        // Centred coordinates make the normal equations diagonal.
        let (mut sum, mut sum_x, mut sum_y, mut xx, mut yy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for y in 0..self.h {
            for x in 0..self.w {
                let (dx, dy, v) = (f64::from(x) - cx, f64::from(y) - cy, f64::from(self.at(x, y)));
                sum += v;
                sum_x += v * dx;
                sum_y += v * dy;
                xx += dx * dx;
                yy += dy * dy;
            }
        }
        let (a, b, c) = (sum / n, if xx > 0.0 { sum_x / xx } else { 0.0 }, if yy > 0.0 { sum_y / yy } else { 0.0 });
        Plane::new(self.w, self.h, |x, y| {
            let fit = a + b * (f64::from(x) - cx) + c * (f64::from(y) - cy);
            (f64::from(self.at(x, y)) - fit + 0.5).clamp(0.0, 1.0) as f32
        })
    }

    /// The values along the image's border.
    fn border(&self) -> Vec<f32> {
        let (w, h) = (self.w, self.h);
        let mut out = Vec::with_capacity(2 * (w + h) as usize);
        for x in 0..w {
            out.push(self.at(x, 0));
            out.push(self.at(x, h - 1));
        }
        for y in 0..h {
            out.push(self.at(0, y));
            out.push(self.at(w - 1, y));
        }
        out
    }

    /// A light sheet photographed on a dark surface: when the border is darker than
    /// `threshold` (Otsu's, of this image) and the largest light 4-connected region,
    /// filled in (its holes and the marks cutting into its edges), covers either at least
    /// 45% of the image and 60% of its bounding box with dark marks on at most half of it,
    /// or at least 3% of the image and 85% of its bounding box with dark marks on at most
    /// 30% of it, the image cut to that region's bounding box with everything outside the
    /// filled region painted the region's median colour. Light holes (the inside of a bold
    /// 0's ring) are no marks. [`Sheet::Unmarked`] for such a region without a dark mark
    /// that is large or at most 1.6 times as long as it is wide (a sheet, not the bar of a
    /// bold light 1): faint marks may still be on it. [`Sheet::None`] otherwise.
    fn sheet(&self, threshold: f32) -> Sheet {
        if light_background(self, threshold) {
            return Sheet::None; // the border is light already: no sheet to find
        }
        let light: Vec<bool> = self.v.iter().map(|&v| v > threshold).collect();
        let (labels, sizes) = components(self.w, self.h, &light, false);
        let (w, h) = (self.w as usize, self.h as usize);
        // The largest light region, wherever it lies (a sheet need not be centred).
        let Some(label) = (1..sizes.len()).max_by_key(|&l| sizes[l]) else { return Sheet::None };
        let label = label as u32;
        if (sizes[label as usize] as f32) < 0.03 * (w * h) as f32 {
            return Sheet::None;
        }
        let region: Vec<bool> = labels.iter().map(|&l| l == label).collect();
        let Some((x0, y0, x1, y1)) = bounding_box(self.w, &region) else { return Sheet::None };
        // The region filled in: what lies between its pixels both along its row and
        // along its column (its holes, and marks cutting into its edges).
        let (mut rows, mut cols) = (vec![(u32::MAX, 0); h], vec![(u32::MAX, 0); w]);
        for (i, _) in region.iter().enumerate().filter(|(_, r)| **r) {
            let (x, y) = ((i % w) as u32, (i / w) as u32);
            let (row, col) = (&mut rows[y as usize], &mut cols[x as usize]);
            *row = (row.0.min(x), row.1.max(x));
            *col = (col.0.min(y), col.1.max(y));
        }
        let filled = |x: u32, y: u32| {
            let (row, col) = (rows[y as usize], cols[x as usize]);
            (row.0..=row.1).contains(&x) && (col.0..=col.1).contains(&y)
        };
        let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
        let inside = || (y0..=y1).flat_map(|y| (x0..=x1).map(move |x| (x, y))).filter(|&(x, y)| filled(x, y));
        let filled_area = inside().count();
        let marks = inside().filter(|&(x, y)| !light[(y * self.w + x) as usize]).count();
        // A sheet covering much of the photo may be tilted; a smaller one must look like a
        // sheet and not like a light digit with a hole (a bold 0 is an ellipse, 79% of
        // its box, with a large dark hole).
        let (box_fill, marked) = (filled_area as f32 / (bw * bh) as f32, marks as f32 / filled_area as f32);
        let large = filled_area as f32 >= 0.45 * (w * h) as f32 && marked <= 0.5;
        let sheet_shaped = if large { box_fill >= 0.6 } else { box_fill >= 0.85 && marked <= 0.3 };
        if !sheet_shaped {
            return Sheet::None;
        }
        let mut colour: Vec<f32> = (0..self.v.len()).filter(|&i| region[i]).map(|i| self.v[i]).collect();
        let colour = percentile(&mut colour, 0.5);
        let sheet = Plane::new(bw, bh, |x, y| if filled(x0 + x, y0 + y) { self.at(x0 + x, y0 + y) } else { colour });
        if marks > 0 {
            return Sheet::Found(sheet);
        }
        // No dark mark on it: a sheet (maybe with faint marks, lighter than the split),
        // unless it may be a light digit's bar.
        let long = bw.max(bh) as f32 / bw.min(bh) as f32;
        if !(large || long <= 1.6) {
            return Sheet::None;
        }
        // Its rim left out: where the paper's edge meets the desk (and its shading, lit
        // unevenly, meets the crop's edge), no digit is drawn.
        let rim = (bw.min(bh) / 25).max(2);
        if bw <= 4 * rim || bh <= 4 * rim {
            return Sheet::None;
        }
        // Its light's steady gradient taken out: faint marks are judged against the paper
        // around them, not against a paper darker at one side.
        let inner = Plane::new(bw - 2 * rim, bh - 2 * rim, |x, y| sheet.at(x + rim, y + rim)).less_plane();
        Sheet::Unmarked { sheet: inner, percent: 100.0 * filled_area as f32 / (w * h) as f32 }
    }
}

/// What [`Plane::sheet`] finds.
enum Sheet {
    /// A sheet with marks on it: the image cut to it.
    Found(Plane),
    /// A sheet with no dark marks, covering this percentage of the image: the image cut to
    /// it, where faint marks may still be found.
    Unmarked {
        sheet: Plane,
        percent: f32,
    },
    /// No sheet: the image is taken as it is.
    None,
}

/// The ink of an image: intensities in `[0, 1]` (0 = background) and its bounding box.
struct Ink {
    levels: Plane,
    bbox: (u32, u32, u32, u32),
}

/// Steps 3 to 5 of the module's list; the error says why no digit was found.
fn extract_ink(gray: &Plane, split: f32) -> std::result::Result<Ink, String> {
    let (w, h) = (gray.w, gray.h);
    let invert = light_background(gray, split);
    let ink = Plane {
        w,
        h,
        v: gray.v.iter().map(|&v| if invert { 1.0 - v } else { v }).collect(),
    };
    // Ink covering most of the image is not a digit on a background (and the background
    // estimate below would absorb it). Judged on 4x4 block averages, where pixel noise
    // has faded and large regions have not, less the plane that fits them best, so that
    // a page lit unevenly from one side is not taken for ink.
    let coarse = ink.clone().shrunk_to((w.max(h) / 4).max(1)).less_plane();
    let split = otsu(&coarse.v);
    let (mut inked, mut ink_sum, mut rest_sum) = (0usize, 0.0f64, 0.0f64);
    for &v in &coarse.v {
        if v > split {
            (inked, ink_sum) = (inked + 1, ink_sum + f64::from(v));
        } else {
            rest_sum += f64::from(v);
        }
    }
    let rest = coarse.v.len() - inked;
    let contrast = if inked == 0 || rest == 0 { 0.0 } else { ink_sum / inked as f64 - rest_sum / rest as f64 };
    if inked as f32 > MAX_INK_FRACTION * coarse.v.len() as f32 && contrast > f64::from(MIN_CONTRAST) {
        return Err(covers(inked, coarse.v.len() as u32));
    }
    let background = background(&ink);
    let mut diff: Vec<f32> = ink.v.iter().zip(&background.v).map(|(i, b)| i - b).collect();
    let mut sigma = noise_deviation(&diff);
    // Ink must stand out from the noise by this many deviations.
    let mut clear_of_noise = 5.0;
    if sigma > NOISY {
        // A grainy photo: 3x3 averages keep strokes and cut pixel noise by about 3, but
        // make it blotchy, so the ink must then stand out further. Noise that is blotchy
        // already (uneven paper) is left as it is.
        let smooth = box_blur(w, h, &diff);
        let smooth_sigma = noise_deviation(&smooth);
        if smooth_sigma < 0.5 * sigma {
            (diff, sigma, clear_of_noise) = (smooth, smooth_sigma, 8.0);
        }
    }
    let peak = diff.iter().copied().fold(0.0f32, f32::max);
    if peak < MIN_CONTRAST {
        // Faint ink (a light pencil scan) is told from none.
        return Err(if peak < 1.0 / 255.0 {
            "no ink found".into()
        } else {
            format!(
                "no ink found: the strongest marks differ from the background by {:.1} of 255 levels, and ink must differ by {:.1} or more (raise the scan's contrast)",
                peak * 255.0,
                MIN_CONTRAST * 255.0
            )
        });
    }
    if peak < clear_of_noise * sigma {
        return Err(format!(
            "the image is too noisy: nothing stands out from the background's noise (deviation {:.0}% of the intensity range)",
            100.0 * sigma
        ));
    }
    let threshold = (0.25 * peak).max(3.0 * sigma);
    let mask: Vec<bool> = diff.iter().map(|&d| d > threshold).collect();
    let (labels, mut sizes) = components(w, h, &mask, true);
    // Marks along most of an edge are a frame, the desk or a shadow's edge, not a digit:
    // their components are left out (size 0).
    let along = along_edges(w, h, &labels, sizes.len());
    for (size, along) in sizes.iter_mut().zip(along) {
        if along {
            *size = 0;
        }
    }
    if sizes.iter().all(|&s| s == 0) {
        return Err("the only marks run along the image's edges (a frame, a desk or a shadow), no digit inside them".into());
    }
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let keep: Vec<bool> = sizes.iter().map(|&s| s > 0 && s >= 3.max(largest / 12)).collect();
    let kept: Vec<bool> = labels.iter().map(|&l| l != 0 && keep[l as usize]).collect();
    let count = kept.iter().filter(|&&k| k).count();
    if largest < MIN_INK_PIXELS {
        let pixels = if largest == 1 { "1 pixel".to_string() } else { format!("{largest} pixels") };
        return Err(format!("the ink is only specks (the largest mark is {pixels}), too small to be a digit"));
    }
    if count as f32 > MAX_INK_FRACTION * (w * h) as f32 {
        return Err(covers(count, w * h));
    }
    // Hysteresis (as in Canny's edge detector): the faint parts of a stroke that touch
    // its strong parts belong to it (a pen lifting, a light scan), noise apart from them
    // does not.
    let faint = (3.0 * sigma).max(FAINT * peak);
    let ink = grow(w, h, &kept, |i| diff[i] > faint);
    let bbox = bounding_box(w, &ink).ok_or("no ink found")?;
    // A solid blob (a dot, a filled square or disc) is not strokes: a digit's thickest
    // point is a small part of its size.
    let (bw, bh) = (bbox.2 - bbox.0 + 1, bbox.3 - bbox.1 + 1);
    let thickness = 2 * thickest(w, h, &ink);
    if thickness as f32 > MAX_THICKNESS * bw.max(bh) as f32 {
        return Err(format!(
            "the ink is a solid blob ({thickness} pixels thick, {} across), not a digit's strokes",
            bw.max(bh)
        ));
    }
    // Strokes as in MNIST: their cores saturate, their edges stay soft; background and
    // specks are 0.
    let mut strokes: Vec<f32> = diff.iter().zip(&kept).filter(|(_, k)| **k).map(|(d, _)| *d).collect();
    let strong = percentile(&mut strokes, 0.75).max(threshold);
    let floor = 0.5 * faint;
    let near = dilate(w, h, &ink);
    let levels = Plane::new(w, h, |x, y| {
        let i = (y * w + x) as usize;
        if near[i] { ((diff[i] - floor) / (strong - floor)).clamp(0.0, 1.0) } else { 0.0 }
    });
    Ok(Ink { levels, bbox })
}

fn covers(inked: usize, pixels: u32) -> String {
    format!("the ink covers {:.0}% of the image, more than a digit does", 100.0 * inked as f32 / pixels as f32)
}

/// For each component label (`labels` as [`components`] gives them), whether it lies
/// along most of one of the image's edges: it touches the edge over at least half of
/// the edge's length.
fn along_edges(w: u32, h: u32, labels: &[u32], count: usize) -> Vec<bool> {
    let (w, h) = (w as usize, h as usize);
    let mut touches = vec![[0usize; 4]; count];
    for x in 0..w {
        touches[labels[x] as usize][0] += 1;
        touches[labels[(h - 1) * w + x] as usize][1] += 1;
    }
    for y in 0..h {
        touches[labels[y * w] as usize][2] += 1;
        touches[labels[y * w + w - 1] as usize][3] += 1;
    }
    let mut out: Vec<bool> = touches.iter().map(|t| 2 * t[0].max(t[1]) >= w || 2 * t[2].max(t[3]) >= h).collect();
    if let Some(background) = out.first_mut() {
        *background = false; // label 0: not ink
    }
    out
}

/// Whether the background is the light end of the image: the border (its median) sits
/// above `split`, Otsu's threshold of the image's own values (the level that best splits
/// them in two). A dark digit on grey 127 and on grey 128, one dark dot on white, and a dark digit
/// on a page lit brighter in its middle are all dark ink on a light background.
fn light_background(gray: &Plane, split: f32) -> bool {
    percentile(&mut gray.border(), 0.5) > split
}

/// The noise's standard deviation in `diff` (an image less its background), estimated
/// robustly as 1.4826 times the median absolute deviation (the factor makes it the
/// standard deviation for Gaussian noise).
fn noise_deviation(diff: &[f32]) -> f32 {
    // Medians of an even sample of at most 2^14 pixels are close enough.
    let mut sample: Vec<f32> = diff.iter().step_by(diff.len().div_ceil(1 << 14).max(1)).copied().collect();
    let centre = percentile(&mut sample, 0.5);
    for d in &mut sample {
        *d = (*d - centre).abs();
    }
    1.4826 * percentile(&mut sample, 0.5)
}

/// The background of `ink` (ink high, background low), varying slowly across the image:
/// the 25th percentile of each block of a grid about 8 blocks across, then the median of
/// each 3x3 neighbourhood of blocks (a block filled by a stroke takes its neighbours'
/// value, and a steady gradient keeps its own), interpolated bilinearly between block
/// centres.
fn background(ink: &Plane) -> Plane {
    let (w, h) = (ink.w, ink.h);
    let size = w.max(h).div_ceil(8).max(4);
    let (gw, gh) = (w.div_ceil(size), h.div_ceil(size));
    let mut grid = Vec::with_capacity((gw * gh) as usize);
    let mut block = Vec::new();
    for by in 0..gh {
        for bx in 0..gw {
            block.clear();
            for y in by * size..((by + 1) * size).min(h) {
                for x in bx * size..((bx + 1) * size).min(w) {
                    block.push(ink.at(x, y));
                }
            }
            grid.push(percentile(&mut block, 0.25));
        }
    }
    let grid = Plane::new(gw, gh, |bx, by| {
        let mut neighbours = Vec::with_capacity(9);
        for y in by.saturating_sub(1)..(by + 2).min(gh) {
            for x in bx.saturating_sub(1)..(bx + 2).min(gw) {
                neighbours.push(grid[(y * gw + x) as usize]);
            }
        }
        // The lower median: along the image's edge a neighbourhood has 6 blocks, and a
        // tie between ink and background goes to the background.
        let k = (neighbours.len() - 1) / 2;
        *neighbours.select_nth_unstable_by(k, f32::total_cmp).1
    });
    // Block centres at ((b + 0.5) * size); clamped beyond the outer centres. The
    // coordinates are computed once per column and per row.
    let coordinates = |pixels: u32, blocks: u32| -> Vec<(u32, u32, f32)> {
        (0..pixels)
            .map(|p| {
                let g = ((p as f32 + 0.5) / size as f32 - 0.5).clamp(0.0, (blocks - 1) as f32);
                let i = (g as u32).min(blocks.saturating_sub(2)); // g >= 0: `as` floors
                (i, (i + 1).min(blocks - 1), g - i as f32)
            })
            .collect()
    };
    let (columns, rows) = (coordinates(w, gw), coordinates(h, gh));
    Plane::new(w, h, |x, y| {
        let ((x0, x1, fx), (y0, y1, fy)) = (columns[x as usize], rows[y as usize]);
        let top = grid.at(x0, y0) * (1.0 - fx) + grid.at(x1, y0) * fx;
        let bottom = grid.at(x0, y1) * (1.0 - fx) + grid.at(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    })
}

/// The `q`-quantile (`0..=1`) of `values` (reordered in place); 0 when empty.
fn percentile(values: &mut [f32], q: f64) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let k = ((values.len() - 1) as f64 * q).round() as usize;
    *values.select_nth_unstable_by(k, f32::total_cmp).1
}

/// Otsu's threshold of values in `[0, 1]` (256 bins): the level that best separates
/// them into two classes (Otsu 1979, maximal between-class variance).
fn otsu(values: &[f32]) -> f32 {
    let mut hist = [0u64; 256];
    for &v in values {
        hist[(v.clamp(0.0, 1.0) * 255.0 + 0.5) as usize] += 1; // not round(): a libm call
    }
    let total = values.len() as f64;
    let sum: f64 = hist.iter().enumerate().map(|(i, &n)| i as f64 * n as f64).sum();
    let (mut below, mut below_sum, mut best, mut level) = (0.0, 0.0, -1.0, 0usize);
    for (i, &n) in hist.iter().enumerate() {
        below += n as f64;
        below_sum += i as f64 * n as f64;
        let above = total - below;
        if below == 0.0 || above == 0.0 {
            continue;
        }
        let diff = below_sum / below - (sum - below_sum) / above;
        let between = below * above * diff * diff;
        if between > best {
            (best, level) = (between, i);
        }
    }
    (level as f32 + 0.5) / 255.0
}

/// Connected components of the `true` pixels of a `w` x `h` mask, 8-connected when
/// `diagonal`, else 4-connected: a label per pixel (0 = not in the mask, else `1..`)
/// and the size of each label (index 0 unused).
fn components(w: u32, h: u32, mask: &[bool], diagonal: bool) -> (Vec<u32>, Vec<usize>) {
    let mut labels = vec![0u32; mask.len()];
    let mut sizes = vec![0usize];
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32;
        let mut size = 0;
        labels[start] = label;
        stack.push(start);
        while let Some(i) = stack.pop() {
            size += 1;
            for j in neighbours(w, h, i, diagonal) {
                if mask[j] && labels[j] == 0 {
                    labels[j] = label;
                    stack.push(j);
                }
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

/// The indices of pixel `i`'s neighbours inside a `w` x `h` image: the 4 that share a
/// side, and the 4 diagonal ones when `diagonal`.
fn neighbours(w: u32, h: u32, i: usize, diagonal: bool) -> impl Iterator<Item = usize> {
    let (w, h) = (i64::from(w), i64::from(h));
    let (x, y) = (i as i64 % w, i as i64 / w);
    [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1)]
        .into_iter()
        .take(if diagonal { 8 } else { 4 })
        .map(move |(dx, dy)| (x + dx, y + dy))
        .filter(move |&(nx, ny)| (0..w).contains(&nx) && (0..h).contains(&ny))
        .map(move |(nx, ny)| (ny * w + nx) as usize)
}

/// `mask` grown, 8-connectedly, into every pixel `i` for which `admit(i)` holds.
fn grow(w: u32, h: u32, mask: &[bool], admit: impl Fn(usize) -> bool) -> Vec<bool> {
    let mut out = mask.to_vec();
    let mut stack: Vec<usize> = (0..mask.len()).filter(|&i| mask[i]).collect();
    while let Some(i) = stack.pop() {
        for j in neighbours(w, h, i, true) {
            if !out[j] && admit(j) {
                out[j] = true;
                stack.push(j);
            }
        }
    }
    out
}

/// The largest distance, in pixels, from a `true` pixel of the mask to the nearest
/// `false` one or the image's edge (8-connected steps; the radius of the thickest part).
fn thickest(w: u32, h: u32, mask: &[bool]) -> u32 {
    let (w, h) = (w as usize, h as usize);
    let mut d: Vec<u32> = mask.iter().map(|&m| u32::from(m)).collect();
    // Two passes of the chessboard distance transform (Rosenfeld and Pfaltz 1966).
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if d[i] == 0 {
                continue;
            }
            let up = |dx: isize| if y > 0 { x.checked_add_signed(dx).filter(|&nx| nx < w).map_or(0, |nx| d[i - w - x + nx]) } else { 0 };
            let left = if x > 0 { d[i - 1] } else { 0 };
            d[i] = 1 + left.min(up(-1)).min(up(0)).min(up(1));
        }
    }
    let mut most = 0;
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            let i = y * w + x;
            if d[i] == 0 {
                continue;
            }
            let down = |dx: isize| if y + 1 < h { x.checked_add_signed(dx).filter(|&nx| nx < w).map_or(0, |nx| d[i + w - x + nx]) } else { 0 };
            let right = if x + 1 < w { d[i + 1] } else { 0 };
            d[i] = d[i].min(1 + right.min(down(-1)).min(down(0)).min(down(1)));
            most = most.max(d[i]);
        }
    }
    most
}

/// The 3x3 average of each pixel (over the pixels inside the image), in two passes.
fn box_blur(w: u32, h: u32, v: &[f32]) -> Vec<f32> {
    let (w, h) = (w as usize, h as usize);
    let pass = |v: &[f32], step: usize, len: usize| -> Vec<f32> {
        (0..v.len())
            .map(|i| {
                let p = if step == 1 { i % w } else { i / w };
                let (lo, hi) = (p.saturating_sub(1), (p + 1).min(len - 1));
                (lo..=hi).map(|q| v[i + q * step - p * step]).sum::<f32>() / (hi - lo + 1) as f32
            })
            .collect()
    };
    pass(&pass(v, 1, w), w, h)
}

/// The mask grown by one pixel in every direction (3x3).
fn dilate(w: u32, h: u32, mask: &[bool]) -> Vec<bool> {
    let (w, h) = (w as usize, h as usize);
    let mut out = vec![false; mask.len()];
    for y in 0..h {
        for x in 0..w {
            if mask[y * w + x] {
                for oy in y.saturating_sub(1)..(y + 2).min(h) {
                    for ox in x.saturating_sub(1)..(x + 2).min(w) {
                        out[oy * w + ox] = true;
                    }
                }
            }
        }
    }
    out
}

/// The bounding box `(x0, y0, x1, y1)`, inclusive, of the `true` pixels of a mask of
/// width `w`; `None` when there are none.
fn bounding_box(w: u32, mask: &[bool]) -> Option<(u32, u32, u32, u32)> {
    let mut bbox: Option<(u32, u32, u32, u32)> = None;
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let (x, y) = (i as u32 % w, i as u32 / w);
        bbox = Some(match bbox {
            None => (x, y, x, y),
            Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
        });
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

    /// Every real digit is a digit: the bundled sample's 10,000 MNIST images, as they are
    /// (28x28, light on black), all preprocess (a bold 0 of the sample covering 41% of its
    /// image was refused as "ink covering most of the image" when `mnist serve`'s load
    /// benchmark sent it).
    #[test]
    fn every_digit_of_the_bundled_sample_is_accepted() {
        let data = sample();
        let mut refused = Vec::new();
        for (split, name) in [(&data.train, "train"), (&data.test, "test")] {
            for i in 0..split.len() {
                if let Err(e) = preprocess(&render(split.image(i), 1, 28, 0, 0, false), Path::new("digit")) {
                    refused.push(format!("{name} {i}: {e}"));
                }
            }
        }
        assert!(refused.is_empty(), "{} of 10,000 refused: {:?}", refused.len(), &refused[..refused.len().min(10)]);
    }

    /// A deterministic generator of values in `[-1, 1)` (xorshift), for noise.
    fn noise(seed: u64) -> impl FnMut() -> f32 {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// A sample digit as a photo of a page: scaled 8x (224 pixels) at `(dx, dy)` on a
    /// 300-pixel canvas whose paper has level `paper(x, y)` (0..=255), ink of level `ink`,
    /// plus noise of amplitude `noise_amp`.
    fn photo(pixels: &[u8; 784], dx: u32, dy: u32, ink: f32, paper: impl Fn(u32, u32) -> f32, noise_amp: f32, seed: u64) -> GrayImage {
        let small = GrayImage::from_fn(28, 28, |x, y| Luma([pixels[(y * 28 + x) as usize]]));
        let big = imageops::resize(&small, 224, 224, FilterType::Triangle);
        let mut rand = noise(seed);
        GrayImage::from_fn(300, 300, |x, y| {
            let a = if (dx..dx + 224).contains(&x) && (dy..dy + 224).contains(&y) {
                f32::from(big.get_pixel(x - dx, y - dy).0[0]) / 255.0
            } else {
                0.0
            };
            let v = paper(x, y) * (1.0 - a) + ink * a + noise_amp * rand();
            Luma([v.round().clamp(0.0, 255.0) as u8])
        })
    }

    fn sample() -> mnist_data::Dataset {
        mnist_data::Locator::offline(None).load(mnist_data::DatasetKind::Sample).unwrap()
    }

    /// The preprocessing of sample digit `i` as MNIST has it (light on black, 28x28).
    fn reference(data: &mnist_data::Dataset, i: usize) -> [u8; 784] {
        preprocess(&render(data.test.image(i), 1, 28, 0, 0, false), Path::new("reference")).unwrap()
    }

    /// Preprocesses each of 20 sample digits drawn by `draw` and holds it to the reference:
    /// every distance under 0.3, the mean under 0.15.
    fn assert_like_reference(what: &str, draw: impl Fn(&[u8; 784], usize) -> DynamicImage) {
        assert_near_reference(what, 0.3, 0.15, draw);
    }

    /// [`assert_like_reference`] with other bounds: every distance under `max`, the mean
    /// under `mean`.
    fn assert_near_reference(what: &str, max: f64, mean: f64, draw: impl Fn(&[u8; 784], usize) -> DynamicImage) {
        let data = sample();
        let mut sum = 0.0;
        for i in 0..20 {
            let got = preprocess(&draw(data.test.image(i), i), Path::new(what)).unwrap_or_else(|e| panic!("{what}, digit {i}: {e}"));
            let d = distance(&reference(&data, i), &got);
            assert!(d < max, "{what}, digit {i}: relative L1 distance {d}");
            sum += d;
        }
        assert!(sum / 20.0 < mean, "{what}: mean distance {}", sum / 20.0);
    }

    #[test]
    fn dark_ink_on_grey_is_found_on_either_side_of_mid_grey() {
        for (paper, ink, noise_amp) in [(127.0, 10.0, 0.0), (128.0, 10.0, 0.0), (100.0, 10.0, 12.0), (90.0, 30.0, 8.0), (160.0, 40.0, 10.0), (200.0, 60.0, 0.0), (255.0, 0.0, 0.0)] {
            assert_like_reference(&format!("ink {ink} on {paper}, noise {noise_amp}"), |digit, i| {
                DynamicImage::ImageLuma8(photo(digit, 30, 40, ink, |_, _| paper, noise_amp, i as u64))
            });
        }
        // A grainy photo: noise of deviation 25 (uniform, amplitude 43) on mid-grey,
        // smoothed before the ink is found, so its strokes come out softer.
        assert_near_reference("ink 10 on 128, noise deviation 25", 0.4, 0.2, |digit, i| {
            DynamicImage::ImageLuma8(photo(digit, 30, 40, 10.0, |_, _| 128.0, 43.0, i as u64))
        });
        // White strokes drawn on a transparent canvas, and black ones.
        for (ink, name) in [(255u8, "white strokes on a transparent canvas"), (0, "black strokes on a transparent canvas")] {
            assert_like_reference(name, |digit, i| {
                let alpha = photo(digit, 38, 38, 255.0, |_, _| 0.0, 0.0, i as u64);
                DynamicImage::ImageLumaA8(image::ImageBuffer::from_fn(300, 300, |x, y| image::LumaA([ink, alpha.get_pixel(x, y).0[0]])))
            });
        }
        // Light ink on a dark page, noisy.
        assert_like_reference("ink 230 on 60", |digit, i| DynamicImage::ImageLuma8(photo(digit, 40, 30, 230.0, |_, _| 60.0, 10.0, i as u64)));
    }

    #[test]
    fn uneven_lighting_is_removed_in_every_direction() {
        type Paper = fn(u32, u32) -> f32;
        let ramps: [(&str, Paper); 6] = [
            ("left to right", |x, _| 140.0 + 30.0 * x as f32 / 299.0),
            ("right to left", |x, _| 170.0 - 30.0 * x as f32 / 299.0),
            ("top to bottom", |_, y| 140.0 + 30.0 * y as f32 / 299.0),
            ("bottom to top", |_, y| 170.0 - 30.0 * y as f32 / 299.0),
            ("diagonal", |x, y| 140.0 + 30.0 * (x + y) as f32 / 598.0),
            ("lit centre", |x, y| 170.0 - 30.0 * ((x as f32 - 150.0).hypot(y as f32 - 150.0) / 212.0)),
        ];
        for (name, paper) in ramps {
            assert_like_reference(name, |digit, i| DynamicImage::ImageLuma8(photo(digit, 38, 38, 60.0, paper, 3.0, i as u64)));
        }
    }

    #[test]
    fn a_sheet_on_a_dark_desk_is_found() {
        for (desk, left, top, right, bottom) in [(35.0, 20, 20, 20, 20), (20.0, 36, 10, 5, 30), (50.0, 5, 33, 30, 8)] {
            let paper = move |x: u32, y: u32| if x < left || y < top || x >= 300 - right || y >= 300 - bottom { desk } else { 235.0 };
            assert_like_reference(&format!("sheet on a desk of {desk}"), |digit, i| {
                DynamicImage::ImageLuma8(photo(digit, 38, 38, 30.0, paper, 4.0, i as u64))
            });
        }
    }

    /// A blank sheet on a dark desk, or inside a thin dark frame, is said to be blank (the
    /// framed one was "the ink covers 92%", the smaller sheet was classified as a digit).
    #[test]
    fn a_blank_sheet_is_named_as_one() {
        for (name, margin) in [("thin frame", 3u32), ("desk", 40), ("wide desk", 60)] {
            let page = GrayImage::from_fn(200, 200, |x, y| Luma([if x < margin || y < margin || x >= 200 - margin || y >= 200 - margin { 30 } else { 235 }]));
            let err = preprocess(&DynamicImage::ImageLuma8(page), Path::new("sheet.png")).unwrap_err().to_string();
            assert!(err.contains("sheet.png: ") && err.contains("a blank sheet: a light region covering"), "{name}: {err}");
        }
        // Bold light bars on black (a 1 as MNIST draws them, light on dark), up to half as
        // wide as they are tall, are no sheets.
        for (side, (x0, x1), (y0, y1)) in [(100, (44, 56), (20, 80)), (200, (60, 140), (20, 180)), (28, (9, 19), (4, 24))] {
            let bar = GrayImage::from_fn(side, side, |x, y| Luma([if (x0..x1).contains(&x) && (y0..y1).contains(&y) { 255 } else { 0 }]));
            let err = preprocess(&DynamicImage::ImageLuma8(bar), Path::new("bar.png")).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!err.contains("blank sheet"), "{x0}..{x1} x {y0}..{y1} in {side}: {err}");
        }
    }

    /// A sheet on a dark desk with a digit too faint to fall below the photo's own split
    /// (pencil), or a bold 0 whose ring and inside take much of the sheet: the digit is
    /// read on the sheet (the pencil one was called a blank sheet, the 0 "ink covers 50%").
    #[test]
    fn faint_or_bold_digits_on_a_sheet_on_a_desk_are_read() {
        let paper = |x: u32, y: u32| if x < 45 || y < 30 || x >= 255 || y >= 270 { 45.0 } else { 225.0 };
        assert_like_reference("pencil (155 on 225), sheet on a desk", |digit, i| DynamicImage::ImageLuma8(photo(digit, 38, 38, 155.0, paper, 4.0, i as u64)));
        // A 0 drawn 10 pixels thick, 80 x 110, on a sheet of 140 x 160 in a photo of 200 x 200.
        let ring = GrayImage::from_fn(200, 200, |x, y| {
            let (dx, dy) = ((x as f32 - 100.0) / 35.0, (y as f32 - 100.0) / 50.0);
            let on_ring = ((dx * dx + dy * dy).sqrt() - 1.0).abs() * 42.0 < 5.0;
            let on_sheet = (30..170).contains(&x) && (20..180).contains(&y);
            Luma([if !on_sheet { 45 } else if on_ring { 40 } else { 220 }])
        });
        let digit = preprocess(&DynamicImage::ImageLuma8(ring), Path::new("ring.png")).unwrap();
        // Ink in a ring around an empty middle, as an MNIST 0.
        assert!(digit[14 * 28 + 14] < 50 && digit.iter().filter(|&&v| v > 128).count() > 60, "{digit:?}");
    }

    #[test]
    fn small_sheets_anywhere_and_strips_along_an_edge_leave_the_digit() {
        // A sheet of 45% of the photo's side (about 20% of its area), in a corner.
        let small_sheet = |x: u32, y: u32| if x >= 130 && y >= 130 && x < 295 && y < 295 { 235.0 } else { 40.0 };
        assert_like_reference("small sheet in a corner", |digit, i| {
            let page = photo(digit, 38, 38, 20.0, |_, _| 235.0, 0.0, i as u64);
            let small = imageops::resize(&page, 150, 150, FilterType::Triangle);
            DynamicImage::ImageLuma8(GrayImage::from_fn(300, 300, |x, y| {
                if (140..290).contains(&x) && (140..290).contains(&y) { *small.get_pixel(x - 140, y - 140) } else { Luma([small_sheet(x, y) as u8]) }
            }))
        });
        // A dark strip (the desk, a shadow) along one side of a white page.
        assert_like_reference("dark strip on the left", |digit, i| {
            DynamicImage::ImageLuma8(photo(digit, 50, 38, 20.0, |x, _| if x < 30 { 60.0 } else { 240.0 }, 2.0, i as u64))
        });
    }

    #[test]
    fn sixteen_bit_images_are_levelled_to_the_bits_they_use() {
        // A stuck pixel at full 16-bit white does not decide the depth of 12-bit data.
        assert_like_reference("12-bit data with a hot pixel", |digit, i| {
            let page = photo(digit, 38, 38, 20.0, |_, _| 220.0, 0.0, i as u64);
            let mut deep = image::ImageBuffer::from_fn(300, 300, |x, y| Luma([(f32::from(page.get_pixel(x, y).0[0]) / 255.0 * 4095.0).round() as u16]));
            deep.put_pixel(3, 290, Luma([u16::MAX]));
            DynamicImage::ImageLuma16(deep)
        });
        for bits in [10u32, 12, 14, 16] {
            let full = ((1u32 << bits) - 1) as f32;
            assert_like_reference(&format!("{bits}-bit data in 16 bits"), |digit, i| {
                let page = photo(digit, 38, 38, 20.0, |_, _| 220.0, 0.0, i as u64);
                let deep = image::ImageBuffer::from_fn(300, 300, |x, y| Luma([(f32::from(page.get_pixel(x, y).0[0]) / 255.0 * full).round() as u16]));
                DynamicImage::ImageLuma16(deep)
            });
        }
    }

    #[test]
    fn flat_pages_noise_and_specks_are_refused() {
        let mut rand = noise(7);
        let noisy = GrayImage::from_fn(200, 200, |_, _| Luma([(128.0 + 40.0 * rand()).round() as u8]));
        let mut dots = GrayImage::from_pixel(64, 64, Luma([255]));
        dots.put_pixel(30, 30, Luma([0]));
        let one_dot = dots.clone();
        for (x, y) in [(5, 9), (50, 12), (20, 55)] {
            dots.put_pixel(x, y, Luma([0]));
        }
        let mut rand = noise(9);
        let speckled = GrayImage::from_fn(100, 100, |x, y| {
            let inside = (3..97).contains(&x) && (3..97).contains(&y);
            Luma([if inside && rand() > -0.2 { 20 } else { 230 }])
        });
        let shape_on = |f: &dyn Fn(u32, u32) -> bool, ink: u8, paper: u8| GrayImage::from_fn(200, 200, |x, y| Luma([if f(x, y) { ink } else { paper }]));
        let shape = |f: &dyn Fn(u32, u32) -> bool| shape_on(f, 0, 255);
        for (name, image, needle) in [
            ("small square", shape(&|x, y| (100..104).contains(&x) && (90..94).contains(&y)), "solid blob"),
            ("square", shape(&|x, y| (60..100).contains(&x) && (70..110).contains(&y)), "solid blob"),
            ("disc", shape(&|x, y| (x as f32 - 80.0).hypot(y as f32 - 120.0) < 6.0), "solid blob"),
            ("large square", shape(&|x, y| (20..180).contains(&x) && (20..180).contains(&y)), "covers"),
            ("half and half", shape(&|x, _| x < 100), "covers"),
            ("dark strip on white", shape(&|x, _| x < 25), "along the image's edges"),
            ("flat grey", GrayImage::from_pixel(50, 40, Luma([128])), "no ink found"),
            ("white", GrayImage::from_pixel(50, 40, Luma([255])), "no ink found"),
            ("faint seven", shape_on(&|x, y| (40..160).contains(&x) && (30..50).contains(&y) || (120..140).contains(&x) && (30..170).contains(&y), 180, 200), "and ink must differ by 20.4 or more (raise the scan's contrast)"),
            ("noise", noisy, "too noisy"),
            ("one dot", one_dot, "the largest mark is 1 pixel"),
            ("four dots", dots, "specks"),
            ("speckled", speckled, "covers"),
        ] {
            let Err(err) = preprocess(&DynamicImage::ImageLuma8(image), Path::new(name)) else { panic!("{name}: answered") };
            assert!(matches!(err, Error::Blank { .. }), "{name}: {err}");
            assert!(err.to_string().contains(needle) && err.to_string().contains(name), "{name}: {err}");
        }
    }

    fn case(name: &str) -> DynamicImage {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cases/images").join(name);
        image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_reported_cases_preprocess_alike() {
        let get = |name: &str| preprocess(&case(name), Path::new(name)).unwrap_or_else(|e| panic!("{e}"));
        let (bg127, bg128) = (get("repro_seven_bg127.png"), get("repro_seven_bg128.png"));
        let (paper, desk) = (get("repro_seven_paper.png"), get("repro_seven_paper_on_desk.png"));
        for (a, b, what) in [(&bg127, &bg128, "grey 127 and 128"), (&paper, &desk, "sheet with and without the desk"), (&bg128, &paper, "grey page and sheet")] {
            let d = distance(a, b);
            assert!(d < 0.15, "{what}: relative L1 distance {d}");
        }
        // The 12-bit scan: a real digit's worth of ink, like the same data at 8 bits.
        let deep = case("d00_L0_gray16_12bit.png");
        let got = get("d00_L0_gray16_12bit.png");
        assert!(got.iter().filter(|&&v| v > 128).count() > 40, "12-bit scan: too little ink");
        let eight = DynamicImage::ImageLuma8(GrayImage::from_fn(deep.width(), deep.height(), |x, y| {
            Luma([(f32::from(deep.to_luma16().get_pixel(x, y).0[0]) / 4095.0 * 255.0).round().min(255.0) as u8])
        }));
        let d = distance(&got, &preprocess(&eight, Path::new("8-bit")).unwrap());
        assert!(d < 0.1, "12-bit scan vs its 8-bit version: {d}");
        let err = preprocess(&case("x_single_dot.png"), Path::new("x_single_dot.png")).unwrap_err();
        assert!(err.to_string().contains("too small to be a digit"), "{err}");
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
        // In memory (as served) as from a file: the same words.
        assert!(err.to_string().contains(NO_FORMAT), "{err}");
        // An empty file says so, rather than the decoder's "format could not be determined".
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.png"), b"").unwrap();
        for err in [preprocess_file(&dir.path().join("empty.png")).unwrap_err(), preprocess_bytes(b"", Path::new("empty.png")).unwrap_err()] {
            assert!(matches!(err, Error::Decode { .. }) && err.to_string().contains("empty.png: not a readable image (it is empty (0 bytes))"), "{err}");
        }
    }

    /// The grey plane as it was made before the strips: the whole image at full size,
    /// then averaged down (the levelling and the page behind are the shared
    /// [`white_of`], [`Page`] and [`luminance`]; what is held to it is the reading in
    /// strips and the averaging).
    fn whole_plane(image: &DynamicImage) -> Plane {
        let la = image.to_luma_alpha16();
        let full = if image.color().bytes_per_pixel() / image.color().channel_count() >= 2 {
            let mut by_bits = [0u64; 17];
            for p in la.pixels() {
                by_bits[(16 - p.0[0].leading_zeros()) as usize] += 1;
            }
            white_of(&by_bits, la.pixels().len() as u64)
        } else {
            f32::from(u16::MAX)
        };
        let mut page = Page::default();
        if image.color().has_alpha() {
            la.pixels().for_each(|p| page.count(p.0, full));
        }
        let behind = page.behind();
        Plane::new(la.width(), la.height(), |x, y| luminance(la.get_pixel(x, y).0, full, behind)).shrunk_to(WORK_SIDE)
    }

    /// Read in strips, an image gives the plane the whole image gave, bit for bit: 8- and
    /// 16-bit, grey and colour, with and without transparency, at sizes that are and are
    /// not averaged down (in blocks that do not divide the sides, several strips of them).
    #[test]
    fn images_read_in_strips_give_the_whole_images_plane() {
        let mut rand = noise(3);
        let mut values = move || ((rand() + 1.0) * 0.5 * 65535.0) as u16;
        for (w, h) in [(28, 28), (300, 200), (801, 799), (2501, 1203), (1100, 3307)] {
            let grey16 = image::ImageBuffer::from_fn(w, h, |x, y| Luma([if (x + y) % 7 == 0 { values() } else { (values() >> 4) | 9 }]));
            let rgba = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([(x % 251) as u8, (y % 13) as u8 * 19, ((x * y) % 256) as u8, if (x / 9 + y / 5) % 3 == 0 { 0 } else { 255 }]));
            let light_on_clear = image::ImageBuffer::from_fn(w, h, |x, y| image::LumaA([250u8, if (x + 2 * y) % 11 < 3 { 255 } else { 0 }]));
            for image in [DynamicImage::ImageLuma16(grey16), DynamicImage::ImageRgba8(rgba), DynamicImage::ImageLumaA8(light_on_clear)] {
                let strips = Plane::grayscale_shrunk(&image, WORK_SIDE);
                let whole = whole_plane(&image);
                assert_eq!((strips.w, strips.h), (whole.w, whole.h), "{w}x{h} {:?}", image.color());
                assert!(strips.v.iter().zip(&whole.v).all(|(a, b)| a.to_bits() == b.to_bits()), "{w}x{h} {:?}: planes differ", image.color());
            }
        }
    }

    /// A small file that decodes into more than the limit (a PNG of 10,000 x 10,000 white
    /// pixels of 16-bit RGBA, 800 MB, compresses to under 1 MB) is refused before it is
    /// decoded.
    #[test]
    fn an_image_too_large_once_decoded_is_refused_before_decoding() {
        let mut png = Vec::new();
        let img = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_pixel(1, 1, image::Rgba([65535; 4]));
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        png[16..20].copy_from_slice(&10_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&10_000u32.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = preprocess_bytes(&png, Path::new("bomb.png")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::TooLarge { .. }), "{text}");
        assert!(text.contains("10000x10000 pixels of Rgba16 decode into 763 MiB, more than the 256 MiB accepted"), "{text}");
    }

    #[test]
    fn a_file_cut_short_is_said_to_be() {
        // A digit as PNG and as binary PGM, each cut off in its header and in its pixels
        // (and the PGM one byte short): the decoders' own words ("failed to fill whole
        // buffer", "unexpected end of file") become one message. (A PNG missing only its
        // end marker still holds its whole image, and is read.)
        let digit = GrayImage::from_fn(28, 28, |x, y| Luma([if (10..18).contains(&x) && (4..24).contains(&y) { 0 } else { 255 }]));
        let mut png = Vec::new();
        digit.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let mut pgm = b"P5\n28 28\n255\n".to_vec();
        pgm.extend_from_slice(digit.as_raw());
        for (name, bytes, cuts) in [("seven.png", &png, vec![20, png.len() / 2]), ("seven.pgm", &pgm, vec![5, pgm.len() / 2, pgm.len() - 1])] {
            preprocess_bytes(bytes, Path::new(name)).unwrap_or_else(|e| panic!("{name} whole: {e}"));
            for cut in cuts {
                let err = preprocess_bytes(&bytes[..cut], Path::new(name)).unwrap_err();
                let text = err.to_string();
                assert!(matches!(err, Error::Decode { .. }) && text.contains(name) && text.contains("cut short"), "{name} cut at {cut}: {text}");
            }
        }
    }

    /// A PNG whose chunks are whole (its end marker there) but hold half its rows.
    #[test]
    fn a_png_with_too_few_rows_says_so() {
        let mut rows = Vec::new();
        for _ in 0..14 {
            rows.push(0u8); // filter type: none
            rows.extend_from_slice(&[255; 28]);
        }
        let mut idat = Vec::new();
        let mut z = flate2::write::ZlibEncoder::new(&mut idat, flate2::Compression::default());
        std::io::Write::write_all(&mut z, &rows).unwrap();
        z.finish().unwrap();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&28u32.to_be_bytes());
        ihdr.extend_from_slice(&28u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let png = [PNG_SIGNATURE.to_vec(), png_chunk(b"IHDR", &ihdr), png_chunk(b"IDAT", &idat), png_chunk(b"IEND", &[])].concat();
        let err = preprocess_bytes(&png, Path::new("short.png")).unwrap_err();
        assert!(err.to_string().contains("short.png: not a readable image (the file holds less image data than its header declares"), "{err}");
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
        // The sides are named, as for the other formats.
        assert!(err.to_string().contains("huge.png: image too large (20000x20000 pixels)"), "{err}");
    }

    /// A PNG's compressed ICC profile is inflated up to [`MAX_PNG_METADATA`] only: one
    /// claiming more (here 24 MiB of zeros, 24 KB compressed) is skipped, and the image
    /// read; a profile of a usual size is kept.
    #[test]
    fn a_pngs_metadata_is_inflated_within_its_own_bound() {
        use image::ImageEncoder;
        let digit = GrayImage::from_fn(28, 28, |x, y| Luma([if (10..18).contains(&x) && (4..24).contains(&y) { 0 } else { 255 }]));
        let png_with = |profile: Vec<u8>| {
            let mut png = Vec::new();
            let mut encoder = image::codecs::png::PngEncoder::new(&mut png);
            encoder.set_icc_profile(profile).unwrap();
            encoder.write_image(digit.as_raw(), 28, 28, image::ExtendedColorType::L8).unwrap();
            png
        };
        let bomb = png_with(vec![0; 24 << 20]);
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        assert_eq!(decoder(&bomb, Path::new("bomb.png")).unwrap().icc_profile().unwrap(), None);
        preprocess_bytes(&bomb, Path::new("bomb.png")).unwrap();
        // A metadata chunk stored as it is (not inflated) over the bound: named as such.
        let mut exif = png_with(vec![7; 100]);
        // After the signature and the header chunk (8 + 25 bytes).
        exif.splice(33..33, png_chunk(b"eXIf", &vec![0; 9 << 20]));
        let err = preprocess_bytes(&exif, Path::new("exif.png")).unwrap_err().to_string();
        assert!(err.contains("exif.png: not a readable image (a metadata chunk (EXIF, ICC profile or text) holds more than the 8 MiB accepted)"), "{err}");
        // The signature, then nothing a PNG holds.
        let mut zeros = PNG_SIGNATURE.to_vec();
        zeros.resize(200, 0);
        let err = preprocess_bytes(&zeros, Path::new("zeros.png")).unwrap_err().to_string();
        assert!(err.contains("zeros.png: not a readable image (it starts like a PNG, but its header chunk (IHDR) is not there"), "{err}");
        // A damaged byte in the header: the chunk named, not the decoder's debug text.
        let mut flipped = png_with(vec![7; 10]);
        flipped[16] ^= 0x40;
        let err = preprocess_bytes(&flipped, Path::new("flipped.png")).unwrap_err().to_string();
        assert!(err.contains("flipped.png: not a readable image (the checksum (CRC) of its IHDR chunk does not match its content: the file is damaged)"), "{err}");
        assert_eq!(without_chunk_debug("at ChunkType { type: tEXt, critical: false, private: false } chunk"), "at tEXt chunk");
        assert_eq!(without_chunk_debug("no chunk here"), "no chunk here");
        let usual = png_with(vec![7; 3_000]);
        assert_eq!(decoder(&usual, Path::new("usual.png")).unwrap().icc_profile().unwrap().map(|p| p.len()), Some(3_000));
    }

    /// A file is looked at before it is read whole: one that does not start like an image
    /// (even an endless one) is refused at once, one over [`MAX_FILE`] unread.
    #[test]
    fn image_files_are_read_only_as_far_as_needed() {
        let dir = tempfile::tempdir().unwrap();
        let notes = dir.path().join("notes.png");
        std::fs::write(&notes, "a shopping list: milk, eggs, flour, and something for the weekend".repeat(1000)).unwrap();
        let err = preprocess_file(&notes).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }) && err.to_string().contains("its first bytes are those of no image format"), "{err}");
        let err = preprocess_file(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err}");
        // A PNG signature, then a hole to past the limit (sparse: nothing is written).
        let big = dir.path().join("big.png");
        let file = std::fs::File::create(&big).unwrap();
        std::io::Write::write_all(&mut &file, PNG_SIGNATURE).unwrap();
        file.set_len(MAX_FILE + 1).unwrap();
        let err = preprocess_file(&big).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }) && err.to_string().contains("the file holds more than 256 MiB"), "{err}");
        assert!(matches!(preprocess_file(&dir.path().join("missing.png")), Err(Error::Read { .. })));
    }

    /// The eight bytes a PNG file starts with.
    const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

    /// A PNG chunk: length, kind, data and CRC.
    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(kind);
        chunk.extend_from_slice(data);
        let crc = crc32(&chunk[4..]);
        chunk.extend_from_slice(&crc.to_be_bytes());
        chunk
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
