//! The connector's Prometheus metrics (prometheus-client, through `underpass_rt::metrics`),
//! served on the admin listener's `/metrics`. Every name starts with `underpass_`.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `underpass_connector_connections` | gauge | `state` (`connecting`, `registered`, `refused`, `failed`, `draining`), `edge` | connections to the edge, by state and configured edge address |
//! | `underpass_connector_registered_connections` | gauge | `protocol` (`quic`, `http2`) | registered connections, by transport |
//! | `underpass_connector_registrations_total` | counter | `outcome` (`accepted`, `refused`, `failed`) | connection attempts, by how they ended |
//! | `underpass_connector_streams_active` | gauge | `kind` (`fetch`, `connect`, `tcp`) | streams being served now |
//! | `underpass_connector_streams_total` | counter | `kind` | streams served (counted once their header is read) |
//! | `underpass_connector_bytes_total` | counter | `kind`, `direction` (`to_origin`, `from_origin`) | payload bytes, counted when a stream ends |
//! | `underpass_connector_stream_errors_total` | counter | `kind`, `proxy_status` | streams refused with a Proxy-Status error |
//! | `underpass_connector_dns_seconds` | histogram | `outcome` (`ok`, `error`) | name resolutions of destinations |
//! | `underpass_connector_dial_seconds` | histogram | `outcome` | TCP connects to destinations (resolution included) |
//! | `underpass_connector_quic_rtt_seconds` | gauge | `connection` (slot index), `edge` (address dialed) | smoothed round-trip time, sampled at scrape |
//! | `underpass_connector_quic_cwnd_bytes` | gauge | `connection`, `edge` | congestion window, sampled at scrape |
//! | `underpass_connector_quic_lost_packets_total` | counter | `connection` | packets QUIC declared lost, over the slot's connections |
//! | `underpass_build_info` | gauge | `version`, `program` | always 1 |
//!
//! Kinds: `fetch` is an HTTP exchange (`fetch()`, upgrades included); `connect` a `connect()`
//! to an address of a VPC Network; `tcp` a TCP stream to a TCP service (a plain TCP binding,
//! or a `CONNECT` through a TCP service's binding: the stream header does not tell them
//! apart).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use underpass_proto::ProxyStatus;
use underpass_rt::metrics::prometheus_client::metrics::counter::Counter;
use underpass_rt::metrics::prometheus_client::metrics::family::Family;
use underpass_rt::metrics::prometheus_client::metrics::gauge::Gauge;
use underpass_rt::metrics::prometheus_client::metrics::histogram::{
    exponential_buckets, Histogram,
};
use underpass_rt::metrics::prometheus_client::registry::Registry;
use underpass_transport::ConnectionStats;

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];
type HistogramFamily = Family<Labels1, Histogram, fn() -> Histogram>;

/// What kind of stream: the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StreamKind {
    /// An HTTP exchange.
    Fetch,
    /// A TCP connect to a dial target (VPC Network).
    Connect,
    /// A TCP connect to a TCP service.
    Tcp,
}

impl StreamKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StreamKind::Fetch => "fetch",
            StreamKind::Connect => "connect",
            StreamKind::Tcp => "tcp",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an attempt to connect and register ended: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registration {
    Accepted,
    Refused,
    Failed,
}

/// Reads the transport statistics of one live connection.
pub(crate) type StatsSource = Box<dyn Fn() -> Option<ConnectionStats> + Send + Sync>;

/// A live connection whose QUIC statistics are sampled at scrape time.
struct LiveConnection {
    index: u8,
    addr: SocketAddr,
    stats: StatsSource,
    /// Lost packets already added to the slot's counter.
    lost_seen: u64,
}

/// The state of one slot for the connections gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotGauge {
    state: &'static str,
    edge: String,
    /// The transport of the registered connection (`quic`, `http2`).
    protocol: &'static str,
}

/// Latency histograms the dialer records into (cheap to clone).
#[derive(Clone)]
pub(crate) struct DialMetrics {
    dns: HistogramFamily,
    dial: HistogramFamily,
}

/// The connector's metric families and the registry they are encoded from.
pub(crate) struct ConnectorMetrics {
    registry: Registry,
    connections: Family<Labels2, Gauge>,
    protocols: Family<Labels1, Gauge>,
    registrations: Family<Labels1, Counter>,
    streams_active: Family<Labels1, Gauge>,
    streams: Family<Labels1, Counter>,
    bytes: Family<Labels2, Counter>,
    errors: Family<Labels2, Counter>,
    rtt: Family<Labels2, Gauge<f64, std::sync::atomic::AtomicU64>>,
    cwnd: Family<Labels2, Gauge>,
    lost: Family<Labels1, Counter>,
    dial: DialMetrics,
    slots: Mutex<Vec<SlotGauge>>,
    /// Connections the edge drained that still finish their streams, per edge address.
    draining: Mutex<HashMap<String, i64>>,
    /// Live connections by the edge's connection id.
    live: Mutex<HashMap<u64, LiveConnection>>,
    /// One scrape at a time: the sampled gauges are cleared and set for each.
    scrape: Mutex<()>,
}

impl fmt::Debug for ConnectorMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorMetrics").finish_non_exhaustive()
    }
}

/// Latency buckets: 0.5 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere while counting; the numbers are still
    // usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnectorMetrics {
    /// Every family, registered under `underpass_`, for `slots` connection slots.
    pub(crate) fn new(slots: usize) -> Self {
        let mut registry = Registry::with_prefix("underpass");
        underpass_rt::metrics::register_build_info(&mut registry, "underpass");
        let connections = Family::<Labels2, Gauge>::default();
        registry.register(
            "connector_connections",
            "Connections to the edge, by state and configured edge address",
            connections.clone(),
        );
        let protocols = Family::<Labels1, Gauge>::default();
        registry.register(
            "connector_registered_connections",
            "Registered connections to the edge, by transport (quic, http2)",
            protocols.clone(),
        );
        let registrations = Family::<Labels1, Counter>::default();
        registry.register(
            "connector_registrations",
            "Attempts to connect and register, by outcome (accepted, refused, failed)",
            registrations.clone(),
        );
        let streams_active = Family::<Labels1, Gauge>::default();
        registry.register(
            "connector_streams_active",
            "Streams being served, by kind (fetch, connect, tcp)",
            streams_active.clone(),
        );
        let streams = Family::<Labels1, Counter>::default();
        registry.register(
            "connector_streams",
            "Streams served, by kind (fetch, connect, tcp)",
            streams.clone(),
        );
        let bytes = Family::<Labels2, Counter>::default();
        registry.register(
            "connector_bytes",
            "Payload bytes of ended streams, by kind and direction (to_origin, from_origin)",
            bytes.clone(),
        );
        let errors = Family::<Labels2, Counter>::default();
        registry.register(
            "connector_stream_errors",
            "Streams refused with a Proxy-Status error, by kind and code",
            errors.clone(),
        );
        let dns: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "connector_dns_seconds",
            "Name resolutions of destinations, by outcome",
            dns.clone(),
        );
        let dial: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "connector_dial_seconds",
            "TCP connects to destinations, resolution included, by outcome",
            dial.clone(),
        );
        let rtt = Family::<Labels2, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "connector_quic_rtt_seconds",
            "Smoothed QUIC round-trip time per connection",
            rtt.clone(),
        );
        let cwnd = Family::<Labels2, Gauge>::default();
        registry.register(
            "connector_quic_cwnd_bytes",
            "QUIC congestion window per connection",
            cwnd.clone(),
        );
        let lost = Family::<Labels1, Counter>::default();
        registry.register(
            "connector_quic_lost_packets",
            "Packets QUIC declared lost, per connection slot",
            lost.clone(),
        );
        let slots = vec![
            SlotGauge {
                state: "connecting",
                edge: String::new(),
                protocol: "",
            };
            slots
        ];
        ConnectorMetrics {
            registry,
            connections,
            protocols,
            registrations,
            streams_active,
            streams,
            bytes,
            errors,
            rtt,
            cwnd,
            lost,
            dial: DialMetrics { dns, dial },
            slots: Mutex::new(slots),
            draining: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            scrape: Mutex::new(()),
        }
    }

    /// The histograms the dialer records into.
    pub(crate) fn dial_metrics(&self) -> DialMetrics {
        self.dial.clone()
    }

    /// Slot `index` is now in `state` towards `edge`.
    /// Slot `index` registered a connection over `protocol`.
    pub(crate) fn slot_protocol(&self, index: u8, protocol: &'static str) {
        if let Some(slot) = lock(&self.slots).get_mut(usize::from(index)) {
            slot.protocol = protocol;
        }
    }

    pub(crate) fn slot_state(&self, index: u8, state: &'static str, edge: &str) {
        if let Some(slot) = lock(&self.slots).get_mut(usize::from(index)) {
            slot.state = state;
            if slot.edge != edge {
                slot.edge = edge.to_owned();
            }
        }
    }

    /// An attempt ended so.
    pub(crate) fn registration(&self, outcome: Registration) {
        let outcome = match outcome {
            Registration::Accepted => "accepted",
            Registration::Refused => "refused",
            Registration::Failed => "failed",
        };
        self.registrations
            .get_or_create(&[("outcome", outcome.to_owned())])
            .inc();
    }

    /// A connection the edge drained keeps finishing its streams (`delta` +1), or is done
    /// (-1).
    pub(crate) fn draining(&self, edge: &str, delta: i64) {
        let mut draining = lock(&self.draining);
        let count = draining.entry(edge.to_owned()).or_default();
        *count += delta;
        if *count <= 0 {
            draining.remove(edge);
        }
    }

    /// Sample the QUIC statistics of connection `connection_id` (slot `index`, dialed at
    /// `addr`) at every scrape until [`ConnectorMetrics::connection_gone`].
    pub(crate) fn connection_live(
        &self,
        connection_id: u64,
        index: u8,
        addr: SocketAddr,
        stats: StatsSource,
    ) {
        let lost_seen = stats().map_or(0, |s| s.lost_packets);
        lock(&self.live).insert(
            connection_id,
            LiveConnection {
                index,
                addr,
                stats,
                lost_seen,
            },
        );
    }

    /// The connection is closed: count its last lost packets and stop sampling it.
    pub(crate) fn connection_gone(&self, connection_id: u64) {
        if let Some(mut live) = lock(&self.live).remove(&connection_id) {
            self.count_lost(&mut live);
        }
    }

    fn count_lost(&self, live: &mut LiveConnection) {
        let Some(lost) = (live.stats)().map(|s| s.lost_packets) else {
            return;
        };
        let delta = lost.saturating_sub(live.lost_seen);
        live.lost_seen = lost.max(live.lost_seen);
        self.lost
            .get_or_create(&[("connection", live.index.to_string())])
            .inc_by(delta);
    }

    /// Streams being served now, of every kind (the sum of `streams_active`).
    pub(crate) fn streams_active(&self) -> u64 {
        [StreamKind::Fetch, StreamKind::Connect, StreamKind::Tcp]
            .into_iter()
            .map(|kind| {
                let labels = [("kind", kind.as_str().to_owned())];
                u64::try_from(self.streams_active.get_or_create(&labels).get()).unwrap_or(0)
            })
            .sum()
    }

    /// A stream of `kind` started (its header was read); the returned guard counts it as
    /// active until dropped.
    pub(crate) fn stream_started(self: &Arc<Self>, kind: StreamKind) -> ActiveStream {
        let labels = [("kind", kind.as_str().to_owned())];
        self.streams.get_or_create(&labels).inc();
        self.streams_active.get_or_create(&labels).inc();
        ActiveStream {
            metrics: self.clone(),
            kind,
        }
    }

    /// A stream of `kind` moved these payload bytes.
    pub(crate) fn stream_bytes(&self, kind: StreamKind, to_origin: u64, from_origin: u64) {
        for (direction, bytes) in [("to_origin", to_origin), ("from_origin", from_origin)] {
            self.bytes
                .get_or_create(&[
                    ("kind", kind.as_str().to_owned()),
                    ("direction", direction.to_owned()),
                ])
                .inc_by(bytes);
        }
    }

    /// A stream of `kind` was refused with `status`.
    pub(crate) fn stream_error(&self, kind: StreamKind, status: ProxyStatus) {
        self.errors
            .get_or_create(&[
                ("kind", kind.as_str().to_owned()),
                ("proxy_status", status.to_string()),
            ])
            .inc();
    }

    /// The Prometheus text exposition, with the connection gauges and QUIC statistics
    /// sampled now. `draining_all`: the connector itself is draining (its registered
    /// connections show as `draining`).
    pub(crate) fn render(&self, draining_all: bool) -> String {
        let _scrape = lock(&self.scrape);
        self.connections.clear();
        self.protocols.clear();
        for protocol in ["quic", "http2"] {
            self.protocols
                .get_or_create(&[("protocol", protocol.to_owned())])
                .set(0);
        }
        for slot in lock(&self.slots).iter() {
            if slot.state == "registered" && !slot.protocol.is_empty() {
                self.protocols
                    .get_or_create(&[("protocol", slot.protocol.to_owned())])
                    .inc();
            }
            let state = if draining_all && slot.state == "registered" {
                "draining"
            } else {
                slot.state
            };
            self.connections
                .get_or_create(&[("state", state.to_owned()), ("edge", slot.edge.clone())])
                .inc();
        }
        for (edge, count) in lock(&self.draining).iter() {
            self.connections
                .get_or_create(&[("state", "draining".to_owned()), ("edge", edge.clone())])
                .inc_by(*count);
        }
        self.rtt.clear();
        self.cwnd.clear();
        for live in lock(&self.live).values_mut() {
            let Some(stats) = (live.stats)() else {
                continue;
            };
            let labels = [
                ("connection", live.index.to_string()),
                ("edge", live.addr.to_string()),
            ];
            self.rtt
                .get_or_create(&labels)
                .set(duration_secs(stats.rtt));
            self.cwnd
                .get_or_create(&labels)
                .set(i64::try_from(stats.cwnd).unwrap_or(i64::MAX));
            self.count_lost(live);
        }
        underpass_rt::metrics::encode(&self.registry)
    }
}

fn duration_secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Counts a stream as active while it lives.
pub(crate) struct ActiveStream {
    metrics: Arc<ConnectorMetrics>,
    kind: StreamKind,
}

impl ActiveStream {
    /// The stream's kind.
    pub(crate) fn kind(&self) -> StreamKind {
        self.kind
    }

    /// The metrics it counts into.
    pub(crate) fn metrics(&self) -> &ConnectorMetrics {
        &self.metrics
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.metrics
            .streams_active
            .get_or_create(&[("kind", self.kind.as_str().to_owned())])
            .dec();
    }
}

impl DialMetrics {
    /// A name resolution took `elapsed`.
    pub(crate) fn dns(&self, elapsed: Duration, ok: bool) {
        self.dns
            .get_or_create(&[("outcome", outcome(ok))])
            .observe(duration_secs(elapsed));
    }

    /// A dial (resolution included) took `elapsed`.
    pub(crate) fn dial(&self, elapsed: Duration, ok: bool) {
        self.dial
            .get_or_create(&[("outcome", outcome(ok))])
            .observe(duration_secs(elapsed));
    }
}

fn outcome(ok: bool) -> String {
    if ok { "ok" } else { "error" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_the_counts_given() {
        let metrics = Arc::new(ConnectorMetrics::new(2));
        metrics.slot_state(0, "registered", "127.0.0.1:7844");
        metrics.slot_protocol(0, "http2");
        metrics.slot_state(1, "failed", "edge.invalid:7844");
        metrics.registration(Registration::Accepted);
        metrics.registration(Registration::Failed);
        {
            let active = metrics.stream_started(StreamKind::Connect);
            active.metrics().stream_bytes(active.kind(), 10, 20);
            let text = metrics.render(false);
            assert!(
                text.contains(r#"underpass_connector_streams_active{kind="connect"} 1"#),
                "{text}"
            );
            assert!(
                text.contains(r#"underpass_connector_registered_connections{protocol="http2"} 1"#)
                    && text.contains(
                        r#"underpass_connector_registered_connections{protocol="quic"} 0"#
                    ),
                "{text}"
            );
        }
        metrics.stream_error(StreamKind::Fetch, ProxyStatus::ConnectionRefused);
        metrics.connection_live(
            7,
            0,
            "127.0.0.1:7844".parse().expect("addr"),
            Box::new(|| {
                Some(ConnectionStats {
                    rtt: Duration::from_millis(2),
                    cwnd: 12_000,
                    lost_packets: 3,
                    ..ConnectionStats::default()
                })
            }),
        );
        let text = metrics.render(false);
        for line in [
            r#"underpass_connector_connections{state="registered",edge="127.0.0.1:7844"} 1"#,
            r#"underpass_connector_connections{state="failed",edge="edge.invalid:7844"} 1"#,
            r#"underpass_connector_registrations_total{outcome="accepted"} 1"#,
            r#"underpass_connector_registrations_total{outcome="failed"} 1"#,
            r#"underpass_connector_streams_total{kind="connect"} 1"#,
            r#"underpass_connector_streams_active{kind="connect"} 0"#,
            r#"underpass_connector_bytes_total{kind="connect",direction="to_origin"} 10"#,
            r#"underpass_connector_bytes_total{kind="connect",direction="from_origin"} 20"#,
            r#"underpass_connector_stream_errors_total{kind="fetch",proxy_status="connection_refused"} 1"#,
            r#"underpass_connector_quic_cwnd_bytes{connection="0",edge="127.0.0.1:7844"} 12000"#,
            r#"underpass_connector_quic_rtt_seconds{connection="0",edge="127.0.0.1:7844"} 0.002"#,
            // Lost packets count from when the connection registered: none since.
            r#"underpass_connector_quic_lost_packets_total{connection="0"} 0"#,
            "underpass_build_info{",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        let text = metrics.render(true);
        assert!(
            text.contains(
                r#"underpass_connector_connections{state="draining",edge="127.0.0.1:7844"} 1"#
            ),
            "{text}"
        );
        metrics.connection_gone(7);
        let text = metrics.render(false);
        assert!(!text.contains("quic_cwnd_bytes{"), "{text}");
    }
}
