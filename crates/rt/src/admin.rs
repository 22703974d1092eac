//! The admin listener both programs can serve (`[admin] listen`): `/healthz`, `/ready`,
//! `/metrics`, and whatever else the program's [`AdminHandler`] answers, as JSON over
//! HTTP/1.1 (hyper).
//!
//! The listener is not tracked by [`Shutdown`](crate::Shutdown): it keeps answering while the
//! program drains (so `/ready` can say 503 then) and stops when the [`AdminServer`] is
//! dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The content type of `/metrics` (the Prometheus text format, which Prometheus and promtool
/// read; prometheus-client writes OpenMetrics text, a compatible superset).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The largest request body an API request may carry (larger: 413).
pub const MAX_API_BODY: usize = 1 << 20;

/// A request to a program's own API ([`AdminHandler::is_api`]), its body read whole.
#[derive(Debug)]
pub struct ApiRequest {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The query string, without the `?`.
    pub query: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body (at most [`MAX_API_BODY`] bytes).
    pub body: Bytes,
}

/// What an API request is answered with: a status and a JSON body.
pub type ApiResponse = (u16, serde_json::Value);

/// The future an [`AdminHandler::api`] call returns.
pub type ApiFuture<'a> = Pin<Box<dyn Future<Output = ApiResponse> + Send + 'a>>;

/// What a program answers on its admin listener.
pub trait AdminHandler: Send + Sync + 'static {
    /// `GET /ready`: whether the program is ready (200, else 503) and the JSON body.
    fn ready(&self) -> (bool, serde_json::Value);
    /// `GET /metrics`: the metrics in the Prometheus text format.
    fn metrics(&self) -> String;
    /// Any other path: `Some((status, body))` to answer, `None` for 404.
    fn route(&self, _method: &Method, _path: &str) -> Option<(u16, serde_json::Value)> {
        None
    }
    /// Whether `path` belongs to the program's API: its requests go to [`AdminHandler::api`]
    /// with their headers and body.
    fn is_api(&self, _path: &str) -> bool {
        false
    }
    /// Answer an API request ([`AdminHandler::is_api`]).
    fn api(&self, _request: ApiRequest) -> ApiFuture<'_> {
        Box::pin(async { (404, serde_json::json!({"error": "no API here"})) })
    }
}

/// A running admin listener; dropping it stops accepting and ends its connections.
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
}

impl AdminServer {
    /// Bind `addr` and serve `handler` on a task of the current runtime. A non-loopback
    /// address is served but warned about (the endpoints carry no authentication).
    pub async fn bind(
        addr: SocketAddr,
        handler: Arc<dyn AdminHandler>,
    ) -> std::io::Result<AdminServer> {
        AdminServer::bind_tls(addr, handler, None).await
    }

    /// [`AdminServer::bind`], served over TLS with `tls` when given (HTTP/1.1 inside).
    pub async fn bind_tls(
        addr: SocketAddr,
        handler: Arc<dyn AdminHandler>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        if !local_addr.ip().is_loopback() {
            warn!(
                %local_addr,
                "the admin listener is not on loopback: /metrics and the status endpoints are \
                 readable by anyone who can reach it"
            );
        }
        info!(
            %local_addr,
            tls = tls.is_some(),
            "admin listener bound (/healthz, /ready, /metrics)"
        );
        let stop = CancellationToken::new();
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(accept_loop(listener, handler, tls, stop.clone()));
        Ok(AdminServer { local_addr, stop })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long a TLS client may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn AdminHandler>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handler = handler.clone();
                async move {
                    let response = if handler.is_api(request.uri().path()) {
                        answer_api(&*handler, request).await
                    } else {
                        answer(&*handler, &request)
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let served = async {
                let result = match tls {
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                        match handshake.await {
                            Ok(Ok(stream)) => {
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await
                            }
                            Ok(Err(error)) => Err(error.into()),
                            Err(_) => Err("TLS handshake timed out".into()),
                        }
                    }
                };
                if let Err(error) = result {
                    debug!(%peer, %error, "admin connection ended with an error");
                }
            };
            tokio::select! {
                () = served => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

fn answer(handler: &dyn AdminHandler, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method();
    let path = request.uri().path();
    match (method, path) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/ready") => {
            let (ready, body) = handler.ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &body)
        }
        (&Method::GET, "/metrics") => Response::builder()
            .header(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)
            .body(Full::new(Bytes::from(handler.metrics())))
            .unwrap_or_default(),
        _ => match handler.route(method, path) {
            Some((status, body)) => json(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &body,
            ),
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": format!("no such endpoint: {method} {path}")}),
            ),
        },
    }
}

/// Read an API request's body (at most [`MAX_API_BODY`]) and let the handler answer it.
async fn answer_api(
    handler: &dyn AdminHandler,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_API_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let (status, message) = if error.is::<http_body_util::LengthLimitError>() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than {MAX_API_BODY} bytes"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read: {error}"),
                )
            };
            return json(
                status,
                &serde_json::json!({
                    "success": false,
                    "errors": [{"code": status.as_u16(), "message": message}],
                    "messages": [],
                    "result": null,
                }),
            );
        }
    };
    let request = ApiRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    let (status, body) = handler.api(request).await;
    json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    )
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut text = body.to_string();
    text.push('\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_default()
}
