//! The driver thread: one raft-rs `RawNode`, stepped by local proposals and peer messages,
//! ticking, writing its log to RocksDB (every proposal waiting when the loop turns goes
//! into the same fsync'd write), applying committed entries and answering their proposers.
//!
//! Proposals: the leader appends them itself, stamped with the cluster clock; a follower
//! forwards them to the leader (`Forward` frames); with no leader known they wait, briefly,
//! for one. Every proposal carries (node, generation, proposal id); the proposer answers its
//! client after applying the entry locally (read-your-writes). Waiters fail, retryably, on
//! a term change, a snapshot install or their timeout: no request hangs.
//!
//! This file is the loop and the ready handling, in the order of raft-rs's
//! `five_mem_node`; `proposals`, `membership`, `cluster_clock` and `snapshotter` are the
//! parts it calls.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, Entry, EntryType};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

mod cluster_clock;
mod membership;
mod proposals;
#[cfg(test)]
mod sim;
mod snapshotter;

use cluster_clock::ClusterClock;
use snapshotter::Snapshotter;

use super::reads::Reads;
use super::{EventSink, Identity, Msg, Peers, RaftConfig, RaftHandle, RaftStats, Role};
use crate::store::{RaftStorage, RaftWrite, StoreError};
use nexus_core::ids::RaftId;
use nexus_core::proto::ProposalContext;
use nexus_core::rpc::RpcError;
use nexus_core::state::{codec, Event, Origin, State};

/// Starts the driver thread. `state` is restored from the stored snapshot first.
pub fn start(
    storage: RaftStorage,
    me: Identity,
    state: Arc<RwLock<State>>,
    events: EventSink,
    cfg: RaftConfig,
    peers: Option<Arc<dyn Peers>>,
) -> Result<RaftHandle, StoreError> {
    let (mut driver, stats) = Driver::new(storage, me, state, events, cfg, peers)?;
    let (tx, rx) = mpsc::channel();
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

/// The proposer and command of a normal entry. Every node must apply the same thing: an
/// entry this build cannot read halts apply instead of being skipped (no silent
/// divergence).
pub(crate) fn decode_entry(
    entry: &Entry,
) -> Result<(Origin, nexus_core::state::Command), StoreError> {
    let ctx = ProposalContext::decode(&entry.context[..])
        .map_err(|e| StoreError::Corrupt("entry context", format!("{}: {e}", entry.index)))?;
    let needs = ctx.log_version.max(1);
    if needs > codec::LOG_VERSION {
        return Err(StoreError::TooNew(format!(
            "log entry {} needs log format {needs}; this build reads formats up to {}",
            entry.index,
            codec::LOG_VERSION
        )));
    }
    let cmd = codec::decode_command(&entry.data)
        .map_err(|e| StoreError::Corrupt("command", format!("index {}: {e}", entry.index)))?;
    let origin = Origin {
        node_id: RaftId(ctx.node_id),
        generation: ctx.generation,
        proposal_id: ctx.proposal_id,
        clock_ms: ctx.clock_ms,
    };
    Ok((origin, cmd))
}

/// A snapshot written by a build from before cluster identities has none: the state takes
/// the one the store kept, so that every node's state names its cluster alike.
fn keep_identity(storage: &RaftStorage, state: &mut State) -> Result<(), StoreError> {
    if state.cluster.id.is_empty() {
        if let Some(id) = storage.cluster_id()? {
            state.cluster.id = id;
        }
    }
    Ok(())
}

/// A state snapshot this build cannot read: from a newer version, or damaged.
pub(crate) fn snapshot_error(e: codec::DecodeError) -> StoreError {
    if e.is_too_new() {
        StoreError::TooNew(e.to_string())
    } else {
        StoreError::Corrupt("state snapshot", e.to_string())
    }
}

impl Driver {
    /// A driver on `storage`, `state` restored from its stored snapshot.
    fn new(
        storage: RaftStorage,
        me: Identity,
        state: Arc<RwLock<State>>,
        events: EventSink,
        cfg: RaftConfig,
        peers: Option<Arc<dyn Peers>>,
    ) -> Result<(Driver, Arc<RaftStats>), StoreError> {
        let mut applied = 0;
        let mut snapshot_bytes = 0;
        if let Some(snap) = storage.stored_snapshot()? {
            snapshot_bytes = snap.data.len() as u64;
            let mut restored = State::from_snapshot(&snap.data).map_err(snapshot_error)?;
            keep_identity(&storage, &mut restored)?;
            *state.write().unwrap_or_else(|e| e.into_inner()) = restored;
            applied = snap.get_metadata().index;
            info!(index = applied, "restored state from snapshot");
        }
        let raft_cfg = raft::Config {
            id: me.raft_id.0,
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
        let stats = Arc::new(RaftStats::default());
        stats.timings.snapshot_bytes.set(snapshot_bytes as i64);
        let reads = Reads::new(me.raft_id.0);
        let driver = Driver {
            raw,
            storage,
            me,
            state,
            events,
            peers,
            waiters: HashMap::new(),
            unsent: VecDeque::new(),
            staged: Vec::new(),
            reads,
            next_proposal: 0,
            snapshots: Snapshotter::new(applied, snapshot_bytes),
            cfg,
            stats: stats.clone(),
            term: 0,
            clock: ClusterClock::new(0),
            last_promote: Instant::now(),
            transfer: None,
            last_disk_transfer: Instant::now(),
        };
        driver.publish_membership();
        driver.announce_peers();
        Ok((driver, stats))
    }
}

struct Driver {
    raw: RawNode<RaftStorage>,
    storage: RaftStorage,
    me: Identity,
    state: Arc<RwLock<State>>,
    events: EventSink,
    peers: Option<Arc<dyn Peers>>,
    waiters: HashMap<u64, proposals::Waiter>,
    unsent: VecDeque<proposals::Unsent>,
    /// This turn's proposals, appended together (leading only).
    staged: Vec<proposals::Staged>,
    reads: Reads,
    next_proposal: u64,
    /// Writes the state snapshots and compacts the log.
    snapshots: Snapshotter,
    cfg: RaftConfig,
    stats: Arc<RaftStats>,
    /// The term waiters were proposed in; a change fails them.
    term: u64,
    /// The cluster clock, and when to look for expired tasks.
    clock: ClusterClock,
    last_promote: Instant,
    /// A leadership transfer asked for at shutdown: answered when it ends or times out.
    transfer: Option<(oneshot::Sender<bool>, Instant)>,
    last_disk_transfer: Instant,
}

const RETRYABLE_TERM: &str =
    "raft leadership changed before the write was applied; its outcome is unknown, retry";

impl Driver {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        // A sole voter elects itself at once instead of waiting for an election timeout.
        if self.storage.conf_state().voters == [self.me.raft_id.0] {
            if let Err(e) = self.raw.campaign() {
                error!("raft campaign failed: {e}");
            }
        }
        let applied_clock = self.read_state(|s| s.cluster.clock_ms);
        self.clock.set_applied(applied_clock);
        let mut next_tick = Instant::now() + self.cfg.tick;
        let mut shutdown = None;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut msgs = Vec::new();
            match rx.recv_timeout(wait) {
                Ok(msg) => {
                    msgs.push(msg);
                    // Group commit: take everything else already queued into this turn.
                    while msgs.len() < self.cfg.max_batch {
                        match rx.try_recv() {
                            Ok(msg) => msgs.push(msg),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let tick = Instant::now() >= next_tick;
            if tick {
                next_tick = Instant::now() + self.cfg.tick;
            }
            if let Err(e) = self.turn(msgs, tick, &mut shutdown) {
                self.fail_waiters("storage failure");
                // An entry or snapshot from a newer version: stop without a restart loop
                // (the refusal status), the data dir untouched for the right build.
                if let StoreError::TooNew(_) = e {
                    error!("{e}");
                    eprintln!("nexus: {e}");
                    // SAFETY: ends the process at once, as `fail_stop` does.
                    unsafe { libc::_exit(crate::store::datadir::REFUSED_EXIT_CODE.into()) }
                }
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
            if let Some(done) = shutdown.take() {
                let _ = done.send(());
                break;
            }
        }
        if let Err(e) = self.snapshots.finish(true, &self.stats) {
            error!("state snapshot failed at shutdown: {e}");
        }
        self.fail_waiters("node is shutting down");
        self.reads.fail_all("node is shutting down");
        info!("raft driver stopped");
    }

    /// One turn of the loop: `msgs` (up to a shutdown), a raft tick if `tick`, then
    /// whatever raft has ready (persist, send, apply). Err: the store failed.
    fn turn(
        &mut self,
        msgs: Vec<Msg>,
        tick: bool,
        shutdown: &mut Option<oneshot::Sender<()>>,
    ) -> Result<(), StoreError> {
        for msg in msgs {
            // Messages queued behind a shutdown are dropped with the channel.
            if shutdown.is_none() {
                self.handle(msg, shutdown);
            }
        }
        if tick {
            self.raw.tick();
            self.on_tick();
        }
        for ctx in self.reads.take_requests() {
            self.raw.read_index(ctx);
        }
        self.append_staged();
        self.on_ready()?;
        self.after_turn();
        Ok(())
    }

    /// Whether this node leads; starts or stops the cluster clock with its role (as soon
    /// as it leads, so a proposal stamped in the turn it was elected gets the clock).
    fn track_leadership(&mut self) -> bool {
        let leading = self.is_leader();
        if self.clock.follow_role(leading) {
            info!(term = self.raw.raft.term, "this node leads the cluster");
        }
        leading
    }

    fn read_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn handle(&mut self, msg: Msg, shutdown: &mut Option<oneshot::Sender<()>>) {
        match msg {
            Msg::Propose {
                data,
                log_version,
                reply,
            } => self.propose_local(data, log_version, reply),
            Msg::Read { reply } => self.reads.add(reply),
            Msg::Raft { from, msg } => {
                // Entries this node could not store wait in memory: take none while the
                // disk is below its reserve (the leader retries once this node answers).
                if msg.get_msg_type() == raft::eraftpb::MessageType::MsgAppend
                    && self.cfg.disk.is_low()
                {
                    return;
                }
                if msg.from != from.0 {
                    warn!(
                        %from,
                        claimed = msg.from,
                        "dropping a raft message with a forged sender"
                    );
                    return;
                }
                // Peers forward proposals as `Forward` frames, which the leader stamps and
                // checks; a raw one would skip both.
                if msg.get_msg_type() == raft::eraftpb::MessageType::MsgPropose {
                    warn!(%from, "dropping a raft proposal sent by a peer");
                    return;
                }
                if let Err(e) = self.raw.step(*msg) {
                    debug!(%from, "raft step: {e}");
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
            Msg::Unreachable { to } => self.raw.report_unreachable(to.0),
            Msg::SnapshotDone { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to.0, status);
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
            Msg::CopyState { reply } => {
                let applied = self.raw.raft.raft_log.applied;
                let _ = reply.send((applied, self.read_state(State::clone)));
            }
            Msg::Shutdown(done) => *shutdown = Some(done),
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
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
        self.maybe_expire();
        self.leave_leadership_if_disk_low();
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
        let leading = self.track_leadership();
        if self.raw.raft.leader_id != 0 && !self.unsent.is_empty() {
            for p in std::mem::take(&mut self.unsent) {
                self.submit(p);
            }
            self.append_staged();
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
            peers.send_raft(RaftId(m.to), m);
        }
    }

    /// Replaces the state with a snapshot from the leader. Proposals it may cover cannot
    /// be told apart from lost ones: they fail (retryable), and the node reconciles its
    /// waiting pushes and pulls against the new state.
    fn install_snapshot(&mut self, snap: &raft::eraftpb::Snapshot) -> Result<(), StoreError> {
        // An older snapshot still being written must not land after this one.
        self.snapshots.finish(true, &self.stats)?;
        // Read before it is stored: one this build cannot read leaves the store as it was.
        let mut restored = State::from_snapshot(&snap.data).map_err(snapshot_error)?;
        self.storage.apply_snapshot(snap)?;
        keep_identity(&self.storage, &mut restored)?;
        self.clock.set_applied(restored.cluster.clock_ms);
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = restored;
        self.snapshots
            .installed(snap.get_metadata().index, snap.data.len() as u64);
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
                self.snapshots
                    .applied((entry.data.len() + entry.context.len()) as u64);
                match entry.get_entry_type() {
                    EntryType::EntryNormal if entry.data.is_empty() => {}
                    EntryType::EntryNormal => {
                        let (origin, cmd) = decode_entry(entry)?;
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
            self.clock.set_applied(state.cluster.clock_ms);
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

    /// Lets the snapshotter write a snapshot when one is due (not while the disk is low).
    fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        self.snapshots.finish(false, &self.stats)?;
        if self.snapshots.is_writing() || self.cfg.disk.is_low() {
            return Ok(());
        }
        let applied = self.raw.raft.raft_log.applied;
        let wanted = self.storage.take_snapshot_wanted();
        let state = &self.state;
        self.snapshots
            .maybe_start(applied, wanted, &self.cfg, &self.storage, || {
                state.read().unwrap_or_else(|e| e.into_inner()).clone()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(log_version: u32, data: Vec<u8>) -> Entry {
        let ctx = ProposalContext {
            node_id: 1,
            proposal_id: 1,
            log_version,
            ..Default::default()
        };
        Entry {
            index: 9,
            context: ctx.encode_to_vec().into(),
            data: data.into(),
            ..Default::default()
        }
    }

    /// An entry that needs a newer log format is refused as too new, naming the format it
    /// needs; an entry of this build's format that does not decode is damage.
    #[test]
    fn entries_from_newer_versions_are_refused_by_the_version_they_need() {
        let cmd = codec::encode_command(nexus_core::state::Command::Expire {});
        assert!(decode_entry(&entry(codec::LOG_VERSION, cmd.clone())).is_ok());
        assert!(
            decode_entry(&entry(0, cmd.clone())).is_ok(),
            "0: a build before versions"
        );
        let newer = codec::LOG_VERSION + 1;
        match decode_entry(&entry(newer, cmd)) {
            Err(e @ StoreError::TooNew(_)) => {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("entry 9 needs log format {newer}")),
                    "{text}"
                );
                assert!(text.contains("Upgrade this node"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        let garbage = entry(codec::LOG_VERSION, vec![0xff, 0xff, 0xff]);
        assert!(matches!(
            decode_entry(&garbage),
            Err(StoreError::Corrupt(..))
        ));
        // A snapshot of a newer format is refused the same way.
        let mut snap = State::default().to_snapshot();
        snap[3] = 3;
        let e = snapshot_error(State::from_snapshot(&snap).unwrap_err());
        assert!(matches!(e, StoreError::TooNew(_)), "{e}");
        assert!(e.to_string().contains("needs snapshot format 3"), "{e}");
    }

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
