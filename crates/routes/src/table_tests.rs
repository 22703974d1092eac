//! Table-driven tests of every [`RouteTable`] rule.

use super::*;

/// What a test expects from a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// Allowed by this route with this payload.
    Allow(&'static str, u32),
    /// Denied by this deny-list network.
    Denied(&'static str),
    /// No route.
    NoRoute,
    /// The matched route does not allow the port.
    Port(&'static str),
    /// Invalid name.
    Invalid,
}

fn check<T: Copy + Into<u32>>(decision: Decision<'_, T>, want: &Want, what: &str) {
    match (decision, want) {
        (Decision::Allowed(m), Want::Allow(route, payload)) => {
            assert_eq!(m.route.to_string(), *route, "{what}");
            assert_eq!((*m.payload).into(), *payload, "{what}");
        }
        (Decision::Refused(r), want) => {
            let got = match &r.reason {
                RefusalReason::Denied(net) => Want::Denied(leak(net.to_string())),
                RefusalReason::NoRoute => Want::NoRoute,
                RefusalReason::PortNotAllowed { route } => Want::Port(leak(route.to_string())),
                RefusalReason::InvalidName(_) => Want::Invalid,
            };
            assert_eq!(&got, want, "{what}: {r}");
        }
        (Decision::Allowed(m), want) => panic!("{what}: allowed by {}, want {want:?}", m.route),
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ports(s: &str) -> PortSet {
    PortSet::parse(s).unwrap()
}

fn sample() -> RouteTable<u32> {
    let mut t = RouteTable::new();
    t.insert_cidr(net("10.0.0.0/8"), PortSet::any(), 1);
    t.insert_cidr(net("10.5.0.0/16"), ports("443"), 2);
    t.insert_cidr(net("10.5.7.9/32"), ports("22,8000-8999"), 3);
    t.insert_cidr(net("127.0.0.0/8"), PortSet::any(), 4);
    t.insert_cidr(net("fd00::/8"), PortSet::any(), 5);
    t.insert_cidr(net("fd00:ab::/32"), ports("80"), 6);
    t.insert_cidr(net("169.254.0.0/16"), PortSet::any(), 7);
    t.insert_cidr(net("fd00:ec2::/32"), PortSet::any(), 8);
    t.insert_cidr(net("::1/128"), PortSet::any(), 9);
    t.add_deny(net("10.66.0.0/16"));
    t.add_deny(net("10.66.6.0/24"));
    t
}

#[test]
fn ip_rules() {
    let t = sample();
    let cases: &[(&str, u16, Want)] = &[
        // Longest prefix match.
        ("10.1.2.3", 22, Want::Allow("10.0.0.0/8", 1)),
        ("10.5.1.1", 443, Want::Allow("10.5.0.0/16", 2)),
        ("10.5.7.9", 22, Want::Allow("10.5.7.9/32", 3)),
        ("10.5.7.9", 8500, Want::Allow("10.5.7.9/32", 3)),
        ("127.0.0.1", 1, Want::Allow("127.0.0.0/8", 4)),
        ("fd00::1", 80, Want::Allow("fd00::/8", 5)),
        ("fd00:ab::1", 80, Want::Allow("fd00:ab::/32", 6)),
        ("::1", 5432, Want::Allow("::1/128", 9)),
        // The most specific route decides the port: no fall back to a wider route.
        ("10.5.1.1", 22, Want::Port("10.5.0.0/16")),
        ("10.5.7.9", 443, Want::Port("10.5.7.9/32")),
        ("10.5.7.9", 9000, Want::Port("10.5.7.9/32")),
        ("fd00:ab::1", 443, Want::Port("fd00:ab::/32")),
        // No route.
        ("11.0.0.1", 80, Want::NoRoute),
        ("192.168.1.1", 80, Want::NoRoute),
        ("0.0.0.0", 80, Want::NoRoute),
        ("255.255.255.255", 80, Want::NoRoute),
        ("fe80::1", 80, Want::NoRoute),
        ("::2", 80, Want::NoRoute),
        ("::", 80, Want::NoRoute),
        // The deny list wins over every route, including more specific ones; the most
        // specific deny entry is reported.
        ("169.254.169.254", 80, Want::Denied("169.254.169.254/32")),
        ("169.254.169.253", 80, Want::Allow("169.254.0.0/16", 7)),
        ("fd00:ec2::254", 80, Want::Denied("fd00:ec2::254/128")),
        ("fd00:ec2::253", 80, Want::Allow("fd00:ec2::/32", 8)),
        ("10.66.1.1", 80, Want::Denied("10.66.0.0/16")),
        ("10.66.6.6", 80, Want::Denied("10.66.6.0/24")),
        // IPv4-mapped IPv6 is the IPv4 address: for routes and for the deny list.
        ("::ffff:10.5.7.9", 22, Want::Allow("10.5.7.9/32", 3)),
        ("::ffff:10.5.1.1", 22, Want::Port("10.5.0.0/16")),
        (
            "::ffff:169.254.169.254",
            80,
            Want::Denied("169.254.169.254/32"),
        ),
        ("::ffff:a9fe:a9fe", 80, Want::Denied("169.254.169.254/32")),
        ("::ffff:192.168.1.1", 80, Want::NoRoute),
        // IPv4-compatible is not IPv4-mapped.
        ("::10.1.2.3", 80, Want::NoRoute),
    ];
    for (ip, port, want) in cases {
        let addr: IpAddr = ip.parse().unwrap();
        check(t.lookup_ip(addr, *port), want, &format!("{ip} port {port}"));
    }
}

#[test]
fn ip_statuses_and_messages() {
    let t = sample();
    let refusal = |ip: &str, port| {
        t.lookup_ip(ip.parse().unwrap(), port)
            .into_result()
            .unwrap_err()
    };
    let cases = [
        ("10.66.0.5", 80, "10.66.0.5 is denied by 10.66.0.0/16"),
        (
            "::ffff:169.254.169.254",
            80,
            "169.254.169.254 is denied by 169.254.169.254/32",
        ),
        ("11.0.0.1", 80, "11.0.0.1 is not inside any route"),
        (
            "10.5.1.1",
            22,
            "10.5.1.1:22 refused: route 10.5.0.0/16 does not allow port 22",
        ),
        (
            "fd00:ab::1",
            22,
            "[fd00:ab::1]:22 refused: route fd00:ab::/32 does not allow port 22",
        ),
    ];
    for (ip, port, message) in cases {
        let r = refusal(ip, port);
        assert_eq!(r.status, ProxyStatus::DestinationIpProhibited, "{ip}");
        assert_eq!(r.to_string(), message);
        assert_eq!(r.port, port);
    }
    let decision = t.lookup_ip("10.0.0.1".parse().unwrap(), 80);
    assert!(decision.is_allowed());
    assert_eq!(decision.status(), None);
    assert!(decision.refusal().is_none());
    let decision = t.lookup_ip("11.0.0.1".parse().unwrap(), 80);
    assert!(!decision.is_allowed());
    assert_eq!(
        decision.status(),
        Some(ProxyStatus::DestinationIpProhibited)
    );
}

fn names() -> RouteTable<u32> {
    let mut t = RouteTable::new();
    let routes = [
        ("db.internal", "5432", 1),
        ("*.corp.example", "*", 2),
        ("*.eu.corp.example", "443", 3),
        ("api.eu.corp.example", "8080", 4),
        ("Bücher.Example", "80", 5),
        ("*.xn--r8jz45g.example", "443", 6),
        ("*.example", "443", 7),
    ];
    for (pattern, p, payload) in routes {
        t.insert_hostname(HostPattern::parse(pattern).unwrap(), ports(p), payload);
    }
    t
}

#[test]
fn name_rules() {
    let t = names();
    let cases: &[(&str, u16, Want)] = &[
        // Exact, case-insensitive, trailing dot ignored.
        ("db.internal", 5432, Want::Allow("db.internal", 1)),
        ("DB.INTERNAL", 5432, Want::Allow("db.internal", 1)),
        ("db.internal.", 5432, Want::Allow("db.internal", 1)),
        ("db.internal", 22, Want::Port("db.internal")),
        ("x.db.internal", 5432, Want::NoRoute),
        ("internal", 5432, Want::NoRoute),
        // Wildcards: any depth below the suffix, never the suffix itself.
        ("web.corp.example", 22, Want::Allow("*.corp.example", 2)),
        ("a.b.c.corp.example", 22, Want::Allow("*.corp.example", 2)),
        ("corp.example", 22, Want::Port("*.example")),
        ("corp.example", 443, Want::Allow("*.example", 7)),
        ("xcorp.example", 443, Want::Allow("*.example", 7)),
        ("example", 443, Want::NoRoute),
        // Longer wildcard suffix beats shorter; exact beats wildcard.
        (
            "web.eu.corp.example",
            443,
            Want::Allow("*.eu.corp.example", 3),
        ),
        ("web.eu.corp.example", 22, Want::Port("*.eu.corp.example")),
        ("eu.corp.example", 22, Want::Allow("*.corp.example", 2)),
        (
            "api.eu.corp.example",
            8080,
            Want::Allow("api.eu.corp.example", 4),
        ),
        (
            "api.eu.corp.example",
            443,
            Want::Port("api.eu.corp.example"),
        ),
        (
            "x.api.eu.corp.example",
            443,
            Want::Allow("*.eu.corp.example", 3),
        ),
        // IDN: Unicode and punycode spellings are the same route.
        (
            "bücher.example",
            80,
            Want::Allow("xn--bcher-kva.example", 5),
        ),
        (
            "BÜCHER.EXAMPLE.",
            80,
            Want::Allow("xn--bcher-kva.example", 5),
        ),
        (
            "xn--bcher-kva.example",
            80,
            Want::Allow("xn--bcher-kva.example", 5),
        ),
        (
            "a.例え.example",
            443,
            Want::Allow("*.xn--r8jz45g.example", 6),
        ),
        // Invalid names are refused, never matched.
        ("", 443, Want::Invalid),
        ("db..internal", 5432, Want::Invalid),
        ("db.internal..", 5432, Want::Invalid),
        ("-x.corp.example", 443, Want::Invalid),
        ("a b.corp.example", 443, Want::Invalid),
        ("*.corp.example", 443, Want::Invalid),
        ("web.corp.example:443", 443, Want::Invalid),
        ("xn--zz.corp.example", 443, Want::Invalid),
        ("127.1", 443, Want::Invalid),
        ("10.0.0.5", 443, Want::Invalid),
        ("::1", 443, Want::Invalid),
    ];
    for (name, port, want) in cases {
        check(
            t.lookup_name(name, *port),
            want,
            &format!("{name:?} port {port}"),
        );
    }
    let long_label = format!("{}.corp.example", "a".repeat(64));
    check(
        t.lookup_name(&long_label, 443),
        &Want::Invalid,
        "64-byte label",
    );
}

#[test]
fn name_statuses_and_messages() {
    let t = names();
    let refusal = |name: &str, port| t.lookup_name(name, port).into_result().unwrap_err();
    let cases = [
        ("nowhere.test", 80, "no route for the name nowhere.test"),
        (
            "DB.internal.",
            22,
            "db.internal:22 refused: route db.internal does not allow port 22",
        ),
        (
            "a..b",
            80,
            "invalid destination name \"a..b\": hostname \"a..b\" has an empty label",
        ),
    ];
    for (name, port, message) in cases {
        let r = refusal(name, port);
        assert_eq!(r.status, ProxyStatus::DestinationNotFound, "{name}");
        assert_eq!(r.to_string(), message);
    }
    // Hostile input is not copied whole into the refusal.
    let huge = "a".repeat(100_000);
    let r = refusal(&huge, 80);
    assert!(matches!(r.reason, RefusalReason::InvalidName(_)));
    assert!(r.to_string().len() < 1_000);
}

#[test]
fn lookup_dispatches_literals_and_names() {
    let mut t = names();
    t.insert_cidr(net("10.0.0.0/8"), PortSet::any(), 10);
    t.insert_cidr(net("::1/128"), PortSet::any(), 11);
    let cases: &[(&str, u16, Want)] = &[
        ("10.0.0.5", 80, Want::Allow("10.0.0.0/8", 10)),
        ("::ffff:10.0.0.5", 80, Want::Allow("10.0.0.0/8", 10)),
        ("[::1]", 80, Want::Allow("::1/128", 11)),
        ("::1", 80, Want::Allow("::1/128", 11)),
        ("db.internal", 5432, Want::Allow("db.internal", 1)),
        // Ambiguous forms are neither IPs nor names.
        ("0177.0.0.1", 80, Want::Invalid),
        ("012.0.0.5", 80, Want::Invalid),
        ("167772165", 80, Want::Invalid),
        ("10.5", 80, Want::Invalid),
        ("0xa.0.0.5", 80, Want::Invalid),
    ];
    for (host, port, want) in cases {
        check(t.lookup(host, *port), want, host);
    }
}

#[test]
fn insert_replaces_and_clears_host_bits() {
    let mut t = RouteTable::new();
    t.insert_cidr(net("10.1.2.3/16"), ports("80"), 1u32);
    check(
        t.lookup_ip("10.1.200.1".parse().unwrap(), 80),
        &Want::Allow("10.1.0.0/16", 1),
        "host bits cleared",
    );
    t.insert_cidr(net("10.1.0.0/16"), ports("22"), 2);
    assert_eq!(t.len(), 1);
    check(
        t.lookup_ip("10.1.0.1".parse().unwrap(), 80),
        &Want::Port("10.1.0.0/16"),
        "replaced ports",
    );
    check(
        t.lookup_ip("10.1.0.1".parse().unwrap(), 22),
        &Want::Allow("10.1.0.0/16", 2),
        "replaced payload",
    );
    // IPv4-mapped IPv6 network is the same route as its IPv4 form.
    t.insert_cidr(net("::ffff:10.1.0.0/112"), ports("443"), 3);
    assert_eq!(t.len(), 1);
    check(
        t.lookup_ip("10.1.0.1".parse().unwrap(), 443),
        &Want::Allow("10.1.0.0/16", 3),
        "mapped network",
    );
    t.insert_hostname(HostPattern::parse("db.internal").unwrap(), ports("1"), 4);
    t.insert_hostname(HostPattern::parse("DB.Internal.").unwrap(), ports("2"), 5);
    assert_eq!(t.len(), 2);
    check(
        t.lookup_name("db.internal", 2),
        &Want::Allow("db.internal", 5),
        "name replaced",
    );
}

#[test]
fn deny_list_management() {
    let mut t: RouteTable<u32> = RouteTable::default();
    assert!(t.is_empty());
    assert_eq!(t.deny_list().collect::<Vec<_>>(), DEFAULT_DENY);
    t.insert_cidr(net("0.0.0.0/0"), PortSet::any(), 1);
    t.insert_cidr(net("::/0"), PortSet::any(), 2);
    assert_eq!(t.len(), 2);
    let metadata: IpAddr = "169.254.169.254".parse().unwrap();
    let metadata6: IpAddr = "fd00:ec2::254".parse().unwrap();
    assert_eq!(t.is_denied(metadata), Some(net("169.254.169.254/32")));
    assert_eq!(
        t.is_denied("::ffff:169.254.169.254".parse().unwrap()),
        Some(net("169.254.169.254/32"))
    );
    assert_eq!(t.is_denied(metadata6), Some(net("fd00:ec2::254/128")));
    assert_eq!(t.is_denied("169.254.169.253".parse().unwrap()), None);

    // Replacing the list drops the defaults.
    t.set_deny_list(vec![net("10.0.0.0/8"), net("::ffff:192.168.0.0/112")]);
    assert_eq!(t.is_denied(metadata), None);
    assert!(t.lookup_ip(metadata, 80).is_allowed());
    assert!(t.lookup_ip(metadata6, 80).is_allowed());
    assert_eq!(
        t.is_denied("10.9.9.9".parse().unwrap()),
        Some(net("10.0.0.0/8"))
    );
    // A mapped deny entry is stored and matched as IPv4.
    assert_eq!(
        t.is_denied("192.168.3.4".parse().unwrap()),
        Some(net("192.168.0.0/16"))
    );
    assert_eq!(
        t.deny_list().collect::<Vec<_>>(),
        vec![net("10.0.0.0/8"), net("192.168.0.0/16")]
    );

    // Empty list denies nothing; add_deny adds, host bits cleared.
    t.set_deny_list(Vec::new());
    assert_eq!(t.deny_list().count(), 0);
    assert_eq!(t.is_denied("10.9.9.9".parse().unwrap()), None);
    t.add_deny(net("fd00::1/16"));
    assert_eq!(
        t.is_denied("fd00::9".parse().unwrap()),
        Some(net("fd00::/16"))
    );
    check(
        t.lookup_ip("fd00::9".parse().unwrap(), 80),
        &Want::Denied("fd00::/16"),
        "added",
    );
}

#[test]
fn empty_table_refuses_everything() {
    let t: RouteTable<u32> = RouteTable::new();
    check(
        t.lookup_ip("127.0.0.1".parse().unwrap(), 80),
        &Want::NoRoute,
        "v4",
    );
    check(
        t.lookup_ip("::1".parse().unwrap(), 80),
        &Want::NoRoute,
        "v6",
    );
    check(t.lookup_name("localhost", 80), &Want::NoRoute, "name");
}

#[test]
fn iterators_and_debug() {
    let t = sample();
    let cidrs: Vec<String> = t.cidr_routes().map(|(n, _, _)| n.to_string()).collect();
    assert_eq!(cidrs[0], "10.0.0.0/8");
    assert_eq!(cidrs.len(), 9);
    let t = names();
    let mut hosts: Vec<String> = t.hostname_routes().map(|(p, _, _)| p.to_string()).collect();
    hosts.sort();
    assert!(hosts.contains(&"*.corp.example".to_owned()));
    assert!(hosts.contains(&"xn--bcher-kva.example".to_owned()));
    assert!(format!("{t:?}").contains("hostname_routes: 7"));
}

#[test]
fn shared_across_threads() {
    let t = std::sync::Arc::new(sample());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || t.lookup_ip("10.5.7.9".parse().unwrap(), 22).is_allowed())
        })
        .collect();
    for handle in handles {
        assert!(handle.join().unwrap());
    }
}
