//! How a stream ended ([`StreamEnd`]): what the stream code (`connect()`, `fetch()`,
//! upgrades) reports to the one place that logs a stream's end and counts it in the metrics,
//! so that every failed stream is logged exactly once.

use underpass_mux::{PipeOutcome, PipeStats};
use underpass_proto::ProxyErrorReply;

/// How a stream ended, and the payload bytes it moved.
#[derive(Debug)]
pub(crate) struct StreamEnd {
    /// How.
    pub(crate) ending: Ending,
    /// Payload bytes sent to the origin (request body, client bytes of a pipe).
    pub(crate) to_origin: u64,
    /// Payload bytes from the origin (response body, origin bytes of a pipe).
    pub(crate) from_origin: u64,
}

/// The ways a stream ends.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Served to its end.
    Done,
    /// Refused before any reply: the edge was answered with this Proxy-Status error.
    Refused(ProxyErrorReply),
    /// The edge gave up on the stream (its client went away) or it ended before its header.
    Cancelled(String),
    /// Failed after the reply: the stream was reset (the origin failed mid-body, a pipe
    /// broke).
    Aborted(String),
}

impl StreamEnd {
    /// Nothing moved and the stream ended so.
    pub(crate) fn bare(ending: Ending) -> Self {
        StreamEnd {
            ending,
            to_origin: 0,
            from_origin: 0,
        }
    }

    /// Refused with `error`.
    pub(crate) fn refused(error: ProxyErrorReply) -> Self {
        Self::bare(Ending::Refused(error))
    }

    /// Cancelled for `reason`.
    pub(crate) fn cancelled(reason: impl Into<String>) -> Self {
        Self::bare(Ending::Cancelled(reason.into()))
    }

    /// What a socket pipe reported: the socket is the origin's side.
    pub(crate) fn from_pipe(stats: PipeStats) -> Self {
        let ending = match stats.outcome {
            PipeOutcome::Closed => Ending::Done,
            PipeOutcome::StreamAborted(error) => {
                Ending::Cancelled(format!("the edge aborted the stream: {error}"))
            }
            PipeOutcome::SocketFailed(error) => Ending::Aborted(error),
        };
        StreamEnd {
            ending,
            to_origin: stats.stream_to_socket,
            from_origin: stats.socket_to_stream,
        }
    }
}
