//! `sys.session.*`: list, count, kick and reload sessions cluster-wide (over the replicated
//! session records; kicks and reloads reach the owning node as applied events).

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::{json, Value};

use crate::conn::Conn;
use crate::replica::Replica;
use nexus_core::ids::{ConnId, CONNID_LEN};
use nexus_core::listing::ListQuery;
use nexus_core::rpc::{Params, RpcError, RpcResult, ERR_METHOD_NOT_FOUND};
use nexus_core::state::Command;

pub async fn call(replica: &Replica, conn: &Rc<Conn>, name: &str, p: &Params<'_>) -> RpcResult {
    match name {
        "session.list" => {
            let q = ListQuery::from_params(p)?;
            conn.require(q.permission_path(), "sys.session.list")?;
            let by_user = replica
                .read_linear(|s| {
                    let mut by_user: BTreeMap<String, Vec<Value>> = BTreeMap::new();
                    for r in s.sessions.iter() {
                        by_user.entry(r.user.clone()).or_default().push(json!({
                            "connid": r.connid,
                            "nodeid": r.incarnation,
                            "remoteAddress": r.remote_address,
                            "creationTime": r.creation_time,
                            "protocol": r.protocol,
                        }));
                    }
                    by_user
                })
                .await?;
            Ok(Value::Array(q.select(by_user.iter().map(
                |(user, sessions)| {
                    (
                        user.as_str(),
                        json!({"user": user, "n": sessions.len(), "sessions": sessions}),
                    )
                },
            ))))
        }
        "session.count" => {
            let q = ListQuery::from_params(p)?;
            conn.require(q.permission_path(), "sys.session.count")?;
            let users: Vec<String> = replica
                .read_linear(|s| s.sessions.iter().map(|r| r.user.clone()).collect())
                .await?;
            Ok(q.count(users.iter().map(String::as_str)))
        }
        "session.kick" | "session.reload" => {
            let method = format!("sys.{name}");
            let prefix = p.str("connid")?;
            if prefix.len() < CONNID_LEN {
                return Err(RpcError::invalid_param_because(
                    "connid",
                    "at least 16 characters",
                ));
            }
            let matched: Vec<(ConnId, String)> = replica
                .read_linear(|s| {
                    s.sessions
                        .iter()
                        .filter(|r| r.connid.as_str().starts_with(prefix))
                        .map(|r| (r.connid.clone(), r.user.clone()))
                        .collect()
                })
                .await?;
            // Permission is checked on the user owning each matched session.
            for (_, user) in &matched {
                conn.require(user, &method)?;
            }
            let connids = matched.into_iter().map(|(c, _)| c).collect();
            let cmd = if name == "session.kick" {
                Command::SessionKick { connids }
            } else {
                Command::SessionReload { connids }
            };
            replica.propose(cmd).await
        }
        _ => Err(RpcError::new(ERR_METHOD_NOT_FOUND)),
    }
}
