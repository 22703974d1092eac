//! Framing: `version (u8) | kind (u8) | length (u32, big endian) | postcard body`.

use bytes::{BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The protocol version written in every frame.
pub const PROTOCOL_VERSION: u8 = 3;
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
/// Returns [`Decoded::NeedMore`] while `src` holds only a prefix of a frame, with a count of
/// bytes that is always at least 1 and never more than the frame still lacks, so a reader can
/// wait for exactly that many. The version and kind bytes are checked as soon as they arrive,
/// and the length before the body: a frame longer than [`MAX_FRAME_LEN`] is refused without
/// waiting for its body.
///
/// Never panics. The body is parsed in place from `src`; the only allocations are those of the
/// decoded message itself: at most 27 × [`MAX_FRAME_LEN`] (1.7 MB) in all, whatever the
/// frame's length prefixes claim (see the crate's `bounded` module and `docs/protocol.md`).
pub fn decode<M: Message>(src: &[u8]) -> Result<Decoded<M>, DecodeError> {
    if let Some(&version) = src.first() {
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
    }
    if let Some(&kind) = src.get(1) {
        if kind != M::KIND as u8 {
            return Err(DecodeError::UnexpectedKind {
                expected: M::KIND as u8,
                found: kind,
            });
        }
    }
    let Some(&[_, _, l0, l1, l2, l3]) = src.get(..FRAME_HEADER_LEN) else {
        return Ok(Decoded::NeedMore(FRAME_HEADER_LEN - src.len()));
    };
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge(len));
    }
    let end = FRAME_HEADER_LEN + len;
    let Some(body) = src.get(FRAME_HEADER_LEN..end) else {
        return Ok(Decoded::NeedMore(end - src.len()));
    };
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

#[cfg(test)]
pub(crate) mod tests {
    use std::fmt::Debug;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{BodyKind, Header, HttpRequestHead, Origin, RequestId, Scheme, TcpConnect};
    use crate::{ControlMessage, DialTarget, Heartbeat, Host, StreamHeader, StreamReply};

    /// Encode `message` alone, check it decodes back to itself using every byte, and return
    /// the frame.
    pub(crate) fn round_trip<M: Message + PartialEq + Debug>(message: &M) -> BytesMut {
        let mut buf = BytesMut::new();
        encode(message, &mut buf).expect("test messages fit in a frame");
        match decode::<M>(&buf) {
            Ok(Decoded::Message {
                message: decoded,
                consumed,
            }) => {
                assert_eq!(&decoded, message);
                assert_eq!(consumed, buf.len());
            }
            other => panic!("{message:?} did not round-trip: {other:?}"),
        }
        buf
    }

    fn tcp_header() -> StreamHeader {
        StreamHeader::Tcp(TcpConnect {
            origin: Origin::Dial(DialTarget::new(
                Host::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 50))),
                6379,
            )),
            request_id: RequestId(1),
        })
    }

    fn http_header(value_len: usize) -> StreamHeader {
        StreamHeader::Http(HttpRequestHead {
            method: "POST".into(),
            scheme: Scheme::Http,
            authority: "api.internal".into(),
            path: "/upload".into(),
            headers: vec![Header::new("x-big", vec![b'a'; value_len])],
            origin: Origin::Dial(DialTarget::new(Host::Name("api.internal".into()), 80)),
            body: BodyKind::Streaming,
            request_id: RequestId(u64::MAX),
        })
    }

    fn frame_bytes<M: Message>(message: &M) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode(message, &mut buf).expect("test messages fit in a frame");
        buf.to_vec()
    }

    /// Every strict prefix of `frame` must ask for more, by a count that is at least 1 and
    /// never more than the frame still lacks.
    fn assert_prefixes_need_more<M: Message + Debug>(frame: &[u8]) {
        for cut in 0..frame.len() {
            let expected = if cut < FRAME_HEADER_LEN {
                FRAME_HEADER_LEN - cut
            } else {
                frame.len() - cut
            };
            match decode::<M>(&frame[..cut]) {
                Ok(Decoded::NeedMore(n)) => assert_eq!(n, expected, "prefix of {cut} bytes"),
                other => panic!("prefix of {cut} bytes gave {other:?}"),
            }
        }
    }

    #[test]
    fn every_prefix_needs_more() {
        assert_prefixes_need_more::<StreamHeader>(&frame_bytes(&tcp_header()));
        assert_prefixes_need_more::<StreamHeader>(&frame_bytes(&http_header(300)));
        assert_prefixes_need_more::<ControlMessage>(&frame_bytes(&ControlMessage::Heartbeat(
            Heartbeat { seq: u64::MAX },
        )));
        assert_prefixes_need_more::<StreamReply>(&frame_bytes(&StreamReply::TcpAccepted));
    }

    #[test]
    fn back_to_back_frames_decode_one_at_a_time() {
        let first = ControlMessage::Heartbeat(Heartbeat { seq: 1 });
        let second = ControlMessage::HeartbeatAck(Heartbeat { seq: 300 });
        let mut buf = BytesMut::new();
        encode(&first, &mut buf).unwrap(); // small message
        let first_len = buf.len();
        encode(&second, &mut buf).unwrap(); // small message
        let second_len = buf.len() - first_len;
        // One extra byte of a third frame after the two.
        buf.put_u8(PROTOCOL_VERSION);

        let Ok(Decoded::Message { message, consumed }) = decode::<ControlMessage>(&buf) else {
            panic!("first frame did not decode");
        };
        assert_eq!((message, consumed), (first, first_len));
        let rest = &buf[consumed..];
        let Ok(Decoded::Message { message, consumed }) = decode::<ControlMessage>(rest) else {
            panic!("second frame did not decode");
        };
        assert_eq!((message, consumed), (second, second_len));
        assert_eq!(
            decode::<ControlMessage>(&rest[consumed..]),
            Ok(Decoded::NeedMore(FRAME_HEADER_LEN - 1))
        );
    }

    #[test]
    fn encode_appends_after_existing_bytes() {
        let mut buf = BytesMut::from(&b"xyz"[..]);
        encode(&StreamReply::TcpAccepted, &mut buf).unwrap(); // small message
        assert_eq!(&buf[..3], b"xyz");
        assert_eq!(
            decode::<StreamReply>(&buf[3..]),
            Ok(Decoded::Message {
                message: StreamReply::TcpAccepted,
                consumed: buf.len() - 3
            })
        );
    }

    #[test]
    fn frame_header_layout() {
        let frame = frame_bytes(&StreamReply::TcpAccepted);
        // version 3, kind 3, length 1 (big endian), body = variant index 1.
        assert_eq!(frame, [PROTOCOL_VERSION, 3, 0, 0, 0, 1, 1]);
        assert_eq!(PROTOCOL_VERSION, 3);
    }

    #[test]
    fn wrong_version_is_refused_from_the_first_byte() {
        let mut frame = frame_bytes(&tcp_header());
        // Version 2 (before request ids) and a future version 4 are both refused.
        for version in [2, 4] {
            frame[0] = version;
            for cut in 1..=frame.len() {
                assert_eq!(
                    decode::<StreamHeader>(&frame[..cut]),
                    Err(DecodeError::UnsupportedVersion(version))
                );
            }
        }
        frame[0] = 0;
        assert_eq!(
            decode::<StreamHeader>(&frame),
            Err(DecodeError::UnsupportedVersion(0))
        );
    }

    #[test]
    fn wrong_kind_is_refused_from_the_second_byte() {
        let frame = frame_bytes(&tcp_header());
        for cut in 2..=frame.len() {
            assert_eq!(
                decode::<ControlMessage>(&frame[..cut]),
                Err(DecodeError::UnexpectedKind {
                    expected: FrameKind::Control as u8,
                    found: FrameKind::StreamHeader as u8,
                })
            );
            assert!(matches!(
                decode::<StreamReply>(&frame[..cut]),
                Err(DecodeError::UnexpectedKind { .. })
            ));
        }
        for kind in [0u8, 4, 255] {
            assert_eq!(
                decode::<StreamReply>(&[PROTOCOL_VERSION, kind]),
                Err(DecodeError::UnexpectedKind {
                    expected: 3,
                    found: kind
                })
            );
        }
    }

    #[test]
    fn oversize_length_is_refused_before_the_body() {
        for len in [MAX_FRAME_LEN as u32 + 1, u32::MAX] {
            let mut frame = vec![PROTOCOL_VERSION, FrameKind::StreamHeader as u8];
            frame.extend_from_slice(&len.to_be_bytes());
            assert_eq!(
                decode::<StreamHeader>(&frame),
                Err(DecodeError::TooLarge(len as usize))
            );
        }
        // Exactly the limit is allowed: the decoder waits for the body.
        let mut frame = vec![PROTOCOL_VERSION, FrameKind::StreamHeader as u8];
        frame.extend_from_slice(&(MAX_FRAME_LEN as u32).to_be_bytes());
        assert_eq!(
            decode::<StreamHeader>(&frame),
            Ok(Decoded::NeedMore(MAX_FRAME_LEN))
        );
    }

    #[test]
    fn largest_frame_round_trips_and_one_more_byte_is_refused() {
        // Grow the header value until the body is exactly MAX_FRAME_LEN.
        let body_len = |value_len| {
            postcard::to_stdvec(&http_header(value_len))
                .expect("plain data encodes")
                .len()
        };
        let mut value_len = MAX_FRAME_LEN - body_len(0);
        // The value's varint length prefix grows from 1 to 3 bytes along the way.
        while body_len(value_len) > MAX_FRAME_LEN {
            value_len -= 1;
        }
        let frame = round_trip(&http_header(value_len));
        assert_eq!(frame.len(), FRAME_HEADER_LEN + MAX_FRAME_LEN);

        let mut buf = BytesMut::from(&b"keep"[..]);
        assert!(matches!(
            encode(&http_header(value_len + 1), &mut buf),
            Err(EncodeError::TooLarge(n)) if n == MAX_FRAME_LEN + 1
        ));
        assert_eq!(&buf[..], b"keep", "a failed encode leaves dst as it was");
    }

    /// Rewrite the length field of `frame` to match its body.
    fn fix_length(frame: &mut [u8]) {
        let len = (frame.len() - FRAME_HEADER_LEN) as u32;
        frame[2..FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    }

    #[test]
    fn trailing_bytes_inside_the_frame_are_malformed() {
        let mut frame = frame_bytes(&tcp_header());
        frame.push(0);
        fix_length(&mut frame);
        let Err(DecodeError::Malformed(reason)) = decode::<StreamHeader>(&frame) else {
            panic!("trailing byte accepted");
        };
        assert!(reason.contains("trailing"), "{reason}");
    }

    #[test]
    fn truncated_body_is_malformed() {
        let full = frame_bytes(&http_header(40));
        for body_len in 0..full.len() - FRAME_HEADER_LEN {
            let mut frame = full[..FRAME_HEADER_LEN + body_len].to_vec();
            fix_length(&mut frame);
            assert!(
                matches!(
                    decode::<StreamHeader>(&frame),
                    Err(DecodeError::Malformed(_))
                ),
                "body cut to {body_len} bytes"
            );
        }
    }

    #[test]
    fn unknown_variant_tags_are_malformed() {
        // ControlMessage has 6 variants (0..=5), StreamHeader 2, StreamReply 3.
        let cases: [(u8, u8); 3] = [(1, 6), (2, 2), (3, 3)];
        for (kind, tag) in cases {
            let frame = [PROTOCOL_VERSION, kind, 0, 0, 0, 1, tag];
            let result = match kind {
                1 => decode::<ControlMessage>(&frame).map(|_| ()),
                2 => decode::<StreamHeader>(&frame).map(|_| ()),
                _ => decode::<StreamReply>(&frame).map(|_| ()),
            };
            assert!(
                matches!(result, Err(DecodeError::Malformed(_))),
                "{kind}/{tag}"
            );
        }
    }

    #[test]
    fn hostile_length_prefixes_are_errors() {
        // StreamHeader::Http with a method string claiming 2^32 bytes.
        let body = [0u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
        let mut frame = vec![PROTOCOL_VERSION, FrameKind::StreamHeader as u8];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        assert!(matches!(
            decode::<StreamHeader>(&frame),
            Err(DecodeError::Malformed(_))
        ));
        // StreamReply::Http { status 200, headers: 60 000 claimed, then 60 000 zero bytes }: the
        // count fits the input, so postcard passes it on; each zero pair is one empty header,
        // and the frame runs out before the count is reached.
        let mut body = vec![0u8, 200, 1, 0xe0, 0xd4, 0x03];
        body.resize(body.len() + 60_000, 0);
        let mut frame = vec![PROTOCOL_VERSION, FrameKind::StreamReply as u8];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        assert!(matches!(
            decode::<StreamReply>(&frame),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn empty_input_needs_a_whole_header() {
        assert_eq!(
            decode::<ControlMessage>(&[]),
            Ok(Decoded::NeedMore(FRAME_HEADER_LEN))
        );
    }
}
