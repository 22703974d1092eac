//! Smoke tests of the test-support builders: each real server starts, answers as documented,
//! and is gone (reaped) after drop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioAsyncResolver;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use underpass_e2e::dns::{self, RecordType};
use underpass_e2e::{
    http1, pattern, workerd_binary, Behaviour, ConnEvent, Dnsmasq, EchoServer, Location, Nginx,
    Redis, TestPki,
};

const WAIT: Duration = Duration::from_secs(10);

fn ip(c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, c, d))
}

fn assert_reaped(pid: u32) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} still exists (running or zombie) after drop"
    );
}

#[tokio::test]
async fn nginx_serves_files_details_and_logs_over_http() {
    let nginx = Nginx::builder(ip(41, 1))
        .location(Location::json("/users", r#"[{"id":1,"name":"Ada"}]"#))
        .location(Location::pattern_file("/big", 3 * 1024 * 1024 + 17))
        .location(Location::details("/echo"))
        .location(Location::status(
            "/fail",
            503,
            "application/json",
            r#"{"error":"costs $5 \ "#,
        ))
        .location(Location::body_sink("/api/post", 201, r#"{"created":true}"#))
        .start()
        .await;
    let addr = nginx.http_addr();

    let users = http1::get(addr, "internal-api.company.local", "/users")
        .await
        .unwrap();
    assert_eq!(users.status, 200);
    assert_eq!(users.header("content-type"), Some("application/json"));
    assert_eq!(users.json().unwrap()[0]["name"], "Ada");

    let big = http1::get(addr, "x.test", "/big").await.unwrap();
    assert_eq!(big.status, 200);
    assert_eq!(
        hex::encode(Sha256::digest(&big.body)),
        nginx.sha256("/big").unwrap()
    );
    assert_eq!(
        nginx.sha256("/big").unwrap(),
        pattern::sha256_hex(3 * 1024 * 1024 + 17)
    );

    let details = http1::get(addr, "svc.test", "/echo/a?b=c").await.unwrap();
    let details = details.json().unwrap();
    assert_eq!(details["host"], "svc.test");
    assert_eq!(details["request_uri"], "/echo/a?b=c");
    assert_eq!(details["request_method"], "GET");

    let fail = http1::get(addr, "x.test", "/fail").await.unwrap();
    assert_eq!(fail.status, 503);
    assert_eq!(fail.text(), r#"{"error":"costs $5 \ "#);

    let body = r#"{"name":"Grace","role":"admin"}"#;
    let request = format!(
        "POST /api/post HTTP/1.1\r\nHost: internal-api.company.local\r\n\
         Authorization: Bearer secret-token\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let stream = TcpStream::connect(addr).await.unwrap();
    let created = http1::exchange(stream, request.as_bytes()).await.unwrap();
    assert_eq!(created.status, 201);
    assert_eq!(created.text(), r#"{"created":true}"#);

    let log = nginx.wait_access_log(5, WAIT).await;
    assert_eq!(
        log.len(),
        5,
        "one line per request, none for the internal sink: {log:#?}"
    );
    assert_eq!(log[0]["host"], "internal-api.company.local");
    assert_eq!(log[0]["request_uri"], "/users");
    assert_eq!(log[0]["status"], "200");
    let post = &log[4];
    assert_eq!(post["request_method"], "POST");
    assert_eq!(post["http_authorization"], "Bearer secret-token");
    assert_eq!(post["content_length"], body.len().to_string());
    assert_eq!(post["request_body"], body);
    assert_eq!(post["status"], "201");

    let pid = nginx.pid();
    drop(nginx);
    assert_reaped(pid);
}

#[tokio::test]
async fn nginx_answers_https_by_sni() {
    let pki = TestPki::new("smoke CA");
    // Without SNI (a client dialing an IP) nginx answers with its first, default site.
    let a = pki.issue(&["a.test", "127.0.41.2"]);
    let b = pki.issue(&["b.test"]);
    let nginx = Nginx::builder(ip(41, 2))
        .tls_site("a.test", &a.chain_pem, &a.key_pem)
        .tls_site("b.test", &b.chain_pem, &b.key_pem)
        .location(Location::details("/"))
        .start()
        .await;
    let https = nginx
        .https_addr()
        .expect("TLS sites give an HTTPS listener");

    for name in ["a.test", "b.test"] {
        // rustls checks the chain against the test CA and the certificate against `name`:
        // success proves nginx chose the certificate by SNI.
        let response = http1::get_tls(https, name, "/who", pki.client_config())
            .await
            .unwrap_or_else(|e| panic!("HTTPS as {name}: {e:#}"));
        assert_eq!(response.status, 200);
        let details = response.json().unwrap();
        assert_eq!(details["ssl_server_name"], name);
        assert_eq!(details["server_name"], name);
        assert_eq!(details["scheme"], "https");
        assert_eq!(response.header("x-underpass-server"), Some(name));
    }

    // An IP has no SNI: the default site's certificate, with its IP SAN, verifies.
    let by_ip = http1::get_tls(https, "127.0.41.2", "/ip", pki.client_config()).await;
    assert!(by_ip.is_ok(), "IP SAN: {by_ip:?}");

    // A client trusting another CA refuses the certificate.
    let other = TestPki::new("other CA");
    let err = http1::get_tls(https, "a.test", "/", other.client_config())
        .await
        .expect_err("unknown CA must fail");
    assert!(format!("{err:#}").contains("certificate"), "{err:#}");

    let log = nginx.wait_access_log(3, WAIT).await;
    assert_eq!(log[0]["ssl_server_name"], "a.test");
    assert_eq!(log[1]["ssl_server_name"], "b.test");
    assert_eq!(log[1]["http_host"], "b.test");
}

#[test]
fn nginx_startup_failure_shows_its_error_log() {
    let err = Nginx::builder(ip(41, 8))
        .location(Location::raw("/x", "no_such_directive on;"))
        .try_start()
        .expect_err("a bad config must not start");
    let message = format!("{err:#}");
    assert!(message.contains("unknown directive"), "{message}");
    assert!(message.contains("no_such_directive"), "{message}");
}

#[tokio::test]
async fn redis_answers_ping_after_half_close() {
    let redis = Redis::start(ip(41, 3)).await;
    let mut stream = TcpStream::connect(redis.addr()).await.unwrap();
    stream.write_all(b"PING\r\n").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut reply))
        .await
        .expect("redis replies and closes")
        .unwrap();
    assert_eq!(reply, b"+PONG\r\n");
    let pid = redis.pid();
    drop(redis);
    assert_reaped(pid);
}

#[tokio::test]
async fn dnsmasq_answers_records_nxdomain_and_refused() {
    let service = ip(42, 7);
    let dns = Dnsmasq::builder(ip(41, 4))
        .record("internal-api.company.local", service)
        .record("v6.test", IpAddr::V6(Ipv6Addr::LOCALHOST))
        .nxdomain("gone.example")
        .start()
        .await;

    let a = dns
        .query("internal-api.company.local", RecordType::A)
        .await
        .unwrap();
    assert_eq!((a.rcode, a.addrs), (dns::NOERROR, vec![service]));
    let aaaa = dns
        .query("internal-api.company.local", RecordType::Aaaa)
        .await
        .unwrap();
    assert_eq!((aaaa.rcode, aaaa.addrs.len()), (dns::NOERROR, 0));
    let v6 = dns.query("v6.test", RecordType::Aaaa).await.unwrap();
    assert_eq!(v6.addrs, vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    assert_eq!(
        dns.query(Dnsmasq::NX_NAME, RecordType::A)
            .await
            .unwrap()
            .rcode,
        dns::NXDOMAIN
    );
    assert_eq!(
        dns.query("a.gone.example", RecordType::A)
            .await
            .unwrap()
            .rcode,
        dns::NXDOMAIN
    );
    assert_eq!(
        dns.query("unknown.example", RecordType::A)
            .await
            .unwrap()
            .rcode,
        dns::REFUSED
    );

    // The resolver the connector uses sees the same answers.
    let group = NameServerConfigGroup::from_ips_clear(&[dns.addr().ip()], dns.addr().port(), true);
    let resolver = TokioAsyncResolver::tokio(
        ResolverConfig::from_parts(None, vec![], group),
        ResolverOpts::default(),
    );
    let ips: Vec<IpAddr> = resolver
        .lookup_ip("internal-api.company.local.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(ips, vec![service]);
    let err = resolver
        .lookup_ip(format!("{}.", Dnsmasq::NX_NAME))
        .await
        .expect_err("NXDOMAIN");
    match err.kind() {
        ResolveErrorKind::NoRecordsFound { response_code, .. } => {
            assert_eq!(*response_code, ResponseCode::NXDomain)
        }
        other => panic!("expected NoRecordsFound/NXDomain, got {other:?}"),
    }
    assert!(
        dns.log().contains("internal-api.company.local"),
        "{}",
        dns.log()
    );

    let pid = dns.pid();
    drop(dns);
    assert_reaped(pid);
}

#[tokio::test]
async fn echo_server_echoes_and_reports_half_close() {
    let server = EchoServer::start(ip(41, 5));
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let data = pattern::bytes(4 * 1024 * 1024);
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer.write_all(&data).await.unwrap();
        writer.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let read = reader.read_to_end(&mut echoed);
    let ((), read) = tokio::join!(write, read);
    read.unwrap();
    assert!(echoed == data, "echoed bytes differ");
    let eof = server
        .wait_for(WAIT, |e| matches!(e, ConnEvent::Eof { .. }))
        .await
        .expect("the server saw the client's FIN");
    assert_eq!(
        eof.event,
        ConnEvent::Eof {
            conn: 0,
            bytes_read: data.len() as u64
        }
    );
    let closed = server
        .wait_for(WAIT, |e| matches!(e, ConnEvent::Closed { .. }))
        .await
        .expect("the server closed");
    assert!(
        matches!(closed.event, ConnEvent::Closed { bytes_written, .. } if bytes_written == data.len() as u64)
    );
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn echo_server_reports_reset() {
    let server = EchoServer::start_with(ip(41, 6), Behaviour::Sink);
    let stream = TcpStream::connect(server.addr()).await.unwrap();
    server
        .wait_for(WAIT, |e| matches!(e, ConnEvent::Accepted { .. }))
        .await
        .expect("accepted");
    // Linger 0: close sends RST instead of FIN.
    stream.set_zero_linger().unwrap();
    drop(stream);
    let gone = server
        .wait_for(WAIT, ConnEvent::is_peer_gone)
        .await
        .expect("the server saw the reset");
    assert!(
        matches!(
            gone.event,
            ConnEvent::Error {
                kind: std::io::ErrorKind::ConnectionReset,
                ..
            }
        ),
        "{gone:?}"
    );
}

#[tokio::test]
async fn reply_after_eof_source_and_digest_servers() {
    let reply = EchoServer::start_with(ip(41, 7), Behaviour::ReplyAfterEof(b"+PONG\r\n".to_vec()));
    let mut stream = TcpStream::connect(reply.addr()).await.unwrap();
    stream.write_all(b"PING\r\n").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"+PONG\r\n");

    let len = 5 * 1024 * 1024 + 3;
    let source = EchoServer::start_with(ip(41, 7), Behaviour::Source { len });
    let mut stream = TcpStream::connect(source.addr()).await.unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&got)), pattern::sha256_hex(len));

    let digest = EchoServer::start_with(ip(41, 7), Behaviour::Sha256AfterEof);
    let mut stream = TcpStream::connect(digest.addr()).await.unwrap();
    stream.write_all(&pattern::bytes(1_000_000)).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = String::new();
    stream.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, pattern::sha256_hex(1_000_000));
}

#[test]
fn workerd_binary_runs_when_installed() {
    let Some(workerd) = workerd_binary() else {
        eprintln!("UNDERPASS_WORKERD not set (run scripts/test): skipping the workerd check");
        return;
    };
    let output = std::process::Command::new(&workerd)
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("workerd"),
        "{output:?}"
    );
}
