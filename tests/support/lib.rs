//! Builders for end-to-end tests: real origins (nginx, redis, dnsmasq, in-process TCP servers)
//! on loopback, a test PKI, and small clients to talk to them.
//!
//! Every server binds a loopback address (`127.x.y.z`, so that tests can play different
//! private subnets), waits for real readiness before its builder returns (a connect, a `PING`,
//! a DNS query: never a fixed sleep), keeps its files in its own temporary directory and is
//! killed and reaped when dropped.
//!
//! The external programs come from the system: `nginx`, `redis-server` and `dnsmasq` are looked
//! up on `PATH` plus `/usr/sbin` and `/sbin`. `scripts/test` installs them when missing, and
//! installs `workerd` (see [`workerd_binary`]).
//!
//! Builders panic with a readable message (including the server's own log) when a server does
//! not start: in a test that is the most useful failure.

pub mod dns;
pub mod dnsmasq;
pub mod echo;
pub mod http1;
pub mod nginx;
pub mod pattern;
pub mod pki;
pub mod ports;
pub mod process;
pub mod redis;
pub mod workerd;

pub use dnsmasq::Dnsmasq;
pub use echo::{Behaviour, ConnEvent, EchoServer, TimedEvent};
pub use nginx::{Location, Nginx, NginxBuilder};
pub use pki::TestPki;
pub use ports::{free_port, free_tcp_udp_port};
pub use redis::Redis;
pub use workerd::workerd_binary;
