//! The validated directory: what each binding serves, with every reference resolved and
//! every service's CA bundle read. Built from an [`EdgeConfig`] by
//! [`EdgeConfig::directory`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use underpass_proto::{DialTarget, Host, Scheme, TlsVerification};

use crate::config::{
    check_name, check_tunnel_ref, invalid, BindingMode, ConfigError, EdgeConfig, NetworkConfig,
    ServiceConfig, ServiceKind, ServiceTls,
};

/// The validated directory: what each binding serves.
#[derive(Debug, Clone)]
pub struct Directory {
    /// The bindings, in config order.
    pub bindings: Vec<Binding>,
}

impl Directory {
    /// Check names and references of the networks, services and bindings of `config`.
    pub(crate) fn build(config: &EdgeConfig) -> Result<Directory, ConfigError> {
        let mut names = HashSet::new();
        for network in &config.networks {
            check_name("network", &network.name, &mut names)?;
            check_tunnel_ref(&format!("network {:?}", network.name), &network.tunnel)?;
        }
        let mut services = Vec::with_capacity(config.services.len());
        let mut names = HashSet::new();
        for service in &config.services {
            check_name("service", &service.name, &mut names)?;
            services.push(ResolvedService::from_config(service)?);
        }
        let mut bindings = Vec::with_capacity(config.bindings.len());
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        for binding in &config.bindings {
            check_name("binding", &binding.name, &mut names)?;
            if binding.listen.port() != 0 && !listens.insert(binding.listen) {
                return Err(invalid(format!(
                    "binding {:?}: listen address {} is used by another binding",
                    binding.name, binding.listen
                )));
            }
            let target = match (&binding.network, &binding.service) {
                (Some(network), None) => {
                    let found = config.networks.iter().find(|n| &n.name == network);
                    let Some(found) = found else {
                        return Err(invalid(format!(
                            "binding {:?}: no [[network]] named {network:?}",
                            binding.name
                        )));
                    };
                    BindingTarget::Network(found.clone())
                }
                (None, Some(service)) => {
                    let found = services.iter().find(|s| &s.name == service);
                    let Some(found) = found else {
                        return Err(invalid(format!(
                            "binding {:?}: no [[service]] named {service:?}",
                            binding.name
                        )));
                    };
                    BindingTarget::Service(found.clone())
                }
                _ => {
                    return Err(invalid(format!(
                        "binding {:?}: set exactly one of `network` and `service`",
                        binding.name
                    )))
                }
            };
            if binding.mode == BindingMode::Tcp {
                let tcp_service = matches!(
                    &target,
                    BindingTarget::Service(service) if matches!(service.ports, ServicePorts::Tcp(_))
                );
                if !tcp_service {
                    return Err(invalid(format!(
                        "binding {:?}: mode = \"tcp\" needs a service of type = \"tcp\" \
                         (a plain TCP port forwards to one fixed destination)",
                        binding.name
                    )));
                }
            }
            bindings.push(Binding {
                name: binding.name.clone(),
                listen: binding.listen,
                mode: binding.mode,
                target,
            });
        }
        Ok(Directory { bindings })
    }
}

/// A validated binding.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The binding's name.
    pub name: String,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// What the listener speaks.
    pub mode: BindingMode,
    /// What it serves.
    pub target: BindingTarget,
}

/// What a binding serves.
#[derive(Debug, Clone)]
pub enum BindingTarget {
    /// A VPC Network: the client's address is the destination.
    Network(NetworkConfig),
    /// A VPC Service: the service's configured host is always the destination.
    Service(ResolvedService),
}

impl BindingTarget {
    /// The tunnel reference (name or id) of the network or service.
    pub fn tunnel(&self) -> &str {
        match self {
            BindingTarget::Network(network) => &network.tunnel,
            BindingTarget::Service(service) => &service.tunnel,
        }
    }
}

/// A validated service with its CA bundle read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedService {
    /// The service's name.
    pub name: String,
    /// The tunnel reference (name or id).
    pub tunnel: String,
    /// What it carries and on which ports.
    pub ports: ServicePorts,
    /// The host to dial.
    pub host: Host,
    /// DNS servers for a hostname host (empty: the connector's own).
    pub resolvers: Vec<SocketAddr>,
    /// Origin certificate verification.
    pub tls: TlsVerification,
    /// Extra trust anchors (PEM) from `tls.ca_file`.
    pub ca_pem: Option<String>,
}

/// A service's kind with its effective ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServicePorts {
    /// A TCP service on this port.
    Tcp(u16),
    /// An HTTP service. `None` for a scheme means that scheme is not offered: setting only
    /// one of `http_port` / `https_port` forces that scheme.
    Http {
        /// Port for plain HTTP.
        http: Option<u16>,
        /// Port for HTTPS.
        https: Option<u16>,
    },
}

impl ResolvedService {
    fn from_config(config: &ServiceConfig) -> Result<Self, ConfigError> {
        let name = &config.name;
        check_tunnel_ref(&format!("service {name:?}"), &config.tunnel)?;
        config.host.validate(name)?;
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
                        "service {name:?}: tls settings apply to http services only"
                    )));
                }
                let Some(port) = config.tcp_port else {
                    return Err(invalid(format!(
                        "service {name:?}: a tcp service needs tcp_port"
                    )));
                };
                ServicePorts::Tcp(port)
            }
            ServiceKind::Http => {
                if config.tcp_port.is_some() {
                    return Err(invalid(format!(
                        "service {name:?}: an http service takes http_port/https_port, not tcp_port"
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
            Some(path) => Some(read_ca_file(name, path)?),
        };
        // Validated above: exactly one host form is set.
        let host = config
            .host
            .dial_host()
            .ok_or_else(|| invalid(format!("service {name:?}: host is empty")))?;
        Ok(ResolvedService {
            name: name.clone(),
            tunnel: config.tunnel.clone(),
            ports,
            host,
            resolvers: config.host.resolver_ips.clone(),
            tls: config.tls.cert_verification_mode.into(),
            ca_pem,
        })
    }

    /// The dial target of a TCP service (`None` for an HTTP service).
    pub fn tcp_target(&self) -> Option<DialTarget> {
        match self.ports {
            ServicePorts::Tcp(port) => Some(DialTarget {
                host: self.host.clone(),
                port,
                resolvers: self.resolvers.clone(),
            }),
            ServicePorts::Http { .. } => None,
        }
    }

    /// For an HTTP service, the scheme and port actually used when a client asks for
    /// `requested`: the requested scheme if the service offers it, else the one it offers.
    /// `None` for a TCP service.
    pub fn http_endpoint(&self, requested: Scheme) -> Option<(Scheme, u16)> {
        let ServicePorts::Http { http, https } = self.ports else {
            return None;
        };
        match (requested, http, https) {
            (Scheme::Http, Some(port), _) => Some((Scheme::Http, port)),
            (Scheme::Https, _, Some(port)) => Some((Scheme::Https, port)),
            (_, Some(port), None) => Some((Scheme::Http, port)),
            (_, None, Some(port)) => Some((Scheme::Https, port)),
            (_, None, None) => None,
        }
    }
}

fn read_ca_file(service: &str, path: &Path) -> Result<String, ConfigError> {
    let error = |detail: String| ConfigError::CaFile {
        service: service.to_owned(),
        path: path.to_owned(),
        detail,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(error("no PEM certificate in it".into()));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceHost;

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
    fn http_ports_default_and_forcing() {
        let both = ResolvedService::from_config(&service(ServiceKind::Http)).unwrap(); // valid
        assert_eq!(both.http_endpoint(Scheme::Http), Some((Scheme::Http, 80)));
        assert_eq!(
            both.http_endpoint(Scheme::Https),
            Some((Scheme::Https, 443))
        );

        let mut only_http = service(ServiceKind::Http);
        only_http.http_port = Some(8080);
        let only_http = ResolvedService::from_config(&only_http).unwrap(); // valid
        assert_eq!(
            only_http.http_endpoint(Scheme::Https),
            Some((Scheme::Http, 8080))
        );

        let mut only_https = service(ServiceKind::Http);
        only_https.https_port = Some(8443);
        let only_https = ResolvedService::from_config(&only_https).unwrap(); // valid
        assert_eq!(
            only_https.http_endpoint(Scheme::Http),
            Some((Scheme::Https, 8443))
        );
        assert_eq!(only_https.tcp_target(), None);
    }

    #[test]
    fn tcp_service_needs_tcp_port() {
        assert!(ResolvedService::from_config(&service(ServiceKind::Tcp)).is_err());
        let mut tcp = service(ServiceKind::Tcp);
        tcp.tcp_port = Some(6379);
        let tcp = ResolvedService::from_config(&tcp).unwrap(); // valid
        assert_eq!(tcp.tcp_target().map(|t| t.port), Some(6379));
        assert_eq!(tcp.http_endpoint(Scheme::Http), None);
    }

    #[test]
    fn host_forms() {
        let mut both = service(ServiceKind::Http);
        both.host.hostname = Some("db.internal".into());
        assert!(ResolvedService::from_config(&both).is_err());
        let mut none = service(ServiceKind::Http);
        none.host = ServiceHost::default();
        assert!(ResolvedService::from_config(&none).is_err());
        let mut named = service(ServiceKind::Http);
        named.host = ServiceHost::hostname("db.internal", vec!["127.0.0.1:5353".parse().unwrap()]); // literal
        let named = ResolvedService::from_config(&named).unwrap(); // valid
        assert_eq!(named.host, Host::Name("db.internal".into()));
        assert_eq!(named.resolvers.len(), 1);
    }
}
