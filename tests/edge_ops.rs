//! Edge operations with the real `underpass-edge` binary (connectors in-process): the
//! persisted stateless-reset key, the admin listener (`/healthz`, `/ready` through a drain,
//! `/metrics` against the traffic sent, `/v1/tunnels/…`), `tunnel delete`, `tunnel
//! rotate-secret` and `tunnel info`, and SIGHUP live reload (a binding added, one removed while
//! a transfer on it finishes, a bad file refused).
//!
//! Every wait is for a state (a log line, an answer, a refused connection), bounded only to
//! catch a hang: no duration decides a pass.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underpass_connector::config::ProtocolChoice;
use underpass_connector::{ConnectionState, Connector, ConnectorConfig, ConnectorHandle};
use underpass_e2e::admin;
use underpass_e2e::edge_home::{EdgeHome, EdgeRun};
use underpass_e2e::edge_process::{edge_binary, TUNNEL};
use underpass_e2e::http1::{self, exchange, Response};
use underpass_e2e::process;
use underpass_e2e::{free_port, EchoServer, TrickleOrigin};
use underpass_proto::{RefuseReason, TunnelToken};

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(30);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

/// A network `net` over the test tunnel and a proxy binding of it per name, on fresh ports.
fn network_bindings(names: &[&str]) -> String {
    let mut text = format!("[[network]]\nname = \"net\"\ntunnel = \"{TUNNEL}\"\n\n");
    for name in names {
        text.push_str(&format!(
            "[[binding]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"net\"\n\n"
        ));
    }
    text
}

/// A connector of `token`, dialing `edge`, allowed to reach `route`.
fn connector(token: TunnelToken, edge: SocketAddr, route: &str) -> ConnectorHandle {
    let config = ConnectorConfig::builder(token)
        .edge_addresses(&[edge.to_string()])
        .route(route)
        .reconnect(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .expect("a valid connector config");
    Connector::start(config).expect("the connector starts")
}

/// Runs `underpass-edge --config <home>/edge.toml ARGS...` to completion.
async fn cli(home: &EdgeHome, args: &[&str]) -> Output {
    let config = home.dir().join("edge.toml");
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(edge_binary())
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run underpass-edge")
    })
    .await
    .expect("the CLI thread")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sends `signal` to the edge process.
fn signal(edge: &EdgeRun, signal: nix::sys::signal::Signal) {
    process::signal(edge.pid(), signal, "the edge");
}

/// Waits until the edge's log has `count` lines containing `needle`.
async fn wait_log(edge: &EdgeRun, needle: &str, count: usize) -> String {
    let what = format!("{count}× {needle:?}");
    process::wait_log(
        &what,
        LIMIT,
        || edge.log(),
        |log| log.lines().filter(|l| l.contains(needle)).count() >= count,
    )
    .await
}

/// The address of the latest `binding listening binding=NAME addr=…` line.
fn logged_binding_addr(log: &str, name: &str) -> Option<SocketAddr> {
    let binding = format!("binding={name}");
    log.lines()
        .rev()
        .filter(|line| line.contains("binding listening"))
        .filter(|line| line.split_whitespace().any(|w| w == binding))
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.trim_matches('"').parse().ok())
        })
        .next()
}

/// `GET http://origin/path` through the proxy binding at `proxy`.
async fn fetch(proxy: SocketAddr, origin: SocketAddr, path: &str) -> Response {
    let stream = TcpStream::connect(proxy)
        .await
        .expect("connect the binding");
    let request = format!(
        "GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
    );
    tokio::time::timeout(LIMIT, exchange(stream, request.as_bytes()))
        .await
        .expect("an answer in time")
        .expect("a response")
}

/// A relative-form request, which a forward proxy refuses.
async fn relative_request(proxy: SocketAddr) -> Response {
    let stream = TcpStream::connect(proxy)
        .await
        .expect("connect the binding");
    let request = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    tokio::time::timeout(LIMIT, exchange(stream, request))
        .await
        .expect("an answer in time")
        .expect("a response")
}

/// `CONNECT target` through `proxy`: the status, and the stream when it is `200`.
async fn connect(proxy: SocketAddr, target: SocketAddr) -> (u16, Option<String>, TcpStream) {
    let answer = http1::connect(proxy, &target.to_string(), LIMIT).await;
    let error = answer.proxy_error().map(str::to_owned);
    (answer.status, error, answer.stream)
}

/// Writes `data` and reads the same number of bytes back (an echo round trip).
async fn round_trip(stream: &mut TcpStream, data: &[u8]) {
    stream
        .write_all(data)
        .await
        .expect("write through the pipe");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(LIMIT, stream.read_exact(&mut back))
        .await
        .expect("the echo in time")
        .expect("read the echo");
    assert_eq!(back, data, "the echo differs");
}

/// Waits until `addr` refuses TCP connections.
async fn wait_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match TcpStream::connect(addr).await {
            Err(error) if error.kind() == ErrorKind::ConnectionRefused => return,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts {LIMIT:?} after the binding was removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the edge's `/v1/tunnels/TUNNEL` lists `connector` with all its `connections`.
async fn wait_listed(admin_addr: SocketAddr, connector: &ConnectorHandle) -> serde_json::Value {
    let id = hex::encode(connector.connector_id().0);
    let slots = connector.states().len();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (status, json) = admin::get_json(admin_addr, &format!("/v1/tunnels/{TUNNEL}"))
            .await
            .expect("the tunnel status");
        assert_eq!(status, 200, "{json}");
        let listed = json["connectors"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["connector_id"] == id.as_str()))
            .and_then(|c| c["connections"].as_array())
            .map_or(0, Vec::len);
        if listed == slots {
            return json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge lists {listed} of {slots} connections of {id}: {json}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every slot of `connector` was refused for `reason` with a message containing
/// `says`; returns the message.
async fn wait_refused_for(connector: &ConnectorHandle, reason: RefuseReason, says: &str) -> String {
    let states = connector
        .wait_for(LIMIT, |states| {
            states.iter().all(|s| {
                matches!(s, ConnectionState::Refused { reason: r, message }
                    if *r == reason && message.contains(says))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("the connector was not refused with {reason:?}: {e}"));
    match &states[0] {
        ConnectionState::Refused { message, .. } => message.clone(),
        other => panic!("{other:?}"),
    }
}

/// The value of the metric line `name{labels}` in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Stopping the edge process reaps it, and its restart finds the same stateless-reset key
/// (32 bytes, mode 0600): the connector re-registers with the new process and traffic flows.
/// A key file of the wrong size stops the start with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_key_survives_a_restart() {
    let origin = TrickleOrigin::start(ip("127.20.70.1"), 1, 16, Duration::ZERO).await;
    let home = EdgeHome::create_with_admin(&network_bindings(&["net"]));
    let mut first = home.start().await;
    let key_path = home.dir().join("state").join("reset.key");
    let key = std::fs::read(&key_path).expect("the edge wrote reset.key");
    assert_eq!(key.len(), 32);
    let mode = std::fs::metadata(&key_path)
        .expect("reset.key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "reset.key must be private");
    let admin_addr = home.admin_addr().expect("an admin listener");

    let connector = connector(home.token(), home.quic_addr(), "127.20.70.0/24");
    wait_listed(admin_addr, &connector).await;
    assert_eq!(
        fetch(first.binding_addr("net"), origin.addr(), "/a")
            .await
            .status,
        200
    );

    first.kill();
    let second = home.start().await;
    assert_eq!(
        std::fs::read(&key_path).expect("reset.key"),
        key,
        "the restarted edge must reuse the key"
    );
    // Listed by the new process: the connector came back on its own.
    wait_listed(admin_addr, &connector).await;
    assert_eq!(
        fetch(second.binding_addr("net"), origin.addr(), "/b")
            .await
            .status,
        200
    );
    drop(second);

    std::fs::write(&key_path, [7u8; 31]).expect("write a short key");
    let output = cli(&home, &["serve"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("reset.key") && stderr.contains("exactly 32"),
        "{stderr}"
    );
}

/// `/healthz`, `/ready`, `/metrics` and `/v1/tunnels/…` on a real edge: the request counters
/// equal the traffic sent (successes and each error code), the tunnel status shows the
/// connector; then SIGTERM during a transfer turns `/ready` to 503 while `/healthz` still
/// answers and the transfer finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_match_the_traffic() {
    let origin = TrickleOrigin::start(ip("127.20.71.1"), 1, 16, Duration::ZERO).await;
    let echo = EchoServer::start(ip("127.20.71.2"));
    let closed = SocketAddr::new(ip("127.20.71.3"), free_port(ip("127.20.71.3")));
    let slow = TrickleOrigin::start(ip("127.20.71.4"), 4, 16, Duration::from_millis(50)).await;
    let sections = format!(
        "{}[[service]]\nname = \"echo\"\ntype = \"tcp\"\ntunnel = \"{TUNNEL}\"\n\
         host = {{ ipv4 = \"{}\" }}\ntcp_port = {}\n\n\
         [[binding]]\nname = \"tcp\"\nlisten = \"127.0.0.1:0\"\nservice = \"echo\"\nmode = \"tcp\"\n",
        network_bindings(&["net"]),
        echo.addr().ip(),
        echo.addr().port()
    );
    let home = EdgeHome::create_with_admin(&sections);
    let mut edge = home.start().await;
    let admin_addr = home.admin_addr().expect("an admin listener");

    let (status, ready) = admin::get_json(admin_addr, "/ready").await.expect("/ready");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["draining"], false);
    assert_eq!(ready["listeners"], 3, "QUIC and two bindings: {ready}");
    let (status, health) = admin::get_json(admin_addr, "/healthz")
        .await
        .expect("/healthz");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    let connector = connector(home.token(), home.quic_addr(), "127.20.71.0/24");
    let status_json = wait_listed(admin_addr, &connector).await;
    let listed = &status_json["connectors"][0];
    assert_eq!(
        listed["connector_id"],
        hex::encode(connector.connector_id().0)
    );
    assert_eq!(listed["routes"][0]["destination"], "127.20.71.0/24");
    assert!(
        !listed["version"].as_str().unwrap_or_default().is_empty(),
        "{listed}"
    );
    assert_eq!(status_json["name"], TUNNEL);
    let (status, _) = admin::get_json(admin_addr, "/v1/tunnels/no-such-tunnel")
        .await
        .expect("an answer");
    assert_eq!(status, 404);

    // The traffic, and what each answer was.
    let net = edge.binding_addr("net");
    let mut sent: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut count = |binding: &str, status: u16, proxy_status: Option<String>| {
        let key = (
            binding.to_owned(),
            format!("{}xx", status / 100),
            proxy_status.unwrap_or_else(|| "none".into()),
        );
        *sent.entry(key).or_default() += 1;
    };
    for i in 0..5 {
        let response = fetch(net, origin.addr(), &format!("/ok{i}")).await;
        assert_eq!(response.status, 200, "{}", response.text());
        count("net", response.status, None);
    }
    for _ in 0..3 {
        let (status, proxy_status, _) = connect(net, closed).await;
        assert_eq!(
            (status, proxy_status.as_deref()),
            (502, Some("connection_refused"))
        );
        count("net", status, proxy_status);
    }
    for _ in 0..2 {
        let response = relative_request(net).await;
        response.assert_proxy_error(400, "http_request_error");
        count("net", 400, Some("http_request_error".into()));
    }
    for _ in 0..2 {
        // Outside the connector's routes: refused by the connector, with its code.
        let response = fetch(net, SocketAddr::new(ip("127.20.79.1"), 80), "/").await;
        let code = response.proxy_error().map(str::to_owned);
        assert!(code.is_some() && response.status >= 400, "{response:?}");
        count("net", response.status, code);
    }
    let (status, _, mut pipe) = connect(net, echo.addr()).await;
    assert_eq!(status, 200);
    round_trip(&mut pipe, b"through connect").await;
    drop(pipe);
    count("net", 200, None);
    let tcp = edge.binding_addr("tcp");
    for _ in 0..4 {
        let mut stream = TcpStream::connect(tcp).await.expect("the tcp binding");
        round_trip(&mut stream, b"through the tcp binding").await;
        count("tcp", 200, None);
    }

    let scraped = admin::metrics(admin_addr).await.expect("/metrics");
    let mut per_binding: BTreeMap<&str, u64> = BTreeMap::new();
    for ((binding, class, code), n) in &sent {
        let series = format!(
            "underpass_edge_binding_requests_total{{binding=\"{binding}\",status_class=\"{class}\",proxy_status=\"{code}\"}}"
        );
        assert_eq!(
            metric(&scraped, &series),
            Some(*n as f64),
            "{series} in\n{scraped}"
        );
        *per_binding.entry(binding).or_default() += n;
    }
    let total: usize = scraped
        .lines()
        .filter(|l| l.starts_with("underpass_edge_binding_requests_total{"))
        .count();
    assert_eq!(total, sent.len(), "no other request series:\n{scraped}");
    for (binding, n) in per_binding {
        let series = format!("underpass_edge_binding_ttfb_seconds_count{{binding=\"{binding}\"}}");
        assert_eq!(
            metric(&scraped, &series),
            Some(n as f64),
            "{series} in\n{scraped}"
        );
    }
    let slots = connector.states().len() as f64;
    let tunnel = format!("{{tunnel=\"{TUNNEL}\"}}");
    assert_eq!(
        metric(&scraped, &format!("underpass_edge_connectors{tunnel}")),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scraped,
            &format!("underpass_edge_connections{{tunnel=\"{TUNNEL}\",state=\"live\"}}")
        ),
        Some(slots),
        "{scraped}"
    );
    assert!(scraped.contains("underpass_build_info{"), "{scraped}");

    // A transfer in flight, then SIGTERM: /ready says 503 (draining) while /healthz answers,
    // and the transfer still finishes.
    let mut transfer = TcpStream::connect(net).await.expect("connect the binding");
    let request = format!(
        "GET http://{0}/slow HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        slow.addr()
    );
    transfer.write_all(request.as_bytes()).await.expect("send");
    let mut first = [0u8; 1];
    tokio::time::timeout(LIMIT, transfer.read_exact(&mut first))
        .await
        .expect("the head in time")
        .expect("read the head");
    signal(&edge, nix::sys::signal::Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + LIMIT;
    let draining = loop {
        let (status, json) = admin::get_json(admin_addr, "/ready").await.expect("/ready");
        if status == 503 {
            break json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready: {json}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(draining["draining"], true, "{draining}");
    assert_eq!(draining["ready"], false, "{draining}");
    let (status, _) = admin::get_json(admin_addr, "/healthz")
        .await
        .expect("/healthz");
    assert_eq!(status, 200, "healthz answers during the drain");
    slow.release();
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, transfer.read_to_end(&mut rest))
        .await
        .expect("the body in time")
        .expect("a clean end");
    let whole = [&first[..], &rest].concat();
    assert!(
        whole.ends_with(&TrickleOrigin::body(4, 16)),
        "the transfer was cut: {:?}",
        text(&whole)
    );
    let exit = edge.wait_exit(LIMIT).await.expect("the edge exits");
    assert!(exit.success(), "{exit}\n{}", edge.output());
}

/// `tunnel delete` while a connector is connected: the running edge closes its connections
/// and refuses it from then on, saying the tunnel was deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_delete_disconnects_its_connectors() {
    let home = EdgeHome::create_with_admin(&network_bindings(&["net"]));
    let _edge = home.start().await;
    let admin_addr = home.admin_addr().expect("an admin listener");
    let connector = connector(home.token(), home.quic_addr(), "127.20.72.0/24");
    wait_listed(admin_addr, &connector).await;

    let output = cli(&home, &["tunnel", "delete", TUNNEL]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(output.stdout.is_empty(), "nothing on stdout");
    let message = wait_refused_for(&connector, RefuseReason::UnknownTunnel, "was deleted").await;
    assert!(message.contains(TUNNEL), "{message}");
    let (status, _) = admin::get_json(admin_addr, &format!("/v1/tunnels/{TUNNEL}"))
        .await
        .expect("an answer");
    assert_eq!(status, 404);
    let again = cli(&home, &["tunnel", "delete", TUNNEL]).await;
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
}

/// `tunnel rotate-secret` prints a new token: the connector on the old one is disconnected
/// and refused with a reason naming the rotation; one on the new token serves the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_secret_refuses_the_old_token() {
    let origin = TrickleOrigin::start(ip("127.20.73.1"), 1, 16, Duration::ZERO).await;
    let home = EdgeHome::create_with_admin(&network_bindings(&["net"]));
    let edge = home.start().await;
    let admin_addr = home.admin_addr().expect("an admin listener");
    let old = connector(home.token(), home.quic_addr(), "127.20.73.0/24");
    wait_listed(admin_addr, &old).await;

    let output = cli(&home, &["tunnel", "rotate-secret", TUNNEL]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let token = TunnelToken::decode(text(&output.stdout).trim()).expect("a token on stdout");
    assert_eq!(token.tunnel_id, home.token().tunnel_id, "same tunnel");
    assert_ne!(token.secret, home.token().secret, "a new secret");

    let message = wait_refused_for(&old, RefuseReason::BadProof, "rotated").await;
    assert!(message.contains("new token"), "{message}");
    let new = connector(token, home.quic_addr(), "127.20.73.0/24");
    wait_listed(admin_addr, &new).await;
    let response = fetch(edge.binding_addr("net"), origin.addr(), "/").await;
    assert_eq!(response.status, 200, "{}", response.text());
    // The old connector is still refused: it never shows up again.
    assert!(old
        .states()
        .iter()
        .all(|s| !matches!(s, ConnectionState::Registered { .. })));
}

/// `tunnel info` asks the running edge and prints the connectors, each connection with its
/// transport; without `[admin]` it says what to configure (64), and with the edge stopped that
/// it is not running (1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_info_prints_the_connectors() {
    let home = EdgeHome::create_with_admin(&network_bindings(&["net"]));
    let mut edge = home.start().await;
    let admin_addr = home.admin_addr().expect("an admin listener");
    let connector = connector(home.token(), home.quic_addr(), "127.20.74.0/24");
    wait_listed(admin_addr, &connector).await;
    // A second connector on HTTP/2 (the edge's TCP listener shares the QUIC port number).
    let mut config = ConnectorConfig::builder(home.token())
        .edge_addresses(&[home.quic_addr().to_string()])
        .route("127.20.75.0/24")
        .build()
        .expect("a valid connector config");
    config.protocol = ProtocolChoice::Http2;
    let on_http2 = Connector::start(config).expect("the connector starts");
    wait_listed(admin_addr, &on_http2).await;

    let output = cli(&home, &["tunnel", "info", TUNNEL]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    assert!(table.contains("version "), "{table}");
    assert!(table.contains("PROTOCOL"), "{table}");
    for (handle, route, protocol) in [
        (&connector, "127.20.74.0/24", "quic"),
        (&on_http2, "127.20.75.0/24", "http2"),
    ] {
        let id = hex::encode(handle.connector_id().0);
        let section = table
            .split("\nconnector ")
            .find(|section| section.starts_with(&id))
            .unwrap_or_else(|| panic!("no section for connector {id}:\n{table}"));
        assert!(section.contains(&format!("routes: {route}")), "{table}");
        // A connection row: INDEX CONNECTION REMOTE PROTOCOL CONNECTED-SINCE STATE STREAMS.
        let protocols: Vec<&str> = section
            .lines()
            .filter(|l| l.trim_end().ends_with(" 0") && l.contains(" live "))
            .map(|l| l.split_whitespace().nth(3).unwrap_or(""))
            .collect();
        assert_eq!(
            protocols,
            vec![protocol; handle.states().len()],
            "one row per connection, each on {protocol}:\n{table}"
        );
    }

    let unknown = cli(&home, &["tunnel", "info", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown.stderr));

    edge.kill();
    let down = cli(&home, &["tunnel", "info", TUNNEL]).await;
    assert_eq!(down.status.code(), Some(1));
    assert!(
        text(&down.stderr).contains("running"),
        "{}",
        text(&down.stderr)
    );

    let config = home.dir().join("edge.toml");
    let without_admin = std::fs::read_to_string(&config)
        .expect("edge.toml")
        .replace("[admin]", "[timeouts]")
        .replace(&format!("listen = \"{admin_addr}\""), "");
    std::fs::write(&config, without_admin).expect("rewrite edge.toml");
    let unconfigured = cli(&home, &["tunnel", "info", TUNNEL]).await;
    assert_eq!(unconfigured.status.code(), Some(64));
    assert!(
        text(&unconfigured.stderr).contains("no admin listener"),
        "{}",
        text(&unconfigured.stderr)
    );
}

/// SIGHUP applies the file's bindings: a new one listens and works, a removed one refuses new
/// connections while a `CONNECT` pipe opened on it before keeps working to its clean end, a
/// kept one keeps its address. Then a broken file is refused and the running bindings stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_bindings() {
    let echo = EchoServer::start(ip("127.20.75.1"));
    let home = EdgeHome::create_with_admin(&network_bindings(&["old", "kept"]));
    let edge = home.start().await;
    let admin_addr = home.admin_addr().expect("an admin listener");
    let connector = connector(home.token(), home.quic_addr(), "127.20.75.0/24");
    wait_listed(admin_addr, &connector).await;
    let (old, kept) = (edge.binding_addr("old"), edge.binding_addr("kept"));

    let (status, _, mut pipe) = connect(old, echo.addr()).await;
    assert_eq!(status, 200);
    round_trip(&mut pipe, b"before the reload").await;

    // The same file with `old` replaced by `new`.
    let config = home.dir().join("edge.toml");
    let original = std::fs::read_to_string(&config).expect("edge.toml");
    let reloaded = original.replace("name = \"old\"", "name = \"new\"");
    assert_ne!(reloaded, original);
    std::fs::write(&config, &reloaded).expect("rewrite edge.toml");
    signal(&edge, nix::sys::signal::Signal::SIGHUP);
    let log = wait_log(&edge, "configuration reloaded", 1).await;
    let new = logged_binding_addr(&log, "new").expect("the new binding's address in the log");

    let (status, _, mut fresh) = connect(new, echo.addr()).await;
    assert_eq!(status, 200, "the new binding serves");
    round_trip(&mut fresh, b"through the new binding").await;
    wait_refused(old).await;
    let (status, _, mut still) = connect(kept, echo.addr()).await;
    assert_eq!(status, 200, "the kept binding keeps its address");
    round_trip(&mut still, b"kept").await;
    // The pipe opened on the removed binding is intact and ends cleanly.
    round_trip(&mut pipe, b"after the reload, on the removed binding").await;
    pipe.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, pipe.read_to_end(&mut rest))
        .await
        .expect("the end in time")
        .expect("a clean end, not a reset");
    assert!(rest.is_empty(), "{rest:?}");
    let (status, ready) = admin::get_json(admin_addr, "/ready").await.expect("/ready");
    assert_eq!((status, ready["listeners"].as_u64()), (200, Some(3)));

    // A broken file: refused, logged, nothing changes.
    std::fs::write(
        &config,
        format!("{reloaded}\n[[binding]]\nname = \"bad\"\n"),
    )
    .expect("rewrite edge.toml");
    signal(&edge, nix::sys::signal::Signal::SIGHUP);
    wait_log(&edge, "reload refused", 1).await;
    // A file that parses but does not validate: refused too.
    std::fs::write(
        &config,
        reloaded.replace(
            "network = \"net\"\n\n[[binding]]\nname = \"kept\"",
            "network = \"nope\"\n\n[[binding]]\nname = \"kept\"",
        ),
    )
    .expect("rewrite edge.toml");
    signal(&edge, nix::sys::signal::Signal::SIGHUP);
    let log = wait_log(&edge, "reload refused", 2).await;
    assert!(log.contains("nope"), "the reason names the entry:\n{log}");
    for binding in [new, kept] {
        let (status, _, mut check) = connect(binding, echo.addr()).await;
        assert_eq!(
            status, 200,
            "the running bindings stay after a refused reload"
        );
        round_trip(&mut check, b"still here").await;
    }
    wait_refused(old).await;
}

/// A second SIGTERM during the drain exits at once, with status 1, saying so; the first one
/// alone would wait for the transfer in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let slow = TrickleOrigin::start(ip("127.20.76.1"), 4, 16, Duration::from_millis(50)).await;
    let home = EdgeHome::create_with_admin(&network_bindings(&["net"]));
    let mut edge = home.start().await;
    let admin_addr = home.admin_addr().expect("an admin listener");
    let connector = connector(home.token(), home.quic_addr(), "127.20.76.0/24");
    wait_listed(admin_addr, &connector).await;

    let mut transfer = TcpStream::connect(edge.binding_addr("net"))
        .await
        .expect("connect the binding");
    let request = format!(
        "GET http://{0}/slow HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        slow.addr()
    );
    transfer.write_all(request.as_bytes()).await.expect("send");
    let mut first = [0u8; 1];
    tokio::time::timeout(LIMIT, transfer.read_exact(&mut first))
        .await
        .expect("the head in time")
        .expect("read the head");
    signal(&edge, nix::sys::signal::Signal::SIGTERM);
    // The drain has begun (the body is held back by the origin, so it cannot end).
    wait_log(&edge, "shutting down", 1).await;
    signal(&edge, nix::sys::signal::Signal::SIGINT);
    let exit = edge.wait_exit(LIMIT).await.expect("the edge exits");
    assert_eq!(exit.code(), Some(1), "{}", edge.output());
    assert!(
        edge.log().contains("second signal: exiting at once"),
        "{}",
        edge.output()
    );
}

/// `--log-format json` writes one JSON object a line; an unknown format is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json() {
    let home = EdgeHome::create(&network_bindings(&["net"]));
    let config = home.dir().join("edge.toml");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(edge_binary())
            .args(["--log-format", "json", "--config"])
            .arg(config)
            .args(["tunnel", "create", "json-logs"])
            .env("RUST_LOG", "info")
            .output()
            .expect("run underpass-edge")
    })
    .await
    .expect("the CLI thread");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let line = text(&output.stderr)
        .lines()
        .find(|l| l.contains("created tunnel"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no log line: {}", text(&output.stderr)));
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(json["fields"]["message"], "created tunnel", "{json}");
    assert_eq!(json["level"], "INFO", "{json}");
    let token = text(&output.stdout);
    let secret = hex::encode(TunnelToken::decode(token.trim()).expect("a token").secret.0);
    assert!(
        !text(&output.stderr).contains(&secret),
        "the secret must not be logged"
    );

    let bad = cli(&home, &["--log-format", "xml", "tunnel", "list"]).await;
    assert_eq!(bad.status.code(), Some(64), "{}", text(&bad.stderr));
}
