//! Commands that run outside the daemon: `check`, `enrich`, `feed` and `firewall`. Each reuses
//! the daemon's own parsing, enrichment, encoding and planning code.

pub mod check;
pub mod enrich;
pub mod feed;
pub mod firewall;
