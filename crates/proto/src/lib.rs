//! The Underpass wire format: everything that crosses between edge and connector.
//!
//! This crate has no I/O, no clock and no async runtime. It defines:
//!
//! - [`ControlMessage`]: registration, drain notices and heartbeats on the control stream;
//! - [`StreamHeader`]: the first frame of every data stream (an HTTP exchange or a TCP connect);
//! - [`StreamReply`]: the connector's answer on that stream;
//! - [`ProxyStatus`]: the RFC 9209 Proxy-Status error types;
//! - [`OriginPolicy`]: a VPC Service's origin policy, sent once per connection;
//! - [`CloseCode`]: why a connection between edge and connector was closed;
//! - [`authority`]: the one parser of `host:port`, host names and resolver addresses;
//! - the framing codec ([`encode`], [`decode`]) shared by all of them.
//!
//! See `docs/protocol.md` for the byte layout and the stream lifecycle.
#![forbid(unsafe_code)]

pub mod authority;
mod bounded;
mod close;
mod codec;
mod control;
mod policy;
mod status;
mod stream;
mod token;

pub use close::CloseCode;
pub use codec::{decode, encode, DecodeError, Decoded, EncodeError, FrameKind, Message};
pub use codec::{FRAME_HEADER_LEN, MAX_FRAME_LEN, PROTOCOL_VERSION};
pub use control::{
    AnnouncedRoute, ConnectorId, ControlMessage, Drain, Heartbeat, RefuseReason, Register,
    RegisterAccepted, RegisterRefused, RoutesUpdate, ServicePolicy, ServicePolicyCa, TunnelId,
    REGISTRATION_EXPORTER_LABEL,
};
pub use policy::{OriginPolicy, PolicyAssembler, PolicyError, CA_CHUNK_LEN, MAX_CA_BUNDLE_LEN};
pub use status::{ProxyStatus, UnknownProxyStatus};
pub use stream::{
    BodyKind, DialTarget, Header, Host, HttpRequestHead, HttpResponseHead, Origin, ProxyErrorReply,
    RequestId, Scheme, ServiceId, ServiceRef, StreamHeader, StreamReply, TcpConnect,
    TlsVerification, RESET_CANCELLED, RESET_INTERNAL, RESET_PROTOCOL,
};
pub use token::{TokenError, TunnelSecret, TunnelToken, TOKEN_PREFIX};
