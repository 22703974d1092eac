//! The config file as written: serde structures mirroring the TOML, every table rejecting
//! unknown keys. Validation into [`super::ConnectorConfig`] is in `validate.rs`.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use underpass_rt::LogFormat;
use underpass_transport::h2::H2Config;
use underpass_transport::quic::QuicConfig;

use super::ProtocolChoice;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    pub(super) token: Option<SecretString>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) connections: Option<u8>,
    pub(super) log_format: Option<LogFormat>,
    #[serde(default, rename = "route")]
    pub(super) routes: Vec<RouteEntry>,
    pub(super) deny: Option<Vec<String>>,
    #[serde(default)]
    pub(super) dns: DnsSection,
    #[serde(default)]
    pub(super) limits: LimitsSection,
    #[serde(default)]
    pub(super) timeouts: TimeoutsSection,
    pub(super) protocol: Option<ProtocolChoice>,
    #[serde(default)]
    pub(super) quic: QuicConfig,
    #[serde(default)]
    pub(super) http2: H2Config,
    #[serde(default)]
    pub(super) edge: EdgeSection,
    #[serde(default)]
    pub(super) reconnect: ReconnectSection,
    #[serde(default)]
    pub(super) runtime: RuntimeSection,
    #[serde(default)]
    pub(super) admin: AdminSection,
}

/// A string that never appears in `Debug` output (the inline token).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub(super) struct SecretString(pub(super) String);

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteEntry {
    pub(super) destination: String,
    pub(super) ports: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DnsSection {
    #[serde(default)]
    pub(super) resolvers: Vec<String>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) strict_resolved: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsSection {
    pub(super) max_streams: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimeoutsSection {
    pub(super) connect_ms: Option<u64>,
    pub(super) header_ms: Option<u64>,
    pub(super) register_ms: Option<u64>,
    pub(super) drain_ms: Option<u64>,
    pub(super) tls_handshake_ms: Option<u64>,
    pub(super) response_header_ms: Option<u64>,
    pub(super) origin_idle_ms: Option<u64>,
    pub(super) origin_http2: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EdgeSection {
    pub(super) addresses: Option<Vec<String>>,
    pub(super) server_name: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) system_roots: bool,
    pub(super) http2_port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReconnectSection {
    pub(super) initial_ms: Option<u64>,
    pub(super) max_ms: Option<u64>,
    pub(super) quic_probe_initial_ms: Option<u64>,
    pub(super) quic_probe_max_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuntimeSection {
    pub(super) worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminSection {
    pub(super) listen: Option<String>,
}
