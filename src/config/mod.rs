//! Configuration: one YAML file (the same file a ConfigMap mounts in the cluster).
//!
//! Loading goes in three steps: [`Config::load`] parses with `deny_unknown_fields` and reports a
//! syntax or type error with its path (`sinks[1].syslog.port: invalid type ...`);
//! [`Config::validate`] is pure and collects every semantic problem with its path before
//! anything starts; building the running pieces (reading the inventory, opening files) happens
//! in `app`. Doc comments on the fields below are the user documentation, and
//! `schemas/config.schema.json` is generated from them.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::feeds::config::{FeedConfig, FeedSettings};
use crate::flow::kafka::KafkaSourceConfig;
use crate::flow::FlowFormat;
use crate::k8s::leader::LeaderElectionConfig;
use crate::sink::cef::CefConfig;
use crate::sink::kafka::KafkaSinkConfig;
use crate::sink::syslog::SyslogConfig;

/// threatflow's configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cluster's name, sent with every record (CEF `deviceExternalId`) so a SIEM can tell
    /// clusters apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// The node this instance runs on: the reporting node of records that do not name one.
    /// Defaults to the `NODE_NAME` environment variable (set it from the downward API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Where flow records come from.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Where cluster context comes from.
    #[serde(default)]
    pub enrichment: EnrichmentConfig,
    /// Where enriched records go. Every record goes to every sink.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Threat feeds to pull, normalize and publish as GlobalNetworkSets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<FeedConfig>,
    /// Guards, sharding and the publish target, for every feed.
    #[serde(default)]
    pub feed_settings: FeedSettings,
    /// How records are written as CEF, for sinks with `format: cef`.
    #[serde(default)]
    pub cef: CefConfig,
    /// Where rejected lines are written, with their reason. Without it, rejected lines are
    /// only counted and logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
    /// Batching and shutdown behaviour.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Logs, metrics and health endpoints.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// With several replicas: elect one, through a Lease, to publish feeds to the cluster.
    /// Without it, this instance always publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_election: Option<LeaderElectionConfig>,
}

/// A source of flow records.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A unique name, used in metrics and logs.
    pub name: String,
    /// `file` tails a flow-log file; `stdin` reads standard input until it closes; `kafka`
    /// consumes topics in a consumer group.
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// The collector format of the lines.
    #[serde(default)]
    pub format: FlowFormat,
    /// Lines longer than this are rejected (`too_long`), never buffered whole.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Settings of a `file` source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSourceConfig>,
    /// Settings of a `kafka` source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSourceConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    File,
    Stdin,
    Kafka,
}

fn default_max_line_bytes() -> usize {
    64 * 1024
}

/// Tailing a flow-log file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file to tail, normally `/var/log/calico/flowlogs/flows.log`. Rotation by rename
    /// and by copy-truncate is followed.
    pub path: PathBuf,
    /// Where to start when there is no checkpoint: at the `beginning` or the `end`.
    #[serde(default)]
    pub start_at: StartAt,
    /// Where the read position is kept, so that a restart neither re-sends nor skips. A
    /// position is saved only once every sink has acknowledged the lines before it. Without
    /// it, every start begins at `start_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_path: Option<PathBuf>,
    /// How often to look for new data and for rotation at the end of the file.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

fn default_poll_interval_ms() -> u64 {
    250
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    #[default]
    Beginning,
    End,
}

/// Where cluster context comes from.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichmentConfig {
    /// A file written by `kubectl get pods,services,namespaces,nodes,jobs -A -o json`, for runs
    /// outside the cluster. Without it (or `kubernetes`), records are forwarded with only the
    /// context they carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_path: Option<PathBuf>,
    /// Watch the cluster's pods, services, nodes, namespaces and jobs and keep the index in
    /// step (in-cluster, or through `KUBECONFIG`). Exclusive with `inventory_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesEnrichment>,
    /// Which labels are passed on, from the inventory and from the records themselves.
    #[serde(default)]
    pub labels: crate::enrich::LabelFilter,
}

/// In-cluster enrichment from watches.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesEnrichment {
    /// Watch only this namespace's pods, services and jobs (and only this namespace's labels),
    /// for large clusters where threatflow serves one tenant. Nodes are always watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Watch only pods matching this label selector (`app=web,tier!=db`). Flows of other pods
    /// get no pod context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_label_selector: Option<String>,
    /// How long a deleted pod's (or node's, or service's) addresses still resolve to it, for
    /// flow records that arrive late.
    #[serde(default = "default_grace_period_secs")]
    pub grace_period_secs: u64,
    /// How long records wait at startup for the initial lists before they go on with the
    /// context the index has (counted in `threatflow_flow_sync_timeouts_total`).
    #[serde(default = "default_sync_timeout_secs")]
    pub sync_timeout_secs: u64,
}

fn default_grace_period_secs() -> u64 {
    300
}

fn default_sync_timeout_secs() -> u64 {
    60
}

impl KubernetesEnrichment {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if let Some(namespace) = &self.namespace {
            let valid = !namespace.is_empty()
                && namespace.len() <= 63
                && namespace
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !namespace.starts_with('-')
                && !namespace.ends_with('-');
            if !valid {
                problems.push(
                    format!("{path}.namespace"),
                    "must be a namespace name (lowercase letters, digits and `-`, at most 63)",
                );
            }
        }
        if let Some(selector) = &self.pod_label_selector {
            if selector.trim().is_empty() || selector.chars().any(char::is_control) {
                problems.push(
                    format!("{path}.pod_label_selector"),
                    "must be a label selector such as `app=web,tier!=db`",
                );
            }
        }
    }
}

impl SinkConfig {
    /// Whether a full queue drops (rather than blocks), with `sinks` the number of sinks.
    pub fn drops_when_full(&self, sinks: usize) -> bool {
        match self.when_full {
            Some(when_full) => when_full == WhenFull::Drop,
            None => sinks > 1,
        }
    }
}

/// A destination for enriched records.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// A unique name, used in metrics and logs.
    pub name: String,
    /// `stdout`, `file` (appends), `syslog` (UDP, TCP or TLS) or `kafka` (a topic).
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// How each record is encoded: `cef`, `leef` (LEEF 2.0, for QRadar) or `json` (one
    /// object per line).
    #[serde(default)]
    pub format: OutputFormat,
    /// Settings of a `file` sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSinkConfig>,
    /// Settings of a `syslog` sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog: Option<SyslogConfig>,
    /// Settings of a `kafka` sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSinkConfig>,
    /// When this sink's queue is full: `block` slows every source until the sink catches up;
    /// `drop` does too, but once the queue has stayed full for a second (the destination is
    /// stalled or down) counts its overflow as dropped (`destination_full`) so the other
    /// sinks go on. Default: `block` for a single sink, `drop` when there are several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_full: Option<WhenFull>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    Block,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Stdout,
    File,
    Syslog,
    Kafka,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    #[default]
    Cef,
    /// LEEF 2.0 (IBM QRadar), tab-separated attributes.
    Leef,
    Json,
}

/// Appending records to a file, one per line.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub path: PathBuf,
}

/// The dead-letter file: one JSON object per rejected line.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    pub path: PathBuf,
}

/// A named value kept out of the config file: exactly one of `value_from_env` and
/// `value_from_file`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedSecret {
    pub name: String,
    /// An environment variable holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from_env: Option<String>,
    /// A file holding the value (a mounted Secret); surrounding whitespace is trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from_file: Option<PathBuf>,
}

/// A secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{name}: environment variable {variable} is not set")]
    MissingEnv { name: String, variable: String },
    #[error("{name}: cannot read {path}")]
    File {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl NamedSecret {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.value_from_env.is_some() == self.value_from_file.is_some() {
            problems.push(
                path,
                "needs exactly one of value_from_env and value_from_file",
            );
        }
    }

    /// The value, read now (a rotated Secret file is picked up by the next read).
    pub fn read(&self) -> Result<String, SecretError> {
        match (&self.value_from_env, &self.value_from_file) {
            (Some(variable), _) => std::env::var(variable).map_err(|_| SecretError::MissingEnv {
                name: self.name.clone(),
                variable: variable.clone(),
            }),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|value| value.trim().to_owned())
                .map_err(|source| SecretError::File {
                    name: self.name.clone(),
                    path: path.display().to_string(),
                    source,
                }),
            (None, None) => Ok(String::new()),
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
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_max_records: 1024,
            queue_batches: 16,
            drain_timeout_secs: 30,
        }
    }
}

/// Logs, metrics and health.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` or `json` logs, on standard error.
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `threatflow=debug`; the `RUST_LOG` environment
    /// variable overrides it.
    pub log_level: String,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`. Unset: no listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_addr: Option<SocketAddr>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Text,
            log_level: "info".into(),
            listen_addr: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One thing wrong with a configuration, at a path such as `sinks[1].syslog.port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }

    /// The paths of the problems, in order.
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|problem| problem.path.as_str()).collect()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.0 {
            writeln!(f, "  {problem}")?;
        }
        Ok(())
    }
}

/// The configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Parse { path: String, problem: Problem },
    #[error("{path} has {} problem(s):\n{problems}", problems.len())]
    Invalid { path: String, problems: Problems },
}

impl Config {
    /// Reads and parses a config file, without semantic validation.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        Config::from_yaml(&text).map_err(|problem| ConfigError::Parse {
            path: display,
            problem,
        })
    }

    /// Parses YAML text; the error names the path of the offending value.
    pub fn from_yaml(text: &str) -> Result<Config, Problem> {
        let deserializer = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let path = if path == "." {
                "(top level)".to_owned()
            } else {
                path
            };
            let mut message = error.into_inner().to_string();
            // serde_yaml starts some messages with its own, shorter path; ours is exact.
            if let Some((prefix, rest)) = message.split_once(": ") {
                if !prefix.contains(' ') && path.starts_with(prefix) {
                    message = rest.to_owned();
                }
            }
            Problem { path, message }
        })
    }

    /// Reads, parses and validates a config file.
    pub fn load_valid(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse_valid(path, &text)
    }

    /// Parses and validates the text of the config file at `path` (named in errors).
    pub fn parse_valid(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config = Config::from_yaml(text).map_err(|problem| ConfigError::Parse {
            path: path.display().to_string(),
            problem,
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.display().to_string(),
                problems,
            })
        }
    }

    /// Every semantic problem, with its path. Pure: touches no file or network.
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::default();
        match (
            self.sources.is_empty(),
            self.sinks.is_empty(),
            self.feeds.is_empty(),
        ) {
            (true, true, true) => problems.push(
                "(top level)",
                "nothing to do: configure sources and sinks, or feeds",
            ),
            (false, true, _) => problems.push("sinks", "sources need at least one sink"),
            (true, false, _) => problems.push("sources", "sinks need at least one source"),
            _ => {}
        }
        let mut names = HashSet::new();
        let mut stdin_sources = 0;
        for (i, source) in self.sources.iter().enumerate() {
            let path = format!("sources[{i}]");
            check_name(
                &format!("{path}.name"),
                &source.name,
                &mut names,
                &mut problems,
            );
            if !(1024..=16 * 1024 * 1024).contains(&source.max_line_bytes) {
                problems.push(
                    format!("{path}.max_line_bytes"),
                    "must be between 1024 and 16777216",
                );
            }
            let sections = [
                ("file", source.file.is_some(), SourceKind::File),
                ("kafka", source.kafka.is_some(), SourceKind::Kafka),
            ];
            for (section, present, kind) in sections {
                if present && source.kind != kind {
                    problems.push(
                        format!("{path}.{section}"),
                        format!("only a `{section}` source takes a `{section}:` section"),
                    );
                }
            }
            if let Some(kafka) = &source.kafka {
                kafka.validate(&format!("{path}.kafka"), &mut problems);
            }
            match (source.kind, &source.file) {
                (SourceKind::Kafka, _) if source.kafka.is_none() => problems.push(
                    format!("{path}.kafka"),
                    "a `kafka` source needs a `kafka:` section with `brokers` and `topics`",
                ),
                (SourceKind::Kafka, _) => {}
                (SourceKind::File, None) => problems.push(
                    format!("{path}.file"),
                    "a `file` source needs a `file:` section with a `path`",
                ),
                (SourceKind::File, Some(file)) => {
                    if file.path.as_os_str().is_empty() {
                        problems.push(format!("{path}.file.path"), "must not be empty");
                    }
                    if file.poll_interval_ms == 0 || file.poll_interval_ms > 60_000 {
                        problems.push(
                            format!("{path}.file.poll_interval_ms"),
                            "must be between 1 and 60000",
                        );
                    }
                    if file.checkpoint_path.as_deref() == Some(file.path.as_path()) {
                        problems.push(
                            format!("{path}.file.checkpoint_path"),
                            "must not be the file being read",
                        );
                    }
                }
                (SourceKind::Stdin, _) => stdin_sources += 1,
            }
        }
        if stdin_sources > 1 {
            problems.push("sources", "only one source can read standard input");
        }

        let mut names = HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let path = format!("sinks[{i}]");
            check_name(
                &format!("{path}.name"),
                &sink.name,
                &mut names,
                &mut problems,
            );
            let sections = [
                ("file", sink.file.is_some(), SinkKind::File),
                ("syslog", sink.syslog.is_some(), SinkKind::Syslog),
                ("kafka", sink.kafka.is_some(), SinkKind::Kafka),
            ];
            for (section, present, kind) in sections {
                if present && sink.kind != kind {
                    problems.push(
                        format!("{path}.{section}"),
                        format!("only a `{section}` sink takes a `{section}:` section"),
                    );
                }
                if !present && sink.kind == kind {
                    problems.push(
                        format!("{path}.{section}"),
                        format!("a `{section}` sink needs a `{section}:` section"),
                    );
                }
            }
            if let Some(file) = &sink.file {
                if file.path.as_os_str().is_empty() {
                    problems.push(format!("{path}.file.path"), "must not be empty");
                }
            }
            if let Some(syslog) = &sink.syslog {
                syslog.validate(&format!("{path}.syslog"), &mut problems);
            }
            if let Some(kafka) = &sink.kafka {
                kafka.validate(&format!("{path}.kafka"), &mut problems);
            }
        }

        self.enrichment
            .labels
            .validate("enrichment.labels", &mut problems);
        if let Some(kubernetes) = &self.enrichment.kubernetes {
            if self.enrichment.inventory_path.is_some() {
                problems.push(
                    "enrichment.kubernetes",
                    "set either enrichment.inventory_path (a file) or enrichment.kubernetes (watches), not both",
                );
            }
            kubernetes.validate("enrichment.kubernetes", &mut problems);
        }
        crate::feeds::config::validate(&self.feeds, &self.feed_settings, &mut problems);
        if let Some(election) = &self.leader_election {
            election.validate("leader_election", &mut problems);
        }
        self.cef.validate("cef", &mut problems);
        if let Some(cluster_name) = &self.cluster_name {
            if cluster_name.is_empty()
                || cluster_name.len() > 255
                || cluster_name.chars().any(char::is_control)
            {
                problems.push(
                    "cluster_name",
                    "must be 1 to 255 characters without control characters",
                );
            }
        }
        if let Some(dead_letter) = &self.dead_letter {
            if dead_letter.path.as_os_str().is_empty() {
                problems.push("dead_letter.path", "must not be empty");
            }
        }
        let pipeline = &self.pipeline;
        if !(1..=100_000).contains(&pipeline.batch_max_records) {
            problems.push("pipeline.batch_max_records", "must be between 1 and 100000");
        }
        if !(1..=10_000).contains(&pipeline.queue_batches) {
            problems.push("pipeline.queue_batches", "must be between 1 and 10000");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level).is_err() {
            problems.push(
                "telemetry.log_level",
                format!(
                    "`{}` is not a log filter (try `info` or `threatflow=debug`)",
                    self.telemetry.log_level
                ),
            );
        }
        problems
    }

    /// The node name from the config, else from the `NODE_NAME` environment variable.
    pub fn node_name(&self) -> Option<String> {
        self.node_name.clone().or_else(|| {
            std::env::var("NODE_NAME")
                .ok()
                .filter(|name| !name.is_empty())
        })
    }

    /// One line saying what would run.
    pub fn summary(&self) -> String {
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|source| match (&source.file, &source.kafka) {
                (Some(file), _) => format!(
                    "{} ({} file {})",
                    source.name,
                    source.format.as_str(),
                    file.path.display()
                ),
                (None, Some(kafka)) => {
                    let topics: Vec<&str> = kafka
                        .topics
                        .iter()
                        .map(|topic| topic.name.as_str())
                        .collect();
                    format!(
                        "{} (kafka topics {} in group {})",
                        source.name,
                        topics.join(","),
                        kafka.group_id
                    )
                }
                (None, None) => format!("{} ({} stdin)", source.name, source.format.as_str()),
            })
            .collect();
        let sinks: Vec<String> = self
            .sinks
            .iter()
            .map(|sink| {
                let target = match (&sink.file, &sink.syslog, &sink.kafka) {
                    (Some(file), _, _) => format!("file {}", file.path.display()),
                    (_, Some(syslog), _) => format!("syslog {}", syslog.target()),
                    (_, _, Some(kafka)) => format!("kafka topic {}", kafka.topic),
                    _ => "stdout".into(),
                };
                format!("{} ({:?} to {target})", sink.name, sink.format).to_lowercase()
            })
            .collect();
        let enrichment = match (&self.enrichment.inventory_path, &self.enrichment.kubernetes) {
            (Some(path), _) => format!("inventory {}", path.display()),
            (None, Some(kubernetes)) => match &kubernetes.namespace {
                Some(namespace) => format!("kubernetes watches in namespace {namespace}"),
                None => "kubernetes watches".into(),
            },
            (None, None) => "none".into(),
        };
        let telemetry = match self.telemetry.listen_addr {
            Some(addr) => format!("http://{addr}/metrics"),
            None => "off".into(),
        };
        let feeds: Vec<String> = self
            .feeds
            .iter()
            .map(|feed| {
                format!(
                    "{} ({:?}, every {} s)",
                    feed.name, feed.mode, feed.period_secs
                )
                .to_lowercase()
            })
            .collect();
        let publish = match &self.feed_settings.publish {
            Some(publish) => match &publish.directory {
                Some(directory) => format!(" to directory {}", directory.path.display()),
                None => String::new(),
            },
            None => String::new(),
        };
        let or_none = |items: Vec<String>| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        format!(
            "sources: {}; enrichment: {enrichment}; sinks: {}; feeds: {}{publish}; metrics: {telemetry}",
            or_none(sources),
            or_none(sinks),
            or_none(feeds),
        )
    }
}

fn check_name<'a>(path: &str, name: &'a str, seen: &mut HashSet<&'a str>, problems: &mut Problems) {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        problems.push(
            path,
            format!("`{name}` must be 1 to 63 letters, digits, `-` or `_`"),
        );
    } else if !seen.insert(name) {
        problems.push(path, format!("`{name}` is used twice"));
    }
}

/// The JSON Schema of the config file, as committed in `schemas/config.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

/// Fails when a committed generated file differs from what the code generates now; with
/// `THREATFLOW_UPDATE_SCHEMAS` set, rewrites it first.
#[cfg(test)]
pub(crate) fn assert_generated_file_is_fresh(relative_path: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative_path);
    if std::env::var_os("THREATFLOW_UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{relative_path} is stale: run `THREATFLOW_UPDATE_SCHEMAS=1 cargo test --lib` and commit the result"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_their_path() {
        let check = |yaml: &str, path: &str| {
            let problem = Config::from_yaml(yaml).unwrap_err();
            assert_eq!(problem.path, path, "{problem}");
        };
        let sources = "sources: [{name: a, type: stdin}]\n";
        check(&format!("{sources}sinks:\n  - {{name: a, type: stdout}}\n  - {{name: b, type: syslog, syslog: {{host: x, port: nope}}}}\n"), "sinks[1].syslog.port");
        check(
            &format!("{sources}sinks: [{{name: a, type: stdout, colour: red}}]\n"),
            "sinks[0].colour",
        );
        check(
            &format!("{sources}sinks: [{{name: a, type: pigeon}}]\n"),
            "sinks[0].type",
        );
        check("- a list, not a map\n", "(top level)");
    }

    #[test]
    fn validation_collects_every_problem() {
        let yaml = r#"
sources:
  - {name: flows, type: file}
  - {name: flows, type: stdin, max_line_bytes: 10}
  - {name: "bad name", type: stdin}
sinks:
  - {name: out, type: syslog}
  - {name: out2, type: stdout, file: {path: x}}
  - {name: siem, type: syslog, syslog: {host: "", port: 0, app_name: "has space"}}
cef:
  classes:
    flow_denied: {signature_id: "x", name: "y", severity: 12}
pipeline: {batch_max_records: 0}
telemetry: {log_level: "[[["}
"#;
        let config = Config::from_yaml(yaml).unwrap();
        let problems = config.validate();
        let paths = problems.paths();
        assert_eq!(
            paths,
            [
                "sources[0].file",
                "sources[1].name",
                "sources[1].max_line_bytes",
                "sources[2].name",
                "sources",
                "sinks[0].syslog",
                "sinks[1].file",
                "sinks[2].syslog.host",
                "sinks[2].syslog.port",
                "sinks[2].syslog.app_name",
                "cef.classes.flow_denied.severity",
                "pipeline.batch_max_records",
                "telemetry.log_level",
            ],
            "{problems}"
        );
    }

    #[test]
    fn kubernetes_enrichment_settings_are_checked() {
        let yaml = r#"
sources: [{name: a, type: stdin}]
sinks: [{name: b, type: stdout}]
enrichment:
  inventory_path: inventory.json
  kubernetes: {namespace: "Shop_1", pod_label_selector: " "}
"#;
        let config = Config::from_yaml(yaml).unwrap();
        assert_eq!(
            config.validate().paths(),
            [
                "enrichment.kubernetes",
                "enrichment.kubernetes.namespace",
                "enrichment.kubernetes.pod_label_selector"
            ]
        );
        let config = Config::from_yaml(
            "sources: [{name: a, type: stdin}]\nsinks: [{name: b, type: stdout}]\nenrichment: {kubernetes: {}}\n",
        )
        .unwrap();
        assert!(config.validate().is_empty());
        let kubernetes = config.enrichment.kubernetes.as_ref().unwrap();
        assert_eq!(
            (kubernetes.grace_period_secs, kubernetes.sync_timeout_secs),
            (300, 60)
        );
        assert!(config.summary().contains("enrichment: kubernetes watches"));
    }

    #[test]
    fn the_quickstart_config_is_valid() {
        let config = Config::load_valid(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/local/threatflow.yaml"
        )))
        .unwrap();
        assert!(config.summary().contains("calico file"));
    }

    #[test]
    fn the_committed_schema_is_fresh() {
        assert_generated_file_is_fresh("schemas/config.schema.json", &json_schema());
    }
}
