//! An in-process HTTP origin for the abort test: `/slow` reads the request and never answers,
//! `/gate` answers only once a `/slow` request has arrived. It records when the `/slow`
//! connection is closed by the other side.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest request head the origin reads.
const MAX_HEAD: usize = 64 * 1024;

/// What the origin has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlowState {
    /// The request line of the `/slow` request, once it arrived.
    pub slow_request: Option<String>,
    /// How the `/slow` connection ended (`"eof"` or an I/O error kind), once it did.
    pub slow_closed: Option<String>,
    /// How many `/gate` requests were answered.
    pub gates_answered: u32,
}

/// The running origin; stops accepting when dropped.
#[derive(Debug)]
pub struct SlowOrigin {
    addr: SocketAddr,
    state: watch::Receiver<SlowState>,
    task: JoinHandle<()>,
}

impl SlowOrigin {
    /// Starts the origin on `ip`, port 0.
    pub async fn start(ip: std::net::IpAddr) -> SlowOrigin {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .unwrap_or_else(|e| panic!("cannot bind the slow origin on {ip}: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("slow origin local address: {e}"));
        let (tx, state) = watch::channel(SlowState::default());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(serve(stream, tx));
            }
        });
        SlowOrigin { addr, state, task }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state now.
    pub fn state(&self) -> SlowState {
        self.state.borrow().clone()
    }

    /// Waits (at most `timeout`) until `pred` holds; returns the state either way.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&SlowState) -> bool,
    ) -> SlowState {
        let mut rx = self.state.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s))).await;
        match waited {
            Ok(Ok(state)) => state.clone(),
            _ => self.state(),
        }
    }
}

impl Drop for SlowOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, tx: watch::Sender<SlowState>) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let path = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    if path.ends_with("/slow") {
        tx.send_modify(|s| s.slow_request = Some(request_line));
        // Never answer: read until the other side goes away.
        let mut buf = [0u8; 4096];
        let end = loop {
            match stream.read(&mut buf).await {
                Ok(0) => break "eof".to_owned(),
                Ok(_) => continue,
                Err(e) => break format!("{:?}", e.kind()),
            }
        };
        tx.send_modify(|s| s.slow_closed = Some(end));
    } else if path.ends_with("/gate") {
        let mut rx = tx.subscribe();
        if rx.wait_for(|s| s.slow_request.is_some()).await.is_err() {
            return;
        }
        let reply = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\
                     Connection: close\r\n\r\nopen";
        if stream.write_all(reply.as_bytes()).await.is_ok() {
            tx.send_modify(|s| s.gates_answered += 1);
        }
        let _ = stream.shutdown().await;
    } else {
        let reply = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let _ = stream.write_all(reply.as_bytes()).await;
    }
}

/// Reads up to the end of the request head; `None` if the connection ends first.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return None;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}
