//! Syslog delivery: RFC 5424 or RFC 3164 headers, RFC 6587 framing (octet counting or LF),
//! and the UDP, TCP and TLS (RFC 5425) transports.
//!
//! The header is built from config values checked to be printable US-ASCII of the RFCs'
//! lengths, and the message is the encoder's output. Octet counting makes a frame transparent
//! to any byte; LF framing relies on the encoders never writing a raw line break (CEF escapes
//! CR and LF, JSON escapes every control character, LEEF replaces them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::enrich::EnrichedRecord;
use crate::flow::record::Action;
pub use crate::net::tls::TlsSettings;
use crate::net::tls::{self, TlsError, Trust};
use crate::problems::{is_host, Problems};

/// A syslog receiver (a SIEM collector, rsyslog, syslog-ng).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The receiver's host name or IP address.
    pub host: String,
    /// The receiver's port (commonly 514 for UDP and TCP, 1470 for FortiSIEM TCP, 6514 for
    /// TLS).
    pub port: u16,
    /// `udp` (one message per datagram; no delivery guarantee), `tcp` or `tls`.
    #[serde(default)]
    pub transport: SyslogTransport,
    /// Stream framing: `octet_counting` (RFC 6587, transparent to any byte; required on TLS)
    /// or `lf` (one message per line). Not used on UDP.
    #[serde(default)]
    pub framing: SyslogFraming,
    /// Header format: `rfc5424` or `rfc3164` (BSD: `<PRI>Mmm dd hh:mm:ss HOST TAG: `, UTC).
    #[serde(default)]
    pub format: SyslogFormat,
    /// The largest message (header and record, without the octet count) to send. A longer
    /// record has its free-text fields (labels, services, policies) shortened, and is dropped
    /// and counted (`oversize`) only if it still does not fit. Default: 1400 on UDP (one
    /// unfragmented datagram), 8192 on TCP and TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<usize>,
    /// TLS settings (with `transport: tls`). Certificates are verified by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    /// RFC 5424 HOSTNAME (RFC 3164 HOST). Defaults to the node name, else this machine's host
    /// name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// RFC 5424 APP-NAME (at most 48 printable ASCII characters); the TAG in RFC 3164 (at
    /// most 32 letters and digits).
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// RFC 5424 MSGID (at most 32 printable ASCII characters).
    #[serde(default = "default_msgid")]
    pub msgid: String,
    /// Syslog facility: `kern`, `user`, ..., `local0` ... `local7`.
    #[serde(default = "default_facility")]
    pub facility: Facility,
    /// How long a connection attempt (with the TLS handshake) may take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// How long a write may wait on a receiver that is not reading before it is reported
    /// (`write_timeout` errors). The connection is kept and the write resumes where it
    /// stopped, so a slow receiver gets no duplicate and no cut frame; a broken connection is
    /// replaced and the whole batch sent again.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// TCP keepalive idle time, so a silently vanished receiver is noticed; 0 turns it off.
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    /// Reconnect after a connection has been open this long, so a load balancer in front of
    /// several collectors spreads the load. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_after_secs: Option<u64>,
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
fn default_keepalive_secs() -> u64 {
    60
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyslogTransport {
    Udp,
    #[default]
    Tcp,
    Tls,
}

impl SyslogTransport {
    pub fn scheme(self) -> &'static str {
        match self {
            SyslogTransport::Udp => "udp",
            SyslogTransport::Tcp => "tcp",
            SyslogTransport::Tls => "tls",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFraming {
    #[default]
    OctetCounting,
    Lf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFormat {
    #[default]
    Rfc5424,
    Rfc3164,
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

/// An RFC 3164 TAG: 1 to 32 letters and digits.
fn is_bsd_tag(value: &str) -> bool {
    !value.is_empty() && value.len() <= 32 && value.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// How long a new TLS connection is watched for a refusal that follows the handshake.
const TLS_SETTLE: Duration = Duration::from_millis(200);

/// The largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;

impl SyslogConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.host.is_empty() {
            problems.push(format!("{path}.host"), "must not be empty");
        } else if !is_host(&self.host) {
            problems.push(
                format!("{path}.host"),
                format!("`{}` is not a host name or IP address", self.host),
            );
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
        match self.format {
            SyslogFormat::Rfc5424 if !is_header_token(&self.app_name, 48) => problems.push(
                format!("{path}.app_name"),
                "must be 1 to 48 printable ASCII characters without spaces",
            ),
            SyslogFormat::Rfc3164 if !is_bsd_tag(&self.app_name) => problems.push(
                format!("{path}.app_name"),
                "is the RFC 3164 TAG here: 1 to 32 letters and digits",
            ),
            _ => {}
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
        if self.reconnect_after_secs == Some(0) {
            problems.push(
                format!("{path}.reconnect_after_secs"),
                "must be at least 1 (leave it out to keep connections open)",
            );
        }
        let ceiling = match self.transport {
            SyslogTransport::Udp => MAX_UDP_PAYLOAD,
            _ => 16 * 1024 * 1024,
        };
        if let Some(max) = self.max_message_bytes {
            if !(480..=ceiling).contains(&max) {
                problems.push(
                    format!("{path}.max_message_bytes"),
                    format!("must be between 480 (what every receiver accepts) and {ceiling}"),
                );
            }
        }
        match (self.transport, &self.tls) {
            (SyslogTransport::Tls, tls) => {
                if self.framing == SyslogFraming::Lf {
                    problems.push(
                        format!("{path}.framing"),
                        "TLS syslog is always octet-counted (RFC 5425); remove `framing: lf`",
                    );
                }
                if let Some(tls) = tls {
                    tls.validate(&format!("{path}.tls"), problems);
                }
            }
            (transport, Some(_)) => problems.push(
                format!("{path}.tls"),
                format!(
                    "TLS settings need `transport: tls` (this is {})",
                    transport.scheme()
                ),
            ),
            _ => {}
        }
    }

    /// The message size limit in force.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes.unwrap_or(match self.transport {
            SyslogTransport::Udp => 1_400,
            _ => 8_192,
        })
    }

    /// `tls://host:port`, for logs and errors.
    pub fn target(&self) -> String {
        format!("{}://{}:{}", self.transport.scheme(), self.host, self.port)
    }
}

/// The send time of a batch, in both header formats.
#[derive(Debug)]
pub struct Timestamps {
    /// RFC 3339 in UTC with milliseconds, for RFC 5424.
    rfc3339: String,
    /// `Mmm dd hh:mm:ss` in UTC (day space-padded), for RFC 3164.
    bsd: String,
}

impl Timestamps {
    pub fn now() -> Timestamps {
        Timestamps::at(jiff::Timestamp::now())
    }

    /// The timestamps of `time` (tests and samples use fixed times).
    pub fn at(time: jiff::Timestamp) -> Timestamps {
        Timestamps {
            rfc3339: time.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            bsd: time.strftime("%b %e %H:%M:%S").to_string(),
        }
    }
}

/// Builds syslog messages and frames them.
#[derive(Debug)]
pub struct SyslogFramer {
    format: SyslogFormat,
    /// `None` on UDP: one message per datagram.
    framing: Option<SyslogFraming>,
    facility: u8,
    /// RFC 5424: ` <HOSTNAME> <APP-NAME> - <MSGID> - `, after the timestamp. RFC 3164:
    /// ` <HOST> <TAG>: `.
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
        let header_tail = match config.format {
            SyslogFormat::Rfc5424 => format!(
                " {} {} - {} - ",
                token(hostname, 255),
                token(&config.app_name, 48),
                token(&config.msgid, 32)
            ),
            SyslogFormat::Rfc3164 => {
                let tag = if is_bsd_tag(&config.app_name) {
                    config.app_name.as_str()
                } else {
                    "threatflow"
                };
                format!(" {} {tag}: ", token(hostname, 255))
            }
        };
        SyslogFramer {
            format: config.format,
            framing: (config.transport != SyslogTransport::Udp).then_some(config.framing),
            facility: config.facility as u8,
            header_tail: header_tail.into_bytes(),
        }
    }

    /// Starts a message for `record` in `message`: the PRI, the timestamp and the rest of the
    /// header.
    pub fn header(&self, record: &EnrichedRecord, time: &Timestamps, message: &mut Vec<u8>) {
        // Allowed flows are informational (6); denied flows and threat matches are notices
        // (5) and warnings (4).
        let severity = match (record.flow.action, record.threat_feeds.is_empty()) {
            (_, false) => 4,
            (Action::Deny, true) => 5,
            (Action::Allow, true) => 6,
        };
        let pri = u16::from(self.facility) * 8 + severity;
        message.push(b'<');
        message.extend_from_slice(itoa::Buffer::new().format(pri).as_bytes());
        match self.format {
            SyslogFormat::Rfc5424 => {
                message.extend_from_slice(b">1 ");
                message.extend_from_slice(time.rfc3339.as_bytes());
            }
            SyslogFormat::Rfc3164 => {
                message.push(b'>');
                message.extend_from_slice(time.bsd.as_bytes());
            }
        }
        message.extend_from_slice(&self.header_tail);
    }

    /// Appends the framed `message` to `out`: `MSG-LEN SP message` (octet counting),
    /// `message LF`, or the bare message (a datagram).
    pub fn frame(&self, message: &[u8], out: &mut Vec<u8>) {
        match self.framing {
            Some(SyslogFraming::OctetCounting) => {
                out.extend_from_slice(itoa::Buffer::new().format(message.len()).as_bytes());
                out.push(b' ');
                out.extend_from_slice(message);
            }
            Some(SyslogFraming::Lf) => {
                out.extend_from_slice(message);
                out.push(b'\n');
            }
            None => out.extend_from_slice(message),
        }
    }
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
    #[error("TLS handshake with {target} failed")]
    Handshake {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing to {target} failed")]
    Write {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{target} has not read for {timeout_ms} ms (a slow or stalled receiver); the connection is kept and the write resumes")]
    WriteTimeout { target: String, timeout_ms: u128 },
}

impl SyslogError {
    pub fn kind(&self) -> &'static str {
        match self {
            SyslogError::Connect { .. } => "connect",
            SyslogError::ConnectTimeout { .. } => "connect_timeout",
            SyslogError::Handshake { .. } => "tls_handshake",
            SyslogError::Write { .. } => "write",
            SyslogError::WriteTimeout { .. } => "write_timeout",
        }
    }
}

/// A connected transport.
#[derive(Debug)]
enum Connection {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Udp(UdpSocket),
}

impl Connection {
    /// Whether the receiver has closed the connection (a restart). Writing to such a
    /// connection appears to succeed while the data is lost. Syslog receivers send nothing,
    /// so any readable state means the connection is done.
    fn is_closed(&self) -> bool {
        let stream = match self {
            Connection::Tcp(stream) => stream,
            Connection::Tls(stream) => stream.get_ref().0,
            Connection::Udp(_) => return false,
        };
        !matches!(stream.try_read(&mut [0u8; 1]), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes `bytes` from `*written` on, advancing `*written` as the receiver takes them,
    /// so a write cut short by a timeout can resume; then flushes.
    async fn write(
        &mut self,
        bytes: &[u8],
        datagrams: &[usize],
        written: &mut usize,
    ) -> std::io::Result<()> {
        let stream: &mut (dyn tokio::io::AsyncWrite + Unpin + Send) = match self {
            Connection::Tcp(stream) => stream,
            Connection::Tls(stream) => stream.as_mut(),
            Connection::Udp(socket) => {
                let mut start = 0;
                for &end in datagrams {
                    socket.send(&bytes[start..end]).await?;
                    start = end;
                }
                return Ok(());
            }
        };
        while *written < bytes.len() {
            match stream.write(&bytes[*written..]).await? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => *written += n,
            }
        }
        stream.flush().await
    }
}

/// A connection to a syslog receiver, opened on first use and after any error.
#[derive(Debug)]
pub struct SyslogClient {
    target: String,
    host: String,
    port: u16,
    transport: SyslogTransport,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    connect_timeout: Duration,
    write_timeout: Duration,
    keepalive: Option<Duration>,
    reconnect_after: Option<Duration>,
    connection: Option<(Connection, Instant)>,
    /// Bytes of the batch being written that the current connection has taken.
    written: usize,
}

impl SyslogClient {
    /// Loads the TLS material, if any; nothing is connected yet.
    pub fn new(config: &SyslogConfig) -> Result<SyslogClient, TlsError> {
        let tls = match config.transport {
            SyslogTransport::Tls => {
                let settings = config.tls.clone().unwrap_or_default();
                let server_name = tls::server_name(&settings, &config.host)?;
                let client = format!("syslog {}", config.target());
                let tls = tls::client_config(&settings, Trust::CaFileOrSystem, &client)?;
                Some((Arc::new(tls), server_name))
            }
            _ => None,
        };
        Ok(SyslogClient {
            target: config.target(),
            host: config.host.clone(),
            port: config.port,
            transport: config.transport,
            tls,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
            keepalive: (config.keepalive_secs > 0)
                .then(|| Duration::from_secs(config.keepalive_secs)),
            reconnect_after: config.reconnect_after_secs.map(Duration::from_secs),
            connection: None,
            written: 0,
        })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Writes and flushes `bytes` (on UDP: one datagram per message, `datagrams` holding
    /// where each ends). Called again with the same bytes after an error: a write that timed
    /// out resumes on the same connection; after any other error the connection is replaced
    /// and the batch sent whole.
    pub async fn write(&mut self, bytes: &[u8], datagrams: &[usize]) -> Result<(), SyslogError> {
        // A periodic reconnect waits for a batch boundary.
        let stale = self.connection.as_ref().is_some_and(|(connection, since)| {
            connection.is_closed()
                || (self.written == 0
                    && self
                        .reconnect_after
                        .is_some_and(|after| since.elapsed() >= after))
        });
        if stale {
            self.close().await;
        }
        if self.connection.is_none() {
            self.written = 0;
            let connection = tokio::time::timeout(self.connect_timeout, self.connect())
                .await
                .map_err(|_| SyslogError::ConnectTimeout {
                    target: self.target.clone(),
                })??;
            self.connection = Some((connection, Instant::now()));
        }
        let (connection, _) = self.connection.as_mut().expect("connected above");
        let written = &mut self.written;
        match tokio::time::timeout(
            self.write_timeout,
            connection.write(bytes, datagrams, written),
        )
        .await
        {
            Ok(Ok(())) => {
                self.written = 0;
                Ok(())
            }
            Ok(Err(source)) => {
                self.connection = None;
                self.written = 0;
                Err(SyslogError::Write {
                    target: self.target.clone(),
                    source,
                })
            }
            Err(_) => Err(SyslogError::WriteTimeout {
                target: self.target.clone(),
                timeout_ms: self.write_timeout.as_millis(),
            }),
        }
    }

    async fn connect(&self) -> Result<Connection, SyslogError> {
        let connect_error = |source| SyslogError::Connect {
            target: self.target.clone(),
            source,
        };
        let address = (self.host.as_str(), self.port);
        if self.transport == SyslogTransport::Udp {
            let remote = tokio::net::lookup_host(address)
                .await
                .map_err(connect_error)?
                .next()
                .ok_or_else(|| connect_error(std::io::Error::other("no address found")))?;
            let local: std::net::SocketAddr = match remote {
                std::net::SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
                std::net::SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = UdpSocket::bind(local).await.map_err(connect_error)?;
            socket.connect(remote).await.map_err(connect_error)?;
            return Ok(Connection::Udp(socket));
        }
        let stream = TcpStream::connect(address).await.map_err(connect_error)?;
        let _ = stream.set_nodelay(true);
        if let Some(idle) = self.keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(Duration::from_secs(10));
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        }
        let Some((config, server_name)) = &self.tls else {
            return Ok(Connection::Tcp(stream));
        };
        let handshake_error = |source| SyslogError::Handshake {
            target: self.target.clone(),
            source,
        };
        let mut stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(server_name.clone(), stream)
            .await
            .map_err(handshake_error)?;
        // In TLS 1.3 the receiver checks the client's certificate after the client has
        // finished its handshake, so a refusal arrives as an alert right after it; writing
        // into such a connection would look like success. Wait briefly for one.
        match tokio::time::timeout(TLS_SETTLE, stream.read(&mut [0u8; 1])).await {
            Err(_) | Ok(Ok(1..)) => Ok(Connection::Tls(Box::new(stream))),
            Ok(Ok(0)) => Err(handshake_error(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the receiver closed the connection right after the handshake (does it require a client certificate?)",
            ))),
            Ok(Err(source)) => Err(handshake_error(source)),
        }
    }

    /// Closes the connection cleanly (TLS: with close_notify).
    pub async fn close(&mut self) {
        match self.connection.take() {
            Some((Connection::Tcp(mut stream), _)) => {
                let _ = stream.shutdown().await;
            }
            Some((Connection::Tls(mut stream), _)) => {
                let _ = stream.shutdown().await;
            }
            Some((Connection::Udp(_), _)) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{EndpointIndex, Enricher};
    use crate::flow::calico;

    fn record() -> EnrichedRecord {
        Enricher::default().enrich(
            calico::parse_str(
                r#"{"start_time":1,"end_time":2,"proto":"tcp","action":"deny","reporter":"src"}"#,
            )
            .unwrap(),
            &EndpointIndex::default(),
        )
    }

    fn time() -> Timestamps {
        Timestamps::at("2025-01-05T10:22:33.123Z".parse().unwrap())
    }

    fn framed(yaml: &str, hostname: &str) -> String {
        let config: SyslogConfig = yaml_serde::from_str(yaml).unwrap();
        let framer = SyslogFramer::new(&config, hostname);
        let mut message = Vec::new();
        framer.header(&record(), &time(), &mut message);
        message.extend_from_slice("CEF:0|x|é".as_bytes());
        let mut out = Vec::new();
        framer.frame(&message, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn headers_and_framings() {
        assert_eq!(
            framed("{host: h, port: 514}", "node-a"),
            "69 <133>1 2025-01-05T10:22:33.123Z node-a threatflow - flow - CEF:0|x|é"
        );
        assert_eq!(
            framed("{host: h, port: 514, framing: lf}", "node-a"),
            "<133>1 2025-01-05T10:22:33.123Z node-a threatflow - flow - CEF:0|x|é\n"
        );
        assert_eq!(
            framed(
                "{host: h, port: 514, transport: udp, framing: lf}",
                "has space"
            ),
            "<133>1 2025-01-05T10:22:33.123Z - threatflow - flow - CEF:0|x|é",
            "a datagram carries the bare message; an invalid hostname becomes `-`"
        );
        assert_eq!(
            framed(
                "{host: h, port: 514, format: rfc3164, facility: local4, framing: lf}",
                "node-a"
            ),
            "<165>Jan  5 10:22:33 node-a threatflow: CEF:0|x|é\n"
        );
    }

    #[test]
    fn validation_reports_every_problem() {
        let config: SyslogConfig = yaml_serde::from_str(
            "{host: '', port: 0, transport: tls, framing: lf, max_message_bytes: 100, reconnect_after_secs: 0, tls: {cert_file: c.pem}}",
        )
        .unwrap();
        let mut problems = Problems::default();
        config.validate("s", &mut problems);
        assert_eq!(
            problems.paths(),
            [
                "s.host",
                "s.port",
                "s.reconnect_after_secs",
                "s.max_message_bytes",
                "s.framing",
                "s.tls"
            ]
        );
        let config: SyslogConfig = yaml_serde::from_str(
            "{host: h, port: 514, transport: udp, format: rfc3164, app_name: 'thr-flow', max_message_bytes: 70000, tls: {}}",
        )
        .unwrap();
        let mut problems = Problems::default();
        config.validate("s", &mut problems);
        assert_eq!(
            problems.paths(),
            ["s.app_name", "s.max_message_bytes", "s.tls"]
        );
        assert_eq!(
            yaml_serde::from_str::<SyslogConfig>("{host: h, port: 514, transport: udp}")
                .unwrap()
                .max_message_bytes(),
            1400
        );
    }

    #[tokio::test]
    async fn periodic_reconnect_waits_for_the_next_batch() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok(Ok((stream, _))) =
                tokio::time::timeout(Duration::from_secs(3), listener.accept()).await
            {
                connections.push(stream);
            }
            connections.len()
        });
        let config: SyslogConfig = yaml_serde::from_str(&format!(
            "{{host: 127.0.0.1, port: {port}, reconnect_after_secs: 1}}"
        ))
        .unwrap();
        let mut client = SyslogClient::new(&config).unwrap();
        client.write(b"3 abc", &[5]).await.unwrap();
        client.write(b"3 def", &[5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        client.write(b"3 ghi", &[5]).await.unwrap();
        client.close().await;
        assert_eq!(accepted.await.unwrap(), 2);
    }

    #[test]
    fn tls_setup_errors_name_the_file() {
        let config: SyslogConfig = yaml_serde::from_str(
            "{host: h, port: 6514, transport: tls, tls: {ca_file: /nonexistent/ca.pem}}",
        )
        .unwrap();
        let error = SyslogClient::new(&config).unwrap_err().to_string();
        assert_eq!(error, "cannot read the CA file /nonexistent/ca.pem");
    }
}
