//! Threat matching: which threat feeds contain an address.
//!
//! Every feed's normalized set is merged into one sorted list of disjoint segments per address
//! family, each carrying the bitmask of the feeds that cover it, so a lookup is one binary
//! search whatever the number of feeds (up to 64). The index is immutable; a feed update builds
//! a new one and swaps it in ([`ThreatMatcher`]), so the flow path never waits for it.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::netset::NetSet;

/// The most feeds an index holds (one bit each).
pub const MAX_FEEDS: usize = 64;

/// One feed in the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreatFeed {
    pub name: Arc<str>,
    /// Severity of a flow matching this feed; `None` uses the threat class's default.
    pub severity: Option<u8>,
}

/// A feed and its set in force.
pub type FeedSet = (ThreatFeed, Arc<NetSet>);

/// Address -> the feeds that list it.
#[derive(Debug, Default)]
pub struct ThreatIndex {
    feeds: Vec<ThreatFeed>,
    v4: Vec<(u32, u32, u64)>,
    v6: Vec<(u128, u128, u64)>,
}

/// The feeds an address matched, as a bitmask over the index's feeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Matches(pub u64);

impl Matches {
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl ThreatIndex {
    /// Builds the index; feeds beyond [`MAX_FEEDS`] are left out (and logged).
    pub fn build(feeds: &[FeedSet]) -> ThreatIndex {
        if feeds.len() > MAX_FEEDS {
            tracing::error!(
                feeds = feeds.len(),
                max = MAX_FEEDS,
                "too many threat feeds to match flows against; the last ones are not matched"
            );
        }
        let feeds = &feeds[..feeds.len().min(MAX_FEEDS)];
        let v4 = segments(feeds.iter().enumerate().flat_map(|(bit, (_, set))| {
            set.ranges4()
                .iter()
                .map(move |&(start, end)| (u128::from(start), u128::from(end), 1u64 << bit))
        }))
        .into_iter()
        .map(|(start, end, mask)| (start as u32, end as u32, mask))
        .collect();
        let v6 = segments(feeds.iter().enumerate().flat_map(|(bit, (_, set))| {
            set.ranges6()
                .iter()
                .map(move |&(start, end)| (start, end, 1u64 << bit))
        }));
        ThreatIndex {
            feeds: feeds.iter().map(|(feed, _)| feed.clone()).collect(),
            v4,
            v6,
        }
    }

    /// The feeds that list `ip`.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Matches {
        match ip {
            IpAddr::V4(ip) => Matches(find(&self.v4, u32::from(ip))),
            IpAddr::V6(ip) => Matches(find(&self.v6, u128::from(ip))),
        }
    }

    /// The feeds of `matches`, in index order.
    pub fn feeds(&self, matches: Matches) -> impl Iterator<Item = &ThreatFeed> {
        self.feeds
            .iter()
            .enumerate()
            .filter(move |(bit, _)| matches.0 & (1 << bit) != 0)
            .map(|(_, feed)| feed)
    }

    pub fn is_empty(&self) -> bool {
        self.feeds.is_empty()
    }
}

fn find<A: Copy + Ord>(segments: &[(A, A, u64)], ip: A) -> u64 {
    let index = segments.partition_point(|segment| segment.0 <= ip);
    match index.checked_sub(1).map(|index| segments[index]) {
        Some((_, end, mask)) if ip <= end => mask,
        _ => 0,
    }
}

/// Sweeps the ranges of all feeds into disjoint segments with the mask of the feeds covering
/// each. Each feed's own ranges are disjoint, so toggling its bit at each edge is exact.
fn segments(ranges: impl Iterator<Item = (u128, u128, u64)>) -> Vec<(u128, u128, u64)> {
    // Edges: (position, bit); a range opens at its start and closes after its end.
    let mut edges: Vec<(u128, u64)> = Vec::new();
    for (start, end, bit) in ranges {
        edges.push((start, bit));
        if let Some(after) = end.checked_add(1) {
            edges.push((after, bit));
        }
    }
    edges.sort_unstable_by_key(|edge| edge.0);
    let mut segments = Vec::new();
    let mut mask = 0u64;
    let mut i = 0;
    while i < edges.len() {
        let position = edges[i].0;
        while i < edges.len() && edges[i].0 == position {
            mask ^= edges[i].1;
            i += 1;
        }
        let next = edges.get(i).map(|edge| edge.0);
        if mask != 0 {
            let end = next.map_or(u128::MAX, |next| next - 1);
            segments.push((position, end, mask));
        }
    }
    segments
}

/// The index in force, shared by the flow path and the feeds that update it.
#[derive(Clone, Debug, Default)]
pub struct ThreatMatcher {
    current: Arc<ArcSwap<ThreatIndex>>,
    sets: Arc<parking_lot::Mutex<Vec<FeedSet>>>,
}

impl ThreatMatcher {
    /// The index now; cheap, lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<ThreatIndex>> {
        self.current.load()
    }

    /// Replaces one feed's set (or adds the feed) and swaps in a rebuilt index.
    pub fn update(&self, feed: ThreatFeed, set: Arc<NetSet>) {
        let mut sets = self.sets.lock();
        match sets
            .iter_mut()
            .find(|(existing, _)| existing.name == feed.name)
        {
            Some(entry) => *entry = (feed, set),
            None => sets.push((feed, set)),
        }
        self.current.store(Arc::new(ThreatIndex::build(&sets)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(name: &str) -> ThreatFeed {
        ThreatFeed {
            name: name.into(),
            severity: None,
        }
    }

    fn set(text: &str) -> Arc<NetSet> {
        let nets: Vec<ipnet::IpNet> = text
            .split_whitespace()
            .map(|net| net.parse().unwrap())
            .collect();
        Arc::new(NetSet::from_nets(&nets))
    }

    fn names(index: &ThreatIndex, ip: &str) -> Vec<String> {
        index
            .feeds(index.lookup(ip.parse().unwrap()))
            .map(|feed| feed.name.to_string())
            .collect()
    }

    #[test]
    fn overlapping_feeds_and_families() {
        let index = ThreatIndex::build(&[
            (
                feed("a"),
                set("10.0.0.0/8 255.255.255.255/32 2001:db8::/32"),
            ),
            (
                feed("b"),
                set("10.1.0.0/16 0.0.0.0/32 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"),
            ),
        ]);
        let check = |ip: &str, expected: &[&str]| assert_eq!(names(&index, ip), expected, "{ip}");
        check("10.0.0.1", &["a"]);
        check("10.1.2.3", &["a", "b"]);
        check("10.2.0.0", &["a"]);
        check("11.0.0.0", &[]);
        check("0.0.0.0", &["b"]);
        check("255.255.255.255", &["a"]);
        check("2001:db8::1", &["a"]);
        check("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["b"]);
        check("::1", &[]);
    }

    #[test]
    fn updates_swap_in() {
        let matcher = ThreatMatcher::default();
        assert!(matcher.load().lookup("1.2.3.4".parse().unwrap()).is_empty());
        matcher.update(feed("a"), set("1.2.3.0/24"));
        let before = matcher.load();
        matcher.update(feed("a"), set("5.6.7.0/24"));
        assert!(
            !before.lookup("1.2.3.4".parse().unwrap()).is_empty(),
            "a loaded index does not change under its reader"
        );
        assert!(matcher.load().lookup("1.2.3.4".parse().unwrap()).is_empty());
        assert!(!matcher.load().lookup("5.6.7.8".parse().unwrap()).is_empty());
    }

    proptest! {
        /// A lookup names exactly the feeds whose sets contain the address.
        #[test]
        fn lookups_equal_membership(
            feeds in prop::collection::vec(prop::collection::vec((0u32..2000, 0u32..40), 0..15), 1..6),
            probes in prop::collection::vec(0u32..2100, 50),
        ) {
            let sets: Vec<FeedSet> = feeds
                .iter()
                .enumerate()
                .map(|(i, ranges)| (feed(&format!("f{i}")), Arc::new(NetSet::from_ranges(ranges.iter().map(|&(start, len)| (start, start + len)).collect(), vec![]))))
                .collect();
            let index = ThreatIndex::build(&sets);
            for probe in probes {
                let expected: Vec<String> = sets
                    .iter()
                    .filter(|(_, set)| set.ranges4().iter().any(|&(start, end)| (start..=end).contains(&probe)))
                    .map(|(feed, _)| feed.name.to_string())
                    .collect();
                let ip = IpAddr::from(std::net::Ipv4Addr::from(probe));
                let found: Vec<String> = index.feeds(index.lookup(ip)).map(|feed| feed.name.to_string()).collect();
                prop_assert_eq!(found, expected, "{}", probe);
            }
        }
    }
}
