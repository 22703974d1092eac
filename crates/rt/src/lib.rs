//! Runtime pieces both Underpass programs share, so that they start, log and stop alike:
//!
//! - [`runtime`]: the tokio runtime a binary runs on;
//! - [`Shutdown`]: the one shutdown and task mechanism (a cancellation token for "stop
//!   accepting", another for "grace over", and a task tracker every `spawn` goes through);
//! - [`terminate_signal`]: SIGTERM or Ctrl-C;
//! - [`init_tracing`]: logs to stderr, filtered by `RUST_LOG`;
//! - [`EX_USAGE`] and [`EX_FAILURE`]: the exit codes of both binaries.
#![forbid(unsafe_code)]

mod shutdown;

pub use shutdown::{Shutdown, ShutdownReport};

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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

/// Log to stderr, filtered by `RUST_LOG` (default `default_level`), coloured only on a
/// terminal (no escape codes in journald or log files). A subscriber installed earlier (a
/// test's) is kept.
pub fn init_tracing(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Fails only if a subscriber is already installed, which is then used instead.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
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
