//! In-process TCP origins (echo, sink, source, reply-after-EOF) that record what happened on
//! each connection, so tests can assert "the origin saw EOF/reset".
//!
//! Each server runs on its own tokio runtime thread, so it works from sync tests and from any
//! flavour of async test, and keeps serving while the test thread blocks.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use crate::pattern;

/// What the server does with each connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Writes back every byte read; on EOF shuts down its write side (half-close propagates).
    Echo,
    /// Reads and discards until EOF, then closes.
    Sink,
    /// Reads until EOF, then writes `reply`, shuts down and closes (a request that is only
    /// answered once the client half-closed: `PING`, `writer.close()`, `+PONG`).
    ReplyAfterEof(Vec<u8>),
    /// Reads until EOF, then writes the lower-case hex SHA-256 of everything read, and closes.
    Sha256AfterEof,
    /// Writes the first `len` bytes of [`pattern`] then shuts down its write side, while
    /// reading (and discarding) until EOF.
    Source {
        /// How many bytes to send.
        len: u64,
    },
}

/// Something that happened on one accepted connection (`conn` counts from 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    /// A connection was accepted.
    Accepted {
        /// Connection number.
        conn: u64,
        /// The client's address.
        peer: SocketAddr,
    },
    /// A read returned end-of-file: the peer shut down its write side (FIN).
    Eof {
        /// Connection number.
        conn: u64,
        /// Bytes read before the EOF.
        bytes_read: u64,
    },
    /// A read or write failed (e.g. the peer reset the connection).
    Error {
        /// Connection number.
        conn: u64,
        /// The error kind (`ConnectionReset`, `BrokenPipe`, ...).
        kind: std::io::ErrorKind,
    },
    /// The server closed its socket.
    Closed {
        /// Connection number.
        conn: u64,
        /// Bytes read in total.
        bytes_read: u64,
        /// Bytes written in total.
        bytes_written: u64,
    },
}

impl ConnEvent {
    /// The connection number.
    pub fn conn(&self) -> u64 {
        match self {
            ConnEvent::Accepted { conn, .. }
            | ConnEvent::Eof { conn, .. }
            | ConnEvent::Error { conn, .. }
            | ConnEvent::Closed { conn, .. } => *conn,
        }
    }

    /// True for an EOF or an error: the origin learned that the peer went away.
    pub fn is_peer_gone(&self) -> bool {
        matches!(self, ConnEvent::Eof { .. } | ConnEvent::Error { .. })
    }
}

/// A [`ConnEvent`] with the time it was recorded.
#[derive(Debug, Clone)]
pub struct TimedEvent {
    /// When the event was recorded.
    pub at: Instant,
    /// What happened.
    pub event: ConnEvent,
}

#[derive(Debug, Default)]
struct Events {
    list: Mutex<Vec<TimedEvent>>,
    notify: Notify,
}

impl Events {
    fn lock(&self) -> MutexGuard<'_, Vec<TimedEvent>> {
        // A panic while holding the lock cannot leave the list inconsistent (push only).
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, event: ConnEvent) {
        self.lock().push(TimedEvent {
            at: Instant::now(),
            event,
        });
        self.notify.notify_waiters();
    }

    fn find(&self, pred: &impl Fn(&ConnEvent) -> bool) -> Option<TimedEvent> {
        self.lock().iter().find(|e| pred(&e.event)).cloned()
    }
}

/// An in-process TCP server on a loopback address; stops (and closes every connection) when
/// dropped.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    events: Arc<Events>,
    runtime: Option<Runtime>,
}

impl EchoServer {
    /// Starts an [`Behaviour::Echo`] server on `ip`, port 0.
    pub fn start(ip: IpAddr) -> Self {
        Self::start_with(ip, Behaviour::Echo)
    }

    /// Starts a server with `behaviour` on `ip`, port 0. It accepts once this returns.
    ///
    /// # Panics
    /// When the runtime cannot be built or `ip` cannot be bound.
    pub fn start_with(ip: IpAddr, behaviour: Behaviour) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("echo-server")
            .enable_all()
            .build()
            .expect("a tokio runtime for the echo server");
        // Bound here (std) so the port accepts once this returns; `block_on` is not allowed
        // when called from an async test.
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("echo server cannot bind {ip}: {e}"));
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        listener
            .set_nonblocking(true)
            .expect("a listener can be made non-blocking");
        let events = Arc::new(Events::default());
        let task_events = events.clone();
        runtime.spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(listener, behaviour, task_events).await,
                Err(e) => tracing::error!(error = %e, "echo server cannot register its listener"),
            }
        });
        EchoServer {
            addr,
            events,
            runtime: Some(runtime),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<TimedEvent> {
        self.events.lock().clone()
    }

    /// How many connections were accepted so far.
    pub fn accepted(&self) -> usize {
        self.events
            .lock()
            .iter()
            .filter(|e| matches!(e.event, ConnEvent::Accepted { .. }))
            .count()
    }

    /// Waits (async) for the first event matching `pred`, up to `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&ConnEvent) -> bool,
    ) -> Option<TimedEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.events.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so an event pushed in between is not missed.
            notified.as_mut().enable();
            if let Some(found) = self.events.find(&pred) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.events.find(&pred);
            }
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Allowed inside an async context, unlike dropping the runtime; the tasks (and
            // their sockets) are dropped by the runtime's threads.
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, behaviour: Behaviour, events: Arc<Events>) {
    let mut next = 0u64;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let conn = next;
        next += 1;
        events.push(ConnEvent::Accepted { conn, peer });
        tokio::spawn(serve(stream, conn, behaviour.clone(), events.clone()));
    }
}

#[derive(Default)]
struct Counts {
    read: u64,
    written: u64,
}

async fn serve(stream: TcpStream, conn: u64, behaviour: Behaviour, events: Arc<Events>) {
    let (mut reader, mut writer) = stream.into_split();
    let mut counts = Counts::default();
    let result = match behaviour {
        Behaviour::Echo => echo(&mut reader, &mut writer, conn, &events, &mut counts).await,
        Behaviour::Sink => read_to_eof(&mut reader, conn, &events, &mut counts, |_| ())
            .await
            .map(|_| ()),
        Behaviour::ReplyAfterEof(reply) => {
            reply_after_eof(&mut reader, &mut writer, conn, &events, &mut counts, |_| {
                reply.clone()
            })
            .await
        }
        Behaviour::Sha256AfterEof => {
            let mut hasher = Sha256::new();
            let result = read_to_eof(&mut reader, conn, &events, &mut counts, |chunk| {
                hasher.update(chunk)
            })
            .await;
            match result {
                Ok(()) => {
                    let digest = hex::encode(hasher.finalize());
                    write_and_shutdown(&mut writer, digest.as_bytes(), &mut counts).await
                }
                Err(e) => Err(e),
            }
        }
        Behaviour::Source { len } => {
            let mut read_counts = Counts::default();
            let (read, write) = tokio::join!(
                read_to_eof(&mut reader, conn, &events, &mut read_counts, |_| ()),
                source(&mut writer, len, &mut counts)
            );
            counts.read = read_counts.read;
            read.and(write)
        }
    };
    if let Err(e) = result {
        events.push(ConnEvent::Error {
            conn,
            kind: e.kind(),
        });
    }
    drop((reader, writer));
    events.push(ConnEvent::Closed {
        conn,
        bytes_read: counts.read,
        bytes_written: counts.written,
    });
}

async fn echo(
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    conn: u64,
    events: &Events,
    counts: &mut Counts,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            events.push(ConnEvent::Eof {
                conn,
                bytes_read: counts.read,
            });
            return writer.shutdown().await;
        }
        counts.read += n as u64;
        writer.write_all(&buf[..n]).await?;
        counts.written += n as u64;
    }
}

async fn read_to_eof(
    reader: &mut OwnedReadHalf,
    conn: u64,
    events: &Events,
    counts: &mut Counts,
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            events.push(ConnEvent::Eof {
                conn,
                bytes_read: counts.read,
            });
            return Ok(());
        }
        counts.read += n as u64;
        each(&buf[..n]);
    }
}

async fn reply_after_eof(
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    conn: u64,
    events: &Events,
    counts: &mut Counts,
    reply: impl FnOnce(u64) -> Vec<u8>,
) -> std::io::Result<()> {
    read_to_eof(reader, conn, events, counts, |_| ()).await?;
    let reply = reply(counts.read);
    write_and_shutdown(writer, &reply, counts).await
}

async fn write_and_shutdown(
    writer: &mut OwnedWriteHalf,
    bytes: &[u8],
    counts: &mut Counts,
) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    counts.written += bytes.len() as u64;
    writer.shutdown().await
}

async fn source(writer: &mut OwnedWriteHalf, len: u64, counts: &mut Counts) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    while counts.written < len {
        let n = (len - counts.written).min(buf.len() as u64) as usize;
        pattern::fill(counts.written, &mut buf[..n]);
        writer.write_all(&buf[..n]).await?;
        counts.written += n as u64;
    }
    writer.shutdown().await
}
