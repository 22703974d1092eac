//! The client socket of a `mode = "proxy"` binding as hyper sees it: hyper's own error answers
//! are replaced by the edge's, with a `Proxy-Status` header.
//!
//! hyper answers a request head it cannot parse by itself (`400` for a malformed request line
//! or header field, `414` for a target over 65,534 bytes, `431` for a head over its buffer or
//! with too many fields) and offers no hook to change that answer. The edge never writes such a
//! head: every response it writes carries a `Date` (its own, from
//! [`date_value`](crate::front::response::date_value); hyper's is turned off), so a write that
//! is exactly hyper's bare error head (its status line, `content-length: 0`, `connection:
//! close`, nothing else), made while no response is open, can only be hyper's. That write is
//! replaced by the edge's error response; hyper closes the connection right after it, and
//! anything hyper would write after it is refused.
//!
//! `414` or `431`: hyper reads at most [`MAX_HEAD_BUFFER`] bytes of a head, so a head with a
//! target that long is "too large" to hyper before its target is seen. The first request of a
//! connection starts at its first byte, so there the length of the first line tells a target
//! over [`REQUEST_TARGET_LIMIT`] (`414`) from too many header bytes (`431`); on a reused
//! connection the head's start is not known here and it is `431`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use underpass_proto::ProxyStatus;

use crate::front::limits::{MAX_HEADERS, MAX_HEAD_BUFFER, REQUEST_TARGET_LIMIT};
use crate::front::response::{error_response_bytes, FetchBody};

/// Longest write checked for being hyper's error head (its longest is about 90 bytes).
const MAX_ERROR_HEAD: usize = 256;

/// What the service and the socket share: how many requests were dispatched, how many of
/// their responses are still being written, and the status of the edge's answer that replaced
/// hyper's, if one did.
#[derive(Debug, Default)]
pub(super) struct Responses {
    /// Requests handed to the service on this connection.
    dispatched: AtomicUsize,
    /// Responses whose body hyper has not dropped yet (the service still runs, or the body is
    /// being written).
    open: AtomicUsize,
    /// The status of the answer written in place of hyper's error head; 0 if none.
    refused: AtomicU16,
}

impl Responses {
    /// A request was dispatched: its response is open until the returned guard is dropped.
    pub(in crate::front) fn begin(self: &Arc<Self>) -> OpenResponse {
        self.dispatched.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenResponse(self.clone())
    }

    /// The answer that replaced hyper's own, if one did: its status and details.
    pub(in crate::front) fn refused(&self) -> Option<(StatusCode, String)> {
        let status = StatusCode::from_u16(self.refused.load(Ordering::Relaxed)).ok()?;
        Some((status, refusal_details(status)))
    }
}

/// Counts one response as open; dropped with the response's body.
#[derive(Debug)]
pub(super) struct OpenResponse(Arc<Responses>);

impl Drop for OpenResponse {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its response counted as open until hyper drops it.
pub(super) struct TrackedBody {
    inner: FetchBody,
    _open: OpenResponse,
}

impl TrackedBody {
    /// `response` with its body tracked by `open`.
    pub(in crate::front) fn response(
        response: Response<FetchBody>,
        open: OpenResponse,
    ) -> Response<TrackedBody> {
        response.map(|inner| TrackedBody { inner, _open: open })
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's TCP stream, given to hyper.
pub(in crate::front) struct ClientIo {
    stream: TcpStream,
    responses: Arc<Responses>,
    /// Length of the connection's first line so far, and whether it ended.
    first_line: (usize, bool),
    /// The edge's answer being written in place of hyper's error head, with how much of it
    /// is written and the length of the head it replaces.
    replacing: Option<(Vec<u8>, usize, usize)>,
    /// Set once hyper's error head was replaced: nothing more is written.
    replaced: bool,
}

impl ClientIo {
    pub(in crate::front) fn new(stream: TcpStream) -> Self {
        ClientIo {
            stream,
            responses: Arc::new(Responses::default()),
            first_line: (0, false),
            replacing: None,
            replaced: false,
        }
    }

    /// The counters the service updates.
    pub(in crate::front) fn responses(&self) -> Arc<Responses> {
        self.responses.clone()
    }

    /// The TCP stream, for an upgraded connection's pipe.
    pub(in crate::front) fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Start replacing `bytes` with the edge's answer if they are hyper's own error head,
    /// written while no response is open. Whether they were.
    fn start_replacing(&mut self, bytes: &[u8]) -> bool {
        if self.responses.open.load(Ordering::Relaxed) != 0 {
            return false;
        }
        let Some(status) = hyper_error_status(bytes) else {
            return false;
        };
        let first_request = self.responses.dispatched.load(Ordering::Relaxed) == 0;
        let (line, ended) = self.first_line;
        let long_target = first_request && (!ended || line > REQUEST_TARGET_LIMIT);
        let status = match status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE if long_target => StatusCode::URI_TOO_LONG,
            status => status,
        };
        let answer = error_response_bytes(
            status,
            ProxyStatus::HttpRequestError,
            &refusal_details(status),
        );
        self.responses
            .refused
            .store(status.as_u16(), Ordering::Relaxed);
        self.replacing = Some((answer, 0, bytes.len()));
        self.replaced = true;
        true
    }

    /// Write the rest of the replacement; `Ok(len)` of the head it replaces once all is out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((bytes, written, replaced_len)) = &mut self.replacing else {
            return Poll::Ready(Ok(0));
        };
        while *written < bytes.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        let len = *replaced_len;
        self.replacing = None;
        Poll::Ready(Ok(len))
    }
}

/// The `Proxy-Status` details of the edge's answer to a head hyper refused with `status`.
fn refusal_details(status: StatusCode) -> String {
    match status {
        StatusCode::URI_TOO_LONG => {
            format!("the request target is longer than {REQUEST_TARGET_LIMIT} bytes")
        }
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => format!(
            "the request head is larger than {MAX_HEAD_BUFFER} bytes or has more than \
             {MAX_HEADERS} header fields"
        ),
        _ => "the request head is malformed: a bad request line, header field or framing \
              header (RFC 9112)"
            .to_owned(),
    }
}

/// The status of `bytes` if they are exactly a head hyper writes for a parse error: `HTTP/1.1
/// 400|414|431 <reason>`, then only `content-length: 0` and `connection: close`, then the
/// blank line. Every head the edge writes has a `Date` and so never matches.
fn hyper_error_status(bytes: &[u8]) -> Option<StatusCode> {
    if bytes.len() > MAX_ERROR_HEAD || !bytes.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(&bytes[..bytes.len() - 4]).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let code = status_line.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    let status = match code {
        "400" | "414" | "431" => StatusCode::from_bytes(code.as_bytes()).ok()?,
        _ => return None,
    };
    let reason = status.canonical_reason()?;
    if status_line != format!("HTTP/1.1 {code} {reason}") {
        return None;
    }
    lines
        .all(|line| {
            line.eq_ignore_ascii_case("content-length: 0")
                || line.eq_ignore_ascii_case("connection: close")
        })
        .then_some(status)
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        if !this.first_line.1 {
            let read = &buf.filled()[before..];
            match read.iter().position(|&b| b == b'\n') {
                Some(at) => this.first_line = (this.first_line.0 + at, true),
                None => this.first_line.0 += read.len(),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_some() {
            return this.poll_replacement(cx);
        }
        if this.replaced {
            // hyper closes after its error head; nothing may follow the edge's answer.
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.len() <= MAX_ERROR_HEAD && this.start_replacing(buf) {
            return this.poll_replacement(cx);
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_some() {
            return this.poll_replacement(cx);
        }
        if this.replaced {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total <= MAX_ERROR_HEAD && this.responses.open.load(Ordering::Relaxed) == 0 {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if this.start_replacing(&joined) {
                return this.poll_replacement(cx);
            }
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_replacement(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_hyper_error_heads() {
        let hyper_400 =
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        assert_eq!(hyper_error_status(hyper_400), Some(StatusCode::BAD_REQUEST));
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
                          content-length: 0\r\n\r\n";
        assert_eq!(
            hyper_error_status(hyper_431),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        // Anything the edge writes has a Date.
        let with_date = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\
                          date: Thu, 03 Dec 2026 13:00:00 GMT\r\n\r\n";
        assert_eq!(hyper_error_status(with_date), None);
        assert_eq!(
            hyper_error_status(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        assert_eq!(hyper_error_status(b"HTTP/1.1 400 Bad Request\r\n"), None);
        assert_eq!(hyper_error_status(b"0\r\n\r\n"), None);
    }
}
