//! The translation is right when Calico decides every flow as the firewall does: for random
//! rulebases (zones, overlapping and nested groups, IP objects, port ranges, deny before
//! allow, disabled rules, negation), every pair of endpoints (zoned pods, pods without a zone,
//! IPs in an external zone and outside every zone) and a spread of traffic, the firewall's
//! verdict (`common::verdicts::firewall`) equals the generated tier's
//! (`common::verdicts::calico`).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::verdicts::{self, Conventions, Endpoint, Traffic};
use ipnet::IpNet;
use proptest::prelude::*;
use threatflow::firewall::rules::{
    Address, AddressGroup, Defaults, PortProtocol, Rule, Rulebase, Service, ServiceEntry, Verdict,
};
use threatflow::k8s::calico::Action;
use threatflow::policy_import::translate::{translate, Settings, Translation};

const ZONE: &str = "firewall.threatflow.io/zone";
const GROUP: &str = "firewall.threatflow.io/address-group";

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

pub fn settings() -> Settings {
    Settings {
        tier: "zones".into(),
        tier_order: 50.0,
        staged: false,
        zone_label: ZONE.into(),
        group_label: GROUP.into(),
        external_zones: BTreeMap::from([(
            "wan".to_owned(),
            vec![net("203.0.113.0/24"), net("2001:db8::/64")],
        )]),
        domain_rules: true,
        zones: BTreeSet::new(),
    }
}

fn conventions(settings: &Settings) -> Conventions {
    Conventions {
        zone_label: settings.zone_label.clone(),
        group_label: settings.group_label.clone(),
        external_zones: settings.external_zones.clone(),
    }
}

fn pod(name: &str, ip: &str, own: &[(&str, &str)], namespace: &[(&str, &str)]) -> Endpoint {
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    };
    Endpoint::Pod {
        name: name.into(),
        ip: ip.parse().unwrap(),
        labels: labels(own),
        namespace_labels: labels(namespace),
    }
}

/// Pods in every combination of zone and group labelling, and outside IPs.
fn endpoints() -> Vec<Endpoint> {
    vec![
        pod("web", "10.1.1.10", &[(GROUP, "g1")], &[(ZONE, "dmz")]),
        pod(
            "api",
            "10.1.2.20",
            &[(ZONE, "app"), (GROUP, "g2")],
            &[(ZONE, "dmz"), (GROUP, "g3")],
        ),
        pod("worker", "10.1.2.21", &[], &[(ZONE, "app"), (GROUP, "g3")]),
        pod("db", "10.1.3.30", &[(ZONE, "data"), (GROUP, "g4")], &[]),
        pod("cache", "10.1.3.31", &[(ZONE, "data")], &[]),
        pod("loose", "10.1.9.90", &[(GROUP, "g1")], &[]),
        pod("plain", "10.1.9.91", &[], &[]),
        Endpoint::External {
            ip: "203.0.113.5".parse().unwrap(),
        },
        Endpoint::External {
            ip: "198.51.100.7".parse().unwrap(),
        },
        // IPv6: a zoned pod, an unzoned one, and an outside address.
        pod("web6", "fd00:10::10", &[(GROUP, "g1")], &[(ZONE, "dmz")]),
        pod("db6", "fd00:10::30", &[(ZONE, "data"), (GROUP, "g4")], &[]),
        pod("plain6", "fd00:10::91", &[], &[]),
        Endpoint::External {
            ip: "2001:db8::7".parse().unwrap(),
        },
    ]
}

fn traffic() -> Vec<Traffic> {
    vec![
        Traffic::tcp(40000, 80),
        Traffic::tcp(40000, 443),
        Traffic::tcp(40000, 8050),
        Traffic::tcp(2000, 22),
        Traffic::tcp(80, 22),
        Traffic::udp(5353, 53),
        Traffic::icmp(8, 0),
        Traffic::icmp(0, 0),
        Traffic::protocol(47),
    ]
}

/// The objects and services random rules draw on.
fn base() -> Rulebase {
    let mut rulebase = Rulebase::new("property test", Defaults::FORTIOS);
    rulebase.zones = ["dmz", "app", "data"].map(String::from).into();
    rulebase
        .addresses
        .insert("a-web".into(), Address::nets(vec![net("10.1.1.0/24")]));
    rulebase.addresses.insert(
        "a-data".into(),
        Address::nets(vec![net("10.1.3.30/32"), net("10.1.9.0/24")]),
    );
    rulebase.addresses.insert(
        "a-partner".into(),
        Address::nets(vec![net("203.0.113.0/25")]),
    );
    rulebase.addresses.insert(
        "a-internet".into(),
        Address::nets(vec![net("198.51.100.0/24")]),
    );
    rulebase.addresses.insert(
        "a-six".into(),
        Address::nets(vec![net("fd00:10::/124"), net("2001:db8::/120")]),
    );
    for (group, members) in [
        ("g1", vec![]),
        ("g2", vec!["a-web"]),
        ("g3", vec![]),
        ("g4", vec!["g1", "a-partner"]),
    ] {
        rulebase.groups.insert(
            group.into(),
            AddressGroup {
                members: members.into_iter().map(String::from).collect(),
                filter: None,
            },
        );
    }
    let ports = |protocol, destination: &[(u16, u16)], source: &[(u16, u16)]| Service {
        entries: vec![ServiceEntry::Ports {
            protocol,
            destination: destination.to_vec(),
            source: source.to_vec(),
        }],
        unsupported: None,
    };
    rulebase.services.insert(
        "web".into(),
        ports(PortProtocol::Tcp, &[(80, 80), (443, 443)], &[]),
    );
    rulebase.services.insert(
        "range".into(),
        ports(PortProtocol::Tcp, &[(8000, 8100)], &[]),
    );
    rulebase
        .services
        .insert("dns".into(), ports(PortProtocol::Udp, &[(53, 53)], &[]));
    rulebase.services.insert(
        "ssh-high".into(),
        ports(PortProtocol::Tcp, &[(22, 22)], &[(1024, 65535)]),
    );
    rulebase.services.insert(
        "echo".into(),
        Service {
            entries: vec![ServiceEntry::Icmp {
                v6: false,
                kind: Some(8),
                code: None,
            }],
            unsupported: None,
        },
    );
    rulebase.services.insert(
        "gre".into(),
        Service {
            entries: vec![ServiceEntry::Protocol(47)],
            unsupported: None,
        },
    );
    rulebase
        .service_groups
        .insert("web-and-dns".into(), vec!["web".into(), "dns".into()]);
    rulebase
}

fn subset(names: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(names.to_vec(), 0..=max)
        .prop_map(|names| names.into_iter().map(String::from).collect())
}

fn rule() -> impl Strategy<Value = Rule> {
    let zones = &["dmz", "app", "data", "wan"];
    let addresses = &[
        "g1",
        "g2",
        "g3",
        "g4",
        "a-web",
        "a-data",
        "a-partner",
        "a-internet",
        "a-six",
    ];
    let services = &[
        "web",
        "range",
        "dns",
        "ssh-high",
        "echo",
        "gre",
        "web-and-dns",
    ];
    (
        (subset(zones, 2), subset(zones, 2)),
        (subset(addresses, 2), subset(addresses, 2)),
        (prop::bool::weighted(0.1), prop::bool::weighted(0.1)),
        subset(services, 2),
        prop::bool::ANY,
        prop::bool::weighted(0.85),
    )
        .prop_map(
            |(
                (from, to),
                (sources, destinations),
                (negate_source, negate_destination),
                services,
                allow,
                enabled,
            )| {
                Rule {
                    from_zones: from,
                    to_zones: to,
                    sources,
                    destinations,
                    negate_source,
                    negate_destination,
                    services,
                    enabled,
                    ..Rule::new("r", if allow { Verdict::Allow } else { Verdict::Deny })
                }
            },
        )
}

fn rulebase() -> impl Strategy<Value = Rulebase> {
    (prop::collection::vec(rule(), 0..10), prop::bool::ANY).prop_map(|(rules, pan)| {
        let mut rulebase = base();
        rulebase.defaults = if pan {
            Defaults::PAN_OS
        } else {
            Defaults::FORTIOS
        };
        rulebase.rules = rules
            .into_iter()
            .enumerate()
            .map(|(index, rule)| Rule {
                name: format!("rule {index}"),
                ..rule
            })
            .collect();
        rulebase
    })
}

fn tier_default(translation: &Translation) -> Action {
    match &translation.tier {
        threatflow::k8s::apply::Object::Tier(tier) => tier.spec.default_action.unwrap(),
        other => panic!("not a tier: {other:?}"),
    }
}

/// Every flow decided alike; rules the translator refused are left out of the firewall's side
/// (and a refused allow never lets Calico allow what the firewall denies).
pub fn check(rulebase: &Rulebase, settings: &Settings) -> Result<usize, String> {
    check_over(rulebase, settings, &endpoints(), &traffic())
}

/// [`check`] over given endpoints and traffic.
pub fn check_over(
    rulebase: &Rulebase,
    settings: &Settings,
    endpoints: &[Endpoint],
    traffic: &[Traffic],
) -> Result<usize, String> {
    let translation = translate(rulebase, settings);
    let refused: BTreeSet<usize> = translation
        .skipped
        .iter()
        .map(|skipped| skipped.position)
        .collect();
    let mut effective = rulebase.clone();
    effective.rules = rulebase
        .rules
        .iter()
        .enumerate()
        .filter(|(index, _)| !refused.contains(&(index + 1)))
        .map(|(_, rule)| rule.clone())
        .collect();
    let conventions = conventions(settings);
    let default = tier_default(&translation);
    let mut flows = 0;
    for source in endpoints {
        for destination in endpoints {
            // A flow is of one family.
            if source == destination || source.ip().is_ipv4() != destination.ip().is_ipv4() {
                continue;
            }
            for &traffic in traffic {
                // ICMP for IPv4 is protocol 1, for IPv6 58.
                let v6 = source.ip().is_ipv6();
                if (v6 && traffic.protocol == 1) || (!v6 && traffic.protocol == 58) {
                    continue;
                }
                let firewall =
                    verdicts::firewall(&effective, &conventions, source, destination, traffic);
                let calico =
                    verdicts::calico(&translation.objects, default, source, destination, traffic);
                if firewall != calico {
                    return Err(format!(
                        "{source:?} -> {destination:?} {traffic:?}: firewall {firewall:?}, calico {calico:?}\nskipped: {:?}",
                        translation.skipped
                    ));
                }
                let original =
                    verdicts::firewall(rulebase, &conventions, source, destination, traffic);
                if translation.skipped_denies().next().is_none()
                    && calico == Verdict::Allow
                    && original == Verdict::Deny
                {
                    return Err(format!("a refused allow let through what the firewall denies: {source:?} -> {destination:?} {traffic:?}"));
                }
                flows += 1;
            }
        }
    }
    Ok(flows)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn calico_decides_every_flow_as_the_firewall_does(rulebase in rulebase()) {
        let settings = settings();
        if let Err(message) = check(&rulebase, &settings) {
            let rules: Vec<String> = rulebase.rules.iter().map(|rule| format!("{rule:?}")).collect();
            return Err(TestCaseError::fail(format!("{message}\nrules:\n{}", rules.join("\n"))));
        }
    }

    /// The WAN as everything outside (0.0.0.0/0, ::/0): pods, whose IPs it covers too, are
    /// still in their own zones (or none), never in the WAN.
    #[test]
    fn pods_are_never_in_an_external_zone_that_covers_their_ips(rulebase in rulebase()) {
        let mut settings = settings();
        settings.external_zones = BTreeMap::from([(
            "wan".to_owned(),
            vec![net("0.0.0.0/0"), net("::/0")],
        )]);
        if let Err(message) = check(&rulebase, &settings) {
            let rules: Vec<String> = rulebase.rules.iter().map(|rule| format!("{rule:?}")).collect();
            return Err(TestCaseError::fail(format!("{message}\nrules:\n{}", rules.join("\n"))));
        }
    }

    #[test]
    fn the_same_rulebase_always_gives_the_same_bytes(rulebase in rulebase()) {
        let settings = settings();
        let yaml = |translation: &Translation| -> String {
            translation.objects.iter().map(|object| object.to_yaml()).collect()
        };
        prop_assert_eq!(yaml(&translate(&rulebase, &settings)), yaml(&translate(&rulebase.clone(), &settings)));
    }
}

#[test]
fn several_addresses_on_one_side_are_alternatives_not_all_required() {
    let mut rulebase = base();
    let mut rule = Rule::new("to g3 or the data pod", Verdict::Allow);
    rule.from_zones = vec!["dmz".into()];
    rule.destinations = vec!["g3".into(), "a-data".into()];
    rulebase.rules.push(rule);
    let settings = settings();
    check(&rulebase, &settings).unwrap();
    let translation = translate(&rulebase, &settings);
    let conventions = conventions(&settings);
    let default = tier_default(&translation);
    let endpoints = endpoints();
    let (web, worker, db) = (&endpoints[0], &endpoints[2], &endpoints[3]);
    for destination in [worker, db] {
        assert_eq!(
            verdicts::calico(
                &translation.objects,
                default,
                web,
                destination,
                Traffic::tcp(1, 2)
            ),
            Verdict::Allow
        );
        assert_eq!(
            verdicts::firewall(
                &rulebase,
                &conventions,
                web,
                destination,
                Traffic::tcp(1, 2)
            ),
            Verdict::Allow
        );
    }
}

#[test]
fn a_deny_before_an_allow_shadows_it_in_calico_too() {
    let mut rulebase = base();
    let mut deny = Rule::new("no ssh to data", Verdict::Deny);
    deny.to_zones = vec!["data".into()];
    deny.services = vec!["ssh-high".into()];
    let mut allow = Rule::new("app to data", Verdict::Allow);
    allow.from_zones = vec!["app".into()];
    allow.to_zones = vec!["data".into()];
    rulebase.rules = vec![deny, allow];
    let settings = settings();
    assert!(check(&rulebase, &settings).unwrap() > 0);
    let translation = translate(&rulebase, &settings);
    let endpoints = endpoints();
    let (worker, db) = (&endpoints[2], &endpoints[3]);
    let default = tier_default(&translation);
    assert_eq!(
        verdicts::calico(
            &translation.objects,
            default,
            worker,
            db,
            Traffic::tcp(2000, 22)
        ),
        Verdict::Deny
    );
    assert_eq!(
        verdicts::calico(
            &translation.objects,
            default,
            worker,
            db,
            Traffic::tcp(80, 22)
        ),
        Verdict::Allow
    );
}

#[test]
fn partners_in_an_external_zone_reach_the_dmz_by_ip() {
    let mut rulebase = base();
    let mut rule = Rule::new("partner to dmz web", Verdict::Allow);
    rule.from_zones = vec!["wan".into()];
    rule.sources = vec!["a-partner".into()];
    rule.to_zones = vec!["dmz".into()];
    rule.services = vec!["web".into()];
    rulebase.rules.push(rule);
    let settings = settings();
    check(&rulebase, &settings).unwrap();
    let translation = translate(&rulebase, &settings);
    let endpoints = endpoints();
    let (web, partner, internet) = (&endpoints[0], &endpoints[7], &endpoints[8]);
    let default = tier_default(&translation);
    assert_eq!(
        verdicts::calico(
            &translation.objects,
            default,
            partner,
            web,
            Traffic::tcp(40000, 443)
        ),
        Verdict::Allow
    );
    assert_eq!(
        verdicts::calico(
            &translation.objects,
            default,
            internet,
            web,
            Traffic::tcp(40000, 443)
        ),
        Verdict::Deny
    );
    assert_eq!(
        verdicts::calico(
            &translation.objects,
            default,
            partner,
            web,
            Traffic::tcp(40000, 22)
        ),
        Verdict::Deny
    );
}

/// The reference architecture's cluster: DMZ, app and data zones by namespace (one pod
/// overriding its namespace's zone), pods in address groups by their own label and their
/// namespace's, a pod outside firewall control, and outside hosts (partners, the internet, a
/// blocked host, corporate admins, an address in no zone).
fn reference_endpoints() -> Vec<Endpoint> {
    let external = |ip: &str| Endpoint::External {
        ip: ip.parse().unwrap(),
    };
    vec![
        pod(
            "web-1",
            "10.2.1.10",
            &[(GROUP, "web-frontends")],
            &[(ZONE, "dmz")],
        ),
        pod(
            "proxy",
            "10.2.1.20",
            &[(GROUP, "proxies")],
            &[(ZONE, "dmz")],
        ),
        pod(
            "bff",
            "10.2.1.30",
            &[(ZONE, "app"), (GROUP, "api-servers")],
            &[(ZONE, "dmz")],
        ),
        pod(
            "api",
            "10.2.2.10",
            &[(GROUP, "api-servers")],
            &[(ZONE, "app"), (GROUP, "shop-all")],
        ),
        pod(
            "worker",
            "10.2.2.20",
            &[(GROUP, "workers")],
            &[(ZONE, "app"), (GROUP, "shop-all")],
        ),
        pod(
            "postgres",
            "10.2.3.10",
            &[(GROUP, "databases")],
            &[(ZONE, "data")],
        ),
        pod(
            "replica",
            "10.2.3.11",
            &[(GROUP, "databases")],
            &[(ZONE, "data")],
        ),
        pod(
            "redis",
            "10.2.3.20",
            &[(GROUP, "caches")],
            &[(ZONE, "data")],
        ),
        pod(
            "audit-db",
            "10.2.3.30",
            &[(GROUP, "audit")],
            &[(ZONE, "data")],
        ),
        pod("prometheus", "10.2.9.10", &[], &[]),
        external("203.0.113.15"),
        external("203.0.113.200"),
        external("198.51.100.7"),
        external("198.51.100.66"),
        external("192.0.2.5"),
        external("192.0.2.100"),
        external("8.8.8.8"),
    ]
}

fn reference_traffic() -> Vec<Traffic> {
    vec![
        Traffic::tcp(40000, 80),
        Traffic::tcp(40000, 443),
        Traffic::tcp(40000, 8050),
        Traffic::tcp(40000, 5432),
        Traffic::tcp(40000, 6379),
        Traffic::tcp(2000, 22),
        Traffic::tcp(80, 22),
        Traffic::tcp(40000, 7),
        Traffic::udp(5353, 53),
        Traffic::udp(5353, 514),
        Traffic::icmp(8, 0),
    ]
}

fn reference_settings() -> Settings {
    let mut settings = settings();
    settings.external_zones = BTreeMap::from([
        (
            "wan".to_owned(),
            vec![net("198.51.100.0/24"), net("203.0.113.0/24")],
        ),
        ("corp".to_owned(), vec![net("192.0.2.0/24")]),
    ]);
    settings
}

fn reference(file: &str, device_group: Option<&str>) -> Rulebase {
    let path = common::root().join("tests/fixtures/firewall").join(file);
    let text = std::fs::read_to_string(path).unwrap();
    threatflow::policy_import::rulebase_of_export(&text, device_group, file).unwrap()
}

fn endpoint(name: &str) -> Endpoint {
    reference_endpoints()
        .into_iter()
        .find(|endpoint| match endpoint {
            Endpoint::Pod { name: pod, .. } => pod == name,
            Endpoint::External { ip } => ip.to_string() == name,
        })
        .unwrap()
}

/// The reference rulebase, read from either manager: every flow of the grid decided alike,
/// only the rule with users refused (an allow), and the architecture's intent spot-checked.
fn reference_architecture_holds(rulebase: &Rulebase) {
    let settings = reference_settings();
    assert!(rulebase.rules.len() >= 25, "{} rules", rulebase.rules.len());
    let translation = translate(rulebase, &settings);
    let refused: Vec<(&str, Verdict)> = translation
        .skipped
        .iter()
        .map(|skipped| (skipped.name.as_str(), skipped.verdict))
        .collect();
    assert_eq!(refused, [("dba-console", Verdict::Allow)]);
    assert_eq!(translation.disabled, 2);
    let flows = check_over(
        rulebase,
        &settings,
        &reference_endpoints(),
        &reference_traffic(),
    )
    .unwrap();
    assert!(flows > 2500, "{flows} flows");
    let default = tier_default(&translation);
    let calico = |source: &str, destination: &str, traffic: Traffic| {
        verdicts::calico(
            &translation.objects,
            default,
            &endpoint(source),
            &endpoint(destination),
            traffic,
        )
    };
    let https = Traffic::tcp(40000, 443);
    let api = Traffic::tcp(40000, 8050);
    let postgres = Traffic::tcp(40000, 5432);
    for (source, destination, traffic, verdict, why) in [
        ("198.51.100.7", "web-1", https, Verdict::Allow, "public web"),
        (
            "198.51.100.66",
            "web-1",
            https,
            Verdict::Deny,
            "a blocked source",
        ),
        (
            "web-1",
            "postgres",
            postgres,
            Verdict::Deny,
            "a deny shadows the allow after it",
        ),
        (
            "web-1",
            "bff",
            api,
            Verdict::Allow,
            "one of several sources",
        ),
        ("proxy", "api", api, Verdict::Allow, "the other source"),
        (
            "worker",
            "audit-db",
            postgres,
            Verdict::Deny,
            "deny before allow",
        ),
        (
            "worker",
            "postgres",
            postgres,
            Verdict::Allow,
            "a nested group",
        ),
        (
            "web-1",
            "worker",
            https,
            Verdict::Deny,
            "a negated destination",
        ),
        ("203.0.113.15", "api", api, Verdict::Allow, "a partner"),
        (
            "198.51.100.7",
            "api",
            api,
            Verdict::Deny,
            "a negated source",
        ),
        (
            "192.0.2.5",
            "postgres",
            postgres,
            Verdict::Deny,
            "the refused allow stays closed",
        ),
        (
            "prometheus",
            "postgres",
            postgres,
            Verdict::Deny,
            "a pod in no zone matches no zone's rule",
        ),
    ] {
        assert_eq!(
            calico(source, destination, traffic),
            verdict,
            "{source} -> {destination}: {why}"
        );
    }
}

#[test]
fn the_reference_architecture_from_fortimanager() {
    let rulebase = reference("reference-fortimanager.json", None);
    reference_architecture_holds(&rulebase);
}

#[test]
fn the_reference_architecture_from_panorama() {
    let rulebase = reference("reference-panorama.xml", Some("k8s-zones"));
    assert_eq!(
        rulebase.rules[0].name, "block-bad-sources",
        "shared pre-rules first"
    );
    assert_eq!(
        rulebase.rules.last().unwrap().name,
        "dns-out",
        "post-rules last"
    );
    reference_architecture_holds(&rulebase);
}

/// `threatflow firewall import` prints the tier, byte for byte the committed YAML (which a
/// reviewer reads as a diff when the rules change), and reports the refused rule.
#[test]
fn the_import_command_prints_the_committed_yaml() {
    for (file, device_group, golden) in [
        (
            "reference-fortimanager.json",
            None,
            "reference-fortimanager.yaml",
        ),
        (
            "reference-panorama.xml",
            Some("k8s-zones"),
            "reference-panorama.yaml",
        ),
    ] {
        let fixtures = common::root().join("tests/fixtures/firewall");
        let mut command = std::process::Command::new(common::binary());
        command
            .args([
                "firewall",
                "import",
                "--tier",
                "zones",
                "--tier-order",
                "50",
                "--domain-rules",
            ])
            .arg("--from")
            .arg(fixtures.join(file))
            .args([
                "--external-zone",
                "wan=198.51.100.0/24,203.0.113.0/24",
                "--external-zone",
                "corp=192.0.2.0/24",
            ]);
        if let Some(device_group) = device_group {
            command.args(["--device-group", device_group]);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("`dba-console`"), "{stderr}");
        let yaml = String::from_utf8(output.stdout).unwrap();
        let golden = fixtures.join(golden);
        if std::env::var_os("THREATFLOW_UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &yaml).unwrap();
        }
        assert_eq!(
            yaml,
            std::fs::read_to_string(&golden).unwrap(),
            "{file}: the output changed; if that is intended, run with THREATFLOW_UPDATE_GOLDEN=1 and review the diff"
        );
    }
}

/// A zone pods are labelled with that no rule names: on PAN-OS its intrazone default (allow)
/// holds once the zone is configured; without it, such traffic meets the interzone default.
#[test]
fn a_configured_zone_no_rule_names_keeps_the_intrazone_default() {
    let mut rulebase = base();
    rulebase.defaults = Defaults::PAN_OS;
    rulebase.zones.clear();
    rulebase.rules = vec![Rule {
        from_zones: vec!["dmz".into()],
        to_zones: vec!["app".into()],
        ..Rule::new("web", Verdict::Allow)
    }];
    let one = pod("batch-1", "10.1.5.1", &[], &[(ZONE, "batch")]);
    let two = pod("batch-2", "10.1.5.2", &[], &[(ZONE, "batch")]);
    let mut settings = settings();
    let verdict = |settings: &Settings| {
        let translation = translate(&rulebase, settings);
        verdicts::calico(
            &translation.objects,
            tier_default(&translation),
            &one,
            &two,
            Traffic::tcp(40000, 443),
        )
    };
    assert_eq!(
        verdict(&settings),
        Verdict::Deny,
        "an unknown zone: interzone default"
    );
    settings.zones = BTreeSet::from(["batch".to_owned()]);
    assert_eq!(verdict(&settings), Verdict::Allow);
    assert_eq!(
        verdicts::firewall(
            &rulebase,
            &conventions(&settings),
            &one,
            &two,
            Traffic::tcp(40000, 443)
        ),
        Verdict::Allow,
        "as on the firewall"
    );
}
