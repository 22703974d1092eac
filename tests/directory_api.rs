//! The edge's directory API (issue 14) against the real `underpass-edge` binary: tokens made
//! with `underpass-edge token create` on its state directory, objects created over HTTP on its
//! admin listener, connectors and origins on loopback.
//!
//! - every role rule, with the 401 / 403 / 404 statuses and messages: Read reads but never a
//!   secret; Bind binds services and networks by network id but not a tunnel id; Admin does
//!   everything; another account's objects are 404;
//! - validation of the public service shapes, naming the field;
//! - a binding created through the API serves `fetch()` at once, a changed service is what the
//!   next request reaches, and deleting a binding refuses new connections while a transfer
//!   already running completes; deleting a tunnel disconnects its connector;
//! - the config file's objects are served beside the API's;
//! - objects survive a restart of the edge;
//! - a network spanning the account's tunnels sends each destination to the tunnel whose
//!   connectors announce it, and refuses what none announces.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underpass_connector::{ConnectionState, Connector, ConnectorConfig, ConnectorHandle};
use underpass_e2e::admin;
use underpass_e2e::edge_home::{EdgeHome, EdgeRun};
use underpass_e2e::edge_process::edge_binary;
use underpass_e2e::edge_process::TUNNEL;
use underpass_e2e::http1::{self, Response};
use underpass_e2e::{Behaviour, EchoServer, TrickleOrigin};
use underpass_proto::{RefuseReason, TunnelToken};

/// Guards a hang only.
const LIMIT: Duration = Duration::from_secs(30);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test IP")
}

/// `underpass-edge --config <home>/edge.toml ARGS...`, to completion.
async fn cli(home: &EdgeHome, args: &[&str]) -> Output {
    let config = home.config_path().to_path_buf();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(edge_binary())
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("UNDERPASS_API")
            .env_remove("UNDERPASS_API_CA")
            .env_remove("UNDERPASS_API_TOKEN")
            .env_remove("UNDERPASS_ACCOUNT")
            .output()
            .expect("run underpass-edge")
    })
    .await
    .expect("the CLI thread")
}

/// A token made on the edge host: `token create --account A --role R`.
async fn host_token(home: &EdgeHome, account: &str, role: &str) -> String {
    let output = cli(
        home,
        &["token", "create", "--account", account, "--role", role],
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(token.starts_with("upa1_"), "{token}");
    token
}

/// The API of one edge, as one account's token sees it.
struct Client {
    addr: SocketAddr,
    account: String,
    token: Option<String>,
}

impl Client {
    fn new(edge: &EdgeRun, account: &str, token: &str) -> Client {
        Client {
            addr: edge.admin_addr().expect("an admin listener"),
            account: account.into(),
            token: Some(token.into()),
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/accounts/{}/{rest}", self.account)
    }

    async fn call(&self, method: &str, rest: &str, body: Option<Value>) -> (u16, Value) {
        admin::api(
            self.addr,
            method,
            &self.path(rest),
            self.token.as_deref(),
            body.as_ref(),
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {rest}: {e:#}"))
    }

    /// A call that must succeed: its `result`.
    async fn ok(&self, method: &str, rest: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method, rest, body).await;
        assert_eq!(status, 200, "{method} {rest}: {answer}");
        assert_eq!(answer["success"], true, "{answer}");
        answer["result"].clone()
    }

    /// A call that must fail with `status`: the first error's message.
    async fn refused(&self, method: &str, rest: &str, body: Option<Value>, status: u16) -> String {
        let (got, answer) = self.call(method, rest, body).await;
        assert_eq!(got, status, "{method} {rest}: {answer}");
        assert_eq!(answer["success"], false, "{answer}");
        answer["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

const SERVICES: &str = "connectivity/directory/services";
const NETWORKS: &str = "connectivity/directory/networks";
const BINDINGS: &str = "connectivity/directory/bindings";
const TUNNELS: &str = "connectivity/tunnels";

fn id_of(result: &Value, key: &str) -> String {
    result[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {result}"))
        .to_owned()
}

/// An in-process connector on the API tunnel whose token is `token`, routing `route`.
async fn connector(token: &str, route: &str) -> ConnectorHandle {
    let token = TunnelToken::decode(token).expect("the API returned a connector token");
    connector_of(token, route).await
}

/// An in-process connector of `token`, routing `route`, once registered.
async fn connector_of(token: TunnelToken, route: &str) -> ConnectorHandle {
    let config = ConnectorConfig::builder(token)
        .route(route)
        .connections(1)
        .reconnect(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .expect("a valid connector config");
    let handle = Connector::start(config).expect("the connector starts");
    handle
        .wait_registered(LIMIT)
        .await
        .expect("the connector registers on the API's tunnel");
    handle
}

async fn fetch(proxy: SocketAddr, url: &str) -> Response {
    let stream = TcpStream::connect(proxy)
        .await
        .expect("connect the binding");
    let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tokio::time::timeout(LIMIT, http1::exchange(stream, request.as_bytes()))
        .await
        .expect("an answer in time")
        .expect("an HTTP answer")
}

fn addr_of(binding: &Value) -> SocketAddr {
    binding["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the binding listens: {binding}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_what_each_token_may_do() {
    let home = EdgeHome::create_with_admin("");
    let admin_token = host_token(&home, "acme", "admin").await;
    let other_token = host_token(&home, "other", "admin").await;
    let edge = home.start().await;
    let admin = Client::new(&edge, "acme", &admin_token);

    // 401: no token, a wrong one, one in the wrong form.
    let mut nobody = Client::new(&edge, "acme", "");
    nobody.token = None;
    let message = nobody.refused("GET", SERVICES, None, 401).await;
    assert!(message.contains("Authorization: Bearer"), "{message}");
    let forged = Client::new(
        &edge,
        "acme",
        "upa1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    let message = forged.refused("GET", SERVICES, None, 401).await;
    assert!(message.contains("not valid"), "{message}");

    // The Admin token makes the others through the API; each is shown once.
    let read = admin
        .ok(
            "POST",
            "tokens",
            Some(json!({"name": "dash", "role": "read"})),
        )
        .await;
    let bind = admin
        .ok(
            "POST",
            "tokens",
            Some(json!({"name": "ci", "role": "bind"})),
        )
        .await;
    let listed = admin.ok("GET", "tokens", None).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    assert!(
        !listed.to_string().contains("upa1_"),
        "a list never shows a token: {listed}"
    );
    let read = Client::new(&edge, "acme", read["token"].as_str().expect("shown once"));
    let bind = Client::new(&edge, "acme", bind["token"].as_str().expect("shown once"));

    // Admin: a tunnel (its connector token shown once), a service, networks.
    let tunnel = admin
        .ok("POST", TUNNELS, Some(json!({"name": "prod"})))
        .await;
    let tunnel_id = id_of(&tunnel, "id");
    assert!(
        tunnel["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("upt1_")),
        "{tunnel}"
    );
    let service = admin
        .ok(
            "POST",
            SERVICES,
            Some(json!({"name": "web", "type": "http",
                "host": {"ipv4": "127.21.1.1", "network": {"tunnel_id": tunnel_id}}})),
        )
        .await;
    let service_id = id_of(&service, "service_id");
    assert_eq!(
        (service["http_port"].clone(), service["https_port"].clone()),
        (json!(80), json!(443))
    );
    let network = admin
        .ok(
            "POST",
            NETWORKS,
            Some(json!({"name": "corp", "tunnel_id": tunnel_id})),
        )
        .await;
    let network_id = id_of(&network, "network_id");

    // Read: lists and reads, never a secret; writes nothing.
    let tunnels = read.ok("GET", TUNNELS, None).await;
    assert_eq!(tunnels[0]["name"], "prod");
    let seen = read
        .ok("GET", &format!("{TUNNELS}/{tunnel_id}"), None)
        .await;
    assert!(
        seen.get("token").is_none() && seen.get("secret").is_none(),
        "{seen}"
    );
    let message = read
        .refused("GET", &format!("{TUNNELS}/{tunnel_id}/token"), None, 403)
        .await;
    assert!(message.contains("needs the admin role"), "{message}");
    assert_eq!(
        read.ok("GET", SERVICES, None)
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let message = read
        .refused("POST", SERVICES, Some(json!({"name": "x"})), 403)
        .await;
    assert!(
        message.contains("needs the admin role") && message.contains("has the read role"),
        "{message}"
    );
    let message = read
        .refused(
            "POST",
            BINDINGS,
            Some(json!({"name": "B", "service_id": service_id})),
            403,
        )
        .await;
    assert!(message.contains("needs the bind role"), "{message}");
    read.refused("GET", "tokens", None, 403).await;

    // Bind: binds a service and a network by network id, not a tunnel id; nothing else.
    let to_service = bind
        .ok(
            "POST",
            BINDINGS,
            Some(json!({"name": "WEB", "service_id": service_id})),
        )
        .await;
    let to_network = bind
        .ok(
            "POST",
            BINDINGS,
            Some(json!({"name": "CORP", "network_id": network_id})),
        )
        .await;
    let message = bind
        .refused(
            "POST",
            BINDINGS,
            Some(json!({"name": "RAW", "tunnel_id": tunnel_id})),
            403,
        )
        .await;
    assert!(
        message.contains("needs the admin role") && message.contains("by network id"),
        "{message}"
    );
    let message = bind
        .refused("DELETE", &format!("{SERVICES}/{service_id}"), None, 403)
        .await;
    assert!(message.contains("needs the admin role"), "{message}");
    bind.refused("POST", TUNNELS, Some(json!({"name": "t"})), 403)
        .await;
    let raw = admin
        .ok(
            "POST",
            BINDINGS,
            Some(json!({"name": "RAW", "tunnel_id": tunnel_id})),
        )
        .await;
    let raw_id = id_of(&raw, "binding_id");
    let message = bind
        .refused("DELETE", &format!("{BINDINGS}/{raw_id}"), None, 403)
        .await;
    assert!(message.contains("needs the admin role"), "{message}");
    bind.ok(
        "DELETE",
        &format!("{BINDINGS}/{}", id_of(&to_network, "binding_id")),
        None,
    )
    .await;
    read.refused(
        "DELETE",
        &format!("{BINDINGS}/{}", id_of(&to_service, "binding_id")),
        None,
        403,
    )
    .await;

    // In use: a service with a binding, a tunnel with a service, are not deleted.
    let message = admin
        .refused("DELETE", &format!("{SERVICES}/{service_id}"), None, 409)
        .await;
    assert!(message.contains("still used by binding"), "{message}");
    let message = admin
        .refused("DELETE", &format!("{TUNNELS}/{tunnel_id}"), None, 409)
        .await;
    assert!(message.contains("still used by"), "{message}");
    // Names are unique per account.
    let message = admin
        .refused("POST", TUNNELS, Some(json!({"name": "prod"})), 409)
        .await;
    assert!(message.contains("already exists"), "{message}");

    // Another account: acme's objects are 404 to it, by its own path and by acme's.
    let other = Client::new(&edge, "other", &other_token);
    other
        .refused("GET", &format!("{SERVICES}/{service_id}"), None, 404)
        .await;
    assert_eq!(other.ok("GET", SERVICES, None).await, json!([]));
    let intruder = Client {
        account: "acme".into(),
        ..Client::new(&edge, "other", &other_token)
    };
    intruder.refused("GET", SERVICES, None, 404).await;
    intruder
        .refused("DELETE", &format!("{SERVICES}/{service_id}"), None, 404)
        .await;
    // Other's tunnel cannot be used by acme's service.
    let theirs = other
        .ok("POST", TUNNELS, Some(json!({"name": "prod"})))
        .await;
    let message = admin
        .refused(
            "POST",
            SERVICES,
            Some(json!({"name": "sneaky", "type": "tcp", "tcp_port": 22,
                "host": {"ipv4": "127.21.1.2", "network": {"tunnel_id": id_of(&theirs, "id")}}})),
            400,
        )
        .await;
    assert!(message.contains("host.network.tunnel_id"), "{message}");

    // Every decision is logged.
    let log = edge.log();
    assert!(log.contains("api decision"), "{log}");
    assert!(log.contains("allowed=false"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_bodies_are_validated_naming_the_field() {
    let home = EdgeHome::create_with_admin("");
    let token = host_token(&home, "acme", "admin").await;
    let edge = home.start().await;
    let admin = Client::new(&edge, "acme", &token);
    let tunnel = id_of(
        &admin.ok("POST", TUNNELS, Some(json!({"name": "t"}))).await,
        "id",
    );
    let ip_host = json!({"ipv4": "127.21.2.1", "network": {"tunnel_id": tunnel}});
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"name": "a", "type": "http", "host": ip_host, "colour": "red"}),
            "colour",
        ),
        (
            json!({"name": "a", "type": "http",
            "host": {"ipv4": "127.21.2.1", "network": {"tunnel_id": tunnel, "x": 1}}}),
            "x",
        ),
        (json!({"name": "a", "type": "ftp", "host": ip_host}), "type"),
        (
            json!({"name": "a", "type": "http", "host": {"ipv4": "127.21.2.1", "hostname": "db.corp",
            "network": {"tunnel_id": tunnel}}}),
            "host",
        ),
        (
            json!({"name": "a", "type": "http", "host": {"ipv4": "127.21.2.1"}}),
            "host.network",
        ),
        (
            json!({"name": "a", "type": "http", "host": {"ipv4": "1.2.3", "network": {"tunnel_id": tunnel}}}),
            "host.ipv4",
        ),
        (
            json!({"name": "a", "type": "http", "host": {"ipv6": "fe80::1%eth0", "network": {"tunnel_id": tunnel}}}),
            "host.ipv6",
        ),
        (
            json!({"name": "a", "type": "http",
            "host": {"hostname": "https://db.corp", "resolver_network": {"tunnel_id": tunnel}}}),
            "host.hostname",
        ),
        (
            json!({"name": "a", "type": "http",
            "host": {"hostname": "db.corp:5432", "resolver_network": {"tunnel_id": tunnel}}}),
            "host.hostname",
        ),
        (
            json!({"name": "a", "type": "http",
            "host": {"hostname": "db.corp/x", "resolver_network": {"tunnel_id": tunnel}}}),
            "host.hostname",
        ),
        (
            json!({"name": "a", "type": "http",
            "host": {"hostname": "db corp", "resolver_network": {"tunnel_id": tunnel}}}),
            "host.hostname",
        ),
        (
            json!({"name": "a", "type": "http",
            "host": {"hostname": "127.21.2.9", "resolver_network": {"tunnel_id": tunnel}}}),
            "host.hostname",
        ),
        (
            json!({"name": "a", "type": "http",
            "host": {"hostname": format!("{}.corp", "a".repeat(250)), "resolver_network": {"tunnel_id": tunnel}}}),
            "host.hostname",
        ),
        (
            json!({"name": "a", "type": "http", "host": ip_host, "http_port": 0}),
            "http_port",
        ),
        (
            json!({"name": "a", "type": "http", "host": ip_host, "https_port": 65536}),
            "https_port",
        ),
        (
            json!({"name": "a", "type": "tcp", "host": ip_host}),
            "tcp_port",
        ),
        (
            json!({"name": "a", "type": "http", "host": ip_host, "tcp_port": 22}),
            "tcp_port",
        ),
        (
            json!({"name": "a", "type": "http", "host": ip_host,
            "tls_settings": {"cert_verification_mode": "maybe"}}),
            "tls_settings.cert_verification_mode",
        ),
        (
            json!({"name": "a", "type": "http",
            "host": {"ipv4": "127.21.2.1", "network": {"tunnel_id": "not-a-uuid"}}}),
            "host.network.tunnel_id",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = admin.call("POST", SERVICES, Some(body.clone())).await;
        assert_eq!(status, 400, "{body} → {answer}");
        let errors = answer["errors"].to_string();
        assert!(
            errors.contains(field),
            "{body}: the error names {field}: {errors}"
        );
    }
    // Nothing was stored.
    assert_eq!(admin.ok("GET", SERVICES, None).await, json!([]));
    // The shapes that are right are accepted: dual stack, a hostname with resolvers, tcp.
    for body in [
        json!({"name": "dual", "type": "http", "host": {"ipv4": "127.21.2.1", "ipv6": "::1",
            "network": {"tunnel_id": tunnel}}}),
        json!({"name": "named", "type": "http", "host": {"hostname": "DB.Corp.", "resolver_network":
            {"tunnel_id": tunnel, "resolver_ips": ["127.21.2.53"]}}, "https_port": 8443}),
        json!({"name": "pg", "type": "tcp", "tcp_port": 5432, "app_protocol": "postgresql",
            "host": ip_host}),
    ] {
        admin.ok("POST", SERVICES, Some(body)).await;
    }
    let named = admin.ok("GET", SERVICES, None).await;
    assert!(
        named.to_string().contains("\"db.corp\""),
        "the hostname is normalised: {named}"
    );
}

/// A binding made through the API serves at once; deleting it refuses new connections while
/// a running transfer finishes; the objects survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bindings_and_a_restart() {
    let origin = TrickleOrigin::start(ip("127.21.3.1"), 1, 16, Duration::ZERO).await;
    let echo = EchoServer::start_with(ip("127.21.3.2"), Behaviour::Echo);
    let home = EdgeHome::create_with_admin("");
    let token = host_token(&home, "acme", "admin").await;
    let mut edge = home.start().await;
    let admin = Client::new(&edge, "acme", &token);
    let tunnel = admin
        .ok("POST", TUNNELS, Some(json!({"name": "prod"})))
        .await;
    let tunnel_id = id_of(&tunnel, "id");
    let _connector = connector(tunnel["token"].as_str().expect("a token"), "127.21.3.0/24").await;
    let service = admin
        .ok(
            "POST",
            SERVICES,
            Some(
                json!({"name": "web", "type": "http", "http_port": origin.addr().port(),
                "host": {"ipv4": "127.21.3.1", "network": {"tunnel_id": tunnel_id}}}),
            ),
        )
        .await;
    let web = admin
        .ok(
            "POST",
            BINDINGS,
            Some(json!({"name": "WEB", "service_id": id_of(&service, "service_id")})),
        )
        .await;
    let response = fetch(addr_of(&web), "http://web/").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.body, TrickleOrigin::body(1, 16));
    // A changed service (another host and port) is what the next request reaches.
    let moved = TrickleOrigin::start(ip("127.21.3.3"), 2, 16, Duration::ZERO).await;
    moved.release();
    admin
        .ok(
            "PUT",
            &format!("{SERVICES}/{}", id_of(&service, "service_id")),
            Some(
                json!({"name": "web", "type": "http", "http_port": moved.addr().port(),
                "host": {"ipv4": "127.21.3.3", "network": {"tunnel_id": tunnel_id}}}),
            ),
        )
        .await;
    let response = fetch(addr_of(&web), "http://web/").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.body,
        TrickleOrigin::body(2, 16),
        "the updated service's origin answered"
    );

    let network = admin
        .ok(
            "POST",
            NETWORKS,
            Some(json!({"name": "corp", "tunnel_id": tunnel_id})),
        )
        .await;
    let corp = admin
        .ok(
            "POST",
            BINDINGS,
            Some(json!({"name": "CORP", "network_id": id_of(&network, "network_id")})),
        )
        .await;
    let corp_addr = addr_of(&corp);
    // A pipe running through the binding while it is deleted.
    let mut pipe = TcpStream::connect(corp_addr).await.expect("the binding");
    pipe.write_all(format!("CONNECT {} HTTP/1.1\r\nHost: x\r\n\r\n", echo.addr()).as_bytes())
        .await
        .expect("send");
    let mut head = vec![0u8; 256];
    let n = pipe.read(&mut head).await.expect("the answer");
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    admin
        .ok(
            "DELETE",
            &format!("{BINDINGS}/{}", id_of(&corp, "binding_id")),
            None,
        )
        .await;
    // The listener closes as its task sees the stop (a few milliseconds).
    let deadline = tokio::time::Instant::now() + LIMIT;
    while TcpStream::connect(corp_addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a deleted binding accepts no new connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let payload = vec![7u8; 1 << 20];
    let (mut read, mut write) = pipe.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        write
            .write_all(&sent)
            .await
            .expect("the pipe still takes bytes");
        write.shutdown().await.expect("half-close");
    });
    let mut back = Vec::new();
    tokio::time::timeout(LIMIT, read.read_to_end(&mut back))
        .await
        .expect("the transfer completes")
        .expect("a clean end");
    writer.await.expect("the writer");
    assert_eq!(back, payload, "the running transfer completed intact");

    // A restart keeps every object, and the binding serves again.
    edge.kill();
    drop(edge);
    let edge = home.start().await;
    let admin = Client::new(&edge, "acme", &token);
    let bindings = admin.ok("GET", BINDINGS, None).await;
    assert_eq!(bindings.as_array().map(Vec::len), Some(1), "{bindings}");
    // The connector redials the restarted edge on its own (the tunnel came back from the
    // database): wait until the edge lists it.
    let status_path = format!("/v1/tunnels/{}", tunnel_id.replace('-', ""));
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (status, info) = admin::get_json(admin.addr, &status_path)
            .await
            .expect("the tunnel status");
        assert_eq!(status, 200, "{info}");
        if info["connectors"].as_array().is_some_and(|c| !c.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connector re-registers: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bindings[0]["name"], "WEB");
    let response = fetch(addr_of(&bindings[0]), "http://web/").await;
    assert_eq!(response.status, 200, "{}", response.text());
    let mode = std::fs::metadata(home.dir().join("state").join("directory.db"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("the database file");
    assert_eq!(mode, 0o600);
}

/// Deleting a tunnel through the API disconnects its connector: its connection closes, and
/// every later registration is refused as an unknown tunnel. A tunnel a network still uses is
/// refused with 409 first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tunnel_disconnects_its_connectors() {
    let echo = EchoServer::start_with(ip("127.21.8.1"), Behaviour::Echo);
    let home = EdgeHome::create_with_admin("");
    let token = host_token(&home, "acme", "admin").await;
    let edge = home.start().await;
    let admin = Client::new(&edge, "acme", &token);
    let tunnel = admin
        .ok("POST", TUNNELS, Some(json!({"name": "doomed"})))
        .await;
    let tunnel_id = id_of(&tunnel, "id");
    let connector = connector(tunnel["token"].as_str().expect("a token"), "127.21.8.0/24").await;
    let network = admin
        .ok(
            "POST",
            NETWORKS,
            Some(json!({"name": "doomed-net", "tunnel_id": tunnel_id})),
        )
        .await;
    let binding = admin
        .ok(
            "POST",
            BINDINGS,
            Some(json!({"name": "DOOMED", "network_id": id_of(&network, "network_id")})),
        )
        .await;
    let proxy = addr_of(&binding);
    let answer = http1::connect(proxy, &echo.addr().to_string(), LIMIT).await;
    assert_eq!(answer.status, 200, "{}", answer.head);

    // A tunnel a network still uses is not deleted (409), and its connector stays.
    let message = admin
        .refused("DELETE", &format!("{TUNNELS}/{tunnel_id}"), None, 409)
        .await;
    assert!(message.contains("still used by"), "{message}");
    let answer = http1::connect(proxy, &echo.addr().to_string(), LIMIT).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    admin
        .ok(
            "DELETE",
            &format!("{BINDINGS}/{}", id_of(&binding, "binding_id")),
            None,
        )
        .await;
    admin
        .ok(
            "DELETE",
            &format!("{NETWORKS}/{}", id_of(&network, "network_id")),
            None,
        )
        .await;
    assert!(
        connector
            .states()
            .iter()
            .any(|s| matches!(s, ConnectionState::Registered { .. })),
        "{:?}",
        connector.states()
    );
    admin
        .ok("DELETE", &format!("{TUNNELS}/{tunnel_id}"), None)
        .await;
    let states = connector
        .wait_for(LIMIT, |states| {
            states.iter().all(|s| {
                matches!(
                    s,
                    ConnectionState::Refused {
                        reason: RefuseReason::UnknownTunnel,
                        ..
                    }
                )
            })
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the connector is disconnected and refused: {e:?} {:?}",
                connector.states()
            )
        });
    assert!(!states.is_empty());
    // The edge lists no connector for it; its status is gone with it.
    let status_path = format!("/v1/tunnels/{}", tunnel_id.replace('-', ""));
    let (status, info) = admin::get_json(admin.addr, &status_path)
        .await
        .expect("the tunnel status");
    assert_eq!(status, 404, "{info}");
    let (status, _) = admin
        .call("GET", &format!("{TUNNELS}/{tunnel_id}"), None)
        .await;
    assert_eq!(status, 404);
}

/// The config file's network and binding (on the `tunnels.json` tunnel) and the API's (on an
/// API tunnel) are served side by side by one edge: each binding reaches its own connector's
/// subnet, the API does not list the file's objects, and the file's binding keeps its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_and_api_objects_are_served_side_by_side() {
    let file_echo = EchoServer::start_with(ip("127.21.9.1"), Behaviour::Echo);
    let api_echo = EchoServer::start_with(ip("127.21.10.1"), Behaviour::Echo);
    let home = EdgeHome::create_with_admin(&format!(
        "[[network]]\nname = \"files\"\ntunnel = \"{TUNNEL}\"\n\n\
         [[binding]]\nname = \"FILE\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"files\"\n"
    ));
    let token = host_token(&home, "acme", "admin").await;
    let edge = home.start().await;
    let admin = Client::new(&edge, "acme", &token);
    let _file_connector = connector_of(home.token(), "127.21.9.0/24").await;
    let tunnel = admin
        .ok("POST", TUNNELS, Some(json!({"name": "api"})))
        .await;
    let _api_connector =
        connector(tunnel["token"].as_str().expect("a token"), "127.21.10.0/24").await;
    let network = admin
        .ok(
            "POST",
            NETWORKS,
            Some(json!({"name": "files", "tunnel_id": id_of(&tunnel, "id")})),
        )
        .await;
    let binding = admin
        .ok(
            "POST",
            BINDINGS,
            Some(json!({"name": "FILE", "network_id": id_of(&network, "network_id")})),
        )
        .await;
    let file_proxy = edge.binding_addr("FILE");
    let api_proxy = addr_of(&binding);
    assert_ne!(file_proxy, api_proxy);
    for (proxy, reached, other) in [
        (file_proxy, &file_echo, &api_echo),
        (api_proxy, &api_echo, &file_echo),
    ] {
        let answer = http1::connect(proxy, &reached.addr().to_string(), LIMIT).await;
        assert_eq!(
            answer.status,
            200,
            "{proxy} -> {}: {}",
            reached.addr(),
            answer.head
        );
        // The other subnet is the other tunnel's: this binding's connector does not route it.
        let answer = http1::connect(proxy, &other.addr().to_string(), LIMIT).await;
        assert_eq!(
            answer.status,
            502,
            "{proxy} -> {}: {}",
            other.addr(),
            answer.head
        );
    }
    // Only the API's objects are listed, under the names they were given.
    let networks = admin.ok("GET", NETWORKS, None).await;
    assert_eq!(networks.as_array().map(Vec::len), Some(1), "{networks}");
    let tunnels = admin.ok("GET", TUNNELS, None).await;
    let names: Vec<&str> = tunnels
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["api"], "{tunnels}");
    // The file's tunnel keeps its own status beside the API's.
    let (status, info) = admin::get_json(admin.addr, &format!("/v1/tunnels/{TUNNEL}"))
        .await
        .expect("the file tunnel's status");
    assert_eq!(status, 200, "{info}");
}

/// A network without a tunnel id spans the account's tunnels: each destination goes to the
/// tunnel announcing it; one nobody announces is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_id_spans_the_accounts_tunnels() {
    let east = EchoServer::start_with(ip("127.21.4.1"), Behaviour::Echo);
    let west = EchoServer::start_with(ip("127.21.5.1"), Behaviour::Echo);
    let west_web = TrickleOrigin::start(ip("127.21.5.2"), 1, 16, Duration::ZERO).await;
    let home = EdgeHome::create_with_admin("");
    let token = host_token(&home, "acme", "admin").await;
    let edge = home.start().await;
    let admin = Client::new(&edge, "acme", &token);
    let a = admin
        .ok("POST", TUNNELS, Some(json!({"name": "east"})))
        .await;
    let b = admin
        .ok("POST", TUNNELS, Some(json!({"name": "west"})))
        .await;
    let east_connector = connector(a["token"].as_str().expect("token"), "127.21.4.0/24").await;
    let west_connector = connector(b["token"].as_str().expect("token"), "127.21.5.0/24").await;
    let network = admin
        .ok("POST", NETWORKS, Some(json!({"name": "all"})))
        .await;
    assert!(network["tunnel_id"].is_null(), "{network}");
    let binding = admin
        .ok(
            "POST",
            BINDINGS,
            Some(json!({"name": "ALL", "network_id": id_of(&network, "network_id")})),
        )
        .await;
    let proxy = addr_of(&binding);
    for echo in [&east, &west] {
        // Each connector refuses what it does not route: a 200 means the right tunnel.
        let answer = http1::connect(proxy, &echo.addr().to_string(), LIMIT).await;
        assert_eq!(answer.status, 200, "{}", answer.head);
    }
    let _ = (&east_connector, &west_connector);
    let response = fetch(proxy, &format!("http://{}/", west_web.addr())).await;
    assert_eq!(response.status, 200, "{}", response.text());
    // Nobody announces 127.21.6.0/24.
    let answer = http1::connect(proxy, "127.21.6.1:80", LIMIT).await;
    assert_eq!(answer.status, 502, "{}", answer.head);
    assert_eq!(
        answer.proxy_error(),
        Some("destination_ip_unroutable"),
        "{}",
        answer.head
    );
    let raw = {
        let stream = TcpStream::connect(proxy).await.expect("binding");
        http1::exchange(
            stream,
            b"GET http://127.21.6.1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("an answer")
    };
    raw.assert_proxy_error(502, "destination_ip_unroutable");
}

/// `GET /openapi.json` (no token needed) is the committed `docs/openapi.json`
/// (`UNDERPASS_UPDATE_OPENAPI=1` rewrites the file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_committed() {
    let home = EdgeHome::create_with_admin("");
    let edge = home.start().await;
    let (status, served) = admin::get_json(edge.admin_addr().expect("admin"), "/openapi.json")
        .await
        .expect("the document");
    assert_eq!(status, 200, "{served}");
    assert_eq!(
        served["openapi"].as_str().map(|v| &v[..2]),
        Some("3."),
        "{served}"
    );
    let path = underpass_e2e::repo_root().join("docs/openapi.json");
    if std::env::var_os("UNDERPASS_UPDATE_OPENAPI").is_some() {
        let text = serde_json::to_string_pretty(&served).expect("JSON") + "\n";
        std::fs::write(&path, text).expect("write docs/openapi.json");
    }
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).expect("docs/openapi.json is committed"),
    )
    .expect("docs/openapi.json is JSON");
    assert!(
        committed == served,
        "docs/openapi.json is not what the edge serves: run \
         UNDERPASS_UPDATE_OPENAPI=1 cargo test -p underpass-e2e --test directory_api openapi"
    );
    for path in [
        "/accounts/{account}/connectivity/directory/services",
        "/accounts/{account}/connectivity/directory/services/{service_id}",
        "/accounts/{account}/connectivity/directory/bindings",
        "/accounts/{account}/tokens",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path} is described");
    }
}

/// schemathesis (PyPI, installed by `scripts/test`) against the served document with an
/// Admin token: no 5xx, and every answer conforms to the document (status, content type,
/// body). Its summary is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_nonconforming_answer() {
    let schemathesis = std::env::var_os("UNDERPASS_SCHEMATHESIS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| underpass_e2e::repo_root().join(".cache/st/bin/schemathesis"));
    assert!(
        schemathesis.is_file(),
        "schemathesis not found at {}: run the tests with scripts/test, which installs it \
         (pip, into .cache/st), or set UNDERPASS_SCHEMATHESIS",
        schemathesis.display()
    );
    let home = EdgeHome::create_with_admin("");
    let token = host_token(&home, "acme", "admin").await;
    let edge = home.start().await;
    let admin_addr = edge.admin_addr().expect("admin");
    // Something to find: a tunnel, a service and a binding.
    let admin = Client::new(&edge, "acme", &token);
    let tunnel = id_of(
        &admin.ok("POST", TUNNELS, Some(json!({"name": "t"}))).await,
        "id",
    );
    let service = admin
        .ok(
            "POST",
            SERVICES,
            Some(json!({"name": "web", "type": "http",
                "host": {"ipv4": "127.21.7.1", "network": {"tunnel_id": tunnel}}})),
        )
        .await;
    admin
        .ok(
            "POST",
            BINDINGS,
            Some(json!({"name": "WEB", "service_id": id_of(&service, "service_id")})),
        )
        .await;
    let work = home.dir().join("schemathesis");
    std::fs::create_dir_all(&work).expect("a work folder");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            .current_dir(&work)
            .args(["run", &format!("http://{admin_addr}/openapi.json")])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--set-path", "account=acme", "--experimental=openapi-3.1"])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance",
            ])
            .args(["--hypothesis-max-examples", "30", "--hypothesis-seed", "1"])
            .args([
                "--hypothesis-deadline",
                "None",
                "--request-timeout",
                "20000",
            ])
            .env("SCHEMATHESIS_HOOKS", "")
            .env("NO_COLOR", "1")
            .output()
            .expect("run schemathesis")
    })
    .await
    .expect("the schemathesis thread");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect();
    eprintln!("schemathesis summary:\n{}", summary.join("\n"));
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("passed"), "{stdout}");
    assert!(edge.log().contains("api decision"));
}

/// `[admin] tls_cert` / `tls_key`: the admin listener (and so the directory API) speaks TLS
/// with the given certificate; a plain HTTP request gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_tls_with_a_given_certificate() {
    let pki = underpass_e2e::TestPki::new("admin-test-ca");
    let home = EdgeHome::create_with_admin("");
    let (cert, key) = pki.issue_to_files(&["localhost"], home.dir(), "admin");
    let config = home.config_path();
    let mut text = std::fs::read_to_string(config).expect("edge.toml");
    // EdgeHome writes [admin] last: these keys land in it.
    text.push_str(&format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    ));
    std::fs::write(config, text).expect("rewrite edge.toml");
    let token = host_token(&home, "acme", "read").await;
    let edge = home.start().await;
    let addr = edge.admin_addr().expect("admin");
    let response = http1::get_tls(addr, "localhost", "/openapi.json", pki.client_config())
        .await
        .expect("an answer over TLS");
    assert_eq!(response.status, 200);
    let stream = http1::tls_connect(addr, "localhost", pki.client_config())
        .await
        .expect("TLS");
    let request = format!(
        "GET /accounts/acme/connectivity/directory/services HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let response = http1::exchange(stream, request.as_bytes())
        .await
        .expect("an answer");
    assert_eq!(response.status, 200, "{}", response.text());
    // Plain HTTP is not answered as HTTP.
    let plain = admin::get(addr, "/healthz").await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status != 200));

    // `vpc` reaches it with https:// and the CA that issued its certificate; without that
    // CA (the system's roots do not know it) the certificate is refused, and so is plain
    // http:// to a TLS listener.
    let ca = pki.write_ca(home.dir(), "admin-ca");
    let ca = ca.display().to_string();
    let url = format!("https://localhost:{}", addr.port());
    let vpc = |extra: &[&str]| {
        let mut args = vec!["vpc", "service", "list", "--account", "acme"];
        args.extend_from_slice(extra);
        args.iter()
            .map(|a| (*a).to_owned())
            .collect::<Vec<String>>()
    };
    let token_flag = ["--api-token", token.as_str()];
    let mut args = vpc(&["--api", &url, "--api-ca", &ca]);
    args.extend(token_flag.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = cli(&home, &args).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("NAME"),
        "a table: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let mut args = vpc(&["--api", &url]);
    args.extend(token_flag.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = cli(&home, &args).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no answer from the directory API") && stderr.contains("TLS"),
        "{stderr}"
    );
    let plain_url = format!("http://127.0.0.1:{}", addr.port());
    let mut args = vpc(&["--api", &plain_url, "--api-ca", &ca]);
    args.extend(token_flag.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = cli(&home, &args).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--api-ca") && stderr.contains("https://"),
        "{stderr}"
    );

    // `tunnel info` on the edge's host trusts the listener by its certificate file.
    let output = cli(&home, &["tunnel", "info", TUNNEL]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(TUNNEL),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    // Another certificate in that file (a server this command cannot trust) is refused.
    let (other, _) = pki.issue_to_files(&["localhost"], home.dir(), "other");
    let text = std::fs::read_to_string(config).expect("edge.toml");
    std::fs::write(
        config,
        text.replace(&cert.display().to_string(), &other.display().to_string()),
    )
    .expect("rewrite edge.toml");
    let output = cli(&home, &["tunnel", "info", TUNNEL]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot ask the edge's admin listener"),
        "{stderr}"
    );
}
