//! An edge and a connector, in-process on loopback, joined by a real QUIC tunnel, with the
//! bindings a test asks for.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;
use underpass_connector::{ConnectorConfig, ConnectorHandle, Overrides};
use underpass_edge::config::{
    BindingConfig, BindingMode, CertVerificationMode, EdgeConfig, NetworkConfig, ServiceConfig,
    ServiceHost, ServiceKind, ServiceTls,
};
use underpass_edge::tunnels::TunnelStore;
use underpass_edge::{Edge, EdgeHandle};

/// The tunnel every test uses.
const TUNNEL: &str = "workerd-tests";

/// How long the connector may take to register (guards a hang only).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(20);

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

    /// An HTTPS service (`https_port` only, `verify_full`) trusting `ca_pem`.
    pub fn https(origin: SocketAddr, ca_pem: &str) -> Self {
        Service {
            addr: origin,
            https: true,
            ca_pem: Some(ca_pem.to_owned()),
            mode: CertVerificationMode::VerifyFull,
        }
    }

    /// The same service with another `tls.cert_verification_mode`.
    // Used by tests/fetch.rs; each test binary compiles this file on its own.
    #[allow(dead_code)]
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
}

/// A running edge and connector; both stop when dropped.
pub struct Stack {
    edge: EdgeHandle,
    _connector: ConnectorHandle,
    _dir: TempDir,
}

impl Stack {
    /// An empty builder.
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// The listener of binding `name` (forward proxy or plain TCP port).
    ///
    /// # Panics
    /// When there is no such binding.
    pub fn binding_addr(&self, name: &str) -> SocketAddr {
        self.edge
            .binding_addr(name)
            .unwrap_or_else(|| panic!("the edge has no binding {name:?}"))
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
    // Used by tests/tunnel.rs; each test binary compiles this file on its own.
    #[allow(dead_code)]
    pub fn tcp_binding(mut self, name: &str, origin: SocketAddr) -> Self {
        self.tcp_forwards.push((name.to_owned(), origin));
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
        let loopback = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0);
        let mut config = EdgeConfig::new(dir.path().join("edge-state"));
        config.listen = loopback;
        for name in &self.networks {
            config.networks.push(NetworkConfig {
                name: name.clone(),
                tunnel: TUNNEL.to_owned(),
            });
            config.bindings.push(BindingConfig {
                name: name.clone(),
                listen: loopback,
                network: Some(name.clone()),
                service: None,
                mode: Default::default(),
            });
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
            config.bindings.push(BindingConfig {
                name: name.clone(),
                listen: loopback,
                network: None,
                service: Some(name.clone()),
                mode: Default::default(),
            });
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
            config.bindings.push(BindingConfig {
                name: name.clone(),
                listen: loopback,
                network: None,
                service: Some(name.clone()),
                mode: BindingMode::Tcp,
            });
        }
        // As an operator would: create the tunnel, then start the edge that serves it.
        underpass_edge::state::ensure_dir(&config.state_dir).expect("create the state dir");
        TunnelStore::open(&config.state_dir)
            .and_then(|store| store.create(TUNNEL))
            .expect("create the tunnel");
        let edge = Edge::start(config).await.expect("the edge starts");
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
        let connector = connector.build().expect("a valid connector config");
        let connector =
            underpass_connector::Connector::start(connector).expect("the connector starts");
        connector
            .wait_registered(REGISTER_TIMEOUT)
            .await
            .expect("the connector registers with the edge");
        Stack {
            edge,
            _connector: connector,
            _dir: dir,
        }
    }
}

/// Loads `examples/edge.toml` and `examples/connector.toml` the way a user would use them
/// (copied to a folder of their own), failing on any error.
pub fn check_example_configs(examples: &Path) {
    let dir = tempfile::tempdir().expect("create tempdir");
    let edge = dir.path().join("edge.toml");
    std::fs::copy(examples.join("edge.toml"), &edge).expect("copy examples/edge.toml");
    let config = EdgeConfig::load(&edge).unwrap_or_else(|e| panic!("examples/edge.toml: {e}"));
    assert_eq!(config.bindings.len(), 5, "every example binding loads");

    let token = sample_token();
    let text = std::fs::read_to_string(examples.join("connector.toml"))
        .expect("read examples/connector.toml");
    let overrides = Overrides {
        token: Some(token.encode()),
        ..Overrides::default()
    };
    let config =
        ConnectorConfig::from_toml(&text, Path::new("connector.toml"), dir.path(), &overrides)
            .unwrap_or_else(|e| panic!("examples/connector.toml: {e}"));
    assert_eq!(config.routes.len(), 2, "both example routes load");
    assert!(config
        .deny
        .iter()
        .any(|n| n.to_string() == "127.20.0.99/32"));
}

fn sample_token() -> underpass_proto::TunnelToken {
    underpass_proto::TunnelToken {
        tunnel_id: underpass_proto::TunnelId([1; 16]),
        secret: underpass_proto::TunnelSecret([2; 32]),
        edges: vec!["127.0.0.1:7844".to_owned()],
        server_name: "underpass-edge".to_owned(),
        ca_pin: [3; 32],
    }
}
