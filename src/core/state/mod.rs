//! The replicated state machine. Every node applies the same committed commands in the
//! same order and reaches the same state. `apply` is deterministic: no clock, no
//! randomness, no I/O — ids, hashes and timestamps travel inside the command.

mod cluster;
pub mod codec;
mod locks;
mod sessions;
mod tasks;
mod topics;
mod users;

#[cfg(test)]
use serde::Serialize;
use serde_json::Value;

use crate::ids::{ConnId, PipeId, PullId, RaftId, TaskId};
use crate::rpc::RpcError;

pub use cluster::{founding_identity, new_identity, Admit, Cluster, NodeRecord, Origin};
pub use locks::{Granted, Holder, LockWait, Locks, WaitOutcome};
pub use sessions::{SessionRecord, Sessions};
pub use tasks::{Ending, Pull, Task, Tasks};
pub use topics::Topics;
pub use users::{User, UserChange, Users};

use crate::rpc::{ERR_INVALID_PIPE, ERR_LOCK_NOT_OWNED};

/// A change to durable state, proposed through Raft. Its log encoding is `codec` (protobuf,
/// proto/log.proto).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A node process started: sessions of its earlier incarnations are gone.
    NodeStarted {
        node_id: RaftId,
        incarnation: String,
        generation: u64,
    },
    /// A node process is gone (killed, cut off, or stopping): everything its connections
    /// owned goes as if each had closed, and its ids route nowhere. Ignored when that
    /// process was already replaced by a restart.
    NodeDown {
        node_id: RaftId,
        incarnation: String,
    },
    /// First boot of a fresh cluster: creates `root` once.
    Bootstrap {
        root_hash: String,
        at: String,
    },
    SessionOpen {
        session: SessionRecord,
    },
    /// A session authenticated as `user`; refused when the user is unknown, disabled, or
    /// already has `maxsessions` sessions cluster-wide.
    SessionLogin {
        connid: ConnId,
        user: String,
    },
    SessionClose {
        connid: ConnId,
    },
    /// End these sessions (as if closed) and have their nodes close the connections.
    SessionKick {
        connids: Vec<ConnId>,
    },
    /// Make these sessions reload their user data.
    SessionReload {
        connids: Vec<ConnId>,
    },
    UserCreate {
        user: String,
        hash: String,
        at: String,
        actor: String,
    },
    UserDelete {
        user: String,
        actor: String,
    },
    UserRename {
        user: String,
        new: String,
        actor: String,
    },
    UserUpdate {
        user: String,
        change: UserChange,
        actor: String,
    },
    TaskPush {
        task: Task,
    },
    TaskPull {
        pull: Pull,
    },
    /// `task.result|error` from connection `worker`: refused unless it is the task's
    /// current worker (a stale worker, requeued away from, cannot end the new assignment).
    TaskFinish {
        taskid: TaskId,
        worker: ConnId,
        ending: Ending,
    },
    TaskReject {
        taskid: TaskId,
        worker: ConnId,
    },
    /// Cancel `connid`'s own pending push (by task id) or pull (by pull id).
    TaskCancel {
        id: String,
        connid: ConnId,
    },
    /// Proposed by the leader when deadlines have passed on the cluster clock (the entry's
    /// stamp); apply ends what is due at that point of the log.
    Expire {},
    Lock {
        lock: String,
        connid: ConnId,
    },
    Unlock {
        lock: String,
        connid: ConnId,
    },
    /// `sync.lock` with a wait (log format 2): granted at once when the lock is free, else
    /// queued behind the waits committed before it, for `wait_ms` of cluster time.
    LockWait {
        lock: String,
        connid: ConnId,
        wait_id: String,
        wait_ms: u64,
    },
    Subscribe {
        pipeid: PipeId,
        topic: String,
    },
    Unsubscribe {
        pipeid: PipeId,
        topic: String,
    },
    PipeClosed {
        pipeid: PipeId,
    },
}

impl Command {
    /// The log format this command needs (`codec::LOG_VERSION` when it was added): its
    /// entry carries it, and a node of an older format refuses the entry instead of
    /// misreading it. Every command so far is of format 1.
    pub fn log_version(&self) -> u32 {
        match self {
            Command::NodeStarted { .. }
            | Command::NodeDown { .. }
            | Command::Bootstrap { .. }
            | Command::SessionOpen { .. }
            | Command::SessionLogin { .. }
            | Command::SessionClose { .. }
            | Command::SessionKick { .. }
            | Command::SessionReload { .. }
            | Command::UserCreate { .. }
            | Command::UserDelete { .. }
            | Command::UserRename { .. }
            | Command::UserUpdate { .. }
            | Command::TaskPush { .. }
            | Command::TaskPull { .. }
            | Command::TaskFinish { .. }
            | Command::TaskReject { .. }
            | Command::TaskCancel { .. }
            | Command::Expire {}
            | Command::Lock { .. }
            | Command::Unlock { .. }
            | Command::Subscribe { .. }
            | Command::Unsubscribe { .. }
            | Command::PipeClosed { .. } => 1,
            Command::LockWait { .. } => 2,
        }
    }
}

/// A member joined (as voter or learner, at `addr`) or left the Raft configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    Added {
        node_id: RaftId,
        addr: Option<String>,
    },
    Removed {
        node_id: RaftId,
    },
}

/// What applying a command changed, for the local reactions of each node.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    User {
        action: &'static str,
        user: String,
    },
    SessionOpened {
        connid: ConnId,
    },
    SessionClosed {
        connid: ConnId,
    },
    /// A node process was declared gone (or left).
    NodeDown {
        node_id: RaftId,
        incarnation: String,
    },
    Kick {
        connid: ConnId,
    },
    Reload {
        connid: ConnId,
    },
    /// A waiting pull got a task: the puller's node answers the pull with `answer`.
    TaskAssigned {
        pull_id: PullId,
        puller: ConnId,
        answer: Value,
    },
    /// A non-detached task ended: the pusher's node answers the push.
    TaskEnded {
        taskid: TaskId,
        pusher: ConnId,
        outcome: Outcome,
    },
    /// A waiting pull ended without a task (cancel, timeout).
    PullEnded {
        pull_id: PullId,
        connid: ConnId,
        error: RpcError,
    },
    /// A queued lock wait was granted the lock: the waiter's node answers it.
    LockGranted {
        wait_id: String,
        connid: ConnId,
        lock: String,
        token: u64,
        ticket: u64,
    },
    /// A queued lock wait ended without the lock (its time passed).
    LockWaitEnded {
        wait_id: String,
        connid: ConnId,
        lock: String,
        error: RpcError,
    },
    /// Publish `msg` on `topic` to the local subscribed pipes (hooks).
    Hook {
        topic: String,
        msg: Value,
    },
    /// The whole state was replaced by a snapshot from the leader: events inside it were
    /// never emitted here, so waiters must be reconciled against the new state.
    StateReplaced,
}

pub type Outcome = Result<Value, RpcError>;

#[derive(Debug, Default, Clone)]
#[cfg_attr(test, derive(Serialize))]
pub struct State {
    pub users: Users,
    pub sessions: Sessions,
    pub tasks: Tasks,
    pub locks: Locks,
    pub topics: Topics,
    /// Set once `root` has been created, so that deleting it later does not recreate it.
    pub bootstrapped: bool,
    /// Members, cluster clock, proposer fencing.
    pub cluster: Cluster,
}

impl State {
    /// Applies one committed entry: refused when it comes from a fenced incarnation or was
    /// already applied; otherwise the cluster clock moves to its stamp and the command runs.
    pub fn apply_entry(&mut self, origin: &Origin, cmd: Command) -> (Outcome, Vec<Event>) {
        match self.cluster.admit(origin) {
            Admit::New => {}
            Admit::Duplicate => {
                return (
                    Err(RpcError::internal("duplicate proposal, applied before")),
                    Vec::new(),
                )
            }
            Admit::Stale => {
                return (
                    Err(RpcError::internal(
                        "proposal from a previous incarnation of its node, refused",
                    )),
                    Vec::new(),
                )
            }
        }
        self.cluster.advance_clock(origin.clock_ms);
        self.apply(cmd)
    }

    /// Applies one committed command. The outcome is what the proposer answers.
    pub fn apply(&mut self, cmd: Command) -> (Outcome, Vec<Event>) {
        let mut events = Vec::new();
        // Waits past their deadline end before this entry can grant a lock to one of them.
        self.end_expired_waits(&mut events);
        let outcome = match cmd {
            Command::NodeStarted {
                node_id,
                incarnation,
                generation,
            } => {
                self.cluster.node_started(node_id, &incarnation, generation);
                let stale = self.sessions.stale(node_id, &incarnation);
                self.close_sessions(&stale, &mut events);
                Ok(crate::rpc::ok())
            }
            Command::NodeDown {
                node_id,
                incarnation,
            } => {
                if self.cluster.node_down(node_id, &incarnation) {
                    let gone = self.sessions.of_node(node_id);
                    self.close_sessions(&gone, &mut events);
                    events.push(Event::NodeDown {
                        node_id,
                        incarnation,
                    });
                }
                Ok(crate::rpc::ok())
            }
            Command::Bootstrap { root_hash, at } => {
                if !self.bootstrapped {
                    self.bootstrapped = true;
                    self.users.bootstrap_root(root_hash, at);
                    events.push(Event::User {
                        action: "create",
                        user: users::ROOT_USER.to_string(),
                    });
                }
                Ok(crate::rpc::ok())
            }
            Command::SessionOpen { session } => {
                // A late open from a process declared gone would leave a zombie session.
                if !self
                    .cluster
                    .is_current(session.node_id, &session.incarnation)
                {
                    return (
                        Err(RpcError::internal(
                            "the session's node process is gone, reconnect",
                        )),
                        events,
                    );
                }
                let connid = session.connid.clone();
                if self.sessions.open(session) {
                    events.push(Event::SessionOpened { connid });
                }
                Ok(crate::rpc::ok())
            }
            Command::SessionLogin { connid, user } => {
                let result = self
                    .users
                    .login_check(&user, |u| self.sessions.count_of(u, &connid));
                if result.is_ok() {
                    self.sessions.set_user(&connid, &user);
                    self.user_hook("login", &user, &user, None, &mut events);
                }
                result
            }
            Command::SessionClose { connid } => {
                self.close_session(&connid, &mut events);
                Ok(crate::rpc::ok())
            }
            Command::SessionKick { connids } => {
                // The session ends here, everywhere at once (its locks, pulls and pushes
                // go as on a close); its node then closes the connection.
                let kicked: Vec<ConnId> = connids
                    .into_iter()
                    .filter(|c| self.sessions.get(c).is_some())
                    .collect();
                self.close_sessions(&kicked, &mut events);
                let n = kicked.len();
                events.extend(kicked.into_iter().map(|connid| Event::Kick { connid }));
                Ok(serde_json::json!({ "kicked": n }))
            }
            Command::SessionReload { connids } => {
                let mut n = 0;
                for connid in connids
                    .into_iter()
                    .filter(|c| self.sessions.get(c).is_some())
                {
                    events.push(Event::Reload { connid });
                    n += 1;
                }
                Ok(serde_json::json!({ "reloaded": n }))
            }
            Command::UserCreate {
                user,
                hash,
                at,
                actor,
            } => {
                let r = self.users.create(&user, hash, at, &mut events);
                self.user_hook_if(&r, "create", &user, &actor, None, &mut events);
                r
            }
            Command::UserDelete { user, actor } => {
                let r = self.users.delete(&user, &mut events);
                self.user_hook_if(&r, "delete", &user, &actor, None, &mut events);
                r
            }
            Command::UserRename { user, new, actor } => {
                let r = self.users.rename(&user, &new, &mut events);
                let detail = Some(serde_json::json!({ "new": new }));
                self.user_hook_if(&r, "rename", &user, &actor, detail, &mut events);
                r
            }
            Command::UserUpdate {
                user,
                change,
                actor,
            } => {
                let action = change.action();
                let detail = change.hook_detail();
                let r = self.users.update(&user, change, &mut events);
                self.user_hook_if(&r, action, &user, &actor, detail, &mut events);
                r
            }
            Command::TaskPush { task } => {
                if self.sessions.get(&task.pusher).is_none() {
                    return (Err(unknown_session()), events);
                }
                let mut emit = tasks::Emit::new(&mut events, self.topics.any_under("hook"));
                self.tasks.push(task, self.cluster.clock_ms, &mut emit)
            }
            Command::TaskPull { pull } => {
                if self.sessions.get(&pull.connid).is_none() {
                    return (Err(unknown_session()), events);
                }
                let mut emit = tasks::Emit::new(&mut events, self.topics.any_under("hook"));
                self.tasks.pull(pull, self.cluster.clock_ms, &mut emit)
            }
            Command::TaskFinish {
                taskid,
                worker,
                ending,
            } => {
                let mut emit = tasks::Emit::new(&mut events, self.topics.any_under("hook"));
                self.tasks.finish(&taskid, &worker, ending, &mut emit)
            }
            Command::TaskReject { taskid, worker } => {
                let mut emit = tasks::Emit::new(&mut events, self.topics.any_under("hook"));
                self.tasks.reject(&taskid, &worker, &mut emit)
            }
            Command::TaskCancel { id, connid } => {
                let mut emit = tasks::Emit::new(&mut events, self.topics.any_under("hook"));
                self.tasks.cancel(&id, &connid, &mut emit)
            }
            Command::Expire {} => {
                let mut emit = tasks::Emit::new(&mut events, self.topics.any_under("hook"));
                self.tasks.expire(self.cluster.clock_ms, &mut emit);
                Ok(crate::rpc::ok())
            }
            Command::Lock { lock, connid } => {
                if self.sessions.get(&connid).is_none() {
                    return (Err(unknown_session()), events);
                }
                match self.locks.lock(&lock, &connid) {
                    Some(token) => Ok(serde_json::json!({"ok": true, "token": token})),
                    None => Err(RpcError::new(ERR_LOCK_NOT_OWNED)),
                }
            }
            Command::Unlock { lock, connid } => {
                let mut granted = Vec::new();
                let released = self.locks.unlock(&lock, &connid, &mut granted);
                grants_to_events(granted, &mut events);
                if released {
                    Ok(crate::rpc::ok())
                } else {
                    Err(RpcError::new(ERR_LOCK_NOT_OWNED))
                }
            }
            Command::LockWait {
                lock,
                connid,
                wait_id,
                wait_ms,
            } => {
                if self.sessions.get(&connid).is_none() {
                    return (Err(unknown_session()), events);
                }
                let now = self.cluster.clock_ms;
                let deadline = now.saturating_add(wait_ms);
                match self.locks.wait(&lock, &connid, &wait_id, now, deadline) {
                    WaitOutcome::Granted { token, ticket } => {
                        // Also as an event: a waiter whose proposal's outcome was lost
                        // learns its grant from it.
                        events.push(Event::LockGranted {
                            wait_id,
                            connid,
                            lock,
                            token,
                            ticket,
                        });
                        Ok(serde_json::json!({"ok": true, "token": token, "ticket": ticket}))
                    }
                    WaitOutcome::Queued { ahead, ticket } => Ok(serde_json::json!({
                        "queued": true,
                        "ahead": ahead,
                        "ticket": ticket
                    })),
                    WaitOutcome::HeldBySelf => Err(RpcError::detail(
                        ERR_LOCK_NOT_OWNED,
                        "this connection holds the lock",
                    )),
                }
            }
            Command::Subscribe { pipeid, topic } => {
                if !self.pipe_owner_alive(&pipeid) {
                    return (Err(RpcError::new(ERR_INVALID_PIPE)), events);
                }
                self.topics.subscribe(&pipeid, &topic);
                Ok(crate::rpc::ok())
            }
            Command::Unsubscribe { pipeid, topic } => {
                self.topics.unsubscribe(&pipeid, &topic);
                Ok(crate::rpc::ok())
            }
            Command::PipeClosed { pipeid } => {
                self.topics.unsubscribe_prefix(pipeid.as_str());
                Ok(crate::rpc::ok())
            }
        };
        (outcome, events)
    }

    /// Applies a committed membership change (a Raft conf change entry), on every node
    /// alike. Raft's own configuration is the consensus layer's; this is the state's half.
    pub fn apply_member_change(&mut self, change: MemberChange) -> Vec<Event> {
        match change {
            MemberChange::Added { node_id, addr } => {
                // A change without an address (an old entry) keeps the one known.
                if let Some(addr) = addr {
                    self.cluster.members.insert(node_id, addr);
                }
                Vec::new()
            }
            MemberChange::Removed { node_id } => self.member_removed(node_id),
        }
    }

    /// Member `node_id` left the Raft configuration: what its process still owned goes as
    /// on `NodeDown`.
    fn member_removed(&mut self, node_id: RaftId) -> Vec<Event> {
        let mut events = Vec::new();
        self.cluster.members.remove(&node_id);
        if let Some(rec) = self.cluster.nodes.remove(&node_id) {
            events.push(Event::NodeDown {
                node_id,
                incarnation: rec.incarnation,
            });
        }
        let gone = self.sessions.of_node(node_id);
        self.close_sessions(&gone, &mut events);
        events
    }

    /// The member whose current process owns `id` (a connid, or a pipe, task or pull id
    /// starting with one); None when that process is gone.
    pub fn owner_node(&self, id: &str) -> Option<RaftId> {
        let incarnation = crate::ids::incarnation_of(id)?;
        self.cluster.node_of_incarnation(incarnation)
    }

    /// A pipe can be subscribed while the connection owning it is open.
    fn pipe_owner_alive(&self, pipeid: &PipeId) -> bool {
        pipeid
            .owner()
            .is_some_and(|connid| self.sessions.get(&connid).is_some())
    }

    /// Connections that end together: none of them is granted a lock another releases.
    fn close_sessions(&mut self, connids: &[ConnId], events: &mut Vec<Event>) {
        for connid in connids {
            self.locks.drop_waits(connid);
        }
        for connid in connids {
            self.close_session(connid, events);
        }
    }

    /// Everything a connection owned goes with it: its session record, pulls, non-detached
    /// pushes, locks and pipe subscriptions; tasks it was working on are requeued.
    fn close_session(&mut self, connid: &ConnId, events: &mut Vec<Event>) {
        if !self.sessions.close(connid) {
            return;
        }
        events.push(Event::SessionClosed {
            connid: connid.clone(),
        });
        let mut emit = tasks::Emit::new(events, self.topics.any_under("hook"));
        self.tasks.connection_closed(connid, &mut emit);
        let mut granted = Vec::new();
        self.locks.release_all(connid, &mut granted);
        grants_to_events(granted, events);
        self.topics.unsubscribe_prefix(connid.as_str());
    }

    fn user_hook_if(
        &self,
        result: &Outcome,
        action: &str,
        user: &str,
        actor: &str,
        detail: Option<Value>,
        events: &mut Vec<Event>,
    ) {
        if result.is_ok() {
            self.user_hook(action, user, actor, detail, events);
        }
    }

    /// `hook.user.<user>.<actor>`; never carries a password or hash.
    fn user_hook(
        &self,
        action: &str,
        user: &str,
        actor: &str,
        detail: Option<Value>,
        events: &mut Vec<Event>,
    ) {
        if !self.topics.any_under("hook") {
            return;
        }
        let mut msg = serde_json::json!({"action": action, "user": user, "actor": actor});
        if let Some(Value::Object(extra)) = detail {
            for (k, v) in extra {
                msg[k] = v;
            }
        }
        events.push(Event::Hook {
            topic: format!("hook.user.{user}.{actor}"),
            msg,
        });
    }

    /// What a new cluster can start from: this state after every process of its cluster
    /// is gone. Each session ends as on a close (its locks released, the tasks it worked
    /// on requeued, its pulls, non-detached pushes and subscriptions gone); the member
    /// table, node processes and proposer records go; users, the task queue, the lock
    /// token counter and the cluster clock stay. A backup holds this form.
    pub fn portable(&self) -> State {
        let mut state = self.clone();
        let mut discarded = Vec::new();
        let connids: Vec<ConnId> = state.sessions.by_connid.keys().cloned().collect();
        state.close_sessions(&connids, &mut discarded);
        state.topics = Topics::default();
        state.cluster = Cluster {
            id: String::new(),
            clock_ms: self.cluster.clock_ms,
            ..Cluster::default()
        };
        state
    }

    /// Makes a portable state the state of a new cluster `id` whose one member is `me`,
    /// reached at `addr`.
    pub fn found_cluster(&mut self, id: String, me: RaftId, addr: String) {
        self.cluster.id = id;
        self.cluster.members = [(me, addr)].into();
    }

    /// Ends the lock waits whose deadline the cluster clock has reached.
    fn end_expired_waits(&mut self, events: &mut Vec<Event>) {
        for (lock, wait) in self.locks.expire(self.cluster.clock_ms) {
            events.push(Event::LockWaitEnded {
                wait_id: wait.id,
                connid: wait.connid,
                lock,
                error: RpcError::detail(ERR_LOCK_NOT_OWNED, "the wait timed out"),
            });
        }
    }

    /// The earliest deadline on the cluster clock: of a task, a pull or a lock wait.
    pub fn next_deadline(&self) -> Option<u64> {
        match (self.tasks.next_deadline(), self.locks.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The state in its snapshot form (versioned binary, proto/log.proto).
    pub fn to_snapshot(&self) -> Vec<u8> {
        codec::encode_state(self)
    }

    pub fn from_snapshot(data: &[u8]) -> Result<State, codec::DecodeError> {
        let mut state = codec::decode_state(data)?;
        state.sessions.rebuild_index();
        state.tasks.rebuild_index();
        state.locks.rebuild_index();
        state.topics.rebuild_index();
        Ok(state)
    }
}

/// Waits granted a lock, as the events their nodes answer them by.
fn grants_to_events(granted: Vec<Granted>, events: &mut Vec<Event>) {
    for g in granted {
        events.push(Event::LockGranted {
            wait_id: g.wait.id,
            connid: g.wait.connid,
            lock: g.lock,
            token: g.token,
            ticket: g.wait.ticket,
        });
    }
}

fn unknown_session() -> RpcError {
    RpcError::internal("unknown session")
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
