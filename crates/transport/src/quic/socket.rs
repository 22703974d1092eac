//! The UDP socket under a QUIC endpoint, with large kernel buffers.
//!
//! Bulk QUIC transfer drops packets with the common 4 MiB `net.core.rmem_max` cap; asking for
//! 32 MiB (forced past the cap when running as root) brings the drops to zero. What the kernel
//! actually granted is read back, logged, and reported by [`SocketBuffers`].

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// UDP socket buffer sizes: what was asked for and what the kernel reports it granted.
///
/// On Linux the kernel reports twice the size asked for (it counts its bookkeeping overhead), so
/// a fully granted 32 MiB request reads back as 64 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// The size requested for both SO_RCVBUF and SO_SNDBUF.
    pub requested: usize,
    /// SO_RCVBUF as read back from the kernel.
    pub recv: usize,
    /// SO_SNDBUF as read back from the kernel.
    pub send: usize,
}

impl SocketBuffers {
    /// Whether the kernel granted less than requested in either direction.
    pub fn capped(&self) -> bool {
        let wanted = self.requested.saturating_mul(KERNEL_REPORT_FACTOR);
        self.recv < wanted || self.send < wanted
    }
}

/// How many times the requested size the kernel reports back when it grants the request fully.
#[cfg(any(target_os = "linux", target_os = "android"))]
const KERNEL_REPORT_FACTOR: usize = 2;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const KERNEL_REPORT_FACTOR: usize = 1;

/// A non-blocking UDP socket bound to `bind`, its buffers raised towards `buffer_size`.
///
/// An IPv6 wildcard bind is made dual-stack so one socket reaches IPv4 edges too.
pub(crate) fn bind_udp(
    bind: SocketAddr,
    buffer_size: usize,
) -> io::Result<(UdpSocket, SocketBuffers)> {
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() && bind.ip().is_unspecified() {
        // Not fatal: some systems forbid dual-stack sockets; IPv6 still works.
        if let Err(error) = socket.set_only_v6(false) {
            tracing::debug!(%error, "could not make the UDP socket dual-stack");
        }
    }
    let forced_recv = raise(&socket, buffer_size, Direction::Recv);
    let forced_send = raise(&socket, buffer_size, Direction::Send);
    socket.set_nonblocking(true)?;
    socket
        .bind(&bind.into())
        .map_err(|e| io::Error::new(e.kind(), format!("{bind}: {e}")))?;

    let buffers = SocketBuffers {
        requested: buffer_size,
        recv: socket.recv_buffer_size()?,
        send: socket.send_buffer_size()?,
    };
    let local = socket.local_addr()?.as_socket();
    tracing::info!(
        local = ?local,
        requested = buffers.requested,
        recv = buffers.recv,
        send = buffers.send,
        forced_recv,
        forced_send,
        "UDP socket buffers (as reported by the kernel)"
    );
    if buffers.capped() {
        tracing::warn!(
            requested = buffers.requested,
            recv = buffers.recv,
            send = buffers.send,
            "the kernel capped the UDP socket buffers below the request; expect packet drops at \
             high throughput: raise net.core.rmem_max and net.core.wmem_max (sysctl) or run as \
             root so SO_RCVBUFFORCE/SO_SNDBUFFORCE apply"
        );
    }
    Ok((socket.into(), buffers))
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Recv,
    Send,
}

/// Set one buffer, trying the FORCE variant (root only, ignores the sysctl cap) first.
/// Returns whether the FORCE variant was applied. Failures are logged, never fatal.
fn raise(socket: &Socket, size: usize, direction: Direction) -> bool {
    if force(socket, size, direction).is_ok() {
        return true;
    }
    let result = match direction {
        Direction::Recv => socket.set_recv_buffer_size(size),
        Direction::Send => socket.set_send_buffer_size(size),
    };
    if let Err(error) = result {
        tracing::warn!(%error, ?direction, size, "could not set the UDP socket buffer size");
    }
    false
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn force(socket: &Socket, size: usize, direction: Direction) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};

    let result = match direction {
        Direction::Recv => setsockopt(socket, sockopt::RcvBufForce, &size),
        Direction::Send => setsockopt(socket, sockopt::SndBufForce, &size),
    };
    result.map_err(io::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn force(_socket: &Socket, _size: usize, _direction: Direction) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}
