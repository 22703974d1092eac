//! HTTPS origins through a real connector: verification modes and CA bundles from service
//! policies (a 512 KiB bundle included), SNI and Host from the URL, HTTP/2 by ALPN, upgrades
//! over TLS.

mod support;

use std::time::Duration;

use bytes::Bytes;
use tokio_rustls::TlsAcceptor;
use underpass_proto::{
    HttpRequestHead, ProxyStatus, Scheme, StreamReply, TlsVerification, RESET_CANCELLED,
};
use underpass_transport::{RecvStream, SendStream};

use support::origins::{raw_origin, EchoOrigin};
use support::pki::TestCa;
use support::tunnel::{get, Tunnel};

const ALPN_BOTH: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A VPC Service request for `https://<url_host>/hello`, whose policy dials `origin`.
async fn service(
    tunnel: &Tunnel,
    url_host: &str,
    origin: &EchoOrigin,
    mode: TlsVerification,
    ca: Option<&TestCa>,
) -> HttpRequestHead {
    let ca = ca.map(|ca| ca.pem.as_str());
    tunnel.https_service(url_host, origin.addr, mode, ca).await
}

#[tokio::test]
async fn verify_full_checks_chain_and_name() {
    let ca = TestCa::new("Test CA full");
    let origin = EchoOrigin::start_tls(
        "127.0.32.1",
        ca.server_config(&["api.internal"], &ALPN_BOTH),
    )
    .await;
    let tunnel = Tunnel::start().await;

    let ok = service(
        &tunnel,
        "api.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&ca),
    )
    .await;
    let fetched = tunnel.fetch(ok, b"").await;
    assert_eq!(fetched.head().status, 200);
    let echo = fetched.json();
    assert_eq!(echo["sni"], "api.internal");
    assert_eq!(echo["host"], "api.internal");
    assert_eq!(echo["version"], "HTTP/1.1");

    let wrong_name = service(
        &tunnel,
        "other.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&ca),
    )
    .await;
    let error = tunnel.fetch(wrong_name, b"").await.error().clone();
    assert_eq!(error.status, ProxyStatus::TlsCertificateError);
    assert!(
        error.details.contains("other.internal"),
        "{}",
        error.details
    );

    let other_ca = TestCa::new("Test CA other");
    let unknown = service(
        &tunnel,
        "api.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&other_ca),
    )
    .await;
    let error = tunnel.fetch(unknown, b"").await.error().clone();
    assert_eq!(error.status, ProxyStatus::TlsCertificateError);
    assert!(
        error.details.contains("unknown issuer"),
        "{}",
        error.details
    );

    let no_bundle = service(
        &tunnel,
        "api.internal",
        &origin,
        TlsVerification::VerifyFull,
        None,
    )
    .await;
    let error = tunnel.fetch(no_bundle, b"").await.error().clone();
    assert_eq!(error.status, ProxyStatus::TlsCertificateError);
}

#[tokio::test]
async fn verify_ca_checks_the_chain_only() {
    let ca = TestCa::new("Test CA chain");
    let origin = EchoOrigin::start_tls(
        "127.0.32.2",
        ca.server_config(&["api.internal"], &ALPN_BOTH),
    )
    .await;
    let tunnel = Tunnel::start().await;

    let mismatched = service(
        &tunnel,
        "renamed.internal",
        &origin,
        TlsVerification::VerifyCa,
        Some(&ca),
    )
    .await;
    let fetched = tunnel.fetch(mismatched, b"").await;
    assert_eq!(fetched.head().status, 200);
    assert_eq!(fetched.json()["sni"], "renamed.internal");

    let other_ca = TestCa::new("Test CA stranger");
    let unknown = service(
        &tunnel,
        "api.internal",
        &origin,
        TlsVerification::VerifyCa,
        Some(&other_ca),
    )
    .await;
    let error = tunnel.fetch(unknown, b"").await.error().clone();
    assert_eq!(error.status, ProxyStatus::TlsCertificateError);
}

#[tokio::test]
async fn disabled_verification_accepts_any_certificate() {
    let ca = TestCa::new("Test CA unverified");
    let origin = EchoOrigin::start_tls(
        "127.0.32.3",
        ca.server_config(&["api.internal"], &ALPN_BOTH),
    )
    .await;
    let tunnel = Tunnel::start().await;
    for url_host in ["api.internal", "whatever.example"] {
        let head = service(&tunnel, url_host, &origin, TlsVerification::Disabled, None).await;
        let fetched = tunnel.fetch(head, b"").await;
        assert_eq!(fetched.head().status, 200);
        assert_eq!(fetched.json()["host"], url_host);
    }
}

#[tokio::test]
async fn an_ip_literal_sends_no_sni_and_matches_the_ip_san() {
    let ca = TestCa::new("Test CA ip");
    let config = ca.server_config(&["127.0.32.4"], &ALPN_BOTH);
    let origin = EchoOrigin::start_tls("127.0.32.4", config).await;
    let tunnel = Tunnel::start().await;
    // https://127.0.32.4:<port>/ to a service on that address, trusting the test CA.
    let url_host = origin.addr.to_string();
    let mut head = service(
        &tunnel,
        &url_host,
        &origin,
        TlsVerification::VerifyFull,
        Some(&ca),
    )
    .await;
    head.path = "/ip".into();
    let fetched = tunnel.fetch(head, b"").await;
    let echo = fetched.json();
    assert_eq!(echo["sni"], serde_json::Value::Null);
    assert_eq!(echo["host"], origin.addr.to_string());
}

#[tokio::test]
async fn plain_http_on_a_tls_request_is_a_tls_protocol_error() {
    let origin = EchoOrigin::start("127.0.32.5").await;
    let tunnel = Tunnel::start().await;
    let head = service(
        &tunnel,
        "api.internal",
        &origin,
        TlsVerification::Disabled,
        None,
    )
    .await;
    let error = tunnel.fetch(head, b"").await.error().clone();
    assert_eq!(error.status, ProxyStatus::TlsProtocolError);
}

#[tokio::test]
async fn http2_is_used_when_enabled_and_chosen_by_alpn() {
    let ca = TestCa::new("Test CA h2");
    let origin = EchoOrigin::start_tls(
        "127.0.32.6",
        ca.server_config(&["api.internal"], &ALPN_BOTH),
    )
    .await;
    let tunnel = Tunnel::with(|c| c.origin_http2(true)).await;
    for i in 0..3 {
        let mut head = service(
            &tunnel,
            "api.internal",
            &origin,
            TlsVerification::VerifyFull,
            Some(&ca),
        )
        .await;
        head.path = format!("/h2/{i}");
        let fetched = tunnel.fetch(head, b"").await;
        let echo = fetched.json();
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["host"], "api.internal");
        assert_eq!(echo["path"], format!("/h2/{i}"));
    }
    // Concurrent requests share the one HTTP/2 connection.
    let mut heads = Vec::new();
    for _ in 0..3 {
        let head = service(
            &tunnel,
            "api.internal",
            &origin,
            TlsVerification::VerifyFull,
            Some(&ca),
        )
        .await;
        heads.push(head);
    }
    let [a, b, c] = <[HttpRequestHead; 3]>::try_from(heads).expect("three heads");
    let (a, b, c) = tokio::join!(
        tunnel.fetch(a, b""),
        tunnel.fetch(b, b""),
        tunnel.fetch(c, b"")
    );
    for fetched in [a, b, c] {
        assert_eq!(fetched.json()["version"], "HTTP/2.0");
    }
    assert_eq!(origin.connections(), 1);

    // The same origin without HTTP/2 enabled: HTTP/1.1.
    let tunnel = Tunnel::start().await;
    let head = service(
        &tunnel,
        "api.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&ca),
    )
    .await;
    assert_eq!(tunnel.fetch(head, b"").await.json()["version"], "HTTP/1.1");
}

#[tokio::test]
async fn upgrade_over_tls_becomes_a_raw_pipe() {
    let ca = TestCa::new("Test CA ws");
    let acceptor = TlsAcceptor::from(ca.server_config(&["ws.internal"], &[b"http/1.1"]));
    let addr = raw_origin("127.0.32.7", move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                support::tunnel::upgrade_script(tls).await;
            }
        }
    })
    .await;
    let tunnel = Tunnel::with(|c| c.origin_http2(true)).await;
    let mut head = tunnel
        .https_service(
            "ws.internal",
            addr,
            TlsVerification::VerifyFull,
            Some(&ca.pem),
        )
        .await;
    head.path = "/socket".into();
    support::tunnel::check_upgrade(&tunnel, head).await;
}

/// An HTTP/2 origin's response head is bounded by the stream frame, as over HTTP/1.1: one
/// that fits (40,000 bytes, more than hyper's 16 KiB HTTP/2 default) passes intact, a larger
/// one (72,000) is `http_response_header_section_size`.
#[tokio::test]
async fn http2_response_heads_are_bounded_by_the_frame_only() {
    let ca = TestCa::new("Test CA h2 heads");
    let origin = EchoOrigin::start_tls(
        "127.0.32.11",
        ca.server_config(&["api.internal"], &ALPN_BOTH),
    )
    .await;
    let tunnel = Tunnel::with(|c| c.origin_http2(true)).await;
    for (total, fits) in [(40_000usize, true), (72_000, false)] {
        let mut head = service(
            &tunnel,
            "api.internal",
            &origin,
            TlsVerification::VerifyFull,
            Some(&ca),
        )
        .await;
        head.path = format!("/headers/{total}");
        let fetched = tunnel.fetch(head, b"").await;
        if fits {
            assert_eq!(fetched.head().status, 200);
            let padding: usize = fetched
                .head()
                .headers
                .iter()
                .filter(|h| h.name.starts_with("x-pad-"))
                .map(|h| h.value.len())
                .sum();
            assert_eq!(padding, total);
            assert_eq!(fetched.body.as_deref().ok(), Some(&b"large head"[..]));
        } else {
            let error = fetched.error();
            assert_eq!(error.status, ProxyStatus::HttpResponseHeaderSectionSize);
            assert!(error.details.contains("65536"), "{}", error.details);
        }
    }
    // One shared HTTP/2 connection served both.
    assert_eq!(origin.connections(), 1);
}

/// Over HTTP/2, a cancelled exchange resets its stream only: the origin sees its response
/// abandoned at once, and the shared connection keeps serving.
#[tokio::test]
async fn http2_cancellation_resets_the_stream_and_keeps_the_connection() {
    let ca = TestCa::new("Test CA h2 cancel");
    let origin = EchoOrigin::start_tls(
        "127.0.32.8",
        ca.server_config(&["api.internal"], &ALPN_BOTH),
    )
    .await;
    let tunnel = Tunnel::with(|c| c.origin_http2(true)).await;
    let feed = origin.feed();
    feed.send(Bytes::from_static(b"data: 0\n\n")).await.unwrap();
    let mut head = service(
        &tunnel,
        "api.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&ca),
    )
    .await;
    head.path = "/sse".into();
    let mut exchange = tunnel.open(head).await;
    exchange.send.finish().unwrap();
    assert!(matches!(exchange.reply().await, StreamReply::Http(_)));
    let mut body = exchange.body();
    assert_eq!(
        support::tunnel::read_exactly(&mut body, 9).await,
        b"data: 0\n\n".to_vec()
    );
    body.stop(RESET_CANCELLED);
    tokio::time::timeout(Duration::from_secs(1), feed.closed())
        .await
        .expect("origin still streaming 1 s after the cancellation");

    let head = service(
        &tunnel,
        "api.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&ca),
    )
    .await;
    let fetched = tunnel.fetch(head, b"").await;
    assert_eq!(fetched.json()["version"], "HTTP/2.0");
    assert_eq!(origin.connections(), 1);
}

/// Defect 2 of issue 10: a service's CA bundle travels once per connection in its policy, not
/// in every request head, so a bundle far larger than a frame works (512 KiB here: the
/// service's CA among a few hundred others), request after request.
#[tokio::test]
async fn a_512_kib_ca_bundle_verifies_the_origin() {
    let ca = TestCa::new("Test CA in a big bundle");
    let origin = EchoOrigin::start_tls(
        "127.0.32.9",
        ca.server_config(&["api.internal"], &ALPN_BOTH),
    )
    .await;
    let mut bundle = String::new();
    let others: Vec<TestCa> = (0..8)
        .map(|i| TestCa::new(&format!("Other CA {i}")))
        .collect();
    while bundle.len() < 512 * 1024 {
        for other in &others {
            bundle.push_str(&other.pem);
        }
    }
    bundle.push_str(&ca.pem);
    assert!(bundle.len() > 512 * 1024);
    let tunnel = Tunnel::start().await;
    let head = tunnel
        .https_service(
            "api.internal",
            origin.addr,
            TlsVerification::VerifyFull,
            Some(&bundle),
        )
        .await;
    for i in 0..3 {
        let mut head = head.clone();
        head.path = format!("/big-bundle/{i}");
        let fetched = tunnel.fetch(head, b"").await;
        assert_eq!(fetched.head().status, 200);
        assert_eq!(fetched.json()["path"], format!("/big-bundle/{i}"));
    }
    tunnel.shutdown().await;
}

/// A VPC Network request has no policy: an https origin is verified in full against the
/// system roots only, which do not hold the test CA.
#[tokio::test]
async fn a_network_request_trusts_only_the_system_roots() {
    let ca = TestCa::new("Test CA network");
    let origin = EchoOrigin::start_tls(
        "127.0.32.10",
        ca.server_config(&["127.0.32.10"], &ALPN_BOTH),
    )
    .await;
    let tunnel = Tunnel::start().await;
    let mut head = get(origin.addr.to_string(), "/");
    head.scheme = Scheme::Https;
    let error = tunnel.fetch(head, b"").await.error().clone();
    assert_eq!(error.status, ProxyStatus::TlsCertificateError);
    assert!(
        error.details.contains("unknown issuer"),
        "{}",
        error.details
    );
}
