//! In-cluster enrichment: one kube-runtime watch per resource type (pods, services, nodes,
//! namespaces, jobs) keeps the cluster model, and through it the endpoint index, in step with
//! the API server. Never a GET per record or per pod.
//!
//! Objects are parsed into trimmed types ([`KubePod`], ...) that skip annotations, managed
//! fields and container specs unread; namespaces and jobs are watched as metadata only. Each
//! (re)list ends with a reconciliation: objects the list no longer has are deleted from the
//! model, so a missed delete event cannot leak. A timer evicts addresses released longer ago
//! than the grace period.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::config::KubernetesEnrichment;
use crate::enrich::cluster::{ClusterState, Kind, Seen};
use crate::enrich::inventory::{KubeJob, KubeNamespace, KubeNode, KubePod, KubeService};
use crate::enrich::{LabelFilter, SharedIndex, SyncGate};
use crate::telemetry::Readiness;

/// Implements `kube::Resource` for a trimmed type by borrowing the resource identity of the
/// full `k8s-openapi` type.
macro_rules! trimmed_resource {
    ($trimmed:ty, $full:ty, $scope:ty, metadata_only: $metadata_only:expr) => {
        impl Resource for $trimmed {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
                <$full as Resource>::kind(dt)
            }
            fn group(dt: &()) -> std::borrow::Cow<'_, str> {
                <$full as Resource>::group(dt)
            }
            fn version(dt: &()) -> std::borrow::Cow<'_, str> {
                <$full as Resource>::version(dt)
            }
            fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
                <$full as Resource>::plural(dt)
            }
            fn metadata_api() -> bool {
                $metadata_only
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};

trimmed_resource!(KubePod, Pod, NamespaceResourceScope, metadata_only: false);
trimmed_resource!(KubeService, Service, NamespaceResourceScope, metadata_only: false);
trimmed_resource!(KubeNode, Node, ClusterResourceScope, metadata_only: false);
trimmed_resource!(KubeNamespace, Namespace, ClusterResourceScope, metadata_only: true);
trimmed_resource!(KubeJob, Job, NamespaceResourceScope, metadata_only: true);

/// A watched type: how it enters the model and how the model names it.
trait Watched: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static {
    const KIND: Kind;

    /// The object's key in [`ClusterState::keys`].
    fn key(&self) -> String {
        let meta = self.meta();
        let name = meta.name.as_deref().unwrap_or_default();
        match &meta.namespace {
            Some(namespace) => format!("{namespace}/{name}"),
            None => name.to_owned(),
        }
    }

    fn apply(self, state: &mut ClusterState, now_ms: i64, seen: Seen);
}

impl Watched for KubePod {
    const KIND: Kind = Kind::Pod;

    fn key(&self) -> String {
        let meta = self.meta();
        meta.uid.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            )
        })
    }

    fn apply(self, state: &mut ClusterState, now_ms: i64, seen: Seen) {
        state.apply_pod(self.into(), now_ms, seen);
    }
}

impl Watched for KubeService {
    const KIND: Kind = Kind::Service;

    fn apply(self, state: &mut ClusterState, now_ms: i64, seen: Seen) {
        state.apply_service(self.into(), now_ms, seen);
    }
}

impl Watched for KubeNode {
    const KIND: Kind = Kind::Node;

    fn apply(self, state: &mut ClusterState, now_ms: i64, seen: Seen) {
        state.apply_node(self.into(), now_ms, seen);
    }
}

impl Watched for KubeNamespace {
    const KIND: Kind = Kind::Namespace;

    fn apply(self, state: &mut ClusterState, _now_ms: i64, _seen: Seen) {
        state.apply_namespace(self.into());
    }
}

impl Watched for KubeJob {
    const KIND: Kind = Kind::Job;

    fn apply(self, state: &mut ClusterState, _now_ms: i64, _seen: Seen) {
        state.apply_job(self.into());
    }
}

/// The watches' shared view: the model, which kinds have been listed, and the gate the
/// processor waits on.
struct Shared {
    state: Mutex<ClusterState>,
    synced: Mutex<HashSet<Kind>>,
    gate: Arc<SyncGate>,
    readiness: Readiness,
    metrics: WatchMetrics,
}

impl Shared {
    fn listed(&self, kind: Kind) {
        let mut synced = self.synced.lock().expect("sync lock");
        if !synced.insert(kind) || self.gate.is_open() {
            return;
        }
        let missing: Vec<&str> = Kind::ALL
            .iter()
            .filter(|kind| !synced.contains(kind))
            .map(|kind| kind.plural())
            .collect();
        if missing.is_empty() {
            self.gate.open();
            self.readiness.done(READINESS_PART);
            tracing::info!(counts = ?self.state.lock().expect("model lock").counts(), "Kubernetes lists are in the index");
        } else {
            self.readiness
                .wait_for(READINESS_PART, waiting_for(&missing));
        }
    }

    fn update_gauges(&self) {
        let state = self.state.lock().expect("model lock");
        let counts = state.counts();
        let size = state.index().read().expect("index lock").size();
        drop(state);
        let metrics = &self.metrics;
        for (kind, count) in [
            (Kind::Pod, counts.pods),
            (Kind::Service, counts.services),
            (Kind::Node, counts.nodes),
            (Kind::Namespace, counts.namespaces),
            (Kind::Job, counts.jobs),
        ] {
            metrics
                .objects
                .get_or_create(&ResourceLabels {
                    resource: kind.plural(),
                })
                .set(count as i64);
        }
        for (kind, count) in [
            ("endpoint", size.endpoint_addresses),
            ("service", size.service_addresses),
            ("released", size.released_addresses),
        ] {
            metrics
                .addresses
                .get_or_create(&AddressLabels { kind })
                .set(count as i64);
        }
    }
}

const READINESS_PART: &str = "kubernetes";

fn waiting_for(missing: &[&str]) -> String {
    format!("waiting for the initial lists of {}", missing.join(", "))
}

/// The running watches.
pub struct ClusterWatch {
    pub index: SharedIndex,
    pub gate: Arc<SyncGate>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ClusterWatch {
    /// Starts the watches and the eviction timer; they run until `stop`.
    pub fn start(
        client: kube::Client,
        settings: &KubernetesEnrichment,
        labels: &LabelFilter,
        metrics: WatchMetrics,
        readiness: Readiness,
        stop: CancellationToken,
    ) -> ClusterWatch {
        let index = SharedIndex::default();
        let gate = Arc::new(SyncGate::default());
        readiness.wait_for(READINESS_PART, waiting_for(&Kind::ALL.map(Kind::plural)));
        let shared = Arc::new(Shared {
            state: Mutex::new(ClusterState::new(labels.clone(), index.clone())),
            synced: Mutex::default(),
            gate: gate.clone(),
            readiness,
            metrics,
        });
        let namespace = settings.namespace.as_deref();
        let (pods, services, jobs) = (
            scoped::<KubePod>(&client, namespace),
            scoped::<KubeService>(&client, namespace),
            scoped::<KubeJob>(&client, namespace),
        );
        let base = watcher::Config::default().any_semantic();
        let mut pod_config = base.clone();
        if let Some(selector) = &settings.pod_label_selector {
            pod_config = pod_config.labels(selector);
        }
        let mut namespace_config = base.clone();
        if let Some(namespace) = namespace {
            namespace_config = namespace_config.fields(&format!("metadata.name={namespace}"));
        }
        let tasks = vec![
            tokio::spawn(watch(pods, pod_config, shared.clone(), stop.clone())),
            tokio::spawn(watch(services, base.clone(), shared.clone(), stop.clone())),
            tokio::spawn(watch(jobs, base.clone(), shared.clone(), stop.clone())),
            tokio::spawn(watch(
                Api::<KubeNode>::all(client.clone()),
                base.clone(),
                shared.clone(),
                stop.clone(),
            )),
            tokio::spawn(watch(
                Api::<KubeNamespace>::all(client),
                namespace_config,
                shared.clone(),
                stop.clone(),
            )),
            tokio::spawn(evict(
                shared.clone(),
                Duration::from_secs(settings.grace_period_secs),
                stop,
            )),
        ];
        ClusterWatch {
            index,
            gate,
            shared,
            tasks,
        }
    }

    /// The watches' state for `/status`: whether the initial lists are in (else what is
    /// missing), the objects in the model and the addresses in the index.
    pub fn status(&self) -> impl Fn() -> serde_json::Value + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || {
            let state = shared.state.lock().expect("model lock");
            let counts = state.counts();
            let size = state.index().read().expect("index lock").size();
            drop(state);
            let synced = shared.synced.lock().expect("sync lock");
            let missing: Vec<&str> = Kind::ALL
                .iter()
                .filter(|kind| !synced.contains(kind))
                .map(|kind| kind.plural())
                .collect();
            serde_json::json!({
                "synced": missing.is_empty(),
                "waiting_for": missing,
                "objects": {
                    "pods": counts.pods,
                    "services": counts.services,
                    "nodes": counts.nodes,
                    "namespaces": counts.namespaces,
                    "jobs": counts.jobs,
                },
                "addresses": {
                    "endpoint": size.endpoint_addresses,
                    "service": size.service_addresses,
                    "released": size.released_addresses,
                },
            })
        }
    }

    /// Waits for the watches to end (after their stop token is cancelled).
    pub async fn join(self) {
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a Kubernetes watch task failed");
            }
        }
    }
}

/// A namespaced resource's API: one namespace's, or every namespace's.
fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Follows one resource type until `stop`.
async fn watch<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let resource = K::KIND.plural();
    let labels = ResourceLabels { resource };
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    // Keys seen by the list in progress.
    let mut listing: Option<HashSet<String>> = None;
    let mut lists = 0u64;
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = stream.next() => item,
        };
        let Some(item) = item else {
            return;
        };
        let now_ms = now_ms();
        match item {
            Err(error) => {
                shared.metrics.restarts.get_or_create(&labels).inc();
                tracing::warn!(resource, %error, "Kubernetes watch failed; it restarts after a backoff");
            }
            Ok(Event::Init) => {
                listing = Some(HashSet::new());
                if lists > 0 {
                    shared.metrics.relists.get_or_create(&labels).inc();
                    tracing::info!(resource, "relisting");
                }
                lists += 1;
            }
            Ok(Event::InitApply(object)) => {
                if let Some(listing) = &mut listing {
                    listing.insert(object.key());
                }
                object.apply(
                    &mut shared.state.lock().expect("model lock"),
                    now_ms,
                    Seen::Listed,
                );
            }
            Ok(Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                let mut state = shared.state.lock().expect("model lock");
                let gone: Vec<String> = state
                    .keys(K::KIND)
                    .into_iter()
                    .filter(|key| !listed.contains(key))
                    .collect();
                for key in &gone {
                    state.delete_key(K::KIND, key, now_ms);
                }
                drop(state);
                if !gone.is_empty() {
                    tracing::info!(
                        resource,
                        deleted = gone.len(),
                        "the list no longer has some objects; deleted them"
                    );
                }
                shared.listed(K::KIND);
                shared.update_gauges();
            }
            Ok(Event::Apply(object)) => {
                object.apply(
                    &mut shared.state.lock().expect("model lock"),
                    now_ms,
                    Seen::Live,
                );
                shared.metrics.events.get_or_create(&labels).inc();
            }
            Ok(Event::Delete(object)) => {
                shared
                    .state
                    .lock()
                    .expect("model lock")
                    .delete_key(K::KIND, &object.key(), now_ms);
                shared.metrics.events.get_or_create(&labels).inc();
            }
        }
    }
}

/// Evicts released addresses past the grace period, and refreshes the gauges.
async fn evict(shared: Arc<Shared>, grace: Duration, stop: CancellationToken) {
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(eviction_interval(grace));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                shared.state.lock().expect("model lock").evict(now_ms(), grace_ms);
                shared.update_gauges();
            }
        }
    }
}

/// A tenth of the grace period, between 100 ms and 30 s: an address outlives its grace by at
/// most that.
fn eviction_interval(grace: Duration) -> Duration {
    (grace / 10).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AddressLabels {
    kind: &'static str,
}

/// The watches' metrics.
#[derive(Clone, Debug, Default)]
pub struct WatchMetrics {
    objects: Family<ResourceLabels, Gauge>,
    addresses: Family<AddressLabels, Gauge>,
    events: Family<ResourceLabels, Counter>,
    restarts: Family<ResourceLabels, Counter>,
    relists: Family<ResourceLabels, Counter>,
}

impl WatchMetrics {
    pub fn register(registry: &mut Registry) -> WatchMetrics {
        let metrics = WatchMetrics::default();
        registry.register(
            "objects",
            "Objects in the cluster model, by resource",
            metrics.objects.clone(),
        );
        registry.register(
            "index_addresses",
            "Addresses in the endpoint index: endpoint (pods and nodes), service, and released (deleted pods kept for the grace period)",
            metrics.addresses.clone(),
        );
        registry.register(
            "watch_events",
            "Live watch events applied, by resource",
            metrics.events.clone(),
        );
        registry.register(
            "watch_restarts",
            "Watch failures after which the watch restarted with a backoff, by resource",
            metrics.restarts.clone(),
        );
        registry.register(
            "watch_relists",
            "Relists after the initial list (410 Gone, a lost connection), by resource",
            metrics.relists.clone(),
        );
        for kind in Kind::ALL {
            let labels = ResourceLabels {
                resource: kind.plural(),
            };
            drop(metrics.objects.get_or_create(&labels));
            drop(metrics.events.get_or_create(&labels));
            drop(metrics.restarts.get_or_create(&labels));
            drop(metrics.relists.get_or_create(&labels));
        }
        for kind in ["endpoint", "service", "released"] {
            drop(metrics.addresses.get_or_create(&AddressLabels { kind }));
        }
        metrics
    }
}
