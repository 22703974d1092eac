//! [`H2Listener`]: the edge's TCP listener for HTTP/2 over TLS, with a bound on handshakes in
//! progress.
//!
//! One accept-loop task takes each TCP connection and, while fewer than
//! [`H2Config::max_handshakes`] are in progress, runs its TLS and HTTP/2 handshakes in a task
//! of its own (so a slow client holds up nobody); beyond the bound the TCP connection is
//! dropped at once. Every task is tracked and ends when the listener is closed, so
//! [`wait_idle`](H2Listener::wait_idle) knows when everything is done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::edge_handshake;
use super::{H2Config, H2Connection, ALPN};
use crate::{Listener, TransportError};

/// How many completed handshakes may wait for [`H2Listener::accept`] before new ones wait.
const ACCEPT_BACKLOG: usize = 256;
/// Pause after a failed `accept` (out of file descriptors, say) before trying again, so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The edge's HTTP/2 listener: accepts connections from connectors over TCP + TLS.
#[derive(Debug)]
pub struct H2Listener {
    local_addr: SocketAddr,
    ready: Mutex<mpsc::Receiver<H2Connection>>,
    handshakes: Arc<Semaphore>,
    max_handshakes: usize,
    /// Cancelled by [`close`](H2Listener::close) and by drop: ends the accept loop and every
    /// handshake in progress.
    stop: CancellationToken,
    /// Cancelled by [`close`](H2Listener::close): closes every connection.
    shutdown: CancellationToken,
    /// The accept loop, the handshakes and every connection's tasks.
    tasks: TaskTracker,
}

impl H2Listener {
    /// Bind a TCP socket on `addr` and serve HTTP/2 over TLS with `tls` (which should offer
    /// [`ALPN`]). Checks `config` first. Must be called within a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        config: &H2Config,
    ) -> Result<Self, TransportError> {
        config.validate()?;
        let socket = std::net::TcpListener::bind(addr).map_err(|e| {
            TransportError::BindTcp(std::io::Error::new(e.kind(), format!("{addr}: {e}")))
        })?;
        socket
            .set_nonblocking(true)
            .map_err(TransportError::BindTcp)?;
        let socket = TcpListener::from_std(socket).map_err(TransportError::BindTcp)?;
        let local_addr = socket.local_addr().map_err(TransportError::BindTcp)?;
        tracing::info!(%local_addr, max_handshakes = config.max_handshakes, "HTTP/2 listener bound");

        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        let listener = Self {
            local_addr,
            ready: Mutex::new(rx),
            handshakes: Arc::new(Semaphore::new(config.max_handshakes)),
            max_handshakes: config.max_handshakes,
            stop: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        listener.tasks.spawn(accept_loop(AcceptLoop {
            socket,
            tls: TlsAcceptor::from(tls),
            config: config.clone(),
            ready: tx,
            handshakes: listener.handshakes.clone(),
            stop: listener.stop.clone(),
            shutdown: listener.shutdown.clone(),
            tasks: listener.tasks.clone(),
        }));
        Ok(listener)
    }

    /// The address the listener is bound to (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Next connection whose handshake completed; `None` once closed. Failed handshakes are
    /// logged and skipped. Cancel-safe: a connection that completes while nobody waits stays
    /// queued.
    pub async fn accept(&self) -> Option<H2Connection> {
        let mut ready = self.ready.lock().await;
        tokio::select! {
            // Connections still queued at close are closed already: not worth handing out.
            biased;
            () = self.stop.cancelled() => None,
            connection = ready.recv() => connection,
        }
    }

    /// Stop at once: no new connections, handshakes in progress end, every connection is
    /// closed (`edge shutting down`), and [`accept`](Self::accept) returns `None`.
    pub fn close(&self) {
        self.stop.cancel();
        self.shutdown.cancel();
        self.tasks.close();
    }

    /// After [`close`](Self::close): wait until every task has ended, so every connector
    /// has seen its connection's close (or did not confirm it in time).
    pub async fn wait_idle(&self) {
        self.tasks.wait().await;
    }

    /// Handshakes in progress now (including completed ones not yet queued for
    /// [`accept`](Self::accept)).
    pub fn handshakes(&self) -> usize {
        self.max_handshakes - self.handshakes.available_permits()
    }
}

impl Drop for H2Listener {
    fn drop(&mut self) {
        // Stop accepting; connections already accepted live on.
        self.stop.cancel();
    }
}

impl Listener for H2Listener {
    type Conn = H2Connection;

    async fn accept(&self) -> Option<H2Connection> {
        H2Listener::accept(self).await
    }

    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn close(&self) {
        H2Listener::close(self);
    }

    async fn wait_idle(&self) {
        H2Listener::wait_idle(self).await;
    }
}

/// What the accept loop needs of the listener.
struct AcceptLoop {
    socket: TcpListener,
    tls: TlsAcceptor,
    config: H2Config,
    ready: mpsc::Sender<H2Connection>,
    handshakes: Arc<Semaphore>,
    stop: CancellationToken,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Take TCP connections, run the handshakes of those within the bound and drop the rest,
/// until the listener stops.
async fn accept_loop(state: AcceptLoop) {
    loop {
        let (tcp, remote) = tokio::select! {
            () = state.stop.cancelled() => break,
            accepted = state.socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a TCP connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = state.handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "too many HTTP/2 handshakes in progress; dropping");
            continue;
        };
        state.tasks.spawn(handshake(
            tcp,
            remote,
            permit,
            Handshake {
                tls: state.tls.clone(),
                config: state.config.clone(),
                ready: state.ready.clone(),
                stop: state.stop.clone(),
                shutdown: state.shutdown.clone(),
                tasks: state.tasks.clone(),
            },
        ));
    }
    tracing::debug!("HTTP/2 listener stopped; accept loop ends");
}

/// What one handshake task needs.
struct Handshake {
    tls: TlsAcceptor,
    config: H2Config,
    ready: mpsc::Sender<H2Connection>,
    stop: CancellationToken,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Complete one handshake (TLS, ALPN, HTTP/2, session) and queue the connection, holding
/// `permit` until it is queued (or has failed). Ends early, abandoning the connection, when
/// the listener stops.
async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
    task: Handshake,
) {
    let started = async {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%remote, %error, "cannot set TCP_NODELAY");
        }
        let tls = task
            .tls
            .accept(tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let alpn = tls.get_ref().1.alpn_protocol();
        if alpn != Some(ALPN) {
            return Err(format!(
                "the connector did not negotiate ALPN h2 (got {:?})",
                alpn.map(String::from_utf8_lossy)
            ));
        }
        edge_handshake(
            tls.into(),
            remote,
            &task.config,
            task.shutdown.child_token(),
        )
        .await
    };
    let timeout = task.config.handshake_timeout();
    let queued = async {
        match tokio::time::timeout(timeout, started).await {
            Ok(Ok(started)) => {
                let connection = started.spawn(&task.tasks);
                tracing::debug!(%remote, id = connection.stable_id(), "HTTP/2 handshake done");
                if task.ready.send(connection).await.is_err() {
                    tracing::debug!(%remote, "listener gone; dropping connection");
                }
            }
            Ok(Err(error)) => tracing::info!(%remote, %error, "HTTP/2 handshake failed"),
            Err(_) => tracing::info!(%remote, ?timeout, "HTTP/2 handshake timed out"),
        }
    };
    tokio::select! {
        () = task.stop.cancelled() => {
            tracing::debug!(%remote, "HTTP/2 listener stopped during a handshake");
        }
        () = queued => {}
    }
    drop(permit);
}
