//! The Underpass connector: runs on a private host, dials out to the edge over QUIC, registers
//! its tunnel, and serves the streams the edge opens by checking each destination against its
//! own route table, resolving names inside the private network and dialing the private service.
//!
//! Modules, top to bottom (each uses only those below it):
//!
//! - `supervisor`: the connection slots ([`Connector`], [`ConnectorHandle`]): backoff,
//!   connection states, one tracing span per attempt, the admin listener, live reload
//!   ([`reload`]);
//! - `session`: one connection: registration, the control loop (heartbeats, drain, service
//!   policies), drain and close;
//! - `streams`: the data streams of a connection: dispatch, the stream limit, `connect()` and
//!   `fetch()`;
//! - `policy`: the service policies a connection received, waited for by its streams;
//! - `outcome`: how a stream ended, logged and counted in one place;
//! - `metrics`: the Prometheus metrics served on the admin listener's `/metrics`;
//! - `origin`: the HTTP client towards origins (pool, TLS, upgrades);
//! - [`dial`]: route check, resolution ([`resolve`]), the re-check of what a name reaches
//!   (`name_policy`: resolved addresses, requested name servers), Happy Eyeballs;
//! - [`config`]: the TOML configuration, validated once before anything is dialed;
//! - [`cli`]: the `underpass` command line.
//!
//! Embedding or testing:
//!
//! ```no_run
//! # use underpass_proto::TunnelToken;
//! # async fn example(token: TunnelToken) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use underpass_connector::{Connector, ConnectorConfig};
//!
//! let config = ConnectorConfig::builder(token)
//!     .route_ports("127.20.0.0/16", "6379")
//!     .deny(&["127.20.66.0/24"])
//!     .resolvers(&["127.0.0.53:53".parse()?])
//!     .build()?;
//! let connector = Connector::start(config)?;
//! connector.wait_registered(Duration::from_secs(10)).await?;
//! // ... traffic ...
//! connector.shutdown().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod backoff;
pub mod cli;
pub mod config;
pub mod dial;
mod metrics;
mod name_policy;
mod origin;
mod outcome;
mod policy;
pub mod reload;
pub mod resolve;
pub mod service;
mod session;
mod streams;
mod supervisor;

pub use config::{ConfigError, ConnectorConfig, ConnectorConfigBuilder, Overrides};
pub use dial::Dialer;
pub use reload::{ReloadError, ReloadReport};
pub use supervisor::{run, ConnectionState, Connector, ConnectorError, ConnectorHandle, WaitError};
