//! The driver thread: one raft-rs `RawNode`, stepped by local proposals and peer messages,
//! ticking, writing its log to RocksDB (every proposal waiting when the loop turns goes
//! into the same fsync'd write), applying committed entries and answering their proposers.
//!
//! Proposals: the leader appends them itself, stamped with the cluster clock; a follower
//! forwards them to the leader (`Forward` frames); with no leader known they wait, briefly,
//! for one. Every proposal carries (node, generation, proposal id); the proposer answers its
//! client after applying the entry locally (read-your-writes). Waiters fail, retryably, on
//! a term change, a snapshot install or their timeout: no request hangs.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::reads::Reads;
use super::{EventSink, Identity, Msg, Peers, RaftConfig, RaftHandle, RaftStats, Role};
use crate::store::{RaftStorage, RaftWrite, StoreError};
use nexus_core::proto::{frame, Forward, ForwardResult, Frame, JoinResponse, ProposalContext};
use nexus_core::rpc::RpcError;
use nexus_core::state::{codec, Command, Event, MemberChange, Origin, Outcome, State};

/// Starts the driver thread. `state` is restored from the stored snapshot first.
pub fn start(
    storage: RaftStorage,
    me: Identity,
    state: Arc<RwLock<State>>,
    events: EventSink,
    cfg: RaftConfig,
    peers: Option<Arc<dyn Peers>>,
) -> Result<RaftHandle, StoreError> {
    let mut applied = 0;
    let mut snapshot_bytes = 0;
    if let Some(snap) = storage.stored_snapshot()? {
        snapshot_bytes = snap.data.len() as u64;
        let restored = State::from_snapshot(&snap.data)
            .map_err(|e| StoreError::Corrupt("state snapshot", e.to_string()))?;
        *state.write().unwrap_or_else(|e| e.into_inner()) = restored;
        applied = snap.get_metadata().index;
        info!(index = applied, "restored state from snapshot");
    }
    let raft_cfg = raft::Config {
        id: me.raft_id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_cfg
        .validate()
        .map_err(|e| StoreError::Corrupt("raft config", e.to_string()))?;
    let logger = crate::raft_log::logger();
    let raw = RawNode::new(&raft_cfg, storage.clone(), &logger)
        .map_err(|e| StoreError::Corrupt("raft state", e.to_string()))?;
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(RaftStats::default());
    stats.timings.snapshot_bytes.set(snapshot_bytes as i64);
    let mut driver = Driver {
        raw,
        storage,
        me,
        state,
        events,
        peers,
        waiters: HashMap::new(),
        unsent: VecDeque::new(),
        reads: Reads::default(),
        next_proposal: 0,
        last_snapshot: applied,
        last_snapshot_bytes: snapshot_bytes,
        log_bytes_since_snapshot: 0,
        snapshotting: None,
        cfg,
        stats: stats.clone(),
        term: 0,
        leader_clock: None,
        applied_clock: 0,
        last_expire: Instant::now(),
        last_promote: Instant::now(),
        transfer: None,
        last_disk_transfer: Instant::now(),
    };
    driver.publish_membership();
    driver.announce_peers();
    let dir = driver.storage.dir().to_path_buf();
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            // A panic here would leave a node that answers nothing: end the process.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                driver.run(rx);
            }));
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("");
                if let Some(why) = storage_fault(message) {
                    fail_stop(&dir, &why);
                }
                error!("the raft driver panicked: aborting");
                std::process::abort();
            }
        })
        .map_err(|e| StoreError::Corrupt("raft thread", e.to_string()))?;
    Ok(RaftHandle {
        tx,
        stats,
        thread: Arc::new(std::sync::Mutex::new(Some(thread))),
    })
}

/// What a raft-rs panic says about this node's storage, when it says that the log lost
/// entries it had (a leader knows this node matched further than its log now reaches) or
/// that a stored record is damaged.
fn storage_fault(panic_message: &str) -> Option<String> {
    // raft-rs 0.7: "to_commit {} is out of range [last_index {}]" (commit_to).
    let lost = panic_message.contains("out of range [last_index");
    // A read of the log that failed its checks, passed up through raft-rs: RocksDB's
    // checksums ("Corruption:") or ours (`StoreError::Corrupt`, "corrupt record").
    let damaged = panic_message.contains("Corruption:") || panic_message.contains("corrupt record");
    (lost || damaged).then(|| format!("raft found the stored log damaged: {panic_message}"))
}

/// Stops a node whose storage is damaged, for good: marks the data dir so that no later
/// start votes or serves with it, says so in one line, and exits with the refusal status.
fn fail_stop(dir: &std::path::Path, why: &str) -> ! {
    crate::store::datadir::mark_damaged(dir, why);
    let refusal = crate::store::datadir::refusal(dir, why);
    error!("{refusal}");
    eprintln!("nexus: {refusal}");
    // _exit, not exit: RocksDB's static destructors would run while its threads still
    // work, and an abort there would replace the refusal status.
    // SAFETY: ends the process at once; the marker above is already durable.
    unsafe { libc::_exit(crate::store::datadir::REFUSED_EXIT_CODE.into()) }
}

/// A request waiting for its proposal to be applied here.
struct Waiter {
    reply: oneshot::Sender<Outcome>,
    since: Instant,
}

/// A proposal waiting for a leader to be known.
struct Unsent {
    id: u64,
    context: Vec<u8>,
    data: Vec<u8>,
}

/// The cluster clock while this node leads: the applied clock when it took over, advanced
/// by this process's monotonic clock. No wall clock is read after the first bootstrap.
struct LeaderClock {
    base_ms: u64,
    since: Instant,
    last: u64,
}

/// A snapshot is taken at the latest after this many times `snapshot_every` entries.
const SNAPSHOT_OVERDUE_FACTOR: u64 = 20;

/// A snapshot being encoded and written off the Raft thread.
struct Snapshotting {
    index: u64,
    began: Instant,
    writer: std::thread::JoinHandle<Result<u64, StoreError>>,
}

struct Driver {
    raw: RawNode<RaftStorage>,
    storage: RaftStorage,
    me: Identity,
    state: Arc<RwLock<State>>,
    events: EventSink,
    peers: Option<Arc<dyn Peers>>,
    waiters: HashMap<u64, Waiter>,
    unsent: VecDeque<Unsent>,
    reads: Reads,
    next_proposal: u64,
    last_snapshot: u64,
    /// Size of the last state snapshot, and the bytes of log applied since: a new snapshot
    /// waits until the log has grown in proportion to the state it rewrites.
    last_snapshot_bytes: u64,
    log_bytes_since_snapshot: u64,
    /// The snapshot being encoded and written off this thread.
    snapshotting: Option<Snapshotting>,
    cfg: RaftConfig,
    stats: Arc<RaftStats>,
    /// The term waiters were proposed in; a change fails them.
    term: u64,
    leader_clock: Option<LeaderClock>,
    /// The cluster clock of the applied state.
    applied_clock: u64,
    last_expire: Instant,
    last_promote: Instant,
    transfer: Option<(oneshot::Sender<bool>, Instant)>,
    last_disk_transfer: Instant,
}

const RETRYABLE_TERM: &str =
    "raft leadership changed before the write was applied; its outcome is unknown, retry";

impl Driver {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        // A sole voter elects itself at once instead of waiting for an election timeout.
        if self.storage.conf_state().voters == [self.me.raft_id] {
            if let Err(e) = self.raw.campaign() {
                error!("raft campaign failed: {e}");
            }
        }
        self.applied_clock = self.read_state(|s| s.cluster.clock_ms);
        let mut next_tick = Instant::now() + self.cfg.tick;
        let mut shutdown = None;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    self.handle(msg, &mut shutdown);
                    // Group commit: take everything else already queued into this turn.
                    let mut taken = 1;
                    while taken < self.cfg.max_batch && shutdown.is_none() {
                        match rx.try_recv() {
                            Ok(msg) => self.handle(msg, &mut shutdown),
                            Err(_) => break,
                        }
                        taken += 1;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick = Instant::now() + self.cfg.tick;
                self.on_tick();
            }
            if let Some(ctx) = self.reads.take_request() {
                self.raw.read_index(ctx);
            }
            if let Err(e) = self.on_ready() {
                self.fail_waiters("storage failure");
                // Damage read back from the store: this node must not run on it again.
                if matches!(e, StoreError::Db(_)) && e.is_corruption() {
                    fail_stop(self.storage.dir(), &format!("a read found damage: {e}"));
                }
                // The log cannot be written (disk full, I/O error) or an entry cannot be
                // applied: nothing this node acknowledges could be trusted. Exit so that
                // the supervisor restarts the node and it recovers from what is on disk
                // (or an operator looks at it).
                error!("raft storage or apply failure, exiting: {e}");
                std::process::exit(70);
            }
            self.after_turn();
            if let Some(done) = shutdown.take() {
                let _ = done.send(());
                break;
            }
        }
        if let Err(e) = self.finish_snapshot(true) {
            error!("state snapshot failed at shutdown: {e}");
        }
        self.fail_waiters("node is shutting down");
        self.reads.fail_all("node is shutting down");
        info!("raft driver stopped");
    }

    fn read_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Fails every pending proposal of this node (they may or may not have applied).
    fn fail_waiters(&mut self, why: &str) {
        for (_, w) in self.waiters.drain() {
            let _ = w.reply.send(Err(RpcError::internal(why)));
        }
        self.unsent.clear();
    }

    fn handle(&mut self, msg: Msg, shutdown: &mut Option<oneshot::Sender<()>>) {
        match msg {
            Msg::Propose { data, reply } => self.propose_local(data, reply),
            Msg::Read { reply } => self.reads.add(reply),
            Msg::Raft { from, msg } => {
                // Entries this node could not store wait in memory: take none while the
                // disk is below its reserve (the leader retries once this node answers).
                if msg.get_msg_type() == raft::eraftpb::MessageType::MsgAppend
                    && self.cfg.disk.is_low()
                {
                    return;
                }
                if msg.from != from {
                    warn!(
                        from,
                        claimed = msg.from,
                        "dropping a raft message with a forged sender"
                    );
                    return;
                }
                if let Err(e) = self.raw.step(*msg) {
                    debug!(from, "raft step: {e}");
                }
            }
            Msg::Forwarded { from, fwd } => self.on_forwarded(from, fwd),
            Msg::ForwardFailed(r) => {
                if r.generation == self.me.generation {
                    if let Some(w) = self.waiters.remove(&r.proposal_id) {
                        let _ = w.reply.send(Err(RpcError::internal(r.error)));
                    }
                }
            }
            Msg::Unreachable { to } => self.raw.report_unreachable(to),
            Msg::SnapshotDone { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Msg::Join {
                raft_id,
                addr,
                replace,
                reply,
            } => {
                let _ = reply.send(self.on_join(raft_id, addr, replace));
            }
            Msg::Remove { raft_id, reply } => {
                let _ = reply.send(self.on_remove(raft_id));
            }
            Msg::TransferLeadership { reply } => self.start_transfer(reply),
            Msg::Shutdown(done) => *shutdown = Some(done),
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// A proposal of this node: appended here when leading, else forwarded to the leader.
    fn propose_local(&mut self, data: Vec<u8>, reply: oneshot::Sender<Outcome>) {
        if self.cfg.disk.is_low() {
            let _ = reply.send(Err(RpcError::internal(self.cfg.disk.refusal())));
            return;
        }
        self.next_proposal += 1;
        let id = self.next_proposal;
        let context = ProposalContext {
            node_id: self.me.raft_id,
            proposal_id: id,
            incarnation: self.me.incarnation.clone(),
            generation: self.me.generation,
            clock_ms: 0,
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
    fn submit(&mut self, p: Unsent) {
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
                leader,
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
    fn append(&mut self, context: &[u8], data: Vec<u8>) -> Result<(), String> {
        if self.cfg.disk.is_low() {
            return Err(self.cfg.disk.refusal());
        }
        let mut ctx = ProposalContext::decode(context).map_err(|e| e.to_string())?;
        ctx.clock_ms = self.clock_now();
        let before = self.raw.raft.raft_log.last_index();
        self.raw
            .propose(ctx.encode_to_vec(), data)
            .map_err(|e| format!("proposal dropped ({e}), retry"))?;
        if self.raw.raft.raft_log.last_index() == before {
            return Err("proposal dropped (leadership transfer in progress), retry".into());
        }
        Ok(())
    }

    /// The leader's cluster clock now (0 when not leading).
    fn clock_now(&mut self) -> u64 {
        let applied = self.applied_clock;
        match &mut self.leader_clock {
            Some(c) => {
                let t = (c.base_ms + c.since.elapsed().as_millis() as u64)
                    .max(c.last)
                    .max(applied);
                c.last = t;
                t
            }
            None => 0,
        }
    }

    fn on_forwarded(&mut self, from: u64, fwd: Forward) {
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

    fn voters_and_learners(&self) -> (Vec<u64>, Vec<u64>) {
        let cs = self.storage.conf_state();
        (cs.voters, cs.learners)
    }

    fn on_join(&mut self, raft_id: u64, addr: String, replace: bool) -> JoinResponse {
        if !self.is_leader() {
            let leader = self.raw.raft.leader_id;
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
                    info!(old, new = raft_id, %addr, "a rebuilt node replaces its old raft id");
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
        cc.node_id = raft_id;
        cc.context = addr.clone().into_bytes().into();
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => {
                info!(raft_id, %addr, "adding a new member as learner");
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

    fn on_remove(&mut self, raft_id: u64) -> Result<(), String> {
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
        cc.node_id = raft_id;
        self.raw
            .propose_conf_change(Vec::new(), cc)
            .map_err(|e| format!("membership change refused: {e}"))
    }

    /// Promotes one caught-up learner to voter while there is room.
    fn maybe_promote(&mut self) {
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
                .get(*id)
                .is_some_and(|pr| pr.matched + 10 >= committed && pr.matched > 0)
        });
        if let Some(id) = ready {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = id;
            match self.raw.propose_conf_change(Vec::new(), cc) {
                Ok(()) => info!(raft_id = id, "promoting a caught-up learner to voter"),
                Err(e) => debug!("promotion refused: {e}"),
            }
        }
    }

    fn start_transfer(&mut self, reply: oneshot::Sender<bool>) {
        if !self.is_leader() {
            let _ = reply.send(true);
            return;
        }
        match self.transfer_target() {
            Some(id) => {
                info!(to = id, "transferring raft leadership before stopping");
                self.raw.transfer_leader(id);
                self.transfer = Some((reply, Instant::now() + Duration::from_secs(3)));
            }
            None => {
                let _ = reply.send(false);
            }
        }
    }

    /// The voter best placed to take over leadership: the most caught-up one.
    fn transfer_target(&self) -> Option<u64> {
        let (voters, _) = self.voters_and_learners();
        voters
            .into_iter()
            .filter(|id| *id != self.me.raft_id)
            .max_by_key(|id| self.raw.raft.prs().get(*id).map_or(0, |p| p.matched))
    }

    /// A leader whose disk is below its reserve cannot append: it hands leadership to a
    /// voter that can (every second while the disk stays low).
    fn leave_leadership_if_disk_low(&mut self) {
        if !self.is_leader() || !self.cfg.disk.is_low() || self.transfer.is_some() {
            return;
        }
        if self.last_disk_transfer.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_disk_transfer = Instant::now();
        if let Some(id) = self.transfer_target() {
            warn!(
                to = id,
                "this leader's disk is below its reserve: transferring leadership"
            );
            self.raw.transfer_leader(id);
        }
    }

    /// Periodic work after a raft tick.
    fn on_tick(&mut self) {
        self.fail_timed_out();
        self.reads
            .progress(self.raw.raft.raft_log.applied, self.cfg.read_timeout);
        if self.last_promote.elapsed() >= Duration::from_millis(500) {
            self.last_promote = Instant::now();
            self.maybe_promote();
        }
        if self.last_expire.elapsed() >= self.cfg.expire_tick {
            self.last_expire = Instant::now();
            self.maybe_expire();
        }
        self.leave_leadership_if_disk_low();
    }

    fn fail_timed_out(&mut self) {
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

    /// While leading, proposes `Expire` once a task or pull deadline passed on the cluster
    /// clock, so every node ends the same tasks at the same point of the log.
    fn maybe_expire(&mut self) {
        if !self.is_leader() {
            return;
        }
        let now = self.clock_now();
        let due = self.read_state(|s| s.tasks.next_deadline().is_some_and(|d| d <= now));
        if !due {
            return;
        }
        self.next_proposal += 1;
        let context = ProposalContext {
            node_id: self.me.raft_id,
            proposal_id: self.next_proposal,
            incarnation: self.me.incarnation.clone(),
            generation: self.me.generation,
            clock_ms: 0,
        };
        let data = codec::encode_command(Command::Expire {});
        if let Err(e) = self.append(&context.encode_to_vec(), data) {
            debug!("expiry proposal failed: {e}");
        }
    }

    /// Bookkeeping after each loop turn: role and term changes, leadership transfer.
    fn after_turn(&mut self) {
        let term = self.raw.raft.term;
        if term != self.term {
            if self.term != 0 && !self.waiters.is_empty() {
                debug!(
                    old = self.term,
                    new = term,
                    n = self.waiters.len(),
                    "term changed: failing pending proposals"
                );
                self.fail_waiters(RETRYABLE_TERM);
            }
            self.term = term;
        }
        let leading = self.is_leader();
        if leading && self.leader_clock.is_none() {
            // The first leader of a fresh cluster starts the clock from its wall clock;
            // later leaders continue from the applied clock.
            let base = match self.applied_clock {
                0 => crate::clock::now_ms(),
                c => c,
            };
            self.leader_clock = Some(LeaderClock {
                base_ms: base,
                since: Instant::now(),
                last: base,
            });
            info!(term, "this node leads the cluster");
        } else if !leading && self.leader_clock.is_some() {
            self.leader_clock = None;
        }
        if self.raw.raft.leader_id != 0 && !self.unsent.is_empty() {
            for p in std::mem::take(&mut self.unsent) {
                self.submit(p);
            }
        }
        if let Some((_, deadline)) = &self.transfer {
            if !leading || Instant::now() >= *deadline {
                if let Some((reply, _)) = self.transfer.take() {
                    let _ = reply.send(!leading);
                }
            }
        }
        self.publish_stats();
    }

    fn publish_stats(&self) {
        let r = &self.raw.raft;
        let s = &self.stats;
        s.term.store(r.term, Ordering::Relaxed);
        s.leader_id.store(r.leader_id, Ordering::Relaxed);
        s.commit_index
            .store(r.raft_log.committed, Ordering::Relaxed);
        s.set_applied(r.raft_log.applied);
        let role = match r.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => {
                let (voters, learners) = self.voters_and_learners();
                if voters.contains(&self.me.raft_id) {
                    Role::Follower
                } else if learners.contains(&self.me.raft_id) {
                    Role::Learner
                } else {
                    Role::None
                }
            }
        };
        s.set_role(role);
    }

    fn publish_membership(&self) {
        let m = self.voters_and_learners();
        *self
            .stats
            .membership
            .write()
            .unwrap_or_else(|e| e.into_inner()) = m;
    }

    /// Tells the transport where every member listens.
    fn announce_peers(&self) {
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

    fn on_ready(&mut self) -> Result<(), StoreError> {
        // Entries (or a snapshot) to persist wait while the disk is below its reserve:
        // raft holds them, and this node falls silent to the leader until space returns.
        let unstable = &self.raw.raft.raft_log.unstable;
        let to_persist = !unstable.entries.is_empty() || unstable.snapshot.is_some();
        if !self.raw.has_ready() || to_persist && self.cfg.disk.is_low() {
            self.reads
                .progress(self.raw.raft.raft_log.applied, self.cfg.read_timeout);
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.send_messages(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(&snap)?;
        }
        for rs in ready.take_read_states() {
            self.reads.confirmed(&rs.request_ctx, rs.index);
        }
        self.apply_entries(ready.take_committed_entries())?;
        let hs = ready.hs().cloned();
        if !ready.entries().is_empty() || hs.is_some() {
            let start = Instant::now();
            self.storage.write(RaftWrite {
                entries: ready.entries(),
                hard_state: hs.as_ref(),
                sync: true,
                ..Default::default()
            })?;
            self.stats.synced_writes.fetch_add(1, Ordering::Relaxed);
            let t = &self.stats.timings;
            t.log_write_seconds.observe(start.elapsed().as_secs_f64());
            t.log_write_entries.observe(ready.entries().len() as f64);
        }
        self.send_messages(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.storage.set_commit(commit)?;
        }
        self.send_messages(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.reads
            .progress(self.raw.raft.raft_log.applied, self.cfg.read_timeout);
        self.maybe_snapshot()
    }

    fn send_messages(&mut self, msgs: Vec<raft::eraftpb::Message>) {
        let Some(peers) = &self.peers else {
            return;
        };
        for m in msgs {
            peers.send_raft(m.to, m);
        }
    }

    /// Replaces the state with a snapshot from the leader. Proposals it may cover cannot
    /// be told apart from lost ones: they fail (retryable), and the node reconciles its
    /// waiting pushes and pulls against the new state.
    fn install_snapshot(&mut self, snap: &raft::eraftpb::Snapshot) -> Result<(), StoreError> {
        // An older snapshot still being written must not land after this one.
        self.finish_snapshot(true)?;
        self.storage.apply_snapshot(snap)?;
        let restored = State::from_snapshot(&snap.data)
            .map_err(|e| StoreError::Corrupt("state snapshot", e.to_string()))?;
        self.applied_clock = restored.cluster.clock_ms;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = restored;
        self.last_snapshot = snap.get_metadata().index;
        self.last_snapshot_bytes = snap.data.len() as u64;
        self.log_bytes_since_snapshot = 0;
        self.stats
            .timings
            .snapshot_bytes
            .set(snap.data.len() as i64);
        info!(
            index = snap.get_metadata().index,
            bytes = snap.data.len(),
            "installed a state snapshot from the leader"
        );
        self.fail_waiters("caught up by snapshot: the write's outcome is unknown, retry");
        self.publish_membership();
        self.announce_peers();
        (self.events)(vec![Event::StateReplaced]);
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        #[cfg(feature = "test-hooks")]
        if !self.cfg.test_apply_delay.is_zero() {
            std::thread::sleep(self.cfg.test_apply_delay);
        }
        let mut all_events = Vec::new();
        let mut answers = Vec::new();
        {
            let state_lock = self.state.clone();
            let mut state = state_lock.write().unwrap_or_else(|e| e.into_inner());
            for entry in &entries {
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
                self.log_bytes_since_snapshot += (entry.data.len() + entry.context.len()) as u64;
                match entry.get_entry_type() {
                    EntryType::EntryNormal if entry.data.is_empty() => {}
                    EntryType::EntryNormal => {
                        // Every node must apply the same thing: an entry this build cannot
                        // read halts apply instead of being skipped (no silent divergence).
                        let ctx = ProposalContext::decode(&entry.context[..]).map_err(|e| {
                            StoreError::Corrupt("entry context", format!("{}: {e}", entry.index))
                        })?;
                        let cmd = codec::decode_command(&entry.data).map_err(|e| {
                            StoreError::Corrupt(
                                "command (written by a newer version?)",
                                format!("index {}: {e}", entry.index),
                            )
                        })?;
                        let origin = Origin {
                            node_id: ctx.node_id,
                            generation: ctx.generation,
                            proposal_id: ctx.proposal_id,
                            clock_ms: ctx.clock_ms,
                        };
                        let (outcome, events) = state.apply_entry(&origin, cmd);
                        all_events.extend(events);
                        answers.push((origin, outcome));
                    }
                    EntryType::EntryConfChange => {
                        let mut cc = ConfChange::default();
                        cc.merge_from_bytes(&entry.data)
                            .map_err(|e| StoreError::Corrupt("conf change", e.to_string()))?;
                        self.apply_conf_change(entry.index, &cc, &mut state, &mut all_events)?;
                    }
                    EntryType::EntryConfChangeV2 => {
                        return Err(StoreError::Corrupt(
                            "conf change",
                            format!("index {}: joint changes are not used", entry.index),
                        ));
                    }
                }
            }
            self.applied_clock = state.cluster.clock_ms;
        }
        // Before the answers: a proposer answered reads an applied index covering its entry.
        if let Some(last) = entries.last() {
            self.stats.set_applied(last.index);
        }
        // Events first: a proposer answered has seen every effect up to its entry (a pull
        // whose proposal looked lost finds its assignment already delivered).
        if !all_events.is_empty() {
            (self.events)(all_events);
        }
        for (origin, outcome) in answers {
            if origin.node_id == self.me.raft_id && origin.generation == self.me.generation {
                if let Some(w) = self.waiters.remove(&origin.proposal_id) {
                    let _ = w.reply.send(outcome);
                }
            }
        }
        Ok(())
    }

    /// Applies a membership change: to raft (unless the persisted conf state already has
    /// it: entries replayed after a restart), to the member address book, to the transport.
    fn apply_conf_change(
        &mut self,
        index: u64,
        cc: &ConfChange,
        state: &mut State,
        events: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        let id = cc.node_id;
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
                Err(e) => error!(index, node = id, "membership change not applied: {e}"),
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
        info!(index, node = id, change = ?cc.get_change_type(), "membership changed");
        self.publish_membership();
        Ok(())
    }

    /// Takes a state snapshot every `snapshot_every` applied entries (or when raft needs
    /// one for a peer). Only the copy of the state is made here; encoding it and writing it
    /// (which also compacts the log) happen on a helper thread, so ticks and heartbeats go
    /// on meanwhile. One snapshot is written at a time.
    fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        self.finish_snapshot(false)?;
        if self.snapshotting.is_some() || self.cfg.disk.is_low() {
            return Ok(());
        }
        let applied = self.raw.raft.raft_log.applied;
        // `wanted`: raft needs a snapshot for a peer whose conf state the stored one lacks.
        let wanted = self.storage.take_snapshot_wanted();
        // A snapshot rewrites the whole state: taken only once the log since the last one
        // is at least `snapshot_log_percent` of that state's size, its cost per command
        // stays flat however large the state (a deep queue) grows.
        let log_grown = self.log_bytes_since_snapshot.saturating_mul(100)
            >= self
                .last_snapshot_bytes
                .saturating_mul(self.cfg.snapshot_log_percent);
        // Whatever the sizes, the log never grows past this many entries (a state that
        // was large and has shrunk must not hold its log at the old size for ever).
        let overdue = applied
            >= self.last_snapshot
                + self
                    .cfg
                    .snapshot_every
                    .saturating_mul(SNAPSHOT_OVERDUE_FACTOR);
        let due = applied >= self.last_snapshot + self.cfg.snapshot_every && log_grown;
        if !due && !overdue && !wanted {
            return Ok(());
        }
        // The state and the membership as of `applied`, taken together on this thread.
        let began = Instant::now();
        let copy = self.read_state(State::clone);
        let conf_state = self.storage.conf_state();
        let storage = self.storage.clone();
        let retain = self.cfg.log_retain;
        let writer = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                let data = copy.to_snapshot();
                let bytes = data.len() as u64;
                storage.compact_to_snapshot(applied, conf_state, data, retain)?;
                Ok(bytes)
            })
            .map_err(|e| StoreError::Corrupt("snapshot thread", e.to_string()))?;
        self.snapshotting = Some(Snapshotting {
            index: applied,
            began,
            writer,
        });
        self.log_bytes_since_snapshot = 0;
        Ok(())
    }

    /// Collects the snapshot written in the background once it is done (or, with `wait`,
    /// waits for it).
    fn finish_snapshot(&mut self, wait: bool) -> Result<(), StoreError> {
        match &self.snapshotting {
            Some(s) if wait || s.writer.is_finished() => {}
            _ => return Ok(()),
        }
        let Snapshotting {
            index,
            began,
            writer,
        } = self.snapshotting.take().expect("checked above");
        let bytes = writer
            .join()
            .map_err(|_| StoreError::Corrupt("snapshot thread", "panicked".into()))??;
        self.last_snapshot = self.last_snapshot.max(index);
        self.last_snapshot_bytes = bytes;
        let t = &self.stats.timings;
        t.snapshot_seconds.observe(began.elapsed().as_secs_f64());
        t.snapshot_bytes.set(bytes as i64);
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        debug!(index, "state snapshot written, log compacted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::storage_fault;

    /// The messages raft-rs 0.7 panics with when the log lost entries, or a read of it
    /// failed its checks, are told apart from other panics.
    #[test]
    fn storage_faults_are_told_from_other_panics() {
        let lost = "to_commit 333 is out of range [last_index 111], raft_id: 7";
        assert!(storage_fault(lost).is_some());
        let read =
            r#"unexpected error: Store(Other("rocksdb: Corruption: block checksum mismatch"))"#;
        assert!(storage_fault(read).is_some());
        let ours = r#"unexpected error: Store(Other("corrupt record entry: invalid wire type"))"#;
        assert!(storage_fault(ours).is_some());
        assert!(storage_fault("index out of bounds: the len is 3 but the index is 5").is_none());
    }
}
