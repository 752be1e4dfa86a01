//! Panorama and PAN-OS: the XML API (`POST /api/`, form-encoded), as far as reading a device
//! group's rulebase needs it.
//!
//! - The key is sent in the `X-PAN-KEY` header, never in a URL or a form. It is either made
//!   beforehand (a Secret) or generated with `type=keygen` from a user and password, and
//!   generated again once when a call answers `403` (a changed password, or a newer keygen for
//!   the same admin, invalidates it).
//! - Replies are `<response status=… code=…>`. As PAN-OS clients do, `status` `error` or
//!   `failed` is a failure, and so is any code other than none, 0, 19 (read) and 20 (write),
//!   even with `status="success"`: `get` of a missing node answers `success` with code 7.
//! - Change detection asks for the configuration audit (`show config audit info`), whose newest
//!   entry moves with every commit: one call per poll while nothing changes.
//! - Reads use `show` (the running configuration), not `get` (the candidate an admin may be
//!   editing).

pub mod objects;
pub mod rules;
pub mod userid;

use reqwest::header::HeaderMap;
use roxmltree::{Document, Node};

use rules::child;

use super::Credentials;
use super::TargetError;
use crate::firewall::rules::Rulebase;
use crate::net::http::{self, HttpSettings};
use crate::net::rate::RateLimit;

/// Text as XML character data or an attribute value.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The header carrying the key.
const KEY_HEADER: &str = "X-PAN-KEY";

/// How to reach one Panorama.
#[derive(Clone, Debug)]
pub struct PanoramaSettings {
    /// `https://host[:port]`.
    pub url: String,
    /// The device group whose rules apply (`shared` for the shared rules alone).
    pub device_group: String,
    pub credentials: Credentials,
    pub http: HttpSettings,
    /// A managed firewall's serial: runtime calls (User-ID, registered IPs) are relayed to it.
    pub target: Option<String>,
    /// The virtual system, on a multi-vsys firewall.
    pub vsys: Option<String>,
    pub requests_per_second: f64,
}

/// A Panorama (or a firewall) over the XML API.
pub struct Panorama {
    client: reqwest::Client,
    endpoint: String,
    settings: PanoramaSettings,
    key: Option<String>,
    rate: RateLimit,
}

impl std::fmt::Debug for Panorama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Panorama")
            .field("endpoint", &self.endpoint)
            .field("device_group", &self.settings.device_group)
            .finish_non_exhaustive()
    }
}

/// A reply that passed the status check, with its text for the caller to read.
struct Reply(String);

impl Reply {
    fn document(&self) -> Result<Document<'_>, TargetError> {
        Document::parse(&self.0).map_err(|error| TargetError::Protocol(format!("not XML: {error}")))
    }
}

/// `<response status=… code=…>`: success, or the failure's code and message.
fn check(text: &str) -> Result<(), (Option<u32>, String)> {
    let document = Document::parse(text).map_err(|_| {
        (
            None,
            format!("not an XML API reply: {}", super::excerpt(text.as_bytes())),
        )
    })?;
    let root = document.root_element();
    if !root.has_tag_name("response") {
        return Err((
            None,
            format!("not an XML API reply: <{}>", root.tag_name().name()),
        ));
    }
    let status = root.attribute("status").unwrap_or_default();
    let code = root
        .attribute("code")
        .and_then(|code| code.trim().parse().ok());
    let failed = matches!(status, "error" | "failed") || !matches!(code, None | Some(0 | 19 | 20));
    if failed {
        return Err((code, message(root)));
    }
    Ok(())
}

/// The message of a reply: `msg/line` (joined), `msg`, or `result/msg`.
fn message(root: Node) -> String {
    let msg = child(root, "msg").or_else(|| child(root, "result").and_then(|r| child(r, "msg")));
    let Some(msg) = msg else {
        return "no message".into();
    };
    let lines: Vec<String> = msg
        .descendants()
        .filter(|node| node.is_text())
        .filter_map(|node| node.text())
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
        .collect();
    lines.join("; ")
}

impl Panorama {
    pub fn new(settings: PanoramaSettings) -> Result<Panorama, TargetError> {
        let client = http::client(&settings.http).map_err(|error| {
            TargetError::Setup(crate::telemetry::ErrorChain(&error).to_string())
        })?;
        let key = match &settings.credentials {
            Credentials::ApiKey(key) => Some(key.clone()),
            Credentials::Login { .. } => None,
        };
        Ok(Panorama {
            client,
            endpoint: format!("{}/api/", settings.url.trim_end_matches('/')),
            rate: RateLimit::per_second(settings.requests_per_second),
            settings,
            key,
        })
    }

    /// One form-encoded POST; the reply's text (HTTP 200) or the transport's error.
    async fn post(&mut self, form: &[(&str, &str)]) -> Result<String, TargetError> {
        self.rate.acquire().await;
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.key {
            headers =
                http::secret_headers(&[(KEY_HEADER.to_owned(), key.clone())]).map_err(|_| {
                    TargetError::Setup("the API key is not a valid header value".into())
                })?;
        }
        let request = self
            .client
            .post(&self.endpoint)
            .headers(headers)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        let (status, headers, bytes) = super::send(request).await?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match status {
            // PAN-OS answers a bad key with HTTP 403 and the API's own envelope (code 403),
            // which the caller reads: a key made from a password is generated again.
            200 => Ok(text),
            403 if text.trim_start().starts_with("<response") => Ok(text),
            401 | 403 => Err(TargetError::Unauthorized {
                status,
                detail: super::excerpt(&bytes),
            }),
            429 => Err(TargetError::Throttled {
                retry_after: crate::net::http::retry_after(&headers),
            }),
            status if status >= 500 => Err(TargetError::Unavailable(format!(
                "HTTP {status}: {}",
                super::excerpt(&bytes)
            ))),
            status => Err(TargetError::Protocol(format!(
                "HTTP {status}: {}",
                super::excerpt(&bytes)
            ))),
        }
    }

    async fn keygen(&mut self) -> Result<(), TargetError> {
        let Credentials::Login { user, password } = self.settings.credentials.clone() else {
            return Ok(());
        };
        self.key = None;
        let text = self
            .post(&[("type", "keygen"), ("user", &user), ("password", &password)])
            .await?;
        let unauthorized = |detail: String| TargetError::Unauthorized {
            status: 200,
            detail: format!("keygen for {user}: {detail}"),
        };
        check(&text).map_err(|(_, message)| unauthorized(message))?;
        let document = Reply(text);
        let document = document.document()?;
        let key = document
            .descendants()
            .find(|node| node.has_tag_name("key"))
            .and_then(|node| node.text())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| unauthorized("the reply has no key".into()))?;
        self.key = Some(key.to_owned());
        Ok(())
    }

    /// A call with the key: generated first when needed, and once more on a 403. The API's
    /// own refusals (other codes) come back as the inner error, with their code and message.
    async fn call_api(
        &mut self,
        form: &[(&str, &str)],
    ) -> Result<Result<Reply, (Option<u32>, String)>, TargetError> {
        let login = matches!(self.settings.credentials, Credentials::Login { .. });
        let mut renewed = false;
        loop {
            if login && self.key.is_none() {
                self.keygen().await?;
            }
            let text = self.post(form).await?;
            match check(&text) {
                Ok(()) => return Ok(Ok(Reply(text))),
                Err((Some(403), _)) if login && !renewed => {
                    self.key = None;
                    renewed = true;
                }
                Err((Some(403), message)) => {
                    return Err(TargetError::Unauthorized {
                        status: 403,
                        detail: message,
                    })
                }
                Err((Some(16), message)) => return Err(TargetError::Forbidden(message)),
                // A User-ID batch with per-entry messages: applied, the messages for the caller.
                Err((None, _)) if text.contains("<uid-response>") => return Ok(Ok(Reply(text))),
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
    }

    /// [`Panorama::call_api`], with the API's refusals as errors.
    async fn call(&mut self, form: &[(&str, &str)]) -> Result<Reply, TargetError> {
        self.call_api(form).await?.map_err(|(code, message)| {
            let code = code.map_or_else(|| "no code".to_owned(), |code| format!("code {code}"));
            TargetError::Protocol(format!("{code}: {message}"))
        })
    }

    /// `show` of a node of the running configuration; `None` when there is no such node.
    async fn show(&mut self, xpath: &str) -> Result<Option<Reply>, TargetError> {
        match self
            .call(&[("type", "config"), ("action", "show"), ("xpath", xpath)])
            .await
        {
            Ok(reply) => Ok(Some(reply)),
            Err(TargetError::Protocol(message)) if message.contains("No such node") => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The newest configuration audit entry (its sequence and time): what a poll compares.
    pub async fn revision(&mut self) -> Result<String, TargetError> {
        let reply = self
            .call(&[
                ("type", "op"),
                (
                    "cmd",
                    "<show><config><audit><info></info></audit></config></show>",
                ),
            ])
            .await?;
        let document = reply.document()?;
        let newest = document
            .descendants()
            .filter(|node| node.has_tag_name("entry"))
            .filter_map(|entry| {
                let sequence: u64 = entry.attribute("name")?.parse().ok()?;
                let time = entry
                    .children()
                    .find(|child| child.has_tag_name("timestamp"))
                    .and_then(|node| node.text())
                    .unwrap_or_default();
                Some((sequence, time.to_owned()))
            })
            .max();
        Ok(newest.map_or_else(
            || "none".to_owned(),
            |(sequence, time)| format!("{sequence} {time}"),
        ))
    }

    /// The device group's rules and objects with its ancestors' and the shared ones, from the
    /// running configuration: one `show` per scope, and one per parent looked up.
    pub async fn read_rulebase(&mut self) -> Result<Rulebase, TargetError> {
        let device_group = self.settings.device_group.clone();
        let mut replies = Vec::new();
        if let Some(shared) = self.show("/config/shared").await? {
            replies.push(("shared", shared));
        }
        let mut chain = Vec::new();
        let mut name = device_group.clone();
        while name != "shared" {
            let group = self
                .show(&rules::device_group_xpath(&name))
                .await?
                .ok_or_else(|| {
                    TargetError::Protocol(format!("Panorama has no device group `{name}`"))
                })?;
            chain.push(group);
            let parent = match self.show(&rules::parent_xpath(&name)).await? {
                Some(reply) => {
                    let document = reply.document()?;
                    let parent = document
                        .descendants()
                        .find(|node| node.has_tag_name("parent-dg"))
                        .and_then(|node| node.text())
                        .map(|text| text.trim().to_owned());
                    parent.unwrap_or_else(|| "shared".to_owned())
                }
                None => "shared".to_owned(),
            };
            if chain.len() >= rules::MAX_DEPTH && parent != "shared" {
                return Err(TargetError::Protocol(format!(
                    "device group `{device_group}` nests deeper than {}",
                    rules::MAX_DEPTH
                )));
            }
            name = parent;
        }
        chain.reverse();
        let shared_document = match replies.first() {
            Some((_, reply)) => Some(reply.document()?),
            None => None,
        };
        let chain_documents = chain
            .iter()
            .map(Reply::document)
            .collect::<Result<Vec<_>, _>>()?;
        // Each node is the element inside `<result>`.
        let shared_node = shared_document
            .as_ref()
            .and_then(|document| child(child(document.root_element(), "result")?, "shared"));
        let chain_nodes = chain_documents
            .iter()
            .map(|document| {
                child(document.root_element(), "result")
                    .and_then(|result| child(result, "entry"))
                    .ok_or_else(|| {
                        TargetError::Protocol("a device group's reply holds no `<entry>`".into())
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let origin = format!("panorama device group {device_group}");
        Ok(rules::rulebase(shared_node, &chain_nodes, origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_judged_as_pan_os_clients_do() {
        assert!(check(r#"<response status="success" code="19"><result/></response>"#).is_ok());
        assert!(
            check("<response status = 'success'><result><key>k</key></result></response>").is_ok()
        );
        assert_eq!(
            check(r#"<response status="success" code="7"><result/></response>"#)
                .unwrap_err()
                .0,
            Some(7),
            "a success with code 7 is a missing object"
        );
        let (code, message) =
            check("<response status = 'error' code = '403'><result><msg>Invalid Credential</msg></result></response>")
                .unwrap_err();
        assert_eq!((code, message.as_str()), (Some(403), "Invalid Credential"));
        let (_, message) = check(
            r#"<response status="error"><msg><line><![CDATA[ test unexpected here]]></line><line>second</line></msg></response>"#,
        )
        .unwrap_err();
        assert_eq!(message, "test unexpected here; second");
        assert!(check("<html>Bad gateway</html>").is_err());
    }
}
