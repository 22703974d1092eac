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

use http::header::{HeaderValue, ALLOW, DATE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, info_span, Instrument};
use underpass_proto::authority::parse_authority;
use underpass_proto::{DialTarget, Origin, ProxyStatus, Scheme};
use underpass_transport::Connection;

use super::client_io::{ClientIo, TrackedBody};
use super::context::{accept_loop, is_closed, ClientProtocol, FrontContext, Listening, Slot};
use super::fetch;
use super::limits;
use super::request::{Failure, RequestLog};
use super::response::{date_value, empty, FetchBody};
use super::splice::splice_upgrade;
use crate::model::{Binding, BindingTarget};
use crate::registry::Destination;

/// Serve the binding `name` on `listener` until stopping begins: one tracked task per client
/// connection, at most `limit` at once.
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
        protocol: ClientProtocol::Http,
        clients: &context.clients,
        shutdown: &shutdown,
    };
    accept_loop(listening, |stream, peer, slot| {
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
    // A second descriptor of the client socket, to reset it if a response body breaks:
    // hyper owns the stream and would close it with a FIN.
    let socket = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok();
    // hyper's own error answers (unparsable heads) are replaced by the edge's, with a
    // Proxy-Status (`client_io`).
    let io = ClientIo::new(stream);
    let responses = io.responses();
    let refused = io.responses();
    let log_binding = binding.clone();
    let shutdown = context.shutdown.clone();
    let header_read = context.header_read;
    // At the edge-wide connection limit, or out of descriptors, an idle connection is asked
    // to make room (`super::accept`).
    let shed = slot.sheddable();
    let service = service_fn(move |request| {
        let (binding, context, slot) = (binding.clone(), context.clone(), slot.for_request());
        let open = responses.begin();
        async move {
            let response = context
                .metrics
                .observe(&binding, handle(request, &binding, &context, slot.clone()))
                .await;
            // The connection is busy until the response body is written.
            let mut response = response.map(|body| slot.hold(body));
            // Every response the edge writes has a Date (RFC 9110 §6.6.1): hyper's own, turned
            // off, would be on its error answers too, which `client_io` tells apart by its
            // absence.
            if !response.headers().contains_key(DATE) {
                response.headers_mut().insert(DATE, date_value());
            }
            Ok::<_, Infallible>(TrackedBody::response(response, open))
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .max_buf_size(limits::MAX_HEAD_BUFFER)
        .max_header_size(limits::MAX_HEAD_BUFFER)
        .max_headers(limits::MAX_HEADERS)
        .auto_date_header(false)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let closing = async {
        tokio::select! {
            () = shed.requested() => true,
            () = shutdown.stopping() => false,
        }
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        shed_now = closing => {
            if shed_now && !shed.served() {
                // No request yet, so nothing to finish: make room at once.
                debug!("idle client connection shed before its first request");
                return;
            }
            if shed_now {
                debug!("idle client connection shed");
            }
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
    if let Some((status, details)) = refused.refused() {
        // A request head hyper could not parse: no request reached the service, so this is
        // its one log line, with what hyper said.
        let said = result
            .as_ref()
            .err()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        RequestLog::new(log_binding, "(unparsed request head)").failed(&Failure::new(
            ProxyStatus::HttpRequestError,
            format!("{} {details}{said}", status.as_u16()),
        ));
    }
    match result {
        Ok(()) => debug!("client connection ended"),
        Err(error) => {
            debug!(%error, "client connection failed");
            if error.is_user() {
                // A response body failed part way (its stream to the connector was reset
                // or its connection lost): hyper stops without the body's end, and with
                // zero linger the close is a TCP reset, so the client cannot mistake the
                // cut for a complete response. Linger is a property of the socket, not of
                // the descriptor: the last of the two closes (both at the end of this
                // function) sends the reset.
                if let Some(socket) = &socket {
                    if let Err(error) =
                        socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO))
                    {
                        debug!(%error, "cannot set SO_LINGER 0; closing normally");
                    }
                }
            }
        }
    }
}

/// Route a request: `CONNECT` to [`handle_connect`], everything else to `fetch()`. Each
/// request gets its id and span here.
async fn handle<C: Connection>(
    request: Request<Incoming>,
    name: &Arc<str>,
    context: &FrontContext<C>,
    slot: Slot,
) -> Response<FetchBody> {
    let is_connect = request.method() == Method::CONNECT;
    let asked = match request.uri().authority() {
        Some(authority) if is_connect => authority.as_str().to_owned(),
        Some(authority) => format!(
            "{}://{authority}",
            request.uri().scheme_str().unwrap_or("http")
        ),
        None => request.uri().to_string(),
    };
    let log = RequestLog::new(name.clone(), asked.clone());
    let binding = match context.binding(name) {
        Ok(binding) => binding,
        Err(details) => {
            return log.respond(Failure::new(ProxyStatus::DestinationUnavailable, details))
        }
    };
    if is_connect {
        let span = info_span!(
            "connect",
            request_id = %log.id,
            %asked,
            connection = tracing::field::Empty,
        );
        handle_connect(request, &binding, context, slot, log)
            .instrument(span)
            .await
    } else {
        let span = info_span!(
            "fetch",
            request_id = %log.id,
            method = %request.method(),
            uri = %request.uri(),
            connection = tracing::field::Empty,
        );
        fetch::handle(request, &binding, context, slot, log)
            .instrument(span)
            .await
    }
}

/// `connect()`: open a TCP stream through a connector of the binding's tunnel; on success
/// answer `200` and pipe in a tracked task that stays in the request's span.
async fn handle_connect<C: Connection>(
    mut request: Request<Incoming>,
    binding: &Binding,
    context: &FrontContext<C>,
    slot: Slot,
    mut log: RequestLog,
) -> Response<FetchBody> {
    let asked = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    if let Some(details) = connect_form_error(&request) {
        // A body may follow on the connection: close it rather than read it as a request.
        return log.refuse_and_close(StatusCode::BAD_REQUEST, details);
    }
    let (origin, destination) = match connect_origin(&binding.target, &asked) {
        Ok(pair) => pair,
        Err(refusal) => return refusal.response(&log),
    };
    if let BindingTarget::Service(service) = &binding.target {
        log.set_destination(format!("service {} at {destination}", service.name));
    }
    match context
        .open_tcp_stream(binding, &destination, origin, &log)
        .await
    {
        Ok(opened) => {
            let upgrade = hyper::upgrade::on(&mut request);
            let shutdown = context.shutdown.clone();
            context.shutdown.spawn(async move {
                let ended = splice_upgrade(upgrade, opened.send, opened.recv, &shutdown).await;
                if let Some(stats) = ended {
                    log.pipe_ended(&stats, is_closed(&opened.conn), shutdown.is_forced());
                }
                drop(slot);
            });
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::OK;
            response
        }
        Err(failure) => log.respond(failure),
    }
}

/// A `CONNECT` must name `host:port` (authority form, RFC 9110 §9.3.6), not a URL, and
/// carries no body: what is wrong with this one, if anything.
fn connect_form_error<B>(request: &Request<B>) -> Option<String> {
    let uri = request.uri();
    if uri.scheme().is_some() || uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Some(format!(
            "CONNECT takes host:port (authority form), not a URL: {uri}"
        ));
    }
    let headers = request.headers();
    let has_body = headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    has_body.then(|| {
        "a CONNECT request has no body (Content-Length or Transfer-Encoding sent)".to_owned()
    })
}

/// Why a `CONNECT` is refused before any connector is asked.
enum ConnectRefusal {
    /// The target is not a valid `host:port`.
    BadTarget(String),
    /// The binding serves an HTTP service, which takes `fetch()` only.
    HttpService(String),
}

impl ConnectRefusal {
    fn response(self, log: &RequestLog) -> Response<FetchBody> {
        match self {
            ConnectRefusal::BadTarget(details) => {
                log.respond(Failure::new(ProxyStatus::HttpRequestError, details))
            }
            ConnectRefusal::HttpService(service) => {
                let mut response = log.respond_with(
                    StatusCode::METHOD_NOT_ALLOWED,
                    Failure::new(
                        ProxyStatus::HttpRequestDenied,
                        format!(
                            "service {service} is an HTTP service: use fetch(); connect() needs \
                             a TCP service or a VPC Network"
                        ),
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
/// With the destination the connector dials, for placement.
fn connect_origin(
    target: &BindingTarget,
    asked: &str,
) -> Result<(Origin, Destination), ConnectRefusal> {
    match target {
        BindingTarget::Network(_) => match parse_authority(asked) {
            Ok((host, port)) => Ok((
                Origin::Dial(DialTarget {
                    host: host.clone(),
                    port,
                    resolvers: Vec::new(),
                }),
                Destination { host, port },
            )),
            Err(error) => Err(ConnectRefusal::BadTarget(format!(
                "bad CONNECT target {asked:?}: {error}"
            ))),
        },
        BindingTarget::Service(service) if service.is_tcp() => Ok((
            Origin::Service(service.service_ref()),
            Destination {
                host: service.host.clone(),
                port: service.port(Scheme::Http).unwrap_or(0),
            },
        )),
        BindingTarget::Service(service) => Err(ConnectRefusal::HttpService(service.name.clone())),
    }
}
