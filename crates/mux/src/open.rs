//! The edge side: open a stream for a `connect()` or a `fetch()`.

use std::time::Duration;

use underpass_proto::{
    HttpRequestHead, ProxyErrorReply, StreamHeader, StreamReply, TcpConnect, RESET_PROTOCOL,
};
use underpass_transport::{Connection, SendStream};

use crate::frame::{write_frame, Buffered, FrameReader, MuxError};

/// Opening a TCP stream did not give a connected pipe.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The connector answered with a Proxy-Status error.
    #[error("connector refused: {} ({})", .0.status, .0.details)]
    Refused(ProxyErrorReply),
    /// The stream or the frames on it failed.
    #[error(transparent)]
    Mux(#[from] MuxError),
    /// The connector answered with a reply that does not fit the request.
    #[error("unexpected reply from connector")]
    UnexpectedReply,
}

/// Open a stream for a TCP connection and wait up to `limit` for the connector's answer.
///
/// On success the stream is a raw pipe: write client bytes to the send half, read origin
/// bytes from the returned [`Buffered`].
pub async fn open_tcp<C: Connection>(
    conn: &C,
    connect: TcpConnect,
    limit: Duration,
) -> Result<(C::Send, Buffered<C::Recv>), OpenError> {
    let (mut send, recv) = conn.open_bi().await.map_err(MuxError::from)?;
    write_frame(&mut send, &StreamHeader::Tcp(connect)).await?;
    let mut reader = FrameReader::new(recv);
    let reply = match reader.expect_within::<StreamReply>(limit).await {
        Ok(reply) => reply,
        Err(err) => {
            send.reset(RESET_PROTOCOL);
            return Err(err.into());
        }
    };
    match reply {
        StreamReply::TcpAccepted => Ok((send, reader.into_body())),
        StreamReply::Error(refusal) => Err(OpenError::Refused(refusal)),
        StreamReply::Http(_) => {
            send.reset(RESET_PROTOCOL);
            reader.stop(RESET_PROTOCOL);
            Err(OpenError::UnexpectedReply)
        }
    }
}

/// Open a stream for an HTTP exchange and send the request head.
///
/// The caller then writes the request body to the send half (and finishes it) while reading
/// the [`StreamReply`] and the response body from the reader.
pub async fn open_http<C: Connection>(
    conn: &C,
    head: HttpRequestHead,
) -> Result<(C::Send, FrameReader<C::Recv>), MuxError> {
    let (mut send, recv) = conn.open_bi().await?;
    write_frame(&mut send, &StreamHeader::Http(head)).await?;
    Ok((send, FrameReader::new(recv)))
}
