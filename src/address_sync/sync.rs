//! One loop per target: wait for a new snapshot of the groups (debounced upstream) or the
//! periodic reconcile, plan against the target's objects, and apply, only as the leader.
//!
//! The loop keeps what the target holds as of its last read, updated with every operation
//! that took effect, so a pod change costs only its own writes. The periodic reconcile reads
//! the target again; differences from the kept state are drift (an owned object edited or
//! deleted by hand), counted and repaired. A delete refused because the object is in use is
//! retried only at a reconcile. A failure that concerns the whole target (down, credentials
//! refused, throttled, workspace locked) is reported and retried after a jittered, growing
//! delay (or the target's `Retry-After`); the next attempt reads the target again. A standby
//! (not the leader) plans and reports what it would do, and writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::groups::Published;
use crate::firewall::{
    self, Family, GroupSpec, Limits, Objects, Op, OpOutcome, Plan, Target, TargetError,
};
use crate::k8s::leader::Leadership;
use crate::net::backoff::Backoff;
use crate::telemetry;

/// One target's state, for `/status` and `threatflow status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetStatus {
    pub name: String,
    /// `fortigate`, `fortimanager` or `panorama`.
    pub kind: &'static str,
    pub url: String,
    /// `synced`, `standby` (planned only), `pending` (not synced yet) or `failing`.
    pub state: &'static str,
    /// The last sync that ended without a target error, RFC 3339.
    pub last_sync: Option<String>,
    /// Objects this cluster owns on the target, as of the last sync.
    pub owned_objects: usize,
    /// Operations the last plan held that have not taken effect.
    pub pending_operations: usize,
    /// Objects the target refused, or whose names something else holds, with why.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub refused: BTreeMap<String, String>,
    pub last_error: Option<ErrorStatus>,
}

/// The last error, and the object it concerns when it concerns one.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorStatus {
    pub kind: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub at: String,
}

/// Every target's status, shared with the HTTP listener.
pub type StatusBoard = Arc<Mutex<BTreeMap<String, TargetStatus>>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    target: String,
    /// `create_address`, `update_group`, ...
    kind: String,
    /// `done`, `conflict`, `in_use`, `refused`, or `failed` (stopped by a target error).
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    target: String,
    /// `applied`, `unchanged`, `standby`, or the error kind.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
    family: &'static str,
}

/// The firewall metrics.
#[derive(Clone, Debug)]
pub struct FirewallMetrics {
    operations: MetricFamily<OperationLabels, Counter>,
    syncs: MetricFamily<SyncLabels, Counter>,
    duration: MetricFamily<TargetLabels, Histogram>,
    drift: MetricFamily<TargetLabels, Counter>,
    owned: MetricFamily<TargetLabels, Gauge>,
    pending: MetricFamily<TargetLabels, Gauge>,
    members: MetricFamily<GroupLabels, Gauge>,
}

impl Default for FirewallMetrics {
    fn default() -> Self {
        FirewallMetrics::register(&mut Registry::default())
    }
}

impl FirewallMetrics {
    pub fn register(registry: &mut Registry) -> FirewallMetrics {
        let duration = MetricFamily::<TargetLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
        });
        registry.register(
            "sync_duration_seconds",
            "Time a sync took: read (at a reconcile), plan and apply",
            duration.clone(),
        );
        FirewallMetrics {
            operations: telemetry::family(
                registry,
                "operations",
                "Operations on firewall targets, by target, kind and outcome",
                [],
            ),
            syncs: telemetry::family(registry, "syncs", "Syncs by target and outcome", []),
            duration,
            drift: telemetry::family(
                registry,
                "drift_repaired",
                "Owned objects found edited or deleted by hand at a reconcile, and set right",
                [],
            ),
            owned: telemetry::family(
                registry,
                "owned_objects",
                "Objects this cluster owns on the target",
                [],
            ),
            pending: telemetry::family(
                registry,
                "pending_operations",
                "Operations planned that have not taken effect",
                [],
            ),
            members: telemetry::family(
                registry,
                "group_members",
                "Addresses in each published group, by family",
                [],
            ),
        }
    }

    /// Creates a target's series at zero, so "none yet" reads as 0.
    pub fn init_target(&self, target: &str) {
        let labels = FirewallMetrics::target(target);
        for outcome in ["applied", "unchanged", "standby"] {
            drop(self.syncs.get_or_create(&SyncLabels {
                target: target.to_owned(),
                outcome: outcome.to_owned(),
            }));
        }
        for verb in ["create", "update", "delete"] {
            for object in ["address", "group"] {
                drop(self.operations.get_or_create(&OperationLabels {
                    target: target.to_owned(),
                    kind: format!("{verb}_{object}"),
                    outcome: "done",
                }));
            }
        }
        drop(self.duration.get_or_create(&labels));
        drop(self.drift.get_or_create(&labels));
        drop(self.owned.get_or_create(&labels));
        drop(self.pending.get_or_create(&labels));
    }

    /// One operation's outcome, by kind (`register`, `create_address`, ...).
    pub(super) fn operation(&self, target: &str, kind: String, outcome: &'static str, count: u64) {
        self.operations
            .get_or_create(&OperationLabels {
                target: target.to_owned(),
                kind,
                outcome,
            })
            .inc_by(count);
    }

    pub(super) fn observe_sync(&self, target: &str, seconds: f64, owned: usize, drift: usize) {
        let labels = FirewallMetrics::target(target);
        self.duration.get_or_create(&labels).observe(seconds);
        self.owned.get_or_create(&labels).set(owned as i64);
        self.drift.get_or_create(&labels).inc_by(drift as u64);
    }

    fn target(target: &str) -> TargetLabels {
        TargetLabels {
            target: target.to_owned(),
        }
    }

    pub(super) fn sync(&self, target: &str, outcome: &str) {
        self.syncs
            .get_or_create(&SyncLabels {
                target: target.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Sets the group sizes of a new snapshot; groups that went away read 0.
    pub fn groups(&self, previous: &Published, published: &Published) {
        for (name, group) in &previous.groups {
            for family in &group.families {
                if !published.groups.contains_key(name) {
                    self.members
                        .get_or_create(&GroupLabels {
                            group: name.clone(),
                            family: family.as_str(),
                        })
                        .set(0);
                }
            }
        }
        for (name, group) in &published.groups {
            for family in &group.families {
                let size = group.members.get(family).map_or(0, BTreeMap::len);
                self.members
                    .get_or_create(&GroupLabels {
                        group: name.clone(),
                        family: family.as_str(),
                    })
                    .set(size as i64);
            }
        }
    }
}

/// How a target's loop runs.
pub struct Runner {
    pub name: String,
    pub target: Box<dyn Target>,
    /// The groups this target gets (all for `None`).
    pub groups: Option<BTreeSet<String>>,
    pub placeholder: String,
    pub reconcile_interval: Duration,
    pub leadership: Leadership,
    pub metrics: FirewallMetrics,
    pub board: StatusBoard,
}

/// The state a loop keeps between syncs.
#[derive(Default)]
struct Kept {
    /// What the target holds, as of the last read and the operations since.
    actual: Option<Objects>,
    /// Deletes refused as in use, retried at a reconcile.
    in_use: BTreeSet<(Family, String)>,
    /// Objects the target refused, or whose names someone else holds, with why; left out of
    /// the groups and retried at a reconcile.
    blocked: BTreeMap<(Family, String), String>,
    /// The first operation a target error stopped, for the status.
    failed_at: Option<String>,
}

/// How long to wait after `error`: the growing backoff, and never less than the target asked
/// for (`Retry-After`, capped at an hour) or, after refused credentials, a minute (FortiOS
/// locks a source out after a few failed logins).
pub(super) fn retry_delay(error: &TargetError, backoff: &mut Backoff) -> Duration {
    let delay = backoff.next_delay();
    let floor = match error {
        TargetError::Unauthorized { .. } | TargetError::Forbidden(_) => Duration::from_secs(60),
        _ => error
            .retry_after()
            .unwrap_or_default()
            .min(Duration::from_secs(3600)),
    };
    delay.max(floor)
}

impl Runner {
    /// Syncs on every new snapshot and every reconcile interval until `stop`; with `once`, one
    /// sync (after the first snapshot).
    pub async fn run(
        mut self,
        mut published: watch::Receiver<Option<Arc<Published>>>,
        once: bool,
        stop: CancellationToken,
    ) {
        let mut kept = Kept::default();
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let mut next_reconcile = tokio::time::Instant::now() + self.reconcile_interval;
        let mut retry_at: Option<tokio::time::Instant>;
        // The first snapshot comes once the cluster's initial lists are in.
        let ready = tokio::select! {
            _ = stop.cancelled() => false,
            first = published.wait_for(Option::is_some) => first.is_ok(),
        };
        if !ready {
            self.target.close().await;
            return;
        }
        // One receiver for the whole loop, so each change of leadership wakes it once.
        let mut leadership = self.leadership.clone();
        let mut full = true;
        loop {
            let Some(snapshot) = published.borrow_and_update().clone() else {
                break;
            };
            let started = Instant::now();
            // A sync stopped half-way is safe: the target is read again at the next start,
            // and closing it releases a lock the sync held.
            let result = tokio::select! {
                result = self.sync(&snapshot, &mut kept, full) => result,
                _ = stop.cancelled() => break,
            };
            self.metrics
                .duration
                .get_or_create(&FirewallMetrics::target(&self.name))
                .observe(started.elapsed().as_secs_f64());
            if full && result.is_ok() {
                next_reconcile = tokio::time::Instant::now() + self.reconcile_interval;
            }
            match result {
                Ok(()) => {
                    backoff.reset();
                    retry_at = None;
                }
                Err(error) => {
                    let delay = retry_delay(&error, &mut backoff);
                    tracing::warn!(target_name = %self.name, error = %error, retry_in = ?delay, "firewall sync failed");
                    retry_at = Some(tokio::time::Instant::now() + delay);
                    // Whatever happened, read the target again before the next plan.
                    kept.actual = None;
                }
            }
            if once {
                break;
            }
            full = tokio::select! {
                _ = stop.cancelled() => break,
                changed = published.changed(), if retry_at.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                    false
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or(next_reconcile)) => true,
                _ = leadership.changed() => true,
            };
        }
        self.target.close().await;
    }

    fn update_status(&self, change: impl FnOnce(&mut TargetStatus)) {
        if let Some(status) = self.board.lock().get_mut(&self.name) {
            change(status);
        }
    }

    fn fail(&self, error: &TargetError, object: Option<String>) {
        self.metrics.sync(&self.name, error.kind());
        let message = error.to_string();
        self.update_status(|status| {
            status.state = "failing";
            status.last_error = Some(ErrorStatus {
                kind: error.kind(),
                message,
                object,
                at: telemetry::rfc3339(SystemTime::now()),
            });
        });
    }

    /// One sync: read when `full` or nothing is kept, plan, and apply as the leader.
    async fn sync(
        &mut self,
        published: &Published,
        kept: &mut Kept,
        full: bool,
    ) -> Result<(), TargetError> {
        kept.failed_at = None;
        let result = self.sync_inner(published, kept, full).await;
        if let Err(error) = &result {
            self.fail(error, kept.failed_at.take());
        }
        result
    }

    async fn sync_inner(
        &mut self,
        published: &Published,
        kept: &mut Kept,
        full: bool,
    ) -> Result<(), TargetError> {
        if full || kept.actual.is_none() {
            let fresh = self.target.read().await?;
            if let Some(previous) = &kept.actual {
                let drift = differences(previous, &fresh);
                if drift > 0 {
                    tracing::info!(target_name = %self.name, objects = drift, "owned objects were changed on the target; repairing");
                    self.metrics
                        .drift
                        .get_or_create(&FirewallMetrics::target(&self.name))
                        .inc_by(drift as u64);
                }
            }
            kept.actual = Some(fresh);
            if full {
                // What was refused is tried again, once per reconcile.
                kept.in_use.clear();
                kept.blocked.clear();
            }
        }
        let specs = published.specs(self.groups.as_ref());
        let plan = self.plan(&specs, kept);
        let labels = FirewallMetrics::target(&self.name);
        self.metrics
            .pending
            .get_or_create(&labels)
            .set(plan.ops.len() as i64);
        let owned = kept.actual.as_ref().map_or(0, Objects::len);
        if !self.leadership.is_leader() {
            self.metrics.sync(&self.name, "standby");
            let pending = plan.ops.len();
            self.update_status(|status| {
                status.state = "standby";
                status.owned_objects = owned;
                status.pending_operations = pending;
            });
            return Ok(());
        }
        if plan.is_empty() && !self.target.has_pending_work() {
            self.metrics.sync(&self.name, "unchanged");
            self.succeeded(owned, 0, kept.blocked.clone());
            return Ok(());
        }
        // Addresses first, on their own: a name held by someone else must not end up in a
        // group, so the groups are planned again without the addresses that did not go in.
        let (addresses, rest): (Vec<Op>, Vec<Op>) = plan
            .ops
            .into_iter()
            .partition(|op| matches!(op, Op::CreateAddress { .. } | Op::UpdateAddress { .. }));
        // One change (one workspace lock on a FortiManager) for both steps; none for a sync
        // that only retries an install.
        if addresses.is_empty() && rest.is_empty() {
            self.target.publish().await?;
            self.succeeded(owned, 0, kept.blocked.clone());
            return Ok(());
        }
        self.target.begin().await?;
        let applied = async {
            let mut pending = self.apply(Plan { ops: addresses }, kept).await?;
            let rest = match pending > 0 {
                true => self.plan(&specs, kept),
                false => Plan { ops: rest },
            };
            pending += self.apply(rest, kept).await?;
            Ok(pending)
        }
        .await;
        let pending = match applied {
            Ok(pending) => {
                self.target.finish(true).await?;
                pending
            }
            Err(error) => {
                if let Err(finish) = self.target.finish(false).await {
                    tracing::warn!(target_name = %self.name, error = %finish, "ending the failed change failed too");
                }
                return Err(error);
            }
        };
        self.target.publish().await?;
        self.metrics
            .pending
            .get_or_create(&labels)
            .set(pending as i64);
        self.metrics.sync(&self.name, "applied");
        let owned = kept.actual.as_ref().map_or(0, Objects::len);
        tracing::info!(target_name = %self.name, refused = kept.blocked.len(), "firewall synced");
        self.succeeded(owned, pending, kept.blocked.clone());
        Ok(())
    }

    fn plan(&self, specs: &[GroupSpec], kept: &Kept) -> Plan {
        plan(
            specs,
            self.target.limits(),
            &self.placeholder,
            kept.actual.as_ref().expect("read before planning"),
            &kept.blocked,
            &kept.in_use,
        )
    }

    /// Applies `plan`, keeps track of what took effect, and returns how many operations did
    /// not; a target error stops it.
    async fn apply(&mut self, plan: Plan, kept: &mut Kept) -> Result<usize, TargetError> {
        if plan.is_empty() {
            return Ok(0);
        }
        for op in &plan.ops {
            tracing::debug!(target_name = %self.name, %op, "firewall operation");
        }
        let applied = self.target.apply(&plan).await;
        let actual = kept.actual.as_mut().expect("read before applying");
        let mut done = 0;
        for (index, outcome) in &applied.outcomes {
            let op = &plan.ops[*index];
            self.count(op, outcome.label());
            let key = (op.family(), op.name().to_owned());
            match outcome {
                OpOutcome::Done => {
                    done += 1;
                    record(actual, op);
                }
                OpOutcome::InUse => {
                    kept.in_use.insert(key);
                }
                OpOutcome::Conflict { owner } => {
                    let owner = owner.as_deref().unwrap_or("no comment");
                    tracing::warn!(target_name = %self.name, object = op.name(), owner, "the name is held by an object this cluster does not own; left alone");
                    kept.blocked.insert(
                        key,
                        format!("held by an object this cluster does not own ({owner})"),
                    );
                }
                OpOutcome::Refused { reason } => {
                    tracing::warn!(target_name = %self.name, object = op.name(), reason, "the target refused an object");
                    kept.blocked.insert(key, reason.clone());
                }
            }
        }
        if let Some(error) = applied.error {
            let taken: BTreeSet<usize> = applied.outcomes.iter().map(|(index, _)| *index).collect();
            for (index, op) in plan.ops.iter().enumerate() {
                if !taken.contains(&index) {
                    kept.failed_at.get_or_insert_with(|| op.name().to_owned());
                    self.count(op, "failed");
                }
            }
            return Err(error);
        }
        Ok(plan.ops.len() - done)
    }

    fn count(&self, op: &Op, outcome: &'static str) {
        self.metrics
            .operations
            .get_or_create(&OperationLabels {
                target: self.name.clone(),
                kind: format!("{}_{}", op.verb(), op.object()),
                outcome,
            })
            .inc();
    }

    fn succeeded(&self, owned: usize, pending: usize, blocked: BTreeMap<(Family, String), String>) {
        let refused: BTreeMap<String, String> = blocked
            .into_iter()
            .map(|((_, name), reason)| (name, reason))
            .collect();
        self.metrics
            .owned
            .get_or_create(&FirewallMetrics::target(&self.name))
            .set(owned as i64);
        self.update_status(|status| {
            status.state = "synced";
            status.last_sync = Some(telemetry::rfc3339(SystemTime::now()));
            status.owned_objects = owned;
            status.pending_operations = pending;
            status.last_error = refused.iter().next().map(|(object, reason)| ErrorStatus {
                kind: "refused",
                message: reason.clone(),
                object: Some(object.clone()),
                at: telemetry::rfc3339(SystemTime::now()),
            });
            status.refused = refused;
        });
    }
}

/// The plan from `actual` to what `specs` need on a target with `limits`, leaving out the
/// addresses in `blocked` (refused, or held by someone else: kept out of the groups too) and
/// the deletes in `in_use`.
pub fn plan(
    specs: &[GroupSpec],
    limits: Limits,
    placeholder: &str,
    actual: &Objects,
    blocked: &BTreeMap<(Family, String), String>,
    in_use: &BTreeSet<(Family, String)>,
) -> Plan {
    let mut specs = specs.to_vec();
    if !blocked.is_empty() {
        for spec in &mut specs {
            let family = spec.family;
            spec.members.retain(|name, _| {
                !blocked.contains_key(&(family, firewall::fit_name(name, limits.name_max)))
            });
        }
    }
    let desired = firewall::desired(&specs, limits, placeholder);
    let mut plan = Plan::new(&desired, actual);
    plan.ops.retain(|op| {
        let key = (op.family(), op.name().to_owned());
        match op {
            Op::DeleteAddress { .. } | Op::DeleteGroup { .. } => !in_use.contains(&key),
            // Refused objects (addresses and groups) wait for the next reconcile.
            _ => !blocked.contains_key(&key),
        }
    });
    plan
}

/// Objects that differ between two reads.
fn differences(before: &Objects, after: &Objects) -> usize {
    fn count<K: Ord, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
        let changed = a
            .iter()
            .filter(|(key, value)| b.get(key) != Some(value))
            .count();
        changed + b.keys().filter(|key| !a.contains_key(key)).count()
    }
    count(&before.addresses, &after.addresses) + count(&before.groups, &after.groups)
}

/// What the target holds after `op` took effect.
fn record(actual: &mut Objects, op: &Op) {
    match op {
        Op::CreateAddress { family, name, net } | Op::UpdateAddress { family, name, net } => {
            actual.addresses.insert((*family, name.clone()), *net);
        }
        Op::CreateGroup {
            family,
            name,
            members,
        }
        | Op::UpdateGroup {
            family,
            name,
            members,
        } => {
            actual
                .groups
                .insert((*family, name.clone()), members.clone());
        }
        Op::DeleteGroup { family, name } => {
            actual.groups.remove(&(*family, name.clone()));
        }
        Op::DeleteAddress { family, name } => {
            actual.addresses.remove(&(*family, name.clone()));
        }
    }
}
