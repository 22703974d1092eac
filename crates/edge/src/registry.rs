//! Live connector connections, per tunnel.
//!
//! A tunnel may have several connectors (replicas, up to 25) each holding several connections
//! (HA). Every registered connection is an entry; [`Registry::pick`] spreads new streams over
//! the entries that are not draining, round-robin. The registry is generic over the connection
//! type, so the QUIC transport and a later HTTP/2 fallback (or an enum of both) share it.
//!
//! The lock is a plain `std` mutex held only for map operations, never across an `.await`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::watch;
use underpass_proto::{AnnouncedRoute, ConnectorId, TunnelId};

/// Most connections one tunnel may hold: 25 connector replicas × 4 connections each.
pub const MAX_CONNECTIONS_PER_TUNNEL: usize = 100;

/// A registration the registry refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The tunnel already holds [`MAX_CONNECTIONS_PER_TUNNEL`] connections.
    #[error("tunnel already has {0} connections")]
    TooManyConnections(usize),
}

/// What a connector told about one connection when it registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConnection {
    /// The tunnel it serves.
    pub tunnel_id: TunnelId,
    /// The connector instance.
    pub connector_id: ConnectorId,
    /// Which of the connector's parallel connections this is.
    pub connection_index: u8,
    /// The connector's address as the edge sees it.
    pub remote: SocketAddr,
    /// The connector's software version.
    pub version: String,
    /// The routes it announced.
    pub routes: Vec<AnnouncedRoute>,
}

/// One live connection, as [`Registry::snapshot`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The edge's id for this connection.
    pub connection_id: u64,
    /// What the connector registered.
    pub registration: NewConnection,
    /// When it registered.
    pub registered_at: SystemTime,
    /// Whether it is draining (no new streams).
    pub draining: bool,
    /// Streams currently open on it by the edge.
    pub active_streams: usize,
}

/// Tracks the streams open on one connection.
#[derive(Debug, Clone)]
pub struct StreamTracker {
    open: Arc<watch::Sender<usize>>,
}

impl StreamTracker {
    fn new() -> Self {
        StreamTracker {
            open: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        *self.open.borrow()
    }

    /// Resolves once no stream is open.
    pub async fn idle(&self) {
        let mut open = self.open.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = open.wait_for(|n| *n == 0).await;
    }

    fn lease(&self) -> StreamLease {
        self.open.send_modify(|n| *n += 1);
        StreamLease {
            open: self.open.clone(),
        }
    }
}

/// Counts one open stream on a connection until dropped. Hold it for the stream's lifetime, so
/// a draining connection is closed only once its streams are done.
#[derive(Debug)]
pub struct StreamLease {
    open: Arc<watch::Sender<usize>>,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A connection chosen for a new stream.
#[derive(Debug)]
pub struct Picked<C> {
    /// The edge's id for the connection.
    pub connection_id: u64,
    /// The connection.
    pub conn: C,
    /// Counts the stream about to be opened; keep it until the stream ends.
    pub lease: StreamLease,
}

/// The result of a successful [`Registry::register`].
#[derive(Debug)]
pub struct Registered<C> {
    /// A connection the same connector registered earlier with the same index, now removed:
    /// the connector replaced it, so it is dead or about to be. The caller closes it.
    pub superseded: Option<(u64, C)>,
    /// The new connection's stream counter.
    pub streams: StreamTracker,
}

/// Live connections per tunnel.
pub struct Registry<C> {
    inner: Mutex<HashMap<TunnelId, TunnelConnections<C>>>,
    next_id: AtomicU64,
    changes: watch::Sender<u64>,
}

struct TunnelConnections<C> {
    entries: Vec<Entry<C>>,
    /// Where the next round-robin pick starts.
    cursor: usize,
}

struct Entry<C> {
    info: ConnectionInfo,
    conn: C,
    streams: StreamTracker,
}

impl<C: Clone> Default for Registry<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clone> Registry<C> {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            inner: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            changes: watch::Sender::new(0),
        }
    }

    /// A fresh connection id (unique for this registry's lifetime), taken when a connection is
    /// accepted so that its logs carry it from the start.
    pub fn allocate_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Add a registered connection.
    pub fn register(
        &self,
        connection_id: u64,
        registration: NewConnection,
        conn: C,
    ) -> Result<Registered<C>, RegistryError> {
        let streams = StreamTracker::new();
        let superseded = {
            let mut inner = self.lock();
            let tunnel = inner
                .entry(registration.tunnel_id)
                .or_insert_with(|| TunnelConnections {
                    entries: Vec::new(),
                    cursor: 0,
                });
            let same_slot = tunnel.entries.iter().position(|e| {
                e.info.registration.connector_id == registration.connector_id
                    && e.info.registration.connection_index == registration.connection_index
            });
            // A connection that replaces an earlier one of the same slot never counts twice.
            if same_slot.is_none() && tunnel.entries.len() >= MAX_CONNECTIONS_PER_TUNNEL {
                return Err(RegistryError::TooManyConnections(tunnel.entries.len()));
            }
            let superseded = same_slot.map(|i| {
                let old = tunnel.entries.remove(i);
                (old.info.connection_id, old.conn)
            });
            tunnel.entries.push(Entry {
                info: ConnectionInfo {
                    connection_id,
                    registration,
                    registered_at: SystemTime::now(),
                    draining: false,
                    active_streams: 0,
                },
                conn,
                streams: streams.clone(),
            });
            superseded
        };
        self.notify();
        Ok(Registered {
            superseded,
            streams,
        })
    }

    /// Remove a connection (it closed). Returns its info if it was registered.
    pub fn unregister(&self, connection_id: u64) -> Option<ConnectionInfo> {
        let removed = {
            let mut inner = self.lock();
            let mut removed = None;
            inner.retain(|_, tunnel| {
                if let Some(i) = tunnel
                    .entries
                    .iter()
                    .position(|e| e.info.connection_id == connection_id)
                {
                    removed = Some(tunnel.entries.remove(i).info);
                }
                !tunnel.entries.is_empty()
            });
            removed
        };
        if removed.is_some() {
            self.notify();
        }
        removed
    }

    /// Mark a connection as draining: [`Registry::pick`] no longer chooses it. Returns whether
    /// it was registered.
    pub fn set_draining(&self, connection_id: u64) -> bool {
        let found = {
            let mut inner = self.lock();
            let entry = inner
                .values_mut()
                .flat_map(|t| t.entries.iter_mut())
                .find(|e| e.info.connection_id == connection_id);
            match entry {
                Some(entry) => {
                    entry.info.draining = true;
                    true
                }
                None => false,
            }
        };
        if found {
            self.notify();
        }
        found
    }

    /// Choose a live, non-draining connection of `tunnel` for a new stream, round-robin.
    pub fn pick(&self, tunnel: &TunnelId) -> Option<Picked<C>> {
        let mut inner = self.lock();
        let tunnel = inner.get_mut(tunnel)?;
        let len = tunnel.entries.len();
        for step in 0..len {
            let i = (tunnel.cursor + step) % len;
            let entry = &tunnel.entries[i];
            if !entry.info.draining {
                tunnel.cursor = (i + 1) % len;
                return Some(Picked {
                    connection_id: entry.info.connection_id,
                    conn: entry.conn.clone(),
                    lease: entry.streams.lease(),
                });
            }
        }
        None
    }

    /// Live, non-draining connections of `tunnel`.
    pub fn live_count(&self, tunnel: &TunnelId) -> usize {
        self.lock()
            .get(tunnel)
            .map(|t| t.entries.iter().filter(|e| !e.info.draining).count())
            .unwrap_or(0)
    }

    /// Every registered connection, draining ones included, for observability.
    pub fn snapshot(&self) -> Vec<ConnectionInfo> {
        let inner = self.lock();
        let mut all: Vec<ConnectionInfo> = inner
            .values()
            .flat_map(|t| t.entries.iter())
            .map(|e| ConnectionInfo {
                active_streams: e.streams.open_streams(),
                ..e.info.clone()
            })
            .collect();
        all.sort_by_key(|info| info.connection_id);
        all
    }

    /// Wait until `tunnel` has at least `at_least` live connections.
    pub async fn wait_live(&self, tunnel: &TunnelId, at_least: usize) {
        self.wait_until(|registry| registry.live_count(tunnel) >= at_least)
            .await
    }

    /// Wait until `condition` holds; it is checked now and after every change.
    pub async fn wait_until(&self, mut condition: impl FnMut(&Self) -> bool) {
        let mut changes = self.changes.subscribe();
        while !condition(self) {
            // The sender lives in `self`, so the channel cannot close while this waits.
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    fn notify(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TunnelId, TunnelConnections<C>>> {
        // Every critical section leaves the map consistent before anything can panic, so a
        // poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(tunnel: u8, connector: u8, index: u8) -> NewConnection {
        NewConnection {
            tunnel_id: TunnelId([tunnel; 16]),
            connector_id: ConnectorId([connector; 16]),
            connection_index: index,
            remote: "127.0.0.1:5000".parse().unwrap(), // literal
            version: "test".into(),
            routes: Vec::new(),
        }
    }

    #[test]
    fn round_robin_skips_draining() {
        let registry = Registry::<&'static str>::new();
        let tunnel = TunnelId([1; 16]);
        assert!(registry.pick(&tunnel).is_none());
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let id = registry.allocate_id();
            registry
                .register(id, registration(1, 1, i as u8), name)
                .unwrap(); // below the limit
        }
        let picks: Vec<_> = (0..6)
            .map(|_| registry.pick(&tunnel).unwrap().conn)
            .collect(); // 3 live
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
        assert!(registry.set_draining(2));
        assert_eq!(registry.live_count(&tunnel), 2);
        let picks: Vec<_> = (0..4)
            .map(|_| registry.pick(&tunnel).unwrap().conn)
            .collect(); // 2 live
        assert_eq!(picks, ["a", "c", "a", "c"]);
        assert_eq!(registry.live_count(&TunnelId([2; 16])), 0);
    }

    #[test]
    fn leases_count_streams() {
        let registry = Registry::<u32>::new();
        let tunnel = TunnelId([1; 16]);
        let registered = registry.register(7, registration(1, 1, 0), 7).unwrap(); // empty
        let first = registry.pick(&tunnel).unwrap(); // one live
        let second = registry.pick(&tunnel).unwrap(); // one live
        assert_eq!(registered.streams.open_streams(), 2);
        assert_eq!(registry.snapshot()[0].active_streams, 2);
        drop((first, second));
        assert_eq!(registered.streams.open_streams(), 0);
    }

    #[test]
    fn same_slot_supersedes_and_unregister_removes() {
        let registry = Registry::<u32>::new();
        let tunnel = TunnelId([1; 16]);
        registry.register(1, registration(1, 9, 0), 1).unwrap(); // empty
        let again = registry.register(2, registration(1, 9, 0), 2).unwrap(); // replaces 1
        assert_eq!(again.superseded, Some((1, 1)));
        assert_eq!(registry.live_count(&tunnel), 1);
        assert_eq!(registry.unregister(1), None);
        assert_eq!(registry.unregister(2).map(|i| i.connection_id), Some(2));
        assert_eq!(registry.live_count(&tunnel), 0);
        assert!(registry.snapshot().is_empty());
    }

    #[test]
    fn limit_per_tunnel() {
        let registry = Registry::<u64>::new();
        for i in 0..MAX_CONNECTIONS_PER_TUNNEL as u64 {
            registry
                .register(i, registration(1, i as u8, 0), i)
                .unwrap(); // below the limit
        }
        let refused = registry.register(999, registration(1, 250, 1), 999);
        assert_eq!(
            refused.unwrap_err(),
            RegistryError::TooManyConnections(MAX_CONNECTIONS_PER_TUNNEL)
        );
    }

    #[tokio::test]
    async fn wait_live_wakes_on_register() {
        let registry = Arc::new(Registry::<u32>::new());
        let tunnel = TunnelId([1; 16]);
        let waiter = tokio::spawn({
            let registry = registry.clone();
            async move { registry.wait_live(&tunnel, 1).await }
        });
        registry.register(1, registration(1, 1, 0), 1).unwrap(); // empty
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("waiter woke")
            .expect("waiter did not panic");
    }
}
