//! Data-stream headers and replies.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::codec::{FrameKind, Message};
use crate::status::ProxyStatus;

/// Reset/stop code: the peer went away or cancelled (client closed, request aborted).
pub const RESET_CANCELLED: u32 = 0x10;
/// Reset/stop code: the stream broke the protocol (bad header, oversized frame).
pub const RESET_PROTOCOL: u32 = 0x11;
/// Reset/stop code: an internal error on the sending side.
pub const RESET_INTERNAL: u32 = 0x12;

/// The first frame on every data stream, sent by the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamHeader {
    /// An HTTP exchange (`fetch()`).
    Http(HttpRequestHead),
    /// A raw TCP connection (`connect()`).
    Tcp(TcpConnect),
}

/// A destination host: an IP literal or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name, to be resolved by the connector inside the private network.
    Name(String),
}

/// Where the connector should dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialTarget {
    /// Host to dial.
    pub host: Host,
    /// TCP port to dial.
    pub port: u16,
    /// Resolvers to use for a [`Host::Name`] (a VPC Service's `resolver_ips`); empty means
    /// the connector's own resolver configuration.
    pub resolvers: Vec<SocketAddr>,
}

/// A TCP connect: the connector checks the target against its routes, dials, replies
/// [`StreamReply::TcpAccepted`] and then pipes bytes both ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnect {
    /// The destination.
    pub target: DialTarget,
}

/// URL scheme of an HTTP exchange: whether the origin speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheme {
    /// Plain HTTP to the origin.
    Http,
    /// TLS to the origin, with SNI from the authority's host.
    Https,
}

/// How the connector verifies an HTTPS origin's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TlsVerification {
    /// Chain and name (the default).
    #[default]
    VerifyFull,
    /// Chain only; the name is not checked.
    VerifyCa,
    /// Nothing is checked.
    Disabled,
}

/// How a message body is delimited on the stream.
///
/// The body bytes follow the head frame unframed; the body ends where the sender finishes
/// its direction of the stream. The length here is advisory (for the `Content-Length` the
/// other side writes); a mismatch is a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// A body of exactly this many bytes.
    Length(u64),
    /// A body of unknown length (chunked on HTTP/1.1).
    Streaming,
    /// The request asks for a protocol upgrade: after a `101` reply the stream is a raw pipe.
    Upgrade,
}

/// One HTTP header field. Values are bytes: HTTP allows non-UTF-8 (obs-text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Field name, lowercase.
    pub name: String,
    /// Field value.
    pub value: Vec<u8>,
}

/// The head of an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequestHead {
    /// Request method (`GET`, `POST`, ...).
    pub method: String,
    /// Whether the origin speaks TLS.
    pub scheme: Scheme,
    /// `host[:port]` from the URL: fills `Host` (unless a `Host` header is present) and SNI.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// End-to-end request headers (hop-by-hop headers already removed).
    pub headers: Vec<Header>,
    /// An explicit dial target (VPC Service binding); `None` means dial the authority (VPC
    /// Network binding).
    pub dial: Option<DialTarget>,
    /// Origin certificate verification for [`Scheme::Https`].
    pub tls: TlsVerification,
    /// Extra trust anchors (PEM) for verifying the origin, if the service has a CA bundle.
    pub ca_pem: Option<String>,
    /// How the request body is delimited.
    pub body: BodyKind,
}

/// The head of an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponseHead {
    /// Status code.
    pub status: u16,
    /// End-to-end response headers.
    pub headers: Vec<Header>,
    /// How the response body is delimited.
    pub body: BodyKind,
}

/// The connector could not complete the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyErrorReply {
    /// RFC 9209 error type.
    pub status: ProxyStatus,
    /// Human-readable detail (goes into the `details` parameter of `Proxy-Status`).
    pub details: String,
}

/// The connector's answer on a data stream, sent once, before any body bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamReply {
    /// The origin's response head; the body follows.
    Http(HttpResponseHead),
    /// The TCP connection is open; raw bytes follow in both directions.
    TcpAccepted,
    /// The request failed; the connector finishes the stream after this frame.
    Error(ProxyErrorReply),
}

impl Message for StreamHeader {
    const KIND: FrameKind = FrameKind::StreamHeader;
}

impl Message for StreamReply {
    const KIND: FrameKind = FrameKind::StreamReply;
}
