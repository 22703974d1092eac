//! Route destinations as written in configuration: a CIDR, an IP, or a hostname pattern.

use std::fmt;

use ipnet::IpNet;

use crate::error::{excerpt, RouteError};
use crate::host::HostPattern;
use crate::ip::{parse_cidr_strict, parse_ip_strict};

/// What a route matches, as parsed by [`parse_route`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteSpec {
    /// A network (a bare IP is a /32 or /128).
    Cidr(IpNet),
    /// A hostname or `*.suffix` pattern.
    Host(HostPattern),
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteSpec::Cidr(net) => write!(f, "{net}"),
            RouteSpec::Host(pattern) => write!(f, "{pattern}"),
        }
    }
}

/// Parse a route destination, deciding by content (surrounding whitespace ignored):
///
/// - with a `/`: a CIDR with a strict address ([`parse_ip_strict`] rules) and a decimal
///   prefix length; bits set after the prefix (`10.0.0.1/8`) are an error, not silently
///   cleared, because the author may have meant a longer prefix;
/// - a strict IP literal (`10.0.0.5`, `::1`, `[::1]`): that single address, /32 or /128;
/// - anything containing `:` or `[`: an invalid IP (never a hostname);
/// - otherwise a [`HostPattern`]; ambiguous numeric forms like `127.1` are rejected there.
///
/// IPv4-mapped IPv6 is kept as written (`::ffff:10.0.0.0/104`); the route table stores it
/// as the IPv4 network it maps.
pub fn parse_route(s: &str) -> Result<RouteSpec, RouteError> {
    let s = s.trim();
    if s.contains('/') {
        return parse_cidr_strict(s).map(RouteSpec::Cidr);
    }
    if let Ok(ip) = parse_ip_strict(s) {
        return Ok(RouteSpec::Cidr(IpNet::from(ip)));
    }
    if s.contains(':') || s.contains('[') || s.contains(']') {
        return Err(RouteError::InvalidIp { text: excerpt(s) });
    }
    HostPattern::parse(s).map(RouteSpec::Host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_by_content() {
        let cidr = |s: &str| RouteSpec::Cidr(s.parse().unwrap());
        let cases = [
            ("10.0.0.0/8", cidr("10.0.0.0/8")),
            (" 10.0.0.0/8 ", cidr("10.0.0.0/8")),
            ("10.0.0.5", cidr("10.0.0.5/32")),
            ("fd00::/8", cidr("fd00::/8")),
            ("::1", cidr("::1/128")),
            ("[::1]", cidr("::1/128")),
            ("::ffff:10.0.0.5", cidr("10.0.0.5/32")),
            ("::ffff:10.0.0.0/104", cidr("::ffff:10.0.0.0/104")),
            (
                "db.internal",
                RouteSpec::Host(HostPattern::Exact("db.internal".into())),
            ),
            (
                "*.corp.example",
                RouteSpec::Host(HostPattern::Wildcard("corp.example".into())),
            ),
            (
                "Bücher.example",
                RouteSpec::Host(HostPattern::Exact("xn--bcher-kva.example".into())),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_route(input), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn rejects() {
        // Each case names the error it expects by a predicate over the variant.
        type Expect = fn(&RouteError) -> bool;
        let cases: Vec<(&str, Expect)> = vec![
            ("10.0.0.1/8", |e| {
                matches!(e, RouteError::HostBitsSet { .. })
            }),
            ("10.0.0.0/33", |e| {
                matches!(e, RouteError::InvalidPrefixLength { .. })
            }),
            ("db.internal/24", |e| {
                matches!(e, RouteError::InvalidIp { .. })
            }),
            ("0177.0.0.1", |e| {
                matches!(e, RouteError::NumericName { .. })
            }),
            ("127.1", |e| matches!(e, RouteError::NumericName { .. })),
            ("2130706433", |e| {
                matches!(e, RouteError::NumericName { .. })
            }),
            ("fe80::1%eth0", |e| {
                matches!(e, RouteError::InvalidIp { .. })
            }),
            ("1:2:3", |e| matches!(e, RouteError::InvalidIp { .. })),
            ("[db.internal]", |e| {
                matches!(e, RouteError::InvalidIp { .. })
            }),
            ("db.internal:80", |e| {
                matches!(e, RouteError::InvalidIp { .. })
            }),
            ("", |e| matches!(e, RouteError::EmptyName)),
            ("*", |e| matches!(e, RouteError::InvalidWildcard { .. })),
            ("a..b", |e| matches!(e, RouteError::EmptyLabel { .. })),
        ];
        for (input, check) in cases {
            let got = parse_route(input);
            assert!(matches!(&got, Err(e) if check(e)), "{input:?}: {got:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["10.0.0.0/8", "fd00::/8", "db.internal", "*.corp.example"] {
            let spec = parse_route(text).unwrap();
            assert_eq!(spec.to_string(), text);
        }
    }
}
