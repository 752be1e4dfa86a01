//! STIX 2.1 feeds through the feed sync: a TAXII 2.1 collection pulled incrementally from the
//! TAXII double, FortiGuard's Premium API feed from its double, and a STIX bundle at a URL;
//! each with its indicators counted by outcome, and nothing but addresses published.

mod common;

use std::path::Path;

use serde_json::{json, Value};
use threatflow::enrich::ThreatMatcher;
use threatflow::feeds::sync::{FeedRunner, FeedStatus, StatusBoard};

fn runner(yaml: &str, threats: &ThreatMatcher, board: &StatusBoard) -> FeedRunner {
    common::feed_runner(yaml, threats, board)
}

fn status(board: &StatusBoard, name: &str) -> FeedStatus {
    board.lock()[name].clone()
}

fn listed(threats: &ThreatMatcher, ip: &str) -> bool {
    common::threat_listed(threats, ip)
}

fn secret(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    path.display().to_string()
}

fn indicator(id: u32, pattern: &str, modified: &str, extra: Value) -> Value {
    let mut object = json!({"type": "indicator", "spec_version": "2.1",
        "id": format!("indicator--00000000-0000-4000-8000-{id:012}"),
        "created": "2026-01-01T00:00:00.000Z", "modified": modified,
        "pattern": pattern, "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00.000Z"});
    for (key, value) in extra.as_object().unwrap() {
        object[key] = value.clone();
    }
    object
}

fn counts(status: &FeedStatus) -> Vec<(String, u64)> {
    status
        .indicators
        .iter()
        .map(|(outcome, count)| (outcome.clone(), *count))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taxii_collection_is_pulled_incrementally_and_revocation_takes_members_out() {
    let dir = tempfile::tempdir().unwrap();
    let taxii = common::taxii::Taxii::start(dir.path(), common::taxii::Knobs::default()).await;
    taxii.add_collection("91a7b528-80eb-42ed-a74d-c6fbd5a26116", "MISP export", true);
    let collection = "91a7b528-80eb-42ed-a74d-c6fbd5a26116";
    let first = "2026-02-01T00:00:00.000Z";
    for object in [
        indicator(1, "[ipv4-addr:value = '198.51.100.7']", first, json!({})),
        indicator(2, "[ipv4-addr:value = '203.0.113.0/24']", first, json!({})),
        indicator(3, "[domain-name:value = 'evil.example']", first, json!({})),
        indicator(
            4,
            "[ipv4-addr:value = '192.0.2.44']",
            first,
            json!({"valid_until": "2026-03-01T00:00:00Z"}),
        ),
        json!({"type": "malware", "id": "malware--1", "name": "x", "is_family": false}),
    ] {
        taxii.add_now(collection, object);
    }
    taxii.set_page_size(2);
    let authorization = common::taxii::basic("taxii-user", "taxii-password");
    let yaml = format!(
        "feeds:\n  - name: misp\n    type: taxii\n    url: {}\n    taxii: {{collection: 'MISP export', page_size: 2}}\n    mode: monitor\n    headers: [{{name: Authorization, value_from_file: {}}}]\nfeed_settings: {{ca_file: {}}}\n",
        taxii.discovery_url(),
        secret(dir.path(), "taxii-auth", &authorization),
        dir.path().join("ca.pem").display(),
    );
    let threats = ThreatMatcher::default();
    let board = StatusBoard::default();
    let mut feed = runner(&yaml, &threats, &board);
    assert_eq!(
        feed.sync().await,
        Ok("unchanged"),
        "{:?}",
        status(&board, "misp")
    );
    let after_first = status(&board, "misp");
    assert_eq!(after_first.entries, 2, "{after_first:?}");
    assert_eq!(
        counts(&after_first),
        [
            ("expired".to_owned(), 1),
            ("ip".to_owned(), 2),
            ("unsupported_not_an_address".to_owned(), 1)
        ]
    );
    assert!(listed(&threats, "198.51.100.7") && listed(&threats, "203.0.113.9"));
    assert!(!listed(&threats, "192.0.2.44"), "expired");
    // Every request asked for TAXII 2.1 with the credentials; pages of two, by `next`.
    let requests = taxii.requests();
    assert!(requests.iter().all(|request| request.header("accept")
        == Some("application/taxii+json;version=2.1")
        && request.header("authorization") == Some(authorization.as_str())));
    let pages = requests
        .iter()
        .filter(|request| request.path().ends_with("/objects/"))
        .count();
    assert_eq!(pages, 3);

    // A new version revokes one indicator, and another arrives: only they are read.
    let later = "2026-03-01T00:00:00.000Z";
    taxii.add_now(
        collection,
        indicator(
            1,
            "[ipv4-addr:value = '198.51.100.7']",
            later,
            json!({"revoked": true}),
        ),
    );
    taxii.add_now(
        collection,
        indicator(
            5,
            "[ipv6-addr:value = '2001:db8:bad::/48']",
            later,
            json!({}),
        ),
    );
    assert_eq!(feed.sync().await, Ok("unchanged"));
    let after_second = status(&board, "misp");
    assert_eq!(
        counts(&after_second),
        [("ip".to_owned(), 1), ("revoked".to_owned(), 1)],
        "this pull's indicators only"
    );
    assert_eq!(after_second.entries, 2, "{after_second:?}");
    assert!(!listed(&threats, "198.51.100.7"), "revoked");
    assert!(listed(&threats, "203.0.113.9") && listed(&threats, "2001:db8:bad::1"));
    let incremental = taxii
        .requests()
        .into_iter()
        .filter(|request| request.path().ends_with("/objects/"))
        .nth(pages)
        .unwrap();
    assert!(
        incremental.query("added_after").is_some(),
        "{}",
        incremental.target
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortiguard_premium_is_downloaded_unpacked_and_read_without_leaking_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let fortiguard =
        common::fortiguard::FortiGuard::start(dir.path(), common::fortiguard::Knobs::default())
            .await;
    let yaml = format!(
        "feeds:\n  - name: fortiguard\n    type: fortiguard-premium\n    url: {}\n    fortiguard: {{countries: 'all'}}\n    mode: monitor\n    headers: [{{name: Token, value_from_file: {}}}]\nfeed_settings: {{ca_file: {}}}\n",
        fortiguard.url(),
        secret(dir.path(), "token", "fortiguard-token"),
        dir.path().join("ca.pem").display(),
    );
    let threats = ThreatMatcher::default();
    let board = StatusBoard::default();
    let mut feed = runner(&yaml, &threats, &board);
    assert_eq!(
        feed.sync().await,
        Ok("unchanged"),
        "{:?}",
        status(&board, "fortiguard")
    );
    let synced = status(&board, "fortiguard");
    assert_eq!(
        counts(&synced),
        [
            ("expired".to_owned(), 1),
            ("ip".to_owned(), 2),
            ("unsupported_and".to_owned(), 1),
            ("unsupported_not_an_address".to_owned(), 2)
        ]
    );
    assert_eq!(synced.entries, 2);
    assert!(listed(&threats, "198.51.100.23") && listed(&threats, "2001:db8::23"));
    assert!(
        !listed(&threats, "203.0.113.7"),
        "an AND pattern is never read as an address"
    );
    assert!(!fortiguard.token_leaked_to_download());

    // Not gzip: refused with why, and the last good set stays in force.
    fortiguard.set_download(b"{\"type\": \"bundle\", \"objects\": []}".to_vec());
    assert!(feed.sync().await.is_err());
    let failed = status(&board, "fortiguard");
    assert!(
        failed.last_error.unwrap().contains("gzip"),
        "{:?}",
        failed.last_outcome
    );
    assert!(listed(&threats, "198.51.100.23"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stix_bundle_at_a_url_and_hostile_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.json");
    let objects: Vec<Value> = (0..50)
        .map(|i| {
            indicator(
                i,
                &format!("[ipv4-addr:value = '10.9.{i}.1'] OR [ipv4-addr:value = '10.8.{i}.0/24']"),
                "2026-02-01T00:00:00.000Z",
                json!({}),
            )
        })
        .collect();
    std::fs::write(
        &bundle,
        serde_json::to_vec(&json!({"type": "bundle", "id": "bundle--1", "objects": objects}))
            .unwrap(),
    )
    .unwrap();
    let yaml = |max_body_bytes: u64| {
        format!(
            "feeds:\n  - name: local\n    url: file://{}\n    format: {{type: stix2}}\n    mode: monitor\nfeed_settings: {{max_body_bytes: {max_body_bytes}}}\n",
            bundle.display()
        )
    };
    let threats = ThreatMatcher::default();
    let board = StatusBoard::default();
    let mut feed = runner(&yaml(1 << 20), &threats, &board);
    assert_eq!(feed.sync().await, Ok("unchanged"));
    assert_eq!(counts(&status(&board, "local")), [("ip".to_owned(), 50)]);
    assert!(listed(&threats, "10.9.49.1") && listed(&threats, "10.8.3.77"));

    // Over the body cap: refused with the cap named, before it is parsed.
    let mut capped = runner(&yaml(4096), &threats, &board);
    assert!(capped.sync().await.is_err());
    assert!(status(&board, "local")
        .last_error
        .unwrap()
        .contains("max_body_bytes"));

    // Invalid UTF-8: the document is refused with why.
    std::fs::write(
        &bundle,
        b"{\"type\": \"bundle\", \"objects\": [{\"type\": \"indicator\", \"pattern\": \"\xff\xfe\"}]}",
    )
    .unwrap();
    assert!(feed.sync().await.is_err());
    let error = status(&board, "local").last_error.unwrap();
    assert!(error.contains("not a STIX bundle"), "{error}");
    // Deep nesting in a field threatflow does not read is skipped, object by object; the
    // indicator without a pattern is counted, and the empty result refused by the guard.
    std::fs::write(
        &bundle,
        format!(
            "{{\"objects\": [{{\"type\": \"indicator\", \"x\": {}1{}}}]}}",
            "[".repeat(5000),
            "]".repeat(5000)
        ),
    )
    .unwrap();
    assert!(feed.sync().await.is_err());
    let refused = status(&board, "local");
    assert_eq!(
        counts(&refused),
        [("unsupported_invalid_pattern".to_owned(), 1)]
    );
    assert_eq!(refused.last_outcome, "empty", "{refused:?}");
    assert!(listed(&threats, "10.9.49.1"), "the last good set stays");
}

#[test]
fn the_fortiguard_and_taxii_examples_are_valid_configs() {
    for example in [
        "connectors/fortiguard/isdb.yaml",
        "connectors/fortiguard/isdb-via-fortimanager.yaml",
        "connectors/fortiguard/premium.yaml",
        "connectors/taxii/opencti.yaml",
    ] {
        if let Err(report) = threatflow::cli::check::check(&common::root().join(example)) {
            panic!("{example}:\n{report}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_versions_are_ordered_by_time_not_text() {
    let dir = tempfile::tempdir().unwrap();
    let taxii = common::taxii::Taxii::start(dir.path(), common::taxii::Knobs::default()).await;
    let collection = "c1";
    taxii.add_collection(collection, "feed", true);
    // `.500Z` sorts before `Z` as text; as a time it is later: the revoking version wins.
    taxii.add_now(
        collection,
        indicator(
            1,
            "[ipv4-addr:value = '198.51.100.7']",
            "2026-02-01T00:00:00Z",
            json!({}),
        ),
    );
    taxii.add_now(
        collection,
        indicator(
            1,
            "[ipv4-addr:value = '198.51.100.7']",
            "2026-02-01T00:00:00.500Z",
            json!({"revoked": true}),
        ),
    );
    taxii.add_now(
        collection,
        indicator(
            2,
            "[ipv4-addr:value = '198.51.100.8']",
            "2026-02-01T00:00:00Z",
            json!({}),
        ),
    );
    let yaml = format!(
        "feeds:\n  - name: t\n    type: taxii\n    url: {}\n    taxii: {{collection: c1}}\n    mode: monitor\n    headers: [{{name: Authorization, value_from_file: {}}}]\nfeed_settings: {{ca_file: {}}}\n",
        taxii.api_root_url(),
        secret(dir.path(), "auth", &common::taxii::basic("taxii-user", "taxii-password")),
        dir.path().join("ca.pem").display(),
    );
    let threats = ThreatMatcher::default();
    let board = StatusBoard::default();
    let mut feed = runner(&yaml, &threats, &board);
    assert_eq!(
        feed.sync().await,
        Ok("unchanged"),
        "{:?}",
        status(&board, "t")
    );
    assert!(
        !listed(&threats, "198.51.100.7"),
        "the newer version revokes it"
    );
    assert!(listed(&threats, "198.51.100.8"));
}
