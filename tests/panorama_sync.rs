//! The firewall address sync to PAN-OS through the daemon: pods in the Kubernetes API double,
//! the Panorama double as the manager (static objects committed and pushed) and as the relay
//! to its firewalls' User-ID tables (dynamic address groups).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::daemon::InProcess;
use common::kube_api::KubeApi;
use common::panorama::{device_group, JobKind, Knobs, Panorama};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const SERIAL: &str = "007051000050926";

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    common::eventually(what, WAIT, &mut condition).await;
}

fn pod(namespace: &str, name: &str, ips: &[&str], labels: Value) -> Value {
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"), "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "web:1"}]},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": pod_ips}})
}

async fn cluster() -> KubeApi {
    let api = KubeApi::start().await;
    api.seed(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    );
    api.seed(
        "pods",
        pod(
            "shop",
            "web-1",
            &["10.244.1.5", "fd00:10:244:1::5"],
            json!({"app": "web"}),
        ),
    );
    api.seed(
        "pods",
        pod("shop", "api-1", &["10.244.1.7"], json!({"app": "api"})),
    );
    api
}

fn secret(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

fn knobs() -> Knobs {
    Knobs {
        device_groups: BTreeMap::from([("k8s".to_owned(), vec![SERIAL.to_owned()])]),
        ..Knobs::default()
    }
}

fn target_status(port: u16, name: &str) -> Value {
    let (_, body) = common::http_get(port, "/status");
    let status: Value = serde_json::from_str(&body).unwrap();
    status["firewall"]
        .as_array()
        .and_then(|targets| targets.iter().find(|target| target["name"] == name))
        .cloned()
        .unwrap_or_default()
}

fn members(xml: &str) -> BTreeSet<String> {
    let document = roxmltree::Document::parse(xml).unwrap();
    document
        .descendants()
        .filter(|node| node.has_tag_name("member"))
        .filter_map(|node| node.text().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_objects_are_committed_and_pushed_and_follow_the_pods() {
    let dir = tempfile::tempdir().unwrap();
    let api = cluster().await;
    let knobs = knobs();
    let panorama = Panorama::start(dir.path(), knobs.clone()).await;
    // A hand-made address with a name threatflow will want, committed by an admin.
    let dg = device_group("k8s");
    panorama.admin_edit(
        &format!("{dg}/address/entry[@name='prod.shop.web-2']"),
        "<entry name=\"prod.shop.web-2\"><ip-netmask>192.0.2.2/32</ip-netmask><description>made by hand</description></entry>",
    );
    panorama.admin_commit();
    let config = format!(
        "cluster_name: prod\nfirewall:\n  debounce_ms: 200\n  groups:\n    - {{name: web, selector: \"app == 'web'\", families: [ipv4, ipv6]}}\n  panorama:\n    - name: pan\n      mode: static\n      device_group: k8s\n      url: {}\n      username: {}\n      password: {{value_from_file: {}}}\n      tls: {{ca_file: {}}}\n      requests_per_second: 1000\n      job_poll_ms: 20\n",
        panorama.url(),
        knobs.user,
        secret(dir.path(), "pan-password", &knobs.password),
        dir.path().join("ca.pem").display()
    );
    let daemon = InProcess::start(&config, Some(api.client())).await;
    let group =
        |name: &str| panorama.running_xml(&format!("{dg}/address-group/entry[@name='{name}']"));
    until("the groups in the running config", || {
        group("web").is_some_and(|xml| members(&xml).contains("prod.shop.web-1"))
            && group("web.v6").is_some_and(|xml| members(&xml).contains("prod.shop.web-1.v6"))
    })
    .await;
    until("pushed", || {
        panorama.jobs().iter().any(|job| {
            job.kind == JobKind::CommitAll && job.finished && job.device_groups == ["k8s"]
        })
    })
    .await;
    let address = panorama
        .running_xml(&format!("{dg}/address/entry[@name='prod.shop.web-1']"))
        .unwrap();
    assert!(
        address.contains("10.244.1.5/32")
            && address.contains("managed by threatflow for cluster prod"),
        "{address}"
    );
    assert!(panorama
        .jobs()
        .iter()
        .any(|job| job.kind == JobKind::Commit && job.user == knobs.user && job.finished));

    // A pod starts whose address name someone else holds: left out, reported, untouched.
    api.seed(
        "pods",
        pod("shop", "web-2", &["10.244.1.6"], json!({"app": "web"})),
    );
    api.seed(
        "pods",
        pod("shop", "web-3", &["10.244.1.8"], json!({"app": "web"})),
    );
    until("web-3 in the group", || {
        group("web").is_some_and(|xml| members(&xml).contains("prod.shop.web-3"))
    })
    .await;
    assert!(!members(&group("web").unwrap()).contains("prod.shop.web-2"));
    let foreign = panorama
        .running_xml(&format!("{dg}/address/entry[@name='prod.shop.web-2']"))
        .unwrap();
    assert!(foreign.contains("192.0.2.2/32") && foreign.contains("made by hand"));
    until("the conflict in the status", || {
        target_status(daemon.port, "pan")["refused"]["prod.shop.web-2"]
            .as_str()
            .is_some_and(|reason| reason.contains("made by hand"))
    })
    .await;

    // An admin's commit is running: threatflow's waits, and goes through afterwards.
    panorama.refuse_next_commit(common::panorama::COMMIT_IN_PROGRESS);
    api.seed(
        "pods",
        pod("shop", "web-4", &["10.244.1.9"], json!({"app": "web"})),
    );
    until("web-4 committed after the wait", || {
        group("web").is_some_and(|xml| members(&xml).contains("prod.shop.web-4"))
            && target_status(daemon.port, "pan")["state"] == "synced"
    })
    .await;
    assert_eq!(
        common::metric(
            daemon.port,
            "threatflow_firewall_syncs_total{target=\"pan\",outcome=\"locked\"}"
        ),
        Some(1.0),
        "the refused commit was a wait, not a failure"
    );

    // A push that fails on the device: reported with the device, and tried again.
    panorama.fail_next_job("device 007051000050926: commit failed (validation error)");
    api.remove("pods", "shop/web-3");
    until("the failed push in the status", || {
        target_status(daemon.port, "pan")["last_error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("commit failed"))
    })
    .await;
    until("web-3 gone after a retry", || {
        group("web").is_some_and(|xml| !members(&xml).contains("prod.shop.web-3"))
            && target_status(daemon.port, "pan")["state"] == "synced"
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_tags_fill_dynamic_groups_follow_the_pods_and_lapse_when_threatflow_stops() {
    let dir = tempfile::tempdir().unwrap();
    let api = cluster().await;
    let panorama = Panorama::start(dir.path(), knobs()).await;
    panorama.preset_key("pan-key-from-a-secret");
    // The firewall team's dynamic group, pushed long ago.
    let dg = device_group("k8s");
    panorama.admin_edit(
        &format!("{dg}/address-group/entry[@name='k8s-web']"),
        "<entry name=\"k8s-web\"><dynamic><filter>'threatflow.prod.web'</filter></dynamic></entry>",
    );
    panorama.admin_commit();
    // Another writer's tag, and another cluster's, on an address threatflow will tag too.
    panorama.register_as_other(
        SERIAL,
        "10.244.1.5",
        &["corp.scanner", "threatflow.staging.web"],
    );
    let config = format!(
        "cluster_name: prod\nfirewall:\n  debounce_ms: 200\n  reconcile_interval_secs: 5\n  groups:\n    - {{name: web, selector: \"app == 'web'\", families: [ipv4, ipv6]}}\n    - {{name: api, selector: \"app == 'api'\"}}\n  panorama:\n    - name: pan\n      url: {}\n      api_key: {{value_from_file: {}}}\n      tls: {{ca_file: {}}}\n      targets: [\"{SERIAL}\"]\n      tag_timeout_secs: 12\n      requests_per_second: 1000\n",
        panorama.url(),
        secret(dir.path(), "pan-key", "pan-key-from-a-secret"),
        dir.path().join("ca.pem").display()
    );
    let daemon = InProcess::start(&config, Some(api.client())).await;
    let dag = || {
        panorama
            .dag_members(SERIAL, "k8s-web")
            .into_iter()
            .collect::<BTreeSet<_>>()
    };
    let set = |items: &[&str]| {
        items
            .iter()
            .map(|item| item.to_string())
            .collect::<BTreeSet<_>>()
    };
    until("the dynamic group filled, both families", || {
        dag() == set(&["10.244.1.5", "fd00:10:244:1::5"])
    })
    .await;
    let registered = panorama.registered(SERIAL);
    assert_eq!(registered["10.244.1.7"], set(&["threatflow.prod.api"]));
    assert_eq!(
        registered["10.244.1.5"],
        set(&[
            "corp.scanner",
            "threatflow.prod.web",
            "threatflow.staging.web"
        ])
    );
    let left = panorama
        .tag_expiry(SERIAL, "10.244.1.7", "threatflow.prod.api")
        .unwrap();
    assert!(left <= Duration::from_secs(12), "{left:?}");
    assert!(panorama.requests().iter().all(|call| call.auth == "header"));

    // Pods join, change labels and leave; the tags follow, others' stay.
    api.seed(
        "pods",
        pod("shop", "web-2", &["10.244.1.6"], json!({"app": "web"})),
    );
    api.seed(
        "pods",
        pod("shop", "api-1", &["10.244.1.7"], json!({"app": "web"})),
    );
    until("web-2 and the relabelled api-1 in the group", || {
        dag() == set(&["10.244.1.5", "10.244.1.6", "10.244.1.7", "fd00:10:244:1::5"])
    })
    .await;
    assert_eq!(
        panorama.registered(SERIAL)["10.244.1.7"],
        set(&["threatflow.prod.web"])
    );
    api.remove("pods", "shop/web-1");
    until("web-1 out of the group", || {
        dag() == set(&["10.244.1.6", "10.244.1.7"])
    })
    .await;
    assert_eq!(
        panorama.registered(SERIAL)["10.244.1.5"],
        set(&["corp.scanner", "threatflow.staging.web"]),
        "another writer's and another cluster's tags are never unregistered"
    );

    // Nothing changes: nothing is sent but the refresh that restarts the timers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = panorama.uid_messages();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        panorama.uid_messages() - before <= 1,
        "only a refresh may go out"
    );
    let stale = panorama
        .tag_expiry(SERIAL, "10.244.1.6", "threatflow.prod.web")
        .unwrap();
    until("a refresh before expiry", || {
        panorama
            .tag_expiry(SERIAL, "10.244.1.6", "threatflow.prod.web")
            .is_some_and(|left| left > stale + Duration::from_secs(1))
    })
    .await;
    let (_, body) = common::http_get(daemon.port, "/status");
    let status: Value = serde_json::from_str(&body).unwrap();
    let pan = status["firewall"]
        .as_array()
        .unwrap()
        .iter()
        .find(|target| target["name"] == format!("pan.{SERIAL}"))
        .unwrap()
        .clone();
    assert_eq!(
        (pan["kind"].as_str(), pan["state"].as_str()),
        (Some("panorama"), Some("synced"))
    );
    assert_eq!(pan["owned_objects"], 2);

    // threatflow goes away: its registrations lapse on their own, others' stay.
    daemon.stop().await;
    panorama.advance(Duration::from_secs(13));
    let registered = panorama.registered(SERIAL);
    assert_eq!(
        registered.keys().collect::<Vec<_>>(),
        ["10.244.1.5"],
        "{registered:?}"
    );
    assert!(dag().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_mode_creates_its_dynamic_groups_in_the_device_group_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let api = cluster().await;
    let panorama = Panorama::start(dir.path(), knobs()).await;
    panorama.preset_key("pan-key-from-a-secret");
    // An admin's group already holds one of the names threatflow would use.
    let dg = device_group("k8s");
    panorama.admin_edit(
        &format!("{dg}/address-group/entry[@name='api']"),
        "<entry name=\"api\"><static><member>jump-host</member></static></entry>",
    );
    panorama.admin_commit();
    let config = format!(
        "cluster_name: prod\nfirewall:\n  debounce_ms: 200\n  reconcile_interval_secs: 3600\n  groups:\n    - {{name: web, selector: \"app == 'web'\", families: [ipv4, ipv6]}}\n    - {{name: api, selector: \"app == 'api'\"}}\n  panorama:\n    - name: pan\n      url: {}\n      api_key: {{value_from_file: {}}}\n      admin: svc-threatflow\n      tls: {{ca_file: {}}}\n      targets: [\"{SERIAL}\"]\n      device_group: k8s\n      job_poll_ms: 20\n      requests_per_second: 1000\n",
        panorama.url(),
        secret(dir.path(), "pan-key", "pan-key-from-a-secret"),
        dir.path().join("ca.pem").display()
    );
    let daemon = InProcess::start(&config, Some(api.client())).await;
    let set = |items: &[&str]| {
        items
            .iter()
            .map(|item| item.to_string())
            .collect::<BTreeSet<_>>()
    };
    until("the created dynamic group, pushed and filled", || {
        panorama
            .dag_members(SERIAL, "web")
            .into_iter()
            .collect::<BTreeSet<_>>()
            == set(&["10.244.1.5", "fd00:10:244:1::5"])
    })
    .await;
    let web = panorama
        .running_xml(&format!("{dg}/address-group/entry[@name='web']"))
        .unwrap();
    assert!(
        web.contains("<filter>'threatflow.prod.web'</filter>"),
        "{web}"
    );
    // The admin's group is left as it was, and the name is reported.
    let api_group = panorama
        .running_xml(&format!("{dg}/address-group/entry[@name='api']"))
        .unwrap();
    assert!(
        api_group.contains("jump-host") && !api_group.contains("filter"),
        "{api_group}"
    );
    let mut refused = Value::Null;
    for _ in 0..100 {
        refused = target_status(daemon.port, &format!("pan.{SERIAL}"))["refused"].clone();
        if refused["api"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused["api"].as_str().unwrap().contains("taken"),
        "{refused}"
    );
    let jobs = panorama.jobs();
    assert!(
        jobs.iter().any(|job| job.user == "svc-threatflow"
            && job.description == "threatflow"
            && job.device_groups.is_empty())
            && jobs.iter().any(|job| job.device_groups == ["k8s"]),
        "a commit of threatflow's admin and a push to the device group: {jobs:?}"
    );

    // Pods come and go: tags follow, and the groups (unchanged) are not committed again.
    let before = panorama.jobs().len();
    api.seed(
        "pods",
        pod("shop", "web-2", &["10.244.1.6"], json!({"app": "web"})),
    );
    until("web-2 in the group", || {
        panorama
            .dag_members(SERIAL, "web")
            .contains(&"10.244.1.6".to_owned())
    })
    .await;
    assert_eq!(
        panorama.jobs().len(),
        before,
        "no commit without a change of groups"
    );
    daemon.stop().await;
}
