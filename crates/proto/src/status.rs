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
    /// The destination's response head (header section) is larger than the proxy can carry:
    /// more than one stream frame, or more than its HTTP client reads.
    HttpResponseHeaderSectionSize,
}

impl ProxyStatus {
    /// Every error type, in declaration order.
    pub const ALL: [ProxyStatus; 23] = [
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
        ProxyStatus::HttpResponseHeaderSectionSize,
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
            ProxyStatus::HttpResponseHeaderSectionSize => "http_response_header_section_size",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The list from the Workers VPC binding documentation, in its order, then the RFC 9209
    /// types added after it (appended: tags follow declaration order).
    const TOKENS: [&str; 23] = [
        "connection_refused",
        "connection_terminated",
        "connection_timeout",
        "connection_limit_reached",
        "destination_unavailable",
        "destination_not_found",
        "destination_ip_prohibited",
        "destination_ip_unroutable",
        "proxy_loop_detected",
        "dns_error",
        "dns_timeout",
        "tls_protocol_error",
        "tls_certificate_error",
        "http_request_error",
        "http_upgrade_failed",
        "http_request_denied",
        "http_protocol_error",
        "http_response_incomplete",
        "connection_read_timeout",
        "connection_write_timeout",
        "rate_limited",
        "proxy_internal_error",
        "http_response_header_section_size",
    ];

    #[test]
    fn token_and_from_str_agree_for_all_23() {
        for (status, token) in ProxyStatus::ALL.into_iter().zip(TOKENS) {
            assert_eq!(status.token(), token);
            assert_eq!(status.to_string(), token);
            assert_eq!(token.parse::<ProxyStatus>(), Ok(status));
        }
    }

    #[test]
    fn unknown_tokens_are_refused() {
        for text in [
            "",
            "DNS_ERROR",
            "dns_error ",
            "dns-error",
            "http_request_errors",
        ] {
            assert_eq!(
                text.parse::<ProxyStatus>(),
                Err(UnknownProxyStatus(text.to_owned()))
            );
        }
    }

    #[test]
    fn wire_tags_follow_declaration_order() {
        for (index, status) in ProxyStatus::ALL.into_iter().enumerate() {
            let bytes = postcard::to_stdvec(&status).unwrap(); // plain data encodes
            assert_eq!(bytes, [index as u8], "{status}");
            assert_eq!(postcard::from_bytes::<ProxyStatus>(&bytes), Ok(status));
        }
        assert!(postcard::from_bytes::<ProxyStatus>(&[23]).is_err());
    }

    #[test]
    fn http_status_mapping() {
        let expected: [(ProxyStatus, u16); 23] = [
            (ProxyStatus::ConnectionRefused, 502),
            (ProxyStatus::ConnectionTerminated, 502),
            (ProxyStatus::ConnectionTimeout, 504),
            (ProxyStatus::ConnectionLimitReached, 503),
            (ProxyStatus::DestinationUnavailable, 503),
            (ProxyStatus::DestinationNotFound, 502),
            (ProxyStatus::DestinationIpProhibited, 502),
            (ProxyStatus::DestinationIpUnroutable, 502),
            (ProxyStatus::ProxyLoopDetected, 502),
            (ProxyStatus::DnsError, 502),
            (ProxyStatus::DnsTimeout, 504),
            (ProxyStatus::TlsProtocolError, 502),
            (ProxyStatus::TlsCertificateError, 502),
            (ProxyStatus::HttpRequestError, 400),
            (ProxyStatus::HttpUpgradeFailed, 502),
            (ProxyStatus::HttpRequestDenied, 502),
            (ProxyStatus::HttpProtocolError, 502),
            (ProxyStatus::HttpResponseIncomplete, 502),
            (ProxyStatus::ConnectionReadTimeout, 504),
            (ProxyStatus::ConnectionWriteTimeout, 504),
            (ProxyStatus::RateLimited, 503),
            (ProxyStatus::ProxyInternalError, 500),
            (ProxyStatus::HttpResponseHeaderSectionSize, 502),
        ];
        for (index, (status, code)) in expected.into_iter().enumerate() {
            assert_eq!(status, ProxyStatus::ALL[index]);
            assert_eq!(status.http_status(), code, "{status}");
        }
    }
}
