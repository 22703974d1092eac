//! Protocol upgrades (WebSocket) through `fetch()`: the request goes to the origin on a new
//! HTTP/1.1 connection with `Connection: upgrade`; on `101` the connection leaves HTTP and is
//! spliced with the stream both ways, half-close included; any other answer is
//! `http_upgrade_failed`.

use bytes::BytesMut;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;
use underpass_mux::{pipe_tcp, write_frame, Buffered};
use underpass_proto::{
    BodyKind, HttpRequestHead, HttpResponseHead, ProxyErrorReply, ProxyStatus, StreamReply,
    RESET_CANCELLED,
};
use underpass_transport::{RecvStream, SendStream, StreamError};

use super::target::{self, Endpoint, UploadWatch};
use super::{refuse, Failure, HeadError, OriginClient};
use crate::dial::Dialer;
use crate::outcome::{Ending, StreamEnd};

/// Bytes asked of an upgraded TLS connection per read.
const SPLICE_READ: usize = 64 * 1024;

/// Run an upgrade exchange. The stream carries no request body before the `101`: after it,
/// everything on `recv` is the client's side of the new protocol.
pub(super) async fn serve<S: SendStream, R: RecvStream>(
    client: &OriginClient,
    dialer: &Dialer,
    origin: &Endpoint,
    head: &HttpRequestHead,
    mut send: S,
    recv: Buffered<R>,
) -> StreamEnd {
    let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
    let mut request = match target::build_request(head, origin, body, true) {
        Ok(request) => request,
        Err(error) => return refuse(&mut send, error).await,
    };
    let exchange = async {
        // Never a pooled connection: it leaves HTTP if the upgrade succeeds.
        let mut sender = client
            .connect(dialer, origin, false)
            .await
            .map_err(Failure::Reply)?;
        target::fit_version(&mut request, false, origin.scheme);
        let mut upload = UploadWatch::none();
        match client.head(sender.send(request), &mut upload).await {
            Ok(response) => Ok((response, sender)),
            Err(HeadError::NotSent(_)) => Err(Failure::Reply(ProxyErrorReply {
                status: ProxyStatus::ConnectionTerminated,
                details: "the origin closed the connection before the request was sent".into(),
            })),
            Err(HeadError::Failed(failure)) => Err(failure),
        }
    };
    let outcome = tokio::select! {
        outcome = exchange => outcome,
        code = send.stopped() => {
            send.reset(RESET_CANCELLED);
            return StreamEnd::cancelled(format!(
                "the edge cancelled the upgrade before the response head ({code:?})"
            ));
        }
    };
    let (mut response, sender) = match outcome {
        Ok(pair) => pair,
        Err(Failure::Reply(error)) => return refuse(&mut send, error).await,
        Err(Failure::Aborted(reason)) => {
            send.reset(RESET_CANCELLED);
            return StreamEnd::cancelled(format!("upgrade aborted by the edge: {reason}"));
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let error = ProxyErrorReply {
            status: ProxyStatus::HttpUpgradeFailed,
            details: format!("origin answered {}", response.status()),
        };
        return refuse(&mut send, error).await;
    }
    let headers = underpass_mux::http::headers_to_wire(response.headers(), true);
    let upgraded = tokio::select! {
        upgraded = hyper::upgrade::on(&mut response) => upgraded,
        code = send.stopped() => {
            send.reset(RESET_CANCELLED);
            return StreamEnd::cancelled(format!("the edge cancelled the upgrade ({code:?})"));
        }
    };
    drop(sender);
    let upgraded = match upgraded {
        Ok(upgraded) => upgraded,
        Err(err) => {
            let error = ProxyErrorReply {
                status: ProxyStatus::HttpUpgradeFailed,
                details: format!("origin connection could not be taken over: {err}"),
            };
            return refuse(&mut send, error).await;
        }
    };
    let reply = StreamReply::Http(HttpResponseHead {
        status: 101,
        headers,
        body: BodyKind::Upgrade,
    });
    if let Err(err) = write_frame(&mut send, &reply).await {
        return StreamEnd::cancelled(format!("the edge went away before the 101: {err}"));
    }
    // A plain connection goes to the socket pipe (idle pipes hold no buffer); bytes hyper
    // read past the 101 are the origin's first bytes of the new protocol and go first.
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let stats = pipe_tcp(parts.io.into_inner(), Some(parts.read_buf), send, recv).await;
            StreamEnd::from_pipe(stats)
        }
        Err(upgraded) => splice(TokioIo::new(upgraded), send, recv).await,
    }
}

enum SpliceError {
    Io(std::io::Error),
    Stream(StreamError),
}

/// Splice any connection (TLS) with the stream both ways until both directions end or one
/// fails. The origin's EOF finishes the stream; the stream's end shuts down the connection's
/// write side (TLS `close_notify`); a failure tears both down.
async fn splice<T, S, R>(io: T, mut send: S, mut recv: R) -> StreamEnd
where
    T: AsyncRead + AsyncWrite + Send + Unpin,
    S: SendStream,
    R: RecvStream,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut up_bytes = 0u64;
    let mut down_bytes = 0u64;
    let up = async {
        loop {
            let mut buf = BytesMut::with_capacity(SPLICE_READ);
            if reader.read_buf(&mut buf).await.map_err(SpliceError::Io)? == 0 {
                return send.finish().map_err(SpliceError::Stream);
            }
            up_bytes += buf.len() as u64;
            send.write_chunk(buf.freeze())
                .await
                .map_err(SpliceError::Stream)?;
        }
    };
    let down = async {
        loop {
            match recv.read_chunk(SPLICE_READ).await {
                Ok(Some(chunk)) => {
                    down_bytes += chunk.len() as u64;
                    writer.write_all(&chunk).await.map_err(SpliceError::Io)?;
                    writer.flush().await.map_err(SpliceError::Io)?;
                }
                Ok(None) => return writer.shutdown().await.map_err(SpliceError::Io),
                Err(err) => return Err(SpliceError::Stream(err)),
            }
        }
    };
    let result = tokio::try_join!(up, down);
    let ending = match result {
        Ok(_) => Ending::Done,
        Err(err) => {
            send.reset(RESET_CANCELLED);
            recv.stop(RESET_CANCELLED);
            match err {
                SpliceError::Io(err) => {
                    Ending::Aborted(format!("upgraded origin connection failed: {err}"))
                }
                SpliceError::Stream(err) => {
                    Ending::Cancelled(format!("upgraded stream aborted: {err}"))
                }
            }
        }
    };
    debug!(up = up_bytes, down = down_bytes, "upgraded exchange ended");
    StreamEnd {
        ending,
        to_origin: down_bytes,
        from_origin: up_bytes,
    }
}
