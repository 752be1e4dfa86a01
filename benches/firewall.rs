//! The firewall address sync.
//!
//! `firewall_plan`: a full plan for 10,000 pods (50 namespaces, a quarter dual-stack) and 500
//! groups of four kinds (an app; two apps of one tier; a team in one namespace; an app in
//! production namespaces, both families): the groups computed from the cluster model, the
//! objects for one target, and the diff against what the target holds. `steady` diffs
//! against the same objects (nothing to do: the common case), `initial` against nothing
//! (the first sync). One thread.
//!
//! `event_to_write`: the daemon in this process, watching the Kubernetes API double and
//! syncing a FortiGate double with the default 1 s debounce; each iteration adds a pod to the
//! API and times until the FortiGate has received the group update that holds it.
//!
//! Run with `cargo bench --bench firewall` (needs `openssl` for the test certificates, which
//! `bash tests/run.sh` installs).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};
use threatflow::address_sync::config::FirewallConfig;
use threatflow::address_sync::groups::Groups;
use threatflow::cluster::model::Model;
use threatflow::cluster::objects::{Inventory, NamespaceInfo, PodInfo};
use threatflow::firewall::{self, Limits, Objects, Plan};

#[allow(dead_code)]
#[path = "../tests/common/fortigate.rs"]
mod fortigate;
#[allow(dead_code)]
#[path = "../tests/common/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../tests/common/kube_api.rs"]
mod kube_api;
#[allow(dead_code)]
#[path = "../tests/common/panorama.rs"]
mod panorama;
#[allow(dead_code)]
#[path = "../tests/common/pki.rs"]
mod pki;

const PODS: usize = 10_000;
const NAMESPACES: usize = 50;
const APPS: usize = 500;

fn model() -> Model {
    let namespaces = (0..NAMESPACES)
        .map(|n| NamespaceInfo {
            name: format!("ns-{n}"),
            labels: [(
                "env".to_owned(),
                if n % 2 == 0 { "prod" } else { "dev" }.to_owned(),
            )]
            .into(),
            annotations: Default::default(),
        })
        .collect();
    let pods = (0..PODS)
        .map(|i| {
            let mut ips = vec![
                format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256)
                    .parse()
                    .unwrap(),
            ];
            if i % 4 == 0 {
                ips.push(format!("fd00::{i:x}").parse().unwrap());
            }
            PodInfo {
                uid: format!("uid-{i}"),
                name: format!("app-{}-5bdcdd9c97-{i:05}", i % APPS),
                namespace: format!("ns-{}", i % NAMESPACES),
                labels: [
                    ("app".to_owned(), format!("app-{}", i % APPS)),
                    ("tier".to_owned(), ["web", "db", "cache"][i % 3].to_owned()),
                    ("team".to_owned(), format!("team-{}", i % 20)),
                    ("pod-template-hash".to_owned(), "5bdcdd9c97".to_owned()),
                ]
                .into(),
                node: Some(format!("node-{}", i % 100)),
                ips,
                ..PodInfo::default()
            }
        })
        .collect();
    let inventory = Inventory {
        pods,
        namespaces,
        ..Inventory::default()
    };
    Model::from_inventory(&inventory, Vec::new())
}

fn config() -> FirewallConfig {
    let mut yaml = String::from("groups:\n");
    for g in 0..500 {
        let line = match g % 10 {
            0..=5 => format!("  - {{name: app-{g}, selector: \"app == 'app-{g}'\"}}\n"),
            6 | 7 => format!(
                "  - {{name: pair-{g}, selector: \"app in {{'app-{g}', 'app-{}'}} && tier == 'web'\"}}\n",
                (g + 1) % APPS
            ),
            8 => format!(
                "  - {{name: team-{g}, selector: \"team == 'team-{}' && projectcalico.org/namespace == 'ns-{}'\"}}\n",
                g % 20,
                g % NAMESPACES
            ),
            _ => format!(
                "  - {{name: prod-{g}, selector: \"app == 'app-{g}'\", namespace_selector: \"env == 'prod'\", families: [ipv4, ipv6]}}\n"
            ),
        };
        yaml.push_str(&line);
    }
    yaml_serde::from_str(&yaml).unwrap()
}

fn objects(groups: &Groups, model: &Model, limits: Limits) -> Objects {
    let published = groups.compute(model);
    firewall::desired(&published.specs(None), limits, "k8s.no-members")
}

fn plan(c: &mut Criterion) {
    let model = model();
    let groups = Groups::new(&config(), "bench");
    let limits = Limits {
        name_max: 79,
        group_max_members: 600,
        empty_groups: true,
    };
    let held = objects(&groups, &model, limits);
    println!(
        "firewall_plan: {} addresses and {} groups for {PODS} pods",
        held.addresses.len(),
        held.groups.len()
    );
    let nothing = Objects::default();
    let mut group = c.benchmark_group("firewall_plan");
    group.sample_size(30);
    group.bench_function("10k_pods_500_groups/steady", |b| {
        b.iter(|| {
            let plan = Plan::new(&objects(&groups, &model, limits), &held);
            assert!(plan.is_empty());
        })
    });
    group.bench_function("10k_pods_500_groups/initial", |b| {
        b.iter(|| {
            Plan::new(&objects(&groups, &model, limits), &nothing)
                .ops
                .len()
        })
    });
    group.finish();
}

fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "web:1"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn event_to_write(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _runtime = runtime.enter();
    let dir = tempfile::tempdir().unwrap();
    let (api, double) = runtime.block_on(async {
        let api = kube_api::KubeApi::start().await;
        api.seed(
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        );
        api.seed("pods", pod("web-0", "10.244.0.1"));
        let double = fortigate::FortiGate::start(dir.path(), fortigate::Knobs::default()).await;
        (api, double)
    });
    let key = dir.path().join("key");
    std::fs::write(&key, "fgt-key").unwrap();
    let yaml = format!(
        "cluster_name: bench\nfirewall:\n  groups:\n    - {{name: web, selector: \"app == 'web'\"}}\n  fortigate:\n    - name: fgt\n      url: {}\n      api_key: {{value_from_file: {}}}\n      tls: {{ca_file: {}}}\n",
        double.url(),
        key.display(),
        dir.path().join("ca.pem").display()
    );
    let config = threatflow::config::Config::from_yaml(&yaml).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let options = threatflow::app::Options {
        kube: Some(api.client()),
        ..threatflow::app::Options::default()
    };
    let daemon = runtime.spawn(threatflow::app::run(config, options, stop.clone()));
    let wait_for_members = |count: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while double.members("addrgrp", "web").len() != count {
            assert!(
                Instant::now() < deadline,
                "the group never reached {count} members"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for_members(1);
    let mut pods = 1;
    let mut group = c.benchmark_group("firewall_event_to_write");
    group.sample_size(10);
    group.bench_function("pod_added/debounce_1s", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let name = format!("web-{pods}");
                let ip = format!("10.244.{}.{}", pods / 256, pods % 256);
                let started = Instant::now();
                api.seed("pods", pod(&name, &ip));
                pods += 1;
                wait_for_members(pods);
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
    stop.cancel();
    let _ = runtime.block_on(daemon);
}

/// 10,000 pod IPs with three tags each registered through Panorama to a firewall's User-ID
/// table (`target=`), from nothing, as one reconcile sends them; and the read-back of the
/// table, page by page.
fn user_id(c: &mut Criterion) {
    use std::collections::{BTreeMap, BTreeSet};
    use threatflow::firewall::panorama::userid::{messages, Registrations};
    use threatflow::firewall::panorama::{Panorama, PanoramaSettings};
    use threatflow::firewall::Credentials;
    const IPS: usize = 10_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let knobs = panorama::Knobs {
        device_groups: BTreeMap::from([("k8s".to_owned(), vec!["007051000050926".to_owned()])]),
        ..panorama::Knobs::default()
    };
    let double = runtime.block_on(panorama::Panorama::start(dir.path(), knobs));
    double.preset_key("bench-key");
    threatflow::net::tls::install_provider();
    let mut client = Panorama::new(PanoramaSettings {
        url: double.url(),
        device_group: String::new(),
        credentials: Credentials::ApiKey("bench-key".into()),
        http: threatflow::net::http::HttpSettings {
            tls: threatflow::net::tls::TlsSettings {
                ca_file: Some(dir.path().join("ca.pem")),
                ..Default::default()
            },
            ..threatflow::net::http::HttpSettings::default()
        },
        target: Some("007051000050926".into()),
        vsys: None,
        requests_per_second: 1000.0,
    })
    .unwrap();
    let desired: Registrations = (0..IPS)
        .map(|i| {
            let tags: BTreeSet<String> = [
                format!("threatflow.bench.app-{}", i % 500),
                format!("threatflow.bench.team-{}", i % 20),
                "threatflow.bench.all".to_owned(),
            ]
            .into();
            (
                format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256),
                tags,
            )
        })
        .collect();
    let empty = Registrations::new();
    println!(
        "firewall_user_id: {IPS} addresses x 3 tags in {} messages",
        messages(&desired, &empty, 3600).len()
    );
    let mut group = c.benchmark_group("firewall_user_id");
    group.sample_size(10);
    group.bench_function("register_10k_ips_3_tags", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                // Everything registered before lapses: each round starts from nothing.
                double.advance(Duration::from_secs(3601));
                let started = Instant::now();
                let outcome = runtime
                    .block_on(client.update_tags(&desired, &empty, 3600))
                    .unwrap();
                total += started.elapsed();
                assert!(outcome.refused.is_empty() && outcome.noted == 0);
            }
            total
        })
    });
    group.bench_function("read_back_10k_ips", |b| {
        b.iter(|| {
            let registered = runtime
                .block_on(client.registered("threatflow.bench."))
                .unwrap();
            assert_eq!(registered.len(), IPS);
        })
    });
    group.finish();
}

criterion_group!(benches, plan, event_to_write, user_id);
criterion_main!(benches);
