//! Cluster-wide locks, each owned by one connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};

#[cfg(test)]
use serde::Serialize;

use crate::ids::ConnId;

#[derive(Debug, Default, Clone)]
#[cfg_attr(test, derive(Serialize))]
pub struct Locks {
    /// lock → owner connid.
    pub(super) owners: BTreeMap<String, ConnId>,
    /// connid → its locks; derived.
    #[cfg_attr(test, serde(skip))]
    by_owner: HashMap<ConnId, BTreeSet<String>>,
    /// Grants so far, of any lock: the fencing token of the latest grant.
    pub(super) grants: u64,
}

impl Locks {
    /// Takes `lock` for `connid` and answers its fencing token (it grows with every grant
    /// of any lock); None when anyone (this connection included) holds it.
    pub fn lock(&mut self, lock: &str, connid: &ConnId) -> Option<u64> {
        if self.owners.contains_key(lock) {
            return None;
        }
        self.grants += 1;
        self.owners.insert(lock.to_string(), connid.clone());
        self.by_owner
            .entry(connid.clone())
            .or_default()
            .insert(lock.to_string());
        Some(self.grants)
    }

    /// Releases `lock` if `connid` holds it.
    pub fn unlock(&mut self, lock: &str, connid: &ConnId) -> bool {
        if self.owners.get(lock) != Some(connid) {
            return false;
        }
        self.owners.remove(lock);
        if let Some(set) = self.by_owner.get_mut(connid) {
            set.remove(lock);
            if set.is_empty() {
                self.by_owner.remove(connid);
            }
        }
        true
    }

    /// Releases everything `connid` holds.
    pub fn release_all(&mut self, connid: &ConnId) {
        for lock in self.by_owner.remove(connid).unwrap_or_default() {
            self.owners.remove(&lock);
        }
    }

    /// (lock, owner), sorted by lock.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ConnId)> {
        self.owners.iter().map(|(l, o)| (l.as_str(), o))
    }

    pub fn rebuild_index(&mut self) {
        self.by_owner.clear();
        for (lock, owner) in &self.owners {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert(lock.clone());
        }
    }
}
