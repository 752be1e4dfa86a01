//! A Panorama test double speaking the PAN-OS XML API (`GET|POST /api/`) on the loopback HTTP
//! harness. It follows `panorama-apis.md` §1–4 and the checklist in §7, as far as a rule reader,
//! a static-object writer and an IP→tag registrar need:
//!
//! - the surface: `/api` and `/api/`, parameters from the query string and a form-encoded body
//!   (the body's value wins), API errors as HTTP 200, no `<?xml?>` prolog, a 5 MB request cap;
//! - auth: `type=keygen` (answers and 403s in the single-quoted `status = '…'` style), keys from
//!   `X-PAN-KEY`, `key=` or HTTP Basic; a key remembers the password it was made with, so a
//!   password change kills it; keygen invalidates the user's earlier keys (a knob);
//! - two XML trees, candidate and running, seeded with Panorama's device entry and one
//!   `device-group` entry per knob, `/config/shared` and `/config/predefined` (the two predefined
//!   services and the two default security rules);
//! - an XPath subset: absolute steps, `[@name='a' or @name="b"]` (also `concat(…)` literals),
//!   `[text()='x']`, a trailing `/@name`; anything else is `code="6"`;
//! - `type=config`: `get` (candidate; changed nodes and their ancestors carry `admin`,
//!   `dirtyId` and `time` until a commit covers them), `show` (running, undecorated), `set`
//!   (merge, creating missing steps), `edit` (replace in place; the element's root must be the
//!   xpath's last step), `delete` (idempotent; refused with `code="10"` while a rule or group
//!   names the object); name limits (63 for addresses, groups, services and rules, 127 for
//!   tags, 2047 for a dynamic filter, 64 tags per object) as `code="12"`;
//! - `type=commit`: `<commit>` enqueues a `Commit` job unless nothing changed;
//!   `action=all` with `<commit-all><shared-policy><device-group>` enqueues a `CommitAll` job
//!   for the device group's direct members;
//! - `type=op`: `show jobs id`, `show config audit info`, `check pending-changes`,
//!   `show system info`;
//! - `type=user-id` (§4, §7 items 7–8): a `uid-message` (version 1.0, 2.0 or none) in `cmd`
//!   (query or form) or a multipart `file`, relayed with `target=<serial>` to that firewall's
//!   registered-IP table or, without it, into Panorama's own ([`PANORAMA_TABLE`]); an unknown
//!   serial is `<line>SERIAL not connected</line>`. `register`/`unregister` keep per IP a set
//!   of tags (no reference counting), each with a `timeout` (0 or none: never; at most
//!   2592000) on the double's clock; re-registering notes `tag X already exists, ignore` (and
//!   restarts the timer, a knob), unregistering a missing tag notes `tag X does not exist,
//!   ignore unreg`, the 33rd tag of an IP, a tag over 127 characters or holding a quote, and a
//!   bad timeout or ip are noted and skipped, the rest of the batch applies; an IP left without
//!   tags leaves the table. `clear` takes `registered-ip` with `all`, `ip` or `tag`;
//!   `login`, `logout`, `groups`, `register-user` and `unregister-user` are accepted and
//!   ignored. Hosts are stored in canonical form, ranges and networks (a knob) as given;
//! - read-back: `show object registered-ip` (`all`, `ip`, `tag/entry[@name]`, or no selector;
//!   `limit` ≤ 500 and 1-based `start-point`; by IP, IPv4 first) and `show object
//!   dynamic-address-group` (`name` or `all`): relayed to a firewall, each running-config
//!   dynamic group of its device group(s) and shared, with members evaluated over that
//!   firewall's registered IPs and tagged address objects; on Panorama itself the
//!   `device-groups` shape with empty `member-list`s;
//! - hooks: the request log, scripted faults, a failing next job, a refused next commit, an
//!   admin's edits and commits made without the API, and for User-ID the tables, time left on
//!   a tag, another writer's registrations, the clock ([`Panorama::advance`]), a group's
//!   members on a firewall, and message and entry counts.
//!
//! Jobs advance only when polled: a job answers `ACT`/`PEND` to its first `job_polls` polls, then
//! finishes. A commit takes a snapshot of the candidate when it is enqueued and makes it the
//! running config when the job finishes (a failed job changes nothing), so a client that reads
//! `show` before its job is done sees the old config, as on a real Panorama.
//!
//! Registrations expire lazily: every User-ID read or write, and every hook, first drops the
//! tags whose time is up on the double's clock, which is the real one plus what tests added
//! with [`Panorama::advance`]. A firewall's dynamic groups come from Panorama's running config
//! (not from what was last pushed to it) and reflect a registration at once.
//!
//! Left out: `rename`, `move`, `clone`, `override` and `multi-config` (answered like an unknown
//! action, so a client that starts using them fails loudly here first), partial commits (a
//! `<partial>` commit commits everything), validate-only pushes, config and commit locks,
//! `target=` proxying beyond User-ID and the two `show object` reads (other requests with a
//! known `target` are answered by Panorama itself), per-vsys tables (`vsys` is accepted and
//! only echoed in `dyn-addr-grp` entries), tag inheritance from registered ranges and
//! networks, `not` in dynamic filters, the User-ID side of logins and user tags, Data
//! Redistribution, per-key roles (`code="16"`), the schema (only the one-of choices of
//! addresses, groups and service protocols are known), and scope-aware references: a
//! `<member>` anywhere in the candidate that names a deleted address or service counts as a
//! reference. Message wordings marked unverified in the reference (and the User-ID notes other
//! than "already exists" and "does not exist") are plausible, not copied from a box; clients
//! should key on codes and on `status`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use parking_lot::Mutex;

use super::fortigate::with_fault;
pub use super::fortigate::Fault;
use super::http::{decode, HttpServer, Reply, Request};

/// Panorama's own device entry; every device-group xpath starts here.
pub const PANO: &str = "/config/devices/entry[@name='localhost.localdomain']";

/// What pan-os-python recognises when a commit is refused because another one runs.
pub const COMMIT_IN_PROGRESS: &str =
    "Another commit/validate is in progress. Please try again later";

/// The xpath of a device group.
pub fn device_group(name: &str) -> String {
    format!("{PANO}/device-group/entry[@name='{name}']")
}

/// The largest request PAN-OS accepts.
const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

/// The registered-IP table of Panorama itself (a User-ID request without `target`).
pub const PANORAMA_TABLE: &str = "panorama";

/// The most tags PAN-OS keeps for one registered IP.
pub const MAX_TAGS_PER_IP: usize = 32;

/// The longest member `timeout` (30 days), in seconds.
pub const MAX_TAG_TIMEOUT_SECS: u64 = 2_592_000;

/// The most entries one `show object registered-ip` page may ask for.
const MAX_REGISTERED_IP_LIMIT: usize = 500;

const FORBIDDEN: &str =
    "<response status = 'error' code = '403'><result><msg>Invalid Credential</msg></result></response>";
const COMMAND_SUCCEEDED: &str =
    r#"<response status="success" code="20"><msg>command succeeded</msg></response>"#;

/// How the Panorama behaves.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// The API administrator that `keygen` and HTTP Basic accept.
    pub user: String,
    /// Its password; [`Panorama::set_password`] changes it.
    pub password: String,
    /// Device groups, each with the serials of the firewalls directly in it.
    pub device_groups: BTreeMap<String, Vec<String>>,
    /// What `show system info` reports.
    pub hostname: String,
    /// Panorama's own serial.
    pub serial: String,
    /// `11.1.0` by default.
    pub sw_version: String,
    /// Polls a job answers `ACT` before it finishes.
    pub job_polls: u32,
    /// Whether `keygen` invalidates the user's earlier keys, as PAN-OS does.
    pub keygen_rotates: bool,
    /// The `<line>` of a `code="6"` reply (the real wording is unverified).
    pub bad_xpath_message: String,
    /// Whether registering a tag an IP already has restarts the tag's timeout (the entry is
    /// still reported `tag X already exists, ignore`). Unverified on a real box; on by default.
    pub refresh_on_reregister: bool,
    /// Whether User-ID accepts ranges `a-b` and networks `a/len` as `ip` (PAN-OS 10.0+);
    /// they are kept as given.
    pub ranges: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            user: "svc-threatflow".into(),
            password: "pan-password".into(),
            device_groups: BTreeMap::from([(
                "DG-K8S".to_owned(),
                vec!["007051000050926".to_owned()],
            )]),
            hostname: "panorama-1".into(),
            serial: "000710000123".into(),
            sw_version: "11.1.0".into(),
            job_polls: 1,
            keygen_rotates: true,
            bad_xpath_message: "Bad Xpath".into(),
            refresh_on_reregister: true,
            ranges: true,
        }
    }
}

/// One API request as the double read it.
#[derive(Clone, Debug, Default)]
pub struct ApiCall {
    /// `GET` or `POST`.
    pub method: String,
    /// The `type` parameter: `keygen`, `config`, `op`, `commit`, …
    pub kind: String,
    pub action: Option<String>,
    pub xpath: Option<String>,
    /// `cmd`, or for `type=user-id` the multipart `file` that stood in for it.
    pub cmd: Option<String>,
    pub element: Option<String>,
    /// The firewall serial the request is relayed to.
    pub target: Option<String>,
    pub vsys: Option<String>,
    /// How the caller presented a key: `header`, `param`, `basic` or `none`.
    pub auth: &'static str,
}

/// What a job does (its `<type>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// A commit of the candidate to Panorama's running config.
    Commit,
    /// A push to device groups' firewalls.
    CommitAll,
}

/// A commit or push job.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: u64,
    pub kind: JobKind,
    /// Who enqueued it.
    pub user: String,
    /// The commit's `<description>`.
    pub description: String,
    /// The device groups a push covers (none for a commit).
    pub device_groups: Vec<String>,
    /// The serials a push goes to.
    pub devices: Vec<String>,
    /// The detail it fails with (from `fail_next_job`).
    pub fail: Option<String>,
    /// Times `show jobs id` asked about it.
    pub polls: u32,
    /// Whether it reached `FIN`.
    pub finished: bool,
    enqueued: String,
    finished_at: String,
    /// For a commit: the candidate when it was enqueued, and the last change id it covers.
    snapshot: Option<(Node, u64)>,
}

struct State {
    knobs: Knobs,
    candidate: Node,
    running: Node,
    /// Key -> (user, the password it was made with).
    keys: BTreeMap<String, (String, String)>,
    keygens: usize,
    /// The `dirtyId` the next change gets.
    next_change: u64,
    jobs: Vec<Job>,
    /// `show config audit info`: (timestamp, admin, description), oldest first.
    audit: Vec<(String, String, String)>,
    faults: VecDeque<Fault>,
    log: Vec<ApiCall>,
    fail_next_job: Option<String>,
    refuse_next_commit: Option<String>,
    uid: UserId,
}

/// A running Panorama double.
#[derive(Clone)]
pub struct Panorama {
    pub server: HttpServer,
    state: Arc<Mutex<State>>,
}

impl Panorama {
    /// Serves HTTPS under the test PKI in `dir`.
    pub async fn start(dir: &std::path::Path, knobs: Knobs) -> Panorama {
        let tree = seed(&knobs);
        let state = Arc::new(Mutex::new(State {
            knobs,
            candidate: tree.clone(),
            running: tree,
            keys: BTreeMap::new(),
            keygens: 0,
            next_change: 1,
            jobs: Vec::new(),
            audit: vec![(now(), "admin".into(), "initial configuration".into())],
            faults: VecDeque::new(),
            log: Vec::new(),
            fail_next_job: None,
            refuse_next_commit: None,
            uid: UserId::default(),
        }));
        let handler_state = state.clone();
        let server = HttpServer::start_tls(dir, move |request| {
            if !matches!(request.path(), "/api" | "/api/") {
                return Reply::status(404, "<html><body>Not Found</body></html>");
            }
            let params = Params::read(request);
            let mut state = handler_state.lock();
            state.log.push(params.call(request));
            let fault = state.faults.pop_front();
            with_fault(fault, || respond(&mut state, request, &params))
        })
        .await;
        Panorama { server, state }
    }

    /// `https://localhost:PORT` (the API is under `/api/`).
    pub fn url(&self) -> String {
        self.server.base.clone()
    }

    /// The next requests misbehave, one fault each (they are still logged).
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().faults.extend(faults);
    }

    /// Every API request so far, faulted ones included.
    pub fn requests(&self) -> Vec<ApiCall> {
        self.state.lock().log.clone()
    }

    /// How many API requests came in.
    pub fn calls(&self) -> usize {
        self.state.lock().log.len()
    }

    /// Successful `keygen` requests so far.
    pub fn keygens(&self) -> usize {
        self.state.lock().keygens
    }

    /// The API admin's password changes; every key made with the old one stops working.
    pub fn set_password(&self, password: &str) {
        self.state.lock().knobs.password = password.into();
    }

    /// A key for the API admin made beforehand (as one stored in a Secret).
    pub fn preset_key(&self, key: &str) {
        let mut state = self.state.lock();
        let owner = (state.knobs.user.clone(), state.knobs.password.clone());
        state.keys.insert(key.into(), owner);
    }

    /// "Expire All API Keys".
    pub fn expire_keys(&self) {
        self.state.lock().keys.clear();
    }

    /// The next job enqueued through the API fails with this detail.
    pub fn fail_next_job(&self, detail: &str) {
        self.state.lock().fail_next_job = Some(detail.into());
    }

    /// The next commit or push is refused with this message (e.g. [`COMMIT_IN_PROGRESS`]).
    pub fn refuse_next_commit(&self, message: &str) {
        self.state.lock().refuse_next_commit = Some(message.into());
    }

    /// Every commit and push job so far, oldest first.
    pub fn jobs(&self) -> Vec<Job> {
        self.state.lock().jobs.clone()
    }

    /// An admin replaces the node at `xpath` in the candidate (as `edit` does).
    pub fn admin_edit(&self, xpath: &str, element: &str) {
        self.admin_write("edit", xpath, element);
    }

    /// An admin merges `element` into the node at `xpath` in the candidate (as `set` does).
    pub fn admin_set(&self, xpath: &str, element: &str) {
        self.admin_write("set", xpath, element);
    }

    fn admin_write(&self, action: &str, xpath: &str, element: &str) {
        let path = XPath::parse(xpath).unwrap_or_else(|| panic!("bad xpath {xpath}"));
        if let Err(refused) = self.state.lock().write(action, &path, element, "admin") {
            panic!("admin {action} of {xpath}: {refused}");
        }
    }

    /// An admin deletes the node at `xpath` from the candidate, references permitting.
    pub fn admin_delete(&self, xpath: &str) {
        let path = XPath::parse(xpath).unwrap_or_else(|| panic!("bad xpath {xpath}"));
        if let Err(refused) = self.state.lock().delete(&path, "admin") {
            panic!("admin delete of {xpath}: {refused}");
        }
    }

    /// An admin commits: the running config becomes the candidate at once and the audit log
    /// gains an entry. The finished job's id, or `None` when there was nothing to commit.
    pub fn admin_commit(&self) -> Option<u64> {
        let mut state = self.state.lock();
        let id = state.enqueue_commit("admin", String::new(), None)?;
        let index = state.jobs.len() - 1;
        state.finish(index);
        Some(id)
    }

    /// The running config's node(s) at `xpath`, serialized (names only for a trailing `/@name`).
    pub fn running_xml(&self, xpath: &str) -> Option<String> {
        let path = XPath::parse(xpath).unwrap_or_else(|| panic!("bad xpath {xpath}"));
        select_xml(&self.state.lock().running, &path)
    }

    /// The candidate config's node(s) at `xpath`, serialized without change decorations.
    pub fn candidate_xml(&self, xpath: &str) -> Option<String> {
        let path = XPath::parse(xpath).unwrap_or_else(|| panic!("bad xpath {xpath}"));
        select_xml(&self.state.lock().candidate, &path)
    }

    /// The live registrations of a table ([`PANORAMA_TABLE`] or a firewall's serial): each IP
    /// with its tags. Expired tags are dropped first.
    pub fn registered(&self, table: &str) -> BTreeMap<String, BTreeSet<String>> {
        let mut state = self.state.lock();
        state.uid.expire();
        state
            .uid
            .tables
            .get(table)
            .map(|ips| {
                ips.iter()
                    .map(|(ip, registration)| {
                        (ip.clone(), registration.tags.keys().cloned().collect())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How long a registered tag has left; `None` when it never expires or is not registered
    /// (tell the two apart with [`Panorama::registered`]).
    pub fn tag_expiry(&self, table: &str, ip: &str, tag: &str) -> Option<Duration> {
        let mut state = self.state.lock();
        state.uid.expire();
        let now = state.uid.now();
        let expiry = *state
            .uid
            .tables
            .get(table)?
            .get(&canonical(ip))?
            .tags
            .get(tag)?;
        expiry.map(|at| at.saturating_duration_since(now))
    }

    /// Another writer (a second controller, an admin's script) registers `tags` on `ip` in a
    /// table, never expiring. No limits are checked.
    pub fn register_as_other(&self, table: &str, ip: &str, tags: &[&str]) {
        let mut state = self.state.lock();
        assert!(
            table == PANORAMA_TABLE || state.is_managed(table),
            "no registered-ip table {table}"
        );
        let ip = uid_ip(ip, true).unwrap_or_else(|message| panic!("{message}"));
        state.uid.expire();
        let registration = state
            .uid
            .tables
            .entry(table.to_owned())
            .or_default()
            .entry(ip)
            .or_insert_with(Registration::new);
        for tag in tags {
            registration.tags.insert((*tag).to_owned(), None);
        }
    }

    /// Moves the User-ID clock forward: tags whose timeout passes expire.
    pub fn advance(&self, by: Duration) {
        self.state.lock().uid.offset += by;
    }

    /// The members a firewall reports for a dynamic address group (registered IPs, then
    /// address objects), as `show object dynamic-address-group` with `target=serial` lists them.
    pub fn dag_members(&self, serial: &str, group: &str) -> Vec<String> {
        let mut state = self.state.lock();
        state.uid.expire();
        state
            .firewall_groups(serial)
            .iter()
            .find(|dag| dag.name == group)
            .map(|dag| {
                state
                    .members(serial, dag)
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `type=user-id` requests that passed authentication.
    pub fn uid_messages(&self) -> usize {
        self.state.lock().uid.messages
    }

    /// `register` and `unregister` entries received in User-ID messages.
    pub fn uid_entries(&self) -> usize {
        self.state.lock().uid.entries
    }
}

fn select_xml(tree: &Node, path: &XPath) -> Option<String> {
    let items = selected(tree, path, false);
    (!items.is_empty()).then(|| items.concat())
}

/// Request parameters: the query string's, then a form body's (a later value wins). A
/// `multipart/form-data` body (`curl -F key=… -F file=@msg.xml`) gives one parameter per part.
struct Params(Vec<(String, String)>);

impl Params {
    fn read(request: &Request) -> Params {
        let query = request
            .target
            .split_once('?')
            .map_or("", |(_, query)| query);
        let content_type = request.header("content-type").map(str::to_ascii_lowercase);
        let form = content_type
            .as_deref()
            .is_none_or(|value| value.starts_with("application/x-www-form-urlencoded"));
        let body = if request.method == "POST" && form {
            request.body_text()
        } else {
            String::new()
        };
        let mut pairs: Vec<(String, String)> = [query, body.as_str()]
            .into_iter()
            .flat_map(|text| text.split('&'))
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (decode(name), decode(value))
            })
            .collect();
        let multipart = content_type
            .as_deref()
            .is_some_and(|value| value.starts_with("multipart/form-data"));
        if request.method == "POST" && multipart {
            let header = request.header("content-type").unwrap_or_default();
            if let Some(boundary) = boundary(header) {
                pairs.extend(multipart_parts(&request.body_text(), &boundary));
            }
        }
        Params(pairs)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn call(&self, request: &Request) -> ApiCall {
        let owned = |name| self.get(name).map(str::to_owned);
        ApiCall {
            method: request.method.clone(),
            kind: owned("type").unwrap_or_default(),
            action: owned("action"),
            xpath: owned("xpath"),
            cmd: owned("cmd").or_else(|| owned("file")),
            element: owned("element"),
            target: owned("target"),
            vsys: owned("vsys"),
            auth: presented(request, self),
        }
    }
}

/// The `boundary` parameter of a `multipart/form-data` content type.
fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The (name, content) of each part of a multipart body; parts without a name are skipped.
fn multipart_parts(body: &str, boundary: &str) -> Vec<(String, String)> {
    let delimiter = format!("--{boundary}");
    body.split(delimiter.as_str())
        .skip(1)
        .take_while(|part| !part.starts_with("--"))
        .filter_map(|part| {
            let part = part.strip_prefix("\r\n").unwrap_or(part);
            let (head, content) = part.split_once("\r\n\r\n")?;
            let content = content.strip_suffix("\r\n").unwrap_or(content);
            let disposition = head.split("\r\n").find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then_some(value)
            })?;
            let name = disposition.split(';').find_map(|parameter| {
                let value = parameter.trim().strip_prefix("name=")?;
                Some(value.trim_matches('"').to_owned())
            })?;
            Some((name, content.to_owned()))
        })
        .collect()
}

/// Which way the caller offered credentials, in the order PAN-OS looks at them.
fn presented(request: &Request, params: &Params) -> &'static str {
    if request.header("x-pan-key").is_some() {
        "header"
    } else if params.get("key").is_some() {
        "param"
    } else if basic(request).is_some() {
        "basic"
    } else {
        "none"
    }
}

/// The user and password of an `Authorization: Basic` header.
fn basic(request: &Request) -> Option<(String, String)> {
    let encoded = request.header("authorization")?.strip_prefix("Basic ")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn respond(state: &mut State, request: &Request, params: &Params) -> Reply {
    if !matches!(request.method.as_str(), "GET" | "POST") {
        return Reply::status(405, "");
    }
    if request.body.len() + request.target.len() > MAX_BODY_BYTES {
        return Reply::status(413, "<html><body>Request Entity Too Large</body></html>");
    }
    let kind = params.get("type").unwrap_or_default();
    if kind == "keygen" {
        return state.keygen(params);
    }
    let Some(user) = state.caller(request, params) else {
        return forbidden();
    };
    match kind {
        "config" => state.config(params, &user),
        "commit" => state.commit(params, &user),
        "op" => state.op(params),
        "user-id" => state.user_id(params),
        other => bad_request(&format!("Illegal value for parameter \"type\" [{other}].")),
    }
}

impl State {
    fn accepts(&self, user: &str, password: &str) -> bool {
        user == self.knobs.user && password == self.knobs.password
    }

    /// The user a request acts as: the owner of a key still valid, or Basic credentials.
    fn caller(&self, request: &Request, params: &Params) -> Option<String> {
        let key = request.header("x-pan-key").or(params.get("key"));
        if let Some(key) = key {
            let (user, password) = self.keys.get(key)?;
            return self.accepts(user, password).then(|| user.clone());
        }
        let (user, password) = basic(request)?;
        self.accepts(&user, &password).then_some(user)
    }

    fn keygen(&mut self, params: &Params) -> Reply {
        let user = params.get("user").unwrap_or_default().to_owned();
        let password = params.get("password").unwrap_or_default().to_owned();
        if !self.accepts(&user, &password) {
            return forbidden();
        }
        self.keygens += 1;
        if self.knobs.keygen_rotates {
            self.keys.retain(|_, (owner, _)| *owner != user);
        }
        // Real keys are base64 too, with `+`, `/` and `=` a client must encode.
        let key = base64::engine::general_purpose::STANDARD.encode(format!(
            "LUFRPT1{user}:{}:{}",
            self.keygens,
            now()
        ));
        self.keys.insert(key.clone(), (user, password));
        xml(format!(
            "<response status = 'success'><result><key>{}</key></result></response>",
            escape(&key)
        ))
    }

    fn config(&mut self, params: &Params, user: &str) -> Reply {
        let action = params.get("action").unwrap_or_default();
        if !matches!(action, "get" | "show" | "set" | "edit" | "delete") {
            return bad_request(&format!(
                "Illegal value for parameter \"action\" [{action}]."
            ));
        }
        let Some(xpath) = XPath::parse(params.get("xpath").unwrap_or_default()) else {
            return self.bad_xpath().reply();
        };
        let outcome = match action {
            "get" => return read(&self.candidate, &xpath, true),
            "show" => return read(&self.running, &xpath, false),
            "delete" => self.delete(&xpath, user),
            _ => match params.get("element") {
                Some(element) => self.write(action, &xpath, element, user).map(|()| true),
                None => return bad_request("Parameter \"element\" is required."),
            },
        };
        match outcome {
            Ok(true) => xml(COMMAND_SUCCEEDED),
            Ok(false) => xml(
                r#"<response status="success" code="7"><msg>Object doesn't exist</msg></response>"#,
            ),
            Err(refused) => refused.reply(),
        }
    }

    fn bad_xpath(&self) -> Refused {
        Refused::plain(Some(6), &self.knobs.bad_xpath_message)
    }

    /// The `admin`/`dirtyId`/`time` marks of the next change.
    fn change(&self, user: &str) -> Change {
        Change {
            admin: user.into(),
            id: self.next_change,
            time: now(),
        }
    }

    /// `set` or `edit` on the candidate as `user`; the candidate is left alone on refusal.
    fn write(
        &mut self,
        action: &str,
        xpath: &XPath,
        element: &str,
        user: &str,
    ) -> Result<(), Refused> {
        if xpath.names_only {
            return Err(self.bad_xpath());
        }
        let incoming = parse_xml(&format!("<fragment>{element}</fragment>"))
            .map_err(|_| Refused::plain(Some(18), "Malformed Request"))?;
        let change = self.change(user);
        let mut tree = self.candidate.clone();
        let (path, created) = create_path(&mut tree, &xpath.steps)?;
        let target = tree.at_mut(&path);
        let changed = if action == "set" {
            merge(target, incoming, &change)
        } else {
            let last = xpath.steps.last().expect("a parsed xpath has a step");
            let [replacement] = incoming.children.as_slice() else {
                return Err(Refused::cdata(12, " edit needs exactly one element"));
            };
            let one_name = !matches!(&last.filter, Filter::Names(names) if names.len() > 1);
            if !(one_name && last.matches(replacement)) {
                return Err(Refused::cdata(
                    12,
                    format!(" {} does not match the xpath's last node", replacement.name),
                ));
            }
            let differs = replacement.xml(false) != target.xml(false);
            if differs {
                *target = replacement.clone();
                target.mark(&change);
            }
            differs
        };
        let parent = match path.split_last() {
            Some((_, above)) => tree.at(above).name.clone(),
            None => String::new(),
        };
        check_limits(tree.at(&path), &parent)?;
        if changed || created {
            tree.mark_path(&path, &change);
            self.next_change += 1;
        }
        self.candidate = tree;
        Ok(())
    }

    /// Deletes every node at `xpath` from the candidate; `false` when there was none.
    fn delete(&mut self, xpath: &XPath, user: &str) -> Result<bool, Refused> {
        if xpath.names_only {
            return Err(self.bad_xpath());
        }
        let mut tree = self.candidate.clone();
        let paths = locate(&tree, &xpath.steps);
        if paths.is_empty() {
            return Ok(false);
        }
        if paths.iter().any(Vec::is_empty) {
            return Err(Refused::plain(Some(15), "Operation denied"));
        }
        // Every match has the same depth, so removing back to front keeps the other indices.
        let mut removed = Vec::new();
        for path in paths.iter().rev() {
            let (index, above) = path.split_last().expect("not the root");
            let parent = tree.at_mut(above);
            let node = parent.children.remove(*index);
            if let Some(name) = node.attr("name") {
                removed.push((parent.name.clone(), name.to_owned()));
            }
        }
        // References are looked for after the removal, so a group and its member can go together.
        for (kind, name) in &removed {
            let Some(lists) = referring_lists(kind) else {
                continue;
            };
            if let Some(trail) = find_reference(&tree, name, lists, &mut Vec::new()) {
                return Err(Refused::cdata(
                    10,
                    format!(" {name} cannot be deleted because of references from:"),
                )
                .with_line(format!(" {trail}")));
            }
        }
        let change = self.change(user);
        for path in &paths {
            tree.mark_path(&path[..path.len() - 1], &change);
        }
        self.next_change += 1;
        self.candidate = tree;
        Ok(true)
    }

    fn pending(&self) -> bool {
        self.candidate.xml(false) != self.running.xml(false)
    }

    fn next_job_id(&self) -> u64 {
        self.jobs.len() as u64 + 1
    }

    /// Enqueues a commit of the whole candidate; `None` when it equals the running config.
    fn enqueue_commit(
        &mut self,
        user: &str,
        description: String,
        fail: Option<String>,
    ) -> Option<u64> {
        if !self.pending() {
            // Changes that were undone leave nothing to commit, and no marks either.
            self.candidate.clear_marks(u64::MAX);
            return None;
        }
        let id = self.next_job_id();
        self.jobs.push(Job {
            id,
            kind: JobKind::Commit,
            user: user.into(),
            description,
            device_groups: Vec::new(),
            devices: Vec::new(),
            fail,
            polls: 0,
            finished: false,
            enqueued: now(),
            finished_at: String::new(),
            snapshot: Some((self.candidate.clone(), self.next_change - 1)),
        });
        Some(id)
    }

    /// A job ends; a successful commit lands in the running config and the audit log.
    fn finish(&mut self, index: usize) {
        let time = now();
        let job = &mut self.jobs[index];
        job.finished = true;
        job.finished_at = time.clone();
        let snapshot = job.snapshot.take();
        if job.fail.is_some() {
            return;
        }
        let Some((mut running, covered)) = snapshot else {
            return;
        };
        let (admin, description) = (job.user.clone(), job.description.clone());
        running.clear_marks(u64::MAX);
        self.running = running;
        self.candidate.clear_marks(covered);
        self.audit.push((time, admin, description));
    }

    fn commit(&mut self, params: &Params, user: &str) -> Reply {
        let Some(cmd) = params.get("cmd") else {
            return bad_request("Parameter \"cmd\" is required.");
        };
        let Ok(command) = parse_xml(cmd) else {
            return Refused::plain(Some(18), "Malformed Request").reply();
        };
        if let Some(message) = self.refuse_next_commit.take() {
            return Refused::plain(None, &message).reply();
        }
        match (
            params.get("action").unwrap_or_default(),
            command.name.as_str(),
        ) {
            ("" | "partial", "commit") => {
                let fail = self.fail_next_job.take();
                match self.enqueue_commit(user, description(&command), fail.clone()) {
                    Some(id) => enqueued("Commit", id),
                    None => {
                        // Nothing to commit: the scripted failure waits for a real job.
                        self.fail_next_job = fail;
                        xml(
                            r#"<response status="success" code="19"><msg>There are no changes to commit.</msg></response>"#,
                        )
                    }
                }
            }
            ("all", "commit-all") => match self.push(&command, user) {
                Ok(id) => enqueued("Push", id),
                Err(refused) => refused.reply(),
            },
            (action, root) => {
                Refused::cdata(17, format!(" {root} (action {action:?}) is unexpected")).reply()
            }
        }
    }

    /// Enqueues a push of `<commit-all><shared-policy>…` to the named device groups.
    fn push(&mut self, command: &Node, user: &str) -> Result<u64, Refused> {
        let policy = command
            .child("shared-policy")
            .ok_or_else(|| Refused::cdata(17, " commit-all -> shared-policy is missing"))?;
        let groups: Vec<&Node> = policy
            .child("device-group")
            .map(|found| {
                found
                    .children
                    .iter()
                    .filter(|node| node.name == "entry")
                    .collect()
            })
            .unwrap_or_default();
        if groups.is_empty() {
            return Err(Refused::cdata(
                17,
                " commit-all -> shared-policy -> device-group is missing",
            ));
        }
        let (mut names, mut devices) = (Vec::new(), Vec::new());
        for group in groups {
            let name = group.attr("name").unwrap_or_default();
            let Some(members) = self.knobs.device_groups.get(name) else {
                return Err(Refused::plain(
                    None,
                    &format!("Device group {name} does not exist"),
                ));
            };
            // Without `<devices>` the push goes to every firewall directly in the group.
            let chosen: Vec<String> = match group.child("devices") {
                Some(listed) => listed
                    .children
                    .iter()
                    .filter_map(|entry| entry.attr("name"))
                    .map(str::to_owned)
                    .collect(),
                None => members.clone(),
            };
            if let Some(stranger) = chosen.iter().find(|serial| !members.contains(serial)) {
                return Err(Refused::plain(
                    None,
                    &format!("Device {stranger} is not in device group {name}"),
                ));
            }
            names.push(name.to_owned());
            devices.extend(chosen);
        }
        let id = self.next_job_id();
        let fail = self.fail_next_job.take();
        self.jobs.push(Job {
            id,
            kind: JobKind::CommitAll,
            user: user.into(),
            description: description(policy),
            device_groups: names,
            devices,
            fail,
            polls: 0,
            finished: false,
            enqueued: now(),
            finished_at: String::new(),
            snapshot: None,
        });
        Ok(id)
    }

    fn op(&mut self, params: &Params) -> Reply {
        let Some(cmd) = params.get("cmd") else {
            return bad_request("Parameter \"cmd\" is required.");
        };
        let Ok(command) = parse_xml(cmd) else {
            return Refused::plain(Some(18), "Malformed Request").reply();
        };
        let table = match self.table(params) {
            Ok(table) => table,
            Err(refused) => return refused.reply(),
        };
        // `show object registered-ip` and `show object dynamic-address-group` take several
        // children, so they are told apart before the one-child walk below.
        if let (true, [object]) = (command.name == "show", command.children.as_slice()) {
            if let (true, [query]) = (object.name == "object", object.children.as_slice()) {
                match query.name.as_str() {
                    "registered-ip" => return self.show_registered(&table, query),
                    "dynamic-address-group" => {
                        let vsys = params.get("vsys").unwrap_or("vsys1");
                        return self.show_dynamic_groups(&table, vsys, query);
                    }
                    _ => {}
                }
            }
        }
        // `<show><jobs><id>4</id></jobs></show>` reads as `show jobs id`, with `4` left on `id`.
        let mut words = vec![command.name.as_str()];
        let mut last = &command;
        while let [only] = last.children.as_slice() {
            words.push(only.name.as_str());
            last = only;
        }
        match words.as_slice() {
            ["show", "jobs", "id"] => match last.text.trim().parse() {
                Ok(id) => self.poll_job(id),
                Err(_) => Refused::cdata(17, " show -> jobs -> id is invalid").reply(),
            },
            ["show", "config", "audit", "info"] => {
                let mut entries = String::new();
                for (index, (time, admin, description)) in self.audit.iter().enumerate() {
                    let _ = write!(entries, "<entry name=\"{}\">", index + 1);
                    let fields = [
                        ("timestamp", time),
                        ("admin", admin),
                        ("description", description),
                    ];
                    elements(
                        &mut entries,
                        &fields.map(|(name, text)| (name, text.as_str())),
                    );
                    entries.push_str("</entry>");
                }
                xml(format!(
                    "<response status=\"success\"><result>{entries}</result></response>"
                ))
            }
            ["check", "pending-changes"] => xml(format!(
                "<response status=\"success\"><result>{}</result></response>",
                if self.pending() { "yes" } else { "no" }
            )),
            ["show", "system", "info"] => {
                let mut system = String::new();
                elements(
                    &mut system,
                    &[
                        ("hostname", &self.knobs.hostname),
                        ("ip-address", "127.0.0.1"),
                        ("model", "Panorama"),
                        ("serial", &self.knobs.serial),
                        ("sw-version", &self.knobs.sw_version),
                        ("system-mode", "panorama"),
                    ],
                );
                xml(format!("<response status=\"success\"><result><system>{system}</system></result></response>"))
            }
            _ => Refused::cdata(17, format!(" {} is unexpected", words.join(" -> "))).reply(),
        }
    }

    /// One `show jobs id` poll: the job advances, then reports.
    fn poll_job(&mut self, id: u64) -> Reply {
        let Some(index) = self.jobs.iter().position(|job| job.id == id) else {
            return Refused::plain(None, &format!("job {id} not found")).reply();
        };
        if !self.jobs[index].finished {
            self.jobs[index].polls += 1;
            if self.jobs[index].polls > self.knobs.job_polls {
                self.finish(index);
            }
        }
        let job = self.jobs[index].xml(self.knobs.job_polls);
        xml(format!(
            "<response status=\"success\"><result>{job}</result></response>"
        ))
    }
}

impl Job {
    /// The `<job>` of a `show jobs id` reply (shape from the demisto fixtures).
    fn xml(&self, job_polls: u32) -> String {
        let (status, result, progress, tfin) = match (self.finished, &self.fail) {
            (false, _) => (
                "ACT",
                "PEND",
                self.polls * 100 / (job_polls + 1),
                "Still Active",
            ),
            (true, None) => ("FIN", "OK", 100, self.finished_at.as_str()),
            (true, Some(_)) => ("FIN", "FAIL", 100, self.finished_at.as_str()),
        };
        let kind = match self.kind {
            JobKind::Commit => "Commit",
            JobKind::CommitAll => "CommitAll",
        };
        let (id, progress) = (self.id.to_string(), progress.to_string());
        let mut out = String::from("<job>");
        elements(
            &mut out,
            &[
                ("tenq", &self.enqueued),
                ("tdeq", clock(&self.enqueued)),
                ("id", &id),
                ("user", &self.user),
                ("type", kind),
                ("status", status),
                ("queued", "NO"),
                ("stoppable", "no"),
                ("result", result),
                ("tfin", tfin),
                ("description", &self.description),
                ("positionInQ", "0"),
                ("progress", &progress),
                ("warnings", ""),
            ],
        );
        out.push_str("<details>");
        if let (true, Some(detail)) = (self.finished, &self.fail) {
            elements(&mut out, &[("line", detail)]);
        }
        out.push_str("</details>");
        if self.kind == JobKind::CommitAll {
            let group = self.device_groups.first().map_or("", String::as_str);
            elements(
                &mut out,
                &[("push_type", "shared-policy"), ("dgname", group)],
            );
            out.push_str("<devices>");
            for serial in &self.devices {
                self.push_device_xml(&mut out, serial, group);
            }
            out.push_str("</devices>");
        }
        out.push_str("</job>");
        out
    }

    /// One firewall's `<entry>` in a push job's `<devices>`.
    fn push_device_xml(&self, out: &mut String, serial: &str, group: &str) {
        let (status, result, line) = match (self.finished, &self.fail) {
            (false, _) => ("commit in progress", "PEND", ""),
            (true, None) => (
                "commit succeeded",
                "OK",
                "Configuration committed successfully",
            ),
            (true, Some(detail)) => ("commit failed", "FAIL", detail.as_str()),
        };
        let end = if self.finished {
            clock(&self.finished_at)
        } else {
            ""
        };
        out.push_str("<entry>");
        elements(
            out,
            &[
                ("serial-no", serial),
                ("devicename", &format!("fw-{serial}")),
                ("multi-vsys", "no"),
                ("status", status),
                ("result", result),
                ("tstart", clock(&self.enqueued)),
                ("tfin", end),
            ],
        );
        out.push_str("<details>");
        if self.finished {
            let verdict = if self.fail.is_none() {
                "success"
            } else {
                "failure"
            };
            let _ = write!(
                out,
                "<msg cmd=\"push-data\" dname=\"{}\" dgname=\"{}\" jobid=\"{}\" result=\"{verdict}\"><errors>",
                escape_attribute(serial),
                escape_attribute(group),
                self.id
            );
            elements(out, &[("line", line)]);
            out.push_str("</errors><warnings></warnings></msg>");
        }
        out.push_str("</details></entry>");
    }
}

/// `<name>text</name>` for each pair, the text escaped.
fn elements(out: &mut String, fields: &[(&str, &str)]) {
    for (name, text) in fields {
        let _ = write!(out, "<{name}>{}</{name}>", escape(text));
    }
}

/// The serialized nodes `xpath` selects, or `<entry name="…"/>` for each when it ends in `/@name`.
fn selected(tree: &Node, xpath: &XPath, decorated: bool) -> Vec<String> {
    locate(tree, &xpath.steps)
        .iter()
        .map(|path| tree.at(path))
        .filter_map(|node| match xpath.names_only {
            true => node
                .attr("name")
                .map(|name| format!("<{} name=\"{}\"/>", node.name, escape_attribute(name))),
            false => Some(node.xml(decorated)),
        })
        .collect()
}

/// A `get` (decorated, from the candidate) or `show` (from the running config).
fn read(tree: &Node, xpath: &XPath, candidate: bool) -> Reply {
    let items = selected(tree, xpath, candidate);
    match (items.is_empty(), candidate) {
        (true, true) => xml(r#"<response status="success" code="7"><result/></response>"#),
        (true, false) => Refused::plain(None, "No such node").reply(),
        // `show` answers without a code or counts (from memory of real output; unverified).
        (false, false) => xml(format!(
            "<response status=\"success\"><result>{}</result></response>",
            items.concat()
        )),
        (false, true) => xml(format!(
            "<response status=\"success\" code=\"19\"><result total-count=\"{0}\" count=\"{0}\">{1}</result></response>",
            items.len(),
            items.concat()
        )),
    }
}

/// The `<description>` of a commit command, if any.
fn description(command: &Node) -> String {
    command
        .child("description")
        .map(|found| found.text.clone())
        .unwrap_or_default()
}

fn enqueued(what: &str, id: u64) -> Reply {
    xml(format!("<response status=\"success\" code=\"19\"><result><msg><line>{what} job enqueued with jobid {id}</line></msg><job>{id}</job></result></response>"))
}

/// A bad key or bad credentials: HTTP 403 with the API's envelope, as PAN-OS answers.
fn forbidden() -> Reply {
    Reply::status(403, FORBIDDEN).with_header("Content-Type", "application/xml; charset=UTF-8")
}

fn xml(body: impl Into<String>) -> Reply {
    Reply::ok(body.into()).with_header("Content-Type", "application/xml; charset=UTF-8")
}

/// A parameter problem, in the single-quoted style PAN-OS uses for them.
fn bad_request(message: &str) -> Reply {
    xml(format!(
        "<response status = 'error' code = '400'><result><msg>{}</msg></result></response>",
        escape(message)
    ))
}

/// A refused request: `status="error"`, its code if it has one, and the `<msg>` lines.
#[derive(Debug)]
struct Refused {
    code: Option<u32>,
    lines: Vec<String>,
    /// Whether the lines are CDATA sections (as schema and reference errors are).
    cdata: bool,
}

impl Refused {
    fn plain(code: Option<u32>, line: &str) -> Refused {
        Refused {
            code,
            lines: vec![line.into()],
            cdata: false,
        }
    }

    fn cdata(code: u32, line: impl Into<String>) -> Refused {
        Refused {
            code: Some(code),
            lines: vec![line.into()],
            cdata: true,
        }
    }

    fn with_line(mut self, line: impl Into<String>) -> Refused {
        self.lines.push(line.into());
        self
    }

    fn reply(&self) -> Reply {
        let code = self
            .code
            .map(|code| format!(" code=\"{code}\""))
            .unwrap_or_default();
        let lines: String = self
            .lines
            .iter()
            .map(|line| match self.cdata {
                true => format!(
                    "<line><![CDATA[{}]]></line>",
                    line.replace("]]>", "]]]]><![CDATA[>")
                ),
                false => format!("<line>{}</line>", escape(line)),
            })
            .collect();
        xml(format!(
            "<response status=\"error\"{code}><msg>{lines}</msg></response>"
        ))
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {:?}: {}", self.code, self.lines.join(" /"))
    }
}

/// `YYYY/MM/DD hh:mm:ss`, the format of `time=`, job and audit timestamps (UTC here).
fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y/%m/%d %H:%M:%S")
        .to_string()
}

/// The `hh:mm:ss` of a timestamp, as `tdeq` and device times show it.
fn clock(timestamp: &str) -> &str {
    timestamp
        .split_once(' ')
        .map_or(timestamp, |(_, time)| time)
}

fn seed(knobs: &Knobs) -> Node {
    let mut groups = String::new();
    for (name, serials) in &knobs.device_groups {
        let devices: String = serials
            .iter()
            .map(|serial| format!("<entry name=\"{}\"/>", escape_attribute(serial)))
            .collect();
        let _ = write!(
            groups,
            "<entry name=\"{}\"><devices>{devices}</devices></entry>",
            escape_attribute(name)
        );
    }
    let rule = |name: &str, action: &str, kind: &str| {
        format!("<entry name=\"{name}\"><action>{action}</action><log-start>no</log-start><log-end>no</log-end><rule-type>{kind}</rule-type></entry>")
    };
    let service = |name: &str, ports: &str| {
        format!(
            "<entry name=\"{name}\"><protocol><tcp><port>{ports}</port></tcp></protocol></entry>"
        )
    };
    parse_xml(&format!(
        "<config version=\"{}\"><devices><entry name=\"localhost.localdomain\"><device-group>{groups}</device-group></entry></devices><shared/><predefined><service>{}{}</service><default-security-rules><rules>{}{}</rules></default-security-rules></predefined></config>",
        escape_attribute(&knobs.sw_version),
        service("service-http", "80,8080"),
        service("service-https", "443"),
        rule("intrazone-default", "allow", "intrazone"),
        rule("interzone-default", "deny", "interzone"),
    ))
    .expect("the seed config is well-formed")
}

// --- User-ID ---------------------------------------------------------------------------------

/// One registered IP.
#[derive(Clone, Debug)]
struct Registration {
    /// `persistent` as the last `register` of the IP gave it (`1` until one does).
    persistent: String,
    /// Each tag with the instant it expires at (`None`: never).
    tags: BTreeMap<String, Option<Instant>>,
}

impl Registration {
    fn new() -> Registration {
        Registration {
            persistent: "1".into(),
            tags: BTreeMap::new(),
        }
    }
}

/// The User-ID side: the registered-IP tables, the clock their tags expire on, counters.
#[derive(Default)]
struct UserId {
    /// [`PANORAMA_TABLE`] or a firewall's serial -> IP -> its registration.
    tables: BTreeMap<String, BTreeMap<String, Registration>>,
    /// How far the double's clock runs ahead of the real one ([`Panorama::advance`]).
    offset: Duration,
    messages: usize,
    entries: usize,
}

impl UserId {
    fn now(&self) -> Instant {
        Instant::now() + self.offset
    }

    /// Drops expired tags, and the IPs left without one.
    fn expire(&mut self) {
        let now = self.now();
        for table in self.tables.values_mut() {
            table.retain(|_, registration| {
                registration
                    .tags
                    .retain(|_, expiry| expiry.is_none_or(|at| at > now));
                !registration.tags.is_empty()
            });
        }
    }

    /// A table for writing, expired tags dropped.
    fn table(&mut self, table: &str) -> &mut BTreeMap<String, Registration> {
        self.expire();
        self.tables.entry(table.to_owned()).or_default()
    }
}

/// Children of a `<payload>` that are accepted and not modelled.
const UID_IGNORED: [&str; 5] = [
    "login",
    "logout",
    "groups",
    "register-user",
    "unregister-user",
];

/// The per-entry notes of a uid-message, as (ip, message).
#[derive(Default)]
struct UidNotes {
    register: Vec<(String, String)>,
    unregister: Vec<(String, String)>,
}

impl UidNotes {
    /// Clean: `status="success"` and empty lists; any note: `status="error"` with the
    /// `uid-response` inside `msg/line` (the batch was applied all the same).
    fn reply(&self) -> Reply {
        let list = |name: &str, notes: &[(String, String)]| {
            if notes.is_empty() {
                return format!("<{name}/>");
            }
            let entries: String = notes
                .iter()
                .map(|(ip, message)| {
                    format!(
                        "<entry ip=\"{}\" message=\"{}\"/>",
                        escape_attribute(ip),
                        escape_attribute(message)
                    )
                })
                .collect();
            format!("<{name}>{entries}</{name}>")
        };
        let response = format!(
            "<uid-response><version>2.0</version><payload>{}{}</payload></uid-response>",
            list("register", &self.register),
            list("unregister", &self.unregister)
        );
        if self.register.is_empty() && self.unregister.is_empty() {
            xml(format!(
                "<response status=\"success\"><result>{response}</result></response>"
            ))
        } else {
            xml(format!(
                "<response status=\"error\"><msg><line>{response}</line></msg></response>"
            ))
        }
    }
}

/// A dynamic address group a firewall evaluates.
struct Dag {
    /// Its device group; `None` for a shared one.
    device_group: Option<String>,
    name: String,
    filter: String,
}

impl State {
    /// The registered-IP table a request works on: its `target`'s, or Panorama's own.
    fn table(&self, params: &Params) -> Result<String, Refused> {
        match params.get("target").filter(|serial| !serial.is_empty()) {
            None => Ok(PANORAMA_TABLE.to_owned()),
            Some(serial) if self.is_managed(serial) => Ok(serial.to_owned()),
            // Panorama says "<serial> not connected" for a firewall it cannot reach (a
            // pan-os-python report); an unknown serial is assumed to answer alike (unverified).
            Some(serial) => Err(Refused::plain(None, &format!("{serial} not connected"))),
        }
    }

    /// Whether a firewall of this serial is in one of the device groups.
    fn is_managed(&self, serial: &str) -> bool {
        self.knobs
            .device_groups
            .values()
            .any(|serials| serials.iter().any(|known| known == serial))
    }

    /// `type=user-id`: a uid-message in `cmd` (or a multipart `file`).
    fn user_id(&mut self, params: &Params) -> Reply {
        self.uid.messages += 1;
        let table = match self.table(params) {
            Ok(table) => table,
            Err(refused) => return refused.reply(),
        };
        let Some(cmd) = params.get("cmd").or(params.get("file")) else {
            return bad_request("Parameter \"cmd\" is required.");
        };
        let Ok(message) = parse_xml(cmd) else {
            return Refused::plain(Some(18), "Malformed Request").reply();
        };
        // A message the double does not understand changes nothing.
        if let Err(line) = check_uid_message(&message) {
            return Refused::plain(None, &line).reply();
        }
        let mut notes = UidNotes::default();
        let Some(payload) = message.child("payload") else {
            return notes.reply();
        };
        for part in &payload.children {
            let entries = part.children.iter().filter(|entry| entry.name == "entry");
            match part.name.as_str() {
                "register" => {
                    for entry in entries {
                        self.uid.entries += 1;
                        register(&self.knobs, &mut self.uid, &table, entry, &mut notes);
                    }
                }
                "unregister" => {
                    for entry in entries {
                        self.uid.entries += 1;
                        unregister(&self.knobs, &mut self.uid, &table, entry, &mut notes);
                    }
                }
                "clear" => clear(&mut self.uid, &table, part),
                _ => {}
            }
        }
        notes.reply()
    }

    /// `show object registered-ip` with `all`, `ip` and/or `tag/entry[@name]`, `limit` and
    /// `start-point`; no selector reads everything (pango sends only `limit` and
    /// `start-point`), `ip` and `tag` together must both match.
    fn show_registered(&mut self, table: &str, query: &Node) -> Reply {
        let (mut ip, mut tags, mut limit, mut start) = (None, Vec::new(), usize::MAX, 1);
        let out_of_range = |what: &str, text: &str| {
            Refused::cdata(
                17,
                format!(" show -> object -> registered-ip -> {what} {text} is out of range"),
            )
            .reply()
        };
        for child in &query.children {
            let text = child.text.trim();
            match child.name.as_str() {
                "all" => {}
                "ip" => ip = Some(canonical(text)),
                "tag" => tags.extend(
                    child
                        .children
                        .iter()
                        .filter(|entry| entry.name == "entry")
                        .filter_map(|entry| entry.attr("name")),
                ),
                "limit" => match text.parse() {
                    Ok(value) if (1..=MAX_REGISTERED_IP_LIMIT).contains(&value) => limit = value,
                    _ => return out_of_range("limit", text),
                },
                "start-point" => match text.parse() {
                    Ok(value) if value >= 1 => start = value,
                    _ => return out_of_range("start-point", text),
                },
                other => {
                    return Refused::cdata(
                        17,
                        format!(" show -> object -> registered-ip -> {other} is unexpected"),
                    )
                    .reply()
                }
            }
        }
        self.uid.expire();
        let mut found: Vec<(&String, &Registration)> = self
            .uid
            .tables
            .get(table)
            .into_iter()
            .flatten()
            .filter(|(address, _)| ip.as_ref().is_none_or(|wanted| wanted == *address))
            .filter(|(_, registration)| {
                tags.is_empty() || tags.iter().any(|tag| registration.tags.contains_key(*tag))
            })
            .collect();
        found.sort_by_key(|(address, _)| ip_order(address));
        let page: Vec<_> = found.into_iter().skip(start - 1).take(limit).collect();
        let mut out = String::new();
        for (address, registration) in &page {
            let _ = write!(
                out,
                "<entry ip=\"{}\" from_agent=\"0\" persistent=\"{}\"><tag>",
                escape_attribute(address),
                escape_attribute(&registration.persistent)
            );
            for tag in registration.tags.keys() {
                elements(&mut out, &[("member", tag)]);
            }
            out.push_str("</tag></entry>");
        }
        xml(format!(
            "<response status=\"success\"><result>{out}<count>{}</count></result></response>",
            page.len()
        ))
    }

    /// `show object dynamic-address-group` with `name` or `all`. Relayed to a firewall, each
    /// running-config group of its device group(s) and shared, with members; on Panorama
    /// itself, the groups per device group with an empty `member-list`.
    fn show_dynamic_groups(&mut self, table: &str, vsys: &str, query: &Node) -> Reply {
        let wanted = match query.children.as_slice() {
            [name] if name.name == "name" => Some(name.text.trim().to_owned()),
            [all] if all.name == "all" => None,
            _ => {
                return Refused::cdata(
                    17,
                    " show -> object -> dynamic-address-group needs name or all",
                )
                .reply()
            }
        };
        let chosen = |name: &str| wanted.as_deref().is_none_or(|wanted| wanted == name);
        if table == PANORAMA_TABLE {
            let scopes = std::iter::once(("shared", None)).chain(
                self.knobs
                    .device_groups
                    .keys()
                    .map(|dg| (dg.as_str(), Some(dg.as_str()))),
            );
            let mut out = String::new();
            for (label, dg) in scopes {
                let groups: String = scope_node(&self.running, dg)
                    .map(dynamic_groups)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|(name, _)| chosen(name))
                    .map(|(name, filter)| {
                        format!(
                            "<address-group name=\"{}\"><filter>{}</filter><member-list/></address-group>",
                            escape_attribute(&name),
                            escape(&filter)
                        )
                    })
                    .collect();
                if !groups.is_empty() {
                    let _ = write!(
                        out,
                        "<entry name=\"{}\">{groups}</entry>",
                        escape_attribute(label)
                    );
                }
            }
            return xml(format!(
                "<response status=\"success\"><result><device-groups>{out}</device-groups></result></response>"
            ));
        }
        self.uid.expire();
        let mut out = String::new();
        for dag in self.firewall_groups(table) {
            if !chosen(&dag.name) {
                continue;
            }
            out.push_str("<entry>");
            if dag.device_group.is_some() {
                elements(&mut out, &[("vsys", vsys)]);
            }
            elements(
                &mut out,
                &[("group-name", &dag.name), ("filter", &dag.filter)],
            );
            let members = self.members(table, &dag);
            if members.is_empty() {
                out.push_str("<member-list/>");
            } else {
                out.push_str("<member-list>");
                for (name, kind) in members {
                    let _ = write!(
                        out,
                        "<entry name=\"{}\" type=\"{kind}\"/>",
                        escape_attribute(&name)
                    );
                }
                out.push_str("</member-list>");
            }
            out.push_str("</entry>");
        }
        xml(format!(
            "<response status=\"success\"><result><dyn-addr-grp>{out}</dyn-addr-grp></result></response>"
        ))
    }

    /// The running config's dynamic address groups a firewall has: its device groups' (the
    /// first of a name wins), then shared ones not shadowed by them.
    fn firewall_groups(&self, serial: &str) -> Vec<Dag> {
        let mut found: Vec<Dag> = Vec::new();
        let groups = self
            .knobs
            .device_groups
            .iter()
            .filter(|(_, serials)| serials.iter().any(|known| known == serial))
            .map(|(dg, _)| Some(dg.as_str()))
            .chain([None]);
        for dg in groups {
            let Some(scope) = scope_node(&self.running, dg) else {
                continue;
            };
            for (name, filter) in dynamic_groups(scope) {
                if found.iter().all(|dag| dag.name != name) {
                    found.push(Dag {
                        device_group: dg.map(str::to_owned),
                        name,
                        filter,
                    });
                }
            }
        }
        found
    }

    /// A group's members on a firewall: its registered IPs whose tags satisfy the filter (by
    /// IP), then the running config's address objects whose tags do (by name; a device-group
    /// object shadows a shared one; a shared group sees only shared objects). A filter that
    /// does not parse matches nothing. Expired tags must have been dropped.
    fn members(&self, serial: &str, dag: &Dag) -> Vec<(String, &'static str)> {
        let Some(criteria) = Criteria::parse(&dag.filter) else {
            return Vec::new();
        };
        let mut ips: Vec<&String> = self
            .uid
            .tables
            .get(serial)
            .into_iter()
            .flatten()
            .filter(|(_, registration)| {
                criteria.matches(&|tag| registration.tags.contains_key(tag))
            })
            .map(|(ip, _)| ip)
            .collect();
        ips.sort_by_key(|ip| ip_order(ip));
        let mut members: Vec<(String, &'static str)> = ips
            .into_iter()
            .map(|ip| (ip.clone(), "registered-ip"))
            .collect();
        let mut objects: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut scopes = vec![None];
        scopes.extend(dag.device_group.as_deref().map(Some));
        for dg in scopes {
            if let Some(scope) = scope_node(&self.running, dg) {
                objects.extend(tagged_addresses(scope));
            }
        }
        members.extend(
            objects
                .into_iter()
                .filter(|(_, tags)| criteria.matches(&|tag| tags.iter().any(|has| has == tag)))
                .map(|(name, _)| (name, "address-object")),
        );
        members
    }
}

/// What the double refuses in a uid-message as a whole (nothing is applied then).
fn check_uid_message(message: &Node) -> Result<(), String> {
    if message.name != "uid-message" {
        return Err(format!(
            "{} unexpected here, uid-message expected",
            message.name
        ));
    }
    for child in &message.children {
        let text = child.text.trim();
        match child.name.as_str() {
            "version" if matches!(text, "1.0" | "2.0") => {}
            "version" => return Err(format!("uid-message version {text} is not supported")),
            "type" if text == "update" => {}
            "type" => return Err(format!("uid-message type {text} is not supported")),
            "payload" => {
                for part in &child.children {
                    match part.name.as_str() {
                        "register" | "unregister" => {}
                        "clear" => {
                            let selectors = part
                                .children
                                .iter()
                                .filter(|what| what.name == "registered-ip")
                                .flat_map(|what| &what.children);
                            for selector in selectors {
                                if !matches!(selector.name.as_str(), "all" | "ip" | "tag") {
                                    return Err(format!(
                                        "clear -> registered-ip -> {} unexpected here",
                                        selector.name
                                    ));
                                }
                            }
                        }
                        name if UID_IGNORED.contains(&name) => {}
                        name => return Err(format!("payload -> {name} unexpected here")),
                    }
                }
            }
            other => return Err(format!("uid-message -> {other} unexpected here")),
        }
    }
    Ok(())
}

/// The tag names of an entry's `<tag><member>…`.
fn entry_tags(entry: &Node) -> Vec<&str> {
    entry
        .child("tag")
        .map(|tag| {
            tag.children
                .iter()
                .filter(|member| member.name == "member")
                .map(|member| member.text.trim())
                .collect()
        })
        .unwrap_or_default()
}

/// One `<register><entry ip=…>`: each tag is added (or, if the IP has it, noted and maybe
/// refreshed); a tag that breaks a limit is noted and left out.
fn register(knobs: &Knobs, uid: &mut UserId, table: &str, entry: &Node, notes: &mut UidNotes) {
    let given = entry.attr("ip").unwrap_or_default();
    let ip = match uid_ip(given, knobs.ranges) {
        Ok(ip) => ip,
        Err(message) => return notes.register.push((given.to_owned(), message)),
    };
    let persistent = entry.attr("persistent");
    if let Some(value) = persistent.filter(|value| !matches!(*value, "0" | "1")) {
        let message = format!("persistent value {value} is invalid");
        return notes.register.push((ip, message));
    }
    let now = uid.now();
    let ips = uid.table(table);
    let registration = ips.entry(ip.clone()).or_insert_with(Registration::new);
    if let Some(value) = persistent {
        registration.persistent = value.to_owned();
    }
    let members = entry
        .child("tag")
        .into_iter()
        .flat_map(|tag| &tag.children)
        .filter(|member| member.name == "member");
    for member in members {
        let tag = member.text.trim();
        let expiry = match check_tag(tag).and_then(|()| tag_timeout(member, tag)) {
            Ok(0) => None,
            Ok(seconds) => Some(now + Duration::from_secs(seconds)),
            Err(message) => {
                notes.register.push((ip.clone(), message));
                continue;
            }
        };
        let full = registration.tags.len() >= MAX_TAGS_PER_IP;
        match registration.tags.get_mut(tag) {
            Some(existing) => {
                if knobs.refresh_on_reregister {
                    *existing = expiry;
                }
                notes
                    .register
                    .push((ip.clone(), format!("tag {tag} already exists, ignore")));
            }
            // The wording is unverified.
            None if full => notes.register.push((
                ip.clone(),
                format!(
                    "tag {tag} not added, the ip already has the maximum of {MAX_TAGS_PER_IP} tags"
                ),
            )),
            None => {
                registration.tags.insert(tag.to_owned(), expiry);
            }
        }
    }
    // An IP that got no tag is not registered.
    if registration.tags.is_empty() {
        ips.remove(&ip);
    }
}

/// A tag name PAN-OS would refuse (limits of user tags, applied to IP tags).
fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        Err("tag name is empty".into())
    } else if tag.chars().count() > 127 {
        Err(format!("tag {tag} is longer than 127 characters"))
    } else if tag.contains(['\'', '"']) {
        Err(format!("tag {tag} contains an invalid character"))
    } else {
        Ok(())
    }
}

/// A member's `timeout` in seconds: absent, empty or `0` is never.
fn tag_timeout(member: &Node, tag: &str) -> Result<u64, String> {
    let Some(text) = member
        .attr("timeout")
        .map(str::trim)
        .filter(|text| !text.is_empty())
    else {
        return Ok(0);
    };
    text.parse()
        .ok()
        .filter(|&seconds| seconds <= MAX_TAG_TIMEOUT_SECS)
        .ok_or_else(|| format!("tag {tag} timeout {text} is out of range 0-{MAX_TAG_TIMEOUT_SECS}"))
}

/// One `<unregister><entry ip=…>`: the tags named go; without any, the whole IP goes.
fn unregister(knobs: &Knobs, uid: &mut UserId, table: &str, entry: &Node, notes: &mut UidNotes) {
    let given = entry.attr("ip").unwrap_or_default();
    let ip = match uid_ip(given, knobs.ranges) {
        Ok(ip) => ip,
        Err(message) => return notes.unregister.push((given.to_owned(), message)),
    };
    let ips = uid.table(table);
    let tags = entry_tags(entry);
    if tags.is_empty() {
        if ips.remove(&ip).is_none() {
            // The wording is unverified.
            let message = format!("ip {ip} does not exist, ignore unreg");
            notes.unregister.push((ip, message));
        }
        return;
    }
    for tag in tags {
        let removed = ips
            .get_mut(&ip)
            .is_some_and(|registration| registration.tags.remove(tag).is_some());
        if !removed {
            let message = format!("tag {tag} does not exist, ignore unreg");
            notes.unregister.push((ip.clone(), message));
        }
    }
    if ips
        .get(&ip)
        .is_some_and(|registration| registration.tags.is_empty())
    {
        ips.remove(&ip);
    }
}

/// `<clear><registered-ip>` with `<all/>`, `<ip>X</ip>` or `<tag><member>T</member></tag>`
/// (or `<entry name="T"/>`); other things to clear are not modelled.
fn clear(uid: &mut UserId, table: &str, clear: &Node) {
    let ips = uid.table(table);
    let selectors = clear
        .children
        .iter()
        .filter(|what| what.name == "registered-ip")
        .flat_map(|what| &what.children);
    for selector in selectors {
        match selector.name.as_str() {
            "all" => ips.clear(),
            "ip" => {
                ips.remove(&canonical(&selector.text));
            }
            "tag" => {
                let tags: Vec<&str> = selector
                    .children
                    .iter()
                    .filter_map(|tag| match tag.name.as_str() {
                        "member" => Some(tag.text.trim()),
                        "entry" => tag.attr("name"),
                        _ => None,
                    })
                    .collect();
                ips.retain(|_, registration| {
                    registration
                        .tags
                        .retain(|tag, _| !tags.contains(&tag.as_str()));
                    !registration.tags.is_empty()
                });
            }
            _ => {}
        }
    }
}

/// The key of a registered `ip`: a host in its canonical form, or (when `ranges`) a range
/// `a-b` or network `a/len` as given.
fn uid_ip(given: &str, ranges: bool) -> Result<String, String> {
    let text = given.trim();
    if text.is_empty() {
        return Err("ip address is missing".into());
    }
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(address.to_string());
    }
    let range = text.split_once('-').is_some_and(|(first, last)| {
        match (
            first.trim().parse::<IpAddr>(),
            last.trim().parse::<IpAddr>(),
        ) {
            (Ok(IpAddr::V4(first)), Ok(IpAddr::V4(last))) => first <= last,
            (Ok(IpAddr::V6(first)), Ok(IpAddr::V6(last))) => first <= last,
            _ => false,
        }
    });
    if ranges && (range || text.parse::<ipnet::IpNet>().is_ok()) {
        return Ok(text.to_owned());
    }
    Err(format!("ip {text} is invalid"))
}

/// A host in its canonical form; anything else trimmed.
fn canonical(ip: &str) -> String {
    let text = ip.trim();
    text.parse::<IpAddr>()
        .map_or_else(|_| text.to_owned(), |address| address.to_string())
}

/// Sorts registered IPs: IPv4 before IPv6, by (first) address, then as text.
fn ip_order(ip: &str) -> (u8, u128, String) {
    let first = ip.split(['-', '/']).next().unwrap_or(ip);
    match first.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(address)) => (4, u32::from(address).into(), ip.to_owned()),
        Ok(IpAddr::V6(address)) => (6, u128::from(address), ip.to_owned()),
        Err(_) => (9, 0, ip.to_owned()),
    }
}

/// A device group's node (`Some`) or `/config/shared` (`None`) in a config tree.
fn scope_node<'a>(tree: &'a Node, device_group: Option<&str>) -> Option<&'a Node> {
    let Some(name) = device_group else {
        return tree.child("shared");
    };
    let named =
        |node: &&Node, wanted: &str| node.name == "entry" && node.attr("name") == Some(wanted);
    tree.child("devices")?
        .children
        .iter()
        .find(|device| named(device, "localhost.localdomain"))?
        .child("device-group")?
        .children
        .iter()
        .find(|group| named(group, name))
}

/// The (name, filter) of each dynamic address group in a scope, in config order.
fn dynamic_groups(scope: &Node) -> Vec<(String, String)> {
    scope
        .child("address-group")
        .into_iter()
        .flat_map(|groups| &groups.children)
        .filter(|group| group.name == "entry")
        .filter_map(|group| {
            let filter = group.child("dynamic")?.child("filter")?;
            Some((group.attr("name")?.to_owned(), filter.text.clone()))
        })
        .collect()
}

/// The (name, tags) of each address object in a scope that carries tags.
fn tagged_addresses(scope: &Node) -> Vec<(String, Vec<String>)> {
    scope
        .child("address")
        .into_iter()
        .flat_map(|addresses| &addresses.children)
        .filter(|address| address.name == "entry")
        .filter_map(|address| {
            let name = address.attr("name")?.to_owned();
            Some((
                name,
                entry_tags(address)
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            ))
        })
        .filter(|(_, tags)| !tags.is_empty())
        .collect()
}

/// A dynamic address group's match criteria: tag names, quoted (`'…'` or `"…"`) or bare,
/// joined by `and` and `or` (either case; `and` binds tighter) and grouped by parentheses.
enum Criteria {
    Tag(String),
    And(Box<Criteria>, Box<Criteria>),
    Or(Box<Criteria>, Box<Criteria>),
}

#[derive(PartialEq)]
enum Token {
    Tag(String),
    And,
    Or,
    Open,
    Close,
}

impl Criteria {
    /// `None` for a filter outside the grammar.
    fn parse(text: &str) -> Option<Criteria> {
        let tokens = criteria_tokens(text)?;
        let mut at = 0;
        let criteria = Criteria::any(&tokens, &mut at)?;
        (at == tokens.len()).then_some(criteria)
    }

    /// `all (or all)*`.
    fn any(tokens: &[Token], at: &mut usize) -> Option<Criteria> {
        let mut left = Criteria::all(tokens, at)?;
        while tokens.get(*at) == Some(&Token::Or) {
            *at += 1;
            left = Criteria::Or(Box::new(left), Box::new(Criteria::all(tokens, at)?));
        }
        Some(left)
    }

    /// `one (and one)*`.
    fn all(tokens: &[Token], at: &mut usize) -> Option<Criteria> {
        let mut left = Criteria::one(tokens, at)?;
        while tokens.get(*at) == Some(&Token::And) {
            *at += 1;
            left = Criteria::And(Box::new(left), Box::new(Criteria::one(tokens, at)?));
        }
        Some(left)
    }

    /// A tag, or a parenthesised filter.
    fn one(tokens: &[Token], at: &mut usize) -> Option<Criteria> {
        match tokens.get(*at)? {
            Token::Tag(name) => {
                *at += 1;
                Some(Criteria::Tag(name.clone()))
            }
            Token::Open => {
                *at += 1;
                let inner = Criteria::any(tokens, at)?;
                (tokens.get(*at) == Some(&Token::Close)).then(|| {
                    *at += 1;
                    inner
                })
            }
            _ => None,
        }
    }

    fn matches(&self, has: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Criteria::Tag(tag) => has(tag),
            Criteria::And(left, right) => left.matches(has) && right.matches(has),
            Criteria::Or(left, right) => left.matches(has) || right.matches(has),
        }
    }
}

/// The tokens of a filter; `None` for an unclosed quote.
fn criteria_tokens(text: &str) -> Option<Vec<Token>> {
    let chars: Vec<char> = text.chars().collect();
    let (mut tokens, mut at) = (Vec::new(), 0);
    while let Some(&c) = chars.get(at) {
        match c {
            _ if c.is_whitespace() => at += 1,
            '(' | ')' => {
                tokens.push(if c == '(' { Token::Open } else { Token::Close });
                at += 1;
            }
            '\'' | '"' => {
                let length = chars[at + 1..].iter().position(|&other| other == c)?;
                tokens.push(Token::Tag(chars[at + 1..at + 1 + length].iter().collect()));
                at += length + 2;
            }
            _ => {
                let start = at;
                while chars
                    .get(at)
                    .is_some_and(|&c| !c.is_whitespace() && !"()'\"".contains(c))
                {
                    at += 1;
                }
                let word: String = chars[start..at].iter().collect();
                tokens.push(match word.to_ascii_lowercase().as_str() {
                    "and" => Token::And,
                    "or" => Token::Or,
                    _ => Token::Tag(word),
                });
            }
        }
    }
    Some(tokens)
}

// --- The config tree -------------------------------------------------------------------------

/// Who changed a node last, shown on `get` until a commit covers it.
#[derive(Clone, Debug)]
struct Change {
    admin: String,
    id: u64,
    time: String,
}

/// An element of the config: PAN-OS config has no mixed content, so a node holds either
/// children or text.
#[derive(Clone, Debug)]
struct Node {
    name: String,
    attributes: Vec<(String, String)>,
    children: Vec<Node>,
    text: String,
    change: Option<Change>,
}

fn parse_xml(text: &str) -> Result<Node, roxmltree::Error> {
    fn convert(element: roxmltree::Node) -> Node {
        let children: Vec<Node> = element
            .children()
            .filter(|child| child.is_element())
            .map(convert)
            .collect();
        // Whitespace between elements (or inside an empty one) is layout, not a value.
        let text: String = element
            .children()
            .filter_map(|child| child.text())
            .collect();
        let text = match children.is_empty() && !text.trim().is_empty() {
            true => text,
            false => String::new(),
        };
        Node {
            name: element.tag_name().name().to_owned(),
            attributes: element
                .attributes()
                .map(|attribute| (attribute.name().to_owned(), attribute.value().to_owned()))
                .collect(),
            children,
            text,
            change: None,
        }
    }
    Ok(convert(roxmltree::Document::parse(text)?.root_element()))
}

impl Node {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|child| child.name == name)
    }

    fn at(&self, path: &[usize]) -> &Node {
        path.iter().fold(self, |node, &index| &node.children[index])
    }

    fn at_mut(&mut self, path: &[usize]) -> &mut Node {
        path.iter()
            .fold(self, |node, &index| &mut node.children[index])
    }

    fn mark(&mut self, change: &Change) {
        self.change = Some(change.clone());
    }

    /// Marks this node and every node down `path`.
    fn mark_path(&mut self, path: &[usize], change: &Change) {
        self.mark(change);
        let mut node = self;
        for &index in path {
            node = &mut node.children[index];
            node.mark(change);
        }
    }

    /// Drops the marks of changes up to `covered`.
    fn clear_marks(&mut self, covered: u64) {
        if self
            .change
            .as_ref()
            .is_some_and(|change| change.id <= covered)
        {
            self.change = None;
        }
        for child in &mut self.children {
            child.clear_marks(covered);
        }
    }

    fn xml(&self, decorated: bool) -> String {
        let mut out = String::new();
        self.write(&mut out, decorated);
        out
    }

    fn write(&self, out: &mut String, decorated: bool) {
        let _ = write!(out, "<{}", self.name);
        for (key, value) in &self.attributes {
            let _ = write!(out, " {key}=\"{}\"", escape_attribute(value));
        }
        if let (true, Some(change)) = (decorated, &self.change) {
            let _ = write!(
                out,
                " admin=\"{}\" dirtyId=\"{}\" time=\"{}\"",
                escape_attribute(&change.admin),
                change.id,
                change.time
            );
        }
        if self.children.is_empty() && self.text.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        out.push_str(&escape(&self.text));
        for child in &self.children {
            child.write(out, decorated);
        }
        let _ = write!(out, "</{}>", self.name);
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn escape_attribute(text: &str) -> String {
    escape(text)
        .replace('"', "&quot;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
        .replace('\t', "&#9;")
}

/// Elements of which a node holds at most one: setting one drops the others.
const ONE_OF: [&[&str]; 3] = [
    &["ip-netmask", "ip-range", "ip-wildcard", "fqdn"],
    &["static", "dynamic"],
    &["tcp", "udp", "sctp"],
];

/// Whether `existing` is the node `incoming` stands for: entries by name, members by text,
/// anything else by element name.
fn same_node(existing: &Node, incoming: &Node) -> bool {
    existing.name == incoming.name
        && match incoming.name.as_str() {
            "entry" => existing.attr("name") == incoming.attr("name"),
            "member" => existing.text == incoming.text,
            _ => true,
        }
}

/// `set`: merges `incoming`'s attributes, text and children into `target`, never removing
/// anything but a one-of alternative. Whether anything changed; changed nodes are marked.
fn merge(target: &mut Node, incoming: Node, change: &Change) -> bool {
    let mut changed = false;
    for (key, value) in incoming.attributes {
        match target
            .attributes
            .iter_mut()
            .find(|(existing, _)| *existing == key)
        {
            Some((_, existing)) if *existing == value => continue,
            Some((_, existing)) => *existing = value,
            None => target.attributes.push((key, value)),
        }
        changed = true;
    }
    if incoming.children.is_empty()
        && !incoming.text.is_empty()
        && (target.text != incoming.text || !target.children.is_empty())
    {
        target.text = incoming.text;
        target.children.clear();
        changed = true;
    }
    for child in incoming.children {
        if let Some(existing) = target
            .children
            .iter_mut()
            .find(|existing| same_node(existing, &child))
        {
            changed |= merge(existing, child, change);
            continue;
        }
        if let Some(choices) = ONE_OF
            .iter()
            .find(|choices| choices.contains(&child.name.as_str()))
        {
            target
                .children
                .retain(|sibling| !choices.contains(&sibling.name.as_str()));
        }
        target.text.clear();
        let mut child = child;
        child.mark(change);
        target.children.push(child);
        changed = true;
    }
    if changed {
        target.mark(change);
    }
    changed
}

/// Finds the node at `steps` for a write, creating the missing ones. The index path, and
/// whether anything was created.
fn create_path(tree: &mut Node, steps: &[Step]) -> Result<(Vec<usize>, bool), Refused> {
    let (first, rest) = steps.split_first().expect("a parsed xpath has a step");
    if !first.matches(tree) {
        return Err(Refused::cdata(
            12,
            format!(" {} unexpected here", first.name),
        ));
    }
    let (mut path, mut created) = (Vec::new(), false);
    let mut node = tree;
    for step in rest {
        let found: Vec<usize> = node
            .children
            .iter()
            .enumerate()
            .filter(|(_, child)| step.matches(child))
            .map(|(index, _)| index)
            .collect();
        let index = match found.as_slice() {
            [one] => *one,
            [] => {
                node.children.push(step.create()?);
                node.text.clear();
                created = true;
                node.children.len() - 1
            }
            _ => return Err(Refused::plain(Some(8), "Object not unique")),
        };
        path.push(index);
        node = &mut node.children[index];
    }
    Ok((path, created))
}

/// The name limits PAN-OS enforces on objects and rules (codegen specs).
fn check_limits(node: &Node, parent: &str) -> Result<(), Refused> {
    // The second line names the value (shortened), as PAN-OS names what it refused.
    let too_long = |what: &str, value: &str, limit: usize| {
        let shown: String = value.chars().take(80).collect();
        Refused::cdata(
            12,
            format!(" {parent} -> {what} is too long, at most {limit} characters"),
        )
        .with_line(format!(" {shown}"))
    };
    if let (true, Some(name)) = (node.name == "entry", node.attr("name")) {
        let limit = match parent {
            "address" | "address-group" | "service" | "service-group" | "rules" => Some(63),
            "tag" => Some(127),
            _ => None,
        };
        if let Some(limit) = limit.filter(|&limit| name.chars().count() > limit) {
            return Err(too_long("name", name, limit));
        }
    }
    if node.name == "filter" && parent == "dynamic" && node.text.chars().count() > 2047 {
        return Err(too_long("filter", &node.text, 2047));
    }
    if node.name == "member" && parent == "tag" && node.text.chars().count() > 127 {
        return Err(too_long("member", &node.text, 127));
    }
    if node.name == "tag" && node.children.len() > 64 {
        return Err(Refused::cdata(
            12,
            format!(" {parent} -> tag has more than 64 members"),
        ));
    }
    node.children
        .iter()
        .try_for_each(|child| check_limits(child, &node.name))
}

/// The `<member>` lists that can name an object kept under `kind`.
fn referring_lists(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "address" | "address-group" => Some(&["static", "source", "destination"]),
        "service" | "service-group" => Some(&["service", "members"]),
        _ => None,
    }
}

/// Where a `<member>name</member>` in one of `lists` is, as `a -> b -> c`.
fn find_reference(
    node: &Node,
    name: &str,
    lists: &[&str],
    trail: &mut Vec<String>,
) -> Option<String> {
    for child in &node.children {
        if child.name == "member" && child.text == name && lists.contains(&node.name.as_str()) {
            return Some(trail.join(" -> "));
        }
        trail.push(child.attr("name").unwrap_or(&child.name).to_owned());
        if let Some(found) = find_reference(child, name, lists, trail) {
            return Some(found);
        }
        trail.pop();
    }
    None
}

// --- XPath subset ----------------------------------------------------------------------------

/// An absolute location path in the subset PAN-OS clients emit.
struct XPath {
    steps: Vec<Step>,
    /// It ends in `/@name`: the names of the selected nodes, not the nodes.
    names_only: bool,
}

struct Step {
    name: String,
    filter: Filter,
}

enum Filter {
    Any,
    /// `[@name='a' or @name='b']`.
    Names(Vec<String>),
    /// `[text()='x']`.
    Text(String),
}

impl Step {
    fn matches(&self, node: &Node) -> bool {
        node.name == self.name
            && match &self.filter {
                Filter::Any => true,
                Filter::Names(names) => node
                    .attr("name")
                    .is_some_and(|name| names.iter().any(|wanted| wanted == name)),
                Filter::Text(text) => node.children.is_empty() && node.text == *text,
            }
    }

    /// The node a write makes for a missing step.
    fn create(&self) -> Result<Node, Refused> {
        let mut node = Node {
            name: self.name.clone(),
            attributes: Vec::new(),
            children: Vec::new(),
            text: String::new(),
            change: None,
        };
        match &self.filter {
            Filter::Any => {}
            Filter::Names(names) if names.len() == 1 => {
                node.attributes.push(("name".into(), names[0].clone()))
            }
            Filter::Names(_) => return Err(Refused::plain(Some(8), "Object not unique")),
            Filter::Text(text) => node.text = text.clone(),
        }
        Ok(node)
    }
}

/// Index paths (from the root) of the nodes `steps` select, in document order.
fn locate(root: &Node, steps: &[Step]) -> Vec<Vec<usize>> {
    let Some((first, rest)) = steps.split_first() else {
        return Vec::new();
    };
    if !first.matches(root) {
        return Vec::new();
    }
    let mut found = vec![Vec::new()];
    for step in rest {
        found = found
            .into_iter()
            .flat_map(|path| {
                let node = root.at(&path);
                node.children
                    .iter()
                    .enumerate()
                    .filter(|(_, child)| step.matches(child))
                    .map(|(index, _)| {
                        let mut deeper = path.clone();
                        deeper.push(index);
                        deeper
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    found
}

impl XPath {
    /// `None` for anything outside the subset.
    fn parse(text: &str) -> Option<XPath> {
        let mut cursor = Cursor {
            chars: text.trim().chars().collect(),
            at: 0,
        };
        let (mut steps, mut names_only) = (Vec::new(), false);
        while cursor.eat("/") {
            if cursor.eat("@name") {
                names_only = true;
                break;
            }
            let name = cursor.name()?;
            let filter = match cursor.eat("[") {
                true => {
                    let filter = cursor.filter()?;
                    cursor.space();
                    cursor.eat("]").then_some(filter)?
                }
                false => Filter::Any,
            };
            steps.push(Step { name, filter });
        }
        (cursor.at == cursor.chars.len() && !steps.is_empty())
            .then_some(XPath { steps, names_only })
    }
}

struct Cursor {
    chars: Vec<char>,
    at: usize,
}

impl Cursor {
    fn eat(&mut self, token: &str) -> bool {
        let token: Vec<char> = token.chars().collect();
        let matched = self.chars[self.at..].starts_with(&token);
        if matched {
            self.at += token.len();
        }
        matched
    }

    fn space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    fn name(&mut self) -> Option<String> {
        let start = self.at;
        while self
            .chars
            .get(self.at)
            .is_some_and(|&c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.at += 1;
        }
        (self.at > start).then(|| self.chars[start..self.at].iter().collect())
    }

    /// The inside of `[…]`: `@name=L (or @name=L)*` or `text()=L`.
    fn filter(&mut self) -> Option<Filter> {
        self.space();
        if self.eat("text()") {
            self.space();
            return self
                .eat("=")
                .then(|| self.literal())
                .flatten()
                .map(Filter::Text);
        }
        let mut names = Vec::new();
        loop {
            self.space();
            if !self.eat("@name") {
                return None;
            }
            self.space();
            if !self.eat("=") {
                return None;
            }
            names.push(self.literal()?);
            self.space();
            if !self.eat("or") {
                return Some(Filter::Names(names));
            }
        }
    }

    /// `'…'`, `"…"`, or `concat(L, L, …)` (how clients quote names holding a `'`).
    fn literal(&mut self) -> Option<String> {
        self.space();
        if self.eat("concat(") {
            let mut joined = String::new();
            loop {
                joined.push_str(&self.literal()?);
                self.space();
                if self.eat(")") {
                    return Some(joined);
                }
                if !self.eat(",") {
                    return None;
                }
            }
        }
        let quote = *self
            .chars
            .get(self.at)
            .filter(|&&c| c == '\'' || c == '"')?;
        let length = self.chars[self.at + 1..].iter().position(|&c| c == quote)?;
        let value = self.chars[self.at + 1..self.at + 1 + length]
            .iter()
            .collect();
        self.at += length + 2;
        Some(value)
    }
}
