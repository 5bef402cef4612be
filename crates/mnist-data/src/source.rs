//! Where a dataset comes from: an explicit directory, `MNIST_DATA_DIR`, the user cache,
//! Debian's Fashion-MNIST package, a download, or the bundled sample.

use std::path::{Path, PathBuf};

use crate::dataset::{Dataset, DatasetKind, FILES, find_file};
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

/// A loaded dataset and, when the choice fell back to the sample, a one-line notice.
#[derive(Debug)]
pub struct Loaded {
    /// The dataset.
    pub dataset: Dataset,
    /// Set when `Auto` fell back to the bundled sample: says so and how to get the full set.
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
            DatasetChoice::Auto => match self.load(DatasetKind::Mnist) {
                Ok(dataset) => Ok(Loaded { dataset, notice: None }),
                Err(err) if self.explicit_dir.is_none() => {
                    let dataset = load_sample()?;
                    let first = err.to_string().lines().next().unwrap_or_default().to_string();
                    let notice = format!(
                        "Full MNIST is not available ({first}); using the bundled sample of 10,000 real MNIST digits (8,000 train / 2,000 test). For the full set, put the four MNIST .gz files into {} or pass --data-dir.",
                        self.cache_dir(DatasetKind::Mnist).map(|p| p.display().to_string()).unwrap_or_else(|| "a directory".into()),
                    );
                    Ok(Loaded { dataset, notice: Some(notice) })
                }
                Err(err) => Err(err),
            },
        }
    }

    /// Loads `kind` from the first place that has it.
    pub fn load(&self, kind: DatasetKind) -> Result<Dataset> {
        if kind == DatasetKind::Sample {
            return load_sample();
        }
        if let Some(dir) = &self.explicit_dir {
            return Dataset::load_dir(kind, dir);
        }
        let mut tried = Vec::new();
        let mut candidates: Vec<PathBuf> = self.cache_dir(kind).into_iter().collect();
        if self.system_dirs && kind == DatasetKind::Fashion {
            candidates.push(PathBuf::from(DEBIAN_FASHION_DIR));
        }
        for dir in &candidates {
            if !has_all_files(dir) {
                tried.push(format!("  {}: not there", dir.display()));
                continue;
            }
            match Dataset::load_dir(kind, dir) {
                Ok(d) => return Ok(d),
                // A cached copy that fails to load is downloaded again below.
                Err(e) => tried.push(format!("  {}: {e}", dir.display())),
            }
        }
        self.download_into_cache(kind, &mut tried)
    }

    #[cfg(feature = "download")]
    fn download_into_cache(&self, kind: DatasetKind, tried: &mut Vec<String>) -> Result<Dataset> {
        use crate::download::{Downloader, RemoteFile, mirrors};
        let Some(cache) = self.cache_dir(kind).filter(|_| self.download) else {
            tried.push("  download: disabled".into());
            return Err(self.not_found(kind, tried));
        };
        let downloader = Downloader::new(mirrors(kind)).progress(self.progress);
        for file in RemoteFile::of(kind) {
            if let Err(e) = downloader.fetch(&file, &cache) {
                tried.push(format!("  download: {e}"));
                return Err(self.not_found(kind, tried));
            }
        }
        Dataset::load_dir(kind, &cache)
    }

    #[cfg(not(feature = "download"))]
    fn download_into_cache(&self, kind: DatasetKind, tried: &mut Vec<String>) -> Result<Dataset> {
        tried.push("  download: not compiled in (feature `download` of mnist-data)".into());
        Err(self.not_found(kind, tried))
    }

    fn not_found(&self, kind: DatasetKind, tried: &[String]) -> Error {
        Error::NotFound {
            dataset: kind.name(),
            details: format!("Looked in:\n{}", tried.join("\n")),
            files: FILES.iter().map(|f| format!("{}.gz", f.name)).collect::<Vec<_>>().join(", "),
            cache: self
                .cache_dir(kind)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "a directory".into()),
        }
    }
}

fn has_all_files(dir: &Path) -> bool {
    FILES.iter().all(|f| find_file(dir, f).is_some())
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
