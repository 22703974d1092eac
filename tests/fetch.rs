//! `fetch()` end to end: absolute-form requests into a binding, through a real QUIC tunnel and
//! connector, to real nginx origins (HTTP and HTTPS with a test CA) and a real dnsmasq.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use underpass_e2e::http1::{exchange, Response};
use underpass_e2e::upgrade::upgrade_origin;
use underpass_e2e::{Dnsmasq, EchoServer, Location, Nginx, Service, Stack, TestPki};
use underpass_edge::config::CertVerificationMode;

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

async fn last_log(nginx: &Nginx) -> serde_json::Value {
    nginx
        .wait_access_log(1, LIMIT)
        .await
        .pop()
        .expect("nginx logged the request")
}

underpass_e2e::transport_tests! {
async fn service_binding_dials_the_service_whatever_the_url_says() {
    let nginx = Nginx::builder(ip("127.20.10.1"))
        .location(Location::json("/users", r#"[{"name":"Ada"}]"#))
        .start()
        .await;
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
    let log = last_log(&nginx).await;
    assert_eq!(log["http_host"], "internal-api.company.local:9999");
    assert_eq!(log["request_uri"], "/users");
}
}

underpass_e2e::transport_tests! {
async fn https_service_uses_the_url_host_for_sni_and_host() {
    let pki = TestPki::new("fetch-test-ca");
    let a = pki.issue(&["a.internal.test", "127.20.11.1"]);
    let b = pki.issue(&["b.internal.test"]);
    let nginx = Nginx::builder(ip("127.20.11.1"))
        .tls_site("a.internal.test", &a.chain_pem, &a.key_pem)
        .tls_site("b.internal.test", &b.chain_pem, &b.key_pem)
        .location(Location::json("/api/data", r#"{"ok":true}"#))
        .start()
        .await;
    let https = nginx.https_addr().expect("https listener");
    let stack = Stack::builder()
        .route("127.20.11.0/24", None)
        .service_binding("secure", Service::https(https, &pki.ca_pem()))
        .start()
        .await;
    let proxy = stack.binding_addr("secure");
    for (done, name) in ["a.internal.test", "b.internal.test"].into_iter().enumerate() {
        let response = fetch(
            proxy,
            &format!("GET https://{name}/api/data HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(response.status, 200, "{name}: {}", response.text());
        // nginx writes the line after the response: wait for this request's, not the first.
        let log = nginx
            .wait_access_log(done + 1, LIMIT)
            .await
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
    response.assert_proxy_error(502, "tls_certificate_error");
}
}

underpass_e2e::transport_tests! {
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
        .start()
        .await;
    let dns = Dnsmasq::builder(ip("127.20.12.53"))
        .record("internal-api.company.local", ip("127.20.12.1"))
        .start()
        .await;
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
        .await
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

    // Unrouted destination: refused by the connector's routes, nothing dialed (a server
    // listening there sees no connection).
    let unrouted = EchoServer::start(ip("127.21.0.9"));
    let response = fetch(
        proxy,
        &format!(
            "GET http://127.21.0.9:{}/ HTTP/1.1\r\nConnection: close\r\n\r\n",
            unrouted.addr().port()
        ),
    )
    .await;
    response.assert_proxy_error(502, "destination_ip_prohibited");
    assert_eq!(
        unrouted.accepted(),
        0,
        "a packet reached the unrouted address"
    );

    // A closed port on a routed address.
    let closed = underpass_e2e::free_port(ip("127.20.12.2"));
    let response = fetch(
        proxy,
        &format!("GET http://127.20.12.2:{closed}/ HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    response.assert_proxy_error(502, "connection_refused");

    // Relative form is a clear 400.
    let response = fetch(
        proxy,
        "GET /users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    response.assert_proxy_error(400, "http_request_error");
}
}

underpass_e2e::transport_tests! {
async fn verification_modes_against_nginx() {
    let pki = TestPki::new("modes-ca");
    let unknown = TestPki::new("unknown-ca");
    let cert = pki.issue(&["a.internal.test"]);
    let nginx = Nginx::builder(ip("127.20.14.1"))
        .tls_site("a.internal.test", &cert.chain_pem, &cert.key_pem)
        .location(Location::json("/api/data", r#"{"ok":true}"#))
        .start()
        .await;
    let https = nginx.https_addr().expect("https listener");
    let stack = Stack::builder()
        .route("127.20.14.0/24", None)
        .service_binding(
            "ca",
            Service::https(https, &pki.ca_pem()).with_mode(CertVerificationMode::VerifyCa),
        )
        .service_binding(
            "ca_unknown",
            Service::https(https, &unknown.ca_pem()).with_mode(CertVerificationMode::VerifyCa),
        )
        .service_binding(
            "off",
            Service::https(https, &unknown.ca_pem()).with_mode(CertVerificationMode::Disabled),
        )
        .start()
        .await;
    let mismatched =
        "GET https://other.internal.test/api/data HTTP/1.1\r\nConnection: close\r\n\r\n";
    // verify_ca: a name mismatch is accepted...
    let response = fetch(stack.binding_addr("ca"), mismatched).await;
    assert_eq!(response.status, 200, "{}", response.text());
    // ...an unknown CA is not.
    let response = fetch(stack.binding_addr("ca_unknown"), mismatched).await;
    response.assert_proxy_error(502, "tls_certificate_error");
    // disabled: both pass.
    let response = fetch(stack.binding_addr("off"), mismatched).await;
    assert_eq!(response.status, 200, "{}", response.text());
}
}

underpass_e2e::transport_tests! {
async fn websocket_upgrade_through_the_edge() {
    let listener = TcpListener::bind("127.20.15.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(upgrade_origin(listener));
    let stack = Stack::builder()
        .route("127.20.15.0/24", None)
        .network_binding("net")
        .start()
        .await;
    let proxy = stack.binding_addr("net");

    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(
            format!(
                "GET http://{origin}/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut byte))
            .await
            .expect("101 in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before the 101: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    stream.write_all(b"hello over the upgrade").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut echoed))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(echoed, b"hello over the upgrade");

    // An upgrade the origin declines gets the origin's own answer, not a proxy error (only an
    // unusable 101 is http_upgrade_failed: tests/origin_answers.rs).
    let response = fetch(
        proxy,
        &format!(
            "GET http://{origin}/refuse HTTP/1.1\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(
        (response.status, response.proxy_error()),
        (400, None),
        "{:?}",
        response.headers
    );
}
}

underpass_e2e::transport_tests! {
async fn streamed_response_arrives_chunk_by_chunk() {
    // The origin sends the next event only after the client has received the previous one
    // through the tunnel: a proxy that buffered the response would never see the second.
    let listener = TcpListener::bind("127.20.16.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let (received_tx, mut received_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(byte[0]);
        }
        socket
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                  transfer-encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        for n in 0..5 {
            let event = format!("data: {n}\n\n");
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            socket.write_all(chunk.as_bytes()).await.unwrap();
            if received_rx.recv().await.is_none() {
                return;
            }
        }
        socket.write_all(b"0\r\n\r\n").await.unwrap();
    });
    let stack = Stack::builder()
        .route("127.20.16.0/24", None)
        .network_binding("net")
        .start()
        .await;
    let mut stream = TcpStream::connect(stack.binding_addr("net")).await.unwrap();
    stream
        .write_all(format!("GET http://{origin}/events HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    for n in 0..5 {
        let want = format!("data: {n}\n\n");
        while !seen.contains(&want) {
            let read = tokio::time::timeout(LIMIT, stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("event {n} was held back: {seen:?}"))
                .unwrap();
            assert!(read > 0, "closed early: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..read]));
        }
        received_tx.send(()).await.unwrap();
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
}
}
