//! A tiny hand-written DNS client (A/AAAA over UDP) for readiness checks and assertions that
//! must see the raw response code, independent of the resolver under test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{bail, ensure, Context};

/// DNS response code NOERROR.
pub const NOERROR: u8 = 0;
/// DNS response code SERVFAIL.
pub const SERVFAIL: u8 = 2;
/// DNS response code NXDOMAIN.
pub const NXDOMAIN: u8 = 3;
/// DNS response code REFUSED.
pub const REFUSED: u8 = 5;

/// The record type to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
}

impl RecordType {
    fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Aaaa => 28,
        }
    }
}

/// What a DNS server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The response code (see [`NOERROR`], [`NXDOMAIN`], ...).
    pub rcode: u8,
    /// The A/AAAA addresses in the answer section.
    pub addrs: Vec<IpAddr>,
}

/// Sends one query for `name` to `server` over UDP and waits up to `timeout` for the answer.
pub fn query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    timeout: Duration,
) -> anyhow::Result<DnsAnswer> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (Ipv6Addr::LOCALHOST, 0).into()
    };
    let socket = UdpSocket::bind(bind).context("bind UDP socket")?;
    socket.set_read_timeout(Some(timeout))?;
    socket.connect(server).context("connect UDP socket")?;
    let id: u16 = rand::random();
    socket.send(&encode_query(id, name, rtype)?)?;
    let mut buf = [0u8; 1500];
    loop {
        let n = socket
            .recv(&mut buf)
            .with_context(|| format!("no DNS answer from {server} for {name}"))?;
        let msg = &buf[..n];
        if msg.len() >= 2 && u16::from_be_bytes([msg[0], msg[1]]) == id {
            return decode_answer(msg);
        }
    }
}

fn encode_query(id: u16, name: &str, rtype: RecordType) -> anyhow::Result<Vec<u8>> {
    let mut msg = Vec::with_capacity(32 + name.len());
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&[0x01, 0x00]); // standard query, recursion desired
    msg.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    for label in name.trim_end_matches('.').split('.') {
        ensure!(
            !label.is_empty() && label.len() < 64,
            "bad DNS name {name:?}"
        );
        msg.push(label.len() as u8);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
    msg.extend_from_slice(&rtype.code().to_be_bytes());
    msg.extend_from_slice(&[0, 1]); // class IN
    Ok(msg)
}

fn decode_answer(msg: &[u8]) -> anyhow::Result<DnsAnswer> {
    ensure!(msg.len() >= 12, "DNS message too short");
    let rcode = msg[3] & 0x0f;
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = 12;
    for _ in 0..qdcount {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..ancount {
        pos = skip_name(msg, pos)?;
        let Some(fixed) = msg.get(pos..pos + 10) else {
            bail!("truncated DNS record");
        };
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        pos += 10;
        let Some(data) = msg.get(pos..pos + len) else {
            bail!("truncated DNS record data");
        };
        match (rtype, len) {
            (1, 4) => addrs.push(IpAddr::from(<[u8; 4]>::try_from(data)?)),
            (28, 16) => addrs.push(IpAddr::from(<[u8; 16]>::try_from(data)?)),
            _ => {}
        }
        pos += len;
    }
    Ok(DnsAnswer { rcode, addrs })
}

fn skip_name(msg: &[u8], mut pos: usize) -> anyhow::Result<usize> {
    loop {
        let Some(&len) = msg.get(pos) else {
            bail!("truncated DNS name");
        };
        match len {
            0 => return Ok(pos + 1),
            l if l & 0xc0 == 0xc0 => return Ok(pos + 2),
            l => pos += 1 + usize::from(l),
        }
    }
}
