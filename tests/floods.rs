//! Floods against a binding listener (issue 15, point 2): the real `underpass-edge` binary, an
//! in-process connector, real sockets on loopback.
//!
//! Asserted: the edge-wide connection limit refuses a connection at once (`503
//! connection_limit_reached`) when nothing is idle and sheds an idle one otherwise, never a busy
//! one; out of descriptors, the edge sheds idle connections and serves a legitimate client
//! without logging a line per failed accept; a head not finished within `header_read_ms` is
//! closed; under floods of unfinished heads and of idle connections the edge's memory (RSS
//! from `/proc`) stays under a bound and a legitimate client is served. Timings and memory
//! figures are printed for the record; a timing never decides a pass (the timeouts only guard
//! a hang).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use underpass_connector::{Connector, ConnectorConfig, ConnectorHandle};
use underpass_e2e::edge_home::{EdgeHome, EdgeRun};
use underpass_e2e::edge_process::TUNNEL;
use underpass_e2e::http1::{self, parse_response, Response};
use underpass_e2e::pattern_origin::PatternOrigin;
use underpass_e2e::{heavy_lock, EchoServer};

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(20);
/// The body the legitimate client asks the origin for.
const BODY_LEN: u64 = 1000;
/// The bound on the edge's memory under the floods (issue 15: "below 200 MB"; measured
/// 144-149 MB at the peak, 191 MB before `limits.max_idle_client_connections`).
const RSS_BOUND_KB: u64 = 180 * 1024;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test IP")
}

/// The edge (real binary), its connector (in-process, one connection) and an origin.
struct Flooded {
    edge: EdgeRun,
    _connector: ConnectorHandle,
    origin: PatternOrigin,
    _home: EdgeHome,
}

impl Flooded {
    /// Network `net` on the tunnel, bindings named `bindings` (with `binding_keys` added to
    /// each), `extra` TOML after them; the connector routes `subnet`, the origin is on
    /// `origin_ip`.
    async fn start(
        bindings: &[&str],
        binding_keys: &str,
        extra: &str,
        subnet: &str,
        origin_ip: &str,
    ) -> Flooded {
        let origin = PatternOrigin::start(ip(origin_ip));
        let mut sections = format!("[[network]]\nname = \"net\"\ntunnel = \"{TUNNEL}\"\n\n");
        for name in bindings {
            sections.push_str(&format!(
                "[[binding]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"net\"\n\
                 {binding_keys}\n\n"
            ));
        }
        sections.push_str(extra);
        let home = EdgeHome::create(&sections);
        let edge = home.start().await;
        let config = ConnectorConfig::builder(home.token())
            .route(subnet)
            .connections(1)
            .build()
            .expect("a valid connector config");
        let connector = Connector::start(config).expect("the connector starts");
        connector
            .wait_registered(LIMIT)
            .await
            .unwrap_or_else(|e| panic!("the connector registers: {e}\n{}", edge.output()));
        Flooded {
            edge,
            _connector: connector,
            origin,
            _home: home,
        }
    }

    fn proxy(&self, binding: &str) -> SocketAddr {
        self.edge.binding_addr(binding)
    }

    /// The legitimate client: a `fetch()` of [`BODY_LEN`] bytes on a new connection to
    /// `binding`. Returns the answer and how long it took, connect included.
    async fn fetch(&self, binding: &str) -> (Response, Duration) {
        let started = Instant::now();
        let response = tokio::time::timeout(LIMIT, fetch_once(self.proxy(binding), self.url()))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the legitimate fetch() hung for {LIMIT:?}\n{}",
                    self.edge.output()
                )
            })
            .unwrap_or_else(|e| panic!("the legitimate fetch() failed: {e:#}"));
        (response, started.elapsed())
    }

    /// Asserts that the legitimate client is served: `200` and the whole body.
    #[track_caller]
    fn assert_served(&self, response: &Response) {
        assert_eq!(
            (response.status, response.body.len() as u64),
            (200, BODY_LEN),
            "the legitimate fetch() was not served: {} {:?}\n{}",
            response.status,
            response.headers,
            response.text()
        );
    }

    fn url(&self) -> String {
        format!(
            "http://{}{}",
            self.origin.addr(),
            PatternOrigin::path(BODY_LEN, BODY_LEN as usize, Duration::ZERO)
        )
    }

    fn rss_kb(&self) -> u64 {
        rss_kb(self.edge.pid())
    }

    fn descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.edge.pid()))
            .map(Iterator::count)
            .unwrap_or(0)
    }
}

/// One `GET url` with `Connection: close` through the proxy at `proxy`.
async fn fetch_once(proxy: SocketAddr, url: String) -> anyhow::Result<Response> {
    let stream = TcpStream::connect(proxy).await?;
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let request = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    http1::exchange(stream, request.as_bytes()).await
}

/// One keep-alive `GET url` on `stream`: the response head and its `Content-Length` body are
/// read, the connection stays open (idle between requests). Returns the status.
async fn request_keep_alive(stream: &mut TcpStream, url: &str) -> anyhow::Result<u16> {
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let request = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed before a whole head");
        seen.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line in {head:?}"))?;
    let length: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    while seen.len() < head_end + length {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed before the whole body");
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(status)
}

/// Reads from `stream` until the edge closes it; what it sent, or `None` on a hang.
async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(LIMIT, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The resident memory of process `pid`, in KiB (`VmRSS` of `/proc/PID/status`).
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The highest RSS of a process, sampled every 10 ms on a thread until stopped.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn sample(pid: u32) -> PeakRss {
        let (stop, peak) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        PeakRss {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak in KiB.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// The edge's side of the connections to `listen`, from `/proc/net/tcp`: how many are
/// established and how many bytes they hold that the edge has not read yet.
fn unread(listen: SocketAddr) -> (usize, u64) {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = encode(listen);
    let mut count = 0;
    let mut bytes = 0;
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local remote st tx_queue:rx_queue …; state 01 is ESTABLISHED.
        if fields.len() > 4 && fields[1].eq_ignore_ascii_case(&local) && fields[3] == "01" {
            count += 1;
            let rx = fields[4].split(':').nth(1).unwrap_or("0");
            bytes += u64::from_str_radix(rx, 16).unwrap_or(0);
        }
    }
    (count, bytes)
}

/// Client sockets still established to `proxy` (the edge has not closed them), from
/// `/proc/net/tcp`.
fn established_to(proxy: SocketAddr) -> usize {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let remote = encode(proxy);
    text.lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[2].eq_ignore_ascii_case(&remote) && fields[3] == "01"
        })
        .count()
}

/// An IPv4 address as `/proc/net/tcp` prints it.
fn encode(addr: SocketAddr) -> String {
    let IpAddr::V4(v4) = addr.ip() else {
        panic!("the bindings listen on IPv4 loopback")
    };
    format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.octets()),
        addr.port()
    )
}

/// Waits until the edge has read every byte its clients on `listen` sent (or [`LIMIT`]).
async fn wait_all_read(listen: SocketAddr) -> (usize, u64) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let (count, bytes) = unread(listen);
        if bytes == 0 || Instant::now() >= deadline {
            return (count, bytes);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens `count` connections to `proxy`, each sending `bytes` of a request head that never
/// ends (header lines, no blank line), in 16 KiB writes; stops writing on a connection the
/// edge has closed. Returns the connections still open on the client side and how many were
/// cut by the edge.
async fn unfinished_heads(
    proxy: SocketAddr,
    url: &str,
    count: usize,
    bytes: usize,
) -> (Vec<TcpStream>, usize) {
    let mut head = format!("GET {url} HTTP/1.1\r\nHost: flood.test\r\n").into_bytes();
    let line = format!("X-Flood: {}\r\n", "a".repeat(1000));
    while head.len() < bytes {
        head.extend_from_slice(line.as_bytes());
    }
    head.truncate(bytes);
    let head: Arc<[u8]> = head.into();
    let mut open = Vec::with_capacity(count);
    let mut cut = 0;
    // In batches that the edge has read before the next one: all at once, they would overflow
    // the listen backlog, and the kernel's SYN-flood defence would reset some of them.
    for first in (0..count).step_by(BATCH) {
        let (batch, batch_cut) = unfinished_batch(proxy, &head, BATCH.min(count - first)).await;
        wait_all_read(proxy).await;
        open.extend(batch);
        cut += batch_cut;
    }
    (open, cut)
}

/// Connections a flood opens at once.
const BATCH: usize = 250;

/// `count` connections of [`unfinished_heads`], at once.
async fn unfinished_batch(
    proxy: SocketAddr,
    head: &Arc<[u8]>,
    count: usize,
) -> (Vec<TcpStream>, usize) {
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        let head = head.clone();
        tasks.spawn(async move {
            let mut stream = TcpStream::connect(proxy).await.ok()?;
            for chunk in head.chunks(16 * 1024) {
                match tokio::time::timeout(LIMIT, stream.write_all(chunk)).await {
                    Ok(Ok(())) => {}
                    _ => return Some((stream, true)),
                }
            }
            Some((stream, false))
        });
    }
    let mut open = Vec::with_capacity(count);
    let mut cut = 0;
    while let Some(done) = tasks.join_next().await {
        match done.expect("a flood task") {
            Some((stream, was_cut)) => {
                cut += usize::from(was_cut);
                open.push(stream);
            }
            None => cut += 1,
        }
    }
    (open, cut)
}

/// Opens `count` connections to `proxy` that send nothing.
async fn silent_connections(proxy: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        tasks.spawn(async move { TcpStream::connect(proxy).await });
    }
    let mut open = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        open.push(
            done.expect("a connect task").expect(
                "connect to the binding (the kernel queues what the edge has not accepted)",
            ),
        );
    }
    open
}

/// `CONNECT target` through `proxy`; the open tunnel after its `200`, checked with one echo.
async fn echo_pipe(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let answer = http1::connect(proxy, &target.to_string(), LIMIT).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let mut stream = answer.stream;
    echo(&mut stream, b"ping").await;
    stream
}

async fn echo(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.expect("write to the pipe");
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(LIMIT, stream.read_exact(&mut back))
        .await
        .expect("the echo in time")
        .expect("the pipe is open");
    assert_eq!(back, message);
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|line| line.contains(needle)).count()
}

/// At `limits.max_client_connections`, all bindings together: with every connection busy (two
/// `CONNECT` pipes on each of two bindings) a new one is refused at once with `503
/// connection_limit_reached`, on either binding, whether it sent a request or not; with one
/// connection idle between requests, a new client takes its place and is served, the idle one
/// is closed, and the busy pipes still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_wide_limit_refuses_at_once_or_sheds_an_idle_connection() {
    let echo_server = EchoServer::start(ip("127.20.52.1"));
    let flooded = Flooded::start(
        &["a", "b"],
        "",
        "[limits]\nmax_client_connections = 4\n",
        "127.20.52.0/24",
        "127.20.52.2",
    )
    .await;
    let (a, b) = (flooded.proxy("a"), flooded.proxy("b"));
    let mut pipes = Vec::new();
    for proxy in [a, a, b, b] {
        pipes.push(echo_pipe(proxy, echo_server.addr()).await);
    }

    // Four busy connections: nothing to shed, so a fifth is refused at once.
    let started = Instant::now();
    let mut silent = TcpStream::connect(a).await.expect("connect");
    let refused = read_until_closed(&mut silent)
        .await
        .expect("a refusal, not a hang");
    let refused = parse_response(&refused).expect("an HTTP answer");
    refused.assert_proxy_error(503, "connection_limit_reached");
    let (asked, _) = flooded.fetch("b").await;
    asked.assert_proxy_error(503, "connection_limit_reached");
    println!(
        "at the limit, all busy: refused with 503 connection_limit_reached in {:?}",
        started.elapsed()
    );

    // One pipe ends; its place goes to a keep-alive client, idle after one request.
    drop(pipes.pop());
    let url = flooded.url();
    let deadline = Instant::now() + LIMIT;
    let mut idle = loop {
        let mut stream = TcpStream::connect(b).await.expect("connect");
        match request_keep_alive(&mut stream, &url).await {
            Ok(200) => break stream,
            // The ended pipe's place is not free yet: refused (503) and closed.
            Ok(503) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("a keep-alive request got {other:?}"),
        }
    };

    // At the limit again, one connection idle: a new client takes its place.
    let (response, took) = flooded.fetch("a").await;
    flooded.assert_served(&response);
    println!("at the limit, one idle: served in {took:?}");
    let rest = read_until_closed(&mut idle)
        .await
        .expect("the idle connection is closed to make room");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    for pipe in &mut pipes {
        echo(pipe, b"still here").await;
    }
    let log = flooded.edge.log();
    let (reached, below) = (
        count_lines(&log, "limits.max_client_connections reached"),
        count_lines(&log, "below limits.max_client_connections again"),
    );
    assert!(
        reached >= 1 && reached <= below + 1,
        "a time at the limit is logged once when it starts:\n{log}"
    );
}

/// The edge at 1,024 descriptors (`prlimit` after it started, so the default edge-wide limit,
/// derived from the larger limit it started with, does not catch this first), 100 clients idle
/// between requests and 1,000 silent ones: `accept` fails with `EMFILE`, the edge sheds idle
/// connections, and a legitimate client (queued behind a few hundred others in the kernel's
/// backlog) is served. The failures are logged once per run, not once per failed accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_edge_sheds_idle_connections_and_serves_a_client() {
    let _heavy = heavy_lock().await;
    let flooded = Flooded::start(&["net"], "", "", "127.20.53.0/24", "127.20.53.1").await;
    let pid = flooded.edge.pid();
    let status = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg("--nofile=1024:1024")
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit --nofile=1024 failed: {status}");
    let proxy = flooded.proxy("net");
    let (before_fds, before_rss) = (flooded.descriptors(), flooded.rss_kb());

    let url = flooded.url();
    let mut keep_alive = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(proxy).await.expect("connect");
        let status = request_keep_alive(&mut stream, &url)
            .await
            .expect("a keep-alive request");
        assert_eq!(status, 200);
        keep_alive.push(stream);
    }
    let _silent = silent_connections(proxy, 1000).await;
    let (response, took) = flooded.fetch("net").await;
    let during_fds = flooded.descriptors();
    flooded.assert_served(&response);
    let log = flooded.edge.log();
    let failed_lines = count_lines(&log, "accept failed");
    let closed = 1100 - established_to(proxy);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let nofile = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap_or_default()
        .to_owned();
    println!(
        "1,024 descriptors, 100 keep-alive + 1,000 silent connections: the legitimate fetch() \
         was served in {took:?}; edge descriptors {before_fds} before, {during_fds} during; \
         RSS {before_rss} KiB before, {} KiB during; {closed} of the 1,100 closed by the edge; \
         {failed_lines} 'accept failed' log line(s); {nofile}",
        flooded.rss_kb()
    );
    assert!(
        failed_lines <= 3,
        "one line per run of failed accepts, not per failure: {failed_lines}\n{log}"
    );
}

/// A head not finished within `timeouts.header_read_ms` ends the connection: a client that
/// sends half a head and then nothing is closed by the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_not_finished_within_header_read_ms_is_closed() {
    let flooded = Flooded::start(
        &["net"],
        "",
        "[timeouts]\nheader_read_ms = 300\n",
        "127.20.54.0/24",
        "127.20.54.1",
    )
    .await;
    let mut stream = TcpStream::connect(flooded.proxy("net"))
        .await
        .expect("connect");
    let started = Instant::now();
    stream
        .write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\nX-Slow: ", flooded.url()).as_bytes())
        .await
        .expect("half a head");
    let rest = read_until_closed(&mut stream)
        .await
        .expect("the edge closes a head not finished in time");
    println!(
        "half a head: closed after {:?} (header_read_ms = 300), answer {:?}",
        started.elapsed(),
        String::from_utf8_lossy(&rest)
    );
    // A keep-alive connection idle for longer than that is closed too, after its request.
    let mut stream = TcpStream::connect(flooded.proxy("net"))
        .await
        .expect("connect");
    let status = request_keep_alive(&mut stream, &flooded.url())
        .await
        .expect("a keep-alive request");
    assert_eq!(status, 200);
    let rest = read_until_closed(&mut stream)
        .await
        .expect("an idle keep-alive connection is closed after header_read_ms");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// 2,000 connections each sending 256 KiB of a head that never ends (the edge reads 64 KiB
/// at most, answers `431` and closes), then 2,000 holding 60 KiB of one (under the cap, held
/// open: beyond `limits.max_idle_client_connections`, 1,024, the oldest are shed): the edge's
/// RSS stays under 180 MB throughout and a legitimate client is served during each flood. RSS
/// before, at the peak of each flood, and after they end are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_head_flood_stays_bounded_and_a_client_is_served() {
    let _heavy = heavy_lock().await;
    let flooded = Flooded::start(
        &["net"],
        "max_connections = 4096",
        "",
        "127.20.55.0/24",
        "127.20.55.1",
    )
    .await;
    let proxy = flooded.proxy("net");
    let url = flooded.url();
    let (response, _) = flooded.fetch("net").await;
    flooded.assert_served(&response);
    let before = flooded.rss_kb();

    for (name, bytes) in [("256 KiB", 256 * 1024), ("60 KiB held", 60 * 1024)] {
        let peak = PeakRss::sample(flooded.edge.pid());
        let started = Instant::now();
        let (open, cut) = unfinished_heads(proxy, &url, 2000, bytes).await;
        let (held, unread_bytes) = wait_all_read(proxy).await;
        let (response, took) = flooded.fetch("net").await;
        let peak = peak.stop();
        flooded.assert_served(&response);
        println!(
            "flood of 2,000 unfinished heads of {name}: sent in {:?}, {cut} cut by the edge, \
             {held} held open by it ({unread_bytes} bytes unread); the legitimate fetch() was \
             served in {took:?}; edge RSS {before} KiB before, peak {peak} KiB",
            started.elapsed()
        );
        assert!(
            peak < RSS_BOUND_KB,
            "the edge's RSS reached {peak} KiB under the {name} flood"
        );
        drop(open);
        wait_closed(proxy).await;
    }
    println!(
        "after both floods: edge RSS {} KiB (before: {before} KiB)",
        flooded.rss_kb()
    );
}

/// Two floods of 9,500 idle connections (silent) to one binding, each closed before the next
/// (`max_idle_client_connections` raised so that none is shed; each costs the edge two of
/// its 20,000 descriptors): the edge's RSS before, with them open and after they closed is
/// printed, and the second flood must not cost twice what the first did (a leak would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "19,000 connections: run with --ignored (CI's heavy stage)"]
async fn memory_after_idle_connection_floods_is_bounded() {
    const COUNT: usize = 9500;
    let _heavy = heavy_lock().await;
    let flooded = Flooded::start(
        &["net"],
        "max_connections = 12000",
        "[limits]\nmax_client_connections = 12000\nmax_idle_client_connections = 12000\n",
        "127.20.56.0/24",
        "127.20.56.1",
    )
    .await;
    let proxy = flooded.proxy("net");
    let (response, _) = flooded.fetch("net").await;
    flooded.assert_served(&response);
    let before = flooded.rss_kb();
    let mut afters = Vec::new();
    for round in 1..=2 {
        let silent = silent_connections(proxy, COUNT).await;
        let deadline = Instant::now() + LIMIT;
        while unread(proxy).0 < COUNT && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (response, took) = flooded.fetch("net").await;
        flooded.assert_served(&response);
        let during = flooded.rss_kb();
        drop(silent);
        wait_closed(proxy).await;
        let (response, _) = flooded.fetch("net").await;
        flooded.assert_served(&response);
        let after = flooded.rss_kb();
        println!(
            "round {round}, {COUNT} idle connections: edge RSS {before} KiB before, {during} KiB \
             with them open (a fetch() served in {took:?}), {after} KiB after they closed"
        );
        afters.push((during, after));
    }
    // glibc keeps most of what a flood took, and a second flood takes some more (measured:
    // 27 → 109 MB, 109 MB after; then 168 MB, 168 MB after): this only guards against
    // connections that leak what they hold.
    let ((first, _), (second, _)) = (afters[0], afters[1]);
    assert!(
        second < before + 2 * (first - before),
        "the second flood took the edge to {second} KiB, the first to {first} KiB (from \
         {before} KiB): client connections leak memory"
    );
}

/// Waits until the edge holds no client connection on `listen` any more (or [`LIMIT`]).
async fn wait_closed(listen: SocketAddr) {
    let deadline = Instant::now() + LIMIT;
    while unread(listen).0 > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
