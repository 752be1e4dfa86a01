//! A Kubernetes API server test double, speaking the real REST protocol for the resources
//! threatflow uses (`projectcalico.org/v3` GlobalNetworkSets and GlobalNetworkPolicies):
//!
//! - `GET` a collection, with `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-joined),
//!   and `GET` an object; `404 NotFound` for a missing one;
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
//! Every request is recorded, so a test can assert what was (not) written. Watches are the
//! next thing to add here, for the enrichment work.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

const GROUP_PATH: &str = "/apis/projectcalico.org/v3/";
const RESOURCES: &[(&str, &str)] = &[
    ("globalnetworksets", "GlobalNetworkSet"),
    ("globalnetworkpolicies", "GlobalNetworkPolicy"),
];
const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;
const MAX_OBJECT_BYTES: usize = 1536 * 1024;

#[derive(Default)]
struct State {
    resource_version: u64,
    objects: BTreeMap<(String, String), Value>,
    requests: Vec<(String, String)>,
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

    /// Stores an object as if another client had created it.
    pub fn seed(&self, plural: &str, object: Value) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        state.objects.insert((plural.to_owned(), name), object);
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

fn status(code: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
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

async fn handle(state: &Mutex<State>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    state
        .lock()
        .unwrap()
        .requests
        .push((method.to_string(), path.clone()));
    let Some(rest) = path.strip_prefix(GROUP_PATH) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    let (plural, name) = match rest.split_once('/') {
        Some((plural, name)) => (plural.to_owned(), Some(name.to_owned())),
        None => (rest.to_owned(), None),
    };
    let Some(&(_, kind)) = RESOURCES.iter().find(|(candidate, _)| *candidate == plural) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({plural})"),
        );
    };
    let params = query(&request);
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
                .map(|(_, object)| object.clone())
                .collect();
            respond(
                StatusCode::OK,
                &json!({"apiVersion": "projectcalico.org/v3", "kind": format!("{kind}List"), "metadata": {"resourceVersion": state.resource_version.to_string()}, "items": items}),
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
        (Method::DELETE, Some(name)) => match state.objects.remove(&(plural.clone(), name.clone()))
        {
            Some(_) => {
                state.resource_version += 1;
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
        },
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
                || object["apiVersion"] != "projectcalico.org/v3"
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
            state.resource_version += 1;
            let metadata = object["metadata"].as_object_mut().unwrap();
            metadata.insert(
                "resourceVersion".into(),
                json!(state.resource_version.to_string()),
            );
            metadata.insert(
                "uid".into(),
                existing.as_ref().map_or_else(
                    || json!(format!("uid-{}", state.resource_version)),
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
            metadata.insert("managedFields".into(), json!([{"manager": manager, "operation": "Apply", "apiVersion": "projectcalico.org/v3"}]));
            let code = if existing.is_some() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            state.objects.insert(key, object.clone());
            respond(code, &object)
        }
        (method, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        ),
    }
}
