//! The cluster model behind the endpoint index: the trimmed objects, and the index kept in step
//! with them object by object.
//!
//! Offline, an inventory file is applied to it in one go; in the cluster, the watches apply
//! each event as it arrives ([`crate::k8s::watch`]). Both go through the same methods, so the
//! daemon and `threatflow enrich --inventory` compute the same context for the same state.
//!
//! Times are epoch milliseconds. An object found by a list (the inventory, a watch's initial
//! list or relist) holds its addresses from its creation; one seen by a live event from the
//! moment the event arrived, less [`WATCH_DELAY_MS`]; and never before the address's previous
//! holder released it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use crate::flow::record::Text;

use super::index::{EndpointIndex, EndpointInfo, EndpointInfoKind, ServiceInfo as ServiceRef};
use super::inventory::{Inventory, JobInfo, NamespaceInfo, NodeInfo, PodInfo, ServiceInfo};
use super::labels::LabelFilter;
use super::workload;

/// How much earlier than its watch event a live object may already have used an address.
pub const WATCH_DELAY_MS: i64 = 2_000;

/// The index, shared between the watches that write it and the processor that reads it (once
/// per batch).
pub type SharedIndex = Arc<RwLock<EndpointIndex>>;

/// How an object reached the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// In a list: it may have held its addresses since its creation.
    Listed,
    /// In a live event at the given time.
    Live,
}

/// Object counts, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    pub pods: usize,
    pub services: usize,
    pub nodes: usize,
    pub namespaces: usize,
    pub jobs: usize,
}

/// What the model keeps of a pod: what its context and its services' selectors need, in
/// compact form (100k pods are a cluster of ordinary size).
#[derive(Debug)]
struct PodEntry {
    /// The UID, shared with the index's holdings.
    uid: Arc<str>,
    name: Box<str>,
    namespace: Box<str>,
    /// Sorted by key.
    labels: Box<[(Box<str>, Box<str>)]>,
    node: Option<Box<str>>,
    owner: Option<Box<(Box<str>, Box<str>)>>,
    /// The addresses the pod holds: none once it has finished, or when it uses its node's.
    ips: Box<[IpAddr]>,
}

impl PodEntry {
    fn new(pod: PodInfo) -> PodEntry {
        let holds = !pod.terminated && !pod.host_network;
        PodEntry {
            uid: pod.uid.into(),
            name: pod.name.into(),
            namespace: pod.namespace.into(),
            labels: pod
                .labels
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
            node: pod.node.map(Into::into),
            owner: pod
                .owner
                .map(|(kind, name)| Box::new((kind.into(), name.into()))),
            ips: if holds {
                pod.ips.into()
            } else {
                Box::default()
            },
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(label, _)| (**label).cmp(key))
            .ok()
            .map(|i| &*self.labels[i].1)
    }
}

/// The trimmed cluster objects, and the index derived from them.
#[derive(Debug)]
pub struct ClusterState {
    filter: LabelFilter,
    index: SharedIndex,
    /// By UID.
    pods: HashMap<Arc<str>, PodEntry>,
    /// Filtered `key=value` labels, shared by every pod of the namespace.
    namespaces: HashMap<String, Arc<[Text]>>,
    /// By namespace, then name.
    services: HashMap<String, BTreeMap<String, ServiceInfo>>,
    nodes: HashMap<String, NodeInfo>,
    /// `(namespace, name)` -> the job's controller owner.
    jobs: HashMap<(String, String), Option<(String, String)>>,
    no_labels: Arc<[Text]>,
}

impl ClusterState {
    pub fn new(filter: LabelFilter, index: SharedIndex) -> ClusterState {
        ClusterState {
            filter,
            index,
            pods: HashMap::new(),
            namespaces: HashMap::new(),
            services: HashMap::new(),
            nodes: HashMap::new(),
            jobs: HashMap::new(),
            no_labels: Arc::from(Vec::new()),
        }
    }

    /// The model of a whole inventory, every object listed.
    pub fn from_inventory(inventory: &Inventory, filter: &LabelFilter) -> ClusterState {
        let mut state = ClusterState::new(filter.clone(), SharedIndex::default());
        // Context first (namespaces, jobs, services), so each pod is indexed once.
        for namespace in &inventory.namespaces {
            state.apply_namespace(namespace.clone());
        }
        for job in &inventory.jobs {
            state.apply_job(job.clone());
        }
        for service in &inventory.services {
            state.apply_service(service.clone(), 0, Seen::Listed);
        }
        for node in &inventory.nodes {
            state.apply_node(node.clone(), 0, Seen::Listed);
        }
        for pod in &inventory.pods {
            state.apply_pod(pod.clone(), 0, Seen::Listed);
        }
        state
    }

    pub fn index(&self) -> &SharedIndex {
        &self.index
    }

    pub fn counts(&self) -> ClusterCounts {
        ClusterCounts {
            pods: self.pods.len(),
            services: self.services.values().map(BTreeMap::len).sum(),
            nodes: self.nodes.len(),
            namespaces: self.namespaces.len(),
            jobs: self.jobs.len(),
        }
    }

    /// A pod was added or changed.
    pub fn apply_pod(&mut self, mut pod: PodInfo, now_ms: i64, seen: Seen) {
        if pod.uid.is_empty() {
            pod.uid = format!("{}/{}", pod.namespace, pod.name);
        }
        let from_ms = holds_from(pod.created_ms, now_ms, seen);
        let mut pod = PodEntry::new(pod);
        let previous = self.pods.remove(&pod.uid);
        if let Some(previous) = &previous {
            // One allocation of the UID per pod, shared with the index.
            pod.uid = previous.uid.clone();
        }
        let info = (!pod.ips.is_empty()).then(|| self.pod_endpoint(&pod));
        {
            let mut index = self.index.write().expect("index lock");
            for released in previous
                .iter()
                .flat_map(|previous| previous.ips.iter())
                .filter(|ip| !pod.ips.contains(ip))
            {
                index.endpoints.release(*released, &pod.uid, now_ms);
            }
            if let Some(info) = info {
                for ip in pod.ips.iter() {
                    index
                        .endpoints
                        .assign(*ip, pod.uid.clone(), info.clone(), from_ms);
                }
            }
        }
        self.pods.insert(pod.uid.clone(), pod);
    }

    /// A pod was deleted; its UID is enough (a delete event need not carry the IPs).
    pub fn delete_pod(&mut self, uid: &str, now_ms: i64) {
        self.pods.remove(uid);
        self.index
            .write()
            .expect("index lock")
            .endpoints
            .release_owner(uid, now_ms);
    }

    pub fn apply_namespace(&mut self, namespace: NamespaceInfo) {
        let labels: Arc<[Text]> = label_list(&namespace.labels, &self.filter).into();
        if self.namespaces.get(&namespace.name) == Some(&labels) {
            return;
        }
        self.namespaces.insert(namespace.name.clone(), labels);
        self.refresh_pods(|pod| *pod.namespace == namespace.name);
    }

    pub fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.refresh_pods(|pod| &*pod.namespace == name);
        }
    }

    /// A service was added or changed: its addresses, and the pods its selector picks.
    pub fn apply_service(&mut self, service: ServiceInfo, now_ms: i64, seen: Seen) {
        let key: Arc<str> = format!("{}/{}", service.namespace, service.name).into();
        let previous = self
            .services
            .entry(service.namespace.clone())
            .or_default()
            .insert(service.name.clone(), service.clone());
        {
            let mut index = self.index.write().expect("index lock");
            for released in previous
                .iter()
                .flat_map(|previous| &previous.ips)
                .filter(|ip| !service.ips.contains(ip))
            {
                index.services.release(*released, &key, now_ms);
            }
            let info = Arc::new(ServiceRef {
                namespace: service.namespace.as_str().into(),
                name: service.name.as_str().into(),
            });
            for ip in &service.ips {
                index.services.assign(
                    *ip,
                    key.clone(),
                    info.clone(),
                    holds_from(None, now_ms, seen),
                );
            }
        }
        let old_selector = previous.map(|previous| previous.selector);
        if old_selector.as_ref() != Some(&service.selector) {
            self.refresh_pods(|pod| {
                *pod.namespace == service.namespace
                    && (selects(&service.selector, pod)
                        || old_selector
                            .as_ref()
                            .is_some_and(|selector| selects(selector, pod)))
            });
        }
    }

    pub fn delete_service(&mut self, namespace: &str, name: &str, now_ms: i64) {
        let Some(service) = self
            .services
            .get_mut(namespace)
            .and_then(|services| services.remove(name))
        else {
            return;
        };
        self.index
            .write()
            .expect("index lock")
            .services
            .release_owner(&format!("{namespace}/{name}"), now_ms);
        self.refresh_pods(|pod| &*pod.namespace == namespace && selects(&service.selector, pod));
    }

    /// A node was added or changed: its internal IPs resolve to it.
    pub fn apply_node(&mut self, node: NodeInfo, now_ms: i64, seen: Seen) {
        let key: Arc<str> = format!("node/{}", node.name).into();
        let info = Arc::new(EndpointInfo {
            kind: EndpointInfoKind::Node,
            name: node.name.as_str().into(),
            namespace: None,
            labels: label_list(&node.labels, &self.filter),
            namespace_labels: self.no_labels.clone(),
            workload: None,
            node: Some(Arc::from(node.name.as_str())),
            services: Vec::new(),
        });
        let from_ms = holds_from(node.created_ms, now_ms, seen);
        let previous = self.nodes.insert(node.name.clone(), node);
        let node = &self.nodes[&*info.name];
        let mut index = self.index.write().expect("index lock");
        for released in previous
            .iter()
            .flat_map(|previous| &previous.internal_ips)
            .filter(|ip| !node.internal_ips.contains(ip))
        {
            index.endpoints.release(*released, &key, now_ms);
        }
        for ip in &node.internal_ips {
            index
                .endpoints
                .assign(*ip, key.clone(), info.clone(), from_ms);
        }
    }

    pub fn delete_node(&mut self, name: &str, now_ms: i64) {
        self.nodes.remove(name);
        self.index
            .write()
            .expect("index lock")
            .endpoints
            .release_owner(&format!("node/{name}"), now_ms);
    }

    /// A job was added or changed: its pods' workload may now be its CronJob.
    pub fn apply_job(&mut self, job: JobInfo) {
        let key = (job.namespace, job.name);
        if self.jobs.get(&key) == Some(&job.owner) {
            return;
        }
        self.jobs.insert(key.clone(), job.owner);
        self.refresh_pods(|pod| owned_by_job(pod, &key));
    }

    pub fn delete_job(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        if self.jobs.remove(&key).is_some() {
            self.refresh_pods(|pod| owned_by_job(pod, &key));
        }
    }

    /// Forgets addresses released more than `grace_ms` before `now_ms`.
    pub fn evict(&mut self, now_ms: i64, grace_ms: i64) {
        let mut index = self.index.write().expect("index lock");
        index.endpoints.evict(now_ms, grace_ms);
        index.services.evict(now_ms, grace_ms);
    }

    /// UIDs of the pods, names of the nodes and namespaces, `namespace/name` of the services
    /// and jobs: what a relist compares against.
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
        }
    }

    /// Deletes the object behind a key from [`ClusterState::keys`].
    pub fn delete_key(&mut self, kind: Kind, key: &str, now_ms: i64) {
        let split = || key.split_once('/').unwrap_or(("", key));
        match kind {
            Kind::Pod => self.delete_pod(key, now_ms),
            Kind::Service => {
                let (namespace, name) = split();
                self.delete_service(namespace, name, now_ms);
            }
            Kind::Node => self.delete_node(key, now_ms),
            Kind::Namespace => self.delete_namespace(key),
            Kind::Job => {
                let (namespace, name) = split();
                self.delete_job(namespace, name);
            }
        }
    }

    /// Recomputes the context of the pods `which` picks (their namespace, services or job
    /// changed), keeping their holdings.
    fn refresh_pods(&mut self, which: impl Fn(&PodEntry) -> bool) {
        let updates: Vec<(&PodEntry, Arc<EndpointInfo>)> = self
            .pods
            .values()
            .filter(|pod| !pod.ips.is_empty() && which(pod))
            .map(|pod| (pod, self.pod_endpoint(pod)))
            .collect();
        if updates.is_empty() {
            return;
        }
        let mut index = self.index.write().expect("index lock");
        for (pod, info) in updates {
            for ip in pod.ips.iter() {
                index.endpoints.update(*ip, &pod.uid, info.clone());
            }
        }
    }

    /// A pod's context from the model.
    fn pod_endpoint(&self, pod: &PodEntry) -> Arc<EndpointInfo> {
        let mut services: Vec<Text> = self
            .services
            .get(&*pod.namespace)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|service| selects(&service.selector, pod))
            .map(|service| compact_str::format_compact!("{}/{}", service.namespace, service.name))
            .collect();
        services.sort();
        let workload = pod.owner.as_deref().map(|(kind, name)| {
            let cronjob = (&**kind == "Job")
                .then(|| {
                    self.jobs
                        .get(&(pod.namespace.to_string(), name.to_string()))
                })
                .flatten()
                .and_then(Option::as_ref)
                .filter(|(owner_kind, _)| owner_kind == "CronJob");
            match cronjob {
                Some((_, cronjob)) => format!("CronJob/{cronjob}"),
                None => workload::from_owner(kind, name, pod.label("pod-template-hash")),
            }
        });
        Arc::new(EndpointInfo {
            kind: EndpointInfoKind::Pod,
            name: (*pod.name).into(),
            namespace: Some((*pod.namespace).into()),
            labels: pod
                .labels
                .iter()
                .filter(|(key, _)| self.filter.keeps(key))
                .map(|(key, value)| compact_str::format_compact!("{key}={value}"))
                .collect(),
            namespace_labels: self
                .namespaces
                .get(&*pod.namespace)
                .cloned()
                .unwrap_or_else(|| self.no_labels.clone()),
            workload: workload.map(Into::into),
            node: pod.node.as_deref().map(Arc::from),
            services,
        })
    }
}

/// The kinds of object the model holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Pod,
    Service,
    Node,
    Namespace,
    Job,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Pod,
        Kind::Service,
        Kind::Node,
        Kind::Namespace,
        Kind::Job,
    ];

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::Node => "nodes",
            Kind::Namespace => "namespaces",
            Kind::Job => "jobs",
        }
    }
}

/// When an object's hold on its addresses starts.
fn holds_from(created_ms: Option<i64>, now_ms: i64, seen: Seen) -> i64 {
    let created_ms = created_ms.unwrap_or(i64::MIN);
    match seen {
        Seen::Listed => created_ms,
        Seen::Live => created_ms.max(now_ms - WATCH_DELAY_MS),
    }
}

/// Whether a service selector picks a pod; an empty selector picks none.
fn selects(selector: &BTreeMap<String, String>, pod: &PodEntry) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(key, value)| pod.label(key) == Some(value.as_str()))
}

fn owned_by_job(pod: &PodEntry, (namespace, name): &(String, String)) -> bool {
    *pod.namespace == *namespace
        && pod
            .owner
            .as_deref()
            .is_some_and(|(kind, owner)| &**kind == "Job" && **owner == *name)
}

fn label_list(labels: &BTreeMap<String, String>, filter: &LabelFilter) -> Vec<Text> {
    labels
        .iter()
        .filter(|(key, _)| filter.keeps(key))
        .map(|(key, value)| compact_str::format_compact!("{key}={value}"))
        .collect()
}

/// Opens once the initial lists are in the index; the processor waits on it before its first
/// batch, so early records are held (by the bounded queue in front of it) rather than
/// forwarded without context.
#[derive(Debug, Default)]
pub struct SyncGate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl SyncGate {
    /// A gate that is already open (no watches to wait for).
    pub fn opened() -> SyncGate {
        let gate = SyncGate::default();
        gate.open();
        gate
    }

    pub fn open(&self) {
        *self.open.lock().expect("gate lock") = true;
        self.opened.notify_all();
    }

    pub fn is_open(&self) -> bool {
        *self.open.lock().expect("gate lock")
    }

    /// Waits up to `timeout` for the gate to open; whether it did.
    pub fn wait(&self, timeout: Duration) -> bool {
        let open = self.open.lock().expect("gate lock");
        let (open, _) = self
            .opened
            .wait_timeout_while(open, timeout, |open| !*open)
            .expect("gate lock");
        *open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn pod(name: &str, address: &str) -> PodInfo {
        PodInfo {
            uid: format!("uid-{name}"),
            name: name.into(),
            namespace: "shop".into(),
            labels: labels(&[("app", "web")]),
            node: Some("node-a".into()),
            ips: address.split(',').map(ip).collect(),
            created_ms: Some(0),
            ..PodInfo::default()
        }
    }

    fn state() -> ClusterState {
        ClusterState::new(LabelFilter::default(), SharedIndex::default())
    }

    /// The name of what held `address` at `at_ms`, and whether it has released it since.
    fn owner(state: &ClusterState, address: &str, at_ms: i64) -> Option<(String, bool)> {
        let index = state.index().read().unwrap();
        index
            .endpoint(ip(address), at_ms)
            .map(|found| (found.owner.name.to_string(), found.released))
    }

    fn context(state: &ClusterState, address: &str) -> Arc<EndpointInfo> {
        let index = state.index().read().unwrap();
        index
            .endpoint(ip(address), i64::MAX - 1)
            .unwrap()
            .owner
            .clone()
    }

    #[test]
    fn ip_reuse_resolves_by_flow_time() {
        let mut state = state();
        state.apply_pod(pod("a", "10.0.0.5"), 1_000, Seen::Listed);
        state.delete_pod("uid-a", 10_000);
        state.apply_pod(pod("b", "10.0.0.5"), 20_000, Seen::Live);
        assert_eq!(owner(&state, "10.0.0.5", 9_999), Some(("a".into(), true)));
        assert_eq!(
            owner(&state, "10.0.0.5", 12_000),
            None,
            "nobody held it in between"
        );
        assert_eq!(
            owner(&state, "10.0.0.5", 20_000 - WATCH_DELAY_MS),
            Some(("b".into(), false))
        );
        // Beyond the grace period the deleted pod is forgotten; the new one stays.
        state.evict(10_000 + 300_001, 300_000);
        assert_eq!(owner(&state, "10.0.0.5", 9_999), None);
        assert_eq!(
            owner(&state, "10.0.0.5", 400_000),
            Some(("b".into(), false))
        );
    }

    #[test]
    fn reuse_seen_before_the_delete_still_splits_the_time() {
        let mut state = state();
        state.apply_pod(pod("a", "10.0.0.5"), 1_000, Seen::Listed);
        state.apply_pod(pod("b", "10.0.0.5"), 20_000, Seen::Live);
        state.delete_pod("uid-a", 25_000);
        assert_eq!(owner(&state, "10.0.0.5", 10_000), Some(("a".into(), true)));
        assert_eq!(owner(&state, "10.0.0.5", 24_000), Some(("b".into(), false)));
    }

    #[test]
    fn terminated_and_host_network_pods_hold_no_address() {
        let mut state = state();
        state.apply_node(
            NodeInfo {
                name: "node-a".into(),
                internal_ips: vec![ip("192.168.0.10")],
                ..NodeInfo::default()
            },
            0,
            Seen::Listed,
        );
        let mut agent = pod("agent", "192.168.0.10");
        agent.host_network = true;
        state.apply_pod(agent, 0, Seen::Listed);
        assert_eq!(
            owner(&state, "192.168.0.10", 5),
            Some(("node-a".into(), false))
        );

        state.apply_pod(pod("job", "10.0.0.9"), 0, Seen::Listed);
        let mut done = pod("job", "10.0.0.9");
        done.terminated = true;
        state.apply_pod(done, 5_000, Seen::Live);
        assert_eq!(owner(&state, "10.0.0.9", 4_000), Some(("job".into(), true)));
        assert_eq!(owner(&state, "10.0.0.9", 6_000), None);
    }

    #[test]
    fn dual_stack_pods_and_deletes_without_addresses() {
        let mut state = state();
        state.apply_pod(pod("a", "10.0.0.5,fd00::5"), 0, Seen::Listed);
        assert_eq!(owner(&state, "fd00::5", 1), Some(("a".into(), false)));
        state.delete_key(Kind::Pod, "uid-a", 100);
        assert_eq!(owner(&state, "10.0.0.5", 50), Some(("a".into(), true)));
        assert_eq!(owner(&state, "fd00::5", 50), Some(("a".into(), true)));
        state.evict(1_000, 10);
        let size = state.index().read().unwrap().size();
        assert_eq!(size, crate::enrich::IndexSize::default());
        assert_eq!(state.counts(), ClusterCounts::default());
    }

    #[test]
    fn namespace_labels_services_and_cronjobs_follow_changes() {
        let mut state = state();
        let mut cron_pod = pod("nightly-28930560-x7k2p", "10.0.0.7");
        cron_pod.owner = Some(("Job".into(), "nightly-28930560".into()));
        state.apply_pod(cron_pod, 0, Seen::Listed);
        state.apply_pod(pod("a", "10.0.0.5"), 0, Seen::Listed);
        assert!(context(&state, "10.0.0.5").namespace_labels.is_empty());
        assert_eq!(
            context(&state, "10.0.0.7").workload.as_deref(),
            Some("Job/nightly-28930560")
        );

        state.apply_namespace(NamespaceInfo {
            name: "shop".into(),
            labels: labels(&[("team", "payments")]),
        });
        assert_eq!(
            &*context(&state, "10.0.0.5").namespace_labels,
            &[Text::from("team=payments")]
        );

        state.apply_job(JobInfo {
            name: "nightly-28930560".into(),
            namespace: "shop".into(),
            owner: Some(("CronJob".into(), "nightly".into())),
        });
        assert_eq!(
            context(&state, "10.0.0.7").workload.as_deref(),
            Some("CronJob/nightly")
        );

        let web = ServiceInfo {
            name: "web".into(),
            namespace: "shop".into(),
            ips: vec![ip("10.96.0.20")],
            selector: labels(&[("app", "web")]),
        };
        state.apply_service(web.clone(), 1_000, Seen::Live);
        assert_eq!(
            context(&state, "10.0.0.5").services,
            [Text::from("shop/web")]
        );
        let resolved = |state: &ClusterState, at_ms| {
            let index = state.index().read().unwrap();
            index
                .service(ip("10.96.0.20"), at_ms)
                .map(|service| service.name.to_string())
        };
        assert_eq!(resolved(&state, 2_000).as_deref(), Some("web"));

        // A selector that no longer matches, then the service gone.
        state.apply_service(
            ServiceInfo {
                selector: labels(&[("app", "api")]),
                ..web
            },
            3_000,
            Seen::Live,
        );
        assert!(context(&state, "10.0.0.5").services.is_empty());
        state.delete_service("shop", "web", 4_000);
        assert_eq!(resolved(&state, 3_500).as_deref(), Some("web"));
        assert_eq!(resolved(&state, 4_500), None);
        // The pod kept its holding through all of it.
        assert_eq!(owner(&state, "10.0.0.5", 1), Some(("a".into(), false)));
    }

    #[test]
    fn label_filter_applies_to_pods_and_namespaces() {
        let filter = LabelFilter {
            include: vec![],
            exclude: vec!["pod-template-hash".into(), "kubernetes.io/*".into()],
        };
        let mut state = ClusterState::new(filter, SharedIndex::default());
        state.apply_namespace(NamespaceInfo {
            name: "shop".into(),
            labels: labels(&[("kubernetes.io/metadata.name", "shop"), ("team", "a")]),
        });
        let mut web = pod("web-5bdcdd9c97-x2k4l", "10.0.0.5");
        web.labels = labels(&[("app", "web"), ("pod-template-hash", "5bdcdd9c97")]);
        web.owner = Some(("ReplicaSet".into(), "web-5bdcdd9c97".into()));
        state.apply_pod(web, 0, Seen::Listed);
        let info = context(&state, "10.0.0.5");
        assert_eq!(info.labels, [Text::from("app=web")]);
        assert_eq!(&*info.namespace_labels, &[Text::from("team=a")]);
        assert_eq!(
            info.workload.as_deref(),
            Some("Deployment/web"),
            "named before the filter drops the hash"
        );
    }

    #[test]
    fn memory_stays_flat_under_churn() {
        let mut state = state();
        // 200 addresses, reused by 20,000 short-lived pods, evicted as the daemon does.
        for generation in 0..100i64 {
            let now = generation * 10_000;
            for slot in 0..200u32 {
                let name = format!("p-{generation}-{slot}");
                let address = std::net::Ipv4Addr::from(0x0a00_0000 + slot).to_string();
                state.apply_pod(pod(&name, &address), now, Seen::Live);
                state.delete_pod(&format!("uid-{name}"), now + 5_000);
            }
            state.evict(now, 30_000);
        }
        assert_eq!(state.counts().pods, 0);
        let (addresses, owners) = state.index().read().unwrap().endpoints.len();
        assert!(addresses <= 200, "{addresses} addresses");
        assert!(owners <= 200 * 4, "{owners} owners kept");
    }

    proptest::proptest! {
        /// Pods come and go on a small pool of addresses (each address handed out only when
        /// free, as IPAM does); every lookup at any time names exactly the pod that held the
        /// address then, or nothing when nobody did (among the holdings an address keeps).
        #[test]
        fn every_flow_time_resolves_to_the_pod_that_held_the_address(
            events in proptest::collection::vec((0u8..6, 1i64..500, proptest::bool::ANY), 1..80),
            probes in proptest::collection::vec((0u8..6, 0i64..40_000), 40),
        ) {
            let mut state = state();
            // Per slot: (pod name, from, until) in order.
            let mut truth: HashMap<u8, Vec<(String, i64, Option<i64>)>> = HashMap::new();
            let mut now = 0;
            for (n, (slot, step, create)) in events.into_iter().enumerate() {
                now += step;
                let holdings = truth.entry(slot).or_default();
                let current = holdings.last().filter(|holding| holding.2.is_none()).map(|holding| holding.0.clone());
                match (create, current) {
                    (true, None) => {
                        let name = format!("p{n}");
                        let mut info = pod(&name, &format!("10.0.0.{slot}"));
                        info.created_ms = Some(now);
                        state.apply_pod(info, now, Seen::Live);
                        holdings.push((name, now, None));
                    }
                    (false, Some(name)) => {
                        state.delete_pod(&format!("uid-{name}"), now);
                        holdings.last_mut().unwrap().2 = Some(now);
                    }
                    _ => {}
                }
            }
            for (slot, at) in probes {
                let holdings = &truth.get(&slot).map(Vec::as_slice).unwrap_or_default();
                let kept = &holdings[holdings.len().saturating_sub(crate::enrich::history::MAX_HOLDINGS)..];
                let expected = kept
                    .iter()
                    .find(|(_, from, until)| *from <= at && until.is_none_or(|until| at < until))
                    .map(|(name, _, until)| (name.clone(), until.is_some()));
                proptest::prop_assert_eq!(owner(&state, &format!("10.0.0.{slot}"), at), expected, "slot {} at {}", slot, at);
            }
        }
    }

    #[test]
    fn the_gate_opens_once() {
        let gate = SyncGate::default();
        assert!(!gate.wait(Duration::from_millis(10)));
        std::thread::scope(|scope| {
            scope.spawn(|| gate.open());
            assert!(gate.wait(Duration::from_secs(10)));
        });
        assert!(SyncGate::opened().is_open());
    }
}
