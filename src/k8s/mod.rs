//! Kubernetes and Calico wire types threatflow writes: `projectcalico.org/v3`
//! `GlobalNetworkSet` and `GlobalNetworkPolicy` (what goes into them is decided in
//! `feeds::render`), and leader election ([`leader`]).

pub mod leader;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const CALICO_API_VERSION: &str = "projectcalico.org/v3";

/// The API resource of `projectcalico.org/v3` GlobalNetworkSets, for kube's dynamic API.
pub fn global_network_sets() -> kube::api::ApiResource {
    calico_resource("GlobalNetworkSet", "globalnetworksets")
}

/// The API resource of `projectcalico.org/v3` GlobalNetworkPolicies.
pub fn global_network_policies() -> kube::api::ApiResource {
    calico_resource("GlobalNetworkPolicy", "globalnetworkpolicies")
}

fn calico_resource(kind: &str, plural: &str) -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: "projectcalico.org".into(),
        version: "v3".into(),
        api_version: CALICO_API_VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The label that marks objects threatflow owns; it never touches objects without it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "threatflow";
/// The label naming the feed an object belongs to.
pub const FEED_LABEL: &str = "threatflow.io/feed";
/// A hash of an object's content, so unchanged objects are recognised without comparing nets.
pub const CONTENT_HASH_ANNOTATION: &str = "threatflow.io/content-hash";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkSet {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: GlobalNetworkSetSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalNetworkSetSpec {
    pub nets: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkPolicy {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: GlobalNetworkPolicySpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkPolicySpec {
    pub tier: String,
    pub order: f64,
    pub selector: String,
    pub types: Vec<String>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityRule {
    pub selector: String,
}
