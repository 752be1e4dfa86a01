//! The Kafka source and sink against a real Kafka-protocol broker (tansu, on loopback):
//! every record delivered, offsets committed only past delivered or counted records, a
//! SIGKILL and restart, a destination that is down, two replicas splitting a group, a poison
//! message, and the Kafka sink.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::kafka::Broker;
use common::{binary, wait_for};

/// A Calico flow-log line whose `bytes_in` identifies it.
fn flow_line(id: u64) -> Vec<u8> {
    format!(
        r#"{{"start_time":1764230400,"end_time":1764230700,"source_ip":"10.244.1.5","source_name":"-","source_name_aggr":"frontend-7d9f8c6b5d-*","source_namespace":"web","source_port":40000,"source_type":"wep","dest_ip":"10.244.2.7","dest_name":"-","dest_name_aggr":"coredns-5d78c9869d-*","dest_namespace":"kube-system","dest_port":53,"dest_type":"wep","proto":"udp","action":"allow","reporter":"src","bytes_in":{id},"bytes_out":2,"num_flows":1}}"#
    )
    .into_bytes()
}

fn flow_lines(ids: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    ids.map(flow_line).collect()
}

/// `bytes_in` of the test's Calico records in the sink file, with how often each occurs.
fn delivered(path: &Path) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        // A process killed mid-write may leave its last line cut.
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // The test's Calico records come from port 40000.
        if record["source"]["port"] == 40000 {
            *counts
                .entry(record["bytes_in"].as_u64().unwrap())
                .or_default() += 1;
        }
    }
    counts
}

struct Setup {
    dir: tempfile::TempDir,
    broker: Broker,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
            broker: Broker::start(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config with a Kafka source on `topics` and `sinks` (YAML list items).
    fn config(&self, name: &str, kafka: &str, sinks: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(
            &path,
            format!(
                "sources:\n  - name: kafka\n    type: kafka\n    kafka:\n      brokers: [\"{}\"]\n{kafka}\nsinks:\n{sinks}\ndead_letter: {{path: {}}}\npipeline: {{batch_max_records: 100, drain_timeout_secs: 2}}\n",
                self.broker.address(),
                self.path("dead.jsonl").display()
            ),
        )
        .unwrap();
        path
    }

    fn file_sink(&self, name: &str) -> String {
        format!(
            "  - {{name: out, type: file, format: json, file: {{path: {}}}}}",
            self.path(name).display()
        )
    }
}

fn run_once(config: &Path) -> Output {
    let output = Command::new(binary())
        .args(["run", "--once", "--config", config.to_str().unwrap()])
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "run --once: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn start(config: &Path) -> Daemon {
    Daemon::run(config)
}

/// The value of one series on a running instance's /metrics.
fn metric(port: u16, series: &str) -> Option<i64> {
    common::metric(port, series).map(|value| value as i64)
}

#[test]
fn every_record_is_delivered_once_and_its_offset_committed() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker.create_topic("calico-flows", 3);
    broker.create_topic("hubble-flows", 1);
    broker.produce("calico-flows", None, 3, &flow_lines(0..3000));
    let hubble: Vec<Vec<u8>> =
        std::fs::read_to_string(common::root().join("connectors/hubble/fixtures/flows.jsonl"))
            .unwrap()
            .lines()
            .map(|line| line.as_bytes().to_vec())
            .collect();
    broker.produce("hubble-flows", Some(0), 1, &hubble);
    let config = setup.config(
        "threatflow.yaml",
        "      group_id: siem\n      topics: [{name: calico-flows}, {name: hubble-flows, format: hubble}]",
        &setup.file_sink("out.jsonl"),
    );

    run_once(&config);
    let counts = delivered(&setup.path("out.jsonl"));
    assert_eq!(counts.len(), 3000, "every Calico record");
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "each exactly once: {twice:?}");
    let text = std::fs::read_to_string(setup.path("out.jsonl")).unwrap();
    // The fixtures' flows are from 2026-11-26, with pod names only Hubble gives.
    let hubble_records = text
        .lines()
        .filter(|line| line.starts_with("{\"start_time_ms\":17957664"))
        .count();
    assert_eq!(
        hubble_records,
        hubble.len(),
        "Hubble records are read with their topic's format"
    );
    assert!(text.contains("\"pod\":\"checkout-6c8f9d7b4-m2n3p\""));
    assert_eq!(text.lines().count(), 3000 + hubble.len());
    assert_eq!(
        broker.committed("siem", "calico-flows", 3),
        vec![1000, 1000, 1000]
    );
    assert_eq!(
        broker.committed("siem", "hubble-flows", 1),
        vec![hubble.len() as i64]
    );

    // The group resumes where it committed: nothing is read twice.
    run_once(&config);
    assert_eq!(
        std::fs::read_to_string(setup.path("out.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3000 + hubble.len()
    );
}

#[test]
fn poison_messages_are_dead_lettered_and_their_offsets_move_on() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker.create_topic("flows", 1);
    broker.produce("flows", Some(0), 1, &flow_lines(0..10));
    let too_long = vec![b'x'; 70 * 1024];
    broker.produce("flows", Some(0), 1, &[b"{not json".to_vec(), too_long]);
    broker.produce_tombstone("flows", 0);
    broker.produce("flows", Some(0), 1, &flow_lines(10..20));
    let config = setup.config(
        "threatflow.yaml",
        "      topics: [{name: flows}]",
        &setup.file_sink("out.jsonl"),
    );

    let output = run_once(&config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let counts = delivered(&setup.path("out.jsonl"));
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    let dead = std::fs::read_to_string(setup.path("dead.jsonl")).unwrap();
    let reasons: Vec<String> = dead
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(reasons, ["invalid_json", "too_long"], "{dead}");
    // Past the poison, past the tombstone: the partition is not held back.
    assert_eq!(broker.committed("threatflow", "flows", 1), vec![23]);
    assert!(stdout.is_empty() || stdout.contains("rejected"), "{stdout}");
}

#[test]
fn a_killed_process_loses_nothing_and_repeats_at_most_a_batch_per_partition() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker.create_topic("flows", 3);
    const TOTAL: u64 = 30_000;
    broker.produce("flows", None, 3, &flow_lines(0..TOTAL));
    // A short session timeout (passed through to librdkafka): the restarted process joins
    // the group without waiting long for the killed one to be declared dead.
    let config = setup.config(
        "threatflow.yaml",
        "      topics: [{name: flows}]\n      properties: {session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\"}",
        &setup.file_sink("out.jsonl"),
    );
    let out = setup.path("out.jsonl");

    let mut child = start(&config);
    wait_for("records to arrive", Duration::from_secs(30), || {
        delivered(&out).len() >= 5_000
    });
    child.kill();

    // Every record before a committed offset was delivered. (Record i is at partition i % 3,
    // offset i / 3.)
    let before = delivered(&out);
    let committed = broker.committed("threatflow", "flows", 3);
    assert!(committed.iter().any(|&offset| offset > 0), "{committed:?}");
    for id in 0..TOTAL {
        let (partition, offset) = ((id % 3) as usize, (id / 3) as i64);
        if offset < committed[partition] {
            assert!(
                before.contains_key(&id),
                "record {id} is committed but was not delivered"
            );
        }
    }

    let output = run_once(&config);
    let after = delivered(&out);
    assert_eq!(
        after.len() as u64,
        TOTAL,
        "every record delivered at least once: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut repeated = [0usize; 3];
    for (&id, &count) in &after {
        assert!(count <= 2, "record {id} delivered {count} times");
        repeated[(id % 3) as usize] += count - 1;
    }
    // The pipeline's batches hold at most 100 records of one partition.
    assert!(
        repeated.iter().all(|&n| n <= 100),
        "repeated per partition: {repeated:?}"
    );
}

#[test]
fn nothing_is_committed_while_the_destination_is_down_and_delivery_resumes() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker.create_topic("flows", 2);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = setup.config(
        "threatflow.yaml",
        "      topics: [{name: flows}]",
        &format!("  - {{name: siem, type: syslog, format: json, syslog: {{host: 127.0.0.1, port: {port}, transport: tcp, framing: lf}}}}\ntelemetry: {{listen_addr: \"127.0.0.1:0\"}}"),
    );
    let child = start(&config);
    let metrics_port = child.telemetry_port();
    broker.produce("flows", None, 2, &flow_lines(0..500));
    wait_for(
        "the records to be in flight",
        Duration::from_secs(30),
        || {
            metric(
                metrics_port,
                "threatflow_source_kafka_in_flight_records{source=\"kafka\"}",
            ) == Some(500)
        },
    );
    assert_eq!(
        metric(
            metrics_port,
            "threatflow_source_kafka_assigned_partitions{source=\"kafka\"}"
        ),
        Some(2)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        broker.committed("threatflow", "flows", 2),
        vec![-1, -1],
        "nothing delivered, nothing committed"
    );

    // The receiver comes up: everything arrives, then is committed.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let received = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let sink = sink.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    sink.lock().push(line);
                }
            });
        }
    });
    wait_for("the records to arrive", Duration::from_secs(60), || {
        received.lock().len() >= 500
    });
    wait_for(
        "the offsets to be committed",
        Duration::from_secs(30),
        || broker.committed("threatflow", "flows", 2) == vec![250, 250],
    );
    child.terminate();
    let ids: std::collections::BTreeSet<u64> = received
        .lock()
        .iter()
        .map(|line| {
            let json = &line[line.find('{').unwrap()..];
            serde_json::from_str::<serde_json::Value>(json).unwrap()["bytes_in"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 500);
}

#[test]
fn two_replicas_split_the_partitions_and_one_takes_over_when_the_other_leaves() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker.create_topic("flows", 4);
    let kafka = "      topics: [{name: flows}]";
    let config_a = setup.config("a.yaml", kafka, &setup.file_sink("a.jsonl"));
    let config_b = setup.config("b.yaml", kafka, &setup.file_sink("b.jsonl"));
    let a = start(&config_a);
    let b = start(&config_b);
    // Both in the group before the records arrive.
    std::thread::sleep(Duration::from_secs(4));
    broker.produce("flows", None, 4, &flow_lines(0..400));
    let union = |paths: &[&str]| -> BTreeMap<u64, usize> {
        let mut all = BTreeMap::new();
        for path in paths {
            for (id, count) in delivered(&setup.path(path)) {
                *all.entry(id).or_default() += count;
            }
        }
        all
    };
    wait_for("both replicas to deliver", Duration::from_secs(30), || {
        union(&["a.jsonl", "b.jsonl"]).len() == 400
    });
    let (from_a, from_b) = (
        delivered(&setup.path("a.jsonl")),
        delivered(&setup.path("b.jsonl")),
    );
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "the group split the partitions: {} and {}",
        from_a.len(),
        from_b.len()
    );
    assert!(
        from_a.keys().all(|id| !from_b.contains_key(id)),
        "no record went to both"
    );

    // A stops (a scale-down or a rolling update: it commits and leaves the group). A replica
    // killed outright is taken over once the broker expires its session; tansu 0.6 keeps a
    // killed member in the group's assignment, so that path is the broker's and is not
    // exercised here (a killed process's own side is the SIGKILL test above).
    a.terminate();
    broker.produce("flows", None, 4, &flow_lines(400..800));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut taken_over = false;
    while !taken_over && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        taken_over = (400..800).all(|id| delivered(&setup.path("b.jsonl")).contains_key(&id));
    }
    let stderr = b.terminate();
    assert!(
        taken_over,
        "the survivor did not take over every partition: {stderr}"
    );
}

#[test]
fn the_kafka_sink_writes_keyed_json_and_cef() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker.create_topic("flows", 2);
    broker.create_topic("enriched", 3);
    broker.create_topic("enriched-cef", 1);
    broker.produce("flows", None, 2, &flow_lines(0..300));
    let sinks = format!(
        "  - {{name: lake, type: kafka, format: json, kafka: {{brokers: [\"{0}\"], topic: enriched, properties: {{compression.type: zstd}}}}}}\n  - {{name: siem, type: kafka, format: cef, kafka: {{brokers: [\"{0}\"], topic: enriched-cef, key: none, properties: {{compression.type: gzip}}}}}}",
        broker.address()
    );
    let config = setup.config("threatflow.yaml", "      topics: [{name: flows}]", &sinks);
    run_once(&config);
    // Committed only once both sinks had every record.
    assert_eq!(broker.committed("threatflow", "flows", 2), vec![150, 150]);

    let json = broker.read_all("enriched", 3);
    let mut ids: Vec<u64> = json
        .iter()
        .map(|(key, value)| {
            assert_eq!(
                key.as_deref(),
                Some(b"10.244.1.5|10.244.2.7|53|UDP".as_slice())
            );
            serde_json::from_slice::<serde_json::Value>(value).unwrap()["bytes_in"]
                .as_u64()
                .unwrap()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..300).collect::<Vec<_>>());
    let cef = broker.read_all("enriched-cef", 1);
    assert_eq!(cef.len(), 300);
    for (key, value) in &cef {
        assert!(key.is_none());
        let text = std::str::from_utf8(value).unwrap();
        let parsed = common::parse_cef(text).unwrap();
        assert_eq!(parsed.get("src"), Some("10.244.1.5"));
    }
}

#[test]
fn tls_settings_pass_through_and_the_broker_certificate_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        broker: Broker::start_tls(dir.path()),
        dir,
    };
    let broker = &setup.broker;
    broker.create_topic("flows", 1);
    broker.produce("flows", Some(0), 1, &flow_lines(0..100));
    let ca = setup.path("ca.pem");

    // Trusting the test CA: every record arrives.
    let config = setup.config(
        "trusted.yaml",
        &format!("      topics: [{{name: flows}}]\n      properties: {{security.protocol: SSL, ssl.ca.location: {}}}", ca.display()),
        &setup.file_sink("trusted.jsonl"),
    );
    run_once(&config);
    assert_eq!(delivered(&setup.path("trusted.jsonl")).len(), 100);

    // The system's roots only (verification on by default): nothing is read, and the log says
    // why.
    let config = setup.config(
        "untrusted.yaml",
        "      group_id: other\n      topics: [{name: flows}]\n      properties: {security.protocol: SSL}",
        &setup.file_sink("untrusted.jsonl"),
    );
    let child = start(&config);
    std::thread::sleep(Duration::from_secs(4));
    let stderr = child.terminate();
    assert!(delivered(&setup.path("untrusted.jsonl")).is_empty());
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    assert_eq!(broker.committed("other", "flows", 1), vec![-1]);
}

#[test]
fn a_batch_run_against_an_unreachable_broker_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(
        &config,
        "sources:\n  - {name: kafka, type: kafka, kafka: {brokers: [\"127.0.0.1:9\"], topics: [{name: flows}]}}\nsinks:\n  - {name: out, type: stdout}\n",
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["run", "--once", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no partition was assigned within 30 s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Kafka client error"),
        "the cause is logged: {stderr}"
    );
}

#[test]
fn a_kafka_sink_that_cannot_deliver_commits_nothing_upstream() {
    let setup = Setup::new();
    let broker = &setup.broker;
    broker.create_topic("flows", 1);
    broker.produce("flows", Some(0), 1, &flow_lines(0..50));
    // The destination cluster is unreachable: every batch fails after message_timeout_ms and
    // is retried; none is acknowledged.
    let config = setup.config(
        "threatflow.yaml",
        "      topics: [{name: flows}]",
        "  - {name: lake, type: kafka, format: json, kafka: {brokers: [\"127.0.0.1:9\"], topic: enriched, message_timeout_ms: 1000}}",
    );
    let child = start(&config);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        broker.committed("threatflow", "flows", 1),
        vec![-1],
        "nothing committed past undelivered records"
    );
    let stderr = child.terminate_undelivered();
    assert!(
        stderr.contains("write failed; retrying the batch"),
        "{stderr}"
    );
    assert_eq!(broker.committed("threatflow", "flows", 1), vec![-1]);
}
