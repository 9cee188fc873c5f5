//! `sys.*`: ping, version, watchdog, reload, node list; login and session administration
//! live in their own modules.

use std::rc::Rc;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::conn::{Conn, WATCHDOG_MAX};
use crate::node::Node;
use nexus_cluster::gossip::Member;
use nexus_core::auth;
use nexus_core::ids::RaftId;
use nexus_core::rpc::{
    self, Params, RpcError, RpcResult, ERR_INVALID_REQUEST, ERR_METHOD_NOT_FOUND,
};

/// The API level implemented.
pub const API_VERSION: &str = "1.9.0";

pub async fn call(node: &Arc<Node>, conn: &Rc<Conn>, name: &str, p: &Params<'_>) -> RpcResult {
    match name {
        "ping" => Ok(rpc::ok()),
        "version" => Ok(json!({"version": API_VERSION})),
        "watchdog" => watchdog(node, conn, p),
        "login" => super::login::login(&node.replica, &node.logins, &node.local, conn, p).await,
        "reload" => {
            if !conn.auth.borrow().logged_in() {
                return Err(RpcError::detail(ERR_INVALID_REQUEST, "not logged in"));
            }
            reload_user(node, conn);
            Ok(rpc::ok())
        }
        "node.list" => node_list(node, conn, p).await,
        "node.remove" => node_remove(node, conn, p).await,
        "node.reload" => {
            conn.require("sys.node", "sys.node.reload")?;
            // Reads files: off the session's thread.
            let node = node.clone();
            let done = tokio::task::spawn_blocking(move || node.reload.reload())
                .await
                .map_err(|e| RpcError::internal(e.to_string()))?
                .map_err(RpcError::internal)?;
            Ok(json!({"ok": true, "reloaded": done}))
        }
        "backup.begin" => super::backup::begin(node, conn).await,
        "backup.read" => super::backup::read(conn, p),
        "session.list" | "session.count" | "session.kick" | "session.reload" => {
            super::sessions::call(&node.replica, conn, name, p).await
        }
        _ => Err(RpcError::new(ERR_METHOD_NOT_FOUND)),
    }
}

fn watchdog(node: &Node, conn: &Conn, p: &Params) -> RpcResult {
    if let Some(secs) = p.opt_i64("watchdog")? {
        let min = node.limits.watchdog_min_secs as i64;
        conn.watchdog
            .set(secs.clamp(min, WATCHDOG_MAX as i64) as u64);
    }
    Ok(json!({"watchdog": conn.watchdog.get()}))
}

/// Re-reads the session user's tags (templates and mask applied). A user deleted since
/// login keeps no tags.
pub fn reload_user(node: &Node, conn: &Conn) {
    let mut auth = conn.auth.borrow_mut();
    if !auth.logged_in() {
        return;
    }
    let tags = node.replica.read(|s| s.users.effective_tags(&auth.user));
    auth.tags = match &auth.mask {
        Some(mask) => auth::apply_mask(&tags, mask),
        None => tags,
    };
}

/// Every running member of the cluster: the 1.9 fields (`id` is the node's incarnation)
/// and the cluster's (`raftId`, `role`, `cluster`, `status`). Other nodes' figures come
/// from gossip. Members whose process is down are left out (as if their connections had
/// closed), unless `all` is true: then they are listed with status `down`.
async fn node_list(node: &Node, conn: &Conn, p: &Params<'_>) -> RpcResult {
    conn.require("sys.node", "sys.node.list")?;
    let limit = match p.opt_i64("limit")?.unwrap_or(100) {
        n if n <= 0 => usize::MAX,
        n => n as usize,
    };
    let skip = p.opt_i64("skip")?.unwrap_or(0).max(0) as usize;
    let all = p.opt_bool("all")?.unwrap_or(false);
    let (members, running) = node
        .replica
        .read_linear(|s| (s.cluster.members.clone(), s.cluster.nodes.clone()))
        .await?;
    let stats = &node.replica.raft.stats;
    let (voters, learners) = stats
        .membership
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let leader = stats.leader();
    let live: std::collections::HashMap<RaftId, Member> = match node.cluster.as_ref() {
        Some(c) => c
            .gossip
            .live()
            .await
            .into_iter()
            .map(|m| (m.raft_id, m))
            .collect(),
        None => Default::default(),
    };
    let role_of = |id: RaftId| {
        if id == node.raft_id {
            stats.role().name()
        } else if leader == Some(id) {
            "leader"
        } else if voters.contains(&id) {
            "follower"
        } else if learners.contains(&id) {
            "learner"
        } else {
            "joining"
        }
    };
    let mut out = Vec::new();
    for (id, addr) in &members {
        let down = !running.contains_key(id);
        if down && !all {
            continue;
        }
        let entry = if *id == node.raft_id {
            let (load1, load5, load15) = load_average();
            let status = match stats.ready() {
                Ok(()) => "ready".to_string(),
                Err(why) => format!("not ready: {why}"),
            };
            json!({
                "id": node.incarnation,
                "version": crate::build_info::VERSION,
                "clients": node.local.session_count(),
                "load": {"load1": load1, "load5": load5, "load15": load15},
                "listening": *node.listening.lock().unwrap_or_else(|e| e.into_inner()),
                "raftId": id,
                "role": role_of(*id),
                "cluster": addr,
                "status": status,
                "applied": stats.applied_index(),
                "commit": stats.commit_index(),
            })
        } else {
            let m = live.get(id).cloned().unwrap_or_default();
            let status = if down {
                "down".to_string()
            } else if live.contains_key(id) {
                m.status.clone()
            } else {
                "unreachable".to_string()
            };
            json!({
                "id": m.incarnation,
                "version": m.version,
                "clients": m.clients,
                "load": {"load1": m.load[0], "load5": m.load[1], "load15": m.load[2]},
                "listening": m.listening,
                "raftId": id,
                "role": role_of(*id),
                "cluster": addr,
                "status": status,
                // Unknown (null) for a member gossip does not hear from, or whose build
                // does not say.
                "applied": live.get(id).and_then(|m| m.applied),
                "commit": live.get(id).and_then(|m| m.commit),
            })
        };
        out.push(entry);
    }
    Ok(Value::Array(
        out.into_iter().skip(skip).take(limit).collect(),
    ))
}

/// Removes a member from the cluster (`{"raftId": N}`): for a node that is gone for good,
/// or before retiring one. Answers once the leader proposed the change.
async fn node_remove(node: &Node, conn: &Conn, p: &Params<'_>) -> RpcResult {
    conn.require("sys.node", "sys.node.remove")?;
    let id = p.i64("raftId")?;
    if id <= 0 {
        return Err(RpcError::invalid_param_because(
            "raftId",
            "a member's raft id (sys.node.list)",
        ));
    }
    let Some(link) = node.cluster.as_ref() else {
        return Err(RpcError::detail(
            ERR_INVALID_REQUEST,
            "standalone node: no cluster members to remove",
        ));
    };
    let leader_addr = match node.replica.raft.stats.leader() {
        Some(leader) => node
            .replica
            .read(|s| s.cluster.members.get(&leader).cloned()),
        None => None,
    };
    let id = RaftId(id as u64);
    nexus_cluster::membership::remove_member(link, &node.replica.raft, leader_addr, id)
        .await
        .map_err(RpcError::internal)?;
    Ok(rpc::ok())
}

/// The 1, 5 and 15 minute load averages (zeros where /proc is unavailable).
pub fn load_average() -> (f64, f64, f64) {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0));
    (
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    )
}
