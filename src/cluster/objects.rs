//! The cluster inventory: pods, services, nodes, namespaces and jobs as plain domain values.
//!
//! This is what the endpoint index is built from. Offline it comes from a file written by
//! `kubectl get pods,services,namespaces,nodes,jobs -A -o json` (a `v1 List`); in the cluster
//! the watches parse the same object types ([`KubePod`], ...). Only the fields enrichment uses
//! are read; everything else in the objects (managed fields, annotations, container specs) is
//! skipped on parse, so it is never held in memory.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    ObjectMeta, OwnerReference as KubeOwnerReference, Time,
};
use serde::{Deserialize, Deserializer};

use crate::k8s::calico::PolicySelector;

/// Everything enrichment knows about the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inventory {
    pub pods: Vec<PodInfo>,
    pub services: Vec<ServiceInfo>,
    pub nodes: Vec<NodeInfo>,
    pub namespaces: Vec<NamespaceInfo>,
    pub jobs: Vec<JobInfo>,
    pub policies: Vec<PolicyInfo>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
    /// The pod's UID: its identity across IP reuse (`namespace/name` when the file has none).
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub node: Option<String>,
    /// The controller owner reference (`kind`, `name`), if any.
    pub owner: Option<(String, String)>,
    pub ips: Vec<IpAddr>,
    /// Host-network pods share their node's IP; that IP resolves to the node.
    pub host_network: bool,
    /// `Succeeded` or `Failed` pods no longer hold their IP.
    pub terminated: bool,
    /// `metadata.creationTimestamp`, epoch milliseconds.
    pub created_ms: Option<i64>,
    /// The annotations the model keeps ([`KEPT_ANNOTATIONS`]).
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceInfo {
    pub name: String,
    pub namespace: String,
    /// Cluster IPs and load-balancer ingress IPs.
    pub ips: Vec<IpAddr>,
    /// The pod selector; empty for services without one (they select no pod).
    pub selector: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub internal_ips: Vec<IpAddr>,
    /// `metadata.creationTimestamp`, epoch milliseconds.
    pub created_ms: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The annotations the model keeps ([`KEPT_ANNOTATIONS`]).
    pub annotations: BTreeMap<String, String>,
}

/// The annotations (by key prefix) the model keeps on pods and namespaces: those that decide
/// which egress gateway a pod leaves through, for egress identities. Every other annotation is
/// skipped unread.
pub const KEPT_ANNOTATIONS: &[&str] = &[
    "egress.projectcalico.org/",
    "kubernetes.azure.com/static-gateway-configuration",
];

fn kept_annotation(key: &str) -> bool {
    KEPT_ANNOTATIONS
        .iter()
        .any(|prefix| key.starts_with(prefix))
}

/// A Calico policy, for the pods its selector picks (its rules are not kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `spec.tier`; `default` when unset, as in Calico.
    pub tier: String,
    /// `spec.selector` as written; empty selects every endpoint.
    pub selector: String,
    /// `spec.namespaceSelector` as written; empty: every namespace.
    pub namespace_selector: String,
}

/// A Job, for the CronJob that owns it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobInfo {
    pub name: String,
    pub namespace: String,
    /// The controller owner reference (`kind`, `name`), if any.
    pub owner: Option<(String, String)>,
}

/// The inventory file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("inventory file {path} is not a `kubectl get ... -o json` List (at {at})")]
    Parse {
        path: String,
        at: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Inventory {
    /// Reads a `kubectl get pods,services,namespaces,nodes,jobs -A -o json` file.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let display = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| InventoryError::Read {
            path: display.clone(),
            source,
        })?;
        Inventory::from_json(&bytes).map_err(|(at, source)| InventoryError::Parse {
            path: display,
            at,
            source,
        })
    }

    /// Parses a `v1 List` of pods, services, nodes, namespaces, jobs and Calico
    /// GlobalNetworkPolicies; other kinds are ignored.
    pub fn from_json(bytes: &[u8]) -> Result<Inventory, (String, serde_json::Error)> {
        let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
        let list: KubeList = serde_path_to_error::deserialize(deserializer)
            .map_err(|error| (error.path().to_string(), error.into_inner()))?;
        let mut inventory = Inventory::default();
        for item in list.items {
            match item {
                KubeObject::Pod(pod) => inventory.pods.push(pod.into()),
                KubeObject::Service(service) => inventory.services.push(service.into()),
                KubeObject::Node(node) => inventory.nodes.push(node.into()),
                KubeObject::Namespace(namespace) => inventory.namespaces.push(namespace.into()),
                KubeObject::Job(job) => inventory.jobs.push(job.into()),
                KubeObject::GlobalNetworkPolicy(policy) => inventory.policies.push(policy.into()),
                KubeObject::Other => {}
            }
        }
        Ok(inventory)
    }
}

#[derive(Deserialize)]
struct KubeList {
    items: Vec<KubeObject>,
}

#[derive(Deserialize)]
#[serde(tag = "kind")]
enum KubeObject {
    Pod(KubePod),
    Service(KubeService),
    Node(KubeNode),
    Namespace(KubeNamespace),
    Job(KubeJob),
    // Calico's policies, for the firewall address sync (the one Calico kind an inventory
    // holds that threatflow reads).
    GlobalNetworkPolicy(PolicySelector),
    #[serde(other)]
    Other,
}

/// Reads `metadata`, keeping only what enrichment and the watches use: name, namespace, UID,
/// resource version, labels, owner references, timestamps and the [`KEPT_ANNOTATIONS`]. Other
/// annotations and managed fields are skipped unread.
fn trimmed_meta<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Trimmed {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        labels: Option<BTreeMap<String, String>>,
        #[serde(default, deserialize_with = "kept_annotations")]
        annotations: Option<BTreeMap<String, String>>,
        owner_references: Option<Vec<OwnerReference>>,
        creation_timestamp: Option<Time>,
        deletion_timestamp: Option<Time>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct OwnerReference {
        #[serde(default)]
        api_version: String,
        kind: String,
        name: String,
        #[serde(default)]
        uid: String,
        controller: Option<bool>,
    }
    let meta = Trimmed::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: meta.labels,
        annotations: meta.annotations,
        owner_references: meta.owner_references.map(|references| {
            references
                .into_iter()
                .map(|reference| KubeOwnerReference {
                    api_version: reference.api_version,
                    kind: reference.kind,
                    name: reference.name,
                    uid: reference.uid,
                    controller: reference.controller,
                    block_owner_deletion: None,
                })
                .collect()
        }),
        creation_timestamp: meta.creation_timestamp,
        deletion_timestamp: meta.deletion_timestamp,
        ..ObjectMeta::default()
    })
}

/// The kept annotations of a `metadata.annotations` map, reading the others' values without
/// allocating them.
fn kept_annotations<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Kept;
    impl<'de> serde::de::Visitor<'de> for Kept {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a map of annotations")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
            inner.deserialize_map(self)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if kept_annotation(&key) {
                    kept.insert(key.into_owned(), map.next_value::<String>()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok((!kept.is_empty()).then_some(kept))
        }
    }
    deserializer.deserialize_option(Kept)
}

fn annotations(meta: &mut ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations.take().unwrap_or_default()
}

fn name(meta: &mut ObjectMeta) -> String {
    meta.name.take().unwrap_or_default()
}

fn namespace(meta: &mut ObjectMeta) -> String {
    meta.namespace.take().unwrap_or_default()
}

fn labels(meta: &mut ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.take().unwrap_or_default()
}

fn created_ms(meta: &ObjectMeta) -> Option<i64> {
    meta.creation_timestamp
        .as_ref()
        .map(|time| time.0.as_millisecond())
}

/// The controller owner reference (`kind`, `name`), else the first one.
fn controller_owner(meta: &ObjectMeta) -> Option<(String, String)> {
    let references = meta.owner_references.as_deref().unwrap_or_default();
    references
        .iter()
        .find(|reference| reference.controller == Some(true))
        .or(references.first())
        .map(|reference| (reference.kind.clone(), reference.name.clone()))
}

/// A pod as the API serves it, trimmed on parse.
#[derive(Clone, Debug, Deserialize)]
pub struct KubePod {
    #[serde(deserialize_with = "trimmed_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    node_name: Option<String>,
    #[serde(default)]
    host_network: bool,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<IpAddr>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIp>,
}

#[derive(Clone, Debug, Deserialize)]
struct PodIp {
    ip: IpAddr,
}

impl From<KubePod> for PodInfo {
    fn from(mut pod: KubePod) -> PodInfo {
        let mut ips: Vec<IpAddr> = pod.status.pod_ips.iter().map(|pod_ip| pod_ip.ip).collect();
        if ips.is_empty() {
            ips.extend(pod.status.pod_ip);
        }
        let owner = controller_owner(&pod.metadata);
        let meta = &mut pod.metadata;
        let name = name(meta);
        let namespace = namespace(meta);
        PodInfo {
            uid: meta
                .uid
                .take()
                .unwrap_or_else(|| format!("{namespace}/{name}")),
            created_ms: created_ms(meta),
            labels: labels(meta),
            annotations: annotations(meta),
            name,
            namespace,
            node: pod.spec.node_name,
            owner,
            ips,
            host_network: pod.spec.host_network,
            terminated: matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed")),
        }
    }
}

/// A service as the API serves it, trimmed on parse.
#[derive(Clone, Debug, Deserialize)]
pub struct KubeService {
    #[serde(deserialize_with = "trimmed_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    spec: ServiceSpec,
    #[serde(default)]
    status: ServiceStatus,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    cluster_ips: Vec<String>,
    #[serde(default)]
    selector: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ServiceStatus {
    #[serde(default)]
    load_balancer: LoadBalancerStatus,
}

#[derive(Clone, Debug, Deserialize, Default)]
struct LoadBalancerStatus {
    #[serde(default)]
    ingress: Vec<LoadBalancerIngress>,
}

#[derive(Clone, Debug, Deserialize)]
struct LoadBalancerIngress {
    ip: Option<IpAddr>,
}

impl From<KubeService> for ServiceInfo {
    fn from(mut service: KubeService) -> ServiceInfo {
        // `clusterIP` may be "None" (headless); only addresses count.
        let mut ips: Vec<IpAddr> = service
            .spec
            .cluster_ips
            .iter()
            .chain(service.spec.cluster_ip.iter())
            .filter_map(|text| text.parse().ok())
            .collect();
        ips.extend(
            service
                .status
                .load_balancer
                .ingress
                .iter()
                .filter_map(|ingress| ingress.ip),
        );
        ips.sort();
        ips.dedup();
        ServiceInfo {
            name: name(&mut service.metadata),
            namespace: namespace(&mut service.metadata),
            ips,
            selector: service.spec.selector.unwrap_or_default(),
        }
    }
}

/// A node as the API serves it, trimmed on parse.
#[derive(Clone, Debug, Deserialize)]
pub struct KubeNode {
    #[serde(deserialize_with = "trimmed_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Clone, Debug, Deserialize, Default)]
struct NodeStatus {
    #[serde(default)]
    addresses: Vec<NodeAddress>,
}

#[derive(Clone, Debug, Deserialize)]
struct NodeAddress {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

impl From<KubeNode> for NodeInfo {
    fn from(mut node: KubeNode) -> NodeInfo {
        NodeInfo {
            created_ms: created_ms(&node.metadata),
            name: name(&mut node.metadata),
            labels: labels(&mut node.metadata),
            internal_ips: node
                .status
                .addresses
                .iter()
                .filter(|address| address.kind == "InternalIP")
                .filter_map(|address| address.address.parse().ok())
                .collect(),
        }
    }
}

/// A namespace's metadata, trimmed on parse.
#[derive(Clone, Debug, Deserialize)]
pub struct KubeNamespace {
    #[serde(deserialize_with = "trimmed_meta")]
    pub metadata: ObjectMeta,
}

impl From<KubeNamespace> for NamespaceInfo {
    fn from(mut namespace: KubeNamespace) -> NamespaceInfo {
        NamespaceInfo {
            name: name(&mut namespace.metadata),
            labels: labels(&mut namespace.metadata),
            annotations: annotations(&mut namespace.metadata),
        }
    }
}

/// A job's metadata, trimmed on parse.
#[derive(Clone, Debug, Deserialize)]
pub struct KubeJob {
    #[serde(deserialize_with = "trimmed_meta")]
    pub metadata: ObjectMeta,
}

impl From<KubeJob> for JobInfo {
    fn from(mut job: KubeJob) -> JobInfo {
        JobInfo {
            owner: controller_owner(&job.metadata),
            name: name(&mut job.metadata),
            namespace: namespace(&mut job.metadata),
        }
    }
}

impl From<PolicySelector> for PolicyInfo {
    fn from(policy: PolicySelector) -> PolicyInfo {
        let tier = policy.tier().to_owned();
        let mut metadata = policy.metadata;
        PolicyInfo {
            name: name(&mut metadata),
            labels: labels(&mut metadata),
            tier,
            selector: policy.spec.selector.unwrap_or_default(),
            namespace_selector: policy.spec.namespace_selector.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_kubectl_list() {
        let json = br#"{"apiVersion":"v1","kind":"List","items":[
          {"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-5bdcdd9c97-x2k4l","namespace":"shop","labels":{"app":"web","pod-template-hash":"5bdcdd9c97"},
            "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-5bdcdd9c97","controller":true,"uid":"u"}],"managedFields":[{"x":1}]},
            "spec":{"nodeName":"node-a","containers":[]},"status":{"phase":"Running","podIP":"10.244.1.5","podIPs":[{"ip":"10.244.1.5"},{"ip":"fd00:10:244:1::5"}]}},
          {"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"shop"},"spec":{"clusterIP":"10.96.0.20","clusterIPs":["10.96.0.20"]}},
          {"apiVersion":"v1","kind":"Service","metadata":{"name":"headless","namespace":"shop"},"spec":{"clusterIP":"None"}},
          {"apiVersion":"v1","kind":"Node","metadata":{"name":"node-a"},"status":{"addresses":[{"type":"InternalIP","address":"192.168.0.10"},{"type":"Hostname","address":"node-a"}]}},
          {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"shop","labels":{"team":"payments"}}},
          {"apiVersion":"projectcalico.org/v3","kind":"GlobalNetworkPolicy","metadata":{"name":"default.web"},"spec":{"selector":"app == 'web'","ingress":[{"action":"Allow"}]}},
          {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ignored"}}
        ]}"#;
        let inventory = Inventory::from_json(json).unwrap();
        assert_eq!(inventory.pods.len(), 1);
        let pod = &inventory.pods[0];
        assert_eq!(pod.ips.len(), 2);
        assert_eq!(
            pod.owner,
            Some(("ReplicaSet".into(), "web-5bdcdd9c97".into()))
        );
        assert_eq!(pod.node.as_deref(), Some("node-a"));
        assert_eq!(
            inventory.services[0].ips,
            vec!["10.96.0.20".parse::<IpAddr>().unwrap()]
        );
        assert!(inventory.services[1].ips.is_empty());
        assert_eq!(
            inventory.nodes[0].internal_ips,
            vec!["192.168.0.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(inventory.namespaces[0].labels["team"], "payments");
        assert_eq!(
            inventory.policies,
            [PolicyInfo {
                name: "default.web".into(),
                labels: BTreeMap::new(),
                tier: "default".into(),
                selector: "app == 'web'".into(),
                namespace_selector: String::new(),
            }]
        );
    }

    #[test]
    fn reports_where_the_file_is_wrong() {
        let (at, _) = Inventory::from_json(br#"{"items":[{"kind":"Pod","metadata":{"name":1}}]}"#)
            .unwrap_err();
        assert!(at.starts_with("items[0]"), "{at}");
    }
}
