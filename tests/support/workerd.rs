//! The real Workers runtime: where the `workerd` binary is (installed by `scripts/test`), the
//! Cap'n Proto configs that make Underpass bindings a Worker's `env` ([`capnp`]), and a running
//! `workerd` process with a client to call its Workers ([`Workerd`]).

pub mod capnp;
mod runner;

use std::path::PathBuf;

pub use runner::{Workerd, WorkerdSetup, REQUEST_TIMEOUT};

use crate::repo_root;

/// The environment variable naming the `workerd` binary.
pub const WORKERD_ENV: &str = "UNDERPASS_WORKERD";

/// The `workerd` binary named by `UNDERPASS_WORKERD`, if set and the file exists.
///
/// `scripts/test` installs workerd with npm into `.cache/workerd` and sets the variable; a
/// plain `cargo test` leaves it unset, and workerd tests should then say so and skip.
pub fn workerd_binary() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(WORKERD_ENV)?);
    path.is_file().then_some(path)
}

/// The workerd binary: `UNDERPASS_WORKERD`, else the copy `scripts/test` installs in
/// `.cache/workerd`.
///
/// # Panics
/// When neither exists: the suite must not pass silently without the real runtime.
pub fn binary() -> PathBuf {
    if let Some(path) = workerd_binary() {
        return path;
    }
    let cached = repo_root().join(".cache/workerd/node_modules/.bin/workerd");
    if cached.is_file() {
        return cached;
    }
    panic!(
        "workerd is not installed ({WORKERD_ENV} is unset and {} is missing). \
         Run the tests with scripts/test: it installs workerd from npm into .cache/workerd.",
        cached.display()
    );
}
