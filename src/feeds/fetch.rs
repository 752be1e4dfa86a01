//! Fetching a feed: the HTTP edge.
//!
//! One request per sync: conditional (`If-None-Match` / `If-Modified-Since`, so a `304` means
//! no work), bounded (connect and total timeouts, a cap on the body after decompression, so a
//! slow or endless server or a gzip bomb cannot hold memory), and retried with jittered
//! exponential backoff on timeouts, connection failures, `429` and `5xx`, honouring
//! `Retry-After`. TLS certificates are always verified. Header values (tokens) are marked
//! sensitive and never logged. `file://` URLs are read from disk with the same size cap.

use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;

/// Cache validators from the last successful fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// What a fetch returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The server says the content did not change.
    NotModified,
    Content {
        body: Vec<u8>,
        validators: Validators,
    },
}

/// How fetches behave.
#[derive(Clone, Debug)]
pub struct FetchSettings {
    pub connect_timeout: Duration,
    /// Limit for one attempt, body included.
    pub timeout: Duration,
    pub max_body_bytes: u64,
    /// Attempts after the first.
    pub retries: u32,
    /// First backoff; doubles each retry, with jitter, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// CA certificates trusted besides the system's (feeds served under an internal PKI).
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            max_body_bytes: 64 * 1024 * 1024,
            retries: 3,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(120),
            extra_roots: Vec::new(),
        }
    }
}

/// A fetch failed; `kind()` is the metric label. Display never includes header values.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the request to {url} failed")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} timed out")]
    Timeout { url: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url} sent more than {limit} bytes (max_body_bytes)")]
    TooLarge { url: String, limit: u64 },
    #[error("{url} sent an HTML page, not a feed (a login or error page?)")]
    Html { url: String },
    #[error("the body from {url} ended early or could not be decoded")]
    Body {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot read {path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{url}` is not an http, https or file URL")]
    Url { url: String },
    #[error("header `{name}` is not a valid HTTP header")]
    Header { name: String },
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl FetchError {
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Request { .. } => "request",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Status { .. } => "status",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Html { .. } => "html",
            FetchError::Body { .. } => "body",
            FetchError::File { .. } => "file",
            FetchError::Url { .. } => "url",
            FetchError::Header { .. } => "header",
            FetchError::Client(_) => "client",
        }
    }

    /// Whether trying again may help.
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Timeout { .. } | FetchError::Request { .. } | FetchError::Body { .. } => {
                true
            }
            FetchError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// Fetches feeds. One per process; it keeps connections alive between syncs.
#[derive(Clone, Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    settings: FetchSettings,
}

impl Fetcher {
    pub fn new(settings: FetchSettings) -> Result<Fetcher, FetchError> {
        // The process-wide TLS provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .user_agent(concat!("threatflow/", env!("CARGO_PKG_VERSION")))
            .tls_certs_merge(settings.extra_roots.clone())
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                // Never let a redirect take TLS away from a feed.
                let downgrade = attempt.previous().iter().any(|url| url.scheme() == "https")
                    && attempt.url().scheme() != "https";
                if downgrade {
                    attempt.error("refusing to follow a redirect from https to plain http")
                } else if attempt.previous().len() >= 5 {
                    attempt.error("too many redirects")
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(FetchError::Client)?;
        Ok(Fetcher { client, settings })
    }

    /// Fetches `url`, retrying transient failures.
    pub async fn fetch(
        &self,
        url: &str,
        headers: &[(String, String)],
        validators: &Validators,
    ) -> Result<Fetched, FetchError> {
        if let Some(path) = url.strip_prefix("file://") {
            return self.read_file(path).await;
        }
        let shown = redact_url(url);
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(FetchError::Url { url: shown });
        }
        let headers = request_headers(headers, validators)?;
        let conditional = validators.etag.is_some() || validators.last_modified.is_some();
        let mut attempt = 0;
        loop {
            let result = self
                .attempt(url, &shown, headers.clone(), conditional)
                .await;
            match result {
                Err((error, retry_after))
                    if error.is_transient() && attempt < self.settings.retries =>
                {
                    let delay = retry_after
                        .unwrap_or_else(|| self.backoff(attempt))
                        .min(self.settings.max_backoff);
                    tracing::warn!(url = %shown, error = %error, attempt = attempt + 1, retry_in_ms = delay.as_millis() as u64, "feed fetch failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err((error, _)) => return Err(error),
                Ok(fetched) => return Ok(fetched),
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.settings.backoff.saturating_mul(1 << attempt.min(16));
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        // Between half and all of the ceiling.
        ceiling / 2 + ceiling.mul_f64(f64::from(nanos % 1000) / 2000.0)
    }

    /// One request; on failure, also the server's `Retry-After`, if it sent one.
    async fn attempt(
        &self,
        url: &str,
        shown: &str,
        headers: HeaderMap,
        conditional: bool,
    ) -> Result<Fetched, (FetchError, Option<Duration>)> {
        let url_text = || shown.to_owned();
        let response = self
            .client
            .get(url)
            .headers(headers)
            .send()
            .await
            .map_err(|source| {
                let error = if source.is_timeout() {
                    FetchError::Timeout { url: url_text() }
                } else {
                    FetchError::Request {
                        url: url_text(),
                        source,
                    }
                };
                (error, None)
            })?;
        let status = response.status();
        // A 304 answers only a conditional request; to any other it is a broken server.
        if status == StatusCode::NOT_MODIFIED && conditional {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(parse_retry_after);
            return Err((
                FetchError::Status {
                    url: url_text(),
                    status,
                },
                retry_after,
            ));
        }
        let is_html = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|content_type| {
                content_type
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("text/html")
            });
        if is_html {
            return Err((FetchError::Html { url: url_text() }, None));
        }
        let header_text = |name| {
            response
                .headers()
                .get(name)
                .and_then(|value: &HeaderValue| value.to_str().ok())
                .map(str::to_owned)
        };
        let validators = Validators {
            etag: header_text(reqwest::header::ETAG),
            last_modified: header_text(reqwest::header::LAST_MODIFIED),
        };
        let limit = self.settings.max_body_bytes;
        if response
            .content_length()
            .is_some_and(|length| length > limit)
        {
            return Err((
                FetchError::TooLarge {
                    url: url_text(),
                    limit,
                },
                None,
            ));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| {
                let error = if source.is_timeout() {
                    FetchError::Timeout { url: url_text() }
                } else {
                    FetchError::Body {
                        url: url_text(),
                        source,
                    }
                };
                (error, None)
            })?;
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err((
                    FetchError::TooLarge {
                        url: url_text(),
                        limit,
                    },
                    None,
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched::Content { body, validators })
    }

    async fn read_file(&self, path: &str) -> Result<Fetched, FetchError> {
        let file_error = |source| FetchError::File {
            path: path.to_owned(),
            source,
        };
        let metadata = tokio::fs::metadata(path).await.map_err(file_error)?;
        let limit = self.settings.max_body_bytes;
        if metadata.len() > limit {
            return Err(FetchError::TooLarge {
                url: format!("file://{path}"),
                limit,
            });
        }
        let body = tokio::fs::read(path).await.map_err(file_error)?;
        Ok(Fetched::Content {
            body,
            validators: Validators::default(),
        })
    }
}

/// A URL as it may appear in logs and status: without user information or query string, which
/// can carry credentials.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let redacted_query = if url.contains('?') { "?…" } else { "" };
    if scheme.is_empty() {
        format!("{host}/{path}{redacted_query}")
    } else {
        format!("{scheme}://{host}/{path}{redacted_query}")
    }
}

fn request_headers(
    headers: &[(String, String)],
    validators: &Validators,
) -> Result<HeaderMap, FetchError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let header_error = || FetchError::Header { name: name.clone() };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| header_error())?;
        let mut value = HeaderValue::from_str(value).map_err(|_| header_error())?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    let mut validator = |name, value: &Option<String>| {
        if let Some(value) = value
            .as_deref()
            .and_then(|value| HeaderValue::from_str(value).ok())
        {
            map.insert(name, value);
        }
    };
    validator(reqwest::header::IF_NONE_MATCH, &validators.etag);
    validator(
        reqwest::header::IF_MODIFIED_SINCE,
        &validators.last_modified,
    );
    Ok(map)
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = humantime::parse_rfc3339_weak(value)
        .ok()
        .or_else(|| httpdate(value))?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP dates take.
fn httpdate(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|name| name == month)?
        + 1;
    let iso = format!("{year}-{month:02}-{day:0>2}T{time}Z");
    humantime::parse_rfc3339(&iso).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://user:pass@feeds.example.com/list.txt?key=s3cret"),
            "https://feeds.example.com/list.txt?…"
        );
        assert_eq!(
            redact_url("https://feeds.example.com/list.txt"),
            "https://feeds.example.com/list.txt"
        );
        assert_eq!(
            redact_url("https://feeds.example.com"),
            "https://feeds.example.com/"
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert!(
            parse_retry_after("Fri, 31 Dec 2100 23:59:59 GMT").unwrap()
                > Duration::from_secs(365 * 24 * 3600)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn header_values_are_sensitive_and_validators_sent() {
        let validators = Validators {
            etag: Some("\"abc\"".into()),
            last_modified: Some("Tue, 07 Oct 2025 10:46:43 GMT".into()),
        };
        let map = request_headers(
            &[("Authorization".into(), "Bearer s3cret".into())],
            &validators,
        )
        .unwrap();
        assert!(map["authorization"].is_sensitive());
        assert!(!format!("{map:?}").contains("s3cret"));
        assert_eq!(map["if-none-match"], "\"abc\"");
        assert!(matches!(
            request_headers(&[("bad header".into(), "x".into())], &Validators::default()),
            Err(FetchError::Header { .. })
        ));
    }
}
