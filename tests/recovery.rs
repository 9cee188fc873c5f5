//! Disaster recovery with real processes: an online backup taken under a write load and
//! restored into a new cluster that fresh nodes join; a survivor of a lost majority forced
//! into a new cluster that keeps every committed write and refuses its old members; backups
//! that are damaged, and data dirs that are not empty, refused.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{three_joined, wait_voters, Proc};
use common::{eventually, expect_code, expect_ok, free_port, Client, ROOT_PASS};
use serde_json::{json, Value};

fn nexus(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nexus"));
    cmd.args(args)
        .env_remove("NEXUS_URL")
        .env_remove("NEXUS_USER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `nexus backup FILE` through the node listening on `tcp`, as root; its JSON answer.
fn backup(tcp: u16, file: &Path) -> Value {
    let out = nexus(
        &["--json", "backup", file.to_str().unwrap()],
        &[
            ("NEXUS_URL", format!("tcp://127.0.0.1:{tcp}")),
            ("NEXUS_USER", "root".into()),
            ("NEXUS_PASSWORD", ROOT_PASS.into()),
        ],
    );
    assert!(out.status.success(), "nexus backup: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn user_names(c: &mut Client, prefix: &str) -> BTreeSet<String> {
    // A listing's prefix is a path (`u` lists `u` and `u.*`): filtered here instead.
    let list = expect_ok(c.call("user.list", json!({"prefix": "", "limit": 100000})));
    list.as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap().to_string())
        .filter(|u| u.starts_with(prefix))
        .collect()
}

/// When a write was sent, and when it was acknowledged (if it was).
type Sent = (Instant, Option<Instant>);

/// One writer creating users `w0`, `w1`, ... in order through one node, recording when
/// each was sent and when it was acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sent>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(tcp: u16) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let mut c = Client::tcp(format!("127.0.0.1:{tcp}").parse().unwrap());
            expect_ok(c.login("root", ROOT_PASS));
            // Bounded: at most 20,000 writes, stopped by the test long before.
            for i in 0..20_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let sent = Instant::now();
                l.lock().unwrap().push((sent, None));
                let user = format!("w{i:05}");
                let r = c.call("user.create", json!({"user": user, "pass": "pw-123456"}));
                if r.is_ok() {
                    l.lock().unwrap()[i].1 = Some(Instant::now());
                }
            }
        });
        Writer {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn written(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn stop(&mut self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.log.lock().unwrap().clone()
    }
}

#[test]
fn a_backup_under_write_load_restores_into_a_new_cluster_that_fresh_nodes_join() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_joined(root.path(), &[]);
    let mut a = nodes[0].root();
    // What a restore keeps: a user and its tags, a queued task, the lock token counter.
    expect_ok(a.call("user.create", json!({"user": "keep", "pass": "keep-pass"})));
    let tags = json!({"@task.pull": true, "plan": "gold"});
    expect_ok(a.call(
        "user.setTags",
        json!({"user": "keep", "prefix": "jobs", "tags": tags}),
    ));
    expect_ok(a.call(
        "task.push",
        json!({"method": "jobs.later", "params": {"n": 7}, "detach": true, "timeout": 600}),
    ));
    let token = expect_ok(a.call("sync.lock", json!({"lock": "L"})))["token"]
        .as_u64()
        .unwrap();
    // ...and what it does not: a pipe's subscription, the sessions.
    let pipe = expect_ok(a.call("pipe.create", json!({})))["pipeid"].clone();
    expect_ok(a.call("topic.sub", json!({"pipeid": pipe, "topic": "news"})));

    let mut writer = Writer::start(nodes[1].tcp);
    assert!(eventually(Duration::from_secs(30), || writer.written() > 50));
    let file = root.path().join("cluster.nxb");
    let began = Instant::now();
    let taken = backup(nodes[2].tcp, &file);
    let ended = Instant::now();
    let at_end = writer.written();
    assert!(eventually(Duration::from_secs(30), || writer.written() > at_end + 50));
    let log = writer.stop();
    let index = taken["index"].as_u64().unwrap();
    assert!(index > 50, "{taken}");
    // Nothing in it says where the old members were.
    let bytes = std::fs::read(&file).unwrap();
    for n in &nodes {
        let addr = format!("127.0.0.1:{}", n.cluster);
        let found = bytes.windows(addr.len()).any(|w| w == addr.as_bytes());
        assert!(!found, "the backup holds the member address {addr}");
    }
    // Acknowledged before the backup began: in it. Sent after it ended: not in it.
    let must = log
        .iter()
        .take_while(|(_, acked)| acked.is_some_and(|t| t < began))
        .count();
    let first_after = log.iter().position(|(sent, _)| *sent > ended).unwrap();
    assert!(must > 0 && first_after > must, "{must} {first_after}");

    // Every node and its data are lost.
    for n in nodes.iter_mut() {
        n.kill9();
        std::fs::remove_dir_all(n.dir.join("data")).unwrap();
    }
    let dirs: Vec<PathBuf> = (0..3).map(|i| root.path().join(format!("r{i}"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let restored = Proc::start(
        &dirs[0],
        ports[0],
        &[],
        &["--restore", file.to_str().unwrap()],
    );
    restored.wait_ready(Duration::from_secs(60));
    assert!(restored.log().contains("RESTORED FROM A BACKUP"));
    let mut new_nodes = vec![restored];
    for i in 1..3 {
        new_nodes.push(Proc::start(&dirs[i], ports[i], &[ports[0]], &[]));
    }
    for n in &new_nodes {
        n.wait_ready(Duration::from_secs(60));
    }
    wait_voters(&new_nodes[2], 3);

    let mut c = new_nodes[2].root();
    // One index cuts the writer's writes (they were made one after another): up to the
    // last one present, every acknowledged write is there. Every write acknowledged
    // before the backup began is in it, none sent after it ended.
    let present = user_names(&mut c, "w");
    let last = present
        .iter()
        .map(|u| u[1..].parse::<usize>().unwrap())
        .max()
        .unwrap();
    for (i, (_, acked)) in log.iter().enumerate().take(last + 1) {
        let user = format!("w{i:05}");
        assert!(
            acked.is_none() || present.contains(&user),
            "{user} acknowledged, not restored"
        );
    }
    assert!(last + 1 >= must, "{last} < {must}");
    assert!(last < first_after, "{last} >= {first_after}");
    // Written again, a write after the backup is there.
    let again = format!("w{:05}", last + 1);
    expect_ok(c.call("user.create", json!({"user": again, "pass": "pw-123456"})));
    assert!(user_names(&mut new_nodes[0].root(), "w").contains(&again));

    // Users and tags, the queued task, the lock (released, its token counter kept).
    let mut keep = Client::tcp(format!("127.0.0.1:{}", new_nodes[1].tcp).parse().unwrap());
    expect_ok(keep.login("keep", "keep-pass"));
    let got = expect_ok(c.call("user.getTags", json!({"user": "keep"})));
    assert_eq!(got["tags"]["jobs"], tags, "{got}");
    let task = expect_ok(keep.call("task.pull", json!({"prefix": "jobs", "timeout": 5})));
    assert_eq!(task["params"], json!({"n": 7}), "{task}");
    let relocked = expect_ok(c.call("sync.lock", json!({"lock": "L"})));
    assert!(relocked["token"].as_u64().unwrap() > token, "{relocked}");
    // The old cluster's subscriptions and sessions are gone.
    let topics = expect_ok(c.call("topic.count", json!({"prefix": ""})));
    assert_eq!(topics["count"], json!(0), "{topics}");
    // This test's own two (a client dropped above closes asynchronously).
    let mut sessions = json!(null);
    assert!(
        eventually(Duration::from_secs(10), || {
            sessions = expect_ok(c.call("sys.session.count", json!({"prefix": ""})));
            sessions["count"] == json!(2)
        }),
        "{sessions}"
    );
}

#[test]
fn a_survivor_forced_into_a_new_cluster_keeps_every_write_and_refuses_its_old_members() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = three_joined(root.path(), &[]);
    let mut acked = Vec::new();
    for i in 0..60 {
        let mut c = nodes[i % 3].root();
        let user = format!("u{i:03}");
        expect_ok(c.call("user.create", json!({"user": user, "pass": "pw-123456"})));
        acked.push(user);
    }
    // The survivor has applied every acknowledged write (a linearizable read on it).
    let survivor = 2;
    assert_eq!(user_names(&mut nodes[survivor].root(), "u").len(), 60);
    let old_ids: Vec<u64> = nodes.iter().map(Proc::raft_id).collect();
    // The majority is lost for good: two nodes die and one's data is gone; the other's is
    // kept aside, to be started later as if it came back.
    for n in nodes.iter_mut() {
        n.kill9();
    }
    let aside = root.path().join("n1-old-data");
    std::fs::rename(nodes[1].dir.join("data"), &aside).unwrap();
    std::fs::remove_dir_all(nodes[0].dir.join("data")).unwrap();

    let forced = &mut nodes[survivor];
    forced.args.push("--force-new-cluster".into());
    forced.spawn();
    forced.wait_ready(Duration::from_secs(60));
    assert!(forced.log().contains("FORCED A NEW CLUSTER"));
    let mut c = forced.root();
    let kept = user_names(&mut c, "u");
    assert_eq!(kept, acked.iter().cloned().collect::<BTreeSet<_>>());
    expect_ok(c.call("user.create", json!({"user": "after", "pass": "pw-123456"})));

    // Fresh nodes join it.
    let mut fresh = Vec::new();
    for i in 0..2 {
        let dir = root.path().join(format!("fresh{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        fresh.push(Proc::start(&dir, free_port(), &[forced.cluster], &[]));
    }
    for n in &fresh {
        n.wait_ready(Duration::from_secs(60));
    }
    let list = wait_voters(&fresh[1], 3);
    let mut f = fresh[0].root();
    assert!(user_names(&mut f, "").contains("after"));
    assert_eq!(user_names(&mut f, "u").len(), 60);
    // Started again with the flag still given, it does not force again: the members that
    // joined stay members.
    let forced = &mut nodes[survivor];
    forced.sigterm();
    forced.spawn();
    forced.wait_ready(Duration::from_secs(60));
    assert!(forced.log().contains("ignoring --force-new-cluster"));
    wait_voters(&fresh[1], 3);
    expect_ok(f.call(
        "user.create",
        json!({"user": "after2", "pass": "pw-123456"}),
    ));
    assert!(user_names(&mut forced.root(), "").contains("after2"));

    // The old member comes back with its data: refused, never a member again.
    let survivor_addr = format!("127.0.0.1:{}", nodes[survivor].cluster);
    let old = &mut nodes[1];
    std::fs::rename(&aside, old.dir.join("data")).unwrap();
    old.args.push("--join".into());
    old.args.push(survivor_addr);
    old.spawn();
    assert!(
        eventually(Duration::from_secs(30), || nodes[survivor]
            .log()
            .contains("belongs to cluster")),
        "the survivor did not refuse its old member; its log:\n{}",
        nodes[survivor].log()
    );
    let members: Vec<u64> = wait_voters(&fresh[0], 3)
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["raftId"].as_u64())
        .collect();
    assert!(!members.contains(&old_ids[1]), "{members:?} {list}");
    assert!(!nodes[1].healthy(), "the old member found a leader");
    expect_ok(f.call("user.create", json!({"user": "later", "pass": "pw-123456"})));
    let mut on_survivor = nodes[survivor].root();
    assert!(user_names(&mut on_survivor, "").contains("later"));
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// A standalone `nexus serve` process on `data`, with its tcp port.
fn serve(data: &Path, extra: &[&str]) -> (std::process::Child, u16) {
    let tcp = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_nexus"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["-l", &format!("tcp://127.0.0.1:{tcp}")])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (child, tcp)
}

fn connect(tcp: u16) -> Option<Client> {
    let addr = format!("127.0.0.1:{tcp}").parse().unwrap();
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    Some(Client::tcp(addr))
}

#[test]
fn damaged_backups_and_non_empty_data_dirs_are_refused_and_a_good_backup_restores() {
    let root = tempfile::tempdir().unwrap();
    let (mut node, tcp) = serve(&root.path().join("old"), &[]);
    assert!(eventually(Duration::from_secs(30), || connect(tcp)
        .is_some_and(|mut c| c.login("root", ROOT_PASS).is_ok())));
    let mut c = connect(tcp).unwrap();
    expect_ok(c.login("root", ROOT_PASS));
    expect_ok(c.call(
        "user.create",
        json!({"user": "plain", "pass": "plain-pass"}),
    ));
    // Only a user allowed sys.backup may take one.
    let mut plain = connect(tcp).unwrap();
    expect_ok(plain.login("plain", "plain-pass"));
    expect_code(plain.call("sys.backup.begin", json!({})), -32010);
    expect_code(plain.call("sys.backup.read", json!({"offset": 0})), -32010);
    // Read by hand in small chunks: the pieces make the whole file, whose header gives the
    // index `begin` announced; reading past the end, or before a begin, is refused.
    let mut fresh = connect(tcp).unwrap();
    expect_ok(fresh.login("root", ROOT_PASS));
    expect_code(fresh.call("sys.backup.read", json!({"offset": 0})), -32602);
    let begun = expect_ok(fresh.call("sys.backup.begin", json!({})));
    let total = begun["bytes"].as_u64().unwrap();
    let mut whole = Vec::new();
    loop {
        let offset = whole.len();
        let chunk =
            expect_ok(fresh.call("sys.backup.read", json!({"offset": offset, "length": 100})));
        assert_eq!(chunk["offset"], json!(offset));
        let data = base64_decode(chunk["data"].as_str().unwrap());
        assert!(data.len() <= 100);
        whole.extend_from_slice(&data);
        if chunk["eof"] == json!(true) {
            break;
        }
    }
    assert_eq!(whole.len() as u64, total);
    assert!(total > 300, "several chunks: {total}");
    let (header, _) = nexus_core::backup::decode(&whole).unwrap();
    assert_eq!(json!(header.index), begun["index"]);
    expect_code(
        fresh.call("sys.backup.read", json!({"offset": total + 1})),
        -32602,
    );
    expect_code(
        fresh.call("sys.backup.read", json!({"offset": 0, "length": 0})),
        -32602,
    );

    let file = root.path().join("b.nxb");
    let taken = backup(tcp, &file);
    // An existing file is not overwritten unless asked.
    let before = std::fs::read(&file).unwrap();
    let again = nexus(
        &["backup", file.to_str().unwrap()],
        &[
            ("NEXUS_URL", format!("tcp://127.0.0.1:{tcp}")),
            ("NEXUS_USER", "root".into()),
            ("NEXUS_PASSWORD", ROOT_PASS.into()),
        ],
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{again:?}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the backup was overwritten"
    );
    let _ = node.kill();
    let _ = node.wait();

    let good = std::fs::read(&file).unwrap();
    assert_eq!(good.len() as u64, taken["bytes"].as_u64().unwrap());
    let restore = |file: &Path, dir: &Path| {
        nexus(
            &[
                "restore",
                file.to_str().unwrap(),
                "--data-dir",
                dir.to_str().unwrap(),
                "--standalone",
            ],
            &[],
        )
    };
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    let truncated = &good[..good.len() - 100];
    for (name, bytes) in [("flipped.nxb", &flipped[..]), ("short.nxb", truncated)] {
        let bad = root.path().join(name);
        std::fs::write(&bad, bytes).unwrap();
        let dir = root.path().join(format!("from-{name}"));
        let out = restore(&bad, &dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("damaged or truncated"),
            "{err}"
        );
        assert!(!dir.exists(), "a refused restore created {}", dir.display());
    }
    // Not into a data dir that holds anything.
    let busy = root.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("something"), b"x").unwrap();
    let out = restore(&file, &busy);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let (mut refused, _) = serve(&busy, &["--restore", file.to_str().unwrap()]);
    assert!(!refused.wait().unwrap().success());
    assert_eq!(
        std::fs::read_dir(&busy).unwrap().count(),
        1,
        "the dir changed"
    );

    // The good one, restored, serves the old users.
    let dir = root.path().join("new");
    let out = restore(&file, &dir);
    assert!(out.status.success(), "{out:?}");
    let (mut node, tcp) = serve(&dir, &[]);
    assert!(eventually(Duration::from_secs(30), || connect(tcp)
        .is_some_and(|mut c| c.login("plain", "plain-pass").is_ok())));
    let _ = node.kill();
    let _ = node.wait();
}
