//! Membership: joins (as learner first), removals, promotion of caught-up learners,
//! applying committed conf changes, and handing leadership over (at shutdown, or when this
//! leader's disk is low).

use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChange, ConfChangeType};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use nexus_core::ids::RaftId;
use nexus_core::proto::JoinResponse;
use nexus_core::state::{Event, MemberChange, State};

use super::Driver;
use crate::store::{RaftWrite, StoreError};

impl Driver {
    pub(super) fn voters_and_learners(&self) -> (Vec<RaftId>, Vec<RaftId>) {
        let cs = self.storage.conf_state();
        let ids = |v: Vec<u64>| v.into_iter().map(RaftId).collect();
        (ids(cs.voters), ids(cs.learners))
    }

    pub(super) fn on_join(&mut self, raft_id: RaftId, addr: String, replace: bool) -> JoinResponse {
        if !self.is_leader() {
            let leader = RaftId(self.raw.raft.leader_id);
            let leader_addr = self.read_state(|s| s.cluster.members.get(&leader).cloned());
            return JoinResponse {
                ok: false,
                error: "not the leader".into(),
                leader_addr: leader_addr.unwrap_or_default(),
            };
        }
        let (voters, learners) = self.voters_and_learners();
        if voters.contains(&raft_id) || learners.contains(&raft_id) {
            return JoinResponse {
                ok: true,
                ..Default::default()
            };
        }
        if self.raw.raft.has_pending_conf() {
            return JoinResponse {
                ok: false,
                error: "another membership change is in progress, retry".into(),
                ..Default::default()
            };
        }
        // A rebuilt node: its old raft id (the member at the same address) leaves first, so
        // the votes it cast with its lost log are void and it never counts twice.
        let old_self = self.read_state(|s| {
            s.cluster
                .members
                .iter()
                .find(|(id, a)| {
                    **id != raft_id && **a == addr && (voters.contains(id) || learners.contains(id))
                })
                .map(|(id, _)| *id)
        });
        if let Some(old) = old_self.filter(|_| replace) {
            let outcome = match self.on_remove(old) {
                Ok(()) => {
                    info!(%old, new = %raft_id, %addr, "a rebuilt node replaces its old raft id");
                    format!("removing {old}, the old member at {addr}: retry")
                }
                Err(e) => format!("cannot remove {old}, the old member at {addr}: {e}"),
            };
            return JoinResponse {
                ok: false,
                error: outcome,
                ..Default::default()
            };
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddLearnerNode);
        cc.node_id = raft_id.0;
        cc.context = addr.clone().into_bytes().into();
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => {
                info!(%raft_id, %addr, "adding a new member as learner");
                JoinResponse {
                    ok: true,
                    ..Default::default()
                }
            }
            Err(e) => JoinResponse {
                ok: false,
                error: format!("membership change refused: {e}"),
                ..Default::default()
            },
        }
    }

    pub(super) fn on_remove(&mut self, raft_id: RaftId) -> Result<(), String> {
        if !self.is_leader() {
            return Err("not the leader".into());
        }
        let (voters, learners) = self.voters_and_learners();
        if !voters.contains(&raft_id) && !learners.contains(&raft_id) {
            return Err(format!("{raft_id} is not a member"));
        }
        if voters == [raft_id] {
            return Err("cannot remove the last voter".into());
        }
        if raft_id == self.me.raft_id {
            return Err(format!(
                "{raft_id} is the leader: stop it (SIGTERM hands leadership over) or remove \
                 it once another member leads"
            ));
        }
        if self.raw.raft.has_pending_conf() {
            return Err("another membership change is in progress, retry".into());
        }
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::RemoveNode);
        cc.node_id = raft_id.0;
        self.raw
            .propose_conf_change(Vec::new(), cc)
            .map_err(|e| format!("membership change refused: {e}"))
    }

    /// Promotes one caught-up learner to voter while there is room.
    pub(super) fn maybe_promote(&mut self) {
        if !self.is_leader() || self.raw.raft.has_pending_conf() {
            return;
        }
        let (voters, learners) = self.voters_and_learners();
        if voters.len() >= self.cfg.max_voters {
            return;
        }
        let committed = self.raw.raft.raft_log.committed;
        let ready = learners.into_iter().find(|id| {
            self.raw
                .raft
                .prs()
                .get(id.0)
                .is_some_and(|pr| pr.matched + 10 >= committed && pr.matched > 0)
        });
        if let Some(id) = ready {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = id.0;
            match self.raw.propose_conf_change(Vec::new(), cc) {
                Ok(()) => info!(raft_id = %id, "promoting a caught-up learner to voter"),
                Err(e) => debug!("promotion refused: {e}"),
            }
        }
    }

    /// Applies a membership change: to raft (unless the persisted conf state already has
    /// it: entries replayed after a restart), to the member address book, to the transport.
    pub(super) fn apply_conf_change(
        &mut self,
        index: u64,
        cc: &ConfChange,
        state: &mut State,
        events: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        let id = RaftId(cc.node_id);
        let change = match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => MemberChange::Added {
                node_id: id,
                addr: (!cc.context.is_empty())
                    .then(|| String::from_utf8_lossy(&cc.context).to_string()),
            },
            ConfChangeType::RemoveNode => MemberChange::Removed { node_id: id },
        };
        events.extend(state.apply_member_change(change));
        if index > self.storage.conf_index() {
            match self.raw.apply_conf_change(cc) {
                Ok(cs) => self.storage.write(RaftWrite {
                    conf_state: Some(&cs),
                    conf_index: Some(index),
                    sync: true,
                    ..Default::default()
                })?,
                // Deterministic on every node: the same change fails everywhere.
                Err(e) => error!(index, node = %id, "membership change not applied: {e}"),
            }
        }
        if let Some(peers) = &self.peers {
            match (cc.get_change_type(), state.cluster.members.get(&id)) {
                (ConfChangeType::RemoveNode, _) => peers.remove_peer(id),
                (_, Some(addr)) if id != self.me.raft_id => peers.set_peer(id, addr),
                _ => {}
            }
        }
        if cc.get_change_type() == ConfChangeType::RemoveNode && id == self.me.raft_id {
            warn!("this node was removed from the cluster");
        }
        info!(index, node = %id, change = ?cc.get_change_type(), "membership changed");
        self.publish_membership();
        Ok(())
    }

    pub(super) fn publish_membership(&self) {
        let m = self.voters_and_learners();
        *self
            .stats
            .membership
            .write()
            .unwrap_or_else(|e| e.into_inner()) = m;
    }

    /// Tells the transport where every member listens.
    pub(super) fn announce_peers(&self) {
        let Some(peers) = &self.peers else {
            return;
        };
        let members = self.read_state(|s| s.cluster.members.clone());
        for (id, addr) in members {
            if id != self.me.raft_id {
                peers.set_peer(id, &addr);
            }
        }
    }

    pub(super) fn start_transfer(&mut self, reply: oneshot::Sender<bool>) {
        if !self.is_leader() {
            let _ = reply.send(true);
            return;
        }
        match self.transfer_target() {
            Some(id) => {
                info!(to = %id, "transferring raft leadership before stopping");
                self.raw.transfer_leader(id.0);
                self.transfer = Some((reply, Instant::now() + Duration::from_secs(3)));
            }
            None => {
                let _ = reply.send(false);
            }
        }
    }

    /// The voter best placed to take over leadership: the most caught-up one.
    pub(super) fn transfer_target(&self) -> Option<RaftId> {
        let (voters, _) = self.voters_and_learners();
        voters
            .into_iter()
            .filter(|id| *id != self.me.raft_id)
            .max_by_key(|id| self.raw.raft.prs().get(id.0).map_or(0, |p| p.matched))
    }

    /// A leader whose disk is below its reserve cannot append: it hands leadership to a
    /// voter that can (every second while the disk stays low).
    pub(super) fn leave_leadership_if_disk_low(&mut self) {
        if !self.is_leader() || !self.cfg.disk.is_low() || self.transfer.is_some() {
            return;
        }
        if self.last_disk_transfer.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_disk_transfer = Instant::now();
        if let Some(id) = self.transfer_target() {
            warn!(
                to = %id,
                "this leader's disk is below its reserve: transferring leadership"
            );
            self.raw.transfer_leader(id.0);
        }
    }
}
