//! Records the git commit the binaries are built from, for `--version`.
//!
//! `UNDERPASS_GIT_COMMIT` in the build's environment wins (a source tarball has no `.git`);
//! else `git rev-parse --short=12 HEAD`; else `unknown`. Cargo re-runs this when HEAD moves.
//! (Uncommitted changes are not marked: watching the work tree would rebuild every dependent
//! crate on each edit.)

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=UNDERPASS_GIT_COMMIT");
    let commit = match std::env::var("UNDERPASS_GIT_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_owned(),
        _ => {
            if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                let git_dir = Path::new(&git_dir);
                println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
                if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    println!("cargo:rerun-if-changed={}", git_dir.join(head).display());
                }
            }
            match git(&["rev-parse", "--short=12", "HEAD"]) {
                Some(commit) if !commit.is_empty() => commit,
                _ => "unknown".to_owned(),
            }
        }
    };
    println!("cargo:rustc-env=UNDERPASS_GIT_COMMIT={commit}");
}
