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

/// The path of `file` inside `dir`: `NAME.gz` if present, else `NAME`, else `None`.
pub fn find_file(dir: &Path, file: &FileSpec) -> Option<PathBuf> {
    [format!("{}.gz", file.name), file.name.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Images and their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Training images.
    pub train: Split,
    /// Test images.
    pub test: Split,
}

impl Dataset {
    /// Loads the four files of `kind` from `dir` and checks the split sizes.
    pub fn load_dir(kind: DatasetKind, dir: &Path) -> Result<Self> {
        let mut paths = Vec::with_capacity(4);
        for file in &FILES {
            paths.push(find_file(dir, file).ok_or(Error::MissingFile {
                dir: dir.to_path_buf(),
                file: file.name,
                dataset: kind.name(),
            })?);
        }
        let train = Split::read(&paths[0], &paths[1])?;
        let test = Split::read(&paths[2], &paths[3])?;
        let dataset = Dataset {
            kind,
            origin: dir.display().to_string(),
            train,
            test,
        };
        dataset.check_sizes(&paths[0], &paths[2])?;
        Ok(dataset)
    }

    pub(crate) fn check_sizes(&self, train_path: &Path, test_path: &Path) -> Result<()> {
        let (train, test) = self.kind.split_sizes();
        for (split, found, expected, path) in [
            ("train", self.train.len(), train, train_path),
            ("test", self.test.len(), test, test_path),
        ] {
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
        hex(&hasher.finalize())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
