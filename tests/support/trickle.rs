//! An in-process HTTP origin whose response body trickles: the head and the first chunk at
//! once, the other chunks only after the test calls [`TrickleOrigin::release`], then one every
//! `pace`. The test decides *when* the rest of the body may flow (for instance once an edge
//! shutdown has begun); the pace is only the origin's manner and never what a test waits on.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest request head the origin reads.
const MAX_HEAD: usize = 64 * 1024;

/// The running origin; stops accepting when dropped.
#[derive(Debug)]
pub struct TrickleOrigin {
    addr: SocketAddr,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl TrickleOrigin {
    /// Starts the origin on `ip`, port 0: every request gets `200` with a `Content-Length` body
    /// of `chunks` chunks of `chunk_len` bytes (see [`TrickleOrigin::body`]), `pace` apart
    /// after the release.
    ///
    /// # Panics
    /// When `ip` cannot be bound.
    pub async fn start(ip: IpAddr, chunks: usize, chunk_len: usize, pace: Duration) -> Self {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap_or_else(|e| panic!("cannot bind the trickle origin on {ip}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("trickle origin local address: {e}"));
        let (release, released) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let released = released.clone();
                tokio::spawn(serve(stream, chunks, chunk_len, pace, released));
            }
        });
        TrickleOrigin {
            addr,
            release,
            task,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets the rest of every body (after its first chunk) flow.
    pub fn release(&self) {
        self.release.send_replace(true);
    }

    /// The body every request gets: chunk `i` is `chunk_len` times the letter `a + i % 26`.
    pub fn body(chunks: usize, chunk_len: usize) -> Vec<u8> {
        (0..chunks).flat_map(|i| chunk(i, chunk_len)).collect()
    }
}

impl Drop for TrickleOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn chunk(index: usize, len: usize) -> Vec<u8> {
    // The index modulo 26 fits a u8.
    vec![b'a' + (index % 26) as u8; len]
}

async fn serve(
    mut stream: TcpStream,
    chunks: usize,
    chunk_len: usize,
    pace: Duration,
    mut released: watch::Receiver<bool>,
) {
    if !read_head(&mut stream).await {
        return;
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        chunks * chunk_len
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for index in 0..chunks {
        if index == 1 && released.wait_for(|r| *r).await.is_err() {
            return;
        }
        if index > 1 {
            tokio::time::sleep(pace).await;
        }
        if stream.write_all(&chunk(index, chunk_len)).await.is_err() {
            return;
        }
    }
    let _ = stream.shutdown().await;
    // Keep the socket until the client is done, so the end of the body is not a reset.
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Reads up to the end of the request head; false if the connection ends first.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return false;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}
