//! What every outbound client shares: TLS setup ([`tls`]), jittered exponential backoff
//! ([`backoff`]) and an HTTP client with timeouts, a body cap, secret headers and URL redaction
//! ([`http`]). The syslog sink, the feed fetcher and the firewall clients all build on these, so
//! certificate verification, retry pacing and what may reach a log are decided once.

pub mod backoff;
pub mod http;
pub mod rate;
pub mod tls;
