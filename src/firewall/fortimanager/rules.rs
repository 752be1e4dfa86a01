//! A FortiManager policy package as a [`Rulebase`]: its rules in sequence, and the ADOM's
//! addresses, address groups, services, service groups and normalized interfaces (the zones).
//!
//! The same tables serve the daemon (read in one JSON-RPC call with `verbose: 1`) and the
//! offline import, which takes either the JSON-RPC reply as the API returns it (`result`
//! entries with their `url` and `data`) or an object keyed by table (`firewall/policy`,
//! `firewall/address`, ...). Enumerations are read as names or, without `verbose`, as the
//! numbers FortiManager uses.
//!
//! What a policy uses that Calico cannot express makes it unsupported, with the reason: users
//! and groups, a schedule other than `always`, applications and internet services, NAT,
//! security profiles, and any action but accept and deny.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{access_error, escape, read_names, read_subnet, FortiManager, Outcome, MISSING};
use crate::firewall::fortigate::parse_subnet;
use crate::firewall::rules::{
    Address, AddressKind, Defaults, PortProtocol, Rule, Rulebase, Service, ServiceEntry, Verdict,
};
use crate::firewall::TargetError;
use crate::netset::range_cover;

/// The ADOM tables a rulebase draws on.
const OBJECT_TABLES: [&str; 7] = [
    "firewall/address",
    "firewall/address6",
    "firewall/addrgrp",
    "firewall/addrgrp6",
    "firewall/service/custom",
    "firewall/service/group",
    "dynamic/interface",
];
const POLICY_TABLE: &str = "firewall/policy";

impl FortiManager {
    fn package_url(&self, package: &str) -> String {
        format!(
            "/pm/config/adom/{}/pkg/{}/{POLICY_TABLE}",
            escape(&self.settings.adom),
            escape(package)
        )
    }

    /// The package's revision (its `obj ver`), in one call: what a poll compares.
    pub async fn package_revision(&mut self, package: &str) -> Result<String, TargetError> {
        let url = format!(
            "/pm/pkg/adom/{}/{}",
            escape(&self.settings.adom),
            escape(package)
        );
        let outcome = self.call_one("get", json!({ "url": url })).await?;
        if !outcome.ok() {
            return Err(access_error(
                &format!("reading package {package}"),
                &outcome,
            ));
        }
        let data = outcome.single();
        match &data["obj ver"] {
            Value::Null => Err(TargetError::Protocol(format!(
                "package {package} has no `obj ver`"
            ))),
            version => Ok(version.to_string()),
        }
    }

    /// The package's rules and the ADOM's objects, in one call.
    pub async fn read_rulebase(&mut self, package: &str) -> Result<Rulebase, TargetError> {
        let adom = escape(&self.settings.adom);
        let mut params = vec![json!({ "url": self.package_url(package), "verbose": 1 })];
        for table in OBJECT_TABLES {
            params.push(json!({ "url": format!("/pm/config/adom/{adom}/obj/{table}"), "verbose": 1, "loadsub": 0 }));
        }
        let outcomes = self.call("get", params).await?;
        let mut tables = BTreeMap::new();
        for (table, outcome) in std::iter::once(POLICY_TABLE)
            .chain(OBJECT_TABLES)
            .zip(outcomes)
        {
            let Outcome { code, data, .. } = &outcome;
            if *code == MISSING && table != POLICY_TABLE {
                continue;
            }
            if !outcome.ok() {
                return Err(access_error(&format!("reading {table}"), &outcome));
            }
            tables.insert(table.to_owned(), data.clone());
        }
        let origin = format!("fortimanager adom {} package {package}", self.settings.adom);
        rulebase(&tables, origin).map_err(TargetError::Protocol)
    }
}

/// The tables of an export: a JSON-RPC reply, or an object keyed by table.
pub fn export_tables(export: &Value) -> Result<BTreeMap<String, Value>, String> {
    if let Some(results) = export["result"].as_array() {
        let mut tables = BTreeMap::new();
        for result in results {
            let url = result["url"].as_str().unwrap_or_default();
            let table = table_of(url)
                .ok_or_else(|| format!("`{url}` is not a table of a package or an ADOM"))?;
            tables.insert(table, result["data"].clone());
        }
        return Ok(tables);
    }
    match export {
        Value::Object(map) => Ok(map
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()),
        _ => Err("expected a JSON-RPC reply (`result`) or an object keyed by table".into()),
    }
}

/// `firewall/address` from `/pm/config/adom/root/obj/firewall/address`, and
/// `firewall/policy` from `.../pkg/<package>/firewall/policy`.
fn table_of(url: &str) -> Option<String> {
    let url = url.trim_start_matches('/');
    let rest = url.strip_prefix("pm/config/adom/")?;
    let (_, rest) = rest.split_once('/')?;
    if let Some(object) = rest.strip_prefix("obj/") {
        return Some(object.to_owned());
    }
    let package = rest.strip_prefix("pkg/")?;
    package.rfind(POLICY_TABLE).map(|_| POLICY_TABLE.to_owned())
}

fn items(tables: &BTreeMap<String, Value>, table: &str) -> Vec<Value> {
    match tables.get(table) {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::Object(_)) => vec![tables[table].clone()],
        _ => Vec::new(),
    }
}

/// An enumeration read as its name, whether the reply was verbose or not.
fn word(value: &Value, numbers: &[(i64, &'static str)]) -> String {
    match value {
        Value::String(text) => text.to_ascii_lowercase(),
        Value::Number(number) => number
            .as_i64()
            .and_then(|number| numbers.iter().find(|(n, _)| *n == number))
            .map_or_else(|| number.to_string(), |(_, name)| (*name).to_owned()),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn enabled(value: &Value) -> bool {
    matches!(
        word(value, &[(0, "disable"), (1, "enable")]).as_str(),
        "enable"
    )
}

/// `80`, `8000-8080`, `22:1024-65535` (destination, then source): one or several, as a list or
/// space-separated.
/// Destination and source port ranges of one `portrange` entry.
type PortRanges = (Vec<(u16, u16)>, Vec<(u16, u16)>);

fn port_ranges(value: &Value) -> Result<Vec<PortRanges>, String> {
    let texts: Vec<String> = match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect(),
        Value::String(text) => text.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    let range = |text: &str| -> Result<(u16, u16), String> {
        let (low, high) = text.split_once('-').unwrap_or((text, text));
        let low: u16 = low
            .trim()
            .parse()
            .map_err(|_| format!("bad port `{text}`"))?;
        let high: u16 = high
            .trim()
            .parse()
            .map_err(|_| format!("bad port `{text}`"))?;
        if low > high {
            return Err(format!("bad port range `{text}`"));
        }
        Ok((low, high))
    };
    texts
        .iter()
        .map(|text| {
            let (destination, source) = text.split_once(':').unwrap_or((text, ""));
            let destination = vec![range(destination)?];
            let source = match source {
                "" => Vec::new(),
                source => vec![range(source)?],
            };
            Ok((destination, source))
        })
        .collect()
}

fn service(entry: &Value) -> Service {
    let protocol = word(
        &entry["protocol"],
        &[
            (1, "icmp"),
            (2, "ip"),
            (5, "tcp/udp/sctp"),
            (6, "icmp6"),
            (11, "all"),
        ],
    );
    let unsupported = |reason: String| Service {
        entries: Vec::new(),
        unsupported: Some(reason),
    };
    let mut entries = Vec::new();
    match protocol.as_str() {
        "tcp/udp/sctp" | "tcp/udp/udp-lite/sctp" | "" => {
            for (field, protocol) in [
                ("tcp-portrange", PortProtocol::Tcp),
                ("udp-portrange", PortProtocol::Udp),
                ("sctp-portrange", PortProtocol::Sctp),
            ] {
                match port_ranges(&entry[field]) {
                    Ok(ranges) => {
                        entries.extend(ranges.into_iter().map(|(destination, source)| {
                            ServiceEntry::Ports {
                                protocol,
                                destination,
                                source,
                            }
                        }))
                    }
                    Err(error) => return unsupported(error),
                }
            }
            if !entry["udplite-portrange"].is_null()
                && !read_names(&entry["udplite-portrange"]).is_empty()
            {
                return unsupported("UDP-Lite ports".into());
            }
        }
        "icmp" | "icmp6" => {
            let number = |value: &Value| value.as_u64().and_then(|n| u8::try_from(n).ok());
            entries.push(ServiceEntry::Icmp {
                v6: protocol == "icmp6",
                kind: number(&entry["icmptype"]),
                code: number(&entry["icmpcode"]),
            });
        }
        "ip" => match entry["protocol-number"].as_u64() {
            Some(0) | None => entries.push(ServiceEntry::Any),
            Some(number) => match u8::try_from(number) {
                Ok(number) => entries.push(ServiceEntry::Protocol(number)),
                Err(_) => return unsupported(format!("protocol number {number}")),
            },
        },
        "all" => entries.push(ServiceEntry::Any),
        other => return unsupported(format!("protocol `{other}` (an explicit-proxy service)")),
    }
    if entries.is_empty() {
        return unsupported("no ports".into());
    }
    Service {
        entries,
        unsupported: None,
    }
}

/// FortiOS's predefined services, for an export that leaves them out.
fn predefined() -> BTreeMap<String, Service> {
    let ports = |protocol, low, high| ServiceEntry::Ports {
        protocol,
        destination: vec![(low, high)],
        source: Vec::new(),
    };
    let service = |entries: Vec<ServiceEntry>| Service {
        entries,
        unsupported: None,
    };
    BTreeMap::from([
        ("ALL".to_owned(), service(vec![ServiceEntry::Any])),
        (
            "ALL_TCP".to_owned(),
            service(vec![ports(PortProtocol::Tcp, 1, 65535)]),
        ),
        (
            "ALL_UDP".to_owned(),
            service(vec![ports(PortProtocol::Udp, 1, 65535)]),
        ),
        (
            "ALL_ICMP".to_owned(),
            service(vec![ServiceEntry::Icmp {
                v6: false,
                kind: None,
                code: None,
            }]),
        ),
        (
            "ALL_ICMP6".to_owned(),
            service(vec![ServiceEntry::Icmp {
                v6: true,
                kind: None,
                code: None,
            }]),
        ),
        (
            "PING".to_owned(),
            service(vec![ServiceEntry::Icmp {
                v6: false,
                kind: Some(8),
                code: None,
            }]),
        ),
        (
            "HTTP".to_owned(),
            service(vec![ports(PortProtocol::Tcp, 80, 80)]),
        ),
        (
            "HTTPS".to_owned(),
            service(vec![ports(PortProtocol::Tcp, 443, 443)]),
        ),
        (
            "SSH".to_owned(),
            service(vec![ports(PortProtocol::Tcp, 22, 22)]),
        ),
        (
            "DNS".to_owned(),
            service(vec![
                ports(PortProtocol::Tcp, 53, 53),
                ports(PortProtocol::Udp, 53, 53),
            ]),
        ),
        (
            "NTP".to_owned(),
            service(vec![
                ports(PortProtocol::Tcp, 123, 123),
                ports(PortProtocol::Udp, 123, 123),
            ]),
        ),
    ])
}

fn address(entry: &Value, v6: bool) -> Address {
    let kind = if v6 {
        word(
            &entry["type"],
            &[(0, "ipprefix"), (1, "iprange"), (2, "fqdn")],
        )
    } else {
        word(
            &entry["type"],
            &[
                (0, "ipmask"),
                (1, "iprange"),
                (2, "fqdn"),
                (3, "wildcard"),
                (4, "geography"),
            ],
        )
    };
    let kind = match kind.as_str() {
        "ipmask" | "" if !v6 => match read_subnet(&entry["subnet"]) {
            Some(net) => AddressKind::Nets(vec![net]),
            None => AddressKind::Unsupported(format!("subnet {}", entry["subnet"])),
        },
        "ipprefix" | "" if v6 => match entry["ip6"].as_str().and_then(parse_subnet) {
            Some(net) => AddressKind::Nets(vec![net]),
            None => AddressKind::Unsupported(format!("ip6 {}", entry["ip6"])),
        },
        "iprange" => {
            let bound = |field: &str| {
                entry[field]
                    .as_str()
                    .and_then(|text| text.parse::<std::net::IpAddr>().ok())
            };
            match (bound("start-ip"), bound("end-ip")) {
                (Some(start), Some(end)) => match range_cover(start, end) {
                    Some(nets) => AddressKind::Nets(nets),
                    None => AddressKind::Unsupported("a range whose ends are not in order".into()),
                },
                _ => AddressKind::Unsupported("a range without both ends".into()),
            }
        }
        "fqdn" => match entry["fqdn"].as_str() {
            Some(fqdn) if !fqdn.is_empty() => AddressKind::Fqdn(fqdn.to_owned()),
            _ => AddressKind::Unsupported("an FQDN address without a name".into()),
        },
        other => AddressKind::Unsupported(format!("address type `{other}`")),
    };
    Address {
        kind,
        tags: BTreeSet::new(),
    }
}

/// Reasons a policy cannot be expressed as Calico policy.
fn unsupported(policy: &Value) -> Vec<String> {
    let mut reasons = Vec::new();
    for field in ["users", "groups", "fsso-groups"] {
        if !read_names(&policy[field]).is_empty() {
            reasons.push("users and user groups".to_owned());
        }
    }
    let schedule = read_names(&policy["schedule"]);
    if !schedule.is_empty() && schedule != ["always"] {
        reasons.push(format!("schedule `{}`", schedule.join(", ")));
    }
    for field in [
        "application",
        "app-category",
        "app-group",
        "internet-service-name",
        "internet-service-id",
        "url-category",
    ] {
        if !read_names(&policy[field]).is_empty()
            || policy[field]
                .as_array()
                .is_some_and(|items| !items.is_empty())
        {
            reasons.push(format!("`{field}` (application control)"));
        }
    }
    for field in ["internet-service", "internet-service-src"] {
        if enabled(&policy[field]) {
            reasons.push("internet services".to_owned());
        }
    }
    if enabled(&policy["nat"]) {
        reasons.push("NAT".to_owned());
    }
    if enabled(&policy["utm-status"]) {
        reasons.push("security profiles (utm-status enable)".to_owned());
    }
    // Negations beyond the address ones the translator expresses (`service-negate`, and any
    // other a FortiOS version adds).
    if let Value::Object(fields) = policy {
        let known = [
            "srcaddr-negate",
            "dstaddr-negate",
            "srcaddr6-negate",
            "dstaddr6-negate",
        ];
        for (field, value) in fields {
            if field.ends_with("-negate") && !known.contains(&field.as_str()) && enabled(value) {
                reasons.push(format!("`{field}`"));
            }
        }
    }
    reasons.dedup();
    reasons
}

/// A side's addresses from the IPv4 and IPv6 lists: `all` is any.
fn side(v4: Vec<String>, v6: Vec<String>) -> Vec<String> {
    let mut names: Vec<String> = v4.into_iter().chain(v6).collect();
    if names.iter().any(|name| name == "all") {
        names.clear();
    }
    names.dedup();
    names
}

fn zones(value: &Value) -> Vec<String> {
    let zones = read_names(value);
    if zones.iter().any(|zone| zone == "any") {
        Vec::new()
    } else {
        zones
    }
}

fn policy(entry: &Value) -> Rule {
    let action = word(
        &entry["action"],
        &[(0, "deny"), (1, "accept"), (2, "ipsec")],
    );
    let mut unsupported = unsupported(entry);
    let verdict = match action.as_str() {
        "accept" => Verdict::Allow,
        "deny" => Verdict::Deny,
        other => {
            unsupported.push(format!("action `{other}`"));
            Verdict::Deny
        }
    };
    let name = entry["name"]
        .as_str()
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("policy {}", entry["policyid"]));
    let (v4_sources, v6_sources) = (
        read_names(&entry["srcaddr"]),
        read_names(&entry["srcaddr6"]),
    );
    let (v4_destinations, v6_destinations) = (
        read_names(&entry["dstaddr"]),
        read_names(&entry["dstaddr6"]),
    );
    // A family applies when both of its sides name addresses (FortiOS 6.4's consolidated
    // policy); a policy with neither complete matches nothing.
    let has_v4 = !v4_sources.is_empty() && !v4_destinations.is_empty();
    let has_v6 = !v6_sources.is_empty() && !v6_destinations.is_empty();
    let (family, sources, destinations) = match (has_v4, has_v6) {
        (true, false) => (
            Some(4),
            side(v4_sources, Vec::new()),
            side(v4_destinations, Vec::new()),
        ),
        (false, true) => (
            Some(6),
            side(Vec::new(), v6_sources),
            side(Vec::new(), v6_destinations),
        ),
        _ => {
            let all = |names: &[String]| names.iter().any(|name| name == "all");
            if all(&v4_sources) != all(&v6_sources)
                || all(&v4_destinations) != all(&v6_destinations)
            {
                unsupported.push("`all` on one side for one IP family only".to_owned());
            }
            (
                None,
                side(v4_sources, v6_sources),
                side(v4_destinations, v6_destinations),
            )
        }
    };
    let mut services = read_names(&entry["service"]);
    if services.iter().any(|service| service == "ALL") {
        services.clear();
    }
    // Each family's negation; a rule of both families must negate both alike.
    let negate = |v4: &str, v6: &str, unsupported: &mut Vec<String>| match family {
        Some(4) => enabled(&entry[v4]),
        Some(6) => enabled(&entry[v6]),
        _ => {
            if enabled(&entry[v4]) != enabled(&entry[v6]) {
                unsupported.push(format!("`{v4}` and `{v6}` differ"));
            }
            enabled(&entry[v4])
        }
    };
    let negate_source = negate("srcaddr-negate", "srcaddr6-negate", &mut unsupported);
    let negate_destination = negate("dstaddr-negate", "dstaddr6-negate", &mut unsupported);
    let status = word(&entry["status"], &[(0, "disable"), (1, "enable")]);
    Rule {
        name,
        comment: entry["comments"].as_str().unwrap_or_default().to_owned(),
        enabled: status != "disable" && (has_v4 || has_v6),
        from_zones: zones(&entry["srcintf"]),
        to_zones: zones(&entry["dstintf"]),
        sources,
        destinations,
        negate_source,
        negate_destination,
        services,
        verdict,
        family,
        unsupported,
    }
}

/// The rulebase of a package's tables.
pub fn rulebase(tables: &BTreeMap<String, Value>, origin: String) -> Result<Rulebase, String> {
    if !tables.contains_key(POLICY_TABLE) {
        return Err(format!("no `{POLICY_TABLE}` table"));
    }
    let mut rulebase = Rulebase::new(origin, Defaults::FORTIOS);
    for (table, v6) in [("firewall/address", false), ("firewall/address6", true)] {
        for entry in items(tables, table) {
            let Some(name) = entry["name"].as_str() else {
                continue;
            };
            let address = address(&entry, v6);
            match rulebase.addresses.get_mut(name) {
                // An IPv4 and an IPv6 object of one name (`all`, `none`): both.
                Some(Address {
                    kind: AddressKind::Nets(nets),
                    ..
                }) => {
                    if let AddressKind::Nets(more) = address.kind {
                        nets.extend(more);
                    }
                }
                _ => {
                    rulebase.addresses.insert(name.to_owned(), address);
                }
            }
        }
    }
    for table in ["firewall/addrgrp", "firewall/addrgrp6"] {
        for entry in items(tables, table) {
            let Some(name) = entry["name"].as_str() else {
                continue;
            };
            if enabled(&entry["exclude"]) {
                // Members minus exclusions cannot be written as alternatives: rules using the
                // group are refused.
                rulebase.addresses.insert(
                    name.to_owned(),
                    Address {
                        kind: AddressKind::Unsupported("a group with excluded members".into()),
                        tags: BTreeSet::new(),
                    },
                );
                continue;
            }
            let group = rulebase.groups.entry(name.to_owned()).or_default();
            group.members.extend(read_names(&entry["member"]));
        }
    }
    rulebase.services = predefined();
    for entry in items(tables, "firewall/service/custom") {
        if let Some(name) = entry["name"].as_str() {
            rulebase.services.insert(name.to_owned(), service(&entry));
        }
    }
    for entry in items(tables, "firewall/service/group") {
        if let Some(name) = entry["name"].as_str() {
            rulebase
                .service_groups
                .insert(name.to_owned(), read_names(&entry["member"]));
        }
    }
    for entry in items(tables, "dynamic/interface") {
        if let Some(name) = entry["name"].as_str() {
            rulebase.zones.insert(name.to_owned());
        }
    }
    let mut policies = items(tables, POLICY_TABLE);
    // The list is in sequence; `obj seq`, when present, says so explicitly.
    if policies.iter().all(|policy| policy["obj seq"].is_u64()) {
        policies.sort_by_key(|policy| policy["obj seq"].as_u64());
    }
    rulebase.rules = policies.iter().map(policy).collect();
    for rule in &rulebase.rules {
        rulebase
            .zones
            .extend(rule.from_zones.iter().chain(&rule.to_zones).cloned());
    }
    Ok(rulebase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_with_their_objects_in_sequence() {
        let tables = export_tables(&json!({"result": [
            {"url": "/pm/config/adom/root/pkg/edge/firewall/policy", "data": [
                {"policyid": 7, "obj seq": 2, "name": "web", "srcintf": ["dmz"], "dstintf": ["app"], "srcaddr": ["web-servers"], "dstaddr": ["all"],
                 "service": ["HTTPS", "alt-web"], "action": "accept", "status": "enable", "schedule": ["always"]},
                {"policyid": 3, "obj seq": 1, "name": "", "srcintf": ["any"], "dstintf": ["data"], "srcaddr": ["all"], "srcaddr6": ["all"], "dstaddr": ["db"],
                 "service": ["ALL"], "action": 0, "status": 1, "users": ["alice"]},
                {"policyid": 9, "obj seq": 3, "name": "vpn", "srcintf": ["any"], "dstintf": ["any"], "srcaddr": ["all"], "dstaddr": ["all"], "service": ["ALL"], "action": "ipsec", "status": "disable", "schedule": ["weekdays"], "nat": "enable"}
            ]},
            {"url": "/pm/config/adom/root/obj/firewall/address", "data": [
                {"name": "all", "type": "ipmask", "subnet": ["0.0.0.0", "0.0.0.0"]},
                {"name": "db", "type": 0, "subnet": ["10.1.3.0", "255.255.255.0"]},
                {"name": "partners", "type": "iprange", "start-ip": "203.0.113.1", "end-ip": "203.0.113.6"},
                {"name": "updates", "type": "fqdn", "fqdn": "updates.example.com"},
                {"name": "far", "type": "geography", "country": "AQ"}
            ]},
            {"url": "/pm/config/adom/root/obj/firewall/addrgrp", "data": [{"name": "web-servers", "member": ["db", "partners"]}]},
            {"url": "/pm/config/adom/root/obj/firewall/service/custom", "data": [
                {"name": "alt-web", "protocol": "TCP/UDP/SCTP", "tcp-portrange": ["8080-8090", "22:1024-65535"], "udp-portrange": "53"},
                {"name": "echo", "protocol": "ICMP", "icmptype": 8},
                {"name": "proxy", "protocol": "CONNECT"}
            ]},
            {"url": "/pm/config/adom/root/obj/dynamic/interface", "data": [{"name": "dmz"}, {"name": "app"}, {"name": "data"}, {"name": "wan"}]}
        ]}))
        .unwrap();
        let rulebase = rulebase(&tables, "test".into()).unwrap();
        let names: Vec<&str> = rulebase
            .rules
            .iter()
            .map(|rule| rule.name.as_str())
            .collect();
        assert_eq!(names, ["policy 3", "web", "vpn"]);
        let web = &rulebase.rules[1];
        assert_eq!(
            (web.from_zones.clone(), web.to_zones.clone()),
            (vec!["dmz".to_owned()], vec!["app".to_owned()])
        );
        assert!(web.destinations.is_empty(), "all is any");
        assert_eq!(web.family, Some(4));
        assert!(web.unsupported.is_empty() && web.enabled && web.verdict == Verdict::Allow);
        let first = &rulebase.rules[0];
        assert!(
            first.from_zones.is_empty() && first.sources.is_empty() && first.services.is_empty()
        );
        assert_eq!((first.verdict, first.family), (Verdict::Deny, Some(4)));
        assert_eq!(first.unsupported, ["users and user groups"]);
        let vpn = &rulebase.rules[2];
        assert!(!vpn.enabled);
        assert!(
            vpn.unsupported
                .iter()
                .any(|reason| reason.contains("ipsec")),
            "{:?}",
            vpn.unsupported
        );
        assert!(vpn
            .unsupported
            .iter()
            .any(|reason| reason.contains("schedule")));
        assert!(vpn.unsupported.contains(&"NAT".to_owned()));
        assert_eq!(
            rulebase.addresses["partners"].kind,
            AddressKind::Nets(vec![
                "203.0.113.1/32".parse().unwrap(),
                "203.0.113.2/31".parse().unwrap(),
                "203.0.113.4/31".parse().unwrap(),
                "203.0.113.6/32".parse().unwrap()
            ])
        );
        assert_eq!(
            rulebase.addresses["updates"].kind,
            AddressKind::Fqdn("updates.example.com".into())
        );
        assert!(matches!(
            rulebase.addresses["far"].kind,
            AddressKind::Unsupported(_)
        ));
        assert_eq!(
            rulebase.services["alt-web"].entries,
            [
                ServiceEntry::Ports {
                    protocol: PortProtocol::Tcp,
                    destination: vec![(8080, 8090)],
                    source: vec![]
                },
                ServiceEntry::Ports {
                    protocol: PortProtocol::Tcp,
                    destination: vec![(22, 22)],
                    source: vec![(1024, 65535)]
                },
                ServiceEntry::Ports {
                    protocol: PortProtocol::Udp,
                    destination: vec![(53, 53)],
                    source: vec![]
                },
            ]
        );
        assert!(rulebase.services["proxy"].unsupported.is_some());
        assert!(
            rulebase.services["HTTPS"].unsupported.is_none(),
            "predefined"
        );
        assert_eq!(rulebase.zones.len(), 4);
    }

    #[test]
    fn negated_services_and_excluded_members_are_refused_not_ignored() {
        let tables = export_tables(&json!({
            "firewall/policy": [
                {"name": "all-but-https", "srcintf": ["app"], "dstintf": ["wan"], "srcaddr": ["all"], "dstaddr": ["all"],
                 "service": ["HTTPS"], "service-negate": "enable", "action": "deny", "status": "enable"},
                {"name": "mixed", "srcintf": ["app"], "dstintf": ["wan"], "srcaddr": ["all"], "dstaddr": ["all"],
                 "srcaddr6": ["all"], "dstaddr6": ["all"], "dstaddr-negate": "enable", "service": ["ALL"], "action": "accept", "status": "enable"}
            ],
            "firewall/addrgrp": [{"name": "most", "member": ["a", "b"], "exclude": "enable", "exclude-member": ["b"]}]
        }))
        .unwrap();
        let rulebase = rulebase(&tables, "test".into()).unwrap();
        assert_eq!(rulebase.rules[0].unsupported, ["`service-negate`"]);
        assert!(rulebase.rules[1].unsupported[0].contains("dstaddr6-negate"));
        assert!(matches!(
            rulebase.addresses["most"].kind,
            AddressKind::Unsupported(_)
        ));
        assert!(!rulebase.groups.contains_key("most"));
    }
}
