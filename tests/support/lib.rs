//! Builders for end-to-end tests: real origins (nginx, redis, dnsmasq, in-process TCP and HTTP
//! servers) on loopback, a test PKI, the edge and connector joined by a real tunnel
//! ([`Stack`], or [`EdgeProcess`] for the real binary), the real `workerd`, and small clients
//! to talk to them.
//!
//! Every server binds a loopback address (`127.x.y.z`, so that tests can play different
//! private subnets), waits for real readiness before its builder returns (a connect, a `PING`,
//! a DNS query, a log line: never a fixed sleep), keeps its files in its own temporary
//! directory and is killed and reaped when dropped. Builders that poll a child process do it
//! on a blocking thread (`spawn_blocking`) or with tokio sleeps: no async test blocks its
//! runtime's threads.
//!
//! The external programs come from the system: `nginx`, `redis-server` and `dnsmasq` are looked
//! up on `PATH` plus `/usr/sbin` and `/sbin`. `scripts/test` installs them when missing, and
//! installs `workerd` (see [`workerd_binary`]).
//!
//! Builders panic with a readable message (including the server's own log) when a server does
//! not start: in a test that is the most useful failure.

pub mod admin;
pub mod connector_process;
pub mod dns;
pub mod dnsmasq;
pub mod echo;
pub mod edge_home;
pub mod edge_process;
pub mod heavy;
pub mod http1;
pub mod load;
pub mod nginx;
pub mod pattern;
pub mod pattern_origin;
pub mod pki;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod relay;
pub mod slow_origin;
pub mod sockets;
pub mod stack;
pub mod trickle;
pub mod upgrade;
pub mod workerd;

use std::path::{Path, PathBuf};

pub use dnsmasq::Dnsmasq;
pub use echo::{Behaviour, ConnEvent, EchoServer, TimedEvent};
pub use edge_process::EdgeProcess;
pub use heavy::heavy_lock;
pub use nginx::{Location, Nginx, NginxBuilder};
pub use pki::TestPki;
pub use ports::{free_port, free_tcp_udp_port};
pub use redis::Redis;
pub use slow_origin::SlowOrigin;
pub use stack::{Service, Stack, StackBuilder};
pub use trickle::TrickleOrigin;
pub use workerd::workerd_binary;

/// The workspace root (the parent of this package's folder).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The text of `examples/<name>` (the seed's Worker scripts and configs).
///
/// # Panics
/// When the file cannot be read.
pub fn example(name: &str) -> String {
    let path = repo_root().join("examples").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the example {}: {e}", path.display()))
}
