//! The edge's configuration file (TOML), parsed and validated once before anything is bound.
//!
//! The file names the state directory, the QUIC listen address, and the directory entries:
//! VPC Networks (`[[network]]`), VPC Services (`[[service]]`) and the bindings that serve them
//! (`[[binding]]`). Tunnels are not in the file: they live in the state directory, created by
//! `underpass-edge tunnel create`, and entries refer to them by name or id. See
//! `docs/edge.md` for every key.
//!
//! - `file`: the schema, one serde struct per table ([`EdgeConfig`] and the structs it holds);
//! - `convert`: validation ([`EdgeConfig::validate`]) and conversion into the directory model
//!   the edge runs on;
//! - [`ConfigError`]: what is wrong, naming the entry and the key;
//! - `risky`: settings that work but expose something ([`EdgeConfig::risky_findings`]).

mod convert;
mod error;
mod file;
mod risky;

pub use error::ConfigError;
pub use file::{
    AdminConfig, BindingConfig, BindingMode, CertVerificationMode, EdgeConfig, Limits,
    NetworkConfig, QuicConfig, RoutingConfig, RuntimeConfig, ServiceConfig, ServiceHost,
    ServiceKind, ServiceTls, Timeouts, Unmatched, DEFAULT_LISTEN, DEFAULT_MAX_CLIENT_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IDLE_CLIENT_CONNECTIONS, DEFAULT_SERVER_NAME,
};
