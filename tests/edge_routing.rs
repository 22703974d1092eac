//! Stream placement over several connectors of one tunnel, and what happens to streams when a
//! connection dies: an in-process edge and in-process connectors joined by real connections on
//! loopback. Every test runs twice, over QUIC and over the HTTP/2 transport
//! (`transport_tests!`).
//!
//! - placement by announced routes: each destination reaches the connector announcing it; a
//!   connector with no routes is never picked; `[routing] unmatched` refuses or falls back;
//! - least outstanding streams: a connector holding 50 pipes gets no new stream while another
//!   holds fewer;
//! - a dead connection (its connector silenced, as after SIGKILL: a UDP relay for QUIC or a TCP
//!   relay for HTTP/2 in front of it stops forwarding, without a close) is dropped after the edge's `peer_timeout`, gets no new stream, and its
//!   streams end at the client as a reset or an incomplete body, never a clean end;
//! - a stream whose connection dies before the connector answered is retried once on another
//!   connection; a `fetch()` whose body has started is not, and fails `connection_terminated`.
//!
//! Time bounds only guard a hang: they are many times what the behaviour needs (the dead-peer
//! timeout is 2.5 s; the old behaviour took the 60 s idle timeout).

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use underpass_connector::{Connector, ConnectorConfig, ConnectorHandle};
use underpass_e2e::http1::{self, exchange, parse_response, Response};
use underpass_e2e::relay::Relay;
use underpass_e2e::{Behaviour, EchoServer};
use underpass_edge::config::{BindingConfig, EdgeConfig, NetworkConfig, Unmatched};
use underpass_edge::tunnels::TunnelStore;
use underpass_edge::{ConnectionInfo, Edge, EdgeHandle};
use underpass_proto::{ConnectorId, TunnelToken};

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(30);

/// A silenced connection must be dropped well within this (the edge's `peer_timeout` is 2.5 s;
/// before dead-peer detection it took the 60 s idle timeout).
const DEAD_WITHIN: Duration = Duration::from_secs(15);

const TUNNEL: &str = "routing";
const BINDING: &str = "net";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

/// An edge serving one network binding over the tunnel [`TUNNEL`].
struct Rig {
    edge: EdgeHandle,
    token: TunnelToken,
    proxy: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(unmatched: Unmatched) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let loopback = SocketAddr::new(ip("127.0.0.1"), 0);
        let mut config = EdgeConfig::new(dir.path().join("edge-state"));
        config.listen = loopback;
        config.routing.unmatched = unmatched;
        config.networks.push(NetworkConfig {
            name: BINDING.into(),
            tunnel: TUNNEL.into(),
        });
        config
            .bindings
            .push(BindingConfig::network(BINDING, loopback, BINDING));
        underpass_edge::state::ensure_dir(&config.state_dir).expect("state dir");
        TunnelStore::open(&config.state_dir)
            .and_then(|store| store.create(TUNNEL))
            .expect("create the tunnel");
        let edge = Edge::start(config).await.expect("the edge starts");
        let proxy = edge.binding_addr(BINDING).expect("the binding listens");
        let token = edge.token(TUNNEL).expect("the tunnel exists");
        Rig {
            edge,
            token,
            proxy,
            _dir: dir,
        }
    }

    /// A connector announcing (and enforcing) `routes`, with one connection, straight to the
    /// edge.
    async fn replica(&self, routes: &[&str]) -> Replica {
        self.replica_with(routes, None, None).await
    }

    /// A connector with one connection; through a [`Relay`] when `relay` is set, resolving
    /// names with `dns` when set.
    async fn replica_with(
        &self,
        routes: &[&str],
        relay: Option<Relay>,
        dns: Option<SocketAddr>,
    ) -> Replica {
        let mut builder = ConnectorConfig::builder(self.token.clone())
            .connections(1)
            .reconnect(Duration::from_millis(50), Duration::from_millis(500))
            .dns_timeout(Duration::from_secs(60));
        for route in routes {
            builder = builder.route(route);
        }
        if let Some(relay) = &relay {
            builder = builder.edge_addresses(&[relay.addr().to_string()]);
        }
        if let Some(dns) = dns {
            builder = builder.resolvers(&[dns]);
        }
        let mut config = builder.build().expect("a valid connector config");
        config.protocol = underpass_e2e::stack::transport();
        if relay.is_none() {
            config.edge.http2_port = Some(self.edge.http2_addr().port());
        }
        let handle = Connector::start(config).expect("starts");
        let id = handle.connector_id();
        tokio::time::timeout(
            LIMIT,
            self.edge.registry().wait_until(|registry| {
                registry
                    .snapshot()
                    .iter()
                    .any(|c| c.registration.connector_id == id && !c.draining)
            }),
        )
        .await
        .expect("the connector registers with the edge");
        Replica {
            _handle: handle,
            id,
            relay,
        }
    }

    /// The live connections of `connector`.
    fn connections_of(&self, connector: ConnectorId) -> Vec<ConnectionInfo> {
        self.edge
            .registry()
            .snapshot()
            .into_iter()
            .filter(|c| c.registration.connector_id == connector)
            .collect()
    }

    /// Streams open on the connections of `connector`.
    fn open_streams(&self, connector: ConnectorId) -> usize {
        self.connections_of(connector)
            .iter()
            .map(|c| c.active_streams)
            .sum()
    }

    /// Waits until `connector` has no connection left in the registry; returns when.
    async fn wait_gone(&self, connector: ConnectorId) -> Instant {
        tokio::time::timeout(
            LIMIT,
            self.edge.registry().wait_until(|registry| {
                !registry
                    .snapshot()
                    .iter()
                    .any(|c| c.registration.connector_id == connector)
            }),
        )
        .await
        .expect("the silenced connection leaves the registry");
        Instant::now()
    }
}

/// One in-process connector.
struct Replica {
    /// Keeps the connector running.
    _handle: ConnectorHandle,
    id: ConnectorId,
    relay: Option<Relay>,
}

impl Replica {
    /// Silence the connector as SIGKILL would: from now on nothing of its connection reaches
    /// the edge and nothing reaches it, no close, no reset.
    fn kill(&self) -> Instant {
        self.relay
            .as_ref()
            .expect("only a replica behind a relay can be silenced")
            .block();
        Instant::now()
    }
}

/// A DNS server on loopback. `answer: Some(ip)` answers every A query with `ip` (AAAA with no
/// record); `None` reads queries and never answers. Records the names asked.
struct Dns {
    addr: SocketAddr,
    names: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Dns {
    async fn start(answer: Option<IpAddr>) -> Dns {
        let socket = UdpSocket::bind(SocketAddr::new(ip("127.0.0.1"), 0))
            .await
            .expect("bind the DNS server");
        let addr = socket.local_addr().expect("DNS address");
        let names = Arc::new(Mutex::new(Vec::new()));
        let seen = names.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if let Some(name) = query_name(&buf[..n]) {
                    seen.lock().expect("not poisoned").push(name);
                }
                let Some(IpAddr::V4(v4)) = answer else {
                    continue;
                };
                if let Some(reply) = dns_reply(&buf[..n], v4.octets()) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        Dns { addr, names, task }
    }

    /// Whether `name` was asked.
    fn asked(&self, name: &str) -> bool {
        self.names
            .lock()
            .expect("not poisoned")
            .iter()
            .any(|n| n == name)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The name a query asks for, dotted.
fn query_name(query: &[u8]) -> Option<String> {
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            return Some(labels.join("."));
        }
        labels.push(String::from_utf8_lossy(query.get(at + 1..at + 1 + len)?).into_owned());
        at += len + 1;
    }
}

/// The answer to a one-question query: `ip` for an A question, no record otherwise.
fn dns_reply(query: &[u8], ip: [u8; 4]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut at = 12;
    while *query.get(at)? != 0 {
        at += usize::from(query[at]) + 1;
    }
    let end = at + 5;
    let question = query.get(12..end)?;
    let qtype = u16::from_be_bytes([query[at + 1], query[at + 2]]);
    let answers: u16 = u16::from(qtype == 1);
    let mut reply = Vec::with_capacity(end + 16);
    reply.extend_from_slice(&query[..2]);
    reply.extend_from_slice(&[0x81, 0x80, 0, 1]);
    reply.extend_from_slice(&answers.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if answers == 1 {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&ip);
    }
    Some(reply)
}

/// An HTTP origin: `/hello` answers `200 hello`; `/stream` sends a chunked head and one chunk,
/// then holds the connection open without ever ending the body.
struct HttpOrigin {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpOrigin {
    async fn start(at: IpAddr) -> HttpOrigin {
        let listener = TcpListener::bind(SocketAddr::new(at, 0))
            .await
            .expect("bind the HTTP origin");
        let addr = listener.local_addr().expect("origin address");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_http(stream));
            }
        });
        HttpOrigin { addr, task }
    }
}

impl Drop for HttpOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_http(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    if text.starts_with("GET /stream ") {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .await;
        // Hold the body open until the other side goes away.
        let _ = stream.read(&mut buf).await;
        return;
    }
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        .await;
}

/// An origin that reads whatever arrives and never answers; records the bytes.
struct HoldOrigin {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl HoldOrigin {
    async fn start(at: IpAddr) -> HoldOrigin {
        let listener = TcpListener::bind(SocketAddr::new(at, 0))
            .await
            .expect("bind the hold origin");
        let addr = listener.local_addr().expect("origin address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        sink.lock()
                            .expect("not poisoned")
                            .extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        HoldOrigin {
            addr,
            received,
            task,
        }
    }

    fn has_received(&self, needle: &[u8]) -> bool {
        self.received
            .lock()
            .expect("not poisoned")
            .windows(needle.len())
            .any(|w| w == needle)
    }
}

impl Drop for HoldOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits (polling) until `condition` holds; `what` names it in the failure.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not after {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `CONNECT target` through the binding; returns the status and, on 200, the tunnel.
async fn connect(proxy: SocketAddr, target: &str) -> (u16, String, TcpStream) {
    let answer = http1::connect(proxy, target, LIMIT).await;
    (answer.status, answer.head, answer.stream)
}

/// A `CONNECT` that must succeed; checks the pipe with one echo round trip.
async fn connect_ok(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let (status, head, mut tunnel) = connect(proxy, &target.to_string()).await;
    assert_eq!(status, 200, "CONNECT {target}: {head}");
    tunnel.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    tokio::time::timeout(LIMIT, tunnel.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&got, b"ping");
    tunnel
}

/// A `fetch()` (absolute form, `Connection: close`) through the binding.
async fn fetch(proxy: SocketAddr, url: &str) -> Response {
    let stream = TcpStream::connect(proxy).await.expect("binding listener");
    let request = format!("GET {url} HTTP/1.1\r\nConnection: close\r\n\r\n");
    tokio::time::timeout(LIMIT, exchange(stream, request.as_bytes()))
        .await
        .expect("an answer in time")
        .expect("an HTTP response")
}

/// Reads until the peer ends the connection; returns what arrived and how it ended
/// (`Ok(())` for a clean EOF).
async fn read_to_end_or_error(
    stream: &mut TcpStream,
    mut seen: Vec<u8>,
) -> (Vec<u8>, Result<(), ErrorKind>) {
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(DEAD_WITHIN + LIMIT, stream.read(&mut buf))
            .await
            .expect("the stream ends (the old behaviour hung until the 60 s idle timeout)");
        match read {
            Ok(0) => return (seen, Ok(())),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(error) => return (seen, Err(error.kind())),
        }
    }
}

underpass_e2e::transport_tests! {
    /// Reproduces the report: a second connector with no routes on the same tunnel made every
    /// other request fail. It is never picked now; what nobody announces is refused by the edge
    /// with the connector's own codes.
    async fn a_connector_without_routes_is_never_picked() {
        let echo = EchoServer::start_with(ip("127.20.80.1"), Behaviour::Echo);
        let origin = HttpOrigin::start(ip("127.20.80.2")).await;
        let rig = Rig::start(Unmatched::Refuse).await;
        let _routed = rig.replica(&["127.20.80.0/24"]).await;
        let idle = rig.replica(&[]).await;

        let mut statuses = Vec::new();
        for _ in 0..10 {
            let (status, _, _) = connect(rig.proxy, &echo.addr().to_string()).await;
            statuses.push(status);
            let response = fetch(rig.proxy, &format!("http://{}/hello", origin.addr)).await;
            statuses.push(response.status);
        }
        assert!(
            statuses.iter().all(|s| *s == 200),
            "every request succeeds: {statuses:?}"
        );
        assert_eq!(rig.open_streams(idle.id), 0);

        // Nobody announces these: the edge refuses, naming the tunnel.
        let (status, head, _) = connect(rig.proxy, "127.20.81.1:80").await;
        assert_eq!(status, 502, "{head}");
        assert!(head.contains("error=destination_ip_prohibited"), "{head}");
        assert!(
            head.contains("announces a route for 127.20.81.1:80"),
            "{head}"
        );
        let (status, head, _) = connect(rig.proxy, "nowhere.routing.test:443").await;
        assert_eq!(status, 502, "{head}");
        assert!(head.contains("error=destination_not_found"), "{head}");
        let response = fetch(rig.proxy, "http://127.20.81.1/").await;
        response.assert_proxy_error(502, "destination_ip_prohibited");
    }

    /// Two connectors with different routes: each destination reaches the one announcing it, for
    /// `connect()` and `fetch()`.
    async fn each_destination_reaches_the_connector_announcing_it() {
        let echo_a = EchoServer::start_with(ip("127.20.82.1"), Behaviour::Echo);
        let echo_b = EchoServer::start_with(ip("127.20.83.1"), Behaviour::Echo);
        let origin_b = HttpOrigin::start(ip("127.20.83.2")).await;
        let rig = Rig::start(Unmatched::Refuse).await;
        let a = rig.replica(&["127.20.82.0/24"]).await;
        let b = rig.replica(&["127.20.83.0/24"]).await;

        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect_ok(rig.proxy, echo_a.addr()).await);
            held.push(connect_ok(rig.proxy, echo_b.addr()).await);
            held.push(connect_ok(rig.proxy, echo_b.addr()).await);
        }
        assert_eq!(
            (rig.open_streams(a.id), rig.open_streams(b.id)),
            (3, 6),
            "each pipe is on the connector routing its destination"
        );
        for _ in 0..4 {
            let response = fetch(rig.proxy, &format!("http://{}/hello", origin_b.addr)).await;
            assert_eq!((response.status, response.text()), (200, "hello".into()));
        }
    }

    /// `[routing] unmatched = "any"`: a destination nobody announces still goes to a connector,
    /// which answers with its own refusal.
    async fn unmatched_any_falls_back_to_the_connectors() {
        let echo = EchoServer::start_with(ip("127.20.84.1"), Behaviour::Echo);
        let rig = Rig::start(Unmatched::Any).await;
        let _routed = rig.replica(&["127.20.84.0/24"]).await;
        let _idle = rig.replica(&[]).await;
        for _ in 0..4 {
            let (status, head, _) = connect(rig.proxy, "127.20.85.1:80").await;
            assert_eq!(status, 502, "{head}");
            assert!(head.contains("error=destination_ip_prohibited"), "{head}");
            assert!(
                !head.contains("announces a route"),
                "the connector refused, not the edge: {head}"
            );
        }
        // Matching routes still win over the fallback.
        for _ in 0..6 {
            drop(connect_ok(rig.proxy, echo.addr()).await);
        }
    }

    /// With one connector holding 50 long-lived pipes and another none, new streams go to the idle
    /// one.
    async fn new_streams_go_to_the_connector_with_fewest_outstanding() {
        let echo = EchoServer::start_with(ip("127.20.86.1"), Behaviour::Echo);
        let rig = Rig::start(Unmatched::Refuse).await;
        let busy = rig.replica(&["127.20.86.0/24"]).await;
        let mut held = Vec::new();
        for _ in 0..50 {
            held.push(connect_ok(rig.proxy, echo.addr()).await);
        }
        assert_eq!(rig.open_streams(busy.id), 50);
        let idle = rig.replica(&["127.20.86.0/24"]).await;
        for _ in 0..20 {
            held.push(connect_ok(rig.proxy, echo.addr()).await);
        }
        assert_eq!(
            (rig.open_streams(busy.id), rig.open_streams(idle.id)),
            (50, 20),
            "every new stream went to the connector with fewer outstanding streams"
        );
    }

    /// A connector silenced mid-transfer (as by SIGKILL): its connection leaves the registry after
    /// the dead-peer timeout, new streams go to the other connector, the `CONNECT` pipe it carried
    /// ends at the client with a TCP reset and the chunked `fetch()` body with no final chunk.
    async fn a_dead_connection_is_dropped_and_its_streams_are_cut() {
        let echo = EchoServer::start_with(ip("127.20.87.1"), Behaviour::Echo);
        let origin = HttpOrigin::start(ip("127.20.87.2")).await;
        let rig = Rig::start(Unmatched::Refuse).await;
        let relay = Relay::for_transport(rig.edge.quic_addr(), rig.edge.http2_addr()).await;
        let doomed = rig
            .replica_with(&["127.20.87.0/24"], Some(relay), None)
            .await;

        // Both streams run on the doomed connector: it is the only one yet.
        let mut pipe = connect_ok(rig.proxy, echo.addr()).await;
        let mut body = TcpStream::connect(rig.proxy).await.expect("binding");
        let request = format!(
            "GET http://{}/stream HTTP/1.1\r\nConnection: close\r\n\r\n",
            origin.addr
        );
        body.write_all(request.as_bytes()).await.expect("send");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("first") {
            let n = tokio::time::timeout(LIMIT, body.read(&mut buf))
                .await
                .expect("the first chunk in time")
                .expect("read");
            assert!(n > 0, "ended early: {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        assert_eq!(rig.open_streams(doomed.id), 2);
        let survivor = rig.replica(&["127.20.87.0/24"]).await;

        let killed = doomed.kill();
        let gone = rig.wait_gone(doomed.id).await;
        let detected = gone - killed;
        eprintln!("dead connection dropped {detected:?} after the kill");
        assert!(detected < DEAD_WITHIN, "dropped only after {detected:?}");

        // New streams go to the survivor.
        for _ in 0..5 {
            drop(connect_ok(rig.proxy, echo.addr()).await);
        }
        let response = fetch(rig.proxy, &format!("http://{}/hello", origin.addr)).await;
        assert_eq!(response.status, 200);
        assert!(rig.connections_of(survivor.id).len() == 1);

        // The CONNECT pipe: a reset, not a clean end.
        let (_, ended) = read_to_end_or_error(&mut pipe, Vec::new()).await;
        assert_eq!(
            ended,
            Err(ErrorKind::ConnectionReset),
            "a cut CONNECT pipe must not end with a clean EOF"
        );
        // The fetch body: cut without its terminating chunk.
        let (seen, _) = read_to_end_or_error(&mut body, seen).await;
        let text = String::from_utf8_lossy(&seen);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            !text.contains("\r\n0\r\n\r\n"),
            "a cut chunked body must not end cleanly: {text:?}"
        );
    }

    /// Streams opened on a connection that dies before the connector answered are retried once on
    /// the other connector: a `CONNECT` and a body-less `fetch()` succeed; a `fetch()` whose body
    /// has started streaming fails with `502 connection_terminated`.
    async fn a_stream_lost_before_the_answer_is_retried_once() {
        let echo = EchoServer::start_with(ip("127.20.88.1"), Behaviour::Echo);
        let origin = HttpOrigin::start(ip("127.20.88.1")).await;
        let hold = HoldOrigin::start(ip("127.20.88.2")).await;
        let rig = Rig::start(Unmatched::Refuse).await;
        // The doomed connector never gets an answer from its DNS: its streams to names wait until
        // the connection dies. The survivor's DNS knows the names.
        let stuck_dns = Dns::start(None).await;
        let good_dns = Dns::start(Some(ip("127.20.88.1"))).await;
        let routes = ["*.retry.test", "127.20.88.0/24"];
        let relay = Relay::for_transport(rig.edge.quic_addr(), rig.edge.http2_addr()).await;
        let doomed = rig
            .replica_with(&routes, Some(relay), Some(stuck_dns.addr))
            .await;

        let proxy = rig.proxy;
        let connect_target = format!("echo.retry.test:{}", echo.addr().port());
        let connecting = tokio::spawn(async move { connect(proxy, &connect_target).await });
        let fetch_url = format!("http://web.retry.test:{}/hello", origin.addr.port());
        let fetching = tokio::spawn(async move { fetch(proxy, &fetch_url).await });
        // A fetch whose body has begun: the head and 5 of its 10 bytes reach the origin, which
        // never answers.
        let mut upload = TcpStream::connect(proxy).await.expect("binding");
        let post = format!(
            "POST http://{}/upload HTTP/1.1\r\nContent-Length: 10\r\nConnection: close\r\n\r\n01234",
            hold.addr
        );
        upload.write_all(post.as_bytes()).await.expect("send");
        wait_until(
            "both names are being resolved by the doomed connector",
            || stuck_dns.asked("echo.retry.test") && stuck_dns.asked("web.retry.test"),
        )
        .await;
        wait_until("the upload's first bytes reach the origin", || {
            hold.has_received(b"01234")
        })
        .await;
        assert_eq!(rig.open_streams(doomed.id), 3);
        let _survivor = rig.replica_with(&routes, None, Some(good_dns.addr)).await;
        doomed.kill();

        let (status, head, mut tunnel) = tokio::time::timeout(LIMIT, connecting)
            .await
            .expect("the CONNECT is answered")
            .expect("no panic");
        assert_eq!(status, 200, "retried on the survivor: {head}");
        tunnel.write_all(b"again").await.expect("write");
        let mut got = [0u8; 5];
        tunnel.read_exact(&mut got).await.expect("echo");
        assert_eq!(&got, b"again");

        let response = tokio::time::timeout(LIMIT, fetching)
            .await
            .expect("the fetch is answered")
            .expect("no panic");
        assert_eq!((response.status, response.text()), (200, "hello".into()));

        let (raw, _) = read_to_end_or_error(&mut upload, Vec::new()).await;
        let response = parse_response(&raw).expect("an HTTP response");
        response.assert_proxy_error(502, "connection_terminated");
        assert!(good_dns.asked("echo.retry.test") && good_dns.asked("web.retry.test"));
    }
}
