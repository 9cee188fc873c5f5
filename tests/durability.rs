//! Durability and process behaviour: kill -9 and restart, snapshots, clean SIGTERM, the
//! first-boot root password, group commit — against the real `nexus` binary where it matters.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nexus_core::rpc::*;
use nexus_server::config::Scheme;
use nexus_server::server::Background;
use serde_json::json;

struct Proc {
    child: Child,
    tcp: SocketAddr,
}

fn spawn_node(dir: &std::path::Path, extra: &[&str]) -> Proc {
    let port = free_port();
    let tcp: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args([
            "serve",
            "--data-dir",
            dir.to_str().unwrap(),
            "-l",
            &format!("tcp://{tcp}"),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(tcp).is_err() {
        assert!(Instant::now() < deadline, "node did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    Proc { child, tcp }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

#[test]
fn acknowledged_users_tags_and_passwords_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(dir.path(), &["--root-password", "first-secret"]);
    let mut root = Client::tcp(node.tcp);
    expect_code(root.login("root", "root"), ERR_PERMISSION_DENIED);
    expect_ok(root.login("root", "first-secret"));
    for i in 0..20 {
        create_user(&mut root, &format!("keep.u{i}"), "initialpw");
    }
    expect_ok(root.call(
        "user.setTags",
        json!({"user": "keep.u3", "prefix": "app", "tags": {"@task.push": true, "n": 3}}),
    ));
    expect_ok(root.call(
        "user.setPass",
        json!({"user": "keep.u4", "pass": "changedpw"}),
    ));
    expect_ok(root.call(
        "user.setMaxSessions",
        json!({"user": "keep.u5", "maxsessions": 1}),
    ));
    expect_ok(root.call("user.delete", json!({"user": "keep.u6"})));
    let mut u5 = Client::tcp(node.tcp);
    expect_ok(u5.login("keep.u5", "initialpw"));
    node.kill9();

    // The first-boot password flag no longer applies: the cluster exists.
    let node = spawn_node(dir.path(), &["--root-password", "ignored-now"]);
    let mut root = Client::tcp(node.tcp);
    expect_ok(root.login("root", "first-secret"));
    assert_eq!(
        expect_ok(root.call("user.count", json!({"prefix": "keep"}))),
        json!({"count": 19})
    );
    assert_eq!(
        expect_ok(root.call("user.getTags", json!({"user": "keep.u3"}))),
        json!({"tags": {"app": {"@task.push": true, "n": 3}}})
    );
    let mut c = Client::tcp(node.tcp);
    expect_code(c.login("keep.u4", "initialpw"), ERR_PERMISSION_DENIED);
    expect_ok(c.login("keep.u4", "changedpw"));
    expect_code(c.login("keep.u6", "initialpw"), ERR_PERMISSION_DENIED);
    // The session keep.u5 held in the killed process is gone, so its one slot is free.
    expect_ok(Client::tcp(node.tcp).login("keep.u5", "initialpw"));
}

#[test]
fn sigterm_closes_sessions_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn_node(dir.path(), &[]);
    let mut c = Client::tcp(node.tcp);
    expect_ok(c.login("root", "root"));
    create_user(&mut c, "before.term", "termpw");
    let status = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        c.closed_within(Duration::from_secs(10)),
        "session closed on shutdown"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = node.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "node did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit:?}");
    drop(node);
    let node = spawn_node(dir.path(), &[]);
    expect_ok(Client::tcp(node.tcp).login("before.term", "termpw"));
}

#[test]
fn version_flag_prints_program_version_and_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!(
            "nexus {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            git_commit()
        )
    );
}

#[test]
fn state_is_restored_from_snapshot_plus_log() {
    let dir = tempfile::tempdir().unwrap();
    let start = || Background::start(args_for(dir.path(), &["--snapshot-every", "7"])).unwrap();
    let server = start();
    let mut root = Client::tcp(server.addr(Scheme::Tcp));
    expect_ok(root.login("root", "root"));
    for i in 0..25 {
        create_user(&mut root, &format!("snap.u{i}"), "snappass");
    }
    assert!(snapshots_written(&server) >= 2);
    drop(root);
    server.stop();

    let server = start();
    let mut root = Client::tcp(server.addr(Scheme::Tcp));
    expect_ok(root.login("root", "root"));
    assert_eq!(
        expect_ok(root.call("user.count", json!({"prefix": "snap"}))),
        json!({"count": 25})
    );
    expect_ok(Client::tcp(server.addr(Scheme::Tcp)).login("snap.u24", "snappass"));
}

fn snapshots_written(server: &Background) -> u64 {
    let stats = &server.node.replica.raft.stats;
    stats.snapshots.load(std::sync::atomic::Ordering::Relaxed)
}

/// Snapshots taken while a node holds a large state and applies `writes` small commands.
fn snapshots_during_small_writes(every: &str, log_percent: &str, writes: usize) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--snapshot-every",
        every,
        "--snapshot-log-percent",
        log_percent,
    ];
    let server = Background::start(args_for(dir.path(), &args)).unwrap();
    let mut root = Client::tcp(server.addr(Scheme::Tcp));
    expect_ok(root.login("root", "root"));
    // About 2 MB of state: 100 detached tasks of 20 KB that nobody pulls.
    let big = "x".repeat(20_000);
    for _ in 0..100 {
        expect_ok(root.call(
            "task.push",
            json!({"method": "deep.queue.m", "params": big, "detach": true}),
        ));
    }
    let before = snapshots_written(&server);
    for _ in 0..writes / 2 {
        expect_ok(root.call("sync.lock", json!({"lock": "small"})));
        expect_ok(root.call("sync.unlock", json!({"lock": "small"})));
    }
    let taken = snapshots_written(&server) - before;
    drop(root);
    server.stop();
    taken
}

#[test]
fn a_large_state_is_not_rewritten_every_few_small_commands() {
    // Counting entries only, 800 small commands would rewrite the 2 MB state over and
    // over; with the log measured against the state, at most the snapshot already due
    // (or under way) when the small writes start is taken.
    let by_entries = snapshots_during_small_writes("50", "0", 800);
    assert!(by_entries >= 4, "control: {by_entries} snapshots");
    let by_size = snapshots_during_small_writes("50", "100", 800);
    // But snapshots are never more than 20 x --snapshot-every entries apart: 1600 small
    // commands at a cap of 200 entries take several.
    let capped = snapshots_during_small_writes("10", "100", 1600);
    eprintln!(
        "snapshots during 800 small commands: {by_entries} counting entries, {by_size} by size; 1600 with the cap at 200 entries: {capped}"
    );
    assert!(
        by_size <= 2,
        "{by_size} snapshots of a 2 MB state for ~100 KB of log"
    );
    assert!(
        capped >= 3,
        "{capped} snapshots in 1600 commands with a cap of 200"
    );
}

#[test]
fn concurrent_proposals_share_fsyncs() {
    let node = TestNode::start();
    let mut root = node.root();
    create_user(&mut root, "busy", "busypass");
    let stats = &node.server.node.replica.raft.stats;
    let writes_before = stats
        .synced_writes
        .load(std::sync::atomic::Ordering::Relaxed);
    let n = 400;
    let ids: Vec<_> = (0..n)
        .map(|i| {
            root.send(
                "user.setTags",
                json!({"user": "busy", "prefix": format!("p{i}"), "tags": {"i": i}}),
            )
        })
        .collect();
    for id in &ids {
        assert_eq!(root.wait(id)["result"], json!({"ok": true}));
    }
    let writes = stats
        .synced_writes
        .load(std::sync::atomic::Ordering::Relaxed)
        - writes_before;
    assert!(
        writes < n / 4,
        "{n} proposals took {writes} fsyncs: no group commit"
    );
    let tags = expect_ok(root.call("user.getTags", json!({"user": "busy"})));
    assert_eq!(tags["tags"].as_object().unwrap().len(), n as usize);
}

#[test]
fn detached_tasks_survive_kill_9_and_state_of_dead_connections_is_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_node(dir.path(), &[]);
    let mut c = Client::tcp(node.tcp);
    expect_ok(c.login("root", "root"));
    for i in 0..10 {
        expect_ok(c.call(
            "task.push",
            json!({"method": "durable.job", "params": {"i": i}, "prio": i, "detach": true}),
        ));
    }
    // Non-detached work, a pending pull and a lock belong to a connection that dies.
    c.send(
        "task.push",
        json!({"method": "durable.owned", "params": {}}),
    );
    c.send("task.pull", json!({"prefix": "durable.nothing"}));
    expect_ok(c.call("sync.lock", json!({"lock": "durable.lock"})));
    let pipe = expect_ok(c.call("pipe.create", json!({})))["pipeid"].clone();
    expect_ok(c.call(
        "topic.sub",
        json!({"pipeid": pipe, "topic": "durable.topic"}),
    ));
    assert_eq!(
        expect_ok(c.call("task.count", json!({"prefix": "durable"})))["count"],
        json!(12)
    );
    node.kill9();

    let node = spawn_node(dir.path(), &[]);
    let mut w = Client::tcp(node.tcp);
    expect_ok(w.login("root", "root"));
    assert_eq!(
        expect_ok(w.call("task.count", json!({"prefix": "durable"}))),
        json!({"count": 10, "pushCount": 10, "pullCount": 0})
    );
    expect_ok(w.call("sync.lock", json!({"lock": "durable.lock"})));
    assert_eq!(
        expect_ok(w.call("topic.count", json!({"prefix": "durable"}))),
        json!({"count": 0})
    );
    let mut got = Vec::new();
    for _ in 0..10 {
        let t = expect_ok(w.call("task.pull", json!({"prefix": "durable", "timeout": 5})));
        got.push(t["params"]["i"].as_i64().unwrap());
        expect_ok(w.call(
            "task.result",
            json!({"taskid": t["taskid"], "result": null}),
        ));
    }
    assert_eq!(
        got,
        (0..10).rev().collect::<Vec<_>>(),
        "highest prio first, all there"
    );
}
