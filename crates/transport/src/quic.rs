//! QUIC transport on quinn: the edge's [`QuicListener`], the connector's [`QuicDialer`], and
//! [`QuicConnection`] implementing [`crate::Connection`].
//!
//! Both ends use one UDP socket each, created with socket2 so its kernel buffers can be raised
//! (see [`SocketBuffers`]); segmentation offload (GSO) stays on and congestion control stays
//! quinn's default (Cubic), which measured best on this kind of machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use tokio::sync::{mpsc, Mutex};

use crate::tls::TlsError;

mod connection;
mod socket;

pub use connection::{QuicConnection, QuicRecv, QuicSend, RESET_ON_DROP};
pub use socket::SocketBuffers;

/// The ALPN protocol spoken between connector and edge.
pub const ALPN: &[u8] = b"underpass/1";

/// How many completed handshakes may wait for [`QuicListener::accept`] before new ones wait.
const ACCEPT_BACKLOG: usize = 256;

/// QUIC tuning shared by both ends.
#[derive(Debug, Clone)]
pub struct QuicSettings {
    /// Interval between keep-alive packets when the connection is otherwise idle; zero
    /// disables keep-alives. Must be below `idle_timeout`.
    pub keep_alive: Duration,
    /// A connection silent for this long is closed. Generous so that a lossy network does not
    /// churn connections.
    pub idle_timeout: Duration,
    /// Per-stream receive window (bytes the peer may send ahead of our reads on one stream).
    pub stream_receive_window: u64,
    /// Connection-wide receive window.
    pub connection_receive_window: u64,
    /// Bytes we may have in flight unacknowledged, across all streams. This is also how much
    /// the sender buffers ahead of the network: 8 MiB (the default) keeps that buffer in cache
    /// and the process small (measured by `scripts/bench`: 2.4 instead of 2.6 CPU-s/GiB, peak
    /// RSS 21 instead of 85 MB) while still filling about 1.3 Gbit/s at 50 ms round trip.
    pub send_window: u64,
    /// Bidirectional streams the peer may have open at once.
    pub max_concurrent_streams: u64,
    /// Requested SO_RCVBUF/SO_SNDBUF for the UDP socket, in bytes.
    pub socket_buffer: usize,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            stream_receive_window: 16 << 20,
            connection_receive_window: 64 << 20,
            send_window: 8 << 20,
            max_concurrent_streams: 32_768,
            socket_buffer: 32 << 20,
        }
    }
}

impl QuicSettings {
    /// The quinn transport configuration these settings describe.
    pub fn transport_config(&self) -> Result<TransportConfig, TransportError> {
        if self.idle_timeout.is_zero() {
            return Err(TransportError::Settings(
                "idle_timeout must be above zero".into(),
            ));
        }
        if self.keep_alive >= self.idle_timeout {
            return Err(TransportError::Settings(format!(
                "keep_alive ({:?}) must be below idle_timeout ({:?})",
                self.keep_alive, self.idle_timeout
            )));
        }
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| TransportError::Settings("idle_timeout too large".into()))?;
        let varint = |value: u64, name: &str| {
            VarInt::from_u64(value)
                .map_err(|_| TransportError::Settings(format!("{name} too large: {value}")))
        };
        let mut config = TransportConfig::default();
        config
            .keep_alive_interval((!self.keep_alive.is_zero()).then_some(self.keep_alive))
            .max_idle_timeout(Some(idle))
            .stream_receive_window(varint(self.stream_receive_window, "stream_receive_window")?)
            .receive_window(varint(
                self.connection_receive_window,
                "connection_receive_window",
            )?)
            .send_window(self.send_window)
            .max_concurrent_bidi_streams(varint(
                self.max_concurrent_streams,
                "max_concurrent_streams",
            )?)
            // Everything travels on bidirectional streams; no datagrams either.
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None);
        Ok(config)
    }
}

/// Why a QUIC endpoint or connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be created, configured or bound.
    #[error("cannot bind UDP socket: {0}")]
    Bind(std::io::Error),
    /// quinn could not start an endpoint on the socket.
    #[error("cannot start QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    /// The settings are inconsistent or out of range.
    #[error("invalid QUIC settings: {0}")]
    Settings(String),
    /// The connection attempt could not even start (bad server name, endpoint closed, ...).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The QUIC or TLS handshake failed (certificate refused, ALPN mismatch, timeout, ...).
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The TLS configuration is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The edge's QUIC endpoint: accepts connections from connectors.
#[derive(Debug)]
pub struct QuicListener {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    buffers: SocketBuffers,
    ready: Mutex<mpsc::Receiver<QuicConnection>>,
}

impl QuicListener {
    /// Bind a UDP socket on `addr` and serve QUIC with `tls` (which should offer [`ALPN`]).
    /// Must be called within a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        settings: &QuicSettings,
    ) -> Result<Self, TransportError> {
        let crypto = QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::NotQuicCompatible(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(settings.transport_config()?));

        let (socket, buffers) =
            socket::bind_udp(addr, settings.socket_buffer).map_err(TransportError::Bind)?;
        let local_addr = socket.local_addr().map_err(TransportError::Bind)?;
        let endpoint = quinn::Endpoint::new(
            EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(TransportError::Endpoint)?;
        tracing::info!(%local_addr, "QUIC listener bound");

        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        tokio::spawn(accept_loop(endpoint.clone(), tx));
        Ok(Self {
            endpoint,
            local_addr,
            buffers,
            ready: Mutex::new(rx),
        })
    }

    /// The address the listener is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Next connection whose handshake completed; `None` once closed. Failed handshakes are
    /// logged and skipped. Handshakes run concurrently, so a slow client does not hold up
    /// others. Cancel-safe.
    pub async fn accept(&self) -> Option<QuicConnection> {
        self.ready.lock().await.recv().await
    }

    /// Close the endpoint at once: every connection is closed and [`accept`](Self::accept)
    /// returns `None` once pending handshakes have ended.
    pub fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"edge shutting down");
    }

    /// Wait until every connection of this endpoint has been cleanly shut down (after
    /// [`close`](Self::close), so the peers learn of it).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    /// The UDP socket buffer sizes the kernel granted.
    pub fn socket_buffers(&self) -> SocketBuffers {
        self.buffers
    }
}

/// Accept incoming connections and hand each completed handshake to the listener's queue.
async fn accept_loop(endpoint: quinn::Endpoint, ready: mpsc::Sender<QuicConnection>) {
    while let Some(incoming) = endpoint.accept().await {
        let ready = ready.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(connection) => {
                    tracing::debug!(%remote, id = connection.stable_id(), "QUIC handshake done");
                    if ready.send(QuicConnection::new(connection)).await.is_err() {
                        tracing::debug!(%remote, "listener gone; dropping connection");
                    }
                }
                Err(error) => tracing::info!(%remote, %error, "QUIC handshake failed"),
            }
        });
    }
    tracing::debug!("QUIC endpoint closed; accept loop ends");
}

/// The connector's QUIC endpoint: one UDP socket from which it dials edges.
#[derive(Debug)]
pub struct QuicDialer {
    endpoint: quinn::Endpoint,
    buffers: SocketBuffers,
}

impl QuicDialer {
    /// Create an endpoint on `bind` (`0.0.0.0:0` for IPv4 edges, `[::]:0` for IPv6 or both)
    /// that dials with `tls` (which should offer [`ALPN`]). Must be called within a tokio
    /// runtime.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        settings: &QuicSettings,
        bind: SocketAddr,
    ) -> Result<Self, TransportError> {
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| TlsError::NotQuicCompatible(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(settings.transport_config()?));

        let (socket, buffers) =
            socket::bind_udp(bind, settings.socket_buffer).map_err(TransportError::Bind)?;
        let mut endpoint = quinn::Endpoint::new(
            EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(TransportError::Endpoint)?;
        endpoint.set_default_client_config(client);
        Ok(Self { endpoint, buffers })
    }

    /// Dial `edge`, verifying its certificate for `server_name`, and complete the handshake.
    pub async fn connect(
        &self,
        edge: SocketAddr,
        server_name: &str,
    ) -> Result<QuicConnection, TransportError> {
        let connecting = self
            .endpoint
            .connect(edge, server_name)
            .map_err(|e| TransportError::Connect(e.to_string()))?;
        let connection = connecting
            .await
            .map_err(|e| TransportError::Handshake(e.to_string()))?;
        tracing::debug!(%edge, server_name, id = connection.stable_id(), "QUIC connected");
        Ok(QuicConnection::new(connection))
    }

    /// The local address of the dialer's UDP socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Close every connection of this dialer at once.
    pub fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"connector shutting down");
    }

    /// Wait until every connection of this dialer has been cleanly shut down.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }

    /// The UDP socket buffer sizes the kernel granted.
    pub fn socket_buffers(&self) -> SocketBuffers {
        self.buffers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_make_a_transport_config() {
        let settings = QuicSettings::default();
        assert!(settings.idle_timeout >= Duration::from_secs(30));
        assert!(settings.keep_alive < settings.idle_timeout);
        settings.transport_config().unwrap();
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let bad = QuicSettings {
            keep_alive: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            ..QuicSettings::default()
        };
        assert!(matches!(
            bad.transport_config(),
            Err(TransportError::Settings(_))
        ));
        let bad = QuicSettings {
            stream_receive_window: u64::MAX,
            ..QuicSettings::default()
        };
        assert!(matches!(
            bad.transport_config(),
            Err(TransportError::Settings(_))
        ));
        let no_keep_alive = QuicSettings {
            keep_alive: Duration::ZERO,
            ..QuicSettings::default()
        };
        no_keep_alive.transport_config().unwrap();
    }
}
