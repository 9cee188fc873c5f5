//! The Nexus-rs server: what one node runs on top of the Raft layer and the cluster.
//!
//! Inside, each module only uses those listed above it:
//! - `telemetry`, `throttle`, `credcache`: logging, failed-login throttling, remembered
//!   credentials;
//! - `metrics`: what `/metrics` exports;
//! - `replica`, `logins`: the narrow services handlers take: proposals and reads of the
//!   cluster state; password hashing, the login throttle and the credential cache;
//! - `pipe`, `lock`, `local`, `node`: the Pipe and Lock actors, what this process holds
//!   for its connections, and what the node-wide handlers share (identity, the services
//!   above, cluster link), reacting to applied events;
//! - `conn`, `api`, `session`: one connection as handlers see it, the API namespaces, the
//!   session actor that runs requests through them;
//! - `transport`: listeners (tcp/ssl stream, ws/wss, the HTTP bridge, health, dashboard);
//! - `reconcile`, `recovery`, `server`: repair of this process's footprint, restore and
//!   forced new clusters at start, and starting and stopping a node; `config`, `config_file`:
//!   `nexus serve`'s settings, and the config file that may give them.

pub mod api;
pub mod build_info;
pub mod config;
pub mod config_file;
pub mod conn;
pub mod credcache;
pub mod idle_memory;
pub mod local;
pub mod lock;
pub mod logins;
pub mod metrics;
pub mod node;
pub mod pipe;
pub mod reconcile;
pub mod recovery;
pub mod reload;
pub mod replica;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod throttle;
pub mod transport;
