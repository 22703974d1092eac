//! An edge and a connector, in-process on loopback, joined by a real QUIC tunnel, with the
//! bindings a test asks for.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tempfile::TempDir;
use underpass_connector::config::ProtocolChoice;
use underpass_connector::{ConnectorConfig, ConnectorHandle};
use underpass_edge::config::{
    BindingConfig, BindingMode, CertVerificationMode, EdgeConfig, NetworkConfig, ServiceConfig,
    ServiceHost, ServiceKind, ServiceTls,
};
use underpass_edge::tunnels::TunnelStore;
use underpass_edge::{Edge, EdgeHandle};

/// The tunnel every stack uses.
pub const TUNNEL: &str = "e2e-tests";

/// How long the connector may take to register (guards a hang only).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(20);

tokio::task_local! {
    /// The transport the stacks started by the current test use ([`on_transport`]).
    static TRANSPORT: ProtocolChoice;
}

/// Runs `test` with every [`Stack`] it starts on `protocol` (`quic` or `http2`, forced: no
/// fallback). [`transport_tests!`](crate::transport_tests) writes one test per transport
/// around one body with it; outside it, stacks use QUIC.
pub async fn on_transport<F: std::future::Future>(protocol: ProtocolChoice, test: F) -> F::Output {
    TRANSPORT.scope(protocol, test).await
}

/// The transport of the current test's stacks.
pub fn transport() -> ProtocolChoice {
    TRANSPORT.try_with(|p| *p).unwrap_or(ProtocolChoice::Quic)
}

/// One test body, run once over each transport: `transport_tests! { async fn name() { ... } }`
/// makes the tests `name::quic` and `name::http2` (attributes such as `#[ignore]` go on both).
/// Every [`Stack`] the body starts uses that test's transport.
#[macro_export]
macro_rules! transport_tests {
    ($($(#[$meta:meta])* async fn $name:ident() $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn quic() {
                    $crate::stack::on_transport(
                        underpass_connector::config::ProtocolChoice::Quic,
                        async $body,
                    )
                    .await
                }

                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn http2() {
                    $crate::stack::on_transport(
                        underpass_connector::config::ProtocolChoice::Http2,
                        async $body,
                    )
                    .await
                }
            }
        )*
    };
}

/// A VPC Service for a test: an HTTP or HTTPS origin at a loopback address.
#[derive(Debug, Clone)]
pub struct Service {
    addr: SocketAddr,
    https: bool,
    ca_pem: Option<String>,
    mode: CertVerificationMode,
}

impl Service {
    /// A plain HTTP service: host = `origin`'s IP, `http_port` = its port.
    pub fn http(origin: SocketAddr) -> Self {
        Service {
            addr: origin,
            https: false,
            ca_pem: None,
            mode: CertVerificationMode::VerifyFull,
        }
    }

    /// An HTTPS service (`https_port` only, `verify_full`) whose `tls.ca_file` holds `ca_pem`
    /// (one CA or a whole bundle).
    pub fn https(origin: SocketAddr, ca_pem: &str) -> Self {
        Service {
            addr: origin,
            https: true,
            ca_pem: Some(ca_pem.to_owned()),
            mode: CertVerificationMode::VerifyFull,
        }
    }

    /// The same service with another `tls.cert_verification_mode`.
    pub fn with_mode(mut self, mode: CertVerificationMode) -> Self {
        self.mode = mode;
        self
    }
}

/// What to start.
#[derive(Debug, Default)]
pub struct StackBuilder {
    routes: Vec<(String, Option<String>)>,
    deny: Option<Vec<String>>,
    resolvers: Vec<SocketAddr>,
    networks: Vec<String>,
    services: Vec<(String, Service)>,
    tcp_forwards: Vec<(String, SocketAddr)>,
    drain_grace: Option<Duration>,
    body_idle: Option<Duration>,
}

/// A running edge and connector; both stop when dropped.
pub struct Stack {
    // Field order: the connector stops before the edge, the state folder goes last.
    connector: ConnectorHandle,
    edge: Option<EdgeHandle>,
    bindings: HashMap<String, SocketAddr>,
    _dir: TempDir,
}

impl Stack {
    /// An empty builder.
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// The listener of binding `name` (forward proxy or plain TCP port). It stays known after
    /// [`Stack::take_edge`].
    ///
    /// # Panics
    /// When there is no such binding.
    pub fn binding_addr(&self, name: &str) -> SocketAddr {
        *self
            .bindings
            .get(name)
            .unwrap_or_else(|| panic!("the edge has no binding {name:?}"))
    }

    /// The running edge.
    ///
    /// # Panics
    /// After [`Stack::take_edge`].
    pub fn edge(&self) -> &EdgeHandle {
        self.edge
            .as_ref()
            .expect("the edge was taken out of the stack")
    }

    /// The running connector.
    pub fn connector(&self) -> &ConnectorHandle {
        &self.connector
    }

    /// Takes the edge out of the stack, to shut it down (`EdgeHandle::shutdown` consumes it)
    /// while the test keeps using the stack's connector and binding addresses.
    ///
    /// # Panics
    /// When called twice.
    pub fn take_edge(&mut self) -> EdgeHandle {
        self.edge.take().expect("the edge was already taken")
    }
}

impl StackBuilder {
    /// Lets the connector dial `destination` (CIDR or hostname) on `ports` (all if `None`).
    pub fn route(mut self, destination: &str, ports: Option<&str>) -> Self {
        self.routes
            .push((destination.to_owned(), ports.map(str::to_owned)));
        self
    }

    /// Replaces the connector's deny list.
    pub fn deny(mut self, nets: &[&str]) -> Self {
        self.deny = Some(nets.iter().map(|n| (*n).to_owned()).collect());
        self
    }

    /// The connector resolves names with these servers.
    pub fn resolvers(mut self, resolvers: &[SocketAddr]) -> Self {
        self.resolvers = resolvers.to_vec();
        self
    }

    /// A VPC Network binding named `name` over the whole tunnel.
    pub fn network_binding(mut self, name: &str) -> Self {
        self.networks.push(name.to_owned());
        self
    }

    /// A VPC Service binding named `name` to `service`.
    pub fn service_binding(mut self, name: &str, service: Service) -> Self {
        self.services.push((name.to_owned(), service));
        self
    }

    /// A plain TCP binding (`mode = "tcp"`) named `name` to a TCP service at `origin`.
    pub fn tcp_binding(mut self, name: &str, origin: SocketAddr) -> Self {
        self.tcp_forwards.push((name.to_owned(), origin));
        self
    }

    /// The edge's `timeouts.body_idle_ms` (default: the edge's own, 60 s).
    pub fn body_idle(mut self, idle: Duration) -> Self {
        self.body_idle = Some(idle);
        self
    }

    /// The edge's `timeouts.drain_grace_ms` (default: the edge's own, 30 s).
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = Some(grace);
        self
    }

    /// Starts the edge (QUIC and bindings on 127.0.0.1, port 0), creates the tunnel, starts
    /// the connector and waits until it registered.
    ///
    /// # Panics
    /// When anything fails to start.
    pub async fn start(self) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("underpass-stack-")
            .tempdir()
            .expect("create tempdir");
        let config = self.edge_config(&dir);
        let names: Vec<String> = config.bindings.iter().map(|b| b.name.clone()).collect();
        // As an operator would: create the tunnel, then start the edge that serves it.
        underpass_edge::state::ensure_dir(&config.state_dir).expect("create the state dir");
        TunnelStore::open(&config.state_dir)
            .and_then(|store| store.create(TUNNEL))
            .expect("create the tunnel");
        let edge = Edge::start(config).await.expect("the edge starts");
        let bindings = names
            .into_iter()
            .map(|name| {
                let addr = edge
                    .binding_addr(&name)
                    .unwrap_or_else(|| panic!("the edge did not bind {name:?}"));
                (name, addr)
            })
            .collect();
        let token = edge.token(TUNNEL).expect("the edge knows the tunnel");

        let mut connector = ConnectorConfig::builder(token);
        for (destination, ports) in &self.routes {
            connector = match ports {
                Some(ports) => connector.route_ports(destination, ports),
                None => connector.route(destination),
            };
        }
        if let Some(deny) = &self.deny {
            connector = connector.deny(deny);
        }
        if !self.resolvers.is_empty() {
            connector = connector.resolvers(&self.resolvers);
        }
        let mut connector = connector.build().expect("a valid connector config");
        connector.protocol = transport();
        // The edge's HTTP/2 listener takes the QUIC port number on TCP when it is free, else
        // another port: dial the one it has.
        connector.edge.http2_port = Some(edge.http2_addr().port());
        let connector =
            underpass_connector::Connector::start(connector).expect("the connector starts");
        connector
            .wait_registered(REGISTER_TIMEOUT)
            .await
            .expect("the connector registers with the edge");
        Stack {
            connector,
            edge: Some(edge),
            bindings,
            _dir: dir,
        }
    }

    fn edge_config(&self, dir: &TempDir) -> EdgeConfig {
        let loopback = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0);
        let mut config = EdgeConfig::new(dir.path().join("edge-state"));
        config.listen = loopback;
        if let Some(idle) = self.body_idle {
            config.timeouts.body_idle_ms =
                u64::try_from(idle.as_millis()).expect("a body idle timeout that fits in u64 ms");
        }
        if let Some(grace) = self.drain_grace {
            config.timeouts.drain_grace_ms =
                u64::try_from(grace.as_millis()).expect("a drain grace that fits in u64 ms");
        }
        for name in &self.networks {
            config.networks.push(NetworkConfig {
                name: name.clone(),
                tunnel: TUNNEL.to_owned(),
            });
            config
                .bindings
                .push(BindingConfig::network(name, loopback, name));
        }
        for (name, service) in &self.services {
            let ca_file = service.ca_pem.as_ref().map(|pem| {
                let path = dir.path().join(format!("{name}-ca.pem"));
                std::fs::write(&path, pem).expect("write the service CA file");
                path
            });
            config.services.push(ServiceConfig {
                name: name.clone(),
                kind: ServiceKind::Http,
                tunnel: TUNNEL.to_owned(),
                host: ServiceHost::ip(service.addr.ip()),
                tcp_port: None,
                http_port: (!service.https).then_some(service.addr.port()),
                https_port: service.https.then_some(service.addr.port()),
                tls: ServiceTls {
                    cert_verification_mode: service.mode,
                    ca_file,
                },
            });
            config
                .bindings
                .push(BindingConfig::service(name, loopback, name));
        }
        for (name, origin) in &self.tcp_forwards {
            config.services.push(ServiceConfig {
                name: name.clone(),
                kind: ServiceKind::Tcp,
                tunnel: TUNNEL.to_owned(),
                host: ServiceHost::ip(origin.ip()),
                tcp_port: Some(origin.port()),
                http_port: None,
                https_port: None,
                tls: ServiceTls::default(),
            });
            config
                .bindings
                .push(BindingConfig::service(name, loopback, name).with_mode(BindingMode::Tcp));
        }
        config
    }
}
