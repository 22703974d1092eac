//! A load generator for bindings that counts how every request ended.
//!
//! Workers loop, one request at a time each, until stopped: `connect()` workers send
//! `CONNECT target` to a network binding and pipe [`pattern`] bytes through an
//! [`crate::EchoServer`] (paced writes, the echo checked byte by byte, then a half-close and
//! the echo's EOF); `fetch()` workers send an absolute-form `GET` for a
//! [`crate::pattern_origin::PatternOrigin`] body (paced by the origin) and check every body
//! byte. Paced payloads keep requests in flight all the time, so a kill always cuts some.
//!
//! Each request ends in exactly one [`Outcome`]. The distinction that matters: an aborted
//! stream must reach the client as an abort ([`Outcome::Reset`], or a `502` with
//! `Proxy-Status: connection_terminated` before any payload), never as a clean end before the
//! whole payload ([`Outcome::CleanEof`]: a FIN, or a clean chunked end), which a client would
//! take for a complete answer.

use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::http1::proxy_error;
use crate::pattern;
use crate::pattern_origin::PatternOrigin;

/// Which kind of binding request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `fetch()`: an absolute-form `GET` through the binding.
    Fetch,
    /// `connect()`: a `CONNECT` pipe through the binding.
    Connect,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Fetch => "fetch",
            Kind::Connect => "connect",
        })
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every payload byte arrived, correct, and the exchange ended cleanly.
    Ok,
    /// A non-2xx answer before any payload (the proxy's own error answer).
    Status {
        /// The status code.
        code: u16,
        /// The `Proxy-Status` error type, if any.
        proxy_status: Option<String>,
    },
    /// A read or write failed (connection reset, broken pipe): the client saw an abort.
    Reset {
        /// The error kind.
        kind: ErrorKind,
        /// Payload bytes received before it.
        received: u64,
    },
    /// The connection ended cleanly (FIN, or a clean chunked end) before the whole payload:
    /// a cut stream that looks complete. Data corruption from the client's point of view.
    CleanEof {
        /// Payload bytes received.
        received: u64,
        /// Payload bytes expected.
        expected: u64,
    },
    /// A payload byte differs from the pattern (or there are more bytes than asked for).
    Corrupt {
        /// Offset of the first wrong byte.
        at: u64,
    },
    /// Nothing arrived for the stall limit.
    Hang {
        /// Payload bytes received before the silence.
        received: u64,
    },
    /// The answer was not HTTP as expected (with what was wrong).
    Protocol(String),
    /// The binding's listener could not be reached at all.
    Unreachable(String),
}

impl Outcome {
    /// True for [`Outcome::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// True for an abort as the client must see one when the stream's connection was lost:
    /// a reset, or `502` with `Proxy-Status: connection_terminated` before the head.
    pub fn is_abort(&self) -> bool {
        match self {
            Outcome::Reset { .. } => true,
            Outcome::Status { code, proxy_status } => {
                *code == 502 && proxy_status.as_deref() == Some("connection_terminated")
            }
            _ => false,
        }
    }

    /// A short label for counting (`ok`, `reset`, `status 502 connection_terminated`, …).
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Status { code, proxy_status } => match proxy_status {
                Some(error) => format!("status {code} {error}"),
                None => format!("status {code}"),
            },
            Outcome::Reset { .. } => "reset".to_owned(),
            Outcome::CleanEof { .. } => "CLEAN EOF".to_owned(),
            Outcome::Corrupt { .. } => "CORRUPT".to_owned(),
            Outcome::Hang { .. } => "HANG".to_owned(),
            Outcome::Protocol(_) => "protocol error".to_owned(),
            Outcome::Unreachable(_) => "binding unreachable".to_owned(),
        }
    }
}

/// One finished request.
#[derive(Debug, Clone)]
pub struct Record {
    /// What kind of request.
    pub kind: Kind,
    /// Which worker sent it.
    pub worker: usize,
    /// When it started (before the TCP connect to the binding).
    pub started: Instant,
    /// When the proxy's answer head arrived, if it did.
    pub head_at: Option<Instant>,
    /// When its outcome was decided.
    pub ended: Instant,
    /// How it ended.
    pub outcome: Outcome,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} #{} ({:?} long): {:?}",
            self.kind,
            self.worker,
            self.ended.duration_since(self.started),
            self.outcome
        )
    }
}

/// What the load sends; [`LoadSpec::new`] then the builder methods.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    binding: SocketAddr,
    connect_target: Option<SocketAddr>,
    fetch_origin: Option<SocketAddr>,
    connect_workers: usize,
    fetch_workers: usize,
    len: u64,
    chunk: usize,
    pace: Duration,
    stall: Duration,
}

impl LoadSpec {
    /// Load on the network binding at `binding`: no workers yet; 64 KiB payloads in 4 KiB
    /// chunks 50 ms apart (about 0.8 s a request), 10 s stall limit.
    pub fn new(binding: SocketAddr) -> Self {
        LoadSpec {
            binding,
            connect_target: None,
            fetch_origin: None,
            connect_workers: 0,
            fetch_workers: 0,
            len: 64 * 1024,
            chunk: 4096,
            pace: Duration::from_millis(50),
            stall: Duration::from_secs(10),
        }
    }

    /// `workers` `connect()` loops to the echo server at `target`.
    pub fn connect(mut self, target: SocketAddr, workers: usize) -> Self {
        self.connect_target = Some(target);
        self.connect_workers = workers;
        self
    }

    /// `workers` `fetch()` loops to the pattern origin at `origin`.
    pub fn fetch(mut self, origin: SocketAddr, workers: usize) -> Self {
        self.fetch_origin = Some(origin);
        self.fetch_workers = workers;
        self
    }

    /// Payload bytes per request, written `chunk` bytes at a time, `pace` apart.
    pub fn payload(mut self, len: u64, chunk: usize, pace: Duration) -> Self {
        self.len = len;
        self.chunk = chunk.max(1);
        self.pace = pace;
        self
    }

    /// How long a request may receive nothing before it counts as [`Outcome::Hang`].
    pub fn stall(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }
}

/// Running load; [`Load::stop`] ends it and returns every record.
#[derive(Debug)]
pub struct Load {
    kinds: Vec<Kind>,
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

fn lock(records: &Mutex<Vec<Record>>) -> MutexGuard<'_, Vec<Record>> {
    // Only pushes happen under the lock: a panic cannot leave the list inconsistent.
    records.lock().unwrap_or_else(|e| e.into_inner())
}

impl Load {
    /// Starts the workers on the current tokio runtime.
    pub fn start(spec: LoadSpec) -> Load {
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let mut worker = 0;
        let mut kinds = Vec::new();
        for (kind, count) in [
            (Kind::Connect, spec.connect_workers),
            (Kind::Fetch, spec.fetch_workers),
        ] {
            if count > 0 {
                kinds.push(kind);
            }
            for _ in 0..count {
                let spec = spec.clone();
                let records = records.clone();
                let stop = stop.clone();
                let id = worker;
                worker += 1;
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let record = run_one(&spec, kind, id).await;
                        let failed = !record.outcome.is_ok();
                        lock(&records).push(record);
                        if failed {
                            // Do not spin on a binding that refuses everything.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }));
            }
        }
        Load {
            kinds,
            records,
            stop,
            tasks,
        }
    }

    /// The records so far.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.records).clone()
    }

    /// How many requests of `kind` ended [`Outcome::Ok`] so far.
    pub fn ok_count(&self, kind: Kind) -> usize {
        lock(&self.records)
            .iter()
            .filter(|r| r.kind == kind && r.outcome.is_ok())
            .count()
    }

    /// Waits (polling, at most `timeout`) until `n` more requests of each kind that has
    /// workers have succeeded than when called; false on timeout.
    pub async fn wait_more_ok(&self, n: usize, timeout: Duration) -> bool {
        let base: Vec<usize> = self.kinds.iter().map(|k| self.ok_count(*k)).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let done = self
                .kinds
                .iter()
                .zip(&base)
                .all(|(kind, base)| self.ok_count(*kind) >= base + n);
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops starting requests, waits for the ones in flight (each bounded by the stall
    /// limit) and returns every record.
    pub async fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            // A worker that panicked lost one record at most; the report shows the rest.
            let _ = task.await;
        }
        let records = lock(&self.records).clone();
        Report { records }
    }
}

/// Every record of a load run, with counting helpers.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every finished request, in the order they ended.
    pub records: Vec<Record>,
}

impl Report {
    /// How many records match `pred`.
    pub fn count(&self, pred: impl Fn(&Record) -> bool) -> usize {
        self.records.iter().filter(|r| pred(r)).count()
    }

    /// Counts by kind and outcome label.
    pub fn counts(&self) -> BTreeMap<(Kind, String), usize> {
        let mut counts = BTreeMap::new();
        for record in &self.records {
            *counts
                .entry((record.kind, record.outcome.label()))
                .or_insert(0) += 1;
        }
        counts
    }

    /// The records that did not end [`Outcome::Ok`].
    pub fn failures(&self) -> Vec<&Record> {
        self.records.iter().filter(|r| !r.outcome.is_ok()).collect()
    }

    /// `connect: ok 120, reset 3; fetch: ok 118` (for messages).
    pub fn summary(&self) -> String {
        let mut by_kind: BTreeMap<Kind, Vec<String>> = BTreeMap::new();
        for ((kind, label), n) in self.counts() {
            by_kind
                .entry(kind)
                .or_default()
                .push(format!("{label} {n}"));
        }
        if by_kind.is_empty() {
            return "no requests".to_owned();
        }
        by_kind
            .into_iter()
            .map(|(kind, parts)| format!("{kind}: {}", parts.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

async fn run_one(spec: &LoadSpec, kind: Kind, worker: usize) -> Record {
    let started = Instant::now();
    let (outcome, head_at) = match kind {
        Kind::Connect => {
            let target = spec.connect_target.expect("connect workers have a target");
            connect_exchange(
                spec.binding,
                target,
                spec.len,
                spec.chunk,
                spec.pace,
                spec.stall,
            )
            .await
        }
        Kind::Fetch => {
            let origin = spec.fetch_origin.expect("fetch workers have an origin");
            fetch_exchange(
                spec.binding,
                origin,
                spec.len,
                spec.chunk,
                spec.pace,
                spec.stall,
            )
            .await
        }
    };
    Record {
        kind,
        worker,
        started,
        head_at,
        ended: Instant::now(),
        outcome,
    }
}

/// One `connect()` through `binding` to the echo server `target`: `len` pattern bytes out,
/// `chunk` at a time `pace` apart, checked as they come back, then a half-close and the
/// echo's EOF. Returns the outcome and when the proxy's answer arrived.
pub async fn connect_exchange(
    binding: SocketAddr,
    target: SocketAddr,
    len: u64,
    chunk: usize,
    pace: Duration,
    stall: Duration,
) -> (Outcome, Option<Instant>) {
    let mut stream = match open(binding, stall).await {
        Ok(stream) => stream,
        Err(outcome) => return (outcome, None),
    };
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return (reset(e.kind(), 0), None);
    }
    let mut reader = Reader::new(stall);
    let head = match reader.head(&mut stream, len).await {
        Ok(head) => head,
        Err(outcome) => return (outcome, None),
    };
    let head_at = Some(Instant::now());
    if head.status != 200 {
        return (head.error_outcome(), head_at);
    }
    let (mut read_half, mut write_half) = stream.into_split();
    let writer = async move {
        let mut sent = 0u64;
        let mut buf = vec![0u8; chunk];
        while sent < len {
            if sent > 0 && !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            let n = (len - sent).min(chunk as u64) as usize;
            pattern::fill(sent, &mut buf[..n]);
            write_half.write_all(&buf[..n]).await?;
            sent += n as u64;
        }
        write_half.shutdown().await?;
        // Keep the write half alive until the reader is done: dropping it is not a reset,
        // but keeping it makes the end of the exchange the reader's to decide.
        Ok::<_, std::io::Error>(write_half)
    };
    let read = reader.body_to_eof(&mut read_half, len);
    tokio::pin!(writer, read);
    let mut written = None;
    let outcome = loop {
        tokio::select! {
            outcome = &mut read => break outcome,
            result = &mut writer, if written.is_none() => written = Some(result),
        }
    };
    // A failed write with a silent read side is a reset the reader would only have seen as
    // a stall.
    let outcome = match (outcome, written) {
        (Outcome::Hang { received }, Some(Err(e))) => Outcome::Reset {
            kind: e.kind(),
            received,
        },
        (outcome, _) => outcome,
    };
    (outcome, head_at)
}

/// One `fetch()` through `binding`: `GET http://ORIGIN/pattern/LEN…` with
/// `Connection: close`, every body byte checked. Returns the outcome and when the head
/// arrived.
pub async fn fetch_exchange(
    binding: SocketAddr,
    origin: SocketAddr,
    len: u64,
    chunk: usize,
    pace: Duration,
    stall: Duration,
) -> (Outcome, Option<Instant>) {
    let mut stream = match open(binding, stall).await {
        Ok(stream) => stream,
        Err(outcome) => return (outcome, None),
    };
    let path = PatternOrigin::path(len, chunk, pace);
    let request = format!(
        "GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return (reset(e.kind(), 0), None);
    }
    let mut reader = Reader::new(stall);
    let head = match reader.head(&mut stream, len).await {
        Ok(head) => head,
        Err(outcome) => return (outcome, None),
    };
    let head_at = Some(Instant::now());
    if head.status != 200 {
        return (head.error_outcome(), head_at);
    }
    let outcome = match head.framing() {
        Ok(Framing::Length(n)) if n != len => {
            Outcome::Protocol(format!("Content-Length {n}, asked for {len}"))
        }
        Ok(Framing::Length(_)) => reader.body_exact(&mut stream, len).await,
        Ok(Framing::Chunked) => reader.body_chunked(&mut stream, len).await,
        Ok(Framing::UntilEof) => reader.body_to_eof(&mut stream, len).await,
        Err(e) => Outcome::Protocol(e),
    };
    (outcome, head_at)
}

async fn open(binding: SocketAddr, stall: Duration) -> Result<TcpStream, Outcome> {
    match tokio::time::timeout(stall, TcpStream::connect(binding)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(Outcome::Unreachable(format!("connect {binding}: {e}"))),
        Err(_) => Err(Outcome::Unreachable(format!(
            "connect {binding}: no answer within {stall:?}"
        ))),
    }
}

fn reset(kind: ErrorKind, received: u64) -> Outcome {
    Outcome::Reset { kind, received }
}

/// The parts of a response head the load looks at.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

enum Framing {
    Length(u64),
    Chunked,
    UntilEof,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn error_outcome(&self) -> Outcome {
        Outcome::Status {
            code: self.status,
            proxy_status: self
                .header("proxy-status")
                .and_then(proxy_error)
                .map(str::to_owned),
        }
    }

    fn framing(&self) -> Result<Framing, String> {
        if self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return Ok(Framing::Chunked);
        }
        match self.header("content-length") {
            Some(len) => len
                .trim()
                .parse()
                .map(Framing::Length)
                .map_err(|_| format!("bad Content-Length {len:?}")),
            None => Ok(Framing::UntilEof),
        }
    }
}

/// How a read for more bytes ended, when it brought none.
enum End {
    Eof,
    Io(ErrorKind),
    Stall,
}

/// Reads a response incrementally, checking payload bytes against the pattern.
struct Reader {
    buf: Vec<u8>,
    received: u64,
    stall: Duration,
}

impl Reader {
    fn new(stall: Duration) -> Self {
        Reader {
            buf: Vec::new(),
            received: 0,
            stall,
        }
    }

    /// Reads more bytes into the buffer.
    async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> Result<(), End> {
        let mut scratch = [0u8; 16 * 1024];
        match tokio::time::timeout(self.stall, stream.read(&mut scratch)).await {
            Err(_) => Err(End::Stall),
            Ok(Err(e)) => Err(End::Io(e.kind())),
            Ok(Ok(0)) => Err(End::Eof),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&scratch[..n]);
                Ok(())
            }
        }
    }

    fn ended(&self, end: End, expected: u64) -> Outcome {
        match end {
            End::Eof => Outcome::CleanEof {
                received: self.received,
                expected,
            },
            End::Io(kind) => reset(kind, self.received),
            End::Stall => Outcome::Hang {
                received: self.received,
            },
        }
    }

    /// Reads the response head; the bytes after it stay in the buffer.
    async fn head<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        expected: u64,
    ) -> Result<Head, Outcome> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let head = Head {
                        status: parsed.code.unwrap_or(0),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                    };
                    self.buf.drain(..head_len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if self.buf.len() < 64 * 1024 => {}
                Ok(httparse::Status::Partial) => {
                    return Err(Outcome::Protocol("response head over 64 KiB".to_owned()))
                }
                Err(e) => {
                    return Err(Outcome::Protocol(format!(
                        "bad response head ({e}): {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )))
                }
            }
            if let Err(end) = self.fill(stream).await {
                return Err(self.ended(end, expected));
            }
        }
    }

    /// Checks `n` buffered bytes as payload and drops them from the buffer.
    fn take(&mut self, n: usize, expected: u64) -> Result<(), Outcome> {
        if self.received + n as u64 > expected {
            return Err(Outcome::Corrupt { at: expected });
        }
        let mut want = vec![0u8; n];
        pattern::fill(self.received, &mut want);
        if let Some(i) = want.iter().zip(&self.buf[..n]).position(|(a, b)| a != b) {
            return Err(Outcome::Corrupt {
                at: self.received + i as u64,
            });
        }
        self.buf.drain(..n);
        self.received += n as u64;
        Ok(())
    }

    /// A body of exactly `expected` bytes (`Content-Length`).
    async fn body_exact<S: AsyncRead + Unpin>(&mut self, stream: &mut S, expected: u64) -> Outcome {
        while self.received < expected {
            if self.buf.is_empty() {
                if let Err(end) = self.fill(stream).await {
                    return self.ended(end, expected);
                }
            }
            let n = self.buf.len().min((expected - self.received) as usize);
            if let Err(outcome) = self.take(n, expected) {
                return outcome;
            }
        }
        Outcome::Ok
    }

    /// A body that ends with the connection (a `CONNECT` pipe's echo, or a response without
    /// framing): `expected` bytes, then a clean EOF.
    async fn body_to_eof<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        expected: u64,
    ) -> Outcome {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len();
                if let Err(outcome) = self.take(n, expected) {
                    return outcome;
                }
            }
            match self.fill(stream).await {
                Ok(()) => {}
                Err(End::Eof) if self.received == expected => return Outcome::Ok,
                Err(end) => return self.ended(end, expected),
            }
        }
    }

    /// A chunked body: `expected` bytes, then the last chunk.
    async fn body_chunked<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        expected: u64,
    ) -> Outcome {
        loop {
            let line = loop {
                if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break end;
                }
                if self.buf.len() > 1024 {
                    return Outcome::Protocol("chunk size line over 1 KiB".to_owned());
                }
                if let Err(end) = self.fill(stream).await {
                    return self.ended(end, expected);
                }
            };
            let text = String::from_utf8_lossy(&self.buf[..line]).into_owned();
            let size_text = text.split(';').next().unwrap_or("").trim();
            let Ok(mut size) = u64::from_str_radix(size_text, 16) else {
                return Outcome::Protocol(format!("bad chunk size line {text:?}"));
            };
            self.buf.drain(..line + 2);
            if size == 0 {
                // The clean end of the body: complete only if every byte came.
                return if self.received == expected {
                    Outcome::Ok
                } else {
                    Outcome::CleanEof {
                        received: self.received,
                        expected,
                    }
                };
            }
            while size > 0 {
                if self.buf.is_empty() {
                    if let Err(end) = self.fill(stream).await {
                        return self.ended(end, expected);
                    }
                }
                let n = self.buf.len().min(size as usize);
                if let Err(outcome) = self.take(n, expected) {
                    return outcome;
                }
                size -= n as u64;
            }
            while self.buf.len() < 2 {
                if let Err(end) = self.fill(stream).await {
                    return self.ended(end, expected);
                }
            }
            if &self.buf[..2] != b"\r\n" {
                return Outcome::Protocol("chunk not followed by CRLF".to_owned());
            }
            self.buf.drain(..2);
        }
    }
}

/// Writes everything to `stream` (for tests that drive one exchange by hand).
pub async fn write_pattern<S: AsyncWrite + Unpin>(stream: &mut S, len: u64) -> std::io::Result<()> {
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while sent < len {
        let n = (len - sent).min(buf.len() as u64) as usize;
        pattern::fill(sent, &mut buf[..n]);
        stream.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    Ok(())
}
