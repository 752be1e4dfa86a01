//! The LEEF 2.0 encoder (IBM QRadar's Log Event Extended Format). Pure.
//!
//! `LEEF:2.0|<vendor>|<product>|<version>|<event id>|x09|key=value<TAB>key=value...`: the
//! vendor, product, version and event ids are the CEF settings', the event id being the event
//! class's signature id. Attributes are tab-separated. LEEF has no escape for the delimiter in
//! a value, so tabs and every other control character in a value become spaces (a value can
//! neither add an attribute nor end the line); header fields escape `\` and `|`. The attribute
//! set is fixed ([`ATTRIBUTES`]): QRadar's predefined keys where one exists (`devTime` as
//! epoch milliseconds, `src`, `dst`, `srcPort`, `dstPort`, `proto`, `sev`, `cat`, `policy`),
//! threatflow's own names for the cluster context.

use std::io::Write;

use crate::enrich::EnrichedRecord;
use crate::flow::record::{Action, Text};

use super::cef::{escape_header, CefConfig, EncodeStats, Trim};
use super::field::{FlowField, Value};

/// LEEF key -> record field, in output order.
pub const ATTRIBUTES: &[(&str, FlowField)] = {
    use FlowField::*;
    &[
        ("devTime", EndTime),
        ("startTime", StartTime),
        ("src", SourceIpv4),
        ("src", SourceIpv6),
        ("srcPort", SourcePort),
        ("dst", DestIpv4),
        ("dst", DestIpv6),
        ("dstPort", DestPort),
        ("proto", Proto),
        ("action", Action),
        ("srcBytes", BytesOut),
        ("dstBytes", BytesIn),
        ("srcPackets", PacketsOut),
        ("dstPackets", PacketsIn),
        ("flowCount", NumFlows),
        ("reporter", Reporter),
        ("srcName", SourceName),
        ("dstName", DestName),
        ("srcNamespace", SourceNamespace),
        ("dstNamespace", DestNamespace),
        ("srcWorkload", SourceWorkload),
        ("dstWorkload", DestWorkload),
        ("srcNode", SourceNode),
        ("dstNode", DestNode),
        ("dstService", DestService),
        ("threatFeeds", ThreatFeeds),
        ("egressIdentity", EgressIdentity),
        ("policy", Policies),
        ("srcLabels", SourceLabels),
        ("dstLabels", DestLabels),
        ("srcNamespaceLabels", SourceNamespaceLabels),
        ("dstNamespaceLabels", DestNamespaceLabels),
        ("srcServices", SourceServices),
        ("dstServices", DestServices),
        ("reportingNode", ReportingNode),
        ("cluster", ClusterName),
    ]
};

/// The longest value written, in bytes; longer ones are shortened and counted.
const MAX_VALUE_BYTES: usize = 4_000;

/// Encodes enriched records as LEEF 2.0 lines.
#[derive(Debug)]
pub struct LeefEncoder {
    /// `LEEF:2.0|vendor|product|version|` .
    header: Vec<u8>,
    /// Per class: event id, `cat` and `sev`.
    classes: [(String, String, u8); 3],
    cluster_name: Option<Text>,
}

impl LeefEncoder {
    pub fn new(config: &CefConfig, cluster_name: Option<&str>) -> LeefEncoder {
        let mut header = b"LEEF:2.0|".to_vec();
        for value in [&config.vendor, &config.product, &config.device_version] {
            escape_header(value, &mut header);
            header.push(b'|');
        }
        let class = |class: &super::cef::EventClass| {
            let mut id = Vec::new();
            escape_header(&class.signature_id, &mut id);
            (
                String::from_utf8(id).expect("escaped UTF-8"),
                sanitize(&class.name),
                class.severity.min(10),
            )
        };
        LeefEncoder {
            header,
            classes: [
                class(&config.classes.flow_allowed),
                class(&config.classes.flow_denied),
                class(&config.classes.threat_match),
            ],
            cluster_name: cluster_name.map(Into::into),
        }
    }

    /// Appends one LEEF line for `record` to `out`, without a line terminator.
    pub fn encode(&self, record: &EnrichedRecord, out: &mut Vec<u8>) -> EncodeStats {
        self.encode_trimmed(record, out, Trim::None)
    }

    /// Like [`LeefEncoder::encode`], with the free-text attributes shortened or left out.
    pub fn encode_trimmed(
        &self,
        record: &EnrichedRecord,
        out: &mut Vec<u8>,
        trim: Trim,
    ) -> EncodeStats {
        let mut stats = EncodeStats::default();
        let threat = !record.threat_feeds.is_empty();
        let (id, name, class_severity) = match (threat, record.flow.action) {
            (true, _) => &self.classes[2],
            (false, Action::Allow) => &self.classes[0],
            (false, Action::Deny) => &self.classes[1],
        };
        let severity = match threat {
            true => record.threat_severity().unwrap_or(*class_severity),
            false => *class_severity,
        };
        out.extend_from_slice(&self.header);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"|x09|cat=");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\tsev=");
        out.extend_from_slice(itoa::Buffer::new().format(severity.min(10)).as_bytes());
        for &(key, field) in ATTRIBUTES {
            let free_text = field.is_free_text();
            let max = match trim {
                Trim::Omit if free_text => continue,
                Trim::Cap(cap) if free_text => cap.min(MAX_VALUE_BYTES),
                _ => MAX_VALUE_BYTES,
            };
            let Some(value) = field.value(record, self.cluster_name.as_deref()) else {
                continue;
            };
            out.push(b'\t');
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            let start = out.len();
            match value {
                Value::Integer(number) => {
                    out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes())
                }
                Value::Ip(ip) => {
                    let _ = write!(out, "{ip}");
                }
                Value::Text(text) => push_sanitized(&text, out),
                Value::Path(namespace, name) => {
                    push_sanitized(namespace, out);
                    out.push(b'/');
                    push_sanitized(name, out);
                }
                Value::List(items, separator) => {
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.extend_from_slice(separator.as_bytes());
                        }
                        push_sanitized(item, out);
                        if out.len() - start > max {
                            break;
                        }
                    }
                }
            }
            if out.len() - start > max {
                let mut end = start + max;
                while !is_char_boundary(&out[start..], end - start) {
                    end -= 1;
                }
                out.truncate(end);
                stats.truncated_fields += 1;
            }
        }
        stats
    }
}

/// `value` with every control character (tab, CR, LF included) as a space.
fn sanitize(value: &str) -> String {
    let mut out = Vec::new();
    push_sanitized(value, &mut out);
    String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
}

fn push_sanitized(value: &str, out: &mut Vec<u8>) {
    for &byte in value.as_bytes() {
        out.push(if byte < 0x20 || byte == 0x7f {
            b' '
        } else {
            byte
        });
    }
}

/// Whether `at` is a UTF-8 character boundary of `bytes` (which is valid UTF-8).
fn is_char_boundary(bytes: &[u8], at: usize) -> bool {
    at >= bytes.len() || (bytes[at] & 0xc0) != 0x80
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Inventory;
    use crate::enrich::{EndpointIndex, Enricher};
    use crate::flow::calico;

    fn encode(line: &str) -> String {
        let inventory =
            Inventory::from_json(include_bytes!("../../deploy/local/inventory.json")).unwrap();
        let record = Enricher::default().enrich(
            calico::parse_str(line).unwrap(),
            &EndpointIndex::from_inventory(&inventory),
        );
        let mut out = Vec::new();
        LeefEncoder::new(&CefConfig::default(), Some("c1")).encode(&record, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn golden_leef() {
        let line = encode(
            r#"{"start_time":1,"end_time":2,"source_ip":"10.244.1.5","source_port":40000,"source_type":"wep","dest_ip":"fd00::1","dest_port":53,"dest_type":"net","proto":"udp","action":"deny","reporter":"src","process_name":"a\tb"}"#,
        );
        assert_eq!(
            line,
            "LEEF:2.0|threatflow|threatflow|0.1.0|flow-denied|x09|cat=Flow denied by policy\tsev=5\tdevTime=2000\tstartTime=1000\tsrc=10.244.1.5\tsrcPort=40000\tdst=fd00::1\tdstPort=53\tproto=UDP\taction=deny\tsrcBytes=0\tdstBytes=0\tsrcPackets=0\tdstPackets=0\tflowCount=0\treporter=src\tsrcName=frontend-7d9f8c6b5d-x2k4l\tsrcNamespace=web\tsrcWorkload=Deployment/frontend\tsrcNode=node-a\tsrcLabels=app=frontend,pod-template-hash=7d9f8c6b5d\tsrcNamespaceLabels=team=storefront\tsrcServices=web/frontend\treportingNode=node-a\tcluster=c1"
        );
    }

    #[test]
    fn hostile_values_cannot_add_attributes_or_lines() {
        let line = encode(
            r#"{"start_time":1,"end_time":2,"source_ip":"10.9.9.9","source_name":"evil\tsev=1\nLEEF:2.0|x","source_namespace":"ns\r\n","dest_ip":"10.9.9.8","proto":"tcp","action":"allow","reporter":"src"}"#,
        );
        assert!(!line.contains('\n') && !line.contains('\r'));
        let attributes: Vec<&str> = line.split('\t').collect();
        assert!(
            attributes.contains(&"srcName=evil sev=1 LEEF:2.0|x"),
            "{line}"
        );
        assert_eq!(
            attributes.iter().filter(|a| a.starts_with("sev=")).count(),
            1
        );
    }
}
