//! [`QuicConnection`] and its stream halves, implementing the crate's transport traits on quinn.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, ReadError, StoppedError, VarInt, WriteError};

use crate::{Connection, ConnectionStats, RecvStream, SendStream, StreamError};

/// Reset code sent when a [`QuicSend`] is dropped while neither finished nor reset (equal to
/// `underpass_proto::RESET_CANCELLED`), so an abandoned stream never looks complete.
pub const RESET_ON_DROP: u32 = 0x10;

/// An established QUIC connection between connector and edge.
#[derive(Debug, Clone)]
pub struct QuicConnection {
    inner: quinn::Connection,
}

impl QuicConnection {
    pub(crate) fn new(inner: quinn::Connection) -> Self {
        Self { inner }
    }

    /// An identifier for this connection, unique among the live connections of its endpoint.
    pub fn stable_id(&self) -> usize {
        self.inner.stable_id()
    }

    /// The current smoothed round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.inner.rtt()
    }

    /// quinn's counters for this connection (packets, losses, congestion events).
    pub fn quinn_stats(&self) -> quinn::ConnectionStats {
        self.inner.stats()
    }

    /// The underlying quinn connection.
    pub fn quinn(&self) -> &quinn::Connection {
        &self.inner
    }
}

impl Connection for QuicConnection {
    type Send = QuicSend;
    type Recv = QuicRecv;

    async fn open_bi(&self) -> Result<(QuicSend, QuicRecv), StreamError> {
        let (send, recv) = self.inner.open_bi().await.map_err(connection_lost)?;
        Ok((QuicSend::new(send), QuicRecv { inner: recv }))
    }

    async fn accept_bi(&self) -> Result<(QuicSend, QuicRecv), StreamError> {
        let (send, recv) = self.inner.accept_bi().await.map_err(connection_lost)?;
        Ok((QuicSend::new(send), QuicRecv { inner: recv }))
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.inner.close(VarInt::from_u32(code), reason);
    }

    async fn closed(&self) -> StreamError {
        connection_lost(self.inner.closed().await)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), StreamError> {
        self.inner
            .export_keying_material(output, label, context)
            .map_err(|_| {
                // quinn only fails here when the output is longer than the exporter allows.
                StreamError::ConnectionLost(format!(
                    "TLS exporter refused {} bytes of keying material",
                    output.len()
                ))
            })
    }

    fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    fn stats(&self) -> Option<ConnectionStats> {
        let stats = self.inner.stats();
        Some(ConnectionStats {
            rtt: stats.path.rtt,
            cwnd: stats.path.cwnd,
            lost_packets: stats.path.lost_packets,
            sent_packets: stats.path.sent_packets,
            rx_datagrams: stats.udp_rx.datagrams,
            tx_datagrams: stats.udp_tx.datagrams,
        })
    }
}

/// The sending half of a QUIC stream.
///
/// Dropping it without [`finish`](SendStream::finish) or [`reset`](SendStream::reset) resets
/// the stream with [`RESET_ON_DROP`]; after `finish` the data already written is still
/// delivered.
#[derive(Debug)]
pub struct QuicSend {
    inner: quinn::SendStream,
    /// Finished or reset: nothing to do on drop.
    done: bool,
}

impl QuicSend {
    fn new(inner: quinn::SendStream) -> Self {
        Self { inner, done: false }
    }

    /// The QUIC stream id.
    pub fn id(&self) -> quinn::StreamId {
        self.inner.id()
    }
}

impl SendStream for QuicSend {
    async fn write_chunk(&mut self, data: Bytes) -> Result<(), StreamError> {
        self.inner.write_chunk(data).await.map_err(|e| match e {
            WriteError::Stopped(code) => StreamError::Stopped(code_u32(code)),
            WriteError::ConnectionLost(e) => connection_lost(e),
            WriteError::ClosedStream => StreamError::Closed,
            // We never open 0-RTT streams.
            WriteError::ZeroRttRejected => StreamError::ConnectionLost("0-RTT rejected".into()),
        })
    }

    fn finish(&mut self) -> Result<(), StreamError> {
        self.done = true;
        self.inner.finish().map_err(|_| StreamError::Closed)
    }

    fn reset(&mut self, code: u32) {
        self.done = true;
        // Already finished or reset: nothing more to abandon.
        let _ = self.inner.reset(VarInt::from_u32(code));
    }

    async fn stopped(&mut self) -> Result<Option<u32>, StreamError> {
        match self.inner.stopped().await {
            Ok(code) => Ok(code.map(code_u32)),
            Err(StoppedError::ConnectionLost(e)) => Err(connection_lost(e)),
            Err(StoppedError::ZeroRttRejected) => {
                Err(StreamError::ConnectionLost("0-RTT rejected".into()))
            }
        }
    }
}

impl Drop for QuicSend {
    fn drop(&mut self) {
        if !self.done {
            // Already closed by the peer or the connection: nothing to reset.
            let _ = self.inner.reset(VarInt::from_u32(RESET_ON_DROP));
        }
    }
}

/// The receiving half of a QUIC stream. Dropping it before end of stream stops the stream
/// (code 0).
#[derive(Debug)]
pub struct QuicRecv {
    inner: quinn::RecvStream,
}

impl QuicRecv {
    /// The QUIC stream id.
    pub fn id(&self) -> quinn::StreamId {
        self.inner.id()
    }
}

impl RecvStream for QuicRecv {
    #[inline]
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        // quinn keeps its `poll_read_chunk` private, so poll a fresh `read_chunk` future once
        // and drop it. That is sound: the future holds nothing but `&mut` to the stream and
        // the arguments (no partial read, no buffered chunk), and a `Pending` poll has
        // registered `cx`'s waker in the connection state for this stream (replacing any
        // earlier one), where it stays after the future is dropped and is woken when data,
        // the end or a reset arrives. Dropping a pending `read_chunk` is what quinn documents
        // as cancel-safe.
        let read = pin!(self.inner.read_chunk(max, true));
        read.poll(cx)
            .map_ok(|chunk| chunk.map(|c| c.bytes))
            .map_err(read_error)
    }

    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, StreamError> {
        self.inner
            .read_chunk(max, true)
            .await
            .map(|chunk| chunk.map(|c| c.bytes))
            .map_err(read_error)
    }

    async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Option<usize>, StreamError> {
        if bufs.is_empty() {
            return Ok(Some(0));
        }
        self.inner.read_chunks(bufs).await.map_err(read_error)
    }

    fn stop(&mut self, code: u32) {
        // Already finished, reset or stopped: nothing more to stop.
        let _ = self.inner.stop(VarInt::from_u32(code));
    }
}

fn read_error(error: ReadError) -> StreamError {
    match error {
        ReadError::Reset(code) => StreamError::Reset(code_u32(code)),
        ReadError::ConnectionLost(e) => connection_lost(e),
        ReadError::ClosedStream => StreamError::Closed,
        // Only ordered reads are made, and never on 0-RTT streams.
        e @ (ReadError::IllegalOrderedRead | ReadError::ZeroRttRejected) => {
            StreamError::ConnectionLost(e.to_string())
        }
    }
}

/// A stream code from the peer as `u32`; codes beyond `u32::MAX` (not ours) saturate.
fn code_u32(code: VarInt) -> u32 {
    u32::try_from(code.into_inner()).unwrap_or(u32::MAX)
}

fn connection_lost(error: ConnectionError) -> StreamError {
    StreamError::ConnectionLost(error.to_string())
}
