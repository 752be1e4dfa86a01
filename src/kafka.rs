//! What the Kafka source and sink share: the connection settings and how they become a
//! librdkafka configuration.
//!
//! Settings threatflow relies on for its delivery guarantees (the group, offset storing and
//! committing, idempotence) are set by threatflow and cannot be overridden; everything else
//! librdkafka knows (`security.protocol`, `sasl.*`, `ssl.*`, timeouts, fetch sizes) is passed
//! through `properties`, and secrets through `secret_properties`, read from the environment
//! or a mounted file and never logged.

use std::collections::BTreeMap;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::problems::Problems;
use crate::secret::{NamedSecret, SecretError};

/// How to reach a Kafka cluster: the fields the source and sink settings share.
#[derive(Clone, Copy, Debug)]
pub struct KafkaConnection<'a> {
    pub brokers: &'a [String],
    pub client_id: &'a str,
    pub properties: &'a BTreeMap<String, String>,
    pub secret_properties: &'a [NamedSecret],
}

/// Defines a settings struct that starts with the connection fields, and its
/// `connection()` view.
macro_rules! with_connection {
    ($(#[$attr:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$attr])*
        pub struct $name {
            /// Bootstrap brokers, `host:port`.
            pub brokers: Vec<String>,
            /// The client id brokers see in their logs and quotas.
            #[serde(default = "crate::kafka::default_client_id")]
            pub client_id: String,
            /// Further librdkafka settings, passed through: `security.protocol`,
            /// `sasl.mechanism`, `sasl.username`, `ssl.ca.location`,
            /// `ssl.certificate.location`, timeouts and sizes. The settings threatflow
            /// manages (`bootstrap.servers`, `group.id`, offset storing and committing,
            /// `enable.idempotence`, `acks`) are refused here.
            #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
            pub properties: std::collections::BTreeMap<String, String>,
            /// librdkafka settings whose values are secrets (`sasl.password`,
            /// `ssl.key.password`), each from an environment variable or a file; never
            /// logged.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub secret_properties: Vec<crate::secret::NamedSecret>,
            $($body)*
        }

        impl $name {
            pub fn connection(&self) -> crate::kafka::KafkaConnection<'_> {
                crate::kafka::KafkaConnection {
                    brokers: &self.brokers,
                    client_id: &self.client_id,
                    properties: &self.properties,
                    secret_properties: &self.secret_properties,
                }
            }
        }
    };
}
pub(crate) use with_connection;

pub fn default_client_id() -> String {
    "threatflow".into()
}

/// Settings that threatflow owns, and why.
const MANAGED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `brokers`"),
    ("metadata.broker.list", "set `brokers`"),
    ("client.id", "set `client_id`"),
    ("group.id", "set `group_id`"),
    (
        "enable.auto.offset.store",
        "offsets are stored only after delivery; this is what makes the source at-least-once",
    ),
    ("enable.auto.commit", "set `commit_interval_ms`"),
    ("auto.commit.interval.ms", "set `commit_interval_ms`"),
    ("auto.offset.reset", "set `start_at`"),
    ("enable.partition.eof", "managed by `run --once`"),
    (
        "enable.idempotence",
        "the sink always produces idempotently",
    ),
    ("acks", "the sink always waits for all in-sync replicas"),
    (
        "request.required.acks",
        "the sink always waits for all in-sync replicas",
    ),
];

impl KafkaConnection<'_> {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.brokers.is_empty() {
            problems.push(format!("{path}.brokers"), "needs at least one `host:port`");
        }
        for (i, broker) in self.brokers.iter().enumerate() {
            let valid = broker
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                problems.push(
                    format!("{path}.brokers[{i}]"),
                    format!("`{broker}` is not `host:port`"),
                );
            }
        }
        if self.client_id.is_empty() {
            problems.push(format!("{path}.client_id"), "must not be empty");
        }
        let managed = |name: &str| {
            MANAGED
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, why)| *why)
        };
        for name in self.properties.keys() {
            if let Some(why) = managed(name) {
                problems.push(
                    format!("{path}.properties.{name}"),
                    format!("is managed by threatflow: {why}"),
                );
            }
        }
        for (i, secret) in self.secret_properties.iter().enumerate() {
            let path = format!("{path}.secret_properties[{i}]");
            if let Some(why) = managed(&secret.name) {
                problems.push(
                    format!("{path}.name"),
                    format!("`{}` is managed by threatflow: {why}", secret.name),
                );
            }
            secret.validate(&path, problems);
        }
    }

    /// The librdkafka configuration: brokers, client id, the passed-through properties and
    /// the secrets (read now).
    pub fn client_config(&self) -> Result<ClientConfig, KafkaSetupError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.brokers.join(","))
            .set("client.id", self.client_id)
            .set_log_level(RDKafkaLogLevel::Warning);
        for (key, value) in self.properties {
            config.set(key, value);
        }
        if self
            .properties
            .get("enable.ssl.certificate.verification")
            .is_some_and(|value| value == "false")
        {
            tracing::warn!(
                brokers = %self.brokers.join(","),
                "enable.ssl.certificate.verification is false: the brokers' certificates are not checked"
            );
        }
        for secret in self.secret_properties {
            config.set(&secret.name, secret.read()?);
        }
        Ok(config)
    }
}

/// A Kafka client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot read a secret property")]
    Secret(#[from] SecretError),
    /// librdkafka names the setting at fault, never a secret's value.
    #[error("cannot create the Kafka {what}")]
    Create {
        what: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot subscribe to {topics}")]
    Subscribe {
        topics: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl KafkaSetupError {
    pub fn kind(&self) -> &'static str {
        match self {
            KafkaSetupError::Secret(error) => error.kind(),
            KafkaSetupError::Create { .. } => "create",
            KafkaSetupError::Subscribe { .. } => "subscribe",
        }
    }
}

/// Builds a client.
pub fn create<T: rdkafka::config::FromClientConfig>(
    config: &ClientConfig,
    what: &'static str,
) -> Result<T, KafkaSetupError> {
    config
        .create()
        .map_err(|source| KafkaSetupError::Create { what, source })
}
