//! What every binding of an edge shares, placing a stream on a connection and opening it
//! there, with one retry when that connection is lost before the connector answered.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn, Span};
use underpass_mux::{open_tcp, Buffered, MuxError, OpenError};
use underpass_proto::{Host, Origin, ProxyStatus, TcpConnect};
use underpass_rt::Shutdown;
use underpass_transport::{Connection, StreamError};

use super::accept::ClientConnections;
pub(crate) use super::accept::{accept_loop, ClientProtocol, Listening, Slot};
use super::request::{Failure, RequestLog};
use crate::config::Unmatched;
use crate::model::{Binding, Directory, Tunnel, TunnelRef};
use crate::registry::{Destination, Leased, LeasedRecv, LeasedSend, NoPick, Picked, Registry};
use crate::tunnels::TunnelStore;

/// What every binding of an edge shares.
pub(crate) struct FrontContext<C> {
    /// Live connector connections.
    pub registry: Arc<Registry<C>>,
    /// Tunnels, to resolve a binding's tunnel reference.
    pub tunnels: Arc<TunnelStore>,
    /// The current directory: bindings, networks, services.
    pub directory: watch::Receiver<Arc<Directory>>,
    /// How long a connector may take to answer a stream (dial included).
    pub connect_timeout: Duration,
    /// How long a request body may go without a byte (`timeouts.body_idle_ms`).
    pub body_idle: Duration,
    /// How long a client may take to send a request head (`timeouts.header_read_ms`).
    pub header_read: Duration,
    /// Every binding's client connections (`limits.max_client_connections`).
    pub clients: Arc<ClientConnections>,
    /// Stopping and the tasks to wait for.
    pub shutdown: Shutdown,
    /// Request counters and timings (`crate::metrics`).
    pub metrics: Arc<crate::metrics::EdgeMetrics>,
}

impl<C: Connection> FrontContext<C> {
    /// The binding called `name` in the current directory, or why it is not there.
    pub(crate) fn binding(&self, name: &str) -> Result<Arc<Binding>, String> {
        let directory = self.directory.borrow();
        directory
            .binding(name)
            .cloned()
            .ok_or_else(|| format!("binding {name} is no longer in the directory"))
    }

    /// The binding's tunnel and the connection a new stream to `destination` goes on (see
    /// [`Registry::pick`]), never one of `exclude`; or why there is none.
    pub(crate) fn pick(
        &self,
        binding: &Binding,
        destination: &Destination,
        exclude: &[u64],
    ) -> Result<(Tunnel, Picked<C>), Failure> {
        let reference = match binding.target.tunnels() {
            [one] => one,
            spanned => return self.pick_spanning(spanned, destination, exclude),
        };
        let Some(tunnel) = self.tunnels.resolve(reference.as_str()) else {
            warn!(tunnel = %reference, "binding refers to a tunnel that does not exist");
            return Err(Failure::new(
                ProxyStatus::DestinationUnavailable,
                format!("tunnel {reference} does not exist on this edge"),
            ));
        };
        match self
            .registry
            .pick(&tunnel.id, destination, exclude, self.registry.unmatched())
        {
            Ok(picked) => {
                if !picked.matched {
                    debug!(
                        %destination,
                        connection = picked.connection_id,
                        "no connector announces a route for the destination; routing.unmatched \
                         = \"any\" sends it to a connector anyway"
                    );
                }
                Ok((tunnel, picked))
            }
            Err(NoPick::NoConnection) => Err(Failure::new(
                ProxyStatus::DestinationUnavailable,
                format!("no connector online for tunnel {}", tunnel.name),
            )),
            Err(NoPick::NoRoute { announced }) => Err(Failure {
                status: unrouted_status(&destination.host),
                details: format!(
                    "no connector of tunnel {} announces a route for {destination}",
                    tunnel.name
                ),
                note: Some(format!("connectors announce: {announced}")),
            }),
        }
    }

    /// For a network spanning several tunnels: the tunnel whose connectors announce the most
    /// specific route for `destination` (ties: the first), then its connection as for one
    /// tunnel. None announcing one: refused with `destination_ip_unroutable` or
    /// `destination_not_found`.
    fn pick_spanning(
        &self,
        spanned: &[TunnelRef],
        destination: &Destination,
        exclude: &[u64],
    ) -> Result<(Tunnel, Picked<C>), Failure> {
        let mut best: Option<(u32, Tunnel)> = None;
        for reference in spanned {
            let Some(tunnel) = self.tunnels.resolve(reference.as_str()) else {
                continue;
            };
            if let Some(score) = self.registry.best_route(&tunnel.id, destination) {
                if best.as_ref().is_none_or(|(top, _)| score > *top) {
                    best = Some((score, tunnel));
                }
            }
        }
        let Some((_, tunnel)) = best else {
            let status = match destination.host {
                Host::Ip(_) => ProxyStatus::DestinationIpUnroutable,
                Host::Name(_) => ProxyStatus::DestinationNotFound,
            };
            return Err(Failure::new(
                status,
                format!(
                    "no connector of the network's {} tunnel(s) announces a route for \
                     {destination}",
                    spanned.len()
                ),
            ));
        };
        // Only connections that announce a route: a spanning network never falls back.
        match self
            .registry
            .pick(&tunnel.id, destination, exclude, Unmatched::Refuse)
        {
            Ok(picked) => Ok((tunnel, picked)),
            Err(NoPick::NoConnection | NoPick::NoRoute { .. }) => Err(Failure::new(
                ProxyStatus::DestinationUnavailable,
                format!("no connector online for tunnel {}", tunnel.name),
            )),
        }
    }

    /// Open a TCP stream for `origin` (to `destination`) through a connection of the binding's
    /// tunnel and wait for the connector's answer (up to `connect_timeout`). A connection lost
    /// before the connector answered is retried once on another connection: no client byte
    /// has been read yet, so nothing is lost. Records the connection in the current span's
    /// `connection` field.
    pub(crate) async fn open_tcp_stream(
        &self,
        binding: &Binding,
        destination: &Destination,
        origin: Origin,
        log: &RequestLog,
    ) -> Result<OpenedTcp<C>, Failure> {
        let limit = self.connect_timeout;
        let mut lost: Option<(u64, Failure)> = None;
        loop {
            let exclude: Vec<u64> = lost.iter().map(|(id, _)| *id).collect();
            let picked = match self.pick(binding, destination, &exclude) {
                Ok((_tunnel, picked)) => picked,
                Err(failure) => return Err(retry_failed(lost, failure)),
            };
            Span::current().record("connection", picked.connection_id);
            debug!(origin = ?origin, connection = picked.connection_id, "opening TCP stream");
            let connect = TcpConnect {
                origin: origin.clone(),
                request_id: log.id,
            };
            match open_tcp_within(&picked.conn, connect, limit).await {
                Ok((send, recv)) => {
                    return Ok(OpenedTcp {
                        send,
                        recv,
                        conn: picked.conn,
                    })
                }
                Err(OpenError::Mux(error)) if lost.is_none() && is_connection_lost(&error) => {
                    debug!(
                        connection = picked.connection_id,
                        %error,
                        "connection lost before the connector answered; retrying once on another \
                         connection"
                    );
                    let (status, details) = mux_error_status(error, limit);
                    lost = Some((picked.connection_id, Failure::new(status, details)));
                }
                Err(error) => {
                    let (status, details) = open_error_status(error, limit);
                    return Err(Failure::new(status, details));
                }
            }
        }
    }
}

/// A TCP stream the connector accepted.
pub(crate) struct OpenedTcp<C: Connection> {
    /// Client bytes go here.
    pub send: LeasedSend<C::Send>,
    /// Origin bytes come from here.
    pub recv: Buffered<LeasedRecv<C::Recv>>,
    /// The connection it is on (to tell a lost connection from other failures).
    pub conn: Leased<C>,
}

/// The Proxy-Status code for a destination no connector announced a route for: the codes the
/// connector itself answers an unrouted destination with, so a client sees the same code
/// whichever side refused (`destination_ip_prohibited` for an IP, `destination_not_found`
/// for a name).
fn unrouted_status(host: &Host) -> ProxyStatus {
    match host {
        Host::Ip(_) => ProxyStatus::DestinationIpProhibited,
        Host::Name(_) => ProxyStatus::DestinationNotFound,
    }
}

/// A retry found no connection: report the first failure (the lost connection), saying why
/// it was not retried. Without a first failure, `failure` itself.
pub(crate) fn retry_failed(lost: Option<(u64, Failure)>, failure: Failure) -> Failure {
    match lost {
        Some((_, mut first)) => {
            first.details = format!("{}; not retried: {}", first.details, failure.details);
            first
        }
        None => failure,
    }
}

/// Whether a stream failed because its whole connection is gone.
pub(crate) fn is_connection_lost(error: &MuxError) -> bool {
    matches!(error, MuxError::Stream(StreamError::ConnectionLost(_)))
}

/// Whether `conn` is closed (lost or closed by either side), without waiting.
pub(crate) fn is_closed<C: Connection>(conn: &C) -> bool {
    let closed = pin!(conn.closed());
    matches!(
        closed.poll(&mut Context::from_waker(Waker::noop())),
        Poll::Ready(_)
    )
}

/// Open a TCP stream on `conn`, connector's answer included, within `limit`. `open_tcp`
/// bounds the wait for the reply; the outer bound also covers waiting for stream credit. A
/// stream abandoned part way is reset when dropped.
async fn open_tcp_within<C: Connection>(
    conn: &C,
    connect: TcpConnect,
    limit: Duration,
) -> Result<(C::Send, Buffered<C::Recv>), OpenError> {
    tokio::time::timeout(limit, open_tcp(conn, connect, limit))
        .await
        .unwrap_or(Err(OpenError::Mux(MuxError::Timeout(limit))))
}

/// The Proxy-Status code and details for a stream that did not open.
fn open_error_status(error: OpenError, limit: Duration) -> (ProxyStatus, String) {
    match error {
        OpenError::Refused(reply) => (reply.status, reply.details),
        OpenError::Mux(error) => mux_error_status(error, limit),
        OpenError::UnexpectedReply => (
            ProxyStatus::ProxyInternalError,
            "the connector sent a reply that does not fit a TCP stream".into(),
        ),
    }
}

/// The Proxy-Status code and details for a stream that failed before the connector answered.
/// A stream cut before the answer (its connection lost, or reset) is `connection_terminated`;
/// a frame this edge cannot encode is its own fault: `proxy_internal_error`.
pub(crate) fn mux_error_status(error: MuxError, limit: Duration) -> (ProxyStatus, String) {
    match error {
        MuxError::Timeout(_) => (
            ProxyStatus::ConnectionTimeout,
            format!(
                "the connector did not answer within {} ms",
                limit.as_millis()
            ),
        ),
        MuxError::Stream(error) => (
            ProxyStatus::ConnectionTerminated,
            format!(
                "the stream to the connector failed: {}",
                stream_error_text(&error)
            ),
        ),
        MuxError::UnexpectedEof => (
            ProxyStatus::DestinationUnavailable,
            "the connector closed the stream without answering".into(),
        ),
        error @ MuxError::Encode(_) => (
            ProxyStatus::ProxyInternalError,
            format!("the edge cannot send this request: {error}"),
        ),
        error @ MuxError::Decode(_) => (
            ProxyStatus::ProxyInternalError,
            format!("tunnel protocol error: {error}"),
        ),
    }
}

fn stream_error_text(error: &StreamError) -> String {
    match error {
        // The connection-loss reason can be long and technical; keep the header short.
        StreamError::ConnectionLost(_) => {
            "the connection to the connector was lost before it answered".into()
        }
        other => other.to_string(),
    }
}
