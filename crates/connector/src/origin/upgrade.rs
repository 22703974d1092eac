//! Protocol upgrades (WebSocket) through `fetch()`: the request goes to the origin on a new
//! HTTP/1.1 connection with `Connection: upgrade`; on `101` the connection leaves HTTP and is
//! spliced with the stream both ways, half-close included.
//!
//! An origin may ignore `Upgrade` (RFC 9110 §7.8): any final answer other than `101` (a
//! `200`, a `426`, a redirect) is passed on whole, head and body, as for any request. Only a
//! `101` that cannot be used is `http_upgrade_failed`: one whose `Upgrade` header is missing
//! or names a protocol the request did not offer, or whose connection cannot be taken over.

use bytes::BytesMut;
use http::header::UPGRADE;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;
use underpass_mux::{pipe_tcp, Buffered};
use underpass_proto::{
    BodyKind, HttpRequestHead, HttpResponseHead, ProxyErrorReply, ProxyStatus, RESET_CANCELLED,
};
use underpass_transport::{RecvStream, SendStream, StreamError};

use super::pool::Sender;
use super::target::{self, Endpoint, UploadWatch};
use super::{
    body_failed, refuse, response_head, stream_body, write_head, Failure, HeadError, OriginClient,
};
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
        return declined(send, recv, response, sender).await;
    }
    if let Some(details) = unoffered_switch(head, response.headers()) {
        let error = ProxyErrorReply {
            status: ProxyStatus::HttpUpgradeFailed,
            details,
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
    let reply = HttpResponseHead {
        status: 101,
        headers,
        body: BodyKind::Upgrade,
    };
    if let Err(end) = write_head(&mut send, reply).await {
        return end;
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

/// The origin declined the upgrade with an ordinary answer: pass it on, head and body, like
/// any response. `recv` (the edge finishes it once it sees the head) and the connection are
/// kept to the end of the body; the connection is then closed, never pooled.
async fn declined<S: SendStream, R: RecvStream>(
    mut send: S,
    recv: Buffered<R>,
    response: Response<Incoming>,
    sender: Sender,
) -> StreamEnd {
    let status = response.status().as_u16();
    if let Err(end) = write_head(&mut send, response_head(&response)).await {
        return end;
    }
    let mut from_origin = 0;
    let mut upload = UploadWatch::none();
    let body = response.into_body();
    let ending = match stream_body(&mut send, body, &mut upload, &mut from_origin).await {
        Ok(()) => {
            // Already reset by the peer, or the connection is gone: nothing to do.
            let _ = send.finish();
            debug!(
                status,
                bytes = from_origin,
                "upgrade declined by the origin"
            );
            Ending::Done
        }
        Err(end) => body_failed(&mut send, end, status),
    };
    drop((recv, sender));
    StreamEnd {
        ending,
        to_origin: 0,
        from_origin,
    }
}

/// Why a `101` cannot be used, if it cannot: RFC 9110 §7.8 has a server name the protocols it
/// switches to in `Upgrade`, each one the client offered. Protocol names are compared without
/// their version and ignoring case (`websocket`, `WebSocket`).
fn unoffered_switch(request: &HttpRequestHead, response: &HeaderMap) -> Option<String> {
    let offered: Vec<String> = request
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("upgrade"))
        .flat_map(|header| protocol_names(&header.value))
        .collect();
    let chosen: Vec<String> = response
        .get_all(UPGRADE)
        .iter()
        .flat_map(|value| protocol_names(value.as_bytes()))
        .collect();
    if chosen.is_empty() {
        return Some("the origin answered 101 without an Upgrade protocol".into());
    }
    let unoffered = chosen.iter().find(|name| !offered.contains(name))?;
    Some(format!(
        "the origin answered 101 switching to {unoffered:?}, which the request did not offer"
    ))
}

/// The protocol names (lower-cased, version dropped) of an `Upgrade` field value.
fn protocol_names(value: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(value)
        .split(',')
        .filter_map(|item| {
            let name = item.split('/').next().unwrap_or_default().trim();
            (!name.is_empty()).then(|| name.to_ascii_lowercase())
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use underpass_proto::{DialTarget, Header, Host, Origin, RequestId, Scheme};

    use super::*;

    fn request(upgrade: &[&str]) -> HttpRequestHead {
        HttpRequestHead {
            method: "GET".into(),
            scheme: Scheme::Http,
            authority: "chat.internal".into(),
            path: "/".into(),
            headers: upgrade
                .iter()
                .map(|value| Header::new("upgrade", *value))
                .collect(),
            origin: Origin::Dial(DialTarget::new(Host::Name("chat.internal".into()), 80)),
            body: BodyKind::Upgrade,
            request_id: RequestId(1),
        }
    }

    fn answer(upgrade: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in upgrade {
            headers.append(UPGRADE, value.parse().expect("a valid value"));
        }
        headers
    }

    #[test]
    fn a_101_must_switch_to_an_offered_protocol() {
        let cases: [(&[&str], &[&str], bool); 8] = [
            (&["websocket"], &["websocket"], true),
            (&["websocket"], &["WebSocket"], true),
            (&["h2c, websocket"], &["websocket"], true),
            (&["foo/2"], &["FOO/1"], true),
            (&["websocket"], &[], false),
            (&["websocket"], &[" , "], false),
            (&["websocket"], &["h2c"], false),
            (&["websocket"], &["websocket, h2c"], false),
        ];
        for (offered, chosen, usable) in cases {
            let refusal = unoffered_switch(&request(offered), &answer(chosen));
            assert_eq!(
                refusal.is_none(),
                usable,
                "{offered:?} -> {chosen:?}: {refusal:?}"
            );
        }
    }
}
