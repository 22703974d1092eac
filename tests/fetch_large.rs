//! `fetch()` streams without buffering: a 1 GiB download and a 1 GiB upload through the tunnel
//! arrive intact while the process's peak memory stays far below the body size.
//!
//! Both transfers take each of a small machine's cores for a minute or more in a debug build:
//! each holds [`heavy_lock`] so they run one after the other, never starving each other.

use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underpass_e2e::{heavy_lock, Location, Nginx, Stack};

const GIB: u64 = 1 << 30;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

/// Peak resident memory of this process (edge, connector and client all live here), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_is_intact_with_bounded_memory() {
    let _turn = heavy_lock().await;
    let nginx = Nginx::builder(ip("127.20.20.1"))
        .location(Location::pattern_file("/big", GIB))
        .start()
        .await;
    let expected = nginx.sha256("/big").expect("digest of /big").to_owned();
    let stack = Stack::builder()
        .route("127.20.20.0/24", None)
        .network_binding("net")
        .start()
        .await;
    let before = peak_rss_kib();
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(stack.binding_addr("net")).await.unwrap();
    let request = format!(
        "GET http://127.20.20.1:{}/big HTTP/1.1\r\nConnection: close\r\n\r\n",
        nginx.http_addr().port()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed in the head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {GIB}")), "{head}");
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf))
            .await
            .expect("the body keeps flowing")
            .unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        hash.update(&buf[..n]);
    }
    assert_eq!(total, GIB);
    assert_eq!(hex::encode(hash.finalize()), expected);
    let peak = peak_rss_kib();
    println!(
        "1 GiB download in {:?}, peak RSS before {before} KiB, after {peak} KiB",
        started.elapsed()
    );
    // Flow control bounds what is in flight (QUIC windows of 16/64 MiB, 8 MiB send window); a buffered body
    // would need more than 1 GiB.
    assert!(
        peak < 512 * 1024,
        "peak RSS {peak} KiB: the body was buffered"
    );
}

/// An origin that hashes a `Content-Length` request body as it streams in and answers with
/// the hex digest.
async fn hashing_origin(listener: tokio::net::TcpListener) {
    let Ok((mut socket, _)) = listener.accept().await else {
        return;
    };
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut hash = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = socket.read(&mut buf[..want]).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    let digest = hex::encode(hash.finalize());
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{digest}",
        digest.len()
    );
    let _ = socket.write_all(reply.as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_is_intact_with_bounded_memory() {
    let _turn = heavy_lock().await;
    let listener = tokio::net::TcpListener::bind("127.20.21.1:0")
        .await
        .unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(hashing_origin(listener));
    let stack = Stack::builder()
        .route("127.20.21.0/24", None)
        .network_binding("net")
        .start()
        .await;
    let started = std::time::Instant::now();
    let stream = TcpStream::connect(stack.binding_addr("net")).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let uploader = tokio::spawn(async move {
        let head = format!(
            "POST http://{origin}/upload HTTP/1.1\r\nContent-Length: {GIB}\r\nConnection: close\r\n\r\n"
        );
        write.write_all(head.as_bytes()).await.unwrap();
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        let mut state = 0x9e37_79b9_u32;
        while sent < GIB {
            for chunk in buf.chunks_mut(4) {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            hash.update(&buf);
            if let Err(error) = write.write_all(&buf).await {
                return Err((sent, error));
            }
            sent += buf.len() as u64;
        }
        Ok((hex::encode(hash.finalize()), write))
    });
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(600), read.read_to_end(&mut response))
        .await
        .expect("the upload finishes")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    // An edge that gives up on the upload answers and closes: show its answer, not only the
    // client's broken pipe.
    let (sent_digest, _write) = match uploader.await.expect("the uploader task") {
        Ok(done) => done,
        Err((sent, error)) => {
            panic!("the upload was cut after {sent} of {GIB} bytes ({error}); the edge answered:\n{response}")
        }
    };
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with(&sent_digest),
        "origin digest differs: {response}"
    );
    let peak = peak_rss_kib();
    // Printed for diagnosis (the edge answers 504 if the upload outlasts its reply timeout).
    println!(
        "1 GiB upload in {:?}, peak RSS {peak} KiB",
        started.elapsed()
    );
    assert!(
        peak < 512 * 1024,
        "peak RSS {peak} KiB: the body was buffered"
    );
}

/// An upload slower than the edge's 90 s wait for the connector's answer still gets the
/// origin's answer: that wait starts when the body has been sent (an origin answers an upload
/// only once it has all of it). Before, the edge answered 504 `connection_read_timeout` 90 s
/// into any upload and closed the client's socket mid-body, which is how the 1 GiB upload
/// failed on a loaded machine. Slow by nature (100 s), so ignored here and run by its own
/// step of `.ci/run` (`scripts/test --ignored`). The pace only makes the upload last longer
/// than the wait; the test asserts the answer and the bytes, never a time.
#[tokio::test]
#[ignore = "takes 100 s; run by scripts/test --ignored"]
async fn an_upload_slower_than_the_reply_wait_is_answered() {
    const CHUNKS: u64 = 100;
    const CHUNK: usize = 1024;
    let listener = tokio::net::TcpListener::bind("127.20.21.2:0")
        .await
        .unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(hashing_origin(listener));
    let stack = Stack::builder()
        .route("127.20.21.0/24", None)
        .network_binding("net")
        .start()
        .await;
    let stream = TcpStream::connect(stack.binding_addr("net")).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let total = CHUNKS * CHUNK as u64;
    let uploader = tokio::spawn(async move {
        let head = format!(
            "POST http://{origin}/upload HTTP/1.1\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
        );
        write.write_all(head.as_bytes()).await.unwrap();
        let mut hash = Sha256::new();
        for i in 0..CHUNKS {
            let chunk = vec![b'a' + (i % 26) as u8; CHUNK];
            hash.update(&chunk);
            if let Err(error) = write.write_all(&chunk).await {
                return Err((i, error));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok((hex::encode(hash.finalize()), write))
    });
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(600), read.read_to_end(&mut response))
        .await
        .expect("the upload finishes")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    let (digest, _write) = match uploader.await.expect("the uploader task") {
        Ok(done) => done,
        Err((chunk, error)) => {
            panic!("the upload was cut at chunk {chunk} of {CHUNKS} ({error}); the edge answered:\n{response}")
        }
    };
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with(&digest),
        "origin digest differs: {response}"
    );
}
