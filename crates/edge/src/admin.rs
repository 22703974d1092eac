//! The edge's admin listener (`[admin] listen`, served by `underpass_rt::admin`): `/healthz`,
//! `/ready`, `/metrics` and `GET /v1/tunnels/{name-or-id}`, and the client side of the last
//! one for `underpass-edge tunnel info`.
//!
//! The listener is not one of the edge's tracked tasks: it keeps answering while the edge
//! drains (so `/ready` can say 503) and stops when the [`crate::EdgeHandle`] is dropped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ACCEPT, HOST};
use http::{Method, Request};
use http_body_util::Full;
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use underpass_rt::admin::{AdminHandler, ApiFuture, ApiRequest};
use underpass_rt::Shutdown;
use underpass_transport::AnyConnection;

use crate::api::handlers::{Api, ACCOUNTS_PREFIX};
use crate::api_client::{self, Target};
use crate::config::EdgeConfig;
use crate::error::EdgeError;
use crate::metrics::EdgeMetrics;
use crate::registry::{ConnectionInfo, Registry};
use crate::tunnels::TunnelStore;

/// The OpenAPI description of the directory API.
const OPENAPI_PATH: &str = "/openapi.json";
/// The path prefix of the tunnel status endpoint.
const TUNNELS_PATH: &str = "/v1/tunnels/";
/// How long `tunnel info` waits for the edge's admin listener's answer, connecting included.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most `tunnel info` reads of an answer.
const MAX_ANSWER: usize = 16 << 20;

/// What the admin endpoints read.
pub(crate) struct EdgeAdmin {
    /// The directory API (`/accounts/...`).
    pub api: Arc<Api>,
    /// Live connector connections.
    pub registry: Arc<Registry<AnyConnection>>,
    /// Tunnels, for names.
    pub tunnels: Arc<TunnelStore>,
    /// The metric families.
    pub metrics: Arc<EdgeMetrics>,
    /// The edge's shutdown: draining once it is stopping.
    pub shutdown: Shutdown,
    /// Listeners bound now: the QUIC listener and every binding's.
    pub listeners: Arc<AtomicUsize>,
}

impl AdminHandler for EdgeAdmin {
    fn ready(&self) -> (bool, serde_json::Value) {
        let draining = self.shutdown.is_stopping();
        let listeners = self.listeners.load(Ordering::Relaxed);
        // Every listener is bound before the edge starts serving (a bind failure stops the
        // start), so the edge is ready until it drains.
        let ready = !draining && listeners > 0;
        let body = serde_json::json!({
            "ready": ready,
            "listeners": listeners,
            "draining": draining,
        });
        (ready, body)
    }

    fn metrics(&self) -> String {
        self.metrics
            .render(&self.registry.snapshot(), &self.tunnels)
    }

    fn is_api(&self, path: &str) -> bool {
        path.starts_with(ACCOUNTS_PREFIX)
    }

    fn api(&self, request: ApiRequest) -> ApiFuture<'_> {
        Box::pin(self.api.handle(request))
    }

    fn route(&self, method: &Method, path: &str) -> Option<(u16, serde_json::Value)> {
        if path == OPENAPI_PATH {
            if method != Method::GET {
                return Some((405, serde_json::json!({"error": "only GET is allowed"})));
            }
            return Some(
                match serde_json::to_value(crate::api::openapi::document()) {
                    Ok(document) => (200, document),
                    Err(error) => (500, serde_json::json!({ "error": error.to_string() })),
                },
            );
        }
        let reference = path.strip_prefix(TUNNELS_PATH)?;
        if method != Method::GET {
            return Some((405, serde_json::json!({"error": "only GET is allowed"})));
        }
        let Some(tunnel) = self.tunnels.resolve(reference) else {
            let error = format!("no tunnel named {reference:?} on this edge");
            return Some((404, serde_json::json!({ "error": error })));
        };
        let snapshot = self.registry.snapshot();
        let info = tunnel_info(&tunnel.id_hex(), &tunnel.name, tunnel.id, &snapshot);
        match serde_json::to_value(info) {
            Ok(value) => Some((200, value)),
            Err(error) => Some((500, serde_json::json!({ "error": error.to_string() }))),
        }
    }
}

/// `GET /v1/tunnels/{name-or-id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelInfo {
    /// The tunnel id (32 hex digits).
    pub id: String,
    /// The tunnel name.
    pub name: String,
    /// Its connected connectors, oldest connection first.
    pub connectors: Vec<ConnectorInfo>,
}

/// One connector instance of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorInfo {
    /// The connector's instance id (32 hex digits).
    pub connector_id: String,
    /// Its software version.
    pub version: String,
    /// Its address as the edge sees it (of its first connection).
    pub remote: String,
    /// Its registered connections.
    pub connections: Vec<ConnectionView>,
    /// The routes it announced (of its newest connection).
    pub routes: Vec<RouteView>,
    /// Exchanges open on all its connections.
    pub open_streams: usize,
}

/// One registered connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionView {
    /// The edge's id for it.
    pub connection_id: u64,
    /// Which of the connector's parallel connections it is.
    pub index: u8,
    /// Its remote address.
    pub remote: String,
    /// The transport carrying it (`quic`, `http2`).
    #[serde(default)]
    pub protocol: String,
    /// When it registered (RFC 3339, UTC).
    pub connected_since: String,
    /// Whether it is draining (no new streams).
    pub draining: bool,
    /// Exchanges open on it.
    pub open_streams: usize,
}

/// An announced route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    /// CIDR or hostname pattern.
    pub destination: String,
    /// Port ranges (`"80"`, `"8000-8999"`); empty: every port.
    pub ports: Vec<String>,
}

/// The status of tunnel `id` from the registry's `snapshot`.
fn tunnel_info(
    id_hex: &str,
    name: &str,
    id: underpass_proto::TunnelId,
    snapshot: &[ConnectionInfo],
) -> TunnelInfo {
    // Connection ids grow, so the snapshot (sorted by them) lists older connections first.
    let mut connectors: BTreeMap<(u64, [u8; 16]), ConnectorInfo> = BTreeMap::new();
    let mut first_seen: BTreeMap<[u8; 16], u64> = BTreeMap::new();
    for info in snapshot
        .iter()
        .filter(|info| info.registration.tunnel_id == id)
    {
        let registration = &info.registration;
        let connector = registration.connector_id.0;
        let first = *first_seen.entry(connector).or_insert(info.connection_id);
        let entry = connectors
            .entry((first, connector))
            .or_insert_with(|| ConnectorInfo {
                connector_id: hex::encode(connector),
                version: registration.version.clone(),
                remote: registration.remote.to_string(),
                connections: Vec::new(),
                routes: Vec::new(),
                open_streams: 0,
            });
        entry.version.clone_from(&registration.version);
        entry.routes = registration
            .routes
            .iter()
            .map(|route| RouteView {
                destination: route.destination.clone(),
                ports: route
                    .ports
                    .iter()
                    .map(|&(low, high)| {
                        if low == high {
                            low.to_string()
                        } else {
                            format!("{low}-{high}")
                        }
                    })
                    .collect(),
            })
            .collect();
        entry.open_streams += info.active_streams;
        let since = info
            .registered_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        entry.connections.push(ConnectionView {
            connection_id: info.connection_id,
            index: registration.connection_index,
            remote: registration.remote.to_string(),
            protocol: registration.protocol.as_str().to_owned(),
            connected_since: rfc3339(since),
            draining: info.draining,
            open_streams: info.active_streams,
        });
    }
    TunnelInfo {
        id: id_hex.to_owned(),
        name: name.to_owned(),
        connectors: connectors.into_values().collect(),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: u64) -> String {
    crate::model::utc_date(secs).replacen(' ', "T", 1) + "Z"
}

/// Ask the running edge of `config` (its `[admin] listen`) for the status of `tunnel`.
pub(crate) fn fetch_tunnel_info(
    config: &EdgeConfig,
    tunnel: &str,
) -> Result<TunnelInfo, EdgeError> {
    let Some(listen) = config.admin.listen else {
        return Err(EdgeError::NoAdmin);
    };
    if tunnel.is_empty()
        || !tunnel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(EdgeError::BadTunnelReference(tunnel.to_owned()));
    }
    let addr = dialable(listen);
    let unreachable = |detail: String| {
        EdgeError::Admin(format!(
            "cannot ask the edge's admin listener at {addr}: {detail}; is `underpass-edge serve` \
         running with this config?"
        ))
    };
    // With `tls_cert`, the listener is trusted by its certificate file, byte for byte: this
    // command runs on the edge's host and reads the same config.
    let tls = match &config.admin.tls_cert {
        None => None,
        Some(path) => {
            let bad = |detail: String| {
                EdgeError::Admin(format!("admin.tls_cert {}: {detail}", path.display()))
            };
            let pem = std::fs::read(path).map_err(|error| bad(error.to_string()))?;
            let client = underpass_transport::tls::exact_leaf_client_config(&pem, &[b"http/1.1"])
                .map_err(|error| bad(error.to_string()))?;
            Some((Arc::new(client), ServerName::IpAddress(addr.ip().into())))
        }
    };
    let target = Target {
        host: addr.ip().to_string(),
        port: addr.port(),
        tls,
    };
    let request = Request::get(format!("{TUNNELS_PATH}{tunnel}"))
        .header(HOST, addr.to_string())
        .header(ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|error| EdgeError::Admin(format!("cannot make the request: {error}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| unreachable(format!("no async runtime: {error}")))?;
    let (status, body) = runtime
        .block_on(async {
            tokio::time::timeout(
                CLIENT_TIMEOUT,
                api_client::exchange(&target, request, MAX_ANSWER),
            )
            .await
        })
        .map_err(|_| unreachable(format!("no answer within {} s", CLIENT_TIMEOUT.as_secs())))?
        .map_err(unreachable)?;
    let status = status.as_u16();
    match status {
        200 => serde_json::from_slice(&body).map_err(|error| {
            EdgeError::Admin(format!(
                "the edge's answer is not tunnel status JSON: {error}"
            ))
        }),
        404 => Err(crate::state::StateError::UnknownTunnel(tunnel.to_owned()).into()),
        other => Err(EdgeError::Admin(format!(
            "the edge's admin listener answered {other}: {}",
            String::from_utf8_lossy(&body).trim()
        ))),
    }
}

/// An admin address to connect to: a wildcard listen address means this host's loopback.
fn dialable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// A readable table of a tunnel's connectors, for `tunnel info`.
pub(crate) fn render_tunnel_info(info: &TunnelInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tunnel {} (id {}): {} connector(s)",
        info.name,
        info.id,
        info.connectors.len()
    );
    for connector in &info.connectors {
        let routes = if connector.routes.is_empty() {
            "(none)".to_owned()
        } else {
            connector
                .routes
                .iter()
                .map(|route| match route.ports.as_slice() {
                    [] => route.destination.clone(),
                    ports => format!("{}:{}", route.destination, ports.join(",")),
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "\nconnector {}  version {}  remote {}  open streams {}\n  routes: {routes}",
            connector.connector_id, connector.version, connector.remote, connector.open_streams
        );
        let _ = writeln!(
            out,
            "  {:<5}  {:<10}  {:<21}  {:<8}  {:<21}  {:<8}  STREAMS",
            "INDEX", "CONNECTION", "REMOTE", "PROTOCOL", "CONNECTED SINCE", "STATE"
        );
        for conn in &connector.connections {
            let _ = writeln!(
                out,
                "  {:<5}  {:<10}  {:<21}  {:<8}  {:<21}  {:<8}  {}",
                conn.index,
                conn.connection_id,
                conn.remote,
                conn.protocol,
                conn.connected_since,
                if conn.draining { "draining" } else { "live" },
                conn.open_streams
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use underpass_proto::{AnnouncedRoute, ConnectorId, TunnelId};

    use super::*;
    use crate::registry::NewConnection;

    fn connection(id: u64, connector: u8, index: u8, streams: usize) -> ConnectionInfo {
        ConnectionInfo {
            connection_id: id,
            registration: NewConnection {
                tunnel_id: TunnelId([1; 16]),
                connector_id: ConnectorId([connector; 16]),
                connection_index: index,
                remote: "127.0.0.1:5000".parse().unwrap(), // literal
                protocol: underpass_transport::Protocol::Quic,
                version: "1.2.3".into(),
                routes: vec![AnnouncedRoute {
                    destination: "10.0.0.0/8".into(),
                    ports: vec![(80, 80), (8000, 8999)],
                }],
            },
            registered_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            draining: index == 1,
            active_streams: streams,
        }
    }

    #[test]
    fn groups_connections_by_connector() {
        let mut other = connection(9, 7, 0, 0);
        other.registration.tunnel_id = TunnelId([2; 16]);
        let snapshot = [
            connection(1, 5, 0, 2),
            connection(2, 6, 0, 0),
            connection(3, 5, 1, 1),
            other,
        ];
        let info = tunnel_info("01", "prod", TunnelId([1; 16]), &snapshot);
        assert_eq!(info.connectors.len(), 2);
        let first = &info.connectors[0];
        assert_eq!(first.connector_id, hex::encode([5u8; 16]));
        assert_eq!(first.open_streams, 3);
        assert_eq!(
            first
                .connections
                .iter()
                .map(|c| (c.index, c.draining))
                .collect::<Vec<_>>(),
            [(0, false), (1, true)]
        );
        assert_eq!(first.connections[0].connected_since, "2023-11-14T22:13:20Z");
        assert_eq!(first.routes[0].ports, ["80", "8000-8999"]);
        let table = render_tunnel_info(&info);
        assert!(table.contains("routes: 10.0.0.0/8:80,8000-8999"), "{table}");
        assert!(table.contains("draining"), "{table}");
    }
}
