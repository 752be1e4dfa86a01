//! The Kafka source: flow records from topics, consumed in a group, at least once.
//!
//! One thread per source runs a librdkafka consumer. Messages become lines (a message may hold
//! several), collected into one batch per partition; each batch carries an acknowledgement
//! whose action marks its last offset as delivered. Offsets are stored in librdkafka only
//! from delivered batches, in order, and committed periodically (librdkafka's auto-commit of
//! stored offsets), on rebalance and on shutdown. So a committed offset never passes a
//! record that some sink did not write or deliberately drop; a rejected line is counted and
//! dead-lettered by the processor like any other, and its batch is acknowledged, so a poison
//! message never holds its partition back.
//!
//! Flow control: while `max_in_flight_records` are read but not yet finished, or the
//! pipeline's queue is full, the source stops reading (librdkafka's prefetch is bounded); held
//! back for more than a few seconds (a destination down), it pauses the assignment and keeps
//! polling, so it stays in the group and serves rebalances. On a revoke, the records of the revoked partitions
//! that are in the pipeline get `revoke_timeout_ms` to finish; those that do not are
//! abandoned (never committed by this replica; the partition's next owner reads them again).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::config::StartAt;
use super::lines::{LineBatch, LineSplitter};
use super::source::{
    SourceBatch, SourceContext, SourceError, SourceLabels, SourceMetrics, BATCH_MAX_BYTES,
    IDLE_FLUSH,
};
use super::FlowFormat;
use crate::ack::AckToken;
use crate::kafka::{with_connection, KafkaSetupError};
use crate::problems::Problems;
use crate::telemetry;

with_connection! {
    /// Consuming flow records from Kafka topics in a consumer group.
    #[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct KafkaSourceConfig {
        /// The topics to read, each with the format of its records.
        pub topics: Vec<KafkaTopic>,
        /// The consumer group. Replicas in one group split the topics' partitions between
        /// them.
        #[serde(default = "default_group_id")]
        pub group_id: String,
        /// Where a partition without a committed offset starts: at the `beginning` (nothing
        /// is skipped) or the `end`.
        #[serde(default)]
        pub start_at: StartAt,
        /// Most records read but not yet delivered (or dropped and counted); reading pauses
        /// there. Bounds memory and what a crash re-reads.
        #[serde(default = "default_max_in_flight_records")]
        pub max_in_flight_records: usize,
        /// Least time between two commits of delivered offsets. 0 commits as soon as a batch
        /// is delivered, so a crash re-reads at most about one batch per partition; raise it
        /// to lower the commit load of a large group, at the cost of re-reading up to that
        /// long after a crash. Offsets are also committed on a rebalance and at shutdown.
        #[serde(default)]
        pub commit_interval_ms: u64,
        /// When partitions are taken away in a rebalance, how long their records already in
        /// the pipeline may take to be delivered and committed; the rest are abandoned
        /// uncommitted, for the partition's next owner to read again.
        #[serde(default = "default_revoke_timeout_ms")]
        pub revoke_timeout_ms: u64,
    }
}

/// One topic and the format of its records.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaTopic {
    pub name: String,
    /// The records' format; the source's `format` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FlowFormat>,
}

fn default_group_id() -> String {
    "threatflow".into()
}
fn default_max_in_flight_records() -> usize {
    100_000
}
fn default_revoke_timeout_ms() -> u64 {
    10_000
}

impl KafkaSourceConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        self.connection().validate(path, problems);
        if self.topics.is_empty() {
            problems.push(format!("{path}.topics"), "needs at least one topic");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, topic) in self.topics.iter().enumerate() {
            if !is_topic_name(&topic.name) {
                problems.push(
                    format!("{path}.topics[{i}].name"),
                    format!(
                        "`{}` is not a Kafka topic name (1 to 249 letters, digits, `.`, `_`, `-`)",
                        topic.name
                    ),
                );
            } else if !seen.insert(&topic.name) {
                problems.push(
                    format!("{path}.topics[{i}].name"),
                    format!("`{}` is listed twice", topic.name),
                );
            }
        }
        if self.group_id.is_empty() {
            problems.push(format!("{path}.group_id"), "must not be empty");
        }
        if !(1_000..=10_000_000).contains(&self.max_in_flight_records) {
            problems.push(
                format!("{path}.max_in_flight_records"),
                "must be between 1000 and 10000000",
            );
        }
        if self.commit_interval_ms > 600_000 {
            problems.push(
                format!("{path}.commit_interval_ms"),
                "must be at most 600000",
            );
        }
        if !(100..=600_000).contains(&self.revoke_timeout_ms) {
            problems.push(
                format!("{path}.revoke_timeout_ms"),
                "must be between 100 and 600000",
            );
        }
    }
}

/// Metrics of the Kafka sources (`threatflow_source_kafka_*`), per source.
#[derive(Clone, Debug, Default)]
pub struct KafkaMetrics {
    in_flight: Family<SourceLabels, Gauge>,
    lag: Family<SourceLabels, Gauge>,
    assigned: Family<SourceLabels, Gauge>,
    rebalances: Family<SourceLabels, Counter>,
    abandoned: Family<SourceLabels, Counter>,
    errors: Family<SourceLabels, Counter>,
}

impl KafkaMetrics {
    pub fn register(registry: &mut Registry) -> KafkaMetrics {
        KafkaMetrics {
            in_flight: telemetry::family(registry, "in_flight_records", "Records read and not yet delivered or dropped", []),
            lag: telemetry::family(registry, "lag_records", "Records in the assigned partitions not yet read (from the client's statistics, every 5 s)", []),
            assigned: telemetry::family(registry, "assigned_partitions", "Partitions assigned to this replica", []),
            rebalances: telemetry::family(registry, "rebalances", "Partition assignments received", []),
            abandoned: telemetry::family(registry, "abandoned_batches", "Batches of revoked partitions not delivered within revoke_timeout_ms (not committed; re-read by the next owner)", []),
            errors: telemetry::family(registry, "errors", "Consumer errors (broker unreachable, unknown topic, ...); the client retries", []),
        }
    }

    /// The series of one source, created at zero.
    fn source(&self, source: &str) -> SourceKafkaMetrics {
        let labels = SourceMetrics::labels(source);
        SourceKafkaMetrics {
            in_flight: self.in_flight.get_or_create(&labels).clone(),
            lag: self.lag.get_or_create(&labels).clone(),
            assigned: self.assigned.get_or_create(&labels).clone(),
            rebalances: self.rebalances.get_or_create(&labels).clone(),
            abandoned: self.abandoned.get_or_create(&labels).clone(),
            errors: self.errors.get_or_create(&labels).clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct SourceKafkaMetrics {
    in_flight: Gauge,
    lag: Gauge,
    assigned: Gauge,
    rebalances: Counter,
    abandoned: Counter,
    errors: Counter,
}

/// Whether Kafka accepts `name` as a topic name.
pub fn is_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

type PartitionKey = (Arc<str>, i32);

/// What the source knows of one assigned partition.
#[derive(Debug)]
struct PartitionState {
    /// Which assignment of the partition this is; batches of an earlier one are ignored.
    epoch: u64,
    /// Batches handed to the pipeline and not yet finished.
    in_flight_batches: usize,
    /// The offset after the last delivered record.
    delivered: Option<i64>,
    /// The last offset stored in librdkafka.
    stored: Option<i64>,
    /// A batch was not delivered: nothing later is stored, so a restart reads it again.
    failed: bool,
}

#[derive(Debug, Default)]
struct TrackerState {
    partitions: HashMap<PartitionKey, PartitionState>,
    next_epoch: u64,
    in_flight_records: usize,
    /// The assignment changed since the reading loop last looked (for flow control, and
    /// for `once`).
    assignment_changed: bool,
    assignment_seen: bool,
}

/// Offsets of delivered records, and the records still in the pipeline, per partition.
#[derive(Debug, Default)]
struct Tracker {
    state: Mutex<TrackerState>,
    finished: Condvar,
}

impl Tracker {
    fn lock(&self) -> parking_lot::MutexGuard<'_, TrackerState> {
        self.state.lock()
    }

    fn assign(&self, keys: &[PartitionKey]) {
        let mut state = self.lock();
        for key in keys {
            state.next_epoch += 1;
            let epoch = state.next_epoch;
            state.partitions.insert(
                key.clone(),
                PartitionState {
                    epoch,
                    in_flight_batches: 0,
                    delivered: None,
                    stored: None,
                    failed: false,
                },
            );
        }
        state.assignment_changed = true;
        state.assignment_seen = true;
    }

    fn epoch(&self, key: &PartitionKey) -> Option<u64> {
        self.lock()
            .partitions
            .get(key)
            .map(|partition| partition.epoch)
    }

    /// Counts a batch into the pipeline; `None` if its partition is no longer assigned in
    /// that epoch.
    fn start(
        self: &Arc<Self>,
        key: &PartitionKey,
        epoch: u64,
        next_offset: i64,
        records: usize,
    ) -> Option<InFlight> {
        let mut state = self.lock();
        let partition = state
            .partitions
            .get_mut(key)
            .filter(|partition| partition.epoch == epoch)?;
        partition.in_flight_batches += 1;
        state.in_flight_records += records;
        Some(InFlight {
            tracker: self.clone(),
            key: key.clone(),
            epoch,
            next_offset,
            records,
            delivered: false,
        })
    }

    fn finish(&self, batch: &InFlight) {
        let mut state = self.lock();
        state.in_flight_records -= batch.records;
        if let Some(partition) = state
            .partitions
            .get_mut(&batch.key)
            .filter(|partition| partition.epoch == batch.epoch)
        {
            partition.in_flight_batches -= 1;
            if !batch.delivered {
                partition.failed = true;
            } else if !partition.failed {
                partition.delivered = partition.delivered.max(Some(batch.next_offset));
            }
        }
        drop(state);
        self.finished.notify_all();
    }

    fn in_flight_records(&self) -> usize {
        self.lock().in_flight_records
    }

    /// Delivered offsets not yet stored, marked as stored.
    fn take_unstored(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), state) in self.lock().partitions.iter_mut() {
            if let Some(offset) = state
                .delivered
                .filter(|&offset| state.stored < Some(offset))
            {
                state.stored = Some(offset);
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(offset));
            }
        }
        list
    }

    /// Delivered offsets of `keys` (or of every partition), for an explicit commit.
    fn delivered(&self, keys: Option<&[PartitionKey]>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (key, state) in &self.lock().partitions {
            if keys.is_some_and(|keys| !keys.contains(key)) {
                continue;
            }
            if let Some(offset) = state.delivered {
                let _ = list.add_partition_offset(&key.0, key.1, Offset::Offset(offset));
            }
        }
        list
    }

    /// Waits until no batch of `keys` is in the pipeline, at most `timeout`; returns the
    /// batches still in it.
    fn wait_finished(&self, keys: &[PartitionKey], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let waiting: usize = keys
                .iter()
                .filter_map(|key| state.partitions.get(key))
                .map(|partition| partition.in_flight_batches)
                .sum();
            let now = Instant::now();
            if waiting == 0 || now >= deadline {
                return waiting;
            }
            self.finished.wait_for(&mut state, deadline - now);
        }
    }

    /// Forgets `keys`: batches of theirs still in the pipeline are abandoned.
    fn revoke(&self, keys: &[PartitionKey]) {
        let mut state = self.lock();
        for key in keys {
            state.partitions.remove(key);
        }
        state.assignment_changed = true;
    }

    fn take_assignment_changed(&self) -> bool {
        std::mem::take(&mut self.lock().assignment_changed)
    }

    fn take_assignment_seen(&self) -> bool {
        std::mem::take(&mut self.lock().assignment_seen)
    }
}

/// A batch in the pipeline; finishing (on drop) counts it out, as delivered if its
/// acknowledgement ran.
struct InFlight {
    tracker: Arc<Tracker>,
    key: PartitionKey,
    epoch: u64,
    next_offset: i64,
    records: usize,
    delivered: bool,
}

impl InFlight {
    /// Every holder acknowledged the batch: count it out as delivered.
    fn delivered(mut self) {
        self.delivered = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.tracker.finish(self);
    }
}

/// Rebalance handling, run by librdkafka inside `poll` on the source's thread.
struct GroupContext {
    source: Arc<str>,
    tracker: Arc<Tracker>,
    revoke_timeout: Duration,
    metrics: SourceKafkaMetrics,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.errors.inc();
        tracing::warn!(source = %self.source, %error, reason, "Kafka client error");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|partition| partition.partition >= 0 && partition.consumer_lag > 0)
            .map(|partition| partition.consumer_lag)
            .sum();
        self.metrics.lag.set(lag);
    }
}

fn keys(list: &TopicPartitionList) -> Vec<PartitionKey> {
    list.elements()
        .iter()
        .map(|element| (Arc::from(element.topic()), element.partition()))
        .collect()
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let keys = keys(list);
        let abandoned = self.tracker.wait_finished(&keys, self.revoke_timeout);
        let offsets = self.tracker.delivered(Some(&keys));
        if offsets.count() > 0 {
            if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(source = %self.source, %error, "cannot commit the offsets of revoked partitions; their next owner re-reads from the last commit");
            }
        }
        self.tracker.revoke(&keys);
        self.metrics.assigned.set(0);
        if abandoned > 0 {
            self.metrics.abandoned.inc_by(abandoned as u64);
            tracing::warn!(source = %self.source, batches = abandoned, timeout = ?self.revoke_timeout, "batches of revoked partitions were not delivered in time; abandoned uncommitted (their next owner reads them again)");
        }
        tracing::info!(source = %self.source, partitions = keys.len(), "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                self.tracker.assign(&keys(list));
                self.metrics.rebalances.inc();
                self.metrics.assigned.set(list.count() as i64);
                tracing::info!(source = %self.source, partitions = list.count(), "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(source = %self.source, %error, "rebalance failed");
            }
        }
    }
}

/// How long the reading loop waits for a message, or for a delivery while held back.
const IDLE_WAIT: Duration = Duration::from_millis(10);

/// Reading held back this long (a destination down, not just slower) pauses the assignment.
const PAUSE_AFTER: Duration = Duration::from_secs(5);

/// With `run --once`, the source ends once its partitions have been quiet this long.
const ONCE_QUIET: Duration = Duration::from_secs(1);

/// With `run --once`, how long an assignment may stay without any message before its
/// partitions count as empty: the first fetch after an assignment (offsets looked up, a busy
/// broker) can take longer than [`ONCE_QUIET`].
const ONCE_FIRST_MESSAGE: Duration = Duration::from_secs(5);

/// With `run --once`, the source fails if it has no partition after this long.
const ONCE_ASSIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines read from one partition, not yet handed on.
struct Pending {
    key: PartitionKey,
    epoch: u64,
    format: FlowFormat,
    lines: LineBatch,
    bytes: u64,
    next_offset: i64,
    started: Instant,
}

/// Settings of one run of the source besides its config.
#[derive(Clone, Copy, Debug)]
pub struct KafkaRun {
    /// Stop once the assigned partitions have been quiet for a second (after a first message).
    pub once: bool,
    /// At shutdown, how long to wait for records in the pipeline before committing.
    pub drain_timeout: Duration,
}

/// Reads until shutdown (or, with `once`, until the assigned partitions go quiet), then
/// waits for the records in the pipeline and commits what was delivered. Blocking: run it on
/// its own thread.
pub fn run(
    settings: KafkaSourceConfig,
    run: KafkaRun,
    context: SourceContext,
) -> Result<(), SourceError> {
    let tracker = Arc::new(Tracker::default());
    let mut config = settings.connection().client_config()?;
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match settings.start_at {
                StartAt::Beginning => "earliest",
                StartAt::End => "latest",
            },
        );
    if !settings.properties.contains_key("statistics.interval.ms") {
        config.set("statistics.interval.ms", "5000");
    }
    let metrics = context.metrics.kafka.source(&context.name);
    let group = GroupContext {
        source: context.name.clone(),
        tracker: tracker.clone(),
        revoke_timeout: Duration::from_millis(settings.revoke_timeout_ms),
        metrics: metrics.clone(),
    };
    let consumer: BaseConsumer<GroupContext> =
        config
            .create_with_context(group)
            .map_err(|source| KafkaSetupError::Create {
                what: "consumer",
                source,
            })?;
    let topics: Vec<&str> = settings
        .topics
        .iter()
        .map(|topic| topic.name.as_str())
        .collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| KafkaSetupError::Subscribe {
            topics: topics.join(", "),
            source,
        })?;
    let formats: HashMap<&str, FlowFormat> = settings
        .topics
        .iter()
        .map(|topic| (topic.name.as_str(), topic.format.unwrap_or(context.format)))
        .collect();
    tracing::info!(source = %context.name, brokers = %settings.brokers.join(","), group = %settings.group_id, ?topics, "consuming");

    let mut reader = Reader {
        metrics,
        consumer: &consumer,
        tracker: &tracker,
        output: context.output.clone(),
        settings: &settings,
        context: &context,
        formats,
        splitter: LineSplitter::new(context.max_line_bytes),
        pending: HashMap::new(),
        ready: VecDeque::new(),
        paused: false,
        held_since: None,
        last_commit: None,
        uncommitted: false,
        last_message: Instant::now(),
        received_since_assignment: false,
        started: Instant::now(),
        last_error_log: None,
    };
    let result = reader.read(run.once);
    drop(reader);
    drop(context);

    // Whatever was handed on gets the drain window to finish, then what was delivered is
    // committed.
    let waiting = tracker.in_flight_records();
    if waiting > 0 {
        tracing::info!(
            records = waiting,
            "waiting for records in the pipeline before committing"
        );
    }
    let deadline = Instant::now() + run.drain_timeout + Duration::from_secs(5);
    while tracker.in_flight_records() > 0 && Instant::now() < deadline {
        let mut state = tracker.lock();
        tracker
            .finished
            .wait_for(&mut state, Duration::from_millis(100));
    }
    let delivered = tracker.delivered(None);
    if delivered.count() > 0 {
        if let Err(error) = consumer.commit(&delivered, CommitMode::Sync) {
            tracing::warn!(%error, "cannot commit the delivered offsets at shutdown; a restart re-reads from the last commit");
        }
    }
    // Dropping the consumer leaves the group (a last revoke, with nothing left to wait for).
    drop(consumer);
    result
}

/// The reading loop's state.
struct Reader<'a> {
    metrics: SourceKafkaMetrics,
    consumer: &'a BaseConsumer<GroupContext>,
    tracker: &'a Arc<Tracker>,
    output: mpsc::Sender<SourceBatch>,
    settings: &'a KafkaSourceConfig,
    context: &'a SourceContext,
    formats: HashMap<&'a str, FlowFormat>,
    splitter: LineSplitter,
    pending: HashMap<PartitionKey, Pending>,
    /// Batches complete and waiting for room in the pipeline's queue.
    ready: VecDeque<Pending>,
    paused: bool,
    /// Since when reading has been held back.
    held_since: Option<Instant>,
    last_commit: Option<Instant>,
    /// Offsets were stored since the last commit.
    uncommitted: bool,
    /// When the last message (or assignment) arrived.
    last_message: Instant,
    /// A message arrived since the last assignment.
    received_since_assignment: bool,
    started: Instant,
    last_error_log: Option<Instant>,
}

impl Reader<'_> {
    fn read(&mut self, once: bool) -> Result<(), SourceError> {
        loop {
            if self.context.shutdown.is_cancelled() {
                return Ok(());
            }
            if !self.hand_on() {
                return Ok(());
            }
            self.commit_delivered();
            if self.hold() {
                continue;
            }
            if self.receive(Duration::ZERO) {
                continue;
            }
            // Nothing to read at once: hand on what there is, then wait for more (briefly
            // while deliveries are pending, so their offsets are committed promptly).
            self.flush_all();
            if !self.hand_on() {
                return Ok(());
            }
            let wait = match self.tracker.in_flight_records() {
                0 => IDLE_WAIT,
                _ => Duration::from_millis(1),
            };
            if self.receive(wait) {
                continue;
            }
            if once && self.caught_up()? {
                self.flush_all();
                while !self.ready.is_empty() {
                    if !self.hand_on() {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Ok(());
            }
        }
    }

    /// Polls for one message; returns whether one came.
    fn receive(&mut self, timeout: Duration) -> bool {
        let received = match self.consumer.poll(timeout) {
            Some(Ok(message)) => {
                self.add(&message);
                self.last_message = Instant::now();
                self.received_since_assignment = true;
                true
            }
            Some(Err(error)) => {
                self.consumer_error(&error);
                false
            }
            None => false,
        };
        self.flush_old();
        received
    }

    /// Back-pressure: while too much is in flight or the pipeline is full, stops reading
    /// (librdkafka's own prefetch stays bounded) and returns true after waiting a little for
    /// deliveries. A hold longer than [`PAUSE_AFTER`] (a destination down) pauses the
    /// assignment and polls, so the consumer keeps its place in the group and serves
    /// rebalances; the assignment resumes once there is room.
    fn hold(&mut self) -> bool {
        let in_flight = self.tracker.in_flight_records();
        self.metrics.in_flight.set(in_flight as i64);
        let hold = !self.ready.is_empty() || in_flight >= self.settings.max_in_flight_records;
        if !hold {
            self.held_since = None;
            if self.paused {
                self.set_paused(false);
            }
            return false;
        }
        let held_since = *self.held_since.get_or_insert_with(Instant::now);
        if held_since.elapsed() < PAUSE_AFTER {
            let mut state = self.tracker.lock();
            self.tracker.finished.wait_for(&mut state, IDLE_WAIT);
            return true;
        }
        // A new assignment starts unpaused.
        if !self.paused || self.tracker.take_assignment_changed() {
            self.set_paused(true);
        }
        self.receive(IDLE_WAIT);
        true
    }

    fn set_paused(&mut self, paused: bool) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = match paused {
            true => self.consumer.pause(&assignment),
            false => self.consumer.resume(&assignment),
        };
        match result {
            Ok(()) => {
                tracing::debug!(paused, "flow control");
                self.paused = paused;
            }
            Err(error) => tracing::debug!(%error, "cannot pause or resume the assignment"),
        }
    }

    /// Sends the ready batches the pipeline has room for. Returns false when the pipeline
    /// is gone.
    fn hand_on(&mut self) -> bool {
        while let Some(pending) = self.ready.pop_front() {
            // Batches of partitions revoked while they waited are dropped unsent.
            if self.tracker.epoch(&pending.key) != Some(pending.epoch) {
                continue;
            }
            let permit = match self.output.try_reserve() {
                Ok(permit) => permit,
                Err(mpsc::error::TrySendError::Full(())) => {
                    self.ready.push_front(pending);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(())) => return false,
            };
            let Some(in_flight) = self.tracker.start(
                &pending.key,
                pending.epoch,
                pending.next_offset,
                pending.lines.len(),
            ) else {
                continue;
            };
            self.context
                .metrics
                .batch_read(&self.context.name, pending.lines.len(), pending.bytes);
            let ack = AckToken::new(move || in_flight.delivered());
            permit.send(SourceBatch {
                source: self.context.name.clone(),
                format: pending.format,
                lines: pending.lines,
                ack,
            });
        }
        true
    }

    /// Stores newly delivered offsets and commits them, unless the last commit was less
    /// than `commit_interval_ms` ago.
    fn commit_delivered(&mut self) {
        let list = self.tracker.take_unstored();
        if list.count() > 0 {
            self.uncommitted = true;
            if let Err(error) = self.consumer.store_offsets(&list) {
                tracing::debug!(%error, "cannot store offsets (the partition was revoked meanwhile)");
            }
        }
        let interval = Duration::from_millis(self.settings.commit_interval_ms);
        if !self.uncommitted
            || self
                .last_commit
                .is_some_and(|last| last.elapsed() < interval)
        {
            return;
        }
        match self.consumer.commit_consumer_state(CommitMode::Async) {
            Ok(()) => {
                self.uncommitted = false;
                self.last_commit = Some(Instant::now());
            }
            Err(error) => tracing::debug!(%error, "cannot commit offsets; trying again"),
        }
    }

    fn add(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) {
        let key: PartitionKey = (Arc::from(message.topic()), message.partition());
        let Some(epoch) = self.tracker.epoch(&key) else {
            return;
        };
        // Lines read under an earlier assignment of this partition are not handed on (the
        // new assignment reads them again from the committed offset).
        if self
            .pending
            .get(&key)
            .is_some_and(|pending| pending.epoch != epoch)
        {
            self.pending.remove(&key);
        }
        let pending = self.pending.entry(key.clone()).or_insert_with(|| Pending {
            key,
            epoch,
            format: self
                .formats
                .get(message.topic())
                .copied()
                .unwrap_or(self.context.format),
            lines: LineBatch::default(),
            bytes: 0,
            next_offset: 0,
            started: Instant::now(),
        });
        pending.next_offset = message.offset() + 1;
        // A message without a value (a tombstone) holds no record; its offset still counts.
        if let Some(payload) = message.payload() {
            pending.bytes += payload.len() as u64;
            self.splitter.reset();
            self.splitter.push(payload, &mut pending.lines);
            self.splitter.finish(&mut pending.lines);
        }
        if pending.lines.len() >= self.context.batch_max_records
            || pending.lines.bytes() >= BATCH_MAX_BYTES
        {
            let key = pending.key.clone();
            self.flush(&key);
        }
    }

    fn flush(&mut self, key: &PartitionKey) {
        if let Some(pending) = self.pending.remove(key) {
            self.ready.push_back(pending);
        }
    }

    fn flush_all(&mut self) {
        let mut batches: Vec<Pending> = self.pending.drain().map(|(_, pending)| pending).collect();
        batches.sort_by_key(|pending| pending.started);
        self.ready.extend(batches);
    }

    fn flush_old(&mut self) {
        let old: Vec<PartitionKey> = self
            .pending
            .values()
            .filter(|pending| pending.started.elapsed() >= IDLE_FLUSH)
            .map(|pending| pending.key.clone())
            .collect();
        for key in old {
            self.flush(&key);
        }
    }

    fn consumer_error(&mut self, error: &KafkaError) {
        self.metrics.errors.inc();
        let now = Instant::now();
        if self
            .last_error_log
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(10))
        {
            self.last_error_log = Some(now);
            tracing::warn!(source = %self.context.name, %error, "Kafka consumer error");
        }
    }

    /// With `once`: whether the assigned partitions have been quiet for [`ONCE_QUIET`] (or,
    /// with no message since the assignment, [`ONCE_FIRST_MESSAGE`]) and
    /// everything read has been handed on. (Brokers differ in how exactly they report a
    /// partition's end, so the end is where the topics go quiet.)
    fn caught_up(&mut self) -> Result<bool, SourceError> {
        let assigned = !self.tracker.lock().partitions.is_empty();
        if self.tracker.take_assignment_seen() {
            self.last_message = Instant::now();
            self.received_since_assignment = false;
        }
        let quiet = match self.received_since_assignment {
            true => ONCE_QUIET,
            false => ONCE_FIRST_MESSAGE,
        };
        if !assigned && self.started.elapsed() >= ONCE_ASSIGN_TIMEOUT {
            return Err(SourceError::NoAssignment {
                secs: ONCE_ASSIGN_TIMEOUT.as_secs(),
            });
        }
        Ok(assigned
            && self.pending.is_empty()
            && self.ready.is_empty()
            && self.last_message.elapsed() >= quiet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32) -> PartitionKey {
        (Arc::from("flows"), partition)
    }

    fn offsets(list: &TopicPartitionList) -> Vec<(i32, i64)> {
        list.elements()
            .iter()
            .map(|element| (element.partition(), element.offset().to_raw().unwrap()))
            .collect()
    }

    #[test]
    fn only_delivered_batches_advance_the_offset_and_a_failure_stops_it() {
        let tracker = Arc::new(Tracker::default());
        tracker.assign(&[key(0)]);
        let epoch = tracker.epoch(&key(0)).unwrap();
        let first = tracker.start(&key(0), epoch, 10, 10).unwrap();
        let second = tracker.start(&key(0), epoch, 20, 10).unwrap();
        let third = tracker.start(&key(0), epoch, 30, 10).unwrap();
        assert_eq!(tracker.in_flight_records(), 30);
        assert!(
            offsets(&tracker.take_unstored()).is_empty(),
            "nothing delivered yet"
        );

        first.delivered();
        assert_eq!(offsets(&tracker.take_unstored()), [(0, 10)]);
        assert!(offsets(&tracker.take_unstored()).is_empty(), "stored once");
        drop(second); // a sink gave up on it
        third.delivered();
        assert!(
            offsets(&tracker.take_unstored()).is_empty(),
            "nothing after an undelivered batch is stored"
        );
        assert_eq!(offsets(&tracker.delivered(None)), [(0, 10)]);
        assert_eq!(tracker.in_flight_records(), 0);
    }

    #[test]
    fn batches_of_a_revoked_partition_are_abandoned() {
        let tracker = Arc::new(Tracker::default());
        tracker.assign(&[key(0), key(1)]);
        let (epoch0, epoch1) = (
            tracker.epoch(&key(0)).unwrap(),
            tracker.epoch(&key(1)).unwrap(),
        );
        let slow = tracker.start(&key(0), epoch0, 5, 5).unwrap();
        let other = tracker.start(&key(1), epoch1, 7, 7).unwrap();
        assert_eq!(
            tracker.wait_finished(&[key(0)], Duration::from_millis(20)),
            1,
            "still in the pipeline after the timeout"
        );
        tracker.revoke(&[key(0)]);
        // Assigned again (to this replica, or another): the old batch must not count.
        tracker.assign(&[key(0)]);
        slow.delivered();
        other.delivered();
        assert_eq!(offsets(&tracker.delivered(None)), [(1, 7)]);
        assert!(tracker.start(&key(0), epoch0, 9, 1).is_none(), "old epoch");
    }

    #[test]
    fn waiting_for_a_revoke_ends_when_the_batches_finish() {
        let tracker = Arc::new(Tracker::default());
        tracker.assign(&[key(0)]);
        let epoch = tracker.epoch(&key(0)).unwrap();
        let batch = tracker.start(&key(0), epoch, 3, 3).unwrap();
        let finisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            batch.delivered();
        });
        let started = Instant::now();
        assert_eq!(tracker.wait_finished(&[key(0)], Duration::from_secs(10)), 0);
        assert!(started.elapsed() < Duration::from_secs(5));
        finisher.join().unwrap();
        assert_eq!(offsets(&tracker.delivered(Some(&[key(0)]))), [(0, 3)]);
    }
}
