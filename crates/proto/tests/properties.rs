//! Property tests: every message round-trips, whole or fed in arbitrary pieces, and no input
//! makes the decoder panic.

use std::fmt::Debug;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use underpass_proto::{
    decode, encode, AnnouncedRoute, BodyKind, ConnectorId, ControlMessage, Decoded, DialTarget,
    Drain, FrameKind, Header, Heartbeat, Host, HttpRequestHead, HttpResponseHead, Message, Origin,
    PolicyAssembler, ProxyErrorReply, ProxyStatus, RefuseReason, Register, RegisterAccepted,
    RegisterRefused, RequestId, Scheme, ServiceId, ServicePolicy, ServicePolicyCa, ServiceRef,
    StreamHeader, StreamReply, TcpConnect, TlsVerification, TunnelId, FRAME_HEADER_LEN,
    MAX_FRAME_LEN, PROTOCOL_VERSION,
};

// ----- strategies: one per type on the wire ---------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn tunnel_id() -> impl Strategy<Value = TunnelId> {
    any::<[u8; 16]>().prop_map(TunnelId)
}

fn connector_id() -> impl Strategy<Value = ConnectorId> {
    any::<[u8; 16]>().prop_map(ConnectorId)
}

fn announced_route() -> impl Strategy<Value = AnnouncedRoute> {
    (text(), vec(any::<(u16, u16)>(), 0..4))
        .prop_map(|(destination, ports)| AnnouncedRoute { destination, ports })
}

fn register() -> impl Strategy<Value = Register> {
    (
        tunnel_id(),
        any::<[u8; 32]>(),
        connector_id(),
        any::<u8>(),
        text(),
        vec(announced_route(), 0..6),
    )
        .prop_map(
            |(tunnel_id, proof, connector_id, connection_index, version, routes)| Register {
                tunnel_id,
                proof,
                connector_id,
                connection_index,
                version,
                routes,
            },
        )
}

fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    prop_oneof![
        Just(RefuseReason::UnknownTunnel),
        Just(RefuseReason::BadProof),
        Just(RefuseReason::UnsupportedVersion),
        Just(RefuseReason::TooManyConnections),
        Just(RefuseReason::Draining),
        Just(RefuseReason::Malformed),
    ]
}

fn heartbeat() -> impl Strategy<Value = Heartbeat> {
    any::<u64>().prop_map(|seq| Heartbeat { seq })
}

fn control_message() -> impl Strategy<Value = ControlMessage> {
    prop_oneof![
        register().prop_map(ControlMessage::Register),
        (any::<u64>(), text(), any::<u32>()).prop_map(
            |(connection_id, edge_name, heartbeat_interval_ms)| {
                ControlMessage::RegisterAccepted(RegisterAccepted {
                    connection_id,
                    edge_name,
                    heartbeat_interval_ms,
                })
            }
        ),
        (refuse_reason(), text(), any::<u32>()).prop_map(|(reason, message, retry_after_ms)| {
            ControlMessage::RegisterRefused(RegisterRefused {
                reason,
                message,
                retry_after_ms,
            })
        }),
        (any::<u32>(), text())
            .prop_map(|(grace_ms, reason)| ControlMessage::Drain(Drain { grace_ms, reason })),
        heartbeat().prop_map(ControlMessage::Heartbeat),
        heartbeat().prop_map(ControlMessage::HeartbeatAck),
        service_policy().prop_map(ControlMessage::ServicePolicy),
        (service_ref(), vec(any::<u8>(), 0..64)).prop_map(|(service, chunk)| {
            ControlMessage::ServicePolicyCa(ServicePolicyCa { service, chunk })
        }),
        any::<[u8; 16]>().prop_map(|id| ControlMessage::ServiceRemoved(ServiceId(id))),
    ]
}

fn service_ref() -> impl Strategy<Value = ServiceRef> {
    (any::<[u8; 16]>(), any::<u64>()).prop_map(|(id, generation)| ServiceRef {
        id: ServiceId(id),
        generation,
    })
}

fn service_policy() -> impl Strategy<Value = ServicePolicy> {
    (
        (service_ref(), text(), dial_target()),
        (
            option::of(any::<u16>()),
            option::of(any::<u16>()),
            option::of(any::<u16>()),
        ),
        tls_verification(),
        any::<u32>(),
    )
        .prop_map(
            |((service, name, target), (http_port, https_port, tcp_port), tls, ca_pem_len)| {
                ServicePolicy {
                    service,
                    name,
                    host: target.host,
                    resolvers: target.resolvers,
                    http_port,
                    https_port,
                    tcp_port,
                    tls,
                    ca_pem_len,
                }
            },
        )
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        any::<IpAddr>().prop_map(Host::Ip),
        "[a-z0-9.*-]{0,40}".prop_map(Host::Name),
        text().prop_map(Host::Name),
    ]
}

/// Socket addresses as the wire carries them: IPv6 flow info and scope id are not encoded.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        any::<std::net::SocketAddrV4>().prop_map(SocketAddr::V4),
        (any::<Ipv6Addr>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))),
    ]
}

fn dial_target() -> impl Strategy<Value = DialTarget> {
    (host(), any::<u16>(), vec(socket_addr(), 0..4)).prop_map(|(host, port, resolvers)| {
        DialTarget {
            host,
            port,
            resolvers,
        }
    })
}

fn scheme() -> impl Strategy<Value = Scheme> {
    prop_oneof![Just(Scheme::Http), Just(Scheme::Https)]
}

fn tls_verification() -> impl Strategy<Value = TlsVerification> {
    prop_oneof![
        Just(TlsVerification::VerifyFull),
        Just(TlsVerification::VerifyCa),
        Just(TlsVerification::Disabled),
    ]
}

fn body_kind() -> impl Strategy<Value = BodyKind> {
    prop_oneof![
        Just(BodyKind::Empty),
        any::<u64>().prop_map(BodyKind::Length),
        Just(BodyKind::Streaming),
        Just(BodyKind::Upgrade),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    (text(), vec(any::<u8>(), 0..48)).prop_map(|(name, value)| Header { name, value })
}

fn http_request_head() -> impl Strategy<Value = HttpRequestHead> {
    (
        (text(), scheme(), text(), text()),
        vec(header(), 0..8),
        origin(),
        (body_kind(), any::<u64>()),
    )
        .prop_map(
            |((method, scheme, authority, path), headers, origin, (body, id))| HttpRequestHead {
                method,
                scheme,
                authority,
                path,
                headers,
                origin,
                body,
                request_id: RequestId(id),
            },
        )
}

fn origin() -> impl Strategy<Value = Origin> {
    prop_oneof![
        dial_target().prop_map(Origin::Dial),
        service_ref().prop_map(Origin::Service),
    ]
}

fn stream_header() -> impl Strategy<Value = StreamHeader> {
    prop_oneof![
        http_request_head().prop_map(StreamHeader::Http),
        (origin(), any::<u64>()).prop_map(|(origin, id)| {
            StreamHeader::Tcp(TcpConnect {
                origin,
                request_id: RequestId(id),
            })
        }),
    ]
}

fn proxy_status() -> impl Strategy<Value = ProxyStatus> {
    proptest::sample::select(ProxyStatus::ALL.to_vec())
}

fn stream_reply() -> impl Strategy<Value = StreamReply> {
    prop_oneof![
        (any::<u16>(), vec(header(), 0..8), body_kind()).prop_map(|(status, headers, body)| {
            StreamReply::Http(HttpResponseHead {
                status,
                headers,
                body,
            })
        }),
        Just(StreamReply::TcpAccepted),
        (proxy_status(), text())
            .prop_map(|(status, details)| StreamReply::Error(ProxyErrorReply { status, details })),
    ]
}

// ----- helpers --------------------------------------------------------------------------------

fn frame<M: Message>(message: &M) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(message, &mut buf).expect("generated messages stay far below MAX_FRAME_LEN");
    buf
}

fn assert_round_trip<M>(message: &M) -> Result<(), TestCaseError>
where
    M: Message + PartialEq + Debug + Clone,
{
    let buf = frame(message);
    prop_assert!(buf.len() <= FRAME_HEADER_LEN + MAX_FRAME_LEN);
    let decoded = decode::<M>(&buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        decoded,
        Decoded::Message {
            message: message.clone(),
            consumed: buf.len()
        }
    );
    Ok(())
}

/// Feed `stream` to a reader in the pieces `cuts` makes, decoding frames as they complete;
/// return the messages decoded. Checks every `NeedMore` count against the real shortfall.
fn decode_in_pieces<M: Message + Debug>(
    stream: &[u8],
    cuts: &[usize],
) -> Result<Vec<M>, TestCaseError> {
    let mut cut_points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cut_points.push(stream.len());
    cut_points.sort_unstable();

    let mut messages = Vec::new();
    let mut start = 0; // first byte not yet consumed
    for end in cut_points {
        // Bytes [start, end) are buffered; decode every frame they hold.
        loop {
            match decode::<M>(&stream[start..end]) {
                Ok(Decoded::Message { message, consumed }) => {
                    prop_assert!(consumed > 0);
                    start += consumed;
                    messages.push(message);
                }
                Ok(Decoded::NeedMore(n)) => {
                    prop_assert!(n >= 1);
                    // Never asks for bytes beyond the end of the current frame (once every
                    // frame is consumed, the next would be a new one).
                    if start < stream.len() {
                        prop_assert!(end + n <= stream.len(), "asked for {n} past the stream");
                    }
                    break;
                }
                Err(e) => return Err(TestCaseError::fail(format!("valid stream refused: {e}"))),
            }
        }
    }
    prop_assert_eq!(start, stream.len());
    Ok(messages)
}

fn check_pieces<M: Message + PartialEq + Debug>(
    messages: &[M],
    cuts: &[usize],
) -> Result<(), TestCaseError> {
    let mut stream = BytesMut::new();
    for message in messages {
        encode(message, &mut stream).expect("generated messages fit");
    }
    let decoded = decode_in_pieces::<M>(&stream, cuts)?;
    prop_assert_eq!(decoded.len(), messages.len());
    for (got, want) in decoded.iter().zip(messages) {
        prop_assert_eq!(got, want);
    }
    Ok(())
}

/// Decode arbitrary bytes as each message type: any outcome but a panic is fine, and a
/// successful decode re-encodes to a frame that decodes to the same message.
fn decode_anything<M: Message + PartialEq + Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode::<M>(bytes) {
        Ok(Decoded::Message { message, consumed }) => {
            prop_assert!(consumed <= bytes.len());
            let again = frame(&message);
            // postcard accepts over-long varints, so the canonical form may be shorter.
            prop_assert!(again.len() <= consumed);
            prop_assert_eq!(
                decode::<M>(&again).map_err(|e| TestCaseError::fail(e.to_string()))?,
                Decoded::Message {
                    message,
                    consumed: again.len()
                }
            );
        }
        Ok(Decoded::NeedMore(n)) => prop_assert!(n >= 1),
        Err(_) => {}
    }
    Ok(())
}

// ----- properties -----------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn control_messages_round_trip(message in control_message()) {
        assert_round_trip(&message)?;
    }

    #[test]
    fn stream_headers_round_trip(header in stream_header()) {
        assert_round_trip(&header)?;
    }

    #[test]
    fn stream_replies_round_trip(reply in stream_reply()) {
        assert_round_trip(&reply)?;
    }

    #[test]
    fn control_messages_fed_in_pieces(
        messages in vec(control_message(), 1..5),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        check_pieces(&messages, &cuts)?;
    }

    #[test]
    fn stream_headers_fed_in_pieces(
        headers in vec(stream_header(), 1..4),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        check_pieces(&headers, &cuts)?;
    }

    #[test]
    fn stream_replies_fed_in_pieces(
        replies in vec(stream_reply(), 1..4),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        check_pieces(&replies, &cuts)?;
    }

    #[test]
    fn proxy_status_tokens_parse_back(status in proxy_status()) {
        prop_assert_eq!(status.token().parse::<ProxyStatus>(), Ok(status));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        decode_anything::<ControlMessage>(&bytes)?;
        decode_anything::<StreamHeader>(&bytes)?;
        decode_anything::<StreamReply>(&bytes)?;
    }

    /// Arbitrary bodies behind a valid frame header, so the body parser sees them.
    #[test]
    fn arbitrary_bodies_never_panic(
        kind in 1u8..=3,
        body in vec(any::<u8>(), 0..512),
        extra in vec(any::<u8>(), 0..8),
    ) {
        let mut bytes = vec![PROTOCOL_VERSION, kind];
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&extra);
        match kind {
            k if k == FrameKind::Control as u8 => decode_anything::<ControlMessage>(&bytes)?,
            k if k == FrameKind::StreamHeader as u8 => decode_anything::<StreamHeader>(&bytes)?,
            _ => decode_anything::<StreamReply>(&bytes)?,
        }
    }

    /// Valid encodings with some bytes flipped: close to real messages, so deep in the parser.
    #[test]
    fn mutated_frames_never_panic(
        header in stream_header(),
        reply in stream_reply(),
        control in control_message(),
        flips in vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        for (kind, mut bytes) in [
            (FrameKind::StreamHeader, frame(&header).to_vec()),
            (FrameKind::StreamReply, frame(&reply).to_vec()),
            (FrameKind::Control, frame(&control).to_vec()),
        ] {
            // Keep the frame header intact so the body parser is reached.
            let body_len = bytes.len() - FRAME_HEADER_LEN;
            for &(at, value) in &flips {
                bytes[FRAME_HEADER_LEN + at % body_len] = value;
            }
            match kind {
                FrameKind::Control => decode_anything::<ControlMessage>(&bytes)?,
                FrameKind::StreamHeader => decode_anything::<StreamHeader>(&bytes)?,
                FrameKind::StreamReply => decode_anything::<StreamReply>(&bytes)?,
            }
        }
    }

    /// Any sequence of policy messages (small CA lengths, so chunks can complete them) leaves
    /// the assembler consistent: it never panics, and what it completes is what was announced.
    #[test]
    fn policy_assembler_takes_any_sequence(
        steps in vec(
            prop_oneof![
                (service_policy(), 0u32..96).prop_map(|(mut head, len)| {
                    head.ca_pem_len = len;
                    ControlMessage::ServicePolicy(head)
                }),
                (service_ref(), vec(b'A'..=b'Z', 0..64)).prop_map(|(service, chunk)| {
                    ControlMessage::ServicePolicyCa(ServicePolicyCa { service, chunk })
                }),
            ],
            0..24,
        ),
    ) {
        let mut assembler = PolicyAssembler::new();
        let mut announced = None;
        for step in steps {
            let result = match step {
                ControlMessage::ServicePolicy(head) => {
                    announced = Some((head.service, head.ca_pem_len));
                    assembler.policy(head)
                }
                ControlMessage::ServicePolicyCa(chunk) => assembler.chunk(chunk),
                _ => unreachable!("only policy messages are generated"),
            };
            match result {
                Ok(Some(policy)) => {
                    let (service, len) = announced.expect("a policy was announced");
                    prop_assert_eq!(policy.service, service);
                    prop_assert_eq!(policy.ca_pem.map_or(0, |pem| pem.len()), len as usize);
                }
                Ok(None) => {}
                Err(_) => assembler = PolicyAssembler::new(),
            }
        }
    }
}
