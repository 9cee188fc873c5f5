//! Method dispatch: one module per namespace. Each handler validates its parameters,
//! checks permission, then reads the applied state or proposes a command.

pub mod sys;
pub mod user;

use std::rc::Rc;
use std::sync::Arc;

use tracing::debug;

use crate::node::Node;
use crate::rpc::{Params, Request, Response, RpcError, RpcResult, ERR_METHOD_NOT_FOUND};
use crate::session::Conn;

/// Runs one request; `None` for a notification (executed, never answered).
pub async fn dispatch(node: Arc<Node>, conn: Rc<Conn>, req: Request) -> Option<Response> {
    let result = call(&node, &conn, &req).await;
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
    match method.split_once('.') {
        Some(("sys", name)) => sys::call(node, conn, name, &p).await,
        Some(("user", name)) => user::call(node, conn, name, &p).await,
        _ => Err(RpcError::new(ERR_METHOD_NOT_FOUND)),
    }
}

/// Runs CPU-heavy work (password hashing) off the session's thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(RpcError::internal)
}
