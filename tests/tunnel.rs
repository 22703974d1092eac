//! `connect()` end to end: a real edge and a real connector joined by a real QUIC tunnel,
//! real origins (redis-server, dnsmasq, TCP servers) on loopback addresses.
//!
//! The bulk transfers (64 MiB and 200 streams, 16 MiB and 50 streams) hold [`heavy_lock`]: one
//! at a time, so on a small machine neither slows the other past a timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underpass_e2e::http1;
use underpass_e2e::{heavy_lock, Behaviour, ConnEvent, Dnsmasq, EchoServer, Redis, Stack};

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(30);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

/// `CONNECT target` through `proxy`; returns the status, the Proxy-Status header and the
/// tunnel stream.
async fn connect(proxy: SocketAddr, target: &str) -> (u16, Option<String>, TcpStream) {
    let request = format!("CONNECT {target} HTTP/1.1\r\n\r\n");
    let answer = http1::connect_with(proxy, target, &request, LIMIT).await;
    let error = answer.proxy_error().map(str::to_owned);
    (answer.status, error, answer.stream)
}

/// `CONNECT target` is refused with exactly `status` and Proxy-Status `error=token`.
async fn refused_with(proxy: SocketAddr, target: &str, status: u16, token: &str) {
    let (got, proxy_status, _) = connect(proxy, target).await;
    assert_eq!(
        (got, proxy_status.as_deref()),
        (status, Some(token)),
        "{target}: Proxy-Status {proxy_status:?}"
    );
}

underpass_e2e::transport_tests! {
async fn redis_ping_with_half_close() {
    let redis = Redis::start(ip("127.20.0.6")).await;
    let stack = Stack::builder()
        .route("127.20.0.0/16", None)
        .network_binding("net")
        .start()
        .await;
    let (status, _, mut tunnel) =
        connect(stack.binding_addr("net"), &redis.addr().to_string()).await;
    assert_eq!(status, 200);
    tunnel.write_all(b"PING\r\n").await.unwrap();
    // The seed's example: writer.close(), then read.
    tunnel.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(LIMIT, tunnel.read_to_end(&mut reply))
        .await
        .expect("redis answers")
        .unwrap();
    assert_eq!(reply, b"+PONG\r\n");
}
}

underpass_e2e::transport_tests! {
async fn large_and_concurrent_transfers_are_intact() {
    let _turn = heavy_lock().await;
    let echo = EchoServer::start(ip("127.20.1.1"));
    let stack = Stack::builder()
        .route("127.20.1.0/24", None)
        .network_binding("net")
        .start()
        .await;
    let proxy = stack.binding_addr("net");
    let target = echo.addr().to_string();

    // 64 MiB through one stream, checksummed.
    let (status, _, tunnel) = connect(proxy, &target).await;
    assert_eq!(status, 200);
    let digest_in = roundtrip(tunnel, 64 << 20, 7).await;
    assert_eq!(digest_in.0, digest_in.1, "64 MiB echo differs");

    // 200 concurrent streams of 1 MiB each.
    let mut tasks = Vec::new();
    for seed in 0..200u32 {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let (status, _, tunnel) = connect(proxy, &target).await;
            assert_eq!(status, 200);
            roundtrip(tunnel, 1 << 20, seed).await
        }));
    }
    for task in tasks {
        let (sent, received) = tokio::time::timeout(LIMIT * 4, task)
            .await
            .expect("transfer finishes")
            .unwrap();
        assert_eq!(sent, received);
    }
}
}

/// Pseudo-random bytes, generated once; the transfers send windows of it.
fn noise() -> &'static [u8] {
    static NOISE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    NOISE.get_or_init(|| {
        let mut state = 2_654_435_761u32;
        (0..NOISE_LEN + CHUNK)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect()
    })
}

const NOISE_LEN: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;

/// Send `len` pseudo-random bytes, half-close, read everything back; (sent, received) digests.
///
/// Chunk `k` of stream `seed` is the window of [`noise`] at an offset that depends on both,
/// so streams send different bytes and a chunk delivered to the wrong stream, twice or out of
/// order changes the digest. The bytes are not generated per stream: on a 2-core machine in a
/// debug build, generating 200 MiB byte by byte in the test's tasks took the runtime's
/// workers from the edge and connector that share them.
async fn roundtrip(tunnel: TcpStream, len: usize, seed: u32) -> ([u8; 32], [u8; 32]) {
    let (mut read, mut write) = tunnel.into_split();
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut left = len;
        let mut chunk = 0usize;
        while left > 0 {
            let n = left.min(CHUNK);
            let offset = (seed as usize * 8191 + chunk * 4099) % NOISE_LEN;
            let bytes = &noise()[offset..offset + n];
            hash.update(bytes);
            write.write_all(bytes).await.unwrap();
            left -= n;
            chunk += 1;
        }
        write.shutdown().await.unwrap();
        <[u8; 32]>::from(hash.finalize())
    });
    let mut hash = Sha256::new();
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(LIMIT, read.read(&mut buf))
            .await
            .expect("echo keeps flowing")
            .unwrap();
        if n == 0 {
            break;
        }
        total += n;
        hash.update(&buf[..n]);
    }
    assert_eq!(total, len);
    (writer.await.unwrap(), hash.finalize().into())
}

underpass_e2e::transport_tests! {
async fn every_refusal_carries_its_proxy_status() {
    let closed = underpass_e2e::free_port(ip("127.20.2.1"));
    let dns = Dnsmasq::builder(ip("127.20.2.53"))
        .record("db.corp.test", ip("127.20.2.7"))
        .record("metadata.corp.test", ip("127.20.3.9"))
        .start()
        .await;
    let stack = Stack::builder()
        .route("127.20.2.0/24", None)
        .route("127.20.3.0/24", None)
        .route("*.corp.test", None)
        .route(Dnsmasq::NX_NAME, None)
        .deny(&["127.20.3.0/24"])
        .resolvers(&[dns.addr()])
        .network_binding("net")
        .start()
        .await;
    let proxy = stack.binding_addr("net");
    refused_with(
        proxy,
        &format!("127.20.2.1:{closed}"),
        502,
        "connection_refused",
    )
    .await;
    refused_with(proxy, "127.21.0.1:80", 502, "destination_ip_prohibited").await;
    refused_with(proxy, "127.20.3.1:80", 502, "destination_ip_prohibited").await;
    refused_with(
        proxy,
        "unrouted.example.test:80",
        502,
        "destination_not_found",
    )
    .await;
    refused_with(proxy, &format!("{}:80", Dnsmasq::NX_NAME), 502, "dns_error").await;
    // A hostname route must not become a path to a denied IP.
    refused_with(
        proxy,
        "metadata.corp.test:80",
        502,
        "destination_ip_prohibited",
    )
    .await;

    // And a routed name that resolves to a live origin works.
    let echo = EchoServer::start_with(ip("127.20.2.7"), Behaviour::Echo);
    let (status, _, mut tunnel) =
        connect(proxy, &format!("db.corp.test:{}", echo.addr().port())).await;
    assert_eq!(status, 200);
    tunnel.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    tunnel.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
}
}

underpass_e2e::transport_tests! {
async fn client_close_closes_the_origin_socket() {
    let source = EchoServer::start_with(ip("127.20.4.1"), Behaviour::Source { len: 1 << 30 });
    let stack = Stack::builder()
        .route("127.20.4.0/24", None)
        .network_binding("net")
        .start()
        .await;
    let (status, _, mut tunnel) =
        connect(stack.binding_addr("net"), &source.addr().to_string()).await;
    assert_eq!(status, 200);
    // Mid-transfer: read some of the gigabyte, then close the client socket.
    let mut buf = vec![0u8; 1 << 20];
    tunnel.read_exact(&mut buf).await.unwrap();
    drop(tunnel);
    let closed = source
        .wait_for(LIMIT, |event| {
            matches!(
                event,
                ConnEvent::Error { .. } | ConnEvent::Closed { .. } | ConnEvent::Eof { .. }
            )
        })
        .await;
    assert!(
        closed.is_some(),
        "the origin did not see the close within {LIMIT:?}: {:?}",
        source.events()
    );
}
}

underpass_e2e::transport_tests! {
/// A `mode = "tcp"` binding: a plain local port into one TCP service, with no CONNECT.
async fn tcp_binding_forwards_a_plain_port() {
    let _turn = heavy_lock().await;
    let redis = Redis::start(ip("127.20.5.6")).await;
    let echo = EchoServer::start(ip("127.20.5.7"));
    let stack = Stack::builder()
        .route("127.20.5.0/24", None)
        .tcp_binding("redis", redis.addr())
        .tcp_binding("echo", echo.addr())
        .start()
        .await;

    // redis-cli style: the client speaks RESP to the local port, half-closes, reads.
    let mut redis_port = TcpStream::connect(stack.binding_addr("redis"))
        .await
        .expect("tcp binding accepts");
    redis_port.write_all(b"PING\r\n").await.unwrap();
    redis_port.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(LIMIT, redis_port.read_to_end(&mut reply))
        .await
        .expect("redis answers")
        .unwrap();
    assert_eq!(reply, b"+PONG\r\n");

    // 16 MiB each way through the port, checksummed, and 50 at once.
    let port = stack.binding_addr("echo");
    let (sent, received) = roundtrip(TcpStream::connect(port).await.unwrap(), 16 << 20, 3).await;
    assert_eq!(sent, received, "16 MiB echo differs");
    let mut tasks = Vec::new();
    for seed in 0..50u32 {
        tasks.push(tokio::spawn(async move {
            roundtrip(TcpStream::connect(port).await.unwrap(), 256 << 10, seed).await
        }));
    }
    for task in tasks {
        let (sent, received) = tokio::time::timeout(LIMIT * 2, task)
            .await
            .expect("transfer finishes")
            .unwrap();
        assert_eq!(sent, received);
    }
}
}

underpass_e2e::transport_tests! {
/// With no protocol to carry a Proxy-Status, a stream that cannot open resets the client
/// connection instead of ending it cleanly.
async fn tcp_binding_resets_the_client_when_the_dial_fails() {
    let closed = underpass_e2e::free_port(ip("127.20.6.1"));
    let unrouted = EchoServer::start(ip("127.20.7.1"));
    let stack = Stack::builder()
        .route("127.20.6.0/24", None)
        .tcp_binding("closed", SocketAddr::new(ip("127.20.6.1"), closed))
        .tcp_binding("unrouted", unrouted.addr())
        .start()
        .await;
    for name in ["closed", "unrouted"] {
        // The reset can arrive before the client's connect() has even returned.
        let outcome = match TcpStream::connect(stack.binding_addr(name)).await {
            Err(error) => Err(error),
            Ok(mut client) => {
                let mut buf = [0u8; 16];
                tokio::time::timeout(LIMIT, client.read(&mut buf))
                    .await
                    .expect("the edge ends the connection")
            }
        };
        match outcome {
            Err(error) => assert_eq!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset,
                "{name}: {error}"
            ),
            Ok(n) => panic!("{name}: expected a reset, read {n} bytes and a clean end"),
        }
    }
    assert!(
        unrouted.events().is_empty(),
        "an unrouted service was dialed: {:?}",
        unrouted.events()
    );
}
}
