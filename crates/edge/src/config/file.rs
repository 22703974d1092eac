//! The configuration file's schema: one serde struct per TOML table, `deny_unknown_fields`
//! everywhere. Parsing checks types only; [`EdgeConfig::validate`] checks values.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use toml::Spanned;
use underpass_proto::authority::parse_resolver;
use underpass_proto::TlsVerification;

pub use underpass_transport::h2::H2Config;
pub use underpass_transport::quic::QuicConfig;

use super::error::ConfigError;

/// The default `server_name`: the name the edge certificate is issued for.
pub const DEFAULT_SERVER_NAME: &str = "underpass-edge";
/// The default QUIC listen address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7844);
/// The default `max_connections` of a binding.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The most `limits.max_client_connections` defaults to (less when the descriptor limit is
/// lower).
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 16_384;
/// The default `limits.max_idle_client_connections`.
pub const DEFAULT_MAX_IDLE_CLIENT_CONNECTIONS: usize = 1024;

/// The whole edge configuration. Build it from a file with [`EdgeConfig::load`] or in code
/// with [`EdgeConfig::new`] and the public fields; [`Edge::start`](crate::Edge::start)
/// validates it either way.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Where tunnels (`tunnels.json`) and the dev PKI live. Created (0700) if missing.
    pub state_dir: PathBuf,
    /// UDP address the QUIC listener binds. Port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// TCP address the HTTP/2 listener binds (connectors on networks that block UDP).
    /// Unset: the IP and port of `listen` (the port QUIC bound, when `listen` says 0).
    #[serde(default)]
    pub listen_http2: Option<SocketAddr>,
    /// Edge addresses written into tunnel tokens (`host:port`). Empty means the address the
    /// listener actually bound.
    #[serde(default)]
    pub public_addresses: Vec<String>,
    /// The name the edge certificate is issued for and connectors verify.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// VPC Networks: a whole tunnel behind one name.
    #[serde(default, rename = "network")]
    pub networks: Vec<NetworkConfig>,
    /// VPC Services: one private host behind one name.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// Bindings: loopback HTTP forward-proxy listeners, one per network or service.
    #[serde(default, rename = "binding")]
    pub bindings: Vec<BindingConfig>,
    /// QUIC tuning (`[quic]`, the same keys as the connector's); unset keys keep the
    /// transport's defaults.
    #[serde(default)]
    pub quic: QuicConfig,
    /// HTTP/2 tuning (`[http2]`, the same keys as the connector's).
    #[serde(default)]
    pub http2: H2Config,
    /// Timeouts of the edge's own protocol steps.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Bounds on what the binding listeners hold (`[limits]`).
    #[serde(default)]
    pub limits: Limits,
    /// The binary's async runtime.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// How new streams are placed on the tunnel's connectors (`[routing]`).
    #[serde(default)]
    pub routing: RoutingConfig,
    /// The admin listener (`[admin]`): health, readiness, metrics, tunnel status. Off unless
    /// `listen` is set.
    #[serde(default)]
    pub admin: AdminConfig,
    /// How `serve` writes its logs (`"text"` or `"json"`); `--log-format` overrides it.
    #[serde(default)]
    pub log_format: underpass_rt::LogFormat,
}

/// The admin listener (`[admin]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// TCP address of the admin HTTP listener (`127.0.0.1:20242` is the documented choice);
    /// `None` (the default) runs none.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain to serve the admin listener over TLS with (with `tls_key`);
    /// unset: plain HTTP. Relative to the config file's folder.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

/// Stream placement (`[routing]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// What to do with a destination no connector of the tunnel announced a route for.
    pub unmatched: Unmatched,
}

/// What the edge does with a destination that no live connector of the tunnel announced a
/// route covering (`[routing] unmatched`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Refuse it with a `Proxy-Status` (`destination_ip_prohibited` for an IP,
    /// `destination_not_found` for a name) and log why at `info`. The default.
    #[default]
    Refuse,
    /// Send it to any live connection of the tunnel anyway; its connector decides.
    Any,
}

impl fmt::Display for Unmatched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unmatched::Refuse => "refuse",
            Unmatched::Any => "any",
        })
    }
}

/// The `underpass-edge serve` runtime (`[runtime]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Tokio worker threads: 1 (default) a single-threaded runtime, 0 one per core.
    pub worker_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { worker_threads: 1 }
    }
}

/// Timeouts of the edge's own protocol steps (`[timeouts]`), in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A new connection must register within this (default 10 000).
    pub register_ms: u64,
    /// A connector must answer a `CONNECT` stream within this (default 15 000).
    pub connect_ms: u64,
    /// On shutdown, open streams may finish for this long (default 30 000).
    pub drain_grace_ms: u64,
    /// How often connectors send heartbeats (default 20 000).
    pub heartbeat_interval_ms: u64,
    /// A `fetch()` request body that sends no byte for this long ends the exchange: `408`, or
    /// the stream reset once the response started (default 60 000).
    pub body_idle_ms: u64,
    /// A binding client must send a whole request head within this, counted from the moment
    /// the edge waits for one (accept, or the end of the previous exchange), or its connection
    /// is closed (default 30 000). It also bounds how long an idle keep-alive connection stays.
    pub header_read_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            register_ms: 10_000,
            connect_ms: 15_000,
            drain_grace_ms: 30_000,
            heartbeat_interval_ms: 20_000,
            body_idle_ms: 60_000,
            header_read_ms: 30_000,
        }
    }
}

/// Bounds on what the binding listeners hold (`[limits]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections all bindings together serve at once. At the limit a new connection
    /// takes the place of the oldest idle one, or is refused at once when none is idle. Unset:
    /// derived at start from the process's descriptor limit (`RLIMIT_NOFILE`), at most
    /// [`DEFAULT_MAX_CLIENT_CONNECTIONS`].
    pub max_client_connections: Option<usize>,
    /// Idle client connections (between two requests, or before a whole first head) all
    /// bindings together keep; beyond, the oldest idle ones are closed. Each may hold up to
    /// 64 KiB of an unfinished head, so this bounds what a flood of slow heads costs.
    pub max_idle_client_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_client_connections: None,
            max_idle_client_connections: DEFAULT_MAX_IDLE_CLIENT_CONNECTIONS,
        }
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
}

fn default_server_name() -> String {
    DEFAULT_SERVER_NAME.to_owned()
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

/// A VPC Network: every destination the tunnel's connectors route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The network's name, used by bindings.
    pub name: String,
    /// The tunnel: its name or its id (32 hex digits).
    pub tunnel: String,
}

/// What a VPC Service carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// HTTP exchanges (`fetch()`), on `http_port` / `https_port`.
    Http,
    /// Raw TCP (`connect()`), on `tcp_port`.
    Tcp,
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceKind::Http => "http",
            ServiceKind::Tcp => "tcp",
        })
    }
}

/// A VPC Service: one pre-registered private host, always dialed whatever the client asks.
/// Its id, which connectors know it by, is derived from its name (see `docs/edge.md`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service's name, used by bindings.
    pub name: String,
    /// `http` or `tcp`.
    #[serde(rename = "type")]
    pub kind: ServiceKind,
    /// The tunnel: its name or its id (32 hex digits).
    pub tunnel: String,
    /// Where the service lives.
    pub host: ServiceHost,
    /// TCP port (required for `type = "tcp"`, refused otherwise).
    #[serde(default)]
    pub tcp_port: Option<u16>,
    /// Plain HTTP port (http type; default 80 unless only `https_port` is set).
    #[serde(default)]
    pub http_port: Option<u16>,
    /// HTTPS port (http type; default 443 unless only `http_port` is set).
    #[serde(default)]
    pub https_port: Option<u16>,
    /// How the connector verifies the origin's certificate (http type).
    #[serde(default)]
    pub tls: ServiceTls,
}

/// A service's host: an IPv4 and/or IPv6 address, or a hostname resolved by the connector.
///
/// Exactly one form: `{ ipv4 = ".." }`, `{ ipv6 = ".." }`, `{ ipv4, ipv6 }` (IPv4 is dialed),
/// or `{ hostname = "..", resolver_ips = [..] }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceHost {
    /// IPv4 address.
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// DNS name, resolved inside the private network by the connector.
    #[serde(default)]
    pub hostname: Option<String>,
    /// DNS servers for `hostname` (`ip` or `ip:port`, port 53 by default). Empty means the
    /// connector's own resolver configuration.
    #[serde(default, deserialize_with = "resolver_addrs")]
    pub resolver_ips: Vec<SocketAddr>,
}

impl ServiceHost {
    /// A host given by its IPv4 or IPv6 address.
    pub fn ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ServiceHost {
                ipv4: Some(v4),
                ..ServiceHost::default()
            },
            IpAddr::V6(v6) => ServiceHost {
                ipv6: Some(v6),
                ..ServiceHost::default()
            },
        }
    }

    /// A host given by name, resolved by the connector with `resolvers` (or its own).
    pub fn hostname(name: impl Into<String>, resolvers: Vec<SocketAddr>) -> Self {
        ServiceHost {
            hostname: Some(name.into()),
            resolver_ips: resolvers,
            ..ServiceHost::default()
        }
    }
}

/// Origin certificate verification for an HTTP service reached over https.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTls {
    /// `verify_full` (chain and name, the default), `verify_ca` (chain only) or `disabled`.
    #[serde(default)]
    pub cert_verification_mode: CertVerificationMode,
    /// Extra CA certificates (PEM) to trust for this service, at most 4 MiB.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How the origin's certificate is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertVerificationMode {
    /// Chain and name.
    #[default]
    VerifyFull,
    /// Chain only.
    VerifyCa,
    /// Nothing.
    Disabled,
}

impl From<CertVerificationMode> for TlsVerification {
    fn from(mode: CertVerificationMode) -> Self {
        match mode {
            CertVerificationMode::VerifyFull => TlsVerification::VerifyFull,
            CertVerificationMode::VerifyCa => TlsVerification::VerifyCa,
            CertVerificationMode::Disabled => TlsVerification::Disabled,
        }
    }
}

/// A binding: a listener serving one network or one service, as an HTTP/1.1 forward proxy
/// (what a Worker's `env.MY_BINDING` talks to) or as a plain TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// The binding's name (`MY_BINDING`).
    pub name: String,
    /// TCP address of the listener. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The network served (exactly one of `network` and `service`).
    #[serde(default)]
    pub network: Option<String>,
    /// The service served (exactly one of `network` and `service`).
    #[serde(default)]
    pub service: Option<String>,
    /// What the listener speaks: the HTTP forward proxy (default) or plain TCP.
    #[serde(default)]
    pub mode: BindingMode,
    /// Client connections served at once (default [`DEFAULT_MAX_CONNECTIONS`]); at the limit
    /// the listener stops accepting until one ends.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl BindingConfig {
    /// A forward-proxy binding of the network `network`, with the default limits.
    pub fn network(
        name: impl Into<String>,
        listen: SocketAddr,
        network: impl Into<String>,
    ) -> Self {
        BindingConfig {
            name: name.into(),
            listen,
            network: Some(network.into()),
            service: None,
            mode: BindingMode::Proxy,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// A forward-proxy binding of the service `service`, with the default limits.
    pub fn service(
        name: impl Into<String>,
        listen: SocketAddr,
        service: impl Into<String>,
    ) -> Self {
        BindingConfig {
            name: name.into(),
            listen,
            network: None,
            service: Some(service.into()),
            mode: BindingMode::Proxy,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// The same binding with another `mode`.
    pub fn with_mode(self, mode: BindingMode) -> Self {
        BindingConfig { mode, ..self }
    }
}

/// What a binding's listener speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindingMode {
    /// An HTTP/1.1 forward proxy: `CONNECT` for `connect()`, absolute-form requests for
    /// `fetch()`. What workerd talks to.
    #[default]
    Proxy,
    /// A plain TCP port: every accepted connection is piped to the binding's `type = "tcp"`
    /// service. For clients that speak only TCP (database tools, iperf3).
    Tcp,
}

impl fmt::Display for BindingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindingMode::Proxy => "proxy",
            BindingMode::Tcp => "tcp",
        })
    }
}

impl EdgeConfig {
    /// A configuration with defaults: QUIC on 127.0.0.1:7844, no directory entries.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        EdgeConfig {
            state_dir: state_dir.into(),
            listen: DEFAULT_LISTEN,
            listen_http2: None,
            public_addresses: Vec::new(),
            server_name: DEFAULT_SERVER_NAME.to_owned(),
            networks: Vec::new(),
            services: Vec::new(),
            bindings: Vec::new(),
            quic: QuicConfig::default(),
            http2: H2Config::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            runtime: RuntimeConfig::default(),
            routing: RoutingConfig::default(),
            admin: AdminConfig::default(),
            log_format: underpass_rt::LogFormat::default(),
        }
    }

    /// Parse TOML text (no validation beyond the schema; see [`EdgeConfig::validate`]). An
    /// error names the entry and the key (`binding "API": listen: invalid socket address
    /// syntax (line 12)`).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse(describe(text, &error)))
    }

    /// Make a relative `state_dir` or `ca_file` relative to `base` (the file's folder).
    pub(crate) fn rebase(&mut self, base: &Path) {
        if self.state_dir.is_relative() {
            self.state_dir = base.join(&self.state_dir);
        }
        for path in [&mut self.admin.tls_cert, &mut self.admin.tls_key]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        for service in &mut self.services {
            if let Some(ca_file) = &mut service.tls.ca_file {
                if ca_file.is_relative() {
                    *ca_file = base.join(&*ca_file);
                }
            }
        }
    }
}

/// Accept `ip` (port 53) or `ip:port` (IPv6 with a port in brackets).
fn resolver_addrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            parse_resolver(text)
                .map_err(|error| serde::de::Error::custom(format!("resolver_ips: {error}")))
        })
        .collect()
}

/// The entries and tables of a file, with where each value is: enough to say which entry and
/// key a parse error is about.
#[derive(Deserialize)]
struct Outline {
    #[serde(default)]
    network: Vec<Spanned<Entry>>,
    #[serde(default)]
    service: Vec<Spanned<Entry>>,
    #[serde(default)]
    binding: Vec<Spanned<Entry>>,
    #[serde(default)]
    quic: Option<Spanned<Entry>>,
    #[serde(default)]
    http2: Option<Spanned<Entry>>,
    #[serde(default)]
    timeouts: Option<Spanned<Entry>>,
    #[serde(default)]
    runtime: Option<Spanned<Entry>>,
    #[serde(default)]
    routing: Option<Spanned<Entry>>,
    #[serde(default)]
    admin: Option<Spanned<Entry>>,
}

type Entry = BTreeMap<String, Spanned<toml::Value>>;

/// `binding "API": listen: <what toml said> (line 12)`: the entry (by name) and the key the
/// error is in, then serde's message. Falls back to toml's own report (which quotes the line)
/// when the text is not even TOML.
fn describe(text: &str, error: &toml::de::Error) -> String {
    let fallback = || error.to_string().trim_end().to_owned();
    let Some(at) = error.span().map(|span| span.start) else {
        return fallback();
    };
    let (Ok(outline), Ok(top)) = (
        toml::from_str::<Outline>(text),
        toml::from_str::<Entry>(text),
    ) else {
        return fallback();
    };
    let line = text[..at.min(text.len())].matches('\n').count() + 1;
    let message = error.message().trim_end();
    let key_in = |entry: &Entry| {
        entry
            .iter()
            .find(|(_, value)| value.span().contains(&at))
            .map(|(key, _)| key.clone())
    };
    let entries = [
        ("network", &outline.network),
        ("service", &outline.service),
        ("binding", &outline.binding),
    ];
    for (kind, list) in entries {
        for (index, entry) in list.iter().enumerate() {
            if !entry.span().contains(&at) {
                continue;
            }
            let entry = entry.get_ref();
            let name = match entry.get("name").map(|n| n.get_ref().as_str()) {
                Some(Some(name)) => format!("{kind} {name:?}"),
                _ => format!("{kind} #{}", index + 1),
            };
            return match key_in(entry) {
                Some(key) => format!("{name}: {key}: {message} (line {line})"),
                None => format!("{name}: {message} (line {line})"),
            };
        }
    }
    let tables = [
        ("quic", &outline.quic),
        ("http2", &outline.http2),
        ("timeouts", &outline.timeouts),
        ("runtime", &outline.runtime),
        ("routing", &outline.routing),
        ("admin", &outline.admin),
    ];
    for (table, entry) in tables {
        let Some(entry) = entry.as_ref().filter(|e| e.span().contains(&at)) else {
            continue;
        };
        return match key_in(entry.get_ref()) {
            Some(key) => format!("{table}.{key}: {message} (line {line})"),
            None => format!("[{table}]: {message} (line {line})"),
        };
    }
    match key_in(&top) {
        Some(key) => format!("{key}: {message} (line {line})"),
        None => format!("{message} (line {line})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(text: &str) -> String {
        match EdgeConfig::from_toml(text) {
            Ok(_) => panic!("parsed:\n{text}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn routing_unmatched_defaults_to_refuse() {
        let default = EdgeConfig::from_toml("state_dir = \"x\"\n").unwrap(); // valid
        assert_eq!(default.routing.unmatched, Unmatched::Refuse);
        let any =
            EdgeConfig::from_toml("state_dir = \"x\"\n[routing]\nunmatched = \"any\"\n").unwrap(); // valid
        assert_eq!(any.routing.unmatched, Unmatched::Any);
        let error = parse_error("state_dir = \"x\"\n[routing]\nunmatched = \"sometimes\"\n");
        assert!(error.contains("routing.unmatched: "), "{error}");
    }

    #[test]
    fn parse_errors_name_the_entry_and_the_key() {
        let base = "state_dir = \"x\"\n[[binding]]\nname = \"ok\"\nlisten = \"127.0.0.1:1\"\n\
                    network = \"n\"\n";
        let listen = parse_error(&format!(
            "{base}[[binding]]\nname = \"API\"\nlisten = \"nope\"\nnetwork = \"n\"\n"
        ));
        assert!(listen.contains("binding \"API\": listen: "), "{listen}");
        assert!(listen.contains("(line 8)"), "{listen}");
        let unknown = parse_error(&format!("{base}max_conections = 3\n"));
        assert!(
            unknown.contains("binding \"ok\": unknown field `max_conections`"),
            "{unknown}"
        );
        let port = parse_error(
            "state_dir = \"x\"\n[[service]]\nname = \"s\"\ntype = \"tcp\"\ntunnel = \"t\"\n\
             host = { ipv4 = \"127.0.0.1\" }\ntcp_port = 70000\n",
        );
        assert!(port.contains("service \"s\": tcp_port: "), "{port}");
        let quic = parse_error("state_dir = \"x\"\n[quic]\nkeep_alive_ms = \"soon\"\n");
        assert!(quic.contains("quic.keep_alive_ms: "), "{quic}");
        let top = parse_error("state_dir = \"x\"\nlisten = 5\n");
        assert!(top.contains("listen: "), "{top}");
        let resolver = parse_error(
            "state_dir = \"x\"\n[[service]]\nname = \"s\"\ntype = \"http\"\ntunnel = \"t\"\n\
             host = { hostname = \"a.b\", resolver_ips = [\"dns\"] }\n",
        );
        assert!(
            resolver.contains("service \"s\": host: resolver_ips: "),
            "{resolver}"
        );
        assert!(resolver.contains("\"dns\""), "{resolver}");
        let not_toml = parse_error("state_dir = \n");
        assert!(not_toml.contains("line 1"), "{not_toml}");
    }
}
