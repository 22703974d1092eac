//! Strict IP literal parsing and IPv4-mapped IPv6 canonicalisation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::error::{excerpt, RouteError};

/// Bits of an IPv6 prefix that cover the `::ffff:0:0/96` IPv4-mapped block.
const MAPPED_PREFIX_LEN: u8 = 96;

/// Parse an IP literal strictly, never reinterpreting an ambiguous form.
///
/// - IPv4: exactly four decimal octets, each 0 to 255 without leading zeros. `0177.0.0.1`
///   (octal to some parsers), `2130706433` (a 32-bit integer), `127.1` (short form) and
///   `0x7f.0.0.1` (hex) are rejected, not read as `127.0.0.1`.
/// - IPv6: the standard text forms (RFC 4291 section 2.2, including `::` compression and an
///   embedded dotted quad, itself strict), optionally in brackets (`[::1]`). Zone ids
///   (`fe80::1%eth0`) are rejected.
/// - An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, in any notation) is returned as the
///   IPv4 address, see [`canonical_ip`].
///
/// Surrounding whitespace is not trimmed: it makes the text invalid.
pub fn parse_ip_strict(s: &str) -> Result<IpAddr, RouteError> {
    parse_ip_exact(s).map(canonical_ip)
}

/// The address itself if IPv4 or plain IPv6; the IPv4 address if IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`). IPv4-compatible addresses (`::a.b.c.d`, deprecated) are left as IPv6.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// `net` with host bits cleared; an IPv6 network inside `::ffff:0:0/96` (prefix of at least
/// 96 bits) becomes the IPv4 network it maps, so that it matches the addresses
/// [`canonical_ip`] produces. Shorter IPv6 prefixes stay IPv6 and never match IPv4 traffic.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net.trunc() {
        IpNet::V6(v6) if v6.prefix_len() >= MAPPED_PREFIX_LEN => {
            match v6.network().to_ipv4_mapped() {
                Some(v4) => {
                    let len = v6.prefix_len() - MAPPED_PREFIX_LEN;
                    // Invariant: 96 <= prefix_len <= 128, so 0 <= len <= 32.
                    IpNet::V4(Ipv4Net::new(v4, len).expect("prefix length within 0..=32"))
                }
                None => IpNet::V6(v6),
            }
        }
        other => other,
    }
}

/// Parse a CIDR (`10.0.0.0/8`, `fd00::/8`) with a strict address and a decimal prefix length.
/// Returns the network as written (not canonicalised); host bits are an error.
pub(crate) fn parse_cidr_strict(s: &str) -> Result<IpNet, RouteError> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| RouteError::InvalidPrefixLength { text: excerpt(s) })?;
    let bad_len = || RouteError::InvalidPrefixLength { text: excerpt(s) };
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_len());
    }
    let len: u8 = len.parse().map_err(|_| bad_len())?;
    if addr.starts_with('[') {
        // `[::1]/128` is not a CIDR notation anyone writes; refuse rather than guess.
        return Err(RouteError::InvalidIp {
            text: excerpt(addr),
        });
    }
    let net = match parse_ip_exact(addr)? {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::new(v4, len).map_err(|_| bad_len())?),
        IpAddr::V6(v6) => IpNet::V6(Ipv6Net::new(v6, len).map_err(|_| bad_len())?),
    };
    if net.trunc() != net {
        return Err(RouteError::HostBitsSet {
            text: excerpt(s),
            network: net.trunc(),
        });
    }
    Ok(net)
}

/// [`parse_ip_strict`] without the IPv4-mapped canonicalisation.
pub(crate) fn parse_ip_exact(s: &str) -> Result<IpAddr, RouteError> {
    let invalid = || RouteError::InvalidIp { text: excerpt(s) };
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or_else(invalid)?;
        return parse_ipv6(inner).map(IpAddr::V6).ok_or_else(invalid);
    }
    if s.contains(':') {
        parse_ipv6(s).map(IpAddr::V6).ok_or_else(invalid)
    } else {
        parse_ipv4_strict(s).map(IpAddr::V4).ok_or_else(invalid)
    }
}

/// Four decimal octets, no leading zeros, nothing else.
fn parse_ipv4_strict(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        let digits_only = part.bytes().all(|b| b.is_ascii_digit());
        if part.is_empty()
            || part.len() > 3
            || !digits_only
            || (part.len() > 1 && part.starts_with('0'))
        {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// The standard library's parser: RFC 4291 forms, no zone ids, and an embedded IPv4 part
/// that must itself be four octets without leading zeros. The explicit checks make that
/// contract visible here rather than relying on it silently.
fn parse_ipv6(s: &str) -> Option<Ipv6Addr> {
    if s.contains('%') {
        return None;
    }
    if let Some(pos) = s.rfind(':') {
        let tail = &s[pos + 1..];
        if tail.contains('.') && parse_ipv4_strict(tail).is_none() {
            return None;
        }
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn strict_accepts() {
        let cases: &[(&str, IpAddr)] = &[
            ("127.0.0.1", v4(127, 0, 0, 1)),
            ("0.0.0.0", v4(0, 0, 0, 0)),
            ("255.255.255.255", v4(255, 255, 255, 255)),
            ("10.0.0.5", v4(10, 0, 0, 5)),
            ("100.64.0.10", v4(100, 64, 0, 10)),
            ("::1", IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ("[::1]", IpAddr::V6(Ipv6Addr::LOCALHOST)),
            ("::", IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            (
                "fd00:ec2::254",
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
            ),
            (
                "FD00:0EC2:0000:0000:0000:0000:0000:0254",
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
            ),
            // IPv4-mapped, every notation: returned as IPv4.
            ("::ffff:169.254.169.254", v4(169, 254, 169, 254)),
            ("[::ffff:127.0.0.1]", v4(127, 0, 0, 1)),
            ("::ffff:7f00:1", v4(127, 0, 0, 1)),
            ("0:0:0:0:0:ffff:a00:5", v4(10, 0, 0, 5)),
            // IPv4-compatible (deprecated) is not mapped: it stays IPv6.
            (
                "::10.0.0.5",
                IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0x0a00, 5)),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_ip_strict(text).as_ref(), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn strict_rejects_ambiguous_and_malformed() {
        let cases = [
            "0177.0.0.1",  // octal to inet_aton
            "127.000.0.1", // leading zeros
            "01.2.3.4",
            "2130706433", // 32-bit integer
            "127.1",      // short form
            "127.0.1",
            "0x7f.0.0.1", // hex
            "0x7f000001",
            "1.2.3.4.5",
            "256.0.0.1",
            "1.2.3.",
            ".1.2.3",
            "1..2.3",
            "",
            " 127.0.0.1",
            "127.0.0.1 ",
            "+1.2.3.4",
            "1.2.3.-4",
            "localhost",
            "::ffff:0177.0.0.1", // strict embedded IPv4 too
            "::ffff:127.1",
            "fe80::1%eth0",
            "fe80::1%1",
            "[::1",
            "::1]",
            "[127.0.0.1]",
            "[[::1]]",
            ":::1",
            "1:2:3:4:5:6:7:8:9",
            "12345::1",
            "g::1",
        ];
        for text in cases {
            assert_eq!(
                parse_ip_strict(text),
                Err(RouteError::InvalidIp { text: text.into() }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn canonical_ip_maps_only_ipv4_mapped() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical_ip(mapped), v4(10, 1, 2, 3));
        for text in ["::1", "::", "2001:db8::1", "::10.1.2.3", "64:ff9b::a01:203"] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(canonical_ip(ip), ip, "{text}");
        }
        assert_eq!(canonical_ip(v4(1, 2, 3, 4)), v4(1, 2, 3, 4));
    }

    #[test]
    fn canonical_net_table() {
        let cases = [
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("2001:db8::1/32", "2001:db8::/32"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:169.254.169.254/128", "169.254.169.254/32"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
            ("::ffff:10.9.9.9/104", "10.0.0.0/8"),
            // Shorter than /96: cannot be expressed as IPv4, stays IPv6.
            ("::ffff:0:0/95", "::fffe:0:0/95"),
            ("::/0", "::/0"),
            ("::10.0.0.0/104", "::10.0.0.0/104"),
        ];
        for (input, want) in cases {
            let input: IpNet = input.parse().unwrap();
            let want: IpNet = want.parse().unwrap();
            assert_eq!(canonical_net(input), want, "{input}");
        }
    }

    #[test]
    fn cidr_strict_table() {
        let ok = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("10.0.0.5/32", "10.0.0.5/32"),
            ("fd00::/8", "fd00::/8"),
            ("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"),
        ];
        for (text, want) in ok {
            assert_eq!(parse_cidr_strict(text), Ok(want.parse().unwrap()), "{text}");
        }
        let bad = [
            ("10.0.0.0/33", "prefix"),
            ("fd00::/129", "prefix"),
            ("10.0.0.0/", "prefix"),
            ("10.0.0.0/+8", "prefix"),
            ("10.0.0.0/08x", "prefix"),
            ("10.0.0.0", "prefix"),
            ("010.0.0.0/8", "ip"),
            ("10.0/8", "ip"),
            ("[fd00::]/8", "ip"),
            ("10.0.0.1/8", "host"),
            ("fd00::1/8", "host"),
        ];
        for (text, kind) in bad {
            let err = parse_cidr_strict(text).unwrap_err();
            let matches = match kind {
                "prefix" => matches!(err, RouteError::InvalidPrefixLength { .. }),
                "ip" => matches!(err, RouteError::InvalidIp { .. }),
                _ => matches!(err, RouteError::HostBitsSet { .. }),
            };
            assert!(matches, "{text}: {err:?}");
        }
        assert_eq!(
            parse_cidr_strict("10.0.0.1/8"),
            Err(RouteError::HostBitsSet {
                text: "10.0.0.1/8".into(),
                network: "10.0.0.0/8".parse().unwrap()
            })
        );
    }
}
