//! A minimal in-process edge made of the real transport and mux layers (QUIC on loopback,
//! real registration proof): it accepts connections and hands each registration to the
//! test, which then plays the edge's part of the protocol (answers, policies, streams).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use underpass_connector::{ConnectorConfig, ConnectorConfigBuilder};
use underpass_mux::{registration_proof, ControlChannel};
use underpass_proto::{
    ControlMessage, Host, OriginPolicy, Register, RegisterAccepted, ServiceId, ServiceRef,
    TlsVerification, TunnelId, TunnelSecret, TunnelToken,
};
use underpass_transport::quic::{QuicListener, QuicSettings, ALPN};
use underpass_transport::tls::{server_config, DevPki};
use underpass_transport::{AnyConnection, AnyListener, AnyRecv, AnySend, Listener};

/// The TLS name of every test edge.
pub const EDGE_NAME: &str = "edge.underpass.test";

/// A minimal edge: accepts connections and hands each registration to the test.
pub struct TestEdge {
    listener: AnyListener,
    /// The edge's CA and leaf.
    pub pki: DevPki,
    tunnel_id: TunnelId,
    secret: TunnelSecret,
}

/// One connection from the connector, after its `Register` was read and checked.
pub struct Registration {
    /// The edge's end of the connection.
    pub conn: AnyConnection,
    /// The control stream.
    pub control: ControlChannel<AnySend, AnyRecv>,
    /// What the connector sent.
    pub register: Register,
    /// Whether the proof matched the edge's secret for this TLS session.
    pub proof_ok: bool,
}

impl TestEdge {
    /// An edge on 127.0.0.1, port 0, with a fresh PKI and tunnel.
    pub fn start() -> TestEdge {
        super::init_tracing();
        let pki = DevPki::generate(&[EDGE_NAME.to_owned()]).expect("dev PKI");
        let tls = server_config(pki.chain_pem.as_bytes(), pki.key_pem.as_bytes(), &[ALPN])
            .expect("server config");
        let listener = QuicListener::bind(
            "127.0.0.1:0".parse().expect("address"),
            Arc::new(tls),
            &QuicSettings::default(),
        )
        .expect("bind QUIC");
        TestEdge {
            listener: listener.into(),
            pki,
            tunnel_id: TunnelId(rand_bytes()),
            secret: TunnelSecret([0x42; 32]),
        }
    }

    /// Where the edge listens.
    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// A token for this edge's tunnel.
    pub fn token(&self) -> TunnelToken {
        TunnelToken {
            tunnel_id: self.tunnel_id,
            secret: self.secret.clone(),
            edges: vec![self.addr().to_string()],
            server_name: EDGE_NAME.into(),
            ca_pin: self.pki.ca_pin,
        }
    }

    /// A connector config for this edge with no route: one connection (this edge accepts
    /// them one by one), fast reconnects, names resolved by a server that never answers
    /// (127.0.0.1:9, discard).
    pub fn bare_config(&self) -> ConnectorConfigBuilder {
        ConnectorConfig::builder(self.token())
            .connections(1)
            .resolvers(&["127.0.0.1:9".parse().expect("address")])
            .reconnect(Duration::from_millis(10), Duration::from_millis(50))
    }

    /// [`TestEdge::bare_config`] with 127.40.0.0/16 routed and 127.40.66.0/24 denied.
    pub fn config(&self) -> ConnectorConfigBuilder {
        self.bare_config()
            .route("127.40.0.0/16")
            .deny(&["127.40.66.0/24"])
    }

    /// Accept the next connection and read its registration.
    pub async fn next_registration(&self) -> anyhow::Result<Registration> {
        let conn = self.listener.accept().await.context("listener closed")?;
        let mut control = ControlChannel::accept(&conn).await?;
        let register = match control.recv().await? {
            Some(ControlMessage::Register(register)) => register,
            other => bail!("expected Register, got {other:?}"),
        };
        let expected = registration_proof(&conn, &self.tunnel_id, &self.secret)?;
        Ok(Registration {
            proof_ok: register.tunnel_id == self.tunnel_id && register.proof == expected,
            conn,
            control,
            register,
        })
    }

    /// Accept the next registration (which must carry a valid proof).
    pub async fn accept(
        &self,
        connection_id: u64,
        heartbeat_ms: u32,
    ) -> anyhow::Result<Registration> {
        let mut registration = self.next_registration().await?;
        anyhow::ensure!(registration.proof_ok, "bad proof from the connector");
        let accepted = RegisterAccepted {
            connection_id,
            edge_name: "test-edge".into(),
            heartbeat_interval_ms: heartbeat_ms,
        };
        registration
            .control
            .send(&ControlMessage::RegisterAccepted(accepted))
            .await?;
        Ok(registration)
    }
}

impl Registration {
    /// Send a service's origin policy on the control stream, as the edge does once per
    /// connection and on every change.
    pub async fn send_policy(&mut self, policy: &OriginPolicy) -> anyhow::Result<()> {
        send_policy(&mut self.control, policy).await
    }
}

/// Send `policy` on `control`: its head, then its CA bundle in chunks.
pub async fn send_policy(
    control: &mut ControlChannel<AnySend, AnyRecv>,
    policy: &OriginPolicy,
) -> anyhow::Result<()> {
    for message in policy.to_messages()? {
        control.send(&message).await?;
    }
    Ok(())
}

/// A policy for service number `n` (its id is `[n; 16]`) at `generation`, dialing `addr`:
/// an HTTP service on `addr`'s port for both schemes, verified in full, no CA bundle.
pub fn http_service(n: u8, generation: u64, addr: SocketAddr) -> OriginPolicy {
    OriginPolicy {
        service: ServiceRef {
            id: ServiceId([n; 16]),
            generation,
        },
        name: format!("service-{n}"),
        host: Host::Ip(addr.ip()),
        resolvers: Vec::new(),
        http_port: Some(addr.port()),
        https_port: Some(addr.port()),
        tcp_port: None,
        tls: TlsVerification::VerifyFull,
        ca_pem: None,
    }
}

/// A TCP service number `n` at `generation` whose `tcp_port` is `addr`'s.
pub fn tcp_service(n: u8, generation: u64, addr: SocketAddr) -> OriginPolicy {
    OriginPolicy {
        http_port: None,
        https_port: None,
        tcp_port: Some(addr.port()),
        ..http_service(n, generation, addr)
    }
}

fn rand_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (std::process::id() as u8).wrapping_add(i as u8);
    }
    bytes
}
