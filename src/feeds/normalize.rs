//! Normalizing a parsed feed under its guards: the set that would be published, and what the
//! guards removed or refused.
//!
//! Guards that trim (entries broader than the minimum prefix, never-block ranges) remove only
//! what they must: a never-block range is subtracted, so nothing outside it is lost (a feed
//! entry `10.0.0.0/7` with never-block `10.0.0.0/8` publishes `11.0.0.0/8`). Guards that
//! refuse (too many entries, a suspicious shrink) reject the whole update, so the last good set
//! stays in force.

use std::collections::BTreeMap;
use std::fmt;

use super::format::ParsedFeed;
use crate::netset::{widest_prefix4, widest_prefix6, NetSet};

/// The guards of one feed. `None` disables a guard.
#[derive(Clone, Debug, Default)]
pub struct Guards {
    /// Never published: subtracted from the feed (cluster pod, service and node CIDRs,
    /// loopback, link-local, and whatever the user adds).
    pub never_block: NetSet,
    /// IPv4 entries broader than this prefix length (e.g. `/8`) are removed.
    pub min_prefix_v4: Option<u8>,
    /// IPv6 entries broader than this prefix length are removed.
    pub min_prefix_v6: Option<u8>,
    /// A normalized set with more CIDRs than this is refused.
    pub max_entries: Option<usize>,
}

/// Why a guard removed entries; each is a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Removal {
    /// The entry was broader than the minimum prefix length.
    PrefixTooShort,
    /// The entry overlapped a never-block range (the overlap was subtracted).
    NeverBlock,
}

impl Removal {
    pub fn as_str(self) -> &'static str {
        match self {
            Removal::PrefixTooShort => "prefix_too_short",
            Removal::NeverBlock => "never_block",
        }
    }
}

/// A normalized feed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Normalized {
    pub set: NetSet,
    /// Number of CIDRs in the minimal cover of `set`.
    pub cidrs: usize,
    /// Entries removed or trimmed, by guard.
    pub removed: BTreeMap<Removal, u64>,
}

impl Normalized {
    /// Removals as `reason=count ...`.
    pub fn removed_summary(&self) -> String {
        self.removed
            .iter()
            .map(|(reason, count)| format!("{}={count}", reason.as_str()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// An update a guard refused as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the feed normalizes to {cidrs} CIDRs, more than max_entries ({max})")]
    TooManyEntries { cidrs: usize, max: usize },
    #[error(
        "the feed is empty (the last good set has {previous} CIDRs); set allow_shrink to accept"
    )]
    Empty { previous: usize },
    #[error("the feed shrank from {previous} to {next} CIDRs, below the allowed fraction {min_fraction}; set allow_shrink to accept")]
    Shrank {
        previous: usize,
        next: usize,
        min_fraction: Fraction,
    },
}

impl Refusal {
    /// The bounded metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::TooManyEntries { .. } => "too_many_entries",
            Refusal::Empty { .. } => "empty",
            Refusal::Shrank { .. } => "shrank",
        }
    }
}

/// A fraction between 0 and 1, printed as such.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fraction(pub f64);

impl Eq for Fraction {}

impl fmt::Display for Fraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Applies `guards` to `feed`.
pub fn normalize(feed: ParsedFeed, guards: &Guards) -> Result<Normalized, Refusal> {
    let mut removed = BTreeMap::new();
    let mut count = |reason: Removal, entries: usize| {
        if entries > 0 {
            *removed.entry(reason).or_insert(0) += entries as u64;
        }
    };
    let ParsedFeed { mut v4, mut v6, .. } = feed;
    if let Some(min) = guards.min_prefix_v4 {
        let before = v4.len();
        v4.retain(|&range| widest_prefix4(range) >= min);
        count(Removal::PrefixTooShort, before - v4.len());
    }
    if let Some(min) = guards.min_prefix_v6 {
        let before = v6.len();
        v6.retain(|&range| widest_prefix6(range) >= min);
        count(Removal::PrefixTooShort, before - v6.len());
    }
    if !guards.never_block.is_empty() {
        let overlapping = v4
            .iter()
            .filter(|&&range| guards.never_block.overlaps4(range))
            .count()
            + v6.iter()
                .filter(|&&range| guards.never_block.overlaps6(range))
                .count();
        count(Removal::NeverBlock, overlapping);
    }
    let mut set = NetSet::from_ranges(v4, v6);
    if !guards.never_block.is_empty() {
        set = set.subtract(&guards.never_block);
    }
    let cidrs = set.cidrs().count();
    if let Some(max) = guards.max_entries {
        if cidrs > max {
            return Err(Refusal::TooManyEntries { cidrs, max });
        }
    }
    Ok(Normalized {
        set,
        cidrs,
        removed,
    })
}

/// Refuses a new set that is empty, or smaller than `min_fraction` of the last applied one,
/// unless `allow_shrink`.
pub fn check_shrink(
    previous: usize,
    next: usize,
    min_fraction: f64,
    allow_shrink: bool,
) -> Result<(), Refusal> {
    if allow_shrink || previous == 0 {
        return Ok(());
    }
    if next == 0 {
        return Err(Refusal::Empty { previous });
    }
    if (next as f64) < (previous as f64) * min_fraction {
        return Err(Refusal::Shrank {
            previous,
            next,
            min_fraction: Fraction(min_fraction),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feeds::format::{parse, FeedFormat};

    fn run(content: &str, guards: &Guards) -> (Vec<String>, String) {
        let feed = parse(&FeedFormat::default(), content.as_bytes()).unwrap();
        let normalized = normalize(feed, guards).unwrap();
        (
            normalized.set.cidrs().map(|net| net.to_string()).collect(),
            normalized.removed_summary(),
        )
    }

    fn set(text: &str) -> NetSet {
        let nets: Vec<ipnet::IpNet> = text
            .split_whitespace()
            .map(|net| net.parse().unwrap())
            .collect();
        NetSet::from_nets(&nets)
    }

    #[test]
    fn guards_trim_only_what_they_must() {
        let cluster = Guards {
            never_block: set("10.0.0.0/8 127.0.0.0/8 169.254.0.0/16 fe80::/10"),
            min_prefix_v4: Some(8),
            min_prefix_v6: Some(16),
            ..Guards::default()
        };
        let check = |content: &str, expected: &[&str], removed: &str| {
            assert_eq!(
                run(content, &cluster),
                (
                    expected.iter().map(|s| s.to_string()).collect(),
                    removed.to_owned()
                ),
                "{content}"
            );
        };
        // A poisoned feed listing the whole internet publishes nothing from that entry.
        check(
            "0.0.0.0/0\n1.2.3.4\n",
            &["1.2.3.4/32"],
            "prefix_too_short=1",
        );
        check(
            "::/0\n2001:db8::1\n",
            &["2001:db8::1/128"],
            "prefix_too_short=1",
        );
        // Cluster ranges are subtracted; what lies outside them is kept.
        let never_block_only = Guards {
            never_block: set("10.0.0.0/8"),
            ..Guards::default()
        };
        assert_eq!(
            run("10.0.0.0/7\n", &never_block_only),
            (vec!["11.0.0.0/8".to_owned()], "never_block=1".to_owned())
        );
        check("10.0.0.0/7\n", &[], "prefix_too_short=1");
        check(
            "10.1.2.3\n127.0.0.1\n8.8.8.8\n",
            &["8.8.8.8/32"],
            "never_block=2",
        );
        check(
            "fe80::1\n2001:db8::/32\n",
            &["2001:db8::/32"],
            "never_block=1",
        );
        check("# nothing\n", &[], "");
    }

    #[test]
    fn refusals() {
        let feed = parse(&FeedFormat::default(), b"1.1.1.1\n2.2.2.2\n3.3.3.3\n").unwrap();
        let guards = Guards {
            max_entries: Some(2),
            ..Guards::default()
        };
        assert_eq!(
            normalize(feed, &guards),
            Err(Refusal::TooManyEntries { cidrs: 3, max: 2 })
        );
        assert_eq!(
            check_shrink(1000, 0, 0.5, false),
            Err(Refusal::Empty { previous: 1000 })
        );
        assert_eq!(
            check_shrink(1000, 100, 0.5, false).unwrap_err().kind(),
            "shrank"
        );
        assert_eq!(check_shrink(1000, 100, 0.5, true), Ok(()));
        assert_eq!(check_shrink(1000, 600, 0.5, false), Ok(()));
        assert_eq!(
            check_shrink(0, 0, 0.5, false),
            Ok(()),
            "a first sync has nothing to shrink from"
        );
    }
}
