//! A slow or stalled disk under the leader (`nexus-faultfs` delaying every fsync by 3 s):
//! the leader loses its place within a bounded time and writes through the other nodes go
//! on; the cluster does not stall with it. Needs root and /dev/fuse.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{leader_of, wait_voters, Proc};
use common::faultfs::FaultFs;
use common::*;
use serde_json::json;

#[test]
fn a_leader_whose_fsync_stalls_is_replaced_and_the_cluster_goes_on() {
    let fs = FaultFs::mount_with_delay(3_000);
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // Node 0 bootstraps and leads; only its data dir is on the injector.
    let nodes: Vec<Proc> = (0..3)
        .map(|i| {
            let dir = root.path().join(format!("n{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            if i == 0 {
                let data = fs.mount.join("n0");
                std::fs::create_dir_all(&data).unwrap();
                std::os::unix::fs::symlink(&data, dir.join("data")).unwrap();
            }
            let join = if i == 0 { vec![] } else { vec![ports[0]] };
            Proc::start(&dir, ports[i], &join, &[])
        })
        .collect();
    for n in &nodes {
        n.wait_ready(Duration::from_secs(60));
    }
    wait_voters(&nodes[0], 3);
    assert_eq!(leader_of(&nodes), 0, "the first node leads");

    fs.toggle_slow();
    // Writes through node 1 start right away; the first ones may wait on the stalled
    // leader, then a healthy node leads.
    let mut c = nodes[1].root();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut led_elsewhere = false;
    while !led_elsewhere {
        assert!(
            Instant::now() < deadline,
            "the stalled leader kept its place: node 1 says {}, node 2 says {}",
            nodes[1].role(),
            nodes[2].role()
        );
        let _ = c.call(
            "user.setTags",
            json!({"user": "root", "prefix": "w", "tags": {"n": 0}}),
        );
        led_elsewhere = (1..3).any(|i| nodes[i].role() == "leader");
    }
    // Not a stall: 50 writes in a row through node 1, none of which waits for the slow
    // disk (through it, each would take the 3 s fsync delay or more).
    for n in 1..=50 {
        let started = Instant::now();
        expect_ok(c.call(
            "user.setTags",
            json!({"user": "root", "prefix": "w", "tags": {"n": n}}),
        ));
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "write {n} took {took:?}: it waited on the slow disk"
        );
    }

    // The disk recovers: the old leader catches up by itself.
    fs.toggle_slow();
    let caught_up = || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let tags = expect_ok(
                nodes[0]
                    .root()
                    .call("user.getTags", json!({"user": "root"})),
            );
            tags["tags"]["w"]["n"] == json!(50)
        }))
        .unwrap_or(false)
    };
    assert!(
        eventually(Duration::from_secs(60), caught_up),
        "the node with the slow disk did not catch up once it recovered"
    );
}
