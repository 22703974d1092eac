//! Encode and decode cost of one stream-header or stream-reply frame.
//!
//! `cargo bench -p underpass-proto --bench frames`. Every data stream starts with one
//! [`StreamHeader`] frame from the edge and one [`StreamReply`] frame from the connector, so
//! these figures are the wire-format share of per-stream latency. Throughput is one frame per
//! iteration: criterion reports the time per frame and frames per second ("elem/s").
//!
//! Encode benches reuse one cleared buffer, as a stream writer does, so they measure
//! serialization and not the buffer's first allocation. Decode benches include dropping the
//! decoded message: its strings and vectors are freed once per stream too.

use std::fmt::Debug;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use bytes::BytesMut;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use underpass_proto::{
    decode, encode, BodyKind, Decoded, DialTarget, Header, Host, HttpRequestHead, HttpResponseHead,
    Message, Origin, RequestId, Scheme, ServiceId, ServiceRef, StreamHeader, StreamReply,
    TcpConnect,
};

/// A `connect()` to an IP literal: the smallest and most common TCP header.
fn tcp_ipv4() -> StreamHeader {
    StreamHeader::Tcp(TcpConnect {
        origin: Origin::Dial(DialTarget::new(
            Host::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 50))),
            6379,
        )),
        request_id: RequestId(0x1d2c_3b4a_5968_7788),
    })
}

/// A `connect()` to a name the connector resolves inside the private network.
fn tcp_hostname() -> StreamHeader {
    StreamHeader::Tcp(TcpConnect {
        origin: Origin::Dial(DialTarget::new(
            Host::Name("postgres.db.cluster.internal".into()),
            5432,
        )),
        request_id: RequestId(0x1d2c_3b4a_5968_7788),
    })
}

/// A `fetch()` through a VPC Service binding, with the headers a Worker typically forwards.
fn http_request() -> StreamHeader {
    StreamHeader::Http(HttpRequestHead {
        method: "GET".into(),
        scheme: Scheme::Https,
        authority: "api.internal.example:8443".into(),
        path: "/v1/users/42/orders?status=open&limit=50".into(),
        headers: vec![
            Header::new("accept", "application/json"),
            Header::new("accept-encoding", "gzip, br"),
            Header::new("accept-language", "en-GB,en;q=0.9"),
            Header::new(
                "authorization",
                "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiI0MiIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJl",
            ),
            Header::new("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"),
            Header::new("cookie", "session=9f8e7d6c5b4a; theme=dark"),
            Header::new("cf-connecting-ip", "203.0.113.7"),
            Header::new("cf-ray", "8a1b2c3d4e5f6789-LHR"),
            Header::new(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            Header::new("x-request-id", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
        ],
        origin: Origin::Service(ServiceRef {
            id: ServiceId([0x42; 16]),
            generation: 1,
        }),
        body: BodyKind::Empty,
        request_id: RequestId(0x1d2c_3b4a_5968_7788),
    })
}

/// The connector's answer to a successful `connect()`.
fn tcp_accepted() -> StreamReply {
    StreamReply::TcpAccepted
}

/// A typical JSON API response head.
fn http_response() -> StreamReply {
    StreamReply::Http(HttpResponseHead {
        status: 200,
        headers: vec![
            Header::new("content-type", "application/json; charset=utf-8"),
            Header::new("date", "Tue, 04 Jun 2024 12:00:00 GMT"),
            Header::new("server", "nginx/1.25.4"),
            Header::new("cache-control", "private, max-age=0, no-cache"),
            Header::new("etag", "W/\"5e1-18fde1c2a40\""),
            Header::new("vary", "Accept-Encoding"),
            Header::new("x-request-id", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"),
        ],
        body: BodyKind::Length(1505),
    })
}

/// The frame carrying `message`, checked to decode back to it using every byte.
fn frame<M: Message + PartialEq + Debug>(name: &str, message: &M) -> BytesMut {
    let mut frame = BytesMut::new();
    encode(message, &mut frame).expect("bench messages fit in a frame");
    match decode::<M>(&frame) {
        Ok(Decoded::Message {
            message: decoded,
            consumed,
        }) if &decoded == message && consumed == frame.len() => {}
        other => panic!("{name} does not round-trip: {other:?}"),
    }
    eprintln!("{name}: {} byte frame", frame.len());
    frame
}

/// Register `encode/<name>` and `decode/<name>` for one message.
fn bench_message<M: Message + PartialEq + Debug>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    message: &M,
) {
    let frame = frame(name, message);
    let mut buf = BytesMut::with_capacity(frame.len());
    group.bench_function(BenchmarkId::new("encode", name), |b| {
        b.iter(|| {
            buf.clear();
            encode(black_box(message), &mut buf).expect("bench messages fit in a frame");
            buf.len()
        })
    });
    group.bench_function(BenchmarkId::new("decode", name), |b| {
        b.iter(|| decode::<M>(black_box(&frame[..])))
    });
}

fn stream_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("stream_frames");
    group.throughput(Throughput::Elements(1));
    bench_message(&mut group, "tcp_ipv4", &tcp_ipv4());
    bench_message(&mut group, "tcp_hostname", &tcp_hostname());
    bench_message(&mut group, "http_request", &http_request());
    bench_message(&mut group, "tcp_accepted", &tcp_accepted());
    bench_message(&mut group, "http_response", &http_response());
    group.finish();
}

criterion_group!(benches, stream_frames);
criterion_main!(benches);
