//! The fault schedule: drawn from the seed (so a run's sequence of faults, targets and
//! durations is reproducible), injected one at a time, each followed by a heal and a wait
//! until every node is healthy again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::history::{Kind, Recorder, ALL_NODES};
use super::nodes::Cluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultKind {
    /// `kill -9` of a random node, restarted later on the same data dir.
    Kill,
    /// `kill -9` of the leader.
    KillLeader,
    /// SIGSTOP of a random node for longer than an election, then SIGCONT.
    Pause,
    PauseLeader,
    /// A random node's traffic to and from its peers dropped (network namespaces).
    Isolate,
    IsolateLeader,
    /// A random node killed, one bit flipped in one of its data files (WAL, SST or
    /// MANIFEST), restarted: it serves everything or refuses and is rebuilt from its peers.
    Corrupt,
    /// The same with the file cut short at a random offset.
    Truncate,
    /// Every node killed at once and what none of them fsync'd dropped (nexus-faultfs).
    PowerCut,
    /// A random node's fsyncs each take 2 s for a while (nexus-faultfs).
    SlowDisk,
    /// A random node's disk reports no free space for a while (nexus-faultfs): it refuses
    /// writes and hands leadership over until space returns.
    DiskFull,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::Pause => "pause",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::Isolate => "isolate",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::Corrupt => "corrupt",
            FaultKind::Truncate => "truncate",
            FaultKind::PowerCut => "power-cut",
            FaultKind::SlowDisk => "slow-disk",
            FaultKind::DiskFull => "disk-full",
        }
    }

    fn on_leader(self) -> bool {
        matches!(
            self,
            FaultKind::KillLeader | FaultKind::PauseLeader | FaultKind::IsolateLeader
        )
    }

    pub fn needs_netns(self) -> bool {
        matches!(self, FaultKind::Isolate | FaultKind::IsolateLeader)
    }

    /// Runs the nodes on nexus-faultfs mounts (root and /dev/fuse).
    pub fn needs_faultfs(self) -> bool {
        matches!(
            self,
            FaultKind::PowerCut | FaultKind::SlowDisk | FaultKind::DiskFull
        )
    }

    /// How long the fault lasts: pauses and isolations outlast an election and the
    /// node-down delay (2.5 s), so the cluster moves on without the node.
    fn hold(self, rng: &mut StdRng) -> Duration {
        let secs = match self {
            FaultKind::Kill | FaultKind::KillLeader => rng.gen_range(1.0..4.0),
            FaultKind::Corrupt | FaultKind::Truncate | FaultKind::PowerCut => {
                rng.gen_range(1.0..3.0)
            }
            FaultKind::SlowDisk | FaultKind::DiskFull => rng.gen_range(3.0..8.0),
            FaultKind::Pause | FaultKind::PauseLeader => rng.gen_range(3.0..6.0),
            FaultKind::Isolate | FaultKind::IsolateLeader => rng.gen_range(3.0..8.0),
        };
        Duration::from_secs_f64(secs)
    }
}

/// One planned fault.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    pub kind: FaultKind,
    /// The node for a random-target fault (leader faults resolve their target when run).
    pub node: usize,
    /// Quiet time before it.
    pub gap: Duration,
    pub hold: Duration,
    /// Draws the damage of a corrupt or truncate fault (file, offset, bit).
    pub salt: u64,
}

/// The schedule's source: the same seed, kinds, node count and fault interval always give
/// the same sequence. Kinds come in rounds, each kind once per round in a shuffled order,
/// so that every kind asked for is injected within the first round however few faults a
/// slow run fits.
pub struct Schedule {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    /// What is left of this round, drawn from the end.
    round: Vec<FaultKind>,
    nodes: usize,
    every: Duration,
}

impl Schedule {
    pub fn new(seed: u64, kinds: Vec<FaultKind>, nodes: usize, every: Duration) -> Schedule {
        Schedule {
            rng: StdRng::seed_from_u64(seed ^ 0xfa17),
            kinds,
            round: Vec::new(),
            nodes,
            every,
        }
    }

    pub fn next_fault(&mut self) -> Option<Planned> {
        if self.kinds.is_empty() {
            return None;
        }
        if self.round.is_empty() {
            self.round = self.kinds.clone();
            self.round.shuffle(&mut self.rng);
        }
        let kind = self.round.pop().expect("a round holds every kind");
        let node = self.rng.gen_range(0..self.nodes);
        let gap = self.every.mul_f64(self.rng.gen_range(0.5..1.5));
        let hold = kind.hold(&mut self.rng);
        let salt = self.rng.gen();
        Some(Planned {
            kind,
            node,
            gap,
            hold,
            salt,
        })
    }
}

/// What the injector is doing now, for the progress line.
#[derive(Default)]
pub struct Status {
    pub current: Mutex<String>,
    pub injected: Mutex<Vec<(FaultKind, usize)>>,
    pub unrecovered: AtomicBool,
}

/// Injects faults from `schedule` until `until`, each healed before the next starts.
/// Returns once the last fault is healed and the cluster is healthy (or given up on).
pub fn inject(
    cluster: &mut Cluster,
    schedule: &mut Schedule,
    rec: &Recorder,
    until: Instant,
    status: &Status,
) -> anyhow::Result<()> {
    while let Some(plan) = schedule.next_fault() {
        if Instant::now() + plan.gap + plan.hold > until {
            break;
        }
        std::thread::sleep(plan.gap);
        let node = if plan.kind.on_leader() {
            cluster.leader().unwrap_or(plan.node)
        } else {
            plan.node
        };
        set(
            status,
            format!(
                "{} n{node} for {:.1}s",
                plan.kind.name(),
                plan.hold.as_secs_f64()
            ),
        );
        eprintln!(
            "  [{:>5.1}s] fault: {} n{node} for {:.1}s",
            rec.now(),
            plan.kind.name(),
            plan.hold.as_secs_f64()
        );
        // A power cut hits every node: its window covers them all.
        let node = if plan.kind == FaultKind::PowerCut {
            ALL_NODES
        } else {
            node
        };
        rec.event(Kind::Fault, plan.kind.name(), node);
        match plan.kind {
            FaultKind::Kill | FaultKind::KillLeader => cluster.kill(node),
            FaultKind::Pause | FaultKind::PauseLeader => cluster.signal(node, libc::SIGSTOP),
            FaultKind::Isolate | FaultKind::IsolateLeader => cluster.isolate(node)?,
            FaultKind::Corrupt | FaultKind::Truncate => {
                cluster.kill(node);
                let what = cluster.damage(node, plan.kind == FaultKind::Truncate, plan.salt)?;
                eprintln!("  [{:>5.1}s]   n{node}: {what}", rec.now());
            }
            FaultKind::PowerCut => {
                for i in 0..cluster.nodes.len() {
                    cluster.kill(i);
                }
                cluster.cut_power()?;
            }
            FaultKind::SlowDisk => cluster.toggle_slow_disk(node)?,
            FaultKind::DiskFull => cluster.toggle_full_disk(node)?,
        }
        std::thread::sleep(plan.hold);
        match plan.kind {
            FaultKind::Kill | FaultKind::KillLeader | FaultKind::Corrupt | FaultKind::Truncate => {
                cluster.start(node)?
            }
            FaultKind::Pause | FaultKind::PauseLeader => cluster.signal(node, libc::SIGCONT),
            FaultKind::Isolate | FaultKind::IsolateLeader => cluster.heal_network(node)?,
            FaultKind::PowerCut => {
                for i in 0..cluster.nodes.len() {
                    cluster.start(i)?;
                }
            }
            FaultKind::SlowDisk => cluster.toggle_slow_disk(node)?,
            FaultKind::DiskFull => cluster.toggle_full_disk(node)?,
        }
        rec.event(Kind::Heal, plan.kind.name(), node);
        status.injected.lock().unwrap().push((plan.kind, node));
        set(status, "recovering".into());
        if cluster.wait_healthy(Duration::from_secs(60)) {
            rec.event(Kind::Healthy, plan.kind.name(), node);
            set(status, String::new());
        } else {
            eprintln!(
                "  [{:>5.1}s] the cluster did not recover within 60 s",
                rec.now()
            );
            status.unrecovered.store(true, Ordering::Relaxed);
            return Ok(());
        }
    }
    Ok(())
}

fn set(status: &Status, text: String) {
    *status.current.lock().unwrap() = text;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_comes_once_per_round_and_a_seed_repeats_its_schedule() {
        let kinds = vec![
            FaultKind::Corrupt,
            FaultKind::Truncate,
            FaultKind::PowerCut,
            FaultKind::SlowDisk,
        ];
        let every = Duration::from_secs(6);
        let draw = |seed| {
            let mut s = Schedule::new(seed, kinds.clone(), 3, every);
            (0..12)
                .map(|_| s.next_fault().unwrap().kind)
                .collect::<Vec<_>>()
        };
        for seed in 0..50 {
            let faults = draw(seed);
            for round in faults.chunks(kinds.len()) {
                for k in &kinds {
                    assert_eq!(round.iter().filter(|f| *f == k).count(), 1, "{faults:?}");
                }
            }
            assert_eq!(draw(seed), faults);
        }
    }
}
