//! The HTTP client every outbound HTTP caller builds on (feeds, firewall APIs): connect and
//! total timeouts, TLS from [`super::tls`], no redirect from https to plain http, a cap on
//! every body after decompression, header values marked sensitive so they never reach a log,
//! and URLs redacted before they are shown.

use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::tls::{self, TlsError, TlsSettings, Trust};

/// How a client connects.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    /// Limit for one request, body included.
    pub timeout: Duration,
    pub tls: TlsSettings,
    pub trust: Trust,
    /// Names the client in the warning logged when TLS verification is off.
    pub client: String,
}

/// A device's API URL: `https://host[:port]`, without credentials or a query (those come from
/// their own settings).
pub fn check_https(path: String, url: &str, problems: &mut crate::problems::Problems) {
    match reqwest::Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "https" && parsed.host().is_some() => {
            if !parsed.username().is_empty()
                || parsed.password().is_some()
                || parsed.query().is_some()
            {
                problems.push(path, "must not carry credentials or a query: credentials come from their own settings");
            }
        }
        Ok(_) => problems.push(
            path,
            format!(
                "`{url}` must be an https:// URL: credentials would cross the network in clear"
            ),
        ),
        Err(error) => problems.push(path, format!("`{url}` is not a URL: {error}")),
    }
}

impl HttpSettings {
    /// A device's API client: TLS verified against `tls`'s CA file or the system's roots, 10 s
    /// to connect, `timeout_secs` per request; `client` names it in logs.
    pub fn verified(client: String, tls: &TlsSettings, timeout_secs: u64) -> HttpSettings {
        HttpSettings {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(timeout_secs),
            tls: tls.clone(),
            trust: Trust::CaFileOrSystem,
            client,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            tls: TlsSettings::default(),
            trust: Trust::CaFileOrSystem,
            client: "http".into(),
        }
    }
}

/// A client could not be built, or a response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot set up TLS")]
    Tls(#[from] TlsError),
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("header `{name}` is not a valid HTTP header")]
    Header { name: String },
}

impl HttpError {
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Tls(error) => error.kind(),
            HttpError::Client(_) => "client",
            HttpError::Header { .. } => "header",
        }
    }
}

/// Builds a client. Connections are kept alive between requests.
/// Percent-encodes a path segment or a query value: everything but unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

pub fn client(settings: &HttpSettings) -> Result<reqwest::Client, HttpError> {
    client_with_redirects(settings, false)
}

/// A client as [`client`] makes; with `same_host_only`, redirects to another host are refused
/// too, for requests that carry a secret header a redirect must not take elsewhere (reqwest
/// drops only the standard ones, such as `Authorization`, on such a redirect).
pub fn client_with_redirects(
    settings: &HttpSettings,
    same_host_only: bool,
) -> Result<reqwest::Client, HttpError> {
    tls::install_provider();
    let tls = tls::client_config(&settings.tls, settings.trust, &settings.client)?;
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .user_agent(concat!("threatflow/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            // Never let a redirect take TLS away.
            let downgrade = attempt.previous().iter().any(|url| url.scheme() == "https")
                && attempt.url().scheme() != "https";
            let elsewhere = same_host_only
                && attempt
                    .previous()
                    .first()
                    .is_some_and(|first| first.host_str() != attempt.url().host_str());
            if downgrade {
                attempt.error("refusing to follow a redirect from https to plain http")
            } else if elsewhere {
                attempt.error("refusing to follow a redirect to another host with a secret header")
            } else if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(HttpError::Client)
}

/// Reading a body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the body timed out")]
    Timeout,
    #[error("the body ended early or could not be decoded")]
    Broken(#[source] reqwest::Error),
}

impl BodyError {
    pub fn kind(&self) -> &'static str {
        match self {
            BodyError::TooLarge { .. } => "too_large",
            BodyError::Timeout => "timeout",
            BodyError::Broken(_) => "body",
        }
    }
}

/// Reads a response's body, refusing more than `limit` bytes (after decompression) without
/// holding them.
pub async fn read_body(response: reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| match error.is_timeout() {
            true => BodyError::Timeout,
            false => BodyError::Broken(error),
        })?;
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Headers whose values are secrets (tokens, keys): marked sensitive, so neither reqwest nor
/// a `Debug` print shows them.
pub fn secret_headers(headers: &[(String, String)]) -> Result<HeaderMap, HttpError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let header_error = || HttpError::Header { name: name.clone() };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| header_error())?;
        let mut value = HeaderValue::from_str(value).map_err(|_| header_error())?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
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

/// A response's `Retry-After`, as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_retry_after)
}

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
    fn secret_header_values_are_sensitive() {
        let map = secret_headers(&[("Authorization".into(), "Bearer s3cret".into())]).unwrap();
        assert!(map["authorization"].is_sensitive());
        assert!(!format!("{map:?}").contains("s3cret"));
        assert!(matches!(
            secret_headers(&[("bad header".into(), "x".into())]),
            Err(HttpError::Header { .. })
        ));
    }
}
