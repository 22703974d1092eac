//! [`Shutdown`]: one mechanism for spawning, stopping and draining.
//!
//! Stopping is three steps, the same in both programs:
//!
//! 1. **stop**: [`Shutdown::stopping`] resolves; listeners stop accepting, connections send
//!    their drain notices, idle client connections close;
//! 2. **drain**: every task spawned through [`Shutdown::spawn`] may finish on its own, up to the
//!    grace period;
//! 3. **force**: when the grace is over, [`Shutdown::forced`] resolves; tasks still running cut
//!    their streams (a reset, never a clean end) and return. [`Shutdown::shutdown`] waits a
//!    little more for them, then reports what was left.
//!
//! A task that is not spawned through [`Shutdown::spawn`] is not waited for: that is the only
//! rule to follow.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How long tasks get to return after the grace period is over and they were told to stop.
const FORCE_LINGER: Duration = Duration::from_secs(2);

/// The shutdown state and the tracked tasks of one program (or of one part of it: see
/// [`Shutdown::child`]). Cloning gives another handle to the same state.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    force: CancellationToken,
    tasks: TaskTracker,
}

/// What [`Shutdown::shutdown`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Tasks still running when the grace period ended (they were told to stop).
    pub forced: usize,
    /// Tasks still running even after that (abandoned; they end with the runtime).
    pub abandoned: usize,
}

impl Shutdown {
    /// A new shutdown state with no tasks.
    pub fn new() -> Self {
        Self::default()
    }

    /// A part with its own task set that stops and is forced together with `self` (and can be
    /// stopped on its own). Its tasks are not counted by `self`: wait for them with the child's
    /// own [`shutdown`](Shutdown::shutdown), from a task of `self`.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            stop: self.stop.child_token(),
            force: self.force.child_token(),
            tasks: TaskTracker::new(),
        }
    }

    /// A part that can be stopped on its own (and stops and is forced with `self`) whose tasks
    /// count as `self`'s: `self`'s [`idle`](Shutdown::idle) and
    /// [`shutdown`](Shutdown::shutdown) wait for them too. For one connection among a slot's:
    /// stopping the part drains that connection alone.
    pub fn linked(&self) -> Shutdown {
        Shutdown {
            stop: self.stop.child_token(),
            force: self.force.child_token(),
            tasks: self.tasks.clone(),
        }
    }

    /// Spawn `task` on the current runtime, tracked, in the caller's tracing span.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task.in_current_span())
    }

    /// Spawn `task` on the current runtime, tracked, in `span` (only: the caller's span is not
    /// entered as well, so each poll enters one span).
    pub fn spawn_in<F>(&self, span: tracing::Span, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task.instrument(span))
    }

    /// Wrap `task` so that it is tracked while it runs (for futures spawned elsewhere, e.g.
    /// by a library that takes a future).
    pub fn track<F: Future>(&self, task: F) -> impl Future<Output = F::Output> {
        self.tasks.track_future(task)
    }

    /// Resolves once stopping has begun (step 1). Cancel-safe; owns what it needs, so it can
    /// be stored or moved into a task.
    pub fn stopping(&self) -> WaitForCancellationFutureOwned {
        self.stop.clone().cancelled_owned()
    }

    /// Whether stopping has begun.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the grace period is over (step 3): cut what is still open.
    pub fn forced(&self) -> WaitForCancellationFutureOwned {
        self.force.clone().cancelled_owned()
    }

    /// Whether the grace period is over.
    pub fn is_forced(&self) -> bool {
        self.force.is_cancelled()
    }

    /// Begin stopping without waiting (step 1 only).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Tasks running now.
    pub fn active_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Resolves once no tracked task is running and stopping has begun (so no new ones are
    /// expected).
    pub async fn idle(&self) {
        self.stopping().await;
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Stop, let tracked tasks finish within `grace`, then force the rest and wait for them a
    /// little longer. Returns only once every task has ended, unless one ignores
    /// [`forced`](Shutdown::forced) (then it is reported as abandoned).
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return ShutdownReport {
                forced: 0,
                abandoned: 0,
            };
        }
        let forced = self.tasks.len();
        tracing::warn!(
            tasks = forced,
            ?grace,
            "grace period over; cutting what is still open"
        );
        self.force.cancel();
        let abandoned = match tokio::time::timeout(FORCE_LINGER, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        };
        if abandoned > 0 {
            tracing::error!(tasks = abandoned, "tasks did not stop when told to");
        }
        ShutdownReport { forced, abandoned }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_tasks_that_finish_within_the_grace() {
        let shutdown = Shutdown::new();
        let done = Arc::new(AtomicBool::new(false));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        shutdown.spawn({
            let (shutdown, done) = (shutdown.clone(), done.clone());
            async move {
                shutdown.stopping().await;
                let _ = released.await;
                done.store(true, Ordering::SeqCst);
            }
        });
        let stopper = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.shutdown(Duration::from_secs(600)).await }
        });
        // The task sees stopping begin, then is released; shutdown returns only after it.
        let _ = release.send(());
        let report = stopper.await.expect("no panic");
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(
            report,
            ShutdownReport {
                forced: 0,
                abandoned: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_past_the_grace_are_forced() {
        let shutdown = Shutdown::new();
        let child = shutdown.child();
        shutdown.spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.forced().await }
        });
        let report = shutdown.shutdown(Duration::from_secs(1)).await;
        assert_eq!(
            report,
            ShutdownReport {
                forced: 1,
                abandoned: 0
            }
        );
        assert!(child.is_stopping() && child.is_forced());
        assert_eq!(shutdown.active_tasks(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_force_is_reported() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending::<()>());
        let report = shutdown.shutdown(Duration::from_secs(1)).await;
        assert_eq!(
            report,
            ShutdownReport {
                forced: 1,
                abandoned: 1
            }
        );
    }
}
