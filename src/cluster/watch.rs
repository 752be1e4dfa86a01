//! Filling the model from the API server: one kube-runtime watch per resource type (pods,
//! services, nodes, namespaces, jobs), started once per process for every consumer, scoped to
//! the union of what the consumers ask for. Never a GET per object.
//!
//! Objects are parsed into trimmed types ([`KubePod`], ...) that skip annotations, managed
//! fields and container specs unread; namespaces and jobs are watched as metadata only. Each
//! (re)list ends with a reconciliation: objects the list no longer has are deleted from the
//! model, so a missed delete event cannot leak. When every initial list is in, the model's
//! gate opens and readiness clears.
//!
//! [`reflect`] watches kinds outside the model for the consumer that needs them whole.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::model::{Kind, Model, ObjectCounts, Seen};
use super::objects::{KubeJob, KubeNamespace, KubeNode, KubePod, KubeService};
use super::{Cluster, WatchScope};
use crate::k8s::calico::PolicySelector;
use crate::telemetry::{self, Readiness};

/// A reflector over a kind the model does not hold: its store, and the last error of its
/// watch (`None` once it lists or streams again).
pub struct Reflected {
    pub store: kube::runtime::reflector::Store<kube::api::DynamicObject>,
    pub error: Arc<Mutex<Option<String>>>,
}

/// Reflectors for kinds the model does not hold, for the one consumer that reads them (the
/// egress mechanisms' objects, for egress identities): one watch per kind, its objects kept
/// whole in the store, each change waking `changed`, until `stop`. A failing watch retries
/// with backoff; its error is logged and kept in [`Reflected::error`].
pub fn reflect(
    client: &kube::Client,
    kinds: Vec<kube::api::ApiResource>,
    changed: &Arc<tokio::sync::Notify>,
    stop: &CancellationToken,
) -> Vec<Reflected> {
    use kube::runtime::reflector;
    let mut reflected = Vec::new();
    for kind in kinds {
        let api = Api::<kube::api::DynamicObject>::all_with(client.clone(), &kind);
        let plural = kind.plural.clone();
        let writer = reflector::store::Writer::new(kind);
        let error = Arc::new(Mutex::new(None));
        reflected.push(Reflected {
            store: writer.as_reader(),
            error: error.clone(),
        });
        let stream =
            reflector(writer, watcher::watcher(api, watcher::Config::default())).default_backoff();
        let changed = changed.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    event = stream.next() => event,
                };
                match event {
                    Some(Ok(_)) => {
                        *error.lock() = None;
                        changed.notify_one();
                    }
                    Some(Err(failure)) => {
                        let text = telemetry::ErrorChain(&failure).to_string();
                        tracing::warn!(error = %text, resource = plural, "a watch failed; retrying");
                        *error.lock() = Some(text);
                        changed.notify_one();
                    }
                    None => return,
                }
            }
        });
    }
    reflected
}

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

    /// The object's key in [`Model::keys`].
    fn key(&self) -> String {
        let meta = self.meta();
        let name = meta.name.as_deref().unwrap_or_default();
        match &meta.namespace {
            Some(namespace) => format!("{namespace}/{name}"),
            None => name.to_owned(),
        }
    }

    fn apply(self, model: &mut Model, now_ms: i64, seen: Seen);
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

    fn apply(self, model: &mut Model, now_ms: i64, seen: Seen) {
        model.apply_pod(self.into(), now_ms, seen);
    }
}

impl Watched for KubeService {
    const KIND: Kind = Kind::Service;

    fn apply(self, model: &mut Model, now_ms: i64, seen: Seen) {
        model.apply_service(self.into(), now_ms, seen);
    }
}

impl Watched for KubeNode {
    const KIND: Kind = Kind::Node;

    fn apply(self, model: &mut Model, now_ms: i64, seen: Seen) {
        model.apply_node(self.into(), now_ms, seen);
    }
}

impl Watched for KubeNamespace {
    const KIND: Kind = Kind::Namespace;

    fn apply(self, model: &mut Model, now_ms: i64, seen: Seen) {
        model.apply_namespace(self.into(), now_ms, seen);
    }
}

impl Watched for KubeJob {
    const KIND: Kind = Kind::Job;

    fn apply(self, model: &mut Model, now_ms: i64, seen: Seen) {
        model.apply_job(self.into(), now_ms, seen);
    }
}

impl Watched for PolicySelector {
    const KIND: Kind = Kind::Policy;

    fn apply(self, model: &mut Model, now_ms: i64, seen: Seen) {
        model.apply_policy(self.into(), now_ms, seen);
    }
}

/// The watches' shared view: the model, and which kinds have been listed.
struct Shared {
    cluster: Cluster,
    /// The kinds watched.
    kinds: Vec<Kind>,
    synced: Mutex<HashSet<Kind>>,
    readiness: Readiness,
    metrics: WatchMetrics,
}

impl Shared {
    fn missing(&self) -> Vec<&'static str> {
        let synced = self.synced.lock();
        self.kinds
            .iter()
            .filter(|kind| !synced.contains(kind))
            .map(|kind| kind.plural())
            .collect()
    }

    fn status(&self) -> WatchStatus {
        let missing = self.missing();
        WatchStatus {
            synced: missing.is_empty(),
            waiting_for: missing,
            objects: self.cluster.read().counts(),
        }
    }

    fn listed(&self, kind: Kind) {
        if !self.synced.lock().insert(kind) || self.cluster.gate().is_open() {
            return;
        }
        let missing = self.missing();
        if missing.is_empty() {
            self.cluster.gate().open();
            self.readiness.done(READINESS_PART);
            tracing::info!(counts = ?self.cluster.read().counts(), "Kubernetes lists are in the model");
        } else {
            self.readiness
                .wait_for(READINESS_PART, waiting_for(&missing));
        }
    }

    fn update_gauges(&self) {
        let counts = self.cluster.read().counts();
        for (kind, count) in [
            (Kind::Pod, counts.pods),
            (Kind::Service, counts.services),
            (Kind::Node, counts.nodes),
            (Kind::Namespace, counts.namespaces),
            (Kind::Job, counts.jobs),
            (Kind::Policy, counts.policies),
        ] {
            self.metrics
                .objects
                .get_or_create(&ResourceLabels {
                    resource: kind.plural(),
                })
                .set(count as i64);
        }
    }
}

const READINESS_PART: &str = "kubernetes";

fn waiting_for(missing: &[&str]) -> String {
    format!("waiting for the initial lists of {}", missing.join(", "))
}

/// The watches' state, for `/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WatchStatus {
    /// Every initial list is in.
    pub synced: bool,
    /// The resources whose initial list is not in yet.
    pub waiting_for: Vec<&'static str>,
    /// Objects in the model.
    pub objects: ObjectCounts,
}

/// The running watches.
pub struct ClusterWatch {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ClusterWatch {
    /// Starts the watches, scoped to `scope`; they fill `cluster` until `stop`.
    pub fn start(
        client: kube::Client,
        scope: &WatchScope,
        cluster: Cluster,
        metrics: WatchMetrics,
        readiness: Readiness,
        stop: CancellationToken,
    ) -> ClusterWatch {
        let kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|kind| *kind != Kind::Policy || scope.policies)
            .collect();
        let plurals: Vec<&str> = kinds.iter().map(|kind| kind.plural()).collect();
        readiness.wait_for(READINESS_PART, waiting_for(&plurals));
        let shared = Arc::new(Shared {
            cluster,
            kinds,
            synced: Mutex::default(),
            readiness,
            metrics,
        });
        let namespace = scope.namespace.as_deref();
        let (pods, services, jobs) = (
            scoped::<KubePod>(&client, namespace),
            scoped::<KubeService>(&client, namespace),
            scoped::<KubeJob>(&client, namespace),
        );
        let base = watcher::Config::default().any_semantic();
        let mut pod_config = base.clone();
        if let Some(selector) = scope.pods.as_ref().filter(|pods| !pods.is_everything()) {
            pod_config = pod_config.labels(&selector.to_string());
        }
        let mut namespace_config = base.clone();
        if let Some(namespace) = namespace {
            namespace_config = namespace_config.fields(&format!("metadata.name={namespace}"));
        }
        let mut tasks = vec![
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
                Api::<KubeNamespace>::all(client.clone()),
                namespace_config,
                shared.clone(),
                stop.clone(),
            )),
        ];
        if scope.policies {
            tasks.push(tokio::spawn(watch(
                Api::<PolicySelector>::all(client),
                base,
                shared.clone(),
                stop,
            )));
        }
        ClusterWatch { shared, tasks }
    }

    /// Whether the initial lists are in (else what is missing), and the objects in the model.
    pub fn status(&self) -> WatchStatus {
        self.shared.status()
    }

    /// [`ClusterWatch::status`], for a status page that outlives this handle's borrow.
    pub fn status_source(&self) -> impl Fn() -> WatchStatus + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.status()
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
    let cluster = &shared.cluster;
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = stream.next() => item,
        };
        let Some(item) = item else {
            return;
        };
        let now_ms = cluster.clock().now_ms();
        match item {
            Err(error) => {
                shared.metrics.restarts.get_or_create(&labels).inc();
                tracing::warn!(resource, error = %telemetry::ErrorChain(&error), "Kubernetes watch failed; it restarts after a backoff");
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
                cluster.update(|model| object.apply(model, now_ms, Seen::Listed));
            }
            Ok(Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                let gone = cluster.update(|model| {
                    let gone: Vec<String> = model
                        .keys(K::KIND)
                        .into_iter()
                        .filter(|key| !listed.contains(key))
                        .collect();
                    for key in &gone {
                        model.delete_key(K::KIND, key, now_ms);
                    }
                    gone.len()
                });
                if gone > 0 {
                    tracing::info!(
                        resource,
                        deleted = gone,
                        "the list no longer has some objects; deleted them"
                    );
                }
                shared.listed(K::KIND);
                shared.update_gauges();
            }
            Ok(Event::Apply(object)) => {
                cluster.update(|model| object.apply(model, now_ms, Seen::Live));
                shared.metrics.events.get_or_create(&labels).inc();
            }
            Ok(Event::Delete(object)) => {
                let key = object.key();
                cluster.update(|model| model.delete_key(K::KIND, &key, now_ms));
                shared.metrics.events.get_or_create(&labels).inc();
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

/// The watches' metrics.
#[derive(Clone, Debug, Default)]
pub struct WatchMetrics {
    objects: Family<ResourceLabels, Gauge>,
    events: Family<ResourceLabels, Counter>,
    restarts: Family<ResourceLabels, Counter>,
    relists: Family<ResourceLabels, Counter>,
}

impl WatchMetrics {
    pub fn register(registry: &mut Registry) -> WatchMetrics {
        let resources = || {
            Kind::ALL.map(|kind| ResourceLabels {
                resource: kind.plural(),
            })
        };
        WatchMetrics {
            objects: telemetry::family(
                registry,
                "objects",
                "Objects in the cluster model, by resource",
                resources(),
            ),
            events: telemetry::family(
                registry,
                "watch_events",
                "Live watch events applied, by resource",
                resources(),
            ),
            restarts: telemetry::family(
                registry,
                "watch_restarts",
                "Watch failures after which the watch restarted with a backoff, by resource",
                resources(),
            ),
            relists: telemetry::family(
                registry,
                "watch_relists",
                "Relists after the initial list (410 Gone, a lost connection), by resource",
                resources(),
            ),
        }
    }
}
