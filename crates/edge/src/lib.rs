//! The Underpass edge: accepts connectors over QUIC, keeps the directory of tunnels, networks
//! and services, and serves each binding as an HTTP/1.1 forward proxy on its own listener.
//!
//! - [`config`]: the TOML configuration, validated before anything is bound;
//! - [`directory`]: the validated networks, services and bindings;
//! - [`state`] and [`tunnels`]: the state directory (dev PKI, tunnels and their secrets);
//! - [`registry`]: live connector connections per tunnel;
//! - [`server`]: registration and the control stream of each connector connection;
//! - [`front`]: the forward-proxy binding listeners (`CONNECT` for `connect()`, absolute-form
//!   requests for `fetch()`);
//! - [`fetch`]: forwarding one `fetch()` over a stream;
//! - [`forward`]: plain TCP bindings (`mode = "tcp"`), a local port into one TCP service;
//! - [`cli`]: the `underpass-edge` command line.
//!
//! [`Edge::start`] binds everything and returns an [`EdgeHandle`]; [`serve`] runs an edge until
//! a shutdown future resolves.
#![forbid(unsafe_code)]

pub mod authority;
pub mod cli;
pub mod config;
pub mod directory;
pub mod fetch;
pub mod forward;
pub mod front;
pub mod proxy_status;
pub mod registry;
pub mod server;
pub mod state;
pub mod tunnels;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};
use underpass_proto::TunnelToken;
use underpass_transport::quic::{self, QuicConnection, QuicListener, TransportError};
use underpass_transport::tls::{self, TlsError};

use crate::config::{BindingMode, ConfigError, EdgeConfig};
use crate::front::FrontContext;
use crate::registry::Registry;
use crate::server::{ServerContext, ServerSettings};
use crate::state::{Pki, StateError};
use crate::tunnels::{Tunnel, TunnelStore};

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
        let pki = Pki::load_or_generate(&config.state_dir, &config.server_name)?;
        let tunnels = Arc::new(TunnelStore::open(&config.state_dir)?);
        let tls = tls::server_config(
            pki.chain_pem.as_bytes(),
            pki.key_pem.as_bytes(),
            &[quic::ALPN],
        )?;
        let listener = QuicListener::bind(config.listen, Arc::new(tls), &config.quic.settings())
            .map_err(|source| EdgeError::Quic {
                addr: config.listen,
                source,
            })?;
        let quic_addr = listener.local_addr();
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

        let mut bound = Vec::with_capacity(directory.bindings.len());
        for binding in directory.bindings {
            let listener = TcpListener::bind(binding.listen).await.map_err(|source| {
                EdgeError::BindingListen {
                    binding: binding.name.clone(),
                    addr: binding.listen,
                    source,
                }
            })?;
            let addr = front::listener_addr(&listener, binding.listen);
            if !addr.ip().is_loopback() {
                warn!(
                    binding = %binding.name,
                    %addr,
                    "binding listens beyond loopback: anyone who reaches it reaches the \
                     private network"
                );
            }
            if tunnels.resolve(binding.target.tunnel()).is_none() {
                warn!(
                    binding = %binding.name,
                    tunnel = binding.target.tunnel(),
                    "tunnel does not exist yet; create it with `underpass-edge tunnel create`"
                );
            }
            bound.push((binding, listener, addr));
        }

        let token_addresses = token_addresses(&config, Some(quic_addr))?;
        let registry = Arc::new(Registry::new());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let timeouts = &config.timeouts;
        let server_context = Arc::new(ServerContext {
            registry: registry.clone(),
            tunnels: tunnels.clone(),
            settings: ServerSettings {
                edge_name: config.server_name.clone(),
                register_timeout: Duration::from_millis(timeouts.register_ms),
                heartbeat_interval: Duration::from_millis(timeouts.heartbeat_interval_ms),
                retry_after: Duration::from_secs(5),
                drain_grace: Duration::from_millis(timeouts.drain_grace_ms),
            },
        });
        tasks.spawn(server::run(
            listener,
            server_context,
            stop_signal(stopped.clone()),
        ));
        let front_context = Arc::new(FrontContext {
            registry: registry.clone(),
            tunnels: tunnels.clone(),
            connect_timeout: Duration::from_millis(timeouts.connect_ms),
        });
        let mut binding_addrs = HashMap::new();
        for (binding, listener, addr) in bound {
            info!(binding = %binding.name, %addr, mode = %binding.mode, "binding listening");
            binding_addrs.insert(binding.name.clone(), addr);
            let mode = binding.mode;
            let (binding, context, stop) = (
                Arc::new(binding),
                front_context.clone(),
                stop_signal(stopped.clone()),
            );
            match mode {
                BindingMode::Proxy => {
                    tasks.spawn(front::serve_binding(listener, binding, context, stop));
                }
                BindingMode::Tcp => {
                    tasks.spawn(forward::serve_tcp_binding(listener, binding, context, stop));
                }
            }
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
            stop,
            tasks,
        })
    }
}

/// A running edge. Dropping it aborts its tasks; [`EdgeHandle::shutdown`] stops it gracefully.
pub struct EdgeHandle {
    quic_addr: SocketAddr,
    binding_addrs: HashMap<String, SocketAddr>,
    registry: Arc<Registry<QuicConnection>>,
    tunnels: Arc<TunnelStore>,
    token_addresses: Vec<String>,
    server_name: String,
    ca_pin: [u8; 32],
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
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
    pub fn registry(&self) -> &Arc<Registry<QuicConnection>> {
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

    /// Create a tunnel (saved to the state directory) and return its token.
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

    /// Stop accepting, drain connectors (open streams may finish within the configured grace
    /// period), close every listener, and wait for all of it.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        info!("edge stopped");
    }
}

/// Run an edge with `config` until `shutdown` resolves, then stop it gracefully.
pub async fn serve(
    config: EdgeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EdgeError> {
    let edge = Edge::start(config).await?;
    shutdown.await;
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

/// A future that resolves when `stopped` turns true (or its sender is gone).
async fn stop_signal(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}
