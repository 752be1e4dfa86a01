//! The FortiGuard Internet Service Database (ISDB) as the FortiGate double serves it
//! (`fortiguard-access.md` §1 and §5.3). It owns the catalogue and every entry's ranges, and
//! answers four endpoints; authentication, faults and the request log stay with the double.
//!
//! - `GET /api/v2/cmdb/firewall/internet-service-name` (every version): `name`, `type`
//!   (`default`), `internet-service-id`, `country-id`, `region-id`, `city-id`;
//! - `GET /api/v2/cmdb/firewall/internet-service` (every version): `id`, `name`, `icon-id`,
//!   `direction`, `database`, `ip-range-number`, `extra-ip-range-number`, `ip-number`,
//!   `singularity`, `obsolete`; from 7.2 also `ip6-range-number` and `extra-ip6-range-number`.
//!   Both cmdb tables take `filter`, `format`, `start` and `count` like the double's other
//!   tables, and an mkey (the name, or the id);
//! - `GET /api/v2/monitor/firewall/internet-service-basic` from 7.2 (a 404 before, as the
//!   reference infers): `id`, `name`, `database`, `direction`, `ip-number`, `ip-range-number`;
//! - `GET /api/v2/monitor/firewall/internet-service-details?id=N`: `summary_only=true` gives
//!   `{id, total}`; otherwise a page `{id, entry: [...]}` from `start` (negative: 0) of `count`
//!   rows (clamped to [20, 1000], default 1000). Each distinct range appears once per
//!   protocol/port row, so rows outnumber ranges.
//!
//! Version behaviour chosen here: IPv6 ranges are served by `internet-service-details` only
//! from 7.4, the release that documents `ipv6_only`. Before 7.4 the parameter is ignored and a
//! service's IPv6 ranges are left out of both its rows and its `total`. From 7.4 a service's
//! rows mix both families unless `ipv6_only=true`, which keeps only the IPv6 rows. The cmdb
//! table counts IPv6 ranges from 7.2 (when `ip6-range-number` appears); `ip-number` and
//! `ip-range-number` always count IPv4 only. `internet-service-basic` ignores `ipv6_only`.
//!
//! Monitor replies carry the envelope of real captures (`http_method`, `results`, `vdom`,
//! `path`, `name`, `status`, `serial`, `version`, `build`; `http_status` and `error` only on
//! errors); cmdb replies carry the double's cmdb envelope. `?vdom=*` gives one envelope per
//! VDOM, an unknown VDOM a 403.
//!
//! Assumed, not documented by Fortinet: the ID of `Malicious-Malicious.Server`
//! ([`MALICIOUS_SERVER_ID`]), every entry's `direction` and reputation, the row fields beyond
//! `proto` and `ip_range` (`port` as one number; `country`, `region` and `city` 0; `botnet`
//! non-zero only for `Botnet-C&C.Server`), the error code of an unknown or missing `id`
//! (`-3`, and `-651` with a 400), and the bare 404 for `internet-service-basic` before 7.2.
//! Not served: the geography parameters (`country_id`, `region_id`, `city_id` are ignored),
//! `internet-service-match` and `internet-service-reputation`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Map, Value};

use super::{
    envelope, listed, not_found, version_at_least, Call, FortiGate, Reply, Request, State,
};

/// `Malicious-Malicious.Server`. No public dump shows its ID; this one follows the scheme the
/// reference infers (`owner × 65536 + offset`, Tor being owner 43 and Botnet owner 47): owner
/// 44, offset 190.
pub const MALICIOUS_SERVER_ID: u64 = 44 * 65536 + 190;

/// The first address [`generated_isdb_range`] hands out (100.64.0.0, shared address space,
/// so generated ranges never collide with the catalogue's documentation addresses).
const GENERATED_BASE: u32 = 0x6440_0000;

/// The protocol/port rows of each range, in order; rows beyond these are TCP on 1024 and up.
const PROTO_PORTS: [(u8, u16); 6] = [(6, 443), (17, 53), (6, 80), (6, 22), (17, 123), (6, 25)];

/// The rows a page holds at most, and at least (FortiOS rounds `count` into this).
const COUNT_MIN: i64 = 20;
const COUNT_MAX: i64 = 1000;

/// The catalogue a fresh double holds: ID, name, direction, reputation, rows per range,
/// ranges. Names and IDs are the real ones (`fortiguard-access.md` §1.1) except
/// [`MALICIOUS_SERVER_ID`]; the ranges are documentation addresses, except the two
/// non-threat entries, which hold a few of their owners' real blocks.
type CatalogueEntry = (
    u64,
    &'static str,
    &'static str,
    u8,
    usize,
    &'static [(&'static str, &'static str)],
);
const CATALOGUE: [CatalogueEntry; 12] = [
    (
        65536,
        "Google-Other",
        "both",
        5,
        3,
        &[
            ("8.8.4.0", "8.8.4.255"),
            ("8.8.8.0", "8.8.8.255"),
            ("2001:4860::", "2001:4860:ffff:ffff:ffff:ffff:ffff:ffff"),
        ],
    ),
    (
        327786,
        "Microsoft-Azure",
        "both",
        5,
        2,
        &[
            ("13.64.0.0", "13.107.255.255"),
            ("20.33.0.0", "20.128.255.255"),
        ],
    ),
    (
        2818238,
        "Tor-Relay.Node",
        "both",
        2,
        2,
        &[
            ("192.0.2.10", "192.0.2.10"),
            ("192.0.2.11", "192.0.2.11"),
            ("2001:db8:7::10", "2001:db8:7::10"),
        ],
    ),
    (
        2818243,
        "Tor-Exit.Node",
        "src",
        2,
        2,
        &[
            ("192.0.2.20", "192.0.2.20"),
            ("198.51.100.20", "198.51.100.23"),
            ("2001:db8:7::20", "2001:db8:7::20"),
        ],
    ),
    (
        MALICIOUS_SERVER_ID,
        "Malicious-Malicious.Server",
        "both",
        1,
        2,
        &[
            ("192.0.2.128", "192.0.2.191"),
            ("198.51.100.200", "198.51.100.200"),
            ("203.0.113.100", "203.0.113.110"),
            ("2001:db8:bad:1::", "2001:db8:bad:1::ff"),
        ],
    ),
    (
        3014850,
        "Proxy-Proxy.Server",
        "both",
        2,
        3,
        &[("198.51.100.64", "198.51.100.127")],
    ),
    (
        3080383,
        "Botnet-C&C.Server",
        "dst",
        1,
        2,
        &[
            ("192.0.2.1", "192.0.2.1"),
            ("198.51.100.0", "198.51.100.15"),
            ("203.0.113.7", "203.0.113.7"),
            ("2001:db8:bad::1", "2001:db8:bad::1"),
        ],
    ),
    (
        3145920,
        "Spam-Spamming.Server",
        "src",
        1,
        1,
        &[("203.0.113.16", "203.0.113.31")],
    ),
    (
        3211457,
        "Phishing-Phishing.Server",
        "dst",
        1,
        2,
        &[
            ("203.0.113.64", "203.0.113.64"),
            ("203.0.113.65", "203.0.113.65"),
        ],
    ),
    (
        9961638,
        "Shodan-Scanner",
        "src",
        3,
        1,
        &[("198.51.100.160", "198.51.100.175")],
    ),
    (
        10027174,
        "Censys-Scanner",
        "src",
        3,
        1,
        &[
            ("203.0.113.160", "203.0.113.191"),
            ("2001:db8:ce::", "2001:db8:ce::ff"),
        ],
    ),
    (
        10879142,
        "Stretchoid-Scanner",
        "src",
        3,
        1,
        &[("192.0.2.200", "192.0.2.210")],
    ),
];

/// The `botnet` value on `Botnet-C&C.Server` rows (other entries carry 0).
const BOTNET_ID: u32 = 10;

/// The `index`th generated range (IPv4, from 100.64.0.0 in steps of four addresses; every
/// fourth one a single address, the others two to four addresses wide).
pub fn generated_isdb_range(index: u32) -> (Ipv4Addr, Ipv4Addr) {
    assert!(
        index < 1 << 20,
        "generated ranges stay inside 100.64.0.0/10"
    );
    let start = GENERATED_BASE + index * 4;
    (Ipv4Addr::from(start), Ipv4Addr::from(start + index % 4))
}

type Range = (IpAddr, IpAddr);

/// One entry of the database.
struct Service {
    name: String,
    direction: &'static str,
    reputation: u8,
    /// Ranges `0..generated` come from [`generated_isdb_range`], computed per row asked for;
    /// `ranges` follow them.
    generated: u32,
    ranges: Vec<Range>,
    rows_per_range: usize,
    /// Pages (not summaries) served so far.
    page_reads: usize,
    /// Ranges appended once `page_reads` reaches the count (an ISDB update mid-walk).
    growth: Option<(usize, Vec<Range>)>,
}

/// Which families a reply covers.
#[derive(Clone, Copy, PartialEq)]
enum Families {
    V4,
    Both,
    V6,
}

/// A service's rows as one reply sees them, computed on demand.
struct Rows<'a> {
    service: &'a Service,
    id: u64,
    generated: u32,
    listed: Vec<Range>,
}

impl Rows<'_> {
    fn total(&self) -> usize {
        (self.generated as usize + self.listed.len()) * self.service.rows_per_range
    }

    fn row(&self, index: usize) -> Value {
        let per_range = self.service.rows_per_range;
        let (range, within) = (index / per_range, index % per_range);
        let (start, end) = match u32::try_from(range) {
            Ok(range) if range < self.generated => {
                let (start, end) = generated_isdb_range(range);
                (IpAddr::V4(start), IpAddr::V4(end))
            }
            _ => self.listed[range - self.generated as usize],
        };
        let (proto, port) = PROTO_PORTS
            .get(within)
            .copied()
            .unwrap_or((6, 1024 + within as u16));
        json!({
            "proto": proto,
            "port": port,
            "ip_range": {"start_ip": start.to_string(), "end_ip": end.to_string()},
            "country": 0,
            "region": 0,
            "city": 0,
            "reputation": self.service.reputation,
            "botnet": if self.id == 3080383 { BOTNET_ID } else { 0 },
        })
    }
}

impl Service {
    fn rows(&self, id: u64, families: Families) -> Rows<'_> {
        let keep = |range: &&Range| match families {
            Families::V4 => range.0.is_ipv4(),
            Families::Both => true,
            Families::V6 => range.0.is_ipv6(),
        };
        Rows {
            service: self,
            id,
            generated: if families == Families::V6 {
                0
            } else {
                self.generated
            },
            listed: self.ranges.iter().filter(keep).copied().collect(),
        }
    }

    /// IPv4 ranges and addresses, and IPv6 ranges.
    fn counts(&self) -> (u64, u64, u64) {
        let mut v4_ranges = u64::from(self.generated);
        let mut v4_addresses: u64 = (0..self.generated)
            .map(|index| u64::from(index % 4) + 1)
            .sum();
        let mut v6_ranges = 0;
        for (start, end) in &self.ranges {
            match (start, end) {
                (IpAddr::V4(start), IpAddr::V4(end)) => {
                    v4_ranges += 1;
                    v4_addresses += u64::from(u32::from(*end) - u32::from(*start)) + 1;
                }
                _ => v6_ranges += 1,
            }
        }
        (v4_ranges, v4_addresses, v6_ranges)
    }
}

/// The database: ID -> entry.
pub(super) struct Isdb {
    services: BTreeMap<u64, Service>,
}

impl Default for Isdb {
    fn default() -> Self {
        let services = CATALOGUE
            .iter()
            .map(
                |&(id, name, direction, reputation, rows_per_range, ranges)| {
                    let service = Service {
                        name: name.to_owned(),
                        direction,
                        reputation,
                        generated: 0,
                        ranges: ranges.iter().map(|range| parse_range(*range)).collect(),
                        rows_per_range,
                        page_reads: 0,
                        growth: None,
                    };
                    (id, service)
                },
            )
            .collect();
        Isdb { services }
    }
}

fn parse_range((start, end): (&str, &str)) -> Range {
    let parse = |ip: &str| {
        ip.parse::<IpAddr>()
            .unwrap_or_else(|_| panic!("not an IP address: {ip}"))
    };
    let (start, end) = (parse(start), parse(end));
    assert_eq!(
        start.is_ipv4(),
        end.is_ipv4(),
        "a range within one family: {start}-{end}"
    );
    assert!(start <= end, "a range from low to high: {start}-{end}");
    (start, end)
}

/// The ISDB part of the double's test API.
impl FortiGate {
    /// Replaces a service's ranges (each served as `rows_per_range` protocol/port rows); an ID
    /// not in the catalogue becomes a new entry named `Test-Service.<id>`. No ranges make an
    /// empty service, as on a unit with a mini ISDB.
    pub fn set_isdb_service(&self, id: u64, ranges: Vec<(&str, &str)>, rows_per_range: usize) {
        assert!(rows_per_range > 0, "a range has at least one row");
        let mut state = self.state.lock();
        let service = service_entry(&mut state.isdb, id);
        service.generated = 0;
        service.ranges = ranges.into_iter().map(parse_range).collect();
        service.rows_per_range = rows_per_range;
    }

    /// Makes a service of `ranges` generated IPv4 ranges ([`generated_isdb_range`]), each
    /// served as `rows_per_range` rows; rows are computed when a page asks for them, so a
    /// service of millions of rows costs nothing until it is read.
    pub fn generate_isdb_service(&self, id: u64, ranges: u32, rows_per_range: usize) {
        assert!(rows_per_range > 0, "a range has at least one row");
        let mut state = self.state.lock();
        let service = service_entry(&mut state.isdb, id);
        service.generated = ranges;
        service.ranges.clear();
        service.rows_per_range = rows_per_range;
    }

    /// Appends `extra_ranges` to a service once it has served `page_reads` pages (counting
    /// from now), as an ISDB update during a client's walk: `total` grows, and rows appear
    /// past the old end.
    pub fn grow_isdb_after(&self, id: u64, page_reads: usize, extra_ranges: Vec<(&str, &str)>) {
        let mut state = self.state.lock();
        let service = state
            .isdb
            .services
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no ISDB service {id}"));
        let extra = extra_ranges.into_iter().map(parse_range).collect();
        service.growth = Some((service.page_reads + page_reads, extra));
    }

    /// Empties every service, as `set internet-service-database mini` does on a small unit:
    /// names still resolve, details have no rows.
    pub fn use_mini_isdb(&self) {
        let mut state = self.state.lock();
        for service in state.isdb.services.values_mut() {
            service.generated = 0;
            service.ranges.clear();
            service.growth = None;
        }
    }

    /// Removes a service from the database (its ID becomes unknown).
    pub fn remove_isdb_service(&self, id: u64) {
        self.state.lock().isdb.services.remove(&id);
    }

    /// A service's distinct ranges now, generated ones first, both families.
    pub fn isdb_ranges(&self, id: u64) -> Vec<(IpAddr, IpAddr)> {
        let state = self.state.lock();
        let service = &state.isdb.services[&id];
        (0..service.generated)
            .map(|index| {
                let (start, end) = generated_isdb_range(index);
                (IpAddr::V4(start), IpAddr::V4(end))
            })
            .chain(service.ranges.iter().copied())
            .collect()
    }

    /// Pages (not summaries) of a service's details served so far.
    pub fn isdb_page_reads(&self, id: u64) -> usize {
        self.state
            .lock()
            .isdb
            .services
            .get(&id)
            .map_or(0, |service| service.page_reads)
    }
}

fn service_entry(isdb: &mut Isdb, id: u64) -> &mut Service {
    isdb.services.entry(id).or_insert_with(|| Service {
        name: format!("Test-Service.{id}"),
        direction: "both",
        reputation: 1,
        generated: 0,
        ranges: Vec::new(),
        rows_per_range: 1,
        page_reads: 0,
        growth: None,
    })
}

/// Whether `table` under `/api/v2/cmdb/firewall/` is an ISDB table.
pub(super) fn is_cmdb_table(table: &str) -> bool {
    matches!(table, "internet-service-name" | "internet-service")
}

/// Whether `name` under `/api/v2/monitor/firewall/` is served here.
pub(super) fn is_monitor(name: &str) -> bool {
    matches!(name, "internet-service-basic" | "internet-service-details")
}

/// Answers a GET of an ISDB cmdb table (all of it, or one object by mkey).
pub(super) fn cmdb(state: &mut State, request: &Request, call: &Call) -> Reply {
    let version = state.knobs.version.clone();
    let rows: Vec<Value> = match call.table.as_str() {
        "internet-service-name" => state
            .isdb
            .services
            .iter()
            .map(|(id, service)| {
                json!({
                    "name": service.name,
                    "q_origin_key": service.name,
                    "type": "default",
                    "internet-service-id": id,
                    "country-id": 0,
                    "region-id": 0,
                    "city-id": 0,
                })
            })
            .collect(),
        _ => state
            .isdb
            .services
            .iter()
            .map(|(id, service)| {
                let (v4_ranges, v4_addresses, v6_ranges) = service.counts();
                let mut row = json!({
                    "id": id,
                    "q_origin_key": id,
                    "name": service.name,
                    "icon-id": id / 65536,
                    "direction": service.direction,
                    "database": "isdb",
                    "ip-range-number": v4_ranges,
                    "extra-ip-range-number": 0,
                    "ip-number": v4_addresses,
                    "singularity": 0,
                    "obsolete": 0,
                });
                if version_at_least(&version, (7, 2, 0)) {
                    row["ip6-range-number"] = json!(v6_ranges);
                    row["extra-ip6-range-number"] = json!(0);
                }
                row
            })
            .collect(),
    };
    let results = match &call.mkey {
        Some(mkey) => {
            let found: Vec<Value> = rows
                .into_iter()
                .filter(|row| match &row["q_origin_key"] {
                    Value::String(key) => key == mkey,
                    other => other.as_u64().is_some() && other.as_u64() == mkey.parse().ok(),
                })
                .collect();
            if found.is_empty() {
                return Reply::json(404, &Value::Object(envelope(state, call, 404)));
            }
            found
        }
        None => listed(request, rows),
    };
    let mut reply = envelope(state, call, 200);
    reply.insert("results".into(), Value::Array(results));
    Reply::json(200, &Value::Object(reply))
}

/// Answers a GET of an ISDB monitor endpoint for `vdom` (already checked).
pub(super) fn monitor(state: &mut State, request: &Request, name: &str) -> Reply {
    let vdom = request.query("vdom").unwrap_or_else(|| "root".into());
    if name == "internet-service-basic" && !version_at_least(&state.knobs.version, (7, 2, 0)) {
        return not_found();
    }
    let vdoms = if vdom == "*" {
        state.knobs.vdoms.clone()
    } else if state.knobs.vdoms.contains(&vdom) {
        vec![vdom]
    } else {
        return monitor_error(state, &vdom, name, 403, -37);
    };
    let results = match name {
        "internet-service-basic" => basic(state),
        _ => match details(state, request) {
            Ok(results) => results,
            Err((status, code)) => return monitor_error(state, &vdoms[0], name, status, code),
        },
    };
    let mut replies: Vec<Value> = vdoms
        .iter()
        .map(|vdom| {
            let mut reply = monitor_envelope(state, vdom, name, "success");
            reply.insert("results".into(), results.clone());
            Value::Object(reply)
        })
        .collect();
    let body = if request.query("vdom").as_deref() == Some("*") {
        Value::Array(replies)
    } else {
        replies.remove(0)
    };
    Reply::json(200, &body)
}

fn basic(state: &State) -> Value {
    state
        .isdb
        .services
        .iter()
        .map(|(id, service)| {
            let (v4_ranges, v4_addresses, _) = service.counts();
            json!({
                "id": id,
                "name": service.name,
                "database": "isdb",
                "direction": service.direction,
                "ip-number": v4_addresses,
                "ip-range-number": v4_ranges,
            })
        })
        .collect()
}

/// `results` of `internet-service-details`, or the status and error code of the refusal.
fn details(state: &mut State, request: &Request) -> Result<Value, (u16, i64)> {
    let unknown_status = state.knobs.isdb_unknown_id_status;
    let Some(id) = request.query("id").and_then(|id| id.parse::<u64>().ok()) else {
        return Err((400, -651));
    };
    let truthy = |name: &str| {
        request
            .query(name)
            .is_some_and(|value| value == "true" || value == "1")
    };
    let families = if !version_at_least(&state.knobs.version, (7, 4, 0)) {
        Families::V4
    } else if truthy("ipv6_only") {
        Families::V6
    } else {
        Families::Both
    };
    let Some(service) = state.isdb.services.get_mut(&id) else {
        return Err((unknown_status, -3));
    };
    if truthy("summary_only") {
        let total = service.rows(id, families).total();
        return Ok(json!({"id": id, "total": total}));
    }
    let start = request
        .query("start")
        .and_then(|start| start.parse::<i64>().ok())
        .unwrap_or(0)
        .max(0) as usize;
    let count = request
        .query("count")
        .and_then(|count| count.parse::<i64>().ok())
        .map_or(COUNT_MAX, |count| count.clamp(COUNT_MIN, COUNT_MAX)) as usize;
    let rows = service.rows(id, families);
    let end = rows.total().min(start.saturating_add(count));
    let entry: Vec<Value> = (start..end).map(|index| rows.row(index)).collect();
    service.page_reads += 1;
    if let Some((after, _)) = &service.growth {
        if service.page_reads >= *after {
            let (_, extra) = service.growth.take().unwrap();
            service.ranges.extend(extra);
        }
    }
    Ok(json!({"id": id, "entry": entry}))
}

/// The envelope of a monitor reply, as captured from FortiOS (no `http_status` on success).
fn monitor_envelope(state: &State, vdom: &str, name: &str, status: &str) -> Map<String, Value> {
    let mut reply = Map::new();
    reply.insert("http_method".into(), json!("GET"));
    reply.insert("vdom".into(), json!(vdom));
    reply.insert("path".into(), json!("firewall"));
    reply.insert("name".into(), json!(name));
    reply.insert("status".into(), json!(status));
    reply.insert("serial".into(), json!("FGVM02TM00000000"));
    reply.insert("version".into(), json!(state.knobs.version));
    reply.insert("build".into(), json!(2829));
    reply
}

fn monitor_error(state: &State, vdom: &str, name: &str, status: u16, code: i64) -> Reply {
    let mut reply = monitor_envelope(state, vdom, name, "error");
    reply.insert("http_status".into(), json!(status));
    reply.insert("error".into(), json!(code));
    Reply::json(status, &Value::Object(reply))
}

/// The refusal of a key whose profile lacks firewall read, for a monitor endpoint.
pub(super) fn monitor_forbidden(state: &State, request: &Request, name: &str) -> Reply {
    let vdom = request.query("vdom").unwrap_or_else(|| "root".into());
    monitor_error(state, &vdom, name, 403, -37)
}
