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

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, info_span, warn, Instrument, Span};
use underpass_proto::authority::parse_authority;
use underpass_proto::{ConnectorId, Host, RefuseReason};
use underpass_rt::Shutdown;
use underpass_transport::quic::{QuicDialer, ALPN};
use underpass_transport::tls::{self, EdgeVerification, TlsError};
use underpass_transport::{AnyDialer, Dialer as _, TransportError};

use crate::backoff::Backoff;
use crate::config::ConnectorConfig;
use crate::resolve::SystemDnsError;
use crate::session::{self, SessionEnd, SessionSettings};
use crate::streams::StreamContext;

/// A registration that lasted this long resets the backoff when it ends: the edge was
/// healthy, so reconnecting at once is right. Shorter ones keep backing off, so an edge that
/// accepts and then drops or drains every connection is not hammered.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a stopping slot waits for its close frames to leave.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

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
    connector_id: ConnectorId,
    session: Arc<SessionSettings>,
    streams: Arc<StreamContext>,
    states: watch::Sender<Vec<ConnectionState>>,
    shutdown: Shutdown,
}

/// A running connector started with [`Connector::start`]. Dropping it shuts the connector
/// down (without waiting).
pub struct ConnectorHandle {
    states: watch::Receiver<Vec<ConnectionState>>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), ConnectorError>>,
    connector_id: ConnectorId,
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
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        let connector_id = ConnectorId(id);
        let shutdown = Shutdown::new();
        let streams = Arc::new(StreamContext::new(&config, shutdown.child())?);
        let slots = usize::from(config.connections);
        let (states, _) = watch::channel(vec![ConnectionState::Connecting; slots]);
        Ok(Connector {
            session: Arc::new(SessionSettings::new(&config, connector_id)),
            config: Arc::new(config),
            tls: Arc::new(tls),
            connector_id,
            streams,
            states,
            shutdown,
        })
    }

    /// This instance's random id (sent at registration).
    pub fn connector_id(&self) -> ConnectorId {
        self.connector_id
    }

    /// The connection states, one per slot, as they change.
    pub fn subscribe(&self) -> watch::Receiver<Vec<ConnectionState>> {
        self.states.subscribe()
    }

    /// Build a connector and run it on a task of the current runtime.
    pub fn start(config: ConnectorConfig) -> Result<ConnectorHandle, ConnectorError> {
        let connector = Connector::new(config)?;
        let states = connector.subscribe();
        let connector_id = connector.connector_id();
        let shutdown = connector.shutdown.clone();
        // The root task: everything else runs under its `Shutdown`, and the handle waits for
        // this task, so nothing the connector started outlives `ConnectorHandle::shutdown`.
        let task = tokio::spawn(connector.run(std::future::pending()));
        Ok(ConnectorHandle {
            states,
            shutdown,
            task,
            connector_id,
        })
    }

    /// Keep every connection slot connected until `shutdown` resolves (or the connector's
    /// own [`Shutdown`] is stopped by a [`ConnectorHandle`]); then drain open streams (up to
    /// `timeouts.drain`), cut what is left and close the connections.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ConnectorError> {
        let config = &self.config;
        let mut supervisors = JoinSet::new();
        for index in 0..config.connections {
            let slot = Slot {
                index,
                config: config.clone(),
                tls: self.tls.clone(),
                session: self.session.clone(),
                streams: self.streams.clone(),
                states: self.states.clone(),
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
            () = shutdown => info!("shutting down"),
            () = self.shutdown.stopping() => info!("shutting down"),
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
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(ConnectorError::Supervisor(e.to_string())),
        }
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

/// One connection slot and what it needs.
struct Slot {
    index: u8,
    config: Arc<ConnectorConfig>,
    tls: Arc<rustls::ClientConfig>,
    session: Arc<SessionSettings>,
    streams: Arc<StreamContext>,
    states: watch::Sender<Vec<ConnectionState>>,
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
        // Slots start on different edges so that several connections spread out.
        let mut cursor = usize::from(self.index);
        while !self.shutdown.is_stopping() {
            self.set_state(ConnectionState::Connecting);
            // Failures advance the cursor: through the edges, then through each edge's
            // addresses. `Connector::new` refused an empty list.
            let edge = &edges[cursor % edges.len()];
            let pick = cursor / edges.len();
            let span = info_span!(
                "connection",
                edge = %edge,
                addr = tracing::field::Empty,
                connection_id = tracing::field::Empty,
            );
            let end = self
                .attempt(edge, pick, &mut dialers)
                .instrument(span)
                .await;
            let delay = match end {
                SessionEnd::Stopped => break,
                SessionEnd::Failed(error) => {
                    warn!(edge = %edge, %error, "connection attempt failed; will retry");
                    self.set_state(ConnectionState::Failed { error });
                    cursor += 1;
                    backoff.next_delay(Duration::ZERO)
                }
                SessionEnd::Refused(refused) => {
                    warn!(
                        edge = %edge,
                        reason = ?refused.reason,
                        message = %refused.message,
                        retry_after_ms = refused.retry_after_ms,
                        "registration refused by the edge; will retry"
                    );
                    self.set_state(ConnectionState::Refused {
                        reason: refused.reason,
                        message: refused.message,
                    });
                    cursor += 1;
                    backoff.next_delay(Duration::from_millis(refused.retry_after_ms.into()))
                }
                SessionEnd::Lost { reason, uptime } => {
                    warn!(
                        edge = %edge,
                        %reason,
                        uptime_ms = uptime.as_millis() as u64,
                        "connection lost; reconnecting"
                    );
                    if uptime >= STABLE_AFTER {
                        backoff.reset();
                    }
                    backoff.next_delay(Duration::ZERO)
                }
                SessionEnd::Drained { uptime } if uptime >= STABLE_AFTER => {
                    backoff.reset();
                    Duration::ZERO
                }
                // An edge that drains every connection at once must not cause a tight loop.
                SessionEnd::Drained { .. } => backoff.next_delay(Duration::ZERO),
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
        self.set_state(ConnectionState::Stopped);
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
                Err(_) => return SessionEnd::Failed(format!("cannot resolve {edge}: timed out")),
            },
            () = self.shutdown.stopping() => return SessionEnd::Stopped,
        };
        Span::current().record("addr", tracing::field::display(addr));
        let dialer = match dialers.for_edge(addr, &self.tls, &self.config) {
            Ok(dialer) => dialer,
            Err(error) => {
                return SessionEnd::Failed(format!("cannot create QUIC endpoint: {error}"))
            }
        };
        let server_name = &self.config.edge.server_name;
        let conn = tokio::select! {
            conn = tokio::time::timeout(timeout, dialer.connect(addr, server_name)) => match conn {
                Ok(Ok(conn)) => conn,
                Ok(Err(error)) => return SessionEnd::Failed(error.to_string()),
                Err(_) => return SessionEnd::Failed(format!(
                    "no QUIC handshake with {addr} within {} ms", timeout.as_millis()
                )),
            },
            () = self.shutdown.stopping() => return SessionEnd::Stopped,
        };
        let registered =
            match session::register(conn, &self.session, self.index, &self.shutdown).await {
                Ok(registered) => registered,
                Err(end) => return end,
            };
        let accepted = registered.accepted();
        self.set_state(ConnectionState::Registered {
            connection_id: accepted.connection_id,
            edge_name: accepted.edge_name.clone(),
        });
        registered
            .serve(self.streams.clone(), &self.session, &self.shutdown)
            .await
    }

    fn set_state(&self, state: ConnectionState) {
        let index = usize::from(self.index);
        self.states.send_modify(|states| {
            if let Some(slot) = states.get_mut(index) {
                *slot = state;
            }
        });
    }
}

/// Resolve `host:port` and take its `pick`-th address (modulo their number).
async fn resolve_edge(edge: &str, pick: usize) -> Result<SocketAddr, String> {
    let (host, port) = parse_authority(edge)
        .map_err(|e| format!("edge address {edge:?} is not host:port: {e}"))?;
    let addrs: Vec<SocketAddr> = match host {
        Host::Ip(ip) => vec![SocketAddr::new(ip, port)],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve edge address {edge}: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("edge address {edge} resolved to nothing"));
    }
    Ok(addrs[pick % addrs.len()])
}

/// The transport endpoints of one slot, one per address family, made when first needed and
/// kept across reconnects. Sessions see only the connections they dial
/// ([`AnyConnection`](underpass_transport::AnyConnection)).
#[derive(Default)]
struct Dialers {
    v4: Option<AnyDialer>,
    v6: Option<AnyDialer>,
}

impl Dialers {
    /// The endpoint for dialing `edge`.
    fn for_edge(
        &mut self,
        edge: SocketAddr,
        tls: &Arc<rustls::ClientConfig>,
        config: &ConnectorConfig,
    ) -> Result<&AnyDialer, TransportError> {
        let (slot, bind): (_, SocketAddr) = if edge.is_ipv4() {
            (&mut self.v4, (std::net::Ipv4Addr::UNSPECIFIED, 0).into())
        } else {
            (&mut self.v6, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())
        };
        if slot.is_none() {
            *slot = Some(QuicDialer::new(tls.clone(), &config.quic, bind)?.into());
        }
        slot.as_ref()
            .ok_or_else(|| TransportError::Connect("no QUIC endpoint".into()))
    }

    /// Let close frames leave, for at most [`CLOSE_FLUSH`].
    async fn wait_idle(&self) {
        for dialer in [&self.v4, &self.v6].into_iter().flatten() {
            dialer.close();
            let _ = tokio::time::timeout(CLOSE_FLUSH, dialer.wait_idle()).await;
        }
    }
}
