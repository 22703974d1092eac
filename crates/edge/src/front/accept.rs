//! The binding listeners' accept loop and the client connections it admits, under two limits:
//!
//! - a binding's `max_connections`: at it the listener stops accepting (the kernel queues new
//!   connections) until one of the binding's connections ends;
//! - the edge-wide `limits.max_client_connections`, all bindings together: at it a new
//!   connection takes the place of the oldest idle one, or is refused at once when none is
//!   idle (a `503` with `Proxy-Status: …; error=connection_limit_reached` on a proxy binding, a
//!   plain close on a TCP binding). It never waits in the backlog behind the ones holding it.
//!
//! An idle connection is one of a proxy binding with no request in progress: between two
//! exchanges (keep-alive), or before its first head is whole (silent, or sending its head
//! slowly). A connection with a request, a response body, a `CONNECT` or an upgrade pipe in
//! progress is never idle. Beyond `limits.max_idle_client_connections` idle connections, the
//! oldest idle ones are shed too: each may hold up to 64 KiB of an unfinished head, so this
//! bounds what a flood of slow heads costs. Shedding one that has served a request is hyper's
//! graceful close (what is written is flushed first); one that never completed a request is
//! dropped at once.
//!
//! When `accept` fails for want of descriptors (`EMFILE`, `ENFILE`), the loop sheds idle
//! connections, oldest first, so that the connections waiting in the kernel's backlog (a
//! legitimate client among them) get a descriptor, and backs off (10 ms, doubling to 1 s)
//! while there is nothing left to shed. A run of failed accepts is logged once when it starts
//! and summed up once accepting has worked for a second, never one line per failure; so is a
//! time at the edge-wide limit.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use nix::errno::Errno;
use nix::sys::resource::{getrlimit, Resource};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};
use underpass_proto::ProxyStatus;
use underpass_rt::Shutdown;

use super::response::{error_response, FetchBody};
use crate::config::DEFAULT_MAX_CLIENT_CONNECTIONS;

/// Descriptors the default `limits.max_client_connections` leaves to everything but client
/// connections: connector connections over HTTP/2, the admin listener, the database, logs.
const DESCRIPTOR_RESERVE: u64 = 256;
/// The smallest default `limits.max_client_connections`, however low the descriptor limit.
const MIN_DEFAULT_CLIENT_CONNECTIONS: usize = 16;
/// The first pause after a failed `accept`, doubled after each failure that shed nothing.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two failed `accept`s.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Idle connections shed per `accept` that failed for want of descriptors: a backlog of a few
/// hundred waiting connections drains in a few rounds.
const SHED_BATCH: usize = 64;
/// How long a run of failed accepts, or a time at the edge-wide limit, must have been over
/// before its summary is logged: a flood makes them come and go many times a second.
const QUIET: Duration = Duration::from_secs(1);
/// Bytes a refused connection may have sent that are read (and discarded) before the refusal
/// is written: closing with unread bytes would send a reset, which may destroy the answer.
const REFUSAL_DRAIN: usize = 64 * 1024;

/// The listen backlog of a binding listener (the kernel caps it at `net.core.somaxconn`):
/// connections wait there while the edge is out of descriptors and sheds idle ones, and a
/// full backlog drops new SYNs, which a client retries only a second later.
const LISTEN_BACKLOG: u32 = 4096;

/// A binding's listener on `addr`, with a backlog of [`LISTEN_BACKLOG`].
pub(crate) fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted edge binds while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The default `limits.max_client_connections`: half the descriptors the process may open
/// (its soft `RLIMIT_NOFILE`), less a reserve, since a proxy-binding client holds two (its
/// socket, and a duplicate to reset it with); at least 16, at most
/// [`DEFAULT_MAX_CLIENT_CONNECTIONS`].
pub(crate) fn default_client_limit() -> usize {
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(soft, _hard)| soft);
    let derived =
        usize::try_from(soft.saturating_sub(DESCRIPTOR_RESERVE) / 2).unwrap_or(usize::MAX);
    derived.clamp(
        MIN_DEFAULT_CLIENT_CONNECTIONS,
        DEFAULT_MAX_CLIENT_CONNECTIONS,
    )
}

/// Every client connection the binding listeners hold, all bindings together: the edge-wide
/// limit, and which connections may be shed, oldest first.
#[derive(Debug)]
pub(crate) struct ClientConnections {
    limit: usize,
    max_idle: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The id of the next connection admitted: ids grow with accept order.
    next_id: u64,
    /// Connections admitted and not yet ended (shed ones until they have closed).
    open: usize,
    /// Proxy-binding connections whose HTTP connection runs, by id (oldest first).
    sheddable: BTreeMap<u64, Sheddable>,
    /// Of those, the ones idle and not yet asked to close.
    idle: usize,
    /// The time at the limit, for its log lines.
    at_limit: AtLimit,
}

#[derive(Debug)]
struct Sheddable {
    signal: Arc<ShedSignal>,
    /// Requests in progress (until their response body is written, or their pipe ends).
    busy: usize,
    /// Asked to close; it is not asked twice.
    asked: bool,
}

impl Sheddable {
    /// Whether it counts in [`State::idle`].
    fn is_idle(&self) -> bool {
        self.busy == 0 && !self.asked
    }
}

/// How the accept loop asks a connection to make room, and what the connection tells it.
#[derive(Debug, Default)]
struct ShedSignal {
    notify: Notify,
    /// Set once the connection has received a whole request: from then on it closes
    /// gracefully.
    served: AtomicBool,
}

impl ClientConnections {
    /// At most `limit` client connections at once, of which at most `max_idle` idle ones.
    pub(crate) fn new(limit: usize, max_idle: usize) -> Arc<Self> {
        Arc::new(ClientConnections {
            limit,
            max_idle,
            state: Mutex::new(State::default()),
        })
    }

    /// The edge-wide limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Client connections open now, all bindings together.
    pub(crate) fn open(&self) -> usize {
        self.lock().open
    }

    /// Ask up to `most` idle connections, oldest first, to close. Returns how many were asked.
    pub(crate) fn shed_idle(&self, most: usize) -> usize {
        self.lock().shed_idle(most)
    }

    /// A place for one more connection, holding the binding's `permit`: under the limit, or
    /// in the place of the oldest idle connection (asked to close now). `None` at the limit
    /// with no connection idle.
    fn admit(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Option<Admitted> {
        let mut state = self.lock();
        let shed = state.open >= self.limit;
        if shed && state.shed_idle(1) == 0 {
            state.at_limit.refused(self.limit);
            return None;
        }
        state.at_limit.admitted(shed, self.limit);
        state.open += 1;
        let id = state.next_id;
        state.next_id += 1;
        drop(state);
        let slot = Slot {
            inner: Arc::new(SlotInner {
                id,
                clients: self.clone(),
                signal: Arc::new(ShedSignal::default()),
                _permit: permit,
            }),
            _busy: None,
        };
        Some(Admitted { slot, shed })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent: a poisoned lock is usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn shed_idle(&mut self, most: usize) -> usize {
        let mut asked = 0;
        for candidate in self.sheddable.values_mut() {
            if asked == most {
                break;
            }
            if candidate.is_idle() {
                candidate.asked = true;
                candidate.signal.notify.notify_one();
                asked += 1;
            }
        }
        self.idle -= asked;
        asked
    }

    /// Shed the oldest idle connections beyond `max_idle`.
    fn keep_idle_within(&mut self, max_idle: usize) {
        if self.idle > max_idle {
            let excess = self.idle - max_idle;
            self.shed_idle(excess);
        }
    }

    fn unregister(&mut self, id: u64) {
        if let Some(gone) = self.sheddable.remove(&id) {
            self.idle -= usize::from(gone.is_idle());
        }
    }
}

/// A connection admitted by [`ClientConnections::admit`].
struct Admitted {
    slot: Slot,
    /// Whether an idle connection was asked to close to make room.
    shed: bool,
}

/// One accepted client connection's place under its binding's `max_connections` and the
/// edge-wide `limits.max_client_connections`: released when the last holder (the client
/// task, a request in progress, a response body, a pipe spliced from it) is gone.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    inner: Arc<SlotInner>,
    /// For a request's slot ([`Slot::for_request`]): the connection is busy while it lives.
    _busy: Option<Arc<Busy>>,
}

/// One request of a connection in progress, until its last holder is gone.
#[derive(Debug)]
struct Busy {
    id: u64,
    clients: Arc<ClientConnections>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.clients.lock();
        if let Some(connection) = state.sheddable.get_mut(&self.id) {
            connection.busy -= 1;
            if connection.is_idle() {
                state.idle += 1;
                state.keep_idle_within(self.clients.max_idle);
            }
        }
    }
}

#[derive(Debug)]
struct SlotInner {
    id: u64,
    clients: Arc<ClientConnections>,
    signal: Arc<ShedSignal>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        let mut state = self.clients.lock();
        state.open -= 1;
        state.unregister(self.id);
    }
}

impl Slot {
    /// Let this connection be shed while it is idle: until the returned guard is dropped
    /// (when the HTTP connection ends, or is upgraded into a pipe).
    pub(crate) fn sheddable(&self) -> ShedGuard {
        let clients = &self.inner.clients;
        let mut state = clients.lock();
        state.sheddable.insert(
            self.inner.id,
            Sheddable {
                signal: self.inner.signal.clone(),
                busy: 0,
                asked: false,
            },
        );
        state.idle += 1;
        state.keep_idle_within(clients.max_idle);
        drop(state);
        ShedGuard {
            id: self.inner.id,
            clients: self.inner.clients.clone(),
            signal: self.inner.signal.clone(),
        }
    }

    /// The slot for one request of this connection, held until its response is handed over
    /// (then by the response body, [`Slot::hold`]): the connection is busy meanwhile, and has
    /// served a request from now on.
    pub(crate) fn for_request(&self) -> Slot {
        self.inner.signal.served.store(true, Ordering::Release);
        let mut state = self.inner.clients.lock();
        // Only a sheddable connection's requests are counted: nothing sheds the others.
        let busy = state.sheddable.get_mut(&self.inner.id).map(|connection| {
            let was_idle = connection.is_idle();
            connection.busy += 1;
            was_idle
        });
        if busy == Some(true) {
            state.idle -= 1;
        }
        drop(state);
        Slot {
            inner: self.inner.clone(),
            _busy: busy.map(|_| {
                Arc::new(Busy {
                    id: self.inner.id,
                    clients: self.inner.clients.clone(),
                })
            }),
        }
    }

    /// `body`, holding this slot until it is dropped: a connection writing a response body
    /// is not idle.
    pub(crate) fn hold(self, body: FetchBody) -> FetchBody {
        FetchBody::new(HoldingBody { body, _slot: self })
    }
}

/// While it lives, its connection may be shed when idle ([`Slot::sheddable`]).
#[derive(Debug)]
pub(crate) struct ShedGuard {
    id: u64,
    clients: Arc<ClientConnections>,
    signal: Arc<ShedSignal>,
}

impl ShedGuard {
    /// Resolves once the connection is asked to make room for another. Cancel-safe.
    pub(crate) async fn requested(&self) {
        self.signal.notify.notified().await;
    }

    /// Whether the connection has received a whole request: shed, it then closes gracefully
    /// (hyper flushes what it wrote); otherwise it is dropped at once.
    pub(crate) fn served(&self) -> bool {
        self.signal.served.load(Ordering::Acquire)
    }
}

impl Drop for ShedGuard {
    fn drop(&mut self) {
        self.clients.lock().unregister(self.id);
    }
}

/// A response body that holds its connection's slot ([`Slot::hold`]).
struct HoldingBody {
    body: FetchBody,
    _slot: Slot,
}

impl Body for HoldingBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What a binding's client connections speak, for how a refused one is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientProtocol {
    /// A proxy binding: HTTP/1.1, refused with a `503`.
    Http,
    /// A TCP binding: no protocol, refused with a close.
    Tcp,
}

/// A binding's listener and what its accept loop needs beside it.
pub(crate) struct Listening<'a> {
    pub listener: &'a TcpListener,
    /// The binding's name, for logs.
    pub binding: &'a str,
    /// The binding's `max_connections`.
    pub limit: usize,
    pub protocol: ClientProtocol,
    /// Every binding's client connections.
    pub clients: &'a Arc<ClientConnections>,
    pub shutdown: &'a Shutdown,
}

/// Accept on the listener until stopping begins, handing every admitted connection to `serve`
/// with its slot. At the binding's limit the loop stops accepting until one of its
/// connections ends; at the edge-wide limit a new connection takes an idle one's place or is
/// refused at once; a failed accept sheds idle connections (out of descriptors) and backs off.
pub(crate) async fn accept_loop(
    listening: Listening<'_>,
    mut serve: impl FnMut(TcpStream, SocketAddr, Slot),
) {
    let Listening {
        listener,
        binding,
        limit,
        protocol,
        clients,
        shutdown,
    } = listening;
    let slots = Arc::new(Semaphore::new(limit));
    let mut stopping = std::pin::pin!(shutdown.stopping());
    let mut failures = AcceptFailures::default();
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                warn!(
                    binding,
                    limit, "connection limit reached; accepting again when one ends"
                );
                tokio::select! {
                    () = &mut stopping => return,
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        // The semaphore is never closed.
                        Err(_) => return,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            () = &mut stopping => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                failures.ended(binding);
                accepted
            }
            Err(error) => {
                let pause = failures.failed(binding, &error, clients);
                tokio::select! {
                    () = &mut stopping => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        match clients.admit(permit) {
            Some(Admitted { slot, shed }) => {
                if shed {
                    debug!(binding, %peer, "at the edge-wide limit: an idle connection makes room");
                }
                serve(stream, peer, slot);
            }
            None => {
                debug!(binding, %peer, "client connection refused: at the edge-wide limit");
                refuse(stream, protocol, clients.limit());
            }
        }
    }
}

/// A run of failed `accept`s: logged once when it starts, summed up once [`QUIET`] has
/// passed since the last failure.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// When the run started; `None` between runs.
    since: Option<Instant>,
    last: Option<Instant>,
    failed: u64,
    shed: usize,
    /// The next pause when nothing could be shed.
    pause: Duration,
}

impl AcceptFailures {
    /// Record a failed accept; returns how long to wait before the next one.
    fn failed(
        &mut self,
        binding: &str,
        error: &io::Error,
        clients: &ClientConnections,
    ) -> Duration {
        let out_of_descriptors = error
            .raw_os_error()
            .is_some_and(|code| matches!(Errno::from_raw(code), Errno::EMFILE | Errno::ENFILE));
        if self.since.is_none() {
            self.since = Some(Instant::now());
            self.pause = FIRST_PAUSE;
            if out_of_descriptors {
                warn!(
                    binding,
                    %error,
                    open = clients.open(),
                    "accept failed: out of file descriptors; shedding idle client connections \
                     and retrying (logged once until accepting works again)"
                );
            } else {
                warn!(
                    binding,
                    %error,
                    "accept failed; retrying (logged once until accepting works again)"
                );
            }
        }
        self.failed += 1;
        self.last = Some(Instant::now());
        let shed = if out_of_descriptors {
            clients.shed_idle(SHED_BATCH)
        } else {
            0
        };
        self.shed += shed;
        if shed > 0 {
            // Descriptors come back as soon as the shed connections have closed.
            self.pause = FIRST_PAUSE;
            FIRST_PAUSE
        } else {
            let pause = self.pause;
            self.pause = (pause * 2).min(MAX_PAUSE);
            pause
        }
    }

    /// An accept worked: end the run of failures, if there was one and it has been quiet
    /// for long enough.
    fn ended(&mut self, binding: &str) {
        let (Some(since), Some(last)) = (self.since, self.last) else {
            return;
        };
        if last.elapsed() < QUIET {
            return;
        }
        info!(
            binding,
            failed = self.failed,
            shed = self.shed,
            lasted_ms = last.duration_since(since).as_millis(),
            "accepting again"
        );
        *self = AcceptFailures::default();
    }
}

/// A time at the edge-wide limit: logged once when it starts, summed up when a connection is
/// admitted below the limit again, [`QUIET`] after the last one that was not.
#[derive(Debug, Default)]
struct AtLimit {
    /// When the limit was last met; `None` when below it.
    last: Option<Instant>,
    shed: u64,
    refused: u64,
}

impl AtLimit {
    fn admitted(&mut self, shed: bool, limit: usize) {
        if shed {
            self.met(limit);
            self.shed += 1;
        } else if self.last.is_some_and(|last| last.elapsed() >= QUIET) {
            info!(
                shed = self.shed,
                refused = self.refused,
                "below limits.max_client_connections again"
            );
            *self = AtLimit::default();
        }
    }

    fn refused(&mut self, limit: usize) {
        self.met(limit);
        self.refused += 1;
    }

    fn met(&mut self, limit: usize) {
        if self.last.replace(Instant::now()).is_none() {
            warn!(
                limit,
                "limits.max_client_connections reached: new client connections take the place \
                 of idle ones, or are refused when none is idle"
            );
        }
    }
}

/// Refuse a connection at the edge-wide limit: a proxy client is answered `503` with
/// `Proxy-Status: …; error=connection_limit_reached` and closed, a TCP client just closed.
/// Best effort, without waiting: what the client has sent so far is read first, so that the
/// close does not turn into a reset that destroys the answer.
fn refuse(stream: TcpStream, protocol: ClientProtocol, limit: usize) {
    if protocol == ClientProtocol::Tcp {
        return;
    }
    // Plain non-blocking reads and writes, straight away: the runtime has not seen the socket
    // readable yet, so its own `try_read` would not even try.
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < REFUSAL_DRAIN {
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
    let _ = stream.write(&refusal(limit));
}

/// The `503` a proxy client is refused with at the edge-wide limit.
fn refusal(limit: usize) -> Vec<u8> {
    let status = ProxyStatus::ConnectionLimitReached;
    let details = format!(
        "the edge serves at most {limit} client connections at once \
         (limits.max_client_connections), none of them idle"
    );
    let response = error_response(status, &details);
    let body = format!("{}: {details}\n", status.token());
    let mut head = format!(
        "HTTP/1.1 {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        response.status(),
        body.len()
    );
    for (name, value) in response.headers() {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    head.push_str(&body);
    head.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("a fresh semaphore has a permit")
    }

    fn asked(clients: &ClientConnections, guard: &ShedGuard) -> bool {
        clients
            .lock()
            .sheddable
            .get(&guard.id)
            .is_some_and(|c| c.asked)
    }

    #[test]
    fn at_the_limit_the_oldest_idle_connection_makes_room() {
        let clients = ClientConnections::new(2, 100);
        let first = clients.admit(permit()).expect("under the limit").slot;
        let second = clients.admit(permit()).expect("under the limit").slot;
        let (first_guard, second_guard) = (first.sheddable(), second.sheddable());
        // The first is busy (a request holds its slot, then its response body); the second
        // is idle.
        let request = first.for_request();
        let body = request.clone().hold(crate::front::response::empty());
        drop(request);
        let third = clients.admit(permit()).expect("the idle one makes room");
        assert!(third.shed);
        assert!(asked(&clients, &second_guard) && !asked(&clients, &first_guard));
        assert!(first_guard.served() && !second_guard.served());
        // Nothing idle is left that was not asked already: refused.
        assert!(clients.admit(permit()).is_none());
        drop((second_guard, second));
        assert_eq!(clients.open(), 2);
        // The response written, the first is idle: it makes room for the next one.
        drop(body);
        let fourth = clients
            .admit(permit())
            .expect("the first, idle now, makes room");
        assert!(fourth.shed && asked(&clients, &first_guard));
        drop(third);
        assert_eq!(clients.open(), 2);
    }

    #[test]
    fn a_connection_that_is_not_sheddable_is_never_shed() {
        let clients = ClientConnections::new(1, 100);
        let _tcp = clients.admit(permit()).expect("under the limit").slot;
        assert!(clients.admit(permit()).is_none());
        assert_eq!(clients.shed_idle(10), 0);
    }

    #[test]
    fn beyond_max_idle_the_oldest_idle_connections_are_shed() {
        let clients = ClientConnections::new(100, 2);
        let slots: Vec<Slot> = (0..3)
            .map(|_| clients.admit(permit()).expect("under the limit").slot)
            .collect();
        let first = slots[0].sheddable();
        let busy = slots[0].for_request();
        let guards = [first, slots[1].sheddable(), slots[2].sheddable()];
        // Two idle (1 and 2), one busy (0): within max_idle.
        assert!(guards.iter().all(|guard| !asked(&clients, guard)));
        // The busy one goes idle: three idle, the oldest is shed.
        drop(busy);
        assert!(asked(&clients, &guards[0]));
        assert!(!asked(&clients, &guards[1]) && !asked(&clients, &guards[2]));
        // A new idle connection: the oldest idle one not asked yet is next.
        let newest = clients.admit(permit()).expect("under the limit").slot;
        let _newest_guard = newest.sheddable();
        assert!(asked(&clients, &guards[1]) && !asked(&clients, &guards[2]));
        assert_eq!(clients.lock().idle, 2);
    }

    #[test]
    fn the_refusal_is_a_503_with_its_proxy_status() {
        let text = String::from_utf8(refusal(7)).expect("ASCII");
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(
            text.contains("proxy-status: underpass; error=connection_limit_reached; details="),
            "{text}"
        );
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
    }
}
