//! `pipe.*`: ephemeral mailboxes owned by a connection.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::conn::Conn;
use crate::node::Node;
use crate::pipe;
use nexus_core::ids::PipeId;
use nexus_core::rpc::{self, Params, RpcError, RpcResult, ERR_INVALID_PIPE, ERR_METHOD_NOT_FOUND};
use nexus_core::state::Command;

const DEFAULT_READ_MAX: i64 = 10;

pub async fn call(node: &Arc<Node>, conn: &Rc<Conn>, name: &str, p: &Params<'_>) -> RpcResult {
    match name {
        "create" => {
            let cap = pipe::capacity(p.opt_i64("len")?);
            let pipeid = PipeId::new(&conn.connid);
            node.local
                .add_pipe(&pipeid, cap, node.limits.max_pipe_bytes);
            conn.pipes.borrow_mut().insert(pipeid.clone());
            Ok(json!({ "pipeid": pipeid }))
        }
        "write" => {
            let pipeid = PipeId::from(p.str("pipeid")?);
            let msg = p.payload("msg")?;
            let msgs = if p.opt_bool("multi")?.unwrap_or(false) {
                match msg {
                    Value::Array(items) => items.clone(),
                    _ => {
                        return Err(RpcError::invalid_param_because(
                            "msg",
                            "must be an array with multi",
                        ))
                    }
                }
            } else {
                vec![msg.clone()]
            };
            node.write_pipe(&pipeid, msgs).await?;
            Ok(rpc::ok())
        }
        "read" => {
            let pipeid = owned_pipe(conn, p)?;
            let max = match p.opt_i64("max")? {
                Some(n) if n > 0 => n,
                _ => DEFAULT_READ_MAX,
            } as usize;
            // No timeout (or ≤ 0) waits until something arrives, as existing clients expect.
            let timeout = match p.opt_f64("timeout")? {
                Some(s) if s > 0.0 => Some(Duration::from_secs_f64(s.min(1e9))),
                _ => None,
            };
            let addr = node
                .local
                .pipe(&pipeid)
                .ok_or_else(|| RpcError::new(ERR_INVALID_PIPE))?;
            let rx = addr
                .send(pipe::Read { max, timeout })
                .await
                .map_err(|_| RpcError::new(ERR_INVALID_PIPE))?;
            rx.await.map_err(|_| RpcError::new(ERR_INVALID_PIPE))
        }
        "close" => {
            let pipeid = owned_pipe(conn, p)?;
            if !node.local.close_pipe(&pipeid) {
                return Err(RpcError::new(ERR_INVALID_PIPE));
            }
            conn.pipes.borrow_mut().remove(&pipeid);
            node.replica.propose(Command::PipeClosed { pipeid }).await
        }
        _ => Err(RpcError::new(ERR_METHOD_NOT_FOUND)),
    }
}

/// A pipe id this connection owns, else -32003.
fn owned_pipe(conn: &Conn, p: &Params) -> Result<PipeId, RpcError> {
    let pipeid = p.str("pipeid")?;
    if conn.pipes.borrow().contains(pipeid) {
        Ok(pipeid.into())
    } else {
        Err(RpcError::new(ERR_INVALID_PIPE))
    }
}
