//! The directory's domain model: tunnels, VPC Networks, VPC Services and the bindings that
//! serve them. Plain data with no serde and no I/O: the TOML configuration converts into it
//! ([`crate::config`]), a [`DirectoryStore`](crate::directory::DirectoryStore) publishes it as a
//! live snapshot, and the binding front and the connector side read only this.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use underpass_proto::{
    Host, OriginPolicy, Scheme, ServiceId, ServiceRef, TlsVerification, TunnelId, TunnelSecret,
    TunnelToken,
};

/// What a service's name is prefixed with before hashing it into its [`ServiceId`].
pub(crate) const SERVICE_ID_CONTEXT: &str = "underpass-service:";

/// The id of a service defined by name (a `[[service]]` of the config file): the first 16
/// bytes of SHA-256 of `"underpass-service:" + name`. Stable across restarts and the same on
/// every connection; renaming a service makes it another service.
pub(crate) fn service_id(name: &str) -> ServiceId {
    let digest = Sha256::new()
        .chain_update(SERVICE_ID_CONTEXT)
        .chain_update(name)
        .finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    ServiceId(id)
}

/// One tunnel: what a group of connectors serves, known by id, name and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// Its id (in tokens and registrations).
    pub id: TunnelId,
    /// Its name (in the config and the CLI).
    pub name: String,
    /// The secret connectors prove they hold. `Debug` prints `***`.
    pub secret: TunnelSecret,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
}

impl Tunnel {
    /// The id as 32 lowercase hex digits.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id.0)
    }

    /// The token a connector of this tunnel runs with.
    pub fn token(&self, edges: Vec<String>, server_name: &str, ca_pin: [u8; 32]) -> TunnelToken {
        TunnelToken {
            tunnel_id: self.id,
            secret: self.secret.clone(),
            edges,
            server_name: server_name.to_owned(),
            ca_pin,
        }
    }
}

/// Parse 32 hex digits as a tunnel id.
pub fn parse_tunnel_id(text: &str) -> Option<TunnelId> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(text, &mut id).ok()?;
    Some(TunnelId(id))
}

/// How a network or service names its tunnel: by name or by id (32 hex digits). The tunnel
/// may not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TunnelRef(String);

impl TunnelRef {
    pub(crate) fn new(reference: impl Into<String>) -> Self {
        TunnelRef(reference.into())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this reference names `tunnel`.
    pub(crate) fn names(&self, tunnel: &Tunnel) -> bool {
        self.0 == tunnel.name || parse_tunnel_id(&self.0) == Some(tunnel.id)
    }
}

impl fmt::Display for TunnelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The directory at one moment: what every binding serves. Cheap to share behind an `Arc`;
/// a change is a new `Directory`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Directory {
    /// VPC Networks, in definition order.
    pub networks: Vec<Arc<Network>>,
    /// VPC Services, in definition order.
    pub services: Vec<Arc<Service>>,
    /// Bindings, in definition order.
    pub bindings: Vec<Arc<Binding>>,
}

impl Directory {
    /// The binding called `name`.
    pub(crate) fn binding(&self, name: &str) -> Option<&Arc<Binding>> {
        self.bindings.iter().find(|b| b.name == name)
    }

    /// The service with this id.
    pub(crate) fn service(&self, id: ServiceId) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.id == id)
    }

    /// The services whose tunnel is `tunnel`: the ones its connectors must know the policy of.
    pub(crate) fn services_of<'a>(
        &'a self,
        tunnel: &'a Tunnel,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        self.services.iter().filter(|s| s.tunnel.names(tunnel))
    }
}

/// A VPC Network: every destination its tunnels' connectors route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Network {
    /// Its name.
    pub name: String,
    /// Its tunnels: one for a network bound to a tunnel; every tunnel of its account for a
    /// network that spans the account (each stream then goes to the tunnel whose connectors
    /// announce the most specific route for the destination).
    pub tunnels: Vec<TunnelRef>,
}

/// A VPC Service: one private host, always dialed whatever the client asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Service {
    /// Stable id (see [`service_id`]).
    pub id: ServiceId,
    /// Version of the origin policy: grows whenever the policy changes (set by the store).
    pub generation: u64,
    /// Its name.
    pub name: String,
    /// Its tunnel.
    pub tunnel: TunnelRef,
    /// The host to dial.
    pub host: Host,
    /// DNS servers for a hostname host (empty: the connector's own).
    pub resolvers: Vec<SocketAddr>,
    /// What it carries, on which ports.
    pub ports: ServicePorts,
    /// How an HTTPS origin's certificate is checked.
    pub tls: TlsVerification,
    /// Extra trust anchors (PEM).
    pub ca_pem: Option<Arc<str>>,
}

/// A service's kind with its effective ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServicePorts {
    /// A TCP service on this port.
    Tcp(u16),
    /// An HTTP service. `None` for a scheme means that scheme is not offered: setting only one
    /// of `http_port` / `https_port` forces that scheme.
    Http {
        /// Port for plain HTTP.
        http: Option<u16>,
        /// Port for HTTPS.
        https: Option<u16>,
    },
}

impl Service {
    /// This service at its current policy generation, as a stream header names it.
    pub(crate) fn service_ref(&self) -> ServiceRef {
        ServiceRef {
            id: self.id,
            generation: self.generation,
        }
    }

    /// Whether this is a TCP service (`connect()` only).
    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self.ports, ServicePorts::Tcp(_))
    }

    /// For an HTTP service, the scheme actually used when a client asks for `requested`: the
    /// requested one if the service offers it, else the one it offers. `None` for a TCP
    /// service.
    pub(crate) fn http_scheme(&self, requested: Scheme) -> Option<Scheme> {
        let ServicePorts::Http { http, https } = self.ports else {
            return None;
        };
        match (requested, http, https) {
            (Scheme::Http, Some(_), _) | (_, Some(_), None) => Some(Scheme::Http),
            (Scheme::Https, _, Some(_)) | (_, None, Some(_)) => Some(Scheme::Https),
            (_, None, None) => None,
        }
    }

    /// The port the connector dials: `tcp_port` for a TCP service; for an HTTP service the
    /// port of the scheme it uses when a client asks for `requested` (see
    /// [`Service::http_scheme`]).
    pub(crate) fn port(&self, requested: Scheme) -> Option<u16> {
        match self.ports {
            ServicePorts::Tcp(port) => Some(port),
            ServicePorts::Http { http, https } => match self.http_scheme(requested)? {
                Scheme::Http => http,
                Scheme::Https => https,
            },
        }
    }

    /// The origin policy the connector dials this service with.
    pub(crate) fn policy(&self) -> OriginPolicy {
        let (http_port, https_port, tcp_port) = match self.ports {
            ServicePorts::Tcp(port) => (None, None, Some(port)),
            ServicePorts::Http { http, https } => (http, https, None),
        };
        OriginPolicy {
            service: self.service_ref(),
            name: self.name.clone(),
            host: self.host.clone(),
            resolvers: self.resolvers.clone(),
            http_port,
            https_port,
            tcp_port,
            tls: self.tls,
            ca_pem: self.ca_pem.as_deref().map(str::to_owned),
        }
    }

    /// Whether `other` has the same policy (everything but the generation).
    pub(crate) fn same_policy(&self, other: &Service) -> bool {
        Service {
            generation: other.generation,
            ..self.clone()
        } == *other
    }
}

/// A binding: one listener serving one network or service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Binding {
    /// Its name (`MY_BINDING`).
    pub name: String,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// What the listener speaks.
    pub mode: BindingMode,
    /// What it serves.
    pub target: BindingTarget,
    /// Client connections served at once; at the limit the listener stops accepting.
    pub max_connections: usize,
}

/// What a binding's listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindingMode {
    /// An HTTP/1.1 forward proxy (`CONNECT` and absolute-form requests).
    Proxy,
    /// A plain TCP port piped to a TCP service.
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

/// What a binding serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BindingTarget {
    /// A VPC Network: the client's address is the destination.
    Network(Arc<Network>),
    /// A VPC Service: its configured host is always the destination.
    Service(Arc<Service>),
}

impl BindingTarget {
    /// The tunnels of the network (one, or every one it spans) or the service's tunnel.
    pub(crate) fn tunnels(&self) -> &[TunnelRef] {
        match self {
            BindingTarget::Network(network) => &network.tunnels,
            BindingTarget::Service(service) => std::slice::from_ref(&service.tunnel),
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` for seconds since the Unix epoch (UTC).
pub(crate) fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn http_service(name: &str, http: Option<u16>, https: Option<u16>) -> Service {
        Service {
            id: service_id(name),
            generation: 1,
            name: name.into(),
            tunnel: TunnelRef::new("prod"),
            host: Host::Ip("127.0.0.5".parse().unwrap()), // literal
            resolvers: Vec::new(),
            ports: ServicePorts::Http { http, https },
            tls: TlsVerification::VerifyFull,
            ca_pem: None,
        }
    }

    #[test]
    fn service_ids_are_a_hash_of_the_name() {
        let digest = Sha256::digest(b"underpass-service:internal-api");
        assert_eq!(service_id("internal-api").0[..], digest[..16]);
        assert_eq!(service_id("internal-api"), service_id("internal-api"));
        assert_ne!(service_id("internal-api"), service_id("internal-api2"));
    }

    #[test]
    fn one_port_forces_the_scheme() {
        let both = http_service("a", Some(80), Some(443));
        assert_eq!(both.http_scheme(Scheme::Http), Some(Scheme::Http));
        assert_eq!(both.http_scheme(Scheme::Https), Some(Scheme::Https));
        let only_http = http_service("a", Some(8080), None);
        assert_eq!(only_http.http_scheme(Scheme::Https), Some(Scheme::Http));
        let only_https = http_service("a", None, Some(8443));
        assert_eq!(only_https.http_scheme(Scheme::Http), Some(Scheme::Https));
        assert_eq!(only_https.port(Scheme::Http), Some(8443));
        assert_eq!(both.port(Scheme::Https), Some(443));
        let policy = only_https.policy();
        assert_eq!(policy.http_target(Scheme::Https).port, 8443);
        assert_eq!(policy.tcp_target(), None);
    }

    #[test]
    fn policies_compare_without_the_generation() {
        let a = http_service("a", Some(80), None);
        let newer = Service {
            generation: 7,
            ..a.clone()
        };
        assert!(a.same_policy(&newer));
        let changed = Service {
            tls: TlsVerification::Disabled,
            ..a.clone()
        };
        assert!(!a.same_policy(&changed));
    }

    #[test]
    fn tunnel_references_match_name_or_id() {
        let tunnel = Tunnel {
            id: TunnelId([0xab; 16]),
            name: "prod".into(),
            secret: TunnelSecret([1; 32]),
            created_at: 0,
        };
        assert!(TunnelRef::new("prod").names(&tunnel));
        assert!(TunnelRef::new(tunnel.id_hex()).names(&tunnel));
        assert!(!TunnelRef::new("staging").names(&tunnel));
    }
}
