//! The firewall clients against the FortiGate and FortiManager doubles: what they send, how
//! they own objects, and how every fault the doubles inject ends (`fortinet-apis.md` §5).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::fortigate::{self as fgt, Fault};
use common::fortimanager as fmg;
use ipnet::IpNet;
use serde_json::json;
use threatflow::firewall::fortigate::{FortiGate, FortiGateSettings};
use threatflow::firewall::fortimanager::{FortiManager, FortiManagerSettings, Install};
use threatflow::firewall::{
    self, Applied, Credentials, Family, GroupSpec, Marker, OpOutcome, Plan, Target, TargetError,
};
use threatflow::net::http::HttpSettings;
use threatflow::net::tls::TlsSettings;

fn http(dir: &Path) -> HttpSettings {
    HttpSettings {
        timeout: Duration::from_secs(2),
        tls: TlsSettings {
            ca_file: Some(dir.join("ca.pem")),
            ..TlsSettings::default()
        },
        client: "test".into(),
        ..HttpSettings::default()
    }
}

fn fortigate_client(double: &fgt::FortiGate, dir: &Path, cluster: &str, key: &str) -> FortiGate {
    FortiGate::new(FortiGateSettings {
        url: double.url(),
        vdom: Some("root".into()),
        api_key: key.into(),
        http: http(dir),
        requests_per_second: 1000.0,
        group_max_members: 600,
        marker: Marker::new(cluster),
    })
    .unwrap()
}

fn fortimanager_client(
    double: &fmg::FortiManager,
    dir: &Path,
    credentials: Credentials,
    install: Vec<Install>,
) -> FortiManager {
    FortiManager::new(FortiManagerSettings {
        url: double.url(),
        adom: "root".into(),
        credentials,
        http: http(dir),
        requests_per_second: 1000.0,
        group_max_members: 600,
        marker: Marker::new("prod"),
        install,
        install_poll: Duration::from_millis(20),
        install_timeout: Duration::from_secs(5),
    })
    .unwrap()
}

/// A FortiManager in workspace mode.
fn workspace() -> fmg::Knobs {
    fmg::Knobs {
        workspace_mode: "normal".into(),
        ..fmg::Knobs::default()
    }
}

fn login() -> Credentials {
    Credentials::Login {
        user: "threatflow".into(),
        password: "fmg-password".into(),
    }
}

fn group(name: &str, family: Family, members: &[(&str, &str)]) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        family,
        members: members
            .iter()
            .map(|(name, net)| (name.to_string(), net.parse::<IpNet>().unwrap()))
            .collect(),
    }
}

/// One sync as the daemon does it: read, plan, apply.
async fn sync(
    target: &mut dyn Target,
    groups: &[GroupSpec],
) -> Result<(Plan, Applied), TargetError> {
    let actual = target.read().await?;
    let desired = firewall::desired(groups, target.limits(), "k8s.no-members");
    let plan = Plan::new(&desired, &actual);
    if plan.is_empty() {
        let error = target.publish().await.err();
        return Ok((
            plan,
            Applied {
                outcomes: Vec::new(),
                error,
            },
        ));
    }
    if let Err(error) = target.begin().await {
        return Ok((
            plan,
            Applied {
                outcomes: Vec::new(),
                error: Some(error),
            },
        ));
    }
    let mut applied = target.apply(&plan).await;
    let kept = target.finish(applied.error.is_none()).await;
    applied.error = applied.error.or(kept.err());
    if applied.error.is_none() {
        applied.error = target.publish().await.err();
    }
    Ok((plan, applied))
}

fn outcomes(plan: &Plan, applied: &Applied) -> BTreeMap<String, OpOutcome> {
    applied
        .outcomes
        .iter()
        .map(|(index, outcome)| (plan.ops[*index].to_string(), outcome.clone()))
        .collect()
}

fn web() -> Vec<GroupSpec> {
    vec![
        group(
            "web",
            Family::V4,
            &[
                ("k8s.shop.web-1", "10.0.0.1/32"),
                ("k8s.shop.web-2", "10.0.0.2/32"),
            ],
        ),
        group(
            "web.v6",
            Family::V6,
            &[("k8s.shop.web-1.v6", "fd00::1/128")],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortigate_objects_are_written_with_a_bearer_key_and_nothing_is_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let double = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;
    let mut client = fortigate_client(&double, dir.path(), "prod", "fgt-key");
    let (plan, applied) = sync(&mut client, &web()).await.unwrap();
    assert!(applied.error.is_none(), "{applied:?}");
    assert_eq!(applied.outcomes.len(), 5);
    assert!(
        applied
            .outcomes
            .iter()
            .all(|(_, outcome)| *outcome == OpOutcome::Done),
        "{:?}",
        outcomes(&plan, &applied)
    );
    assert_eq!(
        double.members("addrgrp", "web"),
        ["k8s.shop.web-1", "k8s.shop.web-2"]
    );
    assert_eq!(double.members("addrgrp6", "web.v6"), ["k8s.shop.web-1.v6"]);
    let address = double.object("address", "k8s.shop.web-1").unwrap();
    assert_eq!(address["subnet"], "10.0.0.1 255.255.255.255");
    assert_eq!(address["comment"], Marker::new("prod").comment());
    assert_eq!(
        double.object("address6", "k8s.shop.web-1.v6").unwrap()["ip6"],
        "fd00::1/128"
    );

    // The same desired state again: reads only.
    double.server.clear();
    let (plan, applied) = sync(&mut client, &web()).await.unwrap();
    assert!(plan.is_empty() && applied.outcomes.is_empty());
    assert!(double.writes().is_empty(), "{:?}", double.writes());

    // A member leaves: one group update and one address delete, in that order.
    let smaller = vec![
        group("web", Family::V4, &[("k8s.shop.web-1", "10.0.0.1/32")]),
        web().remove(1),
    ];
    sync(&mut client, &smaller).await.unwrap();
    let writes: Vec<String> = double
        .writes()
        .iter()
        .map(|request| format!("{} {}", request.method, request.path()))
        .collect();
    assert_eq!(
        writes,
        [
            "PUT /api/v2/cmdb/firewall/addrgrp/web",
            "DELETE /api/v2/cmdb/firewall/address/k8s.shop.web-2",
        ]
    );
    for request in double.server.requests() {
        assert_eq!(request.header("authorization"), Some("Bearer fgt-key"));
        assert!(
            !request.target.contains("access_token"),
            "{}",
            request.target
        );
        assert_eq!(request.query("vdom").as_deref(), Some("root"));
    }
    assert!(double.purges().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_fortigate_holds_for_someone_else_are_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let double = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;
    // A hand-made address with a name threatflow wants, another cluster's objects, and a
    // group with the name of an address threatflow wants.
    double.seed(
        "address",
        json!({"name": "k8s.shop.web-1", "subnet": "192.0.2.1/32", "comment": "made by hand"}),
    );
    double.seed("address", json!({"name": "k8s.shop.other", "subnet": "10.9.9.9/32", "comment": Marker::new("staging").comment()}));
    double.seed("addrgrp", json!({"name": "web-staging", "member": [{"name": "k8s.shop.other"}], "comment": Marker::new("staging").comment()}));
    double.seed("addrgrp", json!({"name": "k8s.shop.web-2", "member": [{"name": "k8s.shop.other"}], "comment": "made by hand"}));
    let mut client = fortigate_client(&double, dir.path(), "prod", "fgt-key");
    assert!(
        client.read().await.unwrap().is_empty(),
        "nothing there is prod's"
    );
    // The addresses alone (the sync loop plans groups after them, without refused names).
    let desired = firewall::desired(&web()[..1], client.limits(), "x");
    let mut plan = Plan::new(&desired, &Default::default());
    plan.ops.retain(|op| op.object() == "address");
    let applied = client.apply(&plan).await;
    let outcomes = outcomes(&plan, &applied);
    assert_eq!(
        outcomes["create ipv4 address k8s.shop.web-1 = 10.0.0.1/32"],
        OpOutcome::Conflict {
            owner: Some("made by hand".into())
        }
    );
    let OpOutcome::Refused { reason } =
        &outcomes["create ipv4 address k8s.shop.web-2 = 10.0.0.2/32"]
    else {
        panic!("{outcomes:?}");
    };
    assert!(reason.contains("-163"), "{reason}");
    assert_eq!(
        double.object("address", "k8s.shop.web-1").unwrap()["subnet"],
        "192.0.2.1 255.255.255.255"
    );
    assert_eq!(
        double.object("address", "k8s.shop.web-1").unwrap()["comment"],
        "made by hand"
    );
    assert_eq!(double.members("addrgrp", "web-staging"), ["k8s.shop.other"]);
    assert!(double.object("address", "k8s.shop.other").is_some());
    // An empty desired state deletes nothing that is not prod's.
    sync(&mut client, &[]).await.unwrap();
    assert_eq!(
        double.names("address"),
        ["k8s.shop.other", "k8s.shop.web-1"]
    );
    assert_eq!(double.names("addrgrp"), ["k8s.shop.web-2", "web-staging"]);
    assert!(double.purges().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_groups_follow_the_fortios_version_and_in_use_deletes_wait() {
    let dir = tempfile::tempdir().unwrap();
    let double = fgt::FortiGate::start(
        dir.path(),
        fgt::Knobs {
            version: "v7.0.12".into(),
            ..fgt::Knobs::default()
        },
    )
    .await;
    let mut client = fortigate_client(&double, dir.path(), "prod", "fgt-key");
    let (plan, applied) = sync(&mut client, &[group("idle", Family::V4, &[])])
        .await
        .unwrap();
    assert!(
        applied.error.is_none() && applied.outcomes.iter().all(|(_, o)| *o == OpOutcome::Done),
        "{:?}",
        outcomes(&plan, &applied)
    );
    assert_eq!(double.members("addrgrp", "idle"), ["k8s.no-members"]);
    assert_eq!(
        double.object("address", "k8s.no-members").unwrap()["subnet"],
        "0.0.0.0 255.255.255.255"
    );

    // After an upgrade to 7.2 the group may be empty: the placeholder goes.
    double.set_version("v7.2.8");
    let (plan, _) = sync(&mut client, &[group("idle", Family::V4, &[])])
        .await
        .unwrap();
    assert_eq!(
        plan.ops.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "update ipv4 group idle (0 members)",
            "delete ipv4 address k8s.no-members"
        ]
    );
    assert!(double.members("addrgrp", "idle").is_empty());

    // A firewall policy refers to a group threatflow no longer wants: the delete waits (-23).
    double.seed("policy", json!({"name": "to-idle", "policyid": 1, "dstaddr": [{"name": "idle"}], "comment": "firewall team"}));
    let (plan, applied) = sync(&mut client, &[]).await.unwrap();
    assert_eq!(
        outcomes(&plan, &applied)["delete ipv4 group idle"],
        OpOutcome::InUse
    );
    assert!(double.object("addrgrp", "idle").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortigate_faults_end_in_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let knobs = fgt::Knobs {
        untrusted_keys: vec!["untrusted".into()],
        keys: vec!["fgt-key".into(), "untrusted".into()],
        lockout_after: 3,
        ..fgt::Knobs::default()
    };
    let double = fgt::FortiGate::start(dir.path(), knobs).await;
    let mut good = fortigate_client(&double, dir.path(), "prod", "fgt-key");
    for (fault, kind) in [
        (Fault::Html(502), "unavailable"),
        (Fault::Html(503), "unavailable"),
        (Fault::Reset, "unavailable"),
        (Fault::Delay(Duration::from_secs(5)), "unavailable"),
    ] {
        double.inject([fault.clone()]);
        let error = good.read().await.unwrap_err();
        assert_eq!(error.kind(), kind, "{fault:?}: {error}");
    }
    // A write that fails on the way stops the apply; what took effect before is reported.
    let actual = good.read().await.unwrap();
    let plan = Plan::new(&firewall::desired(&web(), good.limits(), "x"), &actual);
    double.inject([Fault::Delay(Duration::ZERO), Fault::Reset]);
    let applied = good.apply(&plan).await;
    assert_eq!(applied.outcomes.len(), 1);
    assert_eq!(applied.error.unwrap().kind(), "unavailable");

    let error = fortigate_client(&double, dir.path(), "prod", "untrusted")
        .read()
        .await
        .unwrap_err();
    assert!(matches!(error, TargetError::Forbidden(_)), "{error}");
    // Wrong keys: 401, then the source is locked out (429) for every request.
    let mut wrong = fortigate_client(&double, dir.path(), "prod", "wrong");
    for _ in 0..3 {
        let error = wrong.read().await.unwrap_err();
        assert!(
            matches!(error, TargetError::Unauthorized { status: 401, .. }),
            "{error}"
        );
    }
    let error = good.read().await.unwrap_err();
    assert_eq!(error.kind(), "throttled", "{error}");
}

/// What the double does with requests the client never sends: a key in the URL (refused as by
/// FortiOS 7.4.5), and a DELETE of a table URL (a purge, recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fortigate_double_refuses_url_tokens_and_records_table_purges() {
    let dir = tempfile::tempdir().unwrap();
    let double = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;
    double.seed("address", json!({"name": "a", "subnet": "10.0.0.1/32"}));
    double.seed("address", json!({"name": "b", "subnet": "10.0.0.2/32"}));
    double.seed("addrgrp", json!({"name": "g", "member": [{"name": "a"}]}));
    let client = common::http::client_trusting(dir.path());
    let response = client
        .get(format!(
            "{}/api/v2/cmdb/firewall/address?access_token=fgt-key",
            double.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "error=\"invalid_token\""
    );
    double.set_url_token(true);
    let response = client.get(format!("{}/api/v2/cmdb/firewall/address?access_token=fgt-key&filter=name==a,name==b&format=name", double.url())).send().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(
        body["results"],
        json!([{"name": "a"}, {"name": "b"}]),
        "{body}"
    );
    assert_eq!(body["http_status"], 200);
    assert_eq!(body["version"], "v7.4.5");
    let response = client
        .delete(format!("{}/api/v2/cmdb/firewall/address", double.url()))
        .bearer_auth("fgt-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        double.names("address"),
        ["a"],
        "the unreferenced address is purged"
    );
    assert_eq!(double.purges().len(), 1);
    let response = client
        .get(format!("{}/api/v2/cmdb/firewall/address/a/b", double.url()))
        .bearer_auth("fgt-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a literal / in a name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortimanager_changes_go_lock_write_commit_unlock() {
    let dir = tempfile::tempdir().unwrap();
    let double = fmg::FortiManager::start(dir.path(), workspace()).await;
    let mut client = fortimanager_client(&double, dir.path(), login(), Vec::new());
    let (plan, applied) = sync(&mut client, &web()).await.unwrap();
    assert!(applied.error.is_none(), "{:?}", applied.error);
    assert!(
        applied.outcomes.iter().all(|(_, o)| *o == OpOutcome::Done),
        "{:?}",
        outcomes(&plan, &applied)
    );
    assert_eq!(
        double.members("addrgrp", "web"),
        ["k8s.shop.web-1", "k8s.shop.web-2"]
    );
    assert_eq!(
        double.object("address", "k8s.shop.web-2").unwrap()["subnet"],
        json!(["10.0.0.2", "255.255.255.255"])
    );
    assert!(!double.is_locked());
    let calls: Vec<String> = double
        .calls()
        .iter()
        .map(|(method, url)| format!("{method} {url}"))
        .collect();
    let position = |call: &str| {
        calls
            .iter()
            .position(|c| c == call)
            .unwrap_or_else(|| panic!("{call} in {calls:?}"))
    };
    assert!(
        position("exec /dvmdb/adom/root/workspace/lock")
            < position("add /pm/config/adom/root/obj/firewall/address")
    );
    assert!(
        position("add /pm/config/adom/root/obj/firewall/addrgrp6")
            < position("exec /dvmdb/adom/root/workspace/commit")
    );
    assert!(
        position("exec /dvmdb/adom/root/workspace/commit")
            < position("exec /dvmdb/adom/root/workspace/unlock")
    );
    // Like operations share a call: two addresses in one request.
    let bodies: Vec<serde_json::Value> = double
        .server
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(
        bodies
            .iter()
            .any(|body| body["method"] == "add" && body["params"].as_array().unwrap().len() == 2),
        "{bodies:?}"
    );

    // Nothing changed: no lock, no write.
    double.server.clear();
    let (plan, _) = sync(&mut client, &web()).await.unwrap();
    assert!(plan.is_empty());
    assert!(
        double.writes().is_empty()
            && !double
                .calls()
                .iter()
                .any(|(_, url)| url.contains("workspace"))
    );
    client.close().await;
    assert_eq!(double.logouts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_by_another_admin_is_reported_and_never_broken() {
    let dir = tempfile::tempdir().unwrap();
    let double = fmg::FortiManager::start(dir.path(), workspace()).await;
    double.lock_as("alice");
    let mut client = fortimanager_client(&double, dir.path(), login(), Vec::new());
    let (_, applied) = sync(&mut client, &web()).await.unwrap();
    let error = applied.error.unwrap();
    assert_eq!(
        error,
        TargetError::Locked {
            by: "alice (session gui-session)".into()
        }
    );
    assert!(applied.outcomes.is_empty());
    assert!(
        double.writes().is_empty(),
        "nothing written without the lock"
    );
    assert!(double.is_locked(), "still alice's");
    double.release_lock();
    let (_, applied) = sync(&mut client, &web()).await.unwrap();
    assert!(applied.error.is_none());
    assert_eq!(double.members("addrgrp", "web").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_inside_the_workspace_unlocks_without_committing() {
    let dir = tempfile::tempdir().unwrap();
    let double = fmg::FortiManager::start(dir.path(), workspace()).await;
    let mut client = fortimanager_client(&double, dir.path(), login(), Vec::new());
    client.read().await.unwrap();
    let desired = firewall::desired(&web(), client.limits(), "x");
    let plan = Plan::new(&desired, &Default::default());
    client.begin().await.unwrap();
    assert!(double.is_locked());
    // The first write goes through; the second write's connection resets.
    double.inject([Fault::Delay(Duration::ZERO), Fault::Reset]);
    let applied = client.apply(&plan).await;
    assert_eq!(applied.error.unwrap().kind(), "unavailable");
    assert_eq!(applied.outcomes.len(), 2, "the first call's two addresses");
    client.finish(false).await.unwrap();
    assert!(double.names("address").is_empty(), "nothing committed");
    assert!(!double.is_locked(), "unlocked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_logs_in_again_and_api_keys_need_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let double = fmg::FortiManager::start(dir.path(), fmg::Knobs::default()).await;
    double.set_idle_timeout(Duration::from_millis(300));
    let mut client = fortimanager_client(&double, dir.path(), login(), Vec::new());
    client.read().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, applied) = sync(&mut client, &web()).await.unwrap();
    assert!(applied.error.is_none(), "{:?}", applied.error);
    let logins = double
        .calls()
        .iter()
        .filter(|(_, url)| url == "sys/login/user")
        .count();
    assert_eq!(logins, 2);

    let mut keyed = fortimanager_client(
        &double,
        dir.path(),
        Credentials::ApiKey("fmg-key".into()),
        Vec::new(),
    );
    assert_eq!(keyed.read().await.unwrap().len(), 5);
    let mut wrong = fortimanager_client(
        &double,
        dir.path(),
        Credentials::ApiKey("nope".into()),
        Vec::new(),
    );
    assert_eq!(wrong.read().await.unwrap_err().kind(), "unauthorized");
    let mut bad_password = fortimanager_client(
        &double,
        dir.path(),
        Credentials::Login {
            user: "threatflow".into(),
            password: "nope".into(),
        },
        Vec::new(),
    );
    let error = bad_password.read().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("login as threatflow: Login fail"),
        "{error}"
    );
    assert!(!error.to_string().contains("nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortimanager_installs_packages_and_retries_a_failed_install() {
    let dir = tempfile::tempdir().unwrap();
    let double = fmg::FortiManager::start(dir.path(), fmg::Knobs::default()).await;
    let install = vec![Install {
        package: "edge".into(),
        scope: vec![("FGT-EDGE-1".into(), "root".into())],
    }];
    let mut client = fortimanager_client(&double, dir.path(), login(), install);
    double.fail_next_install("-999 beyond the boundary");
    let (_, applied) = sync(&mut client, &web()).await.unwrap();
    let error = applied.error.unwrap();
    assert_eq!(error.kind(), "install");
    assert!(
        error
            .to_string()
            .contains("FGT-EDGE-1: -999 beyond the boundary"),
        "{error}"
    );
    assert!(client.has_pending_work());
    // Nothing left to write, but the install is tried again.
    let (plan, applied) = sync(&mut client, &web()).await.unwrap();
    assert!(plan.is_empty());
    assert!(applied.error.is_none(), "{:?}", applied.error);
    assert!(!client.has_pending_work());
    let tasks = double.tasks();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[1].package, "edge");
    assert_eq!(
        tasks[1].scope,
        json!([{"name": "FGT-EDGE-1", "vdom": "root"}])
    );
    assert_eq!(tasks[1].objects, 5, "installed after the commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fortimanager_owns_only_its_objects_and_leaves_referenced_ones() {
    let dir = tempfile::tempdir().unwrap();
    // A 7.4 manager whose ADOM is a 7.0 one: the ADOM's version decides about empty groups.
    let double = fmg::FortiManager::start(
        dir.path(),
        fmg::Knobs {
            adom_version: (7, 0),
            ..fmg::Knobs::default()
        },
    )
    .await;
    double.seed(
        "address",
        json!({"name": "k8s.shop.web-1", "subnet": "192.0.2.1/32", "comment": "hand-made"}),
    );
    double.seed("address", json!({"name": "k8s.other", "subnet": "10.9.9.9/32", "comment": Marker::new("staging").comment()}));
    let mut client = fortimanager_client(
        &double,
        dir.path(),
        Credentials::ApiKey("fmg-key".into()),
        Vec::new(),
    );
    let specs = vec![
        group("web", Family::V4, &[("k8s.shop.web-2", "10.0.0.2/32")]),
        group("idle", Family::V4, &[]),
    ];
    let (plan, applied) = sync(&mut client, &specs).await.unwrap();
    assert!(
        applied.outcomes.iter().all(|(_, o)| *o == OpOutcome::Done),
        "{:?}",
        outcomes(&plan, &applied)
    );
    assert_eq!(
        double.members("addrgrp", "idle"),
        ["k8s.no-members"],
        "7.0 needs a member"
    );
    let (plan, applied) = sync(
        &mut client,
        &[group(
            "web",
            Family::V4,
            &[("k8s.shop.web-1", "10.0.0.1/32")],
        )],
    )
    .await
    .unwrap();
    let outcomes = outcomes(&plan, &applied);
    assert_eq!(
        outcomes["create ipv4 address k8s.shop.web-1 = 10.0.0.1/32"],
        OpOutcome::Conflict {
            owner: Some("hand-made".into())
        }
    );
    assert_eq!(
        double.object("address", "k8s.shop.web-1").unwrap()["comment"],
        "hand-made"
    );
    assert!(double.object("address", "k8s.other").is_some());
    // A rule in a policy package refers to a group threatflow no longer wants: it stays.
    double.reference("web");
    let (plan, applied) = sync(&mut client, &[]).await.unwrap();
    let outcomes: BTreeMap<String, OpOutcome> = applied
        .outcomes
        .iter()
        .map(|(i, o)| (plan.ops[*i].to_string(), o.clone()))
        .collect();
    assert_eq!(outcomes["delete ipv4 group web"], OpOutcome::InUse);
    assert!(double.object("addrgrp", "web").is_some());
    assert!(double.object("addrgrp", "idle").is_none());
    let names: BTreeSet<String> = double.names("address").into_iter().collect();
    assert!(
        names.contains("k8s.shop.web-1") && names.contains("k8s.other"),
        "{names:?}"
    );
}

/// Between reads the sync works from what it last saw; an object deleted by hand and its name
/// taken since is never updated or deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_taken_over_since_the_last_read_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let fortigate = fgt::FortiGate::start(dir.path(), fgt::Knobs::default()).await;
    let fortimanager = fmg::FortiManager::start(dir.path(), fmg::Knobs::default()).await;
    let mut targets: Vec<Box<dyn Target>> = vec![
        Box::new(fortigate_client(&fortigate, dir.path(), "prod", "fgt-key")),
        Box::new(fortimanager_client(
            &fortimanager,
            dir.path(),
            login(),
            Vec::new(),
        )),
    ];
    let two = vec![group(
        "web",
        Family::V4,
        &[("a", "10.0.0.1/32"), ("b", "10.0.0.2/32")],
    )];
    for target in &mut targets {
        let (_, applied) = sync(target.as_mut(), &two).await.unwrap();
        assert!(applied.error.is_none());
    }
    let seen: Vec<_> = {
        let mut seen = Vec::new();
        for target in &mut targets {
            seen.push(target.read().await.unwrap());
        }
        seen
    };
    // An admin replaces both addresses with objects of their own.
    fortigate.remove("addrgrp", "web");
    fortigate.remove("address", "a");
    fortigate.remove("address", "b");
    fortigate.seed(
        "address",
        json!({"name": "a", "subnet": "192.0.2.1/32", "comment": "hand"}),
    );
    fortigate.seed(
        "address",
        json!({"name": "b", "subnet": "192.0.2.2/32", "comment": "hand"}),
    );
    for name in ["a", "b"] {
        fortimanager.seed(
            "address",
            json!({"name": name, "subnet": "192.0.2.9/32", "comment": "hand"}),
        );
    }
    // The next plan, from what was last seen: update a, delete b.
    let changed = vec![group("web", Family::V4, &[("a", "10.0.0.9/32")])];
    for (target, seen) in targets.iter_mut().zip(&seen) {
        let desired = firewall::desired(&changed, target.limits(), "x");
        let mut plan = Plan::new(&desired, seen);
        plan.ops.retain(|op| op.object() == "address");
        target.begin().await.unwrap();
        let applied = target.apply(&plan).await;
        target.finish(true).await.unwrap();
        let outcomes = outcomes(&plan, &applied);
        assert_eq!(
            outcomes["update ipv4 address a = 10.0.0.9/32"],
            OpOutcome::Conflict {
                owner: Some("hand".into())
            }
        );
        assert_eq!(
            outcomes["delete ipv4 address b"],
            OpOutcome::Conflict {
                owner: Some("hand".into())
            }
        );
    }
    assert_eq!(fortigate.object("address", "a").unwrap()["comment"], "hand");
    assert_eq!(
        fortigate.object("address", "b").unwrap()["subnet"],
        "192.0.2.2 255.255.255.255"
    );
    assert_eq!(
        fortimanager.object("address", "a").unwrap()["comment"],
        "hand"
    );
    assert!(fortimanager.object("address", "b").is_some());
}

/// A group larger than the device's member limit goes in as nested groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_beyond_the_member_limit_are_nested() {
    let dir = tempfile::tempdir().unwrap();
    let double = fgt::FortiGate::start(
        dir.path(),
        fgt::Knobs {
            max_group_members: 4,
            ..fgt::Knobs::default()
        },
    )
    .await;
    let mut client = FortiGate::new(FortiGateSettings {
        url: double.url(),
        vdom: None,
        api_key: "fgt-key".into(),
        http: http(dir.path()),
        requests_per_second: 1000.0,
        group_max_members: 4,
        marker: Marker::new("prod"),
    })
    .unwrap();
    let members: Vec<(String, String)> = (0..30)
        .map(|i| (format!("m{i}"), format!("10.0.0.{i}/32")))
        .collect();
    let members: Vec<(&str, &str)> = members
        .iter()
        .map(|(name, net)| (name.as_str(), net.as_str()))
        .collect();
    let (plan, applied) = sync(&mut client, &[group("big", Family::V4, &members)])
        .await
        .unwrap();
    assert!(applied.error.is_none());
    assert!(
        applied.outcomes.iter().all(|(_, o)| *o == OpOutcome::Done),
        "{:?}",
        outcomes(&plan, &applied)
    );
    fn leaves(double: &fgt::FortiGate, name: &str, out: &mut Vec<String>) {
        let members = double.members("addrgrp", name);
        if members.is_empty() {
            out.push(name.to_owned());
        }
        assert!(members.len() <= 4);
        for member in members {
            leaves(double, &member, out);
        }
    }
    let mut found = Vec::new();
    leaves(&double, "big", &mut found);
    found.sort();
    let mut expected: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(found, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_adom_workspace_is_locked_only_where_the_adom_asks() {
    let dir = tempfile::tempdir().unwrap();
    for (locked, expected) in [(false, 0), (true, 1)] {
        let knobs = fmg::Knobs {
            workspace_mode: "per-adom".into(),
            adom_workspace: locked,
            ..fmg::Knobs::default()
        };
        let double = fmg::FortiManager::start(dir.path(), knobs).await;
        let mut client = fortimanager_client(
            &double,
            dir.path(),
            Credentials::ApiKey("fmg-key".into()),
            Vec::new(),
        );
        let (_, applied) = sync(&mut client, &web()).await.unwrap();
        assert!(applied.error.is_none(), "{:?}", applied.error);
        let locks = double
            .calls()
            .iter()
            .filter(|(_, url)| url.ends_with("workspace/lock"))
            .count();
        assert_eq!(locks, expected);
        assert_eq!(double.members("addrgrp", "web").len(), 2);
    }
}
