//! The bound on concurrent handshakes (`QuicSettings::max_handshakes`) over real UDP on
//! 127.0.0.1. A client whose handshake stalls is made with a UDP relay that passes the
//! client's packets to the edge but holds back the edge's answers until told to, so the
//! stall lasts exactly as long as the test wants: no timing decides anything.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use underpass_transport::quic::{
    QuicConnection, QuicDialer, QuicListener, QuicSettings, TransportError, ALPN,
};
use underpass_transport::tls::{client_config, server_config, DevPki, EdgeVerification};
use underpass_transport::Connection;

/// Guards against hangs only; no test depends on a timing.
const GUARD: Duration = Duration::from_secs(120);
const EDGE_NAME: &str = "edge.underpass.test";

async fn guarded<T>(test: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(GUARD, test)
        .await
        .context("test hung")?
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

struct Edge {
    listener: QuicListener,
    pki: DevPki,
}

fn edge(max_handshakes: usize) -> anyhow::Result<Edge> {
    let pki = DevPki::generate(&[EDGE_NAME.to_string()])?;
    let settings = QuicSettings {
        max_handshakes,
        socket_buffer: 1 << 20,
        ..QuicSettings::default()
    };
    let tls = server_config(pki.chain_pem.as_bytes(), pki.key_pem.as_bytes(), &[ALPN])?;
    let listener = QuicListener::bind(loopback(), Arc::new(tls), &settings)?;
    Ok(Edge { listener, pki })
}

impl Edge {
    fn dialer(&self) -> anyhow::Result<QuicDialer> {
        let tls = client_config(&EdgeVerification::Pin(self.pki.ca_pin), &[ALPN])?;
        let settings = QuicSettings {
            socket_buffer: 1 << 20,
            ..QuicSettings::default()
        };
        Ok(QuicDialer::new(Arc::new(tls), &settings, loopback())?)
    }
}

/// A UDP relay between one client and the edge. Client packets always pass; the edge's are
/// dropped until [`open`](Relay::open) is called. `answered` fires at the edge's first packet,
/// which it sends only once it has taken up the handshake.
struct Relay {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    answered: Option<oneshot::Receiver<()>>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(edge: SocketAddr) -> anyhow::Result<Relay> {
        let socket = UdpSocket::bind(loopback()).await?;
        let addr = socket.local_addr()?;
        let (open, opened) = watch::channel(false);
        let (answer, answered) = oneshot::channel();
        let task = tokio::spawn(relay(socket, edge, opened, answer));
        Ok(Relay {
            addr,
            open,
            answered: Some(answered),
            task,
        })
    }

    /// Resolves once the edge has answered the client's first packet.
    async fn answered(&mut self) -> anyhow::Result<()> {
        self.answered
            .take()
            .context("already waited")?
            .await
            .context("relay ended")
    }

    /// Let the edge's packets through from now on.
    fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    socket: UdpSocket,
    edge: SocketAddr,
    open: watch::Receiver<bool>,
    answer: oneshot::Sender<()>,
) {
    let mut answer = Some(answer);
    let mut client = None;
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let to = if from == edge {
            if let Some(answer) = answer.take() {
                let _ = answer.send(());
            }
            match client {
                Some(client) if *open.borrow() => client,
                _ => continue,
            }
        } else {
            client = Some(from);
            edge
        };
        // Loopback does not drop; a failed send would only mean the test is ending.
        let _ = socket.send_to(&buf[..len], to).await;
    }
}

/// Dial `addr` in a task of its own (keeping the dialer alive with the result).
fn dial_in_background(
    dialer: QuicDialer,
    addr: SocketAddr,
) -> JoinHandle<(Result<QuicConnection, TransportError>, QuicDialer)> {
    tokio::spawn(async move {
        let result = dialer.connect(addr, EDGE_NAME).await;
        (result, dialer)
    })
}

#[tokio::test]
async fn beyond_max_handshakes_new_attempts_are_refused_until_one_ends() -> anyhow::Result<()> {
    guarded(async {
        let edge = edge(1)?;
        let mut relay = Relay::start(edge.listener.local_addr()).await?;

        // A client whose handshake the relay holds up takes the one handshake slot.
        let slow = dial_in_background(edge.dialer()?, relay.addr);
        relay.answered().await?;
        assert_eq!(edge.listener.handshakes(), 1);

        // Another client is refused at once, not queued behind it.
        let refused = edge
            .dialer()?
            .connect(edge.listener.local_addr(), EDGE_NAME)
            .await;
        match refused {
            Err(TransportError::Handshake(message)) => {
                assert!(message.contains("refused"), "{message}");
            }
            Ok(_) => anyhow::bail!("a second handshake was let in beyond max_handshakes = 1"),
            Err(other) => anyhow::bail!("unexpected error {other}"),
        }

        // The stalled handshake completes once the edge's packets get through; its
        // connection is accepted and the slot is free again.
        relay.open();
        let (slow, _slow_dialer) = slow.await?;
        let _slow = slow?;
        let accepted = edge.listener.accept().await.context("listener closed")?;
        assert_eq!(accepted.remote_address(), relay.addr);
        assert_eq!(edge.listener.handshakes(), 0);

        let third_dialer = edge.dialer()?;
        let _third = third_dialer
            .connect(edge.listener.local_addr(), EDGE_NAME)
            .await?;
        let accepted = edge.listener.accept().await.context("listener closed")?;
        assert_eq!(accepted.remote_address(), third_dialer.local_addr()?);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn close_ends_a_stalled_handshake() -> anyhow::Result<()> {
    guarded(async {
        let edge = edge(4)?;
        let mut relay = Relay::start(edge.listener.local_addr()).await?;
        let _slow = dial_in_background(edge.dialer()?, relay.addr);
        relay.answered().await?;
        assert_eq!(edge.listener.handshakes(), 1);

        // Closing does not wait for the client: the handshake task ends, the slot is given
        // back, accept reports the end, and waiting for idle returns.
        edge.listener.close();
        edge.listener.wait_idle().await;
        assert_eq!(edge.listener.handshakes(), 0);
        assert!(edge.listener.accept().await.is_none());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn zero_max_handshakes_is_refused_at_bind() -> anyhow::Result<()> {
    guarded(async {
        match edge(0) {
            Err(error) => {
                let message = error.to_string();
                assert!(message.contains("max_handshakes"), "{message}");
            }
            Ok(_) => anyhow::bail!("max_handshakes = 0 was accepted"),
        }
        Ok(())
    })
    .await
}
