//! This node's proposals: appended when leading (stamped with the cluster clock),
//! forwarded to the leader when following, held briefly while no leader is known; and the
//! waiters that answer their proposers once applied, or fail them retryably.

use std::time::Instant;

use prost::Message as _;
use tokio::sync::oneshot;
use tracing::debug;

use nexus_core::ids::RaftId;
use nexus_core::proto::{frame, Forward, ForwardResult, Frame, ProposalContext};
use nexus_core::rpc::RpcError;
use nexus_core::state::{codec, Command, Outcome};

use super::Driver;

/// A request waiting for its proposal to be applied here.
pub(super) struct Waiter {
    pub(super) reply: oneshot::Sender<Outcome>,
    pub(super) since: Instant,
}

/// A proposal waiting for a leader to be known.
pub(super) struct Unsent {
    pub(super) id: u64,
    pub(super) context: Vec<u8>,
    pub(super) data: Vec<u8>,
}

impl Driver {
    /// A proposal of this node: appended here when leading, else forwarded to the leader.
    pub(super) fn propose_local(
        &mut self,
        data: Vec<u8>,
        log_version: u32,
        reply: oneshot::Sender<Outcome>,
    ) {
        if self.cfg.disk.is_low() {
            let _ = reply.send(Err(RpcError::internal(self.cfg.disk.refusal())));
            return;
        }
        self.next_proposal += 1;
        let id = self.next_proposal;
        let context = ProposalContext {
            node_id: self.me.raft_id.0,
            proposal_id: id,
            incarnation: self.me.incarnation.clone(),
            generation: self.me.generation,
            clock_ms: 0,
            log_version,
        };
        self.waiters.insert(
            id,
            Waiter {
                reply,
                since: Instant::now(),
            },
        );
        self.submit(Unsent {
            id,
            context: context.encode_to_vec(),
            data,
        });
    }

    /// Appends (leader), forwards (follower) or holds (no leader) a proposal of this node.
    pub(super) fn submit(&mut self, p: Unsent) {
        if self.is_leader() {
            if let Err(e) = self.append(&p.context, p.data) {
                if let Some(w) = self.waiters.remove(&p.id) {
                    let _ = w.reply.send(Err(RpcError::internal(e)));
                }
            }
            return;
        }
        match (self.raw.raft.leader_id, &self.peers) {
            (0, _) | (_, None) => self.unsent.push_back(p),
            (leader, Some(peers)) => peers.send(
                RaftId(leader),
                Frame {
                    body: Some(frame::Body::Forward(Forward {
                        context: p.context,
                        data: p.data,
                    })),
                },
            ),
        }
    }

    /// Stamps a proposal with the cluster clock and appends it to the leader's log.
    pub(super) fn append(&mut self, context: &[u8], data: Vec<u8>) -> Result<(), String> {
        if self.cfg.disk.is_low() {
            return Err(self.cfg.disk.refusal());
        }
        let mut ctx = ProposalContext::decode(context).map_err(|e| e.to_string())?;
        ctx.clock_ms = self.clock.now();
        let before = self.raw.raft.raft_log.last_index();
        self.raw
            .propose(ctx.encode_to_vec(), data)
            .map_err(|e| format!("proposal dropped ({e}), retry"))?;
        if self.raw.raft.raft_log.last_index() == before {
            return Err("proposal dropped (leadership transfer in progress), retry".into());
        }
        Ok(())
    }

    /// Fails every pending proposal of this node (they may or may not have applied).
    pub(super) fn fail_waiters(&mut self, why: &str) {
        for (_, w) in self.waiters.drain() {
            let _ = w.reply.send(Err(RpcError::internal(why)));
        }
        self.unsent.clear();
    }

    pub(super) fn fail_timed_out(&mut self) {
        let timeout = self.cfg.proposal_timeout;
        let expired: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.since.elapsed() >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(w) = self.waiters.remove(&id) {
                let _ = w.reply.send(Err(RpcError::internal(
                    "the write was not applied in time (no raft leader reachable?), retry",
                )));
            }
        }
        let waiters = &self.waiters;
        self.unsent.retain(|p| waiters.contains_key(&p.id));
    }

    pub(super) fn on_forwarded(&mut self, from: RaftId, fwd: Forward) {
        let refuse = |this: &Self, ctx: &[u8], error: String| {
            let Ok(c) = ProposalContext::decode(ctx) else {
                return;
            };
            if let Some(peers) = &this.peers {
                peers.send(
                    from,
                    Frame {
                        body: Some(frame::Body::ForwardResult(ForwardResult {
                            proposal_id: c.proposal_id,
                            generation: c.generation,
                            error,
                        })),
                    },
                );
            }
        };
        if !self.is_leader() {
            refuse(
                self,
                &fwd.context,
                "not the raft leader any more, retry".into(),
            );
            return;
        }
        if let Err(e) = self.append(&fwd.context, fwd.data) {
            refuse(self, &fwd.context, e);
        }
    }

    /// Proposes `Expire` when a task or pull deadline passed on the cluster clock.
    pub(super) fn maybe_expire(&mut self) {
        let due = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            self.clock.expiry_due(self.cfg.expire_tick, &state)
        };
        if !due {
            return;
        }
        self.next_proposal += 1;
        let context = ProposalContext {
            node_id: self.me.raft_id.0,
            proposal_id: self.next_proposal,
            incarnation: self.me.incarnation.clone(),
            generation: self.me.generation,
            clock_ms: 0,
            log_version: Command::Expire {}.log_version(),
        };
        let data = codec::encode_command(Command::Expire {});
        if let Err(e) = self.append(&context.encode_to_vec(), data) {
            debug!("expiry proposal failed: {e}");
        }
    }
}
