//! The real `underpass` connector binary as a child process, for what only processes show:
//! SIGKILL, SIGTERM and exit status, replicas, restarts, the admin listener.
//!
//! A [`ConnectorSpec`] is the configuration (token, routes, `connections`, extra TOML); each
//! [`ConnectorSpec::start`] writes it to a fresh folder (`connector.toml`, the token in a 0600
//! file unless [`ConnectorSpec::token_in_env`]) and starts a new process from it, so "start A
//! again" is `spec_a.start()` once more. The admin listener is always configured, on a free
//! loopback port: readiness is `GET /healthz` answering, never a sleep.
//!
//! The binary is built on first use, like the edge's ([`crate::edge_process::edge_binary`]).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;
use underpass_proto::TunnelToken;

use crate::admin;
use crate::edge_process::build_binary;
use crate::ports::free_port;
use crate::process::{read_lossy, ChildGuard, STARTUP_TIMEOUT};

/// How often the `/ready` and exit polls look.
const POLL: Duration = Duration::from_millis(20);

/// The `underpass` binary of this build, built (once per test process) if needed.
///
/// # Panics
/// When cargo cannot build it.
pub fn connector_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            build_binary("underpass-connector", "underpass").map_err(|e| format!("{e:#}"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("cannot build the connector (underpass): {e}"))
}

/// How the process gets its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenSource {
    /// `token_file` in the config, a 0600 file.
    File,
    /// The `UNDERPASS_TOKEN` environment variable.
    Env,
}

/// What a connector process runs with; cheap to clone, startable any number of times.
#[derive(Debug, Clone)]
pub struct ConnectorSpec {
    name: String,
    token: String,
    token_source: TokenSource,
    routes: Vec<(String, Option<String>)>,
    connections: Option<u32>,
    edge_addresses: Option<Vec<String>>,
    sections: Vec<String>,
    log_filter: String,
}

impl ConnectorSpec {
    /// A connector named `name` (the prefix of its folder and log file) on `token`: no
    /// routes yet, `connections` left at the binary's default.
    pub fn new(name: &str, token: &TunnelToken) -> Self {
        ConnectorSpec {
            name: name.to_owned(),
            token: token.encode(),
            token_source: TokenSource::File,
            routes: Vec::new(),
            connections: None,
            edge_addresses: None,
            sections: Vec::new(),
            log_filter: "info".to_owned(),
        }
    }

    /// A `[[route]]`: `destination` (CIDR, IP, hostname) on `ports` (every port if `None`).
    pub fn route(mut self, destination: &str, ports: Option<&str>) -> Self {
        self.routes
            .push((destination.to_owned(), ports.map(str::to_owned)));
        self
    }

    /// The top-level `connections` key.
    pub fn connections(mut self, connections: u32) -> Self {
        self.connections = Some(connections);
        self
    }

    /// `[edge] addresses`, instead of the token's.
    pub fn edge_addresses(mut self, addresses: &[&str]) -> Self {
        self.edge_addresses = Some(addresses.iter().map(|a| (*a).to_owned()).collect());
        self
    }

    /// Pass the token in `UNDERPASS_TOKEN` instead of a token file.
    pub fn token_in_env(mut self) -> Self {
        self.token_source = TokenSource::Env;
        self
    }

    /// Raw TOML appended after the tables this writes (`[timeouts]`, `[reconnect]`, `[quic]`…;
    /// not `[admin]`, `[edge]` or `[[route]]`, which this writes itself).
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.to_owned());
        self
    }

    /// The `RUST_LOG` filter (default `info`).
    pub fn log_filter(mut self, filter: &str) -> Self {
        self.log_filter = filter.to_owned();
        self
    }

    /// The config file's text with the admin listener on `admin`.
    fn config_text(&self, token_file: Option<&Path>, admin: SocketAddr) -> String {
        let mut text = String::new();
        if let Some(path) = token_file {
            text.push_str(&format!("token_file = {:?}\n", path.display().to_string()));
        }
        if let Some(connections) = self.connections {
            text.push_str(&format!("connections = {connections}\n"));
        }
        for (destination, ports) in &self.routes {
            text.push_str(&format!("\n[[route]]\ndestination = {destination:?}\n"));
            if let Some(ports) = ports {
                text.push_str(&format!("ports = {ports:?}\n"));
            }
        }
        if let Some(addresses) = &self.edge_addresses {
            text.push_str(&format!("\n[edge]\naddresses = {addresses:?}\n"));
        }
        text.push_str(&format!("\n[admin]\nlisten = \"{admin}\"\n"));
        for section in &self.sections {
            text.push('\n');
            text.push_str(section);
            text.push('\n');
        }
        text
    }

    /// Starts a new process from this spec and waits until its admin listener answers
    /// `/healthz` (not until it is ready: see [`ConnectorProcess::wait_ready`]).
    ///
    /// # Panics
    /// When the binary cannot be built, the config is refused or the process does not start
    /// (with its log).
    pub async fn start(&self) -> ConnectorProcess {
        let program = tokio::task::spawn_blocking(connector_binary)
            .await
            .expect("the build thread");
        // The admin port is found free, then bound by the child: retry if another process
        // took it in between.
        let mut last = String::new();
        for attempt in 0..5 {
            match self.try_start(&program, attempt).await {
                Ok(process) => return process,
                Err(StartError::AddrInUse(log)) => last = log,
                Err(StartError::Failed(message)) => panic!("{message}"),
            }
        }
        panic!(
            "connector {}: the admin port was taken 5 times in a row\n{last}",
            self.name
        )
    }

    async fn try_start(
        &self,
        program: &Path,
        attempt: u32,
    ) -> Result<ConnectorProcess, StartError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("underpass-{}-", self.name))
            .tempdir()
            .expect("create tempdir");
        let admin_addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        );
        let token_file = match self.token_source {
            TokenSource::File => {
                let path = dir.path().join("tunnel.token");
                write_secret(&path, &self.token).expect("write the token file");
                Some(path)
            }
            TokenSource::Env => None,
        };
        let config_path = dir.path().join("connector.toml");
        let text = self.config_text(token_file.as_deref(), admin_addr);
        std::fs::write(&config_path, &text).expect("write connector.toml");

        let mut command = Command::new(program);
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", &self.log_filter)
            .env_remove("UNDERPASS_TOKEN");
        if self.token_source == TokenSource::Env {
            command.env("UNDERPASS_TOKEN", &self.token);
        }
        let log_name = format!("{}-{attempt}", self.name);
        let child = ChildGuard::spawn(command, &log_name, dir.path())
            .map_err(|e| StartError::Failed(format!("spawn connector {}: {e:#}", self.name)))?;
        let stderr = dir.path().join(format!("{log_name}.stderr"));
        let mut process = ConnectorProcess {
            name: self.name.clone(),
            admin_addr,
            config_path,
            stderr,
            child,
            dir,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                let log = process.log();
                if log.contains("in use") {
                    return Err(StartError::AddrInUse(log));
                }
                return Err(StartError::Failed(format!(
                    "connector {} exited at start with {status}\nconfig:\n{text}\n{}",
                    self.name,
                    process.child.output()
                )));
            }
            if let Ok(response) = admin::get(admin_addr, "/healthz").await {
                if response.status == 200 {
                    return Ok(process);
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::Failed(format!(
                    "connector {}: its admin listener {admin_addr} did not answer GET /healthz \
                     with 200 within {STARTUP_TIMEOUT:?}\nconfig:\n{text}\n{}",
                    self.name,
                    process.child.output()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

enum StartError {
    /// The admin port was taken (with the log).
    AddrInUse(String),
    /// Anything else (a readable message).
    Failed(String),
}

/// Writes `secret` to a new file only its owner can read (mode 0600 from the start).
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")
}

/// A running `underpass run`, killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct ConnectorProcess {
    name: String,
    admin_addr: SocketAddr,
    config_path: PathBuf,
    stderr: PathBuf,
    // Field order: the process dies before its folder is removed.
    child: ChildGuard,
    dir: TempDir,
}

impl ConnectorProcess {
    /// The spec's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin listener (`[admin] listen`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file this process runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The folder holding the config, the token file and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `GET /ready`: the status (200 or 503) and the JSON body.
    pub async fn ready(&self) -> anyhow::Result<(u16, serde_json::Value)> {
        admin::get_json(self.admin_addr, "/ready").await
    }

    /// Polls `/ready` until it answers 200 (at most `timeout`); returns how long that took.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        self.wait_ready_status(200, timeout).await
    }

    /// Polls `/ready` until it answers 503 (at most `timeout`); returns how long that took.
    pub async fn wait_not_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        self.wait_ready_status(503, timeout).await
    }

    async fn wait_ready_status(
        &mut self,
        want: u16,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut last;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "connector {} exited with {status} while waiting for /ready {want}",
                    self.name
                );
            }
            match self.ready().await {
                Ok((status, _)) if status == want => return Ok(start.elapsed()),
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = format!("{e:#}"),
            }
            if start.elapsed() >= timeout {
                bail!(
                    "connector {}: /ready did not answer {want} within {timeout:?} (last: {last})",
                    self.name
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and reap: no drain, no close, the connections just go silent.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Sends SIGTERM, as a service manager stopping the connector does.
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn terminate(&self) {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap_or_else(|e| panic!("send SIGTERM to connector {}: {e}", self.name));
    }

    /// Waits (polling, at most `timeout`) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .with_context(|| format!("check connector {}", self.name))?
            {
                return Ok(status);
            }
            if start.elapsed() >= timeout {
                bail!("connector {} still runs {timeout:?} later", self.name);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Everything the process logged (stderr) so far.
    pub fn log(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// Stdout and stderr so far, with headers (for failure messages).
    pub fn output(&self) -> String {
        self.child.output()
    }
}
