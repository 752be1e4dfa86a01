//! The `sinks` config section and its validation.

use std::collections::HashSet;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::kafka::KafkaSinkConfig;
use super::syslog::SyslogConfig;
use crate::problems::{check_unique_name, Problems};

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
impl SinkConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let sections = [
            ("file", self.file.is_some(), SinkKind::File),
            ("syslog", self.syslog.is_some(), SinkKind::Syslog),
            ("kafka", self.kafka.is_some(), SinkKind::Kafka),
        ];
        for (section, present, kind) in sections {
            if present && self.kind != kind {
                problems.push(
                    format!("{path}.{section}"),
                    format!("only a `{section}` sink takes a `{section}:` section"),
                );
            }
            if !present && self.kind == kind {
                problems.push(
                    format!("{path}.{section}"),
                    format!("a `{section}` sink needs a `{section}:` section"),
                );
            }
        }
        if let Some(file) = &self.file {
            if file.path.as_os_str().is_empty() {
                problems.push(format!("{path}.file.path"), "must not be empty");
            }
        }
        if let Some(syslog) = &self.syslog {
            syslog.validate(&format!("{path}.syslog"), problems);
        }
        if let Some(kafka) = &self.kafka {
            kafka.validate(&format!("{path}.kafka"), problems);
        }
    }

    /// One line saying where the sink writes.
    pub fn summary(&self) -> String {
        let target = match (&self.file, &self.syslog, &self.kafka) {
            (Some(file), _, _) => format!("file {}", file.path.display()),
            (_, Some(syslog), _) => format!("syslog {}", syslog.target()),
            (_, _, Some(kafka)) => format!("kafka topic {}", kafka.topic),
            _ => "stdout".into(),
        };
        format!("{} ({:?} to {target})", self.name, self.format).to_lowercase()
    }
}

/// Adds every problem of the `sinks` section to `problems`.
pub fn validate(sinks: &[SinkConfig], problems: &mut Problems) {
    let mut names = HashSet::new();
    for (i, sink) in sinks.iter().enumerate() {
        let path = format!("sinks[{i}]");
        check_unique_name(&format!("{path}.name"), &sink.name, &mut names, problems);
        sink.validate(&path, problems);
    }
}
