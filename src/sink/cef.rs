//! The CEF (ArcSight Common Event Format) encoder: one enriched record -> one CEF line.
//!
//! Pure and strict by construction. Header fields escape `\` and `|` and never carry a line
//! break; extension values escape `\`, `=` and write CR/LF as the two characters `\r`/`\n`, so
//! no record value can end the line, add a header field or create an extension key. Lengths
//! are checked after escaping, and a value over its key's limit is shortened at a character
//! boundary (never inside an escape) and counted. Timestamps are epoch milliseconds; IPv6
//! addresses go to `c6a2`/`c6a3` with labels, since `src`/`dst` are IPv4 by the standard.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::field::{FlowField, Value, ValueKind};
use crate::enrich::EnrichedRecord;
use crate::flow::record::Action;
use crate::flow::record::Text;
use crate::problems::Problems;

/// How records are written as CEF.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CefConfig {
    /// Device Vendor header field (at most 63 characters after escaping).
    pub vendor: String,
    /// Device Product header field (at most 63 characters after escaping).
    pub product: String,
    /// Device Version header field (at most 31 characters after escaping). Defaults to
    /// threatflow's version.
    pub device_version: String,
    /// Signature id, name and severity of each event class.
    pub classes: EventClasses,
    /// Extension fields, in output order: which CEF key carries which record field. Keys of
    /// the custom slots (`csN`, `cnN`, `c6aN`, `flexStringN`, ...) need a `label`. Custom keys
    /// outside the CEF dictionary must be alphanumeric.
    pub fields: Vec<CefField>,
}

/// The event classes threatflow emits.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EventClasses {
    /// A flow that policy allowed.
    pub flow_allowed: EventClass,
    /// A flow that policy denied.
    pub flow_denied: EventClass,
    /// A flow to or from an address listed by a threat feed, allowed or denied. Its severity
    /// is the highest `severity` of the matching feeds, or this class's.
    pub threat_match: EventClass,
}

/// The CEF header fields that identify one kind of event.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventClass {
    /// Device Event Class ID (at most 1023 characters after escaping).
    pub signature_id: String,
    /// Human-readable event name (at most 512 characters after escaping).
    pub name: String,
    /// Severity, 0 (lowest) to 10.
    pub severity: u8,
}

/// One extension field.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CefField {
    /// The CEF key, e.g. `src` or `cs1`.
    pub key: String,
    /// The record field it carries.
    pub field: FlowField,
    /// The value of `<key>Label`, required for the custom slots (`cs1` ... `cs6` and the like).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Default for CefConfig {
    fn default() -> Self {
        CefConfig {
            vendor: "threatflow".into(),
            product: "threatflow".into(),
            device_version: env!("CARGO_PKG_VERSION").into(),
            classes: EventClasses::default(),
            fields: default_fields(),
        }
    }
}

impl Default for EventClasses {
    fn default() -> Self {
        EventClasses {
            flow_allowed: EventClass {
                signature_id: "flow-allowed".into(),
                name: "Flow allowed".into(),
                severity: 1,
            },
            flow_denied: EventClass {
                signature_id: "flow-denied".into(),
                name: "Flow denied by policy".into(),
                severity: 5,
            },
            threat_match: EventClass {
                signature_id: "threat-match".into(),
                name: "Flow matched a threat feed".into(),
                severity: 8,
            },
        }
    }
}

/// The default extension mapping (documented in `schemas/cef-fields.md`).
pub fn default_fields() -> Vec<CefField> {
    use FlowField::*;
    let field = |key: &str, field, label: Option<&str>| CefField {
        key: key.into(),
        field,
        label: label.map(Into::into),
    };
    vec![
        field("rt", EndTime, None),
        field("start", StartTime, None),
        field("end", EndTime, None),
        field("src", SourceIpv4, None),
        field("c6a2", SourceIpv6, Some("sourceIPv6")),
        field("spt", SourcePort, None),
        field("dst", DestIpv4, None),
        field("c6a3", DestIpv6, Some("destinationIPv6")),
        field("dpt", DestPort, None),
        field("proto", Proto, None),
        field("act", Action, None),
        field("deviceDirection", Direction, None),
        field("in", BytesIn, None),
        field("out", BytesOut, None),
        field("cnt", NumFlows, None),
        field("shost", SourceName, None),
        field("dhost", DestName, None),
        field("cs1", SourceNamespace, Some("srcNamespace")),
        field("cs2", DestNamespace, Some("dstNamespace")),
        field("cs3", SourceLabels, Some("srcLabels")),
        field("cs4", DestLabels, Some("dstLabels")),
        field("cs5", Policies, Some("policy")),
        field("cs6", ThreatFeeds, Some("threatFeeds")),
        field("egressIdentity", EgressIdentity, None),
        field("flexString1", SourceWorkload, Some("srcWorkload")),
        field("flexString2", DestWorkload, Some("dstWorkload")),
        field("destinationServiceName", DestService, None),
        field("sproc", ProcessName, None),
        field("dvchost", ReportingNode, None),
        field("deviceExternalId", ClusterName, None),
    ]
}

/// The default mapping as a Markdown table, committed as `schemas/cef-fields.md`. Field
/// descriptions come from [`FlowField`]'s documentation.
pub fn mapping_table() -> String {
    let schema =
        serde_json::to_value(schemars::schema_for!(FlowField)).expect("a schema serializes");
    let describe = |field: FlowField| -> String {
        let name = serde_json::to_value(field).expect("a field serializes");
        schema["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|variant| variant["const"] == name)
            .and_then(|variant| variant["description"].as_str())
            .unwrap_or("")
            .replace('|', "\\|")
    };
    let mut table = String::from(
        "# Default CEF field mapping\n\n\
         Generated from the code (`threatflow::sink::cef::default_fields`); a test fails when this file is stale.\n\
         Change the mapping with the `cef.fields` list in the config file (see `config.schema.json`).\n\
         Extension fields are written in this order; a field without a value in a record is left out,\n\
         together with its label. Header: `CEF:0|threatflow|threatflow|<version>|<signature id>|<name>|<severity>|`,\n\
         with `flow-allowed` (severity 1), `flow-denied` (severity 5) and `threat-match` (severity 8, or the\n\
         highest `severity` of the matching feeds) by default.\n\n\
         | CEF key | label | record field | value |\n|---|---|---|---|\n",
    );
    for field in default_fields() {
        let name = serde_json::to_value(field.field).expect("a field serializes");
        let label = field
            .label
            .as_deref()
            .map(|label| format!("`{}Label={label}`", field.key))
            .unwrap_or_default();
        table.push_str(&format!(
            "| `{}` | {label} | `{}` | {} |\n",
            field.key,
            name.as_str().unwrap_or_default(),
            describe(field.field)
        ));
    }
    table
}

/// What a CEF key accepts, from the CEF implementation standard's extension dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Ipv4,
    Ipv6,
    Integer,
    Float,
    Time,
    /// A string of at most this many characters.
    Text(usize),
}

/// The dictionary keys a flow mapping can use, with their types and limits.
const DICTIONARY: &[(&str, KeyKind)] = &[
    ("act", KeyKind::Text(63)),
    ("app", KeyKind::Text(31)),
    ("cat", KeyKind::Text(1023)),
    ("cnt", KeyKind::Integer),
    ("destinationDnsDomain", KeyKind::Text(255)),
    ("destinationServiceName", KeyKind::Text(1023)),
    ("destinationTranslatedAddress", KeyKind::Ipv4),
    ("destinationTranslatedPort", KeyKind::Integer),
    ("deviceDirection", KeyKind::Integer),
    ("deviceExternalId", KeyKind::Text(255)),
    ("deviceInboundInterface", KeyKind::Text(128)),
    ("deviceOutboundInterface", KeyKind::Text(128)),
    ("deviceProcessName", KeyKind::Text(1023)),
    ("dhost", KeyKind::Text(1023)),
    ("dpt", KeyKind::Integer),
    ("dproc", KeyKind::Text(1023)),
    ("dst", KeyKind::Ipv4),
    ("dtz", KeyKind::Text(255)),
    ("duser", KeyKind::Text(1023)),
    ("dvc", KeyKind::Ipv4),
    ("dvchost", KeyKind::Text(100)),
    ("end", KeyKind::Time),
    ("externalId", KeyKind::Text(40)),
    ("in", KeyKind::Integer),
    ("msg", KeyKind::Text(1023)),
    ("out", KeyKind::Integer),
    ("outcome", KeyKind::Text(63)),
    ("proto", KeyKind::Text(31)),
    ("reason", KeyKind::Text(1023)),
    ("request", KeyKind::Text(1023)),
    ("requestMethod", KeyKind::Text(1023)),
    ("rt", KeyKind::Time),
    ("shost", KeyKind::Text(1023)),
    ("sourceDnsDomain", KeyKind::Text(255)),
    ("sourceTranslatedAddress", KeyKind::Ipv4),
    ("sourceTranslatedPort", KeyKind::Integer),
    ("spt", KeyKind::Integer),
    ("sproc", KeyKind::Text(1023)),
    ("src", KeyKind::Ipv4),
    ("start", KeyKind::Time),
    ("suser", KeyKind::Text(1023)),
    ("type", KeyKind::Integer),
];

/// Keys that only a consumer (an ArcSight connector) may set.
const CONSUMER_ONLY: &[&str] = &[
    "agt",
    "ahost",
    "aid",
    "amac",
    "art",
    "at",
    "atz",
    "av",
    "cfp1Label",
    "dlat",
    "dlong",
    "eventId",
    "rawEvent",
    "slat",
    "slong",
];

/// Custom slots: the key kind and the maximum label length.
fn custom_slot(key: &str) -> Option<(KeyKind, usize)> {
    let slot = |prefix: &str, max: u8| {
        key.strip_prefix(prefix)
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|n| (1..=max).contains(n) && !key.ends_with("Label"))
    };
    if slot("cs", 6).is_some() {
        Some((KeyKind::Text(4000), 1023))
    } else if slot("cn", 3).is_some() {
        Some((KeyKind::Integer, 1023))
    } else if slot("cfp", 4).is_some() {
        Some((KeyKind::Float, 1023))
    } else if slot("c6a", 4).is_some() {
        Some((KeyKind::Ipv6, 1023))
    } else if slot("deviceCustomDate", 2).is_some() {
        Some((KeyKind::Time, 1023))
    } else if slot("flexString", 2).is_some() {
        Some((KeyKind::Text(1023), 128))
    } else if key == "flexDate1" {
        Some((KeyKind::Time, 128))
    } else {
        None
    }
}

/// The kind of `key` and, for custom slots, the maximum label length. Custom (non-dictionary)
/// keys are strings of up to 1023 characters.
fn key_kind(key: &str) -> (KeyKind, Option<usize>) {
    if let Some((kind, label_max)) = custom_slot(key) {
        return (kind, Some(label_max));
    }
    let kind = DICTIONARY
        .iter()
        .find(|(name, _)| *name == key)
        .map_or(KeyKind::Text(1023), |(_, kind)| *kind);
    (kind, None)
}

fn accepts(key: KeyKind, value: ValueKind) -> bool {
    matches!(
        (key, value),
        (KeyKind::Text(_), _)
            | (KeyKind::Ipv4, ValueKind::Ipv4)
            | (KeyKind::Ipv6, ValueKind::Ipv6)
            | (KeyKind::Integer | KeyKind::Float, ValueKind::Integer)
            | (KeyKind::Time, ValueKind::Time)
    )
}

fn is_alphanumeric(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl CefConfig {
    /// Adds every problem of this configuration to `problems`, under `path`.
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        let header = [
            ("vendor", &self.vendor, 63),
            ("product", &self.product, 63),
            ("device_version", &self.device_version, 31),
        ];
        for (name, value, max) in header {
            check_header_field(&format!("{path}.{name}"), value, max, problems);
        }
        for (name, class) in [
            ("flow_allowed", &self.classes.flow_allowed),
            ("flow_denied", &self.classes.flow_denied),
            ("threat_match", &self.classes.threat_match),
        ] {
            let class_path = format!("{path}.classes.{name}");
            check_header_field(
                &format!("{class_path}.signature_id"),
                &class.signature_id,
                1023,
                problems,
            );
            check_header_field(&format!("{class_path}.name"), &class.name, 512, problems);
            if class.severity > 10 {
                problems.push(
                    format!("{class_path}.severity"),
                    "must be an integer from 0 to 10",
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, field) in self.fields.iter().enumerate() {
            let field_path = format!("{path}.fields[{i}]");
            let key = field.key.as_str();
            if !is_alphanumeric(key) {
                problems.push(
                    format!("{field_path}.key"),
                    format!("`{key}` is not a valid CEF key: keys are letters and digits only"),
                );
                continue;
            }
            if key.ends_with("Label") || CONSUMER_ONLY.contains(&key) {
                problems.push(format!("{field_path}.key"), format!("`{key}` cannot be set directly: labels come from `label`, and consumer-only keys are reserved"));
                continue;
            }
            if !seen.insert(key) {
                problems.push(
                    format!("{field_path}.key"),
                    format!("`{key}` is mapped more than once"),
                );
            }
            let (kind, label_max) = key_kind(key);
            if !accepts(kind, field.field.kind()) {
                problems.push(
                    format!("{field_path}.field"),
                    format!(
                        "`{key}` holds {kind:?} values and cannot carry `{}` ({:?})",
                        serde_json::to_value(field.field)
                            .unwrap_or_default()
                            .as_str()
                            .unwrap_or("?"),
                        field.field.kind()
                    ),
                );
            }
            match (label_max, &field.label) {
                (Some(_), None) => problems.push(format!("{field_path}.label"), format!("`{key}` is a custom slot and needs a label (e.g. `srcNamespace`)")),
                (Some(max), Some(label)) if !is_alphanumeric(label) || label.len() > max => problems.push(
                    format!("{field_path}.label"),
                    format!("`{label}` must be 1 to {max} letters and digits (no spaces, so simple key-value parsers read it)"),
                ),
                (None, Some(_)) => problems.push(format!("{field_path}.label"), format!("`{key}` is not a custom slot and takes no label")),
                _ => {}
            }
        }
    }
}

fn check_header_field(path: &str, value: &str, max: usize, problems: &mut Problems) {
    if value.is_empty() {
        problems.push(path, "must not be empty");
    }
    if value.chars().any(char::is_control) {
        problems.push(path, "must not contain control characters or line breaks");
    }
    let mut escaped = Vec::new();
    escape_header(value, &mut escaped);
    if escaped.len() > max {
        problems.push(
            path,
            format!(
                "is {} bytes after escaping; CEF allows {max}",
                escaped.len()
            ),
        );
    }
}

/// A compiled extension field.
#[derive(Debug)]
struct Compiled {
    field: FlowField,
    /// ` <key>Label=<label> ` for custom slots, then `<key>=`.
    prefix: Vec<u8>,
    /// Maximum bytes of the escaped value; `None` for numbers and addresses.
    max_len: Option<usize>,
}

/// Encodes enriched records as CEF lines.
#[derive(Debug)]
pub struct CefEncoder {
    allowed_header: Vec<u8>,
    denied_header: Vec<u8>,
    /// Up to and including the name's `|`: the severity follows per record.
    threat_header: Vec<u8>,
    threat_severity: u8,
    fields: Vec<Compiled>,
    cluster_name: Option<Text>,
}

/// How much of the free-text fields an encoding keeps, to fit a size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trim {
    /// Everything, up to each key's own limit.
    None,
    /// Each free-text value shortened to at most this many bytes.
    Cap(usize),
    /// No free-text field at all.
    Omit,
}

/// What encoding one record did besides writing it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Values shortened to fit their key's maximum length.
    pub truncated_fields: u32,
}

impl CefEncoder {
    /// Builds an encoder. The configuration is expected to have passed [`CefConfig::validate`];
    /// should it not have, values are still escaped and never break the format.
    pub fn new(config: &CefConfig, cluster_name: Option<&str>) -> CefEncoder {
        let header_prefix = |class: &EventClass| {
            let mut out = b"CEF:0|".to_vec();
            for value in [
                &config.vendor,
                &config.product,
                &config.device_version,
                &class.signature_id,
                &class.name,
            ] {
                escape_header(value, &mut out);
                out.push(b'|');
            }
            out
        };
        let header = |class: &EventClass| {
            let mut out = header_prefix(class);
            out.extend_from_slice(class.severity.min(10).to_string().as_bytes());
            out.push(b'|');
            out
        };
        let fields = config
            .fields
            .iter()
            .map(|field| {
                let (kind, _) = key_kind(&field.key);
                let mut prefix = Vec::new();
                if let Some(label) = &field.label {
                    prefix.extend_from_slice(format!("{}Label=", field.key).as_bytes());
                    escape_value(label, &mut prefix);
                    prefix.push(b' ');
                }
                prefix.extend_from_slice(field.key.as_bytes());
                prefix.push(b'=');
                let max_len = match kind {
                    KeyKind::Text(max) => Some(max),
                    _ if field.field.kind() == ValueKind::Text => Some(1023),
                    _ => None,
                };
                Compiled {
                    field: field.field,
                    prefix,
                    max_len,
                }
            })
            .collect();
        CefEncoder {
            allowed_header: header(&config.classes.flow_allowed),
            denied_header: header(&config.classes.flow_denied),
            threat_header: header_prefix(&config.classes.threat_match),
            threat_severity: config.classes.threat_match.severity.min(10),
            fields,
            cluster_name: cluster_name.map(Into::into),
        }
    }

    /// Appends one CEF line for `record` to `out`, without a line terminator.
    pub fn encode(&self, record: &EnrichedRecord, out: &mut Vec<u8>) -> EncodeStats {
        self.encode_trimmed(record, out, Trim::None)
    }

    /// Like [`CefEncoder::encode`], with the free-text fields shortened or left out to fit a
    /// size limit.
    pub fn encode_trimmed(
        &self,
        record: &EnrichedRecord,
        out: &mut Vec<u8>,
        trim: Trim,
    ) -> EncodeStats {
        let mut stats = EncodeStats::default();
        if record.threat_feeds.is_empty() {
            out.extend_from_slice(match record.flow.action {
                Action::Allow => &self.allowed_header,
                Action::Deny => &self.denied_header,
            });
        } else {
            let severity = record.threat_severity().unwrap_or(self.threat_severity);
            out.extend_from_slice(&self.threat_header);
            out.extend_from_slice(itoa::Buffer::new().format(severity.min(10)).as_bytes());
            out.push(b'|');
        }
        let mut first = true;
        for compiled in &self.fields {
            let free_text = compiled.field.is_free_text();
            if free_text && trim == Trim::Omit {
                continue;
            }
            let max_len = match trim {
                Trim::Cap(cap) if free_text => {
                    Some(compiled.max_len.map_or(cap, |max| max.min(cap)))
                }
                _ => compiled.max_len,
            };
            let Some(value) = compiled.field.value(record, self.cluster_name.as_deref()) else {
                continue;
            };
            if !first {
                out.push(b' ');
            }
            first = false;
            out.extend_from_slice(&compiled.prefix);
            let start = out.len();
            match value {
                Value::Integer(number) => {
                    out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes())
                }
                Value::Ip(ip) => write_ip(ip, out),
                Value::Text(text) => escape_value(&text, out),
                Value::Path(namespace, name) => {
                    escape_value(namespace, out);
                    out.push(b'/');
                    escape_value(name, out);
                }
                Value::List(items, separator) => {
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.extend_from_slice(separator.as_bytes());
                        }
                        escape_value(item, out);
                        if out.len() - start > max_len.unwrap_or(usize::MAX) {
                            break;
                        }
                    }
                }
            }
            if let Some(max) = max_len {
                if out.len() - start > max {
                    truncate_escaped(out, start, max);
                    stats.truncated_fields += 1;
                }
            }
        }
        stats
    }
}

/// Writes an address; IPv4 without the formatting machinery, as it is on every record.
fn write_ip(ip: std::net::IpAddr, out: &mut Vec<u8>) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Header escaping: `\` and `|` are escaped; line breaks and other control characters, which a
/// header may not contain, become spaces.
pub fn escape_header(value: &str, out: &mut Vec<u8>) {
    for &byte in value.as_bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'|' => out.extend_from_slice(b"\\|"),
            0..=0x1f | 0x7f => out.push(b' '),
            _ => out.push(byte),
        }
    }
}

/// Extension value escaping: `\` and `=` are escaped, CR and LF are written as `\r` and `\n`,
/// and other control characters (which would break a receiver's framing or parsing) become
/// spaces. `|` needs no escaping in the extension.
pub fn escape_value(value: &str, out: &mut Vec<u8>) {
    let bytes = value.as_bytes();
    let mut run_start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(byte)] {
            continue;
        }
        let replacement: &[u8] = match byte {
            b'\\' => b"\\\\",
            b'=' => b"\\=",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => b" ",
        };
        out.extend_from_slice(&bytes[run_start..i]);
        out.extend_from_slice(replacement);
        run_start = i + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
}

/// The bytes [`escape_value`] rewrites: `\`, `=`, and ASCII control characters.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[0x7f] = true;
    table[b'\\' as usize] = true;
    table[b'=' as usize] = true;
    table
};

/// Shortens the escaped value at `out[start..]` to at most `max` bytes, at a UTF-8 character
/// boundary and never between a backslash and the character it escapes.
fn truncate_escaped(out: &mut Vec<u8>, start: usize, max: usize) {
    let mut end = start + max;
    if end >= out.len() {
        return;
    }
    loop {
        while end > start && (out[end] & 0xC0) == 0x80 {
            end -= 1;
        }
        let backslashes = out[start..end]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 1 {
            end -= 1;
            continue;
        }
        break;
    }
    out.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Inventory;
    use crate::enrich::{EndpointIndex, Enricher};
    use crate::flow::calico;

    fn encode_line(line: &str) -> String {
        let inventory =
            Inventory::from_json(include_bytes!("../../deploy/local/inventory.json")).unwrap();
        let index = EndpointIndex::from_inventory(&inventory);
        let record = Enricher::default().enrich(calico::parse_str(line).unwrap(), &index);
        let encoder = CefEncoder::new(
            &CefConfig {
                device_version: "1.0".into(),
                ..CefConfig::default()
            },
            Some("prod-eu-1"),
        );
        let mut out = Vec::new();
        encoder.encode(&record, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn golden_lines() {
        let check = |line: &str, expected: &str| assert_eq!(encode_line(line), expected);
        // A level-0 denied flow between two known pods, through a service.
        check(
            r#"{"start_time":1736936553,"end_time":1736936554,"source_ip":"10.244.1.5","source_name":"-","source_name_aggr":"frontend-7d9f8c6b5d-*","source_namespace":"web","source_port":43122,"source_type":"wep","source_labels":{"labels":["app=frontend"]},"dest_ip":"10.244.2.7","dest_name":"-","dest_name_aggr":"coredns-5d78c9869d-*","dest_namespace":"kube-system","dest_port":53,"dest_type":"wep","dest_labels":null,"dest_service_namespace":"kube-system","dest_service_name":"kube-dns","dest_service_port":"dns","proto":"udp","action":"deny","reporter":"src","policies":{"enforced_policies":["0|default|web/default.deny-dns|deny|-1"]},"bytes_in":0,"bytes_out":74,"num_flows":1,"num_flows_started":1,"num_flows_completed":1,"packets_in":0,"packets_out":1,"process_name":"-"}"#,
            "CEF:0|threatflow|threatflow|1.0|flow-denied|Flow denied by policy|5|rt=1736936554000 start=1736936553000 end=1736936554000 src=10.244.1.5 spt=43122 dst=10.244.2.7 dpt=53 proto=UDP act=deny deviceDirection=1 in=0 out=74 cnt=1 shost=frontend-7d9f8c6b5d-x2k4l dhost=coredns-5d78c9869d-abcde cs1Label=srcNamespace cs1=web cs2Label=dstNamespace cs2=kube-system cs3Label=srcLabels cs3=app\\=frontend cs4Label=dstLabels cs4=k8s-app\\=kube-dns,pod-template-hash\\=5d78c9869d cs5Label=policy cs5=0|default|web/default.deny-dns|deny|-1 flexString1Label=srcWorkload flexString1=Deployment/frontend flexString2Label=dstWorkload flexString2=Deployment/coredns destinationServiceName=kube-system/kube-dns dvchost=node-a deviceExternalId=prod-eu-1",
        );
        // An aggregated (level 2) allowed flow to the internet: no IPs, no invented pods.
        check(
            r#"{"start_time":1577834657,"end_time":1577834965,"source_ip":null,"source_name":"-","source_name_aggr":"web-5bdcdd9c97-*","source_namespace":"shop","source_port":null,"source_type":"wep","source_labels":{"labels":["app=web","pod-template-hash=5bdcdd9c97"]},"dest_ip":null,"dest_name":"-","dest_name_aggr":"pub","dest_namespace":"-","dest_port":443,"dest_type":"net","dest_labels":null,"dest_service_namespace":"-","dest_service_name":"-","dest_service_port":"-","proto":"tcp","action":"allow","reporter":"dst","bytes_in":4288,"bytes_out":7644,"num_flows":41}"#,
            "CEF:0|threatflow|threatflow|1.0|flow-allowed|Flow allowed|1|rt=1577834965000 start=1577834657000 end=1577834965000 dpt=443 proto=TCP act=allow deviceDirection=0 in=4288 out=7644 cnt=41 shost=web-5bdcdd9c97-* cs1Label=srcNamespace cs1=shop cs3Label=srcLabels cs3=app\\=web,pod-template-hash\\=5bdcdd9c97 flexString1Label=srcWorkload flexString1=Deployment/web deviceExternalId=prod-eu-1",
        );
        // IPv6 endpoints go to c6a2/c6a3, never src/dst.
        check(
            r#"{"start_time":1,"end_time":2,"source_ip":"fd00:10:244:1::5","dest_ip":"2001:db8::1","dest_port":443,"proto":"tcp","action":"allow","reporter":"src","process_name":"curl"}"#,
            "CEF:0|threatflow|threatflow|1.0|flow-allowed|Flow allowed|1|rt=2000 start=1000 end=2000 c6a2Label=sourceIPv6 c6a2=fd00:10:244:1::5 c6a3Label=destinationIPv6 c6a3=2001:db8::1 dpt=443 proto=TCP act=allow deviceDirection=1 in=0 out=0 cnt=0 shost=frontend-7d9f8c6b5d-x2k4l cs1Label=srcNamespace cs1=web cs3Label=srcLabels cs3=app\\=frontend,pod-template-hash\\=7d9f8c6b5d flexString1Label=srcWorkload flexString1=Deployment/frontend sproc=curl dvchost=node-a deviceExternalId=prod-eu-1",
        );
    }

    #[test]
    fn threat_matches_switch_the_class_and_fill_cs6() {
        use crate::enrich::{ThreatFeed, ThreatMatcher};
        let threats = ThreatMatcher::default();
        let nets = |text: &str| {
            std::sync::Arc::new(crate::netset::NetSet::from_nets(&[text.parse().unwrap()]))
        };
        threats.update(
            ThreatFeed {
                name: "feodo".into(),
                severity: None,
            },
            nets("203.0.113.0/24"),
        );
        threats.update(
            ThreatFeed {
                name: "soc".into(),
                severity: Some(10),
            },
            nets("203.0.113.66/32"),
        );
        let enricher = Enricher {
            threats,
            ..Enricher::default()
        };
        let line = r#"{"start_time":1,"end_time":2,"source_ip":"10.244.1.8","dest_ip":"203.0.113.66","dest_port":443,"proto":"tcp","action":"allow","reporter":"src"}"#;
        let record = enricher.enrich(calico::parse_str(line).unwrap(), &EndpointIndex::default());
        let mut out = Vec::new();
        CefEncoder::new(
            &CefConfig {
                device_version: "1.0".into(),
                ..CefConfig::default()
            },
            None,
        )
        .encode(&record, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "CEF:0|threatflow|threatflow|1.0|threat-match|Flow matched a threat feed|10|rt=2000 start=1000 end=2000 src=10.244.1.8 dst=203.0.113.66 dpt=443 proto=TCP act=allow deviceDirection=1 in=0 out=0 cnt=0 cs6Label=threatFeeds cs6=feodo,soc"
        );
        let other = enricher.enrich(
            calico::parse_str(&line.replace("203.0.113.66", "203.0.113.7")).unwrap(),
            &EndpointIndex::default(),
        );
        let mut out = Vec::new();
        CefEncoder::new(&CefConfig::default(), None).encode(&other, &mut out);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("|threat-match|Flow matched a threat feed|8|"),
            "the class severity when no feed sets one"
        );
    }

    #[test]
    fn a_flow_from_an_egress_address_names_the_namespaces_behind_it() {
        use crate::egress::{EgressIndex, EgressLookup, EgressSnapshot, Published};
        let mut snapshot = EgressSnapshot::default();
        for namespace in ["payments", "billing"] {
            snapshot.identities.insert(
                namespace.into(),
                Published {
                    nets: ["192.0.2.10/32".parse().unwrap()].into(),
                    ..Published::default()
                },
            );
        }
        let egress = EgressLookup::default();
        egress.store(EgressIndex::new(&snapshot));
        let enricher = Enricher {
            egress,
            ..Enricher::default()
        };
        let line = r#"{"start_time":1,"end_time":2,"source_ip":"192.0.2.10","dest_ip":"203.0.113.66","dest_port":443,"proto":"tcp","action":"allow","reporter":"src"}"#;
        let record = enricher.enrich(calico::parse_str(line).unwrap(), &EndpointIndex::default());
        let mut out = Vec::new();
        CefEncoder::new(&CefConfig::default(), None).encode(&record, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with(" egressIdentity=billing,payments"), "{text}");
        // The destination being an egress address says nothing about who sent the flow.
        let reply = enricher.enrich(
            calico::parse_str(&line.replace("192.0.2.10", "203.0.113.1").replacen(
                "203.0.113.66",
                "192.0.2.10",
                1,
            ))
            .unwrap(),
            &EndpointIndex::default(),
        );
        assert!(reply.egress_identity.is_none());
    }

    #[test]
    fn services_selecting_a_pod_through_a_custom_key() {
        let inventory =
            Inventory::from_json(include_bytes!("../../deploy/local/inventory.json")).unwrap();
        let index = EndpointIndex::from_inventory(&inventory);
        let line = r#"{"start_time":1,"end_time":2,"source_ip":"10.244.1.5","dest_ip":"10.244.1.8","dest_port":8443,"proto":"tcp","action":"deny","reporter":"dst"}"#;
        let record = Enricher::default().enrich(calico::parse_str(line).unwrap(), &index);
        let config = CefConfig {
            fields: vec![CefField {
                key: "threatflowDstServices".into(),
                field: FlowField::DestServices,
                label: None,
            }],
            ..CefConfig::default()
        };
        let mut problems = Problems::default();
        config.validate("cef", &mut problems);
        assert!(problems.is_empty(), "{problems}");
        let mut out = Vec::new();
        CefEncoder::new(&config, None).encode(&record, &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("|5|threatflowDstServices=shop/checkout"));
    }

    #[test]
    fn escaping() {
        let check = |escape: fn(&str, &mut Vec<u8>), input: &str, expected: &str| {
            let mut out = Vec::new();
            escape(input, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{input:?}");
        };
        check(escape_header, r"a|b\c=d", r"a\|b\\c=d");
        check(escape_header, "line\r\nbreak", "line  break");
        check(escape_value, r"a|b\c=d", r"a|b\\c\=d");
        check(escape_value, "x\r\ny\0z", r"x\r\ny z");
        check(
            escape_value,
            "CEF:0|evil|x|1|1|n|10|dst=1.2.3.4",
            r"CEF:0|evil|x|1|1|n|10|dst\=1.2.3.4",
        );
    }

    #[test]
    fn truncation_respects_escapes_and_characters() {
        let check = |escaped: &str, max: usize, expected: &str| {
            let mut out = escaped.as_bytes().to_vec();
            truncate_escaped(&mut out, 0, max);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                expected,
                "{escaped:?} at {max}"
            );
        };
        check(r"abc\=def", 4, "abc");
        check(r"abc\\def", 4, "abc");
        check(r"ab\\\=d", 5, r"ab\\");
        check("aéb", 2, "a");
        check("abc", 3, "abc");
    }

    #[test]
    fn the_committed_mapping_table_is_fresh() {
        crate::config::assert_generated_file_is_fresh("schemas/cef-fields.md", &mapping_table());
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut config = CefConfig {
            vendor: "x".repeat(70),
            ..CefConfig::default()
        };
        config.classes.flow_denied.severity = 11;
        config.fields = vec![
            CefField {
                key: "cs1".into(),
                field: FlowField::SourceNamespace,
                label: None,
            },
            CefField {
                key: "src".into(),
                field: FlowField::SourceName,
                label: None,
            },
            CefField {
                key: "bad key".into(),
                field: FlowField::Proto,
                label: None,
            },
            CefField {
                key: "spt".into(),
                field: FlowField::SourcePort,
                label: Some("x".into()),
            },
            CefField {
                key: "cs2".into(),
                field: FlowField::DestNamespace,
                label: Some("has space".into()),
            },
            CefField {
                key: "spt".into(),
                field: FlowField::DestPort,
                label: None,
            },
            CefField {
                key: "rawEvent".into(),
                field: FlowField::Proto,
                label: None,
            },
        ];
        let mut problems = Problems::default();
        config.validate("cef", &mut problems);
        let paths = problems.paths();
        assert_eq!(
            paths,
            [
                "cef.vendor",
                "cef.classes.flow_denied.severity",
                "cef.fields[0].label",
                "cef.fields[1].field",
                "cef.fields[2].key",
                "cef.fields[3].label",
                "cef.fields[4].label",
                "cef.fields[5].key",
                "cef.fields[6].key",
            ]
        );
        let mut problems = Problems::default();
        CefConfig::default().validate("cef", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
