//! One loop per source: ask the manager whether the rulebase changed (one call), read it when
//! it did, guard it, translate it, and publish the tier as the leader.
//!
//! A read that fails, a rulebase with no enabled rule, one that shrank below
//! `min_rules_fraction` of the last published, and (unless allowed) one with a refused deny
//! rule are not published: the last good policy stays in force, and the status says why. A
//! refused revision is not read again until the manager's revision moves (or the next full
//! read, every `full_read_interval`). Errors back off. While the revision stays, the last
//! published objects are applied again every [`RECONCILE_INTERVAL`], which repairs hand edits
//! in the cluster without asking the manager.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::config::{ImportMode, PolicyImportConfig, PolicySourceConfig};
use super::translate::{translate, Settings, Skipped};
use crate::deps::Deps;
use crate::firewall::fortimanager::{FortiManager, FortiManagerSettings};
use crate::firewall::panorama::{Panorama, PanoramaSettings};
use crate::firewall::rules::Rulebase;
use crate::firewall::Credentials;
use crate::firewall::{Target as _, TargetError};
use crate::k8s::apply::{Adopt, ApplyError, Object, ObjectKind, Ownership, Target};
use crate::k8s::leader::Leadership;
use crate::net::backoff::Backoff;
use crate::net::http::{redact_url, HttpSettings};
use crate::net::tls::TlsSettings;
use crate::telemetry;

/// The tier's record of how many enabled rules the policy in force came from: the shrink
/// guard's baseline after a restart or a change of leader.
pub const ENABLED_RULES_ANNOTATION: &str = "firewall.threatflow.io/enabled-rules";
/// The label marking a source's objects.
pub const SOURCE_LABEL: &str = "threatflow.io/policy-source";
/// How often unchanged policy is applied again to the cluster.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(300);
/// The longest wait between attempts after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// The kinds a source's sync owns (the tier is ensured separately and never pruned).
const KINDS: [ObjectKind; 3] = [
    ObjectKind::NetworkSet,
    ObjectKind::Policy,
    ObjectKind::StagedPolicy,
];

/// Why a poll did not publish.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the rulebase failed: {0}")]
    Source(#[from] TargetError),
    #[error("refused: {0}; the last published policy stays in force")]
    Refused(String),
    #[error("publishing failed")]
    Apply(#[from] ApplyError),
    #[error("{0}")]
    Conflict(String),
}

impl ImportError {
    pub fn kind(&self) -> &'static str {
        match self {
            ImportError::Source(error) => error.kind(),
            ImportError::Refused(_) => "refused",
            ImportError::Apply(error) => error.kind(),
            ImportError::Conflict(_) => "conflict",
        }
    }
}

/// The stage could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("policy_import.sources {source_name}")]
    Secret {
        source_name: String,
        #[source]
        source: crate::secret::SecretError,
    },
    #[error("policy_import.sources {source_name}: {source}")]
    Client {
        source_name: String,
        source: TargetError,
    },
    #[error(transparent)]
    Kube(#[from] crate::deps::KubeUnavailable),
}

impl StartError {
    pub fn kind(&self) -> &'static str {
        match self {
            StartError::Secret { source, .. } => source.kind(),
            StartError::Client { source, .. } => source.kind(),
            StartError::Kube(_) => "kubernetes",
        }
    }
}

/// One source's state, for `/status`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceStatus {
    pub name: String,
    /// `fortimanager` or `panorama`.
    pub kind: &'static str,
    pub url: String,
    pub tier: String,
    /// `enforce` or `staged`.
    pub mode: &'static str,
    /// `pending`, `published`, `refused`, `failing` or `standby`.
    pub state: &'static str,
    /// The manager's revision last read.
    pub revision: Option<String>,
    /// Rules in the rulebase last read, and what became of them.
    pub rules: usize,
    pub translated: usize,
    pub disabled: usize,
    pub skipped: Vec<Skipped>,
    /// Objects in force (policies and sets).
    pub objects: usize,
    pub last_published: Option<String>,
    pub message: Option<String>,
}

pub type StatusBoard = Arc<Mutex<BTreeMap<String, SourceStatus>>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct PollLabels {
    source: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RuleLabels {
    source: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

/// `threatflow_policy_import_*`.
#[derive(Clone, Debug)]
pub struct ImportMetrics {
    polls: Family<PollLabels, Counter>,
    rules: Family<RuleLabels, Gauge>,
    objects: Family<SourceLabels, Gauge>,
}

impl Default for ImportMetrics {
    fn default() -> Self {
        ImportMetrics::register(&mut Registry::default())
    }
}

impl ImportMetrics {
    pub fn register(registry: &mut Registry) -> ImportMetrics {
        ImportMetrics {
            polls: telemetry::family(
                registry,
                "polls",
                "Polls of firewall managers by source and outcome (unchanged, published, refused, failed)",
                [],
            ),
            rules: telemetry::family(
                registry,
                "rules",
                "Rules of the rulebase last read, by source and state (translated, disabled, skipped)",
                [],
            ),
            objects: telemetry::family(
                registry,
                "objects",
                "Calico objects in force, by source",
                [],
            ),
        }
    }

    /// A source's series, at zero until it polls.
    pub fn init_source(&self, source: &str) {
        for outcome in ["unchanged", "published", "refused", "failed"] {
            drop(self.polls.get_or_create(&PollLabels {
                source: source.to_owned(),
                outcome: outcome.to_owned(),
            }));
        }
        for state in ["translated", "disabled", "skipped"] {
            drop(self.rules.get_or_create(&RuleLabels {
                source: source.to_owned(),
                state: state.to_owned(),
            }));
        }
        drop(self.objects.get_or_create(&SourceLabels {
            source: source.to_owned(),
        }));
    }

    fn poll(&self, source: &str, outcome: &str) {
        self.polls
            .get_or_create(&PollLabels {
                source: source.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// A manager's rulebase, read through its API.
pub enum RulebaseSource {
    FortiManager {
        client: Box<FortiManager>,
        package: String,
    },
    Panorama(Box<Panorama>),
}

impl RulebaseSource {
    async fn revision(&mut self) -> Result<String, TargetError> {
        match self {
            RulebaseSource::FortiManager { client, package } => {
                client.package_revision(package).await
            }
            RulebaseSource::Panorama(client) => client.revision().await,
        }
    }

    async fn read(&mut self) -> Result<Rulebase, TargetError> {
        match self {
            RulebaseSource::FortiManager { client, package } => client.read_rulebase(package).await,
            RulebaseSource::Panorama(client) => client.read_rulebase().await,
        }
    }

    async fn close(&mut self) {
        if let RulebaseSource::FortiManager { client, .. } = self {
            client.close().await;
        }
    }
}

fn credentials(
    name: &str,
    api_key: &Option<crate::secret::SecretSource>,
    username: &Option<String>,
    password: &Option<crate::secret::SecretSource>,
) -> Result<Credentials, StartError> {
    Credentials::read(
        name,
        api_key.as_ref(),
        username.as_deref(),
        password.as_ref(),
    )
    .map_err(|source| StartError::Secret {
        source_name: name.to_owned(),
        source,
    })?
    .ok_or_else(|| StartError::Client {
        source_name: name.to_owned(),
        source: TargetError::Setup("set api_key, or username and password".into()),
    })
}

fn http_settings(name: &str, tls: &TlsSettings, timeout_secs: u64) -> HttpSettings {
    HttpSettings::verified(format!("policy_import {name}"), tls, timeout_secs)
}

/// The client of a source (secrets read, not contacted), and its kind and URL for display.
pub fn source(
    config: &PolicySourceConfig,
) -> Result<(RulebaseSource, &'static str, String), StartError> {
    let name = &config.name;
    let client_error = |source| StartError::Client {
        source_name: name.clone(),
        source,
    };
    if let Some(manager) = &config.fortimanager {
        let client = FortiManager::new(FortiManagerSettings::reader(
            &manager.url,
            &manager.adom,
            credentials(name, &manager.api_key, &manager.username, &manager.password)?,
            http_settings(name, &manager.tls, config.timeout_secs),
        ))
        .map_err(client_error)?;
        let source = RulebaseSource::FortiManager {
            client: Box::new(client),
            package: manager.package.clone(),
        };
        return Ok((source, "fortimanager", redact_url(&manager.url)));
    }
    let Some(panorama) = &config.panorama else {
        return Err(client_error(TargetError::Setup(
            "set fortimanager or panorama".into(),
        )));
    };
    let client = Panorama::new(PanoramaSettings {
        url: panorama.url.clone(),
        device_group: panorama.device_group.clone(),
        credentials: credentials(
            name,
            &panorama.api_key,
            &panorama.username,
            &panorama.password,
        )?,
        http: http_settings(name, &panorama.tls, config.timeout_secs),
        target: None,
        vsys: None,
        requests_per_second: 10.0,
    })
    .map_err(client_error)?;
    Ok((
        RulebaseSource::Panorama(Box::new(client)),
        "panorama",
        redact_url(&panorama.url),
    ))
}

/// What is in force for one source.
struct Published {
    enabled_rules: usize,
    tier: Object,
    objects: Vec<Object>,
}

/// One source's loop.
pub struct Runner {
    pub name: String,
    pub source: RulebaseSource,
    pub settings: Settings,
    pub allow_skipped_denies: bool,
    pub min_rules_fraction: f64,
    pub poll_interval: Duration,
    pub full_read_interval: Duration,
    pub target: Target,
    pub leadership: Leadership,
    pub metrics: ImportMetrics,
    pub board: StatusBoard,
}

impl Runner {
    fn ownership(&self) -> Ownership {
        Ownership::new(SOURCE_LABEL, &self.name)
    }

    fn update(&self, change: impl FnOnce(&mut SourceStatus)) {
        if let Some(status) = self.board.lock().get_mut(&self.name) {
            change(status);
        }
    }

    /// Polls until `stop` (with `once`, one poll).
    pub async fn run(mut self, once: bool, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.poll_interval, MAX_BACKOFF.max(self.poll_interval));
        let mut published: Option<Published> = None;
        let mut seen: Option<String> = None;
        let mut next_reconcile = tokio::time::Instant::now() + RECONCILE_INTERVAL;
        let mut next_full_read = tokio::time::Instant::now() + self.full_read_interval;
        // One receiver for the whole loop, so each change of leadership wakes it once.
        let mut leadership = self.leadership.clone();
        loop {
            let mut delay = self.poll_interval;
            if self.leadership.is_leader() {
                let now = tokio::time::Instant::now();
                let reconcile = now >= next_reconcile;
                if now >= next_full_read {
                    seen = None;
                    next_full_read = now + self.full_read_interval;
                }
                let outcome = tokio::select! {
                    _ = stop.cancelled() => break,
                    outcome = self.poll(&mut published, &mut seen, reconcile) => outcome,
                };
                match outcome {
                    Ok(outcome) => {
                        backoff.reset();
                        if reconcile {
                            next_reconcile = tokio::time::Instant::now() + RECONCILE_INTERVAL;
                        }
                        self.metrics.poll(&self.name, outcome);
                    }
                    Err(error) => {
                        let refused = matches!(error, ImportError::Refused(_));
                        self.metrics
                            .poll(&self.name, if refused { "refused" } else { "failed" });
                        let message = telemetry::ErrorChain(&error).to_string();
                        if refused {
                            tracing::warn!(source = %self.name, %message, "rulebase not published");
                        } else {
                            delay = backoff.next_delay();
                            // Read again after a failure: it may have come mid-publish.
                            seen = None;
                            tracing::warn!(source = %self.name, %message, retry_in = ?delay, "policy import failed");
                        }
                        self.update(|status| {
                            status.state = if refused { "refused" } else { "failing" };
                            status.message = Some(message);
                        });
                    }
                }
            } else {
                self.update(|status| status.state = "standby");
            }
            if once {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
                _ = leadership.changed() => {}
            }
        }
        self.source.close().await;
    }

    /// One poll: `unchanged` (one call to the manager), or `published`.
    async fn poll(
        &mut self,
        published: &mut Option<Published>,
        seen: &mut Option<String>,
        reconcile: bool,
    ) -> Result<&'static str, ImportError> {
        let revision = self.source.revision().await?;
        if seen.as_deref() == Some(revision.as_str()) {
            if let Some(current) = published.as_ref().filter(|_| reconcile) {
                self.apply(&current.tier, &current.objects).await?;
            }
            return Ok("unchanged");
        }
        *seen = Some(revision.clone());
        let rulebase = self.source.read().await?;
        let translation = translate(&rulebase, &self.settings);
        self.update(|status| {
            status.revision = Some(revision.clone());
            status.rules = rulebase.rules.len();
            status.translated = translation.translated;
            status.disabled = translation.disabled;
            status.skipped = translation.skipped.clone();
        });
        for (state, count) in [
            ("translated", translation.translated),
            ("disabled", translation.disabled),
            ("skipped", translation.skipped.len()),
        ] {
            self.metrics
                .rules
                .get_or_create(&RuleLabels {
                    source: self.name.clone(),
                    state: state.to_owned(),
                })
                .set(count as i64);
        }
        let enabled = rulebase.enabled_rules();
        if enabled == 0 {
            return Err(ImportError::Refused(format!(
                "{} has no enabled rule (an empty or failed export looks like this)",
                rulebase.origin
            )));
        }
        // The last publication's size: this process's, or after a start the one recorded on
        // the tier in force.
        let previous = match published.as_ref() {
            Some(previous) => Some(previous.enabled_rules),
            None => self
                .target
                .owned_annotation(
                    &self.ownership(),
                    ObjectKind::Tier,
                    &self.settings.tier,
                    ENABLED_RULES_ANNOTATION,
                )
                .await?
                .and_then(|count| count.parse::<usize>().ok()),
        };
        if let Some(previous) = previous {
            let floor = previous as f64 * self.min_rules_fraction;
            if (enabled as f64) < floor {
                return Err(ImportError::Refused(format!(
                    "{enabled} enabled rules, down from {previous} (below min_rules_fraction {}); \
                     if the rulebase really shrank, lower min_rules_fraction for one poll",
                    self.min_rules_fraction
                )));
            }
        }
        if !self.allow_skipped_denies {
            if let Some(deny) = translation.skipped_denies().next() {
                return Err(ImportError::Refused(format!(
                    "deny rule {} `{}` cannot be expressed ({}); without it the tier would let \
                     through what the firewall stops (set allow_skipped_denies to publish anyway)",
                    deny.position, deny.name, deny.reason
                )));
            }
        }
        for skipped in &translation.skipped {
            tracing::warn!(source = %self.name, rule = %skipped.name, position = skipped.position, reason = %skipped.reason, "rule refused: not translated");
        }
        let mut tier = translation.tier;
        tier.annotate(ENABLED_RULES_ANNOTATION, enabled.to_string());
        self.apply(&tier, &translation.objects).await?;
        tracing::info!(
            source = %self.name,
            revision,
            rules = translation.translated,
            objects = translation.objects.len(),
            "rulebase published"
        );
        let objects = translation.objects.len();
        self.metrics
            .objects
            .get_or_create(&SourceLabels {
                source: self.name.clone(),
            })
            .set(objects as i64);
        self.update(|status| {
            status.state = "published";
            status.objects = objects;
            status.message = None;
            status.last_published = Some(telemetry::rfc3339(std::time::SystemTime::now()));
        });
        *published = Some(Published {
            enabled_rules: enabled,
            tier,
            objects: translation.objects,
        });
        Ok("published")
    }

    /// The tier (created when missing, never taken over), then the source's objects.
    async fn apply(&self, tier: &Object, objects: &[Object]) -> Result<(), ImportError> {
        let ownership = self.ownership();
        let tier = ownership.stamp(tier.clone());
        let report = self
            .target
            .ensure(&ownership, &tier, &self.leadership)
            .await?;
        if let Some(conflict) = report.conflicts.first() {
            return Err(ImportError::Conflict(format!(
                "{conflict}: threatflow writes only into a tier it created; pick another tier"
            )));
        }
        let desired: Vec<Object> = objects
            .iter()
            .map(|object| ownership.stamp(object.clone()))
            .collect();
        let report = self
            .target
            .sync(&ownership, &KINDS, &desired, Adopt::Never, &self.leadership)
            .await?;
        for conflict in &report.conflicts {
            tracing::warn!(source = %self.name, %conflict, "object not written");
        }
        if let Some(conflict) = report.conflicts.first() {
            return Err(ImportError::Conflict(format!(
                "{} objects are someone else's, e.g. {conflict}",
                report.conflicts.len()
            )));
        }
        Ok(())
    }
}

/// The running policy import.
#[derive(Default)]
pub struct PolicyImport {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PolicyImport {
    /// Starts one loop per source. With `once`, each polls once and [`PolicyImport::join`]
    /// returns after that.
    pub async fn start(
        deps: &Deps,
        config: &PolicyImportConfig,
        metrics: &ImportMetrics,
        board: &StatusBoard,
        once: bool,
        stop: &CancellationToken,
    ) -> Result<PolicyImport, StartError> {
        let kubernetes = match config.publishes_to_kubernetes() {
            true => Some(deps.kube("policy_import.publish (type kubernetes)").await?),
            false => None,
        };
        board.lock().clear();
        let mut tasks = Vec::new();
        for source_config in &config.sources {
            let (source, kind, url) = source(source_config)?;
            let Some(target) = config.publish.target(kubernetes.clone()) else {
                continue;
            };
            board.lock().insert(
                source_config.name.clone(),
                SourceStatus {
                    name: source_config.name.clone(),
                    kind,
                    url,
                    tier: source_config.tier.clone(),
                    mode: match source_config.mode {
                        ImportMode::Enforce => "enforce",
                        ImportMode::Staged => "staged",
                    },
                    state: "pending",
                    ..SourceStatus::default()
                },
            );
            metrics.init_source(&source_config.name);
            let runner = Runner {
                name: source_config.name.clone(),
                source,
                settings: source_config.settings(),
                allow_skipped_denies: source_config.allow_skipped_denies,
                min_rules_fraction: source_config.min_rules_fraction,
                poll_interval: Duration::from_secs(source_config.poll_interval_secs),
                full_read_interval: Duration::from_secs(source_config.full_read_interval_secs),
                target,
                leadership: deps.leadership.clone(),
                metrics: metrics.clone(),
                board: board.clone(),
            };
            tasks.push(tokio::spawn(runner.run(once, stop.clone())));
        }
        Ok(PolicyImport { tasks })
    }

    pub async fn join(self) {
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a policy import task failed");
            }
        }
    }
}
