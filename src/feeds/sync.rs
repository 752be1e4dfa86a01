//! Keeping one feed in sync: pull on schedule, normalize under the guards, publish only what
//! changed, and hand the set in force to flow matching, with the outcome in status and metrics.
//!
//! A refused or failed sync leaves the last good set in force. `last_successful_apply` is set
//! only after the publication succeeded. A feed is never pulled more often than its period.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::config::{
    FeedConfig, FeedKind, FeedMode, FeedSettings, HeaderConfig, ALWAYS_NEVER_BLOCK,
};
use super::fetch::{FetchError, FetchSettings, Fetched, Fetcher, Validators};
use super::format::{self, FormatError, ParsedFeed};
use super::isdb::IsdbSource;
use super::normalize::{self, check_shrink, Guards, Refusal};
use super::render::{self, render, PolicySettings, RenderSettings, Rendered};
use super::source::SourceError;
use super::taxii::{PremiumSource, TaxiiSource};
use crate::enrich::threat::{ThreatFeed, ThreatMatcher};
use crate::k8s::apply::{Adopt, ApplyError, ApplyReport, Conflict, Object, ObjectKind, Target};
use crate::k8s::leader::Leadership;
use crate::net::http::HttpSettings;
use crate::net::tls::{TlsSettings, Trust};
use crate::netset::NetSet;
use crate::secret::SecretError;
use crate::telemetry::{self, ErrorChain};

/// A sync did not complete; `kind()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("pull failed")]
    Fetch(#[from] FetchError),
    #[error("the feed could not be read")]
    Format(#[from] FormatError),
    #[error("update refused by a guard")]
    Refused(#[from] Refusal),
    #[error("publishing failed")]
    Publish(#[from] ApplyError),
    #[error("{} object(s) not written: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Conflicts(Vec<Conflict>),
    #[error("pull failed")]
    Source(#[from] SourceError),
}

impl SyncError {
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::Fetch(error) => error.kind(),
            SyncError::Format(_) => "format",
            SyncError::Refused(refusal) => refusal.kind(),
            SyncError::Publish(_) => "publish",
            SyncError::Conflicts(_) => "conflict",
            SyncError::Source(error) => error.kind(),
        }
    }
}

/// A feed could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("feed {feed}: header")]
    Secret {
        feed: String,
        #[source]
        source: SecretError,
    },
    #[error("cannot build the HTTP client for feeds (feed_settings.ca_file?)")]
    Client(#[source] FetchError),
    #[error("feed {feed}: the FortiManager client")]
    Manager {
        feed: String,
        #[source]
        source: crate::firewall::TargetError,
    },
    #[error(transparent)]
    Kubernetes(#[from] crate::deps::KubeUnavailable),
}

impl SetupError {
    pub fn kind(&self) -> &'static str {
        match self {
            SetupError::Secret { source, .. } => source.kind(),
            SetupError::Client(error) => error.kind(),
            SetupError::Manager { source, .. } => source.kind(),
            SetupError::Kubernetes(_) => "kubernetes",
        }
    }
}

/// What the last syncs of a feed did, as served on `/status` and shown by `threatflow status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FeedStatus {
    pub name: String,
    pub mode: &'static str,
    pub url: String,
    /// Last pull that got an answer (content or not-modified), RFC 3339.
    pub last_fetch: Option<String>,
    /// Last time the set was published (enforce) or accepted (monitor), RFC 3339.
    pub last_successful_apply: Option<String>,
    /// CIDRs in the set in force.
    pub entries: usize,
    pub shards: usize,
    pub content_hash: Option<String>,
    /// Of the last pull with content.
    pub rejected_lines: BTreeMap<String, u64>,
    pub removed_by_guards: BTreeMap<String, u64>,
    /// STIX indicators of the last pull, by outcome (STIX and TAXII feeds).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub indicators: BTreeMap<String, u64>,
    pub last_outcome: String,
    pub last_error: Option<String>,
    /// Objects of this feed's names that something else owns, left as they are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
}

/// Every feed's status, shared with the HTTP listener.
pub type StatusBoard = Arc<Mutex<BTreeMap<String, FeedStatus>>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedLabels {
    feed: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedReasonLabels {
    feed: String,
    reason: String,
}

/// Per-feed metrics.
#[derive(Clone, Debug, Default)]
pub struct FeedMetrics {
    entries: Family<FeedLabels, Gauge>,
    shards: Family<FeedLabels, Gauge>,
    last_fetch: Family<FeedLabels, Gauge>,
    last_apply: Family<FeedLabels, Gauge>,
    syncs: Family<FeedReasonLabels, Counter>,
    rejected: Family<FeedReasonLabels, Counter>,
    removed: Family<FeedReasonLabels, Counter>,
    indicators: Family<FeedReasonLabels, Counter>,
}

impl FeedMetrics {
    pub fn register(registry: &mut Registry) -> FeedMetrics {
        FeedMetrics {
            entries: telemetry::family(registry, "entries", "CIDRs in the set in force", []),
            shards: telemetry::family(
                registry,
                "shards",
                "Network sets (shards) the feed is published as",
                [],
            ),
            last_fetch: telemetry::family(
                registry,
                "last_fetch_timestamp_seconds",
                "Last pull that got an answer",
                [],
            ),
            last_apply: telemetry::family(
                registry,
                "last_apply_timestamp_seconds",
                "Last successful publication",
                [],
            ),
            syncs: telemetry::family(
                registry,
                "syncs",
                "Syncs by outcome (applied, unchanged, not_modified, or the error kind)",
                [],
            ),
            rejected: telemetry::family(
                registry,
                "rejected_lines",
                "Feed lines rejected, by reason",
                [],
            ),
            removed: telemetry::family(
                registry,
                "removed_entries",
                "Entries removed by a guard, by guard",
                [],
            ),
            indicators: telemetry::family(
                registry,
                "indicators",
                "STIX indicators read (STIX and TAXII feeds), by outcome: ip, revoked, expired, not_yet_valid, unsupported_<why>",
                [],
            ),
        }
    }

    fn labels(feed: &str) -> FeedLabels {
        FeedLabels {
            feed: feed.to_owned(),
        }
    }

    fn count(family: &Family<FeedReasonLabels, Counter>, feed: &str, reason: &str, value: u64) {
        family
            .get_or_create(&FeedReasonLabels {
                feed: feed.to_owned(),
                reason: reason.to_owned(),
            })
            .inc_by(value);
    }
}

/// Keeps one feed in sync.
pub struct FeedRunner {
    feed: FeedConfig,
    headers: Vec<(String, String)>,
    guards: Guards,
    render: RenderSettings,
    fetcher: Fetcher,
    target: Option<Target>,
    /// The tier the deny policy goes in, when there is one.
    tier: Option<Object>,
    adopt: Adopt,
    metrics: FeedMetrics,
    board: StatusBoard,
    validators: Validators,
    /// Size of the set in force; read from the target on the first sync.
    last_applied: Option<Option<usize>>,
    /// Where the set in force goes for matching flows.
    threats: Option<ThreatMatcher>,
    /// Only the leader publishes; the others pull and match (`standby`).
    leadership: Leadership,
    /// Where the indicators come from, for feeds that are not one list at a URL.
    source: Source,
    max_body_bytes: u64,
}

/// A normalized set, the feed's rejected entries and what the guards removed, by reason.
type Normalizing = (
    normalize::Normalized,
    BTreeMap<String, u64>,
    BTreeMap<String, u64>,
);

/// Where a feed's entries come from (no `Debug`: the sources hold credentials).
enum Source {
    /// The list at the feed's URL, in its format.
    Url,
    Taxii(TaxiiSource),
    Premium(PremiumSource),
    Isdb(IsdbSource),
}

/// How feed clients connect: `feed_settings.ca_file` is trusted besides the system's roots.
fn http_settings(settings: &FeedSettings) -> HttpSettings {
    HttpSettings {
        connect_timeout: Duration::from_secs(settings.connect_timeout_secs),
        timeout: Duration::from_secs(settings.timeout_secs),
        tls: TlsSettings {
            ca_file: settings.ca_file.clone(),
            ..TlsSettings::default()
        },
        trust: Trust::SystemAndCaFile,
        client: "feeds".into(),
    }
}

/// The HTTP client for feeds.
pub fn fetcher(settings: &FeedSettings) -> Result<Fetcher, SetupError> {
    Fetcher::new(FetchSettings {
        http: http_settings(settings),
        max_body_bytes: settings.max_body_bytes,
        retries: settings.retries,
        ..FetchSettings::default()
    })
    .map_err(SetupError::Client)
}

impl FeedRunner {
    /// Prepares a feed: reads its secret header values and builds its guards. Validation has
    /// already checked the config.
    ///
    /// `kubernetes` is the API client for a `kubernetes` publish target; without it (as for
    /// `feed render`) nothing is published. `threats` receives the set in force after each
    /// successful sync.
    pub fn new(
        feed: FeedConfig,
        settings: &FeedSettings,
        fetcher: Fetcher,
        kubernetes: Option<kube::Client>,
        threats: Option<ThreatMatcher>,
        metrics: FeedMetrics,
        board: StatusBoard,
    ) -> Result<FeedRunner, SetupError> {
        let headers = feed
            .headers
            .iter()
            .map(|header| Ok((header.name.clone(), secret_value(&feed.name, header)?)))
            .collect::<Result<Vec<_>, SetupError>>()?;
        let never_block: Vec<ipnet::IpNet> = ALWAYS_NEVER_BLOCK
            .iter()
            .map(|cidr| cidr.to_string())
            .chain(settings.never_block.iter().cloned())
            .chain(feed.never_block.iter().cloned())
            .filter_map(|cidr| crate::netset::parse_cidr(&cidr))
            .collect();
        let guards = Guards {
            never_block: NetSet::from_nets(&never_block),
            min_prefix_v4: Some(settings.min_prefix_v4),
            min_prefix_v6: Some(settings.min_prefix_v6),
            max_entries: Some(feed.max_entries),
        };
        let render = RenderSettings {
            name_prefix: settings.name_prefix.clone(),
            shard_max_nets: settings.shard_max_nets,
            policy: settings.policy.as_ref().map(|policy| PolicySettings {
                tier: policy.tier.clone(),
                order: policy.order,
                tier_order: policy.tier_order,
            }),
        };
        let tier = render.policy.as_ref().map(render::tier);
        let target = match (&settings.publish, feed.mode) {
            (Some(publish), FeedMode::Enforce) => publish.target(kubernetes),
            _ => None,
        };
        board.lock().insert(
            feed.name.clone(),
            FeedStatus {
                name: feed.name.clone(),
                mode: match feed.mode {
                    FeedMode::Enforce => "enforce",
                    FeedMode::Monitor => "monitor",
                },
                url: crate::net::http::redact_url(&feed.url),
                last_outcome: "pending".into(),
                ..FeedStatus::default()
            },
        );
        let source = match feed.kind {
            FeedKind::Url => Source::Url,
            FeedKind::Taxii => Source::Taxii(TaxiiSource::new(
                &feed.url,
                feed.taxii
                    .as_ref()
                    .expect("validated: taxii feeds name a collection"),
                &headers,
            )),
            FeedKind::FortiguardPremium => Source::Premium(PremiumSource::new(
                &feed.url,
                &feed.fortiguard.clone().unwrap_or_default(),
                &headers,
            )),
            FeedKind::FortigateIsdb => {
                let isdb = feed
                    .isdb
                    .as_ref()
                    .expect("validated: isdb feeds name a service");
                let api_key = isdb
                    .api_key
                    .read(&format!("feeds {} isdb.api_key", feed.name))
                    .map_err(|source| SetupError::Secret {
                        feed: feed.name.clone(),
                        source,
                    })?;
                let source = IsdbSource::new(&feed.url, isdb, &api_key, http_settings(settings))
                    .map_err(|source| SetupError::Manager {
                        feed: feed.name.clone(),
                        source,
                    })?;
                Source::Isdb(source)
            }
        };
        Ok(FeedRunner {
            feed,
            headers,
            guards,
            render,
            fetcher,
            target,
            tier,
            adopt: match settings.adopt_calico_enterprise_sets {
                true => Adopt::CalicoEnterpriseThreatFeeds,
                false => Adopt::Never,
            },
            metrics,
            board,
            validators: Validators::default(),
            last_applied: None,
            threats,
            leadership: Leadership::always(),
            source,
            max_body_bytes: settings.max_body_bytes,
        })
    }

    /// Publishes only while `leadership` says this replica leads.
    pub fn with_leadership(mut self, leadership: Leadership) -> FeedRunner {
        self.leadership = leadership;
        self
    }

    pub fn name(&self) -> &str {
        &self.feed.name
    }

    /// Syncs now, then every period until `shutdown`; with `once`, syncs once.
    pub async fn run(mut self, once: bool, shutdown: CancellationToken) {
        let period = Duration::from_secs(self.feed.period_secs);
        // One receiver for the whole loop: a clone made per pass would still hold the version
        // it was cloned at, and wake at once on every pass after the first change.
        let mut leadership = self.leadership.clone();
        loop {
            let span = tracing::info_span!("feed_sync", feed = %self.feed.name);
            // A sync waiting on a slow feed server must not hold up shutdown; what it left
            // half-applied is reconciled (by content hash) on the next start.
            tokio::select! {
                _ = self.sync().instrument(span) => {}
                _ = shutdown.cancelled() => return,
            }
            if once {
                return;
            }
            // A replica that becomes leader publishes at once rather than at its next period.
            let became_leader = async { while !leadership.changed().await {} };
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = became_leader => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One sync; the outcome goes to logs, metrics and status.
    pub async fn sync(&mut self) -> Result<&'static str, ()> {
        let result = self.try_sync().await;
        let name = self.feed.name.clone();
        let outcome = match &result {
            Ok(outcome) => *outcome,
            Err(error) => error.kind(),
        };
        FeedMetrics::count(&self.metrics.syncs, &name, outcome, 1);
        let mut board = self.board.lock();
        let status = board.entry(name.clone()).or_default();
        status.last_outcome = outcome.to_owned();
        match &result {
            Ok(outcome) => {
                status.last_error = None;
                tracing::info!(feed = %name, outcome, entries = status.entries, shards = status.shards, "feed synced");
            }
            Err(error) => {
                let chain = ErrorChain(error).to_string();
                tracing::error!(feed = %name, error = %chain, "feed sync failed; the last good set stays in force");
                status.last_error = Some(chain);
            }
        }
        result.map_err(drop)
    }

    async fn try_sync(&mut self) -> Result<&'static str, SyncError> {
        let name = self.feed.name.clone();
        let pulled = self.pull(&self.validators.clone()).await?;
        let now = SystemTime::now();
        self.metrics
            .last_fetch
            .get_or_create(&FeedMetrics::labels(&name))
            .set(unix_seconds(now));
        self.with_status(|status| status.last_fetch = Some(telemetry::rfc3339(now)));
        let Some((parsed, validators)) = pulled else {
            return Ok("not_modified");
        };
        let indicators: BTreeMap<String, u64> = parsed
            .indicators
            .iter()
            .map(|(outcome, count)| ((*outcome).to_owned(), *count))
            .collect();
        let (normalized, rejected, removed) = self.normalize(parsed)?;
        for (outcome, count) in &indicators {
            FeedMetrics::count(&self.metrics.indicators, &name, outcome, *count);
        }
        self.with_status(|status| status.indicators = indicators);

        for (reason, count) in &rejected {
            FeedMetrics::count(&self.metrics.rejected, &name, reason, *count);
        }
        for (reason, count) in &removed {
            FeedMetrics::count(&self.metrics.removed, &name, reason, *count);
        }
        self.with_status(|status| {
            status.rejected_lines = rejected;
            status.removed_by_guards = removed;
        });
        // A replica that does not lead publishes nothing and keeps no publication state (it
        // reads the target afresh, and pulls in full, once it leads).
        let standby = self.target.is_some() && !self.leadership.is_leader();
        let target = self.target.as_ref().filter(|_| !standby);
        let previous = match (self.last_applied, target) {
            _ if standby => None,
            (Some(previous), _) => previous,
            (None, Some(target)) => {
                Some(target.owned_nets(&render::ownership(&name)).await?).filter(|&nets| nets > 0)
            }
            (None, None) => None,
        };
        if !standby {
            self.last_applied = Some(previous);
        }
        if let Some(previous) = previous {
            check_shrink(
                previous,
                normalized.cidrs,
                self.feed.min_shrink_fraction,
                self.feed.allow_shrink,
            )?;
        }
        let rendered = render(&name, &self.feed.labels, &normalized.set, &self.render);
        let report = match target {
            Some(target) => match self.publish(target, &name, &rendered).await {
                Err(ApplyError::NotLeader) => {
                    // Leadership moved away during the sync.
                    self.last_applied = None;
                    return Ok("standby");
                }
                published => published?,
            },
            None => ApplyReport::default(),
        };
        self.with_status(|status| {
            status.conflicts = report.conflicts.iter().map(ToString::to_string).collect();
        });
        // Only now, with the publication done, does the new set count as applied.
        if !standby {
            self.validators = validators;
            self.last_applied = Some(Some(normalized.cidrs));
        }
        let applied = SystemTime::now();
        let labels = FeedMetrics::labels(&name);
        self.metrics
            .entries
            .get_or_create(&labels)
            .set(normalized.cidrs as i64);
        self.metrics
            .shards
            .get_or_create(&labels)
            .set(rendered.shards as i64);
        self.metrics
            .last_apply
            .get_or_create(&labels)
            .set(unix_seconds(applied));
        self.with_status(|status| {
            status.entries = normalized.cidrs;
            status.shards = rendered.shards;
            status.content_hash = Some(rendered.content_hash.clone());
            status.last_successful_apply = Some(telemetry::rfc3339(applied));
        });
        if let Some(threats) = &self.threats {
            threats.update(
                ThreatFeed {
                    name: Arc::from(name.as_str()),
                    severity: self.feed.severity,
                },
                Arc::new(normalized.set),
            );
        }
        let feed_conflicts: Vec<Conflict> = report
            .conflicts
            .into_iter()
            .filter(|conflict| conflict.kind != ObjectKind::Tier.name())
            .collect();
        if !feed_conflicts.is_empty() {
            return Err(SyncError::Conflicts(feed_conflicts));
        }
        Ok(if standby {
            "standby"
        } else if report.written + report.deleted > 0 {
            "applied"
        } else {
            "unchanged"
        })
    }

    /// Writes the feed's objects (and its tier first, which is only ever created or updated:
    /// other feeds' policies may be in it). A tier someone else owns is used as it is and
    /// reported; a set or policy name someone else owns is not written.
    async fn publish(
        &self,
        target: &Target,
        feed: &str,
        rendered: &Rendered,
    ) -> Result<ApplyReport, ApplyError> {
        let mut report = ApplyReport::default();
        if let Some(tier) = &self.tier {
            let tier_report = target
                .ensure(&render::tier_ownership(), tier, &self.leadership)
                .await?;
            for conflict in &tier_report.conflicts {
                tracing::warn!(feed, %conflict, "the deny policy goes into a tier threatflow does not own; its order and default action are left as they are");
            }
            report.conflicts = tier_report.conflicts;
            report.written += tier_report.written;
        }
        let feed_report = target
            .sync(
                &render::ownership(feed),
                &[ObjectKind::NetworkSet, ObjectKind::Policy],
                &rendered.objects,
                self.adopt,
                &self.leadership,
            )
            .await?;
        report.written += feed_report.written;
        report.deleted += feed_report.deleted;
        report.unchanged += feed_report.unchanged;
        report.adopted += feed_report.adopted;
        report.conflicts.extend(feed_report.conflicts);
        Ok(report)
    }

    /// Pulls the feed's entries: `None` when the server says nothing changed.
    async fn pull(
        &mut self,
        validators: &Validators,
    ) -> Result<Option<(ParsedFeed, Validators)>, SyncError> {
        let now_ms = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
        match &mut self.source {
            Source::Url => {
                // A STIX bundle's validity changes with time: it is read again even when the
                // server says it did not change.
                let validators = match self.feed.format.kind {
                    format::FormatKind::Stix2 => &Validators::default(),
                    _ => validators,
                };
                match self
                    .fetcher
                    .fetch(&self.feed.url, &self.headers, validators)
                    .await?
                {
                    Fetched::NotModified => Ok(None),
                    Fetched::Content {
                        body, validators, ..
                    } => Ok(Some((
                        format::parse_at(&self.feed.format, &body, now_ms)?,
                        validators,
                    ))),
                }
            }
            Source::Taxii(taxii) => Ok(Some((
                taxii.pull(&self.fetcher, now_ms).await?,
                Validators::default(),
            ))),
            Source::Isdb(isdb) => Ok(Some((
                isdb.pull(&self.fetcher).await?,
                Validators::default(),
            ))),
            Source::Premium(premium) => Ok(Some((
                premium
                    .pull(&self.fetcher, self.max_body_bytes, now_ms)
                    .await?,
                Validators::default(),
            ))),
        }
    }

    /// The normalized set, with the entries rejected and removed by reason.
    fn normalize(&self, parsed: ParsedFeed) -> Result<Normalizing, SyncError> {
        let rejected = parsed
            .rejected
            .iter()
            .map(|(reason, count)| (reason.as_str().to_owned(), *count))
            .collect();
        if !parsed.examples.is_empty() {
            tracing::warn!(feed = %self.feed.name, rejected = %parsed.rejected_summary(), first = %parsed.examples.join("; "), "feed lines rejected");
        }
        let normalized = normalize::normalize(parsed, &self.guards)?;
        let removed = normalized
            .removed
            .iter()
            .map(|(reason, count)| (reason.as_str().to_owned(), *count))
            .collect();
        Ok((normalized, rejected, removed))
    }

    /// Pulls the feed now and renders what a sync would publish (the tier first, if any),
    /// without publishing it.
    pub async fn render_now(&mut self) -> Result<Vec<Object>, SyncError> {
        // The request carries no validators, so a list is never answered `NotModified`.
        let parsed = match self.pull(&Validators::default()).await? {
            Some((parsed, _)) => parsed,
            None => ParsedFeed::default(),
        };
        let (normalized, _, _) = self.normalize(parsed)?;
        let rendered = render(
            &self.feed.name,
            &self.feed.labels,
            &normalized.set,
            &self.render,
        );
        Ok(self.tier.iter().cloned().chain(rendered.objects).collect())
    }

    fn with_status(&self, change: impl FnOnce(&mut FeedStatus)) {
        if let Some(status) = self.board.lock().get_mut(&self.feed.name) {
            change(status);
        }
    }
}

fn secret_value(feed: &str, header: &HeaderConfig) -> Result<String, SetupError> {
    header.read().map_err(|source| SetupError::Secret {
        feed: feed.to_owned(),
        source,
    })
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::ErrorChain;

    #[test]
    fn a_missing_secret_header_names_the_feed_the_header_and_the_variable() {
        let header = HeaderConfig {
            name: "Authorization".into(),
            value_from_env: Some("THREATFLOW_TEST_UNSET_VARIABLE".into()),
            value_from_file: None,
        };
        let missing = secret_value("f", &header).unwrap_err();
        assert_eq!(
            ErrorChain(&missing).to_string(),
            "feed f: header: Authorization: environment variable THREATFLOW_TEST_UNSET_VARIABLE is not set"
        );
    }
}
