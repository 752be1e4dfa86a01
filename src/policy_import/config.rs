//! The `policy_import` section: which firewall managers' rules become which tiers.

use std::collections::{BTreeMap, HashSet};

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::translate::{self, Settings};
use crate::k8s::apply::{PublishConfig, PublishKind};
use crate::net::tls::TlsSettings;
use crate::problems::Problems;
use crate::secret::SecretSource;

/// Rulebases read from firewall managers and enforced as Calico tiers.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyImportConfig {
    /// Where the tiers' objects go (`kubernetes`, or `directory` for GitOps and review).
    pub publish: PublishConfig,
    pub sources: Vec<PolicySourceConfig>,
}

/// One rulebase and the tier it becomes.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySourceConfig {
    /// A unique name, for status, metrics and the ownership label of its objects.
    pub name: String,
    /// A FortiManager ADOM's policy package (set this or `panorama`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fortimanager: Option<FortiManagerSource>,
    /// A Panorama device group's rules with the shared ones (set this or `fortimanager`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panorama: Option<PanoramaSource>,
    /// The Calico tier the rules go in; threatflow creates it and owns it.
    pub tier: String,
    /// The tier's order: lower tiers are evaluated first.
    #[serde(default = "default_tier_order")]
    pub tier_order: f64,
    /// `enforce` writes GlobalNetworkPolicies; `staged` writes StagedGlobalNetworkPolicies,
    /// which Calico records but does not enforce, for review.
    #[serde(default)]
    pub mode: ImportMode,
    /// How often the manager is asked whether the rulebase changed (one call).
    #[serde(default = "default_poll_interval_secs")]
    pub poll_interval_secs: u64,
    /// How often the rulebase is read in full even when the revision stays (a FortiManager
    /// package's revision follows its rules; an edit of an object it uses may not move it).
    #[serde(default = "default_full_read_interval_secs")]
    pub full_read_interval_secs: u64,
    /// The label naming a pod's (or its namespace's) zone.
    #[serde(default = "default_zone_label")]
    pub zone_label: String,
    /// The label naming a pod's (or its namespace's) address group.
    #[serde(default = "default_group_label")]
    pub group_label: String,
    /// Zones pods are labelled with that the rules may not name (Panorama's rulebase knows
    /// only the zones its rules use): each gets the rulebase's intrazone default (allow on
    /// PAN-OS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    /// Zones outside the cluster (WAN, corporate networks), by their networks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_zones: BTreeMap<String, Vec<String>>,
    /// FQDN destinations as GlobalNetworkSets with `allowedEgressDomains`: domain-based
    /// policy, a Calico Enterprise feature. Without it, rules with FQDN addresses are refused
    /// (Calico Open Source has no such field).
    #[serde(default)]
    pub domain_rules: bool,
    /// Publish even when a deny rule was refused. A refused deny lets through what the
    /// firewall stops, so by default such a rulebase is not published and the last good
    /// policy stays in force.
    #[serde(default)]
    pub allow_skipped_denies: bool,
    /// Refuse a rulebase whose enabled rules fall below this fraction of the last one
    /// published (a truncated read, or a package emptied by mistake); 0 turns the guard off.
    #[serde(default = "default_min_rules_fraction")]
    pub min_rules_fraction: f64,
    /// Limit for one request.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportMode {
    #[default]
    Enforce,
    Staged,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FortiManagerSource {
    /// `https://host[:port]`.
    pub url: String,
    #[serde(default = "default_adom")]
    pub adom: String,
    /// The policy package whose rules apply.
    pub package: String,
    /// A read-only API user's key, sent as `Authorization: Bearer`; or `username` and
    /// `password` for a login session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretSource>,
    #[serde(default)]
    pub tls: TlsSettings,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PanoramaSource {
    /// `https://host[:port]`.
    pub url: String,
    /// The device group whose rules apply (`shared` for the shared rules alone).
    pub device_group: String,
    /// A key made with `type=keygen` for a read-only admin, sent as `X-PAN-KEY`; or
    /// `username` and `password` to generate one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretSource>,
    #[serde(default)]
    pub tls: TlsSettings,
}

fn default_tier_order() -> f64 {
    translate::DEFAULT_TIER_ORDER
}
fn default_poll_interval_secs() -> u64 {
    30
}
fn default_full_read_interval_secs() -> u64 {
    600
}
fn default_zone_label() -> String {
    translate::DEFAULT_ZONE_LABEL.to_owned()
}
fn default_group_label() -> String {
    translate::DEFAULT_GROUP_LABEL.to_owned()
}
fn default_min_rules_fraction() -> f64 {
    0.5
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_adom() -> String {
    "root".into()
}

impl PolicySourceConfig {
    /// The translator's settings (after validation).
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::new(&self.tier);
        settings.tier_order = self.tier_order;
        settings.staged = self.mode == ImportMode::Staged;
        settings.zone_label.clone_from(&self.zone_label);
        settings.group_label.clone_from(&self.group_label);
        settings.domain_rules = self.domain_rules;
        settings.zones = self.zones.iter().cloned().collect();
        settings.external_zones = self
            .external_zones
            .iter()
            .map(|(zone, nets)| {
                let nets = nets
                    .iter()
                    .filter_map(|net| net.parse::<IpNet>().ok())
                    .map(|net| net.trunc())
                    .collect();
                (zone.clone(), nets)
            })
            .collect();
        settings
    }
}

impl PolicyImportConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        self.publish.validate(&format!("{path}.publish"), problems);
        if self.sources.is_empty() {
            problems.push(format!("{path}.sources"), "name at least one source");
        }
        let mut names = HashSet::new();
        let mut tiers = HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let at = format!("{path}.sources[{i}]");
            if !crate::problems::is_dns_label(&source.name, 63) {
                problems.push(
                    format!("{at}.name"),
                    format!(
                        "`{}` must be 1 to 63 lower-case letters, digits or `-`",
                        source.name
                    ),
                );
            } else if !names.insert(source.name.clone()) {
                problems.push(
                    format!("{at}.name"),
                    format!("`{}` is used twice", source.name),
                );
            }
            if let Err(problem) = super::check_tier(&source.tier) {
                problems.push(format!("{at}.tier"), problem);
            } else if !tiers.insert(source.tier.clone()) {
                problems.push(
                    format!("{at}.tier"),
                    format!(
                        "tier `{}` is used by two sources: one owner per tier",
                        source.tier
                    ),
                );
            }
            match (&source.fortimanager, &source.panorama) {
                (Some(manager), None) => {
                    let at = format!("{at}.fortimanager");
                    crate::net::http::check_https(format!("{at}.url"), &manager.url, problems);
                    manager.tls.validate(&format!("{at}.tls"), problems);
                    crate::secret::check_credentials(
                        &at,
                        manager.api_key.as_ref(),
                        manager.username.as_deref(),
                        manager.password.as_ref(),
                        problems,
                    );
                    if manager.package.is_empty() {
                        problems.push(format!("{at}.package"), "must not be empty");
                    }
                }
                (None, Some(panorama)) => {
                    let at = format!("{at}.panorama");
                    crate::net::http::check_https(format!("{at}.url"), &panorama.url, problems);
                    panorama.tls.validate(&format!("{at}.tls"), problems);
                    crate::secret::check_credentials(
                        &at,
                        panorama.api_key.as_ref(),
                        panorama.username.as_deref(),
                        panorama.password.as_ref(),
                        problems,
                    );
                    if panorama.device_group.is_empty() {
                        problems.push(format!("{at}.device_group"), "must not be empty");
                    }
                }
                _ => problems.push(at.clone(), "set exactly one of fortimanager and panorama"),
            }
            for (zone, nets) in &source.external_zones {
                if nets.is_empty() {
                    problems.push(
                        format!("{at}.external_zones.{zone}"),
                        "list the zone's networks (0.0.0.0/0 and ::/0 for anything outside)",
                    );
                }
                for (j, net) in nets.iter().enumerate() {
                    if net.parse::<IpNet>().is_err() {
                        problems.push(
                            format!("{at}.external_zones.{zone}[{j}]"),
                            format!("`{net}` is not a CIDR"),
                        );
                    }
                }
            }
            for (field, label) in [
                ("zone_label", &source.zone_label),
                ("group_label", &source.group_label),
            ] {
                if let Err(problem) = crate::cluster::selector::label_key(label) {
                    problems.push(format!("{at}.{field}"), problem);
                }
            }
            if source.zone_label == source.group_label {
                problems.push(format!("{at}.group_label"), "must differ from zone_label");
            }
            if source.full_read_interval_secs < source.poll_interval_secs {
                problems.push(
                    format!("{at}.full_read_interval_secs"),
                    "must be at least poll_interval_secs",
                );
            }
            if !(1..=86_400).contains(&source.poll_interval_secs) {
                problems.push(format!("{at}.poll_interval_secs"), "must be 1 to 86400");
            }
            if source.full_read_interval_secs > 7 * 86_400 {
                problems.push(
                    format!("{at}.full_read_interval_secs"),
                    "must be at most a week",
                );
            }
            if source.timeout_secs == 0 {
                problems.push(format!("{at}.timeout_secs"), "must be at least 1");
            }
            if !(0.0..=1.0).contains(&source.min_rules_fraction) {
                problems.push(
                    format!("{at}.min_rules_fraction"),
                    "must be between 0 and 1",
                );
            }
            if !source.tier_order.is_finite() {
                problems.push(format!("{at}.tier_order"), "must be a number");
            }
        }
    }

    /// Whether the objects go through the Kubernetes API.
    pub fn publishes_to_kubernetes(&self) -> bool {
        self.publish.kind == PublishKind::Kubernetes
    }

    pub fn summary(&self) -> String {
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|source| {
                let kind = if source.fortimanager.is_some() {
                    "fortimanager"
                } else {
                    "panorama"
                };
                format!("{} ({kind} -> tier {})", source.name, source.tier)
            })
            .collect();
        sources.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> PolicyImportConfig {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let config = config(
            r#"
publish: {type: directory}
sources:
  - name: Edge
    tier: default
    fortimanager: {url: "http://fmg", package: "", api_key: {value_from_env: K}, username: u}
    panorama: {url: "https://pan", device_group: dg}
    external_zones: {wan: [], corp: [not-a-cidr]}
    zone_label: "a b"
    group_label: "a b"
    poll_interval_secs: 0
    min_rules_fraction: 2
  - name: dc
    tier: default
    panorama: {url: "https://pan?key=x", device_group: "", username: u}
"#,
        );
        let mut problems = Problems::default();
        config.validate("policy_import", &mut problems);
        let text = problems.to_string();
        for path in [
            "policy_import.publish.directory",
            "policy_import.sources[0].name",
            "policy_import.sources[0].tier",
            "policy_import.sources[0]:",
            "policy_import.sources[0].external_zones.wan",
            "policy_import.sources[0].external_zones.corp[0]",
            "policy_import.sources[0].zone_label",
            "policy_import.sources[0].group_label",
            "policy_import.sources[0].poll_interval_secs",
            "policy_import.sources[0].min_rules_fraction",
            "policy_import.sources[1].tier",
            "policy_import.sources[1].panorama.url",
            "policy_import.sources[1].panorama.device_group",
            "policy_import.sources[1].panorama:",
        ] {
            assert!(text.contains(path), "{path} missing from:\n{text}");
        }
    }

    #[test]
    fn a_minimal_source_is_valid_and_becomes_the_translators_settings() {
        let config = config(
            r#"
publish: {type: kubernetes}
sources:
  - name: edge
    tier: zones
    mode: staged
    fortimanager: {url: "https://fmg.example.com", package: k8s, api_key: {value_from_file: /k}}
    external_zones: {wan: ["0.0.0.0/0", "::/0"]}
"#,
        );
        let mut problems = Problems::default();
        config.validate("policy_import", &mut problems);
        assert!(problems.is_empty(), "{problems}");
        let settings = config.sources[0].settings();
        assert!(settings.staged);
        assert_eq!(settings.zone_label, translate::DEFAULT_ZONE_LABEL);
        assert_eq!(settings.external_zones["wan"].len(), 2);
    }
}
