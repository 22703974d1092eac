//! The task behind each HTTP/2 connection: it drives h2, routes the requests the connector
//! receives, carries out closes on the session stream, and sends the keep-alive PINGs that
//! find a dead peer. And the edge's task that keeps an offer to open a stream outstanding.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{Ping, PingPong, Reason};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::io::SharedIo;
use super::state::{describe, ConnState};
use super::wire::{self, CloseRecord, RequestKind, MAX_CLOSE_RECORD};
use super::H2Config;

/// The h2 halves of a stream before they are paired.
pub(crate) struct RawStream {
    pub(crate) send: h2::SendStream<Bytes>,
    pub(crate) recv: h2::RecvStream,
}

/// An offer to open a stream, as the connector received it: the request's body and the
/// handle to answer it with.
pub(crate) struct Offer {
    pub(crate) body: h2::RecvStream,
    pub(crate) respond: h2::server::SendResponse<Bytes>,
}

/// How long a closing connection waits for the peer to confirm it saw the close before the
/// socket is dropped anyway.
const CLOSE_LINGER: Duration = Duration::from_secs(3);
/// Shortest interval between two looks at the keep-alive state.
const MIN_TICK: Duration = Duration::from_millis(10);

/// The session stream (see the module docs of [`super`]).
pub(crate) struct Session {
    pub(crate) send: h2::SendStream<Bytes>,
    pub(crate) recv: h2::RecvStream,
}

/// The h2 connection, by role.
pub(crate) enum Wire {
    /// The edge's: a future that drives everything.
    Client(h2::client::Connection<SharedIo, Bytes>),
    /// The connector's: driven by accepting requests, which are routed to the queues.
    Server {
        conn: h2::server::Connection<SharedIo, Bytes>,
        streams: mpsc::UnboundedSender<RawStream>,
        offers: mpsc::UnboundedSender<Offer>,
    },
}

impl Wire {
    fn ping_pong(&mut self) -> Option<PingPong> {
        match self {
            Wire::Client(conn) => conn.ping_pong(),
            Wire::Server { conn, .. } => conn.ping_pong(),
        }
    }

    /// Drive the connection until something happened: `Ok` to go on, `Err(why)` once the
    /// connection has ended. Cancel-safe.
    async fn step(&mut self) -> Result<(), String> {
        match self {
            Wire::Client(conn) => match conn.await {
                Ok(()) => Err("HTTP/2 connection ended".into()),
                Err(error) => Err(describe(&error)),
            },
            Wire::Server {
                conn,
                streams,
                offers,
            } => match conn.accept().await {
                Some(Ok((request, respond))) => {
                    route(request, respond, streams, offers);
                    Ok(())
                }
                Some(Err(error)) => Err(describe(&error)),
                None => Err("HTTP/2 connection ended".into()),
            },
        }
    }
}

/// Hand a request the connector received to the queue for its kind.
fn route(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    streams: &mpsc::UnboundedSender<RawStream>,
    offers: &mpsc::UnboundedSender<Offer>,
) {
    match RequestKind::of(&request) {
        Some(RequestKind::Stream) => match respond.send_response(wire::accepted(), false) {
            // If the connection's handles are gone, the stream is dropped, which resets it.
            Ok(send) => drop(streams.send(RawStream {
                send,
                recv: request.into_body(),
            })),
            Err(error) => tracing::debug!(%error, "stream reset before it was answered"),
        },
        Some(RequestKind::Reverse) => drop(offers.send(Offer {
            body: request.into_body(),
            respond,
        })),
        // A second session, or not ours at all.
        Some(RequestKind::Session) | None => {
            tracing::debug!(method = %request.method(), uri = %request.uri(), "unexpected request");
            respond.send_reset(Reason::PROTOCOL_ERROR);
        }
    }
}

/// How the running phase of a connection ended.
enum Ending {
    /// Closed here: send the close record, then wait for the peer's answer.
    Close(CloseRecord),
    /// Closed by the peer: answer, then wait for it to drop the connection.
    Answer,
    /// The connection is gone (or the peer dead): nothing more to say.
    Now,
}

/// The connection's task.
pub(crate) struct Driver {
    state: Arc<ConnState>,
    io: SharedIo,
    session: Session,
    wire: Wire,
    keep_alive: Option<(Duration, Duration)>,
    /// Cancelled when the listener or dialer closes: close with `shutdown_reason`.
    shutdown: CancellationToken,
    shutdown_reason: &'static [u8],
}

impl Driver {
    pub(crate) fn new(
        state: Arc<ConnState>,
        io: &SharedIo,
        session: Session,
        wire: Wire,
        config: &H2Config,
        shutdown: CancellationToken,
        shutdown_reason: &'static [u8],
    ) -> Self {
        Self {
            state,
            io: io.clone(),
            session,
            wire,
            keep_alive: config.keep_alive(),
            shutdown,
            shutdown_reason,
        }
    }

    /// Run the connection until it has ended and, if it was closed, the close has been
    /// seen by the peer (or [`CLOSE_LINGER`] ran out). The TCP connection ends with it, even
    /// while handles to the connection remain.
    pub(crate) async fn run(mut self) {
        self.run_to_end().await;
        self.state.fail("HTTP/2 connection ended".into());
        self.io.shut_down();
    }

    async fn run_to_end(&mut self) {
        let ending = self.serve().await;
        let wait_for_answer = match ending {
            Ending::Close(record) => {
                // Without capacity reserved the record is queued, whatever the window.
                if self.session.send.send_data(record.encode(), true).is_err() {
                    return;
                }
                true
            }
            Ending::Answer => {
                if self.session.send.send_data(Bytes::new(), true).is_err() {
                    return;
                }
                false
            }
            Ending::Now => return,
        };
        let Self { session, wire, .. } = self;
        let linger = async {
            loop {
                tokio::select! {
                    chunk = poll_fn(|cx| session.recv.poll_data(cx)), if wait_for_answer => {
                        match chunk {
                            // What the peer still says no longer matters; its window does.
                            Some(Ok(data)) => {
                                let _ = session.recv.flow_control().release_capacity(data.len());
                            }
                            // The peer's END_STREAM (or its end): it has seen the close.
                            _ => return,
                        }
                    }
                    step = wire.step() => if step.is_err() {
                        return;
                    },
                }
            }
        };
        if tokio::time::timeout(CLOSE_LINGER, linger).await.is_err() {
            tracing::debug!("the peer did not confirm the close in time");
        }
    }

    /// The running phase: until a close (either side's) or the connection's end.
    async fn serve(&mut self) -> Ending {
        let Self {
            state,
            io,
            session,
            wire,
            keep_alive,
            shutdown,
            shutdown_reason,
        } = self;
        let mut ping = wire.ping_pong();
        let now = Instant::now();
        let mut liveness = keep_alive.map(|(interval, timeout)| {
            Liveness::new(interval, timeout, now, io.counters().reads())
        });
        let mut ticker = tokio::time::interval(
            liveness
                .as_ref()
                .map_or(Duration::from_secs(3600), Liveness::period),
        );
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut record = BytesMut::new();
        loop {
            let pinging = liveness.as_ref().is_some_and(Liveness::awaiting_pong);
            tokio::select! {
                biased;
                close = state.close_requested() => return Ending::Close(close),
                () = shutdown.cancelled() => {
                    let close = CloseRecord { code: 0, reason: shutdown_reason.to_vec() };
                    // Operations fail from now on, with this reason.
                    state.fail(close.describe_local());
                    return Ending::Close(close);
                }
                chunk = poll_fn(|cx| session.recv.poll_data(cx)) => match chunk {
                    Some(Ok(data)) => {
                        let _ = session.recv.flow_control().release_capacity(data.len());
                        if record.len() + data.len() > MAX_CLOSE_RECORD {
                            state.fail("the peer sent an oversized close record".into());
                            return Ending::Now;
                        }
                        record.extend_from_slice(&data);
                    }
                    None => {
                        let why = CloseRecord::decode(&record).map_or_else(
                            || "closed by peer: malformed close record".into(),
                            |close| close.describe_remote(),
                        );
                        tracing::debug!(why, "closed by the peer");
                        state.fail(why);
                        return Ending::Answer;
                    }
                    Some(Err(error)) => {
                        state.fail(describe(&error));
                        return Ending::Now;
                    }
                },
                pong = poll_fn(|cx| match ping.as_mut() {
                    Some(ping) => ping.poll_pong(cx),
                    None => std::task::Poll::Pending,
                }), if pinging => match pong {
                    Ok(_) => {
                        if let Some(rtt) = liveness.as_mut().and_then(|l| l.pong(Instant::now())) {
                            state.set_rtt(rtt);
                        }
                    }
                    Err(error) => {
                        state.fail(describe(&error));
                        return Ending::Now;
                    }
                },
                _ = ticker.tick(), if liveness.is_some() => {
                    let Some(live) = liveness.as_mut() else { continue };
                    match live.look(Instant::now(), io.counters().reads()) {
                        Verdict::Quiet => {}
                        Verdict::Ping => {
                            if let Some(ping) = ping.as_mut() {
                                // Fails only while a PING is unanswered, which `live` rules out.
                                let _ = ping.send_ping(Ping::opaque());
                            }
                        }
                        Verdict::Probe => {
                            // Fails only once the session stream is over, when the driver
                            // stops anyway.
                            let _ = session.send.send_data(Bytes::new(), false);
                        }
                        Verdict::Dead(silent) => {
                            tracing::info!(?silent, "HTTP/2 peer silent; closing");
                            state.fail(format!(
                                "timed out: nothing received for {} ms (PING unanswered)",
                                silent.as_millis()
                            ));
                            return Ending::Now;
                        }
                    }
                }
                step = wire.step() => if let Err(why) = step {
                    state.fail(why);
                    return Ending::Now;
                },
            }
        }
    }
}

/// The edge's offers to the connector to open a stream: one request outstanding at a time,
/// answered when the connector opens one, then queued for `accept_bi`. Stops offering while
/// the queue is full, and ends with the connection.
pub(crate) async fn offer_reverse(
    requests: h2::client::SendRequest<Bytes>,
    queue: mpsc::Sender<RawStream>,
    state: Arc<ConnState>,
) {
    let offer = async {
        let mut requests = requests;
        loop {
            let Ok(permit) = queue.reserve().await else {
                return;
            };
            requests = match requests.ready().await {
                Ok(requests) => requests,
                Err(_) => return,
            };
            let Ok((response, send)) = requests.send_request(RequestKind::Reverse.request(), false)
            else {
                return;
            };
            match response.await {
                Ok(response) if response.status() == http::StatusCode::OK => {
                    permit.send(RawStream {
                        send,
                        recv: response.into_body(),
                    });
                }
                Ok(response) => {
                    tracing::warn!(status = %response.status(), "the connector refused to open streams");
                    return;
                }
                // The connection ended (its error is reported by the driver).
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        _ = state.ended() => {}
        () = offer => {}
    }
}

/// What [`Liveness::look`] says to do.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Quiet,
    /// Send a PING.
    Ping,
    /// A PING is still unanswered: send an empty DATA frame (which the peer's h2 ignores) so
    /// that probing goes on and this end's writes keep counting, as
    /// `underpass_mux::liveness::peer_silent` expects of a live end probing a dead peer.
    Probe,
    /// Nothing arrived for this long: the peer is dead.
    Dead(Duration),
}

/// Dead-peer detection, without I/O: a PING every `interval` makes a live peer answer, and a
/// peer from which nothing at all (no answer, no byte) arrived for `timeout` is dead. Bytes
/// count as well as answers, because a PING's answer may queue behind bulk data.
#[derive(Debug)]
struct Liveness {
    interval: Duration,
    timeout: Duration,
    next_ping: Instant,
    /// When the unanswered PING was sent.
    ping_sent: Option<Instant>,
    /// Socket reads that moved bytes, at the last look.
    reads: u64,
    heard: Instant,
    looked: Instant,
}

impl Liveness {
    fn new(interval: Duration, timeout: Duration, now: Instant, reads: u64) -> Self {
        Self {
            interval,
            timeout,
            next_ping: now,
            ping_sent: None,
            reads,
            heard: now,
            looked: now,
        }
    }

    /// How often to [`look`](Self::look).
    fn period(&self) -> Duration {
        self.interval.min(self.timeout / 4).max(MIN_TICK)
    }

    fn awaiting_pong(&self) -> bool {
        self.ping_sent.is_some()
    }

    fn look(&mut self, now: Instant, reads: u64) -> Verdict {
        if now.saturating_duration_since(self.looked) > self.period() * 4 {
            // This task did not run for a while (an overloaded process, a stopped VM): what
            // arrived meanwhile may not be read yet, so the silence proves nothing.
            self.heard = now;
        }
        self.looked = now;
        if reads != self.reads {
            self.reads = reads;
            self.heard = now;
        }
        let silent = now.saturating_duration_since(self.heard);
        if silent >= self.timeout {
            return Verdict::Dead(silent);
        }
        if now < self.next_ping {
            return Verdict::Quiet;
        }
        self.next_ping = now + self.interval;
        if self.ping_sent.is_some() {
            // h2 allows one PING in flight.
            return Verdict::Probe;
        }
        self.ping_sent = Some(now);
        Verdict::Ping
    }

    /// The PING was answered; returns its round trip.
    fn pong(&mut self, now: Instant) -> Option<Duration> {
        self.heard = now;
        self.ping_sent
            .take()
            .map(|sent| now.saturating_duration_since(sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn liveness(start: Instant) -> Liveness {
        Liveness::new(100 * MS, 400 * MS, start, 0)
    }

    #[test]
    fn pings_every_interval_and_measures_the_round_trip() {
        let t0 = Instant::now();
        let mut live = liveness(t0);
        assert_eq!(live.period(), 100 * MS);
        assert_eq!(live.look(t0, 0), Verdict::Ping);
        // One PING at a time.
        assert_eq!(live.look(t0 + 50 * MS, 0), Verdict::Quiet);
        assert_eq!(live.pong(t0 + 60 * MS), Some(60 * MS));
        assert_eq!(live.look(t0 + 90 * MS, 1), Verdict::Quiet);
        assert_eq!(live.look(t0 + 100 * MS, 1), Verdict::Ping);
    }

    #[test]
    fn a_peer_that_sends_nothing_is_dead_after_the_timeout() {
        let t0 = Instant::now();
        let mut live = liveness(t0);
        assert_eq!(live.look(t0, 0), Verdict::Ping);
        // Still unanswered: probing goes on, one frame per interval.
        assert_eq!(live.look(t0 + 50 * MS, 0), Verdict::Quiet);
        for step in 1..4 {
            assert_eq!(live.look(t0 + step * 100 * MS, 0), Verdict::Probe);
        }
        assert_eq!(live.look(t0 + 400 * MS, 0), Verdict::Dead(400 * MS));
    }

    #[test]
    fn bytes_without_an_answer_keep_the_peer_alive() {
        let t0 = Instant::now();
        let mut live = liveness(t0);
        assert_eq!(live.look(t0, 0), Verdict::Ping);
        // The PING's answer is stuck behind bulk data, which keeps arriving.
        for step in 1..20u32 {
            assert_eq!(
                live.look(t0 + step * 100 * MS, u64::from(step)),
                Verdict::Probe
            );
        }
    }

    #[test]
    fn a_task_that_did_not_run_does_not_declare_the_peer_dead() {
        let t0 = Instant::now();
        let mut live = liveness(t0);
        assert_eq!(live.look(t0, 0), Verdict::Ping);
        // Two seconds without a look: the count starts again.
        assert_eq!(live.look(t0 + 2000 * MS, 0), Verdict::Probe);
        assert_eq!(live.look(t0 + 2300 * MS, 0), Verdict::Probe);
        assert_eq!(live.look(t0 + 2400 * MS, 0), Verdict::Dead(400 * MS));
    }
}
