//! Relays between a connector and its edge, to take the path away from them: a UDP relay for
//! QUIC and a TCP relay for the HTTP/2 transport. Both forward while passing and, once
//! blocked, drop everything both ways without a close or a reset — what the edge sees of a
//! connector killed with SIGKILL or cut off by a firewall.
//!
//! [`Relay::for_transport`] picks the relay of the current test's transport
//! ([`stack::transport`](crate::stack::transport)).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use underpass_connector::config::ProtocolChoice;

/// The controls every relay has.
macro_rules! relay_controls {
    ($($relay:ty),*) => {$(
        impl $relay {
            /// Where the connector dials instead of the edge.
            pub fn addr(&self) -> SocketAddr {
                self.bound()
            }

            /// From now on nothing passes, either way; no close, no reset.
            pub fn block(&self) {
                self.gate().passing.store(false, Ordering::SeqCst);
            }

            /// From now on everything passes again (a TCP connection that saw the relay
            /// blocked stays parked: TCP has no way to skip what was dropped).
            pub fn pass(&self) {
                self.gate().passing.store(true, Ordering::SeqCst);
            }

            /// Datagrams (UDP) or reads (TCP) dropped while blocked.
            pub fn dropped(&self) -> u64 {
                self.gate().dropped.load(Ordering::Relaxed)
            }
        }
    )*};
}

relay_controls!(UdpRelay, TcpRelay, Relay);

impl UdpRelay {
    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn bound(&self) -> SocketAddr {
        self.addr
    }
}

impl TcpRelay {
    fn gate(&self) -> &Gate {
        &self.gate
    }

    fn bound(&self) -> SocketAddr {
        self.addr
    }
}

/// Whether a relay forwards, and how many datagrams or reads it dropped while not.
#[derive(Debug, Clone)]
struct Gate {
    passing: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl Gate {
    fn new(passing: bool) -> Gate {
        Gate {
            passing: Arc::new(AtomicBool::new(passing)),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `true` when `what` may be forwarded; counts it as dropped otherwise.
    fn pass(&self) -> bool {
        let passing = self.passing.load(Ordering::SeqCst);
        if !passing {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        passing
    }
}

/// A UDP relay on 127.0.0.1 to `upstream`: one upstream socket per client address, datagrams
/// forwarded both ways while passing, dropped while blocked.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    gate: Gate,
    task: JoinHandle<()>,
}

impl UdpRelay {
    /// Starts relaying to `upstream`; `passing` is the initial state.
    pub async fn start(upstream: SocketAddr, passing: bool) -> UdpRelay {
        let front = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind the UDP relay"),
        );
        let addr = front.local_addr().expect("the relay's address");
        let gate = Gate::new(passing);
        let task = tokio::spawn({
            let gate = gate.clone();
            async move {
                // The answer tasks end with this one (aborted on drop).
                let mut answers = JoinSet::new();
                let mut peers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    if !gate.pass() {
                        continue;
                    }
                    let up = match peers.get(&from) {
                        Some(up) => up.clone(),
                        None => {
                            let up = Arc::new(
                                UdpSocket::bind("127.0.0.1:0")
                                    .await
                                    .expect("bind a relay upstream socket"),
                            );
                            up.connect(upstream).await.expect("relay to the edge");
                            let (front, up2, gate) = (front.clone(), up.clone(), gate.clone());
                            answers.spawn(async move {
                                let mut buf = vec![0u8; 65_536];
                                while let Ok(n) = up2.recv(&mut buf).await {
                                    if gate.pass() {
                                        let _ = front.send_to(&buf[..n], from).await;
                                    }
                                }
                            });
                            peers.insert(from, up.clone());
                            up
                        }
                    };
                    let _ = up.send(&buf[..n]).await;
                }
            }
        });
        UdpRelay { addr, gate, task }
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP relay on 127.0.0.1 to `upstream`: each accepted connection gets its own upstream
/// connection and bytes are copied both ways while passing. Blocked, it stops reading and
/// writing, and holds both connections open: the peers see silence, not an end.
#[derive(Debug)]
pub struct TcpRelay {
    addr: SocketAddr,
    gate: Gate,
    task: JoinHandle<()>,
}

impl TcpRelay {
    /// Starts relaying to `upstream`; `passing` is the initial state (a blocked relay still
    /// accepts, then forwards nothing).
    pub async fn start(upstream: SocketAddr, passing: bool) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TCP relay");
        let addr = listener.local_addr().expect("the relay's address");
        let gate = Gate::new(passing);
        let task = tokio::spawn({
            let gate = gate.clone();
            async move {
                // The copy tasks end with this one (aborted on drop).
                let mut pipes = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    pipes.spawn(copy(client_read, server_write, gate.clone()));
                    pipes.spawn(copy(server_read, client_write, gate.clone()));
                }
            }
        });
        TcpRelay { addr, gate, task }
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while the gate passes; once blocked, parks holding both halves open.
/// An end or error on one side is passed on as the same (a FIN as a shutdown, an error as a
/// close of both).
async fn copy(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, gate: Gate) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !gate.pass() {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// The relay for a transport: UDP for QUIC, TCP for HTTP/2.
#[derive(Debug)]
pub enum Relay {
    /// For QUIC.
    Udp(UdpRelay),
    /// For the HTTP/2 transport.
    Tcp(TcpRelay),
}

impl Relay {
    /// A passing relay in front of an edge for `protocol`: `quic` relays over UDP to
    /// `quic_addr`, `http2` over TCP to `http2_addr` (`auto` is QUIC's).
    pub async fn start(
        protocol: ProtocolChoice,
        quic_addr: SocketAddr,
        http2_addr: SocketAddr,
    ) -> Relay {
        match protocol {
            ProtocolChoice::Http2 => Relay::Tcp(TcpRelay::start(http2_addr, true).await),
            _ => Relay::Udp(UdpRelay::start(quic_addr, true).await),
        }
    }

    /// [`Relay::start`] for the current test's transport.
    pub async fn for_transport(quic_addr: SocketAddr, http2_addr: SocketAddr) -> Relay {
        Relay::start(crate::stack::transport(), quic_addr, http2_addr).await
    }

    fn gate(&self) -> &Gate {
        match self {
            Relay::Udp(relay) => &relay.gate,
            Relay::Tcp(relay) => &relay.gate,
        }
    }

    fn bound(&self) -> SocketAddr {
        match self {
            Relay::Udp(relay) => relay.addr,
            Relay::Tcp(relay) => relay.addr,
        }
    }
}
