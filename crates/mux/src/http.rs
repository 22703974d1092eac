//! HTTP exchanges over a stream: header conversion and bodies without buffering.
//!
//! A body travels as raw bytes after the head frame and ends where the sender finishes its
//! direction of the stream; nothing is buffered whole. [`RecvBody`] turns the receiving half
//! into an [`http_body::Body`]; [`send_body`] pumps any body into the sending half.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use underpass_proto::{BodyKind, Header, RESET_CANCELLED};
use underpass_transport::{RecvStream, SendStream, StreamError};

/// Largest chunk taken from the stream per body frame.
const BODY_CHUNK: usize = 256 * 1024;

/// Header fields that are meaningful only for one hop (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Convert a header map to wire headers, dropping hop-by-hop fields and any field named in
/// `Connection`. With `keep_upgrade`, `Upgrade` is kept (for a protocol-upgrade request or a
/// `101` response; the receiving side re-adds `Connection: upgrade`).
pub fn headers_to_wire(headers: &HeaderMap, keep_upgrade: bool) -> Vec<Header> {
    let named_in_connection: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            if keep_upgrade && name == "upgrade" {
                return true;
            }
            !HOP_BY_HOP.contains(&name) && !named_in_connection.iter().any(|n| n == name)
        })
        .map(|(name, value)| Header {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

/// Convert wire headers back to a header map. Fields that are not valid HTTP are dropped
/// (the peer is trusted to send valid ones; a bad one must not abort the exchange).
pub fn wire_to_headers(headers: &[Header]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for header in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(&header.value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

/// How a body of this size hint is delimited on the wire.
pub fn body_kind(hint: &SizeHint, is_end_stream: bool) -> BodyKind {
    if is_end_stream {
        BodyKind::Empty
    } else {
        match hint.exact() {
            Some(0) => BodyKind::Empty,
            Some(len) => BodyKind::Length(len),
            None => BodyKind::Streaming,
        }
    }
}

/// Why pumping a body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body source failed (client went away, origin reset).
    #[error("body source failed: {0}")]
    Source(String),
    /// The stream failed (peer reset or stopped it, connection lost).
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Send every data frame of `body` on `send`, then finish the stream. Trailers are dropped.
///
/// On a source error the stream is reset with [`RESET_CANCELLED`], so the peer aborts too.
pub async fn send_body<B, S>(body: B, send: &mut S) -> Result<u64, BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
    S: SendStream,
{
    let mut body = std::pin::pin!(body);
    let mut sent = 0u64;
    loop {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        match frame {
            None => {
                send.finish()?;
                return Ok(sent);
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        sent += data.len() as u64;
                        send.write_chunk(data).await?;
                    }
                }
            }
            Some(Err(err)) => {
                send.reset(RESET_CANCELLED);
                return Err(BodyError::Source(err.to_string()));
            }
        }
    }
}

/// The rest of a receiving stream as an HTTP body.
///
/// Each frame is one [`RecvStream::poll_read_chunk`] call: nothing is allocated per chunk.
/// Dropping the body before the end stops the stream with [`RESET_CANCELLED`], so the sender
/// learns at once that nobody reads any more (this is how cancellation travels back).
pub struct RecvBody<R: RecvStream> {
    /// `None` once the body is complete or failed.
    recv: Option<R>,
    remaining: Option<u64>,
}

impl<R: RecvStream> RecvBody<R> {
    /// Wrap a stream; `kind` gives the size hint (an exact length is checked on the way).
    pub fn new(recv: R, kind: BodyKind) -> Self {
        let (recv, remaining) = match kind {
            BodyKind::Empty => (None, Some(0)),
            BodyKind::Length(len) => (Some(recv), Some(len)),
            BodyKind::Streaming | BodyKind::Upgrade => (Some(recv), None),
        };
        RecvBody { recv, remaining }
    }
}

// The stream is never pinned in place: `poll_frame` only takes `&mut` to it.
impl<R: RecvStream> Unpin for RecvBody<R> {}

impl<R: RecvStream> Body for RecvBody<R> {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        let Some(recv) = this.recv.as_mut() else {
            return Poll::Ready(None);
        };
        let result = ready!(recv.poll_read_chunk(cx, BODY_CHUNK));
        Poll::Ready(match result {
            Ok(Some(chunk)) => {
                if let Some(remaining) = this.remaining.as_mut() {
                    match remaining.checked_sub(chunk.len() as u64) {
                        Some(left) => *remaining = left,
                        None => {
                            this.recv = None;
                            return Poll::Ready(Some(Err(StreamError::Closed)));
                        }
                    }
                }
                // A body of known length is complete at its last byte; the stream's end is
                // not waited for (dropping the half stops what may follow, quietly).
                if this.remaining == Some(0) {
                    this.recv = None;
                }
                Some(Ok(Frame::data(chunk)))
            }
            Ok(None) => {
                this.recv = None;
                if this.remaining.is_some_and(|left| left > 0) {
                    Some(Err(StreamError::Closed))
                } else {
                    None
                }
            }
            Err(err) => {
                this.recv = None;
                Some(Err(err))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

impl<R: RecvStream> Drop for RecvBody<R> {
    fn drop(&mut self) {
        if let Some(recv) = &mut self.recv {
            recv.stop(RESET_CANCELLED);
        }
    }
}
