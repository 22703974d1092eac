//! Tunnels: id, name and secret, kept in `tunnels.json` (mode 0600) in the state directory.
//!
//! Lookups are answered from memory, never from the disk: a registration (even an
//! unauthenticated one, with an unknown tunnel id) costs no system call. `underpass-edge
//! tunnel create` writes the file while an edge may be serving; the serving edge notices
//! because a background task looks at the file every [`REFRESH_INTERVAL`], on a blocking
//! thread, and re-reads it when it changed ([`TunnelStore::refresh`]).
//!
//! `tunnel delete` and `tunnel rotate-secret` revoke a tunnel's current secret. The file keeps
//! a note of it (a deleted tunnel's id and name, a tunnel's last rotation time) so that a
//! connector still presenting the old token is refused with a reason that says what happened
//! ([`TunnelStore::unknown_tunnel_detail`], [`TunnelStore::bad_proof_detail`]), and a refresh
//! reports which tunnels were revoked ([`Revoked`]) so the edge can close their connections.

use std::collections::HashMap;
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
use crate::state::{io_error, read, write_file, StateError};

/// How often a serving edge looks for changes to `tunnels.json`.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// The file name inside the state directory.
pub const TUNNELS_FILE: &str = "tunnels.json";
/// Longest tunnel name.
const MAX_TUNNEL_NAME: usize = 64;
/// How many deleted tunnels the file remembers (for the refusal reason), newest kept.
const MAX_DELETED: usize = 1000;

/// The tunnels of one state directory, cached in memory.
#[derive(Debug)]
pub struct TunnelStore {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    /// The tunnels of the directory database (made through the admin API), set by the edge
    /// whenever they change ([`TunnelStore::set_api_tunnels`]).
    api: RwLock<Vec<Tunnel>>,
}

#[derive(Debug, Default)]
struct Loaded {
    tunnels: Vec<Tunnel>,
    /// When each tunnel's secret was last rotated (seconds since the Unix epoch).
    rotated: HashMap<TunnelId, u64>,
    /// Tunnels deleted from this store, oldest first.
    deleted: Vec<Deleted>,
    stamp: Option<FileStamp>,
}

/// A tunnel that was deleted: enough to tell its connectors why they are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Deleted {
    id: TunnelId,
    name: String,
    at: u64,
}

/// A tunnel whose secret stopped being valid, as a refresh saw it: its connections must be
/// closed (a connector that re-registers is refused with the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The tunnel.
    pub id: TunnelId,
    /// Its name.
    pub name: String,
    /// What happened.
    pub why: Revocation,
}

/// How a tunnel was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// `tunnel delete`: the tunnel is gone.
    Deleted,
    /// `tunnel rotate-secret`: the tunnel has a new secret; the old token no longer works.
    SecretRotated,
}

impl Revocation {
    /// A short text for logs and the QUIC close reason.
    pub fn text(self) -> &'static str {
        match self {
            Revocation::Deleted => "tunnel deleted",
            Revocation::SecretRotated => "tunnel secret rotated",
        }
    }
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deleted: Vec<DeletedRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelRecord {
    id: String,
    name: String,
    secret: String,
    created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_rotated_at: Option<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeletedRecord {
    id: String,
    name: String,
    deleted_at: u64,
}

impl TunnelStore {
    /// Open the store of `state_dir`, reading `tunnels.json` if it exists. (Its mode is
    /// checked by `check-config` and at start, with the other risky settings.)
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let store = TunnelStore {
            path: state_dir.join(TUNNELS_FILE),
            loaded: RwLock::new(Loaded::default()),
            api: RwLock::new(Vec::new()),
        };
        let loaded = store.read_file()?;
        *store.write_lock() = loaded;
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
        let tunnel = Tunnel {
            id,
            name: name.to_owned(),
            secret: random_secret(),
            created_at: now(),
        };
        loaded.tunnels.push(tunnel.clone());
        self.save(&mut loaded)?;
        info!(tunnel = %tunnel.id_hex(), name, "created tunnel");
        Ok(tunnel)
    }

    /// Delete a tunnel (by name or id) and save. Connectors still presenting its token are
    /// refused, with a reason saying it was deleted. Returns the deleted tunnel.
    pub fn delete(&self, reference: &str) -> Result<Tunnel, StateError> {
        let mut loaded = self.write_lock();
        *loaded = self.read_file()?;
        let index = position(&loaded.tunnels, reference)
            .ok_or_else(|| StateError::UnknownTunnel(reference.to_owned()))?;
        let tunnel = loaded.tunnels.remove(index);
        loaded.rotated.remove(&tunnel.id);
        loaded.deleted.push(Deleted {
            id: tunnel.id,
            name: tunnel.name.clone(),
            at: now(),
        });
        let excess = loaded.deleted.len().saturating_sub(MAX_DELETED);
        loaded.deleted.drain(..excess);
        self.save(&mut loaded)?;
        info!(tunnel = %tunnel.id_hex(), name = %tunnel.name, "deleted tunnel");
        Ok(tunnel)
    }

    /// Give a tunnel (by name or id) a new random secret and save. Its id stays, so the
    /// config's references to it stay valid; the old token stops working. Returns the tunnel
    /// with its new secret.
    pub fn rotate_secret(&self, reference: &str) -> Result<Tunnel, StateError> {
        let mut loaded = self.write_lock();
        *loaded = self.read_file()?;
        let index = position(&loaded.tunnels, reference)
            .ok_or_else(|| StateError::UnknownTunnel(reference.to_owned()))?;
        let secret = loop {
            let secret = random_secret();
            if secret != loaded.tunnels[index].secret {
                break secret;
            }
        };
        loaded.tunnels[index].secret = secret;
        let tunnel = loaded.tunnels[index].clone();
        loaded.rotated.insert(tunnel.id, now());
        self.save(&mut loaded)?;
        info!(tunnel = %tunnel.id_hex(), name = %tunnel.name, "rotated the tunnel secret");
        Ok(tunnel)
    }

    /// Why a registration naming `id` finds no tunnel: the refusal's message.
    pub fn unknown_tunnel_detail(&self, id: &TunnelId) -> String {
        let loaded = self.read_lock();
        match loaded.deleted.iter().rev().find(|d| d.id == *id) {
            Some(deleted) => format!(
                "tunnel {} was deleted from this edge at {} UTC; its token no longer works",
                deleted.name,
                crate::model::utc_date(deleted.at)
            ),
            None => "this edge has no such tunnel; check the token".into(),
        }
    }

    /// Why a registration's proof for `tunnel` does not match: the refusal's message.
    pub fn bad_proof_detail(&self, id: &TunnelId) -> String {
        let loaded = self.read_lock();
        let Some(tunnel) = loaded.tunnels.iter().find(|t| t.id == *id) else {
            return "the proof does not match the tunnel secret; check the token".into();
        };
        match loaded.rotated.get(id) {
            Some(at) => format!(
                "the proof does not match the tunnel secret: the secret of tunnel {} was \
                 rotated at {} UTC; run the connector with the new token (`underpass-edge \
                 tunnel token {}` prints it)",
                tunnel.name,
                crate::model::utc_date(*at),
                tunnel.name
            ),
            None => "the proof does not match the tunnel secret; check the token".into(),
        }
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

    /// Every tunnel known, oldest first (from memory): those of `tunnels.json`, then those
    /// of the directory database.
    pub fn list(&self) -> Vec<Tunnel> {
        let mut all = self.read_lock().tunnels.clone();
        all.extend(self.api_lock().iter().cloned());
        all
    }

    fn find(&self, matches: impl Fn(&Tunnel) -> bool) -> Option<Tunnel> {
        let found = self
            .read_lock()
            .tunnels
            .iter()
            .find(|t| matches(t))
            .cloned();
        found.or_else(|| self.api_lock().iter().find(|t| matches(t)).cloned())
    }

    fn api_lock(&self) -> std::sync::RwLockReadGuard<'_, Vec<Tunnel>> {
        // Writers replace the whole list, so a poisoned lock holds a consistent one.
        self.api.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace the tunnels of the directory database; returns those revoked by the change
    /// (deleted, or with another secret), whose connections must be closed.
    pub(crate) fn set_api_tunnels(&self, tunnels: Vec<Tunnel>) -> Vec<Revoked> {
        let mut current = self.api.write().unwrap_or_else(|p| p.into_inner());
        let revoked = revoked(&current, &tunnels);
        *current = tunnels;
        revoked
    }

    /// Re-read the file if it changed since it was last read (a `stat`, and a read only if it
    /// changed); returns whether it was re-read. Blocking: on a runtime, call it from a
    /// blocking thread. A broken file is reported and the tunnels already known are kept.
    pub fn refresh(&self) -> bool {
        self.refresh_revoked().is_some()
    }

    /// [`refresh`](TunnelStore::refresh), returning `None` if the file was not re-read, else
    /// the tunnels it revoked: deleted, or with another secret than before.
    pub fn refresh_revoked(&self) -> Option<Vec<Revoked>> {
        let current = stamp(&self.path);
        if current == self.read_lock().stamp {
            return None;
        }
        match self.read_file() {
            Ok(loaded) => {
                info!(tunnels = loaded.tunnels.len(), "tunnels reloaded");
                let mut known = self.write_lock();
                let revoked = revoked(&known.tunnels, &loaded.tunnels);
                *known = loaded;
                Some(revoked)
            }
            Err(error) => {
                warn!(%error, "cannot reload tunnels; keeping the ones already known");
                None
            }
        }
    }

    /// Call [`refresh_revoked`](TunnelStore::refresh_revoked) every `interval`, on a blocking
    /// thread, until `shutdown` begins stopping; `on_revoked` is called with every tunnel a
    /// refresh revoked.
    pub(crate) async fn refresh_every(
        self: Arc<Self>,
        interval: Duration,
        shutdown: Shutdown,
        on_revoked: impl Fn(&[Revoked]) + Send + 'static,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = std::pin::pin!(shutdown.stopping());
        loop {
            tokio::select! {
                () = &mut stopping => return,
                _ = ticks.tick() => {}
            }
            let store = self.clone();
            match tokio::task::spawn_blocking(move || store.refresh_revoked()).await {
                Ok(Some(revoked)) if !revoked.is_empty() => on_revoked(&revoked),
                Ok(_) => {}
                Err(error) => warn!(%error, "tunnel refresh failed"),
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
        let mut rotated = HashMap::new();
        for record in file.tunnels {
            let id = parse_tunnel_id(&record.id)
                .ok_or_else(|| corrupt(format!("tunnel {:?}: bad id", record.name)))?;
            let mut secret = [0u8; 32];
            hex::decode_to_slice(&record.secret, &mut secret)
                .map_err(|_| corrupt(format!("tunnel {:?}: bad secret", record.name)))?;
            if let Some(at) = record.secret_rotated_at {
                rotated.insert(id, at);
            }
            tunnels.push(Tunnel {
                id,
                name: record.name,
                secret: TunnelSecret(secret),
                created_at: record.created_at,
            });
        }
        let mut deleted = Vec::with_capacity(file.deleted.len());
        for record in file.deleted {
            let id = parse_tunnel_id(&record.id)
                .ok_or_else(|| corrupt(format!("deleted tunnel {:?}: bad id", record.name)))?;
            deleted.push(Deleted {
                id,
                name: record.name,
                at: record.deleted_at,
            });
        }
        Ok(Loaded {
            tunnels,
            rotated,
            deleted,
            stamp: stamp_before,
        })
    }

    /// Write `loaded` to the file and note the file's new stamp.
    fn save(&self, loaded: &mut Loaded) -> Result<(), StateError> {
        self.write_file(loaded)?;
        loaded.stamp = stamp(&self.path);
        Ok(())
    }

    fn write_file(&self, loaded: &Loaded) -> Result<(), StateError> {
        let file = TunnelsFile {
            tunnels: loaded
                .tunnels
                .iter()
                .map(|t| TunnelRecord {
                    id: t.id_hex(),
                    name: t.name.clone(),
                    secret: hex::encode(t.secret.0),
                    created_at: t.created_at,
                    secret_rotated_at: loaded.rotated.get(&t.id).copied(),
                })
                .collect(),
            deleted: loaded
                .deleted
                .iter()
                .map(|d| DeletedRecord {
                    id: hex::encode(d.id.0),
                    name: d.name.clone(),
                    deleted_at: d.at,
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

/// The tunnels of `before` that `after` no longer has, or has with another secret.
fn revoked(before: &[Tunnel], after: &[Tunnel]) -> Vec<Revoked> {
    before
        .iter()
        .filter_map(|old| {
            let why = match after.iter().find(|t| t.id == old.id) {
                None => Revocation::Deleted,
                Some(new) if new.secret != old.secret => Revocation::SecretRotated,
                Some(_) => return None,
            };
            Some(Revoked {
                id: old.id,
                name: old.name.clone(),
                why,
            })
        })
        .collect()
}

/// Where the tunnel `reference` (a name, else an id) is in `tunnels`.
fn position(tunnels: &[Tunnel], reference: &str) -> Option<usize> {
    let id = parse_tunnel_id(reference);
    tunnels
        .iter()
        .position(|t| t.name == reference)
        .or_else(|| tunnels.iter().position(|t| Some(t.id) == id))
}

fn random_secret() -> TunnelSecret {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    TunnelSecret(secret)
}

/// Seconds since the Unix epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
    fn delete_and_rotate_are_seen_by_other_stores() {
        let dir = tempfile::tempdir().unwrap(); // test scratch dir
        let serving = TunnelStore::open(dir.path()).unwrap(); // empty dir
        let prod = serving.create("prod").unwrap(); // new name
        let staging = serving.create("staging").unwrap(); // new name
        let keep = serving.create("keep").unwrap(); // new name

        // The CLI is another process: another store on the same folder.
        let cli = TunnelStore::open(dir.path()).unwrap(); // file exists
        assert!(matches!(
            cli.delete("nope"),
            Err(StateError::UnknownTunnel(_))
        ));
        assert_eq!(cli.delete("prod").unwrap(), prod); // exists
        let rotated = cli.rotate_secret(&staging.id_hex()).unwrap(); // by id
        assert_eq!(rotated.id, staging.id);
        assert_ne!(rotated.secret, staging.secret);

        let mut revoked = serving.refresh_revoked().expect("the file changed");
        revoked.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            revoked,
            [
                Revoked {
                    id: prod.id,
                    name: "prod".into(),
                    why: Revocation::Deleted
                },
                Revoked {
                    id: staging.id,
                    name: "staging".into(),
                    why: Revocation::SecretRotated
                },
            ]
        );
        assert_eq!(serving.refresh_revoked(), None, "unchanged file");
        assert_eq!(serving.resolve("prod"), None);
        assert_eq!(serving.resolve("staging"), Some(rotated));
        assert_eq!(serving.resolve("keep"), Some(keep));

        // The refusal reasons say what happened, and survive a restart (a new store).
        let restarted = TunnelStore::open(dir.path()).unwrap(); // file exists
        for store in [&serving, &restarted] {
            let unknown = store.unknown_tunnel_detail(&prod.id);
            assert!(unknown.contains("tunnel prod was deleted"), "{unknown}");
            let bad = store.bad_proof_detail(&staging.id);
            assert!(
                bad.contains("secret of tunnel staging was rotated"),
                "{bad}"
            );
            assert!(bad.contains("tunnel token staging"), "{bad}");
            let other = store.unknown_tunnel_detail(&TunnelId([7; 16]));
            assert!(other.contains("no such tunnel"), "{other}");
        }
        // A name can be used again after a delete.
        let again = cli.create("prod").unwrap(); // name free again
        assert_ne!(again.id, prod.id);
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
