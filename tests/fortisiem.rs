//! The FortiSIEM connector: the sample events are what threatflow sends today, and the custom
//! parser, evaluated here regex by regex, recognises each of them and yields every attribute
//! of the connector's mapping table with the event's value.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use regex::Regex;
use threatflow::cluster::Inventory;
use threatflow::config::Config;
use threatflow::enrich::{EndpointIndex, Enricher, ThreatFeed, ThreatMatcher};
use threatflow::flow::calico;
use threatflow::netset::NetSet;
use threatflow::sink::cef::CefEncoder;
use threatflow::sink::syslog::{SyslogConfig, SyslogFramer, Timestamps};

const DIR: &str = "connectors/fortisiem";

/// The sample events: quickstart records as threatflow's syslog sink sends them (denied,
/// allowed, IPv6, and a threat match against the SOC blocklist), at a fixed time.
fn sample_events() -> String {
    let root = common::root();
    let inventory = Inventory::load(&root.join("deploy/local/inventory.json")).unwrap();
    let index = EndpointIndex::from_inventory(&inventory);
    let threats = ThreatMatcher::default();
    let blocklist: Vec<ipnet::IpNet> = ["203.0.113.66/32", "198.51.100.0/24"]
        .iter()
        .map(|net| net.parse().unwrap())
        .collect();
    threats.update(
        ThreatFeed {
            name: "soc-blocklist".into(),
            severity: Some(9),
        },
        Arc::new(NetSet::from_nets(&blocklist)),
    );
    let enricher = Enricher {
        threats,
        ..Enricher::default()
    };
    let config = Config::from_yaml("{sources: [], sinks: [], cluster_name: prod-eu-1}").unwrap();
    let cef = CefEncoder::new(&config.cef, Some("prod-eu-1"));
    let syslog: SyslogConfig = yaml_serde::from_str("{host: h, port: 1470}").unwrap();
    let framer = SyslogFramer::new(&syslog, "node-a");
    let time = Timestamps::at("2026-11-27T08:00:00.000Z".parse().unwrap());
    let flows = std::fs::read_to_string(root.join("deploy/local/flows.log")).unwrap();
    let flows: Vec<&str> = flows.lines().collect();
    let mut out = String::new();
    for line in [flows[0], flows[1], flows[4], flows[6]] {
        let record = enricher.enrich(calico::parse_str(line).unwrap(), &index);
        let mut message = Vec::new();
        framer.header(&record, &time, &mut message);
        cef.encode(&record, &mut message);
        out.push_str(std::str::from_utf8(&message).unwrap());
        out.push('\n');
    }
    out
}

#[test]
fn the_sample_events_are_what_threatflow_sends() {
    let path = common::root().join(DIR).join("sample-events.log");
    let fresh = sample_events();
    if std::env::var_os("THREATFLOW_UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{} is stale: run `THREATFLOW_UPDATE_SCHEMAS=1 cargo test --test fortisiem` and commit the result",
        path.display()
    );
}

/// One step of the parser's `parsingInstructions`.
enum Step {
    /// `collectFieldsByRegex`: the source attribute, and the regex translated from
    /// FortiSIEM's `<attr:pattern>` notation.
    Collect { source: String, regex: Regex },
    /// `setEventAttribute`: the attribute and its expression.
    Set {
        attribute: String,
        expression: String,
    },
}

struct Parser {
    recognizer: Regex,
    steps: Vec<Step>,
}

fn cdata(text: &str) -> &str {
    text.trim()
        .strip_prefix("<![CDATA[")
        .and_then(|text| text.strip_suffix("]]>"))
        .unwrap_or(text)
}

fn load_parser() -> Parser {
    let xml =
        std::fs::read_to_string(common::root().join(DIR).join("threatflow-parser.xml")).unwrap();
    let recognizer = Regex::new(r"(?s)<eventFormatRecognizer>(.*?)</eventFormatRecognizer>")
        .unwrap()
        .captures(&xml)
        .expect("a recognizer");
    let recognizer = Regex::new(cdata(&recognizer[1])).unwrap();
    let patterns: BTreeMap<String, String> =
        Regex::new(r#"(?s)<pattern name="(\w+)">(.*?)</pattern>"#)
            .unwrap()
            .captures_iter(&xml)
            .map(|pattern| (pattern[1].to_owned(), cdata(&pattern[2]).to_owned()))
            .collect();
    let reference = Regex::new(r"<(\w*):(\w+)>").unwrap();
    let translate = |fortisiem: &str| {
        let translated = reference.replace_all(fortisiem, |found: &regex::Captures| {
            let pattern = patterns
                .get(&found[2])
                .unwrap_or_else(|| panic!("pattern {} is not defined in the parser", &found[2]));
            match &found[1] {
                "" => format!("(?:{pattern})"),
                name => format!("(?P<{name}>{pattern})"),
            }
        });
        Regex::new(&translated).unwrap_or_else(|error| panic!("{fortisiem}: {error}"))
    };
    let step = Regex::new(
        r#"(?s)<collectFieldsByRegex src="\$(\w+)">\s*<regex>(.*?)</regex>\s*</collectFieldsByRegex>|<setEventAttribute attr="(\w+)">(.*?)</setEventAttribute>"#,
    )
    .unwrap();
    let steps = step
        .captures_iter(&xml)
        .map(|found| match found.get(1) {
            Some(source) => Step::Collect {
                source: source.as_str().to_owned(),
                regex: translate(cdata(&found[2])),
            },
            None => Step::Set {
                attribute: found[3].to_owned(),
                expression: found[4].to_owned(),
            },
        })
        .collect();
    Parser { recognizer, steps }
}

impl Parser {
    /// The attributes the parser sets for `event`, as FortiSIEM would evaluate the steps.
    fn parse(&self, event: &str) -> BTreeMap<String, String> {
        let mut attributes = BTreeMap::from([("_rawmsg".to_owned(), event.to_owned())]);
        let call = Regex::new(r#"^(\w+)\((?:"([^"]*)", )?\$(\w+)\)$"#).unwrap();
        for step in &self.steps {
            match step {
                Step::Collect { source, regex } => {
                    let Some(text) = attributes.get(source).cloned() else {
                        continue;
                    };
                    if let Some(found) = regex.captures(&text) {
                        for name in regex.capture_names().flatten() {
                            if let Some(value) = found.name(name) {
                                attributes.insert(name.to_owned(), value.as_str().to_owned());
                            }
                        }
                    }
                }
                Step::Set {
                    attribute,
                    expression,
                } => {
                    let value = if let Some(source) = expression.strip_prefix('$') {
                        attributes.get(source).cloned()
                    } else {
                        let found = call
                            .captures(expression)
                            .unwrap_or_else(|| panic!("cannot evaluate {expression}"));
                        let argument = attributes.get(&found[3]).cloned();
                        match &found[1] {
                            "combineMsgId" => argument.map(|argument| {
                                format!("{}{argument}", found.get(2).unwrap().as_str())
                            }),
                            // Epoch milliseconds in, the same instant out.
                            "toDateTime" => argument,
                            "convertStrToIntIpProto" => argument.map(|proto| {
                                match proto.as_str() {
                                    "TCP" => "6",
                                    "UDP" => "17",
                                    "ICMP" => "1",
                                    "SCTP" => "132",
                                    other => panic!("protocol {other}"),
                                }
                                .to_owned()
                            }),
                            function => panic!("the test does not know {function}"),
                        }
                    };
                    if let Some(value) = value {
                        attributes.insert(attribute.clone(), value);
                    }
                }
            }
        }
        attributes
    }
}

/// (CEF key, FortiSIEM attribute) rows of the README's mapping table.
fn mapping() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(common::root().join(DIR).join("README.md")).unwrap();
    Regex::new(r"(?m)^\| `(\w+)` \| `(\w+)` \|")
        .unwrap()
        .captures_iter(&readme)
        .map(|row| (row[1].to_owned(), row[2].to_owned()))
        .collect()
}

fn unescape(value: &str) -> String {
    value.replace("\\=", "=").replace("\\\\", "\\")
}

#[test]
fn the_parser_yields_the_mapped_attributes_for_every_sample() {
    let parser = load_parser();
    let mapping = mapping();
    assert!(mapping.len() >= 25, "{mapping:?}");
    let events =
        std::fs::read_to_string(common::root().join(DIR).join("sample-events.log")).unwrap();
    let mut classes = Vec::new();
    let mut seen_attributes = std::collections::BTreeSet::new();
    for event in events.lines() {
        assert!(parser.recognizer.is_match(event), "not recognised: {event}");
        let parsed = parser.parse(event);
        let cef = common::parse_cef(&event[event.find("CEF:").unwrap()..]).unwrap();
        let expected_type = format!("threatflow-{}", cef.header[4]);
        assert_eq!(parsed.get("eventType"), Some(&expected_type), "{event}");
        assert_eq!(parsed.get("eventSeverity"), Some(&cef.header[6]));
        assert_eq!(parsed.get("eventName"), Some(&cef.header[5]));
        assert_eq!(
            parsed.get("reptDevName").map(String::as_str),
            Some("node-a")
        );
        classes.push(cef.header[4].clone());
        for (key, attribute) in &mapping {
            let Some(value) = cef.get(key) else {
                continue;
            };
            let expected = match key.as_str() {
                "proto" => match value {
                    "TCP" => "6".to_owned(),
                    "UDP" => "17".to_owned(),
                    other => panic!("{other}"),
                },
                _ => value.to_owned(),
            };
            let got = parsed.get(attribute).map(|got| unescape(got));
            assert_eq!(
                got.as_deref(),
                Some(expected.as_str()),
                "{key} -> {attribute} in {event}"
            );
            seen_attributes.insert(attribute.clone());
        }
    }
    classes.sort();
    assert_eq!(
        classes,
        [
            "flow-allowed",
            "flow-allowed",
            "flow-denied",
            "threat-match"
        ]
    );
    assert!(
        events.contains("c6a2=") && events.contains("c6a3="),
        "an IPv6 sample"
    );
    // Every attribute the parser sets (but its scratch `_` ones) is in the mapping table.
    let documented: std::collections::BTreeSet<&str> = mapping
        .iter()
        .map(|(_, attribute)| attribute.as_str())
        .collect();
    for step in &parser.steps {
        let names: Vec<String> = match step {
            Step::Collect { regex, .. } => {
                regex.capture_names().flatten().map(str::to_owned).collect()
            }
            Step::Set { attribute, .. } => vec![attribute.clone()],
        };
        for name in names.iter().filter(|name| !name.starts_with('_')) {
            assert!(
                documented.contains(name.as_str())
                    || ["eventType", "eventSeverity", "eventName", "reptDevName"]
                        .contains(&name.as_str()),
                "{name} is set by the parser but not in the mapping table"
            );
        }
    }
    assert!(seen_attributes.contains("threatFeedName"));
}
