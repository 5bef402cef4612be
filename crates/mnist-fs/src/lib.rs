//! Files that are never half-written, for every mnist-rs crate that persists one.
//!
//! Every file is written to a temporary file in its destination's directory, synced to
//! disk, renamed over the destination, and the directory is synced too, so that after a
//! crash or power loss a reader finds the old file or the new one, never a mixture or an
//! empty file ([`write_atomic`] for bytes in memory; [`temp_file_in`] and [`commit`] for
//! a file written piece by piece, such as a download or a plot).
//!
//! Temporary files are named `<prefix>XXXXXX<suffix>` (six random letters or digits);
//! a process killed before its rename leaves one behind, and [`remove_stale_temps`]
//! removes exactly those (the prefix, six alphanumerics, a known suffix), never a user's
//! file.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("report.json");
//! mnist_fs::write_atomic(&path, b"{}\n")?;
//! assert_eq!(std::fs::read(&path).unwrap(), b"{}\n");
//! assert_eq!(mnist_fs::sha256_hex(b"abc").len(), 64);
//! # Ok::<(), mnist_fs::Error>(())
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The prefix of the temporary files of [`write_atomic`] (and of artifact files written
/// through [`temp_file_in`] with it).
pub const TEMP_PREFIX: &str = ".tmp-";
/// Random characters after a temporary file's prefix (tempfile's default).
pub const TEMP_RANDOM: usize = 6;

/// A file operation that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be written, synced, renamed or removed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file (the destination, not the temporary file).
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A directory could not be listed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The file the error names.
    pub fn path(&self) -> &Path {
        match self {
            Error::Write { path, .. } | Error::Read { path, .. } => path,
        }
    }

    /// The underlying I/O error.
    pub fn io(&self) -> &std::io::Error {
        match self {
            Error::Write { source, .. } | Error::Read { source, .. } => source,
        }
    }

    /// The error as its parts, for crates that wrap it in their own error type.
    pub fn into_parts(self) -> (PathBuf, std::io::Error) {
        match self {
            Error::Write { path, source } | Error::Read { path, source } => (path, source),
        }
    }
}

/// The directory a file `path` lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same
/// directory ([`temp_file_in`] with [`TEMP_PREFIX`]), synced, renamed over `path`, and the
/// directory synced ([`commit`]). A reader never sees a half-written file.
///
/// # Errors
/// [`Error::Write`] naming `path`; the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let write_err = |source| Error::Write { path: path.to_path_buf(), source };
    not_special(path).map_err(write_err)?;
    let mut tmp = temp_file_in(parent_dir(path), TEMP_PREFIX, "").map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    commit(tmp, path)
}

/// Makes the temporary file `tmp` (written completely) the file `path`: syncs its
/// content, renames it over `path` (same directory, so atomic) and syncs the directory so
/// that the rename itself survives a crash (Unix; elsewhere the rename is the last step).
///
/// # Errors
/// [`Error::Write`] naming `path`; the temporary file is removed.
pub fn commit(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    let write_err = |source| Error::Write { path: path.to_path_buf(), source };
    not_special(path).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    sync_dir(parent_dir(path)).map_err(write_err)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// A temporary file in `dir` named `<prefix>XXXXXX<suffix>` (six random letters and
/// digits), readable by all (0644 on Unix, like any file a program writes), to be renamed
/// over its destination by [`commit`]. Dropped without a commit, it is removed; a process
/// killed before the rename leaves it behind for [`remove_stale_temps`].
pub fn temp_file_in(dir: &Path, prefix: &str, suffix: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(suffix).rand_bytes(TEMP_RANDOM);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir).map_err(|e| without_temp_path(dir, e))
}

/// tempfile's errors end with the temporary file's path (`... at path "dir/.tmp-XXXXXX"`),
/// a name the user never gave: the cause alone, and a directory that is missing or not
/// one said as such.
fn without_temp_path(dir: &Path, e: std::io::Error) -> std::io::Error {
    if let Err(problem) = dir_problem(dir) {
        return problem;
    }
    let text = e.to_string();
    let cause = text.rsplit_once(" at path ").map_or(text.as_str(), |(cause, _)| cause);
    std::io::Error::new(e.kind(), cause.to_string())
}

/// Whether `dir` is an existing directory, else the error that says what it is.
fn dir_problem(dir: &Path) -> std::io::Result<()> {
    use std::io::{Error as IoError, ErrorKind};
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(IoError::new(ErrorKind::NotADirectory, format!("{} is not a directory", dir.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(IoError::new(ErrorKind::NotFound, format!("directory {} does not exist", dir.display()))),
        Err(e) => Err(e),
    }
}

/// `Ok` unless `path` exists and is not a regular file. The rename of an atomic write
/// replaces whatever is at its destination: a directory entry that is a symbolic link, a
/// device (`/dev/full`), a FIFO or a socket would be replaced by a regular file, so such a
/// destination is refused and left as it is.
fn not_special(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => {
            let kind = if m.is_dir() {
                "a directory"
            } else if m.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "not a regular file (a device, FIFO or socket)"
            };
            Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} is {kind}; give the path of a regular file", path.display())))
        }
        _ => Ok(()),
    }
}

/// Checks that [`write_atomic`] can write `path`, as far as can be known before: its
/// directory exists, is one and takes a new file, and `path` itself is not a directory, a
/// symbolic link or a special file. For a command to find out before a long computation
/// rather than after.
///
/// # Errors
/// [`Error::Write`] naming `path` and saying what is wrong.
pub fn check_destination(path: &Path) -> Result<()> {
    let write_err = |source| Error::Write { path: path.to_path_buf(), source };
    let dir = parent_dir(path);
    dir_problem(dir).map_err(write_err)?;
    not_special(path).map_err(write_err)?;
    // A file created and removed at once (dropped): permissions, a read-only file system.
    temp_file_in(dir, TEMP_PREFIX, "").map(drop).map_err(write_err)
}

/// Whether `name` is a temporary file of [`temp_file_in`] with `prefix` and `suffix`: the
/// prefix, exactly six ASCII letters or digits, then the suffix.
pub fn is_temp_name(name: &str, prefix: &str, suffix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
        .is_some_and(|random| random.len() == TEMP_RANDOM && random.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Removes from `dir` the regular files that [`temp_file_in`] made with `prefix` and one
/// of `suffixes` and that were never renamed (a process killed while writing), leaving
/// every other file alone. With `older_than`, only files not modified for that long go
/// (for a directory that other live processes may be writing into, such as a shared
/// cache); without it, all of them (call that only where no other process writes, e.g.
/// under a lock). Returns the paths removed.
///
/// # Errors
/// [`Error::Read`] when `dir` cannot be listed, [`Error::Write`] when a stale file cannot
/// be removed.
pub fn remove_stale_temps(dir: &Path, prefix: &str, suffixes: &[&str], older_than: Option<Duration>) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|source| Error::Read { path: dir.to_path_buf(), source })?;
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !suffixes.iter().any(|s| is_temp_name(name, prefix, s)) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let old_enough = older_than.is_none_or(|limit| meta.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age >= limit));
        if !meta.is_file() || !old_enough {
            continue;
        }
        fs::remove_file(entry.path()).map_err(|source| Error::Write { path: entry.path(), source })?;
        removed.push(entry.path());
    }
    Ok(removed)
}

/// Reads all of `path` into memory, refusing one of more than `max` bytes (an
/// [`std::io::ErrorKind::FileTooLarge`] error saying so) after reading at most `max + 1`
/// of them: a file given by mistake (`/dev/zero`, a disk image) must not fill the memory
/// before it is refused. Pipes and special files are read as they come, so a `<(...)`
/// process substitution still works.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = open_file(path)?;
    let known = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    read_capped_from(file, known, max)
}

/// [`read_capped`] of a reader (standard input, a pipe) whose length is `known` or not
/// (which only sizes the first allocation).
pub fn read_capped_from(reader: impl std::io::Read, known: Option<u64>, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(usize::try_from(known.unwrap_or(0).min(max)).unwrap_or(0));
    reader.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than the {} such a file may be; is it the right file?", size(max)),
        ));
    }
    Ok(bytes)
}

/// Opens `path` for reading, refusing a directory with an
/// [`std::io::ErrorKind::IsADirectory`] error that says a file was expected. On Linux a
/// directory opens, and only its first read fails, with the bare OS text "Is a directory
/// (os error 21)"; elsewhere the open fails with another text each. Devices and pipes
/// open as files.
pub fn open_file(path: &Path) -> std::io::Result<fs::File> {
    let is_dir = |e: &std::io::Error| e.kind() == std::io::ErrorKind::IsADirectory || path.is_dir();
    let directory = || std::io::Error::new(std::io::ErrorKind::IsADirectory, "a directory, not a file");
    match fs::File::open(path) {
        Ok(file) if file.metadata().is_ok_and(|m| m.is_dir()) => Err(directory()),
        Ok(file) => Ok(file),
        Err(e) if is_dir(&e) => Err(directory()),
        Err(e) => Err(e),
    }
}

/// [`read_capped`] as UTF-8 text ([`std::io::ErrorKind::InvalidData`] when it is not).
pub fn read_to_string_capped(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_capped(path, max)?).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Most bytes a JSON file of the project (a config, a manifest, a report) may have; they
/// hold a few KB.
pub const MAX_JSON_BYTES: u64 = 16 << 20;

/// `16 MiB`, `3 GiB`, `500 bytes`.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b => format!("{b} bytes"),
    }
}

/// `bytes` as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of `bytes`, as lower-case hex (64 digits).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of everything `reader` yields, as lower-case hex (64 digits), read in 64 KiB
/// pieces.
pub fn sha256_reader(mut reader: impl std::io::Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut reader, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// Whether `text` is a SHA-256 digest as hex: 64 hex digits (either case).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_the_file_whole_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["a.json"]);
    }

    #[test]
    fn a_failed_write_names_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("a.json");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.path(), path);
        // The directory that is missing, and no temporary file's name.
        let missing = path.parent().unwrap().display().to_string();
        assert_eq!(err.to_string(), format!("cannot write {}: directory {missing} does not exist", path.display()));
        // Checked up front, the same words.
        assert_eq!(check_destination(&path).unwrap_err().to_string(), err.to_string());
        assert!(check_destination(&dir.path().join("a.json")).is_ok());
        assert!(check_destination(Path::new("bare-name.json")).is_ok());
        // A file where the directory should be.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let err = write_atomic(&file.join("a.json"), b"x").unwrap_err();
        assert!(err.to_string().ends_with(&format!("{} is not a directory", file.display())), "{err}");
        assert!(!err.to_string().contains(TEMP_PREFIX), "{err}");
    }

    /// A destination that is a directory, a symbolic link or a special file is refused,
    /// by the check and by the write, and left as it was; a directory that takes no new
    /// file is found by the check.
    #[cfg(unix)]
    #[test]
    fn special_destinations_are_refused_and_left_alone() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.json");
        std::fs::write(&target, b"kept").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let socket = dir.path().join("socket.json");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let sub = dir.path().join("sub.json");
        std::fs::create_dir(&sub).unwrap();
        for (path, kind) in [(&link, "is a symbolic link"), (&socket, "is not a regular file"), (&sub, "is a directory")] {
            let checked = check_destination(path).unwrap_err().to_string();
            assert!(checked.contains(kind), "{checked}");
            let written = write_atomic(path, b"new").unwrap_err().to_string();
            assert_eq!(written, checked);
            let tmp = temp_file_in(dir.path(), TEMP_PREFIX, "").unwrap();
            assert_eq!(commit(tmp, path).unwrap_err().to_string(), checked);
        }
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(std::fs::symlink_metadata(&socket).unwrap().file_type().is_socket(), "socket replaced");
        assert_eq!(std::fs::read(&target).unwrap(), b"kept");
        // A regular file is replaced, as always.
        write_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // /proc takes no new file, even for root.
        if Path::new("/proc/self").is_dir() {
            let err = check_destination(Path::new("/proc/eval.json")).unwrap_err();
            assert_eq!(err.path(), Path::new("/proc/eval.json"));
        }
    }

    #[test]
    fn only_own_stale_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for name in [".tmp-a1B2c3", ".tmp-Zz9yX8.png", ".tmp-abc", ".tmp-a1B2c3.txt", "notes.tmp-a1B2c3", ".tmp-a-b_c3", "model.json"] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        fs::create_dir(dir.path().join(".tmp-dir123")).unwrap();
        let mut removed: Vec<String> = remove_stale_temps(dir.path(), TEMP_PREFIX, &["", ".png"], None)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(removed, [".tmp-Zz9yX8.png", ".tmp-a1B2c3"]);
        assert!(dir.path().join(".tmp-dir123").is_dir());
        // Files written a moment ago are not stale yet by an age limit.
        fs::write(dir.path().join(".download-q1w2e3"), b"x").unwrap();
        assert!(remove_stale_temps(dir.path(), ".download-", &[""], Some(Duration::from_secs(600))).unwrap().is_empty());
        assert!(dir.path().join(".download-q1w2e3").exists());
    }

    #[test]
    fn digests_are_lower_case_hex() {
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), abc);
        assert_eq!(sha256_reader(&b"abc"[..]).unwrap(), abc);
        assert!(is_sha256_hex(abc) && is_sha256_hex(&abc.to_uppercase()));
        assert!(!is_sha256_hex(&abc[1..]) && !is_sha256_hex(&abc.replace('a', "g")));
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }

    /// A file up to the cap is read whole; past it, or endless (`/dev/zero`), it is
    /// refused after the cap and one byte more.
    #[test]
    fn reads_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ten");
        fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_capped(&path, 10).unwrap(), b"0123456789");
        let err = read_capped(&path, 9).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(err.to_string().contains("larger than the 9 bytes such a file may be"), "{err}");
        #[cfg(unix)]
        {
            let err = read_to_string_capped(Path::new("/dev/zero"), MAX_JSON_BYTES).unwrap_err();
            assert!(err.kind() == std::io::ErrorKind::FileTooLarge && err.to_string().contains("16 MiB"), "{err}");
        }
        fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(read_to_string_capped(&path, 10).unwrap_err().kind(), std::io::ErrorKind::InvalidData);
        // A reader of unknown length (standard input) likewise.
        assert_eq!(read_capped_from(&b"0123456789"[..], None, 10).unwrap(), b"0123456789");
        assert_eq!(read_capped_from(std::io::repeat(7), None, 9).unwrap_err().kind(), std::io::ErrorKind::FileTooLarge);
    }

    /// A directory given where a file is read is refused as such, not with the OS's bare
    /// "Is a directory (os error 21)" from its first read; a missing file keeps its error.
    #[test]
    fn a_directory_is_not_read_as_a_file() {
        let dir = tempfile::tempdir().unwrap();
        for err in [open_file(dir.path()).unwrap_err(), read_capped(dir.path(), 10).unwrap_err()] {
            assert_eq!(err.kind(), std::io::ErrorKind::IsADirectory);
            assert_eq!(err.to_string(), "a directory, not a file");
        }
        let missing = open_file(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        #[cfg(unix)]
        assert!(open_file(Path::new("/dev/null")).is_ok());
    }
}
