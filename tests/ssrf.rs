//! SSRF encodings against the route table (issue 15, point 5): a real edge and connector, a
//! network binding whose connector routes 127.21.0.0/16 but denies 127.21.51.0/24, and two
//! counting sinks: one in the denied subnet, one outside every route. Each way of writing those
//! addresses (hex, octal, short and integer IPv4, mapped, compatible and NAT64 IPv6, zone ids,
//! trailing dots, user-info, names) is tried through `connect()` and `fetch()`; each answer's
//! status and Proxy-Status error is asserted, and **no connection reaches either sink**. A
//! routed echo shows the same binding does serve what the routes allow.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use underpass_e2e::http1::{self, Response};
use underpass_e2e::{Behaviour, EchoServer, Stack};

/// Guards a hang only.
const LIMIT: Duration = Duration::from_secs(20);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test IP")
}

/// A TCP listener that counts the connections it accepts and closes them.
struct Sink {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Sink {
    async fn start(at: IpAddr, port: u16) -> Sink {
        let listener = TcpListener::bind(SocketAddr::new(at, port))
            .await
            .expect("bind the sink");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Sink { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A port free on both sink addresses, so every encoding names the same port.
async fn common_port() -> u16 {
    loop {
        let probe = TcpListener::bind((ip("127.21.51.1"), 0))
            .await
            .expect("bind a probe");
        let port = probe.local_addr().expect("address").port();
        if std::net::TcpListener::bind((ip("127.22.0.1"), port)).is_ok() {
            return port;
        }
    }
}

async fn fetch(proxy: SocketAddr, url: &str) -> Response {
    let stream = TcpStream::connect(proxy).await.expect("the binding");
    let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tokio::time::timeout(LIMIT, http1::exchange(stream, request.as_bytes()))
        .await
        .expect("an answer in time")
        .expect("an HTTP answer")
}

/// How an authority is answered: the status and the Proxy-Status error.
type Expected = (u16, &'static str);

/// The edge refuses the request target itself.
const BAD_TARGET: Expected = (400, "http_request_error");
/// The connector refuses the address by its route table.
const PROHIBITED: Expected = (502, "destination_ip_prohibited");
/// No route of the connector covers the name (nothing is resolved).
const NO_NAME_ROUTE: Expected = (502, "destination_not_found");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_encoding_of_a_denied_or_unrouted_address_reaches_it() {
    let port = common_port().await;
    let denied = Sink::start(ip("127.21.51.1"), port).await;
    let unrouted = Sink::start(ip("127.22.0.1"), port).await;
    let echo = EchoServer::start_with(ip("127.21.50.1"), Behaviour::Echo);
    // A resolver that answers nothing, on loopback: no name may leave the host.
    let dead_resolver = SocketAddr::new(ip("127.0.0.1"), 1);
    let stack = Stack::builder()
        .route("127.21.0.0/16", None)
        .deny(&["127.21.51.0/24"])
        .resolvers(&[dead_resolver])
        .network_binding("net")
        .start()
        .await;
    let proxy = stack.binding_addr("net");

    // The binding serves what the routes allow.
    let answer = http1::connect(proxy, &echo.addr().to_string(), LIMIT).await;
    assert_eq!(answer.status, 200, "{}", answer.head);

    // 127.21.51.1 (denied) and 127.22.0.1 (unrouted), written every way.
    let cases: Vec<(String, Expected)> = vec![
        (format!("127.21.51.1:{port}"), PROHIBITED),
        (format!("127.22.0.1:{port}"), PROHIBITED),
        (format!("0x7f.0x15.0x33.0x1:{port}"), BAD_TARGET),
        (format!("0x7f153301:{port}"), BAD_TARGET),
        (format!("0177.025.063.01:{port}"), BAD_TARGET),
        (format!("127.21.13057:{port}"), BAD_TARGET),
        (format!("127.1389313:{port}"), BAD_TARGET),
        (format!("2132095745:{port}"), BAD_TARGET),
        (format!("2132148225:{port}"), BAD_TARGET),
        (format!("127.21.51.1.:{port}"), BAD_TARGET),
        (format!("[::ffff:127.21.51.1]:{port}"), PROHIBITED),
        (format!("[::ffff:7f15:3301]:{port}"), PROHIBITED),
        (format!("[::ffff:127.22.0.1]:{port}"), PROHIBITED),
        (format!("[::127.21.51.1]:{port}"), PROHIBITED),
        (format!("[64:ff9b::127.21.51.1]:{port}"), PROHIBITED),
        (format!("[64:ff9b::7f16:1]:{port}"), PROHIBITED),
        (format!("[::ffff:127.21.51.1%25lo]:{port}"), BAD_TARGET),
        (format!("[::ffff:127.21.51.1%lo]:{port}"), BAD_TARGET),
        (format!("localhost:{port}"), NO_NAME_ROUTE),
        (format!("LocalHost.:{port}"), NO_NAME_ROUTE),
    ];
    let mut failures = Vec::new();
    for (authority, (status, error)) in &cases {
        let answer = http1::connect(proxy, authority, LIMIT).await;
        let got = (answer.status, answer.proxy_error().map(str::to_owned));
        if got != (*status, Some((*error).to_owned())) {
            failures.push(format!(
                "CONNECT {authority}: {got:?}, expected {status} {error}"
            ));
        }
        let response = fetch(proxy, &format!("http://{authority}/")).await;
        let got = (response.status, response.proxy_error().map(str::to_owned));
        if got != (*status, Some((*error).to_owned())) {
            failures.push(format!(
                "GET http://{authority}/: {got:?}, expected {status} {error}"
            ));
        }
    }
    // User-info naming a routed host before the real one: the real host is what counts.
    for url in [
        format!("http://127.21.50.1@127.21.51.1:{port}/"),
        format!("http://127.21.50.1:80@127.22.0.1:{port}/"),
    ] {
        let response = fetch(proxy, &url).await;
        let got = (response.status, response.proxy_error().map(str::to_owned));
        if got.0 == 200 {
            failures.push(format!("GET {url}: 200"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(denied.accepted(), 0, "a connection reached the denied sink");
    assert_eq!(
        unrouted.accepted(),
        0,
        "a connection reached the unrouted sink"
    );
    // The sinks do count: a direct connection is seen.
    let direct = TcpStream::connect(denied.addr).await.expect("the sink");
    drop(direct);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while denied.accepted() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the sink counts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = unrouted.addr;
}
