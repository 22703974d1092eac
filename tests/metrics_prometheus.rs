//! A real Prometheus (Debian's `prometheus`; `scripts/test` installs it) scrapes the `/metrics`
//! of the real connector and edge processes every second. The test sends known traffic —
//! `fetch()`es that succeed, `CONNECT`s the connector refuses with `connection_refused`,
//! `connect()` pipes of a known size — then asks Prometheus (`/api/v1/query`) and checks that
//! the numbers it stored are the traffic's. Prometheus's `promtool` must accept both
//! expositions.
//!
//! Scrapes are periodic, so each check re-queries until the value matches (a scrape after the
//! traffic has happened), up to a limit that only guards a hang.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use underpass_e2e::admin;
use underpass_e2e::connector_process::{ConnectorProcess, ConnectorSpec};
use underpass_e2e::edge_home::{EdgeHome, EdgeRun};
use underpass_e2e::edge_process::TUNNEL;
use underpass_e2e::load::{connect_exchange, fetch_exchange, Outcome};
use underpass_e2e::pattern_origin::PatternOrigin;
use underpass_e2e::prometheus::{promtool_check_openmetrics, Prometheus};
use underpass_e2e::{repo_root, EchoServer};

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(30);

/// `fetch()`es that succeed, each with a body of `FETCH_LEN` bytes.
const FETCHES: u64 = 5;
const FETCH_LEN: u64 = 10_000;
/// `CONNECT`s to a closed port: the connector answers `connection_refused`.
const REFUSED: u64 = 3;
/// `connect()` pipes, each echoing `CONNECT_LEN` bytes.
const CONNECTS: u64 = 4;
const CONNECT_LEN: u64 = 100_000;
/// Connector connections to the edge (`connections`).
const CONNECTIONS: u64 = 2;

// The connector's metric names (crates/connector, issue 11 §5).
const C_STREAMS: &str = "underpass_connector_streams_total";
const C_ACTIVE: &str = "underpass_connector_streams_active";
const C_BYTES: &str = "underpass_connector_bytes_total";
const C_ERRORS: &str = "underpass_connector_stream_errors_total";
const C_REGISTRATIONS: &str = "underpass_connector_registrations_total";
const C_CONNECTIONS: &str = "underpass_connector_connections";
const C_DIAL: &str = "underpass_connector_dial_seconds";
const C_RTT: &str = "underpass_connector_quic_rtt_seconds";
const C_CWND: &str = "underpass_connector_quic_cwnd_bytes";
const C_LOST: &str = "underpass_connector_quic_lost_packets_total";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

/// Checks that `query`, summed, reaches exactly `expected` in Prometheus.
struct Checker<'a> {
    prometheus: &'a Prometheus,
    connector: &'a ConnectorProcess,
    edge_admin: SocketAddr,
    failures: Vec<String>,
}

impl Checker<'_> {
    async fn equals(&mut self, query: &str, expected: f64) {
        let result = self
            .prometheus
            .wait_sum(query, LIMIT, |v| (v - expected).abs() < 1e-9)
            .await;
        match result {
            Ok(value) => println!("OK {query} = {value}"),
            Err(last) => self.failures.push(format!(
                "{query}: expected {expected}, Prometheus says {last}"
            )),
        }
    }

    async fn at_least(&mut self, query: &str, min: f64) {
        match self.prometheus.wait_sum(query, LIMIT, |v| v >= min).await {
            Ok(value) => println!("OK {query} = {value} (>= {min})"),
            Err(last) => self.failures.push(format!(
                "{query}: expected at least {min}, Prometheus says {last}"
            )),
        }
    }

    /// A series of `name` exists (for gauges whose value depends on the network).
    async fn present(&mut self, name: &str) {
        let query = format!("count({name})");
        match self.prometheus.wait_sum(&query, LIMIT, |v| v >= 1.0).await {
            Ok(value) => println!("OK {query} = {value}"),
            Err(_) => self.failures.push(format!("no series named {name}")),
        }
    }

    async fn finish(self) {
        if self.failures.is_empty() {
            return;
        }
        let names = self.prometheus.metric_names().await.unwrap_or_default();
        let connector = admin::metrics(self.connector.admin_addr())
            .await
            .unwrap_or_else(|e| format!("{e:#}"));
        let edge = admin::metrics(self.edge_admin)
            .await
            .unwrap_or_else(|e| format!("{e:#}"));
        panic!(
            "{} checks failed:\n  {}\nmetric names Prometheus stored: {names:?}\n--- connector \
             /metrics ---\n{connector}\n--- edge /metrics ---\n{edge}",
            self.failures.len(),
            self.failures.join("\n  ")
        );
    }
}

/// The origins, the edge (with its admin listener) and a ready connector.
struct Setup {
    echo: EchoServer,
    origin: PatternOrigin,
    /// A loopback address nothing listens on.
    closed: SocketAddr,
    // Kept for its folder.
    _home: EdgeHome,
    edge: EdgeRun,
    connector: ConnectorProcess,
}

async fn setup(subnet: &str) -> Setup {
    let echo = EchoServer::start(ip(&format!("{subnet}.1")));
    let origin = PatternOrigin::start(ip(&format!("{subnet}.2")));
    let closed: SocketAddr = {
        let listener =
            std::net::TcpListener::bind(format!("{subnet}.3:0")).expect("bind a port to close");
        listener.local_addr().expect("local address")
        // Dropped here: nothing listens on that port any more.
    };
    let home = EdgeHome::create_with_admin(&format!(
        "[[network]]\nname = \"net\"\ntunnel = \"{TUNNEL}\"\n\n\
         [[binding]]\nname = \"net\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"net\"\n"
    ));
    let edge = home.start().await;
    let mut connector = ConnectorSpec::new("metrics", &home.token())
        .route(&format!("{subnet}.0/24"), None)
        .connections(u32::try_from(CONNECTIONS).expect("small"))
        .start()
        .await;
    connector
        .wait_ready(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", connector.output()));
    Setup {
        echo,
        origin,
        closed,
        _home: home,
        edge,
        connector,
    }
}

/// `fetches` `fetch()`es, `refused` refused `CONNECT`s, `connects` `connect()` pipes, in that
/// order, each checked.
async fn traffic(setup: &Setup, fetches: u64, refused: u64, connects: u64) {
    let binding = setup.edge.binding_addr("net");
    let stall = Duration::from_secs(10);
    for _ in 0..fetches {
        let (outcome, _) = fetch_exchange(
            binding,
            setup.origin.addr(),
            FETCH_LEN,
            4096,
            Duration::ZERO,
            stall,
        )
        .await;
        assert_eq!(outcome, Outcome::Ok, "fetch()\n{}", setup.connector.log());
    }
    for _ in 0..refused {
        let (outcome, _) =
            connect_exchange(binding, setup.closed, 1, 1, Duration::ZERO, stall).await;
        match &outcome {
            Outcome::Status { code, proxy_status } if *code >= 500 => assert_eq!(
                proxy_status.as_deref(),
                Some("connection_refused"),
                "{outcome:?}"
            ),
            other => panic!("CONNECT to a closed port: {other:?}"),
        }
    }
    for _ in 0..connects {
        let (outcome, _) = connect_exchange(
            binding,
            setup.echo.addr(),
            CONNECT_LEN,
            16 * 1024,
            Duration::ZERO,
            stall,
        )
        .await;
        assert_eq!(outcome, Outcome::Ok, "connect()\n{}", setup.connector.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_what_the_traffic_did() {
    let setup = setup("127.24.4").await;
    let connector = &setup.connector;
    let edge_admin = setup
        .edge
        .admin_addr()
        .expect("the edge has an admin listener");
    let prometheus = Prometheus::start(
        &[("connector", connector.admin_addr()), ("edge", edge_admin)],
        Duration::from_secs(1),
    )
    .await;
    prometheus
        .wait_targets_up(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", prometheus.output()));

    traffic(&setup, FETCHES, REFUSED, CONNECTS).await;

    let mut check = Checker {
        prometheus: &prometheus,
        connector,
        edge_admin,
        failures: Vec::new(),
    };
    let ok = (FETCHES + CONNECTS) as f64;
    let all = (FETCHES + CONNECTS + REFUSED) as f64;

    // The edge.
    check
        .equals(
            r#"underpass_edge_binding_requests_total{job="edge",binding="net",status_class="2xx",proxy_status="none"}"#,
            ok,
        )
        .await;
    check
        .equals(
            r#"underpass_edge_binding_requests_total{job="edge",binding="net",status_class="5xx",proxy_status="connection_refused"}"#,
            REFUSED as f64,
        )
        .await;
    check
        .equals(r#"underpass_edge_binding_requests_total{job="edge"}"#, all)
        .await;
    check
        .equals(
            r#"underpass_edge_binding_ttfb_seconds_count{job="edge",binding="net"}"#,
            all,
        )
        .await;
    check
        .equals(
            &format!(r#"underpass_edge_connectors{{job="edge",tunnel="{TUNNEL}"}}"#),
            1.0,
        )
        .await;
    check
        .equals(
            &format!(r#"underpass_edge_connections{{job="edge",tunnel="{TUNNEL}",state="live"}}"#),
            CONNECTIONS as f64,
        )
        .await;
    check
        .equals(
            &format!(r#"underpass_edge_open_streams{{job="edge",tunnel="{TUNNEL}"}}"#),
            0.0,
        )
        .await;
    check
        .equals(r#"underpass_build_info{job="edge"}"#, 1.0)
        .await;

    // The connector.
    check
        .equals(
            &format!(r#"{C_STREAMS}{{job="connector",kind="fetch"}}"#),
            FETCHES as f64,
        )
        .await;
    check
        .equals(
            &format!(r#"{C_STREAMS}{{job="connector",kind="connect"}}"#),
            (CONNECTS + REFUSED) as f64,
        )
        .await;
    check
        .equals(&format!(r#"{C_ACTIVE}{{job="connector"}}"#), 0.0)
        .await;
    check
        .equals(
            &format!(r#"{C_ERRORS}{{job="connector",proxy_status="connection_refused"}}"#),
            REFUSED as f64,
        )
        .await;
    check
        .equals(&format!(r#"{C_ERRORS}{{job="connector"}}"#), REFUSED as f64)
        .await;
    // Bytes of the connect() pipes, each direction (fetch() bodies come on top of `rx`).
    check
        .equals(
            &format!(r#"{C_BYTES}{{job="connector",kind="connect",direction="to_origin"}}"#),
            (CONNECTS * CONNECT_LEN) as f64,
        )
        .await;
    check
        .equals(
            &format!(r#"{C_BYTES}{{job="connector",kind="connect",direction="from_origin"}}"#),
            (CONNECTS * CONNECT_LEN) as f64,
        )
        .await;
    check
        .at_least(
            &format!(r#"{C_BYTES}{{job="connector",kind="fetch",direction="from_origin"}}"#),
            (FETCHES * FETCH_LEN) as f64,
        )
        .await;
    check
        .equals(
            &format!(r#"{C_REGISTRATIONS}{{job="connector",outcome="accepted"}}"#),
            CONNECTIONS as f64,
        )
        .await;
    check
        .equals(
            &format!(r#"{C_CONNECTIONS}{{job="connector",state="registered"}}"#),
            CONNECTIONS as f64,
        )
        .await;
    // Every CONNECT and every fetch() on a new origin connection dialed: at least the
    // successful connect()s and one fetch(), refused dials included or not.
    check
        .at_least(
            &format!(r#"{C_DIAL}_count{{job="connector"}}"#),
            (CONNECTS + 1) as f64,
        )
        .await;
    check.present(C_RTT).await;
    check.present(C_CWND).await;
    check.present(C_LOST).await;
    check
        .equals(r#"underpass_build_info{job="connector"}"#, 1.0)
        .await;
    check.finish().await;
}

/// Prometheus's own tools accept both expositions once every kind of traffic has been
/// counted: `promtool check metrics` (parse and lint) and its strict OpenMetrics parser (see
/// `promtool_check_openmetrics`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_both_expositions() {
    let setup = setup("127.24.7").await;
    traffic(&setup, 1, 1, 1).await;
    let connector = &setup.connector;
    let edge_admin = setup
        .edge
        .admin_addr()
        .expect("the edge has an admin listener");
    let mut families = std::collections::BTreeSet::new();
    for (what, addr) in [("connector", connector.admin_addr()), ("edge", edge_admin)] {
        let text = admin::metrics(addr).await.expect("GET /metrics");
        match promtool_check_openmetrics(&text) {
            Ok(report) => println!("{what}: {report}"),
            Err(e) => {
                panic!("promtool rejects the {what}'s /metrics: {e:#}\n--- /metrics ---\n{text}")
            }
        }
        families.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .filter_map(|l| l.split_whitespace().next())
                .map(family),
        );
    }
    // Every series the Grafana dashboard queries is one the programs expose.
    let dashboard = std::fs::read_to_string(repo_root().join("deploy/grafana/underpass.json"))
        .expect("read deploy/grafana/underpass.json");
    let mut queried = std::collections::BTreeSet::new();
    for (at, _) in dashboard.match_indices("underpass_") {
        let name: String = dashboard[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        queried.insert(family(&name));
    }
    assert!(queried.len() >= 10, "the dashboard queries {queried:?}");
    let unknown: Vec<_> = queried.difference(&families).collect();
    assert!(
        unknown.is_empty(),
        "deploy/grafana/underpass.json queries series no program exposes: {unknown:?}\n\
         exposed: {families:?}"
    );
}

/// The metric family a series name belongs to: without the `_total`, `_bucket`, `_count`,
/// `_sum` and `_info` suffixes that the exposition adds to counters, histograms and infos.
fn family(name: &str) -> String {
    ["_total", "_bucket", "_count", "_sum", "_info"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
        .to_owned()
}
