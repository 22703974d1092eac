//! The binding front without any connector: every answer is produced by the edge itself, over
//! real TCP on loopback.

mod common;

use common::{add_network_binding, add_service_binding, edge_config, request};
use underpass_edge::config::{ServiceConfig, ServiceHost, ServiceKind, ServiceTls};
use underpass_edge::Edge;

fn http_service(name: &str, tunnel: &str) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        kind: ServiceKind::Http,
        tunnel: tunnel.into(),
        host: ServiceHost::ip("127.0.0.7".parse().expect("literal")),
        tcp_port: None,
        http_port: None,
        https_port: None,
        tls: ServiceTls::default(),
    }
}

#[tokio::test]
async fn front_answers_without_a_connector() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = edge_config(dir.path());
    add_network_binding(&mut config, "VPC", "corp", "prod");
    add_network_binding(&mut config, "GHOST", "ghost-net", "no-such-tunnel");
    config.services.push(http_service("api", "prod"));
    add_service_binding(&mut config, "API", "api");
    let edge = Edge::start(config).await?;
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

    tokio::time::timeout(common::HANG_GUARD, edge.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = edge_config(dir.path());
    add_network_binding(&mut config, "VPC", "corp", "prod");
    let edge = Edge::start(config).await?;
    let vpc = edge.binding_addr("VPC").expect("binding VPC");
    let (mut stream, head) = request(vpc, "CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 503);
    // Consume the body announced by Content-Length, then ask again on the same connection.
    let len: usize = head.header("content-length").expect("length").parse()?;
    let mut body = head.rest.clone();
    while body.len() < len {
        let mut chunk = [0u8; 512];
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut chunk).await?;
        assert!(n > 0);
        body.extend_from_slice(&chunk[..n]);
    }
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"CONNECT 127.0.0.1:2 HTTP/1.1\r\n\r\n")
        .await?;
    let head = common::read_head(&mut stream).await;
    assert_eq!(head.status, 503);
    edge.shutdown().await;
    Ok(())
}
