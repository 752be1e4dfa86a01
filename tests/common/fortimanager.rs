//! A FortiManager test double speaking JSON-RPC (`POST /jsonrpc`) on the loopback HTTP
//! harness, with the behaviour a client must cope with (`fortinet-apis.md` §5.2):
//!
//! - the envelope: `id` echoed, `result` aligned with `params` (several per call), each
//!   `{status: {code, message}, url, data?}`, HTTP 200 whatever the codes;
//! - auth: `exec sys/login/user` (`user`, `passwd`) returns a `session`; wrong credentials
//!   `-22`; `exec sys/logout`; sessions idle longer than `idle_timeout` end (the next call
//!   answers `-11`, as an expired session does, and a lock the session held is released); an API key in `Authorization: Bearer`, and `?access_token=`
//!   refused (from 7.4.7 on);
//! - ADOM objects under `/pm/config/adom/<adom>/obj/firewall/{address,address6,addrgrp,
//!   addrgrp6}`: `get` (with `filter` `==`/`like`, `fields`), `add` (`-2` when the name is
//!   taken), `update` (`-3` when missing; attributes merged, `member` replaced), `set`,
//!   `delete` (`-3` missing, `-10015` when a group or a policy package rule refers to it);
//!   unknown members `-10131`; empty groups `-9998` in an ADOM of a FortiOS version before
//!   7.2 (the ADOM's version, `/dvmdb/adom/<adom>` `os_ver` and `mr`, not the manager's); bad
//!   URLs `-6`; `\/` for `/` in
//!   names; `subnet` returned as `[ip, mask]`, members as a list of names; `type` as a number
//!   unless `verbose: 1`;
//! - workspace mode (`workspace-mode` `normal`, or `per-adom` with the ADOM's
//!   `workspace_mode`): writes without the caller's lock `-10147`; a
//!   lock held by another session `-20055`; `lockinfo`; changes visible to others only after
//!   `commit`; `unlock` without commit discards them; a lock ends with its session;
//! - `exec /securityconsole/install/package` returns a task that `get /task/task/<id>` shows
//!   progressing over `install_steps` polls, failing with a line `detail` when told to;
//! - policy packages (`fortinet-apis.md` §2.7): `get /pm/pkg/adom/<adom>/<pkg>` with its
//!   `obj ver`, which moves with every change of the package's rules;
//!   `/pm/config/adom/<adom>/pkg/<pkg>/firewall/policy` in sequence, each rule with its
//!   `obj seq`; the ADOM's services (`obj/firewall/service/custom`, `service/group`) and
//!   normalized interfaces (`obj/dynamic/interface`) read from tables a test sets;
//! - `exec /sys/proxy/json` relays `{action, resource, payload, target}` to managed FortiGate
//!   doubles (registered with [`FortiManager::manage`]) and answers one entry per target,
//!   `{target, status: {code, message}, response}`, `response` being the device's reply
//!   envelope. Assumed, not documented: an HTML or empty device reply becomes
//!   `{status: "error", http_status}`; a device that closes the connection answers code `-1`
//!   with no response; a target not managed in the ADOM fails the whole request with `-3`;
//!   a device's delay fault is not relayed (the reply comes at once);
//! - fault injection: the next requests can get an HTML 5xx, a reset connection, or a delay.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

pub use super::fortigate::Fault;
use super::fortigate::{version_at_least, with_fault, FortiGate};
use super::http::{HttpServer, Reply, Request};

/// How the manager behaves.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// `v7.4.3`, `v7.0.12`, ...: sets whether groups may be empty (7.2 and later).
    pub version: String,
    pub users: BTreeMap<String, String>,
    pub api_keys: Vec<String>,
    /// The ADOM's FortiOS version (`os_ver`, `mr`): what its objects may be.
    pub adom_version: (u32, u32),
    /// `disabled`, `normal`, or `per-adom` (then `adom_workspace` decides).
    pub workspace_mode: String,
    pub adom_workspace: bool,
    pub idle_timeout: Duration,
    /// Polls an install task takes to reach 100%.
    pub install_steps: u32,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            version: "v7.4.3".into(),
            users: BTreeMap::from([("threatflow".to_owned(), "fmg-password".to_owned())]),
            api_keys: vec!["fmg-key".into()],
            adom_version: (7, 4),
            workspace_mode: "disabled".into(),
            adom_workspace: false,
            idle_timeout: Duration::from_secs(900),
            install_steps: 2,
        }
    }
}

type Objects = BTreeMap<(String, String, String), Value>;

struct Session {
    user: String,
    last_used: Instant,
}

/// An install task.
#[derive(Clone, Debug)]
pub struct Task {
    pub id: i64,
    pub package: String,
    pub scope: Value,
    polls: u32,
    pub fail: Option<String>,
    /// Committed addresses and groups when the install started.
    pub objects: usize,
}

#[derive(Default)]
struct State {
    knobs: Knobs,
    /// `(adom, table, name)` -> object, as committed.
    committed: Objects,
    /// The lock holder's uncommitted view, when the workspace is locked.
    working: Option<Objects>,
    /// The session holding the ADOM lock, and its user.
    lock: Option<(String, String)>,
    sessions: BTreeMap<String, Session>,
    next_session: u64,
    faults: VecDeque<Fault>,
    tasks: Vec<Task>,
    fail_next_install: Option<String>,
    /// Names a policy package rule refers to (deleting them is refused).
    referenced: Vec<String>,
    logouts: u32,
    /// Policy packages: name -> (`obj ver`, rules in sequence).
    packages: BTreeMap<String, (u64, Vec<Value>)>,
    /// Read-only ADOM tables by path under `obj/` (`firewall/service/custom`, ...).
    tables: BTreeMap<String, Vec<Value>>,
    /// Managed FortiGates in ADOM root by name, and the key the relay authenticates with.
    devices: BTreeMap<String, (FortiGate, String)>,
    /// Requests relayed to devices: `(device, action, resource)`.
    relayed: Vec<(String, String, String)>,
}

/// A running FortiManager double.
#[derive(Clone)]
pub struct FortiManager {
    pub server: HttpServer,
    state: Arc<Mutex<State>>,
}

const TABLES: [&str; 4] = ["address", "address6", "addrgrp", "addrgrp6"];
/// ADOM tables a test sets and the API only reads.
const READ_ONLY_TABLES: [&str; 3] = [
    "firewall/service/custom",
    "firewall/service/group",
    "dynamic/interface",
];

fn ok(url: &str, data: Option<Value>) -> Value {
    let mut result = json!({"status": {"code": 0, "message": "OK"}, "url": url});
    if let Some(data) = data {
        result["data"] = data;
    }
    result
}

fn fail(url: &str, code: i64, message: &str) -> Value {
    json!({"status": {"code": code, "message": message}, "url": url})
}

impl FortiManager {
    /// Serves HTTPS under the test PKI in `dir`.
    pub async fn start(dir: &std::path::Path, knobs: Knobs) -> FortiManager {
        let state = Arc::new(Mutex::new(State {
            knobs,
            ..State::default()
        }));
        let handler_state = state.clone();
        let server = HttpServer::start_tls(dir, move |request| {
            let mut state = handler_state.lock();
            let fault = state.faults.pop_front();
            with_fault(fault, || respond(&mut state, request))
        })
        .await;
        FortiManager { server, state }
    }

    pub fn url(&self) -> String {
        self.server.base.clone()
    }

    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().faults.extend(faults);
    }

    /// Manages `device` as `name` in ADOM root; relayed calls reach it with `key`.
    pub fn manage(&self, name: &str, device: FortiGate, key: &str) {
        self.state
            .lock()
            .devices
            .insert(name.to_owned(), (device, key.to_owned()));
    }

    /// Calls relayed to devices so far: `(device, action, resource)`.
    pub fn relayed(&self) -> Vec<(String, String, String)> {
        self.state.lock().relayed.clone()
    }

    pub fn set_idle_timeout(&self, timeout: Duration) {
        self.state.lock().knobs.idle_timeout = timeout;
    }

    /// Adds a committed object as an admin would.
    pub fn seed(&self, table: &str, object: Value) {
        let name = object["name"].as_str().unwrap().to_owned();
        self.state
            .lock()
            .committed
            .insert(("root".into(), table.into(), name), stored(table, object));
    }

    /// A committed object.
    pub fn object(&self, table: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .committed
            .get(&("root".to_owned(), table.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn names(&self, table: &str) -> Vec<String> {
        self.state
            .lock()
            .committed
            .keys()
            .filter(|(_, t, _)| t == table)
            .map(|(_, _, name)| name.clone())
            .collect()
    }

    pub fn members(&self, table: &str, name: &str) -> Vec<String> {
        self.object(table, name)
            .map(|group| {
                group["member"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|member| member.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// An admin edits a policy package's rules (in sequence); its `obj ver` moves.
    pub fn edit_package(&self, package: &str, edit: impl FnOnce(&mut Vec<Value>)) {
        let mut state = self.state.lock();
        let (version, rules) = state.packages.entry(package.to_owned()).or_default();
        edit(rules);
        *version += 1;
    }

    /// Sets a read-only ADOM table (`firewall/service/custom`, `dynamic/interface`, ...).
    pub fn set_table(&self, table: &str, items: Vec<Value>) {
        self.state.lock().tables.insert(table.to_owned(), items);
    }

    /// Loads a package and the ADOM's objects from an export (a JSON-RPC reply of `get`s).
    pub fn load_export(&self, export: &Value) {
        for result in export["result"].as_array().unwrap() {
            let url = result["url"].as_str().unwrap();
            let items = result["data"].as_array().cloned().unwrap_or_default();
            if let Some((_, package)) = url.split_once("/pkg/") {
                let package = package.trim_end_matches("/firewall/policy");
                self.edit_package(package, |rules| *rules = items);
                continue;
            }
            let table = url.split_once("/obj/").unwrap().1;
            match table.strip_prefix("firewall/") {
                Some(objects) if TABLES.contains(&objects) => {
                    for item in items {
                        self.seed(objects, item);
                    }
                }
                _ => self.set_table(table, items),
            }
        }
    }

    /// Another admin locks the ADOM (from the GUI).
    pub fn lock_as(&self, user: &str) {
        let mut state = self.state.lock();
        state.lock = Some(("gui-session".into(), user.into()));
        state.working = Some(state.committed.clone());
    }

    /// The other admin unlocks without saving.
    pub fn release_lock(&self) {
        let mut state = self.state.lock();
        state.lock = None;
        state.working = None;
    }

    pub fn is_locked(&self) -> bool {
        self.state.lock().lock.is_some()
    }

    /// A policy package rule refers to `name`.
    pub fn reference(&self, name: &str) {
        self.state.lock().referenced.push(name.into());
    }

    pub fn fail_next_install(&self, detail: &str) {
        self.state.lock().fail_next_install = Some(detail.into());
    }

    pub fn tasks(&self) -> Vec<Task> {
        self.state.lock().tasks.clone()
    }

    pub fn logouts(&self) -> u32 {
        self.state.lock().logouts
    }

    /// Every request's `(method, url)` pairs, in order.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.server
            .requests()
            .iter()
            .filter_map(|request| serde_json::from_slice::<Value>(&request.body).ok())
            .flat_map(|body| {
                let method = body["method"].as_str().unwrap_or_default().to_owned();
                body["params"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |param| {
                        (
                            method.clone(),
                            param["url"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
            })
            .collect()
    }

    /// Object writes (`add`, `update`, `set`, `delete` params), in order.
    pub fn writes(&self) -> Vec<(String, String)> {
        self.calls()
            .into_iter()
            .filter(|(method, url)| {
                matches!(method.as_str(), "add" | "update" | "set" | "delete")
                    && url.contains("/obj/")
            })
            .collect()
    }
}

/// An object as the manager keeps it: `subnet` as `[ip, mask]`, members as names.
fn stored(table: &str, mut object: Value) -> Value {
    if table == "address" {
        let subnet = match &object["subnet"] {
            Value::String(text) => text
                .parse::<ipnet::Ipv4Net>()
                .ok()
                .map(|net| json!([net.addr().to_string(), net.netmask().to_string()])),
            Value::Array(parts) if parts.len() == 2 => Some(object["subnet"].clone()),
            _ => None,
        };
        if let Some(subnet) = subnet {
            object["subnet"] = subnet;
        }
    }
    if table.starts_with("addrgrp") {
        object["member"] = match &object["member"] {
            Value::String(member) => json!([member]),
            Value::Array(members) => json!(members
                .iter()
                .map(|member| member
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| member["name"].as_str().unwrap_or_default().to_owned()))
                .collect::<Vec<_>>()),
            _ => json!([]),
        };
    }
    object
}

/// Splits `/pm/config/adom/<adom>/obj/firewall/<table>[/<name>]`, undoing `\/`.
fn object_url(url: &str) -> Option<(String, String, Option<String>)> {
    let url = url.trim_start_matches('/');
    let rest = url.strip_prefix("pm/config/adom/")?;
    let (adom, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("obj/firewall/")?;
    // Split on `/` not preceded by `\`.
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'/') => {
                current.push('/');
                chars.next();
            }
            '/' => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    let table = parts.first()?.clone();
    if !TABLES.contains(&table.as_str()) || parts.len() > 2 {
        return None;
    }
    Some((adom.to_owned(), table, parts.get(1).cloned()))
}

fn matches_filter(object: &Value, filter: &Value) -> bool {
    let Some(terms) = filter.as_array() else {
        return true;
    };
    if terms.len() == 3 && terms[0].is_string() {
        let field = terms[0].as_str().unwrap();
        let found = object[field].as_str().unwrap_or_default();
        let value = terms[2].as_str().unwrap_or_default();
        return match terms[1].as_str() {
            Some("==") => found == value,
            Some("like") => {
                let pattern = value.trim_matches('%');
                found.contains(pattern)
            }
            _ => false,
        };
    }
    true
}

impl State {
    /// Whether writes need the ADOM's lock.
    fn locking(&self) -> bool {
        match self.knobs.workspace_mode.as_str() {
            "disabled" => false,
            "per-adom" => self.knobs.adom_workspace,
            _ => true,
        }
    }

    fn writable(&self, session: Option<&str>) -> bool {
        !self.locking()
            || matches!((&self.lock, session), (Some((holder, _)), Some(session)) if holder == session)
    }

    /// The objects `session` sees: its uncommitted work if it holds the lock.
    fn view(&mut self, session: Option<&str>) -> &mut Objects {
        let holds = matches!((&self.lock, session), (Some((holder, _)), Some(session)) if holder == session);
        match (holds, &mut self.working) {
            (true, Some(working)) => working,
            _ => &mut self.committed,
        }
    }

    fn referenced(&self, objects: &Objects, adom: &str, table: &str, name: &str) -> bool {
        let groups = if table.ends_with('6') {
            "addrgrp6"
        } else {
            "addrgrp"
        };
        self.referenced.iter().any(|referenced| referenced == name)
            || objects.iter().any(|((a, t, _), group)| {
                a == adom
                    && t == groups
                    && group["member"]
                        .as_array()
                        .is_some_and(|members| members.iter().any(|member| member == name))
            })
    }

    fn check(
        &self,
        objects: &Objects,
        adom: &str,
        table: &str,
        object: &Value,
    ) -> Result<(), (i64, String)> {
        let name = object["name"].as_str().unwrap_or_default();
        if name.is_empty() || name.len() > 79 {
            return Err((-10, "The data is invalid for selected url".into()));
        }
        if table.starts_with("addrgrp") {
            let members = object["member"].as_array().cloned().unwrap_or_default();
            let (major, minor) = self.knobs.adom_version;
            if members.is_empty() && (major, minor) < (7, 2) {
                return Err((-9998, "empty member in address group".into()));
            }
            let addresses = if table.ends_with('6') {
                "address6"
            } else {
                "address"
            };
            for member in members {
                let member = member.as_str().unwrap_or_default();
                let known = [addresses, table].iter().any(|t| {
                    objects.contains_key(&(adom.to_owned(), t.to_string(), member.to_owned()))
                });
                if !known || member == name {
                    return Err((
                        -10131,
                        format!(
                            "datasrc invalid. object: firewall {table} member. detail: {member}"
                        ),
                    ));
                }
            }
        }
        if table == "address"
            && object["subnet"]
                .as_array()
                .is_none_or(|parts| parts.len() != 2)
        {
            return Err((-10, "The data is invalid for selected url".into()));
        }
        Ok(())
    }

    /// One object request.
    fn object_call(
        &mut self,
        method: &str,
        param: &Value,
        session: Option<&str>,
        verbose: bool,
    ) -> Value {
        let url = param["url"].as_str().unwrap_or_default();
        let Some((adom, table, name)) = object_url(url) else {
            return fail(url, -6, "Invalid url");
        };
        if adom != "root" {
            return fail(url, -6, "Invalid url");
        }
        let writes = method != "get";
        if writes && !self.writable(session) {
            return fail(url, -10147, "no write permission");
        }
        let mut objects = self.view(session).clone();
        let result = match (method, name) {
            ("get", None) => {
                let fields: Vec<String> = param["fields"]
                    .as_array()
                    .map(|fields| {
                        fields
                            .iter()
                            .filter_map(|f| f.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let data: Vec<Value> = objects
                    .iter()
                    .filter(|((a, t, _), object)| {
                        *a == adom && *t == table && matches_filter(object, &param["filter"])
                    })
                    .map(|(_, object)| {
                        let mut object = object.clone();
                        if !fields.is_empty() {
                            if let Value::Object(map) = &mut object {
                                map.retain(|field, _| fields.contains(field));
                            }
                        }
                        if !verbose && object["type"] == json!("ipmask") {
                            object["type"] = json!(0);
                        }
                        object
                    })
                    .collect();
                ok(url, Some(Value::Array(data)))
            }
            ("get", Some(name)) => match objects.get(&(adom.clone(), table.clone(), name)) {
                Some(object) => ok(url, Some(object.clone())),
                None => fail(url, -3, "Object does not exist"),
            },
            ("add" | "set", None) => {
                let data = match &param["data"] {
                    Value::Array(items) => items.clone(),
                    item => vec![item.clone()],
                };
                for item in data {
                    let object = stored(&table, item);
                    let name = object["name"].as_str().unwrap_or_default().to_owned();
                    let key = (adom.clone(), table.clone(), name.clone());
                    if method == "add" && objects.contains_key(&key) {
                        return fail(url, -2, "Object already exists");
                    }
                    let sibling = match table.as_str() {
                        "address" => "addrgrp",
                        "addrgrp" => "address",
                        "address6" => "addrgrp6",
                        _ => "address6",
                    };
                    if objects.contains_key(&(adom.clone(), sibling.to_owned(), name.clone())) {
                        return fail(url, -2, "Object already exists");
                    }
                    if let Err((code, message)) = self.check(&objects, &adom, &table, &object) {
                        return fail(url, code, &message);
                    }
                    objects.insert(key, object);
                }
                *self.view(session) = objects;
                return ok(url, None);
            }
            ("update" | "set", Some(name)) => {
                let key = (adom.clone(), table.clone(), name.clone());
                let Some(mut object) = objects.get(&key).cloned() else {
                    if method == "set" {
                        let object = stored(&table, param["data"].clone());
                        if let Err((code, message)) = self.check(&objects, &adom, &table, &object) {
                            return fail(url, code, &message);
                        }
                        objects.insert(key, object);
                        *self.view(session) = objects;
                        return ok(url, Some(json!({"name": name})));
                    }
                    return fail(url, -3, "Object does not exist");
                };
                let changes = stored(&table, param["data"].clone());
                if let Value::Object(changes) = changes {
                    for (field, value) in changes {
                        object[field] = value;
                    }
                }
                if let Err((code, message)) = self.check(&objects, &adom, &table, &object) {
                    return fail(url, code, &message);
                }
                objects.insert(key, object);
                ok(url, Some(json!({"name": name})))
            }
            ("delete", Some(name)) => {
                let key = (adom.clone(), table.clone(), name.clone());
                if !objects.contains_key(&key) {
                    return fail(url, -3, "Object does not exist");
                }
                if self.referenced(&objects, &adom, &table, &name) {
                    return fail(url, -10015, "used");
                }
                objects.remove(&key);
                ok(url, None)
            }
            ("delete", None) => fail(url, -9, "The command is invalid for selected url"),
            _ => fail(url, -9, "The command is invalid for selected url"),
        };
        if writes && result["status"]["code"] == json!(0) {
            *self.view(session) = objects;
        }
        result
    }

    fn workspace(&mut self, action: &str, url: &str, session: Option<&str>, user: &str) -> Value {
        let session = session.unwrap_or("api-key");
        match action {
            "lock" => match &self.lock {
                Some((holder, _)) if holder != session => {
                    fail(url, -20055, "Workspace is locked by other user")
                }
                _ => {
                    self.lock = Some((session.to_owned(), user.to_owned()));
                    self.working = Some(self.committed.clone());
                    ok(url, None)
                }
            },
            "commit" => match (&self.lock, &self.working) {
                (Some((holder, _)), Some(working)) if holder == session => {
                    self.committed = working.clone();
                    ok(url, None)
                }
                _ => fail(url, -20017, "Lock required"),
            },
            "unlock" => match &self.lock {
                Some((holder, _)) if holder == session => {
                    self.lock = None;
                    self.working = None;
                    ok(url, None)
                }
                _ => fail(url, -20017, "Lock required"),
            },
            _ => fail(url, -6, "Invalid url"),
        }
    }

    /// `exec /sys/proxy/json`: the request passed to each target device double.
    fn relay(&mut self, url: &str, data: &Value) -> Value {
        let action = data["action"]
            .as_str()
            .unwrap_or("get")
            .to_ascii_uppercase();
        let resource = data["resource"].as_str().unwrap_or_default().to_owned();
        let body = match &data["payload"] {
            Value::Null => Vec::new(),
            payload => payload.to_string().into_bytes(),
        };
        let mut answers = Vec::new();
        for target in data["target"].as_array().into_iter().flatten() {
            let target = target.as_str().unwrap_or_default();
            let Some(name) = target
                .trim_start_matches('/')
                .strip_prefix("adom/root/device/")
                .map(|name| name.replace("\\/", "/"))
            else {
                return fail(url, -3, "Object does not exist");
            };
            let Some((device, key)) = self.devices.get(&name) else {
                return fail(url, -3, "Object does not exist");
            };
            self.relayed
                .push((name.clone(), action.clone(), resource.clone()));
            let request = Request {
                method: action.clone(),
                target: resource.clone(),
                headers: vec![("authorization".into(), format!("Bearer {key}"))],
                body: body.clone(),
            };
            let mut reply = device.answer(&request);
            while let Reply::Delayed(_, inner) = reply {
                reply = *inner;
            }
            let answer = match reply {
                Reply::Response { status, body, .. } => {
                    let response = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({"status": "error", "http_status": status}));
                    json!({"target": name, "status": {"code": 0, "message": "OK"}, "response": response})
                }
                _ => {
                    json!({"target": name, "status": {"code": -1, "message": "Connection to the device failed"}})
                }
            };
            answers.push(answer);
        }
        ok(url, Some(Value::Array(answers)))
    }

    fn install(&mut self, url: &str, data: &Value) -> Value {
        let id = 1000 + self.tasks.len() as i64;
        let objects = self.committed.len();
        self.tasks.push(Task {
            id,
            package: data["pkg"].as_str().unwrap_or_default().to_owned(),
            scope: data["scope"].clone(),
            polls: 0,
            fail: self.fail_next_install.take(),
            objects,
        });
        ok(url, Some(json!({"task": id})))
    }

    fn task(&mut self, url: &str, id: i64) -> Value {
        let steps = self.knobs.install_steps.max(1);
        let Some(task) = self.tasks.iter_mut().find(|task| task.id == id) else {
            return fail(url, -3, "Object does not exist");
        };
        task.polls += 1;
        let percent = (task.polls * 100 / steps).min(100);
        let failed = percent == 100 && task.fail.is_some();
        let line = json!({"name": "FGT-EDGE-1", "vdom": "root", "state": if failed { "error" } else { "done" },
            "err": if failed { 1 } else { 0 }, "detail": task.fail.clone().unwrap_or_else(|| "install and save finished status=OK".into()), "percent": percent});
        ok(
            url,
            Some(
                json!({"id": id, "percent": percent, "num_done": if percent == 100 && !failed { 1 } else { 0 },
            "num_err": if failed { 1 } else { 0 }, "num_lines": 1, "state": if percent == 100 { "done" } else { "running" }, "line": [line], "title": format!("install {}", task.package)}),
            ),
        )
    }
}

/// `-11` for every request of a call without a valid session (expired, or none).
fn denied(params: &[Value]) -> Vec<Value> {
    params
        .iter()
        .map(|param| {
            fail(
                param["url"].as_str().unwrap_or_default(),
                -11,
                "No permission for the resource",
            )
        })
        .collect()
}

fn respond(state: &mut State, request: &Request) -> Reply {
    if request.path() != "/jsonrpc" || request.method != "POST" {
        return Reply::status(404, "<html>Not Found</html>");
    }
    let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
        return Reply::json(
            200,
            &json!({"id": null, "result": [fail("", -8, "Invalid parameter")]}),
        );
    };
    let id = body["id"].clone();
    let method = body["method"].as_str().unwrap_or_default().to_owned();
    let params = body["params"].as_array().cloned().unwrap_or_default();
    let reply = |results: Vec<Value>, session: Option<&str>| {
        let mut reply = json!({"id": id, "result": results});
        if let Some(session) = session {
            reply["session"] = json!(session);
        }
        Reply::json(200, &reply)
    };
    // Login and logout.
    if method == "exec" && params.len() == 1 {
        let url = params[0]["url"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/');
        if url == "sys/login/user" {
            let data = match &params[0]["data"] {
                Value::Array(items) => items.first().cloned().unwrap_or_default(),
                item => item.clone(),
            };
            let user = data["user"].as_str().unwrap_or_default().to_owned();
            let password = data["passwd"].as_str().unwrap_or_default();
            if state.knobs.users.get(&user).map(String::as_str) != Some(password) {
                return reply(vec![fail("sys/login/user", -22, "Login fail")], None);
            }
            state.next_session += 1;
            let session = format!(
                "session-{}-{:x}",
                state.next_session,
                Instant::now().elapsed().as_nanos()
            );
            state.sessions.insert(
                session.clone(),
                Session {
                    user,
                    last_used: Instant::now(),
                },
            );
            return reply(vec![ok("sys/login/user", None)], Some(&session));
        }
    }
    // Who is calling.
    let bearer = request
        .header("authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let refuses_url_tokens = version_at_least(&state.knobs.version, (7, 6, 2))
        || (version_at_least(&state.knobs.version, (7, 4, 7))
            && !version_at_least(&state.knobs.version, (7, 6, 0)));
    if request.query("access_token").is_some() && refuses_url_tokens {
        return Reply::status(401, "");
    }
    let session = body["session"].as_str().map(str::to_owned);
    let now = Instant::now();
    let idle = state.knobs.idle_timeout;
    // Sessions idle too long end, and a lock one of them held ends with it (unsaved work too).
    let expired: Vec<String> = state
        .sessions
        .iter()
        .filter(|(_, known)| now.duration_since(known.last_used) > idle)
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        state.sessions.remove(&id);
        if state.lock.as_ref().is_some_and(|(holder, _)| *holder == id) {
            state.lock = None;
            state.working = None;
        }
    }
    let (user, session) = match (&bearer, &session) {
        (Some(key), _) if state.knobs.api_keys.contains(key) => {
            // Requests with a key act as one session of the API user (for the lock).
            ("api-user".to_owned(), Some("api-key".to_owned()))
        }
        (Some(_), _) => return Reply::status(401, ""),
        (None, Some(session)) => {
            if !state.sessions.contains_key(session) {
                return reply(denied(&params), None);
            }
            let known = state.sessions.get_mut(session).unwrap();
            known.last_used = now;
            (known.user.clone(), Some(session.clone()))
        }
        (None, None) => {
            return reply(denied(&params), None);
        }
    };
    let session = session.as_deref();
    let mut results = Vec::new();
    for param in &params {
        let url = param["url"].as_str().unwrap_or_default();
        let trimmed = url.trim_start_matches('/');
        let verbose = param["verbose"] == json!(1) || body["verbose"] == json!(1);
        let result = match (method.as_str(), trimmed) {
            ("exec", "sys/logout") => {
                if let Some(session) = session {
                    state.sessions.remove(session);
                    if state
                        .lock
                        .as_ref()
                        .is_some_and(|(holder, _)| holder == session)
                    {
                        state.lock = None;
                        state.working = None;
                    }
                }
                state.logouts += 1;
                ok(url, None)
            }
            ("get", "sys/status") => ok(
                url,
                Some(
                    json!({"Version": format!("{}-build2487 240514 (GA.M)", state.knobs.version), "Hostname": "FMG-VM64", "Admin Domain Configuration": "Enabled"}),
                ),
            ),
            ("get", "cli/global/system/global") => {
                let mode = state.knobs.workspace_mode.clone();
                let value = match (verbose, mode.as_str()) {
                    (true, _) => json!(mode),
                    (false, "disabled") => json!(0),
                    (false, "per-adom") => json!(3),
                    (false, _) => json!(1),
                };
                ok(url, Some(json!({"workspace-mode": value})))
            }
            ("get", "dvmdb/adom/root") => {
                let (major, minor) = state.knobs.adom_version;
                ok(
                    url,
                    Some(
                        json!({"name": "root", "os_ver": format!("{major}.0"), "mr": minor,
                    "workspace_mode": u8::from(state.knobs.adom_workspace)}),
                    ),
                )
            }
            ("get", "dvmdb/adom/root/workspace/lockinfo") => match &state.lock {
                Some((holder, user)) => ok(
                    url,
                    Some(
                        json!([{"lock_user": user, "lock_sid": holder, "lock_time": 1_700_000_000, "dirty": 0}]),
                    ),
                ),
                None => ok(url, None),
            },
            ("exec", workspace) if workspace.starts_with("dvmdb/adom/root/workspace/") => {
                let action = workspace
                    .trim_start_matches("dvmdb/adom/root/workspace/")
                    .to_owned();
                state.workspace(&action, url, session, &user)
            }
            ("exec", "securityconsole/install/package") => state.install(url, &param["data"]),
            ("exec", "sys/proxy/json") => state.relay(url, &param["data"]),
            ("get", task) if task.starts_with("task/task/") => {
                let id = task.trim_start_matches("task/task/").parse().unwrap_or(-1);
                state.task(url, id)
            }
            ("get", package) if package.starts_with("pm/pkg/adom/root/") => {
                let name = package.trim_start_matches("pm/pkg/adom/root/");
                match state.packages.get(name) {
                    Some((version, _)) => ok(
                        url,
                        Some(
                            json!({"name": name, "obj ver": version, "oid": 4242, "type": "pkg",
                            "scope member": [{"name": "fgt-edge", "vdom": "root"}]}),
                        ),
                    ),
                    None => fail(url, -3, "Object does not exist"),
                }
            }
            ("get", rules) if rules.starts_with("pm/config/adom/root/pkg/") => {
                let package = rules
                    .trim_start_matches("pm/config/adom/root/pkg/")
                    .strip_suffix("/firewall/policy");
                match package.and_then(|package| state.packages.get(package)) {
                    Some((_, rules)) => {
                        let rules: Vec<Value> = rules
                            .iter()
                            .enumerate()
                            .map(|(index, rule)| {
                                let mut rule = rule.clone();
                                rule["obj seq"] = json!(index + 1);
                                rule
                            })
                            .collect();
                        ok(url, Some(Value::Array(rules)))
                    }
                    None => fail(url, -3, "Object does not exist"),
                }
            }
            ("get", table)
                if table
                    .strip_prefix("pm/config/adom/root/obj/")
                    .is_some_and(|table| READ_ONLY_TABLES.contains(&table)) =>
            {
                let table = table.trim_start_matches("pm/config/adom/root/obj/");
                let items = state.tables.get(table).cloned().unwrap_or_default();
                ok(url, Some(Value::Array(items)))
            }
            (method, _) if trimmed.starts_with("pm/config/") => {
                state.object_call(method, param, session, verbose)
            }
            _ => fail(url, -6, "Invalid url"),
        };
        results.push(result);
    }
    reply(results, session)
}
