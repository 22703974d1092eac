//! One data stream opened by the edge: read its header, enforce the stream limit, dispatch.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn, Span};
use underpass_mux::{pipe_tcp, write_frame, IncomingStream, MuxError};
use underpass_proto::{
    ProxyErrorReply, ProxyStatus, StreamHeader, StreamReply, TcpConnect, RESET_CANCELLED,
    RESET_PROTOCOL,
};
use underpass_transport::{Connection, SendStream};

use crate::dial::Dialer;
use crate::session::StreamPermit;

/// What every stream of every connection shares.
pub(crate) struct StreamContext {
    /// Route check, resolution, dialing.
    pub dialer: Arc<Dialer>,
    /// How long the edge has to send the header.
    pub header_timeout: Duration,
    /// The per-connection stream limit (for messages).
    pub max_streams: usize,
    /// The pooled HTTP client towards origins.
    pub origin: crate::origin::OriginClient,
}

/// Serve one stream to its end. `permit` is `None` when the connection is at its limit.
pub(crate) async fn handle<C: Connection>(
    mut incoming: IncomingStream<C>,
    ctx: Arc<StreamContext>,
    permit: Option<StreamPermit>,
) {
    let Some(_permit) = permit else {
        let details = format!(
            "{} streams already open on this connection",
            ctx.max_streams
        );
        info!(%details, "stream refused: limit reached");
        refuse(incoming, ProxyStatus::ConnectionLimitReached, details).await;
        return;
    };
    let header = match incoming.header(ctx.header_timeout).await {
        Ok(header) => header,
        Err(MuxError::Stream(error)) => {
            debug!(%error, "stream ended before its header");
            return;
        }
        Err(error) => {
            // A bad, oversized or missing header: the edge broke the protocol on this stream.
            warn!(%error, "bad stream header; resetting the stream");
            incoming.send.reset(RESET_PROTOCOL);
            incoming.reader.stop(RESET_PROTOCOL);
            return;
        }
    };
    match header {
        StreamHeader::Tcp(connect) => tcp(incoming, connect, &ctx).await,
        // Boxed so that a task spawned per stream stays small (a few KiB, not 12) to allocate
        // and move: the HTTP exchange future is the largest by far.
        StreamHeader::Http(head) => Box::pin(crate::http::handle(incoming, head, &ctx)).await,
    }
}

/// A `connect()`: dial, answer, pipe.
async fn tcp<C: Connection>(
    mut incoming: IncomingStream<C>,
    connect: TcpConnect,
    ctx: &StreamContext,
) {
    let target = connect.target;
    Span::current().record("dest", tracing::field::display(&target));
    // If the edge gives up on the stream (its client went away) the dial is abandoned.
    let dialed = tokio::select! {
        dialed = ctx.dialer.dial(&target) => dialed,
        _ = incoming.send.stopped() => {
            debug!("edge abandoned the stream while dialing");
            return;
        }
    };
    let socket = match dialed {
        Ok(socket) => socket,
        Err(ProxyErrorReply { status, details }) => {
            info!(%status, %details, "connect refused");
            refuse(incoming, status, details).await;
            return;
        }
    };
    let origin = socket.peer_addr().ok();
    if let Err(error) = incoming.reply(&StreamReply::TcpAccepted).await {
        debug!(%error, "edge went away before the connect was accepted");
        return;
    }
    debug!(origin = ?origin, "connected; piping");
    let (send, recv) = incoming.into_parts();
    let stats = pipe_tcp(socket, None, send, recv).await;
    debug!(
        up = stats.socket_to_stream,
        down = stats.stream_to_socket,
        outcome = ?stats.outcome,
        "stream done"
    );
}

/// Answer with a Proxy-Status error, finish our side, and stop reading the edge's side.
pub(crate) async fn refuse<C: Connection>(
    mut incoming: IncomingStream<C>,
    status: ProxyStatus,
    details: String,
) {
    let reply = StreamReply::Error(ProxyErrorReply { status, details });
    if let Err(error) = write_frame(&mut incoming.send, &reply).await {
        debug!(%error, "could not send the refusal");
        return;
    }
    // Already reset by the peer: nothing more to finish.
    let _ = incoming.send.finish();
    incoming.reader.stop(RESET_CANCELLED);
}
