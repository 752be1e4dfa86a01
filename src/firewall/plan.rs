//! The plan: what a target holds (only the objects it marks as this cluster's) turned into
//! what it should hold, as ordered operations. Addresses are created and changed first, then
//! groups (nested ones before the groups that hold them), then stale groups are deleted (the
//! holders first) and stale addresses last, so no step refers to something missing. Nothing
//! changed, nothing planned: a plan of no operations writes nothing.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::{Family, Objects};

/// One change on a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    CreateAddress {
        family: Family,
        name: String,
        net: IpNet,
    },
    UpdateAddress {
        family: Family,
        name: String,
        net: IpNet,
    },
    CreateGroup {
        family: Family,
        name: String,
        members: BTreeSet<String>,
    },
    UpdateGroup {
        family: Family,
        name: String,
        members: BTreeSet<String>,
    },
    DeleteGroup {
        family: Family,
        name: String,
    },
    DeleteAddress {
        family: Family,
        name: String,
    },
}

impl Op {
    /// `create`, `update` or `delete`: the metric label.
    pub fn verb(&self) -> &'static str {
        match self {
            Op::CreateAddress { .. } | Op::CreateGroup { .. } => "create",
            Op::UpdateAddress { .. } | Op::UpdateGroup { .. } => "update",
            Op::DeleteGroup { .. } | Op::DeleteAddress { .. } => "delete",
        }
    }

    /// `address` or `group`: the metric label.
    pub fn object(&self) -> &'static str {
        match self {
            Op::CreateAddress { .. } | Op::UpdateAddress { .. } | Op::DeleteAddress { .. } => {
                "address"
            }
            _ => "group",
        }
    }

    pub fn family(&self) -> Family {
        match self {
            Op::CreateAddress { family, .. }
            | Op::UpdateAddress { family, .. }
            | Op::CreateGroup { family, .. }
            | Op::UpdateGroup { family, .. }
            | Op::DeleteGroup { family, .. }
            | Op::DeleteAddress { family, .. } => *family,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Op::CreateAddress { name, .. }
            | Op::UpdateAddress { name, .. }
            | Op::CreateGroup { name, .. }
            | Op::UpdateGroup { name, .. }
            | Op::DeleteGroup { name, .. }
            | Op::DeleteAddress { name, .. } => name,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let family = self.family().as_str();
        match self {
            Op::CreateAddress { name, net, .. } => {
                write!(f, "create {family} address {name} = {net}")
            }
            Op::UpdateAddress { name, net, .. } => {
                write!(f, "update {family} address {name} = {net}")
            }
            Op::CreateGroup { name, members, .. } => {
                write!(
                    f,
                    "create {family} group {name} ({} members)",
                    members.len()
                )
            }
            Op::UpdateGroup { name, members, .. } => {
                write!(
                    f,
                    "update {family} group {name} ({} members)",
                    members.len()
                )
            }
            Op::DeleteGroup { name, .. } => write!(f, "delete {family} group {name}"),
            Op::DeleteAddress { name, .. } => write!(f, "delete {family} address {name}"),
        }
    }
}

/// Ordered operations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
}

impl Plan {
    /// What turns `actual` into `desired`.
    pub fn new(desired: &Objects, actual: &Objects) -> Plan {
        let mut ops = Vec::new();
        for (key, net) in &desired.addresses {
            let (family, name) = (key.0, key.1.clone());
            match actual.addresses.get(key) {
                None => ops.push(Op::CreateAddress {
                    family,
                    name,
                    net: *net,
                }),
                Some(current) if current != net => ops.push(Op::UpdateAddress {
                    family,
                    name,
                    net: *net,
                }),
                Some(_) => {}
            }
        }
        for key in nested_first(&desired.groups) {
            let members = &desired.groups[key];
            let (family, name) = (key.0, key.1.clone());
            match actual.groups.get(key) {
                None => ops.push(Op::CreateGroup {
                    family,
                    name,
                    members: members.clone(),
                }),
                Some(current) if current != members => ops.push(Op::UpdateGroup {
                    family,
                    name,
                    members: members.clone(),
                }),
                Some(_) => {}
            }
        }
        let stale_groups: BTreeMap<(Family, String), BTreeSet<String>> = actual
            .groups
            .iter()
            .filter(|(key, _)| !desired.groups.contains_key(*key))
            .map(|(key, members)| (key.clone(), members.clone()))
            .collect();
        let mut deletions: Vec<&(Family, String)> = nested_first(&stale_groups);
        deletions.reverse();
        for (family, name) in deletions {
            ops.push(Op::DeleteGroup {
                family: *family,
                name: name.clone(),
            });
        }
        for (family, name) in actual.addresses.keys() {
            if !desired.addresses.contains_key(&(*family, name.clone())) {
                ops.push(Op::DeleteAddress {
                    family: *family,
                    name: name.clone(),
                });
            }
        }
        Plan { ops }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The groups, each after every group it holds (depth first; cycles cannot occur in what
/// threatflow builds, and are cut if a target reports one).
fn nested_first(groups: &BTreeMap<(Family, String), BTreeSet<String>>) -> Vec<&(Family, String)> {
    let mut order = Vec::with_capacity(groups.len());
    let mut seen = BTreeSet::new();
    fn visit<'a>(
        key: &'a (Family, String),
        groups: &'a BTreeMap<(Family, String), BTreeSet<String>>,
        seen: &mut BTreeSet<&'a (Family, String)>,
        order: &mut Vec<&'a (Family, String)>,
    ) {
        if !seen.insert(key) {
            return;
        }
        for member in &groups[key] {
            if let Some((child, _)) = groups.get_key_value(&(key.0, member.clone())) {
                visit(child, groups, seen, order);
            }
        }
        order.push(key);
    }
    for key in groups.keys() {
        visit(key, groups, &mut seen, &mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(addresses: &[(&str, &str)], groups: &[(&str, &[&str])]) -> Objects {
        Objects {
            addresses: addresses
                .iter()
                .map(|(name, net)| ((Family::V4, name.to_string()), net.parse().unwrap()))
                .collect(),
            groups: groups
                .iter()
                .map(|(name, members)| {
                    (
                        (Family::V4, name.to_string()),
                        members.iter().map(|member| member.to_string()).collect(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn nothing_changed_nothing_planned() {
        let both = objects(&[("a", "10.0.0.1/32")], &[("g", &["a"])]);
        assert!(Plan::new(&both, &both).is_empty());
    }

    #[test]
    fn addresses_first_nested_groups_before_holders_deletions_in_reverse() {
        let desired = objects(
            &[("a", "10.0.0.1/32"), ("b", "10.0.0.9/32")],
            &[("top", &["top.0"]), ("top.0", &["a", "b"])],
        );
        let actual = objects(
            &[("b", "10.0.0.2/32"), ("old", "10.0.0.3/32")],
            &[("stale", &["stale.0"]), ("stale.0", &["old"])],
        );
        let plan: Vec<String> = Plan::new(&desired, &actual)
            .ops
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            plan,
            [
                "create ipv4 address a = 10.0.0.1/32",
                "update ipv4 address b = 10.0.0.9/32",
                "create ipv4 group top.0 (2 members)",
                "create ipv4 group top (1 members)",
                "delete ipv4 group stale",
                "delete ipv4 group stale.0",
                "delete ipv4 address old",
            ]
        );
    }
}
