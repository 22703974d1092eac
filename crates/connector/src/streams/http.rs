//! A `fetch()` stream: find the destination (a VPC Network's target, or a VPC Service's
//! policy) and hand the exchange to the pooled [`OriginClient`](crate::origin::OriginClient).

use tracing::{debug, info, Span};
use underpass_mux::IncomingStream;
use underpass_proto::{HttpRequestHead, Origin, ProxyErrorReply, ProxyStatus};
use underpass_transport::Connection;

use super::context::{refuse, service_policy, StreamContext};
use crate::origin::Destination;
use crate::policy::Policies;

/// Serve one HTTP exchange.
pub(super) async fn serve<C: Connection>(
    mut incoming: IncomingStream<C>,
    head: HttpRequestHead,
    context: &StreamContext,
    policies: &Policies,
) {
    Span::current().record("dest", head.authority.as_str());
    debug!(method = %head.method, path = %head.path, "HTTP exchange");
    let destination = match &head.origin {
        Origin::Dial(target) => Destination::Network(target.clone()),
        Origin::Service(service) => {
            match service_policy(&mut incoming.send, policies, *service, context).await {
                // A TCP service has no HTTP port: refused as the edge refuses it on its side.
                Ok(service) if service.is_tcp() => {
                    let details = format!(
                        "service {:?} is a TCP service: fetch() is not allowed",
                        service.name()
                    );
                    info!(%details, "fetch refused");
                    return refuse(incoming, ProxyStatus::HttpRequestDenied, details).await;
                }
                Ok(service) => Destination::Service(service),
                Err(Some(ProxyErrorReply { status, details })) => {
                    info!(%status, %details, "fetch refused");
                    return refuse(incoming, status, details).await;
                }
                Err(None) => return,
            }
        }
    };
    let (send, body) = incoming.into_parts();
    context
        .origin
        .serve(&context.dialer, head, destination, send, body)
        .await;
}
