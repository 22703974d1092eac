//! Harness for the origin-client tests: a real QUIC connection on loopback between a test
//! "edge" and the connector side, where every stream the edge opens is served by an
//! [`OriginClient`] through a real [`Dialer`].

#![allow(dead_code)]

pub mod origins;
pub mod pki;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use underpass_connector::config::DnsSettings;
use underpass_connector::origin::{OriginClient, OriginSettings};
use underpass_connector::Dialer;
use underpass_mux::{accept_stream, open_http, Buffered, FrameReader};
use underpass_proto::{
    BodyKind, Header, HttpRequestHead, HttpResponseHead, ProxyErrorReply, Scheme, StreamHeader,
    StreamReply, TlsVerification,
};
use underpass_routes::{PortSet, RouteTable};
use underpass_transport::quic::{
    QuicConnection, QuicDialer, QuicListener, QuicRecv, QuicSend, QuicSettings, ALPN,
};
use underpass_transport::tls::{self, DevPki, EdgeVerification};
use underpass_transport::{RecvStream, SendStream, StreamError};

/// Guard against hangs; never what decides a test.
pub const LIMIT: Duration = Duration::from_secs(10);

/// A real dialer whose routes allow all of 127.0.0.0/8, every port, with no deny list.
/// Names are never resolved by these tests (services are dialed by address).
pub fn dialer() -> Dialer {
    let mut routes = RouteTable::new();
    routes.insert_cidr("127.0.0.0/8".parse().expect("CIDR"), PortSet::all(), ());
    routes.set_deny_list(Vec::new());
    let dns = DnsSettings {
        resolvers: vec!["127.0.0.1:53".parse().expect("address")],
        timeout: Duration::from_secs(2),
    };
    Dialer::new(routes, &dns, Duration::from_secs(5)).expect("dialer")
}

/// The edge's end of a QUIC connection whose connector end serves every stream with an
/// [`OriginClient`].
pub struct Tunnel {
    edge: QuicConnection,
    connector: QuicConnection,
    _listener: QuicListener,
    _dialer: QuicDialer,
}

impl Tunnel {
    /// Connect, and serve streams with a client using `settings`.
    pub async fn start(settings: OriginSettings) -> Tunnel {
        let pki = DevPki::generate(&["underpass-edge".to_owned()]).expect("dev PKI");
        let server = tls::server_config(pki.chain_pem.as_bytes(), pki.key_pem.as_bytes(), &[ALPN])
            .expect("server config");
        let quic = QuicSettings::default();
        let listener = QuicListener::bind(
            "127.0.0.1:0".parse().expect("addr"),
            Arc::new(server),
            &quic,
        )
        .expect("bind QUIC");
        let client =
            tls::client_config(&EdgeVerification::Pin(pki.ca_pin), &[ALPN]).expect("client");
        let quic_dialer = QuicDialer::new(
            Arc::new(client),
            &quic,
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("QUIC dialer");
        let (connector, edge) = tokio::join!(
            quic_dialer.connect(listener.local_addr(), "underpass-edge"),
            listener.accept()
        );
        let connector = connector.expect("QUIC connect");
        let edge = edge.expect("QUIC accept");
        let served = connector.clone();
        let client = Arc::new(OriginClient::new(settings));
        let dialer = Arc::new(dialer());
        tokio::spawn(async move {
            while let Ok(mut incoming) = accept_stream(&served).await {
                let (client, dialer) = (client.clone(), dialer.clone());
                tokio::spawn(async move {
                    let Ok(StreamHeader::Http(head)) = incoming.header(LIMIT).await else {
                        return;
                    };
                    let (send, body) = incoming.into_parts();
                    client.serve(&dialer, head, send, body).await;
                });
            }
        });
        Tunnel {
            edge,
            connector,
            _listener: listener,
            _dialer: quic_dialer,
        }
    }

    /// Open an exchange: the head is sent; the body is up to the caller.
    pub async fn open(&self, head: HttpRequestHead) -> Exchange {
        let (send, reader) = open_http(&self.edge, head).await.expect("open stream");
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
}

/// The edge's side of one exchange.
pub struct Exchange {
    /// Request body towards the connector.
    pub send: QuicSend,
    reader: Option<FrameReader<QuicRecv>>,
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
    pub fn body(&mut self) -> Buffered<QuicRecv> {
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

/// A GET for `http://<authority><path>` (VPC Network semantics: the authority is dialed).
pub fn get(authority: impl Into<String>, path: &str) -> HttpRequestHead {
    HttpRequestHead {
        method: "GET".into(),
        scheme: Scheme::Http,
        authority: authority.into(),
        path: path.into(),
        headers: Vec::new(),
        dial: None,
        tls: TlsVerification::VerifyFull,
        ca_pem: None,
        body: BodyKind::Empty,
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
