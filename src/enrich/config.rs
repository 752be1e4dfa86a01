//! The `enrichment` config section and its validation.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cluster::{LabelSelector, WatchScope};
use crate::problems::{is_dns_label, Problems};

/// Where cluster context comes from.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentConfig {
    /// A file written by `kubectl get pods,services,namespaces,nodes,jobs -A -o json`, for runs
    /// outside the cluster. Without it (or `kubernetes`), records are forwarded with only the
    /// context they carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_path: Option<PathBuf>,
    /// Watch the cluster's pods, services, nodes, namespaces and jobs and keep the index in
    /// step (in-cluster, or through `KUBECONFIG`). Exclusive with `inventory_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesEnrichment>,
    /// Which labels are passed on, from the inventory and from the records themselves.
    #[serde(default)]
    pub labels: super::LabelFilter,
}

/// In-cluster enrichment from watches.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesEnrichment {
    /// Watch only this namespace's pods, services and jobs (and only this namespace's labels),
    /// for large clusters where threatflow serves one tenant. Nodes are always watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Watch only pods matching this label selector (`app=web,tier!=db`). Flows of other pods
    /// get no pod context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_label_selector: Option<String>,
    /// How long a deleted pod's (or node's, or service's) addresses still resolve to it, for
    /// flow records that arrive late.
    #[serde(default = "default_grace_period_secs")]
    pub grace_period_secs: u64,
    /// How long records wait at startup for the initial lists before they go on with the
    /// context the index has (counted in `threatflow_flow_sync_timeouts_total`).
    #[serde(default = "default_sync_timeout_secs")]
    pub sync_timeout_secs: u64,
}

fn default_grace_period_secs() -> u64 {
    300
}

fn default_sync_timeout_secs() -> u64 {
    60
}

impl KubernetesEnrichment {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if let Some(namespace) = &self.namespace {
            if !is_dns_label(namespace, 63) {
                problems.push(
                    format!("{path}.namespace"),
                    "must be a namespace name (lowercase letters, digits and `-`, at most 63)",
                );
            }
        }
        if let Some(selector) = &self.pod_label_selector {
            let parsed = LabelSelector::parse(selector);
            if selector.trim().is_empty() || parsed.is_err() {
                let reason = parsed.err().map(|error| error.reason).unwrap_or_default();
                problems.push(
                    format!("{path}.pod_label_selector"),
                    format!("must be a label selector such as `app=web,tier!=db` ({reason})"),
                );
            }
        }
    }

    /// The part of the cluster enrichment needs watched.
    pub fn scope(&self) -> WatchScope {
        WatchScope {
            namespace: self.namespace.clone(),
            // Validated: an unparsable selector never gets here.
            pods: self
                .pod_label_selector
                .as_deref()
                .and_then(|selector| LabelSelector::parse(selector).ok()),
            policies: false,
        }
    }
}

impl EnrichmentConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        self.labels.validate(&format!("{path}.labels"), problems);
        if let Some(kubernetes) = &self.kubernetes {
            if self.inventory_path.is_some() {
                problems.push(
                    format!("{path}.kubernetes"),
                    "set either enrichment.inventory_path (a file) or enrichment.kubernetes (watches), not both",
                );
            }
            kubernetes.validate(&format!("{path}.kubernetes"), problems);
        }
    }

    /// One line saying where cluster context comes from.
    pub fn summary(&self) -> String {
        match (&self.inventory_path, &self.kubernetes) {
            (Some(path), _) => format!("inventory {}", path.display()),
            (None, Some(kubernetes)) => match &kubernetes.namespace {
                Some(namespace) => format!("kubernetes watches in namespace {namespace}"),
                None => "kubernetes watches".into(),
            },
            (None, None) => "none".into(),
        }
    }
}
