//! The `firewall.egress_identities` config section and its validation.

use std::collections::BTreeMap;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::admission::AdmissionConfig;
use super::resolve::Mechanism;
use crate::cluster::LabelSelector;
use crate::problems::Problems;

/// Each namespace's egress IPs, learned from the cluster's egress mechanism and published to
/// every firewall target as a group `<group_prefix><namespace>` (`.v6` for IPv6).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Which mechanism gives namespaces their egress IPs: `calico`, `cilium`, `isovalent`,
    /// `antrea`, `ovn`, `aks` or `node`. Default: detected from the API groups the cluster
    /// serves (API discovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<Mechanism>,
    /// Prefix of each namespace's group name.
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// A Kubernetes label selector (`env=prod,tier in (web)`) over namespaces: only these
    /// get a group. Default: every namespace with an egress identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// An egress IP that disappears from the cluster's objects (a gateway failing over, a
    /// status briefly empty) stays in its group this many seconds.
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
    /// Namespaces the mechanism gives no identity leave through their nodes' addresses:
    /// publish the nodes running their pods, flagged as weak (every namespace on those nodes
    /// shares them).
    #[serde(default)]
    pub node_fallback: bool,
    /// Cilium policies that name an `interface` (or neither `interface` nor `egressIP`) leave
    /// through an address Kubernetes does not record: node name -> interface (`default` for
    /// the default-route interface) -> its addresses. Without an entry the identity is
    /// reported as unresolved, never guessed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cilium_interfaces: BTreeMap<String, BTreeMap<String, Vec<IpAddr>>>,
    /// The admission guard rendered by `threatflow admission render`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<AdmissionConfig>,
}

fn default_group_prefix() -> String {
    "egress.".into()
}
fn default_ttl_secs() -> u64 {
    900
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            mechanism: None,
            group_prefix: default_group_prefix(),
            namespace_selector: None,
            ttl_secs: default_ttl_secs(),
            node_fallback: false,
            cilium_interfaces: BTreeMap::new(),
            admission: None,
        }
    }
}

impl EgressConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        let prefix_ok = !self.group_prefix.is_empty()
            && self.group_prefix.len() <= 20
            && self
                .group_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !prefix_ok {
            problems.push(
                format!("{path}.group_prefix"),
                format!(
                    "`{}` must be 1 to 20 letters, digits, `.`, `-` or `_`",
                    self.group_prefix
                ),
            );
        }
        if let Some(selector) = &self.namespace_selector {
            if let Err(error) = LabelSelector::parse(selector) {
                problems.push(format!("{path}.namespace_selector"), error.to_string());
            }
        }
        if !(60..=30 * 86_400).contains(&self.ttl_secs) {
            problems.push(
                format!("{path}.ttl_secs"),
                "must be between 60 (a minute) and 2592000 (30 days)",
            );
        }
        for (node, interfaces) in &self.cilium_interfaces {
            for (interface, addresses) in interfaces {
                if addresses.is_empty() {
                    problems.push(
                        format!("{path}.cilium_interfaces.{node}.{interface}"),
                        "list the interface's addresses",
                    );
                }
            }
        }
        if let Some(admission) = &self.admission {
            admission.validate(&format!("{path}.admission"), problems);
        }
    }

    /// Whether namespaces without an identity get their nodes' addresses.
    pub fn falls_back_to_nodes(&self) -> bool {
        self.node_fallback || self.mechanism == Some(Mechanism::Node)
    }
}
