//! The `firewall` config section: the groups to publish, the targets to keep them on, and the
//! pull endpoint; and its validation.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::egress::config::EgressConfig;
use crate::firewall::selector::Selector;
use crate::firewall::Family;
use crate::net::tls::TlsSettings;
use crate::problems::Problems;
use crate::secret::SecretSource;

/// Pods' addresses published to firewalls as address groups.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    /// The groups to publish, each picking pods with a Calico selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupConfig>,
    /// Calico-compatible mode: every GlobalNetworkPolicy this picks becomes a group named
    /// after the policy, holding the pods its `spec.selector` picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_policies: Option<MirrorConfig>,
    /// How address objects are named.
    #[serde(default)]
    pub names: NameConfig,
    /// Pod changes within this many milliseconds go out as one sync.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// Every this many seconds, each target's objects are read again and any drift (an owned
    /// object edited or deleted by hand) is repaired.
    #[serde(default = "default_reconcile_interval_secs")]
    pub reconcile_interval_secs: u64,
    /// FortiGates, through the FortiOS REST API.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fortigate: Vec<FortiGateConfig>,
    /// FortiManagers, through JSON-RPC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fortimanager: Vec<FortiManagerConfig>,
    /// PAN-OS firewalls, directly or through Panorama: pod IPs registered with User-ID tags
    /// (one per group), which fill dynamic address groups without a commit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub panorama: Vec<PanoramaConfig>,
    /// Serve every group as a plain-text IP list, for firewalls that pull (FortiGate external
    /// threat feeds, PAN-OS External Dynamic Lists): no firewall credentials in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<ServeConfig>,
    /// Each namespace's egress IPs as a group on every target (`egress.<namespace>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_identities: Option<EgressConfig>,
}

fn default_debounce_ms() -> u64 {
    1000
}
fn default_reconcile_interval_secs() -> u64 {
    60
}

/// A group of addresses.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// The group's name on every target: letters, digits, `.`, `-` and `_`, at most 60.
    /// IPv6 groups get `.v6` appended.
    pub name: String,
    /// A Calico selector over pod labels, e.g. `app == 'web' && tier in {'a', 'b'}`.
    /// `projectcalico.org/namespace`, `projectcalico.org/orchestrator` and `pcns.<key>` (the
    /// pod's namespace's labels) work as in Calico. Default: every pod.
    #[serde(default = "default_selector")]
    pub selector: String,
    /// A Calico selector over namespace labels (`projectcalico.org/name` is the namespace's
    /// name): only pods in the namespaces it picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// `pod` publishes pod IPs (routable pods); `node` publishes the IPs of the nodes the
    /// pods run on (outgoing NAT: traffic leaves with node IPs).
    #[serde(default)]
    pub addresses: AddressKind,
    /// The address families to publish.
    #[serde(default = "default_families")]
    pub families: Vec<Family>,
}

fn default_selector() -> String {
    "all()".into()
}
fn default_families() -> Vec<Family> {
    vec![Family::V4]
}

/// Which addresses stand for a pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    #[default]
    Pod,
    Node,
}

/// Calico-compatible mode.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// A Calico selector over GlobalNetworkPolicy labels; `projectcalico.org/tier` is the
    /// policy's tier and `projectcalico.org/name` its name.
    #[serde(default = "default_mirror_selector")]
    pub selector: String,
    #[serde(default)]
    pub addresses: AddressKind,
    #[serde(default = "default_families")]
    pub families: Vec<Family>,
}

fn default_mirror_selector() -> String {
    format!("{} == 'default'", crate::k8s::calico::labels::TIER)
}

/// Address object names. `{cluster}` is the cluster's name, so clusters sharing a firewall
/// never want the same name. Characters other than letters, digits, `.`, `-` and `_` become
/// `-`; a name longer than the target allows is shortened and ends with `~` and a hash.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NameConfig {
    /// A pod's address: `{cluster}`, `{namespace}` and `{pod}` are replaced.
    pub pod: String,
    /// A node's address: `{cluster}` and `{node}` are replaced.
    pub node: String,
    /// The address (`0.0.0.0/32`, or `::/128`) that keeps a group non-empty on targets that
    /// do not allow empty groups (FortiOS before 7.2); `{cluster}` is replaced.
    pub placeholder: String,
}

impl NameConfig {
    /// The templates with `{cluster}` replaced by `cluster`.
    pub fn for_cluster(&self, cluster: &str) -> NameConfig {
        NameConfig {
            pod: self.pod.replace("{cluster}", cluster),
            node: self.node.replace("{cluster}", cluster),
            placeholder: self.placeholder.replace("{cluster}", cluster),
        }
    }
}

impl Default for NameConfig {
    fn default() -> Self {
        NameConfig {
            pod: "{cluster}.{namespace}.{pod}".into(),
            node: "{cluster}.node.{node}".into(),
            placeholder: "{cluster}.no-members".into(),
        }
    }
}

/// One FortiGate.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FortiGateConfig {
    /// A unique name, for status and metrics.
    pub name: String,
    /// `https://host[:port]` of the management interface.
    pub url: String,
    /// The VDOM; default: the management VDOM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vdom: Option<String>,
    /// The REST API admin's key, sent as `Authorization: Bearer`.
    pub api_key: SecretSource,
    #[serde(default)]
    pub tls: TlsSettings,
    /// The groups this device gets (names from `groups`, or mirrored policies'); default:
    /// all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Requests per second, at most.
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    /// Most members in one group; larger groups are split into nested groups.
    #[serde(default = "default_group_max_members")]
    pub group_max_members: usize,
    /// Limit for one request.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_requests_per_second() -> f64 {
    10.0
}
fn default_group_max_members() -> usize {
    600
}
fn default_timeout_secs() -> u64 {
    15
}

/// A PAN-OS firewall or a Panorama: User-ID tags, or static objects in a device group.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PanoramaConfig {
    /// A unique name, for status and metrics.
    pub name: String,
    /// `user_id`: pod IPs registered with a tag per group (dynamic address groups, no commit).
    /// `static`: address objects and groups in `device_group`, committed and pushed.
    #[serde(default)]
    pub mode: PanoramaMode,
    /// For `static`: the device group the objects go in (`shared` for shared objects, which
    /// are committed but not pushed). For `user_id` through a Panorama (with `targets`): a
    /// dynamic address group per group, its filter the group's tag, is created in this device
    /// group, committed and pushed; without it, make the dynamic groups yourself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_group: Option<String>,
    /// With `device_group`: the API admin whose changes a (partial) commit covers; default:
    /// `username`. Needed with `api_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// `https://host[:port]` of the firewall or Panorama.
    pub url: String,
    /// A key made with `type=keygen`, sent as `X-PAN-KEY`; or `username` and `password` to
    /// generate one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretSource>,
    #[serde(default)]
    pub tls: TlsSettings,
    /// Firewalls' serials, for a Panorama: each gets the registrations (relayed with
    /// `target=`). Empty: the device at `url` itself (a firewall; or Panorama's own table,
    /// which reaches firewalls only through User-ID redistribution).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// The virtual system, on a multi-vsys firewall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsys: Option<String>,
    /// Each registration's lifetime, in seconds: registrations lapse this long after
    /// threatflow stops refreshing them. They are refreshed every third of it.
    #[serde(default = "default_tag_timeout_secs")]
    pub tag_timeout_secs: u64,
    /// The groups this device gets (as tags `threatflow.<cluster>.<group>`); default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Requests per second, at most.
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    /// For `static`: most members in one group; larger groups are split into nested groups.
    #[serde(default = "default_group_max_members")]
    pub group_max_members: usize,
    /// For `static`: how often a commit or push job is polled (milliseconds), and how long it
    /// may run.
    #[serde(default = "default_job_poll_ms")]
    pub job_poll_ms: u64,
    #[serde(default = "default_job_timeout_secs")]
    pub job_timeout_secs: u64,
    /// Limit for one request.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

/// How pods reach a PAN-OS firewall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PanoramaMode {
    #[default]
    UserId,
    Static,
}

fn default_tag_timeout_secs() -> u64 {
    3600
}
fn default_job_poll_ms() -> u64 {
    2000
}
fn default_job_timeout_secs() -> u64 {
    600
}

/// One FortiManager ADOM.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FortiManagerConfig {
    /// A unique name, for status and metrics.
    pub name: String,
    /// `https://host[:port]`.
    pub url: String,
    #[serde(default = "default_adom")]
    pub adom: String,
    /// An API user's key (FortiManager 7.2.2 and later), sent as `Authorization: Bearer`.
    /// Or set `username` and `password` for a login session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretSource>,
    #[serde(default)]
    pub tls: TlsSettings,
    /// The groups this ADOM gets; default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// Policy packages to install to their devices after each change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub install: Vec<InstallConfig>,
    /// Longest an install task may run.
    #[serde(default = "default_install_timeout_secs")]
    pub install_timeout_secs: u64,
    /// How often an install task is polled, in milliseconds.
    #[serde(default = "default_install_poll_ms")]
    pub install_poll_ms: u64,
    /// Requests per second, at most.
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    /// Most members in one group; larger groups are split into nested groups.
    #[serde(default = "default_group_max_members")]
    pub group_max_members: usize,
    /// Limit for one request.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_adom() -> String {
    "root".into()
}
fn default_install_timeout_secs() -> u64 {
    600
}
fn default_install_poll_ms() -> u64 {
    3000
}

/// A policy package install.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallConfig {
    pub package: String,
    /// The devices to install to; default: the package's installation targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<InstallScope>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallScope {
    pub device: String,
    #[serde(default = "default_vdom")]
    pub vdom: String,
}

fn default_vdom() -> String {
    "root".into()
}

/// The pull endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Where to listen, e.g. `0.0.0.0:9444`.
    pub listen_addr: SocketAddr,
    /// Serve HTTPS with this certificate (a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServeTls>,
    /// Require HTTP Basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeTls {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: SecretSource,
}

/// Characters group names keep on every target, and in a URL path.
fn safe_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn check_selector(path: String, text: &str, problems: &mut Problems) {
    if let Err(error) = Selector::parse(text) {
        problems.push(path, format!("`{text}`: {error}"));
    }
}

impl FirewallConfig {
    pub fn validate(&self, path: &str, cluster_name: Option<&str>, problems: &mut Problems) {
        let mut names = HashSet::new();
        for (i, group) in self.groups.iter().enumerate() {
            let at = format!("{path}.groups[{i}]");
            if !safe_name(&group.name, 60) {
                problems.push(
                    format!("{at}.name"),
                    format!(
                        "`{}` must be 1 to 60 letters, digits, `.`, `-` or `_`",
                        group.name
                    ),
                );
            } else if !names.insert(group.name.as_str()) {
                problems.push(
                    format!("{at}.name"),
                    format!("`{}` is used twice", group.name),
                );
            }
            check_selector(format!("{at}.selector"), &group.selector, problems);
            if let Some(namespaces) = &group.namespace_selector {
                check_selector(format!("{at}.namespace_selector"), namespaces, problems);
            }
            check_families(format!("{at}.families"), &group.families, problems);
        }
        if let Some(mirror) = &self.mirror_policies {
            check_selector(
                format!("{path}.mirror_policies.selector"),
                &mirror.selector,
                problems,
            );
            check_families(
                format!("{path}.mirror_policies.families"),
                &mirror.families,
                problems,
            );
        }
        if let Some(egress) = &self.egress_identities {
            egress.validate(&format!("{path}.egress_identities"), problems);
        }
        if self.groups.is_empty()
            && self.mirror_policies.is_none()
            && self.egress_identities.is_none()
        {
            problems.push(
                path,
                "nothing to publish: configure groups, mirror_policies or egress_identities",
            );
        }
        for (field, template, needed, allowed) in [
            (
                "pod",
                &self.names.pod,
                &["{namespace}", "{pod}"][..],
                &["{cluster}", "{namespace}", "{pod}"][..],
            ),
            (
                "node",
                &self.names.node,
                &["{node}"][..],
                &["{cluster}", "{node}"][..],
            ),
            (
                "placeholder",
                &self.names.placeholder,
                &[][..],
                &["{cluster}"][..],
            ),
        ] {
            let at = format!("{path}.names.{field}");
            for placeholder in needed {
                if !template.contains(placeholder) {
                    problems.push(
                        at.clone(),
                        format!("must contain {placeholder}, or two of them can get the same name"),
                    );
                }
            }
            let mut rest = template.clone();
            for placeholder in allowed {
                rest = rest.replace(placeholder, "x");
            }
            if !safe_name(&rest, 79) {
                problems.push(
                    at,
                    format!(
                        "`{template}`: only {} and letters, digits, `.`, `-` or `_`",
                        allowed.join(", ")
                    ),
                );
            }
        }
        if self.debounce_ms > 60_000 {
            problems.push(format!("{path}.debounce_ms"), "must be at most 60000");
        }
        if self.reconcile_interval_secs < 5 {
            problems.push(
                format!("{path}.reconcile_interval_secs"),
                "must be at least 5",
            );
        }
        let targets = !self.fortigate.is_empty()
            || !self.fortimanager.is_empty()
            || !self.panorama.is_empty();
        match cluster_name {
            None if targets => problems.push("cluster_name", "firewall targets need the cluster's name: it marks the objects this cluster owns, so two clusters never take each other's"),
            Some(name) if targets && name.len() > 200 => problems.push("cluster_name", "must be at most 200 characters with firewall targets: it goes into each object's comment (255 at most)"),
            _ => {}
        }
        if !targets && self.serve.is_none() {
            problems.push(
                path,
                "no target: configure fortigate, fortimanager, panorama or serve",
            );
        }
        let user_id = self
            .panorama
            .iter()
            .any(|device| device.mode == PanoramaMode::UserId);
        if let Some(name) = cluster_name.filter(|_| user_id) {
            let safe = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !safe || name.is_empty() || name.len() > 55 {
                problems.push(
                    "cluster_name",
                    "with PAN-OS User-ID targets, 1 to 55 letters, digits, `-` or `_`: it is part of every tag (`threatflow.<cluster>.<group>`), and a `.` would let one cluster's tags pass for another's",
                );
            }
        }
        let mut target_names = HashSet::new();
        let known = |group: &str| names.contains(group);
        let mut check_target =
            |at: &str,
             name: &str,
             url: &str,
             tls: &TlsSettings,
             groups: &Option<Vec<String>>,
             (requests_per_second, group_max_members, timeout_secs): (f64, usize, u64),
             problems: &mut Problems| {
                if !crate::problems::is_dns_label(name, 63) {
                    problems.push(
                        format!("{at}.name"),
                        format!("`{name}` must be 1 to 63 lower-case letters, digits or `-`"),
                    );
                } else if !target_names.insert(name.to_owned()) {
                    problems.push(
                        format!("{at}.name"),
                        format!("`{name}` is used twice among the targets"),
                    );
                }
                crate::net::http::check_https(format!("{at}.url"), url, problems);
                tls.validate(&format!("{at}.tls"), problems);
                for (j, group) in groups.iter().flatten().enumerate() {
                    if !known(group) && self.mirror_policies.is_none() {
                        problems.push(
                            format!("{at}.groups[{j}]"),
                            format!("`{group}` is not one of firewall.groups"),
                        );
                    }
                }
                if !(requests_per_second > 0.0 && requests_per_second <= 1000.0) {
                    problems.push(
                        format!("{at}.requests_per_second"),
                        "must be above 0 and at most 1000",
                    );
                }
                if group_max_members < 2 {
                    problems.push(format!("{at}.group_max_members"), "must be at least 2");
                }
                if timeout_secs == 0 {
                    problems.push(format!("{at}.timeout_secs"), "must be at least 1");
                }
            };
        for (i, device) in self.fortigate.iter().enumerate() {
            let at = format!("{path}.fortigate[{i}]");
            check_target(
                &at,
                &device.name,
                &device.url,
                &device.tls,
                &device.groups,
                (
                    device.requests_per_second,
                    device.group_max_members,
                    device.timeout_secs,
                ),
                problems,
            );
            device.api_key.validate(&format!("{at}.api_key"), problems);
        }
        for (i, manager) in self.fortimanager.iter().enumerate() {
            let at = format!("{path}.fortimanager[{i}]");
            check_target(
                &at,
                &manager.name,
                &manager.url,
                &manager.tls,
                &manager.groups,
                (
                    manager.requests_per_second,
                    manager.group_max_members,
                    manager.timeout_secs,
                ),
                problems,
            );
            crate::secret::check_credentials(
                &at,
                manager.api_key.as_ref(),
                manager.username.as_deref(),
                manager.password.as_ref(),
                problems,
            );
            if manager.adom.is_empty() {
                problems.push(format!("{at}.adom"), "must not be empty");
            }
            for (j, install) in manager.install.iter().enumerate() {
                if install.package.is_empty() {
                    problems.push(format!("{at}.install[{j}].package"), "must not be empty");
                }
            }
            if manager.install_poll_ms == 0 || manager.install_timeout_secs == 0 {
                problems.push(
                    format!("{at}.install_poll_ms"),
                    "install_poll_ms and install_timeout_secs must be above 0",
                );
            }
        }
        for (i, device) in self.panorama.iter().enumerate() {
            let at = format!("{path}.panorama[{i}]");
            check_target(
                &at,
                &device.name,
                &device.url,
                &device.tls,
                &device.groups,
                (
                    device.requests_per_second,
                    device.group_max_members,
                    device.timeout_secs,
                ),
                problems,
            );
            crate::secret::check_credentials(
                &at,
                device.api_key.as_ref(),
                device.username.as_deref(),
                device.password.as_ref(),
                problems,
            );
            match (device.mode, &device.device_group) {
                (PanoramaMode::Static, None) => problems.push(
                    format!("{at}.device_group"),
                    "static objects need the device group they go in (or `shared`)",
                ),
                (PanoramaMode::Static, Some(_))
                    if device.admin.is_none() && device.username.is_none() =>
                {
                    problems.push(
                        format!("{at}.admin"),
                        "static mode commits only its own admin's changes: name the API admin",
                    )
                }
                (PanoramaMode::Static, Some(_)) if !device.targets.is_empty() => problems.push(
                    format!("{at}.targets"),
                    "static objects are pushed to the device group's firewalls: targets are for user_id",
                ),
                (PanoramaMode::UserId, Some(_)) if device.targets.is_empty() => problems.push(
                    format!("{at}.device_group"),
                    "dynamic address groups are created in a Panorama's device group: list the firewalls' serials in targets",
                ),
                (PanoramaMode::UserId, Some(group)) if group == "shared" => problems.push(
                    format!("{at}.device_group"),
                    "dynamic address groups go in a device group that is pushed, not `shared`",
                ),
                (PanoramaMode::UserId, Some(_))
                    if device.admin.is_none() && device.username.is_none() =>
                {
                    problems.push(
                        format!("{at}.admin"),
                        "creating dynamic address groups commits only its own admin's changes: name the API admin",
                    )
                }
                _ => {}
            }
            if device.job_poll_ms == 0 || device.job_timeout_secs == 0 {
                problems.push(
                    format!("{at}.job_poll_ms"),
                    "job_poll_ms and job_timeout_secs must be above 0",
                );
            }
            if !(10..=2_592_000).contains(&device.tag_timeout_secs) {
                problems.push(
                    format!("{at}.tag_timeout_secs"),
                    "must be 10 to 2592000 (30 days): registrations must lapse if threatflow stops",
                );
            }
            for (j, serial) in device.targets.iter().enumerate() {
                if serial.is_empty() || !serial.chars().all(|c| c.is_ascii_alphanumeric()) {
                    problems.push(
                        format!("{at}.targets[{j}]"),
                        format!("`{serial}` is not a serial number"),
                    );
                }
            }
        }
        if let Some(serve) = &self.serve {
            if let Some(auth) = &serve.basic_auth {
                if auth.username.is_empty() || auth.username.contains(':') {
                    problems.push(
                        format!("{path}.serve.basic_auth.username"),
                        "must be non-empty, without `:`",
                    );
                }
                auth.password
                    .validate(&format!("{path}.serve.basic_auth.password"), problems);
            }
        }
    }

    /// One line for the startup summary.
    pub fn summary(&self) -> String {
        let mut targets: Vec<String> = self
            .fortigate
            .iter()
            .map(|device| format!("fortigate {}", device.name))
            .chain(
                self.fortimanager
                    .iter()
                    .map(|manager| format!("fortimanager {}", manager.name)),
            )
            .chain(self.panorama.iter().map(|device| match device.mode {
                PanoramaMode::UserId => format!("panorama {} (user-id)", device.name),
                PanoramaMode::Static => format!("panorama {} (static objects)", device.name),
            }))
            .collect();
        if let Some(serve) = &self.serve {
            targets.push(format!("serving lists on {}", serve.listen_addr));
        }
        let mirror = match self.mirror_policies {
            Some(_) => " and mirrored policies",
            None => "",
        };
        format!(
            "{} group(s){mirror} to {}",
            self.groups.len(),
            targets.join(", ")
        )
    }
}

fn check_families(path: String, families: &[Family], problems: &mut Problems) {
    let unique: HashSet<&Family> = families.iter().collect();
    if families.is_empty() || unique.len() != families.len() {
        problems.push(path, "list ipv4, ipv6 or both, once each");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> FirewallConfig {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let config = parse(
            r#"
groups:
  - name: web
    selector: "app = 'web'"
  - name: web
    namespace_selector: "has(team"
    families: [ipv4, ipv4]
  - name: "bad name/x"
fortigate:
  - name: fgt
    url: http://10.0.0.1
    api_key: {}
    groups: [nope]
fortimanager:
  - name: fgt
    url: https://fmg.example.com/?access_token=x
    api_key: {value_from_env: KEY}
    username: admin
names:
  pod: "k8s.{namespace}"
  node: "k8s/{node}"
reconcile_interval_secs: 1
"#,
        );
        let mut problems = Problems::default();
        config.validate("firewall", None, &mut problems);
        assert_eq!(
            problems.paths(),
            [
                "firewall.groups[0].selector",
                "firewall.groups[1].name",
                "firewall.groups[1].namespace_selector",
                "firewall.groups[1].families",
                "firewall.groups[2].name",
                "firewall.names.pod",
                "firewall.names.node",
                "firewall.reconcile_interval_secs",
                "cluster_name",
                "firewall.fortigate[0].url",
                "firewall.fortigate[0].groups[0]",
                "firewall.fortigate[0].api_key",
                "firewall.fortimanager[0].name",
                "firewall.fortimanager[0].url",
                "firewall.fortimanager[0]",
            ],
            "{problems}"
        );
        assert!(
            problems
                .to_string()
                .contains("not a Calico selector at character 4"),
            "{problems}"
        );
    }

    #[test]
    fn a_minimal_config_is_valid() {
        let config = parse(
            r#"
groups: [{name: web, selector: "app == 'web'", families: [ipv4, ipv6]}]
fortigate:
  - name: fgt-east
    url: https://fgt.example.com
    api_key: {value_from_file: /etc/threatflow/fgt/api-key}
"#,
        );
        let mut problems = Problems::default();
        config.validate("firewall", Some("prod"), &mut problems);
        assert!(problems.is_empty(), "{problems}");
        assert_eq!(config.debounce_ms, 1000);
        assert_eq!(config.fortigate[0].group_max_members, 600);
    }

    #[test]
    fn panorama_targets_are_checked_by_mode() {
        let config = parse(
            r#"
groups: [{name: web}]
panorama:
  - name: uid
    url: https://pan.example.com
    api_key: {value_from_env: KEY}
    device_group: k8s
    targets: ["0070 51", ok123]
    tag_timeout_secs: 5
  - name: static
    mode: static
    url: https://pan.example.com
    api_key: {value_from_env: KEY}
    targets: ["007051000050926"]
  - name: static-ok
    mode: static
    device_group: shared
    url: https://pan.example.com
    username: svc
    password: {value_from_file: /p}
"#,
        );
        let mut problems = Problems::default();
        config.validate("firewall", Some("prod"), &mut problems);
        assert_eq!(
            problems.paths(),
            [
                "firewall.panorama[0].admin",
                "firewall.panorama[0].tag_timeout_secs",
                "firewall.panorama[0].targets[0]",
                "firewall.panorama[1].device_group",
            ],
            "{problems}"
        );
    }
}
