//! The connector side: accept a stream and read what it asks for.

use std::time::Duration;

use underpass_proto::{ProxyErrorReply, ProxyStatus, StreamHeader, StreamReply};
use underpass_transport::{Connection, SendStream, StreamError};

use crate::frame::{write_frame, Buffered, FrameReader, MuxError};

/// A stream the edge opened, before its header is read.
pub struct IncomingStream<C: Connection> {
    /// Sending half (towards the edge).
    pub send: C::Send,
    /// Receiving half (from the edge), framed.
    pub reader: FrameReader<C::Recv>,
}

/// Accept the next stream the edge opens. Cancel-safe.
pub async fn accept_stream<C: Connection>(conn: &C) -> Result<IncomingStream<C>, StreamError> {
    let (send, recv) = conn.accept_bi().await?;
    Ok(IncomingStream {
        send,
        reader: FrameReader::new(recv),
    })
}

impl<C: Connection> IncomingStream<C> {
    /// Read the stream header within `limit`.
    pub async fn header(&mut self, limit: Duration) -> Result<StreamHeader, MuxError> {
        self.reader.expect_within(limit).await
    }

    /// Answer with a Proxy-Status error and finish the stream.
    pub async fn refuse(mut self, status: ProxyStatus, details: String) -> Result<(), MuxError> {
        let reply = StreamReply::Error(ProxyErrorReply { status, details });
        write_frame(&mut self.send, &reply).await?;
        self.send.finish()?;
        Ok(())
    }

    /// Send a reply frame, keeping the stream open.
    pub async fn reply(&mut self, reply: &StreamReply) -> Result<(), MuxError> {
        write_frame(&mut self.send, reply).await
    }

    /// Split into the send half and the body reader.
    pub fn into_parts(self) -> (C::Send, Buffered<C::Recv>) {
        (self.send, self.reader.into_body())
    }
}
