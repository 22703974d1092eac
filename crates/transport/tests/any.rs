//! The transport-neutral layer over real QUIC on 127.0.0.1: [`AnyListener`] and [`AnyDialer`]
//! used through the [`Listener`] and [`Dialer`] traits only, and [`AnyConnection`] streams:
//! echo, half-close, reset, stop, poll-style and vectored reads, close.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

use underpass_transport::quic::{QuicDialer, QuicListener, QuicSettings, ALPN};
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

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An edge listener and a connector dialer that trust each other, as the transport-neutral
/// enums.
fn endpoints() -> anyhow::Result<(AnyListener, AnyDialer)> {
    let pki = DevPki::generate(&[EDGE_NAME.to_string()])?;
    let settings = QuicSettings::default();
    let server = server_config(pki.chain_pem.as_bytes(), pki.key_pem.as_bytes(), &[ALPN])?;
    let listener = QuicListener::bind(loopback(), Arc::new(server), &settings)?;
    let client = client_config(&EdgeVerification::Pin(pki.ca_pin), &[ALPN])?;
    let dialer = QuicDialer::new(Arc::new(client), &settings, loopback())?;
    Ok((listener.into(), dialer.into()))
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

#[tokio::test]
async fn any_connection_reports_its_transport() -> anyhow::Result<()> {
    guarded(async {
        let (listener, dialer) = endpoints()?;
        assert_eq!(listener.protocol(), Protocol::Quic);
        assert_eq!(dialer.protocol(), Protocol::Quic);
        let (client, server): (AnyConnection, AnyConnection) = connect(&listener, &dialer).await?;
        assert_eq!(client.protocol(), Protocol::Quic);
        assert_eq!(client.protocol().to_string(), "quic");
        assert_eq!(client.remote_address(), listener.local_addr());
        assert!(client.rtt() > Duration::ZERO);
        let _ = (client.stable_id(), server.stable_id());
        // Both sides of the one TLS session derive the same keys.
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        client.export_keying_material(&mut a, b"label", b"context")?;
        server.export_keying_material(&mut b, b"label", b"context")?;
        assert_eq!(a, b);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn any_streams_echo_with_half_close() -> anyhow::Result<()> {
    guarded(async {
        let (listener, dialer) = endpoints()?;
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
    })
    .await
}

#[tokio::test]
async fn a_pending_poll_is_woken_when_data_arrives() -> anyhow::Result<()> {
    guarded(async {
        let (listener, dialer) = endpoints()?;
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
    })
    .await
}

#[tokio::test]
async fn any_stream_reset_and_stop_reach_the_peer() -> anyhow::Result<()> {
    guarded(async {
        let (listener, dialer) = endpoints()?;
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
        assert_eq!(
            outcome,
            Err(StreamError::Reset(underpass_transport::quic::RESET_ON_DROP))
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn closing_an_any_listener_ends_accept_and_its_connections() -> anyhow::Result<()> {
    guarded(async {
        let (listener, dialer) = endpoints()?;
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
    })
    .await
}

#[tokio::test]
async fn closing_an_any_dialer_closes_its_connections() -> anyhow::Result<()> {
    guarded(async {
        let (listener, dialer) = endpoints()?;
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
    })
    .await
}
