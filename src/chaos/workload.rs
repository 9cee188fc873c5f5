//! The mixed workload: client threads pinned to one node each, every operation recorded
//! with its invocation time and outcome. Clients reconnect to their node when it comes back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::client::{Answer, Client};
use super::history::{Kind, Operation, Recorder};
use super::nodes::{ROOT_PASS, ROOT_USER};

pub const TASK_PREFIX: &str = "chaos.task.";
pub const TOPIC: &str = "chaos.topic";
pub const LOCKS: usize = 2;
/// `sync.lock` refused (held by another, or the wait timed out); `sync.unlock` by a
/// connection that does not hold the lock.
const LOCK_REFUSED: i64 = -32006;

/// Clients per node of each kind (`--mix`).
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub users: usize,
    /// Pushers, and as many workers.
    pub tasks: usize,
    pub locks: usize,
    /// Publishers, and as many subscribers.
    pub topics: usize,
}

impl std::str::FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            users: 0,
            tasks: 0,
            locks: 0,
            topics: 0,
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (kind, n) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected KIND=N"))?;
            let n: usize = n
                .parse()
                .map_err(|_| format!("`{part}`: N is not a number"))?;
            match kind {
                "users" => mix.users = n,
                "tasks" => mix.tasks = n,
                "locks" => mix.locks = n,
                "topics" => mix.topics = n,
                other => {
                    return Err(format!(
                        "unknown workload `{other}` (users, tasks, locks, topics)"
                    ))
                }
            }
        }
        Ok(mix)
    }
}

/// What every client thread shares.
pub struct Ctx {
    pub rec: Recorder,
    pub addrs: Vec<SocketAddr>,
    /// An answer not received within this is a hang.
    pub hang_after: Duration,
    pub think: Duration,
    /// Producers (pushers, publishers, user and lock clients) stop at their next operation.
    pub stop_producers: AtomicBool,
    /// Consumers (workers, subscribers) stop once they find nothing more to read.
    pub stop_consumers: AtomicBool,
}

/// One client's connection to its node, reconnecting on demand.
struct Conn {
    ctx: Arc<Ctx>,
    name: String,
    node: usize,
    client: Option<Client>,
}

impl Conn {
    fn new(ctx: &Arc<Ctx>, name: String, node: usize) -> Conn {
        Conn {
            ctx: ctx.clone(),
            name,
            node,
            client: None,
        }
    }

    /// Connected (connecting first if needed); None while the node cannot be reached.
    fn ready(&mut self) -> bool {
        if self.client.is_none() {
            let timeout = Duration::from_secs(3);
            match Client::connect(self.ctx.addrs[self.node], ROOT_USER, ROOT_PASS, timeout) {
                Ok(c) => self.client = Some(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(250));
                    return false;
                }
            }
        }
        true
    }

    /// Calls `method` without recording it; None when not connected. A broken connection
    /// is dropped (the next call reconnects).
    fn call(&mut self, method: &str, params: Value) -> Option<(f64, Answer)> {
        self.call_waiting(method, params, Duration::ZERO)
    }

    /// Like `call`, for a request that may wait `wait` before its answer is due.
    fn call_waiting(
        &mut self,
        method: &str,
        params: Value,
        wait: Duration,
    ) -> Option<(f64, Answer)> {
        if !self.ready() {
            return None;
        }
        let invoke = self.ctx.rec.now();
        let client = self.client.as_mut()?;
        let answer = client.call(method, params, wait + self.ctx.hang_after);
        if matches!(answer, Answer::Lost(_) | Answer::Hang) {
            self.client = None;
        }
        Some((invoke, answer))
    }

    fn record(&self, op: &'static str, value: Value, invoke: f64, answer: &Answer) {
        let (outcome, result) = outcome_of(answer);
        self.ctx.rec.operation(Operation {
            client: self.name.clone(),
            node: self.node,
            op,
            value,
            invoke,
            outcome,
            result,
        });
    }

    /// Calls and records `op`; None when not connected (nothing was sent).
    fn op(
        &mut self,
        op: &'static str,
        method: &str,
        params: Value,
        value: Value,
    ) -> Option<Answer> {
        let (invoke, answer) = self.call(method, params)?;
        self.record(op, value, invoke, &answer);
        Some(answer)
    }

    /// Like `op`, repeated while the answer is `-32603` (retryable: no leader, or the
    /// proposal lost to a leader change), as a client is told to; each attempt recorded.
    fn op_retrying(
        &mut self,
        op: &'static str,
        method: &str,
        params: Value,
        value: Value,
    ) -> Option<Answer> {
        let give_up = std::time::Instant::now() + self.ctx.hang_after;
        loop {
            let answer = self.op(op, method, params.clone(), value.clone())?;
            if answer.code() != Some(-32603) || std::time::Instant::now() > give_up {
                return Some(answer);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends this connection's session (and with it every lock and wait it may hold); the
    /// next call reconnects.
    fn reconnect(&mut self) {
        if let Some(c) = self.client.take() {
            c.close();
        }
    }

    fn think(&self) {
        std::thread::sleep(self.ctx.think);
    }

    fn close(self) {
        if let Some(c) = self.client {
            c.close();
        }
    }
}

/// `-32603` (no leader, proposal lost) may still have committed: its outcome is unknown.
fn outcome_of(answer: &Answer) -> (Kind, Value) {
    match answer {
        Answer::Ok(v) => (Kind::Ok, v.clone()),
        Answer::Err(e) if answer.code() == Some(-32603) => (Kind::Unknown, e.clone()),
        Answer::Err(e) => (Kind::Fail, e.clone()),
        Answer::Lost(why) => (Kind::Unknown, json!({"lost": why})),
        Answer::Hang => (Kind::Unknown, json!({"hang": true})),
    }
}

/// Starts every client thread of `mix` on every node.
pub fn spawn(
    ctx: &Arc<Ctx>,
    mix: Mix,
    nodes: usize,
    seed: u64,
) -> Vec<(bool, std::thread::JoinHandle<()>)> {
    let mut threads = Vec::new();
    let mut k = 0u64;
    let mut start = |producer: bool, name: String, node: usize, body: fn(Conn, StdRng)| {
        k += 1;
        let rng = StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(k));
        let conn = Conn::new(ctx, name, node);
        threads.push((producer, std::thread::spawn(move || body(conn, rng))));
    };
    for node in 0..nodes {
        for c in 0..mix.users {
            start(true, format!("n{node}.users{c}"), node, users);
        }
        for c in 0..mix.tasks {
            start(true, format!("n{node}.pusher{c}"), node, pusher);
            start(false, format!("n{node}.worker{c}"), node, worker);
        }
        for c in 0..mix.locks {
            start(true, format!("n{node}.locker{c}"), node, locker);
        }
        for c in 0..mix.topics {
            start(true, format!("n{node}.publisher{c}"), node, publisher);
            start(false, format!("n{node}.subscriber{c}"), node, subscriber);
        }
    }
    threads
}

fn producing(conn: &Conn) -> bool {
    !conn.ctx.stop_producers.load(Ordering::Relaxed)
}

fn consuming(conn: &Conn) -> bool {
    !conn.ctx.stop_consumers.load(Ordering::Relaxed)
}

/// Creates users (one name per attempt) and sets tags on each: one writer per user, so
/// the last acknowledged value is what must be there at the end.
fn users(mut conn: Conn, _rng: StdRng) {
    let mut n = 0;
    while producing(&conn) {
        let user = format!("chaos.{}.u{n}", conn.name.replace('.', "-"));
        let create = json!({"user": user, "pass": "chaos-secret"});
        if conn
            .op("user.create", "user.create", create, json!({"user": user}))
            .is_none()
        {
            continue;
        }
        n += 1;
        for v in 1..=4 {
            let params = json!({"user": user, "prefix": "chaos", "tags": {"v": v}});
            conn.op(
                "user.setTags",
                "user.setTags",
                params,
                json!({"user": user, "v": v}),
            );
            conn.think();
        }
    }
    conn.close();
}

/// Pushes tasks one at a time and waits for each answer.
fn pusher(mut conn: Conn, _rng: StdRng) {
    let mut n = 0;
    while producing(&conn) {
        n += 1;
        let value = json!({"c": conn.name, "n": n});
        let params = json!({"method": format!("{TASK_PREFIX}run"), "params": value, "ttl": 20});
        conn.op("task.push", "task.push", params, value);
        conn.think();
    }
    conn.close();
}

/// Pulls tasks, works on each a little, and answers with what it was given.
fn worker(mut conn: Conn, mut rng: StdRng) {
    while consuming(&conn) {
        let params = json!({"prefix": TASK_PREFIX, "timeout": 1});
        let Some((invoke, answer)) = conn.call("task.pull", params) else {
            continue;
        };
        let task = match &answer {
            Answer::Ok(task) => task.clone(),
            Answer::Err(_) if answer.code() == Some(-32000) => continue, // nothing to do
            _ => {
                conn.record("task.pull", Value::Null, invoke, &answer);
                continue;
            }
        };
        let taskid = task["taskid"].clone();
        let (c, n) = (task["params"]["c"].clone(), task["params"]["n"].clone());
        let value = json!({"taskid": taskid, "c": c, "n": n});
        conn.record("task.pull", value.clone(), invoke, &answer);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..10)));
        let result = json!({"c": c, "n": n, "taskid": taskid, "w": conn.name});
        conn.op_retrying(
            "task.result",
            "task.result",
            json!({"taskid": taskid, "result": result}),
            value,
        );
    }
    conn.close();
}

/// Takes a lock, holds it briefly, releases it. Half the attempts wait for the lock
/// (`wait`, 50 ms to 2 s) instead of trying once. A wait that timed out is followed by an
/// unlock that must fail (a probe: no grant went to the ended wait). Whenever this client
/// cannot know whether it holds a lock or has a wait left, it reconnects, which ends them.
fn locker(mut conn: Conn, mut rng: StdRng) {
    while producing(&conn) {
        let lock = format!("chaos.lock.{}", rng.gen_range(0..LOCKS));
        let wait_ms: u64 = if rng.gen_bool(0.5) {
            rng.gen_range(50..2000)
        } else {
            0
        };
        let (params, value) = if wait_ms > 0 {
            let v = json!({"lock": lock, "wait": wait_ms});
            (v.clone(), v)
        } else {
            (json!({"lock": lock}), json!({"lock": lock}))
        };
        let wait = Duration::from_millis(wait_ms);
        let Some((invoke, answer)) = conn.call_waiting("sync.lock", params, wait) else {
            continue;
        };
        conn.record("sync.lock", value, invoke, &answer);
        // The unlock that ends what this attempt may hold, and whether its refusal proves
        // that nothing is held.
        let (released, refusal_settles) = match &answer {
            Answer::Ok(granted) => {
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..20)));
                let value = json!({"lock": lock, "token": granted["token"]});
                let unlock = json!({"lock": lock});
                let released = conn.op_retrying("sync.unlock", "sync.unlock", unlock, value);
                (released, true)
            }
            Answer::Err(_) if answer.code() == Some(LOCK_REFUSED) && wait_ms == 0 => {
                std::thread::sleep(Duration::from_millis(rng.gen_range(2..10)));
                continue;
            }
            Answer::Err(_) if answer.code() == Some(LOCK_REFUSED) => {
                let probe = json!({"lock": lock, "probe": true});
                let unlock = json!({"lock": lock});
                let released = conn.op_retrying("sync.unlock", "sync.unlock", unlock, probe);
                (released, true)
            }
            // Perhaps granted (or, for a wait, perhaps still queued).
            _ if wait_ms > 0 => (None, false),
            // Perhaps granted, perhaps still to commit: a refused unlock proves nothing.
            _ => {
                let unlock = json!({"lock": lock});
                let value = json!({"lock": lock});
                let released = conn.op_retrying("sync.unlock", "sync.unlock", unlock, value);
                (released, false)
            }
        };
        let settled = released.as_ref().is_some_and(|a| {
            matches!(a, Answer::Ok(_)) || (refusal_settles && a.code() == Some(LOCK_REFUSED))
        });
        if !settled {
            conn.reconnect();
        }
    }
    conn.close();
}

/// Publishes numbered messages to the one chaos topic.
fn publisher(mut conn: Conn, _rng: StdRng) {
    let mut s = 0;
    while producing(&conn) {
        s += 1;
        let value = json!({"p": conn.name, "s": s});
        let params = json!({"topic": TOPIC, "msg": value});
        conn.op("topic.pub", "topic.pub", params, value);
        conn.think();
    }
    conn.close();
}

/// Subscribes a pipe to the chaos topic and reads it; a new pipe (a new epoch) after each
/// lost connection. An epoch read to the end after the publishers stopped is closed with
/// `topic.end`.
fn subscriber(mut conn: Conn, _rng: StdRng) {
    'epochs: while consuming(&conn) {
        let Some(Answer::Ok(created)) = conn.op(
            "pipe.create",
            "pipe.create",
            json!({"len": 100000}),
            Value::Null,
        ) else {
            continue;
        };
        let pipe = created["pipeid"].clone();
        let sub = json!({"pipeid": pipe, "topic": TOPIC});
        if !matches!(
            conn.op("topic.sub", "topic.sub", sub, json!({"pipe": pipe})),
            Some(Answer::Ok(_))
        ) {
            continue;
        }
        loop {
            let stopping = !consuming(&conn);
            let params = json!({"pipeid": pipe, "max": 1000, "timeout": 1});
            let Some((invoke, answer)) = conn.call("pipe.read", params) else {
                continue 'epochs;
            };
            let Answer::Ok(read) = &answer else {
                conn.record("pipe.read", json!({"pipe": pipe}), invoke, &answer);
                continue 'epochs;
            };
            let msgs: Vec<Value> = read["msgs"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|m| json!([m["msg"]["msg"]["p"], m["msg"]["msg"]["s"]]))
                        .collect()
                })
                .unwrap_or_default();
            let drops = read["drops"].as_u64().unwrap_or(0);
            if !msgs.is_empty() || drops > 0 {
                let value = json!({"pipe": pipe, "msgs": msgs, "drops": drops});
                conn.record("pipe.read", value, invoke, &Answer::Ok(Value::Null));
            } else if stopping {
                let now = conn.ctx.rec.now();
                conn.record(
                    "topic.end",
                    json!({"pipe": pipe}),
                    now,
                    &Answer::Ok(Value::Null),
                );
                break 'epochs;
            }
        }
    }
    conn.close();
}
