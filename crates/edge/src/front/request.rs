//! Request ids and the one log line of every binding request.
//!
//! Each binding request (a `fetch()`, a `CONNECT`, a connection to a TCP binding) gets a
//! [`RequestId`] here. It travels in the stream header, so the connector logs the same id and
//! one grep finds the request on both hosts. A request that fails is logged **once**, at
//! `info`, with `request_id`, `binding`, `destination`, `proxy_status` and `details`, wherever
//! it failed: refused by the edge, refused by the connector, cut by a lost connection part way
//! through a response or a pipe. One that succeeds gets a `debug` line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use http::{Response, StatusCode};
use tracing::{debug, info};
use underpass_mux::{PipeOutcome, PipeStats};
use underpass_proto::{ProxyStatus, RequestId};

use super::response::{error_response, error_response_with, FetchBody};

/// A fresh request id: a process-wide counter starting at a random value, so ids are unique
/// within a run and unlikely to repeat across restarts. Never zero (zero means "none").
pub(crate) fn next_request_id() -> RequestId {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU64::new(rand::random()));
    loop {
        let id = next.fetch_add(1, Ordering::Relaxed);
        if id != 0 {
            return RequestId(id);
        }
    }
}

/// Why a request cannot go on: its Proxy-Status code, the details for the client, and an
/// optional note for the log only (what the connectors announce, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The RFC 9209 error type.
    pub status: ProxyStatus,
    /// For the `Proxy-Status` details and the log.
    pub details: String,
    /// For the log only.
    pub note: Option<String>,
}

impl Failure {
    pub(crate) fn new(status: ProxyStatus, details: impl Into<String>) -> Self {
        Failure {
            status,
            details: details.into(),
            note: None,
        }
    }
}

/// One binding request, for its log lines. Cheap to clone (the binding name is shared).
#[derive(Debug, Clone)]
pub(crate) struct RequestLog {
    /// The request's id, sent in the stream header.
    pub id: RequestId,
    binding: Arc<str>,
    destination: String,
}

impl RequestLog {
    /// A new request on `binding`, to `destination` as the client wrote it; a fresh id.
    pub(crate) fn new(binding: Arc<str>, destination: impl Into<String>) -> Self {
        RequestLog {
            id: next_request_id(),
            binding,
            destination: destination.into(),
        }
    }

    /// Where the request really goes, once known (`host:port`, or the service and its
    /// address).
    pub(crate) fn set_destination(&mut self, destination: impl Into<String>) {
        self.destination = destination.into();
    }

    /// Log the failure, once.
    pub(crate) fn failed(&self, failure: &Failure) {
        let status = failure.status.token();
        match &failure.note {
            Some(note) => info!(
                request_id = %self.id,
                binding = %self.binding,
                destination = %self.destination,
                proxy_status = status,
                details = %failure.details,
                "request failed: {}; {note}",
                failure.details
            ),
            None => info!(
                request_id = %self.id,
                binding = %self.binding,
                destination = %self.destination,
                proxy_status = status,
                details = %failure.details,
                "request failed"
            ),
        }
    }

    /// Log the failure and build its error response (status from the Proxy-Status code).
    pub(crate) fn respond(&self, failure: Failure) -> Response<FetchBody> {
        self.failed(&failure);
        error_response(failure.status, &failure.details)
    }

    /// Log the failure and build its error response with an explicit status.
    pub(crate) fn respond_with(&self, code: StatusCode, failure: Failure) -> Response<FetchBody> {
        self.failed(&failure);
        error_response_with(code, failure.status, &failure.details)
    }

    /// The request is refused as malformed: `code` with `Proxy-Status: …;
    /// error=http_request_error` and `Connection: close`, since what follows on the connection
    /// cannot be trusted to start a request.
    pub(crate) fn refuse_and_close(
        &self,
        code: StatusCode,
        details: String,
    ) -> Response<FetchBody> {
        let mut response =
            self.respond_with(code, Failure::new(ProxyStatus::HttpRequestError, details));
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        response
    }

    /// The request completed.
    pub(crate) fn done(&self, what: &str) {
        debug!(
            request_id = %self.id,
            binding = %self.binding,
            destination = %self.destination,
            "{what}"
        );
    }

    /// A pipe (`CONNECT`, upgrade, TCP binding) ended: a clean end of both directions is a
    /// success; a lost connection, a reset from the connector's side or the end of the grace
    /// period is a failure (`connection_terminated`); anything else was the client's doing or the end of the
    /// client's doing, logged at `debug`. `cut`: the shutdown grace period ended it.
    pub(crate) fn pipe_ended(&self, stats: &PipeStats, connection_lost: bool, cut: bool) {
        let failure = match &stats.outcome {
            PipeOutcome::Closed => {
                debug!(
                    request_id = %self.id,
                    binding = %self.binding,
                    destination = %self.destination,
                    up = stats.socket_to_stream,
                    down = stats.stream_to_socket,
                    "pipe done"
                );
                return;
            }
            _ if cut => Failure::new(
                ProxyStatus::ConnectionTerminated,
                "the edge is shutting down and the grace period is over; the pipe was reset",
            ),
            _ if connection_lost => Failure::new(
                ProxyStatus::ConnectionTerminated,
                "the connection to the connector was lost; the client connection was reset",
            ),
            PipeOutcome::StreamAborted(error) => Failure::new(
                ProxyStatus::ConnectionTerminated,
                format!("the connector ended the stream abruptly ({error}); the client connection was reset"),
            ),
            PipeOutcome::SocketFailed(error) => {
                debug!(
                    request_id = %self.id,
                    binding = %self.binding,
                    destination = %self.destination,
                    %error,
                    "pipe ended by the client side"
                );
                return;
            }
        };
        self.failed(&failure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_and_nonzero() {
        let ids: Vec<RequestId> = (0..1000).map(|_| next_request_id()).collect();
        let mut unique = ids.clone();
        unique.sort_unstable_by_key(|id| id.0);
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        assert!(ids.iter().all(|id| id.0 != 0));
        assert_eq!(ids[0].to_string().len(), 16);
    }
}
