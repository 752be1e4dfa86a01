//! A FortiGuard Premium API double on the loopback HTTP harness (HTTPS under the test PKI), for
//! the `fortiguard-premium-feed` connector (`fortiguard-access.md` §2.1 and §5.3):
//!
//! - `GET /v1/cti/feed/stix2?cc=<all|cc,...>[&date=YYYY-MM-DD]` needs the header
//!   `Token: <token>` (401 otherwise) and answers `[{"data": "<download URL>"}]`, a fresh URL
//!   per call;
//! - the download URL serves the gzip-compressed STIX 2 bundle as a file
//!   (`Content-Type: application/gzip`, no `Content-Encoding`, so an HTTP client does not
//!   unpack it by itself). It stands in for a pre-signed object-store URL: it needs no token,
//!   it is only good with its exact query string (a mangled or unissued URL gets a 403), and a
//!   test can expire every issued URL. By default it lives on a second server on another
//!   port, a different origin, so a client that forwards the `Token` header to the download
//!   host is caught ([`FortiGuard::token_leaked_to_download`]);
//! - `GET /v1/fgd/psirt/detail?id=1` answers 404 with a valid token (the connector's health
//!   check: "404 = token OK") and 401 without one.
//!
//! The default bundle is [`sample_bundle`]: an `identity` first, then indicators with every
//! pattern type the reference lists. A test replaces it with [`FortiGuard::set_bundle`], or
//! with raw bytes for hostile cases ([`FortiGuard::set_download`]).
//!
//! Assumed, not documented by Fortinet: the bodies of the 401 and 400 replies (small JSON
//! objects), the 400 for a missing `cc` or a malformed `date`, and the shape of the download
//! URL and of its 403. Not served: the CSV and STIX 1 feeds, `/v1/rate`, and rate limits
//! (none is published; [`FortiGuard::inject`] gives 429s and 5xx when a test needs them).

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::fortigate::with_fault;
pub use super::fortigate::Fault;
use super::http::{HttpServer, Reply, Request};

/// The path prefix of download URLs.
const DOWNLOAD_PREFIX: &str = "/dl/";

/// How the API behaves.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// The token the `Token` header must carry.
    pub token: String,
    /// Whether downloads come from a second server (another origin) rather than the API's.
    pub separate_download_host: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            token: "fortiguard-token".into(),
            separate_download_host: true,
        }
    }
}

/// gzip, as the feed's files are compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A STIX 2.1 bundle shaped like the feed's: `objects[0]` is the `identity`, then indicators
/// with `pattern`, `created`, `modified`, `valid_from` and `valid_until` for an IPv4 address,
/// an IPv6 address, a domain name, a URL, a `network-traffic` source with a port, and an IPv4
/// address whose `valid_until` is in the past.
pub fn sample_bundle() -> Value {
    let identity = "identity--3f2d0c4e-8c5a-4b8e-9d1e-6a1f0b7c2d10";
    let indicator = |n: u32, pattern: &str, valid_until: &str| {
        json!({
            "type": "indicator",
            "spec_version": "2.1",
            "id": format!("indicator--6b0f5a2e-0c7d-4d3e-9f4a-00000000000{n}"),
            "created_by_ref": identity,
            "created": "2025-05-01T00:00:00.000Z",
            "modified": "2025-05-01T00:00:00.000Z",
            "pattern": pattern,
            "pattern_type": "stix",
            "valid_from": "2025-05-01T00:00:00.000Z",
            "valid_until": valid_until,
        })
    };
    let later = "2099-01-01T00:00:00.000Z";
    json!({
        "type": "bundle",
        "id": "bundle--0e6a3b7c-5d2f-4a8e-b1c9-7f4d2e8a6b01",
        "objects": [
            {
                "type": "identity",
                "spec_version": "2.1",
                "id": identity,
                "created": "2025-05-01T00:00:00.000Z",
                "modified": "2025-05-01T00:00:00.000Z",
                "name": "Fortinet",
                "identity_class": "organization",
            },
            indicator(1, "[ipv4-addr:value = '198.51.100.23']", later),
            indicator(2, "[ipv6-addr:value = '2001:db8::23']", later),
            indicator(3, "[domain-name:value = 'bad.example.net']", later),
            indicator(4, "[url:value = 'http://bad.example.net/payload']", later),
            indicator(
                5,
                "[network-traffic:src_ref.value = '203.0.113.7' AND network-traffic:src_port = 4444]",
                later,
            ),
            indicator(6, "[ipv4-addr:value = '192.0.2.99']", "2025-05-02T00:00:00.000Z"),
        ],
    })
}

struct State {
    knobs: Knobs,
    /// The base URL download URLs start with.
    download_base: String,
    /// The bytes a download serves, as served.
    download: Vec<u8>,
    /// The path and query of every issued download URL.
    issued: Vec<String>,
    /// Whether every issued URL has expired (403).
    expired: bool,
    faults: VecDeque<Fault>,
}

/// A running FortiGuard Premium API double.
#[derive(Clone)]
pub struct FortiGuard {
    /// The API host.
    pub api: HttpServer,
    /// The download host: a second server, or the API host when the knob says so.
    pub download: HttpServer,
    state: Arc<Mutex<State>>,
}

impl FortiGuard {
    /// Serves HTTPS under the test PKI in `dir` (clients trust `dir/ca.pem`), with
    /// [`sample_bundle`] as the feed.
    pub async fn start(dir: &std::path::Path, knobs: Knobs) -> FortiGuard {
        let separate = knobs.separate_download_host;
        let state = Arc::new(Mutex::new(State {
            knobs,
            download_base: String::new(),
            download: gzip(sample_bundle().to_string().as_bytes()),
            issued: Vec::new(),
            expired: false,
            faults: VecDeque::new(),
        }));
        let api_state = state.clone();
        let api = HttpServer::start_tls(dir, move |request| {
            let mut state = api_state.lock();
            let fault = state.faults.pop_front();
            with_fault(fault, || {
                if !separate && request.path().starts_with(DOWNLOAD_PREFIX) {
                    serve_download(&state, request)
                } else {
                    respond(&mut state, request)
                }
            })
        })
        .await;
        let download = if separate {
            let download_state = state.clone();
            HttpServer::start_tls(dir, move |request| {
                serve_download(&download_state.lock(), request)
            })
            .await
        } else {
            api.clone()
        };
        state.lock().download_base = download.base.clone();
        FortiGuard {
            api,
            download,
            state,
        }
    }

    /// The API base URL (the connector's `baseUrl`), `https://localhost:PORT`.
    pub fn url(&self) -> String {
        self.api.base.clone()
    }

    /// The feed URL for country codes `cc`.
    pub fn feed_url(&self, cc: &str) -> String {
        self.api.url(&format!("/v1/cti/feed/stix2?cc={cc}"))
    }

    /// Serves `bundle`, gzip-compressed, from now on.
    pub fn set_bundle(&self, bundle: &Value) {
        self.state.lock().download = gzip(bundle.to_string().as_bytes());
    }

    /// Serves exactly these bytes from now on (not compressed by the double): a truncated
    /// gzip, plain JSON, a gzip bomb.
    pub fn set_download(&self, bytes: Vec<u8>) {
        self.state.lock().download = bytes;
    }

    /// Whether every download URL, issued or to come, has expired (403), as a pre-signed URL
    /// that has run out.
    pub fn expire_downloads(&self, expired: bool) {
        self.state.lock().expired = expired;
    }

    /// Every download URL handed out so far.
    pub fn download_urls(&self) -> Vec<String> {
        let state = self.state.lock();
        state
            .issued
            .iter()
            .map(|target| format!("{}{target}", state.download_base))
            .collect()
    }

    /// Misbehaviours for the next API requests (not downloads), in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().faults.extend(faults);
    }

    /// Every request to the API host, downloads excluded.
    pub fn api_requests(&self) -> Vec<Request> {
        self.api
            .requests()
            .into_iter()
            .filter(|request| !request.path().starts_with(DOWNLOAD_PREFIX))
            .collect()
    }

    /// Every download request.
    pub fn download_requests(&self) -> Vec<Request> {
        self.download
            .requests()
            .into_iter()
            .filter(|request| request.path().starts_with(DOWNLOAD_PREFIX))
            .collect()
    }

    /// Whether any download request carried a `Token` header (the API's credential sent to
    /// another host).
    pub fn token_leaked_to_download(&self) -> bool {
        self.download_requests()
            .iter()
            .any(|request| request.header("token").is_some())
    }
}

fn respond(state: &mut State, request: &Request) -> Reply {
    if request.header("token") != Some(state.knobs.token.as_str()) {
        return Reply::json(401, &json!({"message": "Unauthorized"}));
    }
    if request.method != "GET" {
        return Reply::json(405, &json!({"message": "Method Not Allowed"}));
    }
    match request.path() {
        "/v1/cti/feed/stix2" => {
            let Some(cc) = request.query("cc").filter(|cc| !cc.is_empty()) else {
                return Reply::json(400, &json!({"message": "cc is required"}));
            };
            if let Some(date) = request.query("date") {
                if date.parse::<jiff::civil::Date>().is_err() {
                    return Reply::json(400, &json!({"message": "date must be YYYY-MM-DD"}));
                }
            }
            let n = state.issued.len() + 1;
            let country = cc.replace(|c: char| !c.is_ascii_alphanumeric(), "-");
            let target = format!(
                "{DOWNLOAD_PREFIX}cti/stix2-{country}-{n}.json.gz?Expires=3600&Signature={:016x}",
                std::hash::BuildHasher::hash_one(
                    &std::collections::hash_map::RandomState::new(),
                    n
                )
            );
            state.issued.push(target.clone());
            Reply::json(
                200,
                &json!([{ "data": format!("{}{target}", state.download_base) }]),
            )
        }
        // The connector's health check: with a valid token, a 404 means the token is good.
        "/v1/fgd/psirt/detail" => Reply::json(404, &json!({"message": "Not Found"})),
        _ => Reply::json(404, &json!({"message": "Not Found"})),
    }
}

fn serve_download(state: &State, request: &Request) -> Reply {
    if request.method != "GET" {
        return Reply::status(405, "");
    }
    if state.expired || !state.issued.contains(&request.target) {
        return Reply::status(
            403,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Request has expired or the signature does not match</Message></Error>",
        )
        .with_header("Content-Type", "application/xml");
    }
    Reply::ok(state.download.clone()).with_header("Content-Type", "application/gzip")
}
