//! `fetch()` streams without buffering: a 1 GiB download through the tunnel arrives intact
//! while the process's peak memory stays far below the body size.

#[path = "workerd/stack.rs"]
#[allow(dead_code)]
mod stack;

use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use stack::Stack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underpass_e2e::{Location, Nginx};

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
    let nginx = Nginx::builder(ip("127.20.20.1"))
        .location(Location::pattern_file("/big", GIB))
        .start();
    let expected = nginx.sha256("/big").expect("digest of /big").to_owned();
    let stack = Stack::builder()
        .route("127.20.20.0/24", None)
        .network_binding("net")
        .start()
        .await;
    let before = peak_rss_kib();
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
    println!("peak RSS before {before} KiB, after 1 GiB {peak} KiB");
    // Flow control bounds what is in flight (QUIC windows of 16/64 MiB); a buffered body
    // would need more than 1 GiB.
    assert!(
        peak < 512 * 1024,
        "peak RSS {peak} KiB: the body was buffered"
    );
}
