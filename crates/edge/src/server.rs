//! The connector side of the edge: accept QUIC connections, authenticate registrations, keep
//! the registry, answer heartbeats, drain on shutdown.
//!
//! Per connection: the connector opens the control stream and sends `Register`. The edge looks
//! the tunnel up, computes the expected proof (HMAC of the tunnel secret over a TLS exporter
//! value of this very connection) and compares it in constant time. A refusal is sent with a
//! reason and a retry delay, then the connection is closed once the connector has the frame.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};
use underpass_mux::{registration_proof, write_frame, ControlChannel, MuxError};
use underpass_proto::{
    ControlMessage, DecodeError, Drain, RefuseReason, Register, RegisterAccepted, RegisterRefused,
    TunnelId,
};
use underpass_transport::quic::{QuicConnection, QuicListener};
use underpass_transport::{Connection, SendStream};

use crate::registry::{NewConnection, Registry, RegistryError};
use crate::tunnels::TunnelStore;

/// QUIC application close code: normal close (connector gone, or drained).
pub const CLOSE_NORMAL: u32 = 0;
/// QUIC application close code: registration refused.
pub const CLOSE_REFUSED: u32 = 1;
/// QUIC application close code: the same connector slot registered a newer connection.
pub const CLOSE_SUPERSEDED: u32 = 2;
/// QUIC application close code: the edge is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 3;
/// QUIC application close code: no registration in time, or a broken control stream.
pub const CLOSE_PROTOCOL: u32 = 4;

/// How long a connection stays open, at most, for a last control frame (a refusal, a drain
/// notice) to reach the connector before the edge closes it.
const LINGER: Duration = Duration::from_secs(2);

/// Timings of the connector side.
#[derive(Debug, Clone)]
pub struct ServerSettings {
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
}

/// What the connection tasks share.
pub struct ServerContext<C> {
    /// Live connections.
    pub registry: Arc<Registry<C>>,
    /// Tunnels and their secrets.
    pub tunnels: Arc<TunnelStore>,
    /// Timings.
    pub settings: ServerSettings,
}

/// Accept connectors on `listener` until `shutdown` resolves; then stop accepting, drain every
/// connection (connectors are told, open streams may finish within the grace period), and
/// close the endpoint.
pub async fn run(
    listener: QuicListener,
    context: Arc<ServerContext<QuicConnection>>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Some(conn) = accepted else {
                    warn!("QUIC listener closed; no more connectors accepted");
                    break;
                };
                let id = context.registry.allocate_id();
                let span = info_span!(
                    "connector",
                    remote = %conn.remote_address(),
                    connection = id,
                );
                connections.spawn(
                    handle_connection(conn, id, context.clone(), stop_rx.clone()).instrument(span),
                );
            }
        }
    }
    let _ = stop.send(true);
    let open = connections.len();
    if open > 0 {
        info!(connections = open, grace = ?context.settings.drain_grace, "draining connectors");
    }
    while connections.join_next().await.is_some() {}
    listener.close();
    // Bounded: the endpoint is closed, so this waits only for the close frames to go out.
    let _ = tokio::time::timeout(Duration::from_secs(1), listener.wait_idle()).await;
    debug!("QUIC server stopped");
}

/// One connector connection, from registration to close. Generic over the transport, so the
/// HTTP/2 fallback can reuse it.
pub async fn handle_connection<C: Connection>(
    conn: C,
    connection_id: u64,
    context: Arc<ServerContext<C>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = &context.settings;
    let read = tokio::select! {
        read = tokio::time::timeout(settings.register_timeout, read_register(&conn)) => read,
        () = stopped(&mut shutdown) => {
            conn.close(CLOSE_SHUTDOWN, b"edge shutting down");
            return;
        }
    };
    let (mut channel, register) = match read {
        Err(_) => {
            warn!(timeout = ?settings.register_timeout, "no registration in time; closing");
            conn.close(CLOSE_PROTOCOL, b"no registration");
            return;
        }
        Ok(Err(ReadRegister::Gone(error))) => {
            debug!(%error, "connection ended before registering");
            conn.close(CLOSE_PROTOCOL, b"no registration");
            return;
        }
        Ok(Err(ReadRegister::Bad(channel, reason, detail))) => {
            refuse(&conn, channel, None, reason, detail, settings).await;
            return;
        }
        Ok(Ok(read)) => read,
    };

    let tunnel_id = register.tunnel_id;
    let refusal = if *shutdown.borrow() {
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
            refuse(&conn, channel, Some(&tunnel_id), reason, detail, settings).await;
            return;
        }
    };

    let registration = NewConnection {
        tunnel_id,
        connector_id: register.connector_id,
        connection_index: register.connection_index,
        remote: conn.remote_address(),
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
                refuse(&conn, channel, Some(&tunnel_id), reason, detail, settings).await;
                return;
            }
        };
    if let Some((old_id, old)) = registered.superseded {
        info!(
            superseded = old_id,
            "connector re-registered this connection slot; closing the old connection"
        );
        old.close(CLOSE_SUPERSEDED, b"superseded by a newer connection");
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
        conn.close(CLOSE_PROTOCOL, b"control stream failed");
        return;
    }
    info!(
        tunnel = %hex::encode(tunnel_id.0),
        tunnel_name = %tunnel,
        connector = %hex::encode(registration.connector_id.0),
        index = registration.connection_index,
        version = %registration.version,
        routes = registration.routes.len(),
        "connector registered"
    );

    let ended = control_loop(
        &conn,
        connection_id,
        channel,
        &registered.streams,
        &context,
        shutdown,
    )
    .await;
    context.registry.unregister(connection_id);
    let (code, reason) = match ended {
        LoopEnd::Shutdown => (CLOSE_SHUTDOWN, "edge shutting down"),
        LoopEnd::Ended(reason) => (CLOSE_NORMAL, reason),
    };
    conn.close(code, reason.as_bytes());
    info!(reason, "connector connection closed");
}

/// Why a control loop ended.
enum LoopEnd {
    /// The edge drained the connection for shutdown.
    Shutdown,
    /// The connector or the connection ended it, for this reason.
    Ended(&'static str),
}

/// Serve the control stream of a registered connection until it ends; returns why.
async fn control_loop<C: Connection>(
    conn: &C,
    connection_id: u64,
    channel: ControlChannel<C::Send, C::Recv>,
    streams: &crate::registry::StreamTracker,
    context: &ServerContext<C>,
    mut shutdown: watch::Receiver<bool>,
) -> LoopEnd {
    let (mut send, mut reader) = channel.split();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            message = reader.next::<ControlMessage>() => match message {
                Ok(Some(ControlMessage::Heartbeat(beat))) => {
                    let ack = ControlMessage::HeartbeatAck(beat);
                    if let Err(error) = write_frame(&mut send, &ack).await {
                        debug!(%error, "heartbeat answer failed");
                        return LoopEnd::Ended("control stream failed");
                    }
                }
                Ok(Some(ControlMessage::HeartbeatAck(_))) => {}
                Ok(Some(ControlMessage::Drain(drain))) => {
                    context.registry.set_draining(connection_id);
                    info!(grace_ms = drain.grace_ms, reason = %drain.reason, "connector is draining");
                }
                Ok(Some(other)) => {
                    warn!(message = ?other, "unexpected control message; ignored");
                }
                Ok(None) => return LoopEnd::Ended("connector finished the control stream"),
                Err(error) => {
                    debug!(%error, "control stream failed");
                    return LoopEnd::Ended("control stream failed");
                }
            },
            error = conn.closed() => {
                debug!(%error, "connection closed");
                return LoopEnd::Ended("connection closed");
            }
            () = stopped(&mut shutdown), if drain_deadline.is_none() => {
                let grace = context.settings.drain_grace;
                drain_deadline = Some(Instant::now() + grace);
                context.registry.set_draining(connection_id);
                let drain = ControlMessage::Drain(Drain {
                    grace_ms: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
                    reason: "edge shutting down".into(),
                });
                if let Err(error) = write_frame(&mut send, &drain).await {
                    debug!(%error, "could not send the drain notice");
                }
            }
            () = streams.idle(), if drain_deadline.is_some() => {
                // Finishing the control stream and waiting for the acknowledgement makes sure
                // the drain notice arrived before the connection closes.
                linger_after_finish(conn, &mut send, LINGER).await;
                return LoopEnd::Shutdown;
            }
            () = sleep_until(drain_deadline), if drain_deadline.is_some() => {
                warn!(open_streams = streams.open_streams(), "drain grace period over; closing");
                linger_after_finish(conn, &mut send, LINGER).await;
                return LoopEnd::Shutdown;
            }
        }
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
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

/// Check the tunnel and the proof; returns the tunnel's name.
fn authenticate<C: Connection>(
    conn: &C,
    register: &Register,
    tunnels: &TunnelStore,
) -> Result<String, (RefuseReason, String)> {
    let Some(tunnel) = tunnels.by_id(&register.tunnel_id) else {
        return Err((
            RefuseReason::UnknownTunnel,
            "this edge has no such tunnel; check the token".into(),
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
        return Err((
            RefuseReason::BadProof,
            "the proof does not match the tunnel secret; check the token".into(),
        ));
    }
    Ok(tunnel.name)
}

/// Log, send `RegisterRefused`, wait until the connector has it (or a short while), close.
async fn refuse<C: Connection>(
    conn: &C,
    mut channel: ControlChannel<C::Send, C::Recv>,
    tunnel: Option<&TunnelId>,
    reason: RefuseReason,
    detail: String,
    settings: &ServerSettings,
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
        retry_after_ms: u32::try_from(settings.retry_after.as_millis()).unwrap_or(u32::MAX),
    });
    if channel.send(&refused).await.is_ok() {
        let (mut send, _reader) = channel.split();
        linger_after_finish(conn, &mut send, LINGER).await;
    }
    conn.close(CLOSE_REFUSED, reason_text.as_bytes());
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

/// Resolves once `shutdown` turns true (or its sender is gone). Drops the watch guard before
/// returning, so the caller's future stays `Send`.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
