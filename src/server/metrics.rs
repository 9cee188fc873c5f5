//! Prometheus metrics, served at `/metrics` on the http, https and health listeners.
//!
//! Counters and histograms are updated where things happen (requests, connections, pipe
//! drops, deliveries, Raft writes). Everything that is a size of the state (tasks, locks,
//! sessions, Raft indexes, peers, gossip) is read once per scrape. Labels stay bounded:
//! no connid, no task path beyond its first segment (and at most `MAX_PREFIXES` of those),
//! no peer beyond the cluster's members.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::node::Node;
use nexus_consensus::Role;

/// Distinct first path segments reported for tasks; the rest are summed as "(other)".
pub const MAX_PREFIXES: usize = 100;

/// The content type of the text encoding (OpenMetrics, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    transport: String,
    authenticated: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    prefix: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

fn request_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

pub use nexus_consensus::timings::RaftTimings;

/// What is read from the node at each scrape.
#[derive(Default)]
struct Sampled {
    sessions: Family<SessionLabels, Gauge>,
    tasks: Family<TaskLabels, Gauge>,
    pulls_waiting: Gauge,
    locks: Gauge,
    lock_waits_queued: Gauge,
    subscriptions: Gauge,
    users: Gauge,
    pipes: Gauge,
    raft_term: Gauge,
    raft_commit: Gauge,
    raft_applied: Gauge,
    raft_leader: Gauge,
    raft_role: Family<RoleLabels, Gauge>,
    raft_voters: Gauge,
    raft_learners: Gauge,
    raft_snapshots: Counter,
    peer_connected: Family<PeerLabels, Gauge>,
    peer_sent: Family<PeerLabels, Counter>,
    peer_received: Family<PeerLabels, Counter>,
    peer_auth_failures: Counter,
    gossip_live: Gauge,
    gossip_dead: Gauge,
    gossip_refused: Family<ReasonLabels, Counter>,
}

/// Scrapes closer together than this get the last text: a scrape walks the state.
const SCRAPE_REUSE: Duration = Duration::from_secs(1);

/// The last text served, and when it was made.
type Rendered = Option<(std::time::Instant, String)>;

pub struct Metrics {
    registry: Registry,
    /// One scrape at a time: the sampled gauges are cleared and refilled.
    sampled: Mutex<(Sampled, Rendered)>,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<MethodLabels, Histogram>,
    connections: Family<TransportLabels, Gauge>,
    connections_opened: Family<TransportLabels, Counter>,
    lock_waits: Counter,
    lock_wait_grants: Counter,
    lock_wait_seconds: Histogram,
}

impl Metrics {
    /// Registers every metric; `raft`, `pipe_drops` and `deliveries` are owned by the parts
    /// that update them.
    pub fn new(raft: &RaftTimings, pipe_drops: &Counter, deliveries: &Counter) -> Metrics {
        let mut r = Registry::with_prefix("nexus");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = Family::<MethodLabels, Histogram>::new_with_constructor(
            request_histogram as fn() -> Histogram,
        );
        let connections = Family::<TransportLabels, Gauge>::default();
        let connections_opened = Family::<TransportLabels, Counter>::default();
        let s = Sampled::default();
        r.register(
            "build",
            "The program version and git commit of this node's binary (value 1)",
            Info::new(vec![
                ("version", crate::build_info::VERSION),
                ("commit", crate::build_info::COMMIT),
            ]),
        );
        r.register(
            "requests",
            "JSON-RPC requests handled by this node, by method and outcome",
            requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer, by method",
            request_seconds.clone(),
        );
        r.register(
            "connections",
            "Open client connections on this node, by transport",
            connections.clone(),
        );
        r.register(
            "connections_opened",
            "Client connections accepted by this node, by transport",
            connections_opened.clone(),
        );
        r.register(
            "sessions",
            "Sessions of this node's connections, by transport and whether logged in",
            s.sessions.clone(),
        );
        r.register(
            "tasks",
            "Tasks in the cluster by first path segment: queued (waiting) or working",
            s.tasks.clone(),
        );
        r.register(
            "pulls_waiting",
            "task.pull requests waiting for a task, cluster-wide",
            s.pulls_waiting.clone(),
        );
        r.register("locks", "Locks held, cluster-wide", s.locks.clone());
        r.register(
            "lock_waits_queued",
            "sync.lock waits queued for a held lock, cluster-wide",
            s.lock_waits_queued.clone(),
        );
        let lock_waits = Counter::default();
        let lock_wait_grants = Counter::default();
        // 1 ms .. ~4.5 h
        let lock_wait_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 24));
        r.register(
            "lock_waits",
            "sync.lock requests with a wait that this node queued behind a holder",
            lock_waits.clone(),
        );
        r.register(
            "lock_wait_grants",
            "Queued waits of this node that were granted the lock",
            lock_wait_grants.clone(),
        );
        r.register(
            "lock_wait_seconds",
            "How long queued waits of this node waited, until granted or ended",
            lock_wait_seconds.clone(),
        );
        r.register(
            "topic_subscriptions",
            "Topic subscriptions (pipe, topic), cluster-wide",
            s.subscriptions.clone(),
        );
        r.register("users", "User accounts", s.users.clone());
        r.register("pipes", "Pipes living on this node", s.pipes.clone());
        r.register(
            "pipe_drops",
            "Messages dropped at a full pipe on this node",
            pipe_drops.clone(),
        );
        r.register(
            "topic_deliveries",
            "Published messages put into pipes on this node",
            deliveries.clone(),
        );
        r.register("raft_term", "Current Raft term", s.raft_term.clone());
        r.register(
            "raft_commit_index",
            "Highest log index known committed",
            s.raft_commit.clone(),
        );
        r.register(
            "raft_applied_index",
            "Highest log index applied to the state",
            s.raft_applied.clone(),
        );
        r.register(
            "raft_leader_id",
            "Raft id of the leader this node knows (0: none)",
            s.raft_leader.clone(),
        );
        r.register(
            "raft_role",
            "1 for this node's Raft role",
            s.raft_role.clone(),
        );
        r.register(
            "raft_voters",
            "Voters in the configuration",
            s.raft_voters.clone(),
        );
        r.register(
            "raft_learners",
            "Learners in the configuration",
            s.raft_learners.clone(),
        );
        r.register(
            "raft_snapshots",
            "State snapshots written by this node",
            s.raft_snapshots.clone(),
        );
        r.register(
            "raft_proposal_duration_seconds",
            "From a proposal on this node to its applied outcome",
            raft.proposal_seconds.clone(),
        );
        r.register(
            "raft_log_write_duration_seconds",
            "One synced (fsync'd) Raft log write",
            raft.log_write_seconds.clone(),
        );
        r.register(
            "raft_log_write_entries",
            "Entries per synced Raft log write (group commit batch size)",
            raft.log_write_entries.clone(),
        );
        r.register(
            "raft_snapshot_duration_seconds",
            "Encoding and writing one state snapshot",
            raft.snapshot_seconds.clone(),
        );
        r.register(
            "raft_snapshot_bytes",
            "Size of the last state snapshot written",
            raft.snapshot_bytes.clone(),
        );
        r.register(
            "peer_connected",
            "1 while this node's stream to the peer is connected and authenticated",
            s.peer_connected.clone(),
        );
        r.register(
            "peer_sent_bytes",
            "Bytes written to the peer's stream",
            s.peer_sent.clone(),
        );
        r.register(
            "peer_received_bytes",
            "Bytes read from the peer's streams",
            s.peer_received.clone(),
        );
        r.register(
            "peer_auth_failures",
            "Peer connections refused or dropped because the peer failed authentication \
             (a wrong cluster secret, or bytes altered or replayed on the way)",
            s.peer_auth_failures.clone(),
        );
        r.register(
            "gossip_live_nodes",
            "Members gossip sees alive (self included)",
            s.gossip_live.clone(),
        );
        r.register(
            "gossip_dead_nodes",
            "Members gossip believes dead",
            s.gossip_dead.clone(),
        );
        r.register(
            "gossip_refused_datagrams",
            "Gossip datagrams refused: reason=unauthenticated (a wrong cluster secret, or \
             altered) or replayed (seen before, or its time far from ours)",
            s.gossip_refused.clone(),
        );
        Metrics {
            registry: r,
            sampled: Mutex::new((s, None)),
            requests,
            request_seconds,
            connections,
            connections_opened,
            lock_waits,
            lock_wait_grants,
            lock_wait_seconds,
        }
    }

    /// A `sync.lock` with a wait was queued on this node.
    pub fn lock_wait_queued(&self) {
        self.lock_waits.inc();
    }

    /// A queued wait of this node was answered after `took`: granted, or not.
    pub fn lock_wait_answered(&self, granted: bool, took: Duration) {
        if granted {
            self.lock_wait_grants.inc();
        }
        self.lock_wait_seconds.observe(took.as_secs_f64());
    }

    /// One request answered (or failed) after `took`. `known`: the method exists, so it
    /// may be a label; unknown methods are counted together.
    pub fn request(&self, method: &str, known: bool, ok: bool, took: Duration) {
        let method = if known { method } else { "(unknown)" }.to_string();
        let outcome = if ok { "ok" } else { "error" };
        self.requests
            .get_or_create(&RequestLabels {
                method: method.clone(),
                outcome,
            })
            .inc();
        self.request_seconds
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
    }

    pub fn connection_opened(&self, transport: &str) {
        let labels = TransportLabels {
            transport: transport.to_string(),
        };
        self.connections_opened.get_or_create(&labels).inc();
        self.connections.get_or_create(&labels).inc();
    }

    pub fn connection_closed(&self, transport: &str) {
        let labels = TransportLabels {
            transport: transport.to_string(),
        };
        self.connections.get_or_create(&labels).dec();
    }

    /// The text exposition, with the state-sized gauges read now (or the last text, when
    /// it is younger than `SCRAPE_REUSE`).
    pub async fn render(&self, node: &Node) -> String {
        if let Some(text) = self.recent() {
            return text;
        }
        // Gossip sits behind an async lock: read it before taking ours.
        let gossip = match node.cluster.as_ref() {
            Some(link) => Some((
                link.gossip.live().await.len(),
                link.gossip.dead().await.len(),
            )),
            None => None,
        };
        let mut guard = self.sampled.lock().unwrap_or_else(|e| e.into_inner());
        sample(&guard.0, node, gossip);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        guard.1 = Some((std::time::Instant::now(), out.clone()));
        out
    }

    fn recent(&self) -> Option<String> {
        let guard = self.sampled.lock().unwrap_or_else(|e| e.into_inner());
        match &guard.1 {
            Some((at, text)) if at.elapsed() < SCRAPE_REUSE => Some(text.clone()),
            _ => None,
        }
    }
}

fn sample(s: &Sampled, node: &Node, gossip: Option<(usize, usize)>) {
    let me = node.raft_id;
    let mut sessions: BTreeMap<(String, bool), i64> = BTreeMap::new();
    let mut tasks: BTreeMap<(String, bool), i64> = BTreeMap::new();
    // Counted by borrowed prefix under the state lock (no allocation per task), owned
    // once after.
    node.replica.read(|state| {
        let mut by_prefix: std::collections::HashMap<(&str, bool), i64> = Default::default();
        for rec in state.sessions.iter() {
            if rec.node_id == me {
                let logged_in = rec.user != crate::conn::NOBODY;
                *sessions
                    .entry((rec.protocol.clone(), logged_in))
                    .or_default() += 1;
            }
        }
        for (path, working) in state.tasks.paths() {
            let first = path.split('.').next().unwrap_or_default();
            *by_prefix.entry((first, working)).or_default() += 1;
        }
        for ((prefix, working), n) in by_prefix {
            tasks.insert((prefix.to_string(), working), n);
        }
        s.pulls_waiting.set(state.tasks.pulls_waiting() as i64);
        s.locks.set(state.locks.iter().count() as i64);
        s.lock_waits_queued.set(state.locks.waits_queued() as i64);
        let subscriptions: usize = state.topics.iter().map(|(_, pipes)| pipes).sum();
        s.subscriptions.set(subscriptions as i64);
        s.users.set(state.users.iter().count() as i64);
    });
    s.sessions.clear();
    for ((transport, logged_in), n) in sessions {
        let authenticated = if logged_in { "true" } else { "false" };
        s.sessions
            .get_or_create(&SessionLabels {
                transport,
                authenticated,
            })
            .set(n);
    }
    s.tasks.clear();
    for ((prefix, working), n) in bounded_prefixes(tasks) {
        let state = if working { "working" } else { "queued" };
        s.tasks.get_or_create(&TaskLabels { prefix, state }).set(n);
    }
    s.pipes.set(node.local.pipe_count() as i64);

    let stats = &node.replica.raft.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    s.raft_term.set(load(&stats.term) as i64);
    s.raft_commit.set(load(&stats.commit_index) as i64);
    s.raft_applied.set(stats.applied_index() as i64);
    s.raft_leader.set(load(&stats.leader_id) as i64);
    catch_up(&s.raft_snapshots, load(&stats.snapshots));
    let role = stats.role();
    for (name, r) in [
        ("none", Role::None),
        ("leader", Role::Leader),
        ("candidate", Role::Candidate),
        ("follower", Role::Follower),
        ("learner", Role::Learner),
    ] {
        s.raft_role
            .get_or_create(&RoleLabels { role: name })
            .set((role == r) as i64);
    }
    let (voters, learners) = {
        let m = stats.membership.read().unwrap_or_else(|e| e.into_inner());
        (m.0.len(), m.1.len())
    };
    s.raft_voters.set(voters as i64);
    s.raft_learners.set(learners as i64);

    // Cleared and refilled: a removed peer's series go away; a counter re-created here
    // catches up to the same total, so Prometheus sees no reset.
    s.peer_connected.clear();
    s.peer_sent.clear();
    s.peer_received.clear();
    if let Some(link) = node.cluster.as_ref() {
        catch_up(&s.peer_auth_failures, link.transport.auth_failures());
        for p in link.transport.traffic() {
            let labels = PeerLabels {
                peer: p.raft_id.to_string(),
            };
            s.peer_connected
                .get_or_create(&labels)
                .set(p.connected as i64);
            catch_up(&s.peer_sent.get_or_create(&labels), p.sent);
            catch_up(&s.peer_received.get_or_create(&labels), p.received);
        }
    }
    if let Some(link) = node.cluster.as_ref() {
        let (unauthenticated, replayed) = link.gossip.refusals();
        for (reason, total) in [("unauthenticated", unauthenticated), ("replayed", replayed)] {
            catch_up(
                &s.gossip_refused.get_or_create(&ReasonLabels { reason }),
                total,
            );
        }
    }
    if let Some((live, dead)) = gossip {
        s.gossip_live.set(live as i64);
        s.gossip_dead.set(dead as i64);
    }
}

/// Moves a counter up to a total kept elsewhere (totals only grow).
fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// The first `MAX_PREFIXES` prefixes in name order kept, the rest summed as "(other)".
fn bounded_prefixes(counts: BTreeMap<(String, bool), i64>) -> BTreeMap<(String, bool), i64> {
    let mut names: Vec<&String> = counts.keys().map(|(p, _)| p).collect();
    names.dedup();
    if names.len() <= MAX_PREFIXES {
        return counts;
    }
    let kept: std::collections::BTreeSet<String> =
        names.into_iter().take(MAX_PREFIXES).cloned().collect();
    let mut out = BTreeMap::new();
    for ((prefix, working), n) in counts {
        let prefix = if kept.contains(&prefix) {
            prefix
        } else {
            "(other)".to_string()
        };
        *out.entry((prefix, working)).or_default() += n;
    }
    out
}
