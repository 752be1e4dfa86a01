//! Publishing rendered feeds.
//!
//! The `kubernetes` target server-side-applies each object (field manager `threatflow`) and
//! deletes the feed's objects it no longer renders; an object whose content hash and labels are
//! unchanged is not written at all. The `directory` target writes each object as
//! `<name>.yaml`, for GitOps repositories and the quickstart: a file is rewritten only when its
//! content changed (atomically), and deleted only when the feed no longer renders it. Either
//! target touches only objects whose labels say threatflow owns them for this feed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::render::Rendered;
use crate::k8s::{CONTENT_HASH_ANNOTATION, FEED_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// What one publication changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    pub written: usize,
    pub unchanged: usize,
    pub deleted: usize,
}

/// Writing to the target failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
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
    #[error("the Kubernetes API refused to {operation} {name}")]
    Kubernetes {
        operation: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Where a feed is published.
pub enum Target {
    Directory(DirectoryTarget),
    /// Boxed: the API handles are large, and there is one target per feed.
    Kubernetes(Box<KubernetesTarget>),
}

impl Target {
    /// How many nets the target holds for `feed` now (the last applied set, after a restart).
    pub async fn published_nets(&self, feed: &str) -> Result<usize, PublishError> {
        match self {
            Target::Directory(target) => Ok(target.published_nets(feed)),
            Target::Kubernetes(target) => target.published_nets(feed).await,
        }
    }

    pub async fn apply(
        &self,
        feed: &str,
        rendered: &Rendered,
    ) -> Result<PublishReport, PublishError> {
        match self {
            Target::Directory(target) => target.apply(feed, rendered),
            Target::Kubernetes(target) => target.apply(feed, rendered).await,
        }
    }
}

/// GlobalNetworkSets and GlobalNetworkPolicies through the Kubernetes API.
#[derive(Clone)]
pub struct KubernetesTarget {
    sets: kube::Api<kube::api::DynamicObject>,
    policies: kube::Api<kube::api::DynamicObject>,
}

const FIELD_MANAGER: &str = "threatflow";

impl KubernetesTarget {
    pub fn new(client: kube::Client) -> KubernetesTarget {
        KubernetesTarget {
            sets: kube::Api::all_with(client.clone(), &crate::k8s::global_network_sets()),
            policies: kube::Api::all_with(client, &crate::k8s::global_network_policies()),
        }
    }

    /// The list parameters that select the feed's own objects.
    fn owned_by_feed(feed: &str) -> kube::api::ListParams {
        kube::api::ListParams::default().labels(&format!(
            "{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{FEED_LABEL}={feed}"
        ))
    }

    fn list_error(feed: &str) -> impl FnOnce(kube::Error) -> PublishError + '_ {
        move |source| PublishError::Kubernetes {
            operation: "list",
            name: format!("the objects of feed {feed}"),
            source,
        }
    }

    /// Reads the nets back (once, after a start): the size of the set in force.
    pub async fn published_nets(&self, feed: &str) -> Result<usize, PublishError> {
        let sets = self
            .sets
            .list(&Self::owned_by_feed(feed))
            .await
            .map_err(Self::list_error(feed))?;
        Ok(sets
            .items
            .iter()
            .map(|set| set.data["spec"]["nets"].as_array().map_or(0, Vec::len))
            .sum())
    }

    pub async fn apply(
        &self,
        feed: &str,
        rendered: &Rendered,
    ) -> Result<PublishReport, PublishError> {
        let mut report = PublishReport::default();
        let sets = rendered
            .sets
            .iter()
            .map(|set| (&set.metadata, serde_json::to_value(set)));
        let policies = rendered
            .policy
            .iter()
            .map(|policy| (&policy.metadata, serde_json::to_value(policy)));
        for (api, desired) in [
            (&self.sets, sets.collect::<Vec<_>>()),
            (&self.policies, policies.collect()),
        ] {
            // Metadata only: the content hash says whether an object changed, so the nets are
            // not fetched on every sync.
            let existing: Vec<_> = api
                .list_metadata(&Self::owned_by_feed(feed))
                .await
                .map_err(Self::list_error(feed))?
                .items
                .into_iter()
                .map(|object| object.metadata)
                .collect();
            let mut wanted = BTreeSet::new();
            for (metadata, object) in desired {
                let object = object.expect("Calico objects serialize");
                wanted.insert(metadata.name.clone());
                let current = existing
                    .iter()
                    .find(|candidate| candidate.name.as_deref() == Some(&metadata.name));
                let unchanged = current.is_some_and(|current| {
                    let hash = current
                        .annotations
                        .as_ref()
                        .and_then(|annotations| annotations.get(CONTENT_HASH_ANNOTATION));
                    hash.is_some()
                        && hash == metadata.annotations.get(CONTENT_HASH_ANNOTATION)
                        && current.labels.as_ref() == Some(&metadata.labels)
                });
                if unchanged {
                    report.unchanged += 1;
                    continue;
                }
                api.patch(
                    &metadata.name,
                    &kube::api::PatchParams::apply(FIELD_MANAGER).force(),
                    &kube::api::Patch::Apply(&object),
                )
                .await
                .map_err(|source| PublishError::Kubernetes {
                    operation: "apply",
                    name: metadata.name.clone(),
                    source,
                })?;
                report.written += 1;
            }
            for stale in existing
                .iter()
                .filter_map(|object| object.name.as_ref())
                .filter(|name| !wanted.contains(*name))
            {
                api.delete(stale, &kube::api::DeleteParams::default())
                    .await
                    .map_err(|source| PublishError::Kubernetes {
                        operation: "delete",
                        name: stale.clone(),
                        source,
                    })?;
                report.deleted += 1;
            }
        }
        Ok(report)
    }
}

/// A directory of YAML manifests.
#[derive(Clone, Debug)]
pub struct DirectoryTarget {
    path: PathBuf,
}

#[derive(Deserialize)]
struct Owned {
    metadata: OwnedMeta,
    #[serde(default)]
    spec: OwnedSpec,
}

#[derive(Deserialize, Default)]
struct OwnedSpec {
    #[serde(default)]
    nets: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct OwnedMeta {
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

impl DirectoryTarget {
    pub fn new(path: PathBuf) -> DirectoryTarget {
        DirectoryTarget { path }
    }

    /// How many nets the directory holds for `feed` now: the last applied set, after a restart.
    pub fn published_nets(&self, feed: &str) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter(|entry| {
                entry
                    .path()
                    .extension()
                    .is_some_and(|extension| extension == "yaml")
            })
            .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
            .filter_map(|text| yaml_serde::from_str::<Owned>(&text).ok())
            .filter(|object| owned_by(object, feed))
            .map(|object| object.spec.nets.len())
            .sum()
    }

    /// Makes the directory hold exactly `rendered` for `feed`.
    pub fn apply(&self, feed: &str, rendered: &Rendered) -> Result<PublishReport, PublishError> {
        let write_error = |path: &Path| {
            let path = path.display().to_string();
            move |source| PublishError::Write { path, source }
        };
        std::fs::create_dir_all(&self.path).map_err(write_error(&self.path))?;
        let mut report = PublishReport::default();
        let mut wanted = BTreeSet::new();
        let documents = rendered
            .sets
            .iter()
            .map(|set| (set.metadata.name.clone(), yaml_serde::to_string(set)))
            .chain(
                rendered
                    .policy
                    .iter()
                    .map(|policy| (policy.metadata.name.clone(), yaml_serde::to_string(policy))),
            );
        for (name, yaml) in documents {
            let yaml = yaml.expect("Calico objects serialize");
            let file = self.path.join(format!("{name}.yaml"));
            wanted.insert(file.clone());
            if std::fs::read_to_string(&file).is_ok_and(|existing| existing == yaml) {
                report.unchanged += 1;
                continue;
            }
            let mut temporary = file.clone().into_os_string();
            temporary.push(".tmp");
            std::fs::write(&temporary, &yaml).map_err(write_error(&file))?;
            std::fs::rename(&temporary, &file).map_err(write_error(&file))?;
            report.written += 1;
        }
        let list_error = |source| PublishError::List {
            path: self.path.display().to_string(),
            source,
        };
        for entry in std::fs::read_dir(&self.path).map_err(list_error)? {
            let path = entry.map_err(list_error)?.path();
            if path.extension().is_none_or(|extension| extension != "yaml")
                || wanted.contains(&path)
            {
                continue;
            }
            let owned = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| yaml_serde::from_str::<Owned>(&text).ok())
                .is_some_and(|object| owned_by(&object, feed));
            if owned {
                std::fs::remove_file(&path).map_err(write_error(&path))?;
                report.deleted += 1;
            }
        }
        Ok(report)
    }
}

fn owned_by(object: &Owned, feed: &str) -> bool {
    let labels = &object.metadata.labels;
    labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
        && labels.get(FEED_LABEL).map(String::as_str) == Some(feed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feeds::render::{render, RenderSettings};

    #[test]
    fn writes_only_changes_and_removes_only_its_own_stale_objects() {
        let dir = tempfile::tempdir().unwrap();
        let target = DirectoryTarget::new(dir.path().to_owned());
        let settings = RenderSettings {
            shard_max_nets: 100,
            ..RenderSettings::default()
        };
        let big = render(
            "f",
            &Default::default(),
            &crate::netset::spaced_v4(1000),
            &settings,
        );
        let report = target.apply("f", &big).unwrap();
        assert_eq!(
            (report.written, report.unchanged, report.deleted),
            (big.sets.len(), 0, 0)
        );
        // Someone else's object and another feed's object sit in the same directory.
        std::fs::write(
            dir.path().join("mine.yaml"),
            "metadata: {name: mine, labels: {team: x}}\n",
        )
        .unwrap();
        let other = render(
            "g",
            &Default::default(),
            &crate::netset::spaced_v4(1),
            &settings,
        );
        target.apply("g", &other).unwrap();

        assert_eq!(target.published_nets("f"), 1000);
        let again = target.apply("f", &big).unwrap();
        assert_eq!(
            (again.written, again.unchanged, again.deleted),
            (0, big.sets.len(), 0),
            "an unchanged feed writes nothing"
        );

        let small = render(
            "f",
            &Default::default(),
            &crate::netset::spaced_v4(10),
            &settings,
        );
        let shrunk = target.apply("f", &small).unwrap();
        assert_eq!((shrunk.written, shrunk.deleted), (1, big.sets.len() - 1));
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["mine.yaml", "threatfeed.f.yaml", "threatfeed.g.yaml"]
        );
    }
}
