//! What the feed sources that are not one list at a URL share: their error, and the small
//! pieces of HTTP they use beside the fetcher.

use super::fetch::{FetchError, Fetched};
use super::stix::BundleError;

/// A pull from a source failed; `kind()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url} did not answer TAXII 2.1 JSON")]
    NotTaxii {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the TAXII server has no collection `{collection}` at {api_root} (it has: {found})")]
    NoCollection {
        collection: String,
        api_root: String,
        found: String,
    },
    #[error("collection `{collection}` cannot be read with these credentials (can_read is false)")]
    Unreadable { collection: String },
    #[error("the Premium API did not answer a download URL")]
    NoDownload,
    #[error("the download is not gzip, or is over max_body_bytes ({limit}) unpacked")]
    Gzip {
        limit: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("the Premium API did not answer JSON ({url})")]
    NotPremium {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the TAXII server answered `more` without moving on (the same `next`, or no new Date-Added-Last)")]
    StuckPaging,
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{url} did not answer FortiOS JSON")]
    NotFortiOs {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the FortiGate has no Internet Service `{service}` (names are as in `config firewall internet-service-name`)")]
    UnknownService { service: String },
    #[error("the FortiGate runs FortiOS {version}: ISDB IPv6 ranges need 7.4 or later (family: ipv4 or both)")]
    NoIpv6 { version: String },
    #[error("through FortiManager: {0}")]
    Relay(crate::firewall::TargetError),
    #[error("Internet Service `{service}` (id {id}) has no addresses on this FortiGate: possibly a reduced ISDB on this model (`config system global` `internet-service-database`); nothing is published")]
    EmptyService { service: String, id: u64 },
}

impl SourceError {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Fetch(error) => error.kind(),
            SourceError::NotTaxii { .. } => "protocol",
            SourceError::NoCollection { .. } | SourceError::Unreadable { .. } => "collection",
            SourceError::NoDownload => "protocol",
            SourceError::Gzip { .. } => "gzip",
            SourceError::NotPremium { .. } => "protocol",
            SourceError::StuckPaging => "protocol",
            SourceError::Bundle(_) => "format",
            SourceError::NotFortiOs { .. } => "protocol",
            SourceError::UnknownService { .. } => "unknown_service",
            SourceError::NoIpv6 { .. } => "version",
            SourceError::EmptyService { .. } => "empty",
            SourceError::Relay(error) => error.kind(),
        }
    }
}

/// The body (and TAXII date header) of a fetch made without validators.
pub(super) fn content(fetched: Fetched) -> (Vec<u8>, Option<String>) {
    match fetched {
        Fetched::Content {
            body,
            date_added_last,
            ..
        } => (body, date_added_last),
        // Only a conditional request is answered 304, and these are not conditional.
        Fetched::NotModified => (Vec::new(), None),
    }
}

pub(super) fn with_slash(url: &str) -> String {
    match url.ends_with('/') {
        true => url.to_owned(),
        false => format!("{url}/"),
    }
}

/// `key=value&...`, percent-encoded.
pub(super) fn encode_query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={}", crate::net::http::percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode_query(&[
                ("added_after", "2026-12-01T10:00:00.123Z".into()),
                ("next", "a b+c/=".into())
            ]),
            "added_after=2026-12-01T10%3A00%3A00.123Z&next=a%20b%2Bc%2F%3D"
        );
        assert_eq!(with_slash("https://t/api1"), "https://t/api1/");
    }
}
