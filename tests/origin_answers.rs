//! What the client of a binding gets for origin answers the connector must not mangle (issue
//! 15): raw requests through a real edge and connector to a scripted raw-TCP origin on
//! loopback.
//!
//! - an upgrade the origin declines (any final status but `101`) is passed on whole: status,
//!   headers, body; only a `101` that cannot be used is `502 http_upgrade_failed`;
//! - a response head that does not fit in one stream frame ([`MAX_FRAME_LEN`]), or that the
//!   connector's HTTP client refuses as too large, is `502 http_response_header_section_size`,
//!   logged once by the connector at `info` with the request id; a head just below the frame
//!   limit passes intact.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use underpass_e2e::connector_process::ConnectorSpec;
use underpass_e2e::edge_home::EdgeHome;
use underpass_e2e::edge_process::TUNNEL;
use underpass_e2e::http1::{parse_response, Response};
use underpass_e2e::Stack;
use underpass_proto::{BodyKind, Header, HttpResponseHead, StreamReply, MAX_FRAME_LEN};

/// Guards a hang only.
const LIMIT: Duration = Duration::from_secs(20);
/// Bytes of each padding field of a large head.
const PAD: usize = 9000;
/// Large heads: 7 padding fields (63,000 bytes of values, 63,1xx encoded) still fit in one
/// 65,536-byte frame; 8 (72,000) do not. [`frame_figures_come_from_the_real_limit`] checks
/// both against the codec.
const FITS: usize = 7;
const TOO_MANY_BYTES: usize = 8;
/// More header fields than hyper's HTTP/1.1 client reads (100), each small.
const FIELDS_PAST_HYPER: usize = 120;
/// A head past hyper's read buffer (8 KiB + 400 KiB): one field of 512 KiB.
const BYTES_PAST_HYPER: usize = 512 * 1024;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a test IP")
}

/// How the scripted origin answers one request.
enum Answer {
    /// Write these bytes (a whole response), then close.
    Reply(Vec<u8>),
    /// Write this `101` head, then echo raw bytes until EOF, then close.
    Switch(Vec<u8>),
    /// Close without answering.
    Close,
}

/// A raw-TCP origin: one request per connection, answered as `script` says from the request
/// head (lower-cased).
async fn scripted_origin(at: &str, script: fn(&str) -> Answer) -> SocketAddr {
    let listener = TcpListener::bind(SocketAddr::new(ip(at), 0))
        .await
        .expect("bind the origin");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_head(&mut socket).await else {
                    return;
                };
                match script(&String::from_utf8_lossy(&head).to_ascii_lowercase()) {
                    Answer::Reply(bytes) => {
                        // The connector may close early (a head it refuses): not an error here.
                        if socket.write_all(&bytes).await.is_ok() {
                            let _ = socket.shutdown().await;
                            let mut rest = Vec::new();
                            let _ =
                                tokio::time::timeout(LIMIT, socket.read_to_end(&mut rest)).await;
                        }
                    }
                    Answer::Switch(head) => {
                        if socket.write_all(&head).await.is_ok() {
                            let (mut read, mut write) = socket.into_split();
                            let _ = tokio::io::copy(&mut read, &mut write).await;
                            let _ = write.shutdown().await;
                        }
                    }
                    Answer::Close => {}
                }
            });
        }
    });
    addr
}

/// Bytes up to and including the blank line after a head; `None` if the peer closed first.
async fn read_head(socket: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, socket.read(&mut byte))
            .await
            .expect("a head in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// `fields` padding fields of [`PAD`] bytes each, as `(name, value)`.
fn padding(fields: usize, each: usize) -> Vec<(String, String)> {
    (0..fields)
        .map(|i| {
            let fill = char::from(b'a' + (i % 26) as u8);
            (format!("x-pad-{i}"), fill.to_string().repeat(each))
        })
        .collect()
}

/// A response head with `fields` (plus `content-length` and `connection: close`) and `body`.
fn response(status_line: &str, fields: &[(String, String)], body: &str) -> Vec<u8> {
    let mut text = format!("{status_line}\r\n");
    for (name, value) in fields {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    text.into_bytes()
}

/// Whether the connector's reply for a `200` with `fields` and a body of `body_len` bytes
/// (what it puts on the stream: hop-by-hop `connection` dropped) fits in one frame.
fn fits_in_a_frame(fields: &[(String, String)], body_len: usize) -> bool {
    let mut headers: Vec<Header> = fields
        .iter()
        .map(|(name, value)| Header::new(name.as_str(), value.as_bytes()))
        .collect();
    headers.push(Header::new("content-length", body_len.to_string()));
    let reply = StreamReply::Http(HttpResponseHead {
        status: 200,
        headers,
        body: BodyKind::Length(body_len as u64),
    });
    underpass_proto::encode(&reply, &mut BytesMut::new()).is_ok()
}

/// The origin's script, by the request path.
fn answers(head: &str) -> Answer {
    let path = head.split(' ').nth(1).unwrap_or_default();
    let path = path.rsplit_once('/').map_or(path, |(_, last)| last);
    match path {
        "declined" => Answer::Reply(response(
            "HTTP/1.1 200 OK",
            &[
                ("content-type".into(), "text/plain".into()),
                ("x-origin".into(), "declined the upgrade".into()),
            ],
            "no websocket here, just this body",
        )),
        "declined-chunked" => Answer::Reply(
            b"HTTP/1.1 426 Upgrade Required\r\ntransfer-encoding: chunked\r\n\
              x-origin: wants another protocol\r\nconnection: close\r\n\r\n\
              6\r\nspeak \r\n7\r\nanother\r\n9\r\n protocol\r\n0\r\n\r\n"
                .to_vec(),
        ),
        "switch" => Answer::Switch(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: WebSocket\r\n\r\n"
                .to_vec(),
        ),
        "switch-without-protocol" => {
            Answer::Switch(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\r\n".to_vec())
        }
        "switch-to-unoffered" => Answer::Switch(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
                .to_vec(),
        ),
        "switch-huge" => {
            let mut fields = vec![
                ("connection".to_owned(), "upgrade".to_owned()),
                ("upgrade".to_owned(), "websocket".to_owned()),
            ];
            fields.extend(padding(TOO_MANY_BYTES, PAD));
            let mut text = String::from("HTTP/1.1 101 Switching Protocols\r\n");
            for (name, value) in fields {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            text.push_str("\r\n");
            Answer::Switch(text.into_bytes())
        }
        "close" => Answer::Close,
        "fits" => Answer::Reply(response("HTTP/1.1 200 OK", &padding(FITS, PAD), "fits")),
        "too-large" => Answer::Reply(response(
            "HTTP/1.1 200 OK",
            &padding(TOO_MANY_BYTES, PAD),
            "never seen",
        )),
        "too-many-fields" => Answer::Reply(response(
            "HTTP/1.1 200 OK",
            &padding(FIELDS_PAST_HYPER, 8),
            "never seen",
        )),
        "past-the-read-buffer" => Answer::Reply(response(
            "HTTP/1.1 200 OK",
            &padding(1, BYTES_PAST_HYPER),
            "never seen",
        )),
        _ => Answer::Reply(response("HTTP/1.1 200 OK", &[], "ok")),
    }
}

/// Sends `raw` on a new connection to `proxy` and reads the answer to the end of the
/// connection (every request here asks for `Connection: close`).
async fn send(proxy: SocketAddr, raw: &str) -> Response {
    let mut stream = TcpStream::connect(proxy).await.expect("the binding");
    stream.write_all(raw.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    parse_response(&answer).unwrap_or_else(|e| {
        panic!(
            "not an HTTP answer ({e:#}): {:?}",
            String::from_utf8_lossy(&answer)
        )
    })
}

/// A WebSocket-style upgrade request for `path` on `origin`.
fn upgrade(origin: SocketAddr, path: &str) -> String {
    format!(
        "GET http://{origin}/{path} HTTP/1.1\r\nConnection: Upgrade, close\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A plain GET for `path` on `origin`.
fn get(origin: SocketAddr, path: &str) -> String {
    format!("GET http://{origin}/{path} HTTP/1.1\r\nConnection: close\r\n\r\n")
}

async fn stack(origin: SocketAddr) -> Stack {
    Stack::builder()
        .route(&format!("{}/32", origin.ip()), None)
        .network_binding("net")
        .start()
        .await
}

#[track_caller]
fn assert_origin_answer(response: &Response, status: u16) {
    assert_eq!(
        (response.status, response.header("proxy-status")),
        (status, None),
        "{:?}\n{}",
        response.headers,
        response.text()
    );
}

#[test]
fn frame_figures_come_from_the_real_limit() {
    assert!(fits_in_a_frame(&padding(FITS, PAD), 4), "{MAX_FRAME_LEN}");
    assert!(!fits_in_a_frame(&padding(TOO_MANY_BYTES, PAD), 10));
    // The passing head is within 3 KiB of the limit: a large head, not a small one.
    const _: () = assert!(FITS * PAD + 3 * 1024 > MAX_FRAME_LEN);
}

underpass_e2e::transport_tests! {
async fn an_upgrade_the_origin_declines_gets_its_answer_intact() {
    let origin = scripted_origin("127.26.1.1", answers).await;
    let stack = stack(origin).await;
    let proxy = stack.binding_addr("net");

    let response = send(proxy, &upgrade(origin, "declined")).await;
    assert_origin_answer(&response, 200);
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(response.header("x-origin"), Some("declined the upgrade"));
    assert_eq!(response.text(), "no websocket here, just this body");

    // A chunked body (no length known up front) streams through as well.
    let response = send(proxy, &upgrade(origin, "declined-chunked")).await;
    assert_origin_answer(&response, 426);
    assert_eq!(response.header("x-origin"), Some("wants another protocol"));
    assert_eq!(response.text(), "speak another protocol");
}

async fn only_a_101_that_cannot_be_used_is_http_upgrade_failed() {
    let origin = scripted_origin("127.26.2.1", answers).await;
    let stack = stack(origin).await;
    let proxy = stack.binding_addr("net");

    // A usable 101 (the protocol name compared without case) becomes the pipe.
    let mut stream = TcpStream::connect(proxy).await.expect("the binding");
    let request = format!(
        "GET http://{origin}/switch HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let head = read_head(&mut stream).await.expect("a 101 head");
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    stream.write_all(b"over the pipe").await.expect("send");
    stream.shutdown().await.expect("half-close");
    let mut echoed = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut echoed))
        .await
        .expect("the echo in time")
        .expect("read the echo");
    assert_eq!(echoed, b"over the pipe");

    // A 101 naming no protocol, or one the request did not offer (RFC 9110 §7.8).
    for path in ["switch-without-protocol", "switch-to-unoffered"] {
        let response = send(proxy, &upgrade(origin, path)).await;
        response.assert_proxy_error(502, "http_upgrade_failed");
        assert!(
            response.text().contains("101"),
            "{path}: {}",
            response.text()
        );
    }

    // An origin that closes without answering is no upgrade answer at all: as for any request.
    send(proxy, &upgrade(origin, "close"))
        .await
        .assert_proxy_error(502, "connection_terminated");
}

async fn a_response_head_too_large_for_a_frame_is_http_response_header_section_size() {
    let origin = scripted_origin("127.26.3.1", answers).await;
    let stack = stack(origin).await;
    let proxy = stack.binding_addr("net");

    // Just below the limit: every field arrives intact.
    let response = send(proxy, &get(origin, "fits")).await;
    assert_origin_answer(&response, 200);
    for (name, value) in padding(FITS, PAD) {
        assert_eq!(response.header(&name), Some(value.as_str()), "{name}");
    }
    assert_eq!(response.text(), "fits");

    // Over it: the plain exchange, a declined upgrade and a 101.
    for request in [
        get(origin, "too-large"),
        upgrade(origin, "too-large"),
        upgrade(origin, "switch-huge"),
    ] {
        let response = send(proxy, &request).await;
        response.assert_proxy_error(502, "http_response_header_section_size");
        assert!(
            response.text().contains(&MAX_FRAME_LEN.to_string()),
            "{}",
            response.text()
        );
    }

    // The connector and the tunnel are fine after it.
    assert_origin_answer(&send(proxy, &get(origin, "ok")).await, 200);
}

async fn a_head_past_the_connectors_http_client_limits_is_the_same_error() {
    let origin = scripted_origin("127.26.4.1", answers).await;
    let stack = stack(origin).await;
    let proxy = stack.binding_addr("net");
    for path in ["too-many-fields", "past-the-read-buffer"] {
        send(proxy, &get(origin, path))
            .await
            .assert_proxy_error(502, "http_response_header_section_size");
        send(proxy, &upgrade(origin, path))
            .await
            .assert_proxy_error(502, "http_response_header_section_size");
    }
    assert_origin_answer(&send(proxy, &get(origin, "ok")).await, 200);
}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_logs_a_too_large_head_once_at_info_with_the_request_id() {
    let origin = scripted_origin("127.26.5.1", answers).await;
    let home = EdgeHome::create(&format!(
        "[[network]]\nname = \"net\"\ntunnel = \"{TUNNEL}\"\n\n\
         [[binding]]\nname = \"net\"\nlisten = \"127.0.0.1:0\"\nnetwork = \"net\"\n"
    ));
    let edge = home.start().await;
    let mut connector = ConnectorSpec::new("origin-answers", &home.token())
        .route("127.26.5.0/24", None)
        .start()
        .await;
    connector
        .wait_ready(LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", connector.output()));
    let proxy = edge.binding_addr("net");
    send(proxy, &get(origin, "too-large"))
        .await
        .assert_proxy_error(502, "http_response_header_section_size");

    // The stream's end is logged when its task ends, just after the client's answer: poll.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let log = loop {
        let log = connector.log();
        if log.contains("stream refused") || tokio::time::Instant::now() >= deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("http_response_header_section_size"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let line = lines[0];
    assert!(
        line.contains("INFO") && line.contains("stream refused"),
        "{line}"
    );
    let id = line
        .split([' ', '{', '}'])
        .find_map(|word| word.strip_prefix("request_id="))
        .unwrap_or_else(|| panic!("no request_id in {line}"));
    assert!(
        id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()) && id != "0000000000000000",
        "{line}"
    );
    // Once: no other line about that stream.
    let about = format!("request_id={id}");
    assert_eq!(log.matches(&about).count(), 1, "{log}");
}
