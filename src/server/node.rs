//! The node: what every session and handler shares — identity, the Raft handle, the applied
//! state, and the registry of this node's live sessions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use actix::Message;
use serde_json::{json, Value};

use crate::local::Local;
use crate::logins::Logins;
use crate::replica::Replica;
use nexus_consensus::RaftHandle;
use nexus_core::ids::{ConnId, PipeId, RaftId};
use nexus_core::proto::{frame, Frame};
use nexus_core::rpc::{RpcError, RpcResult, ERR_INVALID_PARAMS, ERR_INVALID_PIPE};
use nexus_core::state::{Event, State};

/// The limits connections are served with (from the command line; see `config`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted message in bytes.
    pub max_message_size: usize,
    /// Connections each tcp/ssl listener serves at once.
    pub max_connections: usize,
    pub tls_handshake_timeout: std::time::Duration,
    /// Requests one connection may have running at once.
    pub max_inflight: usize,
    /// How long a half-closed TCP client's requests may still be answered.
    pub eof_grace: std::time::Duration,
    /// Default idle seconds before a connection is closed.
    pub watchdog_secs: u64,
    /// The shortest watchdog a session may set (`WATCHDOG_MIN`, lower only in tests).
    pub watchdog_min_secs: u64,
    /// Password hashes computed at once (0: one per core).
    pub hash_concurrency: usize,
    /// How long `sys.login` waits for a login plugin's worker.
    pub login_plugin_timeout: std::time::Duration,
    /// How long a new connection's session may take to commit before the connection closes.
    pub session_open_timeout: std::time::Duration,
    /// How long a closed connection's session close is retried until it commits (the
    /// cluster cleans up after a node that cannot commit for longer).
    pub session_close_timeout: std::time::Duration,
    /// Failed-login throttling per client address.
    pub login_throttle: crate::throttle::ThrottleConfig,
    /// Estimated bytes a pipe may hold; writes beyond are dropped (and counted).
    pub max_pipe_bytes: usize,
    /// GET /metrics on http/https listeners too (health listeners always serve it).
    pub metrics_on_http: bool,
}

/// Requests other parts of the node send to a session actor.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub enum Control {
    /// Close the connection now (shutdown).
    Close,
    /// Close the connection shortly, after answers in flight (sys.session.kick).
    Kick,
    /// Reload the session's user data.
    Reload,
}

pub struct Node {
    pub limits: Limits,
    pub raft_id: RaftId,
    /// 8 lowercase hex chars, new on every process start; prefix of every connid here.
    pub incarnation: String,
    /// Grows at every start of this node (persisted).
    pub generation: u64,
    /// Set when a graceful stop began.
    pub stopping: std::sync::atomic::AtomicBool,
    /// The cluster state: proposals and reads.
    pub replica: Replica,
    /// Password hashing, the failed-login throttle, the credential cache.
    pub logins: Logins,
    /// The listener URLs, for `sys.node.list`.
    pub listening: Mutex<Vec<String>>,
    /// Gossip and the peer transport; unset when standalone.
    pub cluster: Option<Arc<nexus_cluster::ClusterLink>>,
    /// Reads the TLS certificate and the cluster secrets again (SIGHUP, `sys.reload`).
    pub reload: crate::reload::Reloader,
    /// Sessions, pipes and waiting requests of this process.
    pub local: Local,
    /// What `/metrics` serves.
    pub metrics: crate::metrics::Metrics,
}

impl Node {
    pub fn new(
        limits: Limits,
        me: &nexus_consensus::Identity,
        raft: RaftHandle,
        state: Arc<RwLock<State>>,
        cluster: Option<Arc<nexus_cluster::ClusterLink>>,
        reload: crate::reload::Reloader,
    ) -> Self {
        let logins = Logins::new(
            limits.hash_concurrency,
            limits.login_throttle,
            limits.login_plugin_timeout,
        );
        let local = Local::default();
        let metrics = crate::metrics::Metrics::new(
            &raft.stats.timings,
            &local.pipe_drops,
            &local.topic_deliveries,
        );
        Node {
            limits,
            raft_id: me.raft_id,
            incarnation: me.incarnation.clone(),
            generation: me.generation,
            stopping: Default::default(),
            replica: Replica::new(raft, state),
            logins,
            listening: Mutex::new(Vec::new()),
            cluster,
            reload,
            local,
            metrics,
        }
    }

    /// Delivers `msg` published on `topic` to every subscribed pipe of the cluster: this
    /// node's directly, each other node's in one routed frame. Answers how many pipes it
    /// reached (pipes of processes that are gone are not counted).
    pub fn publish(&self, topic: &str, msg: &Value) -> usize {
        let envelope = json!({"topic": topic, "msg": msg});
        let mut sent = 0;
        for (owner, pipeids) in self.subscribers_by_node(topic) {
            if owner == self.raft_id {
                sent += pipeids.len();
                self.local.deliver(&pipeids, &envelope);
            } else if let Some(link) = self.cluster.as_ref() {
                sent += pipeids.len();
                link.router.deliver_topic(owner, pipeids, &envelope);
            }
        }
        sent
    }

    /// The pipes subscribed to `topic` (each once), grouped by the member owning them; pipes
    /// of processes that are gone are left out.
    fn subscribers_by_node(&self, topic: &str) -> BTreeMap<RaftId, Vec<PipeId>> {
        let mut by_node: BTreeMap<RaftId, Vec<PipeId>> = BTreeMap::new();
        self.replica.read(|s| {
            for pipeid in s.topics.matching(topic) {
                if let Some(owner) = s.owner_node(pipeid.as_str()) {
                    by_node.entry(owner).or_default().push(pipeid.clone());
                }
            }
        });
        by_node
    }

    /// Waits until every other node running a process has applied this node's log as far
    /// as this node has: a subscription change answered after this is seen by every
    /// later publish, on whichever node. A node that does not confirm within the route
    /// timeout (cut off, paused, stopped, or on a build without `AwaitApplied`) is not
    /// waited for longer.
    pub async fn until_applied_everywhere(&self) {
        let Some(link) = self.cluster.as_ref() else {
            return;
        };
        let index = self.replica.raft.stats.applied_index();
        let others: Vec<RaftId> = self
            .replica
            .read(|s| s.cluster.nodes.keys().copied().collect());
        let waits = others
            .into_iter()
            .filter(|n| *n != self.raft_id)
            .map(|n| async move {
                if !link.router.await_applied(n, index).await {
                    tracing::warn!(
                        node = %n,
                        index,
                        "a node did not confirm within the route timeout that it applied a subscription change"
                    );
                }
            });
        futures_util::future::join_all(waits).await;
    }

    /// Writes `msgs` in order into pipe `pipeid`, wherever it lives; -32003 when there is no
    /// such pipe (or its node is gone). No messages: only checks that the pipe exists.
    pub async fn write_pipe(&self, pipeid: &PipeId, msgs: Vec<Value>) -> Result<(), RpcError> {
        let msgs = match self.local.write(pipeid, msgs) {
            Ok(()) => return Ok(()),
            Err(msgs) => msgs, // not a pipe of this node
        };
        let Some(link) = self.cluster.as_ref() else {
            return Err(RpcError::new(ERR_INVALID_PIPE));
        };
        let mut owner = self.replica.read(|s| s.owner_node(pipeid.as_str()));
        let pipe_shaped = pipeid.is_ours();
        if owner.is_none() && pipe_shaped {
            // The owner may be a process that started a moment ago, announced in an entry
            // this node has not applied yet: look again after a linearizable barrier.
            owner = self
                .replica
                .read_linear(|s| s.owner_node(pipeid.as_str()))
                .await?;
        }
        match owner {
            Some(owner) if owner != self.raft_id => {
                link.router.write_pipe(owner, pipeid, &msgs).await
            }
            _ => Err(RpcError::new(ERR_INVALID_PIPE)),
        }
    }

    /// A routed frame from member `from`: a write to one of our pipes (answered), a
    /// publish for our pipes, a wait until we applied an index (answered), or the answer
    /// to one of our own requests.
    pub fn on_routed(&self, from: RaftId, frame: Frame) {
        let Some(link) = self.cluster.as_ref() else {
            return;
        };
        match frame.body {
            Some(frame::Body::PipeWrite(w)) => {
                let msgs: Result<Vec<Value>, _> = w
                    .msgs_json
                    .iter()
                    .map(|b| serde_json::from_slice(b))
                    .collect();
                let code = match msgs {
                    Err(_) => ERR_INVALID_PARAMS,
                    Ok(msgs) => match self.local.write(&w.pipeid.into(), msgs) {
                        Ok(()) => 0,
                        Err(_) => ERR_INVALID_PIPE,
                    },
                };
                link.router.answer(from, w.request_id, code);
            }
            Some(frame::Body::TopicDelivery(d)) => {
                if let Ok(envelope) = serde_json::from_slice::<Value>(&d.envelope_json) {
                    let pipeids: Vec<PipeId> = d.pipeids.into_iter().map(PipeId::from).collect();
                    self.local.deliver(&pipeids, &envelope);
                }
            }
            Some(frame::Body::RoutedAnswer(r)) => link.router.on_result(r),
            Some(frame::Body::AwaitApplied(q)) => {
                let (stats, link) = (self.replica.raft.stats.clone(), link.clone());
                // Answered once applied; not at all when the asker has given up anyway.
                tokio::spawn(async move {
                    if stats.wait_applied(q.index, link.router.timeout()).await {
                        link.router.answer(from, q.request_id, 0);
                    }
                });
            }
            _ => {}
        }
    }

    /// Reacts to applied events that concern this node's connections.
    pub fn handle_events(&self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::TaskAssigned {
                    pull_id, answer, ..
                } => self.local.wake(pull_id.as_str(), Ok(answer)),
                Event::TaskEnded {
                    taskid, outcome, ..
                } => self.local.wake(taskid.as_str(), outcome),
                Event::PullEnded { pull_id, error, .. } => {
                    self.local.wake(pull_id.as_str(), Err(error))
                }
                Event::Kick { connid } => self.local.control(&connid, Control::Kick),
                Event::Reload { connid } => self.local.control(&connid, Control::Reload),
                // Every node applies the hook: each delivers to its own pipes.
                Event::Hook { topic, msg } => self.publish_here(&topic, &msg),
                Event::LockGranted {
                    lock,
                    wait_id,
                    token,
                    ticket,
                    ..
                } => {
                    let granted = crate::lock::LockEvent::Granted {
                        wait_id,
                        token,
                        ticket,
                    };
                    self.local.locks.event(&lock, granted)
                }
                Event::LockWaitEnded {
                    lock,
                    wait_id,
                    error,
                    ..
                } => {
                    let ended = crate::lock::LockEvent::Ended { wait_id, error };
                    self.local.locks.event(&lock, ended)
                }
                Event::StateReplaced => {
                    // A joiner takes its cluster's identity with its first snapshot.
                    if let Some(link) = &self.cluster {
                        let id = self.replica.read(|s| s.cluster.id.clone());
                        let id = nexus_cluster::transport::hello_cluster_id(&id);
                        link.transport.set_cluster_id(id);
                    }
                    self.local.state_replaced();
                    self.reconcile_waiters()
                }
                Event::NodeDown {
                    node_id,
                    incarnation,
                } if node_id == self.raft_id && incarnation == self.incarnation => {
                    self.declared_down()
                }
                Event::NodeDown { .. }
                | Event::User { .. }
                | Event::SessionOpened { .. }
                | Event::SessionClosed { .. } => {}
            }
        }
    }

    /// The cluster declared this process gone (it was cut off longer than its lease) and
    /// cleaned up after its connections: the ones still open here are zombies and close at
    /// once. Unless stopping, `reconcile` announces the process again.
    fn declared_down(&self) {
        if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        tracing::warn!("the cluster declared this node process down: closing its connections");
        self.local.broadcast(crate::node::Control::Close);
    }

    /// Delivers `msg` to the subscribed pipes that live on this node.
    fn publish_here(&self, topic: &str, msg: &Value) {
        if let Some(mine) = self.subscribers_by_node(topic).remove(&self.raft_id) {
            self.local
                .deliver(&mine, &json!({"topic": topic, "msg": msg}));
        }
    }

    /// The command announcing this process to the cluster's node table.
    pub fn started(&self) -> nexus_core::state::Command {
        nexus_core::state::Command::NodeStarted {
            node_id: self.raft_id,
            incarnation: self.incarnation.clone(),
            generation: self.generation,
        }
    }

    /// After a snapshot install: pushes and pulls that were applied here and whose task or
    /// pull is gone ended inside the snapshot, and their answer was never seen here. One
    /// whose proposal has not come back yet may only be created by a later entry: its
    /// proposer decides (see `api::task::propose_then_wait`).
    fn reconcile_waiters(&self) {
        let keys = self.local.waiting_applied();
        let ended: Vec<(String, RpcResult)> = self.replica.read(|s| {
            keys.into_iter()
                .filter_map(|k| ended_unseen(s, &k).map(|r| (k, r)))
                .collect()
        });
        for (k, result) in ended {
            self.local.wake(&k, result);
        }
    }

    /// The newest log format every member applies: this build's, lowered by any member
    /// that gossips an older one (a build from before the key gossips none: format 1).
    /// Members gossip does not see now are not counted.
    pub async fn cluster_log_version(&self) -> u32 {
        let mine = nexus_core::state::codec::LOG_VERSION;
        let Some(link) = self.cluster.as_ref() else {
            return mine;
        };
        let members: Vec<RaftId> = self
            .replica
            .read(|s| s.cluster.members.keys().copied().collect());
        link.gossip
            .live()
            .await
            .iter()
            .filter(|m| members.contains(&m.raft_id))
            .map(|m| m.log_version.max(1))
            .fold(mine, u32::min)
    }

    /// A new connection id: incarnation + 8 random hex chars.
    pub fn new_connid(&self) -> ConnId {
        ConnId::new(&self.incarnation)
    }
}

pub use nexus_consensus::clock::{now_ms, now_rfc3339, rfc3339_ms};

/// How push or pull `id`, applied and no longer in `s`, ended where this node did not see
/// it happen (inside a snapshot): a pull handed a task still worked on gets that task, as
/// the worker it now is; any other end is unknown here. None while it still waits.
pub fn ended_unseen(s: &State, id: &str) -> Option<RpcResult> {
    if s.tasks.contains(id) {
        return None;
    }
    Some(s.tasks.answer_of_pull(id).ok_or_else(caught_up_by_snapshot))
}

/// What a push or pull whose end a snapshot swallowed is told.
pub fn caught_up_by_snapshot() -> nexus_core::rpc::RpcError {
    nexus_core::rpc::RpcError::internal(
        "this node caught up by snapshot: the outcome is unknown, retry",
    )
}
