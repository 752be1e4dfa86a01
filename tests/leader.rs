//! Leader election between two daemons against the Kubernetes API double: one leads and
//! publishes, the other stands by and writes nothing; when the leader dies, the other takes the
//! Lease once it expires and publishes the feed's current content.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::kube_api::KubeApi;

fn start(config: &Path, kubeconfig: &Path, identity: &str) -> Daemon {
    Daemon::spawn(&["run", "--config", config.to_str().unwrap()], |command| {
        command
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", "threatflow")
            .env_remove("KUBERNETES_SERVICE_HOST");
    })
}

async fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    common::eventually(what, Duration::from_secs(30), condition).await;
}

/// Writes (not reads) to the cluster by the client with `token`, leases aside.
fn cluster_writes(api: &KubeApi, token: &str) -> Vec<String> {
    api.callers()
        .into_iter()
        .filter(|(caller, method, path)| {
            caller == token && method != "GET" && !path.contains("/leases")
        })
        .map(|(_, method, path)| format!("{method} {path}"))
        .collect()
}

/// A replica's /status.
fn leader_status(port: u16) -> serde_json::Value {
    serde_json::from_str(&common::http_get(port, "/status").1).unwrap()
}

fn holder(api: &KubeApi) -> Option<String> {
    api.get("leases", "threatflow/threatflow")?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_publishes_and_the_other_takes_over_when_it_dies() {
    let api = KubeApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.txt");
    std::fs::write(&feed, "1.2.3.4\n").unwrap();
    // The same config but for each replica's telemetry port.
    let config = |name: &str| {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "feeds:\n  - {{name: demo, url: 'file://{}', period_secs: 3600}}\nfeed_settings:\n  publish: {{type: kubernetes}}\nleader_election: {{lease_duration_secs: 3, renew_deadline_secs: 2, retry_period_secs: 1}}\ntelemetry: {{listen_addr: \"127.0.0.1:0\"}}\n",
                feed.display()
            ),
        )
        .unwrap();
        path
    };
    let mut a = start(
        &config("a"),
        &api.kubeconfig_as(dir.path(), "a"),
        "replica-a",
    );
    wait_for("replica-a to lead and publish", || {
        holder(&api).as_deref() == Some("replica-a")
            && api.get("globalnetworksets", "threatfeed.demo").is_some()
    })
    .await;
    let b = start(
        &config("b"),
        &api.kubeconfig_as(dir.path(), "b"),
        "replica-b",
    );
    let port_b = b.telemetry_port();
    // B pulls the feed (for matching) and renews its view of the Lease, but never writes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(holder(&api).as_deref(), Some("replica-a"));
    assert!(
        api.callers()
            .iter()
            .any(|(caller, _, path)| caller == "b" && path.contains("/leases")),
        "replica-b is a candidate"
    );
    assert_eq!(
        cluster_writes(&api, "b"),
        Vec::<String>::new(),
        "a replica that does not lead writes nothing"
    );
    let status = leader_status(port_b);
    assert_eq!(status["leader"], false);
    assert_eq!(status["feeds"][0]["last_outcome"], "standby");
    assert!(!cluster_writes(&api, "a").is_empty());

    // The leader dies without releasing the Lease; the feed changes meanwhile.
    std::fs::write(&feed, "1.2.3.4\n5.6.7.8\n").unwrap();
    a.kill();
    let killed = Instant::now();
    let writes_by_a = cluster_writes(&api, "a").len();
    wait_for("replica-b to take over and publish the new content", || {
        api.get("globalnetworksets", "threatfeed.demo")
            .is_some_and(|set| {
                set["spec"]["nets"] == serde_json::json!(["1.2.3.4/32", "5.6.7.8/32"])
            })
    })
    .await;
    // Not before the Lease expired (3 s after replica-b last saw it renewed).
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "took over after {:?}",
        killed.elapsed()
    );
    let lease = api.get("leases", "threatflow/threatflow").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert!(!cluster_writes(&api, "b").is_empty());
    assert_eq!(cluster_writes(&api, "a").len(), writes_by_a);
    assert_eq!(leader_status(port_b)["leader"], true);
    // It synced on taking over, and then waits for its period, not pass after pass.
    let feed_calls = || {
        api.callers()
            .iter()
            .filter(|(caller, _, path)| caller == "b" && path.contains("globalnetworksets"))
            .count()
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = feed_calls();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(feed_calls(), settled, "no sync after the takeover's");

    // A leader that stops releases the Lease.
    b.terminate();
    assert_eq!(holder(&api), None, "released on shutdown");
}
