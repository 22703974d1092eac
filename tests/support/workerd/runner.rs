//! A real `workerd` process serving generated Workers, and a client to call them.
//!
//! workerd is started with `--control-fd 1`: it writes one JSON line per socket to stdout
//! (`{"event":"listen","socket":"NAME","port":N}`) once that socket listens, so sockets bind
//! port 0 and readiness is the event itself, not a guess.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use tempfile::TempDir;

use super::binary;
use super::capnp::{self, WorkerSpec};
use crate::http1::{self, Response};
use crate::process::{poll_until, read_lossy, ChildGuard, Probe, STARTUP_TIMEOUT};

/// How long one request to a Worker may take before the test fails (guards a hang only).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A running workerd, killed on drop.
#[derive(Debug)]
pub struct Workerd {
    sockets: HashMap<String, SocketAddr>,
    // Field order: the process dies before its directory is removed.
    child: ChildGuard,
    _dir: TempDir,
}

/// What to run: Worker scripts (file name and text) and the config that serves them.
#[derive(Debug, Default)]
pub struct WorkerdSetup {
    scripts: Vec<(String, String)>,
    workers: Vec<WorkerSpec>,
    raw_config: Option<(String, Vec<String>)>,
}

impl WorkerdSetup {
    /// An empty setup.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `script` (the module text) as Worker `spec.name`; `spec.module_file` names the
    /// file the script is written to.
    pub fn worker(mut self, spec: WorkerSpec, script: &str) -> Self {
        self.scripts
            .push((spec.module_file.clone(), script.to_owned()));
        self.workers.push(spec);
        self
    }

    /// Uses `config` verbatim instead of a generated one; `sockets` are the socket names to
    /// wait for. Scripts added with [`WorkerdSetup::script`] are written beside it.
    pub fn raw_config(mut self, config: &str, sockets: &[&str]) -> Self {
        let names = sockets.iter().map(|s| (*s).to_owned()).collect();
        self.raw_config = Some((config.to_owned(), names));
        self
    }

    /// Writes `text` to `file` beside the config.
    pub fn script(mut self, file: &str, text: &str) -> Self {
        self.scripts.push((file.to_owned(), text.to_owned()));
        self
    }

    /// Writes the files, starts workerd and waits until every socket listens; the readiness
    /// polling runs on a blocking thread.
    pub async fn start(self) -> anyhow::Result<Workerd> {
        tokio::task::spawn_blocking(move || self.start_blocking())
            .await
            .context("the workerd start-up task")?
    }

    /// Like [`WorkerdSetup::start`]; blocks the calling thread.
    pub fn start_blocking(self) -> anyhow::Result<Workerd> {
        let program = binary();
        let dir = tempfile::Builder::new()
            .prefix("underpass-workerd-")
            .tempdir()
            .context("create tempdir")?;
        for (file, text) in &self.scripts {
            std::fs::write(dir.path().join(file), text).with_context(|| format!("write {file}"))?;
        }
        let (config, sockets) = match self.raw_config {
            Some((config, sockets)) => (config, sockets),
            None => (
                capnp::render(&self.workers),
                self.workers.iter().map(|w| w.name.clone()).collect(),
            ),
        };
        let config_path = dir.path().join("config.capnp");
        std::fs::write(&config_path, &config).context("write config.capnp")?;
        let mut command = Command::new(&program);
        command
            .current_dir(dir.path())
            .arg("serve")
            .arg(&config_path)
            .args(["--control-fd", "1"]);
        let mut child = ChildGuard::spawn(command, "workerd", dir.path())?;
        let stdout = dir.path().join("workerd.stdout");
        let mut found = HashMap::new();
        let probe = poll_until("workerd", STARTUP_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Probe::Failed(format!("workerd exited with {status}"));
            }
            found = listen_events(&read_lossy(&stdout));
            if sockets.iter().all(|s| found.contains_key(s)) {
                Probe::Ready
            } else {
                Probe::NotYet
            }
        });
        match probe {
            Ok(Probe::Ready) => {}
            Ok(other) => bail!("{other:?}\nconfig:\n{config}\n{}", child.output()),
            Err(e) => bail!("{e}\nconfig:\n{config}\n{}", child.output()),
        }
        let sockets = found
            .into_iter()
            .map(|(name, port)| (name, SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)))
            .collect();
        Ok(Workerd {
            sockets,
            child,
            _dir: dir,
        })
    }
}

/// Socket name → port from workerd's control messages.
fn listen_events(stdout: &str) -> HashMap<String, u16> {
    let mut found = HashMap::new();
    for line in stdout.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if value["event"] != "listen" {
            continue;
        }
        if let (Some(socket), Some(port)) = (value["socket"].as_str(), value["port"].as_u64()) {
            if let Ok(port) = u16::try_from(port) {
                found.insert(socket.to_owned(), port);
            }
        }
    }
    found
}

impl Workerd {
    /// Where the socket named `socket` (a Worker's name) listens.
    ///
    /// # Panics
    /// When there is no such socket.
    pub fn addr(&self, socket: &str) -> SocketAddr {
        *self
            .sockets
            .get(socket)
            .unwrap_or_else(|| panic!("workerd has no socket {socket:?}"))
    }

    /// workerd's output so far (stdout and stderr: uncaught exceptions land there).
    pub fn output(&self) -> String {
        self.child.output()
    }

    /// `GET /` on the Worker served on `socket`, on a new connection.
    pub async fn get(&self, socket: &str) -> Response {
        let addr = self.addr(socket);
        match tokio::time::timeout(REQUEST_TIMEOUT, http1::get(addr, "worker.test", "/")).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => panic!("request to Worker {socket}: {e:#}\n{}", self.output()),
            Err(_) => panic!(
                "Worker {socket} did not answer within {REQUEST_TIMEOUT:?}\n{}",
                self.output()
            ),
        }
    }
}
