//! Helpers shared by the edge's integration tests: configs on loopback port 0, and a raw
//! HTTP/1.1 client that reads response heads byte-exactly.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underpass_edge::config::{BindingConfig, EdgeConfig, NetworkConfig};

/// Guards every wait in these tests against a hang; never decides a result.
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// An edge config in `dir` with every listener on loopback port 0.
pub fn edge_config(dir: &Path) -> EdgeConfig {
    let mut config = EdgeConfig::new(dir.join("state"));
    config.listen = "127.0.0.1:0".parse().expect("literal address");
    config.quic.socket_buffer = Some(1 << 20);
    config.timeouts.drain_grace_ms = 2_000;
    config
}

/// Add a network `name` on `tunnel` and a binding `binding` serving it on port 0.
pub fn add_network_binding(config: &mut EdgeConfig, binding: &str, name: &str, tunnel: &str) {
    config.networks.push(NetworkConfig {
        name: name.into(),
        tunnel: tunnel.into(),
    });
    config.bindings.push(BindingConfig {
        name: binding.into(),
        listen: "127.0.0.1:0".parse().expect("literal address"),
        network: Some(name.into()),
        service: None,
        mode: Default::default(),
    });
}

/// Add a binding `binding` serving the existing service `service` on port 0.
pub fn add_service_binding(config: &mut EdgeConfig, binding: &str, service: &str) {
    config.bindings.push(BindingConfig {
        name: binding.into(),
        listen: "127.0.0.1:0".parse().expect("literal address"),
        network: None,
        service: Some(service.into()),
        mode: Default::default(),
    });
}

/// A response head read off a raw connection, and the bytes that followed it.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub rest: Vec<u8>,
}

impl Head {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Connect to `addr`, send `request` verbatim, read the response head.
pub async fn request(addr: SocketAddr, request: &str) -> (TcpStream, Head) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to binding");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// Read one response head from `stream`.
pub async fn read_head(stream: &mut TcpStream) -> Head {
    let mut buf = Vec::new();
    let end = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return end;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "connection closed before a response head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("response head in time");
    let text = String::from_utf8(buf[..end].to_vec()).expect("ASCII head");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status code");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Head {
        status,
        headers,
        rest: buf[end + 4..].to_vec(),
    }
}
