//! The one error type of `mnist-data`.

use std::path::PathBuf;

/// Everything that can go wrong while finding, downloading or parsing a dataset.
///
/// Every variant that concerns a file names it, and says what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file could not be written (cache, download).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file starts like gzip but does not decompress.
    #[error("{}: not a valid gzip stream ({source}); expected a gzip-compressed or raw IDX file", path.display())]
    Gzip {
        /// The file.
        path: PathBuf,
        /// The decompressor's error.
        source: std::io::Error,
    },
    /// The gzip stream stops before its end: the file was cut short.
    #[error("{}: the gzip stream ends before it is complete: the file was cut short (a partial copy or download?); expected the whole file", path.display())]
    GzipCutShort {
        /// The file.
        path: PathBuf,
    },
    /// Bytes after the last gzip member that are neither another member nor zero padding.
    #[error("{}: {bytes} bytes of trailing data after the gzip stream that are not zero padding; expected only further gzip members or zero bytes there", path.display())]
    GzipTrailingData {
        /// The file.
        path: PathBuf,
        /// Bytes from the end of the last member to the end of the file.
        bytes: u64,
    },
    /// The file holds no bytes at all.
    #[error("{}: the file is empty; expected an IDX {kind} file", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// `images` or `labels`.
        kind: IdxKind,
    },
    /// Fewer bytes than an IDX header needs.
    #[error("{}: truncated header: {found} bytes, expected at least {expected} for an IDX {kind} file", path.display())]
    TruncatedHeader {
        /// The file.
        path: PathBuf,
        /// `images` or `labels`.
        kind: IdxKind,
        /// Bytes present.
        found: usize,
        /// Bytes the header needs.
        expected: usize,
    },
    /// The magic number is not the one of the expected IDX kind.
    #[error("{}: bad magic number 0x{found:08x}{}, expected 0x{expected:08x} (IDX {kind})", path.display(), magic_note(*found))]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// `images` or `labels`.
        kind: IdxKind,
        /// The magic read.
        found: u32,
        /// The magic of `kind`.
        expected: u32,
    },
    /// The file is recognisably something other than IDX: a web page, an archive, text...
    #[error("{}: {}this looks like {looks_like}, not an IDX {kind} file; expected a gzip-compressed or raw IDX file (magic 0x{:08x})", path.display(), if *compressed { "once decompressed, " } else { "" }, kind.magic())]
    NotIdx {
        /// The file.
        path: PathBuf,
        /// `images` or `labels`, the kind expected.
        kind: IdxKind,
        /// What the content looks like, e.g. `an HTML page (...)`.
        looks_like: &'static str,
        /// Whether that is the content inside a gzip stream.
        compressed: bool,
    },
    /// Images that are not 28x28.
    #[error("{}: images are {rows}x{cols}, expected 28x28", path.display())]
    BadDimensions {
        /// The file.
        path: PathBuf,
        /// Rows in the header.
        rows: u32,
        /// Columns in the header.
        cols: u32,
    },
    /// The payload is shorter than the header's item count requires.
    #[error("{}: the header claims {count} {kind} ({expected} bytes of data) but the file holds only {found} bytes of data: the file was cut short (a partial copy or download?) or its header is wrong", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// `images` or `labels`.
        kind: IdxKind,
        /// Items claimed by the header.
        count: u32,
        /// Payload bytes the count requires.
        expected: u64,
        /// Payload bytes present.
        found: u64,
    },
    /// Bytes after the last item.
    #[error("{}: trailing bytes after the {count} {kind} the header declares; expected exactly {expected} bytes of data", path.display())]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// `images` or `labels`.
        kind: IdxKind,
        /// Items declared.
        count: u32,
        /// Payload bytes the count requires.
        expected: u64,
    },
    /// A label outside 0..=9.
    #[error("{}: label {label} at index {index} is out of range, expected 0..=9", path.display())]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Position of the label.
        index: usize,
        /// The value found.
        label: u8,
    },
    /// Image and label files disagree in count.
    #[error("{} holds {images} images but {} holds {labels} labels; expected the same count", images_path.display(), labels_path.display())]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// Images in it.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// Labels in it.
        labels: usize,
    },
    /// The files are those of another dataset than the one asked for (Fashion-MNIST's
    /// labels where MNIST was asked for).
    #[error("{}: these are {found}'s labels, not {wanted}'s; load them as {found}, or the {wanted} files from their own folder", path.display())]
    OtherDataset {
        /// The labels file recognised.
        path: PathBuf,
        /// The dataset asked for.
        wanted: &'static str,
        /// The dataset the files are.
        found: &'static str,
    },
    /// A split does not hold the number of items the dataset defines.
    #[error("{}: holds {found} items, expected {expected} for the {dataset} {split} split", path.display())]
    UnexpectedCount {
        /// The file.
        path: PathBuf,
        /// Dataset name.
        dataset: &'static str,
        /// `train` or `test`.
        split: &'static str,
        /// Items found.
        found: usize,
        /// Items expected.
        expected: usize,
    },
    /// The dataset was not found locally and could not be downloaded.
    #[error("{dataset} was not found and could not be downloaded.\n{details}\nPut the files {files} (gzip or raw) into {cache}, or point MNIST_DATA_DIR at a folder holding them.")]
    NotFound {
        /// Dataset name.
        dataset: &'static str,
        /// Where we looked and what failed.
        details: String,
        /// The file names needed.
        files: String,
        /// The cache directory to put them in.
        cache: String,
    },
    /// The directory named for a dataset does not exist (or is not a directory).
    #[error("{}: {}; expected a directory holding {wanted} {dataset} IDX files", dir.display(), if dir.exists() { "a file, not a directory" } else { "no such directory" })]
    NoDirectory {
        /// The path given.
        dir: PathBuf,
        /// Dataset name.
        dataset: &'static str,
        /// Which of its files were wanted: `the four`, or `the test split's two`.
        wanted: &'static str,
    },
    /// A directory does not hold one of the files of the dataset.
    #[error("{}: missing {file} (or {file}.gz){}; expected {wanted} {dataset} IDX files there, gzip-compressed or raw (`.idx` for `-idx` and any letter case also do)", dir.display(), near_miss_note(near_misses))]
    MissingFile {
        /// The directory.
        dir: PathBuf,
        /// The file that is missing.
        file: &'static str,
        /// Dataset name.
        dataset: &'static str,
        /// Which of its files were looked for: `the four`, or `the test split's two`.
        wanted: &'static str,
        /// Names in the directory that look like the file but are not read (`NAME.zip`,
        /// `NAME (1).gz`, a directory `NAME/`), sorted.
        near_misses: Vec<String>,
    },
    /// Every mirror failed for one file.
    #[error("could not download {file}:\n{attempts}")]
    Download {
        /// The file name.
        file: String,
        /// One line per mirror tried and why it failed.
        attempts: String,
    },
    /// A downloaded or cached file failed verification.
    #[error("{}: failed verification: {reason}", path.display())]
    Verification {
        /// The file.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
    /// The bundled sample was asked for but the crate was built without it.
    #[error("the bundled sample is not compiled in; enable the `sample` feature of mnist-data")]
    SampleDisabled,
    /// An invalid argument (batch size 0, an index out of range, ...).
    #[error("{0}")]
    InvalidArgument(String),
}

/// The kind of an IDX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdxKind {
    /// `u8` images, magic 0x00000803.
    Images,
    /// `u8` labels, magic 0x00000801.
    Labels,
}

impl std::fmt::Display for IdxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IdxKind::Images => "images",
            IdxKind::Labels => "labels",
        })
    }
}

/// Names the IDX kind of a magic number that is the other kind's, for [`Error::BadMagic`].
fn magic_note(found: u32) -> &'static str {
    match found {
        crate::idx::IMAGES_MAGIC => " (that of an IDX images file)",
        crate::idx::LABELS_MAGIC => " (that of an IDX labels file)",
        _ => "",
    }
}

/// The near misses of [`Error::MissingFile`], at most four of them named.
fn near_miss_note(names: &[String]) -> String {
    const SHOWN: usize = 4;
    let (which, list) = match names.len() {
        0 => return String::new(),
        1 => ("which is not a name or format this program reads", names[0].clone()),
        n if n <= SHOWN => ("which are not names or formats this program reads", names.join(", ")),
        n => ("which are not names or formats this program reads", format!("{} and {} more", names[..SHOWN].join(", "), n - SHOWN)),
    };
    format!("; found {list}, {which}")
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
