//! The directory database's objects as the edge serves them: tunnels for registration, and
//! networks, services and bindings in the model the binding front reads. The config file's
//! objects are served beside them, unchanged; names cannot clash because the database's are
//! prefixed with their account (`acme/web`, `acme/MY_BINDING`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use underpass_proto::{Host, ServiceId, TlsVerification, TunnelId, TunnelSecret};

use super::schema::{
    BindingModeSpec, BindingSpec, BindingTargetSpec, CertMode, HostSpec, NetworkSpec, ServiceKind,
    ServiceSpec,
};
use crate::config::DEFAULT_MAX_CONNECTIONS;
use crate::db::{Account, DbError, DirectoryBackend, Id, Kind, Record};
use crate::model::{
    Binding, BindingMode, BindingTarget, Network, Service, ServicePorts, Tunnel, TunnelRef,
};

/// Where a resolver IP given without a port is asked.
const DNS_PORT: u16 = 53;

/// A tunnel's stored body: its secret (the id, name and times are the record's).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TunnelBody {
    /// 64 hex digits.
    pub secret: String,
}

/// Everything of the database the edge serves.
#[derive(Debug, Default)]
pub(crate) struct ApiDirectory {
    /// Tunnels, for registration.
    pub tunnels: Vec<Tunnel>,
    /// VPC Networks.
    pub networks: Vec<Arc<Network>>,
    /// VPC Services.
    pub services: Vec<Arc<Service>>,
    /// Bindings.
    pub bindings: Vec<Arc<Binding>>,
}

/// The name a database object has in the served directory: `account/name`.
pub(crate) fn served_name(account: &str, name: &str) -> String {
    format!("{account}/{name}")
}

/// The tunnel of a tunnel record.
pub(crate) fn tunnel_of(record: &Record) -> Option<Tunnel> {
    let body: TunnelBody = serde_json::from_str(&record.body).ok()?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(&body.secret, &mut secret).ok()?;
    Some(Tunnel {
        id: TunnelId(record.id),
        name: record.name.clone(),
        secret: TunnelSecret(secret),
        created_at: record.created_at,
    })
}

fn tunnel_ref(id: &Id) -> TunnelRef {
    TunnelRef::new(hex::encode(id))
}

/// The served service of a stored spec.
pub(crate) fn service_of(account: &Account, record: &Record, spec: &ServiceSpec) -> Service {
    let (tunnel, host, resolvers) = match &spec.host {
        HostSpec::Ip {
            ipv4,
            ipv6,
            tunnel_id,
            ..
        } => {
            // Dual stack dials IPv4, as a config file's service does.
            let ip = ipv4
                .map(IpAddr::V4)
                .or(ipv6.map(IpAddr::V6))
                .unwrap_or(IpAddr::from([0, 0, 0, 0]));
            (tunnel_id, Host::Ip(ip), Vec::new())
        }
        HostSpec::Hostname {
            hostname,
            tunnel_id,
            resolver_ips,
        } => (
            tunnel_id,
            Host::Name(hostname.clone()),
            resolver_ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, DNS_PORT))
                .collect(),
        ),
    };
    let ports = match spec.kind {
        ServiceKind::Tcp => ServicePorts::Tcp(spec.tcp_port.unwrap_or(0)),
        ServiceKind::Http => ServicePorts::Http {
            http: spec.http_port,
            https: spec.https_port,
        },
    };
    Service {
        id: ServiceId(record.id),
        generation: 0,
        name: served_name(&account.name, &spec.name),
        tunnel: tunnel_ref(tunnel),
        host,
        resolvers,
        ports,
        tls: match spec.cert_verification_mode {
            CertMode::VerifyFull => TlsVerification::VerifyFull,
            CertMode::VerifyCa => TlsVerification::VerifyCa,
            CertMode::Disabled => TlsVerification::Disabled,
        },
        ca_pem: None,
    }
}

/// Read every account's objects. An object whose stored body no longer parses is left out
/// (and logged): one bad row must not take the others down.
pub(crate) fn load(backend: &dyn DirectoryBackend) -> Result<ApiDirectory, DbError> {
    let mut served = ApiDirectory::default();
    let accounts = backend.accounts()?;
    let account_of = |id: &Id| accounts.iter().find(|a| a.id == *id);
    // With their account, for networks spanning one.
    let mut owned: Vec<(Id, Id)> = Vec::new();
    for record in backend.list(None, Kind::Tunnel)? {
        match tunnel_of(&record) {
            Some(tunnel) => {
                owned.push((record.account, record.id));
                served.tunnels.push(tunnel);
            }
            None => skip(&record),
        }
    }
    let tunnels_of = |account: &Id| -> Vec<TunnelRef> {
        owned
            .iter()
            .filter(|(owner, _)| owner == account)
            .map(|(_, id)| tunnel_ref(id))
            .collect()
    };
    let mut networks: Vec<(Id, Arc<Network>)> = Vec::new();
    for record in backend.list(None, Kind::Network)? {
        let (Some(account), Ok(spec)) = (
            account_of(&record.account),
            serde_json::from_str::<NetworkSpec>(&record.body),
        ) else {
            skip(&record);
            continue;
        };
        let tunnels = match &spec.tunnel_id {
            Some(id) => vec![tunnel_ref(id)],
            None => tunnels_of(&account.id),
        };
        networks.push((
            record.id,
            Arc::new(Network {
                name: served_name(&account.name, &spec.name),
                tunnels,
            }),
        ));
    }
    let mut services: Vec<(Id, Arc<Service>)> = Vec::new();
    for record in backend.list(None, Kind::Service)? {
        let (Some(account), Ok(spec)) = (
            account_of(&record.account),
            serde_json::from_str::<ServiceSpec>(&record.body),
        ) else {
            skip(&record);
            continue;
        };
        services.push((record.id, Arc::new(service_of(account, &record, &spec))));
    }
    for record in backend.list(None, Kind::Binding)? {
        let (Some(account), Ok(spec)) = (
            account_of(&record.account),
            serde_json::from_str::<BindingSpec>(&record.body),
        ) else {
            skip(&record);
            continue;
        };
        let target = match &spec.target {
            BindingTargetSpec::Service(id) => services
                .iter()
                .find(|(sid, _)| sid == id)
                .map(|(_, s)| BindingTarget::Service(s.clone())),
            BindingTargetSpec::Network(id) => networks
                .iter()
                .find(|(nid, _)| nid == id)
                .map(|(_, n)| BindingTarget::Network(n.clone())),
            BindingTargetSpec::Tunnel(id) => Some(BindingTarget::Network(Arc::new(Network {
                name: served_name(&account.name, &format!("tunnel-{}", hex::encode(id))),
                tunnels: vec![tunnel_ref(id)],
            }))),
        };
        let Some(target) = target else {
            skip(&record);
            continue;
        };
        served.bindings.push(Arc::new(Binding {
            name: served_name(&account.name, &spec.name),
            listen: spec.listen,
            mode: match spec.mode {
                BindingModeSpec::Proxy => BindingMode::Proxy,
                BindingModeSpec::Tcp => BindingMode::Tcp,
            },
            target,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }));
    }
    served.networks = networks.into_iter().map(|(_, n)| n).collect();
    served.services = services.into_iter().map(|(_, s)| s).collect();
    Ok(served)
}

fn skip(record: &Record) {
    tracing::error!(
        kind = %record.kind,
        name = %record.name,
        "directory database: a stored object does not parse; it is not served"
    );
}
