//! A registered connector and the edge's end of its connection, for exchanges: every stream
//! the test opens goes through the real connector (stream dispatch, policy store, route
//! check, dialer, origin client). Routes: all of 127.0.0.0/8, every port, no deny list.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;
use underpass_connector::{Connector, ConnectorConfigBuilder, ConnectorHandle};
use underpass_mux::{open_http, Buffered, ControlChannel, FrameReader};
use underpass_proto::authority::parse_authority;
use underpass_proto::{
    BodyKind, DialTarget, Header, Host, HttpRequestHead, HttpResponseHead, Origin, OriginPolicy,
    ProxyErrorReply, Scheme, ServiceRef, StreamReply, TlsVerification,
};
use underpass_transport::{AnyConnection, AnyRecv, AnySend, RecvStream, SendStream, StreamError};

use super::edge::{self, TestEdge};
use super::origins;

/// Guard against hangs; never what decides a test.
pub const LIMIT: Duration = Duration::from_secs(10);

/// The edge's end of a registered connector's connection.
pub struct Tunnel {
    conn: AnyConnection,
    control: Mutex<ControlChannel<AnySend, AnyRecv>>,
    next_service: AtomicU8,
    connector: Option<ConnectorHandle>,
    _edge: TestEdge,
}

impl Tunnel {
    /// A connector with the default settings.
    pub async fn start() -> Tunnel {
        Tunnel::with(|config| config).await
    }

    /// A connector whose configuration `configure` adjusts (`origin_http2`, timeouts).
    pub async fn with(
        configure: impl FnOnce(ConnectorConfigBuilder) -> ConnectorConfigBuilder,
    ) -> Tunnel {
        let edge = TestEdge::start();
        let config = configure(edge.bare_config().route("127.0.0.0/8").deny(&[] as &[&str]))
            .build()
            .expect("valid connector config");
        let connector = Connector::start(config).expect("connector starts");
        let registration = edge.accept(1, 0).await.expect("registration");
        Tunnel {
            conn: registration.conn,
            control: Mutex::new(registration.control),
            next_service: AtomicU8::new(1),
            connector: Some(connector),
            _edge: edge,
        }
    }

    /// The edge's end of the connection.
    pub fn conn(&self) -> &AnyConnection {
        &self.conn
    }

    /// Send `policy` to the connector, after giving it a service id of its own; returns the
    /// reference a stream names it by.
    pub async fn service(&self, mut policy: OriginPolicy) -> ServiceRef {
        let n = self.next_service.fetch_add(1, Ordering::Relaxed);
        policy.service.id.0 = [n; 16];
        policy.name = format!("service-{n}");
        self.send_policy(&policy).await;
        policy.service
    }

    /// Send `policy` as it is.
    pub async fn send_policy(&self, policy: &OriginPolicy) {
        let mut control = self.control.lock().await;
        edge::send_policy(&mut control, policy)
            .await
            .expect("send the policy");
    }

    /// A VPC Service head for `https://<url_host>/hello` whose policy dials `origin` over
    /// TLS with `tls` and `ca_pem`.
    pub async fn https_service(
        &self,
        url_host: &str,
        origin: SocketAddr,
        tls: TlsVerification,
        ca_pem: Option<&str>,
    ) -> HttpRequestHead {
        let policy = OriginPolicy {
            tls,
            ca_pem: ca_pem.map(str::to_owned),
            ..edge::http_service(0, 1, origin)
        };
        let service = self.service(policy).await;
        let mut head = get(url_host, "/hello");
        head.scheme = Scheme::Https;
        head.origin = Origin::Service(service);
        head
    }

    /// Open an exchange: the head is sent; the body is up to the caller.
    pub async fn open(&self, head: HttpRequestHead) -> Exchange {
        let (send, reader) = open_http(&self.conn, head).await.expect("open stream");
        Exchange {
            send,
            reader: Some(reader),
        }
    }

    /// A whole exchange: send `body`, read the reply and the whole response body.
    pub async fn fetch(&self, head: HttpRequestHead, body: &[u8]) -> Fetched {
        let mut exchange = self.open(head).await;
        if !body.is_empty() {
            exchange
                .send
                .write_chunk(Bytes::copy_from_slice(body))
                .await
                .expect("write body");
        }
        // The connector may have stopped reading a body it does not need: fine.
        let _ = exchange.send.finish();
        let reply = exchange.reply().await;
        let body = match &reply {
            StreamReply::Http(_) => exchange.read_to_end().await,
            _ => Ok(Vec::new()),
        };
        Fetched { reply, body }
    }

    /// Shut the connector down (drain, close) and wait for it.
    pub async fn shutdown(mut self) {
        if let Some(connector) = self.connector.take() {
            connector.shutdown().await.expect("clean shutdown");
        }
    }
}

/// The edge's side of one exchange.
pub struct Exchange {
    /// Request body towards the connector.
    pub send: AnySend,
    reader: Option<FrameReader<AnyRecv>>,
}

impl Exchange {
    /// Read the connector's reply.
    pub async fn reply(&mut self) -> StreamReply {
        self.reader
            .as_mut()
            .expect("reply read once")
            .expect_within(LIMIT)
            .await
            .expect("reply from the connector")
    }

    /// The response body, after the reply.
    pub fn body(&mut self) -> Buffered<AnyRecv> {
        self.reader.take().expect("body taken once").into_body()
    }

    /// The whole response body, or the stream error that cut it.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, StreamError> {
        let mut body = self.body();
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(LIMIT, body.read_chunk(64 * 1024))
                .await
                .expect("response body stalled")?
            {
                Some(chunk) => out.extend_from_slice(&chunk),
                None => return Ok(out),
            }
        }
    }
}

/// The outcome of [`Tunnel::fetch`].
pub struct Fetched {
    /// The connector's reply.
    pub reply: StreamReply,
    /// The response body (empty after an error reply).
    pub body: Result<Vec<u8>, StreamError>,
}

impl Fetched {
    /// The response head; panics on an error reply.
    pub fn head(&self) -> &HttpResponseHead {
        match &self.reply {
            StreamReply::Http(head) => head,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// The error reply; panics on a response.
    pub fn error(&self) -> &ProxyErrorReply {
        match &self.reply {
            StreamReply::Error(error) => error,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    /// The body parsed as the echo origin's JSON.
    pub fn json(&self) -> serde_json::Value {
        let body = self.body.as_ref().expect("complete body");
        serde_json::from_slice(body).expect("JSON body")
    }

    /// A response header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head()
            .headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
    }
}

/// A GET for `http://<authority><path>` (VPC Network semantics: the edge dials the
/// authority, so the head's target is the authority; one that does not parse becomes a name
/// on port 80, for the connector to refuse).
pub fn get(authority: impl Into<String>, path: &str) -> HttpRequestHead {
    let authority = authority.into();
    let target = match parse_authority(&authority) {
        Ok((host, port)) => DialTarget::new(host, port),
        Err(_) => DialTarget::new(Host::Name(authority.clone()), 80),
    };
    HttpRequestHead {
        method: "GET".into(),
        scheme: Scheme::Http,
        authority,
        path: path.into(),
        headers: Vec::new(),
        origin: Origin::Dial(target),
        body: BodyKind::Empty,
        request_id: underpass_proto::RequestId(7),
    }
}

/// Add a header to a head.
pub fn with_header(mut head: HttpRequestHead, name: &str, value: &str) -> HttpRequestHead {
    head.headers.push(Header::new(name, value));
    head
}

/// An origin that accepts a WebSocket-style upgrade: answers `101` with the first bytes of
/// the new protocol (`hello`) in the same write, echoes what it reads, and at EOF sends `bye`
/// and closes. Anything else gets a 400.
pub async fn upgrade_script<T>(mut io: T)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let head = origins::read_head(&mut io).await;
    if !(head.contains("upgrade: websocket") && head.contains("connection: upgrade")) {
        let _ = io
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    let answer = "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
                  upgrade: websocket\r\n\r\nhello";
    if io.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = io.write_all(b"bye").await;
    let _ = io.shutdown().await;
}

/// Run an upgrade through `tunnel` against an [`upgrade_script`] origin: the `101`, the
/// origin's early bytes, an echo, and half-close in both directions.
pub async fn check_upgrade(tunnel: &Tunnel, head: HttpRequestHead) {
    let mut head = with_header(head, "upgrade", "websocket");
    head.body = BodyKind::Upgrade;
    let mut exchange = tunnel.open(head).await;
    let StreamReply::Http(reply) = exchange.reply().await else {
        panic!("expected a 101");
    };
    assert_eq!(reply.status, 101);
    assert_eq!(reply.body, BodyKind::Upgrade);
    assert!(reply
        .headers
        .iter()
        .any(|h| h.name == "upgrade" && h.value == b"websocket"));
    let mut body = exchange.body();
    assert_eq!(read_exactly(&mut body, 5).await, b"hello");
    exchange
        .send
        .write_chunk(Bytes::from_static(b"ping"))
        .await
        .expect("write to the upgraded stream");
    assert_eq!(read_exactly(&mut body, 4).await, b"ping");
    // Our half-close reaches the origin, which still answers on its half.
    exchange.send.finish().expect("finish");
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(LIMIT, body.read_chunk(1024))
        .await
        .expect("stalled after half-close")
        .expect("stream error after half-close")
    {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"bye");
}

/// Read exactly `n` bytes from a stream.
pub async fn read_exactly<R: RecvStream>(recv: &mut R, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(LIMIT, recv.read_chunk(n - out.len()))
            .await
            .expect("stalled")
            .expect("stream error")
            .expect("stream ended early");
        out.extend_from_slice(&chunk);
    }
    out
}
