//! `threatflow admission render`: the admission guard for egress identities, as the YAML
//! `kubectl apply -f -` takes.

use std::path::Path;

use crate::config::Config;

/// Loads and validates the config file at `config_path` and renders its
/// `firewall.egress_identities.admission` section: the policy, then its binding.
pub fn render(config_path: &Path) -> anyhow::Result<String> {
    let config = Config::load_valid(config_path)?;
    let admission = config
        .firewall
        .as_ref()
        .and_then(|firewall| firewall.egress_identities.as_ref())
        .and_then(|egress| egress.admission.as_ref());
    let Some(admission) = admission else {
        anyhow::bail!(
            "{} has no `firewall.egress_identities.admission` section: add it, with the egress \
             identities and who may assign them, to render the admission policy",
            config_path.display()
        );
    };
    Ok(admission.to_yaml())
}
