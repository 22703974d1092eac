//! The connector side of the edge: accept connections, authenticate registrations, keep the
//! registry, send service policies, answer heartbeats, drain on shutdown.
//!
//! Per connection: the connector opens the control stream and sends `Register`. The edge looks
//! the tunnel up (in memory), computes the expected proof (HMAC of the tunnel secret over a TLS
//! exporter value of this very connection) and compares it in constant time. A refusal is sent
//! with a reason and a retry delay, then the connection is closed once the connector has the
//! frame. An accepted connection is sent the origin policy of every service of its tunnel, and
//! the changed ones whenever the directory changes ([`crate::policy`]).
//!
//! A registered connection from which nothing at all arrives for `peer_timeout` (the connector
//! sends keep-alives every second, so this means it is dead: killed, its host gone, the path
//! cut) is taken out of the registry at once, so it gets no new stream, and closed with
//! `ControlLost`, which ends every stream still on it with an error rather than a clean end.
//!
//! Shutdown ([`Shutdown`]): when stopping begins, no connection is accepted any more; each
//! registered connection is sent `Drain`, gets no new streams, and is closed once its stream
//! leases are all released ([`crate::registry`]), or when the grace period is over.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tracing::{debug, info, info_span, warn};
use underpass_mux::{peer_silent, registration_proof, write_frame, ControlChannel, MuxError};
use underpass_proto::{
    CloseCode, ControlMessage, DecodeError, Drain, RefuseReason, Register, RegisterAccepted,
    RegisterRefused, TunnelId,
};
use underpass_rt::Shutdown;
use underpass_transport::quic::QuicSettings;
use underpass_transport::{Connection, Listener, Protocol, SendStream};

use crate::model::{Directory, Tunnel};
use crate::policy::SentPolicies;
use crate::registry::{NewConnection, Registry, RegistryError, StreamTracker};
use crate::tunnels::TunnelStore;

/// How long a connection stays open, at most, for a last control frame (a refusal, a drain
/// notice) to reach the connector before the edge closes it.
const LINGER: Duration = Duration::from_secs(2);

/// Timings of the connector side.
#[derive(Debug, Clone)]
pub(crate) struct ServerSettings {
    /// The edge's name, sent to connectors for their logs.
    pub edge_name: String,
    /// A new connection must register within this.
    pub register_timeout: Duration,
    /// Heartbeat interval asked of connectors.
    pub heartbeat_interval: Duration,
    /// Delay a refused connector is asked to wait before retrying.
    pub retry_after: Duration,
    /// On shutdown, how long open streams may continue before connections are closed.
    pub drain_grace: Duration,
    /// A registered connection that has received nothing for this long is dead; zero
    /// disables dead-peer detection.
    pub peer_timeout: Duration,
}

/// The dead-peer timeout `settings` ask for: `peer_timeout`, or zero (disabled) when it is
/// zero or keep-alives are off (an idle connection may then be silent for good reasons).
pub(crate) fn dead_peer_timeout(settings: &QuicSettings) -> Duration {
    if settings.keep_alive.is_zero() {
        Duration::ZERO
    } else {
        settings.peer_timeout
    }
}

/// Resolves when `conn` has been silent for `timeout` (never when `timeout` is zero).
async fn dead_peer<C: Connection>(conn: &C, timeout: Duration) -> Duration {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    peer_silent(conn, timeout).await
}

/// What the connection tasks share.
pub(crate) struct ServerContext<C> {
    /// Live connections.
    pub registry: Arc<Registry<C>>,
    /// Tunnels and their secrets.
    pub tunnels: Arc<TunnelStore>,
    /// The directory, for the services' policies.
    pub directory: watch::Receiver<Arc<Directory>>,
    /// Timings.
    pub settings: ServerSettings,
    /// Stopping, and the tasks to wait for.
    pub shutdown: Shutdown,
}

/// Accept connectors on `listener` until stopping begins; every connection is served in its
/// own tracked task. The listener itself is closed by whoever owns it, once those tasks are
/// done (closing it closes every connection).
pub(crate) async fn run<L: Listener>(
    listener: Arc<L>,
    protocol: Protocol,
    context: Arc<ServerContext<L::Conn>>,
) {
    let mut stopping = std::pin::pin!(context.shutdown.stopping());
    loop {
        let accepted = tokio::select! {
            () = &mut stopping => break,
            accepted = listener.accept() => accepted,
        };
        let Some(conn) = accepted else {
            warn!(%protocol, "listener closed; no more connectors accepted over it");
            return;
        };
        let id = context.registry.allocate_id();
        let span = info_span!(
            "connector",
            remote = %conn.remote_address(),
            %protocol,
            connection = id
        );
        let task = handle_connection(conn, id, protocol, context.clone());
        context.shutdown.spawn_in(span, task);
    }
    let open = context.registry.snapshot().len();
    if open > 0 {
        info!(connections = open, grace = ?context.settings.drain_grace, "draining connectors");
    }
}

/// One connector connection, from registration to close.
async fn handle_connection<C: Connection>(
    conn: C,
    connection_id: u64,
    protocol: Protocol,
    context: Arc<ServerContext<C>>,
) {
    let settings = &context.settings;
    let read = tokio::select! {
        read = tokio::time::timeout(settings.register_timeout, read_register(&conn)) => read,
        () = context.shutdown.stopping() => {
            close(&conn, CloseCode::Shutdown, "edge shutting down");
            return;
        }
    };
    let (mut channel, register) = match read {
        Err(_) => {
            warn!(timeout = ?settings.register_timeout, "no registration in time; closing");
            close(&conn, CloseCode::Protocol, "no registration");
            return;
        }
        Ok(Err(ReadRegister::Gone(error))) => {
            debug!(%error, "connection ended before registering");
            close(&conn, CloseCode::Protocol, "no registration");
            return;
        }
        Ok(Err(ReadRegister::Bad(channel, reason, detail))) => {
            refuse(&conn, channel, None, reason, detail, &context).await;
            return;
        }
        Ok(Ok(read)) => read,
    };

    let tunnel_id = register.tunnel_id;
    let refusal = if context.shutdown.is_stopping() {
        Err((
            RefuseReason::Draining,
            "the edge is shutting down".to_owned(),
        ))
    } else {
        authenticate(&conn, &register, &context.tunnels)
    };
    let tunnel = match refusal {
        Ok(tunnel) => tunnel,
        Err((reason, detail)) => {
            refuse(&conn, channel, Some(&tunnel_id), reason, detail, &context).await;
            return;
        }
    };

    let registration = NewConnection {
        tunnel_id,
        connector_id: register.connector_id,
        connection_index: register.connection_index,
        remote: conn.remote_address(),
        protocol,
        version: register.version,
        routes: register.routes,
    };
    let registered =
        match context
            .registry
            .register(connection_id, registration.clone(), conn.clone())
        {
            Ok(registered) => registered,
            Err(error @ RegistryError::TooManyConnections(_)) => {
                let (reason, detail) = (RefuseReason::TooManyConnections, error.to_string());
                refuse(&conn, channel, Some(&tunnel_id), reason, detail, &context).await;
                return;
            }
        };
    if let Some((old_id, old)) = registered.superseded {
        info!(
            superseded = old_id,
            "connector re-registered this connection slot; closing the old connection"
        );
        close(
            &old,
            CloseCode::Superseded,
            "superseded by a newer connection",
        );
    }
    let accepted = ControlMessage::RegisterAccepted(RegisterAccepted {
        connection_id,
        edge_name: settings.edge_name.clone(),
        heartbeat_interval_ms: u32::try_from(settings.heartbeat_interval.as_millis())
            .unwrap_or(u32::MAX),
    });
    if let Err(error) = channel.send(&accepted).await {
        debug!(%error, "could not confirm the registration");
        context.registry.unregister(connection_id);
        close(&conn, CloseCode::ControlLost, "control stream failed");
        return;
    }
    info!(
        tunnel = %tunnel.id_hex(),
        tunnel_name = %tunnel.name,
        connector = %hex::encode(registration.connector_id.0),
        index = registration.connection_index,
        version = %registration.version,
        routes = registration.routes.len(),
        "connector registered"
    );
    warn_rejected_routes(&registered.rejected_routes);
    let connector = hex::encode(registration.connector_id.0);

    let control = Control {
        conn: &conn,
        connection_id,
        tunnel: &tunnel,
        streams: &registered.streams,
        context: &context,
    };
    let (code, reason) = tokio::select! {
        end = control.run(channel) => end,
        silent = dead_peer(&conn, settings.peer_timeout) => {
            // Out of the registry first: not one more stream goes to a dead connection.
            context.registry.unregister(connection_id);
            let silent_ms = silent.as_millis() as u64;
            warn!(
                %connector,
                silent_ms,
                open_streams = registered.streams.open_streams(),
                "nothing received from the connector for {silent_ms} ms: connection dead \
                 (connector killed, host down or path cut); closing it, new streams go to the \
                 tunnel's other connections"
            );
            (
                CloseCode::ControlLost,
                Cow::Owned(format!("peer silent for {silent_ms} ms")),
            )
        }
    };
    context.registry.unregister(connection_id);
    close(&conn, code, &reason);
    info!(reason = %reason, code = %code, "connector connection closed");
}

/// Announced routes the edge cannot parse are left out of placement (the connector refuses
/// those destinations too, having parsed the same text); say so once.
fn warn_rejected_routes(rejected: &[String]) {
    if !rejected.is_empty() {
        warn!(
            routes = %rejected.join("; "),
            "ignoring announced routes the edge cannot parse; no stream is placed by them"
        );
    }
}

fn close<C: Connection>(conn: &C, code: CloseCode, reason: &str) {
    conn.close(code.code(), reason.as_bytes());
}

/// A registered connection's control stream.
struct Control<'a, C> {
    conn: &'a C,
    connection_id: u64,
    tunnel: &'a Tunnel,
    streams: &'a StreamTracker,
    context: &'a ServerContext<C>,
}

impl<C: Connection> Control<'_, C> {
    /// Send the policies, then serve the control stream until it ends or the connection is
    /// drained; returns how to close the connection.
    async fn run(
        &self,
        channel: ControlChannel<C::Send, C::Recv>,
    ) -> (CloseCode, Cow<'static, str>) {
        let (code, reason) = self.serve(channel).await;
        (code, Cow::Borrowed(reason))
    }

    async fn serve(&self, channel: ControlChannel<C::Send, C::Recv>) -> (CloseCode, &'static str) {
        let (mut send, mut reader) = channel.split();
        let mut directory = self.context.directory.clone();
        let mut policies = SentPolicies::new();
        let snapshot = directory.borrow_and_update().clone();
        if let Err(error) = self
            .send_all(&mut send, policies.update(&snapshot, self.tunnel))
            .await
        {
            debug!(%error, "could not send the service policies");
            return (CloseCode::ControlLost, "control stream failed");
        }
        let shutdown = &self.context.shutdown;
        let mut stopping = std::pin::pin!(shutdown.stopping());
        let mut forced = std::pin::pin!(shutdown.forced());
        let mut draining = false;
        // The connector drains (it is shutting down): no new streams; once the open ones are
        // read to their end the edge closes, so the connector's last bytes are never cut.
        let mut connector_draining = false;
        let mut watching = true;
        // While draining, a control stream that ends does not end the streams still open.
        let mut control_open = true;
        loop {
            tokio::select! {
                message = reader.next::<ControlMessage>(), if control_open => match message {
                    Ok(Some(ControlMessage::Heartbeat(beat))) => {
                        let ack = ControlMessage::HeartbeatAck(beat);
                        if let Err(error) = write_frame(&mut send, &ack).await {
                            debug!(%error, "heartbeat answer failed");
                            if !draining {
                                return (CloseCode::ControlLost, "control stream failed");
                            }
                            control_open = false;
                        }
                    }
                    Ok(Some(ControlMessage::HeartbeatAck(_))) => {}
                    Ok(Some(ControlMessage::Routes(update))) => {
                        let count = update.routes.len();
                        if let Some(rejected) =
                            self.context.registry.update_routes(self.connection_id, update.routes)
                        {
                            info!(routes = count, "connector announced new routes");
                            warn_rejected_routes(&rejected);
                        }
                    }
                    Ok(Some(ControlMessage::Drain(drain))) => {
                        self.context.registry.set_draining(self.connection_id);
                        connector_draining = true;
                        info!(grace_ms = drain.grace_ms, reason = %drain.reason, "connector is draining");
                    }
                    Ok(Some(other)) => {
                        warn!(message = ?other, "unexpected control message; ignored");
                    }
                    ended if draining => {
                        debug!(
                            ended = ?ended.err(),
                            "the control stream ended during the drain; waiting for the open streams"
                        );
                        control_open = false;
                    }
                    Ok(None) => return (CloseCode::Normal, "connector finished the control stream"),
                    Err(error) => {
                        debug!(%error, "control stream failed");
                        return (CloseCode::ControlLost, "control stream failed");
                    }
                },
                changed = directory.changed(), if watching && control_open => {
                    if changed.is_err() {
                        // The store is gone: the directory no longer changes.
                        watching = false;
                        continue;
                    }
                    let snapshot = directory.borrow_and_update().clone();
                    let messages = policies.update(&snapshot, self.tunnel);
                    if let Err(error) = self.send_all(&mut send, messages).await {
                        debug!(%error, "could not send the service policies");
                        return (CloseCode::ControlLost, "control stream failed");
                    }
                }
                error = self.conn.closed() => {
                    debug!(%error, "connection closed");
                    return (CloseCode::Normal, "connection closed");
                }
                () = &mut stopping, if !draining => {
                    draining = true;
                    let grace = self.context.settings.drain_grace;
                    self.context.registry.set_draining(self.connection_id);
                    let drain = ControlMessage::Drain(Drain {
                        grace_ms: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
                        reason: "edge shutting down".into(),
                    });
                    if let Err(error) = write_frame(&mut send, &drain).await {
                        debug!(%error, "could not send the drain notice");
                    }
                }
                () = self.streams.idle(), if connector_draining && !draining => {
                    return (CloseCode::Drained, "connector drained");
                }
                () = self.streams.idle(), if draining => {
                    // Finishing the control stream and waiting for the acknowledgement makes
                    // sure the drain notice arrived before the connection closes.
                    tokio::select! {
                        () = linger_after_finish(self.conn, &mut send, LINGER) => {}
                        () = &mut forced => {}
                    }
                    return (CloseCode::Shutdown, "edge shutting down");
                }
                () = &mut forced, if draining => {
                    warn!(open_streams = self.streams.open_streams(), "drain grace period over; closing");
                    return (CloseCode::Shutdown, "edge shutting down");
                }
            }
        }
    }

    async fn send_all(
        &self,
        send: &mut C::Send,
        messages: Vec<ControlMessage>,
    ) -> Result<(), MuxError> {
        if messages.is_empty() {
            return Ok(());
        }
        let count = messages.len();
        for message in &messages {
            write_frame(send, message).await?;
        }
        debug!(messages = count, "service policies sent");
        Ok(())
    }
}

/// Finish `send` and wait (at most `limit`) until the peer has everything sent on it or the
/// connection closed. Closing the connection before that could discard the last frame.
async fn linger_after_finish<C: Connection>(conn: &C, send: &mut C::Send, limit: Duration) {
    if send.finish().is_err() {
        return;
    }
    let delivered = async {
        tokio::select! {
            _ = send.stopped() => {}
            _ = conn.closed() => {}
        }
    };
    let _ = tokio::time::timeout(limit, delivered).await;
}

/// Why no `Register` could be read.
enum ReadRegister<S, R> {
    /// The connection or stream ended: nobody to answer.
    Gone(MuxError),
    /// Something arrived that is not a valid registration: answer with a refusal.
    Bad(ControlChannel<S, R>, RefuseReason, String),
}

async fn read_register<C: Connection>(
    conn: &C,
) -> Result<(ControlChannel<C::Send, C::Recv>, Register), ReadRegister<C::Send, C::Recv>> {
    let mut channel = ControlChannel::accept(conn)
        .await
        .map_err(ReadRegister::Gone)?;
    match channel.recv().await {
        Ok(Some(ControlMessage::Register(register))) => Ok((channel, register)),
        Ok(Some(_)) => Err(ReadRegister::Bad(
            channel,
            RefuseReason::Malformed,
            "the first control message must be Register".into(),
        )),
        Ok(None) => Err(ReadRegister::Gone(MuxError::UnexpectedEof)),
        Err(MuxError::Decode(DecodeError::UnsupportedVersion(version))) => Err(ReadRegister::Bad(
            channel,
            RefuseReason::UnsupportedVersion,
            format!(
                "protocol version {version} is not supported; this edge speaks version {}",
                underpass_proto::PROTOCOL_VERSION
            ),
        )),
        Err(MuxError::Decode(error)) => Err(ReadRegister::Bad(
            channel,
            RefuseReason::Malformed,
            format!("malformed registration: {error}"),
        )),
        Err(error) => Err(ReadRegister::Gone(error)),
    }
}

/// Check the tunnel (in memory: an unknown id costs no I/O) and the proof; returns the tunnel.
fn authenticate<C: Connection>(
    conn: &C,
    register: &Register,
    tunnels: &TunnelStore,
) -> Result<Tunnel, (RefuseReason, String)> {
    let Some(tunnel) = tunnels.by_id(&register.tunnel_id) else {
        return Err((
            RefuseReason::UnknownTunnel,
            tunnels.unknown_tunnel_detail(&register.tunnel_id),
        ));
    };
    let expected = registration_proof(conn, &tunnel.id, &tunnel.secret).map_err(|error| {
        warn!(%error, "cannot compute the registration proof");
        (
            RefuseReason::Malformed,
            "the edge could not check the proof on this connection".to_owned(),
        )
    })?;
    if !bool::from(expected.ct_eq(&register.proof)) {
        return Err((RefuseReason::BadProof, tunnels.bad_proof_detail(&tunnel.id)));
    }
    Ok(tunnel)
}

/// Log, send `RegisterRefused`, wait until the connector has it (or a short while), close.
async fn refuse<C: Connection>(
    conn: &C,
    mut channel: ControlChannel<C::Send, C::Recv>,
    tunnel: Option<&TunnelId>,
    reason: RefuseReason,
    detail: String,
    context: &ServerContext<C>,
) {
    let reason_text = reason_text(reason);
    let tunnel = tunnel.map(|id| hex::encode(id.0)).unwrap_or_default();
    warn!(
        tunnel = %tunnel,
        reason = reason_text,
        remote = %conn.remote_address(),
        "refused connector"
    );
    let refused = ControlMessage::RegisterRefused(RegisterRefused {
        reason,
        message: detail,
        retry_after_ms: u32::try_from(context.settings.retry_after.as_millis()).unwrap_or(u32::MAX),
    });
    if channel.send(&refused).await.is_ok() {
        let (mut send, _reader) = channel.split();
        tokio::select! {
            () = linger_after_finish(conn, &mut send, LINGER) => {}
            () = context.shutdown.forced() => {}
        }
    }
    close(conn, CloseCode::Refused, reason_text);
}

/// A short, stable text for a refusal reason (logs and the close reason).
fn reason_text(reason: RefuseReason) -> &'static str {
    match reason {
        RefuseReason::UnknownTunnel => "unknown tunnel",
        RefuseReason::BadProof => "bad proof",
        RefuseReason::UnsupportedVersion => "unsupported version",
        RefuseReason::TooManyConnections => "too many connections",
        RefuseReason::Draining => "edge draining",
        RefuseReason::Malformed => "malformed registration",
    }
}

#[cfg(test)]
mod tests {
    use underpass_mux::ControlChannel;
    use underpass_proto::{
        ConnectorId, Heartbeat, OriginPolicy, PolicyAssembler, TlsVerification, CA_CHUNK_LEN,
    };
    use underpass_transport::quic::{self, QuicDialer, QuicListener, QuicSettings};
    use underpass_transport::tls::{self, EdgeVerification};
    use underpass_transport::{AnyDialer, AnyListener, AnyRecv, AnySend, Dialer};

    use super::*;
    use crate::directory::{ConfigDirectory, DirectoryStore};
    use crate::model::tests::http_service;
    use crate::model::Service;
    use crate::state::Pki;

    const GUARD: Duration = Duration::from_secs(20);

    async fn next(control: &mut ControlChannel<AnySend, AnyRecv>) -> ControlMessage {
        tokio::time::timeout(GUARD, control.recv())
            .await
            .expect("a control message in time")
            .expect("a control message")
            .expect("the control stream is open")
    }

    async fn next_policy(control: &mut ControlChannel<AnySend, AnyRecv>) -> OriginPolicy {
        let mut assembler = PolicyAssembler::new();
        loop {
            let complete = match next(control).await {
                ControlMessage::ServicePolicy(head) => assembler.policy(head),
                ControlMessage::ServicePolicyCa(chunk) => assembler.chunk(chunk),
                other => panic!("expected a policy, got {other:?}"),
            };
            if let Some(policy) = complete.expect("in order") {
                return policy;
            }
        }
    }

    fn directory(services: Vec<Service>) -> Directory {
        Directory {
            services: services.into_iter().map(Arc::new).collect(),
            ..Directory::default()
        }
    }

    /// A real QUIC connection registers; its policies follow every directory change.
    #[tokio::test]
    async fn policies_follow_the_directory() {
        let dir = tempfile::tempdir().unwrap(); // scratch
        let pki = Pki::load_or_generate(dir.path(), "underpass-edge").unwrap(); // fresh dir
        let tunnels = Arc::new(TunnelStore::open(dir.path()).unwrap()); // fresh dir
        let tunnel = tunnels.create("prod").unwrap(); // new name
        let settings = QuicSettings {
            socket_buffer: 1 << 20,
            ..QuicSettings::default()
        };
        let server_tls = tls::server_config(
            pki.chain_pem.as_bytes(),
            pki.key_pem.as_bytes(),
            &[quic::ALPN],
        )
        .unwrap(); // generated PKI
        let any = "127.0.0.1:0".parse().unwrap(); // literal
        let listener = QuicListener::bind(any, Arc::new(server_tls), &settings).unwrap(); // port 0
        let listener = Arc::new(AnyListener::from(listener));

        let api = Service {
            ca_pem: Some(Arc::from("A".repeat(3 * CA_CHUNK_LEN + 5))),
            ..http_service("api", None, Some(8443))
        };
        let store = ConfigDirectory::new(directory(vec![api.clone()]));
        let shutdown = Shutdown::new();
        let context = Arc::new(ServerContext {
            registry: Arc::new(Registry::new()),
            tunnels,
            directory: store.subscribe(),
            settings: ServerSettings {
                edge_name: "test-edge".into(),
                register_timeout: GUARD,
                heartbeat_interval: GUARD,
                retry_after: GUARD,
                drain_grace: Duration::from_secs(1),
                peer_timeout: GUARD,
            },
            shutdown: shutdown.clone(),
        });
        shutdown.spawn(run(listener.clone(), Protocol::Quic, context));

        let client_tls =
            tls::client_config(&EdgeVerification::Pin(pki.ca_pin), &[quic::ALPN]).unwrap(); // pin
        let dialer =
            AnyDialer::from(QuicDialer::new(Arc::new(client_tls), &settings, any).unwrap()); // port 0
        let conn = dialer
            .connect(listener.local_addr(), "underpass-edge")
            .await
            .unwrap(); // the edge listens
        let mut control = ControlChannel::open(&conn).await.unwrap(); // connected
        let register = Register {
            tunnel_id: tunnel.id,
            proof: registration_proof(&conn, &tunnel.id, &tunnel.secret).unwrap(), // TLS 1.3
            connector_id: ConnectorId([1; 16]),
            connection_index: 0,
            version: "test".into(),
            routes: Vec::new(),
        };
        control
            .send(&ControlMessage::Register(register))
            .await
            .unwrap(); // connected
        let accepted = next(&mut control).await;
        assert!(
            matches!(accepted, ControlMessage::RegisterAccepted(_)),
            "{accepted:?}"
        );

        // Right after the registration: the policy, CA bundle in chunks, generation 1.
        let first = next_policy(&mut control).await;
        assert_eq!(first.service.id, api.id);
        assert_eq!(first.service.generation, 1);
        assert_eq!(first.ca_pem.as_deref(), api.ca_pem.as_deref());

        // A changed policy is sent again with a higher generation; an unchanged directory
        // sends nothing (the heartbeat answer comes next).
        store.publish(directory(vec![Service {
            tls: TlsVerification::Disabled,
            ..api.clone()
        }]));
        let second = next_policy(&mut control).await;
        assert_eq!(second.service.generation, 2);
        assert_eq!(second.tls, TlsVerification::Disabled);
        assert_eq!(second.ca_pem, first.ca_pem);
        store.publish(directory(vec![Service {
            tls: TlsVerification::Disabled,
            ..api.clone()
        }]));
        let beat = Heartbeat { seq: 3 };
        control
            .send(&ControlMessage::Heartbeat(beat))
            .await
            .unwrap(); // open
        assert_eq!(next(&mut control).await, ControlMessage::HeartbeatAck(beat));

        // The service goes away.
        store.publish(Directory::default());
        assert_eq!(
            next(&mut control).await,
            ControlMessage::ServiceRemoved(api.id)
        );

        shutdown.shutdown(Duration::from_secs(5)).await;
        listener.close();
    }
}
