//! The translator: a firewall [`Rulebase`] into Calico policy in one tier. Pure and
//! deterministic: the same rulebase and settings always give byte-identical objects.
//!
//! # What the cluster looks like to the rules
//!
//! A pod's zone is the zone label on the pod, else on its namespace (`pcns.<label>` to Calico);
//! a pod without one is outside firewall control and no generated policy selects it. A pod is
//! in the address group named by the group label on the pod and the one on its namespace, and
//! so in every group that nests those. Zones named in `external_zones` are outside the cluster
//! and matched by IP; an address object matches by IP, pods included.
//!
//! # How a rule becomes policy
//!
//! The firewall decides a flow once, with the first rule that matches. Calico decides it twice:
//! the source pod's egress policies, and the destination pod's ingress policies, each in the
//! tier's order. So each rule at position `p` (from 1) becomes up to two policies of order `10p`:
//! an egress policy selecting the pods of its source zones, whose rules match the rule's
//! sources and destinations and services exactly, and an ingress policy selecting the pods of
//! its destination zones, likewise. A flow between two zoned pods then meets, on each side,
//! the same rules in the same order, and the first that matches is the firewall's. After the
//! rules come the rulebase's defaults: with an intrazone default different from the
//! interzone one, a policy per zone allowing (or denying) traffic within it; then one policy
//! selecting every zoned pod in both directions with the interzone default, so nothing a zoned
//! pod does falls through the tier. The tier's own default action is the interzone default.
//!
//! Several addresses on one side are alternatives (OR), as on the firewall: a pod selector for
//! the groups, and `nets` (per family) for IP objects, intersected with external zones' nets
//! where a rule names external zones. Services become one Calico rule per protocol entry.
//! `negate-source`/`negate-destination` become `notSelector`/`notNets` where that is exact.
//! Whatever cannot be said exactly (FQDN sources, a deny to an FQDN, unknown objects, names no
//! selector can quote, what the reader marked unsupported) refuses the rule, reported with
//! its reason; it is never narrowed or widened.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use crate::firewall::rules::{AddressKind, PortProtocol, Rule, Rulebase, ServiceEntry, Verdict};
use crate::firewall::selector::Selector;
use crate::k8s::apply::Object;
use crate::k8s::calico::{
    self, labels, Action, EntityRule, GlobalNetworkPolicy, GlobalNetworkSet, GlobalNetworkSetSpec,
    Icmp, ObjectMeta, PolicySpec, PolicyType, Port, Protocol, StagedGlobalNetworkPolicy, Tier,
};
use crate::netset::NetSet;

/// Annotations on every generated object.
pub const RULE_ANNOTATION: &str = "firewall.threatflow.io/rule";
pub const ORIGIN_ANNOTATION: &str = "firewall.threatflow.io/origin";
pub const POSITION_ANNOTATION: &str = "firewall.threatflow.io/position";
pub const COMMENT_ANNOTATION: &str = "firewall.threatflow.io/comment";
/// The label on the network sets of FQDN objects.
pub const ADDRESS_LABEL: &str = "firewall.threatflow.io/address";

/// How rules are translated.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub tier: String,
    pub tier_order: f64,
    /// Write `StagedGlobalNetworkPolicy` objects (recorded, not enforced).
    pub staged: bool,
    /// The label naming a pod's (or namespace's) zone.
    pub zone_label: String,
    /// The label naming a pod's (or namespace's) address group.
    pub group_label: String,
    /// Zones outside the cluster, by their networks.
    pub external_zones: BTreeMap<String, Vec<IpNet>>,
    /// FQDN destinations as GlobalNetworkSets with `allowedEgressDomains` (Calico
    /// Enterprise); without it, rules with FQDN addresses are refused.
    pub domain_rules: bool,
    /// Cluster zones besides those the rulebase names (a Panorama rulebase knows only the
    /// zones its rules use): each gets the rulebase's intrazone default.
    pub zones: BTreeSet<String>,
}

/// The default label naming a pod's (or namespace's) zone.
pub const DEFAULT_ZONE_LABEL: &str = "firewall.threatflow.io/zone";
/// The default label naming a pod's (or namespace's) address group.
pub const DEFAULT_GROUP_LABEL: &str = "firewall.threatflow.io/address-group";
/// The default tier order: before Calico's `default` tier, after tiers ordered below 100.
pub const DEFAULT_TIER_ORDER: f64 = 100.0;

impl Settings {
    /// Enforced policy in `tier`, the default labels, no external zones.
    pub fn new(tier: impl Into<String>) -> Settings {
        Settings {
            tier: tier.into(),
            tier_order: DEFAULT_TIER_ORDER,
            staged: false,
            zone_label: DEFAULT_ZONE_LABEL.to_owned(),
            group_label: DEFAULT_GROUP_LABEL.to_owned(),
            external_zones: BTreeMap::new(),
            domain_rules: false,
            zones: BTreeSet::new(),
        }
    }
}

/// A rule that was not translated.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// Its position in the rulebase, from 1.
    pub position: usize,
    pub name: String,
    pub verdict: Verdict,
    pub reason: String,
}

/// What the translator made.
#[derive(Clone, Debug, PartialEq)]
pub struct Translation {
    pub tier: Object,
    /// Policies (or staged policies) and network sets, in a stable order.
    pub objects: Vec<Object>,
    /// Enabled rules translated.
    pub translated: usize,
    /// Disabled rules, left out as the firewall leaves them out.
    pub disabled: usize,
    /// Enabled rules refused, with why.
    pub skipped: Vec<Skipped>,
}

impl Translation {
    /// Refused deny rules: skipping one lets through what the firewall stops.
    pub fn skipped_denies(&self) -> impl Iterator<Item = &Skipped> {
        self.skipped
            .iter()
            .filter(|skipped| skipped.verdict == Verdict::Deny)
    }
}

/// What one side of a rule matches.
#[derive(Clone, Debug, Default)]
struct Side {
    any: bool,
    /// Group label values: the groups named and every group nested in them.
    groups: BTreeSet<String>,
    nets: NetSet,
    fqdns: BTreeSet<String>,
}

/// One way a side matches (alternatives are ORed).
#[derive(Clone, Debug, PartialEq)]
struct Match {
    selector: Option<Selector>,
    not_selector: Option<Selector>,
    nets: Vec<IpNet>,
    not_nets: Vec<IpNet>,
    /// 4 or 6 when `nets` or `not_nets` are of one family.
    family: Option<u8>,
    /// An FQDN set's label value (egress destinations only).
    domain_set: Option<String>,
}

impl Match {
    fn everything() -> Match {
        Match {
            selector: None,
            not_selector: None,
            nets: Vec::new(),
            not_nets: Vec::new(),
            family: None,
            domain_set: None,
        }
    }

    fn entity(&self, ports: Vec<Port>) -> Option<EntityRule> {
        let selector = match (&self.selector, &self.domain_set) {
            (_, Some(value)) => Some(Selector::Equal(ADDRESS_LABEL.into(), value.clone())),
            (selector, None) => selector.clone(),
        };
        let entity = EntityRule {
            nets: self.nets.iter().map(ToString::to_string).collect(),
            not_nets: self.not_nets.iter().map(ToString::to_string).collect(),
            selector: selector.map(|selector| selector.to_string()),
            not_selector: self.not_selector.as_ref().map(ToString::to_string),
            ports,
            ..EntityRule::default()
        };
        (entity != EntityRule::default()).then_some(entity)
    }
}

/// Names and selectors over the configured labels.
struct Labels<'a> {
    settings: &'a Settings,
}

impl Labels<'_> {
    fn namespace_key(&self, key: &str) -> String {
        format!("{}{key}", labels::NAMESPACE_PREFIX)
    }

    /// Pods whose zone (their own label, else their namespace's) is one of `zones`.
    fn in_zones(&self, zones: &BTreeSet<String>) -> Selector {
        let key = &self.settings.zone_label;
        let values: Vec<String> = zones.iter().cloned().collect();
        Selector::Or(
            Box::new(Selector::In(key.clone(), values.clone())),
            Box::new(Selector::And(
                Box::new(Selector::Not(Box::new(Selector::Has(key.clone())))),
                Box::new(Selector::In(self.namespace_key(key), values)),
            )),
        )
    }

    /// Pods with a zone.
    fn zoned(&self) -> Selector {
        let key = &self.settings.zone_label;
        Selector::Or(
            Box::new(Selector::Has(key.clone())),
            Box::new(Selector::Has(self.namespace_key(key))),
        )
    }

    /// Pods in one of `groups` (by their own label or their namespace's).
    fn in_groups(&self, groups: &BTreeSet<String>) -> Selector {
        let key = &self.settings.group_label;
        let values: Vec<String> = groups.iter().cloned().collect();
        Selector::Or(
            Box::new(Selector::In(key.clone(), values.clone())),
            Box::new(Selector::In(self.namespace_key(key), values)),
        )
    }
}

/// Every pod (Calico gives each workload its namespace as a label): what an external zone,
/// matched by IP, never holds, whatever its networks.
fn pods() -> Selector {
    Selector::Has(labels::NAMESPACE.to_owned())
}

fn and(left: Option<Selector>, right: Selector) -> Selector {
    match left {
        Some(left) => Selector::And(Box::new(left), Box::new(right)),
        None => right,
    }
}

/// Port entries of one protocol and the same source ports as one entry (one Calico rule lists
/// them all); the rest as they are.
fn merge_ports(entries: BTreeSet<ServiceEntry>) -> Vec<ServiceEntry> {
    type Range = (u16, u16);
    let mut ports: BTreeMap<(PortProtocol, Vec<Range>), BTreeSet<Range>> = BTreeMap::new();
    let mut merged = Vec::new();
    for entry in entries {
        match entry {
            ServiceEntry::Ports {
                protocol,
                destination,
                source,
            } => ports
                .entry((protocol, source))
                .or_default()
                .extend(destination),
            other => merged.push(other),
        }
    }
    merged.extend(
        ports
            .into_iter()
            .map(|((protocol, source), destination)| ServiceEntry::Ports {
                protocol,
                destination: destination.into_iter().collect(),
                source,
            }),
    );
    merged.sort();
    merged
}

/// Whether a value can be written in a Calico selector (in one kind of quotes).
fn quotable(value: &str) -> bool {
    !(value.contains('\'') && value.contains('"'))
}

/// A name as a Kubernetes object name part: lower-case letters, digits and `-`.
fn slug(text: &str, max: usize) -> String {
    let mut slug = String::new();
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= max {
            break;
        }
    }
    let slug = slug.trim_matches('-').to_owned();
    if slug.is_empty() {
        "x".to_owned()
    } else {
        slug
    }
}

fn split_families(nets: &NetSet) -> Vec<(u8, Vec<IpNet>)> {
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = nets.cidrs().partition(|net| net.addr().is_ipv4());
    [(4, v4), (6, v6)]
        .into_iter()
        .filter(|(_, nets)| !nets.is_empty())
        .collect()
}

/// The zones of one side: cluster zones, external zones' networks, or any.
struct Zones {
    any: bool,
    cluster: BTreeSet<String>,
    external: NetSet,
}

struct Translator<'a> {
    rulebase: &'a Rulebase,
    settings: &'a Settings,
    labels: Labels<'a>,
    /// FQDN objects used by translated rules: label value -> domain.
    domains: BTreeMap<String, String>,
}

impl<'a> Translator<'a> {
    fn zones(&self, names: &[String]) -> Result<Zones, String> {
        if names.is_empty() {
            return Ok(Zones {
                any: true,
                cluster: BTreeSet::new(),
                external: NetSet::default(),
            });
        }
        let mut zones = Zones {
            any: false,
            cluster: BTreeSet::new(),
            external: NetSet::default(),
        };
        for name in names {
            match self.settings.external_zones.get(name) {
                Some(nets) => zones.external = zones.external.union(&NetSet::from_nets(nets)),
                None if quotable(name) => {
                    zones.cluster.insert(name.clone());
                }
                None => return Err(format!("zone `{name}` cannot be written in a selector")),
            }
        }
        Ok(zones)
    }

    /// What the addresses `names` match (empty is any).
    fn side(&self, names: &[String]) -> Result<Side, String> {
        let mut side = Side {
            any: names.is_empty(),
            ..Side::default()
        };
        let mut seen = BTreeSet::new();
        for name in names {
            self.add(name, &mut side, &mut seen)?;
        }
        Ok(side)
    }

    fn add(&self, name: &str, side: &mut Side, seen: &mut BTreeSet<String>) -> Result<(), String> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        if let Some(address) = self.rulebase.addresses.get(name) {
            match &address.kind {
                AddressKind::Nets(nets) => side.nets = side.nets.union(&NetSet::from_nets(nets)),
                AddressKind::Fqdn(domain) => {
                    side.fqdns.insert(domain.clone());
                }
                AddressKind::Unsupported(reason) => {
                    return Err(format!("address `{name}`: {reason}"))
                }
            }
            return Ok(());
        }
        let Some(group) = self.rulebase.groups.get(name) else {
            return Err(format!(
                "`{name}` is neither an address nor a group of the rulebase"
            ));
        };
        if !quotable(name) {
            return Err(format!("group `{name}` cannot be written in a selector"));
        }
        side.groups.insert(name.to_owned());
        for member in &group.members {
            self.add(member, side, seen)?;
        }
        if let Some(filter) = &group.filter {
            let matching: Vec<&String> = self
                .rulebase
                .addresses
                .iter()
                .filter(|(_, address)| filter.matches(&address.tags))
                .map(|(name, _)| name)
                .collect();
            for member in matching {
                self.add(member, side, seen)?;
            }
        }
        Ok(())
    }

    /// The alternatives one side matches. `pods_only`: the side is the local pod of a policy
    /// (already selected by zone), so external alternatives cannot apply.
    fn matches(
        &mut self,
        zones: &Zones,
        side: &Side,
        negate: bool,
        pods_only: bool,
    ) -> Result<Vec<Match>, String> {
        let zone_selector =
            (!zones.any && !zones.cluster.is_empty()).then(|| self.labels.in_zones(&zones.cluster));
        let cluster = zones.any || !zones.cluster.is_empty();
        let external = zones.any || !zones.external.is_empty();
        let mut alternatives = Vec::new();
        if negate {
            if !side.fqdns.is_empty() {
                return Err("a negated side holds an FQDN address".into());
            }
            let not_selector =
                (!side.groups.is_empty()).then(|| self.labels.in_groups(&side.groups));
            let not_nets: Vec<IpNet> = side.nets.cidrs().collect();
            if not_nets.iter().any(|net| net.addr().is_ipv4())
                && not_nets.iter().any(|net| net.addr().is_ipv6())
            {
                return Err("a negated side mixes IPv4 and IPv6 networks".into());
            }
            let family = not_nets
                .first()
                .map(|net| if net.addr().is_ipv4() { 4 } else { 6 });
            // Networks of one family: traffic of the other family is outside them all.
            let other = family.map(|family| if family == 4 { 6 } else { 4 });
            if zones.any {
                alternatives.push(Match {
                    not_selector: not_selector.clone(),
                    not_nets,
                    family,
                    ..Match::everything()
                });
                if let Some(other) = other {
                    alternatives.push(Match {
                        not_selector,
                        family: Some(other),
                        ..Match::everything()
                    });
                }
                return Ok(alternatives);
            }
            if cluster {
                alternatives.push(Match {
                    selector: zone_selector.clone(),
                    not_selector: not_selector.clone(),
                    not_nets: not_nets.clone(),
                    family,
                    ..Match::everything()
                });
                if let Some(other) = other {
                    alternatives.push(Match {
                        selector: zone_selector.clone(),
                        not_selector: not_selector.clone(),
                        family: Some(other),
                        ..Match::everything()
                    });
                }
            }
            if external && !pods_only {
                for (version, nets) in split_families(&zones.external) {
                    if family.is_some_and(|family| family != version) {
                        // Not in the negated set at all: the whole zone matches.
                        alternatives.push(Match {
                            nets,
                            not_selector: Some(pods()),
                            family: Some(version),
                            ..Match::everything()
                        });
                        continue;
                    }
                    alternatives.push(Match {
                        nets,
                        not_nets: not_nets.clone(),
                        not_selector: Some(pods()),
                        family: Some(version),
                        ..Match::everything()
                    });
                }
            }
            return Ok(alternatives);
        }
        if side.any {
            if zones.any {
                return Ok(vec![Match::everything()]);
            }
            if cluster {
                alternatives.push(Match {
                    selector: zone_selector.clone(),
                    ..Match::everything()
                });
            }
            if external && !pods_only {
                for (version, nets) in split_families(&zones.external) {
                    alternatives.push(Match {
                        nets,
                        not_selector: Some(pods()),
                        family: Some(version),
                        ..Match::everything()
                    });
                }
            }
            return Ok(alternatives);
        }
        if cluster && !side.groups.is_empty() {
            alternatives.push(Match {
                selector: Some(and(
                    zone_selector.clone(),
                    self.labels.in_groups(&side.groups),
                )),
                ..Match::everything()
            });
        }
        if !side.nets.is_empty() {
            // Pods by IP within the cluster zones; anything by IP with any zone.
            if zones.any {
                for (version, nets) in split_families(&side.nets) {
                    alternatives.push(Match {
                        nets,
                        family: Some(version),
                        ..Match::everything()
                    });
                }
            } else {
                if cluster {
                    for (version, nets) in split_families(&side.nets) {
                        alternatives.push(Match {
                            selector: zone_selector.clone(),
                            nets,
                            family: Some(version),
                            ..Match::everything()
                        });
                    }
                }
                if external && !pods_only {
                    let within = side.nets.intersect(&zones.external);
                    for (version, nets) in split_families(&within) {
                        alternatives.push(Match {
                            nets,
                            not_selector: Some(pods()),
                            family: Some(version),
                            ..Match::everything()
                        });
                    }
                }
            }
        }
        if !side.fqdns.is_empty() && !pods_only {
            if !self.settings.domain_rules {
                return Err("an FQDN address: domain-based policy is Calico Enterprise's (set domain_rules to use it)".into());
            }
            for domain in &side.fqdns {
                // The hash keeps domains that slug alike (`a.b` and `a-b`) apart.
                let hash = crate::k8s::apply::fnv1a(domain.as_bytes()) as u32;
                let value = format!("{}-{hash:08x}", slug(domain, 54));
                self.domains.insert(value.clone(), domain.clone());
                alternatives.push(Match {
                    domain_set: Some(value),
                    ..Match::everything()
                });
            }
        }
        Ok(alternatives)
    }

    /// The service entries of `names` (empty is any).
    fn services(&self, names: &[String]) -> Result<Vec<ServiceEntry>, String> {
        if names.is_empty() {
            return Ok(vec![ServiceEntry::Any]);
        }
        let mut entries = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut pending: Vec<&String> = names.iter().collect();
        while let Some(name) = pending.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some(service) = self.rulebase.services.get(name) {
                if let Some(reason) = &service.unsupported {
                    return Err(format!("service `{name}`: {reason}"));
                }
                entries.extend(service.entries.iter().cloned());
            } else if let Some(members) = self.rulebase.service_groups.get(name) {
                pending.extend(members.iter());
            } else {
                return Err(format!("service `{name}` is not in the rulebase"));
            }
        }
        if entries.contains(&ServiceEntry::Any) {
            return Ok(vec![ServiceEntry::Any]);
        }
        Ok(merge_ports(entries))
    }

    /// The Calico rules of one direction: every source alternative with every destination
    /// alternative and every service entry.
    #[allow(clippy::too_many_arguments)]
    fn rules(
        &self,
        action: Action,
        rule_family: Option<u8>,
        sources: &[Match],
        destinations: &[Match],
        services: &[ServiceEntry],
        metadata: &calico::RuleMetadata,
    ) -> Vec<calico::Rule> {
        let mut rules = Vec::new();
        for source in sources {
            for destination in destinations {
                if destination.domain_set.is_some() && action != Action::Allow {
                    continue;
                }
                let family = match (rule_family, source.family, destination.family) {
                    (Some(a), Some(b), _) | (Some(a), _, Some(b)) | (_, Some(a), Some(b))
                        if a != b =>
                    {
                        continue
                    }
                    (a, b, c) => a.or(b).or(c),
                };
                for service in services {
                    let mut rule = calico::Rule::any(action);
                    let (mut source_ports, mut destination_ports) = (Vec::new(), Vec::new());
                    match service {
                        ServiceEntry::Any => {}
                        ServiceEntry::Ports {
                            protocol,
                            destination,
                            source,
                        } => {
                            rule.protocol = Some(Protocol::Name(
                                match protocol {
                                    PortProtocol::Tcp => "TCP",
                                    PortProtocol::Udp => "UDP",
                                    PortProtocol::Sctp => "SCTP",
                                }
                                .into(),
                            ));
                            destination_ports = destination
                                .iter()
                                .map(|(a, b)| Port::range(*a, *b))
                                .collect();
                            source_ports =
                                source.iter().map(|(a, b)| Port::range(*a, *b)).collect();
                        }
                        ServiceEntry::Icmp { v6, kind, code } => {
                            let version = if *v6 { 6 } else { 4 };
                            if family.is_some_and(|family| family != version) {
                                continue;
                            }
                            rule.protocol =
                                Some(Protocol::Name(if *v6 { "ICMPv6" } else { "ICMP" }.into()));
                            rule.icmp = kind.map(|kind| Icmp { kind, code: *code });
                        }
                        ServiceEntry::Protocol(number) => {
                            rule.protocol = Some(Protocol::Number(*number));
                        }
                    }
                    rule.ip_version = family;
                    rule.source = source.entity(source_ports);
                    rule.destination = destination.entity(destination_ports);
                    rule.metadata = Some(metadata.clone());
                    rules.push(rule);
                }
            }
        }
        rules
    }

    fn metadata(&self, rule: &Rule, position: usize) -> ObjectMeta {
        let mut annotations = BTreeMap::from([
            (RULE_ANNOTATION.to_owned(), rule.name.clone()),
            (ORIGIN_ANNOTATION.to_owned(), self.rulebase.origin.clone()),
            (POSITION_ANNOTATION.to_owned(), position.to_string()),
        ]);
        if !rule.comment.is_empty() {
            annotations.insert(COMMENT_ANNOTATION.to_owned(), rule.comment.clone());
        }
        ObjectMeta {
            name: String::new(),
            labels: BTreeMap::new(),
            annotations,
        }
    }

    /// The policies of one rule, or why it cannot be translated.
    fn rule(&mut self, rule: &Rule, position: usize) -> Result<Vec<Object>, String> {
        if let Some(reason) = rule.unsupported.first() {
            return Err(reason.clone());
        }
        let from = self.zones(&rule.from_zones)?;
        let to = self.zones(&rule.to_zones)?;
        let sources = self.side(&rule.sources)?;
        let destinations = self.side(&rule.destinations)?;
        if !sources.fqdns.is_empty() {
            return Err(
                "an FQDN address as a source (Calico matches domains on egress only)".into(),
            );
        }
        if !destinations.fqdns.is_empty() && rule.verdict == Verdict::Deny {
            return Err(
                "a deny to an FQDN address (Calico allows by domain, it cannot deny by it)".into(),
            );
        }
        let services = self.services(&rule.services)?;
        if (rule.negate_source && rule.sources.is_empty())
            || (rule.negate_destination && rule.destinations.is_empty())
        {
            // A negated `any` matches nothing: the rule has no effect.
            return Ok(Vec::new());
        }
        let action = match rule.verdict {
            Verdict::Allow => Action::Allow,
            Verdict::Deny => Action::Deny,
        };
        let mut metadata = self.metadata(rule, position);
        let rule_metadata = calico::RuleMetadata {
            annotations: BTreeMap::from([(RULE_ANNOTATION.to_owned(), rule.name.clone())]),
        };
        let order = 10.0 * position as f64;
        let base = format!(
            "{}.r{position:05}-{}",
            self.settings.tier,
            slug(&rule.name, 40)
        );
        let mut objects = Vec::new();
        // Egress: the policy selects the source pods; the rules match the rest.
        if from.any || !from.cluster.is_empty() {
            let selector = match from.any {
                true => self.labels.zoned(),
                false => self.labels.in_zones(&from.cluster),
            };
            let local = self.matches(&from, &sources, rule.negate_source, true)?;
            let remote = self.matches(&to, &destinations, rule.negate_destination, false)?;
            let egress = self.rules(
                action,
                rule.family,
                &local,
                &remote,
                &services,
                &rule_metadata,
            );
            if !egress.is_empty() {
                metadata.name = format!("{base}-out");
                objects.push(self.policy(
                    metadata.clone(),
                    selector,
                    order,
                    PolicyType::Egress,
                    egress,
                ));
            }
        }
        // Ingress: the policy selects the destination pods.
        if to.any || !to.cluster.is_empty() {
            let selector = match to.any {
                true => self.labels.zoned(),
                false => self.labels.in_zones(&to.cluster),
            };
            let remote = self.matches(&from, &sources, rule.negate_source, false)?;
            let local = self.matches(&to, &destinations, rule.negate_destination, true)?;
            let ingress = self.rules(
                action,
                rule.family,
                &remote,
                &local,
                &services,
                &rule_metadata,
            );
            if !ingress.is_empty() {
                metadata.name = format!("{base}-in");
                objects.push(self.policy(metadata, selector, order, PolicyType::Ingress, ingress));
            }
        }
        Ok(objects)
    }

    fn policy(
        &self,
        metadata: ObjectMeta,
        selector: Selector,
        order: f64,
        direction: PolicyType,
        rules: Vec<calico::Rule>,
    ) -> Object {
        let (ingress, egress) = match direction {
            PolicyType::Ingress => (rules, Vec::new()),
            PolicyType::Egress => (Vec::new(), rules),
        };
        let types = match (ingress.is_empty(), egress.is_empty()) {
            (false, true) => vec![PolicyType::Ingress],
            (true, false) => vec![PolicyType::Egress],
            _ => vec![PolicyType::Ingress, PolicyType::Egress],
        };
        let spec = PolicySpec {
            tier: Some(self.settings.tier.clone()),
            order: Some(order),
            selector: selector.to_string(),
            types,
            ingress,
            egress,
            ..PolicySpec::default()
        };
        match self.settings.staged {
            true => Object::StagedPolicy(StagedGlobalNetworkPolicy::new(metadata, spec)),
            false => Object::Policy(GlobalNetworkPolicy::new(metadata, spec)),
        }
    }

    /// The defaults after the rules: within each zone (when it differs), then everything.
    fn defaults(&self, after: usize, zones: &BTreeSet<String>) -> Vec<Object> {
        let defaults = self.rulebase.defaults;
        let action = |verdict| match verdict {
            Verdict::Allow => Action::Allow,
            Verdict::Deny => Action::Deny,
        };
        let meta = |name: String, what: &str| ObjectMeta {
            name,
            labels: BTreeMap::new(),
            annotations: BTreeMap::from([
                (RULE_ANNOTATION.to_owned(), what.to_owned()),
                (ORIGIN_ANNOTATION.to_owned(), self.rulebase.origin.clone()),
            ]),
        };
        let mut objects = Vec::new();
        if defaults.intrazone != defaults.interzone {
            for zone in zones {
                let own = self.labels.in_zones(&BTreeSet::from([zone.clone()]));
                let mut ingress = calico::Rule::any(action(defaults.intrazone));
                ingress.source = Some(EntityRule::selector(own.to_string()));
                let mut egress = calico::Rule::any(action(defaults.intrazone));
                egress.destination = Some(EntityRule::selector(own.to_string()));
                let hash = crate::k8s::apply::fnv1a(zone.as_bytes()) as u32;
                let name = format!(
                    "{}.zz-intrazone-{}-{hash:08x}",
                    self.settings.tier,
                    slug(zone, 40)
                );
                let spec = PolicySpec {
                    tier: Some(self.settings.tier.clone()),
                    order: Some(10.0 * (after + 1) as f64),
                    selector: own.to_string(),
                    types: vec![PolicyType::Ingress, PolicyType::Egress],
                    ingress: vec![ingress],
                    egress: vec![egress],
                    ..PolicySpec::default()
                };
                objects.push(self.wrap(meta(name, "intrazone-default"), spec));
            }
        }
        let spec = PolicySpec {
            tier: Some(self.settings.tier.clone()),
            order: Some(10.0 * (after + 2) as f64),
            selector: self.labels.zoned().to_string(),
            types: vec![PolicyType::Ingress, PolicyType::Egress],
            ingress: vec![calico::Rule::any(action(defaults.interzone))],
            egress: vec![calico::Rule::any(action(defaults.interzone))],
            ..PolicySpec::default()
        };
        let name = format!("{}.zz-default", self.settings.tier);
        objects.push(self.wrap(meta(name, "interzone-default"), spec));
        objects
    }

    fn wrap(&self, metadata: ObjectMeta, spec: PolicySpec) -> Object {
        match self.settings.staged {
            true => Object::StagedPolicy(StagedGlobalNetworkPolicy::new(metadata, spec)),
            false => Object::Policy(GlobalNetworkPolicy::new(metadata, spec)),
        }
    }
}

/// Translates `rulebase` into policy in `settings.tier`.
pub fn translate(rulebase: &Rulebase, settings: &Settings) -> Translation {
    let mut translator = Translator {
        rulebase,
        settings,
        labels: Labels { settings },
        domains: BTreeMap::new(),
    };
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    let (mut translated, mut disabled) = (0, 0);
    let mut zones: BTreeSet<String> = rulebase
        .zones
        .iter()
        .chain(&settings.zones)
        .filter(|zone| !settings.external_zones.contains_key(*zone) && quotable(zone))
        .cloned()
        .collect();
    for (index, rule) in rulebase.rules.iter().enumerate() {
        let position = index + 1;
        if !rule.enabled {
            disabled += 1;
            continue;
        }
        match translator.rule(rule, position) {
            Ok(policies) => {
                translated += 1;
                objects.extend(policies);
                for zone in rule.from_zones.iter().chain(&rule.to_zones) {
                    if !settings.external_zones.contains_key(zone) {
                        zones.insert(zone.clone());
                    }
                }
            }
            Err(reason) => skipped.push(Skipped {
                position,
                name: rule.name.clone(),
                verdict: rule.verdict,
                reason,
            }),
        }
    }
    objects.extend(translator.defaults(rulebase.rules.len(), &zones));
    for (value, domain) in &translator.domains {
        let metadata = ObjectMeta {
            name: format!("{}.fqdn-{value}", settings.tier),
            labels: BTreeMap::from([(ADDRESS_LABEL.to_owned(), value.clone())]),
            annotations: BTreeMap::from([(ORIGIN_ANNOTATION.to_owned(), rulebase.origin.clone())]),
        };
        let spec = GlobalNetworkSetSpec {
            nets: Vec::new(),
            allowed_egress_domains: vec![domain.clone()],
        };
        objects.push(Object::NetworkSet(GlobalNetworkSet::new(metadata, spec)));
    }
    let default_action = match rulebase.defaults.interzone {
        Verdict::Allow => Action::Allow,
        Verdict::Deny => Action::Deny,
    };
    let tier = Object::Tier(Tier::new(
        ObjectMeta {
            name: settings.tier.clone(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::from([(ORIGIN_ANNOTATION.to_owned(), rulebase.origin.clone())]),
        },
        settings.tier_order,
        default_action,
    ));
    Translation {
        tier,
        objects,
        translated,
        disabled,
        skipped,
    }
}
