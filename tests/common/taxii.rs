//! A TAXII 2.1 server double on the loopback HTTP harness (HTTPS under the test PKI), for the
//! feeds' TAXII client: the read side of the OASIS TAXII 2.1 REST API that a feed consumer
//! uses, with its documented errors.
//!
//! What it serves:
//!
//! - `GET /taxii2/`: the discovery resource (`title`, `default`, `api_roots`), with one API
//!   root at `/api1/`;
//! - `GET /api1/`: the API root resource (`title`, `versions`, `max_content_length`);
//! - `GET /api1/collections/` (`{"collections": [...]}`, `{}` when there are none) and
//!   `GET /api1/collections/{id}/`: collection resources (`id`, `title`, `can_read`,
//!   `can_write` (always false), `media_types`);
//! - `GET /api1/collections/{id}/objects/`: an envelope (`more`, `next`, `objects`) ordered by
//!   date added, with `X-TAXII-Date-Added-First` and `X-TAXII-Date-Added-Last` on a page that
//!   has objects. Filters: `added_after` (strictly after; RFC 3339, fractional seconds kept
//!   to the nanosecond), `limit` (clamped to the page size, which a test can set), `next` (an
//!   opaque token this double issues), `match[type]`, `match[id]` and `match[version]`
//!   (`last` by default, `first`, `all` or comma-separated version timestamps). A page with
//!   objects always carries `more`; `next` only when `more` is true and tokens are on; an
//!   empty page is `{}` (the spec's "absent means false").
//!
//! Versions: objects are kept per collection with their date added. An object re-added with
//! the same `id` and a newer `modified` (or `created`, for objects without `modified`) is a
//! new version with its own date added; one re-added with the same `id` and version is
//! ignored, as TAXII servers deduplicate by id and version. As the spec says, a request
//! without `match[version]` gets only the latest version of each object; `match[version]=all`
//! gets every version. As in the reference server (OASIS medallion), `added_after` is applied
//! before the version filter, so "the latest version added after T".
//!
//! Paging: the first request's filters are kept with the `next` token, and a request that
//! presents the token gets the objects after the last one served under those filters (its
//! own `added_after` and `match[...]` are ignored; its `limit` counts). Objects added between
//! pages therefore show up on a later page, never twice. An unknown token, or one issued for
//! another collection, gets a 400. With tokens off ([`Taxii::set_next_tokens`]) a page says
//! only `more: true`, and the client must go on with `added_after` set to the page's
//! `X-TAXII-Date-Added-Last`, which the spec also allows.
//!
//! Errors are TAXII error resources (`title`, `http_status` as a string, `description`) with
//! the TAXII media type: 401 (with `WWW-Authenticate`) without valid HTTP Basic or bearer
//! credentials; then 406 unless `Accept` lists `application/taxii+json;version=2.1` (the
//! bare `application/taxii+json` is refused too, as medallion does); 405 for anything but
//! GET; 404 for an unknown path or collection (paths must end in `/`); 403 for the objects of
//! a collection with `can_read: false`; 400 for a bad `limit`, `added_after`,
//! `match[version]` or `next`.
//!
//! Not served: writes (POST objects, status resources), manifests, object versions and
//! single-object endpoints, `match[spec_version]` (ignored), and more than one API root.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use super::fortigate::with_fault;
pub use super::fortigate::Fault;
use super::http::{decode, HttpServer, Reply, Request};

/// The TAXII 2.1 media type: every request must accept it, every reply has it.
pub const MEDIA_TYPE: &str = "application/taxii+json;version=2.1";

/// The media type of the objects the collections hold.
pub const STIX_MEDIA_TYPE: &str = "application/stix+json;version=2.1";

/// The path of the one API root.
pub const API_ROOT: &str = "/api1/";

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// The HTTP Basic username and password that authenticate; `None` refuses Basic.
    pub basic: Option<(String, String)>,
    /// The token that authenticates as `Authorization: Bearer <token>`; `None` refuses bearer
    /// tokens.
    pub bearer: Option<String>,
    /// The most objects one page holds; a larger `limit` is clamped to it.
    pub page_size: usize,
    /// The API root's `max_content_length`, in bytes.
    pub max_content_length: u64,
    /// Whether a page with more after it carries a `next` token.
    pub next_tokens: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            basic: Some(("taxii-user".into(), "taxii-password".into())),
            bearer: Some("taxii-token".into()),
            page_size: 100,
            max_content_length: 10 * 1024 * 1024,
            next_tokens: true,
        }
    }
}

/// The `Authorization` header value for HTTP Basic.
pub fn basic(username: &str, password: &str) -> String {
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {credentials}")
}

/// A timestamp as TAXII writes it: RFC 3339 in UTC with at least millisecond precision and
/// as many digits as it needs to be exact (so `added_after` with it excludes that object).
pub fn rfc3339(timestamp: Timestamp) -> String {
    let nanos = timestamp.subsec_nanosecond();
    if nanos % 1_000_000 == 0 {
        format!("{timestamp:.3}")
    } else if nanos % 1_000 == 0 {
        format!("{timestamp:.6}")
    } else {
        format!("{timestamp:.9}")
    }
}

/// One stored version of an object.
struct Entry {
    object: Value,
    id: String,
    version: Option<Timestamp>,
    date_added: Timestamp,
    /// Insertion order, which breaks ties between equal dates added.
    seq: u64,
}

impl Entry {
    fn key(&self) -> (Timestamp, u64) {
        (self.date_added, self.seq)
    }

    /// The order among one id's versions: by version, then by date added.
    fn rank(&self) -> (Option<Timestamp>, (Timestamp, u64)) {
        (self.version, self.key())
    }
}

/// An object's version: `modified`, else `created`; `None` for objects with neither (SCOs).
fn version_of(object: &Value) -> Option<Timestamp> {
    ["modified", "created"]
        .iter()
        .find_map(|field| object[field].as_str())
        .and_then(|text| text.parse().ok())
}

struct Collection {
    id: String,
    title: String,
    can_read: bool,
    /// Every version, ordered by date added.
    entries: Vec<Entry>,
    /// The id and version of every entry.
    versions: HashSet<(String, Option<Timestamp>)>,
}

impl Collection {
    fn resource(&self) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "can_read": self.can_read,
            "can_write": false,
            "media_types": [STIX_MEDIA_TYPE],
        })
    }
}

/// The filters of an objects request.
#[derive(Clone, Default)]
struct Filters {
    added_after: Option<Timestamp>,
    types: Vec<String>,
    ids: Vec<String>,
    /// `first`, `last`, `all` or version timestamps; empty means `last`.
    versions: Vec<String>,
}

/// Where a `next` token continues.
struct Cursor {
    collection: String,
    filters: Filters,
    after: (Timestamp, u64),
}

struct State {
    knobs: Knobs,
    base: String,
    collections: Vec<Collection>,
    seq: u64,
    /// The last date [`Taxii::add_now`] handed out, so the next one is later.
    last_stamp: Option<Timestamp>,
    cursors: HashMap<String, Cursor>,
    /// `next` tokens issued so far, which makes each one unique.
    issued: u64,
    faults: VecDeque<Fault>,
}

/// A running TAXII 2.1 server double.
#[derive(Clone)]
pub struct Taxii {
    pub server: HttpServer,
    state: Arc<Mutex<State>>,
}

impl Taxii {
    /// Serves HTTPS under the test PKI in `dir` (clients trust `dir/ca.pem`), with no
    /// collections yet.
    pub async fn start(dir: &std::path::Path, knobs: Knobs) -> Taxii {
        let state = Arc::new(Mutex::new(State {
            knobs,
            base: String::new(),
            collections: Vec::new(),
            seq: 0,
            last_stamp: None,
            cursors: HashMap::new(),
            issued: 0,
            faults: VecDeque::new(),
        }));
        let handler_state = state.clone();
        let server = HttpServer::start_tls(dir, move |request| {
            let mut state = handler_state.lock();
            let fault = state.faults.pop_front();
            with_fault(fault, || respond(&mut state, request))
        })
        .await;
        state.lock().base = server.base.clone();
        Taxii { server, state }
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        self.server.base.clone()
    }

    /// The discovery URL, `<base>/taxii2/`.
    pub fn discovery_url(&self) -> String {
        self.server.url("/taxii2/")
    }

    /// The API root URL, `<base>/api1/`.
    pub fn api_root_url(&self) -> String {
        self.server.url(API_ROOT)
    }

    /// The objects URL of a collection.
    pub fn objects_url(&self, collection: &str) -> String {
        self.server
            .url(&format!("{API_ROOT}collections/{collection}/objects/"))
    }

    /// Adds a collection (or changes the title and readability of an existing one).
    pub fn add_collection(&self, id: &str, title: &str, can_read: bool) {
        let mut state = self.state.lock();
        match state.collections.iter_mut().find(|c| c.id == id) {
            Some(collection) => {
                collection.title = title.into();
                collection.can_read = can_read;
            }
            None => state.collections.push(Collection {
                id: id.into(),
                title: title.into(),
                can_read,
                entries: Vec::new(),
                versions: HashSet::new(),
            }),
        }
    }

    /// Adds `object` to `collection` as added at `date_added` (RFC 3339). Returns false when
    /// the collection already holds this id at this version (nothing is stored).
    pub fn add(&self, collection: &str, object: Value, date_added: &str) -> bool {
        let date_added: Timestamp = date_added
            .parse()
            .unwrap_or_else(|error| panic!("date_added {date_added:?}: {error}"));
        self.state.lock().add(collection, object, date_added)
    }

    /// Adds `object` as added now, each call strictly later than the one before (microsecond
    /// steps); returns the date added as the server writes it (also when nothing was stored
    /// because the collection already held this id at this version).
    pub fn add_now(&self, collection: &str, object: Value) -> String {
        let mut state = self.state.lock();
        let now = Timestamp::from_microsecond(Timestamp::now().as_microsecond()).unwrap();
        let stamp = match state.last_stamp {
            Some(last) if now <= last => last.checked_add(SignedDuration::from_micros(1)).unwrap(),
            _ => now,
        };
        state.last_stamp = Some(stamp);
        state.add(collection, object, stamp);
        rfc3339(stamp)
    }

    /// Every stored version in `collection`, ordered by date added, with its date added.
    pub fn stored(&self, collection: &str) -> Vec<(Value, String)> {
        let state = self.state.lock();
        let collection = state.collection(collection);
        collection
            .entries
            .iter()
            .map(|entry| (entry.object.clone(), rfc3339(entry.date_added)))
            .collect()
    }

    /// The most objects a page holds from now on.
    pub fn set_page_size(&self, page_size: usize) {
        assert!(page_size > 0, "a page holds at least one object");
        self.state.lock().knobs.page_size = page_size;
    }

    /// Whether pages with more after them carry a `next` token.
    pub fn set_next_tokens(&self, on: bool) {
        self.state.lock().knobs.next_tokens = on;
    }

    /// Forgets every `next` token issued so far (a restarted server): presenting one gets a
    /// 400.
    pub fn forget_next_tokens(&self) {
        self.state.lock().cursors.clear();
    }

    /// Misbehaviours for the next requests, in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().faults.extend(faults);
    }

    /// Every request so far (the harness's log).
    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }
}

impl State {
    fn collection(&self, id: &str) -> &Collection {
        self.collections
            .iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no collection {id}; add_collection first"))
    }

    fn add(&mut self, collection: &str, object: Value, date_added: Timestamp) -> bool {
        let id = object["id"]
            .as_str()
            .unwrap_or_else(|| panic!("an object without an id: {object}"))
            .to_owned();
        let version = version_of(&object);
        self.seq += 1;
        let seq = self.seq;
        let collection = self
            .collections
            .iter_mut()
            .find(|c| c.id == collection)
            .unwrap_or_else(|| panic!("no collection {collection}; add_collection first"));
        if !collection.versions.insert((id.clone(), version)) {
            return false;
        }
        let entry = Entry {
            object,
            id,
            version,
            date_added,
            seq,
        };
        let at = collection
            .entries
            .partition_point(|other| other.key() <= entry.key());
        collection.entries.insert(at, entry);
        true
    }
}

fn error(status: u16, title: &str, description: &str) -> Reply {
    Reply::status(
        status,
        json!({
            "title": title,
            "http_status": status.to_string(),
            "description": description,
        })
        .to_string(),
    )
    .with_header("Content-Type", MEDIA_TYPE)
}

fn taxii(value: &Value) -> Reply {
    Reply::ok(value.to_string()).with_header("Content-Type", MEDIA_TYPE)
}

fn authenticated(knobs: &Knobs, request: &Request) -> bool {
    let Some((scheme, credentials)) = request
        .header("authorization")
        .and_then(|value| value.trim().split_once(' '))
    else {
        return false;
    };
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let Some((username, password)) = &knobs.basic else {
            return false;
        };
        base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .is_ok_and(|decoded| decoded == format!("{username}:{password}").as_bytes())
    } else if scheme.eq_ignore_ascii_case("bearer") {
        knobs.bearer.as_deref() == Some(credentials)
    } else {
        false
    }
}

/// Whether `Accept` lists the TAXII 2.1 media type (spaces and case aside).
fn accepts_taxii(request: &Request) -> bool {
    request.header("accept").is_some_and(|accept| {
        accept.split(',').any(|item| {
            let item: String = item.chars().filter(|c| !c.is_whitespace()).collect();
            item.eq_ignore_ascii_case(MEDIA_TYPE)
        })
    })
}

fn respond(state: &mut State, request: &Request) -> Reply {
    if !authenticated(&state.knobs, request) {
        return error(
            401,
            "Unauthorized",
            "Valid HTTP Basic or bearer credentials are required.",
        )
        .with_header("WWW-Authenticate", "Basic realm=\"taxii\"");
    }
    if !accepts_taxii(request) {
        return error(
            406,
            "Not Acceptable",
            &format!("The Accept header must list {MEDIA_TYPE}."),
        );
    }
    if request.method != "GET" {
        return error(405, "Method Not Allowed", "This server only serves reads.");
    }
    let path = request.path();
    if path == "/taxii2/" {
        let root = format!("{}{API_ROOT}", state.base);
        return taxii(&json!({
            "title": "threatflow TAXII double",
            "description": "A TAXII 2.1 server for threatflow's tests.",
            "default": root,
            "api_roots": [root],
        }));
    }
    let Some(rest) = path.strip_prefix(API_ROOT) else {
        return not_found(path);
    };
    let segments: Vec<String> = rest.split('/').map(decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        [""] => taxii(&json!({
            "title": "threatflow indicators",
            "versions": [MEDIA_TYPE],
            "max_content_length": state.knobs.max_content_length,
        })),
        ["collections", ""] => {
            let collections: Vec<Value> =
                state.collections.iter().map(Collection::resource).collect();
            if collections.is_empty() {
                taxii(&json!({}))
            } else {
                taxii(&json!({ "collections": collections }))
            }
        }
        ["collections", id, ""] => match state.collections.iter().find(|c| c.id == *id) {
            Some(collection) => taxii(&collection.resource()),
            None => unknown_collection(id),
        },
        ["collections", id, "objects", ""] => objects(state, id, request),
        _ => not_found(path),
    }
}

fn not_found(path: &str) -> Reply {
    error(404, "Not Found", &format!("No resource at {path}."))
}

fn unknown_collection(id: &str) -> Reply {
    error(404, "Not Found", &format!("No collection {id}."))
}

fn list(request: &Request, name: &str) -> Vec<String> {
    request
        .query(name)
        .map(|value| {
            value
                .split(',')
                .map(|item| item.trim().to_owned())
                .filter(|item| !item.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn filters(request: &Request) -> Result<Filters, Reply> {
    let added_after = match request.query("added_after") {
        None => None,
        Some(text) => Some(text.parse::<Timestamp>().map_err(|_| {
            error(
                400,
                "Bad Request",
                &format!("added_after {text:?} is not an RFC 3339 timestamp."),
            )
        })?),
    };
    let versions = list(request, "match[version]");
    for version in &versions {
        if !matches!(version.as_str(), "first" | "last" | "all")
            && version.parse::<Timestamp>().is_err()
        {
            return Err(error(
                400,
                "Bad Request",
                &format!("match[version] {version:?} is not first, last, all or a timestamp."),
            ));
        }
    }
    Ok(Filters {
        added_after,
        types: list(request, "match[type]"),
        ids: list(request, "match[id]"),
        versions,
    })
}

/// The versions `filters` select, ordered by date added.
fn select<'a>(entries: &'a [Entry], filters: &Filters) -> Vec<&'a Entry> {
    let candidates: Vec<&Entry> = entries
        .iter()
        .filter(|entry| {
            filters
                .added_after
                .is_none_or(|after| entry.date_added > after)
        })
        .filter(|entry| {
            let kind = entry.object["type"]
                .as_str()
                .unwrap_or_else(|| entry.id.split("--").next().unwrap_or(""));
            filters.types.is_empty() || filters.types.iter().any(|t| t == kind)
        })
        .filter(|entry| filters.ids.is_empty() || filters.ids.contains(&entry.id))
        .collect();
    let wanted: Vec<&str> = if filters.versions.is_empty() {
        vec!["last"]
    } else {
        filters.versions.iter().map(String::as_str).collect()
    };
    if wanted.contains(&"all") {
        return candidates;
    }
    let stamps: Vec<Timestamp> = wanted.iter().filter_map(|v| v.parse().ok()).collect();
    // Each id's oldest and newest candidate, by rank.
    let mut bounds: HashMap<&str, (&Entry, &Entry)> = HashMap::new();
    for &entry in &candidates {
        let (oldest, newest) = bounds.entry(&entry.id).or_insert((entry, entry));
        if entry.rank() < oldest.rank() {
            *oldest = entry;
        }
        if entry.rank() > newest.rank() {
            *newest = entry;
        }
    }
    candidates
        .into_iter()
        .filter(|entry| {
            let (oldest, newest) = bounds[entry.id.as_str()];
            (wanted.contains(&"last") && std::ptr::eq(*entry, newest))
                || (wanted.contains(&"first") && std::ptr::eq(*entry, oldest))
                || entry
                    .version
                    .is_some_and(|version| stamps.contains(&version))
        })
        .collect()
}

fn objects(state: &mut State, id: &str, request: &Request) -> Reply {
    let Some(collection) = state.collections.iter().find(|c| c.id == id) else {
        return unknown_collection(id);
    };
    if !collection.can_read {
        return error(
            403,
            "Forbidden",
            &format!("This account may not read collection {id}."),
        );
    }
    let page_size = state.knobs.page_size;
    let limit = match request.query("limit") {
        None => page_size,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if limit > 0 => limit.min(page_size),
            _ => {
                return error(
                    400,
                    "Bad Request",
                    &format!("limit {text:?} is not a positive integer."),
                )
            }
        },
    };
    let (filters, after) = match request.query("next") {
        Some(token) => match state.cursors.get(&token) {
            Some(cursor) if cursor.collection == id => (cursor.filters.clone(), Some(cursor.after)),
            _ => {
                return error(
                    400,
                    "Bad Request",
                    &format!("next {token:?} was not issued for collection {id}."),
                )
            }
        },
        None => match filters(request) {
            Ok(filters) => (filters, None),
            Err(reply) => return reply,
        },
    };
    let remaining: Vec<&Entry> = select(&collection.entries, &filters)
        .into_iter()
        .filter(|entry| after.is_none_or(|after| entry.key() > after))
        .collect();
    let page = &remaining[..limit.min(remaining.len())];
    let (Some(first), Some(last)) = (page.first(), page.last()) else {
        return taxii(&json!({}));
    };
    let more = remaining.len() > page.len();
    let mut envelope = Map::new();
    envelope.insert("more".into(), json!(more));
    let (first_added, last_added, last_key) = (
        rfc3339(first.date_added),
        rfc3339(last.date_added),
        last.key(),
    );
    let objects: Vec<Value> = page.iter().map(|entry| entry.object.clone()).collect();
    if more && state.knobs.next_tokens {
        state.issued += 1;
        let issued = state.issued;
        let token = format!(
            "{:016x}{issued:04x}",
            std::collections::hash_map::RandomState::new().hash_one(issued)
        );
        state.cursors.insert(
            token.clone(),
            Cursor {
                collection: id.to_owned(),
                filters,
                after: last_key,
            },
        );
        envelope.insert("next".into(), json!(token));
    }
    envelope.insert("objects".into(), Value::Array(objects));
    taxii(&Value::Object(envelope))
        .with_header("X-TAXII-Date-Added-First", &first_added)
        .with_header("X-TAXII-Date-Added-Last", &last_added)
}
