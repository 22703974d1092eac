//! HTTP exchanges (`fetch()`): the dispatch point for [`StreamHeader::Http`] streams, served
//! by the pooled [`OriginClient`](crate::origin::OriginClient).
//!
//! [`StreamHeader::Http`]: underpass_proto::StreamHeader::Http

use tracing::{debug, Span};
use underpass_mux::IncomingStream;
use underpass_proto::HttpRequestHead;
use underpass_transport::Connection;

use crate::stream::StreamContext;

/// Serve one HTTP exchange.
pub(crate) async fn handle<C: Connection>(
    incoming: IncomingStream<C>,
    head: HttpRequestHead,
    ctx: &StreamContext,
) {
    Span::current().record("dest", head.authority.as_str());
    debug!(method = %head.method, path = %head.path, "HTTP exchange");
    let (send, body) = incoming.into_parts();
    ctx.origin.serve(&ctx.dialer, head, send, body).await;
}
