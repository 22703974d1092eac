//! The route table: allowed networks and names with their ports and payloads, and a deny list.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use underpass_proto::ProxyStatus;

use crate::cidr::CidrTable;
use crate::decision::{Decision, Destination, MatchedRoute, Refusal, RefusalReason, RouteMatch};
use crate::error::excerpt;
use crate::host::{normalize_hostname, HostPattern, HostTable};
use crate::ip::{canonical_ip, parse_ip_strict};
use crate::ports::PortSet;
use crate::DEFAULT_DENY;

/// A route's ports and payload.
#[derive(Debug, Clone)]
struct Allow<T> {
    ports: PortSet,
    payload: T,
}

/// Which destinations may be dialed, each route carrying a payload of type `T`.
///
/// Rules, in order:
///
/// 1. IP destinations are canonicalised (`::ffff:a.b.c.d` is `a.b.c.d`), then checked against
///    the **deny list**, which wins over every route (refused `destination_ip_prohibited`).
/// 2. The **most specific** route covering the destination decides: the longest CIDR prefix
///    for IPs; for names an exact name, else the `*.suffix` wildcard with the longest suffix.
///    No route: refused (`destination_ip_prohibited` for IPs, `destination_not_found` for
///    names).
/// 3. That route's **port set** must contain the port, otherwise the destination is refused
///    with the same status. A less specific route allowing the port is *not* consulted: a
///    narrower route is a narrower policy (`10.0.0.0/8` all ports plus `10.0.5.0/24` port
///    443 means port 22 is refused on `10.0.5.0/24`).
///
/// Names are not checked against the deny list (they have no address yet): callers resolve
/// an allowed name and check each address with [`RouteTable::is_denied`], and with
/// [`RouteTable::lookup_ip`] when it is special-purpose ([`crate::special_range`]): a name must
/// not reach the local host or link unless an IP route does.
///
/// Lookups take `&self` and are lock-free after the first lookup following a change, which
/// builds the CIDR index (or call [`RouteTable::build_index`] to build it up front).
#[derive(Clone)]
pub struct RouteTable<T> {
    cidrs: CidrTable<Allow<T>>,
    hosts: HostTable<Allow<T>>,
    deny: CidrTable<()>,
}

impl<T> RouteTable<T> {
    /// No routes, and the [`DEFAULT_DENY`] deny list.
    pub fn new() -> Self {
        let mut table = RouteTable {
            cidrs: CidrTable::default(),
            hosts: HostTable::default(),
            deny: CidrTable::default(),
        };
        table.set_deny_list(DEFAULT_DENY.to_vec());
        table
    }

    /// Allow `net` (host bits cleared; an IPv4-mapped IPv6 network stored as IPv4) on
    /// `ports`. Inserting the same network again replaces its ports and payload.
    pub fn insert_cidr(&mut self, net: IpNet, ports: PortSet, payload: T) {
        self.cidrs.insert(net, Allow { ports, payload });
    }

    /// Allow names matching `pattern` on `ports`. Inserting the same pattern again replaces
    /// its ports and payload.
    pub fn insert_hostname(&mut self, pattern: HostPattern, ports: PortSet, payload: T) {
        self.hosts.insert(pattern, Allow { ports, payload });
    }

    /// Replace the deny list (including the defaults) with `nets`; an empty list denies
    /// nothing.
    pub fn set_deny_list(&mut self, nets: Vec<IpNet>) {
        self.deny.clear();
        for net in nets {
            self.add_deny(net);
        }
    }

    /// Add `net` to the deny list (host bits cleared; IPv4-mapped stored as IPv4).
    pub fn add_deny(&mut self, net: IpNet) {
        self.deny.insert(net, ());
    }

    /// The deny list, canonicalised, in insertion order.
    pub fn deny_list(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.deny.iter().map(|(net, ())| net)
    }

    /// The most specific deny-list network containing `ip` (canonicalised first), if any.
    pub fn is_denied(&self, ip: IpAddr) -> Option<IpNet> {
        self.deny.find(ip).map(|(net, ())| net)
    }

    /// Decide whether `ip:port` may be dialed.
    pub fn lookup_ip(&self, ip: IpAddr, port: u16) -> Decision<'_, T> {
        let ip = canonical_ip(ip);
        let refuse = |reason| {
            Decision::Refused(Refusal {
                reason,
                status: ProxyStatus::DestinationIpProhibited,
                destination: Destination::Ip(ip),
                port,
            })
        };
        if let Some(net) = self.is_denied(ip) {
            return refuse(RefusalReason::Denied(net));
        }
        match self.cidrs.find(ip) {
            None => refuse(RefusalReason::NoRoute),
            Some((net, allow)) if allow.ports.contains(port) => Decision::Allowed(RouteMatch {
                route: MatchedRoute::Cidr(net),
                ports: &allow.ports,
                payload: &allow.payload,
            }),
            Some((net, _)) => refuse(RefusalReason::PortNotAllowed {
                route: MatchedRoute::Cidr(net),
            }),
        }
    }

    /// Decide whether the name `name` may be dialed on `port`. The name is normalised first
    /// ([`normalize_hostname`]); an invalid name (including an IP literal or an ambiguous
    /// numeric form) is refused with [`RefusalReason::InvalidName`]. Every refusal carries
    /// `destination_not_found`: the (name, port) pair is not routed.
    ///
    /// The deny list is not consulted: the caller checks each resolved address with
    /// [`RouteTable::is_denied`].
    pub fn lookup_name(&self, name: &str, port: u16) -> Decision<'_, T> {
        let refuse = |reason, destination| {
            Decision::Refused(Refusal {
                reason,
                status: ProxyStatus::DestinationNotFound,
                destination: Destination::Name(destination),
                port,
            })
        };
        let name = match normalize_hostname(name) {
            Ok(name) => name,
            Err(e) => return refuse(RefusalReason::InvalidName(e.to_string()), excerpt(name)),
        };
        match self.hosts.find(&name) {
            None => refuse(RefusalReason::NoRoute, name),
            Some((pattern, allow)) if allow.ports.contains(port) => Decision::Allowed(RouteMatch {
                route: MatchedRoute::Host(pattern),
                ports: &allow.ports,
                payload: &allow.payload,
            }),
            Some((pattern, _)) => refuse(
                RefusalReason::PortNotAllowed {
                    route: MatchedRoute::Host(pattern),
                },
                name,
            ),
        }
    }

    /// Decide for a host as written in a request: a strict IP literal (including `[::1]`)
    /// goes to [`RouteTable::lookup_ip`], anything else to [`RouteTable::lookup_name`].
    pub fn lookup(&self, host: &str, port: u16) -> Decision<'_, T> {
        match parse_ip_strict(host) {
            Ok(ip) => self.lookup_ip(ip, port),
            Err(_) => self.lookup_name(host, port),
        }
    }

    /// The CIDR routes (canonical networks), with their ports and payloads, in first
    /// insertion order.
    pub fn cidr_routes(&self) -> impl Iterator<Item = (IpNet, &PortSet, &T)> + '_ {
        self.cidrs
            .iter()
            .map(|(net, allow)| (net, &allow.ports, &allow.payload))
    }

    /// The hostname routes with their ports and payloads, exact names first.
    pub fn hostname_routes(&self) -> impl Iterator<Item = (HostPattern, &PortSet, &T)> + '_ {
        self.hosts
            .iter()
            .map(|(pattern, allow)| (pattern, &allow.ports, &allow.payload))
    }

    /// Number of routes (CIDR and hostname; the deny list is not counted).
    pub fn len(&self) -> usize {
        self.cidrs.len() + self.hosts.len()
    }

    /// Whether there are no routes (every destination is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Build the lookup indexes now rather than on the first lookup after a change, so that
    /// first lookup is as fast as the rest.
    pub fn build_index(&self) {
        self.cidrs.index();
        self.deny.index();
    }
}

impl<T> Default for RouteTable<T> {
    /// Same as [`RouteTable::new`]: no routes, default deny list.
    fn default() -> Self {
        RouteTable::new()
    }
}

impl<T> fmt::Debug for RouteTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("cidr_routes", &self.cidrs.len())
            .field("hostname_routes", &self.hosts.len())
            .field("deny", &self.deny_list().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
