//! This node's proposals: appended when leading (stamped with the cluster clock),
//! forwarded to the leader when following, held briefly while no leader is known; and the
//! waiters that answer their proposers once applied, or fail them retryably.
//!
//! A leader stages the proposals of one turn (its own and those forwarded to it) and hands
//! them to raft as one `MsgPropose`: raft then sends each follower one append for the turn,
//! and each follower answers it once, instead of once per proposal.

use std::time::Instant;

use prost::Message as _;
use tokio::sync::oneshot;
use tracing::debug;

use raft::eraftpb::{Entry, Message, MessageType};

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

/// Whom to tell when a staged proposal is refused.
pub(super) enum Source {
    /// A request of this node, by proposal id.
    Local(u64),
    /// A follower's proposal.
    Forwarded(RaftId),
    /// The leader's own `Expire`.
    Expiry,
}

/// A proposal for this turn's `MsgPropose` (stamped with the cluster clock when appended).
pub(super) struct Staged {
    context: ProposalContext,
    data: Vec<u8>,
    source: Source,
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
            self.stage(&p.context, p.data, Source::Local(p.id));
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

    /// Adds a proposal to this turn's batch (`append_staged`).
    pub(super) fn stage(&mut self, context: &[u8], data: Vec<u8>, source: Source) {
        let context = match ProposalContext::decode(context) {
            Ok(c) => c,
            Err(e) => return self.refuse(source, None, e.to_string()),
        };
        if self.cfg.disk.is_low() {
            let refusal = self.cfg.disk.refusal();
            return self.refuse(source, Some(&context), refusal);
        }
        self.staged.push(Staged {
            context,
            data,
            source,
        });
    }

    /// Stamps the staged proposals with the cluster clock and appends them to the leader's
    /// log as one `MsgPropose`; refuses them all when this node no longer leads.
    pub(super) fn append_staged(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let staged = std::mem::take(&mut self.staged);
        if !self.track_leadership() {
            let why = "not the raft leader any more, retry";
            for p in staged {
                self.refuse(p.source, Some(&p.context), why.to_string());
            }
            return;
        }
        let now = self.clock.now();
        let mut entries = Vec::with_capacity(staged.len());
        let mut proposers = Vec::with_capacity(staged.len());
        for mut p in staged {
            p.context.clock_ms = now;
            entries.push(Entry {
                context: p.context.encode_to_vec().into(),
                data: p.data.into(),
                ..Default::default()
            });
            proposers.push((p.source, p.context));
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.raw.raft.id;
        m.set_entries(entries.into());
        // All or nothing: raft-rs refuses the whole message (a leadership transfer under
        // way, or this node removed).
        if let Err(e) = self.raw.step(m) {
            let why = format!("proposal dropped ({e}), retry");
            for (source, context) in proposers {
                self.refuse(source, Some(&context), why.clone());
            }
        }
    }

    /// Tells the proposer of a refused proposal (a follower only when its context could be
    /// read, to name the proposal).
    fn refuse(&mut self, source: Source, context: Option<&ProposalContext>, error: String) {
        match source {
            Source::Local(id) => {
                if let Some(w) = self.waiters.remove(&id) {
                    let _ = w.reply.send(Err(RpcError::internal(error)));
                }
            }
            Source::Forwarded(from) => {
                if let (Some(c), Some(peers)) = (context, &self.peers) {
                    let result = ForwardResult {
                        proposal_id: c.proposal_id,
                        generation: c.generation,
                        error,
                    };
                    let body = Some(frame::Body::ForwardResult(result));
                    peers.send(from, Frame { body });
                }
            }
            Source::Expiry => debug!("expiry proposal failed: {error}"),
        }
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

    /// A follower's proposal, for this turn's batch (refused there if this node no longer
    /// leads).
    pub(super) fn on_forwarded(&mut self, from: RaftId, fwd: Forward) {
        self.stage(&fwd.context, fwd.data, Source::Forwarded(from));
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
        self.stage(&context.encode_to_vec(), data, Source::Expiry);
    }
}
