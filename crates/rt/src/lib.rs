//! Runtime pieces both Underpass programs share, so that they start, log and stop alike:
//!
//! - [`runtime`]: the tokio runtime a binary runs on;
//! - [`Shutdown`]: the one shutdown and task mechanism (a cancellation token for "stop
//!   accepting", another for "grace over", and a task tracker every `spawn` goes through);
//! - [`terminate_signal`]: SIGTERM or Ctrl-C;
//! - [`Signals`]: SIGTERM/SIGINT (stop; a second one exits at once) and SIGHUP (reload);
//! - [`init_tracing`]: logs to stderr as text or JSON lines ([`LogFormat`]), filtered by
//!   `RUST_LOG`;
//! - [`admin`]: the admin listener (`/healthz`, `/ready`, `/metrics`); [`metrics`]: helpers for
//!   the Prometheus registries;
//! - [`notify`]: the service manager's notifications (`READY=1`, `STATUS=`, `STOPPING=1`,
//!   `WATCHDOG=1` to `NOTIFY_SOCKET`), a no-op without one;
//! - [`risky`]: findings about risky configuration (a secret others can read, a route to
//!   everything), printed by `check-config` and logged at start;
//! - [`EX_USAGE`] and [`EX_FAILURE`]: the exit codes of both binaries; [`VERSION`]: what
//!   their `--version` prints.
#![forbid(unsafe_code)]

pub mod admin;
pub mod metrics;
pub mod notify;
pub mod risky;
mod shutdown;

pub use shutdown::{Shutdown, ShutdownReport};

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// What `--version` prints after the program's name: the version and the git commit the
/// binary was built from (`0.1.0 (commit 0123456789ab)`; `unknown` outside a git checkout
/// without `UNDERPASS_GIT_COMMIT`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("UNDERPASS_GIT_COMMIT"),
    ")"
);

/// Exit status for a bad command line or configuration (sysexits `EX_USAGE`).
pub const EX_USAGE: u8 = 64;
/// Exit status for a failure at run time.
pub const EX_FAILURE: u8 = 1;

/// The tokio runtime for a binary that runs a tunnel end: `worker_threads` 1 gives a
/// single-threaded runtime (the default of both binaries: one QUIC connection is processed
/// serially anyway, so more workers mostly add cross-thread wake-ups), 0 one worker per core,
/// `n` that many workers.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if worker_threads > 1 {
        builder.worker_threads(worker_threads);
    }
    builder.enable_all().build()
}

/// How log lines are written (`--log-format`, config key `log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal (the default).
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans), for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

/// Log to stderr in `format`, filtered by `RUST_LOG` (default `default_level`); text is
/// coloured only on a terminal (no escape codes in journald or log files). A subscriber
/// installed earlier (a test's) is kept.
pub fn init_tracing(default_level: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Fails only if a subscriber is already installed, which is then used instead.
    let _ = match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

/// A signal the binaries act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: stop (drain); a second one: exit at once.
    Terminate,
    /// SIGHUP: reload the configuration.
    Hangup,
}

/// The process's SIGTERM, SIGINT and SIGHUP, as a stream of [`Signal`]s. Once made, these
/// signals no longer kill the process by default: the program decides.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Listen for the signals (within a tokio runtime).
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Terminate,
            _ = self.hup.recv() => Signal::Hangup,
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). If SIGTERM cannot be listened for, says so and
/// waits for Ctrl-C only.
pub async fn terminate_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
