//! The binding front: each binding is an HTTP/1.1 forward proxy on its own listener, which is
//! what a Worker's `env.MY_BINDING` (workerd with `http = (style = proxy)`) talks to.
//!
//! - `CONNECT host:port` (`connect()`) becomes a TCP stream to a live connector of the
//!   binding's tunnel: `200` once the connector has dialed, then raw bytes both ways with true
//!   half-close; otherwise a non-2xx status with an RFC 9209 `Proxy-Status` header.
//! - every other request (`fetch()`) goes to [`handle_http`], which for now refuses it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, ALLOW};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, info_span, warn, Instrument};
use underpass_mux::{open_tcp, Buffered, MuxError, OpenError};
use underpass_proto::{DialTarget, ProxyStatus, TcpConnect, RESET_CANCELLED};
use underpass_transport::{Connection, RecvStream, SendStream, StreamError};

use crate::authority::parse_authority;
use crate::directory::{Binding, BindingTarget, ServicePorts};
use crate::fetch::{splice_upgraded, FetchBody, FetchTarget};
use crate::proxy_status::{error_response, error_response_with};
use crate::registry::{Picked, Registry, StreamLease};
use crate::tunnels::{Tunnel, TunnelStore};

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed `accept` (out of file descriptors, ...) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What every binding of an edge shares.
pub struct FrontContext<C> {
    /// Live connector connections.
    pub registry: Arc<Registry<C>>,
    /// Tunnels, to resolve a binding's tunnel reference.
    pub tunnels: Arc<TunnelStore>,
    /// How long a connector may take to answer a stream (dial included).
    pub connect_timeout: Duration,
}

/// Serve `binding` on `listener` until `shutdown` resolves: accept loop, one task per client
/// connection. On shutdown the listener is dropped and idle client connections are closed;
/// tunnels already open keep running until either side ends them.
pub async fn serve_binding<C: Connection>(
    listener: TcpListener,
    binding: Arc<Binding>,
    context: Arc<FrontContext<C>>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_clients, clients_stopped) = watch::channel(false);
    accept_until(&listener, &binding.name, shutdown, |stream, peer| {
        let span = info_span!("client", binding = %binding.name, %peer);
        tokio::spawn(
            serve_client(
                stream,
                binding.clone(),
                context.clone(),
                clients_stopped.clone(),
            )
            .instrument(span),
        );
    })
    .await;
    let _ = stop_clients.send(true);
    debug!(binding = %binding.name, "binding listener stopped");
}

/// Accept on `listener` until `shutdown` resolves, handing every connection to `serve`. A
/// failed accept (out of file descriptors, ...) is logged and retried after a pause.
pub(crate) async fn accept_until(
    listener: &TcpListener,
    binding: &str,
    shutdown: impl Future<Output = ()>,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => serve(stream, peer),
            Err(error) => {
                warn!(binding, %error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// One client connection: HTTP/1.1 with upgrades (for `CONNECT`).
async fn serve_client<C: Connection>(
    stream: TcpStream,
    binding: Arc<Binding>,
    context: Arc<FrontContext<C>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let binding = binding.clone();
        let context = context.clone();
        async move { Ok::<_, Infallible>(handle(request, &binding, &context).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match result {
        Ok(()) => debug!("client connection ended"),
        Err(error) => debug!(%error, "client connection failed"),
    }
}

/// Route a request: `CONNECT` to [`handle_connect`], everything else to [`handle_http`].
async fn handle<C: Connection>(
    request: Request<Incoming>,
    binding: &Binding,
    context: &FrontContext<C>,
) -> Response<FetchBody> {
    if request.method() == Method::CONNECT {
        handle_connect(request, binding, context).await
    } else {
        handle_http(request, binding, context).await
    }
}

/// `fetch()`: an HTTP request in absolute form, forwarded as one exchange over a stream.
pub async fn handle_http<C: Connection>(
    request: Request<Incoming>,
    binding: &Binding,
    context: &FrontContext<C>,
) -> Response<FetchBody> {
    let uri = request.uri();
    if uri.scheme().is_none() || uri.authority().is_none() {
        debug!(method = %request.method(), %uri, "refused a relative-form request");
        return error_response_with(
            StatusCode::BAD_REQUEST,
            ProxyStatus::HttpRequestError,
            "this is a forward proxy: the request line needs an absolute URL \
             (GET http://host/path), as fetch() sends it",
        );
    }
    let target = match &binding.target {
        BindingTarget::Network(_) => FetchTarget::Network,
        BindingTarget::Service(service) => match service.ports {
            ServicePorts::Http { http, https } => FetchTarget::Service {
                host: service.host.clone(),
                resolvers: service.resolvers.clone(),
                http_port: http,
                https_port: https,
                tls: service.tls,
                ca_pem: service.ca_pem.clone(),
            },
            ServicePorts::Tcp(_) => {
                return error_response_with(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ProxyStatus::HttpRequestDenied,
                    &format!(
                        "service {} is a TCP service: use connect(), not fetch()",
                        service.name
                    ),
                )
            }
        },
    };
    let (tunnel, picked) = match pick_connection(binding, context) {
        Ok(pair) => pair,
        Err(response) => return *response,
    };
    let span = info_span!(
        "fetch",
        tunnel = %tunnel.name,
        connection = picked.connection_id,
        method = %request.method(),
        uri = %request.uri(),
    );
    // The connector has its own connect and response-header timeouts (60 s by default);
    // this bound only catches a stuck connector.
    let reply_timeout = context.connect_timeout.max(Duration::from_secs(90));
    crate::fetch::forward(&picked.conn, &target, request, reply_timeout)
        .instrument(span)
        .await
}

/// The binding's tunnel and a live connection of it, or the `destination_unavailable`
/// answer that says why there is none.
fn pick_connection<C: Connection>(
    binding: &Binding,
    context: &FrontContext<C>,
) -> Result<(Tunnel, Picked<C>), Box<Response<FetchBody>>> {
    pick(binding, context).map_err(|details| {
        Box::new(error_response(
            ProxyStatus::DestinationUnavailable,
            &details,
        ))
    })
}

/// The binding's tunnel and a live connection of it, or why there is none (the details of a
/// `destination_unavailable`).
pub(crate) fn pick<C: Connection>(
    binding: &Binding,
    context: &FrontContext<C>,
) -> Result<(Tunnel, Picked<C>), String> {
    let tunnel_ref = binding.target.tunnel();
    let Some(tunnel) = context.tunnels.resolve(tunnel_ref) else {
        warn!(
            tunnel = tunnel_ref,
            "binding refers to a tunnel that does not exist"
        );
        return Err(format!("tunnel {tunnel_ref} does not exist on this edge"));
    };
    let Some(picked) = context.registry.pick(&tunnel.id) else {
        info!(tunnel = %tunnel.name, "no connector online");
        return Err(format!("no connector online for tunnel {}", tunnel.name));
    };
    Ok((tunnel, picked))
}

/// `connect()`: open a TCP stream through a connector of the binding's tunnel.
async fn handle_connect<C: Connection>(
    request: Request<Incoming>,
    binding: &Binding,
    context: &FrontContext<C>,
) -> Response<FetchBody> {
    let asked = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let target = match connect_target(&binding.target, &asked) {
        Ok(target) => target,
        Err(refusal) => return refusal.response(),
    };
    let (tunnel, picked) = match pick_connection(binding, context) {
        Ok(pair) => pair,
        Err(response) => return *response,
    };
    let span = info_span!(
        "connect",
        tunnel = %tunnel.name,
        connection = picked.connection_id,
        %asked,
    );
    open_connect_stream(request, target, picked, context.connect_timeout)
        .instrument(span)
        .await
}

/// Open the stream on the picked connection; on success answer `200` and pipe in a task that
/// stays in the stream's span.
async fn open_connect_stream<C: Connection>(
    mut request: Request<Incoming>,
    target: DialTarget,
    picked: Picked<C>,
    limit: Duration,
) -> Response<FetchBody> {
    debug!(target = ?target, "opening TCP stream");
    match open_tcp_within(&picked.conn, target, limit).await {
        Ok((send, recv)) => {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(
                run_tunnel(upgrade, send, recv, picked.lease).instrument(tracing::Span::current()),
            );
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::OK;
            response
        }
        Err(error) => {
            let response = open_error_response(error, limit);
            info!(status = %response.status(), "CONNECT failed");
            response
        }
    }
}

/// Open a TCP stream to `target` on `conn`, connector's answer included, within `limit`.
/// `open_tcp` bounds the wait for the reply; the outer bound also covers waiting for stream
/// credit. A stream abandoned part way is reset when dropped.
pub(crate) async fn open_tcp_within<C: Connection>(
    conn: &C,
    target: DialTarget,
    limit: Duration,
) -> Result<(C::Send, Buffered<C::Recv>), OpenError> {
    tokio::time::timeout(limit, open_tcp(conn, TcpConnect { target }, limit))
        .await
        .unwrap_or(Err(OpenError::Mux(MuxError::Timeout(limit))))
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

/// Where a `CONNECT` through this binding goes.
fn connect_target(target: &BindingTarget, asked: &str) -> Result<DialTarget, ConnectRefusal> {
    match target {
        BindingTarget::Network(_) => match parse_authority(asked) {
            Ok((host, port)) => Ok(DialTarget {
                host,
                port,
                resolvers: Vec::new(),
            }),
            Err(error) => Err(ConnectRefusal::BadTarget(format!(
                "bad CONNECT target {asked:?}: {error}"
            ))),
        },
        // A TCP service is dialed at its configured address whatever the client asked.
        BindingTarget::Service(service) => service
            .tcp_target()
            .ok_or_else(|| ConnectRefusal::HttpService(service.name.clone())),
    }
}

/// The response for a stream that did not open.
fn open_error_response(error: OpenError, limit: Duration) -> Response<FetchBody> {
    let (status, details) = open_error_status(error, limit);
    error_response(status, &details)
}

/// The Proxy-Status code and details for a stream that did not open.
pub(crate) fn open_error_status(error: OpenError, limit: Duration) -> (ProxyStatus, String) {
    match error {
        OpenError::Refused(reply) => (reply.status, reply.details),
        OpenError::Mux(MuxError::Timeout(_)) => (
            ProxyStatus::ConnectionTimeout,
            format!(
                "the connector did not answer within {} ms",
                limit.as_millis()
            ),
        ),
        OpenError::Mux(MuxError::Stream(error)) => (
            ProxyStatus::DestinationUnavailable,
            format!(
                "the stream to the connector failed: {}",
                stream_error_text(&error)
            ),
        ),
        OpenError::Mux(MuxError::UnexpectedEof) => (
            ProxyStatus::DestinationUnavailable,
            "the connector closed the stream without answering".into(),
        ),
        OpenError::Mux(error @ (MuxError::Decode(_) | MuxError::Encode(_))) => (
            ProxyStatus::ProxyInternalError,
            format!("tunnel protocol error: {error}"),
        ),
        OpenError::UnexpectedReply => (
            ProxyStatus::ProxyInternalError,
            "the connector sent a reply that does not fit a TCP stream".into(),
        ),
    }
}

fn stream_error_text(error: &StreamError) -> String {
    match error {
        // The connection-loss reason can be long and technical; keep the header short.
        StreamError::ConnectionLost(_) => "connection to the connector lost".into(),
        other => other.to_string(),
    }
}

/// After the `200`: wait for hyper to hand over the client socket, then pipe it to the stream.
async fn run_tunnel<S: SendStream, R: RecvStream>(
    upgrade: OnUpgrade,
    mut send: S,
    mut recv: Buffered<R>,
    lease: StreamLease,
) {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            debug!(%error, "client left before the tunnel opened");
            send.reset(RESET_CANCELLED);
            recv.stop(RESET_CANCELLED);
            return;
        }
    };
    splice_upgraded(upgraded, send, recv).await;
    drop(lease);
}

fn empty() -> FetchBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The listening address of a bound listener, for logs and the handle.
pub(crate) fn listener_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

/// Resolves once `shutdown` turns true (or its sender is gone). Drops the watch guard before
/// returning, so the caller's future stays `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
