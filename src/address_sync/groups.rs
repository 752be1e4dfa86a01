//! What the groups hold now: each configured group's pods (or their nodes), and in
//! Calico-compatible mode one group per mirrored GlobalNetworkPolicy, computed from the
//! cluster model. Every target and the pull endpoint read the same [`Published`] snapshot.
//!
//! Selection is indexed: pods are indexed by label once per snapshot, and a selector that
//! requires some `key == 'value'` (or `key in {...}`) is evaluated only on the pods that have
//! it, so 500 groups over 10,000 pods cost little more than the pods they pick.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::config::{AddressKind, FirewallConfig, NameConfig};
use crate::cluster::model::{LabelList, Model, Pod};
use crate::cluster::Labels;
use crate::egress::EgressSnapshot;
use crate::firewall::selector::{NamespaceLabels, Selector};
use crate::firewall::{Family, GroupSpec};

use crate::k8s::calico::labels::{
    NAME as NAME_LABEL, NAMESPACE as NAMESPACE_LABEL, NAMESPACE_PREFIX,
    ORCHESTRATOR as ORCHESTRATOR_LABEL, TIER as TIER_LABEL,
};

/// One group as it is now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    pub families: Vec<Family>,
    /// Address object name -> address, by family.
    pub members: BTreeMap<Family, BTreeMap<String, IpNet>>,
}

/// Every group, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    pub groups: BTreeMap<String, Group>,
    /// What could not be published, with why: mirrored policies whose selector does not
    /// parse, and address names that would stand for two addresses (a template that does not
    /// tell two pods or nodes apart), which are left out of every group.
    pub skipped: BTreeMap<String, String>,
    /// The groups that are egress identities: every target gets them.
    pub egress: BTreeSet<String>,
}

impl Published {
    /// Whether a target that asks for `wanted` (all for `None`) gets group `name`.
    pub fn wanted(&self, name: &str, wanted: Option<&BTreeSet<String>>) -> bool {
        self.egress.contains(name) || wanted.is_none_or(|wanted| wanted.contains(name))
    }

    /// Adds each namespace's egress identity as a group `<prefix><namespace>` (IPv4 and IPv6
    /// apart, as every group; a family only where it has addresses), its addresses named
    /// `<cluster>.egress.<address>`. A configured
    /// group of the same name wins; the identity is reported as skipped.
    pub fn add_egress(&mut self, snapshot: &EgressSnapshot, prefix: &str, cluster: &str) {
        for (namespace, identity) in &snapshot.identities {
            let name = format!("{prefix}{namespace}");
            if self.groups.contains_key(&name) {
                self.skipped.insert(
                    name,
                    "a configured group has this egress identity's name".into(),
                );
                continue;
            }
            let mut group = Group::default();
            for net in &identity.nets {
                let (family, address) = match net {
                    IpNet::V4(_) => (Family::V4, net.addr().to_string()),
                    IpNet::V6(_) => (Family::V6, net.addr().to_string().replace(':', "-")),
                };
                let address = match net.prefix_len() == net.max_prefix_len() {
                    true => address,
                    false => format!("{address}_{}", net.prefix_len()),
                };
                group
                    .members
                    .entry(family)
                    .or_default()
                    .insert(format!("{cluster}.egress.{address}"), *net);
            }
            // A family the identity has no address in gets no group.
            group.families = group.members.keys().copied().collect();
            self.egress.insert(name.clone());
            self.groups.insert(name, group);
        }
    }

    /// The groups `wanted` names (all of them for `None`), as the specs a target publishes:
    /// one per family, IPv6 ones named with `.v6` appended.
    pub fn specs(&self, wanted: Option<&BTreeSet<String>>) -> Vec<GroupSpec> {
        let mut specs = Vec::new();
        for (name, group) in &self.groups {
            if !self.wanted(name, wanted) {
                continue;
            }
            for family in &group.families {
                specs.push(GroupSpec {
                    name: family_name(name, *family),
                    family: *family,
                    members: group.members.get(family).cloned().unwrap_or_default(),
                });
            }
        }
        specs
    }

    /// A group's addresses, one per line, IPv4 first: the pull endpoint's body.
    pub fn list(&self, name: &str) -> Option<String> {
        let group = self.groups.get(name)?;
        let mut text = String::new();
        for members in group.members.values() {
            let unique: BTreeSet<&IpNet> = members.values().collect();
            for net in unique {
                // A single address as itself; a range (an egress pool) as its CIDR.
                match net.prefix_len() == net.max_prefix_len() {
                    true => text.push_str(&net.addr().to_string()),
                    false => text.push_str(&net.to_string()),
                }
                text.push('\n');
            }
        }
        Some(text)
    }
}

/// A group's name in one family.
pub fn family_name(name: &str, family: Family) -> String {
    match family {
        Family::V4 => name.to_owned(),
        Family::V6 => format!("{name}.v6"),
    }
}

/// How one group picks its members.
#[derive(Clone, Debug)]
struct Definition {
    name: String,
    pods: Selector,
    namespaces: Option<Selector>,
    addresses: AddressKind,
    families: Vec<Family>,
}

/// The groups to compute, parsed once from the config.
#[derive(Clone, Debug)]
pub struct Groups {
    definitions: Vec<Definition>,
    mirror: Option<(Selector, AddressKind, Vec<Family>)>,
    /// The name templates with `{cluster}` filled in.
    names: NameConfig,
}

/// A pod's labels as Calico selectors see them: its own, its namespace's name and the
/// orchestrator, and its namespace's labels as `pcns.<key>`.
struct PodLabels<'a> {
    pod: &'a Pod,
    namespace: &'a LabelList,
}

impl Labels for PodLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            NAMESPACE_LABEL => Some(self.pod.namespace()),
            ORCHESTRATOR_LABEL => Some("k8s"),
            _ => match key.strip_prefix(NAMESPACE_PREFIX) {
                Some(key) => self.namespace.label(key),
                None => self.pod.label(key),
            },
        }
    }
}

/// A policy's labels with its tier and name.
struct PolicyLabels<'a> {
    policy: &'a crate::cluster::objects::PolicyInfo,
}

impl Labels for PolicyLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match self.policy.labels.get(key) {
            Some(value) => Some(value),
            None => match key {
                TIER_LABEL => Some(&self.policy.tier),
                NAME_LABEL => Some(&self.policy.name),
                _ => None,
            },
        }
    }
}

/// The pods of one snapshot, indexed by label.
struct Index<'a> {
    pods: Vec<(&'a Pod, &'a LabelList)>,
    /// `(key, value)` -> positions in `pods`.
    by_label: HashMap<(&'a str, &'a str), Vec<u32>>,
}

impl<'a> Index<'a> {
    fn new(model: &'a Model, empty: &'a LabelList) -> Index<'a> {
        let mut pods = Vec::new();
        let mut by_label: HashMap<(&str, &str), Vec<u32>> = HashMap::new();
        for pod in model.all_pods() {
            let namespace = model
                .namespace(pod.namespace())
                .map_or(empty, |namespace| &namespace.labels);
            let position = pods.len() as u32;
            pods.push((pod, namespace));
            for label in pod.labels().iter() {
                by_label.entry(label).or_default().push(position);
            }
            by_label
                .entry((NAMESPACE_LABEL, pod.namespace()))
                .or_default()
                .push(position);
        }
        Index { pods, by_label }
    }

    /// The pods `selector` picks, in namespaces `namespaces` allows (all for `None`).
    fn select(&self, selector: &Selector, namespaces: Option<&HashSet<&str>>) -> Vec<&'a Pod> {
        let pick = |position: usize| {
            let (pod, namespace) = self.pods[position];
            let allowed = namespaces.is_none_or(|allowed| allowed.contains(pod.namespace()));
            (allowed && selector.matches(&PodLabels { pod, namespace }, true)).then_some(pod)
        };
        let indexed = selector
            .required_label()
            .filter(|(key, _)| !key.starts_with(NAMESPACE_PREFIX) && *key != ORCHESTRATOR_LABEL);
        match indexed {
            Some((key, values)) => {
                let mut positions: Vec<u32> = values
                    .iter()
                    .filter_map(|value| self.by_label.get(&(key, *value)))
                    .flatten()
                    .copied()
                    .collect();
                if values.len() > 1 {
                    positions.sort_unstable();
                    positions.dedup();
                }
                positions
                    .into_iter()
                    .filter_map(|position| pick(position as usize))
                    .collect()
            }
            None => (0..self.pods.len()).filter_map(pick).collect(),
        }
    }
}

/// Leaves out of every group a name that stands for two different addresses, and says so.
/// (`ambiguous` holds those already found within one group.)
fn drop_ambiguous(published: &mut Published, mut ambiguous: Vec<(Family, String)>) {
    let mut seen: HashMap<(Family, &str), IpNet> = HashMap::new();
    for group in published.groups.values() {
        for (family, members) in &group.members {
            for (name, net) in members {
                match seen.insert((*family, name.as_str()), *net) {
                    Some(other) if other != *net => ambiguous.push((*family, name.clone())),
                    _ => {}
                }
            }
        }
    }
    for (family, name) in ambiguous {
        for group in published.groups.values_mut() {
            if let Some(members) = group.members.get_mut(&family) {
                members.remove(&name);
            }
        }
        published.skipped.insert(
            name,
            "the name stands for more than one address: make firewall.names tell them apart".into(),
        );
    }
}

/// The first address of `family` among `ips`, as a host prefix.
fn first_of(ips: &[IpAddr], family: Family) -> Option<IpNet> {
    ips.iter()
        .find(|ip| match family {
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        })
        .map(|ip| IpNet::from(*ip))
}

impl Groups {
    /// The groups of a validated config, for the cluster named `cluster`.
    pub fn new(config: &FirewallConfig, cluster: &str) -> Groups {
        let parse =
            |text: &str| Selector::parse(text).unwrap_or(Selector::Not(Box::new(Selector::All)));
        Groups {
            definitions: config
                .groups
                .iter()
                .map(|group| Definition {
                    name: group.name.clone(),
                    pods: parse(&group.selector),
                    namespaces: group.namespace_selector.as_deref().map(parse),
                    addresses: group.addresses,
                    families: group.families.clone(),
                })
                .collect(),
            mirror: config.mirror_policies.as_ref().map(|mirror| {
                (
                    parse(&mirror.selector),
                    mirror.addresses,
                    mirror.families.clone(),
                )
            }),
            names: config.names.for_cluster(cluster),
        }
    }

    /// Whether Calico policies must be watched.
    pub fn mirrors_policies(&self) -> bool {
        self.mirror.is_some()
    }

    /// Every group's members in `model` now.
    pub fn compute(&self, model: &Model) -> Published {
        let empty = LabelList::default();
        let index = Index::new(model, &empty);
        let mut published = Published::default();
        let mut definitions: Vec<Definition> = self.definitions.clone();
        if let Some((selector, addresses, families)) = &self.mirror {
            for policy in model.policies() {
                if !selector.matches(&PolicyLabels { policy }, false) {
                    continue;
                }
                if self
                    .definitions
                    .iter()
                    .any(|group| group.name == policy.name)
                {
                    published.skipped.insert(
                        policy.name.clone(),
                        "a configured group has this name".into(),
                    );
                    continue;
                }
                let namespaces = match policy.namespace_selector.trim() {
                    "" => Ok(None),
                    text => Selector::parse(text).map(Some),
                };
                match (Selector::parse(&policy.selector), namespaces) {
                    (Ok(pods), Ok(namespaces)) => definitions.push(Definition {
                        name: policy.name.clone(),
                        pods,
                        namespaces,
                        addresses: *addresses,
                        families: families.clone(),
                    }),
                    (Err(error), _) | (_, Err(error)) => {
                        published
                            .skipped
                            .insert(policy.name.clone(), error.to_string());
                    }
                }
            }
        }
        let mut ambiguous = Vec::new();
        for definition in &definitions {
            let namespaces: Option<HashSet<&str>> =
                definition.namespaces.as_ref().map(|selector| {
                    model
                        .namespaces()
                        .filter(|(name, namespace)| {
                            selector.matches(
                                &NamespaceLabels {
                                    name,
                                    labels: &namespace.labels,
                                },
                                false,
                            )
                        })
                        .map(|(name, _)| name)
                        .collect()
                });
            let mut group = Group {
                families: definition.families.clone(),
                members: BTreeMap::new(),
            };
            for pod in index.select(&definition.pods, namespaces.as_ref()) {
                for family in &definition.families {
                    if let Some((name, net)) =
                        self.member(model, pod, definition.addresses, *family)
                    {
                        let members = group.members.entry(*family).or_default();
                        if members.get(&name).is_some_and(|other| *other != net) {
                            ambiguous.push((*family, name.clone()));
                        }
                        members.insert(name, net);
                    }
                }
            }
            published.groups.insert(definition.name.clone(), group);
        }
        drop_ambiguous(&mut published, ambiguous);
        published
    }

    /// The address that stands for `pod` in `family`: the pod's own, or its node's.
    fn member(
        &self,
        model: &Model,
        pod: &Pod,
        kind: AddressKind,
        family: Family,
    ) -> Option<(String, IpNet)> {
        let suffix = match family {
            Family::V4 => "",
            Family::V6 => ".v6",
        };
        match kind {
            AddressKind::Pod => {
                let net = first_of(pod.ips(), family)?;
                let name = self
                    .names
                    .pod
                    .replace("{namespace}", pod.namespace())
                    .replace("{pod}", pod.name());
                Some((name + suffix, net))
            }
            AddressKind::Node => {
                let node = model.node(pod.node()?)?;
                // A finished pod no longer puts its node in the group.
                if pod.ips().is_empty() && !pod.host_network() {
                    return None;
                }
                let net = first_of(&node.internal_ips, family)?;
                Some((self.names.node.replace("{node}", &node.name) + suffix, net))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::objects::{Inventory, NamespaceInfo, NodeInfo, PodInfo, PolicyInfo};

    fn pod(name: &str, namespace: &str, labels: &[(&str, &str)], ips: &[&str]) -> PodInfo {
        PodInfo {
            uid: format!("uid-{namespace}-{name}"),
            name: name.into(),
            namespace: namespace.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node: Some("node-a".into()),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            ..PodInfo::default()
        }
    }

    fn model() -> Model {
        let inventory = Inventory {
            pods: vec![
                pod("web-1", "shop", &[("app", "web")], &["10.0.0.1", "fd00::1"]),
                pod("web-2", "shop", &[("app", "web")], &["10.0.0.2"]),
                pod("api-1", "shop", &[("app", "api")], &["10.0.0.3"]),
                pod("web-1", "dev", &[("app", "web")], &["10.0.1.1"]),
                pod("done", "shop", &[("app", "web")], &[]),
            ],
            namespaces: vec![
                NamespaceInfo {
                    name: "shop".into(),
                    labels: [("env".to_owned(), "prod".to_owned())].into(),
                    annotations: Default::default(),
                },
                NamespaceInfo {
                    name: "dev".into(),
                    labels: [("env".to_owned(), "dev".to_owned())].into(),
                    annotations: Default::default(),
                },
            ],
            nodes: vec![NodeInfo {
                name: "node-a".into(),
                internal_ips: vec!["192.168.0.10".parse().unwrap()],
                ..NodeInfo::default()
            }],
            policies: vec![
                PolicyInfo {
                    name: "default.web".into(),
                    tier: "default".into(),
                    selector: "app == 'web' && pcns.env == 'prod'".into(),
                    ..PolicyInfo::default()
                },
                PolicyInfo {
                    name: "security.block".into(),
                    tier: "security".into(),
                    selector: "all()".into(),
                    ..PolicyInfo::default()
                },
                PolicyInfo {
                    name: "default.dev-web".into(),
                    tier: "default".into(),
                    selector: "app == 'web'".into(),
                    namespace_selector: "env == 'dev'".into(),
                    ..PolicyInfo::default()
                },
                PolicyInfo {
                    name: "default.broken".into(),
                    tier: "default".into(),
                    selector: "app = 'x'".into(),
                    ..PolicyInfo::default()
                },
            ],
            ..Inventory::default()
        };
        Model::from_inventory(&inventory, Vec::new())
    }

    fn config(yaml: &str) -> FirewallConfig {
        yaml_serde::from_str(yaml).unwrap()
    }

    fn names(published: &Published, group: &str, family: Family) -> Vec<String> {
        published.groups[group]
            .members
            .get(&family)
            .map(|members| members.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn groups_pick_pods_by_labels_namespaces_and_pseudo_labels() {
        let groups = Groups::new(
            &config(
                r#"
groups:
  - {name: web, selector: "app == 'web'", families: [ipv4, ipv6]}
  - {name: prod-web, selector: "app == 'web'", namespace_selector: "env == 'prod'"}
  - {name: shop, selector: "projectcalico.org/namespace == 'shop' && !has(nothing)"}
  - {name: nodes, selector: "app == 'api'", addresses: node}
  - {name: none, selector: "app == 'absent'"}
"#,
            ),
            "k8s",
        );
        let published = groups.compute(&model());
        assert_eq!(
            names(&published, "web", Family::V4),
            ["k8s.dev.web-1", "k8s.shop.web-1", "k8s.shop.web-2"]
        );
        assert_eq!(names(&published, "web", Family::V6), ["k8s.shop.web-1.v6"]);
        assert_eq!(
            names(&published, "prod-web", Family::V4),
            ["k8s.shop.web-1", "k8s.shop.web-2"]
        );
        assert_eq!(
            names(&published, "shop", Family::V4),
            ["k8s.shop.api-1", "k8s.shop.web-1", "k8s.shop.web-2"]
        );
        assert_eq!(names(&published, "nodes", Family::V4), ["k8s.node.node-a"]);
        assert!(names(&published, "none", Family::V4).is_empty());
        assert_eq!(
            published.list("web").unwrap(),
            "10.0.0.1\n10.0.0.2\n10.0.1.1\nfd00::1\n"
        );
        let specs = published.specs(Some(&BTreeSet::from(["web".to_owned()])));
        let spec_names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
        assert_eq!(spec_names, ["web", "web.v6"]);
    }

    #[test]
    fn mirrored_policies_become_groups_named_after_them() {
        let groups = Groups::new(&config("mirror_policies: {}\n"), "k8s");
        assert!(groups.mirrors_policies());
        let published = groups.compute(&model());
        assert_eq!(
            published.groups.keys().collect::<Vec<_>>(),
            ["default.dev-web", "default.web"]
        );
        assert_eq!(
            names(&published, "default.dev-web", Family::V4),
            ["k8s.dev.web-1"]
        );
        assert_eq!(
            names(&published, "default.web", Family::V4),
            ["k8s.shop.web-1", "k8s.shop.web-2"]
        );
        assert!(published.skipped["default.broken"].contains("not a Calico selector"));
    }

    #[test]
    fn egress_identities_are_groups_every_target_gets_with_ranges_listed_as_cidrs() {
        let mut snapshot = EgressSnapshot::default();
        snapshot.identities.insert(
            "payments".into(),
            crate::egress::Published {
                nets: ["192.0.2.10/32", "198.51.100.0/28"]
                    .iter()
                    .map(|net| net.parse().unwrap())
                    .collect(),
                ..Default::default()
            },
        );
        let mut published = Published::default();
        published.add_egress(&snapshot, "egress.", "prod");
        assert_eq!(
            published.list("egress.payments").unwrap(),
            "192.0.2.10\n198.51.100.0/28\n"
        );
        let wanted: BTreeSet<String> = ["web".to_owned()].into();
        let specs = published.specs(Some(&wanted));
        assert_eq!(specs.len(), 1, "IPv4 only: no empty .v6 group");
        assert_eq!(specs[0].name, "egress.payments");
        assert_eq!(
            specs[0].members.keys().collect::<Vec<_>>(),
            ["prod.egress.192.0.2.10", "prod.egress.198.51.100.0_28"]
        );
    }

    #[test]
    fn a_name_that_stands_for_two_addresses_is_left_out_and_reported() {
        let mut config = config("groups: [{name: web, selector: \"app == 'web'\"}]\n");
        config.names.pod = "{cluster}.{pod}".into();
        let published = Groups::new(&config, "k8s").compute(&model());
        // web-1 is in shop (10.0.0.1) and in dev (10.0.1.1).
        assert_eq!(names(&published, "web", Family::V4), ["k8s.web-2"]);
        assert!(published.skipped["k8s.web-1"].contains("more than one address"));
    }
}
