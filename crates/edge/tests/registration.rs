//! Registration, service policies and `CONNECT` through a real QUIC connection, with the fake
//! connector of `common::connector`.

mod common;

use std::time::Duration;

use common::connector::{self, connect, dial, register};
use common::{request, tcp_service, EdgeBuilder, HANG_GUARD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use underpass_edge::config::{CertVerificationMode, ServiceHost};
use underpass_mux::accept_stream;
use underpass_proto::{
    ConnectorId, ControlMessage, DialTarget, Heartbeat, Host, HttpResponseHead, Origin,
    ProxyStatus, RefuseReason, StreamHeader, StreamReply, TlsVerification, TunnelId, TunnelSecret,
    CA_CHUNK_LEN,
};
use underpass_transport::{AnyConnection, Connection, RecvStream, SendStream};

/// The fake connector refuses streams to this port, as if the origin refused.
const REFUSED_PORT: u16 = 1;

/// Accept the edge's TCP streams: report each origin, refuse [`REFUSED_PORT`], echo the rest
/// (finishing after the edge finishes, so half-close is visible end to end).
async fn serve_streams(conn: AnyConnection, seen: mpsc::UnboundedSender<Origin>) {
    while let Ok(mut incoming) = accept_stream(&conn).await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let Ok(StreamHeader::Tcp(connect)) = incoming.header(Duration::from_secs(5)).await
            else {
                return;
            };
            let _ = seen.send(connect.origin.clone());
            if matches!(&connect.origin, Origin::Dial(t) if t.port == REFUSED_PORT) {
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

fn dial_target(origin: Origin) -> DialTarget {
    match origin {
        Origin::Dial(target) => target,
        Origin::Service(service) => panic!("expected an address, got {service:?}"),
    }
}

#[tokio::test]
async fn registered_connector_carries_connect() -> anyhow::Result<()> {
    let redis = tcp_service(
        "redis",
        "prod",
        ServiceHost::hostname("redis.internal", vec!["127.0.0.1:5353".parse()?]),
        6379,
    );
    let (edge, _dir) = EdgeBuilder::new()
        .network_binding("VPC", "corp", "prod")
        .service(redis)
        .service_binding("REDIS", "redis")
        .start()
        .await;
    let token = edge.create_tunnel("prod")?;
    assert_eq!(token.edges, vec![edge.quic_addr().to_string()]);

    let mut connected = connect(&edge, &token).await?;
    let ControlMessage::RegisterAccepted(accepted) = &connected.reply else {
        panic!("expected RegisterAccepted, got {:?}", connected.reply);
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

    // The tunnel's one service comes right after the registration, once.
    let (policies, _) = connector::policies(&mut connected.control, 1).await?;
    let policy = &policies[0];
    assert_eq!(policy.name, "redis");
    assert_eq!(policy.host, Host::Name("redis.internal".into()));
    assert_eq!(policy.tcp_port, Some(6379));
    assert_eq!(policy.resolvers, vec!["127.0.0.1:5353".parse()?]);
    assert_eq!(policy.service.generation, 1);

    let control = &mut connected.control;
    control
        .send(&ControlMessage::Heartbeat(Heartbeat { seq: 7 }))
        .await?;
    let ack = tokio::time::timeout(HANG_GUARD, control.recv()).await??;
    assert_eq!(
        ack,
        Some(ControlMessage::HeartbeatAck(Heartbeat { seq: 7 }))
    );

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(serve_streams(connected.conn.clone(), seen_tx));
    let vpc = edge.binding_addr("VPC").expect("binding VPC");

    // Network binding: the client's address is the destination; half-close passes through.
    let echoed = echo_through(vpc, "127.0.0.9:7000", b"PING\r\n").await;
    assert_eq!(echoed, b"PING\r\n");
    let target = dial_target(seen.recv().await.expect("origin seen"));
    assert_eq!(target.host, Host::Ip("127.0.0.9".parse()?));
    assert_eq!(target.port, 7000);
    assert!(target.resolvers.is_empty());

    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo_through(vpc, "[::1]:7001", &payload).await, payload);
    let target = dial_target(seen.recv().await.expect("origin seen"));
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
    seen.recv().await.expect("origin seen");

    // TCP service binding: the stream names the service (at the policy's generation), whatever
    // the client asked; the connector has host, port and resolvers from the policy.
    let redis = edge.binding_addr("REDIS").expect("binding REDIS");
    assert_eq!(echo_through(redis, "127.0.0.200:1234", b"x").await, b"x");
    let origin = seen.recv().await.expect("origin seen");
    assert_eq!(origin, Origin::Service(policy.service));

    // The connector goes away: the registry forgets the connection.
    connected.conn.close(0, b"bye");
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
async fn a_512_kib_ca_bundle_travels_once_and_fetch_names_the_service() -> anyhow::Result<()> {
    let builder = EdgeBuilder::new();
    let ca_file = builder.dir().join("big-ca.pem");
    let block = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let bundle = block.repeat(512 * 1024 / block.len() + 1);
    assert!(bundle.len() > 512 * 1024);
    std::fs::write(&ca_file, &bundle)?;
    let mut api = common::http_service("api", "prod");
    api.https_port = Some(8443);
    api.tls.cert_verification_mode = CertVerificationMode::VerifyCa;
    api.tls.ca_file = Some(ca_file);
    let (edge, _dir) = builder
        .service(api)
        .service_binding("API", "api")
        .start()
        .await;
    let token = edge.create_tunnel("prod")?;
    let mut connected = connect(&edge, &token).await?;
    assert!(
        matches!(connected.reply, ControlMessage::RegisterAccepted(_)),
        "{:?}",
        connected.reply
    );

    let (policies, messages) = connector::policies(&mut connected.control, 1).await?;
    let policy = &policies[0];
    assert_eq!(policy.ca_pem.as_deref(), Some(bundle.as_str()));
    assert_eq!(policy.tls, TlsVerification::VerifyCa);
    assert_eq!((policy.http_port, policy.https_port), (None, Some(8443)));
    assert_eq!(messages, 1 + bundle.len().div_ceil(CA_CHUNK_LEN));

    // A fetch() carries only the service and generation; the connector answers.
    let conn = connected.conn.clone();
    let answered = tokio::spawn(async move {
        let mut incoming = accept_stream(&conn).await.expect("edge opens a stream");
        let header = incoming.header(HANG_GUARD).await.expect("stream header");
        let reply = StreamReply::Http(HttpResponseHead {
            status: 204,
            headers: Vec::new(),
            body: underpass_proto::BodyKind::Empty,
        });
        incoming.reply(&reply).await.expect("reply");
        let (mut send, _recv) = incoming.into_parts();
        let _ = send.finish();
        let _ = send.stopped().await;
        header
    });
    let binding = edge.binding_addr("API").expect("binding API");
    let (_, head) = request(binding, "GET http://api.internal/x HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 204, "{head:?}");
    let StreamHeader::Http(sent) = tokio::time::timeout(HANG_GUARD, answered).await?? else {
        panic!("an HTTP stream");
    };
    assert_eq!(sent.origin, Origin::Service(policy.service));
    // Only https_port is set: https is forced.
    assert_eq!(sent.scheme, underpass_proto::Scheme::Https);

    // Heartbeats still answered after the bundle: the control stream is in step.
    let control = &mut connected.control;
    control
        .send(&ControlMessage::Heartbeat(Heartbeat { seq: 1 }))
        .await?;
    assert_eq!(
        connector::next(control).await?,
        ControlMessage::HeartbeatAck(Heartbeat { seq: 1 })
    );
    edge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_431() -> anyhow::Result<()> {
    let (edge, _dir) = EdgeBuilder::new()
        .network_binding("VPC", "corp", "prod")
        .start()
        .await;
    let token = edge.create_tunnel("prod")?;
    let connected = connect(&edge, &token).await?;
    assert!(matches!(
        connected.reply,
        ControlMessage::RegisterAccepted(_)
    ));
    let vpc = edge.binding_addr("VPC").expect("binding VPC");
    // One header larger than the edge's head limit (48 KiB, what a frame can carry), within
    // what hyper reads (64 KiB): refused by the edge before any stream.
    let huge = "a".repeat(50 * 1024);
    let (_, head) = request(
        vpc,
        &format!("GET http://db.internal/ HTTP/1.1\r\nx-huge: {huge}\r\n\r\n"),
    )
    .await;
    assert_eq!(head.status, 431, "{head:?}");
    let value = head.header("proxy-status").expect("Proxy-Status header");
    assert!(value.contains("error=http_request_error"), "{value}");
    edge.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn wrong_secret_and_unknown_tunnel_are_refused() -> anyhow::Result<()> {
    let (edge, _dir) = EdgeBuilder::new().start().await;
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
    let (edge, _dir) = EdgeBuilder::new().start().await;
    let token = edge.create_tunnel("prod")?;
    let mut connected = connect(&edge, &token).await?;
    assert!(
        matches!(connected.reply, ControlMessage::RegisterAccepted(_)),
        "{:?}",
        connected.reply
    );

    let stopping = tokio::spawn(edge.shutdown());
    let notice = connector::next(&mut connected.control).await?;
    let ControlMessage::Drain(drain) = notice else {
        panic!("expected Drain, got {notice:?}");
    };
    assert_eq!(drain.grace_ms, 2_000);
    // No stream is open, so the edge closes at once rather than after the grace period.
    tokio::time::timeout(HANG_GUARD, stopping).await??;
    tokio::time::timeout(HANG_GUARD, connected.conn.closed()).await?;
    Ok(())
}

#[tokio::test]
async fn a_connector_that_does_not_answer_gives_connection_timeout() -> anyhow::Result<()> {
    let (edge, _dir) = EdgeBuilder::new()
        .with(|config| config.timeouts.connect_ms = 300)
        .network_binding("VPC", "corp", "prod")
        .start()
        .await;
    let token = edge.create_tunnel("prod")?;
    let connected = connect(&edge, &token).await?;
    assert!(matches!(
        connected.reply,
        ControlMessage::RegisterAccepted(_)
    ));

    // Read the header, never answer; report how the edge ended the stream.
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let conn = connected.conn.clone();
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

/// A connector announcing no route gets no stream: the edge refuses with the connector's own
/// codes. A `Routes` message replaces what the connection announced, and the next stream goes
/// through.
#[tokio::test]
async fn a_routes_update_replaces_the_announced_routes() -> anyhow::Result<()> {
    let (edge, _dir) = EdgeBuilder::new()
        .network_binding("VPC", "corp", "prod")
        .start()
        .await;
    let token = edge.create_tunnel("prod")?;
    let (_dialer, conn) = dial(&edge, &token).await?;
    let (mut control, reply) =
        connector::register_with(&conn, token.tunnel_id, &token.secret, Vec::new()).await?;
    assert!(
        matches!(reply, ControlMessage::RegisterAccepted(_)),
        "{reply:?}"
    );
    tokio::time::timeout(HANG_GUARD, edge.registry().wait_live(&token.tunnel_id, 1)).await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(serve_streams(conn.clone(), seen_tx));
    let vpc = edge.binding_addr("VPC").expect("binding VPC");

    let (_, head) = request(vpc, "CONNECT 127.0.0.9:7000 HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 502, "{head:?}");
    let value = head.header("proxy-status").expect("Proxy-Status header");
    assert!(
        value.contains("error=destination_ip_prohibited")
            && value.contains("no connector of tunnel prod announces a route for 127.0.0.9:7000"),
        "{value}"
    );
    let (_, head) = request(vpc, "CONNECT db.internal:5432 HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 502, "{head:?}");
    assert!(
        head.header("proxy-status")
            .is_some_and(|v| v.contains("error=destination_not_found")),
        "{head:?}"
    );

    let routes = vec![underpass_proto::AnnouncedRoute {
        destination: "127.0.0.0/24".into(),
        ports: vec![(7000, 7000)],
    }];
    control
        .send(&ControlMessage::Routes(underpass_proto::RoutesUpdate {
            routes: routes.clone(),
        }))
        .await?;
    let registry = edge.registry().clone();
    tokio::time::timeout(
        HANG_GUARD,
        registry
            .wait_until(|r| r.snapshot().first().map(|c| &c.registration.routes) == Some(&routes)),
    )
    .await?;
    assert_eq!(echo_through(vpc, "127.0.0.9:7000", b"hi").await, b"hi");
    let target = dial_target(seen.recv().await.expect("origin seen"));
    assert_eq!(target.port, 7000);
    // Another port of the same network is still not announced.
    let (_, head) = request(vpc, "CONNECT 127.0.0.9:7001 HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 502, "{head:?}");
    Ok(())
}
