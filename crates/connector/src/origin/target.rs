//! What a request head asks of the origin: where to dial, which `Host` and SNI to send, and
//! the request hyper writes; plus a request body that reports its progress.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, UPGRADE};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use rustls_pki_types::ServerName;
use tokio::sync::watch;
use underpass_mux::http::wire_to_headers;
use underpass_proto::{
    BodyKind, DialTarget, Host, HttpRequestHead, ProxyErrorReply, ProxyStatus, Scheme,
};
use underpass_transport::StreamError;

use super::pool::{OriginBody, PoolKey, TlsKey};
use super::tls::VerifyMode;
use crate::policy::ServiceOrigin;

/// Where an exchange goes: what the stream's head names, with a service's policy resolved.
pub(crate) enum Destination {
    /// A VPC Network: dial this target; an https origin is verified in full against the
    /// system roots.
    Network(DialTarget),
    /// A VPC Service: its policy gives the host, the port for the scheme, the verification
    /// mode and the CA bundle.
    Service(Arc<ServiceOrigin>),
}

/// Where and how to reach the origin of one request.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// What the dialer dials.
    pub(crate) target: DialTarget,
    /// Which pooled connections fit (includes the TLS identity).
    pub(crate) key: PoolKey,
    /// `Host` to send when the request carries none: the URL's authority, minus a default
    /// port.
    pub(crate) host_header: HeaderValue,
    /// Whether the origin speaks TLS.
    pub(crate) scheme: Scheme,
}

fn request_error(details: String) -> ProxyErrorReply {
    ProxyErrorReply {
        status: ProxyStatus::HttpRequestError,
        details,
    }
}

fn default_port(scheme: Scheme) -> u16 {
    match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    }
}

impl Endpoint {
    /// The endpoint of `head` going to `destination`: a VPC Network's target, verified in
    /// full against the system roots when https; or a VPC Service's host and port for the
    /// head's scheme, verified as its policy says. The authority's host gives `Host` and, for
    /// https, the SNI (an IP literal sends no SNI and is checked against the certificate's IP
    /// SANs).
    pub(crate) fn new(
        head: &HttpRequestHead,
        destination: &Destination,
    ) -> Result<Self, ProxyErrorReply> {
        let authority: Authority = head
            .authority
            .parse()
            .map_err(|e| request_error(format!("invalid authority {:?}: {e}", head.authority)))?;
        if authority.as_str().contains('@') {
            return Err(request_error(
                "credentials in the URL are not supported".into(),
            ));
        }
        let raw_host = authority.host();
        let host = match raw_host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => Host::Ip(
                v6.parse::<IpAddr>()
                    .map_err(|_| request_error(format!("invalid IPv6 address {raw_host:?}")))?,
            ),
            None if raw_host.is_empty() => {
                return Err(request_error("the URL has no host".into()));
            }
            None => match raw_host.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => Host::Name(raw_host.to_ascii_lowercase()),
            },
        };
        let default = default_port(head.scheme);
        let (target, mode, ca) = match destination {
            Destination::Network(target) => (target.clone(), VerifyMode::Full, None),
            Destination::Service(service) => (
                service.policy().http_target(head.scheme),
                VerifyMode::from(service.policy().tls),
                service.ca().cloned(),
            ),
        };
        if target.port == 0 {
            return Err(request_error("port 0 is not a valid destination".into()));
        }
        let host_text = match authority.port_u16() {
            Some(port) if port != default => authority.as_str().to_owned(),
            _ => raw_host.to_owned(),
        };
        let host_header = HeaderValue::from_str(&host_text)
            .map_err(|_| request_error(format!("invalid host {host_text:?}")))?;
        let tls = match head.scheme {
            Scheme::Http => None,
            Scheme::Https => Some(TlsKey {
                server_name: match &host {
                    Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
                    Host::Name(name) => ServerName::try_from(name.clone()).map_err(|_| {
                        request_error(format!("{name:?} is not a valid TLS server name"))
                    })?,
                },
                mode,
                ca,
            }),
        };
        let key = PoolKey {
            host: target.host.clone(),
            port: target.port,
            resolvers: target.resolvers.clone(),
            tls,
        };
        Ok(Endpoint {
            target,
            key,
            host_header,
            scheme: head.scheme,
        })
    }
}

/// The request for `head`, in HTTP/1.1 form (origin-form target, `Host` header); see
/// [`fit_version`] for HTTP/2. `upgrade` adds `Connection: upgrade` (the `Upgrade` field
/// comes with the head).
pub(crate) fn build_request(
    head: &HttpRequestHead,
    endpoint: &Endpoint,
    body: OriginBody,
    upgrade: bool,
) -> Result<Request<OriginBody>, ProxyErrorReply> {
    let method = Method::from_bytes(head.method.as_bytes())
        .map_err(|_| request_error(format!("invalid method {:?}", head.method)))?;
    if method == Method::CONNECT {
        return Err(request_error(
            "CONNECT is not a fetch(); use connect() for TCP".into(),
        ));
    }
    let path: PathAndQuery = head
        .path
        .parse()
        .map_err(|e| request_error(format!("invalid path {:?}: {e}", head.path)))?;
    let asterisk_form = path == "*" && method == Method::OPTIONS;
    if !(path.as_str().starts_with('/') || asterisk_form) {
        return Err(request_error(format!(
            "the path {:?} must start with /",
            head.path
        )));
    }
    let mut headers = wire_to_headers(&head.headers);
    if !headers.contains_key(HOST) {
        headers.insert(HOST, endpoint.host_header.clone());
    }
    match head.body {
        BodyKind::Length(len) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        BodyKind::Empty => {
            if headers.contains_key(CONTENT_LENGTH) {
                headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
            }
        }
        // hyper writes chunked framing for a body of unknown length.
        BodyKind::Streaming | BodyKind::Upgrade => {
            headers.remove(CONTENT_LENGTH);
        }
    }
    if upgrade {
        if !headers.contains_key(UPGRADE) {
            return Err(request_error(
                "an upgrade request needs an Upgrade header".into(),
            ));
        }
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = Uri::from(path);
    *request.headers_mut() = headers;
    Ok(request)
}

/// Adapt a request to the connection's protocol. HTTP/2 carries the authority in the target
/// (`:authority`, taken from `Host`); HTTP/1.1 in `Host` with an origin-form target.
/// Either way round works, so a request given back by one connection fits another.
pub(crate) fn fit_version(request: &mut Request<OriginBody>, http2: bool, scheme: Scheme) {
    if http2 {
        *request.version_mut() = Version::HTTP_2;
        if request.uri().authority().is_some() {
            return;
        }
        let Some(authority) = request
            .headers()
            .get(HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        else {
            return;
        };
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(match scheme {
            Scheme::Http => http::uri::Scheme::HTTP,
            Scheme::Https => http::uri::Scheme::HTTPS,
        });
        parts.authority = Some(authority);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
            request.headers_mut().remove(HOST);
        }
    } else {
        *request.version_mut() = Version::HTTP_11;
        let Some(authority) = request.uri().authority().cloned() else {
            return;
        };
        if !request.headers().contains_key(HOST) {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                request.headers_mut().insert(HOST, value);
            }
        }
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
    }
}

/// Where the request body stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upload {
    /// Still flowing; this many bytes so far.
    Sending(u64),
    /// Complete.
    Done(u64),
    /// The edge side failed (its client went away, or the stream was reset).
    Failed(String),
}

/// A request body that publishes its progress, so that the exchange can tell an upload that
/// is alive from a stalled origin, and notice at once when the edge aborts the upload.
pub(crate) struct WatchedBody<B> {
    inner: B,
    sent: u64,
    progress: watch::Sender<Upload>,
    /// Bytes handed to the origin connection, read by the [`UploadWatch`] after the body is
    /// gone.
    total: Arc<AtomicU64>,
}

/// Wrap `body`; the receiver follows its progress.
pub(crate) fn watched<B>(body: B) -> (OriginBody, UploadWatch)
where
    B: Body<Data = Bytes, Error = StreamError> + Send + Unpin + 'static,
{
    let initial = if body.is_end_stream() {
        Upload::Done(0)
    } else {
        Upload::Sending(0)
    };
    let (progress, receiver) = watch::channel(initial);
    let total = Arc::new(AtomicU64::new(0));
    let body = WatchedBody {
        inner: body,
        sent: 0,
        progress,
        total: total.clone(),
    };
    (
        body.boxed_unsync(),
        UploadWatch {
            receiver: Some(receiver),
            total,
        },
    )
}

impl<B> Body for WatchedBody<B>
where
    B: Body<Data = Bytes, Error = StreamError> + Unpin,
{
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let update = match &polled {
            Poll::Pending => return polled,
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                self.sent += len;
                self.total.fetch_add(len, Ordering::Relaxed);
                Upload::Sending(self.sent)
            }
            Poll::Ready(None) => Upload::Done(self.sent),
            Poll::Ready(Some(Err(err))) => Upload::Failed(err.to_string()),
        };
        self.progress.send_replace(update);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Follows a [`WatchedBody`].
pub(crate) struct UploadWatch {
    receiver: Option<watch::Receiver<Upload>>,
    total: Arc<AtomicU64>,
}

impl UploadWatch {
    /// A watch that never reports anything (a request without a body stream).
    pub(crate) fn none() -> Self {
        UploadWatch {
            receiver: None,
            total: Arc::default(),
        }
    }

    /// Body bytes handed to the origin connection so far.
    pub(crate) fn sent(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The next change of the upload. Once the body is gone (sent or dropped) and its last
    /// state was seen, this never resolves.
    pub(crate) async fn changed(&mut self) -> Upload {
        if let Some(receiver) = self.receiver.as_mut() {
            if receiver.changed().await.is_ok() {
                return receiver.borrow_and_update().clone();
            }
            self.receiver = None;
        }
        std::future::pending().await
    }

    /// Whether the upload failed (as far as is known now).
    pub(crate) fn failure(&self) -> Option<String> {
        match self.receiver.as_ref().map(|r| r.borrow().clone()) {
            Some(Upload::Failed(reason)) => Some(reason),
            _ => None,
        }
    }

    /// Whether the whole body has been handed to the origin connection.
    pub(crate) fn is_done(&self) -> bool {
        match &self.receiver {
            Some(receiver) => matches!(*receiver.borrow(), Upload::Done(_)),
            // The body was dropped by hyper: either sent or abandoned with the connection.
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{Empty, Full};
    use underpass_proto::{Header, OriginPolicy, ServiceId, ServiceRef, TlsVerification};

    use super::*;

    fn head(scheme: Scheme, authority: &str) -> HttpRequestHead {
        HttpRequestHead {
            method: "GET".into(),
            scheme,
            authority: authority.into(),
            path: "/users?page=2".into(),
            headers: Vec::new(),
            origin: underpass_proto::Origin::Dial(DialTarget::new(Host::Name("x".into()), 1)),
            body: BodyKind::Empty,
            request_id: underpass_proto::RequestId(1),
        }
    }

    /// A VPC Network destination: what the edge puts in the head for this authority.
    fn network(host: Host, port: u16) -> Destination {
        Destination::Network(DialTarget::new(host, port))
    }

    fn service(ca: Option<&str>) -> Destination {
        Destination::Service(Arc::new(ServiceOrigin::new(OriginPolicy {
            service: ServiceRef {
                id: ServiceId([5; 16]),
                generation: 1,
            },
            name: "internal-api".into(),
            host: Host::Ip("127.0.0.5".parse().unwrap()), // literal
            resolvers: Vec::new(),
            http_port: None,
            https_port: Some(8443),
            tcp_port: None,
            tls: TlsVerification::VerifyCa,
            ca_pem: ca.map(str::to_owned),
        })))
    }

    fn empty() -> OriginBody {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    }

    fn any() -> Destination {
        network(Host::Name("x".into()), 80)
    }

    #[test]
    fn network_binding_dials_its_target_with_host_and_sni_from_the_authority() {
        let name = Host::Name("db.internal".into());
        let endpoint =
            Endpoint::new(&head(Scheme::Http, "db.internal"), &network(name, 80)).unwrap();
        assert_eq!(
            endpoint.target,
            DialTarget::new(Host::Name("db.internal".into()), 80)
        );
        assert_eq!(endpoint.host_header, "db.internal");
        assert!(endpoint.key.tls.is_none());

        let v6 = Host::Ip("::1".parse().unwrap()); // literal
        let endpoint =
            Endpoint::new(&head(Scheme::Https, "[::1]:8443"), &network(v6, 8443)).unwrap();
        assert_eq!(endpoint.target.port, 8443);
        assert_eq!(endpoint.host_header, "[::1]:8443");
        let tls = endpoint.key.tls.unwrap();
        assert!(matches!(tls.server_name, ServerName::IpAddress(_)));
        // A VPC Network is verified in full against the system roots only.
        assert_eq!((tls.mode, tls.ca), (VerifyMode::Full, None));

        let endpoint = Endpoint::new(&head(Scheme::Https, "API.example:443"), &any()).unwrap();
        assert_eq!(endpoint.host_header, "API.example");
    }

    #[test]
    fn service_binding_dials_the_policy_target() {
        let h = head(Scheme::Https, "internal-api.company.local:9999");
        let endpoint = Endpoint::new(&h, &service(Some("PEM"))).unwrap();
        assert_eq!(endpoint.target.port, 8443);
        assert_eq!(endpoint.target.host, Host::Ip("127.0.0.5".parse().unwrap()));
        assert_eq!(endpoint.host_header, "internal-api.company.local:9999");
        let tls = endpoint.key.tls.unwrap();
        assert_eq!(
            tls.server_name,
            ServerName::try_from("internal-api.company.local").unwrap()
        );
        assert_eq!(tls.mode, VerifyMode::Ca);
        assert_eq!(tls.ca.map(|ca| ca.pem().to_owned()).as_deref(), Some("PEM"));
        // Plain http to the same service: its http_port, or 80.
        let endpoint = Endpoint::new(&head(Scheme::Http, "internal-api"), &service(None)).unwrap();
        assert_eq!(endpoint.target.port, 80);
    }

    #[test]
    fn bad_heads_are_request_errors() {
        for authority in ["", "user@host", "[zz::1]", "bad host:x"] {
            let err = Endpoint::new(&head(Scheme::Http, authority), &any()).unwrap_err();
            assert_eq!(err.status, ProxyStatus::HttpRequestError, "{authority:?}");
        }
        let port_zero = network(Host::Name("host".into()), 0);
        let err = Endpoint::new(&head(Scheme::Http, "host:0"), &port_zero).unwrap_err();
        assert_eq!(err.status, ProxyStatus::HttpRequestError);
        let endpoint = Endpoint::new(&head(Scheme::Http, "x"), &any()).unwrap();
        let mut h = head(Scheme::Http, "x");
        h.path = "no-slash".into();
        assert!(build_request(&h, &endpoint, empty(), false).is_err());
        h.path = "/".into();
        h.method = "CONNECT".into();
        assert!(build_request(&h, &endpoint, empty(), false).is_err());
        h.method = "GET".into();
        assert!(build_request(&h, &endpoint, empty(), true).is_err());
    }

    #[test]
    fn request_headers_follow_the_body_kind() {
        let mut h = head(Scheme::Http, "api.local:8080");
        h.method = "POST".into();
        h.headers = vec![
            Header::new("Host", "explicit.example"),
            Header::new("content-length", "999"),
        ];
        h.body = BodyKind::Length(5);
        let endpoint = Endpoint::new(&h, &any()).unwrap();
        let body = Full::new(Bytes::from_static(b"hello"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let request = build_request(&h, &endpoint, body, false).unwrap();
        assert_eq!(request.headers()[HOST], "explicit.example");
        assert_eq!(request.headers()[CONTENT_LENGTH], "5");
        assert_eq!(request.uri(), "/users?page=2");

        h.body = BodyKind::Streaming;
        h.headers.clear();
        let request = build_request(&h, &endpoint, empty(), false).unwrap();
        assert!(!request.headers().contains_key(CONTENT_LENGTH));
        assert_eq!(request.headers()[HOST], "api.local:8080");
    }

    #[test]
    fn requests_fit_both_versions_both_ways() {
        let h = head(Scheme::Https, "api.local:8443");
        let endpoint = Endpoint::new(&h, &any()).unwrap();
        let mut request = build_request(&h, &endpoint, empty(), false).unwrap();
        fit_version(&mut request, true, Scheme::Https);
        assert_eq!(request.uri(), "https://api.local:8443/users?page=2");
        assert!(!request.headers().contains_key(HOST));
        fit_version(&mut request, false, Scheme::Https);
        assert_eq!(request.uri(), "/users?page=2");
        assert_eq!(request.headers()[HOST], "api.local:8443");
        assert_eq!(request.version(), Version::HTTP_11);
    }
}
