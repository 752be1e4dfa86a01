//! One record always yields exactly one frame: arbitrary strings in every free-form field of a
//! Calico record go through enrichment, the CEF, LEEF and JSON encoders and the syslog
//! framer (octet counting and LF), and must come out as one well-formed frame, without a
//! panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use threatflow::enrich::{EndpointIndex, Enricher};
use threatflow::flow::calico;
use threatflow::sink::cef::{CefConfig, CefEncoder};
use threatflow::sink::json::JsonEncoder;
use threatflow::sink::leef::LeefEncoder;
use threatflow::sink::syslog::{SyslogConfig, SyslogFramer, Timestamps};

fuzz_target!(|data: &[u8]| {
    let mut parts = data
        .split(|&byte| byte == 0xff)
        .map(|part| String::from_utf8_lossy(part).into_owned());
    let mut next = || parts.next().unwrap_or_default();
    let line = serde_json::json!({
        "start_time": 1, "end_time": 2, "proto": "tcp", "action": "deny", "reporter": "src",
        "source_ip": "10.0.0.1", "dest_ip": "fd00::1",
        "source_name": next(), "source_namespace": next(),
        "source_labels": {"labels": [next(), next()]},
        "dest_name": next(), "dest_namespace": next(),
        "policies": {"enforced_policies": [next()]},
        "process_name": next(), "process_args": [next()],
        "dest_domains": [next()],
    })
    .to_string();
    let Ok(flow) = calico::parse_str(&line) else {
        return;
    };
    let record = Enricher::default().enrich(flow, &EndpointIndex::default());
    let time = Timestamps::now();
    let cef = CefEncoder::new(&CefConfig::default(), Some("fuzz"));
    let leef = LeefEncoder::new(&CefConfig::default(), Some("fuzz"));
    let json = JsonEncoder::new(Some("fuzz"));
    for (framing, format) in [("octet_counting", "rfc5424"), ("lf", "rfc3164")] {
        let config: SyslogConfig = serde_json::from_value(serde_json::json!({
            "host": "h", "port": 514, "framing": framing, "format": format,
        }))
        .unwrap();
        let framer = SyslogFramer::new(&config, "node-a");
        for encoder in 0..3 {
            let mut message = Vec::new();
            framer.header(&record, &time, &mut message);
            let body = message.len();
            match encoder {
                0 => {
                    cef.encode(&record, &mut message);
                }
                1 => {
                    leef.encode(&record, &mut message);
                }
                _ => json.encode(&record, &mut message),
            }
            // No encoder writes a raw line break (LF framing depends on it).
            assert!(!message[body..].contains(&b'\n') && !message[body..].contains(&b'\r'));
            if encoder == 1 {
                assert!(message[body..].iter().all(|&b| b >= 0x20 || b == b'\t'));
            }
            let mut frame = Vec::new();
            framer.frame(&message, &mut frame);
            // Exactly one frame, holding exactly the message.
            match framing {
                "lf" => {
                    assert_eq!(frame.iter().filter(|&&b| b == b'\n').count(), 1);
                    assert_eq!(frame.last(), Some(&b'\n'));
                }
                _ => {
                    let space = frame.iter().position(|&b| b == b' ').unwrap();
                    let length: usize = std::str::from_utf8(&frame[..space]).unwrap().parse().unwrap();
                    assert_eq!(length, frame.len() - space - 1);
                    assert_eq!(&frame[space + 1..], &message[..]);
                }
            }
        }
    }
});
