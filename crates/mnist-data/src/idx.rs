//! The IDX file format (LeCun's MNIST format), gzip-compressed or raw.
//!
//! Compression is detected from the content (the gzip magic `1f 8b`), never from the file
//! name. A gzip file may hold several members (one stream, as for `zcat`) and zero padding
//! after the last one (tape or block padding); anything else after it is an error. Parsing
//! validates the magic, the 28x28 dimensions and the item count against the payload: no
//! truncation and no trailing bytes. A file that is recognisably something else (a web page,
//! an archive, text) says so. Memory is bounded by what the file really holds, never by what
//! its header claims.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::GzDecoder;

use crate::error::{Error, IdxKind, Result};

/// Magic number of an IDX file of `u8` images (rank 3).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of `u8` labels (rank 1).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Image height and width of the MNIST and Fashion-MNIST files, which the reader checks
/// (a fact of the file format; what the network takes is `mnist_model::input`, which the
/// integration tests hold equal to it).
pub const SIDE: usize = 28;
/// Pixels in one image of the files.
pub const PIXELS: usize = SIDE * SIDE;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

impl IdxKind {
    pub(crate) fn magic(self) -> u32 {
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
    let file = mnist_fs::open_file(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    parse(file, path, kind, len)
}

/// Parses one IDX stream. `stored_len` is the number of bytes stored (compressed or not);
/// it only bounds the first allocation.
fn parse<R: Read>(reader: R, path: &Path, kind: IdxKind, stored_len: u64) -> Result<Vec<u8>> {
    let mut reader = BufReader::new(reader);
    let mut first = [0u8; 2];
    let n = read_full(&mut reader, &mut first).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let head = io::Cursor::new(&first[..n]).chain(reader);
    if n == 2 && first == GZIP_MAGIC {
        let members = GzipMembers {
            member: Some(GzDecoder::new(head)),
        };
        parse_plain(members, path, kind, stored_len, true)
    } else {
        parse_plain(head, path, kind, stored_len, false)
    }
}

/// Decodes gzip members one after another, as `gzip -d` does: concatenated members are
/// one stream, and zero bytes after the last member (tape or block padding) are ignored.
/// Anything else after a member is an error ([`TrailingData`]).
struct GzipMembers<R: BufRead> {
    /// The member being decoded; `None` once the stream has ended.
    member: Option<GzDecoder<R>>,
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(mut member) = self.member.take() {
            match member.read(buf) {
                Ok(0) if !buf.is_empty() => {
                    let mut rest = member.into_inner();
                    if another_member(&mut rest)? {
                        self.member = Some(GzDecoder::new(rest));
                    }
                }
                other => {
                    self.member = Some(member);
                    return other;
                }
            }
        }
        Ok(0)
    }
}

/// Looks at what follows a gzip member: `true` when another member starts, `false` at the
/// end of the stream or when only zero bytes remain (consumed as a stream, never held).
fn another_member<R: BufRead>(reader: &mut R) -> io::Result<bool> {
    let (mut trailing, mut zeros_only) = (0u64, true);
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        // The next member's header checks the rest of its magic.
        if trailing == 0 && buf[0] == GZIP_MAGIC[0] {
            return Ok(true);
        }
        zeros_only &= buf.iter().all(|&b| b == 0);
        let n = buf.len();
        reader.consume(n);
        trailing += n as u64;
    }
    if zeros_only {
        Ok(false)
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, TrailingData(trailing)))
    }
}

/// Bytes after the last gzip member that are neither another member nor zero padding.
#[derive(Debug)]
struct TrailingData(u64);

impl std::fmt::Display for TrailingData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes of trailing data after the gzip stream that are not zero padding", self.0)
    }
}

impl std::error::Error for TrailingData {}

/// Whether a decompressor's error says its input stopped before the stream's end (flate2
/// says "incomplete deflate stream", or gives an unexpected end of file).
fn cut_short(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof || e.to_string().contains("incomplete deflate stream")
}

/// Bytes read ahead of the header: enough to recognise what a file that is not IDX is.
const SNIFF_LEN: usize = 512;

fn parse_plain<R: Read>(
    mut reader: R,
    path: &Path,
    kind: IdxKind,
    stored_len: u64,
    gzip: bool,
) -> Result<Vec<u8>> {
    let read_err = |source: io::Error| {
        let path = path.to_path_buf();
        if !gzip {
            Error::Io { path, source }
        } else if let Some(TrailingData(bytes)) = source.get_ref().and_then(|e| e.downcast_ref::<TrailingData>()) {
            Error::GzipTrailingData { path, bytes: *bytes }
        } else if cut_short(&source) {
            Error::GzipCutShort { path }
        } else {
            Error::Gzip { path, source }
        }
    };

    let mut head = [0u8; SNIFF_LEN];
    let found = read_full(&mut reader, &mut head).map_err(read_err)?;
    let head = &head[..found];
    if found == 0 {
        return Err(Error::Empty {
            path: path.to_path_buf(),
            kind,
        });
    }
    let word = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    // The magic first, as soon as it is there: the wrong kind of file says so.
    if found >= 4 && word(0) != kind.magic() {
        return Err(match sniff(head) {
            Some(looks_like) => Error::NotIdx {
                path: path.to_path_buf(),
                kind,
                looks_like,
                compressed: gzip,
            },
            None => Error::BadMagic {
                path: path.to_path_buf(),
                kind,
                found: word(0),
                expected: kind.magic(),
            },
        });
    }
    if found < kind.header_len() {
        return Err(Error::TruncatedHeader {
            path: path.to_path_buf(),
            kind,
            found,
            expected: kind.header_len(),
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
    let mut rest = (&head[kind.header_len()..]).chain(reader);
    (&mut rest)
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
    if read_full(&mut rest, &mut extra).map_err(read_err)? != 0 {
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

/// What the first bytes of a file that is not IDX look like, when they are recognisable:
/// for [`Error::NotIdx`].
fn sniff(head: &[u8]) -> Option<&'static str> {
    const SIGNATURES: [(&[u8], &str); 12] = [
        (b"PK\x03\x04", "a zip archive"),
        (b"PK\x05\x06", "an empty zip archive"),
        (b"BZh", "a bzip2-compressed file"),
        (b"\xfd7zXZ\x00", "an xz-compressed file"),
        (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
        (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
        (b"Rar!\x1a\x07", "a RAR archive"),
        (b"\x1f\x8b", "gzip-compressed data (the file is compressed twice)"),
        (b"\x89PNG\r\n\x1a\n", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"%PDF-", "a PDF document"),
        (b"version https://git-lfs", "a Git LFS pointer (the real file was never fetched: run `git lfs pull`)"),
    ];
    if let Some(&(_, what)) = SIGNATURES.iter().find(|(magic, _)| head.starts_with(magic)) {
        return Some(what);
    }
    if head.get(257..262) == Some(&b"ustar"[..]) {
        return Some("a tar archive");
    }
    let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head).trim_ascii_start();
    let starts = |prefix: &str| text.get(..prefix.len()).is_some_and(|t| t.eq_ignore_ascii_case(prefix.as_bytes()));
    if ["<!doctype", "<html", "<head", "<body"].into_iter().any(starts) {
        Some("an HTML page (perhaps a download that returned a web page)")
    } else if starts("<?xml") {
        Some("an XML document (perhaps an error response from a download server)")
    } else if starts("{") || starts("[") {
        Some("a JSON document (perhaps an error response from a download server)")
    } else if is_text(head) {
        Some("a text file")
    } else {
        None
    }
}

/// True when `head` is UTF-8 text (possibly cut inside its last character) with no
/// control character other than tab, line feed and carriage return.
fn is_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default(),
        Err(_) => return false,
    };
    valid.chars().all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
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

    /// `bytes` followed by zeros up to the next multiple of `block` past their end.
    fn padded(mut bytes: Vec<u8>, block: usize) -> Vec<u8> {
        bytes.resize((bytes.len() / block + 1) * block, 0);
        bytes
    }

    /// `bytes` as two gzip members, split at `at`.
    fn two_members(bytes: &[u8], at: usize) -> Vec<u8> {
        [gzip(&bytes[..at]), gzip(&bytes[at..])].concat()
    }

    fn pixels(n: usize) -> Vec<u8> {
        (0..n * PIXELS).map(|i| (i * 7 % 256) as u8).collect()
    }

    proptest! {
        #[test]
        fn members_and_zero_padding_are_one_stream(labels in proptest::collection::vec(0u8..10, 0..300), at in any::<proptest::sample::Index>(), block in prop_oneof![Just(0usize), Just(512), Just(10240)]) {
            let encoded = encode_labels(&labels);
            let mut bytes = two_members(&encoded, at.index(encoded.len() + 1));
            if block > 0 {
                bytes = padded(bytes, block);
            }
            prop_assert_eq!(parse_labels(&bytes, name()).unwrap(), labels);
        }
    }

    #[test]
    fn zero_padding_to_a_block_is_ignored() {
        let pixels = pixels(3);
        for block in [512, 10240] {
            let bytes = padded(gzip(&encode_images(&pixels)), block);
            assert_eq!(bytes.len() % block, 0);
            assert_eq!(parse_images(&bytes, name()).unwrap(), pixels, "padded to {block}");
            let bytes = padded(two_members(&encode_images(&pixels), 1000), block);
            assert_eq!(parse_images(&bytes, name()).unwrap(), pixels, "two members padded to {block}");
        }
    }

    #[test]
    fn a_payload_split_across_members_is_read_whole() {
        let pixels = pixels(2);
        let encoded = encode_images(&pixels);
        // Split inside the header, and inside the pixels.
        for at in [3, 16, 900] {
            assert_eq!(parse_images(&two_members(&encoded, at), name()).unwrap(), pixels, "split at {at}");
        }
        let three = [gzip(&encoded[..10]), gzip(&[]), gzip(&encoded[10..])].concat();
        assert_eq!(parse_images(&three, name()).unwrap(), pixels);
    }

    #[test]
    fn trailing_data_after_the_gzip_stream_is_an_error() {
        let gz = gzip(&encode_labels(&[1, 2, 3]));
        assert!(gz.len() < 512);
        let zeros_then_one = [&padded(gz.clone(), 512)[..], &[1]].concat();
        let zeros_then_member = [&padded(gz.clone(), 512)[..], &gz[..]].concat();
        for (tail, bytes) in [(4, [&gz[..], b"junk"].concat()), (513 - gz.len(), zeros_then_one), (512, zeros_then_member)] {
            let err = parse_labels(&bytes, name()).unwrap_err();
            assert!(matches!(err, Error::GzipTrailingData { bytes: n, .. } if n == tail as u64), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("mem.idx") && msg.contains(&format!("{tail} bytes of trailing data")) && msg.contains("not zero padding"), "{msg}");
        }
    }

    #[test]
    fn a_corrupt_or_cut_member_is_still_a_gzip_error() {
        let encoded = encode_images(&pixels(2));
        let members = two_members(&encoded, 100);
        let err = parse_images(&members[..members.len() - 5], name()).unwrap_err();
        assert!(matches!(err, Error::GzipCutShort { .. }) && err.to_string().contains("cut short"), "{err}");
        // Cut anywhere in its data, a single member says the same.
        let one = gzip(&encoded);
        for cut in [12, one.len() / 2, one.len() - 9] {
            let err = parse_images(&one[..cut], name()).unwrap_err();
            assert!(matches!(err, Error::GzipCutShort { .. }), "cut at {cut} of {}: {err}", one.len());
        }
        // A second member whose header is broken.
        let mut bad = members.clone();
        let first_len = gzip(&encoded[..100]).len();
        bad[first_len + 1] = 0x00;
        let err = parse_images(&bad, name()).unwrap_err();
        assert!(matches!(err, Error::Gzip { .. }), "{err}");
        // A flipped bit in the data of the first member.
        let mut bad = members;
        bad[20] ^= 0x55;
        let err = parse_images(&bad, name()).unwrap_err();
        assert!(matches!(err, Error::Gzip { .. }), "{err}");
    }

    #[test]
    fn content_that_is_not_idx_is_named() {
        let mut tar = b"train-images-idx3-ubyte".to_vec();
        tar.resize(257, 0);
        tar.extend_from_slice(b"ustar\x0000");
        tar.resize(1024, 0);
        let cases: [(&[u8], &str); 12] = [
            (b"\xef\xbb\xbf \r\n<!DOCTYPE html><html><body>Not Found</body></html>", "an HTML page"),
            (b"<HTML><HEAD><TITLE>301 Moved</TITLE></HEAD></HTML>", "an HTML page"),
            (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code></Error>", "an XML document"),
            (b"{\"message\": \"rate limited\"}", "a JSON document"),
            (b"  [1, 2, 3]", "a JSON document"),
            (b"404: Not Found\n", "a text file"),
            ("Fichier non trouv\u{e9} \u{2014} r\u{e9}essayez".as_bytes(), "a text file"),
            (b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "a zip archive"),
            (b"BZh91AY&SY\x00\x01", "a bzip2-compressed file"),
            (b"\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4\x46", "an xz-compressed file"),
            (b"\x28\xb5\x2f\xfd\x04\x58\x00\x00", "a zstd-compressed file"),
            (&tar, "a tar archive"),
        ];
        for (bytes, what) in cases {
            for gz in [false, true] {
                let bytes = if gz { gzip(bytes) } else { bytes.to_vec() };
                let err = parse_images(&bytes, name()).unwrap_err();
                assert!(matches!(err, Error::NotIdx { looks_like, compressed, kind: IdxKind::Images, .. } if looks_like.starts_with(what) && compressed == gz), "{what}: {err}");
                let msg = err.to_string();
                assert!(msg.starts_with("mem.idx: ") && msg.contains(&format!("this looks like {what}")) && msg.contains("not an IDX images file") && msg.contains("0x00000803"), "{msg}");
                assert_eq!(gz, msg.contains("once decompressed"), "{msg}");
            }
        }
        let err = parse_labels(&[0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', 0, 0, 0, 13], name()).unwrap_err();
        assert!(err.to_string().contains("a PNG image, not an IDX labels file") && err.to_string().contains("0x00000801"), "{err}");
        // Gzip inside gzip.
        let err = parse_labels(&gzip(&gzip(&encode_labels(&[1]))), name()).unwrap_err();
        assert!(err.to_string().contains("compressed twice"), "{err}");
    }

    #[test]
    fn unrecognised_bytes_and_the_other_idx_kind_are_a_bad_magic() {
        let err = parse_images(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1, 0x80], name()).unwrap_err();
        assert!(matches!(err, Error::BadMagic { found: 0xdeadbeef, .. }), "{err}");
        let err = parse_images(&gzip(&encode_labels(&[1, 2])), name()).unwrap_err();
        assert!(matches!(err, Error::BadMagic { found: LABELS_MAGIC, expected: IMAGES_MAGIC, .. }), "{err}");
        assert!(err.to_string().contains("0x00000801 (that of an IDX labels file), expected 0x00000803"), "{err}");
        let err = parse_labels(&encode_images(&pixels(1)), name()).unwrap_err();
        assert!(err.to_string().contains("(that of an IDX images file)"), "{err}");
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
        assert!(err.to_string().contains("cut short") && err.to_string().contains("or its header is wrong"), "{err}");
    }
}
