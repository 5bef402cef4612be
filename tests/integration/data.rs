//! mnist-data against bad input, and over the real Fashion-MNIST files.

use std::io::Write;
use std::path::{Path, PathBuf};

use mnist_data::idx::{self, encode_images, encode_labels, gzip};
use mnist_data::{DEBIAN_FASHION_DIR, Dataset, DatasetKind, Error, FILES, Locator, Split};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
    path
}

fn images(n: usize) -> Vec<u8> {
    encode_images(&(0..n * 784).map(|i| (i % 256) as u8).collect::<Vec<_>>())
}

/// Runs the image parser on `bytes` written to a file named `name`; the error must name
/// the file.
fn parse_images(name: &str, bytes: &[u8]) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), name, bytes);
    let err = idx::read_images(&path).unwrap_err();
    assert!(err.to_string().contains(name), "error does not name the file: {err}");
    err
}

#[test]
fn empty_file() {
    let err = parse_images("empty-idx3-ubyte", b"");
    assert!(matches!(err, Error::Empty { .. }), "{err}");
}

#[test]
fn truncated_header() {
    let err = parse_images("short-idx3-ubyte", &images(1)[..10]);
    assert!(matches!(err, Error::TruncatedHeader { found: 10, expected: 16, .. }), "{err}");
    assert!(err.to_string().contains("expected at least 16"), "{err}");
}

#[test]
fn bad_magic() {
    // A label file given where images are expected.
    let err = parse_images("labels-idx1-ubyte", &encode_labels(&[1, 2, 3]));
    assert!(matches!(err, Error::BadMagic { found: 0x801, expected: 0x803, .. }), "{err}");
    assert!(err.to_string().contains("0x00000803"), "{err}");
}

#[test]
fn wrong_dimensions() {
    let mut bytes = images(1);
    bytes[8..12].copy_from_slice(&32u32.to_be_bytes());
    let err = parse_images("big-idx3-ubyte", &bytes);
    assert!(matches!(err, Error::BadDimensions { rows: 32, cols: 28, .. }), "{err}");
    assert!(err.to_string().contains("expected 28x28"), "{err}");
}

#[test]
fn count_larger_than_payload() {
    let mut bytes = images(2);
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    let err = parse_images("claims-3-idx3-ubyte", &bytes);
    assert!(matches!(err, Error::Truncated { count: 3, expected: 2352, found: 1568, .. }), "{err}");
    // The same inside gzip.
    let err = parse_images("claims-3-idx3-ubyte.gz", &gzip(&bytes));
    assert!(matches!(err, Error::Truncated { count: 3, .. }), "{err}");
}

#[test]
fn absurd_count_does_not_allocate() {
    let mut bytes = images(0);
    bytes[4..8].copy_from_slice(&4_000_000_000u32.to_be_bytes());
    bytes.extend_from_slice(&[0; 84]);
    let err = parse_images("huge-idx3-ubyte", &bytes);
    assert!(matches!(err, Error::Truncated { count: 4_000_000_000, found: 84, .. }), "{err}");
}

#[test]
fn trailing_bytes() {
    let mut bytes = images(2);
    bytes.push(0);
    let err = parse_images("long-idx3-ubyte", &bytes);
    assert!(matches!(err, Error::TrailingBytes { count: 2, .. }), "{err}");
}

#[test]
fn image_label_count_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = write(dir.path(), "i-idx3-ubyte", &images(3));
    let labels = write(dir.path(), "l-idx1-ubyte", &encode_labels(&[1, 2]));
    let err = Split::read(&imgs, &labels).unwrap_err();
    assert!(matches!(err, Error::CountMismatch { images: 3, labels: 2, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("i-idx3-ubyte") && msg.contains("l-idx1-ubyte"), "{msg}");
}

#[test]
fn label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "l-idx1-ubyte", &encode_labels(&[1, 12, 3]));
    let err = idx::read_labels(&path).unwrap_err();
    assert!(matches!(err, Error::BadLabel { index: 1, label: 12, .. }), "{err}");
}

#[test]
fn gz_name_on_a_plain_file_is_read_by_content() {
    // Compression is detected from the content, not the name: a raw file named .gz loads.
    let dir = tempfile::tempdir().unwrap();
    let raw = images(2);
    let path = write(dir.path(), "raw-idx3-ubyte.gz", &raw);
    assert_eq!(idx::read_images(&path).unwrap().len(), 2 * 784);
    // And a plain file of text named .gz is reported as what it is.
    let err = parse_images("garbage-idx3-ubyte.gz", b"hello, this is text not idx");
    assert!(matches!(err, Error::NotIdx { looks_like: "a text file", .. }), "{err}");
    // Binary garbage: a bad magic.
    let err = parse_images("garbage-idx3-ubyte.gz", &[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1]);
    assert!(matches!(err, Error::BadMagic { found: 0xdead_beef, .. }), "{err}");
}

#[test]
fn a_web_page_saved_under_a_gz_name_says_so() {
    let page = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n";
    for (name, bytes) in [("train-images-idx3-ubyte.gz", page.to_vec()), ("t10k-images-idx3-ubyte.gz", gzip(page))] {
        let err = parse_images(name, &bytes);
        assert!(matches!(err, Error::NotIdx { looks_like, .. } if looks_like.starts_with("an HTML page")), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("this looks like an HTML page") && msg.contains("not an IDX images file") && msg.contains("expected a gzip-compressed or raw IDX file (magic 0x00000803)"), "{msg}");
    }
}

#[test]
fn gzip_padded_to_a_block_or_in_members_loads() {
    let raw = images(3);
    let mut padded = gzip(&raw);
    padded.resize(10240, 0);
    let members = [gzip(&raw[..500]), gzip(&raw[500..])].concat();
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [("padded-idx3-ubyte.gz", padded.clone()), ("members-idx3-ubyte.gz", members)] {
        let path = write(dir.path(), name, &bytes);
        assert_eq!(idx::read_images(&path).unwrap(), &raw[16..], "{name}");
    }
    padded.push(b'x');
    let err = parse_images("junk-idx3-ubyte.gz", &padded);
    assert!(matches!(err, Error::GzipTrailingData { .. }), "{err}");
}

#[test]
fn gzip_of_garbage() {
    // gzip magic followed by garbage.
    let mut bytes = vec![0x1f, 0x8b, 0x08, 0x00];
    bytes.extend_from_slice(&[0xff; 40]);
    let err = parse_images("garbage-idx3-ubyte.gz", &bytes);
    assert!(matches!(err, Error::Gzip { .. }), "{err}");
    // A valid gzip stream cut in half: said to be cut short.
    let gz = gzip(&images(5));
    let err = parse_images("cut-idx3-ubyte.gz", &gz[..gz.len() / 2]);
    assert!(matches!(err, Error::GzipCutShort { .. }) && err.to_string().contains("cut short"), "{err}");
}

#[test]
fn missing_file_in_an_explicit_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "train-images-idx3-ubyte.gz", &gzip(&images(1)));
    let err = Locator::offline(Some(dir.path().to_path_buf())).load(DatasetKind::Mnist).unwrap_err();
    assert!(matches!(err, Error::MissingFile { file: "train-labels-idx1-ubyte", .. }), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn a_directory_with_the_wrong_number_of_images_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for f in &FILES {
        let bytes = match f.kind {
            mnist_data::IdxKind::Images => images(4),
            mnist_data::IdxKind::Labels => encode_labels(&[0, 1, 2, 3]),
        };
        write(dir.path(), &format!("{}.gz", f.name), &gzip(&bytes));
    }
    let err = Dataset::load_dir(DatasetKind::Mnist, dir.path()).unwrap_err();
    assert!(matches!(err, Error::UnexpectedCount { found: 4, expected: 60_000, .. }), "{err}");
}

#[test]
fn the_explicit_choice_of_mnist_never_falls_back() {
    let empty = tempfile::tempdir().unwrap();
    let locator = Locator::offline(Some(empty.path().to_path_buf()));
    assert!(locator.load_choice(mnist_data::DatasetChoice::Exactly(DatasetKind::Mnist)).is_err());
    // With no explicit directory, no cache and no network, Auto falls back with a notice.
    let loaded = Locator::offline(None).load_choice(mnist_data::DatasetChoice::Auto).unwrap();
    assert_eq!(loaded.dataset.kind, DatasetKind::Sample);
    let notice = loaded.notice.unwrap();
    assert!(notice.contains("bundled sample") && notice.contains("MNIST_DATA_DIR") && !notice.contains("--"), "{notice}");
}

#[test]
fn auto_falls_back_to_the_sample_and_says_which_cached_file_is_broken() {
    let root = tempfile::tempdir().unwrap();
    let cache = root.path().join("mnist");
    std::fs::create_dir(&cache).unwrap();
    for f in &FILES {
        let bytes = match (f.kind, f.split) {
            (mnist_data::IdxKind::Images, _) => images(2),
            (mnist_data::IdxKind::Labels, "train") => encode_labels(&[0, 1]),
            // Claims 2 labels, holds 1: a download cut short.
            (mnist_data::IdxKind::Labels, _) => encode_labels(&[0, 1])[..9].to_vec(),
        };
        write(&cache, &format!("{}.gz", f.name), &gzip(&bytes));
    }
    let locator = Locator {
        cache_root: Some(root.path().to_path_buf()),
        ..Locator::offline(None)
    };
    let loaded = locator.load_choice(mnist_data::DatasetChoice::Auto).unwrap();
    assert_eq!(loaded.dataset.kind, DatasetKind::Sample);
    let notice = loaded.notice.unwrap();
    let broken = cache.join("t10k-labels-idx1-ubyte.gz");
    assert!(notice.contains(&format!("{}: the header claims 2 labels", broken.display())), "{notice}");
    assert!(notice.contains("download: disabled"), "{notice}");
    assert!(notice.contains("bundled sample") && notice.contains("MNIST_DATA_DIR") && notice.contains(&cache.display().to_string()), "{notice}");
    assert!(notice.lines().count() <= 4, "{notice}");
}

#[test]
#[ignore = "needs Debian's Fashion-MNIST (apt-get install dataset-fashion-mnist); run with --include-ignored"]
fn real_fashion_mnist() {
    let dir = Path::new(DEBIAN_FASHION_DIR);
    assert!(dir.is_dir(), "{DEBIAN_FASHION_DIR} is missing: apt-get install dataset-fashion-mnist");
    let mut locator = Locator::offline(None);
    locator.system_dirs = true;
    let data = locator.load(DatasetKind::Fashion).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (60_000, 10_000));
    let mut counts = [0usize; 10];
    for &l in data.train.labels() {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [6_000; 10], "Fashion-MNIST has 6,000 training images per class");
    assert_eq!(data.class_names()[9], "Ankle boot");
    // The same content through the explicit-directory path gives the same digest.
    let again = Dataset::load_dir(DatasetKind::Fashion, dir).unwrap();
    assert_eq!(data.sha256(), again.sha256());
    // Its files have MNIST's names, sizes and format: loaded as MNIST, they are known by
    // their labels (the test split alone too).
    for splits in [mnist_data::Splits::Both, mnist_data::Splits::Test] {
        let err = Dataset::load_dir_splits(DatasetKind::Mnist, dir, splits).unwrap_err();
        assert!(matches!(err, Error::OtherDataset { .. }), "{err}");
        assert!(err.to_string().contains("t10k-labels-idx1-ubyte.gz: these are fashion's labels, not mnist's; load them as fashion"), "{err}");
    }
}

/// The files' images are what the network takes, and the datasets' classes what it
/// scores: mnist-data checks the files by its own `SIDE` (a fact of the format), the
/// network's input contract is mnist-model's, and the two must not drift apart.
#[test]
fn the_files_images_are_the_networks_input() {
    assert_eq!((mnist_data::SIDE, mnist_data::PIXELS), (mnist_model::input::SIDE, mnist_model::input::PIXELS));
    assert_eq!(mnist_data::CLASSES, mnist_model::CnnConfig::new().classes);
    for kind in [DatasetKind::Mnist, DatasetKind::Fashion, DatasetKind::Sample] {
        assert_eq!(kind.class_names().len(), mnist_data::CLASSES, "{kind}");
    }
}
