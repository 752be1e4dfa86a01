//! A Kubernetes API server test double, speaking the real REST protocol for the resources
//! threatflow uses. Served from the start, as a cluster's built-in groups are:
//! `projectcalico.org/v3` GlobalNetworkSets, GlobalNetworkPolicies, their staged form and
//! Tiers, the core `pods`, `namespaces`, `services` and `nodes`, `batch/v1` `jobs`, and
//! `coordination.k8s.io/v1` `leases`. Absent until a test installs them
//! ([`KubeApi::install`], [`KubeApi::install_group`]), as optional components' CRDs are, the
//! resources that tell the egress identity mechanisms apart:
//!
//! - Calico Enterprise: `operator.tigera.io/v1` `egressgateways` (namespaced), and
//!   `projectcalico.org/v3` `egressgatewaypolicies`, `ippools` and `felixconfigurations`;
//! - Cilium: `cilium.io/v2` `ciliumegressgatewaypolicies` and `ciliumnodes`; Isovalent:
//!   `isovalent.com/v1` `isovalentegressgatewaypolicies`;
//! - Antrea: `crd.antrea.io/v1beta1` `egresses` and `externalippools`;
//! - OVN-Kubernetes: `k8s.ovn.org/v1` `egressips`;
//! - AKS: `egressgateway.kubernetes.azure.com/v1alpha1` `staticgatewayconfigurations`
//!   (namespaced).
//!
//! A resource is named by its plural alone in this double's methods (plurals are unique).
//! An uninstalled resource is absent from discovery and every request for it gets `404`;
//! uninstalling ends its open watches and keeps its objects. What it serves:
//!
//! - discovery: `/api` (`APIVersions`), `/apis` (`APIGroupList`: each served group with its
//!   `versions` and `preferredVersion`), `/apis/<group>` (`APIGroup`), and `/api/v1` and
//!   `/apis/<group>/<version>` (`APIResourceList`: `name`, `singularName`, `namespaced`,
//!   `kind`, `verbs`); a group or version that serves nothing now is `404 NotFound`. `/api`
//!   and `/apis` answer a request for aggregated discovery (`Accept:
//!   ...;as=APIGroupDiscoveryList`, logged as `<path> (aggregated)`) with an
//!   `APIGroupDiscoveryList`, or, after [`KubeApi::set_aggregated_discovery`]`(false)`, with
//!   the plain lists, as a server before 1.26 does;
//! - cluster-wide paths, and `namespaces/<ns>/<plural>` paths for namespaced resources; a
//!   namespaced object is named `<ns>/<name>` in this double's methods;
//! - `GET` a collection, with `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-joined)
//!   and `fieldSelector` (`metadata.name` and `metadata.namespace` with `=`, `==`, `!=`), whole
//!   or metadata only (`Accept: ...;as=PartialObjectMetadataList`, logged as
//!   `<path> (metadata)`), and `GET` an object, whole or metadata only; `404 NotFound` for a
//!   missing one; `403 Forbidden` for a resource the test marks forbidden (a role without
//!   it), installed or not;
//! - server-side apply: `PATCH` with `Content-Type: application/apply-patch+yaml` and a
//!   `fieldManager`; creates (201) or updates (200); `409 Conflict` when another manager owns the
//!   object and `force` is not set; `415` for other patch types; `400` without a field manager or
//!   for a name or kind that does not match the path; `422 Invalid` for a net that is not a CIDR;
//! - `DELETE` (200 with a `Status`, or 404);
//! - `POST` to a collection creates (201; `409 AlreadyExists` if the name is taken) and `PUT`
//!   replaces an object only at the `metadata.resourceVersion` it was read at (`409 Conflict`
//!   otherwise, `422` without one), which is what leader election's leases rely on;
//! - `metadata.resourceVersion` increasing on every write, `uid`, `creationTimestamp` (set on
//!   objects created without them) and `managedFields`;
//! - limits: a request body over 3 MiB gets `413`, an object over etcd's 1.5 MiB gets
//!   `500 etcdserver: request is too large`;
//! - watches (`?watch=true`), with the same selectors and metadata-only form
//!   (`as=PartialObjectMetadata`): the events after the given `resourceVersion`, then live
//!   `ADDED`/`MODIFIED`/`DELETED` events as objects change, `BOOKMARK`s every
//!   `bookmark_interval` when `allowWatchBookmarks=true`, the stream ending after
//!   `timeoutSeconds` (at most `max_watch`), and an `ERROR` event with a `410 Expired` status
//!   for a `resourceVersion` older than the last [`KubeApi::compact`]; a streaming list
//!   (`sendInitialEvents=true`) gets the current objects, then a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end`.
//!
//! Every request is recorded, so a test can assert what was (not) written.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

/// A served resource. Plurals are unique across groups, so the double's methods name a
/// resource by its plural alone.
struct Resource {
    /// `v1` for the core group, `<group>/<version>` for the others.
    api_version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    /// Served from the start, as a cluster's built-in groups are; the others (the CRDs of
    /// optional components) are absent until a test installs them ([`KubeApi::install`]).
    installed_at_start: bool,
}

impl Resource {
    const fn cluster(api_version: &'static str, plural: &'static str, kind: &'static str) -> Self {
        Resource {
            api_version,
            plural,
            kind,
            namespaced: false,
            installed_at_start: true,
        }
    }

    const fn namespaced(
        api_version: &'static str,
        plural: &'static str,
        kind: &'static str,
    ) -> Self {
        Resource {
            namespaced: true,
            ..Resource::cluster(api_version, plural, kind)
        }
    }

    /// Not served until a test installs it.
    const fn absent_at_start(self) -> Self {
        Resource {
            installed_at_start: false,
            ..self
        }
    }

    /// The API group: empty for the core group.
    fn group(&self) -> &'static str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }

    fn version(&self) -> &'static str {
        self.api_version
            .rsplit_once('/')
            .map_or(self.api_version, |(_, version)| version)
    }

    /// The path its collections and objects live under.
    fn prefix(&self) -> String {
        match self.group() {
            "" => format!("/api/{}/", self.api_version),
            _ => format!("/apis/{}/", self.api_version),
        }
    }

    /// `<plural>.<group>` (the plural alone for the core group), as the server's messages
    /// name a resource.
    fn qualified(&self) -> String {
        match self.group() {
            "" => self.plural.to_owned(),
            group => format!("{}.{group}", self.plural),
        }
    }
}

/// Served resources, in the order discovery lists their groups.
const RESOURCES: &[Resource] = &[
    Resource::cluster(
        "projectcalico.org/v3",
        "globalnetworksets",
        "GlobalNetworkSet",
    ),
    Resource::cluster(
        "projectcalico.org/v3",
        "globalnetworkpolicies",
        "GlobalNetworkPolicy",
    ),
    Resource::cluster(
        "projectcalico.org/v3",
        "stagedglobalnetworkpolicies",
        "StagedGlobalNetworkPolicy",
    ),
    Resource::cluster("projectcalico.org/v3", "tiers", "Tier"),
    // Calico Enterprise's egress gateway resources, which open-source Calico lacks.
    Resource::cluster(
        "projectcalico.org/v3",
        "egressgatewaypolicies",
        "EgressGatewayPolicy",
    )
    .absent_at_start(),
    Resource::cluster("projectcalico.org/v3", "ippools", "IPPool").absent_at_start(),
    Resource::cluster(
        "projectcalico.org/v3",
        "felixconfigurations",
        "FelixConfiguration",
    )
    .absent_at_start(),
    Resource::namespaced("v1", "pods", "Pod"),
    Resource::cluster("v1", "namespaces", "Namespace"),
    Resource::namespaced("v1", "services", "Service"),
    Resource::cluster("v1", "nodes", "Node"),
    Resource::namespaced("batch/v1", "jobs", "Job"),
    Resource::namespaced("coordination.k8s.io/v1", "leases", "Lease"),
    // The egress identity mechanisms, each detected by its group being served.
    Resource::namespaced("operator.tigera.io/v1", "egressgateways", "EgressGateway")
        .absent_at_start(),
    Resource::cluster(
        "cilium.io/v2",
        "ciliumegressgatewaypolicies",
        "CiliumEgressGatewayPolicy",
    )
    .absent_at_start(),
    Resource::cluster("cilium.io/v2", "ciliumnodes", "CiliumNode").absent_at_start(),
    Resource::cluster(
        "isovalent.com/v1",
        "isovalentegressgatewaypolicies",
        "IsovalentEgressGatewayPolicy",
    )
    .absent_at_start(),
    Resource::cluster("crd.antrea.io/v1beta1", "egresses", "Egress").absent_at_start(),
    Resource::cluster("crd.antrea.io/v1beta1", "externalippools", "ExternalIPPool")
        .absent_at_start(),
    Resource::cluster("k8s.ovn.org/v1", "egressips", "EgressIP").absent_at_start(),
    Resource::namespaced(
        "egressgateway.kubernetes.azure.com/v1alpha1",
        "staticgatewayconfigurations",
        "StaticGatewayConfiguration",
    )
    .absent_at_start(),
];

/// The verbs discovery lists for every resource: what this double serves (no
/// `deletecollection`).
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

fn resource(plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|resource| resource.plural == plural)
}

/// The double's name for an object: `<namespace>/<name>` for namespaced resources.
fn object_key(plural: &str, object: &Value) -> String {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match resource(plural).is_some_and(|resource| resource.namespaced) {
        true => format!(
            "{}/{name}",
            object["metadata"]["namespace"].as_str().unwrap_or_default()
        ),
        false => name.to_owned(),
    }
}

/// Which objects a request selects: its namespace, label and field selectors.
#[derive(Clone, Debug, Default)]
struct Selection {
    namespace: Option<String>,
    labels: String,
    fields: String,
}

impl Selection {
    fn matches(&self, object: &Value) -> bool {
        let metadata = &object["metadata"];
        self.namespace
            .as_deref()
            .is_none_or(|namespace| metadata["namespace"].as_str() == Some(namespace))
            && selects(&self.labels, &metadata["labels"])
            && self
                .fields
                .split(',')
                .filter(|term| !term.is_empty())
                .all(|term| {
                    let (field, value, equal) = match term.split_once("!=") {
                        Some((field, value)) => (field, value, false),
                        None => {
                            let (field, value) = term
                                .split_once("==")
                                .or_else(|| term.split_once('='))
                                .unwrap_or((term, ""));
                            (field, value, true)
                        }
                    };
                    let actual = match field.trim() {
                        "metadata.name" => metadata["name"].as_str(),
                        "metadata.namespace" => metadata["namespace"].as_str(),
                        _ => None,
                    };
                    (actual == Some(value.trim())) == equal
                })
    }
}

/// An object as a metadata-only request sees it.
fn metadata_only_form(object: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]})
}
const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;
const MAX_OBJECT_BYTES: usize = 1536 * 1024;

type Body = BoxBody<Bytes, Infallible>;

/// One change, as watches see it.
#[derive(Clone, Debug)]
struct Event {
    resource_version: u64,
    plural: String,
    /// A watch event type, or [`WITHDRAWN`].
    kind: &'static str,
    object: Value,
}

/// Not a watch event type: ends the open watches of the event's resource, as a real server
/// ends them when the resource's definition goes.
const WITHDRAWN: &str = "WITHDRAWN";

struct State {
    resource_version: u64,
    objects: BTreeMap<(String, String), Value>,
    requests: Vec<(String, String)>,
    /// Every request's bearer token, method and path.
    callers: Vec<(String, String, String)>,
    events: Vec<Event>,
    /// Watches from before this version get 410 Gone.
    compacted: u64,
    live: tokio::sync::broadcast::Sender<Event>,
    bookmark_interval: std::time::Duration,
    max_watch: std::time::Duration,
    /// Resources whose requests get `403 Forbidden` (the role lacks them).
    forbidden: BTreeSet<String>,
    /// Plurals of the resources served now.
    installed: BTreeSet<&'static str>,
    /// Whether `/api` and `/apis` answer a request for `as=APIGroupDiscoveryList` in kind,
    /// as servers since 1.26 do, rather than with the plain lists older servers send.
    aggregated_discovery: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            resource_version: 0,
            objects: BTreeMap::new(),
            requests: Vec::new(),
            callers: Vec::new(),
            events: Vec::new(),
            compacted: 0,
            live: tokio::sync::broadcast::channel(4096).0,
            bookmark_interval: std::time::Duration::from_millis(200),
            max_watch: std::time::Duration::from_secs(300),
            forbidden: Default::default(),
            installed: RESOURCES
                .iter()
                .filter(|resource| resource.installed_at_start)
                .map(|resource| resource.plural)
                .collect(),
            aggregated_discovery: true,
        }
    }
}

impl State {
    /// Stores `object` (or deletes it, for `DELETED`) under a new resource version and tells
    /// the watches.
    fn change(&mut self, plural: &str, kind: &'static str, mut object: Value) -> Value {
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let key = (plural.to_owned(), object_key(plural, &object));
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
        let plurals: BTreeSet<&str> = RESOURCES.iter().map(|resource| resource.plural).collect();
        assert_eq!(
            plurals.len(),
            RESOURCES.len(),
            "plurals name resources, so they must be unique"
        );
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
        self.kubeconfig_as(dir, "test-token")
    }

    /// A kubeconfig whose requests carry `token`, to tell clients apart ([`KubeApi::callers`]).
    pub fn kubeconfig_as(&self, dir: &std::path::Path, token: &str) -> std::path::PathBuf {
        let path = dir.join(format!("kubeconfig-{token}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster: {{server: '{}'}}\nusers:\n- name: tester\n  user: {{token: {}}}\ncontexts:\n- name: double\n  context: {{cluster: double, user: tester}}\ncurrent-context: double\n",
                self.url(),
                token
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

    /// Stores an object as if another client had created or changed it; watches see it. A
    /// new object without a `uid` or `creationTimestamp` gets them, as from a real server.
    pub fn seed(&self, plural: &str, mut object: Value) {
        let mut state = self.state.lock().unwrap();
        let key = (plural.to_owned(), object_key(plural, &object));
        let existing = state.objects.get(&key).cloned();
        let metadata = object["metadata"].as_object_mut().unwrap();
        for field in ["uid", "creationTimestamp"] {
            if !metadata.contains_key(field) {
                let value = match &existing {
                    Some(existing) => existing["metadata"][field].clone(),
                    None if field == "uid" => json!(format!("uid-{}", state.resource_version + 1)),
                    None => json!(now_rfc3339()),
                };
                metadata.insert(field.into(), value);
            }
        }
        let kind = if existing.is_some() {
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

    /// Deletes an object without telling the watches, as if it went while a watch was
    /// disconnected and its event has since been compacted away.
    pub fn remove_silently(&self, plural: &str, key: &str) {
        let mut state = self.state.lock().unwrap();
        state.objects.remove(&(plural.to_owned(), key.to_owned()));
        state.resource_version += 1;
    }

    /// While set, every request for `plural` gets `403 Forbidden`, as when the service
    /// account's role does not grant it.
    pub fn set_forbidden(&self, plural: &str, forbidden: bool) {
        let mut state = self.state.lock().unwrap();
        match forbidden {
            true => state.forbidden.insert(plural.to_owned()),
            false => state.forbidden.remove(plural),
        };
    }

    /// Serves a resource from now on (its CRD was applied): discovery lists it and its
    /// paths answer. Objects seeded before are there. Panics for a resource the double does
    /// not know.
    pub fn install(&self, plural: &str) {
        let resource = resource(plural).unwrap_or_else(|| panic!("no served resource {plural}"));
        self.state.lock().unwrap().installed.insert(resource.plural);
    }

    /// Stops serving a resource (its CRD was deleted): discovery no longer lists it, its
    /// paths answer `404`, and its open watches end. Its stored objects stay, to be served
    /// again after [`KubeApi::install`].
    pub fn uninstall(&self, plural: &str) {
        let resource = resource(plural).unwrap_or_else(|| panic!("no served resource {plural}"));
        let mut state = self.state.lock().unwrap();
        if state.installed.remove(resource.plural) {
            let event = Event {
                resource_version: state.resource_version,
                plural: resource.plural.to_owned(),
                kind: WITHDRAWN,
                object: Value::Null,
            };
            let _ = state.live.send(event);
        }
    }

    /// Installs every resource of an API group (`""` for the core group), as a component's
    /// installer applies all of its CRDs. Panics for a group the double does not serve.
    pub fn install_group(&self, group: &str) {
        for plural in group_plurals(group) {
            self.install(plural);
        }
    }

    /// Uninstalls every resource of an API group; see [`KubeApi::uninstall`].
    pub fn uninstall_group(&self, group: &str) {
        for plural in group_plurals(group) {
            self.uninstall(plural);
        }
    }

    /// Whether `/api` and `/apis` answer a request for aggregated discovery
    /// (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,...`)
    /// with an `APIGroupDiscoveryList`, as servers since 1.26 do (the default), or, when
    /// `false`, with the plain `APIVersions` and `APIGroupList` a server before 1.26 sends.
    pub fn set_aggregated_discovery(&self, served: bool) {
        self.state.lock().unwrap().aggregated_discovery = served;
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

    /// The stored objects of these resources as one `v1 List`, as
    /// `kubectl get <plurals> -A -o json` writes it.
    pub fn list(&self, plurals: &[&str]) -> Value {
        let state = self.state.lock().unwrap();
        let items: Vec<Value> = plurals
            .iter()
            .flat_map(|plural| {
                state
                    .objects
                    .iter()
                    .filter(move |((p, _), _)| p == plural)
                    .map(|(_, object)| object.clone())
            })
            .collect();
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
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

    /// Every request so far: (bearer token, method, path).
    pub fn callers(&self) -> Vec<(String, String, String)> {
        self.state.lock().unwrap().callers.clone()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }
}

/// The plurals of a served group's resources; panics for a group the double does not serve.
fn group_plurals(group: &str) -> Vec<&'static str> {
    let plurals: Vec<&'static str> = RESOURCES
        .iter()
        .filter(|resource| resource.group() == group)
        .map(|resource| resource.plural)
        .collect();
    assert!(!plurals.is_empty(), "no served resource in group {group:?}");
    plurals
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    respond_as(code, "application/json", body)
}

fn respond_as(code: StatusCode, content_type: &str, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

/// An object's name as the server's messages give it: without the namespace of this
/// double's `<ns>/<name>` key.
fn bare_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// The `404` a real server sends for a path it does not serve.
fn no_such_path(path: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
}

/// Now as RFC 3339 in whole seconds, as the API server writes timestamps.
fn now_rfc3339() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

/// A watch: history after `since`, then live events, bookmarks, and the end after `timeout`.
#[allow(clippy::too_many_arguments)]
fn watch(
    state: &Mutex<State>,
    plural: String,
    selection: Selection,
    metadata_only: bool,
    since: Option<u64>,
    bookmarks: bool,
    initial_events: bool,
    timeout: std::time::Duration,
) -> Response<Body> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(1024);
    let line = move |kind: &str, object: &Value| {
        let object = match metadata_only && kind != "ERROR" && kind != "BOOKMARK" {
            true => metadata_only_form(object),
            false => object.clone(),
        };
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
            .filter(|event| selection.matches(&event.object))
        {
            if sender.send(line(event.kind, &event.object)).await.is_err() {
                return;
            }
        }
        if initial_events {
            let end = json!({"kind": "Bookmark", "apiVersion": "v1", "metadata": {"resourceVersion": last.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            if sender.send(line("BOOKMARK", &end)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ticker = tokio::time::interval(bookmark_interval);
        loop {
            tokio::select! {
                event = live.recv() => match event {
                    Ok(event) if event.kind == WITHDRAWN && event.plural == plural => return,
                    Ok(event) if event.plural == plural && event.resource_version > last && selection.matches(&event.object) => {
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
            (super::http::decode(key), super::http::decode(value))
        })
        .collect()
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

/// What aggregated discovery's answers are labelled with.
const AGGREGATED_DISCOVERY: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// A served group version: its `apiVersion` and its installed resources, in table order.
type GroupVersion = (&'static str, Vec<&'static Resource>);

/// The group versions served now, in table order.
fn served_versions(installed: &BTreeSet<&str>) -> Vec<GroupVersion> {
    let mut versions: Vec<GroupVersion> = Vec::new();
    for resource in RESOURCES
        .iter()
        .filter(|resource| installed.contains(resource.plural))
    {
        match versions
            .iter_mut()
            .find(|(api_version, _)| *api_version == resource.api_version)
        {
            Some((_, resources)) => resources.push(resource),
            None => versions.push((resource.api_version, vec![resource])),
        }
    }
    versions
}

/// The served versions of one group, the first being the preferred one.
fn group_versions<'a>(
    served: &'a [GroupVersion],
    group: &'a str,
) -> impl Iterator<Item = &'a GroupVersion> {
    served
        .iter()
        .filter(move |(_, resources)| resources[0].group() == group)
}

/// The non-core groups served now, in table order.
fn served_groups(served: &[GroupVersion]) -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for (_, resources) in served {
        let group = resources[0].group();
        if !group.is_empty() && !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

/// A group as each entry of `/apis` describes it (`/apis/<group>` adds `kind` and
/// `apiVersion`).
fn api_group(served: &[GroupVersion], group: &str) -> Value {
    let versions: Vec<Value> = group_versions(served, group)
        .map(|(api_version, resources)| {
            json!({"groupVersion": api_version, "version": resources[0].version()})
        })
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
}

/// An `APIResourceList`, as `/api/v1` and `/apis/<group>/<version>` answer.
fn api_resource_list(api_version: &str, resources: &[&Resource]) -> Value {
    let resources: Vec<Value> = resources
        .iter()
        .map(|resource| {
            json!({
                "name": resource.plural,
                "singularName": resource.kind.to_lowercase(),
                "namespaced": resource.namespaced,
                "kind": resource.kind,
                "verbs": VERBS,
            })
        })
        .collect();
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version, "resources": resources})
}

/// An `APIGroupDiscoveryList` entry: a group with all of its versions and resources.
fn group_discovery(served: &[GroupVersion], group: &str) -> Value {
    let versions: Vec<Value> = group_versions(served, group)
        .map(|(_, resources)| {
            let version = resources[0].version();
            let resources: Vec<Value> = resources
                .iter()
                .map(|resource| {
                    json!({
                        "resource": resource.plural,
                        "responseKind": {"group": group, "version": version, "kind": resource.kind},
                        "scope": if resource.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": resource.kind.to_lowercase(),
                        "verbs": VERBS,
                    })
                })
                .collect();
            json!({"version": version, "resources": resources, "freshness": "Current"})
        })
        .collect();
    // The core group's entry has no name, as a real server writes it.
    let metadata = match group {
        "" => json!({}),
        group => json!({"name": group}),
    };
    json!({"metadata": metadata, "versions": versions})
}

/// Answers a discovery request (`/api`, `/apis`, `/api/<version>`, `/apis/<group>` and
/// `/apis/<group>/<version>`); `None` for any other path. A group or version that serves
/// nothing now is `404`, as on a real server.
fn discovery(state: &State, path: &str, aggregated: bool) -> Option<Response<Body>> {
    let served = served_versions(&state.installed);
    let aggregated = aggregated && state.aggregated_discovery;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let served_version = |api_version: String| {
        served
            .iter()
            .find(|(served, _)| *served == api_version)
            .map(|(api_version, resources)| {
                respond(StatusCode::OK, &api_resource_list(api_version, resources))
            })
            .unwrap_or_else(|| no_such_path(path))
    };
    let response = match segments.as_slice() {
        ["api"] if aggregated => {
            let items: Vec<Value> = group_versions(&served, "")
                .next()
                .map(|_| group_discovery(&served, ""))
                .into_iter()
                .collect();
            respond_as(
                StatusCode::OK,
                AGGREGATED_DISCOVERY,
                &json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}),
            )
        }
        ["api"] => {
            let versions: Vec<&str> = group_versions(&served, "")
                .map(|(api_version, _)| *api_version)
                .collect();
            respond(
                StatusCode::OK,
                &json!({"kind": "APIVersions", "versions": versions, "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
            )
        }
        ["apis"] if aggregated => {
            let items: Vec<Value> = served_groups(&served)
                .into_iter()
                .map(|group| group_discovery(&served, group))
                .collect();
            respond_as(
                StatusCode::OK,
                AGGREGATED_DISCOVERY,
                &json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}),
            )
        }
        ["apis"] => {
            let groups: Vec<Value> = served_groups(&served)
                .into_iter()
                .map(|group| api_group(&served, group))
                .collect();
            respond(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
        }
        ["api", version] => served_version(version.to_string()),
        ["apis", group] => match group_versions(&served, group).next() {
            Some(_) => {
                let mut body = api_group(&served, group);
                body["kind"] = json!("APIGroup");
                body["apiVersion"] = json!("v1");
                respond(StatusCode::OK, &body)
            }
            None => no_such_path(path),
        },
        ["apis", group, version] => served_version(format!("{group}/{version}")),
        _ => return None,
    };
    Some(response)
}

async fn handle(state: &Mutex<State>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // `kube`'s `list_metadata` and metadata watches ask for metadata only
    // (`PartialObjectMetadataList`, `PartialObjectMetadata`).
    let accept = request
        .headers()
        .get("accept")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    // `kube`'s `Discovery::run_aggregated` asks for aggregated discovery first, falling back
    // (within the header) to plain JSON.
    let aggregated = accept
        .replace(' ', "")
        .contains("g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
    let logged = if metadata_only {
        format!("{path} (metadata)")
    } else if aggregated {
        format!("{path} (aggregated)")
    } else {
        path.clone()
    };
    let token = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    {
        let mut state = state.lock().unwrap();
        state
            .callers
            .push((token, method.to_string(), logged.clone()));
        state.requests.push((method.to_string(), logged));
    }
    if method == Method::GET {
        if let Some(response) = discovery(&state.lock().unwrap(), &path, aggregated) {
            return response;
        }
    }
    // `<prefix><plural>[/<name>]`, or `<prefix>namespaces/<ns>/<plural>[/<name>]` for a
    // namespaced resource; the object key of a namespaced object is `<ns>/<name>`.
    let resource = RESOURCES.iter().find_map(|resource| {
        let plural = resource.plural;
        let segments: Vec<&str> = path.strip_prefix(&resource.prefix())?.split('/').collect();
        let (namespace, rest) = match segments.as_slice() {
            ["namespaces", namespace, rest @ ..] if resource.namespaced && !rest.is_empty() => {
                (Some(namespace.to_string()), rest)
            }
            rest => (None, rest),
        };
        let name = match rest {
            [found] if *found == plural => None,
            [found, name] if *found == plural => Some(match &namespace {
                Some(namespace) => format!("{namespace}/{name}"),
                None => name.to_string(),
            }),
            _ => return None,
        };
        Some((resource, namespace, name))
    });
    let Some((resource, namespace, name)) = resource else {
        return no_such_path(&path);
    };
    let (plural, kind, api_version) = (
        resource.plural.to_owned(),
        resource.kind,
        resource.api_version,
    );
    // Authorization comes before routing on a real server, so a forbidden resource is `403`
    // whether or not it is installed.
    if state.lock().unwrap().forbidden.contains(&plural) {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("{plural} is forbidden: User \"system:serviceaccount:threatflow:threatflow\" cannot list resource \"{plural}\" in API group \"{}\" at the cluster scope", resource.group()),
        );
    }
    if !state.lock().unwrap().installed.contains(resource.plural) {
        return no_such_path(&path);
    }
    let params = query(&request);
    let selection = Selection {
        namespace,
        labels: params.get("labelSelector").cloned().unwrap_or_default(),
        fields: params.get("fieldSelector").cloned().unwrap_or_default(),
    };
    if method == Method::GET
        && name.is_none()
        && params
            .get("watch")
            .is_some_and(|watch| watch == "true" || watch == "1")
    {
        // A streaming list (`sendInitialEvents=true`) starts with the current objects whatever
        // the version, and marks their end with a bookmark.
        let initial_events = params
            .get("sendInitialEvents")
            .is_some_and(|send| send == "true");
        let since = params
            .get("resourceVersion")
            .and_then(|version| version.parse().ok())
            .filter(|_| !initial_events);
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
            selection,
            metadata_only,
            since,
            bookmarks,
            initial_events,
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
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((p, _), object)| *p == plural && selection.matches(object))
                .map(|(_, object)| match metadata_only {
                    true => metadata_only_form(object),
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
            Some(object) if metadata_only => respond(StatusCode::OK, &metadata_only_form(object)),
            Some(object) => respond(StatusCode::OK, object),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "{} \"{}\" not found",
                    resource.qualified(),
                    bare_name(&name)
                ),
            ),
        },
        (Method::DELETE, Some(name)) => {
            match state.objects.get(&(plural.clone(), name.clone())).cloned() {
                Some(object) => {
                    state.change(&plural, "DELETED", object);
                    respond(
                        StatusCode::OK,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": bare_name(&name), "group": resource.group(), "kind": plural}}),
                    )
                }
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!(
                        "{} \"{}\" not found",
                        resource.qualified(),
                        bare_name(&name)
                    ),
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
            let mut object: Value = match yaml_serde::from_slice(&body) {
                Ok(object) => object,
                Err(error) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("error decoding YAML: {error}"),
                    )
                }
            };
            if object_key(&plural, &object) != name
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
        (Method::POST, None) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "invalid JSON".into());
            };
            if let Some(namespace) = &selection.namespace {
                object["metadata"]["namespace"] = json!(namespace);
            }
            let key = (plural.clone(), object_key(&plural, &object));
            if state.objects.contains_key(&key) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{plural} \"{}\" already exists", key.1),
                );
            }
            object["metadata"]["uid"] = json!(format!("uid-{}", state.resource_version + 1));
            object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            let object = state.change(&plural, "ADDED", object);
            respond(StatusCode::CREATED, &object)
        }
        (Method::PUT, Some(name)) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "invalid JSON".into());
            };
            let Some(existing) = state.objects.get(&(plural.clone(), name.clone())) else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{plural} \"{name}\" not found"),
                );
            };
            let Some(version) = object["metadata"]["resourceVersion"].as_str() else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("{kind} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0: must be specified for an update"),
                );
            };
            if existing["metadata"]["resourceVersion"].as_str() != Some(version) {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
                );
            }
            let object = state.change(&plural, "MODIFIED", object);
            respond(StatusCode::OK, &object)
        }
        (method, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        ),
    }
}
