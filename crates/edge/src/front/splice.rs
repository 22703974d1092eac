//! A client socket spliced to a stream: after `CONNECT`'s `200` and after a `101` (both through
//! [`splice_upgrade`]), and for every connection of a TCP binding ([`pipe_socket`]).
//!
//! A pipe runs until both directions end (true half-close) or one side fails. A pipe still open
//! when the shutdown grace period is over fails as if its stream had been reset: the stream is
//! reset in both directions (the connector never sees a clean end) and the client socket is
//! closed as [`pipe_tcp`] closes it after any reset.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, warn};
use underpass_mux::{pipe_tcp, PipeStats};
use underpass_proto::{RESET_CANCELLED, RESET_INTERNAL};
use underpass_rt::Shutdown;
use underpass_transport::{RecvStream, SendStream, StreamError};

use super::client_io::ClientIo;

/// Wait for hyper to hand over the client connection of an upgraded request (`CONNECT` after
/// its `200`, or a `101`), then pipe it to the stream. `None`: there was no client connection
/// to pipe (the stream is reset).
pub(crate) async fn splice_upgrade<S: SendStream, R: RecvStream>(
    upgrade: OnUpgrade,
    mut send: S,
    mut recv: R,
    shutdown: &Shutdown,
) -> Option<PipeStats> {
    let upgraded = tokio::select! {
        upgraded = upgrade => upgraded.map_err(|e| e.to_string()),
        () = shutdown.forced() => Err("the grace period is over".to_owned()),
    };
    let upgraded = match upgraded {
        Ok(upgraded) => upgraded,
        Err(error) => {
            debug!(%error, "no client connection to pipe");
            send.reset(RESET_CANCELLED);
            recv.stop(RESET_CANCELLED);
            return None;
        }
    };
    // hyper serves exactly the `TokioIo<ClientIo>` given to `serve_connection`, so the
    // downcast succeeds; the fallback only guards against a change in that setup.
    match upgraded.downcast::<TokioIo<ClientIo>>() {
        Ok(parts) => {
            let initial = Some(parts.read_buf).filter(|b| !b.is_empty());
            let stream = parts.io.into_inner().into_stream();
            Some(pipe_socket(stream, initial, send, recv, shutdown).await)
        }
        Err(_) => {
            warn!("upgraded client connection is not a TCP stream; closing the stream");
            send.reset(RESET_INTERNAL);
            recv.stop(RESET_INTERNAL);
            None
        }
    }
}

/// Splice `socket` and the stream until both directions end or one side fails; when the grace
/// period is over, the stream counts as reset. `initial` goes on the stream first. After any
/// failure (a reset, a lost connection, the grace period) the client socket is closed with a
/// TCP reset, never a FIN: a cut stream must not look complete.
pub(crate) async fn pipe_socket<S: SendStream, R: RecvStream>(
    socket: TcpStream,
    initial: Option<Bytes>,
    send: S,
    recv: R,
    shutdown: &Shutdown,
) -> PipeStats {
    let recv = CutAtForce {
        inner: recv,
        forced: Box::pin(shutdown.forced()),
    };
    // pipe_tcp logs what went through and how it ended, at debug; the caller logs the request.
    pipe_tcp(socket, initial, send, recv).await
}

/// A receiving half that fails as if reset once the grace period is over, so that a pipe
/// reading it ends the way it ends on any reset: the stream is reset in both directions and
/// the client socket closed.
struct CutAtForce<R> {
    inner: R,
    forced: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<R> CutAtForce<R> {
    fn cut() -> StreamError {
        StreamError::Reset(RESET_CANCELLED)
    }
}

impl<R: RecvStream> RecvStream for CutAtForce<R> {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        if self.forced.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Self::cut()));
        }
        self.inner.poll_read_chunk(cx, max)
    }

    fn read_chunks(
        &mut self,
        bufs: &mut [Bytes],
    ) -> impl Future<Output = Result<Option<usize>, StreamError>> + Send {
        let CutAtForce { inner, forced } = self;
        async move {
            tokio::select! {
                biased;
                () = forced.as_mut() => Err(Self::cut()),
                read = inner.read_chunks(bufs) => read,
            }
        }
    }

    fn stop(&mut self, code: u32) {
        self.inner.stop(code);
    }
}
