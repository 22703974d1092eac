//! A `connect()` stream: find the target (the stream's, or a TCP service's host and
//! `tcp_port`), dial it through the [`Dialer`](crate::dial::Dialer), answer, then pipe bytes
//! both ways with true half-close.

use tracing::{debug, info, Span};
use underpass_mux::{pipe_tcp, IncomingStream};
use underpass_proto::{DialTarget, Origin, ProxyErrorReply, ProxyStatus, StreamReply, TcpConnect};
use underpass_transport::{Connection, SendStream};

use super::context::{refuse, service_policy, StreamContext};
use crate::policy::{Policies, ServiceOrigin};

/// Dial, answer, pipe.
pub(super) async fn serve<C: Connection>(
    mut incoming: IncomingStream<C>,
    connect: TcpConnect,
    context: &StreamContext,
    policies: &Policies,
) {
    let target = match connect.origin {
        Origin::Dial(target) => Ok(target),
        Origin::Service(service) => {
            match service_policy(&mut incoming.send, policies, service, context).await {
                Ok(service) => service_target(&service),
                Err(Some(refusal)) => Err(refusal),
                Err(None) => return,
            }
        }
    };
    let target = match target {
        Ok(target) => target,
        Err(ProxyErrorReply { status, details }) => {
            info!(%status, %details, "connect refused");
            return refuse(incoming, status, details).await;
        }
    };
    Span::current().record("dest", tracing::field::display(&target));
    // If the edge gives up on the stream (its client went away) the dial is abandoned.
    let dialed = tokio::select! {
        dialed = context.dialer.dial(&target) => dialed,
        _ = incoming.send.stopped() => {
            debug!("edge abandoned the stream while dialing");
            return;
        }
    };
    let socket = match dialed {
        Ok(socket) => socket,
        Err(ProxyErrorReply { status, details }) => {
            info!(%status, %details, "connect refused");
            return refuse(incoming, status, details).await;
        }
    };
    let origin = socket.peer_addr().ok();
    if let Err(error) = incoming.reply(&StreamReply::TcpAccepted).await {
        debug!(%error, "edge went away before the connect was accepted");
        return;
    }
    debug!(origin = ?origin, "connected; piping");
    let (send, recv) = incoming.into_parts();
    // pipe_tcp logs what went through and how it ended.
    pipe_tcp(socket, None, send, recv).await;
}

/// A TCP service's host and `tcp_port`. An HTTP service has none: `connect()` to it is
/// refused with `http_request_denied`, as the edge refuses it on its side.
fn service_target(service: &ServiceOrigin) -> Result<DialTarget, ProxyErrorReply> {
    service
        .policy()
        .tcp_target()
        .ok_or_else(|| ProxyErrorReply {
            status: ProxyStatus::HttpRequestDenied,
            details: format!(
                "service {:?} is an HTTP service: connect() is not allowed",
                service.name()
            ),
        })
}
