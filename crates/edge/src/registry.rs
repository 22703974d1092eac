//! Live connector connections, per tunnel.
//!
//! A tunnel may have several connectors (replicas, up to 25) each holding several connections
//! (HA). Every registered connection is an entry; the registry is generic over the connection
//! type (the edge uses [`AnyConnection`](underpass_transport::AnyConnection)).
//!
//! # Placement
//!
//! [`Registry::pick`] chooses the connection for a new stream among the tunnel's entries that
//! are not draining and whose connector **announced a route covering the destination** (the
//! routes of its `Register`, replaced by every `Routes` update). Each entry keeps its announced
//! routes parsed into a [`RouteTable`] with an empty deny list, so the edge decides as the
//! connector's own route check would (most specific route, then its ports) — the deny list
//! stays the connector's business. Among the matches the one with the **fewest outstanding
//! streams** wins (its [`StreamTracker`] count); ties go round-robin. When nothing matches,
//! [`Unmatched::Any`] falls back to every live connection and [`Unmatched::Refuse`] refuses,
//! with a summary of what the connectors announce for the log.
//!
//! # Stream leases
//!
//! A pick returns the connection wrapped in [`Leased`], which holds a lease on the connection's
//! stream count, and every stream opened through it carries that lease in both of its halves
//! ([`LeasedSend`], [`LeasedRecv`]). The count therefore covers a whole exchange (a `fetch()`
//! body streaming to the client, an upload, an upgrade, a `CONNECT` or TCP-binding pipe) until
//! the last half is dropped, without anyone having to remember to hold it. Draining waits for
//! this count ([`StreamTracker::idle`]), the snapshot shows it.
//!
//! The lock is a plain `std` mutex held only for map operations, never across an `.await`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::watch;
use underpass_proto::{AnnouncedRoute, ConnectorId, Host, TunnelId};
use underpass_routes::{
    parse_route, Decision, HostPattern, MatchedRoute, PortSet, RouteSpec, RouteTable,
};
use underpass_transport::{
    Connection, ConnectionStats, Protocol, RecvStream, SendStream, StreamError,
};

use crate::config::Unmatched;

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
    /// The transport carrying it.
    pub protocol: Protocol,
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
    /// Exchanges open on it now: each counts from the pick until the last byte of its stream
    /// in either direction (response body, upload, pipe) has gone through.
    pub active_streams: usize,
}

/// Tracks the streams open on one connection.
#[derive(Debug, Clone)]
pub(crate) struct StreamTracker {
    open: Arc<watch::Sender<usize>>,
}

impl StreamTracker {
    fn new() -> Self {
        StreamTracker {
            open: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Streams open now.
    pub(crate) fn open_streams(&self) -> usize {
        *self.open.borrow()
    }

    /// Resolves once no stream is open.
    pub(crate) async fn idle(&self) {
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

/// Counts one exchange on a connection until dropped. Shared (in an `Arc`) by a [`Leased`]
/// connection and the stream halves opened through it.
#[derive(Debug)]
struct StreamLease {
    open: Arc<watch::Sender<usize>>,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Where a new stream goes: the host and port its connector will dial (for a service binding,
/// the service's host and port). Placement matches it against the announced routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destination {
    /// An IP address or a DNS name.
    pub host: Host,
    /// The port.
    pub port: u16,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Host::Ip(std::net::IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// A connection chosen for a new stream.
#[derive(Debug)]
pub(crate) struct Picked<C> {
    /// The edge's id for the connection.
    pub connection_id: u64,
    /// Whether its connector announced a route covering the destination (`false`: picked by
    /// the [`Unmatched::Any`] fallback).
    pub matched: bool,
    /// The connection, counted as busy until it and every stream opened through it are gone.
    pub conn: Leased<C>,
}

/// Why [`Registry::pick`] found no connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoPick {
    /// The tunnel has no live, non-draining connection (besides the excluded ones).
    NoConnection,
    /// It has some, but no connector of theirs announced a route covering the destination.
    NoRoute {
        /// What the live connectors announce, for the log: `connector 1a2b3c4d: 10.0.0.0/8,
        /// db.internal:5432; connector 5e6f7a8b: no routes`.
        announced: String,
    },
}

/// The routes one connection's connector announced, parsed for matching.
struct Announced {
    /// The routes, with an empty deny list.
    table: RouteTable<()>,
    /// A short text of them for logs.
    summary: String,
}

/// At most this many routes per connector are written in a log summary.
const SUMMARY_ROUTES: usize = 8;

impl Announced {
    /// Parse `routes`; returns the table and the routes that could not be parsed (with why),
    /// which are left out: the connector would refuse those destinations anyway.
    fn parse(routes: &[AnnouncedRoute]) -> (Self, Vec<String>) {
        let mut table = RouteTable::new();
        table.set_deny_list(Vec::new());
        let mut rejected = Vec::new();
        let mut texts = Vec::new();
        for route in routes {
            let ports = match PortSet::from_ranges(route.ports.clone()) {
                Ok(ports) => ports,
                Err(error) => {
                    rejected.push(format!("{}: {error}", route.destination));
                    continue;
                }
            };
            match parse_route(&route.destination) {
                Ok(RouteSpec::Cidr(net)) => table.insert_cidr(net, ports.clone(), ()),
                Ok(RouteSpec::Host(pattern)) => table.insert_hostname(pattern, ports.clone(), ()),
                Err(error) => {
                    rejected.push(format!("{}: {error}", route.destination));
                    continue;
                }
            }
            if texts.len() < SUMMARY_ROUTES {
                texts.push(if ports.is_any() {
                    route.destination.clone()
                } else {
                    format!("{} ports {ports}", route.destination)
                });
            }
        }
        table.build_index();
        let summary = match table.len() {
            0 => "no routes".to_owned(),
            n if n > texts.len() => format!("{} and {} more", texts.join(", "), n - texts.len()),
            _ => texts.join(", "),
        };
        (Announced { table, summary }, rejected)
    }

    /// How specific the route that lets `destination` through is, `None` if none does: a
    /// hostname route beats any CIDR route, an exact name beats a wildcard, a longer wildcard
    /// suffix or a longer prefix beats a shorter one.
    fn specificity(&self, destination: &Destination) -> Option<u32> {
        let decision = match &destination.host {
            Host::Ip(ip) => self.table.lookup_ip(*ip, destination.port),
            Host::Name(name) => self.table.lookup(name, destination.port),
        };
        let Decision::Allowed(found) = decision else {
            return None;
        };
        Some(match found.route {
            MatchedRoute::Cidr(net) => u32::from(net.prefix_len()),
            MatchedRoute::Host(HostPattern::Wildcard(suffix)) => {
                1_000 + u32::try_from(suffix.len()).unwrap_or(u32::MAX - 2_000)
            }
            MatchedRoute::Host(HostPattern::Exact(_)) => u32::MAX,
        })
    }

    /// Whether the connector's route check would let `destination` through (deny list
    /// aside).
    fn covers(&self, destination: &Destination) -> bool {
        match &destination.host {
            Host::Ip(ip) => self.table.lookup_ip(*ip, destination.port).is_allowed(),
            Host::Name(name) => self.table.lookup(name, destination.port).is_allowed(),
        }
    }
}

/// A picked connection: streams opened through it carry its lease in both halves, so the
/// connection counts as busy until the last of them (and this handle) is dropped. Meant for
/// one exchange; clones share the lease.
#[derive(Debug, Clone)]
pub(crate) struct Leased<C> {
    conn: C,
    lease: Arc<StreamLease>,
}

impl<C> Leased<C> {
    /// The connection underneath.
    #[cfg(test)]
    pub(crate) fn inner(&self) -> &C {
        &self.conn
    }
}

impl<C: Connection> Connection for Leased<C> {
    type Send = LeasedSend<C::Send>;
    type Recv = LeasedRecv<C::Recv>;

    async fn open_bi(&self) -> Result<(Self::Send, Self::Recv), StreamError> {
        let (send, recv) = self.conn.open_bi().await?;
        Ok(self.wrap(send, recv))
    }

    async fn accept_bi(&self) -> Result<(Self::Send, Self::Recv), StreamError> {
        let (send, recv) = self.conn.accept_bi().await?;
        Ok(self.wrap(send, recv))
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.conn.close(code, reason);
    }

    fn closed(&self) -> impl std::future::Future<Output = StreamError> + Send {
        self.conn.closed()
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), StreamError> {
        self.conn.export_keying_material(output, label, context)
    }

    fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    fn stats(&self) -> Option<ConnectionStats> {
        self.conn.stats()
    }
}

impl<C: Connection> Leased<C> {
    fn wrap(&self, send: C::Send, recv: C::Recv) -> (LeasedSend<C::Send>, LeasedRecv<C::Recv>) {
        (
            LeasedSend {
                inner: send,
                _lease: self.lease.clone(),
            },
            LeasedRecv {
                inner: recv,
                _lease: self.lease.clone(),
            },
        )
    }
}

/// The sending half of a stream opened through a [`Leased`] connection.
#[derive(Debug)]
pub(crate) struct LeasedSend<S> {
    inner: S,
    _lease: Arc<StreamLease>,
}

impl<S: SendStream> SendStream for LeasedSend<S> {
    fn write_chunk(
        &mut self,
        data: Bytes,
    ) -> impl std::future::Future<Output = Result<(), StreamError>> + Send {
        self.inner.write_chunk(data)
    }

    fn finish(&mut self) -> Result<(), StreamError> {
        self.inner.finish()
    }

    fn reset(&mut self, code: u32) {
        self.inner.reset(code);
    }

    fn stopped(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<u32>, StreamError>> + Send {
        self.inner.stopped()
    }
}

/// The receiving half of a stream opened through a [`Leased`] connection.
#[derive(Debug)]
pub(crate) struct LeasedRecv<R> {
    inner: R,
    _lease: Arc<StreamLease>,
}

impl<R: RecvStream> RecvStream for LeasedRecv<R> {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        self.inner.poll_read_chunk(cx, max)
    }

    fn read_chunk(
        &mut self,
        max: usize,
    ) -> impl std::future::Future<Output = Result<Option<Bytes>, StreamError>> + Send {
        self.inner.read_chunk(max)
    }

    fn read_chunks(
        &mut self,
        bufs: &mut [Bytes],
    ) -> impl std::future::Future<Output = Result<Option<usize>, StreamError>> + Send {
        self.inner.read_chunks(bufs)
    }

    fn stop(&mut self, code: u32) {
        self.inner.stop(code);
    }
}

/// The result of a successful [`Registry::register`].
#[derive(Debug)]
pub(crate) struct Registered<C> {
    /// A connection the same connector registered earlier with the same index, now removed:
    /// the connector replaced it, so it is dead or about to be. The caller closes it.
    pub superseded: Option<(u64, C)>,
    /// The new connection's stream counter.
    pub streams: StreamTracker,
    /// Announced routes that could not be parsed (left out of placement), with why.
    pub rejected_routes: Vec<String>,
}

/// Live connections per tunnel.
pub struct Registry<C> {
    inner: Mutex<HashMap<TunnelId, TunnelConnections<C>>>,
    next_id: AtomicU64,
    changes: watch::Sender<u64>,
    /// `[routing] unmatched = "any"`: fall back to every live connection.
    any_when_unmatched: AtomicBool,
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
    routes: Announced,
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
            any_when_unmatched: AtomicBool::new(false),
        }
    }

    /// What the binding front does with a destination no connector announced a route for
    /// (`[routing] unmatched`; [`Unmatched::Refuse`] until set).
    pub fn set_unmatched(&self, unmatched: Unmatched) {
        self.any_when_unmatched
            .store(unmatched == Unmatched::Any, Ordering::Relaxed);
    }

    /// The current `[routing] unmatched`.
    pub fn unmatched(&self) -> Unmatched {
        if self.any_when_unmatched.load(Ordering::Relaxed) {
            Unmatched::Any
        } else {
            Unmatched::Refuse
        }
    }

    /// A fresh connection id (unique for this registry's lifetime), taken when a connection is
    /// accepted so that its logs carry it from the start.
    pub(crate) fn allocate_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Add a registered connection.
    pub(crate) fn register(
        &self,
        connection_id: u64,
        registration: NewConnection,
        conn: C,
    ) -> Result<Registered<C>, RegistryError> {
        let streams = StreamTracker::new();
        let (routes, rejected_routes) = Announced::parse(&registration.routes);
        let superseded = {
            let mut inner = self.lock();
            let tunnel = inner
                .entry(registration.tunnel_id)
                .or_insert_with(|| TunnelConnections {
                    entries: Vec::new(),
                    cursor: 0,
                });
            // The same slot over the same transport: the connector reconnected, the old one
            // is dead or about to be. Over the other transport it is a move (`auto` going
            // back to QUIC): the connector drains the old connection itself, and its streams
            // finish on it.
            let same_slot = tunnel.entries.iter().position(|e| {
                e.info.registration.connector_id == registration.connector_id
                    && e.info.registration.connection_index == registration.connection_index
                    && e.info.registration.protocol == registration.protocol
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
                routes,
            });
            superseded
        };
        self.notify();
        Ok(Registered {
            superseded,
            streams,
            rejected_routes,
        })
    }

    /// Replace the routes a connection's connector announced (a `Routes` update). Returns the
    /// routes that could not be parsed, or `None` if the connection is not registered.
    pub(crate) fn update_routes(
        &self,
        connection_id: u64,
        routes: Vec<AnnouncedRoute>,
    ) -> Option<Vec<String>> {
        let (parsed, rejected) = Announced::parse(&routes);
        let found = {
            let mut inner = self.lock();
            let entry = inner
                .values_mut()
                .flat_map(|t| t.entries.iter_mut())
                .find(|e| e.info.connection_id == connection_id);
            match entry {
                Some(entry) => {
                    entry.info.registration.routes = routes;
                    entry.routes = parsed;
                    true
                }
                None => false,
            }
        };
        if found {
            self.notify();
            Some(rejected)
        } else {
            None
        }
    }

    /// Remove a connection (it closed). Returns its info if it was registered.
    pub(crate) fn unregister(&self, connection_id: u64) -> Option<ConnectionInfo> {
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
    pub(crate) fn set_draining(&self, connection_id: u64) -> bool {
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

    /// Choose the connection of `tunnel` for a new stream to `destination`: among the live,
    /// non-draining ones not in `exclude` whose connector announced a route covering it (all
    /// of them with [`Unmatched::Any`] when none does), the one with the fewest outstanding
    /// streams, ties round-robin. The lease it carries counts from now.
    pub(crate) fn pick(
        &self,
        tunnel: &TunnelId,
        destination: &Destination,
        exclude: &[u64],
        unmatched: Unmatched,
    ) -> Result<Picked<C>, NoPick> {
        let mut inner = self.lock();
        let Some(tunnel) = inner.get_mut(tunnel) else {
            return Err(NoPick::NoConnection);
        };
        let candidate = |e: &Entry<C>| !e.info.draining && !exclude.contains(&e.info.connection_id);
        let mut matched = true;
        let mut best = least_outstanding(tunnel, |e| candidate(e) && e.routes.covers(destination));
        if best.is_none() {
            if !tunnel.entries.iter().any(candidate) {
                return Err(NoPick::NoConnection);
            }
            if unmatched == Unmatched::Refuse {
                return Err(NoPick::NoRoute {
                    announced: announced_summary(tunnel.entries.iter().filter(|e| candidate(e))),
                });
            }
            matched = false;
            best = least_outstanding(tunnel, candidate);
        }
        let i = best.ok_or(NoPick::NoConnection)?;
        tunnel.cursor = (i + 1) % tunnel.entries.len();
        let entry = &tunnel.entries[i];
        Ok(Picked {
            connection_id: entry.info.connection_id,
            matched,
            conn: Leased {
                conn: entry.conn.clone(),
                lease: Arc::new(entry.streams.lease()),
            },
        })
    }

    /// The most specific route for `destination` that a live, non-draining connection of
    /// `tunnel` announced (see `Announced::specificity`), `None` if none covers it.
    pub(crate) fn best_route(&self, tunnel: &TunnelId, destination: &Destination) -> Option<u32> {
        let inner = self.lock();
        inner
            .get(tunnel)?
            .entries
            .iter()
            .filter(|e| !e.info.draining)
            .filter_map(|e| e.routes.specificity(destination))
            .max()
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

impl<C: Connection> Registry<C> {
    /// Close every registered connection of `tunnel` with `code` and `reason` (its secret was
    /// revoked); returns how many. Each connection's server task then unregisters it.
    pub(crate) fn close_tunnel(&self, tunnel: &TunnelId, code: u32, reason: &str) -> usize {
        let conns: Vec<C> = match self.lock().get(tunnel) {
            Some(connections) => connections.entries.iter().map(|e| e.conn.clone()).collect(),
            None => Vec::new(),
        };
        for conn in &conns {
            conn.close(code, reason.as_bytes());
        }
        conns.len()
    }
}

/// The index of the entry with the fewest open streams among those `eligible` accepts,
/// searching from the round-robin cursor so that ties rotate.
fn least_outstanding<C>(
    tunnel: &TunnelConnections<C>,
    eligible: impl Fn(&Entry<C>) -> bool,
) -> Option<usize> {
    let len = tunnel.entries.len();
    let mut best: Option<(usize, usize)> = None;
    for step in 0..len {
        let i = (tunnel.cursor + step) % len;
        let entry = &tunnel.entries[i];
        if !eligible(entry) {
            continue;
        }
        let open = entry.streams.open_streams();
        if best.is_none_or(|(_, fewest)| open < fewest) {
            best = Some((i, open));
        }
    }
    best.map(|(i, _)| i)
}

/// What the connectors of `entries` announce, one part per connector.
fn announced_summary<'a, C: 'a>(entries: impl Iterator<Item = &'a Entry<C>>) -> String {
    let mut seen: Vec<ConnectorId> = Vec::new();
    let mut parts = Vec::new();
    for entry in entries {
        let connector = entry.info.registration.connector_id;
        if seen.contains(&connector) {
            continue;
        }
        seen.push(connector);
        parts.push(format!(
            "connector {}: {}",
            hex::encode(&connector.0[..4]),
            entry.routes.summary
        ));
    }
    parts.join("; ")
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
            protocol: Protocol::Quic,
            version: "test".into(),
            routes: vec![route("10.0.0.0/8", &[])],
        }
    }

    fn route(destination: &str, ports: &[(u16, u16)]) -> AnnouncedRoute {
        AnnouncedRoute {
            destination: destination.into(),
            ports: ports.to_vec(),
        }
    }

    fn to(host: &str, port: u16) -> Destination {
        Destination {
            host: match host.parse() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => Host::Name(host.into()),
            },
            port,
        }
    }

    /// A pick for 10.0.0.1:80, which every [`registration`] covers.
    fn pick<C: Clone>(registry: &Registry<C>, tunnel: &TunnelId) -> Option<Picked<C>> {
        registry
            .pick(tunnel, &to("10.0.0.1", 80), &[], Unmatched::Refuse)
            .ok()
    }

    #[test]
    fn round_robin_skips_draining() {
        let registry = Registry::<&'static str>::new();
        let tunnel = TunnelId([1; 16]);
        assert!(pick(&registry, &tunnel).is_none());
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let id = registry.allocate_id();
            registry
                .register(id, registration(1, 1, i as u8), name)
                .unwrap(); // below the limit
        }
        let picks: Vec<_> = (0..6)
            .map(|_| *pick(&registry, &tunnel).unwrap().conn.inner())
            .collect(); // 3 live
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
        assert!(registry.set_draining(2));
        assert_eq!(registry.live_count(&tunnel), 2);
        let picks: Vec<_> = (0..4)
            .map(|_| *pick(&registry, &tunnel).unwrap().conn.inner())
            .collect(); // 2 live
        assert_eq!(picks, ["a", "c", "a", "c"]);
        assert_eq!(registry.live_count(&TunnelId([2; 16])), 0);
    }

    /// Only connections whose connector announced a covering route are picked; names, CIDRs,
    /// wildcards and ports follow the connector's own rules.
    #[test]
    fn picks_by_announced_routes() {
        let registry = Registry::<&'static str>::new();
        let tunnel = TunnelId([1; 16]);
        let with = |connector: u8, routes: Vec<AnnouncedRoute>| NewConnection {
            routes,
            ..registration(1, connector, 0)
        };
        registry
            .register(1, with(1, vec![route("10.1.0.0/16", &[])]), "a")
            .unwrap(); // empty
        registry
            .register(
                2,
                with(
                    2,
                    vec![
                        route("10.2.0.0/16", &[(443, 443)]),
                        route("*.corp.test", &[]),
                    ],
                ),
                "b",
            )
            .unwrap(); // below the limit
        registry.register(3, with(3, Vec::new()), "none").unwrap(); // below the limit
        let chosen = |host: &str, port: u16, unmatched: Unmatched| {
            registry
                .pick(&tunnel, &to(host, port), &[], unmatched)
                .map(|p| *p.conn.inner())
        };
        for _ in 0..4 {
            assert_eq!(chosen("10.1.2.3", 22, Unmatched::Refuse), Ok("a"));
            assert_eq!(chosen("10.2.0.9", 443, Unmatched::Refuse), Ok("b"));
            assert_eq!(chosen("DB.Corp.Test", 5432, Unmatched::Refuse), Ok("b"));
        }
        let Err(NoPick::NoRoute { announced }) = chosen("10.2.0.9", 80, Unmatched::Refuse) else {
            panic!("no connector routes 10.2.0.9:80");
        };
        assert!(announced.contains("10.1.0.0/16"), "{announced}");
        assert!(announced.contains("10.2.0.0/16 ports 443"), "{announced}");
        assert!(announced.contains("no routes"), "{announced}");
        assert!(matches!(
            chosen("corp.test", 80, Unmatched::Refuse),
            Err(NoPick::NoRoute { .. })
        ));
        // The fallback spreads over every live connection.
        let mut fallback: Vec<_> = (0..3)
            .map(|_| chosen("192.0.2.1", 80, Unmatched::Any).unwrap())
            .collect();
        fallback.sort_unstable();
        assert_eq!(fallback, ["a", "b", "none"]);

        // A routes update replaces what the connection announced.
        let rejected = registry
            .update_routes(
                3,
                vec![route("192.0.2.0/24", &[]), route("10.0.0.1/8", &[])],
            )
            .unwrap(); // registered
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(chosen("192.0.2.1", 80, Unmatched::Refuse), Ok("none"));
        assert_eq!(
            registry.snapshot()[2].registration.routes.len(),
            2,
            "the snapshot shows the new routes"
        );
        assert_eq!(registry.update_routes(99, Vec::new()), None);
    }

    /// The connection with the fewest outstanding streams wins; excluded and draining ones
    /// are never picked.
    #[test]
    fn least_outstanding_streams_win() {
        let registry = Registry::<&'static str>::new();
        let tunnel = TunnelId([1; 16]);
        registry.register(1, registration(1, 1, 0), "a").unwrap(); // empty
        registry.register(2, registration(1, 2, 0), "b").unwrap(); // below the limit
        let held: Vec<_> = (0..10).map(|_| pick(&registry, &tunnel).unwrap()).collect(); // 2 live
        let on = |name| held.iter().filter(|p| *p.conn.inner() == name).count();
        assert_eq!((on("a"), on("b")), (5, 5), "ties alternate");
        let (a, b): (Vec<_>, Vec<_>) = held.into_iter().partition(|p| *p.conn.inner() == "a");
        drop(b);
        // "a" holds 5, "b" none: the next 5 all go to "b".
        let next: Vec<_> = (0..5).map(|_| pick(&registry, &tunnel).unwrap()).collect(); // 2 live
        assert!(next.iter().all(|p| *p.conn.inner() == "b"));
        drop(a);
        let excluded = registry
            .pick(&tunnel, &to("10.0.0.1", 80), &[2], Unmatched::Refuse)
            .unwrap(); // "a" is live
        assert_eq!((*excluded.conn.inner(), excluded.matched), ("a", true));
        assert!(registry.set_draining(1));
        assert_eq!(
            registry
                .pick(&tunnel, &to("10.0.0.1", 80), &[2], Unmatched::Any)
                .map(|p| p.connection_id),
            Err(NoPick::NoConnection)
        );
    }

    #[test]
    fn leases_count_streams() {
        let registry = Registry::<u32>::new();
        let tunnel = TunnelId([1; 16]);
        let registered = registry.register(7, registration(1, 1, 0), 7).unwrap(); // empty
        let first = pick(&registry, &tunnel).unwrap(); // one live
        let second = pick(&registry, &tunnel).unwrap(); // one live
        assert_eq!(registered.streams.open_streams(), 2);
        assert_eq!(registry.snapshot()[0].active_streams, 2);
        drop((first, second));
        assert_eq!(registered.streams.open_streams(), 0);
    }

    /// A connection whose streams do nothing: enough to see where leases live.
    #[derive(Debug, Clone)]
    struct Idle;
    struct IdleSend;
    struct IdleRecv;

    impl SendStream for IdleSend {
        async fn write_chunk(&mut self, _data: Bytes) -> Result<(), StreamError> {
            Ok(())
        }
        fn finish(&mut self) -> Result<(), StreamError> {
            Ok(())
        }
        fn reset(&mut self, _code: u32) {}
        async fn stopped(&mut self) -> Result<Option<u32>, StreamError> {
            Ok(None)
        }
    }

    impl RecvStream for IdleRecv {
        fn poll_read_chunk(
            &mut self,
            _cx: &mut Context<'_>,
            _max: usize,
        ) -> Poll<Result<Option<Bytes>, StreamError>> {
            Poll::Ready(Ok(None))
        }
        fn stop(&mut self, _code: u32) {}
    }

    impl Connection for Idle {
        type Send = IdleSend;
        type Recv = IdleRecv;
        async fn open_bi(&self) -> Result<(IdleSend, IdleRecv), StreamError> {
            Ok((IdleSend, IdleRecv))
        }
        async fn accept_bi(&self) -> Result<(IdleSend, IdleRecv), StreamError> {
            Err(StreamError::Closed)
        }
        fn close(&self, _code: u32, _reason: &[u8]) {}
        async fn closed(&self) -> StreamError {
            StreamError::Closed
        }
        fn export_keying_material(
            &self,
            _output: &mut [u8],
            _label: &[u8],
            _context: &[u8],
        ) -> Result<(), StreamError> {
            Ok(())
        }
        fn remote_address(&self) -> SocketAddr {
            "127.0.0.1:1".parse().unwrap() // literal
        }
    }

    #[tokio::test]
    async fn leases_live_until_both_stream_halves_are_gone() {
        let registry = Registry::<Idle>::new();
        let tunnel = TunnelId([1; 16]);
        let registered = registry.register(1, registration(1, 1, 0), Idle).unwrap(); // empty
        let count = || registered.streams.open_streams();

        // The response body outlives the request side (a fetch() whose body still streams).
        let picked = pick(&registry, &tunnel).unwrap(); // one live
        let (send, recv) = picked.conn.open_bi().await.unwrap(); // Idle opens
        drop(picked);
        assert_eq!(count(), 1, "the halves hold the lease, not the pick");
        drop(send);
        assert_eq!(count(), 1, "the receiving half alone still counts");
        drop(recv);
        assert_eq!(count(), 0);

        // The upload outlives the response (the send half in its own task).
        let picked = pick(&registry, &tunnel).unwrap(); // one live
        let (send, recv) = picked.conn.open_bi().await.unwrap(); // Idle opens
        drop((picked, recv));
        assert_eq!(count(), 1, "the sending half alone still counts");
        let idle = tokio::spawn({
            let streams = registered.streams.clone();
            async move { streams.idle().await }
        });
        drop(send);
        tokio::time::timeout(std::time::Duration::from_secs(10), idle)
            .await
            .expect("idle once the last half is gone")
            .expect("no panic");
        assert_eq!(count(), 0);
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
