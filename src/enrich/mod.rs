//! Enrichment: adding cluster context (pod, namespace, labels, workload, node, service) to a
//! flow record.
//!
//! The stage is a pure function of a record and an [`EndpointIndex`]. It never calls the
//! Kubernetes API: the index is a projection of the cluster model ([`projection`]), which an
//! inventory file or the watches fill. What the collector already said wins: enrichment only fills gaps, and a record
//! without an IP (aggregated by the collector) is never given a pod.

pub mod config;
pub mod history;
pub mod index;
pub mod labels;
pub mod projection;
pub mod threat;
pub mod workload;

use std::sync::Arc;

use crate::flow::record::{Endpoint, EndpointKind, Reporter, Text};
use crate::flow::FlowRecord;
pub use config::{EnrichmentConfig, KubernetesEnrichment};
pub use index::{EndpointIndex, EndpointInfo, EndpointInfoKind, IndexSize, ServiceInfo};
pub use labels::LabelFilter;
pub use projection::{EndpointProjection, SharedIndex};
pub use threat::{Matches, ThreatFeed, ThreatMatcher};

use crate::egress::EgressLookup;

/// Enrichment's view of the cluster: the endpoint index, kept as a projection of the model,
/// with released addresses evicted after the grace period.
pub struct Enrichment {
    pub index: SharedIndex,
    /// Opens once the model holds the initial lists.
    pub gate: Arc<crate::cluster::SyncGate>,
    /// How long the first records wait for the gate.
    pub sync_timeout: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    eviction: tokio::task::JoinHandle<()>,
}

impl Enrichment {
    pub fn start(
        cluster: &crate::cluster::Cluster,
        settings: &EnrichmentConfig,
        metrics: projection::IndexMetrics,
    ) -> Enrichment {
        use std::time::Duration;
        let stop = tokio_util::sync::CancellationToken::new();
        let index = SharedIndex::default();
        let kubernetes = settings.kubernetes.as_ref();
        let eviction = projection::project(
            cluster,
            index.clone(),
            settings.labels.clone(),
            kubernetes
                .map(KubernetesEnrichment::scope)
                .unwrap_or_default(),
            Duration::from_secs(kubernetes.map_or(300, |settings| settings.grace_period_secs)),
            metrics,
            stop.clone(),
        );
        Enrichment {
            index,
            gate: cluster.gate().clone(),
            sync_timeout: Duration::from_secs(
                kubernetes.map_or(0, |settings| settings.sync_timeout_secs),
            ),
            stop,
            eviction,
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.eviction.await;
    }
}

/// A flow record with the context the index had for its endpoints.
#[derive(Clone, Debug)]
pub struct EnrichedRecord {
    pub flow: FlowRecord,
    pub source: Option<Arc<EndpointInfo>>,
    pub dest: Option<Arc<EndpointInfo>>,
    /// The service whose IP the destination was, when the collector did not name one.
    pub dest_service: Option<Arc<ServiceInfo>>,
    /// The node that reported the flow.
    pub reporting_node: Option<Arc<str>>,
    /// The threat feeds that list the source or destination address.
    pub threat_feeds: Vec<ThreatFeed>,
    /// Source and destination workloads derived from the record's own labels before a label
    /// filter removed the labels that name them (`pod-template-hash`).
    pub label_workloads: [Option<Text>; 2],
    /// How the source's and the destination's addresses resolved.
    pub lookups: [Lookup; 2],
    /// The namespaces (comma-separated) whose egress identity the source address is: the
    /// firewall saw this address, and these namespaces are behind it.
    pub egress_identity: Option<Arc<str>>,
}

/// Static settings of the enrichment stage.
#[derive(Clone, Debug, Default)]
pub struct Enricher {
    /// The node this instance runs on: the reporting node of records that do not name one
    /// (a DaemonSet tailing its own node's flow log).
    pub node_name: Option<Arc<str>>,
    /// The threat feeds flows are matched against.
    pub threats: ThreatMatcher,
    /// Which of the record's own labels are passed on (the index's are filtered when built).
    pub labels: LabelFilter,
    /// The namespaces behind each egress address.
    pub egress: EgressLookup,
}

impl Enricher {
    pub fn enrich(&self, mut flow: FlowRecord, index: &EndpointIndex) -> EnrichedRecord {
        let mut label_workloads = [None, None];
        if !self.labels.is_empty() {
            // The filter changes what is shown, not what is known: name the workloads first.
            label_workloads = [&flow.source, &flow.dest]
                .map(|endpoint| workload_from_record(endpoint).map(Into::into));
            for labels in [&mut flow.source.labels, &mut flow.dest.labels]
                .into_iter()
                .flatten()
            {
                labels.retain(|label| self.labels.keeps(label));
            }
        }
        let lookup = |endpoint: &Endpoint| {
            let Some(ip) = endpoint.ip else {
                return (None, Lookup::NoAddress);
            };
            match index.endpoint_during(ip, flow.start_ms, flow.end_ms) {
                Some(found) if found.released => {
                    (Some(found.owner.clone()), Lookup::HitAfterDelete)
                }
                Some(found) => (Some(found.owner.clone()), Lookup::Hit),
                None => (None, Lookup::Miss),
            }
        };
        let (source, source_lookup) = lookup(&flow.source);
        let (dest, dest_lookup) = lookup(&flow.dest);
        let dest_service = match (&flow.dest_service, flow.dest.ip) {
            (None, Some(ip)) => index
                .service_during(ip, flow.start_ms, flow.end_ms)
                .cloned(),
            _ => None,
        };
        let reporter_info = match flow.reporter {
            Reporter::Source => source.as_ref(),
            Reporter::Dest => dest.as_ref(),
            Reporter::Forward => None,
        };
        let reporting_node = match &flow.host {
            Some(host) => Some(Arc::from(host.as_str())),
            None => self
                .node_name
                .clone()
                .or_else(|| reporter_info.and_then(|info| info.node.clone())),
        };
        let threats = self.threats.load();
        let threat_feeds = if threats.is_empty() {
            Vec::new()
        } else {
            let matches = [flow.source.ip, flow.dest.ip]
                .into_iter()
                .flatten()
                .fold(0, |mask, ip| mask | threats.lookup(ip).0);
            threats.feeds(Matches(matches)).cloned().collect()
        };
        let egress = self.egress.load();
        let egress_identity = match (egress.is_empty(), flow.source.ip) {
            (false, Some(ip)) => egress.lookup(ip),
            _ => None,
        };
        EnrichedRecord {
            flow,
            source,
            dest,
            dest_service,
            reporting_node,
            threat_feeds,
            label_workloads,
            lookups: [source_lookup, dest_lookup],
            egress_identity,
        }
    }
}

/// What the index said about one endpoint's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The record has no address for the endpoint (aggregated by the collector).
    NoAddress,
    Miss,
    Hit,
    /// The address resolved to an owner that has since released it (a deleted pod, within
    /// the grace period).
    HitAfterDelete,
}

impl Lookup {
    pub const ALL: [Lookup; 4] = [
        Lookup::NoAddress,
        Lookup::Miss,
        Lookup::Hit,
        Lookup::HitAfterDelete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::NoAddress => "no_address",
            Lookup::Miss => "miss",
            Lookup::Hit => "hit",
            Lookup::HitAfterDelete => "hit_after_delete",
        }
    }
}

/// Which endpoint of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Dest,
}

/// One endpoint of an enriched record, with the record's own values taking precedence over
/// the index's.
#[derive(Clone, Copy)]
pub struct EndpointView<'a> {
    pub flow: &'a Endpoint,
    pub info: Option<&'a EndpointInfo>,
    /// The workload named by labels a filter has since removed.
    label_workload: Option<&'a str>,
    /// For the destination: the record, whose service names the namespace when the
    /// destination was addressed as a service (its cluster or load-balancer IP), not as a pod.
    /// Read only when asked (views are made per encoded field).
    addressed_as_service: Option<&'a EnrichedRecord>,
}

impl EnrichedRecord {
    pub fn side(&self, side: Side) -> EndpointView<'_> {
        match side {
            Side::Source => EndpointView {
                flow: &self.flow.source,
                info: self.source.as_deref(),
                label_workload: self.label_workloads[0].as_deref(),
                addressed_as_service: None,
            },
            Side::Dest => EndpointView {
                flow: &self.flow.dest,
                info: self.dest.as_deref(),
                label_workload: self.label_workloads[1].as_deref(),
                addressed_as_service: Some(self),
            },
        }
    }

    /// The highest severity the matching threat feeds set, if any sets one.
    pub fn threat_severity(&self) -> Option<u8> {
        self.threat_feeds
            .iter()
            .filter_map(|feed| feed.severity)
            .max()
    }

    /// `namespace/name` of the destination service, from the record or the index.
    pub fn dest_service_name(&self) -> Option<(Option<&str>, &str)> {
        match (&self.flow.dest_service, &self.dest_service) {
            (Some(service), _) => Some((service.namespace.as_deref(), &service.name)),
            (None, Some(service)) => Some((Some(&service.namespace), &service.name)),
            (None, None) => None,
        }
    }
}

impl<'a> EndpointView<'a> {
    /// The host name to report: the pod name, the node name for host endpoints, the set name for
    /// network sets, or the aggregated name (`web-5bdcdd9c97-*`) when nothing finer is known.
    pub fn host_name(&self) -> Option<&'a str> {
        self.flow
            .name
            .as_deref()
            .or(self.info.map(|info| &*info.name))
            .or(self.flow.name_aggr.as_deref())
    }

    /// The pod name, when the endpoint is a pod.
    pub fn pod_name(&self) -> Option<&'a str> {
        match self.flow.kind {
            Some(EndpointKind::Workload) | None => self.flow.name.as_deref().or(self
                .info
                .filter(|info| info.kind == EndpointInfoKind::Pod)
                .map(|info| &*info.name)),
            _ => None,
        }
    }

    /// The collector's namespace, else the index's, else (a destination addressed as a
    /// service) the service's.
    pub fn namespace(&self) -> Option<&'a str> {
        self.flow
            .namespace
            .as_deref()
            .or(self.info.and_then(|info| info.namespace.as_deref()))
            .or_else(|| {
                self.addressed_as_service?
                    .dest_service_name()
                    .and_then(|(namespace, _)| namespace)
            })
    }

    pub fn labels(&self) -> Option<&'a [Text]> {
        self.flow
            .labels
            .as_deref()
            .or(self.info.map(|info| &*info.labels))
    }

    pub fn namespace_labels(&self) -> Option<&'a [Text]> {
        self.info.map(|info| &*info.namespace_labels)
    }

    /// `Kind/name` of the owning workload: the collector's, else the index's, else from the
    /// record's own name and labels when the controller's labels say.
    pub fn workload(&self) -> Option<std::borrow::Cow<'a, str>> {
        if let Some(workload) = self
            .flow
            .workload
            .as_deref()
            .or(self.info.and_then(|info| info.workload.as_deref()))
            .or(self.label_workload)
        {
            return Some(workload.into());
        }
        workload_from_record(self.flow).map(Into::into)
    }

    pub fn node(&self) -> Option<&'a str> {
        self.info.and_then(|info| info.node.as_deref())
    }

    /// `namespace/name` of the services that select the pod.
    pub fn services(&self) -> Option<&'a [Text]> {
        self.info
            .map(|info| &*info.services)
            .filter(|services| !services.is_empty())
    }
}

/// The workload named by an endpoint's own name and labels, if they say.
fn workload_from_record(endpoint: &Endpoint) -> Option<String> {
    let name = endpoint.name.as_deref().or(endpoint.name_aggr.as_deref())?;
    let labels = endpoint.labels.as_deref()?;
    workload::from_labels(name, labels.iter().map(|label| &**label))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::calico;

    fn index() -> EndpointIndex {
        let inventory = crate::cluster::Inventory::from_json(include_bytes!(
            "../../deploy/local/inventory.json"
        ))
        .unwrap();
        EndpointIndex::from_inventory(&inventory)
    }

    fn record(line: &str) -> EnrichedRecord {
        Enricher::default().enrich(calico::parse_str(line).unwrap(), &index())
    }

    #[test]
    fn fills_gaps_from_the_index() {
        let enriched = record(
            r#"{"start_time":1,"end_time":2,"proto":"tcp","action":"allow","reporter":"src","source_ip":"10.244.1.5","dest_ip":"10.96.0.10","dest_port":53,"source_name":"-","dest_name":"-"}"#,
        );
        let source = enriched.side(Side::Source);
        assert_eq!(source.pod_name(), Some("frontend-7d9f8c6b5d-x2k4l"));
        assert_eq!(source.namespace(), Some("web"));
        assert_eq!(source.workload().as_deref(), Some("Deployment/frontend"));
        assert_eq!(source.node(), Some("node-a"));
        assert_eq!(enriched.reporting_node.as_deref(), Some("node-a"));
        assert_eq!(
            enriched.dest_service_name(),
            Some((Some("kube-system"), "kube-dns"))
        );
        assert_eq!(
            enriched.side(Side::Dest).namespace(),
            Some("kube-system"),
            "a flow to a service's cluster IP is in the service's namespace"
        );
    }

    #[test]
    fn record_values_win_and_aggregates_get_no_pod() {
        let enriched = record(
            r#"{"start_time":1,"end_time":2,"proto":"tcp","action":"allow","reporter":"src","host":"node-z","source_ip":"10.244.1.5","source_name":"renamed","source_namespace":"elsewhere","dest_ip":null,"dest_name":"-","dest_name_aggr":"db-*","dest_namespace":"data"}"#,
        );
        let source = enriched.side(Side::Source);
        assert_eq!(source.pod_name(), Some("renamed"));
        assert_eq!(source.namespace(), Some("elsewhere"));
        let dest = enriched.side(Side::Dest);
        assert!(dest.info.is_none());
        assert_eq!(dest.pod_name(), None);
        assert_eq!(dest.host_name(), Some("db-*"));
        assert_eq!(enriched.reporting_node.as_deref(), Some("node-z"));
    }
}
