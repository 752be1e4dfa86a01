//! Choosing which labels reach the SIEM: keys kept by `include` patterns (all when empty), then
//! dropped by `exclude` patterns. A pattern is a label key with `*` standing for any run of
//! characters (`app.kubernetes.io/*`, `*-hash`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::problems::Problems;

/// Which labels enrichment passes on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LabelFilter {
    /// Keep only label keys matching one of these patterns (all keys when empty).
    pub include: Vec<String>,
    /// Then drop label keys matching one of these patterns (e.g. `pod-template-hash`).
    pub exclude: Vec<String>,
}

impl LabelFilter {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether a `key=value` label (or a bare key) is passed on.
    pub fn keeps(&self, label: &str) -> bool {
        let key = label.split_once('=').map_or(label, |(key, _)| key);
        (self.include.is_empty() || self.include.iter().any(|pattern| matches(pattern, key)))
            && !self.exclude.iter().any(|pattern| matches(pattern, key))
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        for (name, patterns) in [("include", &self.include), ("exclude", &self.exclude)] {
            for (i, pattern) in patterns.iter().enumerate() {
                if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c == '=') {
                    problems.push(
                        format!("{path}.{name}[{i}]"),
                        "must be a label key, optionally with `*` wildcards",
                    );
                }
            }
        }
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn matches(pattern: &str, key: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = key.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let check = |pattern: &str, key: &str, expected: bool| {
            assert_eq!(matches(pattern, key), expected, "{pattern} ~ {key}")
        };
        check("app", "app", true);
        check("app", "apps", false);
        check("app.kubernetes.io/*", "app.kubernetes.io/name", true);
        check("app.kubernetes.io/*", "app", false);
        check("*-hash", "pod-template-hash", true);
        check("*-hash", "hash", false);
        check("a*b*c", "axxbyyc", true);
        check("a*b*c", "acb", false);
        check("*", "anything", true);
    }

    #[test]
    fn include_then_exclude() {
        let filter = LabelFilter {
            include: vec!["app*".into(), "team".into()],
            exclude: vec!["*-hash".into(), "app.kubernetes.io/managed-by".into()],
        };
        let kept: Vec<&str> = [
            "app=web",
            "team=x",
            "tier=y",
            "app-hash=z",
            "app.kubernetes.io/managed-by=helm",
            "app.kubernetes.io/name=web",
        ]
        .into_iter()
        .filter(|label| filter.keeps(label))
        .collect();
        assert_eq!(kept, ["app=web", "team=x", "app.kubernetes.io/name=web"]);
        assert!(LabelFilter::default().keeps("anything=at-all"));
    }
}
