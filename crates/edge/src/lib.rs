//! The Underpass edge: accepts connectors over QUIC, keeps the directory of tunnels, networks
//! and services, and serves each binding as an HTTP/1.1 forward proxy (or a plain TCP port) on
//! its own listener.
//!
//! Modules, in dependency order (each uses only those above it):
//!
//! - `model`: the directory's domain model (tunnels, networks, services, bindings), plain
//!   data;
//! - [`config`]: the TOML configuration, validated and converted into the model before
//!   anything is bound;
//! - [`db`]: the directory database (SQLite: accounts, hashed API tokens, the objects made
//!   through the admin API), behind the `DirectoryBackend` trait;
//! - `api`: the directory admin API: its JSON shapes and validation, the database's objects
//!   as the model serves them, and the requests with their roles;
//! - `directory`: where the directory comes from, as a live snapshot (the config file's
//!   objects beside the database's);
//! - [`state`] and [`tunnels`]: the state directory (dev PKI, tunnels and their secrets);
//! - `registry`: live connector connections per tunnel, and the stream leases drain waits for;
//! - `policy` and `server`: registration, service policies and the control stream of each
//!   connector connection;
//! - `front`: the binding listeners (`CONNECT` for `connect()`, absolute-form requests for
//!   `fetch()`, plain TCP bindings);
//! - `start`: [`Edge::start`] wires everything and returns an [`EdgeHandle`]; [`serve`] runs an
//!   edge until a shutdown future resolves;
//! - `metrics` and [`admin`]: the Prometheus metrics and the admin listener (`/healthz`,
//!   `/ready`, `/metrics`, `/v1/tunnels/{name}`, the directory API under `/accounts/`);
//! - [`cli`]: the `underpass-edge` command line.
#![forbid(unsafe_code)]

pub mod admin;
mod api;
mod api_client;
pub mod cli;
mod cli_vpc;
pub mod config;
pub mod db;
mod directory;
mod error;
mod front;
mod metrics;
mod model;
mod policy;
mod registry;
mod server;
mod start;
pub mod state;
pub mod tunnels;

pub use registry::{
    ConnectionInfo, NewConnection, Registry, RegistryError, MAX_CONNECTIONS_PER_TUNNEL,
};
pub use start::{
    serve, serve_with_signals, token_addresses, Edge, EdgeError, EdgeHandle, ReloadSummary,
};
