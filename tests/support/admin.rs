//! A client for the programs' admin listeners (`/ready`, `/healthz`, `/metrics`, the edge's
//! `/v1/tunnels/…`): one `GET` per connection, `Connection: close`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use crate::http1::{self, Response};

/// How long one admin request may take (guards a hang only).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path` on the admin listener at `addr`.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    tokio::time::timeout(ADMIN_TIMEOUT, http1::get(addr, "localhost", path))
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer within {ADMIN_TIMEOUT:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

/// `GET path`, the body parsed as JSON: `(status, body)`.
pub async fn get_json(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let response = get(addr, path).await?;
    let json = response
        .json()
        .with_context(|| format!("GET http://{addr}{path} answered {}", response.status))?;
    Ok((response.status, json))
}

/// `GET /metrics`: the text exposition, which must come with status 200.
pub async fn metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let response = get(addr, "/metrics").await?;
    anyhow::ensure!(
        response.status == 200,
        "GET http://{addr}/metrics answered {}: {}",
        response.status,
        response.text()
    );
    Ok(response.text())
}

/// One request to the edge's directory API at `addr`: `method path`, with `token` as
/// `Authorization: Bearer` when given and `body` as JSON when given; `(status, body as JSON)`.
pub async fn api(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if !body.is_empty() || method == "POST" || method == "PUT" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to the admin listener {addr}"))?;
    let response = tokio::time::timeout(ADMIN_TIMEOUT, http1::exchange(stream, request.as_bytes()))
        .await
        .with_context(|| format!("{method} {path}: no answer within {ADMIN_TIMEOUT:?}"))??;
    let json = response
        .json()
        .with_context(|| format!("{method} {path} answered {}", response.status))?;
    Ok((response.status, json))
}
