//! Helpers shared by the connector's integration tests: one test edge ([`edge::TestEdge`])
//! and, on top of it, one connector-plus-edge builder for exchanges ([`tunnel::Tunnel`]);
//! real origins ([`origins`]) and a test CA ([`pki`]).
//!
//! Each test binary includes this module with `mod support;` and uses part of it.

#![allow(dead_code)]

pub mod edge;
pub mod origins;
pub mod pki;
pub mod tunnel;

use std::future::Future;
use std::time::Duration;

use underpass_transport::RecvStream;

/// Guards against hangs only; no test depends on a timing.
pub const GUARD: Duration = Duration::from_secs(30);

/// Log to the test's output (`RUST_LOG` filters; connector debug by default). A subscriber a
/// test installed first is kept.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "underpass_connector=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Run a test body within [`GUARD`]; panics on an error or a hang.
pub async fn guarded<T>(test: impl Future<Output = anyhow::Result<T>>) -> T {
    tokio::time::timeout(GUARD, test)
        .await
        .expect("test hung")
        .expect("test failed")
}

/// Everything up to the end of the stream.
pub async fn read_to_end(recv: &mut impl RecvStream) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = recv.read_chunk(64 * 1024).await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
