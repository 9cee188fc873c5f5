//! pipe.*, topic.* and sync.* over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nexus_core::rpc::*;
use serde_json::{json, Value};

fn create_pipe(c: &mut Client, len: Option<i64>) -> String {
    let params = match len {
        Some(l) => json!({"len": l}),
        None => json!({}),
    };
    expect_ok(c.call("pipe.create", params))["pipeid"]
        .as_str()
        .unwrap()
        .to_string()
}

fn read(c: &mut Client, pipeid: &str, max: i64, timeout: f64) -> Value {
    expect_ok(c.call(
        "pipe.read",
        json!({"pipeid": pipeid, "max": max, "timeout": timeout}),
    ))
}

fn msgs(v: &Value) -> Vec<Value> {
    v["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["msg"].clone())
        .collect()
}

fn counts(v: &Value) -> Vec<u64> {
    v["msgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["count"].as_u64().unwrap())
        .collect()
}

#[test]
fn pipe_ids_are_owned_by_the_connection() {
    let node = TestNode::start();
    let mut c = node.tcp();
    let login = expect_ok(c.login("root", "root"));
    let pipeid = create_pipe(&mut c, None);
    assert_eq!(pipeid.len(), 36);
    assert!(pipeid.starts_with(login["connid"].as_str().unwrap()));
    assert!(pipeid
        .chars()
        .all(|ch| ch.is_ascii_hexdigit() && !ch.is_ascii_uppercase()));
}

#[test]
fn write_read_sequence_numbers_and_drops() {
    let node = TestNode::start();
    let mut owner = node.tcp();
    let mut other = node.tcp();
    let pipeid = create_pipe(&mut owner, Some(3));
    for i in 1..=5 {
        expect_ok(other.call("pipe.write", json!({"pipeid": pipeid, "msg": {"n": i}})));
    }
    let r = read(&mut owner, &pipeid, 2, 1.0);
    assert_eq!(msgs(&r), vec![json!({"n": 1}), json!({"n": 2})]);
    assert_eq!(counts(&r), vec![1, 2]);
    assert_eq!(
        (r["waiting"].clone(), r["drops"].clone()),
        (json!(1), json!(2))
    );
    let r = read(&mut owner, &pipeid, 10, 1.0);
    assert_eq!(counts(&r), vec![3]);
    assert_eq!(
        (r["waiting"].clone(), r["drops"].clone()),
        (json!(0), json!(0)),
        "reading resets drops"
    );
    // multi writes each element in order, and null is a valid message.
    expect_ok(other.call(
        "pipe.write",
        json!({"pipeid": pipeid, "msg": ["a", null, 3], "multi": true}),
    ));
    let r = read(&mut owner, &pipeid, 10, 1.0);
    assert_eq!(msgs(&r), vec![json!("a"), Value::Null, json!(3)]);
    assert_eq!(counts(&r), vec![6, 7, 8]);
    expect_code(
        other.call(
            "pipe.write",
            json!({"pipeid": pipeid, "msg": "x", "multi": true}),
        ),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        other.call("pipe.write", json!({"pipeid": pipeid})),
        ERR_INVALID_PARAMS,
    );
}

#[test]
fn pipe_length_is_clamped() {
    let node = TestNode::start();
    let mut c = node.tcp();
    for (len, cap) in [(0i64, 1000usize), (-5, 1000), (100_001_000, 100_000)] {
        let pipeid = create_pipe(&mut c, Some(len));
        let batch: Vec<u32> = (0..(cap as u32 + 7)).collect();
        expect_ok(c.call(
            "pipe.write",
            json!({"pipeid": pipeid, "msg": batch, "multi": true}),
        ));
        let r = read(&mut c, &pipeid, 1, 1.0);
        assert_eq!(r["waiting"], json!(cap - 1), "len {len}");
        assert_eq!(r["drops"], json!(7), "len {len}");
    }
}

#[test]
fn read_waits_for_a_write_or_times_out_empty() {
    let node = TestNode::start();
    let mut owner = node.tcp();
    let pipeid = create_pipe(&mut owner, None);
    let start = Instant::now();
    let r = read(&mut owner, &pipeid, 10, 0.5);
    assert!(start.elapsed() >= Duration::from_millis(450));
    assert_eq!(r, json!({"msgs": [], "waiting": 0, "drops": 0}));

    // A read without timeout waits; a ping on the same connection is not held up by it.
    let read_id = owner.send("pipe.read", json!({"pipeid": pipeid}));
    expect_ok(owner.call("sys.ping", json!({})));
    let mut writer = node.tcp();
    expect_ok(writer.call("pipe.write", json!({"pipeid": pipeid, "msg": "late"})));
    let r = owner.wait(&read_id);
    assert_eq!(msgs(&r["result"]), vec![json!("late")]);
}

#[test]
fn only_the_owner_reads_and_closes() {
    let node = TestNode::start();
    let mut owner = node.tcp();
    let mut other = node.tcp();
    let pipeid = create_pipe(&mut owner, None);
    expect_code(
        other.call("pipe.read", json!({"pipeid": pipeid, "timeout": 0.1})),
        ERR_INVALID_PIPE,
    );
    expect_code(
        other.call("pipe.close", json!({"pipeid": pipeid})),
        ERR_INVALID_PIPE,
    );
    expect_code(
        other.call(
            "pipe.write",
            json!({"pipeid": "0123456789abcdef0123456789abcdef0123", "msg": 1}),
        ),
        ERR_INVALID_PIPE,
    );
    expect_ok(owner.call("pipe.close", json!({"pipeid": pipeid})));
    expect_code(
        other.call("pipe.write", json!({"pipeid": pipeid, "msg": 1})),
        ERR_INVALID_PIPE,
    );
    expect_code(
        owner.call("pipe.read", json!({"pipeid": pipeid})),
        ERR_INVALID_PIPE,
    );
    expect_code(
        owner.call("pipe.close", json!({"pipeid": pipeid})),
        ERR_INVALID_PIPE,
    );
}

#[test]
fn pipes_close_with_their_connection() {
    let node = TestNode::start();
    let mut owner = node.root();
    let mut root = node.root();
    let pipeid = create_pipe(&mut owner, None);
    expect_ok(owner.call("topic.sub", json!({"pipeid": pipeid, "topic": "gone.soon"})));
    // A pending read is simply dropped with the connection.
    owner.send("pipe.read", json!({"pipeid": pipeid}));
    drop(owner);
    assert!(eventually(Duration::from_secs(5), || {
        root.call("pipe.write", json!({"pipeid": pipeid, "msg": 1}))
            .is_err()
    }));
    assert!(eventually(Duration::from_secs(5), || {
        expect_ok(root.call("topic.count", json!({"prefix": "gone"}))) == json!({"count": 0})
    }));
}

#[test]
fn topics_wildcards_envelope_and_sent() {
    let node = TestNode::start();
    let mut sub = node.root();
    let mut publisher = node.root();
    let mut pipes = Vec::new();
    for topic in ["a.b", "a.b.*", "a.*", ".*", "a.b.c", "x"] {
        let p = create_pipe(&mut sub, None);
        expect_ok(sub.call("topic.sub", json!({"pipeid": p, "topic": topic})));
        expect_ok(sub.call("topic.sub", json!({"pipeid": p, "topic": topic})));
        pipes.push((topic, p));
    }
    let sent = expect_ok(publisher.call("topic.pub", json!({"topic": "A.B", "msg": {"hello": 1}})));
    assert_eq!(sent, json!({"ok": true, "sent": 4}));
    for (topic, p) in &pipes {
        let got = read(&mut sub, p, 10, 0.2);
        if ["a.b", "a.b.*", "a.*", ".*"].contains(topic) {
            assert_eq!(
                msgs(&got),
                vec![json!({"topic": "a.b", "msg": {"hello": 1}})],
                "{topic}"
            );
        } else {
            assert!(msgs(&got).is_empty(), "{topic} must not get a.b");
        }
    }
    assert_eq!(
        expect_ok(publisher.call("topic.pub", json!({"topic": "a", "msg": 0})))["sent"],
        json!(2)
    );
    assert_eq!(
        expect_ok(publisher.call("topic.pub", json!({"topic": "zzz", "msg": 0})))["sent"],
        json!(1)
    );

    // One pipe on two overlapping patterns gets each message once.
    let both = create_pipe(&mut sub, None);
    expect_ok(sub.call("topic.sub", json!({"pipeid": both, "topic": "m.n"})));
    expect_ok(sub.call("topic.sub", json!({"pipeid": both, "topic": "m.*"})));
    expect_ok(publisher.call("topic.pub", json!({"topic": "m.n", "msg": 1})));
    assert_eq!(msgs(&read(&mut sub, &both, 10, 0.2)).len(), 1);

    expect_ok(sub.call("topic.unsub", json!({"pipeid": both, "topic": "m.n"})));
    expect_ok(sub.call("topic.unsub", json!({"pipeid": both, "topic": "m.*"})));
    assert_eq!(
        expect_ok(publisher.call("topic.pub", json!({"topic": "m.n", "msg": 1})))["sent"],
        json!(1),
        "only .* left"
    );
    expect_code(
        sub.call("topic.sub", json!({"pipeid": "nope", "topic": "a"})),
        ERR_INVALID_PIPE,
    );
    expect_code(
        sub.call("topic.unsub", json!({"pipeid": "nope", "topic": "a"})),
        ERR_INVALID_PIPE,
    );
    expect_code(
        sub.call("topic.sub", json!({"pipeid": both, "topic": "a..b"})),
        ERR_INVALID_PARAMS,
    );
    expect_code(
        publisher.call("topic.pub", json!({"topic": "a"})),
        ERR_INVALID_PARAMS,
    );
}

#[test]
fn publish_order_is_preserved_per_publisher() {
    let node = TestNode::start();
    let mut sub = node.root();
    let p = create_pipe(&mut sub, Some(10_000));
    expect_ok(sub.call("topic.sub", json!({"pipeid": p, "topic": "seq"})));
    let mut publisher = node.root();
    let n = 500;
    // Sent back to back without waiting: they run concurrently, yet arrive in order.
    let ids: Vec<Value> = (0..n)
        .map(|i| publisher.send("topic.pub", json!({"topic": "seq", "msg": i})))
        .collect();
    for id in &ids {
        assert_eq!(publisher.wait(id)["result"]["sent"], json!(1));
    }
    let mut got = Vec::new();
    while got.len() < n {
        let r = read(&mut sub, &p, 1000, 2.0);
        assert!(!msgs(&r).is_empty(), "messages missing after {}", got.len());
        got.extend(msgs(&r).into_iter().map(|m| m["msg"].as_i64().unwrap()));
    }
    assert_eq!(got, (0..n as i64).collect::<Vec<_>>());
}

#[test]
fn topic_permissions_list_and_count() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "news.reader", "readerpw");
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "news.reader", "prefix": "news", "tags": {"@topic.sub": true}}),
    ));
    let mut reader = node.tcp();
    expect_ok(reader.login("news.reader", "readerpw"));
    let p = create_pipe(&mut reader, None);
    expect_ok(reader.call("topic.sub", json!({"pipeid": p, "topic": "news.sport"})));
    expect_ok(reader.call("topic.sub", json!({"pipeid": p, "topic": "news.*"})));
    expect_code(
        reader.call("topic.sub", json!({"pipeid": p, "topic": "secret"})),
        ERR_PERMISSION_DENIED,
    );
    expect_code(
        reader.call("topic.pub", json!({"topic": "news", "msg": 1})),
        ERR_PERMISSION_DENIED,
    );
    expect_code(
        reader.call("topic.list", json!({"prefix": ""})),
        ERR_PERMISSION_DENIED,
    );
    let p2 = create_pipe(&mut root, None);
    expect_ok(root.call("topic.sub", json!({"pipeid": p2, "topic": "news.sport"})));
    assert_eq!(
        expect_ok(root.call("topic.list", json!({"prefix": "news"}))),
        json!([{"topic": "news.*", "subscribers": 1}, {"topic": "news.sport", "subscribers": 2}])
    );
    assert_eq!(
        expect_ok(root.call("topic.count", json!({"prefix": "news"}))),
        json!({"count": 2})
    );
    assert_eq!(
        expect_ok(root.call("topic.count", json!({"prefix": "", "subprefixes": true}))),
        json!([{"prefix": "news", "count": 2}])
    );
}

#[test]
fn locks_are_exclusive_and_released_with_the_owner() {
    let node = TestNode::start();
    let mut a = node.root();
    let mut b = node.root();
    let a_connid = expect_ok(a.login("root", "root"))["connid"]
        .as_str()
        .unwrap()
        .to_string();
    let first = expect_ok(a.call("sync.lock", json!({"lock": "Res.One"})));
    assert_eq!(first["ok"], json!(true));
    let first = first["token"].as_u64().expect("a fencing token");
    expect_code(
        a.call("sync.lock", json!({"lock": "res.one"})),
        ERR_LOCK_NOT_OWNED,
    );
    expect_code(
        b.call("sync.lock", json!({"lock": "res.one"})),
        ERR_LOCK_NOT_OWNED,
    );
    expect_code(
        b.call("sync.unlock", json!({"lock": "res.one"})),
        ERR_LOCK_NOT_OWNED,
    );
    let second = expect_ok(a.call("sync.lock", json!({"lock": "res.two"})));
    assert!(
        second["token"].as_u64().unwrap() > first,
        "tokens grow with every grant"
    );
    assert_eq!(
        expect_ok(b.call("sync.list", json!({"prefix": "res"}))),
        json!([{"id": "res.one", "owner": a_connid}, {"id": "res.two", "owner": a_connid}])
    );
    assert_eq!(
        expect_ok(b.call("sync.count", json!({"prefix": "res"}))),
        json!({"count": 2})
    );
    expect_ok(a.call("sync.unlock", json!({"lock": "res.one"})));
    expect_code(
        a.call("sync.unlock", json!({"lock": "res.one"})),
        ERR_LOCK_NOT_OWNED,
    );
    expect_ok(b.call("sync.lock", json!({"lock": "res.one"})));
    drop(a);
    assert!(eventually(Duration::from_secs(5), || b
        .call("sync.lock", json!({"lock": "res.two"}))
        .is_ok()));
    expect_code(
        b.call("sync.lock", json!({"lock": "a..b"})),
        ERR_INVALID_PARAMS,
    );
    let mut anon = node.tcp();
    expect_code(
        anon.call("sync.lock", json!({"lock": "res.three"})),
        ERR_PERMISSION_DENIED,
    );
}
