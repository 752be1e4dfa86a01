//! Indicator sources that are not one list at a URL: a TAXII 2.1 collection, and FortiGuard's
//! Premium API feed (FortiGate ISDB services are in [`super::isdb`]). Both yield STIX 2.1 indicators, read by [`super::stix`], and hand the
//! sync the same [`ParsedFeed`] a list does: the guards, rendering, publication, status and
//! threat matching that follow are the same for every feed.
//!
//! TAXII: the API root (from discovery, or `url` itself), the collection by id or title, then
//! `GET .../collections/{id}/objects/` page by page (`limit`, `next`, or `added_after` from
//! `X-TAXII-Date-Added-Last` when the server gives no `next`). The first pull reads the whole
//! collection; later pulls ask only for what was added since. The set in force is every
//! indicator known, each in its latest version, that is neither revoked nor expired now: a
//! new version that revokes an indicator, or its `valid_until` passing, takes it out.
//!
//! FortiGuard Premium: `GET {url}/v1/cti/feed/stix2?cc=<countries>` with the `Token` header
//! answers a download URL; the download (a pre-signed URL, so the token is not sent there) is
//! a gzip-compressed STIX bundle, unpacked with the body cap applied to what it unpacks to.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;

use super::config::{FortiguardConfig, TaxiiConfig};
use super::fetch::{FetchError, Fetched, Fetcher, Validators};
use super::format::ParsedFeed;
use super::stix::{self, BundleError, Indicator, StixRead, Unsupported};

/// TAXII 2.1's media type, asked for in `Accept`.
pub const TAXII_MEDIA_TYPE: &str = "application/taxii+json;version=2.1";

/// The most pages one pull reads; a collection that keeps answering `more` past this is cut
/// there and continued at the next pull.
pub const MAX_PAGES: usize = 10_000;

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
            SourceError::Gzip { .. } => "too_large",
            SourceError::Bundle(_) => "format",
            SourceError::NotFortiOs { .. } => "protocol",
            SourceError::UnknownService { .. } => "unknown_service",
            SourceError::NoIpv6 { .. } => "version",
            SourceError::EmptyService { .. } => "empty",
        }
    }
}

#[derive(Deserialize)]
struct Discovery {
    default: Option<String>,
    #[serde(default)]
    api_roots: Vec<String>,
}

#[derive(Deserialize)]
struct Collections {
    #[serde(default)]
    collections: Vec<Collection>,
}

#[derive(Deserialize)]
struct Collection {
    id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    can_read: bool,
}

/// A TAXII 2.1 collection, with the indicators read so far.
#[derive(Debug)]
pub struct TaxiiSource {
    url: String,
    settings: TaxiiConfig,
    /// Authorization headers from the config, and `Accept`.
    headers: Vec<(String, String)>,
    objects_url: Option<String>,
    /// Where the next pull goes on from.
    added_after: Option<String>,
    /// Indicator id -> its latest version's `modified` and addresses (or why none).
    indicators: BTreeMap<String, (Option<String>, Result<Indicator, Unsupported>)>,
}

impl TaxiiSource {
    pub fn new(url: &str, settings: &TaxiiConfig, headers: &[(String, String)]) -> TaxiiSource {
        let mut headers = headers.to_vec();
        headers.push(("Accept".into(), TAXII_MEDIA_TYPE.into()));
        TaxiiSource {
            url: with_slash(url),
            settings: settings.clone(),
            headers,
            objects_url: None,
            added_after: None,
            indicators: BTreeMap::new(),
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        fetcher: &Fetcher,
        url: &str,
    ) -> Result<T, SourceError> {
        let body = content(
            fetcher
                .fetch(url, &self.headers, &Validators::default())
                .await?,
        )
        .0;
        serde_json::from_slice(&body).map_err(|source| SourceError::NotTaxii {
            url: crate::net::http::redact_url(url),
            source,
        })
    }

    /// The collection's objects URL: from discovery (or `url` as the API root), then the
    /// collection by id or title.
    async fn objects_url(&mut self, fetcher: &Fetcher) -> Result<String, SourceError> {
        if let Some(url) = &self.objects_url {
            return Ok(url.clone());
        }
        let api_root = match &self.settings.api_root {
            Some(root) => with_slash(root),
            None => {
                let document: serde_json::Value = self.get_json(fetcher, &self.url).await?;
                match serde_json::from_value::<Discovery>(document) {
                    Ok(discovery)
                        if discovery.default.is_some() || !discovery.api_roots.is_empty() =>
                    {
                        with_slash(
                            discovery
                                .default
                                .as_deref()
                                .or(discovery.api_roots.first().map(String::as_str))
                                .unwrap_or_default(),
                        )
                    }
                    // Not a discovery document: `url` is the API root.
                    _ => self.url.clone(),
                }
            }
        };
        let collections: Collections = self
            .get_json(fetcher, &format!("{api_root}collections/"))
            .await?;
        let wanted = &self.settings.collection;
        let Some(collection) = collections
            .collections
            .iter()
            .find(|collection| collection.id == *wanted)
            .or_else(|| {
                collections
                    .collections
                    .iter()
                    .find(|collection| collection.title == *wanted)
            })
        else {
            return Err(SourceError::NoCollection {
                collection: wanted.clone(),
                api_root: crate::net::http::redact_url(&api_root),
                found: collections
                    .collections
                    .iter()
                    .map(|collection| format!("{} ({})", collection.id, collection.title))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        if !collection.can_read {
            return Err(SourceError::Unreadable {
                collection: wanted.clone(),
            });
        }
        let url = format!("{api_root}collections/{}/objects/", collection.id);
        self.objects_url = Some(url.clone());
        Ok(url)
    }

    /// Reads what was added since the last pull, and answers the set in force at `now_ms`
    /// with this pull's indicators counted by outcome.
    pub async fn pull(
        &mut self,
        fetcher: &Fetcher,
        now_ms: i64,
    ) -> Result<ParsedFeed, SourceError> {
        let objects_url = self.objects_url(fetcher).await?;
        let mut read = StixRead::default();
        let mut next: Option<String> = None;
        let mut added_after = self.added_after.clone();
        for _ in 0..MAX_PAGES {
            let mut query = vec![("limit", self.settings.page_size.to_string())];
            match (&next, &added_after) {
                (Some(token), _) => query.push(("next", token.clone())),
                (None, Some(after)) => query.push(("added_after", after.clone())),
                (None, None) => {}
            }
            let url = format!("{objects_url}?{}", encode_query(&query));
            let (body, date_added_last) = content(
                fetcher
                    .fetch(&url, &self.headers, &Validators::default())
                    .await?,
            );
            let envelope = stix::read_objects(body.as_slice(), |object| {
                let Some(indicator) = object.indicator() else {
                    return;
                };
                read.add(indicator.as_ref().map_err(|reason| *reason), now_ms);
                let newer = self
                    .indicators
                    .get(&object.id)
                    .is_none_or(|(modified, _)| *modified <= object.modified);
                if newer {
                    self.indicators
                        .insert(object.id.clone(), (object.modified.clone(), indicator));
                }
            })?;
            if let Some(last) = date_added_last {
                added_after = Some(last);
            }
            if !envelope.more {
                break;
            }
            next = envelope.next;
        }
        self.added_after = added_after;
        // The set in force: every known indicator's latest version, if it counts now.
        let mut in_force = StixRead::default();
        for (_, indicator) in self.indicators.values() {
            if let Ok(indicator) = indicator {
                if indicator.outcome(now_ms) == stix::Outcome::Ip {
                    in_force.add(Ok(indicator), now_ms);
                }
            }
        }
        let mut feed = in_force.feed;
        // The counts are this pull's: what was read, and what became of it.
        feed.entries = read.feed.entries;
        feed.indicators = read.into_feed().indicators;
        Ok(feed)
    }
}

/// FortiGuard's Premium API feed.
#[derive(Debug)]
pub struct PremiumSource {
    feed_url: String,
    headers: Vec<(String, String)>,
}

#[derive(Deserialize)]
struct Download {
    data: String,
}

impl PremiumSource {
    pub fn new(
        url: &str,
        settings: &FortiguardConfig,
        headers: &[(String, String)],
    ) -> PremiumSource {
        let base = url.trim_end_matches('/');
        let countries = encode_query(&[("cc", settings.countries.clone())]);
        PremiumSource {
            feed_url: format!("{base}/v1/cti/feed/stix2?{countries}"),
            headers: headers.to_vec(),
        }
    }

    /// Asks for today's download URL, downloads and unpacks the bundle, and reads it.
    pub async fn pull(
        &self,
        fetcher: &Fetcher,
        max_body_bytes: u64,
        now_ms: i64,
    ) -> Result<ParsedFeed, SourceError> {
        let (body, _) = content(
            fetcher
                .fetch(&self.feed_url, &self.headers, &Validators::default())
                .await?,
        );
        let downloads: Vec<Download> =
            serde_json::from_slice(&body).map_err(|source| SourceError::NotTaxii {
                url: crate::net::http::redact_url(&self.feed_url),
                source,
            })?;
        let download = downloads.first().ok_or(SourceError::NoDownload)?;
        if !download.data.starts_with("https://") {
            return Err(SourceError::NoDownload);
        }
        // A pre-signed URL: the token stays with the API.
        let (compressed, _) = content(
            fetcher
                .fetch(&download.data, &[], &Validators::default())
                .await?,
        );
        let unpacked = flate2::read::GzDecoder::new(compressed.as_slice()).take(max_body_bytes);
        let mut counted = CountingReader {
            inner: unpacked,
            read: 0,
        };
        let read = stix::read_bundle(&mut counted, now_ms);
        if counted.read >= max_body_bytes {
            return Err(SourceError::Gzip {
                limit: max_body_bytes,
                source: std::io::Error::other("the unpacked bundle reaches max_body_bytes"),
            });
        }
        match read {
            Ok(read) => Ok(read.into_feed()),
            Err(BundleError(error)) if error.is_io() => Err(SourceError::Gzip {
                limit: max_body_bytes,
                source: std::io::Error::other(error),
            }),
            Err(error) => Err(error.into()),
        }
    }
}

/// Counts the bytes read through it (to tell a bundle cut by the cap from a whole one).
struct CountingReader<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// The body (and TAXII date header) of a fetch made without validators.
fn content(fetched: Fetched) -> (Vec<u8>, Option<String>) {
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

fn with_slash(url: &str) -> String {
    match url.ends_with('/') {
        true => url.to_owned(),
        false => format!("{url}/"),
    }
}

/// `key=value&...`, percent-encoded.
fn encode_query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={}", percent(value)))
        .collect::<Vec<_>>()
        .join("&")
}

pub(super) fn percent(text: &str) -> String {
    let mut out = String::new();
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
