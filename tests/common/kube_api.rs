//! A Kubernetes API server test double, speaking the real REST protocol for the resources
//! threatflow uses (`projectcalico.org/v3` GlobalNetworkSets and GlobalNetworkPolicies, and the
//! core `pods`, `namespaces`, `services` and `nodes`):
//!
//! - `GET` a collection, with `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-joined),
//!   whole or metadata only (`Accept: ...;as=PartialObjectMetadataList`, logged as
//!   `<path> (metadata)`), and `GET` an object; `404 NotFound` for a missing one;
//! - server-side apply: `PATCH` with `Content-Type: application/apply-patch+yaml` and a
//!   `fieldManager`; creates (201) or updates (200); `409 Conflict` when another manager owns the
//!   object and `force` is not set; `415` for other patch types; `400` without a field manager or
//!   for a name or kind that does not match the path; `422 Invalid` for a net that is not a CIDR;
//! - `DELETE` (200 with a `Status`, or 404);
//! - `metadata.resourceVersion` increasing on every write, `uid`, `creationTimestamp` and
//!   `managedFields`;
//! - limits: a request body over 3 MiB gets `413`, an object over etcd's 1.5 MiB gets
//!   `500 etcdserver: request is too large`.
//!
//! - watches (`?watch=true`): the events after the given `resourceVersion`, then live
//!   `ADDED`/`MODIFIED`/`DELETED` events as objects change, `BOOKMARK`s every
//!   `bookmark_interval` when `allowWatchBookmarks=true`, the stream ending after
//!   `timeoutSeconds` (at most `max_watch`), and an `ERROR` event with a `410 Expired` status
//!   for a `resourceVersion` older than the last [`KubeApi::compact`].
//!
//! Every request is recorded, so a test can assert what was (not) written.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

/// Served resources: (path prefix, plural, kind, apiVersion).
const RESOURCES: &[(&str, &str, &str, &str)] = &[
    (
        "/apis/projectcalico.org/v3/",
        "globalnetworksets",
        "GlobalNetworkSet",
        "projectcalico.org/v3",
    ),
    (
        "/apis/projectcalico.org/v3/",
        "globalnetworkpolicies",
        "GlobalNetworkPolicy",
        "projectcalico.org/v3",
    ),
    ("/api/v1/", "pods", "Pod", "v1"),
    ("/api/v1/", "namespaces", "Namespace", "v1"),
    ("/api/v1/", "services", "Service", "v1"),
    ("/api/v1/", "nodes", "Node", "v1"),
];
const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;
const MAX_OBJECT_BYTES: usize = 1536 * 1024;

type Body = BoxBody<Bytes, Infallible>;

/// One change, as watches see it.
#[derive(Clone, Debug)]
struct Event {
    resource_version: u64,
    plural: String,
    kind: &'static str,
    object: Value,
}

struct State {
    resource_version: u64,
    objects: BTreeMap<(String, String), Value>,
    requests: Vec<(String, String)>,
    events: Vec<Event>,
    /// Watches from before this version get 410 Gone.
    compacted: u64,
    live: tokio::sync::broadcast::Sender<Event>,
    bookmark_interval: std::time::Duration,
    max_watch: std::time::Duration,
}

impl Default for State {
    fn default() -> Self {
        State {
            resource_version: 0,
            objects: BTreeMap::new(),
            requests: Vec::new(),
            events: Vec::new(),
            compacted: 0,
            live: tokio::sync::broadcast::channel(4096).0,
            bookmark_interval: std::time::Duration::from_millis(200),
            max_watch: std::time::Duration::from_secs(300),
        }
    }
}

impl State {
    /// Stores `object` (or deletes it, for `DELETED`) under a new resource version and tells
    /// the watches.
    fn change(&mut self, plural: &str, kind: &'static str, mut object: Value) -> Value {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (plural.to_owned(), name);
        if kind == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, object.clone());
        }
        let event = Event {
            resource_version: self.resource_version,
            plural: plural.to_owned(),
            kind,
            object: object.clone(),
        };
        self.events.push(event.clone());
        let _ = self.live.send(event);
        object
    }
}

/// A running API server double.
#[derive(Clone)]
pub struct KubeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl KubeApi {
    pub async fn start() -> KubeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        KubeApi { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file pointing at this server.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster: {{server: '{}'}}\nusers:\n- name: tester\n  user: {{token: test-token}}\ncontexts:\n- name: double\n  context: {{cluster: double, user: tester}}\ncurrent-context: double\n",
                self.url()
            ),
        )
        .unwrap();
        path
    }

    /// A client for this server.
    pub fn client(&self) -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        kube::Client::try_from(kube::Config::new(self.url().parse().unwrap())).unwrap()
    }

    /// Stores an object as if another client had created or changed it; watches see it.
    pub fn seed(&self, plural: &str, object: Value) {
        let mut state = self.state.lock().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let kind = if state.objects.contains_key(&(plural.to_owned(), name)) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.change(plural, kind, object);
    }

    /// Deletes an object as if another client had; watches see it.
    pub fn remove(&self, plural: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(object) = state
            .objects
            .get(&(plural.to_owned(), name.to_owned()))
            .cloned()
        {
            state.change(plural, "DELETED", object);
        }
    }

    /// Forgets the event history: watches resuming from before now get `410 Gone`.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.events.clear();
        state.compacted = state.resource_version;
    }

    /// How often watches that asked for them get bookmarks, and how long any watch may last.
    pub fn set_watch_timing(
        &self,
        bookmark_interval: std::time::Duration,
        max_watch: std::time::Duration,
    ) {
        let mut state = self.state.lock().unwrap();
        state.bookmark_interval = bookmark_interval;
        state.max_watch = max_watch;
    }

    pub fn get(&self, plural: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&(plural.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Names of the stored objects of a resource.
    pub fn names(&self, plural: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .objects
            .keys()
            .filter(|(p, _)| p == plural)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// `METHOD path` of every request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

/// A watch: history after `since`, then live events, bookmarks, and the end after `timeout`.
fn watch(
    state: &Mutex<State>,
    plural: String,
    selector: String,
    since: Option<u64>,
    bookmarks: bool,
    timeout: std::time::Duration,
) -> Response<Body> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let line = |kind: &str, object: &Value| {
        Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
    };
    let (history, mut live, bookmark_interval, timeout, current, compacted) = {
        let state = state.lock().unwrap();
        let since = since.unwrap_or(0);
        let history: Vec<Event> = if since == 0 {
            // resourceVersion 0 or unset: the current objects, as ADDED.
            state
                .objects
                .iter()
                .filter(|((p, _), _)| *p == plural)
                .map(|(_, object)| Event {
                    resource_version: 0,
                    plural: plural.clone(),
                    kind: "ADDED",
                    object: object.clone(),
                })
                .collect()
        } else {
            state
                .events
                .iter()
                .filter(|event| event.resource_version > since && event.plural == plural)
                .cloned()
                .collect()
        };
        (
            history,
            state.live.subscribe(),
            state.bookmark_interval,
            timeout.min(state.max_watch),
            state.resource_version,
            (since != 0 && since < state.compacted).then_some(state.compacted),
        )
    };
    tokio::spawn(async move {
        if compacted.is_some() {
            let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410});
            let _ = sender.send(line("ERROR", &gone)).await;
            return;
        }
        let mut last = current;
        for event in history
            .iter()
            .filter(|event| selects(&selector, &event.object["metadata"]["labels"]))
        {
            if sender.send(line(event.kind, &event.object)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ticker = tokio::time::interval(bookmark_interval);
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    Ok(event) if event.plural == plural && event.resource_version > last && selects(&selector, &event.object["metadata"]["labels"]) => {
                        last = event.resource_version;
                        if sender.send(line(event.kind, &event.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(event) => last = last.max(event.resource_version),
                    Err(_) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    let bookmark = json!({"kind": "Bookmark", "apiVersion": "v1", "metadata": {"resourceVersion": last.to_string()}});
                    if sender.send(line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), receiver))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

fn query(request: &Request<Incoming>) -> BTreeMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `labels` satisfy a label selector.
fn selects(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .filter(|term| !term.is_empty())
        .all(|term| {
            let label = |key: &str| {
                labels
                    .get(key.trim())
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            if let Some((key, value)) = term.split_once("!=") {
                label(key).as_deref() != Some(value.trim())
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                label(key).as_deref() == Some(value.trim())
            } else if let Some(key) = term.strip_prefix('!') {
                label(key).is_none()
            } else {
                label(term).is_some()
            }
        })
}

async fn handle(state: &Mutex<State>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // `kube`'s `list_metadata` asks for metadata only, as `PartialObjectMetadataList`.
    let metadata_only = request
        .headers()
        .get("accept")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("as=PartialObjectMetadataList"));
    let logged = if metadata_only {
        format!("{path} (metadata)")
    } else {
        path.clone()
    };
    state
        .lock()
        .unwrap()
        .requests
        .push((method.to_string(), logged));
    let resource = RESOURCES
        .iter()
        .find_map(|&(prefix, plural, kind, api_version)| {
            let rest = path.strip_prefix(prefix)?;
            let (found, name) = rest
                .split_once('/')
                .map_or((rest, None), |(found, name)| (found, Some(name.to_owned())));
            (found == plural && name.as_deref().is_none_or(|name| !name.contains('/')))
                .then(|| (plural.to_owned(), name, kind, api_version))
        });
    let Some((plural, name, kind, api_version)) = resource else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    let params = query(&request);
    if method == Method::GET
        && name.is_none()
        && params
            .get("watch")
            .is_some_and(|watch| watch == "true" || watch == "1")
    {
        let since = params
            .get("resourceVersion")
            .and_then(|version| version.parse().ok());
        let timeout = std::time::Duration::from_secs(
            params
                .get("timeoutSeconds")
                .and_then(|seconds| seconds.parse().ok())
                .unwrap_or(300),
        );
        let bookmarks = params
            .get("allowWatchBookmarks")
            .is_some_and(|allow| allow == "true");
        return watch(
            state,
            plural,
            params.get("labelSelector").cloned().unwrap_or_default(),
            since,
            bookmarks,
            timeout,
        );
    }
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return status(StatusCode::BAD_REQUEST, "BadRequest", error.to_string()),
    };
    if body.len() > MAX_REQUEST_BYTES {
        return status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {MAX_REQUEST_BYTES}"),
        );
    }
    let mut state = state.lock().unwrap();
    match (method, name) {
        (Method::GET, None) => {
            let selector = params.get("labelSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((p, _), object)| {
                    *p == plural && selects(&selector, &object["metadata"]["labels"])
                })
                                .map(|(_, object)| match metadata_only {
                    true => json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]}),
                    false => object.clone(),
                })
                .collect();
            let (api_version, kind) = match metadata_only {
                true => ("meta.k8s.io/v1", "PartialObjectMetadata"),
                false => (api_version, kind),
            };
            respond(
                StatusCode::OK,
                &json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": state.resource_version.to_string()}, "items": items}),
            )
        }
        (Method::GET, Some(name)) => match state.objects.get(&(plural.clone(), name.clone())) {
            Some(object) => respond(StatusCode::OK, object),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{plural}.projectcalico.org \"{name}\" not found"),
            ),
        },
        (Method::DELETE, Some(name)) => {
            match state.objects.get(&(plural.clone(), name.clone())).cloned() {
                Some(object) => {
                    state.change(&plural, "DELETED", object);
                    respond(
                        StatusCode::OK,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name, "group": "projectcalico.org", "kind": plural}}),
                    )
                }
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{plural}.projectcalico.org \"{name}\" not found"),
                ),
            }
        }
        (Method::PATCH, Some(name)) => {
            if !content_type.starts_with("application/apply-patch+yaml") {
                return status(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml (got {content_type})"));
            }
            let Some(manager) = params
                .get("fieldManager")
                .filter(|manager| !manager.is_empty())
                .cloned()
            else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "PATCH requests with apply content type need fieldManager".into(),
                );
            };
            let mut object: Value = match serde_yaml::from_slice(&body) {
                Ok(object) => object,
                Err(error) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("error decoding YAML: {error}"),
                    )
                }
            };
            if object["metadata"]["name"].as_str() != Some(name.as_str())
                || object["kind"].as_str() != Some(kind)
                || object["apiVersion"] != api_version
            {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the name, kind or apiVersion of the object does not match the request".into(),
                );
            }
            if let Some(nets) = object["spec"]["nets"].as_array() {
                for (i, net) in nets.iter().enumerate() {
                    let valid = net
                        .as_str()
                        .is_some_and(|net| net.parse::<ipnet::IpNet>().is_ok());
                    if !valid {
                        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("{kind}.projectcalico.org \"{name}\" is invalid: spec.nets[{i}]: Invalid value: {net}: must be a CIDR"));
                    }
                }
            }
            let key = (plural.clone(), name.clone());
            let existing = state.objects.get(&key).cloned();
            let force = params.get("force").is_some_and(|force| force == "true");
            if let Some(existing) = &existing {
                let owner = existing["metadata"]["managedFields"][0]["manager"]
                    .as_str()
                    .unwrap_or("");
                if owner != manager && !force {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("Apply failed with 1 conflict: conflict with \"{owner}\": .spec"),
                    );
                }
            }
            if serde_json::to_vec(&object).unwrap().len() > MAX_OBJECT_BYTES {
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "etcdserver: request is too large".into(),
                );
            }
            let metadata = object["metadata"].as_object_mut().unwrap();
            metadata.insert(
                "uid".into(),
                existing.as_ref().map_or_else(
                    || json!(format!("uid-{}", state.resource_version + 1)),
                    |existing| existing["metadata"]["uid"].clone(),
                ),
            );
            metadata.insert(
                "creationTimestamp".into(),
                existing.as_ref().map_or_else(
                    || json!("2026-01-01T00:00:00Z"),
                    |existing| existing["metadata"]["creationTimestamp"].clone(),
                ),
            );
            metadata.insert(
                "managedFields".into(),
                json!([{"manager": manager, "operation": "Apply", "apiVersion": api_version}]),
            );
            let code = if existing.is_some() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let object = state.change(
                &plural,
                if existing.is_some() {
                    "MODIFIED"
                } else {
                    "ADDED"
                },
                object,
            );
            respond(code, &object)
        }
        (method, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        ),
    }
}
