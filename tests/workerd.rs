//! The real Workers runtime (`workerd`) runs every example of `workers-vpc-binding-api.txt`
//! through Underpass: workerd → binding listener (HTTP/1.1 forward proxy) → edge → QUIC →
//! connector → a real origin (nginx, redis-server, dnsmasq for names, in-process servers).
//!
//! The examples are read from `examples/*.js` and adapted only in addresses and ports (127.x
//! instead of 10.x; the ports of servers that bound port 0). Each test starts its own edge,
//! connector, origins and workerd, and asserts on what the Worker returned.
//!
//! workerd comes from `UNDERPASS_WORKERD` or `.cache/workerd` (both set up by `scripts/test`);
//! without it these tests fail, telling to run `scripts/test`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use underpass_connector::{ConnectorConfig, Overrides};
use underpass_e2e::workerd::capnp::{self, adapt, WorkerSpec};
use underpass_e2e::workerd::WorkerdSetup;
use underpass_e2e::{
    example, free_port, repo_root, Dnsmasq, EchoServer, Location, Nginx, Redis, Service,
    SlowOrigin, Stack, TestPki,
};
use underpass_edge::config::EdgeConfig;

/// A generous bound for "the origin sees its connection closed" (guards a hang only).
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

const USERS_JSON: &str = r#"[{"id":1,"name":"Ada Lovelace","email":"ada@example.com"},{"id":2,"name":"Alan Turing","email":"alan@example.com"}]"#;

/// The POST example's body, exactly as `JSON.stringify` writes it.
const POST_BODY: &str = r#"{"name":"John Doe","email":"john@example.com"}"#;

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// The "private subnet" the examples' 10.0.1.0/24 becomes.
const SUBNET: &str = "127.20.0.0/24";

async fn users_nginx(ip: IpAddr) -> Nginx {
    Nginx::builder(ip)
        .location(Location::json("/users", USERS_JSON))
        .start()
        .await
}

/// The text of `tests/workerd/<name>` (Worker scripts used only by this suite).
fn test_script(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workerd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Polls `condition` (5 ms to 50 ms apart) until it holds or `deadline` passes.
async fn eventually(deadline: Duration, condition: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    while !condition() {
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    true
}

fn assert_users(response: &underpass_e2e::http1::Response, output: &str) {
    assert_eq!(response.status, 200, "{}\n{output}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{response:?}"
    );
    let expected: serde_json::Value = serde_json::from_str(USERS_JSON).expect("valid JSON");
    assert_eq!(
        response.json().expect("JSON body"),
        expected,
        "the Worker returns the origin's users"
    );
}

underpass_e2e::transport_tests! {
/// `get-users.js` through a VPC Service binding, with workerd run from the config template in
/// `examples/workerd/config.capnp`: the URL's host only fills `Host`, the service decides.
async fn get_users_through_a_vpc_service_binding() {
    let nginx = users_nginx(ip(127, 20, 0, 10)).await;
    let stack = Stack::builder()
        .route(SUBNET, None)
        .service_binding("users", Service::http(nginx.http_addr()))
        .start()
        .await;
    let template = std::fs::read_to_string(repo_root().join("examples/workerd/config.capnp"))
        .expect("read examples/workerd/config.capnp");
    let config = capnp::fill_template(
        &template,
        stack.binding_addr("users"),
        "get-users.js",
        "127.0.0.1:0",
        "unused",
    );
    let workerd = WorkerdSetup::new()
        .script("get-users.js", &example("get-users.js"))
        .raw_config(&config, &["http"])
        .start()
        .await
        .expect("workerd starts with the example config");

    let response = workerd.get("http").await;
    assert_users(&response, &workerd.output());
    let log = nginx.wait_access_log(1, CLOSE_DEADLINE).await;
    assert_eq!(log[0]["request_uri"], "/users");
    assert_eq!(log[0]["http_host"], "internal-api.company.local");
}
}

underpass_e2e::transport_tests! {
/// `get-users.js` through a VPC Network binding: the name is a hostname route resolved by the
/// connector through a real dnsmasq. The URL carries nginx's port (a network binding dials the
/// URL's port); that is the only change to the example.
async fn get_users_through_a_vpc_network_binding_with_a_hostname_route() {
    let nginx = users_nginx(ip(127, 20, 0, 10)).await;
    let port = nginx.http_addr().port();
    let dns = Dnsmasq::builder(ip(127, 20, 0, 53))
        .record("internal-api.company.local", ip(127, 20, 0, 10))
        .start()
        .await;
    // The name resolves to loopback (this suite's stand-in for the private subnet), which a
    // name reaches only where an IP route covers it too.
    let stack = Stack::builder()
        .route("internal-api.company.local", Some(&port.to_string()))
        .route(SUBNET, Some(&port.to_string()))
        .resolvers(&[dns.addr()])
        .network_binding("net")
        .start()
        .await;
    let url = format!("http://internal-api.company.local:{port}/users");
    let script = adapt(
        &example("get-users.js"),
        &[("http://internal-api.company.local/users", &url)],
    );
    let workerd = WorkerdSetup::new()
        .worker(
            WorkerSpec::new("get-users", "get-users.js", "127.0.0.1:0")
                .proxy("MY_BINDING", stack.binding_addr("net")),
            &script,
        )
        .start()
        .await
        .expect("workerd starts");

    let response = workerd.get("get-users").await;
    assert_users(&response, &workerd.output());
    // dnsmasq writes its query log on its own schedule: poll for the line.
    let asked = eventually(CLOSE_DEADLINE, || {
        dns.log().contains("query[A] internal-api.company.local")
    })
    .await;
    assert!(asked, "the connector asked dnsmasq: {}", dns.log());
    let log = nginx.wait_access_log(1, CLOSE_DEADLINE).await;
    assert_eq!(log[0]["request_uri"], "/users");
    assert_eq!(
        log[0]["http_host"],
        format!("internal-api.company.local:{port}")
    );
}
}

underpass_e2e::transport_tests! {
/// `post-user.js`: the JSON body and `Authorization: Bearer …` reach nginx intact, the
/// created user comes back; a second service answering 409 takes the `!response.ok` branch.
async fn post_user_reaches_the_origin_and_reports_a_refusal() {
    let created = r#"{"id":42,"name":"John Doe","email":"john@example.com"}"#;
    let accepting = Nginx::builder(ip(127, 20, 0, 12))
        .location(Location::body_sink("/users", 201, created))
        .start()
        .await;
    let refusing = Nginx::builder(ip(127, 20, 0, 13))
        .location(Location::status(
            "/users",
            409,
            "application/json",
            r#"{"error":"user exists"}"#,
        ))
        .start()
        .await;
    let stack = Stack::builder()
        .route(SUBNET, None)
        .service_binding("accepting", Service::http(accepting.http_addr()))
        .service_binding("refusing", Service::http(refusing.http_addr()))
        .start()
        .await;
    let script = example("post-user.js");
    let workerd = WorkerdSetup::new()
        .worker(
            WorkerSpec::new("post-ok", "post-user.js", "127.0.0.1:0")
                .proxy("MY_BINDING", stack.binding_addr("accepting"))
                .text("API_TOKEN", "s3cr3t-t0ken"),
            &script,
        )
        .worker(
            WorkerSpec::new("post-refused", "post-user.js", "127.0.0.1:0")
                .proxy("MY_BINDING", stack.binding_addr("refusing"))
                .text("API_TOKEN", "s3cr3t-t0ken"),
            &script,
        )
        .start()
        .await
        .expect("workerd starts");

    let response = workerd.get("post-ok").await;
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        workerd.output()
    );
    let expected: serde_json::Value = serde_json::from_str(created).expect("valid JSON");
    assert_eq!(response.json().expect("JSON body"), expected);
    let log = accepting.wait_access_log(1, CLOSE_DEADLINE).await;
    assert_eq!(log[0]["request_method"], "POST");
    assert_eq!(log[0]["request_uri"], "/users");
    assert_eq!(log[0]["http_host"], "internal-api.company.local");
    assert_eq!(log[0]["http_authorization"], "Bearer s3cr3t-t0ken");
    assert_eq!(log[0]["content_type"], "application/json");
    assert_eq!(
        log[0]["request_body"], POST_BODY,
        "the body arrived byte for byte"
    );

    let response = workerd.get("post-refused").await;
    assert_eq!(
        response.status,
        409,
        "{}\n{}",
        response.text(),
        workerd.output()
    );
    assert_eq!(response.text(), "Failed to create user");
    let log = refusing.wait_access_log(1, CLOSE_DEADLINE).await;
    assert_eq!(log[0]["request_method"], "POST");
    assert_eq!(log[0]["status"], "409");
}
}

underpass_e2e::transport_tests! {
/// `fetch-https.js`: `https://127.20.0.50/api/data` reaches an nginx HTTPS origin whose
/// certificate comes from a test CA the service trusts (`verify_full`: chain and IP name).
async fn fetch_https_origin_through_a_vpc_service_binding() {
    let pki = TestPki::new("Underpass workerd test CA");
    let cert = pki.issue(&["127.20.0.50"]);
    let nginx = Nginx::builder(ip(127, 20, 0, 50))
        .tls_site("127.20.0.50", &cert.chain_pem, &cert.key_pem)
        .location(Location::details("/api/"))
        .start()
        .await;
    let https = nginx.https_addr().expect("nginx has an HTTPS listener");
    let stack = Stack::builder()
        .route(SUBNET, None)
        .service_binding("data", Service::https(https, &pki.ca_pem()))
        .start()
        .await;
    let workerd = WorkerdSetup::new()
        .worker(
            WorkerSpec::new("fetch-https", "fetch-https.js", "127.0.0.1:0")
                .proxy("MY_BINDING", stack.binding_addr("data")),
            &example("fetch-https.js"),
        )
        .start()
        .await
        .expect("workerd starts");

    let response = workerd.get("fetch-https").await;
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        workerd.output()
    );
    let details = response.json().expect("JSON body");
    assert_eq!(details["scheme"], "https", "{details}");
    assert_eq!(details["request_uri"], "/api/data", "{details}");
    assert_eq!(details["host"], "127.20.0.50", "{details}");
}
}

underpass_e2e::transport_tests! {
/// `connect-redis-string.js` and `connect-redis-object.js` against a real redis-server:
/// `PING`, `writer.close()` (a half-close that must not end the reply), `+PONG` back.
async fn connect_to_redis_pings_in_both_address_forms() {
    let redis = Redis::start(ip(127, 20, 0, 50)).await;
    let addr = redis.addr().to_string();
    let port = redis.addr().port().to_string();
    let stack = Stack::builder()
        .route(SUBNET, None)
        .network_binding("net")
        .start()
        .await;
    let binding = stack.binding_addr("net");
    let string_form = adapt(
        &example("connect-redis-string.js"),
        &[("127.20.0.50:6379", &addr)],
    );
    let object_form = adapt(
        &example("connect-redis-object.js"),
        &[("port: 6379", &format!("port: {port}"))],
    );
    let workerd = WorkerdSetup::new()
        .worker(
            WorkerSpec::new("string", "connect-redis-string.js", "127.0.0.1:0")
                .proxy("MY_BINDING", binding),
            &string_form,
        )
        .worker(
            WorkerSpec::new("object", "connect-redis-object.js", "127.0.0.1:0")
                .proxy("MY_BINDING", binding),
            &object_form,
        )
        .start()
        .await
        .expect("workerd starts");

    for worker in ["string", "object"] {
        let response = workerd.get(worker).await;
        assert_eq!(response.status, 200, "{worker}: {}", workerd.output());
        assert_eq!(
            response.text(),
            "+PONG\r\n",
            "{worker}: {}",
            workerd.output()
        );
    }
}
}

underpass_e2e::transport_tests! {
/// `connect()` to an address on the connector's deny list: `socket.opened` rejects (workerd
/// does not throw from `connect()` itself), and nothing reaches the denied host.
async fn connect_to_a_denied_destination_rejects_socket_opened() {
    let denied = EchoServer::start(ip(127, 20, 0, 99));
    let stack = Stack::builder()
        .route(SUBNET, None)
        .deny(&["169.254.169.254/32", "127.20.0.99/32"])
        .network_binding("net")
        .start()
        .await;
    let script =
        test_script("connect-denied.js").replace("@DESTINATION@", &denied.addr().to_string());
    let workerd = WorkerdSetup::new()
        .worker(
            WorkerSpec::new("denied", "connect-denied.js", "127.0.0.1:0")
                .proxy("MY_BINDING", stack.binding_addr("net")),
            &script,
        )
        .start()
        .await
        .expect("workerd starts");

    let response = workerd.get("denied").await;
    let text = response.text();
    assert_eq!(response.status, 502, "{text}\n{}", workerd.output());
    assert!(
        text.starts_with("socket.opened rejected: ") && text.contains("proxy request failed"),
        "{text}"
    );
    assert_eq!(
        denied.accepted(),
        0,
        "no connection reached the denied host"
    );
}
}

underpass_e2e::transport_tests! {
/// `fetch()` to a closed port: the Worker gets the proxy's 5xx and its `Proxy-Status` header.
async fn fetch_to_a_closed_port_returns_the_proxy_status() {
    let closed = SocketAddr::new(ip(127, 20, 0, 30), free_port(ip(127, 20, 0, 30)));
    let stack = Stack::builder()
        .route(SUBNET, None)
        .network_binding("net")
        .start()
        .await;
    let script = test_script("fetch-error.js").replace("@URL@", &format!("http://{closed}/users"));
    let workerd = WorkerdSetup::new()
        .worker(
            WorkerSpec::new("closed", "fetch-error.js", "127.0.0.1:0")
                .proxy("MY_BINDING", stack.binding_addr("net")),
            &script,
        )
        .start()
        .await
        .expect("workerd starts");

    let response = workerd.get("closed").await;
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        workerd.output()
    );
    let seen = response.json().expect("JSON body");
    let proxy_status = seen["proxyStatus"].as_str().unwrap_or("");
    assert_eq!(
        (
            seen["status"].as_u64(),
            underpass_e2e::http1::proxy_error(proxy_status)
        ),
        (Some(502), Some("connection_refused")),
        "the Worker gets the proxy's 502 and its Proxy-Status: {seen}"
    );
}
}

underpass_e2e::transport_tests! {
/// An `AbortController` abort of a pending `fetch()` closes the origin's connection. The
/// Worker aborts only after the origin has the request (a second fetch is the signal), so no
/// timing decides the outcome.
async fn abort_of_a_slow_fetch_closes_the_origin_request() {
    let origin = SlowOrigin::start(ip(127, 20, 0, 60)).await;
    let stack = Stack::builder()
        .route(SUBNET, None)
        .network_binding("net")
        .start()
        .await;
    let script = test_script("abort.js").replace("@ORIGIN@", &format!("http://{}", origin.addr()));
    let workerd = WorkerdSetup::new()
        .worker(
            WorkerSpec::new("abort", "abort.js", "127.0.0.1:0")
                .proxy("MY_BINDING", stack.binding_addr("net")),
            &script,
        )
        .start()
        .await
        .expect("workerd starts");

    let response = workerd.get("abort").await;
    assert_eq!(
        response.text(),
        "gate: open; slow fetch rejected: AbortError",
        "{}",
        workerd.output()
    );
    let state = origin
        .wait_for(CLOSE_DEADLINE, |s| s.slow_closed.is_some())
        .await;
    assert!(
        state.slow_request.is_some(),
        "the slow request reached the origin: {state:?}"
    );
    assert!(
        state.slow_closed.is_some(),
        "the origin saw its connection closed within {CLOSE_DEADLINE:?}: {state:?}"
    );
}
}

/// The config files in `examples/` load as a user would use them.
#[test]
fn example_configs_are_valid() {
    check_example_configs(&repo_root().join("examples"));
    let template = std::fs::read_to_string(repo_root().join("examples/workerd/config.capnp"))
        .expect("read examples/workerd/config.capnp");
    for placeholder in [
        "@BINDING_ADDR@",
        "@WORKER_SCRIPT@",
        "@LISTEN_ADDR@",
        "@API_TOKEN@",
    ] {
        assert!(template.contains(placeholder), "template has {placeholder}");
    }
}

/// Loads `examples/edge.toml` and `examples/connector.toml` the way a user would use them
/// (copied to a folder of their own), failing on any error.
fn check_example_configs(examples: &Path) {
    let dir = tempfile::tempdir().expect("create tempdir");
    let edge = dir.path().join("edge.toml");
    std::fs::copy(examples.join("edge.toml"), &edge).expect("copy examples/edge.toml");
    let config = EdgeConfig::load(&edge).unwrap_or_else(|e| panic!("examples/edge.toml: {e}"));
    assert_eq!(config.bindings.len(), 5, "every example binding loads");

    let token = underpass_proto::TunnelToken {
        tunnel_id: underpass_proto::TunnelId([1; 16]),
        secret: underpass_proto::TunnelSecret([2; 32]),
        edges: vec!["127.0.0.1:7844".to_owned()],
        server_name: "underpass-edge".to_owned(),
        ca_pin: [3; 32],
    };
    let text = std::fs::read_to_string(examples.join("connector.toml"))
        .expect("read examples/connector.toml");
    let overrides = Overrides {
        token: Some(token.encode()),
        ..Overrides::default()
    };
    let config =
        ConnectorConfig::from_toml(&text, Path::new("connector.toml"), dir.path(), &overrides)
            .unwrap_or_else(|e| panic!("examples/connector.toml: {e}"));
    assert_eq!(config.routes.len(), 2, "both example routes load");
    assert!(config
        .deny
        .iter()
        .any(|n| n.to_string() == "127.20.0.99/32"));
}
