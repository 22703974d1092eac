//! What a run measures and how it is stored: the metric catalogue, the path names, and the JSON
//! document written by `run` and read by `report`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Client → origin, no tunnel: the physical limit.
pub const DIRECT: &str = "direct";
/// Through Underpass with a plain TCP binding (`mode = "tcp"`).
pub const UNDERPASS: &str = "underpass";
/// Through Underpass's HTTP proxy binding: `fetch()` for HTTP rows, `connect()` for new
/// connections.
pub const UNDERPASS_PROXY: &str = "underpass-proxy";
/// As [`UNDERPASS`], with the connector on the HTTP/2-over-TLS transport (`protocol = "http2"`).
pub const UNDERPASS_H2: &str = "underpass-h2";
/// As [`UNDERPASS_PROXY`], with the connector on the HTTP/2-over-TLS transport.
pub const UNDERPASS_PROXY_H2: &str = "underpass-proxy-h2";
/// Through rathole 0.5.0 with its TLS transport.
pub const RATHOLE: &str = "rathole-tls";

/// The columns of the table, in order.
pub const PATHS: [&str; 6] = [
    DIRECT,
    UNDERPASS,
    UNDERPASS_PROXY,
    UNDERPASS_H2,
    UNDERPASS_PROXY_H2,
    RATHOLE,
];

/// One measured quantity.
#[derive(Debug, Clone, Copy)]
pub struct MetricSpec {
    /// Stable key in the JSON.
    pub id: &'static str,
    /// Row label in the table.
    pub label: &'static str,
    /// Unit of the values.
    pub unit: &'static str,
}

const fn spec(id: &'static str, label: &'static str, unit: &'static str) -> MetricSpec {
    MetricSpec { id, label, unit }
}

/// Every metric, in table order. For the memory and CPU rows, the `underpass` and
/// `underpass-h2` columns hold the edge (server side) or the connector (client side) and the
/// `rathole-tls` column rathole's server or client.
pub const METRICS: &[MetricSpec] = &[
    spec("bulk1_gbps", "TCP bulk, 1 stream", "Gbit/s"),
    spec("bulk4_gbps", "TCP bulk, 4 streams", "Gbit/s"),
    spec("bulk1_cpu", "CPU per GiB, 1 stream (both ends)", "s/GiB"),
    spec("bulk4_cpu", "CPU per GiB, 4 streams (both ends)", "s/GiB"),
    spec("bulk1_cpu_server", "  of which edge | server", "s/GiB"),
    spec("bulk1_cpu_client", "  of which connector | client", "s/GiB"),
    spec("http32_rps", "HTTP c32 keep-alive", "req/s"),
    spec("http32_p50", "HTTP c32 p50", "ms"),
    spec("http32_p99", "HTTP c32 p99", "ms"),
    spec("http1_rps", "HTTP c1 keep-alive", "req/s"),
    spec("http1_p50", "HTTP c1 p50", "ms"),
    spec("http1_p99", "HTTP c1 p99", "ms"),
    spec("conn_rate", "New connections (sequential)", "conn/s"),
    spec("conn_p50", "New connection p50", "ms"),
    spec("conn_p99", "New connection p99", "ms"),
    spec("rss_idle_server", "RSS idle, edge | server", "MiB"),
    spec("rss_idle_client", "RSS idle, connector | client", "MiB"),
    spec("rss_peak_server", "RSS peak in bulk, edge | server", "MiB"),
    spec(
        "rss_peak_client",
        "RSS peak in bulk, connector | client",
        "MiB",
    ),
    spec(
        "rss_streams_server",
        "RSS with idle streams, edge | server",
        "MiB",
    ),
    spec(
        "rss_streams_client",
        "RSS with idle streams, connector | client",
        "MiB",
    ),
    spec("stream_kib_server", "Per idle stream, edge | server", "KiB"),
    spec(
        "stream_kib_client",
        "Per idle stream, connector | client",
        "KiB",
    ),
];

/// The catalogue entry of `id`.
pub fn metric_spec(id: &str) -> Option<&'static MetricSpec> {
    METRICS.iter().find(|spec| spec.id == id)
}

/// One link setting's results: the file `run` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkResults {
    /// The link setting's name (`loopback`, `netns-mtu1500`).
    pub link: String,
    /// Runs per figure (each figure is their median).
    pub runs: u32,
    /// Whether `--quick` shortened the workloads.
    pub quick: bool,
    /// Where and with what it ran.
    pub env: Environment,
    /// Wall-clock time of the whole `run`, seconds.
    pub elapsed_s: f64,
    /// Every metric with its raw values per path and their median.
    pub metrics: Vec<MetricRecord>,
    /// Remarks: reduced counts, failures of single measurements.
    pub notes: Vec<String>,
}

/// The environment of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Environment {
    /// MTU of `lo` in the namespace the harness ran in.
    pub lo_mtu: u32,
    /// Logical CPUs.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `getconf CLK_TCK`.
    pub clock_ticks: u64,
    /// Soft limit of open files of the harness.
    pub nofile: u64,
    /// Durations and counts used.
    pub workload: WorkloadSettings,
}

/// Durations and counts of the workloads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadSettings {
    /// iperf3 `-t`, seconds.
    pub iperf_seconds: u32,
    /// wrk `-d`, seconds.
    pub wrk_seconds: u32,
    /// Sequential connections per new-connection measurement.
    pub connections: usize,
    /// Idle streams held open through Underpass for the memory figure.
    pub idle_streams_underpass: usize,
    /// Idle streams held open through rathole for the memory figure.
    pub idle_streams_rathole: usize,
}

/// One metric's values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricRecord {
    /// Catalogue id.
    pub id: String,
    /// Row label.
    pub label: String,
    /// Unit.
    pub unit: String,
    /// Every run's value, per path.
    pub values: BTreeMap<String, Vec<f64>>,
    /// The median of `values`, per path.
    pub median: BTreeMap<String, f64>,
}

/// Collects values while a run goes on.
#[derive(Debug, Default)]
pub struct Collector {
    values: BTreeMap<&'static str, BTreeMap<&'static str, Vec<f64>>>,
}

impl Collector {
    /// Record one value of metric `id` on `path`.
    pub fn push(&mut self, id: &'static str, path: &'static str, value: f64) {
        debug_assert!(metric_spec(id).is_some(), "unknown metric {id}");
        if value.is_finite() {
            self.values
                .entry(id)
                .or_default()
                .entry(path)
                .or_default()
                .push(value);
        }
    }

    /// The records in catalogue order, with medians.
    pub fn records(&self) -> Vec<MetricRecord> {
        METRICS
            .iter()
            .filter_map(|spec| {
                let per_path = self.values.get(spec.id)?;
                let values: BTreeMap<String, Vec<f64>> = per_path
                    .iter()
                    .map(|(path, values)| ((*path).to_owned(), values.clone()))
                    .collect();
                let median = values
                    .iter()
                    .filter_map(|(path, values)| Some((path.clone(), median(values)?)))
                    .collect();
                Some(MetricRecord {
                    id: spec.id.to_owned(),
                    label: spec.label.to_owned(),
                    unit: spec.unit.to_owned(),
                    values,
                    median,
                })
            })
            .collect()
    }
}

/// The median (mean of the two middle values for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// The `q` quantile (0..=1) of `samples`, nearest rank; `None` when empty.
pub fn quantile(samples: &mut [f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    let rank = (q * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn quantile_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut samples, 0.5), Some(50.0));
        assert_eq!(quantile(&mut samples, 0.99), Some(99.0));
        assert_eq!(quantile(&mut samples, 1.0), Some(100.0));
    }

    #[test]
    fn every_metric_id_is_unique() {
        for (i, a) in METRICS.iter().enumerate() {
            assert!(METRICS[i + 1..].iter().all(|b| b.id != a.id), "{}", a.id);
        }
    }
}
