//! Connector replicas (real `underpass` processes, same token, same routes) behind the
//! real `underpass-edge`, under continuous `connect()` and `fetch()` load that checks every
//! byte (see `underpass_e2e::load`):
//!
//! - one replica SIGKILLed: every request started more than 3 s after the kill succeeds; the
//!   requests the kill cut end at the client as an abort (a reset, or `502
//!   connection_terminated` before the head) within a few seconds; none hangs and none ends
//!   in a clean EOF;
//! - a rolling restart (SIGTERM A, start A again, wait until ready, the same for B): zero
//!   failed requests;
//! - 24 of 25 replicas SIGKILLed at once: every request ends OK or as an abort, and every one
//!   started after the edge dropped the dead connections succeeds.
//!
//! Counts are printed (`cargo test -- --nocapture`).
//!
//! Each test holds [`heavy_lock`]: several edge and connector processes share a small
//! machine's cores, and the bounds above are about them, not about a neighbouring test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use underpass_e2e::admin;
use underpass_e2e::connector_process::{ConnectorProcess, ConnectorSpec};
use underpass_e2e::edge_home::{EdgeHome, EdgeRun};
use underpass_e2e::edge_process::TUNNEL;
use underpass_e2e::load::{Load, LoadSpec, Record, Report};
use underpass_e2e::pattern_origin::PatternOrigin;
use underpass_e2e::{free_port, heavy_lock, EchoServer};

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(30);

/// Requests started this long after the kill must all succeed (the dead connection is out of
/// the edge's rotation by then: heartbeat detection is ~2.5 s).
const SETTLE: Duration = Duration::from_secs(3);

/// A cut request must have ended at the client by this long after the kill.
const ABORT_BOUND: Duration = Duration::from_secs(6);

/// No byte for this long and a request counts as hung.
const STALL: Duration = Duration::from_secs(15);

const CONNECT_WORKERS: usize = 4;
const FETCH_WORKERS: usize = 4;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

struct Setup {
    echo: EchoServer,
    origin: PatternOrigin,
    // Kept for its folder; each test starts one run.
    _home: EdgeHome,
    edge: EdgeRun,
    specs: [ConnectorSpec; 2],
    replicas: [ConnectorProcess; 2],
}

async fn setup(subnet: &str, name: &str) -> Setup {
    let echo = EchoServer::start(ip(&format!("{subnet}.1")));
    let origin = PatternOrigin::start(ip(&format!("{subnet}.2")));
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let home = EdgeHome::create_with_admin(&format!(
        "[[network]]\nname = \"net\"\ntunnel = \"{TUNNEL}\"\n\n\
         [[binding]]\nname = \"net\"\nlisten = \"127.0.0.1:{port}\"\nnetwork = \"net\"\n"
    ));
    let edge = home.start().await;
    let route = format!("{subnet}.0/24");
    let specs = [
        ConnectorSpec::new(&format!("{name}-a"), &home.token()).route(&route, None),
        ConnectorSpec::new(&format!("{name}-b"), &home.token()).route(&route, None),
    ];
    let mut a = specs[0].start().await;
    let mut b = specs[1].start().await;
    for replica in [&mut a, &mut b] {
        replica
            .wait_ready(LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", replica.output(), edge.output()));
    }
    let setup = Setup {
        echo,
        origin,
        _home: home,
        edge,
        specs,
        replicas: [a, b],
    };
    wait_connectors(&setup.edge, 2).await;
    setup
}

/// Waits until the edge lists `n` connectors on the tunnel (`GET /v1/tunnels/NAME`).
async fn wait_connectors(edge: &EdgeRun, n: usize) {
    let addr = edge.admin_addr().expect("the edge has an admin listener");
    let deadline = Instant::now() + LIMIT;
    let mut last;
    loop {
        match admin::get_json(addr, &format!("/v1/tunnels/{TUNNEL}")).await {
            Ok((200, body)) => {
                let count = body["connectors"].as_array().map_or(0, Vec::len);
                if count == n {
                    return;
                }
                last = body.to_string();
            }
            Ok((status, body)) => last = format!("{status} {body}"),
            Err(e) => last = format!("{e:#}"),
        }
        assert!(
            Instant::now() < deadline,
            "the edge does not list {n} connectors after {LIMIT:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn load(binding: SocketAddr, echo: &EchoServer, origin: &PatternOrigin) -> Load {
    // 64 KiB per request, 4 KiB every 50 ms: about 0.8 s each, so 8 are always in flight.
    Load::start(
        LoadSpec::new(binding)
            .connect(echo.addr(), CONNECT_WORKERS)
            .fetch(origin.addr(), FETCH_WORKERS)
            .payload(64 * 1024, 4096, Duration::from_millis(50))
            .stall(STALL),
    )
}

async fn wait_more_ok(load: &Load, n: usize, what: &str) {
    assert!(
        load.wait_more_ok(n, LIMIT).await,
        "{what}: not {n} more successful requests of each kind in {LIMIT:?}; so far: {}",
        Report {
            records: load.records()
        }
        .summary()
    );
}

fn list(records: &[&Record]) -> String {
    records
        .iter()
        .map(|r| format!("  {r}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_replica_aborts_its_streams_and_spares_new_ones() {
    let _turn = heavy_lock().await;
    let Setup {
        echo,
        origin,
        edge,
        replicas: [mut a, mut b],
        ..
    } = setup("127.24.2", "kill").await;
    let load = load(edge.binding_addr("net"), &echo, &origin);
    wait_more_ok(&load, 5, "before the kill").await;

    a.kill();
    let killed = Instant::now();
    // Keep the load on until plenty of requests started after the settle time succeeded.
    let deadline = killed + LIMIT * 2;
    loop {
        let after = load
            .records()
            .iter()
            .filter(|r| r.started >= killed + SETTLE && r.outcome.is_ok())
            .count();
        if after >= 40 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = load.stop().await;

    let in_flight: Vec<&Record> = report
        .records
        .iter()
        .filter(|r| r.started < killed && r.ended > killed)
        .collect();
    let aborted: Vec<&Record> = report
        .records
        .iter()
        .filter(|r| r.outcome.is_abort())
        .collect();
    let bad: Vec<&Record> = report
        .records
        .iter()
        .filter(|r| !r.outcome.is_ok() && !r.outcome.is_abort())
        .collect();
    let late_failures: Vec<&Record> = report
        .records
        .iter()
        .filter(|r| r.started >= killed + SETTLE && !r.outcome.is_ok())
        .collect();
    let slow_aborts: Vec<&Record> = aborted
        .iter()
        .copied()
        .filter(|r| r.ended.saturating_duration_since(killed) > ABORT_BOUND)
        .collect();
    let started_after = report.count(|r| r.started >= killed + SETTLE);
    let last_abort = aborted
        .iter()
        .map(|r| r.ended.saturating_duration_since(killed))
        .max();
    println!(
        "replica SIGKILL: {} requests ({}); {} in flight at the kill ({} aborted); {} aborted \
         in all, the last {:?} after the kill; {started_after} started more than {SETTLE:?} \
         after the kill, {} of them failed",
        report.records.len(),
        report.summary(),
        in_flight.len(),
        in_flight.iter().filter(|r| r.outcome.is_abort()).count(),
        aborted.len(),
        last_abort,
        late_failures.len(),
    );

    assert!(
        bad.is_empty(),
        "{} requests ended neither OK nor as an abort (a clean EOF, a hang, corrupt data, \
         another error):\n{}\n{}",
        bad.len(),
        list(&bad),
        edge.output()
    );
    assert!(
        late_failures.is_empty(),
        "{} requests started more than {SETTLE:?} after the kill failed:\n{}",
        late_failures.len(),
        list(&late_failures)
    );
    assert!(
        slow_aborts.is_empty(),
        "cut requests ended only more than {ABORT_BOUND:?} after the kill:\n{}",
        list(&slow_aborts)
    );
    assert!(
        !aborted.is_empty(),
        "the kill cut no request: did replica A carry any of the load? {}",
        report.summary()
    );
    assert!(
        started_after >= 40,
        "only {started_after} requests started after the settle time"
    );
    assert!(b.is_running(), "replica B exited\n{}", b.output());
    let (status, body) = b.ready().await.expect("B's /ready");
    assert_eq!(status, 200, "{body}");
    wait_connectors(&edge, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_two_replicas_loses_no_request() {
    let _turn = heavy_lock().await;
    let Setup {
        echo,
        origin,
        edge,
        specs,
        replicas: [mut a, mut b],
        ..
    } = setup("127.24.3", "rolling").await;
    let load = load(edge.binding_addr("net"), &echo, &origin);
    wait_more_ok(&load, 5, "before the restart").await;

    let mut steps = Vec::new();
    for (i, replica) in [&mut a, &mut b].into_iter().enumerate() {
        let name = replica.name().to_owned();
        let began = Instant::now();
        replica.terminate();
        let status = replica
            .wait_exit(LIMIT * 2)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", replica.output()));
        assert!(
            status.success(),
            "{name} exited with {status} after SIGTERM\n{}",
            replica.output()
        );
        let drained = began.elapsed();
        *replica = specs[i].start().await;
        replica
            .wait_ready(LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}", replica.output()));
        steps.push(format!(
            "{name}: drained and exited 0 in {drained:?}, ready again {:?} after the SIGTERM",
            began.elapsed()
        ));
        wait_more_ok(&load, 5, &format!("after restarting {name}")).await;
    }
    let report = load.stop().await;
    let failures = report.failures();
    println!(
        "rolling restart: {}; {} requests ({}), {} failed",
        steps.join("; "),
        report.records.len(),
        report.summary(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the rolling restart:\n{}\n{}",
        failures.len(),
        report.records.len(),
        list(&failures),
        edge.output()
    );
    wait_connectors(&edge, 2).await;
}

/// The adversarial case: 25 replicas (one connection each) serve the tunnel and 24
/// of them are SIGKILLed at once under load. Measured before the dead-connection detection:
/// with 29 of 30 replicas killed, 14 of 40 new CONNECTs failed. Now every request ends OK or
/// as an abort (never a clean EOF or a hang), and every request started once the edge has
/// dropped the dead connections succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_four_of_25_replicas_killed_at_once_spare_new_requests() {
    const REPLICAS: usize = 25;
    let _turn = heavy_lock().await;
    let subnet = "127.24.4";
    let echo = EchoServer::start(ip(&format!("{subnet}.1")));
    let origin = PatternOrigin::start(ip(&format!("{subnet}.2")));
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let home = EdgeHome::create_with_admin(&format!(
        "[[network]]\nname = \"net\"\ntunnel = \"{TUNNEL}\"\n\n\
         [[binding]]\nname = \"net\"\nlisten = \"127.0.0.1:{port}\"\nnetwork = \"net\"\n"
    ));
    let edge = home.start().await;
    let route = format!("{subnet}.0/24");
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        let spec = ConnectorSpec::new(&format!("many-{i}"), &home.token())
            .route(&route, None)
            .connections(1);
        replicas.push(spec.start().await);
    }
    for replica in &mut replicas {
        replica
            .wait_ready(LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", replica.output(), edge.output()));
    }
    wait_connectors(&edge, REPLICAS).await;

    let load = load(edge.binding_addr("net"), &echo, &origin);
    wait_more_ok(&load, 5, "before the kill").await;
    let mut survivor = replicas.pop().expect("25 replicas");
    for replica in &mut replicas {
        replica.kill();
    }
    let killed = Instant::now();
    wait_connectors(&edge, 1).await;
    let dropped = Instant::now();
    let deadline = dropped + LIMIT * 2;
    loop {
        let after = load
            .records()
            .iter()
            .filter(|r| r.started >= dropped && r.outcome.is_ok())
            .count();
        if after >= 40 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = load.stop().await;

    let bad: Vec<&Record> = report
        .records
        .iter()
        .filter(|r| !r.outcome.is_ok() && !r.outcome.is_abort())
        .collect();
    let late_failures: Vec<&Record> = report
        .records
        .iter()
        .filter(|r| r.started >= dropped && !r.outcome.is_ok())
        .collect();
    let started_after = report.count(|r| r.started >= dropped);
    let window_failures =
        report.count(|r| r.started >= killed && r.started < dropped && !r.outcome.is_ok());
    println!(
        "{} of {REPLICAS} replicas SIGKILLed: the edge dropped their connections {:?} after the \
         kill; {} requests ({}); {window_failures} started in between failed; \
         {started_after} started after, {} of them failed",
        REPLICAS - 1,
        dropped - killed,
        report.records.len(),
        report.summary(),
        late_failures.len(),
    );
    assert!(
        bad.is_empty(),
        "{} requests ended neither OK nor as an abort:\n{}\n{}",
        bad.len(),
        list(&bad),
        edge.output()
    );
    assert!(
        late_failures.is_empty(),
        "{} requests started after the edge dropped the dead connections failed:\n{}",
        late_failures.len(),
        list(&late_failures)
    );
    assert!(
        started_after >= 40,
        "only {started_after} requests started after the dead connections were dropped"
    );
    assert!(
        survivor.is_running(),
        "the survivor exited\n{}",
        survivor.output()
    );
}
