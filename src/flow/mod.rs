//! Flow records: the model, the collector formats that produce it, and the sources that read
//! collector output.
//!
//! Formats are pure (`line -> FlowRecord`); sources own the IO (files, stdin) and hand lines on
//! in batches. Nothing here knows about the cluster or about sinks.

pub mod calico;
pub mod config;
pub mod hubble;
pub mod kafka;
pub mod lines;
pub mod record;
pub mod source;

use std::fmt;

pub use record::FlowRecord;

/// Why a line was not turned into a record. Each reason is a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    InvalidUtf8,
    InvalidJson,
    TooLong,
    MissingField,
    InvalidField,
}

impl RejectReason {
    pub const ALL: [RejectReason; 5] = [
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::TooLong,
        RejectReason::MissingField,
        RejectReason::InvalidField,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::TooLong => "too_long",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidField => "invalid_field",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line that did not become a record: the bounded reason plus a human-readable detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: String) -> Self {
        Rejection { reason, detail }
    }

    /// A required field is absent.
    pub(crate) fn missing(field: &str) -> Self {
        Rejection::new(RejectReason::MissingField, format!("missing `{field}`"))
    }

    /// A field holds something other than `expected`.
    pub(crate) fn invalid(field: &str, expected: &str) -> Self {
        Rejection::new(
            RejectReason::InvalidField,
            format!("`{field}` is not {expected}"),
        )
    }
}

/// A line as UTF-8 text, or `invalid_utf8`.
pub(crate) fn utf8(line: &[u8]) -> Result<&str, Rejection> {
    std::str::from_utf8(line).map_err(|error| {
        Rejection::new(
            RejectReason::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", error.valid_up_to()),
        )
    })
}

/// Reads a JSON object line into `T`: `invalid_json` for anything but an object (serde would
/// read an array into a struct field by field) or broken JSON, `invalid_field` for a value of
/// the wrong type.
pub(crate) fn json_object<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Result<T, Rejection> {
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(Rejection::new(
            RejectReason::InvalidJson,
            "not a JSON object".to_owned(),
        ));
    }
    serde_json::from_str(text).map_err(|error| {
        let reason = match error.classify() {
            serde_json::error::Category::Data => RejectReason::InvalidField,
            _ => RejectReason::InvalidJson,
        };
        Rejection::new(reason, error.to_string())
    })
}

/// The collector format of a source's lines.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FlowFormat {
    /// Calico Enterprise flow logs (`flows.log`): one JSON object per line.
    #[default]
    Calico,
    /// Cilium Hubble flows (`hubble observe -o json`, Hubble's exporter file): one JSON
    /// object per line.
    Hubble,
}

impl FlowFormat {
    pub fn parse(self, line: &[u8]) -> Result<FlowRecord, Rejection> {
        match self {
            FlowFormat::Calico => calico::parse_line(line),
            FlowFormat::Hubble => hubble::parse_line(line),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FlowFormat::Calico => "calico",
            FlowFormat::Hubble => "hubble",
        }
    }
}

/// Counts of rejected lines by reason, for summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RejectCounts([u64; RejectReason::ALL.len()]);

impl RejectCounts {
    pub fn add(&mut self, reason: RejectReason) {
        self.0[reason as usize] += 1;
    }

    pub fn merge(&mut self, other: &RejectCounts) {
        for (total, count) in self.0.iter_mut().zip(other.0) {
            *total += count;
        }
    }

    pub fn get(&self, reason: RejectReason) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl fmt::Display for RejectCounts {
    /// `reason=count` for every reason that occurred, space-separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for reason in RejectReason::ALL {
            let count = self.get(reason);
            if count > 0 {
                if !first {
                    f.write_str(" ")?;
                }
                write!(f, "{reason}={count}")?;
                first = false;
            }
        }
        Ok(())
    }
}
