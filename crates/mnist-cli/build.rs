//! Records the git commit this binary is built from (`MNIST_RS_COMMIT`, with `-dirty`
//! when tracked files differ from it), so `mnist train` reports the code that ran rather
//! than whatever directory it runs in. Unset when the source is not a git checkout.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let dir = Path::new(&manifest);
    // Rebuilt when HEAD moves or the index changes (a commit, a checkout, an add).
    if let Some(git_dir) = git(dir, &["rev-parse", "--absolute-git-dir"]) {
        for file in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={git_dir}/{file}");
        }
        if let Some(head_ref) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{head_ref}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(commit) = git(dir, &["rev-parse", "HEAD"]) {
        let dirty = git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        println!("cargo:rustc-env=MNIST_RS_COMMIT={commit}{}", if dirty { "-dirty" } else { "" });
    }
}
