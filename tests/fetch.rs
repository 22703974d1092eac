//! `fetch()` end to end: absolute-form requests into a binding, through a real QUIC tunnel and
//! connector, to real nginx origins (HTTP and HTTPS with a test CA) and a real dnsmasq.

#[path = "workerd/stack.rs"]
#[allow(dead_code)]
mod stack;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use stack::{Service, Stack};
use tokio::net::TcpStream;
use underpass_e2e::http1::{exchange, Response};
use underpass_e2e::{Dnsmasq, Location, Nginx, TestPki};

const LIMIT: Duration = Duration::from_secs(30);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

/// Send raw `request` (absolute form, as workerd does) to the binding at `proxy`.
async fn fetch(proxy: SocketAddr, request: &str) -> Response {
    let stream = TcpStream::connect(proxy).await.expect("binding listener");
    tokio::time::timeout(LIMIT, exchange(stream, request.as_bytes()))
        .await
        .expect("answer in time")
        .expect("an HTTP response")
}

fn last_log(nginx: &Nginx) -> serde_json::Value {
    nginx
        .wait_access_log(1, LIMIT)
        .pop()
        .expect("nginx logged the request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_binding_dials_the_service_whatever_the_url_says() {
    let nginx = Nginx::builder(ip("127.20.10.1"))
        .location(Location::json("/users", r#"[{"name":"Ada"}]"#))
        .start();
    let stack = Stack::builder()
        .route("127.20.10.0/24", None)
        .service_binding("api", Service::http(nginx.http_addr()))
        .start()
        .await;
    // No Host header, a port (9999) that nothing listens on: the service's port is used.
    let response = fetch(
        stack.binding_addr("api"),
        "GET http://internal-api.company.local:9999/users HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json().unwrap()[0]["name"], "Ada");
    let log = last_log(&nginx);
    assert_eq!(log["http_host"], "internal-api.company.local:9999");
    assert_eq!(log["request_uri"], "/users");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_service_uses_the_url_host_for_sni_and_host() {
    let pki = TestPki::new("fetch-test-ca");
    let a = pki.issue(&["a.internal.test", "127.20.11.1"]);
    let b = pki.issue(&["b.internal.test"]);
    let nginx = Nginx::builder(ip("127.20.11.1"))
        .tls_site("a.internal.test", &a.chain_pem, &a.key_pem)
        .tls_site("b.internal.test", &b.chain_pem, &b.key_pem)
        .location(Location::json("/api/data", r#"{"ok":true}"#))
        .start();
    let https = nginx.https_addr().expect("https listener");
    let stack = Stack::builder()
        .route("127.20.11.0/24", None)
        .service_binding("secure", Service::https(https, &pki.ca_pem()))
        .start()
        .await;
    let proxy = stack.binding_addr("secure");
    for name in ["a.internal.test", "b.internal.test"] {
        let response = fetch(
            proxy,
            &format!("GET https://{name}/api/data HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(response.status, 200, "{name}: {}", response.text());
        let log = nginx
            .wait_access_log(1, LIMIT)
            .into_iter()
            .rev()
            .find(|l| l["ssl_server_name"] == name)
            .unwrap_or_else(|| panic!("no request with SNI {name}"));
        assert_eq!(log["host"], name);
    }
    // verify_full: a name the certificate does not carry fails verification.
    let response = fetch(
        proxy,
        "GET https://other.internal.test/api/data HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.status >= 500);
    let status = response.header("proxy-status").unwrap_or_default();
    assert!(status.contains("error=tls_certificate_error"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_binding_follows_the_url_and_the_routes() {
    let nginx = Nginx::builder(ip("127.20.12.1"))
        .location(Location::json("/users", r#"[{"name":"Grace"}]"#))
        .location(Location::body_sink("/users/new", 201, r#"{"id":7}"#))
        .location(Location::status(
            "/broken",
            422,
            "application/json",
            r#"{"e":1}"#,
        ))
        .start();
    let dns = Dnsmasq::builder(ip("127.20.12.53"))
        .record("internal-api.company.local", ip("127.20.12.1"))
        .start();
    let stack = Stack::builder()
        .route("127.20.12.0/24", None)
        .route("internal-api.company.local", None)
        .resolvers(&[dns.addr()])
        .network_binding("net")
        .start()
        .await;
    let proxy = stack.binding_addr("net");
    let port = nginx.http_addr().port();

    // A hostname resolved inside the private network by the connector.
    let response = fetch(
        proxy,
        &format!(
            "GET http://internal-api.company.local:{port}/users HTTP/1.1\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json().unwrap()[0]["name"], "Grace");

    // The seed's POST: JSON body and Authorization arrive byte-identical.
    let body = r#"{"name":"John Doe","email":"john@example.com"}"#;
    let response = fetch(
        proxy,
        &format!(
            "POST http://internal-api.company.local:{port}/users/new HTTP/1.1\r\n\
             Content-Type: application/json\r\nAuthorization: Bearer s3cr3t\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json().unwrap()["id"], 7);
    let log = nginx
        .wait_access_log(2, LIMIT)
        .into_iter()
        .find(|l| l["request_uri"] == "/users/new")
        .expect("POST logged");
    assert_eq!(log["request_body"], body);
    assert_eq!(log["http_authorization"], "Bearer s3cr3t");
    assert_eq!(log["content_type"], "application/json");

    // An origin's own 4xx passes through untouched (the `!response.ok` branch).
    let response = fetch(
        proxy,
        &format!("GET http://127.20.12.1:{port}/broken HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(response.status, 422);
    assert!(response.header("proxy-status").is_none());
    assert_eq!(response.text(), r#"{"e":1}"#);

    // Unrouted destination: refused by the connector's routes, nothing dialed.
    let response = fetch(
        proxy,
        "GET http://127.21.0.9:80/ HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 502);
    let status = response.header("proxy-status").unwrap_or_default();
    assert!(
        status.contains("error=destination_ip_prohibited"),
        "{status}"
    );

    // A closed port on a routed address.
    let closed = underpass_e2e::free_port(ip("127.20.12.2"));
    let response = fetch(
        proxy,
        &format!("GET http://127.20.12.2:{closed}/ HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    let status = response.header("proxy-status").unwrap_or_default();
    assert!(status.contains("error=connection_refused"), "{status}");

    // Relative form is a clear 400.
    let response = fetch(
        proxy,
        "GET /users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 400);
}
