//! [`ConnState`]: what a connection's handles, its streams and its driver share: why it
//! ended, the close asked for, the last round-trip time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::wire::CloseRecord;
use crate::StreamError;

/// The state of one HTTP/2 connection.
pub(crate) struct ConnState {
    /// Why the connection ended; `None` while it is up. The first cause wins.
    ended: watch::Sender<Option<String>>,
    /// The close asked for locally, for the driver to carry out.
    close: Mutex<Option<CloseRecord>>,
    /// Wakes the driver when a close is asked for.
    wake: Notify,
    /// Last round-trip time, in nanoseconds (never 0 once set at the handshake).
    rtt_nanos: AtomicU64,
}

impl ConnState {
    pub(crate) fn new(rtt: Duration) -> Self {
        let state = Self {
            ended: watch::Sender::new(None),
            close: Mutex::new(None),
            wake: Notify::new(),
            rtt_nanos: AtomicU64::new(0),
        };
        state.set_rtt(rtt);
        state
    }

    /// The connection's error once it has ended.
    pub(crate) fn error(&self) -> Option<StreamError> {
        self.ended
            .borrow()
            .as_ref()
            .map(|why| StreamError::ConnectionLost(why.clone()))
    }

    /// Record why the connection ended, unless a cause is known already; returns whether
    /// this was the first cause.
    pub(crate) fn fail(&self, why: String) -> bool {
        self.ended.send_if_modified(|ended| {
            if ended.is_some() {
                return false;
            }
            *ended = Some(why);
            true
        })
    }

    /// Ask the driver to close with `record`; local operations fail from now on. Does nothing
    /// on a connection that has ended already.
    pub(crate) fn request_close(&self, record: CloseRecord) {
        let why = record.describe_local();
        if self.fail(why) {
            *self.close.lock().unwrap_or_else(|p| p.into_inner()) = Some(record);
            self.wake.notify_one();
        }
    }

    /// Resolves once a close was asked for, with it. Cancel-safe: a request made while
    /// nobody waits is kept.
    pub(crate) async fn close_requested(&self) -> CloseRecord {
        loop {
            if let Some(record) = self.close.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return record;
            }
            // `notify_one` keeps a permit when nobody waits, so a request between the check
            // and this wait is not missed.
            self.wake.notified().await;
        }
    }

    /// Resolves once the connection has ended, with why.
    pub(crate) async fn ended(&self) -> StreamError {
        let mut ended = self.ended.subscribe();
        let why = match ended.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The sender lives as long as `self`.
            Err(_) => "connection gone".into(),
        };
        StreamError::ConnectionLost(why)
    }

    pub(crate) fn set_rtt(&self, rtt: Duration) {
        let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.rtt_nanos.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn rtt(&self) -> Duration {
        Duration::from_nanos(self.rtt_nanos.load(Ordering::Relaxed))
    }

    /// A stream or connection error from h2 as a [`StreamError`], worded with the
    /// connection's end if it has ended (h2 only knows "broken pipe" by then).
    pub(crate) fn lost(&self, error: &h2::Error) -> StreamError {
        self.error()
            .unwrap_or_else(|| StreamError::ConnectionLost(describe(error)))
    }
}

/// How an h2 connection error reads in [`StreamError::ConnectionLost`].
pub(crate) fn describe(error: &h2::Error) -> String {
    match (error.get_io(), error.reason()) {
        (Some(io), _) => format!("TCP/TLS: {io}"),
        // A GOAWAY from a peer that did not send a close record first (not ours, or broken).
        (None, Some(reason)) if error.is_go_away() && error.is_remote() => {
            format!("closed by peer: {}", u32::from(reason))
        }
        _ => format!("HTTP/2: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_cause_wins_and_a_close_is_kept_for_the_driver() {
        let state = ConnState::new(Duration::ZERO);
        assert!(state.rtt() > Duration::ZERO, "an RTT is never zero");
        assert_eq!(state.error(), None);
        state.request_close(CloseRecord {
            code: 7,
            reason: b"bye".to_vec(),
        });
        // Asked before anyone waited: still there.
        assert_eq!(state.close_requested().await.code, 7);
        assert!(!state.fail("later".into()));
        let expected = StreamError::ConnectionLost("closed locally: bye (code 7)".into());
        assert_eq!(state.error(), Some(expected.clone()));
        assert_eq!(state.ended().await, expected);
        // A close after the end changes nothing and asks nothing of the driver.
        state.request_close(CloseRecord {
            code: 1,
            reason: Vec::new(),
        });
        assert!(state.close.lock().unwrap().is_none());
    }
}
