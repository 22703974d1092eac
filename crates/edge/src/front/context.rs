//! What every binding of an edge shares, the accept loop, and opening a stream on a picked
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};
use underpass_mux::{open_tcp, Buffered, MuxError, OpenError};
use underpass_proto::{Origin, ProxyStatus, TcpConnect};
use underpass_rt::Shutdown;
use underpass_transport::{Connection, StreamError};

use crate::model::{Binding, Directory, Tunnel};
use crate::registry::{Picked, Registry};
use crate::tunnels::TunnelStore;

/// Pause after a failed `accept` (out of file descriptors, ...) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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
    /// Stopping and the tasks to wait for.
    pub shutdown: Shutdown,
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

    /// The binding's tunnel and a live connection of it, or why there is none (the details of
    /// a `destination_unavailable`).
    pub(crate) fn pick(&self, binding: &Binding) -> Result<(Tunnel, Picked<C>), String> {
        let reference = binding.target.tunnel();
        let Some(tunnel) = self.tunnels.resolve(reference.as_str()) else {
            warn!(tunnel = %reference, "binding refers to a tunnel that does not exist");
            return Err(format!("tunnel {reference} does not exist on this edge"));
        };
        let Some(picked) = self.registry.pick(&tunnel.id) else {
            info!(tunnel = %tunnel.name, "no connector online");
            return Err(format!("no connector online for tunnel {}", tunnel.name));
        };
        Ok((tunnel, picked))
    }
}

/// One accepted client connection's place under its binding's `max_connections`: released
/// when the last holder (the client task, a pipe spliced from it) is gone.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// Accept on `listener` until stopping begins, handing every connection to `serve` with its
/// slot. At `limit` connections the loop stops accepting (the kernel queues new ones) until
/// one ends. A failed accept (out of file descriptors, ...) is logged and retried after a
/// pause.
pub(crate) async fn accept_loop(
    listener: &TcpListener,
    binding: &str,
    limit: usize,
    shutdown: &Shutdown,
    mut serve: impl FnMut(TcpStream, SocketAddr, Slot),
) {
    let slots = Arc::new(Semaphore::new(limit));
    let mut stopping = std::pin::pin!(shutdown.stopping());
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                warn!(
                    binding,
                    limit, "connection limit reached; accepting again when one ends"
                );
                tokio::select! {
                    () = &mut stopping => return,
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        // The semaphore is never closed.
                        Err(_) => return,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            () = &mut stopping => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => serve(
                stream,
                peer,
                Slot {
                    _permit: Arc::new(permit),
                },
            ),
            Err(error) => {
                warn!(binding, %error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Open a TCP stream to `origin` on `conn`, connector's answer included, within `limit`.
/// `open_tcp` bounds the wait for the reply; the outer bound also covers waiting for stream
/// credit. A stream abandoned part way is reset when dropped.
pub(crate) async fn open_tcp_within<C: Connection>(
    conn: &C,
    origin: Origin,
    limit: Duration,
) -> Result<(C::Send, Buffered<C::Recv>), OpenError> {
    tokio::time::timeout(limit, open_tcp(conn, TcpConnect { origin }, limit))
        .await
        .unwrap_or(Err(OpenError::Mux(MuxError::Timeout(limit))))
}

/// The Proxy-Status code and details for a stream that did not open.
pub(crate) fn open_error_status(error: OpenError, limit: Duration) -> (ProxyStatus, String) {
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
/// A frame this edge cannot encode is its own fault: `proxy_internal_error`.
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
            ProxyStatus::DestinationUnavailable,
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
        StreamError::ConnectionLost(_) => "connection to the connector lost".into(),
        other => other.to_string(),
    }
}
