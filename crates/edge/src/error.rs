//! [`EdgeError`]: why the edge could not start or act (its own module, so that the admin
//! endpoints and the start-up wiring can both name it without depending on each other).

use std::net::SocketAddr;

use underpass_transport::quic::TransportError;
use underpass_transport::tls::TlsError;

use crate::config::ConfigError;
use crate::state::StateError;

/// Why the edge could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The TLS configuration could not be built from the stored PKI.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] TlsError),
    /// The QUIC listener could not be started.
    #[error("QUIC listener on {addr}: {source}")]
    Quic {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: TransportError,
    },
    /// The HTTP/2 listener could not be bound.
    #[error("cannot listen for HTTP/2 (TCP) on {addr} (`listen_http2`): {source}")]
    Http2 {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: TransportError,
    },
    /// A binding's listener could not be bound.
    #[error("binding {binding:?}: cannot listen on {addr}: {source}")]
    BindingListen {
        /// The binding.
        binding: String,
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin listener could not be bound.
    #[error("admin listener: cannot listen on {addr}: {source}")]
    AdminListen {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The async runtime (or its signal handlers) could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// No address to put into tokens.
    #[error(
        "no edge address for tokens: listen is {0}, which connectors cannot dial; set \
         public_addresses in the config"
    )]
    NoPublicAddress(SocketAddr),
    /// A command needs the running edge's admin listener, and the config has none.
    #[error(
        "the config has no admin listener; add `[admin]` with `listen = \"127.0.0.1:20242\"` \
         and restart the edge"
    )]
    NoAdmin,
    /// The running edge's admin listener could not answer.
    #[error("{0}")]
    Admin(String),
    /// A tunnel reference that is neither a tunnel name nor an id.
    #[error("{0:?} is not a tunnel name or id (A-Z a-z 0-9 - _ .)")]
    BadTunnelReference(String),
    /// A live reload that cannot be applied; the running configuration is kept.
    #[error("{0}")]
    Reload(String),
    /// The directory database could not be opened or read.
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
}
