//! Rendering a normalized feed as cluster objects: sharded network sets, an optional deny
//! policy, and the tier it goes in.
//!
//! Pure. Nets are spread over shards by a stable hash of each CIDR, so adding or removing a few
//! addresses changes only the shards they fall in; the shard count only changes when the feed
//! grows or shrinks past a power-of-two step. Every shard stays under both the configured net
//! count and a byte budget well inside etcd's 1.5 MiB request limit. The first shard is named
//! `threatfeed.<feed>` (the name Calico Enterprise uses), further ones `threatfeed.<feed>.<n>`.
//! Every object carries the feed's labels plus its ownership labels ([`ownership`]).

use std::collections::BTreeMap;

use crate::k8s::apply::{fnv1a, Object, Ownership};
use crate::k8s::calico;
use crate::netset::NetSet;

/// The label naming the feed an object belongs to.
pub const FEED_LABEL: &str = "threatflow.io/feed";
/// The label naming the component that owns a shared object (the feeds' tier).
pub const COMPONENT_LABEL: &str = "threatflow.io/component";

/// The most bytes of net strings one shard may hold: with the object's other fields and JSON
/// quoting, the object stays far below etcd's 1.5 MiB.
pub const SHARD_MAX_BYTES: usize = 1024 * 1024;

/// How a feed becomes objects.
#[derive(Clone, Debug)]
pub struct RenderSettings {
    /// Object names start with this (`threatfeed.`).
    pub name_prefix: String,
    pub shard_max_nets: usize,
    /// A deny policy for the feed, if wanted.
    pub policy: Option<PolicySettings>,
}

#[derive(Clone, Debug)]
pub struct PolicySettings {
    pub tier: String,
    /// The policy's order in the tier.
    pub order: f64,
    /// The tier's order among tiers.
    pub tier_order: f64,
}

impl Default for RenderSettings {
    fn default() -> Self {
        RenderSettings {
            name_prefix: "threatfeed.".into(),
            shard_max_nets: 10_000,
            policy: None,
        }
    }
}

/// The objects of one feed, stamped with its ownership.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// The network sets (shards), then the deny policy if any.
    pub objects: Vec<Object>,
    pub shards: usize,
    /// A short hash over every object's content hash.
    pub content_hash: String,
}

/// The labels that mark a feed's objects.
pub fn ownership(feed: &str) -> Ownership {
    Ownership::new(FEED_LABEL, feed)
}

/// The labels that mark the tier the feeds' deny policies go in.
pub fn tier_ownership() -> Ownership {
    Ownership::new(COMPONENT_LABEL, "feeds")
}

/// The tier the deny policies go in: evaluated at `tier_order`, and passing what no feed
/// denies on to the next tier.
pub fn tier(policy: &PolicySettings) -> Object {
    tier_ownership().stamp(calico::passing_tier(policy.tier.clone(), policy.tier_order))
}

/// Renders `set` for `feed` with the user's `labels`.
pub fn render(
    feed: &str,
    labels: &BTreeMap<String, String>,
    set: &NetSet,
    settings: &RenderSettings,
) -> Rendered {
    let nets: Vec<String> = set.cidrs().map(|net| net.to_string()).collect();
    let max_nets = settings.shard_max_nets.max(1);
    // Start with enough shards to fill each to about three quarters, then double until the
    // hash spread fits every shard.
    let mut shards = (nets.len() * 4 / 3)
        .div_ceil(max_nets)
        .max(1)
        .next_power_of_two();
    let assigned = loop {
        let mut assigned: Vec<Vec<&str>> = vec![Vec::new(); shards];
        let mut bytes = vec![0usize; shards];
        for net in &nets {
            let shard = (fnv1a(net.as_bytes()) % shards as u64) as usize;
            assigned[shard].push(net);
            bytes[shard] += net.len() + 3;
        }
        let fits = assigned
            .iter()
            .zip(&bytes)
            .all(|(nets, &bytes)| nets.len() <= max_nets && bytes <= SHARD_MAX_BYTES);
        if fits || shards >= nets.len() {
            break assigned;
        }
        shards *= 2;
    };

    let ownership = ownership(feed);
    let mut objects: Vec<Object> = assigned
        .into_iter()
        .enumerate()
        .map(|(index, nets)| {
            ownership.stamp(calico::network_set(
                set_name(&settings.name_prefix, feed, index),
                labels.clone(),
                nets.into_iter().map(str::to_owned).collect(),
            ))
        })
        .collect();
    let shards = objects.len();
    if let Some(policy) = &settings.policy {
        // Feed names are validated to `[a-z0-9-]`, so they cannot change the selector.
        let name = format!(
            "{}.{}{feed}",
            policy.tier,
            settings.name_prefix.replace('.', "-")
        );
        let policy = calico::deny_sets_policy(name, &policy.tier, policy.order, FEED_LABEL, feed);
        objects.push(ownership.stamp(policy));
    }
    let hashes: Vec<&str> = objects.iter().filter_map(Object::content_hash).collect();
    let content_hash = format!("{:016x}", fnv1a(hashes.join(",").as_bytes()));
    Rendered {
        objects,
        shards,
        content_hash,
    }
}

/// `threatfeed.<feed>` for the first shard, `threatfeed.<feed>.<n>` after it.
pub fn set_name(prefix: &str, feed: &str, shard: usize) -> String {
    match shard {
        0 => format!("{prefix}{feed}"),
        n => format!("{prefix}{feed}.{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::apply::MANAGED_BY_LABEL;
    use crate::k8s::calico::{GlobalNetworkPolicy, GlobalNetworkSet};
    use std::net::Ipv4Addr;

    fn sets(rendered: &Rendered) -> Vec<&GlobalNetworkSet> {
        rendered
            .objects
            .iter()
            .filter_map(|object| match object {
                Object::NetworkSet(set) => Some(set),
                _ => None,
            })
            .collect()
    }

    fn policy(rendered: &Rendered) -> Option<&GlobalNetworkPolicy> {
        rendered.objects.iter().find_map(|object| match object {
            Object::Policy(policy) => Some(policy),
            _ => None,
        })
    }

    fn settings(max: usize) -> RenderSettings {
        RenderSettings {
            shard_max_nets: max,
            ..RenderSettings::default()
        }
    }

    #[test]
    fn small_feeds_are_one_object_named_like_calico_enterprise() {
        let labels = [("security-action".to_owned(), "block".to_owned())].into();
        let rendered = render(
            "feodo",
            &labels,
            &crate::netset::spaced_v4(3),
            &settings(10_000),
        );
        assert_eq!(sets(&rendered).len(), 1);
        let set = sets(&rendered)[0];
        assert_eq!(set.metadata.name, "threatfeed.feodo");
        assert_eq!(set.metadata.labels["security-action"], "block");
        assert_eq!(set.metadata.labels[MANAGED_BY_LABEL], "threatflow");
        assert_eq!(set.metadata.labels[FEED_LABEL], "feodo");
        assert_eq!(set.spec.nets, ["11.0.0.0/32", "11.0.0.2/32", "11.0.0.4/32"]);
        assert!(policy(&rendered).is_none());
    }

    #[test]
    fn large_feeds_are_sharded_within_both_limits() {
        let rendered = render(
            "big",
            &BTreeMap::new(),
            &crate::netset::spaced_v4(100_000),
            &settings(10_000),
        );
        let shards = sets(&rendered);
        assert!(shards.len() >= 10);
        assert_eq!(rendered.shards, shards.len());
        let total: usize = shards.iter().map(|set| set.spec.nets.len()).sum();
        assert_eq!(total, 100_000);
        for set in &shards {
            assert!(set.spec.nets.len() <= 10_000, "{}", set.spec.nets.len());
            assert!(serde_json::to_vec(set).unwrap().len() < 1_500_000);
        }
        assert_eq!(shards[0].metadata.name, "threatfeed.big");
        assert_eq!(shards[3].metadata.name, "threatfeed.big.3");

        // A byte budget too: a huge shard count setting still yields objects under 1.5 MiB.
        let huge = render(
            "huge",
            &BTreeMap::new(),
            &crate::netset::spaced_v4(100_000),
            &settings(1_000_000),
        );
        assert!(sets(&huge)
            .iter()
            .all(|set| serde_json::to_vec(set).unwrap().len() < 1_500_000));
    }

    #[test]
    fn a_small_change_touches_one_shard() {
        let before = render(
            "f",
            &BTreeMap::new(),
            &crate::netset::spaced_v4(50_000),
            &settings(10_000),
        );
        let mut ranges: Vec<(u32, u32)> = (0..50_000)
            .map(|i| (0x0b00_0000 + 2 * i, 0x0b00_0000 + 2 * i))
            .collect();
        let extra = u32::from(Ipv4Addr::new(9, 9, 9, 9));
        ranges.push((extra, extra));
        let after = render(
            "f",
            &BTreeMap::new(),
            &NetSet::from_ranges(ranges, vec![]),
            &settings(10_000),
        );
        assert_eq!(before.shards, after.shards);
        let changed = before
            .objects
            .iter()
            .zip(&after.objects)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, 1);
        // And the same input renders the same objects.
        assert_eq!(
            before,
            render(
                "f",
                &BTreeMap::new(),
                &crate::netset::spaced_v4(50_000),
                &settings(10_000)
            )
        );
    }

    #[test]
    fn deny_policy_selects_only_the_feeds_global_sets() {
        let settings = RenderSettings {
            policy: Some(PolicySettings {
                tier: "security".into(),
                order: 10.0,
                tier_order: 100.0,
            }),
            ..RenderSettings::default()
        };
        let rendered = render(
            "feodo",
            &BTreeMap::new(),
            &crate::netset::spaced_v4(1),
            &settings,
        );
        let policy = policy(&rendered).unwrap();
        assert_eq!(policy.metadata.name, "security.threatfeed-feodo");
        assert_eq!(policy.metadata.labels[MANAGED_BY_LABEL], "threatflow");
        assert_eq!(
            policy.spec.ingress[0]
                .source
                .as_ref()
                .unwrap()
                .selector
                .as_deref(),
            Some("threatflow.io/feed == 'feodo' && !has(projectcalico.org/namespace)")
        );
        assert_eq!(policy.spec.egress[0].action, calico::Action::Deny);
        assert_eq!(policy.spec.egress[1].action, calico::Action::Pass);
        let Object::Tier(tier) = tier(settings.policy.as_ref().unwrap()) else {
            panic!("a tier");
        };
        assert_eq!(
            (
                tier.metadata.name.as_str(),
                tier.spec.order,
                tier.spec.default_action
            ),
            ("security", Some(100.0), Some(calico::Action::Pass))
        );
    }

    #[test]
    fn an_empty_feed_renders_one_empty_set() {
        let rendered = render("empty", &BTreeMap::new(), &NetSet::default(), &settings(10));
        assert_eq!(sets(&rendered).len(), 1);
        assert!(sets(&rendered)[0].spec.nets.is_empty());
    }
}
