//! [`H2Connection`]: one HTTP/2 connection between connector and edge, implementing
//! [`Connection`]; and the HTTP/2 part of its handshake on each side.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;
use tokio_rustls::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::driver::{offer_reverse, Driver, Offer, RawStream, Session, Wire};
use super::io::SharedIo;
use super::state::{describe, ConnState};
use super::stream::{self, H2Recv, H2Send, Incoming};
use super::wire::{self, CloseRecord, RequestKind};
use super::H2Config;
use crate::{Connection, ConnectionStats, StreamError};

/// Streams the connector opened that the edge keeps for [`accept_bi`](Connection::accept_bi)
/// before it stops offering more.
const REVERSE_BACKLOG: usize = 16;

/// An established HTTP/2 connection between connector and edge. Cheap to clone; the
/// connection is closed (code 0) when the last clone and the last of its streams are dropped.
#[derive(Clone)]
pub struct H2Connection {
    handle: Arc<Handle>,
}

/// What the clones of an [`H2Connection`] and its streams share.
pub(crate) struct Handle {
    pub(crate) state: Arc<ConnState>,
    io: SharedIo,
    remote: SocketAddr,
    role: Role,
}

/// How streams are opened and accepted: the edge is the HTTP/2 client, the connector the
/// server (see the module docs of [`super`]).
enum Role {
    Edge {
        requests: h2::client::SendRequest<Bytes>,
        /// Streams the connector opened, answering the edge's offers.
        reversed: Mutex<mpsc::Receiver<RawStream>>,
    },
    Connector {
        /// Streams the edge opened, already answered.
        streams: Mutex<mpsc::UnboundedReceiver<RawStream>>,
        /// The edge's offers to let the connector open a stream.
        offers: Mutex<mpsc::UnboundedReceiver<Offer>>,
    },
}

impl Role {
    fn name(&self) -> &'static str {
        match self {
            Role::Edge { .. } => "edge",
            Role::Connector { .. } => "connector",
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // As a QUIC connection whose last handle is dropped: closed with code 0.
        self.state.request_close(CloseRecord {
            code: 0,
            reason: Vec::new(),
        });
    }
}

impl fmt::Debug for H2Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Connection")
            .field("id", &self.stable_id())
            .field("role", &self.handle.role.name())
            .field("remote", &self.handle.remote)
            .finish()
    }
}

impl H2Connection {
    /// An identifier for this connection, unique among the live connections of the process.
    pub fn stable_id(&self) -> usize {
        // The address of the shared state, as quinn does it: unique while the connection
        // lives.
        Arc::as_ptr(&self.handle.state) as usize
    }

    /// The latest round-trip time: measured at the handshake (TCP connect on the connector,
    /// the session request on the edge), then by every answered PING.
    pub fn rtt(&self) -> Duration {
        self.handle.state.rtt()
    }

    /// Run `operation` unless, or until, the connection ends.
    async fn unless_ended<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, StreamError>>,
    ) -> Result<T, StreamError> {
        let state = &self.handle.state;
        if let Some(error) = state.error() {
            return Err(error);
        }
        tokio::select! {
            biased;
            error = state.ended() => Err(error),
            result = operation => result,
        }
    }

    /// The connection's error, for a queue whose sender (the driver) is gone.
    fn gone(&self) -> StreamError {
        self.handle
            .state
            .error()
            .unwrap_or_else(|| StreamError::ConnectionLost("HTTP/2 connection ended".into()))
    }

    fn pair(&self, send: h2::SendStream<Bytes>, recv: Incoming) -> (H2Send, H2Recv) {
        let alive: Arc<dyn std::any::Any + Send + Sync> = self.handle.clone();
        stream::pair(
            send,
            recv,
            stream::ConnRef::new(self.handle.state.clone(), alive),
        )
    }
}

impl Connection for H2Connection {
    type Send = H2Send;
    type Recv = H2Recv;

    async fn open_bi(&self) -> Result<(H2Send, H2Recv), StreamError> {
        let state = &self.handle.state;
        self.unless_ended(async {
            match &self.handle.role {
                Role::Edge { requests, .. } => {
                    let mut requests =
                        requests.clone().ready().await.map_err(|e| state.lost(&e))?;
                    let (response, send) = requests
                        .send_request(RequestKind::Stream.request(), false)
                        .map_err(|e| state.lost(&e))?;
                    Ok(self.pair(send, Incoming::Head(response)))
                }
                Role::Connector { offers, .. } => loop {
                    let offer = offers.lock().await.recv().await;
                    let Some(Offer { body, mut respond }) = offer else {
                        return Err(self.gone());
                    };
                    match respond.send_response(wire::accepted(), false) {
                        Ok(send) => return Ok(self.pair(send, Incoming::Body(body))),
                        // The edge withdrew this offer (it reset it): take the next.
                        Err(error) => tracing::debug!(%error, "stale offer to open a stream"),
                    }
                },
            }
        })
        .await
    }

    async fn accept_bi(&self) -> Result<(H2Send, H2Recv), StreamError> {
        self.unless_ended(async {
            let next = match &self.handle.role {
                Role::Edge { reversed, .. } => reversed.lock().await.recv().await,
                Role::Connector { streams, .. } => streams.lock().await.recv().await,
            };
            let RawStream { send, recv } = next.ok_or_else(|| self.gone())?;
            Ok(self.pair(send, Incoming::Body(recv)))
        })
        .await
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.handle.state.request_close(CloseRecord {
            code,
            reason: reason.to_vec(),
        });
    }

    async fn closed(&self) -> StreamError {
        self.handle.state.ended().await
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), StreamError> {
        self.handle
            .io
            .export_keying_material(output, label, context)
            .map_err(|error| {
                StreamError::ConnectionLost(format!(
                    "TLS exporter refused {} bytes of keying material: {error}",
                    output.len()
                ))
            })
    }

    fn remote_address(&self) -> SocketAddr {
        self.handle.remote
    }

    fn stats(&self) -> Option<ConnectionStats> {
        let io = self.handle.io.counters();
        Some(ConnectionStats {
            rtt: self.handle.state.rtt(),
            // TCP's congestion state is the kernel's; HTTP/2 sees none of it.
            cwnd: 0,
            lost_packets: 0,
            sent_packets: io.writes(),
            rx_datagrams: io.reads(),
            tx_datagrams: io.writes(),
        })
    }
}

/// A connection whose handshake is complete and whose tasks are still to be started.
pub(crate) struct Started {
    connection: H2Connection,
    driver: Driver,
    /// The edge's task offering the connector to open streams.
    offers: Option<(h2::client::SendRequest<Bytes>, mpsc::Sender<RawStream>)>,
}

impl Started {
    /// Spawn the connection's tasks on `tasks` and hand the connection out.
    pub(crate) fn spawn(self, tasks: &TaskTracker) -> H2Connection {
        let handle = &self.connection.handle;
        let span = tracing::debug_span!(
            "h2_connection",
            id = self.connection.stable_id(),
            role = handle.role.name(),
            remote = %handle.remote,
        );
        if let Some((requests, queue)) = self.offers {
            let offers = offer_reverse(requests, queue, handle.state.clone());
            tasks.spawn(offers.instrument(span.clone()));
        }
        tasks.spawn(self.driver.run().instrument(span));
        self.connection
    }
}

/// The edge's side, on a TLS stream that negotiated ALPN h2: the HTTP/2 client handshake,
/// then the session request, answered by the connector. `shutdown` closes the connection
/// with `edge shutting down`.
pub(crate) async fn edge_handshake(
    tls: TlsStream<TcpStream>,
    remote: SocketAddr,
    config: &H2Config,
    shutdown: CancellationToken,
) -> Result<Started, String> {
    let io = SharedIo::new(tls);
    let (requests, mut conn) = config
        .client_builder()
        .handshake::<_, Bytes>(io.clone())
        .await
        .map_err(|e| describe(&e))?;
    let sent = Instant::now();
    let mut requests = requests.ready().await.map_err(|e| describe(&e))?;
    let (response, session_send) = requests
        .send_request(RequestKind::Session.request(), false)
        .map_err(|e| describe(&e))?;
    // Nothing moves unless the connection is driven while the answer comes.
    let response = tokio::select! {
        response = response => response.map_err(|e| describe(&e))?,
        ended = &mut conn => {
            return Err(match ended {
                Ok(()) => "the connector closed the connection during the handshake".into(),
                Err(error) => describe(&error),
            })
        }
    };
    if response.status() != http::StatusCode::OK {
        return Err(format!(
            "the connector answered the session request with HTTP status {}",
            response.status()
        ));
    }
    let state = Arc::new(ConnState::new(sent.elapsed()));
    let (queue, reversed) = mpsc::channel(REVERSE_BACKLOG);
    let handle = Handle {
        state: state.clone(),
        io: io.clone(),
        remote,
        role: Role::Edge {
            requests: requests.clone(),
            reversed: Mutex::new(reversed),
        },
    };
    let driver = Driver::new(
        state,
        &io,
        Session {
            send: session_send,
            recv: response.into_body(),
        },
        Wire::Client(conn),
        config,
        shutdown,
        b"edge shutting down",
    );
    Ok(Started {
        connection: H2Connection {
            handle: Arc::new(handle),
        },
        driver,
        offers: Some((requests, queue)),
    })
}

/// The connector's side, on a TLS stream that negotiated ALPN h2: the HTTP/2 server
/// handshake, then the edge's session request, answered. `rtt` is the TCP connect time.
/// `shutdown` closes the connection with `connector shutting down`.
pub(crate) async fn connector_handshake(
    tls: TlsStream<TcpStream>,
    remote: SocketAddr,
    rtt: Duration,
    config: &H2Config,
    shutdown: CancellationToken,
) -> Result<Started, String> {
    let io = SharedIo::new(tls);
    let mut conn = config
        .server_builder()
        .handshake::<_, Bytes>(io.clone())
        .await
        .map_err(|e| describe(&e))?;
    let (request, mut respond) = match conn.accept().await {
        Some(Ok(first)) => first,
        Some(Err(error)) => return Err(describe(&error)),
        None => return Err("the edge closed the connection during the handshake".into()),
    };
    if RequestKind::of(&request) != Some(RequestKind::Session) {
        respond.send_reset(h2::Reason::PROTOCOL_ERROR);
        return Err(format!(
            "the edge's first request ({} {}) is not a session request",
            request.method(),
            request.uri()
        ));
    }
    let session_send = respond
        .send_response(wire::accepted(), false)
        .map_err(|e| describe(&e))?;
    let state = Arc::new(ConnState::new(rtt));
    let (streams_tx, streams) = mpsc::unbounded_channel();
    let (offers_tx, offers) = mpsc::unbounded_channel();
    let handle = Handle {
        state: state.clone(),
        io: io.clone(),
        remote,
        role: Role::Connector {
            streams: Mutex::new(streams),
            offers: Mutex::new(offers),
        },
    };
    let driver = Driver::new(
        state,
        &io,
        Session {
            send: session_send,
            recv: request.into_body(),
        },
        Wire::Server {
            conn,
            streams: streams_tx,
            offers: offers_tx,
        },
        config,
        shutdown,
        b"connector shutting down",
    );
    Ok(Started {
        connection: H2Connection {
            handle: Arc::new(handle),
        },
        driver,
        offers: None,
    })
}
