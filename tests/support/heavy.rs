//! One heavy transfer at a time.
//!
//! The multi-gigabyte and many-stream transfers each use both cores of a small CI machine for
//! a minute or more in a debug build. Run side by side (the test harness runs a binary's tests
//! on parallel threads) they slow each other down past the edge's and connector's timeouts, and
//! a pass would depend on the machine's load. Each heavy test holds [`heavy_lock`] for its
//! whole run, so they run one after another whatever `--test-threads` says; light tests keep
//! running beside them.

use tokio::sync::{Mutex, MutexGuard};

static HEAVY: Mutex<()> = Mutex::const_new(());

/// Waits until no other heavy test of this process runs, and holds the turn until the guard
/// is dropped (a panicking test drops it too: a tokio mutex is not poisoned).
pub async fn heavy_lock() -> MutexGuard<'static, ()> {
    HEAVY.lock().await
}
