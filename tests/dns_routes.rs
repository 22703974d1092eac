//! DNS cannot widen the route table (issue 15, point 3), through the in-process edge and the
//! real `underpass` binary configured by its TOML file:
//!
//! - a name reaches a special-purpose address (here loopback: where the connector's own admin
//!   listener lives) only where an IP route covers it;
//! - with `[dns] strict_resolved = true`, every address a name resolves to needs an IP route;
//! - a VPC Service's `resolver_ips` are asked only when an IP route or the connector's own
//!   `[dns] resolvers` allow them.
//!
//! Every refusal is `502` with `Proxy-Status: error=destination_ip_prohibited`, logged by the
//! connector with the name and the address, and sends nothing: counting servers on loopback
//! (a TCP sink, a DNS server that counts its datagrams and TCP connections) prove it.
//!
//! Every socket is on loopback. The one other address, 10.99.0.1, is only DNS data, asked for
//! only by a strict connector, which refuses it before any socket exists: the refusal's
//! `details` and log line come from that check, not from a failed connect. That a connector in
//! the default mode would dial it is tested at the unit level (`name_policy.rs` in the
//! connector), so that no packet ever leaves the host.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use underpass_e2e::connector_process::{ConnectorProcess, ConnectorSpec};
use underpass_e2e::http1::{connect, exchange, ConnectAnswer, Response};
use underpass_e2e::pattern_origin::PatternOrigin;
use underpass_e2e::{Behaviour, EchoServer};
use underpass_edge::config::{
    BindingConfig, EdgeConfig, NetworkConfig, ServiceConfig, ServiceHost, ServiceKind, ServiceTls,
};
use underpass_edge::tunnels::TunnelStore;
use underpass_edge::{Edge, EdgeHandle};

/// Guards a hang only; never decides a pass.
const LIMIT: Duration = Duration::from_secs(30);

const TUNNEL: &str = "dns-routes";

/// The address a strict connector must refuse without dialing: DNS data only.
const NEVER_DIALED: &str = "10.99.0.1";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

/// A DNS server on loopback answering A and AAAA questions from its records (anything else
/// is NXDOMAIN), counting every datagram and every TCP connection it gets. Stops when dropped.
struct CountingDns {
    addr: SocketAddr,
    datagrams: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl CountingDns {
    async fn start(at: IpAddr, records: &[(&str, &str)]) -> CountingDns {
        let mut table: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, addr) in records {
            table.entry((*name).to_owned()).or_default().push(ip(addr));
        }
        let table = Arc::new(table);
        // UDP port 0, then TCP on the same port (retried if another process holds it).
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind(SocketAddr::new(at, 0))
                .await
                .expect("bind the DNS socket");
            let addr = udp.local_addr().expect("a bound socket has an address");
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("a bound socket has an address");
        let datagrams = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = datagrams.clone();
        let answer = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                counted.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = dns_reply(&buf[..n], &table) {
                    let _ = udp.send_to(&reply, from).await;
                }
            }
        });
        let counted = connections.clone();
        let accept = tokio::spawn(async move {
            // Counted and dropped: the resolver asks over UDP; a TCP connection is a packet too.
            while tcp.accept().await.is_ok() {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        CountingDns {
            addr,
            datagrams,
            connections,
            tasks: vec![answer, accept],
        }
    }

    /// Datagrams and TCP connections received so far.
    fn packets(&self) -> (usize, usize) {
        (
            self.datagrams.load(Ordering::SeqCst),
            self.connections.load(Ordering::SeqCst),
        )
    }
}

impl Drop for CountingDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The answer to a one-question query, or `None` if it is not one.
fn dns_reply(query: &[u8], records: &HashMap<String, Vec<IpAddr>>) -> Option<Vec<u8>> {
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = query.get(12..at + 4)?;
    let name = labels.join(".");
    let known = records.get(&name);
    let answers: Vec<[u8; 16]> = known
        .into_iter()
        .flatten()
        .filter_map(|addr| match (qtype, addr) {
            (1, IpAddr::V4(v4)) => Some(v4.to_ipv6_mapped().octets()),
            (28, IpAddr::V6(v6)) => Some(v6.octets()),
            _ => None,
        })
        .collect();
    let mut reply = Vec::with_capacity(question.len() + 12 + answers.len() * 28);
    reply.extend_from_slice(query.get(..2)?);
    // Response, recursion desired and available; NXDOMAIN for an unknown name.
    reply.extend_from_slice(&[0x81, if known.is_some() { 0x80 } else { 0x83 }]);
    reply.extend_from_slice(&[0, 1]);
    reply.extend_from_slice(&u16::try_from(answers.len()).ok()?.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    for octets in answers {
        let data: &[u8] = if qtype == 1 { &octets[12..] } else { &octets };
        // The name by pointer to the question, the type, class IN, TTL 0, the address.
        reply.extend_from_slice(&[0xc0, 0x0c]);
        reply.extend_from_slice(&qtype.to_be_bytes());
        reply.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
        reply.extend_from_slice(&u16::try_from(data.len()).ok()?.to_be_bytes());
        reply.extend_from_slice(data);
    }
    Some(reply)
}

/// The in-process edge (a network binding `net`, and a service binding `svc` when asked for)
/// and one connector process.
struct Rig {
    connector: ConnectorProcess,
    edge: EdgeHandle,
    _state: TempDir,
}

/// A VPC Service whose host is a name, resolved by the connector with `resolvers`.
struct NamedService {
    hostname: &'static str,
    http_port: u16,
    resolvers: Vec<SocketAddr>,
}

impl Rig {
    /// Starts the edge, then a connector with `routes` and the TOML `dns` (the `[dns]` table's
    /// body), and waits until it is ready.
    async fn start(routes: &[&str], dns: &str, service: Option<NamedService>) -> Rig {
        let state = tempfile::Builder::new()
            .prefix("underpass-dns-routes-")
            .tempdir()
            .expect("create tempdir");
        let loopback = SocketAddr::new(ip("127.0.0.1"), 0);
        let mut config = EdgeConfig::new(state.path().join("edge-state"));
        config.listen = loopback;
        config.networks.push(NetworkConfig {
            name: "net".into(),
            tunnel: TUNNEL.into(),
        });
        config
            .bindings
            .push(BindingConfig::network("net", loopback, "net"));
        if let Some(service) = service {
            config.services.push(ServiceConfig {
                name: "svc".into(),
                kind: ServiceKind::Http,
                tunnel: TUNNEL.into(),
                host: ServiceHost::hostname(service.hostname, service.resolvers),
                tcp_port: None,
                http_port: Some(service.http_port),
                https_port: None,
                tls: ServiceTls::default(),
            });
            config
                .bindings
                .push(BindingConfig::service("svc", loopback, "svc"));
        }
        underpass_edge::state::ensure_dir(&config.state_dir).expect("create the state dir");
        TunnelStore::open(&config.state_dir)
            .and_then(|store| store.create(TUNNEL))
            .expect("create the tunnel");
        let edge = Edge::start(config).await.expect("the edge starts");
        let token = edge.token(TUNNEL).expect("the edge knows the tunnel");
        let mut spec = ConnectorSpec::new("dns-routes", &token)
            .connections(1)
            .section(&format!("[dns]\n{dns}"));
        for route in routes {
            spec = spec.route(route, None);
        }
        let mut connector = spec.start().await;
        connector
            .wait_ready(LIMIT)
            .await
            .unwrap_or_else(|e| panic!("the connector is not ready: {e:#}\n{}", connector.log()));
        Rig {
            connector,
            edge,
            _state: state,
        }
    }

    /// `CONNECT target` through the network binding.
    async fn connect(&self, target: &str) -> ConnectAnswer {
        let binding = self.binding("net");
        connect(binding, target, LIMIT).await
    }

    /// `GET http://svc.company.test{path}` through the service binding.
    async fn fetch_service(&self, path: &str) -> Response {
        let stream = TcpStream::connect(self.binding("svc"))
            .await
            .expect("the service binding accepts");
        let request =
            format!("GET http://svc.company.test{path} HTTP/1.1\r\nConnection: close\r\n\r\n");
        tokio::time::timeout(LIMIT, exchange(stream, request.as_bytes()))
            .await
            .expect("an answer in time")
            .expect("an HTTP response")
    }

    fn binding(&self, name: &str) -> SocketAddr {
        self.edge
            .binding_addr(name)
            .unwrap_or_else(|| panic!("the edge did not bind {name:?}"))
    }

    /// The connector's log lines holding every one of `words`.
    fn log_lines_with(&self, words: &[&str]) -> Vec<String> {
        self.connector
            .log()
            .lines()
            .filter(|line| words.iter().all(|word| line.contains(word)))
            .map(str::to_owned)
            .collect()
    }
}

/// Asserts `answer` is a `502` refusal with `error` and `details` containing `why`.
fn assert_refused(answer: &ConnectAnswer, error: &str, why: &str) {
    assert_eq!(
        (answer.status, answer.proxy_error()),
        (502, Some(error)),
        "{}",
        answer.head
    );
    assert!(
        answer.head.contains(why),
        "details lack {why:?}: {}",
        answer.head
    );
}

/// Sends `hello` through an accepted CONNECT tunnel and expects it echoed.
async fn assert_echoes(mut answer: ConnectAnswer) {
    assert_eq!(answer.status, 200, "{}", answer.head);
    answer.stream.write_all(b"hello").await.expect("write");
    let mut echoed = [0u8; 5];
    tokio::time::timeout(LIMIT, answer.stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("read the echo");
    assert_eq!(&echoed, b"hello");
}

/// `lo.company.test` resolves to 127.0.0.1, where a counting sink listens (as the connector's
/// admin listener does): with only the hostname route it is refused and the sink sees no
/// connection, also through the IPv4-mapped form `::ffff:127.0.0.1`; with an IP route covering
/// 127.0.0.1 it is dialed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_reaches_loopback_only_where_an_ip_route_covers_it() {
    let sink = EchoServer::start_with(ip("127.0.0.1"), Behaviour::Echo);
    let port = sink.addr().port();
    let dns = CountingDns::start(
        ip("127.20.90.53"),
        &[
            ("lo.company.test", "127.0.0.1"),
            ("mapped.company.test", "::ffff:127.0.0.1"),
        ],
    )
    .await;
    let resolvers = format!("resolvers = [\"{}\"]\n", dns.addr);

    let rig = Rig::start(&["*.company.test"], &resolvers, None).await;
    for name in ["lo.company.test", "mapped.company.test"] {
        let answer = rig.connect(&format!("{name}:{port}")).await;
        assert_refused(
            &answer,
            "destination_ip_prohibited",
            "127.0.0.1 is loopback and not inside any IP route",
        );
        let logged = rig.log_lines_with(&[name, "127.0.0.1", "special-purpose", "skipped"]);
        assert_eq!(logged.len(), 1, "{}", rig.connector.log());
    }
    assert_eq!(sink.accepted(), 0, "a refused name reached the sink");
    drop(rig);

    let rig = Rig::start(&["*.company.test", "127.0.0.1/32"], &resolvers, None).await;
    assert_echoes(rig.connect(&format!("lo.company.test:{port}")).await).await;
    assert_echoes(rig.connect(&format!("mapped.company.test:{port}")).await).await;
    assert_eq!(sink.accepted(), 2);
}

/// `[dns] strict_resolved = true`: a name that resolves to an address no IP route covers is
/// refused before any socket is opened (its `details` and log line are the policy's, not a
/// connect error's), while a name resolving inside an IP route is still dialed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_resolved_needs_an_ip_route_for_every_address() {
    let sink = EchoServer::start_with(ip("127.20.91.1"), Behaviour::Echo);
    let port = sink.addr().port();
    let dns = CountingDns::start(
        ip("127.20.91.53"),
        &[
            ("ok.company.test", "127.20.91.1"),
            ("unr.company.test", NEVER_DIALED),
        ],
    )
    .await;
    let rig = Rig::start(
        &["*.company.test", "127.20.91.0/24"],
        &format!("resolvers = [\"{}\"]\nstrict_resolved = true\n", dns.addr),
        None,
    )
    .await;

    assert_echoes(rig.connect(&format!("ok.company.test:{port}")).await).await;
    assert_eq!(sink.accepted(), 1);

    let answer = rig.connect(&format!("unr.company.test:{port}")).await;
    assert_refused(
        &answer,
        "destination_ip_prohibited",
        &format!("{NEVER_DIALED} is refused by dns.strict_resolved: not inside any IP route"),
    );
    assert!(!answer.head.contains("connect to"), "{}", answer.head);
    let logged = rig.log_lines_with(&[
        "unr.company.test",
        NEVER_DIALED,
        "strict_resolved",
        "skipped",
    ]);
    assert_eq!(logged.len(), 1, "{}", rig.connector.log());
}

/// A service `svc.company.test` whose `resolver_ips` name a DNS server on an unrouted loopback
/// address: the connector refuses to ask it (no datagram, no TCP connection reaches it) and
/// the fetch is refused; once an IP route covers the server, or it is among the connector's own
/// `[dns] resolvers`, it answers and the origin serves the fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_resolvers_are_asked_only_when_routed_or_own() {
    let origin = PatternOrigin::start(ip("127.20.92.1"));
    let service_dns =
        CountingDns::start(ip("127.20.93.53"), &[("svc.company.test", "127.20.92.1")]).await;
    let own_dns = CountingDns::start(ip("127.20.94.53"), &[]).await;
    let service = || NamedService {
        hostname: "svc.company.test",
        http_port: origin.addr().port(),
        resolvers: vec![service_dns.addr],
    };
    let path = PatternOrigin::path(5, 5, Duration::ZERO);
    let routes = ["*.company.test", "127.20.92.0/24"];
    let own = format!("resolvers = [\"{}\"]\n", own_dns.addr);

    let rig = Rig::start(&routes, &own, Some(service())).await;
    let response = rig.fetch_service(&path).await;
    response.assert_proxy_error(502, "destination_ip_prohibited");
    let why = format!(
        "resolver {} is not one of the connector's own",
        service_dns.addr
    );
    assert!(response.text().contains(&why), "{}", response.text());
    assert_eq!(
        service_dns.packets(),
        (0, 0),
        "the refused resolver was asked"
    );
    assert_eq!(origin.connections(), 0);
    let logged = rig.log_lines_with(&[
        "svc.company.test",
        &service_dns.addr.to_string(),
        "nothing sent to it",
    ]);
    assert_eq!(logged.len(), 1, "{}", rig.connector.log());
    drop(rig);

    // Inside an IP route (which allows its port: every port here).
    let rig = Rig::start(
        &[&routes[..], &["127.20.93.0/24"]].concat(),
        &own,
        Some(service()),
    )
    .await;
    let response = rig.fetch_service(&path).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.body, underpass_e2e::pattern::bytes(5));
    assert!(service_dns.packets().0 > 0);
    drop(rig);

    // One of the connector's own resolvers.
    let asked = service_dns.packets().0;
    let both = format!(
        "resolvers = [\"{}\", \"{}\"]\n",
        own_dns.addr, service_dns.addr
    );
    let rig = Rig::start(&routes, &both, Some(service())).await;
    let response = rig.fetch_service(&path).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(service_dns.packets().0 > asked);
    assert_eq!(origin.requests(), 2);
}
