//! CIDR tables: longest-prefix match over IPv4 and IPv6 networks.
//!
//! Networks are kept in insertion order with a map for replacement; lookups go through an
//! index built on first use after a change: the networks of each family flattened into
//! disjoint address intervals, each labelled with the most specific network covering it,
//! searched by binary search. With 10,000 networks that is about 15 comparisons over a
//! contiguous array, whatever the prefix lengths, hit or miss.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use ipnet::IpNet;

use crate::ip::{canonical_ip, canonical_net};

/// Marks an interval covered by no network.
const NONE: u32 = u32::MAX;

/// Networks with a value each, longest-prefix match.
#[derive(Debug, Clone)]
pub(crate) struct CidrTable<V> {
    entries: Vec<(IpNet, V)>,
    /// Position of each network in `entries`, to replace on re-insert.
    positions: HashMap<IpNet, u32>,
    /// Built on first lookup after a change; reset by every change.
    index: OnceLock<CidrIndex>,
}

impl<V> Default for CidrTable<V> {
    fn default() -> Self {
        CidrTable {
            entries: Vec::new(),
            positions: HashMap::new(),
            index: OnceLock::new(),
        }
    }
}

impl<V> CidrTable<V> {
    /// Insert `net` (canonicalised, host bits cleared), replacing the value of the same
    /// network if present.
    pub(crate) fn insert(&mut self, net: IpNet, value: V) {
        let net = canonical_net(net);
        match self.positions.get(&net) {
            Some(&pos) => self.entries[pos as usize].1 = value,
            None => {
                // Invariant: fewer than u32::MAX networks fit in memory alongside their index.
                let pos = u32::try_from(self.entries.len()).expect("fewer than 2^32 networks");
                self.positions.insert(net, pos);
                self.entries.push((net, value));
            }
        }
        self.index = OnceLock::new();
    }

    /// Remove every network.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.positions.clear();
        self.index = OnceLock::new();
    }

    /// The most specific network containing `ip` (canonicalised first), with its value.
    pub(crate) fn find(&self, ip: IpAddr) -> Option<(IpNet, &V)> {
        let index = self.index();
        let pos = match canonical_ip(ip) {
            IpAddr::V4(v4) => index.v4.find(u32::from(v4)),
            IpAddr::V6(v6) => index.v6.find(u128::from(v6)),
        }?;
        let (net, value) = &self.entries[pos as usize];
        Some((*net, value))
    }

    /// Number of distinct networks.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The networks and values, in first-insertion order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (IpNet, &V)> + '_ {
        self.entries.iter().map(|(net, value)| (*net, value))
    }

    /// Build the lookup index now instead of on the first lookup.
    pub(crate) fn index(&self) -> &CidrIndex {
        self.index.get_or_init(|| CidrIndex::build(&self.entries))
    }
}

/// Interval indexes for both families.
#[derive(Debug, Clone)]
pub(crate) struct CidrIndex {
    v4: IntervalIndex<u32>,
    v6: IntervalIndex<u128>,
}

impl CidrIndex {
    fn build<V>(entries: &[(IpNet, V)]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (pos, (net, _)) in entries.iter().enumerate() {
            // Invariant: `insert` keeps the number of entries below u32::MAX.
            let pos = u32::try_from(pos).expect("fewer than 2^32 networks");
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()), pos)),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()), pos)),
            }
        }
        CidrIndex {
            v4: IntervalIndex::build(v4),
            v6: IntervalIndex::build(v6),
        }
    }
}

/// An address as an unsigned integer: `u32` for IPv4, `u128` for IPv6.
pub(crate) trait Key: Copy + Ord {
    /// The highest address.
    const MAX: Self;
    /// The next address; only called below `MAX`.
    fn next(self) -> Self;
}

impl Key for u32 {
    const MAX: Self = u32::MAX;
    fn next(self) -> Self {
        self + 1
    }
}

impl Key for u128 {
    const MAX: Self = u128::MAX;
    fn next(self) -> Self {
        self + 1
    }
}

/// Disjoint intervals covering the address space: interval `i` runs from `starts[i]` to
/// `starts[i + 1] - 1` (or the top of the space) and maps to `values[i]` (`NONE` if
/// uncovered). Addresses below `starts[0]` are uncovered.
#[derive(Debug, Clone)]
pub(crate) struct IntervalIndex<K> {
    starts: Vec<K>,
    values: Vec<u32>,
}

impl<K: Key> IntervalIndex<K> {
    /// Index `(first, last, value)` ranges that are pairwise nested or disjoint (as CIDR
    /// networks are) and pairwise distinct; an address maps to the value of the smallest
    /// range containing it.
    pub(crate) fn build(mut ranges: Vec<(K, K, u32)>) -> Self {
        // Outer ranges before the ranges they contain: start ascending, then end descending.
        ranges.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut index = IntervalIndex {
            starts: Vec::with_capacity(ranges.len() * 2),
            values: Vec::with_capacity(ranges.len() * 2),
        };
        // The ranges containing the current position, innermost last: (last address, value).
        let mut open: Vec<(K, u32)> = Vec::new();
        for (first, last, value) in ranges {
            index.close_before(&mut open, Some(first));
            index.push(first, value);
            open.push((last, value));
        }
        index.close_before(&mut open, None);
        index.starts.shrink_to_fit();
        index.values.shrink_to_fit();
        index
    }

    /// Close the open ranges that end before `first` (all of them if `None`), starting an
    /// interval labelled with the enclosing range after each.
    fn close_before(&mut self, open: &mut Vec<(K, u32)>, first: Option<K>) {
        while let Some(&(last, _)) = open.last() {
            if first.is_some_and(|first| last >= first) {
                return;
            }
            open.pop();
            if last == K::MAX {
                // Everything still open also ends at the top of the address space.
                open.clear();
                return;
            }
            let outer = open.last().map_or(NONE, |&(_, value)| value);
            self.push(last.next(), outer);
        }
    }

    /// Start an interval at `start`: a later boundary at the same address overrides the
    /// earlier one, and a boundary that does not change the value is dropped.
    fn push(&mut self, start: K, value: u32) {
        if self.starts.last() == Some(&start) {
            // Invariant: `starts` and `values` always have the same length.
            *self.values.last_mut().expect("values parallel to starts") = value;
        } else if self.values.last().copied().unwrap_or(NONE) != value {
            self.starts.push(start);
            self.values.push(value);
        }
    }

    /// The value of the interval containing `key`.
    pub(crate) fn find(&self, key: K) -> Option<u32> {
        let after = self.starts.partition_point(|&start| start <= key);
        match after.checked_sub(1).map(|i| self.values[i]) {
            Some(NONE) | None => None,
            some => some,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(nets: &[&str]) -> CidrTable<usize> {
        let mut table = CidrTable::default();
        for (i, net) in nets.iter().enumerate() {
            table.insert(net.parse().unwrap(), i);
        }
        table
    }

    fn find(table: &CidrTable<usize>, ip: &str) -> Option<(String, usize)> {
        table
            .find(ip.parse().unwrap())
            .map(|(net, v)| (net.to_string(), *v))
    }

    #[test]
    fn longest_prefix_table() {
        let t = table(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.3/32",
            "0.0.0.0/1",
            "192.168.0.0/16",
            "fd00::/8",
            "fd00:1::/32",
            "fd00:1::5/128",
        ]);
        let cases: &[(&str, Option<(&str, usize)>)] = &[
            ("10.0.0.1", Some(("10.0.0.0/8", 0))),
            ("10.1.0.1", Some(("10.1.0.0/16", 1))),
            ("10.1.2.2", Some(("10.1.2.0/24", 2))),
            ("10.1.2.3", Some(("10.1.2.3/32", 3))),
            ("10.1.2.4", Some(("10.1.2.0/24", 2))),
            ("10.1.3.0", Some(("10.1.0.0/16", 1))),
            ("10.2.0.0", Some(("10.0.0.0/8", 0))),
            ("10.255.255.255", Some(("10.0.0.0/8", 0))),
            ("11.0.0.0", Some(("0.0.0.0/1", 4))),
            ("0.0.0.0", Some(("0.0.0.0/1", 4))),
            ("127.255.255.255", Some(("0.0.0.0/1", 4))),
            ("128.0.0.0", None),
            ("192.168.1.1", Some(("192.168.0.0/16", 5))),
            ("192.169.0.0", None),
            ("255.255.255.255", None),
            ("fd00::1", Some(("fd00::/8", 6))),
            ("fd00:1::4", Some(("fd00:1::/32", 7))),
            ("fd00:1::5", Some(("fd00:1::5/128", 8))),
            ("fd00:1::6", Some(("fd00:1::/32", 7))),
            ("fd00:2::", Some(("fd00::/8", 6))),
            ("fe00::", None),
            ("::1", None),
            // IPv4-mapped IPv6 matches the IPv4 routes.
            ("::ffff:10.1.2.3", Some(("10.1.2.3/32", 3))),
            ("::ffff:128.0.0.1", None),
        ];
        for (ip, want) in cases {
            let want = want.map(|(net, v)| (net.to_string(), v));
            assert_eq!(find(&t, ip), want, "{ip}");
        }
    }

    #[test]
    fn host_bits_cleared_and_same_prefix_replaces() {
        let mut t = table(&["10.1.2.3/8"]);
        assert_eq!(find(&t, "10.9.9.9"), Some(("10.0.0.0/8".into(), 0)));
        t.insert("10.0.0.0/8".parse().unwrap(), 7);
        assert_eq!(t.len(), 1);
        assert_eq!(find(&t, "10.9.9.9"), Some(("10.0.0.0/8".into(), 7)));
        // An IPv4-mapped IPv6 network is the same network as its IPv4 form.
        t.insert("::ffff:10.0.0.0/104".parse().unwrap(), 9);
        assert_eq!(t.len(), 1);
        assert_eq!(find(&t, "10.9.9.9"), Some(("10.0.0.0/8".into(), 9)));
    }

    #[test]
    fn whole_spaces_and_edges() {
        let t = table(&["0.0.0.0/0", "255.255.255.255/32", "::/0", "ffff::/16"]);
        assert_eq!(find(&t, "0.0.0.0"), Some(("0.0.0.0/0".into(), 0)));
        assert_eq!(
            find(&t, "255.255.255.255"),
            Some(("255.255.255.255/32".into(), 1))
        );
        assert_eq!(find(&t, "255.255.255.254"), Some(("0.0.0.0/0".into(), 0)));
        assert_eq!(find(&t, "::"), Some(("::/0".into(), 2)));
        assert_eq!(
            find(&t, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            Some(("ffff::/16".into(), 3))
        );
        assert_eq!(find(&t, "fffe::"), Some(("::/0".into(), 2)));
    }

    #[test]
    fn empty_table_and_clear() {
        let mut t = table(&[]);
        assert_eq!(find(&t, "10.0.0.1"), None);
        assert_eq!(find(&t, "::1"), None);
        t.insert("10.0.0.0/8".parse().unwrap(), 1);
        assert!(find(&t, "10.0.0.1").is_some());
        t.clear();
        assert_eq!(t.len(), 0);
        assert_eq!(find(&t, "10.0.0.1"), None);
    }

    #[test]
    fn index_rebuilt_after_insert() {
        let mut t = table(&["10.0.0.0/8"]);
        assert_eq!(find(&t, "10.1.0.1"), Some(("10.0.0.0/8".into(), 0)));
        t.insert("10.1.0.0/16".parse().unwrap(), 1);
        assert_eq!(find(&t, "10.1.0.1"), Some(("10.1.0.0/16".into(), 1)));
    }

    #[test]
    fn interval_index_drops_redundant_boundaries() {
        // Adjacent siblings with nothing between them, closing at the same address.
        let index = IntervalIndex::<u32>::build(vec![(0, 255, 0), (0, 127, 1), (128, 255, 2)]);
        assert_eq!(index.starts, vec![0, 128, 256]);
        assert_eq!(index.values, vec![1, 2, NONE]);
        assert_eq!(index.find(300), None);
    }
}
