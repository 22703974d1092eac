//! The dialer against real sockets on loopback: route checks before any packet leaves, connect
//! failures mapped to Proxy-Status codes, Happy Eyeballs, IPv4-mapped addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use underpass_connector::config::ConnectorConfig;
use underpass_connector::dial::{happy_eyeballs, Dialer, ATTEMPT_DELAY};
use underpass_proto::{DialTarget, Host, ProxyStatus, TunnelId, TunnelSecret, TunnelToken};

/// Guards against hangs only.
const GUARD: Duration = Duration::from_secs(60);

fn token() -> TunnelToken {
    TunnelToken {
        tunnel_id: TunnelId([1; 16]),
        secret: TunnelSecret([2; 32]),
        edges: vec!["127.0.0.1:7844".into()],
        server_name: "edge.underpass.test".into(),
        ca_pin: [3; 32],
    }
}

/// Routes 127.20.0.0/16 (all ports), 127.21.0.0/16 port 80 only, `::1`, `db.test`;
/// denies 127.20.66.0/24. Names would be resolved by a server on 127.0.0.1:9 (discard), which
/// these tests never reach.
fn dialer() -> Dialer {
    let config = ConnectorConfig::builder(token())
        .route("127.20.0.0/16")
        .route_ports("127.21.0.0/16", "80")
        .route("::1")
        .route("db.test")
        .deny(&["127.20.66.0/24"])
        .resolvers(&["127.0.0.1:9".parse().unwrap()])
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("valid config");
    Dialer::from_config(&config).expect("dialer")
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

async fn listener(ip: IpAddr) -> TcpListener {
    TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap()
}

/// A port on `ip` with nothing listening (bound, then released).
async fn closed_port(ip: IpAddr) -> SocketAddr {
    let listener = listener(ip).await;
    listener.local_addr().unwrap()
}

/// A listener whose accept queue is full, so that further SYNs are dropped and connects to it
/// hang. Kept alive with its queued connections by the returned value.
async fn blackhole(ip: IpAddr) -> (SocketAddr, TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    // Fill the queue until a connect stays unanswered.
    loop {
        assert!(queued.len() < 16, "the accept queue never filled");
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connect to the blackhole failed: {e}"),
            Err(_) => return (addr, listener, queued),
        }
    }
}

async fn dial(dialer: &Dialer, host: Host, port: u16) -> Result<TcpStream, (ProxyStatus, String)> {
    let target = DialTarget::new(host, port);
    tokio::time::timeout(GUARD, dialer.dial(&target))
        .await
        .expect("dial hung")
        .map_err(|e| (e.status, e.details))
}

async fn assert_echo(mut stream: TcpStream, listener: &TcpListener) {
    let (mut accepted, _) = listener.accept().await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn listening_port_connects_with_nodelay() {
    let dialer = dialer();
    let origin = listener(ip(127, 20, 0, 5)).await;
    let addr = origin.local_addr().unwrap();
    let stream = dial(&dialer, Host::Ip(addr.ip()), addr.port())
        .await
        .unwrap();
    assert_eq!(stream.peer_addr().unwrap(), addr);
    assert!(stream.nodelay().unwrap());
    assert_echo(stream, &origin).await;
}

#[tokio::test]
async fn closed_port_is_connection_refused() {
    let addr = closed_port(ip(127, 20, 0, 6)).await;
    let (status, details) = dial(&dialer(), Host::Ip(addr.ip()), addr.port())
        .await
        .unwrap_err();
    assert_eq!(status, ProxyStatus::ConnectionRefused);
    assert!(details.contains(&addr.to_string()), "{details}");
}

#[tokio::test]
async fn denied_ip_is_prohibited_before_any_packet() {
    // A listener there proves that no connection was made.
    let origin = listener(ip(127, 20, 66, 1)).await;
    let addr = origin.local_addr().unwrap();
    let (status, details) = dial(&dialer(), Host::Ip(addr.ip()), addr.port())
        .await
        .unwrap_err();
    assert_eq!(status, ProxyStatus::DestinationIpProhibited, "{details}");
    let nothing = tokio::time::timeout(Duration::from_millis(100), origin.accept()).await;
    assert!(nothing.is_err(), "a connection reached the denied origin");
}

#[tokio::test]
async fn unrouted_ip_and_port_are_prohibited() {
    let dialer = dialer();
    let origin = listener(ip(127, 22, 0, 1)).await;
    let addr = origin.local_addr().unwrap();
    let (status, _) = dial(&dialer, Host::Ip(addr.ip()), addr.port())
        .await
        .unwrap_err();
    assert_eq!(status, ProxyStatus::DestinationIpProhibited);
    // 127.21.0.0/16 is routed on port 80 only.
    let origin = listener(ip(127, 21, 0, 1)).await;
    let addr = origin.local_addr().unwrap();
    assert_ne!(addr.port(), 80);
    let (status, _) = dial(&dialer, Host::Ip(addr.ip()), addr.port())
        .await
        .unwrap_err();
    assert_eq!(status, ProxyStatus::DestinationIpProhibited);
}

#[tokio::test]
async fn unrouted_name_is_not_found() {
    let (status, details) = dial(&dialer(), Host::Name("other.test".into()), 80)
        .await
        .unwrap_err();
    assert_eq!(status, ProxyStatus::DestinationNotFound, "{details}");
}

#[tokio::test]
async fn a_name_that_is_an_ip_literal_is_checked_as_an_ip() {
    let dialer = dialer();
    let origin = listener(ip(127, 20, 0, 7)).await;
    let addr = origin.local_addr().unwrap();
    let stream = dial(&dialer, Host::Name("127.20.0.7".into()), addr.port())
        .await
        .unwrap();
    assert_echo(stream, &origin).await;
    let (status, _) = dial(&dialer, Host::Name("127.22.0.7".into()), addr.port())
        .await
        .unwrap_err();
    assert_eq!(status, ProxyStatus::DestinationIpProhibited);
    let (status, _) = dial(&dialer, Host::Name("127.20.66.7".into()), addr.port())
        .await
        .unwrap_err();
    assert_eq!(status, ProxyStatus::DestinationIpProhibited);
}

#[tokio::test]
async fn ipv4_mapped_ipv6_is_treated_as_ipv4() {
    let dialer = dialer();
    let origin = listener(ip(127, 20, 0, 8)).await;
    let addr = origin.local_addr().unwrap();
    let mapped = IpAddr::V6(Ipv4Addr::new(127, 20, 0, 8).to_ipv6_mapped());
    let stream = dial(&dialer, Host::Ip(mapped), addr.port()).await.unwrap();
    assert_eq!(stream.peer_addr().unwrap(), addr);
    assert_echo(stream, &origin).await;
    // The deny list applies to the mapped form too.
    let denied = IpAddr::V6(Ipv4Addr::new(127, 20, 66, 8).to_ipv6_mapped());
    let (status, _) = dial(&dialer, Host::Ip(denied), addr.port())
        .await
        .unwrap_err();
    assert_eq!(status, ProxyStatus::DestinationIpProhibited);
    let denied = Host::Name("::ffff:127.20.66.8".into());
    let (status, _) = dial(&dialer, denied, addr.port()).await.unwrap_err();
    assert_eq!(status, ProxyStatus::DestinationIpProhibited);
}

#[tokio::test]
async fn ipv6_destinations_work() {
    let origin = listener(IpAddr::V6(Ipv6Addr::LOCALHOST)).await;
    let addr = origin.local_addr().unwrap();
    let stream = dial(&dialer(), Host::Ip(addr.ip()), addr.port())
        .await
        .unwrap();
    assert_echo(stream, &origin).await;
}

#[tokio::test]
async fn happy_eyeballs_moves_past_a_refused_address() {
    let closed = closed_port(IpAddr::V6(Ipv6Addr::LOCALHOST)).await;
    let origin = listener(ip(127, 20, 0, 9)).await;
    let open = origin.local_addr().unwrap();
    let stream = happy_eyeballs(&[closed, open], ATTEMPT_DELAY, GUARD)
        .await
        .unwrap();
    assert_eq!(stream.peer_addr().unwrap(), open);
    assert_echo(stream, &origin).await;
}

#[tokio::test]
async fn happy_eyeballs_starts_the_next_attempt_while_one_hangs() {
    let (hanging, _keep, _queued) = blackhole(ip(127, 20, 0, 10)).await;
    let origin = listener(ip(127, 20, 0, 11)).await;
    let open = origin.local_addr().unwrap();
    // The first address never answers; the second must win without waiting for the first.
    let stream = happy_eyeballs(&[hanging, open], ATTEMPT_DELAY, GUARD)
        .await
        .unwrap();
    assert_eq!(stream.peer_addr().unwrap(), open);
}

#[tokio::test]
async fn every_address_refused_is_connection_refused() {
    let a = closed_port(ip(127, 20, 0, 12)).await;
    let b = closed_port(ip(127, 20, 0, 13)).await;
    let err = happy_eyeballs(&[a, b], ATTEMPT_DELAY, GUARD)
        .await
        .unwrap_err();
    assert_eq!(err.status, ProxyStatus::ConnectionRefused);
    assert!(err.details.contains(&a.to_string()), "{}", err.details);
    assert!(err.details.contains(&b.to_string()), "{}", err.details);
}

#[tokio::test]
async fn an_unanswered_connect_is_connection_timeout() {
    let (hanging, _keep, _queued) = blackhole(ip(127, 20, 0, 14)).await;
    let config = ConnectorConfig::builder(token())
        .route("127.20.0.0/16")
        .deny::<&str>(&[])
        .resolvers(&["127.0.0.1:9".parse().unwrap()])
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let dialer = Dialer::from_config(&config).unwrap();
    let (status, details) = dial(&dialer, Host::Ip(hanging.ip()), hanging.port())
        .await
        .unwrap_err();
    assert_eq!(status, ProxyStatus::ConnectionTimeout, "{details}");
}
