//! TCP bulk transfer with iperf3, with the CPU time and peak memory of the tunnel's two
//! processes.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::procs::{cpu_ticks, run_captured, RssSampler, TunnelPids};

/// One bulk run.
#[derive(Debug, Clone)]
pub struct BulkResult {
    /// Received throughput, Gbit/s.
    pub gbps: f64,
    /// CPU seconds per GiB received, (server, client), when through a tunnel.
    pub cpu_per_gib: Option<(f64, f64)>,
    /// Peak RSS in KiB, (server, client), when through a tunnel.
    pub peak_rss_kib: Option<(u64, u64)>,
}

/// `iperf3 -c 127.0.0.1 -p PORT -t SECONDS -P STREAMS -J`, measuring `tunnel` meanwhile.
pub fn measure(
    port: u16,
    seconds: u32,
    streams: u32,
    tunnel: Option<TunnelPids>,
    clock_ticks: u64,
) -> Result<BulkResult> {
    let before = match tunnel {
        Some(t) => Some((cpu_ticks(t.server)?, cpu_ticks(t.client)?)),
        None => None,
    };
    let sampler = tunnel.map(|t| RssSampler::start(vec![t.server, t.client]));
    let output = run_captured(
        "iperf3",
        Command::new("iperf3").args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ]),
        Duration::from_secs(u64::from(seconds) + 30),
    );
    let peaks = sampler.map(RssSampler::finish);
    let (bits_per_second, bytes) = parse_iperf(&output?)?;
    let mut result = BulkResult {
        gbps: bits_per_second / 1e9,
        cpu_per_gib: None,
        peak_rss_kib: None,
    };
    if let (Some(t), Some((server0, client0))) = (tunnel, before) {
        let gib = bytes / f64::from(1u32 << 30);
        let per_gib = |ticks: u64| ticks as f64 / clock_ticks as f64 / gib;
        result.cpu_per_gib = Some((
            per_gib(cpu_ticks(t.server)?.saturating_sub(server0)),
            per_gib(cpu_ticks(t.client)?.saturating_sub(client0)),
        ));
        if let Some(peaks) = peaks {
            let peak = |pid| peaks.get(&pid).copied().unwrap_or(0);
            result.peak_rss_kib = Some((peak(t.server), peak(t.client)));
        }
    }
    Ok(result)
}

/// `end.sum_received`: (bits per second, bytes).
pub fn parse_iperf(json: &str) -> Result<(f64, f64)> {
    let value: Value = serde_json::from_str(json).context("iperf3 -J output is not JSON")?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        bail!("iperf3: {error}");
    }
    let sum = &value["end"]["sum_received"];
    let bps = sum["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second")?;
    let bytes = sum["bytes"].as_f64().context("no end.sum_received.bytes")?;
    if bytes <= 0.0 {
        bail!("iperf3 received nothing");
    }
    Ok((bps, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sum_received() {
        let json = r#"{"end":{"sum_received":{"bytes":1073741824,"bits_per_second":8.5e9}}}"#;
        assert_eq!(parse_iperf(json).unwrap(), (8.5e9, 1073741824.0));
        assert!(parse_iperf(r#"{"error":"unable to connect"}"#).is_err());
    }
}
