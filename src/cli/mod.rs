//! Commands that run outside the daemon: `check` and `enrich`. Each reuses the daemon's own
//! parsing, enrichment and encoding code.

pub mod check;
pub mod enrich;
