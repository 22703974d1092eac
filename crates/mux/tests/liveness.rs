//! Dead-peer detection and stateless resets over real QUIC on loopback, with a UDP relay in
//! between that can go silent (the peer "killed with SIGKILL": no close, nothing at all) and
//! be pointed at another listener (the edge restarted on the same address).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use underpass_mux::peer_silent;
use underpass_transport::quic::{QuicDialer, QuicListener, QuicSettings, ALPN};
use underpass_transport::tls::{self, DevPki, EdgeVerification};
use underpass_transport::{Connection, StreamError};

/// Bounds every wait; no assertion depends on it being short.
const GUARD: Duration = Duration::from_secs(60);
const NAME: &str = "underpass-edge";

/// A UDP relay on loopback: datagrams from the dialer go to `target`, answers come back,
/// unless `silent` is set (then everything is dropped, both ways).
struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    silent: Arc<AtomicBool>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()); // loopback
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()); // loopback
        let addr = front.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let silent = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, back, target, silent, client) = (
                front.clone(),
                back.clone(),
                target.clone(),
                silent.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    if !silent.load(Ordering::SeqCst) {
                        let to = *target.lock().unwrap();
                        let _ = back.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        {
            let silent = silent.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, _)) = back.recv_from(&mut buf).await {
                    let to = *client.lock().unwrap();
                    if let (false, Some(to)) = (silent.load(Ordering::SeqCst), to) {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        Relay {
            addr,
            target,
            silent,
        }
    }
}

struct Ends {
    pki: DevPki,
    settings: QuicSettings,
    dialer: QuicDialer,
}

impl Ends {
    fn new() -> Ends {
        let pki = DevPki::generate(&[NAME.to_owned()]).unwrap();
        let settings = QuicSettings::default();
        let client = tls::client_config(&EdgeVerification::Pin(pki.ca_pin), &[ALPN]);
        let dialer = QuicDialer::new(
            Arc::new(client.unwrap()),
            &settings,
            "127.0.0.1:0".parse().unwrap(), // loopback
        )
        .unwrap();
        Ends {
            pki,
            settings,
            dialer,
        }
    }

    fn listener(&self, addr: SocketAddr, reset_key: [u8; 32]) -> QuicListener {
        let pki = &self.pki;
        let server = tls::server_config(pki.chain_pem.as_bytes(), pki.key_pem.as_bytes(), &[ALPN]);
        QuicListener::bind_with_reset_key(
            addr,
            Arc::new(server.unwrap()),
            &self.settings,
            reset_key,
        )
        .unwrap()
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap() // loopback
}

#[tokio::test]
async fn a_silent_peer_is_noticed_on_both_sides_and_a_live_one_never() {
    let ends = Ends::new();
    let listener = ends.listener(loopback(), [1; 32]);
    let relay = Relay::start(listener.local_addr()).await;
    let (client, server) = tokio::join!(ends.dialer.connect(relay.addr, NAME), listener.accept());
    let (client, server) = (client.unwrap(), server.unwrap());
    let timeout = ends.settings.peer_timeout().unwrap();

    // Idle but alive (keep-alives flow): three timeouts pass without a false alarm.
    let quiet = tokio::time::timeout(timeout * 3, async {
        tokio::select! {
            silent = peer_silent(&client, timeout) => silent,
            silent = peer_silent(&server, timeout) => silent,
        }
    })
    .await;
    assert!(
        quiet.is_err(),
        "a live, idle peer was declared silent after {quiet:?}"
    );

    // The path goes dark: both ends notice within a few timeouts, not the 60 s idle timeout.
    relay.silent.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let (on_client, on_server) = tokio::time::timeout(GUARD, async {
        tokio::join!(peer_silent(&client, timeout), peer_silent(&server, timeout))
    })
    .await
    .expect("both ends notice the silence");
    let took = started.elapsed();
    println!("silence noticed after {took:?} (client {on_client:?}, server {on_server:?})");
    assert!(on_client >= timeout && on_server >= timeout);
    assert!(took < ends.settings.idle_timeout / 2, "took {took:?}");
}

#[tokio::test]
async fn a_listener_restarted_with_the_same_reset_key_resets_old_connections() {
    let ends = Ends::new();
    let old = ends.listener(loopback(), [7; 32]);
    let relay = Relay::start(old.local_addr()).await;
    let (client, server) = tokio::join!(ends.dialer.connect(relay.addr, NAME), old.accept());
    let client = client.unwrap();
    // The old edge vanishes without a word ("kill -9"); a new one takes over the address.
    relay.silent.store(true, Ordering::SeqCst);
    std::mem::forget(server);
    std::mem::forget(old); // no close frame may leave the old endpoint
    let new = ends.listener(loopback(), [7; 32]);
    *relay.target.lock().unwrap() = new.local_addr();
    relay.silent.store(false, Ordering::SeqCst);

    // The next keep-alive meets a stateless reset the client recognises: it learns at once,
    // before the silence would have told it.
    let started = Instant::now();
    let error = tokio::time::timeout(ends.settings.peer_timeout, client.closed())
        .await
        .expect("the restarted listener resets the old connection");
    println!("reset after {:?}: {error}", started.elapsed());
    assert!(
        matches!(&error, StreamError::ConnectionLost(reason) if reason.contains("reset")),
        "{error}"
    );
}
