//! HTTP exchanges (`fetch()`): the dispatch point for [`StreamHeader::Http`] streams.
//!
//! Not implemented yet: every exchange is refused with `proxy_internal_error`. The `fetch()`
//! issue replaces [`handle`] with a real HTTP/1.1 client towards the origin.
//!
//! [`StreamHeader::Http`]: underpass_proto::StreamHeader::Http

use tracing::{info, Span};
use underpass_mux::IncomingStream;
use underpass_proto::{HttpRequestHead, ProxyStatus};
use underpass_transport::Connection;

use crate::stream::{refuse, StreamContext};

/// Serve one HTTP exchange.
pub(crate) async fn handle<C: Connection>(
    incoming: IncomingStream<C>,
    head: HttpRequestHead,
    _ctx: &StreamContext,
) {
    Span::current().record("dest", head.authority.as_str());
    info!(method = %head.method, "HTTP exchange refused: not implemented yet");
    refuse(
        incoming,
        ProxyStatus::ProxyInternalError,
        "HTTP exchanges not implemented yet".into(),
    )
    .await;
}
