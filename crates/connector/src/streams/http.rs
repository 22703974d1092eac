//! A `fetch()` stream: find the destination (a VPC Network's target, or a VPC Service's
//! policy) and hand the exchange to the pooled [`OriginClient`](crate::origin::OriginClient).

use tracing::debug;
use underpass_mux::IncomingStream;
use underpass_proto::{HttpRequestHead, Origin, ProxyErrorReply, ProxyStatus};
use underpass_transport::Connection;

use super::context::{refuse, service_policy, StreamContext, StreamSettings};
use crate::origin::Destination;
use crate::outcome::StreamEnd;
use crate::policy::Policies;

/// Serve one HTTP exchange.
pub(super) async fn serve<C: Connection>(
    mut incoming: IncomingStream<C>,
    head: HttpRequestHead,
    context: &StreamContext,
    settings: &StreamSettings,
    policies: &Policies,
) -> StreamEnd {
    debug!(method = %head.method, path = %head.path, "HTTP exchange");
    let destination = match &head.origin {
        Origin::Dial(target) => Destination::Network(target.clone()),
        Origin::Service(service) => {
            let limit = settings.header_timeout;
            match service_policy(&mut incoming.send, policies, *service, limit).await {
                // A TCP service has no HTTP port: refused as the edge refuses it on its side.
                Ok(service) if service.is_tcp() => {
                    let details = format!(
                        "service {:?} is a TCP service: fetch() is not allowed",
                        service.name()
                    );
                    let refusal = ProxyErrorReply {
                        status: ProxyStatus::HttpRequestDenied,
                        details,
                    };
                    return refuse(incoming, refusal).await;
                }
                Ok(service) => Destination::Service(service),
                Err(Some(refusal)) => return refuse(incoming, refusal).await,
                Err(None) => return StreamEnd::cancelled("the edge abandoned the stream"),
            }
        }
    };
    let (send, body) = incoming.into_parts();
    context
        .origin
        .serve(&settings.dialer, head, destination, send, body)
        .await
}
