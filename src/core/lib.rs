//! The pure core of Nexus-rs: what every other crate agrees on, with no I/O and no clock.
//!
//! - `proto`: node-to-node messages and the Raft log's commands and snapshots (protobuf);
//! - `backup`: the backup file format;
//! - `rpc`: JSON-RPC 2.0 types and error codes;
//! - `names`, `auth`, `listing`: names, permissions and list filters of the Nexus API;
//! - `state`: the replicated state machine. Time reaches it only as the leader-stamped
//!   cluster clock inside each entry.

pub mod auth;
pub mod backup;
pub mod ids;
pub mod listing;
pub mod names;
pub mod rpc;
pub mod state;
pub mod time;

/// Generated from `proto/`: node-to-node messages (`nexus.proto`), the Raft log's commands
/// and the state snapshot format (`log.proto`).
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/nexus.rs"));
}
