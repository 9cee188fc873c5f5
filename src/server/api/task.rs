//! `task.*`: RPC through the replicated, prioritised work queue. Pushes and pulls wait for
//! the applied event that ends them (`TaskEnded`, `TaskAssigned`, `PullEnded`).

use std::rc::Rc;

use serde_json::{json, Value};

use crate::conn::Conn;
use crate::local::Local;
use crate::replica::Replica;
use nexus_core::auth;
use nexus_core::ids::{PullId, TaskId};
use nexus_core::listing::ListQuery;
use nexus_core::names::normalize_path;
use nexus_core::rpc::{
    standard_text, Params, RpcError, RpcResult, ERR_INTERNAL, ERR_INVALID_TASK,
    ERR_METHOD_NOT_FOUND,
};
use nexus_core::state::{Command, Ending, Pull, Task};

/// Default push and pull timeout: 10 days.
pub const DEFAULT_TIMEOUT_SECS: f64 = 10.0 * 24.0 * 3600.0;
pub const DEFAULT_TTL: i64 = 5;

pub async fn call(
    replica: &Replica,
    local: &Local,
    conn: &Rc<Conn>,
    name: &str,
    p: &Params<'_>,
    req_id: Option<&Value>,
) -> RpcResult {
    match name {
        "push" => {
            let full = method_path(p.str("method")?)?;
            conn.require(&full, "task.push")?;
            let task = new_task(conn, &full, p)?;
            let tags = json!(auth::tags_at(&conn.auth.borrow().tags, &full));
            push(replica, local, conn, Task { tags, ..task }, req_id).await
        }
        "pull" => {
            let raw = p.str("prefix")?.to_lowercase();
            let prefix = normalize_path(raw.trim_end_matches('.'))
                .ok_or_else(|| RpcError::invalid_params("prefix"))?;
            conn.require(&prefix, "task.pull")?;
            let timeout = super::seconds(p, "timeout", DEFAULT_TIMEOUT_SECS)?;
            let pull = Pull {
                id: PullId::new(&conn.connid),
                connid: conn.connid.clone(),
                path: format!("{prefix}."),
                user: conn.user(),
                // Stamped from the cluster clock when applied.
                creation_time: String::new(),
                deadline: String::new(),
                deadline_ms: 0,
                timeout_ms: timeout_ms(timeout),
                seq: 0,
            };
            let id = pull.id.clone();
            let (rx, _waiter) = local.wait_for(id.as_str());
            let _pending = Pending::new(conn, req_id, id.as_str());
            propose_then_wait(replica, local, Command::TaskPull { pull }, id.as_str(), rx).await
        }
        "result" => {
            let taskid = TaskId::from(p.str("taskid")?);
            let result = p.payload("result")?.clone();
            finish(replica, conn, taskid, Ending::Result(result)).await
        }
        "error" => {
            let taskid = TaskId::from(p.str("taskid")?);
            let code = p.opt_i64("code")?.unwrap_or(ERR_INTERNAL);
            let message = match p.opt_str("message")? {
                Some(m) => m.to_string(),
                None => standard_text(code).unwrap_or("").to_string(),
            };
            let data = p.get("data").cloned();
            finish(
                replica,
                conn,
                taskid,
                Ending::Error(RpcError {
                    code,
                    message,
                    data,
                }),
            )
            .await
        }
        "reject" => {
            let taskid = TaskId::from(p.str("taskid")?);
            let worker = conn.connid.clone();
            replica
                .propose(Command::TaskReject { taskid, worker })
                .await
        }
        "cancel" => {
            // The JSON-RPC id of one of this connection's own pending pushes or pulls, sent
            // as `id` or (some clients) `taskid`; a task id this connection pushed or a pull
            // id it is waiting on are accepted too.
            let given = p
                .get("id")
                .or_else(|| p.get("taskid"))
                .ok_or_else(|| RpcError::invalid_params("id"))?;
            let target = {
                let pending = conn.pending.borrow();
                pending.get(&given.to_string()).cloned().or_else(|| {
                    given
                        .as_str()
                        .and_then(|own| pending.values().find(|v| v.as_str() == own).cloned())
                })
            };
            let id = target.ok_or_else(|| RpcError::new(ERR_INVALID_TASK))?;
            replica
                .propose(Command::TaskCancel {
                    id,
                    connid: conn.connid.clone(),
                })
                .await
        }
        "list" => {
            let q = ListQuery::from_params(p)?;
            conn.require(q.permission_path(), "task.list")?;
            let items = replica.read_linear(|s| s.tasks.listing()).await?;
            Ok(Value::Array(q.select(
                items.iter().map(|(n, v, _)| (n.as_str(), v.clone())),
            )))
        }
        "count" => {
            let q = ListQuery::from_params(p)?;
            conn.require(q.permission_path(), "task.count")?;
            let items = replica.read_linear(|s| s.tasks.names()).await?;
            Ok(count(&q, &items))
        }
        _ => Err(RpcError::new(ERR_METHOD_NOT_FOUND)),
    }
}

/// `a.b.name` → validated, lower-cased; it needs a path and a method name.
fn method_path(raw: &str) -> Result<String, RpcError> {
    let full = normalize_path(raw).ok_or_else(|| RpcError::invalid_params("method"))?;
    if !full.contains('.') || full.starts_with('@') {
        return Err(RpcError::invalid_param_because(
            "method",
            "needs a path like a.b.name",
        ));
    }
    Ok(full)
}

/// A task for `full` (`a.b.name`) from this connection, tags not yet attached.
pub fn new_task(conn: &Conn, full: &str, p: &Params) -> Result<Task, RpcError> {
    let (path, method) = full
        .rsplit_once('.')
        .expect("method_path checked for a dot");
    let params = p.payload("params")?.clone();
    let prio = p.opt_i64("prio")?.unwrap_or(0);
    let ttl = match p.opt_i64("ttl")? {
        Some(t) if t > 0 => t,
        _ => DEFAULT_TTL,
    };
    let timeout = super::seconds(p, "timeout", DEFAULT_TIMEOUT_SECS)?;
    let detach = p.opt_bool("detach")?.unwrap_or(false);
    Ok(build_task(
        conn, path, method, params, prio, ttl, timeout, detach,
    ))
}

#[allow(clippy::too_many_arguments)]
pub fn build_task(
    conn: &Conn,
    path: &str,
    method: &str,
    params: Value,
    prio: i64,
    ttl: i64,
    timeout_secs: f64,
    detach: bool,
) -> Task {
    Task {
        id: TaskId::new(&conn.connid),
        path: format!("{path}."),
        method: method.to_string(),
        params,
        prio,
        ttl,
        detach,
        user: conn.user(),
        tags: Value::Null,
        pusher: conn.connid.clone(),
        // Stamped from the cluster clock when applied.
        creation_time: String::new(),
        deadline: String::new(),
        deadline_ms: 0,
        timeout_ms: timeout_ms(timeout_secs),
        seq: 0,
        working: None,
        pulled_by: None,
    }
}

/// A relative timeout in ms: deadlines are set in apply, on the cluster clock, so a node's
/// skewed wall clock never moves them.
fn timeout_ms(timeout_secs: f64) -> u64 {
    (timeout_secs * 1000.0) as u64
}

/// Proposes a push and, unless detached, waits for its end.
pub async fn push(
    replica: &Replica,
    local: &Local,
    conn: &Rc<Conn>,
    task: Task,
    req_id: Option<&Value>,
) -> RpcResult {
    let detach = task.detach;
    let taskid = task.id.clone();
    let _pending = Pending::new(conn, req_id, taskid.as_str());
    if detach {
        replica.propose(Command::TaskPush { task }).await?;
        return Ok(nexus_core::rpc::ok());
    }
    let (rx, _guard) = local.wait_for(taskid.as_str());
    propose_then_wait(
        replica,
        local,
        Command::TaskPush { task },
        taskid.as_str(),
        rx,
    )
    .await
}

/// Proposes a push or pull (`id`) and waits for the event that ends it on `rx`.
///
/// When the proposal's outcome is unknown (-32603: the leader changed or was lost before
/// it committed), a read barrier tells whether it took effect after all. If it did, the
/// request keeps waiting as if nothing happened: a push is answered exactly once, and no
/// task is handed to a pull whose client was told it failed (it would stay `working` for
/// a live connection that never answers it).
async fn propose_then_wait(
    replica: &Replica,
    local: &Local,
    cmd: Command,
    id: &str,
    mut rx: tokio::sync::oneshot::Receiver<RpcResult>,
) -> RpcResult {
    let replaced_before = local.replacements();
    if let Err(e) = replica.propose(cmd).await {
        if e.code != ERR_INTERNAL {
            return Err(e);
        }
        // Events are handled before proposers are answered, so an end that already
        // happened is in `rx` by the time the barrier returns.
        // A pull handed a task inside a snapshot this node installed meanwhile is
        // answered with it: its connection now works on that task.
        match replica
            .read_linear(|s| crate::node::ended_unseen(s, id))
            .await
        {
            Ok(None) => {}
            Ok(Some(Ok(task))) => return rx.try_recv().unwrap_or(Ok(task)),
            _ => return rx.try_recv().unwrap_or(Err(e)),
        }
    }
    // The push or pull is applied. From here on, a snapshot install that swallows its end
    // answers the waiter (`Node::reconcile_waiters`); one installed before this mark is
    // seen by looking at the state once more.
    local.mark_applied(id);
    if let Some(unseen) = replica.read(|s| crate::node::ended_unseen(s, id)) {
        if let Ok(answer) = rx.try_recv() {
            return answer;
        }
        // Gone from the state with no answer yet: either a snapshot installed since the
        // proposal swallowed its end, or its end was applied a moment ago and its event
        // is on its way (the Raft thread hands events on right after releasing the
        // state). Only the first is unknown here; a push told "unknown" while its task
        // ran would be retried and run twice (found by a 10-minute chaos run).
        let replaced = local.replacements() != replaced_before;
        if unseen.is_ok() || replaced {
            return unseen;
        }
    }
    rx.await
        .map_err(|_| RpcError::internal("request abandoned"))?
}

async fn finish(replica: &Replica, conn: &Conn, taskid: TaskId, ending: Ending) -> RpcResult {
    let worker = conn.connid.clone();
    replica
        .propose(Command::TaskFinish {
            taskid,
            worker,
            ending,
        })
        .await
}

/// `task.count` over (name, is a push) pairs.
fn count(q: &ListQuery, items: &[(String, bool)]) -> Value {
    let tally = |it: &mut dyn Iterator<Item = &(String, bool)>| {
        let (mut pushes, mut pulls) = (0usize, 0usize);
        for (_, is_push) in it {
            if *is_push {
                pushes += 1;
            } else {
                pulls += 1;
            }
        }
        (pushes + pulls, pushes, pulls)
    };
    let matching = || items.iter().filter(|(n, _)| q.matches(n));
    if !q.subprefixes {
        let (count, push, pull) = tally(&mut matching());
        return json!({"count": count, "pushCount": push, "pullCount": pull});
    }
    let mut groups: std::collections::BTreeMap<String, Vec<&(String, bool)>> = Default::default();
    for item in matching() {
        if let Some(g) = q.group_of(&item.0) {
            groups.entry(g).or_default().push(item);
        }
    }
    Value::Array(
        groups
            .into_iter()
            .map(|(prefix, its)| {
                let (count, push, pull) = tally(&mut its.into_iter());
                json!({"prefix": prefix, "count": count, "pushCount": push, "pullCount": pull})
            })
            .collect(),
    )
}

/// Records a pending push/pull under its JSON-RPC id for `task.cancel`, until dropped.
struct Pending {
    conn: Rc<Conn>,
    key: Option<String>,
    target: String,
}

impl Pending {
    fn new(conn: &Rc<Conn>, req_id: Option<&Value>, target: &str) -> Self {
        let key = req_id.map(|id| id.to_string());
        if let Some(k) = &key {
            conn.pending
                .borrow_mut()
                .insert(k.clone(), target.to_string());
        }
        Pending {
            conn: conn.clone(),
            key,
            target: target.to_string(),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // A client reusing request ids may have replaced our entry; leave theirs alone.
        if let Some(k) = &self.key {
            let mut pending = self.conn.pending.borrow_mut();
            if pending.get(k) == Some(&self.target) {
                pending.remove(k);
            }
        }
    }
}
