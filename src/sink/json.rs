//! The JSON-lines encoder: one enriched record -> one JSON object, for data lakes and SIEMs
//! that ingest JSON. Pure. JSON string escaping keeps every value on its line.

use serde::Serialize;

use crate::enrich::{EndpointView, EnrichedRecord, Side};
use crate::flow::record::Text;

/// Encodes enriched records as single-line JSON objects.
#[derive(Debug, Default)]
pub struct JsonEncoder {
    cluster_name: Option<Text>,
}

impl JsonEncoder {
    pub fn new(cluster_name: Option<&str>) -> JsonEncoder {
        JsonEncoder {
            cluster_name: cluster_name.map(Into::into),
        }
    }

    /// Appends one JSON object for `record` to `out`, without a line terminator.
    pub fn encode(&self, record: &EnrichedRecord, out: &mut Vec<u8>) {
        self.encode_trimmed(record, out, false);
    }

    /// Like [`JsonEncoder::encode`]; with `omit_free_text`, leaves out the free-text fields
    /// (labels, services, domains, policies, process arguments) to fit a size limit.
    pub fn encode_trimmed(&self, record: &EnrichedRecord, out: &mut Vec<u8>, omit_free_text: bool) {
        let flow = &record.flow;
        let free = |items| free_text(items, omit_free_text);
        let view = JsonRecord {
            start_time_ms: flow.start_ms,
            end_time_ms: flow.end_ms,
            proto: flow.proto.to_string(),
            action: flow.action.as_str(),
            reporter: flow.reporter.as_str(),
            source: JsonEndpoint::new(record.side(Side::Source), omit_free_text),
            dest: JsonEndpoint::new(record.side(Side::Dest), omit_free_text),
            dest_service: record
                .dest_service_name()
                .map(|(namespace, name)| JsonService {
                    namespace,
                    name,
                    port_name: flow
                        .dest_service
                        .as_ref()
                        .and_then(|service| service.port_name.as_deref()),
                    port: flow.dest_service.as_ref().and_then(|service| service.port),
                }),
            dest_domains: free(&flow.dest_domains),
            policies: free(&flow.policies),
            bytes_in: flow.counters.bytes_in,
            bytes_out: flow.counters.bytes_out,
            packets_in: flow.counters.packets_in,
            packets_out: flow.counters.packets_out,
            num_flows: flow.counters.num_flows,
            num_flows_started: flow.counters.num_flows_started,
            num_flows_completed: flow.counters.num_flows_completed,
            process_name: flow.process.name.as_deref(),
            process_id: flow.process.id.as_deref(),
            process_args: free(&flow.process.args),
            reporting_node: record.reporting_node.as_deref(),
            cluster: self.cluster_name.as_deref(),
            threat_feeds: record.threat_feeds.iter().map(|feed| &*feed.name).collect(),
            egress_identity: record
                .egress_identity
                .as_deref()
                .map(|namespaces| namespaces.split(',').collect())
                .unwrap_or_default(),
        };
        serde_json::to_writer(out, &view).expect("serializing to a Vec cannot fail");
    }
}

/// `items`, or nothing when free text is left out.
fn free_text(items: &[Text], omit: bool) -> &[Text] {
    if omit {
        &[]
    } else {
        items
    }
}

#[derive(Serialize)]
struct JsonRecord<'a> {
    start_time_ms: i64,
    end_time_ms: i64,
    proto: String,
    action: &'static str,
    reporter: &'static str,
    source: JsonEndpoint<'a>,
    dest: JsonEndpoint<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dest_service: Option<JsonService<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    dest_domains: &'a [Text],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    policies: &'a [Text],
    bytes_in: u64,
    bytes_out: u64,
    packets_in: u64,
    packets_out: u64,
    num_flows: u64,
    num_flows_started: u64,
    num_flows_completed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_id: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    process_args: &'a [Text],
    #[serde(skip_serializing_if = "Option::is_none")]
    reporting_node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    threat_feeds: Vec<&'a str>,
    /// The namespaces whose egress identity the source address is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    egress_identity: Vec<&'a str>,
}

#[derive(Serialize)]
struct JsonEndpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<std::net::IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "type")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name_aggr: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<&'a [Text]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace_labels: Option<&'a [Text]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    services: Option<&'a [Text]>,
}

#[derive(Serialize)]
struct JsonService<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    port_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

impl<'a> JsonEndpoint<'a> {
    fn new(view: EndpointView<'a>, omit_free_text: bool) -> Self {
        let free = |items: Option<&'a [Text]>| items.filter(|_| !omit_free_text);
        JsonEndpoint {
            ip: view.flow.ip,
            port: view.flow.port,
            kind: view.flow.kind.map(|kind| kind.as_str()),
            name: view.host_name(),
            name_aggr: view.flow.name_aggr.as_deref(),
            pod: view.pod_name(),
            namespace: view.namespace(),
            labels: free(view.labels()),
            namespace_labels: free(view.namespace_labels().filter(|labels| !labels.is_empty())),
            workload: view.workload(),
            node: view.node(),
            services: free(view.services()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Inventory;
    use crate::enrich::{EndpointIndex, Enricher};
    use crate::flow::calico;

    #[test]
    fn golden_json() {
        let inventory =
            Inventory::from_json(include_bytes!("../../deploy/local/inventory.json")).unwrap();
        let index = EndpointIndex::from_inventory(&inventory);
        let line = r#"{"start_time":1,"end_time":2,"source_ip":"10.244.1.5","source_port":40000,"source_type":"wep","dest_ip":"10.96.0.10","dest_port":53,"dest_type":"net","proto":"udp","action":"allow","reporter":"src","process_name":"a\nb"}"#;
        let record = Enricher::default().enrich(calico::parse_str(line).unwrap(), &index);
        let mut out = Vec::new();
        JsonEncoder::new(Some("c1")).encode(&record, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"start_time_ms":1000,"end_time_ms":2000,"proto":"UDP","action":"allow","reporter":"src","source":{"ip":"10.244.1.5","port":40000,"type":"wep","name":"frontend-7d9f8c6b5d-x2k4l","pod":"frontend-7d9f8c6b5d-x2k4l","namespace":"web","labels":["app=frontend","pod-template-hash=7d9f8c6b5d"],"namespace_labels":["team=storefront"],"workload":"Deployment/frontend","node":"node-a","services":["web/frontend"]},"dest":{"ip":"10.96.0.10","port":53,"type":"net","namespace":"kube-system"},"dest_service":{"namespace":"kube-system","name":"kube-dns"},"bytes_in":0,"bytes_out":0,"packets_in":0,"packets_out":0,"num_flows":0,"num_flows_started":0,"num_flows_completed":0,"process_name":"a\nb","reporting_node":"node-a","cluster":"c1"}"#
        );
    }
}
