//! Helpers shared by the edge's integration tests: the one edge builder (loopback, port 0), a
//! fake connector written with the mux and transport crates, and a raw HTTP/1.1 client that
//! reads response heads byte-exactly.
#![allow(dead_code)]

pub mod connector;

use std::net::SocketAddr;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underpass_edge::config::{
    BindingConfig, BindingMode, EdgeConfig, NetworkConfig, ServiceConfig, ServiceHost, ServiceKind,
    ServiceTls,
};
use underpass_edge::{Edge, EdgeHandle};

/// Guards every wait in these tests against a hang; never decides a result.
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// Builds an edge for a test: QUIC and every binding on loopback port 0, a 2 s drain grace,
/// its state in a fresh temporary directory.
pub struct EdgeBuilder {
    dir: TempDir,
    config: EdgeConfig,
}

impl EdgeBuilder {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a scratch directory");
        let mut config = EdgeConfig::new(dir.path().join("state"));
        config.listen = loopback();
        config.quic.socket_buffer = Some(1 << 20);
        config.timeouts.drain_grace_ms = 2_000;
        EdgeBuilder { dir, config }
    }

    /// The scratch directory (for files the config names).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A network `network` on `tunnel`, served by the proxy binding `binding`.
    pub fn network_binding(mut self, binding: &str, network: &str, tunnel: &str) -> Self {
        self.config.networks.push(NetworkConfig {
            name: network.into(),
            tunnel: tunnel.into(),
        });
        self.config
            .bindings
            .push(BindingConfig::network(binding, loopback(), network));
        self
    }

    /// A service.
    pub fn service(mut self, service: ServiceConfig) -> Self {
        self.config.services.push(service);
        self
    }

    /// A proxy binding `binding` of the service `service`.
    pub fn service_binding(mut self, binding: &str, service: &str) -> Self {
        self.config
            .bindings
            .push(BindingConfig::service(binding, loopback(), service));
        self
    }

    /// A plain TCP binding (`mode = "tcp"`) `binding` of the tcp service `service`.
    pub fn tcp_binding(mut self, binding: &str, service: &str) -> Self {
        let binding = BindingConfig::service(binding, loopback(), service);
        self.config
            .bindings
            .push(binding.with_mode(BindingMode::Tcp));
        self
    }

    /// Change anything else.
    pub fn with(mut self, change: impl FnOnce(&mut EdgeConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Start the edge. Keep the directory for as long as the edge runs.
    pub async fn start(self) -> (EdgeHandle, TempDir) {
        let edge = Edge::start(self.config).await.expect("the edge starts");
        (edge, self.dir)
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An HTTP service at 127.0.0.7 (ports by default) on `tunnel`.
pub fn http_service(name: &str, tunnel: &str) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        kind: ServiceKind::Http,
        tunnel: tunnel.into(),
        host: ServiceHost::ip("127.0.0.7".parse().expect("literal")),
        tcp_port: None,
        http_port: None,
        https_port: None,
        tls: ServiceTls::default(),
    }
}

/// A TCP service on `tunnel` at `host`, port `port`.
pub fn tcp_service(name: &str, tunnel: &str, host: ServiceHost, port: u16) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        kind: ServiceKind::Tcp,
        tunnel: tunnel.into(),
        host,
        tcp_port: Some(port),
        http_port: None,
        https_port: None,
        tls: ServiceTls::default(),
    }
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

/// Read a response body announced by `Content-Length`.
pub async fn read_length_body(stream: &mut TcpStream, head: &Head) -> Vec<u8> {
    let len: usize = head
        .header("content-length")
        .expect("Content-Length")
        .parse()
        .expect("a number");
    let mut body = head.rest.clone();
    tokio::time::timeout(HANG_GUARD, async {
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "connection closed inside the body");
            body.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("body in time");
    body
}
