//! The task queue: pushed tasks, waiting pulls, and their matching. Matching happens here,
//! inside apply, so every node agrees on which puller got which task: highest `prio` first,
//! then oldest (log order), and pulls are served in arrival order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[cfg(test)]
use serde::Serialize;
use serde_json::{json, Value};

use super::{Event, Outcome};
use crate::ids::{ConnId, PullId, TaskId};
use crate::rpc::{self, RpcError, ERR_CANCEL, ERR_INVALID_TASK, ERR_TIMEOUT, ERR_TTL_EXPIRED};

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[cfg_attr(test, serde(rename_all = "camelCase"))]
pub struct Task {
    pub id: TaskId,
    /// `a.b.` (with the trailing dot).
    pub path: String,
    pub method: String,
    pub params: Value,
    pub prio: i64,
    pub ttl: i64,
    pub detach: bool,
    pub user: String,
    /// The pusher's tags in force at the task's full method path.
    pub tags: Value,
    pub pusher: ConnId,
    pub creation_time: String,
    pub deadline: String,
    pub deadline_ms: u64,
    /// How long the task may wait, from the cluster clock when its push is applied.
    pub timeout_ms: u64,
    /// Log order, assigned by apply: "oldest first" without trusting clocks.
    pub seq: u64,
    /// The connid working on it, when pulled.
    pub working: Option<ConnId>,
    /// The pull it was handed to, while worked: a node that learns of the hand-over from
    /// a snapshot (not from the event) still answers that pull with this task.
    pub pulled_by: Option<PullId>,
}

#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[cfg_attr(test, serde(rename_all = "camelCase"))]
pub struct Pull {
    pub id: PullId,
    pub connid: ConnId,
    pub path: String,
    pub user: String,
    pub creation_time: String,
    pub deadline: String,
    pub deadline_ms: u64,
    /// How long the pull may wait, from the cluster clock when it is applied.
    pub timeout_ms: u64,
    pub seq: u64,
}

/// Creation time, deadline (RFC 3339) and deadline in ms for something applied at cluster
/// time `now_ms` that may wait `timeout_ms`.
fn stamps(now_ms: u64, timeout_ms: u64) -> (String, String, u64) {
    let deadline_ms = now_ms.saturating_add(timeout_ms);
    (
        crate::time::rfc3339_ms(now_ms),
        crate::time::rfc3339_ms(deadline_ms),
        deadline_ms,
    )
}

/// How a worker ended a task.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[cfg_attr(test, serde(rename_all = "camelCase"))]
pub enum Ending {
    Result(Value),
    Error(RpcError),
}

type WaitKey = (Reverse<i64>, u64, TaskId);

/// What a deadline ends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Task(TaskId),
    Pull(PullId),
}

#[derive(Debug, Default, Clone)]
#[cfg_attr(test, derive(Serialize))]
pub struct Tasks {
    pub(super) tasks: BTreeMap<TaskId, Task>,
    pub(super) pulls: BTreeMap<PullId, Pull>,
    pub(super) seq: u64,
    /// path → waiting tasks, best first. Derived, like the indexes below.
    #[cfg_attr(test, serde(skip))]
    waiting: HashMap<String, BTreeSet<WaitKey>>,
    /// path → waiting pulls in arrival order.
    #[cfg_attr(test, serde(skip))]
    pulls_by_path: HashMap<String, BTreeSet<(u64, PullId)>>,
    /// puller connid → tasks it is working on.
    #[cfg_attr(test, serde(skip))]
    working_by: HashMap<ConnId, BTreeSet<TaskId>>,
    /// (deadline ms, task or pull).
    #[cfg_attr(test, serde(skip))]
    deadlines: BTreeSet<(u64, Due)>,
}

/// Where task changes report to: events for the nodes, and hooks when someone listens.
pub struct Emit<'a> {
    pub events: &'a mut Vec<Event>,
    pub hooks: bool,
}

impl<'a> Emit<'a> {
    pub fn new(events: &'a mut Vec<Event>, hooks: bool) -> Self {
        Emit { events, hooks }
    }

    fn hook(&mut self, action: &str, task: &Task, extra: Option<(&str, Value)>) {
        if !self.hooks {
            return;
        }
        let mut msg = json!({
            "action": action,
            "id": task.id,
            "path": task.path,
            "method": task.method,
            "user": task.user,
            "prio": task.prio,
            "ttl": task.ttl,
            "detach": task.detach,
        });
        if let Some((k, v)) = extra {
            msg[k] = v;
        }
        self.events.push(Event::Hook {
            topic: format!("hook.task.{}{}.{}", task.path, task.method, task.user),
            msg,
        });
    }
}

fn wait_key(t: &Task) -> WaitKey {
    (Reverse(t.prio), t.seq, t.id.clone())
}

/// A task or pull path (`a.b.`) as list/count name (`a.b`).
fn listing_name(path: &str) -> String {
    path.trim_end_matches('.').to_string()
}

/// What `task.pull` answers (note `deadLine`).
fn pull_answer(t: &Task) -> Value {
    json!({
        "taskid": t.id,
        "path": t.path,
        "method": t.method,
        "params": t.params,
        "tags": t.tags,
        "prio": t.prio,
        "detach": t.detach,
        "user": t.user,
        "ttl": t.ttl,
        "creationTime": t.creation_time,
        "deadLine": t.deadline,
    })
}

impl Tasks {
    /// A new task, its deadline counted from `now_ms` (the cluster clock).
    pub fn push(&mut self, mut task: Task, now_ms: u64, emit: &mut Emit) -> Outcome {
        if self.tasks.contains_key(&task.id) {
            return Err(RpcError::detail(ERR_INVALID_TASK, "duplicate task id"));
        }
        (task.creation_time, task.deadline, task.deadline_ms) = stamps(now_ms, task.timeout_ms);
        self.seq += 1;
        task.seq = self.seq;
        task.working = None;
        task.pulled_by = None;
        emit.hook("push", &task, None);
        self.deadlines
            .insert((task.deadline_ms, Due::Task(task.id.clone())));
        self.enqueue(task, emit);
        Ok(rpc::ok())
    }

    /// A new pull, its deadline counted from `now_ms` (the cluster clock).
    pub fn pull(&mut self, mut pull: Pull, now_ms: u64, emit: &mut Emit) -> Outcome {
        if self.pulls.contains_key(&pull.id) {
            return Err(RpcError::detail(ERR_INVALID_TASK, "duplicate pull id"));
        }
        (pull.creation_time, pull.deadline, pull.deadline_ms) = stamps(now_ms, pull.timeout_ms);
        self.seq += 1;
        pull.seq = self.seq;
        let best = self
            .waiting
            .get(&pull.path)
            .and_then(|set| set.first())
            .map(|(_, _, id)| id.clone());
        match best {
            Some(taskid) => self.assign(&taskid, &pull, emit),
            None => {
                self.deadlines
                    .insert((pull.deadline_ms, Due::Pull(pull.id.clone())));
                self.pulls_by_path
                    .entry(pull.path.clone())
                    .or_default()
                    .insert((pull.seq, pull.id.clone()));
                self.pulls.insert(pull.id.clone(), pull);
            }
        }
        Ok(rpc::ok())
    }

    /// A task (new or requeued) becomes waiting, or goes straight to the first waiting pull.
    fn enqueue(&mut self, task: Task, emit: &mut Emit) {
        let first_pull = self
            .pulls_by_path
            .get(&task.path)
            .and_then(|set| set.first())
            .map(|(_, id)| id.clone());
        let id = task.id.clone();
        self.waiting
            .entry(task.path.clone())
            .or_default()
            .insert(wait_key(&task));
        self.tasks.insert(id.clone(), task);
        if let Some(pull_id) = first_pull {
            if let Some(pull) = self.remove_pull(&pull_id) {
                self.assign(&id, &pull, emit);
            }
        }
    }

    fn remove_pull(&mut self, pull_id: &PullId) -> Option<Pull> {
        let pull = self.pulls.remove(pull_id)?;
        self.deadlines
            .remove(&(pull.deadline_ms, Due::Pull(pull.id.clone())));
        if let Some(set) = self.pulls_by_path.get_mut(&pull.path) {
            set.remove(&(pull.seq, pull.id.clone()));
            if set.is_empty() {
                self.pulls_by_path.remove(&pull.path);
            }
        }
        Some(pull)
    }

    fn unwait(&mut self, task: &Task) {
        if let Some(set) = self.waiting.get_mut(&task.path) {
            set.remove(&wait_key(task));
            if set.is_empty() {
                self.waiting.remove(&task.path);
            }
        }
    }

    /// Hands a waiting task to a pull (already removed from the waiting pulls).
    fn assign(&mut self, taskid: &TaskId, pull: &Pull, emit: &mut Emit) {
        let Some(task) = self.tasks.get(taskid).cloned() else {
            return;
        };
        self.unwait(&task);
        self.working_by
            .entry(pull.connid.clone())
            .or_default()
            .insert(task.id.clone());
        let mut task = task;
        task.working = Some(pull.connid.clone());
        task.pulled_by = Some(pull.id.clone());
        emit.events.push(Event::TaskAssigned {
            pull_id: pull.id.clone(),
            puller: pull.connid.clone(),
            answer: pull_answer(&task),
        });
        emit.hook("pull", &task, Some(("puller", json!(pull.connid))));
        self.tasks.insert(task.id.clone(), task);
    }

    /// Removes a task wherever it is and tells its pusher how it ended.
    fn end(&mut self, taskid: &TaskId, outcome: Outcome, action: &str, emit: &mut Emit) {
        let Some(task) = self.tasks.remove(taskid) else {
            return;
        };
        self.unwait(&task);
        self.deadlines
            .remove(&(task.deadline_ms, Due::Task(task.id.clone())));
        if let Some(puller) = &task.working {
            if let Some(set) = self.working_by.get_mut(puller) {
                set.remove(&task.id);
                if set.is_empty() {
                    self.working_by.remove(puller);
                }
            }
        }
        let extra = match &outcome {
            Err(e) => Some(("code", json!(e.code))),
            Ok(_) => None,
        };
        emit.hook(action, &task, extra);
        if !task.detach {
            emit.events.push(Event::TaskEnded {
                taskid: task.id,
                pusher: task.pusher,
                outcome,
            });
        }
    }

    /// The task, when `worker` is working on it; else -32002 (unknown, ended, waiting, or
    /// assigned to another connection since).
    fn working_task(&self, taskid: &TaskId, worker: &ConnId) -> Result<&Task, RpcError> {
        match self.tasks.get(taskid) {
            Some(t) if t.working.as_ref() == Some(worker) => Ok(t),
            _ => Err(RpcError::new(ERR_INVALID_TASK)),
        }
    }

    /// `task.result` / `task.error`: only the task's worker can end it, once.
    pub fn finish(
        &mut self,
        taskid: &TaskId,
        worker: &ConnId,
        ending: Ending,
        emit: &mut Emit,
    ) -> Outcome {
        self.working_task(taskid, worker)?;
        let (outcome, action) = match ending {
            Ending::Result(v) => (Ok(v), "result"),
            Ending::Error(e) => (Err(e), "error"),
        };
        self.end(taskid, outcome, action, emit);
        Ok(rpc::ok())
    }

    /// Back to waiting with ttl-1; at 0 the task ends with -32011.
    fn requeue(&mut self, taskid: &TaskId, action: &str, emit: &mut Emit) {
        let Some(mut task) = self.tasks.get(taskid).cloned() else {
            return;
        };
        task.pulled_by = None;
        if let Some(puller) = task.working.take() {
            if let Some(set) = self.working_by.get_mut(&puller) {
                set.remove(taskid);
                if set.is_empty() {
                    self.working_by.remove(&puller);
                }
            }
        }
        task.ttl -= 1;
        emit.hook(action, &task, None);
        if task.ttl <= 0 {
            self.tasks.insert(task.id.clone(), task);
            self.end(
                taskid,
                Err(RpcError::new(ERR_TTL_EXPIRED)),
                "ttlExpired",
                emit,
            );
            return;
        }
        self.enqueue(task, emit);
    }

    pub fn reject(&mut self, taskid: &TaskId, worker: &ConnId, emit: &mut Emit) -> Outcome {
        self.working_task(taskid, worker)?;
        self.requeue(taskid, "reject", emit);
        Ok(rpc::ok())
    }

    /// Cancels a pending push (its task) or a pending pull of `connid`.
    pub fn cancel(&mut self, id: &str, connid: &ConnId, emit: &mut Emit) -> Outcome {
        if let Some(t) = self.tasks.get(id).filter(|t| &t.pusher == connid) {
            let taskid = t.id.clone();
            self.end(&taskid, Err(RpcError::new(ERR_CANCEL)), "cancel", emit);
            return Ok(rpc::ok());
        }
        if let Some(p) = self.pulls.get(id).filter(|p| &p.connid == connid) {
            let pull_id = p.id.clone();
            if let Some(pull) = self.remove_pull(&pull_id) {
                emit.events.push(Event::PullEnded {
                    pull_id: pull.id,
                    connid: pull.connid,
                    error: RpcError::new(ERR_CANCEL),
                });
            }
            return Ok(rpc::ok());
        }
        Err(RpcError::new(ERR_INVALID_TASK))
    }

    /// Ends every task and pull whose deadline is at or before `now_ms` with -32000.
    pub fn expire(&mut self, now_ms: u64, emit: &mut Emit) {
        while let Some((at, due)) = self.deadlines.pop_first() {
            if at > now_ms {
                self.deadlines.insert((at, due));
                break;
            }
            match due {
                Due::Task(id) => self.end(&id, Err(RpcError::new(ERR_TIMEOUT)), "timeout", emit),
                Due::Pull(id) => {
                    if let Some(pull) = self.remove_pull(&id) {
                        emit.events.push(Event::PullEnded {
                            pull_id: pull.id,
                            connid: pull.connid,
                            error: RpcError::new(ERR_TIMEOUT),
                        });
                    }
                }
            }
        }
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// A connection is gone: its pulls vanish, its non-detached pushes are deleted, the
    /// tasks it was working on go back to waiting with ttl-1.
    pub fn connection_closed(&mut self, connid: &ConnId, emit: &mut Emit) {
        let pulls: Vec<PullId> = self
            .pulls
            .range(PullId::from(connid.as_str())..)
            .take_while(|(id, _)| id.as_str().starts_with(connid.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in pulls {
            self.remove_pull(&id);
        }
        let pushed: Vec<TaskId> = self
            .tasks
            .range(TaskId::from(connid.as_str())..)
            .take_while(|(id, _)| id.as_str().starts_with(connid.as_str()))
            .filter(|(_, t)| !t.detach && &t.pusher == connid)
            .map(|(id, _)| id.clone())
            .collect();
        for id in pushed {
            if let Some(task) = self.tasks.get_mut(&id) {
                // Nobody is left to answer: end quietly.
                task.detach = true;
            }
            self.end(
                &id,
                Err(RpcError::new(ERR_CANCEL)),
                "pusherDisconnect",
                emit,
            );
        }
        let working: Vec<TaskId> = self
            .working_by
            .get(connid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for id in working {
            self.requeue(&id, "pullerDisconnect", emit);
        }
    }

    /// (path, being worked on) of every task, for metrics.
    pub fn paths(&self) -> impl Iterator<Item = (&str, bool)> {
        self.tasks
            .values()
            .map(|t| (t.path.as_str(), t.working.is_some()))
    }

    /// Pulls waiting for a task.
    pub fn pulls_waiting(&self) -> usize {
        self.pulls.len()
    }

    pub fn get(&self, taskid: &str) -> Option<&Task> {
        self.tasks.get(taskid)
    }

    /// Is `id` a task or a waiting pull?
    pub fn contains(&self, id: &str) -> bool {
        self.tasks.contains_key(id) || self.pulls.contains_key(id)
    }

    /// What pull `pull_id` is answered with, when it was handed a task still worked on.
    /// Scans every task: only asked after a snapshot install or an unknown outcome.
    pub fn answer_of_pull(&self, pull_id: &str) -> Option<Value> {
        self.tasks
            .values()
            .find(|t| t.pulled_by.as_ref().is_some_and(|p| p == pull_id))
            .map(pull_answer)
    }

    /// (name for listing, is a push) for tasks and waiting pulls: what `task.count` needs,
    /// without building the entries.
    pub fn names(&self) -> Vec<(String, bool)> {
        let tasks = self.tasks.values().map(|t| (listing_name(&t.path), true));
        let pulls = self.pulls.values().map(|p| (listing_name(&p.path), false));
        tasks.chain(pulls).collect()
    }

    /// (name for listing, `task.list` entry, is a push) for tasks and waiting pulls, sorted
    /// by path then age.
    pub fn listing(&self) -> Vec<(String, Value, bool)> {
        let mut out: Vec<(String, u64, Value, bool)> =
            Vec::with_capacity(self.tasks.len() + self.pulls.len());
        for t in self.tasks.values() {
            out.push((
                listing_name(&t.path),
                t.seq,
                json!({
                    "id": t.id,
                    "state": if t.working.is_some() { "working" } else { "waiting" },
                    "path": t.path,
                    "priority": t.prio,
                    "ttl": t.ttl,
                    "detached": t.detach,
                    "user": t.user,
                    "method": t.method,
                    "params": t.params,
                    "targetSession": t.working.clone().unwrap_or_default(),
                    "result": null,
                    "errCode": null,
                    "errString": "",
                    "errObject": null,
                    "tags": t.tags,
                    "creationTime": t.creation_time,
                    "deadline": t.deadline,
                }),
                true,
            ));
        }
        for p in self.pulls.values() {
            out.push((
                listing_name(&p.path),
                p.seq,
                json!({
                    "id": p.id,
                    "state": "waiting",
                    "path": p.path,
                    "priority": 0,
                    "ttl": 0,
                    "detached": false,
                    "user": p.user,
                    "method": "",
                    "params": null,
                    "targetSession": "",
                    "result": null,
                    "errCode": null,
                    "errString": "",
                    "errObject": null,
                    "tags": null,
                    "creationTime": p.creation_time,
                    "deadline": p.deadline,
                }),
                false,
            ));
        }
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out.into_iter()
            .map(|(n, _, v, push)| (n, v, push))
            .collect()
    }

    pub fn rebuild_index(&mut self) {
        self.waiting.clear();
        self.pulls_by_path.clear();
        self.working_by.clear();
        self.deadlines.clear();
        for t in self.tasks.values() {
            self.deadlines
                .insert((t.deadline_ms, Due::Task(t.id.clone())));
            match &t.working {
                Some(c) => {
                    self.working_by
                        .entry(c.clone())
                        .or_default()
                        .insert(t.id.clone());
                }
                None => {
                    self.waiting
                        .entry(t.path.clone())
                        .or_default()
                        .insert(wait_key(t));
                }
            }
        }
        for p in self.pulls.values() {
            self.deadlines
                .insert((p.deadline_ms, Due::Pull(p.id.clone())));
            self.pulls_by_path
                .entry(p.path.clone())
                .or_default()
                .insert((p.seq, p.id.clone()));
        }
    }
}
