//! HTTPS origins through the connector's origin client: verification modes with a test CA,
//! SNI and Host from the URL, HTTP/2 by ALPN, upgrades over TLS.

#[path = "origin_support/mod.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use tokio_rustls::TlsAcceptor;
use underpass_connector::origin::OriginSettings;
use underpass_proto::{
    DialTarget, HttpRequestHead, ProxyStatus, Scheme, StreamReply, TlsVerification, RESET_CANCELLED,
};
use underpass_transport::{RecvStream, SendStream};

use support::origins::{raw_origin, EchoOrigin};
use support::pki::TestCa;
use support::{get, Tunnel};

const ALPN_BOTH: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A VPC Service request for `https://<url_host>/hello`, dialing `origin`.
fn service(
    url_host: &str,
    origin: &EchoOrigin,
    mode: TlsVerification,
    ca: Option<&TestCa>,
) -> HttpRequestHead {
    let mut head = get(url_host, "/hello");
    head.scheme = Scheme::Https;
    head.dial = Some(DialTarget::from(origin.addr));
    head.tls = mode;
    head.ca_pem = ca.map(|ca| ca.pem.clone());
    head
}

#[tokio::test]
async fn verify_full_checks_chain_and_name() {
    let ca = TestCa::new("Test CA full");
    let origin = EchoOrigin::start_tls(
        "127.0.32.1",
        ca.server_config(&["api.internal"], &ALPN_BOTH),
    )
    .await;
    let tunnel = Tunnel::start(OriginSettings::default()).await;

    let ok = service(
        "api.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&ca),
    );
    let fetched = tunnel.fetch(ok, b"").await;
    assert_eq!(fetched.head().status, 200);
    let echo = fetched.json();
    assert_eq!(echo["sni"], "api.internal");
    assert_eq!(echo["host"], "api.internal");
    assert_eq!(echo["version"], "HTTP/1.1");

    let wrong_name = service(
        "other.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&ca),
    );
    let error = tunnel.fetch(wrong_name, b"").await.error().clone();
    assert_eq!(error.status, ProxyStatus::TlsCertificateError);
    assert!(
        error.details.contains("other.internal"),
        "{}",
        error.details
    );

    let other_ca = TestCa::new("Test CA other");
    let unknown = service(
        "api.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&other_ca),
    );
    let error = tunnel.fetch(unknown, b"").await.error().clone();
    assert_eq!(error.status, ProxyStatus::TlsCertificateError);
    assert!(
        error.details.contains("unknown issuer"),
        "{}",
        error.details
    );

    let no_bundle = service("api.internal", &origin, TlsVerification::VerifyFull, None);
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
    let tunnel = Tunnel::start(OriginSettings::default()).await;

    let mismatched = service(
        "renamed.internal",
        &origin,
        TlsVerification::VerifyCa,
        Some(&ca),
    );
    let fetched = tunnel.fetch(mismatched, b"").await;
    assert_eq!(fetched.head().status, 200);
    assert_eq!(fetched.json()["sni"], "renamed.internal");

    let other_ca = TestCa::new("Test CA stranger");
    let unknown = service(
        "api.internal",
        &origin,
        TlsVerification::VerifyCa,
        Some(&other_ca),
    );
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
    let tunnel = Tunnel::start(OriginSettings::default()).await;
    for url_host in ["api.internal", "whatever.example"] {
        let head = service(url_host, &origin, TlsVerification::Disabled, None);
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
    let tunnel = Tunnel::start(OriginSettings::default()).await;
    // A VPC Network request: https://127.0.32.4:<port>/ dials the URL.
    let mut head = get(origin.addr.to_string(), "/ip");
    head.scheme = Scheme::Https;
    head.ca_pem = Some(ca.pem.clone());
    let fetched = tunnel.fetch(head, b"").await;
    let echo = fetched.json();
    assert_eq!(echo["sni"], serde_json::Value::Null);
    assert_eq!(echo["host"], origin.addr.to_string());
}

#[tokio::test]
async fn plain_http_on_a_tls_request_is_a_tls_protocol_error() {
    let origin = EchoOrigin::start("127.0.32.5").await;
    let tunnel = Tunnel::start(OriginSettings::default()).await;
    let head = service("api.internal", &origin, TlsVerification::Disabled, None);
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
    let tunnel = Tunnel::start(OriginSettings {
        http2: true,
        ..OriginSettings::default()
    })
    .await;
    for i in 0..3 {
        let mut head = service(
            "api.internal",
            &origin,
            TlsVerification::VerifyFull,
            Some(&ca),
        );
        head.path = format!("/h2/{i}");
        let fetched = tunnel.fetch(head, b"").await;
        let echo = fetched.json();
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["host"], "api.internal");
        assert_eq!(echo["path"], format!("/h2/{i}"));
    }
    // Concurrent requests share the one HTTP/2 connection.
    let head = || {
        service(
            "api.internal",
            &origin,
            TlsVerification::VerifyFull,
            Some(&ca),
        )
    };
    let (a, b, c) = tokio::join!(
        tunnel.fetch(head(), b""),
        tunnel.fetch(head(), b""),
        tunnel.fetch(head(), b"")
    );
    for fetched in [a, b, c] {
        assert_eq!(fetched.json()["version"], "HTTP/2.0");
    }
    assert_eq!(origin.connections(), 1);

    // The same origin without HTTP/2 enabled: HTTP/1.1.
    let tunnel = Tunnel::start(OriginSettings::default()).await;
    let head = service(
        "api.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&ca),
    );
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
                support::upgrade_script(tls).await;
            }
        }
    })
    .await;
    let tunnel = Tunnel::start(OriginSettings {
        http2: true,
        ..OriginSettings::default()
    })
    .await;
    let mut head = get("ws.internal", "/socket");
    head.scheme = Scheme::Https;
    head.dial = Some(DialTarget::from(addr));
    head.ca_pem = Some(ca.pem.clone());
    support::check_upgrade(&tunnel, head).await;
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
    let tunnel = Tunnel::start(OriginSettings {
        http2: true,
        ..OriginSettings::default()
    })
    .await;
    let feed = origin.feed();
    feed.send(Bytes::from_static(b"data: 0\n\n")).await.unwrap();
    let mut head = service(
        "api.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&ca),
    );
    head.path = "/sse".into();
    let mut exchange = tunnel.open(head).await;
    exchange.send.finish().unwrap();
    assert!(matches!(exchange.reply().await, StreamReply::Http(_)));
    let mut body = exchange.body();
    assert_eq!(
        support::read_exactly(&mut body, 9).await,
        b"data: 0\n\n".to_vec()
    );
    body.stop(RESET_CANCELLED);
    tokio::time::timeout(Duration::from_secs(1), feed.closed())
        .await
        .expect("origin still streaming 1 s after the cancellation");

    let head = service(
        "api.internal",
        &origin,
        TlsVerification::VerifyFull,
        Some(&ca),
    );
    let fetched = tunnel.fetch(head, b"").await;
    assert_eq!(fetched.json()["version"], "HTTP/2.0");
    assert_eq!(origin.connections(), 1);
}
