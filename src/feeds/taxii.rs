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
use super::fetch::{Fetcher, Validators};
use super::format::ParsedFeed;
use super::source::{content, encode_query, with_slash, SourceError};
use super::stix::{self, BundleError, Indicator, StixRead};

/// TAXII 2.1's media type, asked for in `Accept`.
pub const TAXII_MEDIA_TYPE: &str = "application/taxii+json;version=2.1";

/// The most pages one pull reads; a collection that keeps answering `more` past this is cut
/// there and continued at the next pull.
pub const MAX_PAGES: usize = 10_000;

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
pub struct TaxiiSource {
    url: String,
    settings: TaxiiConfig,
    /// Authorization headers from the config, and `Accept`.
    headers: Vec<(String, String)>,
    objects_url: Option<String>,
    /// Where the next pull goes on from.
    added_after: Option<String>,
    /// Indicator id -> its latest version's `modified` (epoch ms), and its addresses while it
    /// can still count (`None` once revoked, expired or not an address: only the version is
    /// kept, so an older copy read later cannot bring it back).
    indicators: BTreeMap<String, (Option<i64>, Option<Indicator>)>,
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
        let mut pages = 0;
        loop {
            if pages == MAX_PAGES {
                tracing::warn!(
                    pages,
                    "a TAXII pull stopped at the page cap; the next pull goes on from there"
                );
                break;
            }
            pages += 1;
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
            let indicators = &mut self.indicators;
            let envelope = stix::read_objects(body.as_slice(), |object| {
                let Some(indicator) = object.indicator() else {
                    return;
                };
                read.add(indicator.as_ref().map_err(|reason| *reason), now_ms);
                let modified = object.modified.as_deref().and_then(stix::timestamp_ms);
                let newer = indicators
                    .get(&object.id)
                    .is_none_or(|(known, _)| *known <= modified);
                if newer {
                    let live = indicator.ok().filter(|indicator| {
                        !indicator.revoked
                            && indicator.valid_until_ms.is_none_or(|until| until > now_ms)
                    });
                    indicators.insert(object.id.clone(), (modified, live));
                }
            })?;
            let moved_by_date = date_added_last.is_some() && date_added_last != added_after;
            if let Some(last) = date_added_last {
                added_after = Some(last);
            }
            if !envelope.more {
                break;
            }
            // `more` must come with a way on: a new `next`, or a later Date-Added-Last.
            let moved_by_token = envelope.next.is_some() && envelope.next != next;
            if !(moved_by_token || (envelope.next.is_none() && moved_by_date)) {
                self.added_after = added_after;
                return Err(SourceError::StuckPaging);
            }
            next = envelope.next;
        }
        self.added_after = added_after;
        // The set in force: every known indicator's latest version, if it counts now.
        let mut in_force = StixRead::default();
        for indicator in self
            .indicators
            .values()
            .filter_map(|(_, live)| live.as_ref())
        {
            if indicator.outcome(now_ms) == stix::Outcome::Ip {
                in_force.add(Ok(indicator), now_ms);
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
            serde_json::from_slice(&body).map_err(|source| SourceError::NotPremium {
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
        let unpacked = std::io::BufReader::with_capacity(
            64 * 1024,
            flate2::read::GzDecoder::new(compressed.as_slice()),
        )
        .take(max_body_bytes);
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
