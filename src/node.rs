//! The node: what every session and handler shares — identity, the Raft handle, the applied
//! state, and the registry of this node's live sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use actix::{Addr, Message, Recipient};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::consensus::RaftHandle;
use crate::pipe::{self, Pipe};
use crate::rpc::RpcResult;
use crate::state::{Event, State};

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
    /// Password hashes computed at once (0: one per core).
    pub hash_concurrency: usize,
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
    pub raft_id: u64,
    /// 8 lowercase hex chars, new on every process start; prefix of every connid here.
    pub incarnation: String,
    pub raft: RaftHandle,
    pub state: Arc<RwLock<State>>,
    /// Concurrent password hashes allowed (see `api::hashing`).
    pub hash_slots: tokio::sync::Semaphore,
    /// The listener URLs, for `sys.node.list`.
    pub listening: Mutex<Vec<String>>,
    /// Gossip and the peer transport; unset when standalone.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::ClusterLink>>,
    sessions: Mutex<HashMap<String, Recipient<Control>>>,
    /// This node's pipes by pipeid.
    pipes: Mutex<HashMap<String, Addr<Pipe>>>,
    /// Requests waiting for an applied event: pushes by task id, pulls by pull id.
    waiters: Mutex<HashMap<String, oneshot::Sender<RpcResult>>>,
}

/// Removes a waiter when the waiting request goes away (answered, cancelled, or its
/// connection closed).
pub struct WaiterGuard<'a> {
    node: &'a Node,
    key: String,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        lock(&self.node.waiters).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    pub fn new(
        limits: Limits,
        raft_id: u64,
        incarnation: String,
        raft: RaftHandle,
        state: Arc<RwLock<State>>,
    ) -> Self {
        let hashes = match limits.hash_concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Node {
            limits,
            raft_id,
            incarnation,
            raft,
            state,
            hash_slots: tokio::sync::Semaphore::new(hashes),
            listening: Mutex::new(Vec::new()),
            cluster: std::sync::OnceLock::new(),
            sessions: Mutex::new(HashMap::new()),
            pipes: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
        }
    }

    /// Registers interest in the event that ends request `key`; the guard unregisters.
    pub fn wait_for(&self, key: &str) -> (oneshot::Receiver<RpcResult>, WaiterGuard<'_>) {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(key.to_string(), tx);
        (
            rx,
            WaiterGuard {
                node: self,
                key: key.to_string(),
            },
        )
    }

    fn wake(&self, key: &str, result: RpcResult) {
        if let Some(tx) = lock(&self.waiters).remove(key) {
            let _ = tx.send(result);
        }
    }

    pub fn add_pipe(&self, pipeid: &str, addr: Addr<Pipe>) {
        lock(&self.pipes).insert(pipeid.to_string(), addr);
    }

    pub fn pipe(&self, pipeid: &str) -> Option<Addr<Pipe>> {
        lock(&self.pipes).get(pipeid).cloned()
    }

    /// Unregisters and stops a pipe; false when it was not here.
    pub fn close_pipe(&self, pipeid: &str) -> bool {
        match lock(&self.pipes).remove(pipeid) {
            Some(addr) => {
                addr.do_send(pipe::Close);
                true
            }
            None => false,
        }
    }

    /// Delivers `msg` published on `topic` to the subscribed pipes of this node; answers how
    /// many pipes are subscribed cluster-wide.
    pub fn publish(&self, topic: &str, msg: &Value) -> usize {
        let targets: Vec<String> = self.read(|s| {
            s.topics
                .matching(topic)
                .into_iter()
                .map(str::to_string)
                .collect()
        });
        let envelope = json!({"topic": topic, "msg": msg});
        let pipes = lock(&self.pipes);
        for pipeid in &targets {
            if let Some(addr) = pipes.get(pipeid) {
                addr.do_send(pipe::Write(vec![envelope.clone()]));
            }
        }
        targets.len()
    }

    /// Reacts to applied events that concern this node's connections.
    pub fn handle_events(&self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::TaskAssigned {
                    pull_id, answer, ..
                } => self.wake(&pull_id, Ok(answer)),
                Event::TaskEnded {
                    taskid, outcome, ..
                } => self.wake(&taskid, outcome),
                Event::PullEnded { pull_id, error, .. } => self.wake(&pull_id, Err(error)),
                Event::Kick { connid } => self.control(&connid, Control::Kick),
                Event::Reload { connid } => self.control(&connid, Control::Reload),
                Event::Hook { topic, msg } => {
                    self.publish(&topic, &msg);
                }
                Event::StateReplaced => self.reconcile_waiters(),
                Event::User { .. } | Event::SessionOpened { .. } | Event::SessionClosed { .. } => {}
            }
        }
    }

    /// After a snapshot install: pushes and pulls whose task or pull is gone ended inside
    /// the snapshot, and their answer was never seen here.
    fn reconcile_waiters(&self) {
        let keys: Vec<String> = lock(&self.waiters).keys().cloned().collect();
        let gone: Vec<String> =
            self.read(|s| keys.into_iter().filter(|k| !s.tasks.contains(k)).collect());
        for k in gone {
            self.wake(
                &k,
                Err(crate::rpc::RpcError::internal(
                    "this node caught up by snapshot: the outcome is unknown, retry",
                )),
            );
        }
    }

    fn control(&self, connid: &str, c: Control) {
        if let Some(r) = self.sessions_lock().get(connid) {
            r.do_send(c);
        }
    }

    /// Runs `f` on the applied state. Keep it short: the Raft thread waits for the lock.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Like `read`, after a Raft read barrier: sees every write acknowledged on any node
    /// before the call (linearizable lists, counts, logins, kicks).
    pub async fn read_linear<R>(
        &self,
        f: impl FnOnce(&State) -> R,
    ) -> Result<R, crate::rpc::RpcError> {
        self.raft.read_barrier().await?;
        Ok(self.read(f))
    }

    /// A new connection id: incarnation + 8 random hex chars.
    pub fn new_connid(&self) -> String {
        format!("{}{}", self.incarnation, random_hex(8))
    }

    pub fn register_session(&self, connid: &str, r: Recipient<Control>) {
        self.sessions_lock().insert(connid.to_string(), r);
    }

    pub fn unregister_session(&self, connid: &str) {
        self.sessions_lock().remove(connid);
    }

    pub fn local_session_count(&self) -> usize {
        self.sessions_lock().len()
    }

    /// Sends `c` to every local session (shutdown).
    pub fn broadcast(&self, c: Control) {
        for r in self.sessions_lock().values() {
            r.do_send(c);
        }
    }

    fn sessions_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Recipient<Control>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connid: incarnation (8 hex) + 8 hex.
pub const CONNID_LEN: usize = crate::names::CONNID_LEN;
/// Random hex after the connid in task, pull and pipe ids.
pub const ID_SUFFIX_LEN: usize = 20;

pub use crate::clock::{now_ms, now_rfc3339, random_hex, rfc3339_ms};
