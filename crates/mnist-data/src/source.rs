//! Where a dataset comes from: an explicit directory, `MNIST_DATA_DIR`, the user cache,
//! Debian's Fashion-MNIST package, a download, or the bundled sample.

use std::path::PathBuf;

use crate::dataset::{Dataset, DatasetKind, Splits, find_file};
use crate::error::{Error, Result};

/// Environment variable naming a directory that holds the four IDX files.
pub const DATA_DIR_ENV: &str = "MNIST_DATA_DIR";

/// Where Debian's `dataset-fashion-mnist` package installs its files.
pub const DEBIAN_FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DatasetChoice {
    /// Full MNIST when found locally or downloadable, else the bundled sample (with a notice).
    #[default]
    Auto,
    /// Exactly this dataset; never falls back to another.
    Exactly(DatasetKind),
}

impl std::str::FromStr for DatasetChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            Ok(DatasetChoice::Auto)
        } else {
            s.parse().map(DatasetChoice::Exactly)
        }
    }
}

/// A loaded dataset and, when the choice fell back to the sample, a notice of a few lines.
#[derive(Debug)]
pub struct Loaded {
    /// The dataset.
    pub dataset: Dataset,
    /// Set when `Auto` fell back to the bundled sample: says so, why (each place that had
    /// files but failed to load them, with the error; the download's failure), and how to
    /// get the full set.
    pub notice: Option<String>,
}

/// Finds datasets. Build one with [`Locator::from_env`] (what programs want) or
/// [`Locator::offline`] (tests, never touches the network or the user's cache).
#[derive(Debug, Clone)]
pub struct Locator {
    /// An explicit directory (`--data-dir` or `MNIST_DATA_DIR`): used alone, no fallback.
    pub explicit_dir: Option<PathBuf>,
    /// The cache root; each dataset lives in `<cache_root>/<name>/`.
    pub cache_root: Option<PathBuf>,
    /// Also look in system directories (Debian's Fashion-MNIST).
    pub system_dirs: bool,
    /// Download into the cache when not found locally.
    pub download: bool,
    /// Show download progress bars.
    pub progress: bool,
    /// The splits to load: [`Splits::Test`] looks for, downloads and reads only the test
    /// split's two files (what evaluation needs).
    pub splits: Splits,
}

impl Locator {
    /// The standard search: `data_dir` if given, else `MNIST_DATA_DIR` if set (each used
    /// alone), else the user cache (`<cache dir>/mnist-rs/<dataset>`), Debian's
    /// Fashion-MNIST, and a download into the cache.
    pub fn from_env(data_dir: Option<PathBuf>) -> Self {
        let explicit_dir = data_dir.or_else(|| std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()).map(PathBuf::from));
        Locator {
            explicit_dir,
            cache_root: default_cache_root(),
            system_dirs: true,
            download: cfg!(feature = "download"),
            progress: true,
            splits: Splits::Both,
        }
    }

    /// Only `data_dir` (when given) and the bundled sample: no cache, no system
    /// directory, no network.
    pub fn offline(data_dir: Option<PathBuf>) -> Self {
        Locator {
            explicit_dir: data_dir,
            cache_root: None,
            system_dirs: false,
            download: false,
            progress: false,
            splits: Splits::Both,
        }
    }

    /// The cache directory of `kind`, if there is a cache.
    pub fn cache_dir(&self, kind: DatasetKind) -> Option<PathBuf> {
        self.cache_root.as_ref().map(|root| root.join(kind.name()))
    }

    /// Loads what `choice` asks for.
    pub fn load_choice(&self, choice: DatasetChoice) -> Result<Loaded> {
        match choice {
            DatasetChoice::Exactly(kind) => Ok(Loaded {
                dataset: self.load(kind)?,
                notice: None,
            }),
            DatasetChoice::Auto => {
                let mut misses = Vec::new();
                match self.search(DatasetKind::Mnist, &mut misses) {
                    Ok(dataset) => Ok(Loaded { dataset, notice: None }),
                    Err(err) if self.explicit_dir.is_none() => {
                        let dataset = load_sample()?;
                        // Why: each place searched, and the final error unless it sums those up.
                        let mut why: Vec<String> = misses.iter().map(Miss::summary).collect();
                        if !matches!(err, Error::NotFound { .. }) {
                            why.push(first_line(&err.to_string()));
                        }
                        let notice = format!(
                            "Full MNIST is not available, so the bundled sample of 10,000 real MNIST digits (8,000 train / 2,000 test) is used:\n  {}\nFor the full set, put the four MNIST .gz files into {}, or point MNIST_DATA_DIR at their folder.",
                            why.join("\n  "),
                            self.cache_dir(DatasetKind::Mnist).map(|p| p.display().to_string()).unwrap_or_else(|| "a directory".into()),
                        );
                        Ok(Loaded { dataset, notice: Some(notice) })
                    }
                    Err(err) => Err(err),
                }
            }
        }
    }

    /// Loads `kind` from the first place that has it.
    pub fn load(&self, kind: DatasetKind) -> Result<Dataset> {
        self.search(kind, &mut Vec::new())
    }

    /// [`Locator::load`], recording in `misses` each place that did not deliver and why.
    fn search(&self, kind: DatasetKind, misses: &mut Vec<Miss>) -> Result<Dataset> {
        if kind == DatasetKind::Sample {
            return load_sample();
        }
        if let Some(dir) = &self.explicit_dir {
            return Dataset::load_dir_splits(kind, dir, self.splits);
        }
        let mut candidates: Vec<PathBuf> = self.cache_dir(kind).into_iter().collect();
        if self.system_dirs && kind == DatasetKind::Fashion {
            candidates.push(PathBuf::from(DEBIAN_FASHION_DIR));
        }
        for dir in candidates {
            match Dataset::load_dir_splits(kind, &dir, self.splits) {
                Ok(d) => return Ok(d),
                Err(Error::NoDirectory { .. }) => misses.push(Miss::Absent(dir)),
                Err(Error::MissingFile { near_misses, .. }) if near_misses.is_empty() && !self.splits.files().iter().any(|f| find_file(&dir, f).is_some()) => {
                    misses.push(Miss::Absent(dir));
                }
                // A cached copy that fails to load is downloaded again below.
                Err(e) => misses.push(Miss::Broken(dir, e)),
            }
        }
        self.download_into_cache(kind, misses)
    }

    #[cfg(feature = "download")]
    fn download_into_cache(&self, kind: DatasetKind, misses: &mut Vec<Miss>) -> Result<Dataset> {
        use crate::download::{Downloader, RemoteFile, mirrors};
        let Some(cache) = self.cache_dir(kind).filter(|_| self.download) else {
            misses.push(Miss::Download("disabled".into()));
            return Err(self.not_found(kind, misses));
        };
        let downloader = Downloader::new(mirrors(kind)).progress(self.progress);
        let wanted: Vec<&str> = self.splits.files().iter().map(|f| f.name).collect();
        for file in RemoteFile::of(kind).into_iter().filter(|f| wanted.contains(&f.name.as_str())) {
            if let Err(e) = downloader.fetch(&file, &cache) {
                misses.push(Miss::Download(e.to_string()));
                return Err(self.not_found(kind, misses));
            }
        }
        Dataset::load_dir_splits(kind, &cache, self.splits)
    }

    #[cfg(not(feature = "download"))]
    fn download_into_cache(&self, kind: DatasetKind, misses: &mut Vec<Miss>) -> Result<Dataset> {
        misses.push(Miss::Download("not compiled in (feature `download` of mnist-data)".into()));
        Err(self.not_found(kind, misses))
    }

    fn not_found(&self, kind: DatasetKind, misses: &[Miss]) -> Error {
        Error::NotFound {
            dataset: kind.name(),
            details: format!("Looked in:\n{}", misses.iter().map(Miss::detail).collect::<Vec<_>>().join("\n")),
            files: self.splits.files().iter().map(|f| format!("{}.gz", f.name)).collect::<Vec<_>>().join(", "),
            cache: self
                .cache_dir(kind)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "a directory".into()),
        }
    }
}

/// A place searched for a dataset that did not deliver it, and why.
#[derive(Debug)]
enum Miss {
    /// A directory holding none of the files (or not there at all).
    Absent(PathBuf),
    /// A directory holding files that failed to load.
    Broken(PathBuf, Error),
    /// Why the download failed or was not tried.
    Download(String),
}

impl Miss {
    /// Indented lines for [`Error::NotFound`].
    fn detail(&self) -> String {
        match self {
            Miss::Absent(dir) => format!("  {}: not there", dir.display()),
            Miss::Broken(dir, e) => format!("  {}: {e}", dir.display()),
            Miss::Download(why) => format!("  download: {why}"),
        }
    }

    /// One line for the fallback notice. The error of a broken directory names its file.
    fn summary(&self) -> String {
        match self {
            Miss::Absent(dir) => format!("not in {}", dir.display()),
            Miss::Broken(_, e) => first_line(&e.to_string()),
            Miss::Download(why) => format!("download: {}", first_line(why)),
        }
    }
}

/// The first line of a message, with the next one when the first ends in a colon
/// (`could not download NAME.gz:` and its first mirror's failure).
fn first_line(message: &str) -> String {
    let mut lines = message.lines().map(str::trim);
    let first = lines.next().unwrap_or_default();
    match (first.strip_suffix(':'), lines.next()) {
        (Some(head), Some(next)) => format!("{head}: {next}"),
        _ => first.to_string(),
    }
}

/// `<user cache dir>/mnist-rs`, e.g. `~/.cache/mnist-rs` on Linux.
pub fn default_cache_root() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("mnist-rs"))
}

#[cfg(feature = "sample")]
fn load_sample() -> Result<Dataset> {
    crate::sample::load()
}

#[cfg(not(feature = "sample"))]
fn load_sample() -> Result<Dataset> {
    Err(Error::SampleDisabled)
}

#[cfg(all(test, feature = "sample"))]
mod tests {
    use super::*;
    use std::path::Path;

    fn cached(root: &Path) -> Locator {
        Locator {
            cache_root: Some(root.to_path_buf()),
            ..Locator::offline(None)
        }
    }

    #[test]
    fn the_notice_says_why_place_by_place() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("mnist");
        // No directory at all: summarised.
        let notice = cached(root.path()).load_choice(DatasetChoice::Auto).unwrap().notice.unwrap();
        assert!(notice.contains(&format!("\n  not in {}\n  download: disabled\n", dir.display())), "{notice}");
        // One file of four: the others are named as missing.
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("train-images-idx3-ubyte.gz"), crate::idx::gzip(&crate::idx::encode_images(&[]))).unwrap();
        let notice = cached(root.path()).load_choice(DatasetChoice::Auto).unwrap().notice.unwrap();
        assert!(notice.contains("missing train-labels-idx1-ubyte"), "{notice}");
        assert!(notice.lines().count() <= 4, "{notice}");
    }

    #[test]
    fn first_line_keeps_what_follows_a_colon() {
        assert_eq!(first_line("could not download a.gz:\n  https://x/a.gz: 404\n  https://y/a.gz: 500"), "could not download a.gz: https://x/a.gz: 404");
        assert_eq!(first_line("one\ntwo"), "one");
        assert_eq!(first_line(""), "");
    }
}
