//! STIX 2.1 indicators as address ranges.
//!
//! An indicator's `pattern` is parsed with the STIX patterning grammar (observation
//! expressions joined by `AND`, `OR` and `FOLLOWEDBY`, with qualifiers; comparison expressions
//! joined by `AND` and `OR`; property tests with their operators and literals). Only patterns
//! that stand for a set of addresses and nothing more become ranges:
//!
//! - `[ipv4-addr:value = '198.51.100.7']`, `[ipv6-addr:value = '2001:db8::/32']`, and
//!   `network-traffic:dst_ref.value` / `src_ref.value`;
//! - `OR` of such tests, within one observation or across observations; `IN (...)`; and
//!   `ISSUBSET '<cidr>'`.
//!
//! Anything else is counted by why, never read as addresses: another object type (a domain,
//! a file hash), `AND` (a narrower condition than the address alone), `FOLLOWEDBY`, a
//! qualifier (`WITHIN`, `REPEATS`, `START`/`STOP`), negation or another operator, a value that
//! is not an address. Indicators that are revoked, expired (`valid_until` passed) or not yet
//! valid are dropped and counted too.
//!
//! Bundles are read object by object from a reader: the parser holds one object at a time
//! (what the reader holds is the caller's: a fetched body is in memory, bounded by
//! `max_body_bytes`).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::format::ParsedFeed;
use crate::netset::{range4, range6};

/// The longest pattern read; a longer one is counted as `too_large`.
pub const MAX_PATTERN_BYTES: usize = 64 * 1024;
/// The deepest nesting of parentheses and brackets read.
pub const MAX_DEPTH: usize = 32;

/// What became of one indicator; each is a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Its pattern stands for addresses: they are in the set.
    Ip,
    Revoked,
    /// `valid_until` has passed.
    Expired,
    /// `valid_from` is still to come.
    NotYetValid,
    Unsupported(Unsupported),
}

/// Why an indicator's pattern is not a set of addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unsupported {
    /// `pattern_type` is not `stix` (Snort, YARA, Sigma...).
    PatternType,
    /// A test of something other than an address: a domain, a URL, a file hash.
    NotAnAddress,
    /// `AND`: the address only together with another condition.
    And,
    FollowedBy,
    /// `WITHIN`, `REPEATS`, `START ... STOP`.
    Qualifier,
    /// Negation, `!=`, `<`, `LIKE`, `MATCHES`, `EXISTS`...
    Operator,
    /// A value that is not an address or CIDR of the object's family.
    InvalidAddress,
    /// Not valid STIX patterning.
    InvalidPattern,
    /// Over [`MAX_PATTERN_BYTES`] or [`MAX_DEPTH`].
    TooLarge,
    /// `valid_from` or `valid_until` is not an RFC 3339 timestamp: its validity is unknown.
    InvalidTimestamp,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ip => "ip",
            Outcome::Revoked => "revoked",
            Outcome::Expired => "expired",
            Outcome::NotYetValid => "not_yet_valid",
            Outcome::Unsupported(reason) => match reason {
                Unsupported::PatternType => "unsupported_pattern_type",
                Unsupported::NotAnAddress => "unsupported_not_an_address",
                Unsupported::And => "unsupported_and",
                Unsupported::FollowedBy => "unsupported_followedby",
                Unsupported::Qualifier => "unsupported_qualifier",
                Unsupported::Operator => "unsupported_operator",
                Unsupported::InvalidAddress => "unsupported_invalid_address",
                Unsupported::InvalidPattern => "unsupported_invalid_pattern",
                Unsupported::TooLarge => "unsupported_too_large",
                Unsupported::InvalidTimestamp => "unsupported_invalid_timestamp",
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pattern grammar.

/// A parsed pattern: observation expressions.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// `[ comparison ]`
    Comparison(Comparison),
    Or(Vec<Observation>),
    And(Vec<Observation>),
    FollowedBy(Vec<Observation>),
    /// An observation with `WITHIN`, `REPEATS` or `START ... STOP`.
    Qualified(Box<Observation>),
}

/// A comparison expression inside `[...]`.
#[derive(Clone, Debug, PartialEq)]
pub enum Comparison {
    Test(PropertyTest),
    Or(Vec<Comparison>),
    And(Vec<Comparison>),
}

/// `object-type:path op value`.
#[derive(Clone, Debug, PartialEq)]
pub struct PropertyTest {
    pub object_type: String,
    /// Path steps: property names, and `*` or an index for list steps.
    pub path: Vec<String>,
    pub negated: bool,
    pub operator: Operator,
    /// One value, or the list of `IN (...)`; `EXISTS` has none.
    pub values: Vec<Literal>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    In,
    Like,
    Matches,
    IsSubset,
    IsSuperset,
    Exists,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// `t'...'`, `h'...'`, `b'...'`: kept as text.
    Typed(char, String),
}

/// A pattern that is not valid STIX patterning, or too large to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    pub at: usize,
    pub reason: String,
    pub too_large: bool,
}

/// Parses a STIX 2.1 pattern.
pub fn parse_pattern(text: &str) -> Result<Observation, PatternError> {
    if text.len() > MAX_PATTERN_BYTES {
        return Err(PatternError {
            at: MAX_PATTERN_BYTES,
            reason: format!("longer than {MAX_PATTERN_BYTES} bytes"),
            too_large: true,
        });
    }
    let mut parser = Parser {
        text,
        at: 0,
        depth: 0,
    };
    let observation = parser.observations()?;
    parser.space();
    if parser.at != text.len() {
        return Err(parser.error("unexpected text after the pattern"));
    }
    Ok(observation)
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &str) -> PatternError {
        PatternError {
            at: self.at,
            reason: reason.to_owned(),
            too_large: false,
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn space(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    /// Consumes `symbol` (after whitespace) if it is next.
    fn symbol(&mut self, symbol: &str) -> bool {
        self.space();
        if self.rest().starts_with(symbol) {
            self.at += symbol.len();
            true
        } else {
            false
        }
    }

    /// Consumes the keyword `word` (case-sensitive, as STIX writes them) if it is next and
    /// not the start of a longer word.
    fn keyword(&mut self, word: &str) -> bool {
        self.space();
        let rest = self.rest();
        if !rest.starts_with(word) {
            return false;
        }
        // Keywords are ASCII, so this is a character boundary.
        let follows = rest[word.len()..].chars().next();
        if !follows.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), PatternError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(PatternError {
                at: self.at,
                reason: format!("nested deeper than {MAX_DEPTH}"),
                too_large: true,
            });
        }
        Ok(())
    }

    /// observations := or ( FOLLOWEDBY or )*
    fn observations(&mut self) -> Result<Observation, PatternError> {
        let mut items = vec![self.observation_or()?];
        while self.keyword("FOLLOWEDBY") {
            items.push(self.observation_or()?);
        }
        Ok(one_or(items, Observation::FollowedBy))
    }

    fn observation_or(&mut self) -> Result<Observation, PatternError> {
        let mut items = vec![self.observation_and()?];
        while self.keyword("OR") {
            items.push(self.observation_and()?);
        }
        Ok(one_or(items, Observation::Or))
    }

    fn observation_and(&mut self) -> Result<Observation, PatternError> {
        let mut items = vec![self.observation()?];
        while self.keyword("AND") {
            items.push(self.observation()?);
        }
        Ok(one_or(items, Observation::And))
    }

    /// `[ comparison ]` or `( observations )`, then qualifiers.
    fn observation(&mut self) -> Result<Observation, PatternError> {
        self.enter()?;
        let mut observation = if self.symbol("[") {
            let comparison = self.comparison_or()?;
            if !self.symbol("]") {
                return Err(self.error("expected `]`"));
            }
            Observation::Comparison(comparison)
        } else if self.symbol("(") {
            let inner = self.observations()?;
            if !self.symbol(")") {
                return Err(self.error("expected `)`"));
            }
            inner
        } else {
            return Err(self.error("expected `[` or `(`"));
        };
        self.depth -= 1;
        while self.qualifier()? {
            observation = Observation::Qualified(Box::new(observation));
        }
        Ok(observation)
    }

    fn qualifier(&mut self) -> Result<bool, PatternError> {
        if self.keyword("WITHIN") {
            self.number()?;
            if !self.keyword("SECONDS") {
                return Err(self.error("expected SECONDS"));
            }
        } else if self.keyword("REPEATS") {
            self.number()?;
            if !self.keyword("TIMES") {
                return Err(self.error("expected TIMES"));
            }
        } else if self.keyword("START") {
            self.literal()?;
            if !self.keyword("STOP") {
                return Err(self.error("expected STOP"));
            }
            self.literal()?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    fn comparison_or(&mut self) -> Result<Comparison, PatternError> {
        let mut items = vec![self.comparison_and()?];
        while self.keyword("OR") {
            items.push(self.comparison_and()?);
        }
        Ok(one_or(items, Comparison::Or))
    }

    fn comparison_and(&mut self) -> Result<Comparison, PatternError> {
        let mut items = vec![self.property_test()?];
        while self.keyword("AND") {
            items.push(self.property_test()?);
        }
        Ok(one_or(items, Comparison::And))
    }

    fn property_test(&mut self) -> Result<Comparison, PatternError> {
        if self.symbol("(") {
            self.enter()?;
            let inner = self.comparison_or()?;
            if !self.symbol(")") {
                return Err(self.error("expected `)`"));
            }
            self.depth -= 1;
            return Ok(inner);
        }
        if self.keyword("EXISTS") {
            let (object_type, path) = self.object_path()?;
            return Ok(Comparison::Test(PropertyTest {
                object_type,
                path,
                negated: false,
                operator: Operator::Exists,
                values: Vec::new(),
            }));
        }
        let (object_type, path) = self.object_path()?;
        let negated = self.keyword("NOT");
        let operator = self.operator()?;
        let values = match operator {
            Operator::In => {
                if !self.symbol("(") {
                    return Err(self.error("expected `(` after IN"));
                }
                let mut values = vec![self.literal()?];
                while self.symbol(",") {
                    values.push(self.literal()?);
                }
                if !self.symbol(")") {
                    return Err(self.error("expected `)`"));
                }
                values
            }
            _ => vec![self.literal()?],
        };
        Ok(Comparison::Test(PropertyTest {
            object_type,
            path,
            negated,
            operator,
            values,
        }))
    }

    fn operator(&mut self) -> Result<Operator, PatternError> {
        for (symbol, operator) in [
            ("!=", Operator::NotEqual),
            ("<=", Operator::LessOrEqual),
            (">=", Operator::GreaterOrEqual),
            ("=", Operator::Equal),
            ("<", Operator::Less),
            (">", Operator::Greater),
        ] {
            if self.symbol(symbol) {
                return Ok(operator);
            }
        }
        for (word, operator) in [
            ("IN", Operator::In),
            ("LIKE", Operator::Like),
            ("MATCHES", Operator::Matches),
            ("ISSUBSET", Operator::IsSubset),
            ("ISSUPERSET", Operator::IsSuperset),
        ] {
            if self.keyword(word) {
                return Ok(operator);
            }
        }
        Err(self.error("expected a comparison operator"))
    }

    /// `object-type:property(.property|[index])*`
    fn object_path(&mut self) -> Result<(String, Vec<String>), PatternError> {
        self.space();
        let object_type = self.take_while(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if object_type.is_empty() || !self.rest().starts_with(':') {
            return Err(self.error("expected `object-type:property`"));
        }
        self.at += 1;
        let mut path = vec![self.path_step()?];
        loop {
            if self.rest().starts_with('.') {
                self.at += 1;
                path.push(self.path_step()?);
            } else if self.rest().starts_with('[') {
                self.at += 1;
                let index = self.take_while(|c| c.is_ascii_digit() || c == '*');
                if index.is_empty() || !self.rest().starts_with(']') {
                    return Err(self.error("expected a list index or `*`"));
                }
                self.at += 1;
                path.push(index);
            } else {
                break;
            }
        }
        Ok((object_type, path))
    }

    fn path_step(&mut self) -> Result<String, PatternError> {
        if self.rest().starts_with('\'') {
            return match self.literal()? {
                Literal::String(name) => Ok(name),
                _ => Err(self.error("expected a property name")),
            };
        }
        let step = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if step.is_empty() {
            return Err(self.error("expected a property name"));
        }
        Ok(step)
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let rest = self.rest();
        let end = rest.find(|c: char| !keep(c)).unwrap_or(rest.len());
        let taken = rest[..end].to_owned();
        self.at += end;
        taken
    }

    fn number(&mut self) -> Result<Literal, PatternError> {
        match self.literal()? {
            literal @ (Literal::Integer(_) | Literal::Float(_)) => Ok(literal),
            _ => Err(self.error("expected a number")),
        }
    }

    fn literal(&mut self) -> Result<Literal, PatternError> {
        self.space();
        let rest = self.rest();
        for prefix in ['t', 'h', 'b'] {
            if rest.starts_with(prefix) && rest[1..].starts_with('\'') {
                self.at += 1;
                let text = self.quoted()?;
                return Ok(Literal::Typed(prefix, text));
            }
        }
        if rest.starts_with('\'') {
            return Ok(Literal::String(self.quoted()?));
        }
        if self.keyword("true") {
            return Ok(Literal::Boolean(true));
        }
        if self.keyword("false") {
            return Ok(Literal::Boolean(false));
        }
        let number =
            self.take_while(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'));
        if let Ok(integer) = number.parse::<i64>() {
            return Ok(Literal::Integer(integer));
        }
        match number.parse::<f64>() {
            Ok(float) if float.is_finite() => Ok(Literal::Float(float)),
            _ => Err(self.error("expected a literal")),
        }
    }

    /// A quoted string: `\'` and `\\` are its only escapes.
    fn quoted(&mut self) -> Result<String, PatternError> {
        let mut out = String::new();
        let mut chars = self.rest().char_indices().skip(1);
        while let Some((offset, c)) = chars.next() {
            match c {
                '\'' => {
                    self.at += offset + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, escaped @ ('\'' | '\\'))) => out.push(escaped),
                    _ => return Err(self.error("only \\' and \\\\ may be escaped")),
                },
                c => out.push(c),
            }
        }
        Err(self.error("an unterminated string"))
    }
}

fn one_or<T>(mut items: Vec<T>, many: impl FnOnce(Vec<T>) -> T) -> T {
    if items.len() == 1 {
        items.pop().expect("one item")
    } else {
        many(items)
    }
}

// ---------------------------------------------------------------------------------------------
// Patterns as addresses.

/// The addresses a pattern stands for, if it stands for addresses and nothing more.
pub fn pattern_addresses(pattern: &str) -> Result<Vec<IpNet>, Unsupported> {
    let observation = parse_pattern(pattern).map_err(|error| match error.too_large {
        true => Unsupported::TooLarge,
        false => Unsupported::InvalidPattern,
    })?;
    let mut nets = Vec::new();
    observation_addresses(&observation, &mut nets)?;
    Ok(nets)
}

fn observation_addresses(
    observation: &Observation,
    nets: &mut Vec<IpNet>,
) -> Result<(), Unsupported> {
    match observation {
        Observation::Comparison(comparison) => comparison_addresses(comparison, nets),
        Observation::Or(items) => items
            .iter()
            .try_for_each(|item| observation_addresses(item, nets)),
        Observation::And(_) => Err(Unsupported::And),
        Observation::FollowedBy(_) => Err(Unsupported::FollowedBy),
        Observation::Qualified(_) => Err(Unsupported::Qualifier),
    }
}

fn comparison_addresses(comparison: &Comparison, nets: &mut Vec<IpNet>) -> Result<(), Unsupported> {
    match comparison {
        Comparison::Test(test) => test_addresses(test, nets),
        Comparison::Or(items) => items
            .iter()
            .try_for_each(|item| comparison_addresses(item, nets)),
        Comparison::And(_) => Err(Unsupported::And),
    }
}

/// Which address family a property test's path names, if it names an address.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    Either,
}

fn test_addresses(test: &PropertyTest, nets: &mut Vec<IpNet>) -> Result<(), Unsupported> {
    let path: Vec<&str> = test.path.iter().map(String::as_str).collect();
    let family = match (test.object_type.as_str(), path.as_slice()) {
        ("ipv4-addr", ["value"]) => Family::V4,
        ("ipv6-addr", ["value"]) => Family::V6,
        ("network-traffic", ["dst_ref" | "src_ref", "value"]) => Family::Either,
        _ => return Err(Unsupported::NotAnAddress),
    };
    if test.negated {
        return Err(Unsupported::Operator);
    }
    match test.operator {
        Operator::Equal | Operator::In | Operator::IsSubset => {}
        _ => return Err(Unsupported::Operator),
    }
    for value in &test.values {
        let Literal::String(text) = value else {
            return Err(Unsupported::InvalidAddress);
        };
        let net = text
            .parse::<IpNet>()
            .map(|net| net.trunc())
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| Unsupported::InvalidAddress)?;
        let fits = matches!(
            (family, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_)) | (Family::Either, _)
        );
        if !fits {
            return Err(Unsupported::InvalidAddress);
        }
        nets.push(net);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bundles and indicators.

/// The fields of a STIX object that decide what an indicator contributes; the rest of the
/// object is skipped unread.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StixObject {
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub kind: String,
    #[serde(default, deserialize_with = "lenient")]
    pub id: String,
    #[serde(default)]
    pub modified: Option<String>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub pattern_type: Option<String>,
    #[serde(default)]
    pub valid_from: Option<String>,
    #[serde(default)]
    pub valid_until: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub revoked: bool,
}

/// A field that may be `null` (as absent) but must otherwise have its type.
fn lenient<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    deserializer: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An indicator's addresses and when they stop counting, as a TAXII source keeps them
/// between pulls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indicator {
    pub nets: Vec<IpNet>,
    /// `modified`, epoch milliseconds: which of two versions is the newer.
    pub modified_ms: Option<i64>,
    /// `valid_from` and `valid_until`, epoch milliseconds.
    pub valid_from_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
    pub revoked: bool,
}

/// Epoch milliseconds of an RFC 3339 timestamp, as STIX writes them.
pub fn timestamp_ms(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(jiff::Timestamp::as_millisecond)
}

impl StixObject {
    /// The indicator's addresses, or why it has none (`None` for objects that are not
    /// indicators).
    pub fn indicator(&self) -> Option<Result<Indicator, Unsupported>> {
        if self.kind != "indicator" {
            return None;
        }
        let nets = match self.pattern_type.as_deref() {
            Some("stix") | None => pattern_addresses(self.pattern.as_deref().unwrap_or_default()),
            Some(_) => Err(Unsupported::PatternType),
        };
        let timestamp = |text: &Option<String>| match text.as_deref() {
            None => Ok(None),
            Some(text) => timestamp_ms(text)
                .map(Some)
                .ok_or(Unsupported::InvalidTimestamp),
        };
        Some(nets.and_then(|nets| {
            Ok(Indicator {
                nets,
                modified_ms: self.modified.as_deref().and_then(timestamp_ms),
                valid_from_ms: timestamp(&self.valid_from)?,
                valid_until_ms: timestamp(&self.valid_until)?,
                revoked: self.revoked,
            })
        }))
    }
}

impl Indicator {
    /// Whether it counts at `now_ms`, or why not.
    pub fn outcome(&self, now_ms: i64) -> Outcome {
        if self.revoked {
            Outcome::Revoked
        } else if self.valid_until_ms.is_some_and(|until| until <= now_ms) {
            Outcome::Expired
        } else if self.valid_from_ms.is_some_and(|from| from > now_ms) {
            Outcome::NotYetValid
        } else {
            Outcome::Ip
        }
    }
}

/// What a bundle's indicators came to: the ranges of those in force, and every indicator's
/// outcome, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StixRead {
    pub feed: ParsedFeed,
    pub outcomes: BTreeMap<Outcome, u64>,
}

impl StixRead {
    /// Adds one indicator's addresses (if it counts at `now_ms`) and its outcome.
    pub fn add(&mut self, indicator: Result<&Indicator, Unsupported>, now_ms: i64) {
        let outcome = match indicator {
            Ok(indicator) => indicator.outcome(now_ms),
            Err(reason) => Outcome::Unsupported(reason),
        };
        *self.outcomes.entry(outcome).or_default() += 1;
        self.feed.entries += 1;
        if let (Outcome::Ip, Ok(indicator)) = (outcome, indicator) {
            for net in &indicator.nets {
                match net {
                    IpNet::V4(net) => self.feed.v4.push(range4(net)),
                    IpNet::V6(net) => self.feed.v6.push(range6(net)),
                }
            }
        }
    }
}

impl StixRead {
    /// The ranges, with the outcomes counted by name.
    pub fn into_feed(self) -> ParsedFeed {
        let mut feed = self.feed;
        for (outcome, count) in self.outcomes {
            *feed.indicators.entry(outcome.as_str()).or_default() += count;
        }
        feed
    }
}

/// A document that is not a STIX bundle (or TAXII envelope) at all.
#[derive(Debug, thiserror::Error)]
#[error("not a STIX bundle: {0}")]
pub struct BundleError(#[source] pub serde_json::Error);

/// Reads a STIX bundle (`{"type": "bundle", "objects": [...]}`) or a TAXII envelope
/// (`{"objects": [...], "more": ..., "next": ...}`) from `reader`, handing each object to
/// `each` as it is read. Returns the envelope's `more` and `next`.
pub fn read_objects<R: Read>(
    reader: R,
    each: impl FnMut(StixObject),
) -> Result<Envelope, BundleError> {
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let envelope = deserializer
        .deserialize_map(DocumentVisitor { each })
        .map_err(BundleError)?;
    deserializer.end().map_err(BundleError)?;
    Ok(envelope)
}

/// A TAXII envelope's paging fields (both absent in a bundle).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub more: bool,
    pub next: Option<String>,
}

struct DocumentVisitor<F> {
    each: F,
}

impl<'de, F: FnMut(StixObject)> Visitor<'de> for DocumentVisitor<F> {
    type Value = Envelope;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a STIX bundle or a TAXII envelope")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Envelope, A::Error> {
        let mut envelope = Envelope::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "objects" => map.next_value_seed(ObjectsSeed {
                    each: &mut self.each,
                })?,
                "more" => envelope.more = map.next_value()?,
                "next" => envelope.next = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(envelope)
    }
}

struct ObjectsSeed<'f, F> {
    each: &'f mut F,
}

impl<'de, F: FnMut(StixObject)> DeserializeSeed<'de> for ObjectsSeed<'_, F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(StixObject)> Visitor<'de> for ObjectsSeed<'_, F> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an array of STIX objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(object) = seq.next_element::<StixObject>()? {
            (self.each)(object);
        }
        Ok(())
    }
}

/// A bundle's indicators in force at `now_ms`, as ranges, with every outcome counted.
pub fn read_bundle<R: Read>(reader: R, now_ms: i64) -> Result<StixRead, BundleError> {
    let mut read = StixRead::default();
    read_objects(reader, |object| {
        if let Some(indicator) = object.indicator() {
            read.add(indicator.as_ref().map_err(|reason| *reason), now_ms);
        }
    })?;
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(pattern: &str) -> Result<Vec<String>, Unsupported> {
        pattern_addresses(pattern).map(|nets| nets.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn address_patterns_become_nets() {
        assert_eq!(
            nets("[ipv4-addr:value = '198.51.100.7']"),
            Ok(vec!["198.51.100.7/32".into()])
        );
        assert_eq!(
            nets("[ipv4-addr:value = '198.51.100.7/24' OR ipv6-addr:value = '2001:db8::1']"),
            Ok(vec!["198.51.100.0/24".into(), "2001:db8::1/128".into()])
        );
        assert_eq!(
            nets("[network-traffic:dst_ref.value = '203.0.113.9'] OR ([ipv4-addr:value IN ('192.0.2.1', '192.0.2.2')])"),
            Ok(vec!["203.0.113.9/32".into(), "192.0.2.1/32".into(), "192.0.2.2/32".into()])
        );
        assert_eq!(
            nets("[ipv4-addr:value ISSUBSET '10.1.0.0/16']"),
            Ok(vec!["10.1.0.0/16".into()])
        );
    }

    #[test]
    fn everything_else_is_counted_by_why() {
        for (pattern, reason) in [
            (
                "[domain-name:value = 'evil.example']",
                Unsupported::NotAnAddress,
            ),
            ("[file:hashes.'SHA-256' = 'aa']", Unsupported::NotAnAddress),
            (
                "[ipv4-addr:value = '192.0.2.1' AND network-traffic:dst_port = 443]",
                Unsupported::And,
            ),
            (
                "[ipv4-addr:value = '192.0.2.1'] AND [ipv4-addr:value = '192.0.2.2']",
                Unsupported::And,
            ),
            (
                "[ipv4-addr:value = '192.0.2.1'] FOLLOWEDBY [ipv4-addr:value = '192.0.2.2']",
                Unsupported::FollowedBy,
            ),
            (
                "[ipv4-addr:value = '192.0.2.1'] REPEATS 5 TIMES WITHIN 60 SECONDS",
                Unsupported::Qualifier,
            ),
            ("[ipv4-addr:value != '192.0.2.1']", Unsupported::Operator),
            ("[ipv4-addr:value NOT = '192.0.2.1']", Unsupported::Operator),
            ("[ipv4-addr:value MATCHES '^192']", Unsupported::Operator),
            (
                "[ipv4-addr:value = '2001:db8::1']",
                Unsupported::InvalidAddress,
            ),
            ("[ipv4-addr:value = 'evil']", Unsupported::InvalidAddress),
            ("[ipv4-addr:value = 5]", Unsupported::InvalidAddress),
            (
                "[ipv4-addr:value = '192.0.2.1'",
                Unsupported::InvalidPattern,
            ),
            ("ipv4-addr:value = '192.0.2.1'", Unsupported::InvalidPattern),
            (
                "[ipv4-addr:value = '1.2.3.4'] junk",
                Unsupported::InvalidPattern,
            ),
            ("", Unsupported::InvalidPattern),
        ] {
            assert_eq!(pattern_addresses(pattern), Err(reason), "{pattern}");
        }
        let deep = format!(
            "{}[ipv4-addr:value = '1.2.3.4']{}",
            "(".repeat(100),
            ")".repeat(100)
        );
        assert_eq!(pattern_addresses(&deep), Err(Unsupported::TooLarge));
        let huge = format!("[ipv4-addr:value = '{}']", "1".repeat(MAX_PATTERN_BYTES));
        assert_eq!(pattern_addresses(&huge), Err(Unsupported::TooLarge));
    }

    #[test]
    fn quoted_strings_take_their_escapes_and_keywords_need_a_boundary() {
        assert_eq!(
            parse_pattern(r"[file:name = 'it\'s \\ here']").unwrap(),
            Observation::Comparison(Comparison::Test(PropertyTest {
                object_type: "file".into(),
                path: vec!["name".into()],
                negated: false,
                operator: Operator::Equal,
                values: vec![Literal::String(r"it's \ here".into())],
            }))
        );
        assert!(parse_pattern(r"[file:name = 'a\nb']").is_err());
        // `ORx` is not `OR`.
        assert!(
            parse_pattern("[ipv4-addr:value = '1.2.3.4'] ORx [ipv4-addr:value = '1.2.3.5']")
                .is_err()
        );
        assert_eq!(
            parse_pattern("[x:created < t'2020-01-01T00:00:00Z'] START t'2020-01-01T00:00:00Z' STOP t'2021-01-01T00:00:00Z'")
                .map(|observation| matches!(observation, Observation::Qualified(_))),
            Ok(true)
        );
    }

    #[test]
    fn bundles_are_read_object_by_object_with_validity_and_revocation() {
        let now = timestamp_ms("2026-12-01T00:00:00Z").unwrap();
        let bundle = serde_json::json!({
        "type": "bundle", "id": "bundle--1", "objects": [
            {"type": "identity", "id": "identity--1", "name": "FortiGuard"},
            {"type": "indicator", "id": "indicator--1", "pattern_type": "stix",
             "pattern": "[ipv4-addr:value = '198.51.100.7']", "valid_from": "2026-01-01T00:00:00Z"},
            {"type": "indicator", "id": "indicator--2", "pattern_type": "stix",
             "pattern": "[ipv4-addr:value = '198.51.100.8']", "valid_from": "2026-01-01T00:00:00Z",
             "valid_until": "2026-06-01T00:00:00.000Z"},
            {"type": "indicator", "id": "indicator--3", "pattern_type": "stix", "revoked": true,
             "pattern": "[ipv4-addr:value = '198.51.100.9']", "valid_from": "2026-01-01T00:00:00Z"},
            {"type": "indicator", "id": "indicator--4", "pattern_type": "stix",
             "pattern": "[ipv4-addr:value = '198.51.100.10']", "valid_from": "2027-01-01T00:00:00Z"},
            {"type": "indicator", "id": "indicator--5", "pattern_type": "snort",
             "pattern": "alert tcp any any -> any any", "valid_from": "2026-01-01T00:00:00Z"},
            {"type": "indicator", "id": "indicator--7", "pattern_type": "stix", "revoked": null,
             "pattern": "[ipv4-addr:value = '198.51.100.11']", "valid_until": "next tuesday"},
            {"type": "indicator", "id": "indicator--6", "pattern_type": "stix",
             "pattern": "[domain-name:value = 'evil.example']", "valid_from": "2026-01-01T00:00:00Z",
             "extensions": {"x": {"deep": [[[[{"a": 1}]]]]}}}
        ]});
        let read = read_bundle(serde_json::to_vec(&bundle).unwrap().as_slice(), now).unwrap();
        assert_eq!(read.feed.entries, 7);
        assert_eq!(read.feed.v4.len(), 1);
        let outcomes: Vec<(&str, u64)> = read
            .outcomes
            .iter()
            .map(|(outcome, count)| (outcome.as_str(), *count))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("ip", 1),
                ("revoked", 1),
                ("expired", 1),
                ("not_yet_valid", 1),
                ("unsupported_pattern_type", 1),
                ("unsupported_not_an_address", 1),
                ("unsupported_invalid_timestamp", 1)
            ]
        );
        assert!(read_bundle(&b"[1, 2]"[..], now).is_err());
        assert!(read_bundle(&b"{\"objects\": [{\"type\": \"indicator\"}"[..], now).is_err());
        assert!(read_bundle(&b"{\"objects\": []} trailing"[..], now).is_err());
        let envelope = read_objects(
            &br#"{"more": true, "next": "p2", "objects": []}"#[..],
            |_| {},
        )
        .unwrap();
        assert_eq!(
            envelope,
            Envelope {
                more: true,
                next: Some("p2".into())
            }
        );
    }

    mod property {
        use super::super::*;
        use proptest::prelude::*;
        use std::net::{Ipv4Addr, Ipv6Addr};

        fn net() -> impl Strategy<Value = IpNet> {
            prop_oneof![
                (any::<u32>(), 0u8..=32).prop_map(|(a, p)| IpNet::V4(
                    ipnet::Ipv4Net::new(Ipv4Addr::from(a), p).unwrap().trunc()
                )),
                (any::<u128>(), 0u8..=128).prop_map(|(a, p)| IpNet::V6(
                    ipnet::Ipv6Net::new(Ipv6Addr::from(a), p).unwrap().trunc()
                )),
            ]
        }

        /// One property test standing for `nets`, in any of the spellings.
        fn test_text(nets: &[IpNet], style: u8) -> String {
            let path = |net: &IpNet| match (style % 3, net) {
                (0, IpNet::V4(_)) => "ipv4-addr:value",
                (0, IpNet::V6(_)) => "ipv6-addr:value",
                (1, _) => "network-traffic:dst_ref.value",
                _ => "network-traffic:src_ref.value",
            };
            let value = |net: &IpNet| match net.prefix_len() == net.max_prefix_len() {
                true => net.addr().to_string(),
                false => net.to_string(),
            };
            if style % 2 == 1 && nets.len() > 1 && nets.iter().all(|n| path(n) == path(&nets[0])) {
                let values: Vec<String> = nets.iter().map(|n| format!("'{}'", value(n))).collect();
                return format!("{} IN ({})", path(&nets[0]), values.join(", "));
            }
            nets.iter()
                .map(|n| format!("{} = '{}'", path(n), value(n)))
                .collect::<Vec<_>>()
                .join(" OR ")
        }

        proptest! {
            /// An address pattern, printed and parsed, stands for the same set: one
            /// observation, several observations ORed, tests ORed or listed with IN.
            #[test]
            fn an_address_pattern_printed_and_parsed_gives_the_same_set(
                groups in prop::collection::vec(prop::collection::vec(net(), 1..5), 1..4),
                style in any::<u8>(),
            ) {
                let pattern = groups
                    .iter()
                    .map(|group| format!("[{}]", test_text(group, style)))
                    .collect::<Vec<_>>()
                    .join(if style % 4 == 0 { " OR " } else { "\n OR " });
                let read: std::collections::BTreeSet<IpNet> =
                    pattern_addresses(&pattern).unwrap().into_iter().collect();
                let expected: std::collections::BTreeSet<IpNet> =
                    groups.into_iter().flatten().collect();
                prop_assert_eq!(read, expected, "{}", pattern);
            }

            /// Whatever the text, the parser answers (never panics) and never reads
            /// addresses out of a pattern that also tests something else.
            #[test]
            fn any_text_is_answered_and_mixed_patterns_are_refused(text in ".{0,200}", net in net()) {
                let _ = parse_pattern(&text);
                let mixed = format!("[ipv4-addr:value = '{}' AND {}]", net.addr(), "x:y = 1");
                prop_assert!(pattern_addresses(&mixed).is_err());
            }
        }
    }
}
