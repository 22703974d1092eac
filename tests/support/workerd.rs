//! Where the `workerd` binary is (installed by `scripts/test`).

use std::path::PathBuf;

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
