//! Session administration, node listing, login plugins and hooks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nexus_core::rpc::*;
use serde_json::{json, Value};

#[test]
fn session_list_count_kick_reload() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "ops.a", "opsapw");
    create_user(&mut root, "ops.b", "opsbpw");
    let mut a1 = node.tcp();
    let a1_id = connid(&mut a1, "ops.a", "opsapw");
    let mut a2 = node.tcp();
    connid(&mut a2, "ops.a", "opsapw");
    let mut b = node.tcp();
    let b_id = connid(&mut b, "ops.b", "opsbpw");

    let list = expect_ok(root.call("sys.session.list", json!({"prefix": "ops"})));
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(
        (list[0]["user"].clone(), list[0]["n"].clone()),
        (json!("ops.a"), json!(2))
    );
    let s = list[1]["sessions"][0].clone();
    assert_eq!(s["connid"], json!(b_id));
    assert_eq!(s["protocol"], json!("tcp"));
    assert_eq!(s["nodeid"], json!(&b_id[..8]));
    assert!(s["remoteAddress"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(s["creationTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        expect_ok(root.call("sys.session.count", json!({"prefix": "ops"}))),
        json!({"count": 3})
    );
    assert_eq!(
        expect_ok(root.call(
            "sys.session.count",
            json!({"prefix": "ops", "subprefixes": true})
        )),
        json!([{"prefix": "ops.a", "count": 2}, {"prefix": "ops.b", "count": 1}])
    );
    expect_code(
        b.call("sys.session.list", json!({"prefix": ""})),
        ERR_PERMISSION_DENIED,
    );

    // Kick needs a connid prefix of 16+ chars and permission on the session's user.
    expect_code(
        root.call("sys.session.kick", json!({"connid": &b_id[..8]})),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        b.call("sys.session.kick", json!({"connid": a1_id})),
        ERR_PERMISSION_DENIED,
    );
    assert_eq!(
        expect_ok(root.call("sys.session.kick", json!({"connid": a1_id}))),
        json!({"kicked": 1})
    );
    assert!(
        a1.closed_within(Duration::from_secs(5)),
        "kicked session closed"
    );
    expect_ok(a2.call("sys.ping", json!({})));
    assert!(eventually(Duration::from_secs(5), || expect_ok(
        root.call("sys.session.count", json!({"prefix": "ops"}))
    ) == json!({"count": 2})));
    assert_eq!(
        expect_ok(root.call("sys.session.kick", json!({"connid": "ffffffffffffffff"}))),
        json!({"kicked": 0})
    );

    // Reload makes a session pick up changed tags without its own sys.reload.
    expect_code(
        b.call("user.count", json!({"prefix": ""})),
        ERR_PERMISSION_DENIED,
    );
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "ops.b", "prefix": ".", "tags": {"@user.count": true}}),
    ));
    assert_eq!(
        expect_ok(root.call("sys.session.reload", json!({"connid": b_id}))),
        json!({"reloaded": 1})
    );
    assert!(eventually(Duration::from_secs(5), || b
        .call("user.count", json!({"prefix": ""}))
        .is_ok()));
}

#[test]
fn websocket_sessions_report_their_protocol() {
    let node = TestNode::start();
    let mut root = node.root();
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/", node.http_addr())).unwrap();
    ws.send(tungstenite::Message::text(
        r#"{"id":1,"method":"sys.login","params":{"user":"root","pass":"root"}}"#,
    ))
    .unwrap();
    let _ = ws.read().unwrap();
    let list = expect_ok(root.call("sys.session.list", json!({"prefix": "root"})));
    let mut protocols: Vec<String> = list[0]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["protocol"].as_str().unwrap().to_string())
        .collect();
    protocols.sort();
    assert_eq!(protocols, ["tcp", "ws"]);
}

#[test]
fn node_list_describes_this_node() {
    let node = TestNode::start();
    let mut root = node.root();
    let me = expect_ok(root.login("root", "root"));
    // A connection counts once the node has taken it in, a moment after the connect.
    let _other = node.tcp();
    let mut nodes = Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            nodes = expect_ok(root.call("sys.node.list", json!({})));
            nodes[0]["clients"].as_u64().unwrap() >= 2
        }),
        "{nodes}"
    );
    let n = &nodes.as_array().unwrap()[0];
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(n["id"], json!(&me["connid"].as_str().unwrap()[..8]));
    assert_eq!(n["version"], json!(env!("CARGO_PKG_VERSION")));
    assert!(n["load"]["load1"].is_number() && n["load"]["load15"].is_number());
    let listening: Vec<String> = n["listening"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(listening.contains(&format!(
        "tcp://{}",
        node.server.addr(nexus_server::config::Scheme::Tcp)
    )));
    assert_eq!(
        expect_ok(root.call("sys.node.list", json!({"skip": 1}))),
        json!([])
    );
    expect_code(
        node.tcp().call("sys.node.list", json!({})),
        ERR_PERMISSION_DENIED,
    );
}

#[test]
fn login_plugin_through_a_worker() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "tok.user", "tokuserpw");
    expect_ok(root.call("user.setTags", json!({"user": "tok.user", "prefix": "app", "tags": {"@task.push": true, "@task.pull": true}})));
    let mut worker = node.root();
    let mut c = node.tcp();
    let login_id = c.send("sys.login", json!({"method": "token", "token": "s3cret"}));
    let t = expect_ok(worker.call(
        "task.pull",
        json!({"prefix": "sys.login.token", "timeout": 5}),
    ));
    assert_eq!(t["method"], json!("login"));
    assert_eq!(t["params"], json!({"method": "token", "token": "s3cret"}));
    expect_ok(worker.call("task.result", json!({
        "taskid": t["taskid"],
        "result": {"user": "tok.user", "tags": {"app": {"@task.push": true}}, "metadata": {"plan": "pro"}}
    })));
    let r = c.wait(&login_id);
    assert_eq!(r["result"]["user"], json!("tok.user"));
    assert_eq!(r["result"]["metadata"], json!({"plan": "pro"}));
    // The mask keeps only tags present, and equal, in it.
    assert_eq!(r["result"]["tags"], json!({"app": {"@task.push": true}}));
    expect_ok(c.call(
        "task.push",
        json!({"method": "app.x", "params": {}, "detach": true}),
    ));
    expect_code(
        c.call("task.pull", json!({"prefix": "app", "timeout": 0.1})),
        ERR_PERMISSION_DENIED,
    );

    // A worker error refuses the login.
    let mut d = node.tcp();
    let login_id = d.send("sys.login", json!({"method": "token", "token": "bad"}));
    let t = expect_ok(worker.call(
        "task.pull",
        json!({"prefix": "sys.login.token", "timeout": 5}),
    ));
    expect_ok(worker.call(
        "task.error",
        json!({"taskid": t["taskid"], "code": 1, "message": "bad token"}),
    ));
    assert_eq!(
        d.wait(&login_id)["error"]["code"],
        json!(ERR_PERMISSION_DENIED)
    );
}

#[test]
fn login_plugin_without_worker_is_refused_after_its_timeout() {
    // 10 s in production; 1.5 s here (a test-only flag).
    let node = TestNode::start_with(&["--test-login-plugin-timeout-ms", "1500"]);
    let mut c = node.tcp();
    let start = Instant::now();
    expect_code(
        c.call("sys.login", json!({"method": "nobodyhome", "x": 1})),
        ERR_PERMISSION_DENIED,
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(9),
        "refused after {took:?}"
    );
    let mut root = node.root();
    assert_eq!(
        expect_ok(root.call("task.count", json!({"prefix": "sys.login"})))["count"],
        json!(0),
        "no task left behind"
    );
}

#[test]
fn hooks_publish_task_and_user_events() {
    let node = TestNode::start();
    let mut watcher = node.root();
    let mut actor = node.root();
    let mut worker = node.root();
    let pipe = expect_ok(watcher.call("pipe.create", json!({})))["pipeid"]
        .as_str()
        .unwrap()
        .to_string();
    expect_ok(watcher.call("topic.sub", json!({"pipeid": pipe, "topic": "hook.*"})));

    let push = actor.send(
        "task.push",
        json!({"method": "hk.svc.do", "params": {"secret": "p"}}),
    );
    let t = expect_ok(worker.call("task.pull", json!({"prefix": "hk.svc", "timeout": 5})));
    expect_ok(worker.call("task.result", json!({"taskid": t["taskid"], "result": 1})));
    actor.wait(&push);
    create_user(&mut actor, "hooked", "hookedpw");
    expect_ok(actor.call(
        "user.setPass",
        json!({"user": "hooked", "pass": "newsecretpw"}),
    ));

    let mut events: Vec<Value> = Vec::new();
    assert!(eventually(Duration::from_secs(5), || {
        let r = expect_ok(watcher.call(
            "pipe.read",
            json!({"pipeid": pipe, "max": 100, "timeout": 0.2}),
        ));
        events.extend(
            r["msgs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["msg"].clone()),
        );
        events.len() >= 5
    }));
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap().to_string(),
                e["msg"]["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("hook.task.hk.svc.do.root".to_string(), "push".to_string()),
            ("hook.task.hk.svc.do.root".to_string(), "pull".to_string()),
            ("hook.task.hk.svc.do.root".to_string(), "result".to_string()),
            ("hook.user.hooked.root".to_string(), "create".to_string()),
            ("hook.user.hooked.root".to_string(), "setPass".to_string()),
        ]
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(
        !all.contains("hookedpw") && !all.contains("newsecretpw") && !all.contains("scrypt"),
        "{all}"
    );
    assert!(!all.contains("\"secret\""), "task params stay out of hooks");

    // Narrower subscriptions see only their part.
    let users_only = expect_ok(watcher.call("pipe.create", json!({})))["pipeid"]
        .as_str()
        .unwrap()
        .to_string();
    expect_ok(watcher.call(
        "topic.sub",
        json!({"pipeid": users_only, "topic": "hook.user.*"}),
    ));
    expect_ok(actor.call(
        "task.push",
        json!({"method": "hk.svc.again", "params": {}, "detach": true}),
    ));
    expect_ok(actor.call(
        "user.setDisabled",
        json!({"user": "hooked", "disabled": true}),
    ));
    let r = expect_ok(watcher.call(
        "pipe.read",
        json!({"pipeid": users_only, "max": 10, "timeout": 2}),
    ));
    let msgs = r["msgs"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["msg"]["msg"]["action"], json!("setDisabled"));
}

#[test]
fn login_methods_may_be_dotted_paths() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "oauth.user", "oauthpw");
    let mut worker = node.root();
    let mut c = node.tcp();
    let login_id = c.send(
        "sys.login",
        json!({"method": "oauth.google", "code": "abc"}),
    );
    let t = expect_ok(worker.call(
        "task.pull",
        json!({"prefix": "sys.login.oauth.google", "timeout": 5}),
    ));
    assert_eq!(t["method"], json!("login"));
    expect_ok(worker.call(
        "task.result",
        json!({"taskid": t["taskid"], "result": {"user": "oauth.user"}}),
    ));
    assert_eq!(c.wait(&login_id)["result"]["user"], json!("oauth.user"));
}
