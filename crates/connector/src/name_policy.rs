//! What a name may reach: DNS cannot widen the route table.
//!
//! A hostname route lets the private DNS choose the addresses, and a VPC Service may name the
//! DNS servers to ask. Both are checked against the route table before any packet is sent:
//!
//! - A **name server** named by a request (a service's `resolver_ips`) must be one of the
//!   connector's own (`[dns] resolvers`, or `resolv.conf`'s), or an address whose IP route
//!   allows its port; a denied one is refused whatever else holds.
//! - A **resolved address** is dropped when it is denied; when it is special-purpose
//!   (loopback, link-local, unspecified, multicast, broadcast: [`special_range`]) and no IP
//!   route allows it on the stream's port; and, with `dns.strict_resolved`, whenever no IP route
//!   allows it. The rest are dialed.
//!
//! Every refusal is `destination_ip_prohibited`, like a denied IP: the name is routed, the
//! address (or name server) it leads to is not allowed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use tracing::{debug, info, warn};
use underpass_proto::{ProxyErrorReply, ProxyStatus};
use underpass_routes::{
    canonical_ip, special_range, Decision, Refusal, RefusalReason, RouteTable, SpecialRange,
};

use crate::resolve::MAX_RESOLVERS_PER_REQUEST;

/// Longest `details` text listing refused addresses.
const MAX_DETAILS: usize = 512;

/// The checks on what a name brings in: the name servers a request names and the addresses a
/// name resolves to.
#[derive(Debug, Clone)]
pub(crate) struct NamePolicy {
    /// `dns.strict_resolved`: every resolved address needs an IP route.
    strict: bool,
    /// The connector's own name servers (canonical): a request may always name them.
    own_resolvers: Vec<SocketAddr>,
}

/// Why a resolved address is not dialed.
#[derive(Debug)]
enum Dropped {
    /// In the deny list.
    Denied(IpNet),
    /// Special-purpose, and the IP routes do not allow it (the refusal says how).
    Special(SpecialRange, Refusal),
    /// Strict mode, and the IP routes do not allow it.
    Unrouted(Refusal),
}

impl NamePolicy {
    /// A policy that is strict or not, and trusts `own_resolvers` as name servers.
    pub(crate) fn new(strict: bool, own_resolvers: &[SocketAddr]) -> Self {
        NamePolicy {
            strict,
            own_resolvers: own_resolvers.iter().map(|&r| canonical(r)).collect(),
        }
    }

    /// Whether a request for `name` may ask `resolvers`. Checked before the lookup, so a
    /// refused name server gets no packet at all.
    pub(crate) fn check_resolvers(
        &self,
        routes: &RouteTable<()>,
        name: &str,
        resolvers: &[SocketAddr],
    ) -> Result<(), ProxyErrorReply> {
        if resolvers.len() > MAX_RESOLVERS_PER_REQUEST {
            return Err(ProxyErrorReply {
                status: ProxyStatus::HttpRequestDenied,
                details: format!(
                    "{} resolvers named; at most {MAX_RESOLVERS_PER_REQUEST} allowed",
                    resolvers.len()
                ),
            });
        }
        for &resolver in resolvers {
            let resolver = canonical(resolver);
            let why = if let Some(net) = routes.is_denied(resolver.ip()) {
                format!("resolver {resolver} is in the deny list ({net})")
            } else if self.own_resolvers.contains(&resolver) {
                continue;
            } else {
                match routes.lookup_ip(resolver.ip(), resolver.port()) {
                    Decision::Allowed(_) => continue,
                    Decision::Refused(refusal) => format!(
                        "resolver {resolver} is not one of the connector's own name servers \
                         ([dns] resolvers) and no IP route allows it: {}",
                        route_reason(&refusal)
                    ),
                }
            };
            warn!(name, %resolver, reason = %why, "name server refused; nothing sent to it");
            return Err(ProxyErrorReply {
                status: ProxyStatus::DestinationIpProhibited,
                details: why,
            });
        }
        Ok(())
    }

    /// The addresses `name` resolved to that may be dialed on `port`, in the resolver's order
    /// (canonical: IPv4-mapped IPv6 as IPv4). Each dropped address is logged; none left is
    /// `destination_ip_prohibited`, naming each address and why.
    pub(crate) fn admit(
        &self,
        routes: &RouteTable<()>,
        name: &str,
        port: u16,
        resolved: Vec<IpAddr>,
    ) -> Result<Vec<IpAddr>, ProxyErrorReply> {
        let mut allowed = Vec::with_capacity(resolved.len());
        let mut dropped = Vec::new();
        for ip in resolved {
            let ip = canonical_ip(ip);
            match self.check(routes, ip, port) {
                None => allowed.push(ip),
                Some(why) => {
                    match &why {
                        Dropped::Denied(net) => {
                            debug!(name, %ip, %net, "resolved address is denied; skipped");
                        }
                        Dropped::Special(range, refusal) => warn!(
                            name,
                            %ip,
                            range = range.as_str(),
                            reason = route_reason(refusal),
                            "resolved address is special-purpose and no IP route allows it; \
                             skipped"
                        ),
                        Dropped::Unrouted(refusal) => info!(
                            name,
                            %ip,
                            reason = route_reason(refusal),
                            "resolved address is not allowed by an IP route \
                             (dns.strict_resolved); skipped"
                        ),
                    }
                    dropped.push((ip, why));
                }
            }
        }
        if !allowed.is_empty() {
            return Ok(allowed);
        }
        let mut details = format!("{name} resolved only to refused addresses: ");
        for (index, (ip, why)) in dropped.iter().enumerate() {
            if index > 0 {
                details.push_str("; ");
            }
            details.push_str(&format!("{ip} {why}"));
            if details.len() > MAX_DETAILS {
                let mut end = MAX_DETAILS;
                while !details.is_char_boundary(end) {
                    end -= 1;
                }
                details.truncate(end);
                details.push_str("...");
                break;
            }
        }
        Err(ProxyErrorReply {
            status: ProxyStatus::DestinationIpProhibited,
            details,
        })
    }

    /// Why `ip` (canonical) may not be dialed on `port` when a name led to it; `None` if it
    /// may.
    fn check(&self, routes: &RouteTable<()>, ip: IpAddr, port: u16) -> Option<Dropped> {
        if let Some(net) = routes.is_denied(ip) {
            return Some(Dropped::Denied(net));
        }
        let special = special_range(ip);
        if special.is_none() && !self.strict {
            return None;
        }
        match routes.lookup_ip(ip, port) {
            Decision::Allowed(_) => None,
            Decision::Refused(refusal) => Some(match special {
                Some(range) => Dropped::Special(range, refusal),
                None => Dropped::Unrouted(refusal),
            }),
        }
    }
}

impl fmt::Display for Dropped {
    /// The rest of a sentence whose subject is the address: `is loopback and not inside any
    /// IP route`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dropped::Denied(net) => write!(f, "is denied by {net}"),
            Dropped::Special(range, refusal) => {
                write!(f, "is {range} and {}", route_reason(refusal))
            }
            Dropped::Unrouted(refusal) => write!(
                f,
                "is refused by dns.strict_resolved: {}",
                route_reason(refusal)
            ),
        }
    }
}

/// Why the IP routes refused an address, without repeating the address.
fn route_reason(refusal: &Refusal) -> String {
    match &refusal.reason {
        RefusalReason::NoRoute => "not inside any IP route".to_owned(),
        RefusalReason::PortNotAllowed { route } => {
            format!("route {route} does not allow port {}", refusal.port)
        }
        RefusalReason::Denied(net) => format!("denied by {net}"),
        RefusalReason::InvalidName(why) => why.clone(),
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

#[cfg(test)]
mod tests {
    use underpass_routes::{parse_route, PortSet, RouteSpec};

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test socket address")
    }

    /// `*.company.test` on every port, `10.1.0.0/16` on every port, `127.20.5.0/24` on port
    /// 80, `::1`; the default deny list plus `10.1.66.0/24`. Tables only: no socket is used.
    fn routes() -> RouteTable<()> {
        let mut table = RouteTable::new();
        let RouteSpec::Host(pattern) = parse_route("*.company.test").expect("a pattern") else {
            unreachable!("a wildcard is a hostname route");
        };
        table.insert_hostname(pattern, PortSet::any(), ());
        table.insert_cidr("10.1.0.0/16".parse().unwrap(), PortSet::any(), ());
        let port_80 = PortSet::parse("80").expect("ports");
        table.insert_cidr("127.20.5.0/24".parse().unwrap(), port_80, ());
        table.insert_cidr("::1/128".parse().unwrap(), PortSet::any(), ());
        table.add_deny("10.1.66.0/24".parse().unwrap());
        table
    }

    fn admitted(policy: &NamePolicy, port: u16, addrs: &[&str]) -> Result<Vec<IpAddr>, String> {
        let resolved = addrs.iter().map(|a| ip(a)).collect();
        policy
            .admit(&routes(), "x.company.test", port, resolved)
            .map_err(|e| {
                assert_eq!(
                    e.status,
                    ProxyStatus::DestinationIpProhibited,
                    "{}",
                    e.details
                );
                e.details
            })
    }

    #[test]
    fn special_addresses_need_an_ip_route_that_allows_the_port() {
        let lenient = NamePolicy::new(false, &[]);
        for special in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "169.254.10.1",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.251",
            "ff02::fb",
            "255.255.255.255",
        ] {
            let details = admitted(&lenient, 80, &[special]).unwrap_err();
            assert!(details.contains("not inside any IP route"), "{details}");
        }
        let details = admitted(&lenient, 80, &["::ffff:127.0.0.1"]).unwrap_err();
        assert_eq!(
            details,
            "x.company.test resolved only to refused addresses: 127.0.0.1 is loopback and not \
             inside any IP route"
        );
        // Covered by an IP route: on its ports only.
        assert_eq!(
            admitted(&lenient, 80, &["127.20.5.9"]),
            Ok(vec![ip("127.20.5.9")])
        );
        assert_eq!(admitted(&lenient, 22, &["::1"]), Ok(vec![ip("::1")]));
        let details = admitted(&lenient, 22, &["127.20.5.9"]).unwrap_err();
        assert!(
            details
                .contains("127.20.5.9 is loopback and route 127.20.5.0/24 does not allow port 22"),
            "{details}"
        );
    }

    #[test]
    fn lenient_mode_trusts_dns_for_ordinary_addresses_and_strict_mode_does_not() {
        let lenient = NamePolicy::new(false, &[]);
        let strict = NamePolicy::new(true, &[]);
        // Routed by IP: both dial it.
        assert_eq!(
            admitted(&strict, 443, &["10.1.2.3"]),
            Ok(vec![ip("10.1.2.3")])
        );
        assert_eq!(
            admitted(&lenient, 443, &["10.1.2.3"]),
            Ok(vec![ip("10.1.2.3")])
        );
        // Not routed by IP, not special: only the lenient policy lets it through.
        assert_eq!(
            admitted(&lenient, 443, &["10.9.0.1"]),
            Ok(vec![ip("10.9.0.1")])
        );
        let details = admitted(&strict, 443, &["10.9.0.1"]).unwrap_err();
        assert!(
            details.contains("10.9.0.1 is refused by dns.strict_resolved"),
            "{details}"
        );
        // Strict keeps the routed addresses of a mixed answer, in order.
        assert_eq!(
            admitted(&strict, 443, &["10.9.0.1", "10.1.0.7", "::ffff:10.1.0.8"]),
            Ok(vec![ip("10.1.0.7"), ip("10.1.0.8")])
        );
        // The deny list wins in both modes, even inside a route.
        for policy in [&lenient, &strict] {
            let details = admitted(policy, 443, &["10.1.66.1"]).unwrap_err();
            assert!(
                details.contains("10.1.66.1 is denied by 10.1.66.0/24"),
                "{details}"
            );
        }
    }

    #[test]
    fn a_long_list_of_refusals_is_cut() {
        let strict = NamePolicy::new(true, &[]);
        let many: Vec<String> = (0..200).map(|i| format!("10.9.{i}.1")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let details = admitted(&strict, 443, &many).unwrap_err();
        assert!(details.len() <= MAX_DETAILS + 3, "{} bytes", details.len());
        assert!(details.ends_with("..."), "{details}");
    }

    #[test]
    fn request_resolvers_must_be_own_or_routed() {
        let policy = NamePolicy::new(
            false,
            &[addr("127.0.0.53:53"), addr("[::ffff:10.2.0.2]:53")],
        );
        let check = |resolvers: &[&str]| {
            let resolvers: Vec<SocketAddr> = resolvers.iter().map(|r| addr(r)).collect();
            policy.check_resolvers(&routes(), "x.company.test", &resolvers)
        };
        // The connector's own (compared canonically), or allowed by an IP route with its port.
        assert!(check(&["127.0.0.53:53", "10.2.0.2:53"]).is_ok());
        assert!(check(&["10.1.0.2:53", "[::1]:5353"]).is_ok());
        assert!(check(&["127.20.5.53:80"]).is_ok());
        // Anything else: refused, naming the server.
        for refused in [
            "127.0.0.1:53",
            "127.0.0.53:5353",
            "10.3.0.2:53",
            "127.20.5.53:53",
        ] {
            let error = check(&["10.1.0.2:53", refused]).unwrap_err();
            assert_eq!(error.status, ProxyStatus::DestinationIpProhibited);
            assert!(
                error.details.contains(&format!("resolver {refused} ")),
                "{}",
                error.details
            );
            assert!(
                error.details.contains("own name servers"),
                "{}",
                error.details
            );
        }
        let error = check(&["127.20.5.53:53"]).unwrap_err();
        assert!(
            error
                .details
                .contains("route 127.20.5.0/24 does not allow port 53"),
            "{}",
            error.details
        );
        // Denied: refused even inside a route.
        let error = check(&["10.1.66.2:53"]).unwrap_err();
        assert!(error.details.contains("deny list"), "{}", error.details);
        // Too many.
        let nine = vec!["10.1.0.2:53"; 9];
        assert_eq!(
            check(&nine).unwrap_err().status,
            ProxyStatus::HttpRequestDenied
        );
    }
}
