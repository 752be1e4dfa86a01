//! Threat feeds: every preset in `connectors/feeds/` reads its sample in the publisher's exact
//! layout, and `threatflow feed normalize` works as a command.

mod common;

use common::daemon::Daemon;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use threatflow::feeds::format::{self, FeedFormat};
use threatflow::netset::NetSet;

/// The shape of a preset file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Preset {
    name: String,
    url: String,
    period_secs: u64,
    format: FeedFormat,
    labels: BTreeMap<String, String>,
}

fn cidrs(content: &[u8], format: &FeedFormat) -> (Vec<String>, String) {
    let feed = format::parse(format, content).unwrap();
    let rejected = feed.rejected_summary();
    let set = NetSet::from_ranges(feed.v4, feed.v6);
    (set.cidrs().map(|net| net.to_string()).collect(), rejected)
}

#[test]
fn every_preset_reads_its_sample() {
    let dir = common::root().join("connectors/feeds");
    let fixtures: BTreeMap<String, std::path::PathBuf> = std::fs::read_dir(dir.join("fixtures"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .map(|path| {
            (
                path.file_stem().unwrap().to_string_lossy().into_owned(),
                path,
            )
        })
        .collect();
    let expected: BTreeMap<&str, (usize, &str)> = [
        ("spamhaus-drop", (5, "missing_field=1")),
        ("spamhaus-dropv6", (3, "missing_field=1")),
        ("spamhaus-drop-txt", (5, "")),
        ("firehol-level1", (11, "")),
        ("feodo", (5, "")),
        ("feodo-csv", (3, "")),
        ("et-compromised", (5, "")),
        ("tor-exits", (4, "")),
        ("fortigate-external", (12, "")),
    ]
    .into();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "yaml") {
            continue;
        }
        let preset: Preset = yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let mut problems = threatflow::config::Problems::default();
        preset.format.validate("format", &mut problems);
        assert!(problems.is_empty(), "{}: {problems}", preset.name);
        assert!(preset.url.starts_with("https://"), "{}", preset.name);
        assert!(preset.period_secs >= 300, "{}", preset.name);
        let fixture = &fixtures[&preset.name];
        let (nets, rejected) = cidrs(&std::fs::read(fixture).unwrap(), &preset.format);
        let (count, expected_rejected) = expected[preset.name.as_str()];
        assert_eq!(
            (nets.len(), rejected.as_str()),
            (count, expected_rejected),
            "{}: {nets:?}",
            preset.name
        );
        seen.push(preset.name);
    }
    seen.sort();
    assert_eq!(
        seen,
        expected.keys().copied().collect::<Vec<_>>(),
        "a preset without a test, or a test without a preset"
    );
}

#[test]
fn the_legacy_spamhaus_layout_reads_the_same_as_the_json_one() {
    let text =
        std::fs::read(common::root().join("connectors/feeds/fixtures/spamhaus-drop-txt.txt"))
            .unwrap();
    let json = std::fs::read(common::root().join("connectors/feeds/fixtures/spamhaus-drop.jsonl"))
        .unwrap();
    let jsonl: FeedFormat = yaml_serde::from_str("{type: jsonl, field: cidr}").unwrap();
    assert_eq!(
        cidrs(&text, &FeedFormat::default()).0,
        cidrs(&json, &jsonl).0
    );
    assert_eq!(cidrs(&text, &FeedFormat::default()).0[0], "1.10.16.0/20");
}

fn normalize(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(common::binary())
        .arg("feed")
        .arg("normalize")
        .args(args)
        .current_dir(common::root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn lines(output: &Output) -> Vec<String> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn normalize_applies_only_the_guards_given() {
    let firehol = "connectors/feeds/fixtures/firehol-level1.netset";
    let output = normalize(&[firehol], b"");
    assert!(output.status.success());
    assert_eq!(lines(&output).len(), 11, "no guard given: bogons stay");

    let output = normalize(
        &[
            firehol,
            "--never-block",
            "10.0.0.0/8",
            "--never-block",
            "192.168.0.0/16",
            "--never-block",
            "127.0.0.0/8",
            "--never-block",
            "169.254.0.0/16",
            "--never-block",
            "100.64.0.0/10",
            "--min-prefix-v4",
            "8",
        ],
        b"",
    );
    assert!(output.status.success());
    assert_eq!(
        lines(&output),
        [
            "0.0.0.0/8",
            "1.10.16.0/20",
            "1.19.0.0/16",
            "2.56.192.0/22",
            "5.42.92.0/24",
            "223.254.0.0/16"
        ]
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr.trim(),
        "11 entries -> 6 CIDRs (6 IPv4, 0 IPv6); removed by guards: never_block=5"
    );
}

#[test]
fn normalize_refuses_a_poisoned_entry_and_masks_host_bits() {
    let feed = b"0.0.0.0/0\n::/0\n10.1.2.3/8\n1.2.3.4\n1.2.3.5\n2001:db8::1/64\n#comment\n";
    let output = normalize(
        &["--min-prefix-v4", "8", "--min-prefix-v6", "16", "-"],
        feed,
    );
    assert_eq!(
        lines(&output),
        ["1.2.3.4/31", "10.0.0.0/8", "2001:db8::/64"]
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("removed by guards: prefix_too_short=2")
    );
}

#[test]
fn normalize_reads_csv_and_json_layouts() {
    let output = normalize(
        &[
            "--format",
            "csv",
            "--csv-column",
            "dst_ip",
            "connectors/feeds/fixtures/feodo-csv.csv",
        ],
        b"",
    );
    assert_eq!(
        lines(&output),
        ["51.178.161.32/32", "91.121.222.89/32", "162.243.103.246/32"]
    );
    let output = normalize(
        &[
            "--format",
            "csv",
            "--csv-column",
            "2",
            "--csv-delimiter",
            ";",
            "-",
        ],
        b"x;10.0.0.1;y\nz;bogus\n",
    );
    assert_eq!(lines(&output), ["10.0.0.1/32"]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("rejected line 2: invalid_entry: \"bogus\""),
        "{stderr}"
    );
    let output = normalize(
        &[
            "--format",
            "json",
            "--json-path",
            "data",
            "--json-field",
            "ip",
            "-",
        ],
        br#"{"data":[{"ip":"fd00::1"},{"ip":"9.9.9.9"}]}"#,
    );
    assert_eq!(lines(&output), ["9.9.9.9/32", "fd00::1/128"]);
}

#[test]
fn normalize_reports_what_to_fix() {
    let output = normalize(&["--format", "csv", "-"], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("a csv feed needs a column"));
    let output = normalize(&["/nonexistent/feed.txt"], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent/feed.txt"));
    let output = normalize(&["--format", "json", "-"], b"[1, 2");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("the feed is not valid JSON"));
    let output = normalize(&["--min-prefix-v4", "33", "-"], b"");
    assert_eq!(output.status.code(), Some(2));
    let output = normalize(&["--never-block", "10.0.0.0/33", "-"], b"");
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a CIDR or an IP address"));
    let output = normalize(&["--never-block", "1.2.3.4", "-"], b"1.2.3.4\n1.2.3.5\n");
    assert_eq!(lines(&output), ["1.2.3.5/32"], "a bare address is a /32");
}

/// A feeds-only config publishing `feed` (a file) into `out`.
fn feeds_config(
    dir: &std::path::Path,
    feed: &std::path::Path,
    out: &std::path::Path,
    extra: &str,
) -> std::path::PathBuf {
    let config = dir.join("threatflow.yaml");
    std::fs::write(
        &config,
        format!(
            "feeds:\n  - {{name: test, url: 'file://{}', labels: {{security-action: block}}}}\nfeed_settings:\n  never_block: [10.0.0.0/8]\n  publish: {{type: directory, directory: {{path: '{}'}}}}\n{extra}telemetry: {{log_level: info}}\n",
            feed.display(),
            out.display()
        ),
    )
    .unwrap();
    config
}

fn run_once(config: &std::path::Path) -> String {
    let output = Command::new(common::binary())
        .args(["run", "--once", "--config", config.to_str().unwrap()])
        .current_dir(common::root())
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{logs}");
    logs
}

fn snapshot(dir: &std::path::Path) -> BTreeMap<String, (usize, std::time::SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .map(|entry| {
            let metadata = entry.metadata().unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                (metadata.len() as usize, metadata.modified().unwrap()),
            )
        })
        .collect()
}

#[test]
fn a_million_entry_feed_publishes_in_shards_and_an_unchanged_resync_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, out) = (dir.path().join("feed.txt"), dir.path().join("calico"));
    // One million distinct /32s in 11.0.0.0/8 and up, none adjacent, plus a poisoned entry and
    // a cluster range that must not be published.
    let mut content = String::with_capacity(16 * 1_000_000);
    content.push_str("0.0.0.0/0\n10.1.2.3\n");
    for i in 0..1_000_000u32 {
        let address = std::net::Ipv4Addr::from(0x0b00_0000 + 2 * i);
        content.push_str(&format!("{address}\n"));
    }
    std::fs::write(&feed, content).unwrap();
    let config = feeds_config(dir.path(), &feed, &out, "");
    let logs = run_once(&config);
    assert!(logs.contains("outcome=\"applied\""), "{logs}");
    let files = snapshot(&out);
    assert!(files.len() >= 100, "{} shards", files.len());
    let mut total = 0;
    for name in files.keys() {
        let set: threatflow::k8s::calico::GlobalNetworkSet =
            yaml_serde::from_str(&std::fs::read_to_string(out.join(name)).unwrap()).unwrap();
        assert!(set.spec.nets.len() <= 10_000);
        assert!(
            serde_json::to_vec(&set).unwrap().len() < 1_500_000,
            "{name} is too large for etcd"
        );
        assert!(!set
            .spec
            .nets
            .iter()
            .any(|net| net == "0.0.0.0/0" || net.starts_with("10.")));
        total += set.spec.nets.len();
    }
    assert_eq!(total, 1_000_000);

    // The same feed again: nothing is written.
    let logs = run_once(&config);
    assert!(logs.contains("outcome=\"unchanged\""), "{logs}");
    assert_eq!(snapshot(&out), files);
}

#[test]
fn shrunk_and_empty_feeds_are_refused_and_the_last_good_set_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, out) = (dir.path().join("feed.txt"), dir.path().join("calico"));
    let lines = |count: u32| {
        (0..count)
            .map(|i| format!("{}\n", std::net::Ipv4Addr::from(0x0b00_0000 + 2 * i)))
            .collect::<String>()
    };
    std::fs::write(&feed, lines(100)).unwrap();
    let config = feeds_config(dir.path(), &feed, &out, "");
    run_once(&config);
    let good = snapshot(&out);

    // A truncated download: 10 % of the entries.
    std::fs::write(&feed, lines(10)).unwrap();
    let logs = run_once(&config);
    assert!(
        logs.contains("the feed shrank from 100 to 10 CIDRs"),
        "{logs}"
    );
    assert_eq!(snapshot(&out), good);

    std::fs::write(&feed, "# nothing today\n").unwrap();
    let logs = run_once(&config);
    assert!(logs.contains("the feed is empty"), "{logs}");
    assert_eq!(snapshot(&out), good);

    // With allow_shrink the operator accepts it.
    let config = feeds_config(dir.path(), &feed, &out, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "labels: {security-action: block}",
        "labels: {security-action: block}, allow_shrink: true",
    );
    std::fs::write(&config, text).unwrap();
    run_once(&config);
    let set: threatflow::k8s::calico::GlobalNetworkSet =
        yaml_serde::from_str(&std::fs::read_to_string(out.join("threatfeed.test.yaml")).unwrap())
            .unwrap();
    assert!(set.spec.nets.is_empty());
}

#[test]
fn status_and_render_show_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, out) = (dir.path().join("feed.txt"), dir.path().join("calico"));
    std::fs::write(&feed, "1.2.3.4\n5.6.7.0/24\nbogus\n").unwrap();
    let config = feeds_config(dir.path(), &feed, &out, "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "telemetry: {log_level: info}",
        "telemetry: {log_level: info, listen_addr: '127.0.0.1:0'}",
    );
    std::fs::write(
        &config,
        text.replace("  publish:", "  policy: {tier: security}\n  publish:"),
    )
    .unwrap();

    let rendered = Command::new(common::binary())
        .args([
            "feed",
            "render",
            "--config",
            config.to_str().unwrap(),
            "--feed",
            "test",
        ])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let yaml = String::from_utf8(rendered.stdout).unwrap();
    let documents: Vec<yaml_serde::Value> = yaml
        .split("---\n")
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| yaml_serde::from_str(doc).unwrap())
        .collect();
    assert_eq!(documents.len(), 3);
    assert_eq!(
        documents[0]["kind"], "Tier",
        "the tier the policy goes in, first"
    );
    assert_eq!(documents[0]["metadata"]["name"], "security");
    assert_eq!(
        documents[1]["spec"]["nets"],
        yaml_serde::from_str::<yaml_serde::Value>("[1.2.3.4/32, 5.6.7.0/24]").unwrap()
    );
    assert_eq!(documents[2]["kind"], "GlobalNetworkPolicy");
    assert!(!out.exists(), "render publishes nothing");
    let missing = Command::new(common::binary())
        .args([
            "feed",
            "render",
            "--config",
            config.to_str().unwrap(),
            "--feed",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("has no feed `nope` (it has: test)"));

    let daemon = Daemon::run(&config);
    let port = daemon.telemetry_port();
    let status = || {
        Command::new(common::binary())
            .args(["status", "--addr", &format!("127.0.0.1:{port}")])
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let table = loop {
        let output = status();
        let table = String::from_utf8_lossy(&output.stdout).into_owned();
        if table.contains("applied") {
            break table;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no applied sync: {table}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let row = table
        .lines()
        .find(|line| line.starts_with("test "))
        .unwrap();
    assert!(
        row.split_whitespace().collect::<Vec<_>>()[..4] == ["test", "enforce", "2", "1"],
        "{table}"
    );
    let json = Command::new(common::binary())
        .args(["status", "--json", "--addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["feeds"][0]["rejected_lines"]["invalid_entry"], 1);
    assert!(json["feeds"][0]["last_successful_apply"].is_string());
    daemon.terminate();
}

#[test]
fn a_daemon_with_feeds_ends_when_its_input_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (feed, out) = (dir.path().join("feed.txt"), dir.path().join("calico"));
    std::fs::write(&feed, "1.2.3.4\n").unwrap();
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n  - {{name: input, type: stdin}}\nsinks:\n  - {{name: out, type: file, file: {{path: '{}'}}}}\nfeeds:\n  - {{name: test, url: 'file://{}'}}\nfeed_settings:\n  publish: {{type: directory, directory: {{path: '{}'}}}}\n",
            dir.path().join("records.cef").display(),
            feed.display(),
            out.display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::spawn(&["run", "--config", config.to_str().unwrap()], |command| {
        command.stdin(Stdio::piped());
    });
    drop(daemon.stdin());
    let (status, stderr) = daemon.wait_within(std::time::Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
}
