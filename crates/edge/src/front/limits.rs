//! The limits of a request head on a `mode = "proxy"` binding, shared by hyper's settings
//! (`front::proxy`), the edge's own checks (`front::fetch`) and the answers that replace
//! hyper's (`front::client_io`).

/// The most a `fetch()` request head (target and header fields) may take: what one stream
/// header frame carries ([`underpass_proto::MAX_FRAME_LEN`], 64 KiB) with room for the rest of
/// the head. Larger: `431` with `Proxy-Status: …; error=http_request_error`. hyper's read
/// buffer is bounded at [`MAX_HEAD_BUFFER`] so a client cannot make the edge buffer more.
pub(in crate::front) const REQUEST_HEAD_LIMIT: usize = 48 * 1024;

/// hyper's read buffer for a client connection (`max_buf_size`) and its head limit
/// (`max_header_size`): a head larger than this is refused by hyper itself, whatever the reads
/// it arrived in, and answered `431` (`414` when its target is what is too long) by the edge
/// in place of hyper (`front::client_io`).
pub(in crate::front) const MAX_HEAD_BUFFER: usize = 64 * 1024;

/// The most header fields in a request head (hyper's `max_headers`); more: `431`.
pub(in crate::front) const MAX_HEADERS: usize = 100;

/// The longest request target (the URL of a `fetch()`); longer: `414` with `Proxy-Status: …;
/// error=http_request_error`. A Worker's URL is at most 16 KB (the Workers platform limit), so
/// nothing legitimate is refused.
pub(in crate::front) const REQUEST_TARGET_LIMIT: usize = 16 * 1024;
