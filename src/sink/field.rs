//! The vocabulary of record fields an encoder's mapping can name (`source_namespace`,
//! `dest_workload`, ...), and how each one is read from an enriched record.
//!
//! Key-value encoders (CEF now, LEEF later) map their keys onto these fields; a field's
//! [`ValueKind`] lets config validation refuse a mapping the SIEM would misread (a pod name in
//! an IPv4 key).

use std::borrow::Cow;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::enrich::{EnrichedRecord, Side};
use crate::flow::record::Text;
use crate::flow::record::{Protocol, Reporter as FlowReporter};

/// A value of an enriched record, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowField {
    /// End of the flow's reporting window, epoch milliseconds.
    EndTime,
    /// Start of the flow's reporting window, epoch milliseconds.
    StartTime,
    /// Source IP, when it is IPv4.
    SourceIpv4,
    /// Destination IP, when it is IPv4.
    DestIpv4,
    /// Source IP, when it is IPv6.
    SourceIpv6,
    /// Destination IP, when it is IPv6.
    DestIpv6,
    /// Source port; absent when the collector aggregated ports.
    SourcePort,
    /// Destination port.
    DestPort,
    /// Transport protocol, upper case (`TCP`, `UDP`, `ICMP`, or a number).
    Proto,
    /// Policy verdict: `allow` or `deny`.
    Action,
    /// Bytes received by the reporting endpoint in the window.
    BytesIn,
    /// Bytes sent by the reporting endpoint in the window.
    BytesOut,
    /// Packets received by the reporting endpoint in the window.
    PacketsIn,
    /// Packets sent by the reporting endpoint in the window.
    PacketsOut,
    /// Number of flows the record aggregates.
    NumFlows,
    /// Source pod name (node name for host endpoints, set name for network sets).
    SourceName,
    /// Destination pod name (node name for host endpoints, set name for network sets).
    DestName,
    /// Namespace of the source (from the record, else from the inventory).
    SourceNamespace,
    /// Namespace of the destination (from the record, else from the inventory).
    DestNamespace,
    /// Source labels, `k=v` comma-joined.
    SourceLabels,
    /// Destination labels, `k=v` comma-joined.
    DestLabels,
    /// Labels of the source's namespace, `k=v` comma-joined.
    SourceNamespaceLabels,
    /// Labels of the destination's namespace, `k=v` comma-joined.
    DestNamespaceLabels,
    /// Owning workload of the source, `Kind/name`.
    SourceWorkload,
    /// Owning workload of the destination, `Kind/name`.
    DestWorkload,
    /// Node the source runs on.
    SourceNode,
    /// Node the destination runs on.
    DestNode,
    /// Destination service, `namespace/name`.
    DestService,
    /// Services whose selector matches the source pod, `namespace/name` comma-joined.
    SourceServices,
    /// Services whose selector matches the destination pod, `namespace/name` comma-joined.
    DestServices,
    /// Domains seen for the destination, comma-joined.
    DestDomains,
    /// Enforced policy trace, entries joined with `;`.
    Policies,
    /// Name of the process behind the flow on the reporting node, when collected.
    ProcessName,
    /// Its process id.
    ProcessId,
    /// Process arguments, space-joined.
    ProcessArgs,
    /// 1 when the source reported the flow (outbound), 0 when the destination did.
    Direction,
    /// `src`, `dst` or `fwd`.
    Reporter,
    /// The node that reported the flow.
    ReportingNode,
    /// The configured cluster name.
    ClusterName,
    /// Names of the threat feeds that list the source or destination address, comma-joined.
    ThreatFeeds,
    /// The namespaces, comma-joined, whose egress identity (egress gateway address) the source address is.
    EgressIdentity,
}

/// The type of a field's value, for checking it against a key's declared type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    Time,
    Ipv4,
    Ipv6,
    Integer,
    Text,
}

/// One field's value, borrowed from the record where possible.
#[derive(Debug, PartialEq)]
pub enum Value<'a> {
    Integer(i64),
    Ip(IpAddr),
    Text(Cow<'a, str>),
    /// Several strings, written joined by the separator.
    List(&'a [Text], &'static str),
    /// `namespace/name`.
    Path(&'a str, &'a str),
}

impl FlowField {
    /// Whether the value is descriptive free text that a size limit may shorten or drop
    /// before the record itself is dropped (never the 5-tuple, times, names or verdict).
    pub fn is_free_text(self) -> bool {
        use FlowField::*;
        matches!(
            self,
            SourceLabels
                | DestLabels
                | SourceNamespaceLabels
                | DestNamespaceLabels
                | SourceServices
                | DestServices
                | DestDomains
                | Policies
                | ProcessArgs
        )
    }

    pub fn kind(self) -> ValueKind {
        use FlowField::*;
        match self {
            EndTime | StartTime => ValueKind::Time,
            SourceIpv4 | DestIpv4 => ValueKind::Ipv4,
            SourceIpv6 | DestIpv6 => ValueKind::Ipv6,
            SourcePort | DestPort | BytesIn | BytesOut | PacketsIn | PacketsOut | NumFlows
            | Direction => ValueKind::Integer,
            _ => ValueKind::Text,
        }
    }

    /// The field's value in `record`, or `None` when the record has none.
    pub fn value<'a>(
        self,
        record: &'a EnrichedRecord,
        cluster_name: Option<&'a str>,
    ) -> Option<Value<'a>> {
        use FlowField::*;
        let flow = &record.flow;
        let text = |value: Option<&'a str>| value.map(|text| Value::Text(Cow::Borrowed(text)));
        let list = |values: Option<&'a [Text]>, separator| {
            values
                .filter(|values| !values.is_empty())
                .map(|values| Value::List(values, separator))
        };
        let int = |value: u64| Some(Value::Integer(i64::try_from(value).unwrap_or(i64::MAX)));
        let (source, dest) = (record.side(Side::Source), record.side(Side::Dest));
        match self {
            EndTime => Some(Value::Integer(flow.end_ms)),
            StartTime => Some(Value::Integer(flow.start_ms)),
            SourceIpv4 => flow.source.ip.filter(IpAddr::is_ipv4).map(Value::Ip),
            DestIpv4 => flow.dest.ip.filter(IpAddr::is_ipv4).map(Value::Ip),
            SourceIpv6 => flow.source.ip.filter(IpAddr::is_ipv6).map(Value::Ip),
            DestIpv6 => flow.dest.ip.filter(IpAddr::is_ipv6).map(Value::Ip),
            SourcePort => flow.source.port.map(|port| Value::Integer(port.into())),
            DestPort => flow.dest.port.map(|port| Value::Integer(port.into())),
            Proto => Some(match (flow.proto.name(), flow.proto) {
                (Some(name), _) => Value::Text(Cow::Borrowed(name)),
                (None, Protocol::Number(number)) => Value::Integer(number.into()),
                (None, _) => unreachable!("every other protocol has a name"),
            }),
            Action => text(Some(flow.action.as_str())),
            BytesIn => int(flow.counters.bytes_in),
            BytesOut => int(flow.counters.bytes_out),
            PacketsIn => int(flow.counters.packets_in),
            PacketsOut => int(flow.counters.packets_out),
            NumFlows => int(flow.counters.num_flows),
            SourceName => text(source.host_name()),
            DestName => text(dest.host_name()),
            SourceNamespace => text(source.namespace()),
            DestNamespace => text(dest.namespace()),
            SourceLabels => list(source.labels(), ","),
            DestLabels => list(dest.labels(), ","),
            SourceNamespaceLabels => list(source.namespace_labels(), ","),
            DestNamespaceLabels => list(dest.namespace_labels(), ","),
            SourceWorkload => source.workload().map(Value::Text),
            DestWorkload => dest.workload().map(Value::Text),
            SourceNode => text(source.node()),
            DestNode => text(dest.node()),
            DestService => record
                .dest_service_name()
                .map(|(namespace, name)| match namespace {
                    Some(namespace) => Value::Path(namespace, name),
                    None => Value::Text(Cow::Borrowed(name)),
                }),
            DestDomains => list(Some(&flow.dest_domains), ","),
            SourceServices => list(source.services(), ","),
            DestServices => list(dest.services(), ","),
            Policies => list(Some(&flow.policies), ";"),
            ProcessName => text(flow.process.name.as_deref()),
            ProcessId => text(flow.process.id.as_deref()),
            ProcessArgs => list(Some(&flow.process.args), " "),
            Direction => match flow.reporter {
                FlowReporter::Source => Some(Value::Integer(1)),
                FlowReporter::Dest => Some(Value::Integer(0)),
                FlowReporter::Forward => None,
            },
            Reporter => text(Some(flow.reporter.as_str())),
            ReportingNode => text(record.reporting_node.as_deref()),
            ClusterName => text(cluster_name),
            EgressIdentity => text(record.egress_identity.as_deref()),
            ThreatFeeds => match record.threat_feeds.as_slice() {
                [] => None,
                [feed] => Some(Value::Text(Cow::Borrowed(&feed.name))),
                feeds => Some(Value::Text(Cow::Owned(
                    feeds
                        .iter()
                        .map(|feed| &*feed.name)
                        .collect::<Vec<_>>()
                        .join(","),
                ))),
            },
        }
    }
}
