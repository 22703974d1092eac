//! The client side of the edge's admin listener, for the commands that ask a running edge
//! (`vpc …`, `tunnel info`): one HTTP/1.1 request (hyper) on a connection of its own, over TCP
//! or TLS 1.3 (rustls), with the answer's body read up to a limit.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Where an admin listener is and how to speak to it.
#[derive(Clone)]
pub(crate) struct Target {
    /// The host to connect to (a name, or an IP literal without brackets).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// TLS, when the listener speaks it: the client configuration and the name to verify.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

/// Send `request` to `target` and read its answer, at most `max_body` bytes of body. The
/// error is a sentence for "no answer from …: {error}". Callers bound the time.
pub(crate) async fn exchange(
    target: &Target,
    request: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<(StatusCode, Bytes), String> {
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|error| error.to_string())?;
    match &target.tls {
        None => over(stream, request, max_body).await,
        Some((config, name)) => {
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name.clone(), stream)
                .await
                .map_err(|error| format!("TLS: {error}"))?;
            over(stream, request, max_body).await
        }
    }
}

async fn over<S>(
    stream: S,
    request: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<(StatusCode, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| error.to_string())?;
    // The connection is driven beside the request; it ends when `sender` is dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|error| format!("the answer broke off: {error}"))?;
    Ok((status, body.to_bytes()))
}
