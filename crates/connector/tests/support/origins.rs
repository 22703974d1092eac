//! Real origins on loopback: a hyper HTTP/1.1 (and, over TLS, HTTP/2) echo server that counts
//! its connections, and raw TCP origins scripted per test.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

type ResponseBody = BoxBody<Bytes, hyper::Error>;

/// A hyper origin: `/status/<code>` answers that status, `/headers/<n>` with `n` bytes of
/// header values (8 KiB fields), `/close` answers with
/// `Connection: close`, `/duplex` echoes the request body as it arrives, `/sse` streams what the test feeds it, anything else echoes the request as
/// JSON (method, path, host, version, SNI, body length and SHA-256, some headers).
pub struct EchoOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: watch::Receiver<usize>,
    feed: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
}

impl EchoOrigin {
    /// A plain HTTP/1.1 origin on `ip`, port 0.
    pub async fn start(ip: &str) -> EchoOrigin {
        EchoOrigin::spawn(ip, None).await
    }

    /// A TLS origin on `ip`: HTTP/2 when the client picks `h2` in ALPN, else HTTP/1.1.
    pub async fn start_tls(ip: &str, config: Arc<ServerConfig>) -> EchoOrigin {
        EchoOrigin::spawn(ip, Some(TlsAcceptor::from(config))).await
    }

    async fn spawn(ip: &str, tls: Option<TlsAcceptor>) -> EchoOrigin {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind origin");
        let addr = listener.local_addr().expect("origin address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed) = watch::channel(0usize);
        let closed_tx = Arc::new(closed_tx);
        let feed = Arc::new(Mutex::new(None));
        let origin = EchoOrigin {
            addr,
            accepted: accepted.clone(),
            closed,
            feed: feed.clone(),
        };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (tls, feed, closed_tx) = (tls.clone(), feed.clone(), closed_tx.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_http1(tcp, None, feed).await,
                        Some(acceptor) => {
                            // A failed handshake (the client refused the certificate) is
                            // part of some tests.
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let (_, session) = stream.get_ref();
                                let sni = session.server_name().map(str::to_owned);
                                if session.alpn_protocol() == Some(b"h2") {
                                    serve_http2(stream, sni, feed).await;
                                } else {
                                    serve_http1(stream, sni, feed).await;
                                }
                            }
                        }
                    }
                    closed_tx.send_modify(|n| *n += 1);
                });
            }
        });
        origin
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` connections have ended.
    pub async fn wait_closed(&self, n: usize) {
        let mut closed = self.closed.clone();
        closed
            .wait_for(|count| *count >= n)
            .await
            .expect("origin alive");
    }

    /// The next `/sse` request streams what is sent on the returned channel, chunk by chunk,
    /// and ends when it is dropped.
    pub fn feed(&self) -> mpsc::Sender<Bytes> {
        let (tx, rx) = mpsc::channel(16);
        *self.feed.lock().expect("feed lock") = Some(rx);
        tx
    }
}

type Feed = Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>;

async fn serve_http1<T>(io: T, sni: Option<String>, feed: Feed)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(move |req| handle(req, sni.clone(), feed.clone()));
    // A client that goes away mid-exchange ends the connection with an error: fine here.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn serve_http2<T>(io: T, sni: Option<String>, feed: Feed)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(move |req| handle(req, sni.clone(), feed.clone()));
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn handle(
    req: Request<Incoming>,
    sni: Option<String>,
    feed: Feed,
) -> Result<Response<ResponseBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = Response::new(full(format!("origin says {}", status.as_u16())));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert("x-origin-status", status.as_u16().into());
        return Ok(response);
    }
    if let Some(total) = path.strip_prefix("/headers/") {
        // `total` bytes of header values, in fields of 8 KiB: a large response head.
        let total: usize = total.parse().unwrap_or(0);
        let mut response = Response::new(full("large head".into()));
        for (i, start) in (0..total).step_by(8192).enumerate() {
            let value = "p".repeat((total - start).min(8192));
            response.headers_mut().insert(
                http::HeaderName::try_from(format!("x-pad-{i}")).expect("a valid name"),
                value.parse().expect("a valid value"),
            );
        }
        return Ok(response);
    }
    if path == "/close" {
        let mut response = Response::new(full("closing".into()));
        response
            .headers_mut()
            .insert("connection", "close".parse().expect("valid"));
        return Ok(response);
    }
    if path == "/duplex" {
        return Ok(Response::new(req.into_body().boxed()));
    }
    if path == "/sse" {
        let rx = feed.lock().expect("feed lock").take();
        let mut response = Response::new(match rx {
            Some(rx) => ChannelBody(rx).boxed(),
            None => full("no feed".into()),
        });
        response
            .headers_mut()
            .insert("content-type", "text/event-stream".parse().expect("valid"));
        return Ok(response);
    }
    let (parts, body) = req.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let host = header("host").or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let (body_len, body_sha256) = match body.collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            (bytes.len(), hex::encode(Sha256::digest(&bytes)))
        }
        Err(_) => (0, "body failed".into()),
    };
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()),
        "host": host,
        "version": format!("{:?}", parts.version),
        "sni": sni,
        "body_len": body_len,
        "body_sha256": body_sha256,
        "authorization": header("authorization"),
        "content_type": header("content-type"),
        "content_length": header("content-length"),
        "transfer_encoding": header("transfer-encoding"),
        "connection": header("connection"),
    });
    let mut response = Response::new(full(echo.to_string()));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("valid"));
    Ok(response)
}

fn full(text: String) -> ResponseBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

/// A response body fed chunk by chunk from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// A raw TCP origin on `ip`: every accepted connection is handed to `handler`.
pub async fn raw_origin<F, Fut>(ip: &str, handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((ip, 0)).await.expect("bind origin");
    let addr = listener.local_addr().expect("origin address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(handler(tcp));
        }
    });
    addr
}

/// Read a request head (up to and including the blank line), byte by byte so that nothing
/// after it is consumed.
pub async fn read_head<T: AsyncRead + Unpin>(io: &mut T) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match io.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// Wait until the peer closes: EOF or an error on read. Bytes that arrive are discarded.
pub async fn wait_eof<T: AsyncRead + Unpin>(io: &mut T) {
    let mut buf = [0u8; 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
