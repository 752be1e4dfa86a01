//! The `sources` config section and its validation.

use std::collections::HashSet;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::kafka::KafkaSourceConfig;
use super::FlowFormat;
use crate::problems::{check_unique_name, Problems};

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
impl SourceConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if !(1024..=16 * 1024 * 1024).contains(&self.max_line_bytes) {
            problems.push(
                format!("{path}.max_line_bytes"),
                "must be between 1024 and 16777216",
            );
        }
        let sections = [
            ("file", self.file.is_some(), SourceKind::File),
            ("kafka", self.kafka.is_some(), SourceKind::Kafka),
        ];
        for (section, present, kind) in sections {
            if present && self.kind != kind {
                problems.push(
                    format!("{path}.{section}"),
                    format!("only a `{section}` source takes a `{section}:` section"),
                );
            }
        }
        if let Some(kafka) = &self.kafka {
            kafka.validate(&format!("{path}.kafka"), problems);
        }
        match (self.kind, &self.file) {
            (SourceKind::Kafka, _) if self.kafka.is_none() => problems.push(
                format!("{path}.kafka"),
                "a `kafka` source needs a `kafka:` section with `brokers` and `topics`",
            ),
            (SourceKind::File, None) => problems.push(
                format!("{path}.file"),
                "a `file` source needs a `file:` section with a `path`",
            ),
            (SourceKind::File, Some(file)) => file.validate(&format!("{path}.file"), problems),
            _ => {}
        }
    }

    /// One line saying what the source reads.
    pub fn summary(&self) -> String {
        match (&self.file, &self.kafka) {
            (Some(file), _) => format!(
                "{} ({} file {})",
                self.name,
                self.format.as_str(),
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
                    self.name,
                    topics.join(","),
                    kafka.group_id
                )
            }
            (None, None) => format!("{} ({} stdin)", self.name, self.format.as_str()),
        }
    }
}

impl FileSourceConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if self.path.as_os_str().is_empty() {
            problems.push(format!("{path}.path"), "must not be empty");
        }
        if self.poll_interval_ms == 0 || self.poll_interval_ms > 60_000 {
            problems.push(
                format!("{path}.poll_interval_ms"),
                "must be between 1 and 60000",
            );
        }
        if self.checkpoint_path.as_deref() == Some(self.path.as_path()) {
            problems.push(
                format!("{path}.checkpoint_path"),
                "must not be the file being read",
            );
        }
    }
}

/// Adds every problem of the `sources` section to `problems`.
pub fn validate(sources: &[SourceConfig], problems: &mut Problems) {
    let mut names = HashSet::new();
    for (i, source) in sources.iter().enumerate() {
        let path = format!("sources[{i}]");
        check_unique_name(&format!("{path}.name"), &source.name, &mut names, problems);
        source.validate(&path, problems);
    }
    let stdin = sources
        .iter()
        .filter(|source| source.kind == SourceKind::Stdin)
        .count();
    if stdin > 1 {
        problems.push("sources", "only one source can read standard input");
    }
}
