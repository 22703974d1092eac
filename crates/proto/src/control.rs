//! Control-stream messages: registration, drain, heartbeat.

use serde::{Deserialize, Serialize};

use crate::codec::{FrameKind, Message};

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
    pub routes: Vec<AnnouncedRoute>,
}

/// One route a connector announces: a CIDR or a hostname pattern, with optional ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncedRoute {
    /// `10.0.0.0/8`, `fd00::/8`, `db.internal` or `*.corp.example`.
    pub destination: String,
    /// Inclusive port ranges; empty means every port.
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
