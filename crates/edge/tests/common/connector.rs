//! A minimal connector written with the mux and transport crates: dial, register, read the
//! control stream (policies included). The real connector is exercised by the end-to-end
//! tests in `tests/`.

use std::sync::Arc;

use underpass_edge::EdgeHandle;
use underpass_mux::{registration_proof, ControlChannel};
use underpass_proto::{
    AnnouncedRoute, ConnectorId, ControlMessage, OriginPolicy, PolicyAssembler, Register, TunnelId,
    TunnelSecret, TunnelToken,
};
use underpass_transport::quic::{self, QuicDialer, QuicSettings};
use underpass_transport::tls::{self, EdgeVerification};
use underpass_transport::{AnyConnection, AnyDialer, AnyRecv, AnySend, Dialer};

use super::HANG_GUARD;

/// A registered connection of the fake connector.
pub struct Connected {
    /// Keeps the endpoint open.
    pub dialer: AnyDialer,
    pub conn: AnyConnection,
    pub control: ControlChannel<AnySend, AnyRecv>,
    /// What the edge answered to `Register`.
    pub reply: ControlMessage,
}

/// Dial the edge with the token's pin.
pub async fn dial(
    edge: &EdgeHandle,
    token: &TunnelToken,
) -> anyhow::Result<(AnyDialer, AnyConnection)> {
    let tls = tls::client_config(&EdgeVerification::Pin(token.ca_pin), &[quic::ALPN])?;
    let settings = QuicSettings {
        socket_buffer: 1 << 20,
        ..QuicSettings::default()
    };
    let dialer = AnyDialer::from(QuicDialer::new(
        Arc::new(tls),
        &settings,
        "127.0.0.1:0".parse()?,
    )?);
    let conn = dialer.connect(edge.quic_addr(), &token.server_name).await?;
    Ok((dialer, conn))
}

/// Routes covering every destination these tests use: every IP, and the `.internal` and
/// `.local` names. The edge places streams by announced routes only.
pub fn everything() -> Vec<AnnouncedRoute> {
    ["0.0.0.0/0", "::/0", "*.internal", "*.local"]
        .into_iter()
        .map(|destination| AnnouncedRoute {
            destination: destination.into(),
            ports: Vec::new(),
        })
        .collect()
}

/// Open the control stream and register, announcing [`everything`]; returns the edge's first
/// answer.
pub async fn register(
    conn: &AnyConnection,
    tunnel_id: TunnelId,
    secret: &TunnelSecret,
) -> anyhow::Result<(ControlChannel<AnySend, AnyRecv>, ControlMessage)> {
    register_with(conn, tunnel_id, secret, everything()).await
}

/// Open the control stream and register, announcing `routes`; returns the edge's first answer.
pub async fn register_with(
    conn: &AnyConnection,
    tunnel_id: TunnelId,
    secret: &TunnelSecret,
    routes: Vec<AnnouncedRoute>,
) -> anyhow::Result<(ControlChannel<AnySend, AnyRecv>, ControlMessage)> {
    let mut control = ControlChannel::open(conn).await?;
    let proof = registration_proof(conn, &tunnel_id, secret)?;
    let register = Register {
        tunnel_id,
        proof,
        connector_id: ConnectorId([0x42; 16]),
        connection_index: 0,
        version: "test-connector".into(),
        routes,
    };
    control.send(&ControlMessage::Register(register)).await?;
    let reply = next(&mut control).await?;
    Ok((control, reply))
}

/// Dial and register with the token's tunnel and secret.
pub async fn connect(edge: &EdgeHandle, token: &TunnelToken) -> anyhow::Result<Connected> {
    let (dialer, conn) = dial(edge, token).await?;
    let (control, reply) = register(&conn, token.tunnel_id, &token.secret).await?;
    Ok(Connected {
        dialer,
        conn,
        control,
        reply,
    })
}

/// The next control message (an end of stream is an error).
pub async fn next(
    control: &mut ControlChannel<AnySend, AnyRecv>,
) -> anyhow::Result<ControlMessage> {
    tokio::time::timeout(HANG_GUARD, control.recv())
        .await??
        .ok_or_else(|| anyhow::anyhow!("control stream ended"))
}

/// Read `count` complete origin policies off the control stream, reassembling CA bundles.
/// Returns them with the number of control messages they took.
pub async fn policies(
    control: &mut ControlChannel<AnySend, AnyRecv>,
    count: usize,
) -> anyhow::Result<(Vec<OriginPolicy>, usize)> {
    let mut assembler = PolicyAssembler::new();
    let mut done = Vec::new();
    let mut messages = 0;
    while done.len() < count {
        let complete = match next(control).await? {
            ControlMessage::ServicePolicy(head) => assembler.policy(head)?,
            ControlMessage::ServicePolicyCa(chunk) => assembler.chunk(chunk)?,
            other => anyhow::bail!("expected a service policy, got {other:?}"),
        };
        messages += 1;
        done.extend(complete);
    }
    Ok((done, messages))
}
