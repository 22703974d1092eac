//! Small blocking clients: the echo ping, `CONNECT` through a binding, a one-shot HTTP GET.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Guards every blocking client operation against a hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the echo server is sent and sends back.
pub const PING: &[u8; 5] = b"ping\n";

/// Connect with the client timeouts and `TCP_NODELAY` set.
pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Send the ping and read it back.
pub fn ping_stream(stream: &mut TcpStream) -> Result<()> {
    stream.write_all(PING)?;
    let mut echoed = [0u8; PING.len()];
    stream
        .read_exact(&mut echoed)
        .context("reading the echoed ping")?;
    if &echoed != PING {
        bail!("echo answered {echoed:?}");
    }
    Ok(())
}

/// One connection to an echo server (direct or through a TCP tunnel): connect, ping, close.
pub fn ping(addr: SocketAddr) -> Result<()> {
    let mut stream = connect(addr)?;
    ping_stream(&mut stream)
}

/// `CONNECT target` through an HTTP proxy binding; returns the stream once the proxy answered
/// `200`, ready to carry raw bytes.
pub fn connect_via_proxy(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream> {
    let mut stream = connect(proxy)?;
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    // The origin is an echo server: it sends nothing before the ping, so whatever arrives
    // now is the proxy's answer head alone.
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("proxy closed before answering CONNECT");
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            bail!("CONNECT answer head too long");
        }
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        let line = String::from_utf8_lossy(&head);
        bail!(
            "CONNECT answered {}",
            line.lines().next().unwrap_or_default()
        );
    }
    Ok(stream)
}

/// `CONNECT` to the echo server through a proxy binding, ping, close.
pub fn ping_via_connect(proxy: SocketAddr, echo: SocketAddr) -> Result<()> {
    let mut stream = connect_via_proxy(proxy, echo)?;
    ping_stream(&mut stream)
}

/// GET `path` on `addr` with `Connection: close`; returns the status code. With
/// `absolute_port`, `addr` is a forward proxy and the request line is absolute-form for
/// `http://127.0.0.1:PORT/path` (a `fetch()`).
pub fn http_get_status(addr: SocketAddr, absolute_port: Option<u16>, path: &str) -> Result<u16> {
    let mut stream = connect(addr)?;
    let (target, host) = match absolute_port {
        Some(port) => (
            format!("http://127.0.0.1:{port}{path}"),
            format!("127.0.0.1:{port}"),
        ),
        None => (path.to_owned(), addr.to_string()),
    };
    let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no HTTP status line from {addr}: {:?}", text.lines().next()))?;
    Ok(status)
}
