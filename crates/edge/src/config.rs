//! The edge's configuration file (TOML), parsed and validated once before anything is bound.
//!
//! The file names the state directory, the QUIC listen address, and the directory entries for
//! now: VPC Networks (`[[network]]`), VPC Services (`[[service]]`) and the bindings that serve
//! them (`[[binding]]`). Tunnels are not in the file: they live in the state directory, created
//! by `underpass-edge tunnel create`, and entries refer to them by name or id. See
//! `docs/edge.md` for every key.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use underpass_proto::{Host, TlsVerification};
use underpass_transport::quic::QuicSettings;

use crate::directory::Directory;

/// The default `server_name`: the name the edge certificate is issued for.
pub const DEFAULT_SERVER_NAME: &str = "underpass-edge";
/// The default QUIC listen address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7844);
/// The DNS port assumed for a `resolver_ips` entry written without one.
const DNS_PORT: u16 = 53;
/// The longest name a network, service or binding may have.
const MAX_NAME_LEN: usize = 128;

/// A configuration that cannot be used. Reported before anything is bound; the binary exits
/// with status 64 (EX_USAGE).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (unknown key, wrong type).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent with another one.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// A service's `tls.ca_file` could not be read or holds no certificate.
    #[error("service {service:?}: cannot use tls.ca_file {path}: {detail}")]
    CaFile {
        /// The service.
        service: String,
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

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
    /// QUIC tuning; unset keys keep the transport's defaults.
    #[serde(default)]
    pub quic: QuicConfig,
    /// Timeouts of the edge's own protocol steps.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// The binary's async runtime.
    #[serde(default)]
    pub runtime: RuntimeConfig,
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

/// QUIC tuning (`[quic]`); every key is optional and defaults to [`QuicSettings::default`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    /// Keep-alive interval on an idle connection, in milliseconds (0 disables).
    pub keep_alive_ms: Option<u64>,
    /// A connection silent this long is closed, in milliseconds.
    pub idle_timeout_ms: Option<u64>,
    /// Per-stream receive window, in bytes.
    pub stream_receive_window: Option<u64>,
    /// Connection-wide receive window, in bytes.
    pub connection_receive_window: Option<u64>,
    /// Unacknowledged bytes in flight across all streams.
    pub send_window: Option<u64>,
    /// Streams a connector may have open at once.
    pub max_concurrent_streams: Option<u64>,
    /// Requested UDP socket buffer size (SO_RCVBUF/SO_SNDBUF), in bytes.
    pub socket_buffer: Option<usize>,
}

impl QuicConfig {
    /// The transport settings: defaults overridden by the keys that are set.
    pub fn settings(&self) -> QuicSettings {
        let mut settings = QuicSettings::default();
        if let Some(ms) = self.keep_alive_ms {
            settings.keep_alive = Duration::from_millis(ms);
        }
        if let Some(ms) = self.idle_timeout_ms {
            settings.idle_timeout = Duration::from_millis(ms);
        }
        if let Some(bytes) = self.stream_receive_window {
            settings.stream_receive_window = bytes;
        }
        if let Some(bytes) = self.connection_receive_window {
            settings.connection_receive_window = bytes;
        }
        if let Some(bytes) = self.send_window {
            settings.send_window = bytes;
        }
        if let Some(streams) = self.max_concurrent_streams {
            settings.max_concurrent_streams = streams;
        }
        if let Some(bytes) = self.socket_buffer {
            settings.socket_buffer = bytes;
        }
        settings
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
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            register_ms: 10_000,
            connect_ms: 15_000,
            drain_grace_ms: 30_000,
            heartbeat_interval_ms: 20_000,
        }
    }
}

impl Timeouts {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("register_ms", self.register_ms),
            ("connect_ms", self.connect_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(format!("timeouts.{key} must be above 0")));
            }
        }
        if self.heartbeat_interval_ms > u64::from(u32::MAX) {
            return Err(invalid(
                "timeouts.heartbeat_interval_ms is too large".into(),
            ));
        }
        Ok(())
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
}

fn default_server_name() -> String {
    DEFAULT_SERVER_NAME.to_owned()
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

    /// The host to dial: the IPv4 address if set, else the IPv6 one, else the hostname.
    pub fn dial_host(&self) -> Option<Host> {
        match (self.ipv4, self.ipv6, &self.hostname) {
            (Some(v4), _, _) => Some(Host::Ip(IpAddr::V4(v4))),
            (None, Some(v6), _) => Some(Host::Ip(IpAddr::V6(v6))),
            (None, None, Some(name)) => Some(Host::Name(name.clone())),
            (None, None, None) => None,
        }
    }

    pub(crate) fn validate(&self, service: &str) -> Result<(), ConfigError> {
        let has_ip = self.ipv4.is_some() || self.ipv6.is_some();
        match (&self.hostname, has_ip) {
            (Some(_), true) => Err(invalid(format!(
                "service {service:?}: host takes either ipv4/ipv6 or hostname, not both"
            ))),
            (None, false) => Err(invalid(format!(
                "service {service:?}: host needs ipv4, ipv6 or hostname"
            ))),
            (None, true) if !self.resolver_ips.is_empty() => Err(invalid(format!(
                "service {service:?}: resolver_ips only applies to a hostname host"
            ))),
            (Some(name), false) => {
                if crate::authority::parse_hostname(name).is_none() {
                    return Err(invalid(format!(
                        "service {service:?}: {name:?} is not a valid hostname"
                    )));
                }
                Ok(())
            }
            _ => Ok(()),
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
    /// Extra CA certificates (PEM) to trust for this service.
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

/// A binding: a loopback listener serving one network or one service as an HTTP/1.1 forward
/// proxy (what a Worker's `env.MY_BINDING` talks to).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// The binding's name (`MY_BINDING`).
    pub name: String,
    /// TCP address of the forward proxy. Port 0 picks a free port.
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
            public_addresses: Vec::new(),
            server_name: DEFAULT_SERVER_NAME.to_owned(),
            networks: Vec::new(),
            services: Vec::new(),
            bindings: Vec::new(),
            quic: QuicConfig::default(),
            timeouts: Timeouts::default(),
            runtime: RuntimeConfig::default(),
        }
    }

    /// Read, parse and validate a config file. A relative `state_dir` or `ca_file` is taken
    /// relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text)?;
        if let Some(base) = path.parent() {
            config.rebase(base);
        }
        config.validate()?;
        Ok(config)
    }

    /// Parse TOML text (no validation beyond the schema; see [`EdgeConfig::validate`]).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        // toml's Display names the line and column and quotes the offending line.
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string().trim_end().to_owned()))
    }

    /// Check every value and reference, and read every `ca_file`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.directory().map(drop)
    }

    /// Validate and resolve the directory entries into what the bindings serve.
    pub fn directory(&self) -> Result<Directory, ConfigError> {
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir must not be empty".into()));
        }
        if self.server_name.is_empty()
            || (crate::authority::parse_hostname(&self.server_name).is_none()
                && self.server_name.parse::<IpAddr>().is_err())
        {
            return Err(invalid(format!(
                "server_name {:?} is not a valid DNS name or IP address",
                self.server_name
            )));
        }
        self.quic
            .settings()
            .transport_config()
            .map_err(|e| invalid(format!("[quic]: {e}")))?;
        self.timeouts.validate()?;
        if self.runtime.worker_threads > 1024 {
            return Err(invalid("runtime.worker_threads must be 0 to 1024".into()));
        }
        for address in &self.public_addresses {
            if crate::authority::parse_authority(address).is_err() {
                return Err(invalid(format!(
                    "public_addresses: {address:?} is not host:port (IPv6 in brackets)"
                )));
            }
        }
        Directory::build(self)
    }

    fn rebase(&mut self, base: &Path) {
        if self.state_dir.is_relative() {
            self.state_dir = base.join(&self.state_dir);
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

pub(crate) fn check_name(
    kind: &str,
    name: &str,
    seen: &mut HashSet<String>,
) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        return Err(invalid(format!(
            "{kind} name {name:?}: use 1-{MAX_NAME_LEN} characters among A-Z a-z 0-9 - _ ."
        )));
    }
    if !seen.insert(name.to_owned()) {
        return Err(invalid(format!("two {kind}s are named {name:?}")));
    }
    Ok(())
}

pub(crate) fn check_tunnel_ref(what: &str, tunnel: &str) -> Result<(), ConfigError> {
    if tunnel.is_empty() {
        return Err(invalid(format!("{what}: tunnel must not be empty")));
    }
    Ok(())
}

pub(crate) fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid(message)
}

/// Accept `ip` (port 53) or `ip:port` (IPv6 with a port in brackets).
fn resolver_addrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            text.parse::<SocketAddr>()
                .or_else(|_| {
                    text.parse::<IpAddr>()
                        .map(|ip| SocketAddr::new(ip, DNS_PORT))
                })
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "resolver_ips: {text:?} is not an IP address or ip:port"
                    ))
                })
        })
        .collect()
}
