//! Commands that run outside the daemon: `admission`, `check`, `enrich`, `feed` and `firewall`.
//! Each reuses the daemon's own parsing, enrichment, encoding and planning code.

pub mod admission;
pub mod check;
pub mod enrich;
pub mod feed;
pub mod firewall;
