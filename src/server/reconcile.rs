//! Repairs of this process's footprint in the replicated state, run periodically: whatever
//! a lost or late proposal left wrong converges here instead of staying wrong forever.
//! - The node table must list this process while it runs (a node declared down while cut
//!   off, or that caught up by a snapshot containing its own `NodeDown`, announces itself
//!   again; its connections from before are closed: the cluster already ended them).
//! - Every session record of this process must belong to a live local connection (a close
//!   that could not commit during a long outage, or an open that committed after its
//!   connection was gone, is closed now).

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use tracing::{debug, warn};

use crate::node::{Control, Node};
use nexus_core::ids::ConnId;
use nexus_core::state::Command;

pub async fn run(node: Weak<Node>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(node) = node.upgrade() else {
            return;
        };
        if node.stopping.load(Ordering::Relaxed) || node.replica.raft.stats.leader().is_none() {
            continue;
        }
        rejoin_if_gone(&node).await;
        close_orphans(&node).await;
    }
}

async fn rejoin_if_gone(node: &Node) {
    let (current, member) = node.replica.read(|s| {
        (
            s.cluster.is_current(node.raft_id, &node.incarnation),
            s.cluster.members.contains_key(&node.raft_id),
        )
    });
    if current {
        return;
    }
    if !member {
        debug!("this node is no longer a member of the cluster: not announcing itself");
        return;
    }
    warn!("this node process is not in the cluster's node table (declared down while cut off): closing its connections and announcing it again");
    node.local.broadcast(Control::Close);
    if let Err(e) = node.replica.propose(node.started()).await {
        debug!(
            "announcing this node again failed, will retry: {}",
            e.message
        );
    }
}

async fn close_orphans(node: &Node) {
    let orphans: Vec<ConnId> = node.replica.read(|s| {
        s.sessions
            .iter()
            .filter(|r| r.node_id == node.raft_id && r.incarnation == node.incarnation)
            .filter(|r| !node.local.has_session(&r.connid))
            .map(|r| r.connid.clone())
            .collect()
    });
    for connid in orphans {
        debug!(%connid, "closing a session record without a connection");
        if let Err(e) = node.replica.propose(Command::SessionClose { connid }).await {
            debug!(
                "closing an orphan session failed, will retry: {}",
                e.message
            );
            return;
        }
    }
}
