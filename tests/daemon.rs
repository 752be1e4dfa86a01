//! The daemon as a process: tailing a file through appends, rename rotation and copy-truncate,
//! SIGTERM draining, resuming from its checkpoint without loss or duplicates, SIGKILL re-sending
//! at most the batch being written, the telemetry endpoints, and the TCP syslog sink across a
//! receiver restart.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use common::daemon::Daemon;
use common::{binary, http_get, metric, parse_cef, wait_for};

/// A Calico flow-log line whose source port identifies it.
fn flow_line(id: u32) -> String {
    format!(
        r#"{{"start_time":1764230400,"end_time":1764230700,"source_ip":"10.244.1.5","source_name":"-","source_name_aggr":"frontend-7d9f8c6b5d-*","source_namespace":"web","source_port":{id},"source_type":"wep","source_labels":{{"labels":["app=frontend"]}},"dest_ip":"10.244.2.7","dest_name":"-","dest_name_aggr":"coredns-5d78c9869d-*","dest_namespace":"kube-system","dest_port":53,"dest_type":"wep","dest_labels":null,"proto":"udp","action":"allow","reporter":"src","bytes_in":1,"bytes_out":2,"num_flows":1}}"#
    ) + "\n"
}

fn append(path: &Path, ids: std::ops::Range<u32>) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for id in ids {
        file.write_all(flow_line(id).as_bytes()).unwrap();
    }
}

/// How long a test waits for the daemon to do something.
const WAIT: Duration = Duration::from_secs(30);

/// Source ports of the JSON records in the sink file, with how often each occurs.
fn delivered(path: &Path) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        *counts
            .entry(record["source"]["port"].as_u64().unwrap())
            .or_default() += 1;
    }
    counts
}

fn start(config: &Path, stdin: Stdio) -> Daemon {
    Daemon::spawn(&["run", "--config", config.to_str().unwrap()], |command| {
        command.stdin(stdin);
    })
}

#[test]
fn tails_through_rotation_and_truncation_and_resumes_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (log, out, checkpoint) = (
        dir.path().join("flows.log"),
        dir.path().join("out.jsonl"),
        dir.path().join("flows.checkpoint"),
    );
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  - name: calico\n    type: file\n    file: {{path: {log}, checkpoint_path: {checkpoint}, poll_interval_ms: 20}}\n\
             sinks:\n  - {{name: out, type: file, format: json, file: {{path: {out}}}}}\n\
             pipeline: {{batch_max_records: 16}}\n\
             telemetry: {{listen_addr: '127.0.0.1:0', log_level: info}}\n",
            log = log.display(),
            checkpoint = checkpoint.display(),
            out = out.display(),
        ),
    )
    .unwrap();

    append(&log, 0..30);
    let daemon = start(&config, Stdio::null());
    let port = daemon.telemetry_port();
    wait_for("the first 30 records", WAIT, || delivered(&out).len() == 30);
    wait_for("readiness", WAIT, || http_get(port, "/readyz").0 == 200);
    assert_eq!(http_get(port, "/healthz").0, 200);

    append(&log, 30..40);
    wait_for("appended records", WAIT, || delivered(&out).len() == 40);

    // Rename rotation: the old file is finished, then the new one is followed.
    std::fs::rename(&log, dir.path().join("flows.log.1")).unwrap();
    append(&log, 40..50);
    wait_for("records after a rename rotation", WAIT, || {
        delivered(&out).len() == 50
    });

    // Copy-truncate rotation: the file shrinks and is read again from its start.
    std::fs::copy(&log, dir.path().join("flows.log.2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    append(&log, 50..52);
    wait_for("records after copy-truncate", WAIT, || {
        delivered(&out).len() == 52
    });

    let (status, metrics) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    for expected in [
        "threatflow_flow_records_total{source=\"calico\"} 52",
        "threatflow_sink_records_total{sink=\"out\"} 52",
        "threatflow_source_rotations_total{source=\"calico\"} 1",
        "threatflow_source_truncations_total{source=\"calico\"} 1",
    ] {
        assert!(metrics.contains(expected), "{expected} not in:\n{metrics}");
    }

    let logs = daemon.terminate();
    assert!(logs.contains("stopped"), "{logs}");
    assert!(checkpoint.exists());

    // Lines written while stopped are picked up from the checkpoint; nothing is sent twice.
    append(&log, 52..60);
    let daemon = start(&config, Stdio::null());
    wait_for("records written while stopped", WAIT, || {
        delivered(&out).len() == 60
    });
    daemon.terminate();
    let counts = delivered(&out);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..60).collect::<Vec<u64>>()
    );
    assert!(
        counts.values().all(|&count| count == 1),
        "duplicates: {counts:?}"
    );
}

#[test]
fn a_killed_process_resends_at_most_the_batch_it_was_writing_and_workers_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let (log, out, checkpoint) = (
        dir.path().join("flows.log"),
        dir.path().join("out.jsonl"),
        dir.path().join("flows.checkpoint"),
    );
    const TOTAL: u32 = 60_000;
    const BATCH: usize = 512;
    append(&log, 0..TOTAL);
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  - name: calico\n    type: file\n    file: {{path: {}, checkpoint_path: {}, poll_interval_ms: 20}}\n\
             sinks:\n  - {{name: out, type: file, format: json, file: {{path: {}}}}}\n\
             pipeline: {{batch_max_records: {BATCH}, workers: 3}}\n",
            log.display(),
            checkpoint.display(),
            out.display(),
        ),
    )
    .unwrap();
    // Records in the sink file; a line cut by the kill is dropped, as a reader of the file
    // would drop it (its batch was not acknowledged, so it is sent again).
    let lines = || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        text.matches('\n').count()
    };
    let cut_torn_line = || {
        let text = std::fs::read(&out).unwrap();
        let end = text
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |at| at + 1);
        std::fs::write(&out, &text[..end]).unwrap();
    };
    // Several workers: a killed run still resumes in order, with no loss.
    for kill_after in [15_000, 35_000] {
        let mut daemon = start(&config, Stdio::null());
        wait_for("records to arrive", WAIT, || lines() >= kill_after);
        daemon.kill();
        cut_torn_line();
    }
    let daemon = start(&config, Stdio::null());
    wait_for("every record", WAIT * 2, || {
        delivered(&out).len() == TOTAL as usize
    });
    daemon.terminate();
    let counts = delivered(&out);
    assert_eq!(counts.len(), TOTAL as usize, "nothing lost");
    let duplicates: usize = counts.values().map(|count| count - 1).sum();
    // Two kills, each re-sending at most the one batch the sink was writing.
    assert!(
        duplicates <= 2 * BATCH,
        "{duplicates} duplicates after two kills (at most {} expected)",
        2 * BATCH
    );
    eprintln!("{duplicates} duplicates after two kills of a {TOTAL}-record run");
    // Three workers, and the records are in input order: every first occurrence follows the
    // one before it.
    let text = std::fs::read_to_string(&out).unwrap();
    let mut next = 0u64;
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let port = record["source"]["port"].as_u64().unwrap();
        if port >= next {
            assert_eq!(port, next, "record {port} came before record {next}");
            next += 1;
        }
    }
}

#[test]
fn restart_after_a_rotation_while_stopped_finishes_the_rotated_file_first() {
    let dir = tempfile::tempdir().unwrap();
    let (log, out, checkpoint) = (
        dir.path().join("flows.log"),
        dir.path().join("out.jsonl"),
        dir.path().join("cp.json"),
    );
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  - name: calico\n    type: file\n    file: {{path: {}, checkpoint_path: {}, poll_interval_ms: 20}}\nsinks:\n  - {{name: out, type: file, format: json, file: {{path: {}}}}}\n",
            log.display(),
            checkpoint.display(),
            out.display()
        ),
    )
    .unwrap();
    append(&log, 0..5);
    let daemon = start(&config, Stdio::null());
    wait_for("the first records", WAIT, || delivered(&out).len() == 5);
    daemon.terminate();

    // While stopped: more lines, then a rotation, then lines in the new file.
    append(&log, 5..8);
    std::fs::rename(&log, dir.path().join("flows.log.1")).unwrap();
    append(&log, 8..10);
    let daemon = start(&config, Stdio::null());
    wait_for("every record", WAIT, || delivered(&out).len() == 10);
    daemon.terminate();
    assert!(delivered(&out).values().all(|&count| count == 1));
}

/// A syslog receiver that reads RFC 6587 octet-counted frames, and can be stopped and
/// restarted on the same port.
struct Receiver {
    port: u16,
    messages: Arc<Mutex<Vec<String>>>,
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, messages: Arc<Mutex<Vec<String>>>) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let (flag, sink) = (running.clone(), messages.clone());
        let thread = std::thread::spawn(move || {
            while flag.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
                let mut reader = BufReader::new(stream);
                let mut pending = Vec::new();
                while flag.load(Ordering::SeqCst) {
                    let mut buffer = [0u8; 65536];
                    match reader.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(read) => pending.extend_from_slice(&buffer[..read]),
                        Err(_) => continue,
                    }
                    // Take every complete frame: `LEN SP MSG`.
                    while let Some(space) = pending.iter().position(|&b| b == b' ') {
                        let len: usize = std::str::from_utf8(&pending[..space])
                            .unwrap()
                            .parse()
                            .expect("frame starts with a length");
                        if pending.len() < space + 1 + len {
                            break;
                        }
                        let message =
                            String::from_utf8(pending[space + 1..space + 1 + len].to_vec())
                                .unwrap();
                        sink.lock().push(message);
                        pending.drain(..space + 1 + len);
                    }
                }
                let _ = reader.get_ref().shutdown(std::net::Shutdown::Both);
                let _ = reader.fill_buf();
            }
        });
        Receiver {
            port,
            messages,
            running,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> (u16, Arc<Mutex<Vec<String>>>) {
        self.running.store(false, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        (self.port, self.messages.clone())
    }
}

#[test]
fn syslog_sink_delivers_every_record_across_a_receiver_restart() {
    let dir = tempfile::tempdir().unwrap();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let receiver = Receiver::start(0, messages.clone());
    let port = receiver.port;
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(
        &config,
        format!(
            "node_name: node-test\nsources:\n  - {{name: input, type: stdin}}\nsinks:\n  - name: siem\n    type: syslog\n    syslog: {{host: 127.0.0.1, port: {port}}}\npipeline: {{batch_max_records: 50}}\nenrichment: {{inventory_path: deploy/local/inventory.json}}\n"
        ),
    )
    .unwrap();
    let mut daemon = start(&config, Stdio::piped());
    let mut stdin = daemon.stdin();
    for id in 0..500 {
        stdin.write_all(flow_line(id).as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    wait_for("the first 500 records", WAIT, || {
        messages.lock().len() >= 500
    });

    // The receiver goes away; records keep coming; the receiver comes back.
    let (port, messages) = receiver.stop();
    for id in 500..1000 {
        stdin.write_all(flow_line(id).as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let receiver = Receiver::start(port, messages.clone());
    drop(stdin);
    let (status, logs) = daemon.wait_within(WAIT);
    assert!(status.success(), "{logs}");
    assert!(
        logs.contains("write failed; retrying the batch"),
        "the outage was noticed: {logs}"
    );
    receiver.stop();

    let messages = messages.lock();
    let mut ports = BTreeMap::<u32, usize>::new();
    for message in messages.iter() {
        // `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`
        let fields: Vec<&str> = message.splitn(8, ' ').collect();
        assert_eq!(fields[0], "<134>1", "local0.info for an allowed flow");
        assert_eq!(&fields[2..7], ["node-test", "threatflow", "-", "flow", "-"]);
        let cef = parse_cef(fields[7]).unwrap_or_else(|error| panic!("{error}: {message}"));
        assert_eq!(cef.get("shost"), Some("frontend-7d9f8c6b5d-x2k4l"));
        *ports
            .entry(cef.get("spt").unwrap().parse().unwrap())
            .or_default() += 1;
    }
    assert_eq!(ports.len(), 1000, "every record arrived");
    let duplicates: usize = ports.values().map(|count| count - 1).sum();
    assert!(
        duplicates <= 50,
        "at most one batch is sent twice, got {duplicates} duplicates"
    );
}

#[test]
fn rejected_lines_go_to_the_dead_letter_file_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (out, dead) = (dir.path().join("out.cef"), dir.path().join("dead.jsonl"));
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  - {{name: mixed, type: file, file: {{path: tests/fixtures/calico-mixed.log}}}}\nsinks:\n  - {{name: out, type: file, file: {{path: {}}}}}\ndead_letter: {{path: {}}}\n",
            out.display(),
            dead.display()
        ),
    )
    .unwrap();
    let status = Command::new(binary())
        .args(["run", "--once", "--config", config.to_str().unwrap()])
        .current_dir(common::root())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
    let entries: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let reasons: Vec<&str> = entries
        .iter()
        .map(|entry| entry["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "invalid_utf8",
            "invalid_json",
            "invalid_json",
            "missing_field",
            "invalid_field",
            "too_long"
        ]
    );
    assert!(entries
        .iter()
        .all(|entry| entry["source"] == "mixed" && entry["detail"].is_string()));
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(entries[0]["line_base64"].as_str().unwrap())
        .unwrap();
    assert!(
        raw.windows(1).any(|byte| byte == [0xff]),
        "the invalid line is kept byte for byte"
    );
    assert_eq!(entries[1]["line"], "this is not json");
    assert_eq!(
        entries[5]["line_len"], 70_095,
        "the full length of the line"
    );
    assert_eq!(
        entries[5]["line"].as_str().unwrap().len(),
        65_536,
        "only the first max_line_bytes are kept"
    );
}

#[test]
fn records_from_an_idle_stdin_are_not_held_back_waiting_for_a_full_batch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(
        &config,
        format!("sources:\n  - {{name: input, type: stdin}}\nsinks:\n  - {{name: out, type: file, format: json, file: {{path: {}}}}}\npipeline: {{batch_max_records: 50}}\n", out.display()),
    )
    .unwrap();
    let mut daemon = start(&config, Stdio::piped());
    let mut stdin = daemon.stdin();
    for id in 0..7 {
        stdin.write_all(flow_line(id).as_bytes()).unwrap();
    }
    stdin.flush().unwrap();
    // Input stays open: the seven records must still arrive.
    wait_for("a partial batch from an idle input", WAIT, || {
        delivered(&out).len() == 7
    });
    drop(stdin);
    assert!(daemon.wait_within(WAIT).0.success());
}

#[test]
fn a_changed_config_is_applied_without_a_restart_and_an_invalid_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (log, checkpoint, config) = (
        dir.path().join("flows.log"),
        dir.path().join("flows.checkpoint"),
        dir.path().join("threatflow.yaml"),
    );
    let (first, second) = (
        dir.path().join("first.jsonl"),
        dir.path().join("second.jsonl"),
    );
    let write_config = |out: &Path| {
        // Written to a new file and renamed over the old one, as the kubelet swaps a
        // ConfigMap's files.
        let staged = dir.path().join("staged.yaml");
        std::fs::write(
            &staged,
            format!(
                "sources:\n  - {{name: flows, type: file, file: {{path: {}, checkpoint_path: {}, poll_interval_ms: 50}}}}\nsinks:\n  - {{name: out, type: file, format: json, file: {{path: {}}}}}\ntelemetry: {{listen_addr: \"127.0.0.1:0\"}}\n",
                log.display(),
                checkpoint.display(),
                out.display()
            ),
        )
        .unwrap();
        std::fs::rename(&staged, &config).unwrap();
    };
    write_config(&first);
    append(&log, 0..10);
    let daemon = start(&config, Stdio::null());
    let port = daemon.telemetry_port();
    wait_for("the first records", WAIT, || delivered(&first).len() == 10);
    wait_for("the first records to be counted", WAIT, || {
        metric(port, "threatflow_sink_records_total{sink=\"out\"}") == Some(10.0)
    });

    // A valid change: the pipeline drains and restarts with the new sink, in the same process.
    // The listener stays up throughout: a scraper polling it never sees an error.
    let scraping = Arc::new(AtomicBool::new(true));
    let scraper = std::thread::spawn({
        let scraping = scraping.clone();
        move || {
            let mut scrapes = 0;
            while scraping.load(Ordering::SeqCst) {
                assert_eq!(http_get(port, "/metrics").0, 200, "/metrics answered");
                assert_eq!(http_get(port, "/readyz").0, 200, "/readyz answered");
                scrapes += 1;
            }
            scrapes
        }
    });
    write_config(&second);
    wait_for("the new config to be running", WAIT, || {
        metric(port, "threatflow_config_reloads_total{outcome=\"applied\"}") == Some(1.0)
    });
    append(&log, 10..20);
    wait_for("records through the new sink", WAIT, || {
        delivered(&second).len() == 10
    });
    assert_eq!(
        delivered(&first).keys().copied().collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(
        delivered(&second).keys().copied().collect::<Vec<_>>(),
        (10..20).collect::<Vec<_>>(),
        "resumed from the saved position"
    );
    scraping.store(false, Ordering::SeqCst);
    assert!(scraper.join().unwrap() > 0);
    wait_for("the counters to go on across the reload", WAIT, || {
        metric(port, "threatflow_sink_records_total{sink=\"out\"}") == Some(20.0)
    });

    // An invalid change is refused; the running config stays and says so.
    std::fs::write(&config, "sinks:\n  - {name: out, type: file}\n").unwrap();
    wait_for("the refusal to show", WAIT, || {
        let (status, body) = http_get(port, "/readyz");
        status == 200 && body.contains("refused") && body.contains("sinks[0].file")
    });
    assert!(http_get(port, "/metrics")
        .1
        .contains("threatflow_config_reloads_total{outcome=\"refused\"} 1"));
    append(&log, 20..25);
    wait_for("records still flowing", WAIT, || {
        delivered(&second).len() == 15
    });
    let stderr = daemon.terminate();
    assert!(
        stderr.contains("refused, the running config stays"),
        "{stderr}"
    );
}
