//! What the HTTP/2 transport puts on the wire beyond plain HTTP/2, without any I/O: the
//! request that stands for each kind of stream, and the close record carried on the session
//! stream.

use bytes::{BufMut, Bytes, BytesMut};

/// The authority of every request; the edge's name was checked by TLS already.
const AUTHORITY: &str = "underpass";

/// Largest close record accepted from the peer (code and reason): QUIC bounds the reason by a
/// packet, HTTP/2 has no such bound, so the transport sets one.
pub(crate) const MAX_CLOSE_RECORD: usize = 4 + 1024;

/// The kinds of request the edge (the HTTP/2 client) sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    /// The first request of a connection, kept open for its lifetime: carries the close
    /// records both ways (see the module docs of [`super`]).
    Session,
    /// A stream the edge opens.
    Stream,
    /// An offer to the connector to open a stream: answered when it does.
    Reverse,
}

impl RequestKind {
    fn path(self) -> &'static str {
        match self {
            RequestKind::Session => "/underpass/session",
            RequestKind::Stream => "/underpass/stream",
            RequestKind::Reverse => "/underpass/reverse",
        }
    }

    /// The request head for this kind; its body is the stream's edge→connector direction.
    pub(crate) fn request(self) -> http::Request<()> {
        let uri = http::Uri::builder()
            .scheme("https")
            .authority(AUTHORITY)
            .path_and_query(self.path())
            .build()
            // Both parts are constants that form a valid URI.
            .expect("constant URI is valid");
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri;
        request
    }

    /// The kind of a request the connector received, `None` for anything else.
    pub(crate) fn of<B>(request: &http::Request<B>) -> Option<Self> {
        if request.method() != http::Method::POST {
            return None;
        }
        [
            RequestKind::Session,
            RequestKind::Stream,
            RequestKind::Reverse,
        ]
        .into_iter()
        .find(|kind| request.uri().path() == kind.path())
    }
}

/// The answer to every request the connector accepts.
pub(crate) fn accepted() -> http::Response<()> {
    http::Response::new(())
}

/// A close: the application code and reason of [`crate::Connection::close`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseRecord {
    pub(crate) code: u32,
    pub(crate) reason: Vec<u8>,
}

impl CloseRecord {
    /// The record as sent: the code (big-endian), then the reason, cut to fit
    /// [`MAX_CLOSE_RECORD`]. The session stream's END_STREAM ends it.
    pub(crate) fn encode(&self) -> Bytes {
        let reason = &self.reason[..self.reason.len().min(MAX_CLOSE_RECORD - 4)];
        let mut out = BytesMut::with_capacity(4 + reason.len());
        out.put_u32(self.code);
        out.put_slice(reason);
        out.freeze()
    }

    /// Parse a whole record; `None` if it is too short or too long.
    pub(crate) fn decode(record: &[u8]) -> Option<Self> {
        if record.len() > MAX_CLOSE_RECORD {
            return None;
        }
        let (code, reason) = record.split_first_chunk::<4>()?;
        Some(Self {
            code: u32::from_be_bytes(*code),
            reason: reason.to_vec(),
        })
    }

    /// How this close reads in the peer's
    /// [`StreamError::ConnectionLost`](crate::StreamError::ConnectionLost), worded as QUIC's:
    /// `closed by peer: <reason> (code <code>)`, or `closed by peer: <code>` without reason.
    pub(crate) fn describe_remote(&self) -> String {
        if self.reason.is_empty() {
            format!("closed by peer: {}", self.code)
        } else {
            format!(
                "closed by peer: {} (code {})",
                String::from_utf8_lossy(&self.reason),
                self.code
            )
        }
    }

    /// How this close reads on the side that made it.
    pub(crate) fn describe_local(&self) -> String {
        if self.reason.is_empty() {
            format!("closed locally: {}", self.code)
        } else {
            format!(
                "closed locally: {} (code {})",
                String::from_utf8_lossy(&self.reason),
                self.code
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_recognised_from_its_request() {
        for kind in [
            RequestKind::Session,
            RequestKind::Stream,
            RequestKind::Reverse,
        ] {
            let request = kind.request();
            assert_eq!(request.uri().scheme_str(), Some("https"));
            assert_eq!(
                request.uri().authority().map(|a| a.as_str()),
                Some(AUTHORITY)
            );
            assert_eq!(RequestKind::of(&request), Some(kind));
        }
        let mut other = RequestKind::Stream.request();
        *other.method_mut() = http::Method::GET;
        assert_eq!(RequestKind::of(&other), None);
    }

    #[test]
    fn close_records_round_trip() {
        for record in [
            CloseRecord {
                code: 7,
                reason: b"going away".to_vec(),
            },
            CloseRecord {
                code: u32::MAX,
                reason: Vec::new(),
            },
        ] {
            assert_eq!(CloseRecord::decode(&record.encode()), Some(record));
        }
    }

    #[test]
    fn long_reasons_are_cut_and_bad_records_refused() {
        let long = CloseRecord {
            code: 1,
            reason: vec![b'x'; 5000],
        };
        let encoded = long.encode();
        assert_eq!(encoded.len(), MAX_CLOSE_RECORD);
        assert_eq!(CloseRecord::decode(&encoded).map(|r| r.code), Some(1));
        assert_eq!(CloseRecord::decode(b"abc"), None);
        assert_eq!(CloseRecord::decode(&vec![0; MAX_CLOSE_RECORD + 1]), None);
    }

    #[test]
    fn descriptions_match_quic_wording() {
        let with_reason = CloseRecord {
            code: 6,
            reason: b"drained".to_vec(),
        };
        assert_eq!(
            with_reason.describe_remote(),
            "closed by peer: drained (code 6)"
        );
        let bare = CloseRecord {
            code: 3,
            reason: Vec::new(),
        };
        assert_eq!(bare.describe_remote(), "closed by peer: 3");
        assert_eq!(bare.describe_local(), "closed locally: 3");
    }
}
