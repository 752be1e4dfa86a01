//! Two evaluators, written apart from the translator, that decide one flow:
//!
//! - [`firewall`]: the firewall's way over a neutral [`Rulebase`]: the first enabled rule whose
//!   zones, addresses (groups by pod labels and nesting, objects by IP, dynamic groups by tag,
//!   negation) and services match, else the rulebase's intrazone or interzone default. A flow
//!   between endpoints none of which is a zoned pod is not the firewall's to decide: it is
//!   allowed, as in a cluster without the tier.
//! - [`calico`]: Calico's way over the generated objects: the source pod's egress and the
//!   destination pod's ingress, each through the tier's policies in order (a policy that
//!   selects the pod but whose rules do not match passes to the next; a pod some policy
//!   selected that no rule decided gets the tier's default action; a pod no policy selects is
//!   not governed by the tier), and the flow is allowed when both are.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use threatflow::firewall::rules::{AddressKind, PortProtocol, Rulebase, ServiceEntry, Verdict};
use threatflow::firewall::selector::Selector;
use threatflow::k8s::apply::Object;
use threatflow::k8s::calico::{Action, EntityRule, PolicySpec, PolicyType, Port, Protocol, Rule};

/// Where a flow starts or ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Pod {
        name: String,
        ip: IpAddr,
        /// The pod's own labels, and its namespace's.
        labels: BTreeMap<String, String>,
        namespace_labels: BTreeMap<String, String>,
    },
    External {
        ip: IpAddr,
    },
}

impl Endpoint {
    pub fn ip(&self) -> IpAddr {
        match self {
            Endpoint::Pod { ip, .. } | Endpoint::External { ip } => *ip,
        }
    }
}

/// A flow's protocol and ports (ICMP: type and code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traffic {
    pub protocol: u8,
    pub source_port: u16,
    pub destination_port: u16,
    pub icmp: Option<(u8, u8)>,
}

impl Traffic {
    pub fn tcp(source_port: u16, destination_port: u16) -> Traffic {
        Traffic {
            protocol: 6,
            source_port,
            destination_port,
            icmp: None,
        }
    }
    pub fn udp(source_port: u16, destination_port: u16) -> Traffic {
        Traffic {
            protocol: 17,
            ..Traffic::tcp(source_port, destination_port)
        }
    }
    pub fn icmp(kind: u8, code: u8) -> Traffic {
        Traffic {
            protocol: 1,
            source_port: 0,
            destination_port: 0,
            icmp: Some((kind, code)),
        }
    }
    pub fn protocol(number: u8) -> Traffic {
        Traffic {
            protocol: number,
            source_port: 0,
            destination_port: 0,
            icmp: None,
        }
    }
}

/// How the cluster is labelled.
pub struct Conventions {
    pub zone_label: String,
    pub group_label: String,
    pub external_zones: BTreeMap<String, Vec<IpNet>>,
}

impl Conventions {
    fn zone(&self, endpoint: &Endpoint) -> Option<String> {
        match endpoint {
            Endpoint::Pod {
                labels,
                namespace_labels,
                ..
            } => labels
                .get(&self.zone_label)
                .or_else(|| namespace_labels.get(&self.zone_label))
                .cloned(),
            Endpoint::External { ip } => self
                .external_zones
                .iter()
                .find(|(_, nets)| nets.iter().any(|net| net.contains(ip)))
                .map(|(zone, _)| zone.clone()),
        }
    }

    fn is_zoned_pod(&self, endpoint: &Endpoint) -> bool {
        matches!(endpoint, Endpoint::Pod { .. }) && self.zone(endpoint).is_some()
    }

    /// The groups a pod's own labels put it in (its label and its namespace's).
    fn labelled_groups(&self, endpoint: &Endpoint) -> BTreeSet<String> {
        match endpoint {
            Endpoint::Pod {
                labels,
                namespace_labels,
                ..
            } => [
                labels.get(&self.group_label),
                namespace_labels.get(&self.group_label),
            ]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
            Endpoint::External { .. } => BTreeSet::new(),
        }
    }
}

fn in_address(
    rulebase: &Rulebase,
    conventions: &Conventions,
    name: &str,
    endpoint: &Endpoint,
    seen: &mut BTreeSet<String>,
) -> bool {
    if !seen.insert(name.to_owned()) {
        return false;
    }
    if let Some(address) = rulebase.addresses.get(name) {
        return match &address.kind {
            AddressKind::Nets(nets) => nets.iter().any(|net| net.contains(&endpoint.ip())),
            _ => false,
        };
    }
    let Some(group) = rulebase.groups.get(name) else {
        return false;
    };
    if conventions.labelled_groups(endpoint).contains(name) {
        return true;
    }
    let members = group
        .members
        .iter()
        .any(|member| in_address(rulebase, conventions, member, endpoint, &mut seen.clone()));
    let dynamic = group.filter.as_ref().is_some_and(|filter| {
        rulebase.addresses.iter().any(|(member, address)| {
            filter.matches(&address.tags)
                && in_address(rulebase, conventions, member, endpoint, &mut seen.clone())
        })
    });
    members || dynamic
}

fn side_matches(
    rulebase: &Rulebase,
    conventions: &Conventions,
    zones: &[String],
    names: &[String],
    negate: bool,
    endpoint: &Endpoint,
) -> bool {
    let zone_ok = zones.is_empty()
        || conventions
            .zone(endpoint)
            .is_some_and(|zone| zones.contains(&zone));
    if !zone_ok {
        return false;
    }
    if names.is_empty() {
        // `any`, and a negated `any` matches nothing.
        return !negate;
    }
    let in_set = names
        .iter()
        .any(|name| in_address(rulebase, conventions, name, endpoint, &mut BTreeSet::new()));
    in_set != negate
}

fn service_matches(rulebase: &Rulebase, names: &[String], traffic: Traffic) -> bool {
    if names.is_empty() {
        return true;
    }
    let mut entries = Vec::new();
    let mut pending: Vec<&String> = names.iter().collect();
    let mut seen = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(service) = rulebase.services.get(name) {
            entries.extend(service.entries.iter().cloned());
        } else if let Some(members) = rulebase.service_groups.get(name) {
            pending.extend(members);
        }
    }
    let within = |ranges: &[(u16, u16)], port: u16| {
        ranges.is_empty()
            || ranges
                .iter()
                .any(|(low, high)| (*low..=*high).contains(&port))
    };
    entries.iter().any(|entry| match entry {
        ServiceEntry::Any => true,
        ServiceEntry::Ports {
            protocol,
            destination,
            source,
        } => {
            let number = match protocol {
                PortProtocol::Tcp => 6,
                PortProtocol::Udp => 17,
                PortProtocol::Sctp => 132,
            };
            traffic.protocol == number
                && within(destination, traffic.destination_port)
                && within(source, traffic.source_port)
        }
        ServiceEntry::Icmp { v6, kind, code } => {
            traffic.protocol == if *v6 { 58 } else { 1 }
                && kind.is_none_or(|kind| traffic.icmp.is_some_and(|(t, _)| t == kind))
                && code.is_none_or(|code| traffic.icmp.is_some_and(|(_, c)| c == code))
        }
        ServiceEntry::Protocol(number) => traffic.protocol == *number,
    })
}

/// The firewall's verdict.
pub fn firewall(
    rulebase: &Rulebase,
    conventions: &Conventions,
    source: &Endpoint,
    destination: &Endpoint,
    traffic: Traffic,
) -> Verdict {
    if !conventions.is_zoned_pod(source) && !conventions.is_zoned_pod(destination) {
        return Verdict::Allow;
    }
    let family = if source.ip().is_ipv4() { 4 } else { 6 };
    for rule in rulebase.rules.iter().filter(|rule| rule.enabled) {
        let matches = rule.family.is_none_or(|only| only == family)
            && side_matches(
                rulebase,
                conventions,
                &rule.from_zones,
                &rule.sources,
                rule.negate_source,
                source,
            )
            && side_matches(
                rulebase,
                conventions,
                &rule.to_zones,
                &rule.destinations,
                rule.negate_destination,
                destination,
            )
            && service_matches(rulebase, &rule.services, traffic);
        if matches {
            return rule.verdict;
        }
    }
    match (conventions.zone(source), conventions.zone(destination)) {
        (Some(a), Some(b)) if a == b => rulebase.defaults.intrazone,
        _ => rulebase.defaults.interzone,
    }
}

/// A pod's labels as Calico selectors see them.
fn calico_labels(endpoint: &Endpoint) -> Option<BTreeMap<String, String>> {
    let Endpoint::Pod {
        labels,
        namespace_labels,
        ..
    } = endpoint
    else {
        return None;
    };
    let mut all = labels.clone();
    for (key, value) in namespace_labels {
        all.insert(format!("pcns.{key}"), value.clone());
    }
    // Calico's pseudo-label on every workload.
    all.insert("projectcalico.org/namespace".into(), "default".into());
    Some(all)
}

fn selects(selector: &str, endpoint: &Endpoint) -> bool {
    let selector = Selector::parse(selector).expect("generated selectors parse");
    calico_labels(endpoint).is_some_and(|labels| selector.matches(&labels, true))
}

fn port_in(ports: &[Port], port: u16) -> bool {
    ports.iter().any(|candidate| match candidate {
        Port::Number(number) => *number == port,
        Port::Range(range) => {
            let (low, high) = range.split_once(':').expect("a range");
            (low.parse::<u16>().unwrap()..=high.parse::<u16>().unwrap()).contains(&port)
        }
    })
}

fn entity_matches(
    entity: &Option<EntityRule>,
    endpoint: &Endpoint,
    port: u16,
    sets: &[Object],
) -> bool {
    let Some(entity) = entity else {
        return true;
    };
    let ip = endpoint.ip();
    let nets = |list: &[String]| {
        list.iter()
            .any(|net| net.parse::<IpNet>().unwrap().contains(&ip))
    };
    if !entity.nets.is_empty() && !nets(&entity.nets) {
        return false;
    }
    if nets(&entity.not_nets) {
        return false;
    }
    if let Some(selector) = &entity.selector {
        // An endpoint by its labels; an IP outside the cluster by the network sets whose labels
        // the selector picks and whose nets hold it (sets of domains hold no IP).
        let by_set = matches!(endpoint, Endpoint::External { .. })
            && sets.iter().any(|set| match set {
                Object::NetworkSet(set) => {
                    Selector::parse(selector)
                        .unwrap()
                        .matches(&set.metadata.labels, false)
                        && set
                            .spec
                            .nets
                            .iter()
                            .any(|net| net.parse::<IpNet>().unwrap().contains(&ip))
                }
                _ => false,
            });
        if !selects(selector, endpoint) && !by_set {
            return false;
        }
    }
    if let Some(selector) = &entity.not_selector {
        if selects(selector, endpoint) {
            return false;
        }
    }
    if !entity.ports.is_empty() && !port_in(&entity.ports, port) {
        return false;
    }
    true
}

fn protocol_number(protocol: &Protocol) -> u8 {
    match protocol {
        Protocol::Number(number) => *number,
        Protocol::Name(name) => match name.as_str() {
            "TCP" => 6,
            "UDP" => 17,
            "ICMP" => 1,
            "ICMPv6" => 58,
            "SCTP" => 132,
            "UDPLite" => 136,
            other => panic!("unknown protocol {other}"),
        },
    }
}

fn rule_matches(
    rule: &Rule,
    source: &Endpoint,
    destination: &Endpoint,
    traffic: Traffic,
    sets: &[Object],
) -> bool {
    if let Some(protocol) = &rule.protocol {
        if protocol_number(protocol) != traffic.protocol {
            return false;
        }
    }
    if let Some(version) = rule.ip_version {
        let is_v4 = source.ip().is_ipv4();
        if (version == 4) != is_v4 {
            return false;
        }
    }
    if let Some(icmp) = rule.icmp {
        let Some((kind, code)) = traffic.icmp else {
            return false;
        };
        if icmp.kind != kind || icmp.code.is_some_and(|want| want != code) {
            return false;
        }
    }
    entity_matches(&rule.source, source, traffic.source_port, sets)
        && entity_matches(
            &rule.destination,
            destination,
            traffic.destination_port,
            sets,
        )
}

fn policies(objects: &[Object]) -> Vec<(String, &PolicySpec)> {
    let mut policies: Vec<(String, &PolicySpec)> = objects
        .iter()
        .filter_map(|object| match object {
            Object::Policy(policy) => Some((policy.metadata.name.clone(), &policy.spec)),
            Object::StagedPolicy(policy) => {
                Some((policy.metadata.name.clone(), &policy.spec.policy))
            }
            _ => None,
        })
        .collect();
    policies.sort_by(|(a_name, a), (b_name, b)| {
        a.order
            .unwrap_or(f64::INFINITY)
            .total_cmp(&b.order.unwrap_or(f64::INFINITY))
            .then(a_name.cmp(b_name))
    });
    policies
}

/// One direction through the tier: `None` when no policy of the tier selects `local`.
fn through_tier(
    objects: &[Object],
    default: Action,
    direction: PolicyType,
    local: &Endpoint,
    source: &Endpoint,
    destination: &Endpoint,
    traffic: Traffic,
) -> Option<Action> {
    let mut selected = false;
    for (_, spec) in policies(objects) {
        if !spec.types.contains(&direction) || !selects(&spec.selector, local) {
            continue;
        }
        selected = true;
        let rules = match direction {
            PolicyType::Ingress => &spec.ingress,
            PolicyType::Egress => &spec.egress,
        };
        for rule in rules {
            if rule_matches(rule, source, destination, traffic, objects) {
                return Some(rule.action);
            }
        }
    }
    selected.then_some(default)
}

/// Calico's verdict over the translation's objects and the tier's default action.
pub fn calico(
    objects: &[Object],
    tier_default: Action,
    source: &Endpoint,
    destination: &Endpoint,
    traffic: Traffic,
) -> Verdict {
    let egress = through_tier(
        objects,
        tier_default,
        PolicyType::Egress,
        source,
        source,
        destination,
        traffic,
    )
    .unwrap_or(Action::Allow);
    let ingress = through_tier(
        objects,
        tier_default,
        PolicyType::Ingress,
        destination,
        source,
        destination,
        traffic,
    )
    .unwrap_or(Action::Allow);
    match (egress, ingress) {
        (Action::Allow, Action::Allow) => Verdict::Allow,
        _ => Verdict::Deny,
    }
}
