//! `fetch()` through a real connector (test edge, real QUIC, stream dispatch, dialer, origin
//! client) against real origins on loopback: request and response fidelity, streaming both
//! ways, keep-alive reuse, cancellation, upgrades, error mapping.
//!
//! TLS and HTTP/2 origins are in `origin_tls.rs`.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use underpass_proto::{
    BodyKind, Origin, ProxyStatus, ServiceId, ServiceRef, StreamReply, RESET_CANCELLED,
    RESET_INTERNAL,
};
use underpass_transport::{RecvStream, SendStream, StreamError};

use support::edge::{http_service, tcp_service};
use support::origins::{raw_origin, read_head, wait_eof, EchoOrigin};
use support::tunnel::{get, with_header, Tunnel, LIMIT};

/// The issue's bound on closing the origin connection after a cancellation.
const CANCEL_BOUND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn service_request_arrives_intact_and_response_comes_back() {
    let origin = EchoOrigin::start("127.0.31.1").await;
    let tunnel = Tunnel::start().await;
    let body = br#"{"name":"Ada","roles":["admin"]}"#;
    // A VPC Service: the configured address is dialed; the URL's host and port only fill
    // Host.
    let mut head = get("internal-api.company.local:9999", "/users?page=2");
    head.method = "POST".into();
    head.origin = Origin::Service(tunnel.service(http_service(0, 1, origin.addr)).await);
    head.body = BodyKind::Length(body.len() as u64);
    let head = with_header(head, "authorization", "Bearer s3cr3t");
    let head = with_header(head, "content-type", "application/json");
    let fetched = tunnel.fetch(head, body).await;
    assert_eq!(fetched.head().status, 200);
    assert_eq!(
        fetched.header("content-type").as_deref(),
        Some("application/json")
    );
    let echo = fetched.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/users?page=2");
    assert_eq!(echo["host"], "internal-api.company.local:9999");
    assert_eq!(echo["authorization"], "Bearer s3cr3t");
    assert_eq!(echo["content_type"], "application/json");
    assert_eq!(echo["content_length"], body.len().to_string());
    assert_eq!(echo["body_sha256"], hex::encode(Sha256::digest(body)));
    assert_eq!(echo["version"], "HTTP/1.1");
}

#[tokio::test]
async fn network_request_dials_the_authority_and_keeps_an_explicit_host() {
    let origin = EchoOrigin::start("127.0.31.2").await;
    let tunnel = Tunnel::start().await;
    let fetched = tunnel.fetch(get(origin.addr.to_string(), "/"), b"").await;
    assert_eq!(fetched.json()["host"], origin.addr.to_string());
    let head = with_header(get(origin.addr.to_string(), "/"), "host", "chosen.example");
    let fetched = tunnel.fetch(head, b"").await;
    assert_eq!(fetched.json()["host"], "chosen.example");
}

#[tokio::test]
async fn origin_error_statuses_pass_through_untouched() {
    let origin = EchoOrigin::start("127.0.31.3").await;
    let tunnel = Tunnel::start().await;
    for code in [404u16, 418, 500, 503] {
        let fetched = tunnel
            .fetch(
                get(origin.addr.to_string(), &format!("/status/{code}")),
                b"",
            )
            .await;
        assert_eq!(fetched.head().status, code);
        assert_eq!(fetched.header("x-origin-status"), Some(code.to_string()));
        assert_eq!(
            fetched.body.as_deref().unwrap(),
            format!("origin says {code}").as_bytes()
        );
    }
}

#[tokio::test]
async fn chunked_upload_and_download_of_a_large_body() {
    let origin = EchoOrigin::start("127.0.31.4").await;
    let tunnel = Tunnel::start().await;
    let payload: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut head = get(origin.addr.to_string(), "/upload");
    head.method = "PUT".into();
    head.body = BodyKind::Streaming;
    let mut exchange = tunnel.open(head).await;
    for chunk in payload.chunks(700_000) {
        exchange
            .send
            .write_chunk(Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    exchange.send.finish().unwrap();
    let StreamReply::Http(reply) = exchange.reply().await else {
        panic!("expected a response");
    };
    assert_eq!(reply.status, 200);
    let body = exchange.read_to_end().await.unwrap();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["transfer_encoding"], "chunked");
    assert_eq!(echo["body_len"], payload.len());
    assert_eq!(echo["body_sha256"], hex::encode(Sha256::digest(&payload)));

    // Download: the same bytes streamed back by /duplex, in many stream chunks.
    let mut head = get(origin.addr.to_string(), "/duplex");
    head.method = "POST".into();
    head.body = BodyKind::Length(payload.len() as u64);
    let fetched = tunnel.fetch(head, &payload).await;
    assert_eq!(fetched.head().body, BodyKind::Length(payload.len() as u64));
    let echoed = fetched.body.as_ref().unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed[..] == payload[..]);
}

/// Each request chunk reaches the origin and comes back before the next one is sent: neither
/// direction waits for the whole body.
#[tokio::test]
async fn bodies_stream_both_ways_in_lockstep() {
    let origin = EchoOrigin::start("127.0.31.5").await;
    let tunnel = Tunnel::start().await;
    let mut head = get(origin.addr.to_string(), "/duplex");
    head.method = "POST".into();
    head.body = BodyKind::Streaming;
    let mut exchange = tunnel.open(head).await;
    exchange
        .send
        .write_chunk(Bytes::from_static(b"chunk-0;"))
        .await
        .unwrap();
    let StreamReply::Http(reply) = exchange.reply().await else {
        panic!("expected a response");
    };
    assert_eq!(reply.body, BodyKind::Streaming);
    let mut body = exchange.body();
    for i in 0..5 {
        if i > 0 {
            let chunk = format!("chunk-{i};");
            exchange.send.write_chunk(Bytes::from(chunk)).await.unwrap();
        }
        let want = format!("chunk-{i};");
        let mut got = Vec::new();
        while got.len() < want.len() {
            let chunk = tokio::time::timeout(LIMIT, body.read_chunk(1024))
                .await
                .expect("echo of an unfinished upload never came: something buffers")
                .unwrap()
                .expect("body ended early");
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, want.as_bytes());
    }
    exchange.send.finish().unwrap();
    let rest = tokio::time::timeout(LIMIT, body.read_chunk(1024))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, None);
}

/// A server-sent-events origin: each event is released by the test only after the previous
/// one reached the edge, so a buffering proxy would hang here instead of passing.
#[tokio::test]
async fn server_sent_events_arrive_chunk_by_chunk() {
    let origin = EchoOrigin::start("127.0.31.6").await;
    let tunnel = Tunnel::start().await;
    let feed = origin.feed();
    feed.send(Bytes::from_static(b"data: 0\n\n")).await.unwrap();
    let fetched_head = get(origin.addr.to_string(), "/sse");
    let mut exchange = tunnel.open(fetched_head).await;
    exchange.send.finish().unwrap();
    let StreamReply::Http(reply) = exchange.reply().await else {
        panic!("expected a response");
    };
    assert_eq!(reply.body, BodyKind::Streaming);
    let mut body = exchange.body();
    let mut arrivals = Vec::new();
    for i in 0..5 {
        if i > 0 {
            feed.send(Bytes::from(format!("data: {i}\n\n")))
                .await
                .unwrap();
        }
        let chunk = tokio::time::timeout(LIMIT, body.read_chunk(1024))
            .await
            .expect("event not delivered while the response is still open")
            .unwrap()
            .expect("body ended early");
        arrivals.push((Instant::now(), chunk));
    }
    drop(feed);
    assert_eq!(
        tokio::time::timeout(LIMIT, body.read_chunk(1024))
            .await
            .unwrap()
            .unwrap(),
        None
    );
    for (i, (_, chunk)) in arrivals.iter().enumerate() {
        assert_eq!(chunk, format!("data: {i}\n\n").as_bytes());
    }
    assert!(arrivals.windows(2).all(|w| w[0].0 <= w[1].0));
}

#[tokio::test]
async fn keep_alive_reuses_one_origin_connection() {
    let origin = EchoOrigin::start("127.0.31.7").await;
    let tunnel = Tunnel::start().await;
    for i in 0..3 {
        let mut head = get(origin.addr.to_string(), &format!("/n/{i}"));
        if i == 1 {
            head.method = "POST".into();
            head.body = BodyKind::Length(5);
        }
        let body: &[u8] = if i == 1 { b"hello" } else { b"" };
        let fetched = tunnel.fetch(head, body).await;
        assert_eq!(fetched.json()["path"], format!("/n/{i}"));
    }
    assert_eq!(origin.connections(), 1);
}

#[tokio::test]
async fn a_connection_the_origin_closes_is_not_reused() {
    let origin = EchoOrigin::start("127.0.31.16").await;
    let tunnel = Tunnel::start().await;
    let fetched = tunnel
        .fetch(get(origin.addr.to_string(), "/close"), b"")
        .await;
    assert_eq!(fetched.body.as_deref().unwrap(), b"closing");
    // Hop-by-hop: the origin's Connection header is not passed on.
    assert_eq!(fetched.header("connection"), None);
    let fetched = tunnel
        .fetch(get(origin.addr.to_string(), "/after"), b"")
        .await;
    assert_eq!(fetched.json()["path"], "/after");
    assert_eq!(origin.connections(), 2);
}

/// An origin that closes every connection right after its response, without saying so
/// (`Connection: close` missing): the pool must not hand out the dead connection.
#[tokio::test]
async fn silently_closed_keep_alive_connections_are_not_reused() {
    let addr = raw_origin("127.0.31.17", |mut tcp| async move {
        read_head(&mut tcp).await;
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
    })
    .await;
    let tunnel = Tunnel::start().await;
    for _ in 0..5 {
        let fetched = tunnel.fetch(get(addr.to_string(), "/"), b"").await;
        assert_eq!(fetched.head().status, 200);
        assert_eq!(fetched.body.as_deref().unwrap(), b"ok");
    }
}

#[tokio::test]
async fn idle_origin_connections_expire() {
    let origin = EchoOrigin::start("127.0.31.8").await;
    let tunnel = Tunnel::with(|c| c.origin_idle_timeout(Duration::from_millis(200))).await;
    tunnel.fetch(get(origin.addr.to_string(), "/"), b"").await;
    tokio::time::timeout(LIMIT, origin.wait_closed(1))
        .await
        .expect("idle connection never closed");
    // A later request dials again.
    tunnel.fetch(get(origin.addr.to_string(), "/"), b"").await;
    assert_eq!(origin.connections(), 2);
}

/// An origin that takes requests and never answers; reports each request and each close.
async fn silent_origin(ip: &str) -> (std::net::SocketAddr, mpsc::Receiver<&'static str>) {
    let (events, rx) = mpsc::channel(8);
    let addr = raw_origin(ip, move |mut tcp| {
        let events = events.clone();
        async move {
            read_head(&mut tcp).await;
            let _ = events.send("request").await;
            wait_eof(&mut tcp).await;
            let _ = events.send("closed").await;
        }
    })
    .await;
    (addr, rx)
}

#[tokio::test]
async fn cancel_before_the_head_closes_the_origin_connection() {
    let (addr, mut events) = silent_origin("127.0.31.9").await;
    let tunnel = Tunnel::start().await;
    let mut exchange = tunnel.open(get(addr.to_string(), "/slow")).await;
    exchange.send.finish().unwrap();
    let event = tokio::time::timeout(LIMIT, events.recv()).await.unwrap();
    assert_eq!(event, Some("request"));
    let mut body = exchange.body();
    let stopped = Instant::now();
    body.stop(RESET_CANCELLED);
    let event = tokio::time::timeout(CANCEL_BOUND, events.recv())
        .await
        .expect("origin connection still open 1 s after the cancellation");
    assert_eq!(event, Some("closed"));
    println!(
        "origin saw the close {:?} after the stop",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn cancel_mid_response_closes_the_origin_connection() {
    let (events, mut rx) = mpsc::channel(8);
    let addr = raw_origin("127.0.31.10", move |mut tcp| {
        let events = events.clone();
        async move {
            read_head(&mut tcp).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n9\r\ndata: 0\n\n\r\n";
            tcp.write_all(head.as_bytes()).await.unwrap();
            // Then stall, as an event stream with nothing to say.
            wait_eof(&mut tcp).await;
            let _ = events.send(Instant::now()).await;
        }
    })
    .await;
    let tunnel = Tunnel::start().await;
    let mut exchange = tunnel.open(get(addr.to_string(), "/events")).await;
    exchange.send.finish().unwrap();
    assert!(matches!(exchange.reply().await, StreamReply::Http(_)));
    let mut body = exchange.body();
    let first = tokio::time::timeout(LIMIT, body.read_chunk(1024))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some(&b"data: 0\n\n"[..]));
    let stopped = Instant::now();
    body.stop(RESET_CANCELLED);
    let closed = tokio::time::timeout(CANCEL_BOUND, rx.recv())
        .await
        .expect("origin connection still open 1 s after the cancellation")
        .unwrap();
    println!("origin saw the close {:?} after the stop", closed - stopped);
}

#[tokio::test]
async fn aborted_upload_closes_the_origin_connection() {
    let (addr, mut events) = silent_origin("127.0.31.11").await;
    let tunnel = Tunnel::start().await;
    let mut head = get(addr.to_string(), "/upload");
    head.method = "POST".into();
    head.body = BodyKind::Streaming;
    let mut exchange = tunnel.open(head).await;
    exchange
        .send
        .write_chunk(Bytes::from_static(b"part of an upload"))
        .await
        .unwrap();
    let event = tokio::time::timeout(LIMIT, events.recv()).await.unwrap();
    assert_eq!(event, Some("request"));
    exchange.send.reset(RESET_CANCELLED);
    let event = tokio::time::timeout(CANCEL_BOUND, events.recv())
        .await
        .expect("origin connection still open 1 s after the upload was aborted");
    assert_eq!(event, Some("closed"));
}

#[tokio::test]
async fn websocket_upgrade_becomes_a_raw_pipe_with_half_close() {
    let addr = raw_origin("127.0.31.12", support::tunnel::upgrade_script).await;
    let tunnel = Tunnel::start().await;
    support::tunnel::check_upgrade(&tunnel, get(addr.to_string(), "/chat")).await;
}

#[tokio::test]
async fn declined_upgrade_is_an_ordinary_response_and_an_unusable_101_http_upgrade_failed() {
    let addr = raw_origin("127.0.31.13", |mut tcp| async move {
        let head = read_head(&mut tcp).await;
        let answer = if head.contains("/chat") {
            "HTTP/1.1 426 Upgrade Required\r\ncontent-length: 14\r\n\r\nnot websocket!"
        } else {
            // A 101 naming no protocol: not a switch to what the request offered.
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\r\n"
        };
        let _ = tcp.write_all(answer.as_bytes()).await;
        wait_eof(&mut tcp).await;
    })
    .await;
    let tunnel = Tunnel::start().await;
    let mut head = with_header(get(addr.to_string(), "/chat"), "upgrade", "websocket");
    head.body = BodyKind::Upgrade;
    let fetched = tunnel.fetch(head.clone(), b"").await;
    assert_eq!(fetched.head().status, 426);
    assert_eq!(fetched.head().body, BodyKind::Length(14));
    assert_eq!(fetched.body.as_deref().ok(), Some(&b"not websocket!"[..]));

    head.path = "/bare-101".into();
    let fetched = tunnel.fetch(head, b"").await;
    let error = fetched.error();
    assert_eq!(error.status, ProxyStatus::HttpUpgradeFailed);
    assert!(error.details.contains("101"), "{}", error.details);
}

#[tokio::test]
async fn failures_before_the_head_map_to_proxy_status() {
    let tunnel = Tunnel::with(|c| c.response_header_timeout(Duration::from_millis(300))).await;

    let closed_port = {
        let listener = tokio::net::TcpListener::bind("127.0.31.14:0")
            .await
            .unwrap();
        listener.local_addr().unwrap()
    };
    let fetched = tunnel.fetch(get(closed_port.to_string(), "/"), b"").await;
    assert_eq!(fetched.error().status, ProxyStatus::ConnectionRefused);

    let garbage = raw_origin("127.0.31.14", |mut tcp| async move {
        read_head(&mut tcp).await;
        let _ = tcp.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
        wait_eof(&mut tcp).await;
    })
    .await;
    let fetched = tunnel.fetch(get(garbage.to_string(), "/"), b"").await;
    assert_eq!(fetched.error().status, ProxyStatus::HttpProtocolError);

    let hangs_up = raw_origin("127.0.31.14", |mut tcp| async move {
        read_head(&mut tcp).await;
    })
    .await;
    let fetched = tunnel.fetch(get(hangs_up.to_string(), "/"), b"").await;
    assert_eq!(fetched.error().status, ProxyStatus::ConnectionTerminated);

    let (silent, _events) = silent_origin("127.0.31.14").await;
    let fetched = tunnel.fetch(get(silent.to_string(), "/"), b"").await;
    assert_eq!(fetched.error().status, ProxyStatus::ConnectionReadTimeout);

    // Outside the routes (127.0.0.0/8 only): refused by the dialer, nothing sent.
    let fetched = tunnel.fetch(get("[::1]:9", "/"), b"").await;
    assert_eq!(fetched.error().status, ProxyStatus::DestinationIpProhibited);

    let fetched = tunnel.fetch(get("bad host:x", "/"), b"").await;
    assert_eq!(fetched.error().status, ProxyStatus::HttpRequestError);
}

#[tokio::test]
async fn a_body_cut_short_by_the_origin_resets_the_stream() {
    let (close_tx, close_rx) = mpsc::channel::<()>(1);
    let close_rx = std::sync::Arc::new(tokio::sync::Mutex::new(close_rx));
    let addr = raw_origin("127.0.31.15", move |mut tcp| {
        let close_rx = close_rx.clone();
        async move {
            read_head(&mut tcp).await;
            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b";
            let _ = tcp.write_all(answer.as_bytes()).await;
            // Closing once the edge has the start leaves 90 bytes missing.
            close_rx.lock().await.recv().await;
        }
    })
    .await;
    let tunnel = Tunnel::start().await;
    let mut exchange = tunnel.open(get(addr.to_string(), "/")).await;
    exchange.send.finish().unwrap();
    let StreamReply::Http(reply) = exchange.reply().await else {
        panic!("expected a response");
    };
    assert_eq!(reply.body, BodyKind::Length(100));
    let mut body = exchange.body();
    assert_eq!(
        support::tunnel::read_exactly(&mut body, 10).await,
        b"only ten b"
    );
    close_tx.send(()).await.unwrap();
    let end = tokio::time::timeout(LIMIT, body.read_chunk(1024))
        .await
        .unwrap();
    assert_eq!(end, Err(StreamError::Reset(RESET_INTERNAL)));
}

/// `fetch()` to a TCP service is refused as the edge refuses it; one naming a service whose
/// policy never comes is `destination_unavailable` once the header timeout is over.
#[tokio::test]
async fn a_fetch_to_a_tcp_service_or_a_service_without_policy_is_refused() {
    let tunnel = Tunnel::with(|c| c.header_timeout(Duration::from_millis(300))).await;
    let tcp = tunnel
        .service(tcp_service(0, 1, "127.0.31.18:6379".parse().unwrap()))
        .await;
    let mut head = get("api.internal", "/");
    head.origin = Origin::Service(tcp);
    let error = tunnel.fetch(head, b"").await.error().clone();
    assert_eq!(
        error.status,
        ProxyStatus::HttpRequestDenied,
        "{}",
        error.details
    );

    let mut head = get("api.internal", "/");
    head.origin = Origin::Service(ServiceRef {
        id: ServiceId([0xdd; 16]),
        generation: 1,
    });
    let error = tunnel.fetch(head, b"").await.error().clone();
    assert_eq!(error.status, ProxyStatus::DestinationUnavailable);
    assert!(
        error.details.contains(&hex::encode([0xdd; 16])),
        "{}",
        error.details
    );
}
