//! FortiManager: JSON-RPC (`POST /jsonrpc`), 6.4 to 7.6, on one ADOM's object database.
//!
//! - Authentication is an API key in an `Authorization: Bearer` header (7.2.2 and later), or a
//!   login session (`exec sys/login/user`) that is renewed when a call answers `-11` (an expired
//!   session looks like that) and ended with `exec sys/logout` on shutdown.
//! - One call carries several requests (`params`), and the reply has one result per request;
//!   threatflow sends each run of like operations as one call.
//! - In workspace mode (`workspace-mode` not `disabled`), changes go lock, write, commit,
//!   unlock. An error that stops the apply unlocks without committing, so nothing half-done
//!   reaches the ADOM. A lock held by someone else (`-20055`) is reported with who holds it and
//!   retried later; it is never broken.
//! - After a change, the configured policy packages can be installed to their devices; the
//!   install task is polled until it ends, and a task with errors is reported with its lines.
//! - Object results map as FortiOS's do: `-2` (taken) reads the object and updates it only if
//!   it is this cluster's; `-3` on an update creates it again, on a delete is done; `-10015`
//!   (in use) leaves the delete for later.

use std::collections::BTreeSet;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::header::{HeaderMap, AUTHORIZATION};
use serde_json::{json, Value};

use super::fortigate::{parse_subnet, parse_version, table};
use super::{
    Applied, BoxFuture, Credentials, Family, Limits, Marker, Objects, Op, OpOutcome, Plan, Target,
    TargetError,
};
use crate::net::http::{self, HttpSettings};
use crate::net::rate::RateLimit;

mod relay;
pub mod rules;

/// The most requests one call carries.
const BATCH: usize = 100;

/// A policy package to install after a change, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    pub package: String,
    /// `(device, vdom)` pairs; empty installs to the package's own scope.
    pub scope: Vec<(String, String)>,
}

/// How to reach one FortiManager.
#[derive(Clone, Debug)]
pub struct FortiManagerSettings {
    /// `https://host[:port]`.
    pub url: String,
    pub adom: String,
    pub credentials: Credentials,
    pub http: HttpSettings,
    pub requests_per_second: f64,
    pub group_max_members: usize,
    pub marker: Marker,
    pub install: Vec<Install>,
    /// How often an install task is polled, and how long it may run.
    pub install_poll: Duration,
    pub install_timeout: Duration,
}

impl FortiManagerSettings {
    /// Settings for a client that only reads (rules, relayed FortiOS calls): no marker, no
    /// install.
    pub fn reader(
        url: &str,
        adom: &str,
        credentials: Credentials,
        http: HttpSettings,
    ) -> FortiManagerSettings {
        FortiManagerSettings {
            url: url.to_owned(),
            adom: adom.to_owned(),
            credentials,
            http,
            requests_per_second: 10.0,
            group_max_members: 2,
            marker: Marker::new(""),
            install: Vec::new(),
            install_poll: Duration::from_secs(3),
            install_timeout: Duration::from_secs(60),
        }
    }
}

/// A FortiManager as a [`Target`].
pub struct FortiManager {
    client: reqwest::Client,
    endpoint: String,
    settings: FortiManagerSettings,
    headers: HeaderMap,
    rate: RateLimit,
    session: Option<String>,
    /// `(major, minor, patch)`, the ADOM's FortiOS version, and whether writes need the
    /// workspace lock, once asked.
    version: Option<(u32, u32, u32)>,
    adom_version: Option<(u32, u32, u32)>,
    workspace: Option<bool>,
    /// This session holds the ADOM's workspace lock.
    locked: bool,
    /// Changes not installed yet (or an install that failed), for the next publish.
    install_pending: bool,
    /// The change in progress wrote something.
    changed: bool,
    next_id: u64,
}

impl std::fmt::Debug for FortiManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FortiManager")
            .field("endpoint", &self.endpoint)
            .field("adom", &self.settings.adom)
            .field("version", &self.version)
            .field("workspace", &self.workspace)
            .finish_non_exhaustive()
    }
}

/// One request's result.
#[derive(Clone, Debug)]
struct Outcome {
    code: i64,
    message: String,
    data: Value,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.code == 0
    }

    fn reason(&self) -> String {
        format!("{} (code {})", self.message, self.code)
    }

    /// The one object a call returned: FortiManager answers some calls with a list of one.
    fn single(&self) -> Value {
        match &self.data {
            Value::Array(items) => items.first().cloned().unwrap_or_default(),
            item => item.clone(),
        }
    }
}

/// `-11`: no permission, which is also how an expired session answers.
const NO_PERMISSION: i64 = -11;
const EXISTS: i64 = -2;
const MISSING: i64 = -3;
const LOCKED_BY_OTHER: i64 = -20055;

/// A name in a JSON-RPC URL: `/` must be written `\/`.
fn escape(name: &str) -> String {
    name.replace('/', "\\/")
}

fn address_data(family: Family, name: &str, net: &IpNet, marker: &Marker) -> Value {
    match net {
        IpNet::V4(v4) if family == Family::V4 => json!({
            "name": name,
            "type": "ipmask",
            "subnet": [v4.addr().to_string(), v4.netmask().to_string()],
            "comment": marker.comment(),
        }),
        _ => json!({
            "name": name,
            "type": "ipprefix",
            "ip6": net.to_string(),
            "comment": marker.comment(),
        }),
    }
}

fn group_data(name: &str, members: &BTreeSet<String>, marker: &Marker) -> Value {
    json!({ "name": name, "member": members, "comment": marker.comment() })
}

/// An address's prefix as FortiManager returns it: `["ip", "mask"]`, or a string.
fn read_subnet(value: &Value) -> Option<IpNet> {
    match value {
        Value::Array(parts) => {
            let parts: Vec<&str> = parts.iter().filter_map(Value::as_str).collect();
            parse_subnet(&parts.join(" "))
        }
        Value::String(text) => parse_subnet(text),
        _ => None,
    }
}

/// A group's members: a list of names, or (old builds) one string.
fn read_members(value: &Value) -> BTreeSet<String> {
    read_names(value).into_iter().collect()
}

/// A list field in order: a list of names (or of `{name}` objects), or (old builds) one name.
fn read_names(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(|item| item.as_str().or_else(|| item["name"].as_str()))
            .map(str::to_owned)
            .collect(),
        Value::String(text) if !text.is_empty() => vec![text.clone()],
        _ => Vec::new(),
    }
}

impl FortiManager {
    pub fn new(settings: FortiManagerSettings) -> Result<FortiManager, TargetError> {
        let client = http::client(&settings.http).map_err(|error| {
            TargetError::Setup(crate::telemetry::ErrorChain(&error).to_string())
        })?;
        let headers = match &settings.credentials {
            Credentials::ApiKey(key) => {
                http::secret_headers(&[(AUTHORIZATION.to_string(), format!("Bearer {key}"))])
                    .map_err(|_| {
                        TargetError::Setup("the API key is not a valid header value".into())
                    })?
            }
            Credentials::Login { .. } => HeaderMap::new(),
        };
        Ok(FortiManager {
            client,
            endpoint: format!("{}/jsonrpc", settings.url.trim_end_matches('/')),
            rate: RateLimit::per_second(settings.requests_per_second),
            headers,
            settings,
            session: None,
            version: None,
            adom_version: None,
            workspace: None,
            locked: false,
            install_pending: false,
            changed: false,
            next_id: 1,
        })
    }

    fn objects_url(&self, family: Family, group: bool) -> String {
        format!(
            "/pm/config/adom/{}/obj/firewall/{}",
            escape(&self.settings.adom),
            table(family, group)
        )
    }

    fn object_url(&self, family: Family, group: bool, name: &str) -> String {
        format!("{}/{}", self.objects_url(family, group), escape(name))
    }

    fn workspace_url(&self, action: &str) -> String {
        format!(
            "/dvmdb/adom/{}/workspace/{action}",
            escape(&self.settings.adom)
        )
    }

    /// One JSON-RPC call, without session handling.
    async fn post(
        &mut self,
        method: &str,
        params: &[Value],
    ) -> Result<(Vec<Outcome>, Value), TargetError> {
        self.rate.acquire().await;
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({
            "id": id,
            "method": method,
            "params": params,
            "session": self.session,
        });
        let request = self
            .client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let (status, bytes) = super::exchange(request).await?;
        let detail = || super::excerpt(&bytes);
        match status {
            200 => {}
            status if status >= 500 => {
                return Err(TargetError::Unavailable(format!(
                    "HTTP {status}: {}",
                    detail()
                )))
            }
            status => {
                return Err(TargetError::Protocol(format!(
                    "HTTP {status}: {}",
                    detail()
                )))
            }
        }
        let reply: Value = serde_json::from_slice(&bytes)
            .map_err(|_| TargetError::Protocol(format!("not a JSON-RPC reply: {}", detail())))?;
        let results = match &reply["result"] {
            Value::Array(results) => results.clone(),
            Value::Object(_) => vec![reply["result"].clone()],
            _ => return Err(TargetError::Protocol("the reply has no `result`".into())),
        };
        if results.len() != params.len() {
            return Err(TargetError::Protocol(format!(
                "{} results for {} requests",
                results.len(),
                params.len()
            )));
        }
        let outcomes = results
            .into_iter()
            .map(|result| Outcome {
                code: result["status"]["code"].as_i64().unwrap_or(-1),
                message: result["status"]["message"]
                    .as_str()
                    .unwrap_or("no status")
                    .to_owned(),
                data: result["data"].clone(),
            })
            .collect();
        Ok((outcomes, reply))
    }

    async fn login(&mut self) -> Result<(), TargetError> {
        let Credentials::Login { user, password } = self.settings.credentials.clone() else {
            return Ok(());
        };
        self.session = None;
        let params = [json!({
            "url": "sys/login/user",
            "data": { "user": user, "passwd": password },
        })];
        let (outcomes, reply) = self.post("exec", &params).await?;
        let session = reply["session"]
            .as_str()
            .filter(|session| !session.is_empty());
        match (&outcomes[0], session) {
            (outcome, Some(session)) if outcome.ok() => {
                self.session = Some(session.to_owned());
                Ok(())
            }
            (outcome, _) => Err(TargetError::Unauthorized {
                status: 200,
                detail: format!("login as {user}: {}", outcome.reason()),
            }),
        }
    }

    /// A call with session handling: logs in first when needed, and once more when the
    /// session has expired (unless the expired session held the workspace lock, which went
    /// with it).
    async fn call(
        &mut self,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Vec<Outcome>, TargetError> {
        let login = matches!(self.settings.credentials, Credentials::Login { .. });
        let mut renewed = false;
        loop {
            if login && self.session.is_none() {
                self.login().await?;
            }
            let (outcomes, _) = self.post(method, &params).await?;
            let expired = outcomes.iter().any(|outcome| outcome.code == NO_PERMISSION);
            if !login || !expired || renewed {
                return Ok(outcomes);
            }
            self.session = None;
            renewed = true;
            if self.locked {
                self.locked = false;
                return Err(TargetError::SessionExpired);
            }
        }
    }

    async fn call_one(&mut self, method: &str, param: Value) -> Result<Outcome, TargetError> {
        let mut outcomes = self.call(method, vec![param]).await?;
        Ok(outcomes.remove(0))
    }

    /// Learns the version and whether the workspace must be locked, once per session of
    /// this target.
    async fn discover(&mut self) -> Result<(), TargetError> {
        if self.version.is_some() && self.workspace.is_some() {
            return Ok(());
        }
        let adom = format!("/dvmdb/adom/{}", escape(&self.settings.adom));
        let outcomes = self
            .call(
                "get",
                vec![
                    json!({ "url": "/sys/status" }),
                    json!({ "url": "/cli/global/system/global", "fields": ["workspace-mode"] }),
                    json!({ "url": adom, "fields": ["os_ver", "mr", "workspace_mode"] }),
                ],
            )
            .await?;
        for outcome in &outcomes {
            if !outcome.ok() {
                return Err(access_error(
                    "reading the system status and the ADOM",
                    outcome,
                ));
            }
        }
        self.version = outcomes[0].data["Version"].as_str().and_then(parse_version);
        // The ADOM's FortiOS version decides what its objects may be (an empty group).
        let number = |value: &Value| {
            value.as_u64().or_else(|| {
                value
                    .as_str()
                    .and_then(|text| text.split('.').next()?.parse().ok())
            })
        };
        let adom_data = &outcomes[2].data;
        self.adom_version = number(&adom_data["os_ver"]).map(|major| {
            (
                major as u32,
                number(&adom_data["mr"]).unwrap_or(0) as u32,
                0,
            )
        });
        let off = |mode: &Value| {
            matches!(mode, Value::Null) || *mode == json!(0) || *mode == json!("disabled")
        };
        let global = &outcomes[1].data["workspace-mode"];
        let per_adom = *global == json!("per-adom") || *global == json!(3);
        self.workspace = Some(match per_adom {
            true => !off(&adom_data["workspace_mode"]),
            false => !off(global),
        });
        Ok(())
    }

    async fn read_owned(&mut self) -> Result<Objects, TargetError> {
        self.discover().await?;
        let kinds = [
            (Family::V4, false),
            (Family::V6, false),
            (Family::V4, true),
            (Family::V6, true),
        ];
        let params = kinds
            .iter()
            .map(|(family, group)| {
                json!({
                    "url": self.objects_url(*family, *group),
                    "fields": ["name", "comment", "subnet", "ip6", "member"],
                    "filter": ["comment", "like", "%threatflow%"],
                    "loadsub": 0,
                    "verbose": 1,
                })
            })
            .collect();
        let outcomes = self.call("get", params).await?;
        let mut objects = Objects::default();
        for ((family, group), outcome) in kinds.into_iter().zip(outcomes) {
            if outcome.code == MISSING {
                continue;
            }
            if !outcome.ok() {
                return Err(access_error(
                    &format!("listing {}", self.objects_url(family, group)),
                    &outcome,
                ));
            }
            let owned = outcome
                .data
                .as_array()
                .into_iter()
                .flatten()
                .filter(|object| self.settings.marker.owns(object["comment"].as_str()));
            for object in owned {
                let name = object["name"].as_str().unwrap_or_default().to_owned();
                if group {
                    objects
                        .groups
                        .insert((family, name), read_members(&object["member"]));
                } else {
                    let field = match family {
                        Family::V4 => "subnet",
                        Family::V6 => "ip6",
                    };
                    if let Some(net) = read_subnet(&object[field]) {
                        objects.addresses.insert((family, name), net);
                    }
                }
            }
        }
        Ok(objects)
    }

    /// The request for one operation: its method and parameters.
    fn request(&self, op: &Op) -> (&'static str, Value) {
        let marker = &self.settings.marker;
        match op {
            Op::CreateAddress { family, name, net } => (
                "add",
                json!({ "url": self.objects_url(*family, false), "data": address_data(*family, name, net, marker) }),
            ),
            Op::UpdateAddress { family, name, net } => (
                "update",
                json!({ "url": self.object_url(*family, false, name), "data": address_data(*family, name, net, marker) }),
            ),
            Op::CreateGroup {
                family,
                name,
                members,
            } => (
                "add",
                json!({ "url": self.objects_url(*family, true), "data": group_data(name, members, marker) }),
            ),
            Op::UpdateGroup {
                family,
                name,
                members,
            } => (
                "update",
                json!({ "url": self.object_url(*family, true, name), "data": group_data(name, members, marker) }),
            ),
            Op::DeleteGroup { family, name } => (
                "delete",
                json!({ "url": self.object_url(*family, true, name) }),
            ),
            Op::DeleteAddress { family, name } => (
                "delete",
                json!({ "url": self.object_url(*family, false, name) }),
            ),
        }
    }

    /// The data an operation writes, for a follow-up request.
    fn data(&self, op: &Op) -> Value {
        self.request(op).1["data"].clone()
    }

    fn is_group(op: &Op) -> bool {
        op.object() == "group"
    }

    /// What a first result means, with the follow-up a taken name or a missing object needs.
    async fn settle(&mut self, op: &Op, first: Outcome) -> Result<OpOutcome, TargetError> {
        let (family, name, group) = (op.family(), op.name().to_owned(), Self::is_group(op));
        Ok(match (op.verb(), first.code) {
            (_, 0) => OpOutcome::Done,
            ("create", EXISTS) => {
                let url = self.object_url(family, group, &name);
                let existing = self
                    .call_one("get", json!({ "url": url, "fields": ["name", "comment"] }))
                    .await?;
                let comment = existing.data["comment"].as_str().map(str::to_owned);
                if existing.ok() && self.settings.marker.owns(comment.as_deref()) {
                    let update = json!({ "url": url, "data": self.data(op) });
                    refused_unless_ok(self.call_one("update", update).await?)
                } else {
                    OpOutcome::Conflict {
                        owner: comment.filter(|comment| !comment.is_empty()),
                    }
                }
            }
            ("update", MISSING) => {
                let add = json!({ "url": self.objects_url(family, group), "data": self.data(op) });
                refused_unless_ok(self.call_one("add", add).await?)
            }
            ("delete", MISSING) => OpOutcome::Done,
            ("delete", -10015 | -20013) => OpOutcome::InUse,
            _ => OpOutcome::Refused {
                reason: first.reason(),
            },
        })
    }

    /// Runs the plan's operations, each run of like ones as one call. Objects to update or
    /// delete are read first (one call per run): one that is gone is created again (update) or
    /// done (delete), one that is not this cluster's any more is left alone.
    async fn write(&mut self, plan: &Plan, applied: &mut Applied) -> Result<(), TargetError> {
        let mut start = 0;
        while start < plan.ops.len() {
            let kind = |op: &Op| (op.verb(), op.object(), op.family());
            let mut end = start + 1;
            while end < plan.ops.len()
                && end - start < BATCH
                && kind(&plan.ops[end]) == kind(&plan.ops[start])
            {
                end += 1;
            }
            let mut send = Vec::new();
            let mut recreate = Vec::new();
            for index in start..end {
                if plan.ops[index].name().is_empty() {
                    // Never a table URL: a delete there purges the table.
                    applied.outcomes.push((
                        index,
                        OpOutcome::Refused {
                            reason: "an object needs a name".into(),
                        },
                    ));
                } else {
                    send.push(index);
                }
            }
            if plan.ops[start].verb() != "create" && !send.is_empty() {
                let checks = send
                    .iter()
                    .map(|index| {
                        let op = &plan.ops[*index];
                        json!({ "url": self.object_url(op.family(), Self::is_group(op), op.name()), "fields": ["name", "comment"] })
                    })
                    .collect();
                let checks = self.call("get", checks).await?;
                let mut owned = Vec::new();
                for (index, check) in send.into_iter().zip(checks) {
                    let comment = check.data["comment"].as_str();
                    match (check.code, plan.ops[index].verb()) {
                        (MISSING, "delete") => applied.outcomes.push((index, OpOutcome::Done)),
                        (MISSING, _) => recreate.push(index),
                        (0, _) if self.settings.marker.owns(comment) => owned.push(index),
                        (0, _) => applied.outcomes.push((
                            index,
                            OpOutcome::Conflict {
                                owner: comment.filter(|c| !c.is_empty()).map(str::to_owned),
                            },
                        )),
                        _ => applied.outcomes.push((
                            index,
                            OpOutcome::Refused {
                                reason: check.reason(),
                            },
                        )),
                    }
                }
                send = owned;
            }
            if !send.is_empty() {
                let (method, _) = self.request(&plan.ops[send[0]]);
                let params = send
                    .iter()
                    .map(|index| self.request(&plan.ops[*index]).1)
                    .collect();
                let outcomes = self.call(method, params).await?;
                for (index, first) in send.into_iter().zip(outcomes) {
                    let outcome = self.settle(&plan.ops[index], first).await?;
                    applied.outcomes.push((index, outcome));
                }
            }
            for index in recreate {
                let op = &plan.ops[index];
                let add = json!({ "url": self.objects_url(op.family(), Self::is_group(op)), "data": self.data(op) });
                let outcome = refused_unless_ok(self.call_one("add", add).await?);
                applied.outcomes.push((index, outcome));
            }
            start = end;
        }
        Ok(())
    }

    async fn workspace(&mut self, action: &str) -> Result<Outcome, TargetError> {
        let url = self.workspace_url(action);
        self.call_one("exec", json!({ "url": url })).await
    }

    async fn lock(&mut self) -> Result<(), TargetError> {
        let outcome = self.workspace("lock").await?;
        if outcome.ok() {
            self.locked = true;
            return Ok(());
        }
        if outcome.code == LOCKED_BY_OTHER {
            let url = self.workspace_url("lockinfo");
            let info = self.call_one("get", json!({ "url": url })).await?;
            let holder = |field: &str| {
                info.data[0][field].as_str().map(str::to_owned).or_else(|| {
                    info.data[0][field]
                        .as_i64()
                        .map(|number| number.to_string())
                })
            };
            let by = match (holder("lock_user"), holder("lock_sid")) {
                (Some(user), Some(sid)) => format!("{user} (session {sid})"),
                (Some(user), None) => user,
                _ => "another session".to_owned(),
            };
            return Err(TargetError::Locked { by });
        }
        Err(TargetError::Protocol(format!(
            "locking ADOM {}: {}",
            self.settings.adom,
            outcome.reason()
        )))
    }

    /// Releases the lock; a failure is only logged (the lock ends with the session anyway).
    async fn unlock(&mut self) {
        match self.workspace("unlock").await {
            Ok(outcome) if outcome.ok() => {}
            Ok(outcome) => {
                tracing::warn!(adom = %self.settings.adom, reason = %outcome.reason(), "cannot unlock the FortiManager workspace")
            }
            Err(error) => {
                tracing::warn!(adom = %self.settings.adom, %error, "cannot unlock the FortiManager workspace")
            }
        }
        self.locked = false;
    }

    /// Installs one package and follows its task to the end.
    async fn install(&mut self, install: &Install) -> Result<(), TargetError> {
        let failed = |reason: String| TargetError::Install {
            package: install.package.clone(),
            reason,
        };
        let scope: Vec<Value> = install
            .scope
            .iter()
            .map(|(device, vdom)| json!({ "name": device, "vdom": vdom }))
            .collect();
        let mut data = json!({
            "adom": self.settings.adom,
            "pkg": install.package,
            "flags": ["none"],
        });
        if !scope.is_empty() {
            data["scope"] = Value::Array(scope);
        }
        let started = self
            .call_one(
                "exec",
                json!({ "url": "/securityconsole/install/package", "data": data }),
            )
            .await?;
        if !started.ok() {
            return Err(failed(started.reason()));
        }
        let Some(task) = started.data["task"].as_i64() else {
            return Err(failed("the reply names no task".into()));
        };
        let deadline = tokio::time::Instant::now() + self.settings.install_timeout;
        loop {
            tokio::time::sleep(self.settings.install_poll).await;
            let state = self
                .call_one("get", json!({ "url": format!("/task/task/{task}") }))
                .await?;
            if !state.ok() {
                return Err(failed(format!("reading task {task}: {}", state.reason())));
            }
            let percent = state.data["percent"].as_i64().unwrap_or(0);
            if percent >= 100 {
                let errors = state.data["num_err"].as_i64().unwrap_or(0);
                if errors == 0 {
                    tracing::info!(package = %install.package, task, "installed the policy package");
                    return Ok(());
                }
                let lines: Vec<String> = state.data["line"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|line| line["err"].as_i64().unwrap_or(0) != 0)
                    .map(|line| {
                        format!(
                            "{}: {}",
                            line["name"].as_str().unwrap_or("?"),
                            line["detail"].as_str().unwrap_or("failed")
                        )
                    })
                    .collect();
                return Err(failed(format!(
                    "task {task} ended with {errors} error(s): {}",
                    lines.join("; ")
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(failed(format!(
                    "task {task} still at {percent}% after {} s",
                    self.settings.install_timeout.as_secs()
                )));
            }
        }
    }
}

fn refused_unless_ok(outcome: Outcome) -> OpOutcome {
    if outcome.ok() {
        OpOutcome::Done
    } else {
        OpOutcome::Refused {
            reason: outcome.reason(),
        }
    }
}

/// A read refused: `-11` is a permission (or credentials) problem, the rest unexpected.
fn access_error(what: &str, outcome: &Outcome) -> TargetError {
    if outcome.code == NO_PERMISSION {
        TargetError::Unauthorized {
            status: 200,
            detail: format!(
                "{what}: {} (the admin needs JSON API access: rpc-permit read for reading rules, read-write for address sync)",
                outcome.reason()
            ),
        }
    } else {
        TargetError::Protocol(format!("{what}: {}", outcome.reason()))
    }
}

impl Target for FortiManager {
    fn read(&mut self) -> BoxFuture<'_, Result<Objects, TargetError>> {
        Box::pin(self.read_owned())
    }

    fn limits(&self) -> Limits {
        Limits {
            name_max: 79,
            group_max_members: self.settings.group_max_members,
            empty_groups: self
                .adom_version
                .or(self.version)
                .is_some_and(|version| version >= (7, 2, 0)),
        }
    }

    fn begin(&mut self) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async move {
            self.changed = false;
            self.discover().await?;
            if self.workspace == Some(true) {
                self.lock().await?;
            }
            Ok(())
        })
    }

    fn apply<'a>(&'a mut self, plan: &'a Plan) -> BoxFuture<'a, Applied> {
        Box::pin(async move {
            let mut applied = Applied::default();
            if let Err(error) = self.write(plan, &mut applied).await {
                applied.error = Some(error);
            }
            self.changed |= applied
                .outcomes
                .iter()
                .any(|(_, outcome)| *outcome == OpOutcome::Done);
            applied
        })
    }

    fn finish(&mut self, keep: bool) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async move {
            let committed = match (self.locked, keep && self.changed) {
                (true, true) => match self.workspace("commit").await {
                    Ok(outcome) if outcome.ok() => Ok(()),
                    Ok(outcome) => Err(TargetError::NotKept(format!(
                        "committing ADOM {}: {}",
                        self.settings.adom,
                        outcome.reason()
                    ))),
                    Err(error) => Err(error),
                },
                _ => Ok(()),
            };
            if self.locked {
                // Without a commit, what this change wrote is discarded.
                self.unlock().await;
            }
            committed?;
            if keep && self.changed && !self.settings.install.is_empty() {
                self.install_pending = true;
            }
            Ok(())
        })
    }

    fn publish(&mut self) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async move {
            if !self.install_pending {
                return Ok(());
            }
            for install in self.settings.install.clone() {
                self.install(&install).await?;
            }
            self.install_pending = false;
            Ok(())
        })
    }

    fn has_pending_work(&self) -> bool {
        self.install_pending
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.locked {
                // A sync stopped half-way: drop its changes and the lock.
                self.unlock().await;
            }
            if self.session.is_none() {
                return;
            }
            if let Err(error) = self.call_one("exec", json!({ "url": "sys/logout" })).await {
                tracing::debug!(%error, "FortiManager logout failed");
            }
            self.session = None;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_members_read_in_every_form() {
        assert_eq!(
            read_subnet(&json!(["10.0.0.5", "255.255.255.255"])).map(|net| net.to_string()),
            Some("10.0.0.5/32".into())
        );
        assert_eq!(
            read_subnet(&json!("10.0.0.0/24")).map(|net| net.to_string()),
            Some("10.0.0.0/24".into())
        );
        assert_eq!(read_members(&json!(["a", "b"])).len(), 2);
        assert_eq!(read_members(&json!("a")), BTreeSet::from(["a".to_owned()]));
        assert!(read_members(&json!([])).is_empty());
        assert_eq!(escape("10.0.0.0/8"), "10.0.0.0\\/8");
    }

    #[test]
    fn credentials_never_print() {
        let key = format!("{:?}", Credentials::ApiKey("s3cret".into()));
        let login = format!(
            "{:?}",
            Credentials::Login {
                user: "api".into(),
                password: "s3cret".into()
            }
        );
        assert!(
            !key.contains("s3cret") && !login.contains("s3cret"),
            "{key} {login}"
        );
    }
}
