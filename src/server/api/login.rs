//! `sys.login`: basic (with `admin>user` impersonation) and login plugins (a worker
//! answering the internal task `sys.login.<method>.login`).

use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::conn::{AuthState, Conn};
use crate::local::Local;
use crate::logins::Logins;
use crate::replica::Replica;
use nexus_core::auth::{self, Tags};
use nexus_core::names::normalize_path;
use nexus_core::rpc::{Params, RpcError, RpcResult, ERR_PERMISSION_DENIED};
use nexus_core::state::Command;

/// How long a login plugin worker has to answer.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(10);

fn denied(detail: &str) -> RpcError {
    RpcError::detail(ERR_PERMISSION_DENIED, detail)
}

pub async fn login(
    replica: &Replica,
    logins: &Logins,
    local: &Local,
    conn: &Rc<Conn>,
    p: &Params<'_>,
) -> RpcResult {
    if let Err(wait) = logins.throttle.check(&conn.remote) {
        return Err(denied(&format!(
            "too many failed logins from this address, retry in {} s",
            wait.as_secs() + 1
        )));
    }
    let result = attempt(replica, logins, local, conn, p).await;
    if result
        .as_ref()
        .is_err_and(|e| e.code == ERR_PERMISSION_DENIED)
    {
        logins.throttle.failed(&conn.remote);
    }
    result
}

async fn attempt(
    replica: &Replica,
    logins: &Logins,
    local: &Local,
    conn: &Rc<Conn>,
    p: &Params<'_>,
) -> RpcResult {
    let method = p.opt_str("method")?.unwrap_or("basic");
    let (user, mask, metadata) = if method == "basic" {
        (
            basic(replica, logins, p, &conn.remote).await?,
            None,
            Value::Null,
        )
    } else {
        plugin(replica, logins, local, conn, method, p).await?
    };
    finish(replica, conn, user, mask, metadata).await
}

/// Checks `user`/`pass`; answers the user the session becomes.
async fn basic(
    replica: &Replica,
    logins: &Logins,
    p: &Params<'_>,
    remote: &str,
) -> Result<String, RpcError> {
    let given = p.str("user")?;
    let pass = p.str("pass")?.to_string();
    let (who, target) = match given.split_once('>') {
        Some((admin, other)) => (admin, Some(other)),
        None => (given, None),
    };
    // Names are case-insensitive but never trimmed: " root" is not "root".
    let who = normalize_path(who).ok_or_else(RpcError::permission_denied)?;
    // After a read barrier: a password changed on another node a moment ago is in force.
    let hash = replica
        .read_linear(|s| s.users.get(&who).map(|u| u.pass_hash.clone()))
        .await?;
    let Some(hash) = hash else {
        // An unknown user costs the same scrypt run as a wrong password, and answers alike,
        // so names cannot be probed by the answer or its timing.
        let p = pass.clone();
        logins
            .hashing(move || auth::verify_password(&p, crate::logins::unknown_user_hash()))
            .await?;
        return Err(RpcError::permission_denied());
    };
    if !logins.verified.matches(&who, &pass, &hash) {
        // Checked again once a hash slot is ours: in a reconnect storm many clients share
        // one account, and only the first of them needs to pay for scrypt.
        let again = || logins.verified.matches(&who, &pass, &hash);
        let (p, h) = (pass.clone(), hash.clone());
        let verified = logins
            .hashing_unless(again, move || auth::verify_password(&p, &h))
            .await?;
        if !verified {
            return Err(RpcError::permission_denied());
        }
        logins.verified.remember(&who, &pass, &hash);
    }
    match target {
        None => Ok(who),
        Some(other) => {
            let other = normalize_path(other).ok_or_else(|| denied("unknown user"))?;
            // The admin's own account must be usable from here before it acts for another.
            let admin_ok = replica.read(|s| {
                s.users.get(&who).is_some_and(|u| {
                    !u.disabled && auth::address_allowed(&u.whitelist, &u.blacklist, remote)
                })
            });
            if !admin_ok {
                return Err(denied("admin account disabled or address not allowed"));
            }
            let admin_tags = replica.read(|s| s.users.effective_tags(&who));
            if !auth::may(&admin_tags, &other, "admin") {
                return Err(denied("not an admin of that user"));
            }
            Ok(other)
        }
    }
}

/// Pushes `sys.login.<method>.login` with the whole params and waits for a worker's
/// `{"user", "tags"?, "metadata"?}`.
async fn plugin(
    replica: &Replica,
    logins: &Logins,
    local: &Local,
    conn: &Rc<Conn>,
    method: &str,
    p: &Params<'_>,
) -> Result<(String, Option<Tags>, Value), RpcError> {
    let method = normalize_path(method).ok_or_else(|| RpcError::invalid_params("method"))?;
    let params = Value::Object(p.object_or_empty());
    let path = format!("sys.login.{method}");
    let task = super::task::build_task(
        conn,
        &path,
        "login",
        params,
        0,
        1,
        logins.plugin_timeout.as_secs_f64(),
        false,
    );
    // Internal: the server pushes on the connection's behalf, whoever it is logged in as.
    let taskid = task.id.clone();
    let answer = match tokio::time::timeout(
        logins.plugin_timeout,
        super::task::push(replica, local, conn, task, None),
    )
    .await
    {
        Ok(answer) => answer.map_err(|e| denied(&format!("login worker: {}", e.message)))?,
        Err(_) => {
            // Withdraw the task now rather than leave it to its deadline.
            let cancel = Command::TaskCancel {
                id: taskid.into(),
                connid: conn.connid.clone(),
            };
            let _ = replica.propose(cancel).await;
            return Err(denied("login worker timeout"));
        }
    };
    let user = answer
        .get("user")
        .and_then(Value::as_str)
        .and_then(normalize_path)
        .ok_or_else(|| denied("login worker returned no user"))?;
    let mask = match answer.get("tags") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value::<Tags>(v.clone())
                .map_err(|_| denied("login worker returned invalid tags"))?,
        ),
    };
    let metadata = answer.get("metadata").cloned().unwrap_or(Value::Null);
    Ok((user, mask, metadata))
}

/// The checks after authentication, then the session switches user.
async fn finish(
    replica: &Replica,
    conn: &Conn,
    user: String,
    mask: Option<Tags>,
    metadata: Value,
) -> RpcResult {
    let lists = replica.read(|s| {
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
    replica
        .propose(Command::SessionLogin {
            connid: conn.connid.clone(),
            user: user.clone(),
        })
        .await?;
    let own = replica.read(|s| s.users.effective_tags(&user));
    let tags = match &mask {
        Some(m) => auth::apply_mask(&own, m),
        None => own,
    };
    *conn.auth.borrow_mut() = AuthState {
        user: user.clone(),
        tags: tags.clone(),
        mask,
        metadata: metadata.clone(),
    };
    Ok(json!({
        "ok": true,
        "connid": conn.connid,
        "user": user,
        "tags": tags,
        "metadata": metadata,
    }))
}
