//! Syslog delivery: the RFC 5424 header, RFC 6587 octet-counting framing, and the TCP
//! transport.
//!
//! The header is built from config values checked to be printable US-ASCII of the RFC's
//! lengths, and the message is the encoder's output; octet counting makes the frame
//! transparent to any byte, so no record value can start another frame.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::Problems;
use crate::enrich::EnrichedRecord;
use crate::flow::record::Action;

/// A syslog receiver (a SIEM collector, rsyslog, syslog-ng).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The receiver's host name or IP address.
    pub host: String,
    /// The receiver's TCP port (commonly 514, or 1470 for FortiSIEM).
    pub port: u16,
    /// RFC 5424 HOSTNAME. Defaults to the node name, else this machine's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// RFC 5424 APP-NAME (at most 48 printable ASCII characters).
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// RFC 5424 MSGID (at most 32 printable ASCII characters).
    #[serde(default = "default_msgid")]
    pub msgid: String,
    /// Syslog facility: `kern`, `user`, ..., `local0` ... `local7`.
    #[serde(default = "default_facility")]
    pub facility: Facility,
    /// How long a connection attempt may take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long writing one batch may take before the connection is considered dead.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
}

fn default_app_name() -> String {
    "threatflow".into()
}
fn default_msgid() -> String {
    "flow".into()
}
fn default_facility() -> Facility {
    Facility::Local0
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_write_timeout_ms() -> u64 {
    10_000
}

/// Syslog facilities (RFC 5424 section 6.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Facility {
    Kern,
    User,
    Mail,
    Daemon,
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    Authpriv,
    Ftp,
    Ntp,
    Security,
    Console,
    SolarisCron,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

/// `-` or 1 to `max` printable US-ASCII characters, as RFC 5424 header fields require.
fn is_header_token(value: &str, max: usize) -> bool {
    !value.is_empty() && value.len() <= max && value.bytes().all(|b| (33..=126).contains(&b))
}

impl SyslogConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.host.is_empty() {
            problems.push(format!("{path}.host"), "must not be empty");
        }
        if self.port == 0 {
            problems.push(format!("{path}.port"), "must be between 1 and 65535");
        }
        if let Some(hostname) = &self.hostname {
            if !is_header_token(hostname, 255) {
                problems.push(
                    format!("{path}.hostname"),
                    "must be 1 to 255 printable ASCII characters without spaces",
                );
            }
        }
        if !is_header_token(&self.app_name, 48) {
            problems.push(
                format!("{path}.app_name"),
                "must be 1 to 48 printable ASCII characters without spaces",
            );
        }
        if !is_header_token(&self.msgid, 32) {
            problems.push(
                format!("{path}.msgid"),
                "must be 1 to 32 printable ASCII characters without spaces",
            );
        }
        for (name, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("write_timeout_ms", self.write_timeout_ms),
        ] {
            if !(1..=600_000).contains(&value) {
                problems.push(format!("{path}.{name}"), "must be between 1 and 600000");
            }
        }
    }
}

/// Builds RFC 5424 messages and frames them with octet counting.
#[derive(Debug)]
pub struct SyslogFramer {
    facility: u8,
    /// ` <HOSTNAME> <APP-NAME> - <MSGID> - ` : everything after the timestamp.
    header_tail: Vec<u8>,
}

impl SyslogFramer {
    /// `hostname` falls back to `-` (the RFC's nil value) if it is not a valid header token.
    pub fn new(config: &SyslogConfig, hostname: &str) -> SyslogFramer {
        let token = |value: &str, max| {
            if is_header_token(value, max) {
                value.to_owned()
            } else {
                "-".to_owned()
            }
        };
        SyslogFramer {
            facility: config.facility as u8,
            header_tail: format!(
                " {} {} - {} - ",
                token(hostname, 255),
                token(&config.app_name, 48),
                token(&config.msgid, 32)
            )
            .into_bytes(),
        }
    }

    /// Starts a message for `record` in `message`: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID - `.
    /// `timestamp` is RFC 3339 (`2025-01-15T10:22:33.123Z`), the time the batch was sent.
    pub fn header(&self, record: &EnrichedRecord, timestamp: &str, message: &mut Vec<u8>) {
        // Allowed flows are informational (6); denied flows are notices (5).
        let severity = match record.flow.action {
            Action::Allow => 6,
            Action::Deny => 5,
        };
        let pri = u16::from(self.facility) * 8 + severity;
        message.push(b'<');
        message.extend_from_slice(itoa::Buffer::new().format(pri).as_bytes());
        message.extend_from_slice(b">1 ");
        message.extend_from_slice(timestamp.as_bytes());
        message.extend_from_slice(&self.header_tail);
    }

    /// Appends `MSG-LEN SP message` (RFC 6587 octet counting) to `out`.
    pub fn frame(message: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(message.len()).as_bytes());
        out.push(b' ');
        out.extend_from_slice(message);
    }
}

/// The machine's host name, for the syslog HOSTNAME when none is configured.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "-".to_owned())
}

/// A TCP connection to a syslog receiver, opened on first use and after any error.
#[derive(Debug)]
pub struct SyslogTcp {
    host: String,
    port: u16,
    connect_timeout: Duration,
    write_timeout: Duration,
    stream: Option<TcpStream>,
}

/// Why a write to the receiver failed; `kind()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {target} timed out")]
    ConnectTimeout { target: String },
    #[error("writing to {target} failed")]
    Write {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing to {target} timed out (the receiver stopped reading)")]
    WriteTimeout { target: String },
}

impl SyslogError {
    pub fn kind(&self) -> &'static str {
        match self {
            SyslogError::Connect { .. } => "connect",
            SyslogError::ConnectTimeout { .. } => "connect_timeout",
            SyslogError::Write { .. } => "write",
            SyslogError::WriteTimeout { .. } => "write_timeout",
        }
    }
}

impl SyslogTcp {
    pub fn new(config: &SyslogConfig) -> SyslogTcp {
        SyslogTcp {
            host: config.host.clone(),
            port: config.port,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            stream: None,
        }
    }

    pub fn target(&self) -> String {
        format!("tcp://{}:{}", self.host, self.port)
    }

    /// Writes and flushes `bytes`. After an error the connection is closed, and the next call
    /// opens a new one.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), SyslogError> {
        // A receiver that closed the connection (a restart) leaves it readable at end of file.
        // Writing to it would appear to succeed while the data is lost, so reconnect first.
        // Syslog receivers send nothing, so any readable state means the connection is done.
        if let Some(stream) = &self.stream {
            match stream.try_read(&mut [0u8; 1]) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => self.stream = None,
            }
        }
        if self.stream.is_none() {
            let target = self.target();
            let connect = TcpStream::connect((self.host.as_str(), self.port));
            let stream = tokio::time::timeout(self.connect_timeout, connect)
                .await
                .map_err(|_| SyslogError::ConnectTimeout {
                    target: target.clone(),
                })?
                .map_err(|source| SyslogError::Connect { target, source })?;
            let _ = stream.set_nodelay(true);
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        let result = match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(SyslogError::Write {
                target: self.target(),
                source,
            }),
            Err(_) => Err(SyslogError::WriteTimeout {
                target: self.target(),
            }),
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    /// Closes the connection cleanly.
    pub async fn close(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            let _ = stream.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{EndpointIndex, Enricher};
    use crate::flow::calico;

    #[test]
    fn header_and_octet_counting() {
        let config: SyslogConfig = serde_yaml::from_str("{host: h, port: 514}").unwrap();
        let framer = SyslogFramer::new(&config, "node-a");
        let record = Enricher::default().enrich(
            calico::parse_str(
                r#"{"start_time":1,"end_time":2,"proto":"tcp","action":"deny","reporter":"src"}"#,
            )
            .unwrap(),
            &EndpointIndex::default(),
        );
        let mut message = Vec::new();
        framer.header(&record, "2025-01-15T10:22:33.123Z", &mut message);
        message.extend_from_slice("CEF:0|x|é".as_bytes());
        let mut out = Vec::new();
        SyslogFramer::frame(&message, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "69 <133>1 2025-01-15T10:22:33.123Z node-a threatflow - flow - CEF:0|x|é"
        );
        assert_eq!(message.len(), 69);
        let framer = SyslogFramer::new(&config, "has space");
        let mut message = Vec::new();
        framer.header(&record, "T", &mut message);
        assert_eq!(
            String::from_utf8(message).unwrap(),
            "<133>1 T - threatflow - flow - "
        );
    }
}
