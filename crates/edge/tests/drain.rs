//! Shutdown with streams in flight: a draining connection waits for a `fetch()` body until its
//! last byte, and for `CONNECT` and TCP-binding pipes up to the grace period, then resets them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::connector::{self, connect};
use common::{request, tcp_service, EdgeBuilder, HANG_GUARD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use underpass_edge::config::ServiceHost;
use underpass_mux::accept_stream;
use underpass_proto::{BodyKind, ControlMessage, HttpResponseHead, StreamHeader, StreamReply};
use underpass_transport::{AnyConnection, Connection, RecvStream, SendStream};

/// Answer one HTTP stream with a streaming `200` whose body chunks come from `chunks`; the
/// body ends when the channel closes.
fn answer_with_chunks(conn: AnyConnection, mut chunks: mpsc::UnboundedReceiver<&'static str>) {
    tokio::spawn(async move {
        let mut incoming = accept_stream(&conn).await.expect("edge opens a stream");
        let header = incoming.header(HANG_GUARD).await.expect("stream header");
        assert!(matches!(header, StreamHeader::Http(_)), "{header:?}");
        let reply = StreamReply::Http(HttpResponseHead {
            status: 200,
            headers: Vec::new(),
            body: BodyKind::Streaming,
        });
        incoming.reply(&reply).await.expect("reply");
        let (mut send, _recv) = incoming.into_parts();
        while let Some(chunk) = chunks.recv().await {
            send.write_chunk(Bytes::from_static(chunk.as_bytes()))
                .await
                .expect("body chunk");
        }
        send.finish().expect("finish the body");
        let _ = send.stopped().await;
    });
}

/// Accept TCP streams and echo them until the edge ends them; report for each stream whether
/// the edge ended it cleanly (finished its side) or not (reset, connection closed).
fn echo_streams(conn: AnyConnection) -> mpsc::UnboundedReceiver<bool> {
    let (ended_tx, ended) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(mut incoming) = accept_stream(&conn).await {
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                if incoming.header(HANG_GUARD).await.is_err()
                    || incoming.reply(&StreamReply::TcpAccepted).await.is_err()
                {
                    return;
                }
                let (mut send, mut recv) = incoming.into_parts();
                let clean = loop {
                    match recv.read_chunk(64 * 1024).await {
                        Ok(Some(chunk)) => {
                            if send.write_chunk(chunk).await.is_err() {
                                break false;
                            }
                        }
                        Ok(None) => break true,
                        Err(_) => break false,
                    }
                };
                let _ = send.finish();
                let _ = ended_tx.send(clean);
            });
        }
    });
    ended
}

/// The data of a chunked body, and whether its last chunk was there.
fn dechunk(mut body: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..line_end]).expect("ASCII size");
        let size = usize::from_str_radix(size, 16).expect("hex size");
        body = &body[line_end + 2..];
        if size == 0 {
            return (data, body == b"\r\n");
        }
        data.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
    (data, false)
}

/// Read from `stream` until `want` bytes (after `have`) have arrived.
async fn read_exactly(stream: &mut TcpStream, mut have: Vec<u8>, want: usize) -> Vec<u8> {
    tokio::time::timeout(HANG_GUARD, async {
        while have.len() < want {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "ended early after {have:?}");
            have.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("bytes in time");
    have
}

#[tokio::test]
async fn a_draining_connection_waits_for_the_last_byte_of_a_fetch_body() -> anyhow::Result<()> {
    // A grace far longer than the test: the body, not the clock, decides when the edge stops.
    let (edge, _dir) = EdgeBuilder::new()
        .with(|config| config.timeouts.drain_grace_ms = 600_000)
        .network_binding("VPC", "corp", "prod")
        .start()
        .await;
    let token = edge.create_tunnel("prod")?;
    let mut connected = connect(&edge, &token).await?;
    assert!(matches!(
        connected.reply,
        ControlMessage::RegisterAccepted(_)
    ));
    let (chunks, body) = mpsc::unbounded_channel();
    answer_with_chunks(connected.conn.clone(), body);

    let vpc = edge.binding_addr("VPC").expect("binding VPC");
    let (mut client, head) = request(vpc, "GET http://origin.internal/slow HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    chunks.send("first;")?;
    let first = read_exactly(&mut client, head.rest, "6\r\nfirst;\r\n".len()).await;
    assert_eq!(first, b"6\r\nfirst;\r\n");
    // The response head is long gone; the body still counts as an open stream.
    assert_eq!(edge.registry().snapshot()[0].active_streams, 1);

    // Shut down mid-body: the connector is told to drain, and the connection stays open while
    // the body is held back. (This wait can only let a broken edge pass on a slow machine.)
    let stopping = tokio::spawn(edge.shutdown());
    let notice = connector::next(&mut connected.control).await?;
    assert!(matches!(notice, ControlMessage::Drain(_)), "{notice:?}");
    let early = tokio::time::timeout(Duration::from_millis(500), connected.conn.closed()).await;
    assert!(early.is_err(), "closed mid-body: {early:?}");
    for chunk in ["second;", "third;"] {
        chunks.send(chunk)?;
    }
    drop(chunks);
    let mut rest = Vec::new();
    tokio::time::timeout(HANG_GUARD, client.read_to_end(&mut rest)).await??;
    // Every byte, and the last chunk that says the body is complete.
    assert_eq!(dechunk(&rest), (b"second;third;".to_vec(), true));

    // The edge stopped once the body was done, and closed the connection cleanly.
    tokio::time::timeout(HANG_GUARD, stopping).await??;
    tokio::time::timeout(HANG_GUARD, connected.conn.closed()).await?;
    Ok(())
}

/// Open a pipe through `binding` (`CONNECT` when `connect` is set, else a TCP binding).
async fn open_pipe(binding: SocketAddr, connect: bool) -> TcpStream {
    if connect {
        let (stream, head) = request(binding, "CONNECT 127.0.0.9:7000 HTTP/1.1\r\n\r\n").await;
        assert_eq!(head.status, 200, "{head:?}");
        assert!(head.rest.is_empty());
        stream
    } else {
        TcpStream::connect(binding)
            .await
            .expect("connect to the TCP binding")
    }
}

async fn echo(stream: &mut TcpStream, payload: &[u8]) {
    stream.write_all(payload).await.expect("send");
    let echoed = read_exactly(stream, Vec::new(), payload.len()).await;
    assert_eq!(echoed, payload);
}

#[tokio::test]
async fn pipes_run_through_the_grace_period_then_are_reset() -> anyhow::Result<()> {
    let redis = tcp_service("redis", "prod", ServiceHost::ip("127.0.0.9".parse()?), 6379);
    let (edge, _dir) = EdgeBuilder::new()
        .with(|config| config.timeouts.drain_grace_ms = 1_000)
        .network_binding("VPC", "corp", "prod")
        .service(redis)
        .tcp_binding("REDIS", "redis")
        .start()
        .await;
    let token = edge.create_tunnel("prod")?;
    let mut connected = connect(&edge, &token).await?;
    assert!(matches!(
        connected.reply,
        ControlMessage::RegisterAccepted(_)
    ));
    connector::policies(&mut connected.control, 1).await?;
    let mut ended = echo_streams(connected.conn.clone());

    let mut connect_pipe = open_pipe(edge.binding_addr("VPC").expect("VPC"), true).await;
    let mut tcp_pipe = open_pipe(edge.binding_addr("REDIS").expect("REDIS"), false).await;
    echo(&mut connect_pipe, b"before").await;
    echo(&mut tcp_pipe, b"before").await;

    // Draining: both pipes keep working, and the edge does not stop while they are open.
    let stopping = tokio::spawn(edge.shutdown());
    let notice = connector::next(&mut connected.control).await?;
    assert!(matches!(notice, ControlMessage::Drain(_)), "{notice:?}");
    echo(&mut connect_pipe, b"during the drain").await;
    echo(&mut tcp_pipe, b"during the drain").await;
    assert!(!stopping.is_finished());

    // The grace period ends: both pipes are cut. The connector never sees a clean end of
    // either stream, and each client connection ends.
    for _ in 0..2 {
        let clean = tokio::time::timeout(HANG_GUARD, ended.recv()).await?;
        assert_eq!(clean, Some(false), "a cut stream, not a finished one");
    }
    for (which, pipe) in [
        ("CONNECT", &mut connect_pipe),
        ("TCP binding", &mut tcp_pipe),
    ] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(HANG_GUARD, pipe.read_to_end(&mut rest)).await?;
        assert!(rest.is_empty(), "{which}: {rest:?}");
        if let Err(error) = read {
            assert_eq!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset,
                "{which}: {error}"
            );
        }
    }
    tokio::time::timeout(HANG_GUARD, stopping).await??;
    Ok(())
}

#[tokio::test]
async fn new_clients_are_not_accepted_while_draining() -> anyhow::Result<()> {
    let (edge, _dir) = EdgeBuilder::new()
        .with(|config| config.timeouts.drain_grace_ms = 600_000)
        .network_binding("VPC", "corp", "prod")
        .start()
        .await;
    let token = edge.create_tunnel("prod")?;
    let mut connected = connect(&edge, &token).await?;
    let mut ended = echo_streams(connected.conn.clone());
    let vpc = edge.binding_addr("VPC").expect("VPC");
    let mut pipe = open_pipe(vpc, true).await;

    let stopping = tokio::spawn(edge.shutdown());
    let notice = connector::next(&mut connected.control).await?;
    assert!(matches!(notice, ControlMessage::Drain(_)), "{notice:?}");
    // The listener is gone: a new client is refused by the kernel.
    let refused = tokio::time::timeout(HANG_GUARD, async {
        loop {
            match TcpStream::connect(vpc).await {
                Err(error) => return error,
                // The accept loop may not have seen the stop yet.
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await?;
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // The open pipe still works; once it ends cleanly the edge stops.
    echo(&mut pipe, b"still here").await;
    pipe.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(HANG_GUARD, pipe.read_to_end(&mut rest)).await??;
    assert!(rest.is_empty());
    assert_eq!(
        ended.recv().await,
        Some(true),
        "the client's FIN reached the connector"
    );
    tokio::time::timeout(HANG_GUARD, stopping).await??;
    Ok(())
}
