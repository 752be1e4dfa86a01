//! A Panorama device group's security rules as a [`Rulebase`], from the configuration XML:
//! a `running-config.xml`, or the `shared` and device-group nodes the XML API shows.
//!
//! The firewall evaluates shared pre-rules, the device group's pre-rules, its post-rules, then
//! shared post-rules, then the default rules (`intrazone-default` allow and
//! `interzone-default` deny unless overridden under `default-security-rules`). Objects are
//! looked up in the device group, then in `shared`, then among the predefined services.
//!
//! Addresses: `ip-netmask`, `ip-range` (as its CIDR cover) and `fqdn`; `ip-wildcard` is
//! unsupported. Groups are static (members) or dynamic (a tag filter over the addresses' tags,
//! and the pods whose group label names the group). Services are TCP, UDP or SCTP with port
//! lists and source ports, and service groups. What Calico cannot express makes a rule
//! unsupported with the reason: applications other than `any`, `application-default`
//! (App-ID's standard ports), users, URL categories, HIP profiles, schedules, security
//! profiles, target devices, and the `intrazone`/`interzone` rule types.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use roxmltree::{Document, Node};

use crate::firewall::rules::{
    Address, AddressGroup, AddressKind, Defaults, PortProtocol, Rule, Rulebase, Service,
    ServiceEntry, TagFilter, Verdict,
};
use crate::netset::range_cover;

/// Panorama's own node, under which device groups live.
pub const PANORAMA_XPATH: &str = "/config/devices/entry[@name='localhost.localdomain']";

/// The XPath of a device group (`shared` for the shared scope alone).
pub fn device_group_xpath(device_group: &str) -> String {
    format!(
        "{PANORAMA_XPATH}/device-group/entry[@name={}]",
        xpath_literal(device_group)
    )
}

/// A string as an XPath 1.0 literal: quoted with `'` or `"`, or `concat()` when it holds both.
pub fn xpath_literal(text: &str) -> String {
    if !text.contains('\'') {
        format!("'{text}'")
    } else if !text.contains('"') {
        format!("\"{text}\"")
    } else {
        let parts: Vec<String> = text.split('\'').map(|part| format!("'{part}'")).collect();
        format!("concat({})", parts.join(", \"'\", "))
    }
}

/// The first child element named `name`.
pub(super) fn child<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    node.children()
        .find(|child| child.is_element() && child.has_tag_name(name))
}

fn path<'a, 'input>(node: Node<'a, 'input>, steps: &[&str]) -> Option<Node<'a, 'input>> {
    steps.iter().try_fold(node, |node, step| child(node, step))
}

fn entries<'a, 'input>(node: Option<Node<'a, 'input>>) -> impl Iterator<Item = Node<'a, 'input>> {
    node.into_iter().flat_map(|node| {
        node.children()
            .filter(|child| child.is_element() && child.has_tag_name("entry"))
    })
}

/// A node's text, trimmed; `None` when absent or blank.
pub(super) fn text(node: Option<Node>) -> Option<String> {
    node.and_then(|node| node.text())
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
}

/// A `<member>` list; absent is empty.
fn members(node: Option<Node>) -> Vec<String> {
    node.into_iter()
        .flat_map(|node| node.children())
        .filter(|child| child.is_element() && child.has_tag_name("member"))
        .filter_map(|member| text(Some(member)))
        .collect()
}

/// A `<member>` list where `any` (or nothing) is any: empty.
fn any_or(node: Option<Node>) -> Vec<String> {
    let members = members(node);
    if members.iter().any(|member| member == "any") {
        Vec::new()
    } else {
        members
    }
}

fn yes(node: Option<Node>) -> bool {
    text(node).as_deref() == Some("yes")
}

/// How deep device groups nest (PAN-OS allows four levels below `shared`).
pub const MAX_DEPTH: usize = 8;

/// The XPath of a device group's parent, in the read-only part of the configuration.
pub fn parent_xpath(device_group: &str) -> String {
    format!(
        "/config/readonly/devices/entry[@name='localhost.localdomain']/device-group/entry[@name={}]/parent-dg",
        xpath_literal(device_group)
    )
}

/// The shared scope, and the device group's node after its ancestors' (top first), in a
/// whole configuration.
pub fn scopes<'a, 'input>(
    document: &'a Document<'input>,
    device_group: &str,
) -> Result<(Option<Node<'a, 'input>>, Vec<Node<'a, 'input>>), String> {
    let root = document.root_element();
    if !root.has_tag_name("config") {
        return Err(format!(
            "expected a Panorama configuration (`<config>`), found `<{}>`",
            root.tag_name().name()
        ));
    }
    let shared = child(root, "shared");
    if device_group.is_empty() || device_group == "shared" {
        return Ok((shared, Vec::new()));
    }
    let in_section = |section: Node<'a, 'input>, name: &str| {
        entries(Some(section))
            .filter_map(|device| child(device, "device-group"))
            .flat_map(|groups| entries(Some(groups)))
            .find(|entry| entry.attribute("name") == Some(name))
    };
    let devices = path(root, &["devices"]);
    let readonly = path(root, &["readonly", "devices"]);
    let mut chain = Vec::new();
    let mut name = device_group.to_owned();
    loop {
        let group = devices
            .and_then(|devices| in_section(devices, &name))
            .ok_or_else(|| format!("the configuration has no device group `{name}`"))?;
        chain.push(group);
        let parent = readonly
            .and_then(|readonly| in_section(readonly, &name))
            .and_then(|entry| text(child(entry, "parent-dg")));
        match parent {
            Some(parent) if parent != "shared" => {
                if chain.len() >= MAX_DEPTH {
                    return Err(format!(
                        "device group `{device_group}` nests deeper than {MAX_DEPTH}"
                    ));
                }
                name = parent;
            }
            _ => break,
        }
    }
    chain.reverse();
    Ok((shared, chain))
}

/// The rulebase of `running-config.xml` for one device group (or `shared`), with the rules
/// and objects it inherits.
pub fn rulebase_of_config(xml: &str, device_group: &str) -> Result<Rulebase, String> {
    let document = Document::parse(xml).map_err(|error| format!("not XML: {error}"))?;
    let (shared, chain) = scopes(&document, device_group)?;
    let origin = format!("panorama device group {device_group}");
    Ok(rulebase(shared, &chain, origin))
}

/// The rulebase of the shared scope and a chain of device groups, the top ancestor first
/// (empty for `shared` alone). Pre-rules run top-down (shared, ancestors, the group),
/// post-rules bottom-up; objects of a lower scope override a higher one's by name.
pub fn rulebase(shared: Option<Node>, chain: &[Node], origin: String) -> Rulebase {
    let scopes: Vec<Node> = shared.into_iter().chain(chain.iter().copied()).collect();
    let mut rulebase = Rulebase::new(origin, Defaults::PAN_OS);
    rulebase.services = predefined();
    // Later scopes (the device group) override earlier ones (shared) by name.
    for scope in &scopes {
        for entry in entries(child(*scope, "address")) {
            if let Some(name) = entry.attribute("name") {
                rulebase.addresses.insert(name.to_owned(), address(entry));
            }
        }
        for entry in entries(child(*scope, "address-group")) {
            let Some(name) = entry.attribute("name") else {
                continue;
            };
            match group_of(entry) {
                Ok(group) => {
                    rulebase.addresses.remove(name);
                    rulebase.groups.insert(name.to_owned(), group);
                }
                Err(reason) => {
                    rulebase.groups.remove(name);
                    rulebase.addresses.insert(
                        name.to_owned(),
                        Address {
                            kind: AddressKind::Unsupported(reason),
                            tags: BTreeSet::new(),
                        },
                    );
                }
            }
        }
        // A name is a service or a service group; the later scope's wins either way.
        for entry in entries(child(*scope, "service")) {
            if let Some(name) = entry.attribute("name") {
                rulebase.service_groups.remove(name);
                rulebase.services.insert(name.to_owned(), service(entry));
            }
        }
        for entry in entries(child(*scope, "service-group")) {
            if let Some(name) = entry.attribute("name") {
                rulebase.services.remove(name);
                rulebase
                    .service_groups
                    .insert(name.to_owned(), members(child(entry, "members")));
            }
        }
        if let Some(defaults) = path(*scope, &["post-rulebase", "default-security-rules"]) {
            override_defaults(&mut rulebase.defaults, defaults);
        }
    }
    let rulebases = |scope: Option<Node<'_, '_>>, which: &str| {
        entries(scope.and_then(|scope| path(scope, &[which, "security", "rules"])))
            .map(rule)
            .collect::<Vec<_>>()
    };
    let mut rules = rulebases(shared, "pre-rulebase");
    for group in chain {
        rules.extend(rulebases(Some(*group), "pre-rulebase"));
    }
    for group in chain.iter().rev() {
        rules.extend(rulebases(Some(*group), "post-rulebase"));
    }
    rules.extend(rulebases(shared, "post-rulebase"));
    rulebase.rules = rules;
    for rule in &rulebase.rules {
        rulebase
            .zones
            .extend(rule.from_zones.iter().chain(&rule.to_zones).cloned());
    }
    rulebase
}

fn override_defaults(defaults: &mut Defaults, node: Node) {
    for entry in entries(child(node, "rules")) {
        let verdict = match text(child(entry, "action")).as_deref() {
            Some("allow") => Verdict::Allow,
            Some(_) => Verdict::Deny,
            None => continue,
        };
        match entry.attribute("name") {
            Some("intrazone-default") => defaults.intrazone = verdict,
            Some("interzone-default") => defaults.interzone = verdict,
            _ => {}
        }
    }
}

/// `service-http` and `service-https`, which live under `/config/predefined`.
fn predefined() -> BTreeMap<String, Service> {
    let tcp = |ports: Vec<(u16, u16)>| Service {
        entries: vec![ServiceEntry::Ports {
            protocol: PortProtocol::Tcp,
            destination: ports,
            source: Vec::new(),
        }],
        unsupported: None,
    };
    BTreeMap::from([
        ("service-http".to_owned(), tcp(vec![(80, 80), (8080, 8080)])),
        ("service-https".to_owned(), tcp(vec![(443, 443)])),
    ])
}

fn address(entry: Node) -> Address {
    let tags = members(child(entry, "tag")).into_iter().collect();
    let kind = if let Some(value) = text(child(entry, "ip-netmask")) {
        match parse_netmask(&value) {
            Some(net) => AddressKind::Nets(vec![net]),
            None => AddressKind::Unsupported(format!("ip-netmask `{value}`")),
        }
    } else if let Some(value) = text(child(entry, "ip-range")) {
        let ends = value.split_once('-').and_then(|(start, end)| {
            Some((
                start.trim().parse::<IpAddr>().ok()?,
                end.trim().parse::<IpAddr>().ok()?,
            ))
        });
        match ends.and_then(|(start, end)| range_cover(start, end)) {
            Some(nets) => AddressKind::Nets(nets),
            None => AddressKind::Unsupported(format!("ip-range `{value}`")),
        }
    } else if let Some(value) = text(child(entry, "fqdn")) {
        AddressKind::Fqdn(value)
    } else if child(entry, "ip-wildcard").is_some() {
        AddressKind::Unsupported("an ip-wildcard mask (not a prefix)".into())
    } else {
        AddressKind::Unsupported("no ip-netmask, ip-range or fqdn".into())
    };
    Address { kind, tags }
}

/// `10.0.0.0/8`, `10.0.0.1` (a host), `2001:db8::/32`; host bits set are cleared, as PAN-OS
/// matches the prefix.
pub(super) fn parse_netmask(text: &str) -> Option<IpNet> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(net.trunc());
    }
    text.parse::<IpAddr>().ok().map(IpNet::from)
}

fn group_of(entry: Node) -> Result<AddressGroup, String> {
    if let Some(filter) = path(entry, &["dynamic", "filter"]) {
        let text = text(Some(filter)).unwrap_or_default();
        let filter =
            TagFilter::parse(&text).map_err(|error| format!("dynamic filter `{text}`: {error}"))?;
        return Ok(AddressGroup {
            members: Vec::new(),
            filter: Some(filter),
        });
    }
    Ok(AddressGroup {
        members: members(child(entry, "static")),
        filter: None,
    })
}

/// `80,443,8000-8080`.
fn ports(text: &str) -> Result<Vec<(u16, u16)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (low, high) = part.split_once('-').unwrap_or((part, part));
            match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
                (Ok(low), Ok(high)) if low <= high => Ok((low, high)),
                _ => Err(format!("port `{part}`")),
            }
        })
        .collect()
}

fn service(entry: Node) -> Service {
    let unsupported = |reason: String| Service {
        entries: Vec::new(),
        unsupported: Some(reason),
    };
    let Some(protocol) = child(entry, "protocol") else {
        return unsupported("no protocol".into());
    };
    let Some((node, protocol)) = [
        ("tcp", PortProtocol::Tcp),
        ("udp", PortProtocol::Udp),
        ("sctp", PortProtocol::Sctp),
    ]
    .into_iter()
    .find_map(|(name, kind)| Some((child(protocol, name)?, kind))) else {
        return unsupported("a protocol other than tcp, udp or sctp".into());
    };
    let destination = match ports(&text(child(node, "port")).unwrap_or_default()) {
        Ok(ports) if !ports.is_empty() => ports,
        Ok(_) => return unsupported("no ports".into()),
        Err(reason) => return unsupported(reason),
    };
    let source = match ports(&text(child(node, "source-port")).unwrap_or_default()) {
        Ok(ports) => ports,
        Err(reason) => return unsupported(reason),
    };
    Service {
        entries: vec![ServiceEntry::Ports {
            protocol,
            destination,
            source,
        }],
        unsupported: None,
    }
}

/// Reasons a rule cannot be expressed as Calico policy.
fn unsupported(entry: Node) -> Vec<String> {
    let mut reasons = Vec::new();
    for (field, what) in [
        ("application", "applications (App-ID)"),
        ("source-user", "users"),
        ("category", "URL categories"),
        ("source-hip", "HIP profiles"),
        ("destination-hip", "HIP profiles"),
    ] {
        if !any_or(child(entry, field)).is_empty() {
            reasons.push(format!("`{field}`: {what}"));
        }
    }
    if members(child(entry, "service"))
        .iter()
        .any(|service| service == "application-default")
    {
        reasons.push("service `application-default` (the standard ports App-ID assigns)".into());
    }
    if let Some(schedule) = text(child(entry, "schedule")) {
        reasons.push(format!("schedule `{schedule}`"));
    }
    if child(entry, "profile-setting").is_some_and(|node| node.children().any(|c| c.is_element())) {
        reasons.push("security profiles".into());
    }
    if path(entry, &["target", "devices"])
        .is_some_and(|node| node.children().any(|c| c.is_element()))
    {
        reasons.push("target devices (the rule applies to some firewalls only)".into());
    }
    match text(child(entry, "rule-type")).as_deref() {
        None | Some("universal") => {}
        Some(kind) => reasons.push(format!("rule-type `{kind}`")),
    }
    reasons.dedup();
    reasons
}

fn rule(entry: Node) -> Rule {
    let name = entry.attribute("name").unwrap_or_default().to_owned();
    let mut unsupported = unsupported(entry);
    let verdict = match text(child(entry, "action")).as_deref() {
        Some("allow") => Verdict::Allow,
        Some("deny" | "drop" | "reset-client" | "reset-server" | "reset-both") => Verdict::Deny,
        other => {
            unsupported.push(format!("action `{}`", other.unwrap_or("(none)")));
            Verdict::Deny
        }
    };
    let services = members(child(entry, "service"))
        .into_iter()
        .filter(|service| service != "application-default")
        .collect::<Vec<_>>();
    let services = if services.iter().any(|service| service == "any") {
        Vec::new()
    } else {
        services
    };
    Rule {
        name,
        comment: text(child(entry, "description")).unwrap_or_default(),
        enabled: !yes(child(entry, "disabled")),
        from_zones: any_or(child(entry, "from")),
        to_zones: any_or(child(entry, "to")),
        sources: any_or(child(entry, "source")),
        destinations: any_or(child(entry, "destination")),
        negate_source: yes(child(entry, "negate-source")),
        negate_destination: yes(child(entry, "negate-destination")),
        services,
        verdict,
        family: None,
        unsupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"<config version="11.1.0">
  <devices><entry name="localhost.localdomain"><device-group>
    <entry name="k8s">
      <address>
        <entry name="db"><ip-netmask>10.1.3.0/24</ip-netmask><tag><member>data</member></tag></entry>
        <entry name="partners"><ip-range>203.0.113.1-203.0.113.6</ip-range></entry>
        <entry name="w"><ip-wildcard>10.0.0.1/0.0.255.0</ip-wildcard></entry>
      </address>
      <address-group>
        <entry name="data-dag"><dynamic><filter>'data' or 'archive'</filter></dynamic></entry>
        <entry name="bad-dag"><dynamic><filter>'data' and</filter></dynamic></entry>
        <entry name="web"><static><member>partners</member></static></entry>
      </address-group>
      <service><entry name="alt"><protocol><tcp><port>8000-8080,9000</port><source-port>1024-65535</source-port></tcp></protocol></entry></service>
      <service-group><entry name="webs"><members><member>alt</member><member>service-https</member></members></entry></service-group>
      <pre-rulebase><security><rules>
        <entry name="dg-pre"><from><member>dmz</member></from><to><member>app</member></to><source><member>web</member></source><destination><member>any</member></destination>
          <service><member>webs</member></service><application><member>any</member></application><action>allow</action></entry>
      </rules></security></pre-rulebase>
      <post-rulebase><security><rules>
        <entry name="dg-post"><from><member>any</member></from><to><member>data</member></to><source><member>any</member></source><destination><member>data-dag</member></destination>
          <negate-destination>yes</negate-destination><service><member>application-default</member></service><application><member>ssl</member></application><action>reset-both</action><disabled>yes</disabled></entry>
      </rules></security>
      <default-security-rules><rules><entry name="intrazone-default"><action>deny</action></entry></rules></default-security-rules></post-rulebase>
    </entry>
  </device-group></entry></devices>
  <shared>
    <address><entry name="db"><ip-netmask>192.0.2.1</ip-netmask></entry></address>
    <pre-rulebase><security><rules><entry name="shared-pre"><from><member>any</member></from><to><member>any</member></to><source><member>any</member></source><destination><member>db</member></destination><service><member>any</member></service><action>drop</action></entry></rules></security></pre-rulebase>
    <post-rulebase><security><rules><entry name="shared-post"><from><member>wan</member></from><to><member>dmz</member></to><source><member>any</member></source><destination><member>any</member></destination><service><member>service-http</member></service><action>allow</action><rule-type>interzone</rule-type></entry></rules></security></post-rulebase>
  </shared>
</config>"#;

    #[test]
    fn a_device_group_reads_in_panorama_order_with_its_objects() {
        let rulebase = rulebase_of_config(CONFIG, "k8s").unwrap();
        let names: Vec<&str> = rulebase
            .rules
            .iter()
            .map(|rule| rule.name.as_str())
            .collect();
        assert_eq!(names, ["shared-pre", "dg-pre", "dg-post", "shared-post"]);
        assert_eq!(rulebase.defaults.intrazone, Verdict::Deny, "overridden");
        assert_eq!(rulebase.defaults.interzone, Verdict::Deny);
        assert_eq!(
            rulebase.addresses["db"].kind,
            AddressKind::Nets(vec!["10.1.3.0/24".parse().unwrap()]),
            "the device group's object wins over shared"
        );
        assert!(matches!(
            rulebase.addresses["w"].kind,
            AddressKind::Unsupported(_)
        ));
        assert!(matches!(
            rulebase.addresses["bad-dag"].kind,
            AddressKind::Unsupported(_)
        ));
        assert!(rulebase.groups["data-dag"].filter.is_some());
        let pre = &rulebase.rules[1];
        assert!(pre.unsupported.is_empty(), "{:?}", pre.unsupported);
        assert!(pre.destinations.is_empty() && pre.services == ["webs"]);
        let post = &rulebase.rules[2];
        assert!(!post.enabled && post.negate_destination && post.verdict == Verdict::Deny);
        assert_eq!(post.unsupported.len(), 2, "{:?}", post.unsupported);
        assert_eq!(rulebase.rules[0].verdict, Verdict::Deny, "drop is a deny");
        assert!(rulebase.rules[3].unsupported[0].contains("interzone"));
        assert_eq!(
            rulebase.services["alt"].entries,
            [ServiceEntry::Ports {
                protocol: PortProtocol::Tcp,
                destination: vec![(8000, 8080), (9000, 9000)],
                source: vec![(1024, 65535)]
            }]
        );
        assert_eq!(rulebase.zones.len(), 4);
    }

    #[test]
    fn shared_alone_and_missing_groups() {
        let shared = rulebase_of_config(CONFIG, "shared").unwrap();
        assert_eq!(shared.rules.len(), 2);
        assert!(rulebase_of_config(CONFIG, "nope")
            .unwrap_err()
            .contains("no device group"));
        assert!(rulebase_of_config("<response/>", "k8s").is_err());
    }

    #[test]
    fn xpath_literals_quote_any_name() {
        assert_eq!(xpath_literal("k8s"), "'k8s'");
        assert_eq!(xpath_literal("o'neil"), "\"o'neil\"");
        assert_eq!(xpath_literal("a'b\"c"), "concat('a', \"'\", 'b\"c')");
    }

    #[test]
    fn a_child_device_group_inherits_its_ancestors_rules_and_objects_in_order() {
        let rule = |name: &str| {
            format!("<entry name=\"{name}\"><from><member>any</member></from><to><member>any</member></to><source><member>any</member></source><destination><member>any</member></destination><service><member>any</member></service><action>deny</action></entry>")
        };
        let scope = |name: &str, objects: &str| {
            format!(
                "<entry name=\"{name}\">{objects}<pre-rulebase><security><rules>{}</rules></security></pre-rulebase><post-rulebase><security><rules>{}</rules></security></post-rulebase></entry>",
                rule(&format!("{name}-pre")),
                rule(&format!("{name}-post"))
            )
        };
        let xml = format!(
            "<config><devices><entry name=\"localhost.localdomain\"><device-group>{}{}{}</device-group></entry></devices>\
             <readonly><devices><entry name=\"localhost.localdomain\"><device-group>\
             <entry name=\"eu\"><parent-dg>global</parent-dg></entry><entry name=\"k8s\"><parent-dg>eu</parent-dg></entry>\
             </device-group></entry></devices></readonly><shared/></config>",
            scope("global", "<address><entry name=\"db\"><ip-netmask>10.0.0.0/8</ip-netmask></entry></address>"),
            scope("eu", "<address><entry name=\"db\"><ip-netmask>10.1.0.0/16</ip-netmask></entry></address>"),
            scope("k8s", "")
        );
        let rulebase = rulebase_of_config(&xml, "k8s").unwrap();
        let names: Vec<&str> = rulebase
            .rules
            .iter()
            .map(|rule| rule.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "global-pre",
                "eu-pre",
                "k8s-pre",
                "k8s-post",
                "eu-post",
                "global-post"
            ]
        );
        assert_eq!(
            rulebase.addresses["db"].kind,
            AddressKind::Nets(vec!["10.1.0.0/16".parse().unwrap()]),
            "the nearer ancestor's object wins"
        );
    }
}
