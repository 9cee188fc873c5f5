//! Cluster-wide locks, each owned by one connection, and the waits queued for them.
//!
//! A wait (`sync.lock` with `wait`) is queued behind the waits committed before it; when
//! the lock is released, apply grants it to the first one in the queue. Every queued wait
//! belongs to a live session: a session's waits leave the queue when it closes, and a wait
//! leaves it when its deadline passes on the cluster clock (`expire`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

#[cfg(test)]
use serde::Serialize;

use crate::ids::ConnId;

/// The connection holding a lock, and the fencing token it was granted with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize))]
pub struct Holder {
    pub connid: ConnId,
    pub token: u64,
    /// The ticket of the wait it was granted to; 0 for a try-lock.
    pub ticket: u64,
}

/// A queued wait for a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(test, derive(Serialize))]
pub struct LockWait {
    /// Unique, chosen by the waiting node (it starts with the connid).
    pub id: String,
    pub connid: ConnId,
    /// When it ends unanswered (cluster clock, ms).
    pub deadline_ms: u64,
    /// When it was committed (cluster clock, ms).
    pub since_ms: u64,
    /// Its place in the order waits were committed (of any lock): waits are granted in
    /// ticket order.
    pub ticket: u64,
}

/// A wait that left its queue with the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub lock: String,
    pub wait: LockWait,
    pub token: u64,
}

#[derive(Debug, Default, Clone)]
#[cfg_attr(test, derive(Serialize))]
pub struct Locks {
    /// lock → its holder.
    pub(super) owners: BTreeMap<String, Holder>,
    /// connid → its locks; derived.
    #[cfg_attr(test, serde(skip))]
    by_owner: HashMap<ConnId, BTreeSet<String>>,
    /// Grants so far, of any lock: the fencing token of the latest grant.
    pub(super) grants: u64,
    /// Waits committed so far, of any lock: the ticket of the latest.
    pub(super) tickets: u64,
    /// lock → its waits, in the order they were committed (never an empty queue).
    pub(super) waits: BTreeMap<String, VecDeque<LockWait>>,
    /// (deadline, lock, wait id) of every queued wait; derived.
    #[cfg_attr(test, serde(skip))]
    deadlines: BTreeSet<(u64, String, String)>,
    /// connid → (lock, wait id) of its queued waits; derived.
    #[cfg_attr(test, serde(skip))]
    waits_by: HashMap<ConnId, BTreeSet<(String, String)>>,
}

/// What a `sync.lock` with a wait did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The lock was free: granted at once.
    Granted { token: u64, ticket: u64 },
    /// Queued behind `ahead` other waits.
    Queued { ahead: usize, ticket: u64 },
    /// This connection holds it already (waiting for itself would never end).
    HeldBySelf,
}

impl Locks {
    /// Takes `lock` for `connid` and answers its fencing token (it grows with every grant
    /// of any lock); None when anyone (this connection included) holds it. A try-lock
    /// does not jump the queue: a lock with waits is held, since a release grants it on.
    pub fn lock(&mut self, lock: &str, connid: &ConnId) -> Option<u64> {
        if self.owners.contains_key(lock) {
            return None;
        }
        Some(self.grant(lock, connid, 0))
    }

    fn grant(&mut self, lock: &str, connid: &ConnId, ticket: u64) -> u64 {
        self.grants += 1;
        let holder = Holder {
            connid: connid.clone(),
            token: self.grants,
            ticket,
        };
        self.owners.insert(lock.to_string(), holder);
        self.by_owner
            .entry(connid.clone())
            .or_default()
            .insert(lock.to_string());
        self.grants
    }

    /// `sync.lock` with a wait until `deadline_ms`, committed at `now_ms`.
    pub fn wait(
        &mut self,
        lock: &str,
        connid: &ConnId,
        id: &str,
        now_ms: u64,
        deadline_ms: u64,
    ) -> WaitOutcome {
        match self.owners.get(lock) {
            Some(h) if &h.connid == connid => return WaitOutcome::HeldBySelf,
            None => {
                self.tickets += 1;
                let ticket = self.tickets;
                let token = self.grant(lock, connid, ticket);
                return WaitOutcome::Granted { token, ticket };
            }
            Some(_) => {}
        }
        self.tickets += 1;
        let wait = LockWait {
            id: id.to_string(),
            connid: connid.clone(),
            deadline_ms,
            since_ms: now_ms,
            ticket: self.tickets,
        };
        self.index_wait(lock, &wait);
        let queue = self.waits.entry(lock.to_string()).or_default();
        queue.push_back(wait);
        WaitOutcome::Queued {
            ahead: queue.len() - 1,
            ticket: self.tickets,
        }
    }

    fn index_wait(&mut self, lock: &str, w: &LockWait) {
        self.deadlines
            .insert((w.deadline_ms, lock.to_string(), w.id.clone()));
        self.waits_by
            .entry(w.connid.clone())
            .or_default()
            .insert((lock.to_string(), w.id.clone()));
    }

    fn unindex_wait(&mut self, lock: &str, w: &LockWait) {
        self.deadlines
            .remove(&(w.deadline_ms, lock.to_string(), w.id.clone()));
        if let Some(set) = self.waits_by.get_mut(&w.connid) {
            set.remove(&(lock.to_string(), w.id.clone()));
            if set.is_empty() {
                self.waits_by.remove(&w.connid);
            }
        }
    }

    /// Removes the wait `id` from `lock`'s queue.
    fn remove_wait(&mut self, lock: &str, id: &str) -> Option<LockWait> {
        let queue = self.waits.get_mut(lock)?;
        let at = queue.iter().position(|w| w.id == id)?;
        let wait = queue.remove(at).expect("position is in the queue");
        if queue.is_empty() {
            self.waits.remove(lock);
        }
        self.unindex_wait(lock, &wait);
        Some(wait)
    }

    /// A free lock goes to the first wait in its queue.
    fn grant_next(&mut self, lock: &str, granted: &mut Vec<Granted>) {
        if self.owners.contains_key(lock) {
            return;
        }
        let Some(wait) = self.waits.get(lock).and_then(|q| q.front()).cloned() else {
            return;
        };
        self.remove_wait(lock, &wait.id);
        let token = self.grant(lock, &wait.connid, wait.ticket);
        granted.push(Granted {
            lock: lock.to_string(),
            wait,
            token,
        });
    }

    /// Releases `lock` if `connid` holds it; the next wait, if any, is granted it.
    pub fn unlock(&mut self, lock: &str, connid: &ConnId, granted: &mut Vec<Granted>) -> bool {
        if self.owners.get(lock).map(|h| &h.connid) != Some(connid) {
            return false;
        }
        self.owners.remove(lock);
        if let Some(set) = self.by_owner.get_mut(connid) {
            set.remove(lock);
            if set.is_empty() {
                self.by_owner.remove(connid);
            }
        }
        self.grant_next(lock, granted);
        true
    }

    /// A connection is gone: its waits leave their queues, then what it held is released
    /// (and granted to the next waits).
    pub fn release_all(&mut self, connid: &ConnId, granted: &mut Vec<Granted>) {
        self.drop_waits(connid);
        for lock in self.by_owner.remove(connid).unwrap_or_default() {
            self.owners.remove(&lock);
            self.grant_next(&lock, granted);
        }
    }

    /// Takes `connid`'s waits out of their queues (before connections that end together
    /// release their locks, so that none is granted to another of them).
    pub fn drop_waits(&mut self, connid: &ConnId) {
        for (lock, id) in self.waits_by.remove(connid).unwrap_or_default() {
            // Already out of `waits_by`: out of the queue and the deadlines too.
            if let Some(queue) = self.waits.get_mut(&lock) {
                if let Some(at) = queue.iter().position(|w| w.id == id) {
                    let w = queue.remove(at).expect("position is in the queue");
                    self.deadlines.remove(&(w.deadline_ms, lock.clone(), id));
                }
                if queue.is_empty() {
                    self.waits.remove(&lock);
                }
            }
        }
    }

    /// Ends the waits whose deadline is at or before `now_ms`, as (lock, wait).
    pub fn expire(&mut self, now_ms: u64) -> Vec<(String, LockWait)> {
        let mut ended = Vec::new();
        while let Some((at, lock, id)) = self.deadlines.first().cloned() {
            if at > now_ms {
                break;
            }
            match self.remove_wait(&lock, &id) {
                Some(w) => ended.push((lock, w)),
                None => {
                    self.deadlines.pop_first();
                }
            }
        }
        ended
    }

    /// The earliest deadline of a queued wait.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(at, _, _)| *at)
    }

    /// (lock, holder), sorted by lock.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ConnId)> {
        self.owners.iter().map(|(l, h)| (l.as_str(), &h.connid))
    }

    /// The holder of `lock`, if held.
    pub fn holder(&self, lock: &str) -> Option<&Holder> {
        self.owners.get(lock)
    }

    /// The ticket of the latest wait committed, of any lock.
    pub fn tickets(&self) -> u64 {
        self.tickets
    }

    /// The waits queued for `lock`, first to be granted first.
    pub fn waiting(&self, lock: &str) -> impl Iterator<Item = &LockWait> {
        self.waits.get(lock).into_iter().flatten()
    }

    /// Whether the wait `id` is queued for `lock`.
    pub fn is_waiting(&self, lock: &str, id: &str) -> bool {
        self.waiting(lock).any(|w| w.id == id)
    }

    /// Queued waits, of every lock.
    pub fn waits_queued(&self) -> usize {
        self.waits.values().map(VecDeque::len).sum()
    }

    pub fn rebuild_index(&mut self) {
        self.by_owner.clear();
        for (lock, holder) in &self.owners {
            self.by_owner
                .entry(holder.connid.clone())
                .or_default()
                .insert(lock.clone());
        }
        self.deadlines.clear();
        self.waits_by.clear();
        let queued: Vec<(String, LockWait)> = self
            .waits
            .iter()
            .flat_map(|(l, q)| q.iter().map(move |w| (l.clone(), w.clone())))
            .collect();
        for (lock, w) in queued {
            self.index_wait(&lock, &w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> ConnId {
        ConnId::from(s.to_string())
    }

    #[test]
    fn waits_are_granted_in_order_on_release_and_leave_with_their_session() {
        let mut l = Locks::default();
        let mut g = Vec::new();
        assert_eq!(
            l.wait("x", &c("a"), "a1", 0, 100),
            WaitOutcome::Granted {
                token: 1,
                ticket: 1
            }
        );
        assert_eq!(l.wait("x", &c("a"), "a2", 0, 100), WaitOutcome::HeldBySelf);
        assert_eq!(
            l.wait("x", &c("b"), "b1", 1, 100),
            WaitOutcome::Queued {
                ahead: 0,
                ticket: 2
            }
        );
        assert_eq!(
            l.wait("x", &c("c"), "c1", 2, 100),
            WaitOutcome::Queued {
                ahead: 1,
                ticket: 3
            }
        );
        assert_eq!(
            l.wait("x", &c("d"), "d1", 3, 100),
            WaitOutcome::Queued {
                ahead: 2,
                ticket: 4
            }
        );
        // A try-lock does not jump the queue.
        assert_eq!(l.lock("x", &c("e")), None);
        // b's session ends: c is next.
        l.release_all(&c("b"), &mut g);
        assert!(g.is_empty());
        assert!(l.unlock("x", &c("a"), &mut g));
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].wait.id.as_str(), g[0].token), ("c1", 2));
        assert_eq!(l.holder("x").unwrap().connid, c("c"));
        assert_eq!(l.holder("x").unwrap().ticket, 3);
        // The holder's session ends: d is granted.
        g.clear();
        l.release_all(&c("c"), &mut g);
        assert_eq!((g[0].wait.id.as_str(), g[0].token), ("d1", 3));
        assert_eq!(l.waits_queued(), 0);
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn waits_end_at_their_deadline_and_survive_a_snapshot_index_rebuild() {
        let mut l = Locks::default();
        let mut g = Vec::new();
        l.wait("x", &c("a"), "a1", 0, 0);
        l.wait("x", &c("b"), "b1", 0, 50);
        l.wait("x", &c("c"), "c1", 0, 80);
        l.wait("y", &c("a"), "a2", 0, 0);
        l.wait("y", &c("d"), "d1", 0, 60);
        let mut copy = l.clone();
        copy.rebuild_index();
        for locks in [&mut l, &mut copy] {
            assert_eq!(locks.next_deadline(), Some(50));
            let ended = locks.expire(60);
            let ids: Vec<&str> = ended.iter().map(|(_, w)| w.id.as_str()).collect();
            assert_eq!(ids, ["b1", "d1"]);
            assert!(locks.is_waiting("x", "c1"));
            assert_eq!(locks.next_deadline(), Some(80));
        }
        assert!(l.unlock("x", &c("a"), &mut g));
        assert_eq!(g[0].wait.id, "c1");
    }
}
