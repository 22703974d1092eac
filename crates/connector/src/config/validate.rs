//! Validation of a parsed config file into a [`ConnectorConfig`], naming the key at fault in
//! every error.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use underpass_proto::authority::{parse_authority, parse_resolver};
use underpass_proto::TunnelToken;
use underpass_routes::PortSet;
use underpass_transport::quic::{QuicConfig, QuicSettings};
use underpass_transport::tls::{self, EdgeVerification};
use underpass_transport::TransportError;

use super::file::{ConfigFile, EdgeSection, RouteEntry, SecretString};
use super::{
    ConfigError, ConnectorConfig, DnsSettings, EdgeSettings, Overrides, ReconnectSettings, Route,
    Timeouts, TokenSource, CREDENTIAL_NAME, DEFAULT_CONNECTIONS, DEFAULT_CONNECT_MS,
    DEFAULT_DNS_TIMEOUT_MS, DEFAULT_DRAIN_MS, DEFAULT_HEADER_MS, DEFAULT_MAX_STREAMS,
    DEFAULT_ORIGIN_IDLE_MS, DEFAULT_QUIC_PROBE_INITIAL_MS, DEFAULT_QUIC_PROBE_MAX_MS,
    DEFAULT_RECONNECT_INITIAL_MS, DEFAULT_RECONNECT_MAX_MS, DEFAULT_REGISTER_MS,
    DEFAULT_RESPONSE_HEADER_MS, DEFAULT_TLS_HANDSHAKE_MS, MAX_CONNECTIONS, MAX_STREAMS_LIMIT,
    TOKEN_ENV,
};

fn invalid(key: impl Into<String>, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.to_string(),
    }
}

pub(super) fn validate(
    file: ConfigFile,
    base: &Path,
    overrides: &Overrides,
) -> Result<ConnectorConfig, ConfigError> {
    let mut config = validate_with_token(file, base, |file| resolve_token(file, base, overrides))?;
    for text in &overrides.routes {
        let (destination, ports) = match text.split_once('=') {
            Some((destination, ports)) => (destination, Some(ports.to_owned())),
            None => (text.as_str(), None),
        };
        let entry = RouteEntry {
            destination: destination.to_owned(),
            ports,
        };
        config
            .routes
            .push(parse_route_entry(&entry, &format!("--route {text}"))?);
    }
    Ok(config)
}

pub(super) fn validate_with_token(
    file: ConfigFile,
    base: &Path,
    token: impl FnOnce(&ConfigFile) -> Result<(TunnelToken, TokenSource), ConfigError>,
) -> Result<ConnectorConfig, ConfigError> {
    let connections = file.connections.unwrap_or(DEFAULT_CONNECTIONS);
    if connections == 0 || connections > MAX_CONNECTIONS {
        return Err(invalid(
            "connections",
            format!("must be between 1 and {MAX_CONNECTIONS}, got {connections}"),
        ));
    }

    let routes = file
        .routes
        .iter()
        .enumerate()
        .map(|(index, entry)| parse_route_entry(entry, &format!("route[{index}]")))
        .collect::<Result<Vec<_>, _>>()?;

    let deny = match &file.deny {
        None => default_deny(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(index, text)| parse_net(text).map_err(|m| invalid(format!("deny[{index}]"), m)))
            .collect::<Result<Vec<_>, _>>()?,
    };

    let resolvers = file
        .dns
        .resolvers
        .iter()
        .enumerate()
        .map(|(index, text)| {
            parse_resolver(text).map_err(|e| invalid(format!("dns.resolvers[{index}]"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dns = DnsSettings {
        resolvers,
        timeout: positive_ms(
            "dns.timeout_ms",
            file.dns.timeout_ms,
            DEFAULT_DNS_TIMEOUT_MS,
        )?,
        strict_resolved: file.dns.strict_resolved.unwrap_or(false),
    };

    let max_streams = file.limits.max_streams.unwrap_or(DEFAULT_MAX_STREAMS);
    if max_streams == 0 || max_streams > MAX_STREAMS_LIMIT {
        return Err(invalid(
            "limits.max_streams",
            format!("must be between 1 and {MAX_STREAMS_LIMIT}, got {max_streams}"),
        ));
    }

    let timeouts = Timeouts {
        connect: positive_ms(
            "timeouts.connect_ms",
            file.timeouts.connect_ms,
            DEFAULT_CONNECT_MS,
        )?,
        header: positive_ms(
            "timeouts.header_ms",
            file.timeouts.header_ms,
            DEFAULT_HEADER_MS,
        )?,
        register: positive_ms(
            "timeouts.register_ms",
            file.timeouts.register_ms,
            DEFAULT_REGISTER_MS,
        )?,
        // Zero is allowed: close at once on shutdown.
        drain: Duration::from_millis(file.timeouts.drain_ms.unwrap_or(DEFAULT_DRAIN_MS)),
        tls_handshake: positive_ms(
            "timeouts.tls_handshake_ms",
            file.timeouts.tls_handshake_ms,
            DEFAULT_TLS_HANDSHAKE_MS,
        )?,
        response_header: positive_ms(
            "timeouts.response_header_ms",
            file.timeouts.response_header_ms,
            DEFAULT_RESPONSE_HEADER_MS,
        )?,
        origin_idle: positive_ms(
            "timeouts.origin_idle_ms",
            file.timeouts.origin_idle_ms,
            DEFAULT_ORIGIN_IDLE_MS,
        )?,
        origin_http2: file.timeouts.origin_http2.unwrap_or(false),
    };

    let quic = quic_settings(&file.quic)?;
    // The transport names its keys (`http2.stream_window (10) must be ...`).
    file.http2.validate().map_err(|error| {
        let message = error.to_string();
        let key = message
            .split_whitespace()
            .find(|word| word.starts_with("http2."))
            .unwrap_or("http2")
            .to_owned();
        invalid(key, message)
    })?;

    let admin_listen = match &file.admin.listen {
        None => None,
        Some(text) => Some(text.trim().parse::<SocketAddr>().map_err(|_| {
            invalid(
                "admin.listen",
                format!("{text:?} is not ip:port (like 127.0.0.1:20241 or [::1]:20241)"),
            )
        })?),
    };

    let reconnect = ReconnectSettings {
        initial: positive_ms(
            "reconnect.initial_ms",
            file.reconnect.initial_ms,
            DEFAULT_RECONNECT_INITIAL_MS,
        )?,
        max: positive_ms(
            "reconnect.max_ms",
            file.reconnect.max_ms,
            DEFAULT_RECONNECT_MAX_MS,
        )?,
    };
    if reconnect.max < reconnect.initial {
        return Err(invalid(
            "reconnect.max_ms",
            "must not be below reconnect.initial_ms",
        ));
    }
    let quic_probe = ReconnectSettings {
        initial: positive_ms(
            "reconnect.quic_probe_initial_ms",
            file.reconnect.quic_probe_initial_ms,
            DEFAULT_QUIC_PROBE_INITIAL_MS,
        )?,
        max: positive_ms(
            "reconnect.quic_probe_max_ms",
            file.reconnect.quic_probe_max_ms,
            DEFAULT_QUIC_PROBE_MAX_MS,
        )?,
    };
    if quic_probe.max < quic_probe.initial {
        return Err(invalid(
            "reconnect.quic_probe_max_ms",
            "must not be below reconnect.quic_probe_initial_ms",
        ));
    }

    // Last, so that mistakes in the file show even when no token is at hand.
    let (token, token_source) = token(&file)?;
    let edge = edge_settings(&file.edge, &token, base)?;

    Ok(ConnectorConfig {
        token,
        token_source,
        connections,
        routes,
        deny,
        dns,
        max_streams,
        timeouts,
        protocol: file.protocol.unwrap_or_default(),
        quic,
        http2: file.http2.clone(),
        quic_probe,
        edge,
        reconnect,
        worker_threads: file.runtime.worker_threads.unwrap_or(1),
        admin_listen,
        log_format: file.log_format.unwrap_or_default(),
    })
}

/// Flags first, then the environment, then the file.
fn resolve_token(
    file: &ConfigFile,
    base: &Path,
    overrides: &Overrides,
) -> Result<(TunnelToken, TokenSource), ConfigError> {
    if let Some(text) = &overrides.token {
        return decode_token(text, "--token").map(|t| (t, TokenSource::Flag));
    }
    if let Some(path) = &overrides.token_file {
        let text = read_token_file(path, "--token-file")?;
        return decode_token(&text, "--token-file")
            .map(|t| (t, TokenSource::FlagFile(path.clone())));
    }
    if let Some(text) = &overrides.env_token {
        return decode_token(text, TOKEN_ENV).map(|t| (t, TokenSource::Env));
    }
    match (&file.token, &file.token_file) {
        (Some(_), Some(_)) => Err(invalid(
            "token",
            "`token` and `token_file` are both set; keep one",
        )),
        (Some(SecretString(text)), None) => {
            decode_token(text, "token").map(|t| (t, TokenSource::ConfigInline))
        }
        (None, Some(path)) => {
            let path = base.join(path);
            let text = read_token_file(&path, "token_file")?;
            decode_token(&text, "token_file").map(|t| (t, TokenSource::ConfigFile(path)))
        }
        (None, None) => host_token(overrides),
    }
}

/// The host's token sources, after everything explicit: the systemd credential, then the
/// container secret, each only when its file exists.
fn host_token(overrides: &Overrides) -> Result<(TunnelToken, TokenSource), ConfigError> {
    let credential = overrides
        .credentials_dir
        .as_ref()
        .map(|dir| (dir.join(CREDENTIAL_NAME), "$CREDENTIALS_DIRECTORY/token"));
    let secret = overrides
        .secret_file
        .as_ref()
        .map(|path| (path.clone(), "secret file"));
    for (path, key) in [credential, secret].into_iter().flatten() {
        match std::fs::metadata(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            // Anything else (no permission to look) is worth saying: the file may be there.
            Err(source) => {
                return Err(ConfigError::Read {
                    what: key,
                    path,
                    source,
                })
            }
            Ok(_) => {}
        }
        let text = read_token_file(&path, key)?;
        let token = decode_token(&text, key)?;
        let source = if key == "secret file" {
            TokenSource::Secret(path)
        } else {
            TokenSource::Credential(path)
        };
        return Ok((token, source));
    }
    Err(ConfigError::NoToken)
}

fn read_token_file(path: &Path, key: &'static str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what: key,
        path: path.to_owned(),
        source,
    })
}

fn decode_token(text: &str, key: &str) -> Result<TunnelToken, ConfigError> {
    TunnelToken::decode(text).map_err(|e| invalid(key, e))
}

/// One route; `key` names it in errors (`route[3]`, `--route 10.0.0.0/8`).
fn parse_route_entry(entry: &RouteEntry, key: &str) -> Result<Route, ConfigError> {
    let destination = underpass_routes::parse_route(&entry.destination)
        .map_err(|e| invalid(format!("{key}.destination"), e))?;
    let ports = match &entry.ports {
        Some(text) => PortSet::parse(text).map_err(|e| invalid(format!("{key}.ports"), e))?,
        None => PortSet::all(),
    };
    Ok(Route {
        destination,
        ports,
        destination_text: entry.destination.trim().to_owned(),
        ports_text: entry.ports.clone(),
    })
}

/// The deny list used when the file has no `deny` key.
pub fn default_deny() -> Vec<IpNet> {
    underpass_routes::DEFAULT_DENY.to_vec()
}

/// A CIDR, or a bare IP meaning just that address.
fn parse_net(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "{text:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not a CIDR (like 10.0.0.0/8) or an IP address"))
}

fn positive_ms(key: &str, value: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(key, "must be above zero")),
        ms => Ok(Duration::from_millis(ms)),
    }
}

/// `[quic]`: the transport's own checks, the same as the edge's; the message names the key.
fn quic_settings(section: &QuicConfig) -> Result<QuicSettings, ConfigError> {
    section.settings().map_err(|error| {
        let message = match error {
            TransportError::Settings(message) => message,
            other => other.to_string(),
        };
        invalid("quic", message)
    })
}

fn edge_settings(
    section: &EdgeSection,
    token: &TunnelToken,
    base: &Path,
) -> Result<EdgeSettings, ConfigError> {
    let addresses = match &section.addresses {
        Some(list) if list.is_empty() => {
            return Err(invalid("edge.addresses", "must name at least one edge"))
        }
        Some(list) => {
            for (index, address) in list.iter().enumerate() {
                parse_authority(address.trim()).map_err(|e| {
                    invalid(
                        format!("edge.addresses[{index}]"),
                        format!("{address:?} is not host:port: {e}"),
                    )
                })?;
            }
            list.iter().map(|a| a.trim().to_owned()).collect()
        }
        // A token with no edge would leave nothing to dial: say which key fixes it.
        None if token.edges.is_empty() => {
            return Err(invalid(
                "edge.addresses",
                "the tunnel token names no edge address; set `edge.addresses` or use a token \
                 that names one",
            ))
        }
        None => {
            for address in &token.edges {
                parse_authority(address).map_err(|e| {
                    invalid(
                        "edge.addresses",
                        format!(
                            "the tunnel token's edge address {address:?} is not host:port ({e}); \
                             set `edge.addresses`"
                        ),
                    )
                })?;
            }
            token.edges.clone()
        }
    };
    let server_name = match &section.server_name {
        Some(name) if name.trim().is_empty() => {
            return Err(invalid("edge.server_name", "must not be empty"))
        }
        Some(name) => name.trim().to_owned(),
        None => token.server_name.clone(),
    };
    if rustls_pki_types::ServerName::try_from(server_name.as_str()).is_err() {
        return Err(invalid(
            "edge.server_name",
            format!("{server_name:?} is not a valid TLS server name"),
        ));
    }
    let verification = match (&section.ca_file, section.system_roots) {
        (Some(_), true) => {
            return Err(invalid(
                "edge.system_roots",
                "`edge.ca_file` and `edge.system_roots` are both set; keep one",
            ))
        }
        (Some(path), false) => {
            let path = base.join(path);
            let pem = std::fs::read(&path).map_err(|source| ConfigError::Read {
                what: "edge.ca_file",
                path: path.clone(),
                source,
            })?;
            let verification = EdgeVerification::CaPem(pem);
            // Build once now so a bad bundle is a config error, not a runtime one.
            tls::client_config(&verification, &[]).map_err(|e| invalid("edge.ca_file", e))?;
            verification
        }
        (None, true) => EdgeVerification::SystemRoots,
        (None, false) => EdgeVerification::Pin(token.ca_pin),
    };
    if section.http2_port == Some(0) {
        return Err(invalid(
            "edge.http2_port",
            "must be a port number above zero",
        ));
    }
    Ok(EdgeSettings {
        addresses,
        server_name,
        verification,
        http2_port: section.http2_port,
    })
}
