//! Graceful edge shutdown: a stream that is open when the edge is asked to stop — a `fetch()`
//! body still flowing, a `CONNECT` pipe, a TCP-binding pipe, an upgraded `fetch()` — keeps
//! working until its last byte, up to the drain grace; shutdown then completes, and does not return while a client
//! connection is still being served.
//!
//! "Shutdown has begun" is observed, not timed: the edge stops accepting on its binding
//! listeners first, so a refused connection to a binding is the signal. The origins' pace is
//! theirs; tests assert on bytes and on order of events, never on durations (the time bounds
//! only guard a hang and are far from what the tests need).

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use underpass_connector::{Connector, ConnectorConfig};
use underpass_e2e::edge_process::TUNNEL;
use underpass_e2e::http1;
use underpass_e2e::sockets::tcp_state;
use underpass_e2e::upgrade::upgrade_origin;
use underpass_e2e::{EchoServer, EdgeProcess, Stack, TrickleOrigin};

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(30);

/// The trickling body: 5 chunks of 12 bytes; the first comes with the head.
const CHUNKS: usize = 5;
const CHUNK_LEN: usize = 12;
const PACE: Duration = Duration::from_millis(400);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

/// Waits until `addr` refuses connections: the edge has stopped accepting, so its shutdown
/// has begun. Polls (5 ms to 50 ms apart) for the state, it does not guess a duration.
async fn wait_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut pause = Duration::from_millis(5);
    loop {
        match TcpStream::connect(addr).await {
            Err(error) if error.kind() == ErrorKind::ConnectionRefused => return,
            // Accepted (still listening) or another transient error: look again.
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the binding {addr} still accepts {LIMIT:?} after the shutdown began"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Sends a `GET` for the trickle origin through the binding at `proxy` and reads until the
/// head and the first body chunk have arrived. Returns the stream and the bytes so far.
async fn start_trickle_fetch(proxy: SocketAddr, origin: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(proxy).await.expect("binding listener");
    let request = format!(
        "GET http://{origin}/trickle HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while body_of(&seen).is_none_or(|body| body.len() < CHUNK_LEN) {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut buf))
            .await
            .expect("the first chunk in time")
            .expect("read the response");
        assert!(
            n > 0,
            "closed before the first chunk: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    (stream, seen)
}

/// The bytes after the response head, once the head is complete.
fn body_of(response: &[u8]) -> Option<&[u8]> {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(&response[end + 4..])
}

/// Reads `stream` to its end; returns what arrived and how it ended (`None`: a clean end).
async fn read_rest(stream: &mut TcpStream, seen: &mut Vec<u8>) -> Option<std::io::Error> {
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(LIMIT, stream.read(&mut buf))
            .await
            .expect("the response ends in time");
        match read {
            Ok(0) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(error) => return Some(error),
        }
    }
}

/// Asserts that the whole trickled body arrived and the connection then ended cleanly.
fn assert_whole_body(seen: &[u8], end: Option<std::io::Error>) {
    let body = body_of(seen).unwrap_or_default();
    let expected = TrickleOrigin::body(CHUNKS, CHUNK_LEN);
    assert!(
        body == expected.as_slice() && end.is_none(),
        "the client got {} of {} body bytes, then {}: {:?}",
        body.len(),
        expected.len(),
        end.map_or_else(|| "a clean end".to_owned(), |e| format!("an error ({e})")),
        String::from_utf8_lossy(seen)
    );
}

/// `EdgeHandle::shutdown` (default 30 s grace) while a `fetch()` body still trickles: the
/// client gets every byte and a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_shutdown_lets_a_fetch_body_finish() {
    let origin = TrickleOrigin::start(ip("127.20.40.1"), CHUNKS, CHUNK_LEN, PACE).await;
    let mut stack = Stack::builder()
        .route("127.20.40.0/24", None)
        .network_binding("net")
        .start()
        .await;
    let proxy = stack.binding_addr("net");
    let (mut client, mut seen) = start_trickle_fetch(proxy, origin.addr()).await;

    let shutdown = tokio::spawn(stack.take_edge().shutdown());
    wait_refused(proxy).await;
    origin.release();
    let end = read_rest(&mut client, &mut seen).await;
    assert_whole_body(&seen, end);
    tokio::time::timeout(LIMIT, shutdown)
        .await
        .expect("the shutdown completes once the body has ended")
        .expect("the shutdown task");
}

/// The real `underpass-edge` binary gets SIGTERM while a `fetch()` body still trickles: the
/// client gets every byte and a clean end, and the edge exits with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_fetch_body_finish() {
    let origin = TrickleOrigin::start(ip("127.20.41.1"), CHUNKS, CHUNK_LEN, PACE).await;
    let mut edge = EdgeProcess::start(&format!(
        "[[network]]\nname = \"net\"\ntunnel = \"{TUNNEL}\"\n\n\
         [[binding]]\nname = \"net\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"net\"\n"
    ))
    .await;
    let config = ConnectorConfig::builder(edge.token())
        .route("127.20.41.0/24")
        .build()
        .expect("a valid connector config");
    let connector = Connector::start(config).expect("the connector starts");
    connector
        .wait_registered(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("the connector registers: {e}\n{}", edge.output()));
    let proxy = edge.binding_addr("net");
    let (mut client, mut seen) = start_trickle_fetch(proxy, origin.addr()).await;

    edge.terminate();
    wait_refused(proxy).await;
    origin.release();
    let end = read_rest(&mut client, &mut seen).await;
    let output = edge.output();
    if body_of(&seen).map(<[u8]>::len) != Some(CHUNKS * CHUNK_LEN) {
        eprintln!("{output}");
    }
    assert_whole_body(&seen, end);
    let status = edge
        .wait_exit(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("the edge exits after the body: {e:#}\n{}", edge.output()));
    assert!(status.success(), "{status}\n{}", edge.output());
}

/// Writes `message` and reads its echo back.
async fn echo_once(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.expect("write to the pipe");
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(LIMIT, stream.read_exact(&mut back))
        .await
        .expect("the echo in time")
        .unwrap_or_else(|e| {
            panic!(
                "the pipe broke while {:?} was in flight: {e}",
                String::from_utf8_lossy(message)
            )
        });
    assert_eq!(back, message);
}

/// `CONNECT target` through `proxy`; the tunnel stream after a `200`.
async fn connect_tunnel(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let answer = http1::connect(proxy, &target.to_string(), LIMIT).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    answer.stream
}

/// `GET` with `Upgrade: websocket` to the upgrade origin at `origin` through `proxy`; the
/// upgraded connection after the `101`.
async fn upgrade_tunnel(proxy: SocketAddr, origin: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.expect("binding listener");
    stream
        .write_all(
            format!(
                "GET http://{origin}/ws HTTP/1.1\r\nHost: {origin}\r\nConnection: Upgrade\r\n\
                 Upgrade: websocket\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("send the upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut byte))
            .await
            .expect("the 101 in time")
            .expect("read the upgrade answer");
        assert_eq!(n, 1, "closed before the 101: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// Which kind of pipe a test opens.
#[derive(Debug, Clone, Copy)]
enum Pipe {
    /// `CONNECT` through a VPC Network binding.
    Connect,
    /// A `mode = "tcp"` binding.
    TcpBinding,
    /// A `fetch()` upgraded to a raw byte stream (`101 Switching Protocols`).
    Upgrade,
}

/// The echoing origin at the far end of a pipe; stops when dropped.
struct Origin {
    _echo: Option<EchoServer>,
    upgrade: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(task) = &self.upgrade {
            task.abort();
        }
    }
}

/// A stack with one binding of `kind` to an echoing origin on `origin_ip`, and an open pipe
/// through it that has echoed once.
async fn stack_with_pipe(
    kind: Pipe,
    origin_ip: &str,
    grace: Duration,
) -> (Stack, Origin, TcpStream) {
    let (origin, addr) = match kind {
        Pipe::Connect | Pipe::TcpBinding => {
            let echo = EchoServer::start(ip(origin_ip));
            let addr = echo.addr();
            let origin = Origin {
                _echo: Some(echo),
                upgrade: None,
            };
            (origin, addr)
        }
        Pipe::Upgrade => {
            let listener = TcpListener::bind(SocketAddr::new(ip(origin_ip), 0))
                .await
                .expect("bind the upgrade origin");
            let addr = listener.local_addr().expect("origin address");
            let origin = Origin {
                _echo: None,
                upgrade: Some(tokio::spawn(upgrade_origin(listener))),
            };
            (origin, addr)
        }
    };
    let builder = Stack::builder()
        .route(&format!("{origin_ip}/32"), None)
        .drain_grace(grace);
    let builder = match kind {
        Pipe::Connect | Pipe::Upgrade => builder.network_binding("pipe"),
        Pipe::TcpBinding => builder.tcp_binding("pipe", addr),
    };
    let stack = builder.start().await;
    let proxy = stack.binding_addr("pipe");
    let mut pipe = match kind {
        Pipe::Connect => connect_tunnel(proxy, addr).await,
        Pipe::TcpBinding => TcpStream::connect(proxy).await.expect("tcp binding"),
        Pipe::Upgrade => upgrade_tunnel(proxy, addr).await,
    };
    echo_once(&mut pipe, b"before the shutdown").await;
    (stack, origin, pipe)
}

/// Shutdown with a grace far longer than the test: the pipe keeps echoing after the shutdown
/// began; once the client closes its side, the shutdown completes (long before the grace).
async fn shutdown_waits_for(kind: Pipe, echo_ip: &str) {
    let grace = Duration::from_secs(600);
    let (mut stack, _echo, mut pipe) = stack_with_pipe(kind, echo_ip, grace).await;
    let proxy = stack.binding_addr("pipe");
    let shutdown = tokio::spawn(stack.take_edge().shutdown());
    wait_refused(proxy).await;
    for round in 0..5 {
        echo_once(
            &mut pipe,
            format!("{kind:?} round {round} during the shutdown").as_bytes(),
        )
        .await;
        assert!(
            !shutdown.is_finished(),
            "the shutdown returned while the {kind:?} pipe was open (round {round})"
        );
    }
    // Close our side; the echo server answers with its own end.
    pipe.shutdown().await.expect("half-close the pipe");
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, pipe.read_to_end(&mut rest))
        .await
        .expect("the pipe ends")
        .expect("a clean end of the pipe");
    assert!(rest.is_empty(), "{rest:?}");
    drop(pipe);
    tokio::time::timeout(LIMIT, shutdown)
        .await
        .unwrap_or_else(|_| {
            panic!("the shutdown did not complete within {LIMIT:?} of the {kind:?} pipe's end")
        })
        .expect("the shutdown task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_connect_pipe() {
    shutdown_waits_for(Pipe::Connect, "127.20.42.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_tcp_binding_pipe() {
    shutdown_waits_for(Pipe::TcpBinding, "127.20.42.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_an_upgraded_fetch() {
    shutdown_waits_for(Pipe::Upgrade, "127.20.42.6").await;
}

/// Shutdown with a 1 s grace while the client keeps its pipe open: the shutdown completes (the
/// pipe is cut after the grace), and by the time it returns the edge has closed its side of
/// the client connection — no pipe task outlives `shutdown()`.
async fn shutdown_cuts_after_the_grace(kind: Pipe, echo_ip: &str) {
    let (mut stack, _echo, mut pipe) = stack_with_pipe(kind, echo_ip, Duration::from_secs(1)).await;
    let proxy = stack.binding_addr("pipe");
    let client = pipe.local_addr().expect("client address");
    tokio::time::timeout(LIMIT, stack.take_edge().shutdown())
        .await
        .unwrap_or_else(|_| panic!("the shutdown did not complete with the {kind:?} pipe open"));
    // The kernel's state of the edge's socket, at the moment shutdown() has returned.
    let edge_side = tcp_state(proxy, client);
    assert!(
        !edge_side.is_some_and(|state| state.is_open()),
        "shutdown() returned while the edge still served the {kind:?} client connection \
         (edge socket {edge_side:?})"
    );
    // And the client sees its connection cut: a reset, never a clean end (a FIN would look
    // like a complete transfer).
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(LIMIT, pipe.read(&mut buf))
        .await
        .expect("the client sees the end of the pipe");
    assert!(
        matches!(&end, Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset of the {kind:?} pipe, read {end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_connect_pipe_after_the_grace() {
    shutdown_cuts_after_the_grace(Pipe::Connect, "127.20.42.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_tcp_binding_pipe_after_the_grace() {
    shutdown_cuts_after_the_grace(Pipe::TcpBinding, "127.20.42.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_an_upgraded_fetch_after_the_grace() {
    shutdown_cuts_after_the_grace(Pipe::Upgrade, "127.20.42.7").await;
}

/// A client that has sent only part of its first request head when the edge stops (1 s
/// grace): by the time `shutdown()` returns, the edge has closed that connection too — its
/// task does not outlive the shutdown, waiting for the rest of the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_client_stuck_in_its_request_head() {
    let mut stack = Stack::builder()
        .route("127.20.42.5/32", None)
        .network_binding("net")
        .drain_grace(Duration::from_secs(1))
        .start()
        .await;
    let proxy = stack.binding_addr("net");
    let mut stuck = TcpStream::connect(proxy).await.expect("binding listener");
    stuck
        .write_all(b"GET http://127.20.42.5/ HTTP/1.1\r\nHost: 127.20.42.5\r\n")
        .await
        .expect("send half a head");
    let local = stuck.local_addr().expect("client address");
    // The edge accepts in order: once a later connection has its answer (a relative-form
    // request: the edge's own 400), the stuck one has been accepted and is being served.
    let mut probe = TcpStream::connect(proxy).await.expect("binding listener");
    probe
        .write_all(b"GET /probe HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send the probe");
    read_one_response(&mut probe).await;
    tokio::time::timeout(LIMIT, stack.take_edge().shutdown())
        .await
        .expect("the shutdown completes");
    let edge_side = tcp_state(proxy, local);
    assert!(
        !edge_side.is_some_and(|state| state.is_open()),
        "shutdown() returned while a client task still held its connection (edge socket \
         {edge_side:?})"
    );
}

/// Reads one response with a `Content-Length` body from `stream`, leaving the connection open.
async fn read_one_response(stream: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(body) = body_of(&seen) {
            let head =
                String::from_utf8_lossy(&seen[..seen.len() - body.len()]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return;
            }
        }
        let n = tokio::time::timeout(LIMIT, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read the response");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}
