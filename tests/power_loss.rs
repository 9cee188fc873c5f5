//! Power loss: nodes whose data dirs sit on `nexus-faultfs`, a FUSE filesystem that keeps
//! writes in memory until the file is fsync'd and drops the rest on command. The injector
//! is checked against itself first (a writer that skips fsync loses data under it); then a
//! node under load, and three nodes cut at once, keep every acknowledged write.
//!
//! Needs root and /dev/fuse, as the chaos tests need root for their network namespaces.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{wait_voters, Proc};
use common::faultfs::FaultFs;
use common::*;
use serde_json::json;

/// The injector itself: a write without fsync is lost at the cut, a synced one is kept,
/// and writes after the last fsync of a file are lost while what it synced stays.
#[test]
fn the_injector_drops_exactly_what_was_not_fsyncd() {
    let fs = FaultFs::mount();
    let m = &fs.mount;
    std::fs::write(m.join("never-synced"), b"lost at the cut").unwrap();
    let mut f = std::fs::File::create(m.join("synced")).unwrap();
    f.write_all(b"kept").unwrap();
    f.sync_data().unwrap();
    f.write_all(b" and this is lost").unwrap();
    drop(f);
    std::fs::create_dir(m.join("dir")).unwrap();
    let mut f = std::fs::File::create(m.join("dir/tmp")).unwrap();
    f.write_all(b"renamed after its sync").unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(m.join("dir/tmp"), m.join("dir/final")).unwrap();
    assert_eq!(
        std::fs::read(m.join("synced")).unwrap(),
        b"kept and this is lost"
    );
    fs.cut_power();
    assert_eq!(std::fs::read(m.join("never-synced")).unwrap(), b"");
    assert_eq!(std::fs::read(m.join("synced")).unwrap(), b"kept");
    assert_eq!(
        std::fs::read(m.join("dir/final")).unwrap(),
        b"renamed after its sync"
    );
}

/// One connection creating users until told to stop or cut off; returns the acknowledged.
fn writer(addr: SocketAddr, prefix: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<String>>>) {
    let opts = nexus_client::Options {
        answer_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let Ok(mut c) = nexus_client::Client::login(&format!("tcp://{addr}"), &opts, "root", ROOT_PASS)
    else {
        return;
    };
    for i in 1..=5_000u64 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let name = format!("{prefix}{i:05}");
        match c.call("user.create", json!({"user": name, "pass": "password1"})) {
            Ok(_) => acked.lock().unwrap().push(name),
            Err(nexus_client::CallError::Rpc(_)) => {} // refused: not acknowledged
            Err(_) => return,                          // cut off: the outcome is unknown
        }
    }
}

fn users_with_prefix(c: &mut Client, prefix: &str) -> BTreeSet<String> {
    let list = expect_ok(c.call("user.list", json!({"prefix": prefix, "limit": 0})));
    list.as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap().to_string())
        .collect()
}

/// Starts writers on `addrs`, waits until they have `at_least` acknowledged writes, then
/// calls `cut` while they are still writing; returns what was acknowledged.
fn under_load(addrs: &[SocketAddr], at_least: usize, cut: impl FnOnce()) -> BTreeSet<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = addrs
        .iter()
        .enumerate()
        .flat_map(|(n, addr)| (0..3).map(move |t| (n, t, *addr)))
        .map(|(n, t, addr)| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || writer(addr, format!("pc.n{n}w{t}."), stop, acked))
        })
        .collect();
    let started = Instant::now();
    while acked.lock().unwrap().len() < at_least {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} writes acknowledged in 60 s",
            acked.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    cut();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    eprintln!("{} writes acknowledged before the cut", acked.len());
    acked
}

/// A cluster node whose data dir is `data` on the mount (its log stays off it).
fn node_on(fs: &FaultFs, root: &Path, i: usize, cluster: u16, join: &[u16]) -> Proc {
    let dir = root.join(format!("n{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    let data = fs.mount.join(format!("n{i}"));
    std::fs::create_dir_all(&data).unwrap();
    symlink(&data, dir.join("data")).unwrap();
    Proc::start(&dir, cluster, join, &["--snapshot-every", "200"])
}

fn tcp_addr(p: &Proc) -> SocketAddr {
    format!("127.0.0.1:{}", p.tcp).parse().unwrap()
}

/// One node under load, with frequent snapshots: killed and power-cut mid-write, it comes
/// back with every write it acknowledged.
#[test]
fn a_node_cut_mid_write_keeps_every_acknowledged_write() {
    let fs = FaultFs::mount();
    let root = tempfile::tempdir().unwrap();
    let mut node = node_on(&fs, root.path(), 0, free_port(), &[]);
    node.wait_ready(Duration::from_secs(60));
    let acked = under_load(&[tcp_addr(&node)], 600, || {
        node.kill9();
        fs.cut_power();
    });
    node.spawn();
    node.wait_ready(Duration::from_secs(60));
    let present = users_with_prefix(&mut node.root(), "pc.");
    let lost: Vec<&String> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Three nodes on one injector, cut at the same instant under writers on every node: the
/// cluster forms again by itself and every node has every acknowledged write.
#[test]
fn three_nodes_cut_at_once_reform_with_every_acknowledged_write() {
    let fs = FaultFs::mount();
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes: Vec<Proc> = (0..3)
        .map(|i| {
            let join = if i == 0 { vec![] } else { vec![ports[0]] };
            node_on(&fs, root.path(), i, ports[i], &join)
        })
        .collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(60));
    }
    wait_voters(&nodes[0], 3);
    let addrs: Vec<SocketAddr> = nodes.iter().map(tcp_addr).collect();
    let acked = under_load(&addrs, 600, || {
        for n in &mut nodes {
            n.kill9();
        }
        fs.cut_power();
    });
    for n in &mut nodes {
        n.spawn();
    }
    for n in &nodes {
        n.wait_ready(Duration::from_secs(60));
    }
    for (i, n) in nodes.iter().enumerate() {
        let mut missing = acked.len();
        let complete = eventually(Duration::from_secs(30), || {
            let present = users_with_prefix(&mut n.root(), "pc.");
            missing = acked.difference(&present).count();
            missing == 0
        });
        assert!(
            complete,
            "node {i}: {missing} of {} acknowledged writes missing",
            acked.len()
        );
    }
}
