//! The HTTP/2 transport over real TCP + TLS on 127.0.0.1: bulk and concurrent transfers, flow
//! control, the reversed (connector-opened) streams, reset and stop both ways, close with a
//! code and reason, keying material, dead-peer detection by PING, and handshakes refused for
//! ALPN, certificates, time and the handshake bound.
//!
//! Roles: the connector dials (the TCP client) but is the HTTP/2 server; the edge listens and
//! is the HTTP/2 client, so edge-opened streams are the natural direction.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use underpass_transport::h2::{
    H2Config, H2Connection, H2Dialer, H2Listener, H2Recv, H2Send, TransportError, ALPN,
};
use underpass_transport::tls::{client_config, server_config, DevPki, EdgeVerification};
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
    DevPki::generate(&[EDGE_NAME.to_string()]).expect("generate PKI")
}

fn listener(pki: &DevPki, alpn: &[u8], config: &H2Config) -> anyhow::Result<H2Listener> {
    let tls = server_config(pki.chain_pem.as_bytes(), pki.key_pem.as_bytes(), &[alpn])?;
    Ok(H2Listener::bind(loopback(), Arc::new(tls), config)?)
}

fn dialer(
    verification: &EdgeVerification,
    alpn: &[&[u8]],
    config: &H2Config,
) -> anyhow::Result<H2Dialer> {
    let tls = client_config(verification, alpn)?;
    Ok(H2Dialer::new(Arc::new(tls), config)?)
}

/// A connected pair, with the endpoints that keep it up.
struct Pair {
    connector: H2Connection,
    edge: H2Connection,
    _listener: H2Listener,
    _dialer: H2Dialer,
}

async fn pair_with(config: &H2Config) -> anyhow::Result<Pair> {
    let pki = pki();
    let listener = listener(&pki, ALPN, config)?;
    let dialer = dialer(&EdgeVerification::Pin(pki.ca_pin), &[ALPN], config)?;
    let (connector, edge) = tokio::join!(
        dialer.connect(listener.local_addr(), EDGE_NAME),
        listener.accept()
    );
    Ok(Pair {
        connector: connector?,
        edge: edge.context("listener closed")?,
        _listener: listener,
        _dialer: dialer,
    })
}

async fn pair() -> anyhow::Result<Pair> {
    pair_with(&H2Config::default()).await
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

async fn read_all(recv: &mut H2Recv) -> Result<Vec<u8>, StreamError> {
    let mut out = Vec::new();
    while let Some(chunk) = recv.read_chunk(usize::MAX).await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Read until the stream fails or ends; the failure (or `Ok(None)`).
async fn read_to_failure(recv: &mut H2Recv) -> Result<Option<Bytes>, StreamError> {
    loop {
        match recv.read_chunk(usize::MAX).await {
            Ok(Some(_)) => continue,
            other => return other,
        }
    }
}

/// Write until a write fails; its error.
async fn write_until_failure(send: &mut H2Send) -> StreamError {
    let chunk = Bytes::from(vec![0u8; 16 << 10]);
    loop {
        if let Err(error) = send.write_chunk(chunk.clone()).await {
            return error;
        }
    }
}

/// Echo every chunk back until end of stream, then finish.
async fn echo(mut send: H2Send, mut recv: H2Recv) -> Result<(), StreamError> {
    while let Some(chunk) = recv.read_chunk(1 << 20).await? {
        send.write_chunk(chunk).await?;
    }
    send.finish()
}

/// Accept streams and echo each one, until the connection ends.
fn serve_echo(conn: H2Connection) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        while let Ok((send, recv)) = conn.accept_bi().await {
            tasks.spawn(echo(send, recv));
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("echo task").expect("echo stream");
        }
    })
}

/// Send `data` on a fresh stream in 256 KiB chunks, read the echo; return its digest.
async fn echo_roundtrip(conn: &H2Connection, data: Bytes) -> anyhow::Result<[u8; 32]> {
    let (mut send, mut recv) = conn.open_bi().await?;
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

fn lost(error: StreamError) -> anyhow::Result<String> {
    match error {
        StreamError::ConnectionLost(why) => Ok(why),
        other => bail!("expected a lost connection, got {other:?}"),
    }
}

#[tokio::test]
async fn sixty_four_mib_each_way_on_one_stream_is_byte_identical() -> anyhow::Result<()> {
    guarded(async {
        let pair = pair().await?;
        let echo = serve_echo(pair.connector.clone());
        let data = Bytes::from(pattern(64, 64 << 20));
        let expected: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(echo_roundtrip(&pair.edge, data).await?, expected);
        pair.edge.close(0, b"done");
        echo.await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_reader_that_does_not_read_stalls_the_writer_at_the_stream_window() -> anyhow::Result<()>
{
    guarded(async {
        let config = H2Config {
            stream_window: 65_535,
            connection_window: 1 << 20,
            max_send_buffer: 16 << 10,
            ..H2Config::default()
        };
        let pair = pair_with(&config).await?;
        let (mut send, _recv) = pair.edge.open_bi().await?;
        let data = Bytes::from(pattern(7, 8 << 20));
        let expected: [u8; 32] = Sha256::digest(&data).into();
        let written = Arc::new(AtomicU64::new(0));
        let mut writer = tokio::spawn({
            let (data, written) = (data.clone(), written.clone());
            async move {
                let mut rest = data;
                while !rest.is_empty() {
                    let chunk = rest.split_to(rest.len().min(16 << 10));
                    let len = chunk.len() as u64;
                    send.write_chunk(chunk).await?;
                    written.fetch_add(len, Ordering::Relaxed);
                }
                send.finish()?;
                Ok::<_, StreamError>(send)
            }
        });
        let (_c_send, mut c_recv) = pair.connector.accept_bi().await?;
        // Nothing is read, so no window comes back: whatever the scheduling, the writer can
        // never have more than the stream window accepted. Letting it run a while only gives
        // it the chance to overrun.
        let stalled = tokio::time::timeout(Duration::from_millis(300), &mut writer).await;
        assert!(stalled.is_err(), "the writer finished without a reader");
        let accepted = written.load(Ordering::Relaxed);
        assert!(
            accepted <= u64::from(config.stream_window),
            "{accepted} bytes accepted beyond a window of {}",
            config.stream_window
        );
        // Reading releases window as it goes: everything arrives, intact.
        let mut hasher = Sha256::new();
        while let Some(chunk) = c_recv.read_chunk(usize::MAX).await? {
            hasher.update(&chunk);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        assert_eq!(digest, expected);
        writer.await??;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn two_hundred_concurrent_streams_both_ways() -> anyhow::Result<()> {
    guarded(async {
        let pair = pair().await?;
        let connector_echo = serve_echo(pair.connector.clone());
        let edge_echo = serve_echo(pair.edge.clone());
        let mut streams = JoinSet::new();
        for i in 0..200u64 {
            // Most from the edge, some (reversed) from the connector.
            let conn = if i % 10 == 0 {
                pair.connector.clone()
            } else {
                pair.edge.clone()
            };
            streams.spawn(async move {
                let data = Bytes::from(pattern(i + 1, 256 << 10));
                let expected: [u8; 32] = Sha256::digest(&data).into();
                let got = echo_roundtrip(&conn, data).await?;
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
        pair.edge.close(0, b"done");
        connector_echo.await?;
        edge_echo.await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_connector_opens_streams_the_edge_accepts() -> anyhow::Result<()> {
    guarded(async {
        let pair = pair().await?;
        // An accept that is dropped before anything arrives loses nothing.
        {
            let mut accept = pin!(pair.edge.accept_bi());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(accept.as_mut().poll(&mut cx).is_pending());
        }
        // The control stream: opened by the connector, as the multiplexer does.
        let (mut c_send, mut c_recv) = pair.connector.open_bi().await?;
        c_send.write_chunk(Bytes::from_static(b"register")).await?;
        let (mut e_send, mut e_recv) = pair.edge.accept_bi().await?;
        assert_eq!(
            e_recv.read_chunk(64).await?.as_deref(),
            Some(&b"register"[..])
        );
        e_send
            .write_chunk(Bytes::from_static(b"registered"))
            .await?;
        assert_eq!(
            c_recv.read_chunk(64).await?.as_deref(),
            Some(&b"registered"[..])
        );

        // More streams than the edge keeps waiting: the connector's opens wait for the edge's
        // accepts, and every stream arrives.
        let connector = pair.connector.clone();
        let opener = tokio::spawn(async move {
            let mut sends = Vec::new();
            for i in 0..40u8 {
                let (mut send, recv) = connector.open_bi().await?;
                send.write_chunk(Bytes::from(vec![i])).await?;
                send.finish()?;
                sends.push((send, recv));
            }
            Ok::<_, StreamError>(sends)
        });
        let mut seen = Vec::new();
        for _ in 0..40 {
            let (_send, mut recv) = pair.edge.accept_bi().await?;
            seen.extend(read_all(&mut recv).await?);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..40).collect::<Vec<u8>>());
        opener.await??;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn resets_reach_the_peer_with_their_code_both_ways() -> anyhow::Result<()> {
    guarded(async {
        let pair = pair().await?;
        for (opener, acceptor, code) in [
            (&pair.edge, &pair.connector, 0x42),
            (&pair.connector, &pair.edge, 0x43),
        ] {
            let (mut send, mut recv) = opener.open_bi().await?;
            send.write_chunk(Bytes::from_static(b"partial")).await?;
            let (mut peer_send, mut peer_recv) = acceptor.accept_bi().await?;
            send.reset(code);
            // The reader sees the code after the data that came before it.
            assert_eq!(
                read_to_failure(&mut peer_recv).await,
                Err(StreamError::Reset(code))
            );
            // HTTP/2 resets the whole stream: the peer's direction is over too.
            assert_eq!(peer_send.stopped().await?, Some(code));
            assert_eq!(
                write_until_failure(&mut peer_send).await,
                StreamError::Stopped(code)
            );
            // This side's own halves report the local reset.
            assert_eq!(
                send.write_chunk(Bytes::from_static(b"x")).await,
                Err(StreamError::Closed)
            );
            assert_eq!(read_to_failure(&mut recv).await, Err(StreamError::Closed));
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn stops_reach_the_writer_with_their_code_both_ways() -> anyhow::Result<()> {
    guarded(async {
        let pair = pair().await?;
        for (opener, acceptor, code) in [
            (&pair.edge, &pair.connector, 0x33),
            (&pair.connector, &pair.edge, 0x34),
        ] {
            let (mut send, mut recv) = opener.open_bi().await?;
            send.write_chunk(Bytes::from_static(b"first")).await?;
            let (mut peer_send, mut peer_recv) = acceptor.accept_bi().await?;
            peer_recv.stop(code);
            assert_eq!(send.stopped().await?, Some(code));
            assert_eq!(
                write_until_failure(&mut send).await,
                StreamError::Stopped(code)
            );
            // The stopped stream's other direction is over as well.
            assert_eq!(
                read_to_failure(&mut recv).await,
                Err(StreamError::Reset(code))
            );
            assert_eq!(
                peer_send.write_chunk(Bytes::from_static(b"x")).await,
                Err(StreamError::Closed)
            );
        }
        // Dropping an unfinished send half resets with RESET_ON_DROP.
        let (mut send, _recv) = pair.edge.open_bi().await?;
        send.write_chunk(Bytes::from_static(b"abandoned")).await?;
        let (_peer_send, mut peer_recv) = pair.connector.accept_bi().await?;
        drop(send);
        assert_eq!(
            read_to_failure(&mut peer_recv).await,
            Err(StreamError::Reset(underpass_transport::h2::RESET_ON_DROP))
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn close_reaches_the_peer_with_code_and_reason_both_ways() -> anyhow::Result<()> {
    guarded(async {
        for edge_closes in [true, false] {
            let pair = pair().await?;
            let (closer, peer) = if edge_closes {
                (&pair.edge, &pair.connector)
            } else {
                (&pair.connector, &pair.edge)
            };
            let (mut send, mut recv) = peer.open_bi().await?;
            send.write_chunk(Bytes::from_static(b"in flight")).await?;
            closer.close(7, b"going away");
            assert_eq!(
                lost(peer.closed().await)?,
                "closed by peer: going away (code 7)"
            );
            assert_eq!(
                lost(closer.closed().await)?,
                "closed locally: going away (code 7)"
            );
            // Streams and new opens fail with the close.
            assert_eq!(
                lost(read_to_failure(&mut recv).await.unwrap_err())?,
                "closed by peer: going away (code 7)"
            );
            assert!(matches!(
                peer.open_bi().await,
                Err(StreamError::ConnectionLost(_))
            ));
            assert!(matches!(
                closer.accept_bi().await,
                Err(StreamError::ConnectionLost(_))
            ));
        }

        // Dropping every handle closes with code 0.
        let Pair {
            connector,
            edge,
            _listener,
            _dialer,
        } = pair().await?;
        drop(edge);
        assert_eq!(lost(connector.closed().await)?, "closed by peer: 0");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn closing_the_endpoints_closes_their_connections_and_waits_for_the_peers(
) -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let config = H2Config::default();
        let listener = listener(&pki, ALPN, &config)?;
        let dialer = dialer(&EdgeVerification::Pin(pki.ca_pin), &[ALPN], &config)?;
        let connector = dialer.connect(listener.local_addr(), EDGE_NAME).await?;
        let edge = listener.accept().await.context("listener closed")?;
        listener.close();
        assert!(listener.accept().await.is_none());
        assert_eq!(
            lost(connector.closed().await)?,
            "closed by peer: edge shutting down (code 0)"
        );
        listener.wait_idle().await;
        assert!(matches!(
            edge.open_bi().await,
            Err(StreamError::ConnectionLost(_))
        ));
        dialer.close();
        dialer.wait_idle().await;
        assert!(matches!(
            dialer.connect(loopback(), EDGE_NAME).await,
            Err(TransportError::Connect(_))
        ));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn keying_material_matches_per_label_and_context() -> anyhow::Result<()> {
    guarded(async {
        let pair = pair().await?;
        let export = |conn: &H2Connection, label: &[u8], context: &[u8]| {
            let mut out = [0u8; 32];
            conn.export_keying_material(&mut out, label, context)
                .map(|()| out)
        };
        let a = export(&pair.connector, b"underpass registration", b"ctx-1")?;
        assert_eq!(a, export(&pair.edge, b"underpass registration", b"ctx-1")?);
        assert_ne!(a, export(&pair.edge, b"underpass registration", b"ctx-2")?);
        assert_ne!(a, export(&pair.edge, b"another label", b"ctx-1")?);
        // While data flows: the driver holds the TLS stream only in turns.
        let echo = serve_echo(pair.connector.clone());
        let edge = pair.edge.clone();
        let transfer =
            tokio::spawn(
                async move { echo_roundtrip(&edge, Bytes::from(pattern(3, 4 << 20))).await },
            );
        for _ in 0..100 {
            assert_eq!(
                a,
                export(&pair.connector, b"underpass registration", b"ctx-1")?
            );
            tokio::task::yield_now().await;
        }
        transfer.await??;
        // Another connection has other keys.
        let other = self::pair().await?;
        assert_ne!(
            a,
            export(&other.connector, b"underpass registration", b"ctx-1")?
        );
        pair.edge.close(0, b"done");
        echo.await?;
        Ok(())
    })
    .await
}

/// A TCP relay between one connector and the edge that forwards both ways until frozen, then
/// forwards nothing and keeps both sockets open: a peer that went silent without closing.
struct Relay {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(edge: SocketAddr) -> anyhow::Result<Relay> {
        let socket = TcpListener::bind(loopback()).await?;
        let addr = socket.local_addr()?;
        let (frozen, watched) = watch::channel(false);
        let task = tokio::spawn(async move {
            let Ok((client, _)) = socket.accept().await else {
                return;
            };
            let Ok(server) = TcpStream::connect(edge).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                forward(client_read, server_write, watched.clone()),
                forward(server_read, client_write, watched),
            );
        });
        Ok(Relay { addr, frozen, task })
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        if *frozen.borrow() {
            // Swallow this and everything after, holding both sockets open.
            return std::future::pending().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_silent_peer_is_found_by_ping() -> anyhow::Result<()> {
    guarded(async {
        let config = H2Config {
            keep_alive_ms: 100,
            ping_timeout_ms: 1000,
            ..H2Config::default()
        };
        let pki = pki();
        let listener = listener(&pki, ALPN, &config)?;
        let relay = Relay::start(listener.local_addr()).await?;
        let dialer = dialer(&EdgeVerification::Pin(pki.ca_pin), &[ALPN], &config)?;
        let connector = dialer.connect(relay.addr, EDGE_NAME).await?;
        let edge = listener.accept().await.context("listener closed")?;
        // Alive: a stream works, PINGs are answered.
        let (mut send, _recv) = edge.open_bi().await?;
        send.write_chunk(Bytes::from_static(b"hello")).await?;
        let (_c_send, mut c_recv) = connector.accept_bi().await?;
        assert_eq!(c_recv.read_chunk(64).await?.as_deref(), Some(&b"hello"[..]));
        let before = connector.stats().context("stats")?;

        // The path goes silent; TCP notices nothing (the relay holds both sockets open and
        // takes what is sent), so only the keep-alive can end the connections.
        relay.freeze();
        for conn in [&connector, &edge] {
            let why = lost(conn.closed().await)?;
            assert!(why.starts_with("timed out"), "{why}");
        }
        let after = connector.stats().context("stats")?;
        assert!(after.tx_datagrams > before.tx_datagrams, "PINGs were sent");
        assert_eq!(
            lost(c_recv.read_chunk(64).await.unwrap_err())?,
            lost(connector.closed().await)?
        );
        Ok(())
    })
    .await
}

/// Expect a refused handshake whose message contains `needle`; then a good connector is
/// still served by the same listener.
async fn expect_refused(
    listener: &H2Listener,
    pki: &DevPki,
    verification: &EdgeVerification,
    alpn: &[&[u8]],
    name: &str,
    needle: &str,
) -> anyhow::Result<()> {
    let config = H2Config::default();
    let bad = dialer(verification, alpn, &config)?;
    match bad.connect(listener.local_addr(), name).await {
        Ok(_) => bail!("handshake with {verification:?} / {name} / {alpn:?} should have failed"),
        Err(TransportError::Handshake(message)) => assert!(
            message.contains(needle),
            "error {message:?} does not mention {needle:?}"
        ),
        Err(other) => bail!("unexpected error {other}"),
    }
    let good = dialer(&EdgeVerification::Pin(pki.ca_pin), &[ALPN], &config)?;
    let connector = good.connect(listener.local_addr(), EDGE_NAME).await?;
    let edge = listener.accept().await.context("listener closed")?;
    let (mut send, _recv) = edge.open_bi().await?;
    send.write_chunk(Bytes::from_static(b"ok")).await?;
    let (_send, mut recv) = connector.accept_bi().await?;
    assert_eq!(recv.read_chunk(8).await?.as_deref(), Some(&b"ok"[..]));
    Ok(())
}

#[tokio::test]
async fn alpn_mismatches_are_refused() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let listener = listener(&pki, ALPN, &H2Config::default())?;
        let pin = EdgeVerification::Pin(pki.ca_pin);
        // The QUIC protocol name on TCP: TLS refuses it.
        let quic = underpass_transport::quic::ALPN;
        expect_refused(
            &listener,
            &pki,
            &pin,
            &[quic],
            EDGE_NAME,
            "NoApplicationProtocol",
        )
        .await?;
        // No ALPN at all: TLS completes, the transport refuses.
        expect_refused(&listener, &pki, &pin, &[], EDGE_NAME, "ALPN h2").await?;

        // An edge that does not speak h2.
        let quic_edge = self::listener(&pki, quic, &H2Config::default())?;
        let h2 = dialer(&pin, &[ALPN], &H2Config::default())?;
        match h2.connect(quic_edge.local_addr(), EDGE_NAME).await {
            Err(TransportError::Handshake(message)) => {
                assert!(message.contains("NoApplicationProtocol"), "{message}")
            }
            other => bail!("expected a refused handshake, got {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn wrong_certificates_are_refused() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let other = self::pki();
        let listener = listener(&pki, ALPN, &H2Config::default())?;
        expect_refused(
            &listener,
            &pki,
            &EdgeVerification::Pin(other.ca_pin),
            &[ALPN],
            EDGE_NAME,
            "does not contain the pinned CA",
        )
        .await?;
        expect_refused(
            &listener,
            &pki,
            &EdgeVerification::CaPem(other.ca_cert_pem.clone().into_bytes()),
            &[ALPN],
            EDGE_NAME,
            "UnknownIssuer",
        )
        .await?;
        expect_refused(
            &listener,
            &pki,
            &EdgeVerification::CaPem(pki.ca_cert_pem.clone().into_bytes()),
            &[ALPN],
            "other.underpass.test",
            "not valid for name",
        )
        .await
    })
    .await
}

#[tokio::test]
async fn a_handshake_that_never_completes_times_out() -> anyhow::Result<()> {
    guarded(async {
        // A TCP listener that accepts and says nothing.
        let mute = TcpListener::bind(loopback()).await?;
        let addr = mute.local_addr()?;
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = mute.accept().await {
                held.push(socket);
            }
        });
        let config = H2Config {
            handshake_timeout_ms: 200,
            ..H2Config::default()
        };
        let dialer = dialer(&EdgeVerification::Pin(pki().ca_pin), &[ALPN], &config)?;
        match dialer.connect(addr, EDGE_NAME).await {
            Err(TransportError::Handshake(message)) => {
                assert!(message.contains("timed out"), "{message}")
            }
            other => bail!("expected a timeout, got {other:?}"),
        }
        held.abort();
        Ok(())
    })
    .await
}

/// Resolves once `listener` has exactly `count` handshakes in progress.
async fn handshakes_reach(listener: &H2Listener, count: usize) {
    while listener.handshakes() != count {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn beyond_max_handshakes_connections_are_dropped_until_one_ends() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let config = H2Config {
            max_handshakes: 1,
            ..H2Config::default()
        };
        let listener = listener(&pki, ALPN, &config)?;
        // A client that connects and never starts TLS takes the one slot.
        let stalled = TcpStream::connect(listener.local_addr()).await?;
        handshakes_reach(&listener, 1).await;

        let pin = EdgeVerification::Pin(pki.ca_pin);
        let refused = dialer(&pin, &[ALPN], &config)?
            .connect(listener.local_addr(), EDGE_NAME)
            .await;
        assert!(
            matches!(refused, Err(TransportError::Handshake(_))),
            "{refused:?}"
        );

        // The stalled client leaves; its handshake fails and frees the slot.
        drop(stalled);
        handshakes_reach(&listener, 0).await;
        let good = dialer(&pin, &[ALPN], &config)?;
        let _connector = good.connect(listener.local_addr(), EDGE_NAME).await?;
        listener.accept().await.context("listener closed")?;

        // Closing ends a stalled handshake too.
        let _stalled = TcpStream::connect(listener.local_addr()).await?;
        handshakes_reach(&listener, 1).await;
        listener.close();
        listener.wait_idle().await;
        assert_eq!(listener.handshakes(), 0);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn invalid_settings_are_refused_before_binding() -> anyhow::Result<()> {
    guarded(async {
        let pki = pki();
        let bad = H2Config {
            max_handshakes: 0,
            ..H2Config::default()
        };
        match listener(&pki, ALPN, &bad) {
            Err(error) => assert!(
                error.to_string().contains("http2.max_handshakes"),
                "{error}"
            ),
            Ok(_) => bail!("max_handshakes = 0 was accepted"),
        }
        let bad = H2Config {
            stream_window: 1,
            ..H2Config::default()
        };
        match dialer(&EdgeVerification::Pin(pki.ca_pin), &[ALPN], &bad) {
            Err(error) => assert!(error.to_string().contains("http2.stream_window"), "{error}"),
            Ok(_) => bail!("stream_window = 1 was accepted"),
        }
        Ok(())
    })
    .await
}
