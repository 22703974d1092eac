//! Start-up wiring: [`Edge::start`] validates the configuration, loads the state, binds every
//! listener and starts the tasks; [`EdgeHandle`] reloads and stops them; [`serve`] runs an
//! edge until a shutdown future resolves, [`serve_with_signals`] until SIGTERM/SIGINT, with
//! SIGHUP reloading the config file.
//!
//! Every task goes through one [`Shutdown`]: the connector side ([`crate::server`]), the
//! binding listeners and their client connections, pipes and uploads ([`crate::front`]), and
//! the tunnel refresh. Each binding listener has its own child of it, so that a live reload can
//! stop one binding (it stops accepting, its open exchanges may finish within the drain
//! grace) while the rest keeps serving. Stopping the edge is: stop accepting, drain connectors
//! and let open streams finish within `drain_grace_ms`, cut what is left with resets, wait,
//! then close the QUIC endpoint. The admin listener is not tracked: it answers (`/ready`: 503)
//! during the drain and stops when the handle is dropped.
//!
//! Under a service manager (`NOTIFY_SOCKET`, `Type=notify`), [`serve`] and
//! [`serve_with_signals`] report `READY=1` once every listener is bound, a `STATUS=` line
//! whenever it changes ("2 connectors registered (4 connections), 12 streams", "draining: 3
//! streams open"), `STOPPING=1` when the drain begins, and `WATCHDOG=1` while the runtime runs
//! tasks ([`underpass_rt::notify`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};
use underpass_proto::{CloseCode, TunnelToken};
use underpass_rt::admin::AdminServer;
use underpass_rt::notify::{Notifier, Reporting};
use underpass_rt::{Shutdown, Signal, Signals};
use underpass_transport::h2::{self, H2Listener};
use underpass_transport::quic::{self, QuicListener};
use underpass_transport::tls;
use underpass_transport::{AnyConnection, AnyListener, Listener, Protocol};

pub use crate::error::EdgeError;

use crate::admin::EdgeAdmin;
use crate::api::directory as api_directory;
use crate::api::handlers::{Api, EdgeSide};
use crate::config::{ConfigError, EdgeConfig, Unmatched};
use crate::db::{DirectoryBackend, SqliteBackend};
use crate::directory::{ConfigDirectory, DirectoryStore, ListenerPlan};
use crate::front::{self, ClientConnections, FrontContext};
use crate::metrics::EdgeMetrics;
use crate::model::{Binding, Directory};
use crate::registry::{ConnectionInfo, Registry};
use crate::server::{self, ServerContext, ServerSettings};
use crate::state::{self, Pki};
use crate::tunnels::{Revoked, Tunnel, TunnelStore, REFRESH_INTERVAL};

/// How long, after every task has ended, the closed QUIC endpoint may take to tell the peers.
const ENDPOINT_CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How often the status line for the service manager is looked at again: stream counts
/// change without a change of the registry.
const STATUS_REFRESH: Duration = Duration::from_secs(5);

/// Entry point for running an edge in-process.
pub struct Edge;

impl Edge {
    /// Validate `config`, load or create the state (PKI, tunnels, stateless-reset key), bind
    /// the QUIC listener, every binding listener and the admin listener, and start serving.
    /// Ports 0 are allowed: ask the handle for the real addresses.
    pub async fn start(config: EdgeConfig) -> Result<EdgeHandle, EdgeError> {
        let config_directory = config.directory()?;
        let settings = config
            .quic
            .settings()
            .map_err(|error| ConfigError::Invalid(error.to_string()))?;
        let pki = Pki::load_or_generate(&config.state_dir, &config.server_name)?;
        let reset_key = state::reset_key(&config.state_dir)?;
        let tunnels = Arc::new(TunnelStore::open(&config.state_dir)?);
        // The directory database: the API's objects, served beside the config file's.
        let backend: Arc<dyn DirectoryBackend> = Arc::new(SqliteBackend::open(&config.state_dir)?);
        let from_api = api_directory::load(&*backend)?;
        tunnels.set_api_tunnels(from_api.tunnels.clone());
        let directory = merged(&config_directory, &from_api);
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
            QuicListener::bind_with_reset_key(config.listen, Arc::new(tls), &settings, reset_key)
                .map_err(quic_error)?;
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
        // HTTP/2 on TCP, on the port QUIC bound unless configured otherwise.
        let h2_addr = config.listen_http2.unwrap_or(quic_addr);
        let h2_tls = tls::server_config(
            pki.chain_pem.as_bytes(),
            pki.key_pem.as_bytes(),
            &[h2::ALPN],
        )?;
        let h2_tls = Arc::new(h2_tls);
        let h2_listener = match H2Listener::bind(h2_addr, h2_tls.clone(), &config.http2) {
            // `listen` asked for any free port: QUIC's may be taken on TCP; take another.
            Err(error) if config.listen_http2.is_none() && config.listen.port() == 0 => {
                let any = SocketAddr::new(h2_addr.ip(), 0);
                warn!(%error, port = h2_addr.port(), "TCP port of the QUIC listener is taken; HTTP/2 listens on another");
                H2Listener::bind(any, h2_tls, &config.http2)
            }
            bound => bound,
        }
        .map_err(|source| EdgeError::Http2 {
            addr: h2_addr,
            source,
        })?;
        let h2_listener = Arc::new(AnyListener::from(h2_listener));
        let http2_addr = h2_listener.local_addr();

        let mut bound = Vec::with_capacity(directory.bindings.len());
        for binding in &directory.bindings {
            let (tcp, addr) = bind_binding(binding, &tunnels).await?;
            bound.push((binding.clone(), tcp, addr));
        }

        let token_addresses = token_addresses(&config, Some(quic_addr))?;
        let registry = Arc::new(Registry::new());
        registry.set_unmatched(config.routing.unmatched);
        let shutdown = Shutdown::new();
        let metrics = Arc::new(EdgeMetrics::new());
        let timeouts = &config.timeouts;
        let drain_grace = Duration::from_millis(timeouts.drain_grace_ms);
        let listeners = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            registry: registry.clone(),
            tunnels: tunnels.clone(),
            directory: ConfigDirectory::new(directory),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            connect_timeout: Duration::from_millis(timeouts.connect_ms),
            body_idle: Duration::from_millis(timeouts.body_idle_ms),
            header_read: Duration::from_millis(timeouts.header_read_ms),
            clients: client_connections(&config),
            drain_grace,
            bindings: Mutex::new(HashMap::new()),
            reload: tokio::sync::Mutex::new(()),
            started_with: config.clone(),
            listeners: listeners.clone(),
            backend,
            config_directory: Mutex::new(config_directory),
        });

        let admin = match config.admin.listen {
            Some(addr) => {
                let side = Arc::new(ApiSide {
                    shared: Arc::downgrade(&shared),
                    token_addresses: token_addresses.clone(),
                    server_name: config.server_name.clone(),
                    ca_pin: pki.ca_pin,
                });
                let api = Arc::new(Api::new(shared.backend.clone(), side));
                let tls = admin_tls(&config)?;
                Some(bind_admin(addr, &shared, api, tls).await?)
            }
            None => None,
        };

        let server_context = Arc::new(ServerContext {
            registry: registry.clone(),
            tunnels: tunnels.clone(),
            directory: shared.directory.subscribe(),
            settings: ServerSettings {
                edge_name: config.server_name.clone(),
                register_timeout: Duration::from_millis(timeouts.register_ms),
                heartbeat_interval: Duration::from_millis(timeouts.heartbeat_interval_ms),
                retry_after: Duration::from_secs(5),
                drain_grace,
                peer_timeout: server::dead_peer_timeout(&settings),
            },
            shutdown: shutdown.clone(),
        });
        shutdown.spawn(server::run(
            listener.clone(),
            Protocol::Quic,
            server_context.clone(),
        ));
        shutdown.spawn(server::run(
            h2_listener.clone(),
            Protocol::Http2,
            server_context,
        ));
        let revoker = shared.clone();
        shutdown.spawn(tunnels.clone().refresh_every(
            REFRESH_INTERVAL,
            shutdown.clone(),
            move |revoked| revoker.close_revoked(revoked),
        ));
        {
            let mut running = shared.bindings();
            for (binding, tcp, addr) in bound {
                let binding_name = binding.name.clone();
                running.insert(binding_name, shared.spawn_binding(binding, tcp, addr));
            }
            listeners.store(running.len() + 1, Ordering::Relaxed);
        }
        info!(
            quic = %quic_addr,
            http2 = %http2_addr,
            bindings = shared.bindings().len(),
            ca_pin = %hex::encode(pki.ca_pin),
            "edge started"
        );
        Ok(EdgeHandle {
            quic_addr,
            http2_addr,
            shared,
            token_addresses,
            server_name: config.server_name,
            ca_pin: pki.ca_pin,
            listeners: [listener, h2_listener],
            admin,
            drain_grace,
        })
    }
}

/// Bind a binding's listener, with the warnings an operator should see.
async fn bind_binding(
    binding: &Binding,
    tunnels: &TunnelStore,
) -> Result<(TcpListener, SocketAddr), EdgeError> {
    let tcp = front::bind_listener(binding.listen).map_err(|source| EdgeError::BindingListen {
        binding: binding.name.clone(),
        addr: binding.listen,
        source,
    })?;
    let addr = front::listener_addr(&tcp, binding.listen);
    if !addr.ip().is_loopback() {
        warn!(
            binding = %binding.name,
            %addr,
            "binding listens beyond loopback: anyone who reaches it reaches the private network"
        );
    }
    for tunnel in binding.target.tunnels() {
        if tunnels.resolve(tunnel.as_str()).is_none() {
            warn!(
                binding = %binding.name,
                %tunnel,
                "tunnel does not exist yet; create it with `underpass-edge tunnel create`"
            );
        }
    }
    Ok((tcp, addr))
}

/// Start the admin listener on `addr`.
/// The admin listener's TLS configuration from `[admin] tls_cert` and `tls_key`, if set.
fn admin_tls(config: &EdgeConfig) -> Result<Option<Arc<rustls::ServerConfig>>, EdgeError> {
    let (Some(cert), Some(key)) = (&config.admin.tls_cert, &config.admin.tls_key) else {
        return Ok(None);
    };
    let read = |key_name: &str, path: &Path| {
        std::fs::read(path).map_err(|error| {
            EdgeError::Admin(format!("admin.{key_name} {}: {error}", path.display()))
        })
    };
    let (chain, key_pem) = (read("tls_cert", cert)?, read("tls_key", key)?);
    let tls = tls::server_config(&chain, &key_pem, &[b"http/1.1"]).map_err(|error| {
        EdgeError::Admin(format!(
            "admin.tls_cert {} / admin.tls_key {}: {error}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Some(Arc::new(tls)))
}

async fn bind_admin(
    addr: SocketAddr,
    shared: &Shared,
    api: Arc<Api>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<AdminServer, EdgeError> {
    let handler = Arc::new(EdgeAdmin {
        api,
        registry: shared.registry.clone(),
        tunnels: shared.tunnels.clone(),
        metrics: shared.metrics.clone(),
        shutdown: shared.shutdown.clone(),
        listeners: shared.listeners.clone(),
    });
    // The server logs its address, and warns when it is not on loopback.
    AdminServer::bind_tls(addr, handler, tls)
        .await
        .map_err(|source| EdgeError::AdminListen { addr, source })
}

/// The binding listeners' client connections under `limits.max_client_connections`, or the
/// default derived from the descriptor limit.
fn client_connections(config: &EdgeConfig) -> Arc<ClientConnections> {
    let (limit, source) = match config.limits.max_client_connections {
        Some(limit) => (limit, "configured"),
        None => (front::default_client_limit(), "derived from RLIMIT_NOFILE"),
    };
    let max_idle = config.limits.max_idle_client_connections;
    info!(
        limit,
        source, max_idle, "limits.max_client_connections, limits.max_idle_client_connections"
    );
    ClientConnections::new(limit, max_idle)
}

/// What the edge's tasks, its handle and its admin endpoints share.
struct Shared {
    registry: Arc<Registry<AnyConnection>>,
    tunnels: Arc<TunnelStore>,
    directory: ConfigDirectory,
    metrics: Arc<EdgeMetrics>,
    shutdown: Shutdown,
    connect_timeout: Duration,
    body_idle: Duration,
    header_read: Duration,
    /// Every binding's client connections, under `limits.max_client_connections`.
    clients: Arc<ClientConnections>,
    drain_grace: Duration,
    /// The binding listeners running now, by binding name.
    bindings: Mutex<HashMap<String, RunningBinding>>,
    /// Held by a reload from start to end: reloads happen one at a time.
    reload: tokio::sync::Mutex<()>,
    /// The configuration the edge started with: what a reload cannot change.
    started_with: EdgeConfig,
    /// Listeners bound now (QUIC and bindings), for `/ready`.
    listeners: Arc<AtomicUsize>,
    /// The directory database.
    backend: Arc<dyn DirectoryBackend>,
    /// The config file's directory as last loaded (a change through the API is served beside
    /// it).
    config_directory: Mutex<Directory>,
}

/// The config file's objects, then the database's.
fn merged(config: &Directory, api: &api_directory::ApiDirectory) -> Directory {
    Directory {
        networks: config
            .networks
            .iter()
            .chain(&api.networks)
            .cloned()
            .collect(),
        services: config
            .services
            .iter()
            .chain(&api.services)
            .cloned()
            .collect(),
        bindings: config
            .bindings
            .iter()
            .chain(&api.bindings)
            .cloned()
            .collect(),
    }
}

/// What the admin API changes on this edge.
struct ApiSide {
    shared: std::sync::Weak<Shared>,
    token_addresses: Vec<String>,
    server_name: String,
    ca_pin: [u8; 32],
}

impl EdgeSide for ApiSide {
    fn apply(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let shared = self.shared.upgrade().ok_or("the edge has stopped")?;
            shared
                .apply(None, None)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        })
    }

    fn binding_addr(&self, name: &str) -> Option<SocketAddr> {
        let shared = self.shared.upgrade()?;
        let addr = shared.bindings().get(name).map(|running| running.addr);
        addr
    }

    fn connector_token(&self, tunnel: &Tunnel) -> String {
        tunnel
            .token(self.token_addresses.clone(), &self.server_name, self.ca_pin)
            .encode()
    }
}

/// A binding listener that runs, and the part of the shutdown its tasks belong to.
struct RunningBinding {
    binding: Arc<Binding>,
    addr: SocketAddr,
    part: Shutdown,
}

impl Shared {
    /// Serve `config` (the config file's directory; `None`: the one last loaded) beside the
    /// database's current objects: bind the new listeners, then publish the directory, stop
    /// the removed listeners and close the connections of tunnels the database no longer has.
    /// Anything that fails fails before anything changed.
    async fn apply(
        &self,
        config: Option<Directory>,
        unmatched: Option<Unmatched>,
    ) -> Result<ReloadSummary, EdgeError> {
        let _one_at_a_time = self.reload.lock().await;
        if self.shutdown.is_stopping() {
            return Err(EdgeError::Reload("the edge is shutting down".into()));
        }
        let from_file = config.is_some();
        let config = match config {
            Some(config) => config,
            None => self
                .config_directory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        let from_api = api_directory::load(&*self.backend)?;
        let directory = merged(&config, &from_api);
        let running: Vec<Arc<Binding>> = self
            .bindings()
            .values()
            .map(|running| running.binding.clone())
            .collect();
        let plan =
            ListenerPlan::between(&running, &directory.bindings).map_err(EdgeError::Reload)?;
        let mut bound = Vec::with_capacity(plan.start.len());
        for binding in &plan.start {
            let (tcp, addr) = bind_binding(binding, &self.tunnels).await?;
            bound.push((binding.clone(), tcp, addr));
        }
        let revoked = self.tunnels.set_api_tunnels(from_api.tunnels);
        self.close_revoked(&revoked);
        self.directory.publish(directory);
        *self
            .config_directory
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = config;
        if let Some(unmatched) = unmatched {
            self.registry.set_unmatched(unmatched);
        }
        let mut summary = ReloadSummary::default();
        let mut bindings = self.bindings();
        for name in plan.stop {
            if let Some(old) = bindings.remove(&name) {
                info!(
                    binding = %name,
                    addr = %old.addr,
                    "binding removed: no longer accepting; open exchanges may finish"
                );
                old.part.stop();
                summary.stopped.push(name);
            }
        }
        for (binding, tcp, addr) in bound {
            summary.started.push(binding.name.clone());
            let name = binding.name.clone();
            bindings.insert(name, self.spawn_binding(binding, tcp, addr));
        }
        self.listeners.store(bindings.len() + 1, Ordering::Relaxed);
        drop(bindings);
        if from_file {
            info!(
                started = ?summary.started,
                stopped = ?summary.stopped,
                "configuration reloaded"
            );
        } else {
            info!(
                started = ?summary.started,
                stopped = ?summary.stopped,
                "directory changed through the API"
            );
        }
        Ok(summary)
    }

    fn bindings(&self) -> MutexGuard<'_, HashMap<String, RunningBinding>> {
        // Every critical section leaves the map consistent, so a poisoned lock is usable.
        self.bindings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serve `binding` on `tcp` in a part of its own: stopping the part stops the listener,
    /// lets its client connections and pipes finish within the drain grace, then cuts them.
    fn spawn_binding(
        &self,
        binding: Arc<Binding>,
        tcp: TcpListener,
        addr: SocketAddr,
    ) -> RunningBinding {
        let part = self.shutdown.child();
        let context = Arc::new(FrontContext {
            registry: self.registry.clone(),
            tunnels: self.tunnels.clone(),
            directory: self.directory.subscribe(),
            connect_timeout: self.connect_timeout,
            body_idle: self.body_idle,
            header_read: self.header_read,
            clients: self.clients.clone(),
            shutdown: part.clone(),
            metrics: self.metrics.clone(),
        });
        info!(binding = %binding.name, %addr, mode = %binding.mode, "binding listening");
        let (task_binding, task_part, grace) = (binding.clone(), part.clone(), self.drain_grace);
        self.shutdown.spawn(async move {
            front::serve(tcp, &task_binding, context).await;
            let report = task_part.shutdown(grace).await;
            debug!(
                binding = %task_binding.name,
                forced = report.forced,
                "binding stopped"
            );
        });
        RunningBinding {
            binding,
            addr,
            part,
        }
    }

    /// Close the connections of tunnels whose secret was revoked (deleted, rotated): their
    /// connectors re-register and are refused with the reason, or succeed with a new token.
    fn close_revoked(&self, revoked: &[Revoked]) {
        for tunnel in revoked {
            let closed = self.registry.close_tunnel(
                &tunnel.id,
                CloseCode::Refused.code(),
                tunnel.why.text(),
            );
            info!(
                tunnel = %tunnel.name,
                reason = tunnel.why.text(),
                connections = closed,
                "tunnel revoked; closed its connector connections"
            );
        }
    }
}

/// A running edge. [`EdgeHandle::shutdown`] stops it gracefully; dropping it stops it at once,
/// with no grace period.
pub struct EdgeHandle {
    quic_addr: SocketAddr,
    http2_addr: SocketAddr,
    shared: Arc<Shared>,
    token_addresses: Vec<String>,
    server_name: String,
    ca_pin: [u8; 32],
    /// QUIC, then HTTP/2.
    listeners: [Arc<AnyListener>; 2],
    admin: Option<AdminServer>,
    drain_grace: Duration,
}

/// What a live reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Bindings whose listener was started (new, or moved to another address).
    pub started: Vec<String>,
    /// Bindings whose listener was stopped (removed, or moved).
    pub stopped: Vec<String>,
}

impl EdgeHandle {
    /// The UDP address connectors dial.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The TCP address of the HTTP/2 listener (connectors whose network blocks UDP).
    pub fn http2_addr(&self) -> SocketAddr {
        self.http2_addr
    }

    /// The TCP address of a binding's listener (forward proxy or plain TCP port).
    pub fn binding_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.bindings().get(name).map(|running| running.addr)
    }

    /// The admin listener's address, if `[admin] listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// Live connector connections.
    pub fn registry(&self) -> &Arc<Registry<AnyConnection>> {
        &self.shared.registry
    }

    /// The tunnels of this edge's state directory.
    pub fn tunnels(&self) -> &Arc<TunnelStore> {
        &self.shared.tunnels
    }

    /// The SHA-256 pin of the edge's CA certificate.
    pub fn ca_pin(&self) -> [u8; 32] {
        self.ca_pin
    }

    /// Create a tunnel (saved to the state directory) and return its token. Writes the file
    /// on the calling thread.
    pub fn create_tunnel(&self, name: &str) -> Result<TunnelToken, EdgeError> {
        let tunnel = self.shared.tunnels.create(name)?;
        Ok(self.token_for(&tunnel))
    }

    /// The token of an existing tunnel, by name or id.
    pub fn token(&self, tunnel: &str) -> Option<TunnelToken> {
        self.shared
            .tunnels
            .resolve(tunnel)
            .map(|t| self.token_for(&t))
    }

    fn token_for(&self, tunnel: &Tunnel) -> TunnelToken {
        tunnel.token(self.token_addresses.clone(), &self.server_name, self.ca_pin)
    }

    /// The Prometheus text `/metrics` serves.
    pub fn metrics_text(&self) -> String {
        self.shared
            .metrics
            .render(&self.shared.registry.snapshot(), &self.shared.tunnels)
    }

    /// Apply `config`'s networks, services, bindings and `[routing]` while serving: the new
    /// directory is published (the next request and every connector connection see it),
    /// listeners start for new bindings, and removed ones stop accepting while their open
    /// exchanges finish (within the drain grace). A binding whose `listen` changed is removed
    /// and added. Other keys take effect at the next start (a warning names them). An invalid
    /// config, or one whose listeners cannot be bound, changes nothing.
    pub async fn reload(&self, config: &EdgeConfig) -> Result<ReloadSummary, EdgeError> {
        let directory = config.directory()?;
        warn_static_changes(&self.shared.started_with, config);
        self.shared
            .apply(Some(directory), Some(config.routing.unmatched))
            .await
    }

    /// Delete a tunnel (as `underpass-edge tunnel delete` does) and close its connections now.
    pub fn delete_tunnel(&self, tunnel: &str) -> Result<(), EdgeError> {
        let deleted = self.shared.tunnels.delete(tunnel)?;
        self.shared.close_revoked(&[Revoked {
            id: deleted.id,
            name: deleted.name,
            why: crate::tunnels::Revocation::Deleted,
        }]);
        Ok(())
    }

    /// Give a tunnel a new secret (as `underpass-edge tunnel rotate-secret` does), close its
    /// connections now, and return the new token.
    pub fn rotate_secret(&self, tunnel: &str) -> Result<TunnelToken, EdgeError> {
        let rotated = self.shared.tunnels.rotate_secret(tunnel)?;
        self.shared.close_revoked(&[Revoked {
            id: rotated.id,
            name: rotated.name.clone(),
            why: crate::tunnels::Revocation::SecretRotated,
        }]);
        Ok(self.token_for(&rotated))
    }

    /// Stop gracefully and wait for all of it: stop accepting connectors and binding clients,
    /// drain every connector connection (open streams, response bodies and pipes included,
    /// may finish within `drain_grace_ms`), cut what is still open when the grace period is
    /// over, wait for every task to end, then close the QUIC endpoint. The admin listener
    /// answers until the end (`/ready`: 503).
    pub async fn shutdown(self) {
        let report = self.shared.shutdown.shutdown(self.drain_grace).await;
        for listener in &self.listeners {
            listener.close();
        }
        // Bounded: the endpoints are closed, so this waits only for the close frames to go
        // out.
        for listener in &self.listeners {
            let _ = tokio::time::timeout(ENDPOINT_CLOSE_WAIT, listener.wait_idle()).await;
        }
        info!(
            forced = report.forced,
            abandoned = report.abandoned,
            "edge stopped"
        );
    }
}

impl Drop for EdgeHandle {
    fn drop(&mut self) {
        let shutdown = &self.shared.shutdown;
        if shutdown.is_stopping() {
            return;
        }
        // Not shut down gracefully: cut everything now (tasks see the grace period as over).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shutdown = shutdown.clone();
            runtime.spawn(async move { shutdown.shutdown(Duration::ZERO).await });
        } else {
            shutdown.stop();
        }
        for listener in &self.listeners {
            listener.close();
        }
    }
}

/// Log the keys of `new` that differ from what the edge started with: a reload does not apply
/// them.
fn warn_static_changes(started: &EdgeConfig, new: &EdgeConfig) {
    let changed = [
        ("state_dir", started.state_dir != new.state_dir),
        ("listen", started.listen != new.listen),
        (
            "public_addresses",
            started.public_addresses != new.public_addresses,
        ),
        ("server_name", started.server_name != new.server_name),
        ("quic", started.quic != new.quic),
        ("listen_http2", started.listen_http2 != new.listen_http2),
        ("http2", started.http2 != new.http2),
        ("timeouts", started.timeouts != new.timeouts),
        ("limits", started.limits != new.limits),
        ("runtime", started.runtime != new.runtime),
        ("admin", started.admin != new.admin),
        ("log_format", started.log_format != new.log_format),
    ];
    let keys: Vec<&str> = changed
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| *key)
        .collect();
    if !keys.is_empty() {
        warn!(
            keys = ?keys,
            "these settings changed in the config file; a reload applies only networks, \
             services and bindings, the rest takes effect at the next start"
        );
    }
}

/// Run an edge with `config` until `signal` resolves, then stop it gracefully.
pub async fn serve(config: EdgeConfig, signal: impl Future<Output = ()>) -> Result<(), EdgeError> {
    let edge = Edge::start(config).await?;
    let reporting = report_to_manager(&edge);
    signal.await;
    info!("shutting down");
    edge.shutdown().await;
    drop(reporting);
    Ok(())
}

/// Run an edge with `config` (read from `path`) as `underpass-edge serve` does: SIGHUP reloads
/// the file's networks, services and bindings (a bad file is refused and logged, the running
/// configuration kept); the first SIGTERM or SIGINT stops gracefully, a second one exits at
/// once with status 1.
pub async fn serve_with_signals(config: EdgeConfig, path: &Path) -> Result<(), EdgeError> {
    // Listening before the edge starts: a signal during the start is not lost.
    let mut signals = Signals::new().map_err(EdgeError::Runtime)?;
    let edge = Edge::start(config).await?;
    // Dropped when this returns: the manager hears of the drain, and of a live runtime, until
    // the edge has stopped.
    let _reporting = report_to_manager(&edge);
    loop {
        match signals.next().await {
            Signal::Terminate => break,
            Signal::Hangup => reload_file(&edge, path).await,
        }
    }
    info!("shutting down; a second SIGTERM or SIGINT exits at once");
    let drain = edge.shutdown();
    tokio::pin!(drain);
    loop {
        tokio::select! {
            () = &mut drain => return Ok(()),
            signal = signals.next() => match signal {
                Signal::Terminate => {
                    error!("second signal: exiting at once");
                    std::process::exit(i32::from(underpass_rt::EX_FAILURE));
                }
                Signal::Hangup => warn!("SIGHUP ignored: the edge is shutting down"),
            },
        }
    }
}

/// Tell the service manager, if there is one, that `edge` is ready (its listeners are bound),
/// then its status line whenever it changes and `STOPPING=1` once the drain begins, until the
/// returned guard is dropped.
fn report_to_manager(edge: &EdgeHandle) -> Reporting {
    let notifier = Notifier::from_env();
    let shared = edge.shared.clone();
    let reporter = notifier.clone();
    notifier.spawn_reporting(async move {
        reporter.ready();
        let mut stopping = false;
        let mut last = String::new();
        let mut refresh = tokio::time::interval(STATUS_REFRESH);
        loop {
            let draining = shared.shutdown.is_stopping();
            if draining && !stopping {
                reporter.stopping();
                stopping = true;
            }
            let status = edge_status(&shared.registry.snapshot(), draining);
            if status != last {
                reporter.status(&status);
                last.clone_from(&status);
            }
            let registry = &shared.registry;
            tokio::select! {
                () = registry.wait_until(|r| edge_status(&r.snapshot(), draining) != status) => {}
                () = shared.shutdown.stopping(), if !stopping => {}
                _ = refresh.tick() => {}
            }
        }
    })
}

/// The status line: the connectors (and their connections) registered and the streams they
/// carry, or the drain.
fn edge_status(connections: &[ConnectionInfo], draining: bool) -> String {
    let streams: usize = connections.iter().map(|c| c.active_streams).sum();
    if draining {
        return format!("draining: {streams} streams open");
    }
    let live: Vec<&ConnectionInfo> = connections.iter().filter(|c| !c.draining).collect();
    if live.is_empty() {
        return "listening; no connector registered".to_owned();
    }
    let mut connectors: Vec<_> = live.iter().map(|c| c.registration.connector_id).collect();
    connectors.sort_unstable();
    connectors.dedup();
    format!(
        "{} connectors registered ({} connections), {streams} streams",
        connectors.len(),
        live.len()
    )
}

/// Re-read the config file and apply it; a failure is logged and changes nothing.
async fn reload_file(edge: &EdgeHandle, path: &Path) {
    info!(config = %path.display(), "SIGHUP: reloading the configuration");
    let config = match EdgeConfig::load(path) {
        Ok(config) => config,
        Err(error) => {
            error!(%error, "reload refused; keeping the running configuration");
            return;
        }
    };
    if let Err(error) = edge.reload(&config).await {
        error!(%error, "reload refused; keeping the running configuration");
    }
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
