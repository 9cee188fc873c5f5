//! task.* over real sockets: the full lifecycle, ordering, ttl, timeouts, cancellation,
//! disconnects, listings, and a concurrency check that every task runs exactly once.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use nexus_core::rpc::*;
use serde_json::{json, Value};

fn pull(c: &mut Client, prefix: &str, timeout: f64) -> Answer {
    c.call("task.pull", json!({"prefix": prefix, "timeout": timeout}))
}

#[test]
fn push_pull_result_round_trip() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "caller", "callerpw");
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "caller", "prefix": "calc", "tags": {"@task.push": true, "plan": "gold"}}),
    ));
    let mut caller = node.tcp();
    let login = expect_ok(caller.login("caller", "callerpw"));
    let mut worker = node.root();

    let push_id = caller.send(
        "task.push",
        json!({"method": "Calc.Math.add", "params": {"a": 1, "b": 2}, "prio": 3}),
    );
    let task = expect_ok(pull(&mut worker, "calc.math", 5.0));
    assert_eq!(task["path"], json!("calc.math."));
    assert_eq!(task["method"], json!("add"));
    assert_eq!(task["params"], json!({"a": 1, "b": 2}));
    assert_eq!(task["prio"], json!(3));
    assert_eq!(task["ttl"], json!(5));
    assert_eq!(task["detach"], json!(false));
    assert_eq!(task["user"], json!("caller"));
    assert_eq!(task["tags"], json!({"@task.push": true, "plan": "gold"}));
    let taskid = task["taskid"].as_str().unwrap();
    assert_eq!(taskid.len(), 36);
    assert!(taskid.starts_with(login["connid"].as_str().unwrap()));
    assert!(task["creationTime"].as_str().unwrap().ends_with('Z'));
    assert!(task["deadLine"].as_str().unwrap() > task["creationTime"].as_str().unwrap());
    // Only the connection working on the task may end or reject it.
    let mut other = node.root();
    for method in ["task.result", "task.error", "task.reject"] {
        expect_code(
            other.call(method, json!({"taskid": taskid, "result": 0})),
            ERR_INVALID_TASK,
        );
    }

    expect_ok(worker.call(
        "task.result",
        json!({"taskid": taskid, "result": {"sum": 3}}),
    ));
    let answer = caller.wait(&push_id);
    assert_eq!(answer["result"], json!({"sum": 3}));
    // One end per task.
    expect_code(
        worker.call("task.result", json!({"taskid": taskid, "result": 1})),
        ERR_INVALID_TASK,
    );
    expect_code(
        worker.call("task.error", json!({"taskid": taskid})),
        ERR_INVALID_TASK,
    );
    expect_code(
        worker.call("task.reject", json!({"taskid": taskid})),
        ERR_INVALID_TASK,
    );
    expect_code(
        worker.call("task.result", json!({"taskid": "nope", "result": 1})),
        ERR_INVALID_TASK,
    );
}

#[test]
fn worker_errors_reach_the_pusher_verbatim() {
    let node = TestNode::start();
    let mut caller = node.root();
    let mut worker = node.root();
    let push_id = caller.send("task.push", json!({"method": "svc.fail", "params": null}));
    let task = expect_ok(pull(&mut worker, "svc.", 5.0));
    expect_ok(worker.call(
        "task.error",
        json!({"taskid": task["taskid"], "code": 123, "message": "asdf", "data": {"why": "x"}}),
    ));
    let e = caller.wait(&push_id)["error"].clone();
    assert_eq!(
        e,
        json!({"code": 123, "message": "asdf", "data": {"why": "x"}})
    );
}

#[test]
fn pulls_take_highest_prio_then_oldest() {
    let node = TestNode::start();
    let mut caller = node.root();
    let mut worker = node.root();
    for (name, prio) in [
        ("low1", 0),
        ("high1", 5),
        ("low2", 0),
        ("mid", 2),
        ("high2", 5),
    ] {
        expect_ok(caller.call(
            "task.push",
            json!({"method": format!("q.{name}"), "params": {}, "prio": prio, "detach": true}),
        ));
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        let t = expect_ok(pull(&mut worker, "q", 5.0));
        order.push(t["method"].as_str().unwrap().to_string());
        expect_ok(worker.call(
            "task.result",
            json!({"taskid": t["taskid"], "result": null}),
        ));
    }
    assert_eq!(order, ["high1", "high2", "mid", "low1", "low2"]);
    // The path must match exactly: q.x. tasks are not pulled from q.
    expect_ok(caller.call(
        "task.push",
        json!({"method": "q.x.deep", "params": {}, "detach": true}),
    ));
    expect_code(pull(&mut worker, "q", 0.3), ERR_TIMEOUT);
    assert_eq!(
        expect_ok(pull(&mut worker, "q.x", 1.0))["method"],
        json!("deep")
    );
}

#[test]
fn rejects_decrement_ttl_until_expired() {
    let node = TestNode::start();
    let mut caller = node.root();
    let mut worker = node.root();
    let push_id = caller.send(
        "task.push",
        json!({"method": "r.job", "params": {}, "ttl": 3}),
    );
    let mut ttls = Vec::new();
    for _ in 0..3 {
        let t = expect_ok(pull(&mut worker, "r", 5.0));
        ttls.push(t["ttl"].as_i64().unwrap());
        expect_ok(worker.call("task.reject", json!({"taskid": t["taskid"]})));
    }
    assert_eq!(ttls, [3, 2, 1]);
    assert_eq!(
        caller.wait(&push_id)["error"]["code"],
        json!(ERR_TTL_EXPIRED)
    );
    expect_code(pull(&mut worker, "r", 0.3), ERR_TIMEOUT);
}

#[test]
fn push_and_pull_timeouts() {
    let node = TestNode::start();
    let mut caller = node.root();
    let mut worker = node.root();
    let start = Instant::now();
    expect_code(
        caller.call(
            "task.push",
            json!({"method": "t.slow", "params": {}, "timeout": 0.5}),
        ),
        ERR_TIMEOUT,
    );
    assert!(start.elapsed() >= Duration::from_millis(450));
    // The timed-out task is gone.
    expect_code(pull(&mut worker, "t", 0.3), ERR_TIMEOUT);
    // A pulled task that is not answered in time also ends with a timeout.
    let push_id = caller.send(
        "task.push",
        json!({"method": "t.slow", "params": {}, "timeout": 0.8}),
    );
    let t = expect_ok(pull(&mut worker, "t", 5.0));
    assert_eq!(caller.wait(&push_id)["error"]["code"], json!(ERR_TIMEOUT));
    expect_code(
        worker.call("task.result", json!({"taskid": t["taskid"], "result": 1})),
        ERR_INVALID_TASK,
    );
}

#[test]
fn cancel_pending_push_and_pull_by_request_id() {
    let node = TestNode::start();
    let mut c = node.root();
    let mut worker = node.root();
    let push_id = c.send("task.push", json!({"method": "c.job", "params": {}}));
    assert!(eventually(Duration::from_secs(5), || {
        expect_ok(worker.call("task.count", json!({"prefix": "c"})))["pushCount"] == json!(1)
    }));
    assert_eq!(
        expect_ok(c.call("task.cancel", json!({"id": push_id}))),
        json!({"ok": true})
    );
    assert_eq!(c.wait(&push_id)["error"]["code"], json!(ERR_CANCEL));
    expect_code(pull(&mut worker, "c", 0.3), ERR_TIMEOUT);

    let pull_id = c.send("task.pull", json!({"prefix": "c"}));
    assert!(eventually(Duration::from_secs(5), || expect_ok(
        worker.call("task.count", json!({"prefix": "c"}))
    )["pullCount"]
        == json!(1)));
    // Another connection cannot cancel it.
    expect_code(
        worker.call("task.cancel", json!({"id": pull_id})),
        ERR_INVALID_TASK,
    );
    expect_ok(c.call("task.cancel", json!({"id": pull_id})));
    assert_eq!(c.wait(&pull_id)["error"]["code"], json!(ERR_CANCEL));
    expect_code(c.call("task.cancel", json!({"id": 999})), ERR_INVALID_TASK);
    expect_code(c.call("task.cancel", json!({})), ERR_INVALID_PARAMS);

    // Clients that send the task id are accepted too.
    let push_id = c.send("task.push", json!({"method": "c.job2", "params": {}}));
    let t = expect_ok(pull(&mut worker, "c", 5.0));
    expect_ok(c.call("task.cancel", json!({"taskid": t["taskid"]})));
    assert_eq!(c.wait(&push_id)["error"]["code"], json!(ERR_CANCEL));
    expect_code(
        worker.call("task.result", json!({"taskid": t["taskid"], "result": 1})),
        ERR_INVALID_TASK,
    );
}

#[test]
fn detached_tasks_answer_at_once_and_outlive_the_pusher() {
    let node = TestNode::start();
    let mut worker = node.root();
    {
        let mut c = node.root();
        assert_eq!(
            expect_ok(c.call(
                "task.push",
                json!({"method": "d.fire", "params": 7, "detach": true})
            )),
            json!({"ok": true})
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = expect_ok(pull(&mut worker, "d", 5.0));
    assert_eq!(
        (t["params"].clone(), t["detach"].clone()),
        (json!(7), json!(true))
    );
    expect_ok(worker.call(
        "task.result",
        json!({"taskid": t["taskid"], "result": "ignored"}),
    ));
}

#[test]
fn pusher_disconnect_deletes_its_tasks() {
    let node = TestNode::start();
    let mut worker = node.root();
    let taskid;
    {
        let mut c = node.root();
        c.send("task.push", json!({"method": "p.waiting", "params": {}}));
        c.send("task.push", json!({"method": "p.working", "params": {}}));
        assert!(eventually(Duration::from_secs(5), || expect_ok(
            worker.call("task.count", json!({"prefix": "p"}))
        )["pushCount"]
            == json!(2)));
        let t = expect_ok(pull(&mut worker, "p", 5.0));
        taskid = t["taskid"].clone();
    }
    assert!(eventually(Duration::from_secs(5), || expect_ok(
        worker.call("task.count", json!({"prefix": "p"}))
    )["pushCount"]
        == json!(0)));
    expect_code(
        worker.call("task.result", json!({"taskid": taskid, "result": 1})),
        ERR_INVALID_TASK,
    );
    expect_code(pull(&mut worker, "p", 0.3), ERR_TIMEOUT);
}

#[test]
fn puller_disconnect_requeues_with_ttl_minus_one() {
    let node = TestNode::start();
    let mut caller = node.root();
    let push_id = caller.send(
        "task.push",
        json!({"method": "w.job", "params": {}, "ttl": 2}),
    );
    {
        let mut w1 = node.root();
        let t = expect_ok(pull(&mut w1, "w", 5.0));
        assert_eq!(t["ttl"], json!(2));
    }
    let mut w2 = node.root();
    let t = expect_ok(pull(&mut w2, "w", 5.0));
    assert_eq!(t["ttl"], json!(1));
    expect_ok(w2.call(
        "task.result",
        json!({"taskid": t["taskid"], "result": "second worker"}),
    ));
    assert_eq!(caller.wait(&push_id)["result"], json!("second worker"));
    // A puller lost with ttl 1 left ends the task with -32011.
    let push_id = caller.send(
        "task.push",
        json!({"method": "w.job", "params": {}, "ttl": 1}),
    );
    {
        let mut w3 = node.root();
        expect_ok(pull(&mut w3, "w", 5.0));
    }
    assert_eq!(
        caller.wait(&push_id)["error"]["code"],
        json!(ERR_TTL_EXPIRED)
    );
}

#[test]
fn validation_and_permissions() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "limited", "limitedpw");
    expect_ok(root.call("user.setTags", json!({"user": "limited", "prefix": "ok", "tags": {"@task.push": true, "@task.pull": true}})));
    let mut c = node.tcp();
    expect_ok(c.login("limited", "limitedpw"));
    expect_code(
        c.call(
            "task.push",
            json!({"method": "nope.m", "params": {}, "detach": true}),
        ),
        ERR_PERMISSION_DENIED,
    );
    expect_ok(c.call(
        "task.push",
        json!({"method": "ok.m", "params": {}, "detach": true}),
    ));
    expect_code(pull(&mut c, "nope", 0.1), ERR_PERMISSION_DENIED);
    expect_ok(pull(&mut c, "ok.", 1.0));
    expect_code(
        root.call("task.push", json!({"method": "nodots", "params": {}})),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call("task.push", json!({"method": "a..b", "params": {}})),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call("task.push", json!({"method": "@a.b", "params": {}})),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        root.call("task.push", json!({"method": "a.b"})),
        ERR_INVALID_PARAMS,
    );
    expect_code(root.call("task.pull", json!({})), ERR_INVALID_PARAMS);
    expect_code(
        c.call("task.list", json!({"prefix": ""})),
        ERR_PERMISSION_DENIED,
    );
}

#[test]
fn list_and_count_show_tasks_and_pulls() {
    let node = TestNode::start();
    let mut root = node.root();
    let mut worker = node.root();
    let worker_connid = expect_ok(worker.login("root", "root"))["connid"]
        .as_str()
        .unwrap()
        .to_string();
    expect_ok(root.call(
        "task.push",
        json!({"method": "l.a.one", "params": {"k": 1}, "prio": 4, "detach": true}),
    ));
    expect_ok(root.call(
        "task.push",
        json!({"method": "l.a.two", "params": {}, "detach": true}),
    ));
    let t = expect_ok(pull(&mut worker, "l.a", 5.0));
    assert_eq!(t["method"], json!("one"));
    worker.send("task.pull", json!({"prefix": "l.b"}));
    assert!(eventually(Duration::from_secs(5), || expect_ok(
        root.call("task.count", json!({"prefix": "l"}))
    )["pullCount"]
        == json!(1)));
    let list = expect_ok(root.call("task.list", json!({"prefix": "l"})));
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    let one = list.iter().find(|e| e["method"] == json!("one")).unwrap();
    assert_eq!(one["state"], json!("working"));
    assert_eq!(one["targetSession"], json!(worker_connid));
    assert_eq!(one["priority"], json!(4));
    assert_eq!(one["detached"], json!(true));
    assert_eq!(one["params"], json!({"k": 1}));
    let mut keys: Vec<&str> = one
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "creationTime",
            "deadline",
            "detached",
            "errCode",
            "errObject",
            "errString",
            "id",
            "method",
            "params",
            "path",
            "priority",
            "result",
            "state",
            "tags",
            "targetSession",
            "ttl",
            "user"
        ]
    );
    let two = list.iter().find(|e| e["method"] == json!("two")).unwrap();
    assert_eq!(two["state"], json!("waiting"));
    let pulling = list.iter().find(|e| e["method"] == json!("")).unwrap();
    assert_eq!(
        (pulling["path"].clone(), pulling["state"].clone()),
        (json!("l.b."), json!("waiting"))
    );
    assert_eq!(
        expect_ok(root.call("task.count", json!({"prefix": "l"}))),
        json!({"count": 3, "pushCount": 2, "pullCount": 1})
    );
    assert_eq!(
        expect_ok(root.call("task.count", json!({"prefix": "l", "subprefixes": true}))),
        json!([{"prefix": "l.a", "count": 2, "pushCount": 2, "pullCount": 0}, {"prefix": "l.b", "count": 1, "pushCount": 0, "pullCount": 1}])
    );
    assert_eq!(
        expect_ok(root.call("task.list", json!({"prefix": "l.b"})))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn many_pushers_and_workers_run_each_task_exactly_once() {
    let node = TestNode::start();
    let addr = node.server.addr(nexus_server::config::Scheme::Tcp);
    let pushers = 4;
    let per_pusher = 75;
    let workers = 4;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker_threads: Vec<_> = (0..workers)
        .map(|w| {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut c = Client::tcp(addr);
                expect_ok(c.login("root", "root"));
                let mut seen = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    match pull(&mut c, "conc", 0.5) {
                        Ok(t) => {
                            let job = t["params"]["job"].as_str().unwrap().to_string();
                            expect_ok(c.call(
                                "task.result",
                                json!({"taskid": t["taskid"], "result": {"job": job, "worker": w}}),
                            ));
                            seen.push(job);
                        }
                        Err(e) => assert_eq!(e.code, ERR_TIMEOUT),
                    }
                }
                seen
            })
        })
        .collect();
    let pusher_threads: Vec<_> = (0..pushers)
        .map(|p| {
            std::thread::spawn(move || {
                let mut c = Client::tcp(addr);
                expect_ok(c.login("root", "root"));
                // All of this pusher's tasks are in flight at once on one connection.
                let ids: Vec<(Value, String)> = (0..per_pusher)
                    .map(|i| {
                        let job = format!("p{p}-{i}");
                        (
                            c.send(
                                "task.push",
                                json!({"method": "conc.run", "params": {"job": job}}),
                            ),
                            job,
                        )
                    })
                    .collect();
                for (id, job) in ids {
                    let answer = c.wait(&id);
                    assert_eq!(
                        answer["result"]["job"],
                        json!(job),
                        "answered to the right push"
                    );
                }
            })
        })
        .collect();
    for t in pusher_threads {
        t.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for t in worker_threads {
        all.extend(t.join().unwrap());
    }
    assert_eq!(
        all.len(),
        pushers * per_pusher,
        "each task executed exactly once"
    );
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), pushers * per_pusher);
}

#[test]
fn cancel_accepts_the_request_id_under_taskid_too() {
    let node = TestNode::start();
    let mut c = node.root();
    let mut watcher = node.root();
    let push_id = c.send("task.push", json!({"method": "k.job", "params": {}}));
    assert!(eventually(Duration::from_secs(5), || {
        expect_ok(watcher.call("task.count", json!({"prefix": "k"})))["pushCount"] == json!(1)
    }));
    expect_ok(c.call("task.cancel", json!({"taskid": push_id})));
    assert_eq!(c.wait(&push_id)["error"]["code"], json!(ERR_CANCEL));
}
