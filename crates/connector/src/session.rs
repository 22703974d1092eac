//! One connection to the edge, from dialing to close: register on the control stream, serve
//! the streams the edge opens, answer heartbeats, drain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, info, info_span, warn, Instrument, Span};
use underpass_mux::{
    accept_stream, registration_proof, write_frame, ControlChannel, FrameReader, MuxError,
};
use underpass_proto::{
    ControlMessage, Drain, Heartbeat, Register, RegisterAccepted, RegisterRefused,
};
use underpass_transport::quic::{QuicConnection, QuicRecv, QuicSend};
use underpass_transport::Connection;

use crate::agent::{split_host_port, ConnectionState, Dialers, Shared};
use crate::stream;

/// Connection close code: shutdown, drain or refused registration (nothing wrong).
pub const CLOSE_NORMAL: u32 = 0;
/// Connection close code: the control stream failed or heartbeats went unanswered.
pub const CLOSE_CONTROL_LOST: u32 = 1;
/// Connection close code: the edge broke the registration protocol.
pub const CLOSE_PROTOCOL: u32 = 2;

/// Heartbeats sent without an answer before the connection is declared dead.
const MAX_UNANSWERED_HEARTBEATS: u32 = 3;

/// How a connection attempt ended.
pub(crate) enum SessionEnd {
    /// The connector is shutting down.
    Stopped,
    /// No registration: unresolvable edge, handshake failure, timeout, protocol error.
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
    /// Registered, then the edge asked to drain after `uptime`; the old connection finishes
    /// on its own.
    Drained {
        /// How long the registration lasted.
        uptime: Duration,
    },
}

/// How serving a registered connection ended.
enum ServeEnd {
    Stopped,
    Lost(String),
    Drained,
}

/// Why registration did not complete.
enum RegisterError {
    Refused(RegisterRefused),
    Failed(String, u32),
}

/// Dial `edge`, register, and serve until the connection ends. When the edge name has several
/// addresses, `pick` chooses one (modulo their number), so successive attempts try them all.
pub(crate) async fn attempt(
    shared: &Arc<Shared>,
    index: u8,
    edge: &str,
    pick: usize,
    dialers: &mut Dialers,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let timeout = shared.config.timeouts.register;
    let addr = tokio::select! {
        addr = tokio::time::timeout(timeout, resolve_edge(edge, pick)) => match addr {
            Ok(Ok(addr)) => addr,
            Ok(Err(error)) => return SessionEnd::Failed(error),
            Err(_) => return SessionEnd::Failed(format!("cannot resolve {edge}: timed out")),
        },
        _ = stopped(stop) => return SessionEnd::Stopped,
    };
    Span::current().record("edge", tracing::field::display(addr));
    let dialer = match dialers.for_edge(addr, shared) {
        Ok(dialer) => dialer,
        Err(error) => return SessionEnd::Failed(format!("cannot create QUIC endpoint: {error}")),
    };
    let server_name = &shared.config.edge.server_name;
    let conn = tokio::select! {
        conn = tokio::time::timeout(timeout, dialer.connect(addr, server_name)) => match conn {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => return SessionEnd::Failed(error.to_string()),
            Err(_) => return SessionEnd::Failed(format!(
                "no QUIC handshake with {addr} within {} ms", timeout.as_millis()
            )),
        },
        _ = stopped(stop) => return SessionEnd::Stopped,
    };
    let registered = tokio::select! {
        registered = tokio::time::timeout(timeout, register(shared, index, &conn)) => registered,
        _ = stopped(stop) => {
            conn.close(CLOSE_NORMAL, b"connector shutting down");
            return SessionEnd::Stopped;
        }
    };
    let (control, accepted) = match registered {
        Ok(Ok(registered)) => registered,
        Ok(Err(RegisterError::Refused(refused))) => {
            conn.close(CLOSE_NORMAL, b"registration refused");
            return SessionEnd::Refused(refused);
        }
        Ok(Err(RegisterError::Failed(error, code))) => {
            conn.close(code, b"registration failed");
            return SessionEnd::Failed(error);
        }
        Err(_) => {
            conn.close(CLOSE_PROTOCOL, b"no registration answer");
            return SessionEnd::Failed(format!(
                "no registration answer within {} ms",
                timeout.as_millis()
            ));
        }
    };
    Span::current().record("connection_id", accepted.connection_id);
    info!(
        connection_id = accepted.connection_id,
        edge_name = %accepted.edge_name,
        heartbeat_ms = accepted.heartbeat_interval_ms,
        "registered with the edge"
    );
    shared.set_state(
        index,
        ConnectionState::Registered {
            connection_id: accepted.connection_id,
            edge_name: accepted.edge_name.clone(),
        },
    );
    let registered_at = Instant::now();
    let end = serve(shared, conn, control, &accepted, stop).await;
    let uptime = registered_at.elapsed();
    match end {
        ServeEnd::Stopped => SessionEnd::Stopped,
        ServeEnd::Lost(reason) => SessionEnd::Lost { reason, uptime },
        ServeEnd::Drained => SessionEnd::Drained { uptime },
    }
}

/// Resolve `host:port` and take its `pick`-th address (modulo their number).
async fn resolve_edge(edge: &str, pick: usize) -> Result<SocketAddr, String> {
    let (host, port) =
        split_host_port(edge).ok_or_else(|| format!("edge address {edge:?} is not host:port"))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve edge address {edge}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("edge address {edge} resolved to nothing"));
    }
    Ok(addrs[pick % addrs.len()])
}

type Control = ControlChannel<QuicSend, QuicRecv>;

async fn register(
    shared: &Shared,
    index: u8,
    conn: &QuicConnection,
) -> Result<(Control, RegisterAccepted), RegisterError> {
    let failed = |what: &str, error: MuxError| {
        RegisterError::Failed(format!("{what}: {error}"), CLOSE_PROTOCOL)
    };
    let token = &shared.config.token;
    let mut control = ControlChannel::open(conn)
        .await
        .map_err(|e| failed("cannot open the control stream", e))?;
    let proof = registration_proof(conn, &token.tunnel_id, &token.secret)
        .map_err(|e| failed("cannot compute the registration proof", e))?;
    let register = Register {
        tunnel_id: token.tunnel_id,
        proof,
        connector_id: shared.connector_id,
        connection_index: index,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        routes: shared.announced.clone(),
    };
    control
        .send(&ControlMessage::Register(register))
        .await
        .map_err(|e| failed("cannot send the registration", e))?;
    match control.recv().await {
        Ok(Some(ControlMessage::RegisterAccepted(accepted))) => Ok((control, accepted)),
        Ok(Some(ControlMessage::RegisterRefused(refused))) => Err(RegisterError::Refused(refused)),
        Ok(Some(other)) => Err(RegisterError::Failed(
            format!(
                "edge answered the registration with {}",
                message_name(&other)
            ),
            CLOSE_PROTOCOL,
        )),
        Ok(None) => Err(RegisterError::Failed(
            "edge closed the control stream without answering".into(),
            CLOSE_PROTOCOL,
        )),
        Err(error) => Err(failed("no registration answer", error)),
    }
}

fn message_name(message: &ControlMessage) -> &'static str {
    match message {
        ControlMessage::Register(_) => "Register",
        ControlMessage::RegisterAccepted(_) => "RegisterAccepted",
        ControlMessage::RegisterRefused(_) => "RegisterRefused",
        ControlMessage::Drain(_) => "Drain",
        ControlMessage::Heartbeat(_) => "Heartbeat",
        ControlMessage::HeartbeatAck(_) => "HeartbeatAck",
    }
}

/// Serve a registered connection until it is lost, drained by the edge, or we stop.
async fn serve(
    shared: &Arc<Shared>,
    conn: QuicConnection,
    control: Control,
    accepted: &RegisterAccepted,
    stop: &mut watch::Receiver<bool>,
) -> ServeEnd {
    let (send, reader) = control.split();
    let (commands, command_rx) = mpsc::channel(4);
    let (drain_tx, mut drain_rx) = mpsc::channel(1);
    let heartbeat = (accepted.heartbeat_interval_ms > 0)
        .then(|| Duration::from_millis(accepted.heartbeat_interval_ms.into()));
    let mut control_task: JoinHandle<String> =
        tokio::spawn(control_loop(send, reader, heartbeat, command_rx, drain_tx).in_current_span());
    let slots = StreamSlots::new(shared.config.max_streams);
    let counter = Arc::new(AtomicU64::new(0));
    let mut drain_open = true;
    let end = loop {
        tokio::select! {
            incoming = accept_stream(&conn) => match incoming {
                Ok(incoming) => spawn_stream(incoming, shared, &slots, &counter),
                Err(error) => break ServeEnd::Lost(error.to_string()),
            },
            reason = &mut control_task => {
                let reason = reason.unwrap_or_else(|e| format!("control task failed: {e}"));
                conn.close(CLOSE_CONTROL_LOST, reason.as_bytes());
                return ServeEnd::Lost(reason);
            }
            drain = drain_rx.recv(), if drain_open => match drain {
                Some(drain) => {
                    info!(
                        grace_ms = drain.grace_ms,
                        reason = %drain.reason,
                        "the edge is draining this connection; opening another"
                    );
                    let grace = Duration::from_millis(drain.grace_ms.into());
                    let shared = shared.clone();
                    let stop = stop.clone();
                    tokio::spawn(
                        async move {
                            let stop = Some(stop);
                            drain_connection(&conn, grace, &shared, &slots, &counter, stop).await;
                            control_task.abort();
                            conn.close(CLOSE_NORMAL, b"drained");
                            debug!("drained connection closed");
                        }
                        .in_current_span(),
                    );
                    return ServeEnd::Drained;
                }
                None => drain_open = false,
            },
            _ = stopped(stop) => {
                let grace = shared.config.timeouts.drain;
                let notice = Drain {
                    grace_ms: u32::try_from(grace.as_millis()).unwrap_or(u32::MAX),
                    reason: "connector shutting down".into(),
                };
                // The control task may be gone already; then the edge learns from the close.
                let _ = commands.try_send(ControlMessage::Drain(notice));
                drain_connection(&conn, grace, shared, &slots, &counter, None).await;
                break ServeEnd::Stopped;
            }
        }
    };
    control_task.abort();
    match &end {
        ServeEnd::Stopped => conn.close(CLOSE_NORMAL, b"connector shutting down"),
        _ => conn.close(CLOSE_CONTROL_LOST, b"connection lost"),
    }
    end
}

/// Keep serving streams the edge still opens until every stream is done, `grace` is over,
/// the connection closes, or (if given) `stop` turns true.
async fn drain_connection(
    conn: &QuicConnection,
    grace: Duration,
    shared: &Arc<Shared>,
    slots: &StreamSlots,
    counter: &Arc<AtomicU64>,
    mut stop: Option<watch::Receiver<bool>>,
) {
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        let idle = slots.idle.notified();
        tokio::pin!(idle);
        // Register interest before checking, so a stream ending in between is not missed.
        idle.as_mut().enable();
        if slots.active() == 0 {
            debug!("no stream open; closing");
            return;
        }
        tokio::select! {
            () = &mut idle => {}
            () = &mut deadline => {
                info!(open_streams = slots.active(), "drain grace period over; closing");
                return;
            }
            incoming = accept_stream(conn) => match incoming {
                Ok(incoming) => spawn_stream(incoming, shared, slots, counter),
                Err(_) => return,
            },
            _ = async {
                match stop.as_mut() {
                    Some(stop) => stopped(stop).await,
                    None => std::future::pending().await,
                }
            } => return,
        }
    }
}

fn spawn_stream(
    incoming: underpass_mux::IncomingStream<QuicConnection>,
    shared: &Shared,
    slots: &StreamSlots,
    counter: &AtomicU64,
) {
    let id = counter.fetch_add(1, Ordering::Relaxed);
    let permit = slots.try_acquire();
    let span = info_span!("stream", id, dest = tracing::field::Empty);
    tokio::spawn(stream::handle(incoming, shared.streams.clone(), permit).instrument(span));
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The control stream after registration: heartbeats both ways, drain notices, our own
/// messages. Returns why it ended (which ends the connection).
async fn control_loop(
    mut send: QuicSend,
    mut reader: FrameReader<QuicRecv>,
    heartbeat: Option<Duration>,
    mut commands: mpsc::Receiver<ControlMessage>,
    drains: mpsc::Sender<Drain>,
) -> String {
    let mut ticker = heartbeat.map(|period| {
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });
    let mut seq = 0u64;
    let mut unanswered = 0u32;
    let mut commands_open = true;
    loop {
        let outgoing = tokio::select! {
            message = reader.next::<ControlMessage>() => match message {
                Ok(Some(ControlMessage::Heartbeat(beat))) => ControlMessage::HeartbeatAck(beat),
                Ok(Some(ControlMessage::HeartbeatAck(_))) => {
                    unanswered = 0;
                    continue;
                }
                Ok(Some(ControlMessage::Drain(drain))) => {
                    // Capacity 1 and only the first notice matters.
                    let _ = drains.try_send(drain);
                    continue;
                }
                Ok(Some(other)) => {
                    warn!(message = message_name(&other), "unexpected control message ignored");
                    continue;
                }
                Ok(None) => return "the edge finished the control stream".into(),
                Err(error) => return format!("control stream failed: {error}"),
            },
            () = tick(&mut ticker) => {
                if unanswered >= MAX_UNANSWERED_HEARTBEATS {
                    return format!("{unanswered} heartbeats went unanswered");
                }
                unanswered += 1;
                seq += 1;
                ControlMessage::Heartbeat(Heartbeat { seq })
            }
            command = commands.recv(), if commands_open => match command {
                Some(message) => message,
                None => {
                    commands_open = false;
                    continue;
                }
            },
        };
        if let Err(error) = write_frame(&mut send, &outgoing).await {
            return format!("cannot write on the control stream: {error}");
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

/// The per-connection stream limit, and a way to wait for every stream to end.
#[derive(Clone)]
struct StreamSlots {
    semaphore: Arc<Semaphore>,
    idle: Arc<Notify>,
    max: usize,
}

/// One stream's place; releasing it wakes a drain waiting for the streams to end.
pub(crate) struct StreamPermit {
    permit: Option<OwnedSemaphorePermit>,
    idle: Arc<Notify>,
}

impl StreamSlots {
    fn new(max: usize) -> Self {
        StreamSlots {
            semaphore: Arc::new(Semaphore::new(max)),
            idle: Arc::new(Notify::new()),
            max,
        }
    }

    fn try_acquire(&self) -> Option<StreamPermit> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        Some(StreamPermit {
            permit: Some(permit),
            idle: self.idle.clone(),
        })
    }

    fn active(&self) -> usize {
        self.max - self.semaphore.available_permits()
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.idle.notify_waiters();
    }
}
