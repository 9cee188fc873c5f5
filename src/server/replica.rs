//! This node's replica of the cluster state: commands proposed through Raft, and reads of
//! what was applied. Most handlers need nothing else.

use std::sync::{Arc, RwLock};

use nexus_consensus::RaftHandle;
use nexus_core::rpc::{RpcError, RpcResult};
use nexus_core::state::{Command, State};

pub struct Replica {
    /// For what is not a command or a read: stats, leadership transfer, shutdown.
    pub raft: RaftHandle,
    state: Arc<RwLock<State>>,
}

impl Replica {
    pub fn new(raft: RaftHandle, state: Arc<RwLock<State>>) -> Self {
        Replica { raft, state }
    }

    /// Proposes `cmd`; answered once this node applied it.
    pub async fn propose(&self, cmd: Command) -> RpcResult {
        self.raft.propose(cmd).await
    }

    /// Runs `f` on the applied state. Keep it short: the Raft thread waits for the lock.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Like `read`, after a Raft read barrier: sees every write acknowledged on any node
    /// before the call (linearizable lists, counts, logins, kicks).
    pub async fn read_linear<R>(&self, f: impl FnOnce(&State) -> R) -> Result<R, RpcError> {
        self.raft.read_barrier().await?;
        Ok(self.read(f))
    }

    /// The shared state itself, for the telemetry that samples it.
    pub fn state(&self) -> &Arc<RwLock<State>> {
        &self.state
    }
}
