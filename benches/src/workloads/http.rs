//! HTTP keep-alive requests with wrk: req/s and the latency distribution.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs::run_captured;

/// What one wrk run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// Socket errors of every kind (connect, read, write, timeout).
    pub socket_errors: u64,
}

impl WrkResult {
    /// Why the figures cannot be trusted: any error answer, or socket errors beyond one per
    /// thousand requests (a few may happen as connections close at the end of the run).
    pub fn problem(&self) -> Option<String> {
        if self.non_2xx > 0 || self.socket_errors * 1000 > self.requests {
            Some(format!(
                "{} requests, {} non-2xx/3xx answers, {} socket errors",
                self.requests, self.non_2xx, self.socket_errors
            ))
        } else {
            None
        }
    }
}

/// `wrk --latency -d SECONDS -t THREADS -c CONNECTIONS [-s SCRIPT] URL`.
pub fn wrk(
    url: &str,
    connections: u32,
    threads: u32,
    seconds: u32,
    script: Option<&Path>,
) -> Result<WrkResult> {
    let mut command = Command::new("wrk");
    command.args([
        "--latency",
        "-d",
        &format!("{seconds}s"),
        "-t",
        &threads.to_string(),
        "-c",
        &connections.to_string(),
        "--timeout",
        "5s",
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    command.arg(url);
    let output = run_captured(
        "wrk",
        &mut command,
        Duration::from_secs(u64::from(seconds) + 30),
    )?;
    parse_wrk(&output).with_context(|| format!("wrk output for {url}:\n{output}"))
}

/// Parse wrk's text report.
pub fn parse_wrk(output: &str) -> Result<WrkResult> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = 0;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    for line in output.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            rps = value.trim().parse::<f64>().ok();
        } else if let Some(value) = line.strip_prefix("50%") {
            p50 = Some(duration_ms(value.trim())?);
        } else if let Some(value) = line.strip_prefix("99%") {
            p99 = Some(duration_ms(value.trim())?);
        } else if let Some(value) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = value.trim().parse().unwrap_or(u64::MAX);
        } else if let Some(value) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 0"
            socket_errors = value
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            requests = count.trim().parse().unwrap_or(0);
        }
    }
    match (rps, p50, p99) {
        (Some(rps), Some(p50_ms), Some(p99_ms)) => Ok(WrkResult {
            rps,
            p50_ms,
            p99_ms,
            requests,
            non_2xx,
            socket_errors,
        }),
        _ => bail!("no Requests/sec or latency distribution in wrk's output"),
    }
}

/// `123.45us`, `1.20ms`, `2.00s`, `1.50m` in milliseconds.
fn duration_ms(text: &str) -> Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("bad number in {text:?}"))?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => bail!("unknown unit in {text:?}"),
    };
    Ok(number * factor)
}

/// The wrk script that turns every request into a `fetch()`: an absolute-form request line
/// for the origin, sent to the proxy binding.
pub fn write_fetch_script(path: &Path, origin_port: u16, file: &str) -> Result<()> {
    std::fs::write(
        path,
        format!(
            "wrk.path = \"http://127.0.0.1:{origin_port}{file}\"\n\
             wrk.headers[\"Host\"] = \"127.0.0.1:{origin_port}\"\n"
        ),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 4s test @ http://127.0.0.1:8080/small.html
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    52.95us   20.64us   1.36ms   96.30%
    Req/Sec    18.77k     1.20k   20.28k    80.49%
  Latency Distribution
     50%   50.00us
     75%   53.00us
     90%   58.00us
     99%    1.02ms
  76958 requests in 4.10s, 62.16MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  18770.33
Transfer/sec:     15.16MB
";

    #[test]
    fn parses_rate_and_percentiles() {
        let result = parse_wrk(SAMPLE).unwrap();
        assert_eq!(result.rps, 18770.33);
        assert!((result.p50_ms - 0.05).abs() < 1e-9);
        assert!((result.p99_ms - 1.02).abs() < 1e-9);
        assert_eq!(result.requests, 76958);
        assert_eq!(result.non_2xx, 12);
        assert!(result.problem().is_some());
        let errors = "Socket errors: connect 0, read 3, write 1, timeout 0\n";
        let result =
            parse_wrk(&SAMPLE.replace("  Non-2xx or 3xx responses: 12\n", errors)).unwrap();
        assert_eq!((result.non_2xx, result.socket_errors), (0, 4));
        assert_eq!(result.problem(), None);
    }

    #[test]
    fn units() {
        assert_eq!(duration_ms("2.00s").unwrap(), 2000.0);
        assert!(duration_ms("3.0xs").is_err());
        assert!(parse_wrk("unable to connect").is_err());
    }
}
