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
use crate::policy_import::translate;
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

/// `threatflow firewall import`'s arguments.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// A FortiManager JSON export (a package's `firewall/policy` and the ADOM's objects, as the
    /// JSON-RPC API returns them) or a Panorama `running-config.xml`.
    #[arg(long = "from", value_name = "FILE")]
    pub from: std::path::PathBuf,
    /// The Calico tier the policy goes in.
    #[arg(long, value_name = "NAME")]
    pub tier: String,
    /// For a Panorama configuration: the device group whose rules apply (`shared` for the
    /// shared rules alone).
    #[arg(long, value_name = "NAME")]
    pub device_group: Option<String>,
    #[arg(long, default_value_t = translate::DEFAULT_TIER_ORDER)]
    pub tier_order: f64,
    /// Write StagedGlobalNetworkPolicy objects (recorded, not enforced).
    #[arg(long)]
    pub staged: bool,
    #[arg(long, default_value = translate::DEFAULT_ZONE_LABEL)]
    pub zone_label: String,
    #[arg(long, default_value = translate::DEFAULT_GROUP_LABEL)]
    pub group_label: String,
    /// A zone outside the cluster and its networks, e.g. `wan=0.0.0.0/0,::/0`; repeatable.
    #[arg(long, value_name = "ZONE=CIDR,...")]
    pub external_zone: Vec<String>,
    /// FQDN destinations as domain sets (Calico Enterprise); without it such rules are
    /// refused.
    #[arg(long)]
    pub domain_rules: bool,
    /// A cluster zone no rule names (it gets the intrazone default); repeatable.
    #[arg(long, value_name = "ZONE")]
    pub zone: Vec<String>,
}

/// What `firewall import` made: the YAML, and a report for standard error.
pub struct ImportReport {
    pub yaml: String,
    pub report: String,
    /// A deny rule was refused: the daemon would not publish this.
    pub skipped_deny: bool,
}

/// Translates an export into the tier's Calico objects.
pub fn import_command(args: &ImportArgs) -> anyhow::Result<ImportReport> {
    let text = std::fs::read_to_string(&args.from)
        .with_context(|| format!("cannot read {}", args.from.display()))?;
    let mut problems = Vec::new();
    if let Err(problem) = crate::policy_import::check_tier(&args.tier) {
        problems.push(format!("--tier: {problem}"));
    }
    for (flag, key) in [
        ("--zone-label", &args.zone_label),
        ("--group-label", &args.group_label),
    ] {
        if let Err(problem) = crate::cluster::selector::label_key(key) {
            problems.push(format!("{flag}: {problem}"));
        }
    }
    let mut settings = translate::Settings::new(&args.tier);
    settings.tier_order = args.tier_order;
    settings.staged = args.staged;
    settings.domain_rules = args.domain_rules;
    settings.zones = args.zone.iter().cloned().collect();
    settings.zone_label.clone_from(&args.zone_label);
    settings.group_label.clone_from(&args.group_label);
    for zone in &args.external_zone {
        match crate::policy_import::parse_external_zone(zone) {
            Ok((zone, nets)) => {
                settings.external_zones.insert(zone, nets);
            }
            Err(problem) => problems.push(format!("--external-zone {problem}")),
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    // The file's name, not its path: the objects do not depend on where the export lies.
    let origin = args.from.file_name().map_or_else(
        || args.from.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let rulebase =
        crate::policy_import::rulebase_of_export(&text, args.device_group.as_deref(), &origin)
            .map_err(|error| anyhow::anyhow!("{}: {error}", args.from.display()))?;
    let translation = translate::translate(&rulebase, &settings);
    let mut yaml = format!("---\n{}", translation.tier.to_yaml());
    for object in &translation.objects {
        yaml.push_str("---\n");
        yaml.push_str(&object.to_yaml());
    }
    let mut report = format!(
        "{}: {} rules translated into {} objects, {} disabled, {} refused\n",
        rulebase.origin,
        translation.translated,
        translation.objects.len(),
        translation.disabled,
        translation.skipped.len()
    );
    for skipped in &translation.skipped {
        report.push_str(&format!(
            "  refused rule {} `{}` ({:?}): {}\n",
            skipped.position, skipped.name, skipped.verdict, skipped.reason
        ));
    }
    let skipped_deny = translation.skipped_denies().next().is_some();
    if skipped_deny {
        report.push_str(
            "a refused deny rule would let through what the firewall stops: the daemon does not \
             publish this rulebase unless `allow_skipped_denies` is set\n",
        );
    }
    Ok(ImportReport {
        yaml,
        report,
        skipped_deny,
    })
}
