//! The Underpass stream multiplexer: what travels on each transport stream.
//!
//! - [`frame`]: reading and writing [`underpass_proto`] frames on a stream, and handing the
//!   bytes that follow a frame to the body reader without losing any;
//! - [`pipe`]: a TCP socket spliced to a stream in both directions, with true half-close and
//!   prompt teardown on reset;
//! - [`http`]: HTTP heads and bodies on a stream, hop-by-hop header handling;
//! - [`control`]: the control stream (registration, drain, heartbeat);
//! - [`open`]: the edge side: open a stream for a `connect()` or a `fetch()`;
//! - [`accept`]: the connector side: accept a stream and read what it asks for;
//! - [`liveness`]: dead-peer detection ([`peer_silent`]).
//!
//! Everything here is generic over [`underpass_transport::Connection`] and its stream traits,
//! and knows nothing of the transport under them: the edge and the connector run it on
//! [`underpass_transport::AnyConnection`]. Body readers poll the stream directly
//! ([`underpass_transport::RecvStream::poll_read_chunk`]), so a chunk costs no allocation.
#![forbid(unsafe_code)]

pub mod accept;
pub mod control;
pub mod frame;
pub mod http;
pub mod liveness;
pub mod open;
pub mod pipe;

pub use accept::{accept_stream, IncomingStream};
pub use control::{registration_proof, ControlChannel};
pub use frame::{write_frame, Buffered, FrameReader, MuxError};
pub use liveness::peer_silent;
pub use open::{open_http, open_tcp, OpenError};
pub use pipe::{abort_socket, pipe_tcp, PipeOutcome, PipeStats};
