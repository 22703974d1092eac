//! A real Prometheus server (Debian's `prometheus` package) scraping loopback targets, its
//! HTTP query API, and `promtool check metrics`.
//!
//! `scripts/test` installs the package, which ships `/usr/bin/prometheus` and
//! `/usr/bin/promtool`; without them [`Prometheus::start`] and [`promtool_check_openmetrics`]
//! fail with a message saying so.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use tempfile::TempDir;

use crate::http1;
use crate::ports::free_port;
use crate::process::{find_program, read_lossy, ChildGuard, STARTUP_TIMEOUT};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One sample of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels (`__name__` included when the result keeps it).
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A running Prometheus; killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    addr: SocketAddr,
    // Field order: the process dies before its folder is removed.
    child: ChildGuard,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping `/metrics` of each `(job, target)`
    /// every `interval`, and waits until it is ready.
    ///
    /// # Panics
    /// When `prometheus` is not installed (run `scripts/test`, which installs it) or does not
    /// start (with its log).
    pub async fn start(targets: &[(&str, SocketAddr)], interval: Duration) -> Prometheus {
        let program = find_program("prometheus").unwrap_or_else(|e| {
            panic!(
                "{e:#}\nthe metrics tests need a real Prometheus: run scripts/test, which \
                 installs Debian's `prometheus` package (or `apt-get install prometheus`)"
            )
        });
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(&program, targets, interval).await {
                Ok(prometheus) => return prometheus,
                Err(log) if log.contains("address already in use") => last = log,
                Err(log) => panic!("prometheus did not start:\n{log}"),
            }
        }
        panic!("prometheus: the listen port was taken 5 times in a row\n{last}")
    }

    async fn try_start(
        program: &std::path::Path,
        targets: &[(&str, SocketAddr)],
        interval: Duration,
    ) -> Result<Prometheus, String> {
        let dir = tempfile::Builder::new()
            .prefix("underpass-prometheus-")
            .tempdir()
            .expect("create tempdir");
        let addr = SocketAddr::new(LOCALHOST, free_port(LOCALHOST));
        let ms = interval.as_millis();
        let mut config = format!(
            "global:\n  scrape_interval: {ms}ms\n  scrape_timeout: {ms}ms\n  evaluation_interval: {ms}ms\nscrape_configs:\n"
        );
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job:?}\n    metrics_path: /metrics\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, &config).expect("write prometheus.yml");
        let mut command = Command::new(program);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=info");
        let mut child =
            ChildGuard::spawn(command, "prometheus", dir.path()).map_err(|e| format!("{e:#}"))?;
        let stderr = dir.path().join("prometheus.stderr");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "exited with {status}\nconfig:\n{config}\n{}",
                    read_lossy(&stderr)
                ));
            }
            if let Ok(Ok(response)) = tokio::time::timeout(
                Duration::from_secs(2),
                http1::get(addr, "localhost", "/-/ready"),
            )
            .await
            {
                if response.status == 200 {
                    return Ok(Prometheus { addr, child, dir });
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready within {STARTUP_TIMEOUT:?}\nconfig:\n{config}\n{}",
                    child.output()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The web and API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The folder holding the config, the data and the log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// What Prometheus logged so far.
    pub fn output(&self) -> String {
        self.child.output()
    }

    async fn api(&self, path_and_query: &str) -> anyhow::Result<serde_json::Value> {
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            http1::get(self.addr, "localhost", path_and_query),
        )
        .await
        .context("the Prometheus API did not answer within 10 s")??;
        let json = response.json()?;
        ensure!(
            response.status == 200 && json["status"] == "success",
            "GET {path_and_query}: {} {json}",
            response.status
        );
        Ok(json["data"].clone())
    }

    /// Evaluates the PromQL `query` now (`/api/v1/query`); an instant vector's samples (a
    /// scalar comes back as one sample without labels).
    pub async fn query(&self, query: &str) -> anyhow::Result<Vec<Sample>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", percent_encode(query)))
            .await
            .with_context(|| format!("query {query}"))?;
        let value = |v: &serde_json::Value| -> anyhow::Result<f64> {
            v[1].as_str()
                .context("sample value is not a string")?
                .parse::<f64>()
                .context("sample value is not a number")
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .context("vector result is not an array")?
                .iter()
                .map(|series| {
                    let labels = series["metric"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                                .collect()
                        })
                        .unwrap_or_default();
                    Ok(Sample {
                        labels,
                        value: value(&series["value"])?,
                    })
                })
                .collect(),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: value(&data["result"])?,
            }]),
            other => bail!("query {query}: unexpected result type {other:?}: {data}"),
        }
    }

    /// The sum of the values `query` returns now (0 for an empty vector).
    pub async fn query_sum(&self, query: &str) -> anyhow::Result<f64> {
        Ok(self.query(query).await?.iter().map(|s| s.value).sum())
    }

    /// Every metric name Prometheus has stored (for failure messages).
    pub async fn metric_names(&self) -> anyhow::Result<Vec<String>> {
        let data = self.api("/api/v1/label/__name__/values").await?;
        Ok(data
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Waits until every configured target has been scraped successfully (health `up`).
    pub async fn wait_targets_up(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let data = self.api("/api/v1/targets?state=active").await?;
            let targets = data["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !targets.is_empty() && targets.iter().all(|t| t["health"] == "up") {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                bail!("the targets are not all up after {timeout:?}: {targets:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Re-evaluates `query` (summed, see [`Prometheus::query_sum`]) until `accept` takes the
    /// value or `timeout` passes; returns the last value either way, `Ok` only if accepted.
    /// Scrapes are periodic: this waits for one that has seen the traffic, it does not guess.
    pub async fn wait_sum(
        &self,
        query: &str,
        timeout: Duration,
        accept: impl Fn(f64) -> bool,
    ) -> Result<f64, f64> {
        let start = Instant::now();
        let mut last = f64::NAN;
        loop {
            if let Ok(value) = self.query_sum(query).await {
                last = value;
                if accept(value) {
                    return Ok(value);
                }
            }
            if start.elapsed() >= timeout {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Checks an OpenMetrics exposition (what the programs' `/metrics` serve, as
/// `application/openmetrics-text`) with Prometheus's own tools; `Ok` with what they said.
///
/// 1. `promtool check metrics`, the linter of the classic text format: a parse error fails,
///    and so does any lint finding but one. The classic format names a counter's HELP and
///    TYPE after its samples (`x_total`), OpenMetrics after the family (`x`, samples
///    `x_total`), so the linter reports each OpenMetrics counter as "x_total no help text";
///    that finding is accepted when the exposition has `# TYPE x counter` and `# HELP x`.
/// 2. `promtool tsdb create-blocks-from openmetrics`, Prometheus's strict OpenMetrics parser
///    (types, suffixes, the `# EOF` terminator), on the exposition with a timestamp added to
///    each sample (the importer needs one; OpenMetrics allows it).
///
/// # Panics
/// When `promtool` is not installed (run `scripts/test`).
pub fn promtool_check_openmetrics(exposition: &str) -> anyhow::Result<String> {
    let (status, lint) = promtool(&["check", "metrics"], Some(exposition))?;
    let mut report = format!("promtool check metrics ({status}):\n{lint}");
    if !status.success() {
        ensure!(
            status.code() == Some(3),
            "promtool check metrics could not parse the exposition ({status}):\n{lint}"
        );
        let findings: Vec<&str> = lint
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let unexplained: Vec<&str> = findings
            .iter()
            .copied()
            .filter(|finding| !is_openmetrics_counter_finding(finding, exposition))
            .collect();
        ensure!(
            unexplained.is_empty(),
            "promtool check metrics found problems ({status}):\n{}",
            unexplained.join("\n")
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("underpass-promtool-")
        .tempdir()
        .context("create tempdir")?;
    let input = dir.path().join("metrics.om");
    std::fs::write(&input, with_timestamps(exposition, 1_700_000_000)).context("write")?;
    let output = dir.path().join("blocks");
    let (status, import) = promtool(
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            &input.display().to_string(),
            &output.display().to_string(),
        ],
        None,
    )?;
    ensure!(
        status.success(),
        "Prometheus's OpenMetrics parser rejects the exposition ({status}):\n{import}"
    );
    report.push_str(&format!(
        "promtool tsdb create-blocks-from openmetrics:\n{import}"
    ));
    Ok(report)
}

/// "x_total no help text" for a family `x` the exposition declares a counter with help.
fn is_openmetrics_counter_finding(finding: &str, exposition: &str) -> bool {
    let Some(name) = finding.strip_suffix(" no help text") else {
        return false;
    };
    let Some(family) = name.strip_suffix("_total") else {
        return false;
    };
    let has = |line: String| exposition.lines().any(|l| l.starts_with(&line));
    has(format!("# TYPE {family} counter")) && has(format!("# HELP {family} "))
}

/// The exposition with ` SECONDS` appended to every sample line.
fn with_timestamps(exposition: &str, seconds: u64) -> String {
    let mut out = String::with_capacity(exposition.len() * 2);
    for line in exposition.lines() {
        out.push_str(line);
        if !line.starts_with('#') && !line.trim().is_empty() {
            out.push_str(&format!(" {seconds}"));
        }
        out.push('\n');
    }
    out
}

/// Runs promtool with `args` (and `stdin`); its exit status and stdout + stderr.
fn promtool(args: &[&str], stdin: Option<&str>) -> anyhow::Result<(ExitStatus, String)> {
    let program = find_program("promtool").unwrap_or_else(|e| {
        panic!(
            "{e:#}\n`promtool` comes with Debian's `prometheus` package: run scripts/test, \
             which installs it"
        )
    });
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn promtool")?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().context("promtool stdin")?;
        pipe.write_all(text.as_bytes())
            .context("write to promtool")?;
    }
    let output = child.wait_with_output().context("wait for promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status, text))
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters kept).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_openmetrics_counter_finding() {
        let text = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 1\n# EOF\n";
        assert!(is_openmetrics_counter_finding(
            "a_b_total no help text",
            text
        ));
        assert!(!is_openmetrics_counter_finding(
            "c_total no help text",
            text
        ));
        assert!(!is_openmetrics_counter_finding("a_b_total is bad", text));
        assert_eq!(
            with_timestamps(text, 7),
            "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 1 7\n# EOF\n"
        );
    }

    #[test]
    fn encodes_promql() {
        assert_eq!(
            percent_encode(r#"sum(x{a="b c"})"#),
            "sum%28x%7Ba%3D%22b%20c%22%7D%29"
        );
    }
}
