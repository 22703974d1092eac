//! The connector as a whole: one supervisor per connection slot, each dialing the edge,
//! registering and serving (one connection is a `session`), and
//! reconnecting with backoff whatever happens, until shut down.
//!
//! - [`run`] / [`Connector::run`]: serve until a shutdown future resolves (the binary);
//! - [`Connector::start`]: spawn it and get a [`ConnectorHandle`] to watch the connection
//!   states and shut down (tests, embedders).
//!
//! Tracing: each slot runs in a `slot{index}` span, each attempt in a child
//! `connection{edge, addr, connection_id}` span of its own, so a line never carries more than
//! one edge or connection id however often the slot reconnects.
//!
//! Shutdown is [`Shutdown`]'s: stop (every connection sends `Drain` and keeps serving its open
//! streams), drain for up to `timeouts.drain`, force (streams still open are cut), wait. Every
//! task of the connector (slots, control loops, drained connections, streams, origin
//! connections) runs under it, so [`ConnectorHandle::shutdown`] returns once all have ended.
//!
//! Under a service manager (`NOTIFY_SOCKET`, `Type=notify`), [`Connector::run`] reports:
//! `READY=1` once a first connection is registered, a `STATUS=` line whenever it changes
//! ("3/4 connections registered, 12 streams", "no connection registered: WHY",
//! "draining: 2 streams open"), `STOPPING=1` when the drain begins, and `WATCHDOG=1` while
//! the runtime runs tasks ([`underpass_rt::notify`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, RngCore};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, info_span, warn, Instrument, Span};
use underpass_proto::authority::parse_authority;
use underpass_proto::{AnnouncedRoute, ConnectorId, Host, RefuseReason};
use underpass_rt::admin::{AdminHandler, AdminServer};
use underpass_rt::notify::Notifier;
use underpass_rt::Shutdown;
use underpass_transport::h2::{self, H2Dialer};
use underpass_transport::quic::{QuicDialer, ALPN};
use underpass_transport::tls::{self, EdgeVerification, TlsError};
use underpass_transport::{AnyConnection, AnyDialer, Dialer as _, Protocol, TransportError};

use crate::backoff::Backoff;
use crate::config::{ConnectorConfig, ProtocolChoice};
use crate::metrics::{ConnectorMetrics, Registration};
use crate::reload::{self, ReloadError, ReloadReport};
use crate::resolve::SystemDnsError;
use crate::session::{self, SessionEnd, SessionSettings};
use crate::streams::StreamContext;

/// A registration that lasted this long resets the backoff when it ends: the edge was
/// healthy, so reconnecting at once is right. Shorter ones keep backing off, so an edge that
/// accepts and then drops or drains every connection is not hammered.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a stopping slot waits for its close frames to leave.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// With `protocol = "auto"`, how long a QUIC handshake may take before the connection falls
/// back to HTTP/2 (a QUIC handshake takes one round trip; a blocked UDP path answers never).
const AUTO_QUIC_TIMEOUT: Duration = Duration::from_secs(3);
/// After the edge drained a connection that had been up for a while (the edge restarts), the
/// slot redials after a random delay up to this: soon, but not all connectors at once.
const DRAINED_REDIAL: Duration = Duration::from_millis(500);
/// A connection drained sooner than this after it registered is treated as a failure (the
/// slot backs off).
const DRAINED_AT_ONCE: Duration = Duration::from_secs(1);
/// How often the status line for the service manager is looked at again: the stream count
/// changes with no change of connection state.
const STATUS_REFRESH: Duration = Duration::from_secs(5);

/// The state of one connection slot, as the supervisor last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Dialing or registering (also between attempts).
    Connecting,
    /// Registered with the edge; streams are served.
    Registered {
        /// The edge's id for the connection.
        connection_id: u64,
        /// The edge's name.
        edge_name: String,
    },
    /// The edge refused the last registration; retrying after a backoff.
    Refused {
        /// Why.
        reason: RefuseReason,
        /// The edge's message.
        message: String,
    },
    /// The last attempt failed before registration (edge address unresolvable, handshake or
    /// certificate failure, timeout); retrying after a backoff.
    Failed {
        /// What went wrong.
        error: String,
    },
    /// Shut down.
    Stopped,
}

/// Why the connector could not start or ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The system resolver configuration is unusable.
    #[error(transparent)]
    Dns(#[from] SystemDnsError),
    /// The TLS configuration for verifying the edge could not be built.
    #[error("cannot build the TLS configuration for the edge: {0}")]
    Tls(#[from] TlsError),
    /// The configuration names no edge to dial (a configuration changed after it was built:
    /// loading and the builder refuse this with a message naming `edge.addresses`).
    #[error("no edge address to dial: set `edge.addresses` or use a token that names one")]
    NoEdge,
    /// A connection supervisor panicked.
    #[error("a connection supervisor failed: {0}")]
    Supervisor(String),
    /// The admin listener could not be bound.
    #[error(
        "cannot listen on the admin address {addr} (`admin.listen`, --admin-listen): {source}"
    )]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A [`ConnectorHandle::wait_for`] that did not see what it waited for.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The states did not match in time.
    #[error("timed out after {timeout:?}; connection states: {states:?}")]
    Timeout {
        /// How long it waited.
        timeout: Duration,
        /// The states at the end.
        states: Vec<ConnectionState>,
    },
    /// The connector stopped.
    #[error("the connector stopped")]
    Stopped,
}

/// A configured connector, ready to run.
pub struct Connector {
    config: Arc<ConnectorConfig>,
    tls: Arc<rustls::ClientConfig>,
    /// The same verification, offering HTTP/2's ALPN.
    tls_h2: Arc<rustls::ClientConfig>,
    connector_id: ConnectorId,
    session: Arc<SessionSettings>,
    streams: Arc<StreamContext>,
    states: watch::Sender<Vec<ConnectionState>>,
    shutdown: Shutdown,
    metrics: Arc<ConnectorMetrics>,
    reloader: Arc<Reloader>,
    /// The admin listener, once bound; it answers until the connector has stopped.
    admin: Option<AdminServer>,
}

/// Applies a new configuration to a running connector (SIGHUP).
struct Reloader {
    streams: Arc<StreamContext>,
    routes: watch::Sender<Vec<AnnouncedRoute>>,
    /// The configuration in use.
    current: Mutex<ConnectorConfig>,
}

/// What the admin endpoints read.
struct ConnectorAdmin {
    states: watch::Receiver<Vec<ConnectionState>>,
    connector_id: ConnectorId,
    shutdown: Shutdown,
    metrics: Arc<ConnectorMetrics>,
}

/// A running connector started with [`Connector::start`]. Dropping it shuts the connector
/// down (without waiting).
pub struct ConnectorHandle {
    states: watch::Receiver<Vec<ConnectionState>>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), ConnectorError>>,
    connector_id: ConnectorId,
    reloader: Arc<Reloader>,
    admin_addr: Option<SocketAddr>,
}

/// Run a connector with `config` until `shutdown` resolves, then drain and close.
pub async fn run(
    config: ConnectorConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ConnectorError> {
    Connector::new(config)?.run(shutdown).await
}

impl Connector {
    /// Build the TLS configuration, the route table and the resolver. Nothing is dialed yet.
    pub fn new(config: ConnectorConfig) -> Result<Self, ConnectorError> {
        if config.edge.addresses.is_empty() {
            return Err(ConnectorError::NoEdge);
        }
        if matches!(
            config.edge.verification,
            EdgeVerification::DangerousNoVerify
        ) {
            warn!(
                "edge certificate verification is DISABLED \
                 (--dangerous-accept-any-edge-certificate): anyone on the path can impersonate \
                 the edge, learn the tunnel's traffic and inject streams"
            );
        }
        if config.routes.is_empty() {
            warn!("no routes configured: every stream will be refused");
        }
        let tls = tls::client_config(&config.edge.verification, &[ALPN])?;
        let tls_h2 = tls::client_config(&config.edge.verification, &[h2::ALPN])?;
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        let connector_id = ConnectorId(id);
        let shutdown = Shutdown::new();
        let slots = usize::from(config.connections);
        let metrics = Arc::new(ConnectorMetrics::new(slots));
        let streams = Arc::new(StreamContext::new(
            &config,
            shutdown.child(),
            metrics.clone(),
        )?);
        let (states, _) = watch::channel(vec![ConnectionState::Connecting; slots]);
        let (routes, routes_rx) = watch::channel(config.announced_routes());
        let reloader = Arc::new(Reloader {
            streams: streams.clone(),
            routes,
            current: Mutex::new(config.clone()),
        });
        Ok(Connector {
            session: Arc::new(SessionSettings::new(&config, connector_id, routes_rx)),
            config: Arc::new(config),
            tls: Arc::new(tls),
            tls_h2: Arc::new(tls_h2),
            connector_id,
            streams,
            states,
            shutdown,
            metrics,
            reloader,
            admin: None,
        })
    }

    /// Bind the admin listener (`/healthz`, `/ready`, `/metrics`) if the configuration has
    /// one (`admin.listen`); returns its address. It answers until the connector has stopped,
    /// draining included (`/ready` then says 503).
    pub async fn bind_admin(&mut self) -> Result<Option<SocketAddr>, ConnectorError> {
        let Some(addr) = self.config.admin_listen else {
            return Ok(None);
        };
        if let Some(admin) = &self.admin {
            return Ok(Some(admin.local_addr()));
        }
        let handler = Arc::new(ConnectorAdmin {
            states: self.states.subscribe(),
            connector_id: self.connector_id,
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
        });
        let admin = AdminServer::bind(addr, handler)
            .await
            .map_err(|source| ConnectorError::Admin { addr, source })?;
        let local = admin.local_addr();
        self.admin = Some(admin);
        Ok(Some(local))
    }

    /// This instance's random id (sent at registration).
    pub fn connector_id(&self) -> ConnectorId {
        self.connector_id
    }

    /// The connection states, one per slot, as they change.
    pub fn subscribe(&self) -> watch::Receiver<Vec<ConnectionState>> {
        self.states.subscribe()
    }

    /// Build a connector and run it on a task of the current runtime (without the admin
    /// listener: see [`Connector::bind_admin`] and [`Connector::spawn`]).
    pub fn start(config: ConnectorConfig) -> Result<ConnectorHandle, ConnectorError> {
        Ok(Connector::new(config)?.spawn())
    }

    /// Run the connector on a task of the current runtime.
    pub fn spawn(self) -> ConnectorHandle {
        let states = self.subscribe();
        let connector_id = self.connector_id();
        let shutdown = self.shutdown.clone();
        let reloader = self.reloader.clone();
        let admin_addr = self.admin.as_ref().map(AdminServer::local_addr);
        // The root task: everything else runs under its `Shutdown`, and the handle waits for
        // this task, so nothing the connector started outlives `ConnectorHandle::shutdown`.
        let task = tokio::spawn(self.run(std::future::pending()));
        ConnectorHandle {
            states,
            shutdown,
            task,
            connector_id,
            reloader,
            admin_addr,
        }
    }

    /// Keep every connection slot connected until `shutdown` resolves (or the connector's
    /// own [`Shutdown`] is stopped by a [`ConnectorHandle`]); then drain open streams (up to
    /// `timeouts.drain`), cut what is left and close the connections.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ConnectorError> {
        let config = &self.config;
        // Through the drain too: the manager hears that the connector drains, and that its
        // runtime is alive, until it has stopped.
        let notifier = Notifier::from_env();
        let reporting = notifier.spawn_reporting(report_to_manager(
            notifier.clone(),
            self.states.subscribe(),
            self.metrics.clone(),
            self.shutdown.clone(),
        ));
        let mut supervisors = JoinSet::new();
        for index in 0..config.connections {
            let slot = Slot {
                index,
                config: config.clone(),
                tls: self.tls.clone(),
                tls_h2: self.tls_h2.clone(),
                session: self.session.clone(),
                streams: self.streams.clone(),
                states: self.states.clone(),
                metrics: self.metrics.clone(),
                shutdown: self.shutdown.child(),
            };
            let span = info_span!("slot", index);
            supervisors.spawn(self.shutdown.track(slot.supervise()).instrument(span));
        }
        info!(
            connector_id = %hex::encode(self.connector_id.0),
            tunnel_id = %hex::encode(config.token.tunnel_id.0),
            connections = config.connections,
            routes = config.routes.len(),
            "connector started"
        );
        let mut failure = None;
        tokio::select! {
            () = shutdown => info!(
                drain_ms = config.timeouts.drain.as_millis() as u64,
                "shutting down: draining every connection"
            ),
            () = self.shutdown.stopping() => info!(
                drain_ms = config.timeouts.drain.as_millis() as u64,
                "shutting down: draining every connection"
            ),
            joined = supervisors.join_next() => {
                // Supervisors only return when told to stop, so this one panicked.
                let message = match joined {
                    Some(Err(e)) => e.to_string(),
                    _ => "ended unexpectedly".to_owned(),
                };
                error!(error = %message, "connection supervisor failed; shutting down");
                failure = Some(ConnectorError::Supervisor(message));
            }
        }
        let report = self.shutdown.shutdown(config.timeouts.drain).await;
        while let Some(joined) = supervisors.join_next().await {
            if let Err(e) = joined {
                error!(error = %e, "connection supervisor failed during shutdown");
                failure.get_or_insert(ConnectorError::Supervisor(e.to_string()));
            }
        }
        self.streams.close().await;
        self.states
            .send_modify(|states| states.fill(ConnectionState::Stopped));
        info!(
            forced = report.forced,
            abandoned = report.abandoned,
            "connector stopped"
        );
        // The admin listener answered through the drain; it goes last.
        drop(self.admin);
        drop(reporting);
        failure.map_or(Ok(()), Err)
    }
}

impl ConnectorHandle {
    /// This instance's random id (sent at registration).
    pub fn connector_id(&self) -> ConnectorId {
        self.connector_id
    }

    /// The state of every connection slot.
    pub fn states(&self) -> Vec<ConnectionState> {
        self.states.borrow().clone()
    }

    /// One state for the whole connector: the first registered connection if there is one,
    /// otherwise the state of the first slot.
    pub fn state(&self) -> ConnectionState {
        let states = self.states.borrow();
        states
            .iter()
            .find(|s| matches!(s, ConnectionState::Registered { .. }))
            .or(states.first())
            .cloned()
            .unwrap_or(ConnectionState::Stopped)
    }

    /// Wait until `done` holds for the slot states; returns them.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[ConnectionState]) -> bool,
    ) -> Result<Vec<ConnectionState>, WaitError> {
        let mut states = self.states.clone();
        let wait = async {
            states
                .wait_for(|states| done(states))
                .await
                .map(|states| states.clone())
        };
        let result = tokio::time::timeout(timeout, wait).await;
        match result {
            Ok(Ok(states)) => Ok(states),
            Ok(Err(_)) => Err(WaitError::Stopped),
            Err(_) => Err(WaitError::Timeout {
                timeout,
                states: self.states(),
            }),
        }
    }

    /// Wait until some connection is registered; returns its edge connection id.
    pub async fn wait_registered(&self, timeout: Duration) -> Result<u64, WaitError> {
        let states = self
            .wait_for(timeout, |states| states.iter().any(is_registered))
            .await?;
        Ok(states
            .iter()
            .find_map(|s| match s {
                ConnectionState::Registered { connection_id, .. } => Some(*connection_id),
                _ => None,
            })
            .unwrap_or_default())
    }

    /// Wait until every connection slot is registered.
    pub async fn wait_all_registered(&self, timeout: Duration) -> Result<(), WaitError> {
        self.wait_for(timeout, |states| states.iter().all(is_registered))
            .await
            .map(drop)
    }

    /// Stop, drain open streams (up to `timeouts.drain`), cut the rest, close the
    /// connections, and return once every task of the connector has ended.
    pub async fn shutdown(mut self) -> Result<(), ConnectorError> {
        self.shutdown.stop();
        self.wait().await
    }

    /// Begin stopping (every connection sends `Drain`) without waiting; see
    /// [`ConnectorHandle::wait`].
    pub fn stop(&self) {
        self.shutdown.stop();
    }

    /// Whether stopping has begun.
    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_stopping()
    }

    /// Wait until the connector has stopped (after [`ConnectorHandle::stop`], or a failure).
    /// Cancel-safe; do not call again once it returned.
    pub async fn wait(&mut self) -> Result<(), ConnectorError> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(ConnectorError::Supervisor(e.to_string())),
        }
    }

    /// The admin listener's address, if [`Connector::bind_admin`] bound one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Apply a new configuration (what SIGHUP does): the routes, deny list, `[dns]`,
    /// `[limits]` and `timeouts.connect_ms` / `timeouts.header_ms` are used by every new
    /// stream from now on; streams already open keep theirs, no connection is dropped, and
    /// changed routes are announced to the edge on every connection. Other keys need a
    /// restart: the report lists those that changed. On error nothing changes.
    pub fn reload(&self, config: ConnectorConfig) -> Result<ReloadReport, ReloadError> {
        self.reloader.apply(config)
    }
}

impl Reloader {
    fn apply(&self, config: ConnectorConfig) -> Result<ReloadReport, ReloadError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let report = reload::compare(&current, &config);
        self.streams.reload(&config).map_err(ReloadError::Dns)?;
        if report.routes_changed {
            // Every connection announces them on its control stream.
            self.routes.send_replace(config.announced_routes());
        }
        *current = reload::carry_over(&current, config);
        Ok(report)
    }
}

impl AdminHandler for ConnectorAdmin {
    fn ready(&self) -> (bool, serde_json::Value) {
        let draining = self.shutdown.is_stopping();
        let registered = self
            .states
            .borrow()
            .iter()
            .filter(|s| is_registered(s))
            .count();
        let ready = registered > 0 && !draining;
        let body = serde_json::json!({
            "ready_connections": registered,
            "connector_id": hex::encode(self.connector_id.0),
            "draining": draining,
        });
        (ready, body)
    }

    fn metrics(&self) -> String {
        self.metrics.render(self.shutdown.is_stopping())
    }
}

impl Drop for ConnectorHandle {
    fn drop(&mut self) {
        // The root task goes on to drain and close on its own.
        self.shutdown.stop();
    }
}

fn is_registered(state: &ConnectionState) -> bool {
    matches!(state, ConnectionState::Registered { .. })
}

/// Tell the service manager what the connector does, until the task is aborted: `READY=1`
/// once (the first registration, not while draining), `STOPPING=1` once the drain begins, and
/// the status line whenever it changes (looked at on every state change, at the drain, and
/// every [`STATUS_REFRESH`]). While nothing is registered the line gives the last failure,
/// which a slot's next `Connecting` would otherwise hide.
async fn report_to_manager(
    notifier: Notifier,
    mut states: watch::Receiver<Vec<ConnectionState>>,
    metrics: Arc<ConnectorMetrics>,
    shutdown: Shutdown,
) {
    let mut ready = false;
    let mut stopping = false;
    let mut last = String::new();
    let mut last_failure = None;
    let mut refresh = tokio::time::interval(STATUS_REFRESH);
    let mut changes_open = true;
    loop {
        let draining = shutdown.is_stopping();
        if draining && !stopping {
            notifier.stopping();
            stopping = true;
        }
        let streams = metrics.streams_active();
        let (registered, status) = {
            let states = states.borrow_and_update();
            if let Some(failure) = states.iter().find_map(failure) {
                last_failure = Some(failure);
            }
            connector_status(&states, streams, draining, last_failure.as_deref())
        };
        if registered > 0 && !draining && !ready {
            notifier.ready();
            ready = true;
        }
        if status != last {
            notifier.status(&status);
            last = status;
        }
        tokio::select! {
            changed = states.changed(), if changes_open => changes_open = changed.is_ok(),
            () = shutdown.stopping(), if !stopping => {}
            _ = refresh.tick() => {}
        }
    }
}

/// What went wrong with a slot's last attempt, if it failed or was refused.
fn failure(state: &ConnectionState) -> Option<String> {
    match state {
        ConnectionState::Failed { error } => Some(error.clone()),
        ConnectionState::Refused { reason, message } => {
            Some(format!("refused ({reason:?}): {message}"))
        }
        _ => None,
    }
}

/// How many slots are registered, and the status line: the registered connections and the
/// open streams, why none is registered (`last_failure`), or the drain.
fn connector_status(
    states: &[ConnectionState],
    streams: u64,
    draining: bool,
    last_failure: Option<&str>,
) -> (usize, String) {
    let registered = states.iter().filter(|s| is_registered(s)).count();
    let status = if draining {
        format!("draining: {streams} streams open")
    } else if registered > 0 {
        format!(
            "{registered}/{} connections registered, {streams} streams",
            states.len()
        )
    } else {
        match last_failure {
            Some(why) => format!("no connection registered: {why}"),
            None => "connecting to the edge".to_owned(),
        }
    };
    (registered, status)
}

/// One connection slot and what it needs.
struct Slot {
    index: u8,
    config: Arc<ConnectorConfig>,
    tls: Arc<rustls::ClientConfig>,
    tls_h2: Arc<rustls::ClientConfig>,
    session: Arc<SessionSettings>,
    streams: Arc<StreamContext>,
    states: watch::Sender<Vec<ConnectionState>>,
    metrics: Arc<ConnectorMetrics>,
    /// The slot's own tasks (control loops, drained connections, streams), stopped and
    /// forced with the connector's.
    shutdown: Shutdown,
}

impl Slot {
    /// Keep the slot connected until the connector stops.
    async fn supervise(self) {
        let edges = &self.config.edge.addresses;
        let mut backoff = Backoff::new(self.config.reconnect);
        let mut dialers = Dialers::default();
        // Slot i starts on edge address i mod n and, past the first n slots, on the next
        // address each edge name resolves to: several connections spread over every edge.
        let mut cursor = usize::from(self.index);
        while !self.shutdown.is_stopping() {
            // Failures advance the cursor: through the edges, then through each edge's
            // addresses. `Connector::new` refused an empty list.
            let (edge, pick) = choose_edge(edges, cursor);
            self.set_state(ConnectionState::Connecting, edge);
            let span = info_span!(
                "connection",
                edge = %edge,
                addr = tracing::field::Empty,
                protocol = tracing::field::Empty,
                connection_id = tracing::field::Empty,
            );
            let end = self
                .attempt(edge, pick, &mut dialers)
                .instrument(span)
                .await;
            let delay = match end {
                SessionEnd::Stopped => break,
                SessionEnd::Failed(error) => {
                    self.metrics.registration(Registration::Failed);
                    let delay = backoff.next_delay(Duration::ZERO);
                    warn!(
                        edge = %edge,
                        %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "cannot connect to the edge; will retry"
                    );
                    self.set_state(ConnectionState::Failed { error }, edge);
                    cursor += 1;
                    delay
                }
                SessionEnd::Refused(refused) => {
                    self.metrics.registration(Registration::Refused);
                    let delay =
                        backoff.next_delay(Duration::from_millis(refused.retry_after_ms.into()));
                    warn!(
                        edge = %edge,
                        reason = ?refused.reason,
                        message = %refused.message,
                        hint = refusal_hint(refused.reason),
                        retry_in_ms = delay.as_millis() as u64,
                        "registration refused by the edge; will retry"
                    );
                    self.set_state(
                        ConnectionState::Refused {
                            reason: refused.reason,
                            message: refused.message,
                        },
                        edge,
                    );
                    cursor += 1;
                    delay
                }
                SessionEnd::Lost { reason, uptime } => {
                    self.set_state(ConnectionState::Connecting, edge);
                    let delay = lost_delay(uptime, &mut backoff);
                    warn!(
                        edge = %edge,
                        %reason,
                        uptime_ms = uptime.as_millis() as u64,
                        retry_in_ms = delay.as_millis() as u64,
                        "connection lost; reconnecting"
                    );
                    delay
                }
                SessionEnd::Drained { uptime } => {
                    self.set_state(ConnectionState::Connecting, edge);
                    drained_delay(uptime, &mut backoff)
                }
            };
            if !delay.is_zero() {
                info!(
                    delay_ms = delay.as_millis() as u64,
                    "reconnecting after backoff"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.shutdown.stopping() => break,
                }
            }
        }
        self.set_state(ConnectionState::Stopped, "");
        // Drained connections and streams of lost ones finish (or are cut when the grace is
        // over) before their endpoint goes.
        self.shutdown.idle().await;
        dialers.wait_idle().await;
    }

    /// One attempt, in its own `connection` span: resolve `edge`, dial, register, serve.
    async fn attempt(&self, edge: &str, pick: usize, dialers: &mut Dialers) -> SessionEnd {
        let timeout = self.config.timeouts.register;
        let addr = tokio::select! {
            addr = tokio::time::timeout(timeout, resolve_edge(edge, pick)) => match addr {
                Ok(Ok(addr)) => addr,
                Ok(Err(error)) => return SessionEnd::Failed(error),
                Err(_) => return SessionEnd::Failed(format!(
                    "cannot resolve the edge address {edge}: no answer within {} ms; check \
                     this host's DNS, or set `edge.addresses`",
                    timeout.as_millis()
                )),
            },
            () = self.shutdown.stopping() => return SessionEnd::Stopped,
        };
        Span::current().record("addr", tracing::field::display(addr));
        let order: &[Protocol] = match self.config.protocol {
            ProtocolChoice::Quic => &[Protocol::Quic],
            ProtocolChoice::Http2 => &[Protocol::Http2],
            ProtocolChoice::Auto => &[Protocol::Quic, Protocol::Http2],
        };
        let mut failures = Vec::new();
        let mut dialed = None;
        for &protocol in order {
            match self.dial(protocol, addr, dialers).await {
                Dialed::Connected(conn) => {
                    dialed = Some(conn);
                    break;
                }
                Dialed::Stopped => return SessionEnd::Stopped,
                Dialed::Failed(error) => {
                    if protocol == Protocol::Quic && order.len() > 1 {
                        warn!(
                            %error,
                            "cannot establish QUIC with the edge (UDP blocked?); falling back \
                             to HTTP/2 over TCP for this connection, and trying QUIC again in \
                             the background"
                        );
                    }
                    failures.push(error);
                }
            }
        }
        let Some(conn) = dialed else {
            return SessionEnd::Failed(failures.join("; then "));
        };
        let protocol = conn.protocol();
        Span::current().record("protocol", protocol.as_str());
        let part = self.shutdown.linked();
        let registered = match session::register(conn, &self.session, self.index, &part).await {
            Ok(registered) => registered,
            Err(end) => return end,
        };
        let mut serving = self.registered(registered, edge, part.clone());
        if protocol == Protocol::Quic || self.config.protocol != ProtocolChoice::Auto {
            return serving.await;
        }
        // On HTTP/2 because QUIC failed: probe QUIC in the background, with backoff, while
        // this connection serves. Once QUIC works, its connection registers first, then this
        // one drains (its open streams finish on it; the edge sends it no new ones).
        let mut probes = Backoff::new(self.config.quic_probe);
        loop {
            let delay = probes.next_delay(Duration::ZERO);
            let next = self.shutdown.linked();
            let moved = tokio::select! {
                end = &mut serving => return end,
                moved = self.probe_quic(addr, dialers, delay, &next) => moved,
            };
            let Some(moved) = moved else {
                if self.shutdown.is_stopping() {
                    // No more probes: the HTTP/2 connection drains like any other.
                    return serving.await;
                }
                continue;
            };
            info!(
                connection_id = moved.accepted().connection_id,
                "QUIC works again: this connection moved back to QUIC; draining its HTTP/2 \
                 connection"
            );
            Span::current().record("protocol", Protocol::Quic.as_str());
            part.stop();
            let old = std::mem::replace(&mut serving, self.registered(moved, edge, next));
            self.shutdown.spawn(old);
            return serving.await;
        }
    }

    /// Dial `addr` over `protocol` within the registration timeout (QUIC in `auto` within
    /// [`AUTO_QUIC_TIMEOUT`], so that a blocked UDP path falls back soon).
    async fn dial(&self, protocol: Protocol, addr: SocketAddr, dialers: &mut Dialers) -> Dialed {
        let auto_quic = protocol == Protocol::Quic && self.config.protocol == ProtocolChoice::Auto;
        let timeout = if auto_quic {
            self.config.timeouts.register.min(AUTO_QUIC_TIMEOUT)
        } else {
            self.config.timeouts.register
        };
        let target = match protocol {
            Protocol::Quic => addr,
            Protocol::Http2 => SocketAddr::new(
                addr.ip(),
                self.config.edge.http2_port.unwrap_or(addr.port()),
            ),
        };
        let dialer = match dialers.get(protocol, target, self) {
            Ok(dialer) => dialer,
            Err(error) => {
                return Dialed::Failed(format!("cannot create the {protocol} endpoint: {error}"))
            }
        };
        let server_name = &self.config.edge.server_name;
        tokio::select! {
            conn = tokio::time::timeout(timeout, dialer.connect(target, server_name)) => {
                match conn {
                    Ok(Ok(conn)) => Dialed::Connected(conn),
                    Ok(Err(error)) => Dialed::Failed(handshake_failure(
                        &error,
                        protocol,
                        target,
                        &self.config.edge.verification,
                        server_name,
                    )),
                    Err(_) => Dialed::Failed(unreachable(protocol, target, timeout)),
                }
            }
            () = self.shutdown.stopping() => Dialed::Stopped,
        }
    }

    /// After `delay`, try QUIC to `addr` and register a connection over it under `part`;
    /// `None` when either fails (logged at debug: the HTTP/2 connection goes on serving).
    async fn probe_quic(
        &self,
        addr: SocketAddr,
        dialers: &mut Dialers,
        delay: Duration,
        part: &Shutdown,
    ) -> Option<session::Registered<AnyConnection>> {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.shutdown.stopping() => return None,
        }
        let conn = match self.dial(Protocol::Quic, addr, dialers).await {
            Dialed::Connected(conn) => conn,
            Dialed::Failed(error) => {
                debug!(%error, "QUIC probe failed; staying on HTTP/2");
                return None;
            }
            Dialed::Stopped => return None,
        };
        match session::register(conn, &self.session, self.index, part).await {
            Ok(registered) => Some(registered),
            Err(end) => {
                let why = match end {
                    SessionEnd::Failed(error) => error,
                    SessionEnd::Refused(refused) => refused.message,
                    _ => "the connection ended".to_owned(),
                };
                debug!(%why, "registration over QUIC failed; staying on HTTP/2");
                None
            }
        }
    }

    /// Record `registered` as the slot's connection and serve it under `part`, as a future
    /// that owns what it needs (so that a connection being replaced can drain in a task).
    fn registered(
        &self,
        registered: session::Registered<AnyConnection>,
        edge: &str,
        part: Shutdown,
    ) -> Pin<Box<dyn Future<Output = SessionEnd> + Send>> {
        self.metrics.registration(Registration::Accepted);
        self.metrics
            .slot_protocol(self.index, registered.protocol().as_str());
        let accepted = registered.accepted();
        self.set_state(
            ConnectionState::Registered {
                connection_id: accepted.connection_id,
                edge_name: accepted.edge_name.clone(),
            },
            edge,
        );
        let (streams, settings) = (self.streams.clone(), self.session.clone());
        Box::pin(async move { registered.serve(streams, &settings, &part).await }.in_current_span())
    }

    fn set_state(&self, state: ConnectionState, edge: &str) {
        let index = usize::from(self.index);
        self.metrics
            .slot_state(self.index, state_label(&state), edge);
        self.states.send_modify(|states| {
            if let Some(slot) = states.get_mut(index) {
                *slot = state;
            }
        });
    }
}

/// The edge address for a slot at `cursor` (its index, plus one per failed attempt), and
/// which of the addresses that edge's name resolves to: slot `i` takes edge `i mod n`, and
/// the slots beyond the first `n` take each edge's next address.
fn choose_edge(edges: &[String], cursor: usize) -> (&str, usize) {
    (&edges[cursor % edges.len()], cursor / edges.len())
}

/// How long to wait before redialing after a connection that was up for `uptime` was lost:
/// the full-jitter backoff, which starts again from its first step once the connection had
/// been up for [`STABLE_AFTER`].
fn lost_delay(uptime: Duration, backoff: &mut Backoff) -> Duration {
    if uptime >= STABLE_AFTER {
        backoff.reset();
    }
    backoff.next_delay(Duration::ZERO)
}

/// How long to wait before redialing after the edge drained a connection that was up for
/// `uptime`: the edge restarts or moves its connections, so the slot comes back soon,
/// jittered (up to [`DRAINED_REDIAL`]) so that a fleet does not reconnect in lockstep. A
/// connection drained within [`DRAINED_AT_ONCE`] of registering keeps backing off instead,
/// so an edge that drains everything at once causes no tight loop.
fn drained_delay(uptime: Duration, backoff: &mut Backoff) -> Duration {
    if uptime < DRAINED_AT_ONCE {
        return backoff.next_delay(Duration::ZERO);
    }
    if uptime >= STABLE_AFTER {
        backoff.reset();
    }
    rand::thread_rng().gen_range(Duration::ZERO..=DRAINED_REDIAL)
}

/// The `state` label of the connections gauge.
fn state_label(state: &ConnectionState) -> &'static str {
    match state {
        ConnectionState::Connecting => "connecting",
        ConnectionState::Registered { .. } => "registered",
        ConnectionState::Refused { .. } => "refused",
        ConnectionState::Failed { .. } => "failed",
        ConnectionState::Stopped => "stopped",
    }
}

/// What an operator can do about a refusal.
fn refusal_hint(reason: RefuseReason) -> &'static str {
    match reason {
        RefuseReason::UnknownTunnel => {
            "the edge has no such tunnel (deleted?): get a token for an existing tunnel from \
             the edge (`underpass-edge tunnel token NAME`)"
        }
        RefuseReason::BadProof => {
            "the tunnel's secret changed (rotated?): get the new token from the edge \
             (`underpass-edge tunnel token NAME`) and restart the connector with it"
        }
        RefuseReason::UnsupportedVersion => {
            "the edge speaks another protocol version: upgrade the connector or the edge"
        }
        RefuseReason::TooManyConnections => {
            "the tunnel has as many connections as the edge allows: lower `connections` or \
             run fewer replicas"
        }
        RefuseReason::Draining => "the edge is shutting down; retrying",
        RefuseReason::Malformed => "the edge could not read the registration: a version mismatch?",
    }
}

/// The transport layer `protocol` runs on, for messages ("UDP", "TCP").
fn carrier(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Quic => "UDP",
        Protocol::Http2 => "TCP",
    }
}

/// The message for an edge that did not answer the handshake in time.
fn unreachable(protocol: Protocol, addr: SocketAddr, timeout: Duration) -> String {
    let carrier = carrier(protocol);
    format!(
        "no answer from the edge at {addr} over {protocol} ({carrier} port {port}) within {ms} \
         ms: check that the edge is running and listening there, and that firewalls allow \
         outbound {carrier} to {ip} port {port}",
        port = addr.port(),
        ip = addr.ip(),
        ms = timeout.as_millis()
    )
}

/// A readable message, saying what to do, for a failed QUIC handshake with the edge.
fn handshake_failure(
    error: &TransportError,
    protocol: Protocol,
    addr: SocketAddr,
    verification: &EdgeVerification,
    server_name: &str,
) -> String {
    let text = error.to_string();
    let Some((_, detail)) = text.split_once("invalid peer certificate: ") else {
        if text.contains("timed out") {
            return unreachable_after_idle(protocol, addr, &text);
        }
        if text.contains("no application protocol") {
            return format!(
                "the edge at {addr} does not speak this connector's protocol (ALPN): upgrade \
                 the connector or the edge ({text})"
            );
        }
        return format!("{protocol} handshake with the edge at {addr} failed: {text}");
    };
    let detail = certificate_detail(detail);
    match verification {
        EdgeVerification::Pin(_) if detail.contains("pinned CA") => format!(
            "the edge at {addr} presented a certificate that does not match the CA pin in the \
             tunnel token (its CA changed, or this is not the tunnel's edge): get a new token \
             from the edge (`underpass-edge tunnel token NAME`) and restart the connector with \
             it ({detail})"
        ),
        _ if detail.contains("NotValidForName") || detail.contains("not valid for name") => {
            format!(
                "the edge at {addr} presented a certificate that is not valid for the name \
                 {server_name:?}: check `edge.server_name`, or get a new token from the edge \
                 ({detail})"
            )
        }
        EdgeVerification::Pin(_) => format!(
            "the edge at {addr} presented a certificate the tunnel token's CA pin does not \
             accept: get a new token from the edge (`underpass-edge tunnel token NAME`) \
             ({detail})"
        ),
        EdgeVerification::CaPem(_) => format!(
            "the edge at {addr} presented a certificate `edge.ca_file` does not verify: \
             update the CA file, or remove it to use the token's pin ({detail})"
        ),
        _ => format!("the edge at {addr} presented a certificate that was rejected ({detail})"),
    }
}

/// rustls's certificate error without its enum wrappers (`Other(OtherError(...))`).
fn certificate_detail(detail: &str) -> String {
    let mut detail = detail.trim();
    for wrapper in ["Other(", "OtherError("] {
        if let Some(inner) = detail
            .strip_prefix(wrapper)
            .and_then(|d| d.strip_suffix(')'))
        {
            detail = inner.trim();
        }
    }
    detail.to_owned()
}

fn unreachable_after_idle(protocol: Protocol, addr: SocketAddr, text: &str) -> String {
    let carrier = carrier(protocol);
    format!(
        "no answer from the edge at {addr} over {protocol} ({carrier} port {port}): check that \
         the edge is running and listening there, and that firewalls allow outbound {carrier} \
         to {ip} port {port} ({text})",
        port = addr.port(),
        ip = addr.ip()
    )
}

/// Resolve `host:port` and take its `pick`-th address (modulo their number), in a stable
/// order so that slots spread over every address.
async fn resolve_edge(edge: &str, pick: usize) -> Result<SocketAddr, String> {
    let (host, port) = parse_authority(edge)
        .map_err(|e| format!("edge address {edge:?} is not host:port: {e}"))?;
    let mut addrs: Vec<SocketAddr> = match host {
        Host::Ip(ip) => vec![SocketAddr::new(ip, port)],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| {
                format!(
                    "cannot resolve the edge address {edge}: {e}; check the name and this \
                     host's DNS, or set `edge.addresses`"
                )
            })?
            .collect(),
    };
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!(
            "the edge address {edge} resolved to no address; check its DNS records"
        ));
    }
    Ok(addrs[pick % addrs.len()])
}

/// The transport endpoints of one slot: a QUIC one per address family and an HTTP/2 one,
/// made when first needed and kept across reconnects. Sessions see only the connections they
/// dial ([`AnyConnection`]).
#[derive(Default)]
struct Dialers {
    v4: Option<AnyDialer>,
    v6: Option<AnyDialer>,
    h2: Option<AnyDialer>,
}

impl Dialers {
    /// The endpoint for dialing `edge` over `protocol`.
    fn get(
        &mut self,
        protocol: Protocol,
        edge: SocketAddr,
        slot: &Slot,
    ) -> Result<&AnyDialer, TransportError> {
        let entry = match protocol {
            Protocol::Http2 => &mut self.h2,
            Protocol::Quic if edge.is_ipv4() => &mut self.v4,
            Protocol::Quic => &mut self.v6,
        };
        if entry.is_none() {
            let dialer: AnyDialer = match protocol {
                Protocol::Http2 => H2Dialer::new(slot.tls_h2.clone(), &slot.config.http2)?.into(),
                Protocol::Quic => {
                    let bind: SocketAddr = if edge.is_ipv4() {
                        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                    } else {
                        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                    };
                    QuicDialer::new(slot.tls.clone(), &slot.config.quic, bind)?.into()
                }
            };
            *entry = Some(dialer);
        }
        entry
            .as_ref()
            .ok_or_else(|| TransportError::Connect(format!("no {protocol} endpoint")))
    }

    /// Let close frames leave, for at most [`CLOSE_FLUSH`].
    async fn wait_idle(&self) {
        for dialer in [&self.v4, &self.v6, &self.h2].into_iter().flatten() {
            dialer.close();
            let _ = tokio::time::timeout(CLOSE_FLUSH, dialer.wait_idle()).await;
        }
    }
}

/// How a dial ended.
enum Dialed {
    Connected(AnyConnection),
    Failed(String),
    Stopped,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn slots_spread_over_every_edge_and_every_address() {
        let edges = vec!["a:1".to_owned(), "b:1".to_owned()];
        // Each name resolves to two addresses.
        let chosen: HashSet<(&str, usize)> = (0..4)
            .map(|slot| {
                let (edge, pick) = choose_edge(&edges, slot);
                (edge, pick % 2)
            })
            .collect();
        assert_eq!(chosen.len(), 4, "{chosen:?}");
        // One edge: slot i takes address i (mod their number).
        let one = vec!["a:1".to_owned()];
        let picks: Vec<usize> = (0..4).map(|slot| choose_edge(&one, slot).1 % 3).collect();
        assert_eq!(picks, [0, 1, 2, 0]);
    }

    #[test]
    fn the_backoff_starts_again_after_a_stable_connection() {
        let settings = crate::config::ReconnectSettings {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let mut backoff = Backoff::new(settings);
        // Short-lived connections: the ceiling doubles each time, up to the max.
        for _ in 0..10 {
            let _ = lost_delay(Duration::from_secs(1), &mut backoff);
        }
        assert_eq!(backoff.ceiling(), settings.max);
        // One that stayed up for the stable period starts again from the first step.
        let delay = lost_delay(STABLE_AFTER, &mut backoff);
        assert!(delay <= settings.initial, "{delay:?}");
        assert!(backoff.ceiling() < settings.max, "{:?}", backoff.ceiling());
    }

    #[test]
    fn a_drained_connection_is_redialed_soon_unless_it_was_drained_at_once() {
        let settings = crate::config::ReconnectSettings {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(60),
        };
        let mut backoff = Backoff::new(settings);
        for _ in 0..100 {
            assert!(drained_delay(Duration::from_secs(2), &mut backoff) <= DRAINED_REDIAL);
        }
        // Drained right after registering: the backoff grows instead.
        let mut backoff = Backoff::new(settings);
        let mut longest = Duration::ZERO;
        for _ in 0..20 {
            longest = longest.max(drained_delay(Duration::from_millis(10), &mut backoff));
        }
        assert!(longest > DRAINED_REDIAL, "{longest:?}");
    }

    #[test]
    fn the_status_line_says_what_is_registered_why_not_or_that_it_drains() {
        let registered = ConnectionState::Registered {
            connection_id: 7,
            edge_name: "edge".into(),
        };
        let failed = ConnectionState::Failed {
            error: "no answer from the edge".into(),
        };
        let states = [
            registered.clone(),
            registered.clone(),
            failed.clone(),
            ConnectionState::Connecting,
        ];
        let why = failure(&failed);
        assert_eq!(why.as_deref(), Some("no answer from the edge"));
        assert_eq!(
            connector_status(&states, 12, false, why.as_deref()),
            (2, "2/4 connections registered, 12 streams".to_owned())
        );
        assert_eq!(
            connector_status(&states, 3, true, None),
            (2, "draining: 3 streams open".to_owned())
        );
        let states = [ConnectionState::Connecting, ConnectionState::Connecting];
        assert_eq!(
            connector_status(&states, 0, false, why.as_deref()),
            (
                0,
                "no connection registered: no answer from the edge".to_owned()
            )
        );
        assert_eq!(
            connector_status(&states, 0, false, None).1,
            "connecting to the edge"
        );
        let refused = ConnectionState::Refused {
            reason: RefuseReason::BadProof,
            message: "bad proof".into(),
        };
        assert_eq!(
            failure(&refused).as_deref(),
            Some("refused (BadProof): bad proof")
        );
    }

    #[test]
    fn the_stream_count_is_the_sum_of_the_active_gauge() {
        let metrics = ConnectorMetrics::new(1);
        let metrics = Arc::new(metrics);
        assert_eq!(metrics.streams_active(), 0);
        let a = metrics.stream_started(crate::metrics::StreamKind::Connect);
        let b = metrics.stream_started(crate::metrics::StreamKind::Fetch);
        let _c = metrics.stream_started(crate::metrics::StreamKind::Fetch);
        assert_eq!(metrics.streams_active(), 3);
        drop((a, b));
        assert_eq!(metrics.streams_active(), 1);
    }

    #[test]
    fn failures_say_what_to_do() {
        let addr: SocketAddr = "192.0.2.7:7844".parse().expect("addr");
        let message = unreachable(Protocol::Quic, addr, Duration::from_secs(10));
        assert!(message.contains("over quic (UDP port 7844)"), "{message}");
        assert!(
            message.contains("firewalls allow outbound UDP to 192.0.2.7"),
            "{message}"
        );
        let message = unreachable(Protocol::Http2, addr, Duration::from_secs(10));
        assert!(message.contains("over http2 (TCP port 7844)"), "{message}");
        assert!(
            message.contains("firewalls allow outbound TCP to 192.0.2.7"),
            "{message}"
        );
        let error = TransportError::Handshake(
            "the cryptographic handshake failed: error 42: invalid peer certificate: \
             Other(OtherError(edge certificate chain does not contain the pinned CA (sha256:ab)))"
                .into(),
        );
        let message = handshake_failure(
            &error,
            Protocol::Quic,
            addr,
            &EdgeVerification::Pin([0; 32]),
            "edge",
        );
        assert!(
            message.contains("get a new token from the edge"),
            "{message}"
        );
        assert!(!message.contains("OtherError"), "{message}");
        assert!(
            message
                .ends_with("(edge certificate chain does not contain the pinned CA (sha256:ab))"),
            "{message}"
        );
    }
}
