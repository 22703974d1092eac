//! Connection close codes: the application error code of a QUIC `CONNECTION_CLOSE` (or of the
//! HTTP/2 transport's `GOAWAY`) between edge and connector. Both programs use these and only
//! these; `docs/protocol.md` lists them.

use std::fmt;

/// Why a connection between edge and connector was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// A clean close: the control stream was finished, or the connection was idle.
    Normal,
    /// The edge refused the registration (the reason came in `RegisterRefused`).
    Refused,
    /// The same connector registered this connection slot again; the older one is closed.
    Superseded,
    /// The closing side is shutting down after draining its streams.
    Shutdown,
    /// The peer broke the protocol (no or bad registration, bad control message).
    Protocol,
    /// The control stream failed or heartbeats went unanswered.
    ControlLost,
    /// The connection was drained (on the other side's `Drain`) and its streams are done.
    Drained,
}

impl CloseCode {
    /// Every code, in wire order.
    pub const ALL: [CloseCode; 7] = [
        CloseCode::Normal,
        CloseCode::Refused,
        CloseCode::Superseded,
        CloseCode::Shutdown,
        CloseCode::Protocol,
        CloseCode::ControlLost,
        CloseCode::Drained,
    ];

    /// The code on the wire.
    pub const fn code(self) -> u32 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::Refused => 1,
            CloseCode::Superseded => 2,
            CloseCode::Shutdown => 3,
            CloseCode::Protocol => 4,
            CloseCode::ControlLost => 5,
            CloseCode::Drained => 6,
        }
    }

    /// The code for a wire value; `None` for a value no Underpass version sends.
    pub fn from_code(code: u32) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A short name for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::Refused => "refused",
            CloseCode::Superseded => "superseded",
            CloseCode::Shutdown => "shutdown",
            CloseCode::Protocol => "protocol_error",
            CloseCode::ControlLost => "control_lost",
            CloseCode::Drained => "drained",
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_round_trip() {
        for (index, code) in CloseCode::ALL.into_iter().enumerate() {
            assert_eq!(code.code() as usize, index);
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
        }
        assert_eq!(CloseCode::from_code(7), None);
        assert_eq!(CloseCode::Protocol.to_string(), "protocol_error");
    }
}
