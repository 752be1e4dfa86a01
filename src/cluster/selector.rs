//! Kubernetes label selectors: `matchLabels` plus set-based `matchExpressions` (`In`, `NotIn`,
//! `Exists`, `DoesNotExist`), parsed from the API's string form (`app=web,tier!=db,env in
//! (prod,stage),!legacy`) or built from a service's equality selector.
//!
//! Queries over the cluster model take anything that implements [`Selects`], so other selector
//! languages (Calico's, in the firewall integrations) plug in beside this one.

use std::collections::BTreeMap;
use std::fmt;

/// Label lookup, as the model's objects offer it.
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Something that picks objects by their labels.
pub trait Selects {
    fn selects(&self, labels: &dyn Labels) -> bool;
}

/// One set-based requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `key in (a,b)`, or `key=a` / `key==a`.
    In(String, Vec<String>),
    /// `key notin (a,b)`, or `key!=a`: also true when the key is absent.
    NotIn(String, Vec<String>),
    /// `key`
    Exists(String),
    /// `!key`
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &dyn Labels) -> bool {
        match self {
            Requirement::In(key, values) => labels
                .label(key)
                .is_some_and(|value| values.iter().any(|wanted| wanted == value)),
            Requirement::NotIn(key, values) => labels
                .label(key)
                .is_none_or(|value| values.iter().all(|unwanted| unwanted != value)),
            Requirement::Exists(key) => labels.label(key).is_some(),
            Requirement::DoesNotExist(key) => labels.label(key).is_none(),
        }
    }
}

/// All requirements must hold; no requirement selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    /// A service's selector that is empty selects no pod (the API's rule for services), unlike
    /// an empty label selector, which selects all.
    nothing: bool,
}

/// A selector string that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a label selector: {reason}")]
pub struct SelectorError {
    pub text: String,
    pub reason: String,
}

impl LabelSelector {
    /// Selects every object.
    pub fn everything() -> LabelSelector {
        LabelSelector::default()
    }

    /// A service's `spec.selector`: every pair must match; an empty one selects nothing.
    pub fn from_service(selector: &BTreeMap<String, String>) -> LabelSelector {
        LabelSelector {
            requirements: selector
                .iter()
                .map(|(key, value)| Requirement::In(key.clone(), vec![value.clone()]))
                .collect(),
            nothing: selector.is_empty(),
        }
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Parses the API's string form: comma-separated `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
    /// `k notin (a,b)`, `k`, `!k`.
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let error = |reason: &str| SelectorError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(LabelSelector::everything());
        }
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                return Err(error("an empty requirement"));
            }
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(label_key(key.trim()).map_err(|reason| error(&reason))?)
            } else if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotIn(
                    label_key(key.trim()).map_err(|reason| error(&reason))?,
                    vec![label_value(value.trim()).map_err(|reason| error(&reason))?],
                )
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                Requirement::In(
                    label_key(key.trim()).map_err(|reason| error(&reason))?,
                    vec![label_value(value.trim()).map_err(|reason| error(&reason))?],
                )
            } else if let Some((key, operator, values)) = set_term(term) {
                let key = label_key(key).map_err(|reason| error(&reason))?;
                let values = values
                    .split(',')
                    .map(|value| label_value(value.trim()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| error(&reason))?;
                match operator {
                    "in" => Requirement::In(key, values),
                    _ => Requirement::NotIn(key, values),
                }
            } else {
                Requirement::Exists(label_key(term).map_err(|reason| error(&reason))?)
            };
            requirements.push(requirement);
        }
        Ok(LabelSelector {
            requirements,
            nothing: false,
        })
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty() && !self.nothing
    }
}

impl Selects for LabelSelector {
    fn selects(&self, labels: &dyn Labels) -> bool {
        !self.nothing
            && self
                .requirements
                .iter()
                .all(|requirement| requirement.matches(labels))
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match requirement {
                Requirement::In(key, values) if values.len() == 1 => {
                    write!(f, "{key}={}", values[0])?
                }
                Requirement::In(key, values) => write!(f, "{key} in ({})", values.join(","))?,
                Requirement::NotIn(key, values) if values.len() == 1 => {
                    write!(f, "{key}!={}", values[0])?
                }
                Requirement::NotIn(key, values) => write!(f, "{key} notin ({})", values.join(","))?,
                Requirement::Exists(key) => f.write_str(key)?,
                Requirement::DoesNotExist(key) => write!(f, "!{key}")?,
            }
        }
        Ok(())
    }
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

/// `key in (values)` or `key notin (values)`: the key, operator and the text between the
/// parentheses.
fn set_term(term: &str) -> Option<(&str, &'static str, &str)> {
    let open = term.find('(')?;
    let values = term[open + 1..].strip_suffix(')')?;
    let head = term[..open].trim_end();
    for operator in ["notin", "in"] {
        if let Some(key) = head.strip_suffix(operator) {
            if key.ends_with(char::is_whitespace) {
                return Some((key.trim(), operator, values));
            }
        }
    }
    None
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of 1 to 63 characters.
pub fn label_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(crate::problems::is_dns_subdomain);
    if !prefix_ok || !is_label_name(name) {
        return Err(format!("`{key}` is not a label key"));
    }
    Ok(key.to_owned())
}

/// A label value: empty, or 1 to 63 letters, digits, `-`, `_` and `.`, starting and ending
/// with a letter or digit.
pub fn label_value(value: &str) -> Result<String, String> {
    if value.is_empty() || is_label_name(value) {
        Ok(value.to_owned())
    } else {
        Err(format!("`{value}` is not a label value"))
    }
}

fn is_label_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && text
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && text
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches_every_operator() {
        let check = |selector: &str, pairs: &[(&str, &str)], expected: bool| {
            let parsed = LabelSelector::parse(selector).unwrap();
            assert_eq!(
                parsed.selects(&labels(pairs)),
                expected,
                "{selector} on {pairs:?}"
            );
            // Printing and parsing again gives the same selector.
            assert_eq!(LabelSelector::parse(&parsed.to_string()).unwrap(), parsed);
        };
        check("app=web", &[("app", "web")], true);
        check("app==web", &[("app", "db")], false);
        check("app!=web", &[], true);
        check("app!=web", &[("app", "web")], false);
        check("env in (prod, stage)", &[("env", "stage")], true);
        check("env in (prod,stage)", &[("env", "dev")], false);
        check("env notin (prod)", &[], true);
        check("env notin (prod)", &[("env", "prod")], false);
        check("tier", &[("tier", "")], true);
        check("!legacy", &[("legacy", "x")], false);
        check(
            "app=web,env in (prod,stage),!legacy,example.com/team",
            &[("app", "web"), ("env", "prod"), ("example.com/team", "a")],
            true,
        );
        check("", &[], true);
    }

    #[test]
    fn refuses_what_is_not_a_selector() {
        assert!(
            LabelSelector::parse("app=").is_ok(),
            "an empty value is a value"
        );
        for bad in [
            "=web",
            "app=we b",
            "a,,b",
            "env in (a",
            "bad key!",
            "app=-x",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_services_empty_selector_selects_nothing() {
        assert!(!LabelSelector::from_service(&BTreeMap::new()).selects(&labels(&[("a", "b")])));
        assert!(LabelSelector::from_service(&labels(&[("app", "web")]))
            .selects(&labels(&[("app", "web"), ("x", "y")])));
    }
}
