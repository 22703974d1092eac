//! The Underpass route table: which destinations a connector may dial.
//!
//! A [`RouteTable`] holds, generic over a per-route payload:
//!
//! - CIDR routes for IPv4 and IPv6, longest-prefix match, host bits cleared on insert;
//! - hostname routes: exact names and `*.suffix` wildcards (any depth below the suffix, not
//!   the suffix itself), case-insensitive, trailing dot ignored, IDN normalised to punycode;
//! - a [`PortSet`] per route (single ports and inclusive ranges; empty means all);
//! - a deny list that wins over every route, by default [`DEFAULT_DENY`] (cloud metadata
//!   endpoints).
//!
//! A lookup returns a [`Decision`]: the route that allowed the destination, or a [`Refusal`]
//! saying why and which RFC 9209 [`ProxyStatus`] to report (`destination_ip_prohibited` for
//! denied or unrouted IPs, `destination_not_found` for unrouted names).
//!
//! [`special_range`] says which addresses are special-purpose (loopback, link-local,
//! unspecified, multicast, broadcast, and their IPv4-mapped and IPv4-compatible forms), for
//! callers that must not let a name reach them unless an IP route does.
//!
//! IP literals are parsed strictly ([`parse_ip_strict`]): ambiguous forms such as
//! `0177.0.0.1`, `2130706433` or `127.1` are rejected rather than reinterpreted, and
//! IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is treated as the IPv4 address everywhere.
//!
//! ```
//! use underpass_routes::{parse_route, Decision, PortSet, ProxyStatus, RouteSpec, RouteTable};
//!
//! let mut table = RouteTable::new();
//! table.insert_cidr("10.0.0.0/8".parse().unwrap(), PortSet::any(), "lan");
//! let RouteSpec::Host(pattern) = parse_route("*.corp.example").unwrap() else { panic!() };
//! table.insert_hostname(pattern, PortSet::parse("443").unwrap(), "corp");
//!
//! assert!(table.lookup_ip("10.1.2.3".parse().unwrap(), 22).is_allowed());
//! assert!(table.lookup_name("DB.Corp.Example.", 443).is_allowed());
//!
//! let Decision::Refused(refusal) = table.lookup_name("db.corp.example", 22) else { panic!() };
//! assert_eq!(refusal.status, ProxyStatus::DestinationNotFound);
//! let Decision::Refused(refusal) = table.lookup_ip("::ffff:169.254.169.254".parse().unwrap(), 80)
//! else { panic!() };
//! assert_eq!(refusal.to_string(), "169.254.169.254 is denied by 169.254.169.254/32");
//! ```
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

mod cidr;
mod decision;
mod error;
mod host;
mod ip;
mod ports;
mod spec;
mod special;
mod table;

pub use decision::{Decision, Destination, MatchedRoute, Refusal, RefusalReason, RouteMatch};
pub use error::RouteError;
pub use host::{normalize_hostname, HostPattern, MAX_LABEL_LEN, MAX_NAME_LEN};
pub use ip::{canonical_ip, canonical_net, parse_ip_strict};
pub use ports::PortSet;
pub use spec::{parse_route, RouteSpec};
pub use special::{special_range, SpecialRange};
pub use table::RouteTable;
pub use underpass_proto::ProxyStatus;

/// The deny list a [`RouteTable`] starts with: cloud instance metadata endpoints
/// (`169.254.169.254/32`, and AWS's IPv6 `fd00:ec2::254/128`), which hand out credentials
/// to anything that can reach them. Replace it with [`RouteTable::set_deny_list`].
pub const DEFAULT_DENY: &[IpNet] = &[
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 169, 254), 32)),
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
        128,
    )),
];

/// [`DEFAULT_DENY`] as text, as it would be written in configuration.
pub const DEFAULT_DENY_TEXT: &[&str] = &["169.254.169.254/32", "fd00:ec2::254/128"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_deny_text_matches() {
        let parsed: Vec<IpNet> = DEFAULT_DENY_TEXT
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(parsed, DEFAULT_DENY);
    }
}
