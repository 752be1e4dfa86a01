//! `threatflow check`: report every problem of a config file at once, or say what would run.

use std::path::Path;

use crate::cluster::Inventory;
use crate::config::{Config, ConfigError, Problems};
use crate::telemetry::ErrorChain;

/// Checks a config file. `Ok` holds the one-line summary; `Err` the full report to print.
pub fn check(path: &Path) -> Result<String, String> {
    let config = Config::load(path).map_err(|error| match error {
        ConfigError::Parse { .. } => {
            format!("{error}\n(fix this first: the rest of the file is checked once it parses)")
        }
        other => ErrorChain(&other).to_string(),
    })?;
    let mut problems: Problems = config.validate();
    // Beyond the pure checks: the files the run would read must be usable.
    if let Some(inventory) = &config.enrichment.inventory_path {
        if let Err(error) = Inventory::load(inventory) {
            problems.push("enrichment.inventory_path", ErrorChain(&error).to_string());
        }
    }
    for (i, feed) in config.feeds.iter().enumerate() {
        if let Some(path) = feed.url.strip_prefix("file://") {
            if let Err(error) = std::fs::metadata(path) {
                problems.push(format!("feeds[{i}].url"), format!("cannot read {path}: {error} (relative paths start at the working directory)"));
            }
        }
    }
    if problems.is_empty() {
        Ok(format!("config OK: {}", config.summary()))
    } else {
        Err(format!(
            "{} has {} problem(s):\n{problems}",
            path.display(),
            problems.len()
        ))
    }
}
