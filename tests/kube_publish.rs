//! Publishing feeds to the Kubernetes API, against the API server double in
//! `common/kube_api.rs` driven by kube's own client.

mod common;

use std::collections::BTreeMap;

use common::kube_api::KubeApi;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::json;
use threatflow::feeds::publish::{KubernetesTarget, Target};
use threatflow::feeds::render::{render, PolicySettings, RenderSettings};
use threatflow::netset::NetSet;

fn gns_api(api: &KubeApi) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "projectcalico.org".into(),
        version: "v3".into(),
        api_version: "projectcalico.org/v3".into(),
        kind: "GlobalNetworkSet".into(),
        plural: "globalnetworksets".into(),
    };
    Api::all_with(api.client(), &resource)
}

fn error_code(error: kube::Error) -> u16 {
    match error {
        kube::Error::Api(status) => status.code,
        other => panic!("not an API error: {other:?}"),
    }
}

fn gns(name: &str, nets: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet", "metadata": {"name": name}, "spec": {"nets": nets}})
}

#[tokio::test]
async fn the_double_answers_like_an_api_server() {
    let api = KubeApi::start().await;
    let sets = gns_api(&api);
    assert_eq!(error_code(sets.get("missing").await.unwrap_err()), 404);

    let created = sets
        .patch(
            "a",
            &PatchParams::apply("kubectl"),
            &Patch::Apply(gns("a", json!(["1.2.3.4/32"]))),
        )
        .await
        .unwrap();
    let first_version: u64 = created.metadata.resource_version.unwrap().parse().unwrap();
    // Another manager may not take the object over without force.
    let conflict = sets
        .patch(
            "a",
            &PatchParams::apply("threatflow"),
            &Patch::Apply(gns("a", json!(["5.6.7.8/32"]))),
        )
        .await
        .unwrap_err();
    assert_eq!(error_code(conflict), 409);
    let forced = sets
        .patch(
            "a",
            &PatchParams::apply("threatflow").force(),
            &Patch::Apply(gns("a", json!(["5.6.7.8/32"]))),
        )
        .await
        .unwrap();
    assert!(
        forced
            .metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > first_version
    );

    let invalid = sets
        .patch(
            "b",
            &PatchParams::apply("threatflow"),
            &Patch::Apply(gns("b", json!(["not-a-cidr"]))),
        )
        .await
        .unwrap_err();
    assert_eq!(error_code(invalid), 422);
    let nets: Vec<String> = (0..70_000)
        .map(|i| format!("2001:db8:{:x}:{:x}::/64", i / 65536, i % 65536))
        .collect();
    let too_large = sets
        .patch(
            "c",
            &PatchParams::apply("threatflow"),
            &Patch::Apply(gns("c", json!(nets))),
        )
        .await
        .unwrap_err();
    assert_eq!(error_code(too_large), 500, "etcd's object size limit");
    let merge = sets
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nets": []}})),
        )
        .await
        .unwrap_err();
    assert_eq!(error_code(merge), 415);

    api.seed("globalnetworksets", json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet", "metadata": {"name": "labelled", "labels": {"team": "x"}}, "spec": {"nets": []}}));
    let selected = sets
        .list(&kube::api::ListParams::default().labels("team=x"))
        .await
        .unwrap();
    assert_eq!(selected.items.len(), 1);
    let none = sets
        .list(&kube::api::ListParams::default().labels("team!=x,team"))
        .await
        .unwrap();
    assert!(none.items.is_empty());
    sets.delete("a", &Default::default()).await.unwrap();
    assert_eq!(
        error_code(sets.delete("a", &Default::default()).await.unwrap_err()),
        404
    );
}

fn set_of(count: u32) -> NetSet {
    NetSet::from_ranges(
        (0..count)
            .map(|i| (0x0b00_0000 + 2 * i, 0x0b00_0000 + 2 * i))
            .collect(),
        vec![],
    )
}

#[tokio::test]
async fn the_target_applies_only_changes_and_deletes_only_its_own_objects() {
    let api = KubeApi::start().await;
    // Objects threatflow does not own, or owns for another feed.
    api.seed("globalnetworksets", json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet", "metadata": {"name": "threatfeed.test.9", "labels": {"security-action": "block"}}, "spec": {"nets": ["9.9.9.9/32"]}}));
    api.seed("globalnetworksets", json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet", "metadata": {"name": "threatfeed.other", "labels": {"app.kubernetes.io/managed-by": "threatflow", "threatflow.io/feed": "other"}}, "spec": {"nets": []}}));
    let target = Target::Kubernetes(Box::new(KubernetesTarget::new(api.client())));
    let settings = RenderSettings {
        shard_max_nets: 10_000,
        policy: Some(PolicySettings {
            tier: "security".into(),
            order: 0.0,
        }),
        ..RenderSettings::default()
    };
    let labels: BTreeMap<String, String> =
        [("security-action".to_owned(), "block".to_owned())].into();

    let big = render("test", &labels, &set_of(50_000), &settings);
    let report = target.apply("test", &big).await.unwrap();
    assert_eq!((report.written, report.deleted), (big.sets.len() + 1, 0));
    assert_eq!(target.published_nets("test").await.unwrap(), 50_000);
    let stored = api.get("globalnetworksets", "threatfeed.test").unwrap();
    assert_eq!(stored["metadata"]["labels"]["security-action"], "block");
    assert_eq!(
        stored["metadata"]["managedFields"][0]["manager"],
        "threatflow"
    );
    assert!(api
        .get("globalnetworkpolicies", "security.threatfeed-test")
        .is_some());

    // Unchanged: only lists, no writes.
    api.clear_requests();
    let report = target.apply("test", &big).await.unwrap();
    assert_eq!(
        (report.written, report.unchanged, report.deleted),
        (0, big.sets.len() + 1, 0)
    );
    assert!(
        api.requests()
            .iter()
            .all(|(method, path)| method == "GET" && path.ends_with("(metadata)")),
        "a re-sync lists metadata only and writes nothing: {:?}",
        api.requests()
    );

    // A smaller feed: stale shards go; objects threatflow does not own for this feed stay.
    let small = render("test", &labels, &set_of(100), &settings);
    let report = target.apply("test", &small).await.unwrap();
    assert_eq!(report.deleted, big.sets.len() - 1);
    let mut names = api.names("globalnetworksets");
    names.sort();
    assert_eq!(
        names,
        ["threatfeed.other", "threatfeed.test", "threatfeed.test.9"]
    );
    assert_eq!(
        api.get("globalnetworksets", "threatfeed.test.9").unwrap()["spec"]["nets"][0],
        "9.9.9.9/32"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_publishes_through_kubeconfig() {
    let api = KubeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.txt");
    std::fs::write(&feed, "1.2.3.4\n5.6.7.0/24\n10.0.0.1\n").unwrap();
    let config = dir.path().join("threatflow.yaml");
    std::fs::write(
        &config,
        format!(
            "feeds:\n  - {{name: demo, url: 'file://{}', labels: {{security-action: block}}}}\nfeed_settings:\n  never_block: [10.0.0.0/8]\n  policy: {{tier: security}}\n  publish: {{type: kubernetes}}\n",
            feed.display()
        ),
    )
    .unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let run = |config: std::path::PathBuf, kubeconfig: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(common::binary())
                .args(["run", "--once", "--config", config.to_str().unwrap()])
                .env("KUBECONFIG", kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .output()
                .unwrap()
        })
    };
    let output = run(config.clone(), kubeconfig.clone()).await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let set = api.get("globalnetworksets", "threatfeed.demo").unwrap();
    assert_eq!(set["spec"]["nets"], json!(["1.2.3.4/32", "5.6.7.0/24"]));
    assert_eq!(set["metadata"]["labels"]["threatflow.io/feed"], "demo");
    let policy = api
        .get("globalnetworkpolicies", "security.threatfeed-demo")
        .unwrap();
    assert_eq!(
        policy["spec"]["egress"][0]["destination"]["selector"],
        "threatflow.io/feed == 'demo' && !has(projectcalico.org/namespace)"
    );

    api.clear_requests();
    let output = run(config, kubeconfig).await.unwrap();
    assert!(output.status.success());
    assert!(
        api.requests().iter().all(|(method, _)| method == "GET"),
        "a re-sync of an unchanged feed writes nothing: {:?}",
        api.requests()
    );
}
