//! Datasets, splits and their files.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::idx::{self, PIXELS};

/// Which dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// LeCun's handwritten digits, 60,000 train / 10,000 test.
    Mnist,
    /// Zalando's Fashion-MNIST, same format and sizes, clothing classes.
    Fashion,
    /// The bundled 10,000 real MNIST digits, 8,000 train / 2,000 test.
    Sample,
}

/// SHA-256 of Fashion-MNIST's 10,000 test labels (the label bytes of
/// `t10k-labels-idx1-ubyte`, without its header), to tell its files from MNIST's.
const FASHION_TEST_LABELS_SHA256: &str = "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9";

const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
const FASHION: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

impl DatasetKind {
    /// All kinds.
    pub const ALL: [DatasetKind; 3] = [DatasetKind::Mnist, DatasetKind::Fashion, DatasetKind::Sample];

    /// Lower-case name, as on the command line and in the cache directory.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::Fashion => "fashion",
            DatasetKind::Sample => "sample",
        }
    }

    /// The names of the ten classes, by label.
    pub fn class_names(self) -> &'static [&'static str; 10] {
        match self {
            DatasetKind::Mnist | DatasetKind::Sample => &DIGITS,
            DatasetKind::Fashion => &FASHION,
        }
    }

    /// Number of images in the train and test splits.
    pub fn split_sizes(self) -> (usize, usize) {
        match self {
            DatasetKind::Mnist | DatasetKind::Fashion => (60_000, 10_000),
            DatasetKind::Sample => (8_000, 2_000),
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown dataset {s:?}; expected mnist, fashion or sample")))
    }
}

/// One of the four files of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpec {
    /// Base name without `.gz`, e.g. `train-images-idx3-ubyte`.
    pub name: &'static str,
    /// `train` or `test`.
    pub split: &'static str,
    /// Images or labels.
    pub kind: crate::IdxKind,
}

/// The four files every dataset consists of, in the order train images, train labels,
/// test images, test labels.
pub const FILES: [FileSpec; 4] = [
    FileSpec { name: "train-images-idx3-ubyte", split: "train", kind: crate::IdxKind::Images },
    FileSpec { name: "train-labels-idx1-ubyte", split: "train", kind: crate::IdxKind::Labels },
    FileSpec { name: "t10k-images-idx3-ubyte", split: "test", kind: crate::IdxKind::Images },
    FileSpec { name: "t10k-labels-idx1-ubyte", split: "test", kind: crate::IdxKind::Labels },
];

impl FileSpec {
    /// The names the file is found under, in order of preference: `NAME.gz`, `NAME`, then
    /// the same with a dot before `idx` (`train-images.idx3-ubyte`, as some mirrors and
    /// Kaggle name them).
    pub fn accepted_names(&self) -> [String; 4] {
        let dotted = self.name.replacen("-idx", ".idx", 1);
        [format!("{}.gz", self.name), self.name.to_string(), format!("{dotted}.gz"), dotted]
    }

    /// Entries of `dir` that look like this file under a name or format that is not read:
    /// `train-images-idx3-ubyte.zip`, `train-images-idx3-ubyte (1).gz`,
    /// `emnist-digits-train-images-idx3-ubyte`, a directory `train-images-idx3-ubyte/`.
    /// Sorted; empty when `dir` cannot be listed.
    pub(crate) fn near_misses(&self, dir: &Path) -> Vec<String> {
        let splits: &[&str] = if self.split == "train" { &["train"] } else { &["t10k", "test"] };
        let keys: Vec<String> = splits.iter().map(|split| format!("{split}{}", self.kind)).collect();
        let mut found: Vec<String> = entries(dir)
            .filter(|(name, _)| {
                let squashed: String = name.to_lowercase().chars().filter(|c| !matches!(c, '-' | '_' | '.' | ' ')).collect();
                keys.iter().any(|key| squashed.contains(key.as_str()))
            })
            .map(|(name, path)| if path.is_dir() { format!("{name}/") } else { name })
            .collect();
        found.sort();
        found
    }
}

/// The path of `file` inside `dir`: the first of [`FileSpec::accepted_names`] that is a
/// file there, matched exactly or else regardless of letter case; `None` if none is.
pub fn find_file(dir: &Path, file: &FileSpec) -> Option<PathBuf> {
    let names = file.accepted_names();
    names.iter().map(|name| dir.join(name)).find(|path| path.is_file()).or_else(|| {
        entries(dir)
            .filter_map(|(name, path)| Some((names.iter().position(|n| n.eq_ignore_ascii_case(&name))?, path)))
            .filter(|(_, path)| path.is_file())
            .min()
            .map(|(_, path)| path)
    })
}

/// The entries of `dir` (name, path); none when it cannot be listed.
fn entries(dir: &Path) -> impl Iterator<Item = (String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| (entry.file_name().to_string_lossy().into_owned(), entry.path()))
}

/// Images and their labels (`Split::default()`: none).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl Split {
    /// A split from pixels (`784` bytes per image, row-major, 0 = background) and labels.
    pub fn new(images: Vec<u8>, labels: Vec<u8>) -> Result<Self> {
        if images.len() != labels.len() * PIXELS {
            return Err(Error::InvalidArgument(format!(
                "{} pixel bytes do not make {} images of 784 pixels",
                images.len(),
                labels.len()
            )));
        }
        if let Some((index, &label)) = labels.iter().enumerate().find(|(_, l)| **l > 9) {
            return Err(Error::InvalidArgument(format!(
                "label {label} at index {index} is out of range, expected 0..=9"
            )));
        }
        Ok(Split { images, labels })
    }

    /// Reads a split from an image file and a label file, checking they agree in count.
    pub fn read(images_path: &Path, labels_path: &Path) -> Result<Self> {
        let images = idx::read_images(images_path)?;
        let labels = idx::read_labels(labels_path)?;
        Self::checked(images, images_path, labels, labels_path)
    }

    pub(crate) fn checked(images: Vec<u8>, images_path: &Path, labels: Vec<u8>, labels_path: &Path) -> Result<Self> {
        if images.len() / PIXELS != labels.len() {
            return Err(Error::CountMismatch {
                images_path: images_path.to_path_buf(),
                images: images.len() / PIXELS,
                labels_path: labels_path.to_path_buf(),
                labels: labels.len(),
            });
        }
        Ok(Split { images, labels })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// All pixels, `784` bytes per image.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// The pixels of image `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8; PIXELS] {
        self.images[i * PIXELS..(i + 1) * PIXELS]
            .try_into()
            .expect("slice has 784 bytes")
    }

    /// The label of image `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// The first `n` images (all if `n >= len()`).
    pub fn take(&self, n: usize) -> Split {
        let n = n.min(self.len());
        Split {
            images: self.images[..n * PIXELS].to_vec(),
            labels: self.labels[..n].to_vec(),
        }
    }
}

/// A dataset: its kind, where it came from, and both splits.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Which dataset.
    pub kind: DatasetKind,
    /// Where it was loaded from (a directory, or `bundled sample`).
    pub origin: String,
    /// Training images: empty when only the test split was asked for ([`Splits::Test`]).
    pub train: Split,
    /// Test images.
    pub test: Split,
}

/// Which splits of a dataset to load: evaluation needs only the test split's two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Splits {
    /// The training and the test split: all four files.
    #[default]
    Both,
    /// The test split alone (`t10k-*`); the dataset's `train` is left empty.
    Test,
}

impl Splits {
    /// The files these splits are read from, of [`FILES`].
    pub fn files(self) -> &'static [FileSpec] {
        match self {
            Splits::Both => &FILES,
            Splits::Test => &FILES[2..],
        }
    }
}

impl Dataset {
    /// Loads the four files of `kind` from `dir` and checks the split sizes.
    pub fn load_dir(kind: DatasetKind, dir: &Path) -> Result<Self> {
        Self::load_dir_splits(kind, dir, Splits::Both)
    }

    /// Loads the files of `splits` of `kind` from `dir` and checks their sizes: with
    /// [`Splits::Test`], the training files need not be there and are not read.
    pub fn load_dir_splits(kind: DatasetKind, dir: &Path, splits: Splits) -> Result<Self> {
        let wanted = match splits {
            Splits::Both => "the four",
            Splits::Test => "the test split's two",
        };
        if !dir.is_dir() {
            return Err(Error::NoDirectory { dir: dir.to_path_buf(), dataset: kind.name(), wanted });
        }
        let mut paths = Vec::with_capacity(4);
        for file in splits.files() {
            paths.push(find_file(dir, file).ok_or_else(|| Error::MissingFile {
                dir: dir.to_path_buf(),
                file: file.name,
                dataset: kind.name(),
                wanted,
                near_misses: file.near_misses(dir),
            })?);
        }
        // The test split's two files come last; the training split's, when read, first.
        let (train_paths, test_paths) = paths.split_at(paths.len() - 2);
        let train = match train_paths {
            [images, labels] => Split::read(images, labels)?,
            _ => Split::default(),
        };
        let test = Split::read(&test_paths[0], &test_paths[1])?;
        let dataset = Dataset {
            kind,
            origin: dir.display().to_string(),
            train,
            test,
        };
        dataset.check_sizes(train_paths.first().map(PathBuf::as_path), &test_paths[0])?;
        // Fashion-MNIST's files have MNIST's names, sizes and format: only the content tells.
        if kind == DatasetKind::Mnist && mnist_fs::sha256_hex(dataset.test.labels()) == FASHION_TEST_LABELS_SHA256 {
            return Err(Error::OtherDataset { path: test_paths[1].clone(), wanted: kind.name(), found: DatasetKind::Fashion.name() });
        }
        Ok(dataset)
    }

    /// Checks the splits hold as many images as `kind` has; the training split only when
    /// it was read (`train_path`).
    pub(crate) fn check_sizes(&self, train_path: Option<&Path>, test_path: &Path) -> Result<()> {
        let (train, test) = self.kind.split_sizes();
        let train = train_path.map(|path| ("train", self.train.len(), train, path));
        for (split, found, expected, path) in train.into_iter().chain([("test", self.test.len(), test, test_path)]) {
            if found != expected {
                return Err(Error::UnexpectedCount {
                    path: path.to_path_buf(),
                    dataset: self.kind.name(),
                    split,
                    found,
                    expected,
                });
            }
        }
        Ok(())
    }

    /// The class names of this dataset.
    pub fn class_names(&self) -> &'static [&'static str; 10] {
        self.kind.class_names()
    }

    /// SHA-256 of the decoded content (train images, train labels, test images, test
    /// labels, in that order): the same data gives the same digest whether it was stored
    /// raw, gzip-compressed or re-compressed.
    pub fn sha256(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [&self.train.images, &self.train.labels, &self.test.images, &self.test.labels] {
            hasher.update(part);
        }
        mnist_fs::hex(&hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::{encode_images, encode_labels, gzip};

    fn touch(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn dotted_and_differently_cased_names_are_found() {
        let dir = tempfile::tempdir().unwrap();
        // Kaggle's names: a dot before idx, raw; one in capitals and gzip-compressed.
        let names = ["train-images.idx3-ubyte", "train-labels.idx1-ubyte", "T10K-IMAGES.IDX3-UBYTE.GZ", "t10k-labels-idx1-ubyte"];
        for (file, name) in FILES.iter().zip(names) {
            let bytes = match file.kind {
                crate::IdxKind::Images => encode_images(&[7; 3 * PIXELS]),
                crate::IdxKind::Labels => encode_labels(&[1, 2, 3]),
            };
            touch(dir.path(), name, &if name.ends_with("GZ") { gzip(&bytes) } else { bytes });
            assert_eq!(find_file(dir.path(), file), Some(dir.path().join(name)), "{name}");
        }
        // All four are read: what stops the load is the size of the splits.
        let err = Dataset::load_dir(DatasetKind::Mnist, dir.path()).unwrap_err();
        assert!(matches!(err, Error::UnexpectedCount { found: 3, expected: 60_000, .. }), "{err}");
        // The canonical name wins over a variant.
        touch(dir.path(), "train-images-idx3-ubyte.gz", &gzip(&encode_images(&[])));
        assert_eq!(find_file(dir.path(), &FILES[0]), Some(dir.path().join("train-images-idx3-ubyte.gz")));
    }

    #[test]
    fn a_missing_file_names_the_near_misses() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["train-images-idx3-ubyte.zip", "train-images-idx3-ubyte (1).gz", "emnist-digits-train-images-idx3-ubyte", "README.txt", "train-labels-idx1-ubyte.gz"] {
            touch(dir.path(), name, b"x");
        }
        std::fs::create_dir(dir.path().join("train-images-idx3-ubyte")).unwrap();
        let err = Dataset::load_dir(DatasetKind::Mnist, dir.path()).unwrap_err();
        let Error::MissingFile { file, near_misses, .. } = &err else { panic!("{err}") };
        assert_eq!(*file, "train-images-idx3-ubyte");
        assert_eq!(near_misses, &["emnist-digits-train-images-idx3-ubyte", "train-images-idx3-ubyte (1).gz", "train-images-idx3-ubyte.zip", "train-images-idx3-ubyte/"]);
        let msg = err.to_string();
        assert!(msg.contains("missing train-images-idx3-ubyte (or train-images-idx3-ubyte.gz); found emnist-digits-train-images-idx3-ubyte, train-images-idx3-ubyte (1).gz, train-images-idx3-ubyte.zip, train-images-idx3-ubyte/, which are not names or formats this program reads"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()) && msg.contains("gzip-compressed or raw"), "{msg}");

        // Test files: `t10k` or `test`, images apart from labels.
        touch(dir.path(), "test-labels.zip", b"x");
        assert_eq!(FILES[3].near_misses(dir.path()), ["test-labels.zip"]);
        assert!(FILES[2].near_misses(dir.path()).is_empty());
        // No directory at all: said so, not as a missing file.
        let err = Dataset::load_dir(DatasetKind::Mnist, &dir.path().join("nowhere")).unwrap_err().to_string();
        assert!(err.ends_with("nowhere: no such directory; expected a directory holding the four mnist IDX files"), "{err}");
        // Nothing to list: the plain message.
        let empty = tempfile::tempdir().unwrap();
        let err = Dataset::load_dir(DatasetKind::Fashion, empty.path()).unwrap_err();
        assert!(matches!(&err, Error::MissingFile { near_misses, .. } if near_misses.is_empty()), "{err}");
    }

    #[test]
    fn the_test_split_loads_without_the_training_files() {
        let dir = tempfile::tempdir().unwrap();
        let images = vec![9u8; 10_000 * PIXELS];
        let labels: Vec<u8> = (0..10_000).map(|i| (i % 10) as u8).collect();
        touch(dir.path(), "t10k-images-idx3-ubyte.gz", &gzip(&encode_images(&images)));
        touch(dir.path(), "t10k-labels-idx1-ubyte", &encode_labels(&labels));
        let d = Dataset::load_dir_splits(DatasetKind::Fashion, dir.path(), Splits::Test).unwrap();
        assert_eq!((d.train.len(), d.test.len(), d.test.label(3), d.kind), (0, 10_000, 3, DatasetKind::Fashion));
        // Both splits still need all four files, and say so.
        let err = Dataset::load_dir(DatasetKind::Fashion, dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing train-images-idx3-ubyte") && err.contains("expected the four fashion IDX files"), "{err}");
        // A test split alone is held to its size, and a missing test file named as such.
        touch(dir.path(), "t10k-images-idx3-ubyte.gz", &gzip(&encode_images(&images[..10 * PIXELS])));
        touch(dir.path(), "t10k-labels-idx1-ubyte", &encode_labels(&labels[..10]));
        let err = Dataset::load_dir_splits(DatasetKind::Fashion, dir.path(), Splits::Test).unwrap_err();
        assert!(matches!(err, Error::UnexpectedCount { split: "test", found: 10, expected: 10_000, .. }), "{err}");
        std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
        let err = Dataset::load_dir_splits(DatasetKind::Fashion, dir.path(), Splits::Test).unwrap_err().to_string();
        assert!(err.contains("missing t10k-labels-idx1-ubyte") && err.contains("expected the test split's two fashion IDX files"), "{err}");
    }
}
