//! The `feeds` and `feed_settings` config sections, and their validation.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::format::FeedFormat;
use crate::problems::Problems;

/// A threat feed to pull and publish.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// A unique name: lower-case letters, digits and `-`. The sets are named
    /// `threatfeed.<name>` and labelled `threatflow.io/feed: <name>`.
    pub name: String,
    /// What the feed is: `url` (a list at `url`, laid out as `format` says), `taxii` (a TAXII
    /// 2.1 collection: `url` is the server's discovery URL or an API root), or
    /// `fortiguard-premium` (FortiGuard's Premium API feed: `url` is
    /// `https://premiumapi.fortinet.com`, and a `Token` header carries the key), or
    /// `fortigate-isdb` (one Internet Service of FortiGuard's database on your FortiGate: `url`
    /// is the FortiGate's `https://host[:port]`).
    #[serde(rename = "type", default)]
    pub kind: FeedKind,
    /// Where to pull the feed: `https://...`, `file:///...`, or `http://...` with `allow_http`.
    pub url: String,
    /// For `taxii`: which collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taxii: Option<TaxiiConfig>,
    /// For `fortiguard-premium`: which countries' indicators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fortiguard: Option<FortiguardConfig>,
    /// For `fortigate-isdb`: the Internet Service and the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isdb: Option<IsdbConfig>,
    /// How often to pull, in seconds (at least 300 unless `allow_short_period`). A feed is
    /// never pulled more often, failures included.
    #[serde(default = "default_period_secs")]
    pub period_secs: u64,
    /// Allow `period_secs` below 300 (down to 10), for feeds you run yourself.
    #[serde(default)]
    pub allow_short_period: bool,
    /// Allow an unencrypted `http://` URL.
    #[serde(default)]
    pub allow_http: bool,
    /// Request headers, such as an API token; values come from the environment or a mounted
    /// Secret file and are never logged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderConfig>,
    /// How the feed's content is laid out.
    #[serde(default)]
    pub format: FeedFormat,
    /// Labels for the feed's sets, for policies to select on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// CIDRs never published from this feed, in addition to `feed_settings.never_block`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub never_block: Vec<String>,
    /// `enforce` publishes the sets; `monitor` only pulls and normalizes (nothing is written to
    /// the cluster).
    #[serde(default)]
    pub mode: FeedMode,
    /// Refuse an update that normalizes to more CIDRs than this.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Refuse an update smaller than this fraction of the last applied set, or empty.
    #[serde(default = "default_min_shrink_fraction")]
    pub min_shrink_fraction: f64,
    /// Accept shrinking and empty updates.
    #[serde(default)]
    pub allow_shrink: bool,
    /// CEF severity (0 to 10) of a flow matching this feed; default: the `threat_match` class's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<u8>,
}

fn default_period_secs() -> u64 {
    3600
}

/// What a feed is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FeedKind {
    /// A list at a URL.
    #[default]
    Url,
    /// A TAXII 2.1 collection of STIX 2.1 indicators.
    Taxii,
    /// FortiGuard's Premium API threat feed (a daily STIX 2 bundle).
    FortiguardPremium,
    /// One Internet Service of FortiGuard's ISDB, read from a FortiGate.
    FortigateIsdb,
}

/// One ISDB Internet Service on a FortiGate.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IsdbConfig {
    /// The service's name as FortiOS lists it (`Tor-Exit.Node`, `Botnet-C&C.Server`), or its
    /// numeric ID. Names are resolved at every pull (IDs change between ISDB versions).
    pub service: String,
    /// `ipv4`, `ipv6` (FortiOS 7.4 and later) or `both`.
    #[serde(default)]
    pub family: IsdbFamily,
    /// The VDOM, on a FortiGate with several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vdom: Option<String>,
    /// `fortigate` (the feed's `url` is the FortiGate) or `fortimanager` (the `url` is a
    /// FortiManager, which relays every call to `device` with `exec /sys/proxy/json`).
    #[serde(default)]
    pub via: IsdbVia,
    /// With `via: fortimanager`: the managed FortiGate's name in the ADOM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// With `via: fortimanager`: the device's ADOM.
    #[serde(default = "default_adom")]
    pub adom: String,
    /// A key sent as `Authorization: Bearer`: a REST API admin's with read-only firewall
    /// access on the FortiGate, or, with `via: fortimanager`, a FortiManager API user's with
    /// JSON API read access to the device's ADOM.
    pub api_key: crate::secret::SecretSource,
    /// Requests per second, at most (FortiOS throttles bursts with 429).
    #[serde(default = "default_isdb_rate")]
    pub requests_per_second: f64,
    /// Rows per page (FortiOS clamps to 20..1000).
    #[serde(default = "default_isdb_page")]
    pub page_size: u32,
}

/// How an ISDB feed reaches its FortiGate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IsdbVia {
    /// Directly, at the feed's URL.
    #[default]
    Fortigate,
    /// Through the FortiManager at the feed's URL.
    Fortimanager,
}

fn default_adom() -> String {
    "root".into()
}

/// Which address family an ISDB feed takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IsdbFamily {
    Ipv4,
    Ipv6,
    #[default]
    Both,
}

fn default_isdb_rate() -> f64 {
    2.0
}
fn default_isdb_page() -> u32 {
    1000
}

/// A TAXII 2.1 collection.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaxiiConfig {
    /// The collection's id or title.
    pub collection: String,
    /// The API root to use when `url` is a discovery URL; default: the server's `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_root: Option<String>,
    /// Objects asked for per page (the server may send fewer).
    #[serde(default = "default_taxii_page")]
    pub page_size: u32,
}

fn default_taxii_page() -> u32 {
    1000
}

/// FortiGuard's Premium API feed.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FortiguardConfig {
    /// Country codes, comma-separated, or `all`.
    #[serde(default = "default_countries")]
    pub countries: String,
}

fn default_countries() -> String {
    "all".into()
}

impl Default for FortiguardConfig {
    fn default() -> Self {
        FortiguardConfig {
            countries: default_countries(),
        }
    }
}
fn default_max_entries() -> usize {
    1_000_000
}
fn default_min_shrink_fraction() -> f64 {
    0.5
}

/// One request header, its value from the environment or a file.
pub type HeaderConfig = crate::secret::NamedSecret;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeedMode {
    #[default]
    Enforce,
    Monitor,
}

/// Settings shared by every feed.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FeedSettings {
    /// CIDRs never published from any feed: your cluster's pod, service and node CIDRs, and
    /// anything else that must stay reachable. Loopback and link-local ranges are always added.
    pub never_block: Vec<String>,
    /// IPv4 entries broader than this prefix length are removed (a poisoned `0.0.0.0/0`).
    pub min_prefix_v4: u8,
    /// IPv6 entries broader than this prefix length are removed.
    pub min_prefix_v6: u8,
    /// Most CIDRs in one GlobalNetworkSet; larger feeds are sharded.
    pub shard_max_nets: usize,
    /// Object names start with this.
    pub name_prefix: String,
    /// Also write a GlobalNetworkPolicy per feed that denies traffic to and from its sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyConfig>,
    /// Where `enforce` feeds are published. Required when any feed enforces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishConfig>,
    /// When migrating from Calico Enterprise: take over its `threatfeed.<feed>` sets (made by
    /// its intrusion-detection controller) instead of refusing them as someone else's. Delete
    /// the GlobalThreatFeeds first, or the two controllers will overwrite each other.
    pub adopt_calico_enterprise_sets: bool,
    /// Connection timeout for pulls.
    pub connect_timeout_secs: u64,
    /// Limit for one pull attempt, body included.
    pub timeout_secs: u64,
    /// Largest feed accepted, after decompression.
    pub max_body_bytes: u64,
    /// Retries of a failed pull (timeouts, connection failures, 429, 5xx) before the sync
    /// fails.
    pub retries: u32,
    /// A PEM file of CA certificates to trust for https feeds besides the system's (feeds
    /// served under an internal PKI, such as a FortiGate external-feed server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            never_block: Vec::new(),
            min_prefix_v4: 8,
            min_prefix_v6: 16,
            shard_max_nets: 10_000,
            name_prefix: "threatfeed.".into(),
            policy: None,
            publish: None,
            adopt_calico_enterprise_sets: false,
            ca_file: None,
            connect_timeout_secs: 10,
            timeout_secs: 60,
            max_body_bytes: 64 * 1024 * 1024,
            retries: 3,
        }
    }
}

/// The deny policy written per feed.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The Calico tier the policies go in. threatflow creates it when it is missing (with
    /// `tier_order` and default action `Pass`); an existing tier that threatflow does not own
    /// is used as it is, and reported.
    pub tier: String,
    /// Order of each feed's policy within the tier; lower runs first.
    #[serde(default)]
    pub order: f64,
    /// Order of the tier among tiers, when threatflow creates it: keep it below your
    /// application tiers, so threats are denied before anything allows them.
    #[serde(default = "default_tier_order")]
    pub tier_order: f64,
}

fn default_tier_order() -> f64 {
    100.0
}

pub use crate::k8s::apply::{DirectoryConfig, PublishConfig, PublishKind};

/// Ranges no feed may ever publish.
pub const ALWAYS_NEVER_BLOCK: &[&str] = &["127.0.0.0/8", "169.254.0.0/16", "::1/128", "fe80::/10"];

/// Labels threatflow sets itself; a feed's labels may not override them.
const RESERVED_LABELS: &[&str] = &[
    crate::k8s::apply::MANAGED_BY_LABEL,
    super::render::FEED_LABEL,
    super::render::COMPONENT_LABEL,
];

/// Adds every problem of the feed sections to `problems`.
pub fn validate(feeds: &[FeedConfig], settings: &FeedSettings, problems: &mut Problems) {
    let mut names = HashSet::new();
    for (i, feed) in feeds.iter().enumerate() {
        let path = format!("feeds[{i}]");
        if !crate::problems::is_dns_label(&feed.name, 40) {
            problems.push(format!("{path}.name"), format!("`{}` must be 1 to 40 lower-case letters, digits or `-` (it names Kubernetes objects)", feed.name));
        } else if !names.insert(feed.name.as_str()) {
            problems.push(
                format!("{path}.name"),
                format!("`{}` is used twice", feed.name),
            );
        }
        match feed.url.split_once("://").map(|(scheme, _)| scheme) {
            Some("https" | "file") => {}
            Some("http") if feed.allow_http => {}
            Some("http") => problems.push(
                format!("{path}.url"),
                "is plain http: use https, or set allow_http: true",
            ),
            _ => problems.push(
                format!("{path}.url"),
                format!("`{}` is not an https, http or file URL", feed.url),
            ),
        }
        let min_period = if feed.allow_short_period { 10 } else { 300 };
        if feed.period_secs < min_period {
            problems.push(format!("{path}.period_secs"), format!("must be at least {min_period} (feed providers rate-limit pulls; allow_short_period lowers the floor to 10)"));
        }
        for (j, header) in feed.headers.iter().enumerate() {
            let header_path = format!("{path}.headers[{j}]");
            if reqwest::header::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
                problems.push(
                    format!("{header_path}.name"),
                    format!("`{}` is not a valid HTTP header name", header.name),
                );
            }
            header.validate(&header_path, problems);
        }
        feed.format.validate(&format!("{path}.format"), problems);
        match feed.kind {
            FeedKind::Url => {
                for (set, key) in [
                    (feed.taxii.is_some(), "taxii"),
                    (feed.fortiguard.is_some(), "fortiguard"),
                    (feed.isdb.is_some(), "isdb"),
                ] {
                    if set {
                        let kind = match key {
                            "taxii" => "taxii",
                            "fortiguard" => "fortiguard-premium",
                            _ => "fortigate-isdb",
                        };
                        problems.push(
                            format!("{path}.{key}"),
                            format!("is for `type: {kind}` feeds"),
                        );
                    }
                }
            }
            FeedKind::FortigateIsdb => {
                if feed.url.starts_with("file://") {
                    problems.push(format!("{path}.url"), "the FortiGate's https://host[:port]");
                }
                match &feed.isdb {
                    None => problems.push(
                        format!("{path}.isdb"),
                        "name the service and the key: isdb: {service: Tor-Exit.Node, api_key: {value_from_file: ...}}",
                    ),
                    Some(isdb) => {
                        if isdb.service.trim().is_empty() {
                            problems.push(
                                format!("{path}.isdb.service"),
                                "name the Internet Service (or its ID)",
                            );
                        }
                        if !(0.1..=100.0).contains(&isdb.requests_per_second) {
                            problems.push(
                                format!("{path}.isdb.requests_per_second"),
                                "must be between 0.1 and 100",
                            );
                        }
                        if !(20..=1000).contains(&isdb.page_size) {
                            problems.push(
                                format!("{path}.isdb.page_size"),
                                "must be between 20 and 1000 (FortiOS' range)",
                            );
                        }
                        isdb.api_key
                            .validate(&format!("{path}.isdb.api_key"), problems);
                        let device = isdb.device.as_deref().map(str::trim);
                        match (isdb.via, device) {
                            (IsdbVia::Fortimanager, None | Some("")) => problems.push(
                                format!("{path}.isdb.device"),
                                "name the managed FortiGate the FortiManager relays to",
                            ),
                            (IsdbVia::Fortigate, Some(_)) => problems.push(
                                format!("{path}.isdb.device"),
                                "is for `via: fortimanager` (the url is the FortiGate itself)",
                            ),
                            _ => {}
                        }
                    }
                }
            }
            FeedKind::Taxii | FeedKind::FortiguardPremium => {
                if feed.format != super::format::FeedFormat::default() {
                    problems.push(
                        format!("{path}.format"),
                        "a TAXII or FortiGuard Premium feed is STIX 2.1: leave format out",
                    );
                }
                if feed.url.starts_with("file://") {
                    problems.push(format!("{path}.url"), "must be an https URL for this type");
                }
                if feed.kind == FeedKind::Taxii {
                    match &feed.taxii {
                        None => problems.push(
                            format!("{path}.taxii"),
                            "name the collection: taxii: {collection: <id or title>}",
                        ),
                        Some(taxii) if taxii.collection.trim().is_empty() => problems.push(
                            format!("{path}.taxii.collection"),
                            "name the collection (its id or title)",
                        ),
                        Some(taxii) if !(1..=10_000).contains(&taxii.page_size) => problems.push(
                            format!("{path}.taxii.page_size"),
                            "must be between 1 and 10000",
                        ),
                        Some(_) => {}
                    }
                }
                if feed.kind == FeedKind::FortiguardPremium
                    && !feed
                        .headers
                        .iter()
                        .any(|header| header.name.eq_ignore_ascii_case("token"))
                {
                    problems.push(
                        format!("{path}.headers"),
                        "the Premium API needs its key: headers: [{name: Token, value_from_file: ...}]",
                    );
                }
            }
        }
        for (key, value) in &feed.labels {
            if let Err(message) = check_label(key, value) {
                problems.push(format!("{path}.labels.{key}"), message);
            }
        }
        check_cidrs(&format!("{path}.never_block"), &feed.never_block, problems);
        if !(0.0..=1.0).contains(&feed.min_shrink_fraction) {
            problems.push(
                format!("{path}.min_shrink_fraction"),
                "must be between 0 and 1",
            );
        }
        if feed.severity.is_some_and(|severity| severity > 10) {
            problems.push(
                format!("{path}.severity"),
                "must be an integer from 0 to 10",
            );
        }
        if feed.max_entries == 0 {
            problems.push(format!("{path}.max_entries"), "must be at least 1");
        }
    }
    check_cidrs("feed_settings.never_block", &settings.never_block, problems);
    if settings.min_prefix_v4 > 32 {
        problems.push("feed_settings.min_prefix_v4", "must be between 0 and 32");
    }
    if settings.min_prefix_v6 > 128 {
        problems.push("feed_settings.min_prefix_v6", "must be between 0 and 128");
    }
    if !(1..=50_000).contains(&settings.shard_max_nets) {
        problems.push(
            "feed_settings.shard_max_nets",
            "must be between 1 and 50000",
        );
    }
    let prefix_ok = settings
        .name_prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && settings.name_prefix.len() <= 40;
    if !prefix_ok {
        problems.push(
            "feed_settings.name_prefix",
            "must be up to 40 lower-case letters, digits, `-` or `.`",
        );
    }
    if let Some(policy) = &settings.policy {
        if !crate::problems::is_dns_label(&policy.tier, 63) {
            problems.push(
                "feed_settings.policy.tier",
                "must be a tier name: lower-case letters, digits and `-`",
            );
        }
    }
    match &settings.publish {
        Some(publish) => publish.validate("feed_settings.publish", problems),
        None if feeds.iter().any(|feed| feed.mode == FeedMode::Enforce) => problems.push(
            "feed_settings.publish",
            "feeds in `enforce` mode need a publish target (or set their mode to `monitor`)",
        ),
        _ => {}
    }
    for (name, value, max) in [
        ("timeout_secs", settings.timeout_secs, 3600),
        ("connect_timeout_secs", settings.connect_timeout_secs, 600),
    ] {
        if !(1..=max).contains(&value) {
            problems.push(
                format!("feed_settings.{name}"),
                format!("must be between 1 and {max}"),
            );
        }
    }
    if settings.max_body_bytes < 1024 {
        problems.push("feed_settings.max_body_bytes", "must be at least 1024");
    }
}

fn check_cidrs(path: &str, cidrs: &[String], problems: &mut Problems) {
    for (i, cidr) in cidrs.iter().enumerate() {
        if crate::netset::parse_cidr(cidr).is_none() {
            problems.push(
                format!("{path}[{i}]"),
                format!("`{cidr}` is not a CIDR or an IP address"),
            );
        }
    }
}

/// Kubernetes label rules: an optional DNS-subdomain prefix and `/`, a name of up to 63
/// characters, and a value of up to 63 characters.
fn check_label(key: &str, value: &str) -> Result<(), String> {
    if RESERVED_LABELS.contains(&key) {
        return Err(format!("`{key}` is set by threatflow"));
    }
    crate::cluster::selector::label_key(key)?;
    crate::cluster::selector::label_value(value)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_problems_have_paths() {
        let feeds: Vec<FeedConfig> = yaml_serde::from_str(
            r#"
- {name: feodo, url: "https://example.com/x", labels: {security-action: block}}
- {name: feodo, url: "http://example.com/x", period_secs: 60}
- {name: Bad_Name, url: "ftp://x", headers: [{name: "bad header"}], labels: {"threatflow.io/feed": x, "ok": "bad value!"}, never_block: ["10.0.0.0/33"], min_shrink_fraction: 2}
"#,
        )
        .unwrap();
        let mut problems = Problems::default();
        validate(
            &feeds,
            &FeedSettings {
                publish: None,
                ..FeedSettings::default()
            },
            &mut problems,
        );
        let paths = problems.paths();
        assert_eq!(
            paths,
            [
                "feeds[1].name",
                "feeds[1].url",
                "feeds[1].period_secs",
                "feeds[2].name",
                "feeds[2].url",
                "feeds[2].headers[0].name",
                "feeds[2].headers[0]",
                "feeds[2].labels.ok",
                "feeds[2].labels.threatflow.io/feed",
                "feeds[2].never_block[0]",
                "feeds[2].min_shrink_fraction",
                "feed_settings.publish",
            ],
            "{problems}"
        );
    }

    #[test]
    fn labels() {
        assert!(check_label("security-action", "block").is_ok());
        assert!(check_label("example.com/tier", "").is_ok());
        assert!(check_label("a/b/c", "x").is_err());
        assert!(check_label(&"x".repeat(64), "x").is_err());
        assert!(check_label("k", "-starts-with-dash").is_err());
    }
}
