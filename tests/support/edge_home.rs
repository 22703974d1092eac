//! The real `underpass-edge` binary on a fixed QUIC address and a state folder that outlive
//! the process, so a test can SIGKILL the edge and start it again "on the same host": same
//! UDP port, same PKI and `tunnels.json`, same stateless-reset key (`reset.key`, which the
//! edge creates in its state folder), so the tokens stay valid.
//!
//! [`EdgeHome::create`] writes the config and the state (PKI and tunnel, as an operator's
//! `tunnel create` would) and computes the token; each [`EdgeHome::start`] is a new process
//! ([`EdgeRun`]). Binding listeners keep their address across restarts only when the
//! sections name fixed ports (use [`crate::free_port`]); `127.0.0.1:0` gets a new port per run.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;
use underpass_edge::config::EdgeConfig;
use underpass_edge::state::Pki;
use underpass_edge::tunnels::TunnelStore;
use underpass_proto::TunnelToken;

use crate::admin;
use crate::edge_process::{edge_binary, parse_addresses, TUNNEL};
use crate::ports::free_port;
use crate::process::{read_lossy, ChildGuard, STARTUP_TIMEOUT};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A UDP port free on `ip` now.
///
/// # Panics
/// When `ip` cannot be bound.
///
/// Free on TCP as well: the edge listens for HTTP/2 on the same port number.
pub fn free_udp_port(ip: IpAddr) -> u16 {
    crate::ports::free_tcp_udp_port(ip)
}

/// An edge's config and state, on a fixed QUIC address; start it as often as needed.
#[derive(Debug)]
pub struct EdgeHome {
    quic_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    config_path: PathBuf,
    text: String,
    names: Vec<String>,
    token: TunnelToken,
    runs: AtomicU32,
    dir: Arc<TempDir>,
}

impl EdgeHome {
    /// Writes the edge config (`state_dir`, `listen` on a free UDP port of 127.0.0.1, then
    /// `sections`: `[[network]]`, `[[service]]`, `[[binding]]`…, tunnels named [`TUNNEL`]),
    /// the PKI and the tunnel. With no admin listener.
    ///
    /// # Panics
    /// When the config is invalid or the state cannot be written.
    pub fn create(sections: &str) -> Self {
        Self::create_inner(sections, false)
    }

    /// [`EdgeHome::create`] plus `[admin] listen` on a free loopback port.
    ///
    /// # Panics
    /// As [`EdgeHome::create`].
    pub fn create_with_admin(sections: &str) -> Self {
        Self::create_inner(sections, true)
    }

    fn create_inner(sections: &str, admin: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("underpass-edge-home-")
            .tempdir()
            .expect("create tempdir");
        let state = dir.path().join("state");
        let config_path = dir.path().join("edge.toml");
        let quic_addr = SocketAddr::new(LOCALHOST, free_udp_port(LOCALHOST));
        let admin_addr = admin.then(|| SocketAddr::new(LOCALHOST, free_port(LOCALHOST)));
        let mut text = format!(
            "state_dir = {state:?}\nlisten = \"{quic_addr}\"\n\n{sections}\n",
            state = state.display().to_string()
        );
        if let Some(addr) = admin_addr {
            text.push_str(&format!("\n[admin]\nlisten = \"{addr}\"\n"));
        }
        std::fs::write(&config_path, &text).expect("write edge.toml");
        let config = EdgeConfig::load(&config_path)
            .unwrap_or_else(|e| panic!("invalid edge config: {e}\n{text}"));
        let pki = Pki::load_or_generate(&state, &config.server_name).expect("the edge PKI");
        let tunnel = TunnelStore::open(&state)
            .and_then(|store| store.create(TUNNEL))
            .expect("create the tunnel");
        let token = tunnel.token(vec![quic_addr.to_string()], &config.server_name, pki.ca_pin);
        let names = config.bindings.iter().map(|b| b.name.clone()).collect();
        EdgeHome {
            quic_addr,
            admin_addr,
            config_path,
            text,
            names,
            token,
            runs: AtomicU32::new(0),
            dir: Arc::new(dir),
        }
    }

    /// The UDP address connectors dial, the same for every run.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The admin listener, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The token of [`TUNNEL`], naming [`EdgeHome::quic_addr`].
    pub fn token(&self) -> TunnelToken {
        self.token.clone()
    }

    /// The config file, for a test that starts the edge its own way (its own environment).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The folder holding the config, the state and every run's logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts a new edge process and waits until its QUIC listener and every binding listen
    /// (their log lines), and, with an admin listener, until `/healthz` answers.
    ///
    /// # Panics
    /// When the process does not start (with its log).
    pub async fn start(&self) -> EdgeRun {
        let program = tokio::task::spawn_blocking(edge_binary)
            .await
            .expect("the build thread");
        let run = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        let log_name = format!("edge-{run}");
        let mut command = Command::new(&program);
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env("RUST_LOG", "info");
        let child = ChildGuard::spawn(command, &log_name, self.dir.path())
            .unwrap_or_else(|e| panic!("spawn the edge: {e:#}"));
        let stderr = self.dir.path().join(format!("{log_name}.stderr"));
        let mut edge = EdgeRun {
            quic_addr: self.quic_addr,
            admin_addr: self.admin_addr,
            bindings: HashMap::new(),
            stderr,
            child,
            _dir: self.dir.clone(),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut admin_up = self.admin_addr.is_none();
        let mut listening = false;
        loop {
            if let Ok(Some(status)) = edge.child.try_wait() {
                panic!(
                    "edge run {run} exited at start with {status}\nconfig:\n{}\n{}",
                    self.text,
                    edge.output()
                );
            }
            if !listening {
                if let Some((quic, bindings)) = parse_addresses(&edge.log(), &self.names) {
                    assert_eq!(
                        quic, self.quic_addr,
                        "the edge listens on another QUIC address than configured"
                    );
                    edge.bindings = bindings;
                    listening = true;
                }
            }
            if !admin_up {
                if let Some(addr) = self.admin_addr {
                    // Over TLS (`[admin] tls_cert`), the bound listener's log line instead.
                    let log = edge.log();
                    admin_up = log
                        .lines()
                        .any(|l| l.contains("admin listener bound") && l.contains("tls=true"))
                        || matches!(admin::get(addr, "/healthz").await, Ok(r) if r.status == 200);
                }
            }
            if listening && admin_up {
                return edge;
            }
            if Instant::now() >= deadline {
                panic!(
                    "edge run {run} not ready within {STARTUP_TIMEOUT:?} (listening: {listening}, \
                     admin answering: {admin_up})\nconfig:\n{}\n{}",
                    self.text,
                    edge.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One run of an [`EdgeHome`]'s edge; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct EdgeRun {
    quic_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    bindings: HashMap<String, SocketAddr>,
    stderr: PathBuf,
    // Field order: the process dies before the home folder may be removed.
    child: ChildGuard,
    _dir: Arc<TempDir>,
}

impl EdgeRun {
    /// The UDP address connectors dial.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The admin listener, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The listener of binding `name` in this run.
    ///
    /// # Panics
    /// When there is no such binding.
    pub fn binding_addr(&self, name: &str) -> SocketAddr {
        *self
            .bindings
            .get(name)
            .unwrap_or_else(|| panic!("the edge has no binding {name:?}"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap: the edge vanishes without closing anything.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Sends SIGTERM.
    ///
    /// # Panics
    /// When the signal cannot be sent.
    pub fn terminate(&self) {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("send SIGTERM to the edge");
    }

    /// Waits (polling, at most `timeout`) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("check the edge")? {
                return Ok(status);
            }
            if start.elapsed() >= timeout {
                bail!("the edge still runs {timeout:?} later");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What this run logged (stderr) so far.
    pub fn log(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// Stdout and stderr so far, with headers (for failure messages).
    pub fn output(&self) -> String {
        self.child.output()
    }
}
