//! QUIC transport on quinn: the edge's [`QuicListener`], the connector's [`QuicDialer`], and
//! [`QuicConnection`] implementing [`crate::Connection`]; [`QuicSettings`] tunes both ends and
//! [`QuicConfig`] is the `[quic]` section of both programs' configuration files.
//!
//! Both ends use one UDP socket each, created with socket2 so its kernel buffers can be raised
//! (see [`SocketBuffers`]); segmentation offload (GSO) stays on and congestion control stays
//! quinn's default (Cubic), which measured best on this kind of machine.

use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

mod config;
mod connection;
mod dialer;
mod listener;
mod socket;

pub use crate::TransportError;
pub use config::QuicConfig;
pub use connection::{QuicConnection, QuicRecv, QuicSend, RESET_ON_DROP};
pub use dialer::QuicDialer;
pub use listener::QuicListener;
pub use socket::SocketBuffers;

/// The ALPN protocol spoken between connector and edge.
pub const ALPN: &[u8] = b"underpass/1";

/// QUIC tuning shared by both ends.
#[derive(Debug, Clone)]
pub struct QuicSettings {
    /// Interval between keep-alive packets when the connection is otherwise idle; zero
    /// disables keep-alives. Must be below `idle_timeout` (and `peer_timeout`). The default,
    /// 1 s, is what lets a silent peer be noticed within [`peer_timeout`](Self::peer_timeout);
    /// an idle connection then costs about two 50-byte packets a second each way.
    pub keep_alive: Duration,
    /// A peer from which nothing (not even a keep-alive or an acknowledgement) has arrived for
    /// this long is dead: the connection is closed and its streams fail, long before
    /// `idle_timeout`. Read by `underpass_mux::peer_silent`; zero, or keep-alives off,
    /// disables it.
    pub peer_timeout: Duration,
    /// A connection silent for this long is closed. Generous so that a lossy network does not
    /// churn connections. Also bounds how long a handshake may take.
    pub idle_timeout: Duration,
    /// Per-stream receive window (bytes the peer may send ahead of our reads on one stream).
    pub stream_receive_window: u64,
    /// Connection-wide receive window.
    pub connection_receive_window: u64,
    /// Bytes we may have in flight unacknowledged, across all streams. This is also how much
    /// the sender buffers ahead of the network: 8 MiB (the default) keeps that buffer in cache
    /// and the process small (measured by `scripts/bench`: 2.4 instead of 2.6 CPU-s/GiB, peak
    /// RSS 21 instead of 85 MB) while still filling about 1.3 Gbit/s at 50 ms round trip.
    pub send_window: u64,
    /// Bidirectional streams the peer may have open at once.
    pub max_concurrent_streams: u64,
    /// Requested SO_RCVBUF/SO_SNDBUF for the UDP socket, in bytes.
    pub socket_buffer: usize,
    /// Handshakes a [`QuicListener`] runs at once (a completed one counts until
    /// [`accept`](QuicListener::accept) has it queued); beyond this, new connection attempts
    /// are refused. Bounds the memory and CPU that clients which never finish their handshake
    /// can take. Unused by the dialer.
    pub max_handshakes: usize,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(1),
            peer_timeout: Duration::from_millis(2500),
            idle_timeout: Duration::from_secs(60),
            stream_receive_window: 16 << 20,
            connection_receive_window: 64 << 20,
            send_window: 8 << 20,
            max_concurrent_streams: 32_768,
            socket_buffer: 32 << 20,
            max_handshakes: 64,
        }
    }
}

impl QuicSettings {
    /// How long a silent peer is tolerated, or `None` when dead-peer detection is off (no
    /// peer timeout, or no keep-alives to make a live peer heard).
    pub fn peer_timeout(&self) -> Option<Duration> {
        (!self.peer_timeout.is_zero() && !self.keep_alive.is_zero()).then_some(self.peer_timeout)
    }

    /// The quinn transport configuration these settings describe.
    pub fn transport_config(&self) -> Result<TransportConfig, TransportError> {
        if self.idle_timeout.is_zero() {
            return Err(TransportError::Settings(
                "idle_timeout must be above zero".into(),
            ));
        }
        if self.keep_alive >= self.idle_timeout {
            return Err(TransportError::Settings(format!(
                "keep_alive ({:?}) must be below idle_timeout ({:?})",
                self.keep_alive, self.idle_timeout
            )));
        }
        if !self.peer_timeout.is_zero()
            && !self.keep_alive.is_zero()
            && (self.peer_timeout <= self.keep_alive || self.peer_timeout > self.idle_timeout)
        {
            return Err(TransportError::Settings(format!(
                "peer_timeout ({:?}) must be above keep_alive ({:?}) and at most idle_timeout \
                 ({:?})",
                self.peer_timeout, self.keep_alive, self.idle_timeout
            )));
        }
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| TransportError::Settings("idle_timeout too large".into()))?;
        let varint = |value: u64, name: &str| {
            VarInt::from_u64(value)
                .map_err(|_| TransportError::Settings(format!("{name} too large: {value}")))
        };
        let mut config = TransportConfig::default();
        config
            .keep_alive_interval((!self.keep_alive.is_zero()).then_some(self.keep_alive))
            .max_idle_timeout(Some(idle))
            .stream_receive_window(varint(self.stream_receive_window, "stream_receive_window")?)
            .receive_window(varint(
                self.connection_receive_window,
                "connection_receive_window",
            )?)
            .send_window(self.send_window)
            .max_concurrent_bidi_streams(varint(
                self.max_concurrent_streams,
                "max_concurrent_streams",
            )?)
            // Everything travels on bidirectional streams; no datagrams either.
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_make_a_transport_config() {
        let settings = QuicSettings::default();
        assert!(settings.idle_timeout >= Duration::from_secs(30));
        assert!(settings.keep_alive < settings.idle_timeout);
        assert!(settings.max_handshakes > 0);
        settings.transport_config().unwrap();
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let bad = QuicSettings {
            keep_alive: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            ..QuicSettings::default()
        };
        assert!(matches!(
            bad.transport_config(),
            Err(TransportError::Settings(_))
        ));
        let bad = QuicSettings {
            stream_receive_window: u64::MAX,
            ..QuicSettings::default()
        };
        assert!(matches!(
            bad.transport_config(),
            Err(TransportError::Settings(_))
        ));
        let no_keep_alive = QuicSettings {
            keep_alive: Duration::ZERO,
            ..QuicSettings::default()
        };
        no_keep_alive.transport_config().unwrap();
    }
}
