//! RFC 9209 Proxy-Status error types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An RFC 9209 Proxy-Status error type: why the proxy could not complete a request.
///
/// Carried end to end: the connector sends it in a [`crate::StreamReply::Error`], the edge puts
/// its [`token`](ProxyStatus::token) in the `Proxy-Status` response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProxyStatus {
    /// The destination refused the TCP connection.
    ConnectionRefused,
    /// The connection to the destination was closed or reset unexpectedly.
    ConnectionTerminated,
    /// The TCP handshake with the destination timed out.
    ConnectionTimeout,
    /// A limit on concurrent connections or streams was reached.
    ConnectionLimitReached,
    /// No way to reach the destination right now (for example no connector online).
    DestinationUnavailable,
    /// The destination name is not known or not routed.
    DestinationNotFound,
    /// The destination IP is denied or not inside any route.
    DestinationIpProhibited,
    /// The destination IP cannot be reached (no route to host, network unreachable).
    DestinationIpUnroutable,
    /// The request would loop back through the proxy.
    ProxyLoopDetected,
    /// DNS resolution failed (NXDOMAIN, SERVFAIL, no addresses).
    DnsError,
    /// DNS resolution timed out.
    DnsTimeout,
    /// The TLS handshake with the destination failed for a protocol reason.
    TlsProtocolError,
    /// The destination's TLS certificate failed verification.
    TlsCertificateError,
    /// The client's request was malformed.
    HttpRequestError,
    /// The destination refused a protocol upgrade.
    HttpUpgradeFailed,
    /// The request was refused by policy.
    HttpRequestDenied,
    /// The destination's HTTP response was malformed.
    HttpProtocolError,
    /// The destination's response ended before it was complete.
    HttpResponseIncomplete,
    /// Reading from the destination timed out.
    ConnectionReadTimeout,
    /// Writing to the destination timed out.
    ConnectionWriteTimeout,
    /// The request was rate limited.
    RateLimited,
    /// The proxy itself failed.
    ProxyInternalError,
}

impl ProxyStatus {
    /// Every error type, in declaration order.
    pub const ALL: [ProxyStatus; 22] = [
        ProxyStatus::ConnectionRefused,
        ProxyStatus::ConnectionTerminated,
        ProxyStatus::ConnectionTimeout,
        ProxyStatus::ConnectionLimitReached,
        ProxyStatus::DestinationUnavailable,
        ProxyStatus::DestinationNotFound,
        ProxyStatus::DestinationIpProhibited,
        ProxyStatus::DestinationIpUnroutable,
        ProxyStatus::ProxyLoopDetected,
        ProxyStatus::DnsError,
        ProxyStatus::DnsTimeout,
        ProxyStatus::TlsProtocolError,
        ProxyStatus::TlsCertificateError,
        ProxyStatus::HttpRequestError,
        ProxyStatus::HttpUpgradeFailed,
        ProxyStatus::HttpRequestDenied,
        ProxyStatus::HttpProtocolError,
        ProxyStatus::HttpResponseIncomplete,
        ProxyStatus::ConnectionReadTimeout,
        ProxyStatus::ConnectionWriteTimeout,
        ProxyStatus::RateLimited,
        ProxyStatus::ProxyInternalError,
    ];

    /// The RFC 9209 token, as written in a `Proxy-Status` header.
    pub fn token(self) -> &'static str {
        match self {
            ProxyStatus::ConnectionRefused => "connection_refused",
            ProxyStatus::ConnectionTerminated => "connection_terminated",
            ProxyStatus::ConnectionTimeout => "connection_timeout",
            ProxyStatus::ConnectionLimitReached => "connection_limit_reached",
            ProxyStatus::DestinationUnavailable => "destination_unavailable",
            ProxyStatus::DestinationNotFound => "destination_not_found",
            ProxyStatus::DestinationIpProhibited => "destination_ip_prohibited",
            ProxyStatus::DestinationIpUnroutable => "destination_ip_unroutable",
            ProxyStatus::ProxyLoopDetected => "proxy_loop_detected",
            ProxyStatus::DnsError => "dns_error",
            ProxyStatus::DnsTimeout => "dns_timeout",
            ProxyStatus::TlsProtocolError => "tls_protocol_error",
            ProxyStatus::TlsCertificateError => "tls_certificate_error",
            ProxyStatus::HttpRequestError => "http_request_error",
            ProxyStatus::HttpUpgradeFailed => "http_upgrade_failed",
            ProxyStatus::HttpRequestDenied => "http_request_denied",
            ProxyStatus::HttpProtocolError => "http_protocol_error",
            ProxyStatus::HttpResponseIncomplete => "http_response_incomplete",
            ProxyStatus::ConnectionReadTimeout => "connection_read_timeout",
            ProxyStatus::ConnectionWriteTimeout => "connection_write_timeout",
            ProxyStatus::RateLimited => "rate_limited",
            ProxyStatus::ProxyInternalError => "proxy_internal_error",
        }
    }

    /// The HTTP status the edge answers with when this error ends a request.
    ///
    /// Timeouts are 504, "try later" conditions 503, a malformed client request 400, an
    /// internal failure 500, everything else 502.
    pub fn http_status(self) -> u16 {
        match self {
            ProxyStatus::ConnectionTimeout
            | ProxyStatus::DnsTimeout
            | ProxyStatus::ConnectionReadTimeout
            | ProxyStatus::ConnectionWriteTimeout => 504,
            ProxyStatus::DestinationUnavailable
            | ProxyStatus::ConnectionLimitReached
            | ProxyStatus::RateLimited => 503,
            ProxyStatus::HttpRequestError => 400,
            ProxyStatus::ProxyInternalError => 500,
            _ => 502,
        }
    }
}

impl fmt::Display for ProxyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// A string that is not one of the RFC 9209 error types this crate knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Proxy-Status error type {0:?}")]
pub struct UnknownProxyStatus(pub String);

impl FromStr for ProxyStatus {
    type Err = UnknownProxyStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProxyStatus::ALL
            .into_iter()
            .find(|status| status.token() == s)
            .ok_or_else(|| UnknownProxyStatus(s.to_owned()))
    }
}
