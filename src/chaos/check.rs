//! The checker: reads a run's history and lists every broken promise (docs/api.md, "In a cluster"; docs/reliability.md).
//!
//! Faults make some outcomes legitimate (a connection lost on a killed node, a lock freed
//! because its holder's node was declared down), so each check knows the fault windows:
//! per node, from the fault's injection until the cluster was healthy again after its
//! heal, plus a margin for answers already on their way.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::history::{Kind, Record};

/// Answers this late after a window's end still count as inside it.
const MARGIN: f64 = 1.0;

#[derive(Debug, Clone)]
pub struct Violation {
    pub check: &'static str,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Per operation: ok, fail, unknown.
    pub ops: BTreeMap<String, [u64; 3]>,
    /// Per fault kind: how many.
    pub faults: BTreeMap<String, u64>,
    /// Figures each check looked at (e.g. "tasks answered").
    pub checked: BTreeMap<&'static str, u64>,
}

impl Report {
    fn violation(&mut self, check: &'static str, detail: String) {
        self.violations.push(Violation { check, detail });
    }

    fn count(&mut self, what: &'static str, n: u64) {
        *self.checked.entry(what).or_default() += n;
    }
}

/// Per node, the [start, end] windows in which it was faulted or recovering.
struct Faults {
    windows: Vec<(usize, f64, f64)>,
}

impl Faults {
    fn from(records: &[Record]) -> Faults {
        let mut windows = Vec::new();
        let mut open: Option<(usize, f64)> = None;
        let mut healed = false;
        for r in records {
            match r.kind {
                Kind::Fault => {
                    open = Some((r.node, r.time));
                    healed = false;
                }
                Kind::Heal => healed = true,
                Kind::Healthy if healed => {
                    if let Some((node, start)) = open.take() {
                        windows.push((node, start, r.time + MARGIN));
                    }
                }
                _ => {}
            }
        }
        if let Some((node, start)) = open {
            windows.push((node, start, f64::INFINITY));
        }
        Faults { windows }
    }

    /// A fault on `node` overlaps [a, b].
    fn on(&self, node: usize, a: f64, b: f64) -> bool {
        self.windows
            .iter()
            .any(|&(n, s, e)| hits(n, node) && s <= b && e >= a)
    }

    /// Any fault overlaps [a, b].
    fn any(&self, a: f64, b: f64) -> bool {
        self.windows.iter().any(|&(_, s, e)| s <= b && e >= a)
    }

    /// `end`, cut at the first fault on `node` after `start`: nothing is promised to a
    /// client of a faulted node from then on.
    fn cap(&self, node: usize, start: f64, end: f64) -> f64 {
        self.windows
            .iter()
            .filter(|&&(n, _, e)| hits(n, node) && e > start)
            .map(|&(_, s, _)| s.max(start))
            .fold(end, f64::min)
    }
}

/// Whether a fault recorded on `faulted` (`ALL_NODES` for a power cut) concerns `node`.
fn hits(faulted: usize, node: usize) -> bool {
    faulted == node || faulted == super::history::ALL_NODES
}

pub fn check(records: &[Record]) -> Report {
    let mut report = Report::default();
    let faults = Faults::from(records);
    let outcomes: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(r.kind, Kind::Ok | Kind::Fail | Kind::Unknown))
        .collect();
    for r in &outcomes {
        let slot = match r.kind {
            Kind::Ok => 0,
            Kind::Fail => 1,
            _ => 2,
        };
        report.ops.entry(r.op.clone()).or_default()[slot] += 1;
        if r.result.get("hang").is_some() {
            report.violation(
                "no hang",
                format!(
                    "{} {} {} on n{} invoked at {:.2}s got no answer",
                    r.client, r.op, r.value, r.node, r.invoke
                ),
            );
        }
    }
    for r in records.iter().filter(|r| r.kind == Kind::Fault) {
        *report.faults.entry(r.op.clone()).or_default() += 1;
    }
    recovery(records, &mut report);
    users(&outcomes, &mut report);
    tasks(&outcomes, &faults, &mut report);
    locks(&outcomes, &faults, &mut report);
    topics(&outcomes, &faults, &mut report);
    report
}

/// Every heal is followed by a healthy cluster, and the final state converged.
fn recovery(records: &[Record], report: &mut Report) {
    let mut waiting: Option<&Record> = None;
    for r in records {
        match r.kind {
            Kind::Heal => waiting = Some(r),
            Kind::Healthy => waiting = None,
            _ => {}
        }
    }
    if let Some(r) = waiting {
        report.violation(
            "recovery",
            format!(
                "the cluster was not healthy again after {} of n{} healed at {:.2}s",
                r.op, r.node, r.time
            ),
        );
    }
    match records.iter().rev().find(|r| r.op == "final.state") {
        Some(r) if r.kind == Kind::Ok => report.count("end state equal on every node", 1),
        Some(r) => report.violation("convergence", format!("{}", r.result)),
        None => report.violation("convergence", "the final state was never compared".into()),
    }
}

/// Acknowledged creates exist at the end, and each user's tag holds the last acknowledged
/// value (or one whose outcome is unknown).
fn users(outcomes: &[&Record], report: &mut Report) {
    let Some(last) = outcomes
        .iter()
        .rev()
        .find(|r| r.op == "final.state" && r.kind == Kind::Ok)
    else {
        return;
    };
    let listed: HashMap<String, Value> = last.value["users"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|u| Some((u["user"].as_str()?.to_string(), u["tags"].clone())))
                .collect()
        })
        .unwrap_or_default();
    let mut creates: HashMap<String, Vec<&Record>> = HashMap::new();
    let mut writes: HashMap<String, Vec<&Record>> = HashMap::new();
    for r in outcomes {
        let Some(user) = r.value["user"].as_str() else {
            continue;
        };
        match r.op.as_str() {
            "user.create" => creates.entry(user.to_string()).or_default().push(r),
            "user.setTags" => writes.entry(user.to_string()).or_default().push(r),
            _ => {}
        }
    }
    for (user, attempts) in &creates {
        let acked = attempts.iter().any(|r| r.kind == Kind::Ok);
        let maybe = attempts.iter().any(|r| r.kind == Kind::Unknown);
        let present = listed.contains_key(user);
        if acked && !present {
            report.violation(
                "durable writes",
                format!("acknowledged user.create of {user} is lost"),
            );
        }
        if present && !acked && !maybe {
            report.violation(
                "durable writes",
                format!("{user} exists though its create failed"),
            );
        }
        report.count("users created (acknowledged)", acked as u64);
        let final_v = listed.get(user).and_then(|t| t["chaos"]["v"].as_i64());
        let tries = writes.get(user).cloned().unwrap_or_default();
        let last_ok = tries
            .iter()
            .filter(|r| r.kind == Kind::Ok)
            .max_by(|a, b| a.invoke.total_cmp(&b.invoke))
            .and_then(|r| r.value["v"].as_i64());
        let mut allowed: HashSet<Option<i64>> = tries
            .iter()
            .filter(|r| r.kind == Kind::Unknown)
            .map(|r| r.value["v"].as_i64())
            .collect();
        allowed.insert(last_ok);
        if present && !allowed.contains(&final_v) {
            report.violation(
                "durable writes",
                format!(
                    "{user}: tag v is {final_v:?} at the end; the last acknowledged write set {last_ok:?}"
                ),
            );
        }
        report.count("tag writes checked", tries.len() as u64);
    }
}

/// One execution of a task by a worker: from its pull answer until it sent its result.
struct Execution<'a> {
    pull: &'a Record,
    end: f64,
}

fn tasks(outcomes: &[&Record], faults: &Faults, report: &mut Report) {
    // The worker's result for each pulled task, in the worker's own order.
    let mut executions: HashMap<String, Vec<Execution>> = HashMap::new();
    let mut accepted: HashMap<String, Vec<&Record>> = HashMap::new();
    // Tasks some worker's result may have ended (acknowledged, or outcome unknown).
    let mut answered: HashSet<String> = HashSet::new();
    let mut by_client: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in outcomes {
        by_client.entry(r.client.as_str()).or_default().push(r);
    }
    let mut pushes: HashMap<(String, i64), &Record> = HashMap::new();
    // (client, n) of every push answered with a result.
    let pushed_ok: HashSet<(Value, Value)> = outcomes
        .iter()
        .filter(|r| r.op == "task.push" && r.kind == Kind::Ok)
        .map(|r| (r.value["c"].clone(), r.value["n"].clone()))
        .collect();
    for (_, ops) in by_client {
        for (i, r) in ops.iter().enumerate() {
            if r.op == "task.push" {
                let key = (
                    r.value["c"].as_str().unwrap_or("").to_string(),
                    r.value["n"].as_i64().unwrap_or(-1),
                );
                pushes.insert(key, r);
            }
            if r.op != "task.pull" || r.kind != Kind::Ok {
                continue;
            }
            let taskid = r.value["taskid"].as_str().unwrap_or("").to_string();
            // The worker's attempts to answer (retried after -32603); it stopped holding
            // the task when it sent the first.
            let results: Vec<&Record> = ops[i + 1..]
                .iter()
                .take_while(|n| n.op == "task.result" && n.value["taskid"] == r.value["taskid"])
                .copied()
                .collect();
            let end = results.first().map_or(r.time, |n| n.invoke);
            if let Some(res) = results.iter().find(|n| n.kind == Kind::Ok) {
                accepted.entry(taskid.clone()).or_default().push(res);
            }
            if results
                .iter()
                .any(|n| matches!(n.kind, Kind::Ok | Kind::Unknown))
            {
                answered.insert(taskid.clone());
            }
            executions
                .entry(taskid.clone())
                .or_default()
                .push(Execution {
                    pull: r,
                    end: faults.cap(r.node, r.time, end),
                });
            if let Some(res) = results.first().filter(|n| n.kind == Kind::Fail) {
                report.count("late task results refused", 1);
                let push_ok = pushed_ok.contains(&(r.value["c"].clone(), r.value["n"].clone()));
                if !faults.on(r.node, r.time, res.time) && push_ok {
                    report.violation(
                        "task taken from a live worker",
                        format!(
                            "{} held task {} (pulled {:.2}s, unfaulted node) but its result was refused: {}",
                            r.client, taskid, r.time, res.result
                        ),
                    );
                }
            }
        }
    }
    for (taskid, mut runs) in executions {
        runs.sort_by(|a, b| a.pull.time.total_cmp(&b.pull.time));
        // Each execution against the longest-running earlier one; executions that begin
        // while the worker's node is faulted are not live and compared with nothing.
        let mut longest: Option<&Execution> = None;
        for run in runs.iter().filter(|r| r.end > r.pull.time) {
            if let Some(prev) = longest.filter(|p| p.end > run.pull.time) {
                report.violation(
                    "task held twice",
                    format!(
                        "task {taskid} held by two live workers: {} from {:.2}s to {:.2}s, {} from {:.2}s",
                        prev.pull.client, prev.pull.time, prev.end, run.pull.client, run.pull.time
                    ),
                );
            }
            if longest.is_none_or(|p| run.end > p.end) {
                longest = Some(run);
            }
        }
        report.count("task executions", runs.len() as u64);
        if accepted.get(&taskid).map_or(0, Vec::len) > 1 {
            report.violation(
                "task held twice",
                format!("task {taskid} got two accepted results"),
            );
        }
    }
    for ((c, n), push) in &pushes {
        match push.kind {
            Kind::Ok => {
                report.count("tasks answered", 1);
                let r = &push.result;
                if r["c"].as_str() != Some(c) || r["n"].as_i64() != Some(*n) {
                    report.violation(
                        "push answers",
                        format!("push {c}/{n} answered with another task's result {r}"),
                    );
                    continue;
                }
                let taskid = r["taskid"].as_str().unwrap_or("");
                if !answered.contains(taskid) {
                    report.violation(
                        "push answers",
                        format!("push {c}/{n} answered {r} but no worker answered {taskid}"),
                    );
                }
            }
            // A lost connection is only legitimate when the pusher's own node was faulted.
            Kind::Unknown
                if push.result.get("lost").is_some()
                    && !faults.on(push.node, push.invoke, push.time) =>
            {
                report.violation(
                    "push failures",
                    format!(
                        "push {c}/{n} lost its connection at {:.2}s with no fault on its node n{}",
                        push.time, push.node
                    ),
                );
            }
            Kind::Fail | Kind::Unknown if !faults.any(push.invoke, push.time) => {
                report.violation(
                    "push failures",
                    format!(
                        "push {c}/{n} failed with no fault anywhere: {}",
                        push.result
                    ),
                );
            }
            _ => {}
        }
    }
}

fn locks(outcomes: &[&Record], faults: &Faults, report: &mut Report) {
    struct Hold<'a> {
        grant: &'a Record,
        token: u64,
        end: f64,
    }
    let mut by_client: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in outcomes.iter().filter(|r| r.op.starts_with("sync.")) {
        by_client.entry(r.client.as_str()).or_default().push(r);
    }
    let mut holds: HashMap<String, Vec<Hold>> = HashMap::new();
    let mut grants: Vec<(u64, &Record)> = Vec::new();
    for ops in by_client.values() {
        for (i, r) in ops.iter().enumerate() {
            if r.op != "sync.lock" || r.kind != Kind::Ok {
                continue;
            }
            let Some(token) = r.result["token"].as_u64() else {
                report.violation(
                    "fencing tokens",
                    format!("grant without a fencing token: {}", r.result),
                );
                continue;
            };
            // The first unlock attempt: the client stopped acting as holder when it sent it.
            let unlock = ops.get(i + 1).filter(|n| n.op == "sync.unlock");
            let end = unlock.map_or(r.time, |u| u.invoke);
            if let Some(u) = unlock.filter(|u| u.kind == Kind::Fail) {
                if !faults.on(r.node, r.time, u.time) {
                    report.violation(
                        "lock lost by a live holder",
                        format!(
                            "{} lost {} (granted {:.2}s) on an unfaulted node: unlock said {}",
                            r.client, r.value["lock"], r.time, u.result
                        ),
                    );
                }
            }
            grants.push((token, r));
            holds
                .entry(r.value["lock"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(Hold {
                    grant: r,
                    token,
                    end: faults.cap(r.node, r.time, end),
                });
        }
    }
    for (lock, mut hs) in holds {
        hs.sort_by(|a, b| a.grant.time.total_cmp(&b.grant.time));
        let mut longest: Option<&Hold> = None;
        // A hold that begins while its node is faulted is not live (a thawed node may
        // still hand out a grant it made before the pause, with its old token, just
        // before fencing closes the connection): nothing to overlap with.
        for h in hs.iter().filter(|h| h.end > h.grant.time) {
            if let Some(prev) = longest {
                if prev.end > h.grant.time {
                    report.violation(
                        "lock held twice",
                        format!(
                            "{lock} held twice: {} (token {}) {:.3}s–{:.3}s and {} (token {}) from {:.3}s",
                            prev.grant.client, prev.token, prev.grant.time, prev.end, h.grant.client, h.token, h.grant.time
                        ),
                    );
                }
            }
            if longest.is_none_or(|p| h.end > p.end) {
                longest = Some(h);
            }
        }
        report.count("lock grants", hs.len() as u64);
    }
    waits(outcomes, faults, &grants, report);
    // Tokens: unique, and a grant that finished before another was asked for has the
    // smaller token.
    grants.sort_by_key(|(t, _)| *t);
    let mut latest_invoke = f64::NEG_INFINITY;
    let mut latest_by: Option<&Record> = None;
    for pair in grants.windows(2) {
        if pair[0].0 == pair[1].0 {
            report.violation(
                "fencing tokens",
                format!("fencing token {} granted twice", pair[0].0),
            );
        }
    }
    for (token, g) in &grants {
        if latest_invoke > g.time {
            report.violation(
                "fencing tokens",
                format!(
                    "token {token} ({}) granted at {:.3}s, before {} asked at {:.3}s and got a smaller token",
                    g.client,
                    g.time,
                    latest_by.map_or("", |r| r.client.as_str()),
                    latest_invoke
                ),
            );
        }
        if g.invoke > latest_invoke {
            latest_invoke = g.invoke;
            latest_by = Some(g);
        }
    }
}

/// Lock waits (`sync.lock` with `wait`): each lock's waits granted in the order they were
/// committed (their tickets grow with their tokens), never granted once ended (an unlock
/// after a timed-out wait fails), and never timed out before their time. That every wait
/// is answered within its time plus the hang bound is the "no hang" check: the client
/// gives a wait that long.
fn waits(outcomes: &[&Record], faults: &Faults, grants: &[(u64, &Record)], report: &mut Report) {
    let mut by_lock: BTreeMap<&str, Vec<(u64, u64, &Record)>> = BTreeMap::new();
    for (token, g) in grants.iter().filter(|(_, g)| g.value.get("wait").is_some()) {
        let Some(ticket) = g.result["ticket"].as_u64() else {
            report.violation(
                "wait order",
                format!(
                    "{} was granted a wait without its ticket: {}",
                    g.client, g.result
                ),
            );
            continue;
        };
        let lock = g.value["lock"].as_str().unwrap_or("");
        by_lock.entry(lock).or_default().push((*token, ticket, g));
    }
    for (lock, mut granted) in by_lock {
        granted.sort_by_key(|(token, _, _)| *token);
        for pair in granted.windows(2) {
            let ((t1, k1, g1), (t2, k2, g2)) = (pair[0], pair[1]);
            if k1 >= k2 {
                report.violation(
                    "wait order",
                    format!(
                        "{lock}: {} got token {t1} for ticket {k1}, before {} got token {t2} for the earlier ticket {k2}",
                        g1.client, g2.client
                    ),
                );
            }
        }
        report.count("waits granted (in ticket order)", granted.len() as u64);
    }
    for r in outcomes.iter().filter(|r| r.op.starts_with("sync.")) {
        if r.op == "sync.unlock" && r.value.get("probe").is_some() && r.kind == Kind::Ok {
            report.violation(
                "no grant to an ended wait",
                format!(
                    "{} held {} after its wait timed out (unlock at {:.2}s succeeded)",
                    r.client, r.value["lock"], r.invoke
                ),
            );
        }
        let Some(wait_ms) = r.value["wait"].as_u64() else {
            continue;
        };
        if r.op != "sync.lock" || r.kind != Kind::Fail {
            continue;
        }
        report.count("waits timed out", 1);
        // On a faulted node a wait also ends with its session (the node declared down).
        let waited = r.time - r.invoke;
        if waited + 0.01 < wait_ms as f64 / 1000.0 && !faults.on(r.node, r.invoke, r.time) {
            report.violation(
                "wait ended early",
                format!(
                    "{} waited {:.3}s for {}, with wait {wait_ms} ms: {}",
                    r.client, waited, r.value["lock"], r.result
                ),
            );
        }
    }
}

fn topics(outcomes: &[&Record], faults: &Faults, report: &mut Report) {
    // Publishes by (publisher, seq).
    let mut published: HashMap<(String, u64), &Record> = HashMap::new();
    for r in outcomes.iter().filter(|r| r.op == "topic.pub") {
        if let (Some(p), Some(s)) = (r.value["p"].as_str(), r.value["s"].as_u64()) {
            published.insert((p.to_string(), s), r);
        }
    }
    struct Epoch<'a> {
        sub: &'a Record,
        got: Vec<(String, u64)>,
        drops: u64,
        ended: bool,
    }
    let mut epochs: HashMap<String, Epoch> = HashMap::new();
    for r in outcomes {
        let pipe = r.value["pipe"].as_str().unwrap_or("").to_string();
        match (r.op.as_str(), r.kind) {
            ("topic.sub", Kind::Ok) => {
                epochs.insert(
                    pipe,
                    Epoch {
                        sub: r,
                        got: Vec::new(),
                        drops: 0,
                        ended: false,
                    },
                );
            }
            ("pipe.read", Kind::Ok) => {
                if let Some(e) = epochs.get_mut(&pipe) {
                    e.drops += r.value["drops"].as_u64().unwrap_or(0);
                    for m in r.value["msgs"].as_array().into_iter().flatten() {
                        if let (Some(p), Some(s)) = (m[0].as_str(), m[1].as_u64()) {
                            e.got.push((p.to_string(), s));
                        }
                    }
                }
            }
            ("topic.end", Kind::Ok) => {
                if let Some(e) = epochs.get_mut(&pipe) {
                    e.ended = true;
                }
            }
            _ => {}
        }
    }
    for (pipe, e) in &epochs {
        let mut last: HashMap<&str, u64> = HashMap::new();
        let mut seen: HashSet<(&str, u64)> = HashSet::new();
        for (p, s) in &e.got {
            if !seen.insert((p, *s)) {
                report.violation(
                    "topic order",
                    format!("{pipe} ({}) got {p}#{s} twice", e.sub.client),
                );
            } else if last.get(p.as_str()).is_some_and(|prev| *prev > *s) {
                report.violation(
                    "topic order",
                    format!(
                        "{pipe} ({}) got {p}#{s} after {p}#{}",
                        e.sub.client,
                        last[p.as_str()]
                    ),
                );
            }
            if !published.contains_key(&(p.clone(), *s)) {
                report.violation(
                    "topic order",
                    format!("{pipe} got {p}#{s}, which nobody published"),
                );
            }
            last.insert(p, *s);
        }
        report.count("messages delivered", e.got.len() as u64);
        if !e.ended || e.drops > 0 {
            continue;
        }
        // Nothing missing from publishes acknowledged in a quiet window while this
        // subscription lived.
        for ((p, s), pubr) in &published {
            let quiet = !faults.any(pubr.invoke, pubr.time + MARGIN);
            let sent = pubr.result["sent"].as_u64().unwrap_or(0) > 0;
            if pubr.kind == Kind::Ok && sent && quiet && pubr.invoke > e.sub.time {
                report.count("deliveries required", 1);
                if !seen.contains(&(p.as_str(), *s)) {
                    report.violation(
                        "topic delivery",
                        format!(
                            "{pipe} ({}) is missing {p}#{s}, published at {:.2}s with no fault",
                            e.sub.client, pubr.invoke
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(
        client: &str,
        op: &str,
        kind: Kind,
        span: (f64, f64),
        value: Value,
        result: Value,
    ) -> Record {
        Record {
            kind,
            time: span.1,
            invoke: span.0,
            client: client.into(),
            node: 0,
            op: op.into(),
            value,
            result,
        }
    }

    fn found(records: &[Record], name: &str) -> Vec<String> {
        check(records)
            .violations
            .into_iter()
            .filter(|v| v.check == name)
            .map(|v| v.detail)
            .collect()
    }

    /// Two waiters of one lock granted one after the other, each releasing it.
    fn two_grants(tickets: (u64, u64)) -> Vec<Record> {
        let wait = json!({"lock": "L", "wait": 1000});
        vec![
            op(
                "a",
                "sync.lock",
                Kind::Ok,
                (0.0, 0.1),
                wait.clone(),
                json!({"ok": true, "token": 5, "ticket": tickets.0}),
            ),
            op(
                "a",
                "sync.unlock",
                Kind::Ok,
                (0.2, 0.3),
                json!({"lock": "L", "token": 5}),
                json!({}),
            ),
            op(
                "b",
                "sync.lock",
                Kind::Ok,
                (0.05, 0.25),
                wait,
                json!({"ok": true, "token": 6, "ticket": tickets.1}),
            ),
            op(
                "b",
                "sync.unlock",
                Kind::Ok,
                (0.4, 0.5),
                json!({"lock": "L", "token": 6}),
                json!({}),
            ),
        ]
    }

    #[test]
    fn waits_granted_out_of_ticket_order_are_found() {
        assert!(found(&two_grants((3, 4)), "wait order").is_empty());
        let out_of_order = found(&two_grants((4, 3)), "wait order");
        assert_eq!(out_of_order.len(), 1, "{out_of_order:?}");
        assert!(found(&two_grants((3, 4)), "lock held twice").is_empty());
    }

    #[test]
    fn an_unlock_that_succeeds_after_a_timed_out_wait_is_found() {
        let timed_out = op(
            "a",
            "sync.lock",
            Kind::Fail,
            (0.0, 1.2),
            json!({"lock": "L", "wait": 1000}),
            json!({"code": -32006}),
        );
        let probe = |kind| {
            op(
                "a",
                "sync.unlock",
                kind,
                (1.3, 1.4),
                json!({"lock": "L", "probe": true}),
                json!({}),
            )
        };
        let refused = [timed_out.clone(), probe(Kind::Fail)];
        assert!(found(&refused, "no grant to an ended wait").is_empty());
        let held = [timed_out, probe(Kind::Ok)];
        assert_eq!(found(&held, "no grant to an ended wait").len(), 1);
    }

    #[test]
    fn a_wait_that_times_out_before_its_time_is_found() {
        let after = |secs| {
            [op(
                "a",
                "sync.lock",
                Kind::Fail,
                (1.0, 1.0 + secs),
                json!({"lock": "L", "wait": 500}),
                json!({"code": -32006}),
            )]
        };
        assert!(found(&after(0.52), "wait ended early").is_empty());
        assert_eq!(found(&after(0.3), "wait ended early").len(), 1);
    }
}
