//! Threat feeds: reading published IP lists and turning them into the minimal, guarded set of
//! CIDRs a deny policy can use.
//!
//! `format` parses a feed's content (pure), [`crate::netset`] does the set arithmetic (pure), and
//! `normalize` applies the guards. Fetching feeds over HTTP and publishing them to the cluster
//! build on these and live elsewhere.

pub mod config;
pub mod fetch;
pub mod format;
pub mod normalize;
pub mod render;
pub mod sync;
