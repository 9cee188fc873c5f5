//! The cluster: gossip membership (chitchat), the authenticated peer transport, and forming
//! and joining a cluster.

pub mod gossip;
pub mod membership;
pub mod secret;
pub mod transport;

/// Version of the cluster protocol (frames and log format); nodes of another version are
/// refused at the hello.
pub const CLUSTER_VERSION: u32 = 1;
