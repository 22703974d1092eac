//! [`QuicListener`]: the edge's QUIC endpoint, with a bound on handshakes in progress.
//!
//! One accept-loop task takes each incoming connection attempt from quinn and, while fewer
//! than [`QuicSettings::max_handshakes`] are in progress, runs its handshake in a task of its
//! own (so a slow client holds up nobody); beyond the bound the attempt is refused at once,
//! which costs one packet. Every task is tracked and ends when the listener is closed or
//! dropped, so nothing of the listener outlives it.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{EndpointConfig, VarInt};
use tokio::sync::{mpsc, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{socket, QuicConnection, QuicSettings, SocketBuffers};
use crate::tls::TlsError;
use crate::{Listener, TransportError};

/// How many completed handshakes may wait for [`QuicListener::accept`] before new ones wait.
const ACCEPT_BACKLOG: usize = 256;

/// The edge's QUIC endpoint: accepts connections from connectors.
#[derive(Debug)]
pub struct QuicListener {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    buffers: SocketBuffers,
    ready: Mutex<mpsc::Receiver<QuicConnection>>,
    handshakes: Arc<Semaphore>,
    max_handshakes: usize,
    /// Cancelled by [`close`](QuicListener::close) and by drop: ends the accept loop and every
    /// handshake in progress.
    stop: CancellationToken,
    /// The accept loop and the handshake tasks.
    tasks: TaskTracker,
}

impl QuicListener {
    /// Bind a UDP socket on `addr` and serve QUIC with `tls` (which should offer
    /// [`ALPN`](super::ALPN)), with a random stateless-reset key. Must be called within a
    /// tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        settings: &QuicSettings,
    ) -> Result<Self, TransportError> {
        Self::bind_with(addr, tls, settings, EndpointConfig::default())
    }

    /// [`bind`](Self::bind), with `reset_key` as the stateless-reset key. A listener
    /// restarted with the key of its previous run answers the packets of that run's
    /// connections with a stateless reset, which the peers recognise: they learn at once
    /// that the connection is gone instead of waiting for a timeout. Keep the key secret
    /// (whoever has it can reset the listener's connections).
    pub fn bind_with_reset_key(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        settings: &QuicSettings,
        reset_key: [u8; 32],
    ) -> Result<Self, TransportError> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_key);
        let mut config = EndpointConfig::new(Arc::new(key));
        // Connection ids carry a check keyed per generator, and packets whose id fails it are
        // dropped without a reset: derive that key from the reset key too, so a restarted
        // listener recognises the ids it issued before and resets those connections.
        let cid_key = u64::from_le_bytes(reset_key[..8].try_into().unwrap_or_default());
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        Self::bind_with(addr, tls, settings, config)
    }

    fn bind_with(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        settings: &QuicSettings,
        endpoint_config: EndpointConfig,
    ) -> Result<Self, TransportError> {
        if settings.max_handshakes == 0 || settings.max_handshakes > Semaphore::MAX_PERMITS {
            return Err(TransportError::Settings(format!(
                "max_handshakes must be 1 to {}, not {}",
                Semaphore::MAX_PERMITS,
                settings.max_handshakes
            )));
        }
        let crypto = QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::NotQuicCompatible(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(settings.transport_config()?));

        let (socket, buffers) =
            socket::bind_udp(addr, settings.socket_buffer).map_err(TransportError::Bind)?;
        let local_addr = socket.local_addr().map_err(TransportError::Bind)?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(TransportError::Endpoint)?;
        tracing::info!(%local_addr, max_handshakes = settings.max_handshakes, "QUIC listener bound");

        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        let listener = Self {
            endpoint,
            local_addr,
            buffers,
            ready: Mutex::new(rx),
            handshakes: Arc::new(Semaphore::new(settings.max_handshakes)),
            max_handshakes: settings.max_handshakes,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        listener.tasks.spawn(accept_loop(AcceptLoop {
            endpoint: listener.endpoint.clone(),
            ready: tx,
            handshakes: listener.handshakes.clone(),
            stop: listener.stop.clone(),
            tasks: listener.tasks.clone(),
        }));
        Ok(listener)
    }

    /// The address the listener is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Next connection whose handshake completed; `None` once closed. Failed handshakes are
    /// logged and skipped. Handshakes run concurrently, so a slow client does not hold up
    /// others. Cancel-safe: a connection that completes while nobody waits stays queued.
    pub async fn accept(&self) -> Option<QuicConnection> {
        let mut ready = self.ready.lock().await;
        tokio::select! {
            // Connections still queued at close are closed already: not worth handing out.
            biased;
            () = self.stop.cancelled() => None,
            connection = ready.recv() => connection,
        }
    }

    /// Close the endpoint at once: the accept loop and the handshakes in progress end, every
    /// connection is closed, and [`accept`](Self::accept) returns `None`.
    pub fn close(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.endpoint
            .close(VarInt::from_u32(0), b"edge shutting down");
    }

    /// After [`close`](Self::close): wait until the listener's tasks have ended and every
    /// connection of this endpoint has been cleanly shut down (so the peers learn of it).
    pub async fn wait_idle(&self) {
        self.tasks.wait().await;
        self.endpoint.wait_idle().await;
    }

    /// Handshakes in progress now (including completed ones not yet queued for
    /// [`accept`](Self::accept)).
    pub fn handshakes(&self) -> usize {
        self.max_handshakes - self.handshakes.available_permits()
    }

    /// The UDP socket buffer sizes the kernel granted.
    pub fn socket_buffers(&self) -> SocketBuffers {
        self.buffers
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        // The accept loop holds a handle to the endpoint: without this it would keep running
        // (and accepting) after the listener is gone. Connections already accepted live on.
        self.stop.cancel();
    }
}

impl Listener for QuicListener {
    type Conn = QuicConnection;

    async fn accept(&self) -> Option<QuicConnection> {
        QuicListener::accept(self).await
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn close(&self) {
        QuicListener::close(self);
    }

    async fn wait_idle(&self) {
        QuicListener::wait_idle(self).await;
    }
}

/// What the accept loop needs of the listener.
struct AcceptLoop {
    endpoint: quinn::Endpoint,
    ready: mpsc::Sender<QuicConnection>,
    handshakes: Arc<Semaphore>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// Take incoming connection attempts, run the handshakes of those within the bound and refuse
/// the rest, until the endpoint closes or the listener stops.
async fn accept_loop(state: AcceptLoop) {
    loop {
        let incoming = tokio::select! {
            _ = state.stop.cancelled() => break,
            incoming = state.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let remote = incoming.remote_address();
        let Ok(permit) = state.handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "too many QUIC handshakes in progress; refusing");
            incoming.refuse();
            continue;
        };
        state.tasks.spawn(handshake(
            incoming,
            permit,
            state.ready.clone(),
            state.stop.clone(),
        ));
    }
    tracing::debug!("QUIC listener stopped; accept loop ends");
}

/// Complete one handshake and queue the connection, holding `permit` until it is queued (or
/// has failed). Ends early, abandoning the connection, when the listener stops.
async fn handshake(
    incoming: quinn::Incoming,
    permit: OwnedSemaphorePermit,
    ready: mpsc::Sender<QuicConnection>,
    stop: CancellationToken,
) {
    let remote = incoming.remote_address();
    let queued = async {
        match incoming.await {
            Ok(connection) => {
                tracing::debug!(%remote, id = connection.stable_id(), "QUIC handshake done");
                if ready.send(QuicConnection::new(connection)).await.is_err() {
                    tracing::debug!(%remote, "listener gone; dropping connection");
                }
            }
            Err(error) => tracing::info!(%remote, %error, "QUIC handshake failed"),
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {
            // Dropping the half-made connection closes it; the endpoint's close does too.
            tracing::debug!(%remote, "QUIC listener stopped during a handshake");
        }
        () = queued => {}
    }
    drop(permit);
}
