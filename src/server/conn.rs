//! One connection as request handlers see it: its identity, auth state and watchdog, and
//! the queue its answers leave through. The Session actor (`session`) owns it; the API
//! (`api`) only reads and updates it, so the two do not depend on each other.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use nexus_core::auth::Tags;
use nexus_core::ids::{ConnId, PipeId};
use nexus_core::rpc::RpcError;

pub const NOBODY: &str = "nobody";
pub const WATCHDOG_MIN: u64 = 10;
pub const WATCHDOG_MAX: u64 = 1800;

/// Who the connection is logged in as, and the tags in force for it (by prefix).
#[derive(Debug, Clone)]
pub struct AuthState {
    pub user: String,
    pub tags: Tags,
    /// A login plugin's tag mask, reapplied on reload.
    pub mask: Option<Tags>,
    pub metadata: Value,
}

impl AuthState {
    pub(crate) fn nobody() -> Self {
        AuthState {
            user: NOBODY.to_string(),
            tags: Tags::new(),
            mask: None,
            metadata: Value::Null,
        }
    }

    pub fn logged_in(&self) -> bool {
        self.user != NOBODY
    }
}

/// The per-connection data request handlers use.
pub struct Conn {
    pub connid: ConnId,
    pub remote: String,
    pub protocol: &'static str,
    pub auth: RefCell<AuthState>,
    pub watchdog: Cell<u64>,
    pub(crate) last_activity: Cell<Instant>,
    pub(crate) out: mpsc::UnboundedSender<Outgoing>,
    /// Pending pushes and pulls by JSON-RPC request id (serialised): their task or pull id,
    /// so that `task.cancel` can find them.
    pub pending: RefCell<std::collections::HashMap<String, String>>,
    /// Pipes this connection owns; closed with it.
    pub pipes: RefCell<std::collections::BTreeSet<PipeId>>,
    /// The backup file this connection took and is reading (`sys.backup.*`).
    pub backup: RefCell<Option<std::sync::Arc<Vec<u8>>>>,
}

/// One serialised response on its way to the socket. It holds its request's in-flight
/// permit until the writer has written it, so a client that stops reading its answers
/// stops being read too: queued output is bounded by `--max-inflight`.
pub struct Outgoing {
    pub text: String,
    pub(crate) _permit: Option<OwnedSemaphorePermit>,
}

impl Conn {
    /// Queues one serialised response for the transport writer.
    pub fn send(&self, text: String) {
        self.send_held(text, None);
    }

    pub(crate) fn send_held(&self, text: String, permit: Option<OwnedSemaphorePermit>) {
        self.last_activity.set(Instant::now());
        let _ = self.out.send(Outgoing {
            text,
            _permit: permit,
        });
    }

    pub fn user(&self) -> String {
        self.auth.borrow().user.clone()
    }

    /// Fails with `-32010` unless the tags in force at `path` allow `method`.
    pub fn require(&self, path: &str, method: &str) -> Result<(), RpcError> {
        if nexus_core::auth::may(&self.auth.borrow().tags, path, method) {
            Ok(())
        } else {
            Err(RpcError::permission_denied())
        }
    }
}
