//! Control-stream messages: registration, drain, heartbeat.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::bounded::MinWireLen;
use crate::codec::{FrameKind, Message};
use crate::stream::{Host, ServiceId, ServiceRef, TlsVerification};

/// The TLS exporter label whose output the registration proof is computed over.
///
/// The proof is `HMAC-SHA256(tunnel secret, exporter(label, context = tunnel id, 32 bytes))`,
/// so it is bound to one TLS session and cannot be replayed on another connection.
pub const REGISTRATION_EXPORTER_LABEL: &[u8] = b"EXPORTER-underpass-registration";

/// A tunnel's identifier: 16 random bytes chosen by the edge when the tunnel is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TunnelId(pub [u8; 16]);

/// A connector instance's identifier: 16 random bytes chosen by the connector at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnectorId(pub [u8; 16]);

/// A message on the control stream (the first bidirectional stream, opened by the connector).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// Connector → edge: the first message on every connection.
    Register(Register),
    /// Edge → connector: registration accepted.
    RegisterAccepted(RegisterAccepted),
    /// Edge → connector: registration refused; the edge closes the connection afterwards.
    RegisterRefused(RegisterRefused),
    /// Either side: stop opening new streams on this connection, finish the open ones.
    Drain(Drain),
    /// Either side: liveness probe; answered by [`ControlMessage::HeartbeatAck`].
    Heartbeat(Heartbeat),
    /// Answer to a [`ControlMessage::Heartbeat`], echoing its sequence number.
    HeartbeatAck(Heartbeat),
    /// Edge → connector: a service's origin policy (after `RegisterAccepted`, and again
    /// whenever it changes); its CA bundle follows in [`ControlMessage::ServicePolicyCa`].
    ServicePolicy(ServicePolicy),
    /// Edge → connector: the next chunk of a policy's CA bundle.
    ServicePolicyCa(ServicePolicyCa),
    /// Edge → connector: the service is gone; streams naming it are refused.
    ServiceRemoved(ServiceId),
    /// Connector → edge: the connector's routes changed (a live reload); they replace the
    /// ones announced at registration for this connection.
    Routes(RoutesUpdate),
}

/// The routes a connector serves now, replacing those of its `Register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutesUpdate {
    /// The routes, as in [`Register::routes`].
    #[serde(deserialize_with = "crate::bounded::vec")]
    pub routes: Vec<AnnouncedRoute>,
}

/// The head of a service's origin policy, on the control stream (edge → connector).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePolicy {
    /// The service and this policy's generation.
    pub service: ServiceRef,
    /// The service's name, for logs.
    pub name: String,
    /// The host to dial.
    pub host: Host,
    /// Resolvers for a hostname host (`resolver_ips`); empty: the connector's own.
    #[serde(deserialize_with = "crate::bounded::vec")]
    pub resolvers: Vec<SocketAddr>,
    /// `http_port` of an HTTP service.
    pub http_port: Option<u16>,
    /// `https_port` of an HTTP service.
    pub https_port: Option<u16>,
    /// `tcp_port` of a TCP service.
    pub tcp_port: Option<u16>,
    /// How an HTTPS origin's certificate is verified.
    pub tls: TlsVerification,
    /// Length of the CA bundle (PEM) that follows in [`ServicePolicyCa`] chunks; 0: none.
    pub ca_pem_len: u32,
}

/// One chunk of a policy's CA bundle, after its [`ServicePolicy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePolicyCa {
    /// The service and generation of the policy this chunk belongs to.
    pub service: ServiceRef,
    /// The next bytes of the bundle.
    #[serde(deserialize_with = "crate::bounded::vec")]
    pub chunk: Vec<u8>,
}

/// A connector's registration on one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The tunnel this connector serves.
    pub tunnel_id: TunnelId,
    /// Proof of the tunnel secret, bound to this TLS session (see
    /// [`REGISTRATION_EXPORTER_LABEL`]). Never the secret itself.
    pub proof: [u8; 32],
    /// This connector instance.
    pub connector_id: ConnectorId,
    /// Which of the connector's parallel connections this is (0-based).
    pub connection_index: u8,
    /// The connector's software version, for the operator's eyes.
    pub version: String,
    /// The routes the connector announces (informational for the edge's directory; the
    /// connector enforces its own routes whatever the edge sends).
    #[serde(deserialize_with = "crate::bounded::vec")]
    pub routes: Vec<AnnouncedRoute>,
}

/// One route a connector announces: a CIDR or a hostname pattern, with optional ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncedRoute {
    /// `10.0.0.0/8`, `fd00::/8`, `db.internal` or `*.corp.example`.
    pub destination: String,
    /// Inclusive port ranges; empty means every port.
    #[serde(deserialize_with = "crate::bounded::vec")]
    pub ports: Vec<(u16, u16)>,
}

/// The edge accepted a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterAccepted {
    /// The edge's identifier for this connection, for logs on both sides.
    pub connection_id: u64,
    /// The edge's name, for logs.
    pub edge_name: String,
    /// How often the connector should send [`ControlMessage::Heartbeat`], in milliseconds.
    pub heartbeat_interval_ms: u32,
}

/// Why the edge refused a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// No tunnel with this id exists.
    UnknownTunnel,
    /// The proof did not match the tunnel secret.
    BadProof,
    /// The connector's protocol version is not supported.
    UnsupportedVersion,
    /// The tunnel already has the maximum number of connections.
    TooManyConnections,
    /// The edge is draining and takes no new connections.
    Draining,
    /// The registration message was malformed.
    Malformed,
}

/// The edge refused a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRefused {
    /// Machine-readable reason.
    pub reason: RefuseReason,
    /// Human-readable detail for the connector's log.
    pub message: String,
    /// How long the connector should wait before trying again, in milliseconds.
    pub retry_after_ms: u32,
}

/// A drain notice: the sender will close the connection after the grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// How long open streams may continue, in milliseconds.
    pub grace_ms: u32,
    /// Why, for logs.
    pub reason: String,
}

/// A heartbeat or its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sequence number chosen by the sender of the heartbeat.
    pub seq: u64,
}

impl Message for ControlMessage {
    const KIND: FrameKind = FrameKind::Control;
}

impl MinWireLen for AnnouncedRoute {
    /// Empty destination (1-byte length) and no ports (1-byte length).
    const MIN_WIRE_LEN: usize = 2;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::round_trip;
    use crate::FRAME_HEADER_LEN;

    fn register() -> Register {
        Register {
            tunnel_id: TunnelId([0xab; 16]),
            proof: [0x5a; 32],
            connector_id: ConnectorId(*b"0123456789abcdef"),
            connection_index: 3,
            version: "underpass 0.1.0".into(),
            routes: vec![
                AnnouncedRoute {
                    destination: "10.0.0.0/8".into(),
                    ports: vec![],
                },
                AnnouncedRoute {
                    destination: "*.corp.example".into(),
                    ports: vec![(443, 443), (8000, 8999)],
                },
                AnnouncedRoute {
                    destination: "fd00::/8".into(),
                    ports: vec![(0, u16::MAX)],
                },
            ],
        }
    }

    fn service() -> ServiceRef {
        ServiceRef {
            id: ServiceId([4; 16]),
            generation: 1,
        }
    }

    /// One message per variant, in declaration order.
    fn every_variant() -> [ControlMessage; 10] {
        [
            ControlMessage::Register(register()),
            ControlMessage::RegisterAccepted(RegisterAccepted {
                connection_id: u64::MAX,
                edge_name: "edge-1".into(),
                heartbeat_interval_ms: 15_000,
            }),
            ControlMessage::RegisterRefused(RegisterRefused {
                reason: RefuseReason::BadProof,
                message: "proof does not match".into(),
                retry_after_ms: 30_000,
            }),
            ControlMessage::Drain(Drain {
                grace_ms: 30_000,
                reason: "shutting down".into(),
            }),
            ControlMessage::Heartbeat(Heartbeat { seq: 0 }),
            ControlMessage::HeartbeatAck(Heartbeat { seq: 1 << 40 }),
            ControlMessage::ServicePolicy(ServicePolicy {
                service: service(),
                name: "api".into(),
                host: Host::Name("api.internal".into()),
                resolvers: vec![],
                http_port: Some(8080),
                https_port: None,
                tcp_port: None,
                tls: TlsVerification::VerifyFull,
                ca_pem_len: 3,
            }),
            ControlMessage::ServicePolicyCa(ServicePolicyCa {
                service: service(),
                chunk: b"PEM".to_vec(),
            }),
            ControlMessage::ServiceRemoved(ServiceId([4; 16])),
            ControlMessage::Routes(RoutesUpdate {
                routes: vec![AnnouncedRoute {
                    destination: "127.20.0.0/24".into(),
                    ports: vec![(1, 65535)],
                }],
            }),
        ]
    }

    #[test]
    fn every_variant_round_trips_with_its_declaration_index_as_tag() {
        for (index, message) in every_variant().iter().enumerate() {
            let frame = round_trip(message);
            assert_eq!(usize::from(frame[FRAME_HEADER_LEN]), index, "{message:?}");
        }
    }

    #[test]
    fn every_refuse_reason_round_trips() {
        let reasons = [
            RefuseReason::UnknownTunnel,
            RefuseReason::BadProof,
            RefuseReason::UnsupportedVersion,
            RefuseReason::TooManyConnections,
            RefuseReason::Draining,
            RefuseReason::Malformed,
        ];
        for (index, reason) in reasons.into_iter().enumerate() {
            let frame = round_trip(&ControlMessage::RegisterRefused(RegisterRefused {
                reason,
                message: String::new(),
                retry_after_ms: 0,
            }));
            // Body: variant tag 2, then the reason's tag.
            assert_eq!(
                frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 2],
                [2, index as u8]
            );
        }
    }

    #[test]
    fn register_layout() {
        let message = Register {
            routes: vec![],
            version: String::new(),
            ..register()
        };
        let frame = round_trip(&ControlMessage::Register(message));
        let body = &frame[FRAME_HEADER_LEN..];
        // Fixed-size arrays carry no length prefix.
        assert_eq!(body[0], 0, "Register tag");
        assert_eq!(body[1..17], [0xab; 16], "tunnel id");
        assert_eq!(body[17..49], [0x5a; 32], "proof");
        assert_eq!(&body[49..65], b"0123456789abcdef", "connector id");
        assert_eq!(body[65..], [3, 0, 0], "index, empty version, no routes");
    }

    #[test]
    fn heartbeat_seq_is_a_varint() {
        let small = round_trip(&ControlMessage::Heartbeat(Heartbeat { seq: 127 }));
        assert_eq!(small.len(), FRAME_HEADER_LEN + 2);
        let large = round_trip(&ControlMessage::Heartbeat(Heartbeat { seq: u64::MAX }));
        assert_eq!(large.len(), FRAME_HEADER_LEN + 1 + 10);
    }
}
