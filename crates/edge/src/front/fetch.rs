//! `fetch()` through a binding: an absolute-form HTTP/1.1 request becomes an HTTP exchange on
//! a stream to the connector.
//!
//! What workerd sends (behaviour-facts §3): `GET http://host/path` with no `Host` header
//! unless the Worker set one; `https://` in the request line means the *origin* speaks TLS,
//! while this hop stays plaintext on loopback. A VPC Service binding always reaches the
//! service's configured host and port: the stream header names only the service and its policy
//! generation ([`Origin::Service`]), the connector has the policy; the URL's host only fills
//! `Host` and SNI and its port is ignored. A VPC Network binding dials the URL's host and port.

use std::net::IpAddr;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tracing::{debug, info_span, Instrument};
use underpass_mux::http::{body_kind, headers_to_wire, send_body, wire_to_headers, RecvBody};
use underpass_mux::{open_http, MuxError};
use underpass_proto::{
    BodyKind, DialTarget, Host, HttpRequestHead, Origin, ProxyStatus, Scheme, StreamReply,
    RESET_CANCELLED,
};
use underpass_transport::{Connection, SendStream};

use super::context::{mux_error_status, FrontContext, Slot};
use super::response::{empty, error_response, error_response_with, FetchBody};
use super::splice::splice_upgrade;
use crate::model::{Binding, BindingTarget};

/// The shortest wait for the connector's answer to a `fetch()`, counted from the end of the
/// request body (an origin answers an upload only once it has all of it, however long the
/// upload takes). The connector has its own connect and response-header timeouts (60 s by
/// default, restarted by upload progress); this only catches a stuck one.
const MIN_REPLY_TIMEOUT: Duration = Duration::from_secs(90);

/// `fetch()`: an HTTP request in absolute form, forwarded as one exchange over a stream.
pub(super) async fn handle<C: Connection>(
    request: Request<Incoming>,
    binding: &Binding,
    context: &FrontContext<C>,
    slot: Slot,
) -> Response<FetchBody> {
    let url = match parse_absolute(request.uri()) {
        Ok(url) => url,
        Err(details) => {
            debug!(method = %request.method(), uri = %request.uri(), "refused a request");
            return error_response_with(
                StatusCode::BAD_REQUEST,
                ProxyStatus::HttpRequestError,
                &details,
            );
        }
    };
    if let BindingTarget::Service(service) = &binding.target {
        if service.is_tcp() {
            return error_response_with(
                StatusCode::METHOD_NOT_ALLOWED,
                ProxyStatus::HttpRequestDenied,
                &format!(
                    "service {} is a TCP service: use connect(), not fetch()",
                    service.name
                ),
            );
        }
    }
    let (tunnel, picked) = match context.pick(binding) {
        Ok(pair) => pair,
        Err(details) => return error_response(ProxyStatus::DestinationUnavailable, &details),
    };
    let span = info_span!(
        "fetch",
        tunnel = %tunnel.name,
        connection = picked.connection_id,
        method = %request.method(),
        uri = %request.uri(),
    );
    let exchange = Exchange {
        target: &binding.target,
        url,
        context,
        slot,
    };
    exchange
        .forward(&picked.conn, request)
        .instrument(span)
        .await
}

/// The parts of an absolute-form request target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AbsoluteTarget {
    /// URL scheme.
    scheme: Scheme,
    /// `host[:port]` as written in the URL.
    authority: String,
    /// The URL's host (brackets removed for IPv6).
    host: Host,
    /// The URL's port, if written.
    port: Option<u16>,
    /// Path and query, `/` if empty.
    path: String,
}

/// Parse the request target of a `fetch()`: it must be absolute (`http://host/path`).
fn parse_absolute(uri: &http::Uri) -> Result<AbsoluteTarget, String> {
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some(other) => return Err(format!("unsupported URL scheme {other:?}")),
        None => {
            return Err(
                "this is a forward proxy: the request line needs an absolute URL \
                        (GET http://host/path), as fetch() sends it"
                    .to_owned(),
            )
        }
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

/// Build the request head for `url` according to the binding's semantics.
fn request_head(
    target: &BindingTarget,
    url: AbsoluteTarget,
    method: &http::Method,
    headers: &http::HeaderMap,
    body: BodyKind,
    upgrade: bool,
) -> HttpRequestHead {
    let (scheme, origin) = match target {
        BindingTarget::Network(_) => {
            let port = url.port.unwrap_or_else(|| default_port(url.scheme));
            let dial = DialTarget {
                host: url.host.clone(),
                port,
                resolvers: Vec::new(),
            };
            (url.scheme, Origin::Dial(dial))
        }
        BindingTarget::Service(service) => {
            // Setting only one of the ports forces that scheme; the connector takes the port
            // for it from the policy.
            let scheme = service.http_scheme(url.scheme).unwrap_or(url.scheme);
            (scheme, Origin::Service(service.service_ref()))
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
        origin,
        body: if upgrade { BodyKind::Upgrade } else { body },
    }
}

/// Whether a request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && req.headers().contains_key(header::UPGRADE)
}

/// One `fetch()` on its way to a connector.
struct Exchange<'a, C> {
    target: &'a BindingTarget,
    url: AbsoluteTarget,
    context: &'a FrontContext<C>,
    /// Kept by an upgrade's pipe: the client connection stays counted while it runs.
    slot: Slot,
}

impl<C: Connection> Exchange<'_, C> {
    /// Forward the request over `conn` and build the client's response. The stream carries
    /// the connection's lease, so the connection counts as busy until the response body (or
    /// the upload, or the upgrade's pipe) is done.
    async fn forward<L: Connection>(
        self,
        conn: &L,
        mut req: Request<Incoming>,
    ) -> Response<FetchBody> {
        let shutdown = &self.context.shutdown;
        let upgrade = is_upgrade_request(&req);
        let kind = body_kind(&req.body().size_hint(), req.body().is_end_stream());
        let head = request_head(
            self.target,
            self.url,
            req.method(),
            req.headers(),
            kind,
            upgrade,
        );
        debug!(method = %head.method, authority = %head.authority, path = %head.path, "fetch");
        let limit = self.context.connect_timeout.max(MIN_REPLY_TIMEOUT);
        let (mut send, mut reader) = match open_http(conn, head).await {
            Ok(pair) => pair,
            Err(error) => {
                let (status, details) = mux_error_status(error, limit);
                return error_response(status, &details);
            }
        };
        // For an upgrade the client's connection comes later (after the 101) and the send half
        // waits for it; otherwise the body is pumped in its own tracked task.
        let mut upgrade_parts = None;
        // With an upload: resolves once the request body has been sent (or has failed).
        let mut body_sent = None;
        if upgrade {
            upgrade_parts = Some((hyper::upgrade::on(&mut req), send));
        } else if kind == BodyKind::Empty {
            // No body (most GETs): finish now, so the FIN leaves in the header's packet and no
            // task is spawned. If the stream is already gone, reading the reply says so.
            if let Err(err) = send.finish() {
                debug!(error = %err, "stream closed before the request was finished");
            }
        } else {
            let body = req.into_body();
            let forced = shutdown.forced();
            let (uploading, sent) = tokio::sync::oneshot::channel::<()>();
            body_sent = Some(sent);
            shutdown.spawn(async move {
                // A client that goes away mid-upload makes the body fail: send_body resets
                // the stream so the connector aborts the origin request. Cut by the end of
                // the grace period, the send half is dropped unfinished, which resets it.
                tokio::select! {
                    sent = send_body(body, &mut send) => if let Err(err) = sent {
                        debug!(error = %err, "request body ended early");
                    },
                    () = forced => debug!("grace period over; upload cut"),
                }
                drop(uploading);
            });
        }
        let deadline = async {
            if let Some(sent) = body_sent {
                // Sent or failed: either way the wait for the answer starts now.
                let _ = sent.await;
            }
            tokio::time::sleep(limit).await;
        };
        let reply = tokio::select! {
            reply = reader.expect::<StreamReply>() => reply,
            () = deadline => Err(MuxError::Timeout(limit)),
        };
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                reader.stop(RESET_CANCELLED);
                let status = match err {
                    MuxError::Timeout(_) => ProxyStatus::ConnectionReadTimeout,
                    _ => ProxyStatus::ConnectionTerminated,
                };
                return error_response(status, &format!("no answer from the connector: {err}"));
            }
        };
        let head = match reply {
            StreamReply::Error(refusal) => return error_response(refusal.status, &refusal.details),
            StreamReply::TcpAccepted => {
                reader.stop(RESET_CANCELLED);
                return error_response(
                    ProxyStatus::ProxyInternalError,
                    "connector answered an HTTP request with a TCP reply",
                );
            }
            StreamReply::Http(head) => head,
        };
        if let Some((on_upgrade, mut send)) = upgrade_parts {
            if head.status == 101 {
                let mut response = Response::new(empty());
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                *response.headers_mut() = wire_to_headers(&head.headers);
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                let recv = reader.into_body();
                let (pipe_shutdown, slot) = (shutdown.clone(), self.slot);
                shutdown.spawn(async move {
                    splice_upgrade(on_upgrade, send, recv, &pipe_shutdown).await;
                    drop(slot);
                });
                return response;
            }
            // The origin declined the upgrade: the request had no body, end it cleanly.
            if let Err(err) = send.finish() {
                debug!(error = %err, "stream closed before the request was finished");
            }
        }
        let status = match StatusCode::from_u16(head.status) {
            Ok(status) if head.status >= 200 || head.status == 101 => status,
            _ => {
                reader.stop(RESET_CANCELLED);
                return error_response(
                    ProxyStatus::HttpProtocolError,
                    &format!("origin answered with status {}", head.status),
                );
            }
        };
        // The body holds the stream's receiving half, and with it the connection's lease,
        // until the client has read the last byte or gone away.
        let body = RecvBody::new(reader.into_body(), head.body);
        let mut response = Response::new(body.map_err(|e| e.into()).boxed_unsync());
        *response.status_mut() = status;
        *response.headers_mut() = wire_to_headers(&head.headers);
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::tests::http_service;
    use crate::model::{Network, TunnelRef};

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
    fn service_binding_names_the_service_only() {
        let service = Arc::new(http_service("api", Some(8080), None));
        let url = target("https://internal-api.company.local:9999/users").unwrap();
        let head = request_head(
            &BindingTarget::Service(service.clone()),
            url,
            &http::Method::GET,
            &http::HeaderMap::new(),
            BodyKind::Empty,
            false,
        );
        assert_eq!(head.origin, Origin::Service(service.service_ref()));
        // Only http_port is set: http is forced even for an https URL.
        assert_eq!(head.scheme, Scheme::Http);
        assert_eq!(head.authority, "internal-api.company.local:9999");
    }

    #[test]
    fn network_binding_dials_the_url() {
        let network = Arc::new(Network {
            name: "corp".into(),
            tunnel: TunnelRef::new("prod"),
        });
        let url = target("https://db.internal/x").unwrap();
        let head = request_head(
            &BindingTarget::Network(network),
            url,
            &http::Method::POST,
            &http::HeaderMap::new(),
            BodyKind::Length(3),
            false,
        );
        let Origin::Dial(dial) = head.origin else {
            panic!("a network binding dials");
        };
        assert_eq!(
            (dial.host, dial.port),
            (Host::Name("db.internal".into()), 443)
        );
        assert_eq!(head.body, BodyKind::Length(3));
    }
}
