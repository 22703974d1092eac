//! `mode = "tcp"` bindings: a local port that forwards every accepted connection into one
//! private TCP service, through a live connector of the service's tunnel.
//!
//! There is no protocol on the client side, so there is nowhere to put a `Proxy-Status`: when
//! the stream cannot be opened (no connector online, the connector refused or could not dial)
//! the reason is logged and the client connection is reset (RST), so a client sees an error
//! rather than a clean, empty end of stream.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span};
use underpass_mux::abort_socket;
use underpass_proto::Origin;
use underpass_transport::Connection;

use super::context::{accept_loop, open_error_status, open_tcp_within, FrontContext, Slot};
use super::splice::pipe_socket;
use crate::model::BindingTarget;

/// Serve the `mode = "tcp"` binding `name` on `listener` until stopping begins: one tracked
/// task per accepted connection, at most `limit` at once.
pub(super) async fn serve<C: Connection>(
    listener: TcpListener,
    name: Arc<str>,
    limit: usize,
    context: Arc<FrontContext<C>>,
) {
    let shutdown = context.shutdown.clone();
    accept_loop(&listener, &name, limit, &shutdown, |stream, peer, slot| {
        let span = info_span!("forward", binding = %name, %peer);
        let task = forward(stream, name.clone(), context.clone(), slot);
        shutdown.spawn_in(span, task);
    })
    .await;
    debug!(binding = %name, "tcp binding listener stopped");
}

/// One client connection: open a stream to the service and pipe both ways.
async fn forward<C: Connection>(
    stream: TcpStream,
    binding: Arc<str>,
    context: Arc<FrontContext<C>>,
    _slot: Slot,
) {
    let _ = stream.set_nodelay(true);
    let binding = match context.binding(&binding) {
        Ok(binding) => binding,
        Err(details) => {
            info!(%details, "refused: destination_unavailable");
            abort_socket(stream);
            return;
        }
    };
    // Validated with the directory: a tcp binding serves a tcp service.
    let origin = match &binding.target {
        BindingTarget::Service(service) if service.is_tcp() => {
            Origin::Service(service.service_ref())
        }
        _ => {
            info!("refused: a tcp binding needs a tcp service");
            abort_socket(stream);
            return;
        }
    };
    let (_tunnel, picked) = match context.pick(&binding) {
        Ok(pair) => pair,
        Err(details) => {
            info!(%details, "refused: destination_unavailable");
            abort_socket(stream);
            return;
        }
    };
    let limit = context.connect_timeout;
    match open_tcp_within(&picked.conn, origin, limit).await {
        Ok((send, recv)) => pipe_socket(stream, None, send, recv, &context.shutdown).await,
        Err(error) => {
            let (status, details) = open_error_status(error, limit);
            info!(status = status.token(), %details, "refused");
            abort_socket(stream);
        }
    }
}
