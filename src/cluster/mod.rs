//! The watched model of the cluster, shared by every consumer: enrichment's endpoint index,
//! and the firewall address sync that publishes pods to address groups.
//!
//! [`Model`] holds the trimmed objects (pods, services, nodes, namespaces, jobs, and Calico
//! GlobalNetworkPolicies when a consumer asks for them) with their
//! labels unfiltered. It is filled through the same methods from an inventory file
//! ([`objects::Inventory`]) or from the watches ([`watch`]), which run once per process with
//! the union of the consumers' scopes. Consumers either observe it change by change (an
//! [`model::Observer`], as enrichment does) or wait on its generation and query it
//! ([`Cluster::changes`], [`Model::pods`]). The [`SyncGate`] opens when the initial lists are
//! in.
//!
//! Nothing here knows what a consumer does with the objects: no flow records, no firewall.

pub mod gate;
pub mod model;
pub mod objects;
pub mod selector;
pub mod watch;

use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};
use tokio::sync::watch as signal;

pub use crate::clock::{Clock, SharedClock, SystemClock, TokioClock};
pub use gate::SyncGate;
pub use model::{Kind, Model, Seen};
pub use objects::Inventory;
pub use selector::{LabelSelector, Labels, Selects};

/// A shared handle on the model: read it, change it (which bumps the generation consumers
/// wait on), and wait for the initial lists.
#[derive(Clone)]
pub struct Cluster {
    model: Arc<RwLock<Model>>,
    generation: Arc<signal::Sender<u64>>,
    gate: Arc<SyncGate>,
    clock: SharedClock,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("model", &*self.model.read())
            .field("synced", &self.gate.is_open())
            .finish()
    }
}

impl Cluster {
    /// An empty model whose gate opens when watches have listed everything.
    pub fn new(clock: SharedClock) -> Cluster {
        Cluster {
            model: Arc::default(),
            generation: Arc::new(signal::Sender::new(0)),
            gate: Arc::new(SyncGate::default()),
            clock,
        }
    }

    /// The model of an inventory file: complete at once, its gate open.
    pub fn from_inventory(inventory: &Inventory, clock: SharedClock) -> Cluster {
        let cluster = Cluster::new(clock);
        cluster.update(|model| model.apply_inventory(inventory));
        cluster.gate.open();
        cluster
    }

    /// An empty model that is complete as it is (no cluster context at all).
    pub fn empty(clock: SharedClock) -> Cluster {
        let cluster = Cluster::new(clock);
        cluster.gate.open();
        cluster
    }

    /// Reads the model. Hold the guard briefly: writers wait for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Model> {
        self.model.read()
    }

    /// Changes the model, then tells whoever waits on [`Cluster::changes`].
    pub fn update<R>(&self, change: impl FnOnce(&mut Model) -> R) -> R {
        let mut model = self.model.write();
        let before = model.generation();
        let result = change(&mut model);
        let after = model.generation();
        drop(model);
        if after != before {
            self.generation.send_replace(after);
        }
        result
    }

    /// Adds an observer, which first sees every object already in the model.
    pub fn observe(&self, observer: Box<dyn model::Observer>) {
        let now_ms = self.clock.now_ms();
        self.model.write().observe(observer, now_ms);
    }

    /// The model's generation, which changes with every change to it.
    pub fn changes(&self) -> signal::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn gate(&self) -> &Arc<SyncGate> {
        &self.gate
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }
}

/// Where the model's objects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Watches of the API server, scoped to the union of the consumers' scopes.
    Watch(WatchScope),
    /// A `kubectl get pods,services,namespaces,nodes,jobs -A -o json` file, read once.
    Inventory(std::path::PathBuf),
    /// No cluster context.
    Empty,
}

/// The model could not be filled.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Kubernetes(#[from] crate::deps::KubeUnavailable),
    #[error(transparent)]
    Inventory(#[from] objects::InventoryError),
}

impl StartError {
    pub fn kind(&self) -> &'static str {
        match self {
            StartError::Kubernetes(_) => "kubernetes",
            StartError::Inventory(_) => "inventory",
        }
    }
}

/// The running model: its watches, if it has any.
pub struct ClusterStage {
    pub cluster: Cluster,
    pub source: Source,
    watch: Option<watch::ClusterWatch>,
    stop: tokio_util::sync::CancellationToken,
}

impl ClusterStage {
    /// Fills a model from `source`; watches run until [`ClusterStage::stop`].
    pub async fn start(
        deps: &crate::deps::Deps,
        source: Source,
        metrics: watch::WatchMetrics,
    ) -> Result<ClusterStage, StartError> {
        let stop = tokio_util::sync::CancellationToken::new();
        let (cluster, watch) = match &source {
            Source::Watch(scope) => {
                let client = deps
                    .kube("the cluster model (enrichment.kubernetes, firewall)")
                    .await?;
                let cluster = Cluster::new(deps.clock.clone());
                let watch = watch::ClusterWatch::start(
                    client,
                    scope,
                    cluster.clone(),
                    metrics,
                    deps.readiness.clone(),
                    stop.clone(),
                );
                (cluster, Some(watch))
            }
            Source::Inventory(path) => {
                let inventory = Inventory::load(path)?;
                tracing::info!(path = %path.display(), pods = inventory.pods.len(), services = inventory.services.len(), "loaded inventory");
                (
                    Cluster::from_inventory(&inventory, deps.clock.clone()),
                    None,
                )
            }
            Source::Empty => (Cluster::empty(deps.clock.clone()), None),
        };
        Ok(ClusterStage {
            cluster,
            source,
            watch,
            stop,
        })
    }

    /// The watches' state, when the model is watched.
    pub fn watch_status(&self) -> Option<watch::WatchStatus> {
        self.watch.as_ref().map(watch::ClusterWatch::status)
    }

    /// [`ClusterStage::watch_status`] for a status page.
    pub fn watch_status_source(
        &self,
    ) -> Option<impl Fn() -> watch::WatchStatus + Send + Sync + 'static> {
        self.watch.as_ref().map(watch::ClusterWatch::status_source)
    }

    /// Stops the watches and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(watch) = self.watch {
            watch.join().await;
        }
    }
}

/// What part of the cluster a consumer needs watched: one namespace or all, the pods a label
/// selector picks or all, and whether Calico policies too. The watches follow the union of the consumers' scopes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchScope {
    /// Only this namespace's pods, services and jobs (nodes are always watched).
    pub namespace: Option<String>,
    /// Only the pods this selector picks.
    pub pods: Option<LabelSelector>,
    /// Calico GlobalNetworkPolicies too (for publishing what policies select).
    pub policies: bool,
}

impl WatchScope {
    /// The smallest scope holding every one of `scopes` (everything for none).
    pub fn union<'a>(scopes: impl IntoIterator<Item = &'a WatchScope>) -> WatchScope {
        let mut scopes = scopes.into_iter();
        let Some(first) = scopes.next() else {
            return WatchScope::default();
        };
        let mut union = first.clone();
        for scope in scopes {
            if union.namespace != scope.namespace {
                union.namespace = None;
            }
            if union.pods != scope.pods {
                union.pods = None;
            }
            union.policies |= scope.policies;
        }
        union
    }

    pub fn includes_namespace(&self, namespace: &str) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|scoped| scoped == namespace)
    }

    pub fn includes_pod(&self, pod: &model::Pod) -> bool {
        self.includes_namespace(pod.namespace())
            && self.pods.as_ref().is_none_or(|pods| pods.selects(pod))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use objects::{NamespaceInfo, PodInfo};
    use std::collections::BTreeMap;

    fn pod(name: &str, namespace: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            uid: format!("uid-{name}"),
            name: name.into(),
            namespace: namespace.into(),
            labels: labels
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ips: vec!["10.0.0.1".parse().unwrap()],
            ..PodInfo::default()
        }
    }

    #[test]
    fn queries_pick_pods_by_their_labels_and_their_namespaces_labels() {
        let cluster = Cluster::new(Arc::new(SystemClock));
        cluster.update(|model| {
            for (namespace, team) in [("shop", "payments"), ("web", "frontend")] {
                let labels = BTreeMap::from([("team".to_owned(), team.to_owned())]);
                model.apply_namespace(
                    NamespaceInfo {
                        name: namespace.into(),
                        labels,
                        annotations: Default::default(),
                    },
                    0,
                    Seen::Listed,
                );
            }
            model.apply_pod(pod("a", "shop", &[("app", "api")]), 0, Seen::Listed);
            model.apply_pod(pod("b", "shop", &[("app", "db")]), 0, Seen::Listed);
            model.apply_pod(pod("c", "web", &[("app", "api")]), 0, Seen::Listed);
        });
        let names = |pods: &str, namespaces: Option<&str>| {
            let pods = LabelSelector::parse(pods).unwrap();
            let namespaces = namespaces.map(|text| LabelSelector::parse(text).unwrap());
            let model = cluster.read();
            let mut names: Vec<String> = model
                .pods(&pods, namespaces.as_ref().map(|n| n as &dyn Selects))
                .map(|pod| pod.name().to_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names("app=api", None), ["a", "c"]);
        assert_eq!(names("app=api", Some("team=payments")), ["a"]);
        assert_eq!(
            names("", Some("team in (payments,frontend)")),
            ["a", "b", "c"]
        );
        assert_eq!(names("app notin (api)", None), ["b"]);
    }

    #[tokio::test]
    async fn consumers_wake_on_changes_only() {
        let cluster = Cluster::new(Arc::new(SystemClock));
        let mut changes = cluster.changes();
        cluster.update(|model| model.apply_pod(pod("a", "shop", &[]), 0, Seen::Live));
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        // The same pod again changes nothing the model keeps: nobody is woken.
        cluster.update(|model| model.apply_pod(pod("a", "shop", &[]), 1, Seen::Live));
        assert!(!changes.has_changed().unwrap());
        cluster.update(|model| model.delete_pod("uid-a", 2));
        assert!(changes.has_changed().unwrap());
    }

    #[test]
    fn the_watch_scope_is_the_union_of_the_consumers() {
        let shop = WatchScope {
            namespace: Some("shop".into()),
            ..WatchScope::default()
        };
        let web = WatchScope {
            namespace: Some("web".into()),
            ..WatchScope::default()
        };
        assert_eq!(WatchScope::union([&shop, &shop]), shop);
        assert_eq!(WatchScope::union([&shop, &web]), WatchScope::default());
        assert_eq!(WatchScope::union([]), WatchScope::default());
        assert!(shop.includes_namespace("shop") && !shop.includes_namespace("web"));
    }
}
