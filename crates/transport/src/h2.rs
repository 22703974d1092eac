//! HTTP/2 over TLS over TCP on h2 and rustls, for networks that block UDP: the edge's
//! [`H2Listener`], the connector's [`H2Dialer`], and [`H2Connection`] implementing
//! [`crate::Connection`]; [`H2Config`] tunes both ends (`[http2]`).
//!
//! # Roles
//!
//! The connector dials TCP + TLS 1.3 (the same [`crate::tls`] configurations and pin as QUIC,
//! ALPN [`ALPN`]), but on that connection the **edge is the HTTP/2 client** and the connector
//! the server, because the edge is the side that opens streams. TCP_NODELAY is set on both
//! ends. Every request is a `POST` whose path names its kind:
//!
//! - The **session** request, the first of every connection and part of the handshake (the
//!   edge's handshake ends when it is answered, the connector's when it has answered it). It
//!   stays open for the connection's lifetime and carries the close records (below).
//! - A stream the edge opens ([`open_bi`](crate::Connection::open_bi) on the edge,
//!   [`accept_bi`](crate::Connection::accept_bi) on the connector) is one **stream** request:
//!   the request body carries edge→connector bytes, the response body connector→edge bytes.
//!   The edge's `open_bi` returns once the request head is queued; its receive half awaits
//!   the response head on its first read. The connector answers at once.
//! - HTTP/2 servers cannot open streams, so the streams the connector opens (the control
//!   stream) are turned around: the edge keeps one **reverse** request outstanding, and the
//!   connector's `open_bi` answers it. An answered offer is queued for the edge's `accept_bi`
//!   and the next offer is sent; while 16 such streams wait, no more are offered, so the
//!   connector's `open_bi` waits.
//!
//! # Stream semantics
//!
//! - [`finish`](crate::SendStream::finish) is END_STREAM; [`reset`](crate::SendStream::reset)
//!   is RST_STREAM with our code, which the peer's reads see as
//!   [`StreamError::Reset`](crate::StreamError::Reset) after the data that arrived before it.
//! - HTTP/2 has no STOP_SENDING and resets whole streams: [`stop`](crate::RecvStream::stop) is
//!   RST_STREAM too, and a reset or stop ends **both** directions. The peer's writes then fail
//!   with [`StreamError::Stopped`](crate::StreamError::Stopped) and its `stopped()` resolves
//!   `Some(code)`; this side's other half fails with
//!   [`StreamError::Closed`](crate::StreamError::Closed). Except after this side's
//!   [`finish`](crate::SendStream::finish): h2 discards a reset stream's queued DATA, so a
//!   `stop` then only stops reading (what arrives is discarded, its window released) and the
//!   stream closes when the peer finishes or resets; a reply followed by `finish` and `stop`
//!   (a refusal) reaches the peer whole.
//! - [`stopped`](crate::SendStream::stopped) resolves `Some(code)` when the peer resets the
//!   stream, and `None` once this side has finished **and** its receive half has read the
//!   peer's END_STREAM (the stream closed both ways without a reset; TCP delivered everything
//!   before it in order). HTTP/2 acknowledges no half-closed direction, so a stream whose peer
//!   never finishes, or whose receive half was dropped unread, resolves only on a reset or
//!   when the connection ends (an error).
//! - Once the connection has ended, a stream operation that fails reports the connection's
//!   end ([`StreamError::ConnectionLost`](crate::StreamError::ConnectionLost)), as over QUIC,
//!   even if a reset arrived meanwhile; data received before it is still read first.
//! - Flow control: a write asks for window and waits for it, sending a chunk in pieces of the
//!   granted size, so at most the stream window, and at most [`H2Config::max_send_buffer`]
//!   bytes not yet taken by the socket, are outstanding per stream; a read releases window
//!   for exactly the bytes it returns, so a body is never buffered whole.
//!
//! # Connections
//!
//! - [`close`](crate::Connection::close) sends a close record (the code, big-endian, then the
//!   reason) and END_STREAM on the session stream, whichever side closes: HTTP/2's GOAWAY
//!   cannot carry our reason (h2 sends no debug data) and h2's client cannot send one. The
//!   peer's `closed()` then reads `closed by peer: <reason> (code <code>)` (or
//!   `closed by peer: <code>` without reason), as over QUIC; it answers with END_STREAM, on
//!   which the closing side drops the socket (after at most 3 s without an answer). The
//!   closing side's own operations fail at once with `closed locally: ...`. Dropping the last
//!   handle (connection clone or stream) closes with code 0; closing the listener or dialer
//!   closes each connection with code 0 and `edge shutting down` / `connector shutting down`.
//! - [`export_keying_material`](crate::Connection::export_keying_material) reads the TLS
//!   session's exporter: the TLS stream sits behind a mutex that the driver's IO calls lock
//!   only for one `poll_*` each, so an export at any time finds it.
//! - Dead peers: each end sends an HTTP/2 PING every [`H2Config::keep_alive_ms`] (h2 allows
//!   one in flight; while it is unanswered, an empty DATA frame on the session stream takes
//!   its turn); when *no byte at all* has arrived for [`H2Config::ping_timeout_ms`] the
//!   connection ends with `timed out: ...`. [`stats`](crate::Connection::stats) reports the
//!   last round trip and, as `rx_datagrams`/`tx_datagrams`, the socket reads and writes that
//!   moved bytes, so `underpass_mux::liveness::peer_silent` works on HTTP/2 too.

use std::time::Duration;

use serde::Deserialize;

mod connection;
mod dialer;
mod driver;
mod io;
mod listener;
mod state;
mod stream;
mod wire;

pub use crate::TransportError;
pub use connection::H2Connection;
pub use dialer::H2Dialer;
pub use listener::H2Listener;
pub use stream::{H2Recv, H2Send, RESET_ON_DROP};

/// The ALPN protocol of the HTTP/2 transport (QUIC uses [`crate::quic::ALPN`]).
pub const ALPN: &[u8] = b"h2";

/// Largest HTTP/2 flow-control window (RFC 9113 §6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// HTTP/2 frame size bounds (RFC 9113 §6.5.2).
const MIN_FRAME: u32 = 1 << 14;
const MAX_FRAME: u32 = (1 << 24) - 1;
/// Streams reset locally whose late frames h2 still recognises (h2's default is 10): the
/// multiplexer resets streams on every cancellation.
const MAX_RESET_STREAMS: usize = 1024;

/// HTTP/2 tuning (`[http2]`), the same keys in the edge and the connector. Every key is
/// optional; the defaults suit high bandwidth-delay paths, like [`crate::quic::QuicSettings`].
///
/// ```toml
/// [http2]
/// stream_window = 4194304
/// keep_alive_ms = 1000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct H2Config {
    /// Initial per-stream receive window, in bytes (65535 to 2^31-1).
    pub stream_window: u32,
    /// Connection-wide receive window, in bytes (65535 to 2^31-1).
    pub connection_window: u32,
    /// Largest DATA frame we accept, in bytes (16384 to 2^24-1).
    pub max_frame_size: u32,
    /// Streams the peer may have open at once (above zero).
    pub max_concurrent_streams: u32,
    /// Bytes a stream may have queued in h2 beyond what the socket took (above zero).
    pub max_send_buffer: usize,
    /// Interval between PINGs, in milliseconds; 0 disables keep-alives (and dead-peer
    /// detection by this transport).
    pub keep_alive_ms: u64,
    /// A peer from which nothing arrived this long after a PING is dead, in milliseconds;
    /// above zero when keep-alives are on.
    pub ping_timeout_ms: u64,
    /// Bound on TCP connect + TLS + HTTP/2 handshake, in milliseconds (above zero).
    pub handshake_timeout_ms: u64,
    /// Handshakes the edge runs at once before it drops new TCP connections (1 to 65536;
    /// the connector ignores it).
    pub max_handshakes: usize,
}

impl Default for H2Config {
    fn default() -> Self {
        Self {
            stream_window: 4 << 20,
            connection_window: 16 << 20,
            max_frame_size: 64 << 10,
            max_concurrent_streams: 32_768,
            max_send_buffer: 1 << 20,
            keep_alive_ms: 1000,
            ping_timeout_ms: 2500,
            handshake_timeout_ms: 10_000,
            max_handshakes: 64,
        }
    }
}

impl H2Config {
    /// Check every key; an error names it (`http2.stream_window (10) must be 65535 to
    /// 2147483647`).
    pub fn validate(&self) -> Result<(), TransportError> {
        let range = |key: &str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                return Err(TransportError::H2Settings(format!(
                    "http2.{key} ({value}) must be {min} to {max}"
                )));
            }
            Ok(())
        };
        let window = u64::from(MAX_WINDOW);
        range("stream_window", self.stream_window.into(), 65_535, window)?;
        range(
            "connection_window",
            self.connection_window.into(),
            65_535,
            window,
        )?;
        range(
            "max_frame_size",
            self.max_frame_size.into(),
            MIN_FRAME.into(),
            MAX_FRAME.into(),
        )?;
        range(
            "max_concurrent_streams",
            self.max_concurrent_streams.into(),
            1,
            u32::MAX.into(),
        )?;
        range(
            "max_send_buffer",
            self.max_send_buffer as u64,
            1,
            u64::from(u32::MAX),
        )?;
        range(
            "handshake_timeout_ms",
            self.handshake_timeout_ms,
            1,
            u64::MAX,
        )?;
        range("max_handshakes", self.max_handshakes as u64, 1, 65_536)?;
        if self.keep_alive_ms != 0 && self.ping_timeout_ms == 0 {
            return Err(TransportError::H2Settings(
                "http2.ping_timeout_ms must be above zero while http2.keep_alive_ms is set".into(),
            ));
        }
        Ok(())
    }

    fn keep_alive(&self) -> Option<(Duration, Duration)> {
        (self.keep_alive_ms != 0).then(|| {
            (
                Duration::from_millis(self.keep_alive_ms),
                Duration::from_millis(self.ping_timeout_ms),
            )
        })
    }

    fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    fn client_builder(&self) -> h2::client::Builder {
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_send_buffer_size(self.max_send_buffer)
            .max_concurrent_reset_streams(MAX_RESET_STREAMS)
            .enable_push(false);
        builder
    }

    fn server_builder(&self) -> h2::server::Builder {
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_send_buffer_size(self.max_send_buffer)
            .max_concurrent_reset_streams(MAX_RESET_STREAMS);
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(config: H2Config) -> String {
        match config.validate() {
            Err(TransportError::H2Settings(message)) => message,
            other => panic!("expected a settings error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_sized_for_long_paths() {
        let config = H2Config::default();
        config.validate().unwrap();
        assert!(config.connection_window >= 16 << 20);
        assert!(config.stream_window >= 4 << 20);
    }

    #[test]
    fn errors_name_the_key() {
        let bad = H2Config {
            stream_window: 10,
            ..H2Config::default()
        };
        assert_eq!(
            error(bad),
            "http2.stream_window (10) must be 65535 to 2147483647"
        );
        let bad = H2Config {
            max_frame_size: 1 << 24,
            ..H2Config::default()
        };
        assert_eq!(
            error(bad),
            "http2.max_frame_size (16777216) must be 16384 to 16777215"
        );
        let bad = H2Config {
            ping_timeout_ms: 0,
            ..H2Config::default()
        };
        assert!(error(bad).contains("http2.ping_timeout_ms"));
        let off = H2Config {
            keep_alive_ms: 0,
            ping_timeout_ms: 0,
            ..H2Config::default()
        };
        off.validate().unwrap();
        assert_eq!(off.keep_alive(), None);
    }

    #[test]
    fn unknown_keys_are_refused() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct File {
            http2: H2Config,
        }
        let parsed: File = toml::from_str("[http2]\nstream_window = 65535\n").unwrap();
        assert_eq!(parsed.http2.stream_window, 65_535);
        assert_eq!(parsed.http2.keep_alive_ms, 1000);
        let error = toml::from_str::<File>("[http2]\nstream_windw = 1\n").unwrap_err();
        assert!(error.to_string().contains("stream_windw"), "{error}");
    }
}
