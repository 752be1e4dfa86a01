//! A firewall rulebase, vendor-neutral: zones, address objects and groups (static, or dynamic
//! by tag), services and service groups, and rules in order. FortiManager packages and
//! Panorama rulebases are read into it (each by its own module); the translator into Calico
//! policy reads only this.
//!
//! An empty list of zones, addresses or services means *any*, as the firewalls' `any`/`all`.
//! What a rule uses that cannot be expressed as Calico policy (users, schedules, applications,
//! NAT, security profiles...) is recorded in [`Rule::unsupported`] by the reader, which knows
//! the vendor's fields; the translator refuses such rules rather than approximate them.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

/// What a rule (or the rulebase's default) does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Verdict {
    Allow,
    Deny,
}

/// An address object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub kind: AddressKind,
    /// Tags (Panorama), which dynamic groups select on.
    pub tags: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressKind {
    /// Networks: a prefix, or the prefixes covering a range.
    Nets(Vec<IpNet>),
    /// A domain name (egress only, by domain).
    Fqdn(String),
    /// A kind that cannot be expressed (a wildcard mask, a geography...), with why.
    Unsupported(String),
}

impl Address {
    pub fn nets(nets: Vec<IpNet>) -> Address {
        Address {
            kind: AddressKind::Nets(nets),
            tags: BTreeSet::new(),
        }
    }
}

/// An address group: named members (addresses or groups), or a tag filter over the address
/// objects (a dynamic group).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressGroup {
    pub members: Vec<String>,
    pub filter: Option<TagFilter>,
}

/// A dynamic group's filter: tags joined with `and`, `or` and parentheses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagFilter {
    Tag(String),
    And(Box<TagFilter>, Box<TagFilter>),
    Or(Box<TagFilter>, Box<TagFilter>),
}

impl TagFilter {
    pub fn matches(&self, tags: &BTreeSet<String>) -> bool {
        match self {
            TagFilter::Tag(tag) => tags.contains(tag),
            TagFilter::And(left, right) => left.matches(tags) && right.matches(tags),
            TagFilter::Or(left, right) => left.matches(tags) || right.matches(tags),
        }
    }

    /// Parses `'tag-a' and ('tag b' or tag-c)`: quoted or bare tags, `and`/`or` (any case),
    /// parentheses; `and` binds tighter than `or`.
    pub fn parse(text: &str) -> Result<TagFilter, String> {
        // PAN-OS caps a filter at 2,047 characters; nesting is bounded by the length.
        if text.len() > 2047 {
            return Err("longer than 2047 characters".into());
        }
        if text.matches('(').count() > 64 {
            return Err("nested deeper than 64 parentheses".into());
        }
        let tokens = filter_tokens(text)?;
        let mut at = 0;
        let filter = filter_or(&tokens, &mut at)?;
        if at != tokens.len() {
            return Err(format!("unexpected `{}`", tokens[at]));
        }
        Ok(filter)
    }
}

fn filter_tokens(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' => {
                tokens.push(c.to_string());
                chars.next();
            }
            '\'' | '"' => {
                chars.next();
                let mut tag = String::from("'");
                loop {
                    match chars.next() {
                        Some(end) if end == c => break,
                        Some(other) => tag.push(other),
                        None => return Err("a quoted tag is not closed".into()),
                    }
                }
                tokens.push(tag);
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '(' || c == ')' {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(word);
            }
        }
    }
    Ok(tokens)
}

fn filter_or(tokens: &[String], at: &mut usize) -> Result<TagFilter, String> {
    let mut left = filter_and(tokens, at)?;
    while tokens
        .get(*at)
        .is_some_and(|token| token.eq_ignore_ascii_case("or"))
    {
        *at += 1;
        left = TagFilter::Or(Box::new(left), Box::new(filter_and(tokens, at)?));
    }
    Ok(left)
}

fn filter_and(tokens: &[String], at: &mut usize) -> Result<TagFilter, String> {
    let mut left = filter_term(tokens, at)?;
    while tokens
        .get(*at)
        .is_some_and(|token| token.eq_ignore_ascii_case("and"))
    {
        *at += 1;
        left = TagFilter::And(Box::new(left), Box::new(filter_term(tokens, at)?));
    }
    Ok(left)
}

fn filter_term(tokens: &[String], at: &mut usize) -> Result<TagFilter, String> {
    let Some(token) = tokens.get(*at) else {
        return Err("the filter ends early".into());
    };
    *at += 1;
    if token == "(" {
        let inner = filter_or(tokens, at)?;
        if tokens.get(*at).map(String::as_str) != Some(")") {
            return Err("expected `)`".into());
        }
        *at += 1;
        return Ok(inner);
    }
    if token == ")" || token.eq_ignore_ascii_case("and") || token.eq_ignore_ascii_case("or") {
        return Err(format!("unexpected `{token}`"));
    }
    Ok(TagFilter::Tag(token.trim_start_matches('\'').to_owned()))
}

/// A layer-4 protocol with ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

/// One way a service matches traffic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServiceEntry {
    /// A protocol with destination (and optionally source) port ranges; empty is every port.
    Ports {
        protocol: PortProtocol,
        destination: Vec<(u16, u16)>,
        source: Vec<(u16, u16)>,
    },
    /// ICMP (or ICMPv6), optionally one type and code.
    Icmp {
        v6: bool,
        kind: Option<u8>,
        code: Option<u8>,
    },
    /// An IP protocol by number.
    Protocol(u8),
    /// Everything.
    Any,
}

/// A service: traffic matching any of its entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub entries: Vec<ServiceEntry>,
    /// Why the service cannot be expressed, if it cannot.
    pub unsupported: Option<String>,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub comment: String,
    pub enabled: bool,
    /// Source zones; empty is any.
    pub from_zones: Vec<String>,
    pub to_zones: Vec<String>,
    /// Source addresses (address or group names); empty is any.
    pub sources: Vec<String>,
    pub destinations: Vec<String>,
    pub negate_source: bool,
    pub negate_destination: bool,
    /// Service or service-group names; empty is any.
    pub services: Vec<String>,
    pub verdict: Verdict,
    /// 4 or 6 when the rule applies to one IP version only (a FortiOS policy with IPv4
    /// addresses and no IPv6 ones).
    pub family: Option<u8>,
    /// What the rule uses that Calico cannot express, as the reader found it.
    pub unsupported: Vec<String>,
}

impl Rule {
    /// An enabled rule with no conditions.
    pub fn new(name: impl Into<String>, verdict: Verdict) -> Rule {
        Rule {
            name: name.into(),
            comment: String::new(),
            enabled: true,
            from_zones: Vec::new(),
            to_zones: Vec::new(),
            sources: Vec::new(),
            destinations: Vec::new(),
            negate_source: false,
            negate_destination: false,
            services: Vec::new(),
            verdict,
            family: None,
            unsupported: Vec::new(),
        }
    }
}

/// What happens to traffic no rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// Between two endpoints of one zone.
    pub intrazone: Verdict,
    /// Between zones.
    pub interzone: Verdict,
}

impl Defaults {
    /// FortiOS: whatever no policy accepts is denied, within a zone too.
    pub const FORTIOS: Defaults = Defaults {
        intrazone: Verdict::Deny,
        interzone: Verdict::Deny,
    };
    /// PAN-OS's `intrazone-default` (allow) and `interzone-default` (deny).
    pub const PAN_OS: Defaults = Defaults {
        intrazone: Verdict::Allow,
        interzone: Verdict::Deny,
    };
}

/// A rulebase as read from a firewall manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rulebase {
    /// Where it came from, e.g. `fortimanager fmg-1 adom root package dc-edge`.
    pub origin: String,
    /// The zones the firewall defines (and, in the daemon, those pods are labelled with):
    /// each gets the intrazone default.
    pub zones: BTreeSet<String>,
    pub addresses: BTreeMap<String, Address>,
    pub groups: BTreeMap<String, AddressGroup>,
    pub services: BTreeMap<String, Service>,
    pub service_groups: BTreeMap<String, Vec<String>>,
    pub rules: Vec<Rule>,
    pub defaults: Defaults,
}

impl Rulebase {
    pub fn new(origin: impl Into<String>, defaults: Defaults) -> Rulebase {
        Rulebase {
            origin: origin.into(),
            zones: BTreeSet::new(),
            addresses: BTreeMap::new(),
            groups: BTreeMap::new(),
            services: BTreeMap::new(),
            service_groups: BTreeMap::new(),
            rules: Vec::new(),
            defaults,
        }
    }

    /// The rules that are enabled.
    pub fn enabled_rules(&self) -> usize {
        self.rules.iter().filter(|rule| rule.enabled).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_filters_parse_and_match_as_panorama_does() {
        let filter = TagFilter::parse("'k8s.ns.prod' and ('app.web' OR app.api)").unwrap();
        let tags = |list: &[&str]| list.iter().map(|tag| tag.to_string()).collect();
        assert!(filter.matches(&tags(&["k8s.ns.prod", "app.api"])));
        assert!(!filter.matches(&tags(&["k8s.ns.prod"])));
        assert!(!filter.matches(&tags(&["app.web"])));
        let precedence = TagFilter::parse("a or b and c").unwrap();
        assert!(precedence.matches(&tags(&["a"])));
        assert!(!precedence.matches(&tags(&["b"])));
        for bad in ["", "a and", "(a", "a b", "'open"] {
            assert!(TagFilter::parse(bad).is_err(), "{bad}");
        }
    }
}
