//! A deliberately small HTTP/1.1 client for tests: write raw request bytes, read the response
//! to the end of the connection, decode a chunked body. Raw bytes make it easy to send exactly
//! what a test needs (absolute-form targets, no `Host`, odd headers).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, ensure, Context};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (chunked encoding removed).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The error type of the `Proxy-Status` header (`underpass; error=dns_error; details=…`),
    /// if the header has one.
    pub fn proxy_error(&self) -> Option<&str> {
        proxy_error(self.header("proxy-status")?)
    }

    /// Asserts the proxy's own error answer: exactly `status` and a `Proxy-Status` header
    /// whose error type is `error`.
    ///
    /// # Panics
    /// When either differs (the message shows the whole response).
    #[track_caller]
    pub fn assert_proxy_error(&self, status: u16, error: &str) {
        assert_eq!(
            (self.status, self.proxy_error()),
            (status, Some(error)),
            "expected {status} with Proxy-Status error={error}, got {} {:?}\n{}",
            self.status,
            self.headers,
            self.text()
        );
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", self.text()))
    }
}

/// The `error=` parameter of a `Proxy-Status` header value.
pub fn proxy_error(header: &str) -> Option<&str> {
    header
        .split(';')
        .map(str::trim)
        .find_map(|param| param.strip_prefix("error="))
        .map(|v| v.trim_matches('"'))
}

/// Writes `request` on `stream` and reads the response until the server closes the
/// connection (send `Connection: close`).
pub async fn exchange<S>(mut stream: S, request: &[u8]) -> anyhow::Result<Response>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(request).await.context("write request")?;
    stream.flush().await?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .context("read response")?;
    parse_response(&raw)
}

/// `GET path` on a new plain connection to `addr` with `Host: host` and `Connection: close`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<Response> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    exchange(stream, request.as_bytes()).await
}

/// Opens a TLS connection to `addr` with SNI (and verified name) `server_name`.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let name = ServerName::try_from(server_name.to_owned()).context("server name")?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .with_context(|| format!("TLS handshake with {addr} as {server_name}"))
}

/// `GET path` over TLS to `addr`, SNI and `Host` both `host`.
pub async fn get_tls(
    addr: SocketAddr,
    host: &str,
    path: &str,
    config: Arc<ClientConfig>,
) -> anyhow::Result<Response> {
    let stream = tls_connect(addr, host, config).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    exchange(stream, request.as_bytes()).await
}

/// Parses a complete response (head and body up to the end of the connection).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(raw).context("parse response head")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => bail!(
            "incomplete response head ({} bytes): {:?}",
            raw.len(),
            String::from_utf8_lossy(raw)
        ),
    };
    let status = parsed.code.context("response without status")?;
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let rest = &raw[head_len..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
        let len: usize = len.trim().parse().context("content-length")?;
        ensure!(
            rest.len() >= len,
            "body shorter than content-length: {} < {len}",
            rest.len()
        );
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = std::str::from_utf8(&rest[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).context("chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        ensure!(rest.len() >= size + 2, "truncated chunk");
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_proxy_status_error_type() {
        let header = r#"underpass; error=dns_error; details="no such name; really""#;
        assert_eq!(proxy_error(header), Some("dns_error"));
        assert_eq!(proxy_error("underpass"), None);
    }

    #[test]
    fn parses_chunked_and_sized_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"abcde");
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nX-A: b\r\n\r\nno";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.header("x-a"), Some("b"));
        assert_eq!(response.text(), "no");
    }
}

/// The answer to a `CONNECT` sent through a binding listener.
#[derive(Debug)]
pub struct ConnectAnswer {
    /// The status code.
    pub status: u16,
    /// The response head as received, up to and including the blank line.
    pub head: String,
    /// The connection, positioned after the head: the tunnel when the status is 200.
    pub stream: TcpStream,
}

impl ConnectAnswer {
    /// The `error=` parameter of the `Proxy-Status` header, if any.
    pub fn proxy_error(&self) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("proxy-status")
                .then(|| proxy_error(value))
                .flatten()
        })
    }
}

/// Sends `CONNECT target` (with a matching `Host`) to `proxy` and reads the answer's head byte
/// by byte, so that no tunnel byte is consumed. Panics when the proxy closes before a whole
/// head or does not answer within `limit`.
pub async fn connect(proxy: SocketAddr, target: &str, limit: std::time::Duration) -> ConnectAnswer {
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    connect_with(proxy, target, &request, limit).await
}

/// [`connect`] with the whole request head given (`target` only names it in messages).
pub async fn connect_with(
    proxy: SocketAddr,
    target: &str,
    request: &str,
    limit: std::time::Duration,
) -> ConnectAnswer {
    let mut stream = TcpStream::connect(proxy)
        .await
        .unwrap_or_else(|e| panic!("connect to the binding at {proxy}: {e}"));
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send CONNECT");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(limit, stream.read(&mut byte))
            .await
            .unwrap_or_else(|_| panic!("no answer to CONNECT {target} within {limit:?}"))
            .unwrap_or_else(|e| panic!("read the answer to CONNECT {target}: {e}"));
        assert_eq!(
            n,
            1,
            "the binding closed before answering CONNECT {target}: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    ConnectAnswer {
        status,
        head,
        stream,
    }
}
