//! The binding front without any connector: every answer is produced by the edge itself, over
//! real TCP on loopback.

mod common;

use std::time::Duration;

use common::{http_service, read_head, read_length_body, request, EdgeBuilder, HANG_GUARD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn front_answers_without_a_connector() -> anyhow::Result<()> {
    let (edge, _dir) = EdgeBuilder::new()
        .network_binding("VPC", "corp", "prod")
        .network_binding("GHOST", "ghost-net", "no-such-tunnel")
        .service(http_service("api", "prod"))
        .service_binding("API", "api")
        .start()
        .await;
    edge.create_tunnel("prod")?;
    let vpc = edge.binding_addr("VPC").expect("binding VPC");

    // No connector online: 503 with the RFC 9209 code, as workerd sends CONNECT (no Host).
    let (_, head) = request(vpc, "CONNECT 127.0.0.1:6379 HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 503, "{head:?}");
    let proxy_status = head.header("proxy-status").expect("Proxy-Status header");
    assert!(
        proxy_status.starts_with("underpass; error=destination_unavailable; details="),
        "{proxy_status}"
    );
    assert!(
        proxy_status.contains("no connector online for tunnel prod"),
        "{proxy_status}"
    );

    // IPv6 in brackets, with a Host header this time: parsed, then the same answer.
    let (_, head) = request(
        vpc,
        "CONNECT [::1]:6379 HTTP/1.1\r\nHost: [::1]:6379\r\n\r\n",
    )
    .await;
    assert_eq!(head.status, 503, "{head:?}");

    // A target that is not host:port is the client's fault.
    for bad in ["10.1:80", "[::1]", "db.internal:0", "db.internal:70000"] {
        let (_, head) = request(vpc, &format!("CONNECT {bad} HTTP/1.1\r\n\r\n")).await;
        assert_eq!(head.status, 400, "{bad}: {head:?}");
        if let Some(value) = head.header("proxy-status") {
            assert!(value.contains("error=http_request_error"), "{bad}: {value}");
        }
    }

    // Relative form: fetch() always sends an absolute URL.
    let (_, head) = request(vpc, "GET /users HTTP/1.1\r\nHost: api\r\n\r\n").await;
    assert_eq!(head.status, 400, "{head:?}");
    let value = head.header("proxy-status").expect("Proxy-Status header");
    assert!(value.contains("error=http_request_error"), "{value}");
    assert!(value.contains("absolute URL"), "{value}");

    // Absolute form with no connector online: destination_unavailable.
    let (_, head) = request(
        vpc,
        "GET http://internal-api.company.local/users HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(head.status, 503, "{head:?}");
    let value = head.header("proxy-status").expect("Proxy-Status header");
    assert!(value.contains("error=destination_unavailable"), "{value}");

    // connect() through an HTTP-type service binding is refused clearly.
    let api = edge.binding_addr("API").expect("binding API");
    let (_, head) = request(api, "CONNECT 127.0.0.1:80 HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 405, "{head:?}");
    let value = head.header("proxy-status").expect("Proxy-Status header");
    assert!(value.contains("error=http_request_denied"), "{value}");
    assert!(head.header("allow").is_some());

    // A binding whose tunnel does not exist.
    let ghost = edge.binding_addr("GHOST").expect("binding GHOST");
    let (_, head) = request(ghost, "CONNECT 127.0.0.1:6379 HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 503, "{head:?}");
    let value = head.header("proxy-status").expect("Proxy-Status header");
    assert!(value.contains("does not exist"), "{value}");

    tokio::time::timeout(HANG_GUARD, edge.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() -> anyhow::Result<()> {
    let (edge, _dir) = EdgeBuilder::new()
        .network_binding("VPC", "corp", "prod")
        .start()
        .await;
    let vpc = edge.binding_addr("VPC").expect("binding VPC");
    let (mut stream, head) = request(vpc, "CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 503);
    // Consume the body announced by Content-Length, then ask again on the same connection.
    read_length_body(&mut stream, &head).await;
    stream
        .write_all(b"CONNECT 127.0.0.1:2 HTTP/1.1\r\n\r\n")
        .await?;
    let head = read_head(&mut stream).await;
    assert_eq!(head.status, 503);
    tokio::time::timeout(HANG_GUARD, edge.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn a_binding_at_its_connection_limit_accepts_again_when_one_ends() -> anyhow::Result<()> {
    let (edge, _dir) = EdgeBuilder::new()
        .network_binding("VPC", "corp", "prod")
        .with(|config| config.bindings[0].max_connections = 1)
        .start()
        .await;
    let vpc = edge.binding_addr("VPC").expect("binding VPC");
    let ask = "CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n";

    // The first client holds the only slot (its connection stays open, kept alive).
    let (mut first, head) = request(vpc, ask).await;
    assert_eq!(head.status, 503);
    read_length_body(&mut first, &head).await;

    // The second one connects (the kernel queues it) but is not served while the first is
    // open. This wait can only make the test pass wrongly on a slow machine, never fail.
    let mut second = tokio::net::TcpStream::connect(vpc).await?;
    second.write_all(ask.as_bytes()).await?;
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await;
    assert!(early.is_err(), "served beyond the limit: {early:?}");

    // The first one leaves: the second is accepted and answered.
    drop(first);
    let head = read_head(&mut second).await;
    assert_eq!(head.status, 503, "{head:?}");
    tokio::time::timeout(HANG_GUARD, edge.shutdown()).await?;
    Ok(())
}
