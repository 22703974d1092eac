//! [`H2Send`] and [`H2Recv`]: the halves of one HTTP/2 stream (one request and its response),
//! implementing the crate's stream traits with h2's flow control.

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use h2::Reason;
use tokio::sync::watch;

use super::state::ConnState;
use crate::{RecvStream, SendStream, StreamError};

/// Reset code sent when an [`H2Send`] is dropped while neither finished nor reset (the same
/// code as [`crate::quic::RESET_ON_DROP`]), so an abandoned stream never looks complete.
pub const RESET_ON_DROP: u32 = 0x10;

/// Largest piece of send window a write asks h2 for at once; the stream window and
/// `http2.max_send_buffer` bound what it is granted.
const MAX_RESERVE: usize = 1 << 20;

/// What both halves of a stream share.
struct Shared {
    /// The h2 send stream: the send half writes on it, the receive half resets it on `stop`
    /// (HTTP/2 resets whole streams).
    send: Mutex<h2::SendStream<Bytes>>,
    /// This side reset the stream (the send half's `reset`, the receive half's `stop`), so a
    /// reset h2 reports is our own.
    reset_locally: AtomicBool,
    /// The receive half read the peer's END_STREAM.
    peer_finished: watch::Sender<bool>,
    /// The send half queued END_STREAM: a `stop` then must not reset the stream, since h2
    /// discards a reset stream's queued DATA (a refusal's reply would be lost).
    send_finished: AtomicBool,
    conn: ConnRef,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, h2::SendStream<Bytes>> {
        // Nothing panics while holding it; if something did, the stream is still usable.
        self.send
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reset(&self, send: &mut h2::SendStream<Bytes>, code: u32) {
        self.reset_locally.store(true, Ordering::Release);
        send.send_reset(Reason::from(code));
    }

    /// Why sending failed: our own reset, the peer's, or the connection's end.
    fn send_error(
        &self,
        send: &mut h2::SendStream<Bytes>,
        error: Option<&h2::Error>,
    ) -> StreamError {
        if self.reset_locally.load(Ordering::Acquire) {
            return StreamError::Closed;
        }
        // Only asked to learn the reason: the caller returns an error and waits no more.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(result) = send.poll_reset(&mut cx) {
            return self.reset_error(result);
        }
        match error {
            Some(error) => self.conn.state.lost(error),
            None => self.conn.state.error().unwrap_or(StreamError::Closed),
        }
    }

    /// A reset reported by h2 as seen by the send half: the peer's reset (or stop) is
    /// [`StreamError::Stopped`].
    fn reset_error(&self, result: Result<Reason, h2::Error>) -> StreamError {
        if self.reset_locally.load(Ordering::Acquire) {
            return StreamError::Closed;
        }
        // As over QUIC, a stream that fails once its connection has ended reports that end:
        // the resets h2 sends for handles dropped during a close are not the application's.
        if let Some(error) = self.conn.state.error() {
            return error;
        }
        match result {
            Ok(reason) => StreamError::Stopped(u32::from(reason)),
            Err(error) => self.conn.state.lost(&error),
        }
    }
}

/// What a stream holds of its connection: the shared state, and a reference that keeps the
/// connection open while the stream lives.
pub(crate) struct ConnRef {
    pub(crate) state: Arc<ConnState>,
    _alive: Arc<dyn std::any::Any + Send + Sync>,
}

impl ConnRef {
    /// `alive` is dropped with the stream.
    pub(crate) fn new(state: Arc<ConnState>, alive: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        ConnRef {
            state,
            _alive: alive,
        }
    }
}

/// The two halves of a new stream on `send`, receiving from `recv`.
pub(crate) fn pair(send: h2::SendStream<Bytes>, recv: Incoming, conn: ConnRef) -> (H2Send, H2Recv) {
    let shared = Arc::new(Shared {
        send: Mutex::new(send),
        reset_locally: AtomicBool::new(false),
        peer_finished: watch::Sender::new(false),
        send_finished: AtomicBool::new(false),
        conn,
    });
    let state = match recv {
        Incoming::Head(response) => RecvState::Head(response),
        Incoming::Body(body) => RecvState::Body(body),
    };
    let send = H2Send {
        shared: shared.clone(),
        finished: false,
        reset: false,
    };
    let recv = H2Recv {
        shared,
        state,
        buffered: Bytes::new(),
        stopped: false,
    };
    (send, recv)
}

/// Where a receive half gets its bytes: a response still to come (a stream the edge opened,
/// on the edge), or a body already there.
pub(crate) enum Incoming {
    Head(h2::client::ResponseFuture),
    Body(h2::RecvStream),
}

/// The sending half of an HTTP/2 stream (a request body on the edge, a response body on the
/// connector).
///
/// Dropping it without [`finish`](SendStream::finish) or [`reset`](SendStream::reset) resets
/// the stream with [`RESET_ON_DROP`] (which, in HTTP/2, ends both directions).
pub struct H2Send {
    shared: Arc<Shared>,
    finished: bool,
    reset: bool,
}

impl fmt::Debug for H2Send {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Send")
            .field("stream", &self.stream_id())
            .field("finished", &self.finished)
            .field("reset", &self.reset)
            .finish()
    }
}

impl H2Send {
    /// The HTTP/2 stream id.
    pub fn stream_id(&self) -> u32 {
        self.shared.lock().stream_id().as_u32()
    }

    /// Wait for send window; returns how much may be sent now (above zero).
    fn poll_window(&self, cx: &mut Context<'_>, want: usize) -> Poll<Result<usize, StreamError>> {
        let mut send = self.shared.lock();
        let capacity = send.capacity();
        if capacity > 0 {
            return Poll::Ready(Ok(capacity));
        }
        send.reserve_capacity(want.min(MAX_RESERVE));
        match send.poll_capacity(cx) {
            Poll::Ready(Some(Ok(granted))) if granted > 0 => Poll::Ready(Ok(granted)),
            // h2 documents the grant as above zero; should it not be, ask again.
            Poll::Ready(Some(Ok(_))) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Err(self.shared.send_error(&mut send, Some(&error))))
            }
            // The stream no longer sends: reset, or its connection ended (a reset wakes the
            // task waiting here).
            Poll::Ready(None) => Poll::Ready(Err(self.shared.send_error(&mut send, None))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl SendStream for H2Send {
    async fn write_chunk(&mut self, mut data: Bytes) -> Result<(), StreamError> {
        if self.finished || self.reset {
            return Err(StreamError::Closed);
        }
        while !data.is_empty() {
            let window = poll_fn(|cx| self.poll_window(cx, data.len())).await?;
            let piece = data.split_to(window.min(data.len()));
            let mut send = self.shared.lock();
            send.send_data(piece, false)
                .map_err(|error| self.shared.send_error(&mut send, Some(&error)))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StreamError> {
        if self.finished || self.reset {
            return Err(StreamError::Closed);
        }
        self.finished = true;
        let mut send = self.shared.lock();
        send.send_data(Bytes::new(), true)
            .map_err(|error| self.shared.send_error(&mut send, Some(&error)))?;
        self.shared.send_finished.store(true, Ordering::Release);
        Ok(())
    }

    fn reset(&mut self, code: u32) {
        if self.reset {
            return;
        }
        self.reset = true;
        self.shared.reset(&mut self.shared.lock(), code);
    }

    async fn stopped(&mut self) -> Result<Option<u32>, StreamError> {
        if self.reset {
            return Err(StreamError::Closed);
        }
        let shared = &self.shared;
        let finished = self.finished;
        let reset = poll_fn(|cx| shared.lock().poll_reset(cx));
        // Without an acknowledgement in HTTP/2, "the peer has everything" is taken to be "the
        // stream closed both ways without a reset" (see the module docs).
        let delivered = async {
            if !finished {
                return std::future::pending().await;
            }
            // The sender lives in `shared`.
            let _ = shared
                .peer_finished
                .subscribe()
                .wait_for(|done| *done)
                .await;
        };
        tokio::select! {
            biased;
            result = reset => match shared.reset_error(result) {
                StreamError::Stopped(code) => Ok(Some(code)),
                error => Err(error),
            },
            () = delivered => Ok(None),
            error = shared.conn.state.ended() => Err(error),
        }
    }
}

impl Drop for H2Send {
    fn drop(&mut self) {
        if !self.finished && !self.reset {
            self.shared.lock().send_reset(Reason::from(RESET_ON_DROP));
        }
    }
}

enum RecvState {
    /// The response head has not arrived yet (on the edge, a stream it opened).
    Head(h2::client::ResponseFuture),
    Body(h2::RecvStream),
    /// END_STREAM was read.
    Done,
    /// The response head never came; every read reports why.
    Failed(StreamError),
}

/// The receiving half of an HTTP/2 stream. Window is released for exactly the bytes handed
/// to the caller. Dropping it discards what arrives later (h2 releases its window).
pub struct H2Recv {
    shared: Arc<Shared>,
    state: RecvState,
    /// The rest of a DATA frame larger than the caller's `max`; its window is not released
    /// yet.
    buffered: Bytes,
    stopped: bool,
}

impl fmt::Debug for H2Recv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Recv")
            .field("buffered", &self.buffered.len())
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl H2Recv {
    fn recv_error(&self, error: &h2::Error) -> StreamError {
        if error.is_reset() && self.shared.reset_locally.load(Ordering::Acquire) {
            // Reset by this side: `stop`, or the send half's `reset` (or drop).
            return StreamError::Closed;
        }
        // The connection's end, as for the send half.
        if let Some(ended) = self.shared.conn.state.error() {
            return ended;
        }
        match error.reason() {
            Some(reason) if error.is_reset() && error.is_remote() => {
                StreamError::Reset(u32::from(reason))
            }
            // Reset by h2 for a protocol error of the peer's.
            Some(reason) if error.is_reset() => StreamError::Reset(u32::from(reason)),
            _ => self.shared.conn.state.lost(error),
        }
    }

    /// Hand out at most `max` bytes of `chunk`, keeping the rest, and release their window.
    fn take(&mut self, mut chunk: Bytes, max: usize) -> Bytes {
        if chunk.len() > max {
            self.buffered = chunk.split_off(max);
        }
        if let RecvState::Body(body) = &mut self.state {
            // Fails only once the stream is gone, when its window no longer matters.
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        chunk
    }
}

impl RecvStream for H2Recv {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        if self.stopped {
            return Poll::Ready(Err(StreamError::Closed));
        }
        let max = max.max(1);
        if !self.buffered.is_empty() {
            let chunk = std::mem::take(&mut self.buffered);
            return Poll::Ready(Ok(Some(self.take(chunk, max))));
        }
        loop {
            match &mut self.state {
                RecvState::Head(response) => match Pin::new(response).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(response)) if response.status() == http::StatusCode::OK => {
                        self.state = RecvState::Body(response.into_body());
                    }
                    Poll::Ready(result) => {
                        let error = match result {
                            Ok(response) => StreamError::ConnectionLost(format!(
                                "the connector answered a stream with HTTP status {}",
                                response.status()
                            )),
                            Err(error) => self.recv_error(&error),
                        };
                        self.state = RecvState::Failed(error.clone());
                        return Poll::Ready(Err(error));
                    }
                },
                RecvState::Body(body) => match body.poll_data(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(chunk))) if chunk.is_empty() => continue,
                    Poll::Ready(Some(Ok(chunk))) => {
                        return Poll::Ready(Ok(Some(self.take(chunk, max))))
                    }
                    Poll::Ready(Some(Err(error))) => {
                        return Poll::Ready(Err(self.recv_error(&error)))
                    }
                    Poll::Ready(None) => {
                        self.state = RecvState::Done;
                        self.shared.peer_finished.send_replace(true);
                    }
                },
                RecvState::Done => return Poll::Ready(Ok(None)),
                RecvState::Failed(error) => return Poll::Ready(Err(error.clone())),
            }
        }
    }

    async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Option<usize>, StreamError> {
        if bufs.is_empty() {
            return Ok(Some(0));
        }
        poll_fn(|cx| {
            let mut filled = 0;
            while filled < bufs.len() {
                match self.poll_read_chunk(cx, usize::MAX) {
                    Poll::Ready(Ok(Some(chunk))) => {
                        bufs[filled] = chunk;
                        filled += 1;
                    }
                    // The end or an error is reported again by the next call (the state
                    // stays), so the chunks gathered so far are returned first.
                    Poll::Ready(Ok(None)) if filled == 0 => return Poll::Ready(Ok(None)),
                    Poll::Ready(Err(error)) if filled == 0 => return Poll::Ready(Err(error)),
                    Poll::Pending if filled == 0 => return Poll::Pending,
                    _ => break,
                }
            }
            Poll::Ready(Ok(Some(filled)))
        })
        .await
    }

    /// HTTP/2 has no STOP_SENDING: this resets the whole stream (RST_STREAM with `code`),
    /// which also ends this side's sending, data queued but unsent included.
    fn stop(&mut self, code: u32) {
        if self.stopped || matches!(self.state, RecvState::Done) {
            return;
        }
        self.stopped = true;
        if self.shared.send_finished.load(Ordering::Acquire) {
            // Our direction is complete but may still sit in h2's queue, which a reset would
            // discard: stop reading instead (dropping the body discards what arrives and
            // releases its window); the stream closes when the peer finishes or resets.
            self.state = RecvState::Failed(StreamError::Closed);
            return;
        }
        self.shared.reset(&mut self.shared.lock(), code);
    }
}
