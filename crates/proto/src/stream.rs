//! Data-stream headers and replies.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::bounded::MinWireLen;
use crate::codec::{FrameKind, Message};
use crate::status::ProxyStatus;

/// Reset/stop code: the peer went away or cancelled (client closed, request aborted).
pub const RESET_CANCELLED: u32 = 0x10;
/// Reset/stop code: the stream broke the protocol (bad header, oversized frame).
pub const RESET_PROTOCOL: u32 = 0x11;
/// Reset/stop code: an internal error on the sending side.
pub const RESET_INTERNAL: u32 = 0x12;

/// The first frame on every data stream, sent by the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamHeader {
    /// An HTTP exchange (`fetch()`).
    Http(HttpRequestHead),
    /// A raw TCP connection (`connect()`).
    Tcp(TcpConnect),
}

/// A destination host: an IP literal or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name, to be resolved by the connector inside the private network.
    Name(String),
}

/// Where the connector should dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialTarget {
    /// Host to dial.
    pub host: Host,
    /// TCP port to dial.
    pub port: u16,
    /// Resolvers to use for a [`Host::Name`] (a VPC Service's `resolver_ips`); empty means
    /// the connector's own resolver configuration. IPv6 flow info and scope ids are not
    /// carried.
    #[serde(deserialize_with = "crate::bounded::vec")]
    pub resolvers: Vec<SocketAddr>,
}

/// A VPC Service's identifier: stable for the life of the service, the same on every
/// connection, never reused for another service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceId(pub [u8; 16]);

/// A service and the version of its origin policy a stream was opened against. The policy
/// itself travels once per connection on the control stream
/// ([`ControlMessage::ServicePolicy`](crate::ControlMessage::ServicePolicy)); a stream naming a
/// generation the connector has not received yet waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceRef {
    /// The service.
    pub id: ServiceId,
    /// The policy generation: grows by at least one whenever the edge changes the policy.
    pub generation: u64,
}

/// Where a data stream's origin is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// A VPC Network binding: dial this target (an HTTPS origin is verified in full against
    /// the connector's trust store).
    Dial(DialTarget),
    /// A VPC Service binding: dial the service's host and port from its policy.
    Service(ServiceRef),
}

/// A TCP connect: the connector checks the target against its routes, dials, replies
/// [`StreamReply::TcpAccepted`] and then pipes bytes both ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnect {
    /// The destination: an address (VPC Network) or a TCP service's `tcp_port` on its host.
    pub origin: Origin,
    /// The edge's id for the binding request, logged on both sides.
    pub request_id: RequestId,
}

/// The edge's id for one binding request (a `fetch()`, a `CONNECT`, a TCP-binding
/// connection), sent in the stream header so that both sides log the same id. Shown as 16
/// hex digits; zero means "none".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// URL scheme of an HTTP exchange: whether the origin speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheme {
    /// Plain HTTP to the origin.
    Http,
    /// TLS to the origin, with SNI from the authority's host.
    Https,
}

/// How the connector verifies an HTTPS origin's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TlsVerification {
    /// Chain and name (the default).
    #[default]
    VerifyFull,
    /// Chain only; the name is not checked.
    VerifyCa,
    /// Nothing is checked.
    Disabled,
}

/// How a message body is delimited on the stream.
///
/// The body bytes follow the head frame unframed; the body ends where the sender finishes
/// its direction of the stream. The length here is advisory (for the `Content-Length` the
/// other side writes); a mismatch is a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// A body of exactly this many bytes.
    Length(u64),
    /// A body of unknown length (chunked on HTTP/1.1).
    Streaming,
    /// The request asks for a protocol upgrade: after a `101` reply the stream is a raw pipe.
    Upgrade,
}

/// One HTTP header field. Values are bytes: HTTP allows non-UTF-8 (obs-text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Field name, lowercase.
    pub name: String,
    /// Field value.
    #[serde(deserialize_with = "crate::bounded::vec")]
    pub value: Vec<u8>,
}

/// The head of an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequestHead {
    /// Request method (`GET`, `POST`, ...).
    pub method: String,
    /// Whether the origin speaks TLS.
    pub scheme: Scheme,
    /// `host[:port]` from the URL: fills `Host` (unless a `Host` header is present) and SNI.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// End-to-end request headers (hop-by-hop headers already removed).
    #[serde(deserialize_with = "crate::bounded::vec")]
    pub headers: Vec<Header>,
    /// What to dial: an address (VPC Network), or a service whose policy says the host, the
    /// port by scheme and how to verify its certificate.
    pub origin: Origin,
    /// How the request body is delimited.
    pub body: BodyKind,
    /// The edge's id for the binding request, logged on both sides.
    pub request_id: RequestId,
}

/// The head of an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponseHead {
    /// Status code.
    pub status: u16,
    /// End-to-end response headers.
    #[serde(deserialize_with = "crate::bounded::vec")]
    pub headers: Vec<Header>,
    /// How the response body is delimited.
    pub body: BodyKind,
}

/// The connector could not complete the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyErrorReply {
    /// RFC 9209 error type.
    pub status: ProxyStatus,
    /// Human-readable detail (goes into the `details` parameter of `Proxy-Status`).
    pub details: String,
}

/// The connector's answer on a data stream, sent once, before any body bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamReply {
    /// The origin's response head; the body follows.
    Http(HttpResponseHead),
    /// The TCP connection is open; raw bytes follow in both directions.
    TcpAccepted,
    /// The request failed; the connector finishes the stream after this frame.
    Error(ProxyErrorReply),
}

impl Message for StreamHeader {
    const KIND: FrameKind = FrameKind::StreamHeader;
}

impl Message for StreamReply {
    const KIND: FrameKind = FrameKind::StreamReply;
}

impl MinWireLen for Header {
    /// Empty name (1-byte length) and empty value (1-byte length).
    const MIN_WIRE_LEN: usize = 2;
}

impl fmt::Display for Host {
    /// The host as written in a URL authority: IPv6 addresses in brackets (`[::1]`), IPv4
    /// addresses and names as they are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Self {
        Host::Ip(ip)
    }
}

impl DialTarget {
    /// A target with no resolver override.
    pub fn new(host: Host, port: u16) -> Self {
        DialTarget {
            host,
            port,
            resolvers: Vec::new(),
        }
    }

    /// `host:port`, with IPv6 addresses in brackets (`[::1]:6379`): the form of a `CONNECT`
    /// request target or a URL authority.
    pub fn authority(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for DialTarget {
    /// Same as [`DialTarget::authority`]; resolvers are not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl From<SocketAddr> for DialTarget {
    fn from(addr: SocketAddr) -> Self {
        DialTarget::new(Host::Ip(addr.ip()), addr.port())
    }
}

impl Header {
    /// A header field; the name is lowercased (ASCII), as the wire format requires.
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        let mut name = name.into();
        name.make_ascii_lowercase();
        Header {
            name,
            value: value.into(),
        }
    }
}

impl StreamReply {
    /// A [`StreamReply::Error`] with this Proxy-Status error type and detail.
    pub fn error(status: ProxyStatus, details: impl Into<String>) -> Self {
        StreamReply::Error(ProxyErrorReply {
            status,
            details: details.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    use super::*;
    use crate::codec::tests::round_trip;
    use crate::FRAME_HEADER_LEN;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 50));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x50));

    fn hosts() -> [Host; 3] {
        [Host::Ip(V4), Host::Ip(V6), Host::Name("db.internal".into())]
    }

    fn service() -> Origin {
        Origin::Service(ServiceRef {
            id: ServiceId([7; 16]),
            generation: 3,
        })
    }

    fn request(origin: Origin, body: BodyKind) -> HttpRequestHead {
        HttpRequestHead {
            method: "GET".into(),
            scheme: Scheme::Https,
            authority: "internal-api.company.local:8443".into(),
            path: "/users?page=2".into(),
            headers: vec![
                Header::new("Accept", "application/json"),
                Header::new("x-obs-text", vec![0xff, 0x80, b'a']),
                Header::new("x-empty", ""),
            ],
            origin,
            body,
            request_id: RequestId(0x0123_4567_89ab_cdef),
        }
    }

    #[test]
    fn tcp_connect_round_trips_for_every_host_kind() {
        for host in hosts() {
            let mut target = DialTarget::new(host, 5432);
            round_trip(&StreamHeader::Tcp(TcpConnect {
                origin: Origin::Dial(target.clone()),
                request_id: RequestId(7),
            }));
            target.resolvers = vec![
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 53)),
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 5353, 0, 0)),
            ];
            round_trip(&StreamHeader::Tcp(TcpConnect {
                origin: Origin::Dial(target),
                request_id: RequestId::default(),
            }));
        }
        round_trip(&StreamHeader::Tcp(TcpConnect {
            origin: service(),
            request_id: RequestId(u64::MAX),
        }));
    }

    #[test]
    fn http_request_round_trips() {
        let bodies = [
            BodyKind::Empty,
            BodyKind::Length(0),
            BodyKind::Length(u64::MAX),
            BodyKind::Streaming,
            BodyKind::Upgrade,
        ];
        for body in bodies {
            round_trip(&StreamHeader::Http(request(service(), body)));
        }
        for host in hosts() {
            let dial = DialTarget {
                host,
                port: 443,
                resolvers: vec![SocketAddr::new(V4, 53)],
            };
            round_trip(&StreamHeader::Http(request(
                Origin::Dial(dial),
                BodyKind::Empty,
            )));
        }
        let mut plain = request(service(), BodyKind::Streaming);
        plain.scheme = Scheme::Http;
        plain.headers.clear();
        round_trip(&StreamHeader::Http(plain));
    }

    #[test]
    fn every_reply_variant_round_trips() {
        let replies = [
            StreamReply::Http(HttpResponseHead {
                status: 101,
                headers: vec![Header::new("Upgrade", "websocket")],
                body: BodyKind::Upgrade,
            }),
            StreamReply::TcpAccepted,
            StreamReply::error(ProxyStatus::DnsError, "NXDOMAIN for db.internal"),
        ];
        for (index, reply) in replies.iter().enumerate() {
            let frame = round_trip(reply);
            assert_eq!(usize::from(frame[FRAME_HEADER_LEN]), index, "{reply:?}");
        }
        for status in ProxyStatus::ALL {
            round_trip(&StreamReply::error(status, ""));
        }
    }

    /// The first byte of a value's encoding: its variant tag, for an enum.
    fn tag<T: Serialize>(value: &T) -> u8 {
        postcard::to_stdvec(value).expect("plain data encodes")[0]
    }

    #[test]
    fn enum_tags_follow_declaration_order() {
        assert_eq!(
            tag(&StreamHeader::Http(request(service(), BodyKind::Empty))),
            0
        );
        let tcp = StreamHeader::Tcp(TcpConnect {
            origin: Origin::Dial(DialTarget::new(Host::Ip(V4), 1)),
            request_id: RequestId(1),
        });
        assert_eq!(tag(&Origin::Dial(DialTarget::new(Host::Ip(V4), 1))), 0);
        assert_eq!(tag(&service()), 1);
        assert_eq!(tag(&tcp), 1);
        let host_tags: Vec<u8> = hosts().iter().map(tag).collect();
        assert_eq!(host_tags, [0, 0, 1]);
        assert_eq!(tag(&IpAddr::V4(Ipv4Addr::LOCALHOST)), 0);
        assert_eq!(tag(&IpAddr::V6(Ipv6Addr::LOCALHOST)), 1);
        assert_eq!(tag(&Scheme::Http), 0);
        assert_eq!(tag(&Scheme::Https), 1);
        assert_eq!(tag(&TlsVerification::VerifyFull), 0);
        assert_eq!(tag(&TlsVerification::VerifyCa), 1);
        assert_eq!(tag(&TlsVerification::Disabled), 2);
        assert_eq!(tag(&BodyKind::Empty), 0);
        assert_eq!(tag(&BodyKind::Length(5)), 1);
        assert_eq!(tag(&BodyKind::Streaming), 2);
        assert_eq!(tag(&BodyKind::Upgrade), 3);
        assert_eq!(TlsVerification::default(), TlsVerification::VerifyFull);
    }

    /// The size of the header of a typical `connect()`: IPv4 destination, no resolvers.
    #[test]
    fn tcp_connect_header_size() {
        let header = StreamHeader::Tcp(TcpConnect {
            origin: Origin::Dial(DialTarget::new(Host::Ip(V4), 6379)),
            request_id: RequestId(5),
        });
        let frame = round_trip(&header);
        println!(
            "encoded TCP-connect header to 10.0.1.50:6379: {} bytes",
            frame.len()
        );
        assert_eq!(
            frame[..],
            [
                3, 2, 0, 0, 0, 12, // version, kind, body length
                1,  // StreamHeader::Tcp
                0,  // Origin::Dial
                0,  // Host::Ip
                0,  // IpAddr::V4
                10, 0, 1, 50, // octets
                0xeb, 0x31, // port 6379 as a varint
                0,    // no resolvers
                5,    // request id as a varint
            ]
        );
        assert_eq!(frame.len(), 18);
        // A port below 128 takes one byte less; IPv6 takes 12 more; a name its length + 1.
        let sizes = [
            (DialTarget::new(Host::Ip(V4), 80), 17),
            (DialTarget::new(Host::Ip(V6), 6379), 30),
            (DialTarget::new(Host::Name("db.internal".into()), 5432), 25),
        ];
        for (target, size) in sizes {
            let frame = round_trip(&StreamHeader::Tcp(TcpConnect {
                origin: Origin::Dial(target),
                request_id: RequestId::default(),
            }));
            assert_eq!(frame.len(), size);
        }
        // A service stream names the service only: tag, 16-byte id, generation varint; then
        // the request id.
        let frame = round_trip(&StreamHeader::Tcp(TcpConnect {
            origin: service(),
            request_id: RequestId(5),
        }));
        assert_eq!(frame.len(), FRAME_HEADER_LEN + 1 + 1 + 16 + 1 + 1);
    }

    #[test]
    fn host_and_authority_display() {
        assert_eq!(Host::Ip(V4).to_string(), "10.0.1.50");
        assert_eq!(Host::Ip(V6).to_string(), "[fd00::50]");
        assert_eq!(Host::Name("db.internal".into()).to_string(), "db.internal");
        assert_eq!(
            DialTarget::new(Host::Ip(V4), 6379).authority(),
            "10.0.1.50:6379"
        );
        assert_eq!(
            DialTarget::new(Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), 6379).authority(),
            "[::1]:6379"
        );
        assert_eq!(
            DialTarget::from(SocketAddr::new(V6, 443)).to_string(),
            "[fd00::50]:443"
        );
        assert_eq!(Host::from(V4), Host::Ip(V4));
    }

    #[test]
    fn header_new_lowercases_the_name() {
        let header = Header::new("Content-Type", "text/plain");
        assert_eq!(header.name, "content-type");
        assert_eq!(header.value, b"text/plain");
    }
}
