//! An in-process HTTP/1.1 origin whose bodies are [`pattern`] bytes, so a client can check
//! every byte it receives: `GET /pattern/LEN?chunk=C&pace_ms=P` answers `200` with
//! `Content-Length: LEN`, written `C` bytes at a time with `P` ms between writes (a body that
//! stays in flight long enough to be cut). Keep-alive is honoured; any other path is a `404`.
//!
//! It runs on its own tokio runtime thread, like [`crate::EchoServer`], and counts what it
//! served.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use crate::pattern;

/// Largest request head the origin reads.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    completed: AtomicU64,
    body_bytes: AtomicU64,
}

/// The running origin; stops (closing every connection) when dropped.
#[derive(Debug)]
pub struct PatternOrigin {
    addr: SocketAddr,
    counters: Arc<Counters>,
    runtime: Option<Runtime>,
}

impl PatternOrigin {
    /// Starts the origin on `ip`, port 0; it accepts once this returns.
    ///
    /// # Panics
    /// When the runtime cannot be built or `ip` cannot be bound.
    pub fn start(ip: IpAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pattern-origin")
            .enable_all()
            .build()
            .expect("a tokio runtime for the pattern origin");
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("pattern origin cannot bind {ip}: {e}"));
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        listener
            .set_nonblocking(true)
            .expect("a listener can be made non-blocking");
        let counters = Arc::new(Counters::default());
        let task_counters = counters.clone();
        runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                task_counters.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream, task_counters.clone()));
            }
        });
        PatternOrigin {
            addr,
            counters,
            runtime: Some(runtime),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The path that asks for `len` bytes, `chunk` bytes per write, `pace` apart.
    pub fn path(len: u64, chunk: usize, pace: Duration) -> String {
        format!("/pattern/{len}?chunk={chunk}&pace_ms={}", pace.as_millis())
    }

    /// Requests whose head was answered.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }

    /// Requests whose whole body was written.
    pub fn completed(&self) -> u64 {
        self.counters.completed.load(Ordering::Relaxed)
    }

    /// Body bytes written in total.
    pub fn body_bytes(&self) -> u64 {
        self.counters.body_bytes.load(Ordering::Relaxed)
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }
}

impl Drop for PatternOrigin {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What a request asked for.
struct Ask {
    len: u64,
    chunk: usize,
    pace: Duration,
    close: bool,
}

async fn serve(mut stream: TcpStream, counters: Arc<Counters>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let (ask, head_len) = match read_head(&mut stream, &mut buf).await {
            Some(Ok(found)) => found,
            Some(Err(status)) => {
                let reply =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
                return;
            }
            None => return,
        };
        buf.drain(..head_len);
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{}\r\n",
            ask.len,
            if ask.close { "Connection: close\r\n" } else { "" }
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let mut sent = 0u64;
        let mut chunk = vec![0u8; ask.chunk.max(1)];
        while sent < ask.len {
            if sent > 0 && !ask.pace.is_zero() {
                tokio::time::sleep(ask.pace).await;
            }
            let n = (ask.len - sent).min(chunk.len() as u64) as usize;
            pattern::fill(sent, &mut chunk[..n]);
            if stream.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            sent += n as u64;
            counters.body_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        counters.completed.fetch_add(1, Ordering::Relaxed);
        if ask.close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Reads one request head: `Some(Ok((ask, head length)))`, `Some(Err(status line))` for a
/// request this origin does not serve, `None` when the connection ended.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<Result<(Ask, usize), &'static str>> {
    let mut scratch = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let close = request.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("connection")
                        && String::from_utf8_lossy(h.value)
                            .to_ascii_lowercase()
                            .contains("close")
                });
                let ask = request
                    .path
                    .and_then(|path| parse_path(path, close))
                    .ok_or("404 Not Found");
                return Some(ask.map(|ask| (ask, head_len)));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return Some(Err("400 Bad Request")),
        }
        match stream.read(&mut scratch).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
        }
    }
}

/// `/pattern/LEN?chunk=C&pace_ms=P` (the path may be absolute-form: `http://host/pattern/…`).
fn parse_path(path: &str, close: bool) -> Option<Ask> {
    let start = path.find("/pattern/")?;
    let rest = &path[start + "/pattern/".len()..];
    let (len, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut ask = Ask {
        len: len.parse().ok()?,
        chunk: 16 * 1024,
        pace: Duration::ZERO,
        close,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=')?;
        match key {
            "chunk" => ask.chunk = value.parse().ok()?,
            "pace_ms" => ask.pace = Duration::from_millis(value.parse().ok()?),
            _ => return None,
        }
    }
    Some(ask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_pattern_path() {
        let ask = parse_path("/pattern/1000?chunk=10&pace_ms=5", false).unwrap();
        assert_eq!(
            (ask.len, ask.chunk, ask.pace),
            (1000, 10, Duration::from_millis(5))
        );
        let ask = parse_path("http://127.0.0.1:80/pattern/7", true).unwrap();
        assert_eq!((ask.len, ask.close), (7, true));
        assert!(parse_path("/other", false).is_none());
        assert!(parse_path("/pattern/x", false).is_none());
    }
}
