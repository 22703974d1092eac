//! The binding front: one listener per binding, serving what a Worker's `env.MY_BINDING`
//! talks to.
//!
//! - [`proxy`]: `mode = "proxy"`, an HTTP/1.1 forward proxy: `CONNECT host:port` for
//!   `connect()`, absolute-form requests for `fetch()` ([`fetch`]);
//! - [`tcp`]: `mode = "tcp"`, a plain TCP port piped to one TCP service;
//! - [`context`]: what every binding shares (registry, tunnels, the directory snapshot,
//!   shutdown), placing and opening streams (one retry on another connection when the first
//!   is lost before the answer);
//! - [`accept`]: the accept loop, the per-binding and edge-wide connection limits, shedding
//!   idle connections at the edge-wide limit or when descriptors run out;
//! - [`splice`]: a client socket spliced to a stream (after `CONNECT`'s `200`, a `101`, or for a
//!   TCP binding), reset when the grace period runs out;
//! - [`request`]: request ids and the one log line of every binding request;
//! - [`response`]: the one builder of `Proxy-Status` error responses.
//!
//! Every request reads its binding, and the network or service behind it, from the current
//! directory snapshot ([`crate::model`]), so a directory change applies to the next request.

mod accept;
mod client_io;
mod context;
mod fetch;
mod limits;
mod proxy;
mod request;
mod response;
mod splice;
mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use underpass_transport::Connection;

pub(crate) use accept::{bind_listener, default_client_limit, ClientConnections};
pub(crate) use context::FrontContext;

use crate::model::{Binding, BindingMode};

/// Serve `binding` on `listener` until stopping begins. Client connections run in tracked
/// tasks of the context's shutdown, so shutting down waits for them.
pub(crate) async fn serve<C: Connection>(
    listener: TcpListener,
    binding: &Binding,
    context: Arc<FrontContext<C>>,
) {
    let name: Arc<str> = Arc::from(binding.name.as_str());
    match binding.mode {
        BindingMode::Proxy => proxy::serve(listener, name, binding.max_connections, context).await,
        BindingMode::Tcp => tcp::serve(listener, name, binding.max_connections, context).await,
    }
}

/// The listening address of a bound listener, for logs and the handle.
pub(crate) fn listener_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}
