//! [`H2Dialer`]: how the connector makes HTTP/2-over-TLS connections to edges.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::connector_handshake;
use super::{H2Config, H2Connection, ALPN};
use crate::{Dialer, TransportError};

/// The connector's HTTP/2 dialer: one TCP connection per [`connect`](H2Dialer::connect).
pub struct H2Dialer {
    tls: TlsConnector,
    config: H2Config,
    /// Cancelled by [`close`](H2Dialer::close): closes every connection.
    shutdown: CancellationToken,
    /// Every connection's tasks.
    tasks: TaskTracker,
}

impl std::fmt::Debug for H2Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Dialer")
            .field("config", &self.config)
            .field("closed", &self.shutdown.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl H2Dialer {
    /// A dialer that verifies edges with `tls` (which should offer [`ALPN`]). Checks `config`.
    pub fn new(tls: Arc<rustls::ClientConfig>, config: &H2Config) -> Result<Self, TransportError> {
        config.validate()?;
        Ok(Self {
            tls: TlsConnector::from(tls),
            config: config.clone(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// Dial `edge` over TCP (TCP_NODELAY), verify its certificate for `server_name`, and
    /// complete the TLS 1.3 and HTTP/2 handshakes, all within `http2.handshake_timeout_ms`.
    /// Dropping the future abandons the attempt and leaves nothing behind.
    pub async fn connect(
        &self,
        edge: SocketAddr,
        server_name: &str,
    ) -> Result<H2Connection, TransportError> {
        if self.shutdown.is_cancelled() {
            return Err(TransportError::Connect("the dialer is closed".into()));
        }
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            TransportError::Connect(format!("invalid server name {server_name:?}: {e}"))
        })?;
        let timeout = self.config.handshake_timeout();
        let started = async {
            let dialed = Instant::now();
            let tcp = TcpStream::connect(edge)
                .await
                .map_err(|e| TransportError::Connect(format!("TCP connect to {edge}: {e}")))?;
            // The SYN and its answer: a first round-trip time.
            let rtt = dialed.elapsed();
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%edge, %error, "cannot set TCP_NODELAY");
            }
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| TransportError::Handshake(format!("TLS: {e}")))?;
            let alpn = tls.get_ref().1.alpn_protocol();
            if alpn != Some(ALPN) {
                return Err(TransportError::Handshake(format!(
                    "the edge did not negotiate ALPN h2 (got {:?})",
                    alpn.map(String::from_utf8_lossy)
                )));
            }
            connector_handshake(
                tls.into(),
                edge,
                rtt,
                &self.config,
                self.shutdown.child_token(),
            )
            .await
            .map_err(TransportError::Handshake)
        };
        let started = tokio::time::timeout(timeout, started)
            .await
            .map_err(|_| TransportError::Handshake(format!("timed out after {timeout:?}")))??;
        let connection = started.spawn(&self.tasks);
        tracing::debug!(%edge, server_name, id = connection.stable_id(), "HTTP/2 connected");
        Ok(connection)
    }

    /// Close every connection of this dialer at once (`connector shutting down`).
    pub fn close(&self) {
        self.shutdown.cancel();
        self.tasks.close();
    }

    /// After [`close`](Self::close): wait until every connection's tasks have ended, so every
    /// edge has seen the close (or did not confirm it in time).
    pub async fn wait_idle(&self) {
        self.tasks.wait().await;
    }
}

impl Dialer for H2Dialer {
    type Conn = H2Connection;

    async fn connect(
        &self,
        edge: SocketAddr,
        server_name: &str,
    ) -> Result<H2Connection, TransportError> {
        H2Dialer::connect(self, edge, server_name).await
    }

    fn close(&self) {
        H2Dialer::close(self);
    }

    async fn wait_idle(&self) {
        H2Dialer::wait_idle(self).await;
    }
}
