//! `mode = "proxy"` bindings: an HTTP/1.1 forward proxy, which is what a Worker's
//! `env.MY_BINDING` (workerd with `http = (style = proxy)`) talks to.
//!
//! - `CONNECT host:port` (`connect()`) becomes a TCP stream to a live connector of the
//!   binding's tunnel: `200` once the connector has dialed, then raw bytes both ways with true
//!   half-close; otherwise a non-2xx status with an RFC 9209 `Proxy-Status` header.
//! - every other request is a `fetch()` ([`super::fetch`]).
//!
//! On shutdown, idle client connections close at once, requests in flight finish (their
//! response bodies included), and whatever is still open when the grace period is over is cut.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, ALLOW};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, Instrument};
use underpass_proto::authority::parse_authority;
use underpass_proto::{DialTarget, Origin, ProxyStatus};
use underpass_transport::Connection;

use super::context::{accept_loop, open_error_status, open_tcp_within, FrontContext, Slot};
use super::fetch;
use super::response::{empty, error_response, error_response_with, FetchBody};
use super::splice::splice_upgrade;
use crate::model::{Binding, BindingTarget};
use crate::registry::Picked;

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve the binding `name` on `listener` until stopping begins: one tracked task per client
/// connection, at most `limit` at once.
pub(super) async fn serve<C: Connection>(
    listener: TcpListener,
    name: Arc<str>,
    limit: usize,
    context: Arc<FrontContext<C>>,
) {
    let shutdown = context.shutdown.clone();
    accept_loop(&listener, &name, limit, &shutdown, |stream, peer, slot| {
        let span = info_span!("client", binding = %name, %peer);
        let client = serve_client(stream, name.clone(), context.clone(), slot);
        shutdown.spawn_in(span, client);
    })
    .await;
    debug!(binding = %name, "binding listener stopped");
}

/// One client connection: HTTP/1.1 with upgrades (for `CONNECT` and `101`).
async fn serve_client<C: Connection>(
    stream: TcpStream,
    binding: Arc<str>,
    context: Arc<FrontContext<C>>,
    slot: Slot,
) {
    let _ = stream.set_nodelay(true);
    let shutdown = context.shutdown.clone();
    let service = service_fn(move |request| {
        let (binding, context, slot) = (binding.clone(), context.clone(), slot.clone());
        async move { Ok::<_, Infallible>(handle(request, &binding, &context, slot).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.stopping() => {
            // Idle keep-alive connections close now; a request in flight finishes first.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.forced() => {
                    info!("grace period over; client connection cut");
                    return;
                }
            }
        }
    };
    match result {
        Ok(()) => debug!("client connection ended"),
        Err(error) => debug!(%error, "client connection failed"),
    }
}

/// Route a request: `CONNECT` to [`handle_connect`], everything else to `fetch()`.
async fn handle<C: Connection>(
    request: Request<Incoming>,
    binding: &str,
    context: &FrontContext<C>,
    slot: Slot,
) -> Response<FetchBody> {
    let binding = match context.binding(binding) {
        Ok(binding) => binding,
        Err(details) => return error_response(ProxyStatus::DestinationUnavailable, &details),
    };
    if request.method() == Method::CONNECT {
        handle_connect(request, &binding, context, slot).await
    } else {
        fetch::handle(request, &binding, context, slot).await
    }
}

/// `connect()`: open a TCP stream through a connector of the binding's tunnel.
async fn handle_connect<C: Connection>(
    request: Request<Incoming>,
    binding: &Binding,
    context: &FrontContext<C>,
    slot: Slot,
) -> Response<FetchBody> {
    let asked = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let origin = match connect_origin(&binding.target, &asked) {
        Ok(origin) => origin,
        Err(refusal) => return refusal.response(),
    };
    let (tunnel, picked) = match context.pick(binding) {
        Ok(pair) => pair,
        Err(details) => return error_response(ProxyStatus::DestinationUnavailable, &details),
    };
    let span = info_span!(
        "connect",
        tunnel = %tunnel.name,
        connection = picked.connection_id,
        %asked,
    );
    open_connect_stream(request, origin, picked, context, slot)
        .instrument(span)
        .await
}

/// Open the stream on the picked connection; on success answer `200` and pipe in a tracked
/// task that stays in the stream's span.
async fn open_connect_stream<C: Connection>(
    mut request: Request<Incoming>,
    origin: Origin,
    picked: Picked<C>,
    context: &FrontContext<C>,
    slot: Slot,
) -> Response<FetchBody> {
    debug!(origin = ?origin, "opening TCP stream");
    let limit = context.connect_timeout;
    match open_tcp_within(&picked.conn, origin, limit).await {
        Ok((send, recv)) => {
            let upgrade = hyper::upgrade::on(&mut request);
            let shutdown = context.shutdown.clone();
            context.shutdown.spawn(async move {
                splice_upgrade(upgrade, send, recv, &shutdown).await;
                drop(slot);
            });
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::OK;
            response
        }
        Err(error) => {
            let (status, details) = open_error_status(error, limit);
            let response = error_response(status, &details);
            info!(status = %response.status(), "CONNECT failed");
            response
        }
    }
}

/// Why a `CONNECT` is refused before any connector is asked.
enum ConnectRefusal {
    /// The target is not a valid `host:port`.
    BadTarget(String),
    /// The binding serves an HTTP service, which takes `fetch()` only.
    HttpService(String),
}

impl ConnectRefusal {
    fn response(self) -> Response<FetchBody> {
        match self {
            ConnectRefusal::BadTarget(details) => {
                error_response(ProxyStatus::HttpRequestError, &details)
            }
            ConnectRefusal::HttpService(service) => {
                let mut response = error_response_with(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ProxyStatus::HttpRequestDenied,
                    &format!(
                        "service {service} is an HTTP service: use fetch(); connect() needs a \
                         TCP service or a VPC Network"
                    ),
                );
                response.headers_mut().insert(
                    ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
                response
            }
        }
    }
}

/// Where a `CONNECT` through this binding goes: the client's target for a network, the
/// service (whose policy says host and port) for a TCP service, whatever the client asked.
fn connect_origin(target: &BindingTarget, asked: &str) -> Result<Origin, ConnectRefusal> {
    match target {
        BindingTarget::Network(_) => match parse_authority(asked) {
            Ok((host, port)) => Ok(Origin::Dial(DialTarget {
                host,
                port,
                resolvers: Vec::new(),
            })),
            Err(error) => Err(ConnectRefusal::BadTarget(format!(
                "bad CONNECT target {asked:?}: {error}"
            ))),
        },
        BindingTarget::Service(service) if service.is_tcp() => {
            Ok(Origin::Service(service.service_ref()))
        }
        BindingTarget::Service(service) => Err(ConnectRefusal::HttpService(service.name.clone())),
    }
}
