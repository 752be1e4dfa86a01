//! Naming the workload that owns a pod (`Deployment/web`), from its owner reference or, for
//! records that carry only a name and labels, from the labels controllers stamp on their pods.

/// The workload for a pod whose controller owner is `kind`/`name`, given the pod's
/// `pod-template-hash` label. A ReplicaSet named `<deployment>-<pod-template-hash>` belongs to
/// that Deployment.
pub fn from_owner(kind: &str, name: &str, template_hash: Option<&str>) -> String {
    if kind == "ReplicaSet" {
        if let Some(deployment) = template_hash.and_then(|hash| strip_suffix(name, hash)) {
            return format!("Deployment/{deployment}");
        }
    }
    format!("{kind}/{name}")
}

/// The workload of a pod known only by name (or aggregated name, `web-5bdcdd9c97-*`) and its
/// `key=value` labels, as Calico flow logs carry them. Returns `None` when the labels do not
/// say; nothing is guessed from the name alone.
pub fn from_labels<'a>(name: &str, labels: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut template_hash = None;
    let mut job_name = None;
    let mut statefulset_pod = None;
    for label in labels {
        let Some((key, value)) = label.split_once('=') else {
            continue;
        };
        match key {
            "pod-template-hash" => template_hash = Some(value),
            "job-name" | "batch.kubernetes.io/job-name" => job_name = Some(value),
            "statefulset.kubernetes.io/pod-name" => statefulset_pod = Some(value),
            _ => {}
        }
    }
    if let Some(hash) = template_hash {
        let replicaset = name.trim_end_matches('*').trim_end_matches('-');
        // A pod name is `<replicaset>-<suffix>`; an aggregated name is `<replicaset>-*`.
        let replicaset = match strip_suffix(replicaset, hash) {
            Some(_) => replicaset,
            None => replicaset.rsplit_once('-')?.0,
        };
        return strip_suffix(replicaset, hash).map(|deployment| format!("Deployment/{deployment}"));
    }
    if let Some(job) = job_name {
        return Some(format!("Job/{job}"));
    }
    statefulset_pod
        .and_then(|pod| pod.rsplit_once('-'))
        .filter(|(_, ordinal)| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
        .map(|(set, _)| format!("StatefulSet/{set}"))
}

/// `name` without its `-<suffix>`, if it ends that way and something is left.
fn strip_suffix<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    name.strip_suffix(suffix)?
        .strip_suffix('-')
        .filter(|prefix| !prefix.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn owners() {
        let hash: BTreeMap<String, String> =
            [("pod-template-hash".into(), "5bdcdd9c97".into())].into();
        let check = |kind: &str, name: &str, labels: &BTreeMap<String, String>, expected: &str| {
            let hash = labels.get("pod-template-hash").map(String::as_str);
            assert_eq!(from_owner(kind, name, hash), expected);
        };
        check("ReplicaSet", "web-5bdcdd9c97", &hash, "Deployment/web");
        check("ReplicaSet", "web-other", &hash, "ReplicaSet/web-other");
        check(
            "ReplicaSet",
            "web-5bdcdd9c97",
            &BTreeMap::new(),
            "ReplicaSet/web-5bdcdd9c97",
        );
        check("StatefulSet", "db", &BTreeMap::new(), "StatefulSet/db");
        check(
            "DaemonSet",
            "calico-node",
            &BTreeMap::new(),
            "DaemonSet/calico-node",
        );
    }

    #[test]
    fn labels() {
        let check = |name: &str, labels: &[&str], expected: Option<&str>| {
            assert_eq!(
                from_labels(name, labels.iter().copied()).as_deref(),
                expected,
                "{name} {labels:?}"
            );
        };
        check(
            "web-5bdcdd9c97-*",
            &["app=web", "pod-template-hash=5bdcdd9c97"],
            Some("Deployment/web"),
        );
        check(
            "web-5bdcdd9c97-x2k4l",
            &["pod-template-hash=5bdcdd9c97"],
            Some("Deployment/web"),
        );
        check(
            "my-api-7f9c-abcde",
            &["pod-template-hash=7f9c"],
            Some("Deployment/my-api"),
        );
        check("web-x2k4l", &["pod-template-hash=5bdcdd9c97"], None);
        check(
            "backup-28123-xk2p",
            &["job-name=backup-28123"],
            Some("Job/backup-28123"),
        );
        check(
            "db-0",
            &["statefulset.kubernetes.io/pod-name=db-0"],
            Some("StatefulSet/db"),
        );
        check("web-x2k4l", &["app=web"], None);
    }
}
