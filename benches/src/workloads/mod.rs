//! One link setting, end to end: start the origins, measure memory on fresh tunnels, then run
//! every workload on every path, paths interleaved within each run.

pub mod bulk;
pub mod conns;
pub mod http;
pub mod memory;

use std::path::Path;
use std::thread;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::client;
use crate::procs::local;
use crate::procs::TunnelPids;
use crate::results::{
    Collector, DIRECT, RATHOLE, UNDERPASS, UNDERPASS_H2, UNDERPASS_PROXY, UNDERPASS_PROXY_H2,
};
use crate::setup::{Origins, Rathole, RatholeSetup, Tools, Underpass, UnderpassSetup, SMALL_FILE};

/// Durations and counts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Runs per figure.
    pub runs: u32,
    /// iperf3 duration, seconds.
    pub iperf_seconds: u32,
    /// wrk duration, seconds.
    pub wrk_seconds: u32,
    /// Sequential connections per new-connection figure.
    pub connections: usize,
    /// Idle streams held through Underpass.
    pub idle_streams_underpass: usize,
    /// Idle streams held through rathole.
    pub idle_streams_rathole: usize,
    /// `getconf CLK_TCK`.
    pub clock_ticks: u64,
}

/// Everything measured on one link setting.
pub fn measure_link(
    link: &str,
    settings: &Settings,
    tools: &Tools,
    work: &Path,
    collector: &mut Collector,
    notes: &mut Vec<String>,
) -> Result<()> {
    let say = |text: String| println!("[{link}] {text}");
    let origins = Origins::start(tools, work)?;
    say(format!(
        "origins: iperf3 :{}, nginx :{}, echo :{}",
        origins.iperf, origins.nginx, origins.echo
    ));
    // The connector's transport of the `underpass` columns: its default (auto, which lands on
    // QUIC here) unless the run asks for one (`scripts/bench --protocol P`). The `underpass-h2`
    // columns always run over HTTP/2-over-TLS.
    let protocol = std::env::var("UNDERPASS_BENCH_PROTOCOL")
        .ok()
        .filter(|p| !p.is_empty());
    let underpass_setup =
        UnderpassSetup::prepare(tools, work, &origins, "underpass", protocol.as_deref())?;
    let h2_setup = UnderpassSetup::prepare(tools, work, &origins, "underpass-h2", Some("http2"))?;
    let rathole_setup = RatholeSetup::prepare(work, &origins)?;

    // Memory first, on freshly started tunnels, so idle figures are not the leftovers of bulk
    // transfers; then both are restarted for the throughput workloads.
    {
        let underpass = underpass_setup.start(tools, &origins)?;
        let h2 = h2_setup.start(tools, &origins)?;
        let rathole = rathole_setup.start(tools)?;
        let up = underpass.pids();
        let h2 = h2.pids();
        let rh = TunnelPids {
            server: rathole.server.pid(),
            client: rathole.client.pid(),
        };
        thread::sleep(memory::SETTLE);
        for (path, pids) in [(UNDERPASS, up), (UNDERPASS_H2, h2), (RATHOLE, rh)] {
            let idle = memory::pair_rss(pids)?;
            collector.push("rss_idle_server", path, mib(idle.server));
            collector.push("rss_idle_client", path, mib(idle.client));
            say(format!(
                "idle RSS {path}: {:.1} MiB | {:.1} MiB",
                mib(idle.server),
                mib(idle.client)
            ));
        }
        for (path, addr, count, pids) in [
            (
                UNDERPASS,
                local(underpass_setup.ports.echo),
                settings.idle_streams_underpass,
                up,
            ),
            (
                UNDERPASS_H2,
                local(h2_setup.ports.echo),
                settings.idle_streams_underpass,
                h2,
            ),
            (
                RATHOLE,
                local(rathole_setup.ports.echo),
                settings.idle_streams_rathole,
                rh,
            ),
        ] {
            let held = memory::hold_idle_streams(addr, count, pids)?;
            if held.held < count {
                notes.push(format!(
                    "{path}: only {} of {count} idle streams opened",
                    held.held
                ));
            }
            let (server_kib, client_kib) = held.per_stream_kib();
            collector.push("rss_streams_server", path, mib(held.open.server));
            collector.push("rss_streams_client", path, mib(held.open.client));
            collector.push("stream_kib_server", path, server_kib);
            collector.push("stream_kib_client", path, client_kib);
            say(format!(
                "{} idle streams {path} (opened in {:.1} s): {:.1} | {:.1} MiB, \
                 {server_kib:.1} | {client_kib:.1} KiB per stream",
                held.held,
                held.open_seconds,
                mib(held.open.server),
                mib(held.open.client)
            ));
        }
    }

    let mut underpass = underpass_setup.start(tools, &origins)?;
    let mut h2 = h2_setup.start(tools, &origins)?;
    let mut rathole = rathole_setup.start(tools)?;
    let up = underpass.pids();
    let h2_pids = h2.pids();
    let rh = TunnelPids {
        server: rathole.server.pid(),
        client: rathole.client.pid(),
    };
    let fetch_script = work.join("fetch.lua");
    http::write_fetch_script(&fetch_script, origins.nginx, SMALL_FILE)?;
    let up_ports = underpass_setup.ports;
    let h2_ports = h2_setup.ports;
    let rh_ports = rathole_setup.ports;

    for run in 1..=settings.runs {
        let run_start = Instant::now();
        let tag = format!("run {run}/{}", settings.runs);

        // Peak RSS of each tunnel over both bulk workloads of this run.
        let mut peaks = Vec::new();
        for streams in [1u32, 4] {
            for (path, port, pids) in [
                (DIRECT, origins.iperf, None),
                (UNDERPASS, up_ports.iperf, Some(up)),
                (UNDERPASS_H2, h2_ports.iperf, Some(h2_pids)),
                (RATHOLE, rh_ports.iperf, Some(rh)),
            ] {
                let what = format!("{tag} bulk -P {streams} {path}");
                let result = bulk::measure(
                    port,
                    settings.iperf_seconds,
                    streams,
                    pids,
                    settings.clock_ticks,
                );
                let Some(result) = record_failure(&what, result, notes) else {
                    continue;
                };
                let (gbps_id, cpu_id) = if streams == 1 {
                    ("bulk1_gbps", "bulk1_cpu")
                } else {
                    ("bulk4_gbps", "bulk4_cpu")
                };
                collector.push(gbps_id, path, result.gbps);
                let mut line = format!("{what}: {:.2} Gbit/s", result.gbps);
                if let Some((server, client)) = result.cpu_per_gib {
                    collector.push(cpu_id, path, server + client);
                    if streams == 1 {
                        collector.push("bulk1_cpu_server", path, server);
                        collector.push("bulk1_cpu_client", path, client);
                    }
                    line.push_str(&format!(
                        ", CPU {:.2} s/GiB ({server:.2} + {client:.2})",
                        server + client
                    ));
                }
                if let Some(peak) = result.peak_rss_kib {
                    peaks.push((path, peak));
                }
                say(line);
            }
            alive(&mut [&mut underpass, &mut h2], &mut rathole)?;
        }
        for path in [UNDERPASS, UNDERPASS_H2, RATHOLE] {
            let (server, client) = peaks
                .iter()
                .filter(|(p, _)| *p == path)
                .fold((0, 0), |acc, (_, (s, c))| (acc.0.max(*s), acc.1.max(*c)));
            if server > 0 {
                collector.push("rss_peak_server", path, mib(server));
                collector.push("rss_peak_client", path, mib(client));
            }
        }

        for (connections, threads, ids) in [
            (32u32, 2u32, ["http32_rps", "http32_p50", "http32_p99"]),
            (1, 1, ["http1_rps", "http1_p50", "http1_p99"]),
        ] {
            for (path, port, script) in [
                (DIRECT, origins.nginx, None),
                (UNDERPASS, up_ports.nginx, None),
                (
                    UNDERPASS_PROXY,
                    up_ports.proxy,
                    Some(fetch_script.as_path()),
                ),
                (UNDERPASS_H2, h2_ports.nginx, None),
                (
                    UNDERPASS_PROXY_H2,
                    h2_ports.proxy,
                    Some(fetch_script.as_path()),
                ),
                (RATHOLE, rh_ports.nginx, None),
            ] {
                let what = format!("{tag} wrk -c {connections} {path}");
                let url = match script {
                    Some(_) => format!("http://127.0.0.1:{port}/"),
                    None => format!("http://127.0.0.1:{port}{SMALL_FILE}"),
                };
                let result = http::wrk(&url, connections, threads, settings.wrk_seconds, script)
                    .and_then(|result| match result.problem() {
                        None => Ok(result),
                        Some(problem) => bail!("figures discarded: {problem}"),
                    });
                let Some(result) = record_failure(&what, result, notes) else {
                    continue;
                };
                collector.push(ids[0], path, result.rps);
                collector.push(ids[1], path, result.p50_ms);
                collector.push(ids[2], path, result.p99_ms);
                say(format!(
                    "{what}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms",
                    result.rps, result.p50_ms, result.p99_ms
                ));
            }
            alive(&mut [&mut underpass, &mut h2], &mut rathole)?;
        }

        let echo = local(origins.echo);
        // `Some(proxy)`: connect() through that proxy binding to the echo origin; `None`: a
        // plain connection to `port`.
        for (path, port, proxy) in [
            (DIRECT, origins.echo, None),
            (UNDERPASS, up_ports.echo, None),
            (UNDERPASS_PROXY, 0, Some(up_ports.proxy)),
            (UNDERPASS_H2, h2_ports.echo, None),
            (UNDERPASS_PROXY_H2, 0, Some(h2_ports.proxy)),
            (RATHOLE, rh_ports.echo, None),
        ] {
            let what = format!("{tag} new connections {path}");
            let count = settings.connections;
            let result = match proxy {
                Some(proxy) => {
                    conns::sequential(count, || client::connect_via_proxy(local(proxy), echo))
                }
                None => conns::sequential(count, || client::connect(local(port))),
            };
            let Some(result) = record_failure(&what, result, notes) else {
                continue;
            };
            collector.push("conn_rate", path, result.rate);
            collector.push("conn_p50", path, result.p50_ms);
            collector.push("conn_p99", path, result.p99_ms);
            say(format!(
                "{what}: {:.0} conn/s, p50 {:.3} ms, p99 {:.3} ms",
                result.rate, result.p50_ms, result.p99_ms
            ));
        }
        alive(&mut [&mut underpass, &mut h2], &mut rathole)?;
        say(format!(
            "{tag} done in {:.0} s",
            run_start.elapsed().as_secs_f64()
        ));
    }
    drop(origins);
    Ok(())
}

/// Keep a failed measurement from ending the benchmark: note it and go on.
fn record_failure<T>(what: &str, result: Result<T>, notes: &mut Vec<String>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            eprintln!("{what}: FAILED: {error:#}");
            notes.push(format!("{what} failed: {error:#}"));
            None
        }
    }
}

/// Fail when a tunnel process died: every later figure would be meaningless.
fn alive(underpass: &mut [&mut Underpass], rathole: &mut Rathole) -> Result<()> {
    let procs = underpass
        .iter_mut()
        .flat_map(|u| [&mut u.edge, &mut u.connector])
        .chain([&mut rathole.server, &mut rathole.client]);
    for proc in procs {
        if let Err(error) = proc.check_alive() {
            bail!("a tunnel process died: {error:#}");
        }
    }
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
