//! Bounded `Vec` deserialization: a hostile length prefix cannot make the decoder reserve more
//! memory than a legitimate frame could need.
//!
//! serde's own `Vec<T>` visitor reserves `min(len, 1 MiB / size_of::<T>())` elements before
//! reading any, trusting the length prefix up to 1 MiB. postcard 1.2 hides a length prefix
//! larger than the bytes left in the input, but a prefix that fits the input still reserves up
//! to 1 MiB per `Vec`, nested `Vec`s add up, and a frame of many small elements that outgrows
//! the 1 MiB first reservation is copied into a 2 MiB one.
//!
//! Every `Vec` field of a wire message is deserialized with [`vec`] instead. It knows the
//! fewest bytes one element takes on the wire ([`MinWireLen`]); since a frame body is at most
//! [`MAX_FRAME_LEN`] bytes, no valid frame holds more than `MAX_FRAME_LEN / MIN_WIRE_LEN`
//! elements in one `Vec`. A longer length prefix is refused before anything is reserved, and
//! so is one longer than the bytes left in the frame (postcard then gives no size hint). A
//! length that passes both checks is reserved at once, so the `Vec` is never regrown and
//! copied; the element count is checked again while reading.
//!
//! The resulting bound on one `Vec` is `MAX_FRAME_LEN / MIN_WIRE_LEN * size_of::<T>()` bytes.
//! The largest is `Vec<AnnouncedRoute>` (and `Vec<Header>`): 32 768 × 48 bytes = 1.5 MiB, which
//! is exactly what a legitimate 64 KiB frame of empty routes needs. Only two `Vec`s are ever
//! being filled at once (an outer one and one inside its current element); the worst pair is a
//! `Register` claiming 32 768 routes whose first route claims 32 768 port ranges (128 KiB):
//! 26 × [`MAX_FRAME_LEN`] in all. Strings are allocated only after postcard has checked that
//! their bytes are present, so together with error messages they stay under one more
//! [`MAX_FRAME_LEN`]. Decoding one frame therefore allocates at most 27 × [`MAX_FRAME_LEN`]
//! (1.7 MB) in total, and a frame of `n` body bytes whose length prefixes do not fit it
//! allocates almost nothing; `tests/alloc.rs` measures both with a counting allocator.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

use crate::codec::MAX_FRAME_LEN;

/// The fewest bytes one value of a type takes in postcard encoding.
///
/// Too small a value only weakens the allocation bound; too large a value would make valid
/// frames fail to decode. The unit tests encode the smallest value of each type and compare.
pub(crate) trait MinWireLen {
    /// Minimum encoded length in bytes.
    const MIN_WIRE_LEN: usize;
}

impl MinWireLen for u8 {
    /// A `u8` is one raw byte.
    const MIN_WIRE_LEN: usize = 1;
}

impl MinWireLen for (u16, u16) {
    /// Two varints of at least one byte each.
    const MIN_WIRE_LEN: usize = 2;
}

impl MinWireLen for SocketAddr {
    /// Variant tag (1) + IPv4 octets (4) + port varint (at least 1).
    const MIN_WIRE_LEN: usize = 6;
}

/// The most elements a `Vec<T>` can hold inside one frame body.
pub(crate) const fn max_elements<T: MinWireLen>() -> usize {
    MAX_FRAME_LEN / T::MIN_WIRE_LEN
}

/// Deserialize a `Vec<T>` whose reservation is bounded by what fits in one frame.
///
/// Use as `#[serde(deserialize_with = "crate::bounded::vec")]`. The encoding is the same as a
/// plain `Vec<T>`: a varint length followed by the elements.
pub(crate) fn vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + MinWireLen,
{
    deserializer.deserialize_seq(BoundedVecVisitor(PhantomData))
}

struct BoundedVecVisitor<T>(PhantomData<T>);

impl<'de, T> Visitor<'de> for BoundedVecVisitor<T>
where
    T: Deserialize<'de> + MinWireLen,
{
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {} elements", max_elements::<T>())
    }

    fn visit_seq<A>(self, mut seq: A) -> Result<Vec<T>, A::Error>
    where
        A: SeqAccess<'de>,
    {
        let limit = max_elements::<T>();
        // Every element takes at least one byte, so a valid length prefix never exceeds the
        // bytes left in the frame. postcard reading from a slice passes the length prefix on
        // as the hint exactly when it does not exceed them, and gives no hint otherwise: no
        // hint means a length that cannot be valid, refused before anything is reserved
        // (reading on would grow the `Vec` element by element, copying it on every doubling).
        // The round-trip tests fail loudly if a postcard release ever stops giving hints.
        let Some(hint) = seq.size_hint() else {
            return Err(A::Error::custom(
                "sequence length exceeds the bytes left in the frame",
            ));
        };
        if hint > limit {
            return Err(A::Error::invalid_length(hint, &self));
        }
        let mut out = Vec::with_capacity(hint);
        while let Some(element) = seq.next_element()? {
            if out.len() == limit {
                return Err(A::Error::invalid_length(limit + 1, &self));
            }
            out.push(element);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Bytes(#[serde(deserialize_with = "vec")] Vec<u8>);

    #[test]
    fn min_wire_len_matches_the_smallest_encoding() {
        let smallest_pair = postcard::to_stdvec(&(0u16, 0u16)).unwrap(); // plain data encodes
        assert_eq!(smallest_pair.len(), <(u16, u16)>::MIN_WIRE_LEN);
        let smallest_addr =
            postcard::to_stdvec(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))
                .unwrap(); // plain data encodes
        assert_eq!(smallest_addr.len(), SocketAddr::MIN_WIRE_LEN);
        assert_eq!(postcard::to_stdvec(&0u8).unwrap().len(), u8::MIN_WIRE_LEN); // plain data
    }

    #[test]
    fn same_encoding_as_a_plain_vec() {
        let plain = postcard::to_stdvec(&vec![1u8, 2, 3]).unwrap(); // plain data encodes
        let decoded: Bytes = postcard::from_bytes(&plain).unwrap(); // valid encoding
        assert_eq!(decoded, Bytes(vec![1, 2, 3]));
    }

    #[test]
    fn refuses_a_length_prefix_beyond_the_frame_limit() {
        // Length prefix MAX_FRAME_LEN + 1 as a varint, followed by enough bytes that postcard
        // passes the length on as the size hint.
        let mut input = Vec::new();
        let mut len = MAX_FRAME_LEN + 1;
        while len >= 0x80 {
            input.push((len as u8) | 0x80);
            len >>= 7;
        }
        input.push(len as u8);
        input.resize(input.len() + MAX_FRAME_LEN + 1, 0);
        assert!(postcard::from_bytes::<Bytes>(&input).is_err());
    }

    #[test]
    fn accepts_the_largest_valid_length() {
        let plain = postcard::to_stdvec(&vec![7u8; MAX_FRAME_LEN]).unwrap(); // plain data
        let decoded: Bytes = postcard::from_bytes(&plain).unwrap(); // valid encoding
        assert_eq!(decoded.0.len(), MAX_FRAME_LEN);
    }

    #[test]
    fn length_beyond_the_remaining_bytes_is_refused() {
        // Claims 4 bytes, holds 3: refused before any element is read.
        let input = [4, 1, 2, 3];
        let err = postcard::from_bytes::<Bytes>(&input).unwrap_err(); // asserted invalid
        assert_eq!(err, postcard::Error::SerdeDeCustom);
        // Exactly enough bytes is fine.
        let decoded: Bytes = postcard::from_bytes(&[3, 1, 2, 3]).unwrap(); // valid encoding
        assert_eq!(decoded, Bytes(vec![1, 2, 3]));
    }

    #[test]
    fn truncated_sequence_is_an_error() {
        // Claims 200 bytes, holds 3.
        let input = [0xc8, 0x01, 1, 2, 3];
        assert!(postcard::from_bytes::<Bytes>(&input).is_err());
    }
}
