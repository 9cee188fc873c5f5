//! `sync.*`: cluster-wide locks owned by a connection. `sync.lock` with `wait` (an
//! extension) queues behind the waits committed before it instead of failing at once.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::conn::Conn;
use crate::lock::Waiting;
use crate::node::Node;
use nexus_core::listing::ListQuery;
use nexus_core::names::normalize_path;
use nexus_core::rpc::{Params, RpcError, RpcResult, ERR_INTERNAL, ERR_METHOD_NOT_FOUND};
use nexus_core::state::{Command, Holder, State};

/// The longest wait: 10 days, as the longest task timeout.
const WAIT_MAX_MS: i64 = 10 * 24 * 3600 * 1000;
/// How long past its own time a wait may stay unanswered (no leader to expire it) before
/// it answers that its outcome is unknown.
const WAIT_HANG_BOUND: Duration = Duration::from_secs(10);

pub async fn call(node: &Arc<Node>, conn: &Rc<Conn>, name: &str, p: &Params<'_>) -> RpcResult {
    let replica = &node.replica;
    match name {
        "lock" | "unlock" => {
            let lock =
                normalize_path(p.str("lock")?).ok_or_else(|| RpcError::invalid_params("lock"))?;
            let connid = conn.connid.clone();
            if name == "unlock" {
                // Only the holder can unlock: ownership is the check.
                return replica.propose(Command::Unlock { lock, connid }).await;
            }
            conn.require(&lock, "sync.lock")?;
            match wait_ms(p)? {
                None => replica.propose(Command::Lock { lock, connid }).await,
                Some(ms) => wait_for(node, conn, lock, ms).await,
            }
        }
        "list" => {
            let q = ListQuery::from_params(p)?;
            conn.require(q.permission_path(), "sync.list")?;
            Ok(replica
                .read_linear(|s| {
                    Value::Array(q.select(s.locks.iter().map(|(l, _)| (l, entry(s, l)))))
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

/// `wait` in milliseconds: absent or 0 is the 1.9 try-lock.
fn wait_ms(p: &Params) -> Result<Option<u64>, RpcError> {
    match p.opt_i64("wait")? {
        None | Some(0) => Ok(None),
        Some(ms) if (1..=WAIT_MAX_MS).contains(&ms) => Ok(Some(ms as u64)),
        Some(_) => Err(RpcError::invalid_param_because(
            "wait",
            format!("milliseconds, from 0 (do not wait) to {WAIT_MAX_MS}"),
        )),
    }
}

/// A held lock as `sync.list` shows it: the 1.9 `id` and `owner`, and, when requests wait
/// for it, the `waiters` in the order they will be granted (an extension; a lock nobody
/// waits for is listed exactly as in 1.9).
fn entry(s: &State, lock: &str) -> Value {
    let holder = s.locks.holder(lock).expect("listed locks are held");
    let mut entry = json!({"id": lock, "owner": holder.connid});
    let waiters: Vec<Value> = s
        .locks
        .waiting(lock)
        .map(|w| {
            json!({
                "connid": w.connid,
                "ticket": w.ticket,
                "since": nexus_consensus::clock::rfc3339_ms(w.since_ms),
            })
        })
        .collect();
    if !waiters.is_empty() {
        entry["waiters"] = Value::Array(waiters);
    }
    entry
}

/// `sync.lock` with a wait of `ms`: granted at once when free, else queued, and answered
/// by the lock's actor when apply grants it the lock or ends the wait.
async fn wait_for(node: &Arc<Node>, conn: &Conn, lock: String, ms: u64) -> RpcResult {
    if node.cluster_log_version().await < 2 {
        return Err(RpcError::internal(
            "a member of the cluster runs a build without lock waits (log format 1): upgrade \
             every node before using `wait`",
        ));
    }
    let wait_id = format!("{}.w{:016x}", conn.connid, rand::random::<u64>());
    let waiting = Waiting {
        wait_id: wait_id.clone(),
        give_up: Instant::now() + Duration::from_millis(ms) + WAIT_HANG_BOUND,
    };
    // Handed to the actor before the wait is proposed: no event for it can come first.
    let rx = node.local.locks.wait(node.replica.state(), &lock, waiting);
    // Every ticket so far: this wait's, if it commits, is larger.
    let tickets_before = node.replica.read(|s| s.locks.tickets());
    let cmd = Command::LockWait {
        lock: lock.clone(),
        connid: conn.connid.clone(),
        wait_id: wait_id.clone(),
        wait_ms: ms,
    };
    let ticket = match node.replica.propose(cmd).await {
        Ok(v) if v.get("queued") == Some(&json!(true)) => v["ticket"].as_u64(),
        // An unknown outcome: the wait may be queued, granted, or still to commit. The
        // actor keeps waiting for its event until the wait's own time limit passes, so a
        // late commit is answered too, never granted behind the client's back.
        Err(e) if e.code == ERR_INTERNAL => {
            node.replica.read_linear(|_| ()).await?;
            let (ticket, holder) = node.replica.read(|s| {
                let queued = s.locks.waiting(&lock).find(|w| w.id == wait_id);
                (queued.map(|w| w.ticket), s.locks.holder(&lock).cloned())
            });
            if ticket.is_none() {
                // Granted to a wait of this connection committed after this one was
                // proposed: this one, unless the client sent two waits for one lock at once.
                let mine = |h: &Holder| h.connid == conn.connid && h.ticket > tickets_before;
                if let Some(h) = holder.filter(mine) {
                    return Ok(crate::lock::granted(h.token, h.ticket));
                }
            }
            ticket
        }
        granted_or_refused => return granted_or_refused,
    };
    if let Some(ticket) = ticket {
        node.local.locks.queued(&lock, &wait_id, ticket);
    }
    node.metrics.lock_wait_queued();
    let queued_at = Instant::now();
    let answer = rx
        .await
        .unwrap_or_else(|_| Err(RpcError::internal("node is shutting down")));
    node.metrics
        .lock_wait_answered(answer.is_ok(), queued_at.elapsed());
    answer
}
