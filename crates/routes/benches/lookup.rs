//! Route lookups per second with 10,000 mixed routes (IPv4, IPv6, hostnames).
//!
//! `cargo bench -p underpass-routes --bench lookup`. Each iteration runs a batch of lookups;
//! criterion reports the throughput in lookups per second ("elem/s"). Half the destinations
//! fall inside a route, half are random (mostly unrouted), and a few hit the deny list.

use std::collections::HashSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use underpass_routes::{HostPattern, PortSet, RouteTable};

const V4_ROUTES: usize = 4_000;
const V6_ROUTES: usize = 3_000;
const EXACT_NAMES: usize = 2_000;
const WILDCARDS: usize = 1_000;
const BATCH: usize = 4_096;

/// SplitMix64: deterministic inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn ports(&mut self) -> PortSet {
        match self.below(3) {
            0 => PortSet::any(),
            1 => PortSet::parse("443").unwrap(),
            _ => PortSet::parse("22,80,8000-8999").unwrap(),
        }
    }

    fn port(&mut self) -> u16 {
        [22, 80, 443, 5432, 8080][self.below(5) as usize]
    }
}

struct Fixture {
    table: RouteTable<u32>,
    ips: Vec<(IpAddr, u16)>,
    names: Vec<(String, u16)>,
}

fn fixture() -> Fixture {
    let mut rng = Rng(0x5eed);
    let mut table = RouteTable::new();
    let mut v4_nets = Vec::new();
    let mut v6_nets = Vec::new();
    // Distinct networks only: a repeated short prefix would replace, not add, a route.
    let mut seen = HashSet::new();
    while v4_nets.len() < V4_ROUTES {
        let len = 8 + rng.below(25) as u8;
        let net = Ipv4Net::new(Ipv4Addr::from(rng.next() as u32), len)
            .unwrap()
            .trunc();
        if seen.insert(IpNet::V4(net)) {
            table.insert_cidr(IpNet::V4(net), rng.ports(), v4_nets.len() as u32);
            v4_nets.push(net);
        }
    }
    while v6_nets.len() < V6_ROUTES {
        let len = 16 + rng.below(113) as u8;
        let addr = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let net = Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc();
        if seen.insert(IpNet::V6(net)) {
            table.insert_cidr(IpNet::V6(net), rng.ports(), v6_nets.len() as u32);
            v6_nets.push(net);
        }
    }
    let mut exact = Vec::new();
    let mut wild = Vec::new();
    for i in 0..EXACT_NAMES {
        let name = format!("svc{i}.ns{}.cluster.internal", i % 50);
        let pattern = HostPattern::parse(&name).unwrap();
        table.insert_hostname(pattern, rng.ports(), i as u32);
        exact.push(name);
    }
    for i in 0..WILDCARDS {
        let suffix = format!("team{i}.corp.example");
        let pattern = HostPattern::parse(&format!("*.{suffix}")).unwrap();
        table.insert_hostname(pattern, rng.ports(), i as u32);
        wild.push(suffix);
    }
    assert_eq!(table.len(), 10_000);
    table.build_index();

    let mut ips = Vec::with_capacity(BATCH);
    for i in 0..BATCH {
        let ip = match i % 8 {
            // Inside a route: a random address of a random network.
            0 | 1 => {
                let net = v4_nets[rng.below(v4_nets.len() as u64) as usize];
                let host = (rng.next() as u32) & !u32::from(net.netmask());
                IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) | host))
            }
            2 | 3 => {
                let net = v6_nets[rng.below(v6_nets.len() as u64) as usize];
                let noise = (u128::from(rng.next()) << 64) | u128::from(rng.next());
                let host = noise & !u128::from(net.netmask());
                IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) | host))
            }
            // Random, mostly unrouted.
            4 | 5 => IpAddr::V4(Ipv4Addr::from(rng.next() as u32)),
            6 => IpAddr::V6(Ipv6Addr::from(u128::from(rng.next()) << 64)),
            // Denied (the metadata endpoint, sometimes IPv4-mapped).
            _ if rng.below(2) == 0 => IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
            _ => "::ffff:169.254.169.254".parse().unwrap(),
        };
        ips.push((ip, rng.port()));
    }

    let mut names = Vec::with_capacity(BATCH);
    for i in 0..BATCH {
        let name = match i % 4 {
            0 => exact[rng.below(exact.len() as u64) as usize].clone(),
            1 => format!(
                "host{}.{}",
                rng.below(100),
                wild[rng.below(wild.len() as u64) as usize]
            ),
            2 => format!("Svc{}.NS1.Cluster.Internal.", rng.below(EXACT_NAMES as u64)),
            _ => format!("unknown{}.example.org", rng.below(1000)),
        };
        names.push((name, rng.port()));
    }
    Fixture { table, ips, names }
}

fn lookups(c: &mut Criterion) {
    let fixture = fixture();
    let allowed = fixture
        .ips
        .iter()
        .filter(|(ip, port)| fixture.table.lookup_ip(*ip, *port).is_allowed())
        .count();
    eprintln!("ip batch: {allowed} of {BATCH} lookups allowed");

    let mut group = c.benchmark_group("routes_10k_mixed");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("lookup_ip", |b| {
        b.iter(|| {
            let mut allowed = 0usize;
            for &(ip, port) in &fixture.ips {
                allowed += usize::from(black_box(&fixture.table).lookup_ip(ip, port).is_allowed());
            }
            allowed
        })
    });
    group.bench_function("is_denied", |b| {
        b.iter(|| {
            let mut denied = 0usize;
            for &(ip, _) in &fixture.ips {
                denied += usize::from(black_box(&fixture.table).is_denied(ip).is_some());
            }
            denied
        })
    });
    group.bench_function("lookup_name", |b| {
        b.iter(|| {
            let mut allowed = 0usize;
            for (name, port) in &fixture.names {
                let decision = black_box(&fixture.table).lookup_name(name, *port);
                allowed += usize::from(decision.is_allowed());
            }
            allowed
        })
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
