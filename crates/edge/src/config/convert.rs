//! Validation of a configuration and its conversion into the directory model: every name
//! checked, every reference resolved, every CA bundle read. Errors name the entry and the key.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use underpass_proto::authority::{parse_authority, parse_hostname};
use underpass_proto::{Host, MAX_CA_BUNDLE_LEN};

use super::error::{invalid, ConfigError};
use super::file::{
    BindingConfig, BindingMode, EdgeConfig, ServiceConfig, ServiceHost, ServiceKind, ServiceTls,
    Timeouts,
};
use crate::model::{self, Binding, BindingTarget, Directory, Network, Service, ServicePorts};

/// The longest name a network, service or binding may have.
const MAX_NAME_LEN: usize = 128;
/// The most `max_connections` a binding may ask for.
const MAX_BINDING_CONNECTIONS: usize = 1 << 20;
/// The most `limits.max_client_connections` and `limits.max_idle_client_connections` may say.
const MAX_CLIENT_CONNECTIONS: usize = 1 << 20;

impl EdgeConfig {
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

    /// Check every value and reference, and read every `ca_file`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.directory().map(drop)
    }

    /// Validate, and convert the directory entries into the model (every service at policy
    /// generation 1; the store renumbers).
    pub(crate) fn directory(&self) -> Result<Directory, ConfigError> {
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir must not be empty".into()));
        }
        if parse_hostname(&self.server_name).is_none()
            && self.server_name.parse::<IpAddr>().is_err()
        {
            return Err(invalid(format!(
                "server_name: {:?} is not a valid DNS name or IP address",
                self.server_name
            )));
        }
        self.quic
            .settings()
            .map_err(|error| invalid(error.to_string()))?;
        self.http2
            .validate()
            .map_err(|error| invalid(error.to_string()))?;
        validate_timeouts(&self.timeouts)?;
        let limits = [
            ("max_client_connections", self.limits.max_client_connections),
            (
                "max_idle_client_connections",
                Some(self.limits.max_idle_client_connections),
            ),
        ];
        for (key, limit) in limits {
            if limit.is_some_and(|limit| !(1..=MAX_CLIENT_CONNECTIONS).contains(&limit)) {
                return Err(invalid(format!(
                    "limits.{key} must be 1 to {MAX_CLIENT_CONNECTIONS}"
                )));
            }
        }
        match (&self.admin.tls_cert, &self.admin.tls_key) {
            (Some(_), None) => return Err(invalid("admin.tls_cert needs admin.tls_key".into())),
            (None, Some(_)) => return Err(invalid("admin.tls_key needs admin.tls_cert".into())),
            _ => {}
        }
        if self.runtime.worker_threads > 1024 {
            return Err(invalid("runtime.worker_threads must be 0 to 1024".into()));
        }
        for address in &self.public_addresses {
            if let Err(error) = parse_authority(address) {
                return Err(invalid(format!(
                    "public_addresses: {address:?} is not host:port (IPv6 in brackets): {error}"
                )));
            }
        }
        self.build_directory()
    }

    fn build_directory(&self) -> Result<Directory, ConfigError> {
        let mut names = HashSet::new();
        let mut networks = Vec::with_capacity(self.networks.len());
        for network in &self.networks {
            check_name("network", &network.name, &mut names)?;
            let what = format!("network {:?}", network.name);
            networks.push(Arc::new(Network {
                name: network.name.clone(),
                tunnels: vec![tunnel_ref(&what, &network.tunnel)?],
            }));
        }
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let mut services = Vec::with_capacity(self.services.len());
        for service in &self.services {
            check_name("service", &service.name, &mut names)?;
            let service = convert_service(service)?;
            if !ids.insert(service.id) {
                return Err(invalid(format!(
                    "service {:?}: its id collides with another service's; rename it",
                    service.name
                )));
            }
            services.push(Arc::new(service));
        }
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        let mut bindings = Vec::with_capacity(self.bindings.len());
        for binding in &self.bindings {
            check_name("binding", &binding.name, &mut names)?;
            if binding.listen.port() != 0 && !listens.insert(binding.listen) {
                return Err(invalid(format!(
                    "binding {:?}: listen: {} is used by another binding",
                    binding.name, binding.listen
                )));
            }
            bindings.push(Arc::new(convert_binding(binding, &networks, &services)?));
        }
        Ok(Directory {
            networks,
            services,
            bindings,
        })
    }
}

fn validate_timeouts(timeouts: &Timeouts) -> Result<(), ConfigError> {
    let positive = [
        ("register_ms", timeouts.register_ms),
        ("connect_ms", timeouts.connect_ms),
        ("heartbeat_interval_ms", timeouts.heartbeat_interval_ms),
        ("body_idle_ms", timeouts.body_idle_ms),
        ("header_read_ms", timeouts.header_read_ms),
    ];
    for (key, value) in positive {
        if value == 0 {
            return Err(invalid(format!("timeouts.{key} must be above 0")));
        }
    }
    if timeouts.heartbeat_interval_ms > u64::from(u32::MAX) {
        return Err(invalid(format!(
            "timeouts.heartbeat_interval_ms must be at most {}",
            u32::MAX
        )));
    }
    Ok(())
}

fn convert_binding(
    binding: &BindingConfig,
    networks: &[Arc<Network>],
    services: &[Arc<Service>],
) -> Result<Binding, ConfigError> {
    let name = &binding.name;
    let target = match (&binding.network, &binding.service) {
        (Some(network), None) => match networks.iter().find(|n| &n.name == network) {
            Some(found) => BindingTarget::Network(found.clone()),
            None => {
                return Err(invalid(format!(
                    "binding {name:?}: network: no [[network]] named {network:?}"
                )))
            }
        },
        (None, Some(service)) => match services.iter().find(|s| &s.name == service) {
            Some(found) => BindingTarget::Service(found.clone()),
            None => {
                return Err(invalid(format!(
                    "binding {name:?}: service: no [[service]] named {service:?}"
                )))
            }
        },
        _ => {
            return Err(invalid(format!(
                "binding {name:?}: set exactly one of `network` and `service`"
            )))
        }
    };
    let mode = match binding.mode {
        BindingMode::Proxy => model::BindingMode::Proxy,
        BindingMode::Tcp => model::BindingMode::Tcp,
    };
    if mode == model::BindingMode::Tcp
        && !matches!(&target, BindingTarget::Service(service) if service.is_tcp())
    {
        return Err(invalid(format!(
            "binding {name:?}: mode: \"tcp\" needs a service of type = \"tcp\" (a plain TCP port \
             forwards to one fixed destination)"
        )));
    }
    if !(1..=MAX_BINDING_CONNECTIONS).contains(&binding.max_connections) {
        return Err(invalid(format!(
            "binding {name:?}: max_connections must be 1 to {MAX_BINDING_CONNECTIONS}"
        )));
    }
    Ok(Binding {
        name: name.clone(),
        listen: binding.listen,
        mode,
        target,
        max_connections: binding.max_connections,
    })
}

fn convert_service(config: &ServiceConfig) -> Result<Service, ConfigError> {
    let name = &config.name;
    let tunnel = tunnel_ref(&format!("service {name:?}"), &config.tunnel)?;
    let host = service_host(name, &config.host)?;
    let no_zero = |key: &str, port: Option<u16>| match port {
        Some(0) => Err(invalid(format!("service {name:?}: {key} must be 1-65535"))),
        _ => Ok(()),
    };
    no_zero("tcp_port", config.tcp_port)?;
    no_zero("http_port", config.http_port)?;
    no_zero("https_port", config.https_port)?;
    let ports = match config.kind {
        ServiceKind::Tcp => {
            if config.http_port.is_some() || config.https_port.is_some() {
                return Err(invalid(format!(
                    "service {name:?}: a tcp service takes tcp_port, not http_port/https_port"
                )));
            }
            if config.tls != ServiceTls::default() {
                return Err(invalid(format!(
                    "service {name:?}: tls: applies to http services only"
                )));
            }
            let Some(port) = config.tcp_port else {
                return Err(invalid(format!(
                    "service {name:?}: tcp_port: required for a tcp service"
                )));
            };
            ServicePorts::Tcp(port)
        }
        ServiceKind::Http => {
            if config.tcp_port.is_some() {
                return Err(invalid(format!(
                    "service {name:?}: tcp_port: an http service takes http_port/https_port"
                )));
            }
            match (config.http_port, config.https_port) {
                (None, None) => ServicePorts::Http {
                    http: Some(80),
                    https: Some(443),
                },
                (http, https) => ServicePorts::Http { http, https },
            }
        }
    };
    let ca_pem = match &config.tls.ca_file {
        None => None,
        Some(path) => Some(Arc::from(read_ca_file(name, path)?)),
    };
    Ok(Service {
        id: model::service_id(name),
        generation: 1,
        name: name.clone(),
        tunnel,
        host,
        resolvers: config.host.resolver_ips.clone(),
        ports,
        tls: config.tls.cert_verification_mode.into(),
        ca_pem,
    })
}

/// The host to dial: the IPv4 address if set, else the IPv6 one, else the hostname.
fn service_host(service: &str, host: &ServiceHost) -> Result<Host, ConfigError> {
    let has_ip = host.ipv4.is_some() || host.ipv6.is_some();
    match (&host.hostname, host.ipv4, host.ipv6) {
        (Some(_), _, _) if has_ip => Err(invalid(format!(
            "service {service:?}: host: takes either ipv4/ipv6 or hostname, not both"
        ))),
        (None, None, None) => Err(invalid(format!(
            "service {service:?}: host: needs ipv4, ipv6 or hostname"
        ))),
        (None, _, _) if !host.resolver_ips.is_empty() => Err(invalid(format!(
            "service {service:?}: host.resolver_ips: only applies to a hostname host"
        ))),
        (Some(name), _, _) => match parse_hostname(name) {
            Some(name) => Ok(Host::Name(name)),
            None => Err(invalid(format!(
                "service {service:?}: host.hostname: {name:?} is not a valid hostname"
            ))),
        },
        (None, Some(v4), _) => Ok(Host::Ip(IpAddr::V4(v4))),
        (None, None, Some(v6)) => Ok(Host::Ip(IpAddr::V6(v6))),
    }
}

fn read_ca_file(service: &str, path: &Path) -> Result<String, ConfigError> {
    let error = |detail: String| ConfigError::CaFile {
        service: service.to_owned(),
        path: path.to_owned(),
        detail,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| error(e.to_string()))?
        .len();
    if len > MAX_CA_BUNDLE_LEN as u64 {
        return Err(error(format!(
            "{len} bytes is larger than the {MAX_CA_BUNDLE_LEN}-byte limit for a CA bundle"
        )));
    }
    let pem = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    if pem.len() > MAX_CA_BUNDLE_LEN {
        return Err(error(format!(
            "{} bytes is larger than the {MAX_CA_BUNDLE_LEN}-byte limit for a CA bundle",
            pem.len()
        )));
    }
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(error("no PEM certificate in it".into()));
    }
    Ok(pem)
}

fn check_name(kind: &str, name: &str, seen: &mut HashSet<String>) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        return Err(invalid(format!(
            "{kind} {name:?}: name: use 1-{MAX_NAME_LEN} characters among A-Z a-z 0-9 - _ ."
        )));
    }
    if !seen.insert(name.to_owned()) {
        return Err(invalid(format!("two {kind}s are named {name:?}")));
    }
    Ok(())
}

fn tunnel_ref(what: &str, tunnel: &str) -> Result<model::TunnelRef, ConfigError> {
    if tunnel.is_empty() {
        return Err(invalid(format!("{what}: tunnel: must not be empty")));
    }
    Ok(model::TunnelRef::new(tunnel))
}

#[cfg(test)]
mod tests {
    use underpass_proto::{Scheme, TlsVerification};

    use super::super::file::NetworkConfig;
    use super::*;

    const EXAMPLE: &str = include_str!("../../../../deploy/edge.example.toml");

    fn service(kind: ServiceKind) -> ServiceConfig {
        ServiceConfig {
            name: "svc".into(),
            kind,
            tunnel: "t".into(),
            host: ServiceHost::ip("127.0.0.5".parse().unwrap()), // literal
            tcp_port: None,
            http_port: None,
            https_port: None,
            tls: ServiceTls::default(),
        }
    }

    #[test]
    fn the_example_converts() {
        let config = EdgeConfig::from_toml(EXAMPLE).unwrap(); // the example parses
        let directory = config.directory().unwrap(); // and is valid
        assert_eq!(directory.bindings.len(), 4);
        assert_eq!(directory.bindings[3].mode, model::BindingMode::Tcp);
        assert_eq!(directory.bindings[0].max_connections, 1024);
        let BindingTarget::Service(redis) = &directory.bindings[1].target else {
            panic!("REDIS serves a service");
        };
        assert_eq!(redis.host, Host::Name("redis.internal".into()));
        assert_eq!(redis.ports, ServicePorts::Tcp(6379));
        assert_eq!(redis.resolvers, vec!["10.0.0.2:53".parse().unwrap()]); // literal
        assert_eq!(redis.id, model::service_id("redis"));
        let BindingTarget::Service(api) = &directory.bindings[2].target else {
            panic!("API serves a service");
        };
        // Only http_port is set: an https URL is forced to plain HTTP on 8080.
        assert_eq!(api.http_scheme(Scheme::Https), Some(Scheme::Http));
        assert_eq!(api.policy().http_target(Scheme::Http).port, 8080);
        assert_eq!(api.tls, TlsVerification::VerifyFull);
    }

    #[test]
    fn http_ports_default_to_both() {
        let both = convert_service(&service(ServiceKind::Http)).unwrap(); // valid
        assert_eq!(
            both.ports,
            ServicePorts::Http {
                http: Some(80),
                https: Some(443)
            }
        );
        let mut only_https = service(ServiceKind::Http);
        only_https.https_port = Some(8443);
        let only_https = convert_service(&only_https).unwrap(); // valid
        assert_eq!(only_https.http_scheme(Scheme::Http), Some(Scheme::Https));
        assert_eq!(only_https.policy().tcp_target(), None);
    }

    #[test]
    fn tcp_service_needs_tcp_port() {
        let error = convert_service(&service(ServiceKind::Tcp)).unwrap_err();
        assert!(
            error.to_string().contains("service \"svc\": tcp_port"),
            "{error}"
        );
        let mut tcp = service(ServiceKind::Tcp);
        tcp.tcp_port = Some(6379);
        let tcp = convert_service(&tcp).unwrap(); // valid
        assert_eq!(tcp.policy().tcp_target().map(|t| t.port), Some(6379));
        assert_eq!(tcp.http_scheme(Scheme::Http), None);
    }

    #[test]
    fn host_forms() {
        let mut both = service(ServiceKind::Http);
        both.host.hostname = Some("db.internal".into());
        assert!(convert_service(&both).is_err());
        let mut none = service(ServiceKind::Http);
        none.host = ServiceHost::default();
        assert!(convert_service(&none).is_err());
        let mut named = service(ServiceKind::Http);
        named.host = ServiceHost::hostname("DB.internal", vec!["127.0.0.1:5353".parse().unwrap()]); // literal
        let named = convert_service(&named).unwrap(); // valid
        assert_eq!(named.host, Host::Name("db.internal".into()));
        assert_eq!(named.resolvers.len(), 1);
    }

    #[test]
    fn ca_bundles_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap(); // scratch
        let path = dir.path().join("ca.pem");
        let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        let mut big = pem.repeat(MAX_CA_BUNDLE_LEN / pem.len());
        std::fs::write(&path, &big).unwrap(); // scratch
        let mut config = service(ServiceKind::Http);
        config.tls.ca_file = Some(path.clone());
        let service = convert_service(&config).unwrap(); // at the limit
        assert_eq!(service.ca_pem.map(|p| p.len()), Some(big.len()));
        big.push_str(&"A".repeat(MAX_CA_BUNDLE_LEN));
        std::fs::write(&path, &big).unwrap(); // scratch
        let error = convert_service(&config).unwrap_err().to_string();
        assert!(error.contains("service \"svc\": tls.ca_file"), "{error}");
        assert!(error.contains("limit"), "{error}");
    }

    #[test]
    fn binding_limits() {
        let mut config = EdgeConfig::new("/tmp/x");
        config.networks.push(NetworkConfig {
            name: "n".into(),
            tunnel: "t".into(),
        });
        let mut binding = BindingConfig::network("B", "127.0.0.1:0".parse().unwrap(), "n"); // literal
        binding.max_connections = 0;
        config.bindings.push(binding);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("binding \"B\": max_connections"), "{error}");
    }

    #[test]
    fn client_connection_limit_and_header_timeout() {
        let config = EdgeConfig::from_toml(
            "state_dir = \"/tmp/x\"\n[limits]\nmax_client_connections = 100\n\
             [timeouts]\nheader_read_ms = 5000\n",
        )
        .unwrap(); // valid TOML
        config.validate().unwrap(); // and valid values
        assert_eq!(config.limits.max_client_connections, Some(100));
        assert_eq!(config.timeouts.header_read_ms, 5000);
        assert_eq!(
            EdgeConfig::new("/tmp/x").limits.max_client_connections,
            None
        );
        assert_eq!(EdgeConfig::new("/tmp/x").timeouts.header_read_ms, 30_000);

        let mut config = EdgeConfig::new("/tmp/x");
        config.limits.max_client_connections = Some(0);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("limits.max_client_connections"), "{error}");
        let mut config = EdgeConfig::new("/tmp/x");
        config.limits.max_idle_client_connections = 0;
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("limits.max_idle_client_connections"),
            "{error}"
        );
        let mut config = EdgeConfig::new("/tmp/x");
        config.timeouts.header_read_ms = 0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("timeouts.header_read_ms"), "{error}");
    }
}
