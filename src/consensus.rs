//! The Raft driver: one raft-rs `RawNode` on its own thread, its log in RocksDB, the state
//! machine applied as entries commit. Proposals queue on a channel and every proposal
//! waiting when the loop turns goes into the same fsync'd write (group commit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeV2, Entry, EntryType};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::proto::ProposalContext;
use crate::rpc::RpcError;
use crate::state::{Command, Event, Outcome, State};
use crate::store::{RaftStorage, RaftWrite, StoreError};

/// Tuning of the Raft driver.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub tick: Duration,
    /// Applied entries between two state snapshots (which also compact the log).
    pub snapshot_every: u64,
    /// Most proposals taken into one write.
    pub max_batch: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick: Duration::from_millis(100),
            snapshot_every: 10_000,
            max_batch: 4096,
        }
    }
}

enum Msg {
    Propose {
        cmd: Box<Command>,
        reply: oneshot::Sender<Outcome>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Counters a benchmark or test can read.
#[derive(Default, Debug)]
pub struct RaftStats {
    /// fsync'd log writes.
    pub synced_writes: AtomicU64,
    /// Entries applied to the state machine.
    pub applied: AtomicU64,
    pub snapshots: AtomicU64,
    /// Whether this node currently leads (it then proposes deadline expiries).
    pub leader: std::sync::atomic::AtomicBool,
}

/// Receives what each applied batch changed. Called on the Raft thread, after the state
/// lock is released: it must only hand work on (wake a waiter, message an actor).
pub type EventSink = Arc<dyn Fn(Vec<Event>) + Send + Sync>;

/// The handle the rest of the node uses to change durable state.
#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Msg>,
    pub stats: Arc<RaftStats>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl RaftHandle {
    /// Proposes `cmd` and waits until it is committed and applied; answers its outcome.
    pub async fn propose(&self, cmd: Command) -> Outcome {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Propose {
                cmd: Box::new(cmd),
                reply,
            })
            .map_err(|_| RpcError::internal("node is shutting down"))?;
        rx.await
            .map_err(|_| RpcError::internal("proposal was not applied"))?
    }

    /// Proposes without waiting for the outcome (teardown paths).
    pub fn propose_detached(&self, cmd: Command) {
        let (reply, _rx) = oneshot::channel();
        let _ = self.tx.send(Msg::Propose {
            cmd: Box::new(cmd),
            reply,
        });
    }

    /// Stops the driver after it has written what it holds.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        // Joining releases the database (and its lock) before we return.
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Starts the driver thread. `state` is restored from the stored snapshot first.
pub fn start(
    storage: RaftStorage,
    raft_id: u64,
    incarnation: String,
    state: Arc<RwLock<State>>,
    events: EventSink,
    cfg: RaftConfig,
) -> Result<RaftHandle, StoreError> {
    let mut applied = 0;
    if let Some(snap) = storage.stored_snapshot()? {
        let restored = State::from_snapshot(&snap.data)
            .map_err(|e| StoreError::Corrupt("state snapshot", e.to_string()))?;
        *state.write().unwrap_or_else(|e| e.into_inner()) = restored;
        applied = snap.get_metadata().index;
        info!(index = applied, "restored state from snapshot");
    }
    let raft_cfg = raft::Config {
        id: raft_id,
        election_tick: 10,
        heartbeat_tick: 3,
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
    let logger = crate::telemetry::raft_logger();
    let raw = RawNode::new(&raft_cfg, storage.clone(), &logger)
        .map_err(|e| StoreError::Corrupt("raft state", e.to_string()))?;
    let (tx, rx) = mpsc::channel();
    let stats = Arc::new(RaftStats::default());
    let mut driver = Driver {
        raw,
        storage,
        raft_id,
        incarnation,
        state,
        events,
        waiters: HashMap::new(),
        next_proposal: 0,
        last_snapshot: applied,
        cfg,
        stats: stats.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || driver.run(rx))
        .map_err(|e| StoreError::Corrupt("raft thread", e.to_string()))?;
    Ok(RaftHandle {
        tx,
        stats,
        thread: Arc::new(std::sync::Mutex::new(Some(thread))),
    })
}

struct Driver {
    raw: RawNode<RaftStorage>,
    storage: RaftStorage,
    raft_id: u64,
    incarnation: String,
    state: Arc<RwLock<State>>,
    events: EventSink,
    waiters: HashMap<u64, oneshot::Sender<Outcome>>,
    next_proposal: u64,
    last_snapshot: u64,
    cfg: RaftConfig,
    stats: Arc<RaftStats>,
}

impl Driver {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        // A sole voter elects itself at once instead of waiting for an election timeout.
        let voters = self.storage.conf_state().voters;
        if voters == [self.raft_id] {
            if let Err(e) = self.raw.campaign() {
                error!("raft campaign failed: {e}");
            }
        }
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
            }
            if let Err(e) = self.on_ready() {
                // The log cannot be written (disk full, I/O error): nothing this node
                // acknowledges could be trusted. Fail every waiter and exit so that the
                // supervisor restarts the node and it recovers from what is on disk.
                error!("raft storage failure, exiting: {e}");
                self.fail_waiters("storage failure");
                std::process::exit(70);
            }
            self.stats
                .leader
                .store(self.raw.raft.state == StateRole::Leader, Ordering::Relaxed);
            if let Some(done) = shutdown.take() {
                let _ = done.send(());
                break;
            }
        }
        self.fail_waiters("node is shutting down");
        info!("raft driver stopped");
    }

    fn fail_waiters(&mut self, why: &str) {
        for (_, w) in self.waiters.drain() {
            let _ = w.send(Err(RpcError::internal(why)));
        }
    }

    fn handle(&mut self, msg: Msg, shutdown: &mut Option<oneshot::Sender<()>>) {
        match msg {
            Msg::Propose { cmd, reply } => self.propose(cmd, reply),
            Msg::Shutdown(done) => *shutdown = Some(done),
        }
    }

    fn propose(&mut self, cmd: Box<Command>, reply: oneshot::Sender<Outcome>) {
        if self.raw.raft.state != StateRole::Leader {
            // Forwarding to the leader arrives with the cluster; until then say so plainly.
            let _ = reply.send(Err(RpcError::internal("no raft leader, retry")));
            return;
        }
        self.next_proposal += 1;
        let id = self.next_proposal;
        let ctx = ProposalContext {
            node_id: self.raft_id,
            proposal_id: id,
            incarnation: self.incarnation.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        let data = match serde_json::to_vec(&cmd) {
            Ok(d) => d,
            Err(e) => {
                let _ = reply.send(Err(RpcError::internal(e)));
                return;
            }
        };
        match self.raw.propose(ctx, data) {
            Ok(()) => {
                self.waiters.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(RpcError::internal(format!(
                    "proposal dropped ({e}), retry"
                ))));
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), StoreError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.send_messages(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.storage.apply_snapshot(&snap)?;
            let restored = State::from_snapshot(&snap.data)
                .map_err(|e| StoreError::Corrupt("state snapshot", e.to_string()))?;
            *self.state.write().unwrap_or_else(|e| e.into_inner()) = restored;
            self.last_snapshot = snap.get_metadata().index;
        }
        self.apply_entries(ready.take_committed_entries())?;
        let hs = ready.hs().cloned();
        if !ready.entries().is_empty() || hs.is_some() {
            self.storage.write(RaftWrite {
                entries: ready.entries(),
                hard_state: hs.as_ref(),
                conf_state: None,
                sync: true,
            })?;
            self.stats.synced_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.send_messages(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.storage.set_commit(commit)?;
        }
        self.send_messages(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_snapshot()
    }

    fn send_messages(&mut self, msgs: Vec<raft::eraftpb::Message>) {
        // A single-voter cluster has no peers; the peer transport arrives with the cluster.
        for m in msgs {
            debug!(to = m.to, kind = ?m.get_msg_type(), "dropping raft message: no peer transport");
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut all_events = Vec::new();
        let mut answers = Vec::new();
        {
            let state_lock = self.state.clone();
            let mut state = state_lock.write().unwrap_or_else(|e| e.into_inner());
            for entry in &entries {
                self.stats.applied.fetch_add(1, Ordering::Relaxed);
                match entry.get_entry_type() {
                    EntryType::EntryNormal if entry.data.is_empty() => {}
                    EntryType::EntryNormal => {
                        let outcome = match serde_json::from_slice::<Command>(&entry.data) {
                            Ok(cmd) => {
                                let (outcome, events) = state.apply(cmd);
                                all_events.extend(events);
                                outcome
                            }
                            Err(e) => {
                                // Deterministic on every node: the same bytes fail everywhere.
                                warn!(index = entry.index, "undecodable command skipped: {e}");
                                Err(RpcError::internal("undecodable command"))
                            }
                        };
                        answers.push((entry.context.clone(), outcome));
                    }
                    EntryType::EntryConfChange => {
                        let mut cc = ConfChange::default();
                        cc.merge_from_bytes(&entry.data)
                            .map_err(|e| StoreError::Corrupt("conf change", e.to_string()))?;
                        self.apply_conf_change(&cc)?;
                    }
                    EntryType::EntryConfChangeV2 => {
                        let mut cc = ConfChangeV2::default();
                        cc.merge_from_bytes(&entry.data)
                            .map_err(|e| StoreError::Corrupt("conf change", e.to_string()))?;
                        self.apply_conf_change(&cc)?;
                    }
                }
            }
        }
        for (ctx, outcome) in answers {
            let Ok(ctx) = ProposalContext::decode(&ctx[..]) else {
                continue;
            };
            if ctx.node_id == self.raft_id && ctx.incarnation == self.incarnation {
                if let Some(w) = self.waiters.remove(&ctx.proposal_id) {
                    let _ = w.send(outcome);
                }
            }
        }
        if !all_events.is_empty() {
            (self.events)(all_events);
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, cc: &impl raft_proto::ConfChangeI) -> Result<(), StoreError> {
        let cs = self
            .raw
            .apply_conf_change(cc)
            .map_err(|e| StoreError::Corrupt("conf change", e.to_string()))?;
        self.storage.write(RaftWrite {
            conf_state: Some(&cs),
            sync: true,
            ..Default::default()
        })
    }

    fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        let applied = self.raw.raft.raft_log.applied;
        if applied < self.last_snapshot + self.cfg.snapshot_every {
            return Ok(());
        }
        let data = self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .to_snapshot();
        self.storage.compact_to_snapshot(applied, data)?;
        self.last_snapshot = applied;
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        debug!(index = applied, "state snapshot written, log compacted");
        Ok(())
    }
}
