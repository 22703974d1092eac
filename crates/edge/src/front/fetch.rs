//! `fetch()` through a binding: an absolute-form HTTP/1.1 request becomes an HTTP exchange on
//! a stream to the connector.
//!
//! What workerd sends (behaviour-facts §3): `GET http://host/path` with no `Host` header
//! unless the Worker set one; `https://` in the request line means the *origin* speaks TLS,
//! while this hop stays plaintext on loopback. A VPC Service binding always reaches the
//! service's configured host and port: the stream header names only the service and its policy
//! generation ([`Origin::Service`]), the connector has the policy; the URL's host only fills
//! `Host` and SNI and its port is ignored. A VPC Network binding dials the URL's host and port.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::upgrade::OnUpgrade;
use tracing::{debug, Span};
use underpass_mux::http::{
    body_kind, headers_to_wire, send_body, wire_to_headers, BodyError, RecvBody,
};
use underpass_mux::{open_http, MuxError};
use underpass_proto::{
    BodyKind, DialTarget, Host, HttpRequestHead, Origin, ProxyStatus, RequestId, Scheme,
    StreamReply, RESET_CANCELLED,
};
use underpass_transport::{Connection, SendStream, StreamError};

use super::context::{
    is_closed, is_connection_lost, mux_error_status, retry_failed, FrontContext, Slot,
};
use super::limits::{REQUEST_HEAD_LIMIT, REQUEST_TARGET_LIMIT};
use super::request::{Failure, RequestLog};
use super::response::{empty, FetchBody};
use super::splice::splice_upgrade;
use crate::model::{Binding, BindingTarget};
use crate::registry::Destination;

/// The shortest wait for the connector's answer to a `fetch()`, counted from the end of the
/// request body (an origin answers an upload only once it has all of it, however long the
/// upload takes). The connector has its own connect and response-header timeouts (60 s by
/// default, restarted by upload progress); this only catches a stuck one.
const MIN_REPLY_TIMEOUT: Duration = Duration::from_secs(90);

/// `fetch()`: an HTTP request in absolute form, forwarded as one exchange over a stream.
pub(super) async fn handle<C: Connection>(
    request: Request<Incoming>,
    binding: &Binding,
    context: &FrontContext<C>,
    slot: Slot,
    mut log: RequestLog,
) -> Response<FetchBody> {
    let target_len = request_target_len(request.uri());
    if target_len > REQUEST_TARGET_LIMIT {
        return log.refuse_and_close(
            StatusCode::URI_TOO_LONG,
            format!(
                "the request target is {target_len} bytes, more than the \
                 {REQUEST_TARGET_LIMIT}-byte limit"
            ),
        );
    }
    let head_len = request_head_len(&request);
    if head_len > REQUEST_HEAD_LIMIT {
        return log.refuse_and_close(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request head is {head_len} bytes, more than the \
                 {REQUEST_HEAD_LIMIT}-byte limit"
            ),
        );
    }
    if let Err(details) = check_framing(request.headers()) {
        debug!(method = %request.method(), uri = %request.uri(), "refused a request's framing");
        // What follows on the connection cannot be trusted to start a request: close it.
        return log.refuse_and_close(StatusCode::BAD_REQUEST, details);
    }
    let url = match parse_absolute(request.uri()) {
        Ok(url) => url,
        Err(details) => {
            debug!(method = %request.method(), uri = %request.uri(), "refused a request");
            return log.respond_with(
                StatusCode::BAD_REQUEST,
                Failure::new(ProxyStatus::HttpRequestError, details),
            );
        }
    };
    if let BindingTarget::Service(service) = &binding.target {
        if service.is_tcp() {
            return log.respond_with(
                StatusCode::METHOD_NOT_ALLOWED,
                Failure::new(
                    ProxyStatus::HttpRequestDenied,
                    format!(
                        "service {} is a TCP service: use connect(), not fetch()",
                        service.name
                    ),
                ),
            );
        }
    }
    let destination = fetch_destination(&binding.target, &url);
    match &binding.target {
        BindingTarget::Service(service) => {
            log.set_destination(format!("service {} at {destination}", service.name))
        }
        BindingTarget::Network(_) => log.set_destination(destination.to_string()),
    }
    let exchange = Exchange {
        binding,
        url,
        destination,
        context,
        slot,
        log,
        body_fault: Arc::new(OnceLock::new()),
    };
    exchange.forward(request).await
}

/// Where a `fetch()` goes, for placement: the URL's host and port for a network, the
/// service's host and the port of the scheme it uses for a service.
fn fetch_destination(target: &BindingTarget, url: &AbsoluteTarget) -> Destination {
    match target {
        BindingTarget::Network(_) => Destination {
            host: url.host.clone(),
            port: url.port.unwrap_or_else(|| default_port(url.scheme)),
        },
        BindingTarget::Service(service) => Destination {
            host: service.host.clone(),
            port: service
                .port(url.scheme)
                .unwrap_or_else(|| default_port(url.scheme)),
        },
    }
}

/// The parts of an absolute-form request target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AbsoluteTarget {
    /// URL scheme.
    scheme: Scheme,
    /// `host[:port]` as written in the URL.
    authority: String,
    /// The URL's host (brackets removed for IPv6).
    host: Host,
    /// The URL's port, if written.
    port: Option<u16>,
    /// Path and query, `/` if empty.
    path: String,
}

/// Parse the request target of a `fetch()`: it must be absolute (`http://host/path`).
fn parse_absolute(uri: &http::Uri) -> Result<AbsoluteTarget, String> {
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some(other) => return Err(format!("unsupported URL scheme {other:?}")),
        None => {
            return Err(
                "this is a forward proxy: the request line needs an absolute URL \
                        (GET http://host/path), as fetch() sends it"
                    .to_owned(),
            )
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| "the URL has no host".to_owned())?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not supported".to_owned());
    }
    let raw_host = authority.host();
    if raw_host.is_empty() {
        return Err("the URL has no host".to_owned());
    }
    let unbracketed = raw_host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let host = match unbracketed {
        Some(v6) => Host::Ip(
            v6.parse::<IpAddr>()
                .map_err(|_| format!("invalid IPv6 address {raw_host:?}"))?,
        ),
        // The one strict host parser (as for CONNECT): a dotted quad or a DNS name; `0x7f.1`,
        // `010.0.0.1`, `2130706433` and other forms some resolvers read as addresses are refused.
        None => underpass_proto::authority::parse_host(raw_host)
            .map_err(|error| format!("invalid host in the URL: {error}"))?,
    };
    let port = authority.port_u16();
    if port == Some(0) {
        return Err("port 0 is not a valid destination".to_owned());
    }
    let path = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    Ok(AbsoluteTarget {
        scheme,
        authority: authority.as_str().to_owned(),
        host,
        port,
        path,
    })
}

fn default_port(scheme: Scheme) -> u16 {
    match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    }
}

/// Build the request head for `url` according to the binding's semantics.
fn request_head(
    target: &BindingTarget,
    url: AbsoluteTarget,
    method: &http::Method,
    headers: &http::HeaderMap,
    body: BodyKind,
    upgrade: bool,
    request_id: RequestId,
) -> HttpRequestHead {
    let (scheme, origin) = match target {
        BindingTarget::Network(_) => {
            let port = url.port.unwrap_or_else(|| default_port(url.scheme));
            let dial = DialTarget {
                host: url.host.clone(),
                port,
                resolvers: Vec::new(),
            };
            (url.scheme, Origin::Dial(dial))
        }
        BindingTarget::Service(service) => {
            // Setting only one of the ports forces that scheme; the connector takes the port
            // for it from the policy.
            let scheme = service.http_scheme(url.scheme).unwrap_or(url.scheme);
            (scheme, Origin::Service(service.service_ref()))
        }
    };
    // The URL's authority fills Host (and SNI); a port that is the scheme's default is not
    // written, as a browser would not write it either.
    let authority = match url.port {
        Some(port) if port == default_port(url.scheme) => match &url.host {
            Host::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        },
        _ => url.authority,
    };
    HttpRequestHead {
        method: method.as_str().to_owned(),
        scheme,
        authority,
        path: url.path,
        // The URL's authority is the Host (RFC 9112 §3.2.2): a Host the client sent is not
        // passed on.
        headers: headers_to_wire(headers, upgrade)
            .into_iter()
            .filter(|h| !h.name.eq_ignore_ascii_case("host"))
            .collect(),
        origin,
        body: if upgrade { BodyKind::Upgrade } else { body },
        request_id,
    }
}

/// The bytes a request target takes on the wire (`http://host:port/path?query` for an
/// absolute-form one), without formatting it.
fn request_target_len(uri: &http::Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + path
}

/// The bytes a request head takes on the wire: the target and every `name: value\r\n`.
fn request_head_len<B>(request: &Request<B>) -> usize {
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    fields + request_target_len(request.uri()) + request.method().as_str().len() + 12
}

/// What a request's headers may not be, whatever its target (RFC 9112 §3.2, §6.1): two
/// `Host` fields, `Transfer-Encoding` listed twice or naming a coding the edge does not decode
/// and re-frame (it would be re-coded silently), or with `Content-Length` beside it.
fn check_framing(headers: &http::HeaderMap) -> Result<(), String> {
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Err("the request has more than one Host header".to_owned());
    }
    let codings: Vec<String> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    match codings.as_slice() {
        [] => Ok(()),
        [chunked] if chunked == "chunked" => Ok(()),
        _ if codings.iter().filter(|c| *c == "chunked").count() > 1 => {
            Err("Transfer-Encoding names chunked more than once".to_owned())
        }
        _ => Err(format!(
            "Transfer-Encoding {:?}: only chunked is accepted",
            codings.join(", ")
        )),
    }
}

/// Whether a request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && req.headers().contains_key(header::UPGRADE)
}

/// One `fetch()` on its way to a connector.
struct Exchange<'a, C> {
    binding: &'a Binding,
    url: AbsoluteTarget,
    destination: Destination,
    context: &'a FrontContext<C>,
    /// Kept by an upgrade's pipe: the client connection stays counted while it runs.
    slot: Slot,
    log: RequestLog,
    /// Set when the client's request body failed ([`IdleBody`]).
    body_fault: Arc<OnceLock<BodyFault>>,
}

/// How a client's request body failed: the client's doing, so the answer (when the origin has
/// not answered yet) is the client's error, never a `502`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyFault {
    /// No byte for `body_idle_ms`: `408`.
    Stalled,
    /// Bad chunked framing (a chunk size that is not hex or overflows 64 bits, a chunk
    /// extension over hyper's limit, data past a chunk's size, a bad trailer), or the client
    /// connection ended or failed mid-body: `400`. What hyper said.
    Broken(String),
}

impl BodyFault {
    /// The client's answer: `408` or `400`, `http_request_error`, and the connection closed
    /// (what follows on it, if anything, cannot be trusted to start a request).
    fn response(&self, log: &RequestLog, body_idle: Duration) -> Response<FetchBody> {
        let (code, details) = match self {
            BodyFault::Stalled => (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body stalled: no byte for {} ms (body_idle_ms)",
                    body_idle.as_millis()
                ),
            ),
            BodyFault::Broken(error) => (
                StatusCode::BAD_REQUEST,
                format!("the request body is malformed or cut short: {error}"),
            ),
        };
        log.refuse_and_close(code, details)
    }
}

/// The request body while none of it has been sent: the pump of the current attempt takes it
/// out with its first frame; a retry takes it back if the pump has not.
type UnsentBody = Arc<Mutex<Option<IdleBody>>>;

/// A client's request body that fails when no frame comes for `idle` (`body_idle_ms`): a
/// stalled upload must not hold a stream and an origin connection forever. How it failed, a
/// stall or hyper's error (bad framing, the client gone), is recorded for the answer.
struct IdleBody {
    inner: Incoming,
    idle: Duration,
    /// Armed while a frame is awaited.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set once the body failed.
    fault: Arc<OnceLock<BodyFault>>,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration, fault: Arc<OnceLock<BodyFault>>) -> Self {
        IdleBody {
            inner,
            idle,
            timer: None,
            fault,
        }
    }
}

/// hyper's body error with its cause (`error reading a body from connection: Invalid chunk
/// size line: Invalid Size`).
fn error_chain(error: &hyper::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Body for IdleBody {
    type Data = Bytes;
    type Error = String;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| {
                    f.map_err(|error| {
                        let text = error_chain(&error);
                        let _ = this.fault.set(BodyFault::Broken(text.clone()));
                        text
                    })
                }))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match std::future::Future::poll(timer.as_mut(), cx) {
                    Poll::Ready(()) => {
                        let _ = this.fault.set(BodyFault::Stalled);
                        Poll::Ready(Some(Err(format!(
                            "no request body byte for {} ms (body_idle_ms)",
                            idle.as_millis()
                        ))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How one attempt on one connection ended.
enum Attempt {
    /// The client's response: the origin's, or the connector's refusal.
    Answered(Response<FetchBody>),
    /// The connection was lost before the connector answered.
    Lost(Failure),
    /// Anything else that failed before the answer.
    Failed(Failure),
}

impl<C: Connection> Exchange<'_, C> {
    /// Forward the request and build the client's response. A connection lost before the
    /// connector answered is retried once on another connection when nothing of the request
    /// body has been taken from the client yet (no body, an upgrade, or a body not started);
    /// otherwise the client gets `502 connection_terminated`. Streams carry their
    /// connection's lease, so the connection counts as busy until the response body (or the
    /// upload, or the upgrade's pipe) is done.
    async fn forward(mut self, mut req: Request<Incoming>) -> Response<FetchBody> {
        let upgrade = is_upgrade_request(&req);
        let kind = body_kind(&req.body().size_hint(), req.body().is_end_stream());
        let mut on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let body_fault = self.body_fault.clone();
        let body = IdleBody::new(body, self.context.body_idle, body_fault.clone());
        let mut body = (!upgrade && kind != BodyKind::Empty).then_some(body);
        let limit = self.context.connect_timeout.max(MIN_REPLY_TIMEOUT);
        let mut lost: Option<(u64, Failure)> = None;
        loop {
            let exclude: Vec<u64> = lost.iter().map(|(id, _)| *id).collect();
            let picked = match self.context.pick(self.binding, &self.destination, &exclude) {
                Ok((_tunnel, picked)) => picked,
                Err(failure) => return self.log.respond(retry_failed(lost, failure)),
            };
            Span::current().record("connection", picked.connection_id);
            let head = request_head(
                &self.binding.target,
                self.url.clone(),
                &parts.method,
                &parts.headers,
                kind,
                upgrade,
                self.log.id,
            );
            debug!(
                method = %head.method,
                authority = %head.authority,
                path = %head.path,
                connection = picked.connection_id,
                "fetch"
            );
            let unsent: Option<UnsentBody> = body.take().map(|b| Arc::new(Mutex::new(Some(b))));
            let attempt = self
                .attempt(&picked.conn, head, unsent.clone(), &mut on_upgrade, limit)
                .await;
            // A body that stalled or broke ends the exchange with 408 or 400, unless the origin
            // answered first (its answer stands; the body's stream was reset, so it saw the
            // upload aborted).
            if let Some(fault) = body_fault.get() {
                if !matches!(&attempt, Attempt::Answered(_)) {
                    return fault.response(&self.log, self.context.body_idle);
                }
            }
            match attempt {
                Attempt::Answered(response) => return response,
                Attempt::Lost(failure) if lost.is_none() => {
                    // Safe to retry only if the client's body is still whole.
                    body = unsent.as_ref().and_then(|u| lock(u).take());
                    if unsent.is_some() && body.is_none() {
                        return self.log.respond(Failure::new(
                            ProxyStatus::ConnectionTerminated,
                            format!(
                                "{}; not retried: part of the request body was already sent",
                                failure.details
                            ),
                        ));
                    }
                    debug!(
                        connection = picked.connection_id,
                        "connection lost before the connector answered; retrying once on another \
                         connection"
                    );
                    lost = Some((picked.connection_id, failure));
                }
                Attempt::Lost(failure) | Attempt::Failed(failure) => {
                    return self.log.respond(failure)
                }
            }
        }
    }

    /// One attempt on `conn`: send the head (and start the body), wait for the answer.
    async fn attempt<L: Connection + Clone + Send + Sync + 'static>(
        &mut self,
        conn: &L,
        head: HttpRequestHead,
        unsent: Option<UnsentBody>,
        on_upgrade: &mut Option<OnUpgrade>,
        limit: Duration,
    ) -> Attempt {
        let shutdown = &self.context.shutdown;
        let (mut send, mut reader) = match open_http(conn, head).await {
            Ok(pair) => pair,
            Err(error) => {
                let lost = is_connection_lost(&error);
                let (status, details) = mux_error_status(error, limit);
                let failure = Failure::new(status, details);
                return if lost {
                    Attempt::Lost(failure)
                } else {
                    Attempt::Failed(failure)
                };
            }
        };
        // For an upgrade the client's connection comes later (after the 101) and the send half
        // waits for it; otherwise the body is pumped in its own tracked task.
        let mut upgrade_send = None;
        // With an upload: resolves once the request body has been sent (or has failed).
        let mut body_sent = None;
        // Stops the upload unless disarmed: when this attempt ends without the origin's
        // answer (lost, failed, refused), the client's body is of no use any more, and
        // dropping it lets the client connection close.
        let mut abandon = Abandon(None);
        if on_upgrade.is_some() {
            upgrade_send = Some(send);
        } else if let Some(unsent) = unsent {
            let (uploading, sent) = tokio::sync::oneshot::channel::<()>();
            body_sent = Some(sent);
            let (abandon_tx, abandoned) = tokio::sync::oneshot::channel::<()>();
            abandon.0 = Some(abandon_tx);
            let forced = shutdown.forced();
            shutdown.spawn(async move {
                pump_body(unsent, send, forced, abandoned).await;
                drop(uploading);
            });
        } else {
            // No body (most GETs): finish now, so the FIN leaves in the header's packet and no
            // task is spawned. If the stream is already gone, reading the reply says so.
            if let Err(err) = send.finish() {
                debug!(error = %err, "stream closed before the request was finished");
            }
        }
        let body_fault = self.body_fault.clone();
        let deadline = async {
            if let Some(sent) = body_sent {
                // Sent or failed: either way the wait for the answer starts now.
                let _ = sent.await;
            }
            // A body that stalled or broke: no answer is coming (its stream was reset).
            if body_fault.get().is_some() {
                return;
            }
            tokio::time::sleep(limit).await;
        };
        let reply = tokio::select! {
            reply = reader.expect::<StreamReply>() => reply,
            () = deadline => Err(MuxError::Timeout(limit)),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                reader.stop(RESET_CANCELLED);
                return match err {
                    MuxError::Timeout(_) => Attempt::Failed(Failure::new(
                        ProxyStatus::ConnectionReadTimeout,
                        format!("no answer from the connector: {err}"),
                    )),
                    err if is_connection_lost(&err) => Attempt::Lost(Failure::new(
                        ProxyStatus::ConnectionTerminated,
                        "the connection to the connector was lost before it answered",
                    )),
                    err => Attempt::Failed(Failure::new(
                        ProxyStatus::ConnectionTerminated,
                        format!("no answer from the connector: {err}"),
                    )),
                };
            }
        };
        let head = match reply {
            StreamReply::Error(refusal) => {
                return Attempt::Answered(
                    self.log
                        .respond(Failure::new(refusal.status, refusal.details)),
                )
            }
            StreamReply::TcpAccepted => {
                reader.stop(RESET_CANCELLED);
                return Attempt::Failed(Failure::new(
                    ProxyStatus::ProxyInternalError,
                    "connector answered an HTTP request with a TCP reply",
                ));
            }
            StreamReply::Http(head) => head,
        };
        if let (Some(mut send), Some(upgrade)) = (upgrade_send, on_upgrade.take()) {
            if head.status == 101 {
                let mut response = Response::new(empty());
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                *response.headers_mut() = wire_to_headers(&head.headers);
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                let recv = reader.into_body();
                let (pipe_shutdown, slot) = (shutdown.clone(), self.slot.clone());
                let (log, conn) = (self.log.clone(), conn.clone());
                shutdown.spawn(async move {
                    let ended = splice_upgrade(upgrade, send, recv, &pipe_shutdown).await;
                    if let Some(stats) = ended {
                        log.pipe_ended(&stats, is_closed(&conn), pipe_shutdown.is_forced());
                    }
                    drop(slot);
                });
                abandon.disarm();
                return Attempt::Answered(response);
            }
            // The origin declined the upgrade: the request had no body, end it cleanly.
            if let Err(err) = send.finish() {
                debug!(error = %err, "stream closed before the request was finished");
            }
        }
        let status = match StatusCode::from_u16(head.status) {
            Ok(status) if head.status >= 200 || head.status == 101 => status,
            _ => {
                reader.stop(RESET_CANCELLED);
                return Attempt::Failed(Failure::new(
                    ProxyStatus::HttpProtocolError,
                    format!("origin answered with status {}", head.status),
                ));
            }
        };
        // The body holds the stream's receiving half, and with it the connection's lease,
        // until the client has read the last byte or gone away. A body cut by a lost
        // connection or a reset fails, so hyper aborts the client connection: the client sees
        // an incomplete body, never a clean end.
        let body = LoggedBody {
            inner: RecvBody::new(reader.into_body(), head.body),
            log: Some(self.log.clone()),
        };
        let mut response = Response::new(body.map_err(|e| e.into()).boxed_unsync());
        *response.status_mut() = status;
        *response.headers_mut() = wire_to_headers(&head.headers);
        abandon.disarm();
        Attempt::Answered(response)
    }
}

/// Tells an attempt's upload to stop when dropped, unless disarmed.
struct Abandon(Option<tokio::sync::oneshot::Sender<()>>);

impl Abandon {
    /// The upload goes on (the origin answered; it may still be reading the body).
    fn disarm(&mut self) {
        // Dropping the sender unsent never stops the upload.
        self.0 = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(abandon) = self.0.take() {
            let _ = abandon.send(());
        }
    }
}

fn lock(unsent: &UnsentBody) -> MutexGuard<'_, Option<IdleBody>> {
    // Nothing panics while the lock is held, but a poisoned lock still holds a usable body.
    unsent.lock().unwrap_or_else(|p| p.into_inner())
}

/// Send the request body on `send`. The first frame is taken out of `unsent` under its lock
/// together with the body, so a retry either gets the whole body back or none of it. The pump
/// gives up without taking anything when the stream ends first (its connection lost, the
/// connector stopped it) or the grace period is over.
async fn pump_body<S: SendStream>(
    unsent: UnsentBody,
    mut send: S,
    forced: impl std::future::Future<Output = ()>,
    mut abandoned: tokio::sync::oneshot::Receiver<()>,
) {
    let mut forced = std::pin::pin!(forced);
    let first = std::future::poll_fn(|cx| {
        let mut guard = lock(&unsent);
        let Some(body) = guard.as_mut() else {
            // Taken back for a retry.
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(guard.take().map(|body| (frame, body))),
        }
    });
    let first = tokio::select! {
        first = first => first,
        stopped = send.stopped() => {
            debug!(stopped = ?stopped, "the stream ended before the request body started");
            return;
        }
        Ok(()) = &mut abandoned => return,
        () = &mut forced => return,
    };
    let Some((frame, body)) = first else {
        return;
    };
    let upload = async {
        match frame {
            None => send.finish().map(drop).map_err(BodyError::from),
            Some(Err(error)) => {
                send.reset(RESET_CANCELLED);
                Err(BodyError::Source(error.to_string()))
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        send.write_chunk(data).await?;
                    }
                }
                send_body(body, &mut send).await.map(drop)
            }
        }
    };
    // A client that goes away mid-upload makes the body fail: the stream is reset so the
    // connector aborts the origin request. Cut by the end of the grace period, the send half
    // is dropped unfinished, which resets it.
    tokio::select! {
        sent = upload => if let Err(err) = sent {
            debug!(error = %err, "request body ended early");
        },
        () = &mut forced => debug!("grace period over; upload cut"),
        Ok(()) = &mut abandoned => {
            send.reset(RESET_CANCELLED);
            debug!("the request failed before its answer; upload stopped");
        }
    }
}

/// A response body that logs, once, how the response ended: cut (a lost connection, a reset,
/// a length mismatch) at `info` as a failed request, complete at `debug`.
struct LoggedBody<B> {
    inner: B,
    /// `None` once logged.
    log: Option<RequestLog>,
}

impl<B: Body<Data = Bytes, Error = StreamError> + Unpin> Body for LoggedBody<B> {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => {
                if let Some(log) = this.log.take() {
                    log.done("response done");
                }
            }
            Some(Err(error)) => {
                if let Some(log) = this.log.take() {
                    log.failed(&body_failure(error));
                }
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            // Not polled to its end: complete without a last poll (an empty body), or the
            // client went away.
            log.done("response ended");
        }
    }
}

/// The failure of a response body cut part way.
fn body_failure(error: &StreamError) -> Failure {
    match error {
        StreamError::ConnectionLost(_) => Failure::new(
            ProxyStatus::ConnectionTerminated,
            "the connection to the connector was lost mid-response; the response was cut",
        ),
        StreamError::Reset(code) => Failure::new(
            ProxyStatus::ConnectionTerminated,
            format!("the connector reset the stream mid-response (code {code:#x}); the response was cut"),
        ),
        StreamError::Closed | StreamError::Stopped(_) => Failure::new(
            ProxyStatus::HttpResponseIncomplete,
            "the response body does not match its announced length",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::tests::http_service;
    use crate::model::{Network, TunnelRef};

    fn target(uri: &str) -> Result<AbsoluteTarget, String> {
        parse_absolute(&uri.parse().unwrap())
    }

    #[test]
    fn parses_absolute_targets() {
        let t = target("http://internal-api.company.local:9999/users?x=1").unwrap();
        assert_eq!(t.scheme, Scheme::Http);
        assert_eq!(t.host, Host::Name("internal-api.company.local".into()));
        assert_eq!(t.port, Some(9999));
        assert_eq!(t.path, "/users?x=1");
        let t = target("https://[::1]:8443").unwrap();
        assert_eq!(t.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(t.path, "/");
        assert!(target("/relative").unwrap_err().contains("absolute URL"));
        assert!(target("ftp://x/").is_err());
        assert!(target("http://user:pw@x/").is_err());
    }

    #[test]
    fn service_binding_names_the_service_only() {
        let service = Arc::new(http_service("api", Some(8080), None));
        let url = target("https://internal-api.company.local:9999/users").unwrap();
        let head = request_head(
            &BindingTarget::Service(service.clone()),
            url,
            &http::Method::GET,
            &http::HeaderMap::new(),
            BodyKind::Empty,
            false,
            RequestId(7),
        );
        assert_eq!(head.origin, Origin::Service(service.service_ref()));
        // Only http_port is set: http is forced even for an https URL.
        assert_eq!(head.scheme, Scheme::Http);
        assert_eq!(head.authority, "internal-api.company.local:9999");
    }

    #[test]
    fn network_binding_dials_the_url() {
        let network = Arc::new(Network {
            name: "corp".into(),
            tunnels: vec![TunnelRef::new("prod")],
        });
        let url = target("https://db.internal/x").unwrap();
        let head = request_head(
            &BindingTarget::Network(network),
            url,
            &http::Method::POST,
            &http::HeaderMap::new(),
            BodyKind::Length(3),
            false,
            RequestId(7),
        );
        let Origin::Dial(dial) = head.origin else {
            panic!("a network binding dials");
        };
        assert_eq!(
            (dial.host, dial.port),
            (Host::Name("db.internal".into()), 443)
        );
        assert_eq!(head.body, BodyKind::Length(3));
    }
}
