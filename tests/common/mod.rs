//! Shared test helpers: an independent, strict CEF parser, and helpers for running the binary.
//!
//! The parser is written from the CEF standard, not from the encoder: it splits the header on
//! unescaped `|`, accepts only `\|` and `\\` escapes there, and in the extension accepts only
//! `\\`, `\=`, `\n` and `\r` escapes and refuses a raw `=`, CR or LF inside a value. A pair
//! ends where a space is followed by `key=`.

#![allow(dead_code)]

pub mod daemon;
pub mod fortigate;
pub mod fortiguard;
pub mod fortimanager;
pub mod http;
pub mod kafka;
pub mod kube_api;
pub mod kubernetes_schemas;
pub mod panorama;
pub mod pki;
pub mod receivers;
pub mod taxii;
pub mod verdicts;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A parsed CEF line.
#[derive(Debug, Clone, PartialEq)]
pub struct Cef {
    /// Version, vendor, product, device version, signature id, name, severity.
    pub header: Vec<String>,
    /// Extension pairs in order.
    pub pairs: Vec<(String, String)>,
}

impl Cef {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn map(&self) -> BTreeMap<String, String> {
        self.pairs.iter().cloned().collect()
    }

    /// The value of a custom slot found by its label (`cs1Label=srcNamespace cs1=...`).
    pub fn labelled(&self, label: &str) -> Option<&str> {
        let (label_key, _) = self
            .pairs
            .iter()
            .find(|(k, v)| k.ends_with("Label") && v == label)?;
        self.get(label_key.trim_end_matches("Label"))
    }
}

pub fn parse_cef(line: &str) -> Result<Cef, String> {
    if line.contains('\n') || line.contains('\r') {
        return Err("raw line break".into());
    }
    let rest = line.strip_prefix("CEF:").ok_or("no CEF: prefix")?;
    let mut header = Vec::new();
    let mut current = String::new();
    let mut chars = rest.chars();
    // Seven fields, each ended by an unescaped `|`: version ... severity.
    while header.len() < 7 {
        match chars.next() {
            None => return Err(format!("header has only {} fields", header.len())),
            Some('\\') => match chars.next() {
                Some(c @ ('|' | '\\')) => current.push(c),
                other => return Err(format!("bad header escape \\{other:?}")),
            },
            Some('|') => header.push(std::mem::take(&mut current)),
            Some(c) => current.push(c),
        }
    }
    header[0] = format!("CEF:{}", header[0]);
    let extension: String = chars.collect();
    Ok(Cef {
        header,
        pairs: parse_extension(&extension)?,
    })
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// Splits `k1=v1 k2=v2 ...` strictly.
pub fn parse_extension(text: &str) -> Result<Vec<(String, String)>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let key_start = i;
        while i < chars.len() && is_key_char(chars[i]) {
            i += 1;
        }
        if i == key_start || i >= chars.len() || chars[i] != '=' {
            return Err(format!("expected a key at {key_start}: {text:?}"));
        }
        let key: String = chars[key_start..i].iter().collect();
        i += 1;
        let mut value = String::new();
        loop {
            if i >= chars.len() {
                break;
            }
            match chars[i] {
                '\\' => {
                    let escaped = match chars.get(i + 1) {
                        Some('\\') => '\\',
                        Some('=') => '=',
                        Some('n') => '\n',
                        Some('r') => '\r',
                        other => return Err(format!("bad extension escape \\{other:?} in {key}")),
                    };
                    value.push(escaped);
                    i += 2;
                }
                '=' => return Err(format!("raw `=` in the value of {key}")),
                ' ' => {
                    // Does a new key start after this space?
                    let mut j = i + 1;
                    while j < chars.len() && is_key_char(chars[j]) {
                        j += 1;
                    }
                    if j > i + 1 && j < chars.len() && chars[j] == '=' {
                        i += 1;
                        break;
                    }
                    value.push(' ');
                    i += 1;
                }
                c => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// The threatflow binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_threatflow"))
}

/// Polls `condition` until it holds, or fails the test after `timeout` with `what`.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// [`wait_for`] from async code: polls without blocking the runtime.
pub async fn eventually(
    what: &str,
    timeout: std::time::Duration,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `GET path` on a local port; the status and body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of a metric series on a local telemetry port, e.g.
/// `threatflow_sink_records_total{sink="out"}`.
pub fn metric(port: u16, series: &str) -> Option<f64> {
    let (_, text) = http_get(port, "/metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// A feed sync set up from a config's first feed, matching into `threats`, publishing nothing.
pub fn feed_runner(
    yaml: &str,
    threats: &threatflow::enrich::ThreatMatcher,
    board: &threatflow::feeds::sync::StatusBoard,
) -> threatflow::feeds::sync::FeedRunner {
    use threatflow::feeds::sync;
    let config = threatflow::config::Config::from_yaml(yaml).unwrap();
    let problems = config.validate();
    assert!(problems.is_empty(), "{problems}");
    sync::FeedRunner::new(
        config.feeds[0].clone(),
        &config.feed_settings,
        sync::fetcher(&config.feed_settings).unwrap(),
        None,
        Some(threats.clone()),
        sync::FeedMetrics::default(),
        board.clone(),
    )
    .unwrap()
}

/// Whether a feed in force in `threats` lists `ip`.
pub fn threat_listed(threats: &threatflow::enrich::ThreatMatcher, ip: &str) -> bool {
    threats.load().lookup(ip.parse().unwrap()).0 != 0
}

/// A loopback port free now, for a peer that must be told its port before it binds.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The repository root (tests run with it as the working directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
