//! A service's origin policy (TLS mode, CA bundle, host) reaches the connector whatever its
//! size, and a request the edge cannot encode is the edge's own error.
//!
//! Real nginx HTTPS origin with a certificate from a test CA; the service trusts that CA
//! through a `tls.ca_file` bundle of 512 KiB.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use underpass_e2e::http1::{exchange, Response};
use underpass_e2e::pki::padded_ca_bundle;
use underpass_e2e::{Location, Nginx, Service, Stack, TestPki};

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(30);

/// The size of the CA bundle: far beyond one 64 KiB frame.
const BUNDLE_LEN: usize = 512 * 1024;

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

/// An HTTPS (verify_full) service whose `ca_file` is a 512 KiB bundle, the real CA last: the
/// origin's 200 comes back, on the first request and on the next ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_512_kib_ca_bundle_works() {
    let pki = TestPki::new("policy-test-ca");
    let cert = pki.issue(&["secure.internal.test"]);
    let nginx = Nginx::builder(ip("127.20.44.1"))
        .tls_site("secure.internal.test", &cert.chain_pem, &cert.key_pem)
        .location(Location::json("/api/data", r#"{"ok":true}"#))
        .start()
        .await;
    let https = nginx.https_addr().expect("https listener");
    let bundle = tokio::task::spawn_blocking(move || padded_ca_bundle(&pki.ca_pem(), BUNDLE_LEN))
        .await
        .expect("generate the CA bundle");
    assert!(bundle.len() >= BUNDLE_LEN, "{} bytes", bundle.len());
    let stack = Stack::builder()
        .route("127.20.44.0/24", None)
        .service_binding("secure", Service::https(https, &bundle))
        .start()
        .await;
    let proxy = stack.binding_addr("secure");
    for attempt in 0..3 {
        let response = fetch(
            proxy,
            "GET https://secure.internal.test/api/data HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(
            (response.status, response.header("proxy-status")),
            (200, None),
            "request {attempt} through a {} KiB CA bundle: {}",
            bundle.len() / 1024,
            response.text()
        );
        assert_eq!(response.json().expect("JSON body")["ok"], true);
    }
}

/// A request head too large for one frame is refused by the edge itself: `431` with
/// `http_request_error` (the client's request is at fault), not a 503 blaming the destination;
/// nothing reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_too_large_for_a_frame_is_431() {
    let nginx = Nginx::builder(ip("127.20.44.2"))
        .location(Location::json("/users", "[]"))
        .start()
        .await;
    let stack = Stack::builder()
        .route("127.20.44.0/24", None)
        .service_binding("api", Service::http(nginx.http_addr()))
        .start()
        .await;
    // 52 headers of 1 KiB: within hyper's 100 headers and 64 KiB, beyond the edge's 48 KiB
    // head limit (what one 64 KiB stream frame holds).
    let filler = "x".repeat(1024);
    let headers: String = (0..52)
        .map(|i| format!("X-Filler-{i}: {filler}\r\n"))
        .collect();
    let response = fetch(
        stack.binding_addr("api"),
        &format!(
            "GET http://internal-api.company.local/users HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"
        ),
    )
    .await;
    response.assert_proxy_error(431, "http_request_error");
    assert!(
        nginx.access_log_lines().is_empty(),
        "the origin got a request: {:?}",
        nginx.access_log_lines()
    );
}
