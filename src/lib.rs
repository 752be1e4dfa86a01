//! threatflow: threat feeds into Calico policy, and Kubernetes flow logs enriched with workload
//! identity into a SIEM as CEF over syslog.
//!
//! The crate is a library with a thin binary. See ARCHITECTURE.md for the data flow and the
//! code map.

#![forbid(unsafe_code)]

pub mod ack;
pub mod address_sync;
pub mod app;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod deps;
pub mod egress;
pub mod enrich;
pub mod feeds;
pub mod firewall;
pub mod flow;
pub mod identity;
pub mod k8s;
pub mod kafka;
pub mod net;
pub mod netset;
pub mod pipeline;
pub mod policy_import;
pub mod problems;
pub mod secret;
pub mod sink;
pub mod telemetry;
