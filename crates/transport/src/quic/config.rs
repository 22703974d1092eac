//! [`QuicConfig`]: the `[quic]` section of both programs' configuration files.

use std::time::Duration;

use quinn::VarInt;
use serde::Deserialize;

use super::QuicSettings;
use crate::TransportError;

/// Most handshakes a listener may be configured to run at once.
const MAX_HANDSHAKES: usize = 65_536;
/// Largest socket buffer that can be asked for (the kernel takes a C `int`).
const MAX_SOCKET_BUFFER: usize = i32::MAX as usize;

/// QUIC tuning (`[quic]`), the same keys with the same bounds in the edge and the connector.
/// Every key is optional and defaults to the value in [`QuicSettings::default`].
///
/// ```toml
/// [quic]
/// keep_alive_ms = 15000
/// idle_timeout_ms = 60000
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// Keep-alive interval on an idle connection, in milliseconds; 0 disables keep-alives.
    /// Must be below `idle_timeout_ms`.
    pub keep_alive_ms: Option<u64>,
    /// A connection silent this long is closed, in milliseconds (above zero).
    pub idle_timeout_ms: Option<u64>,
    /// A peer heard nothing from for this long is dead and its connection closed, in
    /// milliseconds; must be above `keep_alive_ms` and at most `idle_timeout_ms`; 0 disables
    /// dead-peer detection (as does `keep_alive_ms = 0`).
    pub peer_timeout_ms: Option<u64>,
    /// Per-stream receive window, in bytes (above zero).
    pub stream_receive_window: Option<u64>,
    /// Connection-wide receive window, in bytes (above zero).
    pub connection_receive_window: Option<u64>,
    /// Unacknowledged bytes in flight across all streams (above zero).
    pub send_window: Option<u64>,
    /// Bidirectional streams the peer may have open at once (above zero).
    pub max_concurrent_streams: Option<u64>,
    /// Requested UDP socket buffer size (SO_RCVBUF/SO_SNDBUF), in bytes (above zero).
    pub socket_buffer: Option<usize>,
    /// Handshakes the edge runs at once before it refuses new attempts (1 to 65536; the
    /// connector, which only dials, ignores it).
    pub max_handshakes: Option<usize>,
}

impl QuicConfig {
    /// The transport settings: defaults overridden by the keys that are set, checked. An
    /// error names the key (`quic.keep_alive_ms (60000) must be below quic.idle_timeout_ms
    /// (30000)`).
    pub fn settings(&self) -> Result<QuicSettings, TransportError> {
        let defaults = QuicSettings::default();
        let keep_alive_ms = self.keep_alive_ms.unwrap_or(millis(defaults.keep_alive));
        let idle_timeout_ms = self
            .idle_timeout_ms
            .unwrap_or(millis(defaults.idle_timeout));

        above_zero("idle_timeout_ms", idle_timeout_ms)?;
        at_most_varint("idle_timeout_ms", idle_timeout_ms)?;
        if keep_alive_ms >= idle_timeout_ms {
            return Err(invalid(format!(
                "quic.keep_alive_ms ({}) must be below quic.idle_timeout_ms ({})",
                shown(keep_alive_ms, self.keep_alive_ms),
                shown(idle_timeout_ms, self.idle_timeout_ms),
            )));
        }
        let peer_timeout_ms = self
            .peer_timeout_ms
            .unwrap_or(millis(defaults.peer_timeout));
        if peer_timeout_ms != 0
            && keep_alive_ms != 0
            && (peer_timeout_ms <= keep_alive_ms || peer_timeout_ms > idle_timeout_ms)
        {
            return Err(invalid(format!(
                "quic.peer_timeout_ms ({}) must be above quic.keep_alive_ms ({}) and at most \
                 quic.idle_timeout_ms ({})",
                shown(peer_timeout_ms, self.peer_timeout_ms),
                shown(keep_alive_ms, self.keep_alive_ms),
                shown(idle_timeout_ms, self.idle_timeout_ms),
            )));
        }
        let window = |key: &str, value: Option<u64>, default: u64| {
            let value = value.unwrap_or(default);
            above_zero(key, value)?;
            at_most_varint(key, value)?;
            Ok::<_, TransportError>(value)
        };
        let settings = QuicSettings {
            keep_alive: Duration::from_millis(keep_alive_ms),
            idle_timeout: Duration::from_millis(idle_timeout_ms),
            peer_timeout: Duration::from_millis(peer_timeout_ms),
            stream_receive_window: window(
                "stream_receive_window",
                self.stream_receive_window,
                defaults.stream_receive_window,
            )?,
            connection_receive_window: window(
                "connection_receive_window",
                self.connection_receive_window,
                defaults.connection_receive_window,
            )?,
            send_window: window("send_window", self.send_window, defaults.send_window)?,
            max_concurrent_streams: window(
                "max_concurrent_streams",
                self.max_concurrent_streams,
                defaults.max_concurrent_streams,
            )?,
            socket_buffer: bounded(
                "socket_buffer",
                self.socket_buffer.unwrap_or(defaults.socket_buffer),
                MAX_SOCKET_BUFFER,
            )?,
            max_handshakes: bounded(
                "max_handshakes",
                self.max_handshakes.unwrap_or(defaults.max_handshakes),
                MAX_HANDSHAKES,
            )?,
        };
        // Everything quinn checks has been checked above; this only guards against the two
        // drifting apart.
        settings.transport_config()?;
        Ok(settings)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `value`, marked as the default when the key was not set.
fn shown(value: u64, set: Option<u64>) -> String {
    match set {
        Some(_) => value.to_string(),
        None => format!("{value}, the default"),
    }
}

fn invalid(message: String) -> TransportError {
    TransportError::Settings(message)
}

fn above_zero(key: &str, value: u64) -> Result<(), TransportError> {
    if value == 0 {
        return Err(invalid(format!("quic.{key} must be above zero")));
    }
    Ok(())
}

fn at_most_varint(key: &str, value: u64) -> Result<(), TransportError> {
    if value > VarInt::MAX.into_inner() {
        return Err(invalid(format!(
            "quic.{key} ({value}) must be at most {}",
            VarInt::MAX.into_inner()
        )));
    }
    Ok(())
}

fn bounded(key: &str, value: usize, max: usize) -> Result<usize, TransportError> {
    if value == 0 {
        return Err(invalid(format!("quic.{key} must be above zero")));
    }
    if value > max {
        return Err(invalid(format!(
            "quic.{key} ({value}) must be at most {max}"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> QuicConfig {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            quic: QuicConfig,
        }
        toml::from_str::<File>(text).expect("valid TOML").quic
    }

    fn error(text: &str) -> String {
        match parse(text).settings() {
            Ok(settings) => panic!("{text:?} should be refused, gave {settings:?}"),
            Err(TransportError::Settings(message)) => message,
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn no_section_and_empty_section_give_the_defaults() {
        let defaults = QuicSettings::default();
        for text in ["", "[quic]\n"] {
            let settings = parse(text).settings().unwrap();
            assert_eq!(settings.keep_alive, defaults.keep_alive);
            assert_eq!(settings.idle_timeout, defaults.idle_timeout);
            assert_eq!(
                settings.stream_receive_window,
                defaults.stream_receive_window
            );
            assert_eq!(
                settings.connection_receive_window,
                defaults.connection_receive_window
            );
            assert_eq!(settings.send_window, defaults.send_window);
            assert_eq!(
                settings.max_concurrent_streams,
                defaults.max_concurrent_streams
            );
            assert_eq!(settings.socket_buffer, defaults.socket_buffer);
            assert_eq!(settings.max_handshakes, defaults.max_handshakes);
        }
    }

    #[test]
    fn every_key_is_applied() {
        let settings = parse(
            "[quic]\n\
             keep_alive_ms = 0\n\
             idle_timeout_ms = 5000\n\
             peer_timeout_ms = 4000\n\
             stream_receive_window = 1000\n\
             connection_receive_window = 2000\n\
             send_window = 3000\n\
             max_concurrent_streams = 4\n\
             socket_buffer = 65536\n\
             max_handshakes = 1\n",
        )
        .settings()
        .unwrap();
        assert_eq!(settings.keep_alive, Duration::ZERO);
        assert_eq!(settings.idle_timeout, Duration::from_secs(5));
        assert_eq!(settings.peer_timeout, Duration::from_secs(4));
        assert_eq!(settings.stream_receive_window, 1000);
        assert_eq!(settings.connection_receive_window, 2000);
        assert_eq!(settings.send_window, 3000);
        assert_eq!(settings.max_concurrent_streams, 4);
        assert_eq!(settings.socket_buffer, 65536);
        assert_eq!(settings.max_handshakes, 1);
    }

    #[test]
    fn keep_alive_must_be_below_the_idle_timeout() {
        assert_eq!(
            error("[quic]\nkeep_alive_ms = 60000\nidle_timeout_ms = 30000\n"),
            "quic.keep_alive_ms (60000) must be below quic.idle_timeout_ms (30000)"
        );
        assert_eq!(
            error("[quic]\nkeep_alive_ms = 5000\nidle_timeout_ms = 5000\n"),
            "quic.keep_alive_ms (5000) must be below quic.idle_timeout_ms (5000)"
        );
        // A default on one side is named as such, so the message still makes sense.
        assert_eq!(
            error("[quic]\nidle_timeout_ms = 800\n"),
            "quic.keep_alive_ms (1000, the default) must be below quic.idle_timeout_ms (800)"
        );
        assert_eq!(
            error("[quic]\nkeep_alive_ms = 90000\n"),
            "quic.keep_alive_ms (90000) must be below quic.idle_timeout_ms (60000, the default)"
        );
    }

    #[test]
    fn peer_timeout_sits_between_keep_alive_and_idle_timeout() {
        assert_eq!(
            error("[quic]\npeer_timeout_ms = 1000\n"),
            "quic.peer_timeout_ms (1000) must be above quic.keep_alive_ms (1000, the default) \
             and at most quic.idle_timeout_ms (60000, the default)"
        );
        assert_eq!(
            error("[quic]\nidle_timeout_ms = 2000\n"),
            "quic.peer_timeout_ms (2500, the default) must be above quic.keep_alive_ms (1000, \
             the default) and at most quic.idle_timeout_ms (2000)"
        );
        let off = parse("[quic]\npeer_timeout_ms = 0\n").settings().unwrap();
        assert_eq!(off.peer_timeout(), None);
        let no_keep_alive = parse("[quic]\nkeep_alive_ms = 0\n").settings().unwrap();
        assert_eq!(no_keep_alive.peer_timeout(), None);
        let set = parse("[quic]\npeer_timeout_ms = 4000\n")
            .settings()
            .unwrap();
        assert_eq!(set.peer_timeout(), Some(Duration::from_secs(4)));
        assert_eq!(
            QuicConfig::default().settings().unwrap().peer_timeout(),
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn zero_is_refused_where_it_would_stall_or_disable() {
        for key in [
            "idle_timeout_ms",
            "stream_receive_window",
            "connection_receive_window",
            "send_window",
            "max_concurrent_streams",
            "socket_buffer",
            "max_handshakes",
        ] {
            let text = if key == "idle_timeout_ms" {
                "[quic]\nidle_timeout_ms = 0\nkeep_alive_ms = 0\n".to_owned()
            } else {
                format!("[quic]\n{key} = 0\n")
            };
            assert_eq!(error(&text), format!("quic.{key} must be above zero"));
        }
    }

    #[test]
    fn values_beyond_what_the_transport_can_carry_are_refused() {
        let too_large = VarInt::MAX.into_inner() + 1;
        for key in [
            "idle_timeout_ms",
            "stream_receive_window",
            "connection_receive_window",
            "send_window",
            "max_concurrent_streams",
        ] {
            assert_eq!(
                error(&format!("[quic]\n{key} = {too_large}\n")),
                format!(
                    "quic.{key} ({too_large}) must be at most {}",
                    VarInt::MAX.into_inner()
                )
            );
        }
        assert_eq!(
            error("[quic]\nmax_handshakes = 65537\n"),
            "quic.max_handshakes (65537) must be at most 65536"
        );
        assert_eq!(
            error("[quic]\nsocket_buffer = 2147483648\n"),
            "quic.socket_buffer (2147483648) must be at most 2147483647"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct File {
            quic: QuicConfig,
        }
        let error = toml::from_str::<File>("[quic]\nkeepalive_ms = 1\n").unwrap_err();
        assert!(error.to_string().contains("keepalive_ms"), "{error}");
    }

    #[test]
    fn the_error_says_what_is_invalid() {
        let error = parse("[quic]\nsend_window = 0\n").settings().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid QUIC settings: quic.send_window must be above zero"
        );
    }
}
