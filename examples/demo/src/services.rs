//! The demo's "private" services, in-process on loopback addresses that play a private subnet:
//! an HTTP JSON API, the same API over HTTPS (certificate from the demo's own CA), and a toy
//! Redis-protocol TCP service answering `PING`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

/// The users the API knows.
const USERS: &str = r#"[{"id":1,"name":"Ada Lovelace","email":"ada@example.com"},{"id":2,"name":"Alan Turing","email":"alan@example.com"}]"#;

/// The running services; dropping it stops them.
pub struct Services {
    tasks: JoinSet<()>,
}

impl Services {
    /// Binds every service (failing with the address when one is taken) and starts serving.
    pub async fn start(
        http: SocketAddr,
        https: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        tcp: SocketAddr,
        api_token: &str,
    ) -> anyhow::Result<Services> {
        let http_listener = bind(http, "HTTP API").await?;
        let https_listener = bind(https, "HTTPS API").await?;
        let tcp_listener = bind(tcp, "Redis-protocol service").await?;
        let token = Arc::new(api_token.to_owned());
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_http(http_listener, None, token.clone()));
        tasks.spawn(serve_http(
            https_listener,
            Some(TlsAcceptor::from(tls)),
            token,
        ));
        tasks.spawn(serve_ping(tcp_listener));
        Ok(Services { tasks })
    }

    /// Stops every service (open connections are closed).
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the demo's {what}"))
}

async fn serve_http(listener: TcpListener, tls: Option<TlsAcceptor>, token: Arc<String>) {
    let mut connections = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let tls = tls.clone();
        let token = token.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| api(request, token.clone()));
            let builder = http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

/// The JSON API: `GET /users`, `POST /users` (bearer token required), `GET /api/data`.
async fn api(
    request: Request<Incoming>,
    token: Arc<String>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let path = request.uri().path().to_owned();
    let response = match (request.method().clone(), path.as_str()) {
        (Method::GET, "/users") => json(StatusCode::OK, USERS.to_owned()),
        (Method::POST, "/users") => create_user(request, &token).await,
        (Method::GET, "/api/data") => json(
            StatusCode::OK,
            serde_json::json!({
                "data": [1, 2, 3],
                "served_over": "https",
                "host": host,
            })
            .to_string(),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "not found", "path": path }).to_string(),
        ),
    };
    Ok(response)
}

async fn create_user(request: Request<Incoming>, token: &str) -> Response<Full<Bytes>> {
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h == format!("Bearer {token}"));
    if !authorized {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"missing or wrong bearer token"}"#.to_owned(),
        );
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::BAD_REQUEST,
                r#"{"error":"bad body"}"#.to_owned(),
            )
        }
    };
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut user)) => {
            user.insert("id".to_owned(), serde_json::Value::from(3));
            json(
                StatusCode::CREATED,
                serde_json::Value::Object(user).to_string(),
            )
        }
        _ => json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"expected a JSON object"}"#.to_owned(),
        ),
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A toy Redis-protocol service: answers inline `PING` with `+PONG`, closes on `QUIT` or EOF.
async fn serve_ping(listener: TcpListener) {
    let mut connections = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        connections.spawn(ping_connection(stream));
        while connections.try_join_next().is_some() {}
    }
}

async fn ping_connection(stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let command = line.trim().to_ascii_uppercase();
        let reply: &[u8] = match command.as_str() {
            "PING" => b"+PONG\r\n",
            "QUIT" => b"+OK\r\n",
            "" => continue,
            _ => b"-ERR this toy service only knows PING and QUIT\r\n",
        };
        if write.write_all(reply).await.is_err() || command == "QUIT" {
            break;
        }
    }
    let _ = write.shutdown().await;
}
