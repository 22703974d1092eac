//! Transports between connector and edge, behind one set of traits.
//!
//! A transport gives a [`Connection`] that opens and accepts bidirectional streams, each split
//! into a [`SendStream`] and a [`RecvStream`] that move [`Bytes`] chunks without copying. The
//! edge takes connections from a [`Listener`], the connector makes them with a [`Dialer`].
//!
//! Two transports implement them: QUIC ([`quic`], on quinn and rustls) and HTTP/2 over TLS
//! over TCP ([`h2`], on h2 and rustls) for networks that block UDP. The code above this crate
//! names only the traits and the [`AnyConnection`] family of enums ([`any`]), with a variant
//! per transport, so that the edge and the connector need no type parameter for it. The enums
//! delegate with a `match`, never through a box or a vtable.
//!
//! [`tls`] builds the rustls configurations both ends use, and a development PKI.
//!
//! # Cancel safety
//!
//! Dropping a future before it completes must leave the stream or connection usable (or, where
//! that cannot be, in a state the caller can reason about):
//!
//! - [`RecvStream::poll_read_chunk`] and the futures built on it
//!   ([`read_chunk`](RecvStream::read_chunk), [`read_chunks`](RecvStream::read_chunks)) are
//!   cancel-safe: a read that returned `Pending` has consumed nothing, and the next call
//!   returns what the dropped one would have.
//! - [`Connection::accept_bi`] and [`Listener::accept`] are cancel-safe: a stream or a
//!   connection that arrives while nobody waits is kept for the next call.
//! - [`SendStream::write_chunk`] is **not** cancel-safe: if its future is dropped, part of the
//!   chunk may have been sent. Callers that race a write against something else must reset the
//!   stream when they abandon the write.
//! - [`Connection::open_bi`] may be cancelled; a stream that was opened but not returned is
//!   reset by its drop.
//! - [`Dialer::connect`] may be cancelled; the half-made connection is abandoned (its
//!   handshake stops and no connection is left behind).
//! - [`Listener::close`] and [`Dialer::close`] take effect at once;
//!   [`wait_idle`](Listener::wait_idle) only waits (for the peers to learn of the close) and
//!   may be dropped, for instance when a time limit runs out.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

pub mod any;
pub mod h2;
pub mod quic;
pub mod tls;

pub use any::{AnyConnection, AnyDialer, AnyListener, AnyRecv, AnySend, Protocol};

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

/// Why an endpoint or a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The socket could not be created, configured or bound.
    #[error("cannot bind UDP socket: {0}")]
    Bind(std::io::Error),
    /// The transport could not start an endpoint on the socket.
    #[error("cannot start QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    /// The TCP socket of an HTTP/2 listener could not be created, configured or bound.
    #[error("cannot bind TCP socket: {0}")]
    BindTcp(std::io::Error),
    /// The settings are inconsistent or out of range; the message names the setting.
    #[error("invalid QUIC settings: {0}")]
    Settings(String),
    /// The HTTP/2 settings (`[http2]`) are out of range; the message names the key.
    #[error("invalid HTTP/2 settings: {0}")]
    H2Settings(String),
    /// The connection attempt could not even start (bad server name, endpoint closed, ...).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The handshake failed (certificate refused, ALPN mismatch, timeout, refused by a busy
    /// listener, ...).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
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
    /// Poll for the next chunk of at most `max` bytes: `Ready(Ok(None))` at end of stream (the
    /// peer finished). On `Pending` nothing was consumed and the task is woken when data,
    /// the end or an error arrives. This is what body adapters call from their own `poll`
    /// functions, with no future to store between calls.
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, StreamError>>;

    /// Read the next chunk of at most `max` bytes; `Ok(None)` at end of stream (the peer
    /// finished). Cancel-safe.
    fn read_chunk(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<Bytes>, StreamError>> + Send {
        std::future::poll_fn(move |cx| self.poll_read_chunk(cx, max))
    }

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

    /// The transport's counters for this connection, if it keeps any. Dead-peer detection
    /// (`underpass_mux::peer_silent`) and the metrics read them; a connection without
    /// counters is never declared silent.
    fn stats(&self) -> Option<ConnectionStats> {
        None
    }
}

/// A connection's transport counters ([`Connection::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window, in bytes.
    pub cwnd: u64,
    /// Packets declared lost since the connection started.
    pub lost_packets: u64,
    /// Packets sent since the connection started.
    pub sent_packets: u64,
    /// UDP datagrams (or transport frames) received from the peer.
    pub rx_datagrams: u64,
    /// UDP datagrams (or transport frames) sent to the peer.
    pub tx_datagrams: u64,
}

/// Where the edge takes connections from connectors.
///
/// A listener is shared by reference (the accept loop and the shutdown path both hold it), so
/// every method takes `&self`.
pub trait Listener: Send + Sync + 'static {
    /// The connections it gives.
    type Conn: Connection;

    /// The next connection whose handshake completed; `None` once the listener is closed.
    /// Failed handshakes are logged and skipped. Cancel-safe.
    fn accept(&self) -> impl Future<Output = Option<Self::Conn>> + Send;

    /// The address the listener is bound to (with the real port when bound to port 0).
    fn local_addr(&self) -> SocketAddr;

    /// Stop at once: no new connections, handshakes in progress end, every connection is
    /// closed, and [`accept`](Listener::accept) returns `None`.
    fn close(&self);

    /// After [`close`](Listener::close): resolves once the listener's tasks have ended and
    /// every connection has been shut down cleanly, so the peers learned of it.
    fn wait_idle(&self) -> impl Future<Output = ()> + Send;
}

/// How the connector makes connections to edges.
pub trait Dialer: Send + Sync + 'static {
    /// The connections it makes.
    type Conn: Connection;

    /// Dial `edge`, verify its certificate for `server_name`, and complete the handshake.
    /// Cancel-safe in the sense of the crate docs: a dropped attempt leaves nothing behind.
    fn connect(
        &self,
        edge: SocketAddr,
        server_name: &str,
    ) -> impl Future<Output = Result<Self::Conn, TransportError>> + Send;

    /// Close every connection of this dialer at once.
    fn close(&self);

    /// After [`close`](Dialer::close): resolves once every connection has been shut down
    /// cleanly.
    fn wait_idle(&self) -> impl Future<Output = ()> + Send;
}
