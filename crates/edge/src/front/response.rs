//! The one builder of error responses: an RFC 9209 `Proxy-Status` header and the same text in
//! a short plain-text body, for humans.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use underpass_proto::ProxyStatus;

/// The proxy name written first in every `Proxy-Status` entry.
const PROXY_NAME: &str = "underpass";
/// The header's name.
const PROXY_STATUS: &str = "proxy-status";

/// The body type of every response the binding front writes.
pub(crate) type FetchBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// An error response with the status [`ProxyStatus::http_status`] maps `status` to.
pub(crate) fn error_response(status: ProxyStatus, details: &str) -> Response<FetchBody> {
    let code = StatusCode::from_u16(status.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    error_response_with(code, status, details)
}

/// An error response with an explicit HTTP status: `Proxy-Status: underpass;
/// error=<token>; details="<details>"` and `<token>: <details>` as a `text/plain` body.
pub(crate) fn error_response_with(
    code: StatusCode,
    status: ProxyStatus,
    details: &str,
) -> Response<FetchBody> {
    let mut response = Response::new(full(format!("{}: {details}\n", status.token())));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(PROXY_STATUS, header_value(status, details));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The bytes of [`error_response_with`]'s response with `Connection: close`, for the one
/// place that writes to the socket itself (the answer to a request head hyper refused).
pub(crate) fn error_response_bytes(
    code: StatusCode,
    status: ProxyStatus,
    details: &str,
) -> Vec<u8> {
    let body = format!("{}: {details}\n", status.token());
    let head = format!(
        "HTTP/1.1 {} {}\r\n{PROXY_STATUS}: {}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\ndate: {}\r\n\r\n",
        code.as_str(),
        code.canonical_reason().unwrap_or(""),
        // ASCII by construction (header_value).
        String::from_utf8_lossy(header_value(status, details).as_bytes()),
        body.len(),
        String::from_utf8_lossy(date_value().as_bytes()),
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// The current time as a `Date` value (RFC 9110 §6.6.1), formatted at most once a second
/// per thread. The edge writes `Date` itself rather than let hyper do it (see
/// `front::client_io`).
pub(crate) fn date_value() -> HeaderValue {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            // An HTTP date is fixed-format ASCII.
            let value = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            *cached = (second, value);
        }
        cached.1.clone()
    })
}

/// `underpass; error=<token>; details="<details>"`, with `details` escaped as an RFC 8941
/// sf-string.
fn header_value(status: ProxyStatus, details: &str) -> HeaderValue {
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
fn sf_string(text: &str) -> String {
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

/// An empty body.
pub(crate) fn empty() -> FetchBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body of `text`.
fn full(text: String) -> FetchBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_details() {
        assert_eq!(sf_string(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(sf_string("tab\there é"), "\"tab?here ?\"");
        let value = header_value(ProxyStatus::DnsError, "name \"x\" not found\n");
        assert_eq!(
            value.to_str().unwrap(), // ASCII by construction
            r#"underpass; error=dns_error; details="name \"x\" not found?""#
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
        let internal = error_response(ProxyStatus::ProxyInternalError, "encode");
        assert_eq!(internal.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn raw_error_response_is_one_complete_answer() {
        let bytes = error_response_bytes(
            StatusCode::URI_TOO_LONG,
            ProxyStatus::HttpRequestError,
            "too \"long\"",
        );
        let text = String::from_utf8(bytes).unwrap(); // ASCII by construction
        let (head, body) = text.split_once("\r\n\r\n").unwrap(); // one head, then the body
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains(
            "\r\nproxy-status: underpass; error=http_request_error; details=\"too \\\"long\\\"\"\r\n"
        ), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.contains("\r\ndate: "), "{head}");
        assert_eq!(body, "http_request_error: too \"long\"\n");
    }
}
