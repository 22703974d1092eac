//! QUIC transport over real UDP sockets on 127.0.0.1: handshakes and certificate checks, stream
//! semantics (echo, half-close, reset, stop), keying material, bulk and concurrent transfers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use underpass_transport::quic::{
    QuicConnection, QuicDialer, QuicListener, QuicRecv, QuicSend, QuicSettings, TransportError,
    ALPN,
};
use underpass_transport::tls::{
    client_config, pem_first_cert_pin, server_config, DevPki, EdgeVerification,
};
use underpass_transport::{Connection, RecvStream, SendStream, StreamError};

/// Guards against hangs only; no test depends on a timing.
const GUARD: Duration = Duration::from_secs(120);
const EDGE_NAME: &str = "edge.underpass.test";

async fn guarded<T>(test: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "underpass_transport=info".into()),
        )
        .with_test_writer()
        .try_init();
    tokio::time::timeout(GUARD, test)
        .await
        .context("test hung")?
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn pki() -> DevPki {
    DevPki::generate(&[EDGE_NAME.to_string(), "127.0.0.1".to_string()]).expect("generate PKI")
}

fn edge(pki: &DevPki, alpn: &[u8]) -> anyhow::Result<QuicListener> {
    let tls = server_config(pki.chain_pem.as_bytes(), pki.key_pem.as_bytes(), &[alpn])?;
    Ok(QuicListener::bind(
        loopback(),
        Arc::new(tls),
        &QuicSettings::default(),
    )?)
}

fn dialer(verification: &EdgeVerification, alpn: &[u8]) -> anyhow::Result<QuicDialer> {
    let tls = client_config(verification, &[alpn])?;
    Ok(QuicDialer::new(
        Arc::new(tls),
        &QuicSettings::default(),
        loopback(),
    )?)
}

/// Dial `listener` and return the client's result.
async fn dial(
    listener: &QuicListener,
    verification: &EdgeVerification,
    alpn: &[u8],
    name: &str,
) -> anyhow::Result<Result<QuicConnection, TransportError>> {
    let dialer = dialer(verification, alpn)?;
    Ok(dialer.connect(listener.local_addr(), name).await)
}

/// A connected pair: (connector side, edge side).
async fn pair() -> anyhow::Result<(QuicConnection, QuicConnection, QuicListener)> {
    let pki = pki();
    let listener = edge(&pki, ALPN)?;
    let client = dial(
        &listener,
        &EdgeVerification::Pin(pki.ca_pin),
        ALPN,
        EDGE_NAME,
    )
    .await??;
    let server = listener.accept().await.context("listener closed")?;
    Ok((client, server, listener))
}

/// Expect a refused handshake whose message contains `needle`, and check that the edge did not
/// queue a connection for it: the next accepted connection is a good client's.
async fn expect_refused(
    listener: &QuicListener,
    pki: &DevPki,
    verification: &EdgeVerification,
    alpn: &[u8],
    name: &str,
    needle: &str,
) -> anyhow::Result<()> {
    match dial(listener, verification, alpn, name).await? {
        Ok(_) => bail!("handshake with {verification:?} / {name} should have failed"),
        Err(TransportError::Handshake(message)) => {
            assert!(
                message.contains(needle),
                "error {message:?} does not mention {needle:?}"
            );
        }
        Err(other) => bail!("unexpected error {other}"),
    }
    let good = dialer(&EdgeVerification::Pin(pki.ca_pin), ALPN)?;
    let _client = good.connect(listener.local_addr(), EDGE_NAME).await?;
    let accepted = listener.accept().await.context("listener closed")?;
    assert_eq!(accepted.remote_address(), good.local_addr()?);
    Ok(())
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64: cheap, deterministic, not compressible.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn read_all(recv: &mut QuicRecv) -> Result<Vec<u8>, StreamError> {
    let mut out = Vec::new();
    while let Some(chunk) = recv.read_chunk(usize::MAX).await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Echo every chunk back until end of stream, then finish.
async fn echo(mut send: QuicSend, mut recv: QuicRecv) -> Result<(), StreamError> {
    while let Some(chunk) = recv.read_chunk(1 << 20).await? {
        send.write_chunk(chunk).await?;
    }
    send.finish()
}

/// Accept streams and echo each one, until the connection ends.
fn serve_echo(server: QuicConnection) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        while let Ok((send, recv)) = server.accept_bi().await {
            tasks.spawn(echo(send, recv));
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("echo task").expect("echo stream");
        }
    })
}

/// Send `data` on a fresh stream in 256 KiB chunks, read the echo; return its digest.
async fn echo_roundtrip(client: &QuicConnection, data: Bytes) -> anyhow::Result<[u8; 32]> {
    let (mut send, mut recv) = client.open_bi().await?;
    let writer = tokio::spawn(async move {
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(256 << 10));
            send.write_chunk(chunk).await?;
        }
        send.finish()?;
        Ok::<_, StreamError>(send)
    });
    let mut hasher = Sha256::new();
    while let Some(chunk) = recv.read_chunk(usize::MAX).await? {
        hasher.update(&chunk);
    }
    // Keep the send half alive until the echo is complete.
    let _send = writer.await??;
    Ok(hasher.finalize().into())
}

#[tokio::test]
async fn pinned_ca_handshake_succeeds_and_both_sides_see_each_other() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        assert_eq!(pem_first_cert_pin(pki.ca_cert_pem.as_bytes())?, pki.ca_pin);
        let listener = edge(&pki, ALPN)?;
        let dialer = dialer(&EdgeVerification::Pin(pki.ca_pin), ALPN)?;
        let client = dialer.connect(listener.local_addr(), EDGE_NAME).await?;
        let server = listener.accept().await.context("listener closed")?;
        assert_eq!(client.remote_address(), listener.local_addr());
        assert_eq!(server.remote_address(), dialer.local_addr()?);
        assert!(client.rtt() > Duration::ZERO);
        let _ = (client.stable_id(), server.stable_id());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn pin_also_checks_the_ip_name() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let listener = edge(&pki, ALPN)?;
        dial(
            &listener,
            &EdgeVerification::Pin(pki.ca_pin),
            ALPN,
            "127.0.0.1",
        )
        .await??;
        listener.accept().await.context("listener closed")?;
        expect_refused(
            &listener,
            &pki,
            &EdgeVerification::Pin(pki.ca_pin),
            ALPN,
            "127.0.0.2",
            "not valid for name",
        )
        .await
    })
    .await
}

#[tokio::test]
async fn ca_pem_handshake_succeeds() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let listener = edge(&pki, ALPN)?;
        let verification = EdgeVerification::CaPem(pki.ca_cert_pem.clone().into_bytes());
        dial(&listener, &verification, ALPN, EDGE_NAME).await??;
        listener.accept().await.context("listener closed")?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn wrong_pin_is_refused() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let other = self::pki();
        let listener = edge(&pki, ALPN)?;
        expect_refused(
            &listener,
            &pki,
            &EdgeVerification::Pin(other.ca_pin),
            ALPN,
            EDGE_NAME,
            "does not contain the pinned CA",
        )
        .await?;
        // Pinning the leaf instead of the CA is refused too: the pin names the signing CA.
        let leaf_pin = pem_first_cert_pin(pki.chain_pem.as_bytes())?;
        expect_refused(
            &listener,
            &pki,
            &EdgeVerification::Pin(leaf_pin),
            ALPN,
            EDGE_NAME,
            "invalid peer certificate",
        )
        .await
    })
    .await
}

#[tokio::test]
async fn unknown_ca_is_refused() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let other = self::pki();
        let listener = edge(&pki, ALPN)?;
        let verification = EdgeVerification::CaPem(other.ca_cert_pem.into_bytes());
        expect_refused(
            &listener,
            &pki,
            &verification,
            ALPN,
            EDGE_NAME,
            "UnknownIssuer",
        )
        .await
    })
    .await
}

#[tokio::test]
async fn name_mismatch_is_refused() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let listener = edge(&pki, ALPN)?;
        let verification = EdgeVerification::CaPem(pki.ca_cert_pem.clone().into_bytes());
        expect_refused(
            &listener,
            &pki,
            &verification,
            ALPN,
            "other.underpass.test",
            "not valid for name",
        )
        .await
    })
    .await
}

#[tokio::test]
async fn wrong_alpn_is_refused() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let listener = edge(&pki, ALPN)?;
        expect_refused(
            &listener,
            &pki,
            &EdgeVerification::Pin(pki.ca_pin),
            b"not-underpass",
            EDGE_NAME,
            "120",
        )
        .await
    })
    .await
}

#[tokio::test]
async fn dangerous_no_verify_connects_to_anything() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let listener = edge(&pki, ALPN)?;
        let client = dial(
            &listener,
            &EdgeVerification::DangerousNoVerify,
            ALPN,
            "any.name.at.all",
        )
        .await??;
        let server = listener.accept().await.context("listener closed")?;
        // The session is real: both sides derive the same keys.
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        client.export_keying_material(&mut a, b"t", b"")?;
        server.export_keying_material(&mut b, b"t", b"")?;
        assert_eq!(a, b);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn open_and_accept_echo() -> anyhow::Result<()> {
    guarded(async {
        let (client, server, _listener) = pair().await?;
        let echo = serve_echo(server);
        let (mut send, mut recv) = client.open_bi().await?;
        send.write_chunk(Bytes::from_static(b"hello ")).await?;
        send.write_chunk(Bytes::from_static(b"edge")).await?;
        send.finish()?;
        assert_eq!(read_all(&mut recv).await?, b"hello edge");
        assert_eq!(send.stopped().await?, None);
        client.close(0, b"done");
        echo.await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() -> anyhow::Result<()> {
    guarded(async {
        let (client, server, _listener) = pair().await?;
        let (mut c_send, mut c_recv) = client.open_bi().await?;
        c_send.write_chunk(Bytes::from_static(b"PING\r\n")).await?;
        c_send.finish()?;

        let (mut s_send, mut s_recv) = server.accept_bi().await?;
        assert_eq!(read_all(&mut s_recv).await?, b"PING\r\n");
        // The client's direction is done; the server's is still open.
        assert_eq!(s_recv.read_chunk(64).await?, None);
        s_send.write_chunk(Bytes::from_static(b"+PONG\r\n")).await?;
        let first = c_recv
            .read_chunk(64)
            .await?
            .context("early end of stream")?;
        assert_eq!(&first[..], b"+PONG\r\n");
        s_send.write_chunk(Bytes::from_static(b"more")).await?;
        s_send.finish()?;
        assert_eq!(read_all(&mut c_recv).await?, b"more");
        assert_eq!(c_send.stopped().await?, None);
        assert_eq!(s_send.stopped().await?, None);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn reset_reaches_the_peer_with_its_code() -> anyhow::Result<()> {
    guarded(async {
        let (client, server, _listener) = pair().await?;
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
        // Writing after a local reset is refused.
        assert_eq!(
            c_send.write_chunk(Bytes::from_static(b"x")).await,
            Err(StreamError::Closed)
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn dropping_an_unfinished_send_resets_it() -> anyhow::Result<()> {
    guarded(async {
        let (client, server, _listener) = pair().await?;
        let (mut c_send, _c_recv) = client.open_bi().await?;
        c_send.write_chunk(Bytes::from_static(b"partial")).await?;
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
async fn stop_fails_the_peers_writes_with_its_code() -> anyhow::Result<()> {
    guarded(async {
        let (client, server, _listener) = pair().await?;
        let (mut c_send, _c_recv) = client.open_bi().await?;
        c_send.write_chunk(Bytes::from_static(b"first")).await?;
        let (_s_send, mut s_recv) = server.accept_bi().await?;
        s_recv.stop(0x33);
        assert_eq!(c_send.stopped().await?, Some(0x33));
        let chunk = Bytes::from(vec![0u8; 64 << 10]);
        let outcome = loop {
            if let Err(e) = c_send.write_chunk(chunk.clone()).await {
                break e;
            }
        };
        assert_eq!(outcome, StreamError::Stopped(0x33));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn keying_material_matches_per_label_and_context() -> anyhow::Result<()> {
    guarded(async {
        let (client, server, _listener) = pair().await?;
        let export = |conn: &QuicConnection, label: &[u8], context: &[u8]| {
            let mut out = [0u8; 32];
            conn.export_keying_material(&mut out, label, context)
                .map(|()| out)
        };
        let a = export(&client, b"underpass registration", b"ctx-1")?;
        assert_eq!(a, export(&server, b"underpass registration", b"ctx-1")?);
        assert_ne!(a, export(&server, b"underpass registration", b"ctx-2")?);
        assert_ne!(a, export(&server, b"another label", b"ctx-1")?);
        // A second connection has different keys.
        let (other, _other_server, _l) = pair().await?;
        assert_ne!(a, export(&other, b"underpass registration", b"ctx-1")?);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn sixty_four_mib_on_one_stream_is_byte_identical() -> anyhow::Result<()> {
    guarded(async {
        let (client, server, _listener) = pair().await?;
        let echo = serve_echo(server);
        let data = Bytes::from(pattern(64, 64 << 20));
        let expected: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(echo_roundtrip(&client, data).await?, expected);
        client.close(0, b"done");
        echo.await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn two_hundred_concurrent_streams_of_one_mib() -> anyhow::Result<()> {
    guarded(async {
        let (client, server, _listener) = pair().await?;
        let echo = serve_echo(server);
        let mut streams = JoinSet::new();
        for i in 0..200u64 {
            let client = client.clone();
            streams.spawn(async move {
                let data = Bytes::from(pattern(i + 1, 1 << 20));
                let expected: [u8; 32] = Sha256::digest(&data).into();
                let got = echo_roundtrip(&client, data).await?;
                anyhow::ensure!(got == expected, "stream {i} corrupted");
                Ok(())
            });
        }
        let mut done = 0;
        while let Some(result) = streams.join_next().await {
            result??;
            done += 1;
        }
        assert_eq!(done, 200);
        client.close(0, b"done");
        echo.await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn close_is_observed_by_both_sides() -> anyhow::Result<()> {
    guarded(async {
        let (client, server, _listener) = pair().await?;
        let (_c_send, mut c_recv) = client.open_bi().await?;
        server.close(7, b"going away");
        match client.closed().await {
            StreamError::ConnectionLost(why) => {
                assert!(why.contains("going away"), "{why}");
                assert!(why.contains('7'), "{why}");
            }
            other => bail!("unexpected {other:?}"),
        }
        assert!(matches!(
            server.closed().await,
            StreamError::ConnectionLost(_)
        ));
        assert!(matches!(
            c_recv.read_chunk(10).await,
            Err(StreamError::ConnectionLost(_))
        ));
        assert!(matches!(
            client.open_bi().await,
            Err(StreamError::ConnectionLost(_))
        ));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn closing_the_listener_ends_accept_and_connections() -> anyhow::Result<()> {
    guarded(async {
        let (client, _server, listener) = pair().await?;
        listener.close();
        assert!(listener.accept().await.is_none());
        assert!(matches!(
            client.closed().await,
            StreamError::ConnectionLost(_)
        ));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn socket_buffers_are_reported() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let listener = edge(&pki, ALPN)?;
        let dialer = dialer(&EdgeVerification::Pin(pki.ca_pin), ALPN)?;
        for (side, buffers) in [
            ("edge", listener.socket_buffers()),
            ("connector", dialer.socket_buffers()),
        ] {
            println!(
                "{side} socket buffers: {buffers:?} capped={}",
                buffers.capped()
            );
            assert_eq!(buffers.requested, QuicSettings::default().socket_buffer);
            assert!(buffers.recv > 0 && buffers.send > 0, "{buffers:?}");
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn ipv6_dual_stack_dialer_reaches_an_ipv4_edge() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let listener = edge(&pki, ALPN)?;
        let tls = client_config(&EdgeVerification::Pin(pki.ca_pin), &[ALPN])?;
        let bind = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
        let dialer = match QuicDialer::new(Arc::new(tls), &QuicSettings::default(), bind) {
            Ok(dialer) => dialer,
            // No IPv6 on this host: nothing to check.
            Err(TransportError::Bind(e)) => {
                println!("skipping: cannot bind [::]: {e}");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        dialer.connect(listener.local_addr(), EDGE_NAME).await?;
        listener.accept().await.context("listener closed")?;
        Ok(())
    })
    .await
}
