//! Method dispatch: one module per namespace. Each handler validates its parameters,
//! checks permission, then reads the applied state or proposes a command.

pub mod backup;
pub mod login;
pub mod pipe;
pub mod sessions;
pub mod sync;
pub mod sys;
pub mod task;
pub mod topic;
pub mod user;

use std::rc::Rc;
use std::sync::Arc;

use tracing::debug;

use crate::conn::Conn;
use crate::node::Node;
use nexus_core::rpc::{Params, Request, Response, RpcError, RpcResult, ERR_METHOD_NOT_FOUND};

/// Every method this node implements: the only method names metrics label by (anything
/// else a client sends counts as "(unknown)", so labels stay bounded).
pub const METHODS: &[&str] = &[
    "sys.ping",
    "sys.version",
    "sys.watchdog",
    "sys.login",
    "sys.reload",
    "sys.node.list",
    "sys.node.remove",
    "sys.node.reload",
    "sys.backup.begin",
    "sys.backup.read",
    "sys.session.list",
    "sys.session.count",
    "sys.session.kick",
    "sys.session.reload",
    "user.create",
    "user.delete",
    "user.rename",
    "user.list",
    "user.count",
    "user.setTags",
    "user.delTags",
    "user.getTags",
    "user.getEffectiveTags",
    "user.setPass",
    "user.addTemplate",
    "user.delTemplate",
    "user.addWhitelist",
    "user.delWhitelist",
    "user.addBlacklist",
    "user.delBlacklist",
    "user.setMaxSessions",
    "user.setDisabled",
    "pipe.create",
    "pipe.write",
    "pipe.read",
    "pipe.close",
    "topic.sub",
    "topic.unsub",
    "topic.pub",
    "topic.list",
    "topic.count",
    "sync.lock",
    "sync.unlock",
    "sync.list",
    "sync.count",
    "task.push",
    "task.pull",
    "task.result",
    "task.error",
    "task.reject",
    "task.cancel",
    "task.list",
    "task.count",
];

/// Runs one request; `None` for a notification (executed, never answered).
pub async fn dispatch(node: Arc<Node>, conn: Rc<Conn>, req: Request) -> Option<Response> {
    let start = std::time::Instant::now();
    let result = call(&node, &conn, &req).await;
    let known = METHODS.contains(&req.method.as_str());
    node.metrics
        .request(&req.method, known, result.is_ok(), start.elapsed());
    match req.id {
        Some(id) => Some(Response::from_result(id, result)),
        None => {
            if let Err(e) = result {
                debug!(connid = %conn.connid, method = %req.method, "notification failed: {e}");
            }
            None
        }
    }
}

async fn call(node: &Arc<Node>, conn: &Rc<Conn>, req: &Request) -> RpcResult {
    let p = Params::new(&req.params)?;
    let method = req.method.as_str();
    // Each namespace's future is boxed: inline, every request's future would be as large
    // as the largest of them and be copied whole each time it moves (spawn, completion),
    // which was 10% of the node's CPU in the task benchmark.
    match method.split_once('.') {
        Some(("sys", name)) => Box::pin(sys::call(node, conn, name, &p)).await,
        Some(("user", name)) => {
            Box::pin(user::call(&node.replica, &node.logins, conn, name, &p)).await
        }
        Some(("pipe", name)) => Box::pin(pipe::call(node, conn, name, &p)).await,
        Some(("topic", name)) => Box::pin(topic::call(node, conn, name, &p)).await,
        Some(("sync", name)) => Box::pin(sync::call(node, conn, name, &p)).await,
        Some(("task", name)) => {
            Box::pin(task::call(
                &node.replica,
                &node.local,
                conn,
                name,
                &p,
                req.id.as_ref(),
            ))
            .await
        }
        _ => Err(RpcError::new(ERR_METHOD_NOT_FOUND)),
    }
}

/// A seconds parameter: absent, zero or negative → `default`.
pub fn seconds(p: &Params, name: &str, default: f64) -> Result<f64, RpcError> {
    Ok(match p.opt_f64(name)? {
        Some(s) if s > 0.0 => s,
        _ => default,
    })
}
