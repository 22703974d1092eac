//! `mode = "tcp"` bindings: a local port that forwards every accepted connection into one
//! private TCP service, through a live connector of the service's tunnel.
//!
//! There is no protocol on the client side, so there is nowhere to put a `Proxy-Status`: when
//! the stream cannot be opened (no connector online, the connector refused or could not dial)
//! the reason is logged and the client connection is reset (RST), so a client sees an error
//! rather than a clean, empty end of stream.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info_span, Instrument};
use underpass_mux::abort_socket;
use underpass_proto::{Origin, ProxyStatus, Scheme};
use underpass_transport::Connection;

use super::context::{accept_loop, is_closed, ClientProtocol, FrontContext, Listening, Slot};
use super::request::{Failure, RequestLog};
use super::splice::pipe_socket;
use crate::model::BindingTarget;
use crate::registry::Destination;

/// Serve the `mode = "tcp"` binding `name` on `listener` until stopping begins: one tracked
/// task per accepted connection, at most `limit` at once (and within the edge-wide limit).
pub(super) async fn serve<C: Connection>(
    listener: TcpListener,
    name: Arc<str>,
    limit: usize,
    context: Arc<FrontContext<C>>,
) {
    let shutdown = context.shutdown.clone();
    let listening = Listening {
        listener: &listener,
        binding: &name,
        limit,
        protocol: ClientProtocol::Tcp,
        clients: &context.clients,
        shutdown: &shutdown,
    };
    accept_loop(listening, |stream, peer, slot| {
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
    name: Arc<str>,
    context: Arc<FrontContext<C>>,
    _slot: Slot,
) {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let mut log = RequestLog::new(name.clone(), format!("binding {name}"));
    let span = info_span!("tcp", request_id = %log.id, connection = tracing::field::Empty);
    async move {
        let binding = match context.binding(&name) {
            Ok(binding) => binding,
            Err(details) => {
                log.failed(&Failure::new(ProxyStatus::DestinationUnavailable, details));
                abort_socket(stream);
                return;
            }
        };
        // Validated with the directory: a tcp binding serves a tcp service.
        let (origin, destination) = match &binding.target {
            BindingTarget::Service(service) if service.is_tcp() => {
                let destination = Destination {
                    host: service.host.clone(),
                    port: service.port(Scheme::Http).unwrap_or(0),
                };
                (Origin::Service(service.service_ref()), destination)
            }
            _ => {
                let failure = Failure::new(
                    ProxyStatus::ProxyInternalError,
                    "a tcp binding needs a tcp service",
                );
                log.failed(&failure);
                abort_socket(stream);
                return;
            }
        };
        log.set_destination(destination.to_string());
        let opened = context
            .open_tcp_stream(&binding, &destination, origin, &log)
            .await;
        let outcome = opened.as_ref().map(drop).map_err(|failure| failure.status);
        context.metrics.tcp_outcome(&name, started, outcome);
        match opened {
            Ok(opened) => {
                let shutdown = &context.shutdown;
                let stats = pipe_socket(stream, None, opened.send, opened.recv, shutdown).await;
                log.pipe_ended(&stats, is_closed(&opened.conn), shutdown.is_forced());
            }
            Err(failure) => {
                // No protocol to carry a Proxy-Status: the log says why, the client sees a
                // reset rather than a clean, empty end.
                log.failed(&failure);
                abort_socket(stream);
            }
        }
    }
    .instrument(span)
    .await
}
