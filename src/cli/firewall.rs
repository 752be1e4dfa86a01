//! `threatflow firewall plan`: what a sync would change on each firewall target, from the
//! cluster as an inventory file has it (or as the API server has it now), without writing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::address_sync::groups::Groups;
use crate::address_sync::sync::plan;
use crate::cluster::objects::Inventory;
use crate::cluster::watch::WatchMetrics;
use crate::cluster::{Cluster, ClusterStage, Source, SystemClock};
use crate::config::Config;
use crate::deps::Deps;
use crate::telemetry::Readiness;

/// What `firewall plan` found.
pub struct PlanReport {
    pub text: String,
    /// Targets that could not be read.
    pub failed: usize,
}

/// How long to wait for the API server's initial lists.
const SYNC_TIMEOUT: Duration = Duration::from_secs(120);

/// Plans every target of the config at `config_path` against the cluster in `inventory` (else
/// `enrichment.inventory_path`, else the API server).
pub async fn plan_command(
    config_path: &Path,
    inventory: Option<&Path>,
) -> anyhow::Result<PlanReport> {
    let config = Config::load_valid(config_path)?;
    let Some(firewall) = &config.firewall else {
        anyhow::bail!("{} has no firewall section", config_path.display());
    };
    let clock = std::sync::Arc::new(SystemClock);
    let inventory = inventory.or(config.enrichment.inventory_path.as_deref());
    let (cluster, stage) = match inventory {
        Some(path) => (
            Cluster::from_inventory(&Inventory::load(path)?, clock),
            None,
        ),
        None => {
            let deps = Deps::from_environment(Readiness::default());
            let source = Source::Watch(crate::address_sync::scope(firewall));
            let stage = ClusterStage::start(&deps, source, WatchMetrics::default()).await?;
            eprintln!("waiting for the cluster's initial lists ...");
            tokio::time::timeout(SYNC_TIMEOUT, stage.cluster.gate().wait())
                .await
                .with_context(|| {
                    format!(
                        "the cluster's initial lists were not in after {} s",
                        SYNC_TIMEOUT.as_secs()
                    )
                })?;
            (stage.cluster.clone(), Some(stage))
        }
    };
    let cluster_name = config.cluster_name.as_deref().unwrap_or_default();
    let published = Groups::new(firewall, cluster_name).compute(&cluster.read());
    if let Some(stage) = stage {
        stage.stop().await;
    }
    let mut text = String::new();
    for (group, reason) in &published.skipped {
        text.push_str(&format!("skipped policy {group}: {reason}\n"));
    }
    let mut failed = 0;
    let targets =
        crate::address_sync::targets(firewall, config.cluster_name.as_deref().unwrap_or_default())?;
    for mut target in targets {
        let heading = format!("{} {} ({})", target.kind, target.name, target.url);
        let actual = match target.target.read().await {
            Ok(actual) => actual,
            Err(error) => {
                failed += 1;
                text.push_str(&format!("{heading}: cannot read: {error}\n"));
                continue;
            }
        };
        let specs = published.specs(target.groups.as_ref());
        let plan = plan(
            &specs,
            target.target.limits(),
            &firewall.names.for_cluster(cluster_name).placeholder,
            &actual,
            &BTreeMap::new(),
            &BTreeSet::new(),
        );
        target.target.close().await;
        if plan.is_empty() {
            text.push_str(&format!(
                "{heading}: in step ({} objects owned), nothing to change\n",
                actual.len()
            ));
            continue;
        }
        text.push_str(&format!("{heading}: {} operation(s)\n", plan.ops.len()));
        for op in &plan.ops {
            text.push_str(&format!("  {op}\n"));
        }
    }
    Ok(PlanReport { text, failed })
}
