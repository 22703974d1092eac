//! Hostile requests to a binding listener (issue 15): raw bytes on a real socket to an
//! in-process edge and connector, a recording origin on loopback. Each case asserts the exact
//! status and `Proxy-Status` error, and what reached the origin (often: nothing).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use underpass_e2e::http1::{parse_response, Response};
use underpass_e2e::Stack;

/// Guards a hang only.
const LIMIT: Duration = Duration::from_secs(20);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test IP")
}

/// An HTTP origin that records each request head it reads and answers `200 ok`.
struct Recorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl Recorder {
    async fn start(at: IpAddr) -> Recorder {
        let listener = TcpListener::bind(SocketAddr::new(at, 0))
            .await
            .expect("bind the origin");
        let addr = listener.local_addr().expect("address");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c) = (heads.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.lock()
                        .expect("not poisoned")
                        .push(String::from_utf8_lossy(&seen).into_owned());
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        Recorder {
            addr,
            heads,
            connections,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("not poisoned").clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Sends `raw` on a new connection to `proxy` and reads the answer to its end (the client
/// half-closes after sending; the edge closes after an error answer).
async fn send(proxy: SocketAddr, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect(proxy).await.expect("the binding");
    stream.write_all(raw).await.expect("send");
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(LIMIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                // An answer without a body ends at its head.
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    if let Ok(response) = parse_response(&answer) {
                        if response.header("content-length") == Some("0") {
                            break;
                        }
                    }
                }
            }
            Err(_) => panic!(
                "no answer within {LIMIT:?}: {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    parse_response(&answer).unwrap_or_else(|e| {
        panic!(
            "not an HTTP answer ({e:#}): {:?}",
            String::from_utf8_lossy(&answer)
        )
    })
}

async fn stack(origin: &Recorder) -> Stack {
    stack_for(origin.addr).await
}

async fn stack_for(origin: SocketAddr) -> Stack {
    Stack::builder()
        .route(&format!("{}/32", origin.ip()), None)
        .network_binding("net")
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_headers_are_checked_and_the_url_authority_wins() {
    let origin = Recorder::start(ip("127.22.1.1")).await;
    let stack = stack(&origin).await;
    let proxy = stack.binding_addr("net");
    let o = origin.addr;

    // Two Host headers: 400, nothing reaches the origin.
    let raw = format!("GET http://{o}/ HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n");
    send(proxy, raw.as_bytes())
        .await
        .assert_proxy_error(400, "http_request_error");
    assert_eq!(origin.connections(), 0);

    // A Host differing from the absolute URL: the URL's authority is what the origin sees.
    let raw =
        format!("GET http://{o}/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n");
    let response = send(proxy, raw.as_bytes()).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let heads = origin.heads();
    let head = heads.last().expect("the origin got the request");
    let hosts: Vec<&str> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
        .collect();
    assert_eq!(hosts, vec![format!("host: {o}").as_str()], "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encodings_other_than_one_chunked_are_refused() {
    let origin = Recorder::start(ip("127.22.2.1")).await;
    let stack = stack(&origin).await;
    let proxy = stack.binding_addr("net");
    let o = origin.addr;
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
    ] {
        let raw = format!("POST http://{o}/ HTTP/1.1\r\n{te}\r\n0\r\n\r\n");
        let response = send(proxy, raw.as_bytes()).await;
        assert_eq!(response.status, 400, "{te:?}: {}", response.text());
        assert_eq!(response.proxy_error(), Some("http_request_error"), "{te:?}");
    }
    assert_eq!(origin.connections(), 0, "nothing reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_takes_an_authority_and_no_body() {
    let origin = Recorder::start(ip("127.22.3.1")).await;
    let stack = stack(&origin).await;
    let proxy = stack.binding_addr("net");
    let o = origin.addr;
    for raw in [
        format!("CONNECT http://{o}/ HTTP/1.1\r\nHost: {o}\r\n\r\n"),
        format!("CONNECT {o} HTTP/1.1\r\nHost: {o}\r\nContent-Length: 5\r\n\r\nhello"),
        format!("CONNECT {o} HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ] {
        let response = send(proxy, raw.as_bytes()).await;
        assert_eq!(response.status, 400, "{raw:?}: {}", response.text());
        assert_eq!(
            response.proxy_error(),
            Some("http_request_error"),
            "{raw:?}"
        );
    }
    assert_eq!(origin.connections(), 0, "nothing reached the origin");
    // The right form still works.
    let mut stream = TcpStream::connect(proxy).await.expect("the binding");
    stream
        .write_all(format!("CONNECT {o} HTTP/1.1\r\nHost: {o}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).await.expect("the answer");
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
}

/// A request head larger than one stream header can carry: 431 with `Proxy-Status`
/// (48 KiB limit); beyond hyper's 64 KiB read buffer hyper refuses it, and the edge's 431 with
/// `Proxy-Status` replaces hyper's answer. The origin sees nothing either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_431() {
    let origin = Recorder::start(ip("127.22.4.1")).await;
    let stack = stack(&origin).await;
    let proxy = stack.binding_addr("net");
    let o = origin.addr;
    let raw = format!(
        "GET http://{o}/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(50 * 1024)
    );
    send(proxy, raw.as_bytes())
        .await
        .assert_proxy_error(431, "http_request_error");
    let raw = format!(
        "GET http://{o}/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let answer = exchange(proxy, raw.into_bytes()).await;
    assert_one_error_answer("a 100 KiB header field", &answer, 431);
    assert_eq!(origin.connections(), 0, "nothing reached the origin");
    // A head under the limit still goes through.
    let raw = format!(
        "GET http://{o}/ HTTP/1.1\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    assert_eq!(send(proxy, raw.as_bytes()).await.status, 200);
}

/// A request body that stalls (`body_idle_ms`, here 500 ms) ends the exchange with 408 and
/// frees the origin connection; before, a body trickling or stopped held both for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_408_and_frees_the_origin() {
    // An origin that reads and never answers: it sees its connection end when the edge gives
    // up.
    let listener = TcpListener::bind(SocketAddr::new(ip("127.22.5.1"), 0))
        .await
        .expect("bind the origin");
    let o = listener.local_addr().expect("address");
    let (ended_tx, ended) = tokio::sync::oneshot::channel::<usize>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("the connector dials");
        let mut seen = 0;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen += n;
        }
        let _ = ended_tx.send(seen);
    });
    let stack = Stack::builder()
        .route(&format!("{}/32", o.ip()), None)
        .network_binding("net")
        .body_idle(Duration::from_millis(500))
        .start()
        .await;
    let proxy = stack.binding_addr("net");
    let mut client = TcpStream::connect(proxy).await.expect("the binding");
    client
        .write_all(
            format!("POST http://{o}/up HTTP/1.1\r\nContent-Length: 10\r\n\r\n012").as_bytes(),
        )
        .await
        .expect("send");
    // Then nothing more: the answer comes without the client sending another byte.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(LIMIT, client.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "answered within {LIMIT:?}");
    let response = parse_response(&answer).expect("an HTTP answer");
    response.assert_proxy_error(408, "http_request_error");
    let seen = tokio::time::timeout(LIMIT, ended)
        .await
        .expect("the origin connection is closed")
        .expect("the origin task");
    assert!(seen > 0, "the origin had the head");
}

/// Sends `raw` on a new connection to `proxy` while reading, and returns every byte of the
/// answer up to the end of the connection. A write the edge cuts short (it answers and closes
/// before reading all of `raw`) is not an error: the answer is what matters.
async fn exchange(proxy: SocketAddr, raw: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(proxy).await.expect("the binding");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&raw).await;
        write
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(LIMIT, read.read(&mut buf)).await {
            // A reset after the answer (the edge closed with request bytes unread) ends it too.
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the connection stayed open {LIMIT:?}: {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    drop(writer.await);
    answer
}

/// `raw` is exactly one answer: `status` with `Proxy-Status: underpass;
/// error=http_request_error`, `Connection: close`, nothing after its body.
#[track_caller]
fn assert_one_error_answer(case: &str, raw: &[u8], status: u16) {
    let text = String::from_utf8_lossy(raw);
    let response = parse_response(raw).unwrap_or_else(|e| panic!("{case}: {e:#}: {text:?}"));
    assert_eq!(
        (response.status, response.proxy_error()),
        (status, Some("http_request_error")),
        "{case}: {text:?}"
    );
    let proxy_status = response.header("proxy-status").expect("checked above");
    assert!(
        proxy_status.starts_with("underpass; "),
        "{case}: {proxy_status}"
    );
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "{case}: {text:?}"
    );
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "{case}: one answer: {text:?}"
    );
    let head_len = text.find("\r\n\r\n").expect("a head") + 4;
    assert_eq!(
        raw.len(),
        head_len + response.body.len(),
        "{case}: {text:?}"
    );
}

/// One connection an origin accepted: the bytes it read, and whether it ended with a reset
/// rather than a FIN.
#[derive(Debug, Clone)]
struct Received {
    bytes: Vec<u8>,
    reset: bool,
}

/// An origin that reads each connection to its end, answering `200` only to a complete chunked
/// request; it records what each connection brought.
struct Sink {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Every byte read so far, all connections together.
    read: Arc<Mutex<Vec<u8>>>,
    ended: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    async fn start(at: IpAddr) -> Sink {
        let listener = TcpListener::bind(SocketAddr::new(at, 0))
            .await
            .expect("bind the origin");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let read = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(Vec::new()));
        let (a, r, e) = (accepted.clone(), read.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (r, e) = (r.clone(), e.clone());
                tokio::spawn(async move {
                    let mut bytes = Vec::new();
                    let mut buf = [0u8; 4096];
                    let reset = loop {
                        match stream.read(&mut buf).await {
                            Ok(0) => break false,
                            Ok(n) => {
                                bytes.extend_from_slice(&buf[..n]);
                                r.lock().expect("not poisoned").extend_from_slice(&buf[..n]);
                            }
                            Err(_) => break true,
                        }
                        if is_complete_chunked_request(&bytes) {
                            let _ = stream
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\
                                      Connection: close\r\n\r\nok",
                                )
                                .await;
                            break false;
                        }
                    };
                    e.lock()
                        .expect("not poisoned")
                        .push(Received { bytes, reset });
                });
            }
        });
        Sink {
            addr,
            accepted,
            read,
            ended,
        }
    }

    /// Waits until the origin has read `bytes` (on any connection).
    async fn has_read(&self, bytes: &[u8]) {
        let seen = async {
            while !self
                .read
                .lock()
                .expect("not poisoned")
                .windows(bytes.len())
                .any(|w| w == bytes)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(LIMIT, seen)
            .await
            .expect("the origin reads the first chunk");
    }

    /// What every connection brought, once each connection accepted so far has ended.
    async fn settled(&self) -> Vec<Received> {
        let all_ended = async {
            loop {
                let ended = self.ended.lock().expect("not poisoned").clone();
                if ended.len() == self.accepted.load(Ordering::SeqCst) {
                    return ended;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(LIMIT, all_ended)
            .await
            .expect("the origin connections end")
    }
}

/// Whether `raw` (a request as an origin read it) holds a complete chunked request: its head,
/// then chunks up to the last (`0`) chunk and the blank line after it.
fn is_complete_chunked_request(raw: &[u8]) -> bool {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let mut rest = &raw[head_end + 4..];
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let line = String::from_utf8_lossy(&rest[..line_end]);
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return false;
        };
        rest = &rest[line_end + 2..];
        if size == 0 {
            // No trailers are sent here: the blank line ends the message.
            return rest.starts_with(b"\r\n");
        }
        if rest.len() < size + 2 || &rest[size..size + 2] != b"\r\n" {
            return false;
        }
        rest = &rest[size + 2..];
    }
}

/// A client's bad chunked framing is the client's error: `400 http_request_error` and the
/// connection closed, not `502 connection_terminated` (what it was: the edge took the reset
/// of the aborted upload for a connector failure). The origin never sees a complete request:
/// either nothing, or a head and part of a chunked body whose connection then ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunked_framing_is_400_and_closes() {
    let origin = Sink::start(ip("127.22.6.1")).await;
    let stack = stack_for(origin.addr).await;
    let proxy = stack.binding_addr("net");
    let o = origin.addr;
    let cases: [(&str, String); 6] = [
        ("size zz", "zz\r\nabc\r\n0\r\n\r\n".to_owned()),
        ("size -1", "-1\r\nabc\r\n0\r\n\r\n".to_owned()),
        (
            "size 2^72",
            "1000000000000000000\r\nabc\r\n0\r\n\r\n".to_owned(),
        ),
        (
            "a 100 KiB chunk extension",
            format!("3;ext={}\r\nabc\r\n0\r\n\r\n", "x".repeat(100 * 1024)),
        ),
        (
            "more data than the size",
            "3\r\nabcdef\r\n0\r\n\r\n".to_owned(),
        ),
        (
            "more data than the size, after a good chunk",
            "2\r\nab\r\n3\r\nabcdef\r\n0\r\n\r\n".to_owned(),
        ),
    ];
    for (case, body) in &cases {
        let raw =
            format!("POST http://{o}/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let answer = exchange(proxy, raw.into_bytes()).await;
        assert_one_error_answer(case, &answer, 400);
    }
    let received = origin.settled().await;
    for (i, seen) in received.iter().enumerate() {
        eprintln!(
            "origin connection {i}: {} bytes, ended by {}: {:?}",
            seen.bytes.len(),
            if seen.reset { "a reset" } else { "a FIN" },
            String::from_utf8_lossy(&seen.bytes[..seen.bytes.len().min(200)])
        );
        assert!(
            !is_complete_chunked_request(&seen.bytes),
            "the origin saw a complete request: {:?}",
            String::from_utf8_lossy(&seen.bytes)
        );
    }
    eprintln!(
        "{} cases, {} origin connections",
        cases.len(),
        received.len()
    );

    // Bad framing once the origin has the head and a first chunk: its request is cut, the
    // connection to it ends without the last chunk.
    let mut client = TcpStream::connect(proxy).await.expect("the binding");
    let head =
        format!("POST http://{o}/cut HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n");
    client.write_all(head.as_bytes()).await.expect("send");
    origin.has_read(b"first").await;
    client
        .write_all(b"3\r\nabcdef\r\n0\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, client.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .expect("read");
    assert_one_error_answer("bad framing after a first chunk", &answer, 400);
    let received = origin.settled().await;
    let cut: Vec<&Received> = received
        .iter()
        .filter(|r| r.bytes.windows(5).any(|w| w == b"first"))
        .collect();
    assert_eq!(cut.len(), 1, "one origin connection had the first chunk");
    eprintln!(
        "cut upload: the origin read {:?}, then {}",
        String::from_utf8_lossy(&cut[0].bytes),
        if cut[0].reset { "a reset" } else { "a FIN" }
    );
    assert!(
        !is_complete_chunked_request(&cut[0].bytes),
        "the origin saw a complete request: {:?}",
        String::from_utf8_lossy(&cut[0].bytes)
    );
    // The same request well framed goes through.
    let raw = format!(
        "POST http://{o}/up HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         3\r\nabc\r\n0\r\n\r\n"
    );
    let answer = exchange(proxy, raw.into_bytes()).await;
    let response = parse_response(&answer).expect("an HTTP answer");
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Request heads hyper itself refuses, before the edge's code sees a request: the answer is
/// the edge's, with `Proxy-Status: underpass; error=http_request_error`, one answer and the
/// connection closed (before, hyper's bare `400`/`431` had no `Proxy-Status`). Nothing reaches
/// the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_hyper_refuses_carry_proxy_status() {
    let origin = Recorder::start(ip("127.22.7.1")).await;
    let stack = stack(&origin).await;
    let proxy = stack.binding_addr("net");
    let o = origin.addr;
    let get = |extra: &str| format!("GET http://{o}/ HTTP/1.1\r\n{extra}\r\n").into_bytes();
    let many_fields: String = (0..101).map(|i| format!("X-F{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a garbage request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            "no HTTP version",
            format!("GET http://{o}/\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "a bad HTTP version",
            format!("GET http://{o}/ HTTP/9.9\r\n\r\n").into_bytes(),
            400,
        ),
        ("a space in a header name", get("Bad Name: x\r\n"), 400),
        (
            "a control byte in a header name",
            get("X\u{1}Y: x\r\n"),
            400,
        ),
        ("a colon-less header line", get("NoColonHere\r\n"), 400),
        ("a bare CR in a header value", get("X-A: a\rb\r\n"), 400),
        (
            "an obs-fold continuation line",
            get("X-A: a\r\n b\r\n"),
            400,
        ),
        (
            "a Content-Length that is not a number",
            get("Content-Length: abc\r\n"),
            400,
        ),
        (
            "two different Content-Lengths",
            get("Content-Length: 1\r\nContent-Length: 2\r\n"),
            400,
        ),
        (
            "a 70 KiB target",
            format!("GET http://{o}/{} HTTP/1.1\r\n\r\n", "a".repeat(70 * 1024)).into_bytes(),
            414,
        ),
        (
            "a 20 KiB target (within hyper's buffer)",
            format!("GET http://{o}/{} HTTP/1.1\r\n\r\n", "a".repeat(20 * 1024)).into_bytes(),
            414,
        ),
        (
            "a 70 KiB header field",
            get(&format!("X-Big: {}\r\n", "a".repeat(70 * 1024))),
            431,
        ),
        ("101 header fields", get(&many_fields), 431),
    ];
    for (case, raw, status) in cases {
        let answer = exchange(proxy, raw).await;
        assert_one_error_answer(case, &answer, status);
    }
    assert_eq!(origin.connections(), 0, "nothing reached the origin");

    // On a connection that already served a request, the same: the edge's answer replaces
    // hyper's even after a response went out. Its first request reaches the origin.
    let ok = format!("GET http://{o}/ HTTP/1.1\r\n\r\n");
    for (case, second, status) in [
        (
            "a garbage line after a request",
            b"GARBAGE\r\n\r\n".to_vec(),
            400,
        ),
        // A reused connection's head does not start at its first byte: an overlong target
        // there is only "a head over 64 KiB".
        (
            "a 70 KiB target after a request",
            format!("GET http://{o}/{} HTTP/1.1\r\n\r\n", "a".repeat(70 * 1024)).into_bytes(),
            431,
        ),
    ] {
        let mut client = TcpStream::connect(proxy).await.expect("the binding");
        client.write_all(ok.as_bytes()).await.expect("send");
        let mut first = Vec::new();
        let mut buf = [0u8; 4096];
        while !first.ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(LIMIT, client.read(&mut buf))
                .await
                .expect("the first answer")
                .expect("read");
            assert!(
                n > 0,
                "{case}: closed after {:?}",
                String::from_utf8_lossy(&first)
            );
            first.extend_from_slice(&buf[..n]);
        }
        assert!(first.starts_with(b"HTTP/1.1 200 OK\r\n"), "{case}");
        let (mut read, mut write) = client.into_split();
        let writer = tokio::spawn(async move {
            let _ = write.write_all(&second).await;
            write
        });
        let mut answer = Vec::new();
        loop {
            match tokio::time::timeout(LIMIT, read.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => panic!("{case}: no end within {LIMIT:?}"),
            }
        }
        drop(writer.await);
        assert_one_error_answer(case, &answer, status);
    }
    assert_eq!(
        origin.connections(),
        2,
        "only the two good requests reached the origin"
    );
}
