//! One request through each binding at start, so the demo says at once whether it works.

use std::time::Duration;

use anyhow::{ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underpass_e2e::http1;

use crate::{Ports, HTTP_API, TCP_SERVICE};

/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The result of one check.
pub struct Outcome {
    /// What was tried.
    pub what: String,
    /// Whether it worked.
    pub ok: bool,
    /// What came back, or the error.
    pub detail: String,
}

/// Runs every check.
pub async fn all(ports: &Ports) -> Vec<Outcome> {
    let network_fetch =
        format!("GET http://{HTTP_API}/users HTTP/1.1\r\nConnection: close\r\n\r\n");
    let service_fetch =
        "GET http://internal-api.company.local/users HTTP/1.1\r\nConnection: close\r\n\r\n";
    let https_fetch = "GET https://127.20.0.50/api/data HTTP/1.1\r\nConnection: close\r\n\r\n";
    vec![
        outcome(
            format!("fetch() via the network binding {}", ports.network),
            fetch(ports.network, &network_fetch).await,
        ),
        outcome(
            format!("fetch() via the service binding {}", ports.users),
            fetch(ports.users, service_fetch).await,
        ),
        outcome(
            format!("fetch() via the https service binding {}", ports.data),
            fetch(ports.data, https_fetch).await,
        ),
        outcome(
            format!("connect() via the network binding {}", ports.network),
            ping(ports.network).await,
        ),
    ]
}

fn outcome(what: String, result: anyhow::Result<String>) -> Outcome {
    match result {
        Ok(detail) => Outcome {
            what,
            ok: true,
            detail,
        },
        Err(e) => Outcome {
            what,
            ok: false,
            detail: format!("{e:#}"),
        },
    }
}

async fn fetch(proxy: std::net::SocketAddr, request: &str) -> anyhow::Result<String> {
    let exchange = async {
        let stream = TcpStream::connect(proxy)
            .await
            .with_context(|| format!("connect to {proxy}"))?;
        http1::exchange(stream, request.as_bytes()).await
    };
    let response = tokio::time::timeout(CHECK_TIMEOUT, exchange)
        .await
        .context("timed out")??;
    ensure!(
        response.status == 200,
        "status {} ({})",
        response.status,
        response.header("proxy-status").unwrap_or("no Proxy-Status")
    );
    let body = response.text();
    let short: String = body.chars().take(60).collect();
    Ok(format!(
        "200 {short}{}",
        if body.len() > 60 { "..." } else { "" }
    ))
}

/// `CONNECT` to the TCP service, `PING`, half-close, read `+PONG`.
async fn ping(proxy: std::net::SocketAddr) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(proxy)
            .await
            .with_context(|| format!("connect to {proxy}"))?;
        let request = format!("CONNECT {TCP_SERVICE} HTTP/1.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            ensure!(head.len() < 16 * 1024, "response head too long");
            let n = stream.read(&mut byte).await?;
            ensure!(n == 1, "the proxy closed the connection");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head.lines().next().unwrap_or_default().to_owned();
        ensure!(status.contains(" 200"), "CONNECT answered {status}");
        stream.write_all(b"PING\r\n").await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        ensure!(reply == "+PONG\r\n", "expected +PONG, got {reply:?}");
        Ok::<_, anyhow::Error>(format!("{status}, PING -> +PONG"))
    };
    tokio::time::timeout(CHECK_TIMEOUT, exchange)
        .await
        .context("timed out")?
}
