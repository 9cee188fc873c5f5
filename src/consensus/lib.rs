//! The Raft layer: one raft-rs `RawNode` driven on its own thread (`driver`), its log in
//! RocksDB (`store`), the state machine applied as entries commit. The rest of the
//! node talks to it through `RaftHandle`; peers reach it through `Peers` (the cluster's
//! transport implements it).

pub mod clock;
mod driver;
mod raft_log;
mod reads;
pub mod recovery;
pub mod store;
pub mod timings;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::Duration;

use raft::eraftpb::Message as RaftMessage;
use tokio::sync::oneshot;

pub use nexus_core::ids::RaftId;
use nexus_core::proto::{Forward, ForwardResult, Frame, JoinResponse};
use nexus_core::rpc::RpcError;
use nexus_core::state::{codec, Command, Event, Outcome, State};

pub use driver::start;

/// Tuning of the Raft driver.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub tick: Duration,
    /// Ticks without a leader's heartbeat before a follower campaigns.
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Applied entries between two state snapshots (which also compact the log).
    pub snapshot_every: u64,
    /// ...and not before the log applied since the last snapshot reaches this percentage
    /// of that snapshot's size.
    pub snapshot_log_percent: u64,
    /// Entries kept in the log behind a snapshot, so a follower briefly behind catches up
    /// from the log instead of needing a snapshot.
    pub log_retain: u64,
    /// Most proposals taken into one write.
    pub max_batch: usize,
    /// A proposal not applied within this time fails (retryable).
    pub proposal_timeout: Duration,
    /// A linearizable read not confirmed within this time fails (retryable).
    pub read_timeout: Duration,
    /// How often the leader checks task and pull deadlines.
    pub expire_tick: Duration,
    /// Members beyond this many voters stay learners.
    pub max_voters: usize,
    /// Test only: each applied batch is held back this long (a slow node).
    #[cfg(feature = "test-hooks")]
    pub test_apply_delay: Duration,
    /// Writes wait while the data dir's disk is below its reserve.
    pub disk: crate::store::space::DiskGuard,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_every: 10_000,
            snapshot_log_percent: 100,
            log_retain: 5_000,
            max_batch: 4096,
            proposal_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            expire_tick: Duration::from_millis(100),
            max_voters: 5,
            #[cfg(feature = "test-hooks")]
            test_apply_delay: Duration::ZERO,
            disk: Default::default(),
        }
    }
}

/// Who this process is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub raft_id: RaftId,
    /// 8 hex chars, the prefix of every connid of this process.
    pub incarnation: String,
    /// Grows at every start of this node (persisted counter).
    pub generation: u64,
}

/// How the driver reaches the other members (the cluster transport). Every call returns at
/// once: raft retransmits what a full queue drops.
pub trait Peers: Send + Sync + 'static {
    fn send(&self, to: RaftId, frame: Frame);
    /// A raft message; a snapshot may go in chunks.
    fn send_raft(&self, to: RaftId, msg: RaftMessage);
    /// Where member `id` listens (from the replicated member table).
    fn set_peer(&self, id: RaftId, addr: &str);
    fn remove_peer(&self, id: RaftId);
}

/// What the driver's thread is asked to do.
pub enum Msg {
    /// A command, already encoded (proto/log.proto) by the proposing task.
    Propose {
        data: Vec<u8>,
        /// The log format the command needs (`Command::log_version`).
        log_version: u32,
        reply: oneshot::Sender<Outcome>,
    },
    /// A linearizable read barrier: answered once this node applied everything committed
    /// before the read started.
    Read {
        reply: oneshot::Sender<Result<(), RpcError>>,
    },
    /// A raft message from an authenticated peer.
    Raft {
        from: RaftId,
        msg: Box<RaftMessage>,
    },
    /// A follower's proposal, for the leader to stamp and append.
    Forwarded {
        from: RaftId,
        fwd: Forward,
    },
    /// The leader could not append one of our forwarded proposals.
    ForwardFailed(ForwardResult),
    Unreachable {
        to: RaftId,
    },
    SnapshotDone {
        to: RaftId,
        ok: bool,
    },
    /// A new node asks to become a member.
    Join {
        raft_id: RaftId,
        addr: String,
        /// Replace the member at `addr` (a rebuilt node's old raft id).
        replace: bool,
        reply: oneshot::Sender<JoinResponse>,
    },
    /// An admin removes a member.
    Remove {
        raft_id: RaftId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Graceful stop: hand leadership to another voter first; answers whether this node
    /// no longer leads.
    TransferLeadership {
        reply: oneshot::Sender<bool>,
    },
    /// A copy of the applied state and the index it is at (a backup).
    CopyState {
        reply: oneshot::Sender<(u64, State)>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Receives what each applied batch changed. Called on the Raft thread, after the state
/// lock is released: it must only hand work on (wake a waiter, message an actor).
pub type EventSink = Arc<dyn Fn(Vec<Event>) + Send + Sync>;

/// This node's role, as `sys.node.list` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Not (yet) in the cluster's configuration.
    None = 0,
    Follower = 1,
    Candidate = 2,
    Leader = 3,
    Learner = 4,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Learner => "learner",
            Role::None => "joining",
        }
    }

    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Follower,
            2 => Role::Candidate,
            3 => Role::Leader,
            4 => Role::Learner,
            _ => Role::None,
        }
    }
}

/// What the driver publishes about itself (health, node list, benchmarks).
#[derive(Default, Debug)]
pub struct RaftStats {
    /// fsync'd log writes.
    pub synced_writes: AtomicU64,
    /// Entries applied to the state machine.
    pub applied: AtomicU64,
    /// Only through `set_applied`, which also wakes the waiters.
    applied_index: AtomicU64,
    /// The applied index, for tasks that wait for it (`wait_applied`).
    applied_watch: tokio::sync::watch::Sender<u64>,
    pub commit_index: AtomicU64,
    pub snapshots: AtomicU64,
    pub term: AtomicU64,
    /// The leader this node knows (0: none).
    pub leader_id: AtomicU64,
    role: AtomicU8,
    /// Voters and learners of the current configuration.
    pub membership: RwLock<(Vec<RaftId>, Vec<RaftId>)>,
    /// When a Raft message from the leader last arrived (`process_ms` clock).
    leader_contact_ms: AtomicU64,
    /// When a Raft message from each peer last arrived (`process_ms` clock).
    peer_contact_ms: RwLock<std::collections::HashMap<RaftId, u64>>,
    /// Latencies and sizes for `/metrics`.
    pub timings: crate::timings::RaftTimings,
}

/// Milliseconds since this process started (a monotonic clock for the stats).
pub fn process_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl RaftStats {
    /// The index this node has applied the log up to.
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Relaxed)
    }

    /// The highest index this node knows to be committed.
    pub fn commit_index(&self) -> u64 {
        self.commit_index.load(Ordering::Relaxed)
    }

    /// Records the applied index (it only grows) and wakes the tasks waiting for it.
    pub fn set_applied(&self, index: u64) {
        // Called after every driver turn: the watch (a lock) only when the index grew. The
        // driver thread is the only writer, so the two cannot disagree.
        if self.applied_index.fetch_max(index, Ordering::Relaxed) < index {
            self.applied_watch.send_replace(index);
        }
    }

    /// Waits until this node has applied the log up to `index`; false when `within`
    /// passed first.
    pub async fn wait_applied(&self, index: u64, within: Duration) -> bool {
        let mut rx = self.applied_watch.subscribe();
        let reached = tokio::time::timeout(within, rx.wait_for(|a| *a >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    fn set_role(&self, r: Role) {
        self.role.store(r as u8, Ordering::Relaxed);
    }

    pub fn leader(&self) -> Option<RaftId> {
        match self.leader_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(RaftId(id)),
        }
    }

    pub fn touch_leader_contact(&self) {
        self.leader_contact_ms
            .store(process_ms(), Ordering::Relaxed);
    }

    /// The latest time by which a majority of the voters (this node `me` counting as heard
    /// now) had been heard from: during an election voters still reach each other through
    /// their votes, and a leader hears every follower's heartbeat answers; only a node cut
    /// off from most of them falls behind.
    fn majority_contact_ms(&self, me: RaftId) -> u64 {
        let voters = self
            .membership
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone();
        if voters.is_empty() {
            return 0;
        }
        let now = process_ms();
        let mut heard: Vec<u64> = voters
            .iter()
            .map(|v| {
                if *v == me {
                    now
                } else {
                    self.peer_contact_ms(*v)
                }
            })
            .collect();
        heard.sort_unstable_by(|a, b| b.cmp(a));
        heard[voters.len() / 2]
    }

    /// A Raft message from `peer` arrived (called by the transport, before it is queued
    /// for the Raft thread).
    pub fn touch_peer_contact(&self, peer: RaftId) {
        self.peer_contact_ms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, process_ms());
    }

    /// When a Raft message from `peer` last arrived (`process_ms` clock; 0: never).
    pub fn peer_contact_ms(&self, peer: RaftId) -> u64 {
        self.peer_contact_ms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .copied()
            .unwrap_or(0)
    }

    /// How long since this node (`me`) last knew itself part of a working majority: it
    /// heard from the leader, or from a majority of the voters. Contact is recorded as
    /// frames arrive from the transport, so a busy Raft thread does not count as cut off.
    pub fn since_quorum_contact(&self, me: RaftId) -> Duration {
        let last = self
            .leader_contact_ms
            .load(Ordering::Relaxed)
            .max(self.majority_contact_ms(me));
        Duration::from_millis(process_ms().saturating_sub(last))
    }

    /// Ready to serve: a leader is known and apply is not far behind the commit index.
    pub fn ready(&self) -> Result<(), String> {
        if self.leader().is_none() {
            return Err("no raft leader known".into());
        }
        let commit = self.commit_index();
        let applied = self.applied_index();
        if commit > applied + 1000 {
            return Err(format!("apply lags: applied {applied} of {commit}"));
        }
        Ok(())
    }
}

/// The handle the rest of the node uses to change durable state.
#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Msg>,
    pub stats: Arc<RaftStats>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl RaftHandle {
    /// Proposes `cmd` and waits until this node applied it; answers its outcome. Fails
    /// (retryable) on leader change, lost proposal or timeout: it never hangs.
    pub async fn propose(&self, cmd: Command) -> Outcome {
        let start = std::time::Instant::now();
        let (reply, rx) = oneshot::channel();
        if !self.deliver(Msg::Propose {
            log_version: cmd.log_version(),
            data: codec::encode_command(cmd),
            reply,
        }) {
            return Err(RpcError::internal("node is shutting down"));
        }
        let outcome = rx
            .await
            .map_err(|_| RpcError::internal("proposal was not applied"))?;
        let took = start.elapsed().as_secs_f64();
        self.stats.timings.proposal_seconds.observe(took);
        outcome
    }

    /// Waits until this node's applied state includes every write acknowledged anywhere
    /// before the call (Raft ReadIndex).
    pub async fn read_barrier(&self) -> Result<(), RpcError> {
        let (reply, rx) = oneshot::channel();
        if !self.deliver(Msg::Read { reply }) {
            return Err(RpcError::internal("node is shutting down"));
        }
        rx.await
            .map_err(|_| RpcError::internal("read was not confirmed"))?
    }

    /// The applied state and the committed index it is at, taken after a read barrier:
    /// it holds every write acknowledged anywhere before the call. The copy is made on the
    /// Raft thread between two batches, as for a snapshot; writes go on meanwhile.
    pub async fn copy_state(&self) -> Result<(u64, State), RpcError> {
        self.read_barrier().await?;
        let (reply, rx) = oneshot::channel();
        if !self.deliver(Msg::CopyState { reply }) {
            return Err(RpcError::internal("node is shutting down"));
        }
        rx.await
            .map_err(|_| RpcError::internal("node is shutting down"))
    }

    /// Hands a message to the driver thread (callable from any thread); false once the
    /// driver has stopped.
    pub fn deliver(&self, msg: Msg) -> bool {
        self.tx.send(msg).is_ok()
    }

    /// Removes a member from the Raft configuration (this node must lead: the answer says
    /// "not the leader" otherwise). Answers once the change is proposed.
    pub async fn remove_member(&self, raft_id: RaftId) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        if !self.deliver(Msg::Remove { raft_id, reply }) {
            return Err("node is shutting down".into());
        }
        rx.await
            .unwrap_or_else(|_| Err("node is shutting down".into()))
    }

    /// Asks for a graceful leadership handover; true when this node no longer leads.
    pub async fn transfer_leadership(&self) -> bool {
        let (reply, rx) = oneshot::channel();
        if !self.deliver(Msg::TransferLeadership { reply }) {
            return true;
        }
        rx.await.unwrap_or(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_applied_answers_at_once_when_reached_and_only_ever_grows() {
        let stats = RaftStats::default();
        stats.set_applied(7);
        assert!(stats.wait_applied(7, Duration::ZERO).await);
        assert!(stats.wait_applied(3, Duration::ZERO).await);
        // An older index never moves it back.
        stats.set_applied(5);
        assert_eq!(stats.applied_index(), 7);
    }

    #[tokio::test]
    async fn wait_applied_wakes_when_the_index_is_reached_or_gives_up() {
        let stats = Arc::new(RaftStats::default());
        stats.set_applied(1);
        assert!(!stats.wait_applied(2, Duration::from_millis(20)).await);
        let waiting = tokio::spawn({
            let stats = stats.clone();
            async move { stats.wait_applied(10, Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        stats.set_applied(9);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "9 is not 10");
        stats.set_applied(12);
        assert!(waiting.await.unwrap());
    }
}
