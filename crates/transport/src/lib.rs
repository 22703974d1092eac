//! Transports between connector and edge, behind one trait.
//!
//! A transport gives a [`Connection`] that opens and accepts bidirectional streams, each split
//! into a [`SendStream`] and a [`RecvStream`] that move [`Bytes`] chunks without copying. QUIC
//! ([`quic`]) is the primary transport; an HTTP/2-over-TLS fallback implements the same traits
//! so the multiplexer above does not care which one it runs on.
//!
//! # Cancel safety
//!
//! - [`RecvStream::read_chunk`], [`RecvStream::read_chunks`] and [`Connection::accept_bi`] are
//!   cancel-safe: dropping the
//!   future loses no data, the next call returns what the dropped one would have.
//! - [`SendStream::write_chunk`] is **not** cancel-safe: if its future is dropped, part of the
//!   chunk may have been sent. Callers that race a write against something else must reset the
//!   stream when they abandon the write.
//! - [`Connection::open_bi`] may be cancelled; a stream that was opened but not returned is
//!   reset by its drop.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;

pub mod quic;
pub mod tls;

/// The tokio runtime for a binary that runs a tunnel end: `worker_threads` 1 gives a
/// single-threaded runtime (the default of both binaries: one QUIC connection is processed
/// serially anyway, so more workers mostly add cross-thread wake-ups), 0 one worker per core,
/// `n` that many workers.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if worker_threads > 1 {
        builder.worker_threads(worker_threads);
    }
    builder.enable_all().build()
}

/// A stream-level or connection-level failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The peer reset the stream (its send side) with this application code.
    #[error("stream reset by peer (code {0:#x})")]
    Reset(u32),
    /// The peer asked us to stop sending on this stream, with this application code.
    #[error("peer stopped the stream (code {0:#x})")]
    Stopped(u32),
    /// The stream was already finished or reset locally.
    #[error("stream already closed")]
    Closed,
    /// The connection carrying the stream is gone.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
}

/// The sending half of a bidirectional stream.
pub trait SendStream: Send + 'static {
    /// Send one chunk; returns once the transport has taken it (flow control permitting).
    /// Not cancel-safe (see the crate docs).
    fn write_chunk(&mut self, data: Bytes) -> impl Future<Output = Result<(), StreamError>> + Send;

    /// Finish this direction gracefully: the peer reads end-of-stream after the data sent.
    /// This is how half-close travels.
    fn finish(&mut self) -> Result<(), StreamError>;

    /// Abandon this direction: the peer sees [`StreamError::Reset`] with `code`; unsent data
    /// is discarded.
    fn reset(&mut self, code: u32);

    /// Resolves when the peer stops reading this stream (`Some(code)`) or has received
    /// everything after [`finish`](SendStream::finish) (`None`).
    fn stopped(&mut self) -> impl Future<Output = Result<Option<u32>, StreamError>> + Send;
}

/// The receiving half of a bidirectional stream.
pub trait RecvStream: Send + 'static {
    /// Read the next chunk of at most `max` bytes; `Ok(None)` at end of stream (the peer
    /// finished). Cancel-safe.
    fn read_chunk(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<Bytes>, StreamError>> + Send;

    /// Fill `bufs` with the chunks that are ready, waiting only for the first; returns how
    /// many were filled (at least one), `Ok(None)` at end of stream. Lets a reader write many
    /// small transport chunks with one vectored write. `bufs` must not be empty. Cancel-safe.
    ///
    /// The default reads one chunk with [`read_chunk`](RecvStream::read_chunk).
    fn read_chunks(
        &mut self,
        bufs: &mut [Bytes],
    ) -> impl Future<Output = Result<Option<usize>, StreamError>> + Send {
        async move {
            let Some(first) = bufs.first_mut() else {
                return Ok(Some(0));
            };
            Ok(self.read_chunk(usize::MAX).await?.map(|chunk| {
                *first = chunk;
                1
            }))
        }
    }

    /// Tell the peer to stop sending: it sees [`StreamError::Stopped`] with `code`.
    fn stop(&mut self, code: u32);
}

/// An established, authenticated transport connection between connector and edge.
pub trait Connection: Clone + Send + Sync + 'static {
    /// Sending half of a stream.
    type Send: SendStream;
    /// Receiving half of a stream.
    type Recv: RecvStream;

    /// Open a new bidirectional stream. The peer learns of it when the first bytes arrive.
    fn open_bi(&self)
        -> impl Future<Output = Result<(Self::Send, Self::Recv), StreamError>> + Send;

    /// Accept the next bidirectional stream the peer opened. Cancel-safe.
    fn accept_bi(
        &self,
    ) -> impl Future<Output = Result<(Self::Send, Self::Recv), StreamError>> + Send;

    /// Close the connection at once with an application code and reason.
    fn close(&self, code: u32, reason: &[u8]);

    /// Resolves when the connection is closed, with why.
    fn closed(&self) -> impl Future<Output = StreamError> + Send;

    /// Fill `output` with TLS keying material (RFC 5705 / RFC 8446 exporter) for `label` and
    /// `context`. Used to bind the registration proof to this TLS session.
    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), StreamError>;

    /// The peer's address.
    fn remote_address(&self) -> SocketAddr;
}
