//! A full disk, on a small tmpfs the test mounts (root needed, as for the chaos tests'
//! network namespaces): writes get a JSON-RPC error, the node stays up and serves reads,
//! nothing acknowledged is lost, and writes resume by themselves once space returns. In a
//! cluster, the member whose disk is full stops leading and the others go on.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{leader_of, wait_voters, Proc};
use common::*;
use nexus_core::rpc::ERR_INTERNAL;
use serde_json::json;

/// A tmpfs of `mib` MiB mounted on a fresh directory; unmounted when dropped.
struct SmallDisk {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&mount)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs (root is needed)");
        SmallDisk { mount, _dir: dir }
    }

    fn resize(&self, mib: u64) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.mount)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot resize the tmpfs");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

const BLOB: usize = 50_000;

/// What a fill left behind: the writes acknowledged and those whose outcome is unknown
/// (the leader changed under them), each as (prefix, n), in the order they were sent.
#[derive(Default)]
struct Filled {
    acked: Vec<(String, u64)>,
    unknown: Vec<(String, u64)>,
}

/// Tag writes of about 50 KB each, through `c`, until one is refused: returns what was
/// written and the refusal. A write whose outcome is unknown (the full leader handed over
/// while it was in flight) is remembered as maybe applied, and the fill goes on as the
/// error says.
fn fill(c: &mut Client, tag: &str, limit: usize) -> (Filled, Err) {
    let mut filled = Filled::default();
    for i in 0..limit as u64 {
        let prefix = format!("{tag}{}", i % 40);
        let a = c.call(
            "user.setTags",
            json!({"user": "root", "prefix": prefix, "tags": {"blob": "y".repeat(BLOB), "n": i}}),
        );
        match a {
            Ok(_) => filled.acked.push((prefix, i)),
            Err(e) if e.message.contains("outcome is unknown") => filled.unknown.push((prefix, i)),
            Err(e) => return (filled, e),
        }
    }
    panic!("{limit} writes of {BLOB} bytes never filled the disk");
}

/// The `n` tag root holds under `prefix` (`None` too when the read fails).
fn tag_n(c: &mut Client, prefix: &str) -> Option<u64> {
    let tags = c.call("user.getTags", json!({"user": "root"})).ok()?;
    tags["tags"][prefix]["n"].as_u64()
}

/// A node holds, for each prefix, its last acknowledged write, or a later write whose
/// outcome was unknown.
fn check_acked(c: &mut Client, filled: &Filled) {
    let mut last = std::collections::BTreeMap::new();
    for (prefix, n) in &filled.acked {
        last.insert(prefix.clone(), *n);
    }
    for (prefix, n) in last {
        let held = tag_n(c, &prefix);
        let later_unknown = |h: u64| {
            filled
                .unknown
                .iter()
                .any(|(p, m)| *p == prefix && *m == h && h > n)
        };
        assert!(
            held == Some(n) || held.is_some_and(later_unknown),
            "{prefix} lost its last write {n}: holds {held:?}"
        );
    }
}

fn tcp(p: &Proc) -> SocketAddr {
    format!("127.0.0.1:{}", p.tcp).parse().unwrap()
}

fn running(p: &mut Proc) -> bool {
    p.child
        .as_mut()
        .is_some_and(|c| c.try_wait().unwrap().is_none())
}

/// A node on `data` (a directory on the small disk), its log kept off it.
fn node_on(root: &Path, i: usize, data: &Path, cluster: u16, join: &[u16]) -> Proc {
    let dir = root.join(format!("n{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(data).unwrap();
    std::os::unix::fs::symlink(data, dir.join("data")).unwrap();
    Proc::start(&dir, cluster, join, &["--disk-reserve-mb", "8"])
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() {
    let disk = SmallDisk::mount(32);
    let root = tempfile::tempdir().unwrap();
    let mut node = node_on(root.path(), 0, &disk.mount.join("n0"), free_port(), &[]);
    node.wait_ready(Duration::from_secs(60));
    let mut c = node.root();
    let (filled, refusal) = fill(&mut c, "fill", 2_000);
    assert_eq!(refusal.code, ERR_INTERNAL, "{refusal:?}");
    assert!(
        refusal.message.contains("no space left for writes"),
        "{refusal:?}"
    );
    assert!(
        filled.acked.len() > 50,
        "only {} writes before the disk filled",
        filled.acked.len()
    );

    // Still up and serving reads to its sessions; writes stay refused, and so does a new
    // login, which registers a session (a replicated write), with an error, not a hang.
    assert!(running(&mut node), "the node exited on a full disk");
    check_acked(&mut c, &filled);
    let mut newcomer = Client::tcp(tcp(&node));
    let login = expect_code(newcomer.login("root", ROOT_PASS), ERR_INTERNAL);
    assert!(login.message.contains("disk space"), "{login:?}");
    let again = c.call(
        "user.setTags",
        json!({"user": "root", "prefix": "x", "tags": {"n": 1}}),
    );
    assert!(again.is_err(), "a write went through on a full disk");

    // Space returns: writes resume without a restart.
    disk.resize(96);
    let mut resumed = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !resumed && Instant::now() < deadline {
        let a = c.call(
            "user.setTags",
            json!({"user": "root", "prefix": "after", "tags": {"n": 7}}),
        );
        resumed = a.is_ok();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(resumed, "writes did not resume once space returned");
    assert!(running(&mut node));

    // Nothing acknowledged was lost, nor the file damaged: a restart serves it all.
    node.kill9();
    node.spawn();
    node.wait_ready(Duration::from_secs(60));
    let mut c = node.root();
    check_acked(&mut c, &filled);
    assert_eq!(tag_n(&mut c, "after"), Some(7));
}

#[test]
fn a_leader_with_a_full_disk_hands_over_and_the_cluster_goes_on() {
    let disk = SmallDisk::mount(32);
    let root = tempfile::tempdir().unwrap();
    let big = root.path().join("big");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // Node 0 bootstraps and leads; only its data dir is on the small disk.
    let mut nodes: Vec<Proc> = (0..3)
        .map(|i| {
            let data = if i == 0 {
                disk.mount.join("n0")
            } else {
                big.join(format!("n{i}"))
            };
            let join = if i == 0 { vec![] } else { vec![ports[0]] };
            node_on(root.path(), i, &data, ports[i], &join)
        })
        .collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(60));
    }
    wait_voters(&nodes[0], 3);
    assert_eq!(leader_of(&nodes), 0, "the first node leads");
    let mut c = Client::tcp(tcp(&nodes[0]));
    expect_ok(c.login("root", ROOT_PASS));
    let (filled, refusal) = fill(&mut c, "fill", 2_000);
    assert!(refusal.message.contains("no space left"), "{refusal:?}");

    // Leadership moves to a node that can write, and writes through it go on.
    let mut on_other = nodes[1].root();
    let mut moved = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !moved && Instant::now() < deadline {
        let a = on_other.call(
            "user.setTags",
            json!({"user": "root", "prefix": "elsewhere", "tags": {"n": 9}}),
        );
        moved = a.is_ok();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(moved, "no write went through a node with space");
    assert!(
        (1..3).any(|i| nodes[i].role() == "leader"),
        "a node with space leads"
    );
    assert!(running(&mut nodes[0]), "the node with a full disk exited");
    check_acked(&mut on_other, &filled);

    // Space returns: the node catches up by itself and has everything.
    disk.resize(128);
    let caught_up = || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tag_n(&mut nodes[0].root(), "elsewhere") == Some(9)
        }))
        .unwrap_or(false)
    };
    assert!(
        eventually(Duration::from_secs(30), caught_up),
        "the node did not catch up once space returned"
    );
    check_acked(&mut nodes[0].root(), &filled);
}
