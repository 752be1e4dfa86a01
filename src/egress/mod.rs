//! Egress identities: the fixed source IPs each namespace leaves the cluster with, learned from
//! the cluster's egress mechanism, published to every firewall target as `egress.<namespace>`
//! groups, named in enriched flows, and guarded against impersonation by an admission policy.
//!
//! ```text
//! API discovery -> Mechanism (or the configured one)
//! mechanism's objects (one reflector each) --+
//! cluster model (pods, namespaces, nodes) ---+--> resolve (pure) -> Resolution
//!     -> Keeper (an address that disappears stays for the TTL) -> EgressSnapshot
//!     --watch--> address sync (groups on every target)    --ArcSwap--> enrichment lookup
//! ```
//!
//! [`objects`] reads the mechanisms' objects, [`resolve`] turns them and the model into each
//! namespace's identity, [`admission`] renders the policy that guards the claims. Every replica
//! resolves (enrichment needs the identities everywhere); only the leader's address sync
//! writes.

pub mod admission;
pub mod config;
pub mod objects;
pub mod resolve;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use kube::api::{ApiResource, GroupVersionKind};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::cluster::watch::Reflected;
use crate::cluster::Cluster;
use crate::deps::Deps;
use crate::net::backoff::Backoff;
use crate::telemetry;
use config::EgressConfig;
use objects::{EgressObjects, Resource};
use resolve::{Mechanism, Resolution, Warning};

/// One namespace's identity as published: what the firewall groups hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Published {
    /// Observed and declared addresses, and those observed within the TTL.
    #[serde(serialize_with = "display_all")]
    pub nets: BTreeSet<IpNet>,
    /// Node addresses, shared by every namespace on those nodes.
    pub weak: bool,
    /// The objects it was resolved from.
    pub via: BTreeSet<String>,
}

fn display_all<S: serde::Serializer>(
    nets: &BTreeSet<IpNet>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(nets.iter().map(ToString::to_string))
}

/// Every namespace's published identity, as of one resolution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressSnapshot {
    pub mechanism: Option<Mechanism>,
    /// Namespace -> its identity.
    pub identities: BTreeMap<String, Published>,
    pub warnings: BTreeSet<Warning>,
}

/// Keeps each namespace's addresses for the TTL after they were last resolved, so a status
/// briefly empty during a failover never shrinks a firewall group.
#[derive(Debug)]
pub struct Keeper {
    ttl_ms: i64,
    /// Namespace -> address -> last resolved (epoch ms).
    seen: BTreeMap<String, BTreeMap<IpNet, i64>>,
    /// Namespace -> whether it was weak, and where it came from, when last resolved.
    last: BTreeMap<String, (bool, BTreeSet<String>)>,
}

impl Keeper {
    pub fn new(ttl: Duration) -> Keeper {
        Keeper {
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            seen: BTreeMap::new(),
            last: BTreeMap::new(),
        }
    }

    /// What each namespace's group holds after `resolution` at `now_ms`: its addresses, and
    /// whether it is weak and where it came from as last resolved.
    pub fn update(&mut self, resolution: &Resolution, now_ms: i64) -> BTreeMap<String, Published> {
        for (namespace, identity) in &resolution.identities {
            let seen = self.seen.entry(namespace.clone()).or_default();
            for net in identity.nets() {
                seen.insert(net, now_ms);
            }
            self.last
                .insert(namespace.clone(), (identity.weak, identity.via.clone()));
        }
        let ttl_ms = self.ttl_ms;
        for seen in self.seen.values_mut() {
            seen.retain(|_, last| now_ms.saturating_sub(*last) <= ttl_ms);
        }
        self.seen.retain(|_, seen| !seen.is_empty());
        self.last
            .retain(|namespace, _| self.seen.contains_key(namespace));
        self.seen
            .iter()
            .map(|(namespace, seen)| {
                let (weak, via) = self.last.get(namespace).cloned().unwrap_or_default();
                let published = Published {
                    nets: seen.keys().copied().collect(),
                    weak,
                    via,
                };
                (namespace.clone(), published)
            })
            .collect()
    }

    /// When the next kept address expires, if any.
    pub fn next_expiry_ms(&self) -> Option<i64> {
        self.seen
            .values()
            .flat_map(|seen| seen.values())
            .min()
            .map(|last| last.saturating_add(self.ttl_ms) + 1)
    }
}

/// Egress address -> the namespaces behind it, for enrichment. Single addresses are hashed;
/// the few declared ranges are scanned.
#[derive(Debug, Default)]
pub struct EgressIndex {
    addresses: HashMap<IpAddr, Arc<str>>,
    ranges: Vec<(IpNet, Arc<str>)>,
}

impl EgressIndex {
    pub fn new(snapshot: &EgressSnapshot) -> EgressIndex {
        let mut owners: BTreeMap<IpNet, BTreeSet<&str>> = BTreeMap::new();
        for (namespace, identity) in &snapshot.identities {
            // Node addresses are every namespace's on that node: they name none.
            if identity.weak {
                continue;
            }
            for net in &identity.nets {
                owners.entry(*net).or_default().insert(namespace);
            }
        }
        let mut index = EgressIndex::default();
        for (net, namespaces) in owners {
            let names: Arc<str> = namespaces.into_iter().collect::<Vec<_>>().join(",").into();
            if net.prefix_len() == net.max_prefix_len() {
                index.addresses.insert(net.addr(), names);
            } else {
                index.ranges.push((net, names));
            }
        }
        index
    }

    /// The namespaces (comma-separated) whose egress identity `ip` is: every one whose
    /// address or range holds it.
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<str>> {
        let mut found: Vec<&Arc<str>> = self.addresses.get(&ip).into_iter().collect();
        found.extend(
            self.ranges
                .iter()
                .filter(|(net, _)| net.contains(&ip))
                .map(|(_, names)| names),
        );
        match found.as_slice() {
            [] => None,
            [one] => Some(Arc::clone(one)),
            many => {
                let names: BTreeSet<&str> =
                    many.iter().flat_map(|names| names.split(',')).collect();
                Some(names.into_iter().collect::<Vec<_>>().join(",").into())
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.ranges.is_empty()
    }
}

/// The current [`EgressIndex`], swapped in as identities change; cheap to read per record.
#[derive(Clone, Debug, Default)]
pub struct EgressLookup(Arc<ArcSwap<EgressIndex>>);

impl EgressLookup {
    pub fn load(&self) -> arc_swap::Guard<Arc<EgressIndex>> {
        self.0.load()
    }

    pub fn store(&self, index: EgressIndex) {
        self.0.store(Arc::new(index));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: &'static str,
}

const WARNING_KINDS: [&str; 7] = [
    "shared_identity",
    "missing_policy",
    "unresolved",
    "pod_override",
    "overlap",
    "unreadable",
    "weak",
];

/// The egress identity metrics.
#[derive(Clone, Debug)]
pub struct EgressMetrics {
    identities: Gauge,
    addresses: MetricFamily<FamilyLabels, Gauge>,
    warnings: MetricFamily<KindLabels, Gauge>,
}

impl Default for EgressMetrics {
    fn default() -> Self {
        EgressMetrics::register(&mut Registry::default())
    }
}

impl EgressMetrics {
    pub fn register(registry: &mut Registry) -> EgressMetrics {
        EgressMetrics {
            identities: telemetry::metric(
                registry,
                "identities",
                "Namespaces with an egress identity published",
            ),
            addresses: telemetry::family(
                registry,
                "addresses",
                "Addresses (and declared ranges) in the published egress identities, by family",
                ["ipv4", "ipv6"].map(|family| FamilyLabels { family }),
            ),
            warnings: telemetry::family(
                registry,
                "warnings",
                "Current egress identity warnings, by kind (see /status for each)",
                WARNING_KINDS.map(|kind| KindLabels { kind }),
            ),
        }
    }

    fn record(&self, snapshot: &EgressSnapshot) {
        self.identities
            .set(i64::try_from(snapshot.identities.len()).unwrap_or(i64::MAX));
        for (family, v4) in [("ipv4", true), ("ipv6", false)] {
            let count = snapshot
                .identities
                .values()
                .flat_map(|identity| &identity.nets)
                .filter(|net| matches!(net, IpNet::V4(_)) == v4)
                .count();
            self.addresses
                .get_or_create(&FamilyLabels { family })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for kind in WARNING_KINDS {
            let count = snapshot.warnings.iter().filter(|w| w.kind == kind).count();
            self.warnings
                .get_or_create(&KindLabels { kind })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// Egress identities on `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EgressStatus {
    /// The mechanism read, once known.
    pub mechanism: Option<Mechanism>,
    /// Why identities cannot be (fully) resolved now: discovery failing, or watches failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub identities: BTreeMap<String, Published>,
    pub warnings: Vec<StatusWarning>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusWarning {
    pub kind: &'static str,
    pub message: String,
}

/// Where `/status` reads the egress identities from.
pub type EgressBoard = Arc<Mutex<Option<EgressStatus>>>;

/// The egress stage could not start.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StartError(#[from] crate::deps::KubeUnavailable);

impl StartError {
    pub fn kind(&self) -> &'static str {
        "kubernetes"
    }
}

/// The running egress identity resolution.
pub struct Egress {
    /// The latest snapshot; `None` until the first resolution.
    pub snapshot: watch::Receiver<Option<Arc<EgressSnapshot>>>,
    /// Enrichment's view of the identities.
    pub lookup: EgressLookup,
    task: tokio::task::JoinHandle<()>,
}

impl Egress {
    /// Starts resolving identities under `config`: detects the mechanism (unless it is set),
    /// watches its objects, and publishes a snapshot after every change of them or the model.
    pub async fn start(
        deps: &Deps,
        config: &EgressConfig,
        cluster: &Cluster,
        metrics: &EgressMetrics,
        board: &EgressBoard,
        stop: &CancellationToken,
    ) -> Result<Egress, StartError> {
        let client = match config.mechanism {
            Some(Mechanism::Node) => None,
            _ => Some(deps.kube("firewall.egress_identities").await?),
        };
        let (sender, snapshot) = watch::channel(None);
        let lookup = EgressLookup::default();
        *board.lock() = Some(EgressStatus::default());
        let resolver = Resolver {
            config: config.clone(),
            cluster: cluster.clone(),
            client,
            sender,
            lookup: lookup.clone(),
            metrics: metrics.clone(),
            board: board.clone(),
            keeper: Keeper::new(Duration::from_secs(config.ttl_secs)),
        };
        let task = tokio::spawn(resolver.run(stop.clone()));
        Ok(Egress {
            snapshot,
            lookup,
            task,
        })
    }

    pub async fn join(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "the egress identity task failed");
        }
    }
}

/// The mechanism a cluster serves, from API discovery.
pub async fn detect(client: &kube::Client) -> Result<Option<Mechanism>, kube::Error> {
    let groups = client.list_api_groups().await?;
    let known: BTreeSet<(&str, &str)> = [
        Mechanism::Calico,
        Mechanism::Cilium,
        Mechanism::Isovalent,
        Mechanism::Antrea,
        Mechanism::Ovn,
        Mechanism::Aks,
    ]
    .iter()
    .flat_map(|mechanism| mechanism.resources())
    .map(|resource| {
        let (group, version, ..) = resource.api();
        (group, version)
    })
    .collect();
    let mut served = BTreeSet::new();
    for group in &groups.groups {
        for version in &group.versions {
            if !known.contains(&(group.name.as_str(), version.version.as_str())) {
                continue;
            }
            let resources = client
                .list_api_group_resources(&version.group_version)
                .await?;
            served.extend(
                resources
                    .resources
                    .iter()
                    .map(|resource| format!("{}/{}", group.name, resource.name)),
            );
        }
    }
    Ok(Mechanism::detect(&served))
}

/// One reflector per object kind the mechanism is resolved from.
type Stores = Vec<(Resource, Reflected)>;

/// How long the first resolution waits for the kinds' first lists (all together); a kind whose
/// watch fails (its API not served, or not permitted) is resolved without, and named in the
/// status.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(10);

struct Resolver {
    config: EgressConfig,
    cluster: Cluster,
    client: Option<kube::Client>,
    sender: watch::Sender<Option<Arc<EgressSnapshot>>>,
    lookup: EgressLookup,
    metrics: EgressMetrics,
    board: EgressBoard,
    keeper: Keeper,
}

impl Resolver {
    async fn run(mut self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let mechanism = loop {
            match self.mechanism().await {
                Ok(mechanism) => break mechanism,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "cannot discover the cluster's egress mechanism");
                    self.set_error(Some(format!("API discovery failed: {error}")));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        tracing::info!(%mechanism, "egress identities are resolved from this mechanism");
        self.set_error(None);
        let changed = Arc::new(Notify::new());
        let stores = match &self.client {
            Some(client) => watch_objects(client, mechanism, &changed, &stop),
            None => Vec::new(),
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = self.cluster.gate().wait() => {}
        }
        let deadline = tokio::time::Instant::now() + FIRST_LIST_WAIT;
        for (resource, reflected) in &stores {
            tokio::select! {
                _ = stop.cancelled() => return,
                ready = tokio::time::timeout_at(deadline, reflected.store.wait_until_ready()) => {
                    if !matches!(ready, Ok(Ok(()))) {
                        tracing::warn!(resource = resource.api().3, "an egress watch has not listed; resolving without it");
                    }
                }
            }
        }
        let mut changes = self.cluster.changes();
        loop {
            changes.borrow_and_update();
            self.resolve(mechanism, &stores);
            let clock = self.cluster.clock().clone();
            let expiry = self.keeper.next_expiry_ms().map(|at| {
                Duration::from_millis(u64::try_from(at.saturating_sub(clock.now_ms())).unwrap_or(0))
            });
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
                _ = changed.notified() => {}
                _ = sleep_or_forever(expiry) => {}
            }
            // A burst of changes (a rollout, a failover) settles into one resolution.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn mechanism(&self) -> Result<Mechanism, kube::Error> {
        if let Some(mechanism) = self.config.mechanism {
            return Ok(mechanism);
        }
        let client = self.client.as_ref().expect("auto detection has a client");
        Ok(detect(client).await?.unwrap_or_else(|| {
            tracing::warn!("the cluster serves no egress gateway API: namespaces leave through their nodes' addresses (published with node_fallback)");
            Mechanism::Node
        }))
    }

    fn set_error(&self, error: Option<String>) {
        if let Some(status) = self.board.lock().as_mut() {
            status.error = error;
        }
    }

    fn resolve(&mut self, mechanism: Mechanism, stores: &Stores) {
        let mut objects = EgressObjects::default();
        let failing: Vec<String> = stores
            .iter()
            .filter_map(|(resource, reflected)| {
                let error = reflected.error.lock().clone()?;
                Some(format!("{}: {error}", resource.api().3))
            })
            .collect();
        self.set_error((!failing.is_empty()).then(|| {
            format!(
                "watches failing (their objects are left out): {}",
                failing.join("; ")
            )
        }));
        for (resource, reflected) in stores {
            for object in reflected.store.state() {
                match serde_json::to_value(&*object) {
                    Ok(value) => objects.add(*resource, &value),
                    Err(error) => tracing::warn!(%error, "an egress object cannot be read"),
                }
            }
        }
        let resolution = resolve::resolve(mechanism, &self.cluster.read(), &objects, &self.config);
        let now_ms = self.cluster.clock().now_ms();
        let snapshot = EgressSnapshot {
            mechanism: Some(mechanism),
            identities: self.keeper.update(&resolution, now_ms),
            warnings: resolution.warnings,
        };
        let previous = self.sender.borrow().clone();
        if previous.as_deref() == Some(&snapshot) {
            return;
        }
        for warning in &snapshot.warnings {
            let known = previous
                .as_ref()
                .is_some_and(|previous| previous.warnings.contains(warning));
            if !known {
                tracing::warn!(kind = warning.kind, "{}", warning.message);
            }
        }
        self.metrics.record(&snapshot);
        self.lookup.store(EgressIndex::new(&snapshot));
        if let Some(status) = self.board.lock().as_mut() {
            status.mechanism = snapshot.mechanism;
            status.identities = snapshot.identities.clone();
            status.warnings = snapshot
                .warnings
                .iter()
                .map(|warning| StatusWarning {
                    kind: warning.kind,
                    message: warning.message.clone(),
                })
                .collect();
        }
        self.sender.send_replace(Some(Arc::new(snapshot)));
    }
}

async fn sleep_or_forever(delay: Option<Duration>) {
    match delay {
        Some(delay) => tokio::time::sleep(delay).await,
        None => std::future::pending().await,
    }
}

/// One reflector per object kind of `mechanism`; each change wakes `changed`.
fn watch_objects(
    client: &kube::Client,
    mechanism: Mechanism,
    changed: &Arc<Notify>,
    stop: &CancellationToken,
) -> Stores {
    let kinds: Vec<ApiResource> = mechanism
        .resources()
        .iter()
        .map(|resource| {
            let (group, version, kind, plural, _) = resource.api();
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
        })
        .collect();
    let reflected = crate::cluster::watch::reflect(client, kinds, changed, stop);
    mechanism
        .resources()
        .iter()
        .copied()
        .zip(reflected)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolution(namespace: &str, ips: &[&str]) -> Resolution {
        let mut resolution = Resolution::default();
        let identity = resolution.identities.entry(namespace.into()).or_default();
        identity.observed = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        resolution
    }

    fn nets(ips: &[&str]) -> BTreeSet<IpNet> {
        ips.iter()
            .map(|ip| IpNet::from(ip.parse::<IpAddr>().unwrap()))
            .collect()
    }

    fn kept(
        keeper: &mut Keeper,
        resolution: &Resolution,
        now_ms: i64,
    ) -> BTreeMap<String, BTreeSet<IpNet>> {
        keeper
            .update(resolution, now_ms)
            .into_iter()
            .map(|(namespace, published)| (namespace, published.nets))
            .collect()
    }

    #[test]
    fn an_address_stays_for_the_ttl_after_it_was_last_resolved() {
        let mut keeper = Keeper::new(Duration::from_secs(60));
        let mut weak = resolution("payments", &["192.0.2.10"]);
        weak.identities.get_mut("payments").unwrap().weak = true;
        let first = keeper.update(&weak, 0);
        assert_eq!(first["payments"].nets, nets(&["192.0.2.10"]));
        // Failover: the status is briefly empty, then names another address; a kept
        // identity keeps what it was (weak).
        let during = keeper.update(&Resolution::default(), 5_000);
        assert_eq!(during["payments"].nets, nets(&["192.0.2.10"]));
        assert!(during["payments"].weak);
        let kept = kept(
            &mut keeper,
            &resolution("payments", &["192.0.2.11"]),
            10_000,
        );
        assert_eq!(kept["payments"], nets(&["192.0.2.10", "192.0.2.11"]));
        assert_eq!(keeper.next_expiry_ms(), Some(60_001));
        let after = keeper.update(&resolution("payments", &["192.0.2.11"]), 60_001);
        assert_eq!(after["payments"].nets, nets(&["192.0.2.11"]));
        assert!(!after["payments"].weak);
        let kept = keeper.update(&Resolution::default(), 200_000);
        assert!(kept.is_empty());
        assert_eq!(keeper.next_expiry_ms(), None);
    }

    #[test]
    fn the_index_names_the_namespaces_behind_an_address_but_not_node_addresses() {
        let mut snapshot = EgressSnapshot::default();
        let published = |nets: &[&str], weak| Published {
            nets: nets.iter().map(|net| net.parse().unwrap()).collect(),
            weak,
            via: BTreeSet::new(),
        };
        snapshot.identities.insert(
            "payments".into(),
            published(&["192.0.2.10/32", "198.51.100.0/28"], false),
        );
        snapshot.identities.insert(
            "billing".into(),
            published(&["192.0.2.10/32", "198.51.100.0/30"], false),
        );
        snapshot
            .identities
            .insert("web".into(), published(&["10.0.0.5/32"], true));
        let index = EgressIndex::new(&snapshot);
        let lookup = |ip: &str| {
            index
                .lookup(ip.parse().unwrap())
                .map(|names| names.to_string())
        };
        assert_eq!(lookup("192.0.2.10").as_deref(), Some("billing,payments"));
        assert_eq!(lookup("198.51.100.7").as_deref(), Some("payments"));
        assert_eq!(lookup("198.51.100.1").as_deref(), Some("billing,payments"));
        assert_eq!(lookup("10.0.0.5"), None);
        assert_eq!(lookup("203.0.113.1"), None);
    }
}
