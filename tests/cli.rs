//! Black-box tests of the `threatflow` binary: the quickstart, `enrich` on fixtures in Calico's
//! exact format, and `check`. Every CEF line is read back with the independent parser in
//! `common`.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{binary, parse_cef, root, Cef};

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // Written from another thread: a large input's output fills the pipe before it is read.
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&stdin));
    let output = child.wait_with_output().unwrap();
    // A process that refuses its arguments exits without reading: a broken pipe then.
    let _ = writer.join().unwrap();
    output
}

fn cef_lines(output: &Output) -> Vec<Cef> {
    String::from_utf8(output.stdout.clone())
        .expect("stdout is UTF-8")
        .lines()
        .map(|line| parse_cef(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect()
}

#[test]
fn quickstart_prints_enriched_cef_for_every_sample_record() {
    let output = run(
        &["run", "--once", "--config", "deploy/local/threatflow.yaml"],
        b"",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events = cef_lines(&output);
    let samples = std::fs::read_to_string(root().join("deploy/local/flows.log")).unwrap();
    assert_eq!(events.len(), samples.lines().count());

    // The first sample: a denied level-0 flow between two pods the inventory knows.
    let denied = &events[0];
    assert_eq!(denied.header[4], "flow-denied");
    assert_eq!(denied.get("src"), Some("10.244.1.5"));
    assert_eq!(
        denied.get("shost"),
        Some("frontend-7d9f8c6b5d-x2k4l"),
        "pod name from the inventory"
    );
    assert_eq!(denied.get("dhost"), Some("checkout-6c8f9d7b4-m2n3p"));
    assert_eq!(denied.labelled("srcWorkload"), Some("Deployment/frontend"));
    assert_eq!(denied.labelled("dstNamespace"), Some("shop"));
    assert_eq!(
        denied.labelled("policy"),
        Some("0|security|security.shop-isolation|deny|0")
    );
    assert_eq!(denied.get("deviceExternalId"), Some("quickstart"));
    assert_eq!(
        denied.get("rt"),
        Some("1764230700000"),
        "epoch milliseconds"
    );

    // An aggregated record: no IPs, so no invented pod.
    let aggregated = events
        .iter()
        .find(|event| event.get("cnt") == Some("37"))
        .unwrap();
    assert_eq!(aggregated.get("src"), None);
    assert_eq!(aggregated.get("shost"), Some("checkout-6c8f9d7b4-*"));
    assert_eq!(
        aggregated.labelled("srcWorkload"),
        Some("Deployment/checkout")
    );

    // The SOC blocklist (monitor mode) tags the flows to and from its addresses.
    let threats: Vec<&Cef> = events
        .iter()
        .filter(|event| event.header[4] == "threat-match")
        .collect();
    assert_eq!(threats.len(), 3);
    assert!(threats
        .iter()
        .all(|event| event.header[6] == "9"
            && event.labelled("threatFeeds") == Some("soc-blocklist")));
    let published = std::fs::read_to_string(
        root().join("target/quickstart/calico/threatfeed.firehol-level1.yaml"),
    )
    .unwrap();
    assert!(
        published.contains("1.10.16.0/20") && !published.contains("10.244.0.0"),
        "the enforce feed is published without the cluster's ranges"
    );
    assert!(
        !root()
            .join("target/quickstart/calico/threatfeed.soc-blocklist.yaml")
            .exists(),
        "monitor feeds publish nothing"
    );

    // IPv6 endpoints use c6a2/c6a3.
    let ipv6 = events
        .iter()
        .find(|event| event.labelled("sourceIPv6").is_some())
        .unwrap();
    assert_eq!(ipv6.labelled("destinationIPv6"), Some("fd00:10:244:1::5"));
    assert_eq!(ipv6.get("destinationServiceName"), Some("web/frontend"));
}

#[test]
fn enrich_keeps_hostile_values_inside_their_fields() {
    let input = std::fs::read(root().join("tests/fixtures/calico-hostile.log")).unwrap();
    let output = run(
        &[
            "enrich",
            "--inventory",
            "deploy/local/inventory.json",
            "--cluster-name",
            "c|1=x",
        ],
        &input,
    );
    assert!(output.status.success());
    let events = cef_lines(&output);
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].get("sproc"),
        Some("evil|name=x\\y\r\nCEF:0|fake|header|1|1|injected|10|src=6.6.6.6")
    );
    assert_eq!(
        events[0].get("src"),
        Some("10.244.1.5"),
        "the injected src did not replace the real one"
    );
    assert_eq!(
        events[0]
            .pairs
            .iter()
            .filter(|(key, _)| key == "src")
            .count(),
        1
    );
    assert_eq!(events[0].get("deviceExternalId"), Some("c|1=x"));
    assert_eq!(events[1].get("shost"), Some("pod\\name"));
    assert_eq!(
        events[1].labelled("srcLabels"),
        Some("app=checkout,inject=a b dst\\=1.2.3.4 act=allow,nl=x\ny")
    );
    assert_eq!(events[1].get("act"), Some("allow"));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "2 records, 0 rejected"
    );

    // The same input as JSON: the free-text fields the default CEF mapping leaves out survive.
    let output = run(&["enrich", "--output-format", "json"], &input);
    let first: serde_json::Value =
        serde_json::from_slice(output.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["process_args"][3], "new\nline");
    assert_eq!(first["dest_domains"][4], "CEF:0|x|y|1|2|3|4|dst=1.1.1.1");
}

#[test]
fn enrich_rejects_bad_lines_with_reasons_and_keeps_order() {
    let input = std::fs::read(root().join("tests/fixtures/calico-mixed.log")).unwrap();
    let output = run(&["enrich"], &input);
    assert!(output.status.success());
    let events = cef_lines(&output);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].get("spt"), Some("51234"), "input order");
    assert_eq!(events[1].get("spt"), Some("40112"));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("record 2: rejected (invalid_utf8)"),
        "{stderr}"
    );
    assert!(stderr.contains("record 7: rejected (too_long)"), "{stderr}");
    assert_eq!(
        stderr.lines().last().unwrap(),
        "2 records, 6 rejected: invalid_utf8=1 invalid_json=2 too_long=1 missing_field=1 invalid_field=1"
    );
    let strict = run(&["enrich", "--strict"], &input);
    assert_eq!(strict.status.code(), Some(1));
}

#[test]
fn enrich_with_several_workers_writes_what_one_worker_writes_in_the_same_order() {
    // Many work batches (each ~256 KB), with rejected lines spread through them.
    let sample = std::fs::read(root().join("deploy/local/flows.log")).unwrap();
    let mixed = std::fs::read(root().join("tests/fixtures/calico-mixed.log")).unwrap();
    let mut input = Vec::new();
    for copy in 0..400 {
        input.extend_from_slice(if copy % 50 == 7 { &mixed } else { &sample });
    }
    let one = run(
        &["enrich", "--workers", "1", "--output-format", "json"],
        &input,
    );
    assert!(one.status.success());
    let records = one.stdout.iter().filter(|&&byte| byte == b'\n').count();
    assert!(records > 2_000, "{records} records");
    for workers in ["2", "3"] {
        let several = run(
            &["enrich", "--workers", workers, "--output-format", "json"],
            &input,
        );
        assert!(several.status.success());
        assert!(
            several.stdout == one.stdout,
            "{workers} workers: other records or order"
        );
        // Rejections carry the same line numbers.
        assert_eq!(
            String::from_utf8_lossy(&several.stderr),
            String::from_utf8_lossy(&one.stderr)
        );
    }
    let zero = run(&["enrich", "--workers", "0"], &input);
    assert_eq!(zero.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--workers must be between 1 and 256"));
}

#[test]
fn enrich_matches_flows_against_feed_files() {
    let input = std::fs::read(root().join("deploy/local/flows.log")).unwrap();
    let output = run(
        &[
            "enrich",
            "--feed",
            "incident=deploy/local/blocklist.txt",
            "--feed",
            "pods=tests/fixtures/no-such-file",
        ],
        &input,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("cannot read feed pods from tests/fixtures/no-such-file"));
    let output = run(
        &[
            "enrich",
            "--feed",
            "incident=deploy/local/blocklist.txt",
            "--output-format",
            "json",
        ],
        &input,
    );
    assert!(output.status.success());
    let tagged: Vec<serde_json::Value> = output
        .stdout
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice::<serde_json::Value>(line).unwrap())
        .filter(|record| record["threat_feeds"] == serde_json::json!(["incident"]))
        .collect();
    assert_eq!(tagged.len(), 3);
    let output = run(&["enrich", "--feed", "no-equals-sign"], &input);
    assert!(String::from_utf8_lossy(&output.stderr).contains("must be NAME=FILE"));
}

#[test]
fn check_reports_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(
        &config,
                "sources:\n  - {name: a, type: file}\nsinks:\n  - {name: s, type: syslog, syslog: {host: '', port: 0}}\ncef:\n  fields:\n    - {key: cs1, field: source_namespace}\nenrichment: {inventory_path: /nonexistent/inventory.json}\nfeeds:\n  - {name: local, url: 'file://no/such/feed.txt', mode: monitor}\n",
    )
    .unwrap();
    let output = run(&["check", "--config", config.to_str().unwrap()], b"");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    for path in [
        "sources[0].file",
        "sinks[0].syslog.host",
        "sinks[0].syslog.port",
        "cef.fields[0].label",
        "enrichment.inventory_path",
        "feeds[0].url",
    ] {
        assert!(
            stderr.contains(&format!("  {path}: ")),
            "{path} missing from:\n{stderr}"
        );
    }
    assert!(stderr.contains("has 6 problem(s)"), "{stderr}");

    std::fs::write(
        &config,
        "sources: []\nsinks:\n  - {name: s, type: stdout, colour: red}\n",
    )
    .unwrap();
    let output = run(&["check", "--config", config.to_str().unwrap()], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("sinks[0].colour: unknown field `colour`")
    );

    let output = run(&["check", "--config", "deploy/local/threatflow.yaml"], b"");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("config OK: sources: calico-flows"));
}

#[test]
fn run_refuses_an_invalid_config_before_starting() {
    let output = run(&["run", "--config", "/nonexistent.yaml"], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("cannot read config file /nonexistent.yaml"));
}

#[test]
fn the_test_cef_parser_itself() {
    let cef =
        parse_cef(r"CEF:0|a\|b|p|1|sig|name \\ x|5|k1=v 1 k2=a\=b\nc cs1Label=x cs1=y").unwrap();
    assert_eq!(
        cef.header,
        ["CEF:0", "a|b", "p", "1", "sig", r"name \ x", "5"]
    );
    assert_eq!(
        cef.pairs,
        [
            ("k1".into(), "v 1".into()),
            ("k2".into(), "a=b\nc".into()),
            ("cs1Label".into(), "x".into()),
            ("cs1".into(), "y".into())
        ]
    );
    assert_eq!(cef.labelled("x"), Some("y"));
    assert!(parse_cef("CEF:0|a|b|c|d|e|5|k=a=b").is_err());
    assert!(parse_cef("CEF:0|a|b|c|d|e|5|k=a\nb").is_err());
    assert!(parse_cef("CEF:0|a|b|c|d|e|k=v").is_err());
    assert!(parse_cef(r"CEF:0|a|b|c|d|e|5|k=a\|b").is_err());
}

#[test]
fn label_filters_apply_to_both_label_sources_and_the_daemon_and_the_cli_agree() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(
        &config,
        "cluster_name: demo\nsources:\n  - {name: flows, type: file, file: {path: deploy/local/flows.log}}\nenrichment:\n  inventory_path: deploy/local/inventory.json\n  labels: {exclude: ['*-hash', 'statefulset.kubernetes.io/*']}\nsinks:\n  - {name: out, type: stdout}\ntelemetry: {log_level: error}\n",
    )
    .unwrap();
    let daemon = run(
        &["run", "--once", "--config", config.to_str().unwrap()],
        b"",
    );
    assert!(
        daemon.status.success(),
        "{}",
        String::from_utf8_lossy(&daemon.stderr)
    );
    let input = std::fs::read(root().join("deploy/local/flows.log")).unwrap();
    let offline = run(
        &[
            "enrich",
            "--config",
            config.to_str().unwrap(),
            "--inventory",
            "deploy/local/inventory.json",
        ],
        &input,
    );
    assert!(offline.status.success());
    assert_eq!(
        String::from_utf8_lossy(&daemon.stdout),
        String::from_utf8_lossy(&offline.stdout),
        "the daemon and the offline CLI agree"
    );
    let text = String::from_utf8(offline.stdout).unwrap();
    assert!(
        !text.contains("hash") && !text.contains("statefulset.kubernetes.io"),
        "{text}"
    );
    assert!(text.contains("cs3=app\\=frontend"), "other labels stay");
    // Workloads are still resolved: the filter applies to what is shown, not to what is known.
    assert!(text.contains("flexString1=Deployment/frontend"));
    assert!(text.contains("shost=checkout-6c8f9d7b4-* cs1Label=srcNamespace cs1=shop cs3Label=srcLabels cs3=app\\=checkout,tier\\=backend cs5Label=policy"), "{text}");
    let aggregated = text.lines().find(|line| line.contains(" cnt=37 ")).unwrap();
    assert!(
        aggregated.contains("flexString1=Deployment/checkout"),
        "an aggregated record's workload survives the filter: {aggregated}"
    );
}

/// Runs `args` on a large input, reads one line of output, then closes the output.
fn run_and_close_output_early(args: &[&str], config_dir: &std::path::Path) -> Output {
    use std::io::{BufRead, BufReader};
    let sample = std::fs::read_to_string(root().join("deploy/local/flows.log")).unwrap();
    let input = config_dir.join("flows.log");
    std::fs::write(&input, sample.repeat(3000)).unwrap();
    let mut child = Command::new(binary())
        .args(args)
        .arg(if args[0] == "enrich" {
            "--max-line-bytes=65536"
        } else {
            "--once"
        })
        .current_dir(root())
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("CEF:0|"));
    // The reader is gone now, like `| head -1`.
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_output_ends_enrich_quietly_and_the_daemon_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_and_close_output_early(&["enrich"], dir.path());
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("before the output was closed"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let config = dir.path().join("threatflow.yaml");
    std::fs::write(&config, format!("sources:\n  - {{name: flows, type: file, file: {{path: {}}}}}\nsinks:\n  - {{name: out, type: stdout}}\n", dir.path().join("flows.log").display())).unwrap();
    let started = std::time::Instant::now();
    let output =
        run_and_close_output_early(&["run", "--config", config.to_str().unwrap()], dir.path());
    assert_eq!(output.status.code(), Some(1), "records were not delivered");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("the output was closed"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "no endless retrying"
    );
}

#[test]
fn enrich_reads_hubble_flows() {
    let input = std::fs::read(root().join("connectors/hubble/fixtures/flows.jsonl")).unwrap();
    let output = run(
        &[
            "enrich",
            "--input-format",
            "hubble",
            "--inventory",
            "deploy/local/inventory.json",
            "--cluster-name",
            "c1",
        ],
        &input,
    );
    assert!(output.status.success(), "{output:?}");
    let events = cef_lines(&output);
    assert_eq!(events.len(), 5);
    let dns = &events[0];
    assert_eq!(dns.header[4], "flow-allowed");
    assert_eq!(dns.get("shost"), Some("frontend-7d9f8c6b5d-x2k4l"));
    assert_eq!(dns.labelled("srcWorkload"), Some("Deployment/frontend"));
    assert_eq!(
        dns.get("destinationServiceName"),
        Some("kube-system/kube-dns")
    );
    assert_eq!(dns.get("dvchost"), Some("node-a"));
    let denied = &events[1];
    assert_eq!(denied.header[4], "flow-denied");
    assert_eq!(
        denied.labelled("policy"),
        Some("ingress|shop/default-deny|deny;drop_reason|POLICY_DENIED")
    );
    // IPv6 addresses go to c6a2/c6a3.
    let ipv6 = &events[3];
    assert_eq!(ipv6.get("c6a3"), Some("fd00:10:244:1::5"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("5 records, 0 rejected"), "{stderr}");
}
