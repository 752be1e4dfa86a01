//! Zone-based policy import: a FortiManager package of 5,000 rules over 2,000 address objects
//! (single addresses, subnets, ranges and FQDNs; 300 static groups, some nested) and 250
//! services and service groups, across six cluster zones and two external ones, with denies,
//! negations and disabled rules mixed in.
//!
//! `policy_import/read_export`: the JSON-RPC export into a rulebase (the FortiManager reader);
//! `policy_import/translate`: the rulebase into the tier's Calico objects;
//! `policy_import/render_yaml`: those objects as the YAML `threatflow firewall import`
//! prints. One thread.
//!
//! Run with `cargo bench --bench policy_import`.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};
use threatflow::policy_import::translate::{translate, Settings};

const RULES: usize = 5_000;
const ADDRESSES: usize = 2_000;
const GROUPS: usize = 300;
const SERVICES: usize = 200;
const ZONES: [&str; 8] = ["dmz", "web", "app", "data", "batch", "mgmt", "wan", "corp"];

fn export() -> Value {
    let addresses: Vec<Value> = (0..ADDRESSES)
        .map(|i| {
            let name = format!("addr-{i}");
            match i % 10 {
                0..=5 => json!({"name": name, "type": "ipmask",
                    "subnet": [format!("10.{}.{}.{}", i / 250, i % 250, 1), "255.255.255.255"]}),
                6 | 7 => json!({"name": name, "type": "ipmask",
                    "subnet": [format!("172.{}.{}.0", 16 + i % 16, i % 250), "255.255.255.0"]}),
                8 => json!({"name": name, "type": "iprange",
                    "start-ip": format!("192.168.{}.10", i % 250), "end-ip": format!("192.168.{}.77", i % 250)}),
                _ => json!({"name": name, "type": "fqdn", "fqdn": format!("host-{i}.example.com")}),
            }
        })
        .collect();
    let groups: Vec<Value> = (0..GROUPS)
        .map(|g| {
            let mut members: Vec<String> = (0..4)
                .map(|k| format!("addr-{}", (g * 7 + k * 13) % ADDRESSES))
                .filter(|name| !name.ends_with('9'))
                .collect();
            if g % 10 == 0 && g > 0 {
                members.push(format!("grp-{}", g - 1));
            }
            if g % 3 == 0 {
                members.clear();
            }
            json!({"name": format!("grp-{g}"), "member": members})
        })
        .collect();
    let services: Vec<Value> = (0..SERVICES)
        .map(|s| {
            let low = 1000 + s * 10;
            json!({"name": format!("svc-{s}"), "protocol": "TCP/UDP/SCTP",
                "tcp-portrange": [format!("{low}-{}", low + 5), format!("{}", 20000 + s)],
                "udp-portrange": if s % 4 == 0 { json!([format!("{}", 30000 + s)]) } else { json!([]) }})
        })
        .collect();
    let service_groups: Vec<Value> = (0..50)
        .map(|g| json!({"name": format!("svcgrp-{g}"), "member": [format!("svc-{}", g * 2), format!("svc-{}", g * 2 + 1), "HTTPS"]}))
        .collect();
    let rules: Vec<Value> = (0..RULES)
        .map(|r| {
            let zone = |k: usize| ZONES[(r * 3 + k * 5) % ZONES.len()];
            let side = |k: usize| -> Vec<String> {
                match (r + k) % 5 {
                    0 => vec!["all".into()],
                    1 | 2 => vec![format!("grp-{}", (r * 7 + k) % GROUPS)],
                    3 => vec![
                        format!("grp-{}", (r + k) % GROUPS),
                        format!("addr-{}", (r * 11 + k) % ADDRESSES),
                    ],
                    _ => vec![format!("addr-{}", (r * 13 + k) % ADDRESSES)],
                }
            };
            let services = match r % 4 {
                0 => vec!["ALL".to_owned()],
                1 => vec![format!("svcgrp-{}", r % 50)],
                _ => vec![format!("svc-{}", r % SERVICES), "HTTP".to_owned()],
            };
            json!({"policyid": r + 1, "name": format!("rule-{r}"),
                "srcintf": [zone(0)], "dstintf": [zone(1)],
                "srcaddr": side(0), "dstaddr": side(1), "service": services,
                "action": if r % 10 == 0 { "deny" } else { "accept" },
                "status": if r % 20 == 7 { "disable" } else { "enable" },
                "dstaddr-negate": if r % 50 == 3 { "enable" } else { "disable" },
                "schedule": ["always"]})
        })
        .collect();
    let table = |url: &str, data: Vec<Value>| json!({"url": url, "status": {"code": 0, "message": "OK"}, "data": data});
    json!({"id": 1, "result": [
        table("/pm/config/adom/root/pkg/bench/firewall/policy", rules),
        table("/pm/config/adom/root/obj/firewall/address", addresses),
        table("/pm/config/adom/root/obj/firewall/addrgrp", groups),
        table("/pm/config/adom/root/obj/firewall/service/custom", services),
        table("/pm/config/adom/root/obj/firewall/service/group", service_groups),
        table("/pm/config/adom/root/obj/dynamic/interface", ZONES.iter().map(|zone| json!({"name": zone})).collect()),
    ]})
}

fn settings() -> Settings {
    let mut settings = Settings::new("zones");
    settings.domain_rules = true;
    settings.external_zones = BTreeMap::from([
        (
            "wan".to_owned(),
            vec!["0.0.0.0/1".parse().unwrap(), "128.0.0.0/1".parse().unwrap()],
        ),
        ("corp".to_owned(), vec!["172.16.0.0/12".parse().unwrap()]),
    ]);
    settings
}

fn bench(c: &mut Criterion) {
    let text = export().to_string();
    let rulebase = threatflow::policy_import::rulebase_of_export(&text, None, "bench").unwrap();
    let settings = settings();
    let translation = translate(&rulebase, &settings);
    eprintln!(
        "{} rules ({} enabled), {} addresses, {} groups: {} objects, {} rules refused",
        rulebase.rules.len(),
        rulebase.enabled_rules(),
        rulebase.addresses.len(),
        rulebase.groups.len(),
        translation.objects.len(),
        translation.skipped.len()
    );
    let mut group = c.benchmark_group("policy_import");
    group.sample_size(10);
    group.bench_function("read_export", |b| {
        b.iter(|| threatflow::policy_import::rulebase_of_export(&text, None, "bench").unwrap())
    });
    group.bench_function("translate", |b| b.iter(|| translate(&rulebase, &settings)));
    group.bench_function("render_yaml", |b| {
        b.iter(|| {
            translation
                .objects
                .iter()
                .map(|object| object.to_yaml().len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
