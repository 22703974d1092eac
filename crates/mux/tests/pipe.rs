//! The pipe, frames and HTTP bodies over a real QUIC connection on loopback.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use underpass_mux::http::{send_body, RecvBody};
use underpass_mux::{pipe_tcp, FrameReader, PipeOutcome};
use underpass_proto::{BodyKind, StreamReply};
use underpass_transport::quic::{QuicDialer, QuicListener, QuicSettings, ALPN};
use underpass_transport::tls::{self, DevPki, EdgeVerification};
use underpass_transport::{
    AnyConnection, AnyDialer, AnyListener, Connection, Dialer, Listener, RecvStream, SendStream,
    StreamError,
};

const LIMIT: Duration = Duration::from_secs(10);

/// A QUIC connection pair on loopback, as the transport-neutral types the edge and the
/// connector use: (dialer side, listener side, and the endpoints to keep alive).
async fn quic_pair() -> (AnyConnection, AnyConnection, AnyListener, AnyDialer) {
    let pki = DevPki::generate(&["underpass-edge".to_owned()]).unwrap();
    let server =
        tls::server_config(pki.chain_pem.as_bytes(), pki.key_pem.as_bytes(), &[ALPN]).unwrap();
    let settings = QuicSettings::default();
    let listener = AnyListener::from(
        QuicListener::bind("127.0.0.1:0".parse().unwrap(), Arc::new(server), &settings).unwrap(),
    );
    let client = tls::client_config(&EdgeVerification::Pin(pki.ca_pin), &[ALPN]).unwrap();
    let dialer = AnyDialer::from(
        QuicDialer::new(Arc::new(client), &settings, "127.0.0.1:0".parse().unwrap()).unwrap(),
    );
    let (client, server) = tokio::join!(
        dialer.connect(listener.local_addr(), "underpass-edge"),
        listener.accept()
    );
    (client.unwrap(), server.unwrap(), listener, dialer)
}

/// A connected TCP pair: (the end given to the pipe, the test's end).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = tokio::join!(
        TcpStream::connect(listener.local_addr().unwrap()),
        listener.accept()
    );
    (b.unwrap().0, a.unwrap())
}

#[tokio::test]
async fn half_close_travels_both_ways() {
    let (client, server, _l, _d) = quic_pair().await;
    let (piped, mut outside) = tcp_pair().await;
    let (mut send, recv) = client.open_bi().await.unwrap();
    send.write_chunk(Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let (s_send, s_recv) = server.accept_bi().await.unwrap();
    let pipe = tokio::spawn(pipe_tcp(piped, None, s_send, s_recv));

    // Stream → socket, then the stream side finishes: the socket sees EOF.
    let mut got = [0u8; 5];
    outside.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
    send.finish().unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, outside.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());

    // The other direction is still open after that half-close.
    outside.write_all(b"+PONG\r\n").await.unwrap();
    outside.shutdown().await.unwrap();
    let mut recv = recv;
    let mut echoed = Vec::new();
    while let Some(chunk) = recv.read_chunk(1024).await.unwrap() {
        echoed.extend_from_slice(&chunk);
    }
    assert_eq!(echoed, b"+PONG\r\n");
    let stats = tokio::time::timeout(LIMIT, pipe).await.unwrap().unwrap();
    assert_eq!(stats.outcome, PipeOutcome::Closed);
    assert_eq!((stats.socket_to_stream, stats.stream_to_socket), (7, 5));
}

#[tokio::test]
async fn reset_closes_the_socket() {
    let (client, server, _l, _d) = quic_pair().await;
    let (piped, mut outside) = tcp_pair().await;
    let (mut send, _recv) = client.open_bi().await.unwrap();
    send.write_chunk(Bytes::from_static(b"x")).await.unwrap();
    let (s_send, s_recv) = server.accept_bi().await.unwrap();
    let pipe = tokio::spawn(pipe_tcp(piped, None, s_send, s_recv));
    let mut one = [0u8; 1];
    outside.read_exact(&mut one).await.unwrap();

    send.reset(underpass_proto::RESET_CANCELLED);
    let mut buf = Vec::new();
    // The socket is closed (EOF or reset) without the test writing anything.
    let closed = tokio::time::timeout(LIMIT, outside.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "socket still open after the stream was reset"
    );
    let stats = tokio::time::timeout(LIMIT, pipe).await.unwrap().unwrap();
    assert!(matches!(stats.outcome, PipeOutcome::StreamAborted(_)));
}

#[tokio::test]
async fn initial_bytes_go_first_and_socket_eof_finishes_stream() {
    let (client, server, _l, _d) = quic_pair().await;
    let (piped, mut outside) = tcp_pair().await;
    let (mut send, mut recv) = client.open_bi().await.unwrap();
    send.write_chunk(Bytes::from_static(b"open")).await.unwrap();
    let (s_send, mut s_recv) = server.accept_bi().await.unwrap();
    let first = s_recv.read_chunk(4).await.unwrap().unwrap();
    assert_eq!(&first[..], b"open");
    let pipe = tokio::spawn(pipe_tcp(
        piped,
        Some(Bytes::from_static(b"early:")),
        s_send,
        s_recv,
    ));
    outside.write_all(b"late").await.unwrap();
    outside.shutdown().await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = recv.read_chunk(1024).await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"early:late");
    send.finish().unwrap();
    let stats = tokio::time::timeout(LIMIT, pipe).await.unwrap().unwrap();
    assert_eq!(stats.outcome, PipeOutcome::Closed);
}

#[tokio::test]
async fn body_round_trip_with_length() {
    let (client, server, _l, _d) = quic_pair().await;
    let (mut send, _recv) = client.open_bi().await.unwrap();
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let body = http_body_util::Full::new(Bytes::from(payload.clone()));
    let sender = tokio::spawn(async move { send_body(body, &mut send).await.map(|n| (n, send)) });
    let (_s_send, s_recv) = server.accept_bi().await.unwrap();
    let received = RecvBody::new(s_recv, BodyKind::Length(payload.len() as u64))
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(received.len(), payload.len());
    assert!(received[..] == payload[..]);
    let (sent, _send) = sender.await.unwrap().unwrap();
    assert_eq!(sent, payload.len() as u64);
}

#[tokio::test]
async fn short_body_is_an_error() {
    let (client, server, _l, _d) = quic_pair().await;
    let (mut send, _recv) = client.open_bi().await.unwrap();
    send.write_chunk(Bytes::from_static(b"abc")).await.unwrap();
    send.finish().unwrap();
    let (_s_send, s_recv) = server.accept_bi().await.unwrap();
    let result = RecvBody::new(s_recv, BodyKind::Length(10)).collect().await;
    assert!(result.is_err(), "a body shorter than its length must fail");
}

#[tokio::test]
async fn bytes_after_the_head_frame_open_the_body() {
    let (client, server, _l, _d) = quic_pair().await;
    let (mut send, _recv) = client.open_bi().await.unwrap();
    // The head frame and the first body bytes travel in one chunk, as they may on the wire.
    let mut chunk = bytes::BytesMut::new();
    underpass_proto::encode(&StreamReply::TcpAccepted, &mut chunk).unwrap();
    chunk.extend_from_slice(b"first ");
    send.write_chunk(chunk.freeze()).await.unwrap();
    send.write_chunk(Bytes::from_static(b"second"))
        .await
        .unwrap();
    send.finish().unwrap();

    let (_s_send, s_recv) = server.accept_bi().await.unwrap();
    let mut reader = FrameReader::new(s_recv);
    let reply: StreamReply = reader.expect().await.unwrap();
    assert_eq!(reply, StreamReply::TcpAccepted);
    let body = RecvBody::new(reader.into_body(), BodyKind::Streaming)
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"first second");
}

#[tokio::test]
async fn dropping_a_body_mid_read_stops_the_stream() {
    let (client, server, _l, _d) = quic_pair().await;
    let (mut send, _recv) = client.open_bi().await.unwrap();
    send.write_chunk(Bytes::from_static(b"part")).await.unwrap();
    let (_s_send, s_recv) = server.accept_bi().await.unwrap();
    let mut body = RecvBody::new(s_recv, BodyKind::Streaming);
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"part");
    // The next frame is pending (nothing more was sent); the reader gives up while waiting.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
    drop(body);
    assert_eq!(
        tokio::time::timeout(LIMIT, send.stopped())
            .await
            .unwrap()
            .unwrap(),
        Some(underpass_proto::RESET_CANCELLED)
    );
    let outcome = loop {
        match send.write_chunk(Bytes::from_static(b"more")).await {
            Ok(()) => continue,
            Err(err) => break err,
        }
    };
    assert_eq!(
        outcome,
        StreamError::Stopped(underpass_proto::RESET_CANCELLED)
    );
}
