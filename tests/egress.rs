//! Egress identities through the daemon: the egress mechanism's objects in the Kubernetes API
//! double (found by API discovery), each namespace's egress addresses as groups on the
//! FortiGate double and the pull endpoint, warnings on `/status` and `/metrics`, and flows
//! from an egress address naming the namespaces behind it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fortigate as fgt;
use common::kube_api::KubeApi;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn namespace(name: &str, labels: Value, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels, "annotations": annotations}})
}

fn pod(namespace: &str, name: &str, ips: &[&str], labels: Value, node: &str) -> Value {
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-30T10:00:00Z"}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": pod_ips}})
}

fn node(name: &str, labels: Value, address: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]}})
}

fn seed_nodes(api: &KubeApi) {
    api.seed("nodes", node("gw-a", json!({"egress": "true"}), "10.0.0.1"));
    api.seed("nodes", node("gw-b", json!({"egress": "true"}), "10.0.0.2"));
    api.seed("nodes", node("worker", json!({}), "10.0.0.3"));
}

fn cilium_policy(name: &str, team: &str, egress_ip: &str) -> Value {
    json!({"apiVersion": "cilium.io/v2", "kind": "CiliumEgressGatewayPolicy",
        "metadata": {"name": name},
        "spec": {"selectors": [{"namespaceSelector": {"matchLabels": {"team": team}}}],
                 "destinationCIDRs": ["0.0.0.0/0"],
                 "egressGateway": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                                   "egressIP": egress_ip}}})
}

fn secret(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

fn fortigate_yaml(double: &fgt::FortiGate, dir: &Path) -> String {
    format!(
        "    - name: fgt\n      url: {}\n      api_key: {{value_from_file: {}}}\n      tls: {{ca_file: {}}}\n      requests_per_second: 1000\n",
        double.url(),
        secret(dir, "fgt-key", "fgt-key"),
        dir.join("ca.pem").display()
    )
}

async fn status(port: u16) -> Value {
    let (_, body) = common::http_get(port, "/status");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cilium_identities_reach_every_target_follow_a_failover_and_name_flows() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    api.install_group("cilium.io");
    seed_nodes(&api);
    api.seed(
        "namespaces",
        namespace("payments", json!({"team": "pay"}), json!({})),
    );
    api.seed("namespaces", namespace("web", json!({}), json!({})));
    api.seed(
        "pods",
        pod(
            "payments",
            "api-1",
            &["10.244.1.5"],
            json!({"app": "api"}),
            "worker",
        ),
    );
    api.seed(
        "pods",
        pod(
            "web",
            "web-1",
            &["10.244.1.6"],
            json!({"app": "web"}),
            "worker",
        ),
    );
    api.seed(
        "ciliumegressgatewaypolicies",
        cilium_policy("pay", "pay", "192.0.2.10"),
    );
    let fortigate = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;

    let flows = dir.path().join("flows.log");
    std::fs::write(&flows, "").unwrap();
    let out = dir.path().join("out.json");
    let serve_port = common::free_port();
    let yaml = format!(
        "cluster_name: prod\n\
         sources:\n  - {{name: calico, type: file, file: {{path: {}, poll_interval_ms: 20}}}}\n\
         sinks:\n  - {{name: out, type: file, format: json, file: {{path: {}}}}}\n\
         firewall:\n  debounce_ms: 100\n  egress_identities: {{ttl_secs: 600}}\n  groups:\n    - {{name: api, selector: \"app == 'api'\"}}\n    - {{name: web, selector: \"app == 'web'\"}}\n  fortigate:\n{}      groups: [web]\n  serve:\n    listen_addr: 127.0.0.1:{serve_port}\n",
        flows.display(),
        out.display(),
        fortigate_yaml(&fortigate, dir.path()),
    );
    let daemon = common::daemon::InProcess::start(&yaml, Some(api.client())).await;

    // Found by discovery; published to a target that asks for other groups only, too.
    common::eventually("egress.payments on the FortiGate", WAIT, || {
        fortigate.members("addrgrp", "egress.payments") == ["prod.egress.192.0.2.10"]
    })
    .await;
    assert_eq!(
        fortigate
            .object("address", "prod.egress.192.0.2.10")
            .unwrap()["subnet"],
        "192.0.2.10 255.255.255.255"
    );
    assert!(
        fortigate.object("addrgrp", "egress.web").is_none(),
        "web has no identity"
    );
    let (code, body) = common::http_get(serve_port, "/v1/groups/egress.payments.txt");
    assert_eq!((code, body.as_str()), (200, "192.0.2.10\n"));
    let status = status(daemon.port).await;
    let egress = &status["egress_identities"];
    assert_eq!(egress["mechanism"], "cilium");
    assert_eq!(
        egress["identities"]["payments"]["nets"],
        json!(["192.0.2.10/32"])
    );
    assert_eq!(
        egress["identities"]["payments"]["via"],
        json!(["CiliumEgressGatewayPolicy pay"])
    );

    // A flow the firewall would see from the egress address names the namespace behind it.
    std::fs::write(
        &flows,
        "{\"start_time\":1,\"end_time\":2,\"source_ip\":\"192.0.2.10\",\"dest_ip\":\"203.0.113.66\",\"dest_port\":443,\"proto\":\"tcp\",\"action\":\"allow\",\"reporter\":\"src\"}\n",
    )
    .unwrap();
    common::eventually("the enriched flow", WAIT, || {
        std::fs::read_to_string(&out).is_ok_and(|text| text.contains("egress_identity"))
    })
    .await;
    let record: Value = serde_json::from_str(
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(record["egress_identity"], json!(["payments"]));

    // Failover: the policy moves to another address; the old one stays for the TTL, so the
    // group is never empty and never loses the address a firewall rule may still expect.
    let watcher = {
        let fortigate_members = {
            let fortigate = &fortigate;
            move || fortigate.members("addrgrp", "egress.payments")
        };
        let mut seen_empty = false;
        api.seed(
            "ciliumegressgatewaypolicies",
            cilium_policy("pay", "pay", "192.0.2.11"),
        );
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let members = fortigate_members();
            seen_empty |= members.is_empty();
            if members.len() == 2 || std::time::Instant::now() > deadline {
                break (members, seen_empty);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_eq!(
        watcher,
        (
            vec![
                "prod.egress.192.0.2.10".to_owned(),
                "prod.egress.192.0.2.11".to_owned()
            ],
            false
        )
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ovn_dual_stack_identities_and_a_shared_address_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    api.install_group("k8s.ovn.org");
    seed_nodes(&api);
    for (name, env) in [("payments", "prod"), ("billing", "prod"), ("web", "dev")] {
        api.seed(
            "namespaces",
            namespace(name, json!({"env": env}), json!({})),
        );
        api.seed(
            "pods",
            pod(name, "app-1", &["10.244.1.5"], json!({}), "worker"),
        );
    }
    api.seed(
        "egressips",
        json!({"apiVersion": "k8s.ovn.org/v1", "kind": "EgressIP", "metadata": {"name": "prod"},
            "spec": {"egressIPs": ["192.0.2.20", "2001:db8::20"],
                     "namespaceSelector": {"matchLabels": {"env": "prod"}}},
            "status": {"items": [{"node": "gw-a", "egressIP": "192.0.2.20"}]}}),
    );
    let fortigate = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;
    let yaml = format!(
        "cluster_name: prod\nfirewall:\n  debounce_ms: 100\n  egress_identities: {{}}\n  fortigate:\n{}",
        fortigate_yaml(&fortigate, dir.path()),
    );
    let daemon = common::daemon::InProcess::start(&yaml, Some(api.client())).await;
    common::eventually("both families of both namespaces", WAIT, || {
        ["payments", "billing"].iter().all(|namespace| {
            fortigate.members("addrgrp", &format!("egress.{namespace}"))
                == ["prod.egress.192.0.2.20"]
                && fortigate.members("addrgrp6", &format!("egress.{namespace}.v6"))
                    == ["prod.egress.2001-db8--20"]
        })
    })
    .await;
    assert_eq!(
        fortigate
            .object("address6", "prod.egress.2001-db8--20")
            .unwrap()["ip6"],
        "2001:db8::20/128"
    );
    assert!(fortigate.object("addrgrp", "egress.web").is_none());
    let status = status(daemon.port).await;
    let warnings = status["egress_identities"]["warnings"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["kind"], "shared_identity");
    let message = warnings[0]["message"].as_str().unwrap();
    assert!(
        message.contains("billing, payments") && message.contains("192.0.2.20"),
        "{message}"
    );
    assert_eq!(
        common::metric(
            daemon.port,
            "threatflow_egress_warnings{kind=\"shared_identity\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        common::metric(daemon.port, "threatflow_egress_identities"),
        Some(2.0)
    );
    let output = std::process::Command::new(common::binary())
        .args(["status", "--addr", &format!("127.0.0.1:{}", daemon.port)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("egress identities (ovn)")
            && text.contains("192.0.2.20/32 2001:db8::20/128")
            && text.contains("warning shared_identity: namespaces billing, payments"),
        "{text}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calico_enterprise_gateways_and_a_missing_policy() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    api.install_group("operator.tigera.io");
    api.install_group("projectcalico.org");
    seed_nodes(&api);
    api.seed(
        "felixconfigurations",
        json!({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
            "metadata": {"name": "default"}, "spec": {"egressIPSupport": "EnabledPerNamespace"}}),
    );
    api.seed(
        "ippools",
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "egress-red"},
            "spec": {"cidr": "192.0.2.0/29", "nodeSelector": "!all()"}}),
    );
    api.seed(
        "egressgateways",
        json!({"apiVersion": "operator.tigera.io/v1", "kind": "EgressGateway",
            "metadata": {"name": "red", "namespace": "egw"},
            "spec": {"replicas": 2, "ipPools": [{"name": "egress-red"}]}}),
    );
    api.seed("namespaces", namespace("egw", json!({}), json!({})));
    api.seed(
        "namespaces",
        namespace(
            "payments",
            json!({}),
            json!({"egress.projectcalico.org/selector": "projectcalico.org/egw == 'red'",
                   "egress.projectcalico.org/namespaceSelector": "projectcalico.org/name == 'egw'"}),
        ),
    );
    api.seed(
        "namespaces",
        namespace(
            "web",
            json!({}),
            json!({"egress.projectcalico.org/egressGatewayPolicy": "gone"}),
        ),
    );
    for (name, ip, node) in [
        ("red-a", "192.0.2.2", "gw-a"),
        ("red-b", "192.0.2.3", "gw-b"),
    ] {
        api.seed(
            "pods",
            pod(
                "egw",
                name,
                &[ip],
                json!({"projectcalico.org/egw": "red"}),
                node,
            ),
        );
    }
    let fortigate = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;
    let yaml = format!(
        "cluster_name: prod\nfirewall:\n  debounce_ms: 100\n  egress_identities: {{}}\n  fortigate:\n{}",
        fortigate_yaml(&fortigate, dir.path()),
    );
    let daemon = common::daemon::InProcess::start(&yaml, Some(api.client())).await;
    common::eventually("the gateways and their pool", WAIT, || {
        fortigate.members("addrgrp", "egress.payments")
            == [
                "prod.egress.192.0.2.0_29",
                "prod.egress.192.0.2.2",
                "prod.egress.192.0.2.3",
            ]
    })
    .await;
    let status = status(daemon.port).await;
    assert_eq!(status["egress_identities"]["mechanism"], "calico");
    let warnings = status["egress_identities"]["warnings"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["kind"], "missing_policy");
    assert!(warnings[0]["message"].as_str().unwrap().contains("gone"));

    // A gateway scales up: its address joins the group.
    api.seed(
        "pods",
        pod(
            "egw",
            "red-c",
            &["192.0.2.4"],
            json!({"projectcalico.org/egw": "red"}),
            "gw-a",
        ),
    );
    common::eventually("the third gateway", WAIT, || {
        fortigate
            .members("addrgrp", "egress.payments")
            .contains(&"prod.egress.192.0.2.4".to_owned())
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_fails_is_reported_and_the_groups_go_out_regardless() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    // Calico Enterprise named in the config, but its egress kinds are not served here.
    api.install_group("operator.tigera.io");
    seed_nodes(&api);
    api.seed("namespaces", namespace("shop", json!({}), json!({})));
    api.seed(
        "pods",
        pod(
            "shop",
            "web-1",
            &["10.244.1.5"],
            json!({"app": "web"}),
            "worker",
        ),
    );
    let fortigate = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;
    let yaml = format!(
        "cluster_name: prod\nfirewall:\n  debounce_ms: 100\n  groups:\n    - {{name: web, selector: \"app == 'web'\"}}\n  egress_identities: {{mechanism: calico}}\n  fortigate:\n{}",
        fortigate_yaml(&fortigate, dir.path()),
    );
    let daemon = common::daemon::InProcess::start(&yaml, Some(api.client())).await;
    common::eventually(
        "the configured group, egress identities or not",
        WAIT,
        || fortigate.members("addrgrp", "web") == ["prod.shop.web-1"],
    )
    .await;
    let status = status(daemon.port).await;
    let error = status["egress_identities"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("felixconfigurations") && error.contains("ippools"),
        "{status}"
    );
    daemon.stop().await;
}
