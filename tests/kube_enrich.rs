//! In-cluster enrichment against the Kubernetes API double, through real watch streams: the
//! initial lists, live events (IP reuse, deletes, namespace labels, services, jobs), `410 Gone`
//! and the relist that deletes what disappeared meanwhile, bookmarks, and scoping.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::kube_api::KubeApi;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use threatflow::cluster::watch::{ClusterWatch, WatchMetrics};
use threatflow::cluster::{Cluster, SystemClock};
use threatflow::enrich::projection::{project, IndexMetrics};
use threatflow::enrich::{EndpointInfo, KubernetesEnrichment, LabelFilter, SharedIndex};
use threatflow::telemetry::Readiness;
use tokio_util::sync::CancellationToken;

pub fn pod(namespace: &str, name: &str, ips: &[&str], labels: Value) -> Value {
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "labels": labels,
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4096)},
            "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}]},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "web:1"}]},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": pod_ips}})
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn service(namespace: &str, name: &str, ip: &str, selector: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": selector}})
}

fn settings() -> KubernetesEnrichment {
    yaml_serde::from_str("{}").unwrap()
}

/// A running set of watches, with its metrics.
struct Watching {
    watch: Option<ClusterWatch>,
    cluster: Cluster,
    index: SharedIndex,
    registry: Registry,
    readiness: Readiness,
    stop: CancellationToken,
}

impl Watching {
    fn start(api: &KubeApi, settings: &KubernetesEnrichment) -> Watching {
        let mut registry = Registry::default();
        let metrics = WatchMetrics::register(&mut registry);
        let index_metrics = IndexMetrics::register(&mut registry);
        let readiness = Readiness::default();
        readiness.set_ready(true);
        let stop = CancellationToken::new();
        let cluster = Cluster::new(std::sync::Arc::new(SystemClock));
        let index = SharedIndex::default();
        project(
            &cluster,
            index.clone(),
            LabelFilter::default(),
            settings.scope(),
            Duration::from_secs(settings.grace_period_secs),
            index_metrics,
            stop.clone(),
        );
        let watch = ClusterWatch::start(
            api.client(),
            &settings.scope(),
            cluster.clone(),
            metrics,
            readiness.clone(),
            stop.clone(),
        );
        Watching {
            watch: Some(watch),
            cluster,
            index,
            registry,
            readiness,
            stop,
        }
    }

    async fn synced(&self) {
        tokio::time::timeout(Duration::from_secs(20), self.cluster.gate().wait())
            .await
            .expect("the initial lists were not synced");
    }

    fn endpoint(&self, ip: &str, at_ms: i64) -> Option<(EndpointInfo, bool)> {
        let index = self.index.read();
        index
            .endpoint(ip.parse::<IpAddr>().unwrap(), at_ms)
            .map(|found| ((**found.owner).clone(), found.released))
    }

    fn service(&self, ip: &str) -> Option<String> {
        let index = self.index.read();
        index
            .service(ip.parse().unwrap(), now_ms())
            .map(|service| format!("{}/{}", service.namespace, service.name))
    }

    /// The value of a metric series, e.g. `watch_relists_total{resource="pods"}`.
    fn metric(&self, series: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    async fn stop(mut self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.watch.take().unwrap().join())
            .await
            .expect("the watches stop");
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Polls `condition` until it holds, or fails after 20 s with `what`.
async fn eventually(what: &str, condition: impl FnMut() -> bool) {
    common::eventually(what, Duration::from_secs(20), condition).await;
}

/// The standard small cluster: namespace `shop`, node `node-a`, a dual-stack web pod selected
/// by service `web`, and a CronJob's pod.
fn seed_cluster(api: &KubeApi) {
    api.seed("namespaces", namespace("shop", json!({"team": "payments"})));
    api.seed(
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "labels": {"zone": "a"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}, {"type": "Hostname", "address": "node-a"}]}}),
    );
    let mut web = pod(
        "shop",
        "web-5bdcdd9c97-x2k4l",
        &["10.244.1.5", "fd00:10:244:1::5"],
        json!({"app": "web", "pod-template-hash": "5bdcdd9c97"}),
    );
    web["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5bdcdd9c97", "uid": "r1", "controller": true}]);
    api.seed("pods", web);
    let mut report = pod(
        "shop",
        "report-28930560-q8z7m",
        &["10.244.1.9"],
        json!({"job-name": "report-28930560"}),
    );
    report["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "report-28930560", "uid": "j1", "controller": true}]);
    api.seed("pods", report);
    api.seed(
        "jobs",
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "report-28930560", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "report", "uid": "c1", "controller": true}]},
            "spec": {"template": {"spec": {"containers": [{"name": "report", "image": "report:1"}]}}}}),
    );
    api.seed(
        "services",
        service("shop", "web", "10.96.0.20", json!({"app": "web"})),
    );
}

#[tokio::test]
async fn initial_lists_then_live_events_keep_the_index_in_step() {
    let api = KubeApi::start().await;
    seed_cluster(&api);
    let watching = Watching::start(&api, &settings());
    watching.synced().await;
    assert!(watching.readiness.is_ready());

    let (web, released) = watching.endpoint("fd00:10:244:1::5", now_ms()).unwrap();
    assert!(!released);
    assert_eq!(&*web.name, "web-5bdcdd9c97-x2k4l");
    assert_eq!(web.workload.as_deref(), Some("Deployment/web"));
    assert_eq!(web.node.as_deref(), Some("node-a"));
    assert_eq!(web.services, ["shop/web"]);
    assert_eq!(&*web.namespace_labels, ["team=payments"]);
    assert_eq!(
        watching.endpoint("10.244.1.5", now_ms()).unwrap().0.name,
        web.name,
        "both addresses of a dual-stack pod"
    );
    let (report, _) = watching.endpoint("10.244.1.9", now_ms()).unwrap();
    assert_eq!(report.workload.as_deref(), Some("CronJob/report"));
    assert_eq!(
        &*watching.endpoint("192.168.0.10", now_ms()).unwrap().0.name,
        "node-a"
    );
    assert_eq!(watching.service("10.96.0.20").as_deref(), Some("shop/web"));

    // A namespace label change reaches its pods.
    api.seed("namespaces", namespace("shop", json!({"team": "checkout"})));
    eventually("the new namespace labels", || {
        watching
            .endpoint("10.244.1.5", now_ms())
            .is_some_and(|(web, _)| *web.namespace_labels == ["team=checkout"])
    })
    .await;

    // A service removed, and another added.
    api.remove("services", "shop/web");
    eventually("the service gone from the pod", || {
        watching
            .endpoint("10.244.1.5", now_ms())
            .is_some_and(|(web, _)| web.services.is_empty())
    })
    .await;
    api.seed(
        "services",
        service("shop", "storefront", "10.96.0.30", json!({"app": "web"})),
    );
    eventually("the new service", || {
        watching
            .endpoint("10.244.1.5", now_ms())
            .is_some_and(|(web, _)| web.services == ["shop/storefront"])
    })
    .await;
    assert_eq!(
        watching.service("10.96.0.30").as_deref(),
        Some("shop/storefront")
    );

    // The pod deleted, its address reused by a new pod: flows stamped before the reuse
    // resolve to the old pod (a hit after delete), flows after it to the new one.
    let before_delete = now_ms();
    api.remove("pods", "shop/web-5bdcdd9c97-x2k4l");
    eventually("the delete", || {
        watching.endpoint("10.244.1.5", now_ms()).is_none()
    })
    .await;
    let (old, released) = watching.endpoint("10.244.1.5", before_delete).unwrap();
    assert_eq!((&*old.name, released), ("web-5bdcdd9c97-x2k4l", true));
    api.seed(
        "pods",
        pod(
            "shop",
            "api-6c4f8d7b9-k2m4n",
            &["10.244.1.5"],
            json!({"app": "api"}),
        ),
    );
    eventually("the new pod", || {
        watching
            .endpoint("10.244.1.5", now_ms())
            .is_some_and(|(pod, _)| &*pod.name == "api-6c4f8d7b9-k2m4n")
    })
    .await;
    assert_eq!(
        &*watching
            .endpoint("10.244.1.5", before_delete)
            .unwrap()
            .0
            .name,
        "web-5bdcdd9c97-x2k4l",
        "a late flow from before the reuse still names the old pod"
    );
    assert!(
        watching
            .endpoint("fd00:10:244:1::5", before_delete)
            .unwrap()
            .1,
        "the deleted pod's other address is released too"
    );

    assert!(watching.metric("watch_events_total{resource=\"pods\"}") >= 2.0);
    assert_eq!(watching.metric("objects{resource=\"pods\"}"), 2.0);
    watching.stop().await;
}

#[tokio::test]
async fn a_410_relists_and_deletes_what_disappeared_meanwhile() {
    let api = KubeApi::start().await;
    // No bookmarks: a quiet watch falls behind the compaction.
    api.set_watch_timing(Duration::from_secs(3600), Duration::from_secs(1));
    seed_cluster(&api);
    api.seed(
        "pods",
        pod("shop", "gone", &["10.244.1.7"], json!({"app": "batch"})),
    );
    let watching = Watching::start(&api, &settings());
    watching.synced().await;
    let synced_ms = now_ms();
    assert!(watching.endpoint("10.244.1.7", synced_ms).is_some());

    // The pod goes and the history is compacted: its DELETED event is lost for good, and the
    // watch, resuming from a version before the compaction, gets 410 Gone.
    api.remove_silently("pods", "shop/gone");
    api.compact();
    eventually("the relist", || {
        watching.metric("watch_relists_total{resource=\"pods\"}") >= 1.0
    })
    .await;
    eventually("the vanished pod released", || {
        watching.endpoint("10.244.1.7", now_ms()).is_none()
    })
    .await;
    assert_eq!(
        watching
            .endpoint("10.244.1.7", synced_ms)
            .map(|(pod, released)| (pod.name.to_string(), released)),
        Some(("gone".into(), true)),
        "released by the relist, kept for the grace period"
    );
    assert!(
        watching.readiness.is_ready(),
        "a relist keeps the index ready"
    );
    // The relisted watch follows new events.
    api.seed(
        "pods",
        pod("shop", "new", &["10.244.1.8"], json!({"app": "batch"})),
    );
    eventually("a pod after the relist", || {
        watching.endpoint("10.244.1.8", now_ms()).is_some()
    })
    .await;
    watching.stop().await;
}

#[tokio::test]
async fn bookmarks_keep_a_quiet_watch_from_relisting() {
    let api = KubeApi::start().await;
    api.set_watch_timing(Duration::from_millis(50), Duration::from_secs(1));
    seed_cluster(&api);
    let watching = Watching::start(&api, &settings());
    watching.synced().await;
    // Other resources move on while pods stay quiet; bookmarks carry the pods watch along.
    for i in 0..5 {
        api.seed(
            "services",
            service(
                "shop",
                &format!("s{i}"),
                &format!("10.96.1.{i}"),
                json!({"app": "x"}),
            ),
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    api.compact();
    // Let every watch reconnect at least once after the compaction.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    api.seed(
        "pods",
        pod("shop", "late", &["10.244.3.3"], json!({"app": "web"})),
    );
    eventually("the pod after the reconnect", || {
        watching.endpoint("10.244.3.3", now_ms()).is_some()
    })
    .await;
    assert_eq!(
        watching.metric("watch_relists_total{resource=\"pods\"}"),
        0.0
    );
    watching.stop().await;
}

#[tokio::test]
async fn namespace_and_label_scoping() {
    let api = KubeApi::start().await;
    seed_cluster(&api);
    api.seed("namespaces", namespace("other", json!({})));
    api.seed(
        "pods",
        pod("other", "elsewhere", &["10.244.9.9"], json!({"app": "web"})),
    );
    api.seed(
        "pods",
        pod("shop", "db-0", &["10.244.1.30"], json!({"app": "db"})),
    );
    let mut settings = settings();
    settings.namespace = Some("shop".into());
    settings.pod_label_selector = Some("app=web".into());
    let watching = Watching::start(&api, &settings);
    watching.synced().await;
    assert!(watching.endpoint("10.244.1.5", now_ms()).is_some());
    assert!(
        watching.endpoint("10.244.9.9", now_ms()).is_none(),
        "another namespace"
    );
    assert!(
        watching.endpoint("10.244.1.30", now_ms()).is_none(),
        "not selected"
    );
    assert_eq!(watching.metric("objects{resource=\"namespaces\"}"), 1.0);
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|(_, path)| path == "/api/v1/namespaces/shop/pods"),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|(_, path)| path == "/apis/batch/v1/namespaces/shop/jobs (metadata)"),
        "jobs are watched as metadata: {requests:?}"
    );
    watching.stop().await;
}

#[tokio::test]
async fn readiness_waits_for_every_initial_list() {
    let api = KubeApi::start().await;
    seed_cluster(&api);
    api.set_forbidden("services", true);
    let watching = Watching::start(&api, &settings());
    eventually("the other lists", || {
        watching.readiness.waiting_for().is_some_and(|waiting| {
            waiting == "kubernetes: waiting for the initial lists of services"
        })
    })
    .await;
    assert!(!watching.cluster.gate().is_open());
    eventually("a restart counted", || {
        watching.metric("watch_restarts_total{resource=\"services\"}") >= 1.0
    })
    .await;
    api.set_forbidden("services", false);
    watching.synced().await;
    assert!(watching.readiness.is_ready());
    watching.stop().await;
}

/// A Calico flow record from the web pod to the `web` service, stamped now.
fn flow_to_service(port: u16) -> String {
    let now = now_ms() / 1000;
    format!(
        r#"{{"start_time":{now},"end_time":{end},"source_ip":"10.244.1.5","source_name":"-","source_name_aggr":"-","source_namespace":"-","source_port":{port},"source_type":"wep","dest_ip":"10.96.0.20","dest_name":"-","dest_name_aggr":"-","dest_namespace":"-","dest_port":443,"dest_type":"net","proto":"tcp","action":"allow","reporter":"src","bytes_in":1,"bytes_out":2,"num_flows":1}}"#,
        end = now + 5
    ) + "\n"
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// The daemon holds records until the lists are in, then enriches them exactly as
/// `threatflow enrich --inventory` does from the same objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_holds_records_until_synced_and_agrees_with_the_offline_cli() {
    let api = KubeApi::start().await;
    seed_cluster(&api);
    api.set_forbidden("services", true);
    let dir = tempfile::tempdir().unwrap();
    let (log, out) = (dir.path().join("flows.log"), dir.path().join("out.cef"));
    let config = dir.path().join("threatflow.yaml");
    let yaml = format!(
        "cluster_name: test\n\
         sources:\n  - name: calico\n    type: file\n    file: {{path: {log}, poll_interval_ms: 20}}\n\
         sinks:\n  - {{name: out, type: file, format: cef, file: {{path: {out}}}}}\n\
         enrichment:\n  kubernetes: {{grace_period_secs: 60}}\n",
        log = log.display(),
        out = out.display(),
    );
    std::fs::write(&config, &yaml).unwrap();
    let lines: String = (1000..1010).map(flow_to_service).collect();
    std::fs::write(&log, &lines).unwrap();

    // In this process, against the double's client, on a telemetry port of its own.
    let daemon = common::daemon::InProcess::start(&yaml, Some(api.client())).await;
    let port = daemon.port;
    eventually_async("/readyz naming the missing list", || async {
        http_get(port, "/readyz").await
            == (
                503,
                "not ready: kubernetes: waiting for the initial lists of services\n".into(),
            )
    })
    .await;
    // The records are held, not forwarded without context.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read_to_string(&out).unwrap_or_default(), "");

    api.set_forbidden("services", false);
    eventually_async("the records", || async {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
            == 10
    })
    .await;
    assert_eq!(http_get(port, "/readyz").await.0, 200);
    let metrics = http_get(port, "/metrics").await.1;
    assert!(
        metrics.contains("threatflow_flow_index_lookups_total{outcome=\"hit\"} 10"),
        "{metrics}"
    );
    assert!(metrics.contains("threatflow_kubernetes_objects{resource=\"pods\"} 2"));
    let status: serde_json::Value =
        serde_json::from_str(&http_get(port, "/status").await.1).unwrap();
    assert_eq!(status["kubernetes"]["synced"], true, "{status}");
    assert_eq!(status["kubernetes"]["objects"]["pods"], 2, "{status}");
    let shown = std::process::Command::new(common::binary())
        .args(["status", "--addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("kubernetes: synced; 2 pods, 1 services, 1 nodes, 1 namespaces, 1 jobs"),
        "{shown}"
    );
    let report = daemon.stop().await;
    assert_eq!((report.records, report.undelivered), (10, 0));

    let daemon_output = std::fs::read_to_string(&out).unwrap();
    for line in daemon_output.lines() {
        let cef = common::parse_cef(line).unwrap();
        assert_eq!(cef.get("shost"), Some("web-5bdcdd9c97-x2k4l"), "{line}");
        assert!(line.contains("Deployment/web"), "{line}");
        assert!(line.contains("shop/web"), "{line}");
    }

    // The same objects as a `kubectl get ... -o json` file, through the offline CLI.
    let inventory = dir.path().join("inventory.json");
    std::fs::write(
        &inventory,
        api.list(&["pods", "services", "namespaces", "nodes", "jobs"])
            .to_string(),
    )
    .unwrap();
    let mut cli = std::process::Command::new(common::binary())
        .args(["enrich", "--config", config.to_str().unwrap()])
        .args(["--inventory", inventory.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    cli.stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let offline = cli.wait_with_output().unwrap();
    assert!(offline.status.success());
    assert_eq!(String::from_utf8(offline.stdout).unwrap(), daemon_output);
}

async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_deleted_pod_resolves_for_the_grace_period_then_is_evicted() {
    let api = KubeApi::start().await;
    seed_cluster(&api);
    let mut settings = settings();
    settings.grace_period_secs = 1;
    let watching = Watching::start(&api, &settings);
    watching.synced().await;
    let before_delete = now_ms();
    api.remove("pods", "shop/web-5bdcdd9c97-x2k4l");
    eventually("the delete", || {
        watching.endpoint("10.244.1.5", now_ms()).is_none()
    })
    .await;
    assert!(
        watching.endpoint("10.244.1.5", before_delete).is_some(),
        "a late flow within the grace period"
    );
    eventually("the eviction", || {
        watching.endpoint("10.244.1.5", before_delete).is_none()
    })
    .await;
    assert!(watching
        .endpoint("fd00:10:244:1::5", before_delete)
        .is_none());
    eventually("the gauges", || {
        watching.metric("index_addresses{kind=\"released\"}") == 0.0
    })
    .await;
    watching.stop().await;
}
