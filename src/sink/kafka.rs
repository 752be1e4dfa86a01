//! The Kafka sink: one message per enriched record, keyed so that related records stay in one
//! partition, in order.
//!
//! The producer is idempotent and waits for every in-sync replica (`acks=all`): a batch is
//! acknowledged only when the broker has confirmed every one of its messages. A failed
//! message fails its batch, which the sink sends again (at least once; messages of the batch
//! that had arrived are duplicated).

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::enrich::{EnrichedRecord, Side};
use crate::kafka::with_connection;
use crate::problems::Problems;

with_connection! {
    /// Producing enriched records to a Kafka topic.
    #[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct KafkaSinkConfig {
        /// The topic records are written to.
        pub topic: String,
        /// Each message's key: `flow` (source IP, destination IP, destination port and
        /// protocol: one conversation's records stay in one partition, in order), `source`
        /// (the source workload, else its IP: one workload's records stay in order), or
        /// `none` (spread evenly, no order).
        #[serde(default)]
        pub key: KafkaKey,
        /// How long the producer may keep retrying a message before its batch counts as
        /// failed (and is sent again).
        #[serde(default = "default_message_timeout_ms")]
        pub message_timeout_ms: u64,
        /// Largest message. A larger record has its free-text fields trimmed, then left out;
        /// if still too large it is dropped and counted (`oversize`). Keep it within the
        /// topic's `max.message.bytes`.
        #[serde(default = "default_max_message_bytes")]
        pub max_message_bytes: usize,
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KafkaKey {
    #[default]
    Flow,
    Source,
    None,
}

fn default_message_timeout_ms() -> u64 {
    30_000
}
fn default_max_message_bytes() -> usize {
    1_000_000
}

impl KafkaSinkConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        self.connection().validate(path, problems);
        if !crate::flow::kafka::is_topic_name(&self.topic) {
            problems.push(
                format!("{path}.topic"),
                format!(
                    "`{}` is not a Kafka topic name (1 to 249 letters, digits, `.`, `_`, `-`)",
                    self.topic
                ),
            );
        }
        if !(1_000..=3_600_000).contains(&self.message_timeout_ms) {
            problems.push(
                format!("{path}.message_timeout_ms"),
                "must be between 1000 and 3600000",
            );
        }
        if !(1_024..=100 * 1024 * 1024).contains(&self.max_message_bytes) {
            problems.push(
                format!("{path}.max_message_bytes"),
                "must be between 1024 and 104857600",
            );
        }
    }
}

impl KafkaKey {
    /// Appends the key of `record` to `out`.
    pub fn write(self, record: &EnrichedRecord, out: &mut Vec<u8>) {
        let flow = &record.flow;
        let ip = |ip: Option<std::net::IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
        match self {
            KafkaKey::Flow => {
                let _ = write!(
                    out,
                    "{}|{}|{}|{}",
                    ip(flow.source.ip),
                    ip(flow.dest.ip),
                    flow.dest.port.unwrap_or(0),
                    flow.proto
                );
            }
            KafkaKey::Source => {
                let source = record.side(Side::Source);
                match (source.namespace(), source.workload()) {
                    (Some(namespace), Some(workload)) => {
                        let _ = write!(out, "{namespace}/{workload}");
                    }
                    _ => out.extend_from_slice(ip(flow.source.ip).as_bytes()),
                }
            }
            KafkaKey::None => {}
        }
    }
}

/// A connected producer for one sink.
pub struct KafkaWriter {
    producer: FutureProducer,
    topic: String,
    keyed: bool,
}

impl std::fmt::Debug for KafkaWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaWriter")
            .field("topic", &self.topic)
            .finish()
    }
}

impl KafkaWriter {
    pub fn new(settings: &KafkaSinkConfig) -> Result<KafkaWriter, crate::kafka::KafkaSetupError> {
        let mut config = settings.connection().client_config()?;
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                settings.message_timeout_ms.to_string(),
            )
            .set(
                "message.max.bytes",
                (settings.max_message_bytes + 1024).to_string(),
            );
        if !settings.properties.contains_key("linger.ms") {
            config.set("linger.ms", "5");
        }
        Ok(KafkaWriter {
            producer: crate::kafka::create(&config, "producer")?,
            topic: settings.topic.clone(),
            keyed: settings.key != KafkaKey::None,
        })
    }

    /// Produces one message per `(payload, key)` and waits until the broker has every one.
    pub async fn write<'a>(
        &self,
        messages: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), KafkaError> {
        let mut waiting: VecDeque<DeliveryFuture> = VecDeque::new();
        for (payload, key) in messages {
            let mut record = FutureRecord::to(&self.topic).payload(payload);
            if self.keyed {
                record = record.key(key);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        waiting.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        // The producer's queue is full: wait for the oldest message.
                        record = returned;
                        match waiting.pop_front() {
                            Some(delivery) => confirmed(delivery.await)?,
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((error, _)) => return Err(error),
                }
            }
        }
        for delivery in waiting {
            confirmed(delivery.await)?;
        }
        Ok(())
    }
}

/// The outcome of one message: the broker confirmed it, or why not.
fn confirmed<Canceled>(
    delivery: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, Canceled>,
) -> Result<(), KafkaError> {
    match delivery {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error),
        // The producer was dropped with the message still queued.
        Err(_) => Err(KafkaError::Canceled),
    }
}
