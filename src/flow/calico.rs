//! Calico Enterprise flow logs: one JSON object per line, as Felix writes `flows.log`.
//!
//! This module turns one line into a [`FlowRecord`] or a [`Rejection`]. It is pure: no IO,
//! no cluster knowledge. Calico's aggregation sentinels (`-`, `*`, `null`, and `pub`/`pvt`
//! for aggregated names) become absent values here, so nothing downstream sees them.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::record::{
    Action, Counters, Endpoint, EndpointKind, FlowRecord, Process, Protocol, Reporter, ServiceRef,
    Text,
};
use super::{json_object, utf8, Rejection};

mod scan;

/// Parses one Calico flow-log line (without its line terminator).
pub fn parse_line(line: &[u8]) -> Result<FlowRecord, Rejection> {
    parse_str(utf8(line)?)
}

/// Parses one line that is already known to be UTF-8. Lines of the shape Felix writes are
/// read by [`scan`]; anything else, and every rejection, by serde_json.
pub fn parse_str(text: &str) -> Result<FlowRecord, Rejection> {
    match scan::read(text) {
        Some(flow) => flow.into_record(),
        None => parse_str_with_serde_json(text),
    }
}

/// Reads a line with serde_json alone, as [`parse_str`] does for lines its scanner leaves:
/// the reference the scanner is measured and tested against.
pub fn parse_str_with_serde_json(text: &str) -> Result<FlowRecord, Rejection> {
    json_object::<RawFlow<'_>>(text)?.into_record()
}

/// The wire shape of a Calico flow-log record. Unknown fields are ignored: Felix adds fields
/// over time, and none of them may break ingestion.
#[derive(Default, Deserialize)]
struct RawFlow<'a> {
    start_time: Option<i64>,
    end_time: Option<i64>,
    #[serde(borrow)]
    proto: Option<StrOrNum<'a>>,
    #[serde(borrow)]
    action: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reporter: Option<Cow<'a, str>>,

    #[serde(borrow)]
    source_ip: Option<Cow<'a, str>>,
    source_port: Option<u32>,
    #[serde(borrow)]
    source_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source_name_aggr: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source_namespace: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source_type: Option<Cow<'a, str>>,
    #[serde(default)]
    source_labels: RawLabels,

    #[serde(borrow)]
    dest_ip: Option<Cow<'a, str>>,
    dest_port: Option<u32>,
    #[serde(borrow)]
    dest_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dest_name_aggr: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dest_namespace: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dest_type: Option<Cow<'a, str>>,
    #[serde(default)]
    dest_labels: RawLabels,

    #[serde(borrow)]
    dest_service_namespace: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dest_service_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dest_service_port: Option<StrOrNum<'a>>,
    dest_service_port_num: Option<u32>,
    #[serde(default)]
    dest_domains: Option<Vec<Text>>,

    #[serde(default)]
    policies: Option<RawPolicies>,

    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
    packets_in: Option<u64>,
    packets_out: Option<u64>,
    num_flows: Option<u64>,
    num_flows_started: Option<u64>,
    num_flows_completed: Option<u64>,

    #[serde(borrow)]
    process_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    process_id: Option<StrOrNum<'a>>,
    #[serde(default)]
    process_args: Option<Vec<Text>>,

    #[serde(borrow)]
    host: Option<Cow<'a, str>>,
}

#[derive(Default, Deserialize)]
struct RawPolicies {
    #[serde(default)]
    enforced_policies: Option<Vec<Text>>,
    /// Older Felix versions only wrote this list.
    #[serde(default)]
    all_policies: Option<Vec<Text>>,
}

impl RawFlow<'_> {
    fn into_record(self) -> Result<FlowRecord, Rejection> {
        let start_time = required(self.start_time, "start_time")?;
        let end_time = required(self.end_time, "end_time")?;
        let proto_text = required(self.proto, "proto")?;
        let proto = Protocol::parse(&proto_text.0)
            .ok_or_else(|| Rejection::invalid("proto", "an IP protocol name or number"))?;
        let action = match &*required(self.action, "action")? {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            _ => return Err(Rejection::invalid("action", "`allow` or `deny`")),
        };
        let reporter = match &*required(self.reporter, "reporter")? {
            "src" => Reporter::Source,
            "dst" => Reporter::Dest,
            "fwd" => Reporter::Forward,
            _ => return Err(Rejection::invalid("reporter", "`src`, `dst` or `fwd`")),
        };

        let source = Endpoint {
            ip: ip_field(self.source_ip, "source_ip")?,
            port: port_field(self.source_port, "source_port")?,
            name: present(self.source_name),
            name_aggr: present_aggr(self.source_name_aggr),
            namespace: present(self.source_namespace),
            labels: self.source_labels.0,
            kind: self.source_type.as_deref().and_then(endpoint_kind),
            workload: None,
        };
        let dest = Endpoint {
            ip: ip_field(self.dest_ip, "dest_ip")?,
            port: port_field(self.dest_port, "dest_port")?,
            name: present(self.dest_name),
            name_aggr: present_aggr(self.dest_name_aggr),
            namespace: present(self.dest_namespace),
            labels: self.dest_labels.0,
            kind: self.dest_type.as_deref().and_then(endpoint_kind),
            workload: None,
        };
        let dest_service = match present(self.dest_service_name) {
            Some(name) => Some(ServiceRef {
                namespace: present(self.dest_service_namespace),
                name,
                port_name: present(self.dest_service_port.map(|text| text.0)),
                port: port_field(self.dest_service_port_num, "dest_service_port_num")?,
            }),
            None => None,
        };
        let policies = self
            .policies
            .and_then(|policies| policies.enforced_policies.or(policies.all_policies))
            .unwrap_or_default();

        Ok(FlowRecord {
            start_ms: seconds_to_ms(start_time, "start_time")?,
            end_ms: seconds_to_ms(end_time, "end_time")?,
            proto,
            action,
            reporter,
            source,
            dest,
            dest_service,
            dest_domains: strings(self.dest_domains),
            policies: strings(Some(policies)),
            counters: Counters {
                bytes_in: self.bytes_in.unwrap_or(0),
                bytes_out: self.bytes_out.unwrap_or(0),
                packets_in: self.packets_in.unwrap_or(0),
                packets_out: self.packets_out.unwrap_or(0),
                num_flows: self.num_flows.unwrap_or(0),
                num_flows_started: self.num_flows_started.unwrap_or(0),
                num_flows_completed: self.num_flows_completed.unwrap_or(0),
            },
            process: Process {
                name: present(self.process_name),
                id: present(self.process_id.map(|text| text.0)),
                args: strings(self.process_args),
            },
            host: present(self.host),
        })
    }
}

fn required<T>(value: Option<T>, field: &'static str) -> Result<T, Rejection> {
    value.ok_or_else(|| Rejection::missing(field))
}

fn seconds_to_ms(seconds: i64, field: &str) -> Result<i64, Rejection> {
    seconds
        .checked_mul(1000)
        .ok_or_else(|| Rejection::invalid(field, "a Unix time in seconds"))
}

fn ip_field(value: Option<Cow<'_, str>>, field: &str) -> Result<Option<IpAddr>, Rejection> {
    match value.as_deref() {
        None | Some("") | Some("-") => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| Rejection::invalid(field, "an IP address")),
    }
}

fn port_field(value: Option<u32>, field: &str) -> Result<Option<u16>, Rejection> {
    match value {
        None => Ok(None),
        Some(port) => u16::try_from(port)
            .map(Some)
            .map_err(|_| Rejection::invalid(field, "a port number (0-65535)")),
    }
}

/// Calico writes `-` for "aggregated or not applicable" and `*` for "several values".
fn present(value: Option<Cow<'_, str>>) -> Option<Text> {
    match value.as_deref() {
        None | Some("") | Some("-") | Some("*") | Some("null") => None,
        Some(text) => Some(text.into()),
    }
}

/// Aggregated names additionally use `pub` and `pvt` for addresses outside any known set.
fn present_aggr(value: Option<Cow<'_, str>>) -> Option<Text> {
    match value.as_deref() {
        Some("pub") | Some("pvt") => None,
        _ => present(value),
    }
}

fn strings(values: Option<Vec<Text>>) -> Vec<Text> {
    let mut values = values.unwrap_or_default();
    values.retain(|value| !matches!(value.as_str(), "" | "-" | "*"));
    values
}

fn endpoint_kind(text: &str) -> Option<EndpointKind> {
    match text {
        "wep" => Some(EndpointKind::Workload),
        "hep" => Some(EndpointKind::Host),
        "ns" => Some(EndpointKind::NetworkSet),
        "net" => Some(EndpointKind::Network),
        _ => None,
    }
}

/// A value Calico writes as a string in some versions and as a number in others
/// (`proto`, `process_id`, `dest_service_port`).
struct StrOrNum<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for StrOrNum<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrOrNumVisitor;
        impl<'de> Visitor<'de> for StrOrNumVisitor {
            type Value = StrOrNum<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(StrOrNum(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StrOrNum(Cow::Owned(v.to_owned())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StrOrNum(Cow::Owned(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StrOrNum(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_any(StrOrNumVisitor)
    }
}

/// `source_labels` / `dest_labels`: `{"labels": ["k=v", ...]}`, or `-`, or null.
#[derive(Default)]
struct RawLabels(Option<Vec<Text>>);

impl<'de> Deserialize<'de> for RawLabels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = RawLabels;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"{"labels": [...]}, "-" or null"#)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawLabels(None))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "-" | "" => Ok(RawLabels(None)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut labels = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "labels" {
                        labels = map.next_value::<Option<Vec<Text>>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(RawLabels(Some(labels.unwrap_or_default())))
            }
        }
        deserializer.deserialize_any(LabelsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::RejectReason;

    pub(super) const EXAMPLE: &str = r#"{"start_time":1577834657,"end_time":1577834965,"source_ip":null,"source_name":"-","source_name_aggr":"web-5bdcdd9c97-*","source_namespace":"shop","source_port":null,"source_type":"wep","source_labels":{"labels":["app=web","pod-template-hash=5bdcdd9c97"]},"dest_ip":null,"dest_name":"-","dest_name_aggr":"pub","dest_namespace":"-","dest_port":443,"dest_type":"net","dest_labels":null,"dest_service_namespace":"-","dest_service_name":"-","dest_service_port":"-","dest_domains":["api.example.com"],"proto":"tcp","action":"allow","reporter":"src","policies":{"enforced_policies":["0|security|security.allow-egress|allow|2"],"pending_policies":["0|security|security.allow-egress|allow|2"]},"bytes_in":4288,"bytes_out":7644,"num_flows":41,"num_flows_started":37,"num_flows_completed":39,"packets_in":37,"packets_out":37,"http_requests_allowed_in":0,"http_requests_denied_in":0,"original_source_ips":null,"num_original_source_ips":0}"#;

    #[test]
    fn aggregated_example_record() {
        let record = parse_str(EXAMPLE).unwrap();
        assert_eq!(record.start_ms, 1_577_834_657_000);
        assert_eq!(record.end_ms, 1_577_834_965_000);
        assert_eq!(record.proto, Protocol::Tcp);
        assert_eq!(record.action, Action::Allow);
        assert_eq!(record.reporter, Reporter::Source);
        assert_eq!(record.source.ip, None);
        assert_eq!(record.source.name, None);
        assert_eq!(record.source.name_aggr.as_deref(), Some("web-5bdcdd9c97-*"));
        assert_eq!(record.source.namespace.as_deref(), Some("shop"));
        assert_eq!(
            record.source.labels,
            Some(vec![
                "app=web".into(),
                "pod-template-hash=5bdcdd9c97".into()
            ])
        );
        assert_eq!(record.dest.name_aggr, None, "`pub` is a sentinel");
        assert_eq!(record.dest.namespace, None, "`-` is a sentinel");
        assert_eq!(record.dest.labels, None);
        assert_eq!(record.dest.port, Some(443));
        assert_eq!(record.dest_service, None);
        assert_eq!(
            record.policies,
            vec![Text::from("0|security|security.allow-egress|allow|2")]
        );
        assert_eq!(record.counters.bytes_in, 4288);
        assert_eq!(record.counters.num_flows, 41);
        assert_eq!(record.process, Process::default());
    }

    #[test]
    fn rejections_by_reason() {
        let check = |line: &[u8], reason: RejectReason| {
            let rejection = parse_line(line).expect_err(&String::from_utf8_lossy(line));
            assert_eq!(
                rejection.reason,
                reason,
                "{}: {}",
                String::from_utf8_lossy(line),
                rejection.detail
            );
        };
        let base = r#""start_time":1,"end_time":2,"proto":"tcp","action":"allow","reporter":"src""#;
        check(b"\xff\xfe{}", RejectReason::InvalidUtf8);
        check(b"not json", RejectReason::InvalidJson);
        check(b"[1,2,3,4,5]", RejectReason::InvalidJson);
        check(b"42", RejectReason::InvalidJson);
        check(b"{\"start_time\":1", RejectReason::InvalidJson);
        check(
            br#"{"end_time":2,"proto":"tcp","action":"allow","reporter":"src"}"#,
            RejectReason::MissingField,
        );
        check(
            br#"{"start_time":1,"end_time":2,"action":"allow","reporter":"src"}"#,
            RejectReason::MissingField,
        );
        check(
            br#"{"start_time":1,"end_time":2,"proto":"tcp","reporter":"src"}"#,
            RejectReason::MissingField,
        );
        check(
            br#"{"start_time":1,"end_time":2,"proto":"tcp","action":"allow"}"#,
            RejectReason::MissingField,
        );
        check(
            br#"{"start_time":"1","end_time":2,"proto":"tcp","action":"allow","reporter":"src"}"#,
            RejectReason::InvalidField,
        );
        check(
            format!(r#"{{{base},"source_ip":"10.0.0.300"}}"#).as_bytes(),
            RejectReason::InvalidField,
        );
        check(
            format!(r#"{{{base},"dest_port":70000}}"#).as_bytes(),
            RejectReason::InvalidField,
        );
        check(
            format!(r#"{{{base},"source_labels":"app=web"}}"#).as_bytes(),
            RejectReason::InvalidField,
        );
        check(
            br#"{"start_time":1,"end_time":2,"proto":"tcp","action":"maybe","reporter":"src"}"#,
            RejectReason::InvalidField,
        );
        check(
            br#"{"start_time":1,"end_time":2,"proto":"warp","action":"allow","reporter":"src"}"#,
            RejectReason::InvalidField,
        );
    }

    #[test]
    fn escaped_strings_and_numbers_as_text() {
        let line = r#"{"start_time":1,"end_time":2,"proto":17,"action":"deny","reporter":"dst","source_ip":"fd00::1","dest_ip":"10.0.0.1","process_name":"a\"b\\c","process_id":1234,"dest_service_name":"dns","dest_service_namespace":"kube-system","dest_service_port":"dns","dest_service_port_num":53,"source_labels":{"labels":["k=v\u00e9"]}}"#;
        let record = parse_str(line).unwrap();
        assert_eq!(record.proto, Protocol::Udp);
        assert_eq!(record.source.ip, Some("fd00::1".parse().unwrap()));
        assert_eq!(record.process.name.as_deref(), Some("a\"b\\c"));
        assert_eq!(record.process.id.as_deref(), Some("1234"));
        assert_eq!(record.source.labels, Some(vec!["k=vé".into()]));
        let service = record.dest_service.unwrap();
        assert_eq!(
            (&*service.name, service.namespace.as_deref()),
            ("dns", Some("kube-system"))
        );
        assert_eq!(
            (service.port_name.as_deref(), service.port),
            (Some("dns"), Some(53))
        );
    }
}
