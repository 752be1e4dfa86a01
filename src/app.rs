//! Wiring: builds every stage from the config, connects them with bounded queues, runs them,
//! and shuts them down in order.
//!
//! ```text
//! sources (tokio tasks) --SourceBatch--> processor (thread) --Batch--> one task per sink
//! feeds (one tokio task each): pull -> normalize -> publish, on their own schedules
//! ```
//!
//! Shutdown drains front to back: sources stop reading and close their queue, the processor
//! finishes and closes the sinks' queues, sinks deliver what they hold (up to the drain
//! timeout), and only then are file positions saved.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::watch::{ClusterWatch, WatchMetrics};
use crate::cluster::{Cluster, Inventory, SyncGate, SystemClock};
use crate::config::Config;
use crate::enrich::projection::{project, IndexMetrics};
use crate::enrich::{EndpointIndex, Enricher, SharedIndex, ThreatMatcher};
use crate::feeds::sync::{self, FeedMetrics, FeedRunner, StatusBoard};
use crate::flow::config::SourceKind;
use crate::flow::kafka;
use crate::flow::source::{self, CheckpointStore, SourceBatch, SourceContext, SourceMetrics};
use crate::flow::RejectCounts;
use crate::identity::Identity;
use crate::k8s::leader::{self, Leadership};
use crate::pipeline::SinkQueue;
use crate::pipeline::{DeadLetter, FlowMetrics, Processor};
use crate::sink::{Batch, Sink, SinkContext, SinkMetrics};
use crate::telemetry::{self, Readiness};

/// How a run behaves beyond its config, and what outlives one run (a config reload starts a
/// new run in the same process).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Process the input that exists now, deliver it, and stop.
    pub once: bool,
    pub readiness: Readiness,
    /// Config reloads by outcome (`applied`, `refused`).
    pub config_reloads: Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub records: u64,
    pub rejected: RejectCounts,
    /// Records some sink gave up on: at shutdown after the drain timeout, or because its output
    /// was closed. Their positions were not saved.
    pub undelivered: u64,
}

/// Loads the inventory into an index, or an empty index without one.
pub fn load_index(config: &Config) -> anyhow::Result<EndpointIndex> {
    match &config.enrichment.inventory_path {
        Some(path) => {
            let inventory = Inventory::load(path)?;
            let index = EndpointIndex::build(&inventory, &config.enrichment.labels);
            let size = index.size();
            tracing::info!(path = %path.display(), pods = inventory.pods.len(), endpoints = size.endpoint_addresses, services = size.service_addresses, "loaded inventory");
            Ok(index)
        }
        None => Ok(EndpointIndex::default()),
    }
}

/// Runs the pipeline until its sources end (`once`, or standard input closing) or `shutdown`.
pub async fn run(
    config: Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<RunReport> {
    let mut registry = Registry::with_prefix("threatflow");
    let source_metrics = SourceMetrics::register(registry.sub_registry_with_prefix("source"));
    let flow_metrics = FlowMetrics::register(registry.sub_registry_with_prefix("flow"));
    let sink_metrics = SinkMetrics::register(registry.sub_registry_with_prefix("sink"));
    let feed_metrics = FeedMetrics::register(registry.sub_registry_with_prefix("feed"));
    let watch_metrics = WatchMetrics::register(registry.sub_registry_with_prefix("kubernetes"));
    let index_metrics = IndexMetrics::register(registry.sub_registry_with_prefix("kubernetes"));
    let identity = Identity::from_environment();
    for source in &config.sources {
        source_metrics.init_source(&source.name);
        flow_metrics.init_source(&source.name);
    }
    for sink in &config.sinks {
        sink_metrics.init_sink(&sink.name);
    }
    for feed in &config.feeds {
        flow_metrics.init_feed(&feed.name);
    }
    // Without election this instance always publishes; with it, the elector sets the gauge.
    let leader_metric = Gauge::<i64>::default();
    leader_metric.set(i64::from(config.leader_election.is_none()));
    registry.register(
        "leader",
        "1 while this replica publishes to the cluster (it leads, or runs without leader election)",
        leader_metric.clone(),
    );
    for outcome in ["applied", "refused"] {
        drop(
            options
                .config_reloads
                .get_or_create(&OutcomeLabels { outcome }),
        );
    }
    registry.register(
        "config_reloads",
        "Changes of the config file: applied without a restart, or refused (invalid; the running config stays)",
        options.config_reloads.clone(),
    );
    let registry = Arc::new(registry);
    let readiness = options.readiness.clone();
    readiness.wait_for("pipeline", "starting");
    let telemetry_stop = CancellationToken::new();
    let tasks = TaskTracker::new();

    // Feeds: each keeps itself in sync on its own schedule.
    let feed_board = StatusBoard::default();

    // Cluster context: watches in the cluster, or an inventory file.
    let watch_stop = CancellationToken::new();
    let index = SharedIndex::default();
    let (synced, cluster_watch) = match &config.enrichment.kubernetes {
        Some(settings) => {
            let client = kube::Client::try_default().await.context(
                "enrichment.kubernetes needs the Kubernetes API: run in a pod with a service account, or set KUBECONFIG",
            )?;
            let cluster = Cluster::new(Arc::new(SystemClock));
            let eviction = project(
                &cluster,
                index.clone(),
                config.enrichment.labels.clone(),
                settings.scope(),
                Duration::from_secs(settings.grace_period_secs),
                index_metrics.clone(),
                watch_stop.clone(),
            );
            drop(eviction);
            let watch = ClusterWatch::start(
                client,
                &settings.scope(),
                cluster.clone(),
                watch_metrics,
                readiness.clone(),
                watch_stop.clone(),
            );
            (cluster.gate().clone(), Some(watch))
        }
        None => {
            *index.write() = load_index(&config)?;
            (Arc::new(SyncGate::opened()), None)
        }
    };
    let sync_timeout = Duration::from_secs(
        config
            .enrichment
            .kubernetes
            .as_ref()
            .map_or(0, |kubernetes| kubernetes.sync_timeout_secs),
    );
    // Feeds stop with the run: at shutdown, or when the sources have ended.
    let feeds_stop = shutdown.child_token();
    let threats = ThreatMatcher::default();
    let mut feed_tasks = Vec::new();
    let election_stop = CancellationToken::new();
    let (leadership, election) = match &config.leader_election {
        Some(settings) => {
            let client = kube::Client::try_default().await.context(
                "leader_election needs the Kubernetes API: run in a pod with a service account, or set KUBECONFIG",
            )?;
            let (leadership, task) = leader::start(
                client,
                settings,
                &identity,
                leader_metric.clone(),
                election_stop.clone(),
            );
            (leadership, Some(task))
        }
        None => (Leadership::always(), None),
    };
    if !config.feeds.is_empty() {
        let fetcher = sync::fetcher(&config.feed_settings)?;
        let kubernetes = sync::kubernetes_client(&config.feeds, &config.feed_settings).await?;
        for feed in &config.feeds {
            let runner = FeedRunner::new(
                feed.clone(),
                &config.feed_settings,
                fetcher.clone(),
                kubernetes.clone(),
                Some(threats.clone()),
                feed_metrics.clone(),
                feed_board.clone(),
            )?
            .with_leadership(leadership.clone());
            feed_tasks.push(tokio::spawn(runner.run(options.once, feeds_stop.clone())));
        }
    }

    if let Some(addr) = config.telemetry.listen_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on telemetry.listen_addr {addr}"))?;
        tracing::info!(%addr, "serving /metrics, /healthz, /readyz and /status");
        let board = feed_board.clone();
        let watch_status = cluster_watch.as_ref().map(|watch| watch.status_source());
        let leading = leadership.clone();
        let status_index = index.clone();
        let status: telemetry::StatusSource = Arc::new(move || {
            let feeds: Vec<_> = board.lock().values().cloned().collect();
            let kubernetes = watch_status.as_ref().map(|status| {
                let size = status_index.read().size();
                let status = status();
                serde_json::json!({
                    "synced": status.synced,
                    "waiting_for": status.waiting_for,
                    "objects": status.objects,
                    "addresses": {
                        "endpoint": size.endpoint_addresses,
                        "service": size.service_addresses,
                        "released": size.released_addresses,
                    },
                })
            });
            serde_json::json!({ "feeds": feeds, "kubernetes": kubernetes, "leader": leading.is_leader() })
                .to_string()
        });
        tasks.spawn(telemetry::serve(
            listener,
            registry.clone(),
            readiness.clone(),
            status,
            telemetry_stop.clone(),
        ));
    }

    let mut dead_letter = match &config.dead_letter {
        Some(dead_letter) => Some(DeadLetter::open(&dead_letter.path).with_context(|| {
            format!(
                "cannot open dead_letter.path {}",
                dead_letter.path.display()
            )
        })?),
        None => None,
    };

    // Sinks, each behind its own bounded queue.
    let drain_timeout = Duration::from_secs(config.pipeline.drain_timeout_secs);
    // The drain window opens at a stop signal, or when the sources have ended.
    let input_done = shutdown.child_token();
    let mut sink_queues = Vec::new();
    let mut sink_tasks = Vec::new();
    let sink_context = SinkContext {
        cef: config.cef.clone(),
        cluster_name: config.cluster_name.clone(),
        hostname: config
            .node_name(&identity)
            .unwrap_or_else(|| identity.hostname.clone()),
    };
    for sink_config in &config.sinks {
        let sink = Sink::new(sink_config, &sink_context)?;
        let (sender, receiver) = mpsc::channel::<Batch>(config.pipeline.queue_batches);
        sink_queues.push(SinkQueue::new(
            sender,
            sink_config.drops_when_full(config.sinks.len()),
            sink_metrics.dropped_counter(&sink_config.name, "destination_full"),
            sink_metrics.queued_gauge(&sink_config.name),
            &sink_config.name,
            tokio::runtime::Handle::current(),
        ));
        sink_tasks.push(tokio::spawn(sink.run(
            receiver,
            sink_metrics.clone(),
            input_done.clone(),
            drain_timeout,
            None,
        )));
    }

    // The processor thread.
    let (source_sender, source_receiver) =
        mpsc::channel::<SourceBatch>(config.pipeline.queue_batches);
    let max_line_bytes: std::collections::HashMap<Arc<str>, usize> = config
        .sources
        .iter()
        .map(|source| (Arc::from(source.name.as_str()), source.max_line_bytes))
        .collect();
    let processor = Processor {
        enricher: Enricher {
            node_name: config.node_name(&identity).map(Arc::from),
            threats,
            labels: config.enrichment.labels.clone(),
        },
        index: index.clone(),
        synced,
        sync_timeout,
    };
    let processor_thread = std::thread::Builder::new()
        .name("threatflow-processor".into())
        .spawn(move || {
            processor.run(
                source_receiver,
                &sink_queues,
                &max_line_bytes,
                dead_letter.as_mut(),
                &flow_metrics,
            )
        })
        .context("cannot start the processor thread")?;

    // A batch run matches flows against the feeds as they are now: sync them first. A daemon
    // starts its flows at once rather than holding them on a feed server.
    if options.once {
        for task in feed_tasks.drain(..) {
            task.await.context("feed task")?;
        }
    }

    // Sources.
    let mut checkpoint_stores = Vec::new();
    let mut source_tasks = Vec::new();
    for source_config in &config.sources {
        let context = SourceContext {
            name: Arc::from(source_config.name.as_str()),
            format: source_config.format,
            max_line_bytes: source_config.max_line_bytes,
            batch_max_records: config.pipeline.batch_max_records,
            output: source_sender.clone(),
            metrics: source_metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let task = match (
            source_config.kind,
            &source_config.file,
            &source_config.kafka,
        ) {
            (SourceKind::Kafka, _, Some(kafka)) => {
                let run = kafka::KafkaRun {
                    once: options.once,
                    drain_timeout,
                };
                let kafka = kafka.clone();
                tokio::task::spawn_blocking(move || kafka::run(kafka, run, context))
            }
            (SourceKind::File, Some(file), _) => {
                let store = file.checkpoint_path.clone().map(CheckpointStore::new);
                if let Some(store) = &store {
                    checkpoint_stores.push(store.clone());
                }
                tokio::spawn(source::run_file(file.clone(), store, options.once, context))
            }
            _ => tokio::spawn(source::run_reader(tokio::io::stdin(), context)),
        };
        source_tasks.push((source_config.name.clone(), task));
    }
    drop(source_sender);

    // Positions are saved every second while running, and once more at the end.
    let checkpoint_stop = CancellationToken::new();
    {
        let (stores, stop) = (checkpoint_stores.clone(), checkpoint_stop.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => persist(&stores),
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    readiness.set_ready(true);
    tracing::info!(summary = %config.summary(), once = options.once, "running");

    // Without sources, a daemon runs its feeds until it is told to stop.
    if config.sources.is_empty() && !options.once {
        shutdown.cancelled().await;
    }
    let mut failures = Vec::new();
    for (name, task) in source_tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(source = %name, error = %format!("{:#}", anyhow::Error::from(error)), "source failed");
                failures.push(name);
            }
            Err(join_error) => {
                tracing::error!(source = %name, %join_error, "source task failed");
                failures.push(name);
            }
        }
    }
    readiness.set_ready(false);
    input_done.cancel();
    feeds_stop.cancel();
    for task in feed_tasks {
        task.await.context("feed task")?;
    }
    // With the feeds stopped, a leader hands its Lease over.
    election_stop.cancel();
    if let Some(election) = election {
        election.await.context("leader election task")?;
    }
    let processed = tokio::task::spawn_blocking(move || processor_thread.join())
        .await
        .context("processor thread")?
        .map_err(|_| anyhow::anyhow!("the processor thread panicked"))?;
    let mut undelivered = processed.refused;
    for task in sink_tasks {
        undelivered += task.await.context("sink task")?.undelivered;
    }
    checkpoint_stop.cancel();
    persist(&checkpoint_stores);
    watch_stop.cancel();
    if let Some(watch) = cluster_watch {
        watch.join().await;
    }
    telemetry_stop.cancel();
    tasks.close();
    tasks.wait().await;

    if !failures.is_empty() {
        anyhow::bail!("source(s) failed: {}", failures.join(", "));
    }
    Ok(RunReport {
        records: processed.records,
        rejected: processed.rejected,
        undelivered,
    })
}

fn persist(stores: &[CheckpointStore]) {
    for store in stores {
        if let Err(error) = store.persist() {
            tracing::error!(%error, "cannot save a checkpoint; a restart may re-send lines");
        }
    }
}
