//! Downloading the dataset files: mirrors tried in turn, verification, atomic writes.
//!
//! A file is streamed to a temporary file beside its destination, verified, then renamed
//! into place, so a cache never holds a half-written file. Verification accepts a file
//! whose SHA-256 is the pinned one of the original `.gz`; because a re-compressed copy of
//! the same data has another digest, it also accepts a file that decompresses to exactly
//! the expected IDX content (magic, 28x28, item count, payload size).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dataset::{DatasetKind, FileSpec, FILES};
use crate::error::{Error, IdxKind, Result};
use crate::idx;

/// MNIST mirrors, tried in order.
pub const MNIST_MIRRORS: [&str; 2] = [
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
];

/// Fashion-MNIST mirrors, tried in order.
pub const FASHION_MIRRORS: [&str; 2] = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
];

/// Pinned SHA-256 of the original MNIST `.gz` files, in the order of [`FILES`].
pub const MNIST_SHA256: [&str; 4] = [
    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
];

/// A file to fetch and how to recognise a good copy of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Base name without `.gz`; the URL is `mirror + name + ".gz"`.
    pub name: String,
    /// Images or labels.
    pub kind: IdxKind,
    /// Items the file must hold.
    pub count: usize,
    /// SHA-256 of the original `.gz`, when known.
    pub sha256: Option<String>,
}

impl RemoteFile {
    /// The four remote files of `kind` (none for the bundled sample).
    pub fn of(kind: DatasetKind) -> Vec<RemoteFile> {
        let (train, test) = kind.split_sizes();
        if kind == DatasetKind::Sample {
            return Vec::new();
        }
        FILES
            .iter()
            .enumerate()
            .map(|(i, f): (usize, &FileSpec)| RemoteFile {
                name: f.name.to_string(),
                kind: f.kind,
                count: if f.split == "train" { train } else { test },
                sha256: (kind == DatasetKind::Mnist).then(|| MNIST_SHA256[i].to_string()),
            })
            .collect()
    }
}

/// The mirrors of `kind`.
pub fn mirrors(kind: DatasetKind) -> Vec<String> {
    let list: &[&str] = match kind {
        DatasetKind::Mnist => &MNIST_MIRRORS,
        DatasetKind::Fashion => &FASHION_MIRRORS,
        DatasetKind::Sample => &[],
    };
    list.iter().map(|s| s.to_string()).collect()
}

/// A blocking downloader over a list of mirrors.
#[derive(Debug, Clone)]
pub struct Downloader {
    mirrors: Vec<String>,
    timeout: Duration,
    progress: bool,
}

impl Downloader {
    /// A downloader trying `mirrors` (base URLs ending in `/`) in order.
    pub fn new(mirrors: Vec<String>) -> Self {
        Downloader {
            mirrors,
            timeout: Duration::from_secs(60),
            progress: true,
        }
    }

    /// Sets the timeout of one transfer (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Shows or hides the progress bar (shown by default, on a terminal only).
    pub fn progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }

    /// Fetches `file` into `dir` as `NAME.gz` unless a verified copy is already there.
    /// A copy that fails verification is fetched again, never trusted.
    pub fn fetch(&self, file: &RemoteFile, dir: &Path) -> Result<PathBuf> {
        let dest = dir.join(format!("{}.gz", file.name));
        if dest.is_file() && verify(&dest, file).is_ok() {
            return Ok(dest);
        }
        fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        remove_stale_downloads(dir, STALE_AFTER);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut attempts = Vec::new();
        for mirror in &self.mirrors {
            let url = format!("{mirror}{}.gz", file.name);
            match self.try_mirror(&agent, &url, file, &dest) {
                Ok(()) => return Ok(dest),
                Err(reason) => attempts.push(format!("  {url}: {reason}")),
            }
        }
        if attempts.is_empty() {
            attempts.push("  no mirror configured".into());
        }
        Err(Error::Download {
            file: format!("{}.gz", file.name),
            attempts: attempts.join("\n"),
        })
    }

    fn try_mirror(&self, agent: &ureq::Agent, url: &str, file: &RemoteFile, dest: &Path) -> std::result::Result<(), String> {
        let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
        let total = response.body().content_length();
        let dir = dest.parent().unwrap_or(Path::new("."));
        let mut tmp = mnist_fs::temp_file_in(dir, DOWNLOAD_PREFIX, "")
            .map_err(|e| format!("cannot create a temporary file in {}: {e}", dir.display()))?;
        let bar = self.bar(total, &file.name);
        let mut reader = response.body_mut().with_config().limit(200 << 20).reader();
        let mut buf = vec![0u8; 64 << 10];
        let mut received = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("transfer failed after {received} bytes: {e}")),
            };
            tmp.write_all(&buf[..n]).map_err(|e| format!("cannot write {}: {e}", tmp.path().display()))?;
            received += n as u64;
            if let Some(bar) = &bar {
                bar.set_position(received);
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if let Some(total) = total
            && received != total
        {
            return Err(format!("truncated: received {received} of {total} bytes"));
        }
        verify(tmp.path(), file).map_err(|e| e.to_string())?;
        mnist_fs::commit(tmp, dest).map_err(|e| format!("cannot move the download to {}: {}", dest.display(), e.io()))
    }

    fn bar(&self, total: Option<u64>, name: &str) -> Option<indicatif::ProgressBar> {
        if !self.progress {
            return None;
        }
        let bar = indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(format!("downloading {name}.gz"));
        Some(bar)
    }
}

/// Prefix of a download in progress (then renamed to its name once verified).
const DOWNLOAD_PREFIX: &str = ".download-";
/// Age after which a download's temporary file is taken to be left by a killed process: a
/// live download writes to its file continuously.
const STALE_AFTER: Duration = Duration::from_secs(600);

/// Removes from `dir` (a cache directory that several processes may share) the
/// temporary files of downloads that were killed before their rename: files named
/// `.download-` and six letters or digits, not written to for `older_than` (a live
/// download writes to its file continuously). Failures are ignored: the cache works with
/// them there.
fn remove_stale_downloads(dir: &Path, older_than: Duration) {
    let _ = mnist_fs::remove_stale_temps(dir, DOWNLOAD_PREFIX, &[""], Some(older_than));
}

/// Checks that `path` is a good copy of `file`: the pinned SHA-256, or else content that
/// parses as IDX of the right kind with exactly `file.count` items.
pub fn verify(path: &Path, file: &RemoteFile) -> Result<()> {
    if let Some(expected) = &file.sha256
        && sha256_file(path)? == *expected
    {
        return Ok(());
    }
    let items = match file.kind {
        IdxKind::Images => idx::read_images(path)?.len() / idx::PIXELS,
        IdxKind::Labels => idx::read_labels(path)?.len(),
    };
    if items != file.count {
        return Err(Error::Verification {
            path: path.to_path_buf(),
            reason: format!("holds {items} {}, expected {}", file.kind, file.count),
        });
    }
    Ok(())
}

/// SHA-256 of a file, as lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let io_err = |source| Error::Io { path: path.to_path_buf(), source };
    mnist_fs::sha256_reader(mnist_fs::open_file(path).map_err(io_err)?).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread;

    /// A tiny HTTP/1.1 server on 127.0.0.1 serving fixed paths; it stops after `max`
    /// requests or 30 s, whichever comes first.
    fn serve(routes: Vec<(String, Vec<u8>, Option<usize>)>, max: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = Arc::new(routes);
        thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            for stream in listener.incoming().take(max) {
                if std::time::Instant::now() > deadline {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let mut reader = io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() <= 2 {
                        break;
                    }
                }
                match routes.iter().find(|(p, _, _)| *p == path) {
                    Some((_, body, cut)) => {
                        // `cut`: announce the full length but send only this many bytes.
                        let sent = cut.unwrap_or(body.len());
                        let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                        let _ = stream.write_all(&body[..sent]);
                    }
                    None => {
                        let _ = write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                }
            }
        });
        format!("http://{addr}")
    }

    fn good_file() -> (RemoteFile, Vec<u8>) {
        let pixels: Vec<u8> = (0..3 * idx::PIXELS).map(|i| (i % 251) as u8).collect();
        let gz = idx::gzip(&idx::encode_images(&pixels));
        let file = RemoteFile {
            name: "train-images-idx3-ubyte".into(),
            kind: IdxKind::Images,
            count: 3,
            sha256: None,
        };
        (file, gz)
    }

    #[test]
    fn falls_back_over_404_truncated_and_corrupt_mirrors() {
        let (file, gz) = good_file();
        let mut corrupt = gz.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0xff;
        corrupt[mid + 1] ^= 0xff;
        let base = serve(
            vec![
                ("/truncated/train-images-idx3-ubyte.gz".into(), gz.clone(), Some(gz.len() / 2)),
                ("/corrupt/train-images-idx3-ubyte.gz".into(), corrupt, None),
                ("/good/train-images-idx3-ubyte.gz".into(), gz.clone(), None),
            ],
            8,
        );
        let dir = tempfile::tempdir().unwrap();
        let mirrors = ["missing", "truncated", "corrupt", "good"].map(|m| format!("{base}/{m}/")).to_vec();
        let path = Downloader::new(mirrors).progress(false).fetch(&file, dir.path()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), gz);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn reports_every_failed_mirror_and_writes_nothing() {
        let (file, gz) = good_file();
        let base = serve(vec![("/truncated/train-images-idx3-ubyte.gz".into(), gz.clone(), Some(10))], 4);
        let dir = tempfile::tempdir().unwrap();
        let mirrors = vec![format!("{base}/missing/"), format!("{base}/truncated/")];
        let err = Downloader::new(mirrors).progress(false).fetch(&file, dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Download { .. }), "{msg}");
        assert!(msg.contains("/missing/train-images-idx3-ubyte.gz") && msg.contains("404"), "{msg}");
        assert!(msg.contains("/truncated/train-images-idx3-ubyte.gz") && msg.contains("truncated"), "{msg}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_cached_copy_is_fetched_again_and_good_copy_is_kept() {
        let (file, gz) = good_file();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("train-images-idx3-ubyte.gz");
        fs::write(&dest, b"not gzip at all").unwrap();
        let base = serve(vec![("/good/train-images-idx3-ubyte.gz".into(), gz.clone(), None)], 2);
        let downloader = Downloader::new(vec![format!("{base}/good/")]).progress(false);
        downloader.fetch(&file, dir.path()).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), gz);
        // A verified copy is not fetched again: a downloader with no mirror still succeeds.
        Downloader::new(vec![]).progress(false).fetch(&file, dir.path()).unwrap();
    }

    #[test]
    fn stale_downloads_are_removed_and_live_ones_and_other_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        for name in [".download-a1B2c3", ".download-abc", "train-images-idx3-ubyte.gz", ".download-a1B2c3.gz"] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_stale_downloads(dir.path(), Duration::from_secs(3600));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 4, "a fresh download was removed");
        remove_stale_downloads(dir.path(), Duration::ZERO);
        let mut left: Vec<String> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [".download-a1B2c3.gz", ".download-abc", "train-images-idx3-ubyte.gz"]);
    }

    #[test]
    fn verification_checks_pinned_digest_or_content() {
        let (mut file, gz) = good_file();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.gz");
        fs::write(&path, &gz).unwrap();
        file.sha256 = Some(sha256_file(&path).unwrap());
        verify(&path, &file).unwrap();
        // A re-compressed copy (other digest, same content) is accepted.
        file.sha256 = Some("0".repeat(64));
        verify(&path, &file).unwrap();
        // The wrong item count is not.
        file.count = 4;
        let err = verify(&path, &file).unwrap_err();
        assert!(err.to_string().contains("holds 3 images, expected 4"), "{err}");
    }
}
