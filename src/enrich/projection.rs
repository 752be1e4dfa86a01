//! The endpoint index as a projection of the cluster model: an [`Observer`] that keeps
//! enrichment's [`EndpointIndex`] in step with the model, change by change.
//!
//! Times are epoch milliseconds. An object found by a list (the inventory, a watch's initial
//! list or relist) holds its addresses from its creation; one seen by a live event from the
//! moment the event arrived, less [`WATCH_DELAY_MS`]; and never before the address's previous
//! holder released it. A namespace, service or job change recomputes the context of the pods it
//! touches, keeping their holdings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::cluster::model::{Change, Event, Model, Node, Observer, Pod, Seen, Service};
use crate::cluster::{Cluster, SharedClock, WatchScope};
use crate::flow::record::Text;

use super::index::{EndpointIndex, EndpointInfo, EndpointInfoKind, ServiceInfo as ServiceRef};
use super::labels::LabelFilter;
use super::workload;

/// How much earlier than its watch event a live object may already have used an address.
pub const WATCH_DELAY_MS: i64 = 2_000;

/// The index, shared between the projection that writes it and the processor that reads it
/// (once per batch).
pub type SharedIndex = Arc<RwLock<EndpointIndex>>;

/// Keeps the endpoint index in step with the model.
#[derive(Debug)]
pub struct EndpointProjection {
    filter: LabelFilter,
    index: SharedIndex,
    /// Only these pods, services and namespaces are indexed (the model may hold more, for
    /// other consumers).
    scope: WatchScope,
    /// Filtered `key=value` labels, shared by every pod of the namespace.
    namespace_labels: HashMap<String, Arc<[Text]>>,
    no_labels: Arc<[Text]>,
}

impl EndpointProjection {
    pub fn new(filter: LabelFilter, index: SharedIndex, scope: WatchScope) -> EndpointProjection {
        EndpointProjection {
            filter,
            index,
            scope,
            namespace_labels: HashMap::new(),
            no_labels: Arc::from(Vec::new()),
        }
    }

    fn pod_changed(
        &self,
        model: &Model,
        previous: Option<&Pod>,
        current: Option<&Pod>,
        event: &Event<'_>,
    ) {
        let now_ms = event.now_ms;
        let current = current.filter(|pod| self.scope.includes_pod(pod));
        let Some(pod) = current else {
            if let Some(previous) = previous {
                self.index
                    .write()
                    .endpoints
                    .release_owner(previous.uid(), now_ms);
            }
            return;
        };
        let from_ms = holds_from(pod.created_ms(), now_ms, event.seen);
        let info = (!pod.ips().is_empty()).then(|| self.pod_endpoint(model, pod));
        let mut index = self.index.write();
        for released in previous
            .iter()
            .flat_map(|previous| previous.ips())
            .filter(|ip| !pod.ips().contains(ip))
        {
            index.endpoints.release(*released, pod.uid(), now_ms);
        }
        if let Some(info) = info {
            for ip in pod.ips() {
                index
                    .endpoints
                    .assign(*ip, pod.uid().clone(), info.clone(), from_ms);
            }
        }
    }

    fn namespace_changed(&mut self, model: &Model, name: &str) {
        if !self.scope.includes_namespace(name) {
            return;
        }
        let labels: Option<Arc<[Text]>> = model.namespace(name).map(|namespace| {
            namespace
                .labels
                .iter()
                .filter(|(key, _)| self.filter.keeps(key))
                .map(|(key, value)| compact_str::format_compact!("{key}={value}"))
                .collect::<Vec<_>>()
                .into()
        });
        let unchanged = self.namespace_labels.get(name) == labels.as_ref();
        match labels {
            Some(labels) => self.namespace_labels.insert(name.to_owned(), labels),
            None => self.namespace_labels.remove(name),
        };
        if !unchanged {
            self.refresh_pods(model, |pod| pod.namespace() == name);
        }
    }

    fn service_changed(
        &self,
        model: &Model,
        previous: Option<&Service>,
        current: Option<&Service>,
        event: &Event<'_>,
    ) {
        let Some(service) = current.or(previous) else {
            return;
        };
        if !self.scope.includes_namespace(&service.namespace) {
            return;
        }
        let key: Arc<str> = format!("{}/{}", service.namespace, service.name).into();
        {
            let mut index = self.index.write();
            match current {
                None => index.services.release_owner(&key, event.now_ms),
                Some(current) => {
                    for released in previous
                        .iter()
                        .flat_map(|previous| &previous.ips)
                        .filter(|ip| !current.ips.contains(ip))
                    {
                        index.services.release(*released, &key, event.now_ms);
                    }
                    let info = Arc::new(ServiceRef {
                        namespace: current.namespace.as_str().into(),
                        name: current.name.as_str().into(),
                    });
                    for ip in &current.ips {
                        index.services.assign(
                            *ip,
                            key.clone(),
                            info.clone(),
                            holds_from(None, event.now_ms, event.seen),
                        );
                    }
                }
            }
        }
        let old_selector = previous.map(|previous| &previous.selector);
        let new_selector = current.map(|current| &current.selector);
        if old_selector != new_selector {
            self.refresh_pods(model, |pod| {
                previous.is_some_and(|service| service.selects(pod))
                    || current.is_some_and(|service| service.selects(pod))
            });
        }
    }

    fn node_changed(&self, previous: Option<&Node>, current: Option<&Node>, event: &Event<'_>) {
        let Some(name) = current.or(previous).map(|node| node.name.as_str()) else {
            return;
        };
        let key: Arc<str> = format!("node/{name}").into();
        let mut index = self.index.write();
        let Some(node) = current else {
            index.endpoints.release_owner(&key, event.now_ms);
            return;
        };
        let info = Arc::new(EndpointInfo {
            kind: EndpointInfoKind::Node,
            name: name.into(),
            namespace: None,
            labels: node
                .labels
                .iter()
                .filter(|(key, _)| self.filter.keeps(key))
                .map(|(key, value)| compact_str::format_compact!("{key}={value}"))
                .collect(),
            namespace_labels: self.no_labels.clone(),
            workload: None,
            node: Some(Arc::from(name)),
            services: Vec::new(),
        });
        for released in previous
            .iter()
            .flat_map(|previous| &previous.internal_ips)
            .filter(|ip| !node.internal_ips.contains(ip))
        {
            index.endpoints.release(*released, &key, event.now_ms);
        }
        let from_ms = holds_from(node.created_ms, event.now_ms, event.seen);
        for ip in &node.internal_ips {
            index
                .endpoints
                .assign(*ip, key.clone(), info.clone(), from_ms);
        }
    }

    /// Recomputes the context of the pods `which` picks (their namespace, services or job
    /// changed), keeping their holdings.
    fn refresh_pods(&self, model: &Model, which: impl Fn(&Pod) -> bool) {
        let updates: Vec<(&Pod, Arc<EndpointInfo>)> = model
            .all_pods()
            .filter(|pod| !pod.ips().is_empty() && self.scope.includes_pod(pod) && which(pod))
            .map(|pod| (pod, self.pod_endpoint(model, pod)))
            .collect();
        if updates.is_empty() {
            return;
        }
        let mut index = self.index.write();
        for (pod, info) in updates {
            for ip in pod.ips() {
                index.endpoints.update(*ip, pod.uid(), info.clone());
            }
        }
    }

    /// A pod's context from the model.
    fn pod_endpoint(&self, model: &Model, pod: &Pod) -> Arc<EndpointInfo> {
        let mut services: Vec<Text> = model
            .services_in(pod.namespace())
            .filter(|service| service.selects(pod))
            .map(|service| compact_str::format_compact!("{}/{}", service.namespace, service.name))
            .collect();
        services.sort();
        let workload = pod.owner().map(|(kind, name)| {
            let cronjob = (kind == "Job")
                .then(|| model.job_owner(pod.namespace(), name))
                .flatten()
                .filter(|(owner_kind, _)| *owner_kind == "CronJob");
            match cronjob {
                Some((_, cronjob)) => format!("CronJob/{cronjob}"),
                None => workload::from_owner(kind, name, pod.label("pod-template-hash")),
            }
        });
        Arc::new(EndpointInfo {
            kind: EndpointInfoKind::Pod,
            name: pod.name().into(),
            namespace: Some(pod.namespace().into()),
            labels: pod
                .labels()
                .iter()
                .filter(|(key, _)| self.filter.keeps(key))
                .map(|(key, value)| compact_str::format_compact!("{key}={value}"))
                .collect(),
            namespace_labels: self
                .namespace_labels
                .get(pod.namespace())
                .cloned()
                .unwrap_or_else(|| self.no_labels.clone()),
            workload: workload.map(Into::into),
            node: pod.node().map(Arc::from),
            services,
        })
    }
}

impl Observer for EndpointProjection {
    fn observe(&mut self, model: &Model, event: &Event<'_>) {
        match event.change {
            Change::Pod { previous, current } => self.pod_changed(model, previous, current, event),
            Change::Namespace { name } => self.namespace_changed(model, name),
            Change::Service { previous, current } => {
                self.service_changed(model, previous, current, event)
            }
            Change::Node { previous, current } => self.node_changed(previous, current, event),
            Change::Job { namespace, name } => self.refresh_pods(model, |pod| {
                pod.namespace() == namespace
                    && pod
                        .owner()
                        .is_some_and(|(kind, owner)| kind == "Job" && owner == name)
            }),
            Change::Policy { .. } => {}
        }
    }
}

/// Keeps `index` as a projection of `cluster` (scoped to `scope`, labels passed through
/// `filter`), and evicts what the index releases `grace` after the release, until `stop`.
pub fn project(
    cluster: &Cluster,
    index: SharedIndex,
    filter: LabelFilter,
    scope: WatchScope,
    grace: Duration,
    metrics: IndexMetrics,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    cluster.observe(Box::new(EndpointProjection::new(
        filter,
        index.clone(),
        scope,
    )));
    tokio::spawn(run_eviction(
        index,
        grace,
        cluster.clock().clone(),
        metrics,
        stop,
    ))
}

/// Forgets addresses released more than `grace_ms` before `now_ms`.
pub fn evict(index: &SharedIndex, now_ms: i64, grace_ms: i64) {
    let mut index = index.write();
    index.endpoints.evict(now_ms, grace_ms);
    index.services.evict(now_ms, grace_ms);
}

/// Evicts released addresses past the grace period on a timer, and keeps the index's size
/// gauges, until `stop`.
pub async fn run_eviction(
    index: SharedIndex,
    grace: Duration,
    clock: SharedClock,
    metrics: IndexMetrics,
    stop: CancellationToken,
) {
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(eviction_interval(grace));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                evict(&index, clock.now_ms(), grace_ms);
                metrics.measure(&index.read());
            }
        }
    }
}

/// A tenth of the grace period, between 100 ms and 30 s: an address outlives its grace by at
/// most that.
fn eviction_interval(grace: Duration) -> Duration {
    (grace / 10).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AddressLabels {
    kind: &'static str,
}

/// The index's size.
#[derive(Clone, Debug, Default)]
pub struct IndexMetrics {
    addresses: Family<AddressLabels, Gauge>,
}

impl IndexMetrics {
    const KINDS: [&'static str; 3] = ["endpoint", "service", "released"];

    pub fn register(registry: &mut Registry) -> IndexMetrics {
        IndexMetrics {
            addresses: crate::telemetry::family(
                registry,
                "index_addresses",
                "Addresses in the endpoint index: endpoint (pods and nodes), service, and released (deleted pods kept for the grace period)",
                Self::KINDS.map(|kind| AddressLabels { kind }),
            ),
        }
    }

    pub fn measure(&self, index: &EndpointIndex) {
        let size = index.size();
        let counts = [
            size.endpoint_addresses,
            size.service_addresses,
            size.released_addresses,
        ];
        for (kind, count) in Self::KINDS.into_iter().zip(counts) {
            self.addresses
                .get_or_create(&AddressLabels { kind })
                .set(count as i64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::model::Kind;
    use crate::cluster::objects::{JobInfo, NamespaceInfo, NodeInfo, PodInfo, ServiceInfo};
    use std::collections::BTreeMap;
    use std::net::IpAddr;

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

    /// A model with the projection attached, and the index it keeps.
    struct State {
        model: Model,
        index: SharedIndex,
    }

    impl std::ops::Deref for State {
        type Target = Model;
        fn deref(&self) -> &Model {
            &self.model
        }
    }

    impl std::ops::DerefMut for State {
        fn deref_mut(&mut self) -> &mut Model {
            &mut self.model
        }
    }

    impl State {
        fn with_filter(filter: LabelFilter) -> State {
            let index = SharedIndex::default();
            let mut model = Model::default();
            let projection = EndpointProjection::new(filter, index.clone(), WatchScope::default());
            model.observe(Box::new(projection), 0);
            State { model, index }
        }

        fn evict(&self, now_ms: i64, grace_ms: i64) {
            evict(&self.index, now_ms, grace_ms);
        }
    }

    fn state() -> State {
        State::with_filter(LabelFilter::default())
    }

    /// The name of what held `address` at `at_ms`, and whether it has released it since.
    fn owner(state: &State, address: &str, at_ms: i64) -> Option<(String, bool)> {
        let index = state.index.read();
        index
            .endpoint(ip(address), at_ms)
            .map(|found| (found.owner.name.to_string(), found.released))
    }

    fn context(state: &State, address: &str) -> Arc<EndpointInfo> {
        let index = state.index.read();
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
        let size = state.index.read().size();
        assert_eq!(size, crate::enrich::IndexSize::default());
        assert_eq!(state.counts(), Default::default());
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

        state.apply_namespace(
            NamespaceInfo {
                name: "shop".into(),
                labels: labels(&[("team", "payments")]),
                annotations: Default::default(),
            },
            0,
            Seen::Live,
        );
        assert_eq!(
            &*context(&state, "10.0.0.5").namespace_labels,
            &[Text::from("team=payments")]
        );

        state.apply_job(
            JobInfo {
                name: "nightly-28930560".into(),
                namespace: "shop".into(),
                owner: Some(("CronJob".into(), "nightly".into())),
            },
            0,
            Seen::Live,
        );
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
        let resolved = |state: &State, at_ms| {
            let index = state.index.read();
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
        let mut state = State::with_filter(filter);
        state.apply_namespace(
            NamespaceInfo {
                name: "shop".into(),
                labels: labels(&[("kubernetes.io/metadata.name", "shop"), ("team", "a")]),
                annotations: Default::default(),
            },
            0,
            Seen::Listed,
        );
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

    #[tokio::test(start_paused = true)]
    async fn released_addresses_are_evicted_by_the_timer_after_the_grace_period() {
        let cluster = Cluster::new(Arc::new(crate::clock::TokioClock::new()));
        let index = SharedIndex::default();
        let stop = CancellationToken::new();
        let eviction = project(
            &cluster,
            index.clone(),
            LabelFilter::default(),
            WatchScope::default(),
            Duration::from_secs(60),
            IndexMetrics::default(),
            stop.clone(),
        );
        let clock = cluster.clock().clone();
        cluster.update(|model| model.apply_pod(pod("a", "10.0.0.5"), clock.now_ms(), Seen::Live));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let deleted_ms = clock.now_ms();
        cluster.update(|model| model.delete_pod("uid-a", deleted_ms));
        let held = || {
            index
                .read()
                .endpoint(ip("10.0.0.5"), deleted_ms - 1)
                .map(|found| found.released)
        };
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert_eq!(
            held(),
            Some(true),
            "a late flow still resolves within the grace period"
        );
        // The timer runs every tenth of the grace period: gone at most 6 s after it passed.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(held(), None);
        assert!(index.read().is_empty());
        stop.cancel();
        eviction.await.unwrap();
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
        let (addresses, owners) = state.index.read().endpoints.len();
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
}
