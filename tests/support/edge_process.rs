//! The real `underpass-edge` binary as a child process, for what only a process shows
//! (signals, exit status). Its connector runs in-process.
//!
//! The binary is built on first use with the cargo that runs the tests, in the profile of the
//! test executable, so a test never runs a stale binary. The edge binds port 0 everywhere and
//! the test learns the real addresses from its log lines (`edge started quic=…`, `binding
//! listening binding=… addr=…`): readiness is the log line itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use tempfile::TempDir;
use underpass_edge::config::EdgeConfig;
use underpass_edge::state::Pki;
use underpass_edge::tunnels::TunnelStore;
use underpass_proto::TunnelToken;

use crate::process::{poll_until_async, read_lossy, ChildGuard, Probe, STARTUP_TIMEOUT};
use crate::repo_root;

/// The tunnel the edge process serves.
pub const TUNNEL: &str = "e2e-process";

/// The `underpass-edge` binary of this build, built (once per test process) if needed.
///
/// # Panics
/// When cargo cannot build it.
pub fn edge_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            build_binary("underpass-edge", "underpass-edge").map_err(|e| format!("{e:#}"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("cannot build underpass-edge: {e}"))
}

/// `cargo build -p PACKAGE --bin BIN` in the profile of the running test executable (its
/// folder is `target/<profile>/deps`); returns the binary's path.
pub(crate) fn build_binary(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the test executable's path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in target/<profile>/deps")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("profile folder name")?;
    let target_dir = profile_dir
        .parent()
        .context("the target folder")?
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(repo_root())
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(&target_dir);
    match profile {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let output = command
        .output()
        .with_context(|| format!("run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let path = profile_dir.join(bin);
    if !path.is_file() {
        bail!("{} is missing after the build", path.display());
    }
    Ok(path)
}

/// A running `underpass-edge serve`, killed on drop.
#[derive(Debug)]
pub struct EdgeProcess {
    quic_addr: SocketAddr,
    bindings: HashMap<String, SocketAddr>,
    token: TunnelToken,
    // Field order: the process dies before its folder is removed.
    child: ChildGuard,
    dir: TempDir,
}

impl EdgeProcess {
    /// Starts the edge with `sections` (TOML: `[[network]]`, `[[service]]`, `[[binding]]`,
    /// `[timeouts]`…, tunnels named [`TUNNEL`], listeners on `127.0.0.1:0`) after the
    /// top-level `state_dir` and `listen` keys this writes itself. The state folder gets the
    /// tunnel first, as an operator's `tunnel create` would. Waits until every binding listens.
    ///
    /// # Panics
    /// When the config is invalid or the edge does not start (with its log).
    pub async fn start(sections: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("underpass-edge-process-")
            .tempdir()
            .expect("create tempdir");
        let state = dir.path().join("state");
        let config_path = dir.path().join("edge.toml");
        let text = format!(
            "state_dir = {state:?}\nlisten = \"127.0.0.1:0\"\n\n{sections}",
            state = state.display().to_string()
        );
        std::fs::write(&config_path, &text).expect("write edge.toml");
        let config = EdgeConfig::load(&config_path)
            .unwrap_or_else(|e| panic!("invalid edge config: {e}\n{text}"));
        let pki = Pki::load_or_generate(&state, &config.server_name).expect("the edge PKI");
        let tunnel = TunnelStore::open(&state)
            .and_then(|store| store.create(TUNNEL))
            .expect("create the tunnel");
        let names: Vec<String> = config.bindings.iter().map(|b| b.name.clone()).collect();

        let program = edge_binary();
        let mut command = Command::new(&program);
        command
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .env("RUST_LOG", "info");
        let mut child = ChildGuard::spawn(command, "edge", dir.path()).expect("spawn the edge");
        let stderr = dir.path().join("edge.stderr");
        let mut seen = None;
        let ready = poll_until_async("underpass-edge", STARTUP_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Probe::Failed(format!("exited with {status}"));
            }
            let log = read_lossy(&stderr);
            match parse_addresses(&log, &names) {
                Some(found) => {
                    seen = Some(found);
                    Probe::Ready
                }
                None => Probe::NotYet,
            }
        })
        .await;
        match ready {
            Ok(Probe::Ready) => {}
            Ok(other) => panic!("the edge did not start: {other:?}\n{}", child.output()),
            Err(e) => panic!("the edge did not start: {e:#}\n{}", child.output()),
        }
        let (quic_addr, bindings) = seen.expect("Ready means the addresses were seen");
        let token = tunnel.token(vec![quic_addr.to_string()], &config.server_name, pki.ca_pin);
        EdgeProcess {
            quic_addr,
            bindings,
            token,
            child,
            dir,
        }
    }

    /// The UDP address connectors dial.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// The token of [`TUNNEL`], naming this edge.
    pub fn token(&self) -> TunnelToken {
        self.token.clone()
    }

    /// The listener of binding `name`.
    ///
    /// # Panics
    /// When there is no such binding.
    pub fn binding_addr(&self, name: &str) -> SocketAddr {
        *self
            .bindings
            .get(name)
            .unwrap_or_else(|| panic!("the edge has no binding {name:?}"))
    }

    /// Sends SIGTERM, as a service manager stopping the edge does.
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
        let child = &mut self.child;
        let mut status = None;
        let probe = poll_until_async("the edge to exit", timeout, || match child.try_wait() {
            Ok(Some(exited)) => {
                status = Some(exited);
                Probe::Ready
            }
            Ok(None) => Probe::NotYet,
            Err(e) => Probe::Failed(e.to_string()),
        })
        .await?;
        match (probe, status) {
            (Probe::Ready, Some(status)) => Ok(status),
            (other, _) => bail!("{other:?}"),
        }
    }

    /// Everything the edge logged so far.
    pub fn output(&self) -> String {
        self.child.output()
    }

    /// The folder holding the config, the state and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The QUIC address and every binding's address from the edge's log, once all are there.
pub(crate) fn parse_addresses(
    log: &str,
    names: &[String],
) -> Option<(SocketAddr, HashMap<String, SocketAddr>)> {
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let mut quic = None;
    let mut bindings = HashMap::new();
    for line in log.lines() {
        if line.contains("edge started") {
            quic = field(line, "quic=").and_then(|v| v.parse().ok());
        } else if line.contains("binding listening") {
            if let (Some(name), Some(addr)) = (
                field(line, "binding="),
                field(line, "addr=").and_then(|v| v.parse().ok()),
            ) {
                bindings.insert(name, addr);
            }
        }
    }
    let quic = quic?;
    names
        .iter()
        .all(|n| bindings.contains_key(n))
        .then_some((quic, bindings))
}
