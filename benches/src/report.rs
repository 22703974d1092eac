//! The report: one table per link setting (medians, ratios Underpass / rathole-tls and
//! Underpass / direct) and the targets of issue 6, each met or missed, printed and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::results::{
    LinkResults, MetricRecord, DIRECT, PATHS, RATHOLE, UNDERPASS, UNDERPASS_H2, UNDERPASS_PROXY,
    UNDERPASS_PROXY_H2,
};

/// How a target compares.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Rule {
    /// `path / against >= threshold`.
    RatioAtLeast,
    /// `path / against <= threshold`.
    RatioAtMost,
    /// `path`'s own value `<= threshold`.
    AtMost,
}

struct TargetSpec {
    metric: &'static str,
    path: &'static str,
    /// The denominator path of a ratio target (rathole-tls unless said otherwise).
    against: &'static str,
    rule: Rule,
    threshold: f64,
    text: &'static str,
}

const fn target(
    metric: &'static str,
    path: &'static str,
    rule: Rule,
    threshold: f64,
    text: &'static str,
) -> TargetSpec {
    TargetSpec {
        metric,
        path,
        against: RATHOLE,
        rule,
        threshold,
        text,
    }
}

/// A ratio target against another path of the same run than rathole-tls.
const fn target_vs(
    metric: &'static str,
    path: &'static str,
    against: &'static str,
    rule: Rule,
    threshold: f64,
    text: &'static str,
) -> TargetSpec {
    TargetSpec {
        against,
        ..target(metric, path, rule, threshold, text)
    }
}

/// The targets of issue 6, then those of the HTTP/2 transport (issue 13). Ratios are against
/// rathole-tls in the same run unless a target names another path; the proxy-binding lines
/// (`fetch()`, `connect()`) hold the same bar as the TCP binding.
const TARGETS: &[TargetSpec] = &[
    target(
        "bulk1_gbps",
        UNDERPASS,
        Rule::RatioAtLeast,
        1.0,
        "TCP bulk 1 stream ≥ 1.0×",
    ),
    target(
        "bulk4_gbps",
        UNDERPASS,
        Rule::RatioAtLeast,
        1.0,
        "TCP bulk 4 streams ≥ 1.0×",
    ),
    target(
        "bulk1_cpu",
        UNDERPASS,
        Rule::RatioAtMost,
        1.0,
        "CPU s/GiB, 1 stream ≤ 1.0×",
    ),
    target(
        "bulk4_cpu",
        UNDERPASS,
        Rule::RatioAtMost,
        1.0,
        "CPU s/GiB, 4 streams ≤ 1.0×",
    ),
    target(
        "http32_rps",
        UNDERPASS,
        Rule::RatioAtLeast,
        1.0,
        "HTTP c32 req/s ≥ 1.0× (TCP binding)",
    ),
    target(
        "http32_rps",
        UNDERPASS_PROXY,
        Rule::RatioAtLeast,
        1.0,
        "HTTP c32 req/s ≥ 1.0× (fetch())",
    ),
    target(
        "http32_p99",
        UNDERPASS,
        Rule::RatioAtMost,
        1.2,
        "HTTP c32 p99 ≤ 1.2× (TCP binding)",
    ),
    target(
        "http32_p99",
        UNDERPASS_PROXY,
        Rule::RatioAtMost,
        1.2,
        "HTTP c32 p99 ≤ 1.2× (fetch())",
    ),
    target(
        "http1_p50",
        UNDERPASS,
        Rule::RatioAtMost,
        1.2,
        "HTTP c1 p50 ≤ 1.2× (TCP binding)",
    ),
    target(
        "http1_p50",
        UNDERPASS_PROXY,
        Rule::RatioAtMost,
        1.2,
        "HTTP c1 p50 ≤ 1.2× (fetch())",
    ),
    target(
        "conn_rate",
        UNDERPASS,
        Rule::RatioAtLeast,
        3.0,
        "New connections ≥ 3.0× (TCP binding)",
    ),
    target(
        "conn_rate",
        UNDERPASS_PROXY,
        Rule::RatioAtLeast,
        3.0,
        "New connections ≥ 3.0× (connect())",
    ),
    target(
        "rss_idle_client",
        UNDERPASS,
        Rule::AtMost,
        12.0,
        "Connector idle RSS ≤ 12 MiB",
    ),
    target(
        "stream_kib_client",
        UNDERPASS,
        Rule::AtMost,
        20.0,
        "Idle stream ≤ 20 KiB, connector",
    ),
    target(
        "stream_kib_server",
        UNDERPASS,
        Rule::AtMost,
        20.0,
        "Idle stream ≤ 20 KiB, edge",
    ),
    target(
        "bulk1_gbps",
        UNDERPASS_H2,
        Rule::RatioAtLeast,
        1.0,
        "HTTP/2: TCP bulk 1 stream ≥ 1.0×",
    ),
    target(
        "bulk4_gbps",
        UNDERPASS_H2,
        Rule::RatioAtLeast,
        1.0,
        "HTTP/2: TCP bulk 4 streams ≥ 1.0×",
    ),
    target_vs(
        "bulk1_gbps",
        UNDERPASS_H2,
        UNDERPASS,
        Rule::RatioAtLeast,
        0.8,
        "HTTP/2: bulk 1 stream ≥ 0.8× QUIC",
    ),
    target_vs(
        "bulk4_gbps",
        UNDERPASS_H2,
        UNDERPASS,
        Rule::RatioAtLeast,
        0.8,
        "HTTP/2: bulk 4 streams ≥ 0.8× QUIC",
    ),
];

/// One row of a table.
#[derive(Debug, Serialize)]
struct Row {
    id: String,
    label: String,
    unit: String,
    median: BTreeMap<String, f64>,
    ratios: BTreeMap<String, f64>,
}

/// One target's verdict.
#[derive(Debug, Serialize)]
struct Verdict {
    target: String,
    metric: String,
    path: String,
    against: String,
    rule: Rule,
    threshold: f64,
    /// The compared figure: a ratio, or the value itself for absolute targets.
    figure: Option<f64>,
    /// `met`, `MISSED`, or `n/a` when a value is missing.
    status: String,
    detail: String,
}

/// The report of one link setting.
#[derive(Debug, Serialize)]
struct LinkReport {
    link: String,
    runs: u32,
    quick: bool,
    lo_mtu: u32,
    elapsed_s: f64,
    rows: Vec<Row>,
    targets: Vec<Verdict>,
    notes: Vec<String>,
}

/// The whole report file.
#[derive(Debug, Serialize)]
struct Report {
    inputs: Vec<PathBuf>,
    links: Vec<LinkReport>,
    met: usize,
    missed: usize,
    not_available: usize,
}

/// Read `files`, print the tables and verdicts, write the report JSON to `out`.
pub fn report(files: &[PathBuf], out: &Path) -> Result<()> {
    let mut links = Vec::new();
    for file in files {
        let text = fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        let results: LinkResults = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a benchmark result", file.display()))?;
        links.push(results);
    }
    let text = render(&links);
    print!("{text}");
    let report = build(files, &links);
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("write {}", out.display()))?;
    println!(
        "targets: {} met, {} missed, {} n/a; report written to {}",
        report.met,
        report.missed,
        report.not_available,
        out.display()
    );
    Ok(())
}

fn build(files: &[PathBuf], links: &[LinkResults]) -> Report {
    let links: Vec<LinkReport> = links
        .iter()
        .map(|link| LinkReport {
            link: link.link.clone(),
            runs: link.runs,
            quick: link.quick,
            lo_mtu: link.env.lo_mtu,
            elapsed_s: link.elapsed_s,
            rows: link.metrics.iter().map(row).collect(),
            targets: verdicts(link),
            notes: link.notes.clone(),
        })
        .collect();
    let count = |status: &str| {
        links
            .iter()
            .flat_map(|link| &link.targets)
            .filter(|v| v.status == status)
            .count()
    };
    Report {
        inputs: files.to_vec(),
        met: count("met"),
        missed: count("MISSED"),
        not_available: count("n/a"),
        links,
    }
}

fn ratio(record: &MetricRecord, numerator: &str, denominator: &str) -> Option<f64> {
    let n = *record.median.get(numerator)?;
    let d = *record.median.get(denominator)?;
    (d != 0.0).then_some(n / d)
}

fn row(record: &MetricRecord) -> Row {
    let mut ratios = BTreeMap::new();
    for (numerator, denominator) in [
        (UNDERPASS, RATHOLE),
        (UNDERPASS_PROXY, RATHOLE),
        (UNDERPASS_H2, RATHOLE),
        (UNDERPASS_PROXY_H2, RATHOLE),
        (UNDERPASS_H2, UNDERPASS),
        (UNDERPASS_PROXY_H2, UNDERPASS_PROXY),
        (UNDERPASS, DIRECT),
        (UNDERPASS_PROXY, DIRECT),
    ] {
        if let Some(value) = ratio(record, numerator, denominator) {
            ratios.insert(format!("{numerator}/{denominator}"), value);
        }
    }
    Row {
        id: record.id.clone(),
        label: record.label.clone(),
        unit: record.unit.clone(),
        median: record.median.clone(),
        ratios,
    }
}

fn verdicts(link: &LinkResults) -> Vec<Verdict> {
    TARGETS
        .iter()
        .map(|spec| {
            let record = link.metrics.iter().find(|m| m.id == spec.metric);
            let value = record.and_then(|r| r.median.get(spec.path).copied());
            let theirs = record.and_then(|r| r.median.get(spec.against).copied());
            let unit = record.map(|r| r.unit.as_str()).unwrap_or("");
            let (figure, detail) = match spec.rule {
                Rule::AtMost => (value, value.map(|v| format!("{} {unit}", num(v)))),
                Rule::RatioAtLeast | Rule::RatioAtMost => {
                    let figure = record.and_then(|r| ratio(r, spec.path, spec.against));
                    let detail = match (value, theirs) {
                        (Some(v), Some(t)) => {
                            Some(format!("{:.2}× ({} vs {} {unit})", v / t, num(v), num(t)))
                        }
                        _ => None,
                    };
                    (figure, detail)
                }
            };
            let met = figure.map(|f| match spec.rule {
                Rule::RatioAtLeast => f >= spec.threshold,
                Rule::RatioAtMost | Rule::AtMost => f <= spec.threshold,
            });
            Verdict {
                target: spec.text.to_owned(),
                metric: spec.metric.to_owned(),
                path: spec.path.to_owned(),
                against: spec.against.to_owned(),
                rule: spec.rule,
                threshold: spec.threshold,
                figure,
                status: match met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "n/a",
                }
                .to_owned(),
                detail: detail.unwrap_or_else(|| "no value".to_owned()),
            }
        })
        .collect()
}

/// The tables and verdicts as text.
pub fn render(links: &[LinkResults]) -> String {
    let mut out = String::new();
    for link in links {
        let _ = writeln!(
            out,
            "\n== {} (lo MTU {}, {} cores, kernel {}, median of {} run(s){}) ==",
            link.link,
            link.env.lo_mtu,
            link.env.cores,
            link.env.kernel,
            link.runs,
            if link.quick { ", QUICK" } else { "" }
        );
        let _ = writeln!(
            out,
            "{:<42} {:>6} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "metric",
            "unit",
            "direct",
            "underpass",
            "u-proxy",
            "u-h2",
            "up-h2",
            "rathole",
            "U/R",
            "Up/R",
            "H/R",
            "Hp/R",
            "H/U",
            "U/D"
        );
        for record in &link.metrics {
            let cell = |path: &str| {
                record
                    .median
                    .get(path)
                    .map(|v| num(*v))
                    .unwrap_or_else(|| "-".to_owned())
            };
            let times = |value: Option<f64>| {
                value
                    .map(|v| format!("{v:.2}×"))
                    .unwrap_or_else(|| "-".to_owned())
            };
            let _ = writeln!(
                out,
                "{:<42} {:>6} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
                record.label,
                record.unit,
                cell(PATHS[0]),
                cell(PATHS[1]),
                cell(PATHS[2]),
                cell(PATHS[3]),
                cell(PATHS[4]),
                cell(PATHS[5]),
                times(ratio(record, UNDERPASS, RATHOLE)),
                times(ratio(record, UNDERPASS_PROXY, RATHOLE)),
                times(ratio(record, UNDERPASS_H2, RATHOLE)),
                times(ratio(record, UNDERPASS_PROXY_H2, RATHOLE)),
                times(ratio(record, UNDERPASS_H2, UNDERPASS)),
                times(ratio(record, UNDERPASS, DIRECT)),
            );
        }
        let _ = writeln!(
            out,
            "underpass, u-proxy: the connector on its default transport (QUIC) or on \
             `--protocol`; u-h2, up-h2: on HTTP/2-over-TLS. u-proxy, up-h2: the HTTP proxy \
             binding, fetch() for HTTP rows, connect() for new connections. H/U: u-h2 / \
             underpass. Memory/CPU rows: underpass = edge | connector, rathole = server | \
             client. Idle streams: {} through Underpass, {} through rathole.",
            link.env.workload.idle_streams_underpass, link.env.workload.idle_streams_rathole
        );
        let _ = writeln!(out, "targets ({}):", link.link);
        for verdict in verdicts(link) {
            let _ = writeln!(
                out,
                "  {:<7} {:<40} {}",
                verdict.status, verdict.target, verdict.detail
            );
        }
        for note in &link.notes {
            let _ = writeln!(out, "  note: {note}");
        }
    }
    out
}

/// A number with as many decimals as its size deserves.
fn num(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1000.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else if abs >= 0.1 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Environment, WorkloadSettings};

    fn link(values: &[(&str, &str, f64)]) -> LinkResults {
        let mut collector = crate::results::Collector::default();
        for (id, path, value) in values {
            // The catalogue ids are 'static; leak-free lookup through the catalogue.
            let spec = crate::results::metric_spec(id).unwrap(); // test data names real ids
            let path = PATHS.iter().find(|p| **p == *path).unwrap(); // idem for paths
            collector.push(spec.id, path, *value);
        }
        LinkResults {
            link: "loopback".into(),
            runs: 1,
            quick: true,
            env: Environment {
                lo_mtu: 65536,
                cores: 2,
                kernel: "test".into(),
                clock_ticks: 100,
                nofile: 1024,
                workload: WorkloadSettings {
                    iperf_seconds: 1,
                    wrk_seconds: 1,
                    connections: 1,
                    idle_streams_underpass: 1,
                    idle_streams_rathole: 1,
                },
            },
            elapsed_s: 1.0,
            metrics: collector.records(),
            notes: vec![],
        }
    }

    #[test]
    fn ratio_targets_compare_against_rathole() {
        let link = link(&[
            ("bulk1_gbps", UNDERPASS, 5.0),
            ("bulk1_gbps", RATHOLE, 4.0),
            ("http32_p99", UNDERPASS, 3.0),
            ("http32_p99", RATHOLE, 2.0),
            ("rss_idle_client", UNDERPASS, 8.0),
        ]);
        let verdicts = verdicts(&link);
        let status = |metric: &str, path: &str| {
            verdicts
                .iter()
                .find(|v| v.metric == metric && v.path == path)
                .map(|v| v.status.clone())
                .unwrap() // every (metric, path) asked for is in TARGETS
        };
        assert_eq!(status("bulk1_gbps", UNDERPASS), "met");
        assert_eq!(status("http32_p99", UNDERPASS), "MISSED");
        assert_eq!(status("rss_idle_client", UNDERPASS), "met");
        assert_eq!(status("bulk4_gbps", UNDERPASS), "n/a");
        let text = render(&[link]);
        assert!(text.contains("1.25×"), "{text}");
    }

    #[test]
    fn http2_targets_compare_against_quic_and_rathole() {
        let link = link(&[
            ("bulk1_gbps", UNDERPASS, 10.0),
            ("bulk1_gbps", UNDERPASS_H2, 7.0),
            ("bulk1_gbps", RATHOLE, 5.0),
        ]);
        let verdicts = verdicts(&link);
        let of = |against: &str| {
            verdicts
                .iter()
                .find(|v| {
                    v.metric == "bulk1_gbps" && v.path == UNDERPASS_H2 && v.against == against
                })
                .unwrap() // both HTTP/2 bulk targets are in TARGETS
        };
        // 7 / 5 = 1.4× rathole: met; 7 / 10 = 0.7× QUIC: missed.
        assert_eq!(of(RATHOLE).status, "met");
        assert_eq!(of(UNDERPASS).status, "MISSED");
        assert_eq!(of(UNDERPASS).figure, Some(0.7));
        assert!(render(&[link]).contains("0.70×"));
    }
}
