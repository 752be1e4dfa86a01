//! The model: the cluster's pods, services, nodes, namespaces and jobs, trimmed to what
//! threatflow's consumers use, with their labels as the API has them (unfiltered).
//!
//! Objects are applied one at a time, from an inventory file or from watch events, through the
//! same methods. Each change is handed to the model's [`Observer`]s (enrichment keeps its
//! endpoint index in step this way) and bumps a generation that level-triggered consumers
//! wait on. Queries ([`Model::pods`]) answer "which pods does this selector pick, in which
//! namespaces".

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::objects::{
    Inventory, JobInfo, NamespaceInfo, NodeInfo, PodInfo, PolicyInfo, ServiceInfo,
};
use super::selector::{Labels, Selects};

/// How an object reached the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// In a list (the inventory, a watch's initial list or relist): it may have existed long
    /// before.
    Listed,
    /// In a live event, just now.
    Live,
}

/// The kinds of object the model holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Pod,
    Service,
    Node,
    Namespace,
    Job,
    /// Calico GlobalNetworkPolicies (only for consumers that publish what policies select).
    Policy,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Pod,
        Kind::Service,
        Kind::Node,
        Kind::Namespace,
        Kind::Job,
        Kind::Policy,
    ];

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::Node => "nodes",
            Kind::Namespace => "namespaces",
            Kind::Job => "jobs",
            Kind::Policy => "globalnetworkpolicies",
        }
    }
}

/// Labels in compact form, sorted by key (100k pods are a cluster of ordinary size).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelList(Box<[(Box<str>, Box<str>)]>);

impl LabelList {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(key, value)| (&**key, &**value))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, String>> for LabelList {
    fn from(labels: BTreeMap<String, String>) -> LabelList {
        LabelList(
            labels
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
        )
    }
}

impl Labels for LabelList {
    fn label(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(label, _)| (**label).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }
}

/// A pod as the model keeps it.
#[derive(Debug, PartialEq, Eq)]
pub struct Pod {
    /// The UID: the pod's identity across IP reuse (`namespace/name` when unknown).
    uid: Arc<str>,
    name: Box<str>,
    namespace: Box<str>,
    labels: LabelList,
    node: Option<Box<str>>,
    /// The controller owner reference (`kind`, `name`).
    owner: Option<Box<(Box<str>, Box<str>)>>,
    /// The addresses the pod holds: none once it has finished, or when it uses its node's.
    ips: Box<[IpAddr]>,
    /// `metadata.creationTimestamp` in epoch milliseconds, `i64::MIN` when unknown.
    created_ms: i64,
    host_network: bool,
    /// The annotations the model keeps (`objects::KEPT_ANNOTATIONS`); empty for most pods.
    annotations: LabelList,
}

impl Pod {
    fn new(pod: PodInfo) -> Pod {
        let holds = !pod.terminated && !pod.host_network;
        Pod {
            uid: pod.uid.into(),
            name: pod.name.into(),
            namespace: pod.namespace.into(),
            labels: pod.labels.into(),
            node: pod.node.map(Into::into),
            owner: pod
                .owner
                .map(|(kind, name)| Box::new((kind.into(), name.into()))),
            ips: if holds {
                pod.ips.into()
            } else {
                Box::default()
            },
            created_ms: pod.created_ms.unwrap_or(i64::MIN),
            host_network: pod.host_network,
            annotations: pod.annotations.into(),
        }
    }

    pub fn uid(&self) -> &Arc<str> {
        &self.uid
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn labels(&self) -> &LabelList {
        &self.labels
    }
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.label(key)
    }
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }
    /// The controller owner reference: (`kind`, `name`).
    pub fn owner(&self) -> Option<(&str, &str)> {
        self.owner.as_deref().map(|(kind, name)| (&**kind, &**name))
    }
    /// The pod's own addresses; empty for finished and host-network pods.
    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }
    pub fn created_ms(&self) -> Option<i64> {
        (self.created_ms != i64::MIN).then_some(self.created_ms)
    }
    /// The pod shares its node's network (and addresses).
    pub fn host_network(&self) -> bool {
        self.host_network
    }
    /// The kept annotations (`objects::KEPT_ANNOTATIONS`).
    pub fn annotations(&self) -> &LabelList {
        &self.annotations
    }
}

impl Labels for Pod {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.label(key)
    }
}

/// A namespace: its labels and kept annotations (`objects::KEPT_ANNOTATIONS`).
#[derive(Debug, PartialEq, Eq)]
pub struct Namespace {
    pub labels: LabelList,
    pub annotations: LabelList,
}

/// A service: its addresses and the pods it selects.
pub type Service = ServiceInfo;

impl ServiceInfo {
    /// Whether the service's selector picks `pod`: same namespace, every pair matching; an
    /// empty selector picks none.
    pub fn selects(&self, pod: &Pod) -> bool {
        *pod.namespace == *self.namespace
            && !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(key, value)| pod.label(key) == Some(value.as_str()))
    }
}

/// A node.
pub type Node = NodeInfo;

/// What changed, as an observer sees it: the object before and after (`None` when absent).
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    Pod {
        previous: Option<&'a Pod>,
        current: Option<&'a Pod>,
    },
    /// A namespace's labels changed, or it came or went.
    Namespace { name: &'a str },
    Service {
        previous: Option<&'a Service>,
        current: Option<&'a Service>,
    },
    Node {
        previous: Option<&'a Node>,
        current: Option<&'a Node>,
    },
    /// A job's owner changed, or it came or went.
    Job { namespace: &'a str, name: &'a str },
    /// A Calico GlobalNetworkPolicy changed, or came or went.
    Policy { name: &'a str },
}

/// A change, when it happened, and how it was seen.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub change: Change<'a>,
    pub now_ms: i64,
    pub seen: Seen,
}

/// A consumer kept in step with the model change by change (enrichment's endpoint index). It
/// runs under the model's write lock, so it must be quick.
pub trait Observer: Send + Sync {
    fn observe(&mut self, model: &Model, event: &Event<'_>);
}

/// Object counts, for metrics and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ObjectCounts {
    pub pods: usize,
    pub services: usize,
    pub nodes: usize,
    pub namespaces: usize,
    pub jobs: usize,
    pub policies: usize,
}

/// The trimmed cluster objects.
#[derive(Default)]
pub struct Model {
    /// By UID.
    pods: HashMap<Arc<str>, Pod>,
    namespaces: HashMap<String, Namespace>,
    /// By namespace, then name.
    services: HashMap<String, BTreeMap<String, Service>>,
    nodes: HashMap<String, Node>,
    /// `(namespace, name)` -> the job's controller owner.
    jobs: HashMap<(String, String), Option<(String, String)>>,
    /// Calico GlobalNetworkPolicies by name.
    policies: BTreeMap<String, PolicyInfo>,
    observers: Vec<Box<dyn Observer>>,
    /// Bumped by every change.
    generation: u64,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("counts", &self.counts())
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// The model of a whole inventory, every object listed, with `observers` kept in step.
    pub fn from_inventory(inventory: &Inventory, observers: Vec<Box<dyn Observer>>) -> Model {
        let mut model = Model {
            observers,
            ..Model::default()
        };
        model.apply_inventory(inventory);
        model
    }

    /// Applies every object of an inventory as listed. Context comes first (namespaces, jobs,
    /// services), so observers see each pod once with its final context.
    pub fn apply_inventory(&mut self, inventory: &Inventory) {
        for namespace in &inventory.namespaces {
            self.apply_namespace(namespace.clone(), 0, Seen::Listed);
        }
        for job in &inventory.jobs {
            self.apply_job(job.clone(), 0, Seen::Listed);
        }
        for service in &inventory.services {
            self.apply_service(service.clone(), 0, Seen::Listed);
        }
        for node in &inventory.nodes {
            self.apply_node(node.clone(), 0, Seen::Listed);
        }
        for pod in &inventory.pods {
            self.apply_pod(pod.clone(), 0, Seen::Listed);
        }
        for policy in &inventory.policies {
            self.apply_policy(policy.clone(), 0, Seen::Listed);
        }
    }

    /// Adds an observer and shows it every object in the model, as listed.
    pub fn observe(&mut self, mut observer: Box<dyn Observer>, now_ms: i64) {
        let event = |change| Event {
            change,
            now_ms,
            seen: Seen::Listed,
        };
        for name in self.namespaces.keys() {
            observer.observe(self, &event(Change::Namespace { name }));
        }
        for (namespace, name) in self.jobs.keys() {
            observer.observe(self, &event(Change::Job { namespace, name }));
        }
        for service in self.services.values().flat_map(BTreeMap::values) {
            let change = Change::Service {
                previous: None,
                current: Some(service),
            };
            observer.observe(self, &event(change));
        }
        for node in self.nodes.values() {
            let change = Change::Node {
                previous: None,
                current: Some(node),
            };
            observer.observe(self, &event(change));
        }
        for pod in self.pods.values() {
            let change = Change::Pod {
                previous: None,
                current: Some(pod),
            };
            observer.observe(self, &event(change));
        }
        for name in self.policies.keys() {
            observer.observe(self, &event(Change::Policy { name }));
        }
        self.observers.push(observer);
    }

    /// A number that changes with every change to the model.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn counts(&self) -> ObjectCounts {
        ObjectCounts {
            pods: self.pods.len(),
            services: self.services.values().map(BTreeMap::len).sum(),
            nodes: self.nodes.len(),
            namespaces: self.namespaces.len(),
            jobs: self.jobs.len(),
            policies: self.policies.len(),
        }
    }

    /// Counts a change and hands it to every observer.
    fn dispatch(&mut self, applied: Applied, now_ms: i64, seen: Seen) {
        self.generation += 1;
        if self.observers.is_empty() {
            return;
        }
        // Observers read the model while they are called; they are out of it meanwhile.
        let mut observers = std::mem::take(&mut self.observers);
        let event = Event {
            change: applied.change(self),
            now_ms,
            seen,
        };
        for observer in &mut observers {
            observer.observe(self, &event);
        }
        self.observers = observers;
    }

    /// A pod was added or changed.
    pub fn apply_pod(&mut self, mut pod: PodInfo, now_ms: i64, seen: Seen) {
        if pod.uid.is_empty() {
            pod.uid = format!("{}/{}", pod.namespace, pod.name);
        }
        let mut pod = Pod::new(pod);
        if self.pods.get(&pod.uid) == Some(&pod) {
            // A status update that changed nothing the model keeps.
            return;
        }
        let previous = self.pods.remove(&pod.uid);
        if let Some(previous) = &previous {
            // One allocation of the UID per pod, shared with what observers keep.
            pod.uid = previous.uid.clone();
        }
        let uid = pod.uid.clone();
        self.pods.insert(uid.clone(), pod);
        self.dispatch(Applied::Pod { previous, uid }, now_ms, seen);
    }

    /// A pod was deleted; its UID is enough (a delete event need not carry the IPs).
    pub fn delete_pod(&mut self, uid: &str, now_ms: i64) {
        if let Some(previous) = self.pods.remove(uid) {
            let uid = previous.uid.clone();
            let applied = Applied::Pod {
                previous: Some(previous),
                uid,
            };
            self.dispatch(applied, now_ms, Seen::Live);
        }
    }

    pub fn apply_namespace(&mut self, namespace: NamespaceInfo, now_ms: i64, seen: Seen) {
        let kept = Namespace {
            labels: namespace.labels.into(),
            annotations: namespace.annotations.into(),
        };
        if self.namespaces.get(&namespace.name) == Some(&kept) {
            return;
        }
        self.namespaces.insert(namespace.name.clone(), kept);
        self.dispatch(Applied::Namespace(namespace.name), now_ms, seen);
    }

    pub fn delete_namespace(&mut self, name: &str, now_ms: i64) {
        if self.namespaces.remove(name).is_some() {
            self.dispatch(Applied::Namespace(name.to_owned()), now_ms, Seen::Live);
        }
    }

    /// A service was added or changed.
    pub fn apply_service(&mut self, service: ServiceInfo, now_ms: i64, seen: Seen) {
        let key = (service.namespace.clone(), service.name.clone());
        let services = self.services.entry(key.0.clone()).or_default();
        if services.get(&key.1) == Some(&service) {
            return;
        }
        let previous = services.insert(key.1.clone(), service);
        self.dispatch(Applied::Service { previous, key }, now_ms, seen);
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str, now_ms: i64) {
        let Some(previous) = self
            .services
            .get_mut(namespace)
            .and_then(|services| services.remove(name))
        else {
            return;
        };
        if self.services.get(namespace).is_some_and(BTreeMap::is_empty) {
            self.services.remove(namespace);
        }
        let applied = Applied::Service {
            previous: Some(previous),
            key: (namespace.to_owned(), name.to_owned()),
        };
        self.dispatch(applied, now_ms, Seen::Live);
    }

    /// A node was added or changed.
    pub fn apply_node(&mut self, node: NodeInfo, now_ms: i64, seen: Seen) {
        if self.nodes.get(&node.name) == Some(&node) {
            return;
        }
        let name = node.name.clone();
        let previous = self.nodes.insert(name.clone(), node);
        self.dispatch(Applied::Node { previous, name }, now_ms, seen);
    }

    pub fn delete_node(&mut self, name: &str, now_ms: i64) {
        if let Some(previous) = self.nodes.remove(name) {
            let applied = Applied::Node {
                previous: Some(previous),
                name: name.to_owned(),
            };
            self.dispatch(applied, now_ms, Seen::Live);
        }
    }

    /// A job was added or changed: its pods' workload may now be its CronJob.
    pub fn apply_job(&mut self, job: JobInfo, now_ms: i64, seen: Seen) {
        let key = (job.namespace, job.name);
        if self.jobs.get(&key) == Some(&job.owner) {
            return;
        }
        self.jobs.insert(key.clone(), job.owner);
        self.dispatch(Applied::Job(key), now_ms, seen);
    }

    pub fn delete_job(&mut self, namespace: &str, name: &str, now_ms: i64) {
        let key = (namespace.to_owned(), name.to_owned());
        if self.jobs.remove(&key).is_some() {
            self.dispatch(Applied::Job(key), now_ms, Seen::Live);
        }
    }

    /// A Calico GlobalNetworkPolicy was added or changed.
    pub fn apply_policy(&mut self, policy: PolicyInfo, now_ms: i64, seen: Seen) {
        if self.policies.get(&policy.name) == Some(&policy) {
            return;
        }
        let name = policy.name.clone();
        self.policies.insert(name.clone(), policy);
        self.dispatch(Applied::Policy(name), now_ms, seen);
    }

    pub fn delete_policy(&mut self, name: &str, now_ms: i64) {
        if self.policies.remove(name).is_some() {
            self.dispatch(Applied::Policy(name.to_owned()), now_ms, Seen::Live);
        }
    }

    /// UIDs of the pods, names of the nodes, namespaces and policies, `namespace/name` of the
    /// services and jobs: what a relist compares against.
    pub fn keys(&self, kind: Kind) -> Vec<String> {
        match kind {
            Kind::Pod => self.pods.keys().map(|uid| uid.to_string()).collect(),
            Kind::Service => self
                .services
                .iter()
                .flat_map(|(namespace, services)| {
                    services
                        .keys()
                        .map(move |name| format!("{namespace}/{name}"))
                })
                .collect(),
            Kind::Node => self.nodes.keys().cloned().collect(),
            Kind::Namespace => self.namespaces.keys().cloned().collect(),
            Kind::Job => self
                .jobs
                .keys()
                .map(|(namespace, name)| format!("{namespace}/{name}"))
                .collect(),
            Kind::Policy => self.policies.keys().cloned().collect(),
        }
    }

    /// Deletes the object behind a key from [`Model::keys`].
    pub fn delete_key(&mut self, kind: Kind, key: &str, now_ms: i64) {
        let split = || key.split_once('/').unwrap_or(("", key));
        match kind {
            Kind::Pod => self.delete_pod(key, now_ms),
            Kind::Service => {
                let (namespace, name) = split();
                self.delete_service(namespace, name, now_ms);
            }
            Kind::Node => self.delete_node(key, now_ms),
            Kind::Namespace => self.delete_namespace(key, now_ms),
            Kind::Job => {
                let (namespace, name) = split();
                self.delete_job(namespace, name, now_ms);
            }
            Kind::Policy => self.delete_policy(key, now_ms),
        }
    }

    // Queries.

    pub fn pod(&self, uid: &str) -> Option<&Pod> {
        self.pods.get(uid)
    }

    /// Every pod, in no particular order.
    pub fn all_pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// The pods `pods` selects, in namespaces `namespaces` selects (any namespace without
    /// it; a pod whose namespace is not in the model has no labels for it to match).
    pub fn pods<'a>(
        &'a self,
        pods: &'a dyn Selects,
        namespaces: Option<&'a dyn Selects>,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        let no_labels = LabelList::default();
        self.pods.values().filter(move |pod| {
            namespaces.is_none_or(|selector| {
                let labels = self
                    .namespaces
                    .get(pod.namespace())
                    .map_or(&no_labels, |namespace| &namespace.labels);
                selector.selects(labels)
            }) && pods.selects(*pod)
        })
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &Namespace)> {
        self.namespaces
            .iter()
            .map(|(name, namespace)| (name.as_str(), namespace))
    }

    /// The services of a namespace, by name.
    pub fn services_in(&self, namespace: &str) -> impl Iterator<Item = &Service> {
        self.services
            .get(namespace)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// The Calico GlobalNetworkPolicies, by name.
    pub fn policies(&self) -> impl Iterator<Item = &PolicyInfo> {
        self.policies.values()
    }

    /// A job's controller owner (`kind`, `name`), if the job is known and has one.
    pub fn job_owner(&self, namespace: &str, name: &str) -> Option<(&str, &str)> {
        self.jobs
            .get(&(namespace.to_owned(), name.to_owned()))
            .and_then(Option::as_ref)
            .map(|(kind, name)| (kind.as_str(), name.as_str()))
    }
}

/// What an apply or delete did: the object as it was, and how to find it now.
enum Applied {
    Pod {
        previous: Option<Pod>,
        uid: Arc<str>,
    },
    Namespace(String),
    Service {
        previous: Option<Service>,
        key: (String, String),
    },
    Node {
        previous: Option<Node>,
        name: String,
    },
    Job((String, String)),
    Policy(String),
}

impl Applied {
    fn change<'a>(&'a self, model: &'a Model) -> Change<'a> {
        match self {
            Applied::Pod { previous, uid } => Change::Pod {
                previous: previous.as_ref(),
                current: model.pods.get(uid),
            },
            Applied::Namespace(name) => Change::Namespace { name },
            Applied::Service {
                previous,
                key: (namespace, name),
            } => Change::Service {
                previous: previous.as_ref(),
                current: model
                    .services
                    .get(namespace)
                    .and_then(|services| services.get(name)),
            },
            Applied::Node { previous, name } => Change::Node {
                previous: previous.as_ref(),
                current: model.nodes.get(name),
            },
            Applied::Job((namespace, name)) => Change::Job { namespace, name },
            Applied::Policy(name) => Change::Policy { name },
        }
    }
}
