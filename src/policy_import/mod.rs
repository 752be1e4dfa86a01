//! Zone-based policy from a firewall manager: FortiManager policy packages and Panorama
//! rulebases, read into [`crate::firewall::rules::Rulebase`] and translated ([`translate`])
//! into Calico policy in a tier of their own.

pub mod config;
pub mod run;
pub mod translate;

use crate::firewall::fortimanager::rules as fortimanager;
use crate::firewall::panorama::rules as panorama;
use crate::firewall::rules::Rulebase;

/// A rulebase from an export: a FortiManager JSON export (a package's policies and the ADOM's
/// objects) or a Panorama `running-config.xml` (`device_group` picks the device group).
pub fn rulebase_of_export(
    text: &str,
    device_group: Option<&str>,
    origin: &str,
) -> Result<Rulebase, String> {
    match text.trim_start().chars().next() {
        Some('<') => {
            let device_group = device_group.ok_or(
                "a Panorama configuration needs the device group whose rules apply (or `shared`)",
            )?;
            panorama::rulebase_of_config(text, device_group)
        }
        Some('{') => {
            let export: serde_json::Value =
                serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
            let tables = fortimanager::export_tables(&export)?;
            fortimanager::rulebase(&tables, format!("fortimanager export {origin}"))
        }
        _ => Err("expected a FortiManager JSON export or a Panorama configuration XML".into()),
    }
}

/// Tiers Calico (or Kubernetes' admin policies) reserve.
const RESERVED_TIERS: [&str; 5] = [
    "default",
    "allow-tigera",
    "adminnetworkpolicy",
    "baselineadminnetworkpolicy",
    "kube-admin",
];

/// Whether `name` can name threatflow's tier: a DNS label of at most 40 characters (policy
/// names start with it), not one Calico reserves.
pub fn check_tier(name: &str) -> Result<(), String> {
    let label = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !label {
        return Err(format!(
            "tier `{name}`: expected lower-case letters, digits and `-`, at most 40 characters"
        ));
    }
    if RESERVED_TIERS.contains(&name) || name.starts_with("kube-") {
        return Err(format!("tier `{name}` is reserved by Calico or Kubernetes"));
    }
    Ok(())
}

/// `wan=0.0.0.0/0,::/0`: an external zone and its networks.
pub fn parse_external_zone(text: &str) -> Result<(String, Vec<ipnet::IpNet>), String> {
    let (zone, nets) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected ZONE=CIDR[,CIDR...]"))?;
    let nets = nets
        .split(',')
        .map(|net| {
            net.trim()
                .parse::<ipnet::IpNet>()
                .map(|net| net.trunc())
                .map_err(|_| format!("`{text}`: `{net}` is not a CIDR"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((zone.trim().to_owned(), nets))
}
