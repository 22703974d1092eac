//! Dead-peer detection: [`peer_silent`] resolves once nothing at all has arrived from the peer
//! for a while.
//!
//! A live peer is always heard: both ends send keep-alives when otherwise idle (QUIC PING,
//! every `quic.keep_alive_ms`, 1 s by default), and every ack-eliciting packet is answered by
//! an acknowledgement. A peer that was killed, lost power or lost its network sends nothing;
//! meanwhile QUIC's loss detection keeps probing it. So "no datagram for `peer_timeout`"
//! (2.5 s by default) means dead, long before the transport's idle timeout (60 s): the caller
//! closes the connection, which fails its streams at once, and stops routing new ones to it.

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
            last_heard = now;
        } else if now.duration_since(last_look) > poll * 4 {
            // This process was not running (an overloaded host, a stopped VM): the
            // datagrams that arrived meanwhile may not have been processed yet, so the
            // silence proves nothing. Start counting again.
            last_heard = now;
        } else if now.duration_since(last_heard) >= timeout {
            return now.duration_since(last_heard);
        }
        last_look = now;
    }
}
