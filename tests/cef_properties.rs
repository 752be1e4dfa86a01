//! Property tests: no value a flow record can carry breaks a CEF line, adds a header field,
//! creates an extension key, or changes another field's value.

mod common;

use proptest::prelude::*;

use threatflow::enrich::{EndpointIndex, Enricher};
use threatflow::flow::record::{Action, Endpoint, FlowRecord, Process, Reporter, ServiceRef, Text};
use threatflow::sink::cef::{CefConfig, CefEncoder};
use threatflow::sink::json::JsonEncoder;
use threatflow::sink::leef::LeefEncoder;
use threatflow::sink::syslog::{SyslogConfig, SyslogFramer, Timestamps};

/// Strings biased towards everything that matters to CEF and syslog framing.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 =|\\\\\r\n:.\\-]{0,40}",
        Just("CEF:0|evil|x|1|1|injected|10|src=6.6.6.6 act=allow".to_owned()),
        Just(" x dst=1.2.3.4 ".to_owned()),
        any::<String>().prop_map(|s| s.chars().take(60).collect()),
    ]
}

/// What the encoder is documented to do to a value: control characters other than CR and LF
/// become spaces.
fn expected(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_control() && c != '\r' && c != '\n' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// What the LEEF encoder is documented to do to a value: every control character becomes a
/// space.
fn expected_leef(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_ascii_control() { ' ' } else { c })
        .collect()
}

fn record(
    namespace: &str,
    name: &str,
    process: &str,
    labels: &[String],
    domains: &[String],
    policy: &str,
    service: &str,
) -> FlowRecord {
    FlowRecord {
        start_ms: 1_000,
        end_ms: 2_000,
        action: Action::Deny,
        reporter: Reporter::Source,
        source: Endpoint {
            ip: Some("10.0.0.1".parse().unwrap()),
            port: Some(1234),
            name: Some(Text::from(name)),
            namespace: Some(Text::from(namespace)),
            labels: Some(
                labels
                    .iter()
                    .map(|label| Text::from(label.as_str()))
                    .collect(),
            ),
            ..Endpoint::default()
        },
        dest: Endpoint {
            ip: Some("2001:db8::1".parse().unwrap()),
            port: Some(443),
            ..Endpoint::default()
        },
        dest_service: Some(ServiceRef {
            namespace: Some(Text::from(namespace)),
            name: Text::from(service),
            ..ServiceRef::default()
        }),
        dest_domains: domains
            .iter()
            .map(|domain| Text::from(domain.as_str()))
            .collect(),
        policies: vec![Text::from(policy)],
        process: Process {
            name: Some(Text::from(process)),
            ..Process::default()
        },
        host: Some(Text::from(name)),
        ..FlowRecord::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_value_breaks_the_line_or_injects_a_field(
        namespace in hostile(),
        name in hostile(),
        process in hostile(),
        labels in prop::collection::vec(hostile(), 0..4),
        domains in prop::collection::vec(hostile(), 0..3),
        policy in hostile(),
        service in hostile(),
        cluster in hostile(),
    ) {
        let flow = record(&namespace, &name, &process, &labels, &domains, &policy, &service);
        let enriched = Enricher::default().enrich(flow, &EndpointIndex::default());
        let encoder = CefEncoder::new(&CefConfig::default(), Some(&cluster));
        let mut out = Vec::new();
        let stats = encoder.encode(&enriched, &mut out);
        prop_assert_eq!(stats.truncated_fields, 0);
        prop_assert!(!out.contains(&b'\n') && !out.contains(&b'\r'), "a raw line break");
        let line = String::from_utf8(out).expect("CEF output is UTF-8");
        let cef = common::parse_cef(&line).map_err(|error| TestCaseError::fail(format!("{error}: {line}")))?;

        // Exactly the header the config says.
        prop_assert_eq!(&cef.header, &["CEF:0", "threatflow", "threatflow", env!("CARGO_PKG_VERSION"), "flow-denied", "Flow denied by policy", "5"]);
        // Exactly the keys the mapping produces for this record, in order, none invented.
        let keys: Vec<&str> = cef.pairs.iter().map(|(key, _)| key.as_str()).collect();
        let mut expected_keys = vec!["rt", "start", "end", "src", "spt", "c6a3Label", "c6a3", "dpt", "proto", "act", "deviceDirection", "in", "out", "cnt", "shost"];
        // The destination was addressed as the service: it is in the service's namespace.
        expected_keys.extend(["cs1Label", "cs1", "cs2Label", "cs2"]);
        if !labels.is_empty() { expected_keys.extend(["cs3Label", "cs3"]); }
        expected_keys.extend(["cs5Label", "cs5"]);
        expected_keys.extend(["destinationServiceName", "sproc", "dvchost", "deviceExternalId"]);
        prop_assert_eq!(keys, expected_keys);
        // Every value survives.
        prop_assert_eq!(cef.labelled("srcNamespace").map(str::to_owned), Some(expected(&namespace)));
        prop_assert_eq!(cef.labelled("dstNamespace").map(str::to_owned), Some(expected(&namespace)));
        prop_assert_eq!(cef.get("shost").map(str::to_owned), Some(expected(&name)));
        prop_assert_eq!(cef.get("sproc").map(str::to_owned), Some(expected(&process)));
        prop_assert_eq!(cef.labelled("policy").map(str::to_owned), Some(expected(&policy)));
        prop_assert_eq!(cef.get("dvchost").map(str::to_owned), Some(expected(&name)));
        prop_assert_eq!(cef.get("deviceExternalId").map(str::to_owned), Some(expected(&cluster)));
        let service_path = format!("{}/{}", expected(&namespace), expected(&service));
        prop_assert_eq!(cef.get("destinationServiceName"), Some(service_path.as_str()));
        if !labels.is_empty() {
            let joined = labels.iter().map(|label| expected(label)).collect::<Vec<_>>().join(",");
            prop_assert_eq!(cef.labelled("srcLabels"), Some(joined.as_str()));
        }
    }

    #[test]
    fn leef_values_cannot_add_attributes_or_lines(process in hostile(), namespace in hostile(), label in hostile()) {
        let flow = record(&namespace, "pod", &process, &[label], &[], "p", "svc");
        let enriched = Enricher::default().enrich(flow, &EndpointIndex::default());
        let mut out = Vec::new();
        LeefEncoder::new(&CefConfig::default(), None).encode(&enriched, &mut out);
        let line = String::from_utf8(out).unwrap();
        prop_assert!(line.chars().all(|c| c == '\t' || !c.is_control()), "{:?}", line);
        // Every attribute is a known key, once (the header's `cat` and `sev` included).
        let keys: Vec<&str> = line.split('\t').skip(1).map(|pair| pair.split_once('=').unwrap().0).collect();
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), keys.len(), "{:?}", keys);
        let attributes: std::collections::BTreeMap<&str, &str> = line.split('\t').skip(1).map(|pair| pair.split_once('=').unwrap()).collect();
        let namespace_value = expected_leef(&namespace);
        prop_assert_eq!(attributes.get("srcNamespace").copied(), Some(namespace_value.as_str()));
    }

    #[test]
    fn one_record_is_one_frame(process in hostile(), namespace in hostile(), octet in any::<bool>()) {
        let flow = record(&namespace, "pod", &process, &[], &[], "p", "svc");
        let enriched = Enricher::default().enrich(flow, &EndpointIndex::default());
        let framing = if octet { "octet_counting" } else { "lf" };
        let config: SyslogConfig = yaml_serde::from_str(&format!("{{host: h, port: 514, framing: {framing}}}")).unwrap();
        let framer = SyslogFramer::new(&config, "node-a");
        let mut message = Vec::new();
        framer.header(&enriched, &Timestamps::now(), &mut message);
        CefEncoder::new(&CefConfig::default(), None).encode(&enriched, &mut message);
        let mut frame = Vec::new();
        framer.frame(&message, &mut frame);
        if octet {
            let space = frame.iter().position(|&b| b == b' ').unwrap();
            let length: usize = std::str::from_utf8(&frame[..space]).unwrap().parse().unwrap();
            prop_assert_eq!(&frame[space + 1..], &message[..]);
            prop_assert_eq!(length, message.len());
        } else {
            prop_assert_eq!(frame.iter().filter(|&&b| b == b'\n').count(), 1);
            prop_assert_eq!(frame.last(), Some(&b'\n'));
        }
    }

    #[test]
    fn json_lines_stay_one_line_and_round_trip(process in hostile(), namespace in hostile()) {
        let flow = record(&namespace, "pod", &process, &[], &[], "p", "svc");
        let enriched = Enricher::default().enrich(flow, &EndpointIndex::default());
        let mut out = Vec::new();
        JsonEncoder::new(None).encode(&enriched, &mut out);
        prop_assert!(!out.contains(&b'\n') && !out.contains(&b'\r'));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(value["process_name"].as_str(), Some(process.as_str()));
        prop_assert_eq!(value["source"]["namespace"].as_str(), Some(namespace.as_str()));
    }

    #[test]
    fn long_values_are_shortened_to_the_key_limit_and_counted(process in "[a-z=\\\\]{1100,1500}") {
        let flow = record("ns", "pod", &process, &[], &[], "p", "svc");
        let enriched = Enricher::default().enrich(flow, &EndpointIndex::default());
        let mut out = Vec::new();
        let stats = CefEncoder::new(&CefConfig::default(), None).encode(&enriched, &mut out);
        prop_assert_eq!(stats.truncated_fields, 1);
        let cef = common::parse_cef(std::str::from_utf8(&out).unwrap()).map_err(TestCaseError::fail)?;
        let sproc = cef.get("sproc").unwrap();
        prop_assert!(process.starts_with(sproc), "a shortened value is a prefix of the original");
        let escaped_len = sproc.len() + sproc.matches(['=', '\\']).count();
        prop_assert!((1022..=1023).contains(&escaped_len));
    }
}
