//! The processing stage: lines -> parsed, enriched records, and rejected lines -> counted and
//! dead-lettered.
//!
//! [`Processor`] is the one place a line becomes an [`EnrichedRecord`]; the daemon and the
//! `enrich` command both use it. It is synchronous and CPU-bound, so the daemon runs it on
//! threads of its own between the sources' queue and the sinks' queues: one, or a dispatcher,
//! `pipeline.workers` workers and a collector that keeps the batches' order
//! ([`Processor::start`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::cluster::SyncGate;
use crate::enrich::{EndpointIndex, EnrichedRecord, Enricher, Lookup, SharedIndex};
use crate::flow::lines::Line;
use crate::flow::source::SourceBatch;
use crate::flow::{FlowFormat, RejectCounts, RejectReason, Rejection};
use crate::problems::Problems;
use crate::sink::{Batch, SinkQueue};
use crate::telemetry;

/// The dead-letter file: one JSON object per rejected line.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    pub path: PathBuf,
}

impl DeadLetterConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.path.as_os_str().is_empty() {
            problems.push(format!("{path}.path"), "must not be empty");
        }
    }
}

/// Batching and shutdown.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most lines a source puts in one batch.
    pub batch_max_records: usize,
    /// Batches that may wait in front of each stage; a full queue slows the source down.
    pub queue_batches: usize,
    /// On shutdown, or once the sources have ended (`--once`, standard input closed), how
    /// long sinks may keep retrying undelivered batches before giving up (the positions of
    /// undelivered lines are not saved, so they are read again on restart).
    pub drain_timeout_secs: u64,
    /// Threads that parse and enrich batches side by side (sinks still receive every
    /// source's batches in order). Default: the cores available to the process, its CPU
    /// limit included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_max_records: 1024,
            queue_batches: 16,
            drain_timeout_secs: 30,
            workers: None,
        }
    }
}

impl PipelineConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if !(1..=100_000).contains(&self.batch_max_records) {
            problems.push(
                format!("{path}.batch_max_records"),
                "must be between 1 and 100000",
            );
        }
        if !(1..=10_000).contains(&self.queue_batches) {
            problems.push(
                format!("{path}.queue_batches"),
                "must be between 1 and 10000",
            );
        }
        if self
            .workers
            .is_some_and(|workers| !WORKERS.contains(&workers))
        {
            problems.push(format!("{path}.workers"), "must be between 1 and 256");
        }
    }

    /// The worker threads to run.
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(available_cores)
    }
}

/// How many processing workers may be asked for (`pipeline.workers`, `enrich --workers`).
pub const WORKERS: std::ops::RangeInclusive<usize> = 1..=256;

/// The cores this process may use: the machine's, or fewer under a CPU limit (cgroup quota)
/// or affinity mask.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Parses and enriches lines.
#[derive(Debug)]
pub struct Processor {
    pub enricher: Enricher,
    pub index: SharedIndex,
    /// Opens once the index holds the cluster's initial lists.
    pub synced: Arc<SyncGate>,
    /// How long the first records wait for `synced` before they go on with whatever context
    /// the index has.
    pub sync_timeout: Duration,
}

/// What the processing stage did over a run.
#[derive(Clone, Debug, Default)]
pub struct Processed {
    pub records: u64,
    pub rejected: RejectCounts,
    /// Records a sink refused because it had already given up.
    pub refused: u64,
}

/// The processor thread of a run.
pub struct ProcessorThread(std::thread::JoinHandle<Processed>);

impl ProcessorThread {
    /// Waits for the thread to end (when every source has ended and the queue is drained).
    pub async fn join(self) -> Result<Processed, ProcessorPanicked> {
        tokio::task::spawn_blocking(move || self.0.join())
            .await
            .map_err(|_| ProcessorPanicked)?
            .map_err(|_| ProcessorPanicked)
    }
}

/// The processor thread panicked: a bug, since no input may panic it.
#[derive(Debug, thiserror::Error)]
#[error("the processor thread panicked")]
pub struct ProcessorPanicked;

/// A source batch parsed and enriched: its records, and its rejected lines by position.
struct Worked {
    batch: SourceBatch,
    records: Vec<EnrichedRecord>,
    rejections: Vec<(usize, Rejection)>,
}

impl Processor {
    /// Starts the processing stage: [`Processor::run`] on its own thread with one worker, or
    /// with more a dispatcher, `workers` threads that parse and enrich batches side by side,
    /// and a collector that takes their results in the order the batches came (so every
    /// sink receives each source's batches in order, and positions keep their meaning).
    pub fn start(
        self,
        batches: mpsc::Receiver<SourceBatch>,
        sink_queues: Vec<SinkQueue>,
        max_line_bytes: HashMap<Arc<str>, usize>,
        mut dead_letter: Option<DeadLetter>,
        metrics: FlowMetrics,
        workers: usize,
    ) -> std::io::Result<ProcessorThread> {
        let named = |name: &str| std::thread::Builder::new().name(name.into());
        if workers <= 1 {
            return named("threatflow-processor")
                .spawn(move || {
                    self.run(
                        batches,
                        &sink_queues,
                        &max_line_bytes,
                        dead_letter.as_mut(),
                        &metrics,
                    )
                })
                .map(ProcessorThread);
        }
        let processor = Arc::new(self);
        let max_line_bytes = Arc::new(max_line_bytes);
        let mut inboxes = Vec::with_capacity(workers);
        let mut outboxes = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for worker in 0..workers {
            let (to_worker, inbox) = std::sync::mpsc::sync_channel::<SourceBatch>(1);
            let (outbox, from_worker) = std::sync::mpsc::sync_channel::<Worked>(1);
            let (processor, max_line_bytes) = (processor.clone(), max_line_bytes.clone());
            handles.push(
                named(&format!("threatflow-worker-{worker}")).spawn(move || {
                    for batch in inbox {
                        if outbox.send(processor.work(batch, &max_line_bytes)).is_err() {
                            return;
                        }
                    }
                })?,
            );
            inboxes.push(to_worker);
            outboxes.push(from_worker);
        }
        let dispatcher = processor.clone();
        let dispatch_metrics = metrics.clone();
        named("threatflow-dispatcher").spawn(move || {
            let mut batches = batches;
            let mut waited = false;
            for turn in (0..workers).cycle() {
                let Some(batch) = batches.blocking_recv() else {
                    return;
                };
                if !waited {
                    waited = true;
                    dispatcher.wait_for_sync(&dispatch_metrics);
                }
                if inboxes[turn].send(batch).is_err() {
                    return;
                }
            }
        })?;
        named("threatflow-collector")
            .spawn(move || {
                let mut handles = handles;
                let mut processed = Processed::default();
                // Every batch before the one awaited is collected; the dispatcher hands batches
                // out in this same turn, so none is left once a worker has hung up.
                let ended = 'collect: loop {
                    for (turn, from_worker) in outboxes.iter().enumerate() {
                        let Ok(worked) = from_worker.recv() else {
                            break 'collect turn;
                        };
                        deliver(
                            worked,
                            &sink_queues,
                            dead_letter.as_mut(),
                            &metrics,
                            &mut processed,
                        );
                    }
                };
                // The worker that hung up has ended, or is unwinding: if it panicked, the
                // collector panics too, so the run reports it.
                if let Err(panic) = handles.swap_remove(ended).join() {
                    std::panic::resume_unwind(panic);
                }
                processed
            })
            .map(ProcessorThread)
    }

    /// A processor over a fixed index (offline use).
    pub fn new(enricher: Enricher, index: EndpointIndex) -> Processor {
        Processor {
            enricher,
            index: Arc::new(parking_lot::RwLock::new(index)),
            synced: Arc::new(SyncGate::opened()),
            sync_timeout: Duration::ZERO,
        }
    }

    /// The daemon's processing stage on one thread: takes source batches until every source
    /// is done, and shares each batch's records with every sink's queue. Blocking.
    pub fn run(
        &self,
        mut batches: mpsc::Receiver<SourceBatch>,
        sink_queues: &[SinkQueue],
        max_line_bytes: &HashMap<Arc<str>, usize>,
        mut dead_letter: Option<&mut DeadLetter>,
        metrics: &FlowMetrics,
    ) -> Processed {
        let mut processed = Processed::default();
        let mut waited = false;
        while let Some(batch) = batches.blocking_recv() {
            if !waited {
                waited = true;
                self.wait_for_sync(metrics);
            }
            let worked = self.work(batch, max_line_bytes);
            deliver(
                worked,
                sink_queues,
                dead_letter.as_deref_mut(),
                metrics,
                &mut processed,
            );
        }
        processed
    }

    /// Parses and enriches a batch's lines.
    fn work(&self, batch: SourceBatch, max_line_bytes: &HashMap<Arc<str>, usize>) -> Worked {
        let max_line = max_line_bytes
            .get(&batch.source)
            .copied()
            .unwrap_or(usize::MAX);
        let mut records = Vec::with_capacity(batch.lines.len());
        let mut rejections = Vec::new();
        // Read once per batch; released before the batch waits on a sink's queue.
        let index = self.index.read();
        for (at, line) in batch.lines.iter().enumerate() {
            match self.process(&index, batch.format, line, max_line) {
                Ok(record) => records.push(record),
                Err(rejection) => rejections.push((at, rejection)),
            }
        }
        drop(index);
        Worked {
            batch,
            records,
            rejections,
        }
    }

    /// Holds the first batch (and, through the bounded queue, the source) until the index
    /// holds the cluster's initial lists, at most `sync_timeout`.
    fn wait_for_sync(&self, metrics: &FlowMetrics) {
        if self.synced.is_open() {
            return;
        }
        tracing::info!(timeout = ?self.sync_timeout, "holding records until the Kubernetes lists are in the index");
        if self.synced.wait_blocking(self.sync_timeout) {
            tracing::info!("Kubernetes lists are in the index; enriching");
        } else {
            metrics.sync_timeouts.inc();
            tracing::warn!(timeout = ?self.sync_timeout, "the Kubernetes lists are not in the index yet; records go on with the context it has (see /readyz)");
        }
    }

    pub fn process(
        &self,
        index: &EndpointIndex,
        format: FlowFormat,
        line: Line<'_>,
        max_line_bytes: usize,
    ) -> Result<EnrichedRecord, Rejection> {
        match line {
            Line::Complete(bytes) => format
                .parse(bytes)
                .map(|flow| self.enricher.enrich(flow, index)),
            Line::TooLong { len, .. } => Err(Rejection::new(
                RejectReason::TooLong,
                format!("line of {len} bytes is longer than max_line_bytes ({max_line_bytes})"),
            )),
        }
    }
}

/// Counts a worked batch, dead-letters its rejected lines, and shares its records with every
/// sink's queue, then acknowledges the processing stage's share.
fn deliver(
    worked: Worked,
    sink_queues: &[SinkQueue],
    mut dead_letter: Option<&mut DeadLetter>,
    metrics: &FlowMetrics,
    processed: &mut Processed,
) {
    let Worked {
        batch,
        records,
        rejections,
    } = worked;
    let mut rejected = RejectCounts::default();
    if !rejections.is_empty() {
        let mut lines = batch.lines.iter().enumerate();
        for (at, rejection) in &rejections {
            rejected.add(rejection.reason);
            let Some(dead_letter) = dead_letter.as_deref_mut() else {
                continue;
            };
            // Rejections are in line order: one walk over the batch finds them all.
            let Some((_, line)) = lines.find(|(index, _)| index == at) else {
                continue;
            };
            if let Err(error) = dead_letter.write(&batch.source, line, rejection) {
                tracing::error!(%error, "cannot write to the dead-letter file; the rejected line is only counted");
            }
        }
        tracing::warn!(source = %batch.source, rejected = %rejected, "rejected lines");
        if let Some(dead_letter) = dead_letter {
            if let Err(error) = dead_letter.flush() {
                tracing::error!(%error, "cannot write to the dead-letter file; the rejected lines are only counted");
            }
        }
    }
    metrics.batch_processed(&batch.source, &records, &rejected);
    processed.records += records.len() as u64;
    processed.rejected.merge(&rejected);
    let records = Arc::new(records);
    for queue in sink_queues {
        let share = Batch {
            records: records.clone(),
            ack: batch.ack.share(),
        };
        // A sink that gave up (and said why) takes no more; its unacknowledged share keeps
        // these positions from being saved.
        if !queue.send(share) {
            processed.refused += records.len() as u64;
        }
    }
    batch.ack.ack();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    source: String,
    reason: &'static str,
}

/// Records parsed and rejected, per source.
#[derive(Clone, Debug, Default)]
pub struct FlowMetrics {
    records: Family<FlowLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
    enriched_endpoints: Family<FlowLabels, Counter>,
    threat_matches: Family<ThreatLabels, Counter>,
    index_lookups: Family<LookupLabels, Counter>,
    sync_timeouts: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreatLabels {
    feed: String,
}

impl FlowMetrics {
    pub fn register(registry: &mut Registry) -> FlowMetrics {
        FlowMetrics {
            records: telemetry::family(registry, "records", "Lines parsed into flow records", []),
            rejected: telemetry::family(registry, "rejected", "Lines rejected, by reason", []),
            enriched_endpoints: telemetry::family(registry, "enriched_endpoints", "Endpoints that gained cluster context from the index", []),
            threat_matches: telemetry::family(registry, "threat_matches", "Records whose source or destination a threat feed lists, per feed", []),
            index_lookups: telemetry::family(registry, "index_lookups", "Endpoint lookups in the index, by outcome (hit, miss, hit_after_delete: a pod deleted within the grace period, no_address: an aggregated record)", Lookup::ALL.map(|outcome| LookupLabels { outcome: outcome.as_str() })),
            sync_timeouts: telemetry::metric(registry, "sync_timeouts", "Times records went on before the Kubernetes lists were in the index"),
        }
    }

    /// Creates the threat-match series of `feed` at zero.
    pub fn init_feed(&self, feed: &str) {
        drop(self.threat_matches.get_or_create(&ThreatLabels {
            feed: feed.to_owned(),
        }));
    }

    /// Creates the series of `source` at zero, so that "nothing rejected" reads as 0 rather
    /// than as missing.
    pub fn init_source(&self, source: &str) {
        let labels = FlowLabels {
            source: source.to_owned(),
        };
        drop(self.records.get_or_create(&labels));
        drop(self.enriched_endpoints.get_or_create(&labels));
        for reason in RejectReason::ALL {
            drop(self.rejected.get_or_create(&RejectLabels {
                source: source.to_owned(),
                reason: reason.as_str(),
            }));
        }
    }

    /// Counts a processed batch: records, how their endpoints resolved, threat matches and
    /// rejections.
    pub fn batch_processed(
        &self,
        source: &str,
        records: &[EnrichedRecord],
        rejected: &crate::flow::RejectCounts,
    ) {
        let labels = FlowLabels {
            source: source.to_owned(),
        };
        self.records
            .get_or_create(&labels)
            .inc_by(records.len() as u64);
        let mut lookups = [0u64; 4];
        let mut feeds: HashMap<&str, u64> = HashMap::new();
        for record in records {
            for lookup in record.lookups {
                lookups[lookup as usize] += 1;
            }
            for feed in &record.threat_feeds {
                *feeds.entry(&feed.name).or_default() += 1;
            }
        }
        self.enriched_endpoints
            .get_or_create(&labels)
            .inc_by(lookups[Lookup::Hit as usize] + lookups[Lookup::HitAfterDelete as usize]);
        for outcome in Lookup::ALL {
            if lookups[outcome as usize] > 0 {
                self.index_lookups
                    .get_or_create(&LookupLabels {
                        outcome: outcome.as_str(),
                    })
                    .inc_by(lookups[outcome as usize]);
            }
        }
        for (feed, count) in feeds {
            self.threat_matches
                .get_or_create(&ThreatLabels {
                    feed: feed.to_owned(),
                })
                .inc_by(count);
        }
        for reason in RejectReason::ALL {
            let count = rejected.get(reason);
            if count > 0 {
                let labels = RejectLabels {
                    source: source.to_owned(),
                    reason: reason.as_str(),
                };
                self.rejected.get_or_create(&labels).inc_by(count);
            }
        }
    }
}

/// The dead-letter file: one JSON object per rejected line, with the reason.
pub struct DeadLetter {
    writer: std::io::BufWriter<std::fs::File>,
}

#[derive(Serialize)]
struct DeadLetterEntry<'a> {
    source: &'a str,
    reason: &'static str,
    detail: &'a str,
    /// The line, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<&'a str>,
    /// The line's bytes, base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    line_base64: Option<String>,
    /// For a line over the length limit: its length; only its first bytes are kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    line_len: Option<u64>,
}

impl DeadLetter {
    pub fn open(path: &Path) -> std::io::Result<DeadLetter> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(DeadLetter {
            writer: std::io::BufWriter::new(file),
        })
    }

    pub fn write(
        &mut self,
        source: &str,
        line: Line<'_>,
        rejection: &Rejection,
    ) -> std::io::Result<()> {
        use base64::Engine;
        let (bytes, line_len) = match line {
            Line::Complete(bytes) => (bytes, None),
            Line::TooLong { prefix, len } => (prefix, Some(len)),
        };
        let text = std::str::from_utf8(bytes).ok();
        let entry = DeadLetterEntry {
            source,
            reason: rejection.reason.as_str(),
            detail: &rejection.detail,
            line: text,
            line_base64: text
                .is_none()
                .then(|| base64::engine::general_purpose::STANDARD.encode(bytes)),
            line_len,
        };
        serde_json::to_writer(&mut self.writer, &entry)?;
        self.writer.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}
