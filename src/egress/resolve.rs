//! Which egress IPs the outside world sees for each namespace, from the cluster model and the
//! egress mechanism's objects: pure, one function per mechanism.
//!
//! An identity has *observed* addresses (what the objects say is in use now) and *declared*
//! ones (what the mechanism may use: a gateway pool, every listed IP, a public prefix).
//! Firewalls get both, so a gateway failing over to another address of its pool needs no new
//! rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::config::EgressConfig;
use super::objects::{
    EgressObjects, Resource, AKS_GATEWAY, CALICO_NAMESPACE_SELECTOR, CALICO_POLICY, CALICO_SELECTOR,
};
use crate::cluster::model::{LabelList, Model, Pod};
use crate::cluster::{LabelSelector, Labels, Selects};
use crate::firewall::selector::{NamespaceLabels, Selector};
use crate::k8s::calico::labels::{
    NAMESPACE as NAMESPACE_LABEL, ORCHESTRATOR as ORCHESTRATOR_LABEL,
};

/// The egress mechanism a cluster uses.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Calico Enterprise egress gateways.
    Calico,
    /// Cilium's CiliumEgressGatewayPolicy.
    Cilium,
    /// Isovalent Enterprise's IsovalentEgressGatewayPolicy.
    Isovalent,
    /// Antrea's Egress.
    Antrea,
    /// OVN-Kubernetes (OpenShift) EgressIP.
    Ovn,
    /// AKS static egress gateways.
    Aks,
    /// None: nodes' addresses (implies `node_fallback`).
    Node,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Calico => "calico",
            Mechanism::Cilium => "cilium",
            Mechanism::Isovalent => "isovalent",
            Mechanism::Antrea => "antrea",
            Mechanism::Ovn => "ovn",
            Mechanism::Aks => "aks",
            Mechanism::Node => "node",
        }
    }

    /// The kinds of object it is resolved from (beyond the model's pods, namespaces, nodes).
    pub fn resources(self) -> &'static [Resource] {
        match self {
            Mechanism::Calico => &[
                Resource::FelixConfiguration,
                Resource::IpPool,
                Resource::EgressGateway,
                Resource::EgressGatewayPolicy,
            ],
            Mechanism::Cilium => &[Resource::CiliumPolicy],
            Mechanism::Isovalent => &[Resource::IsovalentPolicy],
            Mechanism::Antrea => &[Resource::AntreaEgress, Resource::AntreaPool],
            Mechanism::Ovn => &[Resource::OvnEgressIp],
            Mechanism::Aks => &[Resource::AksGateway],
            Mechanism::Node => &[],
        }
    }

    /// The mechanism a cluster serving `resources` (`group/plural`) has, most specific first.
    pub fn detect(resources: &BTreeSet<String>) -> Option<Mechanism> {
        let has = |resource: Resource| {
            let (group, _, _, plural, _) = resource.api();
            resources.contains(&format!("{group}/{plural}"))
        };
        [
            Mechanism::Isovalent,
            Mechanism::Cilium,
            Mechanism::Antrea,
            Mechanism::Ovn,
            Mechanism::Aks,
            Mechanism::Calico,
        ]
        .into_iter()
        .find(|mechanism| match mechanism {
            Mechanism::Calico => has(Resource::EgressGateway) || has(Resource::EgressGatewayPolicy),
            other => other.resources().iter().all(|resource| has(*resource)),
        })
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One namespace's egress identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The addresses in use now.
    pub observed: BTreeSet<IpAddr>,
    /// The addresses the mechanism may use.
    pub declared: BTreeSet<IpNet>,
    /// Shared with other namespaces by construction (node addresses).
    pub weak: bool,
    /// The objects it was resolved from (`EgressGateway egress/gw`).
    pub via: BTreeSet<String>,
}

impl Identity {
    /// Observed and declared addresses together, as nets.
    pub fn nets(&self) -> BTreeSet<IpNet> {
        self.observed
            .iter()
            .map(|ip| IpNet::from(*ip))
            .chain(self.declared.iter().copied())
            .collect()
    }
}

/// Something a firewall team should know: two namespaces sharing an identity, an annotation
/// naming a policy that does not exist, an identity that cannot be resolved.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    /// A metric label: `shared_identity`, `missing_policy`, `unresolved`, `pod_override`,
    /// `overlap`, `unreadable`, `weak`.
    pub kind: &'static str,
    pub message: String,
}

/// Every namespace's identity, and what to warn about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    pub identities: BTreeMap<String, Identity>,
    pub warnings: BTreeSet<Warning>,
}

impl Resolution {
    fn add(&mut self, namespace: &str, via: String) -> &mut Identity {
        let identity = self.identities.entry(namespace.to_owned()).or_default();
        identity.via.insert(via);
        identity
    }

    fn warn(&mut self, kind: &'static str, message: String) {
        self.warnings.insert(Warning { kind, message });
    }
}

/// A pod's labels with its namespace as Cilium and Calico selectors see them.
struct PodLabels<'a> {
    pod: &'a Pod,
}

impl Labels for PodLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            "io.kubernetes.pod.namespace" | NAMESPACE_LABEL => Some(self.pod.namespace()),
            ORCHESTRATOR_LABEL => Some("k8s"),
            _ => self.pod.label(key),
        }
    }
}

/// Resolves every namespace's identity under `mechanism`.
pub fn resolve(
    mechanism: Mechanism,
    model: &Model,
    objects: &EgressObjects,
    config: &EgressConfig,
) -> Resolution {
    let mut resolution = Resolution::default();
    for (object, reason) in &objects.unreadable {
        resolution.warn("unreadable", format!("{object} cannot be read: {reason}"));
    }
    match mechanism {
        Mechanism::Calico => calico(model, objects, &mut resolution),
        Mechanism::Cilium | Mechanism::Isovalent => {
            cilium(mechanism, model, objects, config, &mut resolution)
        }
        Mechanism::Antrea => antrea(model, objects, &mut resolution),
        Mechanism::Ovn => ovn(model, objects, &mut resolution),
        Mechanism::Aks => aks(model, objects, &mut resolution),
        Mechanism::Node => {}
    }
    if config.falls_back_to_nodes() {
        node_fallback(model, &mut resolution);
    }
    if let Some(selector) = &config.namespace_selector {
        // Validated with the config; a selector that does not parse selects nothing.
        let selector = LabelSelector::parse(selector).ok();
        resolution.identities.retain(|name, _| {
            let namespace = model.namespace(name);
            selector
                .as_ref()
                .zip(namespace)
                .is_some_and(|(selector, namespace)| selector.selects(&namespace.labels))
        });
    }
    shared_warnings(&mut resolution);
    resolution
}

/// Calico Enterprise: each namespace's gateway selection (and, in per-pod mode, each pod's
/// that overrides it), resolved with Felix's precedence, the gateway pods it picks, and the
/// addresses those leave with.
fn calico(model: &Model, objects: &EgressObjects, resolution: &mut Resolution) {
    let per_pod = match objects.egress_ip_support.as_deref() {
        Some("EnabledPerNamespace") => false,
        Some("EnabledPerNamespaceOrPerPod") => true,
        _ => return,
    };
    let mut pod_claims: BTreeMap<&str, Vec<(&Pod, Claim)>> = BTreeMap::new();
    if per_pod {
        for pod in model.all_pods().filter(|pod| !is_gateway(pod, objects)) {
            let claim = Claim::of(pod.annotations());
            if !claim.is_empty() {
                pod_claims
                    .entry(pod.namespace())
                    .or_default()
                    .push((pod, claim));
            }
        }
    }
    for (name, namespace) in model.namespaces() {
        let namespace_claim = Claim::of(&namespace.annotations);
        let namespace_effective = effective(None, &namespace_claim, objects);
        let mut effective_claims = vec![(name.to_owned(), namespace_effective.clone())];
        for (pod, claim) in pod_claims.get(name).into_iter().flatten() {
            let pod_effective = effective(Some(claim), &namespace_claim, objects);
            if pod_effective != namespace_effective {
                resolution.warn(
                    "pod_override",
                    format!(
                        "pod {name}/{} selects its own egress gateway; namespace {name}'s group holds both",
                        pod.name()
                    ),
                );
                effective_claims.push((format!("{name}/{}", pod.name()), pod_effective));
            }
        }
        for (at, claim) in effective_claims {
            calico_claim(name, &claim, &at, model, objects, resolution);
        }
    }
}

/// A namespace's or pod's egress annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Claim {
    selector: Option<String>,
    namespace_selector: Option<String>,
    policy: Option<String>,
}

impl Claim {
    fn of(annotations: &LabelList) -> Claim {
        let get = |key: &str| {
            annotations
                .label(key)
                .filter(|value| !value.trim().is_empty())
                .map(str::to_owned)
        };
        Claim {
            selector: get(CALICO_SELECTOR),
            namespace_selector: get(CALICO_NAMESPACE_SELECTOR),
            policy: get(CALICO_POLICY),
        }
    }

    fn is_empty(&self) -> bool {
        self.selector.is_none() && self.policy.is_none()
    }
}

/// Which gateways a pod's traffic takes, as Felix decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Effective {
    /// An EgressGatewayPolicy (that exists).
    Policy(String),
    /// Policies were named and none exists: Calico blocks all egress.
    Blocked(String),
    /// One selector (and namespace selector) for every destination.
    Selector(String, Option<String>),
    /// No gateway.
    None,
}

/// Felix's precedence: the pod's policy if it exists, else the namespace's; a named policy
/// that does not exist blocks egress; else the pod's selector, else the namespace's.
fn effective(pod: Option<&Claim>, namespace: &Claim, objects: &EgressObjects) -> Effective {
    let exists = |policy: &Option<String>| {
        policy
            .as_ref()
            .filter(|policy| objects.gateway_policies.contains_key(*policy))
            .cloned()
    };
    if let Some(policy) = pod.and_then(|pod| exists(&pod.policy)) {
        return Effective::Policy(policy);
    }
    if let Some(policy) = exists(&namespace.policy) {
        return Effective::Policy(policy);
    }
    if let Some(named) = pod
        .and_then(|pod| pod.policy.clone())
        .or_else(|| namespace.policy.clone())
    {
        return Effective::Blocked(named);
    }
    match pod
        .filter(|pod| pod.selector.is_some())
        .unwrap_or(namespace)
    {
        Claim {
            selector: Some(selector),
            namespace_selector,
            ..
        } => Effective::Selector(selector.clone(), namespace_selector.clone()),
        _ => Effective::None,
    }
}

/// Whether `pod` is one of an EgressGateway's pods (its namespace, its template's labels).
fn is_gateway(pod: &Pod, objects: &EgressObjects) -> bool {
    objects.gateways.iter().any(|gateway| {
        gateway.namespace == pod.namespace()
            && gateway
                .pod_labels
                .iter()
                .all(|(key, value)| pod.label(key) == Some(value.as_str()))
    })
}

fn calico_claim(
    namespace: &str,
    claim: &Effective,
    at: &str,
    model: &Model,
    objects: &EgressObjects,
    resolution: &mut Resolution,
) {
    let rules: Vec<(String, Option<String>)> = match claim {
        Effective::Policy(policy) => objects.gateway_policies[policy]
            .iter()
            .filter_map(|rule| rule.gateway.clone())
            .collect(),
        Effective::Blocked(policy) => {
            resolution.warn(
                "missing_policy",
                format!(
                    "{at} names EgressGatewayPolicy {policy}, which does not exist: Calico blocks its egress"
                ),
            );
            return;
        }
        Effective::Selector(selector, namespace_selector) => {
            vec![(selector.clone(), namespace_selector.clone())]
        }
        Effective::None => return,
    };
    for (selector, namespace_selector) in rules {
        let gateways = match gateway_pods(
            model,
            objects,
            namespace,
            &selector,
            namespace_selector.as_deref(),
        ) {
            Ok(gateways) => gateways,
            Err(reason) => {
                resolution.warn("unresolved", format!("{at}: {reason}"));
                continue;
            }
        };
        if gateways.is_empty() {
            resolution.warn(
                "unresolved",
                format!("{at}: no egress gateway pod matches `{selector}`"),
            );
            continue;
        }
        for gateway in gateways {
            let via = format!("gateway pod {}/{}", gateway.namespace(), gateway.name());
            let (observed, declared) = gateway_addresses(gateway, model, objects, resolution);
            let identity = resolution.add(namespace, via);
            identity.observed.extend(observed);
            identity.declared.extend(declared);
        }
    }
}

/// The gateway pods a selector picks: EgressGateways' pods, in the claimant's namespace or in
/// the namespaces `namespace_selector` picks. Other pods that carry the labels are not
/// gateways and never lend their addresses.
fn gateway_pods<'a>(
    model: &'a Model,
    objects: &EgressObjects,
    namespace: &str,
    selector: &str,
    namespace_selector: Option<&str>,
) -> Result<Vec<&'a Pod>, String> {
    let pods = Selector::parse(selector).map_err(|error| format!("`{selector}`: {error}"))?;
    let namespaces: BTreeSet<&str> = match namespace_selector {
        Some(text) => {
            let selector = Selector::parse(text).map_err(|error| format!("`{text}`: {error}"))?;
            model
                .namespaces()
                .filter(|(name, found)| {
                    selector.matches(
                        &NamespaceLabels {
                            name,
                            labels: &found.labels,
                        },
                        false,
                    )
                })
                .map(|(name, _)| name)
                .collect()
        }
        None => [namespace].into(),
    };
    let mut found: Vec<&Pod> = model
        .all_pods()
        .filter(|pod| namespaces.contains(pod.namespace()))
        .filter(|pod| pods.matches(&PodLabels { pod }, true))
        .filter(|pod| is_gateway(pod, objects))
        .collect();
    found.sort_by(|a, b| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    Ok(found)
}

/// A gateway pod's addresses as the outside sees them: its own, or its node's when its pool
/// NATs outgoing traffic; and what it may use: its EgressGateway's pools (those that do not
/// NAT) and AWS Elastic IPs.
fn gateway_addresses(
    gateway: &Pod,
    model: &Model,
    objects: &EgressObjects,
    resolution: &mut Resolution,
) -> (BTreeSet<IpAddr>, BTreeSet<IpNet>) {
    let mut observed = BTreeSet::new();
    let mut declared = BTreeSet::new();
    for ip in gateway.ips() {
        let pool = objects.ip_pools.iter().find(|pool| pool.cidr.contains(ip));
        if pool.is_some_and(|pool| pool.nat_outgoing) {
            let node = gateway.node().and_then(|node| model.node(node));
            observed.extend(
                node.iter()
                    .flat_map(|node| node.internal_ips.iter().copied()),
            );
            resolution.warn(
                "weak",
                format!(
                    "gateway pod {}/{} leaves with its node's address (its pool has natOutgoing): other traffic from node {} shares it; pin gateways to nodes of their own",
                    gateway.namespace(),
                    gateway.name(),
                    gateway.node().unwrap_or("-")
                ),
            );
        } else {
            observed.insert(*ip);
        }
    }
    for owner in objects
        .gateways
        .iter()
        .filter(|owner| owner.namespace == gateway.namespace())
        .filter(|owner| {
            owner
                .pod_labels
                .iter()
                .all(|(key, value)| gateway.label(key) == Some(value.as_str()))
        })
    {
        declared.extend(owner.elastic_ips.iter().map(|ip| IpNet::from(*ip)));
        for pool in &owner.pools {
            let found = objects
                .ip_pools
                .iter()
                .find(|found| found.name == *pool || found.cidr.to_string() == *pool);
            match found {
                Some(found) if !found.nat_outgoing => {
                    declared.insert(found.cidr);
                }
                Some(_) => {}
                None => {
                    if let Ok(net) = pool.parse::<IpNet>() {
                        declared.insert(net.trunc());
                    }
                }
            }
        }
    }
    (observed, declared)
}

/// The namespaces with at least one pod a (namespace selector, pod selector) pair picks.
fn picked_namespaces(
    model: &Model,
    namespaces: Option<&LabelSelector>,
    pods: Option<&LabelSelector>,
) -> BTreeSet<String> {
    model
        .all_pods()
        .filter(|pod| !pod.ips().is_empty())
        .filter(|pod| {
            namespaces.is_none_or(|selector| {
                model
                    .namespace(pod.namespace())
                    .is_some_and(|namespace| selector.selects(&namespace.labels))
            }) && pods.is_none_or(|selector| selector.selects(&PodLabels { pod }))
        })
        .map(|pod| pod.namespace().to_owned())
        .collect()
}

/// Cilium: each policy's selected namespaces leave through the egress IP of its gateway
/// node(s): `egressIP`, an interface's address from the config, or Isovalent's status.
fn cilium(
    mechanism: Mechanism,
    model: &Model,
    objects: &EgressObjects,
    config: &EgressConfig,
    resolution: &mut Resolution,
) {
    let kind = match mechanism {
        Mechanism::Isovalent => "IsovalentEgressGatewayPolicy",
        _ => "CiliumEgressGatewayPolicy",
    };
    for policy in &objects.cilium {
        let mut namespaces = BTreeSet::new();
        for (namespace_selector, pod_selector) in &policy.selectors {
            namespaces.extend(picked_namespaces(
                model,
                namespace_selector.as_ref(),
                pod_selector.as_ref(),
            ));
        }
        if namespaces.is_empty() {
            continue;
        }
        let mut addresses = BTreeSet::new();
        if !policy.active_ips.is_empty() {
            addresses.extend(policy.active_ips.iter().copied());
        }
        for gateway in &policy.gateways {
            if gateway.egress_ip.is_some() && gateway.interface.is_some() {
                resolution.warn(
                    "unresolved",
                    format!(
                        "{kind} {} sets both interface and egressIP, which Cilium ignores",
                        policy.name
                    ),
                );
                continue;
            }
            if let Some(ip) = gateway.egress_ip {
                addresses.insert(ip);
                continue;
            }
            if !policy.active_ips.is_empty() {
                continue;
            }
            // The first matching node by name is the gateway (Cilium's rule).
            let mut nodes: Vec<&str> = model
                .nodes()
                .filter(|node| gateway.node_selector.selects(&node.labels))
                .map(|node| node.name.as_str())
                .collect();
            nodes.sort_unstable();
            let Some(node) = nodes.first() else {
                resolution.warn(
                    "unresolved",
                    format!(
                        "{kind} {}: no node matches its gateway nodeSelector",
                        policy.name
                    ),
                );
                continue;
            };
            let interface = gateway.interface.as_deref().unwrap_or("default");
            match config
                .cilium_interfaces
                .get(*node)
                .and_then(|interfaces| interfaces.get(interface))
            {
                Some(ips) => addresses.extend(ips.iter().copied()),
                None => resolution.warn(
                    "unresolved",
                    format!(
                        "{kind} {}: node {node} leaves through interface `{interface}`, whose address Kubernetes does not record; add it to cilium_interfaces.{node}.{interface}",
                        policy.name
                    ),
                ),
            }
        }
        if addresses.is_empty() {
            continue;
        }
        for namespace in namespaces {
            let identity = resolution.add(&namespace, format!("{kind} {}", policy.name));
            identity.observed.extend(addresses.iter().copied());
        }
    }
}

/// Antrea: the Egresses applied to a namespace's pods; their assigned IP (else the one in the
/// spec), and their pool's ranges.
fn antrea(model: &Model, objects: &EgressObjects, resolution: &mut Resolution) {
    let mut by_namespace: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for egress in &objects.antrea {
        if egress.namespaces.is_none() && egress.pods.is_none() {
            continue; // An empty appliedTo selects nothing.
        }
        let namespaces = picked_namespaces(model, egress.namespaces.as_ref(), egress.pods.as_ref());
        let declared: Vec<IpNet> = egress
            .pool
            .as_ref()
            .and_then(|pool| objects.antrea_pools.get(pool))
            .cloned()
            .unwrap_or_default();
        for namespace in namespaces {
            by_namespace
                .entry(namespace.clone())
                .or_default()
                .insert(&egress.name);
            let identity = resolution.add(&namespace, format!("Egress {}", egress.name));
            identity.observed.extend(egress.ip);
            identity.declared.extend(declared.iter().copied());
        }
    }
    for (namespace, egresses) in by_namespace.into_iter().filter(|(_, e)| e.len() > 1) {
        let names: Vec<&str> = egresses.into_iter().collect();
        resolution.warn(
            "overlap",
            format!(
                "namespace {namespace}'s pods match Egresses {}: Antrea picks one at random",
                names.join(", ")
            ),
        );
    }
}

/// OVN-Kubernetes: every IP an EgressIP lists (any one of them may carry a connection).
fn ovn(model: &Model, objects: &EgressObjects, resolution: &mut Resolution) {
    for egress in &objects.ovn {
        let namespaces: BTreeSet<String> = match &egress.pods {
            Some(pods) => picked_namespaces(model, Some(&egress.namespaces), Some(pods)),
            None => model
                .namespaces()
                .filter(|(_, namespace)| egress.namespaces.selects(&namespace.labels))
                .map(|(name, _)| name.to_owned())
                .collect(),
        };
        for namespace in namespaces {
            let identity = resolution.add(&namespace, format!("EgressIP {}", egress.name));
            identity.observed.extend(egress.ips.iter().copied());
        }
    }
}

/// AKS: pods opting into a StaticGatewayConfiguration of their namespace leave through its
/// prefix.
fn aks(model: &Model, objects: &EgressObjects, resolution: &mut Resolution) {
    for pod in model.all_pods().filter(|pod| !pod.ips().is_empty()) {
        let Some(name) = pod.annotations().label(AKS_GATEWAY) else {
            continue;
        };
        let key = (pod.namespace().to_owned(), name.to_owned());
        match objects.aks.get(&key) {
            Some(nets) if !nets.is_empty() => {
                let via = format!("StaticGatewayConfiguration {}/{name}", pod.namespace());
                resolution
                    .add(pod.namespace(), via)
                    .declared
                    .extend(nets.iter().copied());
            }
            Some(_) => resolution.warn(
                "unresolved",
                format!(
                    "StaticGatewayConfiguration {}/{name} has no egressIpPrefix yet",
                    pod.namespace()
                ),
            ),
            None => resolution.warn(
                "missing_policy",
                format!(
                    "pod {}/{} names StaticGatewayConfiguration {name}, which does not exist in its namespace",
                    pod.namespace(),
                    pod.name()
                ),
            ),
        }
    }
}

/// Namespaces without an identity leave through the nodes their pods run on.
fn node_fallback(model: &Model, resolution: &mut Resolution) {
    let mut fallback: BTreeMap<String, Identity> = BTreeMap::new();
    for pod in model.all_pods().filter(|pod| !pod.ips().is_empty()) {
        if resolution.identities.contains_key(pod.namespace()) {
            continue;
        }
        let Some(node) = pod.node().and_then(|node| model.node(node)) else {
            continue;
        };
        let identity = fallback.entry(pod.namespace().to_owned()).or_default();
        identity.weak = true;
        identity.via.insert(format!("node {}", node.name));
        identity.observed.extend(node.internal_ips.iter().copied());
    }
    if !fallback.is_empty() {
        resolution.warn(
            "weak",
            format!(
                "{} namespace(s) leave through their nodes' addresses, which every namespace on those nodes shares",
                fallback.len()
            ),
        );
    }
    resolution.identities.extend(fallback);
}

/// Two namespaces whose (strong) addresses overlap, an address or a range: a firewall rule
/// for one admits the other.
fn shared_warnings(resolution: &mut Resolution) {
    let nets: Vec<(&str, IpNet)> = resolution
        .identities
        .iter()
        .filter(|(_, identity)| !identity.weak)
        .flat_map(|(namespace, identity)| {
            identity
                .nets()
                .into_iter()
                .map(move |net| (namespace.as_str(), net))
        })
        .collect();
    // The overlap (the narrower net) -> the namespaces sharing it.
    let mut owners: BTreeMap<IpNet, BTreeSet<&str>> = BTreeMap::new();
    for (i, (a, net_a)) in nets.iter().enumerate() {
        for (b, net_b) in &nets[i + 1..] {
            if a == b {
                continue;
            }
            let overlap = if net_a.contains(net_b) {
                *net_b
            } else if net_b.contains(net_a) {
                *net_a
            } else {
                continue;
            };
            owners.entry(overlap).or_default().extend([*a, *b]);
        }
    }
    let mut shared: BTreeMap<Vec<&str>, Vec<IpNet>> = BTreeMap::new();
    for (net, namespaces) in owners {
        shared
            .entry(namespaces.into_iter().collect())
            .or_default()
            .push(net);
    }
    let warnings: Vec<String> = shared
        .into_iter()
        .map(|(namespaces, nets)| {
            let nets: Vec<String> = nets
                .iter()
                .map(|net| match net.prefix_len() == net.max_prefix_len() {
                    true => net.addr().to_string(),
                    false => net.to_string(),
                })
                .collect();
            format!(
                "namespaces {} share egress address(es) {}: a firewall rule for one admits the others",
                namespaces.join(", "),
                nets.join(", ")
            )
        })
        .collect();
    for message in warnings {
        resolution.warn("shared_identity", message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::objects::{Inventory, NamespaceInfo, NodeInfo, PodInfo};
    use serde_json::json;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn namespace(
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> NamespaceInfo {
        NamespaceInfo {
            name: name.into(),
            labels: map(labels),
            annotations: map(annotations),
        }
    }

    fn pod(
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        ips: &[&str],
        node: &str,
    ) -> PodInfo {
        PodInfo {
            uid: format!("{namespace}/{name}"),
            name: name.into(),
            namespace: namespace.into(),
            labels: map(labels),
            node: Some(node.into()),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            ..PodInfo::default()
        }
    }

    fn node(name: &str, labels: &[(&str, &str)], ip: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: map(labels),
            internal_ips: vec![ip.parse().unwrap()],
            created_ms: None,
        }
    }

    fn cluster(namespaces: Vec<NamespaceInfo>, pods: Vec<PodInfo>) -> Model {
        let inventory = Inventory {
            namespaces,
            pods,
            nodes: vec![
                node("node-a", &[("egress", "true")], "10.0.0.1"),
                node("node-b", &[("egress", "true")], "10.0.0.2"),
                node("node-c", &[], "10.0.0.3"),
            ],
            ..Inventory::default()
        };
        Model::from_inventory(&inventory, Vec::new())
    }

    fn objects(items: &[(Resource, serde_json::Value)]) -> EgressObjects {
        let mut objects = EgressObjects::default();
        for (resource, value) in items {
            objects.add(*resource, value);
        }
        assert!(objects.unreadable.is_empty(), "{:?}", objects.unreadable);
        objects
    }

    fn ips(identity: &Identity) -> Vec<String> {
        identity.observed.iter().map(ToString::to_string).collect()
    }

    fn nets(identity: &Identity) -> Vec<String> {
        identity.declared.iter().map(ToString::to_string).collect()
    }

    fn kinds(resolution: &Resolution) -> Vec<&'static str> {
        resolution.warnings.iter().map(|w| w.kind).collect()
    }

    fn calico_objects(support: &str) -> Vec<(Resource, serde_json::Value)> {
        vec![
            (
                Resource::FelixConfiguration,
                json!({"metadata": {"name": "default"}, "spec": {"egressIPSupport": support}}),
            ),
            (
                Resource::IpPool,
                json!({"metadata": {"name": "egress-red"}, "spec": {"cidr": "192.0.2.0/28", "nodeSelector": "!all()"}}),
            ),
            (
                Resource::IpPool,
                json!({"metadata": {"name": "egress-nat"}, "spec": {"cidr": "198.51.100.0/28", "natOutgoing": true}}),
            ),
            (
                Resource::EgressGateway,
                json!({"metadata": {"namespace": "egw", "name": "red"},
                       "spec": {"ipPools": [{"name": "egress-red"}],
                                "aws": {"elasticIPs": ["203.0.113.7"]},
                                "template": {"metadata": {"labels": {"egress-code": "red"}}}}}),
            ),
            (
                Resource::EgressGateway,
                json!({"metadata": {"namespace": "egw", "name": "blue"},
                       "spec": {"ipPools": [{"cidr": "198.51.100.0/28"}],
                                "template": {"metadata": {"labels": {"egress-code": "blue"}}}}}),
            ),
            (
                Resource::EgressGatewayPolicy,
                json!({"metadata": {"name": "split"}, "spec": {"rules": [
                    {"destination": {"cidr": "10.0.0.0/8"}},
                    {"gateway": {"selector": "egress-code == 'blue'",
                                 "namespaceSelector": "projectcalico.org/name == 'egw'"}}]}}),
            ),
        ]
    }

    fn calico_model() -> Model {
        cluster(
            vec![
                namespace("egw", &[], &[]),
                namespace(
                    "payments",
                    &[],
                    &[
                        (CALICO_SELECTOR, "egress-code == 'red'"),
                        (CALICO_NAMESPACE_SELECTOR, "projectcalico.org/name == 'egw'"),
                    ],
                ),
                namespace("billing", &[], &[(CALICO_POLICY, "split")]),
                namespace("web", &[], &[(CALICO_POLICY, "gone")]),
                namespace("plain", &[], &[]),
            ],
            vec![
                pod(
                    "egw",
                    "red-1",
                    &[("egress-code", "red")],
                    &["192.0.2.3"],
                    "node-a",
                ),
                pod(
                    "egw",
                    "red-2",
                    &[("egress-code", "red")],
                    &["192.0.2.4", "2001:db8::4"],
                    "node-b",
                ),
                pod(
                    "egw",
                    "blue-1",
                    &[("egress-code", "blue")],
                    &["198.51.100.5"],
                    "node-c",
                ),
                pod(
                    "payments",
                    "api-1",
                    &[("app", "api")],
                    &["10.244.0.5"],
                    "node-c",
                ),
                pod(
                    "plain",
                    "web-1",
                    &[("app", "web")],
                    &["10.244.0.6"],
                    "node-c",
                ),
            ],
        )
    }

    #[test]
    fn calico_namespaces_resolve_to_their_gateway_pods_pools_and_elastic_ips() {
        let mut model = calico_model();
        // A pod that carries a gateway's labels but is no EgressGateway's lends nothing.
        let mut impostor = pod(
            "egw",
            "impostor",
            &[("egress-code", "red")],
            &["10.244.9.9"],
            "node-c",
        );
        impostor.labels.insert("other".into(), "x".into());
        let mut objects_list = calico_objects("EnabledPerNamespace");
        objects_list.retain(|(resource, value)| {
            *resource != Resource::EgressGateway || value["metadata"]["name"] != "red"
        });
        objects_list.push((
            Resource::EgressGateway,
            json!({"metadata": {"namespace": "egw", "name": "red"},
                   "spec": {"ipPools": [{"name": "egress-red"}], "aws": {"elasticIPs": ["203.0.113.7"]},
                            "template": {"metadata": {"labels": {"egress-code": "red", "role": "gateway"}}}}}),
        ));
        model = {
            let mut pods: Vec<PodInfo> = vec![
                pod(
                    "egw",
                    "red-1",
                    &[("egress-code", "red"), ("role", "gateway")],
                    &["192.0.2.3"],
                    "node-a",
                ),
                pod(
                    "egw",
                    "red-2",
                    &[("egress-code", "red"), ("role", "gateway")],
                    &["192.0.2.4", "2001:db8::4"],
                    "node-b",
                ),
                pod(
                    "egw",
                    "blue-1",
                    &[("egress-code", "blue")],
                    &["198.51.100.5"],
                    "node-c",
                ),
                pod(
                    "payments",
                    "api-1",
                    &[("app", "api")],
                    &["10.244.0.5"],
                    "node-c",
                ),
            ];
            pods.push(impostor);
            let namespaces = model
                .namespaces()
                .map(|(name, namespace)| NamespaceInfo {
                    name: name.to_owned(),
                    labels: namespace
                        .labels
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    annotations: namespace
                        .annotations
                        .iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                })
                .collect();
            cluster(namespaces, pods)
        };
        let objects = objects(&objects_list);
        let resolution = resolve(
            Mechanism::Calico,
            &model,
            &objects,
            &EgressConfig::default(),
        );
        let payments = &resolution.identities["payments"];
        assert_eq!(ips(payments), ["192.0.2.3", "192.0.2.4", "2001:db8::4"]);
        assert_eq!(nets(payments), ["192.0.2.0/28", "203.0.113.7/32"]);
        assert!(!payments.weak);
        // A policy's gateway rule through a natOutgoing pool (named by CIDR): the gateway's node
        // address, flagged, and the pool not declared.
        let billing = &resolution.identities["billing"];
        assert_eq!(ips(billing), ["10.0.0.3"]);
        assert!(billing.declared.is_empty());
        // A policy that does not exist blocks the namespace's egress: no identity, a warning.
        assert!(!resolution.identities.contains_key("web"));
        assert!(!resolution.identities.contains_key("plain"));
        assert_eq!(kinds(&resolution), ["missing_policy", "weak"]);
        assert!(resolution
            .warnings
            .iter()
            .next()
            .unwrap()
            .message
            .contains("gone"));
    }

    #[test]
    fn calico_follows_felix_precedence_between_pod_and_namespace() {
        let objects = objects(&calico_objects("EnabledPerNamespaceOrPerPod"));
        let red = [
            (CALICO_SELECTOR, "egress-code == 'red'"),
            (CALICO_NAMESPACE_SELECTOR, "projectcalico.org/name == 'egw'"),
        ];
        let gateways = || {
            vec![
                pod(
                    "egw",
                    "red-1",
                    &[("egress-code", "red")],
                    &["192.0.2.3"],
                    "node-a",
                ),
                pod(
                    "egw",
                    "blue-1",
                    &[("egress-code", "blue")],
                    &["198.51.100.5"],
                    "node-c",
                ),
            ]
        };
        let case = |namespace_annotations: &[(&str, &str)], pod_annotations: &[(&str, &str)]| {
            let mut pods = gateways();
            let mut client = pod("team", "app-1", &[], &["10.244.0.5"], "node-c");
            client.annotations = map(pod_annotations);
            pods.push(client);
            let model = cluster(
                vec![
                    namespace("egw", &[], &[]),
                    namespace("team", &[], namespace_annotations),
                ],
                pods,
            );
            let resolution = resolve(
                Mechanism::Calico,
                &model,
                &objects,
                &EgressConfig::default(),
            );
            let found = resolution
                .identities
                .get("team")
                .map(ips)
                .unwrap_or_default();
            (found, kinds(&resolution))
        };
        // The namespace's policy (which exists) beats the pod's selector.
        assert_eq!(
            case(&[(CALICO_POLICY, "split")], &red),
            (vec!["10.0.0.3".to_owned()], vec!["weak"])
        );
        // The pod's policy that does not exist gives way to the namespace's that does.
        assert_eq!(
            case(&[(CALICO_POLICY, "split")], &[(CALICO_POLICY, "gone")]),
            (vec!["10.0.0.3".to_owned()], vec!["weak"])
        );
        // A namespace policy that does not exist blocks even a pod with a selector.
        assert_eq!(
            case(&[(CALICO_POLICY, "gone")], &red),
            (Vec::new(), vec!["missing_policy"])
        );
        // The pod's selector beats the namespace's.
        let (found, warnings) = case(
            &[
                (CALICO_SELECTOR, "egress-code == 'blue'"),
                (CALICO_NAMESPACE_SELECTOR, "projectcalico.org/name == 'egw'"),
            ],
            &red,
        );
        assert_eq!(
            found,
            ["10.0.0.3", "192.0.2.3"],
            "both: the namespace's and the pod's"
        );
        assert!(warnings.contains(&"pod_override"));
    }

    #[test]
    fn calico_without_egress_support_has_no_identities_and_pods_override_only_per_pod() {
        let model = calico_model();
        let disabled = objects(&calico_objects("Disabled"));
        let resolution = resolve(
            Mechanism::Calico,
            &model,
            &disabled,
            &EgressConfig::default(),
        );
        assert!(resolution.identities.is_empty());

        let mut pods: Vec<PodInfo> = Vec::new();
        let mut override_pod = pod("plain", "batch-1", &[], &["10.244.0.9"], "node-c");
        override_pod.annotations = map(&[
            (CALICO_SELECTOR, "egress-code == 'red'"),
            (CALICO_NAMESPACE_SELECTOR, "projectcalico.org/name == 'egw'"),
        ]);
        pods.push(override_pod);
        pods.push(pod(
            "egw",
            "red-1",
            &[("egress-code", "red")],
            &["192.0.2.3"],
            "node-a",
        ));
        let model = cluster(
            vec![namespace("egw", &[], &[]), namespace("plain", &[], &[])],
            pods,
        );
        let per_namespace = objects(&calico_objects("EnabledPerNamespace"));
        let resolution = resolve(
            Mechanism::Calico,
            &model,
            &per_namespace,
            &EgressConfig::default(),
        );
        assert!(resolution.identities.is_empty());
        let per_pod = objects(&calico_objects("EnabledPerNamespaceOrPerPod"));
        let resolution = resolve(
            Mechanism::Calico,
            &model,
            &per_pod,
            &EgressConfig::default(),
        );
        assert_eq!(ips(&resolution.identities["plain"]), ["192.0.2.3"]);
        assert_eq!(kinds(&resolution), ["pod_override"]);
    }

    #[test]
    fn cilium_uses_egress_ip_or_the_configured_interface_address_and_never_guesses() {
        let model = cluster(
            vec![
                namespace("payments", &[("team", "pay")], &[]),
                namespace("web", &[], &[]),
            ],
            vec![
                pod(
                    "payments",
                    "api-1",
                    &[("app", "api")],
                    &["10.244.0.5"],
                    "node-c",
                ),
                pod("web", "web-1", &[("app", "web")], &["10.244.0.6"], "node-c"),
            ],
        );
        let objects = objects(&[
            (
                Resource::CiliumPolicy,
                json!({"metadata": {"name": "pay"}, "spec": {
                    "selectors": [{"namespaceSelector": {"matchLabels": {"team": "pay"}}}],
                    "destinationCIDRs": ["0.0.0.0/0"],
                    "egressGateway": {"nodeSelector": {"matchLabels": {"egress": "true"}}, "egressIP": "192.0.2.10"}}}),
            ),
            (
                Resource::CiliumPolicy,
                json!({"metadata": {"name": "web"}, "spec": {
                    "selectors": [{"podSelector": {"matchLabels": {"io.kubernetes.pod.namespace": "web"}}}],
                    "destinationCIDRs": ["0.0.0.0/0"],
                    "egressGateway": {"nodeSelector": {"matchLabels": {"egress": "true"}}, "interface": "eth1"}}}),
            ),
        ]);
        let mut config = EgressConfig::default();
        let resolution = resolve(Mechanism::Cilium, &model, &objects, &config);
        assert_eq!(ips(&resolution.identities["payments"]), ["192.0.2.10"]);
        assert!(!resolution.identities.contains_key("web"));
        assert_eq!(kinds(&resolution), ["unresolved"]);
        assert!(resolution
            .warnings
            .iter()
            .next()
            .unwrap()
            .message
            .contains("cilium_interfaces.node-a.eth1"));

        config.cilium_interfaces.insert(
            "node-a".into(),
            [("eth1".to_owned(), vec!["192.0.2.20".parse().unwrap()])].into(),
        );
        let resolution = resolve(Mechanism::Cilium, &model, &objects, &config);
        assert_eq!(ips(&resolution.identities["web"]), ["192.0.2.20"]);
        assert!(resolution.warnings.is_empty());
    }

    #[test]
    fn isovalent_reads_the_active_gateways_from_status() {
        let model = cluster(
            vec![namespace("payments", &[], &[])],
            vec![pod("payments", "api-1", &[], &["10.244.0.5"], "node-c")],
        );
        let objects = objects(&[(
            Resource::IsovalentPolicy,
            json!({"metadata": {"name": "pay"}, "spec": {
                "selectors": [{"podSelector": {"matchLabels": {"io.kubernetes.pod.namespace": "payments"}}}],
                "egressGroups": [{"nodeSelector": {"matchLabels": {"egress": "true"}}, "interface": "eth1"}]},
              "status": {"groupStatuses": [{"egressIPByGatewayIP": {"10.0.0.1": "192.0.2.30", "10.0.0.2": "192.0.2.31"}}]}}),
        )]);
        let resolution = resolve(
            Mechanism::Isovalent,
            &model,
            &objects,
            &EgressConfig::default(),
        );
        assert_eq!(
            ips(&resolution.identities["payments"]),
            ["192.0.2.30", "192.0.2.31"]
        );
        assert!(resolution.warnings.is_empty());
    }

    #[test]
    fn antrea_prefers_the_assigned_ip_declares_the_pool_and_warns_of_overlaps() {
        let model = cluster(
            vec![namespace("payments", &[("team", "pay")], &[])],
            vec![pod(
                "payments",
                "api-1",
                &[("app", "api")],
                &["10.244.0.5"],
                "node-c",
            )],
        );
        let objects = objects(&[
            (
                Resource::AntreaEgress,
                json!({"metadata": {"name": "pay"}, "spec": {
                    "appliedTo": {"namespaceSelector": {"matchLabels": {"team": "pay"}}},
                    "externalIPPool": "pool"}, "status": {"egressIP": "192.0.2.40", "egressNode": "node-a"}}),
            ),
            (
                Resource::AntreaEgress,
                json!({"metadata": {"name": "api"}, "spec": {
                    "appliedTo": {"podSelector": {"matchLabels": {"app": "api"}}},
                    "egressIP": "192.0.2.50"}, "status": {"egressIP": ""}}),
            ),
            (
                Resource::AntreaEgress,
                json!({"metadata": {"name": "nothing"}, "spec": {"appliedTo": {}, "egressIP": "192.0.2.60"}}),
            ),
            (
                Resource::AntreaPool,
                json!({"metadata": {"name": "pool"}, "spec": {"ipRanges": [{"cidr": "192.0.2.32/28"}]}}),
            ),
        ]);
        let resolution = resolve(
            Mechanism::Antrea,
            &model,
            &objects,
            &EgressConfig::default(),
        );
        let payments = &resolution.identities["payments"];
        assert_eq!(ips(payments), ["192.0.2.40", "192.0.2.50"]);
        assert_eq!(nets(payments), ["192.0.2.32/28"]);
        assert_eq!(kinds(&resolution), ["overlap"]);
    }

    #[test]
    fn ovn_publishes_every_listed_ip_and_aks_its_prefix() {
        let mut aks_pod = pod("web", "web-1", &[], &["10.244.0.6"], "node-c");
        aks_pod.annotations = map(&[(AKS_GATEWAY, "gw")]);
        let mut missing = pod("web", "web-2", &[], &["10.244.0.7"], "node-c");
        missing.annotations = map(&[(AKS_GATEWAY, "other")]);
        let model = cluster(
            vec![
                namespace("payments", &[("env", "prod")], &[]),
                namespace("web", &[], &[]),
            ],
            vec![aks_pod, missing],
        );
        let ovn = objects(&[(
            Resource::OvnEgressIp,
            json!({"metadata": {"name": "prod"}, "spec": {
                "egressIPs": ["192.0.2.70", "2001:db8::70"],
                "namespaceSelector": {"matchLabels": {"env": "prod"}}},
              "status": {"items": [{"node": "node-a", "egressIP": "192.0.2.70"}]}}),
        )]);
        let resolution = resolve(Mechanism::Ovn, &model, &ovn, &EgressConfig::default());
        assert_eq!(
            ips(&resolution.identities["payments"]),
            ["192.0.2.70", "2001:db8::70"]
        );

        let aks = objects(&[(
            Resource::AksGateway,
            json!({"metadata": {"namespace": "web", "name": "gw"}, "spec": {"gatewayNodepoolName": "gw"},
                   "status": {"egressIpPrefix": "20.1.2.8/30"}}),
        )]);
        let resolution = resolve(Mechanism::Aks, &model, &aks, &EgressConfig::default());
        assert_eq!(nets(&resolution.identities["web"]), ["20.1.2.8/30"]);
        assert_eq!(kinds(&resolution), ["missing_policy"]);
    }

    #[test]
    fn node_fallback_is_weak_and_shared_addresses_are_warned_of() {
        let model = cluster(
            vec![
                namespace("payments", &[("tier", "a")], &[]),
                namespace("billing", &[], &[]),
                namespace("web", &[], &[]),
            ],
            vec![
                pod("payments", "api-1", &[], &["10.244.0.5"], "node-a"),
                pod("billing", "api-1", &[], &["10.244.0.6"], "node-b"),
                pod("web", "web-1", &[], &["10.244.0.7"], "node-a"),
            ],
        );
        let shared = objects(&[(
            Resource::OvnEgressIp,
            json!({"metadata": {"name": "shared"}, "spec": {"egressIPs": ["192.0.2.80"],
                "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "Exists"}]}}}),
        )]);
        // Namespaces' labels here lack the automatic name label: select all with an empty selector.
        let shared_all = objects(&[(
            Resource::OvnEgressIp,
            json!({"metadata": {"name": "shared"}, "spec": {"egressIPs": ["192.0.2.80"], "namespaceSelector": {}}}),
        )]);
        assert!(
            resolve(Mechanism::Ovn, &model, &shared, &EgressConfig::default())
                .identities
                .is_empty()
        );
        let resolution = resolve(
            Mechanism::Ovn,
            &model,
            &shared_all,
            &EgressConfig::default(),
        );
        assert_eq!(kinds(&resolution), ["shared_identity"]);
        assert!(resolution
            .warnings
            .iter()
            .next()
            .unwrap()
            .message
            .contains("billing, payments, web"));

        let config = EgressConfig {
            node_fallback: true,
            namespace_selector: Some("tier".into()),
            ..EgressConfig::default()
        };
        let resolution = resolve(Mechanism::Node, &model, &EgressObjects::default(), &config);
        assert_eq!(
            resolution.identities.keys().collect::<Vec<_>>(),
            ["payments"]
        );
        assert!(resolution.identities["payments"].weak);
        assert_eq!(ips(&resolution.identities["payments"]), ["10.0.0.1"]);
        // Node addresses are shared by construction: flagged weak, not warned of as shared.
        assert_eq!(kinds(&resolution), ["weak"]);
    }

    #[test]
    fn selectors_combine_as_each_mechanism_says() {
        let model = cluster(
            vec![
                namespace("payments", &[("team", "pay")], &[]),
                namespace("web", &[("team", "web")], &[]),
            ],
            vec![
                pod(
                    "payments",
                    "api-1",
                    &[("app", "api")],
                    &["10.244.0.5"],
                    "node-c",
                ),
                pod("web", "api-1", &[("app", "api")], &["10.244.0.6"], "node-c"),
                pod("web", "web-1", &[("app", "web")], &["10.244.0.7"], "node-c"),
            ],
        );
        // Antrea: appliedTo's namespace and pod selectors both apply.
        let antrea = objects(&[(
            Resource::AntreaEgress,
            json!({"metadata": {"name": "pay-api"}, "spec": {"appliedTo": {
                "namespaceSelector": {"matchLabels": {"team": "pay"}},
                "podSelector": {"matchLabels": {"app": "api"}}}, "egressIP": "192.0.2.90"}}),
        )]);
        let resolution = resolve(Mechanism::Antrea, &model, &antrea, &EgressConfig::default());
        assert_eq!(
            resolution.identities.keys().collect::<Vec<_>>(),
            ["payments"]
        );
        // OVN: the pod selector narrows the namespace selector.
        let ovn = objects(&[(
            Resource::OvnEgressIp,
            json!({"metadata": {"name": "web-only"}, "spec": {"egressIPs": ["192.0.2.91"],
                "namespaceSelector": {"matchLabels": {"team": "web"}},
                "podSelector": {"matchLabels": {"app": "web"}}}}),
        )]);
        let resolution = resolve(Mechanism::Ovn, &model, &ovn, &EgressConfig::default());
        assert_eq!(resolution.identities.keys().collect::<Vec<_>>(), ["web"]);
        // Cilium ignores a gateway with both interface and egressIP: so does threatflow.
        let cilium = objects(&[(
            Resource::CiliumPolicy,
            json!({"metadata": {"name": "both"}, "spec": {
                "selectors": [{"namespaceSelector": {"matchLabels": {"team": "pay"}}}],
                "destinationCIDRs": ["0.0.0.0/0"],
                "egressGateway": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                                  "interface": "eth1", "egressIP": "192.0.2.92"}}}),
        )]);
        let resolution = resolve(Mechanism::Cilium, &model, &cilium, &EgressConfig::default());
        assert!(resolution.identities.is_empty());
        assert_eq!(kinds(&resolution), ["unresolved"]);
    }

    #[test]
    fn overlapping_ranges_are_shared_identities_too() {
        let model = cluster(
            vec![
                namespace("a", &[("x", "1")], &[]),
                namespace("b", &[("x", "2")], &[]),
            ],
            vec![
                pod("a", "p", &[], &["10.244.0.5"], "node-c"),
                pod("b", "p", &[], &["10.244.0.6"], "node-c"),
            ],
        );
        let antrea = objects(&[
            (
                Resource::AntreaEgress,
                json!({"metadata": {"name": "a"}, "spec": {"appliedTo": {"namespaceSelector": {"matchLabels": {"x": "1"}}},
                    "externalIPPool": "pool"}, "status": {"egressIP": "192.0.2.33"}}),
            ),
            (
                Resource::AntreaEgress,
                json!({"metadata": {"name": "b"}, "spec": {"appliedTo": {"namespaceSelector": {"matchLabels": {"x": "2"}}},
                    "externalIPPool": "pool"}, "status": {"egressIP": "192.0.2.34"}}),
            ),
            (
                Resource::AntreaPool,
                json!({"metadata": {"name": "pool"}, "spec": {"ipRanges": [{"cidr": "192.0.2.32/28"}]}}),
            ),
        ]);
        let resolution = resolve(Mechanism::Antrea, &model, &antrea, &EgressConfig::default());
        assert_eq!(kinds(&resolution), ["shared_identity"]);
        let message = &resolution.warnings.iter().next().unwrap().message;
        assert!(
            message.contains("a, b") && message.contains("192.0.2.32/28"),
            "{message}"
        );
    }

    #[test]
    fn detection_prefers_the_specific_mechanism() {
        let served = |resources: &[&str]| -> BTreeSet<String> {
            resources.iter().map(|r| (*r).to_owned()).collect()
        };
        assert_eq!(
            Mechanism::detect(&served(&[
                "cilium.io/ciliumegressgatewaypolicies",
                "cilium.io/ciliumnodes"
            ])),
            Some(Mechanism::Cilium)
        );
        assert_eq!(Mechanism::detect(&served(&["cilium.io/ciliumnodes"])), None);
        assert_eq!(
            Mechanism::detect(&served(&[
                "cilium.io/ciliumegressgatewaypolicies",
                "isovalent.com/isovalentegressgatewaypolicies"
            ])),
            Some(Mechanism::Isovalent)
        );
        assert_eq!(
            Mechanism::detect(&served(&[
                "operator.tigera.io/egressgateways",
                "projectcalico.org/ippools"
            ])),
            Some(Mechanism::Calico)
        );
        assert_eq!(
            Mechanism::detect(&served(&[
                "crd.antrea.io/egresses",
                "crd.antrea.io/externalippools"
            ])),
            Some(Mechanism::Antrea)
        );
        assert_eq!(
            Mechanism::detect(&served(&["projectcalico.org/ippools"])),
            None
        );
    }
}
