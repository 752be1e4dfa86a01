//! The invariants ARCHITECTURE.md states about where things live, checked on the source:
//! Calico's wire types only in `src/k8s/`, and each vendor's wire format (collectors,
//! encoders, Kafka, FortiOS, FortiManager) only in its module.
//! Comments and unit-test modules are not code and are skipped.

mod common;

use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, as (path relative to `src/`, code without comments and test
/// modules).
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                out.push(path);
            }
        }
    }
    let src = common::root().join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests {") {
                Some(at) => &text[..at],
                None => &text[..],
            };
            let code: Vec<&str> = text
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect();
            let relative = path.strip_prefix(&src).unwrap().display().to_string();
            (relative, code.join("\n"))
        })
        .collect()
}

/// Fails with every place outside `allowed` (path prefixes) where one of `needles` appears.
fn only_in(what: &str, needles: &[&str], allowed: &[&str]) {
    let misplaced: Vec<String> = sources()
        .iter()
        .filter(|(path, _)| !allowed.iter().any(|prefix| path.starts_with(prefix)))
        .flat_map(|(path, code)| {
            needles
                .iter()
                .filter(|needle| code.contains(*needle))
                .map(move |needle| format!("src/{path}: {needle}"))
        })
        .collect();
    assert!(
        misplaced.is_empty(),
        "{what} must stay in {allowed:?}, found:\n{}",
        misplaced.join("\n")
    );
}

#[test]
fn nothing_outside_k8s_knows_calicos_wire_types() {
    only_in(
        "Calico's wire types",
        &[
            "GlobalNetworkSet",
            "GlobalNetworkPolicy",
            "PolicySpec",
            "EntityRule",
            "TierSpec",
            "projectcalico.org",
        ],
        // The inventory reads every kind a `kubectl get -o json` list holds, Calico's policies
        // among them (parsed by k8s's own type). The rule translator's output is Calico policy.
        // Egress identities read each egress mechanism's objects (Calico Enterprise's among
        // them) in one module, and the admission guard's output names Calico's annotations.
        &[
            "k8s/",
            "cluster/objects.rs",
            "policy_import/translate.rs",
            "egress/objects.rs",
            "egress/admission.rs",
        ],
    );
}

#[test]
fn each_vendor_wire_format_stays_in_its_module() {
    only_in(
        "Calico flow-log field names",
        &[
            "source_name_aggr",
            "dest_name_aggr",
            "dest_service_port_num",
        ],
        &["flow/calico.rs", "flow/calico/"],
    );
    only_in(
        "Hubble's flow fields",
        &["traffic_direction", "drop_reason_desc"],
        &["flow/hubble.rs"],
    );
    only_in("the CEF header", &["\"CEF:"], &["sink/cef.rs"]);
    only_in("the LEEF header", &["\"LEEF:"], &["sink/leef.rs"]);
    only_in(
        "librdkafka's settings",
        &["\"bootstrap.servers\"", "\"enable.auto.offset.store\""],
        &["kafka.rs", "flow/kafka.rs", "sink/kafka.rs"],
    );
    only_in(
        "the Kubernetes API's watch machinery",
        &["watcher::watcher("],
        &["cluster/watch.rs"],
    );
    only_in(
        "FortiOS's REST API",
        &["/api/v2/cmdb", "cli_error"],
        // The address sync's client, and the ISDB feed source (read-only monitor calls).
        &["firewall/fortigate.rs", "feeds/isdb.rs"],
    );
    only_in(
        "Fortinet's address tables",
        &["\"addrgrp\"", "\"addrgrp6\""],
        &["firewall/fortigate.rs", "firewall/fortimanager/"],
    );
    only_in(
        "FortiManager's JSON-RPC",
        &["/jsonrpc", "/pm/config/", "sys/login/user", "/workspace/"],
        &["firewall/fortimanager/"],
    );
    only_in(
        "the PAN-OS XML API",
        &[
            "X-PAN-KEY",
            "uid-message",
            "registered-ip",
            "commit-all",
            "pre-rulebase",
        ],
        &["firewall/panorama/"],
    );
}
