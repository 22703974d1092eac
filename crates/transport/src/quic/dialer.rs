//! [`QuicDialer`]: the connector's QUIC endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{EndpointConfig, VarInt};

use super::{socket, QuicConnection, QuicSettings, SocketBuffers};
use crate::tls::TlsError;
use crate::{Dialer, TransportError};

/// The connector's QUIC endpoint: one UDP socket from which it dials edges.
#[derive(Debug)]
pub struct QuicDialer {
    endpoint: quinn::Endpoint,
    buffers: SocketBuffers,
}

impl QuicDialer {
    /// Create an endpoint on `bind` (`0.0.0.0:0` for IPv4 edges, `[::]:0` for IPv6 or both)
    /// that dials with `tls` (which should offer [`ALPN`](super::ALPN)). Must be called within
    /// a tokio runtime.
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
    /// Dropping the future abandons the attempt.
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

impl Dialer for QuicDialer {
    type Conn = QuicConnection;

    async fn connect(
        &self,
        edge: SocketAddr,
        server_name: &str,
    ) -> Result<QuicConnection, TransportError> {
        QuicDialer::connect(self, edge, server_name).await
    }

    fn close(&self) {
        QuicDialer::close(self);
    }

    async fn wait_idle(&self) {
        QuicDialer::wait_idle(self).await;
    }
}
