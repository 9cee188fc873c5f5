//! Nexus-rs: a clustered message broker speaking the Nexus JSON-RPC 2.0 API (1.9).
//!
//! Layering (each module only uses the ones above it):
//! `rpc`, `names`, `auth`, `listing` (pure) → `state` (replicated state machine) →
//! `store`, `consensus` (RocksDB + raft-rs) → `node`, `session`, `api`, `transport` →
//! `server`, `config`, `telemetry`.

pub mod admin;
pub mod api;
pub mod bench;
pub mod chaos;
pub mod config;
pub mod conn;
pub mod credcache;
pub mod local;
pub mod metrics;
pub mod node;
pub mod pipe;
pub mod reconcile;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod throttle;
pub mod transport;

pub use nexus_cluster as cluster;
pub use nexus_consensus::{self as consensus, clock, store};
pub use nexus_core::{auth, listing, names, proto, rpc, state};
