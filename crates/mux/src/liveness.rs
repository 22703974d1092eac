//! Dead-peer detection: [`peer_silent`] resolves once nothing at all has arrived from the peer
//! for a while.
//!
//! A live peer is always heard: both ends send keep-alives when otherwise idle (QUIC PING,
//! every `quic.keep_alive_ms`, 1 s by default), and every ack-eliciting packet is answered by
//! an acknowledgement. A peer that was killed, lost power or lost its network sends nothing;
//! meanwhile QUIC's loss detection keeps probing it. So "no datagram for `peer_timeout`"
//! (2.5 s by default) means dead, long before the transport's idle timeout (60 s): the caller
//! closes the connection, which fails its streams at once, and stops routing new ones to it.
//!
//! Silence counts only while this end is sending: a dead peer is probed (keep-alives, loss
//! probes) and never answers. When our own connection has sent nothing either, its driver
//! did not run (its process is overloaded: CPU-bound work on the same runtime), and the
//! datagrams that did arrive are merely waiting to be read; that is not a dead peer.

use std::time::Duration;

use tokio::time::Instant;
use underpass_transport::Connection;

/// The shortest interval between two looks at the counters.
const MIN_POLL: Duration = Duration::from_millis(50);

/// Resolve once no datagram has been received on `conn` for `timeout`; returns how long the
/// peer was silent (at least `timeout`). Never resolves for a connection that keeps no
/// counters ([`Connection::stats`] is `None`). Cancel-safe: drop it to stop watching.
pub async fn peer_silent<C: Connection>(conn: &C, timeout: Duration) -> Duration {
    let Some(first) = conn.stats() else {
        return std::future::pending().await;
    };
    let poll = (timeout / 10).max(MIN_POLL);
    let mut last_count = first.rx_datagrams;
    // Datagrams sent by the time the peer was last heard from.
    let mut sent_then = first.tx_datagrams;
    let mut last_heard = Instant::now();
    let mut last_look = last_heard;
    loop {
        tokio::time::sleep(poll).await;
        let Some(stats) = conn.stats() else {
            return std::future::pending().await;
        };
        let now = Instant::now();
        if stats.rx_datagrams != last_count {
            last_count = stats.rx_datagrams;
            sent_then = stats.tx_datagrams;
            last_heard = now;
        } else if now.duration_since(last_look) > poll * 4 {
            // This process was not running (an overloaded host, a stopped VM): the
            // datagrams that arrived meanwhile may not have been processed yet, so the
            // silence proves nothing. Start counting again.
            last_heard = now;
        } else if now.duration_since(last_heard) >= timeout && stats.tx_datagrams != sent_then {
            // Silent for the whole timeout while this end kept sending (keep-alives, loss
            // probes, data). Had the connection sent nothing, its driver would not have run
            // and the silence would prove nothing.
            return now.duration_since(last_heard);
        }
        last_look = now;
    }
}

#[cfg(test)]
mod tests {
    //! The silence rule on counters set by hand: real QUIC is in `tests/liveness.rs`.

    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use underpass_transport::{ConnectionStats, RecvStream, SendStream, StreamError};

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(200);

    /// A connection whose datagram counters the test moves.
    #[derive(Clone, Default)]
    struct Counters {
        rx: Arc<AtomicU64>,
        tx: Arc<AtomicU64>,
    }

    struct NoSend;
    struct NoRecv;

    impl SendStream for NoSend {
        async fn write_chunk(&mut self, _data: Bytes) -> Result<(), StreamError> {
            Err(StreamError::Closed)
        }
        fn finish(&mut self) -> Result<(), StreamError> {
            Err(StreamError::Closed)
        }
        fn reset(&mut self, _code: u32) {}
        async fn stopped(&mut self) -> Result<Option<u32>, StreamError> {
            Err(StreamError::Closed)
        }
    }

    impl RecvStream for NoRecv {
        fn poll_read_chunk(
            &mut self,
            _cx: &mut Context<'_>,
            _max: usize,
        ) -> Poll<Result<Option<Bytes>, StreamError>> {
            Poll::Ready(Err(StreamError::Closed))
        }
        fn stop(&mut self, _code: u32) {}
    }

    impl Connection for Counters {
        type Send = NoSend;
        type Recv = NoRecv;
        async fn open_bi(&self) -> Result<(NoSend, NoRecv), StreamError> {
            Err(StreamError::Closed)
        }
        async fn accept_bi(&self) -> Result<(NoSend, NoRecv), StreamError> {
            Err(StreamError::Closed)
        }
        fn close(&self, _code: u32, _reason: &[u8]) {}
        async fn closed(&self) -> StreamError {
            std::future::pending().await
        }
        fn export_keying_material(
            &self,
            _output: &mut [u8],
            _label: &[u8],
            _context: &[u8],
        ) -> Result<(), StreamError> {
            Err(StreamError::Closed)
        }
        fn remote_address(&self) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], 1))
        }
        fn stats(&self) -> Option<ConnectionStats> {
            Some(ConnectionStats {
                rtt: Duration::from_millis(1),
                cwnd: 12_000,
                lost_packets: 0,
                sent_packets: self.tx.load(Ordering::Relaxed),
                rx_datagrams: self.rx.load(Ordering::Relaxed),
                tx_datagrams: self.tx.load(Ordering::Relaxed),
            })
        }
    }

    /// Bumps `counter` every 20 ms until dropped.
    fn keep_moving(counter: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_what_we_send_is_silent() {
        let conn = Counters::default();
        let sender = keep_moving(conn.tx.clone());
        let silent = tokio::time::timeout(TIMEOUT * 50, peer_silent(&conn, TIMEOUT))
            .await
            .expect("a peer that answers nothing is noticed");
        assert!(silent >= TIMEOUT, "{silent:?}");
        sender.abort();
    }

    #[tokio::test]
    async fn nothing_sent_and_nothing_received_is_not_silence() {
        // The connection's driver did not run (CPU-bound work on its runtime): it neither
        // read what arrived nor sent anything, which says nothing about the peer.
        let conn = Counters::default();
        let watched = tokio::time::timeout(TIMEOUT * 5, peer_silent(&conn, TIMEOUT)).await;
        assert!(watched.is_err(), "declared dead after {watched:?}");
    }

    #[tokio::test]
    async fn a_peer_that_answers_is_never_silent() {
        let conn = Counters::default();
        let sender = keep_moving(conn.tx.clone());
        let receiver = keep_moving(conn.rx.clone());
        let watched = tokio::time::timeout(TIMEOUT * 5, peer_silent(&conn, TIMEOUT)).await;
        assert!(watched.is_err(), "declared dead after {watched:?}");
        sender.abort();
        receiver.abort();
    }
}
