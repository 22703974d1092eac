//! The edge's state directory: the development PKI and the tunnel list.
//!
//! | file | what | mode |
//! |---|---|---|
//! | `ca.pem` | the dev CA certificate; its SHA-256 pin goes into tokens | 0644 |
//! | `ca.key` | the dev CA private key | 0600 |
//! | `edge.pem` | the edge certificate chain (leaf, then CA) | 0644 |
//! | `edge.key` | the edge private key | 0600 |
//! | `edge.names` | the names the edge certificate was issued for, one a line | 0644 |
//! | `tunnels.json` | tunnels: id, name, secret ([`crate::tunnels`]) | 0600 |
//! | `reset.key` | the QUIC stateless-reset key: 32 random bytes ([`reset_key`]) | 0600 |
//!
//! The PKI is generated on first use and reused afterwards, so tokens stay valid across
//! restarts. So is the reset key, so that an edge restarted on the same address resets the
//! connections of its previous run at once instead of leaving connectors to their idle timeout.

use std::fmt;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::info;
use underpass_transport::tls::{self, DevPki, TlsError};

/// Mode of files holding secrets.
const PRIVATE_MODE: u32 = 0o600;
/// Mode of files anyone may read.
const PUBLIC_MODE: u32 = 0o644;
/// Mode of the state directory when the edge creates it.
const DIR_MODE: u32 = 0o700;

pub(crate) const CA_CERT: &str = "ca.pem";
pub(crate) const CA_KEY: &str = "ca.key";
pub(crate) const EDGE_CHAIN: &str = "edge.pem";
pub(crate) const EDGE_KEY: &str = "edge.key";
pub(crate) const EDGE_NAMES: &str = "edge.names";
/// The QUIC stateless-reset key's file.
pub const RESET_KEY: &str = "reset.key";
/// The reset key's length.
const RESET_KEY_LEN: usize = 32;

/// The state directory is missing, unreadable or inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Generating or reading the PKI failed.
    #[error("edge PKI: {0}")]
    Pki(#[from] TlsError),
    /// Some PKI files exist and others do not.
    #[error(
        "incomplete PKI in {dir}: {missing} is missing; restore it, or remove ca.pem, ca.key, \
         edge.pem and edge.key to generate a new CA (every existing token stops working)"
    )]
    IncompletePki {
        /// The state directory.
        dir: PathBuf,
        /// The first missing file.
        missing: &'static str,
    },
    /// The stored certificate was issued for other names than the configuration asks for.
    #[error(
        "the edge certificate in {dir} was issued for {issued:?}, but server_name is {wanted:?}; \
         set server_name back, or remove ca.pem, ca.key, edge.pem and edge.key to generate a new \
         CA (every existing token stops working)"
    )]
    NamesChanged {
        /// The state directory.
        dir: PathBuf,
        /// Names in the stored certificate.
        issued: Vec<String>,
        /// The configured server name.
        wanted: String,
    },
    /// `tunnels.json` is not valid.
    #[error("{path} is corrupt: {detail}")]
    CorruptTunnels {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A tunnel with this name exists already.
    #[error("a tunnel named {0:?} exists already")]
    DuplicateTunnel(String),
    /// The tunnel name is not acceptable.
    #[error(
        "tunnel name {0:?}: use 1-64 characters among A-Z a-z 0-9 - _ . (and not 32 hex digits)"
    )]
    BadTunnelName(String),
    /// No tunnel with this name or id.
    #[error("no tunnel named {0:?}")]
    UnknownTunnel(String),
    /// `reset.key` does not hold exactly 32 bytes.
    #[error(
        "{path} holds {len} bytes, but a stateless-reset key is exactly 32; remove the file to \
         have a new key generated (connections of the edge's previous run then end by their \
         idle timeout instead of at once)"
    )]
    BadResetKey {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

/// The edge's certificate material, as stored in the state directory.
#[derive(Clone)]
pub struct Pki {
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The chain the edge presents: leaf then CA (PEM).
    pub chain_pem: String,
    /// The edge's private key (PEM).
    pub key_pem: String,
    /// SHA-256 of the CA certificate's DER: the pin carried in tokens.
    pub ca_pin: [u8; 32],
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("ca_pin", &hex::encode(self.ca_pin))
            .finish_non_exhaustive()
    }
}

/// The names the edge certificate is issued for.
pub fn certificate_names(server_name: &str) -> Vec<String> {
    let mut names = vec![server_name.to_owned()];
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    names
}

/// Create the state directory (mode 0700) if it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        return Err(io_error(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "state_dir exists and is not a directory",
            ),
        ));
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| io_error(dir, source))
}

impl Pki {
    /// Load the PKI from `dir`, or generate and store it when none exists.
    pub fn load_or_generate(dir: &Path, server_name: &str) -> Result<Pki, StateError> {
        ensure_dir(dir)?;
        let files = [CA_CERT, CA_KEY, EDGE_CHAIN, EDGE_KEY];
        let present: Vec<bool> = files.iter().map(|f| dir.join(f).exists()).collect();
        if present.iter().all(|p| !p) {
            return Self::generate(dir, server_name);
        }
        if let Some(missing) = files.iter().zip(&present).find(|(_, p)| !**p) {
            return Err(StateError::IncompletePki {
                dir: dir.to_owned(),
                missing: missing.0,
            });
        }
        let names_path = dir.join(EDGE_NAMES);
        if names_path.exists() {
            let issued: Vec<String> = read(&names_path)?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            if !issued.iter().any(|n| n == server_name) {
                return Err(StateError::NamesChanged {
                    dir: dir.to_owned(),
                    issued,
                    wanted: server_name.to_owned(),
                });
            }
        }
        let ca_pem = read(&dir.join(CA_CERT))?;
        let ca_pin = tls::pem_first_cert_pin(ca_pem.as_bytes())?;
        Ok(Pki {
            ca_pin,
            ca_pem,
            chain_pem: read(&dir.join(EDGE_CHAIN))?,
            key_pem: read(&dir.join(EDGE_KEY))?,
        })
    }

    fn generate(dir: &Path, server_name: &str) -> Result<Pki, StateError> {
        let names = certificate_names(server_name);
        let pki = DevPki::generate(&names)?;
        // Keys first: a crash part way leaves an incomplete PKI that is reported, never a
        // certificate without its key silently regenerated.
        write_file(&dir.join(CA_KEY), pki.ca_key_pem.as_bytes(), PRIVATE_MODE)?;
        write_file(&dir.join(EDGE_KEY), pki.key_pem.as_bytes(), PRIVATE_MODE)?;
        write_file(&dir.join(EDGE_CHAIN), pki.chain_pem.as_bytes(), PUBLIC_MODE)?;
        write_file(
            &dir.join(EDGE_NAMES),
            (names.join("\n") + "\n").as_bytes(),
            PUBLIC_MODE,
        )?;
        write_file(&dir.join(CA_CERT), pki.ca_cert_pem.as_bytes(), PUBLIC_MODE)?;
        info!(
            dir = %dir.display(),
            ca_pin = %hex::encode(pki.ca_pin),
            names = ?names,
            "generated the edge's development CA and certificate"
        );
        Ok(Pki {
            ca_pem: pki.ca_cert_pem,
            chain_pem: pki.chain_pem,
            key_pem: pki.key_pem,
            ca_pin: pki.ca_pin,
        })
    }
}

/// The QUIC stateless-reset key of `dir`'s edge: read from `reset.key`, or generated (32 bytes
/// from the OS) and stored with mode 0600 when the file does not exist. A file of another
/// length is an error rather than silently replaced.
pub fn reset_key(dir: &Path) -> Result<[u8; RESET_KEY_LEN], StateError> {
    ensure_dir(dir)?;
    let path = dir.join(RESET_KEY);
    match std::fs::read(&path) {
        Ok(bytes) => {
            <[u8; RESET_KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| StateError::BadResetKey {
                path: path.clone(),
                len: bytes.len(),
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; RESET_KEY_LEN];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            write_file(&path, &key, PRIVATE_MODE)?;
            info!(file = %path.display(), "generated the QUIC stateless-reset key");
            Ok(key)
        }
        Err(source) => Err(io_error(&path, source)),
    }
}

/// Write `contents` to `path` atomically (temporary file in the same folder, then rename) with
/// `mode`: a reader never sees half a file, and a secret is never readable by others, not even
/// for a moment.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), StateError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode above applies only when the file is created; a leftover temporary file
        // keeps its own, so set it again.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        io_error(path, source)
    })
}

pub(crate) fn read(path: &Path) -> Result<String, StateError> {
    std::fs::read_to_string(path).map_err(|source| io_error(path, source))
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> StateError {
    StateError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_state_dir_that_is_a_file_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap(); // test scratch space
        let file = dir.path().join("state");
        std::fs::write(&file, b"").unwrap(); // writable
        let error = ensure_dir(&file).unwrap_err().to_string();
        assert!(error.contains(&file.display().to_string()), "{error}");
        assert!(error.contains("is not a directory"), "{error}");
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777 // file just written
    }

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap(); // test scratch dir
        let state = dir.path().join("state");
        let first = Pki::load_or_generate(&state, "edge.test").unwrap(); // fresh dir
        assert_eq!(mode(&state), DIR_MODE);
        assert_eq!(mode(&state.join(CA_KEY)), PRIVATE_MODE);
        assert_eq!(mode(&state.join(EDGE_KEY)), PRIVATE_MODE);
        let again = Pki::load_or_generate(&state, "edge.test").unwrap(); // files present
        assert_eq!(first.ca_pin, again.ca_pin);
        assert_eq!(first.chain_pem, again.chain_pem);
        assert!(!format!("{again:?}").contains("PRIVATE"));
    }

    #[test]
    fn reset_key_is_created_once_and_checked() {
        let dir = tempfile::tempdir().unwrap(); // test scratch dir
        let state = dir.path().join("state");
        let first = reset_key(&state).unwrap(); // fresh dir
        assert_eq!(mode(&state.join(RESET_KEY)), PRIVATE_MODE);
        assert_ne!(first, [0u8; 32]);
        assert_eq!(reset_key(&state).unwrap(), first, "reused, not regenerated"); // file exists
        std::fs::write(state.join(RESET_KEY), [1u8; 31]).unwrap(); // scratch
        let error = reset_key(&state).unwrap_err();
        assert!(
            matches!(error, StateError::BadResetKey { len: 31, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("exactly 32"), "{error}");
    }

    #[test]
    fn inconsistent_state_is_reported() {
        let dir = tempfile::tempdir().unwrap(); // test scratch dir
        Pki::load_or_generate(dir.path(), "edge.test").unwrap(); // fresh dir
        let renamed = Pki::load_or_generate(dir.path(), "other.test").unwrap_err();
        assert!(
            matches!(renamed, StateError::NamesChanged { .. }),
            "{renamed}"
        );
        std::fs::remove_file(dir.path().join(EDGE_KEY)).unwrap(); // exists
        let partial = Pki::load_or_generate(dir.path(), "edge.test").unwrap_err();
        assert!(matches!(
            partial,
            StateError::IncompletePki {
                missing: EDGE_KEY,
                ..
            }
        ));
    }
}
