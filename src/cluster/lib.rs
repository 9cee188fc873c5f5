//! The cluster: gossip membership (chitchat), the authenticated peer transport, and forming
//! and joining a cluster.

pub mod gossip;
pub mod membership;
pub mod routing;
pub mod secret;
pub mod transport;

use nexus_core::ids::RaftId;
use std::sync::Arc;

/// Version of the cluster protocol (frames and log format); nodes of another version are
/// refused at the hello. 2: commands and snapshots in proto/log.proto instead of JSON.
pub const CLUSTER_VERSION: u32 = 2;

/// What the rest of the node reaches of the cluster side (absent when standalone).
pub struct ClusterLink {
    pub gossip: Arc<gossip::Gossip>,
    pub transport: transport::Transport,
    pub router: routing::Router,
}

/// Receives the frames of routed deliveries (pipe writes, topic publishes and their
/// answers) with the member that sent them.
pub type RoutedSink = Arc<dyn Fn(RaftId, nexus_core::proto::Frame) + Send + Sync>;
