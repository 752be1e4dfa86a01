//! Problems found in a configuration, each at a path such as `sinks[1].syslog.port`.
//!
//! A leaf: every section's settings validate themselves into a [`Problems`], and
//! `Config::validate` only delegates, so this module knows no settings type.

use std::fmt;

/// One thing wrong with a configuration, at a path such as `sinks[1].syslog.port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }

    /// The paths of the problems, in order.
    pub fn paths(&self) -> Vec<&str> {
        self.0.iter().map(|problem| problem.path.as_str()).collect()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.0 {
            writeln!(f, "  {problem}")?;
        }
        Ok(())
    }
}

/// Names that double as Kubernetes object names or label values: a DNS-1123 label
/// (lower-case letters, digits and `-`, starting and ending alphanumeric) of at most `max`
/// characters. Namespaces, feed names, tiers and the Lease's name all follow it.
pub fn is_dns_label(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated DNS labels, at most 253 characters (object names such
/// as a Lease's or a GlobalNetworkSet's).
pub fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(|label| is_dns_label(label, 63))
}

/// A host name or address to connect to (a syslog receiver, a firewall): DNS labels of
/// letters, digits, `-` and `_`, or an IP address.
pub fn is_host(text: &str) -> bool {
    if text.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A component's name (a source, a sink): 1 to 63 letters, digits, `-` or `_`, unique
/// among its kind. It appears in metric labels and logs.
pub fn check_unique_name<'a>(
    path: &str,
    name: &'a str,
    seen: &mut std::collections::HashSet<&'a str>,
    problems: &mut Problems,
) {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        problems.push(
            path,
            format!("`{name}` must be 1 to 63 letters, digits, `-` or `_`"),
        );
    } else if !seen.insert(name) {
        problems.push(path, format!("`{name}` is used twice"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_label("feodo-1", 63));
        assert!(!is_dns_label("-feodo", 63));
        assert!(!is_dns_label("Feodo", 63));
        assert!(!is_dns_label(&"a".repeat(64), 63));
        assert!(is_dns_subdomain("threatfeed.feodo.3"));
        assert!(!is_dns_subdomain("threatfeed..feodo"));
        assert!(is_host("siem.example.com"));
        assert!(is_host("fd00::1"));
        assert!(is_host("my_host"));
        assert!(!is_host("bad host"));
        assert!(!is_host(""));
    }
}
