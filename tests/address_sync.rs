//! The firewall address sync through the daemon: pods in the Kubernetes API double, address
//! groups on the FortiGate and FortiManager doubles.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fortigate::{self as fgt, Fault};
use common::fortimanager as fmg;
use common::kube_api::KubeApi;
use serde_json::{json, Value};
use threatflow::firewall::Marker;

const WAIT: Duration = Duration::from_secs(30);

fn pod(namespace: &str, name: &str, ips: &[&str], labels: Value) -> Value {
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"), "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "web:1"}]},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": pod_ips}})
}

fn seed_cluster(api: &KubeApi) {
    api.seed("namespaces", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"env": "prod"}}}));
    api.seed(
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]}}),
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
}

/// The Kubernetes API double with a namespace, a node and two pods; a FortiGate double; a
/// FortiManager double in workspace mode.
struct Scene {
    dir: tempfile::TempDir,
    api: KubeApi,
    fortigate: fgt::FortiGate,
    fortimanager: fmg::FortiManager,
}

impl Scene {
    async fn start() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let api = KubeApi::start().await;
        seed_cluster(&api);
        let fortigate = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;
        let knobs = fmg::Knobs {
            workspace_mode: "normal".into(),
            ..fmg::Knobs::default()
        };
        let fortimanager = fmg::FortiManager::start(dir.path(), knobs).await;
        Scene {
            dir,
            api,
            fortigate,
            fortimanager,
        }
    }
}

fn secret(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

async fn get(port: u16, path: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn status(port: u16) -> Value {
    serde_json::from_str(&get(port, "/status").await).unwrap()
}

fn target<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["firewall"]
        .as_array()
        .and_then(|targets| targets.iter().find(|target| target["name"] == name))
        .unwrap_or_else(|| panic!("no target {name} in {status}"))
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    common::eventually(what, WAIT, &mut condition).await;
}

fn fortigate_yaml(double: &fgt::FortiGate, dir: &Path) -> String {
    format!(
        "    - name: fgt\n      url: {}\n      api_key: {{value_from_file: {}}}\n      tls: {{ca_file: {}}}\n      requests_per_second: 1000\n",
        double.url(),
        secret(dir, "fgt-key", "fgt-key"),
        dir.join("ca.pem").display()
    )
}

fn fortimanager_yaml(double: &fmg::FortiManager, dir: &Path) -> String {
    format!(
        "    - name: fmg\n      url: {}\n      username: threatflow\n      password: {{value_from_file: {}}}\n      tls: {{ca_file: {}}}\n      requests_per_second: 1000\n      groups: [web]\n      install: [{{package: edge, scope: [{{device: FGT-EDGE-1}}]}}]\n      install_poll_ms: 20\n",
        double.url(),
        secret(dir, "fmg-password", "fmg-password"),
        dir.join("ca.pem").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_start_stop_and_change_labels_follow_into_the_groups() {
    let Scene {
        dir,
        api,
        fortigate,
        fortimanager,
    } = Scene::start().await;
    // A hand-made address with a name threatflow will want, and another cluster's objects.
    fortigate.seed(
        "address",
        json!({"name": "prod.shop.web-2", "subnet": "192.0.2.2/32", "comment": "made by hand"}),
    );
    let staging = Marker::new("staging");
    fortigate.seed(
        "address",
        json!({"name": "staging.shop.web-7", "subnet": "10.9.9.7/32", "comment": staging.comment()}),
    );
    fortigate.seed("addrgrp", json!({"name": "web-staging", "member": [{"name": "staging.shop.web-7"}], "comment": staging.comment()}));
    let yaml = format!(
        "cluster_name: prod\nfirewall:\n  debounce_ms: 200\n  groups:\n    - {{name: web, selector: \"app == 'web'\", families: [ipv4, ipv6]}}\n    - {{name: shop-nodes, selector: \"projectcalico.org/namespace == 'shop'\", addresses: node}}\n  fortigate:\n{}  fortimanager:\n{}",
        fortigate_yaml(&fortigate, dir.path()),
        fortimanager_yaml(&fortimanager, dir.path()),
    );
    let daemon = common::daemon::InProcess::start(&yaml, Some(api.client())).await;
    // Every group of the first sync: the groups are written one after another.
    until("the first sync", || {
        fortigate.members("addrgrp", "web") == ["prod.shop.web-1"]
            && fortimanager.members("addrgrp", "web") == ["prod.shop.web-1"]
            && fortigate.members("addrgrp6", "web.v6") == ["prod.shop.web-1.v6"]
            && fortigate.members("addrgrp", "shop-nodes") == ["prod.node.node-a"]
    })
    .await;
    assert_eq!(
        fortigate.object("address6", "prod.shop.web-1.v6").unwrap()["ip6"],
        "fd00:10:244:1::5/128"
    );
    assert_eq!(
        fortigate.object("address", "prod.node.node-a").unwrap()["subnet"],
        "192.168.0.10 255.255.255.255"
    );
    assert!(
        fortimanager.object("addrgrp", "shop-nodes").is_none(),
        "fmg gets only web"
    );
    until("the install", || !fortimanager.tasks().is_empty()).await;

    // A pod starts: on the FortiGate its address name is someone else's, so the group leaves
    // it out and the status says why; the FortiManager takes it.
    api.seed(
        "pods",
        pod("shop", "web-2", &["10.244.1.6"], json!({"app": "web"})),
    );
    until("web-2 on the FortiManager", || {
        fortimanager.members("addrgrp", "web").len() == 2
    })
    .await;
    let port = daemon.port;
    let mut refused = Value::Null;
    for _ in 0..100 {
        refused = target(&status(port).await, "fgt")["refused"].clone();
        if refused["prod.shop.web-2"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused["prod.shop.web-2"]
            .as_str()
            .unwrap()
            .contains("made by hand"),
        "{refused}"
    );
    assert_eq!(fortigate.members("addrgrp", "web"), ["prod.shop.web-1"]);
    assert_eq!(
        fortigate.object("address", "prod.shop.web-2").unwrap()["subnet"],
        "192.0.2.2 255.255.255.255"
    );

    // Another starts, then changes labels, then one stops and a new pod reuses its IP.
    api.seed(
        "pods",
        pod("shop", "web-3", &["10.244.1.8"], json!({"app": "web"})),
    );
    until("web-3", || {
        fortigate.members("addrgrp", "web") == ["prod.shop.web-1", "prod.shop.web-3"]
    })
    .await;
    api.seed(
        "pods",
        pod("shop", "web-3", &["10.244.1.8"], json!({"app": "batch"})),
    );
    until("web-3 relabelled", || {
        fortigate.members("addrgrp", "web") == ["prod.shop.web-1"]
    })
    .await;
    until("its address deleted", || {
        fortigate.object("address", "prod.shop.web-3").is_none()
    })
    .await;
    api.remove("pods", "shop/web-1");
    api.seed(
        "pods",
        pod("shop", "web-9", &["10.244.1.5"], json!({"app": "web"})),
    );
    until("the IP under its new pod", || {
        fortigate.members("addrgrp", "web") == ["prod.shop.web-9"]
            && fortimanager.members("addrgrp", "web") == ["prod.shop.web-2", "prod.shop.web-9"]
    })
    .await;
    until("web-1's address gone", || {
        fortigate.object("address", "prod.shop.web-1").is_none()
            && fortimanager.object("address", "prod.shop.web-1").is_none()
    })
    .await;
    assert_eq!(
        fortigate.object("address", "prod.shop.web-9").unwrap()["subnet"],
        "10.244.1.5 255.255.255.255"
    );
    assert!(
        fortigate.members("addrgrp6", "web.v6").is_empty(),
        "7.4: a group may be empty"
    );

    // Nobody else's objects changed; no table was ever purged; the key never left the header.
    assert_eq!(
        fortigate.object("address", "prod.shop.web-2").unwrap()["comment"],
        "made by hand"
    );
    assert_eq!(
        fortigate.members("addrgrp", "web-staging"),
        ["staging.shop.web-7"]
    );
    assert!(fortigate.object("address", "staging.shop.web-7").is_some());
    assert!(fortigate.purges().is_empty());
    assert!(fortigate
        .server
        .requests()
        .iter()
        .all(
            |request| request.header("authorization") == Some("Bearer fgt-key")
                && !request.target.contains("access_token")
        ));

    let status = status(port).await;
    assert_eq!(target(&status, "fgt")["state"], "synced", "{status}");
    assert_eq!(target(&status, "fmg")["state"], "synced", "{status}");
    assert_eq!(target(&status, "fmg")["kind"], "fortimanager");
    let metrics = get(port, "/metrics").await;
    assert!(metrics.contains("threatflow_firewall_operations_total{target=\"fgt\",kind=\"create_address\",outcome=\"conflict\"} 1"), "{metrics}");
    assert!(
        metrics.contains("threatflow_firewall_group_members{group=\"web\",family=\"ipv4\"} 2"),
        "{metrics}"
    );
    let shown = std::process::Command::new(common::binary())
        .args(["status", "--addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("fmg") && shown.contains("fortimanager") && shown.contains("synced"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "prod.shop.web-2: held by an object this cluster does not own (made by hand)"
        ),
        "{shown}"
    );

    daemon.stop().await;
    assert_eq!(
        fortimanager.logouts(),
        1,
        "the session ends with the daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_and_a_locked_workspace_is_waited_for() {
    let Scene {
        dir,
        api,
        fortigate,
        fortimanager,
    } = Scene::start().await;
    fortimanager.lock_as("alice");
    let yaml = format!(
        "cluster_name: prod\nfirewall:\n  debounce_ms: 100\n  reconcile_interval_secs: 5\n  groups:\n    - {{name: web, selector: \"app == 'web'\"}}\n  fortigate:\n{}  fortimanager:\n{}",
        fortigate_yaml(&fortigate, dir.path()),
        fortimanager_yaml(&fortimanager, dir.path()),
    );
    let daemon = common::daemon::InProcess::start(&yaml, Some(api.client())).await;
    let port = daemon.port;
    until("the FortiGate", || {
        fortigate.members("addrgrp", "web") == ["prod.shop.web-1"]
    })
    .await;
    let mut fmg_status = Value::Null;
    for _ in 0..200 {
        fmg_status = target(&status(port).await, "fmg").clone();
        if fmg_status["state"] == "failing" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fmg_status["last_error"]["kind"], "locked", "{fmg_status}");
    assert!(
        fmg_status["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("locked by alice"),
        "{fmg_status}"
    );
    assert!(fortimanager.writes().is_empty());
    fortimanager.release_lock();
    until("the FortiManager after the lock", || {
        fortimanager.members("addrgrp", "web") == ["prod.shop.web-1"]
    })
    .await;
    // The retries were spaced out, not a tight loop.
    let locks = fortimanager
        .calls()
        .iter()
        .filter(|(_, url)| url.ends_with("workspace/lock"))
        .count();
    assert!(locks < 10, "{locks} lock attempts");

    // Someone edits an owned address and empties the group by hand; the reconcile puts them
    // back.
    fortigate.edit("address", "prod.shop.web-1", |address| {
        address["subnet"] = json!("10.1.1.1/32")
    });
    fortigate.edit("addrgrp", "web", |group| {
        group["member"] = json!([{"name": "prod.shop.web-1"}, {"name": "prod.shop.web-1"}])
    });
    fortigate.remove("addrgrp", "web");
    until("the repair", || {
        fortigate.members("addrgrp", "web") == ["prod.shop.web-1"]
            && fortigate.object("address", "prod.shop.web-1").unwrap()["subnet"]
                == "10.244.1.5 255.255.255.255"
    })
    .await;
    let metrics = get(port, "/metrics").await;
    assert!(
        metrics.contains("threatflow_firewall_drift_repaired_total{target=\"fgt\"} 2"),
        "{metrics}"
    );

    // A burst of 5xx and resets: failures are reported and retried with growing pauses.
    fortigate.inject([Fault::Html(502), Fault::Reset, Fault::Html(503)]);
    api.seed(
        "pods",
        pod("shop", "web-2", &["10.244.1.6"], json!({"app": "web"})),
    );
    until("web-2 after the faults", || {
        fortigate.members("addrgrp", "web").len() == 2
    })
    .await;
    let metrics = get(port, "/metrics").await;
    assert!(
        metrics.contains("threatflow_firewall_syncs_total{target=\"fgt\",outcome=\"unavailable\"}"),
        "{metrics}"
    );
    daemon.stop().await;
}

/// 5,000 pods in 200 groups: after the first sync one pod costs at most 3 writes, and a
/// reconcile with nothing changed costs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_change_among_5000_costs_at_most_three_writes() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    api.seed(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    );
    for i in 0..5000 {
        let ip = format!("10.{}.{}.{}", 20 + i / 65536, (i / 256) % 256, i % 256);
        api.seed(
            "pods",
            pod(
                "shop",
                &format!("p-{i}"),
                &[&ip],
                json!({"group": format!("g{}", i % 200)}),
            ),
        );
    }
    let fortigate = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;
    let groups: String = (0..200)
        .map(|g| format!("    - {{name: g{g}, selector: \"group == 'g{g}'\"}}\n"))
        .collect();
    let yaml = format!(
        "cluster_name: prod\nfirewall:\n  debounce_ms: 200\n  reconcile_interval_secs: 5\n  groups:\n{groups}  fortigate:\n{}",
        fortigate_yaml(&fortigate, dir.path()),
    );
    let daemon = common::daemon::InProcess::start(&yaml, Some(api.client())).await;
    common::eventually("the first sync", Duration::from_secs(240), || {
        fortigate.names("addrgrp").len() == 200 && fortigate.names("address").len() == 5000
    })
    .await;
    until("synced", || {
        fortigate.members("addrgrp", "g199").len() == 25
    })
    .await;
    let first = fortigate.writes().len();
    assert_eq!(first, 5200);

    fortigate.server.clear();
    api.seed(
        "pods",
        pod("shop", "new", &["10.99.0.1"], json!({"group": "g7"})),
    );
    until("the new pod", || {
        fortigate.members("addrgrp", "g7").len() == 26
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = fortigate.writes();
    assert!(
        writes.len() <= 3,
        "{:?}",
        writes
            .iter()
            .map(|w| format!("{} {}", w.method, w.path()))
            .collect::<Vec<_>>()
    );
    assert_eq!(writes.len(), 2);

    // A reconcile (every 5 s) with nothing changed reads and writes nothing.
    fortigate.server.clear();
    until("a reconcile", || {
        fortigate
            .server
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .count()
            >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        fortigate.writes().is_empty(),
        "{} writes",
        fortigate.writes().len()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_policies_and_the_pull_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    seed_cluster(&api);
    api.seed("globalnetworkpolicies", json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "default.web-ingress", "labels": {"projectcalico.org/tier": "default"}},
        "spec": {"tier": "default", "selector": "app == 'web' && projectcalico.org/namespace == 'shop'", "ingress": [{"action": "Allow"}]}}));
    api.seed(
        "globalnetworkpolicies",
        json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "security.block", "labels": {"projectcalico.org/tier": "security"}},
        "spec": {"tier": "security", "selector": "all()"}}),
    );
    let fortigate = fgt::FortiGate::start(
        dir.path(),
        fgt::Knobs {
            version: "v7.0.12".into(),
            ..fgt::Knobs::default()
        },
    )
    .await;
    let serve_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "cluster_name: prod\nfirewall:\n  debounce_ms: 100\n  mirror_policies: {{addresses: pod}}\n  fortigate:\n{}  serve:\n    listen_addr: 127.0.0.1:{serve_port}\n    tls: {{cert_file: {}, key_file: {}}}\n    basic_auth: {{username: feed, password: {{value_from_file: {}}}}}\n",
        fortigate_yaml(&fortigate, dir.path()),
        dir.path().join("server.pem").display(),
        dir.path().join("server.key").display(),
        secret(dir.path(), "feed-password", "pull-secret"),
    );
    let daemon = common::daemon::InProcess::start(&yaml, Some(api.client())).await;
    until("the mirrored group", || {
        fortigate.members("addrgrp", "default.web-ingress") == ["prod.shop.web-1"]
    })
    .await;
    assert!(
        fortigate.object("addrgrp", "security.block").is_none(),
        "another tier"
    );

    let client = common::http::client_trusting(dir.path());
    let url = format!("https://localhost:{serve_port}/v1/groups/default.web-ingress.txt");
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Basic realm=\"threatflow\""
    );
    let response = client
        .get(&url)
        .basic_auth("feed", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client
        .get(&url)
        .basic_auth("feed", Some("pull-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(response.text().await.unwrap(), "10.244.1.5\n");
    let response = client
        .get(&url)
        .basic_auth("feed", Some("pull-secret"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    let missing = client
        .get(format!("https://localhost:{serve_port}/v1/groups/nope.txt"))
        .basic_auth("feed", Some("pull-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The policy's selector now picks a second pod: the list and its ETag change.
    api.seed(
        "pods",
        pod("shop", "web-2", &["10.244.1.6"], json!({"app": "web"})),
    );
    until("the group", || {
        fortigate.members("addrgrp", "default.web-ingress").len() == 2
    })
    .await;
    let response = client
        .get(&url)
        .basic_auth("feed", Some("pull-secret"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "10.244.1.5\n10.244.1.6\n");
    // The policy goes: so does its group (FortiOS 7.0 keeps no empty groups around either).
    api.remove("globalnetworkpolicies", "default.web-ingress");
    until("the group deleted", || {
        fortigate.object("addrgrp", "default.web-ingress").is_none()
    })
    .await;
    until("its addresses deleted", || {
        fortigate.names("address").is_empty()
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_plans_but_writes_nothing_until_it_leads() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    seed_cluster(&api);
    let now = jiff::Timestamp::now().to_string();
    api.seed("leases", json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "threatflow", "namespace": "threatflow"},
        "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 4, "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}));
    let fortigate = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;
    let yaml = format!(
        "cluster_name: prod\nleader_election: {{namespace: threatflow, identity: replica-b}}\nfirewall:\n  debounce_ms: 100\n  groups:\n    - {{name: web, selector: \"app == 'web'\"}}\n  fortigate:\n{}",
        fortigate_yaml(&fortigate, dir.path()),
    );
    let daemon = common::daemon::InProcess::start(&yaml, Some(api.client())).await;
    let port = daemon.port;
    let mut state = Value::Null;
    for _ in 0..200 {
        state = target(&status(port).await, "fgt").clone();
        if state["state"] == "standby" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["state"], "standby", "{state}");
    assert_eq!(state["pending_operations"], 2, "{state}");
    assert!(
        fortigate.server.hits("/api/v2/cmdb/firewall/address") > 0,
        "it reads"
    );
    assert!(fortigate.writes().is_empty());

    // The holder stops renewing: this replica takes over and writes, once.
    common::eventually("the takeover", Duration::from_secs(20), || {
        fortigate.members("addrgrp", "web") == ["prod.shop.web-1"]
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    fortigate.server.clear();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requests = fortigate.server.requests().len();
    assert!(
        requests <= 4,
        "{requests} requests in a second after the takeover"
    );
    daemon.stop().await;
}

/// `threatflow firewall plan` prints what a sync would change and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_command_prints_the_changes_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fortigate = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;
    fortigate.seed("address", json!({"name": "prod.shop.gone", "subnet": "10.0.0.99/32", "comment": Marker::new("prod").comment()}));
    let inventory = dir.path().join("inventory.json");
    std::fs::write(
        &inventory,
        json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            pod("shop", "web-1", &["10.244.1.5"], json!({"app": "web"})),
        ]})
        .to_string(),
    )
    .unwrap();
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster_name: prod\nfirewall:\n  groups:\n    - {{name: web, selector: \"app == 'web'\"}}\n  fortigate:\n{}",
            fortigate_yaml(&fortigate, dir.path())
        ),
    )
    .unwrap();
    let args = [
        "firewall",
        "plan",
        "--config",
        config.to_str().unwrap(),
        "--inventory",
        inventory.to_str().unwrap(),
    ]
    .map(str::to_owned);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::binary())
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().skip(1).collect::<Vec<_>>(),
        [
            "  create ipv4 address prod.shop.web-1 = 10.244.1.5/32",
            "  create ipv4 group web (1 members)",
            "  delete ipv4 address prod.shop.gone",
        ],
        "{stdout}"
    );
    assert!(
        stdout.starts_with("fortigate fgt (https://localhost:"),
        "{stdout}"
    );
    assert!(fortigate.writes().is_empty());
}
