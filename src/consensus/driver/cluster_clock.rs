//! The cluster clock, which task and pull deadlines are measured on, and when the leader
//! looks for deadlines that passed. The leader stamps each proposal with it; every node
//! applies the stamp, so a node's skewed wall clock moves no deadline.

use std::time::{Duration, Instant};

use nexus_core::state::State;

pub(super) struct ClusterClock {
    /// Running while this node leads.
    leader: Option<LeaderClock>,
    /// The clock of the applied state.
    applied: u64,
    last_expiry_check: Instant,
}

/// The cluster clock while this node leads: the applied clock when it took over, advanced
/// by this process's monotonic clock. No wall clock is read after the first bootstrap.
struct LeaderClock {
    base_ms: u64,
    since: Instant,
    last: u64,
}

impl ClusterClock {
    pub(super) fn new(applied: u64) -> Self {
        ClusterClock {
            leader: None,
            applied,
            last_expiry_check: Instant::now(),
        }
    }

    /// The applied state's clock moved to `ms` (an entry applied, a snapshot installed).
    pub(super) fn set_applied(&mut self, ms: u64) {
        self.applied = ms;
    }

    /// The cluster clock now, for a proposal this leader appends (0 when not leading).
    /// It never goes back, not even behind the applied clock.
    pub(super) fn now(&mut self) -> u64 {
        let applied = self.applied;
        match &mut self.leader {
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

    /// Runs the clock while this node leads. True when it just started.
    pub(super) fn follow_role(&mut self, leading: bool) -> bool {
        if leading && self.leader.is_none() {
            // The first leader of a fresh cluster starts the clock from its wall clock;
            // later leaders continue from the applied clock.
            let base = match self.applied {
                0 => crate::clock::now_ms(),
                c => c,
            };
            self.leader = Some(LeaderClock {
                base_ms: base,
                since: Instant::now(),
                last: base,
            });
            return true;
        }
        if !leading {
            self.leader = None;
        }
        false
    }

    /// While leading, at most once per `every`: has a task or pull deadline in `state`
    /// passed? Then the leader proposes `Expire`, so every node ends the same tasks at the
    /// same point of the log.
    pub(super) fn expiry_due(&mut self, every: Duration, state: &State) -> bool {
        if self.leader.is_none() || self.last_expiry_check.elapsed() < every {
            return false;
        }
        self.last_expiry_check = Instant::now();
        let now = self.now();
        state.next_deadline().is_some_and(|d| d <= now)
    }
}
