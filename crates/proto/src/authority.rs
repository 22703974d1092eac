//! Strict parsing of `host:port` authorities (as a `CONNECT` request or a token carries them),
//! of host names, and of DNS resolver addresses: the one parser of each that both programs use.
//!
//! - the port is required, decimal, 1-65535;
//! - an IPv6 address is in brackets (`[::1]:6379`), without a zone;
//! - a host made of digits and dots must be a dotted-quad IPv4 address (`10.0.1.50`); forms
//!   such as `10.1`, `0x7f.1` or `010.0.0.1`, which some resolvers read as addresses, are
//!   refused rather than passed on as names;
//! - anything else must be a DNS name: labels of 1-63 letters, digits, `-` or `_`, 253
//!   characters at most, compared in lowercase, one trailing dot allowed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::stream::Host;

/// The port of a resolver address written without one.
pub const DNS_PORT: u16 = 53;

/// Longest DNS name (without the trailing dot).
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// Why an authority was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// No `:port` at the end.
    #[error("missing port (expected host:port)")]
    MissingPort,
    /// The port is not a number in 1-65535.
    #[error("port {0:?} is not in 1-65535")]
    BadPort(String),
    /// A bracketed host is not an IPv6 address, or the bracket is not closed.
    #[error("{0:?} is not a bracketed IPv6 address")]
    BadIpv6(String),
    /// An IPv6 address without brackets.
    #[error("IPv6 addresses must be written in brackets, as [{0}]:port")]
    UnbracketedIpv6(String),
    /// A numeric host that is not a dotted-quad IPv4 address.
    #[error("{0:?} is not a dotted-quad IPv4 address")]
    BadIpv4(String),
    /// The host is not a valid DNS name.
    #[error("{0:?} is not a valid host name")]
    BadHostname(String),
}

/// Parse `host:port` strictly (see the module docs).
pub fn parse_authority(text: &str) -> Result<(Host, u16), AuthorityError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| AuthorityError::BadIpv6(text.to_owned()))?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| AuthorityError::BadIpv6(inside.to_owned()))?;
        let port = after.strip_prefix(':').ok_or(AuthorityError::MissingPort)?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or(AuthorityError::MissingPort)?;
        if host.contains(':') {
            return Err(AuthorityError::UnbracketedIpv6(host.to_owned()));
        }
        (parse_host(host)?, port)
    };
    Ok((host, parse_port(port)?))
}

/// Parse a host without port: a dotted-quad IPv4 address or a DNS name (IPv6 is only accepted
/// in brackets by [`parse_authority`]). A URL's host goes through this too, so `fetch()` and
/// `CONNECT` refuse the same hosts.
pub fn parse_host(host: &str) -> Result<Host, AuthorityError> {
    if looks_numeric(host) {
        return host
            .parse::<Ipv4Addr>()
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .map_err(|_| AuthorityError::BadIpv4(host.to_owned()));
    }
    parse_hostname(host)
        .map(Host::Name)
        .ok_or_else(|| AuthorityError::BadHostname(host.to_owned()))
}

/// Whether a host would be read as an IPv4 address by a lenient parser: its last label is
/// all digits or a `0x` hex number (the WHATWG URL rule).
fn looks_numeric(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

/// Validate a DNS name and return it in lowercase without a trailing dot; `None` if invalid.
pub fn parse_hostname(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN || looks_numeric(name) {
        return None;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    labels_ok.then(|| name.to_ascii_lowercase())
}

/// A resolver address: `ip:port`, `[v6]:port`, or a bare IP (port [`DNS_PORT`]). Surrounding
/// whitespace is ignored; names are refused (a resolver must be reachable before DNS works).
pub fn parse_resolver(text: &str) -> Result<SocketAddr, ResolverAddrError> {
    let trimmed = text.trim();
    if let Ok(addr) = trimmed.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(ResolverAddrError(text.to_owned()));
        }
        return Ok(addr);
    }
    trimmed
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .map_err(|_| ResolverAddrError(text.to_owned()))
}

/// A resolver address that is not `ip`, `ip:port` or `[v6]:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or ip:port")]
pub struct ResolverAddrError(pub String);

fn parse_port(port: &str) -> Result<u16, AuthorityError> {
    let bad = || AuthorityError::BadPort(port.to_owned());
    if port.is_empty() {
        return Err(AuthorityError::MissingPort);
    }
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Host {
        Host::Ip(text.parse().unwrap()) // test literal
    }

    #[test]
    fn accepted() {
        let cases: &[(&str, Host, u16)] = &[
            ("10.0.1.50:6379", ip("10.0.1.50"), 6379),
            ("[::1]:6379", ip("::1"), 6379),
            ("[fd00::5]:1", ip("fd00::5"), 1),
            ("db.internal:5432", Host::Name("db.internal".into()), 5432),
            (
                "DB.Internal.:65535",
                Host::Name("db.internal".into()),
                65535,
            ),
            ("redis:6379", Host::Name("redis".into()), 6379),
            (
                "_srv.x-y.example:80",
                Host::Name("_srv.x-y.example".into()),
                80,
            ),
            ("1host.example:80", Host::Name("1host.example".into()), 80),
        ];
        for (text, host, port) in cases {
            assert_eq!(parse_authority(text), Ok((host.clone(), *port)), "{text}");
        }
    }

    #[test]
    fn refused() {
        let cases: &[(&str, AuthorityError)] = &[
            ("10.0.1.50", AuthorityError::MissingPort),
            ("10.0.1.50:", AuthorityError::MissingPort),
            ("10.0.1.50:0", AuthorityError::BadPort("0".into())),
            ("10.0.1.50:65536", AuthorityError::BadPort("65536".into())),
            ("10.0.1.50:+80", AuthorityError::BadPort("+80".into())),
            ("10.0.1.50:0080x", AuthorityError::BadPort("0080x".into())),
            ("::1:6379", AuthorityError::UnbracketedIpv6("::1".into())),
            ("[::1]", AuthorityError::MissingPort),
            ("[::1:6379", AuthorityError::BadIpv6("[::1:6379".into())),
            ("[10.0.0.1]:80", AuthorityError::BadIpv6("10.0.0.1".into())),
            (
                "[fe80::1%eth0]:80",
                AuthorityError::BadIpv6("fe80::1%eth0".into()),
            ),
            ("10.1:80", AuthorityError::BadIpv4("10.1".into())),
            ("0x7f.1:80", AuthorityError::BadIpv4("0x7f.1".into())),
            ("010.0.0.1:80", AuthorityError::BadIpv4("010.0.0.1".into())),
            ("256.0.0.1:80", AuthorityError::BadIpv4("256.0.0.1".into())),
            ("a..b:80", AuthorityError::BadHostname("a..b".into())),
            ("-a.b:80", AuthorityError::BadHostname("-a.b".into())),
            ("a b:80", AuthorityError::BadHostname("a b".into())),
            ("héllo:80", AuthorityError::BadHostname("héllo".into())),
            (":80", AuthorityError::BadHostname("".into())),
            (
                "user@host:80",
                AuthorityError::BadHostname("user@host".into()),
            ),
        ];
        for (text, error) in cases {
            assert_eq!(parse_authority(text), Err(error.clone()), "{text}");
        }
        let long = format!("{}:80", "a".repeat(64));
        assert!(parse_authority(&long).is_err());
    }

    #[test]
    fn resolvers() {
        let ok: &[(&str, &str)] = &[
            ("10.0.0.2", "10.0.0.2:53"),
            (" 10.0.0.2:5353 ", "10.0.0.2:5353"),
            ("fd00::53", "[fd00::53]:53"),
            ("[fd00::53]:5353", "[fd00::53]:5353"),
        ];
        for (text, addr) in ok {
            assert_eq!(parse_resolver(text), Ok(addr.parse().unwrap()), "{text}");
            // literal
        }
        for text in [
            "dns.internal",
            "10.0.0.2:0",
            "10.0.0.2:70000",
            "",
            "fd00::53:53x",
        ] {
            assert_eq!(
                parse_resolver(text),
                Err(ResolverAddrError(text.to_owned())),
                "{text}"
            );
        }
    }
}
