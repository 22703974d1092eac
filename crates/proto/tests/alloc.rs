//! Decoding one frame allocates a bounded amount of memory, whatever its length prefixes claim.
//!
//! A counting global allocator (the `cap` crate, so this file needs no `unsafe`) adds up every
//! byte allocated while one frame is decoded. The sum over the whole decode is an upper bound
//! on the peak, transient copies included. Everything runs in one `#[test]` so no other test
//! allocates at the same time.

use std::alloc::System;
use std::fmt::Debug;

use bytes::BytesMut;
use cap::Cap;

use underpass_proto::{
    decode, encode, AnnouncedRoute, BodyKind, ConnectorId, ControlMessage, Decoded, FrameKind,
    Header, HttpResponseHead, Message, Register, StreamHeader, StreamReply, TunnelId,
    MAX_FRAME_LEN, PROTOCOL_VERSION,
};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// The bound documented in the crate. The worst case is a `Register` claiming 32 768 routes
/// (32 768 × 48 bytes = 1.5 MiB reserved, what a legitimate frame of empty routes needs) whose
/// first route claims 32 768 port ranges (128 KiB): exactly 26 × `MAX_FRAME_LEN`. One more
/// frame's worth covers strings and error messages.
const BOUND: usize = 27 * MAX_FRAME_LEN;

/// What a frame whose body is a few bytes may allocate: error messages and small vectors.
const SMALL: usize = 4 * 1024;

/// Bytes allocated while decoding `frame` as `M`, and whether it decoded.
fn bytes_allocated_decoding<M: Message + Debug>(frame: &[u8]) -> (usize, bool) {
    let before = ALLOCATOR.total_allocated();
    let result = decode::<M>(frame);
    let after = ALLOCATOR.total_allocated();
    let ok = matches!(result, Ok(Decoded::Message { .. }));
    drop(result);
    (after - before, ok)
}

fn varint(mut value: usize, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Wrap `body` in a frame header of `kind`.
fn framed(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    assert!(body.len() <= MAX_FRAME_LEN, "test frame too large");
    let mut frame = vec![PROTOCOL_VERSION, kind as u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// `StreamReply::Http` claiming `count` headers, followed by `filler` zero bytes (each pair of
/// zeros is one empty header).
fn reply_claiming_headers(count: usize, filler: usize) -> Vec<u8> {
    let mut body = vec![0, 0xc8, 0x01]; // StreamReply::Http, status 200
    varint(count, &mut body);
    body.resize(body.len() + filler, 0);
    framed(FrameKind::StreamReply, &body)
}

/// `StreamHeader::Http` claiming `headers` headers, the first with a value claiming
/// `value_len` bytes, then zeros up to the frame limit.
fn request_claiming(headers: usize, value_len: usize) -> Vec<u8> {
    // StreamHeader::Http, method "GET", scheme Http, authority "", path "/"
    let mut body = vec![0, 3, b'G', b'E', b'T', 0, 0, 1, b'/'];
    varint(headers, &mut body);
    body.push(0); // first header name ""
    varint(value_len, &mut body);
    body.resize(MAX_FRAME_LEN, 0);
    framed(FrameKind::StreamHeader, &body)
}

/// `ControlMessage::Register` claiming `routes` routes, the first claiming `ports` port ranges,
/// then zeros up to the frame limit.
fn register_claiming(routes: usize, ports: usize) -> Vec<u8> {
    let mut body = vec![0]; // ControlMessage::Register
    body.extend_from_slice(&[7; 16 + 32 + 16]); // tunnel id, proof, connector id
    body.extend_from_slice(&[0, 0]); // connection index, version ""
    varint(routes, &mut body);
    body.push(0); // first route destination ""
    varint(ports, &mut body);
    body.resize(MAX_FRAME_LEN, 0);
    framed(FrameKind::Control, &body)
}

fn encoded<M: Message>(message: &M) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(message, &mut buf).expect("the test message fits in a frame");
    buf.to_vec()
}

/// The largest number of empty headers a `StreamReply::Http` frame can hold.
fn largest_legit_reply() -> Vec<u8> {
    let reply = |n| {
        StreamReply::Http(HttpResponseHead {
            status: 200,
            headers: vec![
                Header {
                    name: String::new(),
                    value: Vec::new()
                };
                n
            ],
            body: BodyKind::Empty,
        })
    };
    // Tag 1 + status 2 + count 3 + body kind 1, then 2 bytes per header.
    let n = (MAX_FRAME_LEN - 7) / 2;
    let frame = encoded(&reply(n));
    assert!(frame.len() > MAX_FRAME_LEN, "frame is close to the limit");
    frame
}

fn largest_legit_register() -> Vec<u8> {
    // Fixed part 1 + 64 + 2, count 3, then 2 bytes per empty route.
    let n = (MAX_FRAME_LEN - 70) / 2;
    encoded(&ControlMessage::Register(Register {
        tunnel_id: TunnelId([1; 16]),
        proof: [2; 32],
        connector_id: ConnectorId([3; 16]),
        connection_index: 0,
        version: String::new(),
        routes: vec![
            AnnouncedRoute {
                destination: String::new(),
                ports: Vec::new()
            };
            n
        ],
    }))
}

/// xorshift64*: deterministic pseudo-random bytes without another dependency.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn decoding_one_frame_allocates_a_bounded_amount() {
    // The counter works: a 1 MiB vector is seen.
    let before = ALLOCATOR.total_allocated();
    let probe = vec![0u8; 1 << 20];
    assert!(ALLOCATOR.total_allocated() - before >= 1 << 20);
    drop(probe);

    let mut report = Vec::new();
    let mut check = |name: &str, (bytes, ok): (usize, bool), limit: usize, should_decode| {
        report.push(format!("{name}: {bytes} bytes, decoded: {ok}"));
        assert_eq!(ok, should_decode, "{name}");
        assert!(
            bytes <= limit,
            "{name}: {bytes} bytes allocated, limit {limit}"
        );
        bytes
    };

    // Legitimate maximal frames: what the bound must allow.
    let legit_reply = check(
        "32 764 empty response headers",
        bytes_allocated_decoding::<StreamReply>(&largest_legit_reply()),
        BOUND,
        true,
    );
    check(
        "32 733 empty announced routes",
        bytes_allocated_decoding::<ControlMessage>(&largest_legit_register()),
        BOUND,
        true,
    );
    let big_value = StreamReply::Http(HttpResponseHead {
        status: 200,
        headers: vec![Header::new("x-big", vec![b'v'; MAX_FRAME_LEN - 20])],
        body: BodyKind::Empty,
    });
    check(
        "one 64 KiB header value",
        bytes_allocated_decoding::<StreamReply>(&encoded(&big_value)),
        BOUND,
        true,
    );

    // Hostile frames whose counts fit the bytes that follow, so postcard passes them on as
    // size hints: the reservation is capped by what a frame can hold.
    let hostile_reply = check(
        "32 768 headers claimed, 64 KiB sent",
        bytes_allocated_decoding::<StreamReply>(&reply_claiming_headers(32_768, 65_520)),
        BOUND,
        false,
    );
    check(
        "32 768 headers claimed, first value claiming 60 000 bytes",
        bytes_allocated_decoding::<StreamHeader>(&request_claiming(32_768, 60_000)),
        BOUND,
        false,
    );
    check(
        "32 000 routes claimed, first claiming 30 000 port ranges",
        bytes_allocated_decoding::<ControlMessage>(&register_claiming(32_000, 30_000)),
        BOUND,
        false,
    );
    let worst = check(
        "32 768 routes claimed, first claiming 32 768 port ranges (the worst case)",
        bytes_allocated_decoding::<ControlMessage>(&register_claiming(32_768, 32_768)),
        BOUND,
        false,
    );
    assert!(
        worst >= 26 * MAX_FRAME_LEN,
        "the worst case reserves what the bound says"
    );
    // Counts beyond the bytes left, or beyond what any frame can hold, are refused before
    // anything is reserved.
    check(
        "40 000 headers claimed, 64 KiB sent",
        bytes_allocated_decoding::<StreamReply>(&reply_claiming_headers(40_000, 65_520)),
        SMALL,
        false,
    );
    check(
        "1 000 000 headers claimed, 64 KiB sent",
        bytes_allocated_decoding::<StreamReply>(&reply_claiming_headers(1_000_000, 65_520)),
        SMALL,
        false,
    );
    // Huge counts in a small frame: the allocation follows the bytes actually sent.
    for count in [30_000, 1 << 20, usize::MAX >> 1] {
        check(
            &format!("{count} headers claimed, 10 bytes sent"),
            bytes_allocated_decoding::<StreamReply>(&reply_claiming_headers(count, 10)),
            SMALL,
            false,
        );
    }
    check(
        "routes and ports claimed, nothing sent",
        bytes_allocated_decoding::<ControlMessage>(&framed(
            FrameKind::Control,
            &register_claiming(30_000, 30_000)[6..80],
        )),
        SMALL,
        false,
    );

    // Noise behind valid frame headers, at every size up to the limit.
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut worst_noise = 0;
    for round in 0..300 {
        let len = (noise.next() as usize) % (MAX_FRAME_LEN + 1);
        let body: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
        let (bytes, _) = match round % 3 {
            0 => bytes_allocated_decoding::<ControlMessage>(&framed(FrameKind::Control, &body)),
            1 => bytes_allocated_decoding::<StreamHeader>(&framed(FrameKind::StreamHeader, &body)),
            _ => bytes_allocated_decoding::<StreamReply>(&framed(FrameKind::StreamReply, &body)),
        };
        assert!(bytes <= BOUND, "noise round {round}: {bytes} bytes");
        worst_noise = worst_noise.max(bytes);
    }
    report.push(format!("worst of 300 noise frames: {worst_noise} bytes"));

    // A hostile frame costs no more than the legitimate frame of the same shape.
    assert!(hostile_reply <= legit_reply + SMALL);
    println!("bound {BOUND} bytes\n{}", report.join("\n"));
}
