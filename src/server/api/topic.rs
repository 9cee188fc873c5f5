//! `topic.*`: publish/subscribe onto pipes.

use std::rc::Rc;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::conn::Conn;
use crate::node::Node;
use nexus_core::ids::PipeId;
use nexus_core::listing::ListQuery;
use nexus_core::names::{normalize_path, ROOT};
use nexus_core::rpc::{Params, RpcError, RpcResult, ERR_METHOD_NOT_FOUND};
use nexus_core::state::Command;

pub async fn call(node: &Arc<Node>, conn: &Rc<Conn>, name: &str, p: &Params<'_>) -> RpcResult {
    match name {
        "sub" | "unsub" => {
            let pipeid = PipeId::from(p.str("pipeid")?);
            let (topic, path) = pattern(p.str("topic")?)?;
            if name == "sub" {
                conn.require(&path, "topic.sub")?;
            }
            // Pipes live on their owner's node: ask it whether this one exists.
            node.write_pipe(&pipeid, Vec::new()).await?;
            let cmd = if name == "sub" {
                Command::Subscribe { pipeid, topic }
            } else {
                Command::Unsubscribe { pipeid, topic }
            };
            let outcome = node.replica.propose(cmd).await?;
            // Answered once every node applied it, so that any publish that follows the
            // answer, on whichever node, sees the change (a follower learns of a commit a
            // little after the node that proposed it).
            node.until_applied_everywhere().await;
            Ok(outcome)
        }
        "pub" => {
            let topic =
                normalize_path(p.str("topic")?).ok_or_else(|| RpcError::invalid_params("topic"))?;
            let msg = p.payload("msg")?;
            conn.require(&topic, "topic.pub")?;
            let sent = node.publish(&topic, msg);
            Ok(json!({"ok": true, "sent": sent}))
        }
        "list" => {
            let q = ListQuery::from_params(p)?;
            conn.require(q.permission_path(), "topic.list")?;
            Ok(node
                .replica
                .read_linear(|s| {
                    Value::Array(
                        q.select(
                            s.topics
                                .iter()
                                .map(|(t, n)| (t, json!({"topic": t, "subscribers": n}))),
                        ),
                    )
                })
                .await?)
        }
        "count" => {
            let q = ListQuery::from_params(p)?;
            conn.require(q.permission_path(), "topic.count")?;
            Ok(node
                .replica
                .read_linear(|s| q.count(s.topics.iter().map(|(t, _)| t)))
                .await?)
        }
        _ => Err(RpcError::new(ERR_METHOD_NOT_FOUND)),
    }
}

/// A subscription pattern (`a.b`, `a.b.*`, `.*`) and the path its permission is checked on.
fn pattern(raw: &str) -> Result<(String, String), RpcError> {
    let lower = raw.to_lowercase();
    if lower == ".*" || lower == "*" {
        return Ok((".*".to_string(), ROOT.to_string()));
    }
    let base = lower.strip_suffix(".*").unwrap_or(&lower);
    let base = normalize_path(base).ok_or_else(|| RpcError::invalid_params("topic"))?;
    let topic = if lower.ends_with(".*") {
        format!("{base}.*")
    } else {
        base.clone()
    };
    Ok((topic, base))
}
