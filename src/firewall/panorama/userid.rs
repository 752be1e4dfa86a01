//! The User-ID API: IP → tag registrations, which fill dynamic address groups on PAN-OS
//! firewalls without a commit.
//!
//! - `type=user-id` with a `<uid-message>`: `register` and `unregister` entries, each tag with
//!   a `timeout` (seconds; the firewall drops it when the timer runs out, so registrations lapse
//!   if threatflow disappears; registering again restarts the timer).
//! - Through Panorama with `target=<serial>` (the firewall's own table), or directly to a
//!   firewall (optionally with `vsys`).
//! - A batch is applied even when some entries are not: those come back as per-entry messages
//!   in a `status="error"` reply. `already exists, ignore` and `does not exist, ignore unreg`
//!   are what they say; anything else (a 33rd tag on an IP, a bad tag) is reported per IP.
//! - Read back with `show object registered-ip all`, 500 per page, until a short page.

use std::collections::{BTreeMap, BTreeSet};

use roxmltree::Document;

use super::{escape, Panorama, TargetError};

/// The most entries one message carries, and its largest size (the API takes 5 MB).
const MESSAGE_ENTRIES: usize = 1000;
const MESSAGE_BYTES: usize = 1 << 20;
/// Read-back page size (PAN-OS's maximum), and the most pages read (two million addresses,
/// beyond any platform's registered-IP capacity).
const PAGE: usize = 500;
const MAX_PAGES: usize = 4096;
/// The most tags one IP may carry.
pub const MAX_TAGS_PER_IP: usize = 32;

/// IP (as PAN-OS writes it) → tags.
pub type Registrations = BTreeMap<String, BTreeSet<String>>;

/// What a batch of updates did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UidOutcome {
    /// Messages sent.
    pub messages: usize,
    /// Entries the firewall noted as already so (`already exists`, `does not exist`).
    pub noted: usize,
    /// Entries refused, with the firewall's message, by IP.
    pub refused: BTreeMap<String, String>,
}

fn entry(ip: &str, tags: &BTreeSet<String>, timeout: Option<u64>) -> String {
    let members: String = tags
        .iter()
        .map(|tag| match timeout {
            Some(timeout) => format!("<member timeout=\"{timeout}\">{}</member>", escape(tag)),
            None => format!("<member>{}</member>", escape(tag)),
        })
        .collect();
    format!(
        "<entry ip=\"{}\" persistent=\"0\"><tag>{members}</tag></entry>",
        escape(ip)
    )
}

/// The messages for `register` (with `timeout`) and `unregister`, each within the limits.
pub fn messages(register: &Registrations, unregister: &Registrations, timeout: u64) -> Vec<String> {
    let mut messages = Vec::new();
    let mut current: (Vec<String>, Vec<String>, usize) = (Vec::new(), Vec::new(), 0);
    let flush = |current: &mut (Vec<String>, Vec<String>, usize), messages: &mut Vec<String>| {
        if current.0.is_empty() && current.1.is_empty() {
            return;
        }
        messages.push(format!(
            "<uid-message><version>2.0</version><type>update</type><payload><register>{}</register><unregister>{}</unregister></payload></uid-message>",
            current.0.concat(),
            current.1.concat()
        ));
        *current = (Vec::new(), Vec::new(), 0);
    };
    let entries = register
        .iter()
        .filter(|(_, tags)| !tags.is_empty())
        .map(|(ip, tags)| (true, entry(ip, tags, Some(timeout))))
        .chain(
            unregister
                .iter()
                .filter(|(_, tags)| !tags.is_empty())
                .map(|(ip, tags)| (false, entry(ip, tags, None))),
        );
    for (is_register, text) in entries {
        let count = current.0.len() + current.1.len();
        if count >= MESSAGE_ENTRIES || current.2 + text.len() > MESSAGE_BYTES {
            flush(&mut current, &mut messages);
        }
        current.2 += text.len();
        if is_register {
            current.0.push(text);
        } else {
            current.1.push(text);
        }
    }
    flush(&mut current, &mut messages);
    messages
}

/// An address as threatflow writes it (PAN-OS may print IPv6 differently).
fn canonical(ip: &str) -> String {
    if let Ok(address) = ip.parse::<std::net::IpAddr>() {
        return address.to_string();
    }
    match ip.parse::<ipnet::IpNet>() {
        Ok(net) => net.to_string(),
        Err(_) => ip.to_owned(),
    }
}

/// The per-entry messages of a reply: (IP, message).
fn entry_messages(text: &str) -> Result<Vec<(String, String)>, TargetError> {
    let document = Document::parse(text)
        .map_err(|error| TargetError::Protocol(format!("not XML: {error}")))?;
    Ok(document
        .descendants()
        .filter(|node| node.has_tag_name("entry"))
        .filter(|node| {
            node.ancestors()
                .any(|ancestor| ancestor.has_tag_name("uid-response"))
        })
        .filter_map(|node| {
            Some((
                node.attribute("ip")?.to_owned(),
                node.attribute("message").unwrap_or_default().to_owned(),
            ))
        })
        .collect())
}

impl Panorama {
    /// `target` and `vsys` for calls that reach a firewall's runtime state.
    fn scope(&self) -> Vec<(&'static str, String)> {
        let mut scope = Vec::new();
        if let Some(target) = &self.settings.target {
            scope.push(("target", target.clone()));
        }
        if let Some(vsys) = &self.settings.vsys {
            scope.push(("vsys", vsys.clone()));
        }
        scope
    }

    /// Every registered IP whose tags start with `prefix`, with those tags (others' tags are
    /// left out), read page by page.
    pub async fn registered(&mut self, prefix: &str) -> Result<Registrations, TargetError> {
        let mut registrations = Registrations::new();
        let mut seen = BTreeSet::new();
        for page_number in 0..MAX_PAGES {
            let start = page_number * PAGE + 1;
            let cmd = format!(
                "<show><object><registered-ip><limit>{PAGE}</limit><start-point>{start}</start-point></registered-ip></object></show>"
            );
            let scope = self.scope();
            let mut form: Vec<(&str, &str)> = vec![("type", "op"), ("cmd", &cmd)];
            form.extend(scope.iter().map(|(key, value)| (*key, value.as_str())));
            let reply = self.call(&form).await?;
            let document = reply.document()?;
            let mut page = 0;
            let mut new = 0;
            for entry in document
                .descendants()
                .filter(|node| node.has_tag_name("entry") && node.attribute("ip").is_some())
            {
                page += 1;
                if seen.insert(entry.attribute("ip").unwrap_or_default().to_owned()) {
                    new += 1;
                }
                let tags: BTreeSet<String> = entry
                    .descendants()
                    .filter(|node| node.has_tag_name("member"))
                    .filter_map(|node| node.text())
                    .filter(|tag| tag.starts_with(prefix))
                    .map(str::to_owned)
                    .collect();
                if !tags.is_empty() {
                    let ip = canonical(entry.attribute("ip").unwrap_or_default());
                    registrations.entry(ip).or_default().extend(tags);
                }
            }
            // A short page is the last; a page of nothing new means the device ignores
            // `start-point`, and its first page is all there is to read.
            if page < PAGE || new == 0 {
                return Ok(registrations);
            }
        }
        Err(TargetError::Protocol(format!(
            "more than {} registered addresses: the read-back stopped",
            MAX_PAGES * PAGE
        )))
    }

    /// Registers `register` (each tag with `timeout` seconds) and unregisters `unregister`.
    pub async fn update_tags(
        &mut self,
        register: &Registrations,
        unregister: &Registrations,
        timeout: u64,
    ) -> Result<UidOutcome, TargetError> {
        let mut outcome = UidOutcome::default();
        for message in messages(register, unregister, timeout) {
            let scope = self.scope();
            let mut form: Vec<(&str, &str)> = vec![("type", "user-id"), ("cmd", &message)];
            form.extend(scope.iter().map(|(key, value)| (*key, value.as_str())));
            let reply = self.call(&form).await?;
            outcome.messages += 1;
            for (ip, message) in entry_messages(&reply.0)? {
                if message.contains("already exists") || message.contains("does not exist") {
                    outcome.noted += 1;
                } else {
                    outcome.refused.insert(ip, message);
                }
            }
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registrations(entries: &[(&str, &[&str])]) -> Registrations {
        entries
            .iter()
            .map(|(ip, tags)| {
                (
                    ip.to_string(),
                    tags.iter().map(|tag| tag.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn messages_carry_timeouts_escape_tags_and_split_at_the_limit() {
        let register = registrations(&[("10.0.0.1", &["threatflow.prod.web", "a<b"])]);
        let unregister = registrations(&[("fd00::1", &["threatflow.prod.db"])]);
        let messages = messages(&register, &unregister, 3600);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].contains(r#"<entry ip="10.0.0.1" persistent="0"><tag><member timeout="3600">a&lt;b</member><member timeout="3600">threatflow.prod.web</member></tag></entry>"#), "{}", messages[0]);
        assert!(messages[0].contains(r#"<unregister><entry ip="fd00::1" persistent="0"><tag><member>threatflow.prod.db</member></tag></entry></unregister>"#));
        let many: Registrations = (0..2500)
            .map(|i| {
                (
                    format!("10.1.{}.{}", i / 256, i % 256),
                    BTreeSet::from(["t".to_owned()]),
                )
            })
            .collect();
        let messages = super::messages(&many, &Registrations::new(), 60);
        assert_eq!(messages.len(), 3);
        assert!(messages
            .iter()
            .all(|message| message.len() <= MESSAGE_BYTES + 200));
    }

    #[test]
    fn addresses_compare_in_one_form() {
        assert_eq!(canonical("2001:DB8:0:0::1"), "2001:db8::1");
        assert_eq!(canonical("10.0.0.1"), "10.0.0.1");
        assert_eq!(canonical("2001:DB8::/32"), "2001:db8::/32");
        assert_eq!(canonical("10.1.1.10-10.1.1.19"), "10.1.1.10-10.1.1.19");
    }

    #[test]
    fn per_entry_messages_are_read_from_a_partial_error() {
        let text = r#"<response status="error"><msg><line><uid-response><version>2.0</version><payload><unregister></unregister><register><entry ip="1.1.2.2" message="tag foo already exists, ignore"/><entry ip="1.1.1.1" message="too many tags"/></register></payload></uid-response></line></msg></response>"#;
        assert_eq!(
            entry_messages(text).unwrap(),
            [
                (
                    "1.1.2.2".to_owned(),
                    "tag foo already exists, ignore".to_owned()
                ),
                ("1.1.1.1".to_owned(), "too many tags".to_owned())
            ]
        );
    }
}
