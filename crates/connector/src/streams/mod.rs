//! The data streams of one connection: each stream the edge opens is one task that reads the
//! stream header, takes a place under the per-connection limit and runs the `connect()`
//! ([`tcp`]) or the `fetch()` ([`http`]) to its end.
//!
//! [`Streams`] owns the tasks of one connection (their [`Shutdown`] and their count), so the
//! session can wait for them to end when draining and cut them when the grace is over or the
//! connection is lost. [`StreamContext`] is what the streams of every connection share: the
//! [`StreamSettings`] a live reload replaces (the [`Dialer`](crate::dial::Dialer), limits),
//! the [`OriginClient`](crate::origin::OriginClient) and the metrics.
//!
//! Every stream ends in one place (`finish`): it is counted there and, if it failed,
//! logged there, once, at `info`, in its `stream{id, kind, request_id, dest}` span.

mod context;
mod http;
mod tcp;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, info_span, warn, Span};
use underpass_mux::{IncomingStream, MuxError};
use underpass_proto::{Origin, ProxyErrorReply, ProxyStatus, StreamHeader, RESET_PROTOCOL};
use underpass_rt::{Shutdown, ShutdownReport};
use underpass_transport::{Connection, SendStream};

use self::context::refuse;
pub(crate) use self::context::{StreamContext, StreamSettings};
use crate::metrics::{ActiveStream, StreamKind};
use crate::outcome::{Ending, StreamEnd};
use crate::policy::Policies;

/// When the connection is lost, how long its streams get to notice on their own (their pipes
/// then close the origin sockets with a reset) before they are cut.
const LOST_GRACE: Duration = Duration::from_millis(250);

/// The streams of one connection.
pub(crate) struct Streams {
    context: Arc<StreamContext>,
    policies: Policies,
    open: Arc<AtomicUsize>,
    tasks: Shutdown,
    next_id: u64,
}

/// What one stream task needs.
struct Stream {
    context: Arc<StreamContext>,
    /// The settings when the stream started; it keeps them to its end.
    settings: Arc<StreamSettings>,
    policies: Policies,
    open: Arc<AtomicUsize>,
}

/// A place under the per-connection limit, given back on drop.
struct OpenSlot(Arc<AtomicUsize>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Streams {
    /// No stream yet. Stream tasks run in `tasks` (the connection's own), and read service
    /// policies from `policies`.
    pub(crate) fn new(context: Arc<StreamContext>, policies: Policies, tasks: Shutdown) -> Self {
        Streams {
            context,
            policies,
            open: Arc::new(AtomicUsize::new(0)),
            tasks,
            next_id: 0,
        }
    }

    /// Serve a stream the edge opened, in its own task and span
    /// (`stream{id, kind, request_id, dest}`).
    pub(crate) fn spawn<C: Connection>(&mut self, incoming: IncomingStream<C>) {
        let id = self.next_id;
        self.next_id += 1;
        let stream = Stream {
            settings: self.context.settings(),
            context: self.context.clone(),
            policies: self.policies.clone(),
            open: self.open.clone(),
        };
        let span = info_span!(
            "stream",
            id,
            kind = tracing::field::Empty,
            request_id = tracing::field::Empty,
            dest = tracing::field::Empty,
        );
        let forced = self.tasks.forced();
        self.tasks.spawn_in(span, async move {
            tokio::select! {
                () = stream.serve(incoming) => {}
                // Dropping the stream halves resets them: the edge never takes a cut
                // stream for a complete one.
                () = forced => debug!("stream cut"),
            }
        });
    }

    /// Streams running now (past their header).
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Resolves once no stream of this connection is running.
    pub(crate) async fn idle(&self) {
        self.tasks.stop();
        self.tasks.idle().await;
    }

    /// Cut every stream still running and wait for their tasks to end.
    pub(crate) async fn cut(self) -> ShutdownReport {
        self.tasks.shutdown(Duration::ZERO).await
    }

    /// The connection is gone: its streams fail on their own (a pipe then resets its origin
    /// socket); whatever has not ended within [`LOST_GRACE`] is cut. Either way every origin
    /// socket of the connection is closed when this returns.
    pub(crate) async fn lost(self) -> ShutdownReport {
        self.tasks.shutdown(LOST_GRACE).await
    }
}

impl Stream {
    /// Serve one stream to its end.
    async fn serve<C: Connection>(self, mut incoming: IncomingStream<C>) {
        let settings = self.settings.clone();
        let header = match incoming.header(settings.header_timeout).await {
            Ok(header) => header,
            Err(MuxError::Stream(error)) => {
                debug!(%error, "stream ended before its header");
                return;
            }
            Err(error) => {
                // A bad, oversized or missing header: the edge broke the protocol on this
                // stream.
                warn!(%error, "bad stream header; resetting the stream");
                incoming.send.reset(RESET_PROTOCOL);
                incoming.reader.stop(RESET_PROTOCOL);
                return;
            }
        };
        let span = Span::current();
        let (kind, request_id) = match &header {
            StreamHeader::Http(head) => (StreamKind::Fetch, head.request_id),
            StreamHeader::Tcp(connect) => match &connect.origin {
                Origin::Dial(_) => (StreamKind::Connect, connect.request_id),
                Origin::Service(_) => (StreamKind::Tcp, connect.request_id),
            },
        };
        span.record("kind", kind.as_str());
        span.record("request_id", tracing::field::display(request_id));
        // A service's destination is known once its policy is (`tcp` records it then).
        match &header {
            StreamHeader::Http(head) => {
                span.record("dest", tracing::field::display(&head.authority));
            }
            StreamHeader::Tcp(connect) => {
                if let Origin::Dial(target) = &connect.origin {
                    span.record("dest", tracing::field::display(target));
                }
            }
        }
        let active = self.context.metrics().stream_started(kind);
        let previous = self.open.fetch_add(1, Ordering::Relaxed);
        let _slot = OpenSlot(self.open.clone());
        let end = if previous >= settings.max_streams {
            let details = format!(
                "{} streams already open on this connection",
                settings.max_streams
            );
            let refusal = ProxyErrorReply {
                status: ProxyStatus::ConnectionLimitReached,
                details,
            };
            refuse(incoming, refusal).await
        } else {
            match header {
                StreamHeader::Tcp(connect) => {
                    tcp::serve(incoming, connect, &settings, &self.policies).await
                }
                // Boxed so that a task spawned per stream stays small (a few KiB, not 12) to
                // allocate and move: the HTTP exchange future is the largest by far.
                StreamHeader::Http(head) => {
                    let exchange =
                        http::serve(incoming, head, &self.context, &settings, &self.policies);
                    Box::pin(exchange).await
                }
            }
        };
        finish(&active, end);
    }
}

/// Count a stream's end, and log it if it failed: the one line for a failed stream.
fn finish(active: &ActiveStream, end: StreamEnd) {
    let metrics = active.metrics();
    let kind = active.kind();
    metrics.stream_bytes(kind, end.to_origin, end.from_origin);
    let (to_origin, from_origin) = (end.to_origin, end.from_origin);
    match end.ending {
        Ending::Done => debug!(to_origin, from_origin, "stream done"),
        Ending::Refused(ProxyErrorReply { status, details }) => {
            metrics.stream_error(kind, status);
            info!(proxy_status = %status, %details, "stream refused");
        }
        Ending::Cancelled(reason) => {
            debug!(%reason, to_origin, from_origin, "stream cancelled by the edge");
        }
        Ending::Aborted(reason) => {
            info!(%reason, to_origin, from_origin, "stream failed after its reply; reset");
        }
    }
}
