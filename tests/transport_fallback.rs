//! `protocol = "auto"` where UDP to the edge is blocked, then unblocked.
//!
//! A userspace UDP relay stands between the connector and the edge's QUIC port (`tc`/netem is
//! not available here). While it drops every datagram the connector cannot establish QUIC, so
//! each connection falls back to HTTP/2 over TCP (straight to the edge's TCP port), and
//! traffic flows. Once the relay forwards, the background probe finds QUIC working: a QUIC
//! connection registers, the HTTP/2 one drains, and a 64 MiB `connect()` transfer that was
//! running during the switch completes intact (its SHA-256 checked). Every wait polls for a
//! state, bounded by [`LIMIT`], which only guards a hang.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use underpass_connector::config::{ProtocolChoice, ReconnectSettings};
use underpass_connector::ConnectorConfig;
use underpass_e2e::edge_process::TUNNEL;
use underpass_e2e::load::write_pattern;
use underpass_e2e::relay::UdpRelay;
use underpass_e2e::{http1, pattern, EchoServer};
use underpass_edge::config::{BindingConfig, EdgeConfig, NetworkConfig};
use underpass_edge::tunnels::TunnelStore;
use underpass_edge::{Edge, EdgeHandle};
use underpass_transport::Protocol;

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(120);
/// The transfer that runs through the move back to QUIC.
const TRANSFER: u64 = 64 << 20;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test IP")
}

/// The transports of the tunnel's live connections, as the edge's registry has them, with
/// whether each is draining.
fn connections(edge: &EdgeHandle) -> Vec<(Protocol, bool)> {
    edge.registry()
        .snapshot()
        .iter()
        .map(|info| (info.registration.protocol, info.draining))
        .collect()
}

async fn wait_for(what: &str, edge: &EdgeHandle, done: impl Fn(&[(Protocol, bool)]) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let now = connections(edge);
        if done(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {LIMIT:?}; connections now {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An edge with one network binding `net` for [`TUNNEL`], its state in `dir`.
async fn edge(dir: &std::path::Path) -> EdgeHandle {
    let loopback = SocketAddr::new(ip("127.0.0.1"), 0);
    let mut config = EdgeConfig::new(dir.join("state"));
    config.listen = loopback;
    config.networks.push(NetworkConfig {
        name: "net".into(),
        tunnel: TUNNEL.into(),
    });
    config
        .bindings
        .push(BindingConfig::network("net", loopback, "net"));
    underpass_edge::state::ensure_dir(&config.state_dir).expect("the state folder");
    TunnelStore::open(&config.state_dir)
        .and_then(|store| store.create(TUNNEL))
        .expect("create the tunnel");
    Edge::start(config).await.expect("the edge starts")
}

/// A connector in `auto` whose QUIC goes through `relay` and HTTP/2 straight to the edge.
fn auto_connector(edge: &EdgeHandle, relay: &UdpRelay) -> ConnectorConfig {
    let token = edge.token(TUNNEL).expect("the token");
    let mut connector = ConnectorConfig::builder(token)
        .route("127.75.0.0/16")
        .build()
        .expect("a connector config");
    connector.protocol = ProtocolChoice::Auto;
    connector.connections = 2;
    connector.edge.addresses = vec![relay.addr().to_string()];
    connector.edge.http2_port = Some(edge.http2_addr().port());
    connector.quic_probe = ReconnectSettings {
        initial: Duration::from_millis(500),
        max: Duration::from_millis(1000),
    };
    connector
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_on_http2_while_probing_quic_stops_cleanly() {
    let dir = tempfile::tempdir().expect("a state folder");
    let edge = edge(dir.path()).await;
    let relay = UdpRelay::start(edge.quic_addr(), false).await;
    let mut connector = underpass_connector::Connector::start(auto_connector(&edge, &relay))
        .expect("the connector");
    connector
        .wait_all_registered(LIMIT)
        .await
        .expect("both connections register");
    assert!(connections(&edge)
        .iter()
        .all(|(p, _)| *p == Protocol::Http2));
    connector.stop();
    tokio::time::timeout(LIMIT, connector.wait())
        .await
        .expect("the connector stops while probing QUIC")
        .expect("a clean stop");
    wait_for("no connection left", &edge, |now| now.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_http2_where_udp_is_blocked_and_returns_to_quic_mid_transfer() {
    let echo = EchoServer::start(ip("127.75.1.1"));
    let dir = tempfile::tempdir().expect("a state folder");
    let edge = edge(dir.path()).await;
    let binding = edge.binding_addr("net").expect("the binding");
    let relay = UdpRelay::start(edge.quic_addr(), false).await;
    let connector = auto_connector(&edge, &relay);
    let started = Instant::now();
    let connector = underpass_connector::Connector::start(connector).expect("the connector");
    connector
        .wait_all_registered(LIMIT)
        .await
        .expect("both connections register");
    let on_http2 = started.elapsed();
    let now = connections(&edge);
    assert!(
        now.len() == 2 && now.iter().all(|(p, _)| *p == Protocol::Http2),
        "with UDP blocked every connection is on HTTP/2: {now:?}"
    );
    assert!(relay.dropped() > 0, "QUIC was tried");
    println!("on HTTP/2 after {on_http2:?} (QUIC blocked)");

    // A long transfer, on HTTP/2, through the switch.
    let target = echo.addr().to_string();
    let answer = http1::connect(binding, &target, LIMIT).await;
    assert_eq!(answer.status, 200, "CONNECT {target}: {}", answer.head);
    let (mut read, mut write) = tokio::io::split(answer.stream);
    let received = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = read.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok::<_, std::io::Error>(hex::encode(hasher.finalize()))
        }
    });
    // The writer stops half way until the switch, so that the switch happens mid-transfer.
    let half = Arc::new(tokio::sync::Notify::new());
    let writer = tokio::spawn({
        let half = half.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            while sent < TRANSFER {
                if sent == TRANSFER / 2 {
                    half.notified().await;
                }
                let n = (TRANSFER - sent).min(buf.len() as u64) as usize;
                pattern::fill(sent, &mut buf[..n]);
                write.write_all(&buf[..n]).await?;
                sent += n as u64;
            }
            write.shutdown().await?;
            Ok::<_, std::io::Error>(write)
        }
    });
    let deadline = Instant::now() + LIMIT;
    while received.load(Ordering::Relaxed) < TRANSFER / 2 {
        assert!(Instant::now() < deadline, "the first half did not arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // UDP passes again: each connection moves back to QUIC within the probe interval; the
    // HTTP/2 one carrying the transfer drains, the idle one closes.
    relay.pass();
    let opened = Instant::now();
    wait_for(
        "both connections back on QUIC, HTTP/2 draining",
        &edge,
        |now| {
            now.iter().filter(|(p, _)| *p == Protocol::Quic).count() == 2
                && now
                    .iter()
                    .filter(|(p, _)| *p == Protocol::Http2)
                    .all(|(_, draining)| *draining)
        },
    )
    .await;
    println!(
        "both connections on QUIC {:?} after UDP passed",
        opened.elapsed()
    );
    half.notify_one();
    let _write = tokio::time::timeout(LIMIT, writer)
        .await
        .expect("the writer hangs")
        .expect("the writer task")
        .expect("the transfer's second half is written");
    let digest = tokio::time::timeout(LIMIT, reader)
        .await
        .expect("the reader hangs")
        .expect("the reader task")
        .expect("the echo reads to its end");
    assert_eq!(
        received.load(Ordering::Relaxed),
        TRANSFER,
        "every byte came back"
    );
    assert_eq!(digest, pattern::sha256_hex(TRANSFER), "the echo is intact");

    // The drained HTTP/2 connection goes; new streams run on QUIC.
    wait_for("only QUIC connections", &edge, |now| {
        now.len() == 2 && now.iter().all(|(p, _)| *p == Protocol::Quic)
    })
    .await;
    let mut answer = http1::connect(binding, &target, LIMIT).await;
    assert_eq!(answer.status, 200);
    write_pattern(&mut answer.stream, 1024)
        .await
        .expect("write");
    let mut back = vec![0u8; 1024];
    answer.stream.read_exact(&mut back).await.expect("echo");
    assert_eq!(back, pattern::bytes(1024));
    drop(connector);
}
