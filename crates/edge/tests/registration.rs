//! Registration and `CONNECT` through a real QUIC connection. The connector side is a minimal
//! one written here with the mux and transport crates (the real connector is exercised by the
//! end-to-end tests in `tests/`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{add_network_binding, add_service_binding, edge_config, request, HANG_GUARD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use underpass_edge::config::{ServiceConfig, ServiceHost, ServiceKind, ServiceTls};
use underpass_edge::{Edge, EdgeHandle};
use underpass_mux::{accept_stream, registration_proof, ControlChannel};
use underpass_proto::{
    ConnectorId, ControlMessage, DialTarget, Heartbeat, Host, ProxyStatus, RefuseReason, Register,
    StreamHeader, StreamReply, TunnelId, TunnelSecret, TunnelToken,
};
use underpass_transport::quic::{
    self, QuicConnection, QuicDialer, QuicRecv, QuicSend, QuicSettings,
};
use underpass_transport::tls::{self, EdgeVerification};
use underpass_transport::{Connection, RecvStream, SendStream};

/// The fake connector refuses streams to this port, as if the origin refused.
const REFUSED_PORT: u16 = 1;

type Control = ControlChannel<QuicSend, QuicRecv>;

async fn dial(
    edge: &EdgeHandle,
    token: &TunnelToken,
) -> anyhow::Result<(QuicDialer, QuicConnection)> {
    let tls = tls::client_config(&EdgeVerification::Pin(token.ca_pin), &[quic::ALPN])?;
    let settings = QuicSettings {
        socket_buffer: 1 << 20,
        ..QuicSettings::default()
    };
    let dialer = QuicDialer::new(Arc::new(tls), &settings, "127.0.0.1:0".parse()?)?;
    let conn = dialer.connect(edge.quic_addr(), &token.server_name).await?;
    Ok((dialer, conn))
}

async fn register(
    conn: &QuicConnection,
    tunnel_id: TunnelId,
    secret: &TunnelSecret,
) -> anyhow::Result<(Control, ControlMessage)> {
    let mut control = ControlChannel::open(conn).await?;
    let proof = registration_proof(conn, &tunnel_id, secret)?;
    let register = Register {
        tunnel_id,
        proof,
        connector_id: ConnectorId([0x42; 16]),
        connection_index: 0,
        version: "test-connector".into(),
        routes: Vec::new(),
    };
    control.send(&ControlMessage::Register(register)).await?;
    let reply = tokio::time::timeout(HANG_GUARD, control.recv())
        .await??
        .ok_or_else(|| anyhow::anyhow!("control stream ended without a reply"))?;
    Ok((control, reply))
}

/// Accept the edge's streams: report each target, refuse [`REFUSED_PORT`], echo the rest
/// (finishing after the edge finishes, so half-close is visible end to end).
async fn serve_streams(conn: QuicConnection, seen: mpsc::UnboundedSender<DialTarget>) {
    while let Ok(mut incoming) = accept_stream(&conn).await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let Ok(StreamHeader::Tcp(connect)) = incoming.header(Duration::from_secs(5)).await
            else {
                return;
            };
            let _ = seen.send(connect.target.clone());
            if connect.target.port == REFUSED_PORT {
                let details = "connection refused by the origin".to_owned();
                let _ = incoming
                    .refuse(ProxyStatus::ConnectionRefused, details)
                    .await;
                return;
            }
            if incoming.reply(&StreamReply::TcpAccepted).await.is_err() {
                return;
            }
            let (mut send, mut recv) = incoming.into_parts();
            while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024).await {
                if send.write_chunk(chunk).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        });
    }
}

/// CONNECT, expect 200, send `payload`, close the write side, read everything back.
async fn echo_through(binding: std::net::SocketAddr, target: &str, payload: &[u8]) -> Vec<u8> {
    let (mut stream, head) = request(binding, &format!("CONNECT {target} HTTP/1.1\r\n\r\n")).await;
    assert_eq!(head.status, 200, "{head:?}");
    stream.write_all(payload).await.expect("send payload");
    stream.shutdown().await.expect("half-close");
    let mut echoed = head.rest;
    tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut echoed))
        .await
        .expect("echo in time")
        .expect("read echo");
    echoed
}

#[tokio::test]
async fn registered_connector_carries_connect() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = edge_config(dir.path());
    add_network_binding(&mut config, "VPC", "corp", "prod");
    config.services.push(ServiceConfig {
        name: "redis".into(),
        kind: ServiceKind::Tcp,
        tunnel: "prod".into(),
        host: ServiceHost::hostname("redis.internal", vec!["127.0.0.1:5353".parse()?]),
        tcp_port: Some(6379),
        http_port: None,
        https_port: None,
        tls: ServiceTls::default(),
    });
    add_service_binding(&mut config, "REDIS", "redis");
    let edge = Edge::start(config).await?;
    let token = edge.create_tunnel("prod")?;
    assert_eq!(token.edges, vec![edge.quic_addr().to_string()]);

    let (_dialer, conn) = dial(&edge, &token).await?;
    let (mut control, reply) = register(&conn, token.tunnel_id, &token.secret).await?;
    let ControlMessage::RegisterAccepted(accepted) = reply else {
        panic!("expected RegisterAccepted, got {reply:?}");
    };
    assert_eq!(accepted.edge_name, "underpass-edge");
    assert!(accepted.heartbeat_interval_ms > 0);
    tokio::time::timeout(HANG_GUARD, edge.registry().wait_live(&token.tunnel_id, 1)).await?;
    let snapshot = edge.registry().snapshot();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].connection_id, accepted.connection_id);
    assert_eq!(
        snapshot[0].registration.connector_id,
        ConnectorId([0x42; 16])
    );

    control
        .send(&ControlMessage::Heartbeat(Heartbeat { seq: 7 }))
        .await?;
    let ack = tokio::time::timeout(HANG_GUARD, control.recv()).await??;
    assert_eq!(
        ack,
        Some(ControlMessage::HeartbeatAck(Heartbeat { seq: 7 }))
    );

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(serve_streams(conn.clone(), seen_tx));
    let vpc = edge.binding_addr("VPC").expect("binding VPC");

    // Network binding: the client's address is the destination; half-close passes through.
    let echoed = echo_through(vpc, "127.0.0.9:7000", b"PING\r\n").await;
    assert_eq!(echoed, b"PING\r\n");
    let target = seen.recv().await.expect("target seen");
    assert_eq!(target.host, Host::Ip("127.0.0.9".parse()?));
    assert_eq!(target.port, 7000);
    assert!(target.resolvers.is_empty());

    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo_through(vpc, "[::1]:7001", &payload).await, payload);
    let target = seen.recv().await.expect("target seen");
    assert_eq!((target.host, target.port), (Host::Ip("::1".parse()?), 7001));

    // The connector's refusal reaches the client as status + Proxy-Status.
    let (_, head) = request(
        vpc,
        &format!("CONNECT 127.0.0.9:{REFUSED_PORT} HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert_eq!(head.status, 502, "{head:?}");
    let value = head.header("proxy-status").expect("Proxy-Status header");
    assert_eq!(
        value,
        r#"underpass; error=connection_refused; details="connection refused by the origin""#
    );
    seen.recv().await.expect("target seen");

    // TCP service binding: the configured host and port, whatever the client asked.
    let redis = edge.binding_addr("REDIS").expect("binding REDIS");
    assert_eq!(echo_through(redis, "127.0.0.200:1234", b"x").await, b"x");
    let target = seen.recv().await.expect("target seen");
    assert_eq!(target.host, Host::Name("redis.internal".into()));
    assert_eq!(target.port, 6379);
    assert_eq!(target.resolvers, vec!["127.0.0.1:5353".parse()?]);

    // The connector goes away: the registry forgets the connection.
    conn.close(0, b"bye");
    let tunnel = token.tunnel_id;
    tokio::time::timeout(
        HANG_GUARD,
        edge.registry()
            .wait_until(|registry| registry.live_count(&tunnel) == 0),
    )
    .await?;
    assert!(edge.registry().snapshot().is_empty());
    edge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn wrong_secret_and_unknown_tunnel_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let edge = Edge::start(edge_config(dir.path())).await?;
    let token = edge.create_tunnel("prod")?;

    let (_dialer, conn) = dial(&edge, &token).await?;
    let (_control, reply) = register(&conn, token.tunnel_id, &TunnelSecret([7; 32])).await?;
    let ControlMessage::RegisterRefused(refused) = reply else {
        panic!("expected RegisterRefused, got {reply:?}");
    };
    assert_eq!(refused.reason, RefuseReason::BadProof);
    assert_eq!(refused.retry_after_ms, 5_000);
    // The edge closes the connection after the refusal.
    tokio::time::timeout(HANG_GUARD, conn.closed()).await?;
    assert_eq!(edge.registry().live_count(&token.tunnel_id), 0);

    let (_dialer, conn) = dial(&edge, &token).await?;
    let (_control, reply) = register(&conn, TunnelId([9; 16]), &token.secret).await?;
    let ControlMessage::RegisterRefused(refused) = reply else {
        panic!("expected RegisterRefused, got {reply:?}");
    };
    assert_eq!(refused.reason, RefuseReason::UnknownTunnel);
    assert!(edge.registry().snapshot().is_empty());
    edge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_drains_registered_connectors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let edge = Edge::start(edge_config(dir.path())).await?;
    let token = edge.create_tunnel("prod")?;
    let (_dialer, conn) = dial(&edge, &token).await?;
    let (mut control, reply) = register(&conn, token.tunnel_id, &token.secret).await?;
    assert!(
        matches!(reply, ControlMessage::RegisterAccepted(_)),
        "{reply:?}"
    );

    let stopping = tokio::spawn(edge.shutdown());
    let notice = tokio::time::timeout(HANG_GUARD, control.recv()).await??;
    let Some(ControlMessage::Drain(drain)) = notice else {
        panic!("expected Drain, got {notice:?}");
    };
    assert_eq!(drain.grace_ms, 2_000);
    // No stream is open, so the edge closes at once rather than after the grace period.
    tokio::time::timeout(HANG_GUARD, stopping).await??;
    tokio::time::timeout(HANG_GUARD, conn.closed()).await?;
    Ok(())
}

#[tokio::test]
async fn a_connector_that_does_not_answer_gives_connection_timeout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = edge_config(dir.path());
    config.timeouts.connect_ms = 300;
    add_network_binding(&mut config, "VPC", "corp", "prod");
    let edge = Edge::start(config).await?;
    let token = edge.create_tunnel("prod")?;
    let (_dialer, conn) = dial(&edge, &token).await?;
    let (_control, reply) = register(&conn, token.tunnel_id, &token.secret).await?;
    assert!(
        matches!(reply, ControlMessage::RegisterAccepted(_)),
        "{reply:?}"
    );

    // Read the header, never answer; report how the edge ended the stream.
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut incoming = accept_stream(&conn).await.expect("edge opens a stream");
        incoming.header(HANG_GUARD).await.expect("stream header");
        let ended = incoming.reader.next::<StreamHeader>().await;
        let _ = ended_tx.send(ended.is_err());
    });
    let vpc = edge.binding_addr("VPC").expect("binding VPC");
    let (_, head) = request(vpc, "CONNECT 127.0.0.9:7000 HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 504, "{head:?}");
    let value = head.header("proxy-status").expect("Proxy-Status header");
    assert!(value.contains("error=connection_timeout"), "{value}");
    // The abandoned stream is reset, so the connector does not keep it.
    let reset = tokio::time::timeout(HANG_GUARD, ended.recv()).await?;
    assert_eq!(reset, Some(true));
    edge.shutdown().await;
    Ok(())
}
