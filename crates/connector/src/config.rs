//! The connector's configuration: a TOML file (or a builder, in tests), parsed and validated
//! once, before anything binds or dials.
//!
//! The file format is documented key by key in `docs/connector.md`; an example lives in
//! `deploy/connector.example.toml`. Every section rejects unknown keys, so a typo is an error
//! naming the key rather than a silently ignored setting.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use underpass_proto::{AnnouncedRoute, TunnelToken, TOKEN_PREFIX};
use underpass_routes::{PortSet, RouteSpec};
use underpass_rt::LogFormat;
use underpass_transport::h2::H2Config;
use underpass_transport::quic::QuicSettings;
use underpass_transport::tls::EdgeVerification;

mod file;
mod risky;
mod validate;

use file::{ConfigFile, RouteEntry};
pub use risky::Provenance;
pub use validate::default_deny;
use validate::{validate, validate_with_token};

/// Environment variable holding a tunnel token.
pub const TOKEN_ENV: &str = "UNDERPASS_TOKEN";

/// Most parallel connections a connector may keep (the wire carries the index as a `u8`, and
/// the published limit is far lower anyway).
pub const MAX_CONNECTIONS: u8 = 16;

/// A configuration that could not be loaded. Every message names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named by the configuration (or the configuration itself) could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file is ("config file", "token_file", "edge.ca_file").
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("{}: {message}", path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// The TOML parser's message (it names the key, line and column).
        message: String,
    },
    /// A value is present but unusable.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The key, as written in the file (`route[2].ports`, `dns.resolvers[0]`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// No tunnel token was given anywhere.
    #[error(
        "no tunnel token: set `token` or `token_file` in the config file, pass --token or \
         --token-file, set {TOKEN_ENV}, give the unit a `token` credential \
         (LoadCredential=token:FILE) or mount the token at {SECRET_FILE}"
    )]
    NoToken,
}

/// Where the tunnel token came from (for the summary and logs; never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The `--token` flag.
    Flag,
    /// The `--token-file` flag, with the file.
    FlagFile(PathBuf),
    /// The `UNDERPASS_TOKEN` environment variable.
    Env,
    /// The config file's `token` key.
    ConfigInline,
    /// The config file's `token_file` key, with the file.
    ConfigFile(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/token` (`LoadCredential=token:...`).
    Credential(PathBuf),
    /// A container secret: the file [`SECRET_FILE`] (a Kubernetes Secret, a podman or docker
    /// secret).
    Secret(PathBuf),
    /// Given in code (the builder).
    Code,
}

/// The config file `run` and `check-config` read when no `--config` is given and the file
/// exists (where `underpass service install` and the container image put it).
pub const DEFAULT_CONFIG_FILE: &str = "/etc/underpass/connector.toml";

/// Where a container runtime mounts the token secret (the last token source).
pub const SECRET_FILE: &str = "/run/secrets/underpass-token";

/// The environment variable systemd sets to the directory of the unit's credentials
/// (`LoadCredential=`); the connector reads the credential named `token` in it.
pub const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";

/// The name of the token credential in [`CREDENTIALS_ENV`]'s directory.
pub const CREDENTIAL_NAME: &str = "token";

/// [`DEFAULT_CONFIG_FILE`] when it exists.
pub fn default_config_file() -> Option<PathBuf> {
    let path = Path::new(DEFAULT_CONFIG_FILE);
    path.exists().then(|| path.to_owned())
}

/// Settings from outside the config file (the command line and the environment).
///
/// Token sources take precedence in this order: `--token`, `--token-file`, `UNDERPASS_TOKEN`,
/// the file's `token` or `token_file`, the systemd credential `$CREDENTIALS_DIRECTORY/token`,
/// then the container secret [`SECRET_FILE`]. The last two count only when their file exists:
/// a unit may pass other credentials, and most hosts have no secret mounted.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--token`.
    pub token: Option<String>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// The value of `UNDERPASS_TOKEN`, if set.
    pub env_token: Option<String>,
    /// `--route DEST[=PORTS]` flags, added after the file's routes.
    pub routes: Vec<String>,
    /// The value of `CREDENTIALS_DIRECTORY`, if set.
    pub credentials_dir: Option<PathBuf>,
    /// The container secret file to look for ([`SECRET_FILE`] from the command line; `None`
    /// looks for none).
    pub secret_file: Option<PathBuf>,
}

impl Overrides {
    /// These overrides plus the host's own token sources: `CREDENTIALS_DIRECTORY` from the
    /// environment and the container secret at [`SECRET_FILE`].
    pub fn with_host_sources(self) -> Self {
        Overrides {
            credentials_dir: std::env::var_os(CREDENTIALS_ENV)
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from),
            secret_file: Some(PathBuf::from(SECRET_FILE)),
            ..self
        }
    }
}

/// One allowed destination: a CIDR or a hostname pattern, and the ports allowed on it.
#[derive(Debug, Clone)]
pub struct Route {
    /// What the route matches.
    pub destination: RouteSpec,
    /// Ports allowed on it.
    pub ports: PortSet,
    /// The destination as written (announced to the edge, shown in summaries).
    pub destination_text: String,
    /// The ports as written; `None` means every port.
    pub ports_text: Option<String>,
}

/// How names are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name servers to ask (over UDP, then TCP); empty means the system's `resolv.conf`.
    pub resolvers: Vec<SocketAddr>,
    /// How long a whole lookup (A and AAAA) may take before the stream fails with
    /// `dns_timeout`.
    pub timeout: Duration,
    /// `dns.strict_resolved`: every address a name resolves to must also be allowed by an IP
    /// route (on the stream's port). When false (the default) only special-purpose addresses
    /// (loopback, link-local, ...) need one; other addresses pass on the name's route alone.
    pub strict_resolved: bool,
}

/// Timeouts of the connector's own steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A whole TCP connect to a private destination, Happy Eyeballs attempts included.
    pub connect: Duration,
    /// Reading a stream's header after the edge opened the stream.
    pub header: Duration,
    /// The QUIC handshake plus the registration answer from the edge.
    pub register: Duration,
    /// On shutdown, how long open streams may continue before connections are closed.
    pub drain: Duration,
    /// The TLS handshake with an HTTPS origin.
    pub tls_handshake: Duration,
    /// Waiting for an origin's response head once the request is sent.
    pub response_header: Duration,
    /// How long an idle keep-alive origin connection is kept for reuse.
    pub origin_idle: Duration,
    /// Offer HTTP/2 to HTTPS origins by ALPN (`timeouts.origin_http2`; HTTP/1.1 otherwise).
    pub origin_http2: bool,
}

/// How the connector finds and verifies the edge.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Edge addresses (`host:port`); the token's unless overridden.
    pub addresses: Vec<String>,
    /// TLS server name to ask for and verify; the token's unless overridden.
    pub server_name: String,
    /// How the edge's certificate is verified.
    pub verification: EdgeVerification,
    /// The TCP port of the edge's HTTP/2 listener; `None`: the same port as each address.
    pub http2_port: Option<u16>,
}

/// Which transport the connector's connections use (`protocol`, `--protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolChoice {
    /// QUIC first; a connection that cannot establish QUIC falls back to HTTP/2, and moves
    /// back to QUIC once a background probe finds it working (the default).
    #[default]
    Auto,
    /// QUIC only (UDP).
    Quic,
    /// HTTP/2 over TLS only (TCP), for networks that block UDP.
    Http2,
}

impl ProtocolChoice {
    /// The name in the config file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolChoice::Auto => "auto",
            ProtocolChoice::Quic => "quic",
            ProtocolChoice::Http2 => "http2",
        }
    }
}

impl fmt::Display for ProtocolChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProtocolChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ProtocolChoice::Auto),
            "quic" => Ok(ProtocolChoice::Quic),
            "http2" => Ok(ProtocolChoice::Http2),
            other => Err(format!(
                "unknown protocol {other:?}: expected auto, quic or http2"
            )),
        }
    }
}

/// Reconnect backoff: full jitter between zero and an exponentially growing ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectSettings {
    /// The first ceiling.
    pub initial: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

/// A validated connector configuration.
///
/// Built by [`ConnectorConfig::load`] (the CLI) or [`ConnectorConfig::builder`] (tests and
/// embedders); both run the same validation. Fields are public so tests can adjust a built
/// configuration; values set that way are not re-validated.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// The tunnel token (its `Debug` hides the secret).
    pub token: TunnelToken,
    /// Where the token came from.
    pub token_source: TokenSource,
    /// Parallel connections to the edge (each registers with its own index).
    pub connections: u8,
    /// Allowed destinations. Empty: every stream is refused.
    pub routes: Vec<Route>,
    /// Addresses never dialed, whatever the routes say (also applied to every resolved
    /// address).
    pub deny: Vec<IpNet>,
    /// Name resolution.
    pub dns: DnsSettings,
    /// Concurrent streams per connection; further streams are refused with
    /// `connection_limit_reached`.
    pub max_streams: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Which transport the connections use (`protocol`).
    pub protocol: ProtocolChoice,
    /// QUIC tuning.
    pub quic: QuicSettings,
    /// HTTP/2 tuning (`[http2]`).
    pub http2: H2Config,
    /// While `protocol = "auto"` has fallen back to HTTP/2: how often QUIC is tried again
    /// (full-jitter backoff between `reconnect.quic_probe_initial_ms` and `_max_ms`).
    pub quic_probe: ReconnectSettings,
    /// The edge.
    pub edge: EdgeSettings,
    /// Reconnect backoff.
    pub reconnect: ReconnectSettings,
    /// Tokio worker threads for the binary; 1 (the default) a current-thread runtime, 0 one
    /// per core.
    pub worker_threads: usize,
    /// The admin listener (`/healthz`, `/ready`, `/metrics`); off when `None`.
    pub admin_listen: Option<SocketAddr>,
    /// How the binary writes its logs.
    pub log_format: LogFormat,
}

/// Builds a [`ConnectorConfig`] in code, with the same validation as the file.
#[derive(Debug, Clone)]
pub struct ConnectorConfigBuilder {
    token: TunnelToken,
    file: ConfigFile,
}

// --- Defaults --------------------------------------------------------------------------------

/// Default `connections`.
pub const DEFAULT_CONNECTIONS: u8 = 4;
/// The documented `[admin] listen` address (the listener is off unless configured).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:20241";
/// Default `limits.max_streams`.
pub const DEFAULT_MAX_STREAMS: usize = 10_000;
/// Largest `limits.max_streams` accepted.
pub const MAX_STREAMS_LIMIT: usize = 1_000_000;
/// Default `timeouts.connect_ms`.
pub const DEFAULT_CONNECT_MS: u64 = 5_000;
/// Default `timeouts.header_ms`.
pub const DEFAULT_HEADER_MS: u64 = 10_000;
/// Default `timeouts.register_ms`.
pub const DEFAULT_REGISTER_MS: u64 = 10_000;
/// Default `timeouts.drain_ms`.
pub const DEFAULT_DRAIN_MS: u64 = 30_000;
/// Default `timeouts.tls_handshake_ms`.
pub const DEFAULT_TLS_HANDSHAKE_MS: u64 = 10_000;
/// Default `timeouts.response_header_ms`.
pub const DEFAULT_RESPONSE_HEADER_MS: u64 = 60_000;
/// Default `timeouts.origin_idle_ms`.
pub const DEFAULT_ORIGIN_IDLE_MS: u64 = 90_000;
/// Default `dns.timeout_ms`.
pub const DEFAULT_DNS_TIMEOUT_MS: u64 = 5_000;
/// Default `reconnect.initial_ms`.
pub const DEFAULT_RECONNECT_INITIAL_MS: u64 = 1_000;
/// Default `reconnect.max_ms`.
pub const DEFAULT_RECONNECT_MAX_MS: u64 = 60_000;
/// Default `reconnect.quic_probe_initial_ms`.
pub const DEFAULT_QUIC_PROBE_INITIAL_MS: u64 = 10_000;
/// Default `reconnect.quic_probe_max_ms`.
pub const DEFAULT_QUIC_PROBE_MAX_MS: u64 = 300_000;

impl ConnectorConfig {
    /// Load and validate a config file, with token sources from outside the file.
    ///
    /// `path` may be `None` when everything comes from `overrides` (`underpass run --token`).
    /// Relative paths inside the file (`token_file`, `edge.ca_file`) are relative to the
    /// file's directory.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return validate(ConfigFile::default(), Path::new("."), overrides);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            what: "config file",
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, path, base, overrides)
    }

    /// Parse and validate TOML text; `path` is only used in messages, `base` resolves
    /// relative paths.
    pub fn from_toml(
        text: &str,
        path: &Path,
        base: &Path,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        validate(file, base, overrides)
    }

    /// A builder with every setting at its default and no routes.
    pub fn builder(token: TunnelToken) -> ConnectorConfigBuilder {
        ConnectorConfigBuilder {
            token,
            file: ConfigFile::default(),
        }
    }

    /// The routes in the form announced to the edge at registration.
    pub fn announced_routes(&self) -> Vec<AnnouncedRoute> {
        self.routes
            .iter()
            .map(|route| AnnouncedRoute {
                destination: route.destination_text.clone(),
                ports: route.ports.ranges().to_vec(),
            })
            .collect()
    }

    /// A human-readable summary (what `underpass check-config` prints). Never shows the secret.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let tunnel = hex::encode(self.token.tunnel_id.0);
        out.push_str(&format!("tunnel id:     {tunnel}\n"));
        out.push_str(&format!("token from:    {}\n", self.token_source));
        out.push_str(&format!(
            "edges:         {}\n",
            self.edge.addresses.join(", ")
        ));
        out.push_str(&format!("server name:   {}\n", self.edge.server_name));
        out.push_str(&format!(
            "edge verified: {}\n",
            verification_summary(&self.edge.verification)
        ));
        out.push_str(&format!("connections:   {}\n", self.connections));
        out.push_str(&format!("protocol:      {}\n", self.protocol));
        out.push_str(&format!("routes:        {}\n", self.routes.len()));
        for route in &self.routes {
            let ports = match route.ports_text.as_deref().map(str::trim) {
                Some(text) if !text.is_empty() && text != "*" => format!("ports {text}"),
                _ => "all ports".to_owned(),
            };
            out.push_str(&format!("  {} {ports}\n", route.destination_text));
        }
        if self.routes.is_empty() {
            out.push_str("  (none: every stream will be refused)\n");
        }
        out.push_str(&format!("deny list:     {} entries\n", self.deny.len()));
        for net in &self.deny {
            out.push_str(&format!("  {net}\n"));
        }
        let resolvers = if self.dns.resolvers.is_empty() {
            "system (resolv.conf)".to_owned()
        } else {
            let list: Vec<String> = self.dns.resolvers.iter().map(|r| r.to_string()).collect();
            list.join(", ")
        };
        out.push_str(&format!("resolvers:     {resolvers}\n"));
        let resolved = if self.dns.strict_resolved {
            "strict (every address needs an IP route)"
        } else {
            "special-purpose ones need an IP route"
        };
        out.push_str(&format!("resolved IPs:  {resolved}\n"));
        out.push_str(&format!("max streams:   {}\n", self.max_streams));
        let admin = self
            .admin_listen
            .map_or_else(|| "off".to_owned(), |addr| addr.to_string());
        out.push_str(&format!("admin:         {admin}\n"));
        out
    }
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Flag => f.write_str("--token"),
            TokenSource::FlagFile(path) => write!(f, "--token-file {}", path.display()),
            TokenSource::Env => f.write_str(TOKEN_ENV),
            TokenSource::ConfigInline => f.write_str("config `token`"),
            TokenSource::ConfigFile(path) => write!(f, "config `token_file` {}", path.display()),
            TokenSource::Credential(path) => write!(f, "systemd credential {}", path.display()),
            TokenSource::Secret(path) => write!(f, "secret file {}", path.display()),
            TokenSource::Code => f.write_str("code"),
        }
    }
}

fn verification_summary(verification: &EdgeVerification) -> String {
    match verification {
        EdgeVerification::Pin(pin) => format!("CA pin sha256:{} (from token)", hex::encode(pin)),
        EdgeVerification::CaPem(_) => "CA bundle (edge.ca_file)".to_owned(),
        EdgeVerification::SystemRoots => "system roots".to_owned(),
        EdgeVerification::DangerousNoVerify => "NOT VERIFIED (dangerous)".to_owned(),
    }
}

impl ConnectorConfigBuilder {
    /// Allow `destination` (a CIDR, an IP, a hostname or `*.suffix`) on every port.
    pub fn route(mut self, destination: &str) -> Self {
        self.file.routes.push(RouteEntry {
            destination: destination.to_owned(),
            ports: None,
        });
        self
    }

    /// Allow `destination` on `ports` (`"6379,8000-8999"`).
    pub fn route_ports(mut self, destination: &str, ports: &str) -> Self {
        self.file.routes.push(RouteEntry {
            destination: destination.to_owned(),
            ports: Some(ports.to_owned()),
        });
        self
    }

    /// Replace the default deny list (`[]` denies nothing).
    pub fn deny<S: AsRef<str>>(mut self, nets: &[S]) -> Self {
        self.file.deny = Some(nets.iter().map(|n| n.as_ref().to_owned()).collect());
        self
    }

    /// Resolve names with these name servers instead of the system's.
    pub fn resolvers(mut self, resolvers: &[SocketAddr]) -> Self {
        self.file.dns.resolvers = resolvers.iter().map(|r| r.to_string()).collect();
        self
    }

    /// `dns.timeout_ms`.
    pub fn dns_timeout(mut self, timeout: Duration) -> Self {
        self.file.dns.timeout_ms = Some(millis(timeout));
        self
    }

    /// `dns.strict_resolved`.
    pub fn strict_resolved(mut self, strict: bool) -> Self {
        self.file.dns.strict_resolved = Some(strict);
        self
    }

    /// `limits.max_streams`.
    pub fn max_streams(mut self, max: usize) -> Self {
        self.file.limits.max_streams = Some(max);
        self
    }

    /// `timeouts.connect_ms`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.file.timeouts.connect_ms = Some(millis(timeout));
        self
    }

    /// `timeouts.header_ms`.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.file.timeouts.header_ms = Some(millis(timeout));
        self
    }

    /// `timeouts.register_ms`.
    pub fn register_timeout(mut self, timeout: Duration) -> Self {
        self.file.timeouts.register_ms = Some(millis(timeout));
        self
    }

    /// `timeouts.drain_ms`.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.file.timeouts.drain_ms = Some(millis(timeout));
        self
    }

    /// `timeouts.response_header_ms`.
    pub fn response_header_timeout(mut self, timeout: Duration) -> Self {
        self.file.timeouts.response_header_ms = Some(millis(timeout));
        self
    }

    /// `timeouts.origin_idle_ms`.
    pub fn origin_idle_timeout(mut self, timeout: Duration) -> Self {
        self.file.timeouts.origin_idle_ms = Some(millis(timeout));
        self
    }

    /// `timeouts.origin_http2`.
    pub fn origin_http2(mut self, enabled: bool) -> Self {
        self.file.timeouts.origin_http2 = Some(enabled);
        self
    }

    /// `connections`.
    pub fn connections(mut self, connections: u8) -> Self {
        self.file.connections = Some(connections);
        self
    }

    /// `reconnect.initial_ms` and `reconnect.max_ms`.
    pub fn reconnect(mut self, initial: Duration, max: Duration) -> Self {
        self.file.reconnect.initial_ms = Some(millis(initial));
        self.file.reconnect.max_ms = Some(millis(max));
        self
    }

    /// Verify the edge with this CA certificate file instead of the token's pin.
    pub fn edge_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file.edge.ca_file = Some(path.into());
        self
    }

    /// Dial these edge addresses instead of the token's.
    pub fn edge_addresses(mut self, addresses: &[String]) -> Self {
        self.file.edge.addresses = Some(addresses.to_vec());
        self
    }

    /// `[admin] listen`.
    pub fn admin_listen(mut self, addr: SocketAddr) -> Self {
        self.file.admin.listen = Some(addr.to_string());
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<ConnectorConfig, ConfigError> {
        let token = self.token;
        validate_with_token(self.file, Path::new("."), |_| {
            Ok((token, TokenSource::Code))
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `text` with anything that looks like a tunnel token replaced by `upt1_***`: a config
/// parser's message may quote the line it failed on, and that line may hold the token.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(TOKEN_PREFIX) {
        out.push_str(&rest[..at]);
        out.push_str(TOKEN_PREFIX);
        out.push_str("***");
        let after = &rest[at + TOKEN_PREFIX.len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '='))
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted() {
        assert_eq!(
            redact("1 | token = \"upt1_AbC-d_9=\" x\n  |"),
            "1 | token = \"upt1_***\" x\n  |"
        );
        assert_eq!(redact("no secret here"), "no secret here");
        assert_eq!(redact("upt1_a upt1_b"), "upt1_*** upt1_***");
    }
}
