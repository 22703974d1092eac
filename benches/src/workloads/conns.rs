//! New connections: open, ping the echo server, close — one after the other.

use std::net::TcpStream;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::client::ping_stream;
use crate::results::quantile;

/// Rate and latency of sequential short connections.
#[derive(Debug, Clone)]
pub struct ConnResult {
    /// Connections per second over the whole sequence.
    pub rate: f64,
    /// Median connect + ping + close time, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// `count` times: `open` a connection (connect, and CONNECT through a proxy when needed),
/// ping, close.
pub fn sequential(count: usize, mut open: impl FnMut() -> Result<TcpStream>) -> Result<ConnResult> {
    let mut samples = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let t0 = Instant::now();
        let mut stream = open().with_context(|| format!("connection {i}"))?;
        ping_stream(&mut stream).with_context(|| format!("connection {i}"))?;
        drop(stream);
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let total = start.elapsed().as_secs_f64();
    Ok(ConnResult {
        rate: count as f64 / total,
        // NaN only when `count` is 0; the collector drops non-finite values.
        p50_ms: quantile(&mut samples, 0.50).unwrap_or(f64::NAN),
        p99_ms: quantile(&mut samples, 0.99).unwrap_or(f64::NAN),
    })
}
