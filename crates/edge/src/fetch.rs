//! `fetch()` through a binding: an absolute-form HTTP/1.1 request becomes an HTTP exchange on
//! a stream to the connector.
//!
//! What workerd sends (behaviour-facts §3): `GET http://host/path` with no `Host` header
//! unless the Worker set one; `https://` in the request line means the *origin* speaks TLS,
//! while this hop stays plaintext on loopback. A VPC Service binding always dials the
//! service's configured host and port: the URL's host only fills `Host` and SNI, its port is
//! ignored. A VPC Network binding dials the URL's host and port.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, warn};
use underpass_mux::http::{body_kind, headers_to_wire, send_body, wire_to_headers, RecvBody};
use underpass_mux::{open_http, pipe_tcp, MuxError};
use underpass_proto::{
    BodyKind, DialTarget, Host, HttpRequestHead, ProxyStatus, Scheme, StreamReply, TlsVerification,
    RESET_CANCELLED, RESET_INTERNAL,
};
use underpass_transport::{Connection, RecvStream, SendStream};

/// The body type of every response the binding front writes.
pub type FetchBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Where a binding's `fetch()` goes.
#[derive(Debug, Clone)]
pub enum FetchTarget {
    /// VPC Network binding: the URL's host and port are the destination.
    Network,
    /// VPC Service binding: always the configured host; the port by scheme.
    Service {
        /// The service's host.
        host: Host,
        /// The service's `resolver_ips` (empty: the connector's resolvers).
        resolvers: Vec<SocketAddr>,
        /// `http_port`, if configured.
        http_port: Option<u16>,
        /// `https_port`, if configured.
        https_port: Option<u16>,
        /// Origin certificate verification.
        tls: TlsVerification,
        /// Extra trust anchors (PEM) for the origin.
        ca_pem: Option<String>,
    },
}

/// A response carrying an RFC 9209 `Proxy-Status` error.
pub fn proxy_error(status: ProxyStatus, details: &str) -> Response<FetchBody> {
    let mut response = Response::new(full(format!("{status}: {details}\n")));
    *response.status_mut() =
        StatusCode::from_u16(status.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&proxy_status_value(status, details)) {
        headers.insert("proxy-status", value);
    }
    response
}

/// The `Proxy-Status` field value: `underpass; error=<type>; details="<sf-string>"`.
pub fn proxy_status_value(status: ProxyStatus, details: &str) -> String {
    let mut escaped = String::with_capacity(details.len());
    for c in details.chars() {
        match c {
            '"' | '\\' => {
                escaped.push('\\');
                escaped.push(c);
            }
            // sf-string allows printable ASCII only.
            ' '..='~' => escaped.push(c),
            _ => escaped.push('?'),
        }
    }
    format!("underpass; error={}; details=\"{escaped}\"", status.token())
}

fn full(text: String) -> FetchBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The parts of an absolute-form request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsoluteTarget {
    /// URL scheme.
    pub scheme: Scheme,
    /// `host[:port]` as written in the URL.
    pub authority: String,
    /// The URL's host (brackets removed for IPv6).
    pub host: Host,
    /// The URL's port, if written.
    pub port: Option<u16>,
    /// Path and query, `/` if empty.
    pub path: String,
}

/// Parse the request target of a `fetch()`: it must be absolute (`http://host/path`).
pub fn parse_absolute(uri: &http::Uri) -> Result<AbsoluteTarget, String> {
    let scheme =
        match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => return Err(format!("unsupported URL scheme {other:?}")),
            None => return Err(
                "fetch() needs an absolute URL (http://host/path); got a relative request target"
                    .to_owned(),
            ),
        };
    let authority = uri
        .authority()
        .ok_or_else(|| "the URL has no host".to_owned())?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not supported".to_owned());
    }
    let raw_host = authority.host();
    if raw_host.is_empty() {
        return Err("the URL has no host".to_owned());
    }
    let unbracketed = raw_host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let host = match unbracketed {
        Some(v6) => Host::Ip(
            v6.parse::<IpAddr>()
                .map_err(|_| format!("invalid IPv6 address {raw_host:?}"))?,
        ),
        None => match raw_host.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(raw_host.to_ascii_lowercase()),
        },
    };
    let port = authority.port_u16();
    if port == Some(0) {
        return Err("port 0 is not a valid destination".to_owned());
    }
    let path = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    Ok(AbsoluteTarget {
        scheme,
        authority: authority.as_str().to_owned(),
        host,
        port,
        path,
    })
}

fn default_port(scheme: Scheme) -> u16 {
    match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    }
}

/// Build the request head for `target` according to the binding's semantics.
pub fn request_head(
    binding: &FetchTarget,
    url: AbsoluteTarget,
    method: &http::Method,
    headers: &http::HeaderMap,
    body: BodyKind,
    upgrade: bool,
) -> HttpRequestHead {
    let (scheme, dial, tls, ca_pem) = match binding {
        FetchTarget::Network => {
            let port = url.port.unwrap_or_else(|| default_port(url.scheme));
            let dial = DialTarget {
                host: url.host.clone(),
                port,
                resolvers: Vec::new(),
            };
            (url.scheme, dial, TlsVerification::VerifyFull, None)
        }
        FetchTarget::Service {
            host,
            resolvers,
            http_port,
            https_port,
            tls,
            ca_pem,
        } => {
            // Setting only one of the ports forces that scheme.
            let scheme = match (http_port, https_port) {
                (Some(_), None) => Scheme::Http,
                (None, Some(_)) => Scheme::Https,
                _ => url.scheme,
            };
            let port = match scheme {
                Scheme::Http => http_port.unwrap_or(80),
                Scheme::Https => https_port.unwrap_or(443),
            };
            let dial = DialTarget {
                host: host.clone(),
                port,
                resolvers: resolvers.clone(),
            };
            (scheme, dial, *tls, ca_pem.clone())
        }
    };
    // The URL's authority fills Host (and SNI); a port that is the scheme's default is not
    // written, as a browser would not write it either.
    let authority = match url.port {
        Some(port) if port == default_port(url.scheme) => match &url.host {
            Host::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        },
        _ => url.authority,
    };
    HttpRequestHead {
        method: method.as_str().to_owned(),
        scheme,
        authority,
        path: url.path,
        headers: headers_to_wire(headers, upgrade),
        dial: Some(dial),
        tls,
        ca_pem,
        body: if upgrade { BodyKind::Upgrade } else { body },
    }
}

/// Whether a request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && req.headers().contains_key(header::UPGRADE)
}

/// Forward one `fetch()` over `conn` and build the client's response.
///
/// `reply_timeout` bounds the wait for the connector's answer (it has its own, shorter,
/// connect and response-header timeouts, so this only fires when something is stuck).
pub async fn forward<C: Connection>(
    conn: &C,
    binding: &FetchTarget,
    req: Request<Incoming>,
    reply_timeout: Duration,
) -> Response<FetchBody> {
    let url = match parse_absolute(req.uri()) {
        Ok(url) => url,
        Err(details) => return proxy_error(ProxyStatus::HttpRequestError, &details),
    };
    let upgrade = is_upgrade_request(&req);
    let kind = body_kind(&req.body().size_hint(), req.body().is_end_stream());
    let head = request_head(binding, url, req.method(), req.headers(), kind, upgrade);
    debug!(method = %head.method, authority = %head.authority, path = %head.path, "fetch");
    let (mut send, mut reader) = match open_http(conn, head).await {
        Ok(pair) => pair,
        Err(err) => {
            return proxy_error(
                ProxyStatus::DestinationUnavailable,
                &format!("cannot open a stream to the connector: {err}"),
            )
        }
    };
    // For an upgrade the request is kept (its upgrade future yields the client's connection)
    // and the send half waits for the 101; otherwise the body is pumped in its own task.
    let (mut upgrade_parts, pumping) = if upgrade {
        (Some((req, send)), false)
    } else if kind == BodyKind::Empty {
        // No body (most GETs): finish now, so the FIN leaves in the header's packet and no
        // task is spawned. If the stream is already gone, reading the reply says so.
        if let Err(err) = send.finish() {
            debug!(error = %err, "stream closed before the request was finished");
        }
        (None, true)
    } else {
        let body = req.into_body();
        tokio::spawn(async move {
            // A client that goes away mid-upload makes the body fail: send_body resets the
            // stream so the connector aborts the origin request.
            if let Err(err) = send_body(body, &mut send).await {
                debug!(error = %err, "request body ended early");
            }
        });
        (None, true)
    };
    let reply = match reader.expect_within::<StreamReply>(reply_timeout).await {
        Ok(reply) => reply,
        Err(err) => {
            reader.stop(RESET_CANCELLED);
            let status = match err {
                MuxError::Timeout(_) => ProxyStatus::ConnectionReadTimeout,
                _ => ProxyStatus::ConnectionTerminated,
            };
            return proxy_error(status, &format!("no answer from the connector: {err}"));
        }
    };
    match reply {
        StreamReply::Error(refusal) => proxy_error(refusal.status, &refusal.details),
        StreamReply::TcpAccepted => {
            reader.stop(RESET_CANCELLED);
            proxy_error(
                ProxyStatus::ProxyInternalError,
                "connector answered an HTTP request with a TCP reply",
            )
        }
        StreamReply::Http(head) if head.status == 101 && !pumping => {
            let mut response = Response::new(full(String::new()));
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *response.headers_mut() = wire_to_headers(&head.headers);
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            let recv = reader.into_body();
            let Some((mut req, mut send)) = upgrade_parts.take() else {
                return proxy_error(ProxyStatus::ProxyInternalError, "upgrade state lost");
            };
            tokio::spawn(async move {
                match hyper::upgrade::on(&mut req).await {
                    Ok(upgraded) => splice_upgraded(upgraded, send, recv).await,
                    Err(err) => {
                        warn!(error = %err, "client upgrade failed");
                        send.reset(RESET_CANCELLED);
                    }
                }
            });
            response
        }
        StreamReply::Http(head) => {
            let status = match StatusCode::from_u16(head.status) {
                Ok(status) if head.status >= 200 || head.status == 101 => status,
                _ => {
                    reader.stop(RESET_CANCELLED);
                    return proxy_error(
                        ProxyStatus::HttpProtocolError,
                        &format!("origin answered with status {}", head.status),
                    );
                }
            };
            let body = RecvBody::new(reader.into_body(), head.body);
            let mut response = Response::new(body.map_err(|e| e.into()).boxed_unsync());
            *response.status_mut() = status;
            *response.headers_mut() = wire_to_headers(&head.headers);
            response
        }
    }
}

/// After a `101` (or a CONNECT's `200`), splice the client's connection with the stream.
pub(crate) async fn splice_upgraded<S: SendStream, R: RecvStream>(
    upgraded: hyper::upgrade::Upgraded,
    mut send: S,
    mut recv: R,
) {
    // hyper serves exactly the `TokioIo<TcpStream>` given to `serve_connection`, so the
    // downcast succeeds; the fallback only guards against a change in that setup.
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let stats = pipe_tcp(parts.io.into_inner(), Some(parts.read_buf), send, recv).await;
            debug!(
                up = stats.socket_to_stream,
                down = stats.stream_to_socket,
                outcome = ?stats.outcome,
                "client pipe ended"
            );
        }
        Err(_) => {
            warn!("upgraded client connection is not a TCP stream; closing the stream");
            send.reset(RESET_INTERNAL);
            recv.stop(RESET_INTERNAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str) -> Result<AbsoluteTarget, String> {
        parse_absolute(&uri.parse().unwrap())
    }

    #[test]
    fn parses_absolute_targets() {
        let t = target("http://internal-api.company.local:9999/users?x=1").unwrap();
        assert_eq!(t.scheme, Scheme::Http);
        assert_eq!(t.host, Host::Name("internal-api.company.local".into()));
        assert_eq!(t.port, Some(9999));
        assert_eq!(t.path, "/users?x=1");
        let t = target("https://[::1]:8443").unwrap();
        assert_eq!(t.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(t.path, "/");
        assert!(target("/relative").unwrap_err().contains("absolute URL"));
        assert!(target("ftp://x/").is_err());
        assert!(target("http://user:pw@x/").is_err());
    }

    #[test]
    fn service_binding_ignores_url_host_and_port() {
        let binding = FetchTarget::Service {
            host: Host::Ip("127.20.0.5".parse().unwrap()),
            resolvers: Vec::new(),
            http_port: Some(8080),
            https_port: None,
            tls: TlsVerification::VerifyFull,
            ca_pem: None,
        };
        let url = target("https://internal-api.company.local:9999/users").unwrap();
        let head = request_head(
            &binding,
            url,
            &http::Method::GET,
            &http::HeaderMap::new(),
            BodyKind::Empty,
            false,
        );
        let dial = head.dial.unwrap();
        assert_eq!(dial.port, 8080);
        assert_eq!(dial.host, Host::Ip("127.20.0.5".parse().unwrap()));
        // Only http_port is set: http is forced even for an https URL.
        assert_eq!(head.scheme, Scheme::Http);
        assert_eq!(head.authority, "internal-api.company.local:9999");
    }

    #[test]
    fn network_binding_dials_the_url() {
        let url = target("https://db.internal/x").unwrap();
        let head = request_head(
            &FetchTarget::Network,
            url,
            &http::Method::POST,
            &http::HeaderMap::new(),
            BodyKind::Length(3),
            false,
        );
        let dial = head.dial.unwrap();
        assert_eq!(
            (dial.host, dial.port),
            (Host::Name("db.internal".into()), 443)
        );
        assert_eq!(head.body, BodyKind::Length(3));
    }

    #[test]
    fn proxy_status_header_is_escaped() {
        let value = proxy_status_value(ProxyStatus::DnsError, "name \"x\" not found\n");
        assert_eq!(
            value,
            "underpass; error=dns_error; details=\"name \\\"x\\\" not found?\""
        );
        let response = proxy_error(ProxyStatus::ConnectionRefused, "closed port");
        assert_eq!(response.status(), 502);
    }
}
