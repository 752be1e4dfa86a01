//! Delivery to real syslog receivers on loopback: rsyslog and syslog-ng, over UDP, TCP (both
//! framings, both header formats) and TLS. Every record must arrive intact and parse as CEF
//! with the right fields; a receiver restarted mid-stream must lose nothing; a stalled
//! receiver must not grow threatflow's memory, and delivery must resume when it reads again.

mod common;

use common::daemon::Daemon;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::receivers::{Kind, Receiver};
use common::{binary, parse_cef, root};

/// The first sample record of the quickstart, with `id` as its source port.
fn flow_line(id: u32) -> String {
    let sample = std::fs::read_to_string(root().join("deploy/local/flows.log")).unwrap();
    let first = sample.lines().next().unwrap();
    first.replace("\"source_port\":51234", &format!("\"source_port\":{id}")) + "\n"
}

fn lines(ids: std::ops::Range<u32>) -> String {
    let template = flow_line(0);
    ids.map(|id| template.replace("\"source_port\":0,", &format!("\"source_port\":{id},")))
        .collect()
}

/// Source ports of the received records, with how often each arrived. Every message must be
/// one intact CEF record with the inventory's context.
fn received_ids(receiver: &Receiver) -> BTreeMap<u32, usize> {
    let mut ids = BTreeMap::new();
    for message in receiver.received() {
        let cef = parse_cef(&message).unwrap_or_else(|error| {
            panic!(
                "{:?} got a broken record ({error}): {message}",
                receiver.kind
            )
        });
        assert_eq!(cef.header[4], "flow-denied", "{message}");
        assert_eq!(cef.get("deviceExternalId"), Some("test"), "{message}");
        assert_eq!(cef.labelled("srcNamespace"), Some("web"), "{message}");
        assert_eq!(cef.get("dst"), Some("10.244.1.8"), "{message}");
        let id = cef.get("spt").unwrap().parse().unwrap();
        *ids.entry(id).or_default() += 1;
    }
    ids
}

/// Polls until `condition` holds, or fails after `seconds` with `what`.
fn wait_for(what: &str, seconds: u64, condition: impl FnMut() -> bool) {
    common::wait_for(what, Duration::from_secs(seconds), condition);
}

/// `threatflow enrich ... --syslog URL` over the records `ids`.
fn send(url: &str, options: &[&str], ids: std::ops::Range<u32>) {
    let mut child = Command::new(binary())
        .current_dir(root())
        .args(["enrich", "--inventory", "deploy/local/inventory.json"])
        .args(["--cluster-name", "test", "--syslog", url])
        .args(options)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let count = ids.len();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines(ids).as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{url} {options:?}: {report}");
    assert!(
        report.contains(&format!("{count} sent to ")) && report.contains(" 0 undelivered"),
        "{report}"
    );
}

/// Sends a block of records through each transport and framing in turn and checks that each
/// block arrives whole, once.
fn every_record_arrives(kind: Kind) {
    let receiver = Receiver::start(kind);
    let ports = receiver.ports;
    let ca = receiver.pki("ca.pem");
    let ca = ca.to_str().unwrap();
    let mut cases: Vec<(String, Vec<&str>, u32)> = vec![
        (
            format!("tcp://127.0.0.1:{}", ports.tcp_octet),
            vec!["--framing", "octet"],
            2_000,
        ),
        (
            format!("tcp://127.0.0.1:{}", ports.tcp_lf),
            vec!["--framing", "lf"],
            2_000,
        ),
        (format!("udp://127.0.0.1:{}", ports.udp), vec![], 300),
        (
            format!("tls://localhost:{}", ports.tls),
            vec!["--ca", ca],
            2_000,
        ),
    ];
    if kind == Kind::Rsyslog {
        cases.push((
            format!("tcp://127.0.0.1:{}", ports.tcp_lf),
            vec!["--framing", "lf", "--syslog-format", "rfc3164"],
            500,
        ));
    }
    let mut first = 10_000;
    for (url, options, count) in cases {
        let ids = first..first + count;
        send(&url, &options, ids.clone());
        wait_for(
            &format!("{count} records through {url} {options:?}"),
            30,
            || received_ids(&receiver).range(ids.clone()).count() == count as usize,
        );
        let received = received_ids(&receiver);
        assert!(
            received.range(ids.clone()).all(|(_, &times)| times == 1),
            "{url} {options:?}: duplicates without any failure"
        );
        first += count;
    }
    assert_eq!(received_ids(&receiver).len() as u32, first - 10_000);
}

#[test]
fn rsyslog_receives_every_record_over_udp_tcp_and_tls() {
    every_record_arrives(Kind::Rsyslog);
}

#[test]
fn syslog_ng_receives_every_record_over_udp_tcp_and_tls() {
    every_record_arrives(Kind::SyslogNg);
}

/// A daemon tailing a flow log into the receiver's octet-counted TCP port.
fn daemon(dir: &Path, port: u16) -> Daemon {
    let config = dir.join("threatflow.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster_name: test\n\
             sources:\n  - name: calico\n    type: file\n    file: {{path: {log}, checkpoint_path: {checkpoint}, poll_interval_ms: 20}}\n\
             enrichment: {{inventory_path: {inventory}}}\n\
             sinks:\n  - {{name: siem, type: syslog, format: cef, syslog: {{host: 127.0.0.1, port: {port}, write_timeout_ms: 1000}}}}\n\
             pipeline: {{batch_max_records: 100}}\n",
            log = dir.join("flows.log").display(),
            checkpoint = dir.join("flows.checkpoint").display(),
            inventory = root().join("deploy/local/inventory.json").display(),
        ),
    )
    .unwrap();
    Daemon::run(&config)
}

fn append(dir: &Path, ids: std::ops::Range<u32>) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("flows.log"))
        .unwrap()
        .write_all(lines(ids).as_bytes())
        .unwrap();
}

fn stop(daemon: Daemon) {
    daemon.terminate();
}

/// A receiver restarted mid-stream (it appends to the same file): the records before and
/// after the restart all arrive; at most one batch (100 records) twice.
fn a_restart_loses_nothing(kind: Kind) {
    let mut receiver = Receiver::start(kind);
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon(dir.path(), receiver.ports.tcp_octet);
    append(dir.path(), 0..1_000);
    wait_for("the first records", 30, || {
        received_ids(&receiver).len() == 1_000
    });
    receiver.restart();
    append(dir.path(), 1_000..2_000);
    wait_for("the records after the restart", 30, || {
        received_ids(&receiver).len() == 2_000
    });
    let duplicated = received_ids(&receiver)
        .values()
        .filter(|&&times| times > 1)
        .count();
    assert!(duplicated <= 100, "{duplicated} records arrived twice");
    stop(daemon);
}

#[test]
fn rsyslog_restarted_mid_stream_loses_nothing() {
    a_restart_loses_nothing(Kind::Rsyslog);
}

#[test]
fn syslog_ng_restarted_mid_stream_loses_nothing() {
    a_restart_loses_nothing(Kind::SyslogNg);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// The receiver stops reading (SIGSTOP) while 40 MB of records arrive: threatflow's memory
/// stays flat, and when the receiver reads again every record arrives.
fn a_stall_bounds_memory_and_delivery_resumes(kind: Kind) {
    let receiver = Receiver::start(kind);
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon(dir.path(), receiver.ports.tcp_octet);
    append(dir.path(), 0..1_000);
    wait_for("the first records", 30, || {
        received_ids(&receiver).len() == 1_000
    });
    let before = rss_kib(daemon.id());

    // The receiver stops reading; 40 MB of flow records arrive meanwhile.
    receiver.stall();
    append(dir.path(), 1_000..41_000);
    let mut peak = 0;
    for _ in 0..40 {
        peak = peak.max(rss_kib(daemon.id()));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        peak < before + 64 * 1024,
        "memory grew from {before} KiB to {peak} KiB while the receiver was stalled"
    );

    receiver.resume();
    wait_for("every record after the stall", 120, || {
        received_ids(&receiver).len() == 41_000
    });
    // A timed-out write resumes on its connection: nothing is sent twice.
    let duplicated = received_ids(&receiver)
        .values()
        .filter(|&&times| times > 1)
        .count();
    assert_eq!(duplicated, 0, "a stalled receiver gets no duplicate");
    stop(daemon);
}

#[test]
fn a_stalled_rsyslog_bounds_memory_and_delivery_resumes() {
    a_stall_bounds_memory_and_delivery_resumes(Kind::Rsyslog);
}

#[test]
fn a_stalled_syslog_ng_bounds_memory_and_delivery_resumes() {
    a_stall_bounds_memory_and_delivery_resumes(Kind::SyslogNg);
}

#[test]
fn a_stalled_destination_does_not_stall_the_others() {
    let receiver = Receiver::start(Kind::Rsyslog);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("threatflow.yaml");
    let archive = dir.path().join("archive.jsonl");
    std::fs::write(
        &config,
        format!(
            "cluster_name: test\n\
             sources:\n  - name: calico\n    type: file\n    file: {{path: {log}, poll_interval_ms: 20}}\n\
             sinks:\n  - {{name: siem, type: syslog, syslog: {{host: 127.0.0.1, port: {siem}, write_timeout_ms: 500}}}}\n  - {{name: archive, type: file, format: json, file: {{path: {archive}}}}}\n\
             pipeline: {{batch_max_records: 100, queue_batches: 4}}\n\
             telemetry: {{listen_addr: '127.0.0.1:0'}}\n",
            log = dir.path().join("flows.log").display(),
            siem = receiver.ports.tcp_octet,
            archive = archive.display(),
        ),
    )
    .unwrap();
    let daemon = Daemon::run(&config);
    let port = daemon.telemetry_port();
    receiver.stall();
    append(dir.path(), 0..30_000);
    let archived = || {
        std::fs::read_to_string(&archive)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let started = Instant::now();
    while archived() < 30_000 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        archived(),
        30_000,
        "the archive got every record: {}",
        daemon.stderr()
    );
    let metrics = common::http_get(port, "/metrics").1;
    let dropped: f64 = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                "threatflow_sink_dropped_records_total{sink=\"siem\",reason=\"destination_full\"} ",
            )
        })
        .expect("the destination_full series")
        .parse()
        .unwrap();
    assert!(dropped > 0.0, "{metrics}");
    receiver.resume();
    stop(daemon);
}

/// A TLS receiver that requires a client certificate takes the records of a daemon that has
/// one, and refuses a client without one.
#[test]
fn tls_with_a_client_certificate() {
    let receiver = Receiver::start(Kind::Rsyslog);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("threatflow.yaml");
    let tls = |client: bool| {
        let mut tls = format!("ca_file: {}", receiver.pki("ca.pem").display());
        if client {
            tls += &format!(
                ", cert_file: {}, key_file: {}",
                receiver.pki("client.pem").display(),
                receiver.pki("client.key").display()
            );
        }
        tls
    };
    for (client, expected) in [(false, 0), (true, 200)] {
        std::fs::write(
            &config,
            format!(
                "cluster_name: test\nenrichment: {{inventory_path: {inventory}}}\nsources: [{{name: calico, type: stdin}}]\n\
                 sinks:\n  - {{name: siem, type: syslog, syslog: {{host: localhost, port: {port}, transport: tls, tls: {{{tls}}}}}}}\n\
                 pipeline: {{drain_timeout_secs: 2}}\n",
                inventory = root().join("deploy/local/inventory.json").display(),
                port = receiver.ports.tls_mutual,
                tls = tls(client),
            ),
        )
        .unwrap();
        let mut daemon = Daemon::spawn(&["run", "--config", config.to_str().unwrap()], |command| {
            command.stdin(Stdio::piped());
        });
        daemon.stdin().write_all(lines(0..200).as_bytes()).unwrap();
        let (status, log) = daemon.wait_within(Duration::from_secs(60));
        if client {
            assert!(status.success(), "{log}");
            wait_for("the records", 30, || {
                received_ids(&receiver).len() == expected
            });
        } else {
            assert!(!status.success(), "without a client certificate: {log}");
            assert!(
                log.contains("tls_handshake") || log.contains("write failed"),
                "{log}"
            );
            assert!(received_ids(&receiver).is_empty());
        }
    }
}
