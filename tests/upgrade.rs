//! A rolling upgrade from the previous release, with real processes of both builds: a
//! 3-node cluster of the previous release under a write load is upgraded one node at a
//! time (followers first, the leader last), then one node is rolled back, and every
//! acknowledged write is on every node at the end. The previous release is built once per
//! machine by `scripts/previous-release.sh`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{wait_voters, Proc};
use common::{eventually, expect_ok, free_port, ROOT_PASS};
use serde_json::json;

/// The previous release's binary (built on first use).
fn previous_release() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/previous-release.sh");
    let out = std::process::Command::new(script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{script} failed: {out:?}");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Creates users `w0`, `w1`, ... through the nodes in turn (a failed connection moves on
/// to the next node), recording the ones acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Load {
    fn start(ports: Vec<u16>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            // The library client: a lost connection is an error to move on from, not a
            // panic as in the tests' strict client.
            let mut client: Option<nexus_client::Client> = None;
            let mut tried = 0;
            // Bounded: stopped by the test, and never more than 100,000 attempts.
            for i in 0..100_000usize {
                if s.load(Ordering::Relaxed) {
                    return tried;
                }
                tried = i + 1;
                if client.is_none() {
                    let port = ports[i % ports.len()];
                    let opts = nexus_client::Options {
                        connect_timeout: Duration::from_secs(1),
                        answer_timeout: Duration::from_secs(10),
                        ..Default::default()
                    };
                    let login = json!({"user": "root", "pass": ROOT_PASS});
                    let url = format!("tcp://127.0.0.1:{port}");
                    let logged_in = nexus_client::Client::connect(&url, &opts)
                        .ok()
                        .and_then(|mut c| c.call("sys.login", login).ok().map(|_| c));
                    if logged_in.is_none() {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    client = logged_in;
                }
                let user = format!("w{i:06}");
                let c = client.as_mut().unwrap();
                match c.call("user.create", json!({"user": user, "pass": "pw-123456"})) {
                    Ok(_) => a.lock().unwrap().push(user),
                    // Unknown outcome (the node is stopping, a leader change): move on,
                    // on another node.
                    Err(_) => client = None,
                }
                if i % 20 == 19 {
                    // Spread the load over the nodes.
                    client = None;
                }
            }
            tried
        });
        Load {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the load; the users acknowledged.
    fn stop(&mut self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.acked.lock().unwrap().iter().cloned().collect()
    }
}

/// Restarts `n` on `bin` (SIGTERM first: a leader hands leadership over) and waits until
/// it serves and sees three voters.
fn swap(n: &mut Proc, bin: &Path) {
    n.sigterm();
    n.bin = bin.to_path_buf();
    n.spawn();
    n.wait_ready(Duration::from_secs(60));
    wait_voters(n, 3);
}

#[test]
fn a_loaded_cluster_is_upgraded_from_the_previous_release_one_node_at_a_time_and_rolled_back() {
    let old = previous_release();
    let new: PathBuf = env!("CARGO_BIN_EXE_nexus").into();
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let dir = root.path().join(format!("n{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let join: Vec<u16> = if i == 0 { vec![] } else { vec![ports[0]] };
        nodes.push(Proc::start_binary(&old, &dir, *port, &join, &[]));
    }
    for n in &nodes {
        n.wait_ready(Duration::from_secs(60));
    }
    wait_voters(&nodes[0], 3);
    let mut load = Load::start(nodes.iter().map(|n| n.tcp).collect());
    let progress = |load: &Load, more: usize| {
        let from = load.acked();
        assert!(
            eventually(Duration::from_secs(60), || load.acked() >= from + more),
            "the load stalled at {from} acknowledged writes"
        );
    };
    progress(&load, 100);

    // Followers first, the leader last.
    let leader = (0..3)
        .find(|i| nodes[*i].role() == "leader")
        .expect("a leader");
    let order: Vec<usize> = (0..3).filter(|i| *i != leader).chain([leader]).collect();
    for i in order {
        swap(&mut nodes[i], &new);
        progress(&load, 100);
    }
    // Every node runs this build now; a node rolled back to the previous release rejoins.
    swap(&mut nodes[1], &old);
    progress(&load, 100);
    swap(&mut nodes[1], &new);
    progress(&load, 50);
    let acked = load.stop();

    for n in &nodes {
        let mut c = n.root();
        let list = expect_ok(c.call("user.list", json!({"prefix": "", "limit": 1_000_000})));
        let present: BTreeSet<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["user"].as_str().unwrap().to_string())
            .collect();
        let lost: Vec<&String> = acked.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "node {}: {} of {} acknowledged writes lost: {lost:?}",
            n.cluster,
            lost.len(),
            acked.len()
        );
    }
}
