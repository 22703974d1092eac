//! The connector's tracing spans do not grow: each connection attempt has a span of its own
//! (`slot{index}:connection{edge, addr, connection_id}`), so however often a slot reconnects,
//! a log line carries one edge and one connection id at most.
//!
//! Its own test binary: it installs the process-wide subscriber that captures the output.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tracing_subscriber::fmt::MakeWriter;
use underpass_connector::{ConnectionState, Connector};
use underpass_mux::{open_tcp, OpenError};
use underpass_proto::{DialTarget, Origin, RequestId, TcpConnect};
use underpass_transport::Connection;

use support::edge::TestEdge;
use support::{guarded, GUARD};

/// Log output kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

const RECONNECTS: u64 = 4;

#[tokio::test]
async fn each_line_names_one_edge_and_one_connection_id_across_reconnects() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_env_filter("underpass_connector=debug")
        .with_ansi(false)
        .with_writer(captured.clone())
        .init();
    guarded(async {
        let edge = TestEdge::start();
        let handle = Connector::start(edge.config().build()?)?;
        // A port with nothing listening: every stream is refused, which logs in its span.
        let closed: SocketAddr = TcpListener::bind("127.40.0.9:0").await?.local_addr()?;
        for id in 1..=RECONNECTS + 1 {
            let registration = edge.accept(id, 0).await?;
            handle
                .wait_for(GUARD, |states| {
                    states.iter().any(|s| {
                        matches!(s, ConnectionState::Registered { connection_id, .. }
                            if *connection_id == id)
                    })
                })
                .await?;
            let connect = TcpConnect {
                origin: Origin::Dial(DialTarget::from(closed)),
                request_id: RequestId(7),
            };
            match open_tcp(&registration.conn, connect, GUARD).await {
                Err(OpenError::Refused(_)) => {}
                Err(e) => anyhow::bail!("{e}"),
                Ok(_) => anyhow::bail!("a closed port accepted"),
            }
            // The edge restarts: the connection goes, the slot reconnects.
            registration.conn.close(0, b"edge restarting");
        }
        handle.shutdown().await?;
        Ok(())
    })
    .await;

    let lines = captured.lines();
    for line in &lines {
        assert!(line.matches("edge=").count() <= 1, "{line}");
        assert!(line.matches("connection_id=").count() <= 1, "{line}");
    }
    // Not vacuous: the lines of the last connection carry its edge and id, once.
    let last = format!("connection_id={}", RECONNECTS + 1);
    let registered: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("registered with the edge"))
        .collect();
    assert_eq!(registered.len() as u64, RECONNECTS + 1, "{lines:#?}");
    assert!(
        registered
            .iter()
            .all(|l| l.contains("slot{index=0}:connection{edge=") && l.contains(" addr=")),
        "{registered:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&last) && l.contains("stream{id=0")),
        "no stream line of the last connection: {lines:#?}"
    );
}
