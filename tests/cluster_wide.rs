//! Cluster-wide behaviour over real `nexus serve` processes on loopback: a client cannot
//! tell which node it is connected to.

mod common;

use std::time::Duration;

use common::cluster::{three_joined, wait_voters, Proc};
use common::{expect_code, expect_ok, Client};
use serde_json::{json, Value};

/// Reads from `pipeid` through `c` until `n` messages arrived (or 20 s passed).
fn read_n(c: &mut Client, pipeid: &Value, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < n && std::time::Instant::now() < deadline {
        let r = expect_ok(c.call(
            "pipe.read",
            json!({"pipeid": pipeid, "max": 1000, "timeout": 1}),
        ));
        assert_eq!(r["drops"], json!(0), "nothing dropped");
        got.extend(r["msgs"].as_array().unwrap().iter().cloned());
    }
    got
}

fn three(root: &std::path::Path) -> Vec<Proc> {
    let nodes = three_joined(root, &[]);
    wait_voters(&nodes[0], 3);
    nodes
}

#[test]
fn a_pipe_on_one_node_is_written_from_the_others_in_order_per_writer() {
    let root = tempfile::tempdir().unwrap();
    let nodes = three(root.path());
    let (mut a, mut b, mut c) = (nodes[0].root(), nodes[1].root(), nodes[2].root());
    let pipeid = expect_ok(b.call("pipe.create", json!({"len": 1000})))["pipeid"].clone();
    // Two remote writers (and the owner's node itself) interleave; each keeps its order.
    for i in 0..100 {
        expect_ok(a.call(
            "pipe.write",
            json!({"pipeid": pipeid, "msg": {"w": "a", "i": i}}),
        ));
        expect_ok(c.call(
            "pipe.write",
            json!({"pipeid": pipeid, "msg": {"w": "c", "i": i}}),
        ));
    }
    let multi: Vec<Value> = (100..110).map(|i| json!({"w": "c", "i": i})).collect();
    expect_ok(c.call(
        "pipe.write",
        json!({"pipeid": pipeid, "msg": multi, "multi": true}),
    ));
    let msgs = read_n(&mut b, &pipeid, 210);
    assert_eq!(msgs.len(), 210);
    for writer in ["a", "c"] {
        let seq: Vec<i64> = msgs
            .iter()
            .filter(|m| m["msg"]["w"] == json!(writer))
            .map(|m| m["msg"]["i"].as_i64().unwrap())
            .collect();
        let n = if writer == "a" { 100 } else { 110 };
        assert_eq!(
            seq,
            (0..n).collect::<Vec<i64>>(),
            "writer {writer} in order"
        );
    }
    let counts: Vec<u64> = msgs.iter().map(|m| m["count"].as_u64().unwrap()).collect();
    assert_eq!(
        counts,
        (1..=210).collect::<Vec<u64>>(),
        "one sequence per pipe"
    );

    // A pipe id of a live node that does not exist, and one of no node at all.
    let bogus = format!(
        "{}ffffffffffffffffffffffff",
        &pipeid.as_str().unwrap()[..16]
    );
    expect_code(
        a.call("pipe.write", json!({"pipeid": bogus, "msg": 1})),
        -32003,
    );
    expect_code(
        a.call(
            "pipe.write",
            json!({"pipeid": "0000000000000000ffff", "msg": 1}),
        ),
        -32003,
    );
    // Subscribing a remote pipe checks it with its node.
    expect_ok(a.call("topic.sub", json!({"pipeid": pipeid, "topic": "t"})));
    expect_code(
        a.call("topic.sub", json!({"pipeid": bogus, "topic": "t"})),
        -32003,
    );
    // After the owner closes it, remote writes fail.
    expect_ok(b.call("pipe.close", json!({"pipeid": pipeid})));
    expect_code(
        c.call("pipe.write", json!({"pipeid": pipeid, "msg": 1})),
        -32003,
    );
}

#[test]
fn a_publish_reaches_subscribers_on_every_node_in_order() {
    let root = tempfile::tempdir().unwrap();
    let nodes = three(root.path());
    let mut clients: Vec<Client> = nodes.iter().map(Proc::root).collect();
    let mut pipes = Vec::new();
    for c in clients.iter_mut() {
        let p = expect_ok(c.call("pipe.create", json!({})))["pipeid"].clone();
        expect_ok(c.call("topic.sub", json!({"pipeid": p, "topic": "news.*"})));
        pipes.push(p);
    }
    // A fourth pipe on B subscribed through A (remote subscription of a remote pipe).
    let extra = expect_ok(clients[1].call("pipe.create", json!({})))["pipeid"].clone();
    expect_ok(clients[0].call("topic.sub", json!({"pipeid": extra, "topic": "news"})));
    // Every node sees the subscriptions before publishing (topic.list reads linearly).
    for c in clients.iter_mut() {
        let n = expect_ok(c.call("topic.list", json!({"prefix": ""})));
        assert_eq!(n.as_array().unwrap().len(), 2, "{n}");
    }
    for i in 0..200 {
        let r = expect_ok(clients[0].call("topic.pub", json!({"topic": "news", "msg": {"i": i}})));
        assert_eq!(r["sent"], json!(4), "sent counts the pipes on every node");
    }
    // A publish from C reaches A's pipe too.
    let r = expect_ok(clients[2].call("topic.pub", json!({"topic": "news.x", "msg": "from c"})));
    assert_eq!(r["sent"], json!(3), "news.x: the three news.* pipes");
    for (k, p) in pipes.iter().enumerate() {
        let msgs = read_n(&mut clients[k], p, 201);
        assert_eq!(msgs.len(), 201, "pipe on node {k}");
        // Order holds per publisher (A's and C's publishes travel on different streams).
        let seq: Vec<i64> = msgs
            .iter()
            .filter(|m| m["msg"]["topic"] == json!("news"))
            .map(|m| m["msg"]["msg"]["i"].as_i64().unwrap())
            .collect();
        assert_eq!(seq, (0..200).collect::<Vec<i64>>(), "in order on node {k}");
        let from_c: Vec<&Value> = msgs
            .iter()
            .filter(|m| m["msg"]["topic"] == json!("news.x"))
            .collect();
        assert_eq!(from_c.len(), 1);
        assert_eq!(from_c[0]["msg"]["msg"], json!("from c"));
    }
    let msgs = read_n(&mut clients[1], &extra, 200);
    assert_eq!(msgs.len(), 200);
    // Nothing more arrives (no duplicates).
    for (k, p) in pipes.iter().enumerate() {
        let r = expect_ok(clients[k].call("pipe.read", json!({"pipeid": p, "timeout": 0.3})));
        assert_eq!(r["msgs"], json!([]), "no duplicates on node {k}");
    }
}
