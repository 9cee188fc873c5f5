//! The replicated state machine. Every node applies the same committed commands in the
//! same order and reaches the same state. `apply` is deterministic: no clock, no
//! randomness, no I/O — ids, hashes and timestamps travel inside the command.

mod sessions;
mod users;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rpc::RpcError;

pub use sessions::{SessionRecord, Sessions};
pub use users::{User, UserChange, Users};

/// A change to durable state, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Command {
    /// A node process started: sessions of its earlier incarnations are gone.
    NodeStarted {
        node_id: u64,
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
        connid: String,
        user: String,
    },
    SessionClose {
        connid: String,
    },
    UserCreate {
        user: String,
        hash: String,
        at: String,
    },
    UserDelete {
        user: String,
    },
    UserRename {
        user: String,
        new: String,
    },
    UserUpdate {
        user: String,
        change: UserChange,
    },
}

/// What applying a command changed, for the local reactions of each node.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    User { action: &'static str, user: String },
    SessionOpened { connid: String },
    SessionClosed { connid: String },
}

pub type Outcome = Result<Value, RpcError>;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    pub users: Users,
    pub sessions: Sessions,
    /// Set once `root` has been created, so that deleting it later does not recreate it.
    pub bootstrapped: bool,
}

impl State {
    /// Applies one committed command. The outcome is what the proposer answers.
    pub fn apply(&mut self, cmd: Command) -> (Outcome, Vec<Event>) {
        let mut events = Vec::new();
        let outcome = match cmd {
            Command::NodeStarted {
                node_id,
                incarnation,
            } => {
                for connid in self.sessions.remove_stale(node_id, &incarnation) {
                    events.push(Event::SessionClosed { connid });
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
                events.push(Event::SessionOpened {
                    connid: session.connid.clone(),
                });
                self.sessions.open(session);
                Ok(crate::rpc::ok())
            }
            Command::SessionLogin { connid, user } => {
                let result = self
                    .users
                    .login_check(&user, |u| self.sessions.count_of(u, &connid));
                if result.is_ok() {
                    self.sessions.set_user(&connid, &user);
                }
                result
            }
            Command::SessionClose { connid } => {
                if self.sessions.close(&connid) {
                    events.push(Event::SessionClosed { connid });
                }
                Ok(crate::rpc::ok())
            }
            Command::UserCreate { user, hash, at } => {
                self.users.create(&user, hash, at, &mut events)
            }
            Command::UserDelete { user } => self.users.delete(&user, &mut events),
            Command::UserRename { user, new } => self.users.rename(&user, &new, &mut events),
            Command::UserUpdate { user, change } => self.users.update(&user, change, &mut events),
        };
        (outcome, events)
    }

    pub fn to_snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("state is always serialisable")
    }

    pub fn from_snapshot(data: &[u8]) -> Result<State, serde_json::Error> {
        let mut state: State = serde_json::from_slice(data)?;
        state.sessions.rebuild_index();
        Ok(state)
    }
}

#[cfg(test)]
mod tests;
