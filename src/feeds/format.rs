//! Feed formats: turning a downloaded list into address ranges.
//!
//! Pure: bytes in, ranges and rejection counts out. Each format handles the publishers' exact
//! layouts (see `connectors/feeds/`): `newline` (IPs, CIDRs and `a-b` ranges, one per line, with
//! `#`/`;` comments and trailing annotations, as Spamhaus DROP, FireHOL, Feodo, Emerging
//! Threats, Tor and FortiGate external feeds write them), `csv`, `json` (an array, at a path)
//! and `jsonl` (one object per line, as Spamhaus' `drop_v4.json`). A line or item that cannot be
//! read is counted by reason and never fails the feed; a document that cannot be read at all
//! (invalid JSON for `json`) does.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::netset::{range4, range6, Range4, Range6};
use crate::problems::Problems;

/// How a feed's content is laid out.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedFormat {
    /// `newline`, `csv`, `json` or `jsonl`.
    #[serde(rename = "type", default)]
    pub kind: FormatKind,
    /// `csv`: the column holding the address, by 1-based index (`2`) or header name (`dst_ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<Column>,
    /// `csv`: the field delimiter (default `,`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    /// `csv`: whether the first row is a header (default: when `column` is a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<bool>,
    /// `csv`: lines starting with this character are comments (default `#`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<char>,
    /// `json`: dot-separated path to the array (default: the document itself is the array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `json` and `jsonl`: the object field holding the address. For `json` arrays of strings,
    /// leave it unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FormatKind {
    #[default]
    Newline,
    Csv,
    Json,
    Jsonl,
    /// A STIX 2.1 bundle: indicators whose patterns name addresses (see `feeds::stix`).
    Stix2,
}

/// A CSV column, by 1-based index or by header name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Column {
    Index(usize),
    Name(String),
}

impl std::str::FromStr for Column {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Column, Self::Err> {
        Ok(match text.parse::<usize>() {
            Ok(index) => Column::Index(index),
            Err(_) => Column::Name(text.to_owned()),
        })
    }
}

impl FeedFormat {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        let only = |name: &str, set: bool, kinds: &[FormatKind], problems: &mut Problems| {
            if set && !kinds.contains(&self.kind) {
                problems.push(
                    format!("{path}.{name}"),
                    format!("does not apply to `{:?}` feeds", self.kind).to_lowercase(),
                );
            }
        };
        only(
            "column",
            self.column.is_some(),
            &[FormatKind::Csv],
            problems,
        );
        only(
            "delimiter",
            self.delimiter.is_some(),
            &[FormatKind::Csv],
            problems,
        );
        only(
            "header",
            self.header.is_some(),
            &[FormatKind::Csv],
            problems,
        );
        only(
            "comment",
            self.comment.is_some(),
            &[FormatKind::Csv],
            problems,
        );
        only("path", self.path.is_some(), &[FormatKind::Json], problems);
        only(
            "field",
            self.field.is_some(),
            &[FormatKind::Json, FormatKind::Jsonl],
            problems,
        );
        match (&self.kind, &self.column, self.header) {
            (FormatKind::Csv, None, _) => problems.push(
                format!("{path}.column"),
                "a csv feed needs a column (1-based index or header name)",
            ),
            (FormatKind::Csv, Some(Column::Index(0)), _) => {
                problems.push(format!("{path}.column"), "columns are numbered from 1")
            }
            (FormatKind::Csv, Some(Column::Name(_)), Some(false)) => {
                problems.push(format!("{path}.header"), "a column name needs a header row")
            }
            _ => {}
        }
        if self.kind == FormatKind::Jsonl && self.field.is_none() {
            problems.push(
                format!("{path}.field"),
                "a jsonl feed needs the field that holds the address",
            );
        }
        for (name, value) in [("delimiter", self.delimiter), ("comment", self.comment)] {
            if value.is_some_and(|c| !c.is_ascii()) {
                problems.push(format!("{path}.{name}"), "must be an ASCII character");
            }
        }
    }
}

/// Why an entry of a feed was not used; each is a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryReject {
    /// Not an IP address, CIDR or `a-b` range.
    InvalidEntry,
    /// A `jsonl`/`json` object or a `csv` row without the configured field.
    MissingField,
    /// A `jsonl` line that is not JSON.
    InvalidJson,
    /// A line that is not UTF-8.
    InvalidUtf8,
}

impl EntryReject {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryReject::InvalidEntry => "invalid_entry",
            EntryReject::MissingField => "missing_field",
            EntryReject::InvalidJson => "invalid_json",
            EntryReject::InvalidUtf8 => "invalid_utf8",
        }
    }
}

/// The whole feed could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("the feed is not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("the feed has no array at `{path}`")]
    NoArray { path: String },
    #[error("the CSV header has no column `{column}`")]
    NoColumn { column: String },
    #[error("the feed is not valid CSV")]
    Csv(#[source] csv::Error),
    #[error(transparent)]
    Stix(#[from] super::stix::BundleError),
}

/// Entries read from a feed, not yet normalized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedFeed {
    pub v4: Vec<Range4>,
    pub v6: Vec<Range6>,
    /// Entries read, including rejected ones (comments and blank lines are not entries).
    pub entries: u64,
    pub rejected: BTreeMap<EntryReject, u64>,
    /// The first few rejected entries, `line N: reason: text`, for logs.
    pub examples: Vec<String>,
    /// STIX indicators by outcome (`ip`, `expired`, `revoked`, `unsupported_<why>`...);
    /// empty for other formats.
    pub indicators: BTreeMap<&'static str, u64>,
}

const EXAMPLES: usize = 5;

impl ParsedFeed {
    fn accept(&mut self, text: &str, line: usize) {
        self.entries += 1;
        match parse_entry(text) {
            Some(Entry::V4(range)) => self.v4.push(range),
            Some(Entry::V6(range)) => self.v6.push(range),
            None => self.reject(EntryReject::InvalidEntry, text, line),
        }
    }

    fn reject(&mut self, reason: EntryReject, text: &str, line: usize) {
        *self.rejected.entry(reason).or_default() += 1;
        if self.examples.len() < EXAMPLES {
            let shown: String = text.chars().take(80).collect();
            self.examples
                .push(format!("line {line}: {}: {shown:?}", reason.as_str()));
        }
    }

    /// Rejections as `reason=count ...`.
    pub fn rejected_summary(&self) -> String {
        self.rejected
            .iter()
            .map(|(reason, count)| format!("{}={count}", reason.as_str()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

enum Entry {
    V4(Range4),
    V6(Range6),
}

/// One address, CIDR (host bits are masked) or `first-last` range.
fn parse_entry(text: &str) -> Option<Entry> {
    let text = text.trim();
    if let Some((first, last)) = text.split_once('-') {
        return match (
            first.trim().parse::<IpAddr>().ok()?,
            last.trim().parse::<IpAddr>().ok()?,
        ) {
            (IpAddr::V4(first), IpAddr::V4(last)) if first <= last => {
                Some(Entry::V4((first.into(), last.into())))
            }
            (IpAddr::V6(first), IpAddr::V6(last)) if first <= last => {
                Some(Entry::V6((first.into(), last.into())))
            }
            _ => None,
        };
    }
    if text.contains('/') {
        return match text.parse::<IpNet>().ok()? {
            IpNet::V4(net) => Some(Entry::V4(range4(&net.trunc()))),
            IpNet::V6(net) => Some(Entry::V6(range6(&net.trunc()))),
        };
    }
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V4(address) => Some(Entry::V4((address.into(), address.into()))),
        IpAddr::V6(address) => Some(Entry::V6((address.into(), address.into()))),
    }
}

/// Reads a feed's content (STIX validity as of now).
pub fn parse(format: &FeedFormat, content: &[u8]) -> Result<ParsedFeed, FormatError> {
    parse_at(
        format,
        content,
        crate::clock::Clock::now_ms(&crate::clock::SystemClock),
    )
}

/// Reads a feed's content; STIX indicators count if valid at `now_ms`.
pub fn parse_at(
    format: &FeedFormat,
    content: &[u8],
    now_ms: i64,
) -> Result<ParsedFeed, FormatError> {
    match format.kind {
        FormatKind::Stix2 => Ok(super::stix::read_bundle(content, now_ms)?.into_feed()),
        FormatKind::Newline => Ok(parse_newline(content)),
        FormatKind::Csv => parse_csv(format, content),
        FormatKind::Json => parse_json(format, content),
        FormatKind::Jsonl => Ok(parse_jsonl(
            format.field.as_deref().unwrap_or("ip"),
            content,
        )),
    }
}

/// One entry per line: the first word, so `1.10.16.0/20 ; SBL256894` and
/// `1.2.3.4 # seen 2025-01-02` are read as their address. Lines starting with `#` or `;`
/// are comments.
fn parse_newline(content: &[u8]) -> ParsedFeed {
    let mut feed = ParsedFeed::default();
    for (index, line) in content.split(|&b| b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(line) else {
            feed.entries += 1;
            feed.reject(
                EntryReject::InvalidUtf8,
                &String::from_utf8_lossy(line),
                index + 1,
            );
            continue;
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let entry = line.split(['#', ';']).next().unwrap_or("").trim();
        let entry = entry.split_whitespace().next().unwrap_or("");
        feed.accept(entry, index + 1);
    }
    feed
}

fn parse_csv(format: &FeedFormat, content: &[u8]) -> Result<ParsedFeed, FormatError> {
    let header = format
        .header
        .unwrap_or(matches!(format.column, Some(Column::Name(_))));
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(format.delimiter.map_or(b',', |c| c as u8))
        .comment(Some(format.comment.map_or(b'#', |c| c as u8)))
        .has_headers(header)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(content);
    let index = match &format.column {
        Some(Column::Index(index)) => index.saturating_sub(1),
        Some(Column::Name(name)) => reader
            .headers()
            .map_err(FormatError::Csv)?
            .iter()
            .position(|header| header == name)
            .ok_or_else(|| FormatError::NoColumn {
                column: name.clone(),
            })?,
        None => 0,
    };
    let mut feed = ParsedFeed::default();
    let mut record = csv::ByteRecord::new();
    loop {
        let line = reader.position().line() as usize;
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => match record.get(index).map(std::str::from_utf8) {
                Some(Ok(field)) => feed.accept(field, line),
                Some(Err(_)) => {
                    feed.entries += 1;
                    feed.reject(EntryReject::InvalidUtf8, "", line);
                }
                None => {
                    feed.entries += 1;
                    feed.reject(EntryReject::MissingField, "", line);
                }
            },
            Err(error) => return Err(FormatError::Csv(error)),
        }
    }
    Ok(feed)
}

fn parse_json(format: &FeedFormat, content: &[u8]) -> Result<ParsedFeed, FormatError> {
    let document: serde_json::Value = serde_json::from_slice(content).map_err(FormatError::Json)?;
    let path = format.path.as_deref().unwrap_or("");
    let mut value = &document;
    for step in path.split('.').filter(|step| !step.is_empty()) {
        value = value.get(step).ok_or_else(|| FormatError::NoArray {
            path: path.to_owned(),
        })?;
    }
    let items = value.as_array().ok_or_else(|| FormatError::NoArray {
        path: path.to_owned(),
    })?;
    let mut feed = ParsedFeed::default();
    for (index, item) in items.iter().enumerate() {
        let text = match (&format.field, item) {
            (None, serde_json::Value::String(text)) => Some(text.as_str()),
            (Some(field), serde_json::Value::Object(object)) => {
                object.get(field).and_then(|value| value.as_str())
            }
            _ => None,
        };
        match text {
            Some(text) => feed.accept(text, index + 1),
            None => {
                feed.entries += 1;
                feed.reject(EntryReject::MissingField, &item.to_string(), index + 1);
            }
        }
    }
    Ok(feed)
}

fn parse_jsonl(field: &str, content: &[u8]) -> ParsedFeed {
    let mut feed = ParsedFeed::default();
    for (index, line) in content.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        feed.entries += 1;
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(object) => match object.get(field).and_then(|value| value.as_str()) {
                Some(text) => {
                    feed.entries -= 1;
                    feed.accept(text, index + 1);
                }
                None => feed.reject(
                    EntryReject::MissingField,
                    &String::from_utf8_lossy(line),
                    index + 1,
                ),
            },
            Err(_) => feed.reject(
                EntryReject::InvalidJson,
                &String::from_utf8_lossy(line),
                index + 1,
            ),
        }
    }
    feed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netset::NetSet;

    fn cidrs(feed: &ParsedFeed) -> Vec<String> {
        NetSet::from_ranges(feed.v4.clone(), feed.v6.clone())
            .cidrs()
            .map(|net| net.to_string())
            .collect()
    }

    fn newline() -> FeedFormat {
        FeedFormat::default()
    }

    #[test]
    fn newline_layouts() {
        let check = |content: &str, expected: &[&str], rejected: &str| {
            let feed = parse(&newline(), content.as_bytes()).unwrap();
            assert_eq!(cidrs(&feed), expected, "{content:?}");
            assert_eq!(feed.rejected_summary(), rejected, "{content:?}");
        };
        check("; Spamhaus DROP List 2026/10/07\n; Last-Modified: x\n1.10.16.0/20 ; SBL256894\r\n2.56.192.0/22 ; SBL459831\r\n", &["1.10.16.0/20", "2.56.192.0/22"], "");
        check(
            "# FireHOL\n0.0.0.0/8\n1.2.3.4\n\n10.0.0.1/8\n",
            &["0.0.0.0/8", "1.2.3.4/32", "10.0.0.0/8"],
            "",
        );
        check(
            "172.16.8.1-172.16.8.100\n2001:db8::/120\n192.168.2.100\n",
            &[
                "172.16.8.1/32",
                "172.16.8.2/31",
                "172.16.8.4/30",
                "172.16.8.8/29",
                "172.16.8.16/28",
                "172.16.8.32/27",
                "172.16.8.64/27",
                "172.16.8.96/30",
                "172.16.8.100/32",
                "192.168.2.100/32",
                "2001:db8::/120",
            ],
            "",
        );
        check(
            "1.2.3.4 # seen today\nnot-an-ip\n1.2.3.4/33\n9.9.9.9-1.1.1.1\n1.1.1.1-::1\n",
            &["1.2.3.4/32"],
            "invalid_entry=4",
        );
        check(
            "5.5.5.5\n\u{ff}garbage\n",
            &["5.5.5.5/32"],
            "invalid_entry=1",
        );
    }

    #[test]
    fn non_utf8_lines_are_counted() {
        let feed = parse(&newline(), b"1.1.1.1\n\xff\xfe\n").unwrap();
        assert_eq!(feed.rejected_summary(), "invalid_utf8=1");
        assert_eq!(feed.entries, 2);
    }

    #[test]
    fn csv_by_name_and_index() {
        let feodo = "# Feodo Tracker\n\"first_seen_utc\",\"dst_ip\",\"dst_port\",\"c2_status\",\"last_online\",\"malware\"\n\"2021-01-17 07:44:46\",\"51.178.161.32\",\"4643\",\"online\",\"2025-01-02\",\"Dridex\"\n\"2021-01-17 07:44:46\",\"bad\",\"1\",\"online\",\"x\",\"y\"\n";
        let format = FeedFormat {
            kind: FormatKind::Csv,
            column: Some(Column::Name("dst_ip".into())),
            ..FeedFormat::default()
        };
        let feed = parse(&format, feodo.as_bytes()).unwrap();
        assert_eq!(cidrs(&feed), ["51.178.161.32/32"]);
        assert_eq!(feed.rejected_summary(), "invalid_entry=1");

        let format = FeedFormat {
            kind: FormatKind::Csv,
            column: Some(Column::Index(2)),
            delimiter: Some(';'),
            ..FeedFormat::default()
        };
        let feed = parse(&format, b"a;10.0.0.0/8;x\nb\n").unwrap();
        assert_eq!(cidrs(&feed), ["10.0.0.0/8"]);
        assert_eq!(feed.rejected_summary(), "missing_field=1");

        let format = FeedFormat {
            kind: FormatKind::Csv,
            column: Some(Column::Name("nope".into())),
            ..FeedFormat::default()
        };
        assert!(matches!(
            parse(&format, feodo.as_bytes()),
            Err(FormatError::NoColumn { .. })
        ));
    }

    #[test]
    fn json_and_jsonl() {
        let format = FeedFormat {
            kind: FormatKind::Json,
            field: Some("ip_address".into()),
            ..FeedFormat::default()
        };
        let feed = parse(
            &format,
            br#"[{"ip_address":"1.2.3.4","port":443},{"port":1},{"ip_address":"x"}]"#,
        )
        .unwrap();
        assert_eq!(cidrs(&feed), ["1.2.3.4/32"]);
        assert_eq!(feed.rejected_summary(), "invalid_entry=1 missing_field=1");

        let format = FeedFormat {
            kind: FormatKind::Json,
            path: Some("data.ips".into()),
            ..FeedFormat::default()
        };
        let feed = parse(&format, br#"{"data":{"ips":["10.0.0.1","fd00::/8"]}}"#).unwrap();
        assert_eq!(cidrs(&feed), ["10.0.0.1/32", "fd00::/8"]);
        assert!(matches!(
            parse(&format, b"{\"data\":{}}"),
            Err(FormatError::NoArray { .. })
        ));
        assert!(matches!(
            parse(&format, b"{truncated"),
            Err(FormatError::Json(_))
        ));

        let format = FeedFormat {
            kind: FormatKind::Jsonl,
            field: Some("cidr".into()),
            ..FeedFormat::default()
        };
        let drop_v4 = "{\"cidr\":\"1.10.16.0/20\",\"sblid\":\"SBL256894\",\"rir\":\"apnic\"}\n{\"cidr\":\"2.56.192.0/22\",\"sblid\":\"SBL459831\",\"rir\":\"ripencc\"}\n{\"type\":\"metadata\",\"timestamp\":1759800000,\"size\":1234,\"records\":2,\"copyright\":\"(c) Spamhaus\"}\n{broken\n";
        let feed = parse(&format, drop_v4.as_bytes()).unwrap();
        assert_eq!(cidrs(&feed), ["1.10.16.0/20", "2.56.192.0/22"]);
        assert_eq!(feed.rejected_summary(), "missing_field=1 invalid_json=1");
        assert_eq!(feed.entries, 4);
    }

    #[test]
    fn format_validation() {
        let mut problems = Problems::default();
        FeedFormat {
            kind: FormatKind::Csv,
            ..FeedFormat::default()
        }
        .validate("f", &mut problems);
        FeedFormat {
            kind: FormatKind::Jsonl,
            path: Some("x".into()),
            ..FeedFormat::default()
        }
        .validate("g", &mut problems);
        FeedFormat {
            kind: FormatKind::Newline,
            column: Some(Column::Index(1)),
            ..FeedFormat::default()
        }
        .validate("h", &mut problems);
        let paths = problems.paths();
        assert_eq!(paths, ["f.column", "g.path", "g.field", "h.column"]);
    }
}
