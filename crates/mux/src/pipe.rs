//! A TCP socket spliced to a transport stream, both directions, with true half-close.
//!
//! - socket EOF → the stream's send side is finished; the other direction keeps flowing;
//! - stream end (peer finished) → the socket's write side is shut down (`shutdown(SHUT_WR)`);
//! - a reset or stop from the peer, or a socket error, tears both directions down at once and
//!   closes the socket with a TCP reset (never a FIN, which would look like a clean end); the
//!   stream's peer sees a reset with [`RESET_CANCELLED`].
//!
//! Idle pipes hold no read buffer: a buffer is taken only when the socket is readable and
//! released when it would block, so thousands of idle streams cost little memory.

use std::io::{self, IoSlice};
use std::pin::pin;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;
use underpass_proto::RESET_CANCELLED;
use underpass_transport::{RecvStream, SendStream, StreamError};

/// Bytes asked of the socket per read under load; big reads mean fewer, larger stream chunks.
const SOCKET_READ_BUF: usize = 256 * 1024;
/// Most stream chunks gathered into one vectored socket write.
const STREAM_CHUNKS: usize = 32;
/// Reads smaller than this are copied into an exact-size buffer instead of pinning a large one.
const SMALL_READ: usize = 4 * 1024;

/// How a pipe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipeOutcome {
    /// Both directions ended with a clean end-of-stream.
    Closed,
    /// The stream's peer reset or stopped it.
    StreamAborted(StreamError),
    /// The socket failed (reset, broken pipe) or the stream's connection was lost.
    SocketFailed(String),
}

/// What went through a pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeStats {
    /// Bytes read from the socket and sent on the stream.
    pub socket_to_stream: u64,
    /// Bytes read from the stream and written to the socket.
    pub stream_to_socket: u64,
    /// How it ended.
    pub outcome: PipeOutcome,
}

enum Failure {
    Stream(StreamError),
    Socket(io::Error),
}

/// Splice `socket` and the stream (`send`, `recv`) until both directions end or one fails.
///
/// `initial` is sent on the stream before anything read from the socket (bytes a protocol
/// layer already read off the socket, such as those after an HTTP `CONNECT`).
pub async fn pipe_tcp<S, R>(
    socket: TcpStream,
    initial: Option<Bytes>,
    mut send: S,
    mut recv: R,
) -> PipeStats
where
    S: SendStream,
    R: RecvStream,
{
    let (socket_read, mut socket_write) = socket.into_split();
    let mut up_bytes = 0u64;
    let mut down_bytes = 0u64;
    let failure = {
        let up = pin!(async {
            if let Some(initial) = initial.filter(|b| !b.is_empty()) {
                up_bytes += initial.len() as u64;
                send.write_chunk(initial).await.map_err(Failure::Stream)?;
            }
            let mut buf = BytesMut::new();
            loop {
                if buf.capacity() - buf.len() < SOCKET_READ_BUF / 4 {
                    buf.reserve(SOCKET_READ_BUF);
                }
                match socket_read.try_read_buf(&mut buf) {
                    Ok(0) => {
                        send.finish().map_err(Failure::Stream)?;
                        return Ok(());
                    }
                    Ok(n) => {
                        up_bytes += n as u64;
                        let chunk = if n < SMALL_READ {
                            let small = Bytes::copy_from_slice(&buf);
                            buf.clear();
                            small
                        } else {
                            buf.split().freeze()
                        };
                        send.write_chunk(chunk).await.map_err(Failure::Stream)?;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        // Nothing to read: hold no buffer while idle.
                        buf = BytesMut::new();
                        socket_read.readable().await.map_err(Failure::Socket)?;
                    }
                    Err(err) => return Err(Failure::Socket(err)),
                }
            }
        });
        let down = pin!(async {
            // Transport chunks are about one packet each: gather the ready ones and write
            // them with one vectored write instead of a syscall per chunk.
            let mut chunks: [Bytes; STREAM_CHUNKS] = std::array::from_fn(|_| Bytes::new());
            loop {
                match recv.read_chunks(&mut chunks).await {
                    Ok(Some(n)) => {
                        let ready = &mut chunks[..n];
                        down_bytes += ready.iter().map(|c| c.len() as u64).sum::<u64>();
                        write_all_chunks(&mut socket_write, ready)
                            .await
                            .map_err(Failure::Socket)?;
                    }
                    Ok(None) => {
                        socket_write.shutdown().await.map_err(Failure::Socket)?;
                        return Ok(());
                    }
                    Err(err) => return Err(Failure::Stream(err)),
                }
            }
        });
        run_both(up, down).await
    };
    let aborted = failure.is_some();
    let outcome = match failure {
        None => PipeOutcome::Closed,
        Some(failure) => {
            send.reset(RESET_CANCELLED);
            recv.stop(RESET_CANCELLED);
            match failure {
                Failure::Stream(
                    err @ (StreamError::Reset(_) | StreamError::Stopped(_) | StreamError::Closed),
                ) => PipeOutcome::StreamAborted(err),
                Failure::Stream(err) => PipeOutcome::SocketFailed(err.to_string()),
                Failure::Socket(err) => PipeOutcome::SocketFailed(err.to_string()),
            }
        }
    };
    // Dropping both socket halves closes the socket now, whatever the other side does. After
    // a failure it must not look like a clean end: dropping the write half alone would send a
    // FIN, so the halves are joined again and closed with SO_LINGER 0, which sends a reset.
    if aborted {
        match socket_read.reunite(socket_write) {
            Ok(socket) => abort_socket(socket),
            Err(halves) => drop(halves),
        }
    } else {
        drop(socket_read);
        drop(socket_write);
    }
    debug!(
        up = up_bytes,
        down = down_bytes,
        outcome = ?outcome,
        "pipe ended"
    );
    PipeStats {
        socket_to_stream: up_bytes,
        stream_to_socket: down_bytes,
        outcome,
    }
}

/// Close `socket` with a TCP reset (SO_LINGER 0) rather than a clean end of stream.
pub fn abort_socket(socket: TcpStream) {
    if let Err(error) = socket.set_zero_linger() {
        debug!(%error, "cannot set SO_LINGER 0; closing normally");
    }
    drop(socket);
}

/// Write every byte of `chunks` with vectored writes; the chunks are emptied as they go out.
async fn write_all_chunks<W: AsyncWrite + Unpin>(
    socket: &mut W,
    chunks: &mut [Bytes],
) -> io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let mut slices = [IoSlice::new(&[]); STREAM_CHUNKS];
        let mut count = 0;
        for chunk in chunks[first..].iter().filter(|c| !c.is_empty()) {
            if count == slices.len() {
                break;
            }
            slices[count] = IoSlice::new(chunk);
            count += 1;
        }
        if count == 0 {
            break;
        }
        let mut written = socket.write_vectored(&slices[..count]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 && first < chunks.len() {
            let chunk = &mut chunks[first];
            let take = written.min(chunk.len());
            chunk.advance(take);
            written -= take;
            if chunk.is_empty() {
                first += 1;
            }
        }
    }
    for chunk in chunks.iter_mut() {
        *chunk = Bytes::new();
    }
    Ok(())
}

/// Drive both directions until both succeed or the first fails.
async fn run_both<U, D>(mut up: U, mut down: D) -> Option<Failure>
where
    U: std::future::Future<Output = Result<(), Failure>> + Unpin,
    D: std::future::Future<Output = Result<(), Failure>> + Unpin,
{
    let mut up_done = false;
    let mut down_done = false;
    while !(up_done && down_done) {
        tokio::select! {
            result = &mut up, if !up_done => match result {
                Ok(()) => up_done = true,
                Err(failure) => return Some(failure),
            },
            result = &mut down, if !down_done => match result {
                Ok(()) => down_done = true,
                Err(failure) => return Some(failure),
            },
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// Partial vectored writes (a 7-byte pipe takes a few bytes at a time) still deliver every
    /// chunk, in order, and leave the chunks empty.
    #[tokio::test]
    async fn write_all_chunks_survives_partial_writes() {
        let (mut writer, mut reader) = tokio::io::duplex(7);
        let sizes = [1usize, 0, 13, 1200, 5, 0, 64, 3];
        let mut expected = Vec::new();
        let mut chunks: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let chunk: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                expected.extend_from_slice(&chunk);
                Bytes::from(chunk)
            })
            .collect();
        let total = expected.len();
        let read = tokio::spawn(async move {
            let mut got = vec![0u8; total];
            reader.read_exact(&mut got).await.map(|_| got)
        });
        write_all_chunks(&mut writer, &mut chunks)
            .await
            .expect("the reader keeps reading");
        assert!(chunks.iter().all(Bytes::is_empty));
        let got = read.await.expect("reader task").expect("all bytes arrive");
        assert_eq!(got, expected);
    }
}
