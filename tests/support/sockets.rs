//! The kernel's view of a TCP connection (`/proc/net/tcp`, `/proc/net/tcp6`), to check what a
//! peer did to its socket without waiting for the effect to reach ours.
//!
//! When a process closes a TCP socket the kernel moves it out of `ESTABLISHED`/`CLOSE_WAIT`
//! during `close()` itself; its peer learns it only when the FIN is delivered. Looking the
//! socket up by its address pair tells whether the other side has closed *by now*.

use std::net::{IpAddr, SocketAddr};

/// The state of a TCP socket, as `/proc/net/tcp` numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// 1: open both ways.
    Established,
    /// 2
    SynSent,
    /// 3
    SynRecv,
    /// 4: closed by this side, FIN not yet acknowledged.
    FinWait1,
    /// 5: closed by this side, waiting for the peer's FIN.
    FinWait2,
    /// 6
    TimeWait,
    /// 7
    Close,
    /// 8: the peer closed, this side has not.
    CloseWait,
    /// 9
    LastAck,
    /// 10
    Listen,
    /// 11
    Closing,
    /// Anything else.
    Other(u8),
}

impl TcpState {
    fn from_code(code: u8) -> Self {
        match code {
            1 => TcpState::Established,
            2 => TcpState::SynSent,
            3 => TcpState::SynRecv,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::TimeWait,
            7 => TcpState::Close,
            8 => TcpState::CloseWait,
            9 => TcpState::LastAck,
            10 => TcpState::Listen,
            11 => TcpState::Closing,
            other => TcpState::Other(other),
        }
    }

    /// True while the socket's owner has not closed it (it may still send).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            TcpState::Established | TcpState::CloseWait | TcpState::SynSent | TcpState::SynRecv
        )
    }
}

/// The state of the socket whose local address is `local` and remote address is `remote`, or
/// `None` when the kernel no longer has it.
///
/// # Panics
/// When `/proc/net/tcp` cannot be read (not Linux).
pub fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<TcpState> {
    let table = match local {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text =
        std::fs::read_to_string(table).unwrap_or_else(|e| panic!("cannot read {table}: {e}"));
    let (local, remote) = (encode(local), encode(remote));
    text.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (l, r, st) = (fields.next()?, fields.next()?, fields.next()?);
        (l.eq_ignore_ascii_case(&local) && r.eq_ignore_ascii_case(&remote))
            .then(|| u8::from_str_radix(st, 16).ok().map(TcpState::from_code))
            .flatten()
    })
}

/// An address as `/proc/net/tcp*` prints it: the IP as 32-bit words in host byte order, in
/// hex, then `:PORT` in hex.
fn encode(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => format!("{:08X}", u32::from_ne_bytes(ip.octets())),
        IpAddr::V6(ip) => ip
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    format!("{ip}:{:04X}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_connection_and_sees_the_peer_close() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (c, s) = (client.local_addr().unwrap(), server.local_addr().unwrap());
        assert_eq!(tcp_state(s, c), Some(TcpState::Established));
        drop(server);
        // Closed by its owner: no longer open, whatever the client has seen yet.
        assert!(!tcp_state(s, c).is_some_and(TcpState::is_open));
    }
}
