//! Calico's selector language, parsed and evaluated: what `spec.selector` of a Calico policy,
//! and the `selector` of a threatflow address group, pick.
//!
//! ```text
//! expr     := or
//! or       := and ( "||" and )*
//! and      := unary ( "&&" unary )*
//! unary    := "!" unary | "(" expr ")" | match
//! match    := "all()" | "global()" | "has(" key ")"
//!           | key ( "==" | "!=" ) string
//!           | key [ "not" ] "in" "{" [ string ( "," string )* ] "}"
//!           | key ( "contains" | "starts with" | "ends with" ) string
//! string   := '…' | "…"            key := [A-Za-z0-9_./-]+
//! ```
//!
//! Precedence, highest first: the match operators, parentheses, `!`, `&&`, `||`. `k != 'v'` and
//! `k not in {…}` also match resources without `k`, as in Calico. `global()` matches only
//! resources outside namespaces (global network sets), never a pod. Printing a parsed selector
//! gives text that parses to the same selector.

use std::fmt;

use crate::cluster::{Labels, Selects};
use crate::k8s::calico::labels::NAME as NAME_LABEL;

/// A namespace's labels as Calico selectors see them (a `namespaceSelector`): its own, and its
/// name as `projectcalico.org/name`.
pub struct NamespaceLabels<'a> {
    pub name: &'a str,
    pub labels: &'a dyn Labels,
}

impl Labels for NamespaceLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            NAME_LABEL => Some(self.name),
            _ => self.labels.label(key),
        }
    }
}

/// The longest selector accepted.
pub const MAX_LENGTH: usize = 4096;
/// The deepest nesting of `(` and `!` accepted.
pub const MAX_DEPTH: usize = 64;

/// A parsed Calico selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    All,
    Global,
    Has(String),
    Equal(String, String),
    NotEqual(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Selector>),
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

/// A selector that does not parse: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a Calico selector at character {at}: {reason}")]
pub struct SelectorError {
    pub at: usize,
    pub reason: String,
}

impl Selector {
    /// Parses a selector; an empty one is `all()`, as in Calico. Selectors come from the
    /// cluster too (mirrored policies), so their size is bounded: at most [`MAX_LENGTH`]
    /// characters and [`MAX_DEPTH`] levels of `(` and `!`.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        if text.len() > MAX_LENGTH {
            return Err(SelectorError {
                at: MAX_LENGTH,
                reason: format!("longer than {MAX_LENGTH} characters"),
            });
        }
        let mut parser = Parser {
            text,
            at: 0,
            depth: 0,
        };
        parser.skip_space();
        if parser.at == text.len() {
            return Ok(Selector::All);
        }
        let selector = parser.or()?;
        parser.skip_space();
        if parser.at != text.len() {
            return Err(parser.error("unexpected text after the selector"));
        }
        Ok(selector)
    }

    /// Whether the selector picks a resource with `labels`; `namespaced` says whether the
    /// resource lives in a namespace (a pod) or not (a global network set).
    pub fn matches(&self, labels: &dyn Labels, namespaced: bool) -> bool {
        match self {
            Selector::All => true,
            Selector::Global => !namespaced,
            Selector::Has(key) => labels.label(key).is_some(),
            Selector::Equal(key, value) => labels.label(key) == Some(value.as_str()),
            Selector::NotEqual(key, value) => labels.label(key) != Some(value.as_str()),
            Selector::In(key, values) => labels
                .label(key)
                .is_some_and(|found| values.iter().any(|value| value == found)),
            Selector::NotIn(key, values) => labels
                .label(key)
                .is_none_or(|found| values.iter().all(|value| value != found)),
            Selector::Contains(key, part) => {
                labels.label(key).is_some_and(|v| v.contains(part.as_str()))
            }
            Selector::StartsWith(key, part) => labels
                .label(key)
                .is_some_and(|v| v.starts_with(part.as_str())),
            Selector::EndsWith(key, part) => labels
                .label(key)
                .is_some_and(|v| v.ends_with(part.as_str())),
            Selector::Not(inner) => !inner.matches(labels, namespaced),
            Selector::And(left, right) => {
                left.matches(labels, namespaced) && right.matches(labels, namespaced)
            }
            Selector::Or(left, right) => {
                left.matches(labels, namespaced) || right.matches(labels, namespaced)
            }
        }
    }

    /// A label key and values one of which every resource the selector picks must have
    /// (from `key == 'value'` or `key in {...}`), if there is such a key: an index of labels
    /// can then narrow the candidates before the selector is evaluated.
    pub fn required_label(&self) -> Option<(&str, Vec<&str>)> {
        match self {
            Selector::Equal(key, value) => Some((key, vec![value.as_str()])),
            Selector::In(key, values) => Some((key, values.iter().map(String::as_str).collect())),
            Selector::And(left, right) => left.required_label().or_else(|| right.required_label()),
            _ => None,
        }
    }

    /// How tightly the top of this selector binds, for printing parentheses only where
    /// needed: `||` 0, `&&` 1, `!` 2, a match 3.
    fn binding(&self) -> u8 {
        match self {
            Selector::Or(..) => 0,
            Selector::And(..) => 1,
            Selector::Not(..) => 2,
            _ => 3,
        }
    }
}

/// Pods and namespaces are what threatflow's selectors pick: namespaced resources.
impl Selects for Selector {
    fn selects(&self, labels: &dyn Labels) -> bool {
        self.matches(labels, true)
    }
}

/// A string literal, in single quotes unless it holds one.
fn quote(text: &str) -> String {
    if text.contains('\'') {
        format!("\"{text}\"")
    } else {
        format!("'{text}'")
    }
}

fn quoted_list(values: &[String]) -> String {
    values
        .iter()
        .map(|value| quote(value))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let operand = |f: &mut fmt::Formatter<'_>, inner: &Selector, binding: u8| {
            if inner.binding() < binding {
                write!(f, "({inner})")
            } else {
                write!(f, "{inner}")
            }
        };
        match self {
            Selector::All => f.write_str("all()"),
            Selector::Global => f.write_str("global()"),
            Selector::Has(key) => write!(f, "has({key})"),
            Selector::Equal(key, value) => write!(f, "{key} == {}", quote(value)),
            Selector::NotEqual(key, value) => write!(f, "{key} != {}", quote(value)),
            Selector::In(key, values) => write!(f, "{key} in {{{}}}", quoted_list(values)),
            Selector::NotIn(key, values) => write!(f, "{key} not in {{{}}}", quoted_list(values)),
            Selector::Contains(key, part) => write!(f, "{key} contains {}", quote(part)),
            Selector::StartsWith(key, part) => write!(f, "{key} starts with {}", quote(part)),
            Selector::EndsWith(key, part) => write!(f, "{key} ends with {}", quote(part)),
            Selector::Not(inner) => {
                f.write_str("!")?;
                operand(f, inner, 2)
            }
            Selector::And(left, right) => {
                operand(f, left, 1)?;
                f.write_str(" && ")?;
                operand(f, right, 2)
            }
            Selector::Or(left, right) => {
                operand(f, left, 0)?;
                f.write_str(" || ")?;
                operand(f, right, 1)
            }
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
    /// Open `(` and `!` around the current position.
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &str) -> SelectorError {
        SelectorError {
            at: self.at,
            reason: reason.to_owned(),
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    /// Consumes `token` (after spaces) if it comes next.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    /// Consumes a word (`in`, `not`, `contains`, ...) only when it is a whole word.
    fn eat_word(&mut self, word: &str) -> bool {
        self.skip_space();
        let rest = self.rest();
        let whole = rest.starts_with(word)
            && !rest[word.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'));
        if whole {
            self.at += word.len();
        }
        whole
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.and()?;
        while self.eat("||") {
            let right = self.and()?;
            left = Selector::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut left = self.unary()?;
        while self.eat("&&") {
            let right = self.unary()?;
            left = Selector::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_space();
        if self.rest().starts_with("!=") {
            return Err(self.error("`!=` needs a label key before it"));
        }
        let not = self.eat("!");
        if not || self.eat("(") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.error(&format!("nested deeper than {MAX_DEPTH} levels")));
            }
            let inner = match not {
                true => Selector::Not(Box::new(self.unary()?)),
                false => {
                    let inner = self.or()?;
                    if !self.eat(")") {
                        return Err(self.error("expected `)`"));
                    }
                    inner
                }
            };
            self.depth -= 1;
            return Ok(inner);
        }
        self.matcher()
    }

    fn matcher(&mut self) -> Result<Selector, SelectorError> {
        self.skip_space();
        for (word, selector) in [("all", Selector::All), ("global", Selector::Global)] {
            let start = self.at;
            if self.eat_word(word) {
                if self.eat("(") && self.eat(")") {
                    return Ok(selector);
                }
                self.at = start;
            }
        }
        let start = self.at;
        if self.eat_word("has") && self.eat("(") {
            let key = self.key()?;
            if !self.eat(")") {
                return Err(self.error("expected `)` after the label key"));
            }
            return Ok(Selector::Has(key));
        }
        self.at = start;
        let key = self.key()?;
        if self.eat("==") {
            return Ok(Selector::Equal(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::NotEqual(key, self.string()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.error("expected `in` after `not`"));
            }
            return Ok(Selector::NotIn(key, self.set()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(key, self.set()?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(key, self.string()?));
        }
        if self.eat_word("starts") {
            if !self.eat_word("with") {
                return Err(self.error("expected `with` after `starts`"));
            }
            return Ok(Selector::StartsWith(key, self.string()?));
        }
        if self.eat_word("ends") {
            if !self.eat_word("with") {
                return Err(self.error("expected `with` after `ends`"));
            }
            return Ok(Selector::EndsWith(key, self.string()?));
        }
        Err(self.error(&format!(
            "expected an operator after `{key}` (==, !=, in, not in, contains, starts with, ends with)"
        )))
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_space();
        let length = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')))
            .unwrap_or(self.rest().len());
        if length == 0 {
            return Err(self.error("expected a label key"));
        }
        let key = self.rest()[..length].to_owned();
        self.at += length;
        Ok(key)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_space();
        let Some(quote) = self
            .rest()
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"')
        else {
            return Err(self.error("expected a quoted string"));
        };
        let Some(end) = self.rest()[1..].find(quote) else {
            return Err(self.error("the string is not closed"));
        };
        let value = self.rest()[1..1 + end].to_owned();
        self.at += end + 2;
        Ok(value)
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        if !self.eat("{") {
            return Err(self.error("expected `{`"));
        }
        let mut values = Vec::new();
        if self.eat("}") {
            return Ok(values);
        }
        loop {
            values.push(self.string()?);
            if self.eat("}") {
                return Ok(values);
            }
            if !self.eat(",") {
                return Err(self.error("expected `,` or `}`"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    /// `(selector, labels, expected)`, the examples of Calico's selector reference among them.
    #[test]
    fn calicos_examples_and_every_operator() {
        let check = |selector: &str, pairs: &[(&str, &str)], expected: bool| {
            let parsed =
                Selector::parse(selector).unwrap_or_else(|error| panic!("{selector}: {error}"));
            assert_eq!(
                parsed.matches(&labels(pairs), true),
                expected,
                "{selector} on {pairs:?}"
            );
            assert_eq!(
                Selector::parse(&parsed.to_string()).unwrap(),
                parsed,
                "{selector}"
            );
        };
        check("all()", &[], true);
        check("!all()", &[("a", "b")], false);
        check("global()", &[], false);
        check("role == 'database'", &[("role", "database")], true);
        check("role == \"database\"", &[("role", "frontend")], false);
        check("k != 'v'", &[], true);
        check("k != 'v'", &[("k", "v")], false);
        check("has(k)", &[("k", "")], true);
        check("!has(k)", &[("k", "x")], false);
        check("k in { 'v1', 'v2' }", &[("k", "v2")], true);
        check("k in {}", &[("k", "v2")], false);
        check("k not in { 'v1', 'v2' }", &[], true);
        check("k not in { 'v1', 'v2' }", &[("k", "v1")], false);
        check("k contains 's'", &[("k", "xsx")], true);
        check("k starts with 'prod'", &[("k", "production")], true);
        check("k ends with 'tion'", &[("k", "production")], true);
        check("k ends with 'tion'", &[], false);
        check(
            "projectcalico.org/namespace == 'default'",
            &[("projectcalico.org/namespace", "default")],
            true,
        );
        check(
            "projectcalico.org/tier == 'default'",
            &[("projectcalico.org/tier", "security")],
            false,
        );
        // The reference's precedence example: `!` binds tighter than `&&`, `&&` than `||`.
        let example =
            "! has(my-label) || my-label starts with 'prod' && role in {'frontend','business'}";
        check(example, &[], true);
        check(
            example,
            &[("my-label", "prod-1"), ("role", "business")],
            true,
        );
        check(example, &[("my-label", "prod-1"), ("role", "db")], false);
        check(example, &[("my-label", "dev"), ("role", "frontend")], false);
        check("(a == 'x' || b == 'y') && !(c == 'z')", &[("b", "y")], true);
        check(
            "(a == 'x' || b == 'y') && !(c == 'z')",
            &[("b", "y"), ("c", "z")],
            false,
        );
        check("", &[], true);
        check("app == \"it's\"", &[("app", "it's")], true);
    }

    #[test]
    fn a_required_label_is_found_only_where_every_match_has_it() {
        let required = |text: &str| {
            Selector::parse(text)
                .unwrap()
                .required_label()
                .map(|(key, values)| format!("{key}={}", values.join("|")))
        };
        assert_eq!(required("app == 'web'").as_deref(), Some("app=web"));
        assert_eq!(
            required("has(x) && tier in {'db'}").as_deref(),
            Some("tier=db")
        );
        assert_eq!(required("tier in {'a', 'b'}").as_deref(), Some("tier=a|b"));
        assert_eq!(required("tier in {}").as_deref(), Some("tier="));
        assert_eq!(required("app == 'web' || app == 'api'"), None);
        assert_eq!(required("!(app == 'web')"), None);
        assert_eq!(required("tier not in {'a'}"), None);
    }

    #[test]
    fn hostile_selectors_are_refused_not_overflowing_the_stack() {
        let deep = format!("{}all(){}", "(".repeat(10_000), ")".repeat(10_000));
        let error = Selector::parse(&deep[..MAX_LENGTH]).unwrap_err();
        assert!(error.reason.contains("nested deeper"), "{error}");
        let error = Selector::parse(&"!".repeat(100)).unwrap_err();
        assert!(error.reason.contains("nested deeper"), "{error}");
        assert!(Selector::parse(&deep)
            .unwrap_err()
            .reason
            .contains("longer than"));
        let long_chain = vec!["a == 'b'"; 300].join(" && ");
        assert!(
            Selector::parse(&long_chain).is_ok(),
            "a long flat chain is fine"
        );
        let nested = format!("{}all(){}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(Selector::parse(&nested).is_ok());
    }

    #[test]
    fn global_matches_only_resources_outside_namespaces() {
        let global = Selector::parse("global() && feed == 'x'").unwrap();
        assert!(global.matches(&labels(&[("feed", "x")]), false));
        assert!(!global.matches(&labels(&[("feed", "x")]), true));
    }

    #[test]
    fn what_is_not_a_selector_says_where() {
        for (bad, at) in [
            ("app = 'x'", 4),
            ("app == x", 7),
            ("app == 'x", 7),
            ("has(app", 7),
            ("(a == 'b'", 9),
            ("a in {'b' 'c'}", 10),
            ("a == 'b' &&", 11),
            ("a == 'b' junk", 9),
            ("a not {}", 6),
        ] {
            let error = Selector::parse(bad).unwrap_err();
            assert_eq!(error.at, at, "{bad}: {error}");
        }
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "app",
            "tier",
            "projectcalico.org/namespace",
            "example.com/team-1",
            "has",
            "in",
            "not",
        ])
        .prop_map(str::to_owned)
    }

    fn value() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "", "web", "a b", "it's", "x\"y", "&&", "||", "()", "{}",
        ])
        .prop_map(str::to_owned)
    }

    fn selector() -> impl Strategy<Value = Selector> {
        let leaf = prop_oneof![
            Just(Selector::All),
            Just(Selector::Global),
            key().prop_map(Selector::Has),
            (key(), value()).prop_map(|(k, v)| Selector::Equal(k, v)),
            (key(), value()).prop_map(|(k, v)| Selector::NotEqual(k, v)),
            (key(), prop::collection::vec(value(), 0..3)).prop_map(|(k, v)| Selector::In(k, v)),
            (key(), prop::collection::vec(value(), 0..3)).prop_map(|(k, v)| Selector::NotIn(k, v)),
            (key(), value()).prop_map(|(k, v)| Selector::Contains(k, v)),
            (key(), value()).prop_map(|(k, v)| Selector::StartsWith(k, v)),
            (key(), value()).prop_map(|(k, v)| Selector::EndsWith(k, v)),
        ];
        leaf.prop_recursive(4, 32, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|s| Selector::Not(Box::new(s))),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| Selector::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner).prop_map(|(a, b)| Selector::Or(Box::new(a), Box::new(b))),
            ]
        })
    }

    proptest! {
        #[test]
        fn printing_and_parsing_again_gives_the_same_selector(selector in selector()) {
            let text = selector.to_string();
            let parsed = Selector::parse(&text).map_err(|error| TestCaseError::fail(format!("{text}: {error}")))?;
            prop_assert_eq!(parsed, selector, "{}", text);
        }

        #[test]
        fn printing_keeps_the_meaning(selector in selector(), present in prop::collection::vec((key(), value()), 0..4)) {
            let parsed = Selector::parse(&selector.to_string()).unwrap();
            let labels: BTreeMap<String, String> = present.into_iter().collect();
            prop_assert_eq!(parsed.matches(&labels, true), selector.matches(&labels, true));
        }
    }
}
