//! [`AnyConnection`] and its family: one enum per role, with a variant per transport, so the
//! edge and the connector are written once against concrete types instead of being generic
//! over the transport everywhere.
//!
//! Every enum has a variant per transport, `Quic` and `Http2`. Each method is a `match` that
//! forwards to the variant (inlined, no box, no vtable).

use std::fmt;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use crate::h2::{H2Connection, H2Dialer, H2Listener, H2Recv, H2Send};
use crate::quic::{QuicConnection, QuicDialer, QuicListener, QuicRecv, QuicSend};
use crate::{
    Connection, ConnectionStats, Dialer, Listener, RecvStream, SendStream, StreamError,
    TransportError,
};

/// Which transport carries a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// QUIC (RFC 9000) with TLS 1.3, on UDP.
    Quic,
    /// HTTP/2 (RFC 9113) over TLS 1.3, on TCP.
    Http2,
}

impl Protocol {
    /// The lower-case name used in logs and metrics (`"quic"`, `"http2"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Quic => "quic",
            Protocol::Http2 => "http2",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection over any transport.
#[derive(Debug, Clone)]
pub enum AnyConnection {
    /// A QUIC connection.
    Quic(QuicConnection),
    /// An HTTP/2 connection.
    Http2(H2Connection),
}

impl AnyConnection {
    /// The transport carrying this connection.
    pub fn protocol(&self) -> Protocol {
        match self {
            AnyConnection::Quic(_) => Protocol::Quic,
            AnyConnection::Http2(_) => Protocol::Http2,
        }
    }

    /// An identifier for this connection, unique among the live connections of its endpoint.
    pub fn stable_id(&self) -> usize {
        match self {
            AnyConnection::Quic(conn) => conn.stable_id(),
            AnyConnection::Http2(conn) => conn.stable_id(),
        }
    }

    /// The current smoothed round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        match self {
            AnyConnection::Quic(conn) => conn.rtt(),
            AnyConnection::Http2(conn) => conn.rtt(),
        }
    }
}

impl From<QuicConnection> for AnyConnection {
    fn from(conn: QuicConnection) -> Self {
        AnyConnection::Quic(conn)
    }
}

impl From<H2Connection> for AnyConnection {
    fn from(conn: H2Connection) -> Self {
        AnyConnection::Http2(conn)
    }
}

impl Connection for AnyConnection {
    type Send = AnySend;
    type Recv = AnyRecv;

    #[inline]
    async fn open_bi(&self) -> Result<(AnySend, AnyRecv), StreamError> {
        match self {
            AnyConnection::Quic(conn) => conn
                .open_bi()
                .await
                .map(|(send, recv)| (AnySend::Quic(send), AnyRecv::Quic(recv))),
            AnyConnection::Http2(conn) => conn
                .open_bi()
                .await
                .map(|(send, recv)| (AnySend::Http2(send), AnyRecv::Http2(recv))),
        }
    }

    #[inline]
    async fn accept_bi(&self) -> Result<(AnySend, AnyRecv), StreamError> {
        match self {
            AnyConnection::Quic(conn) => conn
                .accept_bi()
                .await
                .map(|(send, recv)| (AnySend::Quic(send), AnyRecv::Quic(recv))),
            AnyConnection::Http2(conn) => conn
                .accept_bi()
                .await
                .map(|(send, recv)| (AnySend::Http2(send), AnyRecv::Http2(recv))),
        }
    }

    fn close(&self, code: u32, reason: &[u8]) {
        match self {
            AnyConnection::Quic(conn) => conn.close(code, reason),
            AnyConnection::Http2(conn) => conn.close(code, reason),
        }
    }

    async fn closed(&self) -> StreamError {
        match self {
            AnyConnection::Quic(conn) => conn.closed().await,
            AnyConnection::Http2(conn) => conn.closed().await,
        }
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), StreamError> {
        match self {
            AnyConnection::Quic(conn) => conn.export_keying_material(output, label, context),
            AnyConnection::Http2(conn) => conn.export_keying_material(output, label, context),
        }
    }

    fn remote_address(&self) -> SocketAddr {
        match self {
            AnyConnection::Quic(conn) => conn.remote_address(),
            AnyConnection::Http2(conn) => conn.remote_address(),
        }
    }

    fn stats(&self) -> Option<ConnectionStats> {
        match self {
            AnyConnection::Quic(conn) => conn.stats(),
            AnyConnection::Http2(conn) => conn.stats(),
        }
    }
}

/// The sending half of a stream over any transport.
#[derive(Debug)]
pub enum AnySend {
    /// A QUIC stream.
    Quic(QuicSend),
    /// An HTTP/2 stream.
    Http2(H2Send),
}

impl From<QuicSend> for AnySend {
    fn from(send: QuicSend) -> Self {
        AnySend::Quic(send)
    }
}

impl From<H2Send> for AnySend {
    fn from(send: H2Send) -> Self {
        AnySend::Http2(send)
    }
}

impl SendStream for AnySend {
    #[inline]
    async fn write_chunk(&mut self, data: Bytes) -> Result<(), StreamError> {
        match self {
            AnySend::Quic(send) => send.write_chunk(data).await,
            AnySend::Http2(send) => send.write_chunk(data).await,
        }
    }

    #[inline]
    fn finish(&mut self) -> Result<(), StreamError> {
        match self {
            AnySend::Quic(send) => send.finish(),
            AnySend::Http2(send) => send.finish(),
        }
    }

    #[inline]
    fn reset(&mut self, code: u32) {
        match self {
            AnySend::Quic(send) => send.reset(code),
            AnySend::Http2(send) => send.reset(code),
        }
    }

    async fn stopped(&mut self) -> Result<Option<u32>, StreamError> {
        match self {
            AnySend::Quic(send) => send.stopped().await,
            AnySend::Http2(send) => send.stopped().await,
        }
    }
}

/// The receiving half of a stream over any transport.
#[derive(Debug)]
pub enum AnyRecv {
    /// A QUIC stream.
    Quic(QuicRecv),
    /// An HTTP/2 stream.
    Http2(H2Recv),
}

impl From<QuicRecv> for AnyRecv {
    fn from(recv: QuicRecv) -> Self {
        AnyRecv::Quic(recv)
    }
}

impl From<H2Recv> for AnyRecv {
    fn from(recv: H2Recv) -> Self {
        AnyRecv::Http2(recv)
    }
}

impl RecvStream for AnyRecv {
    #[inline]
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        match self {
            AnyRecv::Quic(recv) => recv.poll_read_chunk(cx, max),
            AnyRecv::Http2(recv) => recv.poll_read_chunk(cx, max),
        }
    }

    #[inline]
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, StreamError> {
        match self {
            AnyRecv::Quic(recv) => recv.read_chunk(max).await,
            AnyRecv::Http2(recv) => recv.read_chunk(max).await,
        }
    }

    #[inline]
    async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Option<usize>, StreamError> {
        match self {
            AnyRecv::Quic(recv) => recv.read_chunks(bufs).await,
            AnyRecv::Http2(recv) => recv.read_chunks(bufs).await,
        }
    }

    #[inline]
    fn stop(&mut self, code: u32) {
        match self {
            AnyRecv::Quic(recv) => recv.stop(code),
            AnyRecv::Http2(recv) => recv.stop(code),
        }
    }
}

/// A listener over any transport, giving [`AnyConnection`]s.
#[derive(Debug)]
pub enum AnyListener {
    /// A QUIC endpoint.
    Quic(QuicListener),
    /// An HTTP/2 (TCP) listener.
    Http2(H2Listener),
}

impl AnyListener {
    /// The transport it listens on.
    pub fn protocol(&self) -> Protocol {
        match self {
            AnyListener::Quic(_) => Protocol::Quic,
            AnyListener::Http2(_) => Protocol::Http2,
        }
    }
}

impl From<QuicListener> for AnyListener {
    fn from(listener: QuicListener) -> Self {
        AnyListener::Quic(listener)
    }
}

impl From<H2Listener> for AnyListener {
    fn from(listener: H2Listener) -> Self {
        AnyListener::Http2(listener)
    }
}

impl Listener for AnyListener {
    type Conn = AnyConnection;

    async fn accept(&self) -> Option<AnyConnection> {
        match self {
            AnyListener::Quic(listener) => listener.accept().await.map(AnyConnection::Quic),
            AnyListener::Http2(listener) => listener.accept().await.map(AnyConnection::Http2),
        }
    }

    fn local_addr(&self) -> SocketAddr {
        match self {
            AnyListener::Quic(listener) => listener.local_addr(),
            AnyListener::Http2(listener) => listener.local_addr(),
        }
    }

    fn close(&self) {
        match self {
            AnyListener::Quic(listener) => listener.close(),
            AnyListener::Http2(listener) => listener.close(),
        }
    }

    async fn wait_idle(&self) {
        match self {
            AnyListener::Quic(listener) => listener.wait_idle().await,
            AnyListener::Http2(listener) => listener.wait_idle().await,
        }
    }
}

/// A dialer over any transport, making [`AnyConnection`]s.
#[derive(Debug)]
pub enum AnyDialer {
    /// A QUIC endpoint.
    Quic(QuicDialer),
    /// An HTTP/2 (TCP) dialer.
    Http2(H2Dialer),
}

impl AnyDialer {
    /// The transport it dials with.
    pub fn protocol(&self) -> Protocol {
        match self {
            AnyDialer::Quic(_) => Protocol::Quic,
            AnyDialer::Http2(_) => Protocol::Http2,
        }
    }
}

impl From<QuicDialer> for AnyDialer {
    fn from(dialer: QuicDialer) -> Self {
        AnyDialer::Quic(dialer)
    }
}

impl From<H2Dialer> for AnyDialer {
    fn from(dialer: H2Dialer) -> Self {
        AnyDialer::Http2(dialer)
    }
}

impl Dialer for AnyDialer {
    type Conn = AnyConnection;

    async fn connect(
        &self,
        edge: SocketAddr,
        server_name: &str,
    ) -> Result<AnyConnection, TransportError> {
        match self {
            AnyDialer::Quic(dialer) => dialer
                .connect(edge, server_name)
                .await
                .map(AnyConnection::Quic),
            AnyDialer::Http2(dialer) => dialer
                .connect(edge, server_name)
                .await
                .map(AnyConnection::Http2),
        }
    }

    fn close(&self) {
        match self {
            AnyDialer::Quic(dialer) => dialer.close(),
            AnyDialer::Http2(dialer) => dialer.close(),
        }
    }

    async fn wait_idle(&self) {
        match self {
            AnyDialer::Quic(dialer) => dialer.wait_idle().await,
            AnyDialer::Http2(dialer) => dialer.wait_idle().await,
        }
    }
}
