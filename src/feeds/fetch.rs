//! Fetching a feed: the HTTP edge.
//!
//! One request per sync: conditional (`If-None-Match` / `If-Modified-Since`, so a `304` means
//! no work), bounded (connect and total timeouts, a cap on the body after decompression, so a
//! slow or endless server or a gzip bomb cannot hold memory), and retried with jittered
//! exponential backoff on timeouts, connection failures, `429` and `5xx`, honouring
//! `Retry-After`. TLS certificates are always verified. Header values (tokens) are marked
//! sensitive and never logged, and a request that carries them follows no redirect to another
//! host. `file://` URLs are read from disk with the same size cap.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;

use crate::net::backoff::Backoff;
use crate::net::http::{self, redact_url, BodyError, HttpError, HttpSettings};

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
        /// `X-TAXII-Date-Added-Last`: where an incremental TAXII pull goes on from.
        date_added_last: Option<String>,
    },
}

/// How fetches behave.
#[derive(Clone, Debug)]
pub struct FetchSettings {
    /// Timeouts and TLS.
    pub http: HttpSettings,
    pub max_body_bytes: u64,
    /// Attempts after the first.
    pub retries: u32,
    /// First backoff; doubles each retry, with jitter, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            http: HttpSettings {
                client: "feeds".into(),
                ..HttpSettings::default()
            },
            max_body_bytes: 64 * 1024 * 1024,
            retries: 3,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(120),
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
    #[error(transparent)]
    Http(#[from] HttpError),
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
            FetchError::Http(error) => error.kind(),
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
    /// For requests with secret headers: redirects stay on the same host.
    guarded: reqwest::Client,
    settings: FetchSettings,
}

impl Fetcher {
    pub fn new(settings: FetchSettings) -> Result<Fetcher, FetchError> {
        let client = http::client(&settings.http)?;
        let guarded = http::client_with_redirects(&settings.http, true)?;
        Ok(Fetcher {
            client,
            guarded,
            settings,
        })
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
        let secret = !headers.is_empty();
        let headers = request_headers(headers, validators)?;
        let conditional = validators.etag.is_some() || validators.last_modified.is_some();
        let mut attempt = 0;
        loop {
            let result = self
                .attempt(url, &shown, headers.clone(), conditional, secret)
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
        Backoff::delay(self.settings.backoff, self.settings.max_backoff, attempt)
    }

    /// One request; on failure, also the server's `Retry-After`, if it sent one.
    async fn attempt(
        &self,
        url: &str,
        shown: &str,
        headers: HeaderMap,
        conditional: bool,
        secret: bool,
    ) -> Result<Fetched, (FetchError, Option<Duration>)> {
        let url_text = || shown.to_owned();
        let client = if secret { &self.guarded } else { &self.client };
        let response = client
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
            let retry_after = http::retry_after(response.headers());
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
        let date_added_last = header_text(reqwest::header::HeaderName::from_static(
            "x-taxii-date-added-last",
        ));
        let limit = self.settings.max_body_bytes;
        let body = http::read_body(response, limit).await.map_err(|error| {
            let error = match error {
                BodyError::TooLarge { limit } => FetchError::TooLarge {
                    url: url_text(),
                    limit,
                },
                BodyError::Timeout => FetchError::Timeout { url: url_text() },
                BodyError::Broken(source) => FetchError::Body {
                    url: url_text(),
                    source,
                },
            };
            (error, None)
        })?;
        Ok(Fetched::Content {
            body,
            validators,
            date_added_last,
        })
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
            date_added_last: None,
        })
    }
}

fn request_headers(
    headers: &[(String, String)],
    validators: &Validators,
) -> Result<HeaderMap, FetchError> {
    let mut map = http::secret_headers(headers)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
            Err(FetchError::Http(HttpError::Header { .. }))
        ));
    }
}
