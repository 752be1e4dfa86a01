//! Sinks: encoding enriched records and delivering them (stdout, file, syslog, Kafka).
//!
//! Encoders (`cef`, `json`) are pure: record in, bytes out. A sink task takes batches from its
//! own bounded queue, encodes and frames a whole batch into one buffer, writes and flushes it,
//! and only then acknowledges the batch. A failed write is retried with backoff (the whole
//! batch again, so delivery is at-least-once with at most one batch duplicated) until it
//! succeeds or, during shutdown, the drain timeout passes; an undelivered batch is never
//! acknowledged.

pub mod cef;
pub mod config;
pub mod field;
pub mod json;
pub mod kafka;
pub mod leef;
pub mod queue;
pub mod syslog;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ack::AckToken;
use crate::enrich::EnrichedRecord;
use crate::kafka::KafkaSetupError;
use crate::net::backoff::Backoff;
use crate::net::tls::TlsError;
use crate::telemetry::{self, ErrorChain};
use cef::CefConfig;
use cef::{CefEncoder, EncodeStats, Trim};
pub use config::{OutputFormat, SinkConfig, SinkKind, WhenFull};
use json::JsonEncoder;
use kafka::{KafkaKey, KafkaWriter};
use leef::LeefEncoder;
pub use queue::SinkQueue;
use syslog::{SyslogClient, SyslogFramer, Timestamps};

/// Records on their way to one sink, with that sink's share of the acknowledgement.
#[derive(Debug)]
pub struct Batch {
    pub records: Arc<Vec<EnrichedRecord>>,
    pub ack: AckToken,
}

/// The record encoding of a sink.
#[derive(Debug)]
pub enum Encoder {
    Cef(CefEncoder),
    Leef(LeefEncoder),
    Json(JsonEncoder),
}

/// What every sink's encoding and headers take from outside the sink's own settings.
#[derive(Clone, Debug, Default)]
pub struct SinkContext {
    /// Event classes and field mapping, for CEF and LEEF.
    pub cef: CefConfig,
    /// Sent with every record (CEF `deviceExternalId`).
    pub cluster_name: Option<String>,
    /// The syslog HOSTNAME when a sink sets none: the node's name, else the host's.
    pub hostname: String,
}

impl Encoder {
    pub fn new(format: OutputFormat, context: &SinkContext) -> Encoder {
        let cluster_name = context.cluster_name.as_deref();
        match format {
            OutputFormat::Cef => Encoder::Cef(CefEncoder::new(&context.cef, cluster_name)),
            OutputFormat::Leef => Encoder::Leef(LeefEncoder::new(&context.cef, cluster_name)),
            OutputFormat::Json => Encoder::Json(JsonEncoder::new(cluster_name)),
        }
    }

    /// Appends one encoded record to `out`, without a terminator.
    pub fn encode(&self, record: &EnrichedRecord, out: &mut Vec<u8>) -> EncodeStats {
        self.encode_trimmed(record, out, Trim::None)
    }

    /// Appends one encoded record with its free-text fields trimmed (JSON leaves them out for
    /// any trim).
    pub fn encode_trimmed(
        &self,
        record: &EnrichedRecord,
        out: &mut Vec<u8>,
        trim: Trim,
    ) -> EncodeStats {
        match self {
            Encoder::Cef(encoder) => encoder.encode_trimmed(record, out, trim),
            Encoder::Leef(encoder) => encoder.encode_trimmed(record, out, trim),
            Encoder::Json(encoder) => {
                encoder.encode_trimmed(record, out, trim != Trim::None);
                EncodeStats::default()
            }
        }
    }
}

/// How far a record's free text is trimmed, in turn, until it fits a size limit.
const TRIMS: [Trim; 3] = [Trim::Cap(256), Trim::Cap(64), Trim::Omit];

/// How a record fit a size limit.
enum Fit {
    Whole(EncodeStats),
    Trimmed(EncodeStats),
    Oversize,
}

/// A batch encoded and framed for the wire.
#[derive(Debug, Default)]
struct Encoded {
    bytes: Vec<u8>,
    /// Where each message ends in `bytes` (one datagram each, on UDP).
    ends: Vec<usize>,
    /// Each message's key, back to back, and where each ends (Kafka).
    keys: Vec<u8>,
    key_ends: Vec<usize>,
    /// Values shortened to their key's limit.
    truncated_fields: u64,
    /// Records whose free text was trimmed to fit the size limit.
    shortened: u64,
    /// Records that did not fit even without free text; not sent.
    oversize: u64,
    /// Scratch space for one message.
    message: Vec<u8>,
}

impl Encoded {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.keys.clear();
        self.key_ends.clear();
        (self.truncated_fields, self.shortened, self.oversize) = (0, 0, 0);
    }

    /// Each message and its key (empty unless the sink keys its messages).
    fn messages(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let start = |ends: &[usize], i: usize| if i == 0 { 0 } else { ends[i - 1] };
        (0..self.ends.len()).map(move |i| {
            let key = match self.key_ends.get(i) {
                Some(&end) => &self.keys[start(&self.key_ends, i)..end],
                None => &[],
            };
            (&self.bytes[start(&self.ends, i)..self.ends[i]], key)
        })
    }
}

/// How encoded records are delimited on the wire.
#[derive(Debug)]
enum Framing {
    /// One record per line (stdout, files).
    Lines,
    /// Syslog messages of at most `max_message` bytes.
    Syslog {
        framer: SyslogFramer,
        max_message: usize,
    },
    /// Keyed messages of at most `max_message` bytes, without terminators (Kafka).
    Keyed { key: KafkaKey, max_message: usize },
}

/// Where a sink writes.
#[derive(Debug)]
enum Transport {
    Stdout(tokio::io::Stdout),
    File {
        path: PathBuf,
        file: Option<tokio::fs::File>,
    },
    Syslog(SyslogClient),
    Kafka(KafkaWriter),
}

/// Why a write failed; `kind` is the bounded metric label.
#[derive(Debug)]
struct WriteError {
    kind: &'static str,
    error: WriteFailure,
}

/// What went wrong in a write.
#[derive(Debug, thiserror::Error)]
enum WriteFailure {
    #[error("cannot write")]
    Io(#[source] std::io::Error),
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Syslog(#[from] syslog::SyslogError),
    #[error("the Kafka broker did not confirm every message")]
    Kafka(#[source] rdkafka::error::KafkaError),
}

/// A sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: cannot set up TLS to {target}")]
    Tls {
        sink: String,
        target: String,
        #[source]
        source: TlsError,
    },
    #[error("sink {sink}: cannot set up the Kafka producer")]
    Kafka {
        sink: String,
        #[source]
        source: Box<KafkaSetupError>,
    },
}

impl SinkError {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Tls { .. } => "tls",
            SinkError::Kafka { source, .. } => source.kind(),
        }
    }
}

impl WriteError {
    /// Retrying cannot help: standard output was closed (`| head`).
    fn is_permanent(&self) -> bool {
        self.kind == "output_closed"
    }
}

impl Transport {
    /// Writes and flushes an encoded batch.
    async fn write(&mut self, encoded: &Encoded) -> Result<(), WriteError> {
        let (bytes, ends) = (&encoded.bytes[..], &encoded.ends[..]);
        let io = |kind: &'static str| {
            move |error: std::io::Error| WriteError {
                kind,
                error: WriteFailure::Io(error),
            }
        };
        match self {
            Transport::Stdout(stdout) => {
                let closed = |error: std::io::Error| WriteError {
                    kind: if error.kind() == std::io::ErrorKind::BrokenPipe {
                        "output_closed"
                    } else {
                        "write"
                    },
                    error: WriteFailure::Io(error),
                };
                stdout.write_all(bytes).await.map_err(closed)?;
                stdout.flush().await.map_err(closed)
            }
            Transport::File { path, file } => {
                if file.is_none() {
                    let opened = tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .await
                        .map_err(|source| WriteError {
                            kind: "open",
                            error: WriteFailure::Open {
                                path: path.display().to_string(),
                                source,
                            },
                        })?;
                    *file = Some(opened);
                }
                let handle = file.as_mut().expect("opened above");
                let result = async {
                    handle.write_all(bytes).await?;
                    handle.flush().await
                }
                .await;
                if result.is_err() {
                    *file = None;
                }
                result.map_err(io("write"))
            }
            Transport::Syslog(client) => {
                client.write(bytes, ends).await.map_err(|error| WriteError {
                    kind: error.kind(),
                    error: error.into(),
                })
            }
            Transport::Kafka(writer) => {
                writer
                    .write(encoded.messages())
                    .await
                    .map_err(|error| WriteError {
                        kind: "kafka",
                        error: WriteFailure::Kafka(error),
                    })
            }
        }
    }

    async fn close(&mut self) {
        match self {
            Transport::Syslog(client) => client.close().await,
            Transport::Stdout(stdout) => {
                let _ = stdout.flush().await;
            }
            Transport::File { file, .. } => {
                if let Some(file) = file {
                    let _ = file.sync_data().await;
                }
            }
            Transport::Kafka(_) => {}
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkReasonLabels {
    sink: String,
    reason: String,
}

/// Metrics of every sink, labelled by sink name.
#[derive(Clone, Debug, Default)]
pub struct SinkMetrics {
    records: Family<SinkLabels, Counter>,
    bytes: Family<SinkLabels, Counter>,
    batches: Family<SinkLabels, Counter>,
    errors: Family<SinkReasonLabels, Counter>,
    dropped: Family<SinkReasonLabels, Counter>,
    truncated_fields: Family<SinkLabels, Counter>,
    shortened: Family<SinkLabels, Counter>,
    queued: Family<SinkLabels, Gauge>,
}

impl SinkMetrics {
    pub fn register(registry: &mut Registry) -> SinkMetrics {
        SinkMetrics {
            records: telemetry::family(registry, "records", "Records written and acknowledged", []),
            bytes: telemetry::family(registry, "bytes", "Bytes written, framing included", []),
            batches: telemetry::family(registry, "batches", "Batches written and acknowledged", []),
            errors: telemetry::family(registry, "errors", "Failed writes by error kind (each is retried)", []),
            dropped: telemetry::family(registry, "dropped_records", "Records given up on, by reason", []),
            truncated_fields: telemetry::family(registry, "truncated_fields", "Field values shortened to their key's maximum length", []),
            shortened: telemetry::family(registry, "shortened_records", "Records whose free-text fields were shortened or left out to fit max_message_bytes", []),
            queued: telemetry::family(registry, "queued_batches", "Batches waiting in the sink's queue (at pipeline.queue_batches it is full and slows the sources)", []),
        }
    }

    /// The queue-depth gauge of `sink`.
    pub fn queued_gauge(&self, sink: &str) -> Gauge {
        self.queued.get_or_create(&Self::labels(sink)).clone()
    }

    /// Creates the series of `sink` at zero, so that "nothing dropped" reads as 0 rather than
    /// as missing.
    pub fn init_sink(&self, sink: &str) {
        let labels = Self::labels(sink);
        for family in [
            &self.records,
            &self.bytes,
            &self.batches,
            &self.truncated_fields,
            &self.shortened,
        ] {
            drop(family.get_or_create(&labels));
        }
        for reason in ["shutdown_undelivered", "oversize", "destination_full"] {
            drop(self.dropped.get_or_create(&SinkReasonLabels {
                sink: sink.to_owned(),
                reason: reason.to_owned(),
            }));
        }
        // Every sink writes; other error kinds depend on the transport.
        drop(self.errors.get_or_create(&SinkReasonLabels {
            sink: sink.to_owned(),
            reason: "write".to_owned(),
        }));
    }

    fn labels(sink: &str) -> SinkLabels {
        SinkLabels {
            sink: sink.to_owned(),
        }
    }

    fn batch_sent(&self, sink: &str, records: usize, bytes: usize, truncated_fields: u64) {
        let labels = Self::labels(sink);
        self.records.get_or_create(&labels).inc_by(records as u64);
        self.bytes.get_or_create(&labels).inc_by(bytes as u64);
        self.batches.get_or_create(&labels).inc();
        if truncated_fields > 0 {
            self.truncated_fields
                .get_or_create(&labels)
                .inc_by(truncated_fields);
        }
    }

    fn shortened(&self, sink: &str, records: u64) {
        self.shortened
            .get_or_create(&Self::labels(sink))
            .inc_by(records);
    }

    /// The counter of records dropped from `sink` for `reason`, for stages outside the sink
    /// (the processor drops for `destination_full`).
    pub fn dropped_counter(&self, sink: &str, reason: &str) -> Counter {
        self.dropped
            .get_or_create(&SinkReasonLabels {
                sink: sink.to_owned(),
                reason: reason.to_owned(),
            })
            .clone()
    }

    fn write_failed(&self, sink: &str, kind: &str) {
        let labels = SinkReasonLabels {
            sink: sink.to_owned(),
            reason: kind.to_owned(),
        };
        self.errors.get_or_create(&labels).inc();
    }

    fn dropped(&self, sink: &str, reason: &str, records: usize) {
        let labels = SinkReasonLabels {
            sink: sink.to_owned(),
            reason: reason.to_owned(),
        };
        self.dropped.get_or_create(&labels).inc_by(records as u64);
    }
}

/// A configured sink, ready to run.
#[derive(Debug)]
pub struct Sink {
    name: String,
    encoder: Encoder,
    framing: Framing,
    transport: Transport,
}

impl Sink {
    /// Builds a sink; fails when its TLS material cannot be loaded or its Kafka producer
    /// cannot be configured.
    pub fn new(sink: &SinkConfig, context: &SinkContext) -> Result<Sink, SinkError> {
        let encoder = Encoder::new(sink.format, context);
        let (framing, transport) = match (sink.kind, &sink.file, &sink.syslog, &sink.kafka) {
            (SinkKind::File, Some(file), _, _) => (
                Framing::Lines,
                Transport::File {
                    path: file.path.clone(),
                    file: None,
                },
            ),
            (SinkKind::Kafka, _, _, Some(settings)) => {
                let writer = KafkaWriter::new(settings).map_err(|source| SinkError::Kafka {
                    sink: sink.name.clone(),
                    source: Box::new(source),
                })?;
                (
                    Framing::Keyed {
                        key: settings.key,
                        max_message: settings.max_message_bytes,
                    },
                    Transport::Kafka(writer),
                )
            }
            (SinkKind::Syslog, _, Some(syslog), _) => {
                let hostname = syslog.hostname.as_deref().unwrap_or(&context.hostname);
                let client = SyslogClient::new(syslog).map_err(|source| SinkError::Tls {
                    sink: sink.name.clone(),
                    target: syslog.target(),
                    source,
                })?;
                (
                    Framing::Syslog {
                        framer: SyslogFramer::new(syslog, hostname),
                        max_message: syslog.max_message_bytes(),
                    },
                    Transport::Syslog(client),
                )
            }
            _ => (Framing::Lines, Transport::Stdout(tokio::io::stdout())),
        };
        Ok(Sink {
            name: sink.name.clone(),
            encoder,
            framing,
            transport,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Encodes and frames `records` into `encoded`.
    fn encode_batch(&self, records: &[EnrichedRecord], encoded: &mut Encoded) {
        encoded.clear();
        let Encoded {
            bytes: out,
            ends,
            keys,
            key_ends,
            truncated_fields,
            shortened,
            oversize,
            message,
        } = encoded;
        let mut fitted = |record: &EnrichedRecord, message: &mut Vec<u8>, max_message: usize| {
            match self.encode_within(record, message, max_message) {
                Fit::Whole(stats) => *truncated_fields += u64::from(stats.truncated_fields),
                Fit::Trimmed(stats) => {
                    *truncated_fields += u64::from(stats.truncated_fields);
                    *shortened += 1;
                }
                Fit::Oversize => {
                    *oversize += 1;
                    return false;
                }
            }
            true
        };
        match &self.framing {
            Framing::Lines => {
                for record in records {
                    *truncated_fields +=
                        u64::from(self.encoder.encode(record, out).truncated_fields);
                    out.push(b'\n');
                    ends.push(out.len());
                }
            }
            Framing::Syslog {
                framer,
                max_message,
            } => {
                let time = Timestamps::now();
                for record in records {
                    message.clear();
                    framer.header(record, &time, message);
                    if fitted(record, message, *max_message) {
                        framer.frame(message, out);
                        ends.push(out.len());
                    }
                }
            }
            Framing::Keyed { key, max_message } => {
                for record in records {
                    message.clear();
                    if fitted(record, message, *max_message) {
                        out.extend_from_slice(message);
                        ends.push(out.len());
                        key.write(record, keys);
                        key_ends.push(keys.len());
                    }
                }
            }
        }
    }

    /// Appends `record` to `message` (which may already hold a header) within `max_message`
    /// bytes: its free text is shortened, then left out, if it must; never the header or
    /// the 5-tuple.
    fn encode_within(
        &self,
        record: &EnrichedRecord,
        message: &mut Vec<u8>,
        max_message: usize,
    ) -> Fit {
        let header_len = message.len();
        let stats = self.encoder.encode(record, message);
        if message.len() <= max_message {
            return Fit::Whole(stats);
        }
        for trim in TRIMS {
            message.truncate(header_len);
            let stats = self.encoder.encode_trimmed(record, message, trim);
            if message.len() <= max_message {
                return Fit::Trimmed(stats);
            }
        }
        Fit::Oversize
    }

    /// Delivers batches from `batches` until the queue closes. After `shutdown` is cancelled,
    /// a batch that cannot be written is retried for at most `drain_timeout`; with
    /// `batch_timeout`, no batch is retried for longer than that at any time.
    pub async fn run(
        mut self,
        mut batches: mpsc::Receiver<Batch>,
        metrics: SinkMetrics,
        shutdown: CancellationToken,
        drain_timeout: Duration,
        batch_timeout: Option<Duration>,
    ) -> SinkReport {
        let mut report = SinkReport::default();
        let give_up = async {
            shutdown.cancelled().await;
            tokio::time::sleep(drain_timeout).await;
        };
        tokio::pin!(give_up);
        let mut encoded = Encoded::default();
        let queued = metrics.queued_gauge(&self.name);
        while let Some(batch) = batches.recv().await {
            queued.set(batches.len() as i64);
            self.encode_batch(&batch.records, &mut encoded);
            if encoded.shortened > 0 {
                metrics.shortened(&self.name, encoded.shortened);
            }
            if encoded.oversize > 0 {
                metrics.dropped(&self.name, "oversize", encoded.oversize as usize);
                tracing::warn!(sink = %self.name, records = encoded.oversize, "records too large for the sink's max_message_bytes even without their free-text fields; dropped and counted");
            }
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            let first_try = tokio::time::Instant::now();
            let delivered = loop {
                if encoded.ends.is_empty() {
                    break Ok(());
                }
                match self.transport.write(&encoded).await {
                    Ok(()) => break Ok(()),
                    Err(failure) if failure.is_permanent() => {
                        metrics.write_failed(&self.name, failure.kind);
                        break Err(("output_closed", "the output was closed; the remaining records are not delivered and their positions are not saved"));
                    }
                    Err(failure) => {
                        metrics.write_failed(&self.name, failure.kind);
                        if batch_timeout.is_some_and(|limit| first_try.elapsed() >= limit) {
                            break Err((
                                "retry_timeout",
                                "gave up delivering after retrying a batch for the time allowed",
                            ));
                        }
                        let delay = backoff.next_delay();
                        tracing::warn!(sink = %self.name, error = %ErrorChain(&failure.error), retry_in_ms = delay.as_millis() as u64, "write failed; retrying the batch");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = &mut give_up => break Err(("shutdown_undelivered", "gave up delivering at shutdown; their positions were not saved, so they are read again on restart")),
                        }
                    }
                }
            };
            match delivered {
                Ok(()) => {
                    let sent = encoded.ends.len();
                    metrics.batch_sent(
                        &self.name,
                        sent,
                        encoded.bytes.len(),
                        encoded.truncated_fields,
                    );
                    report.records += sent as u64;
                    report.dropped += encoded.oversize;
                    batch.ack.ack();
                }
                Err((reason, message)) => {
                    report.undelivered += batch.records.len() as u64;
                    metrics.dropped(&self.name, reason, batch.records.len());
                    // Every later batch is undelivered too; count them without trying.
                    batches.close();
                    while let Some(batch) = batches.recv().await {
                        report.undelivered += batch.records.len() as u64;
                        metrics.dropped(&self.name, reason, batch.records.len());
                    }
                    tracing::error!(sink = %self.name, records = report.undelivered, "{message}");
                    break;
                }
            }
        }
        self.transport.close().await;
        report
    }
}

/// A run's sinks: each behind its own bounded queue, whose sending ends the processor holds.
pub struct Sinks {
    pub queues: Vec<SinkQueue>,
    tasks: Vec<tokio::task::JoinHandle<SinkReport>>,
}

/// How a run's sinks queue and drain.
#[derive(Clone, Copy, Debug)]
pub struct SinkSettings {
    pub queue_batches: usize,
    /// Once `drain` is cancelled, how long undelivered batches are retried.
    pub drain_timeout: Duration,
}

impl Sinks {
    /// Starts every sink. The drain window opens when `drain` is cancelled (a stop signal,
    /// or the sources having ended).
    pub fn start(
        sinks: &[SinkConfig],
        context: &SinkContext,
        settings: SinkSettings,
        metrics: &SinkMetrics,
        drain: &CancellationToken,
    ) -> Result<Sinks, SinkError> {
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for config in sinks {
            metrics.init_sink(&config.name);
            let sink = Sink::new(config, context)?;
            let (sender, receiver) = mpsc::channel::<Batch>(settings.queue_batches);
            queues.push(SinkQueue::new(
                sender,
                config.drops_when_full(sinks.len()),
                metrics.dropped_counter(&config.name, "destination_full"),
                metrics.queued_gauge(&config.name),
                &config.name,
                tokio::runtime::Handle::current(),
            ));
            tasks.push(tokio::spawn(sink.run(
                receiver,
                metrics.clone(),
                drain.clone(),
                settings.drain_timeout,
                None,
            )));
        }
        Ok(Sinks { queues, tasks })
    }

    /// Takes the queues for the processor; the sinks end when it drops them.
    pub fn take_queues(&mut self) -> Vec<SinkQueue> {
        std::mem::take(&mut self.queues)
    }

    /// Waits until every sink has delivered or given up; returns the records given up on.
    pub async fn join(self) -> u64 {
        let mut undelivered = 0;
        for task in self.tasks {
            match task.await {
                Ok(report) => undelivered += report.undelivered,
                Err(error) => tracing::error!(%error, "a sink task failed"),
            }
        }
        undelivered
    }
}

/// What a sink did over its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Records written and acknowledged.
    pub records: u64,
    /// Records given up on (shutdown, a closed output); their positions were not saved.
    pub undelivered: u64,
    /// Records dropped deliberately and counted (too large for the destination).
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{EndpointIndex, Enricher};
    use crate::flow::calico;

    fn record(namespace: &str, labels: &[String]) -> EnrichedRecord {
        let line = serde_json::json!({
            "start_time": 1, "end_time": 2, "proto": "tcp", "action": "deny", "reporter": "src",
            "source_ip": "10.0.0.1", "source_port": 4321, "dest_ip": "10.0.0.2", "dest_port": 443,
            "source_namespace": namespace, "source_labels": {"labels": labels},
        });
        Enricher::default().enrich(
            calico::parse_str(&line.to_string()).unwrap(),
            &EndpointIndex::default(),
        )
    }

    #[test]
    fn oversize_records_lose_free_text_first_and_are_dropped_only_if_still_too_large() {
        let config = crate::config::Config::from_yaml(
            "{sources: [], sinks: [{name: siem, type: syslog, syslog: {host: 127.0.0.1, port: 514, transport: udp}}]}",
        )
        .unwrap();
        for format in [OutputFormat::Cef, OutputFormat::Leef, OutputFormat::Json] {
            let sink_config = SinkConfig {
                format,
                ..config.sinks[0].clone()
            };
            let sink = Sink::new(&sink_config, &SinkContext::default()).unwrap();
            let labels: Vec<String> = (0..40)
                .map(|i| format!("key{i}={}", "v".repeat(60)))
                .collect();
            let records = [
                record("shop", &[]),
                record("shop", &labels),
                record(&"n".repeat(3_000), &[]),
            ];
            let mut encoded = Encoded::default();
            sink.encode_batch(&records, &mut encoded);
            assert_eq!((encoded.shortened, encoded.oversize), (1, 1), "{format:?}");
            assert_eq!(encoded.ends.len(), 2, "one datagram per record sent");
            let second =
                std::str::from_utf8(&encoded.bytes[encoded.ends[0]..encoded.ends[1]]).unwrap();
            assert!(second.len() <= 1_400, "{format:?}: {} bytes", second.len());
            assert!(second.starts_with("<133>1 "), "the header is kept");
            for kept in ["10.0.0.1", "4321", "10.0.0.2", "443"] {
                assert!(
                    second.contains(kept),
                    "{format:?}: the 5-tuple is kept: {second}"
                );
            }
        }
    }
}
