//! One connection to the edge, from registration to close: register on the control stream,
//! run the control loop (heartbeats both ways, drain notices, service policies), serve the
//! streams the edge opens, drain.
//!
//! [`register`] turns an established transport connection into a [`Registered`] one (or says
//! why not); [`Registered::serve`] serves it until it is lost, drained by the edge, or the
//! connector stops. The connection's service policies live in a [`PolicyStore`] fed by the
//! control loop and read by its streams, so a policy never outlives its connection.
//!
//! Everything runs under the slot's [`Shutdown`]: the control task and a drained connection
//! are spawned there, the streams in a child of it. On stop the connection sends `Drain`,
//! keeps serving until its streams end, and is closed with [`CloseCode::Shutdown`] when they
//! have, or when the grace is over (the streams are then cut).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, info, warn, Span};
use underpass_mux::{
    accept_stream, peer_silent, registration_proof, write_frame, ControlChannel, FrameReader,
    MuxError,
};
use underpass_proto::{
    AnnouncedRoute, CloseCode, ConnectorId, ControlMessage, Drain, Heartbeat, OriginPolicy,
    PolicyAssembler, PolicyError, Register, RegisterAccepted, RegisterRefused, RoutesUpdate,
    TunnelToken,
};
use underpass_rt::Shutdown;
use underpass_transport::{Connection, RecvStream, SendStream};

use crate::config::ConnectorConfig;
use crate::metrics::ConnectorMetrics;
use crate::policy::PolicyStore;
use crate::streams::{StreamContext, Streams};

/// Heartbeats sent without an answer before the connection is declared dead.
const MAX_UNANSWERED_HEARTBEATS: u32 = 3;
/// After a drain, how long the edge may take to close the idle connection (it does once it
/// has read every stream to its end) before the connector closes it.
const DELIVERY_LINGER: Duration = Duration::from_secs(3);

/// What every connection of the connector registers and serves with.
pub(crate) struct SessionSettings {
    token: TunnelToken,
    connector_id: ConnectorId,
    /// The routes to announce: at registration, and again on every connection whenever a
    /// live reload changes them.
    routes: watch::Receiver<Vec<AnnouncedRoute>>,
    register_timeout: Duration,
    drain_grace: Duration,
    /// Dead-peer detection (`quic.peer_timeout_ms`), if on.
    peer_timeout: Option<Duration>,
}

/// How a connection attempt ended.
pub(crate) enum SessionEnd {
    /// The connector is shutting down.
    Stopped,
    /// No registration: handshake failure, timeout, protocol error.
    Failed(String),
    /// The edge refused the registration.
    Refused(RegisterRefused),
    /// Registered, then the connection was lost after being up for `uptime`.
    Lost {
        /// Why.
        reason: String,
        /// How long the registration lasted.
        uptime: Duration,
    },
    /// Registered, then the edge asked to drain (or closed the connection as drained or
    /// shutting down) after `uptime`; the old connection finishes on its own.
    Drained {
        /// How long the registration lasted.
        uptime: Duration,
    },
}

/// A connection the edge accepted, not served yet.
pub(crate) struct Registered<C: Connection> {
    conn: C,
    control: ControlChannel<C::Send, C::Recv>,
    accepted: RegisterAccepted,
    index: u8,
    /// Route changes after the ones sent in `Register`.
    routes: watch::Receiver<Vec<AnnouncedRoute>>,
}

/// Why the control loop ended, which ends the connection.
struct ControlEnd {
    code: CloseCode,
    reason: String,
}

impl SessionSettings {
    /// What `config` says, for the connector instance `connector_id`, announcing the routes
    /// `routes` holds.
    pub(crate) fn new(
        config: &ConnectorConfig,
        connector_id: ConnectorId,
        routes: watch::Receiver<Vec<AnnouncedRoute>>,
    ) -> Self {
        SessionSettings {
            token: config.token.clone(),
            connector_id,
            routes,
            register_timeout: config.timeouts.register,
            drain_grace: config.timeouts.drain,
            peer_timeout: config.quic.peer_timeout(),
        }
    }
}

/// Register `conn` as connection slot `index`, within the registration timeout. Gives up with
/// [`SessionEnd::Stopped`] (closing the connection) as soon as `slot` stops.
pub(crate) async fn register<C: Connection>(
    conn: C,
    settings: &SessionSettings,
    index: u8,
    slot: &Shutdown,
) -> Result<Registered<C>, SessionEnd> {
    let timeout = settings.register_timeout;
    let registered = tokio::select! {
        registered = tokio::time::timeout(timeout, exchange(&conn, settings, index)) => registered,
        () = slot.stopping() => {
            close(&conn, CloseCode::Shutdown, "connector shutting down");
            return Err(SessionEnd::Stopped);
        }
    };
    match registered {
        Ok(Ok((control, accepted, routes))) => {
            Span::current().record("connection_id", accepted.connection_id);
            info!(
                edge_name = %accepted.edge_name,
                heartbeat_ms = accepted.heartbeat_interval_ms,
                "registered with the edge"
            );
            Ok(Registered {
                conn,
                control,
                accepted,
                index,
                routes,
            })
        }
        Ok(Err(Refusal::Refused(refused))) => {
            close(&conn, CloseCode::Refused, "registration refused");
            Err(SessionEnd::Refused(refused))
        }
        Ok(Err(Refusal::Failed(error))) => {
            close(&conn, CloseCode::Protocol, "registration failed");
            Err(SessionEnd::Failed(error))
        }
        Err(_) => {
            close(&conn, CloseCode::Protocol, "no registration answer");
            Err(SessionEnd::Failed(format!(
                "no registration answer within {} ms",
                timeout.as_millis()
            )))
        }
    }
}

/// Why the registration exchange did not give a registered connection.
enum Refusal {
    Refused(RegisterRefused),
    Failed(String),
}

/// What a successful registration exchange gives: the control channel, the edge's answer,
/// and the route watch (the routes sent are marked seen).
type Exchanged<C> = (
    ControlChannel<<C as Connection>::Send, <C as Connection>::Recv>,
    RegisterAccepted,
    watch::Receiver<Vec<AnnouncedRoute>>,
);

/// Open the control stream, send `Register`, read the answer.
async fn exchange<C: Connection>(
    conn: &C,
    settings: &SessionSettings,
    index: u8,
) -> Result<Exchanged<C>, Refusal> {
    let failed = |what: &str, error: MuxError| Refusal::Failed(format!("{what}: {error}"));
    let token = &settings.token;
    let mut control = ControlChannel::open(conn)
        .await
        .map_err(|e| failed("cannot open the control stream", e))?;
    let proof = registration_proof(conn, &token.tunnel_id, &token.secret)
        .map_err(|e| failed("cannot compute the registration proof", e))?;
    let mut routes = settings.routes.clone();
    let register = Register {
        tunnel_id: token.tunnel_id,
        proof,
        connector_id: settings.connector_id,
        connection_index: index,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        routes: routes.borrow_and_update().clone(),
    };
    control
        .send(&ControlMessage::Register(register))
        .await
        .map_err(|e| failed("cannot send the registration", e))?;
    match control.recv().await {
        Ok(Some(ControlMessage::RegisterAccepted(accepted))) => Ok((control, accepted, routes)),
        Ok(Some(ControlMessage::RegisterRefused(refused))) => Err(Refusal::Refused(refused)),
        Ok(Some(other)) => Err(Refusal::Failed(format!(
            "edge answered the registration with {}",
            message_name(&other)
        ))),
        Ok(None) => Err(Refusal::Failed(
            "edge closed the control stream without answering".into(),
        )),
        Err(error) => Err(failed("no registration answer", error)),
    }
}

impl Registered<underpass_transport::AnyConnection> {
    /// The transport the connection runs on.
    pub(crate) fn protocol(&self) -> underpass_transport::Protocol {
        self.conn.protocol()
    }
}

impl<C: Connection> Registered<C> {
    /// What the edge answered.
    pub(crate) fn accepted(&self) -> &RegisterAccepted {
        &self.accepted
    }

    /// Serve the connection until it is lost, drained by the edge, or `slot` stops.
    pub(crate) async fn serve(
        self,
        context: Arc<StreamContext>,
        settings: &SessionSettings,
        slot: &Shutdown,
    ) -> SessionEnd {
        let Registered {
            conn,
            control,
            accepted,
            index,
            mut routes,
        } = self;
        let registered_at = Instant::now();
        let live = LiveConnection::new(&conn, accepted.connection_id, index, context.metrics());
        let (store, policies) = PolicyStore::new();
        let (send, reader) = control.split();
        let (commands, command_rx) = mpsc::channel(4);
        let (drain_tx, mut drain_rx) = mpsc::channel(1);
        let heartbeat = (accepted.heartbeat_interval_ms > 0)
            .then(|| Duration::from_millis(accepted.heartbeat_interval_ms.into()));
        let control = ControlLoop {
            send,
            reader,
            heartbeat,
            commands: command_rx,
            drains: drain_tx,
            store,
            assembler: PolicyAssembler::new(),
            unanswered: 0,
        };
        let mut control_task: JoinHandle<ControlEnd> = slot.spawn(control.run());
        let mut streams = Streams::new(context, policies, slot.child());
        let mut drain_open = true;
        let mut routes_open = true;
        let stopping = slot.stopping();
        tokio::pin!(stopping);
        let silent = silence(conn.clone(), settings.peer_timeout);
        tokio::pin!(silent);
        let reason = loop {
            tokio::select! {
                incoming = accept_stream(&conn) => match incoming {
                    Ok(incoming) => streams.spawn(incoming),
                    Err(error) => {
                        let reason = error.to_string();
                        if closed_as_drained(&reason) {
                            info!(%reason, "the edge closed this connection as drained");
                            control_task.abort();
                            streams.lost().await;
                            live.gone();
                            return SessionEnd::Drained {
                                uptime: registered_at.elapsed(),
                            };
                        }
                        close(&conn, CloseCode::ControlLost, "connection lost");
                        break reason;
                    }
                },
                silent_for = &mut silent => {
                    let reason = format!("peer silent for {} ms", silent_for.as_millis());
                    close(&conn, CloseCode::ControlLost, &reason);
                    break format!(
                        "{reason}: nothing arrived from the edge (not even an acknowledgement); \
                         it is down or the network path to it is broken"
                    );
                }
                ended = &mut control_task => {
                    let ended = ended.unwrap_or_else(|e| ControlEnd {
                        code: CloseCode::ControlLost,
                        reason: format!("control task failed: {e}"),
                    });
                    close(&conn, ended.code, &ended.reason);
                    break ended.reason;
                }
                changed = routes.changed(), if routes_open => match changed {
                    Ok(()) => {
                        let update = RoutesUpdate {
                            routes: routes.borrow_and_update().clone(),
                        };
                        info!(routes = update.routes.len(), "announcing the reloaded routes");
                        if commands.send(ControlMessage::Routes(update)).await.is_err() {
                            debug!("the control loop is gone; the routes are not announced");
                        }
                    }
                    Err(_) => routes_open = false,
                },
                drain = drain_rx.recv(), if drain_open => match drain {
                    Some(drain) => {
                        info!(
                            grace_ms = drain.grace_ms,
                            reason = %drain.reason,
                            "the edge is draining this connection; opening another"
                        );
                        let grace = Duration::from_millis(drain.grace_ms.into());
                        let forced = slot.forced();
                        let slot_forced = slot.forced();
                        let peer_timeout = settings.peer_timeout;
                        let draining = live.draining();
                        slot.spawn(async move {
                            let until = async {
                                tokio::select! {
                                    () = tokio::time::sleep(grace) => {}
                                    () = forced => {}
                                }
                            };
                            let idle = drain_streams(&conn, &mut streams, until, peer_timeout);
                            if idle.await {
                                await_edge_close(&conn, slot_forced).await;
                            }
                            control_task.abort();
                            close(&conn, CloseCode::Drained, "drained");
                            streams.cut().await;
                            drop(draining);
                            live.gone();
                            debug!("drained connection closed");
                        });
                        return SessionEnd::Drained {
                            uptime: registered_at.elapsed(),
                        };
                    }
                    None => drain_open = false,
                },
                () = &mut stopping => {
                    let grace = settings.drain_grace;
                    let notice = Drain {
                        grace_ms: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
                        reason: "connector shutting down".into(),
                    };
                    // The control task may be gone already; then the edge learns from the
                    // close.
                    let _ = commands.try_send(ControlMessage::Drain(notice));
                    // The grace is the connector's: its shutdown forces the slot when over.
                    let peer_timeout = settings.peer_timeout;
                    let idle = drain_streams(&conn, &mut streams, slot.forced(), peer_timeout);
                    if idle.await {
                        await_edge_close(&conn, slot.forced()).await;
                    }
                    control_task.abort();
                    close(&conn, CloseCode::Shutdown, "connector shutting down");
                    streams.cut().await;
                    live.gone();
                    return SessionEnd::Stopped;
                }
            }
        };
        control_task.abort();
        let open = streams.open();
        if open > 0 {
            info!(
                open_streams = open,
                "the connection is gone; closing its streams and their origin sockets"
            );
        }
        // The connection is gone: its streams fail at once (their origin sockets are reset);
        // what does not end on its own is cut. In the background, so that the slot
        // reconnects at once.
        slot.spawn(async move {
            streams.lost().await;
            live.gone();
        });
        SessionEnd::Lost {
            reason,
            uptime: registered_at.elapsed(),
        }
    }
}

/// A registered connection as the metrics see it: its QUIC statistics are sampled while it
/// lives.
struct LiveConnection {
    metrics: Arc<ConnectorMetrics>,
    connection_id: u64,
    edge: String,
}

/// Counts a connection the edge drained as `draining` while it finishes its streams.
struct Draining {
    metrics: Arc<ConnectorMetrics>,
    edge: String,
}

impl LiveConnection {
    fn new<C: Connection>(
        conn: &C,
        connection_id: u64,
        index: u8,
        metrics: &Arc<ConnectorMetrics>,
    ) -> Self {
        let addr = conn.remote_address();
        let source = conn.clone();
        metrics.connection_live(connection_id, index, addr, Box::new(move || source.stats()));
        LiveConnection {
            metrics: metrics.clone(),
            connection_id,
            edge: addr.to_string(),
        }
    }

    fn draining(&self) -> Draining {
        self.metrics.draining(&self.edge, 1);
        Draining {
            metrics: self.metrics.clone(),
            edge: self.edge.clone(),
        }
    }

    /// The connection is closed: stop sampling it (what dropping does; named for the
    /// reader).
    fn gone(self) {}
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.metrics.connection_gone(self.connection_id);
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        self.metrics.draining(&self.edge, -1);
    }
}

/// Resolves once the peer has been silent for `timeout` (never when detection is off).
async fn silence<C: Connection>(conn: C, timeout: Option<Duration>) -> Duration {
    match timeout {
        Some(timeout) => peer_silent(&conn, timeout).await,
        None => std::future::pending().await,
    }
}

/// Whether a connection error says the edge closed the connection because it drained it or
/// shuts down (`CloseCode::Drained`, `CloseCode::Shutdown`): then the slot redials after a
/// short delay, not a backoff. The transport reports the peer's close as text ending in
/// `(code N)`, or as the bare code.
fn closed_as_drained(reason: &str) -> bool {
    let Some(close) = reason.split("closed by peer: ").nth(1) else {
        return false;
    };
    let close = close.trim();
    let code = close
        .strip_suffix(')')
        .and_then(|rest| rest.rsplit("(code ").next())
        .unwrap_or(close);
    matches!(
        code.trim()
            .parse::<u32>()
            .ok()
            .and_then(CloseCode::from_code),
        Some(CloseCode::Drained | CloseCode::Shutdown)
    )
}

/// Keep serving the streams the edge still opens until every stream has ended, `until`
/// resolves, the connection closes or the edge falls silent. Returns whether every stream
/// ended (the connection is still up and idle).
async fn drain_streams<C: Connection>(
    conn: &C,
    streams: &mut Streams,
    until: impl Future<Output = ()>,
    peer_timeout: Option<Duration>,
) -> bool {
    tokio::pin!(until);
    let silent = silence(conn.clone(), peer_timeout);
    tokio::pin!(silent);
    loop {
        tokio::select! {
            () = streams.idle() => {
                debug!("no stream open");
                return true;
            }
            () = &mut until => {
                info!(open_streams = streams.open(), "drain grace period over; closing");
                return false;
            }
            silent_for = &mut silent => {
                warn!(
                    silent_ms = silent_for.as_millis() as u64,
                    open_streams = streams.open(),
                    "the edge fell silent while draining; closing"
                );
                return false;
            }
            incoming = accept_stream(conn) => match incoming {
                Ok(incoming) => streams.spawn(incoming),
                Err(_) => return false,
            },
        }
    }
}

/// After a drain, let the edge close the connection: a stream task ends once its last bytes
/// are *queued*, and closing the connection ourselves would discard what is not yet delivered.
/// The edge closes once its side of every stream has read to the end (its stream leases), so
/// waiting for that close loses nothing. Bounded by [`DELIVERY_LINGER`] and by `forced`.
async fn await_edge_close<C: Connection>(conn: &C, forced: impl Future<Output = ()>) {
    tokio::select! {
        _ = conn.closed() => debug!("the edge closed the drained connection"),
        () = tokio::time::sleep(DELIVERY_LINGER) => {
            debug!(linger = ?DELIVERY_LINGER, "the edge did not close the drained connection");
        }
        () = forced => {}
    }
}

fn close<C: Connection>(conn: &C, code: CloseCode, reason: &str) {
    debug!(%code, reason, "closing the connection");
    conn.close(code.code(), reason.as_bytes());
}

fn message_name(message: &ControlMessage) -> &'static str {
    match message {
        ControlMessage::Register(_) => "Register",
        ControlMessage::RegisterAccepted(_) => "RegisterAccepted",
        ControlMessage::RegisterRefused(_) => "RegisterRefused",
        ControlMessage::Drain(_) => "Drain",
        ControlMessage::Heartbeat(_) => "Heartbeat",
        ControlMessage::HeartbeatAck(_) => "HeartbeatAck",
        ControlMessage::ServicePolicy(_) => "ServicePolicy",
        ControlMessage::ServicePolicyCa(_) => "ServicePolicyCa",
        ControlMessage::ServiceRemoved(_) => "ServiceRemoved",
        ControlMessage::Routes(_) => "Routes",
    }
}

/// The control stream after registration: heartbeats both ways, drain notices, service
/// policies, our own messages.
struct ControlLoop<S, R> {
    send: S,
    reader: FrameReader<R>,
    heartbeat: Option<Duration>,
    commands: mpsc::Receiver<ControlMessage>,
    drains: mpsc::Sender<Drain>,
    store: PolicyStore,
    assembler: PolicyAssembler,
    /// Our heartbeats the edge has not answered yet.
    unanswered: u32,
}

impl<S: SendStream, R: RecvStream> ControlLoop<S, R> {
    /// Run until the control stream ends or breaks; says why (which ends the connection).
    async fn run(mut self) -> ControlEnd {
        let mut ticker = self.heartbeat.map(|period| {
            let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker
        });
        let mut seq = 0u64;
        let mut commands_open = true;
        loop {
            let outgoing = tokio::select! {
                message = self.reader.next::<ControlMessage>() => match message {
                    Ok(Some(message)) => match self.receive(message) {
                        Ok(Some(reply)) => reply,
                        Ok(None) => continue,
                        Err(end) => return end,
                    },
                    Ok(None) => return ControlEnd {
                        code: CloseCode::Normal,
                        reason: "the edge finished the control stream".into(),
                    },
                    Err(error) => return ControlEnd {
                        code: CloseCode::ControlLost,
                        reason: format!("control stream failed: {error}"),
                    },
                },
                () = tick(&mut ticker) => {
                    if self.unanswered >= MAX_UNANSWERED_HEARTBEATS {
                        return ControlEnd {
                            code: CloseCode::ControlLost,
                            reason: format!("{} heartbeats went unanswered", self.unanswered),
                        };
                    }
                    self.unanswered += 1;
                    seq += 1;
                    ControlMessage::Heartbeat(Heartbeat { seq })
                }
                command = self.commands.recv(), if commands_open => match command {
                    Some(message) => message,
                    None => {
                        commands_open = false;
                        continue;
                    }
                },
            };
            if let Err(error) = write_frame(&mut self.send, &outgoing).await {
                return ControlEnd {
                    code: CloseCode::ControlLost,
                    reason: format!("cannot write on the control stream: {error}"),
                };
            }
        }
    }

    /// Handle one message from the edge; returns the answer to send, if any.
    fn receive(&mut self, message: ControlMessage) -> Result<Option<ControlMessage>, ControlEnd> {
        match message {
            ControlMessage::Heartbeat(beat) => return Ok(Some(ControlMessage::HeartbeatAck(beat))),
            ControlMessage::HeartbeatAck(_) => self.unanswered = 0,
            ControlMessage::Drain(drain) => {
                // Capacity 1 and only the first notice matters.
                let _ = self.drains.try_send(drain);
            }
            ControlMessage::ServicePolicy(head) => {
                let assembled = self.assembler.policy(head);
                self.assembled(assembled)?;
            }
            ControlMessage::ServicePolicyCa(chunk) => {
                let assembled = self.assembler.chunk(chunk);
                self.assembled(assembled)?;
            }
            ControlMessage::ServiceRemoved(id) => {
                info!(service = %hex::encode(id.0), "service removed by the edge");
                self.store.remove(id);
            }
            other => {
                warn!(
                    message = message_name(&other),
                    "unexpected control message ignored"
                );
            }
        }
        Ok(None)
    }

    /// Store a policy once it is complete; a policy out of order is a protocol error.
    fn assembled(
        &mut self,
        assembled: Result<Option<OriginPolicy>, PolicyError>,
    ) -> Result<(), ControlEnd> {
        match assembled {
            Ok(None) => Ok(()),
            Ok(Some(policy)) => {
                info!(
                    service = %hex::encode(policy.service.id.0),
                    name = %policy.name,
                    generation = policy.service.generation,
                    ca_bytes = policy.ca_pem.as_ref().map_or(0, String::len),
                    "service policy received"
                );
                self.store.insert(policy);
                debug!(services = self.store.len(), "service policies held");
                Ok(())
            }
            Err(error) => Err(ControlEnd {
                code: CloseCode::Protocol,
                reason: format!("bad service policy from the edge: {error}"),
            }),
        }
    }
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_as_drained_or_shutdown_is_recognised() {
        assert!(closed_as_drained(
            "connection lost: closed by peer: drained (code 6)"
        ));
        assert!(closed_as_drained("connection lost: closed by peer: 3"));
        assert!(!closed_as_drained(
            "connection lost: closed by peer: control lost (code 5)"
        ));
        assert!(!closed_as_drained("connection lost: timed out"));
        assert!(!closed_as_drained(
            "connection lost: closed by peer: (code x)"
        ));
    }
}
