//! Sets of IP addresses as sorted, disjoint intervals: union, subtraction, and the minimal
//! CIDR cover.
//!
//! Pure and allocation-light: a million feed entries are a million `(start, end)` pairs, sorted
//! once. The CIDR cover of each merged interval comes from ipnet's subnet iterators, so the
//! output is the minimal cover (the same set of prefixes FireHOL's `iprange` prints) and
//! deterministic: unchanged input gives unchanged output.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv4Subnets, Ipv6Net, Ipv6Subnets};

/// An inclusive range of addresses of one family.
pub type Range4 = (u32, u32);
pub type Range6 = (u128, u128);

/// A set of IPv4 and IPv6 addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetSet {
    /// Sorted, disjoint, and never adjacent (adjacent ranges are merged).
    v4: Vec<Range4>,
    v6: Vec<Range6>,
}

impl NetSet {
    /// The union of the given ranges (in any order, overlapping or not).
    pub fn from_ranges(mut v4: Vec<Range4>, mut v6: Vec<Range6>) -> NetSet {
        NetSet {
            v4: merge(&mut v4),
            v6: merge(&mut v6),
        }
    }

    /// The union of the given networks.
    pub fn from_nets<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> NetSet {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net {
                IpNet::V4(net) => v4.push(range4(net)),
                IpNet::V6(net) => v6.push(range6(net)),
            }
        }
        NetSet::from_ranges(v4, v6)
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The IPv4 ranges: sorted, disjoint, never adjacent.
    pub fn ranges4(&self) -> &[Range4] {
        &self.v4
    }

    /// The IPv6 ranges: sorted, disjoint, never adjacent.
    pub fn ranges6(&self) -> &[Range6] {
        &self.v6
    }

    /// Addresses in `self` but not in `other`.
    pub fn subtract(&self, other: &NetSet) -> NetSet {
        NetSet {
            v4: subtract(&self.v4, &other.v4),
            v6: subtract(&self.v6, &other.v6),
        }
    }

    /// Addresses in both `self` and `other`.
    pub fn intersect(&self, other: &NetSet) -> NetSet {
        self.subtract(&self.subtract(other))
    }

    /// Addresses in either.
    pub fn union(&self, other: &NetSet) -> NetSet {
        NetSet::from_ranges(
            self.v4.iter().chain(&other.v4).copied().collect(),
            self.v6.iter().chain(&other.v6).copied().collect(),
        )
    }

    /// Whether the set holds `ip`.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        match ip {
            std::net::IpAddr::V4(ip) => self.overlaps4((u32::from(ip), u32::from(ip))),
            std::net::IpAddr::V6(ip) => self.overlaps6((u128::from(ip), u128::from(ip))),
        }
    }

    /// Whether any address of `start..=end` (IPv4) is in the set.
    pub fn overlaps4(&self, (start, end): Range4) -> bool {
        overlaps(&self.v4, start, end)
    }

    /// Whether any address of `start..=end` (IPv6) is in the set.
    pub fn overlaps6(&self, (start, end): Range6) -> bool {
        overlaps(&self.v6, start, end)
    }

    /// The minimal CIDR cover: IPv4 first, then IPv6, each ascending.
    pub fn cidrs(&self) -> impl Iterator<Item = IpNet> + '_ {
        let v4 = self
            .v4
            .iter()
            .flat_map(|&(start, end)| {
                Ipv4Subnets::new(Ipv4Addr::from(start), Ipv4Addr::from(end), 0)
            })
            .map(IpNet::V4);
        let v6 = self
            .v6
            .iter()
            .flat_map(|&(start, end)| {
                Ipv6Subnets::new(Ipv6Addr::from(start), Ipv6Addr::from(end), 0)
            })
            .map(IpNet::V6);
        v4.chain(v6)
    }
}

/// `count` IPv4 /32s from 11.0.0.0, every other address so that none merge (for tests).
/// The prefixes covering `start..=end`.
pub fn range_cover(start: std::net::IpAddr, end: std::net::IpAddr) -> Option<Vec<IpNet>> {
    let set = match (start, end) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) if a <= b => {
            NetSet::from_ranges(vec![(u32::from(a), u32::from(b))], Vec::new())
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) if a <= b => {
            NetSet::from_ranges(Vec::new(), vec![(u128::from(a), u128::from(b))])
        }
        _ => return None,
    };
    Some(set.cidrs().collect())
}

#[cfg(test)]
pub(crate) fn spaced_v4(count: u32) -> NetSet {
    NetSet::from_ranges(
        (0..count)
            .map(|i| (0x0b00_0000 + 2 * i, 0x0b00_0000 + 2 * i))
            .collect(),
        vec![],
    )
}

/// A CIDR, or a bare address as a /32 or /128, as never-block lists accept them.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

pub fn range4(net: &Ipv4Net) -> Range4 {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

pub fn range6(net: &Ipv6Net) -> Range6 {
    (u128::from(net.network()), u128::from(net.broadcast()))
}

/// The shortest prefix in the CIDR cover of `start..=end`: how broad the range's widest block is.
pub fn widest_prefix4((start, end): Range4) -> u8 {
    Ipv4Subnets::new(Ipv4Addr::from(start), Ipv4Addr::from(end), 0)
        .map(|net| net.prefix_len())
        .min()
        .unwrap_or(32)
}

/// The shortest prefix in the CIDR cover of `start..=end` (IPv6).
pub fn widest_prefix6((start, end): Range6) -> u8 {
    Ipv6Subnets::new(Ipv6Addr::from(start), Ipv6Addr::from(end), 0)
        .map(|net| net.prefix_len())
        .min()
        .unwrap_or(128)
}

/// An unsigned address type (`u32` or `u128`).
trait Address: Copy + Ord {
    const MAX: Self;
    fn next(self) -> Self;
    fn previous(self) -> Self;
}

impl Address for u32 {
    const MAX: u32 = u32::MAX;
    fn next(self) -> u32 {
        self + 1
    }
    fn previous(self) -> u32 {
        self - 1
    }
}

impl Address for u128 {
    const MAX: u128 = u128::MAX;
    fn next(self) -> u128 {
        self + 1
    }
    fn previous(self) -> u128 {
        self - 1
    }
}

/// Sorts and merges overlapping and adjacent ranges.
fn merge<A: Address>(ranges: &mut [(A, A)]) -> Vec<(A, A)> {
    ranges.sort_unstable();
    let mut merged: Vec<(A, A)> = Vec::with_capacity(ranges.len() / 2 + 1);
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if last.1 == A::MAX || start <= last.1.next() => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => merged.push((start, end)),
        }
    }
    merged.shrink_to_fit();
    merged
}

/// `ranges` minus `remove`, both sorted and disjoint.
fn subtract<A: Address>(ranges: &[(A, A)], remove: &[(A, A)]) -> Vec<(A, A)> {
    let mut result = Vec::with_capacity(ranges.len());
    let mut j = 0;
    for &(mut start, end) in ranges {
        // Skip removals that end before this range.
        while j < remove.len() && remove[j].1 < start {
            j += 1;
        }
        let mut k = j;
        let mut done = false;
        while k < remove.len() && remove[k].0 <= end {
            let (remove_start, remove_end) = remove[k];
            if remove_start > start {
                result.push((start, remove_start.previous()));
            }
            if remove_end >= end {
                done = true;
                break;
            }
            start = remove_end.next();
            k += 1;
        }
        if !done {
            result.push((start, end));
        }
    }
    result
}

fn overlaps<A: Address>(ranges: &[(A, A)], start: A, end: A) -> bool {
    // The first range that ends at or after `start`.
    let index = ranges.partition_point(|range| range.1 < start);
    ranges.get(index).is_some_and(|range| range.0 <= end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nets(text: &str) -> Vec<IpNet> {
        text.split_whitespace()
            .map(|net| net.parse().unwrap())
            .collect()
    }

    fn cover(set: &NetSet) -> String {
        set.cidrs()
            .map(|net| net.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn union_and_cover() {
        let check = |input: &str, expected: &str| {
            assert_eq!(cover(&NetSet::from_nets(&nets(input))), expected, "{input}");
        };
        check("10.0.0.0/24 10.0.1.0/24", "10.0.0.0/23");
        check("10.0.0.0/24 10.0.0.128/25 10.0.0.5/32", "10.0.0.0/24");
        check("10.0.0.1/32 10.0.0.2/32", "10.0.0.1/32 10.0.0.2/32");
        check("10.0.0.2/32 10.0.0.3/32", "10.0.0.2/31");
        check("0.0.0.0/0 1.2.3.4/32", "0.0.0.0/0");
        check(
            "255.255.255.255/32 255.255.255.254/32",
            "255.255.255.254/31",
        );
        check(
            "2001:db8::/33 2001:db8:8000::/33 1.0.0.0/8",
            "1.0.0.0/8 2001:db8::/32",
        );
        check("::/0 ::1/128", "::/0");
    }

    #[test]
    fn subtraction_keeps_everything_outside() {
        let check = |input: &str, remove: &str, expected: &str| {
            let set = NetSet::from_nets(&nets(input)).subtract(&NetSet::from_nets(&nets(remove)));
            assert_eq!(cover(&set), expected, "{input} - {remove}");
        };
        check("10.0.0.0/7", "10.0.0.0/8", "11.0.0.0/8");
        check("0.0.0.0/0", "0.0.0.0/1", "128.0.0.0/1");
        check(
            "10.0.0.0/24",
            "10.0.0.0/26 10.0.0.192/26",
            "10.0.0.64/26 10.0.0.128/26",
        );
        check("10.0.0.0/24", "10.0.0.5/32", "10.0.0.0/30 10.0.0.4/32 10.0.0.6/31 10.0.0.8/29 10.0.0.16/28 10.0.0.32/27 10.0.0.64/26 10.0.0.128/25");
        check("1.1.1.1/32 2.2.2.2/32", "0.0.0.0/0", "");
        check("fd00::/8 2001:db8::/32", "fd00::/8", "2001:db8::/32");
    }

    #[test]
    fn widest_prefix_of_ranges() {
        assert_eq!(widest_prefix4((0, u32::MAX)), 0);
        assert_eq!(
            widest_prefix4((
                u32::from(Ipv4Addr::new(10, 0, 0, 1)),
                u32::from(Ipv4Addr::new(10, 0, 0, 254))
            )),
            26
        );
        assert_eq!(widest_prefix4((5, 5)), 32);
    }

    proptest! {
        /// The cover holds exactly the addresses of the input minus the removals, with no
        /// adjacent or overlapping prefixes left to merge.
        #[test]
        fn cover_is_exact_and_minimal(
            input in prop::collection::vec((0u32..4096, 0u32..64), 0..40),
            remove in prop::collection::vec((0u32..4096, 0u32..64), 0..10),
        ) {
            let to_ranges = |items: &[(u32, u32)]| items.iter().map(|&(start, len)| (start, start + len)).collect::<Vec<_>>();
            let set = NetSet::from_ranges(to_ranges(&input), vec![]).subtract(&NetSet::from_ranges(to_ranges(&remove), vec![]));
            let mut expected = std::collections::BTreeSet::new();
            for (start, end) in to_ranges(&input) {
                expected.extend(start..=end);
            }
            for (start, end) in to_ranges(&remove) {
                for address in start..=end {
                    expected.remove(&address);
                }
            }
            let mut covered = std::collections::BTreeSet::new();
            let cidrs: Vec<Ipv4Net> = set.cidrs().map(|net| match net { IpNet::V4(net) => net, IpNet::V6(_) => unreachable!() }).collect();
            for net in &cidrs {
                for address in u32::from(net.network())..=u32::from(net.broadcast()) {
                    prop_assert!(covered.insert(address), "prefixes overlap");
                }
            }
            prop_assert_eq!(&covered, &expected);
            // Minimal: ipnet's own aggregation cannot shorten the list.
            prop_assert_eq!(Ipv4Net::aggregate(&cidrs).len(), cidrs.len());
        }
    }
}
