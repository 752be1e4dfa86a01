//! The endpoint index: IP address -> what held it (a pod, a node) and IP -> service.
//!
//! Built from an [`Inventory`], whichever way that was filled (a file offline, watches in the
//! cluster). Lookups are hash-map reads returning shared, immutable context, so enriching a
//! record copies two pointers and never calls the API server. Endpoints live in an
//! [`IpHistory`], so lookups take the flow's time; an inventory is one snapshot, so its entries
//! hold from the beginning of time.

use std::collections::{BTreeMap, HashMap};

use crate::flow::record::Text;
use std::net::IpAddr;
use std::sync::Arc;

use super::history::IpHistory;
use super::inventory::{Inventory, PodInfo};
use super::labels::LabelFilter;
use super::workload;

/// Cluster context of one endpoint: a pod, or a node (host endpoints, host-network pods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub kind: EndpointInfoKind,
    /// Pod name, or node name for a node.
    pub name: Text,
    pub namespace: Option<Text>,
    /// `key=value`, sorted by key.
    pub labels: Vec<Text>,
    /// The namespace's labels, `key=value`, sorted by key; shared by every pod in the namespace.
    pub namespace_labels: Arc<[Text]>,
    /// The owning workload as `Kind/name` (`Deployment/web`).
    pub workload: Option<Text>,
    /// The node the pod runs on (for a node: itself). Shared, since enrichment hands it on as
    /// the reporting node of every record this endpoint reports.
    pub node: Option<Arc<str>>,
    /// `namespace/name` of the services whose selector matches the pod, sorted.
    pub services: Vec<Text>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointInfoKind {
    Pod,
    Node,
}

/// A Kubernetes service reached by its cluster or load-balancer IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: Text,
    pub name: Text,
}

/// IP -> endpoint and IP -> service, for one point-in-time view of the cluster.
#[derive(Debug, Default)]
pub struct EndpointIndex {
    endpoints: IpHistory,
    services: HashMap<IpAddr, Arc<ServiceInfo>, foldhash::fast::RandomState>,
}

impl EndpointIndex {
    /// Builds the index. Where two objects claim an IP, a running pod wins over a node (a
    /// host-network pod's IP resolves to its node), and terminated pods hold no IP.
    pub fn from_inventory(inventory: &Inventory) -> EndpointIndex {
        EndpointIndex::build(inventory, &LabelFilter::default())
    }

    /// Builds the index, keeping only the labels `filter` passes.
    pub fn build(inventory: &Inventory, filter: &LabelFilter) -> EndpointIndex {
        let label_list = |labels: &BTreeMap<String, String>| label_list(labels, filter);
        let mut index = EndpointIndex::default();
        let namespace_labels: HashMap<&str, Arc<[Text]>> = inventory
            .namespaces
            .iter()
            .map(|namespace| {
                (
                    namespace.name.as_str(),
                    label_list(&namespace.labels).into(),
                )
            })
            .collect();
        let no_labels: Arc<[Text]> = Arc::from(Vec::<Text>::new());
        // Services with a selector, by namespace, to name the services that select each pod.
        let mut selecting: HashMap<&str, Vec<&super::inventory::ServiceInfo>> = HashMap::new();
        for service in inventory
            .services
            .iter()
            .filter(|service| !service.selector.is_empty())
        {
            selecting
                .entry(service.namespace.as_str())
                .or_default()
                .push(service);
        }

        for node in &inventory.nodes {
            let info = Arc::new(EndpointInfo {
                kind: EndpointInfoKind::Node,
                name: node.name.as_str().into(),
                namespace: None,
                labels: label_list(&node.labels),
                namespace_labels: no_labels.clone(),
                workload: None,
                node: Some(Arc::from(node.name.as_str())),
                services: Vec::new(),
            });
            let key: Arc<str> = format!("node/{}", node.name).into();
            for ip in &node.internal_ips {
                index
                    .endpoints
                    .assign(*ip, key.clone(), info.clone(), i64::MIN);
            }
        }
        for pod in &inventory.pods {
            if pod.terminated || pod.host_network {
                continue;
            }
            let labels = namespace_labels
                .get(pod.namespace.as_str())
                .cloned()
                .unwrap_or_else(|| no_labels.clone());
            let mut services: Vec<Text> = selecting
                .get(pod.namespace.as_str())
                .into_iter()
                .flatten()
                .filter(|service| {
                    service
                        .selector
                        .iter()
                        .all(|(key, value)| pod.labels.get(key) == Some(value))
                })
                .map(|service| {
                    compact_str::format_compact!("{}/{}", service.namespace, service.name)
                })
                .collect();
            services.sort();
            let info = Arc::new(pod_info(pod, labels, label_list(&pod.labels), services));
            let key: Arc<str> = format!("pod/{}/{}", pod.namespace, pod.name).into();
            for ip in &pod.ips {
                index
                    .endpoints
                    .assign(*ip, key.clone(), info.clone(), i64::MIN);
            }
        }
        for service in &inventory.services {
            let info = Arc::new(ServiceInfo {
                namespace: service.namespace.as_str().into(),
                name: service.name.as_str().into(),
            });
            for ip in &service.ips {
                index.services.insert(*ip, info.clone());
            }
        }
        index
    }

    /// The pod or node that held `ip` at `at_ms` (Unix epoch milliseconds).
    pub fn endpoint(&self, ip: IpAddr, at_ms: i64) -> Option<&Arc<EndpointInfo>> {
        self.endpoints.lookup(ip, at_ms)
    }

    /// The service whose cluster or load-balancer IP is `ip`.
    pub fn service(&self, ip: IpAddr) -> Option<&Arc<ServiceInfo>> {
        self.services.get(&ip)
    }

    /// Number of IPs that resolve to an endpoint, and to a service.
    pub fn len(&self) -> (usize, usize) {
        (self.endpoints.len().0, self.services.len())
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.services.is_empty()
    }
}

fn pod_info(
    pod: &PodInfo,
    namespace_labels: Arc<[Text]>,
    labels: Vec<Text>,
    services: Vec<Text>,
) -> EndpointInfo {
    let workload = pod
        .owner
        .as_ref()
        .map(|(kind, name)| workload::from_owner(kind, name, &pod.labels));
    EndpointInfo {
        kind: EndpointInfoKind::Pod,
        name: pod.name.as_str().into(),
        namespace: Some(pod.namespace.as_str().into()),
        labels,
        namespace_labels,
        workload: workload.map(Into::into),
        node: pod.node.as_deref().map(Arc::from),
        services,
    }
}

fn label_list(labels: &BTreeMap<String, String>, filter: &LabelFilter) -> Vec<Text> {
    labels
        .iter()
        .filter(|(key, _)| filter.keeps(key))
        .map(|(key, value)| compact_str::format_compact!("{key}={value}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::inventory::{NamespaceInfo, NodeInfo, ServiceInfo as Svc};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn resolves_pods_nodes_and_services() {
        let inventory = Inventory {
            pods: vec![
                PodInfo {
                    name: "web-5bdcdd9c97-x2k4l".into(),
                    namespace: "shop".into(),
                    labels: [
                        ("app".into(), "web".into()),
                        ("pod-template-hash".into(), "5bdcdd9c97".into()),
                    ]
                    .into(),
                    node: Some("node-a".into()),
                    owner: Some(("ReplicaSet".into(), "web-5bdcdd9c97".into())),
                    ips: vec![ip("10.244.1.5"), ip("fd00::5")],
                    ..Default::default()
                },
                PodInfo {
                    name: "old".into(),
                    namespace: "shop".into(),
                    ips: vec![ip("10.244.1.6")],
                    terminated: true,
                    ..Default::default()
                },
                PodInfo {
                    name: "agent".into(),
                    namespace: "kube-system".into(),
                    ips: vec![ip("192.168.0.10")],
                    host_network: true,
                    ..Default::default()
                },
            ],
            services: vec![
                Svc {
                    name: "web".into(),
                    namespace: "shop".into(),
                    ips: vec![ip("10.96.0.20")],
                    selector: [("app".into(), "web".into())].into(),
                },
                Svc {
                    name: "all-tiers".into(),
                    namespace: "shop".into(),
                    ips: vec![],
                    selector: [("app".into(), "web".into()), ("tier".into(), "x".into())].into(),
                },
                Svc {
                    name: "elsewhere".into(),
                    namespace: "other".into(),
                    ips: vec![],
                    selector: [("app".into(), "web".into())].into(),
                },
            ],
            nodes: vec![NodeInfo {
                name: "node-a".into(),
                labels: BTreeMap::new(),
                internal_ips: vec![ip("192.168.0.10")],
            }],
            namespaces: vec![NamespaceInfo {
                name: "shop".into(),
                labels: [("team".into(), "payments".into())].into(),
            }],
        };
        let index = EndpointIndex::from_inventory(&inventory);
        let web = index.endpoint(ip("fd00::5"), 0).unwrap();
        assert_eq!(&*web.name, "web-5bdcdd9c97-x2k4l");
        assert_eq!(web.workload.as_deref(), Some("Deployment/web"));
        assert_eq!(
            web.labels,
            vec![
                Text::from("app=web"),
                Text::from("pod-template-hash=5bdcdd9c97")
            ]
        );
        assert_eq!(&*web.namespace_labels, &[Text::from("team=payments")]);
        assert_eq!(
            web.services,
            [Text::from("shop/web")],
            "only services in the pod's namespace whose whole selector matches"
        );
        assert!(
            index.endpoint(ip("10.244.1.6"), 0).is_none(),
            "terminated pods hold no IP"
        );
        let node = index.endpoint(ip("192.168.0.10"), 0).unwrap();
        assert_eq!((node.kind, &*node.name), (EndpointInfoKind::Node, "node-a"));
        assert_eq!(&*index.service(ip("10.96.0.20")).unwrap().name, "web");
        assert_eq!(index.len(), (3, 1));
    }
}
