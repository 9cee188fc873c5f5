//! Replicated session records: one per open connection, cluster-wide, so that session
//! limits and session listings see every node.

use std::collections::{BTreeMap, BTreeSet, HashMap};

#[cfg(test)]
use serde::Serialize;

use crate::ids::{ConnId, RaftId};

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[cfg_attr(test, serde(rename_all = "camelCase"))]
pub struct SessionRecord {
    pub connid: ConnId,
    /// Raft id of the node holding the connection.
    pub node_id: RaftId,
    /// Incarnation of that node's process (also the first 8 chars of `connid`).
    pub incarnation: String,
    pub user: String,
    pub remote_address: String,
    pub protocol: String,
    pub creation_time: String,
}

#[derive(Debug, Default, Clone)]
#[cfg_attr(test, derive(Serialize))]
pub struct Sessions {
    pub(super) by_connid: BTreeMap<ConnId, SessionRecord>,
    /// user → connids; derived from `by_connid`, rebuilt after a snapshot restore.
    #[cfg_attr(test, serde(skip))]
    by_user: HashMap<String, BTreeSet<ConnId>>,
}

impl Sessions {
    /// Records a new session; false (and nothing changes) when it is already open: a
    /// retried open must not reset a session that has logged in meanwhile.
    pub fn open(&mut self, rec: SessionRecord) -> bool {
        if self.by_connid.contains_key(&rec.connid) {
            return false;
        }
        self.by_user
            .entry(rec.user.clone())
            .or_default()
            .insert(rec.connid.clone());
        self.by_connid.insert(rec.connid.clone(), rec);
        true
    }

    /// Removes a session; false when it was not there.
    pub fn close(&mut self, connid: &ConnId) -> bool {
        let Some(rec) = self.by_connid.remove(connid) else {
            return false;
        };
        self.unindex(&rec.user, connid);
        true
    }

    fn unindex(&mut self, user: &str, connid: &ConnId) {
        if let Some(set) = self.by_user.get_mut(user) {
            set.remove(connid);
            if set.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    pub fn set_user(&mut self, connid: &ConnId, user: &str) {
        let Some(rec) = self.by_connid.get_mut(connid) else {
            return;
        };
        let old = std::mem::replace(&mut rec.user, user.to_string());
        self.unindex(&old, connid);
        self.by_user
            .entry(user.to_string())
            .or_default()
            .insert(connid.clone());
    }

    /// Sessions of `user` other than `except`.
    pub fn count_of(&self, user: &str, except: &ConnId) -> usize {
        self.by_user
            .get(user)
            .map_or(0, |set| set.len() - usize::from(set.contains(except)))
    }

    pub fn get(&self, connid: &ConnId) -> Option<&SessionRecord> {
        self.by_connid.get(connid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &SessionRecord> {
        self.by_connid.values()
    }

    pub fn len(&self) -> usize {
        self.by_connid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_connid.is_empty()
    }

    /// The sessions of `node_id`'s earlier incarnations.
    pub fn stale(&self, node_id: RaftId, incarnation: &str) -> Vec<ConnId> {
        self.by_connid
            .values()
            .filter(|r| r.node_id == node_id && r.incarnation != incarnation)
            .map(|r| r.connid.clone())
            .collect()
    }

    /// Every session of `node_id`, whatever its incarnation.
    pub fn of_node(&self, node_id: RaftId) -> Vec<ConnId> {
        self.by_connid
            .values()
            .filter(|r| r.node_id == node_id)
            .map(|r| r.connid.clone())
            .collect()
    }

    pub fn rebuild_index(&mut self) {
        self.by_user.clear();
        for rec in self.by_connid.values() {
            self.by_user
                .entry(rec.user.clone())
                .or_default()
                .insert(rec.connid.clone());
        }
    }
}
