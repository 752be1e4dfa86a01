//! FortiGuard's Internet Service Database, read from the customer's own FortiGate: one
//! service (Tor exit nodes, botnet C&C servers, malicious servers...) as one feed.
//!
//! 1. The service's ID: the configured ID, or its name looked up in
//!    `cmdb/firewall/internet-service-name` (6.4+), else `cmdb/firewall/internet-service`
//!    (IDs differ between ISDB versions, so names are resolved at every pull).
//! 2. `monitor/firewall/internet-service-details?id=N&summary_only=true` for the total, then
//!    pages of `start`/`count` until the total is reached or a page comes back empty; rows
//!    repeat a range per protocol and port, so ranges are taken once. IPv6 ranges are asked
//!    for with `ipv6_only` (FortiOS 7.4 and later, from the envelope's `version`).
//! 3. If the total moved during the walk (an ISDB update), the walk is made once more.
//!
//! The key goes in `Authorization: Bearer`, never in a URL; requests are paced, and `429`
//! with `Retry-After` is honoured by the fetcher. With `via: fortimanager` the same calls go
//! to FortiManager, which relays each to the device (`exec /sys/proxy/json`) and returns the
//! FortiGate's own reply; a relayed 429 (which carries no `Retry-After`) is tried again after
//! a growing pause. A service with no ranges is reported as
//! possibly a reduced ISDB on this model (`internet-service-database`), never published as an
//! empty set.

use std::collections::BTreeSet;
use std::net::IpAddr;

use std::time::Duration;

use serde::Deserialize;

use super::config::{IsdbConfig, IsdbFamily, IsdbVia};
use super::fetch::{Fetched, Fetcher, Validators};
use super::format::ParsedFeed;
use super::source::SourceError;
use crate::firewall::fortimanager::{FortiManager, FortiManagerSettings};
use crate::firewall::{Credentials, TargetError};
use crate::net::http::HttpSettings;
use crate::net::rate::RateLimit;

/// The most rows one walk reads (a full ISDB service is far below this).
pub const MAX_ROWS: u64 = 5_000_000;

/// How often a relayed call throttled by the FortiGate is tried again, and the first pause.
const RELAY_RETRIES: u32 = 3;
const RELAY_PAUSE: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct Envelope<T> {
    results: T,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Deserialize)]
struct NameRow {
    #[serde(default)]
    name: String,
    #[serde(rename = "internet-service-id", default)]
    id: Option<u64>,
}

#[derive(Deserialize)]
struct ServiceRow {
    #[serde(default)]
    name: String,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Deserialize)]
struct Summary {
    #[serde(default)]
    total: u64,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    entry: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    ip_range: Range,
}

#[derive(Deserialize)]
struct Range {
    start_ip: String,
    end_ip: String,
}

/// One walk of a service's rows.
struct Walk {
    ranges: BTreeSet<(IpAddr, IpAddr)>,
    /// The total changed during the walk (an ISDB update).
    moved: bool,
    rows: u64,
    /// FortiOS's version, from the envelope.
    version: Option<String>,
}

/// How the FortiGate is reached.
enum Reach {
    /// At `base`, with the key in `headers`, through the feed fetcher.
    Direct {
        base: String,
        headers: Vec<(String, String)>,
    },
    /// Through FortiManager's relay to `device`.
    Manager {
        client: Box<FortiManager>,
        device: String,
    },
}

/// One ISDB service on a FortiGate (no `Debug`: it holds the key).
pub struct IsdbSource {
    reach: Reach,
    settings: IsdbConfig,
    pace: RateLimit,
}

impl IsdbSource {
    /// `url` is the FortiGate's, or with `via: fortimanager` the FortiManager's; `api_key` goes
    /// in `Authorization: Bearer`; `http` is how the FortiManager client connects.
    pub fn new(
        url: &str,
        settings: &IsdbConfig,
        api_key: &str,
        http: HttpSettings,
    ) -> Result<IsdbSource, TargetError> {
        let reach = match (settings.via, &settings.device) {
            (IsdbVia::Fortimanager, Some(device)) => Reach::Manager {
                client: Box::new(FortiManager::new(FortiManagerSettings::reader(
                    url,
                    &settings.adom,
                    Credentials::ApiKey(api_key.to_owned()),
                    http,
                ))?),
                device: device.clone(),
            },
            _ => Reach::Direct {
                base: url.trim_end_matches('/').to_owned(),
                headers: vec![("Authorization".into(), format!("Bearer {api_key}"))],
            },
        };
        Ok(IsdbSource {
            reach,
            settings: settings.clone(),
            pace: RateLimit::per_second(settings.requests_per_second),
        })
    }

    /// A FortiOS path with its query (and the VDOM).
    fn resource(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut query: Vec<String> = query
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        if let Some(vdom) = &self.settings.vdom {
            query.push(format!("vdom={}", crate::net::http::percent_encode(vdom)));
        }
        format!("{path}?{}", query.join("&"))
    }

    async fn get<T: for<'de> Deserialize<'de>>(
        &mut self,
        fetcher: &Fetcher,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Envelope<T>, SourceError> {
        self.pace.acquire().await;
        let resource = self.resource(path, query);
        match &mut self.reach {
            Reach::Direct { base, headers } => {
                let url = format!("{base}{resource}");
                let body = match fetcher.fetch(&url, headers, &Validators::default()).await? {
                    Fetched::Content { body, .. } => body,
                    Fetched::NotModified => Vec::new(),
                };
                serde_json::from_slice(&body).map_err(|source| SourceError::NotFortiOs {
                    url: crate::net::http::redact_url(&url),
                    source,
                })
            }
            Reach::Manager { client, device } => {
                let mut pause = RELAY_PAUSE;
                let mut tries = 0;
                let response = loop {
                    match client.relay_get(device, &resource).await {
                        Err(TargetError::Throttled { .. }) if tries < RELAY_RETRIES => {
                            tracing::info!(device = %device, pause_secs = pause.as_secs(), "the FortiGate throttled a relayed call; trying again");
                            tokio::time::sleep(pause).await;
                            pause *= 2;
                            tries += 1;
                        }
                        answer => break answer.map_err(SourceError::Relay)?,
                    }
                };
                serde_json::from_value(response).map_err(|source| SourceError::NotFortiOs {
                    url: format!("{path} on {device} through FortiManager"),
                    source,
                })
            }
        }
    }

    /// The service's ID: configured, or found by name.
    async fn service_id(
        &mut self,
        fetcher: &Fetcher,
    ) -> Result<(u64, Option<String>), SourceError> {
        let service = self.settings.service.clone();
        if let Ok(id) = service.parse::<u64>() {
            return Ok((id, None));
        }
        let names: Envelope<Vec<NameRow>> = self
            .get(fetcher, "/api/v2/cmdb/firewall/internet-service-name", &[])
            .await?;
        let version = names.version.clone();
        if let Some(id) = names
            .results
            .iter()
            .find(|row| row.name == service)
            .and_then(|row| row.id)
        {
            return Ok((id, version));
        }
        let services: Envelope<Vec<ServiceRow>> = self
            .get(fetcher, "/api/v2/cmdb/firewall/internet-service", &[])
            .await?;
        services
            .results
            .iter()
            .find(|row| row.name == service)
            .and_then(|row| row.id)
            .map(|id| (id, version.or(services.version)))
            .ok_or(SourceError::UnknownService { service })
    }

    /// One walk of a service's rows (IPv6 only, or as the FortiGate serves them): the
    /// distinct ranges, and the total before and after.
    async fn walk(
        &mut self,
        fetcher: &Fetcher,
        id: u64,
        ipv6_only: bool,
    ) -> Result<Walk, SourceError> {
        const DETAILS: &str = "/api/v2/monitor/firewall/internet-service-details";
        let mut base = vec![("id", id.to_string())];
        if ipv6_only {
            base.push(("ipv6_only", "true".into()));
        }
        let mut summary_query = base.clone();
        summary_query.push(("summary_only", "true".into()));
        let before: Envelope<Summary> = self.get(fetcher, DETAILS, &summary_query).await?;
        if before.results.total > MAX_ROWS {
            tracing::warn!(
                id,
                total = before.results.total,
                "an ISDB service over the row cap is read in part"
            );
        }
        let total = before.results.total.min(MAX_ROWS);
        let count = u64::from(self.settings.page_size);
        let mut ranges = BTreeSet::new();
        let mut rows = 0;
        let mut start = 0;
        let mut previous_page: Option<Vec<(String, String)>> = None;
        while start < total {
            let mut query = base.clone();
            query.push(("start", start.to_string()));
            query.push(("count", count.to_string()));
            let page: Envelope<Page> = self.get(fetcher, DETAILS, &query).await?;
            if page.results.entry.is_empty() {
                break;
            }
            let this_page: Vec<(String, String)> = page
                .results
                .entry
                .into_iter()
                .map(|row| (row.ip_range.start_ip, row.ip_range.end_ip))
                .collect();
            // A server that ignores `start` sends the same page again: stop there.
            if previous_page.as_ref() == Some(&this_page) {
                break;
            }
            // The server may clamp `count`: go on from what it sent.
            start += this_page.len() as u64;
            for (first, last) in &this_page {
                rows += 1;
                if let (Ok(first), Ok(last)) = (first.parse::<IpAddr>(), last.parse::<IpAddr>()) {
                    ranges.insert((first, last));
                }
            }
            previous_page = Some(this_page);
        }
        if rows < total {
            tracing::warn!(
                id,
                rows,
                total,
                "an ISDB walk ended before the total it announced"
            );
        }
        let after: Envelope<Summary> = self.get(fetcher, DETAILS, &summary_query).await?;
        Ok(Walk {
            ranges,
            moved: before.results.total != after.results.total,
            rows,
            version: before.version,
        })
    }

    /// The service's ranges now, as a feed's entries.
    pub async fn pull(&mut self, fetcher: &Fetcher) -> Result<ParsedFeed, SourceError> {
        let (id, named_version) = self.service_id(fetcher).await?;
        let mut ranges = BTreeSet::new();
        let mut rows = 0;
        let mut version = named_version;
        let mut ipv6_only = false;
        loop {
            let mut walk = self.walk(fetcher, id, ipv6_only).await?;
            // The ISDB was updated during the walk: walk once more.
            if walk.moved {
                walk = self.walk(fetcher, id, ipv6_only).await?;
            }
            ranges.extend(walk.ranges);
            rows += walk.rows;
            version = version.or(walk.version);
            let ipv6_served = version_at_least(version.as_deref(), (7, 4));
            if self.settings.family == IsdbFamily::Ipv6 && !ipv6_served {
                return Err(SourceError::NoIpv6 {
                    version: version.unwrap_or_else(|| "unknown".into()),
                });
            }
            if ipv6_only || self.settings.family == IsdbFamily::Ipv4 || !ipv6_served {
                break;
            }
            ipv6_only = true;
        }
        let mut feed = ParsedFeed {
            entries: rows,
            ..ParsedFeed::default()
        };
        for (first, last) in ranges {
            match (first, last, self.settings.family) {
                (IpAddr::V4(first), IpAddr::V4(last), IsdbFamily::Ipv4 | IsdbFamily::Both)
                    if first <= last =>
                {
                    feed.v4.push((first.into(), last.into()))
                }
                (IpAddr::V6(first), IpAddr::V6(last), IsdbFamily::Ipv6 | IsdbFamily::Both)
                    if first <= last =>
                {
                    feed.v6.push((first.into(), last.into()))
                }
                _ => {}
            }
        }
        if feed.v4.is_empty() && feed.v6.is_empty() {
            return Err(SourceError::EmptyService {
                service: self.settings.service.clone(),
                id,
            });
        }
        Ok(feed)
    }
}

/// Whether a FortiOS `version` (`v7.4.3`) is at least `major.minor`; unknown versions are
/// taken as older.
fn version_at_least(version: Option<&str>, (major, minor): (u32, u32)) -> bool {
    let Some(version) = version else {
        return false;
    };
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(version_at_least(Some("v7.4.0"), (7, 4)));
        assert!(version_at_least(Some("v7.6.1"), (7, 4)));
        assert!(!version_at_least(Some("v7.2.9"), (7, 4)));
        assert!(!version_at_least(None, (7, 4)));
    }
}
