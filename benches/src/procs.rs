//! Child processes and what `/proc` says about them: spawning with a log file, CPU ticks,
//! resident memory, listening sockets, free ports.
//!
//! Every child is started through `setpriv --pdeathsig KILL`, so it dies with the harness even
//! when the harness itself is killed; `Drop` kills it otherwise. Children are spawned from the
//! main thread only: the parent-death signal fires when the *thread* that forked exits.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often readiness and exit are polled.
pub const POLL: Duration = Duration::from_millis(20);

/// A running child process, killed on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Start `program args...` with `env`, stdout and stderr appended to `log_dir/NAME.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out.try_clone()?;
        let mut command = Command::new("setpriv");
        command
            .args(["--pdeathsig", "KILL", "--"])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {name} ({})", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id (setpriv execs the program, so it is the program's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The short name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails with the end of the log when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// Kill (SIGKILL) and reap.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file (empty when unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Run a command to completion with a deadline; returns its stdout. A non-zero exit is an
/// error carrying stderr.
pub fn run_captured(name: &str, command: &mut Command, timeout: Duration) -> Result<String> {
    let dir = std::env::temp_dir();
    let tag = format!(
        "underpass-bench-{}-{}",
        std::process::id(),
        name.replace('/', "_")
    );
    let out_path = dir.join(format!("{tag}.out"));
    let err_path = dir.join(format!("{tag}.err"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("start {name}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} did not finish within {timeout:?}");
        }
        thread::sleep(POLL);
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    if !status.success() {
        bail!(
            "{name} failed ({status}): {}{}",
            stderr.trim(),
            tail_of(&stdout)
        );
    }
    Ok(stdout)
}

fn tail_of(stdout: &str) -> String {
    let trimmed = stdout.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        let start = trimmed.len().saturating_sub(600);
        let start = (start..trimmed.len())
            .find(|i| trimmed.is_char_boundary(*i))
            .unwrap_or(0);
        format!("\nstdout: {}", &trimmed[start..])
    }
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 when it cannot be asked.
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of a process, all threads, in clock ticks (`/proc/PID/stat` fields 14, 15).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is at index N - 3.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Resident set size of a process in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Samples the RSS of some processes every 100 ms on a thread; [`RssSampler::finish`]
/// returns the peak of each.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<BTreeMap<u32, u64>>,
}

impl RssSampler {
    /// Start sampling `pids`.
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut peaks = BTreeMap::new();
            loop {
                for pid in &pids {
                    if let Ok(rss) = rss_kib(*pid) {
                        let peak = peaks.entry(*pid).or_insert(0);
                        *peak = rss.max(*peak);
                    }
                }
                if flag.load(Ordering::Relaxed) {
                    break peaks;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler { stop, handle }
    }

    /// Stop and return the peak RSS (KiB) of each pid.
    pub fn finish(self) -> BTreeMap<u32, u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// A free TCP port on 127.0.0.1 for a server, outside the ephemeral range (see [`free_port`]).
pub fn free_tcp_port() -> Result<u16> {
    free_port(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok())
}

/// A port on 127.0.0.1 for an edge, outside the ephemeral range, free on UDP (QUIC) and on TCP
/// (the edge's HTTP/2 listener takes the same port number by default).
pub fn free_udp_port() -> Result<u16> {
    free_port(|port| {
        UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
    })
}

/// A port that `bindable` could bind, not handed out before by this process, below the
/// kernel's ephemeral range: servers are restarted on their ports between phases, and a port
/// from the ephemeral range may meanwhile have become the source port of one of the
/// thousands of client connections a run opens (then the restart fails with EADDRINUSE).
fn free_port(bindable: impl Fn(u16) -> bool) -> Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let span = u64::from(high - low);
    // A random start, so parallel harnesses (or a rerun) rarely try the same ports first.
    let start = RandomState::new().build_hasher().finish() % span;
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for i in 0..span {
        // In range: `(start + i) % span` < `span` = `high - low`.
        let port = low + ((start + i) % span) as u16;
        if !given.contains(&port) && bindable(port) {
            given.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port between {low} and {high}")
}

/// Wait until a TCP socket listens on `port` (read from `/proc/net/tcp`, so nothing connects
/// to the server just to find out), checking that `proc` is still alive meanwhile.
pub fn wait_listening(proc: &mut Proc, port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if is_listening(port) {
            return Ok(());
        }
        proc.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "{} does not listen on port {port} after {timeout:?}",
                proc.name()
            );
        }
        thread::sleep(POLL);
    }
}

/// Whether some TCP socket of this network namespace listens on `port`.
pub fn is_listening(port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|file| {
        fs::read_to_string(file)
            .map(|text| {
                text.lines().skip(1).any(|line| {
                    let mut fields = line.split_whitespace();
                    let local = fields.nth(1).unwrap_or("");
                    let state = fields.nth(1).unwrap_or("");
                    state == "0A" && local.ends_with(&wanted)
                })
            })
            .unwrap_or(false)
    })
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let first = free_tcp_port().unwrap(); // a test machine has free ports
        let second = free_tcp_port().unwrap();
        assert_ne!(first, second);
        let ephemeral_low: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap() // Linux only, like the harness
            .split_whitespace()
            .next()
            .and_then(|low| low.parse().ok())
            .unwrap(); // the file starts with the low bound
        assert!(
            (10_000..ephemeral_low.max(10_001)).contains(&first),
            "{first}"
        );
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, first)).is_ok());
        assert!(!is_listening(first));
    }

    #[test]
    fn reads_own_cpu_and_memory() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(cpu_ticks(pid).is_ok());
        assert!(fd_count(pid) > 0);
    }
}

/// The two processes of a tunnel: the public end (edge, rathole server) and the private end
/// (connector, rathole client).
#[derive(Debug, Clone, Copy)]
pub struct TunnelPids {
    /// Edge or rathole server.
    pub server: u32,
    /// Connector or rathole client.
    pub client: u32,
}
