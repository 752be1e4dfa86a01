//! Publishing feeds to the Kubernetes API, against the API server double in
//! `common/kube_api.rs` driven by kube's own client.

mod common;

use std::collections::BTreeMap;

use common::kube_api::KubeApi;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::json;
use threatflow::feeds::render::{self, render, PolicySettings, RenderSettings};
use threatflow::k8s::apply::{Adopt, KubernetesTarget, ObjectKind, Target};
use threatflow::k8s::leader::Leadership;
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

const FEED_KINDS: [ObjectKind; 2] = [ObjectKind::NetworkSet, ObjectKind::Policy];

fn settings() -> RenderSettings {
    RenderSettings {
        shard_max_nets: 10_000,
        policy: Some(PolicySettings {
            tier: "security".into(),
            order: 0.0,
            tier_order: 100.0,
        }),
        ..RenderSettings::default()
    }
}

#[tokio::test]
async fn the_target_applies_only_changes_and_deletes_only_its_own_objects() {
    let api = KubeApi::start().await;
    // Objects threatflow does not own, or owns for another feed.
    api.seed("globalnetworksets", json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet", "metadata": {"name": "threatfeed.test.9", "labels": {"security-action": "block"}}, "spec": {"nets": ["9.9.9.9/32"]}}));
    api.seed("globalnetworksets", json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet", "metadata": {"name": "threatfeed.other", "labels": {"app.kubernetes.io/managed-by": "threatflow", "threatflow.io/feed": "other"}}, "spec": {"nets": []}}));
    let target = Target::Kubernetes(KubernetesTarget::new(api.client()));
    let leader = Leadership::always();
    let labels: BTreeMap<String, String> =
        [("security-action".to_owned(), "block".to_owned())].into();
    let ownership = render::ownership("test");

    let big = render("test", &labels, &set_of(50_000), &settings());
    let report = target
        .sync(&ownership, &FEED_KINDS, &big.objects, Adopt::Never, &leader)
        .await
        .unwrap();
    assert_eq!((report.written, report.deleted), (big.shards + 1, 0));
    assert!(report.conflicts.is_empty());
    assert_eq!(target.owned_nets(&ownership).await.unwrap(), 50_000);
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
    let report = target
        .sync(&ownership, &FEED_KINDS, &big.objects, Adopt::Never, &leader)
        .await
        .unwrap();
    assert_eq!(
        (report.written, report.unchanged, report.deleted),
        (0, big.shards + 1, 0)
    );
    assert!(
        api.requests()
            .iter()
            .all(|(method, path)| method == "GET" && path.ends_with("(metadata)")),
        "a re-sync lists metadata only and writes nothing: {:?}",
        api.requests()
    );

    // A smaller feed: stale shards go; objects threatflow does not own for this feed stay.
    let small = render("test", &labels, &set_of(100), &settings());
    let report = target
        .sync(
            &ownership,
            &FEED_KINDS,
            &small.objects,
            Adopt::Never,
            &leader,
        )
        .await
        .unwrap();
    assert_eq!(report.deleted, big.shards - 1);
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

#[tokio::test]
async fn a_foreign_object_named_like_a_rendered_shard_is_refused_never_taken_over_or_deleted() {
    let api = KubeApi::start().await;
    // Someone else's set, named exactly like shard 3 of feed `test`, made with kubectl.
    let foreign = json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
        "metadata": {"name": "threatfeed.test.3", "labels": {"team": "netops"},
            "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}]},
        "spec": {"nets": ["192.0.2.0/24"]}});
    api.seed("globalnetworksets", foreign);
    let target = Target::Kubernetes(KubernetesTarget::new(api.client()));
    let leader = Leadership::always();
    let ownership = render::ownership("test");
    let big = render("test", &BTreeMap::new(), &set_of(50_000), &settings());
    assert!(big.shards > 3, "the feed renders a shard of that name");
    let report = target
        .sync(&ownership, &FEED_KINDS, &big.objects, Adopt::Never, &leader)
        .await
        .unwrap();
    assert_eq!(report.conflicts.len(), 1, "{report:?}");
    let conflict = &report.conflicts[0];
    assert_eq!(
        (conflict.kind, conflict.name.as_str()),
        ("GlobalNetworkSet", "threatfeed.test.3")
    );
    assert_eq!(
        conflict.owner,
        "field managers: kubectl-client-side-apply; labels: team=netops"
    );
    assert_eq!(
        report.written, big.shards,
        "the other shards and the policy"
    );
    let untouched = |api: &KubeApi| {
        let set = api.get("globalnetworksets", "threatfeed.test.3").unwrap();
        assert_eq!(set["spec"]["nets"], json!(["192.0.2.0/24"]));
        assert_eq!(set["metadata"]["labels"], json!({"team": "netops"}));
    };
    untouched(&api);
    assert!(
        !api.requests()
            .iter()
            .any(|(method, path)| method != "GET" && path.ends_with("/threatfeed.test.3")),
        "nothing was sent for the foreign object: {:?}",
        api.requests()
    );
    // The feed shrinks to one shard: threatflow deletes its own shards, never the foreign one.
    let small = render("test", &BTreeMap::new(), &set_of(10), &settings());
    let report = target
        .sync(
            &ownership,
            &FEED_KINDS,
            &small.objects,
            Adopt::Never,
            &leader,
        )
        .await
        .unwrap();
    assert_eq!(report.deleted, big.shards - 2);
    untouched(&api);
    let mut names = api.names("globalnetworksets");
    names.sort();
    assert_eq!(names, ["threatfeed.test", "threatfeed.test.3"]);
}

#[tokio::test]
async fn calico_enterprise_sets_are_adopted_only_when_switched_on() {
    let api = KubeApi::start().await;
    api.seed("globalnetworksets", json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
        "metadata": {"name": "threatfeed.feodo", "labels": {"tigera.io/creator": "intrusion-detection-controller", "security-action": "block"},
            "managedFields": [{"manager": "intrusion-detection-controller", "operation": "Update"}]},
        "spec": {"nets": ["198.51.100.7/32"]}}));
    let target = Target::Kubernetes(KubernetesTarget::new(api.client()));
    let leader = Leadership::always();
    let ownership = render::ownership("feodo");
    let rendered = render(
        "feodo",
        &BTreeMap::new(),
        &set_of(3),
        &RenderSettings::default(),
    );
    let refused = target
        .sync(
            &ownership,
            &FEED_KINDS,
            &rendered.objects,
            Adopt::Never,
            &leader,
        )
        .await
        .unwrap();
    assert_eq!(refused.conflicts.len(), 1);
    assert_eq!(
        api.get("globalnetworksets", "threatfeed.feodo").unwrap()["spec"]["nets"],
        json!(["198.51.100.7/32"])
    );
    let adopted = target
        .sync(
            &ownership,
            &FEED_KINDS,
            &rendered.objects,
            Adopt::CalicoEnterpriseThreatFeeds,
            &leader,
        )
        .await
        .unwrap();
    assert_eq!((adopted.adopted, adopted.written), (1, 1));
    let set = api.get("globalnetworksets", "threatfeed.feodo").unwrap();
    assert_eq!(set["metadata"]["labels"]["threatflow.io/feed"], "feodo");
    assert_eq!(set["spec"]["nets"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn the_tier_is_created_when_missing_and_a_foreign_one_is_left_as_it_is() {
    let api = KubeApi::start().await;
    let target = Target::Kubernetes(KubernetesTarget::new(api.client()));
    let leader = Leadership::always();
    let tier = render::tier(settings().policy.as_ref().unwrap());
    let report = target
        .ensure(&render::tier_ownership(), &tier, &leader)
        .await
        .unwrap();
    assert_eq!(report.written, 1);
    let stored = api.get("tiers", "security").unwrap();
    assert_eq!(
        stored["spec"],
        json!({"order": 100.0, "defaultAction": "Pass"})
    );
    assert_eq!(
        stored["metadata"]["labels"]["threatflow.io/component"],
        "feeds"
    );
    let again = target
        .ensure(&render::tier_ownership(), &tier, &leader)
        .await
        .unwrap();
    assert_eq!((again.written, again.unchanged), (0, 1));

    let other = KubeApi::start().await;
    other.seed(
        "tiers",
        json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
        "metadata": {"name": "security"}, "spec": {"order": 5.0}}),
    );
    let target = Target::Kubernetes(KubernetesTarget::new(other.client()));
    let report = target
        .ensure(&render::tier_ownership(), &tier, &leader)
        .await
        .unwrap();
    assert_eq!((report.written, report.conflicts.len()), (0, 1));
    assert_eq!(
        other.get("tiers", "security").unwrap()["spec"],
        json!({"order": 5.0})
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
    assert!(
        api.get("tiers", "security").is_some(),
        "the tier the policy names is created"
    );
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
