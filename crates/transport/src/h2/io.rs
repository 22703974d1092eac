//! [`SharedIo`]: the TLS stream under h2, shared so the TLS exporter stays reachable, with
//! counters of the reads and writes that moved bytes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// A handle to one TLS stream. h2 drives it from the connection's driver task; the mutex is
/// held only for the duration of one `poll_*` call (or one exporter call), so it is never
/// contended on the data path.
#[derive(Clone)]
pub(crate) struct SharedIo {
    tls: Arc<Mutex<TlsStream<TcpStream>>>,
    counters: Arc<Counters>,
}

/// Socket reads and writes that moved at least one byte.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
}

impl Counters {
    pub(crate) fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

impl SharedIo {
    pub(crate) fn new(tls: TlsStream<TcpStream>) -> Self {
        Self {
            tls: Arc::new(Mutex::new(tls)),
            counters: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TlsStream<TcpStream>> {
        // A panic while holding the lock cannot leave the stream half-updated in a way we
        // care about more than about the connection itself: keep going.
        self.tls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// End the TCP connection (FIN both ways) while the TLS state stays, so the exporter
    /// keeps answering for handles that outlive the connection.
    pub(crate) fn shut_down(&self) {
        let tls = self.lock();
        let (tcp, _) = tls.get_ref();
        // Fails only if the socket is not connected any more, which is the aim.
        if let Err(error) = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Both) {
            tracing::trace!(%error, "TCP shutdown");
        }
    }

    /// RFC 8446 exporter of the TLS session.
    pub(crate) fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), rustls::Error> {
        let tls = self.lock();
        match &*tls {
            TlsStream::Client(stream) => stream
                .get_ref()
                .1
                .export_keying_material(output, label, Some(context))
                .map(drop),
            TlsStream::Server(stream) => stream
                .get_ref()
                .1
                .export_keying_material(output, label, Some(context))
                .map(drop),
        }
    }
}

impl AsyncRead for SharedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut *self.lock()).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.counters.reads.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut *self.lock()).poll_write(cx, buf);
        self.count_write(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs);
        self.count_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}

impl SharedIo {
    fn count_write(&self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.counters.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}
