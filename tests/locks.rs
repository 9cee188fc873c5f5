//! `sync.lock` with `wait` (an extension) on one node, over real sockets: waits granted in
//! the order they were committed when the lock is released, a wait that times out, a
//! waiter whose connection closed never granted, and the answers that do not wait.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nexus_core::rpc::{ERR_INVALID_PARAMS, ERR_LOCK_NOT_OWNED};
use serde_json::{json, Value};

/// The waiters of `lock`, in order, as `sync.list` shows them.
fn waiting(c: &mut Client, lock: &str) -> Vec<Value> {
    let list = expect_ok(c.call("sync.list", json!({"prefix": lock})));
    list.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["id"] == json!(lock))
        .flat_map(|e| e["waiters"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The connids waiting for `lock`, in order.
fn waiters(c: &mut Client, lock: &str) -> Vec<String> {
    let w = waiting(c, lock);
    w.iter()
        .map(|w| w["connid"].as_str().unwrap().to_string())
        .collect()
}

/// The tickets of the waits queued for `lock`, in order.
fn tickets(c: &mut Client, lock: &str) -> Vec<u64> {
    let w = waiting(c, lock);
    w.iter().map(|w| w["ticket"].as_u64().unwrap()).collect()
}

fn queued(root: &mut Client, lock: &str, expected: &[&String]) {
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    let mut seen = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            seen = waiters(root, lock);
            seen == expected
        }),
        "waiters of {lock}: {seen:?}, expected {expected:?}"
    );
}

fn token(v: &Value) -> u64 {
    v["token"]
        .as_u64()
        .unwrap_or_else(|| panic!("no token in {v}"))
}

#[test]
fn waits_are_granted_in_the_order_they_were_committed() {
    let node = TestNode::start();
    let mut root = node.root();
    let mut a = node.root();
    let (mut b, b_id) = rooted(&node);
    let (mut c, c_id) = rooted(&node);
    let first = token(&expect_ok(a.call("sync.lock", json!({"lock": "w.x"}))));
    let b_req = b.send("sync.lock", json!({"lock": "w.x", "wait": 30000}));
    queued(&mut root, "w.x", &[&b_id]);
    let c_req = c.send("sync.lock", json!({"lock": "w.x", "wait": 30000}));
    queued(&mut root, "w.x", &[&b_id, &c_id]);
    let queue = tickets(&mut root, "w.x");
    assert!(queue[0] < queue[1], "{queue:?}");
    // One Lock actor holds this node's two waiters of w.x.
    let actors = &node.server.node.local.locks;
    assert_eq!(actors.running(), 1);
    // A try-lock does not jump the queue.
    expect_code(
        root.call("sync.lock", json!({"lock": "w.x"})),
        ERR_LOCK_NOT_OWNED,
    );

    expect_ok(a.call("sync.unlock", json!({"lock": "w.x"})));
    let granted_b = expect_ok(answer_of(&b.wait(&b_req)));
    assert_eq!(token(&granted_b), first + 1);
    // Each grant names the wait it answers by the ticket it was queued with.
    assert_eq!(granted_b["ticket"], json!(queue[0]), "{granted_b}");
    queued(&mut root, "w.x", &[&c_id]);
    let list = expect_ok(root.call("sync.list", json!({"prefix": "w"})));
    assert_eq!(list[0]["owner"], json!(b_id), "{list}");

    expect_ok(b.call("sync.unlock", json!({"lock": "w.x"})));
    let granted_c = expect_ok(answer_of(&c.wait(&c_req)));
    assert_eq!(token(&granted_c), first + 2);
    assert_eq!(granted_c["ticket"], json!(queue[1]), "{granted_c}");
    queued(&mut root, "w.x", &[]);
    // No waiter left here: the actor stopped.
    assert!(eventually(Duration::from_secs(5), || actors.running() == 0));
    // Two waits queued, both granted after waiting, both timed.
    let s = scrape(node.http_addr());
    assert_eq!(metric(&s, "nexus_lock_waits_total", &[]), Some(2.0));
    assert_eq!(metric(&s, "nexus_lock_wait_grants_total", &[]), Some(2.0));
    assert_eq!(metric(&s, "nexus_lock_waits_queued", &[]), Some(0.0));
    assert_eq!(wait_seconds_count(&s), 2);
}

/// How many waits `nexus_lock_wait_seconds` has observed.
fn wait_seconds_count(s: &prometheus_parse::Scrape) -> u64 {
    s.samples
        .iter()
        .find(|x| x.metric == "nexus_lock_wait_seconds")
        .map(|x| match &x.value {
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count as u64).max().unwrap_or(0)
            }
            other => panic!("not a histogram: {other:?}"),
        })
        .unwrap_or(0)
}

/// A new root connection and its connid.
fn rooted(node: &TestNode) -> (Client, String) {
    let mut c = node.tcp();
    let id = connid(&mut c, "root", ROOT_PASS);
    (c, id)
}

#[test]
fn a_wait_that_is_not_granted_in_time_answers_32006() {
    let node = TestNode::start();
    let (mut a, mut b) = (node.root(), node.root());
    expect_ok(a.call("sync.lock", json!({"lock": "w.t"})));
    let start = Instant::now();
    let e = expect_code(
        b.call("sync.lock", json!({"lock": "w.t", "wait": 400})),
        ERR_LOCK_NOT_OWNED,
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(350),
        "answered after {took:?}: {e:?}"
    );
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    // It left the queue: a release now frees the lock for anyone.
    let mut root = node.root();
    queued(&mut root, "w.t", &[]);
    let s = scrape(node.http_addr());
    assert_eq!(metric(&s, "nexus_lock_waits_total", &[]), Some(1.0));
    assert_eq!(metric(&s, "nexus_lock_wait_grants_total", &[]), Some(0.0));
    assert_eq!(wait_seconds_count(&s), 1);
    expect_ok(a.call("sync.unlock", json!({"lock": "w.t"})));
    expect_ok(root.call("sync.lock", json!({"lock": "w.t"})));
}

#[test]
fn a_waiter_whose_connection_closed_is_never_granted() {
    let node = TestNode::start();
    let (mut root, mut a) = (node.root(), node.root());
    let (mut c, c_id) = rooted(&node);
    expect_ok(a.call("sync.lock", json!({"lock": "w.c"})));
    {
        let (mut b, b_id) = rooted(&node);
        b.send("sync.lock", json!({"lock": "w.c", "wait": 30000}));
        queued(&mut root, "w.c", &[&b_id]);
        b.stream.shutdown(std::net::Shutdown::Both).unwrap();
    }
    queued(&mut root, "w.c", &[]);
    let c_req = c.send("sync.lock", json!({"lock": "w.c", "wait": 30000}));
    queued(&mut root, "w.c", &[&c_id]);
    expect_ok(a.call("sync.unlock", json!({"lock": "w.c"})));
    expect_ok(answer_of(&c.wait(&c_req)));
    let list = expect_ok(root.call("sync.list", json!({"prefix": "w"})));
    assert_eq!(list[0]["owner"], json!(c_id), "{list}");
}

#[test]
fn waits_that_cannot_queue_answer_at_once() {
    let node = TestNode::start();
    let mut a = node.root();
    // Free: granted at once, as without a wait.
    let t = token(&expect_ok(
        a.call("sync.lock", json!({"lock": "w.s", "wait": 5000})),
    ));
    // Held by this very connection: waiting for itself would never end.
    let start = Instant::now();
    expect_code(
        a.call("sync.lock", json!({"lock": "w.s", "wait": 5000})),
        ERR_LOCK_NOT_OWNED,
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    for bad in [json!(-1), json!("soon"), json!(864_000_001)] {
        expect_code(
            a.call("sync.lock", json!({"lock": "w.s", "wait": bad})),
            ERR_INVALID_PARAMS,
        );
    }
    // `wait: 0` is the 1.9 try-lock.
    expect_code(
        a.call("sync.lock", json!({"lock": "w.s", "wait": 0})),
        ERR_LOCK_NOT_OWNED,
    );
    expect_ok(a.call("sync.unlock", json!({"lock": "w.s"})));
    let again = token(&expect_ok(
        a.call("sync.lock", json!({"lock": "w.s", "wait": 0})),
    ));
    assert!(again > t);
}

/// Three joined nodes, all voters: with a learner still catching up, one node down would
/// be a lost majority.
fn three_voters(root: &std::path::Path) -> Vec<common::cluster::Proc> {
    let nodes = common::cluster::three_joined(root, &[]);
    common::cluster::wait_voters(&nodes[0], 3);
    nodes
}

/// A root connection over TCP to `node`, and its connid.
fn rooted_on(node: &common::cluster::Proc) -> (Client, String) {
    let mut c = Client::tcp(format!("127.0.0.1:{}", node.tcp).parse().unwrap());
    let id = connid(&mut c, "root", ROOT_PASS);
    (c, id)
}

/// Three nodes: waits from different nodes are granted in the order they were committed;
/// the holder's node killed with -9 passes the lock to the first waiter once the node is
/// declared down.
#[test]
fn waits_across_three_nodes_are_granted_in_order_and_survive_the_holders_node() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_voters(root.path());
    // The holder on a follower (killing the leader would also cost an election, during
    // which the others may fence their clients), the waiters on the two other nodes.
    let leader = common::cluster::leader_of(&nodes);
    let holder_node = (leader + 1) % 3;
    let (b_node, c_node) = (leader, (leader + 2) % 3);
    let (mut a, _) = rooted_on(&nodes[holder_node]);
    let (mut b, b_id) = rooted_on(&nodes[b_node]);
    let (mut c, c_id) = rooted_on(&nodes[c_node]);
    let mut watch = nodes[c_node].root();
    let first = token(&expect_ok(a.call("sync.lock", json!({"lock": "w.n"}))));
    let b_req = b.send("sync.lock", json!({"lock": "w.n", "wait": 60000}));
    queued(&mut watch, "w.n", &[&b_id]);
    let c_req = c.send("sync.lock", json!({"lock": "w.n", "wait": 60000}));
    queued(&mut watch, "w.n", &[&b_id, &c_id]);

    // The holder's node dies: the first waiter gets the lock once it is declared down
    // (--node-down-after-ms, 2.5 s).
    let killed = Instant::now();
    nodes[holder_node].kill9();
    let granted = expect_ok(answer_of(&b.wait(&b_req)));
    let took = killed.elapsed();
    assert!(token(&granted) > first, "{granted}");
    assert!(
        took < Duration::from_secs(20),
        "granted {took:?} after the kill"
    );
    queued(&mut watch, "w.n", &[&c_id]);
    expect_ok(b.call("sync.unlock", json!({"lock": "w.n"})));
    let granted_c = expect_ok(answer_of(&c.wait(&c_req)));
    assert!(token(&granted_c) > token(&granted));
}

/// Three nodes: a waiter's node killed with -9 takes its wait out of the queue once the
/// node is declared down; the release then goes to the next live waiter, and no token is
/// spent on the dead one.
#[test]
fn a_waiter_on_a_killed_node_is_never_granted_on_three_nodes() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_voters(root.path());
    // The holder on the leader, the doomed waiter first in the queue on a follower (killing
    // a follower costs no election), the live waiter on the other follower.
    let leader = common::cluster::leader_of(&nodes);
    let (doomed_node, c_node) = ((leader + 1) % 3, (leader + 2) % 3);
    let (mut a, _) = rooted_on(&nodes[leader]);
    let (mut b, b_id) = rooted_on(&nodes[doomed_node]);
    let (mut c, c_id) = rooted_on(&nodes[c_node]);
    let mut watch = nodes[leader].root();
    let first = token(&expect_ok(a.call("sync.lock", json!({"lock": "w.k"}))));
    b.send("sync.lock", json!({"lock": "w.k", "wait": 60000}));
    queued(&mut watch, "w.k", &[&b_id]);
    let c_req = c.send("sync.lock", json!({"lock": "w.k", "wait": 60000}));
    queued(&mut watch, "w.k", &[&b_id, &c_id]);

    nodes[doomed_node].kill9();
    // Declared down (--node-down-after-ms): its wait leaves the queue.
    queued(&mut watch, "w.k", &[&c_id]);
    expect_ok(a.call("sync.unlock", json!({"lock": "w.k"})));
    let granted = expect_ok(answer_of(&c.wait(&c_req)));
    assert_eq!(token(&granted), first + 1, "{granted}");
    let list = expect_ok(watch.call("sync.list", json!({"prefix": "w"})));
    assert_eq!(list[0]["owner"], json!(c_id), "{list}");
}
