//! The connector's HTTP client towards private origins: runs one `fetch()` exchange from a
//! stream's request head to the end of the response body.
//!
//! - the origin is a [`Destination`]: a VPC Network's dial target, or a VPC Service's host
//!   and port (by scheme) from its policy; always dialed through the [`Dialer`] (route check,
//!   resolution, deny list);
//! - https origins get TLS: a VPC Network verified in full against the system roots, a VPC
//!   Service as its policy says (`verify_full`, `verify_ca`, `disabled`; its CA bundle added
//!   to the system roots); the URL's host is the SNI and fills `Host` unless the request has
//!   one;
//! - connections are kept alive and reused per destination and TLS identity (`pool`);
//!   HTTP/1.1 by default, HTTP/2 when enabled and chosen by the origin in ALPN;
//! - bodies stream both ways chunk by chunk, never buffered whole;
//! - when the edge stops reading (its client went away), the origin request is dropped at
//!   once and its HTTP/1.1 connection closed, not reused;
//! - protocol upgrades (WebSocket) become a raw pipe after the origin's `101` (`upgrade`);
//!   any other answer to an upgrade request is passed on as an ordinary response.
//!
//! Failures before the response head are answered with a Proxy-Status
//! [`StreamReply::Error`]; a failure after the head resets the stream with [`RESET_INTERNAL`]
//! so the edge aborts the response instead of passing on a truncated body as complete. A
//! response head that does not fit in one stream frame ([`MAX_FRAME_LEN`]), or that hyper
//! refuses as too large, is such a failure: `http_response_header_section_size`.

mod pool;
mod target;
mod tls;
mod upgrade;

use std::collections::HashSet;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Mutex;
use std::time::Duration;

use http::Response;
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::{debug, debug_span, warn, Instrument};
use underpass_mux::http::{body_kind, headers_to_wire, RecvBody};
use underpass_mux::{write_frame, Buffered, MuxError};
use underpass_proto::{
    BodyKind, EncodeError, HttpRequestHead, HttpResponseHead, ProxyErrorReply, ProxyStatus,
    StreamReply, MAX_FRAME_LEN, RESET_CANCELLED, RESET_INTERNAL,
};
use underpass_rt::Shutdown;
use underpass_transport::{RecvStream, SendStream};

use self::pool::{Pool, SendResult, Sender};
pub(crate) use self::target::Destination;
use self::target::{Endpoint, UploadWatch};
use self::tls::{TlsConfigs, VerifyMode};
use crate::dial::Dialer;
use crate::outcome::{Ending, StreamEnd};

/// How long a finished HTTP/1.1 exchange waits for its connection to become reusable before
/// the stream is finished; after that the connection is returned in the background.
const RELEASE_WAIT: Duration = Duration::from_millis(250);
/// Authorities remembered for the once-only warning about unverified TLS.
const MAX_WARNED: usize = 4096;
/// The response header list an HTTP/2 origin may send (`SETTINGS_MAX_HEADER_LIST_SIZE`, which
/// counts 32 bytes per field on top of its name and value): twice a frame, so that any head
/// that fits in a stream frame is read (hyper's default, 16 KiB, would refuse most of them)
/// and the frame limit is the one that answers `http_response_header_section_size`.
const H2_MAX_HEADER_LIST: u32 = 2 * MAX_FRAME_LEN as u32;

/// Tunables of the origin client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginSettings {
    /// Longest TLS handshake with an origin (`connection_timeout` when exceeded).
    pub tls_handshake_timeout: Duration,
    /// Longest wait for the response head while the request body makes no progress
    /// (`connection_read_timeout` when exceeded). A long upload that keeps flowing does not
    /// trip it.
    pub response_header_timeout: Duration,
    /// How long an idle keep-alive connection is kept for reuse.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per destination; 0 disables reuse.
    pub max_idle_per_origin: usize,
    /// Offer HTTP/2 in ALPN to https origins (HTTP/1.1 otherwise, and always for plain http).
    pub http2: bool,
}

impl Default for OriginSettings {
    fn default() -> Self {
        OriginSettings {
            tls_handshake_timeout: Duration::from_secs(10),
            response_header_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            max_idle_per_origin: 32,
            http2: false,
        }
    }
}

/// The HTTP client towards origins: TLS configurations and the connection pool, shared by
/// every exchange of the connector.
pub(crate) struct OriginClient {
    settings: OriginSettings,
    pool: Pool,
    tls: TlsConfigs,
    warned: Mutex<HashSet<String>>,
    /// Where origin connections and pool upkeep run: stopped and forced with the connector.
    tasks: Shutdown,
}

/// Why an exchange stopped before the response head.
enum Failure {
    /// Answer the edge with this error.
    Reply(ProxyErrorReply),
    /// The edge's side went away (upload aborted): nobody waits for an answer.
    Aborted(String),
}

/// What waiting for a response head gave instead of one.
enum HeadError {
    /// The connection closed before the request left: it may be sent elsewhere.
    NotSent(Box<http::Request<pool::OriginBody>>),
    /// The exchange failed.
    Failed(Failure),
}

/// Why streaming a response body stopped early.
enum BodyEnd {
    /// The edge stopped reading or aborted the upload.
    Cancelled(String),
    /// The origin's body failed (cut short, reset, malformed).
    Origin(hyper::Error),
}

impl OriginClient {
    /// A client with these settings, running its connections' tasks in `tasks`. Nothing is
    /// dialed until a request comes.
    pub(crate) fn new(settings: OriginSettings, tasks: Shutdown) -> Self {
        OriginClient {
            pool: Pool::new(
                settings.pool_idle_timeout,
                settings.max_idle_per_origin,
                tasks.clone(),
            ),
            tls: TlsConfigs::default(),
            warned: Mutex::new(HashSet::new()),
            settings,
            tasks,
        }
    }

    /// Close every idle origin connection, then wait (up to `grace`, then cut them) for the
    /// connections still running to end. For the end of the connector: every exchange is
    /// over by then.
    pub(crate) async fn close(&self, grace: Duration) {
        self.pool.clear();
        self.tasks.shutdown(grace).await;
    }

    /// Run one exchange: send the request of `head` with the body read from `body` to the
    /// origin at `destination` and write the reply, then the response body, to `send`.
    /// Everything is written here, errors included; the stream is finished or reset on
    /// return, and the returned end says how (for the stream's one log line and metrics).
    pub(crate) async fn serve<S: SendStream, R: RecvStream>(
        &self,
        dialer: &Dialer,
        head: HttpRequestHead,
        destination: Destination,
        send: S,
        body: Buffered<R>,
    ) -> StreamEnd {
        let span = debug_span!(
            "origin",
            method = %head.method,
            authority = %head.authority,
            path = %head.path,
        );
        self.exchange(dialer, head, destination, send, body)
            .instrument(span)
            .await
    }

    async fn exchange<S: SendStream, R: RecvStream>(
        &self,
        dialer: &Dialer,
        head: HttpRequestHead,
        destination: Destination,
        mut send: S,
        body: Buffered<R>,
    ) -> StreamEnd {
        let origin = match Endpoint::new(&head, &destination) {
            Ok(origin) => origin,
            Err(error) => return refuse(&mut send, error).await,
        };
        drop(destination);
        if head.body == BodyKind::Upgrade {
            // Boxed: the upgrade path is rare and large; inline it would grow every exchange.
            return Box::pin(upgrade::serve(self, dialer, &origin, &head, send, body)).await;
        }
        let (body, mut upload) = target::watched(RecvBody::new(body, head.body));
        let request = match target::build_request(&head, &origin, body, false) {
            Ok(request) => request,
            Err(error) => return refuse(&mut send, error).await,
        };
        let outcome = tokio::select! {
            outcome = self.request(dialer, &origin, request, &mut upload) => outcome,
            code = send.stopped() => {
                send.reset(RESET_CANCELLED);
                return StreamEnd::cancelled(format!(
                    "the edge cancelled the exchange before the response head ({code:?})"
                ));
            }
        };
        let (response, lease) = match outcome {
            Ok(pair) => pair,
            Err(Failure::Reply(error)) => return refuse(&mut send, error).await,
            Err(Failure::Aborted(reason)) => {
                send.reset(RESET_CANCELLED);
                return StreamEnd::cancelled(format!("request body aborted by the edge: {reason}"));
            }
        };
        let status = response.status().as_u16();
        if let Err(mut end) = write_head(&mut send, response_head(&response)).await {
            // Dropping the body and the connection handle closes an HTTP/1.1 connection.
            end.to_origin = upload.sent();
            return end;
        }
        let body = response.into_body();
        let mut from_origin = 0;
        let ending = match stream_body(&mut send, body, &mut upload, &mut from_origin).await {
            Ok(()) => {
                // Finish first: the edge gets the end of the response without waiting for
                // the origin connection to be ready for reuse. Already reset by the peer, or
                // the connection is gone: nothing to do.
                let _ = send.finish();
                if let Some(sender) = lease {
                    self.release(origin.key.clone(), sender, upload.is_done())
                        .await;
                }
                debug!(status, bytes = from_origin, "exchange complete");
                Ending::Done
            }
            Err(end) => {
                drop(lease);
                body_failed(&mut send, end, status)
            }
        };
        StreamEnd {
            ending,
            to_origin: upload.sent(),
            from_origin,
        }
    }

    /// Send `request` on a pooled connection if one is ready, else on a new one, and wait
    /// for the response head. A pooled connection that closed before the request left it
    /// (the origin's idle timeout racing ours) is retried once on a new connection. Returns
    /// the HTTP/1.1 connection to give back after the exchange (HTTP/2 ones stay shared).
    async fn request(
        &self,
        dialer: &Dialer,
        origin: &Endpoint,
        mut request: http::Request<pool::OriginBody>,
        upload: &mut UploadWatch,
    ) -> Result<(Response<Incoming>, Option<Sender>), Failure> {
        if let Some(mut sender) = self.pool.checkout(&origin.key) {
            debug!(http2 = sender.is_http2(), "reusing an origin connection");
            target::fit_version(&mut request, sender.is_http2(), origin.scheme);
            match self.head(sender.send(request), upload).await {
                Ok(response) => return Ok((response, lease(sender))),
                Err(HeadError::NotSent(back)) => {
                    debug!("pooled origin connection closed before the request left");
                    request = *back;
                }
                Err(HeadError::Failed(failure)) => return Err(failure),
            }
        }
        // Boxed: dialing and TLS/h2 handshakes make a large future, needed only without a
        // pooled connection; inline it would be allocated and moved with every exchange.
        let mut sender = Box::pin(self.connect(dialer, origin, true))
            .await
            .map_err(Failure::Reply)?;
        target::fit_version(&mut request, sender.is_http2(), origin.scheme);
        match self.head(sender.send(request), upload).await {
            Ok(response) => Ok((response, lease(sender))),
            Err(HeadError::NotSent(_)) => Err(Failure::Reply(ProxyErrorReply {
                status: ProxyStatus::ConnectionTerminated,
                details: "the origin closed the connection before the request was sent".into(),
            })),
            Err(HeadError::Failed(failure)) => Err(failure),
        }
    }

    /// Wait for the response head of a sent request, within the response-header timeout
    /// (restarted whenever the request body makes progress).
    async fn head(
        &self,
        sending: Pin<Box<dyn Future<Output = SendResult> + Send>>,
        upload: &mut UploadWatch,
    ) -> Result<Response<Incoming>, HeadError> {
        let limit = self.settings.response_header_timeout;
        let mut sending = sending;
        let mut deadline = pin!(tokio::time::sleep(limit));
        loop {
            tokio::select! {
                result = &mut sending => {
                    return result.map_err(|mut err| match err.take_message() {
                        Some(request) => HeadError::NotSent(Box::new(request)),
                        None => HeadError::Failed(match upload.failure() {
                            Some(reason) => Failure::Aborted(reason),
                            None => Failure::Reply(hyper_error(&err.into_error())),
                        }),
                    });
                }
                () = &mut deadline => {
                    return Err(HeadError::Failed(Failure::Reply(ProxyErrorReply {
                        status: ProxyStatus::ConnectionReadTimeout,
                        details: format!("no response head from the origin within {limit:?}"),
                    })));
                }
                state = upload.changed() => match state {
                    target::Upload::Failed(reason) => {
                        return Err(HeadError::Failed(Failure::Aborted(reason)));
                    }
                    target::Upload::Sending(_) | target::Upload::Done(_) => {
                        deadline.as_mut().reset(Instant::now() + limit);
                    }
                },
            }
        }
    }

    /// Dial the origin, do TLS if it is https, and start an HTTP connection on it: HTTP/2 if
    /// `allow_http2`, enabled, and chosen by the origin in ALPN, else HTTP/1.1 (with upgrade
    /// support). A new HTTP/2 connection is shared through the pool at once.
    async fn connect(
        &self,
        dialer: &Dialer,
        origin: &Endpoint,
        allow_http2: bool,
    ) -> Result<Sender, ProxyErrorReply> {
        let tcp = dialer.dial(&origin.target).await?;
        let span = debug_span!("origin_connection", dest = %origin.target);
        let Some(tls) = &origin.key.tls else {
            debug!(dest = %origin.target, "origin connected");
            return handshake_http1(tcp, span, &self.tasks).await;
        };
        if tls.mode == VerifyMode::Disabled {
            self.warn_unverified(origin);
        }
        let http2 = allow_http2 && self.settings.http2;
        let config = self.tls.config(tls.mode, tls.ca.as_ref(), http2).await?;
        let limit = self.settings.tls_handshake_timeout;
        let handshake = TlsConnector::from(config).connect(tls.server_name.clone(), tcp);
        let stream = match tokio::time::timeout(limit, handshake).await {
            Err(_) => {
                return Err(ProxyErrorReply {
                    status: ProxyStatus::ConnectionTimeout,
                    details: format!("TLS handshake with the origin took longer than {limit:?}"),
                })
            }
            Ok(Err(err)) => return Err(tls::handshake_error(err)),
            Ok(Ok(stream)) => stream,
        };
        let negotiated_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        debug!(dest = %origin.target, http2 = negotiated_h2, "origin connected over TLS");
        if !negotiated_h2 {
            return handshake_http1(stream, span, &self.tasks).await;
        }
        let sender = handshake_http2(stream, span, &self.tasks).await?;
        if let Some(shared) = sender.share() {
            self.pool.put(origin.key.clone(), shared);
        }
        Ok(sender)
    }

    /// Give an HTTP/1.1 connection back to the pool once it can take another request.
    async fn release(&self, key: pool::PoolKey, mut sender: Sender, upload_done: bool) {
        if upload_done {
            match tokio::time::timeout(RELEASE_WAIT, sender.ready()).await {
                Ok(Ok(())) => return self.pool.put(key, sender),
                // Closed: the origin answered `Connection: close`, or the body was cut.
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
        // The request body is still going (the origin answered early): wait in the
        // background rather than hold up the end of the response.
        let pool = self.pool.clone();
        let stopping = self.tasks.stopping();
        self.tasks.spawn(async move {
            tokio::select! {
                ready = sender.ready() => if ready.is_ok() {
                    pool.put(key, sender);
                },
                // Stopping: this connection would only be closed again.
                () = stopping => {}
            }
        });
    }

    /// `cert_verification_mode = disabled`: say so once per origin, not per request.
    fn warn_unverified(&self, origin: &Endpoint) {
        let key = format!(
            "{} {}",
            origin.target,
            String::from_utf8_lossy(origin.host_header.as_bytes())
        );
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() >= MAX_WARNED {
            warned.clear();
        }
        if warned.insert(key) {
            warn!(
                dest = %origin.target,
                host = ?origin.host_header,
                "TLS certificate verification is disabled for this origin"
            );
        }
    }
}

/// The connection to give back after an exchange: HTTP/1.1 ones only.
fn lease(sender: Sender) -> Option<Sender> {
    if sender.is_http2() {
        None
    } else {
        Some(sender)
    }
}

/// The stream's reply for the origin's response head: hop-by-hop fields removed, the body's
/// framing from what hyper knows of it.
fn response_head(response: &Response<Incoming>) -> HttpResponseHead {
    let body = response.body();
    HttpResponseHead {
        status: response.status().as_u16(),
        headers: headers_to_wire(response.headers(), false),
        body: body_kind(&body.size_hint(), body.is_end_stream()),
    }
}

/// Write the origin's response head (a `101`'s included) to the stream. A head too large for
/// one frame is answered `http_response_header_section_size` instead: nothing has been
/// written yet, so the edge can still answer its client with an error. `Err` is how the
/// stream ended then.
async fn write_head<S: SendStream>(send: &mut S, head: HttpResponseHead) -> Result<(), StreamEnd> {
    let status = head.status;
    match write_frame(send, &StreamReply::Http(head)).await {
        Ok(()) => Ok(()),
        Err(MuxError::Encode(EncodeError::TooLarge(len))) => {
            let error = ProxyErrorReply {
                status: ProxyStatus::HttpResponseHeaderSectionSize,
                details: format!(
                    "the origin's response head (status {status}) takes {len} bytes on the \
                     stream, more than the {MAX_FRAME_LEN}-byte frame limit"
                ),
            };
            Err(refuse(send, error).await)
        }
        Err(err) => Err(StreamEnd::cancelled(format!(
            "the edge went away before the response head was written: {err}"
        ))),
    }
}

/// Reset the stream after the response body of status `status` stopped early; how the
/// exchange ended.
fn body_failed<S: SendStream>(send: &mut S, end: BodyEnd, status: u16) -> Ending {
    match end {
        BodyEnd::Cancelled(reason) => {
            send.reset(RESET_CANCELLED);
            Ending::Cancelled(format!(
                "during the response body (status {status}): {reason}"
            ))
        }
        BodyEnd::Origin(err) => {
            send.reset(RESET_INTERNAL);
            Ending::Aborted(format!(
                "the origin's response body (status {status}) failed: {}",
                error_chain(&err)
            ))
        }
    }
}

/// Copy the response body to the stream chunk by chunk, as it arrives. Stops early when the
/// edge stops reading or its upload fails.
async fn stream_body<S: SendStream>(
    send: &mut S,
    mut body: Incoming,
    upload: &mut UploadWatch,
    sent: &mut u64,
) -> Result<(), BodyEnd> {
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            code = send.stopped() => {
                return Err(BodyEnd::Cancelled(format!("edge stopped reading ({code:?})")));
            }
            state = upload.changed() => {
                if let target::Upload::Failed(reason) = state {
                    return Err(BodyEnd::Cancelled(format!("request body aborted: {reason}")));
                }
                continue;
            }
        };
        match frame {
            None => return Ok(()),
            Some(Err(err)) => return Err(BodyEnd::Origin(err)),
            Some(Ok(frame)) => {
                // Trailers have no place on the stream; they are dropped.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                let len = data.len() as u64;
                send.write_chunk(data)
                    .await
                    .map_err(|err| BodyEnd::Cancelled(err.to_string()))?;
                *sent += len;
            }
        }
    }
}

/// Start HTTP/1.1 on a connected origin socket; the connection is driven by its own task in
/// `tasks`, cut when they are forced.
async fn handshake_http1<T>(
    io: T,
    span: tracing::Span,
    tasks: &Shutdown,
) -> Result<Sender, ProxyErrorReply>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|err| ProxyErrorReply {
            status: ProxyStatus::ProxyInternalError,
            details: format!("cannot start HTTP/1.1 on the origin connection: {err}"),
        })?;
    let forced = tasks.forced();
    tasks.spawn_in(span, async move {
        tokio::select! {
            done = connection.with_upgrades() => match done {
                Ok(()) => debug!("origin connection closed"),
                Err(err) => debug!(error = %error_chain(&err), "origin connection failed"),
            },
            () = forced => debug!("origin connection cut: shutting down"),
        }
    });
    Ok(Sender::Http1(sender))
}

/// Start HTTP/2 on a TLS connection where the origin chose `h2`; driven like
/// [`handshake_http1`].
async fn handshake_http2<T>(
    io: T,
    span: tracing::Span,
    tasks: &Shutdown,
) -> Result<Sender, ProxyErrorReply>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|err| ProxyErrorReply {
            status: ProxyStatus::HttpProtocolError,
            details: format!("HTTP/2 handshake with the origin failed: {err}"),
        })?;
    let forced = tasks.forced();
    tasks.spawn_in(span, async move {
        tokio::select! {
            done = connection => match done {
                Ok(()) => debug!("origin connection closed"),
                Err(err) => debug!(error = %error_chain(&err), "origin connection failed"),
            },
            () = forced => debug!("origin connection cut: shutting down"),
        }
    });
    Ok(Sender::Http2(sender))
}

/// The Proxy-Status error for a failed request before the response head.
fn hyper_error(err: &hyper::Error) -> ProxyErrorReply {
    let details = error_chain(err);
    // Too large: more header fields than hyper's 100, or a head past its read buffer.
    let status = if err.is_parse_too_large() {
        ProxyStatus::HttpResponseHeaderSectionSize
    } else if err.is_parse() || err.is_parse_status() {
        ProxyStatus::HttpProtocolError
    } else if err.is_timeout() {
        ProxyStatus::ConnectionReadTimeout
    } else if err.is_incomplete_message()
        || err.is_canceled()
        || err.is_closed()
        || has_io_source(err)
    {
        ProxyStatus::ConnectionTerminated
    } else {
        ProxyStatus::HttpProtocolError
    };
    ProxyErrorReply { status, details }
}

fn has_io_source(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = err.source();
    while let Some(inner) = source {
        if inner.is::<std::io::Error>() {
            return true;
        }
        source = inner.source();
    }
    false
}

/// An error and its causes, `: `-separated (hyper's own message is terse).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}

/// Answer with a Proxy-Status error and finish the stream; the stream ends refused.
async fn refuse<S: SendStream>(send: &mut S, error: ProxyErrorReply) -> StreamEnd {
    // A refusal is rare and small: the copy keeps the error for the stream's log line.
    if write_frame(send, &StreamReply::Error(error.clone()))
        .await
        .is_ok()
    {
        // The edge may already be gone; nothing more to tell it.
        let _ = send.finish();
    }
    StreamEnd::refused(error)
}
