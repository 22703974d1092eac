//! Memory of the tunnel processes: idle, and with many idle streams held open through them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{IO_TIMEOUT, PING};
use crate::procs::TunnelPids;
use crate::procs::{fd_count, rss_kib, POLL};

/// How long memory may settle before it is read.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Connections being opened at once.
const OPEN_CONCURRENCY: usize = 64;

/// RSS (KiB) of both ends of a tunnel.
#[derive(Debug, Clone, Copy)]
pub struct PairRss {
    /// Edge or rathole server.
    pub server: u64,
    /// Connector or rathole client.
    pub client: u64,
}

/// Read both RSS values now.
pub fn pair_rss(pids: TunnelPids) -> Result<PairRss> {
    Ok(PairRss {
        server: rss_kib(pids.server)?,
        client: rss_kib(pids.client)?,
    })
}

/// The outcome of holding idle streams.
#[derive(Debug, Clone)]
pub struct StreamsResult {
    /// Streams opened and pinged (some may fail under fd or port limits).
    pub held: usize,
    /// RSS just before opening.
    pub before: PairRss,
    /// RSS with every stream open, settled.
    pub open: PairRss,
    /// Time to open them all, seconds.
    pub open_seconds: f64,
}

impl StreamsResult {
    /// KiB per stream above `before`, (server, client).
    pub fn per_stream_kib(&self) -> (f64, f64) {
        let held = self.held.max(1) as f64;
        (
            self.open.server.saturating_sub(self.before.server) as f64 / held,
            self.open.client.saturating_sub(self.before.client) as f64 / held,
        )
    }
}

/// Open `count` connections to `addr` (a TCP tunnel entrance to the echo server), ping each
/// once so the whole path exists, read the tunnel's RSS, then close them all and wait until
/// the server end has released them.
pub fn hold_idle_streams(
    addr: SocketAddr,
    count: usize,
    pids: TunnelPids,
) -> Result<StreamsResult> {
    let before = pair_rss(pids)?;
    let fds_before = fd_count(pids.server);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let start = Instant::now();
    let streams = runtime.block_on(open_all(addr, count))?;
    let open_seconds = start.elapsed().as_secs_f64();
    let held = streams.len();
    // A short settle so freshly allocated buffers are counted, not sampled mid-growth.
    thread::sleep(SETTLE);
    let open = pair_rss(pids)?;
    drop(streams);
    drop(runtime);
    // Wait (bounded) until the server end has closed what it held, so the next measurement
    // starts from a quiet tunnel.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fd_count(pids.server) > fds_before + 16 && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    Ok(StreamsResult {
        held,
        before,
        open,
        open_seconds,
    })
}

async fn open_all(addr: SocketAddr, count: usize) -> Result<Vec<TcpStream>> {
    let permits = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = permits.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let result = tokio::time::timeout(IO_TIMEOUT, open_one(addr)).await;
            drop(permit);
            match result {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("timed out")),
            }
        });
    }
    let mut streams = Vec::with_capacity(count);
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("open task")? {
            Ok(stream) => streams.push(stream),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if streams.is_empty() {
        if let Some(error) = first_error {
            return Err(error.context(format!("no idle stream could be opened to {addr}")));
        }
    } else if let Some(error) = first_error {
        eprintln!(
            "    {} of {count} idle streams failed, first: {error:#}",
            count - streams.len()
        );
    }
    Ok(streams)
}

async fn open_one(addr: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(PING).await?;
    let mut echoed = [0u8; PING.len()];
    stream.read_exact(&mut echoed).await?;
    anyhow::ensure!(&echoed == PING, "echo answered {echoed:?}");
    Ok(stream)
}
