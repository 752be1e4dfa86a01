//! Publishing rendered feeds. The `directory` target writes each object as `<name>.yaml`, for
//! GitOps repositories and the quickstart: a file is rewritten only when its content changed
//! (atomically, through a temporary file), and a file is deleted only when its labels say
//! threatflow owns it for this feed and the feed no longer renders it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::render::Rendered;
use crate::k8s::{FEED_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

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
            .filter_map(|text| serde_yaml::from_str::<Owned>(&text).ok())
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
            .map(|set| (set.metadata.name.clone(), serde_yaml::to_string(set)))
            .chain(
                rendered
                    .policy
                    .iter()
                    .map(|policy| (policy.metadata.name.clone(), serde_yaml::to_string(policy))),
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
                .and_then(|text| serde_yaml::from_str::<Owned>(&text).ok())
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
    use crate::feeds::netset::NetSet;
    use crate::feeds::render::{render, RenderSettings};

    fn set_of(count: u32) -> NetSet {
        NetSet::from_ranges(
            (0..count)
                .map(|i| (0x0b00_0000 + 2 * i, 0x0b00_0000 + 2 * i))
                .collect(),
            vec![],
        )
    }

    #[test]
    fn writes_only_changes_and_removes_only_its_own_stale_objects() {
        let dir = tempfile::tempdir().unwrap();
        let target = DirectoryTarget::new(dir.path().to_owned());
        let settings = RenderSettings {
            shard_max_nets: 100,
            ..RenderSettings::default()
        };
        let big = render("f", &Default::default(), &set_of(1000), &settings);
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
        let other = render("g", &Default::default(), &set_of(1), &settings);
        target.apply("g", &other).unwrap();

        assert_eq!(target.published_nets("f"), 1000);
        let again = target.apply("f", &big).unwrap();
        assert_eq!(
            (again.written, again.unchanged, again.deleted),
            (0, big.sets.len(), 0),
            "an unchanged feed writes nothing"
        );

        let small = render("f", &Default::default(), &set_of(10), &settings);
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
