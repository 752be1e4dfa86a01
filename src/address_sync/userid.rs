//! PAN-OS through User-ID: every pod (or node) address in a group is registered with the tag
//! `threatflow.<cluster>.<group>`, and a dynamic address group whose filter names that tag
//! holds exactly those addresses, without a commit.
//!
//! One loop per firewall (directly, or relayed through Panorama with `target=<serial>`):
//!
//! - On each snapshot, only the difference from what the loop last registered is sent:
//!   registrations for tags an address gained, unregistrations for tags it lost.
//! - Every registration carries a timeout, so registrations lapse on their own if threatflow
//!   disappears; every third of it, everything is registered again, which restarts the timers.
//!   Nothing else is sent while nothing changes.
//! - At each reconcile, the firewall's registered addresses are read back (page by page), and
//!   only tags under this cluster's prefix are taken as threatflow's: another writer's tags,
//!   and other clusters', are never unregistered.
//! - With a Panorama device group, a dynamic address group per group (its filter: the group's
//!   tag) is created there, committed (threatflow's admin only) and pushed; only when the set
//!   of groups changes, and checked again at each reconcile.
//! - Only the leader writes. Stopping unregisters nothing: a standby that takes over finds the
//!   registrations in place, and without one they lapse after their timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::groups::Published;
use super::sync::{retry_delay, ErrorStatus, FirewallMetrics, StatusBoard, TargetStatus};
use crate::firewall::panorama::objects::StaticObjects;
use crate::firewall::panorama::userid::{Registrations, MAX_TAGS_PER_IP};
use crate::firewall::panorama::Panorama;
use crate::firewall::{fit_name, OpOutcome, Target, TargetError};
use crate::k8s::leader::Leadership;
use crate::net::backoff::Backoff;
use crate::telemetry;

/// PAN-OS's longest tag.
const TAG_MAX: usize = 127;
/// PAN-OS's longest object name.
const DAG_NAME_MAX: usize = 63;

/// The tag prefix of a cluster's registrations.
pub fn tag_prefix(cluster: &str) -> String {
    format!("threatflow.{cluster}.")
}

/// The tag standing for `group`.
pub fn tag(prefix: &str, group: &str) -> String {
    fit_name(&format!("{prefix}{group}"), TAG_MAX)
}

/// One User-ID loop.
pub struct UserIdRunner {
    pub name: String,
    pub client: Panorama,
    /// The groups this firewall gets (all for `None`).
    pub groups: Option<BTreeSet<String>>,
    pub prefix: String,
    /// With a Panorama device group: a dynamic address group per group (its filter: the
    /// group's tag), committed and pushed.
    pub dynamic_groups: Option<StaticObjects>,
    /// Each registration's lifetime.
    pub timeout: Duration,
    pub reconcile_interval: Duration,
    pub leadership: Leadership,
    pub metrics: FirewallMetrics,
    pub board: StatusBoard,
}

/// What the loop knows between syncs.
#[derive(Default)]
struct Known {
    /// This cluster's registrations on the firewall, as of the last read and the updates since.
    registered: Option<Registrations>,
    /// When everything was last registered (timers restarted).
    refreshed: Option<tokio::time::Instant>,
    /// The dynamic address groups as last made to hold (name -> filter), committed and pushed.
    dynamic_groups: Option<BTreeMap<String, String>>,
}

impl UserIdRunner {
    /// The registrations `published` asks for, at most [`MAX_TAGS_PER_IP`] per address (the
    /// rest reported).
    fn desired(&self, published: &Published) -> (Registrations, Vec<(String, String)>) {
        let mut desired = Registrations::new();
        for (name, group) in &published.groups {
            if !published.wanted(name, self.groups.as_ref()) {
                continue;
            }
            let tag = tag(&self.prefix, name);
            for members in group.members.values() {
                for net in members.values() {
                    let ip = if net.prefix_len() == net.max_prefix_len() {
                        net.addr().to_string()
                    } else {
                        net.to_string()
                    };
                    desired.entry(ip).or_default().insert(tag.clone());
                }
            }
        }
        let mut refused = Vec::new();
        for (ip, tags) in &mut desired {
            if tags.len() > MAX_TAGS_PER_IP {
                let dropped: Vec<String> = tags.iter().skip(MAX_TAGS_PER_IP).cloned().collect();
                for tag in &dropped {
                    tags.remove(tag);
                }
                refused.push((
                    ip.clone(),
                    format!(
                        "in more than {MAX_TAGS_PER_IP} groups, PAN-OS's limit per address: not tagged {}",
                        dropped.join(", ")
                    ),
                ));
            }
        }
        (desired, refused)
    }

    fn update_status(&self, change: impl FnOnce(&mut TargetStatus)) {
        if let Some(status) = self.board.lock().get_mut(&self.name) {
            change(status);
        }
    }

    /// Syncs on every snapshot, every reconcile interval and every refresh, until `stop`;
    /// with `once`, one sync.
    pub async fn run(
        mut self,
        mut published: watch::Receiver<Option<Arc<Published>>>,
        once: bool,
        stop: CancellationToken,
    ) {
        let mut known = Known::default();
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let refresh_every = self.timeout / 3;
        let ready = tokio::select! {
            _ = stop.cancelled() => false,
            first = published.wait_for(Option::is_some) => first.is_ok(),
        };
        if !ready {
            return;
        }
        let mut leadership = self.leadership.clone();
        let mut next_reconcile = tokio::time::Instant::now() + self.reconcile_interval;
        let mut full = true;
        loop {
            let Some(snapshot) = published.borrow_and_update().clone() else {
                break;
            };
            let mut retry_at = None;
            let leading = self.leadership.is_leader();
            if leading {
                let refresh = known
                    .refreshed
                    .is_none_or(|at| at.elapsed() >= refresh_every);
                let result = tokio::select! {
                    result = self.sync(&snapshot, &mut known, full, refresh) => result,
                    _ = stop.cancelled() => break,
                };
                match result {
                    Ok(()) => {
                        backoff.reset();
                        if full {
                            next_reconcile = tokio::time::Instant::now() + self.reconcile_interval;
                        }
                    }
                    Err(error) => {
                        let delay = retry_delay(&error, &mut backoff);
                        tracing::warn!(target_name = %self.name, error = %error, retry_in = ?delay, "User-ID sync failed");
                        self.metrics.sync(&self.name, error.kind());
                        let message = error.to_string();
                        self.update_status(|status| {
                            status.state = "failing";
                            status.last_error = Some(ErrorStatus {
                                kind: error.kind(),
                                message,
                                object: None,
                                at: telemetry::rfc3339(SystemTime::now()),
                            });
                        });
                        known.registered = None;
                        known.dynamic_groups = None;
                        retry_at = Some(tokio::time::Instant::now() + delay);
                    }
                }
            } else {
                // A standby waits for a change, its leadership, or the next interval; it has
                // nothing to refresh.
                self.metrics.sync(&self.name, "standby");
                self.update_status(|status| status.state = "standby");
                next_reconcile = tokio::time::Instant::now() + self.reconcile_interval;
                known.refreshed = None;
            }
            if once {
                break;
            }
            let refresh_at = match (leading, known.refreshed) {
                (true, Some(at)) => at + refresh_every,
                _ => next_reconcile,
            };
            let wake = retry_at.unwrap_or(next_reconcile.min(refresh_at));
            full = tokio::select! {
                _ = stop.cancelled() => break,
                changed = published.changed(), if retry_at.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                    false
                }
                _ = tokio::time::sleep_until(wake) => tokio::time::Instant::now() >= next_reconcile || retry_at.is_some(),
                _ = leadership.changed() => true,
            };
        }
    }

    /// One sync: read back when `full` (or nothing is known), then send the difference, or
    /// everything when `refresh`.
    async fn sync(
        &mut self,
        published: &Published,
        known: &mut Known,
        full: bool,
        refresh: bool,
    ) -> Result<(), TargetError> {
        let started = Instant::now();
        let (desired, mut refused) = self.desired(published);
        let mut drift = 0;
        if full || known.registered.is_none() {
            let actual = self.client.registered(&self.prefix).await?;
            if let Some(previous) = &known.registered {
                drift =
                    pairs(&difference(previous, &actual)) + pairs(&difference(&actual, previous));
            }
            known.registered = Some(actual);
        }
        if let Some(dynamic_groups) = &mut self.dynamic_groups {
            let wanted: BTreeMap<String, String> = published
                .groups
                .keys()
                .filter(|name| published.wanted(name, self.groups.as_ref()))
                .map(|name| {
                    (
                        fit_name(name, DAG_NAME_MAX),
                        format!("'{}'", tag(&self.prefix, name)),
                    )
                })
                .collect();
            if full || known.dynamic_groups.as_ref() != Some(&wanted) {
                // The groups are the firewall team's convenience: a commit that cannot go
                // through now (an admin's lock, a failed push) never holds up the tags; it is
                // tried again at the next reconcile.
                match sync_dynamic_groups(dynamic_groups, &wanted).await {
                    Ok(conflicts) => {
                        refused.extend(conflicts);
                        known.dynamic_groups = Some(wanted);
                    }
                    Err(error) => {
                        tracing::warn!(target_name = %self.name, error = %error, "the dynamic address groups could not be committed; retrying at the next reconcile");
                        refused.push(("dynamic address groups".into(), error.to_string()));
                        known.dynamic_groups = None;
                    }
                }
            }
        }
        let current = known.registered.clone().unwrap_or_default();
        let register = if refresh {
            desired.clone()
        } else {
            difference(&desired, &current)
        };
        let unregister = difference(&current, &desired);
        let timeout = self.timeout.as_secs();
        if !register.is_empty() || !unregister.is_empty() {
            let outcome = self
                .client
                .update_tags(&register, &unregister, timeout)
                .await?;
            self.metrics.operation(
                &self.name,
                "register".into(),
                "done",
                pairs(&register) as u64,
            );
            self.metrics.operation(
                &self.name,
                "unregister".into(),
                "done",
                pairs(&unregister) as u64,
            );
            refused.extend(outcome.refused);
        }
        if refresh {
            known.refreshed = Some(tokio::time::Instant::now());
        }
        let mut registered = desired;
        for (ip, _) in &refused {
            // What the firewall refused is not registered; the next reconcile reads the truth.
            registered.remove(ip);
        }
        let owned = pairs(&registered);
        known.registered = Some(registered);
        self.metrics.sync(
            &self.name,
            if register.is_empty() && unregister.is_empty() {
                "unchanged"
            } else {
                "applied"
            },
        );
        self.metrics
            .observe_sync(&self.name, started.elapsed().as_secs_f64(), owned, drift);
        self.update_status(|status| {
            status.state = "synced";
            status.last_sync = Some(telemetry::rfc3339(SystemTime::now()));
            status.owned_objects = owned;
            status.pending_operations = 0;
            status.refused = refused.iter().cloned().collect();
            status.last_error = refused.first().map(|(ip, reason)| ErrorStatus {
                kind: "refused",
                message: reason.clone(),
                object: Some(ip.clone()),
                at: telemetry::rfc3339(SystemTime::now()),
            });
        });
        Ok(())
    }
}

/// Makes the dynamic address groups hold `wanted` (name -> filter), commits and pushes them;
/// returns the names held by someone else, with why.
async fn sync_dynamic_groups(
    dynamic_groups: &mut StaticObjects,
    wanted: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, TargetError> {
    let mut refused = Vec::new();
    for (name, outcome) in dynamic_groups.sync_dynamic_groups(wanted).await? {
        match outcome {
            OpOutcome::Conflict { owner } => refused.push((
                name,
                format!(
                    "the dynamic address group's name is taken ({})",
                    owner.unwrap_or_else(|| "no description".into())
                ),
            )),
            OpOutcome::Refused { reason } => refused.push((name, reason)),
            _ => {}
        }
    }
    dynamic_groups.publish().await?;
    Ok(refused)
}

/// The tags of `a` that `b` does not have, per address.
fn difference(a: &Registrations, b: &Registrations) -> Registrations {
    a.iter()
        .filter_map(|(ip, tags)| {
            let missing: BTreeSet<String> = match b.get(ip) {
                Some(other) => tags.difference(other).cloned().collect(),
                None => tags.clone(),
            };
            (!missing.is_empty()).then(|| (ip.clone(), missing))
        })
        .collect()
}

/// (address, tag) pairs.
fn pairs(registrations: &Registrations) -> usize {
    registrations.values().map(BTreeSet::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_per_tag() {
        let set = |entries: &[(&str, &[&str])]| -> Registrations {
            entries
                .iter()
                .map(|(ip, tags)| (ip.to_string(), tags.iter().map(|t| t.to_string()).collect()))
                .collect()
        };
        let desired = set(&[("10.0.0.1", &["a", "b"]), ("10.0.0.2", &["a"])]);
        let actual = set(&[("10.0.0.1", &["a"]), ("10.0.0.3", &["b"])]);
        assert_eq!(
            difference(&desired, &actual),
            set(&[("10.0.0.1", &["b"]), ("10.0.0.2", &["a"])])
        );
        assert_eq!(difference(&actual, &desired), set(&[("10.0.0.3", &["b"])]));
        assert_eq!(pairs(&desired), 3);
        assert_eq!(tag(&tag_prefix("prod"), "web"), "threatflow.prod.web");
        assert!(
            tag(&tag_prefix("prod"), "web app").starts_with("threatflow.prod.web-app~"),
            "an unsafe character is replaced and the name kept distinct"
        );
    }
}
