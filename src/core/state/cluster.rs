//! The cluster's own replicated facts: the member address book, the cluster clock, and the
//! proposer table that fences old incarnations and applies a retried proposal once.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::RaftId;

#[cfg(test)]
use serde::Serialize;

/// Who proposed an entry and the cluster time it was stamped with (from its context).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin {
    pub node_id: RaftId,
    pub generation: u64,
    pub proposal_id: u64,
    /// Leader-stamped cluster clock in ms (0 = not stamped).
    pub clock_ms: u64,
}

/// Whether an entry may be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    New,
    /// Already applied (a retried forward), or older than the remembered window.
    Duplicate,
    /// From an incarnation of its node older than one already seen.
    Stale,
}

/// Proposal ids remembered per node beyond the lowest one still possible in flight.
const WINDOW: u64 = 16_384;

#[derive(Debug, Default, Clone, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
pub(super) struct ProposerRecord {
    pub(super) generation: u64,
    /// Ids at or below this are treated as already applied.
    pub(super) floor: u64,
    pub(super) recent: BTreeSet<u64>,
}

/// The running process of a member, from its last `NodeStarted`.
#[derive(Debug, Default, Clone, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
pub struct NodeRecord {
    /// Prefix of every connid, pipe id and task id of that process.
    pub incarnation: String,
    pub generation: u64,
}

#[derive(Debug, Default, Clone, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
pub struct Cluster {
    /// The cluster's identity (see `identity_of`): peers of another cluster are refused.
    /// Empty in a cluster formed before identities existed.
    pub id: String,
    /// Raft id → cluster address, kept from the conf changes that added each member.
    pub members: BTreeMap<RaftId, String>,
    /// Raft id → its current process: routes a connid, pipe id or task id to its node.
    pub nodes: BTreeMap<RaftId, NodeRecord>,
    /// The cluster clock: the highest stamp applied, never going backwards.
    pub clock_ms: u64,
    pub(super) proposers: BTreeMap<RaftId, ProposerRecord>,
}

/// The identity of a cluster founded by `voters`: every founding node computes the same
/// one from the same voters (raft ids are random, so clusters founded apart differ).
pub fn founding_identity(voters: &[RaftId]) -> String {
    let mut ids: Vec<u64> = voters.iter().map(|v| v.0).collect();
    ids.sort_unstable();
    // FNV-1a over the sorted ids: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in ids.iter().flat_map(|id| id.to_be_bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A new random identity (a restored or forced cluster: nothing may mistake it for the
/// cluster it came from).
pub fn new_identity() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Cluster {
    /// Moves the clock forward to `stamp` (never back).
    pub fn advance_clock(&mut self, stamp: u64) {
        self.clock_ms = self.clock_ms.max(stamp);
    }

    /// Records `origin`'s proposal, answering whether it is new.
    pub fn admit(&mut self, origin: &Origin) -> Admit {
        let rec = self.proposers.entry(origin.node_id).or_default();
        if origin.generation < rec.generation {
            return Admit::Stale;
        }
        if origin.generation > rec.generation {
            *rec = ProposerRecord {
                generation: origin.generation,
                ..Default::default()
            };
        }
        let id = origin.proposal_id;
        if id <= rec.floor || !rec.recent.insert(id) {
            return Admit::Duplicate;
        }
        let floor = id.saturating_sub(WINDOW);
        if floor > rec.floor {
            rec.floor = floor;
            rec.recent = rec.recent.split_off(&(floor + 1));
        }
        Admit::New
    }

    /// A node process started: it becomes the one its ids route to (an older generation,
    /// applied late, changes nothing).
    pub fn node_started(&mut self, node_id: RaftId, incarnation: &str, generation: u64) {
        let rec = self.nodes.entry(node_id).or_default();
        if generation >= rec.generation {
            *rec = NodeRecord {
                incarnation: incarnation.to_string(),
                generation,
            };
        }
    }

    /// Process `incarnation` of `node_id` is gone; false when that is not its current
    /// process (already replaced by a restart, or already down).
    pub fn node_down(&mut self, node_id: RaftId, incarnation: &str) -> bool {
        match self.nodes.get(&node_id) {
            Some(n) if n.incarnation == incarnation => {
                self.nodes.remove(&node_id);
                true
            }
            _ => false,
        }
    }

    /// Whether `incarnation` is the current process of `node_id`.
    pub fn is_current(&self, node_id: RaftId, incarnation: &str) -> bool {
        self.nodes
            .get(&node_id)
            .is_some_and(|n| n.incarnation == incarnation)
    }

    /// The member whose current process has `incarnation` (None: a process that is gone).
    pub fn node_of_incarnation(&self, incarnation: &str) -> Option<RaftId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.incarnation == incarnation)
            .map(|(id, _)| *id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(node_id: u64, generation: u64, proposal_id: u64) -> Origin {
        Origin {
            node_id: RaftId(node_id),
            generation,
            proposal_id,
            clock_ms: 0,
        }
    }

    #[test]
    fn retried_proposals_apply_once_and_old_generations_are_fenced() {
        let mut c = Cluster::default();
        assert_eq!(c.admit(&origin(1, 2, 5)), Admit::New);
        assert_eq!(c.admit(&origin(1, 2, 5)), Admit::Duplicate);
        assert_eq!(
            c.admit(&origin(1, 2, 4)),
            Admit::New,
            "out of order is fine"
        );
        assert_eq!(c.admit(&origin(2, 1, 5)), Admit::New, "per node");
        assert_eq!(c.admit(&origin(1, 1, 9)), Admit::Stale);
        assert_eq!(
            c.admit(&origin(1, 3, 1)),
            Admit::New,
            "a restart starts over"
        );
        assert_eq!(c.admit(&origin(1, 2, 6)), Admit::Stale);
        assert_eq!(c.admit(&origin(1, 3, WINDOW + 10)), Admit::New);
        assert_eq!(
            c.admit(&origin(1, 3, 5)),
            Admit::Duplicate,
            "below the window"
        );
        assert_eq!(c.admit(&origin(1, 3, 11)), Admit::New);
    }

    #[test]
    fn the_node_table_routes_to_the_newest_process() {
        let mut c = Cluster::default();
        c.node_started(RaftId(1), "aaaaaaaa", 1);
        c.node_started(RaftId(2), "bbbbbbbb", 1);
        assert_eq!(c.node_of_incarnation("aaaaaaaa"), Some(RaftId(1)));
        c.node_started(RaftId(1), "cccccccc", 2);
        assert_eq!(
            c.node_of_incarnation("aaaaaaaa"),
            None,
            "the old process is gone"
        );
        assert_eq!(c.node_of_incarnation("cccccccc"), Some(RaftId(1)));
        c.node_started(RaftId(1), "dddddddd", 1);
        assert_eq!(
            c.node_of_incarnation("cccccccc"),
            Some(RaftId(1)),
            "an older generation applied late changes nothing"
        );
    }

    #[test]
    fn the_clock_never_goes_back() {
        let mut c = Cluster::default();
        c.advance_clock(100);
        c.advance_clock(50);
        assert_eq!(c.clock_ms, 100);
    }
}
