//! The connector as an operator runs it: the real `underpass` binary (signals, exit status,
//! logs, the admin listener) against the real `underpass-edge` binary, on loopback.
//!
//! - SIGHUP reloads routes while a transfer started before the reload completes intact; a bad
//!   file is refused and the running routes kept;
//! - started with the edge down, or named by a name that does not resolve, the connector stays
//!   up, retries with jittered delays, says what to check, is not ready, and becomes ready
//!   once the edge appears;
//! - SIGTERM drains (`/ready` 503 at once) and exits 0 once the open streams are done; a
//!   second SIGTERM exits at once;
//! - `/metrics` counts exactly the traffic sent, and `promtool check metrics` accepts it;
//! - the tunnel token and secret never appear in the log, at `RUST_LOG=trace`;
//! - when the edge dies (SIGKILL), the origin sockets of the streams it carried are closed.
//!
//! No assertion depends on a timing: every wait polls for a state, bounded by [`LIMIT`],
//! which only guards a hang.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underpass_e2e::admin;
use underpass_e2e::connector_process::{ConnectorProcess, ConnectorSpec};
use underpass_e2e::echo::{Behaviour, ConnEvent};
use underpass_e2e::edge_home::{EdgeHome, EdgeRun};
use underpass_e2e::edge_process::TUNNEL;
use underpass_e2e::http1;
use underpass_e2e::load::{connect_exchange, fetch_exchange, Outcome};
use underpass_e2e::pattern;
use underpass_e2e::pattern_origin::PatternOrigin;
use underpass_e2e::process::{self, find_program};
use underpass_e2e::EchoServer;

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(30);
/// How long one exchange may stall before it counts as hung (a guard, too).
const STALL: Duration = Duration::from_secs(10);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test IP")
}

/// An edge (with its admin listener) serving one network binding, `net`, over the tunnel.
fn edge_home() -> EdgeHome {
    EdgeHome::create_with_admin(&format!(
        "[[network]]\nname = \"net\"\ntunnel = \"{TUNNEL}\"\n\n\
         [[binding]]\nname = \"net\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"net\"\n"
    ))
}

/// A loopback address nothing listens on.
fn closed_port(ip: IpAddr) -> SocketAddr {
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind a port to close");
    listener.local_addr().expect("local address")
}

/// Sends `signal` to the connector process.
fn signal(connector: &ConnectorProcess, signal: nix::sys::signal::Signal) {
    process::signal(connector.pid(), signal, "the connector");
}

/// Polls until `done` holds for the connector's log; returns the log.
async fn wait_log(connector: &ConnectorProcess, what: &str, done: impl Fn(&str) -> bool) -> String {
    process::wait_log(what, LIMIT, || connector.log(), done).await
}

/// A `CONNECT target` through `binding`: the answer's status and `Proxy-Status`, and the
/// tunnel (the stream after the head) when it was accepted.
async fn connect(
    binding: SocketAddr,
    target: SocketAddr,
) -> (u16, Option<String>, Option<TcpStream>) {
    let answer = http1::connect(binding, &target.to_string(), STALL).await;
    let error = answer.proxy_error().map(str::to_owned);
    let tunnel = (answer.status == 200).then_some(answer.stream);
    (answer.status, error, tunnel)
}

/// Polls `CONNECT target` until its status is (or is not, with `want_ok` false) 200.
async fn wait_connect(
    binding: SocketAddr,
    target: SocketAddr,
    want_ok: bool,
) -> (u16, Option<String>) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (status, proxy_status, _) = connect(binding, target).await;
        if (status == 200) == want_ok {
            return (status, proxy_status);
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("CONNECT {target}: still {status} {proxy_status:?} after {LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes pattern bytes `from..to` to `stream`.
async fn send_pattern(stream: &mut TcpStream, from: u64, to: u64) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(buf.len() as u64) as usize;
        pattern::fill(at, &mut buf[..n]);
        stream
            .write_all(&buf[..n])
            .await
            .expect("send pattern bytes");
        at += n as u64;
    }
}

/// The connector's config with `routes` in place of the spec's own (a SIGHUP then reads it).
fn rewrite_routes(connector: &ConnectorProcess, routes: &[&str]) {
    let path = connector.config_path();
    let text = std::fs::read_to_string(path).expect("read connector.toml");
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with('[') {
            skipping = line == "[[route]]";
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    // Tables after the last one written: routes go at the end, each its own table.
    for route in routes {
        out.push_str(&format!("\n[[route]]\ndestination = {route:?}\n"));
    }
    std::fs::write(path, out).expect("write connector.toml");
}

async fn ready_connector(spec: ConnectorSpec) -> ConnectorProcess {
    let mut connector = spec.start().await;
    connector
        .wait_ready(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", connector.output()));
    connector
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_routes_while_a_transfer_started_before_completes_intact() {
    const LEN: u64 = 2 << 20;
    let kept = EchoServer::start_with(ip("127.71.1.1"), Behaviour::Sha256AfterEof);
    let removed = EchoServer::start(ip("127.71.2.1"));
    let added = EchoServer::start(ip("127.71.3.1"));
    let home = edge_home();
    let edge = home.start().await;
    let binding = edge.binding_addr("net");
    let connector = ready_connector(
        ConnectorSpec::new("reload", &home.token())
            .route("127.71.1.0/24", None)
            .route("127.71.2.0/24", None)
            .connections(2),
    )
    .await;
    wait_connect(binding, removed.addr(), true).await;
    let (status, _) = wait_connect(binding, added.addr(), false).await;
    assert_ne!(status, 200);

    // A transfer to a route the reload keeps, half sent before the reload.
    let (status, _, tunnel) = connect(binding, kept.addr()).await;
    assert_eq!(status, 200, "{}", connector.log());
    let mut tunnel = tunnel.expect("accepted");
    send_pattern(&mut tunnel, 0, LEN / 2).await;

    rewrite_routes(&connector, &["127.71.1.0/24", "127.71.3.0/24"]);
    signal(&connector, nix::sys::signal::Signal::SIGHUP);
    wait_log(&connector, "the reload", |log| {
        log.contains("configuration reloaded")
    })
    .await;
    // The edge learns the new routes from the connector's announcement; then the added route
    // is reachable and the removed one refused.
    wait_connect(binding, added.addr(), true).await;
    let (status, proxy_status) = wait_connect(binding, removed.addr(), false).await;
    assert!(
        status >= 400 && proxy_status.is_some(),
        "{status} {proxy_status:?}\n{}",
        connector.log()
    );

    // The transfer started before the reload completes, every byte intact.
    send_pattern(&mut tunnel, LEN / 2, LEN).await;
    tunnel.shutdown().await.expect("half-close");
    let mut digest = String::new();
    tokio::time::timeout(STALL, tunnel.read_to_string(&mut digest))
        .await
        .expect("the digest stalled")
        .expect("read the digest");
    assert_eq!(digest, pattern::sha256_hex(LEN), "{}", connector.log());
    let log = connector.log();
    assert!(log.contains("announcing the reloaded routes"), "{log}");
    drop(edge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_on_sighup_is_refused_and_the_running_routes_kept() {
    let echo = EchoServer::start(ip("127.71.4.1"));
    let home = edge_home();
    let edge = home.start().await;
    let binding = edge.binding_addr("net");
    let token = home.token().encode();
    let connector = ready_connector(
        ConnectorSpec::new("bad-reload", &home.token()).route("127.71.4.0/24", None),
    )
    .await;
    wait_connect(binding, echo.addr(), true).await;
    // A syntax error on the line of an inline token: the parser quotes that line.
    let path = connector.config_path();
    let text = std::fs::read_to_string(path).expect("read connector.toml");
    std::fs::write(path, format!("token = \"{token}\" oops\n{text}")).expect("write");
    signal(&connector, nix::sys::signal::Signal::SIGHUP);
    let log = wait_log(&connector, "the refused reload", |log| {
        log.contains("configuration NOT reloaded")
    })
    .await;
    assert!(
        !log.contains(&token),
        "the token leaked into the log:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("configuration NOT reloaded"))
        .expect("found above");
    assert!(
        line.contains("connector.toml"),
        "the reason names the file: {line}"
    );
    // Still serving, with the old routes.
    let (status, _, _) = connect(binding, echo.addr()).await;
    assert_eq!(status, 200, "{log}");
    drop(edge);
}

/// Delays the connector announced for its retries (`retry_in_ms=`) on lines matching `what`.
fn retry_delays(log: &str, what: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("cannot connect to the edge") && l.contains(what))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("retry_in_ms="))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_is_down_or_unresolvable_is_retried_until_it_appears() {
    let home = edge_home();
    let edge_addr = home.quic_addr();
    let unresolvable = format!("edge-down.invalid:{}", edge_addr.port());
    let mut connector = ConnectorSpec::new("edge-down", &home.token())
        .route("127.71.5.0/24", None)
        .connections(2)
        .edge_addresses(&[&unresolvable, &edge_addr.to_string()])
        .section("[reconnect]\ninitial_ms = 100\nmax_ms = 400\n")
        .section("[timeouts]\nregister_ms = 500\n")
        .start()
        .await;
    // Up (its admin listener answers), not ready, and retrying both addresses.
    let (status, body) = connector.ready().await.expect("GET /ready");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready_connections"], 0, "{body}");
    assert_eq!(body["draining"], false, "{body}");
    let id = body["connector_id"].as_str().expect("a connector id");
    assert!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{body}"
    );
    let down = format!("UDP port {}", edge_addr.port());
    let log = wait_log(&connector, "three retries of each address", |log| {
        retry_delays(log, ".invalid").len() >= 3 && retry_delays(log, &down).len() >= 3
    })
    .await;
    // Each says what to check.
    let invalid = log
        .lines()
        .find(|l| l.contains("cannot connect to the edge") && l.contains(".invalid"))
        .expect("found above");
    assert!(invalid.contains("cannot resolve"), "{invalid}");
    let unreachable = log
        .lines()
        .find(|l| l.contains("cannot connect to the edge") && l.contains(&down))
        .expect("found above");
    assert!(
        unreachable.contains(&edge_addr.to_string())
            && unreachable.contains("edge is running")
            && unreachable.contains("firewalls allow outbound UDP"),
        "{unreachable}"
    );
    // Jittered: the delays are not all the same.
    let mut delays = retry_delays(&log, "");
    delays.sort_unstable();
    delays.dedup();
    assert!(
        delays.len() >= 2,
        "the retry delays do not vary: {delays:?}\n{log}"
    );
    assert!(connector.is_running());
    let (status, _) = connector.ready().await.expect("GET /ready");
    assert_eq!(status, 503);

    // The edge appears on its address: the connector becomes ready on its own.
    let edge = home.start().await;
    connector
        .wait_ready(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", connector.output()));
    let (_, body) = connector.ready().await.expect("GET /ready");
    assert!(body["ready_connections"].as_u64() >= Some(1), "{body}");
    assert!(connector.is_running());
    drop(edge);
}

/// A ready connector with one `connect()` open to `echo`, half of `len` bytes through.
async fn connector_with_open_stream(
    name: &str,
    home: &EdgeHome,
    edge: &EdgeRun,
    echo: &EchoServer,
    drain_ms: u64,
) -> (ConnectorProcess, TcpStream) {
    let connector = ready_connector(
        ConnectorSpec::new(name, &home.token())
            .route(&format!("{}/32", echo.addr().ip()), None)
            .connections(2)
            .section(&format!("[timeouts]\ndrain_ms = {drain_ms}\n")),
    )
    .await;
    let (status, _, tunnel) = connect(edge.binding_addr("net"), echo.addr()).await;
    assert_eq!(status, 200, "{}", connector.log());
    (connector, tunnel.expect("accepted"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_0_and_a_second_sigterm_exits_at_once() {
    const LEN: u64 = 256 * 1024;
    let echo = EchoServer::start_with(ip("127.71.6.1"), Behaviour::Sha256AfterEof);
    let home = edge_home();
    let edge = home.start().await;

    // One SIGTERM: not ready at once, the open stream finishes, exit 0.
    let (mut connector, mut tunnel) =
        connector_with_open_stream("drain", &home, &edge, &echo, 60_000).await;
    send_pattern(&mut tunnel, 0, LEN / 2).await;
    signal(&connector, nix::sys::signal::Signal::SIGTERM);
    connector
        .wait_not_ready(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", connector.output()));
    let (_, body) = connector.ready().await.expect("GET /ready while draining");
    assert_eq!(body["draining"], true, "{body}");
    assert!(connector.is_running(), "it waits for the open stream");
    send_pattern(&mut tunnel, LEN / 2, LEN).await;
    tunnel.shutdown().await.expect("half-close");
    let mut digest = String::new();
    tokio::time::timeout(STALL, tunnel.read_to_string(&mut digest))
        .await
        .expect("the digest stalled")
        .expect("read the digest");
    assert_eq!(digest, pattern::sha256_hex(LEN));
    let status = connector
        .wait_exit(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", connector.output()));
    assert_eq!(status.code(), Some(0), "{}", connector.output());

    // A second SIGTERM while a stream holds the drain (60 s): out at once.
    let (mut connector, _tunnel) =
        connector_with_open_stream("twice", &home, &edge, &echo, 60_000).await;
    signal(&connector, nix::sys::signal::Signal::SIGTERM);
    connector
        .wait_not_ready(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", connector.output()));
    signal(&connector, nix::sys::signal::Signal::SIGTERM);
    let status = connector
        .wait_exit(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", connector.output()));
    assert_eq!(status.code(), Some(1), "{}", connector.output());
    assert!(connector.log().contains("second signal: exiting at once"));
    drop(edge);
}

/// The sum of the samples of `name` whose labels include every `key="value"` of `labels`.
fn sample_sum(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, rest) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let have: Vec<&str> = rest.split(',').collect();
        if labels.iter().all(|l| have.contains(l)) {
            let value: f64 = value.parse().unwrap_or(f64::NAN);
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_traffic() {
    const FETCHES: u64 = 3;
    const FETCH_LEN: u64 = 20_000;
    const CONNECTS: u64 = 2;
    const CONNECT_LEN: u64 = 50_000;
    const REFUSED: u64 = 2;
    let echo = EchoServer::start(ip("127.71.7.1"));
    let origin = PatternOrigin::start(ip("127.71.7.2"));
    let closed = closed_port(ip("127.71.7.3"));
    let home = edge_home();
    let edge = home.start().await;
    let binding = edge.binding_addr("net");
    let connector = ready_connector(
        ConnectorSpec::new("metrics", &home.token())
            .route("127.71.7.0/24", None)
            .connections(2),
    )
    .await;
    let admin_addr = connector.admin_addr();
    // Both connections registered before counting: a scrape sees their QUIC statistics.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while connector.ready().await.expect("GET /ready").1["ready_connections"] != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            connector.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for _ in 0..FETCHES {
        let (outcome, _) = fetch_exchange(
            binding,
            origin.addr(),
            FETCH_LEN,
            4096,
            Duration::ZERO,
            STALL,
        )
        .await;
        assert_eq!(outcome, Outcome::Ok, "{}", connector.log());
    }
    for _ in 0..CONNECTS {
        let (outcome, _) = connect_exchange(
            binding,
            echo.addr(),
            CONNECT_LEN,
            8192,
            Duration::ZERO,
            STALL,
        )
        .await;
        assert_eq!(outcome, Outcome::Ok, "{}", connector.log());
    }
    // A refused fetch(): counted, and logged once like a refused connect().
    let (outcome, _) = fetch_exchange(binding, closed, 10, 10, Duration::ZERO, STALL).await;
    assert!(
        matches!(&outcome, Outcome::Status { code, proxy_status }
            if *code >= 500 && proxy_status.as_deref() == Some("connection_refused")),
        "{outcome:?}"
    );
    for _ in 0..REFUSED {
        let (status, proxy_status, _) = connect(binding, closed).await;
        assert!(status >= 500, "{status}");
        assert!(
            proxy_status
                .as_deref()
                .is_some_and(|p| p.contains("connection_refused")),
            "{proxy_status:?}"
        );
    }

    let expected: Vec<(&str, Vec<&str>, f64)> = vec![
        (
            "underpass_connector_streams_total",
            vec![r#"kind="fetch""#],
            (FETCHES + 1) as f64,
        ),
        (
            "underpass_connector_streams_total",
            vec![r#"kind="connect""#],
            (CONNECTS + REFUSED) as f64,
        ),
        ("underpass_connector_streams_active", vec![], 0.0),
        (
            "underpass_connector_stream_errors_total",
            vec![r#"kind="connect""#, r#"proxy_status="connection_refused""#],
            REFUSED as f64,
        ),
        (
            "underpass_connector_stream_errors_total",
            vec![r#"kind="fetch""#, r#"proxy_status="connection_refused""#],
            1.0,
        ),
        (
            "underpass_connector_stream_errors_total",
            vec![],
            (REFUSED + 1) as f64,
        ),
        (
            "underpass_connector_bytes_total",
            vec![r#"kind="connect""#, r#"direction="to_origin""#],
            (CONNECTS * CONNECT_LEN) as f64,
        ),
        (
            "underpass_connector_bytes_total",
            vec![r#"kind="connect""#, r#"direction="from_origin""#],
            (CONNECTS * CONNECT_LEN) as f64,
        ),
        (
            "underpass_connector_bytes_total",
            vec![r#"kind="fetch""#, r#"direction="from_origin""#],
            (FETCHES * FETCH_LEN) as f64,
        ),
        (
            "underpass_connector_bytes_total",
            vec![r#"kind="fetch""#, r#"direction="to_origin""#],
            0.0,
        ),
        (
            "underpass_connector_registrations_total",
            vec![r#"outcome="accepted""#],
            2.0,
        ),
        (
            "underpass_connector_connections",
            vec![r#"state="registered""#],
            2.0,
        ),
        (
            "underpass_connector_dial_seconds_count",
            vec![r#"outcome="error""#],
            (REFUSED + 1) as f64,
        ),
        ("underpass_build_info", vec![], 1.0),
    ];
    // A stream is counted when its task ends, just after the client saw its last byte:
    // scrape until the numbers are there.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let text = loop {
        let text = admin::metrics(admin_addr).await.expect("GET /metrics");
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|(name, labels, want)| {
                let got = sample_sum(&text, name, labels);
                (got != Some(*want)).then(|| format!("{name}{labels:?}: {got:?}, want {want}"))
            })
            .collect();
        if wrong.is_empty() {
            break text;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "/metrics does not match the traffic:\n  {}\n{text}",
                wrong.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Every successful connect() dialed; fetch()es dialed at least once (pooled after).
    let dialed = sample_sum(
        &text,
        "underpass_connector_dial_seconds_count",
        &[r#"outcome="ok""#],
    );
    assert!(dialed >= Some((CONNECTS + 1) as f64), "{text}");
    for name in [
        "underpass_connector_quic_rtt_seconds",
        "underpass_connector_quic_cwnd_bytes",
    ] {
        let series = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .count();
        assert_eq!(series, 2, "one {name} per connection\n{text}");
    }
    assert!(
        text.contains("underpass_connector_quic_lost_packets_total{"),
        "{text}"
    );
    assert!(text.contains("underpass_connector_dns_seconds"), "{text}");

    // Each refused stream is logged once, at info, with its code, destination and the
    // edge's request id.
    let log = connector.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stream refused"))
        .collect();
    assert_eq!(refused.len() as u64, REFUSED + 1, "{log}");
    for line in &refused {
        assert!(line.contains("INFO"), "{line}");
        assert!(line.contains("proxy_status=connection_refused"), "{line}");
        assert!(line.contains(&format!("dest={closed}")), "{line}");
        let id = line
            .split([' ', '{', '}'])
            .find_map(|w| w.strip_prefix("request_id="))
            .unwrap_or_else(|| panic!("no request_id in {line}"));
        assert!(
            id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()) && id != "0000000000000000",
            "{line}"
        );
    }

    match find_program("promtool") {
        Err(_) => println!(
            "NOTE: promtool is not installed (Debian's prometheus; scripts/test installs it): \
             `promtool check metrics` skipped"
        ),
        Ok(promtool) => {
            let mut child = std::process::Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn promtool");
            {
                use std::io::Write;
                let mut stdin = child.stdin.take().expect("piped stdin");
                stdin.write_all(text.as_bytes()).expect("write to promtool");
            }
            let output = child.wait_with_output().expect("promtool ran");
            let findings = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            // Exit 3 is lint findings (not a parse error). The one finding allowed is the
            // OpenMetrics counter convention: `# HELP` names the family (`x`), the samples
            // are `x_total`, and the classic linter looks for help on `x_total`.
            let unexplained: Vec<&str> = findings
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .filter(|l| {
                    let counter = l
                        .strip_suffix(" no help text")
                        .and_then(|name| name.strip_suffix("_total"))
                        .is_some_and(|family| {
                            text.contains(&format!("# TYPE {family} counter\n"))
                                && text.contains(&format!("# HELP {family} "))
                        });
                    !counter
                })
                .collect();
            assert!(
                output.status.success() || (output.status.code() == Some(3) && unexplained.is_empty()),
                "promtool check metrics rejects /metrics ({}):\n{findings}\n--- /metrics ---\n{text}",
                output.status,
            );
        }
    }
    drop(edge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_and_secret_never_appear_in_the_log_even_at_trace() {
    let echo = EchoServer::start(ip("127.71.8.1"));
    let origin = PatternOrigin::start(ip("127.71.8.2"));
    let home = edge_home();
    let edge = home.start().await;
    let binding = edge.binding_addr("net");
    let token = home.token();
    let connector = ready_connector(
        ConnectorSpec::new("secret", &token)
            .token_in_env()
            .route("127.71.8.0/24", None)
            .connections(2)
            .log_filter("trace"),
    )
    .await;
    let (outcome, _) =
        fetch_exchange(binding, origin.addr(), 1000, 1000, Duration::ZERO, STALL).await;
    assert_eq!(outcome, Outcome::Ok);
    let (outcome, _) =
        connect_exchange(binding, echo.addr(), 1000, 1000, Duration::ZERO, STALL).await;
    assert_eq!(outcome, Outcome::Ok);
    signal(&connector, nix::sys::signal::Signal::SIGHUP);
    wait_log(&connector, "the reload", |log| {
        log.contains("configuration reloaded")
    })
    .await;
    let mut connector = connector;
    signal(&connector, nix::sys::signal::Signal::SIGTERM);
    let status = connector.wait_exit(LIMIT).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", connector.output());

    let log = connector.output();
    assert!(log.contains("TRACE"), "the log is at trace level");
    let secret = token.secret.0;
    let forms = [
        ("the token", token.encode()),
        (
            "the token without its prefix",
            token.encode()["upt1_".len()..].to_owned(),
        ),
        ("the secret in hex", hex::encode(secret)),
        ("the secret in upper-case hex", hex::encode_upper(secret)),
        ("the secret as a byte list", format!("{secret:?}")),
        (
            "the secret as bytes",
            secret
                .iter()
                .map(|b| format!("{b}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ];
    for (what, form) in forms {
        assert!(!log.contains(&form), "{what} appears in the log");
    }
    drop(edge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_edge_closes_the_origin_sockets_of_its_streams() {
    let echo = EchoServer::start(ip("127.71.9.1"));
    let home = edge_home();
    let mut edge = home.start().await;
    let (connector, mut tunnel) =
        connector_with_open_stream("dead-edge", &home, &edge, &echo, 30_000).await;
    send_pattern(&mut tunnel, 0, 1000).await;
    let mut back = vec![0u8; 1000];
    tunnel.read_exact(&mut back).await.expect("echoed");
    assert!(echo.accepted() >= 1);
    // No close, no reset: the edge just goes silent.
    let killed = std::time::Instant::now();
    edge.kill();
    let gone = echo
        .wait_for(LIMIT, |e| {
            matches!(
                e,
                ConnEvent::Eof { .. } | ConnEvent::Error { .. } | ConnEvent::Closed { .. }
            )
        })
        .await;
    assert!(
        gone.is_some(),
        "the origin socket stayed open after the edge died\n{}",
        connector.log()
    );
    // Reported, not asserted: the peer timeout (2.5 s) plus a moment.
    println!(
        "origin socket closed {:?} after the edge was killed",
        killed.elapsed()
    );
    let log = wait_log(&connector, "the lost connection", |log| {
        log.contains("connection lost")
    })
    .await;
    assert!(log.contains("peer silent for"), "{log}");
}
