//! What this process holds for its own connections: the live sessions, the pipes they own,
//! the requests waiting for an applied event, and the Lock actors of the locks they wait
//! for. Nothing here is replicated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use actix::{Actor, Addr, Recipient};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::node::Control;
use crate::pipe::{self, Pipe};
use nexus_core::ids::{ConnId, PipeId};
use nexus_core::rpc::RpcResult;

/// A pipe of this process: its actor and the inbox writers append to.
type LocalPipe = (Addr<Pipe>, Arc<pipe::Inbox>);

#[derive(Default)]
pub struct Local {
    sessions: Mutex<HashMap<ConnId, Recipient<Control>>>,
    /// This node's pipes by pipeid, with their inboxes.
    pipes: Mutex<HashMap<PipeId, LocalPipe>>,
    /// Requests waiting for an applied event: pushes by task id, pulls by pull id (both
    /// as strings: they never collide, each starts with its connid and has its own random).
    waiters: Mutex<HashMap<String, Waiter>>,
    /// Snapshots from a leader this process installed (counted as their event arrives).
    replacements: std::sync::atomic::AtomicU64,
    /// Messages dropped at full pipes of this node (a metric).
    pub pipe_drops: prometheus_client::metrics::counter::Counter,
    /// Published messages put into pipes of this node (a metric).
    pub topic_deliveries: prometheus_client::metrics::counter::Counter,
    /// The Lock actors of the locks that requests of this node wait for.
    pub locks: Arc<crate::lock::Registry>,
}

/// A request waiting for the event that ends it.
struct Waiter {
    tx: oneshot::Sender<RpcResult>,
    /// Its push or pull is known to be in the state: from then on, a snapshot that no
    /// longer holds it swallowed its end. Before, its proposal may still be on its way.
    applied: bool,
}

/// Removes a waiter when the waiting request goes away (answered, cancelled, or its
/// connection closed).
pub struct WaiterGuard<'a> {
    local: &'a Local,
    key: String,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        lock(&self.local.waiters).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Local {
    /// Registers interest in the event that ends request `key`; the guard unregisters.
    pub fn wait_for(&self, key: &str) -> (oneshot::Receiver<RpcResult>, WaiterGuard<'_>) {
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter { tx, applied: false };
        lock(&self.waiters).insert(key.to_string(), waiter);
        (
            rx,
            WaiterGuard {
                local: self,
                key: key.to_string(),
            },
        )
    }

    /// Answers the request waiting on `key`, if it is still here.
    pub fn wake(&self, key: &str, result: RpcResult) {
        if let Some(w) = lock(&self.waiters).remove(key) {
            let _ = w.tx.send(result);
        }
    }

    /// Marks the request waiting on `key` as one whose push or pull was applied here.
    pub fn mark_applied(&self, key: &str) {
        if let Some(w) = lock(&self.waiters).get_mut(key) {
            w.applied = true;
        }
    }

    /// The state was replaced by a leader's snapshot.
    pub fn state_replaced(&self) {
        self.replacements
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many times the state was replaced by a leader's snapshot so far.
    pub fn replacements(&self) -> u64 {
        self.replacements.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Keys of the waiting requests whose push or pull was applied here.
    pub fn waiting_applied(&self) -> Vec<String> {
        lock(&self.waiters)
            .iter()
            .filter(|(_, w)| w.applied)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Starts pipe `pipeid` (capacity `cap` messages, `max_bytes` estimated bytes) here.
    pub fn add_pipe(&self, pipeid: &PipeId, cap: usize, max_bytes: usize) {
        let inbox = Arc::new(pipe::Inbox::default());
        let addr = Pipe::new(cap, max_bytes, inbox.clone(), self.pipe_drops.clone()).start();
        lock(&self.pipes).insert(pipeid.clone(), (addr, inbox));
    }

    pub fn pipe(&self, pipeid: &PipeId) -> Option<Addr<Pipe>> {
        lock(&self.pipes).get(pipeid).map(|(addr, _)| addr.clone())
    }

    /// Unregisters and stops a pipe; false when it was not here.
    pub fn close_pipe(&self, pipeid: &PipeId) -> bool {
        match lock(&self.pipes).remove(pipeid) {
            Some((addr, _)) => {
                addr.do_send(pipe::Close);
                true
            }
            None => false,
        }
    }

    /// Writes `msgs` in order into pipe `pipeid` of this node (none: the pipe is only
    /// checked); gives the messages back when there is no such pipe here.
    pub fn write(&self, pipeid: &PipeId, msgs: Vec<Value>) -> Result<(), Vec<Value>> {
        let pipes = lock(&self.pipes);
        let Some((addr, inbox)) = pipes.get(pipeid) else {
            return Err(msgs);
        };
        if !msgs.is_empty() && inbox.push(msgs) {
            addr.do_send(pipe::Flush);
        }
        Ok(())
    }

    /// Writes `envelope` into those of `pipeids` that live here.
    pub fn deliver(&self, pipeids: &[PipeId], envelope: &Value) {
        let pipes = lock(&self.pipes);
        for pipeid in pipeids {
            if let Some((addr, inbox)) = pipes.get(pipeid) {
                self.topic_deliveries.inc();
                if inbox.push([envelope.clone()]) {
                    addr.do_send(pipe::Flush);
                }
            }
        }
    }

    pub fn pipe_count(&self) -> usize {
        lock(&self.pipes).len()
    }

    pub fn register_session(&self, connid: &ConnId, r: Recipient<Control>) {
        lock(&self.sessions).insert(connid.clone(), r);
    }

    pub fn unregister_session(&self, connid: &ConnId) {
        lock(&self.sessions).remove(connid);
    }

    pub fn has_session(&self, connid: &ConnId) -> bool {
        lock(&self.sessions).contains_key(connid)
    }

    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Sends `c` to session `connid` if it lives here.
    pub fn control(&self, connid: &ConnId, c: Control) {
        if let Some(r) = lock(&self.sessions).get(connid) {
            r.do_send(c);
        }
    }

    /// Sends `c` to every local session (shutdown).
    pub fn broadcast(&self, c: Control) {
        for r in lock(&self.sessions).values() {
            r.do_send(c);
        }
    }
}
