//! Rendering a normalized feed as Calico objects: sharded `GlobalNetworkSet`s and an optional
//! deny `GlobalNetworkPolicy`.
//!
//! Pure. Nets are spread over shards by a stable hash of each CIDR, so adding or removing a few
//! addresses changes only the shards they fall in; the shard count only changes when the feed
//! grows or shrinks past a power-of-two step. Every shard stays under both the configured net
//! count and a byte budget well inside etcd's 1.5 MiB request limit. The first shard is named
//! `threatfeed.<feed>` (the name Calico Enterprise uses), further ones `threatfeed.<feed>.<n>`.
//! Every object carries the feed's labels plus the ownership labels.

use std::collections::BTreeMap;

use crate::k8s::{
    EntityRule, GlobalNetworkPolicy, GlobalNetworkPolicySpec, GlobalNetworkSet,
    GlobalNetworkSetSpec, ObjectMeta, Rule, CALICO_API_VERSION, CONTENT_HASH_ANNOTATION,
    FEED_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
};

use crate::netset::NetSet;

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
    pub order: f64,
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

/// The objects of one feed.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub sets: Vec<GlobalNetworkSet>,
    pub policy: Option<GlobalNetworkPolicy>,
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

    let mut object_labels = labels.clone();
    object_labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    object_labels.insert(FEED_LABEL.into(), feed.into());
    let sets = assigned
        .into_iter()
        .enumerate()
        .map(|(index, nets)| {
            let nets: Vec<String> = nets.into_iter().map(str::to_owned).collect();
            let hash = format!("{:016x}", fnv1a(nets.join("\n").as_bytes()));
            GlobalNetworkSet {
                api_version: CALICO_API_VERSION.into(),
                kind: "GlobalNetworkSet".into(),
                metadata: ObjectMeta {
                    name: set_name(&settings.name_prefix, feed, index),
                    labels: object_labels.clone(),
                    annotations: [(CONTENT_HASH_ANNOTATION.to_owned(), hash)].into(),
                },
                spec: GlobalNetworkSetSpec { nets },
            }
        })
        .collect();
    let policy = settings.policy.as_ref().map(|policy| {
        let mut policy = deny_policy(feed, &settings.name_prefix, policy);
        let spec = serde_json::to_vec(&policy.spec).expect("a policy serializes");
        policy.metadata.annotations.insert(
            CONTENT_HASH_ANNOTATION.to_owned(),
            format!("{:016x}", fnv1a(&spec)),
        );
        policy
    });
    Rendered { sets, policy }
}

/// `threatfeed.<feed>` for the first shard, `threatfeed.<feed>.<n>` after it.
pub fn set_name(prefix: &str, feed: &str, shard: usize) -> String {
    match shard {
        0 => format!("{prefix}{feed}"),
        n => format!("{prefix}{feed}.{n}"),
    }
}

/// Denies traffic to and from the feed's sets, and passes everything else on to later tiers.
/// The selector matches only global network sets (`!has(projectcalico.org/namespace)`), never
/// pods that happen to carry the same label. Feed names are validated to `[a-z0-9-]`, so they
/// cannot change the selector's meaning.
fn deny_policy(feed: &str, prefix: &str, settings: &PolicySettings) -> GlobalNetworkPolicy {
    let selector = format!("{FEED_LABEL} == '{feed}' && !has(projectcalico.org/namespace)");
    let rule = |source: bool| Rule {
        action: "Deny".into(),
        source: source.then(|| EntityRule {
            selector: selector.clone(),
        }),
        destination: (!source).then(|| EntityRule {
            selector: selector.clone(),
        }),
    };
    let pass = Rule {
        action: "Pass".into(),
        source: None,
        destination: None,
    };
    GlobalNetworkPolicy {
        api_version: CALICO_API_VERSION.into(),
        kind: "GlobalNetworkPolicy".into(),
        metadata: ObjectMeta {
            name: format!("{}.{}{feed}", settings.tier, prefix.replace('.', "-")),
            labels: [
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (FEED_LABEL.to_owned(), feed.to_owned()),
            ]
            .into(),
            annotations: BTreeMap::new(),
        },
        spec: GlobalNetworkPolicySpec {
            tier: settings.tier.clone(),
            order: settings.order,
            selector: "all()".into(),
            types: vec!["Ingress".into(), "Egress".into()],
            ingress: vec![rule(true), pass.clone()],
            egress: vec![rule(false), pass],
        },
    }
}

/// FNV-1a: a stable hash (the same on every version and platform), for shard placement and
/// content hashes.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

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
        assert_eq!(rendered.sets.len(), 1);
        let set = &rendered.sets[0];
        assert_eq!(set.metadata.name, "threatfeed.feodo");
        assert_eq!(set.metadata.labels["security-action"], "block");
        assert_eq!(set.metadata.labels[MANAGED_BY_LABEL], "threatflow");
        assert_eq!(set.metadata.labels[FEED_LABEL], "feodo");
        assert_eq!(set.spec.nets, ["11.0.0.0/32", "11.0.0.2/32", "11.0.0.4/32"]);
        assert!(rendered.policy.is_none());
    }

    #[test]
    fn large_feeds_are_sharded_within_both_limits() {
        let rendered = render(
            "big",
            &BTreeMap::new(),
            &crate::netset::spaced_v4(100_000),
            &settings(10_000),
        );
        assert!(rendered.sets.len() >= 10);
        let total: usize = rendered.sets.iter().map(|set| set.spec.nets.len()).sum();
        assert_eq!(total, 100_000);
        for set in &rendered.sets {
            assert!(set.spec.nets.len() <= 10_000, "{}", set.spec.nets.len());
            assert!(serde_json::to_vec(set).unwrap().len() < 1_500_000);
        }
        assert_eq!(rendered.sets[0].metadata.name, "threatfeed.big");
        assert_eq!(rendered.sets[3].metadata.name, "threatfeed.big.3");

        // A byte budget too: a huge shard count setting still yields objects under 1.5 MiB.
        let huge = render(
            "huge",
            &BTreeMap::new(),
            &crate::netset::spaced_v4(100_000),
            &settings(1_000_000),
        );
        assert!(huge
            .sets
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
        assert_eq!(before.sets.len(), after.sets.len());
        let changed = before
            .sets
            .iter()
            .zip(&after.sets)
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
            }),
            ..RenderSettings::default()
        };
        let policy = render(
            "feodo",
            &BTreeMap::new(),
            &crate::netset::spaced_v4(1),
            &settings,
        )
        .policy
        .unwrap();
        assert_eq!(policy.metadata.name, "security.threatfeed-feodo");
        assert_eq!(
            policy.spec.ingress[0].source.as_ref().unwrap().selector,
            "threatflow.io/feed == 'feodo' && !has(projectcalico.org/namespace)"
        );
        assert_eq!(policy.spec.egress[0].action, "Deny");
        assert_eq!(policy.spec.egress[1].action, "Pass");
    }

    #[test]
    fn an_empty_feed_renders_one_empty_set() {
        let rendered = render("empty", &BTreeMap::new(), &NetSet::default(), &settings(10));
        assert_eq!(rendered.sets.len(), 1);
        assert!(rendered.sets[0].spec.nets.is_empty());
    }
}
