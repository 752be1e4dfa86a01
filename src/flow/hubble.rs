//! Cilium Hubble flows: one JSON object per line, as `hubble observe -o json` prints them and
//! Hubble's exporter writes them (`{"flow": {...}, "node_name": ..., "time": ...}`), or a bare
//! `Flow` (the legacy JSON mode).
//!
//! Hubble writes protojson with the proto field names: enums are strings, timestamps RFC 3339,
//! labels `source:key=value` (`k8s:app=web`, `reserved:world`). One Hubble flow is one observed
//! packet or connection event, so the record's window is that instant and it counts one flow.
//! Pure, like the Calico parser; unknown fields are ignored (the set grows with Cilium).

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Deserialize;

use super::record::{
    Action, Counters, Endpoint, EndpointKind, FlowRecord, Protocol, Reporter, ServiceRef, Text,
};
use super::{json_object, utf8, RejectReason, Rejection};

/// Parses one Hubble flow line (without its line terminator).
pub fn parse_line(line: &[u8]) -> Result<FlowRecord, Rejection> {
    parse_str(utf8(line)?)
}

/// Parses one line that is already known to be UTF-8.
pub fn parse_str(text: &str) -> Result<FlowRecord, Rejection> {
    let response: RawResponse<'_> = json_object(text)?;
    match response.flow {
        Some(flow) => flow.into_record(response.node_name, response.time),
        // The legacy mode prints the bare Flow.
        None if response.verdict.is_some() => {
            json_object::<RawFlow<'_>>(text)?.into_record(None, None)
        }
        None => Err(Rejection::new(
            RejectReason::MissingField,
            "missing field `flow` (not a Hubble flow)".to_owned(),
        )),
    }
}

/// A `GetFlowsResponse` line; `verdict` only tells a bare `Flow` apart.
#[derive(Deserialize)]
struct RawResponse<'a> {
    #[serde(borrow)]
    flow: Option<RawFlow<'a>>,
    #[serde(borrow)]
    node_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    verdict: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawFlow<'a> {
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    verdict: Option<Cow<'a, str>>,
    #[serde(borrow)]
    drop_reason_desc: Option<Cow<'a, str>>,
    #[serde(rename = "IP", borrow)]
    ip: Option<RawIp<'a>>,
    l4: Option<RawL4>,
    #[serde(borrow)]
    source: Option<RawEndpoint<'a>>,
    #[serde(borrow)]
    destination: Option<RawEndpoint<'a>>,
    #[serde(borrow)]
    node_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    destination_names: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    destination_service: Option<RawService<'a>>,
    #[serde(borrow)]
    traffic_direction: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    egress_allowed_by: Vec<RawPolicy<'a>>,
    #[serde(default, borrow)]
    ingress_allowed_by: Vec<RawPolicy<'a>>,
    #[serde(default, borrow)]
    egress_denied_by: Vec<RawPolicy<'a>>,
    #[serde(default, borrow)]
    ingress_denied_by: Vec<RawPolicy<'a>>,
}

#[derive(Deserialize)]
struct RawIp<'a> {
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    destination: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawL4 {
    #[serde(rename = "TCP")]
    tcp: Option<RawPorts>,
    #[serde(rename = "UDP")]
    udp: Option<RawPorts>,
    #[serde(rename = "SCTP")]
    sctp: Option<RawPorts>,
    #[serde(rename = "ICMPv4")]
    icmpv4: Option<serde::de::IgnoredAny>,
    #[serde(rename = "ICMPv6")]
    icmpv6: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawPorts {
    source_port: Option<u32>,
    destination_port: Option<u32>,
}

#[derive(Deserialize)]
struct RawEndpoint<'a> {
    #[serde(borrow)]
    namespace: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    labels: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    pod_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    workloads: Vec<RawWorkload<'a>>,
}

#[derive(Deserialize)]
struct RawWorkload<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawService<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    namespace: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawPolicy<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    namespace: Option<Cow<'a, str>>,
}

impl RawFlow<'_> {
    fn into_record(
        self,
        node_name: Option<Cow<'_, str>>,
        time: Option<Cow<'_, str>>,
    ) -> Result<FlowRecord, Rejection> {
        let time = self
            .time
            .or(time)
            .ok_or_else(|| Rejection::missing("time"))?;
        let at_ms = time
            .parse::<jiff::Timestamp>()
            .map_err(|_| Rejection::invalid("time", "an RFC 3339 timestamp"))?
            .as_millisecond();
        let action = match &*self.verdict.ok_or_else(|| Rejection::missing("verdict"))? {
            "FORWARDED" | "REDIRECTED" | "TRANSLATED" | "TRACED" | "AUDIT" => Action::Allow,
            "DROPPED" | "ERROR" => Action::Deny,
            _ => {
                return Err(Rejection::invalid(
                    "verdict",
                    "a Hubble verdict such as `FORWARDED`",
                ))
            }
        };
        let reporter = match self.traffic_direction.as_deref() {
            Some("EGRESS") => Reporter::Source,
            Some("INGRESS") => Reporter::Dest,
            _ => Reporter::Forward,
        };
        let ip = self.ip.ok_or_else(|| Rejection::missing("IP"))?;
        let (proto, ports) = match self.l4 {
            Some(RawL4 {
                tcp: Some(ports), ..
            }) => (Protocol::Tcp, Some(ports)),
            Some(RawL4 {
                udp: Some(ports), ..
            }) => (Protocol::Udp, Some(ports)),
            Some(RawL4 {
                sctp: Some(ports), ..
            }) => (Protocol::Sctp, Some(ports)),
            Some(RawL4 {
                icmpv4: Some(_), ..
            }) => (Protocol::Icmp, None),
            Some(RawL4 {
                icmpv6: Some(_), ..
            }) => (Protocol::Icmpv6, None),
            _ => return Err(Rejection::missing("l4")),
        };
        let (source_port, dest_port) = match ports {
            Some(ports) => (
                port(ports.source_port, "l4 source_port")?,
                port(ports.destination_port, "l4 destination_port")?,
            ),
            None => (None, None),
        };
        let source = endpoint(self.source, address(ip.source, "IP.source")?, source_port);
        let dest = endpoint(
            self.destination,
            address(ip.destination, "IP.destination")?,
            dest_port,
        );
        let dest_service = self.destination_service.and_then(|service| {
            Some(ServiceRef {
                namespace: text(service.namespace),
                name: text(service.name)?,
                port_name: None,
                port: None,
            })
        });
        let mut policies: Vec<Text> = [
            ("egress", "allow", self.egress_allowed_by),
            ("ingress", "allow", self.ingress_allowed_by),
            ("egress", "deny", self.egress_denied_by),
            ("ingress", "deny", self.ingress_denied_by),
        ]
        .into_iter()
        .flat_map(|(direction, verdict, policies)| {
            policies.into_iter().filter_map(move |policy| {
                let name = policy.name?;
                Some(match policy.namespace.as_deref() {
                    Some(namespace) if !namespace.is_empty() => {
                        compact_str::format_compact!("{direction}|{namespace}/{name}|{verdict}")
                    }
                    _ => compact_str::format_compact!("{direction}|{name}|{verdict}"),
                })
            })
        })
        .collect();
        if action == Action::Deny {
            if let Some(reason) = text(self.drop_reason_desc) {
                policies.push(compact_str::format_compact!("drop_reason|{reason}"));
            }
        }
        Ok(FlowRecord {
            start_ms: at_ms,
            end_ms: at_ms,
            proto,
            action,
            reporter,
            source,
            dest,
            dest_service,
            dest_domains: self
                .destination_names
                .into_iter()
                .map(|name| Text::from(&*name))
                .collect(),
            policies,
            counters: Counters {
                num_flows: 1,
                ..Counters::default()
            },
            process: Default::default(),
            host: text(self.node_name.or(node_name)),
        })
    }
}

/// One side of the flow. Labels lose their `k8s:` source prefix (`k8s:app=web` is the pod's
/// `app=web`); Cilium's other labels keep theirs (`reserved:world`, `cidr:...`).
fn endpoint(raw: Option<RawEndpoint<'_>>, ip: Option<IpAddr>, port: Option<u16>) -> Endpoint {
    let Some(raw) = raw else {
        return Endpoint {
            ip,
            port,
            ..Endpoint::default()
        };
    };
    let reserved = |name: &str| raw.labels.iter().any(|label| label == name);
    let kind = if raw.pod_name.as_deref().is_some_and(|name| !name.is_empty()) {
        Some(EndpointKind::Workload)
    } else if reserved("reserved:host") || reserved("reserved:remote-node") {
        Some(EndpointKind::Host)
    } else if reserved("reserved:world") {
        Some(EndpointKind::Network)
    } else {
        None
    };
    let labels: Vec<Text> = raw
        .labels
        .iter()
        .map(|label| Text::from(label.strip_prefix("k8s:").unwrap_or(label)))
        .collect();
    Endpoint {
        ip,
        port,
        name: text(raw.pod_name),
        name_aggr: None,
        namespace: text(raw.namespace),
        labels: (!labels.is_empty()).then_some(labels),
        kind,
        workload: raw
            .workloads
            .first()
            .map(|workload| compact_str::format_compact!("{}/{}", workload.kind, workload.name)),
    }
}

fn text(value: Option<Cow<'_, str>>) -> Option<Text> {
    value
        .filter(|value| !value.is_empty())
        .map(|value| Text::from(&*value))
}

fn address(value: Option<Cow<'_, str>>, field: &'static str) -> Result<Option<IpAddr>, Rejection> {
    match value.as_deref() {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| Rejection::invalid(field, "an IP address")),
    }
}

fn port(value: Option<u32>, field: &'static str) -> Result<Option<u16>, Rejection> {
    match value {
        None | Some(0) => Ok(None),
        Some(port) => u16::try_from(port)
            .map(Some)
            .map_err(|_| Rejection::invalid(field, "a port between 0 and 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = include_str!("../../connectors/hubble/fixtures/flows.jsonl");

    #[test]
    fn reads_hubble_observe_output() {
        let records: Vec<FlowRecord> = FIXTURES
            .lines()
            .map(|line| parse_str(line).unwrap_or_else(|error| panic!("{line}: {error:?}")))
            .collect();
        let dns = &records[0];
        assert_eq!(dns.start_ms, 1_795_766_400_123);
        assert_eq!(
            (dns.proto, dns.action, dns.reporter),
            (Protocol::Udp, Action::Allow, Reporter::Source)
        );
        assert_eq!(dns.source.ip, Some("10.244.1.5".parse().unwrap()));
        assert_eq!((dns.source.port, dns.dest.port), (Some(40112), Some(53)));
        assert_eq!(
            dns.source.name.as_deref(),
            Some("frontend-7d9f8c6b5d-x2k4l")
        );
        assert_eq!(dns.source.workload.as_deref(), Some("Deployment/frontend"));
        assert_eq!(dns.source.kind, Some(EndpointKind::Workload));
        assert!(dns
            .source
            .labels
            .as_ref()
            .unwrap()
            .contains(&Text::from("app=frontend")));
        assert_eq!(
            dns.dest_service.as_ref().map(|service| &*service.name),
            Some("kube-dns")
        );
        assert_eq!(dns.host.as_deref(), Some("node-a"));
        assert_eq!(dns.counters.num_flows, 1);

        let denied = &records[1];
        assert_eq!(
            (denied.action, denied.reporter),
            (Action::Deny, Reporter::Dest)
        );
        assert_eq!(
            denied.policies,
            [
                "ingress|shop/default-deny|deny",
                "drop_reason|POLICY_DENIED"
            ]
        );

        let world = &records[2];
        assert_eq!(world.dest.kind, Some(EndpointKind::Network));
        assert_eq!(world.dest_domains, ["updates.example.com."]);
        assert_eq!(world.proto, Protocol::Tcp);

        let ipv6 = &records[3];
        assert_eq!(ipv6.dest.ip, Some("fd00:10:244:1::5".parse().unwrap()));

        let bare = &records[4];
        assert_eq!(bare.proto, Protocol::Icmp);
        assert_eq!(bare.source.port, None);
    }

    #[test]
    fn rejects_what_is_not_a_hubble_flow() {
        let reason = |line: &str| parse_str(line).unwrap_err().reason;
        assert_eq!(reason("[1]"), RejectReason::InvalidJson);
        assert_eq!(reason(r#"{"start_time": 1}"#), RejectReason::MissingField);
        assert_eq!(
            reason(
                r#"{"flow": {"time": "2026-11-27T08:00:00Z", "verdict": "SIDEWAYS", "IP": {}, "l4": {"TCP": {}}}}"#
            ),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(r#"{"flow": {"time": "yesterday", "verdict": "FORWARDED"}}"#),
            RejectReason::InvalidField
        );
        assert_eq!(
            reason(
                r#"{"flow": {"time": "2026-11-27T08:00:00Z", "verdict": "FORWARDED", "IP": {"source": "10.0.0.300"}, "l4": {"TCP": {}}}}"#
            ),
            RejectReason::InvalidField
        );
    }
}
