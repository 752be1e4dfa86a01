//! The in-cluster deployment: the kustomize overlays render, validate against the Kubernetes
//! API schemas offline (kubernetes-validate, pinned), and hold the security properties the
//! README promises: RBAC without wildcards or Secrets, hardened pods, probes, scraping. Their
//! example configs are valid threatflow configs, and the Grafana dashboard queries only
//! metrics a running threatflow exposes.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

const OVERLAYS: [&str; 2] = ["deployment", "daemonset"];

/// `kubectl kustomize` of an overlay, as JSON documents.
fn render(overlay: &str) -> (String, Vec<Value>) {
    let output = Command::new("kubectl")
        .args(["kustomize", &format!("deploy/kubernetes/{overlay}")])
        .current_dir(common::root())
        .output()
        .expect("kubectl is not installed: run the tests with `bash tests/run.sh`");
    assert!(
        output.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let documents = yaml_serde::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .collect();
    (text, documents)
}

fn find<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|doc| doc["kind"] == kind).collect()
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_overlays_render_and_validate_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let (text, documents) = render(overlay);
        assert!(
            documents.len() >= 9,
            "{overlay}: {} documents",
            documents.len()
        );
        let path = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&path, text).unwrap();
        common::kubernetes_schemas::assert_valid(overlay, &path);
    }
}

#[test]
fn rbac_is_least_privilege() {
    for overlay in OVERLAYS {
        let (_, documents) = render(overlay);
        let roles: Vec<&Value> = find(&documents, "ClusterRole")
            .into_iter()
            .chain(find(&documents, "Role"))
            .collect();
        assert_eq!(roles.len(), 2, "{overlay}");
        let mut granted = BTreeSet::new();
        for role in &roles {
            for rule in role["rules"].as_array().unwrap() {
                let (groups, resources, verbs) = (
                    strings(&rule["apiGroups"]),
                    strings(&rule["resources"]),
                    strings(&rule["verbs"]),
                );
                for value in groups.iter().chain(&resources).chain(&verbs) {
                    assert!(!value.contains('*'), "{overlay}: wildcard in {rule}");
                }
                assert!(
                    !resources.contains("secrets"),
                    "{overlay}: no API access to Secrets: {rule}"
                );
                assert!(rule.get("nonResourceURLs").is_none());
                for resource in &resources {
                    for verb in &verbs {
                        let named = rule.get("resourceNames").is_some();
                        granted.insert(format!(
                            "{resource}:{verb}{}",
                            if named { "(named)" } else { "" }
                        ));
                    }
                }
            }
        }
        let expected: BTreeSet<String> = [
            "pods:get",
            "pods:list",
            "pods:watch",
            "namespaces:get",
            "namespaces:list",
            "namespaces:watch",
            "services:get",
            "services:list",
            "services:watch",
            "nodes:get",
            "nodes:list",
            "nodes:watch",
            "jobs:get",
            "jobs:list",
            "jobs:watch",
            "globalnetworksets:get",
            "globalnetworksets:list",
            "globalnetworksets:patch",
            "globalnetworksets:delete",
            "globalnetworkpolicies:get",
            "globalnetworkpolicies:list",
            "globalnetworkpolicies:patch",
            "globalnetworkpolicies:delete",
            "globalnetworkpolicies:watch",
            "stagedglobalnetworkpolicies:get",
            "stagedglobalnetworkpolicies:list",
            "stagedglobalnetworkpolicies:patch",
            "stagedglobalnetworkpolicies:delete",
            "tiers:get",
            "tiers:list",
            "tiers:patch",
            "leases:create",
            "leases:get(named)",
            "leases:update(named)",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain(
            // Egress identities: each mechanism's objects, read only.
            [
                "egressgatewaypolicies",
                "ippools",
                "felixconfigurations",
                "egressgateways",
                "ciliumegressgatewaypolicies",
                "isovalentegressgatewaypolicies",
                "egresses",
                "externalippools",
                "egressips",
                "staticgatewayconfigurations",
            ]
            .into_iter()
            .flat_map(|resource| ["get", "list", "watch"].map(|verb| format!("{resource}:{verb}"))),
        )
        .collect();
        assert_eq!(granted, expected, "{overlay}");
        // The Lease rules are namespaced: a Role in threatflow's namespace.
        let role = find(&documents, "Role")[0];
        assert_eq!(role["metadata"]["namespace"], "threatflow");
        for binding in find(&documents, "ClusterRoleBinding")
            .into_iter()
            .chain(find(&documents, "RoleBinding"))
        {
            assert_eq!(binding["subjects"][0]["name"], "threatflow");
            assert_eq!(binding["subjects"][0]["namespace"], "threatflow");
        }
    }
}

#[test]
fn the_pods_run_hardened_with_probes_and_scraping() {
    for (overlay, kind) in [("deployment", "Deployment"), ("daemonset", "DaemonSet")] {
        let (_, documents) = render(overlay);
        let workload = find(&documents, kind)[0];
        let pod = &workload["spec"]["template"];
        let spec = &pod["spec"];
        assert_eq!(spec["serviceAccountName"], "threatflow");
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{overlay}"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/scrape"],
            "true"
        );
        assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9898");
        let container = &spec["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false, "{overlay}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{overlay}");
        assert_eq!(
            strings(&security["capabilities"]["drop"]),
            BTreeSet::from(["ALL".to_owned()]),
            "{overlay}"
        );
        assert!(security["capabilities"].get("add").is_none());
        assert!(security.get("privileged").is_none() || security["privileged"] == false);
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"]["requests"][resource].is_string(),
                "{overlay}: requests.{resource}"
            );
            assert!(
                container["resources"]["limits"][resource].is_string(),
                "{overlay}: limits.{resource}"
            );
        }
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        // The config is mounted as a directory, so ConfigMap edits reach the pod.
        let mounts = container["volumeMounts"].as_array().unwrap();
        let config = mounts
            .iter()
            .find(|mount| mount["name"] == "config")
            .unwrap();
        assert!(config.get("subPath").is_none());
        assert_eq!(config["readOnly"], true);
        // Secrets only by name, as files.
        for volume in spec["volumes"].as_array().unwrap() {
            if let Some(secret) = volume.get("secret") {
                assert!(secret["secretName"]
                    .as_str()
                    .unwrap()
                    .starts_with("threatflow-"));
            }
        }
        if kind == "Deployment" {
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
            assert!(spec["securityContext"]["runAsUser"].as_u64().unwrap() > 0);
            assert!(spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|volume| volume.get("hostPath").is_none()));
        } else {
            let flowlogs = mounts
                .iter()
                .find(|mount| mount["name"] == "flowlogs")
                .unwrap();
            assert_eq!(
                flowlogs["readOnly"], true,
                "the node's flow logs are mounted read-only"
            );
        }
        let policy = find(&documents, "NetworkPolicy")[0];
        assert_eq!(
            strings(&policy["spec"]["policyTypes"]),
            BTreeSet::from(["Egress".to_owned(), "Ingress".to_owned()])
        );
    }
}

#[test]
fn the_example_configs_are_valid() {
    for overlay in OVERLAYS {
        let (_, documents) = render(overlay);
        let map = find(&documents, "ConfigMap")[0];
        let text = map["data"]["threatflow.yaml"].as_str().unwrap();
        let config = threatflow::config::Config::from_yaml(text)
            .unwrap_or_else(|problem| panic!("{overlay}: {problem}"));
        let problems = config.validate();
        assert!(problems.is_empty(), "{overlay}:\n{problems}");
    }
}

#[test]
fn the_dashboard_queries_only_metrics_threatflow_exposes() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("deploy/grafana/threatflow-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let metric = regex::Regex::new(r"\bthreatflow_[a-z_]+").unwrap();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            for found in metric.find_iter(target["expr"].as_str().unwrap()) {
                used.insert(found.as_str().to_owned());
            }
        }
    }
    assert!(used.len() >= 15, "{used:?}");

    // A running instance's metric families: a Kafka source (its broker need not answer), a
    // feed in monitor mode, a sink, a firewall target and a policy source (they need not
    // answer either).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(dir.path().join("key"), "k").unwrap();
    std::fs::write(
        &config,
        format!(
            "cluster_name: test\nsources: [{{name: kafka, type: kafka, kafka: {{brokers: [\"127.0.0.1:9\"], topics: [{{name: flows}}]}}}}]\nsinks: [{{name: out, type: stdout}}]\nfeeds: [{{name: drop, url: 'file://{}', mode: monitor}}]\nenrichment: {{inventory_path: {}}}\nfirewall: {{groups: [{{name: all}}], fortigate: [{{name: fgt, url: 'https://127.0.0.1:9', api_key: {{value_from_file: {}}}}}]}}\npolicy_import: {{publish: {{type: directory, directory: {{path: {}}}}}, sources: [{{name: dc, tier: zones, panorama: {{url: 'https://127.0.0.1:9', device_group: k8s, api_key: {{value_from_file: {}}}}}}}]}}\ntelemetry: {{listen_addr: \"127.0.0.1:0\"}}\n",
            common::root().join("connectors/feeds/fixtures/firehol-level1.netset").display(),
            common::root().join("deploy/local/inventory.json").display(),
            dir.path().join("key").display(),
            dir.path().join("policy").display(),
            dir.path().join("key").display(),
        ),
    )
    .unwrap();
    let daemon = common::daemon::Daemon::run(&config);
    let port = daemon.telemetry_port();
    let mut exposed = String::new();
    // Once the feed has synced and every stage has created its series (the Kafka source
    // creates its gauges on its own thread, after the others have started).
    common::wait_for(
        "every stage's metrics",
        std::time::Duration::from_secs(20),
        || {
            exposed = common::http_get(port, "/metrics").1;
            exposed.contains("threatflow_feed_entries{")
                && exposed.contains("threatflow_firewall_group_members{")
                && exposed.contains("threatflow_policy_import_polls_total{")
                && exposed.contains("threatflow_source_kafka_in_flight_records{")
                && exposed.contains("threatflow_source_kafka_lag_records{")
        },
    );
    drop(daemon);
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| {
            let family = ["_total", "_bucket"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            !exposed.contains(&format!("# TYPE {family} "))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics threatflow does not expose: {missing:?}"
    );
}
