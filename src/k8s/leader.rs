//! Leader election on a `coordination.k8s.io/v1` Lease, so that exactly one replica writes to
//! the cluster (GlobalNetworkSets and policies) while every replica consumes and forwards
//! flows.
//!
//! The algorithm is the one client-go uses. A candidate reads the Lease; if nobody holds it, or
//! its holder has not renewed it for `lease_duration_secs` *as observed locally* (from when this
//! candidate first saw the current record, so clocks need not agree), the candidate writes
//! itself in as holder. Every write is a replace at the resource version just read, so of two
//! candidates only one can win. The leader renews every `retry_period_secs`; if it has not
//! renewed for `renew_deadline_secs` (less than the lease duration) it stops leading before
//! anyone else may start. On shutdown the leader releases the Lease, so a successor takes over
//! at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::problems::{is_dns_subdomain, Problems};

/// Leader election among replicas, through a Lease in the namespace threatflow runs in.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// The Lease's name.
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// The Lease's namespace. Default: the `POD_NAMESPACE` environment variable (set it from
    /// the downward API), else `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// This replica's name in the Lease. Default: the `POD_NAME` environment variable, else
    /// the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// How long a leader that stopped renewing keeps the Lease before another replica may take
    /// it.
    #[serde(default = "default_lease_duration_secs")]
    pub lease_duration_secs: u64,
    /// A leader that could not renew for this long stops leading (before the Lease expires).
    #[serde(default = "default_renew_deadline_secs")]
    pub renew_deadline_secs: u64,
    /// How often the Lease is renewed, or tried for.
    #[serde(default = "default_retry_period_secs")]
    pub retry_period_secs: u64,
}

fn default_lease_name() -> String {
    "threatflow".into()
}
fn default_lease_duration_secs() -> u64 {
    15
}
fn default_renew_deadline_secs() -> u64 {
    10
}
fn default_retry_period_secs() -> u64 {
    2
}

impl LeaderElectionConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if !is_dns_subdomain(&self.lease_name) {
            problems.push(
                format!("{path}.lease_name"),
                "must be a lowercase DNS subdomain name",
            );
        }
        if self.retry_period_secs == 0
            || self.retry_period_secs >= self.renew_deadline_secs
            || self.renew_deadline_secs >= self.lease_duration_secs
        {
            problems.push(
                path,
                "needs 0 < retry_period_secs < renew_deadline_secs < lease_duration_secs",
            );
        }
    }

    fn namespace(&self, identity: &Identity) -> String {
        self.namespace
            .clone()
            .or_else(|| identity.pod_namespace.clone())
            .unwrap_or_else(|| "default".into())
    }

    fn identity(&self, identity: &Identity) -> String {
        self.identity
            .clone()
            .unwrap_or_else(|| identity.replica().to_owned())
    }
}

/// Whether this replica leads now; cheap to clone and to ask.
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// Without election, the sender of a value that never changes.
    _fixed: Option<Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// A replica without election: it always leads.
    pub fn always() -> Leadership {
        let (sender, leading) = watch::channel(true);
        Leadership {
            leading,
            _fixed: Some(Arc::new(sender)),
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Waits until leadership changes; returns whether this replica now leads.
    pub async fn changed(&mut self) -> bool {
        if self.leading.changed().await.is_err() {
            // The election ended (shutdown): nothing will change any more.
            std::future::pending::<()>().await;
        }
        *self.leading.borrow_and_update()
    }
}

/// Where the Lease lives: the Kubernetes API, or (in tests) memory.
pub trait LeaseStore: Send + Sync + 'static {
    /// The Lease, if it exists.
    fn get(&self, name: &str) -> impl Future<Output = Result<Option<Lease>, kube::Error>> + Send;
    /// Creates the Lease; a 409 error if it exists.
    fn create(&self, lease: &Lease) -> impl Future<Output = Result<(), kube::Error>> + Send;
    /// Replaces the Lease at the resource version it was read at; a 409 error if someone
    /// else wrote it meanwhile.
    fn replace(
        &self,
        name: &str,
        lease: &Lease,
    ) -> impl Future<Output = Result<(), kube::Error>> + Send;
}

impl LeaseStore for Api<Lease> {
    async fn get(&self, name: &str) -> Result<Option<Lease>, kube::Error> {
        self.get_opt(name).await
    }

    async fn create(&self, lease: &Lease) -> Result<(), kube::Error> {
        Api::create(self, &PostParams::default(), lease)
            .await
            .map(drop)
    }

    async fn replace(&self, name: &str, lease: &Lease) -> Result<(), kube::Error> {
        Api::replace(self, name, &PostParams::default(), lease)
            .await
            .map(drop)
    }
}

/// Runs an election until `stop`; the returned [`Leadership`] follows it.
pub fn start(
    client: kube::Client,
    settings: &LeaderElectionConfig,
    identity: &Identity,
    leading_metric: prometheus_client::metrics::gauge::Gauge,
    stop: CancellationToken,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let store: Api<Lease> = Api::namespaced(client, &settings.namespace(identity));
    start_with(
        store,
        settings,
        settings.identity(identity),
        leading_metric,
        stop,
    )
}

/// [`start`] with the Lease in `store`, as `identity`.
pub fn start_with<S: LeaseStore>(
    store: S,
    settings: &LeaderElectionConfig,
    identity: String,
    leading_metric: prometheus_client::metrics::gauge::Gauge,
    stop: CancellationToken,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (sender, leading) = watch::channel(false);
    let elector = Elector {
        api: store,
        name: settings.lease_name.clone(),
        identity,
        lease_duration: Duration::from_secs(settings.lease_duration_secs),
        renew_deadline: Duration::from_secs(settings.renew_deadline_secs),
        retry_period: Duration::from_secs(settings.retry_period_secs),
        observed: None,
        sender,
        metric: leading_metric,
    };
    let task = tokio::spawn(elector.run(stop));
    (
        Leadership {
            leading,
            _fixed: None,
        },
        task,
    )
}

/// What identifies one renewal of a Lease: its holder and renew time.
type LeaseRecord = (Option<String>, Option<MicroTime>);

struct Elector<S> {
    api: S,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
    /// The other holder's record as last seen (holder, renew time), and when it was first
    /// seen: the Lease expires `lease_duration` after that, by this replica's clock.
    observed: Option<(LeaseRecord, Instant)>,
    sender: watch::Sender<bool>,
    metric: prometheus_client::metrics::gauge::Gauge,
}

impl<S: LeaseStore> Elector<S> {
    async fn run(mut self, stop: CancellationToken) {
        tracing::info!(lease = %self.name, identity = %self.identity, "leader election: candidate");
        let mut last_renewal: Option<Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Some(Instant::now()),
                Ok(false) => last_renewal = None,
                Err(error) => {
                    tracing::warn!(lease = %self.name, %error, "leader election: cannot read or write the Lease");
                }
            }
            let leading =
                last_renewal.is_some_and(|renewed| renewed.elapsed() < self.renew_deadline);
            self.set_leading(leading);
            tokio::select! {
                _ = tokio::time::sleep(self.retry_period) => {}
                _ = stop.cancelled() => break,
            }
        }
        if self.is_leading() {
            self.set_leading(false);
            self.release().await;
        }
    }

    fn is_leading(&self) -> bool {
        *self.sender.borrow()
    }

    fn set_leading(&self, leading: bool) {
        if self.is_leading() != leading {
            if leading {
                tracing::info!(lease = %self.name, identity = %self.identity, "leader election: leading (this replica publishes to the cluster)");
            } else {
                tracing::warn!(lease = %self.name, identity = %self.identity, "leader election: not leading (another replica publishes)");
            }
            self.sender.send_replace(leading);
        }
        self.metric.set(i64::from(leading));
    }

    /// One round: returns whether this replica holds the Lease now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let Some(mut lease) = self.api.get(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&lease).await {
                Ok(()) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec
            .holder_identity
            .clone()
            .filter(|holder| !holder.is_empty());
        if holder.as_deref() != Some(self.identity.as_str()) {
            let record = (holder.clone(), spec.renew_time.clone());
            let first_seen = match &self.observed {
                Some((seen, at)) if *seen == record => *at,
                _ => {
                    self.observed = Some((record, Instant::now()));
                    Instant::now()
                }
            };
            let duration = spec
                .lease_duration_seconds
                .map_or(self.lease_duration, |secs| {
                    Duration::from_secs(secs.max(0) as u64)
                });
            if holder.is_some() && first_seen.elapsed() < duration {
                return Ok(false);
            }
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(now.clone());
            tracing::info!(lease = %self.name, previous = ?holder, "leader election: taking over an expired or released Lease");
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(self.lease_duration.as_secs() as i32);
        spec.renew_time = Some(now);
        // A replace at the version just read: if someone else wrote meanwhile, it fails.
        match self.api.replace(&self.name, &lease).await {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives the Lease up, so that another replica takes over without waiting for it to
    /// expire.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self.api.replace(&self.name, &lease).await {
            Ok(()) => tracing::info!(lease = %self.name, "leader election: released the Lease"),
            Err(error) => {
                tracing::warn!(lease = %self.name, %error, "leader election: cannot release the Lease; it expires on its own")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// A Lease in memory, replaced only at the version read (like the API server), and able
    /// to fail every call (an API server out of reach).
    #[derive(Clone, Default)]
    struct MemoryStore {
        lease: Arc<Mutex<Option<Lease>>>,
        version: Arc<Mutex<u64>>,
        down: Arc<std::sync::atomic::AtomicBool>,
    }

    fn conflict() -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("the object has been modified", "Conflict").with_code(409),
        ))
    }

    impl MemoryStore {
        fn check(&self) -> Result<(), kube::Error> {
            match self.down.load(std::sync::atomic::Ordering::SeqCst) {
                true => Err(kube::Error::Api(Box::new(
                    kube::core::Status::failure("unavailable", "ServiceUnavailable").with_code(503),
                ))),
                false => Ok(()),
            }
        }

        fn store(&self, mut lease: Lease) {
            let mut version = self.version.lock();
            *version += 1;
            lease.metadata.resource_version = Some(version.to_string());
            *self.lease.lock() = Some(lease);
        }

        fn holder(&self) -> Option<String> {
            self.lease
                .lock()
                .as_ref()
                .and_then(|lease| lease.spec.as_ref()?.holder_identity.clone())
        }

        fn transitions(&self) -> i32 {
            self.lease
                .lock()
                .as_ref()
                .and_then(|lease| lease.spec.as_ref()?.lease_transitions)
                .unwrap_or(0)
        }
    }

    impl LeaseStore for MemoryStore {
        async fn get(&self, _name: &str) -> Result<Option<Lease>, kube::Error> {
            self.check()?;
            Ok(self.lease.lock().clone())
        }

        async fn create(&self, lease: &Lease) -> Result<(), kube::Error> {
            self.check()?;
            if self.lease.lock().is_some() {
                return Err(conflict());
            }
            self.store(lease.clone());
            Ok(())
        }

        async fn replace(&self, _name: &str, lease: &Lease) -> Result<(), kube::Error> {
            self.check()?;
            let current = self
                .lease
                .lock()
                .as_ref()
                .and_then(|lease| lease.metadata.resource_version.clone());
            if current != lease.metadata.resource_version {
                return Err(conflict());
            }
            self.store(lease.clone());
            Ok(())
        }
    }

    fn settings() -> LeaderElectionConfig {
        LeaderElectionConfig {
            lease_name: "threatflow".into(),
            namespace: None,
            identity: None,
            lease_duration_secs: 3,
            renew_deadline_secs: 2,
            retry_period_secs: 1,
        }
    }

    fn candidate(
        store: &MemoryStore,
        name: &str,
    ) -> (Leadership, tokio::task::JoinHandle<()>, CancellationToken) {
        let stop = CancellationToken::new();
        let (leadership, task) = start_with(
            store.clone(),
            &settings(),
            name.into(),
            Default::default(),
            stop.clone(),
        );
        (leadership, task, stop)
    }

    async fn seconds(n: u64) {
        tokio::time::sleep(Duration::from_secs(n)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn one_leads_a_dead_leader_is_replaced_after_expiry_and_a_stopping_one_releases() {
        let store = MemoryStore::default();
        let (a, a_task, _a_stop) = candidate(&store, "a");
        seconds(1).await;
        let (b, b_task, b_stop) = candidate(&store, "b");
        for _ in 0..5 {
            seconds(1).await;
            assert!(a.is_leader() && !b.is_leader(), "exactly one leads");
        }
        assert_eq!(store.holder().as_deref(), Some("a"));

        // `a` dies without releasing: `b` waits for the Lease to expire by its own clock.
        a_task.abort();
        seconds(2).await;
        assert!(!b.is_leader(), "not before the Lease expired");
        seconds(3).await;
        assert!(b.is_leader());
        assert_eq!(
            (store.holder().as_deref(), store.transitions()),
            (Some("b"), 1)
        );

        // A leader that stops hands the Lease over at once.
        b_stop.cancel();
        b_task.await.unwrap();
        assert_eq!(store.holder(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_steps_down_before_its_lease_can_pass_on() {
        let store = MemoryStore::default();
        let (a, _task, _stop) = candidate(&store, "a");
        seconds(1).await;
        assert!(a.is_leader());
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let cut = Instant::now();
        let mut leadership = a.clone();
        let stepped_down = tokio::time::timeout(Duration::from_secs(10), async {
            while leadership.changed().await {}
        })
        .await;
        assert!(stepped_down.is_ok());
        assert!(
            cut.elapsed() < Duration::from_secs(3),
            "stepped down after {:?}, before the 3 s Lease could expire",
            cut.elapsed()
        );
    }
}
