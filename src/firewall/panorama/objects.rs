//! Static address objects and groups in a Panorama device group (or `shared`), as a
//! [`Target`]: written to the candidate configuration, committed (a partial commit of
//! threatflow's admin only, so an admin's pending edits are never committed with them), then
//! pushed to the device group's firewalls, each job polled to its end and each device's
//! failure reported.
//!
//! An object is threatflow's when its `description` is this cluster's marker exactly. Before
//! a name is created, updated or deleted, its entry is read: a name held by anything else is a
//! conflict, left alone. A delete refused because a rule or group still refers to the object
//! (code 10) waits for the next reconcile. A commit or push that cannot start (another commit
//! in progress, a configuration lock) is retried later.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ipnet::IpNet;
use roxmltree::{Document, Node};

use super::rules::{child, parse_netmask, text, xpath_literal};
use super::{escape, Panorama};
use crate::firewall::plan::{Op, Plan};
use crate::firewall::{
    Applied, BoxFuture, Family, Limits, Marker, Objects, OpOutcome, Target, TargetError,
};

/// An entry read back: its name, its static members, its prefix.
type Entry = (String, Vec<String>, Option<IpNet>);

/// PAN-OS's longest object name.
const NAME_MAX: usize = 63;

/// Where the objects go and how changes take effect.
#[derive(Clone, Debug)]
pub struct StaticSettings {
    /// The device group (`shared` for Panorama's shared objects, which are committed but not
    /// pushed).
    pub device_group: String,
    /// The admin whose changes a commit covers (the API user).
    pub admin: String,
    pub marker: Marker,
    pub group_max_members: usize,
    /// How often a job is polled, and how long it may run.
    pub job_poll: Duration,
    pub job_timeout: Duration,
}

/// A device group's static objects on a Panorama.
pub struct StaticObjects {
    client: Panorama,
    settings: StaticSettings,
    /// The candidate holds threatflow's changes not committed yet.
    changed: bool,
    /// Committed but not pushed (or a push that failed).
    push_pending: bool,
}

impl StaticObjects {
    pub fn new(client: Panorama, settings: StaticSettings) -> StaticObjects {
        StaticObjects {
            client,
            settings,
            changed: false,
            push_pending: false,
        }
    }

    fn scope(&self) -> String {
        match self.settings.device_group.as_str() {
            "shared" => "/config/shared".to_owned(),
            group => super::rules::device_group_xpath(group),
        }
    }

    fn entry_xpath(&self, table: &str, name: &str) -> String {
        format!(
            "{}/{table}/entry[@name={}]",
            self.scope(),
            xpath_literal(name)
        )
    }

    /// The candidate's entries of `table` (none when the node is missing).
    async fn entries(&mut self, xpath: &str) -> Result<String, TargetError> {
        match self
            .client
            .call_api(&[("type", "config"), ("action", "get"), ("xpath", xpath)])
            .await?
        {
            Ok(reply) => Ok(reply.0),
            Err((Some(7), _)) => Ok(String::new()),
            Err((code, message)) => Err(TargetError::Protocol(format!(
                "reading {xpath}: code {}: {message}",
                code.unwrap_or_default()
            ))),
        }
    }

    /// Whether `name` in `table` is free (`None`), or whose it is.
    async fn holder(
        &mut self,
        table: &str,
        name: &str,
    ) -> Result<Option<Option<String>>, TargetError> {
        let body = self.entries(&self.entry_xpath(table, name)).await?;
        if body.is_empty() {
            return Ok(None);
        }
        let document = Document::parse(&body)
            .map_err(|error| TargetError::Protocol(format!("not XML: {error}")))?;
        let entry = document
            .descendants()
            .find(|node| node.has_tag_name("entry") && node.attribute("name") == Some(name));
        Ok(entry.map(|entry| text(child(entry, "description"))))
    }

    async fn write(
        &mut self,
        action: &str,
        xpath: &str,
        element: &str,
    ) -> Result<OpOutcome, TargetError> {
        match self
            .client
            .call_api(&[
                ("type", "config"),
                ("action", action),
                ("xpath", xpath),
                ("element", element),
            ])
            .await?
        {
            Ok(_) => {
                self.changed = true;
                Ok(OpOutcome::Done)
            }
            Err((code, message)) => Ok(OpOutcome::Refused {
                reason: format!("code {}: {message}", code.unwrap_or_default()),
            }),
        }
    }

    async fn apply_op(&mut self, op: &Op) -> Result<OpOutcome, TargetError> {
        let marker = escape(self.settings.marker.comment());
        let (table, name) = match op {
            Op::CreateAddress { name, .. }
            | Op::UpdateAddress { name, .. }
            | Op::DeleteAddress { name, .. } => ("address", name),
            Op::CreateGroup { name, .. }
            | Op::UpdateGroup { name, .. }
            | Op::DeleteGroup { name, .. } => ("address-group", name),
        };
        // Read the name first: only a free name is created, only an owned one changed.
        let holder = self.holder(table, name).await?;
        let ours = holder
            .as_ref()
            .is_some_and(|description| self.settings.marker.owns(description.as_deref()));
        let xpath = self.entry_xpath(table, name);
        match (op, holder) {
            (_, Some(owner)) if !ours => Ok(OpOutcome::Conflict { owner }),
            (Op::DeleteAddress { .. } | Op::DeleteGroup { .. }, None) => Ok(OpOutcome::Done),
            (Op::DeleteAddress { .. } | Op::DeleteGroup { .. }, Some(_)) => {
                match self
                    .client
                    .call_api(&[("type", "config"), ("action", "delete"), ("xpath", &xpath)])
                    .await?
                {
                    Ok(_) => {
                        self.changed = true;
                        Ok(OpOutcome::Done)
                    }
                    Err((Some(10), _)) => Ok(OpOutcome::InUse),
                    Err((code, message)) => Ok(OpOutcome::Refused {
                        reason: format!("code {}: {message}", code.unwrap_or_default()),
                    }),
                }
            }
            (Op::CreateAddress { net, .. } | Op::UpdateAddress { net, .. }, _) => {
                let element = format!(
                    "<entry name=\"{}\"><ip-netmask>{net}</ip-netmask><description>{marker}</description></entry>",
                    escape(name)
                );
                self.write("edit", &xpath, &element).await
            }
            (Op::CreateGroup { members, .. } | Op::UpdateGroup { members, .. }, _) => {
                let members: String = members
                    .iter()
                    .map(|member| format!("<member>{}</member>", escape(member)))
                    .collect();
                let element = format!(
                    "<entry name=\"{}\"><static>{members}</static><description>{marker}</description></entry>",
                    escape(name)
                );
                self.write("edit", &xpath, &element).await
            }
        }
    }

    /// Dynamic address groups in the device group, name -> tag filter (for User-ID tags): each
    /// created or updated where its name is free or threatflow's, threatflow's others deleted.
    /// Only what differs from the candidate is written; [`Target::publish`] then commits and
    /// pushes it. Returns the outcome of each write, by name.
    pub async fn sync_dynamic_groups(
        &mut self,
        wanted: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, OpOutcome)>, TargetError> {
        let owned = self.read_dynamic().await?;
        let marker = escape(self.settings.marker.comment());
        let mut outcomes = Vec::new();
        for (name, filter) in wanted {
            if owned.get(name) == Some(filter) {
                continue;
            }
            let holder = self.holder("address-group", name).await?;
            let ours = holder
                .as_ref()
                .is_some_and(|description| self.settings.marker.owns(description.as_deref()));
            let outcome = match holder {
                Some(owner) if !ours => OpOutcome::Conflict { owner },
                _ => {
                    let element = format!(
                        "<entry name=\"{}\"><dynamic><filter>{}</filter></dynamic><description>{marker}</description></entry>",
                        escape(name),
                        escape(filter)
                    );
                    let xpath = self.entry_xpath("address-group", name);
                    self.write("edit", &xpath, &element).await?
                }
            };
            outcomes.push((name.clone(), outcome));
        }
        for name in owned.keys().filter(|name| !wanted.contains_key(*name)) {
            let op = Op::DeleteGroup {
                family: Family::V4,
                name: name.clone(),
            };
            let outcome = self.apply_op(&op).await?;
            outcomes.push((name.clone(), outcome));
        }
        Ok(outcomes)
    }

    /// threatflow's dynamic address groups in the candidate: name -> filter.
    async fn read_dynamic(&mut self) -> Result<BTreeMap<String, String>, TargetError> {
        let body = self
            .entries(&format!("{}/address-group", self.scope()))
            .await?;
        if body.is_empty() {
            return Ok(BTreeMap::new());
        }
        let document = Document::parse(&body)
            .map_err(|error| TargetError::Protocol(format!("not XML: {error}")))?;
        Ok(document
            .descendants()
            .filter(|node| node.has_tag_name("entry"))
            .filter(|entry| {
                self.settings
                    .marker
                    .owns(text(child(*entry, "description")).as_deref())
            })
            .filter_map(|entry| {
                let filter = text(child(child(entry, "dynamic")?, "filter"))?;
                Some((entry.attribute("name")?.to_owned(), filter))
            })
            .collect())
    }

    /// The objects in the candidate that carry the marker.
    async fn read_owned(&mut self) -> Result<Objects, TargetError> {
        let mut objects = Objects::default();
        let addresses = self.entries(&format!("{}/address", self.scope())).await?;
        let groups = self
            .entries(&format!("{}/address-group", self.scope()))
            .await?;
        let owned = |body: &str| -> Result<Vec<Entry>, TargetError> {
            if body.is_empty() {
                return Ok(Vec::new());
            }
            let document = Document::parse(body)
                .map_err(|error| TargetError::Protocol(format!("not XML: {error}")))?;
            Ok(document
                .descendants()
                .filter(|node| node.has_tag_name("entry"))
                // Dynamic groups (User-ID mode's) are not static objects.
                .filter(|entry| child(*entry, "dynamic").is_none())
                .filter(|entry| {
                    self.settings
                        .marker
                        .owns(text(child(*entry, "description")).as_deref())
                })
                .filter_map(|entry| {
                    let name = entry.attribute("name")?.to_owned();
                    let members = child(entry, "static")
                        .into_iter()
                        .flat_map(|node| node.children())
                        .filter(|node| node.has_tag_name("member"))
                        .filter_map(|node| node.text().map(str::to_owned))
                        .collect();
                    let net = text(child(entry, "ip-netmask")).and_then(|net| parse_netmask(&net));
                    Some((name, members, net))
                })
                .collect())
        };
        for (name, _, net) in owned(&addresses)? {
            // An owned object that is no longer a plain prefix (edited by hand) is left out
            // of the state read, so the next apply rewrites it.
            if let Some(net) = net {
                let family = if net.addr().is_ipv4() {
                    Family::V4
                } else {
                    Family::V6
                };
                objects.addresses.insert((family, name), net);
            }
        }
        let groups = owned(&groups)?;
        for (name, members, _) in &groups {
            let family = members
                .iter()
                .find_map(|member| {
                    objects
                        .addresses
                        .keys()
                        .find(|(_, address)| address == member)
                        .map(|(family, _)| *family)
                })
                .unwrap_or(if name.contains(".v6") {
                    Family::V6
                } else {
                    Family::V4
                });
            objects.groups.insert(
                (family, name.clone()),
                members.iter().cloned().collect::<BTreeSet<_>>(),
            );
        }
        Ok(objects)
    }

    /// Polls a job to its end: `Ok` when it and every device succeeded.
    async fn wait_for_job(&mut self, job: &str, what: &str) -> Result<(), TargetError> {
        let deadline = tokio::time::Instant::now() + self.settings.job_timeout;
        loop {
            let cmd = format!("<show><jobs><id>{job}</id></jobs></show>");
            let reply = self.client.call(&[("type", "op"), ("cmd", &cmd)]).await?;
            let document = reply.document()?;
            let Some(job_node) = document.descendants().find(|node| node.has_tag_name("job"))
            else {
                return Err(TargetError::Protocol(format!(
                    "{what} job {job}: no job in the reply"
                )));
            };
            let status = text(child(job_node, "status")).unwrap_or_default();
            let result = text(child(job_node, "result")).unwrap_or_default();
            let devices: Vec<Node> = child(job_node, "devices")
                .into_iter()
                .flat_map(|devices| devices.children())
                .filter(|node| node.has_tag_name("entry"))
                .collect();
            let pending = devices
                .iter()
                .any(|device| text(child(*device, "result")).as_deref() == Some("PEND"));
            if status == "FIN" && !pending {
                let failed: Vec<String> = devices
                    .iter()
                    .filter(|device| text(child(**device, "result")).as_deref() == Some("FAIL"))
                    .map(|device| {
                        let serial = text(child(*device, "serial-no")).unwrap_or_default();
                        format!("{serial}: {}", lines(*device))
                    })
                    .collect();
                if result == "OK" && failed.is_empty() {
                    return Ok(());
                }
                let mut reason = lines(job_node);
                if !failed.is_empty() {
                    reason = format!("{reason} (devices: {})", failed.join("; "));
                }
                return Err(TargetError::Install {
                    package: format!("{what} job {job}"),
                    reason,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TargetError::Install {
                    package: format!("{what} job {job}"),
                    reason: format!("still {status} after {:?}", self.settings.job_timeout),
                });
            }
            tokio::time::sleep(self.settings.job_poll).await;
        }
    }

    /// A commit or push: its job id, `None` when there was nothing to do.
    async fn enqueue(
        &mut self,
        form: &[(&str, &str)],
        what: &str,
    ) -> Result<Option<String>, TargetError> {
        match self.client.call_api(form).await? {
            Ok(reply) => {
                let document = reply.document()?;
                let job = document
                    .descendants()
                    .find(|node| node.has_tag_name("job"))
                    .and_then(|node| node.text())
                    .map(str::trim);
                match job {
                    // A job id goes into the next command: digits only.
                    Some(job) if !job.is_empty() && job.bytes().all(|b| b.is_ascii_digit()) => {
                        Ok(Some(job.to_owned()))
                    }
                    Some(job) => Err(TargetError::Protocol(format!("{what}: job id `{job}`"))),
                    None => Ok(None),
                }
            }
            Err((_, message)) if message.contains("in progress") || message.contains("locked") => {
                Err(TargetError::Locked { by: message })
            }
            Err((code, message)) => Err(TargetError::Install {
                package: what.to_owned(),
                reason: format!("code {}: {message}", code.unwrap_or_default()),
            }),
        }
    }

    async fn commit(&mut self) -> Result<(), TargetError> {
        let cmd = format!(
            "<commit><description>threatflow</description><partial><admin><member>{}</member></admin></partial></commit>",
            escape(&self.settings.admin)
        );
        if let Some(job) = self
            .enqueue(&[("type", "commit"), ("cmd", &cmd)], "commit")
            .await?
        {
            self.wait_for_job(&job, "commit").await?;
        }
        self.changed = false;
        self.push_pending = self.settings.device_group != "shared";
        Ok(())
    }

    async fn push(&mut self) -> Result<(), TargetError> {
        let cmd = format!(
            "<commit-all><shared-policy><device-group><entry name=\"{}\"/></device-group><description>threatflow</description></shared-policy></commit-all>",
            escape(&self.settings.device_group)
        );
        let form = [("type", "commit"), ("action", "all"), ("cmd", cmd.as_str())];
        if let Some(job) = self.enqueue(&form, "push").await? {
            self.wait_for_job(&job, "push").await?;
        }
        self.push_pending = false;
        Ok(())
    }
}

/// A job's (or a device's) detail lines.
fn lines(node: Node) -> String {
    let lines: Vec<&str> = node
        .descendants()
        .filter(|node| node.has_tag_name("line"))
        .filter_map(|node| node.text())
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    if lines.is_empty() {
        "failed without details".into()
    } else {
        lines.join("; ")
    }
}

impl Target for StaticObjects {
    fn read(&mut self) -> BoxFuture<'_, Result<Objects, TargetError>> {
        Box::pin(self.read_owned())
    }

    fn limits(&self) -> Limits {
        Limits {
            name_max: NAME_MAX,
            group_max_members: self.settings.group_max_members,
            empty_groups: false,
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

    /// Commits what the applies wrote (only threatflow's admin's changes). After an error the
    /// candidate changes stay uncommitted; the next sync reads the candidate and commits them
    /// with its own.
    fn finish(&mut self, keep: bool) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async move {
            if keep && self.changed {
                self.commit().await?;
            }
            Ok(())
        })
    }

    fn publish(&mut self) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async move {
            if self.changed {
                self.commit().await?;
            }
            if self.push_pending {
                self.push().await?;
            }
            Ok(())
        })
    }

    fn has_pending_work(&self) -> bool {
        self.changed || self.push_pending
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
