//! The node: what every session and handler shares — identity, the Raft handle, the applied
//! state, and the registry of this node's live sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use actix::{Message, Recipient};

use crate::config::ServeArgs;
use crate::consensus::RaftHandle;
use crate::state::State;

/// Requests other parts of the node send to a session actor.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub enum Control {
    /// Close the connection (kick, shutdown).
    Close,
    /// Reload the session's user data.
    Reload,
}

pub struct Node {
    pub args: ServeArgs,
    pub raft_id: u64,
    /// 8 lowercase hex chars, new on every process start; prefix of every connid here.
    pub incarnation: String,
    pub raft: RaftHandle,
    pub state: Arc<RwLock<State>>,
    sessions: Mutex<HashMap<String, Recipient<Control>>>,
}

impl Node {
    pub fn new(
        args: ServeArgs,
        raft_id: u64,
        incarnation: String,
        raft: RaftHandle,
        state: Arc<RwLock<State>>,
    ) -> Self {
        Node {
            args,
            raft_id,
            incarnation,
            raft,
            state,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` on the applied state. Keep it short: the Raft thread waits for the lock.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|e| e.into_inner()))
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

/// `n` random lowercase hex chars.
pub fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n.div_ceil(2)).map(|_| rand::random::<u8>()).collect();
    let mut s = hex::encode(bytes);
    s.truncate(n);
    s
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2016-08-31T09:44:16.316Z`.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
