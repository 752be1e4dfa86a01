//! Who held an IP address, and when.
//!
//! Pod IPs are reused. Each address keeps a short history of holdings, `[from, until)` in epoch
//! milliseconds, so that a flow stamped before the reuse resolves to the old pod and one after
//! it to the new. Holdings of one address never overlap: a new holder starts no earlier than
//! the last release. A released holding stays resolvable for a grace period (late flow logs)
//! and is then evicted. Memory stays bounded: every owner's addresses are indexed by the
//! owner's key, so a delete event without the pod's IPs still releases them, and each address
//! keeps at most [`MAX_HOLDINGS`] holdings.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Holdings kept per address; the oldest closed ones go first.
pub const MAX_HOLDINGS: usize = 4;

/// One owner's hold on an address.
#[derive(Clone, Debug)]
struct Holding<T> {
    /// The owner's identity (a pod UID, a node name).
    key: Arc<str>,
    owner: Arc<T>,
    from_ms: i64,
    /// `None` while the owner still holds the address.
    until_ms: Option<i64>,
}

impl<T> Holding<T> {
    fn contains(&self, at_ms: i64) -> bool {
        self.from_ms <= at_ms && self.until_ms.is_none_or(|until| at_ms < until)
    }
}

type Hasher = foldhash::fast::RandomState;

/// What a lookup found.
#[derive(Debug)]
pub struct Found<'a, T> {
    pub owner: &'a Arc<T>,
    /// The owner has since released the address (a deleted pod, within its grace period).
    pub released: bool,
}

/// Address -> holdings over time, of owners of type `T`.
#[derive(Debug)]
pub struct IpHistory<T> {
    by_address: HashMap<IpAddr, Vec<Holding<T>>, Hasher>,
    by_owner: HashMap<Arc<str>, Vec<IpAddr>, Hasher>,
}

impl<T> Default for IpHistory<T> {
    fn default() -> Self {
        IpHistory {
            by_address: HashMap::default(),
            by_owner: HashMap::default(),
        }
    }
}

impl<T> IpHistory<T> {
    /// `owner` (identified by `key`) holds `address` from `from_ms`, or from the address's last
    /// release if that is later. A different owner's open holding of the address ends there
    /// (the address was reused before its delete event arrived); the same owner's holding is
    /// updated in place (its labels or workload changed).
    pub fn assign(&mut self, address: IpAddr, key: Arc<str>, owner: Arc<T>, from_ms: i64) {
        let holdings = self.by_address.entry(address).or_default();
        if let Some(current) = holdings
            .iter_mut()
            .find(|holding| holding.key == key && holding.until_ms.is_none())
        {
            current.owner = owner;
            return;
        }
        let from_ms = holdings
            .iter()
            .filter_map(|holding| holding.until_ms)
            .fold(from_ms, i64::max);
        for holding in holdings
            .iter_mut()
            .filter(|holding| holding.until_ms.is_none())
        {
            holding.until_ms = Some(from_ms.max(holding.from_ms));
        }
        holdings.push(Holding {
            key: key.clone(),
            owner,
            from_ms,
            until_ms: None,
        });
        if holdings.len() > MAX_HOLDINGS {
            // The oldest closed holding goes; an open one is never dropped.
            if let Some(oldest) = holdings
                .iter()
                .enumerate()
                .filter(|(_, holding)| holding.until_ms.is_some())
                .min_by_key(|(_, holding)| holding.until_ms)
                .map(|(index, _)| index)
            {
                let dropped = holdings.remove(oldest);
                if !holdings.iter().any(|holding| holding.key == dropped.key) {
                    forget(&mut self.by_owner, &dropped.key, address);
                }
            }
        }
        let addresses = self.by_owner.entry(key).or_default();
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }

    /// Replaces the owner of `key`'s open holding of `address` (its context changed); does
    /// nothing if `key` does not hold it.
    pub fn update(&mut self, address: IpAddr, key: &str, owner: Arc<T>) {
        if let Some(holding) = self.by_address.get_mut(&address).and_then(|holdings| {
            holdings
                .iter_mut()
                .find(|holding| &*holding.key == key && holding.until_ms.is_none())
        }) {
            holding.owner = owner;
        }
    }

    /// The owner behind `key` released every address it held, at `at_ms` (a delete event, with
    /// or without the pod's IPs).
    pub fn release_owner(&mut self, key: &str, at_ms: i64) {
        let Some(addresses) = self.by_owner.get(key) else {
            return;
        };
        for address in addresses.clone() {
            self.release(address, key, at_ms);
        }
    }

    /// The owner behind `key` released `address` at `at_ms` (a pod whose IP changed, or that
    /// terminated).
    pub fn release(&mut self, address: IpAddr, key: &str, at_ms: i64) {
        if let Some(holdings) = self.by_address.get_mut(&address) {
            for holding in holdings
                .iter_mut()
                .filter(|holding| &*holding.key == key && holding.until_ms.is_none())
            {
                holding.until_ms = Some(at_ms.max(holding.from_ms));
            }
        }
    }

    /// The owner of `address` at `at_ms`.
    #[inline]
    pub fn lookup(&self, address: IpAddr, at_ms: i64) -> Option<Found<'_, T>> {
        self.lookup_either(address, at_ms, at_ms)
    }

    /// The owner of `address` at `at_ms`, else at `or_at_ms`, with one hash lookup.
    #[inline]
    pub fn lookup_either(
        &self,
        address: IpAddr,
        at_ms: i64,
        or_at_ms: i64,
    ) -> Option<Found<'_, T>> {
        let holdings = self.by_address.get(&address)?;
        let at = |time| holdings.iter().rev().find(|holding| holding.contains(time));
        at(at_ms).or_else(|| at(or_at_ms)).map(|holding| Found {
            owner: &holding.owner,
            released: holding.until_ms.is_some(),
        })
    }

    /// Addresses whose last holding has been released (kept for the grace period).
    pub fn released(&self) -> usize {
        self.by_address
            .values()
            .filter(|holdings| holdings.iter().all(|holding| holding.until_ms.is_some()))
            .count()
    }

    /// Forgets holdings released before `now_ms - grace_ms`.
    pub fn evict(&mut self, now_ms: i64, grace_ms: i64) {
        let cutoff = now_ms.saturating_sub(grace_ms);
        let by_owner = &mut self.by_owner;
        self.by_address.retain(|address, holdings| {
            let mut evicted = Vec::new();
            holdings.retain(|holding| {
                let keep = holding.until_ms.is_none_or(|until| until > cutoff);
                if !keep {
                    evicted.push(holding.key.clone());
                }
                keep
            });
            for key in evicted {
                if !holdings.iter().any(|holding| holding.key == key) {
                    forget(by_owner, &key, *address);
                }
            }
            !holdings.is_empty()
        });
    }

    /// Addresses with at least one holding, and owners.
    pub fn len(&self) -> (usize, usize) {
        (self.by_address.len(), self.by_owner.len())
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }
}

/// Removes `address` from `key`'s list, and the owner when it has none left.
fn forget(by_owner: &mut HashMap<Arc<str>, Vec<IpAddr>, Hasher>, key: &Arc<str>, address: IpAddr) {
    if let Some(addresses) = by_owner.get_mut(key) {
        addresses.retain(|held| *held != address);
        if addresses.is_empty() {
            by_owner.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::index::{EndpointInfo, EndpointInfoKind};
    use proptest::prelude::*;

    fn pod(name: &str) -> Arc<EndpointInfo> {
        Arc::new(EndpointInfo {
            kind: EndpointInfoKind::Pod,
            name: name.into(),
            namespace: Some("default".into()),
            labels: Vec::new(),
            namespace_labels: Arc::from(Vec::new()),
            workload: None,
            node: None,
            services: Vec::new(),
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn owner(history: &IpHistory<EndpointInfo>, address: &str, at: i64) -> Option<String> {
        history
            .lookup(ip(address), at)
            .map(|found| found.owner.name.to_string())
    }

    #[test]
    fn reuse_and_late_flows() {
        let mut history = IpHistory::<EndpointInfo>::default();
        history.assign(ip("10.0.0.5"), "uid-a".into(), pod("a"), 1_000);
        history.release_owner("uid-a", 5_000);
        history.assign(ip("10.0.0.5"), "uid-b".into(), pod("b"), 6_000);
        assert_eq!(
            owner(&history, "10.0.0.5", 500),
            None,
            "before anyone held it"
        );
        assert_eq!(owner(&history, "10.0.0.5", 4_999).as_deref(), Some("a"));
        assert_eq!(
            owner(&history, "10.0.0.5", 5_500),
            None,
            "between the two pods"
        );
        assert_eq!(owner(&history, "10.0.0.5", 6_000).as_deref(), Some("b"));

        // A late flow for `a` within the grace period still resolves; after it, `a` is gone.
        history.evict(6_000 + 60_000, 300_000);
        assert_eq!(owner(&history, "10.0.0.5", 4_000).as_deref(), Some("a"));
        history.evict(5_000 + 300_001, 300_000);
        assert_eq!(owner(&history, "10.0.0.5", 4_000), None);
        assert_eq!(owner(&history, "10.0.0.5", 400_000).as_deref(), Some("b"));
        assert_eq!(history.len(), (1, 1));
    }

    #[test]
    fn reuse_without_a_delete_event_closes_the_old_holding() {
        let mut history = IpHistory::<EndpointInfo>::default();
        history.assign(ip("10.0.0.5"), "uid-a".into(), pod("a"), 1_000);
        history.assign(ip("10.0.0.5"), "uid-b".into(), pod("b"), 2_000);
        assert_eq!(owner(&history, "10.0.0.5", 1_500).as_deref(), Some("a"));
        assert_eq!(owner(&history, "10.0.0.5", 2_500).as_deref(), Some("b"));
        // An update of `b` (new labels) keeps its holding.
        history.assign(ip("10.0.0.5"), "uid-b".into(), pod("b2"), 9_000);
        assert_eq!(owner(&history, "10.0.0.5", 2_500).as_deref(), Some("b2"));
    }

    #[test]
    fn dual_stack_and_deletes_without_addresses() {
        let mut history = IpHistory::<EndpointInfo>::default();
        history.assign(ip("10.0.0.7"), "uid-c".into(), pod("c"), 0);
        history.assign(ip("fd00::7"), "uid-c".into(), pod("c"), 0);
        history.release_owner("uid-c", 100);
        assert_eq!(history.released(), 2);
        history.evict(100 + 10, 5);
        assert!(history.is_empty());
        assert_eq!(
            history.len(),
            (0, 0),
            "nothing leaks after a delete without IPs"
        );
    }

    #[test]
    fn memory_stays_flat_under_churn() {
        let mut history = IpHistory::<EndpointInfo>::default();
        // 100 addresses, reused by 10,000 short-lived pods, with eviction as a daemon runs it.
        for generation in 0..100i64 {
            for slot in 0..100u32 {
                let key: Arc<str> = format!("uid-{generation}-{slot}").into();
                let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + slot));
                history.assign(address, key.clone(), pod("p"), generation * 1_000);
                history.release_owner(&key, generation * 1_000 + 900);
            }
            history.evict(generation * 1_000, 3_000);
        }
        let (addresses, owners) = history.len();
        assert_eq!(addresses, 100);
        assert!(owners <= 100 * MAX_HOLDINGS, "{owners} owners kept");
        assert!(history
            .by_address
            .values()
            .all(|holdings| holdings.len() <= MAX_HOLDINGS));
    }

    proptest! {
        /// A lookup never returns an owner whose holding does not contain the time.
        #[test]
        fn lookups_respect_intervals(events in prop::collection::vec((0u8..4, 0u8..3, 0i64..1000, prop::bool::ANY), 1..60), probes in prop::collection::vec((0u8..4, 0i64..1200), 30)) {
            let mut history = IpHistory::<EndpointInfo>::default();
            // The truth: every holding ever made, by address.
            let mut truth: HashMap<u8, Vec<(String, i64, Option<i64>)>> = HashMap::new();
            let mut time = 0;
            for (slot, owner_id, step, delete) in events {
                time += step / 10;
                let address = IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, slot));
                let key = format!("uid-{owner_id}");
                if delete {
                    history.release_owner(&key, time);
                    for holdings in truth.values_mut() {
                        for holding in holdings.iter_mut().filter(|holding| holding.0 == key && holding.2.is_none()) {
                            holding.2 = Some(time.max(holding.1));
                        }
                    }
                } else {
                    history.assign(address, key.clone().into(), pod(&key), time);
                    let holdings = truth.entry(slot).or_default();
                    if !holdings.iter().any(|holding| holding.0 == key && holding.2.is_none()) {
                        let from = holdings.iter().filter_map(|holding| holding.2).fold(time, i64::max);
                        for holding in holdings.iter_mut().filter(|holding| holding.2.is_none()) {
                            holding.2 = Some(from.max(holding.1));
                        }
                        holdings.push((key, from, None));
                    }
                }
            }
            for (slot, at) in probes {
                let address = IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, slot));
                if let Some(found) = history.lookup(address, at) {
                    let name = &found.owner.name;
                    let valid = truth.get(&slot).is_some_and(|holdings| holdings.iter().any(|(key, from, until)| *key == **name && *from <= at && until.is_none_or(|until| at < until)));
                    prop_assert!(valid, "{} at {} for {}", name, at, address);
                }
            }
        }
    }
}
