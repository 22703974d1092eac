//! The connector as a whole: one supervisor per connection slot, each dialing the edge,
//! registering, serving streams, and reconnecting with backoff whatever happens, until shut
//! down.
//!
//! - [`run`] / [`Connector::run`]: serve until a shutdown future resolves (the binary);
//! - [`Connector::start`]: spawn it and get a [`ConnectorHandle`] to watch the connection
//!   states and shut down (tests, embedders).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{error, info, info_span, warn, Instrument};
use underpass_proto::{AnnouncedRoute, ConnectorId, RefuseReason};
use underpass_transport::quic::{QuicDialer, TransportError, ALPN};
use underpass_transport::tls::{self, EdgeVerification, TlsError};

use crate::backoff::Backoff;
use crate::config::ConnectorConfig;
use crate::dial::Dialer;
use crate::resolve::SystemDnsError;
use crate::session::{self, SessionEnd};
use crate::stream::StreamContext;

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

/// What every connection slot shares.
pub(crate) struct Shared {
    pub config: Arc<ConnectorConfig>,
    pub tls: Arc<rustls::ClientConfig>,
    pub connector_id: ConnectorId,
    pub announced: Vec<AnnouncedRoute>,
    pub streams: Arc<StreamContext>,
    states: watch::Sender<Vec<ConnectionState>>,
}

impl Shared {
    pub(crate) fn set_state(&self, index: u8, state: ConnectionState) {
        self.states.send_modify(|states| {
            if let Some(slot) = states.get_mut(usize::from(index)) {
                *slot = state;
            }
        });
    }
}

/// A configured connector, ready to run.
pub struct Connector {
    shared: Arc<Shared>,
}

/// A running connector started with [`Connector::start`]. Dropping it shuts the connector
/// down (without waiting).
pub struct ConnectorHandle {
    states: watch::Receiver<Vec<ConnectionState>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ConnectorError>>,
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
        let dialer = Dialer::from_config(&config)?;
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        let streams = Arc::new(StreamContext {
            dialer: Arc::new(dialer),
            header_timeout: config.timeouts.header,
            max_streams: config.max_streams,
            origin: crate::origin::OriginClient::new(crate::origin::OriginSettings {
                tls_handshake_timeout: config.timeouts.tls_handshake,
                response_header_timeout: config.timeouts.response_header,
                http2: config.timeouts.origin_http2,
                ..crate::origin::OriginSettings::default()
            }),
        });
        let slots = usize::from(config.connections);
        let (states, _) = watch::channel(vec![ConnectionState::Connecting; slots]);
        Ok(Connector {
            shared: Arc::new(Shared {
                announced: config.announced_routes(),
                config: Arc::new(config),
                tls: Arc::new(tls),
                connector_id: ConnectorId(id),
                streams,
                states,
            }),
        })
    }

    /// This instance's random id (sent at registration).
    pub fn connector_id(&self) -> ConnectorId {
        self.shared.connector_id
    }

    /// The connection states, one per slot, as they change.
    pub fn subscribe(&self) -> watch::Receiver<Vec<ConnectionState>> {
        self.shared.states.subscribe()
    }

    /// Build a connector and run it on a task of the current runtime.
    pub fn start(config: ConnectorConfig) -> Result<ConnectorHandle, ConnectorError> {
        let connector = Connector::new(config)?;
        let states = connector.subscribe();
        let connector_id = connector.connector_id();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(connector.run(async move {
            // Either an explicit shutdown or the handle being dropped.
            let _ = stopped.await;
        }));
        Ok(ConnectorHandle {
            states,
            stop: Some(stop),
            task,
            connector_id,
        })
    }

    /// Keep every connection slot connected until `shutdown` resolves; then drain open
    /// streams (up to `timeouts.drain`) and close the connections.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ConnectorError> {
        let shared = self.shared;
        let config = &shared.config;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut supervisors = JoinSet::new();
        for index in 0..config.connections {
            let span = info_span!(
                "connection",
                index,
                edge = tracing::field::Empty,
                connection_id = tracing::field::Empty
            );
            supervisors.spawn(supervise(shared.clone(), index, stop_rx.clone()).instrument(span));
        }
        info!(
            connector_id = %hex::encode(shared.connector_id.0),
            tunnel_id = %hex::encode(config.token.tunnel_id.0),
            connections = config.connections,
            routes = config.routes.len(),
            "connector started"
        );
        let mut failure = None;
        tokio::select! {
            () = shutdown => info!("shutting down"),
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
        // Receivers only go away with the supervisors; nothing to do if they already have.
        let _ = stop_tx.send(true);
        while let Some(joined) = supervisors.join_next().await {
            if let Err(e) = joined {
                error!(error = %e, "connection supervisor failed during shutdown");
                failure.get_or_insert(ConnectorError::Supervisor(e.to_string()));
            }
        }
        shared
            .states
            .send_modify(|states| states.fill(ConnectionState::Stopped));
        info!("connector stopped");
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

    /// Drain open streams (up to `timeouts.drain`), close the connections, and wait for the
    /// connector to stop.
    pub async fn shutdown(mut self) -> Result<(), ConnectorError> {
        if let Some(stop) = self.stop.take() {
            // The task may already be gone; then there is nothing to stop.
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(ConnectorError::Supervisor(e.to_string())),
        }
    }
}

fn is_registered(state: &ConnectionState) -> bool {
    matches!(state, ConnectionState::Registered { .. })
}

/// Keep one connection slot connected until `stop` turns true.
async fn supervise(shared: Arc<Shared>, index: u8, mut stop: watch::Receiver<bool>) {
    let config = shared.config.clone();
    let edges = &config.edge.addresses;
    let mut backoff = Backoff::new(config.reconnect);
    let mut dialers = Dialers::default();
    // Slots start on different edges so that several connections spread out.
    let mut cursor = usize::from(index);
    loop {
        if *stop.borrow() {
            break;
        }
        shared.set_state(index, ConnectionState::Connecting);
        // Failures advance the cursor: through the edges, then through each edge's addresses.
        let edge = &edges[cursor % edges.len()];
        let pick = cursor / edges.len();
        let end = session::attempt(&shared, index, edge, pick, &mut dialers, &mut stop).await;
        let delay = match end {
            SessionEnd::Stopped => break,
            SessionEnd::Failed(error) => {
                warn!(edge = %edge, %error, "connection attempt failed; will retry");
                shared.set_state(index, ConnectionState::Failed { error });
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
                shared.set_state(
                    index,
                    ConnectionState::Refused {
                        reason: refused.reason,
                        message: refused.message,
                    },
                );
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
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
    }
    shared.set_state(index, ConnectionState::Stopped);
    dialers.wait_idle().await;
}

/// A registration that lasted this long resets the backoff when it ends: the edge was
/// healthy, so reconnecting at once is right. Shorter ones keep backing off, so an edge that
/// accepts and then drops or drains every connection is not hammered.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The QUIC endpoints of one slot, one per address family, made when first needed and kept
/// across reconnects.
#[derive(Default)]
pub(crate) struct Dialers {
    v4: Option<QuicDialer>,
    v6: Option<QuicDialer>,
}

/// How long a stopping connector waits for its close frames to leave.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

impl Dialers {
    /// The endpoint for dialing `edge`.
    pub(crate) fn for_edge(
        &mut self,
        edge: SocketAddr,
        shared: &Shared,
    ) -> Result<&QuicDialer, TransportError> {
        let (slot, bind): (_, SocketAddr) = if edge.is_ipv4() {
            (&mut self.v4, (std::net::Ipv4Addr::UNSPECIFIED, 0).into())
        } else {
            (&mut self.v6, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())
        };
        if slot.is_none() {
            *slot = Some(QuicDialer::new(
                shared.tls.clone(),
                &shared.config.quic,
                bind,
            )?);
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

/// Split `host:port` (`[v6]:port` for IPv6); `None` if it is not of that form.
pub(crate) fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.trim().rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = match host.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("edge.example:7844"),
            Some(("edge.example", 7844))
        );
        assert_eq!(split_host_port("127.0.0.1:1"), Some(("127.0.0.1", 1)));
        assert_eq!(split_host_port("[::1]:7844"), Some(("::1", 7844)));
        assert_eq!(split_host_port("::1:7844"), None);
        assert_eq!(split_host_port("edge.example"), None);
        assert_eq!(split_host_port(":7844"), None);
        assert_eq!(split_host_port("edge:99999"), None);
    }
}
