//! `underpass-bench`: the whole-system benchmark harness of issue 6.
//!
//! - `run`: start the origins (iperf3, nginx, an echo server), Underpass (edge + connector) and
//!   rathole (TLS transport), measure the same work on the direct path and through both
//!   tunnels, and write every value as JSON;
//! - `echo`: the echo origin, run as its own process by `run`;
//! - `report`: tables, ratios and the targets from one or more `run` files.
//!
//! `scripts/bench` builds everything and runs it on two link settings.
#![forbid(unsafe_code)]

mod client;
mod echo;
mod procs;
mod report;
mod results;
mod setup;
mod workloads;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::results::{Collector, Environment, LinkResults, WorkloadSettings};
use crate::setup::Tools;
use crate::workloads::Settings;

/// Whole-system benchmark: direct, Underpass and rathole-tls side by side.
#[derive(Debug, Parser)]
#[command(name = "underpass-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure one link setting (everything on 127.0.0.1 of the current network namespace).
    Run(RunArgs),
    /// Serve echo on ADDR until killed.
    Echo {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Print the tables and targets of result files and write them as one JSON report.
    Report {
        /// Result files written by `run`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to write the JSON report.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Name of the link setting, recorded in the results (`loopback`, `netns-mtu1500`).
    #[arg(long)]
    link: String,
    /// Result file (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Runs per figure; each figure is their median. Default 3 (1 with --quick).
    #[arg(long)]
    runs: Option<u32>,
    /// Smoke check: 1 run, short durations, fewer connections and idle streams.
    #[arg(long)]
    quick: bool,
    /// Idle streams held open for the memory figures. Default 10000 (1000 with --quick).
    #[arg(long)]
    idle_streams: Option<usize>,
    /// The rathole 0.5.0 binary.
    #[arg(long, default_value = ".cache/bench/rathole/bin/rathole")]
    rathole: PathBuf,
    /// Folder of `underpass-edge` and `underpass`; default: this program's folder.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Working folder for configs and logs; default: next to --out, `work-LINK`.
    #[arg(long)]
    work: Option<PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Echo { listen } => echo::serve(listen),
        Command::Report { files, out } => report::report(&files, &out),
    }
}

fn run(args: RunArgs) -> Result<()> {
    let started = Instant::now();
    let harness = std::env::current_exe().context("locate this program")?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => harness
            .parent()
            .context("this program has no folder")?
            .to_path_buf(),
    };
    let tools = Tools {
        edge: existing(bin_dir.join("underpass-edge"))?,
        connector: existing(bin_dir.join("underpass"))?,
        harness,
        rathole: existing(absolute(&args.rathole)?)?,
        nginx: which("nginx")?,
    };
    for tool in ["iperf3", "wrk", "openssl", "setpriv", "getconf"] {
        which(tool)?;
    }

    let out_dir = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = match &args.work {
        Some(work) => work.clone(),
        None => out_dir.join(format!("work-{}", args.link)),
    };
    let work = absolute(&work)?;
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("clear {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;

    let mut notes = Vec::new();
    let nofile = open_files_limit();
    let idle_streams = args
        .idle_streams
        .unwrap_or(if args.quick { 1_000 } else { 10_000 });
    // Every process inherits this limit. Underpass holds one socket per idle stream in each
    // process; rathole's server holds two (the visitor and its data channel).
    let mut fit = |per_stream: u64| {
        let room = (nofile.saturating_sub(1_000) / per_stream) as usize;
        if idle_streams > room {
            notes.push(format!(
                "open-file limit {nofile} (hard limit of this machine): {room} idle streams \
                 instead of {idle_streams} ({per_stream} socket(s) per stream in one process)"
            ));
        }
        idle_streams.min(room)
    };
    let idle_streams_underpass = fit(1);
    let idle_streams_rathole = fit(2);
    let settings = Settings {
        runs: args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        iperf_seconds: if args.quick { 2 } else { 10 },
        wrk_seconds: if args.quick { 2 } else { 4 },
        connections: if args.quick { 500 } else { 2_000 },
        idle_streams_underpass,
        idle_streams_rathole,
        clock_ticks: procs::clock_ticks(),
    };
    let env = Environment {
        lo_mtu: lo_mtu(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        clock_ticks: settings.clock_ticks,
        nofile,
        workload: WorkloadSettings {
            iperf_seconds: settings.iperf_seconds,
            wrk_seconds: settings.wrk_seconds,
            connections: settings.connections,
            idle_streams_underpass: settings.idle_streams_underpass,
            idle_streams_rathole: settings.idle_streams_rathole,
        },
    };
    println!(
        "[{}] lo MTU {}, {} runs, iperf3 {} s, wrk {} s, {} connections, {}/{} idle streams \
         (Underpass/rathole); logs in {}",
        args.link,
        env.lo_mtu,
        settings.runs,
        settings.iperf_seconds,
        settings.wrk_seconds,
        settings.connections,
        idle_streams_underpass,
        idle_streams_rathole,
        work.display()
    );

    let mut collector = Collector::default();
    workloads::measure_link(
        &args.link,
        &settings,
        &tools,
        &work,
        &mut collector,
        &mut notes,
    )?;

    let results = LinkResults {
        link: args.link.clone(),
        runs: settings.runs,
        quick: args.quick,
        env,
        elapsed_s: started.elapsed().as_secs_f64(),
        metrics: collector.records(),
        notes,
    };
    fs::create_dir_all(out_dir)?;
    fs::write(&args.out, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("write {}", args.out.display()))?;
    print!("{}", report::render(std::slice::from_ref(&results)));
    println!(
        "[{}] done in {:.0} s; results in {}",
        args.link,
        results.elapsed_s,
        args.out.display()
    );
    Ok(())
}

fn existing(path: PathBuf) -> Result<PathBuf> {
    if !path.is_file() {
        bail!(
            "{} not found (scripts/bench builds and installs it)",
            path.display()
        );
    }
    Ok(path)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// The first `name` on PATH, then in the sbin folders (nginx lives in /usr/sbin on Debian).
fn which(name: &str) -> Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file());
    found.with_context(|| format!("`{name}` not found on PATH (scripts/bench installs it)"))
}

/// MTU of `lo` in this network namespace, asked of `ip` (sysfs still shows the host's
/// namespace after `unshare --net`); 0 when unknown.
fn lo_mtu() -> u32 {
    std::process::Command::new("ip")
        .args(["-o", "link", "show", "lo"])
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut words = text.split_whitespace();
            words.find(|w| *w == "mtu")?;
            words.next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// The soft limit of open files (`/proc/self/limits`), 1024 when unreadable.
fn open_files_limit() -> u64 {
    fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3))
                .and_then(|soft| soft.parse().ok())
        })
        .unwrap_or(1024)
}
