//! Configuration: one YAML file (the same file a ConfigMap mounts in the cluster).
//!
//! Loading goes in three steps: [`Config::load`] parses with `deny_unknown_fields` and reports a
//! syntax or type error with its path (`sinks[1].syslog.port: invalid type ...`);
//! [`Config::validate`] is pure and collects every semantic problem with its path before
//! anything starts; building the running pieces (reading the inventory, opening files) happens
//! in `app`. Each section's type lives with its stage and validates itself; this module only
//! puts them together. Doc comments on the fields are the user documentation, and
//! `schemas/config.schema.json` is generated from them.

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::address_sync::config::FirewallConfig;
use crate::enrich::EnrichmentConfig;
use crate::feeds::config::{FeedConfig, FeedSettings};
use crate::flow::config::SourceConfig;
use crate::k8s::leader::LeaderElectionConfig;
use crate::pipeline::{DeadLetterConfig, PipelineConfig};
pub use crate::problems::{Problem, Problems};
use crate::sink::cef::CefConfig;
use crate::sink::config::SinkConfig;
use crate::telemetry::TelemetryConfig;

/// threatflow's configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cluster's name, sent with every record (CEF `deviceExternalId`) so a SIEM can tell
    /// clusters apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// The node this instance runs on: the reporting node of records that do not name one.
    /// Defaults to the `NODE_NAME` environment variable (set it from the downward API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Where flow records come from.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Where cluster context comes from.
    #[serde(default)]
    pub enrichment: EnrichmentConfig,
    /// Where enriched records go. Every record goes to every sink.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Threat feeds to pull, normalize and publish as GlobalNetworkSets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<FeedConfig>,
    /// Guards, sharding and the publish target, for every feed.
    #[serde(default)]
    pub feed_settings: FeedSettings,
    /// Pods' addresses kept in step with address groups on FortiGates and FortiManagers, and
    /// served as plain-text lists for firewalls that pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallConfig>,
    /// Zone-based policy from firewall managers: FortiManager policy packages and Panorama
    /// rulebases enforced as Calico tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_import: Option<crate::policy_import::config::PolicyImportConfig>,
    /// How records are written as CEF, for sinks with `format: cef`.
    #[serde(default)]
    pub cef: CefConfig,
    /// Where rejected lines are written, with their reason. Without it, rejected lines are
    /// only counted and logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterConfig>,
    /// Batching and shutdown behaviour.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Logs, metrics and health endpoints.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// With several replicas: elect one, through a Lease, to publish feeds to the cluster and
    /// write to firewalls. Without it, this instance always does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_election: Option<LeaderElectionConfig>,
}

/// The configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Parse { path: String, problem: Problem },
    #[error("{path} has {} problem(s):\n{problems}", problems.len())]
    Invalid { path: String, problems: Problems },
}

impl ConfigError {
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Parse { .. } => "parse",
            ConfigError::Invalid { .. } => "invalid",
        }
    }
}

impl Config {
    /// Reads and parses a config file, without semantic validation.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        Config::from_yaml(&text).map_err(|problem| ConfigError::Parse {
            path: display,
            problem,
        })
    }

    /// Parses YAML text; the error names the path of the offending value.
    pub fn from_yaml(text: &str) -> Result<Config, Problem> {
        let deserializer = yaml_serde::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let path = if path == "." {
                "(top level)".to_owned()
            } else {
                path
            };
            let mut message = error.into_inner().to_string();
            // The YAML library starts some messages with its own, shorter path; ours is exact.
            if let Some((prefix, rest)) = message.split_once(": ") {
                if !prefix.contains(' ') && path.starts_with(prefix) {
                    message = rest.to_owned();
                }
            }
            Problem { path, message }
        })
    }

    /// Reads, parses and validates a config file.
    pub fn load_valid(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse_valid(path, &text)
    }

    /// Parses and validates the text of the config file at `path` (named in errors).
    pub fn parse_valid(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config = Config::from_yaml(text).map_err(|problem| ConfigError::Parse {
            path: path.display().to_string(),
            problem,
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.display().to_string(),
                problems,
            })
        }
    }

    /// Every semantic problem, with its path. Pure: touches no file or network. Each section
    /// checks itself.
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::default();
        match (
            self.sources.is_empty(),
            self.sinks.is_empty(),
            self.feeds.is_empty() && self.firewall.is_none() && self.policy_import.is_none(),
        ) {
            (true, true, true) => problems.push(
                "(top level)",
                "nothing to do: configure sources and sinks, feeds, firewall, or policy_import",
            ),
            (false, true, _) => problems.push("sinks", "sources need at least one sink"),
            (true, false, _) => problems.push("sources", "sinks need at least one source"),
            _ => {}
        }
        crate::flow::config::validate(&self.sources, &mut problems);
        crate::sink::config::validate(&self.sinks, &mut problems);
        self.enrichment.validate("enrichment", &mut problems);
        crate::feeds::config::validate(&self.feeds, &self.feed_settings, &mut problems);
        if let Some(firewall) = &self.firewall {
            firewall.validate("firewall", self.cluster_name.as_deref(), &mut problems);
        }
        if let Some(import) = &self.policy_import {
            import.validate("policy_import", &mut problems);
        }
        if let Some(election) = &self.leader_election {
            election.validate("leader_election", &mut problems);
        }
        self.cef.validate("cef", &mut problems);
        if let Some(cluster_name) = &self.cluster_name {
            if cluster_name.is_empty()
                || cluster_name.len() > 255
                || cluster_name.chars().any(char::is_control)
            {
                problems.push(
                    "cluster_name",
                    "must be 1 to 255 characters without control characters",
                );
            }
        }
        if let Some(dead_letter) = &self.dead_letter {
            dead_letter.validate("dead_letter", &mut problems);
        }
        self.pipeline.validate("pipeline", &mut problems);
        self.telemetry.validate("telemetry", &mut problems);
        problems
    }

    /// The node name from the config, else this process's (`NODE_NAME`).
    pub fn node_name(&self, identity: &crate::identity::Identity) -> Option<String> {
        self.node_name
            .clone()
            .or_else(|| identity.node_name.clone())
    }

    /// One line saying what would run.
    pub fn summary(&self) -> String {
        let sources: Vec<String> = self.sources.iter().map(SourceConfig::summary).collect();
        let sinks: Vec<String> = self.sinks.iter().map(SinkConfig::summary).collect();
        let telemetry = match self.telemetry.listen_addr {
            Some(addr) => format!("http://{addr}/metrics"),
            None => "off".into(),
        };
        let feeds: Vec<String> = self
            .feeds
            .iter()
            .map(|feed| {
                format!(
                    "{} ({:?}, every {} s)",
                    feed.name, feed.mode, feed.period_secs
                )
                .to_lowercase()
            })
            .collect();
        let publish = match &self.feed_settings.publish {
            Some(publish) => match &publish.directory {
                Some(directory) => format!(" to directory {}", directory.path.display()),
                None => String::new(),
            },
            None => String::new(),
        };
        let or_none = |items: Vec<String>| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        let firewall = match &self.firewall {
            Some(firewall) => format!("; firewall: {}", firewall.summary()),
            None => String::new(),
        };
        let import = match &self.policy_import {
            Some(import) => format!("; policy import: {}", import.summary()),
            None => String::new(),
        };
        format!(
            "sources: {}; enrichment: {}; sinks: {}; feeds: {}{publish}{firewall}{import}; metrics: {telemetry}",
            or_none(sources),
            self.enrichment.summary(),
            or_none(sinks),
            or_none(feeds),
        )
    }
}

/// The JSON Schema of the config file, as committed in `schemas/config.schema.json`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Config);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

/// Fails when a committed generated file differs from what the code generates now; with
/// `THREATFLOW_UPDATE_SCHEMAS` set, rewrites it first.
#[cfg(test)]
pub(crate) fn assert_generated_file_is_fresh(relative_path: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative_path);
    if std::env::var_os("THREATFLOW_UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{relative_path} is stale: run `THREATFLOW_UPDATE_SCHEMAS=1 cargo test --lib` and commit the result"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_their_path() {
        let check = |yaml: &str, path: &str| {
            let problem = Config::from_yaml(yaml).unwrap_err();
            assert_eq!(problem.path, path, "{problem}");
        };
        let sources = "sources: [{name: a, type: stdin}]\n";
        check(&format!("{sources}sinks:\n  - {{name: a, type: stdout}}\n  - {{name: b, type: syslog, syslog: {{host: x, port: nope}}}}\n"), "sinks[1].syslog.port");
        check(
            &format!("{sources}sinks: [{{name: a, type: stdout, colour: red}}]\n"),
            "sinks[0].colour",
        );
        check(
            &format!("{sources}sinks: [{{name: a, type: pigeon}}]\n"),
            "sinks[0].type",
        );
        check("- a list, not a map\n", "(top level)");
    }

    #[test]
    fn validation_collects_every_problem() {
        let yaml = r#"
sources:
  - {name: flows, type: file}
  - {name: flows, type: stdin, max_line_bytes: 10}
  - {name: "bad name", type: stdin}
sinks:
  - {name: out, type: syslog}
  - {name: out2, type: stdout, file: {path: x}}
  - {name: siem, type: syslog, syslog: {host: "", port: 0, app_name: "has space"}}
cef:
  classes:
    flow_denied: {signature_id: "x", name: "y", severity: 12}
pipeline: {batch_max_records: 0}
telemetry: {log_level: "[[["}
"#;
        let config = Config::from_yaml(yaml).unwrap();
        let problems = config.validate();
        let paths = problems.paths();
        assert_eq!(
            paths,
            [
                "sources[0].file",
                "sources[1].name",
                "sources[1].max_line_bytes",
                "sources[2].name",
                "sources",
                "sinks[0].syslog",
                "sinks[1].file",
                "sinks[2].syslog.host",
                "sinks[2].syslog.port",
                "sinks[2].syslog.app_name",
                "cef.classes.flow_denied.severity",
                "pipeline.batch_max_records",
                "telemetry.log_level",
            ],
            "{problems}"
        );
    }

    #[test]
    fn kubernetes_enrichment_settings_are_checked() {
        let yaml = r#"
sources: [{name: a, type: stdin}]
sinks: [{name: b, type: stdout}]
enrichment:
  inventory_path: inventory.json
  kubernetes: {namespace: "Shop_1", pod_label_selector: " "}
"#;
        let config = Config::from_yaml(yaml).unwrap();
        assert_eq!(
            config.validate().paths(),
            [
                "enrichment.kubernetes",
                "enrichment.kubernetes.namespace",
                "enrichment.kubernetes.pod_label_selector"
            ]
        );
        let config = Config::from_yaml(
            "sources: [{name: a, type: stdin}]\nsinks: [{name: b, type: stdout}]\nenrichment: {kubernetes: {}}\n",
        )
        .unwrap();
        assert!(config.validate().is_empty());
        let kubernetes = config.enrichment.kubernetes.as_ref().unwrap();
        assert_eq!(
            (kubernetes.grace_period_secs, kubernetes.sync_timeout_secs),
            (300, 60)
        );
        assert!(config.summary().contains("enrichment: kubernetes watches"));
    }

    #[test]
    fn the_quickstart_config_is_valid() {
        let config = Config::load_valid(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/local/threatflow.yaml"
        )))
        .unwrap();
        assert!(config.summary().contains("calico file"));
    }

    #[test]
    fn the_committed_schema_is_fresh() {
        assert_generated_file_is_fresh("schemas/config.schema.json", &json_schema());
    }
}
