//! Property tests: the route table against a naive linear-scan model.
//!
//! Random sequences of inserts, deny-list changes and lookups run against both. Addresses
//! and networks are drawn around a few bases (including the IPv4-mapped block and the
//! metadata endpoints) so that routes nest and overlap, and ports from a small range so that
//! port sets both match and miss.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use underpass_routes::{
    Decision, HostPattern, MatchedRoute, PortSet, ProxyStatus, RefusalReason, RouteTable,
    DEFAULT_DENY,
};

/// A lookup outcome both implementations can produce.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Allowed(String, u32),
    Denied(IpNet),
    NoRoute,
    PortNotAllowed(String),
}

fn outcome(decision: Decision<'_, u32>, want_status: ProxyStatus) -> Outcome {
    match decision {
        Decision::Allowed(m) => Outcome::Allowed(m.route.to_string(), *m.payload),
        Decision::Refused(r) => {
            assert_eq!(r.status, want_status, "{r}");
            match r.reason {
                RefusalReason::Denied(net) => Outcome::Denied(net),
                RefusalReason::NoRoute => Outcome::NoRoute,
                RefusalReason::PortNotAllowed { route } => Outcome::PortNotAllowed(match route {
                    MatchedRoute::Cidr(net) => net.to_string(),
                    MatchedRoute::Host(pattern) => pattern.to_string(),
                }),
                RefusalReason::InvalidName(why) => panic!("model names are valid: {why}"),
            }
        }
    }
}

/// The naive model: vectors scanned in full on every lookup.
#[derive(Debug, Default)]
struct Model {
    cidrs: Vec<(IpNet, PortSet, u32)>,
    deny: Vec<IpNet>,
    hosts: Vec<(HostPattern, PortSet, u32)>,
}

/// Written independently of the crate: `::ffff:0:0/96` and longer map to IPv4.
fn model_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(v6) = net {
        let seg = v6.network().segments();
        if v6.prefix_len() >= 96 && seg[..5] == [0; 5] && seg[5] == 0xffff {
            let v4 = Ipv4Addr::new(
                (seg[6] >> 8) as u8,
                seg[6] as u8,
                (seg[7] >> 8) as u8,
                seg[7] as u8,
            );
            return IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).unwrap());
        }
    }
    net
}

fn model_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            if seg[..5] == [0; 5] && seg[5] == 0xffff {
                return IpAddr::V4(Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                ));
            }
            ip
        }
        IpAddr::V4(_) => ip,
    }
}

impl Model {
    fn new() -> Self {
        Model {
            deny: DEFAULT_DENY.to_vec(),
            ..Model::default()
        }
    }

    fn insert_cidr(&mut self, net: IpNet, ports: PortSet, payload: u32) {
        let net = model_net(net);
        self.cidrs.retain(|(n, _, _)| *n != net);
        self.cidrs.push((net, ports, payload));
    }

    fn insert_host(&mut self, pattern: HostPattern, ports: PortSet, payload: u32) {
        self.hosts.retain(|(p, _, _)| *p != pattern);
        self.hosts.push((pattern, ports, payload));
    }

    fn is_denied(&self, ip: IpAddr) -> Option<IpNet> {
        let ip = model_ip(ip);
        self.deny
            .iter()
            .map(|n| model_net(*n))
            .filter(|n| n.contains(&ip))
            .max_by_key(|n| n.prefix_len())
    }

    fn lookup_ip(&self, ip: IpAddr, port: u16) -> Outcome {
        if let Some(net) = self.is_denied(ip) {
            return Outcome::Denied(net);
        }
        let ip = model_ip(ip);
        let best = self
            .cidrs
            .iter()
            .filter(|(n, _, _)| n.contains(&ip))
            .max_by_key(|(n, _, _)| n.prefix_len());
        match best {
            None => Outcome::NoRoute,
            Some((n, ports, payload)) if ports.contains(port) => {
                Outcome::Allowed(n.to_string(), *payload)
            }
            Some((n, _, _)) => Outcome::PortNotAllowed(n.to_string()),
        }
    }

    fn lookup_name(&self, name: &str, port: u16) -> Outcome {
        let name = name.to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        let exact = self
            .hosts
            .iter()
            .find(|(p, _, _)| matches!(p, HostPattern::Exact(e) if e == name));
        let best = exact.or_else(|| {
            self.hosts
                .iter()
                .filter(|(p, _, _)| match p {
                    HostPattern::Wildcard(suffix) => name.ends_with(&format!(".{suffix}")),
                    HostPattern::Exact(_) => false,
                })
                .max_by_key(|(p, _, _)| p.to_string().len())
        });
        match best {
            None => Outcome::NoRoute,
            Some((p, ports, payload)) if ports.contains(port) => {
                Outcome::Allowed(p.to_string(), *payload)
            }
            Some((p, _, _)) => Outcome::PortNotAllowed(p.to_string()),
        }
    }
}

fn v4_addr() -> impl Strategy<Value = Ipv4Addr> {
    let bases = [
        0x0a00_0000u32,
        0x0a05_0700,
        0xa9fe_a9fe,
        0x7f00_0001,
        0xc0a8_0000,
        0,
    ];
    (0..bases.len(), any::<u32>(), 0u32..=32).prop_map(move |(i, noise, bits)| {
        let mask = u32::MAX.checked_shr(32 - bits).unwrap_or(0);
        Ipv4Addr::from(bases[i] ^ (noise & mask))
    })
}

fn v6_addr() -> impl Strategy<Value = Ipv6Addr> {
    let bases = [
        0xfd00_0000_0000_0000_0000_0000_0000_0000u128,
        0xfd00_0ec2_0000_0000_0000_0000_0000_0254,
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        0x0000_0000_0000_0000_0000_ffff_0a00_0000, // IPv4-mapped 10.0.0.0
        0x0000_0000_0000_0000_0000_ffff_a9fe_a9fe, // IPv4-mapped metadata
        1,
    ];
    (
        0..bases.len(),
        any::<u128>(),
        prop_oneof![0u32..=40, 0u32..=128],
    )
        .prop_map(move |(i, noise, bits)| {
            let mask = u128::MAX.checked_shr(128 - bits).unwrap_or(0);
            Ipv6Addr::from(bases[i] ^ (noise & mask))
        })
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        v4_addr().prop_map(IpAddr::V4),
        v6_addr().prop_map(IpAddr::V6)
    ]
}

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (v4_addr(), 0u8..=32).prop_map(|(a, len)| IpNet::V4(Ipv4Net::new(a, len).unwrap())),
        (v6_addr(), 0u8..=128).prop_map(|(a, len)| IpNet::V6(Ipv6Net::new(a, len).unwrap())),
        (v6_addr(), 90u8..=128).prop_map(|(a, len)| IpNet::V6(Ipv6Net::new(a, len).unwrap())),
    ]
}

fn ports() -> impl Strategy<Value = PortSet> {
    prop_oneof![
        Just(PortSet::any()),
        prop::collection::vec((1u16..=8, 0u16..=3), 1..3).prop_map(|ranges| {
            PortSet::from_ranges(ranges.into_iter().map(|(s, w)| (s, s + w)).collect()).unwrap()
        }),
    ]
}

/// Names over a tiny alphabet so patterns and names collide often.
fn labels(max: usize) -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "corp", "xn--bcher-kva", "c_d"]),
        1..=max,
    )
}

fn pattern() -> impl Strategy<Value = HostPattern> {
    (labels(3), any::<bool>()).prop_map(|(labels, wild)| {
        let name = labels.join(".");
        if wild {
            HostPattern::Wildcard(name)
        } else {
            HostPattern::Exact(name)
        }
    })
}

fn name() -> impl Strategy<Value = String> {
    (labels(4), any::<bool>(), any::<bool>()).prop_map(|(labels, upper, dot)| {
        let mut name = labels.join(".");
        if upper {
            name = name.to_ascii_uppercase();
        }
        if dot {
            name.push('.');
        }
        name
    })
}

#[derive(Debug, Clone)]
enum Op {
    Cidr(IpNet, PortSet, u32),
    Host(HostPattern, PortSet, u32),
    Deny(IpNet),
    SetDeny(Vec<IpNet>),
    LookupIp(IpAddr, u16),
    LookupName(String, u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (net(), ports(), any::<u32>()).prop_map(|(n, p, v)| Op::Cidr(n, p, v)),
        3 => (pattern(), ports(), any::<u32>()).prop_map(|(h, p, v)| Op::Host(h, p, v)),
        1 => net().prop_map(Op::Deny),
        1 => prop::collection::vec(net(), 0..4).prop_map(Op::SetDeny),
        8 => (ip(), 1u16..=12).prop_map(|(ip, port)| Op::LookupIp(ip, port)),
        4 => (name(), 1u16..=12).prop_map(|(n, port)| Op::LookupName(n, port)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn table_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        let mut table = RouteTable::new();
        let mut model = Model::new();
        for op in ops {
            match op {
                Op::Cidr(net, ports, v) => {
                    table.insert_cidr(net, ports.clone(), v);
                    model.insert_cidr(net, ports, v);
                }
                Op::Host(pattern, ports, v) => {
                    table.insert_hostname(pattern.clone(), ports.clone(), v);
                    model.insert_host(pattern, ports, v);
                }
                Op::Deny(net) => {
                    table.add_deny(net);
                    model.deny.push(net);
                }
                Op::SetDeny(nets) => {
                    table.set_deny_list(nets.clone());
                    model.deny = nets;
                }
                Op::LookupIp(ip, port) => {
                    prop_assert_eq!(table.is_denied(ip), model.is_denied(ip), "is_denied {}", ip);
                    let got = outcome(table.lookup_ip(ip, port), ProxyStatus::DestinationIpProhibited);
                    prop_assert_eq!(got, model.lookup_ip(ip, port), "{} port {}", ip, port);
                }
                Op::LookupName(name, port) => {
                    let got = outcome(table.lookup_name(&name, port), ProxyStatus::DestinationNotFound);
                    prop_assert_eq!(got, model.lookup_name(&name, port), "{} port {}", name, port);
                }
            }
        }
        prop_assert_eq!(table.len(), model.cidrs.len() + model.hosts.len());
    }

    /// Many routes at once, then many lookups: exercises large interval indexes.
    #[test]
    fn bulk_matches_model(
        routes in prop::collection::vec((net(), ports(), any::<u32>()), 0..400),
        deny in prop::collection::vec(net(), 0..6),
        lookups in prop::collection::vec((ip(), 1u16..=12), 1..200),
    ) {
        let mut table = RouteTable::new();
        let mut model = Model::new();
        table.set_deny_list(deny.clone());
        model.deny = deny;
        for (net, ports, v) in routes {
            table.insert_cidr(net, ports.clone(), v);
            model.insert_cidr(net, ports, v);
        }
        for (ip, port) in lookups {
            let got = outcome(table.lookup_ip(ip, port), ProxyStatus::DestinationIpProhibited);
            prop_assert_eq!(got, model.lookup_ip(ip, port), "{} port {}", ip, port);
        }
    }

    /// Arbitrary text never panics the name path, and what normalises is stable.
    #[test]
    fn names_never_panic(text in "\\PC{0,80}", port in any::<u16>()) {
        let table: RouteTable<u32> = RouteTable::new();
        let decision = table.lookup_name(&text, port);
        prop_assert!(!decision.is_allowed());
        if let Ok(normal) = underpass_routes::normalize_hostname(&text) {
            prop_assert_eq!(underpass_routes::normalize_hostname(&normal), Ok(normal.clone()));
        }
        let _ = table.lookup(&text, port);
        let _ = underpass_routes::parse_route(&text);
    }

    /// Strict IP parsing accepts exactly the canonical text of every address.
    #[test]
    fn strict_ip_round_trips(ip in ip()) {
        let text = ip.to_string();
        prop_assert_eq!(underpass_routes::parse_ip_strict(&text), Ok(model_ip(ip)));
        prop_assert_eq!(
            underpass_routes::parse_ip_strict(&format!("[{text}]")).is_ok(),
            ip.is_ipv6()
        );
    }
}
