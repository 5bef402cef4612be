//! The IDX file format (LeCun's MNIST format), gzip-compressed or raw.
//!
//! Compression is detected from the content (the gzip magic `1f 8b`), never from the file
//! name. Parsing validates the magic, the 28x28 dimensions and the item count against the
//! payload: no truncation and no trailing bytes. Memory is bounded by what the file really
//! holds, never by what its header claims.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, IdxKind, Result};

/// Magic number of an IDX file of `u8` images (rank 3).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of `u8` labels (rank 1).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Image height and width.
pub const SIDE: usize = 28;
/// Pixels in one image.
pub const PIXELS: usize = SIDE * SIDE;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

impl IdxKind {
    fn magic(self) -> u32 {
        match self {
            IdxKind::Images => IMAGES_MAGIC,
            IdxKind::Labels => LABELS_MAGIC,
        }
    }

    fn header_len(self) -> usize {
        match self {
            IdxKind::Images => 16,
            IdxKind::Labels => 8,
        }
    }

    fn item_len(self) -> u64 {
        match self {
            IdxKind::Images => PIXELS as u64,
            IdxKind::Labels => 1,
        }
    }
}

/// Reads an IDX image file: returns the pixels of all images, row-major, `784` bytes each.
pub fn read_images(path: &Path) -> Result<Vec<u8>> {
    read_file(path, IdxKind::Images)
}

/// Reads an IDX label file: one byte per image, each in `0..=9`.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    read_file(path, IdxKind::Labels)
}

/// Parses IDX images held in memory; `name` is used in error messages.
pub fn parse_images(bytes: &[u8], name: &Path) -> Result<Vec<u8>> {
    parse(bytes, name, IdxKind::Images, bytes.len() as u64)
}

/// Parses IDX labels held in memory; `name` is used in error messages.
pub fn parse_labels(bytes: &[u8], name: &Path) -> Result<Vec<u8>> {
    parse(bytes, name, IdxKind::Labels, bytes.len() as u64)
}

fn read_file(path: &Path, kind: IdxKind) -> Result<Vec<u8>> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    parse(BufReader::new(file), path, kind, len)
}

/// Parses one IDX stream. `stored_len` is the number of bytes stored (compressed or not);
/// it only bounds the first allocation.
fn parse<R: Read>(reader: R, path: &Path, kind: IdxKind, stored_len: u64) -> Result<Vec<u8>> {
    let mut reader = io::BufReader::new(reader);
    let mut first = [0u8; 2];
    let n = read_full(&mut reader, &mut first).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let head = io::Cursor::new(first[..n].to_vec()).chain(reader);
    if n == 2 && first == GZIP_MAGIC {
        let decoder = MultiGzDecoder::new(head);
        parse_plain(decoder, path, kind, stored_len, true)
    } else {
        parse_plain(head, path, kind, stored_len, false)
    }
}

fn parse_plain<R: Read>(
    mut reader: R,
    path: &Path,
    kind: IdxKind,
    stored_len: u64,
    gzip: bool,
) -> Result<Vec<u8>> {
    let read_err = |source: io::Error| {
        if gzip {
            Error::Gzip {
                path: path.to_path_buf(),
                source,
            }
        } else {
            Error::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };

    let mut header = [0u8; 16];
    let header = &mut header[..kind.header_len()];
    let found = read_full(&mut reader, header).map_err(read_err)?;
    if found == 0 {
        return Err(Error::Empty {
            path: path.to_path_buf(),
            kind,
        });
    }
    let word = |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    // The magic first, as soon as it is there: the wrong kind of file says so.
    if found >= 4 && word(0) != kind.magic() {
        return Err(Error::BadMagic {
            path: path.to_path_buf(),
            kind,
            found: word(0),
            expected: kind.magic(),
        });
    }
    if found < header.len() {
        return Err(Error::TruncatedHeader {
            path: path.to_path_buf(),
            kind,
            found,
            expected: header.len(),
        });
    }
    let count = word(4);
    if kind == IdxKind::Images {
        let (rows, cols) = (word(8), word(12));
        if rows as usize != SIDE || cols as usize != SIDE {
            return Err(Error::BadDimensions {
                path: path.to_path_buf(),
                rows,
                cols,
            });
        }
    }

    let expected = u64::from(count) * kind.item_len();
    // Allocate at most what the stored bytes can hold (a raw file holds itself; gzip
    // rarely compresses these files by more than 10x); the vector grows if it must.
    let bound = if gzip { stored_len.saturating_mul(10) } else { stored_len };
    let capacity = expected.min(bound).min(usize::MAX as u64) as usize;
    let mut payload = Vec::with_capacity(capacity);
    (&mut reader)
        .take(expected)
        .read_to_end(&mut payload)
        .map_err(read_err)?;
    if (payload.len() as u64) < expected {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            kind,
            count,
            expected,
            found: payload.len() as u64,
        });
    }
    let mut extra = [0u8; 1];
    if read_full(&mut reader, &mut extra).map_err(read_err)? != 0 {
        return Err(Error::TrailingBytes {
            path: path.to_path_buf(),
            kind,
            count,
            expected,
        });
    }
    if kind == IdxKind::Labels
        && let Some((index, &label)) = payload.iter().enumerate().find(|(_, l)| **l > 9)
    {
        return Err(Error::BadLabel {
            path: path.to_path_buf(),
            index,
            label,
        });
    }
    Ok(payload)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Encodes images (`784` bytes each, row-major) as a raw IDX image file.
///
/// # Panics
/// If `pixels.len()` is not a multiple of 784 or the count does not fit in `u32`.
pub fn encode_images(pixels: &[u8]) -> Vec<u8> {
    assert_eq!(pixels.len() % PIXELS, 0, "pixels must be whole 28x28 images");
    let count = u32::try_from(pixels.len() / PIXELS).expect("image count fits in u32");
    let mut out = Vec::with_capacity(16 + pixels.len());
    for word in [IMAGES_MAGIC, count, SIDE as u32, SIDE as u32] {
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// Encodes labels as a raw IDX label file.
///
/// # Panics
/// If the count does not fit in `u32`.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let count = u32::try_from(labels.len()).expect("label count fits in u32");
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(labels);
    out
}

/// Gzip-compresses bytes at the best level, with no timestamp (reproducible output).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> &'static Path {
        Path::new("mem.idx")
    }

    proptest! {
        #[test]
        fn images_round_trip(pixels in proptest::collection::vec(any::<u8>(), 0..(PIXELS * 4)), gz in any::<bool>()) {
            let whole = pixels.len() / PIXELS * PIXELS;
            let pixels = &pixels[..whole];
            let encoded = encode_images(pixels);
            let bytes = if gz { gzip(&encoded) } else { encoded };
            prop_assert_eq!(parse_images(&bytes, name()).unwrap(), pixels);
        }

        #[test]
        fn labels_round_trip(labels in proptest::collection::vec(0u8..10, 0..500), gz in any::<bool>()) {
            let encoded = encode_labels(&labels);
            let bytes = if gz { gzip(&encoded) } else { encoded };
            prop_assert_eq!(parse_labels(&bytes, name()).unwrap(), labels);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = parse_images(&bytes, name());
            let _ = parse_labels(&bytes, name());
            let _ = parse_images(&gzip(&bytes), name());
        }
    }

    #[test]
    fn huge_count_in_tiny_file_is_an_error_not_an_allocation() {
        let mut bytes = encode_images(&[]);
        bytes[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&[0u8; 84]);
        let err = parse_images(&bytes, name()).unwrap_err();
        assert!(matches!(err, Error::Truncated { count: u32::MAX, found: 84, .. }), "{err}");
        let err = parse_images(&gzip(&bytes), name()).unwrap_err();
        assert!(matches!(err, Error::Truncated { count: u32::MAX, found: 84, .. }), "{err}");
    }
}
