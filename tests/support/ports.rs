//! Free loopback ports for servers that cannot bind port 0 themselves.
//!
//! A port found here is free *now*; another process may take it before the server binds it.
//! Builders that use these functions therefore retry with a new port when their server fails
//! with "address in use".

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};

/// Returns a TCP port that is free on `ip`, found by binding port 0 and closing the listener.
///
/// # Panics
/// When `ip` cannot be bound at all (for example an address that is not local).
pub fn free_port(ip: IpAddr) -> u16 {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .unwrap_or_else(|e| panic!("cannot bind a TCP socket on {ip}: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the local address of a TCP socket: {e}"))
        .port()
}

/// Returns a port that is free on `ip` for both TCP and UDP (for a DNS server).
///
/// # Panics
/// When `ip` cannot be bound at all, or no such port is found in 100 tries.
pub fn free_tcp_udp_port(ip: IpAddr) -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("cannot bind a TCP socket on {ip}: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the local address of a TCP socket: {e}"))
            .port();
        if UdpSocket::bind(SocketAddr::new(ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP on {ip} after 100 tries")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn free_ports_can_be_bound() {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 31, 1));
        let port = free_port(ip);
        TcpListener::bind(SocketAddr::new(ip, port)).expect("free TCP port binds");
        let port = free_tcp_udp_port(ip);
        let _tcp = TcpListener::bind(SocketAddr::new(ip, port)).expect("free TCP port binds");
        let _udp = UdpSocket::bind(SocketAddr::new(ip, port)).expect("free UDP port binds");
    }
}
