//! The bundled sample: 10,000 real MNIST digits, 8,000 train / 2,000 test.
//!
//! See `data/sample/README.md` for provenance, licence and how the files were made.

use std::path::Path;

use crate::dataset::{Dataset, DatasetKind, Split};
use crate::error::Result;
use crate::idx;

const TRAIN_IMAGES: &[u8] = include_bytes!("../data/sample/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] = include_bytes!("../data/sample/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] = include_bytes!("../data/sample/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] = include_bytes!("../data/sample/t10k-labels-idx1-ubyte.gz");

/// Decodes the bundled sample.
pub fn load() -> Result<Dataset> {
    let split = |images: &[u8], images_name: &str, labels: &[u8], labels_name: &str| -> Result<Split> {
        let images_name = Path::new("<bundled sample>").join(images_name);
        let labels_name = Path::new("<bundled sample>").join(labels_name);
        Split::checked(
            idx::parse_images(images, &images_name)?,
            &images_name,
            idx::parse_labels(labels, &labels_name)?,
            &labels_name,
        )
    };
    let dataset = Dataset {
        kind: DatasetKind::Sample,
        origin: "bundled sample".into(),
        train: split(TRAIN_IMAGES, "train-images-idx3-ubyte.gz", TRAIN_LABELS, "train-labels-idx1-ubyte.gz")?,
        test: split(TEST_IMAGES, "t10k-images-idx3-ubyte.gz", TEST_LABELS, "t10k-labels-idx1-ubyte.gz")?,
    };
    dataset.check_sizes(Some(Path::new("<bundled sample>/train")), Path::new("<bundled sample>/test"))?;
    Ok(dataset)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sample_is_balanced_and_complete() {
        let d = super::load().unwrap();
        assert_eq!((d.train.len(), d.test.len()), (8_000, 2_000));
        let mut test_counts = [0usize; 10];
        for &l in d.test.labels() {
            test_counts[l as usize] += 1;
        }
        assert_eq!(test_counts, [200; 10]);
        let mut train_counts = [0usize; 10];
        for &l in d.train.labels() {
            train_counts[l as usize] += 1;
        }
        assert!(train_counts.iter().all(|&c| c > 600), "{train_counts:?}");
        // Real digits: mostly background with some ink.
        let ink = d.test.images().iter().filter(|&&p| p > 128).count() as f64 / d.test.images().len() as f64;
        assert!((0.05..0.3).contains(&ink), "{ink}");
    }
}
