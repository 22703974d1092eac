//! A `connect()` stream: find the target (the stream's, or a TCP service's host and
//! `tcp_port`), dial it through the [`Dialer`](crate::dial::Dialer), answer, then pipe bytes
//! both ways with true half-close.

use tracing::{debug, Span};
use underpass_mux::{pipe_tcp, IncomingStream};
use underpass_proto::{DialTarget, Origin, ProxyErrorReply, ProxyStatus, StreamReply, TcpConnect};
use underpass_transport::{Connection, SendStream};

use super::context::{refuse, service_policy, StreamSettings};
use crate::outcome::StreamEnd;
use crate::policy::{Policies, ServiceOrigin};

/// Dial, answer, pipe.
pub(super) async fn serve<C: Connection>(
    mut incoming: IncomingStream<C>,
    connect: TcpConnect,
    settings: &StreamSettings,
    policies: &Policies,
) -> StreamEnd {
    let target = match connect.origin {
        Origin::Dial(target) => Ok(target),
        Origin::Service(service) => {
            let limit = settings.header_timeout;
            let target = match service_policy(&mut incoming.send, policies, service, limit).await {
                Ok(service) => service_target(&service),
                Err(Some(refusal)) => Err(refusal),
                Err(None) => return StreamEnd::cancelled("the edge abandoned the stream"),
            };
            // The stream's span names a dial target's destination from the start; a
            // service's is known now.
            match &target {
                Ok(target) => Span::current().record("dest", tracing::field::display(target)),
                Err(_) => Span::current().record(
                    "dest",
                    tracing::field::display(format_args!("service:{}", hex::encode(service.id.0))),
                ),
            };
            target
        }
    };
    let target = match target {
        Ok(target) => target,
        Err(refusal) => return refuse(incoming, refusal).await,
    };
    // If the edge gives up on the stream (its client went away) the dial is abandoned.
    let dialed = tokio::select! {
        dialed = settings.dialer.dial(&target) => dialed,
        _ = incoming.send.stopped() => {
            return StreamEnd::cancelled("the edge abandoned the stream while it was dialing");
        }
    };
    let socket = match dialed {
        Ok(socket) => socket,
        Err(refusal) => return refuse(incoming, refusal).await,
    };
    let origin = socket.peer_addr().ok();
    if let Err(error) = incoming.reply(&StreamReply::TcpAccepted).await {
        return StreamEnd::cancelled(format!(
            "the edge went away before the connect was accepted: {error}"
        ));
    }
    debug!(origin = ?origin, "connected; piping");
    let (send, recv) = incoming.into_parts();
    StreamEnd::from_pipe(pipe_tcp(socket, None, send, recv).await)
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
