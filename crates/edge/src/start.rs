//! Start-up wiring: [`Edge::start`] validates the configuration, loads the state, binds every
//! listener and starts the tasks; [`EdgeHandle`] stops them; [`serve`] runs an edge until a
//! shutdown future resolves.
//!
//! Every task goes through one [`Shutdown`]: the connector side ([`crate::server`]), the
//! binding listeners and their client connections, pipes and uploads ([`crate::front`]), and
//! the tunnel refresh. Stopping is: stop accepting, drain connectors and let open streams
//! finish within `drain_grace_ms`, cut what is left with resets, wait, then close the QUIC
//! endpoint.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};
use underpass_proto::TunnelToken;
use underpass_rt::Shutdown;
use underpass_transport::quic::{self, QuicListener, TransportError};
use underpass_transport::tls::{self, TlsError};
use underpass_transport::{AnyConnection, AnyListener, Listener};

use crate::config::{ConfigError, EdgeConfig};
use crate::directory::{ConfigDirectory, DirectoryStore};
use crate::front::{self, FrontContext};
use crate::registry::Registry;
use crate::server::{self, ServerContext, ServerSettings};
use crate::state::{Pki, StateError};
use crate::tunnels::{Tunnel, TunnelStore, REFRESH_INTERVAL};

/// How long, after every task has ended, the closed QUIC endpoint may take to tell the peers.
const ENDPOINT_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Why the edge could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The TLS configuration could not be built from the stored PKI.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] TlsError),
    /// The QUIC listener could not be started.
    #[error("QUIC listener on {addr}: {source}")]
    Quic {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: TransportError,
    },
    /// A binding's listener could not be bound.
    #[error("binding {binding:?}: cannot listen on {addr}: {source}")]
    BindingListen {
        /// The binding.
        binding: String,
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The async runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// No address to put into tokens.
    #[error(
        "no edge address for tokens: listen is {0}, which connectors cannot dial; set \
         public_addresses in the config"
    )]
    NoPublicAddress(SocketAddr),
}

/// Entry point for running an edge in-process.
pub struct Edge;

impl Edge {
    /// Validate `config`, load or create the state (PKI, tunnels), bind the QUIC listener and
    /// every binding listener, and start serving. Ports 0 are allowed: ask the handle for the
    /// real addresses.
    pub async fn start(config: EdgeConfig) -> Result<EdgeHandle, EdgeError> {
        let directory = config.directory()?;
        let settings = config
            .quic
            .settings()
            .map_err(|error| ConfigError::Invalid(error.to_string()))?;
        let pki = Pki::load_or_generate(&config.state_dir, &config.server_name)?;
        let tunnels = Arc::new(TunnelStore::open(&config.state_dir)?);
        let tls = tls::server_config(
            pki.chain_pem.as_bytes(),
            pki.key_pem.as_bytes(),
            &[quic::ALPN],
        )?;
        let quic_error = |source| EdgeError::Quic {
            addr: config.listen,
            source,
        };
        let listener =
            QuicListener::bind(config.listen, Arc::new(tls), &settings).map_err(quic_error)?;
        let buffers = listener.socket_buffers();
        if buffers.capped() {
            warn!(
                requested = buffers.requested,
                recv = buffers.recv,
                send = buffers.send,
                "the kernel capped the UDP socket buffers; raise net.core.rmem_max and \
                 net.core.wmem_max for high-bandwidth tunnels"
            );
        }
        let listener = Arc::new(AnyListener::from(listener));
        let quic_addr = listener.local_addr();

        let mut bound = Vec::with_capacity(directory.bindings.len());
        for binding in &directory.bindings {
            let tcp = TcpListener::bind(binding.listen).await.map_err(|source| {
                EdgeError::BindingListen {
                    binding: binding.name.clone(),
                    addr: binding.listen,
                    source,
                }
            })?;
            let addr = front::listener_addr(&tcp, binding.listen);
            if !addr.ip().is_loopback() {
                warn!(
                    binding = %binding.name,
                    %addr,
                    "binding listens beyond loopback: anyone who reaches it reaches the \
                     private network"
                );
            }
            if tunnels.resolve(binding.target.tunnel().as_str()).is_none() {
                warn!(
                    binding = %binding.name,
                    tunnel = %binding.target.tunnel(),
                    "tunnel does not exist yet; create it with `underpass-edge tunnel create`"
                );
            }
            bound.push((binding.clone(), tcp, addr));
        }

        let token_addresses = token_addresses(&config, Some(quic_addr))?;
        let store = ConfigDirectory::new(directory);
        let registry = Arc::new(Registry::new());
        let shutdown = Shutdown::new();
        let timeouts = &config.timeouts;
        let drain_grace = Duration::from_millis(timeouts.drain_grace_ms);
        let server_context = Arc::new(ServerContext {
            registry: registry.clone(),
            tunnels: tunnels.clone(),
            directory: store.subscribe(),
            settings: ServerSettings {
                edge_name: config.server_name.clone(),
                register_timeout: Duration::from_millis(timeouts.register_ms),
                heartbeat_interval: Duration::from_millis(timeouts.heartbeat_interval_ms),
                retry_after: Duration::from_secs(5),
                drain_grace,
            },
            shutdown: shutdown.clone(),
        });
        shutdown.spawn(server::run(listener.clone(), server_context));
        shutdown.spawn(
            tunnels
                .clone()
                .refresh_every(REFRESH_INTERVAL, shutdown.clone()),
        );
        let front_context = Arc::new(FrontContext {
            registry: registry.clone(),
            tunnels: tunnels.clone(),
            directory: store.subscribe(),
            connect_timeout: Duration::from_millis(timeouts.connect_ms),
            shutdown: shutdown.clone(),
        });
        let mut binding_addrs = HashMap::new();
        for (binding, tcp, addr) in bound {
            info!(binding = %binding.name, %addr, mode = %binding.mode, "binding listening");
            binding_addrs.insert(binding.name.clone(), addr);
            let context = front_context.clone();
            shutdown.spawn(async move { front::serve(tcp, &binding, context).await });
        }
        info!(
            quic = %quic_addr,
            bindings = binding_addrs.len(),
            ca_pin = %hex::encode(pki.ca_pin),
            "edge started"
        );
        Ok(EdgeHandle {
            quic_addr,
            binding_addrs,
            registry,
            tunnels,
            token_addresses,
            server_name: config.server_name,
            ca_pin: pki.ca_pin,
            listener,
            _directory: Arc::new(store),
            shutdown,
            drain_grace,
        })
    }
}

/// A running edge. [`EdgeHandle::shutdown`] stops it gracefully; dropping it stops it at once,
/// with no grace period.
pub struct EdgeHandle {
    quic_addr: SocketAddr,
    binding_addrs: HashMap<String, SocketAddr>,
    registry: Arc<Registry<AnyConnection>>,
    tunnels: Arc<TunnelStore>,
    token_addresses: Vec<String>,
    server_name: String,
    ca_pin: [u8; 32],
    listener: Arc<AnyListener>,
    /// The directory's source, kept for as long as the edge runs.
    _directory: Arc<dyn DirectoryStore>,
    shutdown: Shutdown,
    drain_grace: Duration,
}

impl EdgeHandle {
    /// The UDP address connectors dial.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The TCP address of a binding's listener (forward proxy or plain TCP port).
    pub fn binding_addr(&self, name: &str) -> Option<SocketAddr> {
        self.binding_addrs.get(name).copied()
    }

    /// Live connector connections.
    pub fn registry(&self) -> &Arc<Registry<AnyConnection>> {
        &self.registry
    }

    /// The tunnels of this edge's state directory.
    pub fn tunnels(&self) -> &Arc<TunnelStore> {
        &self.tunnels
    }

    /// The SHA-256 pin of the edge's CA certificate.
    pub fn ca_pin(&self) -> [u8; 32] {
        self.ca_pin
    }

    /// Create a tunnel (saved to the state directory) and return its token. Writes the file
    /// on the calling thread.
    pub fn create_tunnel(&self, name: &str) -> Result<TunnelToken, EdgeError> {
        let tunnel = self.tunnels.create(name)?;
        Ok(self.token_for(&tunnel))
    }

    /// The token of an existing tunnel, by name or id.
    pub fn token(&self, tunnel: &str) -> Option<TunnelToken> {
        self.tunnels.resolve(tunnel).map(|t| self.token_for(&t))
    }

    fn token_for(&self, tunnel: &Tunnel) -> TunnelToken {
        tunnel.token(self.token_addresses.clone(), &self.server_name, self.ca_pin)
    }

    /// Stop gracefully and wait for all of it: stop accepting connectors and binding clients,
    /// drain every connector connection (open streams, response bodies and pipes included,
    /// may finish within `drain_grace_ms`), cut what is still open when the grace period is
    /// over, wait for every task to end, then close the QUIC endpoint.
    pub async fn shutdown(self) {
        let report = self.shutdown.shutdown(self.drain_grace).await;
        self.listener.close();
        // Bounded: the endpoint is closed, so this waits only for the close frames to go out.
        let _ = tokio::time::timeout(ENDPOINT_CLOSE_WAIT, self.listener.wait_idle()).await;
        info!(
            forced = report.forced,
            abandoned = report.abandoned,
            "edge stopped"
        );
    }
}

impl Drop for EdgeHandle {
    fn drop(&mut self) {
        if self.shutdown.is_stopping() {
            return;
        }
        // Not shut down gracefully: cut everything now (tasks see the grace period as over).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shutdown = self.shutdown.clone();
            runtime.spawn(async move { shutdown.shutdown(Duration::ZERO).await });
        } else {
            self.shutdown.stop();
        }
        self.listener.close();
    }
}

/// Run an edge with `config` until `signal` resolves, then stop it gracefully.
pub async fn serve(config: EdgeConfig, signal: impl Future<Output = ()>) -> Result<(), EdgeError> {
    let edge = Edge::start(config).await?;
    signal.await;
    info!("shutting down");
    edge.shutdown().await;
    Ok(())
}

/// The edge addresses written into tokens: `public_addresses`, else the bound address (given
/// by a running edge) or the configured one (the CLI). An unspecified IP (`0.0.0.0`, `::`)
/// becomes loopback for a running edge and is an error for the CLI, as is port 0.
pub fn token_addresses(
    config: &EdgeConfig,
    bound: Option<SocketAddr>,
) -> Result<Vec<String>, EdgeError> {
    if !config.public_addresses.is_empty() {
        return Ok(config.public_addresses.clone());
    }
    let addr = match bound {
        Some(mut addr) => {
            if addr.ip().is_unspecified() {
                let loopback = match addr.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                };
                warn!(
                    listen = %addr,
                    "public_addresses is not set; tokens name loopback, reachable from this \
                     host only"
                );
                addr.set_ip(loopback);
            }
            addr
        }
        None => {
            let addr = config.listen;
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(EdgeError::NoPublicAddress(addr));
            }
            addr
        }
    };
    Ok(vec![addr.to_string()])
}
