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
    Stack::builder()
        .route(&format!("{}/32", origin.addr.ip()), None)
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
/// (48 KiB limit); beyond hyper's 64 KiB read buffer hyper answers 431 itself. The origin
/// sees nothing either way.
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
    let response = send(proxy, raw.as_bytes()).await;
    assert_eq!(response.status, 431, "{}", response.text());
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
