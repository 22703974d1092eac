//! Frames on a stream: write one, read one, keep what follows it.

use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use underpass_proto::{decode, encode, DecodeError, Decoded, EncodeError, Message};
use underpass_transport::{RecvStream, SendStream, StreamError};

/// How much a single read asks the transport for.
const READ_CHUNK: usize = 64 * 1024;

/// A failure reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The underlying stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The peer sent a frame that does not decode.
    #[error("bad frame from peer: {0}")]
    Decode(#[from] DecodeError),
    /// A local message could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(#[from] EncodeError),
    /// The stream ended before a whole frame arrived.
    #[error("stream ended before a whole frame arrived")]
    UnexpectedEof,
    /// No frame arrived in time.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
}

/// Encode `message` and send it as one chunk.
pub async fn write_frame<S: SendStream, M: Message>(
    send: &mut S,
    message: &M,
) -> Result<(), MuxError> {
    let mut buf = BytesMut::new();
    encode(message, &mut buf)?;
    send.write_chunk(buf.freeze()).await?;
    Ok(())
}

/// Reads frames from a stream, keeping bytes that arrive after a frame for the body.
pub struct FrameReader<R> {
    recv: R,
    buf: BytesMut,
}

impl<R: RecvStream> FrameReader<R> {
    /// Wrap a receiving stream.
    pub fn new(recv: R) -> Self {
        FrameReader {
            recv,
            buf: BytesMut::new(),
        }
    }

    /// Read the next frame; `Ok(None)` if the stream ended cleanly before any byte of it.
    pub async fn next<M: Message>(&mut self) -> Result<Option<M>, MuxError> {
        loop {
            if !self.buf.is_empty() {
                match decode::<M>(&self.buf)? {
                    Decoded::Message { message, consumed } => {
                        self.buf.advance(consumed);
                        return Ok(Some(message));
                    }
                    Decoded::NeedMore(_) => {}
                }
            }
            match self.recv.read_chunk(READ_CHUNK).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(MuxError::UnexpectedEof),
            }
        }
    }

    /// Read the next frame, treating end of stream as an error.
    pub async fn expect<M: Message>(&mut self) -> Result<M, MuxError> {
        self.next().await?.ok_or(MuxError::UnexpectedEof)
    }

    /// Read the next frame within `limit`.
    pub async fn expect_within<M: Message>(&mut self, limit: Duration) -> Result<M, MuxError> {
        match tokio::time::timeout(limit, self.expect()).await {
            Ok(result) => result,
            Err(_) => Err(MuxError::Timeout(limit)),
        }
    }

    /// Stop reading frames: the rest of the stream (including bytes already buffered) is body.
    pub fn into_body(self) -> Buffered<R> {
        let pending = if self.buf.is_empty() {
            None
        } else {
            Some(self.buf.freeze())
        };
        Buffered {
            pending,
            recv: self.recv,
        }
    }

    /// Tell the peer to stop sending.
    pub fn stop(&mut self, code: u32) {
        self.recv.stop(code);
    }
}

/// A receiving stream with some bytes already read off it, returned first.
pub struct Buffered<R> {
    pending: Option<Bytes>,
    recv: R,
}

impl<R: RecvStream> Buffered<R> {
    /// Wrap a stream with nothing pending.
    pub fn new(recv: R) -> Self {
        Buffered {
            pending: None,
            recv,
        }
    }
}

impl<R: RecvStream> RecvStream for Buffered<R> {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, StreamError>> {
        if let Some(mut pending) = self.pending.take() {
            if pending.len() > max {
                self.pending = Some(pending.split_off(max));
            }
            return Poll::Ready(Ok(Some(pending)));
        }
        self.recv.poll_read_chunk(cx, max)
    }

    async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Option<usize>, StreamError> {
        match (self.pending.take(), bufs.first_mut()) {
            (Some(pending), Some(first)) => {
                *first = pending;
                Ok(Some(1))
            }
            (pending, _) => {
                self.pending = pending;
                self.recv.read_chunks(bufs).await
            }
        }
    }

    fn stop(&mut self, code: u32) {
        self.pending = None;
        self.recv.stop(code);
    }
}
