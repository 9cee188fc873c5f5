//! `sync.*`: cluster-wide locks owned by a connection.

use std::rc::Rc;

use serde_json::{json, Value};

use crate::conn::Conn;
use crate::replica::Replica;
use nexus_core::listing::ListQuery;
use nexus_core::names::normalize_path;
use nexus_core::rpc::{Params, RpcError, RpcResult, ERR_METHOD_NOT_FOUND};
use nexus_core::state::Command;

pub async fn call(replica: &Replica, conn: &Rc<Conn>, name: &str, p: &Params<'_>) -> RpcResult {
    match name {
        "lock" | "unlock" => {
            let lock =
                normalize_path(p.str("lock")?).ok_or_else(|| RpcError::invalid_params("lock"))?;
            let connid = conn.connid.clone();
            let cmd = if name == "lock" {
                conn.require(&lock, "sync.lock")?;
                Command::Lock { lock, connid }
            } else {
                // Only the holder can unlock: ownership is the check.
                Command::Unlock { lock, connid }
            };
            replica.propose(cmd).await
        }
        "list" => {
            let q = ListQuery::from_params(p)?;
            conn.require(q.permission_path(), "sync.list")?;
            Ok(replica
                .read_linear(|s| {
                    Value::Array(
                        q.select(
                            s.locks
                                .iter()
                                .map(|(l, o)| (l, json!({"id": l, "owner": o}))),
                        ),
                    )
                })
                .await?)
        }
        "count" => {
            let q = ListQuery::from_params(p)?;
            conn.require(q.permission_path(), "sync.count")?;
            Ok(replica
                .read_linear(|s| q.count(s.locks.iter().map(|(l, _)| l)))
                .await?)
        }
        _ => Err(RpcError::new(ERR_METHOD_NOT_FOUND)),
    }
}
