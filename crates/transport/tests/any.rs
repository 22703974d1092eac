//! The transport-neutral layer over real QUIC and real HTTP/2 (TCP + TLS) on 127.0.0.1:
//! [`AnyListener`] and [`AnyDialer`] used through the [`Listener`] and [`Dialer`] traits only,
//! and [`AnyConnection`] streams: echo, half-close, reset, stop, poll-style and vectored
//! reads, close. Every test body runs once per transport (`over_both!`).

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

use underpass_transport::h2::{H2Config, H2Dialer, H2Listener};
use underpass_transport::quic::{QuicDialer, QuicListener, QuicSettings};
use underpass_transport::tls::{client_config, server_config, DevPki, EdgeVerification};
use underpass_transport::{
    AnyConnection, AnyDialer, AnyListener, AnyRecv, Connection, Dialer, Listener, Protocol,
    RecvStream, SendStream, StreamError,
};

/// Guards against hangs only; no test depends on a timing.
const GUARD: Duration = Duration::from_secs(120);
const EDGE_NAME: &str = "edge.underpass.test";

async fn guarded<T>(test: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(GUARD, test)
        .await
        .context("test hung")?
}

/// One `#[tokio::test]` per transport for each named test body, `async fn(Protocol)`: a
/// module per body with the tests `quic` and `http2`.
macro_rules! over_both {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test]
            async fn quic() -> anyhow::Result<()> {
                super::guarded(super::$body(super::Protocol::Quic)).await
            }

            #[tokio::test]
            async fn http2() -> anyhow::Result<()> {
                super::guarded(super::$body(super::Protocol::Http2)).await
            }
        }
    )*};
}

over_both!(
    any_connection_reports_its_transport,
    any_streams_echo_with_half_close,
    edge_opened_streams_echo_with_half_close,
    a_pending_poll_is_woken_when_data_arrives,
    any_stream_reset_and_stop_reach_the_peer,
    closing_an_any_listener_ends_accept_and_its_connections,
    closing_an_any_dialer_closes_its_connections,
);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An edge listener and a connector dialer of `protocol` that trust each other, as the
/// transport-neutral enums.
fn endpoints(protocol: Protocol) -> anyhow::Result<(AnyListener, AnyDialer)> {
    let pki = DevPki::generate(&[EDGE_NAME.to_string()])?;
    let verification = EdgeVerification::Pin(pki.ca_pin);
    let (cert, key) = (pki.chain_pem.as_bytes(), pki.key_pem.as_bytes());
    Ok(match protocol {
        Protocol::Quic => {
            let alpn = underpass_transport::quic::ALPN;
            let settings = QuicSettings::default();
            let server = Arc::new(server_config(cert, key, &[alpn])?);
            let client = Arc::new(client_config(&verification, &[alpn])?);
            (
                QuicListener::bind(loopback(), server, &settings)?.into(),
                QuicDialer::new(client, &settings, loopback())?.into(),
            )
        }
        Protocol::Http2 => {
            let alpn = underpass_transport::h2::ALPN;
            let config = H2Config::default();
            let server = Arc::new(server_config(cert, key, &[alpn])?);
            let client = Arc::new(client_config(&verification, &[alpn])?);
            (
                H2Listener::bind(loopback(), server, &config)?.into(),
                H2Dialer::new(client, &config)?.into(),
            )
        }
    })
}

/// Connect through the traits alone, as code generic over the transport would.
async fn connect<L: Listener, D: Dialer>(
    listener: &L,
    dialer: &D,
) -> anyhow::Result<(D::Conn, L::Conn)> {
    let (client, server) = tokio::join!(
        dialer.connect(listener.local_addr(), EDGE_NAME),
        listener.accept()
    );
    Ok((client?, server.context("listener closed")?))
}

/// Read to the end with `poll_read_chunk` driven by hand, `max` bytes at a time.
async fn read_all_polled(recv: &mut AnyRecv, max: usize) -> Result<Vec<u8>, StreamError> {
    let mut out = Vec::new();
    while let Some(chunk) = poll_fn(|cx| recv.poll_read_chunk(cx, max)).await? {
        assert!(chunk.len() <= max, "chunk of {} > {max}", chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Read to the end with vectored reads.
async fn read_all_vectored(recv: &mut AnyRecv) -> Result<Vec<u8>, StreamError> {
    let mut out = Vec::new();
    let mut bufs = vec![Bytes::new(); 8];
    while let Some(filled) = recv.read_chunks(&mut bufs).await? {
        assert!(filled >= 1);
        for chunk in &bufs[..filled] {
            out.extend_from_slice(chunk);
        }
    }
    Ok(out)
}

async fn any_connection_reports_its_transport(protocol: Protocol) -> anyhow::Result<()> {
    let (listener, dialer) = endpoints(protocol)?;
    assert_eq!(listener.protocol(), protocol);
    assert_eq!(dialer.protocol(), protocol);
    let (client, server): (AnyConnection, AnyConnection) = connect(&listener, &dialer).await?;
    assert_eq!(client.protocol(), protocol);
    assert_eq!(server.protocol(), protocol);
    let name = match protocol {
        Protocol::Quic => "quic",
        Protocol::Http2 => "http2",
    };
    assert_eq!(client.protocol().to_string(), name);
    assert!(client.stats().is_some() && server.stats().is_some());
    assert_eq!(client.remote_address(), listener.local_addr());
    assert!(client.rtt() > Duration::ZERO);
    let _ = (client.stable_id(), server.stable_id());
    // Both sides of the one TLS session derive the same keys.
    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    client.export_keying_material(&mut a, b"label", b"context")?;
    server.export_keying_material(&mut b, b"label", b"context")?;
    assert_eq!(a, b);
    Ok(())
}

async fn any_streams_echo_with_half_close(protocol: Protocol) -> anyhow::Result<()> {
    let (listener, dialer) = endpoints(protocol)?;
    let (client, server) = connect(&listener, &dialer).await?;

    let (mut c_send, mut c_recv) = client.open_bi().await?;
    c_send.write_chunk(Bytes::from_static(b"hello ")).await?;
    c_send.write_chunk(Bytes::from_static(b"edge")).await?;
    c_send.finish()?;

    let (mut s_send, mut s_recv) = server.accept_bi().await?;
    // Small reads: the chunk limit is honoured and nothing is lost between polls.
    assert_eq!(read_all_polled(&mut s_recv, 3).await?, b"hello edge");
    assert_eq!(s_recv.read_chunk(64).await?, None, "end of stream repeats");

    // The client's direction is finished; the server's still flows.
    s_send.write_chunk(Bytes::from_static(b"+PONG ")).await?;
    s_send.write_chunk(Bytes::from_static(b"and more")).await?;
    s_send.finish()?;
    assert_eq!(read_all_vectored(&mut c_recv).await?, b"+PONG and more");
    assert_eq!(c_send.stopped().await?, None);
    assert_eq!(s_send.stopped().await?, None);
    Ok(())
}

async fn edge_opened_streams_echo_with_half_close(protocol: Protocol) -> anyhow::Result<()> {
    let (listener, dialer) = endpoints(protocol)?;
    let (client, server) = connect(&listener, &dialer).await?;

    // The edge opens (over HTTP/2 the natural direction: the edge is the HTTP/2 client).
    let (mut s_send, mut s_recv) = server.open_bi().await?;
    s_send.write_chunk(Bytes::from_static(b"GET /")).await?;
    s_send.finish()?;

    let (mut c_send, mut c_recv) = client.accept_bi().await?;
    assert_eq!(read_all_vectored(&mut c_recv).await?, b"GET /");
    c_send.write_chunk(Bytes::from_static(b"200 ")).await?;
    c_send.write_chunk(Bytes::from_static(b"OK")).await?;
    c_send.finish()?;
    assert_eq!(read_all_polled(&mut s_recv, 2).await?, b"200 OK");
    assert_eq!(s_send.stopped().await?, None);
    assert_eq!(c_send.stopped().await?, None);
    Ok(())
}

async fn a_pending_poll_is_woken_when_data_arrives(protocol: Protocol) -> anyhow::Result<()> {
    let (listener, dialer) = endpoints(protocol)?;
    let (client, server) = connect(&listener, &dialer).await?;
    let (mut c_send, _c_recv) = client.open_bi().await?;
    c_send.write_chunk(Bytes::from_static(b"open")).await?;
    let (_s_send, mut s_recv) = server.accept_bi().await?;
    assert_eq!(s_recv.read_chunk(4).await?.as_deref(), Some(&b"open"[..]));

    // Nothing to read yet: the poll is pending and consumes nothing.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(s_recv.poll_read_chunk(&mut cx, 1024).is_pending());
    // A reader parked on it is woken by the write alone.
    let reader = tokio::spawn(async move {
        let chunk = poll_fn(|cx| s_recv.poll_read_chunk(cx, 1024)).await;
        (chunk, s_recv)
    });
    tokio::task::yield_now().await;
    c_send.write_chunk(Bytes::from_static(b"late")).await?;
    let (chunk, _s_recv) = reader.await?;
    assert_eq!(chunk?.as_deref(), Some(&b"late"[..]));
    Ok(())
}

async fn any_stream_reset_and_stop_reach_the_peer(protocol: Protocol) -> anyhow::Result<()> {
    let (listener, dialer) = endpoints(protocol)?;
    let (client, server) = connect(&listener, &dialer).await?;

    // Reset: the reader sees the code once the data before it is read.
    let (mut c_send, _c_recv) = client.open_bi().await?;
    c_send.write_chunk(Bytes::from_static(b"partial")).await?;
    let (_s_send, mut s_recv) = server.accept_bi().await?;
    c_send.reset(0x42);
    let outcome = loop {
        match s_recv.read_chunk(1024).await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(outcome, Err(StreamError::Reset(0x42)));
    assert_eq!(
        c_send.write_chunk(Bytes::from_static(b"x")).await,
        Err(StreamError::Closed)
    );

    // Stop: the writer learns the code.
    let (mut c_send, _c_recv) = client.open_bi().await?;
    c_send.write_chunk(Bytes::from_static(b"first")).await?;
    let (_s_send, mut s_recv) = server.accept_bi().await?;
    s_recv.stop(0x33);
    assert_eq!(c_send.stopped().await?, Some(0x33));

    // Dropping an unfinished send half resets it.
    let (mut c_send, _c_recv) = client.open_bi().await?;
    c_send.write_chunk(Bytes::from_static(b"abandoned")).await?;
    let (_s_send, mut s_recv) = server.accept_bi().await?;
    drop(c_send);
    let outcome = loop {
        match s_recv.read_chunk(1024).await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let on_drop = match protocol {
        Protocol::Quic => underpass_transport::quic::RESET_ON_DROP,
        Protocol::Http2 => underpass_transport::h2::RESET_ON_DROP,
    };
    assert_eq!(outcome, Err(StreamError::Reset(on_drop)));
    Ok(())
}

async fn closing_an_any_listener_ends_accept_and_its_connections(
    protocol: Protocol,
) -> anyhow::Result<()> {
    let (listener, dialer) = endpoints(protocol)?;
    let (client, _server) = connect(&listener, &dialer).await?;
    listener.close();
    assert!(listener.accept().await.is_none());
    assert!(matches!(
        client.closed().await,
        StreamError::ConnectionLost(_)
    ));
    listener.wait_idle().await;
    dialer.close();
    dialer.wait_idle().await;
    Ok(())
}

async fn closing_an_any_dialer_closes_its_connections(protocol: Protocol) -> anyhow::Result<()> {
    let (listener, dialer) = endpoints(protocol)?;
    let (_client, server) = connect(&listener, &dialer).await?;
    dialer.close();
    match server.closed().await {
        StreamError::ConnectionLost(why) => {
            assert!(why.contains("connector shutting down"), "{why}")
        }
        other => anyhow::bail!("unexpected {other:?}"),
    }
    dialer.wait_idle().await;
    Ok(())
}
