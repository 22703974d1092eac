//! The persisted stateless-reset key at the QUIC level: a client connected to an edge that is
//! killed (SIGKILL, no close frame) and started again on the same address and state folder
//! learns at once that its connection is gone, by a stateless reset (which only a server with
//! the same key can produce), not by its idle timeout.
//!
//! The binary is the real `underpass-edge` (Cargo builds it for this test). The wait is for
//! the connection's end, bounded only to catch a hang; the pass is decided by *why* it ended.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use underpass_edge::state::Pki;
use underpass_transport::quic::{self, QuicDialer, QuicSettings};
use underpass_transport::tls::{self, EdgeVerification};
use underpass_transport::Connection;

/// Guards a hang only: far below the 60 s idle timeout, which is what a reset must beat.
const LIMIT: Duration = Duration::from_secs(30);

/// Starts `underpass-edge serve` with `config`, logging to `log`; returns once it says it
/// started.
fn start_edge(config: &Path, log: &Path) -> Child {
    let stderr = std::fs::File::create(log).expect("create the log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_underpass-edge"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn underpass-edge");
    let deadline = Instant::now() + LIMIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("edge started") {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the edge exited with {status}:\n{text}");
        }
        assert!(Instant::now() < deadline, "the edge did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn a_restarted_edge_resets_old_connections_at_once() {
    let dir = tempfile::tempdir().expect("scratch dir");
    let state = dir.path().join("state");
    // A free UDP port, so both runs listen on the same address.
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port();
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nlisten = \"{listen}\"\n",
            state.display().to_string()
        ),
    )
    .expect("write the config");
    let pki = Pki::load_or_generate(&state, "underpass-edge").expect("the PKI");

    let mut first = start_edge(&config, &dir.path().join("edge-1.log"));
    let settings = QuicSettings::default();
    let client_tls =
        tls::client_config(&EdgeVerification::Pin(pki.ca_pin), &[quic::ALPN]).expect("client TLS");
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let dialer = QuicDialer::new(Arc::new(client_tls), &settings, any).expect("a dialer");
    let conn = dialer
        .connect(listen, "underpass-edge")
        .await
        .expect("the handshake with the first run");

    first.kill().expect("SIGKILL the edge");
    first.wait().expect("reap the edge");
    let mut second = start_edge(&config, &dir.path().join("edge-2.log"));

    // The client's next packet (a keep-alive) reaches the new process, which does not know the
    // connection and answers with a stateless reset derived from the persisted key.
    let why = tokio::time::timeout(LIMIT, conn.closed())
        .await
        .expect("the connection ends well before its idle timeout");
    let why = why.to_string();
    assert!(
        why.to_ascii_lowercase().contains("reset"),
        "the connection should end by a stateless reset, not: {why}"
    );
    second.kill().expect("SIGKILL the edge");
    let _ = second.wait();
}
