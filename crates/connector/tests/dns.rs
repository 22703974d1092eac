//! Name resolution against a real DNS server (dnsmasq on a loopback address): resolved names
//! are dialed, NXDOMAIN and timeouts map to their codes, every resolved address passes the
//! deny list again, and a name reaches a loopback address or asks a name server only where an
//! IP route (or the connector's own resolver list) allows it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use underpass_connector::config::ConnectorConfig;
use underpass_connector::dial::Dialer;
use underpass_connector::resolve::Resolver;
use underpass_proto::{DialTarget, Host, ProxyStatus, TunnelId, TunnelSecret, TunnelToken};

const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// Guards against hangs only.
const GUARD: Duration = Duration::from_secs(60);

/// dnsmasq answering only from `records`; every name under `nx.test` is NXDOMAIN. Killed on
/// drop.
struct Dnsmasq {
    addr: SocketAddr,
    child: Child,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dnsmasq {
    async fn start(ip: IpAddr, records: &[(&str, IpAddr)]) -> Dnsmasq {
        assert!(
            std::path::Path::new(DNSMASQ).exists(),
            "{DNSMASQ} is needed for these tests (apt-get install dnsmasq-base)"
        );
        for _ in 0..5 {
            let port = UdpSocket::bind((ip, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = SocketAddr::new(ip, port);
            let mut command = Command::new(DNSMASQ);
            command
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--pid-file",
                    "--user=root",
                    "--local=/nx.test/",
                ])
                .arg(format!("--listen-address={ip}"))
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            for (name, record) in records {
                command.arg(format!("--host-record={name},{record}"));
                command.arg(format!("--local=/{name}/"));
            }
            let mut dnsmasq = Dnsmasq {
                addr,
                child: command.spawn().expect("spawn dnsmasq"),
            };
            if dnsmasq.ready().await {
                return dnsmasq;
            }
        }
        panic!("dnsmasq did not start on {ip}");
    }

    /// Wait until the server answers NXDOMAIN for a name under `nx.test`; false if it exited
    /// (port taken).
    async fn ready(&mut self) -> bool {
        let deadline = Instant::now() + GUARD;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            let resolver = Resolver::new(&[self.addr], Duration::from_millis(500)).unwrap();
            if let Err(e) = resolver.lookup("probe.nx.test", &[]).await {
                if e.details.contains("NXDOMAIN") {
                    return true;
                }
            }
            tokio::task::yield_now().await;
        }
        panic!("dnsmasq on {} never answered", self.addr);
    }
}

fn token() -> TunnelToken {
    TunnelToken {
        tunnel_id: TunnelId([1; 16]),
        secret: TunnelSecret([2; 32]),
        edges: vec!["127.0.0.1:7844".into()],
        server_name: "edge.underpass.test".into(),
        ca_pin: [3; 32],
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Every `.test` name is routed, and so (by IP, as loopback reached through a name must be) are
/// 127.30.0.0/16 and `::1`; 127.30.66.0/24 is denied.
fn dialer(resolvers: &[SocketAddr], dns_timeout: Duration) -> Dialer {
    dialer_routing(&["127.30.0.0/16", "::1"], resolvers, dns_timeout)
}

/// [`dialer`] with these IP routes instead.
fn dialer_routing(ip_routes: &[&str], resolvers: &[SocketAddr], dns_timeout: Duration) -> Dialer {
    let mut config = ConnectorConfig::builder(token()).route("*.test");
    for route in ip_routes {
        config = config.route(route);
    }
    let config = config
        .deny(&["127.30.66.0/24"])
        .resolvers(resolvers)
        .dns_timeout(dns_timeout)
        .build()
        .unwrap();
    Dialer::from_config(&config).unwrap()
}

async fn dial(
    dialer: &Dialer,
    target: DialTarget,
) -> Result<tokio::net::TcpStream, (ProxyStatus, String)> {
    tokio::time::timeout(GUARD, dialer.dial(&target))
        .await
        .expect("dial hung")
        .map_err(|e| (e.status, e.details))
}

#[tokio::test]
async fn names_resolve_and_are_rechecked_against_the_deny_list() {
    let origin = TcpListener::bind((v4(127, 30, 0, 7), 0)).await.unwrap();
    let port = origin.local_addr().unwrap().port();
    let mixed_origin = TcpListener::bind((v4(127, 30, 0, 8), port)).await.unwrap();
    let dual_origin = TcpListener::bind((v4(127, 30, 0, 9), port)).await.unwrap();
    let dns = Dnsmasq::start(
        v4(127, 53, 0, 1),
        &[
            ("db.test", v4(127, 30, 0, 7)),
            ("denied.test", v4(127, 30, 66, 1)),
            ("mixed.test", v4(127, 30, 66, 2)),
            ("mixed.test", v4(127, 30, 0, 8)),
            // ::1 has nothing listening on the port: the IPv6 attempt is refused first.
            ("dual.test", IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ("dual.test", v4(127, 30, 0, 9)),
        ],
    )
    .await;
    let dialer = dialer(&[dns.addr], Duration::from_secs(5));
    let name = |n: &str| DialTarget::new(Host::Name(n.into()), port);

    let stream = dial(&dialer, name("db.test")).await.unwrap();
    assert_eq!(stream.peer_addr().unwrap(), origin.local_addr().unwrap());
    // The name is normalised before the route check and the lookup.
    let stream = dial(&dialer, name("DB.Test.")).await.unwrap();
    assert_eq!(stream.peer_addr().unwrap(), origin.local_addr().unwrap());

    let (status, details) = dial(&dialer, name("denied.test")).await.unwrap_err();
    assert_eq!(status, ProxyStatus::DestinationIpProhibited, "{details}");
    assert!(
        details.contains("127.30.66.1 is denied by 127.30.66.0/24"),
        "{details}"
    );

    let stream = dial(&dialer, name("mixed.test")).await.unwrap();
    assert_eq!(
        stream.peer_addr().unwrap(),
        mixed_origin.local_addr().unwrap()
    );

    let stream = dial(&dialer, name("dual.test")).await.unwrap();
    assert_eq!(
        stream.peer_addr().unwrap(),
        dual_origin.local_addr().unwrap()
    );

    let (status, details) = dial(&dialer, name("gone.nx.test")).await.unwrap_err();
    assert_eq!(status, ProxyStatus::DnsError, "{details}");
    assert!(details.contains("NXDOMAIN"), "{details}");
}

#[tokio::test]
async fn request_resolvers_are_used_and_checked() {
    let origin = TcpListener::bind((v4(127, 30, 1, 7), 0)).await.unwrap();
    let port = origin.local_addr().unwrap().port();
    let dns = Dnsmasq::start(v4(127, 53, 0, 2), &[("svc.test", v4(127, 30, 1, 7))]).await;
    let discard: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut target = DialTarget::new(Host::Name("svc.test".into()), port);
    target.resolvers = vec![dns.addr];

    // No IP route covers the request's name server, and it is not the connector's own:
    // refused before the lookup.
    let unrouted = dialer(&[discard], Duration::from_secs(5));
    let (status, details) = dial(&unrouted, target.clone()).await.unwrap_err();
    assert_eq!(status, ProxyStatus::DestinationIpProhibited, "{details}");
    assert!(
        details.contains(&format!("resolver {} ", dns.addr)),
        "{details}"
    );

    // Routed by IP: the connector's own resolver (discard port) never answers; the request's
    // does.
    let routed = dialer_routing(
        &["127.30.0.0/16", "127.53.0.0/16"],
        &[discard],
        Duration::from_secs(5),
    );
    let stream = dial(&routed, target.clone()).await.unwrap();
    assert_eq!(stream.peer_addr().unwrap(), origin.local_addr().unwrap());

    // One of the connector's own name servers: allowed without a route.
    let own = dialer(&[discard, dns.addr], Duration::from_secs(5));
    let stream = dial(&own, target.clone()).await.unwrap();
    assert_eq!(stream.peer_addr().unwrap(), origin.local_addr().unwrap());

    target.resolvers = vec!["127.30.66.53:53".parse().unwrap()];
    let (status, details) = dial(&routed, target).await.unwrap_err();
    assert_eq!(status, ProxyStatus::DestinationIpProhibited, "{details}");
    assert!(details.contains("deny list"), "{details}");
}

#[tokio::test]
async fn a_name_reaches_loopback_only_where_an_ip_route_does() {
    let origin = std::net::TcpListener::bind((v4(127, 31, 0, 7), 0)).unwrap();
    origin.set_nonblocking(true).unwrap();
    let port = origin.local_addr().unwrap().port();
    let dns = Dnsmasq::start(
        v4(127, 53, 0, 4),
        &[
            ("lo.test", v4(127, 31, 0, 7)),
            ("mapped.test", "::ffff:127.31.0.7".parse().unwrap()),
        ],
    )
    .await;
    let name = |n: &str| DialTarget::new(Host::Name(n.into()), port);

    // 127.31.0.0/16 is routed by no IP route: the name is refused, and nothing connected.
    let unrouted = dialer(&[dns.addr], Duration::from_secs(5));
    for host in ["lo.test", "mapped.test"] {
        let (status, details) = dial(&unrouted, name(host)).await.unwrap_err();
        assert_eq!(status, ProxyStatus::DestinationIpProhibited, "{details}");
        assert!(
            details.contains(&format!(
                "{host} resolved only to refused addresses: 127.31.0.7 is loopback and not \
                 inside any IP route"
            )),
            "{details}"
        );
    }
    let nothing = origin.accept().map(|(_, peer)| peer);
    assert_eq!(
        nothing.map_err(|e| e.kind()).unwrap_err(),
        std::io::ErrorKind::WouldBlock,
        "the refused name was dialed"
    );

    // Routed by IP as well: dialed.
    let routed = dialer_routing(&["127.31.0.0/24"], &[dns.addr], Duration::from_secs(5));
    for host in ["lo.test", "mapped.test"] {
        let stream = dial(&routed, name(host)).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), origin.local_addr().unwrap());
    }
}

#[tokio::test]
async fn a_silent_resolver_is_dns_timeout() {
    // A UDP socket that never answers, and no TCP listener on its port.
    let silent = UdpSocket::bind((v4(127, 53, 0, 3), 0)).unwrap();
    let dialer = dialer(&[silent.local_addr().unwrap()], Duration::from_millis(400));
    let target = DialTarget::new(Host::Name("slow.test".into()), 80);
    let (status, details) = dial(&dialer, target).await.unwrap_err();
    assert_eq!(status, ProxyStatus::DnsTimeout, "{details}");
}
