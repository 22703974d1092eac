//! Keep-alive origin connections, per destination.
//!
//! An HTTP/1.1 connection carries one exchange at a time: it is taken out of the pool for a
//! request and put back once it is ready for the next one (its response body fully read). An
//! HTTP/2 connection is shared: the pool keeps a handle to it and hands out clones. Idle
//! connections expire after the idle timeout; dropping the last handle of a connection closes
//! it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use rustls_pki_types::ServerName;
use tracing::debug;
use underpass_proto::Host;
use underpass_rt::Shutdown;
use underpass_transport::StreamError;

use super::tls::VerifyMode;
use crate::policy::CaBundle;

/// The body of every request sent to an origin.
pub(crate) type OriginBody = UnsyncBoxBody<Bytes, StreamError>;

/// What an attempt to send a request gave.
pub(crate) type SendResult = Result<Response<Incoming>, TrySendError<Request<OriginBody>>>;

/// Shortest interval between two sweeps of expired idle connections.
const MIN_SWEEP: Duration = Duration::from_millis(50);
/// Longest interval between two sweeps.
const MAX_SWEEP: Duration = Duration::from_secs(30);

/// Which connections are interchangeable: same destination, same TLS identity and trust.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    /// Host dialed.
    pub(crate) host: Host,
    /// Port dialed.
    pub(crate) port: u16,
    /// Resolvers used for a host name.
    pub(crate) resolvers: Vec<SocketAddr>,
    /// TLS parameters; `None` for plain HTTP.
    pub(crate) tls: Option<TlsKey>,
}

/// The TLS half of a [`PoolKey`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TlsKey {
    /// SNI name (or IP address verified against the IP SAN).
    pub(crate) server_name: ServerName<'static>,
    /// Verification mode.
    pub(crate) mode: VerifyMode,
    /// Extra trust anchors (compared by digest).
    pub(crate) ca: Option<CaBundle>,
}

/// A handle to send requests on one origin connection.
pub(crate) enum Sender {
    /// An HTTP/1.1 connection: one exchange at a time.
    Http1(http1::SendRequest<OriginBody>),
    /// An HTTP/2 connection: shared, many exchanges at once.
    Http2(http2::SendRequest<OriginBody>),
}

impl Sender {
    /// Whether a request can be sent now.
    pub(crate) fn is_usable(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_ready() && !s.is_closed(),
            Sender::Http2(s) => s.is_ready() && !s.is_closed(),
        }
    }

    /// Wait until the connection can take a request; an error if it closed.
    pub(crate) async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::Http1(s) => s.ready().await,
            Sender::Http2(s) => s.ready().await,
        }
    }

    /// Send a request. The future does not borrow the sender. If the request could not be
    /// written at all, the error gives it back.
    pub(crate) fn send(
        &mut self,
        request: Request<OriginBody>,
    ) -> Pin<Box<dyn Future<Output = SendResult> + Send>> {
        match self {
            Sender::Http1(s) => Box::pin(s.try_send_request(request)),
            Sender::Http2(s) => Box::pin(s.try_send_request(request)),
        }
    }

    /// Whether this is an HTTP/2 connection.
    pub(crate) fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }

    /// Whether the connection is closed.
    fn is_closed(&self) -> bool {
        match self {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    /// Another handle to a shared (HTTP/2) connection; `None` for HTTP/1.1.
    pub(crate) fn share(&self) -> Option<Sender> {
        match self {
            Sender::Http1(_) => None,
            Sender::Http2(s) => Some(Sender::Http2(s.clone())),
        }
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

struct Inner {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    idle_timeout: Duration,
    max_idle: usize,
    sweeping: AtomicBool,
    tasks: Shutdown,
}

/// The pool of idle origin connections. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// A pool keeping up to `max_idle` connections per key, each for up to `idle_timeout`;
    /// its sweeper runs in `tasks` until they stop.
    pub(crate) fn new(idle_timeout: Duration, max_idle: usize, tasks: Shutdown) -> Self {
        Pool {
            inner: Arc::new(Inner {
                idle: Mutex::new(HashMap::new()),
                idle_timeout,
                max_idle,
                sweeping: AtomicBool::new(false),
                tasks,
            }),
        }
    }

    /// A connection for `key` that can take a request now, if there is one. HTTP/1.1
    /// connections are taken out; HTTP/2 ones stay in the pool, shared.
    pub(crate) fn checkout(&self, key: &PoolKey) -> Option<Sender> {
        let now = Instant::now();
        let mut idle = self.inner.lock();
        let list = idle.get_mut(key)?;
        // An HTTP/1.1 connection in the pool that is not ready is closing; a busy HTTP/2 one
        // (at its stream limit) stays for later.
        list.retain(|e| {
            now.duration_since(e.since) < self.inner.idle_timeout
                && !e.sender.is_closed()
                && (e.sender.is_http2() || e.sender.is_usable())
        });
        // The most recently used first: it is the least likely to have been closed by the
        // origin's own idle timeout.
        let found = match list.iter().rposition(|e| e.sender.is_usable()) {
            None => None,
            Some(at) => match list[at].sender.share() {
                Some(shared) => {
                    list[at].since = now;
                    Some(shared)
                }
                None => Some(list.remove(at).sender),
            },
        };
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Offer a connection for reuse. HTTP/1.1: only once it is ready for the next request.
    /// Dropped if the key already has `max_idle` connections.
    pub(crate) fn put(&self, key: PoolKey, sender: Sender) {
        if !sender.is_usable() || self.inner.max_idle == 0 {
            return;
        }
        {
            let mut idle = self.inner.lock();
            let list = idle.entry(key).or_default();
            if list.len() >= self.inner.max_idle {
                debug!("idle origin connections at their cap: closing one");
                return;
            }
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        self.start_sweeper();
    }

    /// Close every idle connection (for example after the route table changed).
    pub(crate) fn clear(&self) {
        let drained: Vec<_> = self.inner.lock().drain().collect();
        drop(drained);
    }

    /// Start the task that closes expired idle connections, once, while the pool lives and
    /// the connector is not stopping.
    fn start_sweeper(&self) {
        if self.inner.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let period = (self.inner.idle_timeout / 2).clamp(MIN_SWEEP, MAX_SWEEP);
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let stopping = self.inner.tasks.stopping();
        self.inner.tasks.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tokio::pin!(stopping);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = &mut stopping => return,
                }
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.sweep();
            }
        });
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<PoolKey, Vec<Idle>>> {
        // Every update leaves the map consistent, so a panicked holder does not matter.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drop expired and closed idle connections.
    fn sweep(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut idle = self.lock();
            idle.retain(|_, list| {
                let (keep, gone): (Vec<_>, Vec<_>) =
                    std::mem::take(list).into_iter().partition(|e| {
                        now.duration_since(e.since) < self.idle_timeout && !e.sender.is_closed()
                    });
                *list = keep;
                expired.extend(gone);
                !list.is_empty()
            });
        }
        if !expired.is_empty() {
            debug!(closed = expired.len(), "idle origin connections expired");
        }
        // Dropped outside the lock: dropping the last handle closes the connection.
        drop(expired);
    }
}
