//! The cluster inventory: pods, services, nodes and namespaces as plain domain values.
//!
//! This is what the endpoint index is built from. Offline it comes from a file written by
//! `kubectl get pods,services,namespaces,nodes -A -o json` (a `v1 List`); in the cluster the
//! watch-driven filler produces the same values. Only the fields enrichment uses are read;
//! everything else in the objects (managed fields, annotations, specs) is skipped on parse.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

/// Everything enrichment knows about the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inventory {
    pub pods: Vec<PodInfo>,
    pub services: Vec<ServiceInfo>,
    pub nodes: Vec<NodeInfo>,
    pub namespaces: Vec<NamespaceInfo>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodInfo {
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
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
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
    /// Reads a `kubectl get pods,services,namespaces,nodes -A -o json` file.
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

    /// Parses a `v1 List` of pods, services, nodes and namespaces; other kinds are ignored.
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
                KubeObject::Namespace(namespace) => inventory.namespaces.push(NamespaceInfo {
                    name: namespace.metadata.name,
                    labels: namespace.metadata.labels,
                }),
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
    #[serde(other)]
    Other,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    owner_references: Vec<OwnerReference>,
}

#[derive(Deserialize)]
struct OwnerReference {
    kind: String,
    name: String,
    #[serde(default)]
    controller: bool,
}

#[derive(Deserialize)]
struct KubePod {
    metadata: Metadata,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    node_name: Option<String>,
    #[serde(default)]
    host_network: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<IpAddr>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIp>,
}

#[derive(Deserialize)]
struct PodIp {
    ip: IpAddr,
}

impl From<KubePod> for PodInfo {
    fn from(pod: KubePod) -> PodInfo {
        let mut ips: Vec<IpAddr> = pod.status.pod_ips.iter().map(|pod_ip| pod_ip.ip).collect();
        if ips.is_empty() {
            ips.extend(pod.status.pod_ip);
        }
        let owner = controller_owner(&pod.metadata.owner_references);
        PodInfo {
            name: pod.metadata.name,
            namespace: pod.metadata.namespace,
            labels: pod.metadata.labels,
            node: pod.spec.node_name,
            owner,
            ips,
            host_network: pod.spec.host_network,
            terminated: matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed")),
        }
    }
}

fn controller_owner(references: &[OwnerReference]) -> Option<(String, String)> {
    references
        .iter()
        .find(|reference| reference.controller)
        .or(references.first())
        .map(|reference| (reference.kind.clone(), reference.name.clone()))
}

#[derive(Deserialize)]
struct KubeService {
    metadata: Metadata,
    #[serde(default)]
    spec: ServiceSpec,
    #[serde(default)]
    status: ServiceStatus,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    cluster_ips: Vec<String>,
    #[serde(default)]
    selector: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ServiceStatus {
    #[serde(default)]
    load_balancer: LoadBalancerStatus,
}

#[derive(Deserialize, Default)]
struct LoadBalancerStatus {
    #[serde(default)]
    ingress: Vec<LoadBalancerIngress>,
}

#[derive(Deserialize)]
struct LoadBalancerIngress {
    ip: Option<IpAddr>,
}

impl From<KubeService> for ServiceInfo {
    fn from(service: KubeService) -> ServiceInfo {
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
            name: service.metadata.name,
            namespace: service.metadata.namespace,
            ips,
            selector: service.spec.selector.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct KubeNode {
    metadata: Metadata,
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Deserialize, Default)]
struct NodeStatus {
    #[serde(default)]
    addresses: Vec<NodeAddress>,
}

#[derive(Deserialize)]
struct NodeAddress {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

impl From<KubeNode> for NodeInfo {
    fn from(node: KubeNode) -> NodeInfo {
        NodeInfo {
            name: node.metadata.name,
            labels: node.metadata.labels,
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

#[derive(Deserialize)]
struct KubeNamespace {
    metadata: Metadata,
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
    }

    #[test]
    fn reports_where_the_file_is_wrong() {
        let (at, _) = Inventory::from_json(br#"{"items":[{"kind":"Pod","metadata":{"name":1}}]}"#)
            .unwrap_err();
        assert!(at.starts_with("items[0]"), "{at}");
    }
}
