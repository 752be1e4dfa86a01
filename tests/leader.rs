//! Leader election between two daemons against the Kubernetes API double: one leads and
//! publishes, the other stands by and writes nothing; when the leader dies, the other takes the
//! Lease once it expires and publishes the feed's current content.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::kube_api::KubeApi;

fn start(config: &Path, kubeconfig: &Path, identity: &str) -> Child {
    Command::new(common::binary())
        .args(["run", "--config", config.to_str().unwrap()])
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", identity)
        .env("POD_NAMESPACE", "threatflow")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET /status HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap()
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
    let config = |name: &str, port: u16| {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "feeds:\n  - {{name: demo, url: 'file://{}', period_secs: 3600}}\nfeed_settings:\n  publish: {{type: kubernetes}}\nleader_election: {{lease_duration_secs: 3, renew_deadline_secs: 2, retry_period_secs: 1}}\ntelemetry: {{listen_addr: \"127.0.0.1:{port}\"}}\n",
                feed.display()
            ),
        )
        .unwrap();
        path
    };
    let port_b = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut a = start(
        &config("a", 0),
        &api.kubeconfig_as(dir.path(), "a"),
        "replica-a",
    );
    wait_for("replica-a to lead and publish", || {
        holder(&api).as_deref() == Some("replica-a")
            && api.get("globalnetworksets", "threatfeed.demo").is_some()
    })
    .await;
    let b = start(
        &config("b", port_b),
        &api.kubeconfig_as(dir.path(), "b"),
        "replica-b",
    );
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
    a.kill().unwrap();
    a.wait().unwrap();
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

    // A leader that stops releases the Lease.
    Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status()
        .unwrap();
    let output = b.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(holder(&api), None, "released on shutdown");
}
