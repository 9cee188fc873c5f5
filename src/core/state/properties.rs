//! Property tests of the state machine: random command sequences (sessions, node restarts
//! and deaths, locks, tasks, pulls, subscriptions, expiry), with the invariants checked
//! after every command, and snapshot + restore + the rest of the log equal to a replay.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;

const NODES: [RaftId; 2] = [RaftId(1), RaftId(2)];
const LOCKS: [&str; 3] = ["l.a", "l.b", "l.c"];

/// What the generator knows: incarnations per node, connids used, ids handed out.
struct World {
    rng: StdRng,
    incarnations: Vec<Vec<String>>,
    connids: Vec<String>,
    tasks: Vec<String>,
    pulls: Vec<String>,
    pipes: Vec<String>,
    clock: u64,
    next: u64,
}

impl World {
    fn new(seed: u64) -> World {
        World {
            rng: StdRng::seed_from_u64(seed),
            incarnations: vec![vec![], vec![]],
            connids: Vec::new(),
            tasks: Vec::new(),
            pulls: Vec::new(),
            pipes: Vec::new(),
            clock: 1000,
            next: 0,
        }
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.rng.gen_range(0..v.len())].clone())
    }

    fn connid(&mut self) -> String {
        let c = self.connids.clone();
        self.pick(&c).unwrap_or_else(|| "ffffffff00000000".into())
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:020x}", self.next)
    }

    fn command(&mut self) -> Command {
        let n = self.rng.gen_range(0..2);
        match self.rng.gen_range(0..100) {
            0..=3 => {
                let inc = format!("{:08x}", self.rng.gen::<u32>());
                self.incarnations[n].push(inc.clone());
                Command::NodeStarted {
                    node_id: NODES[n],
                    incarnation: inc,
                    generation: self.incarnations[n].len() as u64,
                }
            }
            4..=5 => {
                let incs = self.incarnations[n].clone();
                Command::NodeDown {
                    node_id: NODES[n],
                    incarnation: self.pick(&incs).unwrap_or_default(),
                }
            }
            6..=17 => {
                let incs = self.incarnations[n].clone();
                let inc = self.pick(&incs).unwrap_or_else(|| "00000000".into());
                let connid = format!("{inc}{:08x}", self.rng.gen::<u32>());
                self.connids.push(connid.clone());
                Command::SessionOpen {
                    session: SessionRecord {
                        connid: connid.into(),
                        node_id: NODES[n],
                        incarnation: inc,
                        user: "nobody".into(),
                        remote_address: "127.0.0.1:1".into(),
                        protocol: "tcp".into(),
                        creation_time: "t".into(),
                    },
                }
            }
            18..=22 => Command::SessionClose {
                connid: self.connid().into(),
            },
            23..=24 => Command::SessionKick {
                connids: vec![self.connid().into()],
            },
            25..=29 => Command::Lock {
                lock: self.pick(&LOCKS).unwrap().into(),
                connid: self.connid().into(),
            },
            30..=34 => {
                let connid = self.connid();
                Command::LockWait {
                    lock: self.pick(&LOCKS).unwrap().into(),
                    wait_id: self.fresh(&connid),
                    connid: connid.into(),
                    // Some end soon, some stay long enough to queue behind each other.
                    wait_ms: [0, 700, 5_000, 60_000][self.rng.gen_range(0..4)],
                }
            }
            35..=41 => Command::Unlock {
                lock: self.pick(&LOCKS).unwrap().into(),
                connid: self.connid().into(),
            },
            42..=53 => {
                let pusher = self.connid();
                let id = self.fresh(&pusher);
                self.tasks.push(id.clone());
                Command::TaskPush {
                    task: Task {
                        id: id.into(),
                        path: "a.b.".into(),
                        method: "m".into(),
                        params: json!({}),
                        prio: self.rng.gen_range(0..3),
                        ttl: self.rng.gen_range(1..4),
                        detach: self.rng.gen_bool(0.3),
                        user: "nobody".into(),
                        tags: json!({}),
                        pusher: pusher.into(),
                        creation_time: String::new(),
                        deadline: String::new(),
                        deadline_ms: 0,
                        timeout_ms: self.rng.gen_range(0..3) * 500,
                        seq: 0,
                        working: None,
                        pulled_by: None,
                    },
                }
            }
            54..=63 => {
                let connid = self.connid();
                let id = self.fresh(&connid);
                self.pulls.push(id.clone());
                Command::TaskPull {
                    pull: Pull {
                        id: id.into(),
                        connid: connid.into(),
                        path: "a.b.".into(),
                        user: "nobody".into(),
                        creation_time: String::new(),
                        deadline: String::new(),
                        deadline_ms: 0,
                        timeout_ms: self.rng.gen_range(0..3) * 500,
                        seq: 0,
                    },
                }
            }
            64..=71 => {
                let tasks = self.tasks.clone();
                Command::TaskFinish {
                    taskid: self.pick(&tasks).unwrap_or_default().into(),
                    worker: self.connid().into(),
                    ending: Ending::Result(json!(1)),
                }
            }
            72..=76 => {
                let tasks = self.tasks.clone();
                Command::TaskReject {
                    taskid: self.pick(&tasks).unwrap_or_default().into(),
                    worker: self.connid().into(),
                }
            }
            77..=79 => {
                let ids: Vec<String> = self.tasks.iter().chain(&self.pulls).cloned().collect();
                Command::TaskCancel {
                    id: self.pick(&ids).unwrap_or_default(),
                    connid: self.connid().into(),
                }
            }
            80..=85 => {
                self.clock += self.rng.gen_range(0..800);
                Command::Expire {}
            }
            86..=91 => {
                let owner = self.connid();
                let pipeid = self.fresh(&owner);
                self.pipes.push(pipeid.clone());
                Command::Subscribe {
                    pipeid: pipeid.into(),
                    topic: "t.x".into(),
                }
            }
            92..=95 => {
                let pipes = self.pipes.clone();
                Command::Unsubscribe {
                    pipeid: self.pick(&pipes).unwrap_or_default().into(),
                    topic: "t.x".into(),
                }
            }
            _ => {
                let pipes = self.pipes.clone();
                Command::PipeClosed {
                    pipeid: self.pick(&pipes).unwrap_or_default().into(),
                }
            }
        }
    }

    /// A log of `len` entries, each stamped like the leader would.
    fn log(&mut self, len: usize) -> Vec<(Origin, Command)> {
        (0..len)
            .map(|i| {
                let cmd = self.command();
                self.clock += self.rng.gen_range(0..50);
                let origin = Origin {
                    node_id: NODES[i % 2],
                    generation: 1,
                    proposal_id: i as u64 + 1,
                    clock_ms: self.clock,
                };
                (origin, cmd)
            })
            .collect()
    }
}

/// Everything a connection owns belongs to an open session, and every session to its
/// node's current process: what "a closed connection or dead node leaves nothing behind"
/// means in the replicated state.
fn check_invariants(s: &State, step: usize, cmd: &Command) {
    let open: BTreeSet<&str> = s.sessions.iter().map(|r| r.connid.as_str()).collect();
    let ctx = || format!("after step {step} ({cmd:?})");
    for r in s.sessions.iter() {
        let current = s
            .cluster
            .nodes
            .get(&r.node_id)
            .map(|n| n.incarnation.as_str());
        assert_eq!(
            current,
            Some(r.incarnation.as_str()),
            "session of a gone process {}",
            ctx()
        );
    }
    for (lock, owner) in s.locks.iter() {
        assert!(
            open.contains(owner.as_str()),
            "lock {lock} held by closed {owner} {}",
            ctx()
        );
    }
    // Every queued wait is of a live session, for a held lock (a release grants the next
    // wait at once), not past its deadline (an entry applied past it ends it first; one
    // committed with no time at all ends at the next), in
    // the order it was committed in (its ticket), on the cluster clock too.
    for lock in LOCKS {
        let waits: Vec<_> = s.locks.waiting(lock).collect();
        assert!(
            waits.is_empty() || s.locks.holder(lock).is_some(),
            "{lock} free with {} waits {}",
            waits.len(),
            ctx()
        );
        for w in &waits {
            assert!(
                open.contains(w.connid.as_str()),
                "wait {} of closed {} {}",
                w.id,
                w.connid,
                ctx()
            );
        }
        assert!(
            waits.windows(2).all(|p| p[0].since_ms <= p[1].since_ms),
            "{lock}'s waits out of order {}",
            ctx()
        );
        assert!(
            waits.windows(2).all(|p| p[0].ticket < p[1].ticket),
            "{lock}'s waits out of ticket order {}",
            ctx()
        );
        for w in &waits {
            assert!(
                w.deadline_ms >= s.cluster.clock_ms && w.ticket <= s.locks.tickets,
                "wait {} (deadline {}, ticket {}) queued at clock {}, tickets {} {}",
                w.id,
                w.deadline_ms,
                w.ticket,
                s.cluster.clock_ms,
                s.locks.tickets,
                ctx()
            );
        }
        // A wait's grant comes after every wait committed before it.
        if let (Some(h), Some(first)) = (s.locks.holder(lock), waits.first()) {
            assert!(
                h.ticket < first.ticket,
                "{lock} held with ticket {} ahead of the queued ticket {} {}",
                h.ticket,
                first.ticket,
                ctx()
            );
        }
    }
    for t in s.tasks.tasks.values() {
        if let Some(w) = &t.working {
            assert!(
                open.contains(w.as_str()),
                "task {} worked by closed {w} {}",
                t.id,
                ctx()
            );
        }
        assert!(
            match (&t.working, &t.pulled_by) {
                (Some(w), Some(p)) => p.owner().as_ref() == Some(w),
                (None, None) => true,
                _ => false,
            },
            "task {} worked by {:?} for pull {:?} {}",
            t.id,
            t.working,
            t.pulled_by,
            ctx()
        );
        if !t.detach {
            assert!(
                open.contains(t.pusher.as_str()),
                "task {} of closed pusher {}",
                t.id,
                ctx()
            );
        }
        assert!(t.ttl > 0, "task {} kept with ttl {} {}", t.id, t.ttl, ctx());
    }
    for p in s.tasks.pulls.values() {
        assert!(
            open.contains(p.connid.as_str()),
            "pull {} of closed {} {}",
            p.id,
            p.connid,
            ctx()
        );
    }
    for pipes in s.topics.by_topic.values() {
        for pipe in pipes {
            let owner = pipe.owner().unwrap_or_else(|| pipe.as_str().into());
            assert!(
                open.contains(owner.as_str()),
                "subscription of closed pipe {pipe} {}",
                ctx()
            );
        }
    }
    // A waiting pull and a waiting task on the same path would have been matched.
    let waiting_task = s.tasks.tasks.values().any(|t| t.working.is_none());
    assert!(
        !waiting_task || s.tasks.pulls.is_empty(),
        "a waiting task and a waiting pull on one path {}",
        ctx()
    );
}

fn replay(entries: &[(Origin, Command)], mut s: State) -> State {
    for (o, c) in entries {
        let _ = s.apply_entry(o, c.clone());
    }
    s
}

#[test]
fn random_logs_keep_the_invariants_and_snapshots_equal_replay() {
    let mut applied = 0;
    for seed in 0..200u64 {
        let mut world = World::new(seed);
        let log = world.log(300);
        let mut s = State::default();
        let mut last_token = 0;
        for (step, (origin, cmd)) in log.iter().enumerate() {
            let (outcome, events) = s.apply_entry(origin, cmd.clone());
            applied += 1;
            // Every grant, at once or after a wait, has a token above all before it, and
            // goes to a live session.
            let mut tokens = Vec::new();
            // (A wait granted at once is also an event.)
            if let (Command::Lock { .. }, Ok(v)) = (cmd, &outcome) {
                tokens.extend(v["token"].as_u64());
            }
            for e in &events {
                if let Event::LockGranted { token, connid, .. } = e {
                    tokens.push(*token);
                    assert!(
                        s.sessions.get(connid).is_some(),
                        "granted to closed {connid}"
                    );
                }
            }
            for token in tokens {
                assert!(
                    token > last_token,
                    "fencing tokens grow: {token} after {last_token}"
                );
                last_token = token;
            }
            check_invariants(&s, step, cmd);
        }
        // Same log, same state; a snapshot anywhere plus the rest of the log, same state.
        let full = s.to_snapshot();
        assert_eq!(
            replay(&log, State::default()).to_snapshot(),
            full,
            "seed {seed}"
        );
        let cut = world.rng.gen_range(1..log.len());
        let head = replay(&log[..cut], State::default()).to_snapshot();
        let restored = State::from_snapshot(&head).unwrap();
        assert_eq!(
            replay(&log[cut..], restored).to_snapshot(),
            full,
            "seed {seed}: snapshot at {cut} + tail differs from a full replay"
        );
    }
    assert_eq!(applied, 200 * 300);
}
