//! Zone-based policy from a firewall manager: FortiManager policy packages and Panorama
//! rulebases, read into [`crate::firewall::rules::Rulebase`] and translated ([`translate`])
//! into Calico policy in a tier of their own.

pub mod translate;
