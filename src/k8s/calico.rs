//! Calico's `projectcalico.org/v3` wire types that threatflow writes: `GlobalNetworkSet`,
//! `GlobalNetworkPolicy` (and its staged form) with the full rule model, and `Tier`; the
//! trimmed policy it reads (`PolicySelector`), and the pseudo-labels of Calico's selectors.
//!
//! Field names and shapes follow Calico's API reference; optional fields are left out of the
//! serialized object when unset, so the same input always serializes to the same bytes. What
//! goes into the objects is decided by the stages that write them (feeds, policy import); this
//! module only speaks the wire format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::apply::Object;

pub const API_VERSION: &str = "projectcalico.org/v3";
pub const GROUP: &str = "projectcalico.org";

/// The labels Calico's selectors know besides an object's own.
pub mod labels {
    /// A workload's namespace.
    pub const NAMESPACE: &str = "projectcalico.org/namespace";
    /// A workload's orchestrator (`k8s` for pods).
    pub const ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
    /// A namespace's (or a policy's) name.
    pub const NAME: &str = "projectcalico.org/name";
    /// A policy's tier.
    pub const TIER: &str = "projectcalico.org/tier";
    /// A workload's namespace's labels, as `pcns.<key>`.
    pub const NAMESPACE_PREFIX: &str = "pcns.";
}

/// A GlobalNetworkPolicy as threatflow reads it (the firewall address sync publishes what
/// policies select): its metadata, tier and selector; the rules are skipped unread.
#[derive(Clone, Debug, Deserialize)]
pub struct PolicySelector {
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(default)]
    pub spec: PolicySelectorSpec,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySelectorSpec {
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub selector: Option<String>,
    #[serde(default)]
    pub namespace_selector: Option<String>,
}

impl PolicySelector {
    /// The tier: `default` when unset, as in Calico.
    pub fn tier(&self) -> &str {
        self.spec
            .tier
            .as_deref()
            .filter(|tier| !tier.is_empty())
            .unwrap_or("default")
    }
}

impl kube::Resource for PolicySelector {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "GlobalNetworkPolicy".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v3".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "globalnetworkpolicies".into()
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.metadata
    }
}

/// `metadata`: what threatflow sets on an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A set of networks, selected by its labels (cluster-wide).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkSet {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: GlobalNetworkSetSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkSetSpec {
    /// CIDRs (a single address as /32 or /128).
    #[serde(default)]
    pub nets: Vec<String>,
    /// Domains an egress Allow rule may reach (exact, or `*.` wildcards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_egress_domains: Vec<String>,
}

impl GlobalNetworkSet {
    pub fn new(metadata: ObjectMeta, spec: GlobalNetworkSetSpec) -> GlobalNetworkSet {
        GlobalNetworkSet {
            api_version: API_VERSION.into(),
            kind: "GlobalNetworkSet".into(),
            metadata,
            spec,
        }
    }
}

/// A policy applying to every endpoint its selector picks, in a tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PolicySpec,
}

impl GlobalNetworkPolicy {
    pub fn new(metadata: ObjectMeta, spec: PolicySpec) -> GlobalNetworkPolicy {
        GlobalNetworkPolicy {
            api_version: API_VERSION.into(),
            kind: "GlobalNetworkPolicy".into(),
            metadata,
            spec,
        }
    }
}

/// A policy that is recorded (and shows in flow logs as `staged:`) but not enforced, for review.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagedGlobalNetworkPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: StagedPolicySpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagedPolicySpec {
    /// `Set` stages the policy; `Delete` stages its removal.
    pub staged_action: StagedAction,
    #[serde(flatten)]
    pub policy: PolicySpec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StagedAction {
    Set,
    Delete,
}

impl StagedGlobalNetworkPolicy {
    pub fn new(metadata: ObjectMeta, policy: PolicySpec) -> StagedGlobalNetworkPolicy {
        StagedGlobalNetworkPolicy {
            api_version: API_VERSION.into(),
            kind: "StagedGlobalNetworkPolicy".into(),
            metadata,
            spec: StagedPolicySpec {
                staged_action: StagedAction::Set,
                policy,
            },
        }
    }
}

/// The spec of a (staged) GlobalNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// The tier; the policy's name must start with `<tier>.` outside the default tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Evaluation order within the tier: lower first; unset last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// The endpoints the policy applies to (Calico selector syntax).
    pub selector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    pub types: Vec<PolicyType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub do_not_track: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pre_dnat: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub apply_on_forward: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// What a rule does with the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    /// Hands the decision to the next tier.
    Pass,
    Log,
}

/// A protocol by name (`TCP`, `UDP`, `ICMP`, `ICMPv6`, `SCTP`, `UDPLite`) or number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Protocol {
    Name(String),
    Number(u8),
}

/// A port: a number, a range `"from:to"`, or a named port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Port {
    Number(u16),
    Range(String),
}

impl Port {
    /// `from` alone, or the range `from:to`.
    pub fn range(from: u16, to: u16) -> Port {
        if from == to {
            Port::Number(from)
        } else {
            Port::Range(format!("{from}:{to}"))
        }
    }
}

/// ICMP type and (optionally) code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icmp {
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// One rule of a policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    /// 4 or 6: the rule matches only that IP version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Icmp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<Icmp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RuleMetadata>,
}

impl Rule {
    /// A rule that matches everything.
    pub fn any(action: Action) -> Rule {
        Rule {
            action,
            protocol: None,
            not_protocol: None,
            ip_version: None,
            icmp: None,
            not_icmp: None,
            source: None,
            destination: None,
            metadata: None,
        }
    }
}

/// Annotations on one rule (where it came from).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Which endpoints one side of a rule matches; every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Port>,
    /// Egress destinations by domain (Allow rules only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

impl EntityRule {
    pub fn selector(selector: impl Into<String>) -> EntityRule {
        EntityRule {
            selector: Some(selector.into()),
            ..EntityRule::default()
        }
    }
}

/// A tier: an ordered group of policies with a default for what none of them decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: TierSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TierSpec {
    /// Lower tiers are evaluated first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// What happens to traffic a policy of the tier selects but no rule decides: `Deny` (the
    /// default) or `Pass` to the next tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<Action>,
}

impl Tier {
    pub fn new(metadata: ObjectMeta, order: f64, default_action: Action) -> Tier {
        Tier {
            api_version: API_VERSION.into(),
            kind: "Tier".into(),
            metadata,
            spec: TierSpec {
                order: Some(order),
                default_action: Some(default_action),
            },
        }
    }
}

/// A network set of `nets` named `name` with `labels`, ready for the apply path.
pub fn network_set(name: String, labels: BTreeMap<String, String>, nets: Vec<String>) -> Object {
    let metadata = ObjectMeta {
        name,
        labels,
        annotations: BTreeMap::new(),
    };
    let spec = GlobalNetworkSetSpec {
        nets,
        ..GlobalNetworkSetSpec::default()
    };
    Object::NetworkSet(GlobalNetworkSet::new(metadata, spec))
}

/// A tier evaluated at `order` that passes what its policies do not decide to the next tier.
pub fn passing_tier(name: String, order: f64) -> Object {
    let metadata = ObjectMeta {
        name,
        ..ObjectMeta::default()
    };
    Object::Tier(Tier::new(metadata, order, Action::Pass))
}

/// A policy named `name` in `tier` that denies traffic to and from the global network sets
/// labelled `label=value` and passes everything else to the next tier. The selector matches
/// only global network sets (`!has(projectcalico.org/namespace)`), never pods that happen to
/// carry the same label. `value` must already be a validated label value, so it cannot change
/// the selector.
pub fn deny_sets_policy(name: String, tier: &str, order: f64, label: &str, value: &str) -> Object {
    let metadata = ObjectMeta {
        name,
        ..ObjectMeta::default()
    };
    Object::Policy(deny_sets(metadata, tier, order, label, value))
}

fn deny_sets(
    metadata: ObjectMeta,
    tier: &str,
    order: f64,
    label: &str,
    value: &str,
) -> GlobalNetworkPolicy {
    let selector = format!("{label} == '{value}' && !has(projectcalico.org/namespace)");
    let deny = |source: bool| Rule {
        source: source.then(|| EntityRule::selector(&selector)),
        destination: (!source).then(|| EntityRule::selector(&selector)),
        ..Rule::any(Action::Deny)
    };
    GlobalNetworkPolicy::new(
        metadata,
        PolicySpec {
            tier: Some(tier.to_owned()),
            order: Some(order),
            selector: "all()".into(),
            types: vec![PolicyType::Ingress, PolicyType::Egress],
            ingress: vec![deny(true), Rule::any(Action::Pass)],
            egress: vec![deny(false), Rule::any(Action::Pass)],
            ..PolicySpec::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_serialize_in_calicos_shape() {
        let policy = GlobalNetworkPolicy::new(
            ObjectMeta {
                name: "zones.app-to-data".into(),
                ..ObjectMeta::default()
            },
            PolicySpec {
                tier: Some("zones".into()),
                order: Some(10.0),
                selector: "zone == 'app'".into(),
                types: vec![PolicyType::Egress],
                egress: vec![Rule {
                    protocol: Some(Protocol::Name("TCP".into())),
                    destination: Some(EntityRule {
                        selector: Some("zone == 'data'".into()),
                        ports: vec![Port::Number(5432), Port::range(8000, 8100)],
                        ..EntityRule::default()
                    }),
                    ..Rule::any(Action::Allow)
                }],
                ..PolicySpec::default()
            },
        );
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                "metadata": {"name": "zones.app-to-data"},
                "spec": {"tier": "zones", "order": 10.0, "selector": "zone == 'app'", "types": ["Egress"],
                    "egress": [{"action": "Allow", "protocol": "TCP",
                        "destination": {"selector": "zone == 'data'", "ports": [5432, "8000:8100"]}}]}
            })
        );
        let back: GlobalNetworkPolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, policy);
        let staged = StagedGlobalNetworkPolicy::new(policy.metadata.clone(), policy.spec.clone());
        let json = serde_json::to_value(&staged).unwrap();
        assert_eq!(json["spec"]["stagedAction"], "Set");
        assert_eq!(json["spec"]["selector"], "zone == 'app'");
    }
}
