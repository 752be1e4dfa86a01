//! FortiGate: the FortiOS REST API v2 (`/api/v2/cmdb/firewall/...`), 6.4 to 7.6.
//!
//! - The API key goes in an `Authorization: Bearer` header, marked sensitive; never in a URL
//!   (FortiOS 7.4.5 and later refuse `?access_token=`, and URLs end up in logs).
//! - Addresses are `firewall/address` (`type ipmask`, `subnet`) and `firewall/address6`
//!   (`type ipprefix`, `ip6`); groups `firewall/addrgrp` and `firewall/addrgrp6`, whose `member`
//!   list a `PUT` replaces whole.
//! - Listing asks only for objects whose comment mentions threatflow, then keeps those whose
//!   comment is this cluster's marker exactly.
//! - A create that finds the name taken (`-5`, or HTTP 424 on older builds) reads the object:
//!   this cluster's is updated, anyone else's is reported as a conflict and left alone. Before
//!   an update or a delete the object is read again: one deleted by hand is created again
//!   (update) or done (delete), one whose name someone else has taken since is left alone. A
//!   delete of an object still in use (`-23`) is left for later.
//! - A `DELETE` always names one object: FortiOS purges every unreferenced object of a table
//!   on a `DELETE` of the table URL, so an empty name is refused before any request.
//! - 401, 403 and 429 concern the whole device and stop the apply; so do 5xx replies that are
//!   not FortiOS errors (a proxy's page, a crash) and lost connections.
//! - Requests are paced to a rate; the device's version (in every reply) decides whether a
//!   group may be empty (7.2 and later).

use ipnet::IpNet;
use reqwest::header::{HeaderMap, AUTHORIZATION};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    Applied, BoxFuture, Family, Limits, Marker, Objects, Op, OpOutcome, Plan, Target, TargetError,
};
use crate::net::http::{self, HttpSettings};
use crate::net::rate::RateLimit;

/// How to reach one FortiGate.
#[derive(Clone, Debug)]
pub struct FortiGateSettings {
    /// `https://host[:port]`.
    pub url: String,
    /// The VDOM to work in; the management VDOM when unset.
    pub vdom: Option<String>,
    /// The REST API admin's key.
    pub api_key: String,
    pub http: HttpSettings,
    pub requests_per_second: f64,
    pub group_max_members: usize,
    pub marker: Marker,
}

/// A FortiGate as a [`Target`].
pub struct FortiGate {
    client: reqwest::Client,
    base: String,
    vdom: Option<String>,
    headers: HeaderMap,
    rate: RateLimit,
    marker: Marker,
    group_max_members: usize,
    /// `(major, minor, patch)`, from the last reply.
    version: Option<(u32, u32, u32)>,
}

impl std::fmt::Debug for FortiGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FortiGate")
            .field("base", &self.base)
            .field("vdom", &self.vdom)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The reply envelope FortiOS wraps every answer in (the fields threatflow reads).
#[derive(Debug, Default, Deserialize)]
struct Envelope {
    #[serde(default)]
    status: String,
    #[serde(default)]
    error: Option<i64>,
    #[serde(default)]
    cli_error: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    results: Value,
}

/// A reply that concerns one object (device-wide failures are errors before this).
struct Reply {
    status: u16,
    envelope: Envelope,
}

impl Reply {
    fn ok(&self) -> bool {
        self.status == 200 && self.envelope.status != "error"
    }

    /// The name may be taken: `-5` (or `-15`) from current builds, 424 from older ones (which
    /// also use it for invalid attributes; the read that follows tells them apart).
    fn duplicate(&self) -> bool {
        matches!(self.envelope.error, Some(-5 | -15)) || self.status == 424
    }

    /// Why FortiOS refused: the CLI's first meaningful line, else the error number.
    fn reason(&self) -> String {
        let cli = self.envelope.cli_error.as_deref().and_then(|text| {
            text.lines()
                .map(str::trim)
                .find(|line| !line.is_empty() && !line.starts_with("Command fail"))
        });
        match (cli, self.envelope.error) {
            (Some(line), Some(code)) => format!("{line} (error {code}, HTTP {})", self.status),
            (Some(line), None) => format!("{line} (HTTP {})", self.status),
            (None, Some(code)) => format!("error {code} (HTTP {})", self.status),
            (None, None) => format!("HTTP {}", self.status),
        }
    }
}

pub(crate) fn table(family: Family, group: bool) -> &'static str {
    match (family, group) {
        (Family::V4, false) => "address",
        (Family::V6, false) => "address6",
        (Family::V4, true) => "addrgrp",
        (Family::V6, true) => "addrgrp6",
    }
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    crate::net::http::percent_encode(segment)
}

/// `major.minor.patch` from `v7.2.4` (or `7.2`).
pub(crate) fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let text = text.trim().trim_start_matches(['v', 'V']);
    let text = text.split(['-', ' ', ',']).next()?;
    let mut parts = text.split('.').map(|part| part.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// `10.0.0.1 255.255.255.255`, `10.0.0.1/32` or a bare address.
pub(crate) fn parse_subnet(text: &str) -> Option<IpNet> {
    let text = text.trim();
    if let Some((ip, mask)) = text.split_once(' ') {
        let ip: std::net::Ipv4Addr = ip.trim().parse().ok()?;
        let mask: std::net::Ipv4Addr = mask.trim().parse().ok()?;
        let prefix = ipnet::ipv4_mask_to_prefix(mask).ok()?;
        return IpNet::new(ip.into(), prefix).ok();
    }
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

fn address_body(family: Family, name: &str, net: &IpNet, marker: &Marker) -> Value {
    match family {
        Family::V4 => json!({
            "name": name,
            "type": "ipmask",
            "subnet": net.to_string(),
            "comment": marker.comment(),
        }),
        Family::V6 => json!({
            "name": name,
            "type": "ipprefix",
            "ip6": net.to_string(),
            "comment": marker.comment(),
        }),
    }
}

fn group_body(name: &str, members: &std::collections::BTreeSet<String>, marker: &Marker) -> Value {
    let members: Vec<Value> = members.iter().map(|name| json!({ "name": name })).collect();
    json!({ "name": name, "member": members, "comment": marker.comment() })
}

impl FortiGate {
    pub fn new(settings: FortiGateSettings) -> Result<FortiGate, TargetError> {
        let client = http::client(&settings.http).map_err(|error| {
            TargetError::Setup(crate::telemetry::ErrorChain(&error).to_string())
        })?;
        let headers = http::secret_headers(&[(
            AUTHORIZATION.to_string(),
            format!("Bearer {}", settings.api_key),
        )])
        .map_err(|_| TargetError::Setup("the API key is not a valid header value".into()))?;
        Ok(FortiGate {
            client,
            base: settings.url.trim_end_matches('/').to_owned(),
            vdom: settings.vdom,
            headers,
            rate: RateLimit::per_second(settings.requests_per_second),
            marker: settings.marker,
            group_max_members: settings.group_max_members,
            version: None,
        })
    }

    /// Sends one request to `firewall/<path>`; failures that concern the whole device are
    /// errors, the rest come back as a reply.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, TargetError> {
        self.rate.acquire().await;
        let mut url = reqwest::Url::parse(&format!("{}/api/v2/cmdb/firewall/{path}", self.base))
            .map_err(|error| TargetError::Setup(format!("the URL is not valid: {error}")))?;
        {
            let mut pairs = url.query_pairs_mut();
            pairs.extend_pairs(query);
            if let Some(vdom) = &self.vdom {
                pairs.append_pair("vdom", vdom);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let mut request = self
            .client
            .request(method, url)
            .headers(self.headers.clone());
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let (status, bytes) = super::exchange(request).await?;
        let detail = || super::excerpt(&bytes);
        let envelope: Envelope = match serde_json::from_slice(&bytes) {
            Ok(envelope) => envelope,
            Err(_) if status >= 500 => {
                return Err(TargetError::Unavailable(format!(
                    "HTTP {status} without a FortiOS reply: {}",
                    detail()
                )))
            }
            Err(_) => {
                return Err(TargetError::Protocol(format!(
                    "HTTP {status} without a FortiOS reply: {}",
                    detail()
                )))
            }
        };
        if status >= 500 && envelope.error.is_none() {
            return Err(TargetError::Unavailable(format!(
                "HTTP {status}: {}",
                detail()
            )));
        }
        if let Some(version) = envelope.version.as_deref().and_then(parse_version) {
            self.version = Some(version);
        }
        Ok(Reply { status, envelope })
    }

    /// The objects of one table that carry this cluster's marker.
    async fn list(&mut self, family: Family, group: bool) -> Result<Vec<Value>, TargetError> {
        let fields = match group {
            true => "name|comment|member",
            false => "name|comment|type|subnet|ip6",
        };
        let query = [("filter", "comment=@threatflow"), ("format", fields)];
        let reply = self
            .send(Method::GET, table(family, group), &query, None)
            .await?;
        if !reply.ok() {
            return Err(TargetError::Protocol(format!(
                "listing firewall/{}: {}",
                table(family, group),
                reply.reason()
            )));
        }
        let Value::Array(results) = reply.envelope.results else {
            return Err(TargetError::Protocol(format!(
                "listing firewall/{}: `results` is not a list",
                table(family, group)
            )));
        };
        Ok(results
            .into_iter()
            .filter(|object| self.marker.owns(object["comment"].as_str()))
            .collect())
    }

    fn object_path(family: Family, group: bool, name: &str) -> Option<String> {
        // Never the table itself: a DELETE there purges the table.
        (!name.is_empty()).then(|| format!("{}/{}", table(family, group), encode(name)))
    }

    async fn create(
        &mut self,
        family: Family,
        group: bool,
        name: &str,
        body: &Value,
    ) -> Result<OpOutcome, TargetError> {
        let reply = self
            .send(Method::POST, table(family, group), &[], Some(body))
            .await?;
        if reply.ok() {
            return Ok(OpOutcome::Done);
        }
        if !reply.duplicate() {
            return Ok(OpOutcome::Refused {
                reason: reply.reason(),
            });
        }
        // The name is taken: ours (a create the cache did not know of) is updated, anyone
        // else's is left alone.
        let Some(path) = Self::object_path(family, group, name) else {
            return Ok(refused_empty());
        };
        let existing = self.send(Method::GET, &path, &[], None).await?;
        if !existing.ok() {
            // Not there after all: the create was refused for another reason.
            return Ok(OpOutcome::Refused {
                reason: reply.reason(),
            });
        }
        let comment = existing.envelope.results[0]["comment"]
            .as_str()
            .map(str::to_owned);
        if self.marker.owns(comment.as_deref()) {
            let reply = self.send(Method::PUT, &path, &[], Some(body)).await?;
            return Ok(outcome(&reply));
        }
        Ok(OpOutcome::Conflict {
            owner: comment.filter(|comment| !comment.is_empty()),
        })
    }

    /// Whether the object at `path` is still this cluster's: `None` when it is gone, else the
    /// conflict to report when it is someone else's now.
    async fn ownership(&mut self, path: &str) -> Result<Option<Option<OpOutcome>>, TargetError> {
        let existing = self.send(Method::GET, path, &[], None).await?;
        if existing.status == 404 {
            return Ok(None);
        }
        if !existing.ok() {
            return Ok(Some(Some(OpOutcome::Refused {
                reason: existing.reason(),
            })));
        }
        let comment = existing.envelope.results[0]["comment"].as_str();
        Ok(Some(match self.marker.owns(comment) {
            true => None,
            false => Some(OpOutcome::Conflict {
                owner: comment
                    .filter(|comment| !comment.is_empty())
                    .map(str::to_owned),
            }),
        }))
    }

    async fn update(
        &mut self,
        family: Family,
        group: bool,
        name: &str,
        body: &Value,
    ) -> Result<OpOutcome, TargetError> {
        let Some(path) = Self::object_path(family, group, name) else {
            return Ok(refused_empty());
        };
        // Someone may have deleted it and taken the name since it was read.
        match self.ownership(&path).await? {
            None => return self.create(family, group, name, body).await,
            Some(Some(outcome)) => return Ok(outcome),
            Some(None) => {}
        }
        let reply = self.send(Method::PUT, &path, &[], Some(body)).await?;
        if reply.status == 404 {
            // Deleted by hand since it was read: create it again.
            return self.create(family, group, name, body).await;
        }
        Ok(outcome(&reply))
    }

    async fn delete(
        &mut self,
        family: Family,
        group: bool,
        name: &str,
    ) -> Result<OpOutcome, TargetError> {
        let Some(path) = Self::object_path(family, group, name) else {
            return Ok(refused_empty());
        };
        match self.ownership(&path).await? {
            None => return Ok(OpOutcome::Done),
            Some(Some(outcome)) => return Ok(outcome),
            Some(None) => {}
        }
        let reply = self.send(Method::DELETE, &path, &[], None).await?;
        Ok(match reply.envelope.error {
            _ if reply.ok() || reply.status == 404 => OpOutcome::Done,
            Some(-23) => OpOutcome::InUse,
            Some(-3) => OpOutcome::Done,
            _ => OpOutcome::Refused {
                reason: reply.reason(),
            },
        })
    }

    async fn apply_op(&mut self, op: &Op) -> Result<OpOutcome, TargetError> {
        let marker = self.marker.clone();
        match op {
            Op::CreateAddress { family, name, net } => {
                let body = address_body(*family, name, net, &marker);
                self.create(*family, false, name, &body).await
            }
            Op::UpdateAddress { family, name, net } => {
                let body = address_body(*family, name, net, &marker);
                self.update(*family, false, name, &body).await
            }
            Op::CreateGroup {
                family,
                name,
                members,
            } => {
                let body = group_body(name, members, &marker);
                self.create(*family, true, name, &body).await
            }
            Op::UpdateGroup {
                family,
                name,
                members,
            } => {
                let body = group_body(name, members, &marker);
                self.update(*family, true, name, &body).await
            }
            Op::DeleteGroup { family, name } => self.delete(*family, true, name).await,
            Op::DeleteAddress { family, name } => self.delete(*family, false, name).await,
        }
    }

    async fn read_owned(&mut self) -> Result<Objects, TargetError> {
        let mut objects = Objects::default();
        for family in [Family::V4, Family::V6] {
            for address in self.list(family, false).await? {
                let name = address["name"].as_str().unwrap_or_default().to_owned();
                let field = match family {
                    Family::V4 => "subnet",
                    Family::V6 => "ip6",
                };
                // An owned object that is not a plain prefix any more (edited by hand) is
                // kept out of the state read, so the next apply rewrites it.
                if let Some(net) = address[field].as_str().and_then(parse_subnet) {
                    objects.addresses.insert((family, name), net);
                }
            }
            for group in self.list(family, true).await? {
                let name = group["name"].as_str().unwrap_or_default().to_owned();
                let members = group["member"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|member| member["name"].as_str().map(str::to_owned))
                    .collect();
                objects.groups.insert((family, name), members);
            }
        }
        Ok(objects)
    }
}

fn outcome(reply: &Reply) -> OpOutcome {
    if reply.ok() {
        OpOutcome::Done
    } else {
        OpOutcome::Refused {
            reason: reply.reason(),
        }
    }
}

fn refused_empty() -> OpOutcome {
    OpOutcome::Refused {
        reason: "an object needs a name".into(),
    }
}

impl Target for FortiGate {
    fn read(&mut self) -> BoxFuture<'_, Result<Objects, TargetError>> {
        Box::pin(self.read_owned())
    }

    fn limits(&self) -> Limits {
        Limits {
            name_max: 79,
            group_max_members: self.group_max_members,
            empty_groups: self.version.is_some_and(|version| version >= (7, 2, 0)),
        }
    }

    fn apply<'a>(&'a mut self, plan: &'a Plan) -> BoxFuture<'a, Applied> {
        Box::pin(async move {
            let mut applied = Applied::default();
            for (index, op) in plan.ops.iter().enumerate() {
                match self.apply_op(op).await {
                    Ok(outcome) => applied.outcomes.push((index, outcome)),
                    Err(error) => {
                        applied.error = Some(error);
                        break;
                    }
                }
            }
            applied
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_read_in_every_form_fortios_writes() {
        let net = |text: &str| parse_subnet(text).map(|net| net.to_string());
        assert_eq!(
            net("10.1.2.3 255.255.255.255").as_deref(),
            Some("10.1.2.3/32")
        );
        assert_eq!(net("10.1.0.0 255.255.0.0").as_deref(), Some("10.1.0.0/16"));
        assert_eq!(net("10.1.2.3/32").as_deref(), Some("10.1.2.3/32"));
        assert_eq!(net("fd00::5/128").as_deref(), Some("fd00::5/128"));
        assert_eq!(net("10.1.2.3 255.0.255.0"), None);
        assert_eq!(net("nonsense"), None);
    }

    #[test]
    fn versions_and_names_in_urls() {
        assert_eq!(parse_version("v7.2.4"), Some((7, 2, 4)));
        assert_eq!(
            parse_version("v7.4.3-build2487 240514 (GA.M)"),
            Some((7, 4, 3))
        );
        assert_eq!(parse_version("6.4"), Some((6, 4, 0)));
        assert_eq!(parse_version("junk"), None);
        assert_eq!(encode("k8s.shop.web~1a2b"), "k8s.shop.web~1a2b");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(FortiGate::object_path(Family::V4, false, ""), None);
    }
}
