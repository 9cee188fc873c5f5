//! An in-process cluster for tests: real drivers (raft-rs, RocksDB stores on tmpfs, the
//! state machine) stepped by hand, with no thread and no timer. Their messages travel on a
//! simulated network that a schedule partitions, drops, delays and reorders, and nodes
//! crash and restart on their data dirs. proptest draws the schedules and shrinks a
//! failing one to a short list of steps.
//!
//! The schedule and every delivery are the test's; raft-rs still draws each election
//! timeout from its own random source, so two runs of one schedule may elect differently.
//! The process-level tests (`tests/cluster.rs`, the chaos harness) remain the proof over
//! real sockets; this one covers many more interleavings per second.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use proptest::prelude::*;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use raft::StateRole;
use tokio::sync::oneshot;

use nexus_core::ids::RaftId;
use nexus_core::proto::{frame, Frame};
use nexus_core::state::{codec, Command, Event, Outcome, State};

use super::Driver;
use crate::{Identity, Msg, Peers, RaftConfig};

/// What a node sent, waiting on the simulated network.
#[derive(Debug)]
struct Packet {
    from: u64,
    to: u64,
    body: Body,
}

#[derive(Debug)]
enum Body {
    Raft(RaftMessage),
    Frame(Frame),
}

/// Every node's outbox: the harness decides when, and whether, each packet arrives.
#[derive(Default)]
struct Net {
    sent: Mutex<Vec<Packet>>,
}

/// The `Peers` of one simulated node.
struct SimPeers {
    me: u64,
    net: Arc<Net>,
}

impl Peers for SimPeers {
    fn send(&self, to: RaftId, frame: Frame) {
        let p = Packet {
            from: self.me,
            to: to.0,
            body: Body::Frame(frame),
        };
        self.net.sent.lock().unwrap().push(p);
    }

    fn send_raft(&self, to: RaftId, msg: RaftMessage) {
        let p = Packet {
            from: self.me,
            to: to.0,
            body: Body::Raft(msg),
        };
        self.net.sent.lock().unwrap().push(p);
    }

    fn set_peer(&self, _: RaftId, _: &str) {}

    fn remove_peer(&self, _: RaftId) {}
}

struct Node {
    id: u64,
    dir: PathBuf,
    /// None while crashed.
    driver: Option<Driver>,
    state: Arc<RwLock<State>>,
    /// Snapshots from a leader installed here (`Event::StateReplaced`).
    installs: Arc<AtomicU64>,
}

/// One step of a schedule. Node and packet numbers are taken modulo what exists.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// A client writes a new user through this node.
    Propose(usize),
    /// The oldest packets in flight arrive (those on cut links are lost).
    Deliver(usize),
    /// One packet arrives out of order.
    DeliverOne(usize),
    /// One packet is lost.
    Lose(usize),
    /// One node's clock ticks.
    Tick(usize),
    /// Every node ticks.
    TickAll,
    /// The node is cut off from the others, both ways.
    Isolate(usize),
    Heal,
    /// kill -9: what the node did not write is gone, its data dir stays.
    Crash(usize),
    Restart(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize).prop_map(Step::Propose),
        6 => (1..20usize).prop_map(Step::Deliver),
        2 => any::<usize>().prop_map(Step::DeliverOne),
        1 => any::<usize>().prop_map(Step::Lose),
        2 => (0..3usize).prop_map(Step::Tick),
        4 => Just(Step::TickAll),
        1 => (0..3usize).prop_map(Step::Isolate),
        1 => Just(Step::Heal),
        1 => (0..3usize).prop_map(Step::Crash),
        2 => (0..3usize).prop_map(Step::Restart),
    ]
}

pub(super) struct Sim {
    nodes: Vec<Node>,
    net: Arc<Net>,
    in_flight: Vec<Packet>,
    /// Nodes cut off from the others.
    isolated: BTreeSet<u64>,
    /// Writes proposed and not yet answered, by user name.
    pending: Vec<(String, oneshot::Receiver<Outcome>)>,
    /// Writes answered Ok: every node must end with all of them.
    acknowledged: BTreeSet<String>,
    /// The leader seen in each term: never two.
    leaders: HashMap<u64, u64>,
    next_user: usize,
    _root: tempfile::TempDir,
}

fn config() -> RaftConfig {
    RaftConfig {
        election_ticks: 10,
        heartbeat_ticks: 2,
        // Small snapshots and a short log, so that catch-up by snapshot happens too.
        snapshot_every: 8,
        snapshot_log_percent: 0,
        log_retain: 2,
        // A forwarded write whose frame was lost is failed by this timeout (frames are not
        // retransmitted; raft messages are). It is the one clock the harness waits on.
        proposal_timeout: std::time::Duration::from_millis(50),
        ..RaftConfig::default()
    }
}

impl Sim {
    /// Three voters, bootstrapped together.
    pub(super) fn new() -> Sim {
        // tmpfs: fsync costs nothing, so thousands of turns take milliseconds.
        let root = match Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm"),
            false => tempfile::tempdir(),
        }
        .unwrap();
        let net = Arc::new(Net::default());
        let dirs: Vec<PathBuf> = (0..3).map(|i| root.path().join(format!("n{i}"))).collect();
        let ids: Vec<u64> = dirs
            .iter()
            .map(|d| {
                let opened = crate::store::open(d).unwrap();
                opened.raft_id.0
            })
            .collect();
        for d in &dirs {
            let opened = crate::store::open(d).unwrap();
            let mut initial = State::default();
            initial.cluster.members = ids
                .iter()
                .map(|id| (RaftId(*id), format!("sim:{id}")))
                .collect();
            opened
                .storage
                .bootstrap(&ids, initial.to_snapshot())
                .unwrap();
        }
        let nodes = ids
            .iter()
            .zip(dirs)
            .map(|(id, dir)| Node {
                id: *id,
                dir,
                driver: None,
                state: Arc::default(),
                installs: Arc::default(),
            })
            .collect();
        let mut sim = Sim {
            nodes,
            net,
            in_flight: Vec::new(),
            isolated: BTreeSet::new(),
            pending: Vec::new(),
            acknowledged: BTreeSet::new(),
            leaders: HashMap::new(),
            next_user: 0,
            _root: root,
        };
        for i in 0..3 {
            sim.restart(i);
        }
        sim
    }

    fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.driver.is_some() {
            return;
        }
        let opened = crate::store::open(&node.dir).unwrap();
        assert_eq!(opened.raft_id, RaftId(node.id));
        let me = Identity {
            raft_id: RaftId(node.id),
            incarnation: format!("{:08x}", opened.generation),
            generation: opened.generation,
        };
        node.state = Arc::default();
        let peers = SimPeers {
            me: node.id,
            net: self.net.clone(),
        };
        let installs = node.installs.clone();
        let events: crate::EventSink = Arc::new(move |events| {
            let replaced = events
                .iter()
                .filter(|e| **e == Event::StateReplaced)
                .count();
            installs.fetch_add(replaced as u64, Ordering::Relaxed);
        });
        let (driver, _stats) = Driver::new(
            opened.storage,
            me,
            node.state.clone(),
            events,
            config(),
            Some(Arc::new(peers)),
        )
        .unwrap();
        node.driver = Some(driver);
        self.turn(i, Vec::new(), false);
    }

    /// One loop turn of node `i`: `msgs`, a tick if asked, then its ready state.
    fn turn(&mut self, i: usize, msgs: Vec<Msg>, tick: bool) {
        let Some(driver) = self.nodes[i].driver.as_mut() else {
            return;
        };
        let mut shutdown = None;
        if let Err(e) = driver.turn(msgs, tick, &mut shutdown) {
            panic!("node {i}: the store failed: {e}");
        }
        // A snapshot is written on a helper thread: wait for it, so that when the log is
        // compacted depends on the schedule only, and no writer outlives its node.
        if let Err(e) = driver.snapshots.finish(true, &driver.stats) {
            panic!("node {i}: writing a snapshot failed: {e}");
        }
        self.collect();
    }

    /// Moves what the nodes sent onto the wire, and records each node leading.
    fn collect(&mut self) {
        self.in_flight.append(&mut self.net.sent.lock().unwrap());
        for node in &self.nodes {
            let Some(d) = &node.driver else { continue };
            if d.raw.raft.state == StateRole::Leader {
                let term = d.raw.raft.term;
                let other = self.leaders.insert(term, node.id);
                assert!(
                    other.is_none_or(|o| o == node.id),
                    "two leaders in term {term}: {other:?} and {}",
                    node.id
                );
            }
        }
    }

    fn index_of(&self, id: u64) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    fn cut(&self, p: &Packet) -> bool {
        self.isolated.contains(&p.from) != self.isolated.contains(&p.to)
            || self.isolated.len() > 1 && p.from != p.to
    }

    /// Hands one packet to its receiver, as the transport's event sink does.
    fn deliver(&mut self, p: Packet) {
        let to = self.index_of(p.to);
        let from = self.index_of(p.from);
        if self.cut(&p) || self.nodes[to].driver.is_none() {
            // A lost snapshot is reported failed to its sender, as the transport does.
            if let Body::Raft(m) = &p.body {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    let done = Msg::SnapshotDone {
                        to: RaftId(p.to),
                        ok: false,
                    };
                    self.turn(from, vec![done], false);
                }
            }
            return;
        }
        let msg = match p.body {
            Body::Raft(m) => {
                let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
                let msg = Msg::Raft {
                    from: RaftId(p.from),
                    msg: Box::new(m),
                };
                self.turn(to, vec![msg], false);
                if snapshot {
                    let done = Msg::SnapshotDone {
                        to: RaftId(p.to),
                        ok: true,
                    };
                    self.turn(from, vec![done], false);
                }
                return;
            }
            Body::Frame(Frame {
                body: Some(frame::Body::Forward(fwd)),
            }) => Msg::Forwarded {
                from: RaftId(p.from),
                fwd,
            },
            Body::Frame(Frame {
                body: Some(frame::Body::ForwardResult(r)),
            }) => Msg::ForwardFailed(r),
            Body::Frame(other) => panic!("the driver sent an unexpected frame: {other:?}"),
        };
        self.turn(to, vec![msg], false);
    }

    pub(super) fn run(&mut self, s: &Step) {
        let n = self.nodes.len();
        match *s {
            Step::Propose(i) => {
                let user = format!("u{}", self.next_user);
                self.next_user += 1;
                let data = codec::encode_command(Command::UserCreate {
                    user: user.clone(),
                    hash: "h".into(),
                    at: "t".into(),
                    actor: "sim".into(),
                });
                let (reply, answer) = oneshot::channel();
                if self.nodes[i % n].driver.is_some() {
                    self.pending.push((user, answer));
                    let propose = Msg::Propose {
                        data,
                        log_version: 1,
                        reply,
                    };
                    self.turn(i % n, vec![propose], false);
                }
            }
            Step::Deliver(k) => {
                let k = k.min(self.in_flight.len());
                for p in self.in_flight.drain(..k).collect::<Vec<_>>() {
                    self.deliver(p);
                }
            }
            Step::DeliverOne(k) if !self.in_flight.is_empty() => {
                let p = self.in_flight.remove(k % self.in_flight.len());
                self.deliver(p);
            }
            Step::Lose(k) if !self.in_flight.is_empty() => {
                self.in_flight.remove(k % self.in_flight.len());
            }
            Step::DeliverOne(_) | Step::Lose(_) => {}
            Step::Tick(i) => self.turn(i % n, Vec::new(), true),
            Step::TickAll => (0..n).for_each(|i| self.turn(i, Vec::new(), true)),
            Step::Isolate(i) => {
                self.isolated.insert(self.nodes[i % n].id);
            }
            Step::Heal => self.isolated.clear(),
            Step::Crash(i) => {
                // Dropped, not shut down: nothing more is written.
                self.nodes[i % n].driver = None;
                let id = self.nodes[i % n].id;
                self.in_flight.retain(|p| p.from != id);
            }
            Step::Restart(i) => self.restart(i % n),
        }
        self.settle_answers();
    }

    /// Takes the answers of the writes that have one.
    fn settle_answers(&mut self) {
        let mut still = Vec::new();
        for (user, mut answer) in std::mem::take(&mut self.pending) {
            match answer.try_recv() {
                Ok(Ok(_)) => {
                    self.acknowledged.insert(user);
                }
                // Refused or unknown (failed, crashed): nothing is promised.
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {}
                Err(oneshot::error::TryRecvError::Empty) => still.push((user, answer)),
            }
        }
        self.pending = still;
    }

    /// Heals the network, restarts every node, and runs until every write is answered
    /// and every node applied the same log; then checks what must hold.
    pub(super) fn finish(&mut self) {
        self.isolated.clear();
        for i in 0..self.nodes.len() {
            self.restart(i);
        }
        let started = std::time::Instant::now();
        loop {
            for p in std::mem::take(&mut self.in_flight) {
                self.deliver(p);
            }
            (0..self.nodes.len()).for_each(|i| self.turn(i, Vec::new(), true));
            self.settle_answers();
            if self.pending.is_empty() && self.converged() {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "the healed cluster did not converge: {:?}, {} writes unanswered",
                self.progress(),
                self.pending.len()
            );
        }
        let states: Vec<Vec<u8>> = self
            .nodes
            .iter()
            .map(|n| n.state.read().unwrap().to_snapshot())
            .collect();
        assert!(
            states.windows(2).all(|w| w[0] == w[1]),
            "the nodes applied the same log into different states"
        );
        let state = self.nodes[0].state.read().unwrap();
        let users: BTreeSet<String> = state.users.names().map(str::to_string).collect();
        let lost: Vec<&String> = self.acknowledged.difference(&users).collect();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    }

    /// Every node has a leader and applied what the leader committed.
    fn converged(&self) -> bool {
        let applied = self.progress();
        let Some(&(leader, committed, _)) = applied.values().next() else {
            return false;
        };
        leader != 0
            && applied
                .values()
                .all(|&(l, c, a)| l == leader && c == committed && a == committed)
    }

    /// The node that leads now, by index, once one does.
    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.driver
                .as_ref()
                .is_some_and(|d| d.raw.raft.state == StateRole::Leader)
        })
    }

    /// Ticks and delivers until a leader is elected.
    fn elect(&mut self) -> usize {
        for _ in 0..1_000 {
            if let Some(i) = self.leader() {
                return i;
            }
            self.run(&Step::TickAll);
            self.run(&Step::Deliver(1_000));
        }
        panic!("no leader elected");
    }

    /// Installs of a leader's snapshot so far, on node `i`.
    fn installs(&self, i: usize) -> u64 {
        self.nodes[i].installs.load(Ordering::Relaxed)
    }

    /// (leader, committed, applied) of every running node.
    fn progress(&self) -> BTreeMap<u64, (u64, u64, u64)> {
        self.nodes
            .iter()
            .filter_map(|n| n.driver.as_ref().map(|d| (n.id, d)))
            .map(|(id, d)| {
                let log = &d.raw.raft.raft_log;
                (id, (d.raw.raft.leader_id, log.committed, log.applied))
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the network and crashes do, the cluster never has two leaders in a term,
    /// never loses an acknowledged write, and ends with the same state on every node.
    #[test]
    fn random_fault_schedules_lose_no_acknowledged_write(steps in prop::collection::vec(step(), 1..300)) {
        let mut sim = Sim::new();
        for s in &steps {
            sim.run(s);
        }
        sim.finish();
    }
}

/// A follower cut off while the log moves past what the leader keeps catches up by
/// snapshot once healed, and ends with every acknowledged write.
#[test]
fn an_isolated_follower_catches_up_by_snapshot() {
    let mut sim = Sim::new();
    let leader = sim.elect();
    let follower = (leader + 1) % 3;
    sim.run(&Step::Isolate(follower));
    for _ in 0..40 {
        sim.run(&Step::Propose(leader));
        sim.run(&Step::Deliver(1_000));
        sim.run(&Step::Deliver(1_000));
    }
    assert_eq!(
        sim.acknowledged.len(),
        40,
        "the majority commits without it"
    );
    let before = sim.installs(follower);
    sim.finish();
    assert!(sim.installs(follower) > before, "it caught up by snapshot");
}

/// A leader cut off from the others acknowledges nothing it is asked meanwhile; the
/// others elect a new leader and go on; healed, every node agrees.
#[test]
fn an_isolated_leader_acknowledges_nothing_and_is_replaced() {
    let mut sim = Sim::new();
    let old = sim.elect();
    sim.run(&Step::Isolate(old));
    for _ in 0..5 {
        sim.run(&Step::Propose(old));
        sim.run(&Step::Deliver(1_000));
    }
    let mut new = None;
    for _ in 0..1_000 {
        sim.run(&Step::TickAll);
        sim.run(&Step::Deliver(1_000));
        new = (0..3).find(|i| {
            *i != old
                && sim.nodes[*i]
                    .driver
                    .as_ref()
                    .is_some_and(|d| d.raw.raft.state == StateRole::Leader)
        });
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("the majority elects a new leader");
    assert!(
        sim.acknowledged.is_empty(),
        "nothing acknowledged by the cut-off leader"
    );
    sim.run(&Step::Propose(new));
    sim.run(&Step::Deliver(1_000));
    sim.run(&Step::Deliver(1_000));
    sim.finish();
    assert!(!sim.acknowledged.is_empty(), "the new leader commits");
}

/// Without faults, writes through every node are acknowledged and replicated.
#[test]
fn writes_through_every_node_commit_everywhere() {
    let mut sim = Sim::new();
    for _ in 0..30 {
        sim.run(&Step::TickAll);
        sim.run(&Step::Deliver(100));
    }
    for i in 0..30 {
        sim.run(&Step::Propose(i % 3));
        sim.run(&Step::Deliver(100));
        sim.run(&Step::Deliver(100));
    }
    sim.finish();
    assert_eq!(sim.acknowledged.len(), 30, "every write is acknowledged");
}

/// The proposals a leader is handed in one turn reach each follower as one append, not
/// one per proposal (fewer frames to seal, decode and answer), and all commit.
#[test]
fn a_turns_proposals_go_to_each_follower_in_one_append() {
    let mut sim = Sim::new();
    let leader = sim.elect();
    // Settle: whatever is on the wire arrives first.
    for _ in 0..5 {
        sim.run(&Step::Deliver(1_000));
    }
    let leader_id = sim.nodes[leader].id;
    let mut msgs = Vec::new();
    for k in 0..20 {
        let user = format!("batched{k}");
        let (reply, answer) = oneshot::channel();
        sim.pending.push((user.clone(), answer));
        msgs.push(Msg::Propose {
            data: codec::encode_command(Command::UserCreate {
                user,
                hash: "h".into(),
                at: "t".into(),
                actor: "sim".into(),
            }),
            log_version: 1,
            reply,
        });
    }
    sim.turn(leader, msgs, false);
    let appends: Vec<(u64, usize)> = sim
        .in_flight
        .iter()
        .filter_map(|p| match &p.body {
            Body::Raft(m) if p.from == leader_id && m.get_msg_type() == MessageType::MsgAppend => {
                Some((p.to, m.get_entries().len()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(appends.len(), 2, "one append per follower: {appends:?}");
    assert!(appends.iter().all(|(_, n)| *n == 20), "{appends:?}");
    sim.finish();
    assert_eq!(sim.acknowledged.len(), 20, "every write is acknowledged");
}
