//! Wiring: builds what lives as long as the process once, starts each stage from its own
//! settings, connects them with bounded queues, and stops them in one listed order.
//!
//! ```text
//! process:  metrics registry · telemetry listener · leader election · cluster model + watches
//!           (kept across config reloads; the model and its watches while their settings stay)
//! run:      sources (tokio tasks) --SourceBatch--> processor (thread) --Batch--> one task per
//!           sink; feeds (one task each): pull -> normalize -> publish, on their own schedules
//! ```
//!
//! A run ends when its sources end (`once`, standard input closing), on a stop signal, or for a
//! config reload. It drains front to back: sources stop reading and close their queue, the
//! drain window opens, feeds stop, the processor finishes and closes the sinks' queues, sinks
//! deliver what they hold (up to the drain timeout), and only then are file positions saved.
//! At the end of the process the cluster watches stop, the leader releases its Lease, and the
//! telemetry listener closes, in that order.

pub mod reload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::address_sync::sync::{FirewallMetrics, StatusBoard as FirewallBoard, TargetStatus};
use crate::address_sync::AddressSync;
use crate::cluster::watch::{WatchMetrics, WatchStatus};
use crate::cluster::{ClusterStage, Source, WatchScope};
use crate::config::Config;
use crate::deps::Deps;
use crate::egress::{Egress, EgressBoard, EgressMetrics, EgressStatus};
use crate::enrich::projection::IndexMetrics;
use crate::enrich::{Enricher, Enrichment, ThreatMatcher};
use crate::feeds::sync::{FeedMetrics, FeedStatus, StatusBoard};
use crate::feeds::Feeds;
use crate::flow::source::{SourceBatch, SourceMetrics, SourceSettings, Sources};
use crate::flow::RejectCounts;
use crate::k8s::leader::{self, LeaderElectionConfig, Leadership};
use crate::pipeline::{DeadLetter, FlowMetrics, Processor};
use crate::policy_import::run::{
    ImportMetrics, PolicyImport, SourceStatus, StatusBoard as ImportBoard,
};
use crate::sink::{SinkContext, SinkMetrics, SinkSettings, Sinks};
use crate::telemetry::{self, Readiness};
use reload::{ConfigWatch, OutcomeLabels, ReloadCounter};

/// How the daemon runs beyond its config.
#[derive(Default)]
pub struct Options {
    /// Process the input that exists now, deliver it, and stop.
    pub once: bool,
    /// Watch this config file and apply its changes without a restart (not with `once`).
    pub config_path: Option<PathBuf>,
    /// Serve telemetry here instead of binding `telemetry.listen_addr` (a test's port 0).
    pub listener: Option<TcpListener>,
    /// Talk to this Kubernetes API instead of in-cluster credentials or `KUBECONFIG`.
    pub kube: Option<kube::Client>,
    /// How often the config file is checked (default [`reload::CHECK_INTERVAL`]).
    pub config_check_interval: Option<Duration>,
}

/// What a daemon did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub records: u64,
    pub rejected: RejectCounts,
    /// Records some sink gave up on: at shutdown after the drain timeout, or because its output
    /// was closed. Their positions were not saved.
    pub undelivered: u64,
}

impl RunReport {
    fn add(&mut self, other: RunReport) {
        self.records += other.records;
        self.rejected.merge(&other.rejected);
        self.undelivered += other.undelivered;
    }
}

/// Every stage's metrics, registered once per process, so a reload keeps their values and
/// `/metrics` never goes away.
#[derive(Clone)]
pub struct Metrics {
    pub source: SourceMetrics,
    pub flow: FlowMetrics,
    pub sink: SinkMetrics,
    pub feed: FeedMetrics,
    pub watch: WatchMetrics,
    pub index: IndexMetrics,
    pub firewall: FirewallMetrics,
    pub egress: EgressMetrics,
    pub policy_import: ImportMetrics,
    /// 1 while this replica writes to the cluster.
    pub leader: Gauge,
    pub config_reloads: ReloadCounter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let config_reloads = telemetry::family(
            registry,
            "config_reloads",
            "Changes of the config file: applied without a restart, or refused (invalid; the running config stays)",
            ["applied", "refused"].map(|outcome| OutcomeLabels { outcome }),
        );
        let kubernetes = registry.sub_registry_with_prefix("kubernetes");
        let watch = WatchMetrics::register(kubernetes);
        let index = IndexMetrics::register(kubernetes);
        Metrics {
            source: SourceMetrics::register(registry.sub_registry_with_prefix("source")),
            flow: FlowMetrics::register(registry.sub_registry_with_prefix("flow")),
            sink: SinkMetrics::register(registry.sub_registry_with_prefix("sink")),
            feed: FeedMetrics::register(registry.sub_registry_with_prefix("feed")),
            watch,
            index,
            firewall: FirewallMetrics::register(registry.sub_registry_with_prefix("firewall")),
            egress: EgressMetrics::register(registry.sub_registry_with_prefix("egress")),
            policy_import: ImportMetrics::register(
                registry.sub_registry_with_prefix("policy_import"),
            ),
            leader: telemetry::metric(
                registry,
                "leader",
                "1 while this replica publishes to the cluster (it leads, or runs without leader election)",
            ),
            config_reloads,
        }
    }
}

/// What `/status` shows.
#[derive(Serialize)]
struct Status {
    feeds: Vec<FeedStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    firewall: Vec<TargetStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policy_import: Vec<SourceStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress_identities: Option<EgressStatus>,
    kubernetes: Option<KubernetesStatus>,
    leader: bool,
}

/// The watches and the endpoint index, on `/status`.
#[derive(Serialize)]
struct KubernetesStatus {
    #[serde(flatten)]
    watches: WatchStatus,
    addresses: Addresses,
}

#[derive(Serialize)]
struct Addresses {
    endpoint: usize,
    service: usize,
    released: usize,
}

/// Produces the cluster part of `/status`.
type KubernetesStatusSource = Box<dyn Fn() -> KubernetesStatus + Send + Sync>;

/// Where `/status` reads from; the parts a reload restarts are swapped in.
#[derive(Clone, Default)]
struct StatusSources {
    feeds: StatusBoard,
    firewall: FirewallBoard,
    policy_import: ImportBoard,
    egress: EgressBoard,
    kubernetes: Arc<Mutex<Option<KubernetesStatusSource>>>,
    leadership: Arc<Mutex<Option<Leadership>>>,
}

/// Runs the daemon until its sources end (`once`, or standard input closing) or `shutdown`.
pub async fn run(
    mut config: Config,
    options: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<RunReport> {
    let mut registry = Registry::with_prefix("threatflow");
    let metrics = Metrics::register(&mut registry);
    let registry = Arc::new(registry);
    let readiness = Readiness::default();
    let mut deps = Deps::from_environment(readiness.clone());
    if let Some(client) = options.kube {
        deps = deps.with_kube(client);
    }
    let status = StatusSources::default();

    let telemetry_stop = CancellationToken::new();
    let mut telemetry = Telemetry::start(
        options.listener,
        config.telemetry.listen_addr,
        &registry,
        &readiness,
        &status,
        &telemetry_stop,
    )
    .await?;
    let mut election =
        Election::start(&mut deps, config.leader_election.as_ref(), &metrics).await?;
    *status.leadership.lock() = Some(deps.leadership.clone());

    // A daemon applies changes of its config file; a batch run does not look.
    let (change_sender, mut changes) = mpsc::channel(1);
    let watch_stop = CancellationToken::new();
    if let (Some(path), false) = (&options.config_path, options.once) {
        let watch = ConfigWatch {
            path: path.clone(),
            interval: options
                .config_check_interval
                .unwrap_or(reload::CHECK_INTERVAL),
            reloads: metrics.config_reloads.clone(),
            readiness: readiness.clone(),
        };
        tokio::spawn(watch.run(config.clone(), change_sender, watch_stop.clone()));
    }

    let mut context: Option<ClusterContext> = None;
    let mut total = RunReport::default();
    let result = loop {
        // The cluster model and its watches outlive a reload unless their settings changed.
        let source = cluster_source(&config);
        let kept = context.as_ref().filter(|context| {
            context.enrichment_settings == config.enrichment
                && matches!(context.stage.source, Source::Watch(_))
                && context.stage.source == source
        });
        if kept.is_none() {
            if let Some(previous) = context.take() {
                previous.stop(&status).await;
            }
            match ClusterContext::start(&deps, &config, source, &metrics, &status).await {
                Ok(started) => context = Some(started),
                Err(error) => break Err(error),
            }
        }
        let cluster = context.as_ref().expect("started above");
        election = election
            .update(&mut deps, config.leader_election.as_ref(), &metrics)
            .await?;
        *status.leadership.lock() = Some(deps.leadership.clone());
        telemetry = telemetry
            .update(config.telemetry.listen_addr, &registry, &readiness, &status)
            .await?;

        let run_stop = shutdown.child_token();
        let mut run = match Run::start(
            &deps,
            &config,
            cluster,
            &metrics,
            &status,
            options.once,
            &run_stop,
        )
        .await
        {
            Ok(run) => run,
            Err(error) => break Err(error),
        };
        readiness.set_ready(true);
        tracing::info!(summary = %config.summary(), once = options.once, "running");
        // The run ends when its sources do (or a stop signal ends them), or for a reload.
        let next = tokio::select! {
            () = run.input_ended() => None,
            next = changes.recv() => next,
        };
        run_stop.cancel();
        match run.finish().await {
            Ok(report) => total.add(report),
            Err(error) => break Err(error),
        }
        match next {
            Some(next) if !shutdown.is_cancelled() => {
                tracing::info!("running the new configuration");
                config = next;
            }
            _ => break Ok(()),
        }
    };
    readiness.set_ready(false);
    watch_stop.cancel();
    if let Some(context) = context {
        context.stop(&status).await;
    }
    // With the feeds stopped, a leader hands its Lease over.
    election.stop().await;
    telemetry_stop.cancel();
    telemetry.stop().await;
    result.map(|()| total)
}

/// Where the model's objects come from under `config`: the inventory file, else watches
/// scoped to what enrichment and the firewall address sync need together.
fn cluster_source(config: &Config) -> Source {
    let firewall = config.firewall.as_ref().map(crate::address_sync::scope);
    match (
        &config.enrichment.kubernetes,
        &config.enrichment.inventory_path,
        firewall,
    ) {
        (_, Some(path), _) => Source::Inventory(path.clone()),
        (Some(kubernetes), None, Some(firewall)) => {
            Source::Watch(WatchScope::union([&kubernetes.scope(), &firewall]))
        }
        (Some(kubernetes), None, None) => Source::Watch(kubernetes.scope()),
        (None, None, Some(firewall)) => Source::Watch(firewall),
        (None, None, None) => Source::Empty,
    }
}

/// The cluster model and enrichment's index over it.
struct ClusterContext {
    stage: ClusterStage,
    enrichment: Enrichment,
    enrichment_settings: crate::enrich::EnrichmentConfig,
}

impl ClusterContext {
    async fn start(
        deps: &Deps,
        config: &Config,
        source: Source,
        metrics: &Metrics,
        status: &StatusSources,
    ) -> anyhow::Result<ClusterContext> {
        let stage = ClusterStage::start(deps, source, metrics.watch.clone()).await?;
        let enrichment =
            Enrichment::start(&stage.cluster, &config.enrichment, metrics.index.clone());
        *status.kubernetes.lock() = stage.watch_status_source().map(|watches| {
            let index = enrichment.index.clone();
            Box::new(move || {
                let size = index.read().size();
                KubernetesStatus {
                    watches: watches(),
                    addresses: Addresses {
                        endpoint: size.endpoint_addresses,
                        service: size.service_addresses,
                        released: size.released_addresses,
                    },
                }
            }) as KubernetesStatusSource
        });
        Ok(ClusterContext {
            stage,
            enrichment,
            enrichment_settings: config.enrichment.clone(),
        })
    }

    async fn stop(self, status: &StatusSources) {
        *status.kubernetes.lock() = None;
        self.enrichment.stop().await;
        self.stage.stop().await;
    }
}

/// One run of the pipeline and the feeds, under one config.
struct Run {
    sources: Sources,
    feeds: Feeds,
    firewall: AddressSync,
    egress: Option<Egress>,
    policy_import: PolicyImport,
    feeds_stop: CancellationToken,
    processor: crate::pipeline::ProcessorThread,
    sinks: Sinks,
    /// Opens the sinks' drain window.
    drain: CancellationToken,
    /// Without sources, a daemon runs its feeds until it is stopped.
    idle_until: Option<CancellationToken>,
}

impl Run {
    async fn start(
        deps: &Deps,
        config: &Config,
        cluster: &ClusterContext,
        metrics: &Metrics,
        status: &StatusSources,
        once: bool,
        stop: &CancellationToken,
    ) -> anyhow::Result<Run> {
        let threats = ThreatMatcher::default();
        for feed in &config.feeds {
            metrics.flow.init_feed(&feed.name);
        }
        let feeds_stop = stop.child_token();
        let feeds = Feeds::start(
            deps,
            &config.feeds,
            &config.feed_settings,
            &threats,
            &metrics.feed,
            &status.feeds,
            once,
            &feeds_stop,
        )
        .await?;

        // Egress identities are resolved on every replica: enrichment names them in flows.
        *status.egress.lock() = None;
        let egress = match config
            .firewall
            .as_ref()
            .and_then(|firewall| firewall.egress_identities.as_ref())
        {
            Some(settings) => Some(
                Egress::start(
                    deps,
                    settings,
                    &cluster.stage.cluster,
                    &metrics.egress,
                    &status.egress,
                    &feeds_stop,
                )
                .await?,
            ),
            None => None,
        };
        // The address sync writes to firewalls on its own schedule; a batch run syncs each
        // target once before its flows.
        let firewall = match &config.firewall {
            Some(firewall) => {
                AddressSync::start(
                    deps,
                    firewall,
                    config.cluster_name.as_deref(),
                    &cluster.stage.cluster,
                    egress.as_ref().map(|egress| egress.snapshot.clone()),
                    &metrics.firewall,
                    &status.firewall,
                    once,
                    &feeds_stop,
                )
                .await?
            }
            None => AddressSync::default(),
        };
        let firewall = match once {
            true => {
                firewall.join().await;
                AddressSync::default()
            }
            false => firewall,
        };
        // Firewall managers' rulebases become tiers on their own schedule (once, in a batch).
        let policy_import = match &config.policy_import {
            Some(import) => {
                PolicyImport::start(
                    deps,
                    import,
                    &metrics.policy_import,
                    &status.policy_import,
                    once,
                    &feeds_stop,
                )
                .await?
            }
            None => PolicyImport::default(),
        };
        let policy_import = match once {
            true => {
                policy_import.join().await;
                PolicyImport::default()
            }
            false => policy_import,
        };

        let drain = stop.child_token();
        let drain_timeout = Duration::from_secs(config.pipeline.drain_timeout_secs);
        let node_name = config.node_name(&deps.identity);
        let sink_context = SinkContext {
            cef: config.cef.clone(),
            cluster_name: config.cluster_name.clone(),
            hostname: node_name
                .clone()
                .unwrap_or_else(|| deps.identity.hostname.clone()),
        };
        let sink_settings = SinkSettings {
            queue_batches: config.pipeline.queue_batches,
            drain_timeout,
        };
        let mut sinks = Sinks::start(
            &config.sinks,
            &sink_context,
            sink_settings,
            &metrics.sink,
            &drain,
        )?;

        let dead_letter = match &config.dead_letter {
            Some(dead_letter) => Some(DeadLetter::open(&dead_letter.path).with_context(|| {
                format!(
                    "cannot open dead_letter.path {}",
                    dead_letter.path.display()
                )
            })?),
            None => None,
        };
        let (source_sender, source_receiver) =
            mpsc::channel::<SourceBatch>(config.pipeline.queue_batches);
        let max_line_bytes: HashMap<Arc<str>, usize> = config
            .sources
            .iter()
            .map(|source| (Arc::from(source.name.as_str()), source.max_line_bytes))
            .collect();
        for source in &config.sources {
            metrics.flow.init_source(&source.name);
        }
        let processor = Processor {
            enricher: Enricher {
                node_name: node_name.map(Arc::from),
                threats,
                labels: config.enrichment.labels.clone(),
                egress: egress
                    .as_ref()
                    .map(|egress| egress.lookup.clone())
                    .unwrap_or_default(),
            },
            index: cluster.enrichment.index.clone(),
            synced: cluster.enrichment.gate.clone(),
            sync_timeout: cluster.enrichment.sync_timeout,
        }
        .start(
            source_receiver,
            sinks.take_queues(),
            max_line_bytes,
            dead_letter,
            metrics.flow.clone(),
            config.pipeline.workers(),
        )
        .context("cannot start the processor threads")?;

        // A batch run matches flows against the feeds as they are now: sync them first. A
        // daemon starts its flows at once rather than holding them on a feed server.
        let feeds = match once {
            true => {
                feeds.join().await;
                Feeds::none()
            }
            false => feeds,
        };
        let source_settings = SourceSettings {
            batch_max_records: config.pipeline.batch_max_records,
            once,
            drain_timeout,
        };
        let sources = Sources::start(
            &config.sources,
            &source_settings,
            &source_sender,
            &metrics.source,
            stop,
        );
        drop(source_sender);
        Ok(Run {
            sources,
            feeds,
            firewall,
            egress,
            policy_import,
            feeds_stop,
            processor,
            sinks,
            drain,
            idle_until: (config.sources.is_empty() && !once).then(|| stop.clone()),
        })
    }

    /// Waits until the sources have ended (for a run without sources: until it is stopped).
    /// Cancel-safe: a reload may interrupt the wait.
    async fn input_ended(&mut self) {
        if let Some(stop) = &self.idle_until {
            stop.cancelled().await;
        }
        self.sources.join().await;
    }

    /// Drains and stops the run once its sources have ended or been told to.
    async fn finish(mut self) -> anyhow::Result<RunReport> {
        let failures = self.sources.join().await;
        self.drain.cancel();
        self.feeds_stop.cancel();
        self.feeds.join().await;
        self.firewall.join().await;
        if let Some(egress) = self.egress {
            egress.join().await;
        }
        self.policy_import.join().await;
        let processed = self.processor.join().await?;
        let undelivered = processed.refused + self.sinks.join().await;
        self.sources.finish().await;
        if !failures.is_empty() {
            anyhow::bail!("source(s) failed: {}", failures.join(", "));
        }
        Ok(RunReport {
            records: processed.records,
            rejected: processed.rejected,
            undelivered,
        })
    }
}

/// The telemetry listener, kept across reloads while its address stays.
struct Telemetry {
    addr: Option<std::net::SocketAddr>,
    /// Whether the listener was handed in (and so is kept whatever the config says).
    given: bool,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Stops this listener; a child of `parent`, which stops every listener of the process.
    stop: CancellationToken,
    parent: CancellationToken,
}

impl Telemetry {
    async fn start(
        listener: Option<TcpListener>,
        addr: Option<std::net::SocketAddr>,
        registry: &Arc<Registry>,
        readiness: &Readiness,
        status: &StatusSources,
        stop: &CancellationToken,
    ) -> anyhow::Result<Telemetry> {
        let given = listener.is_some();
        let listener = match (listener, addr) {
            (Some(listener), _) => Some(listener),
            (None, Some(addr)) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on telemetry.listen_addr {addr}"))?,
            ),
            (None, None) => None,
        };
        let parent = stop.clone();
        let stop = parent.child_token();
        let task = listener.map(|listener| {
            if let Ok(bound) = listener.local_addr() {
                tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz and /status");
            }
            let status = status.clone();
            let source: telemetry::StatusSource = Arc::new(move || {
                let status = Status {
                    feeds: status.feeds.lock().values().cloned().collect(),
                    firewall: status.firewall.lock().values().cloned().collect(),
                    policy_import: status.policy_import.lock().values().cloned().collect(),
                    egress_identities: status.egress.lock().clone(),
                    kubernetes: status.kubernetes.lock().as_ref().map(|status| status()),
                    leader: status
                        .leadership
                        .lock()
                        .as_ref()
                        .is_none_or(Leadership::is_leader),
                };
                serde_json::to_string(&status).expect("status serializes")
            });
            tokio::spawn(telemetry::serve(
                listener,
                registry.clone(),
                readiness.clone(),
                source,
                stop.clone(),
            ))
        });
        Ok(Telemetry {
            addr,
            given,
            task,
            stop,
            parent,
        })
    }

    /// Rebinds when the configured address changed (never a listener that was handed in).
    async fn update(
        self,
        addr: Option<std::net::SocketAddr>,
        registry: &Arc<Registry>,
        readiness: &Readiness,
        status: &StatusSources,
    ) -> anyhow::Result<Telemetry> {
        if self.given || self.addr == addr {
            return Ok(self);
        }
        let parent = self.parent.clone();
        self.stop().await;
        Telemetry::start(None, addr, registry, readiness, status, &parent).await
    }

    async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// Leader election, kept across reloads while its settings stay.
struct Election {
    settings: Option<LeaderElectionConfig>,
    task: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Election {
    async fn start(
        deps: &mut Deps,
        settings: Option<&LeaderElectionConfig>,
        metrics: &Metrics,
    ) -> anyhow::Result<Election> {
        let stop = CancellationToken::new();
        // Without election this replica always leads.
        metrics.leader.set(i64::from(settings.is_none()));
        let (leadership, task) = match settings {
            Some(settings) => {
                let client = deps.kube("leader_election").await?;
                let (leadership, task) = leader::start(
                    client,
                    settings,
                    &deps.identity,
                    metrics.leader.clone(),
                    stop.clone(),
                );
                (leadership, Some(task))
            }
            None => (Leadership::always(), None),
        };
        *deps = deps.clone().with_leadership(leadership);
        Ok(Election {
            settings: settings.cloned(),
            task,
            stop,
        })
    }

    /// Restarts the election when its settings changed (releasing the Lease first).
    async fn update(
        self,
        deps: &mut Deps,
        settings: Option<&LeaderElectionConfig>,
        metrics: &Metrics,
    ) -> anyhow::Result<Election> {
        if self.settings.as_ref() == settings {
            return Ok(self);
        }
        self.stop().await;
        Election::start(deps, settings, metrics).await
    }

    /// Stops campaigning; a leader releases the Lease.
    async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            if let Err(error) = task.await {
                tracing::error!(%error, "the leader election task failed");
            }
        }
    }
}

/// SIGTERM or SIGINT starts a graceful shutdown; a second one exits at once.
pub async fn stop_on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    for attempt in 0..2 {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        if attempt == 0 {
            tracing::info!(
                "shutting down: draining in-flight records (signal again to exit at once)"
            );
            shutdown.cancel();
        }
    }
    tracing::warn!("second signal: exiting without draining");
    std::process::exit(130);
}
