//! Special-purpose addresses: ranges that do not name one ordinary remote host (the local host
//! itself, the local link, every host, no host). A name that resolves into one of them is a
//! way for DNS to reach what no route meant to open, so callers refuse such an address unless
//! an IP route covers it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A special-purpose range an address falls in ([`special_range`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialRange {
    /// `127.0.0.0/8` and `::1`: the host itself (where the connector's admin listener lives).
    Loopback,
    /// `169.254.0.0/16` and `fe80::/10`: the local link (cloud metadata endpoints live here).
    LinkLocal,
    /// `0.0.0.0/8` ("this network", RFC 1122) and `::`. Connecting to `0.0.0.0` reaches the
    /// local host on Linux.
    Unspecified,
    /// `224.0.0.0/4` and `ff00::/8`.
    Multicast,
    /// `255.255.255.255`, the limited broadcast address.
    Broadcast,
}

impl SpecialRange {
    /// The range's name, as logs and refusals show it (`loopback`, `link-local`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SpecialRange::Loopback => "loopback",
            SpecialRange::LinkLocal => "link-local",
            SpecialRange::Unspecified => "unspecified",
            SpecialRange::Multicast => "multicast",
            SpecialRange::Broadcast => "broadcast",
        }
    }
}

impl fmt::Display for SpecialRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The special-purpose range `ip` falls in, if any.
///
/// An IPv6 address that embeds an IPv4 one counts as that IPv4 address: IPv4-mapped
/// (`::ffff:127.0.0.1`) and the deprecated IPv4-compatible form (`::127.0.0.1`, any address in
/// `::/96` except `::` and `::1`, which are IPv6's own unspecified and loopback addresses). A
/// resolver may hand back either form, and a socket may reach the IPv4 address through it.
pub fn special_range(ip: IpAddr) -> Option<SpecialRange> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<SpecialRange> {
    let [first, second, ..] = ip.octets();
    if ip.is_loopback() {
        Some(SpecialRange::Loopback)
    } else if first == 169 && second == 254 {
        Some(SpecialRange::LinkLocal)
    } else if first == 0 {
        Some(SpecialRange::Unspecified)
    } else if ip.is_multicast() {
        Some(SpecialRange::Multicast)
    } else if ip.is_broadcast() {
        Some(SpecialRange::Broadcast)
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<SpecialRange> {
    if ip.is_unspecified() {
        return Some(SpecialRange::Unspecified);
    }
    if ip.is_loopback() {
        return Some(SpecialRange::Loopback);
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return special_v4(v4);
    }
    let segments = ip.segments();
    if segments[..6] == [0; 6] {
        // IPv4-compatible (::a.b.c.d); `::` and `::1` were handled above.
        let [a, b, c, d] = ip.octets()[12..] else {
            unreachable!("an IPv6 address has 16 octets");
        };
        return special_v4(Ipv4Addr::new(a, b, c, d));
    }
    if segments[0] & 0xffc0 == 0xfe80 {
        Some(SpecialRange::LinkLocal)
    } else if ip.is_multicast() {
        Some(SpecialRange::Multicast)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> Option<SpecialRange> {
        special_range(text.parse().expect("test address"))
    }

    #[test]
    fn classification_table() {
        use SpecialRange::*;
        let cases: &[(&str, Option<SpecialRange>)] = &[
            // IPv4.
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("169.254.0.1", Some(LinkLocal)),
            ("169.254.169.254", Some(LinkLocal)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("10.0.0.1", None),
            ("126.255.255.255", None),
            ("128.0.0.1", None),
            ("169.253.255.255", None),
            ("169.255.0.0", None),
            ("192.168.1.1", None),
            ("223.255.255.255", None),
            ("240.0.0.1", None),
            ("255.255.255.254", None),
            // IPv6.
            ("::1", Some(Loopback)),
            ("::", Some(Unspecified)),
            ("fe80::1", Some(LinkLocal)),
            ("febf:ffff::1", Some(LinkLocal)),
            ("fec0::1", None),
            ("ff02::1", Some(Multicast)),
            ("ff0e::1", Some(Multicast)),
            ("fd00::1", None),
            ("2001:db8::1", None),
            ("::1:0:0:1", None),
            ("64:ff9b::7f00:1", None),
            // IPv4-mapped: the IPv4 address decides.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:7f00:1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            ("::ffff:224.0.0.251", Some(Multicast)),
            ("::ffff:255.255.255.255", Some(Broadcast)),
            ("::ffff:10.0.0.1", None),
            // IPv4-compatible (deprecated): the same.
            ("::127.0.0.1", Some(Loopback)),
            ("::7f00:2", Some(Loopback)),
            ("::169.254.1.1", Some(LinkLocal)),
            ("::0.0.0.2", Some(Unspecified)),
            ("::224.1.2.3", Some(Multicast)),
            ("::255.255.255.255", Some(Broadcast)),
            ("::10.0.0.1", None),
        ];
        for (text, expected) in cases {
            assert_eq!(range(text), *expected, "{text}");
        }
    }

    #[test]
    fn names_read_well() {
        assert_eq!(SpecialRange::LinkLocal.to_string(), "link-local");
        assert_eq!(
            range("::ffff:127.0.0.1").map(SpecialRange::as_str),
            Some("loopback")
        );
    }
}
