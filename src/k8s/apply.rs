//! The one way threatflow writes to the cluster: make the objects one owner (a feed, a policy
//! import) has there exactly the desired ones, touching nothing else.
//!
//! Ownership is a set of labels (`app.kubernetes.io/managed-by: threatflow` plus the owner's
//! own). An object is changed or deleted only if it carries them. Before a name is written,
//! the target is asked whether something of that name exists without them; if so, that object
//! is refused (reported with its current owner: field managers and labels) and the others go
//! on. Nothing is ever forced onto an object threatflow does not own; the one exception is
//! adopting Calico Enterprise's `threatfeed.<feed>` sets on migration, switched on
//! explicitly. Unchanged objects (same content hash and labels) are not written. With leader
//! election, leadership is checked right before every write.
//!
//! Two targets: the Kubernetes API (server-side apply, field manager `threatflow`) and a
//! directory of YAML manifests (GitOps, the quickstart), with the same rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::calico::{
    GlobalNetworkPolicy, GlobalNetworkSet, ObjectMeta, StagedGlobalNetworkPolicy, Tier,
};
use super::leader::Leadership;

/// The label that marks objects threatflow owns; it never touches objects without it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "threatflow";
/// A hash of an object's content, so unchanged objects are recognised without comparing specs.
pub const CONTENT_HASH_ANNOTATION: &str = "threatflow.io/content-hash";
/// Calico Enterprise's intrusion-detection controller marks the sets it writes with this.
const CALICO_ENTERPRISE_CREATOR: (&str, &str) =
    ("tigera.io/creator", "intrusion-detection-controller");
const FIELD_MANAGER: &str = "threatflow";

/// Where owned objects are published (feeds' sets, imported policy).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// `kubernetes` applies the objects through the Kubernetes API (in-cluster credentials, or
    /// the `KUBECONFIG` file); `directory` writes them as YAML files (for GitOps and the
    /// quickstart).
    #[serde(rename = "type")]
    pub kind: PublishKind,
    /// Settings of a `directory` target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectoryConfig>,
}

impl PublishConfig {
    pub fn validate(&self, path: &str, problems: &mut crate::problems::Problems) {
        match (self.kind, &self.directory) {
            (PublishKind::Directory, None) => problems.push(
                format!("{path}.directory"),
                "a `directory` target needs a `directory:` section with a `path`",
            ),
            (PublishKind::Kubernetes, Some(_)) => problems.push(
                format!("{path}.directory"),
                "only a `directory` target takes a `directory:` section",
            ),
            _ => {}
        }
    }

    /// The target, given a Kubernetes client when the kind needs one.
    pub fn target(&self, kubernetes: Option<kube::Client>) -> Option<Target> {
        match self.kind {
            PublishKind::Directory => self
                .directory
                .as_ref()
                .map(|directory| Target::Directory(DirectoryTarget::new(directory.path.clone()))),
            PublishKind::Kubernetes => {
                kubernetes.map(|client| Target::Kubernetes(KubernetesTarget::new(client)))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PublishKind {
    Kubernetes,
    Directory,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    pub path: PathBuf,
}

/// A kind of object threatflow writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Tier,
    NetworkSet,
    Policy,
    StagedPolicy,
}

impl ObjectKind {
    /// Created in this order (a tier before its policies, sets before the policies that
    /// select them), deleted in reverse.
    pub const ALL: [ObjectKind; 4] = [
        ObjectKind::Tier,
        ObjectKind::NetworkSet,
        ObjectKind::Policy,
        ObjectKind::StagedPolicy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Tier => "Tier",
            ObjectKind::NetworkSet => "GlobalNetworkSet",
            ObjectKind::Policy => "GlobalNetworkPolicy",
            ObjectKind::StagedPolicy => "StagedGlobalNetworkPolicy",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            ObjectKind::Tier => "tiers",
            ObjectKind::NetworkSet => "globalnetworksets",
            ObjectKind::Policy => "globalnetworkpolicies",
            ObjectKind::StagedPolicy => "stagedglobalnetworkpolicies",
        }
    }

    /// The API resource, for kube's dynamic API.
    pub fn resource(self) -> ApiResource {
        ApiResource {
            group: super::calico::GROUP.into(),
            version: "v3".into(),
            api_version: super::calico::API_VERSION.into(),
            kind: self.name().into(),
            plural: self.plural().into(),
        }
    }
}

/// An object threatflow writes and owns.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Tier(Tier),
    NetworkSet(GlobalNetworkSet),
    Policy(GlobalNetworkPolicy),
    StagedPolicy(StagedGlobalNetworkPolicy),
}

impl Object {
    /// Sets an annotation (before [`Ownership::stamp`], which hashes it with the rest).
    pub fn annotate(&mut self, key: &str, value: String) {
        self.metadata_mut()
            .annotations
            .insert(key.to_owned(), value);
    }

    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Tier(_) => ObjectKind::Tier,
            Object::NetworkSet(_) => ObjectKind::NetworkSet,
            Object::Policy(_) => ObjectKind::Policy,
            Object::StagedPolicy(_) => ObjectKind::StagedPolicy,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Tier(object) => &object.metadata,
            Object::NetworkSet(object) => &object.metadata,
            Object::Policy(object) => &object.metadata,
            Object::StagedPolicy(object) => &object.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Tier(object) => &mut object.metadata,
            Object::NetworkSet(object) => &mut object.metadata,
            Object::Policy(object) => &mut object.metadata,
            Object::StagedPolicy(object) => &mut object.metadata,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The object as JSON, in its wire shape.
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            Object::Tier(object) => serde_json::to_value(object),
            Object::NetworkSet(object) => serde_json::to_value(object),
            Object::Policy(object) => serde_json::to_value(object),
            Object::StagedPolicy(object) => serde_json::to_value(object),
        };
        value.expect("Calico objects serialize")
    }

    /// The object as a YAML document.
    pub fn to_yaml(&self) -> String {
        let yaml = match self {
            Object::Tier(object) => yaml_serde::to_string(object),
            Object::NetworkSet(object) => yaml_serde::to_string(object),
            Object::Policy(object) => yaml_serde::to_string(object),
            Object::StagedPolicy(object) => yaml_serde::to_string(object),
        };
        yaml.expect("Calico objects serialize")
    }

    /// The content hash threatflow stamped on the object, if any.
    pub fn content_hash(&self) -> Option<&str> {
        self.metadata()
            .annotations
            .get(CONTENT_HASH_ANNOTATION)
            .map(String::as_str)
    }
}

/// The labels that mark one owner's objects, such as one feed's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    labels: BTreeMap<String, String>,
}

impl Ownership {
    /// `app.kubernetes.io/managed-by: threatflow` and `key: value`.
    pub fn new(key: &str, value: &str) -> Ownership {
        Ownership {
            labels: BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (key.to_owned(), value.to_owned()),
            ]),
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// A label selector for the owner's objects.
    fn selector(&self) -> String {
        self.labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn owns(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }

    /// Adds the ownership labels and the content hash (over everything else) to `object`.
    pub fn stamp(&self, mut object: Object) -> Object {
        let metadata = object.metadata_mut();
        metadata.labels.extend(self.labels.clone());
        metadata.annotations.remove(CONTENT_HASH_ANNOTATION);
        let bytes = serde_json::to_vec(&object.to_json()).expect("Calico objects serialize");
        let hash = format!("{:016x}", fnv1a(&bytes));
        object
            .metadata_mut()
            .annotations
            .insert(CONTENT_HASH_ANNOTATION.to_owned(), hash);
        object
    }
}

/// Whether to take over Calico Enterprise's sets of the same name on migration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Adopt {
    #[default]
    Never,
    /// A `GlobalNetworkSet` of a desired name that Calico Enterprise's intrusion-detection
    /// controller created (`tigera.io/creator: intrusion-detection-controller`).
    CalicoEnterpriseThreatFeeds,
}

impl Adopt {
    fn allows(self, kind: ObjectKind, labels: &BTreeMap<String, String>) -> bool {
        let (key, value) = CALICO_ENTERPRISE_CREATOR;
        self == Adopt::CalicoEnterpriseThreatFeeds
            && kind == ObjectKind::NetworkSet
            && labels.get(key).map(String::as_str) == Some(value)
    }
}

/// An object of a desired name that something else owns: left as it is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    pub kind: &'static str,
    pub name: String,
    /// Who owns it: field managers and labels, as the target shows them.
    pub owner: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} exists and is not threatflow's ({}); left as it is",
            self.kind, self.name, self.owner
        )
    }
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub written: usize,
    pub unchanged: usize,
    pub deleted: usize,
    pub adopted: usize,
    /// Desired objects refused because something else owns their name.
    pub conflicts: Vec<Conflict>,
}

/// Writing to the target failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list {path}")]
    List {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the Kubernetes API refused to {operation} {kind} {name}")]
    Kubernetes {
        operation: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("this replica stopped leading before it wrote")]
    NotLeader,
}

impl ApplyError {
    pub fn kind(&self) -> &'static str {
        match self {
            ApplyError::Write { .. } => "write",
            ApplyError::List { .. } => "list",
            ApplyError::Kubernetes { .. } => "kubernetes",
            ApplyError::NotLeader => "not_leader",
        }
    }
}

/// Where owned objects are written.
pub enum Target {
    Kubernetes(KubernetesTarget),
    Directory(DirectoryTarget),
}

impl Target {
    /// Makes the owner's objects of `kinds` on the target exactly `desired` (each of one of
    /// those kinds, already stamped by [`Ownership::stamp`]): writes what changed and deletes
    /// the owner's objects no longer desired.
    pub async fn sync(
        &self,
        ownership: &Ownership,
        kinds: &[ObjectKind],
        desired: &[Object],
        adopt: Adopt,
        leadership: &Leadership,
    ) -> Result<ApplyReport, ApplyError> {
        let sync = Sync {
            ownership,
            kinds,
            desired,
            adopt,
            leadership,
            prune: true,
        };
        match self {
            Target::Kubernetes(target) => target.sync(sync).await,
            Target::Directory(target) => target.sync(sync),
        }
    }

    /// Writes `object` if it is missing or changed, deleting nothing (a shared object such as
    /// a tier, which may still hold policies).
    pub async fn ensure(
        &self,
        ownership: &Ownership,
        object: &Object,
        leadership: &Leadership,
    ) -> Result<ApplyReport, ApplyError> {
        let sync = Sync {
            ownership,
            kinds: &[object.kind()],
            desired: std::slice::from_ref(object),
            adopt: Adopt::Never,
            leadership,
            prune: false,
        };
        match self {
            Target::Kubernetes(target) => target.sync(sync).await,
            Target::Directory(target) => target.sync(sync),
        }
    }

    /// An annotation of the owner's object `name` of `kind`, as the target holds it now
    /// (`None` when the object is missing, not the owner's, or without it).
    pub async fn owned_annotation(
        &self,
        ownership: &Ownership,
        kind: ObjectKind,
        name: &str,
        key: &str,
    ) -> Result<Option<String>, ApplyError> {
        let (labels, annotations) = match self {
            Target::Kubernetes(target) => {
                let Some(object) = target
                    .api(kind)
                    .get_opt(name)
                    .await
                    .map_err(kube_error("get", kind, name))?
                else {
                    return Ok(None);
                };
                (
                    object.metadata.labels.unwrap_or_default(),
                    object.metadata.annotations.unwrap_or_default(),
                )
            }
            Target::Directory(target) => {
                match DirectoryTarget::read(&target.path.join(format!("{name}.yaml"))) {
                    Some(manifest) if manifest.kind == kind.name() => {
                        (manifest.metadata.labels, manifest.metadata.annotations)
                    }
                    _ => return Ok(None),
                }
            }
        };
        Ok(ownership
            .owns(&labels)
            .then(|| annotations.get(key).cloned())
            .flatten())
    }

    /// How many nets the owner's network sets hold now: the set in force, after a restart.
    pub async fn owned_nets(&self, ownership: &Ownership) -> Result<usize, ApplyError> {
        match self {
            Target::Kubernetes(target) => target.owned_nets(ownership).await,
            Target::Directory(target) => Ok(target.owned_nets(ownership)),
        }
    }
}

/// One sync's inputs.
struct Sync<'a> {
    ownership: &'a Ownership,
    kinds: &'a [ObjectKind],
    desired: &'a [Object],
    adopt: Adopt,
    leadership: &'a Leadership,
    /// Delete the owner's objects of `kinds` that are not desired.
    prune: bool,
}

/// Objects through the Kubernetes API.
#[derive(Clone)]
pub struct KubernetesTarget {
    client: kube::Client,
}

impl KubernetesTarget {
    pub fn new(client: kube::Client) -> KubernetesTarget {
        KubernetesTarget { client }
    }

    fn api(&self, kind: ObjectKind) -> kube::Api<DynamicObject> {
        kube::Api::all_with(self.client.clone(), &kind.resource())
    }

    async fn owned_nets(&self, ownership: &Ownership) -> Result<usize, ApplyError> {
        let kind = ObjectKind::NetworkSet;
        let sets = self
            .api(kind)
            .list(&ListParams::default().labels(&ownership.selector()))
            .await
            .map_err(kube_error("list", kind, &ownership.selector()))?;
        Ok(sets
            .items
            .iter()
            .map(|set| set.data["spec"]["nets"].as_array().map_or(0, Vec::len))
            .sum())
    }

    async fn sync(&self, sync: Sync<'_>) -> Result<ApplyReport, ApplyError> {
        let Sync {
            ownership,
            kinds,
            desired,
            adopt,
            leadership,
            prune,
        } = sync;
        let mut report = ApplyReport::default();
        let selector = ownership.selector();
        let mut stale = Vec::new();
        for &kind in kinds {
            let api = self.api(kind);
            // Metadata only: the content hash says whether an object changed.
            let owned: BTreeMap<String, kube::api::ObjectMeta> = api
                .list_metadata(&ListParams::default().labels(&selector))
                .await
                .map_err(kube_error("list", kind, &selector))?
                .items
                .into_iter()
                .filter_map(|object| Some((object.metadata.name.clone()?, object.metadata)))
                .collect();
            let mut wanted = BTreeSet::new();
            for object in desired.iter().filter(|object| object.kind() == kind) {
                let name = object.name();
                wanted.insert(name.to_owned());
                let force = match owned.get(name) {
                    Some(current) => {
                        let unchanged = current
                            .annotations
                            .as_ref()
                            .and_then(|annotations| annotations.get(CONTENT_HASH_ANNOTATION))
                            .map(String::as_str)
                            == object.content_hash()
                            && current.labels.as_ref() == Some(&object.metadata().labels);
                        if unchanged {
                            report.unchanged += 1;
                            continue;
                        }
                        true
                    }
                    None => match api
                        .get_metadata_opt(name)
                        .await
                        .map_err(kube_error("read", kind, name))?
                    {
                        Some(existing) => {
                            let labels = existing.metadata.labels.clone().unwrap_or_default();
                            if !adopt.allows(kind, &labels) {
                                report.conflicts.push(Conflict {
                                    kind: kind.name(),
                                    name: name.to_owned(),
                                    owner: describe_owner(&existing.metadata),
                                });
                                continue;
                            }
                            tracing::info!(kind = kind.name(), name, "adopting Calico Enterprise's object of this name (adopt_calico_enterprise_sets)");
                            report.adopted += 1;
                            true
                        }
                        None => false,
                    },
                };
                if !leadership.is_leader() {
                    return Err(ApplyError::NotLeader);
                }
                let mut params = PatchParams::apply(FIELD_MANAGER);
                if force {
                    params = params.force();
                }
                match api
                    .patch(name, &params, &Patch::Apply(object.to_json()))
                    .await
                {
                    Ok(_) => report.written += 1,
                    // Created by someone else between the read and the write.
                    Err(kube::Error::Api(status)) if !force && status.code == 409 => {
                        report.conflicts.push(Conflict {
                            kind: kind.name(),
                            name: name.to_owned(),
                            owner: format!("created meanwhile: {}", status.message),
                        });
                    }
                    Err(source) => return Err(kube_error("apply", kind, name)(source)),
                }
            }
            if prune {
                stale.extend(
                    owned
                        .into_keys()
                        .filter(|name| !wanted.contains(name))
                        .map(|name| (kind, name)),
                );
            }
        }
        // Policies go before the sets they select, and both before their tier.
        stale.sort_by_key(|(kind, _)| std::cmp::Reverse(*kind));
        for (kind, name) in stale {
            if !leadership.is_leader() {
                return Err(ApplyError::NotLeader);
            }
            match self.api(kind).delete(&name, &DeleteParams::default()).await {
                Ok(_) => report.deleted += 1,
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => return Err(kube_error("delete", kind, &name)(source)),
            }
        }
        Ok(report)
    }
}

fn kube_error<'a>(
    operation: &'static str,
    kind: ObjectKind,
    name: &'a str,
) -> impl FnOnce(kube::Error) -> ApplyError + 'a {
    move |source| ApplyError::Kubernetes {
        operation,
        kind: kind.name(),
        name: name.to_owned(),
        source,
    }
}

/// `field managers: a, b; labels: k=v, ...` (or `no field managers, no labels`).
fn describe_owner(metadata: &kube::api::ObjectMeta) -> String {
    let managers: BTreeSet<&str> = metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|entry| entry.manager.as_deref())
        .collect();
    let labels: Vec<String> = metadata
        .labels
        .iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let managers = match managers.is_empty() {
        true => "no field managers".to_owned(),
        false => format!(
            "field managers: {}",
            managers.into_iter().collect::<Vec<_>>().join(", ")
        ),
    };
    let labels = match labels.is_empty() {
        true => "no labels".to_owned(),
        false => format!("labels: {}", labels.join(", ")),
    };
    format!("{managers}; {labels}")
}

/// A directory of YAML manifests, one `<name>.yaml` per object.
#[derive(Clone, Debug)]
pub struct DirectoryTarget {
    path: PathBuf,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    kind: String,
    metadata: ManifestMeta,
    #[serde(default)]
    spec: ManifestSpec,
}

#[derive(Deserialize)]
struct ManifestMeta {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct ManifestSpec {
    #[serde(default)]
    nets: Vec<serde::de::IgnoredAny>,
}

impl DirectoryTarget {
    pub fn new(path: PathBuf) -> DirectoryTarget {
        DirectoryTarget { path }
    }

    fn read(path: &Path) -> Option<Manifest> {
        let text = std::fs::read_to_string(path).ok()?;
        yaml_serde::from_str(&text).ok()
    }

    /// The manifests in the directory: file path and content, when they parse.
    fn manifests(&self) -> Vec<(PathBuf, Manifest)> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|extension| extension == "yaml")
            })
            .filter_map(|path| Some((path.clone(), Self::read(&path)?)))
            .collect()
    }

    fn owned_nets(&self, ownership: &Ownership) -> usize {
        self.manifests()
            .iter()
            .filter(|(_, manifest)| {
                manifest.kind == ObjectKind::NetworkSet.name()
                    && ownership.owns(&manifest.metadata.labels)
            })
            .map(|(_, manifest)| manifest.spec.nets.len())
            .sum()
    }

    fn sync(&self, sync: Sync<'_>) -> Result<ApplyReport, ApplyError> {
        let Sync {
            ownership,
            kinds,
            desired,
            leadership,
            prune,
            ..
        } = sync;
        let write_error = |path: &Path| {
            let path = path.display().to_string();
            move |source| ApplyError::Write { path, source }
        };
        if !leadership.is_leader() {
            return Err(ApplyError::NotLeader);
        }
        std::fs::create_dir_all(&self.path).map_err(write_error(&self.path))?;
        let mut report = ApplyReport::default();
        let mut wanted = BTreeSet::new();
        for object in desired {
            let file = self.path.join(format!("{}.yaml", object.name()));
            wanted.insert(file.clone());
            let yaml = object.to_yaml();
            match std::fs::read_to_string(&file) {
                Ok(existing) if existing == yaml => {
                    report.unchanged += 1;
                    continue;
                }
                Ok(existing) => {
                    let owned = yaml_serde::from_str::<Manifest>(&existing)
                        .is_ok_and(|manifest| ownership.owns(&manifest.metadata.labels));
                    if !owned {
                        report.conflicts.push(Conflict {
                            kind: object.kind().name(),
                            name: object.name().to_owned(),
                            owner: format!("{} is not threatflow's file", file.display()),
                        });
                        continue;
                    }
                }
                Err(_) => {}
            }
            let mut temporary = file.clone().into_os_string();
            temporary.push(".tmp");
            std::fs::write(&temporary, &yaml).map_err(write_error(&file))?;
            std::fs::rename(&temporary, &file).map_err(write_error(&file))?;
            report.written += 1;
        }
        let list_error = |source| ApplyError::List {
            path: self.path.display().to_string(),
            source,
        };
        std::fs::read_dir(&self.path).map_err(list_error)?;
        if !prune {
            return Ok(report);
        }
        for (path, manifest) in self.manifests() {
            let kind_managed = kinds.iter().any(|kind| kind.name() == manifest.kind);
            if kind_managed && !wanted.contains(&path) && ownership.owns(&manifest.metadata.labels)
            {
                std::fs::remove_file(&path).map_err(write_error(&path))?;
                report.deleted += 1;
            }
        }
        Ok(report)
    }
}

/// FNV-1a: a stable hash (the same on every version and platform) for content hashes.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::calico::{GlobalNetworkSetSpec, Tier};

    fn set(name: &str, nets: &[&str], ownership: &Ownership) -> Object {
        let metadata = ObjectMeta {
            name: name.into(),
            ..ObjectMeta::default()
        };
        let spec = GlobalNetworkSetSpec {
            nets: nets.iter().map(|net| net.to_string()).collect(),
            ..GlobalNetworkSetSpec::default()
        };
        ownership.stamp(Object::NetworkSet(GlobalNetworkSet::new(metadata, spec)))
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        files
    }

    #[tokio::test]
    async fn a_directory_holds_exactly_the_owners_objects_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Directory(DirectoryTarget::new(dir.path().to_owned()));
        let (leader, kinds) = (Leadership::always(), [ObjectKind::NetworkSet]);
        let (f, g) = (
            Ownership::new("threatflow.io/feed", "f"),
            Ownership::new("threatflow.io/feed", "g"),
        );
        // Someone else's file named like one of f's objects, and another feed's object.
        std::fs::write(
            dir.path().join("f.2.yaml"),
            "kind: GlobalNetworkSet\nmetadata: {name: f.2, labels: {team: x}}\nspec: {nets: [192.0.2.1/32]}\n",
        )
        .unwrap();
        let other = [set("g.1", &["9.9.9.9/32"], &g)];
        target
            .sync(&g, &kinds, &other, Adopt::Never, &leader)
            .await
            .unwrap();

        let desired = [
            set("f.1", &["1.1.1.1/32", "1.1.1.2/32"], &f),
            set("f.2", &["2.2.2.2/32"], &f),
        ];
        let report = target
            .sync(&f, &kinds, &desired, Adopt::Never, &leader)
            .await
            .unwrap();
        assert_eq!((report.written, report.conflicts.len()), (1, 1));
        assert_eq!(report.conflicts[0].name, "f.2");
        assert!(std::fs::read_to_string(dir.path().join("f.2.yaml"))
            .unwrap()
            .contains("192.0.2.1/32"));
        assert_eq!(target.owned_nets(&f).await.unwrap(), 2);

        let again = target
            .sync(&f, &kinds, &desired, Adopt::Never, &leader)
            .await
            .unwrap();
        assert_eq!(
            (again.written, again.unchanged),
            (0, 1),
            "an unchanged sync writes nothing"
        );

        // f shrinks to nothing: its own file goes; the foreign file and g's stay.
        let report = target
            .sync(&f, &kinds, &[], Adopt::Never, &leader)
            .await
            .unwrap();
        assert_eq!(report.deleted, 1);
        assert_eq!(files(dir.path()), ["f.2.yaml", "g.1.yaml"]);
    }

    #[tokio::test]
    async fn ensure_writes_a_tier_manifest_and_never_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Directory(DirectoryTarget::new(dir.path().to_owned()));
        let ownership = Ownership::new("threatflow.io/component", "feeds");
        let tier = |name: &str| {
            let metadata = ObjectMeta {
                name: name.into(),
                ..ObjectMeta::default()
            };
            ownership.stamp(Object::Tier(Tier::new(
                metadata,
                100.0,
                super::super::calico::Action::Pass,
            )))
        };
        let leader = Leadership::always();
        target
            .ensure(&ownership, &tier("security"), &leader)
            .await
            .unwrap();
        target
            .ensure(&ownership, &tier("renamed"), &leader)
            .await
            .unwrap();
        assert_eq!(files(dir.path()), ["renamed.yaml", "security.yaml"]);
        let yaml = std::fs::read_to_string(dir.path().join("security.yaml")).unwrap();
        assert!(
            yaml.contains("kind: Tier") && yaml.contains("defaultAction: Pass"),
            "{yaml}"
        );
    }

    #[test]
    fn a_stamp_is_a_hash_of_everything_but_itself() {
        let ownership = Ownership::new("threatflow.io/feed", "f");
        let a = set("f", &["1.1.1.1/32"], &ownership);
        assert_eq!(
            a,
            ownership.stamp(a.clone()),
            "stamping again changes nothing"
        );
        assert_ne!(
            a.content_hash(),
            set("f", &["1.1.1.2/32"], &ownership).content_hash()
        );
        assert_eq!(a.metadata().labels[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
    }
}
