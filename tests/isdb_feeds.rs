//! FortiGate ISDB feeds through the feed sync, against the FortiGate double's ISDB endpoints
//! in each FortiOS version profile: names resolved on the device, summary then pages with
//! repeated rows merged, IPv6 from 7.4, a service growing mid-walk, an empty (mini) ISDB, an
//! unknown service, refusals and throttling; and the same walk relayed through the FortiManager
//! double to a FortiGate it manages (`via: fortimanager`).

mod common;

use common::fortigate::{self as fgt, Fault};
use common::fortimanager as fmg;
use threatflow::enrich::ThreatMatcher;
use threatflow::feeds::sync::{FeedRunner, FeedStatus, StatusBoard};

const DETAILS: &str = "/api/v2/monitor/firewall/internet-service-details";
const TOR_EXIT: u64 = 2818243;

struct Scene {
    dir: tempfile::TempDir,
    double: fgt::FortiGate,
}

impl Scene {
    async fn at(version: &str) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let double = fgt::FortiGate::start(
            dir.path(),
            fgt::Knobs {
                version: version.into(),
                ..fgt::Knobs::default()
            },
        )
        .await;
        Scene { dir, double }
    }

    fn runner(&self, isdb: &str, threats: &ThreatMatcher, board: &StatusBoard) -> FeedRunner {
        let key = self.dir.path().join("isdb-key");
        std::fs::write(&key, "fgt-key\n").unwrap();
        let yaml = format!(
            "feeds:\n  - name: tor\n    type: fortigate-isdb\n    url: {}\n    mode: monitor\n    isdb: {{{isdb}, api_key: {{value_from_file: {}}}, requests_per_second: 100}}\nfeed_settings: {{ca_file: {}, retries: 2}}\n",
            self.double.url(),
            key.display(),
            self.dir.path().join("ca.pem").display(),
        );
        common::feed_runner(&yaml, threats, board)
    }
}

fn status(board: &StatusBoard) -> FeedStatus {
    board.lock()["tor"].clone()
}

fn listed(threats: &ThreatMatcher, ip: &str) -> bool {
    common::threat_listed(threats, ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_by_name_becomes_its_ranges_in_every_version() {
    for version in ["v6.4.15", "v7.0.17", "v7.2.11", "v7.4.8", "v7.6.3"] {
        let scene = Scene::at(version).await;
        scene.double.set_isdb_service(
            TOR_EXIT,
            vec![
                ("192.0.2.8", "192.0.2.15"),
                ("198.51.100.7", "198.51.100.7"),
                ("2001:db8:70::", "2001:db8:70::ff"),
            ],
            3,
        );
        let threats = ThreatMatcher::default();
        let board = StatusBoard::default();
        let mut feed = scene.runner("service: Tor-Exit.Node", &threats, &board);
        assert_eq!(
            feed.sync().await,
            Ok("unchanged"),
            "{version}: {:?}",
            status(&board)
        );
        let synced = status(&board);
        let ipv6 = version >= "v7.4";
        assert_eq!(
            synced.entries,
            if ipv6 { 3 } else { 2 },
            "{version}: {synced:?}"
        );
        assert!(listed(&threats, "192.0.2.9") && listed(&threats, "198.51.100.7"));
        assert_eq!(listed(&threats, "2001:db8:70::5"), ipv6, "{version}");
        // The key went in the header, never in a URL.
        for request in scene.double.requests_to(DETAILS) {
            assert!(
                !request.target.contains("fgt-key") && !request.target.contains("access_token")
            );
            assert_eq!(request.header("authorization"), Some("Bearer fgt-key"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_service_pages_through_and_a_growing_one_is_walked_again() {
    let scene = Scene::at("v7.4.8").await;
    // 40,000 ranges, 3 rows each: 120,000 rows.
    scene.double.generate_isdb_service(TOR_EXIT, 40_000, 3);
    let threats = ThreatMatcher::default();
    let board = StatusBoard::default();
    let mut feed = scene.runner("service: '2818243', family: ipv4", &threats, &board);
    assert_eq!(feed.sync().await, Ok("unchanged"), "{:?}", status(&board));
    let (first, last) = fgt::generated_isdb_range(39_999);
    assert!(listed(&threats, &first.to_string()) && listed(&threats, &last.to_string()));
    assert_eq!(
        scene.double.isdb_page_reads(TOR_EXIT),
        120,
        "1000 rows a page"
    );
    assert!(
        scene
            .double
            .requests_to("/api/v2/cmdb/firewall/internet-service-name")
            .is_empty(),
        "an ID needs no lookup"
    );

    // The ISDB is updated during the walk: the total moves, the walk is made again.
    const BOTNET: u64 = 3080383;
    let board = StatusBoard::default();
    let mut feed = scene.runner(
        "service: Botnet-C&C.Server, page_size: 20",
        &threats,
        &board,
    );
    let ranges: Vec<(String, String)> = (0..30)
        .map(|i| (format!("203.0.113.{i}"), format!("203.0.113.{i}")))
        .collect();
    scene.double.set_isdb_service(
        BOTNET,
        ranges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect(),
        1,
    );
    scene
        .double
        .grow_isdb_after(BOTNET, 1, vec![("203.0.113.200", "203.0.113.200")]);
    assert_eq!(
        feed.sync().await.map(|_| ()),
        Ok(()),
        "{:?}",
        status(&board)
    );
    assert!(listed(&threats, "203.0.113.200"));
    assert_eq!(
        scene.double.isdb_page_reads(BOTNET),
        4,
        "two pages, and both again once the total moved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_unknown_refused_and_throttled_services_are_reported() {
    let scene = Scene::at("v7.2.11").await;
    scene
        .double
        .set_isdb_service(TOR_EXIT, vec![("192.0.2.8", "192.0.2.15")], 1);
    let threats = ThreatMatcher::default();
    let board = StatusBoard::default();
    let mut feed = scene.runner("service: Tor-Exit.Node", &threats, &board);
    // Throttled once: Retry-After is honoured and the pull goes through.
    scene.double.inject([Fault::Throttle {
        retry_after_secs: 1,
    }]);
    assert_eq!(feed.sync().await, Ok("unchanged"), "{:?}", status(&board));

    // A mini ISDB: nothing is published, and the status says why.
    scene.double.use_mini_isdb();
    assert!(feed.sync().await.is_err());
    let empty = status(&board);
    assert_eq!(empty.last_outcome, "empty");
    assert!(empty.last_error.unwrap().contains("reduced ISDB"));
    assert!(listed(&threats, "192.0.2.9"), "the last good set stays");

    let mut unknown = scene.runner("service: No-Such.Service", &threats, &board);
    assert!(unknown.sync().await.is_err());
    assert_eq!(status(&board).last_outcome, "unknown_service");

    // IPv6 only on a FortiOS that has none: said so, not guessed.
    let mut ipv6 = scene.runner("service: Tor-Exit.Node, family: ipv6", &threats, &board);
    assert!(ipv6.sync().await.is_err());
    assert!(status(&board).last_error.unwrap().contains("7.4"));

    // A key without firewall read: refused, with the status code.
    scene.double.deny_firewall_read("fgt-key");
    assert!(feed.sync().await.is_err());
    assert!(
        status(&board).last_error.unwrap().contains("403"),
        "{:?}",
        status(&board)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_fortimanager_the_same_walk_is_relayed_to_the_device() {
    let scene = Scene::at("v7.4.8").await;
    scene.double.set_isdb_service(
        TOR_EXIT,
        vec![
            ("192.0.2.8", "192.0.2.15"),
            ("2001:db8:70::", "2001:db8:70::ff"),
        ],
        2,
    );
    let manager = fmg::FortiManager::start(scene.dir.path(), fmg::Knobs::default()).await;
    manager.manage("fgt-edge", scene.double.clone(), "fgt-key");
    let key = scene.dir.path().join("fmg-key");
    std::fs::write(&key, "fmg-key\n").unwrap();
    let runner = |device: &str, threats: &ThreatMatcher, board: &StatusBoard| {
        let yaml = format!(
            "feeds:\n  - name: tor\n    type: fortigate-isdb\n    url: {}\n    mode: monitor\n    isdb: {{service: Tor-Exit.Node, via: fortimanager, device: {device}, vdom: root, api_key: {{value_from_file: {}}}, requests_per_second: 100}}\nfeed_settings: {{ca_file: {}}}\n",
            manager.url(),
            key.display(),
            scene.dir.path().join("ca.pem").display(),
        );
        common::feed_runner(&yaml, threats, board)
    };
    let threats = ThreatMatcher::default();
    let board = StatusBoard::default();
    let mut feed = runner("fgt-edge", &threats, &board);
    assert_eq!(feed.sync().await, Ok("unchanged"), "{:?}", status(&board));
    assert_eq!(status(&board).entries, 2);
    assert!(listed(&threats, "192.0.2.9") && listed(&threats, "2001:db8:70::5"));
    // Every call went through the manager's relay, none to the FortiGate directly.
    assert!(scene.double.requests_to(DETAILS).is_empty());
    let relayed = manager.relayed();
    assert!(relayed
        .iter()
        .all(|(device, action, _)| device == "fgt-edge" && action == "GET"));
    let resources: Vec<&str> = relayed.iter().map(|(_, _, r)| r.as_str()).collect();
    assert!(resources[0].starts_with("/api/v2/cmdb/firewall/internet-service-name?"));
    assert!(resources.contains(
        &"/api/v2/monitor/firewall/internet-service-details?id=2818243&summary_only=true&vdom=root"
    ));
    assert!(resources.contains(&"/api/v2/monitor/firewall/internet-service-details?id=2818243&ipv6_only=true&start=0&count=1000&vdom=root"));
    // The manager's key went in its header, never in the body or a URL.
    for call in manager.server.requests() {
        assert_eq!(call.header("authorization"), Some("Bearer fmg-key"));
        assert!(!call.target.contains("fmg-key"));
        assert!(!String::from_utf8_lossy(&call.body).contains("fmg-key"));
    }

    // The device throttles a relayed call: it is tried again after a pause.
    scene.double.inject([Fault::Throttle {
        retry_after_secs: 1,
    }]);
    assert_eq!(feed.sync().await, Ok("unchanged"), "{:?}", status(&board));

    // The manager cannot reach the device: reported as such, the set stays.
    scene.double.inject([Fault::Reset]);
    assert!(feed.sync().await.is_err());
    let unreachable = status(&board);
    assert_eq!(unreachable.last_outcome, "unavailable");
    assert!(
        unreachable
            .last_error
            .as_deref()
            .unwrap()
            .contains("could not reach device fgt-edge"),
        "{unreachable:?}"
    );
    assert!(listed(&threats, "192.0.2.9"));

    // The device refuses the relay's admin: the device's status, not the manager's.
    scene.double.deny_firewall_read("fgt-key");
    assert!(feed.sync().await.is_err());
    let refused = status(&board);
    assert_eq!(refused.last_outcome, "forbidden", "{refused:?}");
    assert!(refused
        .last_error
        .unwrap()
        .contains("device fgt-edge answered HTTP 403"));

    // A device the ADOM does not manage.
    let board = StatusBoard::default();
    let mut missing = runner("fgt-other", &threats, &board);
    assert!(missing.sync().await.is_err());
    let missing = status(&board);
    assert_eq!(missing.last_outcome, "protocol");
    assert!(missing
        .last_error
        .unwrap()
        .contains("relaying to device fgt-other"),);
}
