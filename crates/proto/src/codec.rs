//! Framing: `version (u8) | kind (u8) | length (u32, big endian) | postcard body`.

use bytes::{BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The protocol version written in every frame.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes before the body: version, kind, length.
pub const FRAME_HEADER_LEN: usize = 6;
/// The largest body a frame may carry (64 KiB). Larger frames are refused before any
/// allocation.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Which family of message a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A [`crate::ControlMessage`].
    Control = 1,
    /// A [`crate::StreamHeader`].
    StreamHeader = 2,
    /// A [`crate::StreamReply`].
    StreamReply = 3,
}

/// A message type that travels in a frame of one [`FrameKind`].
pub trait Message: Serialize + DeserializeOwned {
    /// The frame kind this message uses.
    const KIND: FrameKind;
}

/// Encoding failed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded body would exceed [`MAX_FRAME_LEN`].
    #[error("encoded message is {0} bytes, more than the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The serializer failed.
    #[error("serialization failed: {0}")]
    Serialize(String),
}

/// Decoding failed: the peer sent something invalid. Never retried on the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame's version byte is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The frame's kind byte is not the kind expected here.
    #[error("unexpected frame kind {found} (expected {expected})")]
    UnexpectedKind {
        /// The kind expected.
        expected: u8,
        /// The kind found.
        found: u8,
    },
    /// The frame's length exceeds [`MAX_FRAME_LEN`].
    #[error("frame length {0} exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The body is not a valid message.
    #[error("malformed message body: {0}")]
    Malformed(String),
}

/// The result of a successful decode call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<M> {
    /// A whole message, and how many bytes of the input it used.
    Message {
        /// The message.
        message: M,
        /// Bytes consumed from the input.
        consumed: usize,
    },
    /// The input holds an incomplete frame; at least this many more bytes are needed.
    NeedMore(usize),
}

/// Append one frame carrying `message` to `dst`.
pub fn encode<M: Message>(message: &M, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let start = dst.len();
    dst.reserve(FRAME_HEADER_LEN + 64);
    dst.put_u8(PROTOCOL_VERSION);
    dst.put_u8(M::KIND as u8);
    dst.put_u32(0);
    let writer = (&mut *dst).writer();
    if let Err(err) = postcard::to_io(message, writer) {
        dst.truncate(start);
        return Err(EncodeError::Serialize(err.to_string()));
    }
    let body_len = dst.len() - start - FRAME_HEADER_LEN;
    if body_len > MAX_FRAME_LEN {
        dst.truncate(start);
        return Err(EncodeError::TooLarge(body_len));
    }
    // The length fits in u32: it was just checked against MAX_FRAME_LEN.
    let len = body_len as u32;
    dst[start + 2..start + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Decode one frame of message type `M` from the start of `src`.
///
/// Never panics. Refuses oversized frames before looking at their body, so a hostile peer
/// cannot make the decoder allocate more than [`MAX_FRAME_LEN`] bytes' worth of message.
pub fn decode<M: Message>(src: &[u8]) -> Result<Decoded<M>, DecodeError> {
    if src.len() < 2 {
        return Ok(Decoded::NeedMore(FRAME_HEADER_LEN - src.len()));
    }
    if src[0] != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(src[0]));
    }
    if src[1] != M::KIND as u8 {
        return Err(DecodeError::UnexpectedKind {
            expected: M::KIND as u8,
            found: src[1],
        });
    }
    if src.len() < FRAME_HEADER_LEN {
        return Ok(Decoded::NeedMore(FRAME_HEADER_LEN - src.len()));
    }
    let len = u32::from_be_bytes([src[2], src[3], src[4], src[5]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge(len));
    }
    let end = FRAME_HEADER_LEN + len;
    if src.len() < end {
        return Ok(Decoded::NeedMore(end - src.len()));
    }
    let body = &src[FRAME_HEADER_LEN..end];
    let (message, rest) =
        postcard::take_from_bytes::<M>(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes after message",
            rest.len()
        )));
    }
    Ok(Decoded::Message {
        message,
        consumed: end,
    })
}
