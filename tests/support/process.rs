//! Child processes that die with their owner, and readiness polling with deadlines.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a builder waits for its server to become ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Finds `name` on `PATH`, then in `/usr/sbin`, `/sbin`, `/usr/local/sbin` (where Debian puts
/// nginx and dnsmasq, often missing from a non-root `PATH`).
pub fn find_program(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("`{name}` not found on PATH or in /usr/sbin; run the tests with scripts/test, which installs it")
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so no test leaves a
/// server or a zombie behind. Its stdout and stderr go to files.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    name: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ChildGuard {
    /// Spawns `command` with stdin closed and stdout/stderr written to `<log_dir>/<name>.stdout`
    /// and `<log_dir>/<name>.stderr`.
    pub fn spawn(mut command: Command, name: &str, log_dir: &Path) -> anyhow::Result<Self> {
        let stdout = log_dir.join(format!("{name}.stdout"));
        let stderr = log_dir.join(format!("{name}.stderr"));
        let out = File::create(&stdout).with_context(|| format!("create {}", stdout.display()))?;
        let err = File::create(&stderr).with_context(|| format!("create {}", stderr.display()))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command
            .spawn()
            .with_context(|| format!("spawn {name}: {command:?}"))?;
        Ok(ChildGuard {
            child,
            name: name.to_owned(),
            stdout,
            stderr,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Everything the process wrote to stdout and stderr so far (lossy UTF-8).
    pub fn output(&self) -> String {
        let out = read_lossy(&self.stdout);
        let err = read_lossy(&self.stderr);
        format!(
            "--- {} stdout ---\n{out}--- {} stderr ---\n{err}",
            self.name, self.name
        )
    }

    /// Kills the process (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // An error here means the process exited in between: reaping below still works.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a file as lossy UTF-8; a missing file reads as empty.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// What a readiness probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The server is ready.
    Ready,
    /// Not yet ready: keep polling.
    NotYet,
    /// The server failed because its address was taken: the builder may retry elsewhere.
    AddrInUse,
    /// The server failed for another reason (with a description).
    Failed(String),
}

/// Polls `probe` until it returns anything but [`Probe::NotYet`] or `timeout` passes (then
/// returns an error naming `what`). The pause between polls grows from 5 ms to 50 ms: this is
/// polling for a condition, not a sleep standing in for synchronisation. It blocks the calling
/// thread: async code uses [`poll_until_async`], or runs this on a blocking thread (the
/// builders' `start` do).
pub fn poll_until(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Probe,
) -> anyhow::Result<Probe> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match probe() {
            Probe::NotYet => {}
            other => return Ok(other),
        }
        if Instant::now() >= deadline {
            bail!("{what}: not ready after {timeout:?}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// [`poll_until`] for async code: the pause between polls is a tokio sleep, so the runtime's
/// thread is free meanwhile. `probe` must not block (read a file, `try_wait` a child).
pub async fn poll_until_async(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Probe,
) -> anyhow::Result<Probe> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match probe() {
            Probe::NotYet => {}
            other => return Ok(other),
        }
        if Instant::now() >= deadline {
            bail!("{what}: not ready after {timeout:?}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// True when a TCP connection to `addr` succeeds (within 500 ms).
pub fn tcp_accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Probe helper for a server process: [`Probe::AddrInUse`] or [`Probe::Failed`] when the
/// process exited (decided by `log` containing "Address already in use"), else `ready()`.
pub fn probe_child(
    child: &mut ChildGuard,
    log: impl Fn() -> String,
    ready: impl FnOnce() -> bool,
) -> Probe {
    match child.try_wait() {
        Ok(Some(status)) => {
            let log = log();
            if log.contains("Address already in use") {
                Probe::AddrInUse
            } else {
                Probe::Failed(format!("exited with {status}\n{log}"))
            }
        }
        Ok(None) => {
            if log().contains("Address already in use") {
                // nginx retries bind() for a few seconds before giving up: do not wait for it.
                Probe::AddrInUse
            } else if ready() {
                Probe::Ready
            } else {
                Probe::NotYet
            }
        }
        Err(e) => Probe::Failed(format!("cannot check the process: {e}")),
    }
}

/// Sends `signal` to process `pid` (`who` names it in the panic message).
pub fn signal(pid: u32, signal: nix::sys::signal::Signal, who: &str) {
    let pid = i32::try_from(pid).expect("a pid fits in i32");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .unwrap_or_else(|e| panic!("send {signal} to {who}: {e}"));
}

/// Polls `log` (a process's log so far) every 20 ms until `done` holds for it, and returns it.
/// Panics after `limit` with `what` (the awaited event) and the log.
pub async fn wait_log(
    what: &str,
    limit: Duration,
    log: impl Fn() -> String,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let text = log();
        if done(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never showed {what} within {limit:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
