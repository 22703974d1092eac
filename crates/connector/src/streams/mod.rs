//! The data streams of one connection: each stream the edge opens is one task that reads the
//! stream header, takes a place under the per-connection limit and runs the `connect()`
//! ([`tcp`]) or the `fetch()` ([`http`]) to its end.
//!
//! [`Streams`] owns the tasks of one connection (their [`Shutdown`] and their limit), so the
//! session can wait for them to end when draining and cut them when the grace is over.
//! [`StreamContext`] is what the streams of every connection share: the
//! [`Dialer`](crate::dial::Dialer) and the [`OriginClient`](crate::origin::OriginClient).

mod context;
mod http;
mod tcp;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, info_span, warn};
use underpass_mux::{IncomingStream, MuxError};
use underpass_proto::{ProxyStatus, StreamHeader, RESET_PROTOCOL};
use underpass_rt::{Shutdown, ShutdownReport};
use underpass_transport::{Connection, SendStream};

use self::context::refuse;
pub(crate) use self::context::StreamContext;
use crate::policy::Policies;

/// The streams of one connection.
pub(crate) struct Streams {
    context: Arc<StreamContext>,
    policies: Policies,
    permits: Arc<Semaphore>,
    tasks: Shutdown,
    next_id: u64,
}

/// What one stream task needs.
struct Stream {
    context: Arc<StreamContext>,
    policies: Policies,
    /// `None` when the connection is at its stream limit.
    permit: Option<OwnedSemaphorePermit>,
}

impl Streams {
    /// No stream yet. Stream tasks run in `tasks` (the connection's own), and read service
    /// policies from `policies`.
    pub(crate) fn new(context: Arc<StreamContext>, policies: Policies, tasks: Shutdown) -> Self {
        Streams {
            permits: Arc::new(Semaphore::new(context.max_streams)),
            context,
            policies,
            tasks,
            next_id: 0,
        }
    }

    /// Serve a stream the edge opened, in its own task and span (`stream{id, dest}`).
    pub(crate) fn spawn<C: Connection>(&mut self, incoming: IncomingStream<C>) {
        let id = self.next_id;
        self.next_id += 1;
        let stream = Stream {
            context: self.context.clone(),
            policies: self.policies.clone(),
            permit: self.permits.clone().try_acquire_owned().ok(),
        };
        let span = info_span!("stream", id, dest = tracing::field::Empty);
        let forced = self.tasks.forced();
        self.tasks.spawn_in(span, async move {
            tokio::select! {
                () = stream.serve(incoming) => {}
                // Dropping the stream halves resets them: the edge never takes a cut
                // stream for a complete one.
                () = forced => debug!("stream cut: the grace period is over"),
            }
        });
    }

    /// Streams running now.
    pub(crate) fn open(&self) -> usize {
        self.context.max_streams - self.permits.available_permits()
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
}

impl Stream {
    /// Serve one stream to its end.
    async fn serve<C: Connection>(self, mut incoming: IncomingStream<C>) {
        let Some(_permit) = self.permit else {
            let details = format!(
                "{} streams already open on this connection",
                self.context.max_streams
            );
            info!(%details, "stream refused: limit reached");
            refuse(incoming, ProxyStatus::ConnectionLimitReached, details).await;
            return;
        };
        let header = match incoming.header(self.context.header_timeout).await {
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
        let context = &self.context;
        match header {
            StreamHeader::Tcp(connect) => {
                tcp::serve(incoming, connect, context, &self.policies).await
            }
            // Boxed so that a task spawned per stream stays small (a few KiB, not 12) to
            // allocate and move: the HTTP exchange future is the largest by far.
            StreamHeader::Http(head) => {
                Box::pin(http::serve(incoming, head, context, &self.policies)).await
            }
        }
    }
}
