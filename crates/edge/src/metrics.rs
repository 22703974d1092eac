//! The edge's Prometheus metrics (prometheus-client, through `underpass_rt::metrics`), served
//! on the admin listener's `/metrics`. Every name starts with `underpass_`.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `underpass_edge_connectors` | gauge | `tunnel` | connector instances with at least one registered connection |
//! | `underpass_edge_connections` | gauge | `tunnel`, `state` (`live`, `draining`) | registered connector connections |
//! | `underpass_edge_open_streams` | gauge | `tunnel` | exchanges open on the tunnel's connections |
//! | `underpass_edge_binding_requests_total` | counter | `binding`, `status_class` (`2xx` … `5xx`), `proxy_status` (RFC 9209 code or `none`) | requests answered by a binding |
//! | `underpass_edge_binding_ttfb_seconds` | histogram | `binding` | from the request (or accepted TCP connection) to its answer's head |
//! | `underpass_build_info` | gauge | `version`, `program` | always 1 |
//!
//! The tunnel gauges are computed at scrape time from the registry's snapshot, so they are
//! never stale. A request counts once, when its response head is ready: a `fetch()` by its
//! status (the origin's own, or the edge's error with its `Proxy-Status`), a `CONNECT` by its
//! answer (`200`, or the error), a plain TCP binding connection as `2xx`/`none` once its stream
//! opened or by the status its refusal maps to.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, Response};
use underpass_proto::{ConnectorId, ProxyStatus, TunnelId};
use underpass_rt::metrics::prometheus_client::metrics::counter::Counter;
use underpass_rt::metrics::prometheus_client::metrics::family::Family;
use underpass_rt::metrics::prometheus_client::metrics::gauge::Gauge;
use underpass_rt::metrics::prometheus_client::metrics::histogram::{
    exponential_buckets, Histogram,
};
use underpass_rt::metrics::prometheus_client::registry::Registry;

use crate::registry::ConnectionInfo;
use crate::tunnels::TunnelStore;

/// The proxy name of the edge's own `Proxy-Status` entries.
const PROXY_NAME: &str = "underpass";

type TunnelLabels = [(&'static str, String); 1];
type StateLabels = [(&'static str, String); 2];
type RequestLabels = [(&'static str, String); 3];
type BindingLabels = [(&'static str, String); 1];
type HistogramFamily = Family<BindingLabels, Histogram, fn() -> Histogram>;

/// The edge's metric families and the registry they are encoded from.
pub(crate) struct EdgeMetrics {
    registry: Registry,
    connectors: Family<TunnelLabels, Gauge>,
    connections: Family<StateLabels, Gauge>,
    open_streams: Family<TunnelLabels, Gauge>,
    requests: Family<RequestLabels, Counter>,
    ttfb: HistogramFamily,
    /// One scrape at a time: the tunnel gauges are cleared and set for each.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for EdgeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeMetrics").finish_non_exhaustive()
    }
}

/// Time-to-first-byte buckets: 1 ms to about 33 s, doubling.
fn ttfb_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl EdgeMetrics {
    /// Every family, registered under `underpass_`.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("underpass");
        underpass_rt::metrics::register_build_info(&mut registry, "underpass-edge");
        let connectors = Family::<TunnelLabels, Gauge>::default();
        registry.register(
            "edge_connectors",
            "Connector instances with at least one registered connection, per tunnel",
            connectors.clone(),
        );
        let connections = Family::<StateLabels, Gauge>::default();
        registry.register(
            "edge_connections",
            "Registered connector connections, per tunnel and state (live, draining)",
            connections.clone(),
        );
        let open_streams = Family::<TunnelLabels, Gauge>::default();
        registry.register(
            "edge_open_streams",
            "Exchanges open on the tunnel's connector connections",
            open_streams.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "edge_binding_requests",
            "Requests answered by a binding, by HTTP status class and Proxy-Status code",
            requests.clone(),
        );
        let ttfb: HistogramFamily = Family::new_with_constructor(ttfb_histogram);
        registry.register(
            "edge_binding_ttfb_seconds",
            "Time from a binding request to its answer's head",
            ttfb.clone(),
        );
        EdgeMetrics {
            registry,
            connectors,
            connections,
            open_streams,
            requests,
            ttfb,
            scrape: Mutex::new(()),
        }
    }

    /// Await `response` (a binding request's handler) and count it: its status class, the
    /// edge's `Proxy-Status` code if it carries one, and how long the head took.
    pub(crate) async fn observe<B>(
        &self,
        binding: &str,
        response: impl Future<Output = Response<B>>,
    ) -> Response<B> {
        let started = Instant::now();
        let response = response.await;
        let proxy_status = proxy_status_code(response.headers());
        self.record(
            binding,
            response.status().as_u16(),
            proxy_status.as_deref().unwrap_or("none"),
            started.elapsed(),
        );
        response
    }

    /// Count a plain TCP binding's connection: `Ok` once its stream opened, else the
    /// Proxy-Status its refusal carries (and the HTTP status that code maps to).
    pub(crate) fn tcp_outcome(
        &self,
        binding: &str,
        started: Instant,
        outcome: Result<(), ProxyStatus>,
    ) {
        match outcome {
            Ok(()) => self.record(binding, 200, "none", started.elapsed()),
            Err(status) => self.record(
                binding,
                status.http_status(),
                status.token(),
                started.elapsed(),
            ),
        }
    }

    fn record(&self, binding: &str, status: u16, proxy_status: &str, ttfb: Duration) {
        let labels = [
            ("binding", binding.to_owned()),
            ("status_class", format!("{}xx", status / 100)),
            ("proxy_status", proxy_status.to_owned()),
        ];
        self.requests.get_or_create(&labels).inc();
        self.ttfb
            .get_or_create(&[("binding", binding.to_owned())])
            .observe(ttfb.as_secs_f64());
    }

    /// The Prometheus text of every metric, the tunnel gauges computed from `snapshot`.
    pub(crate) fn render(&self, snapshot: &[ConnectionInfo], tunnels: &TunnelStore) -> String {
        // Every critical section leaves nothing half-done, so a poisoned lock is usable.
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.connectors.clear();
        self.connections.clear();
        self.open_streams.clear();
        let mut per_tunnel: HashMap<TunnelId, TunnelCounts> = HashMap::new();
        for info in snapshot {
            let counts = per_tunnel.entry(info.registration.tunnel_id).or_default();
            counts.connectors.insert(info.registration.connector_id);
            if info.draining {
                counts.draining += 1;
            } else {
                counts.live += 1;
            }
            counts.streams += info.active_streams;
        }
        // Known tunnels with no connection show zeros, so a dashboard sees them go down.
        for tunnel in tunnels.list() {
            per_tunnel.entry(tunnel.id).or_default();
        }
        for (id, counts) in &per_tunnel {
            let name = tunnels
                .by_id(id)
                .map(|t| t.name)
                .unwrap_or_else(|| hex::encode(id.0));
            let tunnel = [("tunnel", name.clone())];
            self.connectors
                .get_or_create(&tunnel)
                .set(gauge(counts.connectors.len()));
            for (state, value) in [("live", counts.live), ("draining", counts.draining)] {
                self.connections
                    .get_or_create(&[("tunnel", name.clone()), ("state", state.to_owned())])
                    .set(gauge(value));
            }
            self.open_streams
                .get_or_create(&tunnel)
                .set(gauge(counts.streams));
        }
        underpass_rt::metrics::encode(&self.registry)
    }
}

#[derive(Default)]
struct TunnelCounts {
    connectors: HashSet<ConnectorId>,
    live: usize,
    draining: usize,
    streams: usize,
}

fn gauge(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The error code of the edge's own `Proxy-Status` entry (`underpass; error=<code>; ...`), if
/// the response has one. An origin's entries (other proxy names) are not the edge's outcome.
pub(crate) fn proxy_status_code(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all("proxy-status")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|entry| {
            let mut params = entry.split(';').map(str::trim);
            if params.next()? != PROXY_NAME {
                return None;
            }
            params.find_map(|param| param.strip_prefix("error=").map(str::to_owned))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_status_of_the_edge_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(proxy_status_code(&headers), None);
        headers.append(
            "proxy-status",
            "origin-cache; error=dns_error".parse().unwrap(), // literal
        );
        assert_eq!(proxy_status_code(&headers), None);
        headers.append(
            "proxy-status",
            r#"underpass; error=connection_refused; details="a, b""#
                .parse()
                .unwrap(), // literal
        );
        assert_eq!(
            proxy_status_code(&headers).as_deref(),
            Some("connection_refused")
        );
    }

    #[tokio::test]
    async fn requests_are_counted_by_class_and_code() {
        let metrics = EdgeMetrics::new();
        let ok = || async { Response::new(()) };
        for _ in 0..3 {
            metrics.observe("API", ok()).await;
        }
        metrics
            .observe("API", async {
                let mut response = Response::new(());
                *response.status_mut() = http::StatusCode::BAD_GATEWAY;
                response.headers_mut().insert(
                    "proxy-status",
                    "underpass; error=dns_error".parse().unwrap(), // literal
                );
                response
            })
            .await;
        metrics.tcp_outcome("TCP", Instant::now(), Err(ProxyStatus::ConnectionRefused));
        let dir = tempfile::tempdir().unwrap(); // scratch
        let tunnels = TunnelStore::open(dir.path()).unwrap(); // empty dir
        tunnels.create("prod").unwrap(); // new name
        let text = metrics.render(&[], &tunnels);
        for line in [
            r#"underpass_edge_binding_requests_total{binding="API",status_class="2xx",proxy_status="none"} 3"#,
            r#"underpass_edge_binding_requests_total{binding="API",status_class="5xx",proxy_status="dns_error"} 1"#,
            r#"underpass_edge_binding_requests_total{binding="TCP",status_class="5xx",proxy_status="connection_refused"} 1"#,
            r#"underpass_edge_binding_ttfb_seconds_count{binding="API"} 4"#,
            r#"underpass_edge_connectors{tunnel="prod"} 0"#,
            r#"underpass_edge_connections{tunnel="prod",state="live"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.contains("underpass_build_info{"), "{text}");
    }
}
