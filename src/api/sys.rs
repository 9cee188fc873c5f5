//! `sys.*`: ping, version, watchdog, login, reload.

use std::rc::Rc;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::auth;
use crate::names::normalize_path;
use crate::node::Node;
use crate::rpc::{
    self, Params, RpcError, RpcResult, ERR_INVALID_REQUEST, ERR_METHOD_NOT_FOUND,
    ERR_PERMISSION_DENIED,
};
use crate::session::{AuthState, Conn, WATCHDOG_MAX, WATCHDOG_MIN};
use crate::state::Command;

/// The API level implemented.
pub const API_VERSION: &str = "1.9.0";

pub async fn call(node: &Arc<Node>, conn: &Rc<Conn>, name: &str, p: &Params<'_>) -> RpcResult {
    match name {
        "ping" => Ok(rpc::ok()),
        "version" => Ok(json!({"version": API_VERSION})),
        "watchdog" => watchdog(conn, p),
        "login" => login(node, conn, p).await,
        "reload" => {
            if !conn.auth.borrow().logged_in() {
                return Err(RpcError::detail(ERR_INVALID_REQUEST, "not logged in"));
            }
            reload_user(node, conn)?;
            Ok(rpc::ok())
        }
        _ => Err(RpcError::new(ERR_METHOD_NOT_FOUND)),
    }
}

fn watchdog(conn: &Conn, p: &Params) -> RpcResult {
    if let Some(secs) = p.opt_i64("watchdog")? {
        conn.watchdog
            .set(secs.clamp(WATCHDOG_MIN as i64, WATCHDOG_MAX as i64) as u64);
    }
    Ok(json!({"watchdog": conn.watchdog.get()}))
}

fn denied(detail: &str) -> RpcError {
    RpcError::detail(ERR_PERMISSION_DENIED, detail)
}

async fn login(node: &Arc<Node>, conn: &Rc<Conn>, p: &Params<'_>) -> RpcResult {
    let method = p.opt_str("method")?.unwrap_or("basic");
    if method != "basic" {
        // Login plugins authenticate through a worker pulling `sys.login.<method>.login`;
        // the task queue they need is not in this build, so no worker can answer.
        return Err(denied("no worker for this login method"));
    }
    let given = p.str("user")?;
    let pass = p.str("pass")?.to_string();
    let (who, target) = match given.split_once('>') {
        Some((admin, other)) => (admin, Some(other)),
        None => (given, None),
    };
    // Names are case-insensitive but never trimmed: " root" is not "root". Unknown users
    // and wrong passwords answer alike, so names cannot be probed.
    let who = normalize_path(who).ok_or_else(RpcError::permission_denied)?;
    let hash = node
        .read(|s| s.users.get(&who).map(|u| u.pass_hash.clone()))
        .ok_or_else(RpcError::permission_denied)?;
    if !super::blocking(move || auth::verify_password(&pass, &hash)).await? {
        return Err(RpcError::permission_denied());
    }
    let user = match target {
        None => who,
        Some(other) => {
            let other = normalize_path(other).ok_or_else(|| denied("unknown user"))?;
            let admin_tags = node.read(|s| s.users.effective_tags(&who));
            if !auth::may(&admin_tags, &other, "admin") {
                return Err(denied("not an admin of that user"));
            }
            other
        }
    };
    let lists = node.read(|s| {
        s.users
            .get(&user)
            .map(|u| (u.whitelist.clone(), u.blacklist.clone()))
    });
    let (white, black) = lists.ok_or_else(|| denied("unknown user"))?;
    if !auth::address_allowed(&white, &black, &conn.remote) {
        return Err(denied("address not allowed"));
    }
    // Existence, disabled and maxsessions are checked again inside apply, atomically with
    // every other session change in the cluster.
    node.raft
        .propose(Command::SessionLogin {
            connid: conn.connid.clone(),
            user: user.clone(),
        })
        .await?;
    let tags = node.read(|s| s.users.effective_tags(&user));
    *conn.auth.borrow_mut() = AuthState {
        user: user.clone(),
        tags: tags.clone(),
        mask: None,
        metadata: Value::Null,
    };
    Ok(json!({
        "ok": true,
        "connid": conn.connid,
        "user": user,
        "tags": tags,
        "metadata": Value::Null,
    }))
}

/// Re-reads the session user's tags (templates and mask applied). A user deleted since
/// login keeps no tags.
pub fn reload_user(node: &Node, conn: &Conn) -> Result<(), RpcError> {
    let mut auth = conn.auth.borrow_mut();
    if !auth.logged_in() {
        return Ok(());
    }
    let tags = node.read(|s| s.users.effective_tags(&auth.user));
    auth.tags = match &auth.mask {
        Some(mask) => auth::apply_mask(&tags, mask),
        None => tags,
    };
    Ok(())
}
