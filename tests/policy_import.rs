//! Zone-based policy from firewall managers through the daemon: a FortiManager policy package
//! (the FortiManager double) and a Panorama device group (the Panorama double) become a
//! Calico tier in the Kubernetes API double, follow the managers' edits within a poll, and
//! keep the last good policy when a read fails, shrinks or would drop a deny.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::daemon::InProcess;
use common::fortimanager as fmg;
use common::kube_api::KubeApi;
use serde_json::{json, Value};
use threatflow::policy_import::translate::{translate, Settings};

const WAIT: Duration = Duration::from_secs(30);
const POLICIES: &str = "globalnetworkpolicies";

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    common::eventually(what, WAIT, &mut condition).await;
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(common::root().join("tests/fixtures/firewall").join(name)).unwrap()
}

fn secret(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

async fn status(port: u16) -> Value {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let text = reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn source<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["policy_import"]
        .as_array()
        .and_then(|sources| sources.iter().find(|source| source["name"] == name))
        .unwrap_or_else(|| panic!("no source {name} in {status}"))
}

/// The reference settings the daemon is configured with below.
fn settings() -> Settings {
    let mut settings = Settings::new("zones");
    settings.domain_rules = true;
    settings.external_zones = [
        (
            "wan".to_owned(),
            vec![
                "198.51.100.0/24".parse().unwrap(),
                "203.0.113.0/24".parse().unwrap(),
            ],
        ),
        ("corp".to_owned(), vec!["192.0.2.0/24".parse().unwrap()]),
    ]
    .into();
    settings
}

const EXTERNAL_ZONES: &str =
    "      external_zones: {wan: [198.51.100.0/24, 203.0.113.0/24], corp: [192.0.2.0/24]}\n      domain_rules: true\n";

/// The policy names a rulebase export translates into.
fn expected_policies(export: &str, device_group: Option<&str>) -> BTreeSet<String> {
    let rulebase =
        threatflow::policy_import::rulebase_of_export(export, device_group, "test").unwrap();
    translate(&rulebase, &settings())
        .objects
        .iter()
        .filter(|object| object.kind().name() == "GlobalNetworkPolicy")
        .map(|object| object.name().to_owned())
        .collect()
}

fn policies(api: &KubeApi) -> BTreeSet<String> {
    api.names(POLICIES).into_iter().collect()
}

struct Scene {
    dir: tempfile::TempDir,
    api: KubeApi,
    fortimanager: fmg::FortiManager,
}

impl Scene {
    async fn start() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let api = KubeApi::start().await;
        let fortimanager = fmg::FortiManager::start(dir.path(), fmg::Knobs::default()).await;
        let export: Value = serde_json::from_str(&fixture("reference-fortimanager.json")).unwrap();
        fortimanager.load_export(&export);
        Scene {
            dir,
            api,
            fortimanager,
        }
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "cluster_name: prod\npolicy_import:\n  publish: {{type: kubernetes}}\n  sources:\n    - name: edge\n      tier: zones\n      fortimanager:\n        url: {}\n        package: k8s-zones\n        api_key: {{value_from_file: {}}}\n        tls: {{ca_file: {}}}\n      poll_interval_secs: 1\n{EXTERNAL_ZONES}{extra}",
            self.fortimanager.url(),
            secret(self.dir.path(), "fmg-key", "fmg-key"),
            self.dir.path().join("ca.pem").display()
        )
    }
}

/// The export with the package's rules replaced (in sequence, as FortiManager numbers them).
fn export_with(rules: &[Value]) -> String {
    let mut export: Value = serde_json::from_str(&fixture("reference-fortimanager.json")).unwrap();
    let rules = rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let mut rule = rule.clone();
            rule["obj seq"] = json!(index + 1);
            rule
        })
        .collect();
    export["result"][0]["data"] = Value::Array(rules);
    export.to_string()
}

fn reference_rules() -> Vec<Value> {
    let export: Value = serde_json::from_str(&fixture("reference-fortimanager.json")).unwrap();
    export["result"][0]["data"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fortimanager_package_becomes_the_tier_and_follows_every_edit_within_a_poll() {
    let scene = Scene::start().await;
    // Someone else's policy with a name the translation wants: refused, never overwritten.
    scene.api.seed(
        POLICIES,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "zones.r00002-web-in-in", "labels": {"team": "netops"}},
            "spec": {"tier": "zones", "order": 1, "selector": "all()"}}),
    );
    let daemon = InProcess::start(&scene.config(""), Some(scene.api.client())).await;
    let mut expected = expected_policies(&fixture("reference-fortimanager.json"), None);
    expected.remove("zones.r00002-web-in-in");
    until("the tier and its policies", || {
        scene.api.get("tiers", "zones").is_some() && expected.is_subset(&policies(&scene.api))
    })
    .await;
    let tier = scene.api.get("tiers", "zones").unwrap();
    assert_eq!(tier["spec"]["defaultAction"], "Deny");
    assert_eq!(
        tier["metadata"]["labels"]["threatflow.io/policy-source"],
        "edge"
    );
    let foreign = scene.api.get(POLICIES, "zones.r00002-web-in-in").unwrap();
    assert_eq!(
        foreign["spec"]["order"], 1,
        "someone else's policy is left alone"
    );
    let report = status(daemon.port).await;
    let edge = source(&report, "edge");
    assert_eq!(edge["state"], "failing", "{edge}");
    assert!(
        edge["message"]
            .as_str()
            .unwrap()
            .contains("not threatflow's"),
        "{edge}"
    );
    assert_eq!(edge["skipped"][0]["name"], "dba-console");
    scene.api.remove(POLICIES, "zones.r00002-web-in-in");

    // An unchanged rulebase costs one call per poll.
    until("published", || {
        expected_policies(&fixture("reference-fortimanager.json"), None)
            .is_subset(&policies(&scene.api))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = scene.fortimanager.server.requests().len();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let polls: Vec<String> = scene.fortimanager.server.requests()[before..]
        .iter()
        .map(|request| request.body_text())
        .collect();
    assert!(
        (2..=4).contains(&polls.len()),
        "one call per poll: {polls:?}"
    );
    assert!(
        polls
            .iter()
            .all(|body| body.contains("/pm/pkg/adom/root/k8s-zones")),
        "{polls:?}"
    );
    let writes = scene
        .api
        .requests()
        .iter()
        .filter(|(method, _)| method != "GET")
        .count();

    // A deny is added on top: it follows.
    let mut rules = reference_rules();
    let mut deny = rules[0].clone();
    deny["name"] = json!("quarantine");
    deny["srcintf"] = json!(["app"]);
    deny["dstintf"] = json!(["data"]);
    deny["srcaddr"] = json!(["workers"]);
    deny["dstaddr"] = json!(["all"]);
    rules.insert(0, deny);
    scene
        .fortimanager
        .edit_package("k8s-zones", |package| *package = rules.clone());
    until("the new rule", || {
        scene
            .api
            .get(POLICIES, "zones.r00001-quarantine-out")
            .is_some()
    })
    .await;
    let after_add = expected_policies(&export_with(&rules), None);
    until("every position moved down", || {
        policies(&scene.api) == after_add
    })
    .await;
    assert!(
        scene
            .api
            .requests()
            .iter()
            .filter(|(method, _)| method != "GET")
            .count()
            > writes,
        "written"
    );

    // Moved: the deny goes to the end.
    let deny = rules.remove(0);
    rules.push(deny);
    scene
        .fortimanager
        .edit_package("k8s-zones", |package| *package = rules.clone());
    let moved = expected_policies(&export_with(&rules), None);
    until("the move", || policies(&scene.api) == moved).await;
    assert!(moved.contains("zones.r00030-quarantine-out"));

    // Disabled, then deleted.
    rules.last_mut().unwrap()["status"] = json!("disable");
    scene
        .fortimanager
        .edit_package("k8s-zones", |package| *package = rules.clone());
    until("the disabled rule's policies gone", || {
        scene
            .api
            .get(POLICIES, "zones.r00030-quarantine-out")
            .is_none()
    })
    .await;
    rules.pop();
    scene
        .fortimanager
        .edit_package("k8s-zones", |package| *package = rules.clone());
    let original = expected_policies(&fixture("reference-fortimanager.json"), None);
    until("back to the reference", || policies(&scene.api) == original).await;
    let report = status(daemon.port).await;
    assert_eq!(source(&report, "edge")["state"], "published");
    let table = std::process::Command::new(common::binary())
        .args(["status", "--addr", &format!("127.0.0.1:{}", daemon.port)])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let line = table
        .lines()
        .find(|line| line.starts_with("edge "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("zones (enforce)") && line.contains("published"),
        "{line}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_someone_else_made_is_never_taken_over() {
    let scene = Scene::start().await;
    scene.api.seed(
        "tiers",
        json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
            "metadata": {"name": "zones", "labels": {"team": "platform"}},
            "spec": {"order": 10, "defaultAction": "Pass"}}),
    );
    let daemon = InProcess::start(&scene.config(""), Some(scene.api.client())).await;
    until("the conflict reported", || {
        futures_free_status(daemon.port)["message"]
            .as_str()
            .is_some_and(|message| message.contains("Tier zones exists and is not threatflow's"))
    })
    .await;
    let tier = scene.api.get("tiers", "zones").unwrap();
    assert_eq!(tier["spec"]["defaultAction"], "Pass");
    assert!(
        policies(&scene.api).is_empty(),
        "nothing goes into someone else's tier"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_good_policy_stays_when_the_manager_fails_or_the_rulebase_is_truncated() {
    let scene = Scene::start().await;
    let daemon = InProcess::start(&scene.config(""), Some(scene.api.client())).await;
    let expected = expected_policies(&fixture("reference-fortimanager.json"), None);
    until("published", || policies(&scene.api) == expected).await;

    // The manager answers errors: failing, backing off, nothing removed.
    scene
        .fortimanager
        .inject((0..4).map(|_| fmg::Fault::Html(503)));
    until("failing", || {
        futures_free_status(daemon.port)["state"] == "failing"
    })
    .await;
    assert_eq!(policies(&scene.api), expected);

    // A truncated package: refused, the policy in force stays.
    let rules = reference_rules()[..5].to_vec();
    scene
        .fortimanager
        .edit_package("k8s-zones", |package| *package = rules);
    until("refused", || {
        futures_free_status(daemon.port)["state"] == "refused"
    })
    .await;
    let message = futures_free_status(daemon.port)["message"].to_string();
    assert!(message.contains("down from"), "{message}");
    assert_eq!(policies(&scene.api), expected);

    // An empty one likewise.
    scene.fortimanager.edit_package("k8s-zones", Vec::clear);
    until("refused as empty", || {
        futures_free_status(daemon.port)["message"]
            .as_str()
            .is_some_and(|message| message.contains("no enabled rule"))
    })
    .await;
    assert_eq!(policies(&scene.api), expected);
    daemon.stop().await;

    // A new leader (or a restart) reading a truncated package: the tier records what the
    // policy in force came from, so the guard holds across the restart.
    let tier = scene.api.get("tiers", "zones").unwrap();
    assert_eq!(
        tier["metadata"]["annotations"]["firewall.threatflow.io/enabled-rules"],
        "27"
    );
    let rules = reference_rules()[..5].to_vec();
    scene
        .fortimanager
        .edit_package("k8s-zones", |package| *package = rules);
    let daemon = InProcess::start(&scene.config(""), Some(scene.api.client())).await;
    until("refused after the restart", || {
        futures_free_status(daemon.port)["message"]
            .as_str()
            .is_some_and(|message| message.contains("down from 27"))
    })
    .await;
    assert_eq!(policies(&scene.api), expected);
    daemon.stop().await;
}

/// `/status` of the daemon's source `edge` (null before it starts), read without the async
/// runtime (for conditions).
fn futures_free_status(port: u16) -> Value {
    let (_, body) = common::http_get(port, "/status");
    let status: Value = serde_json::from_str(&body).unwrap();
    status["policy_import"]
        .as_array()
        .and_then(|sources| sources.iter().find(|source| source["name"] == "edge"))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_deny_blocks_publication_unless_allowed() {
    let scene = Scene::start().await;
    let mut rules = reference_rules();
    // The first rule (a deny) now names users: Calico cannot say that.
    rules[0]["groups"] = json!(["contractors"]);
    scene
        .fortimanager
        .edit_package("k8s-zones", |package| *package = rules.clone());
    let daemon = InProcess::start(&scene.config(""), Some(scene.api.client())).await;
    until("refused", || {
        futures_free_status(daemon.port)["state"] == "refused"
    })
    .await;
    let edge = futures_free_status(daemon.port);
    assert!(
        edge["message"]
            .as_str()
            .unwrap()
            .contains("block-bad-sources"),
        "{edge}"
    );
    assert!(policies(&scene.api).is_empty() && scene.api.get("tiers", "zones").is_none());
    daemon.stop().await;

    let daemon = InProcess::start(
        &scene.config("      allow_skipped_denies: true\n"),
        Some(scene.api.client()),
    )
    .await;
    until("published anyway", || {
        futures_free_status(daemon.port)["state"] == "published"
    })
    .await;
    assert!(!policies(&scene.api).is_empty());
    assert!(scene
        .api
        .get(POLICIES, "zones.r00001-block-bad-sources-out")
        .is_none());
    daemon.stop().await;
}

/// The reference device group and the shared scope, loaded into the Panorama double and
/// committed by an admin.
fn panorama_with_reference(double: &common::panorama::Panorama) {
    let xml = fixture("reference-panorama.xml");
    let document = roxmltree::Document::parse(&xml).unwrap();
    let text = |node: roxmltree::Node| xml[node.range()].to_owned();
    let group = document
        .descendants()
        .find(|node| node.attribute("name") == Some("k8s-zones"))
        .unwrap();
    let shared = document
        .descendants()
        .find(|node| node.has_tag_name("shared"))
        .unwrap();
    double.admin_edit(&common::panorama::device_group("k8s-zones"), &text(group));
    double.admin_edit("/config/shared", &text(shared));
    double.admin_commit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panorama_device_group_becomes_a_staged_tier_and_follows_commits() {
    use common::panorama::{Knobs, Panorama};
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    let knobs = Knobs {
        device_groups: [("k8s-zones".to_owned(), vec!["007051000050926".to_owned()])].into(),
        ..Knobs::default()
    };
    let panorama = Panorama::start(dir.path(), knobs.clone()).await;
    panorama_with_reference(&panorama);
    let config = format!(
        "policy_import:\n  publish: {{type: kubernetes}}\n  sources:\n    - name: dc\n      tier: zones\n      mode: staged\n      panorama:\n        url: {}\n        device_group: k8s-zones\n        username: {}\n        password: {{value_from_file: {}}}\n        tls: {{ca_file: {}}}\n      poll_interval_secs: 1\n{EXTERNAL_ZONES}",
        panorama.url(),
        knobs.user,
        secret(dir.path(), "pan-password", &knobs.password),
        dir.path().join("ca.pem").display()
    );
    let daemon = InProcess::start(&config, Some(api.client())).await;
    let staged = |export: &str| {
        let rulebase =
            threatflow::policy_import::rulebase_of_export(export, Some("k8s-zones"), "test")
                .unwrap();
        let mut settings = settings();
        settings.staged = true;
        translate(&rulebase, &settings)
            .objects
            .iter()
            .filter(|object| object.kind().name() == "StagedGlobalNetworkPolicy")
            .map(|object| object.name().to_owned())
            .collect::<BTreeSet<_>>()
    };
    let expected = staged(&fixture("reference-panorama.xml"));
    assert!(expected.len() > 30, "{}", expected.len());
    let staged_names = || -> BTreeSet<String> {
        api.names("stagedglobalnetworkpolicies")
            .into_iter()
            .collect()
    };
    until("the staged tier", || staged_names() == expected).await;
    assert!(policies(&api).is_empty(), "staged mode enforces nothing");
    assert_eq!(panorama.keygens(), 1);
    assert!(panorama
        .requests()
        .iter()
        .filter(|call| call.kind != "keygen")
        .all(|call| call.auth == "header"));

    // Unchanged: one call per poll, the audit entry.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = panorama.calls();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let polls = &panorama.requests()[before..];
    assert!((2..=4).contains(&polls.len()), "{polls:?}");
    assert!(
        polls.iter().all(|call| call
            .cmd
            .as_deref()
            .is_some_and(|cmd| cmd.contains("<audit>"))),
        "{polls:?}"
    );

    // An edit in the candidate does nothing until it is committed.
    let rule = format!(
        "{}/pre-rulebase/security/rules/entry[@name='dmz-to-api']",
        common::panorama::device_group("k8s-zones")
    );
    panorama.admin_set(&rule, "<disabled>yes</disabled>");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        staged_names(),
        expected,
        "candidate changes are not in force"
    );
    panorama.admin_commit();
    until("the disabled rule gone", || {
        !staged_names().contains("zones.r00007-dmz-to-api-out")
    })
    .await;
    let (_, body) = common::http_get(daemon.port, "/status");
    let status: Value = serde_json::from_str(&body).unwrap();
    let dc = source(&status, "dc");
    assert_eq!(
        (dc["state"].as_str(), dc["mode"].as_str()),
        (Some("published"), Some("staged"))
    );
    assert_eq!(dc["disabled"], 3);
    daemon.stop().await;
}

/// The Panorama client: a key invalidated by another keygen is generated again once; a
/// changed password is an authorization error, not a retry loop; the key never travels in a
/// URL or a form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panorama_client_renews_its_key_once_and_reports_bad_credentials() {
    use common::panorama::{Knobs, Panorama};
    use threatflow::firewall::panorama::{Panorama as Client, PanoramaSettings};
    use threatflow::firewall::Credentials;
    let dir = tempfile::tempdir().unwrap();
    let knobs = Knobs {
        device_groups: [("k8s-zones".to_owned(), vec![])].into(),
        ..Knobs::default()
    };
    let double = Panorama::start(dir.path(), knobs.clone()).await;
    panorama_with_reference(&double);
    threatflow::net::tls::install_provider();
    let mut client = Client::new(PanoramaSettings {
        url: double.url(),
        device_group: "k8s-zones".into(),
        credentials: Credentials::Login {
            user: knobs.user.clone(),
            password: knobs.password.clone(),
        },
        http: threatflow::net::http::HttpSettings {
            tls: threatflow::net::tls::TlsSettings {
                ca_file: Some(dir.path().join("ca.pem")),
                ..Default::default()
            },
            ..threatflow::net::http::HttpSettings::default()
        },
        target: None,
        vsys: None,
        requests_per_second: 1000.0,
    })
    .unwrap();
    let first = client.revision().await.unwrap();
    let rulebase = client.read_rulebase().await.unwrap();
    assert_eq!(rulebase.rules.len(), 29);
    assert_eq!(double.keygens(), 1);
    double.expire_keys();
    assert_eq!(
        client.revision().await.unwrap(),
        first,
        "renewed and asked again"
    );
    assert_eq!(double.keygens(), 2);
    double.admin_set(
        &format!(
            "{}/pre-rulebase/security/rules/entry[@name='web-in']",
            common::panorama::device_group("k8s-zones")
        ),
        "<description>edited</description>",
    );
    double.admin_commit();
    assert_ne!(
        client.revision().await.unwrap(),
        first,
        "a commit moves the revision"
    );
    double.set_password("rotated");
    let error = client.revision().await.unwrap_err();
    assert_eq!(error.kind(), "unauthorized", "{error}");
    assert!(double
        .requests()
        .iter()
        .all(|call| call.auth != "param" && call.auth != "basic"));
}
