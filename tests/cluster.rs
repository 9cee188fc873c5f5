//! Multi-node clusters of real `nexus serve` processes on loopback: formation, consistency
//! across nodes, leader loss, catch-up, authentication of peers.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{
    leader_of, secret_file, three_joined, three_joined_each, unread_bytes_at, wait_voters, Proc,
};
use common::{
    eventually, expect_code, expect_ok, free_port, http_request_to, metric, scrape, Client,
};
use serde_json::json;

#[test]
fn three_nodes_join_and_reads_follow_writes_across_nodes() {
    let root = tempfile::tempdir().unwrap();
    let nodes = three_joined(root.path(), &[]);
    let list = wait_voters(&nodes[2], 3);
    for entry in list.as_array().unwrap() {
        for field in [
            "id",
            "version",
            "clients",
            "load",
            "listening",
            "raftId",
            "cluster",
            "status",
        ] {
            assert!(entry.get(field).is_some(), "{field} missing in {entry}");
        }
    }
    let (mut a, mut b, mut c) = (nodes[0].root(), nodes[1].root(), nodes[2].root());
    // A user created on A logs in on C at once; an old password is refused on B right
    // after setPass was acknowledged on A.
    for i in 0..5 {
        let user = format!("alice{i}");
        expect_ok(a.call("user.create", json!({"user": user, "pass": "first"})));
        let mut on_c = Client::tcp(format!("127.0.0.1:{}", nodes[2].tcp).parse().unwrap());
        expect_ok(on_c.login(&user, "first"));
        expect_ok(a.call("user.setPass", json!({"user": user, "pass": "second"})));
        let mut on_b = Client::tcp(format!("127.0.0.1:{}", nodes[1].tcp).parse().unwrap());
        expect_code(on_b.login(&user, "first"), -32010);
        expect_ok(on_b.login(&user, "second"));
    }
    // Writes through followers are forwarded to the leader.
    expect_ok(b.call("user.create", json!({"user": "bob", "pass": "secret"})));
    expect_ok(c.call("user.create", json!({"user": "carol", "pass": "secret"})));
    for cl in [&mut a, &mut b, &mut c] {
        let n = expect_ok(cl.call("user.count", json!({"prefix": ""})));
        assert_eq!(n["count"], json!(8), "root, 5 alices, bob, carol");
    }
    cluster_metrics_agree(&nodes);
}

/// Every node's `/metrics` (health listener) shows the same three voters and leader, one
/// leader among them, its two peer links up, traffic both ways, and 3 live members.
fn cluster_metrics_agree(nodes: &[Proc]) {
    let addr = |n: &Proc| format!("127.0.0.1:{}", n.health).parse().unwrap();
    let ids: Vec<u64> = nodes.iter().map(Proc::raft_id).collect();
    for (n, me) in nodes.iter().zip(&ids) {
        assert!(
            eventually(Duration::from_secs(20), || {
                let s = scrape(addr(n));
                let peers: Vec<String> = ids
                    .iter()
                    .filter(|id| *id != me)
                    .map(u64::to_string)
                    .collect();
                let of = |name: &str, peer: &str| metric(&s, name, &[("peer", peer)]);
                let links_up = peers
                    .iter()
                    .all(|p| of("nexus_peer_connected", p) == Some(1.0));
                // Followers do not talk to each other: only the leader's links carry
                // traffic, so every node has some both ways.
                let total = |name: &str| -> f64 { peers.iter().filter_map(|p| of(name, p)).sum() };
                links_up
                    && total("nexus_peer_sent_bytes_total") > 0.0
                    && total("nexus_peer_received_bytes_total") > 0.0
                    && metric(&s, "nexus_gossip_live_nodes", &[]) == Some(3.0)
                    && metric(&s, "nexus_raft_voters", &[]) == Some(3.0)
            }),
            "metrics of node {me}:\n{}",
            String::from_utf8_lossy(&http_request_to(addr(n), "GET", "/metrics", &[], b"").2)
        );
    }
    // One leader, the same for all: read from the three nodes in one go (retried, so an
    // election in between does not count).
    let mut seen = String::new();
    let agree = eventually(Duration::from_secs(20), || {
        let scrapes: Vec<_> = nodes.iter().map(|n| scrape(addr(n))).collect();
        let roles: Vec<Option<f64>> = scrapes
            .iter()
            .map(|s| metric(s, "nexus_raft_role", &[("role", "leader")]))
            .collect();
        let leader_ids: Vec<Option<f64>> = scrapes
            .iter()
            .map(|s| metric(s, "nexus_raft_leader_id", &[]))
            .collect();
        seen = format!("leader roles {roles:?}, leader ids {leader_ids:?}");
        // Every node reports both; exactly one leads, and all name that one.
        let leading: Vec<usize> = (0..roles.len())
            .filter(|i| roles[*i] == Some(1.0))
            .collect();
        roles.iter().all(Option::is_some)
            && leading.len() == 1
            && leader_ids
                .iter()
                .all(|id| *id == Some(ids[leading[0]] as f64))
    });
    assert!(agree, "{seen}");
}

#[test]
fn bootstrap_expect_forms_one_cluster_with_one_root() {
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let dir = root.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            Proc::start(&dir, *port, &ports, &["--bootstrap-expect", "3"])
        })
        .collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(60));
    }
    wait_voters(&nodes[1], 3);
    for n in &nodes {
        let mut c = n.root();
        let users = expect_ok(c.call("user.list", json!({"prefix": ""})));
        assert_eq!(users.as_array().unwrap().len(), 1, "one root: {users}");
    }
    // Founders that saw each other fresh write the same initial configuration; one that
    // probes a founder already running joins it instead. Either way: one cluster.
    let formed = nodes
        .iter()
        .filter(|n| n.log().contains("forming a new cluster"))
        .count();
    assert!(formed >= 1, "somebody formed the cluster");
    for n in &nodes {
        wait_voters(n, 3);
    }
}

#[test]
fn leader_kill_9_writes_resume_and_the_node_catches_up_after_restart() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_joined(root.path(), &[]);
    wait_voters(&nodes[0], 3);
    let leader = leader_of(&nodes);
    nodes[leader].kill9();
    let killed_at = Instant::now();
    let survivor = (leader + 1) % 3;
    let mut c = nodes[survivor].root();
    // Writes in flight answer (success or a retryable -32603), never hang; they succeed
    // again once a new leader is elected.
    let mut created = 0;
    let mut first_ok = None;
    while created < 20 && killed_at.elapsed() < Duration::from_secs(30) {
        match c.call(
            "user.create",
            json!({"user": format!("user{created}"), "pass": "pass1"}),
        ) {
            Ok(_) => {
                first_ok.get_or_insert(killed_at.elapsed());
                created += 1;
            }
            Err(e) => {
                assert_eq!(e.code, -32603, "{e:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    assert_eq!(created, 20, "writes resumed after the leader died");
    eprintln!(
        "writes resumed {:?} after kill -9 of the leader",
        first_ok.unwrap()
    );
    nodes[leader].spawn();
    nodes[leader].wait_ready(Duration::from_secs(60));
    let mut back = nodes[leader].root();
    let n = expect_ok(back.call("user.count", json!({"prefix": ""})));
    assert_eq!(
        n["count"],
        json!(21),
        "the restarted node caught up (root + 20)"
    );
}

/// A new secret from `nexus cluster secret`.
fn generated_secret() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["cluster", "secret"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_node_without_the_cluster_secret_cannot_join() {
    let root = tempfile::tempdir().unwrap();
    let (right, other) = (generated_secret(), generated_secret());
    assert_ne!(right, other);
    let secret = secret_file(root.path(), "secret", &format!("{right}\n"), 0o600);
    let wrong = secret_file(root.path(), "wrong", &format!("{other}\n"), 0o600);
    let (pa, px) = (free_port(), free_port());
    let (da, dx) = (root.path().join("a"), root.path().join("x"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&dx).unwrap();
    let a = Proc::start(
        &da,
        pa,
        &[],
        &["--cluster-secret-file", secret.to_str().unwrap()],
    );
    a.wait_ready(Duration::from_secs(30));
    let x = Proc::start(
        &dx,
        px,
        &[pa],
        &["--cluster-secret-file", wrong.to_str().unwrap()],
    );
    assert!(
        eventually(Duration::from_secs(10), || a
            .log()
            .contains("cluster authentication failed")),
        "the member logs the refused peer: {}",
        a.log()
    );
    // The refusal is logged above, so X has tried: it must not be a member.
    let mut c = a.root();
    let list = expect_ok(c.call("sys.node.list", json!({})));
    assert_eq!(list.as_array().unwrap().len(), 1, "nobody joined: {list}");
    assert!(!x.healthy(), "the outsider never gets a leader");
    let health = format!("127.0.0.1:{}", a.health).parse().unwrap();
    let refused = metric(&scrape(health), "nexus_peer_auth_failures_total", &[]);
    assert!(refused >= Some(1.0), "counted in /metrics: {refused:?}");
    // A world-readable secret file is refused at start.
    let loose = secret_file(root.path(), "loose", "s", 0o644);
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["serve", "--data-dir"])
        .arg(root.path().join("l"))
        .args(["--cluster", &format!("127.0.0.1:{}", free_port())])
        .args(["--cluster-secret-file", loose.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    // So is a typed secret, unless the operator insists.
    let weak = secret_file(root.path(), "weak", "right-secret\n", 0o600);
    let serve = |dir: &str, port: u16, insist: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nexus"));
        cmd.args(["serve", "--data-dir"])
            .arg(root.path().join(dir))
            .args(["--cluster", &format!("127.0.0.1:{}", free_port())])
            .args(["--cluster-secret-file", weak.to_str().unwrap()])
            .args(["-l", &format!("tcp://127.0.0.1:{port}")]);
        if insist {
            cmd.arg("--insecure-cluster");
        }
        cmd
    };
    let out = serve("w", free_port(), false).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("too weak") && stderr.contains("nexus cluster secret"),
        "{stderr}"
    );
    let port = free_port();
    let mut insisted = serve("w2", port, true)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let listening = eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let _ = insisted.kill();
    let _ = insisted.wait();
    assert!(listening, "--insecure-cluster lets a weak secret through");
}

#[test]
fn a_fourth_node_joining_after_compaction_catches_up_by_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let extra = ["--snapshot-every", "20", "--log-retain", "5"];
    let nodes = three_joined(root.path(), &extra);
    wait_voters(&nodes[0], 3);
    let mut c = nodes[1].root();
    for i in 0..60 {
        expect_ok(c.call(
            "user.create",
            json!({"user": format!("snap{i}"), "pass": "pass1"}),
        ));
    }
    let dir = root.path().join("n3");
    std::fs::create_dir_all(&dir).unwrap();
    let d = Proc::start(&dir, free_port(), &[nodes[0].cluster], &extra);
    d.wait_ready(Duration::from_secs(60));
    let mut on_d = d.root();
    let n = expect_ok(on_d.call("user.count", json!({"prefix": ""})));
    assert_eq!(n["count"], json!(61), "root + 60");
    assert!(
        d.log().contains("installed a state snapshot"),
        "caught up by snapshot: {}",
        d.log()
    );
    wait_voters(&d, 4);
}

#[test]
fn sigterm_of_the_leader_hands_leadership_over() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_joined(root.path(), &[]);
    wait_voters(&nodes[0], 3);
    let leader = leader_of(&nodes);
    nodes[leader].sigterm();
    assert!(
        nodes[leader].log().contains("transferring raft leadership"),
        "{}",
        nodes[leader].log()
    );
    let other = (leader + 1) % 3;
    let mut c = nodes[other].root();
    let start = Instant::now();
    expect_ok(c.call("user.create", json!({"user": "after", "pass": "pass1"})));
    eprintln!(
        "first write after SIGTERM of the leader: {:?}",
        start.elapsed()
    );
}

#[test]
fn a_skewed_wall_clock_does_not_move_task_deadlines() {
    let root = tempfile::tempdir().unwrap();
    // The founder (first leader) runs an hour ahead, one follower an hour behind.
    let nodes = three_joined_each(root.path(), |i| {
        let offset = ["3600000", "-3600000", "0"][i];
        vec!["--test-clock-offset-ms".into(), offset.into()]
    });
    for pusher in [1, 2] {
        let mut c = nodes[pusher].root();
        let start = Instant::now();
        let answer = c.call(
            "task.push",
            json!({"method": "skew.test.m", "params": {}, "timeout": 2}),
        );
        let took = start.elapsed();
        expect_code(answer, -32000);
        assert!(
            took >= Duration::from_millis(1800) && took < Duration::from_secs(10),
            "a 2 s task timeout ended after {took:?}"
        );
    }
}

#[test]
fn a_write_in_flight_on_a_follower_when_the_leader_dies_answers() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_joined(root.path(), &[]);
    wait_voters(&nodes[0], 3);
    let leader = leader_of(&nodes);
    let follower = (leader + 1) % 3;
    let mut c = nodes[follower].root();
    let mut w = nodes[follower].root();
    // The leader freezes: the follower's forwarded write reaches it but is never appended.
    let pid = nodes[leader].child.as_ref().unwrap().id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let before = unread_bytes_at(nodes[leader].cluster);
    let writer = std::thread::spawn(move || {
        let start = Instant::now();
        let answer = w.call("user.create", json!({"user": "inflight", "pass": "pass1"}));
        (answer, start.elapsed())
    });
    // The forwarded write (a command with a password hash, well over 100 bytes) waits
    // unread at the frozen leader; only then does the leader die.
    assert!(
        eventually(Duration::from_secs(5), || unread_bytes_at(
            nodes[leader].cluster
        ) >= before + 100),
        "the follower forwarded the write to the frozen leader"
    );
    nodes[leader].kill9();
    let (answer, took) = writer.join().unwrap();
    eprintln!("write in flight when the leader died: {answer:?} after {took:?}");
    match answer {
        Ok(_) => {}
        Err(e) => assert_eq!(e.code, -32603, "a retryable internal error: {e:?}"),
    }
    assert!(took < Duration::from_secs(15), "answered, after {took:?}");
    // The survivors go on: the write can be retried (it exists at most once).
    let mut created = false;
    assert!(eventually(Duration::from_secs(15), || {
        match c.call("user.create", json!({"user": "inflight", "pass": "pass1"})) {
            Ok(_) => created = true,
            Err(e) if e.code == -32005 => created = true, // applied before all
            Err(_) => {}
        }
        created
    }));
    let n = expect_ok(c.call("user.count", json!({"prefix": "inflight"})));
    assert_eq!(n["count"], json!(1));
}

#[test]
fn members_are_removed_by_an_admin_and_when_long_dead() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_joined(root.path(), &["--remove-dead-after", "3"]);
    wait_voters(&nodes[0], 3);
    let ids: Vec<u64> = nodes.iter().map(Proc::raft_id).collect();
    // Members, down or not (a killed node leaves the default list within seconds, long
    // before it is removed from the cluster).
    let members = |n: &Proc| -> Vec<u64> {
        let mut c = n.root();
        let list = expect_ok(c.call("sys.node.list", json!({"all": true})));
        list.as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["raftId"].as_u64())
            .collect()
    };
    // Bad input is refused with a clear error; a non-member is not "removed".
    let mut c0 = nodes[0].root();
    expect_code(c0.call("sys.node.remove", json!({"raftId": "x"})), -32602);
    expect_code(c0.call("sys.node.remove", json!({"raftId": 12345})), -32603);
    // A user without the permission cannot remove anyone.
    expect_ok(c0.call("user.create", json!({"user": "eve", "pass": "pass1"})));
    let mut eve = Client::tcp(format!("127.0.0.1:{}", nodes[0].tcp).parse().unwrap());
    expect_ok(eve.login("eve", "pass1"));
    expect_code(
        eve.call("sys.node.remove", json!({"raftId": ids[2]})),
        -32010,
    );

    // kill -9 of a follower: the leader removes it once gossip has not seen it for 3 s.
    let leader = leader_of(&nodes);
    let dead = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    nodes[dead].kill9();
    assert!(
        eventually(Duration::from_secs(30), || !members(&nodes[leader])
            .contains(&ids[dead])),
        "the long-dead member was removed: {:?}; leader log:\n{}",
        members(&nodes[leader]),
        nodes[leader].log()
    );
    wait_voters(&nodes[leader], 2);

    // An admin removes the remaining follower through that follower (forwarded to the
    // leader), with the admin CLI; the leader then runs alone and keeps accepting writes.
    let out = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .args(["--url", &format!("tcp://127.0.0.1:{}", nodes[other].tcp)])
        .args(["--user", "root", "--json"])
        .args(["cluster", "remove", &ids[other].to_string()])
        .env("HOME", "/nonexistent")
        .env("NEXUS_PASSWORD", common::ROOT_PASS)
        .output()
        .unwrap();
    assert!(out.status.success(), "nexus cluster remove: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"ok":true}"#
    );
    assert!(
        eventually(Duration::from_secs(15), || members(&nodes[leader])
            == vec![ids[leader]]),
        "only the leader is left: {:?}",
        members(&nodes[leader])
    );
    let mut c = nodes[leader].root();
    expect_ok(c.call("user.create", json!({"user": "alone", "pass": "pass1"})));
    // The leader itself cannot be removed while it leads.
    expect_code(
        c.call("sys.node.remove", json!({"raftId": ids[leader]})),
        -32603,
    );
}

/// A follower frozen while its worker's pull is handed a task catches up by snapshot: the
/// hand-over is inside the snapshot, not an event it applied. The pull still gets its task
/// (its connection works on it now), and the pusher its result. Found by the disk-full
/// chaos run, where such a pull was told "unknown, retry" and the task stayed `working`.
#[test]
fn a_pull_handed_its_task_inside_a_snapshot_still_gets_the_task() {
    let root = tempfile::tempdir().unwrap();
    // Small snapshots and a short log, so the frozen follower needs a snapshot; fencing
    // and node-down far away, so that the freeze ends neither its sessions nor its pull.
    let extra = [
        "--snapshot-every",
        "20",
        "--log-retain",
        "5",
        "--fence-after-ms",
        "60000",
        "--node-down-after-ms",
        "120000",
    ];
    let mut nodes = three_joined(root.path(), &extra);
    wait_voters(&nodes[0], 3);
    let leader = leader_of(&nodes);
    let f = (leader + 1) % 3;
    let mut worker = nodes[f].root();
    let pull = worker.send("task.pull", json!({"prefix": "snapped.", "timeout": 120}));
    // The pull is in the state the follower applied.
    let mut on_f = nodes[f].root();
    assert!(eventually(Duration::from_secs(10), || {
        expect_ok(on_f.call("task.count", json!({"prefix": "snapped."})))["pullCount"] == 1
    }));
    let installs = |n: &Proc| n.log().matches("installed a state snapshot").count();
    let installed_before = installs(&nodes[f]);
    let pid = nodes[f].child.as_ref().unwrap().id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // First more writes than the leader keeps in flight to the frozen follower (256
    // messages, one per write here): what comes after is not on its way to it.
    let mut c = nodes[leader].root();
    let mut write = |from: usize, to: usize| {
        for i in from..to {
            expect_ok(c.call("sync.lock", json!({"lock": format!("past{i}")})));
        }
    };
    write(0, 300);
    let mut pusher = nodes[leader].root();
    let push = pusher.send(
        "task.push",
        json!({"method": "snapped.work", "params": {"n": 7}}),
    );
    let mut on_leader = nodes[leader].root();
    assert!(eventually(Duration::from_secs(10), || {
        let l = expect_ok(on_leader.call("task.list", json!({"prefix": "snapped."})));
        l.as_array()
            .unwrap()
            .iter()
            .any(|t| t["state"] == "working")
    }));
    // Then enough for snapshots that compact the log past the hand-over.
    write(300, 400);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let answer = worker.wait(&pull);
    let task = &answer["result"];
    assert_eq!(
        task["params"],
        json!({"n": 7}),
        "the pull's answer: {answer}"
    );
    assert!(
        installs(&nodes[f]) > installed_before,
        "the follower caught up by snapshot: {}\nleader: {}",
        nodes[f].log(),
        nodes[leader].log()
    );
    expect_ok(worker.call(
        "task.result",
        json!({"taskid": task["taskid"], "result": "done"}),
    ));
    let answer = pusher.wait(&push);
    assert_eq!(
        answer["result"],
        json!("done"),
        "the push's answer: {answer}"
    );
    nodes[f].kill9();
}

/// A new self-signed certificate for localhost written over `cert` and `key`, and kept as
/// `ca` (what a client must trust to reach it).
fn new_certificate(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) {
    let rcgen::CertifiedKey { cert: c, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(ca, c.pem()).unwrap();
    // Written beside and renamed: a reload never sees half a file.
    let (tmp_c, tmp_k) = (cert.with_extension("new"), key.with_extension("new"));
    std::fs::write(&tmp_c, c.pem()).unwrap();
    std::fs::write(&tmp_k, key_pair.serialize_pem()).unwrap();
    std::fs::rename(tmp_c, cert).unwrap();
    std::fs::rename(tmp_k, key).unwrap();
}

fn ssl_client(port: u16, ca: &std::path::Path) -> anyhow::Result<nexus_client::Client> {
    let opts = nexus_client::Options {
        ca: Some(ca.to_path_buf()),
        ..Default::default()
    };
    nexus_client::Client::login(
        &format!("ssl://localhost:{port}"),
        &opts,
        "root",
        common::ROOT_PASS,
    )
}

#[test]
fn secrets_and_certificates_rotate_on_a_live_cluster_without_losing_a_write() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let (old, new) = (generated_secret(), generated_secret());
    // Each node its own file, as on three hosts.
    let files: Vec<_> = (0..3)
        .map(|i| secret_file(dir, &format!("secret{i}"), &format!("{old}\n"), 0o600))
        .collect();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (ca1, ca2) = (dir.join("ca1.pem"), dir.join("ca2.pem"));
    new_certificate(&cert, &key, &ca1);
    let ssl = free_port();
    let mut nodes = three_joined_each(dir, |i| {
        let mut a = vec![
            "--cluster-secret-file".to_string(),
            files[i].to_str().unwrap().to_string(),
        ];
        if i == 0 {
            for s in ["-l", &format!("ssl://127.0.0.1:{ssl}"), "--tls-cert"] {
                a.push(s.to_string());
            }
            a.push(cert.to_str().unwrap().to_string());
            a.push("--tls-key".to_string());
            a.push(key.to_str().unwrap().to_string());
        }
        a
    });
    wait_voters(&nodes[0], 3);
    let mut before_tls = ssl_client(ssl, &ca1).unwrap();

    // A writer on each node, counting what was acknowledged.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let (mut c, stop, count) = (nodes[i].root(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for n in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let user = format!("rot{i}x{n}");
                    let answer = c.call("user.create", json!({"user": &user, "pass": "pass1"}));
                    if answer.is_ok() {
                        acked.push(user);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                acked
            })
        })
        .collect();
    let write_all = |content: String| {
        for f in &files {
            std::fs::write(f, &content).unwrap();
        }
    };
    let reload_by_rpc = |nodes: &[Proc]| {
        for n in nodes {
            let done = expect_ok(n.root().call("sys.node.reload", json!({})));
            assert!(
                done["reloaded"].to_string().contains("cluster secret"),
                "{done}"
            );
        }
    };
    let reloads = |n: &Proc| n.log().matches("reloaded: ").count();
    // Each step is taken with writes going on before and after it.
    let writes_go_on = || {
        let before = count.load(Ordering::Relaxed);
        assert!(
            eventually(Duration::from_secs(20), || count.load(Ordering::Relaxed)
                >= before + 15),
            "writes stopped"
        );
    };
    writes_go_on();

    // 1. Every node accepts the new secret too; 2. every node dials with it (and node 0
    // serves a new certificate), by SIGHUP; 3. the old one is gone.
    write_all(format!("{old}\n{new}\n"));
    reload_by_rpc(&nodes);
    writes_go_on();
    write_all(format!("{new}\n{old}\n"));
    new_certificate(&cert, &key, &ca2);
    for n in &nodes {
        let before = reloads(n);
        let pid = n.child.as_ref().unwrap().id() as i32;
        unsafe { libc::kill(pid, libc::SIGHUP) };
        assert!(
            eventually(Duration::from_secs(10), || reloads(n) > before),
            "SIGHUP reloaded nothing: {}",
            n.log()
        );
    }
    writes_go_on();
    write_all(format!("{new}\n"));
    reload_by_rpc(&nodes);
    writes_go_on();

    // The TLS listener serves the new certificate to new connections, and the connection
    // made before keeps working.
    assert!(
        ssl_client(ssl, &ca1).is_err(),
        "the old certificate is still served"
    );
    let pinged = |c: &mut nexus_client::Client| c.call("sys.ping", json!({})).unwrap();
    assert_eq!(
        pinged(&mut ssl_client(ssl, &ca2).unwrap()),
        json!({"ok": true})
    );
    assert_eq!(pinged(&mut before_tls), json!({"ok": true}));

    // The load ran through all of it (node 2's restart below would end its writer's
    // connection).
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(acked.len() > 30, "too little load: {} writes", acked.len());

    // New peer links use the new secret: a restarted node comes back, and a node that only
    // knows the old one is refused.
    nodes[2].sigterm();
    nodes[2].spawn();
    nodes[2].wait_ready(Duration::from_secs(60));
    let health = format!("127.0.0.1:{}", nodes[0].health).parse().unwrap();
    let refused = || metric(&scrape(health), "nexus_peer_auth_failures_total", &[]);
    let before = refused();
    let stale_dir = dir.join("stale");
    std::fs::create_dir_all(&stale_dir).unwrap();
    let stale_file = secret_file(dir, "stale-secret", &format!("{old}\n"), 0o600);
    let _stale = Proc::start(
        &stale_dir,
        free_port(),
        &[nodes[0].cluster],
        &["--cluster-secret-file", stale_file.to_str().unwrap()],
    );
    assert!(
        eventually(Duration::from_secs(20), || refused() > before),
        "a node with the old secret was not refused"
    );

    let listed = expect_ok(
        nodes[1]
            .root()
            .call("user.list", json!({"prefix": "", "limit": 0})),
    );
    let names: std::collections::HashSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["user"].as_str())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|u| !names.contains(u.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    eprintln!("{} writes acknowledged during the rotation", acked.len());
}

/// A man in the middle on loopback for one node's cluster port, TCP and UDP: what peers
/// send to the port it listens on goes to `target`, and back. It keeps every byte it
/// passed, and while `flip_every` is not 0 flips a byte of the TCP streams to the node every
/// `flip_every` bytes, and of every 4th datagram.
struct Mitm {
    tcp_seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    udp_seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    flip_every: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Mitm {
    fn start(listen: u16, target: u16) -> Mitm {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let m = Mitm {
            tcp_seen: Default::default(),
            udp_seen: Default::default(),
            flip_every: Default::default(),
        };
        let listener = std::net::TcpListener::bind(("127.0.0.1", listen)).unwrap();
        let (seen, flip) = (m.tcp_seen.clone(), m.flip_every.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                let Ok(outbound) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let conn = {
                    let mut s = seen.lock().unwrap();
                    s.push(Vec::new());
                    s.len() - 1
                };
                let (mut up_r, mut up_w) =
                    (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
                let (seen, flip) = (seen.clone(), flip.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 << 10];
                    let mut passed = 0usize;
                    while let Ok(n) = up_r.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        seen.lock().unwrap()[conn].extend_from_slice(&buf[..n]);
                        let every = flip.load(Ordering::Relaxed);
                        if every > 0 && (passed + n) / every > passed / every {
                            buf[n / 2] ^= 0x10;
                        }
                        passed += n;
                        if up_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = up_w.shutdown(std::net::Shutdown::Both);
                });
                let (mut down_r, mut down_w) = (outbound, inbound);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut down_r, &mut down_w);
                    let _ = down_w.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        // UDP: one socket toward the node per peer address, like a NAT.
        let front = std::net::UdpSocket::bind(("127.0.0.1", listen)).unwrap();
        let (seen, flip) = (m.udp_seen.clone(), m.flip_every.clone());
        std::thread::spawn(move || {
            let mut back: std::collections::HashMap<std::net::SocketAddr, std::net::UdpSocket> =
                Default::default();
            let mut buf = vec![0u8; 65536];
            let mut count = 0usize;
            while let Ok((n, from)) = front.recv_from(&mut buf) {
                seen.lock().unwrap().push(buf[..n].to_vec());
                count += 1;
                let every = flip.load(Ordering::Relaxed);
                if every > 0 && count.is_multiple_of(4) {
                    buf[n / 2] ^= 0x10;
                }
                let sock = back.entry(from).or_insert_with(|| {
                    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                    let (reply, front) = (s.try_clone().unwrap(), front.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let mut b = vec![0u8; 65536];
                        while let Ok((n, _)) = reply.recv_from(&mut b) {
                            let _ = front.send_to(&b[..n], from);
                        }
                    });
                    s
                });
                let _ = sock.send_to(&buf[..n], ("127.0.0.1", target));
            }
        });
        m
    }
}

#[test]
fn a_relay_on_a_peer_path_reads_nothing_and_its_damage_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let secret = secret_file(
        root.path(),
        "secret",
        &format!("{}\n", generated_secret()),
        0o600,
    );
    let with_secret = ["--cluster-secret-file", secret.to_str().unwrap()];
    let (pb, pa, relay, pc) = (free_port(), free_port(), free_port(), free_port());
    let mitm = Mitm::start(relay, pa);
    let dirs: Vec<_> = ["b", "a", "c"]
        .iter()
        .map(|d| root.path().join(d))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    // B founds the cluster and leads; A advertises the relay, so B's and C's traffic to A
    // (Raft entries from the leader, gossip) goes through it.
    let b = Proc::start(&dirs[0], pb, &[], &with_secret);
    b.wait_ready(Duration::from_secs(30));
    let mut a_args = with_secret.to_vec();
    let advertise = format!("127.0.0.1:{relay}");
    a_args.extend(["--advertise", &advertise]);
    let a = Proc::start(&dirs[1], pa, &[pb], &a_args);
    let c = Proc::start(&dirs[2], pc, &[pb], &with_secret);
    for n in [&a, &c] {
        n.wait_ready(Duration::from_secs(60));
    }
    wait_voters(&b, 3);

    // (a) A value written through the API crosses the relay, unreadable.
    let marker = "mitm-marker-7f3a9c";
    let mut cb = b.root();
    expect_ok(cb.call("user.create", json!({"user": marker, "pass": "pass1"})));
    assert!(eventually(Duration::from_secs(10), || {
        let mut ca = a.root();
        let users = expect_ok(ca.call("user.list", json!({"prefix": "", "limit": 0})));
        users.to_string().contains(marker)
    }));
    let contains = |seen: &[Vec<u8>], what: &[u8]| {
        seen.iter()
            .any(|b| b.windows(what.len()).any(|w| w == what))
    };
    let tcp_seen = mitm.tcp_seen.lock().unwrap().clone();
    let udp_seen = mitm.udp_seen.lock().unwrap().clone();
    assert!(
        !tcp_seen.is_empty() && !udp_seen.is_empty(),
        "the relay carried nothing"
    );
    assert!(
        !contains(&tcp_seen, marker.as_bytes()),
        "the marker crossed in the clear"
    );
    // B's listener URL is in its gossip.
    let listening = format!("tcp://127.0.0.1:{}", b.tcp);
    assert!(
        !contains(&udp_seen, listening.as_bytes()),
        "gossip crossed in the clear"
    );

    // (b) Bytes flipped on the way, both ways of carrying: links drop and datagrams are
    // refused, all counted on A; A applies nothing damaged and stays up; the writes go on.
    let a_health = format!("127.0.0.1:{}", a.health).parse().unwrap();
    let counted = |name: &str, labels: &[(&str, &str)]| {
        metric(&scrape(a_health), name, labels).unwrap_or(0.0)
    };
    let (links_before, forged_before) = (
        counted("nexus_peer_auth_failures_total", &[]),
        counted(
            "nexus_gossip_refused_datagrams_total",
            &[("reason", "unauthenticated")],
        ),
    );
    mitm.flip_every
        .store(16 << 10, std::sync::atomic::Ordering::Relaxed);
    let mut written = Vec::new();
    let mut i = 0;
    assert!(
        eventually(Duration::from_secs(60), || {
            i += 1;
            let user = format!("mitm{i}");
            if cb
                .call("user.create", json!({"user": &user, "pass": "pass1"}))
                .is_ok()
            {
                written.push(user);
            }
            counted("nexus_peer_auth_failures_total", &[]) >= links_before + 3.0
                && counted(
                    "nexus_gossip_refused_datagrams_total",
                    &[("reason", "unauthenticated")],
                ) > forged_before
        }),
        "no damage was refused"
    );
    mitm.flip_every
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let mut a = a;
    assert!(
        a.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "A exited: {}",
        a.log()
    );
    assert!(!a.log().contains("corrupt"), "{}", a.log());
    // The cluster heals: A has every write, the same as B.
    let on = |n: &Proc| {
        let users = expect_ok(
            n.root()
                .call("user.list", json!({"prefix": "", "limit": 0})),
        );
        let mut names: Vec<String> = users
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["user"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert!(
        eventually(Duration::from_secs(30), || on(&a) == on(&b)),
        "A and B differ"
    );
    let all = on(&a);
    assert!(
        written.iter().all(|u| all.contains(u)),
        "an acknowledged write is missing"
    );

    // (c) Replayed: a datagram and a whole peer connection, captured above.
    let replayed_before = counted(
        "nexus_gossip_refused_datagrams_total",
        &[("reason", "replayed")],
    );
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(&udp_seen[udp_seen.len() / 2], ("127.0.0.1", pa))
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || counted(
        "nexus_gossip_refused_datagrams_total",
        &[("reason", "replayed")]
    ) > replayed_before));
    let links_before = counted("nexus_peer_auth_failures_total", &[]);
    let stream = tcp_seen.iter().max_by_key(|s| s.len()).unwrap();
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", pa)).unwrap();
    std::io::Write::write_all(&mut raw, stream).unwrap();
    assert!(eventually(Duration::from_secs(10), || counted(
        "nexus_peer_auth_failures_total",
        &[]
    ) > links_before));
    assert_eq!(on(&a), all, "the replay changed A");
    drop(c);
}
