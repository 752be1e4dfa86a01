//! Commands that run outside the daemon: `check`, `enrich` and `feed`. Each reuses the daemon's own
//! parsing, enrichment and encoding code.

pub mod check;
pub mod enrich;
pub mod feed;
