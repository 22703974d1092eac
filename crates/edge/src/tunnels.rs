//! Tunnels: id, name and secret, kept in `tunnels.json` (mode 0600) in the state directory.
//!
//! Lookups are answered from memory, never from the disk: a registration (even an
//! unauthenticated one, with an unknown tunnel id) costs no system call. `underpass-edge
//! tunnel create` writes the file while an edge may be serving; the serving edge notices
//! because a background task looks at the file every [`REFRESH_INTERVAL`], on a blocking
//! thread, and re-reads it when it changed ([`TunnelStore::refresh`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use underpass_proto::{TunnelId, TunnelSecret};
use underpass_rt::Shutdown;

pub use crate::model::{parse_tunnel_id, Tunnel};
use crate::state::{io_error, read, warn_if_readable_by_others, write_file, StateError};

/// How often a serving edge looks for changes to `tunnels.json`.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// The file name inside the state directory.
pub const TUNNELS_FILE: &str = "tunnels.json";
/// Longest tunnel name.
const MAX_TUNNEL_NAME: usize = 64;

/// The tunnels of one state directory, cached in memory.
#[derive(Debug)]
pub struct TunnelStore {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

#[derive(Debug, Default)]
struct Loaded {
    tunnels: Vec<Tunnel>,
    stamp: Option<FileStamp>,
}

/// Enough of a file's metadata to notice that it was replaced or rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    modified: Option<SystemTime>,
    len: u64,
}

/// The on-disk form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelsFile {
    tunnels: Vec<TunnelRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelRecord {
    id: String,
    name: String,
    secret: String,
    created_at: u64,
}

impl TunnelStore {
    /// Open the store of `state_dir`, reading `tunnels.json` if it exists.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let store = TunnelStore {
            path: state_dir.join(TUNNELS_FILE),
            loaded: RwLock::new(Loaded::default()),
        };
        let loaded = store.read_file()?;
        *store.write_lock() = loaded;
        if store.path.exists() {
            warn_if_readable_by_others(&store.path);
        }
        Ok(store)
    }

    /// Create a tunnel with a fresh random id and a 32-byte random secret, and save it.
    pub fn create(&self, name: &str) -> Result<Tunnel, StateError> {
        if !valid_tunnel_name(name) {
            return Err(StateError::BadTunnelName(name.to_owned()));
        }
        let mut loaded = self.write_lock();
        // Start from the file, not the cache: another process may have added tunnels.
        *loaded = self.read_file()?;
        if loaded.tunnels.iter().any(|t| t.name == name) {
            return Err(StateError::DuplicateTunnel(name.to_owned()));
        }
        let id = loop {
            let mut id = [0u8; 16];
            OsRng.fill_bytes(&mut id);
            if !loaded.tunnels.iter().any(|t| t.id.0 == id) {
                break TunnelId(id);
            }
        };
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let tunnel = Tunnel {
            id,
            name: name.to_owned(),
            secret: TunnelSecret(secret),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        loaded.tunnels.push(tunnel.clone());
        self.write_file(&loaded.tunnels)?;
        loaded.stamp = stamp(&self.path);
        info!(tunnel = %tunnel.id_hex(), name, "created tunnel");
        Ok(tunnel)
    }

    /// The tunnel with this id (from memory).
    pub fn by_id(&self, id: &TunnelId) -> Option<Tunnel> {
        self.find(|t| t.id == *id)
    }

    /// The tunnel a config entry refers to: by name, else by id (32 hex digits); from memory.
    pub fn resolve(&self, reference: &str) -> Option<Tunnel> {
        let id = parse_tunnel_id(reference);
        self.find(|t| t.name == reference || Some(t.id) == id)
    }

    /// Every tunnel known, oldest first (from memory).
    pub fn list(&self) -> Vec<Tunnel> {
        self.read_lock().tunnels.clone()
    }

    fn find(&self, matches: impl Fn(&Tunnel) -> bool) -> Option<Tunnel> {
        self.read_lock()
            .tunnels
            .iter()
            .find(|t| matches(t))
            .cloned()
    }

    /// Re-read the file if it changed since it was last read (a `stat`, and a read only if it
    /// changed); returns whether it was re-read. Blocking: on a runtime, call it from a
    /// blocking thread. A broken file is reported and the tunnels already known are kept.
    pub fn refresh(&self) -> bool {
        let current = stamp(&self.path);
        if current == self.read_lock().stamp {
            return false;
        }
        match self.read_file() {
            Ok(loaded) => {
                info!(tunnels = loaded.tunnels.len(), "tunnels reloaded");
                *self.write_lock() = loaded;
                true
            }
            Err(error) => {
                warn!(%error, "cannot reload tunnels; keeping the ones already known");
                false
            }
        }
    }

    /// Call [`refresh`](TunnelStore::refresh) every `interval`, on a blocking thread, until
    /// `shutdown` begins stopping.
    pub(crate) async fn refresh_every(self: Arc<Self>, interval: Duration, shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = std::pin::pin!(shutdown.stopping());
        loop {
            tokio::select! {
                () = &mut stopping => return,
                _ = ticks.tick() => {}
            }
            let store = self.clone();
            if let Err(error) = tokio::task::spawn_blocking(move || store.refresh()).await {
                warn!(%error, "tunnel refresh failed");
            }
        }
    }

    fn read_file(&self) -> Result<Loaded, StateError> {
        let stamp_before = stamp(&self.path);
        if stamp_before.is_none() {
            return Ok(Loaded::default());
        }
        let text = read(&self.path)?;
        let corrupt = |detail: String| StateError::CorruptTunnels {
            path: self.path.clone(),
            detail,
        };
        let file: TunnelsFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        let mut tunnels = Vec::with_capacity(file.tunnels.len());
        for record in file.tunnels {
            let id = parse_tunnel_id(&record.id)
                .ok_or_else(|| corrupt(format!("tunnel {:?}: bad id", record.name)))?;
            let mut secret = [0u8; 32];
            hex::decode_to_slice(&record.secret, &mut secret)
                .map_err(|_| corrupt(format!("tunnel {:?}: bad secret", record.name)))?;
            tunnels.push(Tunnel {
                id,
                name: record.name,
                secret: TunnelSecret(secret),
                created_at: record.created_at,
            });
        }
        Ok(Loaded {
            tunnels,
            stamp: stamp_before,
        })
    }

    fn write_file(&self, tunnels: &[Tunnel]) -> Result<(), StateError> {
        let file = TunnelsFile {
            tunnels: tunnels
                .iter()
                .map(|t| TunnelRecord {
                    id: t.id_hex(),
                    name: t.name.clone(),
                    secret: hex::encode(t.secret.0),
                    created_at: t.created_at,
                })
                .collect(),
        };
        let mut json = serde_json::to_vec_pretty(&file)
            .map_err(|e| io_error(&self.path, std::io::Error::other(e)))?;
        json.push(b'\n');
        write_file(&self.path, &json, 0o600)
    }

    fn read_lock(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        // A panic while holding the lock cannot leave `Loaded` half-updated (it is replaced
        // whole), so a poisoned lock is still usable.
        self.loaded.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Loaded> {
        // As in read_lock.
        self.loaded.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn valid_tunnel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TUNNEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && parse_tunnel_id(name).is_none()
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        inode: meta.ino(),
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_resolve_and_reload() {
        let dir = tempfile::tempdir().unwrap(); // test scratch dir
        let store = TunnelStore::open(dir.path()).unwrap(); // empty dir
        let prod = store.create("prod").unwrap(); // new name
        assert!(matches!(
            store.create("prod"),
            Err(StateError::DuplicateTunnel(_))
        ));
        assert!(matches!(
            store.create(&"a".repeat(32)),
            Err(StateError::BadTunnelName(_))
        ));
        assert_eq!(store.resolve("prod"), Some(prod.clone()));
        assert_eq!(store.resolve(&prod.id_hex()), Some(prod.clone()));
        assert_eq!(store.by_id(&prod.id), Some(prod.clone()));

        // Another process (here: another store) adds a tunnel; the first one finds it once it
        // has refreshed, and not before (lookups never touch the disk).
        let other = TunnelStore::open(dir.path()).unwrap(); // file exists
        let staging = other.create("staging").unwrap(); // new name
        assert_eq!(store.by_id(&staging.id), None);
        assert!(store.refresh());
        assert!(!store.refresh(), "unchanged file: not read again");
        assert_eq!(store.by_id(&staging.id), Some(staging));
        assert_eq!(store.list().len(), 2);
        assert_ne!(prod.secret.0, [0u8; 32]);
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap(); // test scratch dir
        std::fs::write(dir.path().join(TUNNELS_FILE), "{\"tunnels\": [{}]}").unwrap(); // scratch
        assert!(matches!(
            TunnelStore::open(dir.path()),
            Err(StateError::CorruptTunnels { .. })
        ));
    }
}
