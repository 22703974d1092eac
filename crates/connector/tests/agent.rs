//! The connector against a minimal in-process edge made of the real transport and mux layers
//! (QUIC on loopback, real registration proof): registration and refusal, retry, TCP streams
//! with half-close, stream errors, the stream limit, heartbeats, service policies, drain and
//! shutdown.
//!
//! The full edge binary is exercised by the workspace's end-to-end tests; this edge does only
//! what each test needs, so the connector's side of the protocol is pinned down here.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use underpass_connector::{ConnectionState, Connector, ConnectorConfig, ConnectorHandle};
use underpass_mux::{open_tcp, OpenError};
use underpass_proto::{
    CloseCode, ControlMessage, DialTarget, Drain, Heartbeat, Host, Origin, ProxyStatus,
    RefuseReason, RegisterRefused, RequestId, ServiceId, ServicePolicyCa, ServiceRef, TcpConnect,
    TunnelSecret,
};
use underpass_transport::tls::DevPki;
use underpass_transport::{Connection, SendStream};

use support::edge::{http_service, tcp_service, TestEdge, EDGE_NAME};
use support::{guarded, read_to_end, GUARD};

fn connect_to(addr: SocketAddr) -> TcpConnect {
    TcpConnect {
        origin: Origin::Dial(DialTarget::from(addr)),
        request_id: RequestId(7),
    }
}

fn connect_service(service: ServiceRef) -> TcpConnect {
    TcpConnect {
        origin: Origin::Service(service),
        request_id: RequestId(7),
    }
}

/// An origin that reads until EOF, then answers `+PONG\r\n` if it read `PING\r\n`, and closes.
async fn redis_like_origin(ip: [u8; 4]) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        socket.read_to_end(&mut request).await.unwrap();
        if request == b"PING\r\n" {
            socket.write_all(b"+PONG\r\n").await.unwrap();
        }
        request
    });
    (addr, task)
}

async fn wait_state(
    handle: &ConnectorHandle,
    what: fn(&ConnectionState) -> bool,
) -> ConnectionState {
    let states = handle
        .wait_for(GUARD, |states| states.iter().any(what))
        .await
        .expect("state reached");
    states.into_iter().find(what).unwrap()
}

#[tokio::test]
async fn registers_and_pipes_tcp_with_half_close() {
    guarded(async {
        let edge = TestEdge::start();
        let handle = Connector::start(edge.config().route_ports("db.test", "5432").build()?)?;
        let registration = edge.accept(42, 0).await?;
        assert_eq!(handle.wait_registered(GUARD).await?, 42);
        let register = &registration.register;
        assert_eq!(register.connection_index, 0);
        assert_eq!(register.connector_id, handle.connector_id());
        assert_eq!(register.version, env!("CARGO_PKG_VERSION"));
        let announced: Vec<&str> = register
            .routes
            .iter()
            .map(|r| r.destination.as_str())
            .collect();
        assert_eq!(announced, ["127.40.0.0/16", "db.test"]);
        assert_eq!(register.routes[1].ports, [(5432, 5432)]);
        assert!(matches!(
            handle.state(),
            ConnectionState::Registered {
                connection_id: 42,
                ..
            }
        ));

        // The Redis example: write PING, close the write side, then read +PONG.
        let (origin, served) = redis_like_origin([127, 40, 0, 1]).await;
        let (mut send, mut recv) = open_tcp(&registration.conn, connect_to(origin), GUARD).await?;
        send.write_chunk(Bytes::from_static(b"PING\r\n")).await?;
        send.finish()?;
        assert_eq!(read_to_end(&mut recv).await?, b"+PONG\r\n");
        assert_eq!(served.await?, b"PING\r\n");

        handle.shutdown().await?;
        let closed = registration.conn.closed().await;
        assert!(
            closed.to_string().contains("connector shutting down"),
            "{closed}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn stream_errors_carry_their_proxy_status() {
    guarded(async {
        let edge = TestEdge::start();
        let handle = Connector::start(edge.config().build()?)?;
        let registration = edge.accept(1, 0).await?;
        handle.wait_registered(GUARD).await?;
        let closed = TcpListener::bind("127.40.0.2:0").await?.local_addr()?;
        let cases = [
            (connect_to(closed), ProxyStatus::ConnectionRefused),
            (
                connect_to("127.41.0.1:80".parse()?),
                ProxyStatus::DestinationIpProhibited,
            ),
            (
                connect_to("127.40.66.1:80".parse()?),
                ProxyStatus::DestinationIpProhibited,
            ),
            (
                TcpConnect {
                    origin: Origin::Dial(DialTarget::new(Host::Name("nowhere.test".into()), 80)),
                    request_id: RequestId(7),
                },
                ProxyStatus::DestinationNotFound,
            ),
        ];
        for (connect, want) in cases {
            let target = format!("{:?}", connect.origin);
            match open_tcp(&registration.conn, connect, GUARD).await {
                Err(OpenError::Refused(reply)) => {
                    assert_eq!(reply.status, want, "{target}: {}", reply.details)
                }
                Err(e) => bail!("{target}: {e}"),
                Ok(_) => bail!("{target}: accepted"),
            }
        }
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn the_stream_limit_refuses_with_connection_limit_reached() {
    guarded(async {
        let edge = TestEdge::start();
        let handle = Connector::start(edge.config().max_streams(1).build()?)?;
        let registration = edge.accept(1, 0).await?;
        handle.wait_registered(GUARD).await?;
        let origin = TcpListener::bind("127.40.0.3:0").await?;
        let addr = origin.local_addr()?;

        let (mut first_send, mut first_recv) =
            open_tcp(&registration.conn, connect_to(addr), GUARD).await?;
        let (mut first_origin, _) = origin.accept().await?;
        match open_tcp(&registration.conn, connect_to(addr), GUARD).await {
            Err(OpenError::Refused(reply)) => {
                assert_eq!(reply.status, ProxyStatus::ConnectionLimitReached)
            }
            Err(e) => bail!("{e}"),
            Ok(_) => bail!("a second stream was accepted over the limit of 1"),
        }

        // End the first stream both ways; its slot comes back.
        first_send.finish()?;
        first_origin.shutdown().await?;
        assert_eq!(read_to_end(&mut first_recv).await?, b"");
        let mut rest = Vec::new();
        first_origin.read_to_end(&mut rest).await?;
        // The slot is released when the stream's task ends, just after: retry until it is.
        loop {
            match open_tcp(&registration.conn, connect_to(addr), GUARD).await {
                Ok(_) => break,
                Err(OpenError::Refused(reply))
                    if reply.status == ProxyStatus::ConnectionLimitReached =>
                {
                    tokio::task::yield_now().await
                }
                Err(e) => bail!("{e}"),
            }
        }
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_retried_with_backoff() {
    guarded(async {
        let edge = TestEdge::start();
        let mut token = edge.token();
        token.secret = TunnelSecret([0x13; 32]);
        let handle = Connector::start(
            ConnectorConfig::builder(token)
                .resolvers(&["127.0.0.1:9".parse()?])
                .reconnect(Duration::from_millis(10), Duration::from_millis(50))
                .build()?,
        )?;
        // Refuse twice, as a real edge would for a bad proof.
        for _ in 0..2 {
            let mut registration = edge.next_registration().await?;
            assert!(!registration.proof_ok, "a wrong secret gave a valid proof");
            let refused = RegisterRefused {
                reason: RefuseReason::BadProof,
                message: "proof does not match".into(),
                retry_after_ms: 0,
            };
            registration
                .control
                .send(&ControlMessage::RegisterRefused(refused))
                .await?;
            let state = wait_state(&handle, |s| matches!(s, ConnectionState::Refused { .. })).await;
            assert_eq!(
                state,
                ConnectionState::Refused {
                    reason: RefuseReason::BadProof,
                    message: "proof does not match".into()
                }
            );
        }
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_connector_pinned_to_another_ca_refuses_the_edge() {
    guarded(async {
        let edge = TestEdge::start();
        let other = DevPki::generate(&[EDGE_NAME.to_owned()])?;
        let mut token = edge.token();
        token.ca_pin = other.ca_pin;
        let handle = Connector::start(
            ConnectorConfig::builder(token)
                .resolvers(&["127.0.0.1:9".parse()?])
                .build()?,
        )?;
        let state = wait_state(&handle, |s| matches!(s, ConnectionState::Failed { .. })).await;
        let ConnectionState::Failed { error } = state else {
            unreachable!()
        };
        assert!(error.contains("pinned CA"), "{error}");
        // It says what to do, without rustls's enum wrappers.
        assert!(error.contains("get a new token from the edge"), "{error}");
        assert!(!error.contains("OtherError"), "{error}");
        println!("{error}");
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn heartbeats_go_both_ways() {
    guarded(async {
        let edge = TestEdge::start();
        let handle = Connector::start(edge.config().build()?)?;
        let registration = edge.accept(7, 20).await?;
        handle.wait_registered(GUARD).await?;
        let mut control = registration.control;
        control
            .send(&ControlMessage::Heartbeat(Heartbeat { seq: 99 }))
            .await?;
        let (mut acked, mut beats) = (false, 0);
        while !acked || beats < 2 {
            match control.recv().await? {
                Some(ControlMessage::HeartbeatAck(Heartbeat { seq: 99 })) => acked = true,
                Some(ControlMessage::Heartbeat(beat)) => {
                    beats += 1;
                    control.send(&ControlMessage::HeartbeatAck(beat)).await?;
                }
                other => bail!("unexpected {other:?}"),
            }
        }
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn unanswered_heartbeats_end_the_connection_and_it_reconnects() {
    guarded(async {
        let edge = TestEdge::start();
        let handle = Connector::start(edge.config().build()?)?;
        // Heartbeats every 10 ms that this edge never answers.
        let first = edge.accept(1, 10).await?;
        let second = edge.accept(2, 0).await?;
        let closed = first.conn.closed().await;
        assert!(closed.to_string().contains("heartbeats"), "{closed}");
        wait_state(&handle, |s| {
            matches!(
                s,
                ConnectionState::Registered {
                    connection_id: 2,
                    ..
                }
            )
        })
        .await;
        drop(second);
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn an_edge_drain_moves_to_a_new_connection_and_lets_streams_finish() {
    guarded(async {
        let edge = TestEdge::start();
        let handle = Connector::start(edge.config().build()?)?;
        let mut old = edge.accept(1, 0).await?;
        handle.wait_registered(GUARD).await?;
        let (origin, served) = redis_like_origin([127, 40, 0, 4]).await;
        let (mut send, mut recv) = open_tcp(&old.conn, connect_to(origin), GUARD).await?;

        let drain = Drain {
            grace_ms: 60_000,
            reason: "edge restarting".into(),
        };
        old.control.send(&ControlMessage::Drain(drain)).await?;
        let new = edge.accept(2, 0).await?;
        assert_eq!(new.register.connector_id, old.register.connector_id);
        wait_state(&handle, |s| {
            matches!(
                s,
                ConnectionState::Registered {
                    connection_id: 2,
                    ..
                }
            )
        })
        .await;

        // The stream on the draining connection still works, half-close included.
        send.write_chunk(Bytes::from_static(b"PING\r\n")).await?;
        send.finish()?;
        assert_eq!(read_to_end(&mut recv).await?, b"+PONG\r\n");
        assert_eq!(served.await?, b"PING\r\n");
        // With its last stream done, the old connection is closed by the connector.
        let closed = old.conn.closed().await;
        assert!(closed.to_string().contains("drained"), "{closed}");

        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn shutdown_sends_drain_and_closes_after_the_grace_period() {
    guarded(async {
        let edge = TestEdge::start();
        let config = edge
            .config()
            .drain_timeout(Duration::from_millis(200))
            .build()?;
        let handle = Connector::start(config)?;
        let mut registration = edge.accept(1, 0).await?;
        handle.wait_registered(GUARD).await?;
        // A stream that stays open: the origin never closes.
        let origin = TcpListener::bind("127.40.0.5:0").await?;
        let (_send, _recv) =
            open_tcp(&registration.conn, connect_to(origin.local_addr()?), GUARD).await?;
        let (mut origin_socket, _) = origin.accept().await?;

        let shutdown = tokio::spawn(handle.shutdown());
        match registration.control.recv().await? {
            Some(ControlMessage::Drain(drain)) => assert_eq!(drain.grace_ms, 200),
            other => bail!("expected Drain, got {other:?}"),
        }
        shutdown.await??;
        let closed = registration.conn.closed().await;
        let code = format!("(code {})", CloseCode::Shutdown.code());
        assert!(
            closed.to_string().contains("connector shutting down")
                && closed.to_string().contains(&code),
            "{closed}"
        );
        // The stream's task had ended when shutdown returned: its origin socket is closed.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(GUARD, origin_socket.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "the origin socket is still open after shutdown"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn several_connections_register_with_their_own_index() {
    guarded(async {
        let edge = TestEdge::start();
        let handle = Connector::start(edge.config().connections(3).build()?)?;
        let mut indexes = Vec::new();
        let mut registrations = Vec::new();
        for id in 0..3 {
            let registration = edge.accept(100 + id, 0).await?;
            indexes.push(registration.register.connection_index);
            registrations.push(registration);
        }
        indexes.sort_unstable();
        assert_eq!(indexes, [0, 1, 2]);
        handle.wait_all_registered(GUARD).await?;
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

/// A stream may arrive before the policy it names (they travel on different QUIC streams): it
/// waits for that generation, then dials what that generation says, not an older one.
#[tokio::test]
async fn a_stream_waits_for_the_policy_generation_it_names() {
    guarded(async {
        let edge = TestEdge::start();
        let handle = Connector::start(edge.config().build()?)?;
        let mut registration = edge.accept(1, 0).await?;
        handle.wait_registered(GUARD).await?;
        let stale = TcpListener::bind("127.40.0.6:0").await?;
        registration
            .send_policy(&tcp_service(3, 1, stale.local_addr()?))
            .await?;
        let (origin, served) = redis_like_origin([127, 40, 0, 7]).await;

        let wanted = ServiceRef {
            id: ServiceId([3; 16]),
            generation: 2,
        };
        let conn = registration.conn.clone();
        let mut open =
            tokio::spawn(async move { open_tcp(&conn, connect_service(wanted), GUARD).await });
        // Evidence that it waits (this cannot fail on a slow machine, only pass wrongly).
        let early = tokio::time::timeout(Duration::from_millis(200), &mut open).await;
        assert!(early.is_err(), "answered before its policy generation came");
        registration.send_policy(&tcp_service(3, 2, origin)).await?;
        let (mut send, mut recv) = open.await??;
        send.write_chunk(Bytes::from_static(b"PING\r\n")).await?;
        send.finish()?;
        assert_eq!(read_to_end(&mut recv).await?, b"+PONG\r\n");
        assert_eq!(served.await?, b"PING\r\n");
        // Generation 1's target was never dialed.
        let dialed_stale = tokio::time::timeout(Duration::ZERO, stale.accept()).await;
        assert!(dialed_stale.is_err(), "the stale generation was dialed");
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_stream_whose_policy_never_comes_is_destination_unavailable() {
    guarded(async {
        let edge = TestEdge::start();
        let config = edge
            .config()
            .header_timeout(Duration::from_millis(300))
            .build()?;
        let handle = Connector::start(config)?;
        let registration = edge.accept(1, 0).await?;
        handle.wait_registered(GUARD).await?;
        let unknown = ServiceRef {
            id: ServiceId([0xee; 16]),
            generation: 1,
        };
        match open_tcp(&registration.conn, connect_service(unknown), GUARD).await {
            Err(OpenError::Refused(reply)) => {
                assert_eq!(reply.status, ProxyStatus::DestinationUnavailable);
                assert!(
                    reply.details.contains(&hex::encode([0xee; 16])),
                    "{}",
                    reply.details
                );
            }
            Err(e) => bail!("{e}"),
            Ok(_) => bail!("a stream with no policy was accepted"),
        }
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

/// `connect()` to an HTTP service is refused as the edge refuses it; the connector's routes
/// still apply to a service's target.
#[tokio::test]
async fn service_targets_obey_kind_and_routes() {
    guarded(async {
        let edge = TestEdge::start();
        let handle = Connector::start(edge.config().build()?)?;
        let mut registration = edge.accept(1, 0).await?;
        handle.wait_registered(GUARD).await?;
        let http = http_service(4, 1, "127.40.0.8:80".parse()?);
        let outside = tcp_service(5, 1, "127.41.0.1:6379".parse()?);
        registration.send_policy(&http).await?;
        registration.send_policy(&outside).await?;
        let cases = [
            (http.service, ProxyStatus::HttpRequestDenied),
            (outside.service, ProxyStatus::DestinationIpProhibited),
        ];
        for (service, want) in cases {
            match open_tcp(&registration.conn, connect_service(service), GUARD).await {
                Err(OpenError::Refused(reply)) => {
                    assert_eq!(reply.status, want, "{}", reply.details)
                }
                Err(e) => bail!("{e}"),
                Ok(_) => bail!("{service:?} accepted"),
            }
        }
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

/// A policy that does not assemble (a CA chunk with no policy before it) is the edge breaking
/// the protocol: the connection is closed with the protocol-error code, and the slot
/// reconnects.
#[tokio::test]
async fn a_bad_service_policy_closes_the_connection_as_a_protocol_error() {
    guarded(async {
        let edge = TestEdge::start();
        let handle = Connector::start(edge.config().build()?)?;
        let mut first = edge.accept(1, 0).await?;
        handle.wait_registered(GUARD).await?;
        let chunk = ServicePolicyCa {
            service: ServiceRef {
                id: ServiceId([6; 16]),
                generation: 1,
            },
            chunk: b"-----BEGIN CERTIFICATE-----".to_vec(),
        };
        first
            .control
            .send(&ControlMessage::ServicePolicyCa(chunk))
            .await?;
        let closed = first.conn.closed().await.to_string();
        let code = format!("(code {})", CloseCode::Protocol.code());
        assert!(
            closed.contains(&code) && closed.contains("service policy"),
            "{closed}"
        );
        let _second = edge.accept(2, 0).await?;
        wait_state(&handle, |s| {
            matches!(
                s,
                ConnectionState::Registered {
                    connection_id: 2,
                    ..
                }
            )
        })
        .await;
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}

/// Shutdown lets an open stream finish within the grace, then returns without waiting the
/// grace out.
#[tokio::test]
async fn shutdown_lets_open_streams_finish_then_returns() {
    guarded(async {
        let edge = TestEdge::start();
        let config = edge.config().drain_timeout(GUARD * 10).build()?;
        let handle = Connector::start(config)?;
        let mut registration = edge.accept(1, 0).await?;
        handle.wait_registered(GUARD).await?;
        let (origin, served) = redis_like_origin([127, 40, 0, 10]).await;
        let (mut send, mut recv) = open_tcp(&registration.conn, connect_to(origin), GUARD).await?;

        let shutdown = tokio::spawn(handle.shutdown());
        match registration.control.recv().await? {
            Some(ControlMessage::Drain(_)) => {}
            other => bail!("expected Drain, got {other:?}"),
        }
        // Draining: the stream still works, half-close included.
        send.write_chunk(Bytes::from_static(b"PING\r\n")).await?;
        send.finish()?;
        assert_eq!(read_to_end(&mut recv).await?, b"+PONG\r\n");
        assert_eq!(served.await?, b"PING\r\n");
        // With its last stream done, the connector stops (GUARD is far below the grace).
        shutdown.await??;
        let closed = registration.conn.closed().await.to_string();
        assert!(closed.contains("connector shutting down"), "{closed}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_reload_applies_new_routes_to_new_streams_and_announces_them() {
    guarded(async {
        let edge = TestEdge::start();
        let before = TcpListener::bind("127.40.7.1:0").await?;
        let after = TcpListener::bind("127.41.7.1:0").await?;
        let handle = Connector::start(edge.config().build()?)?;
        let mut registration = edge.accept(1, 0).await?;
        assert_eq!(registration.register.routes[0].destination, "127.40.0.0/16");
        handle.wait_registered(GUARD).await?;
        let connect = |addr: SocketAddr| TcpConnect {
            origin: Origin::Dial(DialTarget::from(addr)),
            request_id: RequestId(9),
        };
        open_tcp(&registration.conn, connect(before.local_addr()?), GUARD).await?;
        match open_tcp(&registration.conn, connect(after.local_addr()?), GUARD).await {
            Err(OpenError::Refused(reply)) => {
                assert_eq!(reply.status, ProxyStatus::DestinationIpProhibited)
            }
            Err(other) => bail!("expected a refusal, got {other}"),
            Ok(_) => bail!("expected a refusal, the stream was accepted"),
        }

        let reloaded = edge
            .bare_config()
            .route("127.41.0.0/16")
            .deny(&["127.40.66.0/24"])
            .drain_timeout(Duration::from_millis(1))
            .build()?;
        let report = handle.reload(reloaded)?;
        assert!(report.routes_changed);
        assert_eq!(report.restart_needed, ["timeouts.drain_ms"]);
        // Announced on the control stream.
        let routes = loop {
            match registration.control.recv().await? {
                Some(ControlMessage::Routes(update)) => break update.routes,
                Some(ControlMessage::Heartbeat(_)) => continue,
                other => bail!("expected Routes, got {other:?}"),
            }
        };
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].destination, "127.41.0.0/16");
        // New streams use the new routes.
        open_tcp(&registration.conn, connect(after.local_addr()?), GUARD).await?;
        match open_tcp(&registration.conn, connect(before.local_addr()?), GUARD).await {
            Err(OpenError::Refused(reply)) => {
                assert_eq!(reply.status, ProxyStatus::DestinationIpProhibited)
            }
            Err(other) => bail!("expected a refusal, got {other}"),
            Ok(_) => bail!("expected a refusal, the stream was accepted"),
        }
        handle.shutdown().await?;
        Ok(())
    })
    .await;
}
