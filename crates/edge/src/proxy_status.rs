//! RFC 9209 `Proxy-Status` headers and the error responses that carry them.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use underpass_proto::ProxyStatus;

use crate::fetch::FetchBody;

/// The proxy name written first in every `Proxy-Status` entry.
pub const PROXY_NAME: &str = "underpass";
/// The header's name.
pub const PROXY_STATUS: &str = "proxy-status";

/// `underpass; error=<token>; details="<details>"`, with `details` escaped as an RFC 8941
/// sf-string.
pub fn header_value(status: ProxyStatus, details: &str) -> HeaderValue {
    let value = format!(
        "{PROXY_NAME}; error={}; details={}",
        status.token(),
        sf_string(details)
    );
    // sf_string only emits printable ASCII, and the rest is fixed ASCII text.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(PROXY_NAME))
}

/// Quote `text` as an RFC 8941 sf-string: `"` and `\` are escaped with `\`; characters an
/// sf-string cannot hold (controls, non-ASCII) become `?`.
pub fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// An error response: `status.http_status()`, a `Proxy-Status` header, and the same text in a
/// short plain-text body for humans.
pub fn error_response(status: ProxyStatus, details: &str) -> Response<FetchBody> {
    let code = StatusCode::from_u16(status.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    error_response_with(code, status, details)
}

/// Like [`error_response`] with an explicit HTTP status.
pub fn error_response_with(
    code: StatusCode,
    status: ProxyStatus,
    details: &str,
) -> Response<FetchBody> {
    let body = Full::new(Bytes::from(format!("{}: {details}\n", status.token())))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(PROXY_STATUS, header_value(status, details));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_details() {
        assert_eq!(sf_string(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(sf_string("tab\there é"), "\"tab?here ?\"");
        let value = header_value(ProxyStatus::DestinationUnavailable, "no \"connector\"");
        assert_eq!(
            value.to_str().unwrap(), // ASCII by construction
            r#"underpass; error=destination_unavailable; details="no \"connector\"""#
        );
    }

    #[test]
    fn response_uses_the_mapped_status() {
        let response = error_response(ProxyStatus::ConnectionTimeout, "slow");
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(response.headers()[PROXY_STATUS]
            .to_str()
            .unwrap() // ASCII by construction
            .contains("error=connection_timeout"));
    }
}
