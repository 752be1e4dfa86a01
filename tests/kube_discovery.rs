//! API discovery and the egress identity CRDs of the Kubernetes API double, driven by kube's
//! own discovery and dynamic clients: which groups a cluster serves is how egress identity
//! tells its mechanisms apart, so the double must list exactly the installed groups, answer
//! `404` for the others, and serve an installed CRD like any other resource.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::kube_api::KubeApi;
use futures_util::{Stream, StreamExt, TryStreamExt};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, WatchEvent,
    WatchParams,
};
use kube::discovery::{self, Discovery, Scope};
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

/// A resource as its project defines it: (plural, kind, namespaced).
type Definition = (&'static str, &'static str, bool);

/// The egress groups as their projects define them: (group, version, resources).
const EGRESS_GROUPS: &[(&str, &str, &[Definition])] = &[
    (
        "operator.tigera.io",
        "v1",
        &[("egressgateways", "EgressGateway", true)],
    ),
    (
        "cilium.io",
        "v2",
        &[
            (
                "ciliumegressgatewaypolicies",
                "CiliumEgressGatewayPolicy",
                false,
            ),
            ("ciliumnodes", "CiliumNode", false),
        ],
    ),
    (
        "isovalent.com",
        "v1",
        &[(
            "isovalentegressgatewaypolicies",
            "IsovalentEgressGatewayPolicy",
            false,
        )],
    ),
    (
        "crd.antrea.io",
        "v1beta1",
        &[
            ("egresses", "Egress", false),
            ("externalippools", "ExternalIPPool", false),
        ],
    ),
    ("k8s.ovn.org", "v1", &[("egressips", "EgressIP", false)]),
    (
        "egressgateway.kubernetes.azure.com",
        "v1alpha1",
        &[(
            "staticgatewayconfigurations",
            "StaticGatewayConfiguration",
            true,
        )],
    ),
];

/// Calico Enterprise's egress resources, which share `projectcalico.org/v3` with the policy
/// resources every Calico cluster serves.
const CALICO_EGRESS: &[(&str, &str)] = &[
    ("egressgatewaypolicies", "EgressGatewayPolicy"),
    ("ippools", "IPPool"),
    ("felixconfigurations", "FelixConfiguration"),
];

const CALICO_POLICY: &[&str] = &[
    "globalnetworkpolicies",
    "globalnetworksets",
    "stagedglobalnetworkpolicies",
    "tiers",
];

/// What discovery found: (group, version, plural, kind, scope, verbs), sorted.
type Found = BTreeSet<(String, String, String, String, String, Vec<String>)>;

fn found(discovery: &Discovery) -> Found {
    let mut found = Found::new();
    for group in discovery.groups() {
        for version in group.versions() {
            for (resource, capabilities) in group.versioned_resources(version) {
                let scope = match capabilities.scope {
                    Scope::Namespaced => "Namespaced",
                    Scope::Cluster => "Cluster",
                };
                found.insert((
                    resource.group,
                    resource.version,
                    resource.plural,
                    resource.kind,
                    scope.to_owned(),
                    capabilities.operations,
                ));
            }
        }
    }
    found
}

fn group_names(discovery: &Discovery) -> Vec<String> {
    let mut names: Vec<String> = discovery
        .groups()
        .map(|group| group.name().to_owned())
        .collect();
    names.sort();
    names
}

/// The status code and reason of a failed API call.
fn api_status<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn egress_policy(name: &str, egress_ip: &str) -> Value {
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumEgressGatewayPolicy",
        "metadata": {"name": name},
        "spec": {
            "selectors": [{"podSelector": {"matchLabels": {"io.kubernetes.pod.namespace": "shop"}}}],
            "destinationCIDRs": ["0.0.0.0/0"],
            "egressGateway": {"nodeSelector": {"matchLabels": {"egress": "true"}}, "egressIP": egress_ip},
        },
    })
}

fn egress_ip_of(object: &DynamicObject) -> &str {
    object.data["spec"]["egressGateway"]["egressIP"]
        .as_str()
        .unwrap_or_default()
}

/// A raw GET, for what kube's typed calls cannot show: status and content type.
async fn get(api: &KubeApi, path: &str, accept: &str) -> (u16, String, Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::Client::new()
        .get(format!("{}{path}", api.url()))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.text().await.unwrap();
    (code, content_type, serde_json::from_str(&body).unwrap())
}

/// The next item of a stream, within 10 s.
async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an item in time")
        .expect("the stream goes on")
}

/// The next event of a raw watch that is not a bookmark (kube asks for bookmarks), or
/// `None` when the watch ends, within 10 s.
async fn next_change<S>(stream: &mut S) -> Option<WatchEvent<DynamicObject>>
where
    S: Stream<Item = kube::Result<WatchEvent<DynamicObject>>> + Unpin,
{
    let change = async {
        loop {
            let event = stream.try_next().await.expect("no watch error");
            if !matches!(event, Some(WatchEvent::Bookmark(_))) {
                return event;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), change)
        .await
        .expect("an event or the end in time")
}

#[tokio::test]
async fn discovery_lists_exactly_the_built_in_groups_at_first() {
    let api = KubeApi::start().await;
    let client = api.client();

    let core = client.list_core_api_versions().await.unwrap();
    assert_eq!(core.versions, ["v1"]);
    let groups = client.list_api_groups().await.unwrap();
    let names: Vec<&str> = groups
        .groups
        .iter()
        .map(|group| group.name.as_str())
        .collect();
    assert_eq!(names, ["projectcalico.org", "batch", "coordination.k8s.io"]);
    let calico = &groups.groups[0];
    assert_eq!(calico.versions.len(), 1);
    assert_eq!(calico.versions[0].group_version, "projectcalico.org/v3");
    assert_eq!(calico.versions[0].version, "v3");
    assert_eq!(calico.preferred_version.as_ref(), Some(&calico.versions[0]));

    // Open-source Calico: the policy resources, none of the Enterprise egress ones.
    let calico = client
        .list_api_group_resources("projectcalico.org/v3")
        .await
        .unwrap();
    assert_eq!(calico.group_version, "projectcalico.org/v3");
    let mut plurals: Vec<&str> = calico.resources.iter().map(|r| r.name.as_str()).collect();
    plurals.sort();
    assert_eq!(plurals, CALICO_POLICY);
    let network_set = calico
        .resources
        .iter()
        .find(|r| r.name == "globalnetworksets")
        .unwrap();
    assert_eq!(network_set.kind, "GlobalNetworkSet");
    assert_eq!(network_set.singular_name, "globalnetworkset");
    assert!(!network_set.namespaced);
    for verb in ["get", "list", "watch", "patch"] {
        assert!(network_set.verbs.iter().any(|v| v == verb), "{verb}");
    }
    let core = client.list_core_api_resources("v1").await.unwrap();
    let pods = core.resources.iter().find(|r| r.name == "pods").unwrap();
    assert!(pods.namespaced);
    let nodes = core.resources.iter().find(|r| r.name == "nodes").unwrap();
    assert!(!nodes.namespaced);

    let discovery = Discovery::new(client).run().await.unwrap();
    assert_eq!(
        group_names(&discovery),
        ["", "batch", "coordination.k8s.io", "projectcalico.org"]
    );
    let (pod, capabilities) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Pod"))
        .unwrap();
    assert_eq!(pod.plural, "pods");
    assert_eq!(capabilities.scope, Scope::Namespaced);
    let (lease, _) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"))
        .unwrap();
    assert_eq!(lease.plural, "leases");
}

#[tokio::test]
async fn an_absent_group_is_not_found_and_not_listed() {
    let api = KubeApi::start().await;
    let client = api.client();
    for &(group, version, resources) in EGRESS_GROUPS {
        let group_version = format!("{group}/{version}");
        assert_eq!(
            api_status(client.list_api_group_resources(&group_version).await),
            (404, "NotFound".to_owned()),
            "{group_version}"
        );
        let (code, _, body) = get(&api, &format!("/apis/{group}"), "application/json").await;
        assert_eq!((code, body["kind"].as_str()), (404, Some("Status")));
        assert!(matches!(
            discovery::group(&client, group).await,
            Err(kube::Error::Discovery(
                kube::error::DiscoveryError::MissingApiGroup(_)
            ))
        ));
        // Nor is any of its resources served.
        for &(plural, kind, _) in resources {
            let objects: Api<DynamicObject> =
                Api::all_with(client.clone(), &resource(group, version, kind, plural));
            assert_eq!(
                api_status(objects.list(&ListParams::default()).await),
                (404, "NotFound".to_owned()),
                "{plural}"
            );
        }
    }
    // Calico without Enterprise: the group is there, its egress resources are not.
    for &(plural, kind) in CALICO_EGRESS {
        assert!(matches!(
            discovery::pinned_kind(
                &client,
                &GroupVersionKind::gvk("projectcalico.org", "v3", kind)
            )
            .await,
            Err(kube::Error::Discovery(
                kube::error::DiscoveryError::MissingKind(_)
            ))
        ));
        let objects: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &resource("projectcalico.org", "v3", kind, plural),
        );
        assert_eq!(
            api_status(objects.list(&ListParams::default()).await),
            (404, "NotFound".to_owned()),
            "{plural}"
        );
    }
    // A version the group does not serve is not found either.
    assert_eq!(
        api_status(
            client
                .list_api_group_resources("projectcalico.org/v1")
                .await
        ),
        (404, "NotFound".to_owned())
    );
}

#[tokio::test]
async fn an_installed_group_is_discovered_until_it_is_uninstalled() {
    let api = KubeApi::start().await;
    let client = api.client();
    let built_in = found(&Discovery::new(client.clone()).run().await.unwrap());
    for &(group, version, resources) in EGRESS_GROUPS {
        api.install_group(group);
        let discovery = Discovery::new(client.clone()).run().await.unwrap();
        assert!(discovery.has_group(group), "{group}");
        let expected: Found = resources
            .iter()
            .map(|&(plural, kind, namespaced)| {
                let scope = if namespaced { "Namespaced" } else { "Cluster" };
                let verbs = [
                    "create", "delete", "get", "list", "patch", "update", "watch",
                ];
                (
                    group.to_owned(),
                    version.to_owned(),
                    plural.to_owned(),
                    kind.to_owned(),
                    scope.to_owned(),
                    verbs.map(str::to_owned).to_vec(),
                )
            })
            .collect();
        let added: Found = found(&discovery).difference(&built_in).cloned().collect();
        assert_eq!(added, expected, "{group}");
        let listed = client.list_api_groups().await.unwrap();
        let entry = listed.groups.iter().find(|g| g.name == group).unwrap();
        assert_eq!(
            entry.preferred_version.as_ref().unwrap().group_version,
            format!("{group}/{version}")
        );

        api.uninstall_group(group);
        let discovery = Discovery::new(client.clone()).run().await.unwrap();
        assert!(!discovery.has_group(group), "{group}");
        assert_eq!(found(&discovery), built_in);
    }
}

#[tokio::test]
async fn calico_enterprise_resources_join_the_calico_group_one_by_one() {
    let api = KubeApi::start().await;
    let client = api.client();
    let plurals = |list: k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList| {
        let mut plurals: Vec<String> = list.resources.into_iter().map(|r| r.name).collect();
        plurals.sort();
        plurals
    };

    api.install("egressgatewaypolicies");
    let listed = client
        .list_api_group_resources("projectcalico.org/v3")
        .await
        .unwrap();
    let mut expected: Vec<&str> = CALICO_POLICY.to_vec();
    expected.push("egressgatewaypolicies");
    expected.sort();
    assert_eq!(plurals(listed), expected);
    let ippools: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &resource("projectcalico.org", "v3", "IPPool", "ippools"),
    );
    assert_eq!(
        api_status(ippools.list(&ListParams::default()).await).0,
        404
    );

    api.install_group("projectcalico.org");
    let listed = client
        .list_api_group_resources("projectcalico.org/v3")
        .await
        .unwrap();
    let mut expected: Vec<&str> = CALICO_POLICY.to_vec();
    expected.extend(CALICO_EGRESS.iter().map(|(plural, _)| plural));
    expected.sort();
    assert_eq!(plurals(listed), expected);
    api.seed(
        "ippools",
        json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "egress-shop"}, "spec": {"cidr": "10.10.10.0/30", "natOutgoing": false}}),
    );
    let pools = ippools.list(&ListParams::default()).await.unwrap();
    assert_eq!(pools.items.len(), 1);
    assert_eq!(pools.items[0].data["spec"]["cidr"], "10.10.10.0/30");
    // The Enterprise operator's group is separate and still absent.
    assert_eq!(
        api_status(
            client
                .list_api_group_resources("operator.tigera.io/v1")
                .await
        )
        .0,
        404
    );
}

#[tokio::test]
async fn aggregated_discovery_finds_what_the_plain_one_does() {
    let api = KubeApi::start().await;
    let client = api.client();
    api.install_group("cilium.io");
    api.install_group("crd.antrea.io");
    api.install("felixconfigurations");

    let plain = Discovery::new(client.clone()).run().await.unwrap();
    api.clear_requests();
    let aggregated = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    assert_eq!(found(&aggregated), found(&plain));
    assert_eq!(
        group_names(&aggregated),
        [
            "",
            "batch",
            "cilium.io",
            "coordination.k8s.io",
            "crd.antrea.io",
            "projectcalico.org"
        ]
    );
    // Two requests, not one per group.
    let requests: Vec<String> = api.requests().into_iter().map(|(_, path)| path).collect();
    assert_eq!(requests, ["/apis (aggregated)", "/api (aggregated)"]);

    let (code, content_type, body) = get(
        &api,
        "/apis",
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        content_type,
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    assert_eq!(body["kind"], "APIGroupDiscoveryList");
    assert_eq!(body["apiVersion"], "apidiscovery.k8s.io/v2");
}

#[tokio::test]
async fn a_server_without_aggregated_discovery_answers_with_the_plain_list() {
    let api = KubeApi::start().await;
    let client = api.client();
    api.install_group("k8s.ovn.org");
    api.set_aggregated_discovery(false);

    let (code, content_type, body) = get(
        &api,
        "/apis",
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
    )
    .await;
    assert_eq!((code, content_type.as_str()), (200, "application/json"));
    assert_eq!(body["kind"], "APIGroupList");
    // kube reads the plain list as an aggregated one without any items: against such a
    // server `run_aggregated` succeeds and finds nothing, so detection must not rely on it
    // alone. The plain discovery still finds the group.
    let aggregated = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    assert_eq!(aggregated.groups().count(), 0);
    let plain = Discovery::new(client).run().await.unwrap();
    assert!(plain.has_group("k8s.ovn.org"));
}

#[tokio::test]
async fn a_dynamic_api_lists_and_watches_an_installed_crd() {
    let api = KubeApi::start().await;
    let client = api.client();
    api.install_group("cilium.io");
    api.seed(
        "ciliumegressgatewaypolicies",
        egress_policy("shop", "192.0.2.10"),
    );

    // The resource as discovery describes it, which is how a detector would build its Api.
    let (policies, capabilities) = discovery::pinned_kind(
        &client,
        &GroupVersionKind::gvk("cilium.io", "v2", "CiliumEgressGatewayPolicy"),
    )
    .await
    .unwrap();
    assert_eq!(policies.plural, "ciliumegressgatewaypolicies");
    assert_eq!(capabilities.scope, Scope::Cluster);
    let policies: Api<DynamicObject> = Api::all_with(client, &policies);
    let listed = policies.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].name_any(), "shop");
    assert_eq!(egress_ip_of(&listed.items[0]), "192.0.2.10");
    assert_eq!(
        listed.items[0].types.as_ref().unwrap().kind,
        "CiliumEgressGatewayPolicy"
    );

    // kube's watcher: the initial list, then the changes as they come.
    let mut watched = watcher::watcher(policies.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next(&mut watched).await.unwrap(), Event::Init));
    match next(&mut watched).await.unwrap() {
        Event::InitApply(policy) => assert_eq!(egress_ip_of(&policy), "192.0.2.10"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(next(&mut watched).await.unwrap(), Event::InitDone));
    // The raw watch from the listed version tells an addition from a change.
    let version = listed.metadata.resource_version.unwrap();
    let mut raw = policies
        .watch(&WatchParams::default(), &version)
        .await
        .unwrap()
        .boxed();

    api.seed(
        "ciliumegressgatewaypolicies",
        egress_policy("bank", "192.0.2.20"),
    );
    api.seed(
        "ciliumegressgatewaypolicies",
        egress_policy("shop", "192.0.2.11"),
    );
    match next_change(&mut raw).await.unwrap() {
        WatchEvent::Added(policy) => assert_eq!(policy.name_any(), "bank"),
        other => panic!("unexpected {other:?}"),
    }
    match next_change(&mut raw).await.unwrap() {
        WatchEvent::Modified(policy) => {
            assert_eq!(policy.name_any(), "shop");
            assert_eq!(egress_ip_of(&policy), "192.0.2.11");
        }
        other => panic!("unexpected {other:?}"),
    }
    match next(&mut watched).await.unwrap() {
        Event::Apply(policy) => assert_eq!(policy.name_any(), "bank"),
        other => panic!("unexpected {other:?}"),
    }
    match next(&mut watched).await.unwrap() {
        Event::Apply(policy) => assert_eq!(egress_ip_of(&policy), "192.0.2.11"),
        other => panic!("unexpected {other:?}"),
    }
    api.remove("ciliumegressgatewaypolicies", "bank");
    assert!(
        matches!(next(&mut watched).await.unwrap(), Event::Delete(policy) if policy.name_any() == "bank")
    );
}

#[tokio::test]
async fn a_namespaced_crd_is_served_per_namespace_and_takes_server_side_apply() {
    let api = KubeApi::start().await;
    let client = api.client();
    api.install_group("egressgateway.kubernetes.azure.com");
    let gateways = resource(
        "egressgateway.kubernetes.azure.com",
        "v1alpha1",
        "StaticGatewayConfiguration",
        "staticgatewayconfigurations",
    );
    for namespace in ["shop", "bank"] {
        api.seed(
            "staticgatewayconfigurations",
            json!({
                "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
                "kind": "StaticGatewayConfiguration",
                "metadata": {"name": "egress", "namespace": namespace},
                "spec": {"gatewayNodepoolName": "gwpool", "excludeCidrs": ["10.0.0.0/8"]},
                "status": {"egressIpPrefix": "203.0.113.16/30"},
            }),
        );
    }
    let in_shop: Api<DynamicObject> = Api::namespaced_with(client.clone(), "shop", &gateways);
    let listed = in_shop.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].namespace().as_deref(), Some("shop"));
    assert_eq!(
        listed.items[0].data["status"]["egressIpPrefix"],
        "203.0.113.16/30"
    );
    let everywhere: Api<DynamicObject> = Api::all_with(client.clone(), &gateways);
    assert_eq!(
        everywhere
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    let applied = json!({
        "apiVersion": "egressgateway.kubernetes.azure.com/v1alpha1",
        "kind": "StaticGatewayConfiguration",
        "metadata": {"name": "second", "namespace": "shop"},
        "spec": {"gatewayNodepoolName": "gwpool"},
    });
    in_shop
        .patch(
            "second",
            &PatchParams::apply("threatflow-test"),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap();
    assert_eq!(
        api.names("staticgatewayconfigurations"),
        ["bank/egress", "shop/egress", "shop/second"]
    );
    // An object that is not there is a NotFound named after its group.
    match in_shop.get("missing").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 404);
            assert_eq!(
                status.message,
                "staticgatewayconfigurations.egressgateway.kubernetes.azure.com \"missing\" not found"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn uninstalling_ends_open_watches_and_keeps_the_objects() {
    let api = KubeApi::start().await;
    let client = api.client();
    api.install_group("k8s.ovn.org");
    api.seed(
        "egressips",
        json!({"apiVersion": "k8s.ovn.org/v1", "kind": "EgressIP", "metadata": {"name": "shop"}, "spec": {"egressIPs": ["192.0.2.30"], "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}, "status": {"items": [{"node": "worker-1", "egressIP": "192.0.2.30"}]}}),
    );
    let egress_ips: Api<DynamicObject> = Api::all_with(
        client,
        &resource("k8s.ovn.org", "v1", "EgressIP", "egressips"),
    );
    let mut raw = egress_ips
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        next_change(&mut raw).await.unwrap(),
        WatchEvent::Added(_)
    ));

    api.uninstall_group("k8s.ovn.org");
    let after = next_change(&mut raw).await;
    assert!(after.is_none(), "the watch ends, got {after:?}");
    assert_eq!(
        api_status(egress_ips.list(&ListParams::default()).await),
        (404, "NotFound".to_owned())
    );

    api.install_group("k8s.ovn.org");
    let listed = egress_ips.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        listed.items[0].data["status"]["items"][0]["egressIP"],
        "192.0.2.30"
    );
}

#[tokio::test]
async fn a_streaming_list_ends_its_initial_events_with_a_bookmark() {
    let api = KubeApi::start().await;
    api.install_group("crd.antrea.io");
    api.seed(
        "egresses",
        json!({"apiVersion": "crd.antrea.io/v1beta1", "kind": "Egress", "metadata": {"name": "shop"}, "spec": {"appliedTo": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}, "externalIPPool": "egress-pool"}, "status": {"egressIP": "192.0.2.40", "egressNode": "worker-2"}}),
    );
    let egresses: Api<DynamicObject> = Api::all_with(
        api.client(),
        &resource("crd.antrea.io", "v1beta1", "Egress", "egresses"),
    );
    let mut watched =
        watcher::watcher(egresses, watcher::Config::default().streaming_lists()).boxed();
    assert!(matches!(next(&mut watched).await.unwrap(), Event::Init));
    match next(&mut watched).await.unwrap() {
        Event::InitApply(egress) => assert_eq!(egress.data["status"]["egressIP"], "192.0.2.40"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(next(&mut watched).await.unwrap(), Event::InitDone));
    api.seed(
        "egresses",
        json!({"apiVersion": "crd.antrea.io/v1beta1", "kind": "Egress", "metadata": {"name": "shop"}, "spec": {"externalIPPool": "egress-pool"}, "status": {"egressIP": "", "egressNode": ""}}),
    );
    match next(&mut watched).await.unwrap() {
        Event::Apply(egress) => assert_eq!(egress.data["status"]["egressIP"], ""),
        other => panic!("unexpected {other:?}"),
    }
}
