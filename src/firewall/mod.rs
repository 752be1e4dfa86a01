//! Firewalls, vendor-neutral: the objects threatflow keeps on a firewall (addresses, and groups
//! of them), how they are named within a target's limits, how threatflow marks them as its own
//! for one cluster, the plan that turns what a target holds into what it should hold
//! ([`plan`]), and the [`Target`] every vendor implements. One module per vendor wire protocol
//! ([`fortigate`], [`fortimanager`]) turns a plan into that vendor's calls; none of them knows
//! Kubernetes, the config file or the flow pipeline. Calico's selector language lives here too
//! ([`selector`]): groups pick pods with it.

pub mod fortigate;
pub mod fortimanager;
pub mod panorama;
pub mod plan;
pub mod rules;
pub mod selector;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use ipnet::IpNet;

pub use plan::{Op, Plan};

/// An address family; a firewall keeps IPv4 and IPv6 objects apart.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum Family {
    #[default]
    #[serde(rename = "ipv4")]
    V4,
    #[serde(rename = "ipv6")]
    V6,
}

impl Family {
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// The objects threatflow owns (or wants) on one target: addresses, and groups whose members
/// are addresses or other groups of the same family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Objects {
    pub addresses: BTreeMap<(Family, String), IpNet>,
    pub groups: BTreeMap<(Family, String), BTreeSet<String>>,
}

impl Objects {
    pub fn len(&self) -> usize {
        self.addresses.len() + self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.groups.is_empty()
    }
}

/// The mark on every object threatflow owns on a firewall: a comment naming the cluster, so two
/// clusters writing to one firewall never take each other's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    comment: String,
}

impl Marker {
    pub fn new(cluster: &str) -> Marker {
        Marker {
            comment: format!("managed by threatflow for cluster {cluster}; do not edit"),
        }
    }

    /// The comment an owned object carries.
    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// Whether an object with `comment` is this cluster's: the exact comment, nothing else.
    pub fn owns(&self, comment: Option<&str>) -> bool {
        comment == Some(self.comment.as_str())
    }
}

/// How threatflow signs in to a firewall manager (FortiManager, Panorama).
#[derive(Clone)]
pub enum Credentials {
    /// An API user's key (`Authorization: Bearer` on FortiManager 7.2.2 and later,
    /// `X-PAN-KEY` on PAN-OS).
    ApiKey(String),
    /// An admin's name and password: a FortiManager login session, or a PAN-OS keygen.
    Login { user: String, password: String },
}

impl Credentials {
    /// A key, or a user and password, read now from their secrets (`what` names them in
    /// errors); `None` when neither is set (validation reports that).
    pub fn read(
        what: &str,
        api_key: Option<&crate::secret::SecretSource>,
        username: Option<&str>,
        password: Option<&crate::secret::SecretSource>,
    ) -> Result<Option<Credentials>, crate::secret::SecretError> {
        Ok(match (api_key, username, password) {
            (Some(key), _, _) => Some(Credentials::ApiKey(key.read(&format!("{what} api_key"))?)),
            (None, Some(user), Some(password)) => Some(Credentials::Login {
                user: user.to_owned(),
                password: password.read(&format!("{what} password"))?,
            }),
            _ => None,
        })
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ApiKey(_) => f.write_str("ApiKey(..)"),
            Credentials::Login { user, .. } => write!(f, "Login {{ user: {user:?}, .. }}"),
        }
    }
}

/// A boxed future: what a [`Target`]'s methods return, so targets can sit behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A firewall (or a firewall manager) threatflow keeps objects on. One module per vendor
/// implements it; the sync loop drives every target the same way: [`Target::read`] what it
/// owns there, plan, then [`Target::begin`], one or more [`Target::apply`], [`Target::finish`]
/// and [`Target::publish`]; [`Target::close`] at the end.
pub trait Target: Send {
    /// The objects on the target that carry this cluster's marker, and nothing else. Also
    /// learns the target's version, which sets its [`Target::limits`].
    fn read(&mut self) -> BoxFuture<'_, Result<Objects, TargetError>>;

    /// What the target allows, as far as its version is known (after a read).
    fn limits(&self) -> Limits;

    /// Starts a change: a FortiManager in workspace mode takes the ADOM's lock. Nothing for
    /// a target whose writes take effect one by one.
    fn begin(&mut self) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async { Ok(()) })
    }

    /// Carries out `plan` in order, within a change. Each object the target refuses is
    /// reported in the outcomes and the rest go on; an error that concerns the whole target
    /// (down, refusing the credentials) stops the apply and is returned beside the outcomes
    /// of what was done before it. Before it updates or deletes an object, the target checks
    /// that the object is still this cluster's.
    fn apply<'a>(&'a mut self, plan: &'a Plan) -> BoxFuture<'a, Applied>;

    /// Ends a change: with `keep`, what the applies did takes effect (a FortiManager commits
    /// the workspace); without it (after an error), it is dropped where the target can (a
    /// FortiManager unlocks without committing). Either way a lock is released.
    fn finish(&mut self, keep: bool) -> BoxFuture<'_, Result<(), TargetError>> {
        let _ = keep;
        Box::pin(async { Ok(()) })
    }

    /// After a sync that changed something, or while work is pending: make the changes take
    /// effect beyond the target's own database (a FortiManager installs its policy packages
    /// to the devices). Nothing for a target whose writes take effect at once.
    fn publish(&mut self) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether an earlier [`Target::publish`] failed and must be tried again, even with
    /// nothing new to write.
    fn has_pending_work(&self) -> bool {
        false
    }

    /// Ends the session, if the target has one (releasing a lock a stopped sync left).
    fn close(&mut self) -> BoxFuture<'_, ()>;
}

/// What an apply did: the outcome of each operation that took effect or was refused, by its
/// index in the plan, and the error that stopped it, if one did.
#[derive(Debug, Default)]
pub struct Applied {
    pub outcomes: Vec<(usize, OpOutcome)>,
    pub error: Option<TargetError>,
}

/// What became of one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutcome {
    Done,
    /// The name is held by an object this cluster does not own (its comment, if it has one):
    /// it was left alone.
    Conflict {
        owner: Option<String>,
    },
    /// A delete the target refused because something still refers to the object; it is
    /// retried at the next full reconcile.
    InUse,
    /// The target refused the object, with its reason.
    Refused {
        reason: String,
    },
}

impl OpOutcome {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            OpOutcome::Done => "done",
            OpOutcome::Conflict { .. } => "conflict",
            OpOutcome::InUse => "in_use",
            OpOutcome::Refused { .. } => "refused",
        }
    }
}

/// A failure that concerns a whole target rather than one object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("cannot reach the target: {0}")]
    Unavailable(String),
    #[error("the target refused the credentials (HTTP {status}): {detail}")]
    Unauthorized { status: u16, detail: String },
    #[error("the target denied access (HTTP 403): check the admin profile's permissions and trusted hosts, and the VDOM: {0}")]
    Forbidden(String),
    #[error("the target is throttling requests (HTTP 429: too many failed logins, or wrong trusted hosts)")]
    Throttled { retry_after: Option<Duration> },
    #[error("the workspace is locked by {by}; retrying later")]
    Locked { by: String },
    #[error("the change was not kept: {0}")]
    NotKept(String),
    #[error("the session expired while the workspace was locked; nothing was committed")]
    SessionExpired,
    #[error("installing policy package {package} failed: {reason}")]
    Install { package: String, reason: String },
    #[error("unexpected reply: {0}")]
    Protocol(String),
    #[error("cannot set up the client: {0}")]
    Setup(String),
}

impl TargetError {
    pub fn kind(&self) -> &'static str {
        match self {
            TargetError::Unavailable(_) => "unavailable",
            TargetError::Unauthorized { .. } => "unauthorized",
            TargetError::Forbidden(_) => "forbidden",
            TargetError::Throttled { .. } => "throttled",
            TargetError::Locked { .. } => "locked",
            TargetError::NotKept(_) => "not_kept",
            TargetError::SessionExpired => "session_expired",
            TargetError::Install { .. } => "install",
            TargetError::Protocol(_) => "protocol",
            TargetError::Setup(_) => "setup",
        }
    }

    /// How long the target asked to be left alone, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TargetError::Throttled { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// The most bytes one reply may have (a table listing with every owned object).
const MAX_REPLY_BYTES: u64 = 256 << 20;

/// Sends a request and reads the reply within [`MAX_REPLY_BYTES`]: its status and body. A
/// transport failure, and a status that concerns the whole device rather than one object
/// (401 credentials refused, 403 access denied, 429 throttled), are errors.
pub(crate) async fn exchange(
    request: reqwest::RequestBuilder,
) -> Result<(u16, Vec<u8>), TargetError> {
    let (status, headers, body) = send(request).await?;
    match status {
        401 => Err(TargetError::Unauthorized {
            status,
            detail: headers
                .get("www-authenticate")
                .and_then(|value| value.to_str().ok())
                .map(|value| format!("www-authenticate: {value}"))
                .unwrap_or_else(|| excerpt(&body)),
        }),
        403 => Err(TargetError::Forbidden(excerpt(&body))),
        429 => Err(TargetError::Throttled {
            retry_after: crate::net::http::retry_after(&headers),
        }),
        _ => Ok((status, body)),
    }
}

/// Sends a request and reads the reply within [`MAX_REPLY_BYTES`], whatever its status; only
/// a transport failure is an error.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>), TargetError> {
    let response = request.send().await.map_err(|error| {
        let what = if error.is_timeout() {
            "timed out"
        } else if error.is_connect() {
            "cannot connect"
        } else {
            "the connection failed"
        };
        TargetError::Unavailable(format!("{what}: {}", crate::telemetry::ErrorChain(&error)))
    })?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = crate::net::http::read_body(response, MAX_REPLY_BYTES)
        .await
        .map_err(|error| TargetError::Unavailable(format!("reading the reply: {error}")))?;
    Ok((status, headers, body))
}

/// The start of a reply's body, printable characters only, for an error message.
pub(crate) fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

/// What a target allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest object name.
    pub name_max: usize,
    /// The most members one group may hold; larger groups are split into nested groups.
    pub group_max_members: usize,
    /// Whether a group may be empty (FortiOS 7.2 and later); otherwise it holds a placeholder.
    pub empty_groups: bool,
}

/// A group to publish: its name and the addresses it holds, each with its object name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSpec {
    pub name: String,
    pub family: Family,
    pub members: BTreeMap<String, IpNet>,
}

/// The characters object names keep; anything else becomes `-`. FortiOS and PAN-OS accept
/// these everywhere, and none of them needs escaping in a URL or an XPath.
fn safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// `name` with unsafe characters replaced, within `max` characters: when it must be shortened
/// (or was changed), it ends with `~` and eight hex digits of a stable hash of the original,
/// so two long names never collide.
pub fn fit_name(name: &str, max: usize) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| if safe(c) { c } else { '-' })
        .collect();
    if cleaned == name && cleaned.len() <= max {
        return cleaned;
    }
    let hash = format!("~{:08x}", crate::k8s::apply::fnv1a(name.as_bytes()) as u32);
    let keep = max.saturating_sub(hash.len()).min(cleaned.len());
    format!("{}{hash}", &cleaned[..keep])
}

/// The objects that publish `groups` on a target with `limits`: an address per member, a
/// group per spec (split into nested groups of at most `group_max_members`, by a stable hash
/// of each member, so one change touches one subgroup), and, where empty groups are not
/// allowed, a placeholder address (`0.0.0.0/32` or `::/128`) named `placeholder` in every
/// empty group.
pub fn desired(groups: &[GroupSpec], limits: Limits, placeholder: &str) -> Objects {
    let mut objects = Objects::default();
    let max = limits.group_max_members.max(2);
    for group in groups {
        let family = group.family;
        let mut members: BTreeSet<String> = BTreeSet::new();
        for (name, net) in &group.members {
            let name = fit_name(name, limits.name_max);
            objects.addresses.insert((family, name.clone()), *net);
            members.insert(name);
        }
        if members.is_empty() && !limits.empty_groups {
            let net: IpNet = match family {
                Family::V4 => "0.0.0.0/32".parse().expect("a CIDR"),
                Family::V6 => "::/128".parse().expect("a CIDR"),
            };
            let name = fit_name(placeholder, limits.name_max);
            objects.addresses.insert((family, name.clone()), net);
            members.insert(name);
        }
        let name = fit_name(&group.name, limits.name_max);
        split(&mut objects, family, name, members, max, limits.name_max);
    }
    objects
}

/// Adds group `name` holding `members`, split into nested groups when they do not fit. The
/// groups holding addresses are `<name>.<i>`, each address placed by a stable hash of its name
/// (so one change touches one subgroup, and empty subgroups are left out); when there are too
/// many of those for one group, they are held, in name order, by `<name>.l1.<i>`, and so on up.
fn split(
    objects: &mut Objects,
    family: Family,
    name: String,
    members: BTreeSet<String>,
    max: usize,
    name_max: usize,
) {
    if members.len() <= max {
        objects.groups.insert((family, name), members);
        return;
    }
    let mut level_members: Vec<BTreeSet<String>> = hashed(&members, max);
    let mut level = 0;
    loop {
        let mut children = BTreeSet::new();
        for (index, bucket) in level_members.into_iter().enumerate() {
            if bucket.is_empty() {
                continue;
            }
            let child = match level {
                0 => format!("{name}.{index}"),
                level => format!("{name}.l{level}.{index}"),
            };
            let child = fit_name(&child, name_max);
            children.insert(child.clone());
            objects.groups.insert((family, child), bucket);
        }
        if children.len() <= max {
            objects.groups.insert((family, name), children);
            return;
        }
        // Fewer groups at each level: a group of `max` holds `max` of the level below.
        let ordered: Vec<String> = children.into_iter().collect();
        level_members = ordered
            .chunks(max)
            .map(|chunk| chunk.iter().cloned().collect())
            .collect();
        level += 1;
    }
}

/// `members` in buckets of at most `max` by a stable hash, the empty ones left out: enough
/// buckets to fill each to about three quarters, a power of two so the count moves only when
/// the group grows or shrinks past a step.
fn hashed(members: &BTreeSet<String>, max: usize) -> Vec<BTreeSet<String>> {
    let mut count = (members.len() * 4 / 3).div_ceil(max).next_power_of_two();
    while count <= members.len().saturating_mul(8) {
        let mut buckets = vec![BTreeSet::new(); count];
        for member in members {
            let bucket = (crate::k8s::apply::fnv1a(member.as_bytes()) % count as u64) as usize;
            buckets[bucket].insert(member.clone());
        }
        if buckets.iter().all(|bucket| bucket.len() <= max) {
            return buckets;
        }
        count *= 2;
    }
    // The hashes will not spread (never seen): fill buckets in order instead.
    let members: Vec<&String> = members.iter().collect();
    members
        .chunks(max)
        .map(|chunk| chunk.iter().map(|member| (*member).clone()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn names_keep_safe_characters_and_fit_with_a_stable_hash() {
        assert_eq!(
            fit_name("k8s.shop.web-5bdcdd9c97-x2k4l", 79),
            "k8s.shop.web-5bdcdd9c97-x2k4l"
        );
        let odd = fit_name("k8s.shop.web/1 \"x\"", 79);
        assert!(odd.starts_with("k8s.shop.web-1--x-~"), "{odd}");
        let long = format!("k8s.{}.{}", "n".repeat(63), "p".repeat(63));
        let fitted = fit_name(&long, 79);
        assert_eq!(fitted.len(), 79);
        assert_eq!(fitted, fit_name(&long, 79), "stable");
        assert_ne!(
            fitted,
            fit_name(&format!("{long}x"), 79),
            "distinct names stay distinct"
        );
        assert!(fitted.chars().all(safe) || fitted.contains('~'));
    }

    #[test]
    fn groups_nest_as_deep_as_they_must_without_reusing_a_name() {
        let limits = Limits {
            name_max: 79,
            group_max_members: 3,
            empty_groups: true,
        };
        let objects = desired(&[spec("big", 200)], limits, "x");
        fn leaves(objects: &Objects, name: &str, depth: usize, out: &mut BTreeSet<String>) {
            assert!(depth < 20, "a cycle at {name}");
            match objects.groups.get(&(Family::V4, name.to_owned())) {
                Some(members) => {
                    assert!(members.len() <= 3, "{name}: {members:?}");
                    for member in members {
                        leaves(objects, member, depth + 1, out);
                    }
                }
                None => assert!(out.insert(name.to_owned()), "{name} reached twice"),
            }
        }
        let mut reached = BTreeSet::new();
        leaves(&objects, "big", 0, &mut reached);
        assert_eq!(reached.len(), 200);
        assert!(objects
            .groups
            .keys()
            .any(|(_, name)| name.starts_with("big.l2.")));
    }

    #[test]
    fn the_marker_is_exact_and_per_cluster() {
        let prod = Marker::new("prod");
        assert!(prod.owns(Some(prod.comment())));
        assert!(!prod.owns(Some(Marker::new("prod-2").comment())));
        assert!(!prod.owns(Some("managed by someone")));
        assert!(!prod.owns(None));
    }

    fn spec(name: &str, count: usize) -> GroupSpec {
        GroupSpec {
            name: name.into(),
            family: Family::V4,
            members: (0..count)
                .map(|i| {
                    (
                        format!("p{i}"),
                        net(&format!("10.0.{}.{}/32", i / 256, i % 256)),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn large_groups_split_into_nested_groups_and_empty_ones_get_a_placeholder() {
        let limits = Limits {
            name_max: 79,
            group_max_members: 100,
            empty_groups: false,
        };
        let objects = desired(&[spec("big", 1000), spec("empty", 0)], limits, "k8s.none");
        let top = &objects.groups[&(Family::V4, "big".to_owned())];
        assert!(top.iter().all(|child| child.starts_with("big.")));
        let mut held = 0;
        for child in top {
            let members = &objects.groups[&(Family::V4, child.clone())];
            assert!(members.len() <= 100);
            held += members.len();
        }
        assert_eq!(held, 1000);
        assert_eq!(
            objects.groups[&(Family::V4, "empty".to_owned())],
            BTreeSet::from(["k8s.none".to_owned()])
        );
        assert_eq!(
            objects.addresses[&(Family::V4, "k8s.none".to_owned())],
            net("0.0.0.0/32")
        );
        let allowed = desired(
            &[spec("empty", 0)],
            Limits {
                empty_groups: true,
                ..limits
            },
            "k8s.none",
        );
        assert!(allowed.groups[&(Family::V4, "empty".to_owned())].is_empty());
        assert!(allowed.addresses.is_empty());
    }
}
