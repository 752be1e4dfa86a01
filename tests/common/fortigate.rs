//! A FortiGate test double speaking FortiOS REST API v2 on the loopback HTTP harness, with the
//! behaviour a client must cope with (`fortinet-apis.md` §5.1):
//!
//! - auth: `Authorization: Bearer <key>`; `?access_token=` only with the URL-token knob (off,
//!   as on 7.4.5 and later: 401 with `www-authenticate: error="invalid_token"`); a key marked
//!   untrusted gets an HTML 403 page; after `lockout_after` failed authentications every
//!   request gets an HTML 429 until the lockout ends;
//! - the reply envelope (`http_method`, `status`, `http_status`, `vdom`, `path`, `name`,
//!   `mkey`, `revision`, `serial`, `version`, `build`; `old_revision` and `revision_changed` on
//!   writes; `error` and `cli_error` on errors), the HTTP status equal to `http_status`,
//!   `results` a list, `q_origin_key` on each result;
//! - `firewall/address`, `address6`, `addrgrp`, `addrgrp6` and `policy`: POST to the table
//!   (duplicate: 500 and `-5`, or 424 with the legacy knob; POST to `<table>/<mkey>`: 404),
//!   PUT to an object (404 when missing; scalars merged, `member` replaced), DELETE of an object
//!   (404 when missing; 500 and `-23` when a group or policy refers to it), and a DELETE of the
//!   table URL, which purges every unreferenced object and is recorded so tests can assert it
//!   never happens;
//! - validation: names longer than 79 (`-166`), comments longer than 255 (`-72`), groups
//!   with more than `max_group_members` members (`-4`), names shared between addresses and groups of a
//!   family (`-163`), bad `subnet` (`-8`) or `ip6` (`-254`), unknown group members (`-3`),
//!   empty groups before 7.2 (`-20`); `subnet` accepted as CIDR or `ip mask` and returned as
//!   `ip mask`, with `start-ip`/`end-ip` echoed;
//! - `vdom=` scoping (an unknown VDOM gets 403), `filter` (`==` case-insensitive, `!=`, `=@`,
//!   `!@`; commas OR, repeated parameters AND), `format`, `start`/`count`; percent-decoded
//!   mkeys, and 400 for a path with too many segments (a literal `/` in a name);
//! - a key whose admin profile lacks firewall read (`fortiguard-access.md` §1.5): a JSON 403
//!   envelope (`error` `-37`, assumed) for every firewall table and monitor endpoint;
//! - FortiGuard's Internet Service Database (`fortiguard-access.md` §1 and §5.3): the
//!   `internet-service-name` and `internet-service` tables, and the `internet-service-basic`
//!   and `internet-service-details` monitor endpoints, by version (see [`isdb`]);
//! - fault injection: the next requests can get an HTML 5xx, a 429 with `Retry-After`, a reset
//!   connection, or a delay.
//!
//! The request log is the harness's; [`FortiGate::requests_to`] picks one endpoint's requests.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use super::http::{decode, HttpServer, Reply, Request};

#[path = "fortigate/isdb.rs"]
mod isdb;
// Not every test binary that includes the double uses these.
#[allow(unused_imports)]
pub use isdb::{generated_isdb_range, MALICIOUS_SERVER_ID};

/// How the device behaves.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// `v7.4.5`, `v7.0.12`, ...: sets whether groups may be empty (7.2 and later) and the
    /// ISDB endpoints and fields served (see [`isdb`]); every envelope's `version`.
    pub version: String,
    /// Keys that authenticate.
    pub keys: Vec<String>,
    /// Keys whose admin's trusted hosts do not include us: an HTML 403.
    pub untrusted_keys: Vec<String>,
    /// `set rest-api-key-url-query enable` (off from 7.4.5 on).
    pub url_token: bool,
    /// Failed authentications before the source is locked out (429).
    pub lockout_after: u32,
    pub lockout: Duration,
    /// Older builds answer a duplicate with 424 instead of 500.
    pub legacy_duplicate: bool,
    pub vdoms: Vec<String>,
    /// The most members a group may have (FortiOS's per-model table size).
    pub max_group_members: usize,
    /// Keys whose admin profile has no firewall read access: a JSON 403 on firewall paths.
    pub keys_without_firewall_read: Vec<String>,
    /// The HTTP status of `internet-service-details` for an ID the database does not hold.
    pub isdb_unknown_id_status: u16,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            version: "v7.4.5".into(),
            keys: vec!["fgt-key".into()],
            untrusted_keys: Vec::new(),
            url_token: false,
            lockout_after: 5,
            lockout: Duration::from_secs(60),
            legacy_duplicate: false,
            vdoms: vec!["root".into()],
            max_group_members: 600,
            keys_without_firewall_read: Vec::new(),
            isdb_unknown_id_status: 404,
        }
    }
}

/// A misbehaviour for the next request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// An HTML error page with this status.
    Html(u16),
    /// The connection closes without an answer.
    Reset,
    /// The answer comes after this long.
    Delay(Duration),
    /// FortiOS throttling a burst of REST calls: an HTML 429 with `Retry-After` in seconds.
    Throttle { retry_after_secs: u64 },
}

const TABLES: [&str; 5] = ["address", "address6", "addrgrp", "addrgrp6", "policy"];

#[derive(Default)]
struct State {
    knobs: Knobs,
    /// `(vdom, table)` -> name -> object.
    tables: BTreeMap<(String, String), BTreeMap<String, Value>>,
    failed_auths: u32,
    locked_until: Option<Instant>,
    faults: VecDeque<Fault>,
    /// Table URLs a DELETE without mkey hit.
    purges: Vec<String>,
    revision: u64,
    isdb: isdb::Isdb,
}

/// A running FortiGate double.
#[derive(Clone)]
pub struct FortiGate {
    pub server: HttpServer,
    state: Arc<Mutex<State>>,
}

/// Whether a `v7.4.5`-style version is at least `major.minor.patch`.
pub fn version_at_least(version: &str, at_least: (u32, u32, u32)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next()) >= at_least
}

/// The reply to a request, after the fault queued for it, if any.
pub fn with_fault(fault: Option<Fault>, respond: impl FnOnce() -> Reply) -> Reply {
    match fault {
        Some(Fault::Html(status)) => html(status, "Service Unavailable"),
        Some(Fault::Reset) => Reply::Close,
        Some(Fault::Delay(delay)) => respond().delayed(delay),
        Some(Fault::Throttle { retry_after_secs }) => {
            html(429, "Too Many Requests").with_header("Retry-After", &retry_after_secs.to_string())
        }
        None => respond(),
    }
}

/// `a.b.c.d/n` or `a.b.c.d m.m.m.m` -> (`a.b.c.d`, `m.m.m.m`).
fn parse_subnet(text: &str) -> Option<(String, String)> {
    if let Some((ip, mask)) = text.split_once(' ') {
        let _: std::net::Ipv4Addr = ip.parse().ok()?;
        let mask: std::net::Ipv4Addr = mask.trim().parse().ok()?;
        ipnet::ipv4_mask_to_prefix(mask).ok()?;
        return Some((ip.to_owned(), mask.to_string()));
    }
    let net: ipnet::Ipv4Net = text.parse().ok()?;
    Some((net.addr().to_string(), net.netmask().to_string()))
}

impl FortiGate {
    /// Serves HTTPS under the test PKI in `dir`.
    pub async fn start(dir: &std::path::Path, knobs: Knobs) -> FortiGate {
        let state = Arc::new(Mutex::new(State {
            knobs,
            ..State::default()
        }));
        let handler_state = state.clone();
        let server =
            HttpServer::start_tls(dir, move |request| handle(&handler_state, request)).await;
        FortiGate { server, state }
    }

    pub fn url(&self) -> String {
        self.server.base.clone()
    }

    /// The double's answer to `request`, as if it came over HTTP (FortiManager's relay uses
    /// this: its tunnel to the device is not HTTP).
    pub fn answer(&self, request: &Request) -> Reply {
        handle(&self.state, request)
    }

    pub fn set_version(&self, version: &str) {
        self.state.lock().knobs.version = version.into();
    }

    pub fn set_url_token(&self, allowed: bool) {
        self.state.lock().knobs.url_token = allowed;
    }

    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().faults.extend(faults);
    }

    /// Takes firewall read away from the profile of the admin that owns `key`.
    pub fn deny_firewall_read(&self, key: &str) {
        self.state
            .lock()
            .knobs
            .keys_without_firewall_read
            .push(key.into());
    }

    /// The requests to one endpoint (`/api/v2/monitor/firewall/internet-service-details`),
    /// query strings ignored, in order.
    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.server
            .requests()
            .into_iter()
            .filter(|request| request.path() == path)
            .collect()
    }

    /// Adds an object as if an admin made it (no request is logged).
    pub fn seed(&self, table: &str, object: Value) {
        let mut state = self.state.lock();
        let name = object["name"].as_str().unwrap().to_owned();
        let object = normalized(table, object);
        state
            .tables
            .entry(("root".into(), table.into()))
            .or_default()
            .insert(name, object);
    }

    /// Changes an object by hand (drift).
    pub fn edit(&self, table: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let mut state = self.state.lock();
        let object = state
            .tables
            .get_mut(&("root".to_owned(), table.to_owned()))
            .and_then(|objects| objects.get_mut(name))
            .unwrap_or_else(|| panic!("no {table} {name}"));
        change(object);
        *object = normalized(table, object.clone());
    }

    /// Deletes an object by hand (drift), references or not.
    pub fn remove(&self, table: &str, name: &str) {
        let mut state = self.state.lock();
        if let Some(objects) = state.tables.get_mut(&("root".to_owned(), table.to_owned())) {
            objects.remove(name);
        }
    }

    pub fn object(&self, table: &str, name: &str) -> Option<Value> {
        self.object_in("root", table, name)
    }

    pub fn object_in(&self, vdom: &str, table: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .tables
            .get(&(vdom.to_owned(), table.to_owned()))
            .and_then(|objects| objects.get(name).cloned())
    }

    pub fn names(&self, table: &str) -> Vec<String> {
        self.state
            .lock()
            .tables
            .get(&("root".to_owned(), table.to_owned()))
            .map(|objects| objects.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A group's members, by name.
    pub fn members(&self, table: &str, name: &str) -> Vec<String> {
        self.object(table, name)
            .map(|group| {
                group["member"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|member| member["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Requests that change something (POST, PUT, DELETE).
    pub fn writes(&self) -> Vec<Request> {
        self.server
            .requests()
            .into_iter()
            .filter(|request| request.method != "GET")
            .collect()
    }

    /// Table URLs a DELETE without an object name hit.
    pub fn purges(&self) -> Vec<String> {
        self.state.lock().purges.clone()
    }
}

/// Stores `subnet` the way FortiOS returns it.
fn normalized(table: &str, mut object: Value) -> Value {
    if table == "address" {
        if let Some((ip, mask)) = object["subnet"].as_str().and_then(parse_subnet) {
            object["subnet"] = json!(format!("{ip} {mask}"));
            object["start-ip"] = json!(ip);
            object["end-ip"] = json!(mask);
        }
        if object.get("type").is_none() {
            object["type"] = json!("ipmask");
        }
    }
    if (table == "addrgrp" || table == "addrgrp6") && object.get("member").is_none() {
        object["member"] = json!([]);
    }
    object
}

struct Call<'a> {
    method: &'a str,
    vdom: String,
    table: String,
    mkey: Option<String>,
}

fn envelope(state: &State, call: &Call, status: u16) -> Map<String, Value> {
    let mut reply = Map::new();
    reply.insert("http_method".into(), json!(call.method));
    reply.insert(
        "status".into(),
        json!(if status == 200 { "success" } else { "error" }),
    );
    reply.insert("http_status".into(), json!(status));
    reply.insert("vdom".into(), json!(call.vdom));
    reply.insert("path".into(), json!("firewall"));
    reply.insert("name".into(), json!(call.table));
    if let Some(mkey) = &call.mkey {
        reply.insert("mkey".into(), json!(mkey));
    }
    reply.insert("revision".into(), json!(format!("{:032x}", state.revision)));
    reply.insert("serial".into(), json!("FGVM02TM00000000"));
    reply.insert("version".into(), json!(state.knobs.version));
    reply.insert("build".into(), json!(2829));
    reply
}

/// The reply to a path the device does not serve (at this version).
fn not_found() -> Reply {
    Reply::json(404, &json!({"status": "error", "http_status": 404}))
}

fn html(status: u16, title: &str) -> Reply {
    Reply::status(
        status,
        format!("<!DOCTYPE html><html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"),
    )
    .with_header("Content-Type", "text/html")
}

fn error(state: &State, call: &Call, status: u16, code: i64, cli: &str) -> Reply {
    let mut reply = envelope(state, call, status);
    reply.insert("error".into(), json!(code));
    reply.insert(
        "cli_error".into(),
        json!(format!("{cli}\nCommand fail. Return code {code}\n")),
    );
    if call.method != "GET" {
        reply.insert("revision_changed".into(), json!(false));
    }
    Reply::json(status, &Value::Object(reply))
}

fn success(state: &mut State, call: &Call, results: Option<Value>, changed: bool) -> Reply {
    let old = format!("{:032x}", state.revision);
    if changed {
        state.revision += 1;
    }
    let mut reply = envelope(state, call, 200);
    if call.method != "GET" {
        reply.insert("old_revision".into(), json!(old));
        reply.insert("revision_changed".into(), json!(changed));
    }
    if let Some(results) = results {
        reply.insert("results".into(), results);
    }
    Reply::json(200, &Value::Object(reply))
}

/// Whether `object` passes one `filter` parameter (comma-separated alternatives).
fn passes(object: &Value, filter: &str) -> bool {
    filter.split(',').any(|term| {
        for op in ["=@", "!@", "!=", "=="] {
            if let Some((field, value)) = term.split_once(op) {
                let found = match &object[field] {
                    Value::String(text) => text.to_lowercase(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                let value = value.to_lowercase();
                return match op {
                    "==" => found == value,
                    "!=" => found != value,
                    "=@" => found.contains(&value),
                    _ => !found.contains(&value),
                };
            }
        }
        false
    })
}

/// How many objects refer to `name` of `table` in `vdom`.
fn references(state: &State, vdom: &str, table: &str, name: &str) -> usize {
    let family_groups = match table {
        "address" | "addrgrp" => "addrgrp",
        "address6" | "addrgrp6" => "addrgrp6",
        _ => return 0,
    };
    let mention = |list: &Value| {
        list.as_array()
            .is_some_and(|items| items.iter().any(|item| item["name"] == json!(name)))
    };
    let in_groups = state
        .tables
        .get(&(vdom.to_owned(), family_groups.to_owned()))
        .map_or(0, |groups| {
            groups
                .values()
                .filter(|group| mention(&group["member"]))
                .count()
        });
    let in_policies = state
        .tables
        .get(&(vdom.to_owned(), "policy".to_owned()))
        .map_or(0, |policies| {
            policies
                .values()
                .filter(|policy| {
                    ["srcaddr", "dstaddr", "srcaddr6", "dstaddr6"]
                        .iter()
                        .any(|field| mention(&policy[*field]))
                })
                .count()
        });
    in_groups + in_policies
}

/// Checks an object about to be stored; an error reply when it is refused.
fn validate(
    state: &State,
    call: &Call,
    object: &Value,
    replacing: Option<&str>,
) -> Result<(), Reply> {
    let name = object["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        return Err(error(state, call, 500, -651, "name: empty value"));
    }
    if object["comment"]
        .as_str()
        .is_some_and(|comment| comment.chars().count() > 255)
    {
        return Err(error(
            state,
            call,
            500,
            -72,
            "comment: value exceeds max characters (255)",
        ));
    }
    if name.chars().count() > 79 {
        return Err(error(
            state,
            call,
            500,
            -166,
            &format!("name: {name}: name too long (max 79)"),
        ));
    }
    let sibling = match call.table.as_str() {
        "address" => Some("addrgrp"),
        "addrgrp" => Some("address"),
        "address6" => Some("addrgrp6"),
        "addrgrp6" => Some("address6"),
        _ => None,
    };
    if let Some(sibling) = sibling {
        let taken = state
            .tables
            .get(&(call.vdom.clone(), sibling.to_owned()))
            .is_some_and(|objects| objects.contains_key(name));
        if taken {
            return Err(error(
                state,
                call,
                500,
                -163,
                "Address and address-group names cannot be the same",
            ));
        }
    }
    let bad_subnet = || object["subnet"].as_str().and_then(parse_subnet).is_none();
    let bad_ip6 = || {
        object["ip6"]
            .as_str()
            .and_then(|ip6| ip6.parse::<ipnet::Ipv6Net>().ok())
            .is_none()
    };
    match call.table.as_str() {
        "address" if bad_subnet() => {
            return Err(error(state, call, 500, -8, "subnet: invalid IP address"));
        }
        "address6" if bad_ip6() => {
            return Err(error(state, call, 500, -254, "ip6: invalid IPv6 address"));
        }
        "addrgrp" | "addrgrp6" => {
            let members = object["member"].as_array().cloned().unwrap_or_default();
            if members.len() > state.knobs.max_group_members {
                return Err(error(state, call, 500, -4, "member: max entries reached"));
            }
            if members.is_empty() && !version_at_least(&state.knobs.version, (7, 2, 0)) {
                return Err(error(
                    state,
                    call,
                    500,
                    -20,
                    "member: blank entry (a group needs at least one member before 7.2)",
                ));
            }
            let (addresses, groups) = match call.table.as_str() {
                "addrgrp" => ("address", "addrgrp"),
                _ => ("address6", "addrgrp6"),
            };
            for member in &members {
                let member = member["name"].as_str().unwrap_or_default();
                let known = [addresses, groups].iter().any(|table| {
                    state
                        .tables
                        .get(&(call.vdom.clone(), table.to_string()))
                        .is_some_and(|objects| objects.contains_key(member))
                }) || member == "all"
                    || member == "none";
                if !known || member == replacing.unwrap_or(name) {
                    return Err(error(
                        state,
                        call,
                        500,
                        -3,
                        &format!("member: entry not found: {member}"),
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn handle(state: &Mutex<State>, request: &Request) -> Reply {
    let mut state = state.lock();
    let fault = state.faults.pop_front();
    with_fault(fault, || respond(&mut state, request))
}

fn respond(state: &mut State, request: &Request) -> Reply {
    if let Some(until) = state.locked_until {
        if Instant::now() < until {
            return html(
                429,
                "Access temporarily blocked: Maximum failed authentications reached",
            );
        }
        state.locked_until = None;
        state.failed_auths = 0;
    }
    let bearer = request
        .header("authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let url_token = request.query("access_token");
    let key = match (bearer, url_token) {
        (Some(key), _) => Some(key),
        (None, Some(_)) if !state.knobs.url_token => {
            return fail_auth(state, true);
        }
        (None, Some(key)) => Some(key),
        (None, None) => None,
    };
    let Some(key) = key.filter(|key| state.knobs.keys.contains(key)) else {
        return fail_auth(state, false);
    };
    if state.knobs.untrusted_keys.contains(&key) {
        return html(403, "403 Forbidden");
    }
    let path = request.path();
    let without_firewall_read = state.knobs.keys_without_firewall_read.contains(&key);
    if let Some(name) = path.strip_prefix("/api/v2/monitor/firewall/") {
        if !isdb::is_monitor(name) {
            return not_found();
        }
        if without_firewall_read {
            return isdb::monitor_forbidden(state, request, name);
        }
        if request.method != "GET" {
            return Reply::json(405, &json!({"status": "error", "http_status": 405}));
        }
        return isdb::monitor(state, request, name);
    }
    let Some(rest) = path.strip_prefix("/api/v2/cmdb/firewall/") else {
        return not_found();
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let vdom = request.query("vdom").unwrap_or_else(|| "root".into());
    let call = Call {
        method: &request.method,
        vdom: vdom.clone(),
        table: segments[0].to_owned(),
        mkey: segments
            .get(1)
            .filter(|mkey| !mkey.is_empty())
            .map(|mkey| decode(mkey)),
    };
    let isdb_table = isdb::is_cmdb_table(&call.table);
    if !TABLES.contains(&call.table.as_str()) && !isdb_table {
        return error(state, &call, 404, -3, "entry not found");
    }
    if without_firewall_read {
        return error(
            state,
            &call,
            403,
            -37,
            "permission denied: no firewall read access",
        );
    }
    if isdb_table {
        return isdb_table_reply(state, request, &call);
    }
    if segments.len() > 2 && !(segments.len() == 3 && segments[2] == "member") {
        return error(state, &call, 400, -651, "invalid path");
    }
    if vdom == "*" && request.method == "GET" && call.mkey.is_none() {
        let vdoms = state.knobs.vdoms.clone();
        let replies: Vec<Value> = vdoms
            .iter()
            .map(|vdom| {
                let call = Call {
                    vdom: vdom.clone(),
                    ..call_clone(&call)
                };
                let results: Vec<Value> = state
                    .tables
                    .get(&(vdom.clone(), call.table.clone()))
                    .map(|objects| objects.values().cloned().collect())
                    .unwrap_or_default();
                let mut reply = envelope(state, &call, 200);
                reply.insert("results".into(), Value::Array(results));
                Value::Object(reply)
            })
            .collect();
        return Reply::json(200, &Value::Array(replies));
    }
    if !state.knobs.vdoms.contains(&vdom) {
        return error(
            state,
            &call,
            403,
            -37,
            "permission denied: no access to the VDOM",
        );
    }
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let key = (vdom.clone(), call.table.clone());
    let member_path = segments.len() == 3;
    match (request.method.as_str(), &call.mkey) {
        ("GET", None) => {
            let results: Vec<Value> = state
                .tables
                .get(&key)
                .map(|objects| objects.values().cloned().collect())
                .unwrap_or_default();
            let results = listed(request, results);
            success(state, &call, Some(Value::Array(results)), false)
        }
        ("GET", Some(mkey)) => match state.tables.get(&key).and_then(|objects| objects.get(mkey)) {
            Some(object) => {
                let object = object.clone();
                success(state, &call, Some(json!([object])), false)
            }
            None => {
                let reply = envelope(state, &call, 404);
                Reply::json(404, &Value::Object(reply))
            }
        },
        ("POST", Some(mkey)) if member_path => {
            let Some(mut group) = state
                .tables
                .get(&key)
                .and_then(|objects| objects.get(mkey))
                .cloned()
            else {
                return Reply::json(404, &Value::Object(envelope(state, &call, 404)));
            };
            group["member"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": body["name"]}));
            if let Err(reply) = validate(state, &call, &group, None) {
                return reply;
            }
            state
                .tables
                .get_mut(&key)
                .unwrap()
                .insert(mkey.clone(), group);
            success(state, &call, None, true)
        }
        ("POST", Some(_)) => {
            // The next level does not exist yet.
            Reply::json(404, &Value::Object(envelope(state, &call, 404)))
        }
        ("POST", None) => {
            let name = body["name"].as_str().unwrap_or_default().to_owned();
            if state
                .tables
                .get(&key)
                .is_some_and(|objects| objects.contains_key(&name))
            {
                let status = if state.knobs.legacy_duplicate {
                    424
                } else {
                    500
                };
                return error(state, &call, status, -5, "object already exists");
            }
            if let Err(reply) = validate(state, &call, &body, None) {
                return reply;
            }
            let mut object = normalized(&call.table, body);
            object["q_origin_key"] = json!(name);
            state
                .tables
                .entry(key)
                .or_default()
                .insert(name.clone(), object);
            let call = Call {
                mkey: Some(name),
                ..call_clone(&call)
            };
            success(state, &call, None, true)
        }
        ("PUT", Some(mkey)) => {
            let Some(existing) = state
                .tables
                .get(&key)
                .and_then(|objects| objects.get(mkey))
                .cloned()
            else {
                return Reply::json(404, &Value::Object(envelope(state, &call, 404)));
            };
            let mut merged = existing;
            if let Value::Object(changes) = body {
                for (field, value) in changes {
                    merged[field] = value;
                }
            }
            if let Err(reply) = validate(state, &call, &merged, Some(mkey)) {
                return reply;
            }
            let new_name = merged["name"].as_str().unwrap_or(mkey).to_owned();
            let mut merged = normalized(&call.table, merged);
            merged["q_origin_key"] = json!(new_name);
            let objects = state.tables.get_mut(&key).unwrap();
            objects.remove(mkey);
            objects.insert(new_name, merged);
            success(state, &call, None, true)
        }
        ("DELETE", None) => {
            // Purges every unreferenced object of the table.
            state.purges.push(format!("{}?vdom={vdom}", path));
            let names: Vec<String> = state
                .tables
                .get(&key)
                .map(|objects| objects.keys().cloned().collect())
                .unwrap_or_default();
            for name in names {
                if references(state, &vdom, &call.table, &name) == 0 {
                    state.tables.get_mut(&key).unwrap().remove(&name);
                }
            }
            success(state, &call, None, true)
        }
        ("DELETE", Some(mkey)) => {
            if !state
                .tables
                .get(&key)
                .is_some_and(|objects| objects.contains_key(mkey))
            {
                return Reply::json(404, &Value::Object(envelope(state, &call, 404)));
            }
            let used = references(state, &vdom, &call.table, mkey);
            if used > 0 {
                return error(
                    state,
                    &call,
                    500,
                    -23,
                    &format!("The entry is used by other {used} entries"),
                );
            }
            state.tables.get_mut(&key).unwrap().remove(mkey);
            success(state, &call, None, true)
        }
        _ => error(state, &call, 405, -1, "method not allowed"),
    }
}

/// A table's objects as a GET of the table lists them: `filter`, then `start` and `count`,
/// then `format`.
fn listed(request: &Request, mut results: Vec<Value>) -> Vec<Value> {
    let filters: Vec<String> = request_params(request, "filter");
    results.retain(|object| filters.iter().all(|filter| passes(object, filter)));
    let start: usize = request
        .query("start")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let count: usize = request
        .query("count")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    let mut results: Vec<Value> = results.into_iter().skip(start).take(count).collect();
    if let Some(format) = request.query("format") {
        let fields: Vec<&str> = format.split('|').collect();
        for result in &mut results {
            if let Value::Object(map) = result {
                map.retain(|field, _| fields.contains(&field.as_str()) || field == "q_origin_key");
            }
        }
    }
    results
}

/// A GET of an ISDB table, for one VDOM or (`vdom=*`) for each; the database is global, so
/// every VDOM sees the same rows.
fn isdb_table_reply(state: &mut State, request: &Request, call: &Call) -> Reply {
    if request.method != "GET" {
        return error(state, call, 405, -1, "method not allowed");
    }
    if call.vdom != "*" {
        if !state.knobs.vdoms.contains(&call.vdom) {
            return error(
                state,
                call,
                403,
                -37,
                "permission denied: no access to the VDOM",
            );
        }
        return isdb::cmdb(state, request, call);
    }
    let vdoms = state.knobs.vdoms.clone();
    let mut replies = Vec::new();
    for vdom in vdoms {
        let call = Call {
            vdom,
            ..call_clone(call)
        };
        let Reply::Response { body, .. } = isdb::cmdb(state, request, &call) else {
            unreachable!("cmdb replies are plain responses");
        };
        replies.push(serde_json::from_slice::<Value>(&body).unwrap());
    }
    Reply::json(200, &Value::Array(replies))
}

fn call_clone<'a>(call: &Call<'a>) -> Call<'a> {
    Call {
        method: call.method,
        vdom: call.vdom.clone(),
        table: call.table.clone(),
        mkey: call.mkey.clone(),
    }
}

/// Every value of a repeated query parameter, decoded.
fn request_params(request: &Request, name: &str) -> Vec<String> {
    let Some((_, query)) = request.target.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| decode(key) == name)
        .map(|(_, value)| decode(value))
        .collect()
}

fn fail_auth(state: &mut State, url_token: bool) -> Reply {
    state.failed_auths += 1;
    if state.failed_auths >= state.knobs.lockout_after {
        state.locked_until = Some(Instant::now() + state.knobs.lockout);
    }
    let reply = Reply::status(401, "").with_header("Content-Type", "text/html");
    if url_token {
        reply.with_header("www-authenticate", "error=\"invalid_token\"")
    } else {
        reply
    }
}
