//! What is wrong with a configuration.

use std::path::PathBuf;

/// A configuration that cannot be used. Reported before anything is bound; the binary exits
/// with status 64 (EX_USAGE). Every message names the entry and the key at fault
/// (`binding "API": listen: ...`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown key, wrong type).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent with another one.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// A service's `tls.ca_file` could not be read, holds no certificate or is too large.
    #[error("invalid config: service {service:?}: tls.ca_file {path}: {detail}")]
    CaFile {
        /// The service.
        service: String,
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

pub(crate) fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid(message)
}
