//! Plain TCP bindings (`mode = "tcp"`): a local port that forwards every accepted connection
//! into one private TCP service, through a live connector of the service's tunnel.
//!
//! There is no protocol on the client side, so there is nowhere to put a `Proxy-Status`: when
//! the stream cannot be opened (no connector online, the connector refused or could not dial)
//! the reason is logged and the client connection is reset (RST), so a client sees an error
//! rather than a clean, empty end of stream.

use std::future::Future;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, warn, Instrument};
use underpass_mux::pipe_tcp;
use underpass_proto::DialTarget;
use underpass_transport::Connection;

use crate::directory::{Binding, BindingTarget};
use crate::front::{accept_until, open_error_status, open_tcp_within, pick, FrontContext};

/// Serve a `mode = "tcp"` binding on `listener` until `shutdown` resolves: one task per
/// accepted connection. On shutdown the listener closes; forwarded connections keep running
/// until either side ends them.
pub async fn serve_tcp_binding<C: Connection>(
    listener: TcpListener,
    binding: Arc<Binding>,
    context: Arc<FrontContext<C>>,
    shutdown: impl Future<Output = ()>,
) {
    // Validated with the directory: a tcp binding serves a tcp service.
    let target = match &binding.target {
        BindingTarget::Service(service) => service.tcp_target(),
        BindingTarget::Network(_) => None,
    };
    let Some(target) = target else {
        warn!(binding = %binding.name, "a tcp binding needs a tcp service; not serving");
        return;
    };
    accept_until(&listener, &binding.name, shutdown, |stream, peer| {
        let span = info_span!("forward", binding = %binding.name, %peer);
        tokio::spawn(
            forward(stream, target.clone(), binding.clone(), context.clone()).instrument(span),
        );
    })
    .await;
    debug!(binding = %binding.name, "tcp binding listener stopped");
}

/// One client connection: open a stream to the service and pipe both ways.
async fn forward<C: Connection>(
    stream: TcpStream,
    target: DialTarget,
    binding: Arc<Binding>,
    context: Arc<FrontContext<C>>,
) {
    let _ = stream.set_nodelay(true);
    let (_tunnel, picked) = match pick(&binding, &context) {
        Ok(pair) => pair,
        Err(details) => {
            info!(%details, "refused: destination_unavailable");
            reset(stream);
            return;
        }
    };
    let limit = context.connect_timeout;
    match open_tcp_within(&picked.conn, target, limit).await {
        Ok((send, recv)) => {
            // pipe_tcp logs what went through and how it ended.
            pipe_tcp(stream, None, send, recv).await;
        }
        Err(error) => {
            let (status, details) = open_error_status(error, limit);
            info!(status = status.token(), %details, "refused");
            reset(stream);
        }
    }
    drop(picked.lease);
}

/// Close `stream` with a reset rather than a clean end of stream.
fn reset(stream: TcpStream) {
    if let Err(error) = stream.set_zero_linger() {
        debug!(%error, "cannot set SO_LINGER; closing normally");
    }
    drop(stream);
}
