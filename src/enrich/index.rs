//! The endpoint index: IP address -> what held it (a pod, a node) and IP -> service.
//!
//! A projection of the cluster model ([`super::projection`]), whichever way that is fed (an
//! inventory file offline, watches in the cluster). Lookups are hash-map reads returning
//! shared, immutable context, so enriching a record copies two pointers and never calls the
//! API server. Addresses live in an [`IpHistory`], so lookups take the flow's time.

use std::net::IpAddr;
use std::sync::Arc;

use crate::flow::record::Text;

use super::history::{Found, IpHistory};
use super::labels::LabelFilter;
use super::projection::{EndpointProjection, SharedIndex};
use crate::cluster::{Inventory, Model, WatchScope};

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

/// IP -> endpoint and IP -> service, over time.
#[derive(Debug, Default)]
pub struct EndpointIndex {
    pub(crate) endpoints: IpHistory<EndpointInfo>,
    pub(crate) services: IpHistory<ServiceInfo>,
}

/// How many addresses the index holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexSize {
    /// Addresses that resolve (or resolved, within the grace period) to a pod or node.
    pub endpoint_addresses: usize,
    pub service_addresses: usize,
    /// Endpoint addresses whose last holder has released them, kept for late flows.
    pub released_addresses: usize,
}

impl EndpointIndex {
    /// Builds the index of an inventory. Where two objects claim an IP, a running pod wins
    /// over a node (a host-network pod's IP resolves to its node), and terminated pods hold no
    /// IP. Each object holds its addresses from its creation time.
    pub fn from_inventory(inventory: &Inventory) -> EndpointIndex {
        EndpointIndex::build(inventory, &LabelFilter::default())
    }

    /// Builds the index, keeping only the labels `filter` passes.
    pub fn build(inventory: &Inventory, filter: &LabelFilter) -> EndpointIndex {
        let index = SharedIndex::default();
        let projection =
            EndpointProjection::new(filter.clone(), index.clone(), WatchScope::default());
        drop(Model::from_inventory(inventory, vec![Box::new(projection)]));
        Arc::into_inner(index)
            .expect("the model, and its projection, are gone")
            .into_inner()
    }

    /// The pod or node that held `ip` at `at_ms` (Unix epoch milliseconds).
    #[inline]
    pub fn endpoint(&self, ip: IpAddr, at_ms: i64) -> Option<Found<'_, EndpointInfo>> {
        self.endpoints.lookup(ip, at_ms)
    }

    /// The pod or node that held `ip` at the end of a flow's window, else at its start (a
    /// pod deleted during the window).
    #[inline]
    pub fn endpoint_during(
        &self,
        ip: IpAddr,
        start_ms: i64,
        end_ms: i64,
    ) -> Option<Found<'_, EndpointInfo>> {
        self.endpoints.lookup_either(ip, end_ms, start_ms)
    }

    /// The service `ip` belonged to at the end of a flow's window, else at its start.
    #[inline]
    pub fn service_during(
        &self,
        ip: IpAddr,
        start_ms: i64,
        end_ms: i64,
    ) -> Option<&Arc<ServiceInfo>> {
        self.services
            .lookup_either(ip, end_ms, start_ms)
            .map(|found| found.owner)
    }

    /// The service whose cluster or load-balancer IP `ip` was at `at_ms`.
    #[inline]
    pub fn service(&self, ip: IpAddr, at_ms: i64) -> Option<&Arc<ServiceInfo>> {
        self.services.lookup(ip, at_ms).map(|found| found.owner)
    }

    pub fn size(&self) -> IndexSize {
        IndexSize {
            endpoint_addresses: self.endpoints.len().0,
            service_addresses: self.services.len().0,
            released_addresses: self.endpoints.released(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.services.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::objects::{NamespaceInfo, NodeInfo, PodInfo, ServiceInfo as Svc};
    use std::collections::BTreeMap;

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
                ..Default::default()
            }],
            namespaces: vec![NamespaceInfo {
                name: "shop".into(),
                labels: [("team".into(), "payments".into())].into(),
                annotations: Default::default(),
            }],
            jobs: vec![],
            policies: vec![],
        };
        let index = EndpointIndex::from_inventory(&inventory);
        let web = index.endpoint(ip("fd00::5"), 0).unwrap().owner;
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
        let node = index.endpoint(ip("192.168.0.10"), 0).unwrap().owner;
        assert_eq!((node.kind, &*node.name), (EndpointInfoKind::Node, "node-a"));
        assert_eq!(&*index.service(ip("10.96.0.20"), 0).unwrap().name, "web");
        assert_eq!(
            index.size(),
            IndexSize {
                endpoint_addresses: 3,
                service_addresses: 1,
                released_addresses: 0
            }
        );
    }
}
