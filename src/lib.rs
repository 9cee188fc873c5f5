//! Nexus-rs: a clustered message broker speaking the Nexus JSON-RPC 2.0 API (1.9).
//!
//! Layering (each module only uses the ones above it):
//! `rpc`, `names`, `auth`, `listing` (pure) → `state` (replicated state machine) →
//! `store`, `consensus` (RocksDB + raft-rs) → `node`, `session`, `api`, `transport` →
//! `server`, `config`, `telemetry`.

pub mod admin;
pub mod api;
pub mod auth;
pub mod bench;
pub mod chaos;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod consensus;
pub mod credcache;
pub mod listing;
pub mod local;
pub mod metrics;
pub mod names;
pub mod node;
pub mod pipe;
pub mod reconcile;
pub mod rpc;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod transport;

/// Generated from `proto/`: node-to-node messages (`nexus.proto`), the Raft log's commands
/// and the state snapshot format (`log.proto`).
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/nexus.rs"));
}
